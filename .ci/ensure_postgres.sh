#!/usr/bin/env bash
# Make PostgreSQL answer on 127.0.0.1:5432 with trust auth and a database "test", for
# the SQL-source tests. Uses the server that is already there when it answers; else
# starts an installed cluster; else installs Debian's packages and starts one. Idempotent.
set -euo pipefail

HOST=127.0.0.1
PORT=5432

answers() { pg_isready -q -h "$HOST" -p "$PORT" -U postgres 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 || ! answers; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "ensure_postgres: installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$version/main
  # Tests connect over TCP as postgres without a password: trust on loopback only.
  if ! grep -q "churn_assets ci" "$conf/pg_hba.conf"; then
    { echo "# churn_assets ci: trust on loopback"
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$conf/pg_hba.conf"; } > "$conf/pg_hba.conf.new"
    mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
    chown postgres:postgres "$conf/pg_hba.conf"
  fi
  sed -i "s/^#\?port = .*/port = $PORT/; s/^#\?listen_addresses = .*/listen_addresses = 'localhost'/" \
    "$conf/postgresql.conf"
  echo "ensure_postgres: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || \
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  for _ in $(seq 1 30); do answers && break; sleep 1; done
  answers || { echo "ensure_postgres: PostgreSQL still not answering on $HOST:$PORT" >&2; exit 1; }
fi

if ! psql -h "$HOST" -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h "$HOST" -p "$PORT" -U postgres -qc "CREATE DATABASE test"
fi
echo "ensure_postgres: PostgreSQL answers on $HOST:$PORT (database test)"
