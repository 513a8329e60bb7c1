# p2es — the two commands of the README:
#   make demo   run the main job on an embedded default (no services needed)
#   make test   install everything, start the services the tests need, run the tests
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out
PYTEST_ARGS ?=

.PHONY: install demo test lint services services-stop bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,onnx]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/p2es demo --out $(OUT)/demo

services:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install lint services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/synth_speed.py --records 2000 --repeats 7

clean:
	rm -rf $(OUT) .pytest_cache
