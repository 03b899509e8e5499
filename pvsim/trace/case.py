"""Trace cases: one scripted device in a TOML file, validated before anything runs.

A case says what the device holds when it powers on (`[disk]`, `[revisions.*]`), how the world
behaves (`[world]`), which engine it runs (`ordering`, `latch`, `[config]`), and then a list of
`[[step]]`s, each one thing that happens. docs/trace.md documents every key; the defaults live
here. A bad case is reported as `<file>: key '<dotted.key>': <what was expected>`.
"""

from __future__ import annotations

import hashlib
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# one way to name pydantic errors and to read TOML text for every file pvsim validates
from pvsim.scenario import check_engine_keys, error_key, toml_text
from shared.engine.config import Config
from shared.engine.ctrl import Op
from shared.engine.progress import Progress, Status
from shared.errors import PvError
from shared.state import State, parse_state

CONTAINER_EVENTS = ("mounted", "started", "ready", "exited")
HUB_ACTIONS = ("reached", "failed", "down", "up")


class TraceCaseError(PvError):
    """A trace case that cannot be run; the message names the file and the dotted key."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Record(_Table):
    """A progress record (`.pv/progress`, or the Hub's copy of a step)."""

    status: Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]
    message: str = ""
    retries: int = Field(0, ge=0)

    def progress(self) -> Progress:
        return Progress.make(Status(self.status), self.message, self.retries)


class Revision(_Table):
    """A small revision: a BSP and one container `app` in group `app`. A new `kernel` makes an
    update of it a reboot update; a new `app` only a non-reboot one."""

    kernel: str = "k1"
    app: str = "a1"
    app_goal: Literal["MOUNTED", "STARTED", "READY"] = "STARTED"
    app_restart_policy: Literal["container", "system"] = "container"
    app_recovery: dict[str, Any] | None = None  # the container's own auto_recovery
    group_recovery: dict[str, Any] | None = None  # the group's auto_recovery
    group_timeout: int = Field(60, ge=0)
    # on the device's disk at power-on: its trail and objects (a revision only offered is not)
    on_disk: bool = False
    progress: Record | None = None  # its .pv/progress on disk
    done: bool = False  # its .pv/done marker

    @cached_property
    def state(self) -> State:
        return build_revision(self)


class Disk(_Table):
    pv_rev: str = "1"
    pv_try: str = ""
    total: int = Field(1 << 30, gt=0)  # bytes of the storage partition
    used_by_others: int = Field(0, ge=0)  # logs, disks: bytes not in the object pool


