"""No input stops the device (issue 16, point 1): every name and body pv-ctrl takes is checked with
the engine's own rule and answered with a JSON refusal (400/404/411/413/422/501, never HTML, never
500); a state body is size- and depth-limited and decoded on a worker thread that `status` never
waits for; a state naming an object the device lacks is refused at PUT; the device loop survives
a failing command. The stand-in device needs no root; the real daemon tests do."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import quote

import pytest
from enginekit import idle_engine
from test_ctrl_server import StandInDevice, stand_in_server

from pvreal.ctrl.api import CtrlApi
from pvreal.ctrl.client import CtrlClient
from pvreal.ctrl.server import serve
from shared.engine.commands import CtrlReply, PersistProgress
from shared.engine.ctrl import (
    MAX_COMMAND_BYTES,
    MAX_STATE_BYTES,
    MAX_STATE_DEPTH,
    ctrl_decision,
    nesting_depth,
)
from shared.engine.events import CtrlCommand, LocalStepStarted, LocalStepUploaded

LONG = "a" * 300
# Names the issue reported (each one stopped the daemon), and their relatives.
BAD_REVISIONS = [
    "locals/../x", "", "locals/", "locals/" + LONG, LONG, "../x", "locals/a/b", "locals/.hidden",
    "current", "locals/locals", "locals/x\n", "locals/x\x00y", "/etc/passwd", "locals/ä",
]


def raw(path: Path, data: bytes, *, shut: bool = True) -> bytes:
    """Send bytes as they are; return everything the server answers before it hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.fixture
def ctrl(tmp_path):
    with stand_in_server(tmp_path) as served:
        yield served


