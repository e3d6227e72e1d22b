//go:build tools

// Pins the go-containerregistry release ../build builds the registry of.
package tools

import _ "github.com/google/go-containerregistry/cmd/registry"
