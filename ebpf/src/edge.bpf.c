// SPDX-License-Identifier: Apache-2.0
/*
 * wssedge kernel side: exact per-source-IP connection limits enforced in the listener's
 * SO_REUSEPORT group, listener steering, and kernel counters.
 *
 * Build: cargo xtask ebpf
 *   clang -O2 -g -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -I ebpf/include -c ... -o ebpf/obj/edge.bpf.o
 * (-mcpu=v3: the atomic fetch-and-add whose result decides the reservation needs BPF_FETCH.)
 *
 * A slot's life (one per connection, released exactly once):
 *   SYN      edge_select (sk_reuseport): reserve atomically on the source's counter, or
 *            SK_DROP (the client sees ECONNREFUSED at once). The reservation is recorded in
 *            `pending` under the connection's 4-tuple (a retransmitted SYN re-uses it).
 *   reqsk    edge_reqsk_hashed (fentry inet_csk_reqsk_queue_hash_add): the kernel keeps a
 *            request socket for it -> pending.has_req = 1.
 *   SYN done edge_conn_request_exit (fexit tcp_conn_request): a reservation without a request
 *            socket (SYN cookie sent, SYN or accept queue full, LSM refusal) is released now.
 *   socket   edge_state (tp_btf inet_sock_set_state): the child socket takes the slot over:
 *            pending entry deleted, `owned[socket cookie] = source`. At LISTEN->SYN_RECV where
 *            the kernel has already copied the 4-tuple into the child; on kernels that copy it
 *            only after that state change (6.1: inet_csk_clone_lock sets the state first, the
 *            addresses follow in tcp_v4/v6_syn_recv_sock, so the child still reads as the
 *            listener, remote port 0) at SYN_RECV->ESTABLISHED instead.
 *            A child without a reservation (a SYN-cookie ACK, config was disabled at the SYN)
 *            is counted here instead (counter `unreserved`) so its close balances.
 *   reqsk †  edge_reqsk_drop (fexit __inet_csk_reqsk_queue_drop, or inet_csk_reqsk_queue_drop
 *            on kernels without it): RST or timeout of the handshake, listener closing ->
 *            a still-pending reservation is released. Only when the call unlinked the
 *            request socket (returned true): a completed handshake also passes through it
 *            (inet_csk_complete_hashdance), after the child took the request's place in the
 *            hash, and its reservation belongs to the child.
 *   close    edge_state *->CLOSE: an owned socket releases its slot.
 *   sweep    mark-and-sweep run by userspace every few seconds: edge_mark (iter/tcp) stamps the
 *            reservations whose request socket still exists, edge_sweep (raw_tp, run with
 *            BPF_PROG_TEST_RUN) releases the others (older than a minimum age). It catches what
 *            the fentry/fexit hooks would release at once (some kernels or sandboxes refuse
 *            fentry/fexit: EPERM) and SYNs the kernel dropped before tcp_conn_request.
 * Every release path claims the entry by a successful bpf_map_delete_elem, so two paths
 * racing for the same reservation release it once.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "edge_maps.h"

struct bpf_map;

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

/* Minimal kernel types, relocated by CO-RE against the running kernel's BTF. */
struct edge_in6_addr {
	__u8 u6_addr8[16];
};
struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct edge_in6_addr skc_v6_daddr;
	struct edge_in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));
struct request_sock {
	struct sock_common __req_common;
} __attribute__((preserve_access_index));
struct bpf_iter_meta;
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));
struct sk_buff {
	unsigned char *head;
	__u16 transport_header;
	__u16 network_header;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct edge_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct edge_lpm_key);
	__type(value, __u32);
} overrides SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u8[16]);
	__type(value, struct edge_ip_stats);
} ip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct edge_flow);
	__type(value, struct edge_pending);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 524288);
	__type(key, __u64);
	__type(value, __u8[16]);
} owned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EDGE_C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, EDGE_MAX_LISTENERS);
	__type(key, __u32);
	__type(value, __u32);
} listeners SEC(".maps");

