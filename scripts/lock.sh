#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml, with a sha256 hash for every file of the
# whole dependency tree (`make lock`; run it after changing a pin in pyproject.toml).
#   requirements.lock      the services' runtime tree (the Dockerfile installs it)
#   requirements-dev.lock  the runtime tree plus the tools and tests (`make` installs it),
#                          constrained to the same runtime versions
# Resolved by uv against PyPI itself, so a mirror or a local wheel directory can't change
# a version or a hash.
set -euo pipefail
cd "$(dirname "$0")/.."
compile=(uv pip compile --quiet --generate-hashes --no-header --python-version 3.11
         --index-url https://pypi.org/simple --no-config)
"${compile[@]}" --output-file requirements.lock pyproject.toml
"${compile[@]}" --extra dev --constraint requirements.lock \
    --output-file requirements-dev.lock pyproject.toml
