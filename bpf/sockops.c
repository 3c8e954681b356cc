/* sockops: re-key a captured connection's original destination for ztunnel.
 *
 * ztunnel accepts on 127.0.0.1:CAPTURE_PORT and sees the client's (netns, local port), not
 * its socket cookie, so once the local port exists we move the entry from
 * cookie_origdst to origdst under {netns cookie, local port}.
 *
 * Ordering: ACTIVE_ESTABLISHED_CB runs in tcp_finish_connect() on the client while
 * it processes the SYN-ACK, before it sends the final ACK (tcp_rcv_synsent_state_process
 * calls tcp_finish_connect, then tcp_send_ack). The listener can only accept() the
 * connection once that ACK arrives, so the entry is always in place before ztunnel
 * looks it up. */
#include "include/config.h"
#include "include/maps.h"
#include "include/helpers.h"

static __always_inline int to_capture_listener(struct bpf_sock_ops *skops)
{
	/* remote_port is a network-order u32 whose value is the port. */
	if (tr_ntohl(skops->remote_port) != CAPTURE_PORT)
		return 0;
	if (skops->family == AF_INET)
		return is_local4(skops->remote_ip4);
#if ENABLE_IPV6
	if (skops->family == AF_INET6)
		return is_local6(skops->remote_ip6[0], skops->remote_ip6[1],
				 skops->remote_ip6[2], skops->remote_ip6[3]);
#endif /* ENABLE_IPV6 */
	return 0;
}

static __always_inline void handoff(struct bpf_sock_ops *skops)
{
	struct origdst_key key = {};
	struct origdst_val dst;
	struct origdst_val *pending;
	__u64 cookie;

	if (!to_capture_listener(skops))
		return;
	cookie = bpf_get_socket_cookie(skops);
	pending = cookie_origdst.lookup(&cookie);
	if (!pending)
		return; /* an app talking to CAPTURE_PORT itself, not a capture */
	__builtin_memcpy(&dst, pending, sizeof(dst));
	key.netns_cookie = bpf_get_netns_cookie(skops);
	key.sport = (__u16)skops->local_port;
	origdst.update(&key, &dst);
	cookie_origdst.delete(&cookie);
}

int trellis_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		handoff(skops);
	return SOCKOPS_OK;
}