/* active[0 .. config.active_count) = indices into `listeners` that may receive SYNs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EDGE_MAX_LISTENERS);
	__type(key, __u32);
	__type(value, __u32);
} active SEC(".maps");

/* Our listening ports (host order); value unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline struct edge_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline void map_v4(__u8 out[16], __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &a, 4);
}

/* The 4-tuple of a socket or request socket, as the SYN carried it. */
static __always_inline void flow_of_common(struct edge_flow *f, const struct sock_common *c)
{
	__builtin_memset(f, 0, sizeof(*f));
	unsigned short family = BPF_CORE_READ(c, skc_family);
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&f->raddr, c, skc_v6_daddr);
		BPF_CORE_READ_INTO(&f->laddr, c, skc_v6_rcv_saddr);
	} else {
		map_v4(f->raddr, BPF_CORE_READ(c, skc_daddr));
		map_v4(f->laddr, BPF_CORE_READ(c, skc_rcv_saddr));
	}
	f->rport = BPF_CORE_READ(c, skc_dport);
	f->lport = BPF_CORE_READ(c, skc_num);
}

static __always_inline struct edge_ip_stats *stats_of(const __u8 ip[16])
{
	struct edge_ip_stats *st = bpf_map_lookup_elem(&ip_stats, ip);
	if (st)
		return st;
	struct edge_ip_stats zero = {};
	/* NOEXIST: a concurrent creator may win; the lookup then finds its entry. */
	bpf_map_update_elem(&ip_stats, ip, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&ip_stats, ip);
}

static __always_inline void release(const __u8 ip[16])
{
	struct edge_ip_stats *st = bpf_map_lookup_elem(&ip_stats, ip);
	if (st) {
		/* Floor at 0: an LRU eviction may have forgotten the reservation. */
		__u32 old = __sync_fetch_and_add(&st->current, -1);
		if (old == 0)
			__sync_fetch_and_add(&st->current, 1);
	}
	count(EDGE_C_RELEASED);
}

/* Claims a pending reservation (delete succeeds once) and releases its slot. */
static __always_inline int release_pending(const struct edge_flow *f)
{
	if (bpf_map_delete_elem(&pending, f) != 0)
		return 0;
	release(f->raddr);
	return 1;
}

static __always_inline __u32 limit_of(const struct edge_config *cfg, const __u8 ip[16])
{
	struct edge_lpm_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, ip, 16);
	__u32 *ov = bpf_map_lookup_elem(&overrides, &k);
	return ov ? *ov : cfg->default_limit;
}

static __always_inline int select_listener(struct sk_reuseport_md *ctx, const struct edge_config *cfg)
{
	__u32 n = cfg ? cfg->active_count : 0;
	if (n == 0 || n > EDGE_MAX_LISTENERS) {
		count(EDGE_C_NO_LISTENER);
		return SK_PASS;
	}
	__u32 slot = ctx->hash % n;
	__u32 *idx = bpf_map_lookup_elem(&active, &slot);
	if (!idx) {
		count(EDGE_C_NO_LISTENER);
		return SK_PASS;
	}
	__u32 key = *idx;
	if (bpf_sk_select_reuseport(ctx, &listeners, &key, 0) != 0)
		count(EDGE_C_NO_LISTENER); /* closed / not in the group: kernel's own pick */
	return SK_PASS;
}

