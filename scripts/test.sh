#!/usr/bin/env bash
# The whole test suite from a clean clone: setup, lint, type-check, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
echo "== ruff"; .venv/bin/ruff check streamd tests engines
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
