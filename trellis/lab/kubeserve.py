"""`python -m trellis.lab.kubeserve --dir D --listen IP:PORT`: the API-server stand-in
(apiserver.py) as the cluster-shaped lab's API server, over HTTPS with the lab's cluster
CA (D/pki), serving D/objects.yaml and reviewing the node tokens of D/tokens.json. Every
request needs the admin bearer token (or a client certificate of the cluster CA), as a
kube-apiserver with token and x509 authentication would ask."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio
import yaml

from . import kubeworld
from .apiserver import ApiServerStandIn, Token

log = logging.getLogger("trellis.lab.kubeserve")


def standin(d: Path) -> ApiServerStandIn:
    server = ApiServerStandIn(token=kubeworld.admin_token(d), tls=kubeworld.server_context(d / "pki"),
                              bookmark_every=30.0)
    for token, t in kubeworld.node_tokens_of(d).items():
        server.tokens[token] = Token(t["namespace"], t["service_account"], pod=t["pod"], node=t["node"])
    for doc in yaml.safe_load_all((d / "objects.yaml").read_text()):
        if doc:
            server.put(doc)
    return server


async def main(d: Path, host: str, port: int) -> None:
    server = standin(d)
    async with trio.open_nursery() as nursery:
        got = await nursery.start(server.serve, host, port)
        log.info("event=serving listen=https://%s:%d objects=%d", host, got,
                 sum(len(c) for c in server.objects.values()))


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trellis.lab.kubeserve", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="pki/, objects.yaml, tokens.json (kubeworld.write)")
    p.add_argument("--listen", required=True, help="IP:PORT")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, _, port = a.listen.rpartition(":")
    try:
        trio.run(main, a.dir, host, int(port))
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"kubeserve: cannot serve {a.dir} on {a.listen}: {exc}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    cli()
