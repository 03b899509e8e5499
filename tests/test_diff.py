"""Diff and transition choice (pantavisor.md §3.6)."""

from __future__ import annotations

import hashlib
import json

import pytest

from pvreal.examples import example
from shared.diff import Transition, diff_entries, diff_states
from shared.state import parse_state


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load(name: str) -> dict:
    return json.loads(example(name).read_text())


@pytest.fixture
def rev0() -> dict:
    return load("rev0.json")


def diff(old: dict, new: dict, *, partial: bool = False):
    return diff_states(parse_state(old, partial=partial), parse_state(new, partial=partial))


def changed(state: dict, key: str, value=None) -> dict:
    new = json.loads(json.dumps(state))
    new[key] = value if value is not None else sha(f"new {key}")
    return new


# ---- the three transitions


def test_identical_states_need_nothing(rev0):
    d = diff(rev0, rev0)
    assert d.transition == Transition.NONE
    assert (d.added, d.removed, d.changed, d.containers) == ((), (), (), ())
    assert d.reasons == ("the two states are identical",)


@pytest.mark.parametrize(
    "key", ["_sigs/web.json", "web/src.json", "bsp/build.json", "bsp/src.json"]
)
def test_changes_to_unloaded_entries_need_nothing(rev0, key):
    new = changed(rev0, key, {"#spec": "whatever", "v": 2})
    d = diff(rev0, new)
    assert d.transition == Transition.NONE
    assert key in d.added + d.changed
    assert d.containers == ()
    assert "does not load" in d.reasons[0]


@pytest.mark.parametrize(
    ("key", "verb"),
    [
        ("bsp/kernel.img", "changed"),
        ("bsp/pantavisor", "changed"),
        ("disks.json", "added"),
        ("groups.json", "added"),
        ("network-mapping.json", "added"),
        ("_hostconfig/etc/hosts", "added"),
        ("_config/ghost/etc/x", "added"),
        ("rootfile.bin", "added"),
    ],
)
def test_system_owned_entry_forces_reboot(rev0, key, verb):
    value = {} if key.endswith(".json") else None
    d = diff(rev0, changed(rev0, key, value))
    assert d.transition == Transition.REBOOT
    assert d.reasons == (f"system-owned entry {key} {verb}",)
    assert d.containers == ()


def test_device_json_change_forces_reboot(rev0):
    new = changed(rev0, "device.json", {**rev0["device.json"], "volumes": {}})
    d = diff(rev0, new)
    assert d.transition == Transition.REBOOT
    assert d.reasons == ("system-owned entry device.json changed",)


def test_removed_system_entry(rev0):
    new = dict(rev0)
    new["bsp/run.json"] = {k: v for k, v in rev0["bsp/run.json"].items() if k != "firmware"}
    del new["bsp/firmware.squashfs"]
    d = diff(rev0, new)
    assert d.transition == Transition.REBOOT
    assert "system-owned entry bsp/firmware.squashfs removed" in d.reasons
    assert "system-owned entry bsp/run.json changed" in d.reasons


def test_container_policy_container_is_non_reboot(rev0):
    d = diff(rev0, changed(rev0, "web/root.squashfs"))
    assert d.transition == Transition.NON_REBOOT
    assert d.containers == ("web",)
    assert d.reasons == ("only containers with restart_policy container changed: web",)


def test_config_of_container_counts_for_that_container(rev0):
    d = diff(rev0, changed(rev0, "_config/web/etc/nginx/conf.d/site.conf"))
    assert (d.transition, d.containers) == (Transition.NON_REBOOT, ("web",))


def test_system_policy_container_forces_reboot(rev0):
    d = diff(rev0, changed(rev0, "pv-avahi/root.squashfs"))
    assert d.transition == Transition.REBOOT
    assert d.containers == ("pv-avahi",)
    assert d.reasons == (
        "container pv-avahi has restart_policy system in the old state",
        "container pv-avahi has restart_policy system in the new state",
    )


def test_policy_is_checked_in_the_new_state(rev0):
    run = {**rev0["web/run.json"], "restart_policy": "system"}
    d = diff(rev0, changed(rev0, "web/run.json", run))
    assert d.transition == Transition.REBOOT
    assert d.reasons == ("container web has restart_policy system in the new state",)


def test_policy_is_checked_in_the_old_state(rev0):
    run = {**rev0["pv-avahi/run.json"], "restart_policy": "container"}
    d = diff(rev0, changed(rev0, "pv-avahi/run.json", run))
    assert d.transition == Transition.REBOOT
    assert d.reasons == ("container pv-avahi has restart_policy system in the old state",)


def test_inherited_policy_counts(rev0):
    # web has no restart_policy of its own: the app group's "container" applies
    assert "restart_policy" not in rev0["web/run.json"]
    groups = rev0["device.json"]["groups"]
    new = changed(rev0, "web/root.squashfs")
    assert diff(rev0, new).transition == Transition.NON_REBOOT
    groups[3]["restart_policy"] = "system"
    new["device.json"] = rev0["device.json"]
    d = diff(rev0, new)
    assert d.transition == Transition.REBOOT
    assert "container web has restart_policy system in the old state" in d.reasons


