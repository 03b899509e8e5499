"""What the Hub does, without HTTP: devices and their trails, releases and their rollouts.

Every method takes already-decoded JSON and raises `HubError(status, message)` for anything a
client got wrong; the API layer only maps it to a response. Rollout decisions are asked of
`shared.rollout` (the Hub keeps the tally and acts); the controller's state is stored in the
`releases` row after every decision, so a restarted Hub carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pvreal.hub import auth
from pvreal.hub.objects import ObjectStore
from shared import canonical
from shared.engine.ctrl import state_depth_decision
from shared.engine.progress import FAILED_STATUSES, FINAL_STATUSES, Progress, Status
from shared.errors import PvError
from shared.rollout import (
    RUNNING,
    Controller,
    RolloutConfig,
    RolloutError,
    Tally,
    decide,
    make_controller,
    parse_options,
)
from shared.state import State, check_revision_name, is_sha256, parse_state

MAX_META_BYTES = 16 << 10  # one device's metadata, encoded
MAX_META_KEYS = 64
MAX_PROGRESS_BYTES = 64 << 10  # a progress record with its logs
_NICK_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}\Z")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}\Z")
SUCCEEDED, FAILED = "succeeded", "failed"


class HubError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def prn(device: str) -> str:
    return f"prn:::devices:/{device}"


def _object(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise HubError(400, f"{what} must be a JSON object")
    return doc


def _string(doc: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise HubError(400, f"{key} must be a string")
    return value


class Hub:
    def __init__(
        self,
        conn: sqlite3.Connection,
        objects: ObjectStore,
        *,
        device_token: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.objects = objects
        self.device_token = device_token
        self.clock = clock

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ devices: credentials

    # Hashing a secret takes tens of milliseconds on purpose: registration and login do it in a
    # worker thread so that the rest of the fleet is served meanwhile.

    async def register(self, given_token: str | None, doc: Any) -> dict[str, Any]:
        """A device joins with the pre-shared token and chooses its own secret (as on Pantahub);
        the Hub names it and keeps only the secret's hash."""
        if not auth.same_token(given_token, self.device_token):
            raise HubError(401, "registration needs the Hub's device token")
        doc = _object(doc, "registration")
        secret = _string(doc, "secret")
        assert secret is not None
        if not auth.MIN_SECRET <= len(secret) <= auth.MAX_SECRET:
            raise HubError(400, f"secret must be {auth.MIN_SECRET} to {auth.MAX_SECRET} characters")
        nick = _string(doc, "nick", required=False)
        if nick is not None and not _NICK_RE.match(nick):
            raise HubError(400, "nick must be 1-63 letters, digits or '._-'")
        secret_hash = await asyncio.to_thread(auth.hash_secret, secret)
        device, now = secrets.token_hex(12), self.clock()
        nick = nick or f"device-{device[:6]}"
        with self._tx() as c:
            c.execute(
                "INSERT INTO devices (id, nick, secret_hash, created) VALUES (?, ?, ?, ?)",
                (device, nick, secret_hash, now),
            )
        return self.device_info(device)

    async def login(self, doc: Any) -> dict[str, Any]:
        doc = _object(doc, "login")
        username, password = _string(doc, "username"), _string(doc, "password")
        assert username is not None and password is not None
        device = username.removeprefix(prn(""))
        row = self.conn.execute("SELECT secret_hash FROM devices WHERE id = ?", (device,)).fetchone()
        # an unknown device costs the same hashing, so timing does not tell which ids exist
        stored = row["secret_hash"] if row is not None else auth.decoy_hash()
        matches = await asyncio.to_thread(auth.check_secret, password, stored)
        if row is None or not matches:
            raise HubError(401, "unknown device or wrong secret")
        token, now = auth.new_token(), self.clock()
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            c.execute(
                "INSERT INTO sessions (token_hash, device, expires) VALUES (?, ?, ?)",
                (auth.token_hash(token), device, now + auth.SESSION_TTL_S),
            )
        return {"token": token, "token_type": "bearer", "device": device,
                "expires": iso(now + auth.SESSION_TTL_S)}  # fmt: skip

    def authenticate(self, token: str | None) -> str:
        """The device a session token belongs to; 401 for none, unknown or expired."""
        if token is None:
            raise HubError(401, "missing Authorization: Bearer <token>")
        now = self.clock()
        row = self.conn.execute(
            "SELECT device FROM sessions WHERE token_hash = ? AND expires >= ?",
            (auth.token_hash(token), now),
        ).fetchone()
        if row is None:
            raise HubError(401, "unknown or expired token: POST /auth/login again")
        self.conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, row["device"]))
        return str(row["device"])

    @staticmethod
    def own(device: str, asked: str) -> None:
        """A device reads and writes only its own device record and trail."""
        if asked != device:
            raise HubError(403, "a device may only use its own device record and trail")

    # ------------------------------------------------------------------ devices: records

    def device_info(self, device: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM devices WHERE id = ?", (device,)).fetchone()
        if row is None:
            raise HubError(404, "no such device")
        return {
            "id": row["id"], "prn": prn(row["id"]), "nick": row["nick"],
            "device-meta": json.loads(row["device_meta"]),
            "time-created": iso(row["created"]), "last-seen": iso(row["last_seen"]),
            "revision": row["revision"], "status": row["status"],
            "status-msg": row["status_msg"],
        }  # fmt: skip

    def put_meta(self, device: str, doc: Any) -> dict[str, Any]:
        """Merge string values into the device's metadata (Pantahub's device-meta: flat
        key/value pairs a device reports about itself); a null value deletes a key."""
        doc = _object(doc, "device-meta")
        row = self.conn.execute("SELECT device_meta FROM devices WHERE id = ?", (device,)).fetchone()
        meta: dict[str, Any] = json.loads(row["device_meta"])
        for key, value in doc.items():
            if not _META_KEY_RE.match(key):
                raise HubError(400, f"device-meta key {key[:40]!r} is not 1-128 of [A-Za-z0-9._/-]")
            if value is None:
                meta.pop(key, None)
            elif isinstance(value, str):
                meta[key] = value
            else:
                raise HubError(400, f"device-meta value of {key} must be a string or null")
        encoded = canonical.dumps(meta)
        if len(meta) > MAX_META_KEYS or len(encoded) > MAX_META_BYTES:
            raise HubError(413, f"device-meta over {MAX_META_KEYS} keys or {MAX_META_BYTES} B")
        with self._tx() as c:
            c.execute("UPDATE devices SET device_meta = ? WHERE id = ?", (encoded, device))
        return meta

    # ------------------------------------------------------------------ devices: the trail

    def _step_json(self, row: sqlite3.Row) -> dict[str, Any]:
        name = row["release"]
        return {
            "id": f"{row['device']}-{row['rev']}", "trail-id": row["device"], "rev": row["rev"],
            "device": prn(row["device"]),
            "commit-msg": f"release {name}" if name else "", "state": json.loads(row["state_json"]),
            "state-sha": row["state_sha"], "progress": json.loads(row["progress"]),
            "step-time": iso(row["step_time"]), "progress-time": iso(row["progress_time"]),
        }  # fmt: skip

    def steps(self, device: str, status: str | None = Status.NEW.value) -> list[dict[str, Any]]:
        """The device's steps it may see now, oldest first; by default the pending (NEW) ones,
        as Pantahub answers a device."""
        query = "SELECT * FROM steps WHERE device = ? AND visible_at <= ?"
        args: list[Any] = [device, self.clock()]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        rows = self.conn.execute(query + " ORDER BY rev", args).fetchall()
        return [self._step_json(r) for r in rows]

    def _step_row(self, device: str, rev_text: str) -> sqlite3.Row:
        try:
            check_revision_name(rev_text)
        except PvError as exc:
            raise HubError(400, str(exc)) from None
        if not rev_text.isdigit():
            raise HubError(400, "a Hub step revision is a number")
        row = self.conn.execute(
            "SELECT * FROM steps WHERE device = ? AND rev = ? AND visible_at <= ?",
            (device, int(rev_text), self.clock()),
        ).fetchone()
        if row is None:
            raise HubError(404, f"no step {rev_text} on this trail")
        return row

    def step(self, device: str, rev: str) -> dict[str, Any]:
        return self._step_json(self._step_row(device, rev))

    def step_state(self, device: str, rev: str) -> dict[str, Any]:
        return json.loads(self._step_row(device, rev)["state_json"])

    def step_objects(self, device: str, rev: str) -> list[dict[str, Any]]:
        """The objects a step names, with where to fetch each (Pantahub's signed-geturl)."""
        row = self._step_row(device, rev)
        state = parse_state(json.loads(row["state_json"]), source=f"step {rev}")
        sizes = self._sizes(state.object_shas())
        return [
            {"objectname": path, "sha256sum": sha, "size": sizes[sha],
             "signed-geturl": f"/trails/{device}/steps/{row['rev']}/objects/{sha}/blob"}
            for path, sha in sorted(state.objects.items())
        ]  # fmt: skip

    def step_object(self, device: str, rev: str, sha: str) -> dict[str, Any]:
        """One object of one of the device's steps; 404 for one the step does not name."""
        if not is_sha256(sha):
            raise HubError(400, "an object name is a lowercase sha256")
        for obj in self.step_objects(device, rev):
            if obj["sha256sum"] == sha and self.objects.has(sha):
                return obj
        raise HubError(404, f"step {rev} names no object {sha}")

    def _sizes(self, shas: frozenset[str]) -> dict[str, int]:
        marks = ",".join("?" * len(shas))
        rows = self.conn.execute(f"SELECT sha, size FROM objects WHERE sha IN ({marks})", tuple(shas))
        return {r["sha"]: r["size"] for r in rows}

    def offered_object(self, device: str, sha: str) -> dict[str, Any]:
        """An object the device may download: one named by a step on its own trail. Anything
        else is 404, whether it exists or not, so a device learns nothing of others' objects."""
        if not is_sha256(sha):
            raise HubError(400, "an object name is a lowercase sha256")
        row = self.conn.execute(
            "SELECT o.size FROM steps s JOIN release_objects r ON r.release = s.release "
            "JOIN objects o ON o.sha = r.sha WHERE s.device = ? AND r.sha = ? AND s.visible_at <= ?",
            (device, sha, self.clock()),
        ).fetchone()
        if row is None or not self.objects.has(sha):
            raise HubError(404, "no such object on this device's trail")
        return {"sha256sum": sha, "size": row["size"], "signed-geturl": f"/objects/{sha}/blob"}

    def put_progress(self, device: str, rev: str, doc: Any) -> dict[str, Any]:
        row = self._step_row(device, rev)
        doc = _object(doc, "progress")
        if len(canonical.dumps(doc)) > MAX_PROGRESS_BYTES:
            raise HubError(413, f"progress record over {MAX_PROGRESS_BYTES} B")
        try:
            progress = Progress.from_json(doc, source=f"PUT /trails/{device}/steps/{rev}/progress")
        except PvError as exc:
            raise HubError(400, str(exc)) from None
        now, status = self.clock(), progress.status
        with self._tx() as c:
            c.execute(
                "UPDATE steps SET progress = ?, status = ?, progress_time = ? WHERE device = ? AND rev = ?",
                (canonical.dumps(doc), status.value, now, device, row["rev"]),
            )
            done = status in FINAL_STATUSES and status not in FAILED_STATUSES
            c.execute(
                "UPDATE devices SET status = ?, status_msg = ?, revision = CASE WHEN ? THEN ? ELSE revision END WHERE id = ?",
                (status.value, progress.status_msg, done, row["rev"], device),
            )
            if row["release"] and status in FINAL_STATUSES:
                c.execute(
                    "UPDATE targets SET outcome = ?, outcome_at = ? WHERE release = ? AND device = ? "
                    "AND outcome IS NULL",
                    (FAILED if status in FAILED_STATUSES else SUCCEEDED, now, row["release"], device),
                )
        if row["release"] and status in FINAL_STATUSES:
            self.tick(row["release"])
        return doc

    # ------------------------------------------------------------------ operator: objects, releases

    def add_object(self, sha: str, size: int) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO objects (sha, size) VALUES (?, ?)", (sha, size))

    def create_release(self, doc: Any) -> dict[str, Any]:
        doc = _object(doc, "release")
        name = _string(doc, "name")
        try:
            check_revision_name(name)
        except PvError as exc:
            raise HubError(400, f"release name: {exc}") from None
        assert name is not None
        if self.conn.execute("SELECT 1 FROM releases WHERE name = ?", (name,)).fetchone():
            raise HubError(409, f"release {name} exists")
        state = self._check_state(doc.get("state"), name)
        strategy = _string(doc, "strategy", required=False) or "all-at-once"
        raw = doc.get("options", {})
        if not isinstance(raw, dict):
            raise HubError(400, "options must be a JSON object")
        try:
            options = parse_options(strategy, raw)
        except RolloutError as exc:
            raise HubError(400, str(exc)) from None
        missing = sorted(s for s in state.object_shas() if not self._stored(s))
        if missing:
            raise HubError(422, f"object {missing[0]} is not on the Hub ({len(missing)} missing): "
                                "PUT /operator/objects/<sha> first")  # fmt: skip
        now = self.clock()
        with self._tx() as c:
            devices = [r["id"] for r in c.execute("SELECT id FROM devices ORDER BY created, rowid")]
            controller = make_controller(RolloutConfig(strategy, options), len(devices))
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM releases").fetchone()[0]
            c.execute(
                "INSERT INTO releases (name, seq, state_json, state_sha, strategy, options, "
                "controller, fleet, created, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (name, seq, canonical.dumps(dict(state.entries)), state.digest, strategy,
                 canonical.dumps(options), json.dumps(controller.snapshot()), len(devices), now,
                 RUNNING),
            )  # fmt: skip
            c.executemany(
                "INSERT INTO release_objects (release, sha) VALUES (?, ?)",
                [(name, sha) for sha in sorted(state.object_shas())],
            )
            c.executemany(
                "INSERT INTO targets (release, device, position) VALUES (?, ?, ?)",
                [(name, d, k) for k, d in enumerate(devices)],
            )
        self.tick(name)
        return self.release_json(name)

    def _stored(self, sha: str) -> bool:
        known = self.conn.execute("SELECT 1 FROM objects WHERE sha = ?", (sha,)).fetchone()
        return known is not None and self.objects.has(sha)

    @staticmethod
    def _check_state(doc: Any, name: str) -> State:
        """pv-ctrl's checks on a state: an object, not nested too deep, a valid full state."""
        if not isinstance(doc, dict):
            raise HubError(400, "state must be a JSON object")
        shallow = state_depth_decision(doc)
        if not shallow.accepted:
            raise HubError(shallow.status, shallow.reason or "state nests too deep")
        try:
            return parse_state(doc, source=f"release {name}")
        except PvError as exc:
            raise HubError(422, str(exc)) from None

    # ------------------------------------------------------------------ operator: the rollout

    def _release_row(self, name: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM releases WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise HubError(404, f"no release {name!r}")
        return row

    def _controller(self, row: sqlite3.Row) -> Controller:
        cfg = RolloutConfig(row["strategy"], json.loads(row["options"]))
        controller = make_controller(cfg, row["fleet"])
        controller.restore(json.loads(row["controller"]))
        return controller

    def tally(self, name: str) -> Tally:
        row = self.conn.execute(
            "SELECT r.fleet, COUNT(t.admitted_at) AS admitted, "
            "COALESCE(SUM(t.outcome = ?), 0) AS ok, COALESCE(SUM(t.outcome = ?), 0) AS bad "
            "FROM releases r LEFT JOIN targets t ON t.release = r.name WHERE r.name = ?",
            (SUCCEEDED, FAILED, name),
        ).fetchone()
        return Tally(row["fleet"], row["admitted"], row["ok"], row["bad"])

    def tick(self, name: str, action: Callable[[Controller, float], None] | None = None) -> str:
        """Apply an operator action (if any), ask the controller, admit what it says, store it."""
        now = self.clock()
        with self._tx() as c:
            row = self._release_row(name)
            controller = self._controller(row)
            if action is not None:
                action(controller, now)
            decision = decide(controller, now, self.tally(name))
            waiting = c.execute(
                "SELECT device, position FROM targets WHERE release = ? AND admitted_at IS NULL "
                "ORDER BY position LIMIT ?",
                (name, decision.admit),
            ).fetchall()
            for target in waiting:
                self._offer(row, target["device"], now + controller.start_delay(target["position"], now), now)
            c.execute(
                "UPDATE releases SET controller = ?, status = ?, wake_at = ? WHERE name = ?",
                (json.dumps(controller.snapshot()), decision.state, decision.wake_at, name),
            )
        return decision.state

    def _offer(self, release: sqlite3.Row, device: str, visible_at: float, now: float) -> None:
        rev = self.conn.execute(
            "SELECT COALESCE(MAX(rev), 0) + 1 FROM steps WHERE device = ?", (device,)
        ).fetchone()[0]
        progress = canonical.dumps({"status": Status.NEW.value, "status-msg": "", "progress": 0})
        self.conn.execute(
            "INSERT INTO steps (device, rev, release, state_json, state_sha, progress, status, "
            "step_time, visible_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (device, rev, release["name"], release["state_json"], release["state_sha"], progress,
             Status.NEW.value, now, visible_at),
        )  # fmt: skip
        self.conn.execute(
            "UPDATE targets SET admitted_at = ? WHERE release = ? AND device = ?",
            (now, release["name"], device),
        )

    def operate(self, name: str, action: str) -> dict[str, Any]:
        actions: dict[str, Callable[[Controller, float], None]] = {
            "pause": Controller.pause, "resume": Controller.resume, "abort": Controller.abort,
        }  # fmt: skip
        if action not in actions:
            raise HubError(404, f"unknown action {action!r}")
        state = self._release_row(name)["status"]
        if state not in ("running", "paused"):
            raise HubError(409, f"release {name} is {state}")
        self.tick(name, actions[action])
        return self.release_json(name)

    def tick_due(self) -> None:
        """Wake the running releases whose controller asked to be asked again by now."""
        rows = self.conn.execute(
            "SELECT name FROM releases WHERE status = ? AND wake_at IS NOT NULL AND wake_at <= ?",
            (RUNNING, self.clock()),
        ).fetchall()
        for row in rows:
            self.tick(row["name"])

    # ------------------------------------------------------------------ operator: what is going on

    def release_json(self, name: str) -> dict[str, Any]:
        row, tally = self._release_row(name), self.tally(name)
        return {
            "name": name, "state": row["status"], "strategy": row["strategy"],
            "options": json.loads(row["options"]), "fleet": tally.fleet,
            "admitted": tally.admitted, "succeeded": tally.succeeded, "failed": tally.failed,
            "in_flight": tally.in_flight, "created": iso(row["created"]),
            "state-sha": row["state_sha"],
        }  # fmt: skip

    def status(self) -> dict[str, Any]:
        names = [r["name"] for r in self.conn.execute("SELECT name FROM releases ORDER BY seq")]
        devices = [
            {"id": r["id"], "nick": r["nick"], "revision": r["revision"], "status": r["status"],
             "status-msg": r["status_msg"], "last-seen": iso(r["last_seen"])}
            for r in self.conn.execute("SELECT * FROM devices ORDER BY created, rowid")
        ]  # fmt: skip
        return {"releases": [self.release_json(n) for n in names], "devices": devices}

    def adoption(self) -> dict[str, dict[str, Any]]:
        """Per release: seconds since its creation (`elapsed`) and, at each success, [seconds
        since creation, devices succeeded so far] (`points`)."""
        now, series = self.clock(), {}
        for rel in self.conn.execute("SELECT name, created FROM releases ORDER BY seq").fetchall():
            times = self.conn.execute(
                "SELECT outcome_at FROM targets WHERE release = ? AND outcome = ? ORDER BY outcome_at",
                (rel["name"], SUCCEEDED),
            ).fetchall()
            points = [[round(t["outcome_at"] - rel["created"], 3), k + 1] for k, t in enumerate(times)]
            series[rel["name"]] = {"elapsed": round(now - rel["created"], 3), "points": points}
        return series
