"""The conformance suite's mesh client, run INSIDE a lab pod (`trellis lab exec echo-v1 --
python meshclient.py HOSTS CASES`) so its traffic is captured by the pod's ztunnel like an
app's: what the suite's `echo client` does in its pods. Standalone (stdlib, grpcio).

HOSTS is a JSON map from names to addresses (the lab has no DNS; the suite's pods resolve
`echo`, `echo-v1.gateway-conformance-mesh`...). CASES is a JSON list of requests:
    {"protocol": "http" | "h2c" | "grpc", "host": "echo" | "echo:8080" | "10.0.0.5:8080",
     "connect": "echo-v2" (optional: dial this name, send `host` as Host),
     "path": "/x?y=z", "method": "GET", "headers": {...}, "count": 1}
Redirects are not followed (the suite's UnfollowRedirect). Prints one JSON list: per case,
per request, {"status", "headers" (response: lower-case name -> [values]), "pod", "path",
"request_headers" (as the backend saw them: the echo's report), "error"}. "http" is
HTTP/1.1 on a keep-alive connection, "h2c" HTTP/2 with prior knowledge (streams of one
connection), "grpc" grpcio's unary calls on one channel."""
from __future__ import annotations

import http.client
import json
import sys


def _split(hostport: str, default: int) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else (hostport, default)


def http_calls(hosts: dict, case: dict) -> list[dict]:
    """`count` requests on one keep-alive connection (a new one after a failure or a close)."""
    name, port = _split(case.get("connect") or case["host"], 80)
    headers = {"Host": case["host"], **(case.get("headers") or {})}
    conn, out = None, []
    for _ in range(case.get("count", 1)):
        try:
            conn = conn or http.client.HTTPConnection(hosts.get(name, name), port, timeout=10)
            conn.request(case.get("method", "GET"), case.get("path") or "/", headers=headers)
            resp = conn.getresponse()
            rec = _record(resp.status, resp.getheaders(), resp.read())
            if resp.will_close:
                conn.close()
                conn = None
        except Exception as exc:   # recorded: the test says what failed
            rec = {"status": None, "error": f"{type(exc).__name__}: {exc}"}
            if conn is not None:
                conn.close()
            conn = None
        out.append(rec)
    if conn is not None:
        conn.close()
    return out


def _record(status: int, headers, body: bytes) -> dict:
    rec: dict = {"status": status, "headers": {}}
    for k, v in headers:
        rec["headers"].setdefault(k.lower(), []).append(v)
    # a HEAD answer has the GET's content-type and no body (an echo's answer to HEAD while
    # the route is still converging, say): nothing to decode then
    if body and (rec["headers"].get("content-type") or [""])[0].startswith("application/json"):
        doc = json.loads(body)
        rec.update(pod=doc.get("pod"), path=doc.get("path"), request_headers=doc.get("headers"))
    else:
        rec.update(body=body[:300].decode("latin-1"), pod=(rec["headers"].get("x-echo-pod") or [None])[0])
    return rec


def h2c_calls(hosts: dict, case: dict) -> list[dict]:
    """`count` requests as streams of one HTTP/2 connection with prior knowledge (h2c), the
    `host` as :authority."""
    import socket

    import h2.config
    import h2.connection
    import h2.events
    name, port = _split(case.get("connect") or case["host"], 80)
    out = []
    with socket.create_connection((hosts.get(name, name), port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        for _ in range(case.get("count", 1)):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", case.get("method", "GET")), (":scheme", "http"),
                                    (":authority", case["host"]), (":path", case.get("path") or "/"),
                                    *((k.lower(), v) for k, v in (case.get("headers") or {}).items())],
                              end_stream=True)
            sock.sendall(conn.data_to_send())
            status, headers, body, done = None, [], b"", False
            while not done:
                data = sock.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        headers = [(k, v) for k, v in ev.headers if not k.startswith(":")]
                        status = int(dict(ev.headers)[":status"])
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                        body += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                        done = True
                sock.sendall(conn.data_to_send())
            out.append(_record(status, headers, body) if done and status else
                       {"status": None, "error": "the stream did not end"})
    return out


def grpc_calls(hosts: dict, case: dict) -> list[dict]:
    import grpc
    name, port = _split(case.get("connect") or case["host"], 7070)
    target = f"{hosts.get(name, name)}:{port}"
    out = []
    with grpc.insecure_channel(target, options=[("grpc.default_authority", case["host"])]) as channel:
        call = channel.unary_unary(case.get("path") or "/grpc.testing.TestService/UnaryCall")
        for _ in range(case.get("count", 1)):
            try:
                doc = json.loads(call(b"conformance", metadata=tuple((case.get("headers") or {}).items()),
                                      timeout=10))
                out.append({"status": 200, "grpc": "OK", "pod": doc.get("pod"), "path": doc.get("method"),
                            "request_headers": doc.get("metadata")})
            except grpc.RpcError as exc:
                out.append({"status": None, "grpc": exc.code().name, "error": exc.details()})
    return out


def run(hosts: dict, case: dict) -> list[dict]:
    return {"grpc": grpc_calls, "h2c": h2c_calls}.get(case.get("protocol"), http_calls)(hosts, case)


def main() -> None:
    hosts, cases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    print(json.dumps([run(hosts, c) for c in cases]))


if __name__ == "__main__":
    main()
