#!/usr/bin/env bash
# Set up .venv if needed, lint (ruff, rules in pyproject.toml), then run the test suite. Extra arguments go to
# pytest (e.g. -k masks, -x).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
.venv/bin/ruff check medadv_monai tests
exec .venv/bin/python -m pytest -q "$@"
