#!/usr/bin/env bash
# Chat fan-out cost: `sockline serve --mode chat` next to the floor, a
# minimal C epoll server (perf/floor/fanout.c) in its two strategies:
# `perline` (one write per line per recipient) and `batched` (one write per
# recipient per event-loop round). Each server is pinned to CPU 0, the load
# (`sockline bench --scenario fanout`) to CPU 1; the servers take turns on
# each case. Per case, one table: delivered vs expected, p99 delivery
# latency, server CPU µs per delivered line, and sockline's CPU per delivery
# over each server's.
#
#   perf/chat.sh             (DURATION s per case and server, default 10)
#   BEFORE=path/to/older/sockline perf/chat.sh
#                            (also that binary, in the same rotation: an A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
cargo build --release -q -p sockline
SOCKLINE=target/release/sockline
FLOOR=target/fanout-floor
gcc -O2 -Wall -o "$FLOOR" perf/floor/fanout.c
ulimit -n "$(ulimit -Hn)"
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

SERVERS=(sockline perline batched)
if [ -n "${BEFORE:-}" ]; then SERVERS=(sockline before perline batched); fi

# start SERVER: starts it on CPU 0 on a free port; sets PID and ADDR.
start() {
  local log=$OUT/$1.log
  case $1 in
    sockline) taskset -c 0 "$SOCKLINE" serve --mode chat -q --listen 127.0.0.1:0 2>"$log" & ;;
    before)   taskset -c 0 "$BEFORE" serve --mode chat -q --listen 127.0.0.1:0 2>"$log" & ;;
    *)        taskset -c 0 "$FLOOR" 0 "$1" 2>"$log" & ;;
  esac
  PID=$!
  until grep -q 'listening on' "$log"; do
    kill -0 "$PID" 2>/dev/null || { echo "$1 did not start: $(cat "$log")" >&2; exit 1; }
    sleep 0.05
  done
  ADDR=$(grep -o 'listening on [^ ]*' "$log" | cut -d' ' -f3)
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }

run() { # members senders rate
  local case=$1.$2.$3
  echo "== $1 members, $2 sending $3 lines/s each, ${DURATION}s per server"
  for server in "${SERVERS[@]}"; do
    start "$server"
    taskset -c 1 "$SOCKLINE" bench "$ADDR" --scenario fanout --conns "$1" --senders "$2" \
      --rate "$3" --duration "$DURATION" --server-pid "$PID" --json > "$OUT/$case.$server.json"
    stop
  done
  python3 - "$OUT" "$case" "${SERVERS[@]}" <<'EOF'
import json, sys
out, case, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
rep = {s: json.load(open(f"{out}/{case}.{s}.json")) for s in servers}
names = {"sockline": "sockline", "before": "sockline (BEFORE)", "perline": "C perline (floor)", "batched": "C batched"}
cpu = lambda s: rep[s].get("server_cpu_us_per_op")
print("| server | delivered / expected | p99 delivery | server CPU per delivery | sockline / this | errors |")
print("|---|---|---|---|---|---|")
for s in servers:
    r = rep[s]
    p99 = f"{r['p99_us'] / 1000:.2f} ms" if r.get("p99_us") is not None else "—"
    c = f"{cpu(s):.2f} µs" if cpu(s) is not None else "—"
    ratio = f"{cpu('sockline') / cpu(s):.2f}" if s != "sockline" and cpu(s) and cpu("sockline") is not None else "—"
    print(f"| {names[s]} | {r['delivered']:,} / {r['expected']:,} | {p99} | {c} | {ratio} | {r['errors']} |")
    if r.get("first_error"):
        print(f"  {s}: first error: {r['first_error']}", file=sys.stderr)
EOF
  echo
}
run 100 20 100
run 100 1 200
run 1000 20 100
