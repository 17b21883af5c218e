# The two commands a new user needs (see README.md):
#   make run     set up a virtual environment, fetch models, start the TTS server and the worker
#   make check   set up a virtual environment with the dev tools and run every check:
#                lock-check, lint, typecheck, test, deploy-check and image-check (no Docker
#                engine needed)
#   make lock    after editing a requirements*.txt: regenerate the hashed *.lock files
# Both create .venv with the interpreter in $(PYTHON) (3.11 or newer) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run console check lock lock-check lint typecheck test deploy-check image-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed from the hashed locks (make lock writes them from the requirement files), so a
# fresh clone gets the same files next month as today; pip refuses any file whose hash differs.
$(VENV)/.run-deps: requirements.lock requirements-server.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock -r requirements-server.lock
	touch $@

$(VENV)/.dev-deps: requirements-dev.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/python agent.py download-files
	PATH="$(abspath $(BIN)):$$PATH" ./scripts/run-local.sh dev

# Talk to the agent in this terminal (needs PortAudio: Debian libportaudio2), with the local
# TTS server started beside it unless KNOWLITHIC_TTS_SERVER points elsewhere.
console: $(VENV)/.run-deps
	$(BIN)/python agent.py download-files
	PATH="$(abspath $(BIN)):$$PATH" ./scripts/run-local.sh console

check: lock-check lint typecheck test deploy-check image-check

# After editing a requirements*.txt: resolve the locks again (needs the package index).  The
# pins already locked are kept; upgrade with  make lock LOCK_ARGS="--upgrade-package NAME"
# (or LOCK_ARGS=--upgrade for everything).  scripts/locks.py says how each lock is made.
lock: $(VENV)/.dev-deps
	$(BIN)/python scripts/locks.py compile $(LOCK_ARGS)

# Offline and fast: each lock still matches its requirement files and the other locks.
lock-check: $(VENV)/.dev-deps
	$(BIN)/python scripts/locks.py check

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
