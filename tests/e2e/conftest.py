"""End-to-end tests: real labs (network namespaces, cgroups, eBPF, mTLS) driven by the CLI."""
import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _need_root():
    assert os.geteuid() == 0, "the e2e suite needs root (netns, cgroups, eBPF); CI runs it as root"
