#!/usr/bin/env bash
# WebSocket side by side: `sockline serve --mode echo --web`, the Node `ws`
# package's echo server (perf/ws-peers/node) and tokio-tungstenite's echo
# server (perf/ws-peers/tungstenite, stock config, and with an 8 KiB read
# buffer), each pinned to CPU 0 with the load (`sockline bench ws://...`)
# pinned to CPU 1, measured in the same run, one table.
#
#   perf/ws.sh [ROUNDS]       (default 3; each figure is the median)
#
# Every round runs every server, in the opposite order to the round before
# (ABC CBA ABC ...), so drift on this noisy machine hits all alike; the
# ratios are also given per round. Per server and round: rr with 50
# connections and 1, then 16, messages in flight (server CPU µs per
# message), then a fresh server for the idle run: IDLE WebSocket
# connections held (RSS per idle connection), then one message each. The
# server's CPU per message is also split into user space and kernel
# (utime and stime around each rr run).
#
# Env: DURATION (s per rr run, default 5), IDLE (connections held, 10000),
# PEERS (which servers, default "sockline node tungstenite tungstenite-8k"),
# KEEP (a directory to keep the JSON reports in).
# Needs node and npm (the ws package is installed from package-lock.json
# into perf/ws-peers/node/node_modules on the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${DURATION:-5}
IDLE=${IDLE:-10000}
read -r -a PEERS <<< "${PEERS:-sockline node tungstenite tungstenite-8k}"
OUT=${KEEP:-$(mktemp -d)}
mkdir -p "$OUT"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$OUT"' EXIT

cargo build --release -q -p sockline -p ws-peer-tungstenite
SOCKLINE=target/release/sockline
TUNGSTENITE=target/release/ws-peer-tungstenite
if [ ! -d perf/ws-peers/node/node_modules/ws ]; then
  (cd perf/ws-peers/node && npm ci --no-audit --no-fund --loglevel=error)
fi
# IDLE connections on each side; the server side is another process.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -le "$((IDLE + 100))" ]; then
  echo "ulimit -n is $(ulimit -n): too few files for $IDLE connections" >&2; exit 1
fi

# start SERVER: starts it on CPU 0 on a free port; sets PID and URL.
start() {
  local log=$OUT/$1.log
  rm -f "$log"
  case $1 in
    sockline)       taskset -c 0 "$SOCKLINE" serve -q --mode echo --listen 127.0.0.1:0 \
                      --web 127.0.0.1:0 --max-conns $((IDLE + 1000)) 2>"$log" & ;;
    node)           taskset -c 0 node perf/ws-peers/node/server.js 0 2>"$log" & ;;
    tungstenite)    taskset -c 0 "$TUNGSTENITE" 127.0.0.1:0 2>"$log" & ;;
    tungstenite-8k) taskset -c 0 "$TUNGSTENITE" 127.0.0.1:0 8192 2>"$log" & ;;
    *) echo "unknown server $1" >&2; exit 1 ;;
  esac
  PID=$!
  until grep -q 'listening on' "$log" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { echo "$1 did not start: $(cat "$log")" >&2; exit 1; }
    sleep 0.05
  done
  if [ "$1" = sockline ]; then
    URL=ws://$(grep -o 'web listening on [^ ]*' "$log" | cut -d' ' -f4)/ws
  else
    URL=ws://$(grep -o 'listening on [^ ]*' "$log" | cut -d' ' -f3)/ws
  fi
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
load() { taskset -c 1 "$SOCKLINE" bench "$URL" --server-pid "$PID" --json "$@"; }
# The server's utime and stime so far, in ticks (/proc/PID/stat fields 14, 15).
ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$PID/stat"; }
# rr DEPTH: 50 connections, DEPTH in flight; the server's user/system split
# around the run goes next to the report.
rr() {
  local before
  before=$(ticks)
  load --conns 50 --pipeline "$1" --duration "$DURATION" > "$OUT/$peer.rr$1.$round.json"
  echo "$before $(ticks)" > "$OUT/$peer.rr$1.$round.ticks"
}

