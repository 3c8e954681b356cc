"""h2's private state is used in one module, against the h2 series pyproject.toml pins."""
from __future__ import annotations

import re
from pathlib import Path

import h2

from meshcore.hbone import h2private

ROOT = Path(__file__).resolve().parents[3]
PRIVATE = re.compile(r"\._data_to_send|_window_manager|\.state_machine|_bytes_processed|\.decoder\."
                     r"|max_inbound_frame_size|_begin_new_stream|_headers_buffer|table_size_changes")


def pinned_h2() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"h2~=(\d+\.\d+)\.0"', text)
    assert m, 'pyproject.toml must pin h2 to one minor series ("h2~=X.Y.0"): meshcore/hbone/h2private.py uses its internals'
    return m.group(1)


def test_the_pin_and_the_module_agree():
    assert pinned_h2() == h2private.PINNED_SERIES, (
        f"pyproject.toml pins h2~={pinned_h2()}.0 but meshcore/hbone/h2private.py says it was written against "
        f"{h2private.PINNED_SERIES}: re-check h2private's internals before moving either")


def test_h2_still_has_the_internals_we_use():
    problems = h2private.check_internals()
    assert not problems, (
        f"h2 {h2.__version__}: the internals meshcore/hbone/h2private.py relies on changed "
        f"(pyproject.toml pins h2~={pinned_h2()}.0): " + "; ".join(problems)
        + ". Adapt h2private.py (and its DATA fast path) to the new h2, then move the pin.")


def test_no_other_module_reaches_into_h2():
    offenders = []
    for path in [*(ROOT / "meshcore").rglob("*.py"), *(ROOT / "ztunnel").rglob("*.py")]:
        if path.name == "h2private.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "h2 internals outside meshcore/hbone/h2private.py:\n" + "\n".join(offenders)
