/* Tunables of the eBPF programs. */
#ifndef TRELLIS_CONFIG_H
#define TRELLIS_CONFIG_H

/* Numbers shared with Python come only from the loader's -D flags
 * (nodeagent/loader.py compile_defines(): meshcore/ports.py, meshcore/wire/origdst.py),
 * so the C side cannot drift: CAPTURE_PORT (ztunnel's outbound listener in each pod's
 * netns), INBOUND_PLAIN_PORT, HBONE_PORT, METRICS_PORT, READY_PORT (the mesh's own ports:
 * never captured, or ztunnel would tunnel to itself), ORIGDST_MAP_SIZE (entries live from
 * connect() until ztunnel accepts; LRU evicts what it never reads), EXCLUDED_PORTS_MAX,
 * NODE_ADDRS_MAX (addresses of the node itself, whose plaintext probes STRICT lets through). */
#if !defined(CAPTURE_PORT) || !defined(INBOUND_PLAIN_PORT) || !defined(HBONE_PORT) || \
    !defined(METRICS_PORT) || !defined(READY_PORT) || !defined(ORIGDST_MAP_SIZE) || \
    !defined(EXCLUDED_PORTS_MAX) || !defined(NODE_ADDRS_MAX)
#error "compile bpf/ through nodeagent.loader: ports and map sizes come from its -D flags"
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
