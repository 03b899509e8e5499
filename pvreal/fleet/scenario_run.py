"""A rollout plan on a real fleet: a Hub and `pvreal fleet` started in a folder, the releases
published and the faults injected on the plan's schedule (times multiplied by its time scale),
the Hub's records read back as a timeline. `pvsim validate` writes the plan from a scenario and
runs `python -m pvreal.fleet.scenario_run PLAN WORK OUT` (pvsim and pvreal stay independent:
they meet in these two JSON files, whose formats docs/validation.md gives). Progress goes to
stdout as one JSON object a line: {"stage": text}, {"note": text}, or {"now", "until",
"releases": [...], "phases": {...}}.

Everything is torn down in `finally` (`pvreal.fleet.lifecycle.down` removes every namespace,
bridge, process and runc container the fleet made, the Hub included), so a failure or Ctrl-C
(KeyboardInterrupt) leaves nothing behind.

The scenario's `web` container has status goal READY, as in pvsim. A real app signals ready
through its pv-ctrl socket; busybox cannot speak HTTP over a unix socket, so `ReadySignaller`
plays the app: it signals ready for every READY container it sees STARTED, except those whose
root file system carries the never-ready mark (realrevs), exactly pvsim's `never_ready` defect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.fleet import faults, lifecycle
from pvreal.fleet import revisions as realrevs
from pvreal.fleet.state import load as load_fleet
from pvreal.hub.client import operator_for, publish
from shared.engine.progress import Msg, Status
from shared.errors import PvError
from shared.rollout import parse_options

TIMELINE_FORMAT = "pvtwin-validation-timeline/1"
OBSERVATIONS = ("boot_s", "container_start_s", "ready_s", "transfers")

POLL_S = 0.1  # how often the harness looks at each device (ready signals, observations)
FINAL = {Status.DONE.value, Status.UPDATED.value, Status.ERROR.value, Status.WONTGO.value}


MAIN_PID = os.getpid()  # forked helpers (pyroute2's) inherit signal handlers, not this pid


def _hold(signum: int, _frame: Any) -> None:
    """During teardown: this process carries on; a forked helper still dies as told."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Event:
    at: float  # wall seconds after t0
    what: str
    act: Callable[[], None]
    done: bool = False


@dataclass
class Watch:
    """What the harness saw of the devices, for the progress display and the observations."""

    hub_ids: dict[str, str] = field(default_factory=dict)  # fleet name -> Hub device id
    seen: dict[tuple[str, str], tuple[int | None, str]] = field(default_factory=dict)
    started_at: dict[tuple[str, str, int], float] = field(default_factory=dict)
    ready_s: list[float] = field(default_factory=list)
    boot_s: list[float] = field(default_factory=list)
    booted: set[tuple[str, int]] = field(default_factory=set)
    signalled: set[tuple[str, int]] = field(default_factory=set)
    phases: dict[str, str] = field(default_factory=dict)


