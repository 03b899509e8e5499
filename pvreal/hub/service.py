"""What the Hub does, without HTTP: devices and their trails, releases and their rollouts.

Every method takes already-decoded JSON and raises `HubError(status, message)` for anything a
client got wrong; the API layer only maps it to a response. Rollout decisions are asked of
`shared.rollout` (the Hub keeps the tally and acts); the controller's state is stored in the
`releases` row after every decision, so a restarted Hub carries on where it stopped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from pvreal.hub.base import (
    FAILED,
    SUCCEEDED,
    HubError,
    iso,
    json_object,
    json_string,
)
from pvreal.hub.devices import DeviceSide
from shared import canonical
from shared.engine.ctrl import state_depth_decision
from shared.engine.progress import Status
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
from shared.rollout.silent import SilentDevices
from shared.state import State, check_revision_name, parse_state


class Hub(DeviceSide):
    """The whole Hub: the device side (pvreal.hub.devices) and, here, the operator side:
    objects, releases and their rollouts, and what the dashboard shows."""

    # ------------------------------------------------------------------ operator: objects, releases

    def add_object(self, sha: str, size: int) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO objects (sha, size) VALUES (?, ?)", (sha, size))

    def create_release(self, doc: Any) -> dict[str, Any]:
        doc = json_object(doc, "release")
        name = json_string(doc, "name")
        try:
            check_revision_name(name)
        except PvError as exc:
            raise HubError(400, f"release name: {exc}") from None
        assert name is not None
        if self.conn.execute("SELECT 1 FROM releases WHERE name = ?", (name,)).fetchone():
            raise HubError(409, f"release {name} exists")
        state = self._check_state(doc.get("state"), name)
        strategy = json_string(doc, "strategy", required=False) or "all-at-once"
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
        """Time passed: count silent devices failed, and wake the running releases whose
        controller asked to be asked again by now."""
        for name in self.expire_silent():
            self.tick(name)
        rows = self.conn.execute(
            "SELECT name FROM releases WHERE status = ? AND wake_at IS NOT NULL AND wake_at <= ?",
            (RUNNING, self.clock()),
        ).fetchall()
        for row in rows:
            self.tick(row["name"])

    def expire_silent(self) -> list[str]:
        """The silent-device rule (shared.rollout.silent) on every unfinished release: a device
        that took the release and sent no final report within `device_timeout_s` is counted
        failed, once; a report that comes later finds its outcome set and is not counted again.
        Returns the releases that counted someone, whose controller must be asked again."""
        now, changed = self.clock(), []
        for row in self.conn.execute(
            "SELECT name, options FROM releases WHERE status IN ('running', 'paused')"
        ).fetchall():
            books = SilentDevices(float(json.loads(row["options"]).get("device_timeout_s", 0)))
            if not books.enabled:
                continue
            waiting = self.conn.execute(
                "SELECT position, taken_at FROM targets WHERE release = ? AND taken_at IS NOT NULL "
                "AND outcome IS NULL ORDER BY taken_at, position",
                (row["name"],),
            ).fetchall()
            for target in waiting:
                books.took(target["position"], target["taken_at"])
            expired = books.expire(now)
            if expired:
                with self._tx() as c:
                    c.executemany(
                        "UPDATE targets SET outcome = ?, outcome_at = ?, timed_out = 1 "
                        "WHERE release = ? AND position = ? AND outcome IS NULL",
                        [(FAILED, now, row["name"], k) for k in expired],
                    )
                changed.append(row["name"])
        return changed

    # ------------------------------------------------------------------ operator: what is going on

    def release_json(self, name: str) -> dict[str, Any]:
        row, tally = self._release_row(name), self.tally(name)
        return {
            "name": name, "state": row["status"], "strategy": row["strategy"],
            "options": json.loads(row["options"]), "fleet": tally.fleet,
            "admitted": tally.admitted, "succeeded": tally.succeeded, "failed": tally.failed,
            "in_flight": tally.in_flight, "timed_out": self._timed_out(name),
            "created": iso(row["created"]),
            "state-sha": row["state_sha"],
        }  # fmt: skip

    def _timed_out(self, name: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM targets WHERE release = ? AND timed_out = 1", (name,)
        ).fetchone()
        return int(row[0])

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
