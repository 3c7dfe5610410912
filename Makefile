# One command for the main job and one for the tests, each setting up what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test setup lint

# The main job: start a local Elasticsearch, crawl a sample site into it, query it.
demo: setup
	$(BIN)/imgsearch demo

# The tests, against a real Elasticsearch node that they start themselves; screenshots of the browser tests go
# to artifacts/ (ignored by git).
test: setup
	scripts/test-system-deps
	$(BIN)/ruff check .
	IMGSEARCH_TEST_ARTIFACTS=$${IMGSEARCH_TEST_ARTIFACTS:-$(CURDIR)/artifacts} $(BIN)/python -m pytest

# PyTorch comes from PyPI with its CUDA libraries (about 6 GB, a few minutes from a cold cache); a GPU is
# used when present, the CPU otherwise.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

lint: setup
	$(BIN)/ruff check .