class ReadySignaller(threading.Thread):
    """Plays the apps (ready signals) and records boots and container starts, every POLL_S."""

    def __init__(self, storage: Path, watch: Watch) -> None:
        super().__init__(name="pvsim-validate-ready", daemon=True)
        self.storage, self.watch = storage, watch
        self.stopping = threading.Event()
        self.since = float("inf")

    def run(self) -> None:
        self.since = time.time()
        # every device looked at in parallel: one slow pv-ctrl answer must not delay the others'
        # ready signals (an app signals as soon as it is up) nor blur their observations
        with ThreadPoolExecutor(max_workers=64, thread_name_prefix="pvsim-validate-look") as pool:
            while not self.stopping.wait(POLL_S):
                try:
                    doc = load_fleet(self.storage)
                except (OSError, PvError, ValueError):
                    continue
                list(pool.map(self._look_quietly, doc["devices"]))

    def _look_quietly(self, dev: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, CtrlError, ValueError, KeyError):
            self._look(dev)

    def _look(self, dev: dict[str, Any]) -> None:
        status = lifecycle.device_status(dev, timeout=1.0)
        if status is None:
            return
        name, w, now = dev["name"], self.watch, time.time()
        w.phases[name] = status.get("phase") or "?"
        boot = (name, dev["boots"])
        if boot not in w.booted and dev.get("started_at"):
            w.booted.add(boot)
            if dev["started_at"] >= self.since:  # a restart this harness saw from its start
                w.boot_s.append(now - dev["started_at"])
        hub = status.get("hub") or {}
        if hub.get("device"):
            w.hub_ids[name] = hub["device"]
        for cname, c in status.get("containers", {}).items():
            pid = c.get("pid")
            if c["status"] in ("STARTED", "READY") and pid and (name, cname, pid) not in w.started_at:
                w.started_at[name, cname, pid] = now
            if c["status_goal"] == "READY" and c["status"] == "STARTED" and pid:
                self._signal(dev, cname, pid)

    def _signal(self, dev: dict[str, Any], cname: str, pid: int) -> None:
        if (dev["name"], pid) in self.watch.signalled:
            return
        root = Path(f"/proc/{pid}/root")
        if (root / realrevs.NEVER_READY_MARK).exists():
            self.watch.signalled.add((dev["name"], pid))  # this app never signals
            return
        sock = Path(dev["run_dir"]) / "ctrl" / f"{cname}.sock"
        answer = CtrlClient(sock, timeout=2).request("POST", "/signal", b'{"type":"ready","payload":""}')
        if answer.status == 200:
            self.watch.signalled.add((dev["name"], pid))
            started = self.watch.started_at.get((dev["name"], cname, pid))
            if started is not None:
                self.watch.ready_s.append(time.time() - started)


def schedule(plan: dict[str, Any], storage: Path, revs: list[realrevs.RealRevision], objects: Path,
             db: Path, slot_names: Callable[[int], str | None]) -> list[Event]:  # fmt: skip
    """The plan's releases and faults as wall-clock events."""
    scale, events = plan["time_scale"], []
    strategy = plan["strategy"]
    options = parse_options(strategy, plan["options"])
    for release, rev in zip(plan["releases"], revs[1:], strict=True):
        def offer(release: Any = release, rev: realrevs.RealRevision = rev) -> None:
            publish(operator_for(db), rev.state, release["name"], strategy, options, objects)

        events.append(Event(release["at_s"] * scale, f"release {release['name']}", offer))
    for at_s, duration_s in plan["hub_outages"]:
        events.append(Event(at_s * scale, "Hub down", lambda: faults.hub_stop(storage)))
        events.append(Event((at_s + duration_s) * scale, "Hub up", lambda: faults.hub_start(storage)))
    for slot, at_s, off_s in plan["power_cuts"]:
        def power_cut(slot: int = slot, off_s: float = off_s) -> None:
            name = slot_names(slot)
            if name is not None:  # a slot the rollout never filled has no device to cut
                threading.Thread(target=faults.inject, args=(storage, "power-cut", name),
                                 kwargs={"off_s": off_s * scale}, daemon=True).start()  # fmt: skip

        events.append(Event(at_s * scale, f"power cut (slot {slot})", power_cut))
    return sorted(events, key=lambda e: e.at)


