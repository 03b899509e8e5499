"""A fuzz campaign against a live daemon on a real storage folder (issue 16, point 2).

Hypothesis writes raw bytes to the device's pv-ctrl socket: bad HTTP (request lines, versions,
methods, headers, Content-Length and Transfer-Encoding games, pipelining), bad JSON, hostile
revision names and paths, oversized and truncated bodies, half-open connections kept around, and
every command. Between batches the campaign drives the device through its states (container
update, commit, try-boot reboot, plain reboot, GC) so that the requests land in each of them.
Throughout: every answer is HTTP/1.1 with a JSON body and never a 500; `GET /status` answers
(a poller asks all along); nothing is written outside the storage folder. At the end the daemon
still runs, has logged no failure, and runs its committed revision.

PVTWIN_FUZZ_REQUESTS sets the number of requests (default 5 000; `make fuzz`: 100 000) and
PVTWIN_FUZZ_RANDOM=1 a fresh random seed (default: Hypothesis' derandomized run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from devicekit import Daemon, started_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvreal.ctrl.client import CtrlClient, CtrlError
from shared.engine.ctrl import MAX_COMMAND_BYTES, MAX_STATE_BYTES, Op

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("real")]

REQUESTS = int(os.environ.get("PVTWIN_FUZZ_REQUESTS", "5000"))
RANDOM = os.environ.get("PVTWIN_FUZZ_RANDOM") == "1"
BATCH = 50  # requests per Hypothesis example, sent by SENDERS threads at once
SENDERS = 4
DRIVE_EVERY = 4  # batches between two moves of the device to another state (`drive`)
HALF_OPEN_KEPT = 24  # half-open connections held at once (the oldest is closed first)
# 501 unknown method, 503 busy (Retry-After), 505 bad version, 507 no space: not server faults.
SERVER_CODES_ALLOWED = {501, 503, 505, 507}

# ------------------------------------------------------------------ what the requests are made of

GOOD = ("locals/good-a", "locals/good-b")  # states the campaign itself runs (see `drive`)
NAMES = [
    "0", "1", "locals/x", "locals/fuzz", "locals/../x", "", "locals/", "locals/" + "a" * 300,
    "a" * 300, "..", "../../etc", "locals/a/b", "locals/.x", "current", "locals/locals",
    "locals/x\n", "locals/x\x00", "locals/%2e%2e", "/abs", "locals/ä", "locals/" + "b" * 63,
    "locals/" + "c" * 64, "locals/x y", "locals/*", "locals/good-a", "locals/good-b", "-1",
]
SEGMENTS = [
    "steps", "locals", "objects", "commands", "signal", "status", "containers", "buildinfo",
    "progress", "current", "..", ".", "", "%2e%2e", "%2F", "%00", "%ff", "%", "a" * 300,
    "0" * 64, "good-a", "x", "ä", "\\", "~", "*",
]
OPS = [op for op in Op if op not in (Op.POWEROFF_DEVICE, Op.REBOOT_DEVICE)]  # see `drive`
METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "G\tET", "",
           "PUT PUT", "POST\x00"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 extra", "", "http/1.1", "HTTP/1.x",
            "HTTP/0.9", "HTTP/1.1\r"]

# Large bodies are made once and shared: a batch holds references, never fresh copies (Hypothesis
# keeps generated examples around longer than one would think).
OVER_STATE_LIMIT = b'{"#spec": "' + b"y" * (MAX_STATE_BYTES + 1 - 13) + b'"}'  # over by one byte
NESTED = {depth: b'{"#spec": ' + b"[" * depth + b"]" * depth + b"}"
          for depth in (65, 1000, 200_000)}
DEEP_COMMAND = b"[" * 20000 + b"]" * 20000
OVER_COMMAND_LIMIT = b'{"op": "' + b"A" * (MAX_COMMAND_BYTES + 1) + b'"}'

text = st.text(max_size=40)
hostile_name = st.one_of(st.sampled_from(NAMES), text)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        text)


@st.composite
def path(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["*", "", "status", "http://h/status", "//status",
                                     "/status?x=1#y", "/status/", "/steps/locals/", "/" * 50]))
    parts = draw(st.lists(st.sampled_from(SEGMENTS) | text, min_size=1, max_size=5))
    if kind == 1:
        parts = [quote(p, safe="") for p in parts]
    return "/" + "/".join(parts)


@st.composite
def command_body(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    op = draw(st.sampled_from(OPS) | text)
    payload = draw(hostile_name)
    if kind <= 5:
        return json.dumps({"op": op, "payload": payload}).encode()
    return draw(st.sampled_from([
        b'{"op": "RUN_GC", "op": "RUN_GC"}', b"[1, 2]", b"null", b"{", b"\xff\xfe",
        b'{"op": 1, "payload": []}', b'{"op": "LOCAL_RUN", "payload": null}',
        b'{"op": "LOCAL_RUN"}', DEEP_COMMAND, b'{"type": "ready"}', OVER_COMMAND_LIMIT, b"",
    ]))


@st.composite
def state_body(draw, base: dict) -> bytes:
    doc = dict(base)
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return OVER_STATE_LIMIT
    if kind == 1:
        return NESTED[draw(st.sampled_from(sorted(NESTED)))]
    if kind == 2:
        return draw(st.binary(max_size=200))
    if kind == 3:
        doc[draw(st.sampled_from(NAMES) | text)] = draw(json_scalar | st.just("0" * 64))
    elif kind == 4:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    elif kind == 5:
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_scalar)
    elif kind == 6:
        doc["app1/extra.bin"] = hashlib.sha256(draw(st.binary(max_size=8))).hexdigest()
    elif kind == 7:
        doc["#spec"] = draw(text)
    body = json.dumps(doc).encode()
    if kind == 8:
        body = body[: draw(st.integers(0, len(body)))]
    return body


@dataclass(frozen=True)
class Raw:
    """One connection's bytes: head + body + tail, joined only when sent (the body may be one
    of the shared large ones)."""

    head: bytes
    body: bytes = b""
    tail: bytes = b""
    mode: str = "full"  # full | truncated | half_open | abort
    cut: int = 0  # bytes sent when truncated or half-open

    @property
    def size(self) -> int:
        return len(self.head) + len(self.body) + len(self.tail)

    def data(self) -> bytes:
        return self.head + self.body + self.tail

    def __repr__(self) -> str:  # Hypothesis prints failing batches: not 16 MiB bodies
        return (f"Raw({self.head[:300]!r}, body {self.body[:100]!r}... {len(self.body)} B, "
                f"tail {self.tail[:100]!r}, {self.mode}, cut={self.cut})")


@st.composite
def http_request(draw, base_state: dict) -> Raw:
    kind = draw(st.integers(0, 19))
    method, target, body = "GET", "/status", b""
    if kind <= 3:
        method, target, body = "POST", "/commands", draw(command_body())
    elif kind <= 6:
        name = draw(hostile_name).removeprefix("locals/")
        target = "/steps/locals/" + draw(st.sampled_from([quote(name, safe=""), name]))
        method, body = "PUT", draw(state_body(base_state))
    elif kind == 7:
        data = draw(st.binary(max_size=64))
        sha = draw(st.sampled_from([hashlib.sha256(data).hexdigest(), "0" * 64, "A" * 64,
                                    "xyz", "../" + "0" * 61]))
        method, target, body = "PUT", "/objects/" + sha, data
    elif kind == 8:
        method, target, body = "POST", "/signal", draw(command_body())
    elif kind <= 11:
        method = draw(st.sampled_from(["GET", "GET", "GET", "PUT", "POST", "DELETE"]))
        target = "/steps/" + quote(draw(hostile_name), safe="/") + draw(
            st.sampled_from(["", "/progress", "/x"]))
    elif kind <= 14:
        method, target = draw(st.sampled_from(METHODS)), draw(path())
        body = draw(st.binary(max_size=64))
    elif kind == 15:
        return Raw(draw(st.binary(max_size=300)))
    version = "HTTP/1.1" if kind < 16 else draw(st.sampled_from(VERSIONS))
    headers = [f"Host: {draw(st.sampled_from(['x', '']))}"]
    length = draw(st.sampled_from(["exact"] * 6 + ["none", "more", "less", "junk", "twice",
                                                    "huge", "chunked", "both"]))
    chunk_head = tail = b""
    if length == "exact":
        headers.append(f"Content-Length: {len(body)}")
    elif length == "more":  # truncated: the client hangs up before the end
        headers.append(f"Content-Length: {len(body) + draw(st.integers(1, 1 << 20))}")
    elif length == "less":
        headers.append(f"Content-Length: {max(0, len(body) - draw(st.integers(1, 10)))}")
    elif length == "junk":
        headers.append("Content-Length: " + draw(st.sampled_from(
            ["-1", "+5", "1e3", "0x10", " ", "9" * 30, "١٢", "5, 5"])))
    elif length == "twice":
        headers += [f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 1}"]
    elif length == "huge":
        headers.append(f"Content-Length: {10**17}")
    elif length in ("chunked", "both"):
        headers.append("Transfer-Encoding: chunked")
        if length == "both":
            headers.append(f"Content-Length: {len(body)}")
        chunk_head, tail = f"{len(body):x}\r\n".encode(), b"\r\n0\r\n\r\n"
    extra = draw(st.integers(0, 9))
    if extra == 0:
        headers.append("Expect: 100-continue")
    elif extra == 1:
        headers.append("X-Long: " + "v" * draw(st.sampled_from([100, 70_000])))
    elif extra == 2:
        headers += [f"X-{i}: y" for i in range(150)]
    elif extra == 3:
        headers.append("no colon here")
    elif extra == 4:
        headers.append(" folded: continuation")
    head = f"{method} {target} {version}".rstrip(" ") + "\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    if draw(st.integers(0, 9)) == 0:  # pipelined: a second request on the same connection
        tail += b"GET /status HTTP/1.1\r\n\r\n"
    raw = Raw(head.encode("utf-8", "surrogateescape") + chunk_head, body, tail)
    mode = draw(st.sampled_from(["full"] * 12 + ["truncated", "half_open", "abort"]))
    return dataclasses.replace(raw, mode=mode, cut=draw(st.integers(0, raw.size)))


# ------------------------------------------------------------------ reading answers

_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def answers(reply: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) in a reply; a status line, a JSON Content-Type and a body of
    exactly Content-Length bytes each (a 204: neither), or AssertionError."""
    out = []
    while reply:
        match = _STATUS_LINE.match(reply)
        assert match, reply[:300]
        head, sep, rest = reply.partition(b"\r\n\r\n")
        assert sep, reply[:300]
        status = int(match.group(1))
        if status == 100:  # Expect: 100-continue
            reply = rest
            continue
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        if status == 204:  # nothing to do (GO_REMOTE when remote): no body, no length
            assert b"Content-Length" not in fields and b"Content-Type" not in fields, head
            out.append((status, b""))
            reply = rest
            continue
        assert fields.get(b"Content-Type") == b"application/json", head
        size = int(fields[b"Content-Length"])
        body, reply = rest[:size], rest[size:]
        assert len(body) == size, (head, body[:200])
        out.append((status, body))
    return out


