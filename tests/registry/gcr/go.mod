// Wrapper module: builds go-containerregistry's in-memory OCI registry of one release from the Go
// module proxy, for the tests of OCI plugin sources.
module vkcube.local/registry/gcr

go 1.26.0

require github.com/google/go-containerregistry v0.22.1
