#!/usr/bin/env bash
# Sets everything up, then runs the linter and the test suite. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/setup.sh" | tail -n 1)
bash "$root/scripts/install_browser.sh" || echo "[test] WARNING: no headless Chromium; the LLaMA-Board browser tests will be skipped" >&2
export PATH="$venv/bin:$PATH"
cd "$root"
ruff check .
ruff format --check .
lint-imports  # the package's layers (contracts in pyproject.toml)
python -m pytest -ra --durations=25 "$@"  # the slowest tests, to keep the suite within its budget
