"""`python -m waypoint`: the waypoint process (docs/internals.md "waypoint process: startup contract")."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from meshcore import ports
from meshcore.identity import CertBundle, split_pem_chain
from meshcore.resources.loader import load_file
from meshcore.telemetry import configure_logging

from . import accesslog
from .app import Config, Waypoint, client_for
from .tracing import settings_from

CREDENTIAL_FILES = ("cert.pem", "key.pem", "roots.pem")


class StartupError(Exception):
    pass


class CheckDone(Exception):
    pass


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_credential(directory: Path) -> CertBundle:
    paths = {n: directory / n for n in CREDENTIAL_FILES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise StartupError(f"waypoint credential incomplete, missing {', '.join(missing)} (--credential-dir)")
    try:
        return CertBundle(paths["key.pem"].read_bytes(), tuple(split_pem_chain(paths["cert.pem"].read_bytes())),
                          tuple(split_pem_chain(paths["roots.pem"].read_bytes())))
    except ValueError as exc:
        raise StartupError(f"cannot read the waypoint credential in {directory}: {exc}") from None


def load_standalone(path: Path) -> list:
    result = load_file(path)
    if result.errors:
        raise StartupError("; ".join(str(e) for e in result.errors))
    return list(result.resources)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m waypoint", description="Trellis waypoint (L7 proxy)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--gateway", default="waypoint", help="the Gateway (class trellis-waypoint) this replica serves")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--service-account", default="waypoint")
    p.add_argument("--control-plane", type=host_port, help="HOST:PORT of the control plane API")
    p.add_argument("--credential-dir", type=Path, help="bootstrap cert.pem, key.pem, roots.pem")
    p.add_argument("--token-file", type=Path, help="in a cluster, instead of --credential-dir: this pod's projected "
                   "ServiceAccount token (re-read for each request), which the control plane checks with TokenReview")
    p.add_argument("--ca-root-file", type=Path, help="with --token-file: the mesh root certificate(s), PEM (the "
                   "namespace's ConfigMap trellis-ca-root-cert), to verify the control plane")
    p.add_argument("--hbone-port", type=int, default=ports.HBONE)
    p.add_argument("--admin", type=host_port, default=("127.0.0.1", ports.ZTUNNEL_ADMIN))
    p.add_argument("--metrics", type=host_port, default=("0.0.0.0", ports.METRICS))
    p.add_argument("--ready", type=host_port, default=("0.0.0.0", ports.READY))
    p.add_argument("--standalone-config", type=Path, help="plaintext mode (bench): resources from this YAML file")
    p.add_argument("--listen", type=host_port, help="standalone mode: the plaintext listener")
    p.add_argument("--check", action="store_true", help="standalone mode: validate the config and exit")
    p.add_argument("--otlp-endpoint", help="export a span per request to this OTLP/HTTP collector, e.g. "
                   "http://otel-collector:4318 (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
                   "$OTEL_EXPORTER_OTLP_ENDPOINT; the Gateway's trellis.dev/otlp-endpoint overrides)")
    p.add_argument("--trace-sampling", type=float, help="percent of new traces recorded (default 100)")
    p.add_argument("--log-level", default="INFO")
    return p


def build(argv: list[str]) -> Waypoint:
    a = parser().parse_args(argv)
    cfg = Config(a.namespace, a.gateway, a.trust_domain, a.service_account, a.control_plane, a.credential_dir,
                 ("0.0.0.0", a.hbone_port), a.admin, a.metrics, a.ready)
    try:
        cfg.tracing = settings_from(os.environ, a.otlp_endpoint, a.trace_sampling)
    except ValueError as exc:
        raise StartupError(f"span export: {exc}") from None
    if a.standalone_config:
        if not a.listen and not a.check:   # --check serves nothing
            raise StartupError("--standalone-config needs --listen HOST:PORT (or --check)")
        cfg.standalone_listen = a.listen
        # metrics and readiness only when asked for (the bench runs beside other processes)
        cfg.metrics = None if a.metrics == ("0.0.0.0", ports.METRICS) else a.metrics
        cfg.ready = None if a.ready == ("0.0.0.0", ports.READY) else a.ready
        wp = Waypoint(cfg, resources=load_standalone(a.standalone_config))
        try:
            target = wp._only_target()
        except RuntimeError as exc:
            raise StartupError(f"{a.standalone_config}: {exc}") from None
        if a.check:
            raise CheckDone(f"{a.standalone_config}: ok, serving Service {target[0]}/{target[1]} port {target[2]}")
        return wp
    if not a.control_plane or (a.credential_dir is None) == (a.token_file is None):
        raise StartupError("--control-plane and one of --credential-dir or --token-file are required "
                           "(or --standalone-config)")
    if a.token_file is not None:
        return _with_token(cfg, a.token_file, a.ca_root_file)
    bootstrap = load_credential(a.credential_dir)
    if bootstrap.identity != cfg.identity:
        raise StartupError(f"{a.credential_dir / 'cert.pem'} is for {bootstrap.identity}, not {cfg.identity} "
                           "(check --namespace, --service-account, --trust-domain)")
    holder: dict = {}
    cp = client_for(cfg, lambda: holder["wp"].bundle())
    wp = holder["wp"] = Waypoint(cfg, bootstrap=bootstrap, control_plane=cp)
    return wp


def _with_token(cfg: Config, token_file: Path, ca_root_file: Path | None) -> Waypoint:
    """In a cluster: no certificate to start with; the first one (and each renewal) is
    asked for with the pod's ServiceAccount token, over TLS that trusts the mesh root."""
    if ca_root_file is None:
        raise StartupError("--token-file needs --ca-root-file (the mesh root, to verify the control plane)")
    try:
        roots = tuple(split_pem_chain(ca_root_file.read_bytes()))
        token_file.read_text()   # the kubelet writes it before the container starts: absent is a mistake
    except OSError as exc:
        raise StartupError(f"cannot read {exc.filename}: {exc.strerror}; are the projected token and the "
                           "trellis-ca-root-cert ConfigMap mounted?") from None
    except ValueError as exc:
        raise StartupError(f"{ca_root_file}: {exc}") from None
    if not roots:
        raise StartupError(f"{ca_root_file} holds no PEM certificate")
    cp = client_for(cfg, None, token_file=token_file, roots=b"".join(roots))
    return Waypoint(cfg, control_plane=cp)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    level = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--log-level"), "INFO")
    # the access log's fast path writes accesslog.FORMAT itself
    configure_logging(getattr(logging, level.upper(), logging.INFO), accesslog.FORMAT)
    try:
        wp = build(argv)
    except StartupError as exc:
        print(f"waypoint: {exc}", file=sys.stderr)
        return 2
    except CheckDone as done:
        print(f"waypoint: {done}")
        return 0
    try:
        trio.run(wp.run)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
