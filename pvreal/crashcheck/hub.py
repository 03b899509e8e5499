"""The Hub side of `pvreal crashcheck`'s remote kinds (hub-unreachable-testing).

What is real: the Hub (pvreal.hub, served on 127.0.0.1 by the checker's own process, so it outlives
every daemon the checker kills, as a Hub outlives a device's power cut), its database and object
store (a fresh copy of the kind's base for every run), the HTTP between them, and the daemon's
own Hub client (pvreal.device.remote.HubLink: its requests, retries, unsent reports, downloads).

What stands in, so that a replay reaches the same step again:
- the client's requests run one at a time, in the order the daemon queued them, on the thread that
  runs the engine, whenever the engine has nothing queued (`SyncRequests`), instead of on the
  client's worker and download threads;
- the client's clock is the crash daemon's virtual one, so PH_UPDATER_INTERVAL costs nothing;
- "the Hub cannot be reached": the connection is refused at connect (`Unreachable`), so the
  client sees what a dead network gives it (no answer at all), never an HTTP error.
"""

from __future__ import annotations

import errno
import http.client
import json
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pvreal.device.remote import HubLink
from pvreal.hub.client import OperatorClient, publish
from pvreal.hub.server import HubFiles, running

DATABASE = "hub.sqlite"
RELEASE = "crashcheck"  # the release name the kind's update is published under


def hub_files(folder: Path) -> HubFiles:
    folder.mkdir(parents=True, exist_ok=True)
    return HubFiles.prepare(folder / DATABASE)


@contextmanager
def serving(folder: Path) -> Iterator[tuple[HubFiles, str]]:
    """The real Hub on the database in `folder`, for as long as the block runs; its files and URL."""
    files = hub_files(folder)
    with running(files) as url:
        yield files, url


def publish_update(files: HubFiles, url: str, state: dict, objects: dict[str, bytes], scratch: Path) -> None:
    """The person at the Hub publishes the kind's update to every device, at once."""
    (scratch / "objects").mkdir(parents=True, exist_ok=True)
    for sha, data in objects.items():
        (scratch / "objects" / sha).write_bytes(data)
    path = scratch / "state.json"
    path.write_text(json.dumps(state, sort_keys=True))
    publish(OperatorClient(url, files.operator_token), path, RELEASE, "all-at-once", {}, scratch / "objects")


def copy_hub(src: Path, dst: Path) -> None:
    """A run's own Hub: the base's database, tokens and objects (no server has them open)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


class Unreachable(http.client.HTTPConnection):
    """A connection to a Hub the network cannot reach: refused when it connects."""

    def connect(self) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "the Hub cannot be reached (crashcheck)")


class SyncRequests:
    """The Hub client's queue, run one request at a time by the engine's thread (see the module
    docstring): installed as `HubLink._queue`; `run_next` runs the oldest request through the
    client's own job wrapper (a failing job is logged, never raised), and the request feeds its
    answer to the daemon's queue as the client always does."""

    def __init__(self, link: HubLink) -> None:
        self.link = link
        self._jobs: deque[Callable[[], None]] = deque()
        link._queue = self.queue  # type: ignore[method-assign]

    def queue(self, job: Callable[[], None], *, download: bool = False) -> None:
        with self.link._idle:
            self.link._pending += 1
        self._jobs.append(job)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def run_next(self) -> None:
        self.link._run(self._jobs.popleft())
