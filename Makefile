# Tollgate: `make run` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3
CONFIG ?= deploy/tollgate.example.yaml
TOLLGATE := .build/release/tollgate

.PHONY: bootstrap build run test unit integration bench clean

bootstrap:
	@bash scripts/bootstrap.sh

build: bootstrap
	$(SWIFT) build -c release

# Foreground; Ctrl-C (SIGINT) or SIGTERM stops it. A development CA is created on first run.
run: build
	mkdir -p var
	@test -f certs/ca.pem || $(TOLLGATE) ca init --dir certs
	$(TOLLGATE) run --config $(CONFIG)

test: bootstrap
	$(SWIFT) build -c release
	$(SWIFT) test
	$(PYTHON) -m pytest -q Tests/Integration

# The parts of `test`, for iterating.
unit: bootstrap
	$(SWIFT) test

integration: bootstrap
	$(SWIFT) build -c release
	$(PYTHON) -m pytest -q Tests/Integration

# Figures, not a test: see bench/README.md (`BENCH_ARGS=--write-docs` updates docs/benchmarks.md).
bench: build
	bash bench/http_keepalive.sh $(BENCH_ARGS)

clean:
	rm -rf .build var
