"""Every JSON of the pvtx conformance data goes through the revision parser.

Full states (those with `bsp/run.json`) must parse fully; packages parse in partial mode and must
be refused in full mode for lack of a BSP. Then specific facts about what the files hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import canonical
from shared.errors import InvalidState
from shared.state import Persistence, RestartPolicy, StatusGoal, parse_state

CONFORMANCE = Path(__file__).resolve().parent.parent.parent / "shared" / "conformance" / "pvtx"
FILES = sorted(p.relative_to(CONFORMANCE).as_posix() for p in CONFORMANCE.glob("*/*.json"))
FULL_STATES = {
    "resources/initial_state.json",
    "resources/bsp_init.json",
    "resources/bsp_init_groups.json",
    "resources/bsp_update.json",
    "expected/state_after_adding_existing.json",
    "expected/state_after_new_package.json",
    "expected/state_after_pvwificonnect.json",
    "expected/state_after_remove.json",
    "expected/state_bsp_update.json",
}


def load(conformance_dir: Path, name: str):
    return parse_state(
        (conformance_dir / name).read_bytes(), source=name, partial=name not in FULL_STATES
    )


def test_the_inventory_is_complete(conformance_dir):
    names = sorted(
        p.relative_to(conformance_dir).as_posix() for p in conformance_dir.glob("*/*.json")
    )
    assert len(names) == 29
    assert set(names) >= FULL_STATES


@pytest.mark.parametrize("name", FILES or ["<no conformance data>"])
def test_every_file_parses(conformance_dir, name):
    data = (conformance_dir / name).read_bytes()
    raw = json.loads(data)
    if name in FULL_STATES:
        state = parse_state(data, source=name)
        assert state.bsp is not None and state.bsp.bootable
    else:
        assert "bsp/run.json" not in raw
        with pytest.raises(InvalidState) as info:
            parse_state(data, source=name)
        assert (info.value.source, info.value.key) == (name, "bsp/run.json")
        state = parse_state(data, source=name, partial=True)
    assert dict(state.entries) == raw
    loaded = set(state.objects) | set(state.jsons)
    skipped = {k for k in raw if k.startswith("_sigs/") or k.endswith(("/src.json", "/build.json"))}
    assert loaded == set(raw) - skipped - {"#spec"}
    assert set(state.signatures) == {k for k in raw if k.startswith("_sigs/")}
    # the canonical form parses to the same state
    assert canonical.is_canonical(state.canonical_bytes())
    assert parse_state(state.canonical_bytes(), partial=state.partial) == state


def test_initial_state_contents(conformance_dir):
    state = load(conformance_dir, "resources/initial_state.json")
    assert [(c.name, c.group) for c in state.containers] == [
        ("awconnect", "root"),
        ("pv-avahi", "platform"),
        ("pvr-sdk", "platform"),
    ]
    assert [(g.name, g.timeout) for g in state.groups] == [
        ("data", 30),
        ("root", 30),
        ("platform", 30),
        ("app", 30),
    ]
    assert not state.runlevel_mode
    sdk = state.container("pvr-sdk")
    assert (sdk.verity, sdk.root_volume, sdk.roles) == (True, "root.squashfs", ("mgmt",))
    assert sdk.storage["docker--var-pvr-sdk"] == Persistence.PERMANENT
    assert all(c.restart_policy == RestartPolicy.SYSTEM for c in state.containers)
    assert state.container("awconnect").drivers["optional"] == ("wifi", "usbnet", "bluetooth")
    assert set(state.signatures) == {
        f"_sigs/{n}.json" for n in ("_hostconfig", "awconnect", "bsp", "pv-avahi", "pvr-sdk")
    }
    assert state.bsp.linux == "kernel.img" and state.bsp.initrd_config == "trail.config"
    assert state.owner("_config/awconnect/etc/iptables/dump") == "awconnect"
    assert state.owner("storage-mapping.json") is None
    assert len(state.objects) == 21 and len(state.object_shas()) == 21


def test_fit_bsp_with_device_json_groups(conformance_dir):
    state = load(conformance_dir, "resources/bsp_init.json")
    assert state.bsp.fit == "pantavisor.fit" and state.bsp.linux is None
    assert state.groups[0].name == "System" and state.groups[0].timeout is None
    assert state.containers == ()


def test_groups_json_without_device_json(conformance_dir):
    state = load(conformance_dir, "resources/bsp_init_groups.json")
    assert not state.runlevel_mode
    assert [g.name for g in state.groups][:2] == ["System", "data"]
    assert state.group("data").status_goal == StatusGoal.MOUNTED
    assert state.owner("groups.json") is None and state.owner("disks.json") is None


@pytest.mark.parametrize(
    ("name", "container"),
    [
        ("expected/state_after_add_from_tar.json", "watchdog_pinger"),
        ("resources/state-1.json", "nginx"),
        ("resources/pvws_with_config.json", "pvws"),
    ],
)
def test_packages_without_group_get_the_runlevel_root(conformance_dir, name, container):
    state = load(conformance_dir, name)
    assert state.runlevel_mode
    c = state.container(container)
    assert (c.group, c.explicit_group, c.restart_policy) == ("root", False, RestartPolicy.SYSTEM)


def test_app_packages_are_restart_policy_container(conformance_dir):
    vw = load(conformance_dir, "resources/vaultwarden.json").container("vaultwarden")
    assert (vw.group, vw.restart_policy) == ("app", RestartPolicy.CONTAINER)
    assert vw.auto_recovery is not None and vw.auto_recovery.policy == "on-failure"
    wifi = load(conformance_dir, "expected/state_after_pvwificonnect.json").container(
        "pvwificonnect"
    )
    assert (wifi.group, wifi.restart_policy) == ("platform", RestartPolicy.CONTAINER)


def test_config_only_packages_have_no_containers(conformance_dir):
    state = load(conformance_dir, "resources/config_a.json")
    assert state.containers == ()
    assert state.jsons["config_a/id.json"] is not None
    assert state.owner("_config/ventilation_ecu_io/etc/inittab") is None


def test_key_with_spaces(conformance_dir):
    state = load(conformance_dir, "resources/state_with_spaces.json")
    assert "_config/container/name with spaces.txt" in state.objects


def test_removal_leaves_no_awconnect(conformance_dir):
    state = load(conformance_dir, "expected/state_after_remove.json")
    assert [c.name for c in state.containers] == ["pv-avahi", "pvr-sdk"]
    assert not any(k.startswith(("awconnect/", "_config/awconnect/")) for k in state.entries)
