#!/usr/bin/env bash
# tune-host.sh show|apply|undo [--edge-cpus LIST] [--irq-cpus LIST]
#
# Host tuning for an exchange edge running wssedge. `apply` records every current value in
# $STATE (default /var/lib/wssedge/tune-host.state) before changing it; `undo` puts them back;
# `show` prints current values only. Nothing here survives a reboot: persist what you keep in
# /etc/sysctl.d/ and your boot loader yourself. See GUIDE.md beside this script.
#
# Settings marked [unverified here] cannot be checked on the development VMs (no NIC queues of
# their own, no cpufreq, loopback traffic only); they are standard and reversible.
set -euo pipefail
mode=${1:-show}
shift || true
edge_cpus="" irq_cpus=""
while [ $# -gt 0 ]; do
    case "$1" in
        --edge-cpus) edge_cpus=$2; shift 2 ;;
        --irq-cpus) irq_cpus=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
STATE=${STATE:-/var/lib/wssedge/tune-host.state}

# name|path|value-to-apply|what it does
SETTINGS=(
  # Accept backlog: the kernel caps listen(2)'s backlog at somaxconn; a handshake storm that
  # overflows it drops SYNs (clients retry after 1 s: a latency cliff).
  "somaxconn|/proc/sys/net/core/somaxconn|65535|accept queue cap per listener"
  "syn_backlog|/proc/sys/net/ipv4/tcp_max_syn_backlog|65535|half-open (SYN_RECV) queue"
  # Packets queued per CPU between the NIC and the stack before being dropped. [unverified here]
  "netdev_backlog|/proc/sys/net/core/netdev_max_backlog|16384|per-CPU input queue before drop"
  # Socket buffer ceilings: wssedge sets SO_SNDBUF/SO_RCVBUF per connection (bounded), these
  # only raise what setsockopt may ask for.
  "rmem_max|/proc/sys/net/core/rmem_max|4194304|largest SO_RCVBUF a socket may set"
  "wmem_max|/proc/sys/net/core/wmem_max|4194304|largest SO_SNDBUF a socket may set"
  # TCP memory in pages (low, pressure, high) for the whole host: with 100k+ connections the
  # defaults (sized from RAM) may push the stack into memory pressure (collapsed windows).
  "tcp_mem|/proc/sys/net/ipv4/tcp_mem|786432 1048576 1572864|host-wide TCP memory pages: low pressure high"
  # Busy polling: a blocking read / poll spins this many µs on the NIC queue before sleeping.
  # Lower latency, more CPU; only useful with a NIC driver that supports it. [unverified here]
  "busy_read|/proc/sys/net/core/busy_read|50|µs a blocking socket read busy-polls the NIC"
  "busy_poll|/proc/sys/net/core/busy_poll|50|µs poll/epoll busy-polls the NIC"
  # Ephemeral ports for the load generator's side (and upstream connections later).
  "port_range|/proc/sys/net/ipv4/ip_local_port_range|1024 65535|ephemeral port range"
  # Idle connections must not be reaped by the kernel's own timers; keep slow start after idle
  # off so a trading client that was quiet does not restart from a small window.
  "slow_start_after_idle|/proc/sys/net/ipv4/tcp_slow_start_after_idle|0|no cwnd reset after idle"
  # NUMA balancing migrates pages under a pinned thread: latency spikes. [unverified here: 1 node]
  "numa_balancing|/proc/sys/kernel/numa_balancing|0|automatic NUMA page migration"
  # Transparent huge pages: `madvise` lets mimalloc ask for them (MIMALLOC_ALLOW_LARGE_OS_PAGES=1)
  # without the latency of khugepaged compacting memory under everyone else.
  "thp|/sys/kernel/mm/transparent_hugepage/enabled|madvise|transparent huge pages policy"
  "thp_defrag|/sys/kernel/mm/transparent_hugepage/defrag|defer+madvise|THP compaction policy"
)

current() {
    local path=$1
    [ -r "$path" ] || { echo "(absent)"; return; }
    local v
    v=$(tr -s '\t' ' ' < "$path")
    # THP files show the choice in brackets: "always [madvise] never".
    if [[ $v == *"["*"]"* ]]; then v=$(sed 's/.*\[\(.*\)\].*/\1/' <<<"$v"); fi
    echo "$v"
}

need_root() { [ "$(id -u)" = 0 ] || { echo "$mode needs root" >&2; exit 2; }; }

case "$mode" in
show)
    for s in "${SETTINGS[@]}"; do
        IFS='|' read -r name path value what <<<"$s"
        printf '%-22s %-28s (suggested %s) — %s\n' "$name" "$(current "$path")" "$value" "$what"
    done
    echo "irqbalance: $(systemctl is-active irqbalance 2>/dev/null || echo 'not running/absent')"
    echo "cpu governor: $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo 'no cpufreq (VM)')"
    echo "kernel cmdline: $(cat /proc/cmdline)"
    ;;
apply)
    need_root
    mkdir -p "$(dirname "$STATE")"
    : > "$STATE"
    for s in "${SETTINGS[@]}"; do
        IFS='|' read -r name path value what <<<"$s"
        [ -w "$path" ] || { echo "skip $name: $path not writable here"; continue; }
        printf '%s|%s\n' "$path" "$(current "$path")" >> "$STATE"
        if echo "$value" > "$path" 2>/dev/null; then
            echo "set  $name = $value"
        else
            echo "skip $name: the kernel refused $value"
        fi
    done
    # IRQ affinity: keep NIC interrupts off the edge's cores (they belong on --irq-cpus).
    # [unverified here: the VM's virtio NIC is not what the exchange runs]
    if [ -n "$irq_cpus" ]; then
        for f in /proc/irq/*/smp_affinity_list; do
            [ -w "$f" ] || continue
            printf '%s|%s\n' "$f" "$(cat "$f")" >> "$STATE"
            echo "$irq_cpus" > "$f" 2>/dev/null || true
        done
        echo "IRQs steered to CPUs $irq_cpus (stop irqbalance, or it moves them back)"
    fi
    # CPU frequency: pin the governor to performance. [unverified here: no cpufreq on the VM]
    for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
        [ -w "$g" ] || continue
        printf '%s|%s\n' "$g" "$(cat "$g")" >> "$STATE"
        echo performance > "$g"
    done
    echo "saved previous values in $STATE; undo with: $0 undo"
    if [ -n "$edge_cpus" ]; then
        echo "run the edge with: wssedge serve --cpus $edge_cpus"
    fi
    ;;
undo)
    need_root
    [ -r "$STATE" ] || { echo "nothing to undo: $STATE missing" >&2; exit 2; }
    while IFS='|' read -r path old; do
        [ "$old" = "(absent)" ] && continue
        echo "$old" > "$path" 2>/dev/null && echo "restored $path = $old" || echo "could not restore $path"
    done < "$STATE"
    rm -f "$STATE"
    ;;
*)
    echo "usage: $0 show|apply|undo [--edge-cpus LIST] [--irq-cpus LIST]" >&2
    exit 2
    ;;
esac
