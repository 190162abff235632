# Nurture's entry points. `make test` is what CI runs (.ci/run).

CARGO ?= cargo

.PHONY: test run ort tools fmt-check clippy build helm

## Run every check and test: ONNX Runtime and test tools are fetched when
## missing, then fmt, clippy, and all tests with a real S3-compatible server.
test: ort tools fmt-check clippy build helm
	scripts/with-s3.sh $(CARGO) test --workspace --all-targets

## Lint, render and validate the Helm chart (offline).
helm:
	scripts/check-helm.sh

## The main job: build, train every kind into ./var/registry if it is empty,
## start nurture-server on 127.0.0.1:50051 and print example calls.
run:
	scripts/run.sh

## Fetch the ONNX Runtime library into .ort/ (from the onnxruntime wheel on PyPI).
ort:
	scripts/fetch-ort.sh

## Install test-only tools (the S3-compatible server) into .tools/.
tools:
	scripts/install-test-tools.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Build the binaries that end-to-end tests start as processes, and the
## release binaries that the README's and docs' shell blocks use (tests/docs):
## the same cargo commands as those blocks, so that theirs find them built.
build:
	$(CARGO) build --workspace --bins
	$(CARGO) build --release -p nurture-trainer -p nurture-models -p nurture-server
	$(CARGO) build --release -p nurture-benches --bin nurture-load
