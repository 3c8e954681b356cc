"""One lab for the whole mesh package: bringing one up costs seconds, tests share it and
restore whatever config they change."""
from pathlib import Path

import pytest

from e2e.labctl import Lab

LAB_DIR = Path(__file__).resolve().parents[1] / "lab"


@pytest.fixture(scope="package")
def lab():
    lab = Lab(LAB_DIR, "/run/trellis/e2e-mesh", "tte2e")
    lab.down()  # a previous run that died half way
    try:
        lab.up()
        yield lab
    finally:
        res = lab.down()
        assert res.returncode == 0, res.stderr
