"""One lab for the mesh conformance tests (own state dir and name prefix), with namespace
gateway-conformance-mesh's waypoint made by `trellis waypoint apply --enroll-namespace` and
ready before any test; `applied` applies one of the suite's manifests for a test and deletes
it afterwards, as the suite does."""
import contextlib

import pytest

from e2e.conformance.conflab import LAB_DIR, NS, ConformanceLab
from e2e.labctl import running


@pytest.fixture(scope="package")
def lab():
    with running(LAB_DIR, "/run/trellis/e2e-conformance", "ttcf", ConformanceLab) as lab:
        lab.apply_waypoint(NS, timeout=90)
        yield lab


@pytest.fixture
def applied(lab):
    @contextlib.contextmanager
    def apply(*names: str):
        texts = [lab.manifest(n) for n in names]
        for t in texts:
            lab.apply(t)
            lab.check_route_status(t)
        try:
            yield lab
        finally:
            for t in texts:
                lab.delete(t)
    return apply


@pytest.fixture(params=["http", "h2c"])
def proto(request):
    """The suite sends HTTP/1.1; its cases hold for a client speaking HTTP/2 (prior knowledge) too."""
    return request.param
