# flowmeter: the two commands of the README, and the checks CI runs.
#   make demo   start Redis + MariaDB (installing them if missing), migrate,
#               serve, feed sample events, print where to look
#   make test   every test, against the real servers
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test lint check services build

services:
	@scripts/services start

build:
	$(CARGO) build --release

demo: services build
	@scripts/demo

test: services
	@scripts/browser-deps
	$(CARGO) test --all-targets --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

check: lint test
