#!/usr/bin/env bash
# Set up a virtualenv (once) and run a real batchor job end to end on the embedded
# defaults: SQLite + local artifacts + the bundled OpenAI emulator. No API key needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
exec .venv/bin/python examples/quickstart.py "$@"
