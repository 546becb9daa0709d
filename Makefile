# One-command entry points. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
GEN := services/generated

.PHONY: run test proto deps lint bench clean

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

## The whole mesh on 127.0.0.1:1337 with the digits example; Ctrl-C stops it.
run: proto
	$(PY) -m services.mesh

## Tools the tests drive from outside Python (each installs once, then is a no-op).
deps: proto
	@if [ -f examples/Makefile ]; then $(MAKE) -s -C examples deps; fi

## The test suite (real processes on ephemeral loopback ports).
test: proto deps
	$(PY) -m pytest -q

lint: proto
	$(VENV)/bin/ruff check services tests benchmarks
	$(VENV)/bin/mypy services benchmarks

bench: proto
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(GEN) .run .pytest_cache .mypy_cache
