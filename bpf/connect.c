/* cgroup/connect4 and cgroup/connect6: outbound capture.
 *
 * Attached to each enrolled pod's cgroup, so only the pod's own sockets are rewritten
 * (ztunnel lives in another cgroup and is never captured). A TCP connect to a remote
 * address is sent to ztunnel's listener on the pod's loopback; the address the app
 * asked for is remembered under the socket cookie for sockops to re-key. Always
 * returns allow: capture must never be the reason a connect fails. */
#include "include/config.h"
#include "include/maps.h"
#include "include/helpers.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

static __always_inline int is_excluded_port(__u16 port)
{
	return excluded_ports.lookup(&port) != 0;
}

static __always_inline int wants_capture(struct bpf_sock_addr *ctx, __u16 dport)
{
	/* Datagram sockets (DNS) pass: ztunnel only proxies TCP. */
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	return !is_mesh_port(dport) && !is_excluded_port(dport);
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct origdst_val *dst)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	cookie_origdst.update(&cookie, dst);
}

static __always_inline void capture4(struct bpf_sock_addr *ctx)
{
	struct origdst_val dst = {};
	__u32 ip4 = ctx->user_ip4;
	__u16 dport = tr_ntohs((__u16)ctx->user_port);

	if (is_local4(ip4) || !wants_capture(ctx, dport))
		return;
	dst.ip4 = ip4;
	dst.port = dport;
	dst.family = AF_INET;
	remember(ctx, &dst);
	ctx->user_ip4 = tr_htonl(IP4_LOOPBACK);
	ctx->user_port = tr_htons(CAPTURE_PORT);
}

int trellis_connect4(struct bpf_sock_addr *ctx)
{
	capture4(ctx);
	return CONNECT_ALLOW;
}

#if ENABLE_IPV6
static __always_inline void capture6(struct bpf_sock_addr *ctx)
{
	struct origdst_val dst = {};
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	__u16 dport = tr_ntohs((__u16)ctx->user_port);

	if (is_local6(w0, w1, w2, w3) || !wants_capture(ctx, dport))
		return;
	dst.port = dport;
	if (is_v4mapped(w0, w1, w2)) {
		/* The wire carries IPv4: ztunnel should dial an IPv4 address. */
		dst.ip4 = w3;
		dst.family = AF_INET;
		ctx->user_ip6[3] = tr_htonl(IP4_LOOPBACK);
	} else {
		dst.ip6[0] = w0;
		dst.ip6[1] = w1;
		dst.ip6[2] = w2;
		dst.ip6[3] = w3;
		dst.family = AF_INET6;
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = tr_htonl(1);
	}
	remember(ctx, &dst);
	ctx->user_port = tr_htons(CAPTURE_PORT);
}

int trellis_connect6(struct bpf_sock_addr *ctx)
{
	capture6(ctx);
	return CONNECT_ALLOW;
}
#endif /* ENABLE_IPV6 */