class World(_Table):
    """How the world answers. `rev:container` names a container of one revision."""

    crashes: tuple[str, ...] = ()  # exits one second after each start
    never_ready: tuple[str, ...] = ()  # starts but never signals ready
    fails_to_start: tuple[str, ...] = ()  # cannot be started at all
    panics: tuple[str, ...] = ()  # revisions whose kernel panics at boot
    corrupt: tuple[str, ...] = ()  # revisions whose objects the Hub serves corrupted
    hub: Literal["up", "down"] = "up"  # down: every Hub request fails
    metadata_failures: int = Field(0, ge=0)  # the next N metadata requests fail
    object_failures: int = Field(0, ge=0)  # the next N object transfers fail
    object_size: int = Field(1000, gt=0)  # bytes of each object

    @field_validator("crashes", "never_ready", "fails_to_start")
    @classmethod
    def _rev_container(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if value.count(":") < 1 or not value.rsplit(":", 1)[1]:
                raise ValueError(f"{value!r}: expected REV:CONTAINER, e.g. \"2:app\"")
        return values


class TraceStep(_Table):
    """One thing that happens. Exactly one action key; `cut_before_write` / `cut_inside_write`
    (1-based) cut the power at that durable write of this step's processing."""

    offer: str | None = None  # the Hub lists this revision as its pending step
    signature_error: str | None = None  # with offer: the backend's signature verdict
    hub_progress: Record | None = None  # with offer: the Hub's copy (default: what it was told)
    bad_format: bool = False  # with offer: the state JSON does not parse
    ctrl: str | None = None  # a pv-ctrl command (op name)
    payload: str = ""  # with ctrl: the revision of LOCAL_RUN(_COMMIT)
    upload: str | None = None  # pv-ctrl PUT /steps/locals/<name>: a local revision arrives
    hub: Literal[HUB_ACTIONS] | None = None  # type: ignore[valid-type]
    container: str | None = None  # a container of the running revision...
    event: Literal[CONTAINER_EVENTS] | None = None  # type: ignore[valid-type]  # ...does this
    uptime: float = Field(0.0, ge=0)  # with container exited: seconds it ran
    timer: str | None = None  # this armed timer fires now
    wait: float | None = Field(None, gt=0)  # seconds pass: timers, containers, Hub polls
    settle: bool = False  # run until nothing more happens (as wait, without an end)
    power_cut: bool = False  # the power goes now; the device boots again
    world: World | None = None  # the world changes from now on
    cut_before_write: int | None = Field(None, ge=1)
    cut_inside_write: int | None = Field(None, ge=1)
    note: str = ""

    @model_validator(mode="after")
    def _one_action(self) -> TraceStep:
        actions = [
            name
            for name in ("offer", "ctrl", "upload", "hub", "container", "timer", "wait", "world")
            if getattr(self, name) is not None
        ] + [name for name in ("settle", "power_cut") if getattr(self, name)]
        if len(actions) != 1:
            raise ValueError(
                "a step does exactly one thing: one of offer, ctrl, upload, hub, container, "
                f"timer, wait, settle, power_cut, world (found: {', '.join(actions) or 'none'})"
            )
        for key, needs in (
            ("signature_error", "offer"), ("hub_progress", "offer"), ("bad_format", "offer"),
            ("payload", "ctrl"), ("event", "container"), ("uptime", "container"),
        ):
            if getattr(self, key) and getattr(self, needs) is None:
                raise ValueError(f"{key}: only with {needs}")
        if self.container is not None and self.event is None:
            raise ValueError("event: a container step needs an event (" + ", ".join(CONTAINER_EVENTS) + ")")
        if self.ctrl is not None and Op.parse(self.ctrl) is None:
            raise ValueError(f"ctrl: unknown pv-ctrl command {self.ctrl!r}")
        if self.cut_before_write and self.cut_inside_write:
            raise ValueError("cut_inside_write: give cut_before_write or cut_inside_write, not both")
        return self


class TraceCase(_Table):
    description: str = ""
    c_function: str = ""  # where the behaviour was read (corpus cases: "file: function")
    ordering: Literal["faithful", "hardened"] = "faithful"
    latch: Literal["single-shot", "counter"] = "single-shot"
    config: dict[str, float | int | str | bool] = Field(default_factory=dict)
    disk: Disk = Disk()
    revisions: dict[str, Revision] = Field(default_factory=dict)
    world: World = World()
    step: tuple[TraceStep, ...] = ()

    @field_validator("config")
    @classmethod
    def _config_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        return check_engine_keys(values)

    @model_validator(mode="after")
    def _names_known(self) -> TraceCase:
        revs = self.revisions
        for name, revision in revs.items():
            try:
                revision.state  # noqa: B018  # parsed once, here, so a bad one is named
            except ValueError as exc:
                raise ValueError(f"revisions.{name}: {exc}") from None
        for key, rev in (("disk.pv_rev", self.disk.pv_rev), ("disk.pv_try", self.disk.pv_try)):
            if rev and rev not in revs:
                raise ValueError(f"{key}: revision {rev!r} is not in [revisions]")
            if rev and not revs[rev].on_disk:
                raise ValueError(f"{key}: revision {rev!r} must have on_disk = true")
        for i, step in enumerate(self.step):
            named = step.offer or step.upload  # a ctrl payload may name a missing revision
            if named and named not in revs:
                raise ValueError(f"step[{i}]: revision {named!r} is not in [revisions]")
        return self

    def config_for(self, ordering: str | None = None) -> Config:
        return Config.from_mapping(
            {
                **self.config,
                "PVTWIN_ORDERING": ordering or self.ordering,
                "PVTWIN_BOOT_LATCH": self.latch,
            }
        )


def validate_case(data: dict[str, Any], source: str) -> TraceCase:
    try:
        return TraceCase.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        key, message = error_key(dict(errors[0]))
        raise TraceCaseError(message, source=source, key=key) from None


def load_case(path: str | Path) -> TraceCase:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceCaseError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = tomllib.loads(toml_text(raw, str(path)))
    except tomllib.TOMLDecodeError as exc:
        raise TraceCaseError(f"not valid TOML: {exc}", source=str(path)) from None
    return validate_case(data, str(path))


# ----------------------------------------------------------------------------- revisions


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_revision(rev: Revision) -> State:
    group: dict[str, Any] = {
        "name": "app",
        "status_goal": "STARTED",
        "restart_policy": "container",
        "timeout": rev.group_timeout,
    }
    if rev.group_recovery is not None:
        group["auto_recovery"] = rev.group_recovery
    run: dict[str, Any] = {
        "#spec": "service-manifest-run@1",
        "config": "lxc.container.conf",
        "drivers": {"manual": [], "optional": [], "required": []},
        "group": "app",
        "name": "app",
        "restart_policy": rev.app_restart_policy,
        "root-volume": "root.squashfs",
        "status_goal": rev.app_goal,
        "storage": {"lxc-overlay": {"persistence": "boot"}},
        "type": "lxc",
        "volumes": [],
    }
    if rev.app_recovery is not None:
        run["auto_recovery"] = rev.app_recovery
    try:
        return parse_state(
            {
                "#spec": "pantavisor-service-system@1",
                "bsp/run.json": {"linux": "kernel.img", "initrd": "pantavisor", "addons": []},
                "bsp/kernel.img": _sha("kernel " + rev.kernel),
                "bsp/pantavisor": _sha("pantavisor " + rev.kernel),
                "device.json": {"groups": [group]},
                "app/run.json": run,
                "app/root.squashfs": _sha("app " + rev.app),
                "app/lxc.container.conf": _sha("app conf"),
            },
            source="trace revision",
        )
    except PvError as exc:
        raise ValueError(exc.message) from None
