# The project's two commands — `make demo` (the product's main job) and `make test` (the whole
# suite) — and the build steps they share. Build outputs are cached outside git, once per machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/vkcube/target
VKCUBE_CACHE ?= $(HOME)/.cache/vkcube
# The SDK compatibility test's Python packages, in a virtual environment of their own.
SDK_VENV := $(VKCUBE_CACHE)/sdk-venv
SHELL := /bin/bash

.PHONY: demo test plugins cluster-binaries toolchain

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

cluster-binaries:
	@tests/cluster/build

plugins: toolchain
	@plugins/build

# Rebuilt when the requirements change; the stamp records that the install finished.
$(SDK_VENV)/.installed: tests/cube-sim/sdk/requirements.txt
	@python3 -m venv "$(SDK_VENV)"
	@"$(SDK_VENV)/bin/python" -m pip install -q --disable-pip-version-check -r $<
	@cp $< $@

# The chaos suite (tests/e2e/chaos.rs) runs the daemon and the simulator as processes: their debug
# binaries are built first.
test: toolchain cluster-binaries plugins $(SDK_VENV)/.installed
	@tests/chart/build >/dev/null
	@tests/registry/build >/dev/null
	cargo build -p vkhost -p cube-sim
	cargo test --workspace --no-fail-fast
	"$(SDK_VENV)/bin/python" -m pytest -q tests/cube-sim/sdk
	tests/monitoring/check

demo: toolchain cluster-binaries plugins
	@tests/demo/run
