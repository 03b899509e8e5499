"""Scenario files: one flat TOML document per experiment, validated before anything runs.

Tables: [fleet], [device], [faults], [[release]], [rollout], [update_model], [run]. Every key, its
unit and its default is documented in docs/scenarios.md; the defaults live here and only here.
A bad value is reported as `<file>: <dotted.key>: <what was expected>` and nothing is simulated.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from pvsim.dists import Dist, DistField, parse_dist
from shared.errors import PvError

DEFECTS = (
    "none",
    "corrupt_object",
    "bad_signature",
    "kernel_panic",
    "container_crash",
    "never_ready",
    "breaks_network",
)
STRATEGIES = ("all-at-once", "canary", "groups", "exponential", "max-unavailable", "maintenance-window")
UPDATE_MODELS = ("pantavisor", "ab-image", "ab-delta")


class ScenarioError(PvError):
    """A scenario file that cannot be simulated; the message names the file and the dotted key."""

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        return ": ".join([*parts, self.message])


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


class Fleet(_Table):
    devices: int = Field(1000, ge=1, le=10_000_000)
    seed: int = Field(1, ge=0)  # numpy's generators take only non-negative seeds
    poll_interval_s: float = Field(60.0, gt=0)
    hub_egress_mbit_s: float = Field(10_000.0, ge=0)  # 0: unlimited


class Device(_Table):
    boot_s: DistField = Dist("lognormal", 20.0, 0.3)
    container_start_s: DistField = Dist("lognormal", 2.0, 0.5)
    storage_write_mb_s: DistField = Dist("lognormal", 20.0, 0.5)
    storage_latency_s: DistField = Dist("lognormal", 0.01, 0.5)
    link_mbit_s: DistField = Dist("lognormal", 8.0, 1.0)
    free_storage_mb: DistField = Dist("uniform", 500.0, 4000.0)
    ready_s: DistField = Dist("lognormal", 5.0, 0.5)
    env_write_s: DistField = Dist("lognormal", 0.2, 0.5)


class HubOutage(_Table):
    at_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class Faults(_Table):
    power_cuts_per_device_day: float = Field(0.0, ge=0)
    power_outage_s: DistField = Dist("uniform", 5.0, 300.0)
    first_boot_power_cut_probability: float = 0.0
    storage_write_error_probability: float = 0.0
    disk_full_fraction: float = 0.0
    network_loss_probability: float = 0.0
    network_outages_per_device_day: float = Field(0.0, ge=0)
    network_outage_s: DistField = Dist("lognormal", 600.0, 1.0)
    slow_link_fraction: float = 0.0
    slow_link_factor: float = Field(20.0, ge=1)
    hub_outages: tuple[HubOutage, ...] = ()
    hub_outages_per_day: float = Field(0.0, ge=0)
    hub_outage_s: DistField = Dist("uniform", 30.0, 600.0)

    _fractions = field_validator(
        "first_boot_power_cut_probability",
        "storage_write_error_probability",
        "disk_full_fraction",
        "network_loss_probability",
        "slow_link_fraction",
    )(_fraction)


class Release(_Table):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    at_s: float = Field(0.0, ge=0)
    parts: tuple[str, ...] = ("app:web",)
    size_mb: float = Field(20.0, gt=0)
    defect: Literal[DEFECTS] = "none"  # type: ignore[valid-type]
    defect_fraction: float = 1.0
    major: bool = False

    _fractions = field_validator("defect_fraction")(_fraction)

    @field_validator("parts")
    @classmethod
    def _parts_known(cls, parts: tuple[str, ...]) -> tuple[str, ...]:
        if not parts:
            raise ValueError("needs at least one part (bsp, or app:<name>)")
        for part in parts:
            if part != "bsp" and not (part.startswith("app:") and part[4:].isidentifier()):
                raise ValueError(f"unknown part {part!r}: expected 'bsp' or 'app:<name>'")
        return parts


class Rollout(_Table):
    strategy: Literal[STRATEGIES] = "all-at-once"  # type: ignore[valid-type]
    # canary
    canary_devices: int = Field(10, ge=1)
    soak_s: float = Field(3600.0, ge=0)
    canary_max_failures: int = Field(0, ge=0)
    # hawkBit-style groups
    group_percent: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    success_threshold: float = 0.5
    error_threshold: float = 0.5
    # AWS-IoT-style exponential rate
    base_rate_per_min: float = Field(10.0, ge=1, le=1000)
    increment_factor: float = Field(2.0, ge=1.1, le=5)
    rate_increase_after_succeeded: int = Field(0, ge=0)
    max_per_minute: float = Field(1000.0, ge=1)
    abort_threshold: float = 0.1
    min_executed: int = Field(50, ge=1)
    # Kubernetes-style max unavailable
    max_unavailable: float = Field(0.25, gt=0)
    max_failure_ratio: float | None = None
    # maintenance windows
    window_start_h: float = Field(2.0, ge=0, lt=24)
    window_length_h: float = Field(4.0, gt=0, le=24)
    timezones_h: tuple[float, float] = (-8.0, 3.0)
    # every strategy: a device that took the release and sent no final report within this many
    # seconds counts as failed (AWS IoT Jobs' in-progress timeout, TIMED_OUT); 0: wait forever
    device_timeout_s: float = Field(86400.0, ge=0)

    _fractions = field_validator("success_threshold", "error_threshold", "abort_threshold")(_fraction)

    @field_validator("timezones_h")
    @classmethod
    def _zones_west_to_east(cls, zones: tuple[float, float]) -> tuple[float, float]:
        low, high = zones
        if not -12 <= low <= 14 or not -12 <= high <= 14:
            raise ValueError("UTC offsets must lie between -12 and 14 hours")
        if low > high:
            raise ValueError(f"must be [westmost, eastmost]: {low:g} is east of {high:g}")
        return zones

    @field_validator("group_percent")
    @classmethod
    def _groups_increase(cls, groups: tuple[float, ...]) -> tuple[float, ...]:
        if not groups:
            raise ValueError("needs at least one group")
        if any(not 0 < g <= 100 for g in groups) or list(groups) != sorted(groups):
            raise ValueError("must be increasing cumulative percentages in (0, 100]")
        if groups[-1] != 100:
            raise ValueError("the last group must reach 100 (percent of the fleet)")
        return groups

    @field_validator("max_failure_ratio")
    @classmethod
    def _ratio(cls, value: float | None) -> float | None:
        return None if value is None else _fraction(value)


def check_engine_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A pydantic validator for a table of engine config keys (Pantavisor's names): every key
    known, every value of its type. Scenario files and trace cases share it."""
    from shared.engine.config import Config, ConfigError

    try:
        Config.from_mapping(values)
    except ConfigError as exc:
        raise ValueError(f"{exc.key}: {exc.message}") from None
    return values


