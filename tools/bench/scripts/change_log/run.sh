#!/usr/bin/env bash
# Issue 23's question, asked of PostgreSQL alone with pgbench: what one
# change per transaction costs when each commit NOTIFYs (today's feed),
# when it inserts a row into a change log read in commit order instead,
# and when it does both (a wake-up per transaction). Each script updates
# one row of 10,000 (base.sql: only that). Offered rates 2,500/s and
# 5,000/s, 16 clients, 15 s each, on a fresh database; the machine's busy
# CPU over each run (/proc/stat, so pgbench's own share is in every figure
# alike) per committed transaction.
#
#   tools/bench/scripts/change_log/run.sh
set -euo pipefail
cd "$(dirname "$0")"
db=agentry_change_log_bench
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -h 127.0.0.1 -U postgres -d $db -q <<'SQL'
CREATE TABLE rows (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO rows SELECT g, 0 FROM generate_series(1, 10000) g;
CREATE TABLE change_log (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(), payload jsonb NOT NULL);
SQL
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
for rate in 2500 5000; do
  for mode in base notify log lognotify; do
    psql -h 127.0.0.1 -U postgres -d $db -qc "TRUNCATE change_log"
    b0=$(busy)
    out=$(pgbench -h 127.0.0.1 -U postgres -n -c 16 -j 2 -T 15 -R "$rate" -f "$mode.sql" $db 2>&1)
    b1=$(busy)
    tps=$(echo "$out" | grep -o "tps = [0-9.]*" | head -1 | cut -d' ' -f3)
    lat=$(echo "$out" | grep "latency average" | head -1 | grep -o "[0-9.]* ms")
    echo "offered=$rate/s $mode: committed $tps/s, latency $lat, busy CPU per commit $(echo "($b1-$b0)*10000/($tps*15)" | bc) us"
  done
done
# Batches, as Agentry's writers commit: 100 changes per transaction (one
# NOTIFY per change, as a row trigger sends them; or 100 log rows and one
# wake-up), 50 transactions/s offered: 5,000 changes/s. Per change.
for mode in batch_notify batch_log; do
  psql -h 127.0.0.1 -U postgres -d $db -qc "TRUNCATE change_log"
  b0=$(busy)
  out=$(pgbench -h 127.0.0.1 -U postgres -n -c 4 -j 2 -T 15 -R 50 -f "$mode.sql" $db 2>&1)
  b1=$(busy)
  tps=$(echo "$out" | grep -o "tps = [0-9.]*" | head -1 | cut -d' ' -f3)
  lat=$(echo "$out" | grep "latency average" | head -1 | grep -o "[0-9.]* ms")
  echo "offered=5000 changes/s in batches of 100, $mode: committed $tps/s, latency $lat, busy CPU per change $(echo "($b1-$b0)*10000/($tps*15*100)" | bc) us"
done
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db"
