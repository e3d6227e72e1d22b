// The OCI registry of the tests: go-containerregistry's in-memory registry (pkg/registry, the one
// its cmd/registry serves) on a loopback address only, printing the address it listens on as its
// first line so the harness needs no free-port guess.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback host:port to listen on")
	verbose := flag.Bool("v", false, "log every request to stderr")
	flag.Parse()
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !(host == "localhost" || net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback()) {
		fmt.Fprintf(os.Stderr, "registry: -listen %q: a loopback host:port only\n", *listen)
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "registry: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(l.Addr().String())
	logger := log.New(io.Discard, "", 0)
	if *verbose {
		logger = log.New(os.Stderr, "registry: ", log.LstdFlags)
	}
	if err := http.Serve(l, locationOnUpload(registry.New(registry.Logger(logger)))); err != nil {
		fmt.Fprintf(os.Stderr, "registry: %v\n", err)
		os.Exit(1)
	}
}

// locationOnUpload adds the Location header the distribution spec requires on the 201 that ends a
// blob upload (`PUT /v2/<name>/blobs/uploads/<id>?digest=<digest>`) or stores a manifest, which
// this registry leaves out and spec-following clients (oci-client among them) insist on.
func locationOnUpload(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		digest := r.URL.Query().Get("digest")
		upload := strings.Index(r.URL.Path, "/blobs/uploads/")
		switch {
		case (r.Method == http.MethodPut || r.Method == http.MethodPost) && digest != "" && upload > 0:
			w = &withLocation{ResponseWriter: w, location: r.URL.Path[:upload] + "/blobs/" + digest}
		case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/"):
			w = &withLocation{ResponseWriter: w, location: r.URL.Path}
		}
		next.ServeHTTP(w, r)
	})
}

type withLocation struct {
	http.ResponseWriter
	location string
}

func (w *withLocation) WriteHeader(code int) {
	if code == http.StatusCreated && w.Header().Get("Location") == "" {
		w.Header().Set("Location", w.location)
	}
	w.ResponseWriter.WriteHeader(code)
}
