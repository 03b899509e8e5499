"""Remote mode: the daemon's Hub client (`pvreal device run --hub URL --token T`, docs/device.md).

This module moves bytes and nothing else. Every decision (when a step is taken, how many retries,
whether a failed request fails a test) is the engine's; this client only:

- turns the engine's Hub commands into HTTP: `FetchMetadata` lists the step's objects,
  `FetchObject` downloads one (resuming its `.tmp` with a Range request, `pvreal.hub.client`),
  `ReportProgress` PUTs the record;
- talks to the Hub every PH_UPDATER_INTERVAL the way Pantavisor's Hub client does: while the
  engine accepts steps it asks for the pending ones (pantahub.c's idle state), while the engine
  watches the Hub (a remote update INPROGRESS or TESTING) it sends the device's metadata (the
  report state's requests); the daemon asks the engine which (`Updater.accepts_remote_steps`,
  `Updater.watches_hub`) and calls `tick`;
- feeds the answers back as the events shared/engine/driver.py's ANSWERS table names, through
  the daemon's queue (`post`): PendingSteps, MetadataReceived / MetadataFailed, ObjectFetched
  (ok, failed, hash mismatch), and HubReached / HubRequestFailed for the reports and the
  periodic requests.

No request runs on the engine's thread: Hub requests (polls, metadata, reports) go one at a time,
in order, through one worker thread, as Pantavisor's single Hub session does; downloads run in a
pool of PH_UPDATER_TRANSFER_MAX_COUNT threads. A Hub that is down, slow or answering nonsense is a
failed request and an event, never an exception in the daemon.

The device registers once with the fleet's token and keeps its id and secret in its storage
folder (`hub-credentials.json`, 0600); later starts log in with them. A report that did not reach
the Hub is sent again before the next periodic request (the latest record of each revision only),
so the Hub ends up with the device's last word once it answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pvreal.durable import atomic_write
from pvreal.hub.client import DeviceClient, HubClientError, ObjectHashMismatch
from pvreal.storage import Storage
from shared.engine.commands import Command, FetchMetadata, FetchObject, ReportProgress
from shared.engine.config import Config
from shared.engine.events import (
    Event,
    HubReached,
    HubRequestFailed,
    MetadataFailed,
    MetadataReceived,
    ObjectFetched,
    PendingSteps,
    Step,
    StorageStats,
)
from shared.engine.progress import PENDING_STATUSES, Progress
from shared.errors import PvError

log = logging.getLogger(__name__)
CREDENTIALS = "hub-credentials.json"
REQUEST_TIMEOUT_S = 60.0  # a request to a Hub that stopped answering fails after this
HUB_COMMANDS = (ReportProgress, FetchMetadata, FetchObject)
PENDING = tuple(sorted(s.value for s in PENDING_STATUSES))  # the steps query of every poll


class Credentials:
    """The device's identity on its Hub, kept in the storage folder (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.device: str | None = None
        self.secret = ""
        try:
            doc = json.loads(path.read_text())
            self.device, self.secret = doc.get("id"), str(doc["secret"])
        except (OSError, ValueError, KeyError, TypeError):
            self.secret = secrets.token_hex(24)  # registration sends it; saved once registered

    def save(self, hub: str) -> None:
        doc = {"hub": hub, "id": self.device, "secret": self.secret}
        atomic_write(self.path, json.dumps(doc, sort_keys=True).encode() + b"\n", mode=0o600)


