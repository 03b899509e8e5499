"""One command script, three interpreters: the crashcheck device (pvsim.memdevice), the fleet
model (pvsim.pantavisor) and the real executor (pvreal.device.executor with its container runner,
on a temp dir, with mounts and runc that do nothing, and its Hub client, pvreal.device.remote,
talking to a Hub answering in-process). They must feed back the same events and leave the same
disk (shared.engine.driver states the contract).

Timing is each backend's own, so answers are compared per command, and within a StartContainers
per container (D3: each container's script in order; containers are independent).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pytest

from pvreal.crashcheck.standins import MountsOnPaper, NoRunc
from pvreal.device.clock import Timers
from pvreal.device.containers import ContainerRunner
from pvreal.device.executor import Executor
from pvreal.device.latch import boot_files, set_env
from pvreal.device.remote import HubLink
from pvreal.hub.client import HubClientError, ObjectHashMismatch
from pvreal.storage import Storage
from pvsim.device import DeviceRun
from pvsim.memdevice import Behaviour, MemDevice, MemDisk
from pvsim.pantavisor import DeviceBrain, PantavisorModel
from pvsim.simdisk import SimDisk
from pvsim.testing import scenario
from pvsim.world import World
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.bootloader import Latch
from shared.engine.config import Config
from shared.engine.driver import ANSWERS, StartOutcome, container_events
from shared.engine.progress import Msg, Progress, Status
from shared.state import State, parse_state

# ----------------------------------------------------------------------------- revisions


def _blob(text: str) -> tuple[str, bytes]:
    data = text.encode()
    return hashlib.sha256(data).hexdigest(), data


BLOBS: dict[str, bytes] = {}


def _object(text: str) -> str:
    sha, data = _blob(text)
    BLOBS[sha] = data
    return sha


def _container(name: str, group: str, goal: str) -> dict[str, Any]:
    return {
        "#spec": "service-manifest-run@1",
        "config": "lxc.container.conf",
        "group": group,
        "name": name,
        "restart_policy": "container",
        "root-volume": "root.squashfs",
        "status_goal": goal,
        "storage": {"lxc-overlay": {"persistence": "boot"}},
        "type": "lxc",
        "volumes": [],
    }


def revision(tag: str) -> State:
    """BSP plus three containers, one per status goal."""
    groups = [{"name": "app", "status_goal": "STARTED", "restart_policy": "container", "timeout": 30}]
    doc: dict[str, Any] = {
        "#spec": "pantavisor-service-system@1",
        "bsp/run.json": {"linux": "kernel.img", "initrd": "pantavisor", "addons": []},
        "bsp/kernel.img": _object("kernel " + tag),
        "bsp/pantavisor": _object("pantavisor"),
        "device.json": {"groups": groups},
    }
    for name, goal in (("data", "MOUNTED"), ("web", "STARTED"), ("ui", "READY")):
        doc[f"{name}/run.json"] = _container(name, "app", goal)
        doc[f"{name}/root.squashfs"] = _object(f"{name} {tag}")
        doc[f"{name}/lxc.container.conf"] = _object(f"{name} conf")
    return parse_state(doc, source=f"conformance revision {tag}")


OLD, NEW, DOOMED = revision("r0"), revision("r1"), revision("r2")
FACTORY = Progress.make(Status.DONE, Msg.FACTORY)
PASS_TIME = "time passes"

# The script: an update installed and committed, containers started and stopped, timers re-armed
# and cancelled, GC, a deleted upload. Everything a backend without a Hub is given.
SCRIPT: list[C.Command | str] = [
    C.WriteTrail("1", NEW),
    C.PersistProgress("1", Progress.make(Status.INPROGRESS, Msg.TRANSITIONING)),
    C.LinkObjects("1", NEW),
    C.SetBootEnv(pv_try="1"),
    C.StartContainers("0", ("data", "web", "ui", "ghost")),
    C.ArmTimer("commit", 5.0),
    C.ArmTimer("goal:app", 30.0),
    C.ArmTimer("commit", 10.0),
    C.CancelTimer("goal:app"),
    C.StopContainers(("ui",)),
    PASS_TIME,
    C.SwitchRevision("1"),
    C.PersistProgress("1", Progress.make(Status.TESTING, Msg.TESTING_REBOOT)),
    C.SetBootEnv(pv_rev="1", pv_try=""),
    C.PersistProgress("1", Progress.make(Status.DONE, Msg.DONE)),
    C.WriteDoneMarker("1"),
    C.WriteTrail("2", DOOMED),
    C.DeleteRevision("2"),
    C.RunGc(frozenset({"1"})),
    C.ArmTimer("network", 1.0),
    PASS_TIME,
]

# Progress records for revisions whose state JSON was never written (a queued step, a step refused
# for its signature or format): they are on the disk like any trail, and GC removes them.
RECORDS_ONLY: list[C.Command | str] = [
    C.PersistProgress("3", Progress.make(Status.QUEUED, Msg.retried(1, 10))),
    C.PersistProgress("4", Progress.make(Status.WONTGO, Msg.SIG_FAILED)),
    C.PersistProgress("locals/bad", Progress.make(Status.WONTGO, Msg.BAD_FORMAT)),
    C.RunGc(frozenset({"0", "4"})),
]
# A remote update's Hub commands: the new objects' metadata, their downloads, a report (while the
# engine does not watch the Hub, so its outcome is not fed: D7).
HUB_OBJECTS = sorted(NEW.object_shas() - OLD.object_shas())
HUB_SCRIPT: list[C.Command | str] = [
    C.FetchMetadata("1", frozenset(HUB_OBJECTS)),
    *(C.FetchObject("1", sha, len(BLOBS[sha])) for sha in HUB_OBJECTS),
    C.ReportProgress("1", Progress.make(Status.DOWNLOADING, Msg.download_retry(1, 10))),
]
SCRIPTS = {"update": SCRIPT, "records only": RECORDS_ONLY, "hub": HUB_SCRIPT}


# ----------------------------------------------------------------------------- the backends


class Backend(Protocol):
    def execute(self, command: C.Command) -> list[E.Event]: ...
    def pass_time(self) -> list[E.Event]: ...
    def disk(self) -> tuple[Any, ...]: ...


def _disk(pv_rev: str, pv_try: str, trails: Any, objects: Any) -> tuple[Any, ...]:
    return (
        pv_rev,
        pv_try,
        {
            rev: (t.state.digest if t.state is not None else None, t.progress, t.done)
            for rev, t in trails.items()
        },
        frozenset(objects),
    )


def _start_pool() -> frozenset[str]:
    return OLD.object_shas() | NEW.object_shas()


class Crashcheck:
    def __init__(self) -> None:
        trails = {"0": E.TrailView(OLD, FACTORY, True)}
        self.device = MemDevice(MemDisk.settled(trails, _start_pool(), "0"), Config(), Behaviour())

    def execute(self, command: C.Command) -> list[E.Event]:
        self.device.execute(command)
        return self.device.take_answers()

    def pass_time(self) -> list[E.Event]:
        return self.device.take_answers(pass_time=True)

    def disk(self) -> tuple[Any, ...]:
        d = self.device.storage
        return _disk(d.pv_rev, d.pv_try, d.trails, d.objects)


class FleetModel:
    def __init__(self) -> None:
        world = World(scenario(), PantavisorModel)
        self.model = world.model
        self.run = DeviceRun(world, 0, None)  # type: ignore[arg-type]
        disk = SimDisk("0", "", Latch(), {"0": E.TrailView(OLD, FACTORY, True)}, _start_pool())
        # no engine; where a Hub request's outcome would be fed, the engine does not watch the Hub
        engine = SimpleNamespace(watches_hub=False)
        self.brain = DeviceBrain(engine, disk, "0")  # type: ignore[arg-type]

    def execute(self, command: C.Command) -> list[E.Event]:
        return self.model.interpret(self.run, self.brain, [command])

    def pass_time(self) -> list[E.Event]:
        return self.model.pass_time(self.brain)

    def disk(self) -> tuple[Any, ...]:
        d = self.brain.disk
        return _disk(d.pv_rev, d.pv_try, d.trails, d.objects)


class InProcessHub:
    """What pvreal.hub.client.DeviceClient asks a Hub, answered in-process: the conformance
    blobs (any in `corrupt` served with other bytes), or no answer at all when `down`."""

    def __init__(self, corrupt: frozenset[str] = frozenset(), down: bool = False) -> None:
        self.device, self.token = "conformance", "session"  # registered and logged in
        self.corrupt, self.down = corrupt, down
        self.progress: dict[str, Any] = {}

    def _reach(self) -> None:
        if self.down:
            raise HubClientError("Hub not reachable: connection refused")

    def step_objects(self, rev: str) -> list[dict[str, Any]]:
        self._reach()
        return [{"sha256sum": sha, "size": len(data), "signed-geturl": f"/objects/{sha}/blob"}
                for sha, data in BLOBS.items()]  # fmt: skip

    def download(self, sha: str, folder: Path, *, url: str | None = None) -> Path:
        self._reach()
        data = b"corrupted" if sha in self.corrupt else BLOBS[sha]
        if hashlib.sha256(data).hexdigest() != sha:
            raise ObjectHashMismatch(f"object {sha}: downloaded bytes do not match their name")
        (Path(folder) / sha).write_bytes(data)
        return Path(folder) / sha

    def put_progress(self, rev: str, progress: Any) -> dict[str, Any]:
        self._reach()
        self.progress[rev] = progress
        return {}


class RealExecutor:
    """The executor and the real container runner (pvreal.device.containers), on a temp dir, with
    mounts and runc that do nothing. A container whose goal is READY signals ready once it runs,
    as its process would through pv-ctrl's /signal. Hub commands go through the device's Hub
    client (pvreal.device.remote) to an `InProcessHub`; its answers are waited for."""

    def __init__(self, root: Path, hub: InProcessHub | None = None) -> None:
        self.now = 0.0
        self.storage = Storage(root / "storage")
        self.storage.init_layout()
        self.files = boot_files(self.storage.root / "boot", "uboot", "hardened")
        for sha, data in BLOBS.items():
            if sha in _start_pool():
                self.storage.objects.put_bytes(sha, data)
        self.storage.write_state("0", OLD.entries)
        self.storage.link_trail("0", OLD.entries)
        self.storage.write_progress("0", FACTORY.to_json())
        self.storage.mark_done("0")
        set_env(self.files, "0", None)
        self.timers = Timers(now=lambda: self.now)
        self.emitted: list[E.Event] = []
        self.runner = ContainerRunner(
            self.storage, root / "run", "pvconf", self.emitted.append, mount_ops=MountsOnPaper()
        )
        self.runner.runc = NoRunc()  # type: ignore[assignment]
        self.hub = HubLink("http://hub.invalid", "", self.storage, Config(), self.emitted.append,
                           watching=lambda: False)  # fmt: skip
        self.hub.client = hub or InProcessHub()  # type: ignore[assignment]
        self.hub.start()
        self.executor = Executor(self.storage, self.files, self.timers, self.runner, Config(),
                                 self.hub.execute)  # fmt: skip

    def execute(self, command: C.Command) -> list[E.Event]:
        events = self.executor.execute(command)
        assert self.hub.wait_idle(30.0)
        for event in list(events):
            if isinstance(event, E.ContainerStarted) and isinstance(command, C.StartContainers):
                spec = self.executor.load_state(command.rev)[0].container(event.name)  # type: ignore[union-attr]
                if spec is not None and str(spec.status_goal) == "READY":
                    events.append(E.ContainerReady(event.name))  # the container's /signal
        return events + self._take_emitted()

    def _take_emitted(self) -> list[E.Event]:
        emitted, self.emitted[:] = list(self.emitted), []
        return emitted

    def pass_time(self) -> list[E.Event]:
        self.now += 3600.0
        return [E.TimerFired(name) for name in self.timers.due()] + self._take_emitted()

    def disk(self) -> tuple[Any, ...]:
        env = self.files.env.load()
        view = self.executor.disk_view(env.get("pv_rev", ""), env)
        return _disk(view.pv_rev, view.pv_try, view.trails, self.storage.objects.names())


# ----------------------------------------------------------------------------- the comparison


def _normal(command: C.Command | str, events: list[E.Event]) -> list[Any]:
    """Backend figures left out (GC's reclaimed bytes and storage), containers one by one."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, E.GcDone):
            out.append(("GcDone", event.removed_revisions, event.removed_objects))
        elif isinstance(event, E.MetadataReceived):  # sizes and storage: the backend's figures
            out.append(("MetadataReceived", event.rev, frozenset(event.sizes)))
        else:
            out.append(event)
    if isinstance(command, C.StartContainers):
        order = {name: i for i, name in enumerate(command.names)}
        out.sort(key=lambda e: order[e.name])  # stable: each container's own order is kept
    return out


def transcript(backend: Backend, script: list[C.Command | str]) -> tuple[list[Any], tuple[Any, ...]]:
    answers = []
    for step in script:
        if step == PASS_TIME:
            answers.append((step, _normal(step, backend.pass_time())))
        else:
            assert isinstance(step, C.Command)
            answers.append((type(step).__name__, _normal(step, backend.execute(step))))
    return answers, backend.disk()


@pytest.fixture(name="transcripts", params=list(SCRIPTS))
def transcripts_fixture(request, tmp_path: Path) -> dict[str, tuple[list[Any], tuple[Any, ...]]]:
    script = SCRIPTS[request.param]
    real = RealExecutor(tmp_path)
    try:
        return {
            "crashcheck device": transcript(Crashcheck(), script),
            "fleet model": transcript(FleetModel(), script),
            "real executor": transcript(real, script),
        }
    finally:
        real.hub.close()


def test_the_script_means_what_it_says(tmp_path: Path):
    """The expected answers, spelt out once (so that three equal wrong transcripts fail too)."""
    answers, disk = transcript(Crashcheck(), SCRIPT)
    by_step = dict(enumerate(answers))
    start = by_step[4][1]
    assert start == [
        E.ContainerMounted("data"),
        E.ContainerStarted("web"),
        E.ContainerStarted("ui"),
        E.ContainerReady("ui"),
        E.ContainerExited("ghost", 0.0, -1),
    ]
    assert by_step[9][1] == [E.ContainersStopped(("ui",))]
    assert by_step[10][1] == [E.TimerFired("commit")]  # re-armed once, the goal timer cancelled
    gc_removed = OLD.object_shas() - NEW.object_shas()
    assert by_step[18][1] == [("GcDone", frozenset({"0"}), gc_removed)]
    assert by_step[20][1] == [E.TimerFired("network")]
    pv_rev, pv_try, trails, objects = disk
    assert (pv_rev, pv_try) == ("1", "")
    assert trails == {"1": (NEW.digest, Progress.make(Status.DONE, Msg.DONE), True)}
    assert objects == NEW.object_shas()


@pytest.mark.parametrize("backend", ["fleet model", "real executor"])
def test_backends_answer_and_store_alike(transcripts, backend):
    reference_answers, reference_disk = transcripts["crashcheck device"]
    answers, disk = transcripts[backend]
    for (step, want), (_, got) in zip(reference_answers, answers, strict=True):
        assert got == want, f"{backend}, {step}"
    assert disk == reference_disk


def test_hub_answers_mean_what_they_say(transcripts, request):
    if request.node.callspec.params["transcripts"] != "hub":
        return
    answers, disk = transcripts["crashcheck device"]
    assert answers[0][1] == [("MetadataReceived", "1", frozenset(HUB_OBJECTS))]
    assert [a for _, a in answers[1:-1]] == [[E.ObjectFetched(sha)] for sha in HUB_OBJECTS]
    assert answers[-1][1] == []  # a report's outcome, while the engine does not watch the Hub
    assert disk[3] == _start_pool()


def test_a_corrupt_object_is_answered_alike(tmp_path: Path):
    """The Hub serves other bytes than the name says: a hash mismatch, the object not in the pool."""
    bad = HUB_OBJECTS[0]
    fetch = C.FetchObject("1", bad)
    reference = MemDevice(MemDisk.settled({"0": E.TrailView(OLD, FACTORY, True)}, OLD.object_shas(),
                                          "0"), Config(), Behaviour(corrupt_objects=frozenset({bad})))
    reference.execute(fetch)
    real = RealExecutor(tmp_path, InProcessHub(corrupt=frozenset({bad})))
    real.storage.objects.path(bad).unlink()  # the pool holds what revision 0 names, as above
    try:
        assert real.execute(fetch) == reference.take_answers()
        assert real.execute(fetch) == [E.ObjectFetched(bad, ok=False, hash_mismatch=True)]
    finally:
        real.hub.close()
    assert bad not in real.storage.objects.names() and not real.storage.objects.partial_names()


def test_a_hub_that_does_not_answer_is_a_failure_event(tmp_path: Path):
    """No answer is an event the contract allows, never an exception in the device."""
    real = RealExecutor(tmp_path, InProcessHub(down=True))
    real.hub.watching = lambda: True  # the engine watches the Hub: the report's outcome is fed
    try:
        script = [C.FetchMetadata("1", frozenset(HUB_OBJECTS)), C.FetchObject("1", HUB_OBJECTS[0]),
                  C.ReportProgress("1", Progress.make(Status.TESTING, Msg.TESTING_REBOOT))]
        answers = [real.execute(command) for command in script]
    finally:
        real.hub.close()
    assert answers == [[E.MetadataFailed("1")], [E.ObjectFetched(HUB_OBJECTS[0], ok=False)],
                       [E.HubRequestFailed()]]  # fmt: skip
    for command, events in zip(script, answers, strict=True):
        assert all(type(e) in ANSWERS[type(command)] for e in events)


def test_records_without_a_state_are_on_every_disk(tmp_path: Path):
    """A progress record alone makes a trail: the real disk lists it and real GC removes it."""
    real = RealExecutor(tmp_path)
    answers, disk = transcript(real, RECORDS_ONLY)
    real.hub.close()
    unlinked = NEW.object_shas() - OLD.object_shas()  # in the pool, linked by no trail
    assert answers[-1][1] == [("GcDone", frozenset({"3", "locals/bad"}), unlinked)]
    _, _, trails, _ = disk
    assert trails["4"] == (None, Progress.make(Status.WONTGO, Msg.SIG_FAILED), False)
    assert set(trails) == {"0", "4"}
    assert not real.storage.trail_dir("3").exists()


def test_answers_are_the_ones_the_contract_allows(transcripts, request):
    script = SCRIPTS[request.node.callspec.params["transcripts"]]
    for answers, _ in transcripts.values():
        for (step, events), command in zip(answers, script, strict=True):
            if isinstance(command, C.Command):
                allowed = ANSWERS[type(command)]
                assert all(type(e) in allowed or isinstance(e, tuple) for e in events), step


@pytest.mark.parametrize(
    ("goal", "outcome", "script"),
    [
        ("MOUNTED", StartOutcome.OK, (E.ContainerMounted,)),
        ("MOUNTED", StartOutcome.CRASHES, (E.ContainerMounted,)),  # never runs, cannot crash
        ("STARTED", StartOutcome.OK, (E.ContainerStarted,)),
        ("READY", StartOutcome.OK, (E.ContainerStarted, E.ContainerReady)),
        ("READY", StartOutcome.NEVER_READY, (E.ContainerStarted,)),
        ("READY", StartOutcome.CRASHES, (E.ContainerStarted, E.ContainerExited)),
        ("STARTED", StartOutcome.FAILS, (E.ContainerExited,)),
    ],
)
def test_container_script(goal, outcome, script):
    assert container_events(goal, outcome) == script