def json_answer(reply: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a raw HTTP/1.1 answer; fails on HTML or a missing body."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), reply[:200]
    assert b"Content-Type: application/json" in head, head
    return int(head.split()[1]), json.loads(body)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------ the shared rule


@pytest.mark.parametrize("rev", BAD_REVISIONS)
def test_engine_refuses_bad_names_before_writing(rev):
    """The engine applies the same rule: 400, and no progress written under the name."""
    engine = idle_engine()
    assert ctrl_decision("LOCAL_RUN", update_active=False, payload=rev).status == 400
    for event in (CtrlCommand("LOCAL_RUN", rev), CtrlCommand("LOCAL_RUN_COMMIT", rev),
                  LocalStepStarted(rev), LocalStepUploaded(rev)):
        commands = engine.handle(event)
        assert [type(c) for c in commands] == [CtrlReply], commands
        assert commands[0].status == 400
    assert not any(isinstance(c, PersistProgress) for c in engine.handle(CtrlCommand("RUN_GC")))


def test_good_names_still_pass():
    for rev in ("0", "12", "locals/web-1.1", "locals/" + "x" * 63, "locals/_a"):
        assert ctrl_decision("LOCAL_RUN", update_active=False, payload=rev).accepted
    assert ctrl_decision("RUN_GC", update_active=False, payload="../anything").accepted


def test_nesting_depth_counts_without_recursion():
    assert nesting_depth(1) == 0 and nesting_depth({"a": [1, {"b": []}]}) == 4
    deep: list = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert nesting_depth(deep) == MAX_STATE_DEPTH + 1  # stops counting past the limit


# ------------------------------------------------------------------ pv-ctrl over its socket


@pytest.mark.parametrize("rev", BAD_REVISIONS)
def test_bad_names_are_400_everywhere(ctrl, rev):
    device, client, tmp = ctrl
    before = files(tmp / "storage")
    answer = client.command("LOCAL_RUN", rev)
    assert answer.status == 400 and answer.json()["Error"], answer.body
    assert client.command("LOCAL_RUN_COMMIT", rev).status == 400
    quoted = quote(rev, safe="")
    name = quoted.removeprefix("locals%2F")
    if name:  # an empty name is another endpoint (404 below)
        assert client.request("PUT", f"/steps/locals/{name}", b"{}").status == 400
    assert client.request("GET", f"/steps/{quoted}/progress").status in (400, 404)
    assert files(tmp / "storage") == before
    assert not any(isinstance(e, CtrlCommand) for e in device.events)


def test_malformed_http_gets_json_not_html(ctrl):
    _, client, tmp = ctrl
    sock = tmp / "pv-ctrl"
    cases = {
        b"FROB /status HTTP/1.1\r\n\r\n": 501,
        b"GET /status HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n": 400,
        b"GET /status HTTP/1.1\r\nContent-Length: +5\r\n\r\n": 400,
        b"GET /status HTTP/1.1\r\nContent-Length: -1\r\n\r\n": 400,
        b"GET /status HTTP/1.1\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n": 400,
        b"POST /commands HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 411,
        b"POST /commands HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}": 400,
        b"GET /status HTTP/9.9\r\n\r\n": 505,
        b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n": 414,
        b"GET /status HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n": 431,
        b"GET http://[::1/status HTTP/1.1\r\n\r\n": 400,
        b"GET /nowhere HTTP/1.1\r\n\r\n": 404,
        b"PUT /objects/" + b"0" * 64 + b" HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort": 400,
    }
    for request, status in cases.items():
        got, doc = json_answer(raw(sock, request))
        assert (got, bool(doc["Error"])) == (status, True), (request[:60], doc)
    assert client.status()["running"] == "0"


def test_oversized_bodies_are_413_and_deep_ones_422(ctrl):
    device, client, _ = ctrl
    big = b'{"op": "RUN_GC", "payload": "' + b"x" * MAX_COMMAND_BYTES + b'"}'
    answer = client.request("POST", "/commands", big)
    assert answer.status == 413 and "limit" in answer.error
    assert client.request("POST", "/signal", big).status == 413
    state = b'{"#spec": "' + b"y" * MAX_STATE_BYTES + b'"}'
    answer = client.put_step("locals/big", state)
    assert answer.status == 413 and str(MAX_STATE_BYTES) in answer.error
    for depth in (MAX_STATE_DEPTH + 1, 100_000):  # checked, then too deep for the parser
        nested = b'{"#spec": ' + b"[" * depth + b"]" * depth + b"}"
        answer = client.put_step("locals/deep", nested)
        assert answer.status == 422 and "nest" in answer.error, answer.error
    deep_command = b'{"op": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    assert client.request("POST", "/commands", deep_command).status == 400
    assert client.request("POST", "/signal", deep_command).status == 400
    assert not any(isinstance(e, LocalStepStarted) and e.rev == "locals/big" for e in device.events)


def test_state_naming_a_missing_object_is_refused_at_put(ctrl):
    device, client, _ = ctrl
    kernel = b"kernel"
    sha_kernel = hashlib.sha256(kernel).hexdigest()
    assert client.request("PUT", f"/objects/{sha_kernel}", kernel).ok
    absent = hashlib.sha256(b"never uploaded").hexdigest()
    state = {
        "#spec": "pantavisor-service-system@1",
        "bsp/run.json": {"linux": "kernel.img", "initrd": "initrd.img"},
        "bsp/kernel.img": sha_kernel,
        "bsp/initrd.img": absent,
    }
    answer = client.put_step("locals/lacking", json.dumps(state).encode())
    assert answer.status == 422, answer.body
    assert absent in answer.error and "bsp/initrd.img" in answer.error
    uploaded = [e for e in device.events if isinstance(e, LocalStepUploaded)]
    assert uploaded[-1].state is None  # the engine is told, so it deletes the step (§3.4)


def test_status_answers_while_a_state_is_decoded(tmp_path, monkeypatch):
    """The decode runs on the pv-ctrl-state worker; hold it there and ask for the status."""
    device = StandInDevice(tmp_path / "storage")
    api = CtrlApi(device)
    inside, release = threading.Event(), threading.Event()
    seen: list[str] = []
    check = api._check_state

    def slow_check(body, rev):
        seen.append(threading.current_thread().name)
        inside.set()
        assert release.wait(30)
        return check(body, rev)

    monkeypatch.setattr(api, "_check_state", slow_check)
    server = serve(tmp_path / "s", api)
    try:
        client = CtrlClient(tmp_path / "s", timeout=30)
        result: Future = Future()
        threading.Thread(target=lambda: result.set_result(
            client.put_step("locals/slow", b'{"#spec": "x"}'))).start()
        assert inside.wait(30)
        assert client.status()["running"] == "0"  # while the decode is held
        assert client.request("GET", "/buildinfo").ok
        release.set()
        assert result.result(30).status == 422
        assert seen and seen[0].startswith("pv-ctrl-state")
    finally:
        release.set()
        server.close()


def test_half_open_connections_do_not_block_status(ctrl):
    _, client, tmp = ctrl
    held = []
    try:
        for head in (b"", b"GET /sta", b"PUT /steps/locals/x HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                     b"POST /commands HTTP/1.1\r\nContent-Length: 50\r\n\r\n"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(tmp / "pv-ctrl"))
            s.sendall(head)
            held.append(s)
        assert client.status()["running"] == "0"
    finally:
        for s in held:
            s.close()
    assert client.status()["running"] == "0"


def test_ctl_put_reports_bad_input_without_a_traceback(ctrl, capsys):
    """`pvreal ctl put` of a state nested too deep, or naming an object missing locally: an
    error message and exit 1, not a RecursionError or FileNotFoundError traceback."""
    from pvreal.cli import main as pvreal_main

    _, _, tmp = ctrl
    socket_args = ["ctl", "--socket", str(tmp / "pv-ctrl"), "put"]
    deep = tmp / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert pvreal_main([*socket_args, str(deep), "locals/x"]) == 1
    assert "nested too deeply" in capsys.readouterr().err
    lacking = tmp / "lacking.json"
    absent = hashlib.sha256(b"nowhere").hexdigest()
    lacking.write_text(json.dumps({"#spec": "pantavisor-service-system@1", "bsp/k": absent}))
    assert pvreal_main([*socket_args, str(lacking), "locals/x", "--objects", str(tmp)]) == 1
    err = capsys.readouterr().err
    assert absent in err and "cannot read" in err


# ------------------------------------------------------------------ the device loop


def test_device_loop_survives_a_failing_command(tmp_path, monkeypatch):
    """A command whose execution raises, then an event the engine itself fails on: each is
    logged, counted in the status, answered 500 if a request still waits, and followed by a
    reboot to recover instead of the end of the loop."""
    from pvreal.device.daemon import Device, DeviceOptions, _Item

    device = Device(DeviceOptions(storage=tmp_path / "s", network=False, run_dir=tmp_path / "r"))
    try:
        device.updater = idle_engine()
        rebooted = []
        monkeypatch.setattr(device, "_reboot", rebooted.append)

        def broken(*_args):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(device.executor, "execute", broken)
        reply: Future[CtrlReply] = Future()
        device._handle_item(_Item(CtrlCommand("RUN_GC"), reply))
        assert reply.result(0).status == 200  # accepted before the GC ran and failed
        assert device.failures == 1 and "Input/output" in device.last_failure
        monkeypatch.setattr(device, "updater_handle", broken)
        reply = Future()
        device._handle_item(_Item(CtrlCommand("RUN_GC"), reply))
        assert reply.result(0).status == 500 and "Input/output" in reply.result(0).body
        assert [r.reason for r in rebooted] == ["recovering from a failed CtrlCommand"] * 2
        device._publish()
        assert device.status()["failures"] == 2
    finally:
        device.storage_lock.release()


# ------------------------------------------------------------------ the real daemon


@pytest.mark.root
@pytest.mark.xdist_group("real")
def test_real_daemon_survives_the_reported_payloads(tmp_path):
    """The payloads of issue 16 each stopped the daemon 5-8 s after `accepted`; now each is a
    400 and the device goes on running its revision, containers untouched."""
    import time

    from devicekit import started_device

    revs, d = started_device(tmp_path)
    try:
        pids = {c["name"]: c["pid"] for c in d.client.containers()}
        for rev in BAD_REVISIONS:
            for op in ("LOCAL_RUN", "LOCAL_RUN_COMMIT"):
                answer = d.client.command(op, rev)
                assert answer.status == 400 and answer.json()["Error"], (op, rev, answer.body)
        # a state naming an object the device lacks: refused at PUT, naming the object
        doc = json.loads((revs.root / "f0.json").read_text())
        absent = hashlib.sha256(b"not on the device").hexdigest()
        doc["app1/extra.bin"] = absent
        answer = d.client.put_step("locals/lacking", json.dumps(doc).encode())
        assert answer.status == 422 and absent in answer.error and "app1/extra.bin" in answer.error
        assert not (d.storage / "trails" / "locals" / "lacking").exists()
        time.sleep(1)  # the engine had 5-8 s to die before: give a late failure a chance
        status = d.wait_settled(30)
        assert d.proc is not None and d.proc.poll() is None, d.tail()
        assert (status["running"], status["failures"], status["error"]) == ("0", 0, None)
        assert {c["name"]: c["pid"] for c in d.client.containers()} == pids
        assert "Traceback" not in d.tail(100_000)
    finally:
        d.stop()
    assert d.leftovers() == [], d.tail()
