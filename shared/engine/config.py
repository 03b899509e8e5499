"""Engine configuration: every timer and limit, under Pantavisor's key names (pantavisor.md §6.2).

One `Config` is shared by every device of a fleet (it is frozen), so it costs nothing per device.
`Config.from_mapping` accepts Pantavisor's key names and their legacy dotted aliases, with string
or numeric values (as they come from a config file, a TOML scenario or the environment).

Some keys are pvtwin's own and say so in their name (`PVTWIN_*`): the write ordering, the boot
latch variant and the stop grace period. They are model choices, not Pantavisor settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.errors import PvError

if TYPE_CHECKING:
    from shared.state import State


class Ordering(StrEnum):
    """Which order the engine writes its durable steps in (docs/orderings.md)."""

    FAITHFUL = "faithful"  # Pantavisor's own order, including its §3.9 power-loss windows
    HARDENED = "hardened"  # reordered and redundant so that no power cut breaks an invariant


class BootLatch(StrEnum):
    """How the bootloader decides between `pv_try` and `pv_rev` (shared/engine/bootloader.py)."""

    SINGLE_SHOT = "single-shot"  # U-Boot boot.cmd.pvgeneric: the pv_trying latch, one attempt
    COUNTER = "counter"  # RAUC / GRUB style: up to PVTWIN_BOOT_ATTEMPTS attempts


class ConfigError(PvError):
    """A configuration value that is unknown or of the wrong type."""


# A pure signature check: returns None when the state is acceptable, else the §1.8 message.
SignatureVerifier = Callable[["State"], "str | None"]


@dataclass(frozen=True, slots=True)
class Config:
    commit_delay: float = 25.0  # PV_UPDATER_COMMIT_DELAY
    goals_timeout: float = 120.0  # PV_UPDATER_GOALS_TIMEOUT
    network_timeout: float = 120.0  # PH_UPDATER_NETWORK_TIMEOUT
    updater_interval: float = 5.0  # PH_UPDATER_INTERVAL
    transfer_max_count: int = 5  # PH_UPDATER_TRANSFER_MAX_COUNT
    revision_retries: int = 10  # PV_REVISION_RETRIES
    use_tmp_objects: bool = False  # PV_UPDATER_USE_TMP_OBJECTS
    online_request_threshold: int = 0  # PH_ONLINE_REQUEST_THRESHOLD
    control_remote: bool = True  # PV_CONTROL_REMOTE
    control_remote_always: bool = False  # PV_CONTROL_REMOTE_ALWAYS
    gc_reserved: int = 5  # PV_STORAGE_GC_RESERVED (percent)
    gc_threshold: int = 0  # PV_STORAGE_GC_THRESHOLD (percent real free; 0 = off)
    gc_threshold_defertime: float = 600.0  # PV_STORAGE_GC_THRESHOLD_DEFERTIME
    gc_keep_factory: bool = False  # PV_STORAGE_GC_KEEP_FACTORY
    bootloader_type: str = "uboot"  # PV_BOOTLOADER_TYPE
    secureboot_mode: str = "lenient"  # PV_SECUREBOOT_MODE
    secureboot_checksum: bool = True  # PV_SECUREBOOT_CHECKSUM
    debug_shell: bool = True  # PV_DEBUG_SHELL (pv-ctrl refuses DEFER_REBOOT without it)
    wait_tick: float = 2.0  # the WAIT loop's safety tick (§3.1); not a config key in Pantavisor
    # lenient stop before a forced one (§4.3): fixed at 5 s in Pantavisor; PVTWIN_STOP_GRACE
    stop_grace: float = 5.0
    ordering: Ordering = Ordering.HARDENED  # PVTWIN_ORDERING
    boot_latch: BootLatch = BootLatch.SINGLE_SHOT  # PVTWIN_BOOT_LATCH
    boot_attempts: int = 3  # PVTWIN_BOOT_ATTEMPTS (counter latch only)
    verify_signature: SignatureVerifier | None = None  # pure check run on update intake
    # `pv_quickboot` in Pantavisor's environment (a kernel cmdline `pv_quickboot=...`, as the
    # generic U-Boot script always passes): not a config key, a fact of the boot
    quickboot: bool = False

    @property
    def boot_checksum(self) -> bool:
        """Whether a boot re-hashes the booted revision's objects and JSONs: state.c
        `pv_state_validate_checksum` skips it when `pv_quickboot` is set or
        PV_SECUREBOOT_CHECKSUM is off."""
        return self.secureboot_checksum and not self.quickboot

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str | None = None) -> Config:
        """Build a Config from Pantavisor key names / legacy aliases; unknown keys are an error."""
        return cls().updated(values, source=source)

    def updated(self, values: Mapping[str, Any], *, source: str | None = None) -> Config:
        """A copy with `values` (Pantavisor key names or aliases) applied over this config."""
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            attr = KEY_TO_FIELD.get(key) or KEY_TO_FIELD.get(key.upper())
            if attr is None:
                raise ConfigError(
                    "unknown configuration key; expected one of " + ", ".join(sorted(KEYS)),
                    source=source,
                    key=key,
                )
            changes[attr] = _convert(attr, raw, source, key)
        return replace(self, **changes)

    def as_keys(self) -> dict[str, Any]:
        """The effective configuration under Pantavisor's key names (for reports and /config)."""
        return {key: getattr(self, attr) for key, attr in KEYS.items()}


