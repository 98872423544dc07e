#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster and print a URL to a fresh (re-created) test
# database, so tables always match the code under test.
# Exits non-zero (printing nothing on stdout) when Postgres cannot be started here.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "start-postgres: not root, cannot start the system cluster" >&2
  exit 1
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "start-postgres: installing postgresql" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 || exit 1
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
  if su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1; then break; fi
  sleep 1
done
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
su postgres -c "psql -qAt -p $port" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batchor') THEN
    CREATE ROLE batchor LOGIN PASSWORD 'batchor';
  END IF;
END \$\$;
-- Schema tests (concurrent opens, migrations) create and drop their own databases.
ALTER ROLE batchor CREATEDB;
DROP DATABASE IF EXISTS batchor_test WITH (FORCE);
CREATE DATABASE batchor_test OWNER batchor;
SQL
echo "postgresql+psycopg://batchor:batchor@127.0.0.1:$port/batchor_test"
