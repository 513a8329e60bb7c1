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
CHAOS_ARGS ?=

.PHONY: install demo test lint services services-stop bench chaos clean hostile

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

# fault injection on real services, full durations (~30 min), prints the table of
# docs/reliability.md; CHAOS_ARGS="--short" for the short versions (tests/test_chaos.py)
chaos: install services
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache

# issue #15 item 4: >= 100,000 hostile messages through a real Mosquitto, reconciled, normal
# patients' ECG compared with a run without them (bench/hostile.py; a few minutes)
hostile: install services
	$(BIN)/python bench/hostile.py --messages 100000 --json $(OUT)/hostile.json
