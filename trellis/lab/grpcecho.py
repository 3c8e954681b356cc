"""`python -m trellis.lab.grpcecho`: the lab's sample gRPC app (grpcio, no generated stubs).

Every unary method of every service answers a JSON document (bytes): the pod, the full
method name (`/pkg.Service/Method`), the call's number at this process, the caller's
address (grpcio's `ipv4:IP:PORT`), the request it got and its metadata (a repeated key's
values joined with ","), so a test sees which backend a
route picked and which path (waypoint or not) the call took. `--fail-every N --fail-code UNAVAILABLE`
aborts every Nth call with that status instead (N=2: every other one), to play a flaky
backend for retry tests. grpcio comes with the test extras (`pip install trellis-mesh[test]`)."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent import futures

from .echo import joined_headers, pod_name


class Calls:
    """The call counter and the failure knob (thread-safe: grpcio serves calls on a pool)."""

    def __init__(self, fail_every: int = 0):
        self.fail_every = fail_every
        self.count = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[int, bool]:
        """(this call's number from 1, whether to fail it)."""
        with self._lock:
            self.count += 1
            return self.count, bool(self.fail_every) and self.count % self.fail_every == 0


def handler(grpc, calls: Calls, fail_code):
    """A generic handler answering every method (grpcio's raw-bytes API)."""

    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method

            def unary(request: bytes, context) -> bytes:
                n, fail = calls.next()
                if fail:
                    context.abort(fail_code, f"{pod_name()}: call {n} fails on purpose (--fail-every {calls.fail_every})")
                return json.dumps({"pod": pod_name(), "method": method, "call": n, "peer": context.peer(),
                                   "request": request.decode("utf-8", "replace"),
                                   "metadata": joined_headers((k, v if isinstance(v, str) else v.hex())
                                                               for k, v in context.invocation_metadata())}).encode()
            return grpc.unary_unary_rpc_method_handler(unary)
    return Echo()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trellis.lab.grpcecho", description=__doc__)
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--fail-every", type=int, default=0, metavar="N", help="fail every Nth call (0: never)")
    ap.add_argument("--fail-code", default="UNAVAILABLE", help="the gRPC status name to fail with")
    args = ap.parse_args(argv)
    try:
        import grpc
    except ImportError:
        print("trellis.lab.grpcecho needs grpcio: pip install 'trellis-mesh[test]' (scripts/setup does)",
              file=sys.stderr)
        return 1
    code = getattr(grpc.StatusCode, args.fail_code.upper(), None)
    if code is None or code is grpc.StatusCode.OK:
        ap.error(f"--fail-code {args.fail_code!r} is not a gRPC error status name "
                 f"(e.g. UNAVAILABLE, CANCELLED, INTERNAL)")
    if args.fail_every < 0:
        ap.error("--fail-every must be 0 (never) or more")
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers([handler(grpc, Calls(args.fail_every), code)])
    if not server.add_insecure_port(f"{args.host}:{args.port}"):
        print(f"grpcecho: cannot listen on {args.host}:{args.port} (is another app using the port in this pod?)",
              file=sys.stderr)
        return 1
    server.start()
    print(f"grpcecho listening on {args.host}:{args.port} as {pod_name()}", file=sys.stderr, flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