class UpdateModel(_Table):
    kind: Literal[UPDATE_MODELS] = "pantavisor"  # type: ignore[valid-type]
    image_mb: float = Field(400.0, gt=0)
    delta_ratio: DistField = Dist("uniform", 0.1, 0.7)
    major_delta_ratio: DistField = Dist("uniform", 1.05, 1.3)
    rollback: bool = True
    bootlimit: int = Field(1, ge=1, le=15)
    health_check: bool = True
    health_window_s: float = Field(60.0, ge=0)
    hardened: bool = False  # Pantavisor's own write ordering (faithful), as real devices have it
    engine: dict[str, float | int | str | bool] = Field(default_factory=dict)

    @field_validator("engine")
    @classmethod
    def _engine_keys(cls, values: dict[str, Any]) -> dict[str, Any]:
        return check_engine_keys(values)


class Run(_Table):
    until_s: float = Field(86400.0, gt=0)
    timeline_step_s: float = Field(60.0, gt=0)


class PowerCutAt(_Table):
    """One scheduled power cut for `pvsim validate`: the device admitted `slot`-th (0 = first) by
    the first release loses power at `at_s` for `off_s` seconds, in both worlds."""

    slot: int = Field(ge=0)
    at_s: float = Field(ge=0)
    off_s: float = Field(1.0, gt=0)


class Validation(_Table):
    """How `pvsim validate` runs this scenario on a real fleet (docs/validation.md)."""

    devices: int = Field(16, ge=1, le=253)  # the default of --real-devices
    # real seconds per scenario second: the schedule (releases, faults, run.until_s) is multiplied
    # by it in both worlds; device configuration (update_model.engine, fleet.poll_interval_s) is not
    time_scale: float = Field(1.0, gt=0, le=1)
    power_cuts: tuple[PowerCutAt, ...] = ()
    # the real run ends once every release is over and this many scenario seconds passed quietly
    settle_s: float = Field(5.0, ge=0)


class Scenario(_Table):
    name: str = "scenario"
    description: str = ""
    fleet: Fleet = Fleet()
    device: Device = Device()
    faults: Faults = Faults()
    release: tuple[Release, ...] = Field(min_length=1)
    rollout: Rollout = Rollout()
    update_model: UpdateModel = UpdateModel()
    run: Run = Run()
    validation: Validation = Validation()

    @model_validator(mode="after")
    def _releases_ordered(self) -> Scenario:
        # model-level errors start with the dotted key they are about; validate_scenario splits it off
        names = [r.name for r in self.release]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"release[{index}].name: {name!r} is already the name of an earlier release")
        for index, release in enumerate(self.release):
            if index and release.at_s < self.release[index - 1].at_s:
                raise ValueError(f"release[{index}].at_s: releases must be listed in time order")
            if release.at_s >= self.run.until_s:
                raise ValueError(
                    f"release[{index}].at_s: {release.at_s:g} s is not before run.until_s ({self.run.until_s:g} s), "
                    "so the run ends before the Hub offers it"
                )
        return self


