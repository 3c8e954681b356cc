"""Suite-wide rules: CI installs every dependency, so a skipped test is a hidden failure."""
import pytest


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped; nothing may skip in this suite", red=True)
