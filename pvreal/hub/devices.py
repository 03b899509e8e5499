"""The Hub's device side: registration and login, device records and metadata, each device's
trail (its steps, their state and objects) and its progress reports."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import Collection
from typing import Any

from pvreal.hub import auth
from pvreal.hub.base import (
    FAILED,
    MAX_META_BYTES,
    MAX_META_KEYS,
    MAX_PROGRESS_BYTES,
    META_KEY_RE,
    NICK_RE,
    SUCCEEDED,
    HubBase,
    HubError,
    iso,
    json_object,
    json_string,
    prn,
)
from shared import canonical
from shared.engine.progress import FAILED_STATUSES, FINAL_STATUSES, Progress, Status
from shared.errors import PvError
from shared.state import check_revision_name, is_sha256, parse_state


class DeviceSide(HubBase):
    # ------------------------------------------------------------------ devices: credentials

    # Hashing a secret takes tens of milliseconds on purpose: registration and login do it in a
    # worker thread so that the rest of the fleet is served meanwhile.

    async def register(self, given_token: str | None, doc: Any) -> dict[str, Any]:
        """A device joins with the pre-shared token and chooses its own secret (as on Pantahub);
        the Hub names it and keeps only the secret's hash."""
        if not auth.same_token(given_token, self.device_token):
            raise HubError(401, "registration needs the Hub's device token")
        doc = json_object(doc, "registration")
        secret = json_string(doc, "secret")
        assert secret is not None
        if not auth.MIN_SECRET <= len(secret) <= auth.MAX_SECRET:
            raise HubError(400, f"secret must be {auth.MIN_SECRET} to {auth.MAX_SECRET} characters")
        nick = json_string(doc, "nick", required=False)
        if nick is not None and not NICK_RE.match(nick):
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
        doc = json_object(doc, "login")
        username, password = json_string(doc, "username"), json_string(doc, "password")
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
        doc = json_object(doc, "device-meta")
        row = self.conn.execute("SELECT device_meta FROM devices WHERE id = ?", (device,)).fetchone()
        meta: dict[str, Any] = json.loads(row["device_meta"])
        for key, value in doc.items():
            if not META_KEY_RE.match(key):
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

    def steps(
        self, device: str, statuses: Collection[str] | None = (Status.NEW.value,)
    ) -> list[dict[str, Any]]:
        """The device's steps it may see now, oldest first, whose progress status is one of
        `statuses` (None: any); by default the NEW ones, as Pantahub answers a device."""
        query = "SELECT * FROM steps WHERE device = ? AND visible_at <= ?"
        args: list[Any] = [device, self.clock()]
        if statuses is not None:
            query += f" AND status IN ({', '.join('?' * len(statuses))})"
            args.extend(statuses)
        rows = self.conn.execute(query + " ORDER BY rev", args).fetchall()
        self._taken(device, [r["release"] for r in rows if r["release"] and r["status"] == Status.NEW.value])
        return [self._step_json(r) for r in rows]

    def _taken(self, device: str, releases: list[str]) -> None:
        """The device saw these releases' steps pending: it took them now, which starts the
        silent-device clock (as pvsim's Hub starts it at the device's first poll)."""
        if releases:
            with self._tx() as c:
                c.executemany(
                    "UPDATE targets SET taken_at = ? WHERE release = ? AND device = ? AND taken_at IS NULL",
                    [(self.clock(), name, device) for name in releases],
                )

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
        doc = json_object(doc, "progress")
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
            c.execute(
                "INSERT INTO progress_log (device, rev, status, status_msg, at) VALUES (?,?,?,?,?)",
                (device, row["rev"], status.value, progress.status_msg, now),
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
