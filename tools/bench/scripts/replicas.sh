#!/usr/bin/env bash
# Two replicas of one server binary on one fresh database per run, and
# agentry-bench against the first (--url, --server-pid) with
# --replica-url naming the second, as `propagation` wants. Prints both
# servers' CPU time over each run.
#
#   tools/bench/scripts/replicas.sh BINARY REPS -- BENCH_ARGS...
#
# e.g. replicas.sh target/release/agentry-server 2 -- propagation --agents 10000 --window 1
set -euo pipefail
bin=$1 reps=$2; shift 3
bench=${AGENTRY_BENCH:-$(dirname "$0")/../../../target/release/agentry-bench}
db=agentry_bench_replicas
url=postgres://postgres@127.0.0.1:5432/$db
ports=(50091 50092)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' EXIT
for rep in $(seq 1 "$reps"); do
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  pids=()
  # One after the other: the first creates and migrates the database.
  for port in "${ports[@]}"; do
    AGENTRY_LOG=warn DATABASE_URL=$url AGENTRY_LISTEN_ADDR=127.0.0.1:$port "$bin" >"/tmp/replicas-$port.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  done
  key=$(DATABASE_URL=$url "$bin" keys create --role admin --description replicas)
  a0=$(cpu "${pids[0]}") b0=$(cpu "${pids[1]}")
  out=$("$bench" --url "http://127.0.0.1:${ports[0]}" --admin-key "$key" --database-url "$url" \
        --server-pid "${pids[0]}" "$@" --replica-url "http://127.0.0.1:${ports[1]}" 2>&1)
  a1=$(cpu "${pids[0]}") b1=$(cpu "${pids[1]}")
  echo "=== rep $rep $(basename "$bin"): server CPU A $(( a1 - a0 ))0 ms, B $(( b1 - b0 ))0 ms"
  echo "$out" | grep -vE '^\s*$' | tail -n 12
  for p in "${pids[@]}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
done
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
