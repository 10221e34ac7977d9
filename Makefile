# imgsearch: `make serve` starts the daemon, `make test` runs lint + every test (CI),
# `make test-fast` the tests not marked slow, without lint (under a minute).
# Both create the virtualenv (.venv) on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: serve test test-fast lint docker-lint bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(PY) -m imgsearch serve $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docker-lint: $(STAMP)
	$(VENV)/bin/hadolint --failure-threshold warning Dockerfile

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# Leaves out tests marked slow: real daemon subprocesses, the browser, the real model over a
# gallery, schemathesis, fault injection. `make test` runs them all.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
