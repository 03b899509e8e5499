"""The update progress record (pantavisor.md §3.2): statuses, their fixed numbers, the messages.

A record is stored at `trails/<rev>/.pv/progress` and PUT to the Hub. Its JSON keys are exactly
Pantavisor's: `status`, `status-msg`, `progress`, `retries`, and optionally `logs` and `downloads`.
Records are immutable values; the engine builds a new one for every status change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from shared.errors import InvalidJson


class Status(StrEnum):
    NEW = "NEW"
    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    INPROGRESS = "INPROGRESS"
    TESTING = "TESTING"
    UPDATED = "UPDATED"
    DONE = "DONE"
    WONTGO = "WONTGO"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"


PROGRESS_NUMBER: Mapping[Status, int] = {
    Status.NEW: 0,
    Status.QUEUED: 5,
    Status.DOWNLOADING: 25,
    Status.INPROGRESS: 50,
    Status.TESTING: 75,
    Status.UPDATED: 100,
    Status.DONE: 100,
    Status.WONTGO: 100,
    Status.ERROR: 100,
    Status.UNKNOWN: 0,
}

FINAL_STATUSES = frozenset({Status.DONE, Status.UPDATED, Status.WONTGO, Status.ERROR})
FAILED_STATUSES = frozenset({Status.WONTGO, Status.ERROR})


def statuses_ending_wait(until: Status) -> frozenset[Status]:
    """The statuses at which someone waiting for `until` can stop: every final one, except that
    UPDATED (a non-reboot update, pv_try still set) becomes DONE at the next boot, so a wait for
    DONE goes on through it."""
    if until is Status.DONE:
        return FINAL_STATUSES - {Status.UPDATED}
    return FINAL_STATUSES


# What the Hub lists as pending (§3.3 step 1).
PENDING_STATUSES = frozenset(
    {Status.NEW, Status.DOWNLOADING, Status.INPROGRESS, Status.TESTING, Status.QUEUED}
)


class Msg:
    """Every status message the engine emits, word for word (§3.2 table)."""

    NOT_INSTALLED = "Update not yet installed"
    READY_TO_RUN = "Update ready to be run"
    REBOOTING = "Rebooting"
    TRANSITIONING = "Transitioning to new revision without rebooting"
    TRYING = "Trying new revision"
    TESTING_REBOOT = "Awaiting to set rollback point if update is stable"
    TESTING_NON_REBOOT = "Awaiting to see if update is stable"
    TESTING_STABLE = "Waiting for all containers to become stable"
    UPDATED = "Update finished, revision not set as rollback point"
    DONE = "Update finished, revision set as rollback point"
    FACTORY = "Factory revision"
    MAX_RETRIES = "Max update processing retries reached"
    MAX_DOWNLOAD_RETRIES = "Max download update retries reached"
    BAD_FORMAT = "State JSON has bad format"
    NOT_FOUND = "State JSON not found"
    INTERNAL = "Internal error"
    OBJECT_VALIDATION = "Object validation went wrong"
    HUB_NOT_REACHABLE = "Hub not reachable"
    HUB_NOT_STABLE = "Hub communication not stable"
    GOAL_NOT_REACHED = "Status goal not reached"
    CONTAINER_FAILED = "A container could not be started"
    UNEXPECTED_ROLLBACK = "Unexpected rollback"
    # Signature verification outcomes (§1.8); they go into WONTGO (intake) or ERROR (boot).
    SIG_NOT_COVERED = "State not fully covered by signatures"
    SIG_FAILED = "Signature validation failed"
    SIG_UNKNOWN = "Unknown error"

    @staticmethod
    def retried(retries: int, of: int) -> str:
        return f"Retried {retries} of {of}"

    @staticmethod
    def metadata_retry(retries: int, of: int) -> str:
        return f"Downloading update metadata, retry {retries} of {of}"

    @staticmethod
    def download_retry(retries: int, of: int) -> str:
        return f"Downloading update artifacts, retry {retries} of {of}"

    @staticmethod
    def space_required(required: int, available: int) -> str:
        return f"Space required {required} B, available {available} B"


@lru_cache(maxsize=8192)
def _make(status: Status, msg: str, retries: int) -> Progress:
    return Progress(status, msg, PROGRESS_NUMBER[status], retries)


@dataclass(frozen=True, slots=True)
class Downloads:
    """`downloads.total` of a DOWNLOADING record; times are whatever clock the backend uses."""

    total_size: int
    total_downloaded: int
    start_time: int = 0
    current_time: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "total": {
                "object_name": "total",
                "object_id": "none",
                "total_size": self.total_size,
                "total_downloaded": self.total_downloaded,
                "start_time": self.start_time,
                "current_time": self.current_time,
            }
        }


@dataclass(frozen=True, slots=True)
class Progress:
    status: Status
    status_msg: str
    progress: int
    retries: int = 0
    logs: str | None = None
    downloads: Downloads | None = None

    @classmethod
    def make(cls, status: Status, msg: str, retries: int = 0) -> Progress:
        """A record with the fixed progress number of `status` (shared: records are values)."""
        return _make(status, msg, retries)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def is_failed(self) -> bool:
        return self.status in FAILED_STATUSES

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": self.status.value,
            "status-msg": self.status_msg,
            "progress": self.progress,
            "retries": self.retries,
        }
        # _ser_progress's key order: downloads (DOWNLOADING only) before logs
        if self.downloads is not None and self.status is Status.DOWNLOADING:
            doc["downloads"] = self.downloads.to_json()
        if self.logs is not None:
            doc["logs"] = self.logs
        return doc

    @classmethod
    def from_json(cls, doc: Any, *, source: str | None = None) -> Progress:
        """Read a stored record; a bad one raises InvalidJson naming `source` and the key."""
        if not isinstance(doc, Mapping):
            raise InvalidJson("progress must be a JSON object", source=source)
        status_text: Any = doc.get("status")  # any JSON value: Status() rejects a non-member
        try:
            status = Status(status_text)
        except ValueError:
            raise InvalidJson(
                f"unknown status {status_text!r}; expected one of "
                + ", ".join(s.value for s in Status),
                source=source,
                key="status",
            ) from None
        msg = doc.get("status-msg", "")
        if not isinstance(msg, str):
            raise InvalidJson("status-msg must be a string", source=source, key="status-msg")
        number, retries = doc.get("progress", PROGRESS_NUMBER[status]), doc.get("retries", 0)
        for key, value in (("progress", number), ("retries", retries)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidJson(f"{key} must be an integer", source=source, key=key)
        logs = doc.get("logs")
        if logs is not None and not isinstance(logs, str):
            raise InvalidJson("logs must be a string", source=source, key="logs")
        return cls(status, msg, number, retries, logs)
