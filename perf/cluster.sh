#!/usr/bin/env bash
# Chat across servers through Redis, next to one chat server without Redis,
# in the same run. Per case a fresh redis-server (free port, --save ''
# --appendonly no) and two nodes `sockline serve --mode chat --redis ...
# --node a|b`; `sockline bench --scenario fanout` spreads the members over
# both nodes round-robin (senders too: 10 on each node), checks that every
# receiver saw the lines in one order, and sums the CPU of the nodes and
# Redis (--server-pid three times). Then a fresh single node without Redis
# gets the same members and senders.
#
# Pinning (two cores; PIN=servers|split, default servers):
#   servers: the nodes, Redis and the single node on CPU 0, the load on CPU 1.
#            Everything serving shares one core, as the single node has one
#            core to itself: the cluster's CPU per delivery is compared on
#            equal hardware, and the load generator never competes with it.
#   split:   the nodes (and the single node) on CPU 0; Redis and the load on
#            CPU 1. Redis gets room, but competes with the generator, whose
#            timing then colours the latency.
# Measured both on this machine (DURATION=10, cluster rows): `servers` gave
# the lower CPU per delivery, 2.29 vs 3.34 µs at 100 members and 0.41 vs
# 0.54 µs at 1,000 (Redis alone 49 vs 71 µs per room line: with a core of
# its own it wakes for fewer lines at a time), and p99 was mixed (9 vs 19 ms
# at 100 members; 257 vs 152 ms at 1,000, and the other way round in a 3 s
# run). `servers` is also the fair comparison: the cluster gets exactly the
# one core the single node gets, and the load generator has the other core
# to itself, for the cluster as for the single node.
#
# Per case, one table: delivered / expected, order violations (lines a
# receiver got out of the one room order; 0 is right), p99 delivery latency,
# total server CPU µs per delivery (nodes + Redis; the single node alone),
# the cluster's over the single node's, and Redis CPU per room line (Redis's
# CPU time in the measured phase, from the bench's server_cpu_us_each,
# divided by the stamped lines sent).
#
#   perf/cluster.sh          (DURATION s per case and setup, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
PIN=${PIN:-servers}
case $PIN in
  servers) SERVE_CPU=0 REDIS_CPU=0 LOAD_CPU=1 ;;
  split)   SERVE_CPU=0 REDIS_CPU=1 LOAD_CPU=1 ;;
  *) echo "PIN must be servers or split" >&2; exit 2 ;;
esac
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release -q -p sockline
SOCKLINE=${CARGO_TARGET_DIR:-target}/release/sockline
ulimit -n "$(ulimit -Hn)"
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_redis: sets REDIS_PID and REDIS_PORT.
start_redis() {
  REDIS_PORT=$(free_port)
  taskset -c "$REDIS_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save '' --appendonly no --logfile "$OUT/redis.log" &
  REDIS_PID=$!
  until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do
    kill -0 "$REDIS_PID" 2>/dev/null || { echo "redis did not start: $(cat "$OUT/redis.log")" >&2; exit 1; }
    sleep 0.05
  done
}

# start_node NAME [ARGS...]: a chat node on CPU SERVE_CPU on a free port;
# sets PID and ADDR.
start_node() {
  local log=$OUT/$1.log
  shift
  : > "$log" # Before the node starts: the last case's node wrote here too.
  taskset -c "$SERVE_CPU" "$SOCKLINE" serve --mode chat -q --listen 127.0.0.1:0 "$@" 2>"$log" &
  PID=$!
  until grep -q 'listening on' "$log"; do
    kill -0 "$PID" 2>/dev/null || { echo "node did not start: $(cat "$log")" >&2; exit 1; }
    sleep 0.05
  done
  ADDR=$(grep -o 'listening on [^ ]*' "$log" | cut -d' ' -f3)
}
stop() { for p in "$@"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; }

run() { # members senders rate
  local case=$1.$2.$3
  echo "== $1 members over 2 nodes, $2 sending $3 lines/s each, ${DURATION}s per setup (PIN=$PIN)"
  local bench=(--scenario fanout --conns "$1" --senders "$2" --rate "$3" --duration "$DURATION" --json)

  start_redis
  start_node a --redis "redis://127.0.0.1:$REDIS_PORT" --node a
  local pid_a=$PID addr_a=$ADDR
  start_node b --redis "redis://127.0.0.1:$REDIS_PORT" --node b
  local pid_b=$PID addr_b=$ADDR
  taskset -c "$LOAD_CPU" "$SOCKLINE" bench "$addr_a" --also "$addr_b" "${bench[@]}" \
    --server-pid "$pid_a" --server-pid "$pid_b" --server-pid "$REDIS_PID" > "$OUT/$case.cluster.json"
  stop "$pid_a" "$pid_b" "$REDIS_PID"

  start_node single
  taskset -c "$LOAD_CPU" "$SOCKLINE" bench "$ADDR" "${bench[@]}" --server-pid "$PID" > "$OUT/$case.single.json"
  stop "$PID"

  python3 - "$OUT" "$case" <<'EOF'
import json, sys
out, case = sys.argv[1], sys.argv[2]
rep = {s: json.load(open(f"{out}/{case}.{s}.json")) for s in ("cluster", "single")}
# The measured phase's CPU of node a, node b and Redis, in that order.
redis_us = (rep["cluster"].get("server_cpu_us_each") or [None] * 3)[2]
names = {"cluster": "2 nodes + Redis", "single": "1 node, no Redis"}
cpu = lambda s: rep[s].get("server_cpu_us_per_op")
print("| setup | delivered / expected | order violations | p99 delivery | server CPU per delivery | cluster / single | Redis CPU per room line | errors |")
print("|---|---|---|---|---|---|---|---|")
for s in ("cluster", "single"):
    r = rep[s]
    p99 = f"{r['p99_us'] / 1000:.2f} ms" if r.get("p99_us") is not None else "—"
    c = f"{cpu(s):.2f} µs" if cpu(s) is not None else "—"
    ratio = f"{cpu('cluster') / cpu('single'):.2f}" if s == "cluster" and cpu("single") and cpu("cluster") is not None else "—"
    redis = f"{redis_us / r['sent']:.1f} µs" if s == "cluster" and r.get("sent") and redis_us is not None else "—"
    print(f"| {names[s]} | {r['delivered']:,} / {r['expected']:,} | {r.get('order_violations')} | {p99} | {c} | {ratio} | {redis} | {r['errors']} |")
    if r.get("first_error"):
        print(f"  {s}: first error: {r['first_error']}", file=sys.stderr)
EOF
  echo
}
run 100 20 100
run 1000 20 100
