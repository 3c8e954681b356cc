"""`python -m controlplane` as a process: credentials, flags, serving, signals."""
import os
import signal
import socket
import subprocess
import sys
import time

from cp_helpers import write_config
from meshcore.admin import get_json

PY = [sys.executable, "-m", "controlplane"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_issue_node_credential_writes_files_and_exits(tmp_path):
    res = subprocess.run(PY + ["--ca-dir", str(tmp_path / "ca"), "--trust-domain", "example.org",
                               "--issue-node-credential", "node1", "--out", str(tmp_path / "n1")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in (tmp_path / "n1").iterdir()} == {"bootstrap.key", "bootstrap.crt", "roots.pem"}
    assert oct((tmp_path / "n1" / "bootstrap.key").stat().st_mode & 0o777) == "0o600"


def test_bad_flags_exit_2_with_a_clear_message(tmp_path):
    res = subprocess.run(PY + ["--ca-dir", str(tmp_path), "--config-dir", str(tmp_path), "--cert-ttl", "1 day"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--cert-ttl" in res.stderr and "duration" in res.stderr
    res = subprocess.run(PY + ["--ca-dir", str(tmp_path), "--config-dir", str(tmp_path), "--listen", "nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "expected HOST:PORT" in res.stderr


def test_serves_config_dump_and_exits_0_on_sigterm(tmp_path):
    cfg = write_config(tmp_path / "config")
    (cfg / "broken.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {bogus: 1}\n")
    admin_port = _free_port()
    started_ms = int(time.time() * 1000)
    proc = subprocess.Popen(PY + ["--ca-dir", str(tmp_path / "ca"), "--config-dir", str(cfg),
                                  "--listen", f"127.0.0.1:{_free_port()}", "--admin", f"127.0.0.1:{admin_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                dump = get_json("127.0.0.1", admin_port, "/config_dump", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
                time.sleep(0.1)
        # versions start from the clock, so a restarted control plane never reuses one
        assert dump["version"] >= started_ms
        assert {r["metadata"]["name"] for r in dump["resources"]} >= {"web", "sleep", "default"}
        assert any("broken.yaml" in e and "spec.bogus" in e for e in dump["errors"])
        assert get_json("127.0.0.1", admin_port, "/healthz")["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
