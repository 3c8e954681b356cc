"""Suite-wide rules: CI installs every dependency, so a skipped test is a hidden failure."""
import sys
from pathlib import Path

import pytest

# The builders in tests/ztunnel (zt_helpers, zt_ca) also serve the tests of the modules
# promoted from ztunnel to meshcore (state, certs, authz), whatever order pytest collects in.
sys.path.insert(0, str(Path(__file__).resolve().parent / "ztunnel"))


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped; nothing may skip in this suite", red=True)