class Campaign:
    """Sends requests, checks answers, keeps half-open connections, counts."""

    def __init__(self, d: Daemon):
        self.d = d
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.half_open: deque[socket.socket] = deque()
        self.lock = threading.Lock()

    def send(self, req: Raw) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(str(self.d.socket))
        try:
            with self.lock:
                self.sent += 1
            data = req.data()
            if req.mode == "half_open":
                s.sendall(data[: req.cut])
                with self.lock:
                    self.half_open.append(s)
                    while len(self.half_open) > HALF_OPEN_KEPT:
                        self.half_open.popleft().close()
                s = None
                return
            # BrokenPipe: the server answered and hung up before reading everything (fine).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(data if req.mode != "truncated" else data[: req.cut])
            del data
            if req.mode == "abort":
                return
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(1 << 16):
                reply += chunk
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            if s is not None:
                s.close()
        for status, body in answers(reply):
            doc = json.loads(body) if body else None
            assert status < 500 or status in SERVER_CODES_ALLOWED, (req, status, doc)
            if status >= 400:
                assert isinstance(doc, dict) and doc.get("Error"), (req, body)
            with self.lock:
                self.statuses[status] += 1

    def close(self) -> None:
        while self.half_open:
            self.half_open.popleft().close()


class StatusPoller(threading.Thread):
    """Asks `GET /status` all along; every failure to answer is kept."""

    def __init__(self, socket_path: Path):
        super().__init__(daemon=True, name="status-poller")
        self.client = CtrlClient(socket_path, timeout=10)
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []
        self.slowest = 0.0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                doc = self.client.status()
                assert doc["error"] is None, doc
                self.answered += 1
            except (CtrlError, AssertionError) as exc:
                self.failures.append(str(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)


def outside_storage(base: Path, d: Daemon) -> dict[str, str]:
    """Every file beside the storage folder (its parent and grandparent), with its content hash;
    the daemon's log and run dir are its own and only listed."""
    out = {}
    own = {d.storage, d.run_dir}
    for root in (base,):
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if here / n not in own)
            for name in sorted(filenames):
                p = here / name
                rel = str(p.relative_to(base))
                if p == d.log or p.is_socket():
                    out[rel] = "present"
                else:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def storage_names_are_clean(storage: Path) -> None:
    """Inside the storage folder too: every trail has a revision name, every object a sha."""
    from shared.state import check_revision_name

    for trail in (storage / "trails").iterdir():
        if trail.name == "locals":
            for local in trail.iterdir():
                check_revision_name("locals/" + local.name)
        elif trail.name != "current":
            check_revision_name(trail.name)
    for obj in (storage / "objects").iterdir():
        assert re.fullmatch(r"[0-9a-f]{64}", obj.name), obj


