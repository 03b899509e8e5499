"""pvreal/hub/client.py, the library the real device will use: a cut download resumes from its
.tmp with a Range request, a corrupt one is thrown away, nothing lands unless its sha256 matches."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from urllib.parse import urlsplit

import pytest
from hubkit import device, hub_files, write_release

from pvreal.hub.client import DeviceClient, HubClientError, operator_for, publish
from pvreal.hub.server import running


class Recording(DeviceClient):
    """Remembers the Range header of every request, to see what the client asked for."""

    def __init__(self, url: str, device: str | None) -> None:
        super().__init__(url, device)
        self.ranges: list[str | None] = []

    def _headers(self, extra):
        self.ranges.append((extra or {}).get("Range"))
        return super()._headers(extra)


@pytest.fixture
def offered(tmp_path):
    """(url, a recording device client, the largest object it was offered)"""
    files = hub_files(tmp_path)
    with running(files) as url:
        plain = device(url, files, "d1")
        state, objects = write_release(tmp_path / "rel", "v1")
        publish(operator_for(files.database), state, "web-1.1", "all-at-once", {}, objects)
        client = Recording(url, plain.device)
        client.token = plain.token
        biggest = max(client.step_objects(1), key=lambda o: o["size"])
        client.ranges.clear()
        yield client, biggest, (objects / biggest["sha256sum"]).read_bytes()


def test_a_cut_download_resumes_where_it_stopped(tmp_path, offered):
    client, obj, data = offered
    sha, folder = obj["sha256sum"], tmp_path / "objects"
    with pytest.raises(HubClientError, match="cut after 1000 B"):
        client.download(sha, folder, stop_after=1000)
    assert (folder / f"{sha}.tmp").read_bytes() == data[:1000] and not (folder / sha).exists()
    path = client.download(sha, folder, url=obj["signed-geturl"])  # the step's own path
    assert client.ranges[-1] == "bytes=1000-"
    assert path.read_bytes() == data and not (folder / f"{sha}.tmp").exists()
    assert client.download(sha, folder) == path  # already there: no request
    assert len(client.ranges) == 2


@contextlib.contextmanager
def cutting_proxy(url: str, cut_after: int):
    """A loopback TCP proxy whose first connection is closed after `cut_after` bytes of the
    answer (headers included), as a link that drops mid-download; later ones pass everything."""
    upstream = urlsplit(url)
    listener = socket.create_server(("127.0.0.1", 0))
    connections = 0

    def pipe(src, dst, limit):
        sent = 0
        try:
            while (limit is None or sent < limit) and (data := src.recv(4096)):
                data = data if limit is None else data[: limit - sent]
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv too
            s.close()

    def serve():
        nonlocal connections
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((upstream.hostname, upstream.port))
            limit = cut_after if connections == 0 else None
            connections += 1
            threading.Thread(target=pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, limit), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_download_cut_by_the_network_resumes_with_range(tmp_path, offered):
    client, obj, data = offered
    sha, folder = obj["sha256sum"], tmp_path / "objects"
    with cutting_proxy(client.url, cut_after=2000) as proxied:
        through = Recording(proxied, client.device)
        through.token = client.token
        with pytest.raises(HubClientError):
            through.download(sha, folder)
        partial = (folder / f"{sha}.tmp").stat().st_size
        assert 0 < partial < len(data)
        assert through.download(sha, folder).read_bytes() == data
        assert through.ranges == [None, f"bytes={partial}-"]


def test_a_corrupt_partial_download_is_thrown_away_and_the_next_try_starts_over(tmp_path, offered):
    client, obj, data = offered
    sha, folder = obj["sha256sum"], tmp_path / "objects"
    folder.mkdir()
    (folder / f"{sha}.tmp").write_bytes(b"garbage!" * 10)
    with pytest.raises(HubClientError, match="do not match"):
        client.download(sha, folder)
    assert not (folder / f"{sha}.tmp").exists() and not (folder / sha).exists()
    assert client.download(sha, folder).read_bytes() == data
    assert client.ranges[-1] is None


def test_a_whole_tmp_left_before_the_rename_is_kept(tmp_path, offered):
    client, obj, data = offered
    sha, folder = obj["sha256sum"], tmp_path / "objects"
    folder.mkdir()
    (folder / f"{sha}.tmp").write_bytes(data)  # the Hub answers 416: nothing more to send
    assert client.download(sha, folder).read_bytes() == data
    assert hashlib.sha256((folder / sha).read_bytes()).hexdigest() == sha


def test_unreachable_hub_and_bad_names_are_client_errors(tmp_path):
    client = DeviceClient("http://127.0.0.1:9", "d")
    with pytest.raises(HubClientError, match="not reachable"):
        client.steps()
    with pytest.raises(HubClientError, match="not a sha256"):
        client.download("../etc/passwd", tmp_path)
    with pytest.raises(HubClientError, match="expected http://HOST:PORT"):
        DeviceClient("ftp://x")
