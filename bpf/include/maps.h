/* Every map of the mesh, declared once. The loader compiles connect.c, sockops.c and
 * strict.c as one unit, so all programs share these. Nothing is pinned: the node
 * agent owns them and hands `origdst` to ztunnel by fd. */
#ifndef TRELLIS_MAPS_H
#define TRELLIS_MAPS_H

#include "config.h"

/* docs/internals.md "BPF original destination map": sport in host order, addresses in
 * network order, port in host order. */
struct origdst_key {
	__u64 netns_cookie;
	__u16 sport;
	__u16 pad[3];
};

struct origdst_val {
	__u32 ip4;
	__u32 ip6[4];
	__u16 port;
	__u16 family;
};

/* connect4/6 -> sockops: the local port is not chosen yet at connect() time, so the
 * original destination waits here under the socket cookie until the handshake. */
BPF_TABLE("lru_hash", __u64, struct origdst_val, cookie_origdst, ORIGDST_MAP_SIZE);

/* sockops -> ztunnel: keyed by what ztunnel sees on the accepted socket. */
BPF_TABLE("lru_hash", struct origdst_key, struct origdst_val, origdst, ORIGDST_MAP_SIZE);

/* Destination ports (host order) never captured; value unused. */
BPF_TABLE("hash", __u16, __u8, excluded_ports, EXCLUDED_PORTS_MAX);

/* The node's own addresses (filled by the node agent): under STRICT, plaintext from
 * them still reaches an enrolled pod, since that is how the kubelet's health probes
 * arrive (as Istio ambient allows them). IPv4 in addr[0]; all in network order. */
struct node_addr {
	__u32 family; /* 4 or 6 */
	__u32 addr[4];
};
BPF_TABLE("hash", struct node_addr, __u8, node_addrs, NODE_ADDRS_MAX);

#endif /* TRELLIS_MAPS_H */
