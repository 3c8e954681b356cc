"""Fixtures shared by the ztunnel tests."""
import pytest

from zt_netns import Lab


@pytest.fixture
def lab():
    """Pod network namespaces on a bridge (zt_netns.Lab), removed even when a test fails."""
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
