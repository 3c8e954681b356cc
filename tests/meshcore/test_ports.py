"""Each port number of the mesh is written once, in meshcore/ports.py (issue 10), and the
eBPF compile gets them from there."""
import re
import subprocess
from pathlib import Path

from meshcore import ports
from meshcore.wire import origdst

ROOT = Path(__file__).resolve().parents[2]
PORTS = {v: k for k, v in vars(ports).items() if k.isupper() and isinstance(v, int)}


def test_every_port_number_lives_only_in_ports_py():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    code = [f for f in files if f.endswith((".py", ".c", ".h", ".yaml", ".toml", ".sh"))
            and not f.startswith(("tests/", "docs/", "deploy/helm/"))]
    found: dict[int, list[str]] = {p: [] for p in PORTS}
    for f in code:
        text = (ROOT / f).read_text(errors="replace")
        for number in PORTS:
            if re.search(rf"(?<!\d){number}(?!\d)", text):
                found[number].append(f)
    assert all(where == ["meshcore/ports.py"] for where in found.values()), found


def test_the_helm_chart_uses_the_same_port_numbers():
    """The chart is YAML that cannot import ports.py: it is exempt from the scan above, and
    every port it names that looks like one of ours must be one of ours."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "deploy/helm/trellis/templates").glob("*.yaml")))
    named = {int(n) for n in re.findall(r"(?<!\d)(150\d\d)(?!\d)", text)}
    assert named and named <= set(PORTS), sorted(named - set(PORTS))


def test_bpf_gets_ports_and_sizes_as_defines():
    from nodeagent.loader import compile_defines

    flags = compile_defines()
    assert f"-DCAPTURE_PORT={ports.OUTBOUND}" in flags and f"-DHBONE_PORT={ports.HBONE}" in flags
    assert f"-DORIGDST_MAP_SIZE={origdst.MAP_SIZE}" in flags
    config = (ROOT / "bpf/include/config.h").read_text()
    assert "#error" in config and not re.search(r"#define\s+\w*PORT\s+\d", config)
