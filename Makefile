# One-command entry points. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
GEN := services/generated

.PHONY: run test proto deps lint bench clean tritonclient ghz kustomize loadtest fuzz chaos image e2e-pods

# Outside tools, each installed once into the repository (gitignored).
TOOLS := .tools/bin
GHZ_VERSION := v0.121.0
GHZ := $(TOOLS)/ghz
# tritonclient's own `inference` stubs clash with ours in one process: it gets its own venv.
TRITON_VENV := .venv-tritonclient
TRITON_STAMP := $(TRITON_VENV)/.installed
TRITONCLIENT_VERSION := 2.73.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Stubs and .pyi type stubs; the -I mapping makes generated imports read services.generated...
$(GEN)/.stamp: $(PROTO_SRC) $(STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I$(GEN)=protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	find $(GEN) -type d -exec touch {}/__init__.py \;
	touch $@

proto: $(GEN)/.stamp

## The whole mesh on 127.0.0.1:1337 with the digits example, restarting what exits;
## Ctrl-C stops it. ARGS="--replicas 2 --slo-ms 50" go to the launcher (--help lists them).
run: proto
	$(PY) -m services.mesh $(ARGS)

## Tools the tests drive from outside Python (each installs once, then is a no-op).
deps: proto
	@if [ -f examples/Makefile ]; then $(MAKE) -s -C examples deps; fi
	@for tool in tritonclient ghz kustomize; do \
	    $(MAKE) -s $$tool || { echo "make deps: $$tool did not install; its tests will skip" >&2; \
	                          [ "$$CLIPPER_REQUIRE_TOOLS" != 1 ] || exit 1; }; \
	done

## kustomize renders deploy/ in the tests; kubectl has it built in, so only without kubectl.
KUSTOMIZE_VERSION := v5.5.0
kustomize:
	@command -v kubectl >/dev/null || [ -x $(TOOLS)/kustomize ] || { mkdir -p $(TOOLS) && \
	    GOBIN=$(CURDIR)/$(TOOLS) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }

## tritonclient in its own virtual environment, for the Open Inference Protocol tests.
tritonclient: $(TRITON_STAMP)

$(TRITON_STAMP):
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q 'tritonclient[grpc]==$(TRITONCLIENT_VERSION)' 'protobuf>=6.33,<7'
	touch $@

## ghz, the gRPC load generator, built with go install.
ghz: $(GHZ)

$(GHZ):
	mkdir -p $(TOOLS)
	GOBIN=$(CURDIR)/$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

## ghz against the frontend for Predict and ModelInfer: the local mesh (started if not
## running), or TARGET=host:port. Distinct inputs (CACHE=hot: one, from the cache); a
## fixed count (CALLS=), open loop (RATE=200 DURATION=30s) or a sweep of rates
## (SWEEP=50:400:50, DURATION= per rate) judged by the app's SLO (or SLO_MS=).
## CONNECTIONS=, METRICS= (frontend /metrics URLs), APP=; GHZ_ARGS go to ghz.
LOADTEST_VARS := $(if $(TARGET),--target $(TARGET)) $(if $(CACHE),--cache $(CACHE)) \
	$(if $(CALLS),--calls $(CALLS)) $(if $(RATE),--rate $(RATE)) \
	$(if $(DURATION),--duration $(DURATION)) $(if $(SWEEP),--sweep $(SWEEP)) \
	$(if $(SLO_MS),--slo-ms $(SLO_MS)) $(if $(CONNECTIONS),--connections $(CONNECTIONS)) \
	$(if $(METRICS),--metrics $(METRICS)) $(if $(APP),--app $(APP))
loadtest: proto ghz
	$(PY) -m loadtest --ghz $(GHZ) $(strip $(LOADTEST_VARS)) -- $(GHZ_ARGS)

## The test suite (real processes on ephemeral loopback ports).
test: proto deps
	$(PY) -m pytest -q

## The image from the Dockerfile with the engine that runs here (docker, else podman):
## IMAGE=name:tag, BASE_IMAGE=another Python 3.11+ base (the Dockerfile's PYTHON_IMAGE).
IMAGE ?= clipper-mesh:dev
image:
	@engine=$$(for e in docker podman; do command -v $$e >/dev/null && $$e info >/dev/null 2>&1 \
	           && { echo $$e; break; }; done); \
	[ -n "$$engine" ] || { echo "make image: no container engine runs here (docker or podman)" >&2; exit 1; }; \
	echo "$$engine build -t $(IMAGE) ."; \
	$$engine build $(if $(BASE_IMAGE),--build-arg PYTHON_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .

## deploy/ played by podman against the image built here (tests/pods; not in `make test`):
## a local Debian base made once, the image, the pods, queries, ghz, a kill, a drain.
e2e-pods: proto deps
	$(PY) -m pytest -q -s -m pods tests/pods

## A longer fuzzing campaign of the public RPCs (fresh random draws; FUZZ_PROFILE=ci for
## the short one `make test` runs).
FUZZ_PROFILE ?= fuzz
fuzz: proto
	CLIPPER_FUZZ_PROFILE=$(FUZZ_PROFILE) $(PY) -m pytest -q -s --timeout 1800 tests/fuzz

## A bounded soak (a few minutes): faults in random order under load, a report per fault.
## CHAOS_ARGS="--rounds 5 --rate 60 --seed 7" go to python -m tests.chaos.
chaos: proto
	$(PY) -m tests.chaos $(CHAOS_ARGS)

lint: proto
	$(VENV)/bin/ruff check services testkit tests benchmarks loadtest
	$(VENV)/bin/mypy services testkit benchmarks loadtest

bench: proto
	@$(MAKE) -s ghz || echo "make bench: ghz did not build; its benchmark is skipped" >&2
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(GEN) .run .pytest_cache .mypy_cache
