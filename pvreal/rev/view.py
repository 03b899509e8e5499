"""What a revision holds, as JSON: BSP, groups, containers, objects and signatures (decoded, not
verified: `pvreal rev verify` checks them). `pvreal rev show` prints this view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared import canonical
from shared.errors import InvalidJson, InvalidState, SignatureError
from shared.signatures import b64url_decode
from shared.state import AutoRecovery, Container, Group, State


def signature_rules(state: State, source: str | None = None) -> list[dict[str, Any]]:
    """Name, algorithm and include/exclude globs of each `_sigs/*.json` (decoded, not verified)."""
    rules = []
    for key, sig in sorted(state.signatures.items()):
        header = _protected_header(key, sig, source)
        pvs = header.get("pvs")
        if not isinstance(pvs, dict):
            pvs = {}
        rules.append(
            {
                "name": key[len("_sigs/") : -len(".json")],
                "key": key,
                "spec": sig.get("#spec"),
                "alg": header.get("alg"),
                "include": list(pvs.get("include", [])),
                "exclude": list(pvs.get("exclude", [])),
            }
        )
    return rules


def _protected_header(key: str, sig: Any, source: str | None) -> dict[str, Any]:
    """The decoded header, with shared.signatures' base64url rule; not verified (`rev verify`
    does that), so a header `parse_signature` would refuse is still shown."""
    protected = sig.get("protected")
    if not isinstance(protected, str):
        raise InvalidState("signature has no 'protected' header string", source=source, key=key)
    try:
        header = canonical.loads(b64url_decode(protected, what="protected header", key=key))
    except (SignatureError, InvalidJson) as exc:
        raise InvalidState(
            f"'protected' is not base64url-encoded JSON ({exc.message})", source=source, key=key
        ) from None
    if not isinstance(header, dict):
        raise InvalidState("'protected' header is not a JSON object", source=source, key=key)
    return header


def object_summary(state: State, objects_dir: Path | None) -> dict[str, Any]:
    shas = state.object_shas()
    summary: dict[str, Any] = {"entries": len(state.objects), "distinct": len(shas)}
    if objects_dir is not None:
        present = [objects_dir / sha for sha in sorted(shas) if (objects_dir / sha).is_file()]
        summary["present"] = len(present)
        summary["missing"] = len(shas) - len(present)
        summary["size"] = sum(p.stat().st_size for p in present)
    return summary


def _recovery_json(ar: AutoRecovery | None) -> dict[str, Any] | None:
    if ar is None:
        return None
    return {
        "policy": ar.policy,
        "max_retries": ar.max_retries,
        "retry_delay": ar.retry_delay,
        "backoff_factor": ar.backoff_factor,
        "reset_window": ar.reset_window,
        "stable_timeout": ar.stable_timeout,
        "backoff_policy": ar.backoff_policy,
    }


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "status_goal": g.status_goal.value,
        "restart_policy": g.restart_policy.value,
        "timeout": g.timeout,
        "auto_recovery": _recovery_json(g.auto_recovery),
    }


def _container_json(c: Container) -> dict[str, Any]:
    return {
        "name": c.name,
        "group": c.group,
        "explicit_group": c.explicit_group,
        "status_goal": c.status_goal.value,
        "restart_policy": c.restart_policy.value,
        "auto_recovery": _recovery_json(c.auto_recovery),
        "storage": {k: v.value for k, v in sorted(c.storage.items())},
        "root_volume": c.root_volume,
        "verity": c.verity,
        "roles": list(c.roles),
        "volumes": list(c.volumes),
    }


def show_json(
    state: State, objects_dir: Path | None = None, source: str | None = None
) -> dict[str, Any]:
    bsp = state.bsp
    return {
        "spec": state.spec,
        "digest": state.digest,
        "partial": state.partial,
        "runlevel_mode": state.runlevel_mode,
        "bsp": None
        if bsp is None
        else {
            "linux": bsp.linux,
            "initrd": bsp.initrd,
            "fdt": bsp.fdt,
            "fit": bsp.fit,
            "rpiab": bsp.rpiab,
            "modules": bsp.modules,
            "firmware": bsp.firmware,
            "addons": list(bsp.addons),
            "initrd_config": bsp.initrd_config,
        },
        "groups": [_group_json(g) for g in state.groups],
        "containers": [_container_json(c) for c in state.containers],
        "objects": object_summary(state, objects_dir),
        "signatures": signature_rules(state, source),
    }
