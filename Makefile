# The two commands a new user needs (see README.md):
#   make run     set up a virtual environment, fetch models, start the TTS server and the worker
#   make check   set up a virtual environment with the dev tools and run every check:
#                lint, typecheck, test, deploy-check and image-check (no Docker engine needed)
# Both create .venv with the interpreter in $(PYTHON) (3.11 or newer) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run console check lint typecheck test deploy-check image-check clean

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

# Talk to the agent in this terminal (needs PortAudio: Debian libportaudio2), with the local
# TTS server started beside it unless KNOWLITHIC_TTS_SERVER points elsewhere.
console: $(VENV)/.run-deps
	$(BIN)/python agent.py download-files
	PATH="$(abspath $(BIN)):$$PATH" ./scripts/run-local.sh console

check: lint typecheck test deploy-check image-check

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-deps
	$(BIN)/mypy

test: $(VENV)/.dev-deps
	$(BIN)/python -m pytest

# The deployment files, with real linters and schemas (requirements-dev.txt pins them):
# hadolint for the Dockerfiles, Docker Compose's own validation of compose.yaml against the
# compose-spec schema (no engine needed), and Kubernetes' own schemas for deploy/k8s, for an old
# release many clusters still run and for the newest.
K8S_VERSIONS := 1.29.0 1.37.0

deploy-check: $(VENV)/.dev-deps
	$(BIN)/hadolint Dockerfile tts_server/Dockerfile
	$(BIN)/docker-compose --file compose.yaml config --quiet
	for version in $(K8S_VERSIONS); do \
		$(BIN)/kubernetes-validate --strict --quiet -k $$version deploy/k8s/*.yaml || exit 1; \
	done

# Each image's build steps replayed in a fresh virtual environment, then what it starts:
# scripts/check_image_steps.py.
image-check: $(VENV)/.dev-deps
	$(BIN)/python scripts/check_image_steps.py Dockerfile
	$(BIN)/python scripts/check_image_steps.py tts_server/Dockerfile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
