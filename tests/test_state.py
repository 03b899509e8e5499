"""Unit tests of the revision model, one rule at a time (pantavisor.md §1)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from pvreal.examples import example
from shared import canonical
from shared.default_groups import DEFAULT_GROUPS_JSON
from shared.errors import InvalidJson, InvalidState
from shared.state import (
    MULTI1_SPEC,
    AutoRecovery,
    Persistence,
    RestartPolicy,
    StatusGoal,
    parse_state,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def rev0() -> dict:
    """The bundled example: bsp + pv-avahi (platform, system) + web (app, container)."""
    return json.loads(example("rev0.json").read_text())


def add_container(state: dict, name: str, **run) -> dict:
    base = {"name": name, "type": "lxc", "root-volume": "root.squashfs"}
    state[f"{name}/run.json"] = {**base, **run}
    state[f"{name}/root.squashfs"] = sha(name)
    return state


def drop(state: dict, prefix: str) -> dict:
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]
    return state


def invalid(state, *, partial: bool = False) -> InvalidState:
    with pytest.raises(InvalidState) as info:
        parse_state(state, source="s.json", partial=partial)
    assert info.value.source == "s.json"
    return info.value


# ---- reading the example


def test_example_parses_into_containers_groups_and_objects(rev0):
    state = parse_state(rev0)
    assert [c.name for c in state.containers] == ["pv-avahi", "web"]
    assert [g.name for g in state.groups] == ["data", "root", "platform", "app"]
    assert not state.runlevel_mode
    web = state.container("web")
    assert (web.group, web.status_goal, web.restart_policy) == (
        "app",
        StatusGoal.READY,
        RestartPolicy.CONTAINER,
    )
    assert web.storage == {
        "docker--var-www": Persistence.PERMANENT,
        "lxc-overlay": Persistence.BOOT,
    }
    assert state.bsp.linux == "kernel.img" and state.bsp.bootable
    assert "web/src.json" not in state.objects and "web/src.json" not in state.jsons
    assert state.jsons["web/run.json"] == rev0["web/run.json"]
    assert state.objects["bsp/kernel.img"] == rev0["bsp/kernel.img"]
    assert state.entries == rev0


def test_text_bytes_and_mapping_inputs_agree(rev0):
    text = json.dumps(rev0, indent=2)
    a, b, c = parse_state(text), parse_state(text.encode()), parse_state(rev0)
    assert a == b == c
    assert a.digest == hashlib.sha256(canonical.dump_bytes(rev0)).hexdigest()
    assert len({a, b, c}) == 1


def test_state_does_not_follow_later_changes_to_the_input(rev0):
    state = parse_state(rev0)
    rev0["web/run.json"]["group"] = "root"
    rev0["bsp/kernel.img"] = sha("other")
    assert state.entries["web/run.json"]["group"] == "app"
    assert state.objects["bsp/kernel.img"] != rev0["bsp/kernel.img"]
    assert state.container("web").run["group"] == "app"


def test_non_string_keys_are_rejected(rev0):
    rev0[7] = sha("x")
    assert invalid(rev0).key == "7"


def test_canonical_bytes_round_trip(rev0):
    state = parse_state(json.dumps(rev0, indent=1))
    data = state.canonical_bytes()
    assert canonical.is_canonical(data)
    assert parse_state(data) == state


def test_object_shas_are_distinct_values(rev0):
    rev0["web/copy.bin"] = rev0["web/root.squashfs"]
    state = parse_state(rev0)
    assert len(state.objects) == len(state.object_shas()) + 1
    assert rev0["web/root.squashfs"] in state.object_shas()


# ---- #spec and the root


def test_missing_spec_names_the_key(rev0):
    del rev0["#spec"]
    assert invalid(rev0).key == "#spec"


def test_unknown_spec_names_the_key(rev0):
    rev0["#spec"] = "pantavisor-service-system@2"
    err = invalid(rev0)
    assert err.key == "#spec" and "unknown spec" in err.message


def test_root_must_be_an_object():
    with pytest.raises(InvalidState, match="root must be a JSON object"):
        parse_state("[1, 2]", source="list.json")


def test_duplicate_key_in_text_is_rejected(rev0):
    text = canonical.dumps(rev0)
    text = text[:-1] + ',"device.json":{}}'
    with pytest.raises(InvalidJson) as info:
        parse_state(text, source="dup.json")
    assert (info.value.source, info.value.key) == ("dup.json", "device.json")


# ---- keys and values


@pytest.mark.parametrize(
    "bad",
    ["/etc/passwd", "web/../../etc/x", "web//x", "web/x/", "./web/x", "web/./x", ""],
)
def test_unclean_paths_are_rejected(rev0, bad):
    rev0[bad] = sha("x")
    assert invalid(rev0).key == bad


@pytest.mark.parametrize(
    "value",
    ["ABCDEF" + "0" * 58, "0" * 63, "0" * 65, "g" * 64, 12, None, ["0" * 64]],
)
def test_object_values_must_be_lowercase_sha256(rev0, value):
    rev0["bsp/kernel.img"] = value
    err = invalid(rev0)
    assert err.key == "bsp/kernel.img" and "sha256" in err.message


def test_json_key_with_sha_value_is_an_object_and_other_values_are_inline(rev0):
    rev0["web/data.json"] = sha("data")
    rev0["web/meta.json"] = ["a", "b"]
    state = parse_state(rev0)
    assert state.objects["web/data.json"] == sha("data")
    assert state.jsons["web/meta.json"] == ["a", "b"]


def test_json_key_with_uppercase_sha_is_rejected(rev0):
    rev0["web/data.json"] = sha("data").upper()
    assert invalid(rev0).key == "web/data.json"


def test_keys_with_spaces_are_fine(rev0):
    rev0["_config/web/name with spaces.txt"] = sha("x")
    assert parse_state(rev0).owner("_config/web/name with spaces.txt") == "web"


def test_signatures_build_and_src_are_not_loaded(rev0):
    rev0["_sigs/web.json"] = {"#spec": "pvs@2", "protected": "e30", "signature": "AA"}
    rev0["bsp/build.json"] = {"commit": "abc"}
    state = parse_state(rev0)
    assert state.signatures == {"_sigs/web.json": rev0["_sigs/web.json"]}
    for key in ("_sigs/web.json", "bsp/build.json", "web/src.json"):
        assert key not in state.objects and key not in state.jsons
        assert key in state.entries


def test_signature_must_be_an_object(rev0):
    rev0["_sigs/web.json"] = sha("sig")
    assert invalid(rev0).key == "_sigs/web.json"


# ---- BSP


def test_full_state_needs_a_bsp(rev0):
    drop(rev0, "bsp/")
    err = invalid(rev0)
    assert err.key == "bsp/run.json" and "--partial" in err.message
    assert parse_state(rev0, partial=True).bsp is None


@pytest.mark.parametrize(
    ("run", "ok"),
    [
        ({"linux": "kernel.img", "initrd": "pantavisor"}, True),
        ({"linux": "kernel.img"}, False),
        ({"initrd": "pantavisor"}, False),
        ({"fit": "pantavisor.fit"}, True),
        ({"rpiab": "rpiboot.img.gz"}, True),
        ({"modules": "modules.squashfs"}, False),
    ],
)
def test_bootable_bsp_rule(rev0, run, ok):
    drop(rev0, "bsp/")
    rev0["bsp/run.json"] = run
    for name in run.values():
        rev0[f"bsp/{name}"] = sha(name)
    if ok:
        assert parse_state(rev0).bsp.bootable
    else:
        assert invalid(rev0).key == "bsp/run.json"


def test_bsp_assets_must_be_objects(rev0):
    del rev0["bsp/firmware.squashfs"]
    err = invalid(rev0)
    assert err.key == "bsp/run.json" and "firmware.squashfs" in err.message
    assert parse_state(rev0, partial=True).bsp.firmware == "firmware.squashfs"


def test_bsp_fields(rev0):
    rev0["bsp/run.json"].update(
        {
            "addons": ["addon-plymouth.cpio.xz4"],
            "modules_6.6.40": "mods.squashfs",
            "initrd_config": "trail.config",
            "fdt": "board.dtb",
        }
    )
    for name in ("addon-plymouth.cpio.xz4", "mods.squashfs", "trail.config", "board.dtb"):
        rev0[f"bsp/{name}"] = sha(name)
    bsp = parse_state(rev0).bsp
    assert bsp.addons == ("addon-plymouth.cpio.xz4",)
    assert bsp.modules_by_release == {"6.6.40": "mods.squashfs"}
    assert (bsp.initrd_config, bsp.fdt) == ("trail.config", "board.dtb")


def test_bsp_values_must_be_strings(rev0):
    rev0["bsp/run.json"]["linux"] = 5
    err = invalid(rev0)
    assert err.key == "bsp/run.json" and "linux" in err.message


# ---- groups


def test_groups_from_device_json_keep_order_and_none_timeout(rev0):
    rev0["device.json"]["groups"] = [
        {"name": "System", "restart_policy": "system"},
        {"name": "app", "status_goal": "READY", "timeout": 45},
    ]
    add_container(rev0, "pv-avahi", group="System")
    add_container(rev0, "web", group="app")
    state = parse_state(rev0)
    system, app = state.groups
    assert (system.name, system.status_goal, system.restart_policy, system.timeout) == (
        "System",
        StatusGoal.STARTED,
        RestartPolicy.SYSTEM,
        None,
    )
    assert (app.restart_policy, app.status_goal, app.timeout) == (
        RestartPolicy.CONTAINER,
        StatusGoal.READY,
        45,
    )
    assert not state.runlevel_mode


def test_groups_json_used_without_device_json(rev0):
    del rev0["device.json"]
    rev0["groups.json"] = [{"name": "only", "restart_policy": "container"}]
    add_container(rev0, "pv-avahi", group="only")
    add_container(rev0, "web", group="only")
    state = parse_state(rev0)
    assert [g.name for g in state.groups] == ["only"] and not state.runlevel_mode


def test_groups_json_ignored_when_device_json_exists(rev0):
    rev0["groups.json"] = [{"name": "ignored"}]
    assert [g.name for g in parse_state(rev0).groups] == ["data", "root", "platform", "app"]


def test_default_groups_and_runlevel_mode(rev0):
    del rev0["device.json"]
    state = parse_state(rev0)
    assert state.runlevel_mode
    assert [(g.name, g.status_goal, g.restart_policy, g.timeout) for g in state.groups] == [
        ("data", StatusGoal.MOUNTED, RestartPolicy.SYSTEM, 30),
        ("root", StatusGoal.STARTED, RestartPolicy.SYSTEM, 30),
        ("platform", StatusGoal.STARTED, RestartPolicy.SYSTEM, 30),
        ("app", StatusGoal.STARTED, RestartPolicy.CONTAINER, 30),
    ]
    assert state.group("app").auto_recovery == AutoRecovery(
        policy="on-failure",
        max_retries=5,
        retry_delay=5.0,
        backoff_factor=2.0,
        stable_timeout=30.0,
        backoff_policy="reboot",
    )
    assert all(state.group(n).auto_recovery is None for n in ("data", "root", "platform"))
    assert len(DEFAULT_GROUPS_JSON) == 4


def test_device_json_without_groups_cannot_place_containers(rev0):
    del rev0["device.json"]["groups"]
    err = invalid(rev0)
    assert err.key == "pv-avahi/run.json" and "'platform' is not defined" in err.message
    del rev0["pv-avahi/run.json"]["group"]
    del rev0["web/run.json"]["group"]
    assert "defines no groups" in invalid(rev0).message
    drop(rev0, "pv-avahi/")
    drop(rev0, "web/")
    drop(rev0, "_config/web/")
    assert parse_state(rev0).groups == ()


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ([], "non-empty"),
        ({"name": "x"}, "non-empty"),
        (["data"], "groups[0] must be an object"),
        ([{"description": "no name"}], "groups[0].name"),
        ([{"name": "a"}, {"name": "a"}], "defined twice"),
        ([{"name": "a", "status_goal": "BOGUS"}], "groups[0].status_goal"),
        ([{"name": "a", "restart_policy": "sometimes"}], "groups[0].restart_policy"),
        ([{"name": "a", "timeout": -1}], "groups[0].timeout"),
        ([{"name": "a", "timeout": "soon"}], "groups[0].timeout"),
        ([{"name": "a", "auto_recovery": {"policy": "maybe"}}], "groups[0].auto_recovery.policy"),
    ],
)
def test_bad_groups_name_device_json(rev0, groups, fragment):
    drop(rev0, "pv-avahi/")
    drop(rev0, "web/")
    drop(rev0, "_config/web/")
    rev0["device.json"]["groups"] = groups
    err = invalid(rev0)
    assert err.key == "device.json" and fragment in err.message


def test_timeout_as_digit_string_is_accepted(rev0):
    rev0["device.json"]["groups"][3]["timeout"] = "90"
    assert parse_state(rev0).group("app").timeout == 90


# ---- group assignment


def runlevel_state(rev0, *names, **explicit) -> dict:
    del rev0["device.json"]
    drop(rev0, "pv-avahi/")
    drop(rev0, "web/")
    drop(rev0, "_config/web/")
    for name in names:
        add_container(rev0, name, **explicit.get(name, {}))
    return rev0


def test_runlevel_first_unassigned_goes_to_root_others_to_platform(rev0):
    state = parse_state(runlevel_state(rev0, "zeta", "alpha", "mid"))
    assert {c.name: c.group for c in state.containers} == {
        "alpha": "root",
        "mid": "platform",
        "zeta": "platform",
    }
    assert not any(c.explicit_group for c in state.containers)
    assert [c.name for c in state.containers] == ["alpha", "mid", "zeta"]


def test_runlevel_explicit_root_means_no_default_root(rev0):
    state = parse_state(runlevel_state(rev0, "alpha", "beta", "net", net={"group": "root"}))
    assert {c.name: c.group for c in state.containers} == {
        "alpha": "platform",
        "beta": "platform",
        "net": "root",
    }
    assert state.container("net").explicit_group


def test_runlevel_alias_is_honoured_and_group_wins(rev0):
    state = parse_state(
        runlevel_state(
            rev0, "a", "b", a={"runlevel": "app"}, b={"runlevel": "data", "group": "root"}
        )
    )
    assert state.container("a").group == "app"
    assert state.container("a").restart_policy == RestartPolicy.CONTAINER
    assert state.container("b").group == "root"


def test_bad_runlevel_names_the_run_json(rev0):
    err = invalid(runlevel_state(rev0, "a", a={"runlevel": "middleware"}))
    assert err.key == "a/run.json" and "runlevel" in err.message


def test_explicit_groups_unassigned_go_to_last_group(rev0):
    del rev0["web/run.json"]["group"]
    state = parse_state(rev0)
    web = state.container("web")
    assert (web.group, web.explicit_group) == ("app", False)
    rev0["device.json"]["groups"] = rev0["device.json"]["groups"][:3]
    assert parse_state(rev0).container("web").group == "platform"


def test_unknown_group_is_rejected_in_full_mode_and_defaulted_in_partial(rev0):
    rev0["web/run.json"]["group"] = "nowhere"
    del rev0["web/run.json"]["status_goal"]
    err = invalid(rev0)
    assert err.key == "web/run.json" and "nowhere" in err.message
    web = parse_state(rev0, partial=True).container("web")
    assert (web.group, web.status_goal, web.restart_policy) == (
        "nowhere",
        StatusGoal.STARTED,
        RestartPolicy.CONTAINER,
    )


def test_containers_in_group_order_then_name(rev0):
    add_container(rev0, "aaa", group="app")
    add_container(rev0, "net", group="root")
    state = parse_state(rev0)
    assert [c.name for c in state.containers] == ["net", "pv-avahi", "aaa", "web"]


# ---- inheritance


def test_container_inherits_goal_and_policy_from_its_group(rev0):
    avahi = parse_state(rev0).container("pv-avahi")
    assert (avahi.status_goal, avahi.restart_policy) == (StatusGoal.STARTED, RestartPolicy.SYSTEM)
    rev0["device.json"]["groups"][2]["status_goal"] = "READY"
    del rev0["pv-avahi/run.json"]["restart_policy"]
    rev0["device.json"]["groups"][2]["restart_policy"] = "container"
    avahi = parse_state(rev0).container("pv-avahi")
    assert (avahi.status_goal, avahi.restart_policy) == (StatusGoal.READY, RestartPolicy.CONTAINER)


def test_own_values_override_the_group(rev0):
    rev0["web/run.json"]["restart_policy"] = "system"
    web = parse_state(rev0).container("web")
    assert (web.status_goal, web.restart_policy) == (StatusGoal.READY, RestartPolicy.SYSTEM)


def test_auto_recovery_is_inherited_whole_or_not_at_all(rev0):
    state = parse_state(rev0)
    assert state.container("web").auto_recovery == state.group("app").auto_recovery
    assert state.container("web").auto_recovery.max_retries == 3
    assert state.container("pv-avahi").auto_recovery is None
    rev0["web/run.json"]["auto_recovery"] = {"policy": "always", "retry_delay": 1}
    own = parse_state(rev0).container("web").auto_recovery
    # no field is merged from the group's auto_recovery
    assert own == AutoRecovery(policy="always", retry_delay=1.0)


def test_auto_recovery_reads_policy_not_type(rev0):
    rev0["web/run.json"]["auto_recovery"] = {"type": "always", "max_retries": 2}
    ar = parse_state(rev0).container("web").auto_recovery
    assert (ar.policy, ar.max_retries) == ("no", 2)


@pytest.mark.parametrize("backoff", ["reboot", "never", "30s", "10min", "1h"])
def test_backoff_policy_values(rev0, backoff):
    rev0["web/run.json"]["auto_recovery"] = {"policy": "on-failure", "backoff_policy": backoff}
    assert parse_state(rev0).container("web").auto_recovery.backoff_policy == backoff


@pytest.mark.parametrize(
    ("recovery", "fragment"),
    [
        ({"policy": "sometimes"}, "auto_recovery.policy"),
        ({"policy": "always", "backoff_policy": "later"}, "backoff_policy"),
        ({"policy": "always", "max_retries": -1}, "max_retries"),
        ({"policy": "always", "max_retries": 1.5}, "max_retries"),
        ({"policy": "always", "retry_delay": "5"}, "retry_delay"),
        ("always", "auto_recovery"),
    ],
)
def test_bad_auto_recovery_names_the_run_json(rev0, recovery, fragment):
    rev0["web/run.json"]["auto_recovery"] = recovery
    err = invalid(rev0)
    assert err.key == "web/run.json" and fragment in err.message


# ---- container fields


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("status_goal", "BOGUS", "status_goal"),
        ("status_goal", 3, "status_goal"),
        ("restart_policy", "always", "restart_policy"),
        ("group", 7, "group"),
        ("name", "other", "name"),
        ("type", "docker", "type"),
        ("#spec", "service-manifest-run@9", "#spec"),
        ("storage", ["lxc-overlay"], "storage"),
        ("storage", {"x": "boot"}, "storage"),
        ("volumes", "extra.squashfs", "volumes"),
        ("roles", "mgmt", "roles"),
        ("drivers", {"wanted": ["wifi"]}, "drivers"),
        ("drivers", {"required": "wifi"}, "drivers.required"),
        ("root-volume", 1, "root-volume"),
        ("root-volume", "dm:", "root-volume"),
    ],
)
def test_wrong_run_json_values_name_the_key(rev0, field, value, fragment):
    rev0["web/run.json"][field] = value
    err = invalid(rev0)
    assert err.key == "web/run.json"
    assert fragment in err.message


def test_missing_name_is_rejected(rev0):
    del rev0["web/run.json"]["name"]
    assert invalid(rev0).key == "web/run.json"


def test_run_json_must_be_an_object(rev0):
    rev0["web/run.json"] = ["lxc"]
    assert invalid(rev0).key == "web/run.json"


def test_invalid_persistence_falls_back_to_boot_and_disk_is_kept(rev0):
    rev0["web/run.json"]["storage"] = {
        "a": {"persistence": "forever"},
        "b": {"persistence": "revision", "disk": "crypt"},
        "c": {},
    }
    web = parse_state(rev0).container("web")
    assert web.storage == {"a": Persistence.BOOT, "b": Persistence.REVISION}
    assert web.storage_disks == {"b": "crypt"}


def test_roles_array_or_object(rev0):
    rev0["web/run.json"]["roles"] = ["mgmt"]
    assert parse_state(rev0).container("web").roles == ("mgmt",)
    rev0["web/run.json"]["roles"] = {"nobody": {}, "mgmt": {}}
    assert parse_state(rev0).container("web").roles == ("mgmt", "nobody")


def test_dm_prefix_marks_verity(rev0):
    rev0["web/run.json"]["root-volume"] = "dm:root.squashfs"
    rev0["web/_dm/root.squashfs.json"] = {"type": "dm-verity", "data_device": "root.squashfs"}
    web = parse_state(rev0).container("web")
    assert (web.root_volume, web.verity) == ("root.squashfs", True)
    assert parse_state(rev0).container("pv-avahi").verity is False


def test_verity_needs_its_dm_json(rev0):
    rev0["web/run.json"]["root-volume"] = "dm:root.squashfs"
    err = invalid(rev0)
    assert err.key == "web/run.json" and "_dm/root.squashfs.json" in err.message


def test_root_volume_and_volumes_must_be_objects_in_full_mode(rev0):
    rev0["web/run.json"]["volumes"] = ["extra.squashfs"]
    err = invalid(rev0)
    assert err.key == "web/run.json" and "web/extra.squashfs" in err.message
    assert parse_state(rev0, partial=True).container("web").volumes == ("extra.squashfs",)
    rev0["web/extra.squashfs"] = sha("extra")
    assert parse_state(rev0).container("web").volumes == ("extra.squashfs",)


def test_drivers_and_config(rev0):
    rev0["web/run.json"]["drivers"] = {"required": ["wifi"], "optional": []}
    web = parse_state(rev0).container("web")
    assert web.drivers == {"required": ("wifi",), "optional": ()}
    assert web.config == "lxc.container.conf"
    assert web.run["name"] == "web"


# ---- container parts without run.json


@pytest.mark.parametrize(
    "part",
    [
        "lxc.container.conf",
        "root.squashfs",
        "root.squashfs.docker-digest",
        "_dm/root.squashfs.json",
    ],
)
def test_container_part_without_run_json_is_rejected(rev0, part):
    rev0[f"ghost/{part}"] = {"type": "dm-verity"} if part.endswith(".json") else sha(part)
    err = invalid(rev0)
    assert err.key == "ghost/run.json" and f"ghost/{part}" in err.message
    invalid(rev0, partial=True)


def test_docker_src_json_without_run_json_is_rejected(rev0):
    rev0["ghost/src.json"] = {"#spec": "service-manifest-src@1"}
    assert invalid(rev0).key == "ghost/run.json"


def test_other_directories_without_run_json_are_system_files(rev0):
    rev0["config_a/id.json"] = {"id": 1}
    rev0["_hostconfig/etc/hosts"] = sha("hosts")
    state = parse_state(rev0)
    assert state.owner("config_a/id.json") is None
    assert state.owner("_hostconfig/etc/hosts") is None


# ---- ownership


def test_owner_strips_config_and_falls_back_to_system(rev0):
    rev0["network-mapping.json"] = {}
    rev0["_config/ghost/etc/x"] = sha("x")
    state = parse_state(rev0)
    assert state.owner("web/root.squashfs") == "web"
    assert state.owner("_config/web/etc/nginx/conf.d/site.conf") == "web"
    assert state.owner("_config/ghost/etc/x") is None
    assert state.owner("pv-avahi/run.json") == "pv-avahi"
    for key in ("bsp/kernel.img", "device.json", "network-mapping.json", "#spec", "_config"):
        assert state.owner(key) is None


# ---- legacy multi-platform


def multi1() -> dict:
    return {
        "#spec": MULTI1_SPEC,
        "pantavisor.json": {
            "linux": "kernel.img",
            "initrd": "pantavisor.cpio.xz",
            "platforms": ["alpine", "listed-only"],
            "volumes": ["alpine.squashfs"],
        },
        "alpine.json": {
            "name": "alpine",
            "type": "lxc",
            "exec": "/sbin/init",
            "configs": ["alpine/lxc.container.conf"],
            "share": ["NETWORK", "UTS"],
        },
        "alpine/lxc.container.conf": sha("conf"),
        "alpine.squashfs": sha("alpine"),
        "kernel.img": sha("kernel"),
        "pantavisor.cpio.xz": sha("initrd"),
    }


def test_multi_platform_state():
    state = parse_state(multi1())
    assert state.spec == MULTI1_SPEC and state.runlevel_mode
    assert [c.name for c in state.containers] == ["alpine"]  # listed-only has no JSON: dropped
    alpine = state.container("alpine")
    assert (alpine.group, alpine.restart_policy, alpine.run_key) == (
        "root",
        RestartPolicy.SYSTEM,
        "alpine.json",
    )
    assert state.bsp.linux == "kernel.img"
    assert state.owner("alpine.json") == "alpine"
    assert state.owner("alpine/lxc.container.conf") == "alpine"
    assert state.owner("kernel.img") is None


def test_multi_platform_needs_pantavisor_json():
    state = multi1()
    del state["pantavisor.json"]
    assert invalid(state).key == "pantavisor.json"
    assert parse_state(state, partial=True).containers == ()


def test_multi_platform_needs_kernel_and_initrd():
    state = multi1()
    del state["pantavisor.json"]["initrd"]
    assert invalid(state).key == "pantavisor.json"


def test_multi_platform_platform_described_twice():
    state = multi1()
    state["other.json"] = copy.deepcopy(state["alpine.json"])
    assert invalid(state).key in ("alpine.json", "other.json")
