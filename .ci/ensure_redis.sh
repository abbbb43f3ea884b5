#!/usr/bin/env bash
# Make Redis answer on 127.0.0.1:6379, for the Celery-worker test (the broker). Uses the
# server that is already there; else starts an installed one; else installs Debian's
# package and starts it, in memory only, on loopback. Idempotent.
set -euo pipefail

answers() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! command -v redis-cli >/dev/null 2>&1 || ! answers; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure_redis: installing Redis from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
  fi
  echo "ensure_redis: starting redis-server on 127.0.0.1:6379"
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes
  for _ in $(seq 1 30); do answers && break; sleep 1; done
  answers || { echo "ensure_redis: Redis still not answering on 127.0.0.1:6379" >&2; exit 1; }
fi
echo "ensure_redis: Redis answers on 127.0.0.1:6379"
