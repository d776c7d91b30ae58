#!/usr/bin/env bash
# Chat fan-out cost: `sockline serve --mode chat` pinned to CPU 0, the load
# (`sockline bench --scenario fanout`) on CPU 1. Prints server CPU µs per
# delivered line, delivered vs expected, and delivery latency.
#
#   bench/chat.sh            (DURATION s per case, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
cargo build --release -q -p sockline
SOCKLINE=target/release/sockline
ulimit -n "$(ulimit -Hn)"
LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null; rm -f "$LOG"' EXIT

taskset -c 0 "$SOCKLINE" serve --mode chat -q --listen 127.0.0.1:0 2>"$LOG" &
PID=$!
until grep -q 'listening on' "$LOG"; do sleep 0.05; done
ADDR=$(grep -o 'listening on [^ ]*' "$LOG" | cut -d' ' -f3)

run() { # members senders rate
  echo "== $1 members, $2 sending $3 lines/s each, ${DURATION}s"
  taskset -c 1 "$SOCKLINE" bench "$ADDR" --scenario fanout --conns "$1" --senders "$2" \
    --rate "$3" --duration "$DURATION" --server-pid "$PID" |
    grep -E 'expected|delivered|latency|server CPU|errors'
}
run 100 20 100
run 100 1 200
run 1000 20 100