def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in DEFECTS or item in STRATEGIES or str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _message(error: ErrorDetails) -> str:
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return msg


def validate_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Validate a parsed TOML document; raise ScenarioError naming `source` and the dotted key."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        key, message = error_key(errors[0])
        if len(errors) > 1:
            rest = "; ".join("{}: {}".format(*error_key(e)) for e in errors[1:4])
            message += f" (also: {rest})"
        raise ScenarioError(message, source=source, key=key) from None


_MODEL_KEY = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def error_key(error: dict[str, Any]) -> tuple[str, str]:
    """(dotted key, message) of one pydantic error; a whole-scenario check names its key in front."""
    key, message = _dotted(error["loc"]), _message(error)
    if not key:
        match = _MODEL_KEY.match(message)
        if match:
            return match[1], match[2]
    return key or "(top level)", message


def load_scenario(path: str | Path, **overrides: Any) -> Scenario:
    """Read and validate a scenario file. `overrides` are dotted keys, e.g. {"fleet.devices": 500}."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror}", source=str(path)) from None
    text = toml_text(raw, str(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"not valid TOML: {exc}", source=str(path)) from None
    data.setdefault("name", path.stem)
    data = _with_includes(data, path)
    for dotted, value in overrides.items():
        if value is not None:
            set_dotted(data, dotted, value, str(path))
    return validate_scenario(data, str(path))


def _with_includes(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """`include = ["fragment.toml", ...]` (paths relative to the file): each fragment's tables
    are laid under the file's own, in order, so the file's keys win; `pvsim calibrate` writes such
    fragments. A fragment cannot include further."""
    names = data.pop("include", [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ScenarioError("must be a file name or a list of file names", source=str(path), key="include")
    merged: dict[str, Any] = {}
    for name in names:
        frag_path = path.parent / name
        try:
            fragment = tomllib.loads(toml_text(frag_path.read_bytes(), str(frag_path)))
        except OSError as exc:
            raise ScenarioError(f"cannot read {frag_path}: {exc.strerror}", source=str(path), key="include") from None
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"not valid TOML: {exc}", source=str(frag_path)) from None
        if "include" in fragment:
            raise ScenarioError("a fragment cannot include others", source=str(frag_path), key="include")
        _merge(merged, fragment)
    _merge(merged, data)
    return merged


def _merge(into: dict[str, Any], top: dict[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "dist" not in value:
            _merge(into[key], value)
        else:
            into[key] = value


def toml_text(raw: bytes, source: str) -> str:
    """The file's text; TOML is UTF-8, and a NUL byte means a binary file was given by mistake."""
    if b"\0" in raw:
        raise _not_text("a binary file, not TOML text", raw, raw.index(b"\0"), source)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_text(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", raw, exc.start, source) from None


def _not_text(what: str, raw: bytes, offset: int, source: str) -> ScenarioError:
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return ScenarioError(f"{what} at line {line}, column {column}", source=source)


_INDEXED = re.compile(r"^([A-Za-z_]+)\[(\d+)\]$")


def set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set `table.key` or `release[1].size_mb` in a scenario document; tables are created as
    needed, list items must exist. Unknown keys are left to validation to report."""
    *parts, leaf = dotted.split(".")
    target: Any = data
    for part in parts:
        match = _INDEXED.match(part)
        if match:
            items = target.get(match[1])
            index = int(match[2])
            if not isinstance(items, list | tuple) or index >= len(items):
                raise ScenarioError("no such list item", source=source, key=dotted)
            target = items[index]
        else:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ScenarioError("not a table", source=source, key=dotted)
            target = nxt
    target[leaf] = value


def check_option(option: str, dotted: str, value: Any) -> None:
    """A command-line value for a scenario key (`--seed` for fleet.seed), checked by that key's
    own rule so the error names the option typed, not the file it overrides. None: not given."""
    if value is None:
        return
    table, key = dotted.split(".")
    model = Scenario.model_fields[table].annotation
    assert isinstance(model, type) and issubclass(model, _Table), dotted
    try:
        model.model_validate({key: value})
    except ValidationError as exc:
        raise ScenarioError(_message(exc.errors()[0]), source=option) from None


def with_overrides(scenario: Scenario, **dotted: Any) -> Scenario:
    """A copy of a validated scenario with some dotted keys changed (validated again)."""
    data = scenario.model_dump()
    data["release"] = list(data["release"])
    for key, value in dotted.items():
        set_dotted(data, key, value, scenario.name)
    return validate_scenario(data, scenario.name)


__all__ = [
    "DEFECTS",
    "STRATEGIES",
    "UPDATE_MODELS",
    "Dist",
    "Scenario",
    "ScenarioError",
    "check_option",
    "load_scenario",
    "parse_dist",
    "validate_scenario",
    "with_overrides",
]
