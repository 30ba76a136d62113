#!/usr/bin/env bash
# profile.sh PID SECONDS OUTDIR
#
# Samples a running process (the edge under a bench scenario) with perf and renders a flame
# graph. This VM exposes no hardware counters, so sampling uses the `cpu-clock` software event
# (a timer interrupt per sample): it shows where time goes, not cache misses or IPC.
#
# Needs: linux-perf (apt), inferno (`cargo install inferno`: inferno-collapse-perf and
# inferno-flamegraph). Output: OUTDIR/perf.data, OUTDIR/flamegraph.svg, OUTDIR/top.txt.
set -euo pipefail
pid=${1:?usage: profile.sh PID SECONDS OUTDIR}
secs=${2:-10}
out=${3:-target/perf}
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf missing: apt-get install -y linux-perf" >&2; exit 2; }
# Kernel symbols and call graphs of other processes need these (root only; undone below).
old_kptr=$(cat /proc/sys/kernel/kptr_restrict)
old_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
restore() {
    echo "$old_kptr" > /proc/sys/kernel/kptr_restrict
    echo "$old_paranoid" > /proc/sys/kernel/perf_event_paranoid
}
if [ "$(id -u)" = 0 ]; then
    trap restore EXIT
    echo 0 > /proc/sys/kernel/kptr_restrict
    echo -1 > /proc/sys/kernel/perf_event_paranoid
fi
# Frame pointers are not kept in release builds: use DWARF unwinding (bigger files, exact stacks).
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$pid" -o "$out/perf.data" -- sleep "$secs" 2> "$out/record.log"
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -40 > "$out/top.txt" || true
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
    perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph > "$out/flamegraph.svg"
    echo "flame graph: $out/flamegraph.svg"
else
    echo "no flame graph: cargo install inferno (inferno-collapse-perf, inferno-flamegraph)" >&2
fi
echo "top symbols: $out/top.txt"
