#!/usr/bin/env bash
# Serve the documentation site locally (live reload) on http://127.0.0.1:8000.
# Pass other mkdocs serve options through, e.g. `bash scripts/docs.sh -a 0.0.0.0:8000`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs serve "$@"
