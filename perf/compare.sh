#!/usr/bin/env bash
# Side-by-side: sockline, a naive tokio server (perf/naive), memcached and
# redis-server (when installed), each pinned to CPU 0 with the load
# (`sockline bench`) pinned to CPU 1, measured in the same run, one table.
#
#   perf/compare.sh [ROUNDS]       (default 3; each figure is the median)
#
# Env: DURATION (s per rr run, default 5), IDLE (connections held, 10000),
# HOLD_MAX (connections for the "held at once" row, 19000), BEFORE (an older
# sockline binary: one more column and a "sockline / before" ratio, an A/B in
# the same interleaved rounds), PEERS (which servers, default all found,
# e.g. PEERS="sockline before" for the A/B alone).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${DURATION:-5}
IDLE=${IDLE:-10000}
HOLD_MAX=${HOLD_MAX:-19000}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

cargo build --release -q -p sockline -p naive
SOCKLINE=target/release/sockline
NAIVE=target/release/naive
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME: starts the server on CPU 0; sets PID, ADDR and PAYLOAD.
start() {
  local port
  port=$(free_port)
  ADDR=127.0.0.1:$port
  case $1 in
    sockline)  taskset -c 0 "$SOCKLINE" serve -q --listen "$ADDR" --max-conns 20000 2>/dev/null & PAYLOAD=hello ;;
    before)    taskset -c 0 "$BEFORE" serve -q --listen "$ADDR" --max-conns 20000 2>/dev/null & PAYLOAD=hello ;;
    naive)     taskset -c 0 "$NAIVE" "$ADDR" 2>/dev/null & PAYLOAD=hello ;;
    memcached) taskset -c 0 memcached -u root -t 1 -U 0 -c 20000 -l 127.0.0.1 -p "$port" & PAYLOAD=version ;;
    redis)     taskset -c 0 redis-server --port "$port" --save '' --appendonly no --maxclients 20000 \
                 --loglevel warning >/dev/null & PAYLOAD=PING ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port)).close()" 2>/dev/null && return
    sleep 0.05
  done
  echo "$1 did not start" >&2; exit 1
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
load() { taskset -c 1 "$SOCKLINE" bench "$ADDR" --payload "$PAYLOAD" --server-pid "$PID" --json "$@"; }

if [ -n "${PEERS:-}" ]; then
  read -r -a PEERS <<< "$PEERS"
else
  PEERS=(sockline)
  [ -n "${BEFORE:-}" ] && PEERS+=(before)
  PEERS+=(naive)
  command -v memcached >/dev/null && PEERS+=(memcached)
  command -v redis-server >/dev/null && PEERS+=(redis)
fi

# Rounds interleave the servers, so drift on this noisy machine hits all alike.
for round in $(seq "$ROUNDS"); do
  for peer in "${PEERS[@]}"; do
    echo "round $round: $peer" >&2
    start "$peer"
    load --conns 50 --pipeline 1 --duration "$DURATION" > "$OUT/$peer.rr1.$round.json"
    load --conns 50 --pipeline 16 --duration "$DURATION" > "$OUT/$peer.rr16.$round.json"
    load --conns 1000 --pipeline 1 --duration "$DURATION" > "$OUT/$peer.rr1000.$round.json"
    stop
    start "$peer"
    load --scenario idle --conns "$IDLE" --hold 2 > "$OUT/$peer.idle.$round.json"
    stop
  done
done
start sockline
load --scenario idle --conns "$HOLD_MAX" --hold 2 > "$OUT/sockline.hold.json"
stop

python3 - "$OUT" "$ROUNDS" "$DURATION" "$IDLE" "$HOLD_MAX" "${PEERS[@]}" <<'EOF'
import json, statistics, sys
out, rounds, duration, idle, hold_max, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
def med(peer, kind, field):
    vals = []
    for r in range(1, rounds + 1):
        rep = json.load(open(f"{out}/{peer}.{kind}.{r}.json"))
        if rep.get("errors"):
            print(f"warning: {peer} {kind} round {r}: {rep['errors']} errors", file=sys.stderr)
        if rep.get(field) is not None:
            vals.append(rep[field])
    return statistics.median(vals) if vals else None
rows = [
    ("server CPU µs per reply, 50 conns, 1 in flight", "rr1", "server_cpu_us_per_op", 3),
    ("server CPU µs per reply, 50 conns, 16 pipelined", "rr16", "server_cpu_us_per_op", 3),
    (f"RSS KiB per idle connection, {idle} held", "idle", "server_rss_per_conn_kib", 2),
    (f"RSS KiB per connection, {idle} after one line each", "idle", "server_rss_per_conn_answered_kib", 2),
    ("p99 latency ms, 1,000 conns, 1 in flight", "rr1000", "p99_us", 1),
    ("throughput k replies/s, 50 conns, 1 in flight", "rr1", "throughput", 0),
]
print(f"\n{rounds} rounds, median; server on CPU 0, load on CPU 1; ratio = sockline / best peer\n")
ab = "before" in peers
print("| figure | " + " | ".join(peers) + " | ratio |" + (" sockline / before |" if ab else ""))
print("|---|" + "---|" * (len(peers) + 1 + ab))
for name, kind, field, digits in rows:
    vals = {p: med(p, kind, field) for p in peers}
    if field == "p99_us":
        vals = {p: v / 1000 if v is not None else None for p, v in vals.items()}
    if field == "throughput":
        vals = {p: v / 1000 if v is not None else None for p, v in vals.items()}
    others = [v for p, v in vals.items() if p not in ("sockline", "before") and v is not None]
    best = (max if field == "throughput" else min)(others) if others else None
    ratio = f"{vals['sockline'] / best:.2f}" if best else "—"
    cells = [f"{v:.{digits}f}" if v is not None else "—" for v in vals.values()]
    versus = ""
    if ab:
        versus = f" {vals['sockline'] / vals['before']:.2f} |" if vals["before"] else " — |"
    print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |" + versus)
hold = json.load(open(f"{out}/sockline.hold.json"))
print(f"\nsockline held {hold['opened']} of {hold_max} connections at once, "
      f"{hold['answered']} answered correctly, {hold['errors']} errors; "
      f"RSS {hold['server_rss_per_conn_kib']:.2f} KiB per idle connection.")
EOF