# ------------------------------------------------------------------ the campaign


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    revs, d = started_device(base)
    goods = {GOOD[0]: revs.state("ga", {"app1": {"tag": "a2"}}),
             GOOD[1]: revs.state("gb", {"app1": {"tag": "a3"}})}
    for state in goods.values():
        for value in json.loads(state.read_text()).values():
            if isinstance(value, str) and len(value) == 64:
                assert d.client.put_object(value, revs.objects / value).ok
    yield base, d, {rev: p.read_bytes() for rev, p in goods.items()}
    d.stop()
    assert d.leftovers() == [], d.tail()


def drive(d: Daemon, goods: dict[str, bytes], step: int) -> None:
    """Move the device to another state without waiting for it to get there: a container
    update, an update with a forced try-boot reboot, a plain reboot, a GC, or nothing."""
    status = d.status()
    target = GOOD[0] if status.get("running") != GOOD[0] else GOOD[1]
    choice = step % 5
    if choice in (0, 1):
        d.client.put_step(target, goods[target])  # 409 while it is in use: fine
        d.client.command("LOCAL_RUN_COMMIT" if choice else "LOCAL_RUN", target)
    elif choice == 2:
        d.client.command("REBOOT_DEVICE")
    elif choice == 3:
        d.client.command("RUN_GC")