class HubLink:
    """The Hub client of one device in remote mode (see the module docstring)."""

    def __init__(
        self,
        url: str,
        fleet_token: str,
        storage: Storage,
        config: Config,
        post: Callable[[Event], None],
        *,
        watching: Callable[[], bool] = lambda: True,
        nick: str | None = None,
        timeout: float | None = None,  # None: REQUEST_TIMEOUT_S
    ) -> None:
        self.url, self.fleet_token, self.nick = url, fleet_token, nick
        self.storage, self.config, self.post = storage, config, post
        # whether the engine watches the Hub now (Updater.watches_hub): a request's outcome
        # (HubReached / HubRequestFailed) is fed only then, as pvsim's fleet model feeds it;
        # in any other phase the engine ignores it (R5)
        self.watching = watching
        self._pending = 0  # requests queued or under way (`wait_idle`)
        self._idle = threading.Condition()
        self.credentials = Credentials(storage.root / CREDENTIALS)
        if timeout is None:
            timeout = REQUEST_TIMEOUT_S
        self.client = DeviceClient(url, self.credentials.device, timeout=timeout)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="pv-hub", daemon=True)
        self._downloads = ThreadPoolExecutor(
            max(1, config.transfer_max_count), thread_name_prefix="pv-hub-get"
        )
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()  # one registration, one login at a time
        self._urls: dict[str, str] = {}  # sha → the signed-geturl the step listed
        self._unsent: dict[str, Progress] = {}  # rev → its latest record the Hub has not got
        self._next_tick = -math.inf
        self._tick_queued = False
        self.requests = {"ok": 0, "refused": 0, "failed": 0}  # for status()
        self.last_error: str | None = None
        self._closed = False
        self._generation = 0  # bumped at every reboot: answers to an older boot's requests are lost

    # ------------------------------------------------------------------ the daemon's side

    def start(self) -> None:
        self._worker.start()

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._worker.join(5.0)  # a request under way ends with its timeout; nobody waits for it

    def execute(self, command: Command) -> None:
        """Queue a Hub command's request; its answer comes later as an event (D2)."""
        post = self._poster()
        if isinstance(command, ReportProgress):
            with self._lock:
                self._unsent[command.rev] = command.record
            self._queue(lambda: self._report(command.rev, command.record, post))
        elif isinstance(command, FetchMetadata):
            self._queue(lambda: self._metadata(command.rev, command.shas, post))
        elif isinstance(command, FetchObject):
            self._queue(lambda: self._fetch(command.sha, post), download=True)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued request has been answered (tests, a clean stop)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def rebooted(self) -> None:
        """The device rebooted: what its requests answer no longer reaches the new boot's engine
        (a real reboot ends every connection). Unsent reports stay: they are the device's word."""
        self._generation += 1
        self._next_tick = -math.inf

    def _poster(self) -> Callable[[Event], None]:
        generation = self._generation

        def post(event: Event) -> None:
            if generation != self._generation or self._closed:
                return
            if isinstance(event, HubReached | HubRequestFailed) and not self.watching():
                return
            self.post(event)

        return post

    def tick(self, *, accepts_steps: bool, watches_hub: bool, running_rev: str) -> None:
        """Called by the engine's thread whenever it wakes: every PH_UPDATER_INTERVAL, one
        periodic request of the kind the engine's phase calls for (none when it calls for none)."""
        now = time.monotonic()
        if now < self._next_tick or self._tick_queued or not (accepts_steps or watches_hub):
            return
        self._next_tick = now + self.config.updater_interval
        self._tick_queued = True
        post = self._poster()
        self._queue(lambda: self._periodic(watches_hub, running_rev, post))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"hub": self.url, "device": self.client.device, "requests": dict(self.requests),
                    "unsent_reports": sorted(self._unsent), "last_error": self.last_error}  # fmt: skip

    # ------------------------------------------------------------------ the worker

    def _queue(self, job: Callable[[], None], *, download: bool = False) -> None:
        with self._idle:
            self._pending += 1
        if download:
            self._downloads.submit(self._run, job)
        else:
            self._jobs.put(lambda: self._run(job))

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # a bug here must not end the Hub client (nor the daemon)
            log.exception("Hub client job failed")
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _call(self, request: Callable[[], Any]) -> Any:
        """One request with a session: register once, log in when there is no token or the Hub
        refused it (401). Raises HubClientError when the Hub cannot be reached or refuses."""
        try:
            self._session()
            try:
                answer = request()
            except HubClientError as exc:
                if exc.status != 401:
                    raise
                self.client.token = None  # expired or the Hub forgot it: log in again, once
                self._session()
                answer = request()
        except (HubClientError, OSError, KeyError, TypeError, ValueError) as exc:
            answered = isinstance(exc, HubClientError) and _answered(exc)
            with self._lock:
                self.requests["refused" if answered else "failed"] += 1
                self.last_error = str(exc)
            log.info("Hub request failed: %s", exc)
            if isinstance(exc, HubClientError):
                raise
            raise HubClientError(str(exc)) from None
        with self._lock:
            self.requests["ok"] += 1
        return answer

    def _session(self) -> None:
        client, creds = self.client, self.credentials
        with self._session_lock:
            if client.device is None:
                client.register(self.fleet_token, creds.secret, self.nick)
                creds.device = client.device
                creds.save(self.url)
                log.info("registered with the Hub at %s as %s", self.url, client.device)
            if client.token is None:
                client.login(creds.secret)

    def _report(self, rev: str, record: Progress, post: Callable[[Event], None]) -> None:
        with self._lock:
            if self._unsent.get(rev) is not record:
                return  # a later record of this revision was queued: it is sent instead
        answered = True
        try:
            self._call(lambda: self.client.put_progress(rev, record.to_json()))
        except HubClientError as exc:
            answered = _answered(exc)
        if answered:  # taken or refused (e.g. the factory revision 0, which is no Hub step)
            with self._lock:
                if self._unsent.get(rev) is record:
                    del self._unsent[rev]
        post(_outcome(answered))

    def _periodic(self, watches_hub: bool, running_rev: str, post: Callable[[Event], None]) -> None:
        self._tick_queued = False
        with self._lock:
            unsent = list(self._unsent.items())
        for rev, record in unsent:
            self._report(rev, record, post)
        if watches_hub:
            # the report state's request (pantahub.c: device metadata while an update is tried)
            answered = True
            try:
                self._call(lambda: self.client.put_meta({"pvtwin.running": running_rev}))
            except HubClientError as exc:
                answered = _answered(exc)
            post(_outcome(answered))
            return
        try:
            # every pending status, as Pantavisor asks (pantahub.c): a step this device took
            # before a crash (QUEUED, DOWNLOADING ...) is still its to finish
            listed = self._call(lambda: self.client.steps(PENDING))
        except HubClientError:
            return  # idle: a failed poll changes nothing; the next one asks again
        steps = sorted(listed, key=lambda s: int(s["rev"])) if isinstance(listed, list) else []
        if steps:
            post(PendingSteps((_step(steps[0]),)))  # the engine only looks at the oldest

    def _metadata(self, rev: str, shas: frozenset[str], post: Callable[[Event], None]) -> None:
        try:
            listed = self._call(lambda: self.client.step_objects(rev))
            found = {str(o["sha256sum"]): o for o in listed}
            sizes = {sha: int(found[sha]["size"]) for sha in shas}
        except (HubClientError, KeyError, TypeError, ValueError):
            post(MetadataFailed(rev))
            return
        with self._lock:
            self._urls.update({sha: str(found[sha].get("signed-geturl") or "") for sha in shas})
        space = self.storage.space()
        post(MetadataReceived(rev, sizes, StorageStats(space.total, space.free)))

    def _fetch(self, sha: str, post: Callable[[Event], None]) -> None:
        if self._closed:
            return
        with self._lock:
            url = self._urls.get(sha) or None
        try:
            self._call(lambda: self.client.download(sha, self.storage.objects.dir, url=url))
        except HubClientError as exc:
            post(ObjectFetched(sha, ok=False, hash_mismatch=isinstance(exc, ObjectHashMismatch)))
            return
        post(ObjectFetched(sha))


def _answered(exc: HubClientError) -> bool:
    """Pantavisor's Hub client counts any HTTP answer, whatever its status, as the Hub being
    responsive (pantahub_proto.c `_recv_buffer`); only a request that got no answer failed."""
    return exc.status > 0


def _outcome(answered: bool) -> Event:
    return HubReached() if answered else HubRequestFailed()


def _step(doc: dict[str, Any]) -> Step:
    """A pending step as the engine takes it: the raw state for it to parse, the Hub's record."""
    hub_progress = None
    with contextlib.suppress(PvError, TypeError, ValueError):
        hub_progress = Progress.from_json(doc.get("progress"), source="the Hub's step")
    return Step(str(doc["rev"]), raw=doc.get("state"), hub_progress=hub_progress)
