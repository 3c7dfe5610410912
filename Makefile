# One command for the main job and one for the tests, each setting up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
LOCK = requirements.lock
# The platform the lock is resolved for: the one the suite runs on (CI's).
LOCK_TARGET = --python-version 3.11 --python-platform x86_64-manylinux_2_28
UV_PIN = $(shell grep -m1 '^uv==' $(LOCK) | cut -d' ' -f1)

.PHONY: demo test setup lint lock upgrade

# The main job: start a local Elasticsearch, crawl a sample site into it, query it.
demo: setup
	$(BIN)/imgsearch demo

# The tests, against a real Elasticsearch node that they start themselves; screenshots of the browser tests go
# to artifacts/ (ignored by git).
test: setup
	scripts/test-system-deps
	$(BIN)/ruff check .
	IMGSEARCH_TEST_ARTIFACTS=$${IMGSEARCH_TEST_ARTIFACTS:-$(CURDIR)/artifacts} $(BIN)/python -m pytest

# Installs exactly the versions in requirements.lock (those the suite passed with), then the project itself.
# PyTorch comes from PyPI with its CUDA libraries (about 6 GB); a GPU is used when present, the CPU otherwise.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(UV_PIN)"
	scripts/install-locked $(BIN)/python $(LOCK)
	touch $@

lint: setup
	$(BIN)/ruff check .

# After a change of pyproject.toml's dependencies: the lock re-resolved, keeping every pin that still fits.
lock: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_TARGET) --generate-hashes --no-header --quiet -o $(LOCK)
	$(MAKE) test

# The newest versions the ranges allow, installed and tested; commit requirements.lock when the suite passes.
upgrade: setup
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_TARGET) --generate-hashes --no-header --quiet \
		--upgrade -o $(LOCK)
	$(MAKE) test
