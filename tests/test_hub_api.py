"""The Hub's device and operator API: credentials on every call, each device confined to its own
trail and to the objects it was offered, every input checked (JSON 4xx, never a 500)."""

from __future__ import annotations

import json
import sqlite3
import time
from urllib.parse import quote

import pytest
from hubkit import device, hub_files, write_release

from pvreal.hub.client import HttpClient, HubClientError, operator_for, publish
from pvreal.hub.listen import ListenError, parse_listen
from pvreal.hub.server import running
from shared import rollout


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub(tmp_path):
    files = hub_files(tmp_path)
    clock = Clock()
    with running(files, clock=clock) as url:
        yield url, files, clock


def released(tmp_path, url, files, name="web-1.1", tag="v1"):
    state, objects = write_release(tmp_path / name, tag)
    return publish(operator_for(files.database), state, name, "all-at-once", {}, objects), state


def raw(url, method, path, body=None, headers=None, token=None):
    client = HttpClient(url)
    client.token = token
    return client.request(method, path, body, headers)


def test_registration_needs_the_fleet_token_and_keeps_only_a_hash(tmp_path, hub):
    url, files, _ = hub
    body = {"secret": "s" * 32}
    assert raw(url, "POST", "/devices/", body).status == 401
    assert raw(url, "POST", "/devices/", body, {"Pantahub-Devices-Auto-Token-V1": "nope"}).status == 401
    good = {"Pantahub-Devices-Auto-Token-V1": files.device_token}
    assert raw(url, "POST", "/devices/", {"secret": "short"}, good).status == 400
    assert raw(url, "POST", "/devices/", {**body, "nick": "../x"}, good).status == 400
    answer = raw(url, "POST", "/devices/", body, good)
    assert answer.status == 200 and answer.json()["prn"] == f"prn:::devices:/{answer.json()['id']}"
    stored = sqlite3.connect(files.database).execute("SELECT secret_hash FROM devices").fetchone()[0]
    assert stored.startswith("pbkdf2_sha256$") and "s" * 32 not in stored
    bad_login = raw(url, "POST", "/auth/login", {"username": answer.json()["id"], "password": "x" * 32})
    assert bad_login.status == 401


DEVICE_CALLS = [
    ("GET", "/devices/{id}"), ("PATCH", "/devices/{id}/device-meta"),
    ("GET", "/trails/{id}/steps"), ("GET", "/trails/{id}/steps/1"),
    ("GET", "/trails/{id}/steps/1/objects"), ("PUT", "/trails/{id}/steps/1/progress"),
    ("GET", "/trails/{id}/steps/1/state"), ("GET", "/trails/{id}/steps/1/objects/{sha}"),
    ("GET", "/trails/{id}/steps/1/objects/{sha}/blob"),
]  # fmt: skip
A_SHA = "ab" * 32


def test_every_device_call_checks_the_session_token(tmp_path, hub):
    url, files, clock = hub
    released(tmp_path, url, files)
    d1 = device(url, files, "d1")
    for method, path in DEVICE_CALLS:
        for token in (None, "forged-token"):
            answer = raw(url, method, path.format(id=d1.device, sha=A_SHA), {}, token=token)
            assert answer.status == 401, (method, path, token)
            assert "Error" in answer.json()
    assert d1.info()["nick"] == "d1"
    clock.now += 25 * 3600  # sessions last a day
    with pytest.raises(HubClientError, match="401"):
        d1.info()


def test_a_device_cannot_read_or_write_another_devices_trail(tmp_path, hub):
    url, files, _ = hub
    d1, d2 = device(url, files, "d1"), device(url, files, "d2")
    released(tmp_path, url, files)
    assert len(d2.steps()) == 1
    sha = d2.step_objects(1)[0]["sha256sum"]
    for method, path in DEVICE_CALLS:
        body = {"status": "ERROR", "status-msg": "forged"} if "progress" in path else {}
        answer = raw(url, method, path.format(id=d2.device, sha=sha), body, token=d1.token)
        assert answer.status == 403, (method, path)
    assert d2.step(1)["progress"]["status"] == "NEW"  # the forged report changed nothing
    assert operator_for(files.database).status()["releases"][0]["failed"] == 0


