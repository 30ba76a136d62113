#!/usr/bin/env bash
# syscalls.sh PID SECONDS [OUT]
#
# Counts a running process's system calls and io_uring operations over a window, so a change
# to the read/write path can be judged by what it asks of the kernel per message.
# - syscalls: `strace -c -f` attached for SECONDS (adds overhead to the traced process: use it
#   for counts, never for timing).
# - io_uring: the io_uring tracepoints (submitted requests by opcode, completions), which need
#   tracefs; it is mounted here if missing (and left mounted: harmless). Context switches
#   and sched_wakeup events count the wake-ups (a thread that sleeps and is woken per message
#   shows one of each per message). The same pass counts the data-path syscalls through their
#   tracepoints, without strace's slowdown: prefer those counts for per-message figures.
set -euo pipefail
pid=${1:?usage: syscalls.sh PID SECONDS [OUT]}
secs=${2:-5}
out=${3:-target/perf/syscalls.txt}
mkdir -p "$(dirname "$out")"
{
    echo "== syscalls of $pid over ${secs}s (strace -c -f)"
    timeout --signal=INT "$secs" strace -c -f -p "$pid" 2>&1 || true
    if ! mountpoint -q /sys/kernel/tracing; then
        mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
    fi
    if [ -d /sys/kernel/tracing/events/io_uring ] && command -v perf >/dev/null; then
        echo "== io_uring tracepoints over ${secs}s"
        perf stat -e 'io_uring:io_uring_submit_req' -e 'io_uring:io_uring_complete' \
            -e 'io_uring:io_uring_poll_arm' -e 'io_uring:io_uring_task_add' \
            -e context-switches -e 'sched:sched_wakeup' \
            -e 'syscalls:sys_enter_io_uring_enter' -e 'syscalls:sys_enter_recvfrom' \
            -e 'syscalls:sys_enter_sendto' -e 'syscalls:sys_enter_recvmsg' \
            -e 'syscalls:sys_enter_sendmsg' -e 'syscalls:sys_enter_writev' \
            -p "$pid" -- sleep "$secs" 2>&1 || true
    else
        echo "== io_uring tracepoints unavailable (no tracefs or no perf)"
    fi
} | tee "$out"
