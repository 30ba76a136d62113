#!/usr/bin/env bash
# idle-memory.sh [CONNECTIONS] [OUT]
#
# Where an idle upgraded connection's memory goes (userspace TLS): heap bytes per connection
# by owner — the connection's state and task, the TLS record keys, the session's queues, the
# deadlines. `cargo xtask bench --scenarios idle` gives the RSS total against peers; this
# gives the breakdown behind it.
#
# How: wssedge is built with the system allocator (feature `system-allocator`, in its own
# target directory) so that heaptrack's malloc hooks see every allocation, and run under
# heaptrack on one core. wssbench opens CONNECTIONS idle connections (each echoes one message
# first, as a client that has spoken and gone quiet); once all are up and have sat for two
# seconds, the edge is killed with SIGKILL: what heaptrack then reports as leaked is exactly
# what the idle connections held (plus the process's own fixed state, shown apart).
# Needs heaptrack (Debian package `heaptrack`); loopback only; bounded in time.
set -euo pipefail
n=${1:-2000}
out=${2:-target/perf/idle-memory.txt}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v heaptrack >/dev/null || { echo "idle-memory.sh: needs heaptrack (apt install heaptrack)" >&2; exit 2; }
work=$(mktemp -d /tmp/wssedge-idle-mem.XXXXXX)
edge=""
cleanup() {
    [ -n "$edge" ] && kill -9 "$edge" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "idle-memory.sh: building wssedge with the system allocator (target/heapprof)" >&2
CARGO_TARGET_DIR=target/heapprof cargo build --release -q -p wssedge --features system-allocator
cargo build --release -q -p wssbench
bin=target/heapprof/release/wssedge
port=$((20000 + RANDOM % 20000))

heaptrack -o "$work/edge" "$bin" serve --listen "127.0.0.1:$port" --admin 127.0.0.1:0 \
    --state-dir "$work/state" --cpus 0 >"$work/edge.log" 2>&1 &
# heaptrack is a shell script: the edge is its child.
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/edge.log" 2>/dev/null && break
    sleep 0.1
done
edge=$(pgrep -P $! -f "$bin" | head -1 || true)
[ -n "$edge" ] || { echo "idle-memory.sh: the edge did not start" >&2; cat "$work/edge.log" >&2; exit 1; }

taskset -c 1 target/release/wssbench idle --url "wss://127.0.0.1:$port/" --ca "$work/state/dev-ca.pem" \
    --connections "$n" --duration 20 --warmup 0 --payload 64 --cpus 1 --proto wss --hold 20 \
    --json "$work/idle.json" >"$work/gen.log" 2>&1 &
gen=$!
for _ in $(seq 1 600); do
    grep -q IDLE_READY "$work/gen.log" 2>/dev/null && break
    sleep 0.1
done
grep -q IDLE_READY "$work/gen.log" || { echo "idle-memory.sh: the connections did not all open" >&2; cat "$work/gen.log" >&2; exit 1; }
opened=$(sed -n 's/^IDLE_READY n=//p' "$work/gen.log")
sleep 2
kill -9 "$edge"
edge=""
wait "$gen" 2>/dev/null || true
# heaptrack's interpreter finishes writing after its debuggee is gone.
for _ in $(seq 1 100); do
    [ -s "$work/edge.zst" ] && ! pgrep -f "heaptrack_interpret.*$work" >/dev/null && break
    sleep 0.2
done
sleep 1

mkdir -p "$(dirname "$out")"
heaptrack_print -f "$work/edge.zst" --print-leaks 1 --print-peaks 0 --print-allocators 0 \
    --print-temporary 0 --merge-backtraces 0 -n 400 2>/dev/null >"$work/leaks.txt"
python3 - "$work/leaks.txt" "$opened" <<'PY' | tee "$out"
import re, sys
path, n = sys.argv[1], int(sys.argv[2])
text = open(path).read()
units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
blocks = re.split(r"^(?=\S+ leaked over \d+ calls from$)", text, flags=re.M)
# The owner of an allocation is its first frame outside the standard library.
owners = [
    ("/aws-lc/", "TLS record keys (AES-GCM contexts in aws-lc, one per direction)"),
    ("monoio-", "runtime task (monoio's spawn of the connection)"),
    ("server/conn/", "connection state (Conn) and its loop's future"),
    ("proto/src/ws/session.rs", "WebSocket session queues (events, frames)"),
    ("proto/src/ws/outbox.rs", "outbound frame queue (Outbox)"),
    ("tls/soft/", "userspace record layer buffers"),
    ("server/timer.rs", "deadlines (timer wheel entries)"),
    ("edge/src/readiness.rs", "armed read poll"),
    ("server/live.rs", "live registry entry (revocations, expiry)"),
    ("edge/src/limits/", "limits and identity"),
    ("src/server/", "rustls state kept for KeyUpdate (key schedule)"),
    ("src/common_state.rs", "rustls state kept for KeyUpdate (key schedule)"),
]
per = {}
fixed = 0.0
for b in blocks:
    m = re.match(r"(\S+?)([KMG]?)B? leaked over (\d+) calls from$", b.split("\n", 1)[0])
    if not m:
        continue
    size = float(m.group(1)) * units[m.group(2)]
    calls = int(m.group(3))
    if calls < n // 2:
        fixed += size
        continue
    frames = [f for f in re.findall(r"^\s+at (\S+)", b, flags=re.M)
              if not f.startswith("/rustc/") and not f.startswith("library/")]
    first = frames[0] if frames else "?"
    owner = next((name for key, name in owners if key in first), f"other ({first})")
    per[owner] = per.get(owner, 0.0) + size
total = sum(per.values())
print(f"# heap held per idle upgraded connection (userspace TLS), {n} connections, system allocator")
print()
print("| owner | bytes/conn | share |")
print("|---|---:|---:|")
for owner, size in sorted(per.items(), key=lambda kv: -kv[1]):
    print(f"| {owner} | {size / n:.0f} | {100 * size / total:.0f}% |")
print(f"| **total heap per connection** | **{total / n:.0f}** | |")
print()
print(f"Process-wide (not per connection): {fixed / 1e3:.0f} kB. RSS under mimalloc adds the "
      "allocator's size-class slack and page granularity: `cargo xtask bench --scenarios idle`.")
PY