def test_a_device_gets_only_the_objects_it_was_offered(tmp_path, hub):
    url, files, _ = hub
    d1 = device(url, files, "d1")
    released(tmp_path, url, files)  # offered to d1 only: d2 joins later
    d2 = device(url, files, "d2")
    shas = [o["sha256sum"] for o in d1.step_objects(1)]
    assert d1.download(shas[0], tmp_path / "d1").is_file()
    for sha in shas[:3]:
        assert raw(url, "GET", f"/objects/{sha}", token=d2.token).status == 404
        assert raw(url, "GET", f"/objects/{sha}/blob", token=d2.token).status == 404
        step_blob = f"/trails/{d2.device}/steps/1/objects/{sha}/blob"
        assert raw(url, "GET", step_blob, token=d2.token).status == 404
    # an object on the Hub but in no release is not offered to anyone
    extra = tmp_path / "extra"
    extra.write_bytes(b"operator only")
    sha = operator_for(files.database).put_object(extra)["sha256sum"]
    assert raw(url, "GET", f"/objects/{sha}/blob", token=d1.token).status == 404
    assert raw(url, "GET", f"/trails/{d1.device}/steps/1/objects/{sha}/blob", token=d1.token).status == 404
    assert raw(url, "GET", "/objects/../../etc/passwd/blob", token=d1.token).status in (400, 404)
    assert raw(url, "GET", f"/objects/{sha.upper()}", token=d1.token).status == 400


def test_steps_progress_and_the_device_record(tmp_path, hub):
    url, files, _ = hub
    d1 = device(url, files, "d1")
    rel, _ = released(tmp_path, url, files)
    assert (rel["admitted"], rel["fleet"]) == (1, 1)
    [step] = d1.steps()
    assert raw(url, "GET", f"/trails/{d1.device}/steps/1/state", token=d1.token).json() == step["state"]
    assert step["rev"] == 1 and step["trail-id"] == d1.device and step["progress"]["status"] == "NEW"
    assert step["state-sha"] == rel["state-sha"] and "#spec" in step["state"]
    d1.put_progress(1, {"status": "DOWNLOADING", "status-msg": "", "progress": 25})
    assert d1.steps() == [] and d1.steps("DOWNLOADING")[0]["rev"] == 1
    # the device's own poll: every pending status at once, as Pantavisor's `{"$in": [...]}`
    assert [s["rev"] for s in d1.steps(["NEW", "QUEUED", "DOWNLOADING"])] == [1]
    assert d1.steps(["NEW", "QUEUED"]) == []
    for bad in ('{"$in": ["NOPE"]}', '{"$in": []}', '{"$in": "NEW"}', "{", "NOPE", '{"$nin": ["NEW"]}'):
        answer = raw(url, "GET", f"/trails/{d1.device}/steps?progress.status={quote(bad)}", token=d1.token)
        assert answer.status == 400 and "progress.status" in answer.json()["Error"], bad
    d1.put_progress(1, {"status": "DONE", "status-msg": "Update finished", "progress": 100})
    assert d1.info()["revision"] == 1 and d1.info()["status"] == "DONE"
    assert len(d1.steps("ALL")) == 1
    assert d1.put_meta({"pantavisor.arch": "x86_64", "k": "v"}) == {"pantavisor.arch": "x86_64", "k": "v"}
    assert d1.put_meta({"k": None}) == {"pantavisor.arch": "x86_64"}
    status = operator_for(files.database).status()
    assert status["releases"][0]["state"] == "completed" and status["releases"][0]["succeeded"] == 1


