/* Tunables. The loader may override any of them with -DNAME=value; these are the
 * defaults that match docs/internals.md. */
#ifndef TRELLIS_CONFIG_H
#define TRELLIS_CONFIG_H

/* ztunnel's outbound listener inside each pod's netns (127.0.0.1 and [::1]). */
#ifndef CAPTURE_PORT
#define CAPTURE_PORT 15001
#endif

/* The mesh's own ports: never captured, or ztunnel would tunnel to itself. */
#ifndef INBOUND_PLAIN_PORT
#define INBOUND_PLAIN_PORT 15006
#endif
#ifndef HBONE_PORT
#define HBONE_PORT 15008
#endif
#ifndef METRICS_PORT
#define METRICS_PORT 15020
#endif
#ifndef READY_PORT
#define READY_PORT 15021
#endif

/* Entries live from connect() until ztunnel accepts; LRU evicts what it never reads. */
#ifndef ORIGDST_MAP_SIZE
#define ORIGDST_MAP_SIZE 65536
#endif

/* Ports the operator wants left alone (filled by the loader; default none). */
#ifndef EXCLUDED_PORTS_MAX
#define EXCLUDED_PORTS_MAX 64
#endif

/* Addresses of the node itself, whose plaintext probes STRICT lets through. */
#ifndef NODE_ADDRS_MAX
#define NODE_ADDRS_MAX 16
#endif

#ifndef ENABLE_IPV6
#define ENABLE_IPV6 1
#endif

/* Verdicts: cgroup sock_addr and sock_ops take 1 as "allow", cgroup_skb 0 as drop. */
#define CONNECT_ALLOW 1
#define SOCKOPS_OK 1
#define SKB_PASS 1
#define SKB_DROP 0

#endif /* TRELLIS_CONFIG_H */
