//go:build tools

// Pins the Helm release ../build builds.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
