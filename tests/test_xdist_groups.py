"""`make test` runs with `--dist loadgroup`: tests marked `xdist_group(NAME)` share one worker,
which the real-fleet, real-daemon and crashcheck tests rely on (their leftover checks look at the
whole machine). pytest-xdist tags a grouped test's node id with `@NAME`; pytest 9 moved node ids
where pytest-xdist 3.8 cannot tag them, and grouping then stopped without a word. This runs a
grouped pair under `-n 2 --dist loadgroup` and checks both landed on one worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAIR = '''
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("k", range(6))
def test_grouped(k):
    pass
'''


def test_grouped_tests_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_pair.py").write_text(PAIR)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "test_pair.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {m.group(1) for m in re.finditer(r"\[(gw\d+)\].*PASSED.*test_grouped", done.stdout)}
    assert len(workers) == 1 and "@together" in done.stdout, done.stdout
