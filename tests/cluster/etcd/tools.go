//go:build tools

// Package tools pins the etcd server this module builds; see ../build.
package tools
