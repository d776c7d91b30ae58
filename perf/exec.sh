#!/usr/bin/env bash
# `sockline serve --exec cat` next to ncat and socat running the same helper
# per connection, measured in the same run, one table. Every server and all
# its helpers on CPU 0, the load on CPU 1.
#
#   perf/exec.sh [ROUNDS]       (default 3; each figure is the median)
#
# The servers (PEERS, default all six):
#   sockline    sockline serve --exec cat            (cat, no shell: a plain
#                                                      command is started directly)
#   sockline-sh sockline serve --exec ':; cat'       (/bin/sh -c, which forks cat)
#   ncat        ncat -lk --sh-exec cat               (/bin/sh -c cat)
#   socat       socat TCP-LISTEN:...,fork SYSTEM:cat (/bin/sh -c cat)
#   ncat-exec   ncat -lk --exec /bin/cat             (cat, no shell)
#   socat-exec  socat TCP-LISTEN:...,fork EXEC:cat   (cat, no shell)
# sockline starts a command of plain words naming a program without a
# shell, as ncat --exec and socat EXEC: do; any other command goes through
# /bin/sh -c, as ncat --sh-exec and socat SYSTEM: do (here /bin/sh is dash,
# which forks cat rather than exec it: two programs per connection).
# ratio (no sh) compares sockline with the best of ncat-exec and socat-exec;
# ratio (sh) sockline-sh with the best of ncat and socat; ratio (all)
# sockline with the best of the four peers.
# socat gets backlog=4096 as sockline has (its default, 5, makes connects
# wait out SYN retransmits); ncat's listen backlog is 10, fixed.
#
# Per server and round (servers in the opposite order each round: ABC CBA
# ABC ...), each on a fresh server:
#   churn: perf/churn (a workspace member: a thread per client, blocking
#          sockets) with CHURN clients for DURATION s, each in a loop:
#          connect, send one line, read the echo, close. Connections/s, CPU
#          µs per connection, latency, the load generator's own CPU.
#   rr:    `sockline bench --scenario rr --conns 50 --verify-echo`: 50
#          long-lived connections, hence 50 live helpers, one line in flight
#          each, for DURATION + 3 s. CPU is sampled 1.5 s after the start
#          and DURATION s later, so the 50 spawns and the end stay outside
#          the window; lines = the bench's throughput × the window. Also RSS of the server process
#          per connection (the bench's) and PSS of the server and all its
#          helpers per connection (sum of smaps_rollup Pss: shared pages
#          counted once), over the server's PSS before connecting.
#
# Whose CPU counts. Every server runs under a small subreaper (a Python
# wrapper, PR_SET_CHILD_SUBREAPER, on CPU 0 too) that reaps whatever the
# server orphans. Per window:
#   server   = utime + stime of the server process (the listener; for
#              sockline the one process that also relays every byte);
#   children = everything below it: cutime + cstime of the server (helpers
#              it reaped, with what they reaped), + cutime + cstime of the
#              wrapper (orphans: ncat's relay does not wait for the shell,
#              which PID 1 would otherwise reap, its CPU lost to all
#              counters) + utime + stime + cutime + cstime of live
#              descendants (for rr: ncat's and socat's per-connection relay
#              processes, the shells, the cats). This is the fair sum: for
#              ncat and socat the relaying happens in forked children, for
#              sockline in the server process itself, so only server +
#              children compares like with like.
# For live processes the CPU is their threads' sum_exec_runtime
# (/proc/PID/task/*/schedstat, ns), not utime + stime from /proc/PID/stat:
# for processes that wake thousands of times a second for a few µs (each
# cat, each relay) utime + stime lagged far behind here (ncat, 50 conns,
# 2 s: 1.14 s by utime + stime, 1.84 s by schedstat, and the cgroup agreed
# with schedstat); the table shows both for rr. Reaped children are
# cutime + cstime (there is nothing else), which agreed with the cgroup.
#   cgroup   = a cpuacct cgroup per server (v1, when writable: cross-check
#              of the sum, and it also holds the wrapper's own CPU).
# Leaks: after each run, orphans the wrapper had to reap (processes the
# server left to others), zombies in the server's tree at the end of the
# window, and zombie processes machine-wide after the server stopped, next
# to before it started (`ps -eo stat`; PID 1 here reaps late, so that count
# drifts with other people's work too).
#
# Env: DURATION (s per churn run and per rr window, default 6), CHURN
# (concurrent churn clients, default 16), PEERS, KEEP (a directory to keep
# the raw samples in).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${DURATION:-6}
CHURN=${CHURN:-16}
read -r -a PEERS <<< "${PEERS:-sockline ncat socat ncat-exec socat-exec sockline-sh}"
command -v ncat >/dev/null && command -v socat >/dev/null || { echo "needs ncat and socat" >&2; exit 1; }
OUT=${KEEP:-$(mktemp -d)}
mkdir -p "$OUT"
CG=/sys/fs/cgroup/cpuacct/sockline-execbench-$$
mkdir "$CG" 2>/dev/null || CG=
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "$CG" ]; then for d in "$CG"/*/; do rmdir "$d" 2>/dev/null || true; done; rmdir "$CG" 2>/dev/null || true; fi
  [ -n "${KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT

cargo build --release -q -p sockline -p churn
SOCKLINE=${CARGO_TARGET_DIR:-target}/release/sockline
CHURNER=${CARGO_TARGET_DIR:-target}/release/churn
PY=$(python3 -c 'import sys; print(sys.executable)') # past pyenv's shim
ulimit -n "$(ulimit -Hn)"

# The subreaper: runs the server as its child, reaps it and every orphan,
# and when the server is gone, waits (at most 10 s) for the rest; writes how
# many orphans it reaped to the file it is given.
cat > "$OUT/reaper.py" <<'EOF'
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
server = os.fork()
if server == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
orphans = 0
def done(*_):
    open(sys.argv[1], "w").write(f"{orphans}\n")
    os._exit(0)
signal.signal(signal.SIGTERM, lambda *_: os.kill(server, signal.SIGTERM))
signal.signal(signal.SIGALRM, done)
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        done()
    if pid == server:
        signal.alarm(10)
    else:
        orphans += 1
EOF
# One sample of the server's tree: sample.py WRAPPER SERVER CGROUP LOADPID PSS
cat > "$OUT/sample.py" <<'EOF'
import json, os, sys, time
wrap, server, cg, load, want_pss = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
us = 1e6 / os.sysconf("SC_CLK_TCK")
t = time.monotonic()
def stat(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    f = s[s.rindex(")") + 2:].split()
    # state, ppid, utime, stime, cutime, cstime
    return comm, f[0], int(f[1]), int(f[11]), int(f[12]), int(f[13]), int(f[14])
procs = {}
for d in os.listdir("/proc"):
    if d.isdigit() and (st := stat(d)):
        procs[int(d)] = st
kids = {}
for pid, st in procs.items():
    kids.setdefault(st[2], []).append(pid)
tree, todo = [], list(kids.get(wrap, []))
while todo:
    pid = todo.pop()
    tree.append(pid)
    todo += kids.get(pid, [])
def pss(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
s = procs.get(server)
w = procs.get(wrap)
live = {}
for pid in tree:
    if pid != server:
        live[procs[pid][0]] = live.get(procs[pid][0], 0) + 1
def ran_us(pid):
    # sum_exec_runtime of every thread, ns: exact, where utime + stime of a
    # live process that wakes often for little lags far behind (see above)
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total / 1000
out = {
    "t": t,
    "server_us": ran_us(server),
    "reaped_us": (s[5] + s[6]) * us,
    "orphans_us": (w[5] + w[6]) * us,
    "live_us": sum(ran_us(p) + (procs[p][5] + procs[p][6]) * us for p in tree if p != server),
    "server_stat_us": (s[3] + s[4]) * us,
    "live_stat_us": sum(sum(procs[p][3:7]) for p in tree if p != server) * us,
    "zombies": sum(1 for p in tree if procs[p][1] == "Z"),
    "live": live,
}
if cg:
    out["cgroup_us"] = int(open(f"{cg}/cpuacct.usage").read()) / 1000
if load and (l := procs.get(load)):
    out["load_us"] = (l[3] + l[4]) * us
if want_pss:
    out["pss_kib"] = pss(server) + sum(pss(p) for p in tree if p != server and procs[p][1] != "Z")
print(json.dumps(out))
EOF

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
zombies() { ps -eo stat= | awk '$1 ~ /Z/' | wc -l; }

# start PEER: the server under the subreaper on CPU 0 on a free port; sets
# WRAP, SERVER, PORT.
start() {
  local cmd cg=
  PORT=$(free_port)
  case $1 in
    sockline)   cmd=("$SOCKLINE" serve -q --exec cat --listen "127.0.0.1:$PORT") ;;
    sockline-sh) cmd=("$SOCKLINE" serve -q --exec ':; cat' --listen "127.0.0.1:$PORT") ;;
    ncat)       cmd=(ncat -lk 127.0.0.1 "$PORT" --sh-exec cat) ;;
    socat)      cmd=(socat "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork,backlog=4096" SYSTEM:cat) ;;
    ncat-exec)  cmd=(ncat -lk 127.0.0.1 "$PORT" --exec /bin/cat) ;;
    socat-exec) cmd=(socat "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork,backlog=4096" EXEC:cat) ;;
    *) echo "unknown server $1" >&2; exit 1 ;;
  esac
  rm -f "$OUT/orphans"
  if [ -n "$CG" ]; then cg=$CG/$1; mkdir -p "$cg"; fi
  (
    [ -z "$cg" ] || echo "$BASHPID" > "$cg/cgroup.procs"
    exec taskset -c 0 "$PY" "$OUT/reaper.py" "$OUT/orphans" "${cmd[@]}"
  ) 2>>"$OUT/$1.log" &
  WRAP=$!
  CGDIR=$cg
  until ss -Hltn "sport = :$PORT" | grep -q .; do
    kill -0 "$WRAP" 2>/dev/null || { echo "$1 did not start: $(cat "$OUT/$1.log")" >&2; exit 1; }
    sleep 0.05
  done
  SERVER=$(pgrep -P "$WRAP")
}
# stop NAME: SIGTERM to the server (by its pid), wait for the subreaper to
# have reaped everything; the orphan count and the zombies go to NAME.leak.
stop() {
  kill "$SERVER" 2>/dev/null || true
  wait "$WRAP" 2>/dev/null || true
  sleep 0.2
  echo "$(cat "$OUT/orphans" 2>/dev/null || echo -1) $ZBEFORE $(zombies)" > "$OUT/$1.leak"
}
sample() { taskset -c 1 "$PY" "$OUT/sample.py" "$WRAP" "$SERVER" "$CGDIR" "${1:-0}" "${2:-0}"; }

order=("${PEERS[@]}")
for round in $(seq "$ROUNDS"); do
  for peer in "${order[@]}"; do
    echo "round $round: $peer" >&2
    ZBEFORE=$(zombies)
    start "$peer"
    sample > "$OUT/$peer.churn.$round.a"
    taskset -c 1 "$CHURNER" "127.0.0.1:$PORT" "$CHURN" "$DURATION" > "$OUT/$peer.churn.$round.json"
    sleep 0.5 # the last helpers exit and are reaped inside the window
    sample > "$OUT/$peer.churn.$round.b"
    stop "$peer.churn.$round"

    ZBEFORE=$(zombies)
    start "$peer"
    sample 0 1 > "$OUT/$peer.rr.$round.base"
    taskset -c 1 "$SOCKLINE" bench "127.0.0.1:$PORT" --scenario rr --conns 50 --duration "$((DURATION + 3))" \
      --verify-echo --json --server-pid "$SERVER" > "$OUT/$peer.rr.$round.json" &
    load=$!
    sleep 1.5
    sample "$load" > "$OUT/$peer.rr.$round.a"
    sleep "$DURATION"
    sample "$load" 1 > "$OUT/$peer.rr.$round.b"
    wait "$load"
    stop "$peer.rr.$round"
  done
  for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
    t=${order[i]}; order[i]=${order[j]}; order[j]=$t
  done
done

"$PY" - "$OUT" "$ROUNDS" "$CHURN" "${PEERS[@]}" <<'EOF'
import json, statistics, sys
out, rounds, churn, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
R = range(1, rounds + 1)
def load(name):
    return json.load(open(f"{out}/{name}"))
def window(peer, kind, r):
    a, b = load(f"{peer}.{kind}.{r}.a"), load(f"{peer}.{kind}.{r}.b")
    d = lambda k: b[k] - a[k] if k in a and k in b else None
    w = {"server": d("server_us"), "children": d("reaped_us") + d("orphans_us") + d("live_us"),
         "cgroup": d("cgroup_us"), "load": d("load_us"), "secs": b["t"] - a["t"], "zombies": b["zombies"], "live": b["live"]}
    w["total"] = w["server"] + w["children"]
    w["total_stat"] = d("server_stat_us") + d("reaped_us") + d("orphans_us") + d("live_stat_us")
    return w
def figures(peer, r):
    f = {}
    c, w = load(f"{peer}.churn.{r}.json"), window(peer, "churn", r)
    n = c["completed"] or 1
    f.update(cps=c["conns_per_s"], c_total=w["total"] / n, c_server=w["server"] / n, c_children=w["children"] / n,
             c_cgroup=w["cgroup"] / n if w["cgroup"] is not None else None,
             c_p50=c["p50_us"] / 1000, c_p99=c["p99_us"] / 1000,
             c_load=c["client_cpu_us_per_conn"], c_load_pct=100 * c["client_cpu_us"] / 1e6 / c["elapsed_s"],
             c_errors=c["errors"], c_first_error=c["first_error"])
    x, w = load(f"{peer}.rr.{r}.json"), window(peer, "rr", r)
    lines = x["throughput"] * w["secs"]
    base = load(f"{peer}.rr.{r}.base")
    b = load(f"{peer}.rr.{r}.b")
    f.update(lps=x["throughput"], r_total=w["total"] / lines, r_server=w["server"] / lines,
             r_children=w["children"] / lines, r_stat=w["total_stat"] / lines, r_cgroup=w["cgroup"] / lines if w["cgroup"] is not None else None,
             r_bench_server=x.get("server_cpu_us_per_op"), r_rss=x.get("server_rss_per_conn_kib"),
             r_pss=(b["pss_kib"] - base["pss_kib"]) / 50,
             r_p99=x["p99_us"] / 1000 if x.get("p99_us") is not None else None,
             r_load_pct=100 * w["load"] / 1e6 / w["secs"] if w["load"] is not None else None,
             r_errors=x.get("errors", 0), r_first_error=x.get("first_error"), r_live=w["live"], r_zombies=w["zombies"])
    for kind in ("churn", "rr"):
        orphans, zb, za = map(int, open(f"{out}/{peer}.{kind}.{r}.leak").read().split())
        f[f"{kind}_orphans"], f[f"{kind}_zdelta"] = orphans, za - zb
    f["c_zombies"] = window(peer, "churn", r)["zombies"]
    return f
F = {p: {r: figures(p, r) for r in R} for p in peers}
def med(p, k):
    v = [F[p][r][k] for r in R if F[p][r][k] is not None]
    return statistics.median(v) if v else None
sh = [p for p in peers if p in ("ncat", "socat")]
nosh = [p for p in peers if p in ("ncat-exec", "socat-exec")]
others = [p for p in peers if not p.startswith("sockline")]
rows = [
    (f"churn: connections/s, {churn} clients", "cps", 0, max, "> best peer"),
    ("churn: CPU µs per connection, server + children", "c_total", 0, min, "< best peer"),
    ("churn: of which the server process", "c_server", 0, min, ""),
    ("churn: of which children (reaped, orphaned, live)", "c_children", 0, min, ""),
    ("churn: cgroup CPU µs per connection (cross-check)", "c_cgroup", 0, min, ""),
    ("churn: latency p50 ms", "c_p50", 1, min, ""),
    ("churn: latency p99 ms", "c_p99", 1, min, ""),
    ("churn: load generator CPU µs per connection", "c_load", 0, None, ""),
    ("churn: load generator, % of its core", "c_load_pct", 0, None, ""),
    ("rr: k lines/s, 50 conns (50 live helpers)", "lps", 1, max, ""),
    ("rr: CPU µs per line, server + children", "r_total", 2, min, "< best peer"),
    ("rr: of which the server process", "r_server", 2, min, ""),
    ("rr: of which children (relays, shells, cats)", "r_children", 2, min, ""),
    ("rr: cgroup CPU µs per line (cross-check)", "r_cgroup", 2, min, ""),
    ("rr: server + children by utime + stime alone (lags)", "r_stat", 2, min, ""),
    ("rr: server process µs per line, by sockline bench", "r_bench_server", 2, None, ""),
    ("rr: latency p99 ms", "r_p99", 2, min, ""),
    ("rr: server process RSS KiB per connection", "r_rss", 1, min, ""),
    ("rr: PSS KiB per connection, server + helpers", "r_pss", 0, min, ""),
    ("rr: load generator, % of its core", "r_load_pct", 0, None, ""),
]
fmt = lambda r: f"{r:.2f}" if r is not None else "—"
def ratio(among, vals, better, me="sockline"):
    best = [vals[p] for p in among if vals.get(p) is not None]
    if better is None or vals.get(me) is None or not best or not better(best):
        return None
    return vals[me] / better(best)
print(f"\n{rounds} rounds, median; each server and its helpers on CPU 0, the load on CPU 1;")
print("ratio = sockline / best peer (no sh: ncat-exec and socat-exec, cat without a shell, as sockline --exec cat;")
print("all: ncat and socat with /bin/sh -c cat too; sh: sockline-sh / best of ncat and socat, all three through /bin/sh -c);")
print("per round: ratio (all) within each round, round 1 first\n")
print("| figure | " + " | ".join(peers) + " | ratio (no sh) | ratio (sh) | ratio (all) | per round (all) | goal |")
print("|---|" + "---|" * (len(peers) + 5))
for name, key, digits, better, goal in rows:
    scale = 1000 if key == "lps" else 1
    vals = {p: med(p, key) for p in peers}
    per = " ".join(fmt(ratio(others, {p: F[p][r][key] for p in peers}, better)) for r in R)
    cells = [f"{v / scale:.{digits}f}" if v is not None else "—" for v in vals.values()]
    print(f"| {name} | " + " | ".join(cells) + f" | {fmt(ratio(nosh, vals, better))} | {fmt(ratio(sh, vals, better, 'sockline-sh'))} | {fmt(ratio(others, vals, better))} | {per} | {goal} |")
print()
for p in peers:
    errs = sum(F[p][r]["c_errors"] + (F[p][r]["r_errors"] or 0) for r in R)
    first = next((F[p][r][k] for r in R for k in ("c_first_error", "r_first_error") if F[p][r][k]), None)
    print(f"{p}: {errs} errors{f' (first: {first})' if first else ''}; "
          f"orphans reaped by the wrapper per run: churn {[F[p][r]['churn_orphans'] for r in R]}, rr {[F[p][r]['rr_orphans'] for r in R]}; "
          f"zombies in the tree at the window's end: churn {[F[p][r]['c_zombies'] for r in R]}, rr {[F[p][r]['r_zombies'] for r in R]}; "
          f"machine-wide zombies after − before: churn {[F[p][r]['churn_zdelta'] for r in R]}, rr {[F[p][r]['rr_zdelta'] for r in R]}; "
          f"live in rr: {F[p][1]['r_live']}")
EOF