def test_added_and_removed_containers(rev0):
    new = dict(rev0)
    new["app2/run.json"] = {"name": "app2", "group": "app", "root-volume": "root.squashfs"}
    new["app2/root.squashfs"] = sha("app2")
    d = diff(rev0, new)
    assert (d.transition, d.containers) == (Transition.NON_REBOOT, ("app2",))
    assert d.added == ("app2/root.squashfs", "app2/run.json")
    back = diff(new, rev0)
    assert (back.transition, back.removed) == (
        Transition.NON_REBOOT,
        ("app2/root.squashfs", "app2/run.json"),
    )
    without_avahi = {k: v for k, v in rev0.items() if not k.startswith("pv-avahi/")}
    d = diff(rev0, without_avahi)
    assert d.transition == Transition.REBOOT
    assert d.reasons == ("container pv-avahi has restart_policy system in the old state",)


def test_config_left_behind_by_a_removed_container_is_system_owned(rev0):
    new = {k: v for k, v in rev0.items() if not k.startswith("web/")}
    new["_config/web/etc/nginx/conf.d/site.conf"] = sha("edited")
    d = diff(rev0, new)
    assert d.transition == Transition.REBOOT
    assert "system-owned entry _config/web/etc/nginx/conf.d/site.conf changed" in d.reasons


def test_mixed_change_lists_every_reason(rev0):
    new = changed(changed(rev0, "web/root.squashfs"), "bsp/kernel.img")
    d = diff(rev0, new)
    assert d.transition == Transition.REBOOT
    assert d.containers == ("web",)
    assert d.changed == ("bsp/kernel.img", "web/root.squashfs")


def test_spec_change_forces_reboot(rev0):
    legacy = {
        "#spec": "pantavisor-multi-platform@1",
        "pantavisor.json": {"linux": "k", "initrd": "i", "platforms": []},
        "k": sha("k"),
        "i": sha("i"),
    }
    d = diff(rev0, legacy)
    assert d.transition == Transition.REBOOT
    assert "system-owned entry #spec changed" in d.reasons


def test_diff_entries_sorted():
    added, removed, changed_ = diff_entries({"b": 1, "a": 1, "c": 1}, {"c": 2, "z": 0, "y": 0})
    assert (added, removed, changed_) == (("y", "z"), ("a", "b"), ("c",))


def test_to_json_has_exactly_the_documented_keys(rev0):
    doc = diff(rev0, changed(rev0, "web/root.squashfs")).to_json()
    assert list(doc) == ["transition", "reasons", "containers", "added", "removed", "changed"]
    assert doc["transition"] == "non-reboot" and doc["changed"] == ["web/root.squashfs"]


# ---- the bundled examples and the conformance data


def test_bundled_examples():
    rev0, rev1, rev2 = (load(n) for n in ("rev0.json", "rev1-app.json", "rev2-bsp.json"))
    assert diff(rev0, rev1).transition == Transition.NON_REBOOT
    assert diff(rev0, rev1).containers == ("web",)
    d = diff(rev1, rev2)
    assert d.transition == Transition.REBOOT
    assert "system-owned entry bsp/kernel.img changed" in d.reasons


def conformance(dir_, name: str) -> dict:
    return json.loads((dir_ / name).read_text())


def test_conformance_new_app_package_is_non_reboot(conformance_dir):
    d = diff(
        conformance(conformance_dir, "resources/initial_state.json"),
        conformance(conformance_dir, "expected/state_after_new_package.json"),
    )
    assert (d.transition, d.containers) == (Transition.NON_REBOOT, ("vaultwarden",))
    assert "_sigs/vaultwarden.json" in d.added


def test_conformance_root_container_update_reboots(conformance_dir):
    d = diff(
        conformance(conformance_dir, "resources/initial_state.json"),
        conformance(conformance_dir, "expected/state_after_adding_existing.json"),
    )
    assert (d.transition, d.containers) == (Transition.REBOOT, ("awconnect",))
    assert "container awconnect has restart_policy system in the new state" in d.reasons


def test_conformance_bsp_signature_only_change_is_none(conformance_dir):
    d = diff(
        conformance(conformance_dir, "resources/bsp_init.json"),
        conformance(conformance_dir, "resources/bsp_update.json"),
    )
    assert d.transition == Transition.NONE
    assert d.changed == ("_sigs/bsp.json",)


def test_conformance_groups_json_to_device_json_reboots(conformance_dir):
    d = diff(
        conformance(conformance_dir, "resources/bsp_init_groups.json"),
        conformance(conformance_dir, "resources/bsp_update.json"),
    )
    assert d.transition == Transition.REBOOT
    assert d.removed == ("disks.json", "groups.json")
    assert d.added == ("device.json",)
    assert "system-owned entry groups.json removed" in d.reasons