BAD_INPUTS = [
    ("PUT", "/trails/{id}/steps/1/progress", b"{not json", 400),
    ("PUT", "/trails/{id}/steps/1/progress", b"[]", 400),
    ("PUT", "/trails/{id}/steps/1/progress", b'{"status": "SHINY"}', 400),
    ("PUT", "/trails/{id}/steps/1/progress", b'{"status": "DONE", "progress": "100"}', 400),
    ("PUT", "/trails/{id}/steps/1/progress", b'{"status": "DONE", "status-msg": 5}', 400),
    ("PUT", "/trails/{id}/steps/1/progress", b'{"status": "DONE", "logs": "' + b"x" * 70000 + b'"}', 413),
    ("PUT", "/trails/{id}/steps/99/progress", b'{"status": "DONE"}', 404),
    ("PUT", "/trails/{id}/steps/..%2Fx/progress", b'{"status": "DONE"}', 400),
    ("GET", "/trails/{id}/steps/locals%2Fx", None, 400),
    ("GET", "/trails/{id}/steps/" + "9" * 80, None, 400),
    ("PATCH", "/devices/{id}/device-meta", b'{"k": 1}', 400),
    ("PATCH", "/devices/{id}/device-meta", b'{"bad key!": "v"}', 400),
    ("PATCH", "/devices/{id}/device-meta", b'{"a": "b", "a": "c"}', 400),  # duplicate keys
    ("DELETE", "/devices/{id}", None, 405),
    ("GET", "/nowhere", None, 404),
    ("POST", "/auth/login", b'{"username": 5, "password": "x"}', 400),
    ("POST", "/auth/login", b"x" * (1 << 17), 413),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_INPUTS)
def test_bad_input_is_a_json_4xx(tmp_path, hub, method, path, body, status):
    url, files, _ = hub
    d1 = device(url, files, "d1")
    released(tmp_path, url, files)
    answer = raw(url, method, path.format(id=d1.device), body, token=d1.token)
    assert answer.status == status, answer.body[:200]
    assert isinstance(answer.json()["Error"], str)


def test_objects_are_served_with_range_so_a_download_can_resume(tmp_path, hub):
    url, files, _ = hub
    d1 = device(url, files, "d1")
    released(tmp_path, url, files)
    obj = d1.step_objects(1)[0]
    whole = raw(url, "GET", f"/objects/{obj['sha256sum']}/blob", token=d1.token)
    assert whole.status == 200 and len(whole.body) == obj["size"]
    tail = raw(url, "GET", obj["signed-geturl"], headers={"Range": "bytes=100-"}, token=d1.token)
    assert tail.status == 206 and tail.body == whole.body[100:]
    assert tail.headers["Content-Range"] == f"bytes 100-{obj['size'] - 1}/{obj['size']}"
    past = raw(url, "GET", obj["signed-geturl"], headers={"Range": f"bytes={obj['size']}-"},
               token=d1.token)  # fmt: skip
    assert past.status == 416


def test_operator_routes_need_the_operator_token_and_check_releases(tmp_path, hub):
    url, files, _ = hub
    device(url, files, "d1")
    assert raw(url, "GET", "/operator/status").status == 401
    assert raw(url, "GET", "/operator/status", token=files.device_token).status == 401
    op = operator_for(files.database)
    state, objects = write_release(tmp_path / "r", "v1")
    doc = json.loads(state.read_text())
    with pytest.raises(HubClientError, match="422 object .* is not on the Hub"):
        op.release("web-1.1", doc, "all-at-once", {})
    with pytest.raises(HubClientError, match="400 release name"):
        op.release("../evil", doc, "all-at-once", {})
    with pytest.raises(HubClientError, match="400 unknown strategy"):
        op.release("web-1.1", doc, "sideways", {})
    with pytest.raises(HubClientError, match="422"):
        op.release("web-1.1", {**doc, "device.json": "not a json object"}, "all-at-once", {})
    with pytest.raises(HubClientError, match="422 content hashes to"):
        op.checked("PUT", "/operator/objects/" + "0" * 64, b"not zero")
    publish(op, state, "web-1.1", "all-at-once", {}, objects)
    with pytest.raises(HubClientError, match="409 release web-1.1 exists"):
        op.release("web-1.1", doc, "all-at-once", {})
    assert op.operate("web-1.1", "pause")["state"] == "paused"
    assert op.operate("web-1.1", "resume")["state"] == "running"
    assert op.operate("web-1.1", "abort")["state"] == "aborted"
    with pytest.raises(HubClientError, match="409 release web-1.1 is aborted"):
        op.operate("web-1.1", "resume")
    with pytest.raises(HubClientError, match="404"):
        op.operate("nope", "pause")


