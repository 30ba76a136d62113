/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map layouts shared between ebpf/src/edge.bpf.c and the Rust loader
 * (edge/src/ebpf/maps.rs mirrors every struct with #[repr(C)] + aya::Pod).
 * Change both sides together; the Rust unit tests check the sizes.
 *
 * Addresses are always 16 bytes: IPv4 is mapped into IPv6 (::ffff:a.b.c.d) so one map
 * serves both families. Ports: `rport` is in network byte order (as in the packet),
 * `lport` in host byte order (as in sk->skc_num).
 */
#ifndef WSSEDGE_EDGE_MAPS_H
#define WSSEDGE_EDGE_MAPS_H

#include <linux/types.h>

/* Limit value meaning "no limit" (LimitConfig.per_ip_connections = 0 in userspace). */
#define EDGE_UNLIMITED 0xffffffffu
/* Size of the active-listener table (max cores steered by the program). */
#define EDGE_MAX_LISTENERS 256

/* config: ARRAY, 1 entry, key u32 0. */
struct edge_config {
	__u32 default_limit; /* per-IP connections; EDGE_UNLIMITED = no limit, 0 = block all */
	__u32 enabled;	     /* 0: no accounting, no refusal (selection still applies) */
	__u32 active_count;  /* valid entries at the head of `active` */
	__u32 sweep_epoch;   /* bumped by userspace before each mark-and-sweep */
};

/* overrides: LPM_TRIE, key = prefix length (0..128 over the 16-byte mapped address). */
struct edge_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};
/* value: __u32 limit (0 = blocked, EDGE_UNLIMITED = no limit) */

/* ip_stats: LRU_HASH, key = __u8[16] source address. */
struct edge_ip_stats {
	__u32 current; /* reserved slots (handshakes in flight + open connections) */
	__u32 _pad;
	__u64 accepted; /* SYNs that got a slot */
	__u64 refused;	/* SYNs refused (limit or blocked) */
};

/* pending: HASH, a slot reserved at the SYN, keyed by the connection's 4-tuple, until the
 * connection's socket exists (then moved to `owned`) or the handshake dies. */
struct edge_flow {
	__u8 raddr[16];
	__u8 laddr[16];
	__u16 rport; /* network order */
	__u16 lport; /* host order */
	__u32 _pad;
};
struct edge_pending {
	__u64 created_ns;    /* bpf_ktime_get_ns() at the SYN (CLOCK_MONOTONIC) */
	__u32 created_epoch; /* config.sweep_epoch at the SYN */
	__u32 seen_epoch;    /* last sweep whose iterator saw this SYN's request socket */
	__u32 has_req;	     /* fentry saw the kernel hash a request socket for it */
	__u32 _pad;
};

/* owned: HASH, key = __u64 socket cookie, value = __u8[16] source address whose slot the
 * socket holds; deleted (and the slot released) at the socket's transition to CLOSE. */

/* counters: PERCPU_ARRAY of __u64, one index each. */
enum edge_counter {
	EDGE_C_SYNS_SEEN = 0,	    /* SYNs seen by the sk_reuseport program */
	EDGE_C_REFUSED_LIMIT = 1,   /* SYN dropped: source at its limit */
	EDGE_C_REFUSED_BLOCKED = 2, /* SYN dropped: source blocked (limit 0) */
	EDGE_C_ACCEPTED = 3,	    /* SYN got a slot */
	EDGE_C_RELEASED = 4,	    /* slots released (any path) */
	EDGE_C_RETRANSMIT = 5,	    /* SYN of a 4-tuple that already holds a slot */
	EDGE_C_NO_LISTENER = 6,	    /* no active listener selectable: kernel default used */
	EDGE_C_UNRESERVED = 7,	    /* socket born without a reservation (e.g. SYN cookie): counted late */
	EDGE_C_TABLE_FULL = 8,	    /* SYN refused: the pending or stats table was full */
	EDGE_C_COUNT = 9,
};

#endif