# Pantavisor key -> Config field. Order is the §6.2 table order.
KEYS: Mapping[str, str] = {
    "PV_UPDATER_COMMIT_DELAY": "commit_delay",
    "PV_UPDATER_GOALS_TIMEOUT": "goals_timeout",
    "PH_UPDATER_NETWORK_TIMEOUT": "network_timeout",
    "PH_UPDATER_INTERVAL": "updater_interval",
    "PH_UPDATER_TRANSFER_MAX_COUNT": "transfer_max_count",
    "PV_REVISION_RETRIES": "revision_retries",
    "PV_UPDATER_USE_TMP_OBJECTS": "use_tmp_objects",
    "PH_ONLINE_REQUEST_THRESHOLD": "online_request_threshold",
    "PV_CONTROL_REMOTE": "control_remote",
    "PV_CONTROL_REMOTE_ALWAYS": "control_remote_always",
    "PV_STORAGE_GC_RESERVED": "gc_reserved",
    "PV_STORAGE_GC_THRESHOLD": "gc_threshold",
    "PV_STORAGE_GC_THRESHOLD_DEFERTIME": "gc_threshold_defertime",
    "PV_STORAGE_GC_KEEP_FACTORY": "gc_keep_factory",
    "PV_BOOTLOADER_TYPE": "bootloader_type",
    "PV_SECUREBOOT_MODE": "secureboot_mode",
    "PV_SECUREBOOT_CHECKSUM": "secureboot_checksum",
    "PV_DEBUG_SHELL": "debug_shell",
    "PVTWIN_ORDERING": "ordering",
    "PVTWIN_BOOT_LATCH": "boot_latch",
    "PVTWIN_BOOT_ATTEMPTS": "boot_attempts",
    "PVTWIN_STOP_GRACE": "stop_grace",
}

# Legacy dotted names still accepted by Pantavisor's config.c (§6.1).
ALIASES: Mapping[str, str] = {
    "updater.commit.delay": "PV_UPDATER_COMMIT_DELAY",
    "updater.goals.timeout": "PV_UPDATER_GOALS_TIMEOUT",
    "updater.network_timeout": "PH_UPDATER_NETWORK_TIMEOUT",
    "updater.interval": "PH_UPDATER_INTERVAL",
    "revision.retries": "PV_REVISION_RETRIES",
    "updater.keep_factory": "PV_STORAGE_GC_KEEP_FACTORY",
    "updater.use_tmp_objects": "PV_UPDATER_USE_TMP_OBJECTS",
    "control.remote": "PV_CONTROL_REMOTE",
    "control.remote.always": "PV_CONTROL_REMOTE_ALWAYS",
    "storage.gc.reserved": "PV_STORAGE_GC_RESERVED",
    "storage.gc.threshold": "PV_STORAGE_GC_THRESHOLD",
    "storage.gc.threshold.defertime": "PV_STORAGE_GC_THRESHOLD_DEFERTIME",
    "storage.gc.keep_factory": "PV_STORAGE_GC_KEEP_FACTORY",
    "bootloader.type": "PV_BOOTLOADER_TYPE",
    "secureboot.mode": "PV_SECUREBOOT_MODE",
    "secureboot.checksum": "PV_SECUREBOOT_CHECKSUM",
    "debug.shell": "PV_DEBUG_SHELL",
}

KEY_TO_FIELD: Mapping[str, str] = {
    **KEYS,
    **{alias: KEYS[key] for alias, key in ALIASES.items()},
}

_CHOICES: Mapping[str, tuple[str, ...]] = {
    "bootloader_type": ("uboot", "uboot-ab", "uboot-pvk", "rpiab", "grub"),
    "secureboot_mode": ("disabled", "audit", "lenient", "strict"),
}
# field annotations are strings here (`from __future__ import annotations`)
_FIELD_TYPES: Mapping[str, str] = {f.name: str(f.type) for f in fields(Config)}


def _convert(attr: str, raw: Any, source: str | None, key: str) -> Any:
    kind = _FIELD_TYPES[attr]
    value: float  # the numeric kinds fall through to the sign check below
    try:
        if kind == "bool":
            if isinstance(raw, str):
                if raw.strip() not in ("0", "1", "true", "false"):
                    raise ValueError(raw)
                return raw.strip() in ("1", "true")
            if isinstance(raw, bool | int):
                return bool(raw)
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            value = int(raw)
        elif kind == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
        elif kind == "Ordering":
            return Ordering(raw)
        elif kind == "BootLatch":
            return BootLatch(raw)
        else:
            text = str(raw)
            if attr in _CHOICES and text not in _CHOICES[attr]:
                raise ValueError(raw)
            return text
    except (TypeError, ValueError):
        expected = {
            "bool": "0 or 1",
            "int": "an integer",
            "float": "a number of seconds",
            "Ordering": "faithful or hardened",
            "BootLatch": "single-shot or counter",
        }.get(kind, "one of " + ", ".join(_CHOICES.get(attr, ())))
        raise ConfigError(
            f"bad value {raw!r}: expected {expected}", source=source, key=key
        ) from None
    if value < 0:
        raise ConfigError(f"bad value {raw!r}: must not be negative", source=source, key=key)
    return value


DEFAULT_CONFIG = Config()
