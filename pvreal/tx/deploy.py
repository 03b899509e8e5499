"""Deploying a revision into a folder, as pvtx does, so that a crash at any point leaves the
folder whole: the old revision or the new one, never a half or nothing.

`DIR` stays a real directory (people and Pantavisor read and delete it as one), so the new
revision is built in `DIR.tmp` and swapped in by two renames: `DIR` -> `DIR.bak`, then
`DIR.tmp` -> `DIR`. Between them `DIR` is missing; `recover_target` puts the backup back.
It runs before every deploy to `DIR`, and the transaction folder keeps a journal (`.deploy.json`,
naming `DIR`) from before the build until the record says DEPLOYED, so every later `pvreal tx`
command repairs `DIR` even when it is never deployed to again.

The rule: until `DIR.tmp` has become `DIR`, the deploy did not happen (the record still says
ACTIVE), so a missing `DIR` with a `DIR.bak` is rolled back, never forward.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pvreal.durable import fsync_dir
from pvreal.tx.errors import TxError
from pvreal.tx.record import write_durably
from shared import canonical
from shared.errors import PvError
from shared.state import BOOT_ASSET_NAMES, is_sha256
from shared.transaction import State, entries

JOURNAL_FILE = ".deploy.json"

# pvtx matches each bsp/run.json key as a prefix of these names, in this order (SEMANTICS §10.6):
# Pantavisor's names plus the older `pantavisor` and `kernel`, and `ftd`, pvtx's spelling of fdt,
# which it links under a name of its own (so a real `fdt` key matches nothing).
_PVTX_BOOT_KEYS = (
    ("fit", BOOT_ASSET_NAMES["fit"]),
    ("pantavisor", BOOT_ASSET_NAMES["initrd"]),
    ("initrd", BOOT_ASSET_NAMES["initrd"]),
    ("kernel", BOOT_ASSET_NAMES["linux"]),
    ("linux", BOOT_ASSET_NAMES["linux"]),
    ("ftd", "pv-ftd.img"),
)

# Test hook: tests/test_tx_deploy_crash.py kills a deploy at each of these steps, in this order.
CRASH_ENV = "PVTWIN_TX_CRASH_AT"
CRASH_POINTS = ("journaled", "half-built", "built", "moved-aside", "swapped", "backup-removed",
                "recorded")
CRASH_EXIT = 137  # what a SIGKILL'd process reports


def crash_point(name: str) -> None:
    """Die here, without any cleanup, when the crash test asks for this step."""
    assert name in CRASH_POINTS, name
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


def _work_dirs(target: Path) -> tuple[Path, Path]:
    return target.with_name(target.name + ".tmp"), target.with_name(target.name + ".bak")


def recover_target(target: Path) -> None:
    """Finish a deploy to `target` that stopped part-way: a missing `target` gets its backup
    back; leftover build and backup folders go."""
    temp, backup = _work_dirs(target)
    if not os.path.lexists(target) and os.path.lexists(backup):
        os.rename(backup, target)
        fsync_dir(target.parent)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the journal in the transaction folder


def open_journal(txdir: Path, target: Path) -> None:
    write_durably(txdir / JOURNAL_FILE, canonical.dump_bytes({"target": os.path.abspath(target)}))


def close_journal(txdir: Path) -> None:
    (txdir / JOURNAL_FILE).unlink(missing_ok=True)
    fsync_dir(txdir)


def recover_journaled(txdir: Path) -> None:
    """Repair the folder a deploy from `txdir` was writing when it stopped, if any."""
    path = txdir / JOURNAL_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    try:
        target = canonical.loads(text, source=str(path))["target"]
    except (PvError, KeyError, TypeError):
        raise TxError("not a deploy journal; delete it after checking the deploy folder",
                      source=str(path)) from None
    recover_target(Path(target))
    close_journal(txdir)


# --------------------------------------------------------------------------------------------
# deploy


def deploy_revision(state: State, state_bytes: bytes, objdir: Path, target: Path) -> list[str]:
    """Lay the revision out in `target` like pvr checkout / Pantavisor's trail: `.pvr/json`,
    `.pvr/config`, one file per entry (objects hard-linked from `objdir`, inline JSON written out)
    and `.pv/` boot links from `bsp/run.json`. Built in `<target>.tmp`, then swapped in.
    Returns warnings (boot assets that are named but missing)."""
    temp, backup = _work_dirs(target)
    recover_target(target)
    try:
        warnings = _build_revision(state, state_bytes, objdir, target, temp)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise TxError(f"deploy failed: {exc}", source=str(target)) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    crash_point("built")
    try:
        _swap_in(temp, target, backup)
    except OSError as exc:
        recover_target(target)
        raise TxError(f"couldn't swap the new revision in: {exc}", source=str(target)) from None
    except BaseException:
        recover_target(target)
        raise
    return warnings


def _swap_in(temp: Path, target: Path, backup: Path) -> None:
    if os.path.lexists(target):
        os.rename(target, backup)
        fsync_dir(target.parent)  # the old revision is safe under its new name first
    crash_point("moved-aside")
    os.rename(temp, target)
    fsync_dir(target.parent)
    crash_point("swapped")
    shutil.rmtree(backup, ignore_errors=True)
    crash_point("backup-removed")


def _build_revision(state: State, state_bytes: bytes, objdir: Path, target: Path,
                    temp: Path) -> list[str]:
    (temp / ".pvr").mkdir(parents=True)
    config = target / ".pvr" / "config"
    config_text = (config.read_bytes() if config.is_file()
                   else f'{{"ObjectsDir": {canonical.dumps(str(objdir))}}}'.encode())
    _write_file(temp / ".pvr" / "config", config_text)
    _write_file(temp / ".pvr" / "json", state_bytes, mode=0o600)
    crash_point("half-built")
    for key in entries(state):
        if key.startswith("#spec"):
            continue
        _deploy_entry(temp, key, state[key], objdir)
    (temp / ".pv").mkdir()
    warnings = _link_boot_assets(temp)
    _fsync_tree(temp)
    return warnings


def _write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    # Not atomic_write: the whole tree is new and only becomes visible by the final rename.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _deploy_entry(root: Path, key: str, value: Any, objdir: Path) -> None:
    if isinstance(value, str) and value.startswith("#spec"):
        return  # pvtx skips values that start with "#spec"
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.is_dir():
        raise TxError("a state key is both a file and a folder", key=key)
    path.unlink(missing_ok=True)
    if is_sha256(value):
        try:
            os.link(objdir / value, path)
        except OSError as exc:
            raise TxError(f"couldn't hard-link object {value} from {objdir}: {exc.strerror}",
                          key=key) from None
    elif isinstance(value, str):
        _write_file(path, value.encode())
    else:
        _write_file(path, canonical.dump_bytes(value))


def _link_boot_assets(root: Path) -> list[str]:
    run_json = root / "bsp" / "run.json"
    if not run_json.is_file():
        return []
    try:
        run = canonical.loads(run_json.read_bytes(), source="bsp/run.json", allow_duplicates=True)
    except PvError:
        return []
    if not isinstance(run, dict):
        return []
    warnings = []
    for key, value in run.items():
        # pvtx: the run.json key only has to be a prefix of a known name ("f" counts as "fit").
        link = next((link for known, link in _PVTX_BOOT_KEYS if known.startswith(key)), None)
        if link is None or not isinstance(value, str):
            continue
        source = root / "bsp" / value
        if value.startswith("/") or ".." in value.split("/") or not source.is_file():
            warnings.append(f"boot asset bsp/{value} does not exist; continuing without .pv/{link}")
            continue
        (root / ".pv" / link).unlink(missing_ok=True)
        os.link(source, root / ".pv" / link)
    return warnings


def _fsync_tree(root: Path) -> None:
    for folder, _, _ in os.walk(root):
        fsync_dir(Path(folder))