SEC("sk_reuseport")
int edge_select(struct sk_reuseport_md *ctx)
{
	struct edge_config *cfg = get_config();
	__u8 th[14];

	if (ctx->ip_protocol != IPPROTO_TCP)
		return select_listener(ctx, cfg);
	/* ctx data starts at the TCP header. */
	if (bpf_skb_load_bytes(ctx, 0, th, sizeof(th)) != 0)
		return select_listener(ctx, cfg);
	if ((th[13] & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN)
		return select_listener(ctx, cfg); /* not a connection request */

	count(EDGE_C_SYNS_SEEN);
	if (!cfg || !cfg->enabled)
		return select_listener(ctx, cfg);

	struct edge_flow f;
	__builtin_memset(&f, 0, sizeof(f));
	if (ctx->eth_protocol == bpf_htons(ETH_P_IP)) {
		__be32 a[2];
		if (bpf_skb_load_bytes_relative(ctx, 12, a, sizeof(a), BPF_HDR_START_NET) != 0)
			return select_listener(ctx, cfg);
		map_v4(f.raddr, a[0]);
		map_v4(f.laddr, a[1]);
	} else if (ctx->eth_protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes_relative(ctx, 8, f.raddr, 16, BPF_HDR_START_NET) != 0)
			return select_listener(ctx, cfg);
		if (bpf_skb_load_bytes_relative(ctx, 24, f.laddr, 16, BPF_HDR_START_NET) != 0)
			return select_listener(ctx, cfg);
	} else {
		return select_listener(ctx, cfg);
	}
	__builtin_memcpy(&f.rport, &th[0], 2);
	__u16 dport_be;
	__builtin_memcpy(&dport_be, &th[2], 2);
	f.lport = bpf_ntohs(dport_be);

	/* A retransmitted SYN of a 4-tuple that already holds a slot keeps it. */
	if (bpf_map_lookup_elem(&pending, &f)) {
		count(EDGE_C_RETRANSMIT);
		return select_listener(ctx, cfg);
	}

	__u32 limit = limit_of(cfg, f.raddr);
	struct edge_ip_stats *st = stats_of(f.raddr);
	if (!st) {
		count(EDGE_C_TABLE_FULL);
		return SK_DROP;
	}
	if (limit == 0) {
		__sync_fetch_and_add(&st->refused, 1);
		count(EDGE_C_REFUSED_BLOCKED);
		return SK_DROP;
	}
	/* The reservation: whoever moves the counter from limit-1 to limit is the last one in. */
	__u32 old = __sync_fetch_and_add(&st->current, 1);
	if (limit != EDGE_UNLIMITED && old >= limit) {
		__sync_fetch_and_add(&st->current, -1);
		__sync_fetch_and_add(&st->refused, 1);
		count(EDGE_C_REFUSED_LIMIT);
		return SK_DROP;
	}
	struct edge_pending p = {.created_ns = bpf_ktime_get_ns(), .created_epoch = cfg->sweep_epoch};
	long err = bpf_map_update_elem(&pending, &f, &p, BPF_NOEXIST);
	if (err != 0) {
		__sync_fetch_and_add(&st->current, -1);
		if (err == -17 /* EEXIST: the same SYN raced on another CPU */) {
			count(EDGE_C_RETRANSMIT);
			return select_listener(ctx, cfg);
		}
		count(EDGE_C_TABLE_FULL);
		return SK_DROP;
	}
	__sync_fetch_and_add(&st->accepted, 1);
	count(EDGE_C_ACCEPTED);
	return select_listener(ctx, cfg);
}

SEC("fentry/inet_csk_reqsk_queue_hash_add")
int BPF_PROG(edge_reqsk_hashed, struct sock *sk, struct request_sock *req)
{
	struct edge_flow f;
	flow_of_common(&f, &req->__req_common);
	struct edge_pending *p = bpf_map_lookup_elem(&pending, &f);
	if (p)
		p->has_req = 1;
	return 0;
}

SEC("fexit/tcp_conn_request")
int BPF_PROG(edge_conn_request_exit, void *rsk_ops, void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	struct edge_flow f;
	__builtin_memset(&f, 0, sizeof(f));
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 ver;
	if (bpf_probe_read_kernel(&ver, 1, head + nh) != 0)
		return 0;
	if ((ver >> 4) == 4) {
		__be32 a[2];
		if (bpf_probe_read_kernel(a, sizeof(a), head + nh + 12) != 0)
			return 0;
		map_v4(f.raddr, a[0]);
		map_v4(f.laddr, a[1]);
	} else if ((ver >> 4) == 6) {
		if (bpf_probe_read_kernel(f.raddr, 16, head + nh + 8) != 0)
			return 0;
		if (bpf_probe_read_kernel(f.laddr, 16, head + nh + 24) != 0)
			return 0;
	} else {
		return 0;
	}
	__be16 p2[2];
	if (bpf_probe_read_kernel(p2, sizeof(p2), head + th) != 0)
		return 0;
	f.rport = p2[0];
	f.lport = bpf_ntohs(p2[1]);
	struct edge_pending *p = bpf_map_lookup_elem(&pending, &f);
	if (p && !p->has_req)
		release_pending(&f); /* no request socket: cookie, queue full or refused */
	return 0;
}

/* `ctx` of an fexit on a `bool f(struct sock *, struct request_sock *, ...)`: true when the
 * call unlinked the request socket, i.e. the handshake died (not a completed one). */
static __always_inline int on_reqsk_drop(void *ctx, struct request_sock *req)
{
	__u64 unlinked = 0;
	if (bpf_get_func_ret(ctx, &unlinked) != 0 || (unlinked & 0xff) == 0)
		return 0;
	struct edge_flow f;
	flow_of_common(&f, &req->__req_common);
	release_pending(&f);
	return 0;
}

/* 6.10+ (and stable backports): the timer path calls the static __inet_csk_reqsk_queue_drop
 * directly. */
