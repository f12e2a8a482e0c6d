#!/usr/bin/env bash
# The hostile-client modes against one server binary, each run on a fresh
# database and a fresh server: `slow-watch` (a subscriber that stops
# reading while a large entry changes), then `silent` (connections that
# send nothing) and `silent --half-preface`. Prints each run's output,
# ending in its summary line.
#
#   tools/bench/scripts/hostile.sh SERVER_BINARY
#
# SLOW_WATCH_ARGS and SILENT_ARGS (optional) add arguments to those modes,
# e.g. SLOW_WATCH_ARGS="--changes 5000" SILENT_ARGS="--seconds 10".
set -euo pipefail
bin=$1
bench=${AGENTRY_BENCH:-$(dirname "$0")/../../../target/release/agentry-bench}
db=agentry_bench_hostile
url=postgres://postgres@127.0.0.1:5432/$db
port=50093
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null' EXIT
read -ra slow_watch <<<"${SLOW_WATCH_ARGS:-}"
read -ra silent <<<"${SILENT_ARGS:-}"
run() {
  PGOPTIONS=--client-min-messages=warning psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  AGENTRY_LOG=warn DATABASE_URL=$url AGENTRY_LISTEN_ADDR=127.0.0.1:$port "$bin" >/tmp/hostile-server.log 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  key=$(DATABASE_URL=$url "$bin" keys create --role admin --description hostile 2>/dev/null)
  echo "=== $(basename "$bin") $*"
  "$bench" --url http://127.0.0.1:$port --admin-key "$key" --database-url "$url" --server-pid $pid "$@" 2>&1 | grep -vE '^\s*$'
  kill -TERM $pid; wait $pid 2>/dev/null || true
  pid=
}
run slow-watch "${slow_watch[@]}"
run silent "${silent[@]}"
run silent --half-preface "${silent[@]}"
PGOPTIONS=--client-min-messages=warning psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
