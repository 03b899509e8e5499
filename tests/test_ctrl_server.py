"""pv-ctrl over a Unix socket against a stand-in device (no root, no containers): routing, status
codes, role restriction, socket mode, and that refused uploads leave nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pvreal.ctrl.api import CtrlApi
from pvreal.ctrl.client import CtrlClient
from pvreal.ctrl.server import serve
from pvreal.storage import Storage
from shared.engine.commands import CtrlReply
from shared.engine.config import Config
from shared.engine.ctrl import signal_decision
from shared.engine.events import ContainerReady, CtrlCommand, LocalStepUploaded, ObjectPut
from shared.state import StatusGoal


class StandInDevice:
    """What CtrlApi needs of a Device; answers like the engine for the events under test."""

    def __init__(
        self, root: Path, free: int = 1 << 30, busy: bool = False, config: Config | None = None
    ):
        self.config = config or Config()
        self.storage = Storage(
            root, reserved_percent=self.config.gc_reserved, statfs=lambda _p: (1 << 31, free)
        )
        self.storage.init_layout()
        self.options = SimpleNamespace(bootloader="uboot", ordering="hardened")
        self.executor = SimpleNamespace(forget_state=lambda rev: None)
        self.booted_rev = "0"
        self.busy = busy
        self.events: list = []
        self.containers = {"app": {"name": "app", "status_goal": "READY", "status": "STARTED"}}

    def submit(self, event):
        self.events.append(event)
        if isinstance(event, LocalStepUploaded) and event.error:
            return CtrlReply(422, None, event.error)
        if isinstance(event, CtrlCommand) and self.busy:
            return CtrlReply(503, 600, "an update is in progress")
        if isinstance(event, ContainerReady):  # the engine's rule (Updater.signal_decision)
            goal = self.containers.get(event.name, {}).get("status_goal")
            d = signal_decision(event.name, StatusGoal(goal) if goal else None)
            return CtrlReply(d.status, d.retry_after, d.reason)
        return CtrlReply(200)

    def post(self, event):
        self.events.append(event)

    def status(self):
        return {"running": "0", "containers": self.containers}


@contextlib.contextmanager
def stand_in_server(tmp_path: Path) -> Iterator[tuple[StandInDevice, CtrlClient, Path]]:
    """A StandInDevice on tmp_path/storage served at tmp_path/pv-ctrl."""
    device = StandInDevice(tmp_path / "storage")
    server = serve(tmp_path / "pv-ctrl", CtrlApi(device))
    try:
        yield device, CtrlClient(tmp_path / "pv-ctrl"), tmp_path
    finally:
        server.close()


@pytest.fixture
def ctrl(tmp_path):
    with stand_in_server(tmp_path) as served:
        yield served


def test_socket_is_private(ctrl):
    _, client, tmp = ctrl
    assert stat.S_IMODE((tmp / "pv-ctrl").stat().st_mode) == 0o600
    assert client.checked("GET", "/buildinfo").json()["backend"] == "pvreal"


def test_object_upload_is_hash_checked_and_idempotent(ctrl):
    device, client, _ = ctrl
    data = b"an object"
    sha = hashlib.sha256(data).hexdigest()
    assert client.request("PUT", f"/objects/{sha}", data).json()["stored"] is True
    assert client.request("PUT", f"/objects/{sha}", data).json()["stored"] is False
    assert ObjectPut(sha) in device.events
    other = hashlib.sha256(b"x").hexdigest()
    answer = client.request("PUT", f"/objects/{other}", data)
    assert answer.status == 422 and "hashes to" in answer.error
    assert device.storage.objects.names() == [sha]
    assert device.storage.objects.partial_names() == []
    assert client.request("PUT", "/objects/not-a-sha", data).status == 422


def test_upload_whose_partial_file_the_device_removed_is_a_503(ctrl, monkeypatch):
    """A boot (or GC) that removes `<sha>.tmp` mid-upload is not a server error: 503 and
    Retry-After, so the client sends it again (found by the fuzz campaign as a 500)."""
    device, client, _ = ctrl
    blob = b"object bytes"
    sha = hashlib.sha256(blob).hexdigest()

    def removed(name):
        device.storage.objects.tmp_path(name).unlink()
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(device.storage.objects, "commit_tmp", removed)
    answer = client.request("PUT", f"/objects/{sha}", blob)
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert not device.storage.objects.has(sha)


def test_truncated_upload_is_refused_and_removed(ctrl):
    device, _, tmp = ctrl
    data = b"short"
    sha = hashlib.sha256(data).hexdigest()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(tmp / "pv-ctrl"))
        s.sendall(f"PUT /objects/{sha} HTTP/1.1\r\nContent-Length: 50\r\n\r\n".encode() + data)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert device.storage.objects.names() == [] and device.storage.objects.partial_names() == []


def test_no_space_is_507(tmp_path):
    device = StandInDevice(tmp_path / "storage", free=1000)
    server = serve(tmp_path / "s", CtrlApi(device))
    try:
        data = b"y" * 4096
        answer = CtrlClient(tmp_path / "s").request(
            "PUT", f"/objects/{hashlib.sha256(data).hexdigest()}", data
        )
        assert answer.status == 507
    finally:
        server.close()


def test_507_uses_the_configured_reserve(tmp_path):
    """1 GiB free of 2 GiB: fits with the default 5 % reserve, not with PV_STORAGE_GC_RESERVED=50
    (the reserve then takes all the free space)."""
    data = b"z" * 4096
    path = f"/objects/{hashlib.sha256(data).hexdigest()}"
    for reserved, status in ((None, 200), (50, 507)):
        config = Config.from_mapping({"PV_STORAGE_GC_RESERVED": str(reserved)}) if reserved else None
        device = StandInDevice(tmp_path / f"storage{reserved}", config=config)
        server = serve(tmp_path / f"s{reserved}", CtrlApi(device))
        try:
            assert CtrlClient(tmp_path / f"s{reserved}").request("PUT", path, data).status == status
        finally:
            server.close()
    assert device.storage.space().as_meta()["reserved"] == 1 << 30


def test_bad_state_gets_422_with_the_key(ctrl):
    device, client, _ = ctrl
    answer = client.put_step("locals/x", json.dumps({"#spec": "pantavisor-service-system@1",
                                                     "../up": {}}).encode())
    assert answer.status == 422 and "../up" in answer.error
    assert client.put_step("locals/a%2Fb", b"{}").status in (400, 404)
    assert client.request("PUT", "/steps/locals/" + "n" * 80, b"{}").status == 400


def test_busy_commands_carry_retry_after(tmp_path):
    device = StandInDevice(tmp_path / "storage", busy=True)
    server = serve(tmp_path / "s", CtrlApi(device))
    try:
        answer = CtrlClient(tmp_path / "s").command("REBOOT_DEVICE")
        assert answer.status == 503 and answer.headers["Retry-After"] == "600"
        assert CtrlClient(tmp_path / "s").request("POST", "/commands", b"[1]").status == 400
    finally:
        server.close()


def test_nothing_to_do_is_a_bare_204(tmp_path):
    """GO_REMOTE on a remote device changes nothing: the engine answers 204 (ctrl_cmd.c
    pv_ctrl_cmd_add), and the socket sends it with no body and no Content-Length (RFC 9110)."""
    from enginekit import idle_engine

    device = StandInDevice(tmp_path / "storage")
    engine = idle_engine()
    device.submit = lambda event: engine.handle(event)[0]  # the engine's own CtrlReply
    server = serve(tmp_path / "s", CtrlApi(device))
    try:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(tmp_path / "s"))
            body = b'{"op": "GO_REMOTE", "payload": ""}'
            raw.sendall(b"POST /commands HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 ")
        assert b"content-length" not in head.lower() and rest == b""
    finally:
        server.close()


def test_container_socket_only_signals(tmp_path):
    device = StandInDevice(tmp_path / "storage")
    server = serve(tmp_path / "app.sock", CtrlApi(device), container="app", mgmt=False)
    try:
        client = CtrlClient(tmp_path / "app.sock")
        assert client.request("GET", "/containers").status == 403
        assert client.request("POST", "/commands", b'{"op":"RUN_GC"}').status == 403
        ok = client.request("POST", "/signal", b'{"type":"ready","payload":""}')
        assert ok.status == 200
        device.containers["app"]["status_goal"] = "STARTED"
        refused = client.request("POST", "/signal", b'{"type":"ready","payload":""}')
        assert refused.status == 403 and "not READY" in refused.error
        device.containers.clear()
        assert client.request("POST", "/signal", b'{"type":"ready"}').status == 404
        assert client.request("POST", "/signal", b'{"type":"alive"}').status == 400
    finally:
        server.close()


def test_unknown_endpoint_is_404(ctrl):
    _, client, _ = ctrl
    assert client.request("GET", "/nowhere").status == 404
    assert client.request("GET", "/steps/0/progress").status == 404


def test_device_asks_its_engine(tmp_path):
    """The daemon's configured reserve reaches its storage; a second queued command and a ready
    signal are answered by the engine's own rule (inputs included: PV_CONTROL_REMOTE=0)."""
    from concurrent.futures import Future

    from enginekit import idle_engine

    from pvreal.device.daemon import Device, DeviceOptions, _Item

    config = {"PV_STORAGE_GC_RESERVED": "30", "PV_CONTROL_REMOTE": "0"}
    device = Device(
        DeviceOptions(storage=tmp_path / "s", network=False, run_dir=tmp_path / "run",
                      config=config)
    )
    assert device.storage.reserved_percent == 30
    device.updater = idle_engine(**config)
    assert device._queued_decision("GO_REMOTE").status == 409  # not "queued": the rule first
    assert device._queued_decision("RUN_GC").status == 503
    reply: Future[CtrlReply] = Future()
    device._handle_item(_Item(ContainerReady("nobody"), reply))
    assert reply.result(0).status == 404
