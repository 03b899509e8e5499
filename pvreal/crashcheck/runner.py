"""The enumeration of `pvreal crashcheck`, as `pvsim crashcheck` does it, on real folders.

For each kind:
1. a base storage folder: the factory revision installed (objects, trail, boot env), settled by a
   first daemon run; for a remote kind also a base Hub (pvreal.crashcheck.hub) the device
   registered with, which then publishes the update (every run gets a fresh copy of both);
2. a reference run (a copy of the base, one daemon process to quiescence) records the durable
   steps of the whole update (`PVTWIN_CRASH_STEPS`);
3. for every step k a fresh copy is updated again by a daemon process that dies right before step
   k (`PVTWIN_CRASH_AT_STEP`), and inside it when it is tearable, plus a plain restart once
   quiet; a new daemon process then runs on the same folder to quiescence;
4. a second sweep kills the restarted daemon again at every durable step of its recovery;
5. the invariants (shared.engine.invariants) are checked on the folder and the last daemon's
   answers.

Each daemon is a child process (`fork`): its memory dies with it, only its files survive. Runs
are deterministic (one event at a time, a virtual clock), so a replay reaches the same step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvreal.crashcheck.daemon import NOTEBOOK, RESULT, read_notebook, run_daemon
from pvreal.crashcheck.hub import copy_hub, hub_files, publish_update, serving
from pvreal.crashcheck.kinds import RealKind, kinds
from pvreal.device.crashpoint import AT_STEP, KILLED, STEPS, TORN
from pvreal.device.latch import boot_files, set_env
from pvreal.storage import Storage
from shared import canonical
from shared.crashrevisions import build_state, object_bytes
from shared.engine.config import Ordering
from shared.engine.invariants import (
    CrashReport,
    CutPoint,
    KindReport,
    check_outcome,
    cut_label,
    cut_points,
)
from shared.engine.progress import Msg, Progress, Status
from shared.errors import PvError
from shared.state import State

OLD_REV = "0"


@dataclass
class RunResult:
    outcome: str
    violations: list[str]
    steps: list[str] = field(default_factory=list)  # durable steps after the first kill
    tearable: list[bool] = field(default_factory=list)
    record: Progress | None = None


# ----------------------------------------------------------------------------- processes


def _fork(body: Callable[[], None], env: dict[str, str], errors: Path) -> int:
    """Run `body` in a child process with `env` added; its exit code (137: killed from inside)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.environ.update(env)
            body()
        except BaseException:
            errors.write_text(traceback.format_exc())
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def copy_folder(src: Path, dst: Path) -> None:
    """A copy that keeps hard links as hard links (a trail's files are links into objects/)."""
    copied: dict[tuple[int, int], str] = {}

    def copy(source: str, target: str) -> None:
        st = os.stat(source)
        first = copied.setdefault((st.st_dev, st.st_ino), target)
        if first != target:
            os.link(first, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)


def _read_steps(log: Path) -> tuple[list[str], list[bool]]:
    if not log.is_file():
        return [], []
    lines = [line.split("\t", 1) for line in log.read_text(encoding="utf-8").splitlines()]
    return [text for _, text in lines], [flag == "1" for flag, _ in lines]


def _progress(storage: Storage, rev: str) -> Progress | None:
    with contextlib.suppress(OSError, PvError):
        raw = storage.read_progress(rev)
        if raw is not None:
            return Progress.from_json(raw, source=str(storage.progress_path(rev)))
    return None


def unbootable(storage: Storage, rev: str) -> str | None:
    """Why the folder cannot boot `rev`, or None (the wording of pvsim's disk, for the windows)."""
    if not rev:
        return "no revision set"
    if not storage.has_state(rev):
        return "its trail is missing"
    try:
        shas = {sha for _, sha in storage.installs(storage.read_state(rev))}
    except (OSError, PvError) as exc:
        return f"its state is unreadable: {exc}"
    if not all(storage.objects.has(sha) for sha in shas):
        return "objects missing from the pool"
    report = storage.check([rev])
    if report.corrupt_objects:
        return "objects corrupt in the pool"
    if report.trail_problems or report.missing_objects:
        return "objects not linked into its trail"
    return None


