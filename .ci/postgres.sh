#!/usr/bin/env bash
# Starts the local PostgreSQL 15 cluster and makes the role the storage tests use.
# Idempotent: safe to run on a machine where it already ran.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null || [ ! -d /usr/lib/postgresql ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$ver main$"; then
  pg_createcluster "$ver" main
fi
pg_ctlcluster "$ver" main start 2>/dev/null || true
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p 5432
# A role that may create one throw-away database per test.
su postgres -c "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slipway') THEN
    CREATE ROLE slipway LOGIN PASSWORD 'slipway' CREATEDB;
  END IF;
END $$;
-- Tests drop their throw-away databases WITH (FORCE), which terminates leftover
-- connections: that needs pg_signal_backend.
GRANT pg_signal_backend TO slipway;
SQL
