#!/usr/bin/env bash
# Soak: MINUTES (default 10) of churn against one `sockline serve`: rounds of
# 1,000 clients connecting, talking (20 lines each, 4 in flight) and leaving,
# with the server's RSS sampled every 10 s. RSS must come back to its
# baseline once the churn stops.
#
#   perf/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
cargo build --release -q -p sockline
SOCKLINE=target/release/sockline
ulimit -n "$(ulimit -Hn)"
LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$LOG"' EXIT

taskset -c 0 "$SOCKLINE" serve -q --listen 127.0.0.1:0 2>"$LOG" &
PID=$!
until grep -q 'listening on' "$LOG"; do sleep 0.05; done
ADDR=$(grep -o 'listening on [^ ]*' "$LOG" | cut -d' ' -f3)
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

echo "baseline RSS $(rss) KiB"
end=$((SECONDS + MINUTES * 60))
(
  while [ $SECONDS -lt $end ]; do
    taskset -c 1 "$SOCKLINE" bench "$ADDR" --conns 1000 --pipeline 4 --requests 20000 --json |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["completed"], r["errors"])'
  done
) > "$LOG.rounds" &
CHURN=$!
while [ $SECONDS -lt $end ]; do
  sleep 10
  echo "t=${SECONDS}s RSS $(rss) KiB"
done
wait "$CHURN" || true
sleep 2
rounds=$(wc -l < "$LOG.rounds")
errors=$(awk '{e += $2} END {print e + 0}' "$LOG.rounds")
replies=$(awk '{c += $1} END {print c + 0}' "$LOG.rounds")
echo "after the churn: RSS $(rss) KiB; $rounds rounds of 1,000 clients, $replies replies, $errors errors"
rm -f "$LOG.rounds"
