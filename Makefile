# The README's commands. Every target creates the virtualenv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# axe-core for the browser tests' accessibility checks (tests/browser/package-lock.json).
BROWSER_JS := tests/browser/node_modules/.installed

# `make run` creates this administrator if no administrator exists yet (override them).
export ADMIN_EMAIL    ?= admin@example.com
export ADMIN_PASSWORD ?= change-this-admin-password

.PHONY: run test check lint typecheck audit migrate bench screenshots install clean secrets lock \
	monitoring-rules openapi translations catalogues

# The whole dependency tree comes from the lock file, every file checked against its hash;
# then the project itself (editable, nothing more resolved).
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# npm ci installs exactly the lock file's versions, each checked against its integrity hash
# (it empties node_modules first, the stamp with it).
$(BROWSER_JS): tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the browser tests' axe-core (apt-get install npm)"; exit 1; }
	cd tests/browser && npm ci --no-audit --no-fund
	touch $(BROWSER_JS)

install: $(STAMP) $(BROWSER_JS)

run: $(STAMP)
	$(PY) scripts/run_stack.py

# Fresh secrets for deploy/compose.yaml in deploy/.env: broker passwords, service keys,
# the mail-job key, the administrator's password, the API key (keeps the ones already there).
secrets: $(STAMP)
	$(PY) scripts/compose_secrets.py

migrate: $(STAMP)
	for s in identity portals invitations mailer gateway; do $(PY) -m services.$$s migrate || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check services libs tests scripts bench examples
	$(VENV)/bin/ruff format --check services libs

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

test: check catalogues $(BROWSER_JS)
	$(PY) -m pytest $(PYTEST_ARGS)

# Every shipped language has a translation of every message (scripts/check_catalogues.py).
catalogues: $(STAMP)
	$(PY) scripts/check_catalogues.py

# Extract the messages of the services with a locale folder and add the new ones to their
# .po files (translations kept); then translate the empty msgstr and `make catalogues`.
translations: $(STAMP)
	$(PY) scripts/check_catalogues.py --update || true

screenshots: $(STAMP) $(BROWSER_JS)
	SCREENSHOTS=docs $(PY) -m pytest tests/browser -q

# Re-resolve requirements.lock and requirements-dev.lock after changing pyproject.toml.
lock: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH scripts/lock.sh

audit: $(STAMP)
	$(VENV)/bin/pip-audit --progress-spinner off --disable-pip --require-hashes -r requirements-dev.lock
	$(VENV)/bin/bandit -q -r services libs -lll

bench: $(STAMP)
	$(PY) -m bench

# docs/openapi.json from the models the gateway's routes declare (tests check it is fresh).
openapi: $(STAMP)
	$(PY) scripts/gen_openapi.py

# The Prometheus Operator's PrometheusRule from deploy/monitoring/alerts.yml.
monitoring-rules: $(STAMP)
	$(PY) scripts/monitoring_rules.py

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache tests/browser/node_modules
