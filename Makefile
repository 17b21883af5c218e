# The two commands a new user needs (see README.md):
#   make run     set up a virtual environment, fetch models, start the TTS server and the worker
#   make check   set up a virtual environment with the dev tools and run every check
# Both create .venv with the interpreter in $(PYTHON) (3.11 or newer) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run check lint typecheck test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.run-deps: requirements.txt requirements-server.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-server.txt
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt requirements.txt requirements-server.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/python agent.py download-files
	PATH="$(abspath $(BIN)):$$PATH" ./scripts/run-local.sh dev

check: lint typecheck test

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-deps
	$(BIN)/mypy

test: $(VENV)/.dev-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