# ----------------------------------------------------------------------------- one kind


class KindRun:
    """The folders of one kind under `work`, and its runs."""

    def __init__(self, kind: RealKind, ordering: str, work: Path):
        self.kind = kind
        self.ordering = ordering
        self.work = work
        self.base = work / "base" / "storage"
        self.run_root = work / "run"
        self.base_hub = work / "base" / "hub"
        self.old = OLD_REV
        self.hub: tuple[str, str] | None = None  # (URL, fleet token) of the Hub serving now

    def daemon(self, storage: Path, kind: RealKind | None, env: dict[str, str]) -> tuple[int, str]:
        errors = storage.parent / "error.txt"
        errors.unlink(missing_ok=True)
        run_dir = storage.parent / "rundir"
        url, token = self.hub or (None, "")
        code = _fork(lambda: run_daemon(storage, run_dir, kind, self.ordering, url, token), env, errors)
        return code, errors.read_text() if errors.is_file() else ""

    @contextlib.contextmanager
    def hub_serving(self, folder: Path) -> Iterator[None]:
        """For a remote kind, the real Hub on `folder` while the block runs (nothing otherwise)."""
        if not self.kind.hub:
            yield
            return
        with serving(folder) as (files, url):
            self.hub = (url, files.device_token)
            try:
                yield
            finally:
                self.hub = None

    def install_base(self) -> None:
        """The factory revision, settled; with `gc_base` an older one too, committed before it."""
        shutil.rmtree(self.work / "base", ignore_errors=True)
        storage = Storage(self.base)
        storage.init_layout()
        (storage.trails_dir / "locals").mkdir()
        trails: list[tuple[str, State, Progress | None]] = [(OLD_REV, build_state(), None)]
        blobs = object_bytes()
        if self.kind.gc_base:
            older = build_state(kernel="k2")
            blobs |= object_bytes(kernel="k2")
            trails = [
                ("0", older, Progress.make(Status.DONE, Msg.FACTORY)),
                ("1", build_state(), Progress.make(Status.DONE, Msg.DONE)),
            ]
            self.old = "1"
        for sha, data in blobs.items():
            storage.objects.put_bytes(sha, data)
        for rev, state, record in trails:
            storage.write_state(rev, state.entries)
            storage.link_trail(rev, state.entries)
            if record is not None:
                storage.write_progress(rev, record.to_json())
                storage.mark_done(rev)
        set_env(boot_files(storage.root / "boot", "uboot", self.ordering), self.old, None)
        with self.hub_serving(self.base_hub):
            code, error = self.daemon(self.base, None, {})  # registers with the Hub, if any
            if code != 0:
                raise RuntimeError(f"base device for {self.kind.name} did not settle: {error}")
            if self.kind.hub:  # the person at the Hub publishes the update to it
                publish_update(hub_files(self.base_hub), self.hub[0] if self.hub else "",
                               dict(self.kind.state.entries), self.kind.objects,
                               self.work / "base" / "release")  # fmt: skip

    def run_once(self, cuts: tuple[CutPoint, ...] = ()) -> RunResult:
        shutil.rmtree(self.run_root, ignore_errors=True)
        self.run_root.mkdir(parents=True)
        folder = self.run_root / "storage"
        copy_folder(self.base, folder)
        if not self.kind.hub:
            return self._run_once(folder, cuts)
        copy_hub(self.base_hub, self.run_root / "hub")  # the Hub's own state, fresh too
        with self.hub_serving(self.run_root / "hub"):
            return self._run_once(folder, cuts)

    def _run_once(self, folder: Path, cuts: tuple[CutPoint, ...]) -> RunResult:
        storage = Storage(folder)
        rev = self.kind.rev
        violations: list[str] = []
        written_failure: Progress | None = None
        for i, cut in enumerate(cuts):
            env = {AT_STEP: str(cut.step), TORN: "1" if cut.torn else "0"}
            env[STEPS] = str(self.run_root / f"steps-{i}.log")
            code, error = self.daemon(folder, self.kind, env)
            if code not in (0, KILLED):  # 0: quiet before that step, the kill is a power cycle
                violations.append(f"daemon exited {code}: {_last_line(error)}")
            record = _progress(storage, rev)
            if written_failure is None and record is not None and record.is_failed:
                written_failure = record
        final_log = self.run_root / "steps-final.log"
        code, error = self.daemon(folder, self.kind, {STEPS: str(final_log)})
        steps, tearable = _read_steps(final_log)
        if code != 0:
            violations.append(f"daemon exited {code}: {_last_line(error)}")
            return RunResult("none", violations, steps, tearable)
        result: dict[str, Any] = canonical.loads_object((self.run_root / RESULT).read_bytes(), source=RESULT)
        if result["error"]:
            violations.append(result["error"])
        if result["failures"]:
            violations.append(f"daemon: {result['failures']} failed commands, last {result['last_failure']}")
        record = _progress(storage, rev)
        if written_failure is None and record is not None and record.is_failed:
            written_failure = record
        if record is None and not storage.trail_dir(rev).exists():
            # GC collected the revision: its outcome lives on in what the person at pv-ctrl saw
            record = read_notebook(self.run_root / NOTEBOOK)
        if result["error"]:
            return RunResult("none", violations, steps, tearable, record)
        outcome, found = check_outcome(
            old=self.old,
            new=rev,
            running=result["running"],
            pv_rev=result["pv_rev"],
            pv_try=result["pv_try"],
            unbootable=lambda r: unbootable(storage, r) if r in (self.old, rev) else torn_name(r),
            record=record,
            written_failure=written_failure,
        )
        return RunResult(outcome, violations + found, steps, tearable, record)


