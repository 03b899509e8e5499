"""The device's secure-boot checks with real inputs (pantavisor.md §1.8, §2.2, §7.2).

The rules are pure and live elsewhere: `shared.signatures.verify_state` decides on signatures,
`pvreal.storage.Storage.check` finds objects and trail files that are not what the state says.
This module only feeds them what a device has: trust material read from disk, the wall clock,
and the booted revision's trail.

The engine takes both verdicts in its own terms:
- signatures: `Config.verify_signature(state) -> message | None`, called at boot (ERROR and
  rollback on a try-boot) and used by pv-ctrl on intake (422) and LOCAL_RUN (WONTGO);
- boot-time checksums: `DiskView.objects` is the set of objects the engine may rely on; an object
  of the booted revision that fails validation is withheld, so the engine's own check
  ("every object of the state is in the pool") ends in `Object validation went wrong`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pvreal.objectstore import is_sha
from pvreal.storage import Storage
from pvreal.truststore import load_trust_config
from shared.engine.config import Config, SignatureVerifier
from shared.signatures import SecurebootMode, TrustConfig, verify_state

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def wall_clock() -> dt.datetime:
    """Certificates are checked against the machine's own time, as on the device."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """Where the device's trust material is (`pvreal device run --truststore ...`)."""

    truststore: Path | None = None  # PV_SECUREBOOT_TRUSTSTORE: a folder or a bundle file
    oem_truststore: Path | None = None  # PV_SECUREBOOT_OEM_TRUSTSTORE
    oem_name: str | None = None  # PV_OEM_NAME
    public_key: Path | None = None  # pvs/trust/pub.pem

    def load(self) -> TrustConfig:
        """Read it all now, so a bad path stops the daemon before it boots."""
        return load_trust_config(
            self.truststore,
            oem_truststore=self.oem_truststore,
            oem_name=self.oem_name,
            public_key=self.public_key,
        )


def make_verifier(
    trust: TrustConfig, mode: SecurebootMode | str, clock: Clock = wall_clock
) -> SignatureVerifier:
    """`Config.verify_signature` for this device: the §1.8 outcome message, None when OK."""
    mode = SecurebootMode(mode)

    def verify(state: Any) -> str | None:
        return verify_state(state, trust, now=clock(), mode=mode).message

    return verify


def with_verifier(config: Config, trust: TrustConfig, clock: Clock = wall_clock) -> Config:
    """The config with the real signature check under its own PV_SECUREBOOT_MODE."""
    return replace(config, verify_signature=make_verifier(trust, config.secureboot_mode, clock))


def signature_problem(state: Any, config: Config) -> str | None:
    """The §1.8 verdict on a state as the device gives it: None when acceptable. A config
    without a verifier checks against an empty trust configuration (no store, no key)."""
    if config.secureboot_mode == SecurebootMode.DISABLED:
        return None
    verify = config.verify_signature or make_verifier(TrustConfig(), config.secureboot_mode)
    return verify(state)


# ---------------------------------------------------------------------- boot-time checksums


def _dm_data_devices(state: Mapping[str, Any]) -> set[str]:
    """Trail paths of dm-verity data devices: the kernel checks them lazily (§2.2, §7.2)."""
    out = set()
    for key, value in state.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[1] == "_dm" and isinstance(value, Mapping):
            device = value.get("data_device")
            if isinstance(device, str) and device:
                out.add(f"{parts[0]}/{device}")
    return out


def invalid_objects(storage: Storage, rev: str) -> frozenset[str]:
    """`pv_state_validate_checksum` for one revision: the objects of its trail that are not the
    same inode as objects/<sha> or do not re-hash to <sha>. A JSON file that differs from its
    state value fails the whole revision, so then every object it names is returned. A trail
    link that is merely missing is re-created first, as Pantavisor does."""
    try:
        state = storage.read_state(rev)
    except Exception:  # noqa: BLE001 - the engine reports an unreadable state itself
        return frozenset()
    report = storage.check(revs=[rev])
    if (
        report.trail_problems
        and not report.missing_objects
        and all(p.endswith(": not checked out") for p in report.trail_problems)
    ):
        storage.link_trail(rev, state)
        report = storage.check(revs=[rev])
    skipped = _dm_data_devices(state)
    installs = [(path, sha) for path, sha in storage.installs(state) if path not in skipped]
    shas = {sha for _, sha in installs}
    bad = {sha for sha in report.corrupt_objects if sha in shas}
    bad |= {line.rsplit(" -> ", 1)[1] for line in report.missing_objects}
    by_path = dict(installs)
    for problem in report.trail_problems:
        path = problem.removeprefix(rev + ":").partition(": ")[0]
        if path in by_path:
            bad.add(by_path[path])
        elif path not in skipped:
            bad |= shas  # a JSON file differs: the revision as a whole is invalid
    if bad:
        log.warning(
            "%s: object validation failed: %s",
            rev,
            "; ".join([*report.corrupt_objects, *report.missing_objects, *report.trail_problems]),
        )
    return frozenset(bad)


def valid_pool(storage: Storage, booted_rev: str, config: Config) -> frozenset[str]:
    """The object set the engine boots with (`DiskView.objects`): the pool, minus the booted
    revision's objects that fail validation when the engine's config asks for the boot pass
    (`Config.boot_checksum`: PV_SECUREBOOT_CHECKSUM on, no `pv_quickboot`)."""
    pool = frozenset(n for n in storage.objects.names() if is_sha(n))
    if not config.boot_checksum:
        return pool
    return pool - invalid_objects(storage, booted_rev)
