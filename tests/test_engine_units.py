"""Unit tests of the engine's pure parts: progress records, config keys, latch, GC, pv-ctrl rules."""

from __future__ import annotations

import pytest

from shared.engine.bootloader import Latch, choose_boot
from shared.engine.config import BootLatch, Config, ConfigError, Ordering
from shared.engine.containers import parse_duration
from shared.engine.ctrl import ctrl_decision
from shared.engine.gc import keep_revisions, plan_gc
from shared.engine.progress import PROGRESS_NUMBER, Msg, Progress, Status
from shared.errors import InvalidJson


@pytest.mark.parametrize(
    ("status", "number"),
    [
        ("NEW", 0),
        ("QUEUED", 5),
        ("DOWNLOADING", 25),
        ("INPROGRESS", 50),
        ("TESTING", 75),
        ("UPDATED", 100),
        ("DONE", 100),
        ("WONTGO", 100),
        ("ERROR", 100),
    ],
)
def test_progress_numbers_are_pantavisors(status, number):
    assert PROGRESS_NUMBER[Status(status)] == number
    assert Progress.make(Status(status), "x").progress == number


def test_progress_json_uses_pantavisor_keys_and_round_trips():
    record = Progress.make(Status.QUEUED, Msg.retried(3, 10), retries=3)
    doc = record.to_json()
    assert doc == {"status": "QUEUED", "status-msg": "Retried 3 of 10", "progress": 5, "retries": 3}
    assert Progress.from_json(doc) == record


def test_progress_from_json_names_the_bad_key():
    with pytest.raises(InvalidJson) as err:
        Progress.from_json({"status": "FINE"}, source="trails/1/.pv/progress")
    assert err.value.key == "status" and "trails/1/.pv/progress" in str(err.value)
    with pytest.raises(InvalidJson) as err:
        Progress.from_json({"status": "DONE", "retries": "2"})
    assert err.value.key == "retries"


def test_messages_are_word_for_word():
    assert Msg.space_required(10, 4) == "Space required 10 B, available 4 B"
    assert Msg.download_retry(2, 10) == "Downloading update artifacts, retry 2 of 10"
    assert Msg.metadata_retry(2, 10) == "Downloading update metadata, retry 2 of 10"
    assert Msg.UNEXPECTED_ROLLBACK == "Unexpected rollback"


def test_config_defaults_are_section_6():
    c = Config()
    assert (c.commit_delay, c.goals_timeout, c.network_timeout, c.updater_interval) == (
        25,
        120,
        120,
        5,
    )
    assert (c.revision_retries, c.gc_reserved, c.gc_threshold, c.transfer_max_count) == (
        10,
        5,
        0,
        5,
    )
    assert c.ordering is Ordering.HARDENED and c.boot_latch is BootLatch.SINGLE_SHOT


def test_config_accepts_keys_and_legacy_aliases():
    c = Config.from_mapping(
        {
            "updater.commit.delay": "5",
            "PV_UPDATER_GOALS_TIMEOUT": 10,
            "updater.keep_factory": "1",
            "PVTWIN_ORDERING": "faithful",
        }
    )
    assert (c.commit_delay, c.goals_timeout, c.gc_keep_factory, c.ordering) == (
        5,
        10,
        True,
        Ordering.FAITHFUL,
    )
    assert c.as_keys()["PV_UPDATER_COMMIT_DELAY"] == 5


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"PV_NOPE": 1}, "PV_NOPE"),
        ({"PV_REVISION_RETRIES": "ten"}, "PV_REVISION_RETRIES"),
        ({"PV_BOOTLOADER_TYPE": "lilo"}, "PV_BOOTLOADER_TYPE"),
        ({"PV_UPDATER_COMMIT_DELAY": -1}, "PV_UPDATER_COMMIT_DELAY"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(values, source="pantavisor.config")
    assert err.value.key == key and err.value.source == "pantavisor.config"


def test_single_shot_latch_follows_the_uboot_script():
    first = choose_boot("0", "1", Latch())
    assert (first.rev, first.latch.pv_trying, first.trying) == ("1", "1", True)
    second = choose_boot("0", "1", first.latch)
    assert (second.rev, second.latch.pv_trying, second.trying) == ("0", "", False)
    assert choose_boot("0", "", Latch("1", 1)).rev == "0"
    # after the fallback cleared the latch, a pv_try still set is tried again (a new first attempt)
    assert choose_boot("0", "1", second.latch).rev == "1"


def test_counter_latch_tries_n_times_then_falls_back():
    latch, booted = Latch(), []
    for _ in range(4):
        choice = choose_boot("0", "1", latch, BootLatch.COUNTER, attempts=3)
        booted.append(choice.rev)
        latch = choice.latch
    assert booted == ["1", "1", "1", "0"]


def test_gc_keep_set_and_plan():
    cfg = Config()
    keep = keep_revisions(running="2", in_flight="3", pv_rev="1", pv_try="4", config=cfg)
    assert keep == {"1", "2", "3", "4"}
    faithful = Config(ordering=Ordering.FAITHFUL, gc_keep_factory=True)
    assert keep_revisions(running="2", in_flight=None, pv_rev="1", pv_try="4", config=faithful) == {
        "0",
        "1",
        "2",
    }
    plan = plan_gc(
        {"0": {"a", "b"}, "1": {"b", "c"}, "locals/x": {"d"}},
        {"a", "b", "c", "d", "e", "f"},
        {"1"},
        keep_objects={"f"},
    )
    assert plan.revisions == ("0", "locals/x")
    assert plan.objects == ("a", "d", "e")


@pytest.mark.parametrize(
    ("op", "kwargs", "status", "retry"),
    [
        ("LOCAL_RUN", {"update_active": True}, 503, 600),
        ("REBOOT_DEVICE", {"update_active": True}, 503, 600),
        ("RUN_GC", {"update_active": True}, 200, None),
        ("RUN_GC", {"update_active": False, "command_queued": True}, 503, 120),
        ("MAKE_FACTORY", {"update_active": False, "claimed": True}, 409, None),
        ("GO_REMOTE", {"update_active": False, "control_remote": False}, 409, None),
        ("UPDATE_METADATA", {"update_active": False, "local_mode": True}, 409, None),
        ("FROBNICATE", {"update_active": False}, 400, None),
        ("LOCAL_RUN_COMMIT", {"update_active": False}, 200, None),
        # ctrl/ctrl_cmd.c pv_ctrl_cmd_add: nothing to do is 204, not queued
        ("GO_REMOTE", {"update_active": False, "local_mode": False}, 204, None),
        ("GO_REMOTE", {"update_active": False, "local_mode": True}, 200, None),
        ("UNCLAIM", {"update_active": False, "claimed": False}, 204, None),
        ("UNCLAIM", {"update_active": False, "claimed": True}, 200, None),
        ("UNCLAIM", {"update_active": True, "claimed": False}, 503, 600),
        ("DEFER_REBOOT", {"update_active": False, "debug_shell": False}, 409, None),
        ("DEFER_REBOOT", {"update_active": False}, 200, None),
        ("GO_REMOTE", {"update_active": False, "command_queued": True}, 204, None),
    ],
)
def test_ctrl_rejection_rules(op, kwargs, status, retry):
    decision = ctrl_decision(op, **kwargs)
    assert (decision.status, decision.retry_after) == (status, retry)


def test_backoff_durations():
    assert parse_duration("30s") == 30 and parse_duration("10min") == 600
    assert parse_duration("1h") == 3600 and parse_duration("reboot") is None
