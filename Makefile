# StratusLab: the two commands of the README.
#   make demo   set up this Debian 12 host, start the all-in-one cloud, boot a real VM
#   make test   everything CI checks: lint, types, unit/contract/integration/functional tests
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint typecheck pytest bench clean down

setup:
	scripts/host-setup.sh

demo: setup
	scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	scripts/run-tests.sh

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/provision.py

down:
	$(BIN)/stratus down

clean: down
	rm -rf $(VENV) build *.egg-info
