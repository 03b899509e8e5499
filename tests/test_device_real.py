"""The real device end to end, as root: factory boot, container-only update, try-boot commit,
rollbacks, GC, bad input over the socket. Each test runs its own daemon on its own storage
(names derive from the storage path) and checks that no runc container, netns or mount is left.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import stat
import tarfile
import time
from pathlib import Path

import pytest
from devicekit import EXIT_AT_ONCE_INIT, Daemon, Revisions, need_device, nsenter_net, tree_digest

from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.objectstore import sha256_file
from pvreal.storage import Storage

pytestmark = pytest.mark.xdist_group("real")


@pytest.fixture(scope="module")
def revs(tmp_path_factory) -> Revisions:
    need_device()
    return Revisions(tmp_path_factory.mktemp("revs"), group_timeout=3)


@pytest.fixture
def device(tmp_path, revs):
    made: list[Daemon] = []

    def make(state: Path, **kw) -> Daemon:
        d = Daemon(tmp_path / f"dev{len(made)}", **kw)
        made.append(d)
        d.init(state, revs.objects)
        d.start()
        return d

    yield make
    for d in made:
        d.stop()
        assert d.leftovers() == [], d.tail()


def upload(d: Daemon, state: Path, rev: str, objects: Path) -> None:
    doc = json.loads(state.read_text())
    for key, value in doc.items():
        if isinstance(value, str) and len(value) == 64 and not key.startswith("#"):
            answer = d.client.put_object(value, objects / value)
            assert answer.ok, answer.error
    answer = d.client.put_step(rev, state.read_bytes())
    assert answer.ok, answer.error


def pids(d: Daemon) -> dict[str, int]:
    return {c["name"]: c["pid"] for c in d.client.containers()}


def test_factory_boot_two_containers_with_network(device, revs):
    d = device(revs.state("f0", {"app1": {"tag": "a1"}, "app2": {"tag": "b1"}}))
    status = d.status()
    assert status["running"] == "0" and status["pv_rev"] == "0"
    assert d.client.progress("0")["status-msg"] == "Factory revision"
    containers = {c["name"]: c for c in d.client.containers()}
    assert {n: c["status"] for n, c in containers.items()} == {"app1": "STARTED", "app2": "STARTED"}
    a1, a2 = containers["app1"], containers["app2"]
    assert a1["address"] != a2["address"]
    for c in (a1, a2):
        shown = nsenter_net(c["pid"], "ip", "-4", "addr", "show", "eth0").stdout
        assert c["address"] in shown
        # its own netns, not the host's
        assert Path(f"/proc/{c['pid']}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
        sock = Path(f"/proc/{c['pid']}/root/pantavisor/pv-ctrl")
        assert stat.S_ISSOCK(sock.stat().st_mode)
    ping = nsenter_net(a1["pid"], "busybox", "ping", "-c", "1", "-W", "3", a2["address"].split("/")[0])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # a container's own socket: /signal only (no mgmt role); the host socket is 0600
    own = CtrlClient(d.ctrl_dir / "app1.sock")
    assert own.request("GET", "/containers").status == 403
    assert own.request("POST", "/signal", b'{"type":"ready","payload":""}').status == 403
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600
    info = d.client.checked("GET", "/buildinfo").json()
    assert info["backend"] == "pvreal"


def test_container_only_update_then_reboot_commits_then_gc(device, revs):
    s0 = revs.state("g0", {"app1": {"tag": "a1"}, "app2": {"tag": "b1"}})
    s1 = revs.state("g1", {"app1": {"tag": "a1"}, "app2": {"tag": "b2"}})
    d = device(s0)
    before = pids(d)
    upload(d, s1, "locals/u1", revs.objects)
    assert d.client.progress("locals/u1")["status-msg"] == "Update ready to be run"
    assert d.client.command("LOCAL_RUN", "locals/u1").ok
    # while the update runs, another LOCAL_RUN is refused with Retry-After
    busy = d.client.command("LOCAL_RUN", "locals/u1")
    assert busy.status in (200, 503)
    record = d.client.wait("locals/u1", ("UPDATED",), timeout=30)
    assert record["status"] == "UPDATED", (record, d.tail())
    after = pids(d)
    assert after["app1"] == before["app1"]  # untouched container kept running
    assert after["app2"] != before["app2"]
    status = d.status()
    assert status["boots"] == 1 and status["pv_rev"] == "0" and status["pv_try"] == "locals/u1"
    # a reboot try-boots the UPDATED revision and commits it
    assert d.client.command("REBOOT_DEVICE").ok
    record = d.client.wait("locals/u1", ("DONE",), timeout=30)
    assert record["status"] == "DONE", (record, d.tail())
    status = d.wait_settled()
    assert status["pv_rev"] == "locals/u1" and status["running"] == "locals/u1"
    assert status["boots"] == 2
    # GC: revision 0 goes, with the object only it used; the running one is intact
    storage = Storage(d.storage)
    old_app2 = json.loads(s0.read_text())["app2/root.squashfs"]
    assert storage.objects.has(old_app2)
    assert d.client.command("RUN_GC").ok
    for _ in range(200):  # the answer comes before the collection itself
        gc = d.wait_settled()["last_gc"]
        if gc is not None:
            break
    assert gc is not None and "0" in gc["removed_revisions"] and gc["reclaimed"] > 0
    assert not storage.objects.has(old_app2)
    assert storage.revisions() == ["locals/u1"]
    report = storage.check()
    assert report.ok, report
    assert {c["status"] for c in d.client.containers()} == {"STARTED"}  # GC stopped nothing


def test_container_that_exits_at_start_rolls_back(device, revs):
    s0 = revs.state("e0", {"app1": {"tag": "a1"}, "app2": {"tag": "b1"}})
    s1 = revs.state("e1", {"app1": {"tag": "a1"},
                           "app2": {"tag": "dies", "init": EXIT_AT_ONCE_INIT}})
    d = device(s0)
    upload(d, s1, "locals/bad", revs.objects)
    assert d.client.command("LOCAL_RUN", "locals/bad").ok
    record = d.client.wait("locals/bad", ("ERROR",), timeout=30)
    assert record["status"] == "ERROR", (record, d.tail())
    assert record["status-msg"] == "A container could not be started"
    status = d.wait_settled()
    assert status["running"] == "0" and status["pv_rev"] == "0" and status["pv_try"] == ""
    assert status["boots"] == 2  # the rollback went through a reboot
    assert {c["status"] for c in d.client.containers()} == {"STARTED"}


def test_ready_goal_never_met_rolls_back(device, revs):
    s0 = revs.state("r0", {"app1": {"tag": "a1"}})
    s1 = revs.state("r1", {"app1": {"tag": "a1"}, "app2": {"tag": "b1", "goal": "READY"}})
    d = device(s0)
    upload(d, s1, "locals/ready", revs.objects)
    assert d.client.command("LOCAL_RUN_COMMIT", "locals/ready").ok
    record = d.client.wait("locals/ready", ("ERROR",), timeout=40)
    assert record["status"] == "ERROR", (record, d.tail())
    assert record["status-msg"] == "Status goal not reached"
    status = d.wait_settled()
    assert status["running"] == "0" and status["pv_rev"] == "0"
    assert list(status["containers"]) == ["app1"]


def test_ready_signal_through_the_container_socket_commits(device, revs):
    s0 = revs.state("s0", {"app1": {"tag": "a1"}})
    s1 = revs.state("s1", {"app1": {"tag": "a1"}, "app2": {"tag": "b1", "goal": "READY"}})
    d = device(s0)
    upload(d, s1, "locals/sig", revs.objects)
    assert d.client.command("LOCAL_RUN", "locals/sig").ok
    own = CtrlClient(d.ctrl_dir / "app2.sock")
    answer = None
    for _ in range(400):  # until app2 is up and has its socket
        with contextlib.suppress(CtrlError):
            answer = own.request("POST", "/signal", b'{"type":"ready","payload":""}')
            if answer.status != 404:
                break
        time.sleep(0.05)
    assert answer is not None
    assert answer.status == 200, answer.error
    record = d.client.wait("locals/sig", ("UPDATED",), timeout=30)
    assert record["status"] == "UPDATED", (record, d.tail())


def _raw_request(path: Path, head: bytes, body: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bad_input_is_refused_and_changes_nothing(device, revs):
    s0 = revs.state("b0", {"app1": {"tag": "a1"}})
    d = device(s0)
    before = tree_digest(d.storage)  # logs/ excluded: the containers' console output grows
    c = d.client
    # an object whose bytes hash to something else
    wrong = c.request("PUT", "/objects/" + "0" * 64, b"not those bytes",
                      content_type="application/octet-stream")
    assert wrong.status == 422 and "hashes to" in wrong.error
    # a body shorter than its Content-Length
    data = b"truncated object body"
    sha = __import__("hashlib").sha256(data).hexdigest()
    reply = _raw_request(d.socket, f"PUT /objects/{sha} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(data) + 100}\r\n\r\n".encode(), data)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    # a state key that leaves the trail
    state = json.loads(s0.read_text())
    evil = dict(state, **{"../../escape": state["app1/root.squashfs"]})
    answer = c.put_step("locals/evil", json.dumps(evil).encode())
    assert answer.status == 422 and "escape" in answer.error
    # a path traversal in the revision name itself
    assert c.request("PUT", "/steps/locals/..%2F..%2Fx", b"{}").status == 400
    # a package tarball with a ../ member
    tar = _tar({"json": s0.read_bytes(), "../outside": b"x"})
    answer = c.put_step("locals/tar", tar, content_type="application/x-tar")
    assert answer.status == 422 and ".." in answer.error
    # (signature refusals, which need a signed factory revision: test_device_secureboot.py)
    assert c.command("NOT_A_COMMAND").status == 400
    d.wait_settled()
    assert tree_digest(d.storage) == before
    for sha in Storage(d.storage).objects.names():
        assert sha256_file(d.storage / "objects" / sha) == sha
