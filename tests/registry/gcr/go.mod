// Wrapper module: the tests' loopback OCI registry, on go-containerregistry's pkg/registry of one
// release from the Go module proxy.
module vkcube.local/registry/gcr

go 1.26.0

require github.com/google/go-containerregistry v0.22.1
