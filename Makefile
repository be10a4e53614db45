# `make demo` and `make test` set up everything they need in .venv, from pinned versions:
# requirements.lock is what genbatch runs with; requirements-test.lock adds the tests and linters.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast test-long bench lint docs clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	@# setuptools warns about every editable install (a notice, not a problem): keep the demo's output clean.
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(BIN)/python -m pip install --quiet -r requirements.lock -r requirements-test.lock
	touch $(TEST_STAMP)

demo: $(STAMP)
	rm -rf out/demo
	$(BIN)/genbatch run configs/tiny.yaml
	@echo "next: genbatch report out/demo  (genbatch is at $(BIN)/genbatch; or: source $(BIN)/activate)"

# Two pytest workers (pytest-xdist), each with its own Ray instance, a test file to a worker: most of a test's
# time is waiting on processes (Ray, actors, CLIs), so two keep a 2-core machine busy. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not minutes" $(XDIST)

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not slow and not minutes" $(XDIST)

test-long: $(TEST_STAMP)
	$(BIN)/python -m pytest -m minutes

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/resume.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check jobs workers tests benchmarks docs
	$(BIN)/mypy jobs workers
	$(BIN)/lint-imports

# The reference pages are generated from the code first; the build fails on any warning (a broken link, a page
# missing from the nav). Open site/index.html from the files, no server needed.
docs: $(TEST_STAMP)
	$(BIN)/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: site/index.html"

clean:
	rm -rf $(VENV) out site