def torn_name(rev: str) -> str:
    """An env naming a revision that never existed: only a torn in-place write leaves one."""
    return f"named by a torn write: no revision {rev!r} was ever installed"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no traceback"


def check_kind(kind: RealKind, ordering: str, work: Path, *, second_sweep: bool = True) -> KindReport:
    started = time.perf_counter()
    run = KindRun(kind, ordering, work)
    run.install_base()
    ref = run.run_once()
    report = KindReport(kind.name, kind.description, ref.steps)
    report.check_reference(ref.outcome, ref.record, ref.violations, kind.expected, kind.expected_status)
    for cut in cut_points(len(ref.steps), ref.tearable):
        first = run.run_once((cut,))
        label = cut_label(cut, ref.steps)
        report.note(first.outcome, first.record, first.violations, label)
        if not second_sweep or cut.step >= len(ref.steps):
            continue
        for cut2 in cut_points(len(first.steps), first.tearable):
            if cut2.step >= len(first.steps):
                continue  # identical to the first sweep's restart once quiet
            second = run.run_once((cut, cut2))
            recovery = f"{cut_label(cut2, first.steps)} of the recovery"
            report.note(second.outcome, second.record, second.violations, f"{label}, then {recovery}")
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _workdir(work: Path | None) -> Iterator[Path]:
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="pvreal-crashcheck-") as tmp:
        yield Path(tmp)


def crashcheck(
    ordering: Ordering = Ordering.HARDENED,
    names: Iterable[str] | None = None,
    *,
    second_sweep: bool = True,
    work: Path | None = None,
    progress: Callable[[KindReport], None] | None = None,
) -> CrashReport:
    """Every kind (or `names`) at every durable step, on folders under `work` (default: a
    temporary folder, removed afterwards)."""
    started = time.perf_counter()
    table = kinds()
    selected = list(names) if names else list(table)
    reports: dict[str, KindReport] = {}
    with _workdir(work) as root:
        for name in selected:
            reports[name] = check_kind(table[name], ordering.value, root / ordering.value / name,
                                       second_sweep=second_sweep)
            if progress is not None:
                progress(reports[name])
    return CrashReport(ordering.value, reports, time.perf_counter() - started)
