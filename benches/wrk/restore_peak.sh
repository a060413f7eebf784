#!/bin/bash
# Memory of restoring a snapshot (docs/performance.md): three memstore processes, a follower
# stopped before KEYS_PER_THREAD x 2 distinct 100-byte keys are written, one snapshot on the
# leader. Prints the peak RSS of (1) the follower catching up from the leader's snapshot, (2) the
# leader sending it (its peak reset just before), (3) the follower restarting from its own snapshot.
#
#   cargo build --release --example memstore
#   benches/wrk/restore_peak.sh target/release/examples/memstore 525000
#
# Ports: raft 61161-61163, HTTP 8111-8113. Automatic snapshots are off (--snapshot-threshold).
set -u
BIN=$1
K=$2
WORK=$(mktemp -d)
PEERS="1=127.0.0.1:61161,2=127.0.0.1:61162,3=127.0.0.1:61163"
HERE=$(dirname "$0")
start() {
  "$BIN" --id "$1" --raft-addr 127.0.0.1:6116"$1" --web-server 127.0.0.1:811"$1" \
    --data-dir "$WORK/node-$1" --initial-peers "$PEERS" --snapshot-threshold 100000000 \
    >> "$WORK/log-$1.txt" 2>&1 &
  echo $! > "$WORK/pid-$1"
}
pid() { cat "$WORK/pid-$1"; }
mem() { grep -E 'VmRSS|VmHWM' "/proc/$(pid "$1")/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
stop() { kill -INT "$(pid "$1")"; wait "$(pid "$1")" 2>/dev/null; }
# A restored node answers this key (written early by the first wrk thread) from its own copy.
caught_up() {
  for _ in $(seq 1 900); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:811$1/store/t1-1000?consistency=stale")" = 200 ] && return 0
    sleep 0.1
  done
  echo "node $1 never caught up"; return 1
}
for i in 1 2 3; do start $i; done
L=""
for _ in $(seq 1 100); do
  for i in 1 2 3; do curl -s http://127.0.0.1:811$i/leader | grep -q "\"leader_id\":$i" && L=$i; done
  [ -n "$L" ] && break
  sleep 0.2
done
F=$(( L % 3 + 1 ))
stop $F
KEYS_PER_THREAD=$K wrk -t2 -c256 -d90s -s "$HERE/put-100b.lua" "http://127.0.0.1:811$L" > /dev/null
curl -s -X POST "http://127.0.0.1:811$L/snapshot"; echo
ls -l "$WORK/node-$L/snapshots/"
echo 5 > "/proc/$(pid $L)/clear_refs"
echo "leader before sending (peak reset): $(mem $L)"
t0=$(date +%s.%N); start $F; caught_up $F; t1=$(date +%s.%N)
echo "follower caught up from the leader's snapshot in $(echo "$t1 - $t0" | bc) s: $(mem $F)"
echo "leader after sending: $(mem $L)"
curl -s -X POST "http://127.0.0.1:811$F/snapshot"; echo
stop $F
t0=$(date +%s.%N); start $F; caught_up $F; t1=$(date +%s.%N)
echo "follower restarted from its own snapshot in $(echo "$t1 - $t0" | bc) s: $(mem $F)"
for i in 1 2 3; do stop $i; done
rm -rf "$WORK"
