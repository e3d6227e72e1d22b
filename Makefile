# The project's two commands — `make demo` (the product's main job) and `make test` (the whole
# suite) — and the build steps they share. Build outputs are cached outside git, once per machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/vkcube/target
SHELL := /bin/bash

.PHONY: demo test plugins cluster-binaries toolchain

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

cluster-binaries:
	@tests/cluster/build

plugins: toolchain
	@plugins/build

test: toolchain cluster-binaries plugins
	cargo test --workspace --no-fail-fast
	cargo build -p cube-sim
	python3 -m pytest -q tests/cube-sim/sdk

demo: toolchain cluster-binaries plugins
	@tests/demo/run
