# flowmeter: the two commands of the README, and the checks CI runs.
#   make demo   start Redis + MariaDB (installing them if missing), migrate,
#               serve (with the dashboard at /), feed sample events, print
#               where to look; it installs nothing else
#   make test   every test of every workspace crate, against the real
#               servers (also installing the test-only ones when missing:
#               ClickHouse and tansu by
#               `scripts/services test-deps`, Chromium, coturn and the npm
#               packages by `scripts/browser-deps`)
# `make build` (a plain `cargo build --release`) builds both binaries,
# `flowmeter` and `flowmeter-bench` (a default member), which `flowmeter
# loadgen|verify|bench` run; `make test` builds the second before the
# tests run (crates/flowmeter-bench/tests/integration.rs). `make lint`'s
# workspace clippy covers flowmeter-bench.
# Every build needs Node.js/npm to embed the dashboard's charts (build.rs).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test lint fuzz-check check services build node

services:
	@scripts/services start

node:
	@scripts/browser-deps node

build: node
	$(CARGO) build --release

demo: services build
	@scripts/demo

test: services
	@scripts/services test-deps
	@scripts/browser-deps
	$(CARGO) test --workspace --all-targets --no-fail-fast

# The workspace, then the embeddable crates alone as a service builds them
# (no features unified from the server's), the collector with and without
# its default features, and the server without its optional sinks
# (`--no-default-features`: no Kafka, no ClickHouse); then the deployment
# files (scripts/check-deploy: the k8s overlays rendered and validated, the
# alert rules' promtool tests, the dashboards against Grafana's schema).
lint: node
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p flowmeter-core -- -D warnings
	$(CARGO) clippy -p flowmeter-collector -- -D warnings
	$(CARGO) clippy -p flowmeter-collector --no-default-features -- -D warnings
	$(CARGO) clippy -p flowmeter --lib --no-default-features -- -D warnings
	scripts/check-deploy

# The fuzz targets (crates/fuzz, run with scripts/fuzz on nightly) still
# compile. Not in CI's `make lint`: outside the workspace, with its own
# lockfile and features, it rebuilds every dependency (3.5 min cold on 2
# cores). `make check` runs it; so does scripts/fuzz, by building them.
fuzz-check:
	$(CARGO) check --manifest-path crates/fuzz/Cargo.toml --target-dir target

check: lint fuzz-check test
