//go:build tools

// Pins the metrics-server release built by ../build-metrics-server.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
