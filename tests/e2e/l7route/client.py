"""A load client run inside a lab pod (`trellis lab exec sleep -- python3 client.py ...`):
the standard library's http.client over keep-alive connections, one per thread, each
request recorded as one JSON line in --out as soon as it ends (so a test can watch the
progress and change the config mid-run):
    {"i", "t0", "t1" (wall clock: the host's, the pod shares it), "status", "pod", "rule", "error"}
`pod` is the echo backend that answered (its JSON body, for GET), `rule` the x-rule header
a route's ResponseHeaderModifier added (the rule that matched). It stops after --count
requests, after --duration seconds, or once --stop-file exists, whichever comes first.
With --cases (a JSON list of {"method", "path", "headers"}), request i is case i modulo the
list, and --count defaults to its length."""
import argparse
import http.client
import json
import os
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--path", default="/")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    ap.add_argument("--count", type=int)
    ap.add_argument("--cases", help="JSON: [{method, path, headers}, ...]")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--stop-file")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    base = {"method": args.method, "path": args.path, "headers": dict(h.split(":", 1) for h in args.header)}
    cases = [dict(base, **c) for c in json.loads(args.cases)] if args.cases else [base]
    if args.count is None:
        args.count = len(cases)
    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()
    state = {"next": 0}
    end = time.monotonic() + args.duration

    def take():
        with lock:
            i = state["next"]
            if i >= args.count or time.monotonic() > end or (args.stop_file and os.path.exists(args.stop_file)):
                return None
            state["next"] = i + 1
            return i

    def worker():
        conn = None
        while (i := take()) is not None:
            case = cases[i % len(cases)]
            rec = {"i": i, "t0": time.time(), "status": None, "pod": None, "rule": None, "error": None}
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
                conn.request(case["method"], case["path"].replace("{i}", str(i)), headers=case["headers"])
                resp = conn.getresponse()
                body = resp.read()
                rec["status"], rec["rule"] = resp.status, resp.getheader("x-rule")
                if resp.getheader("content-type", "").startswith("application/json"):
                    rec["pod"] = json.loads(body).get("pod")
                else:
                    rec["body"] = body[:200].decode("latin-1")
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:   # a failed request: recorded, and a new connection next time
                rec["error"] = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            rec["t1"] = time.time()
            with lock:
                out.write(json.dumps(rec) + "\n")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()


if __name__ == "__main__":
    main()