SEC("fexit/__inet_csk_reqsk_queue_drop")
int BPF_PROG(edge_reqsk_drop, struct sock *sk, struct request_sock *req)
{
	return on_reqsk_drop(ctx, req);
}

/* Older kernels: every drop goes through the exported function. */
SEC("fexit/inet_csk_reqsk_queue_drop")
int BPF_PROG(edge_reqsk_drop_exported, struct sock *sk, struct request_sock *req)
{
	return on_reqsk_drop(ctx, req);
}

/* The child socket `sk` of one of our listeners takes over its connection's reservation. */
static __always_inline int take_over(const struct edge_flow *f, __u64 cookie)
{
	if (bpf_map_delete_elem(&pending, f) != 0) {
		/* Born without a reservation (SYN cookie ACK, limiter disabled at the SYN):
		 * count it now so that its close balances. */
		struct edge_ip_stats *st = stats_of(f->raddr);
		if (!st)
			return 0;
		__sync_fetch_and_add(&st->current, 1);
		__sync_fetch_and_add(&st->accepted, 1);
		count(EDGE_C_UNRESERVED);
	}
	if (bpf_map_update_elem(&owned, &cookie, f->raddr, BPF_NOEXIST) != 0)
		release(f->raddr); /* cannot track it: give the slot back now */
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(edge_state, struct sock *sk, int oldstate, int newstate)
{
	int born = newstate == TCP_SYN_RECV && oldstate == TCP_LISTEN;
	int established = newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV;
	if (born || established) {
		if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
			return 0;
		__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (!bpf_map_lookup_elem(&ports, &lport))
			return 0;
		struct edge_flow f;
		flow_of_common(&f, &sk->__sk_common);
		/* Not copied from the request socket yet (6.1): the child still reads as the
		 * listener; it takes over at ESTABLISHED. */
		if (f.rport == 0)
			return 0;
		__u64 cookie = bpf_get_socket_cookie(sk);
		if (established && bpf_map_lookup_elem(&owned, &cookie))
			return 0; /* taken over when it was born */
		return take_over(&f, cookie);
	}
	if (newstate == TCP_CLOSE) {
		__u64 cookie = bpf_get_socket_cookie(sk);
		__u8 *v = bpf_map_lookup_elem(&owned, &cookie);
		if (!v)
			return 0;
		__u8 ip[16];
		__builtin_memcpy(ip, v, 16);
		if (bpf_map_delete_elem(&owned, &cookie) == 0)
			release(ip);
	}
	return 0;
}

/* Mark: an iterator over the namespace's TCP sockets (run by userspace) stamps every pending
 * reservation whose request socket still exists with the current sweep epoch. */
SEC("iter/tcp")
int edge_mark(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	if (BPF_CORE_READ(skc, skc_state) != TCP_NEW_SYN_RECV)
		return 0;
	struct edge_config *cfg = get_config();
	if (!cfg)
		return 0;
	struct edge_flow f;
	flow_of_common(&f, skc);
	struct edge_pending *p = bpf_map_lookup_elem(&pending, &f);
	if (p)
		p->seen_epoch = cfg->sweep_epoch;
	return 0;
}

struct sweep_ctx {
	__u64 now;
	__u64 min_age;
	__u32 epoch;
	__u32 released;
};

static long sweep_one(struct bpf_map *map, struct edge_flow *key, struct edge_pending *val,
		      struct sweep_ctx *c)
{
	/* Alive (its request socket was seen), or too young to judge (reserved during the
	 * mark, its request socket possibly hashed after the iterator passed its bucket). */
	if (val->seen_epoch == c->epoch || val->created_epoch == c->epoch)
		return 0;
	if (c->now - val->created_ns < c->min_age)
		return 0;
	struct edge_flow f;
	__builtin_memcpy(&f, key, sizeof(f));
	if (release_pending(&f))
		c->released++;
	return 0;
}

/* Sweep: run by userspace (BPF_PROG_TEST_RUN, never attached) right after the mark with
 * args[0] = the epoch just marked, args[1] = minimum age (ns). Releases every reservation
 * that has neither a socket nor a request socket any more. Returns how many. */
SEC("raw_tp/edge_sweep")
int edge_sweep(struct bpf_raw_tracepoint_args *ctx)
{
	struct sweep_ctx c = {
		.now = bpf_ktime_get_ns(),
		.epoch = (__u32)ctx->args[0],
		.min_age = ctx->args[1],
	};
	bpf_for_each_map_elem(&pending, sweep_one, &c, 0);
	return c.released;
}
