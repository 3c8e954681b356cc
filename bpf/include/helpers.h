/* Small predicates shared by the hooks. Pure arithmetic only: bcc rewrites
 * map.lookup() calls in the main source, not in headers, so map access stays in the .c files. */
#ifndef TRELLIS_HELPERS_H
#define TRELLIS_HELPERS_H

#include "config.h"
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define tr_ntohs(x) __builtin_bswap16(x)
#define tr_htons(x) __builtin_bswap16(x)
#define tr_ntohl(x) __builtin_bswap32(x)
#define tr_htonl(x) __builtin_bswap32(x)
#else
#define tr_ntohs(x) (x)
#define tr_htons(x) (x)
#define tr_ntohl(x) (x)
#define tr_htonl(x) (x)
#endif

#define IP4_LOOPBACK 0x7f000001 /* host order */

static __always_inline int is_mesh_port(__u16 port)
{
	return port == CAPTURE_PORT || port == INBOUND_PLAIN_PORT || port == HBONE_PORT ||
	       port == METRICS_PORT || port == READY_PORT;
}

/* 127.0.0.0/8 and 0.0.0.0 (which connect() treats as this host). ip4: network order. */
static __always_inline int is_local4(__u32 ip4)
{
	__u32 h = tr_ntohl(ip4);
	return (h >> 24) == 127 || h == 0;
}

static __always_inline int is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == tr_htonl(0x0000ffff);
}

/* ::1, ::, and v4-mapped loopback. Words in network order. */
static __always_inline int is_local6(__u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	if (is_v4mapped(w0, w1, w2))
		return is_local4(w3);
	return w0 == 0 && w1 == 0 && w2 == 0 && (w3 == tr_htonl(1) || w3 == 0);
}

#endif /* TRELLIS_HELPERS_H */
