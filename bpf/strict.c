/* cgroup_skb/ingress: STRICT mTLS for an enrolled pod.
 *
 * Attached only to pods whose PeerAuthentication mode is STRICT. Under STRICT the only
 * legitimate way to open a connection to the app is through ztunnel, which terminates
 * HBONE and dials the app from inside the pod's netns, so the SYN arrives over the
 * loopback device. A new connection (SYN without ACK) to one of the pod's listening
 * sockets from any other device is plaintext from outside the mesh: drop it. Everything
 * else passes, notably SYN-ACKs and data for the app's own outbound connections.
 * One exception: a SYN from one of the node's own addresses (map node_addrs), which is
 * how the kubelet's health probes reach a pod; as in Istio ambient, they stay plaintext.
 *
 * Fields read from __sk_buff (ifindex, protocol, sk) are readable by cgroup_skb on
 * 5.x/6.x kernels; the verifier rejects the program at load time if that changes.
 * Packet bytes are read with bpf_skb_load_bytes, which needs no CAP_PERFMON (direct
 * data/data_end access from cgroup_skb does). At this hook skb->data points at the
 * network header. */
#include "include/config.h"
#include "include/maps.h"
#include "include/helpers.h"

#define LOOPBACK_IFINDEX 1 /* fixed in every netns (net/core/dev.c) */
#define TR_ETH_P_IP 0x0800
#define TR_ETH_P_IPV6 0x86DD
#define TR_IPPROTO_TCP 6
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Offset of the TCP flags byte, or -1 when this is not TCP we understand. */
static __always_inline int tcp_flags_offset(struct __sk_buff *skb)
{
	__u8 b[10];

	if (skb->protocol == tr_htons(TR_ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, 0, b, 10) < 0 || b[9] != TR_IPPROTO_TCP)
			return -1;
		return (b[0] & 0x0f) * 4 + 13;
	}
#if ENABLE_IPV6
	if (skb->protocol == tr_htons(TR_ETH_P_IPV6)) {
		/* Extension headers before TCP are not followed: such packets pass. */
		if (bpf_skb_load_bytes(skb, 0, b, 7) < 0 || b[6] != TR_IPPROTO_TCP)
			return -1;
		return 40 + 13;
	}
#endif /* ENABLE_IPV6 */
	return -1;
}

static __always_inline int is_listener(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	return sk && sk->state == BPF_TCP_LISTEN;
}

/* Is the packet's source one of the node's own addresses? */
static __always_inline int from_node(struct __sk_buff *skb)
{
	struct node_addr key = {};

	if (skb->protocol == tr_htons(TR_ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, 12, &key.addr[0], 4) < 0)
			return 0;
		key.family = 4;
	}
#if ENABLE_IPV6
	else if (skb->protocol == tr_htons(TR_ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, 8, key.addr, 16) < 0)
			return 0;
		key.family = 6;
	}
#endif /* ENABLE_IPV6 */
	else
		return 0;
	return node_addrs.lookup(&key) != NULL;
}

static __always_inline int plaintext_syn_from_outside(struct __sk_buff *skb)
{
	__u8 flags;
	int off;

	if (skb->ifindex == LOOPBACK_IFINDEX)
		return 0;
	off = tcp_flags_offset(skb);
	if (off < 0 || off > 120)
		return 0;
	if (bpf_skb_load_bytes(skb, off, &flags, 1) < 0)
		return 0;
	if (!(flags & TCP_FLAG_SYN) || (flags & TCP_FLAG_ACK))
		return 0;
	return is_listener(skb) && !from_node(skb);
}

int trellis_strict_ingress(struct __sk_buff *skb)
{
	return plaintext_syn_from_outside(skb) ? SKB_DROP : SKB_PASS;
}
