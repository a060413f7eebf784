#!/bin/bash
# CPU time per request of each server and of wrk, etcd 3.4 and memstore in turn under the same wrk
# loads as side_by_side.sh, ROUNDS rounds (default 3) of SECS seconds (default 8) per cell.
#
#   cargo build --release --example memstore
#   benches/wrk/cpu_per_request.sh target/release/examples/memstore
#
# Why: wrk and the servers share this machine's cores, so req/s says how the cores were split as
# much as how cheap a server is. The servers' user+system time (from /proc/<pid>/stat, all three
# etcd processes, the one memstore process with its three nodes) divided by the requests answered
# says what one request costs each server, whatever wrk took. wrk's own time (`/usr/bin/time`) is
# printed too: etcd's wrk script base64-encodes in Lua, memstore's does not.
set -u
MEMSTORE=$1
SHARED=${SHARED:-../shared/bench}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | awk '{s+=$1} END{print s}'; }
# row NAME CONNS WRK_OUTPUT WRK_TIME SERVER_TICKS
row() {
  local requests wrk_secs
  requests=$(awk '/requests in/{print $1}' "$3")
  wrk_secs=$(awk '{print $1+$2}' "$4")
  awk -v n="$1" -v c="$2" -v r="$requests" -v t="$5" -v w="$wrk_secs" -v hz="$(getconf CLK_TCK)" '
    /Requests\/sec/{rps=$2} /^ +99%/{p99=$2}
    END{printf "%-9s c=%-4s %9s req/s p99 %8s  server %6.1f us/req  wrk %5.1f us/req\n",
        n, c, rps, p99, t*1e6/hz/r, w*1e6/r}' "$3"
}
for _ in $(seq 1 "$ROUNDS"); do
  for c in 64 256; do
    dir=$(mktemp -d)
    "$SHARED/etcd-cluster.sh" start "$dir" > /dev/null 2>&1
    sleep 2
    # shellcheck disable=SC2046 # one pid per file
    set -- $(cat "$dir"/*.pid)
    before=$(ticks "$@")
    /usr/bin/time -f "%U %S" -o "$dir/time" wrk -t2 -c"$c" -d"${SECS}s" --latency \
      -s "$SHARED/etcd-put.lua" http://127.0.0.1:23791 > "$dir/wrk"
    row etcd "$c" "$dir/wrk" "$dir/time" $(($(ticks "$@") - before))
    "$SHARED/etcd-cluster.sh" stop "$dir" > /dev/null 2>&1; rm -rf "$dir"

    dir=$(mktemp -d)
    "$MEMSTORE" --local-cluster 3 --data-dir "$dir" > "$dir/log" 2>&1 &
    pid=$!
    leader=""
    for _ in $(seq 1 100); do
      leader=$(curl -s http://127.0.0.1:8001/leader | sed -n 's/.*"leader_id":\([0-9]*\).*/\1/p')
      [ -n "$leader" ] && break
      sleep 0.2
    done
    before=$(ticks $pid)
    /usr/bin/time -f "%U %S" -o "$dir/time" wrk -t2 -c"$c" -d"${SECS}s" --latency \
      -s "$SHARED/store-put.lua" "http://127.0.0.1:800$leader" > "$dir/wrk"
    row memstore "$c" "$dir/wrk" "$dir/time" $(($(ticks $pid) - before))
    kill -INT $pid; wait $pid 2>/dev/null; rm -rf "$dir"
  done
done