def run_plan(plan: dict[str, Any], work: Path, display: Any) -> dict[str, Any]:
    """Run the plan on `plan["devices"]` real devices in `work`; returns the real timeline."""
    devices = int(plan["devices"])
    revs_dir = work / "revisions"
    revs_dir.mkdir(parents=True)
    display.stage("building the revisions")
    objects, revs = realrevs.build(revs_dir, plan["releases"])
    db = work / "hub.sqlite"
    spec = lifecycle.FleetSpec(storage=work / "fleet", hub=f"http://127.0.0.1:{_free_port()}",
                               devices=devices, state=revs[0].state, objects=objects, hub_db=db,
                               config={k: str(v) for k, v in plan["engine"].items()},
                               ready_timeout=60 + 5.0 * devices)  # fmt: skip
    display.stage(f"bringing up {devices} real devices")
    watch = Watch()
    signaller = ReadySignaller(spec.storage, watch)
    try:
        lifecycle.up(spec)
        signaller.start()
        _wait_registered(db, devices, display)
        t0 = time.time()
        slot_device = _slot_mapper(db, plan["releases"][0]["name"], watch)
        events = schedule(plan, spec.storage, revs, objects, db, slot_device)
        _drive(plan, db, events, t0, watch, display)
        doc = _read(plan, db, revs, t0, watch)
    finally:
        if threading.current_thread() is threading.main_thread():
            # a second Ctrl-C or SIGTERM must not cut the teardown short
            signal.signal(signal.SIGINT, _hold)
            signal.signal(signal.SIGTERM, _hold)
        signaller.stopping.set()
        display.stage("tearing the fleet down")
        lifecycle.down(spec.storage)
        if signaller.is_alive():
            signaller.join(5)
    return doc


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(db), timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _wait_registered(db: Path, devices: int, display: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.closing(_connect(db)) as conn:
            n = conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        display.stage(f"devices registered with the Hub: {n}/{devices}")
        if n >= devices:
            return
        time.sleep(0.2)
    raise PvError(f"only {n} of {devices} devices registered with the Hub within {timeout:.0f} s")


def _slot_mapper(db: Path, first_release: str, watch: Watch) -> Callable[[int], str | None]:
    def name_of(slot: int) -> str | None:
        with contextlib.closing(_connect(db)) as conn:
            row = conn.execute("SELECT device FROM targets WHERE release = ? AND position = ? "
                               "AND admitted_at IS NOT NULL", (first_release, slot)).fetchone()  # fmt: skip
        if row is None:
            return None
        by_id = {v: k for k, v in watch.hub_ids.items()}
        return by_id.get(row["device"])

    return name_of


def _releases(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT r.name, r.status, r.fleet, COUNT(t.admitted_at) AS admitted, "
        "COALESCE(SUM(t.outcome = 'succeeded'), 0) AS ok, COALESCE(SUM(t.outcome = 'failed'), 0) AS bad "
        "FROM releases r LEFT JOIN targets t ON t.release = r.name GROUP BY r.name ORDER BY r.seq"
    ).fetchall()


def _over(row: sqlite3.Row) -> bool:
    """A release nothing more will happen to: completed or aborted, or paused with nobody left
    mid-update."""
    in_flight = row["admitted"] - row["ok"] - row["bad"]
    return row["status"] in ("completed", "aborted") or (row["status"] == "paused" and in_flight == 0)


def _drive(plan: dict[str, Any], db: Path, events: list[Event], t0: float, watch: Watch, display: Any) -> None:
    """Fire the events on time; stop once every release is over (nothing in flight, not
    running) and `settle_s` passed, or at `until_s`."""
    scale = plan["time_scale"]
    until = plan["until_s"] * scale
    settle = plan["settle_s"] * scale
    quiet_since: float | None = None
    while True:
        now = time.time() - t0
        for event in events:
            if not event.done and event.at <= now:
                event.done = True
                display.note(f"{now / scale:7.1f} s  {event.what}")
                event.act()
        with contextlib.suppress(sqlite3.Error), contextlib.closing(_connect(db)) as conn:
            rows = _releases(conn)
            display.update(now / scale, until / scale, rows, watch.phases)
            over = all(e.done for e in events) and len(rows) == len(plan["releases"]) and all(map(_over, rows))
            if over:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= settle:
                    return
            else:
                quiet_since = None
        if now >= until:
            return
        time.sleep(0.25)


def _read(plan: dict[str, Any], db: Path, revs: list[realrevs.RealRevision], t0: float,
          watch: Watch) -> dict[str, Any]:  # fmt: skip
    scale = plan["time_scale"]
    doc = {"format": TIMELINE_FORMAT, "world": "real", "scenario": plan["name"],
           "devices": int(plan["devices"]), "time_scale": scale, "releases": [], "slots": [],
           "observations": {k: [] for k in OBSERVATIONS}}  # fmt: skip
    by_id = {v: k for k, v in watch.hub_ids.items()}

    def t(wall: float | None) -> float | None:
        return None if wall is None else round((wall - t0) / scale, 3)

    with contextlib.closing(_connect(db)) as conn:
        for row, rel, rev in zip(_releases(conn), plan["releases"], revs[1:], strict=False):
            timed_out = conn.execute("SELECT COUNT(*) FROM targets WHERE release = ? AND timed_out = 1",
                                     (row["name"],)).fetchone()[0]  # fmt: skip
            doc["releases"].append({
                "name": row["name"], "at_s": rel["at_s"], "changed_mb": round(rev.changed_mb, 6),
                "state": row["status"], "admitted": row["admitted"], "succeeded": row["ok"],
                "failed": row["bad"], "timed_out": timed_out,
            })  # fmt: skip
            targets = conn.execute(
                "SELECT t.device, t.position, t.outcome, t.outcome_at, s.rev FROM targets t "
                "LEFT JOIN steps s ON s.device = t.device AND s.release = t.release "
                "WHERE t.release = ? AND t.admitted_at IS NOT NULL ORDER BY t.position",
                (row["name"],),
            ).fetchall()
            for target in targets:
                log = conn.execute(
                    "SELECT at, status, status_msg FROM progress_log WHERE device = ? AND rev = ? ORDER BY rowid",
                    (target["device"], target["rev"]),
                ).fetchall()
                reports = [[t(r["at"]), r["status"], r["status_msg"]] for r in log]
                doc["slots"].append({
                    "release": row["name"], "position": target["position"],
                    "device": by_id.get(target["device"], target["device"]), "reports": reports,
                    "outcome": target["outcome"], "outcome_t": t(target["outcome_at"]),
                })  # fmt: skip
                _observe(doc, reports, rev.changed_mb, 2 if "bsp" in rel["parts"] else 1)
    doc["observations"]["boot_s"] += [round(b / scale, 3) for b in watch.boot_s]
    doc["observations"]["ready_s"] += [round(r / scale, 3) for r in watch.ready_s]
    return doc


def _observe(doc: dict[str, Any], reports: list[list[Any]], mb: float, groups: int) -> None:
    """What one device-update shows of the device's figures, from what the Hub heard: a
    download (DOWNLOADING to INPROGRESS), an in-daemon reboot ("Rebooting" to "Trying new
    revision"), and a container start ("Trying new revision" to TESTING, per group started; the
    harness's own look at containers every POLL_S is too coarse for starts of a tenth of a
    second)."""
    obs = doc["observations"]
    first: dict[str, float] = {}
    for t, status, msg in reports:
        first.setdefault(status, t)
        first.setdefault(msg, t)
    down, inprogress = first.get(Status.DOWNLOADING.value), first.get(Status.INPROGRESS.value)
    if down is not None and inprogress is not None and inprogress > down:
        obs["transfers"].append([round(mb, 6), round(inprogress - down, 3)])
    rebooting, trying = first.get(Msg.REBOOTING), first.get(Msg.TRYING)
    if rebooting is not None and trying is not None and trying > rebooting:
        obs["boot_s"].append(round(trying - rebooting, 3))
    testing = first.get(Status.TESTING.value)
    if trying is not None and testing is not None and testing > trying:
        # the groups whose containers the update restarts start one after the other: a BSP
        # restarts root and app, an app update its own group
        obs["container_start_s"].append(round((testing - trying) / groups, 3))


class JsonLines:
    """The progress display of the parent process, as JSON lines on stdout."""

    def _emit(self, doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    def stage(self, text: str) -> None:
        self._emit({"stage": text})

    def note(self, text: str) -> None:
        self._emit({"note": text})

    def update(self, now: float, until: float, rows: list[sqlite3.Row], phases: dict[str, str]) -> None:
        releases = [{"name": r["name"], "state": r["status"], "fleet": r["fleet"], "admitted": r["admitted"],
                     "succeeded": r["ok"], "failed": r["bad"]} for r in rows]  # fmt: skip
        self._emit({"now": round(now, 2), "until": until, "releases": releases, "phases": dict(phases)})


def main(argv: list[str]) -> int:
    """PLAN WORK OUT: run the plan (JSON) with WORK as the fleet's folder, write the timeline to
    OUT. SIGINT or SIGTERM tear the fleet down before exiting."""
    import sys

    def stop(signum: int, _frame: Any) -> None:
        # only in this process: pyroute2 forks helpers that inherit the handler, and a helper told
        # to stop must die, not unwind this process's stack (and run its fleet's teardown) itself
        if os.getpid() != MAIN_PID:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    plan_path, work, out = (Path(a) for a in argv)
    try:
        doc = run_plan(json.loads(plan_path.read_text()), work, JsonLines())
    except KeyboardInterrupt:
        return 130
    except PvError as exc:
        print(f"pvreal fleet: {exc}", file=sys.stderr)
        return 1
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