def test_the_hub_carries_on_after_a_restart(tmp_path):
    files = hub_files(tmp_path)
    with running(files) as url:
        d1 = device(url, files, "d1")
        released(tmp_path, url, files)
        d1.put_progress(1, {"status": "INPROGRESS", "status-msg": "", "progress": 50})
        before = operator_for(files.database).status()
    with running(files) as url:
        d1.url, d1.port = url, int(url.rsplit(":", 1)[1])
        assert d1.step(1)["progress"]["status"] == "INPROGRESS"  # the session survived too
        d1.put_progress(1, {"status": "DONE", "status-msg": "", "progress": 100})
        after = operator_for(files.database).status()
    assert before["releases"][0]["in_flight"] == 1
    assert after["releases"][0]["state"] == "completed"


def test_listen_is_loopback_unless_allowed():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:12365") == ("::1", 12365)
    assert parse_listen("localhost:1") == ("localhost", 1)
    for text in ("0.0.0.0:12365", "192.168.1.10:80", "example.com:80"):
        with pytest.raises(ListenError, match="not a loopback address"):
            parse_listen(text)
    assert parse_listen("0.0.0.0:8000", allow_remote=True) == ("0.0.0.0", 8000)
    for text in ("12365", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ListenError, match="expected HOST:PORT"):
            parse_listen(text)


class OneAtATime(rollout.Controller):
    """A test strategy: one device per second; the first device waits 5 s before it sees its step."""

    name = "one-at-a-time"

    def admit(self, now, tally):
        if self.state != rollout.RUNNING or tally.admitted >= self.fleet:
            return 0, None
        return 1, now + 1.0

    def start_delay(self, device, now):
        return 5.0 if device == 0 else 0.0


def test_the_hub_only_carries_out_the_controllers_decisions(tmp_path, monkeypatch):
    monkeypatch.setitem(rollout.REGISTRY, OneAtATime.name, OneAtATime)
    files = hub_files(tmp_path)
    clock = Clock()
    with running(files, clock=clock) as url:
        d0, d1 = device(url, files, "d0"), device(url, files, "d1")
        state, objects = write_release(tmp_path / "r", "v1")
        op = operator_for(files.database)
        rel = publish(op, state, "web-1.1", "one-at-a-time", {}, objects)
        assert rel["admitted"] == 1
        assert d0.steps() == [] and d1.steps() == []  # d0 admitted, but its delay runs
        clock.now += 1.0  # the controller asked to be asked again now: the Hub's ticker does
        for _ in range(100):
            if op.status()["releases"][0]["admitted"] == 2:
                break
            time.sleep(0.1)
        assert op.status()["releases"][0]["admitted"] == 2
        assert d0.steps() == [] and len(d1.steps()) == 1
        clock.now += 4.0
        assert len(d0.steps()) == 1
        assert op.operate("web-1.1", "pause")["state"] == "paused"
        for d in (d0, d1):
            d.put_progress(1, {"status": "DONE", "status-msg": "", "progress": 100})
        assert op.status()["releases"][0]["state"] == "paused"  # halted, even with all done
        assert op.operate("web-1.1", "resume")["state"] == "completed"
