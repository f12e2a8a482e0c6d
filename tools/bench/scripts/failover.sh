#!/usr/bin/env bash
# Three replicas of one server binary on one fresh database, a fleet spread
# over them, one replica killed with SIGKILL (agentry-bench failover).
#
#   tools/bench/scripts/failover.sh SERVER_BINARY [AGENTS_PER_REPLICA]
#
# e.g. failover.sh target/release/agentry-server 33000
set -euo pipefail
bin=$1 per=${2:-33000}
bench=${AGENTRY_BENCH:-$(dirname "$0")/../../../target/release/agentry-bench}
db=agentry_bench_failover
url=postgres://postgres@127.0.0.1:5432/$db
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
for port in 50081 50082 50083; do
  # One tenant holds the whole fleet: no per-tenant stream cap.
  AGENTRY_TENANT_STREAMS=0 AGENTRY_LOG=warn DATABASE_URL=$url AGENTRY_LISTEN_ADDR=127.0.0.1:$port \
    AGENTRY_REPLICA_NAME=replica-$port "$bin" >/tmp/failover-$port.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
key=$(DATABASE_URL=$url "$bin" keys create --role admin --description failover)
"$bench" --url http://127.0.0.1:50081 --admin-key "$key" --database-url "$url" --threads 1 \
  failover --replica-urls http://127.0.0.1:50081,http://127.0.0.1:50082,http://127.0.0.1:50083 \
  --kill 2 --kill-pid "${pids[2]}" --agents-per-replica "$per" --steady 20
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
