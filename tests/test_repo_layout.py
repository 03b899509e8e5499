"""The repository's top level is fixed (the project brief): nothing a command or a test leaves
in the working directory may be committed beside it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"pvsim", "pvreal", "shared", "scenarios", "tests", "docs", ".ci", "pyproject.toml",
           "README.md", "Makefile", ".gitignore"}  # fmt: skip


def test_only_the_fixed_layout_is_tracked_at_the_top_level() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    top = {name.split("/", 1)[0] for name in listed}
    assert top - ALLOWED == set(), f"tracked outside the fixed layout: {sorted(top - ALLOWED)}"
