# vmfault: `make demo` sets everything up and runs the demo; `make test` sets up and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system venv image demo test lint typecheck unit integration bench clean

setup: system venv image

system:
	@tools/setup-system.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: system $(STAMP)

image: venv
	@$(BIN)/vmfault image build

demo: setup
	$(BIN)/vmfault campaign run examples/demo.toml --db results/demo.db --overwrite

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

test: setup lint typecheck
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/machine.py
	$(BIN)/python bench/experiment.py
	$(BIN)/python bench/campaign.py
	$(BIN)/python bench/instructions.py
	$(BIN)/python bench/storm.py
	$(BIN)/python bench/hangs.py
	$(BIN)/python bench/restore.py
	$(BIN)/python bench/fault_space.py --runs 200 --controls 100
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/disk.py
	$(BIN)/python bench/network.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
