#!/usr/bin/env bash
# Schemathesis against a real `churn-assets serve` on loopback: a small model trained on
# simulator data and deployed to a temporary registry, every check (server errors, and
# the schema and the server agreeing on what is valid), a bounded number of examples
# per operation. Twice: without auth, and with a bearer token. Any failed check fails.
# Needs the dev extra (schemathesis); takes well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py="$repo/.venv/bin/python"
work=$(mktemp -d)
server=""
stop_server() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1

"$py" - "$work/registry" <<'PY'
import sys
from churn_assets.devtools.sample_models import register, sample_frames, train_family
from churn_assets.storage.registry import ModelRegistry

registry = ModelRegistry(sys.argv[1])
version = register(registry, train_family(sample_frames(n_customers=600), "logistic_regression"))
registry.promote(version.version, "ci: schemathesis")
print("deployed", version.version)
PY

fuzz() {  # $1: the API token, or empty for none
  local token=$1 port auth=()
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # A small --max-batch, so the fuzzer reaches the batch cap (maxItems) and one past it.
  CHURN_ASSETS_API_TOKEN="$token" "$repo/.venv/bin/churn-assets" serve --host 127.0.0.1 --port "$port" \
    --registry "$work/registry" --max-batch 20 > "$work/server.log" 2>&1 &
  server=$!
  if ! "$py" - "$port" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("the server did not become ready within 60 s")
PY
  then
    cat "$work/server.log"
    return 1
  fi
  if [ -n "$token" ]; then auth=(-H "Authorization: Bearer $token"); fi
  # Run from the work directory: Schemathesis keeps .hypothesis/ and .schemathesis/ there.
  (cd "$work" && "$repo/.venv/bin/st" run "http://127.0.0.1:$port/openapi.json" "${auth[@]}" \
    --checks all --max-examples 150 --seed 1 --generation-database none --request-timeout 10 \
    --no-color --output-sanitize true)
  stop_server
}

echo "--- without auth"
fuzz ""
echo "--- with a bearer token"
fuzz "ci-fuzz-token-$$"