order=("${PEERS[@]}")
for round in $(seq "$ROUNDS"); do
  for peer in "${order[@]}"; do
    echo "round $round: $peer" >&2
    start "$peer"
    rr 1
    rr 16
    stop
    start "$peer"
    load --scenario idle --conns "$IDLE" --hold 2 --verify-echo > "$OUT/$peer.idle.$round.json"
    stop
  done
  # The next round runs the servers in the opposite order.
  for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
    t=${order[i]}; order[i]=${order[j]}; order[j]=$t
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE" "${PEERS[@]}" <<'EOF'
import json, statistics, sys
out, rounds, idle, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def rep(peer, kind, r):
    x = json.load(open(f"{out}/{peer}.{kind}.{r}.json"))
    try:
        u0, s0, u1, s1 = map(int, open(f"{out}/{peer}.{kind}.{r}.ticks").read().split())
        if x.get("server_cpu_us_per_op") is not None and (u1 - u0) + (s1 - s0) > 0:
            x["user_us_per_op"] = x["server_cpu_us_per_op"] * (u1 - u0) / ((u1 - u0) + (s1 - s0))
    except FileNotFoundError:
        pass
    return x
def val(peer, kind, field, r):
    x = rep(peer, kind, r)
    if x.get("errors"):
        print(f"warning: {peer} {kind} round {r}: {x['errors']} errors: {x.get('first_error')}", file=sys.stderr)
    return x.get(field)
def med(peer, kind, field):
    vals = [v for r in range(1, rounds + 1) if (v := val(peer, kind, field, r)) is not None]
    return statistics.median(vals) if vals else None
stock = [p for p in peers if p in ("node", "tungstenite")]
others = [p for p in peers if p != "sockline"]
rows = [
    ("server CPU µs per message, 50 conns, 1 in flight", "rr1", "server_cpu_us_per_op", 3, "≤ 0.7 × best peer"),
    ("server CPU µs per message, 50 conns, 16 in flight", "rr16", "server_cpu_us_per_op", 3, "≤ 0.7 × best peer"),
    ("of which user space (the rest: kernel), 1 in flight", "rr1", "user_us_per_op", 3, ""),
    ("of which user space (the rest: kernel), 16 in flight", "rr16", "user_us_per_op", 3, ""),
    (f"RSS KiB per idle WebSocket, {idle} held", "idle", "server_rss_per_conn_kib", 2, "≤ 1 KiB"),
    (f"RSS KiB per WebSocket, {idle} after one message each", "idle", "server_rss_per_conn_answered_kib", 2, ""),
    ("throughput k messages/s, 50 conns, 1 in flight", "rr1", "throughput", 0, ""),
    ("throughput k messages/s, 50 conns, 16 in flight", "rr16", "throughput", 0, ""),
]
print(f"\n{rounds} rounds, median; servers on CPU 0, load on CPU 1;")
print("ratio = sockline / best peer: of the stock peers (node, tungstenite), and of all;")
print("per round: that ratio within each round, round 1 first\n")
print("| figure | " + " | ".join(peers) + " | ratio (stock) | ratio (all) | per round (all) | goal |")
print("|---|" + "---|" * (len(peers) + 4))
for name, kind, field, digits, goal in rows:
    scale = 1000 if field == "throughput" else 1
    vals = {p: med(p, kind, field) for p in peers}
    better = max if field == "throughput" else min
    def ratio(among, values):
        best = [values[p] for p in among if values.get(p) is not None]
        if "sockline" not in values or values["sockline"] is None or not best or not better(best):
            return None
        return values["sockline"] / better(best)
    fmt = lambda r: f"{r:.2f}" if r is not None else "—"
    per_round = []
    for r in range(1, rounds + 1):
        per_round.append(fmt(ratio(others, {p: val(p, kind, field, r) for p in peers})))
    cells = [f"{v / scale:.{digits}f}" if v is not None else "—" for v in vals.values()]
    stock_ratio, all_ratio, per = fmt(ratio(stock, vals)), fmt(ratio(others, vals)), " ".join(per_round)
    print(f"| {name} | " + " | ".join(cells) + f" | {stock_ratio} | {all_ratio} | {per} | {goal} |")
print()
for p in peers:
    errors = sum(rep(p, k, r).get("errors", 0) for k in ("rr1", "rr16", "idle") for r in range(1, rounds + 1))
    held = [rep(p, "idle", r) for r in range(1, rounds + 1)]
    print(f"{p}: {errors} errors in all runs; idle: opened {min(h['opened'] for h in held)}-{max(h['opened'] for h in held)} "
          f"of {idle}, answered {min(h['answered'] or 0 for h in held)}-{max(h['answered'] or 0 for h in held)}; "
          f"RSS before {statistics.median(h['server_rss_base_kib'] for h in held):.0f} KiB")
EOF
