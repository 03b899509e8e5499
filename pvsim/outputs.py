"""Where `pvsim run` writes, checked before the simulation starts.

A run can take minutes; a `--out` that names a file or a `--json` that names a folder must fail at
once, with one line naming the option, and leave nothing behind. The checks only look: they create
no folder, so a rejected command writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from shared.errors import PvError

# the files `pvsim run --out DIR` writes, by role (pvsim.report.write_run_outputs)
RUN_FILES = {
    "results": "results.json",
    "timeline": "timeline.csv",
    "adoption": "adoption.png",
    "report": "report.html",
}


class OutputError(PvError):
    """An output path that cannot be written; `source` is the command-line option."""


def check_output_paths(out_dir: Path | None, json_path: Path | None) -> None:
    """`pvsim run`'s --out folder and --json file (either may be None): raise OutputError unless
    every file the run will write can be written."""
    if out_dir is not None:
        check_folder(out_dir, "--out", RUN_FILES.values())
    if json_path is not None:
        check_file(json_path, "--json")


def check_folder(path: Path, option: str, names: Iterable[str] = ()) -> None:
    """A folder that exists and is writable, or can be created; none of `names` in it a folder."""
    if path.is_dir():
        _writable_folder(path, option)
        for name in names:
            if (path / name).is_dir():
                raise OutputError(f"{path / name} is a folder, where a file would be written", source=option)
    elif path.exists():
        raise OutputError(f"{path} is a file, not a folder", source=option)
    else:
        _creatable(path, option)


def check_file(path: Path, option: str) -> None:
    """A file that can be (over)written: not a folder, and its folder exists or can be created."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder, not a file", source=option)
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OutputError(f"{path}: permission denied", source=option)
    else:
        _creatable(path, option)


def _creatable(path: Path, option: str) -> None:
    """`path` does not exist: its nearest existing ancestor must be a folder we may write into."""
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"{path}: {ancestor} is a file, not a folder", source=option)
    _writable_folder(ancestor, option, path)


def _writable_folder(folder: Path, option: str, wanted: Path | None = None) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        what = f"cannot create {wanted} in {folder}" if wanted else f"{folder} is not writable"
        raise OutputError(f"{what}: permission denied", source=option)


__all__ = ["RUN_FILES", "OutputError", "check_file", "check_folder", "check_output_paths"]
