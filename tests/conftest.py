"""Suite-wide rules.

Under PVTWIN_REQUIRE_ALL=1 (set by .ci/run) a skipped test is a failure: tests that need root,
runc or QEMU skip with a reason on a laptop, but CI must run every one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BRIEF_SHARED = REPO.parent / "shared"
CONFORMANCE = BRIEF_SHARED / "conformance"
REQUIRE_ALL = os.environ.get("PVTWIN_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under PVTWIN_REQUIRE_ALL=1, which forbids skips: {reason}"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    path = CONFORMANCE / "pvtx"
    if not path.is_dir():
        pytest.skip(f"conformance data not found at {path} (it lives beside the checkout)")
    return path
