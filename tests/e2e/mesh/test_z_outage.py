"""The control plane goes away: the data plane keeps serving from its last snapshot and
valid certificates, and says so. (Last in the package: the control plane stays down, held
with `lab stop` so that the lab's supervisor does not restart it.)"""
import subprocess
import sys
import time

from e2e.labctl import TRELLIS, metric_value, wait_until

LOOP = """
import socket, time, sys
s = socket.create_connection(('10.96.0.20', 9000), timeout=5)
ok = 0
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    s.sendall(b'ping'); got = b''
    while len(got) < 4:
        b = s.recv(4 - len(got))
        if not b: print('CLOSED after', ok); sys.exit(1)
        got += b
    ok += 1; time.sleep(0.1)
print('OK', ok)
"""


def test_killing_the_control_plane_keeps_traffic_flowing_and_is_reported(lab):
    existing = subprocess.Popen([TRELLIS, "lab", "exec", "sleep", "--", "python3", "-c", LOOP],
                                env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    lab.cli("lab", "stop", "controlplane", "--signal", "KILL")   # a crash, kept down
    health = wait_until(lambda: (h := lab.ztunnel("node1", "/healthz")) and "unreachable" in str(h) and h,
                        "ztunnel to report the control plane unreachable", timeout=30)
    assert "unreachable" in str(health)
    assert metric_value(lab.metrics("node1"), "trellis_control_plane_connected") == 0
    for _ in range(5):  # new connections, still over mTLS with the certificates it holds
        res = lab.curl("sleep", "http://10.96.0.10/")
        assert res.returncode == 0, res.stderr
    out, err = existing.communicate(timeout=30)
    assert existing.returncode == 0 and out.startswith("OK"), (out, err)
