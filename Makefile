# The README's commands. Every target creates the virtualenv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# `make run` creates this administrator if no administrator exists yet (override them).
export ADMIN_EMAIL    ?= admin@example.com
export ADMIN_PASSWORD ?= change-this-admin-password

.PHONY: run test check lint typecheck audit migrate bench screenshots install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_stack.py

migrate: $(STAMP)
	for s in identity portals invitations mailer; do $(PY) -m services.$$s migrate || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check services libs tests scripts bench
	$(VENV)/bin/ruff format --check services libs

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

test: check
	$(PY) -m pytest $(PYTEST_ARGS)

screenshots: $(STAMP)
	SCREENSHOTS=docs $(PY) -m pytest tests/browser -q

audit: $(STAMP)
	$(VENV)/bin/pip-audit --skip-editable --progress-spinner off
	$(VENV)/bin/bandit -q -r services libs -lll

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