def test_fuzz_the_live_daemon(live):
    base, d, goods = live
    before = outside_storage(base, d)
    base_state = json.loads(goods[GOOD[0]])
    campaign = Campaign(d)
    poller = StatusPoller(d.socket)
    poller.start()
    senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="fuzz")
    batches = [0]
    started = time.monotonic()

    @settings(max_examples=-(-REQUESTS // BATCH), deadline=None, database=None,
              derandomize=not RANDOM, suppress_health_check=list(HealthCheck))
    @given(st.lists(http_request(base_state), min_size=BATCH, max_size=BATCH))
    def campaign_batch(batch: list[Raw]) -> None:
        batches[0] += 1
        if batches[0] % DRIVE_EVERY == 0:
            drive(d, goods, batches[0] // DRIVE_EVERY)
        for result in [senders.submit(campaign.send, req) for req in batch]:
            result.result()
        assert d.proc is not None and d.proc.poll() is None, d.tail()

    try:
        campaign_batch()
    finally:
        elapsed = time.monotonic() - started
        campaign.close()
        poller.stop.set()
        poller.join()
        senders.shutdown()
        print(f"\nfuzz: {campaign.sent} requests in {elapsed:.1f} s "
              f"({campaign.sent / elapsed:.0f}/s), answers {dict(sorted(campaign.statuses.items()))}, "
              f"status asked {poller.answered} times, slowest {poller.slowest:.2f} s")
    final = d.status()
    print(f"fuzz: device booted {final['boots']} times, runs {final['running']}")
    assert campaign.sent >= REQUESTS
    assert poller.failures == [] and poller.answered > 0
    status = d.wait_settled(90)
    assert d.proc.poll() is None, d.tail()
    assert (status["failures"], status["error"]) == (0, None), status
    assert status["running"] == status["pv_rev"] != "", status  # the committed revision runs
    assert all(c["status"] in ("STARTED", "READY") for c in status["containers"].values())
    assert outside_storage(base, d) == before
    storage_names_are_clean(d.storage)
    assert "Traceback" not in d.tail(10_000_000), d.tail()
