"""deploy/Dockerfile ships every package the distribution has (scripts/build-image builds it
for real, on demand: buildah, no daemon)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_image_copies_every_package_and_the_bpf_sources():
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \1$", docker, re.M))
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    assert packages <= copied, f"deploy/Dockerfile does not COPY {sorted(packages - copied)}"
    assert "bpf" in copied and "python3-bpfcc" in docker
    # the control plane's runAsUser in the chart exists in the image
    assert "--uid 1337" in docker
    chart = (ROOT / "deploy" / "helm" / "trellis" / "templates" / "controlplane.yaml").read_text()
    assert "runAsUser: 1337" in chart
