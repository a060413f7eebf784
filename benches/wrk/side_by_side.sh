#!/bin/bash
# The HTTP comparison of docs/performance.md: etcd 3.4, memstore and the no-op ceiling under the same wrk load,
# ROUNDS rounds (default 2) of 10 s per cell, one after the other on this machine.
#
#   cargo build --release --example memstore --example http_noop
#   benches/wrk/side_by_side.sh target/release/examples/memstore target/release/examples/http_noop
#
# Run from the repository root; SHARED points at the shared benchmark helpers (etcd-cluster.sh,
# etcd-put.lua, store-put.lua). memstore starts on fresh data dirs with --local-cluster 3
# (HTTP 8001-8003) plus MEMSTORE_ARGS (e.g. "--append-window 1"); the load goes to the leader.
set -u
MEMSTORE=$1
NOOP=$2
SHARED=${SHARED:-../shared/bench}
ROUNDS=${ROUNDS:-2}
MEMSTORE_ARGS=${MEMSTORE_ARGS:-}
row() {
  awk -v n="$1" -v c="$2" '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} /Non-2xx/{err=$0}
    END{printf "%-10s c=%-4s %9s req/s p50 %8s p99 %8s %s\n", n, c, rps, p50, p99, err}'
}
threads() { if [ "$1" = 1 ]; then echo 1; else echo 2; fi; }
memstore_run() {
  local c=$1 dir pid leader=""
  dir=$(mktemp -d)
  # shellcheck disable=SC2086 # MEMSTORE_ARGS is a list of flags
  "$MEMSTORE" --local-cluster 3 --data-dir "$dir" $MEMSTORE_ARGS > "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    leader=$(curl -s http://127.0.0.1:8001/leader | sed -n 's/.*"leader_id":\([0-9]*\).*/\1/p')
    [ -n "$leader" ] && break
    sleep 0.2
  done
  wrk -t"$(threads "$c")" -c"$c" -d10s --latency -s "$SHARED/store-put.lua" "http://127.0.0.1:800$leader" | row memstore "$c"
  kill -INT $pid; wait $pid 2>/dev/null; rm -rf "$dir"
}
for _ in $(seq 1 "$ROUNDS"); do
  dir=$(mktemp -d)
  "$SHARED/etcd-cluster.sh" start "$dir" > /dev/null 2>&1
  sleep 2
  for c in 1 64 256; do
    wrk -t"$(threads $c)" -c$c -d10s --latency -s "$SHARED/etcd-put.lua" http://127.0.0.1:23791 | row etcd $c
  done
  "$SHARED/etcd-cluster.sh" stop "$dir" > /dev/null 2>&1; rm -rf "$dir"
  for c in 1 64 256; do memstore_run $c; done
  "$NOOP" 127.0.0.1:8100 2 > /dev/null & pid=$!
  sleep 0.5
  for c in 64 256; do
    wrk -t2 -c$c -d10s --latency -s "$SHARED/store-put.lua" http://127.0.0.1:8100 | row http_noop $c
  done
  kill $pid; wait $pid 2>/dev/null
done
