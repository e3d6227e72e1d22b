//go:build tools

// Pins the Prometheus release whose promtool ../build builds.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
