"""Remote mode of the real device (pvreal.device.remote): a real Hub (pvreal.hub, in this process,
on 127.0.0.1) and the real daemon (pvreal.device.daemon) on a temp storage folder, polling it.

Everything the engine is fed comes from real HTTP: the pending step, the objects' metadata, the
downloads (with their resume and their hash check), the outcome of every report. The containers
are the stand-ins of tests/test_interpreter_conformance.py (the real runner over mounts and a
runc that do nothing), so no root is needed and a run takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hubkit import hub_files, write_release

from pvreal.cli import main
from pvreal.crashcheck.standins import MountsOnPaper, NoRunc
from pvreal.device.daemon import Device, DeviceOptions, HubOptions
from pvreal.device.install import install_factory
from pvreal.device.remote import CREDENTIALS
from pvreal.hub.client import operator_for, publish
from pvreal.hub.server import HubFiles, start
from pvreal.storage import Storage
from shared.engine import events as E
from shared.engine.progress import Msg, Progress, Status

WAIT_S = 60.0  # generous: the machine is shared; nothing asserts a duration


class HubServer:
    """The real Hub on its own event loop thread; it can be stopped and started again on the
    same port (a Hub restart, as an outage ends)."""

    def __init__(self, files: HubFiles) -> None:
        self.files = files
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: Any = None
        self.port = 0
        self.url = ""

    def up(self) -> str:
        coro = start(self.files, "127.0.0.1", self.port)
        self.runner, self.url = asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def down(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
            self.runner = None

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def _release_state(folder: Path, tag: str) -> tuple[Path, Path]:
    """The example app revision with real bytes (tests/hubkit.py), its app quick to settle: the
    web container's goal is STARTED (the stand-in runc never signals ready) and the app group has
    no stable window."""
    path, objects = write_release(folder, tag)
    doc = json.loads(path.read_text())
    doc["web/run.json"]["status_goal"] = "STARTED"
    for group in doc["device.json"]["groups"]:
        group.pop("auto_recovery", None)
    path.write_text(json.dumps(doc, sort_keys=True))
    return path, objects


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    """A Hub, a device installed with revision 0 and running in remote mode, and what they said."""

    def __init__(self, root: Path, config: dict[str, str]) -> None:
        self.root = root
        (root / "hub").mkdir()
        self.files = hub_files(root / "hub")
        self.hub = HubServer(self.files)
        self.url = self.hub.up()
        factory, objects = _release_state(root / "v0", "v0")
        self.storage = install_factory(root / "storage", factory, objects, "uboot", "hardened")
        self.release, self.release_objects = _release_state(root / "v1", "v1")
        settings = {"PH_UPDATER_INTERVAL": "0.2", "PV_UPDATER_COMMIT_DELAY": "1",
                    "PV_UPDATER_GOALS_TIMEOUT": "30", **config}  # fmt: skip
        self.device = Device(DeviceOptions(
            storage=root / "storage", network=False, run_dir=root / "run", config=settings,
            hub=HubOptions(self.url, self.files.device_token, nick="remote-1", timeout=5.0),
        ))  # fmt: skip
        runner = self.device.runner
        runner.ops = MountsOnPaper()
        runner.runc = NoRunc()  # type: ignore[assignment]
        assert self.device.hub is not None
        self.link = self.device.hub
        self.client = self.link.client
        # what the device fed its engine, and every progress record the Hub accepted
        self.events: list[E.Event] = []
        self.reported: list[tuple[str, str, str]] = []
        self.ranges: list[str | None] = []
        post = self.link.post

        def recording_post(event: E.Event) -> None:
            self.events.append(event)
            post(event)

        self.link.post = recording_post
        put_progress, headers = self.client.put_progress, self.client._headers

        def recording_put(rev: Any, progress: Any) -> Any:
            answer = put_progress(rev, progress)
            self.reported.append((str(rev), progress["status"], progress["status-msg"]))
            return answer

        def recording_headers(extra: Any) -> Any:
            self.ranges.append((extra or {}).get("Range"))
            return headers(extra)

        self.client.put_progress = recording_put  # type: ignore[method-assign]
        self.client._headers = recording_headers  # type: ignore[method-assign]

    def boot(self) -> None:
        self.device.start()
        assert self.device.wait_booted(WAIT_S)
        self.wait("the device to register", lambda: (self.root / "storage" / CREDENTIALS).exists())

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        try:
            return wait_for(what, check)
        except AssertionError:
            status = {k: self.device.status().get(k) for k in ("phase", "running", "hub", "error",
                                                               "last_failure", "activity")}
            raise AssertionError(f"timed out waiting for {what}: device {status}, reported "
                                 f"{self.reported[-6:]}, events {self.events[-8:]}") from None

    def publish(self) -> None:
        publish(operator_for(self.files.database), self.release, "web-1.1", "all-at-once", {},
                self.release_objects)  # fmt: skip

    def _hub_devices(self) -> list[dict[str, Any]]:
        if self.hub.runner is None:
            return []
        return operator_for(self.files.database).status()["devices"]

    def hub_status(self) -> str | None:
        devices = self._hub_devices()
        return devices[0]["status"] if devices else None

    def disk_progress(self, rev: str) -> Progress | None:
        raw = Storage(self.root / "storage").read_progress(rev)
        return Progress.from_json(raw) if raw is not None else None

    def phase(self) -> str:
        return str(self.device.status().get("phase", ""))

    def close(self) -> None:
        if self.device.running:
            self.device.stop()
        else:
            self.device.storage_lock.release()
        self.hub.close()


@pytest.fixture
def rig_factory(tmp_path: Path):
    rigs: list[Rig] = []

    def make(**config: str) -> Rig:
        rigs.append(Rig(tmp_path, config))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def test_a_release_reaches_the_device_and_the_hub_hears_it_through(rig_factory):
    rig = rig_factory()
    rig.boot()
    creds = rig.storage.root / CREDENTIALS
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert json.loads(creds.read_text())["id"] == rig.client.device
    rig.publish()
    rig.wait("DONE on the Hub", lambda: rig.hub_status() in ("DONE", "UPDATED"))
    final = rig.hub_status()
    # the Hub has it; the test's recorder notes it once the PUT has returned, a moment later
    rig.wait("the record", lambda: rig.reported[-1][1] == final)
    assert rig.device.status()["running"] == "1"
    assert rig.disk_progress("1").status.value == final
    statuses = [status for rev, status, _ in rig.reported if rev == "1"]
    # Pantavisor's words, in its order: queued, metadata, downloads, the try, the test, the end
    assert statuses[0] == Status.QUEUED
    assert Status.DOWNLOADING in statuses and Status.INPROGRESS in statuses
    assert statuses.index(Status.DOWNLOADING) < statuses.index(Status.INPROGRESS)
    assert statuses.index(Status.INPROGRESS) < statuses.index(Status.TESTING) < len(statuses) - 1
    assert statuses[-1] == final
    messages = [msg for _, status, msg in rig.reported if status == Status.INPROGRESS]
    assert Msg.REBOOTING in messages  # the BSP changed: the update was tried after a reboot
    fetched = {e.sha for e in rig.events if isinstance(e, E.ObjectFetched) and e.ok}
    state = json.loads(rig.release.read_text())
    wanted = {v for v in state.values() if isinstance(v, str) and len(v) == 64}
    assert fetched == wanted  # every object came over HTTP (none was shared with revision 0)
    assert wanted <= set(rig.storage.objects.names())
    assert any(isinstance(e, E.HubReached) for e in rig.events)
    # a second start logs in with the stored credentials: no second registration
    rig.device.stop()
    rig.device = Device(DeviceOptions(storage=rig.root / "storage", network=False,
                                      run_dir=rig.root / "run",
                                      hub=HubOptions(rig.url, "wrong token")))  # fmt: skip
    rig.device.runner.ops = MountsOnPaper()
    rig.device.runner.runc = NoRunc()  # type: ignore[assignment]
    rig.device.start()
    assert rig.device.wait_booted(WAIT_S)
    rig.wait("a login", lambda: rig.device.hub.status()["requests"]["ok"] > 0)
    assert len(rig._hub_devices()) == 1


def test_a_cut_download_resumes_with_a_range_request(rig_factory):
    rig = rig_factory()
    cut: dict[str, int] = {}
    download = rig.client.download

    def cut_once(sha: str, folder: Any, *, url: str | None = None, stop_after: int | None = None) -> Path:
        if not cut:  # the first object the daemon fetches is cut after 100 bytes
            cut[sha] = 100
            return download(sha, folder, url=url, stop_after=100)
        return download(sha, folder, url=url, stop_after=stop_after)

    rig.client.download = cut_once  # type: ignore[method-assign]
    rig.boot()
    rig.publish()
    rig.wait("DONE on the Hub", lambda: rig.hub_status() in ("DONE", "UPDATED"))
    (sha,) = cut
    failed = [e for e in rig.events if isinstance(e, E.ObjectFetched) and e.sha == sha]
    assert failed[0] == E.ObjectFetched(sha, ok=False) and failed[-1] == E.ObjectFetched(sha)
    assert "bytes=100-" in rig.ranges  # the retry asked only for what was missing
    assert rig.storage.objects.is_valid(sha)
    # the engine's retry rule, in Pantavisor's words: a second download round was counted
    assert any(msg == Msg.download_retry(2, 10) for _, _, msg in rig.reported)


def test_hub_lost_during_testing_fails_the_update(rig_factory):
    rig = rig_factory(PV_UPDATER_COMMIT_DELAY="60")
    rig.boot()
    rig.publish()
    rig.wait("TESTING", lambda: rig.phase() == "TESTING")
    rig.hub.down()
    # the engine's rule (a failed request while TESTING fails the update) rolls the device back
    rig.wait("the rollback", lambda: rig.device.status()["running"] == "0"
             and (p := rig.disk_progress("1")) is not None and p.status is Status.ERROR)
    assert rig.disk_progress("1").status_msg == Msg.HUB_NOT_STABLE
    assert any(isinstance(e, E.HubRequestFailed) for e in rig.events)
    assert rig.device.running  # a Hub that is down crashes nothing
    rig.hub.up()  # back on the same port: the report it missed reaches it
    rig.wait("ERROR on the Hub", lambda: rig.hub_status() == Status.ERROR)


def test_a_corrupt_object_is_retried_then_the_update_is_refused(rig_factory):
    rig = rig_factory(PV_REVISION_RETRIES="3")
    rig.boot()
    rig.publish()
    state = json.loads(rig.release.read_text())
    corrupt = state["web/root.squashfs"]
    hub_copy = Path(f"{rig.files.database}.objects") / corrupt
    hub_copy.write_bytes(b"not what the name says\n" * 64)  # the Hub serves bad bytes
    rig.wait("WONTGO on the Hub", lambda: rig.hub_status() == Status.WONTGO)
    bad = [e for e in rig.events if isinstance(e, E.ObjectFetched) and e.sha == corrupt]
    assert bad and all(e == E.ObjectFetched(corrupt, ok=False, hash_mismatch=True) for e in bad)
    assert len(bad) > 1  # retried, as many rounds as PV_REVISION_RETRIES allows
    assert rig.disk_progress("1").status_msg == Msg.MAX_DOWNLOAD_RETRIES
    assert corrupt not in rig.storage.objects.names()
    assert not rig.storage.objects.partial_names()
    assert rig.device.status()["running"] == "0"


def test_the_command_line_wants_a_token_until_the_device_has_credentials(tmp_path, capsys):
    storage = tmp_path / "storage"
    storage.mkdir()
    assert main(["device", "run", "--storage", str(storage), "--hub", "http://127.0.0.1:1"]) == 1
    assert "--hub needs --token" in capsys.readouterr().err
    assert main(["device", "run", "--storage", str(storage), "--token", "T"]) == 1
    assert "go with --hub" in capsys.readouterr().err
