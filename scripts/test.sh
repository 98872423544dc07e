#!/usr/bin/env bash
# Set up a virtualenv (once), start a local Postgres if this machine has one, then run
# the linters, the type checker, the docs build and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Postgres for the store contract tests: use BATCHOR_TEST_POSTGRES_URL if given, else try
# the machine's Debian cluster (needs root; installs it when missing and apt works).
if [ -z "${BATCHOR_TEST_POSTGRES_URL:-}" ]; then
  if url=$(bash scripts/start-postgres.sh); then
    export BATCHOR_TEST_POSTGRES_URL="$url"
  else
    echo "note: no Postgres available; Postgres contract tests will be skipped" >&2
  fi
fi

.venv/bin/ruff format --check batchor_core batchor_dagster tests bench examples example_project
.venv/bin/ruff check batchor_core batchor_dagster tests bench examples example_project
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
# One pytest worker per core (pytest-xdist): most tests spend their time in subprocesses
# (crash workers, the CLI, Dagster), so two cores run the suite in about 0.8 of the time.
# BATCHOR_TEST_WORKERS=0 runs it in one process; later arguments (-n 4) override this.
# (Not "-n auto": with psutil installed that counts physical cores, 1 on some 2-vCPU VMs.)
exec .venv/bin/python -m pytest -q -n "${BATCHOR_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}" "$@"
