#!/usr/bin/env bash
# Side-by-side runs of agentry-bench against two server binaries, alternating
# A and B so that both see the same machine. Each run gets a fresh database
# and a fresh server; the server's CPU time over the run is read from /proc.
#
#   tools/bench/scripts/ab.sh BEFORE_BINARY AFTER_BINARY REPS -- BENCH_ARGS...
#
# B_ARGS (optional) adds arguments to B's runs only, to compare one binary
# with itself under two loads (e.g. B_ARGS=--load-reports).
#
# e.g. ab.sh /tmp/server-old target/release/agentry-server 2 -- heartbeats --agents 1000 --seconds 10
set -euo pipefail
a=$1 b=$2 reps=$3; shift 4
bench=${AGENTRY_BENCH:-$(dirname "$0")/../../../target/release/agentry-bench}
db=agentry_bench_ab
url=postgres://postgres@127.0.0.1:5432/$db
port=50091
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null' EXIT
for rep in $(seq 1 "$reps"); do
  for side in a b; do
    if [ "$side" = a ]; then bin=$a; else bin=$b; fi
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    AGENTRY_LOG=warn DATABASE_URL=$url AGENTRY_LISTEN_ADDR=127.0.0.1:$port "$bin" >/tmp/ab-server.log 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    key=$(DATABASE_URL=$url "$bin" keys create --role admin --description ab)
    before=$(cpu $pid)
    extra=()
    if [ "$bin" = "$b" ] && [ -n "${B_ARGS:-}" ] && [ "$side" = b ]; then read -ra extra <<<"$B_ARGS"; fi
    out=$("$bench" --url http://127.0.0.1:$port --admin-key "$key" --database-url "$url" --server-pid $pid "$@" "${extra[@]}" 2>&1)
    after=$(cpu $pid)
    echo "=== rep $rep $side $(basename "$bin")${extra[*]:+ ${extra[*]}}: server CPU $(( (after - before) ))0 ms"
    echo "$out" | grep -vE '^\s*$' | tail -n 20
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done
done
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
