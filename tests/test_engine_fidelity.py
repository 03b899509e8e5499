"""Pantavisor's behaviour, read from its C source, checked on the engine (docs/fidelity.md).

Each test drives `shared.engine.updater.Updater` directly (a DiskView boot, then events) and
asserts the exact commands: progress records as the Hub sees them (status, message, progress,
retries), boot env writes and reboots. Each docstring names the C file and function the expected
behaviour was read from (pantavisor/pantavisor, main). Unless a test says otherwise, both
orderings must do what C does; where the hardened ordering differs on purpose, the test shows
both and docs/orderings.md says why.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from enginekit import (
    APP,
    BSP,
    FAITHFUL,
    HARDENED,
    INTAKE_RECORDS,
    OLD,
    boot_disk,
    download,
    env_writes,
    metadata,
    offer,
    reboots,
    rec,
    records,
    revision,
    running,
    settle,
)

from shared.engine.commands import (
    ArmTimer,
    CancelTimer,
    FetchMetadata,
    FetchObject,
    ReportProgress,
    StartContainers,
    WriteDoneMarker,
)
from shared.engine.config import Config, Ordering
from shared.engine.events import (
    ContainerExited,
    ContainersStopped,
    ContainerStarted,
    CtrlCommand,
    GcDone,
    HubReached,
    HubRequestFailed,
    MetadataFailed,
    MetadataReceived,
    ObjectFetched,
    PendingSteps,
    Step,
    StorageStats,
    TimerFired,
    TrailView,
)
from shared.engine.progress import Msg, Status
from shared.engine.updater import Phase

BOTH = pytest.mark.parametrize("config", [FAITHFUL, HARDENED], ids=["faithful", "hardened"])
DONE_1 = {"1": TrailView(OLD, rec(Status.DONE, Msg.DONE), True)}


def with_config(config, **values):
    return replace(config, **values)


def updated_non_reboot(config, trails=None):
    """Revision "2" (APP) installed without a reboot and UPDATED: pv_try stays "2". `trails`:
    more trails on the disk it booted from."""
    u = running(config, trails={**DONE_1, **(trails or {})})
    download(u, APP)
    u.handle(ContainersStopped(("app",)))
    u.handle(ContainerStarted("app"))
    u.handle(HubReached())
    u.handle(TimerFired("commit"))
    cmds = u.handle(TimerFired("stable:app")) if u.phase is Phase.TESTING else []
    assert u.phase is Phase.IDLE and u.pv_try == "2" and u.pv_rev == "1", cmds
    return u


def try_boot(config, record=None, **kw):
    """Booted into "2" (BSP) by the try latch: pv_rev "1", pv_try "2"."""
    trails = {
        **DONE_1,
        "2": TrailView(BSP, record or rec(Status.INPROGRESS, Msg.REBOOTING, 1)),
    }
    return boot_disk("2", "1", "2", trails, config=config, **kw)


# ============================================================ 1. pv_update_finish clears pv_try


@BOTH
def test_rejected_step_after_updated_revision_unsets_pv_try(config):
    """update/update.c pv_update_finish: WONTGO while not trying an update (the booted revision
    is not pv_try) calls pv_bootloader_fail_update, which unsets pv_try: the UPDATED revision
    is never tried and the next boot is a plain boot of pv_rev."""
    u = updated_non_reboot(config)
    cmds = offer(u, APP, rev="3", signature_error=Msg.SIG_FAILED)
    assert records(cmds) == [
        ("QUEUED", "Retried 0 of 10", 5, 0),
        ("WONTGO", Msg.SIG_FAILED, 100, 1),
    ]
    assert env_writes(cmds) == [(None, "")] and u.pv_try == ""


@BOTH
def test_re_report_of_a_failed_step_unsets_pv_try(config):
    """update/update.c pv_update_start_install: a step whose record is already final is saved
    and reported again (_call_report_cb); pv_update_finish then unsets pv_try for a failed one."""
    u = updated_non_reboot(config, {"3": TrailView(APP, rec(Status.ERROR, Msg.HUB_NOT_STABLE, 2))})
    cmds = offer(u, APP, rev="3")
    assert records(cmds) == [("ERROR", Msg.HUB_NOT_STABLE, 100, 2)]
    assert ReportProgress("3", rec(Status.ERROR, Msg.HUB_NOT_STABLE, 2)) in cmds
    assert env_writes(cmds) == [(None, "")]


@BOTH
def test_re_report_of_a_done_step_leaves_pv_try(config):
    """update/update.c pv_update_finish: only WONTGO and ERROR call the bootloader's
    fail-update; re-reporting a DONE record changes no env."""
    u = updated_non_reboot(config, {"3": TrailView(APP, rec(Status.DONE, Msg.DONE))})
    cmds = offer(u, APP, rev="3")
    assert records(cmds) == [("DONE", Msg.DONE, 100, 0)] and env_writes(cmds) == []


@BOTH
def test_a_final_record_from_the_hub_is_not_final_for_the_intake(config):
    """update/update.c pv_update_start_install: only a record read from disk is checked for a
    final status; the Hub's copy (used when the disk has none) only gives the retry count, so
    the step is queued again."""
    u = running(config)
    cmds = offer(u, BSP, hub_progress=rec(Status.ERROR, Msg.HUB_NOT_STABLE, 2))
    assert records(cmds)[0] == ("QUEUED", "Retried 2 of 10", 5, 2)
    assert u.phase is Phase.QUEUED


@BOTH
def test_a_step_without_a_state_is_ignored(config):
    """update/update.c pv_update_start_install: without a state JSON it returns before an
    update exists: no record, nothing reported."""
    u = running(config)
    cmds = u.handle(PendingSteps((Step("2"),)))
    assert cmds == [] and u.phase is Phase.IDLE


def test_wontgo_on_a_plain_boot_rewrites_the_env_faithful_only():
    """update/update.c pv_update_finish, bootloader.c pv_bootloader_unset_try: the unset is
    written even when pv_try is already unset (uboot.c uboot_unset_env_key rewrites the block).
    Hardened skips that no-op write (docs/orderings.md)."""
    for config, writes in ((FAITHFUL, [(None, "")]), (HARDENED, [])):
        u = running(config)
        cmds = offer(u, APP, signature_error=Msg.SIG_FAILED)
        assert env_writes(cmds) == writes, config.ordering


@BOTH
def test_error_during_a_try_boot_keeps_pv_try_for_the_rollback(config):
    """update/update.c pv_update_finish: on the try boot itself (pv_bootloader_trying_update)
    pv_try is kept, so the bootloader falls back and the next boot sees the rollback."""
    u, _ = try_boot(config)
    u.handle(HubReached())
    cmds = u.handle(TimerFired("goal:app"))
    assert records(cmds) == [("ERROR", Msg.GOAL_NOT_REACHED, 100, 1)]
    assert env_writes(cmds) == [] and reboots(cmds) == ["rollback: " + Msg.GOAL_NOT_REACHED]


@BOTH
def test_error_of_a_live_transition_unsets_pv_try(config):
    """update/update.c pv_update_finish: a non-reboot update that fails is not a try boot, so
    pv_try is unset before the rollback reboot."""
    u = running(config)
    download(u, APP)
    u.handle(ContainersStopped(("app",)))
    u.handle(HubReached())
    cmds = u.handle(TimerFired("goal:app"))
    assert records(cmds) == [("ERROR", Msg.GOAL_NOT_REACHED, 100, 1)]
    assert env_writes(cmds) == [(None, "")] and reboots(cmds)


# ============================================================ 2. the Hub's failed-request flag


@BOTH
def test_testing_fails_at_the_first_failed_request_whatever_the_threshold(config):
    """pantavisor.c pv_wait_network, pantahub/pantahub_proto.c _on_request_unresponsive: any
    failed request sets the session flag; TESTING with the flag set is ERROR "Hub communication
    not stable", even below PH_ONLINE_REQUEST_THRESHOLD."""
    u, _ = try_boot(with_config(config, online_request_threshold=5))
    u.handle(HubReached())
    settle(u)
    assert u.phase is Phase.TESTING
    cmds = u.handle(HubRequestFailed())
    assert records(cmds) == [("ERROR", Msg.HUB_NOT_STABLE, 100, 1)] and reboots(cmds)


@BOTH
def test_a_failure_while_inprogress_fails_the_update_on_reaching_testing(config):
    """pantahub/pantahub_proto.c: the flag is reset only entering the report state
    (pantahub.c _run_state_report); a failure in INPROGRESS after that stays set, so the pass of
    pv_wait_network after TESTING is written fails the update."""
    u, _ = try_boot(with_config(config, online_request_threshold=3))
    u.handle(HubReached())
    assert records(u.handle(HubRequestFailed())) == []
    cmds = settle(u)
    assert records(cmds) == [
        ("TESTING", Msg.TESTING_REBOOT, 75, 1),
        ("ERROR", Msg.HUB_NOT_STABLE, 100, 1),
    ]
    assert reboots(cmds)


@BOTH
def test_failures_before_the_report_state_are_forgotten(config):
    """pantahub/pantahub.c _run_state_report calls pv_pantahub_proto_reset_fail: failures
    before the first answer of the update do not fail its test."""
    u, _ = try_boot(config)
    u.handle(HubRequestFailed())
    u.handle(HubRequestFailed())
    u.handle(HubReached())
    cmds = settle(u)
    assert records(cmds) == [("TESTING", Msg.TESTING_REBOOT, 75, 1)]
    assert ArmTimer("commit", 60.0) in cmds or any(
        isinstance(c, ArmTimer) and c.name == "commit" for c in cmds
    )


@BOTH
def test_the_rollback_timer_outlives_the_first_answer(config):
    """pantavisor.c _pv_run starts timer_rollback_remote and never stops it; pv_wait_network
    reads it whenever the update is INPROGRESS and the client is not reporting (offline after
    more failures than PH_ONLINE_REQUEST_THRESHOLD, pantahub_proto.c _on_request_unresponsive)."""
    u, _ = try_boot(config)
    cmds = u.handle(HubReached())
    assert CancelTimer("network") not in cmds
    assert records(u.handle(TimerFired("network"))) == []  # online: nothing yet
    cmds = u.handle(HubRequestFailed())  # threshold 0: offline, timer already out
    assert records(cmds) == [("ERROR", Msg.HUB_NOT_REACHABLE, 100, 1)] and reboots(cmds)


@BOTH
def test_offline_in_inprogress_holds_the_goal_check(config):
    """pantavisor.c pv_wait_network: INPROGRESS and not reporting skips pv_wait_update (no
    goal check, no TESTING) until the Hub answers again."""
    u, _ = try_boot(config)
    u.handle(HubReached())
    u.handle(HubRequestFailed())  # offline (threshold 0); the timer has not run out
    assert records(settle(u)) == [] and u.phase is Phase.INPROGRESS
    cmds = u.handle(HubReached())
    # back online; the failure counted (the flag is only reset entering the report state)
    assert records(cmds) == [
        ("TESTING", Msg.TESTING_REBOOT, 75, 1),
        ("ERROR", Msg.HUB_NOT_STABLE, 100, 1),
    ]


# ============================================================ 3. resume of a DONE revision


def test_try_boot_of_a_done_revision_runs_it_uncommitted_faithful():
    """update/update.c pv_update_resume: a tried revision whose record is DONE is finished at
    once (pv_update_finish), not tried again: no record, no env write; it runs with pv_rev old
    and pv_try still set."""
    u, cmds = try_boot(FAITHFUL, rec(Status.DONE, Msg.DONE, 1))
    assert records(cmds) == [] and env_writes(cmds) == [] and not reboots(cmds)
    assert u.phase is Phase.IDLE and u.running_rev == "2"
    assert (u.pv_rev, u.pv_try) == ("1", "2")
    assert any(isinstance(c, StartContainers) for c in cmds)


def test_try_boot_of_a_done_revision_finishes_the_commit_hardened():
    """update/update.c pv_update_resume: as in C no record and no new test; hardened writes
    DONE after the env, so DONE with pv_try set can only be a commit cut short, and it finishes
    the env write (docs/orderings.md)."""
    u, cmds = try_boot(HARDENED, rec(Status.DONE, Msg.DONE, 1))
    assert records(cmds) == [] and env_writes(cmds) == [("2", "")]
    assert u.phase is Phase.IDLE and (u.pv_rev, u.pv_try) == ("2", "")


# ============================================================ 4. retry counting


@BOTH
def test_metadata_retries_count_per_round_and_give_up_above_the_limit(config):
    """update/update.c _enroll_object_list: every listing round after the first counts one
    retry; retries above PV_REVISION_RETRIES (`>`) give up, so "retry 10 of 10" exists."""
    u = running(config)
    offer(u, BSP, hub_progress=rec(Status.QUEUED, "", 8))  # 9 after the intake
    assert records(u.handle(MetadataFailed("2"))) == [
        ("QUEUED", Msg.metadata_retry(10, 10), 5, 10)
    ]
    assert records(u.handle(MetadataFailed("2"))) == [
        ("WONTGO", Msg.MAX_DOWNLOAD_RETRIES, 100, 11)
    ]


@BOTH
def test_failed_objects_of_one_round_count_one_retry(config):
    """pantahub/pantahub_proto.c _init_object_transfer_unavailable rebuilds the list only when
    it is empty; update/update.c pv_update_get_unavailable_objects enrolls one round for all the
    objects still missing: two failures in a round are one retry."""
    u = running(config)
    offer(u, BSP)
    fetches = [c for c in metadata(u, BSP) if isinstance(c, FetchObject)]
    assert len(fetches) == 2
    assert records(u.handle(ObjectFetched(fetches[0].sha, ok=False))) == []
    cmds = u.handle(ObjectFetched(fetches[1].sha, ok=False))
    assert records(cmds) == [("DOWNLOADING", Msg.download_retry(2, 10), 25, 2)]
    assert {c.sha for c in cmds if isinstance(c, FetchObject)} == {f.sha for f in fetches}


# ============================================================ 5. intake order


@BOTH
def test_intake_writes_queued_with_the_count_before_the_increment(config):
    """update/update.c pv_update_start_install: QUEUED "Retried N of M" with the count read
    from disk or Hub, then the increment, then the check (`>=`); then the first metadata round
    (pv_update_get_unrecorded_objects, pv_update_progress_start_record) with the new count."""
    u = running(config)
    cmds = offer(u, BSP)
    assert records(cmds) == [
        ("QUEUED", "Retried 0 of 10", 5, 0),
        ("QUEUED", Msg.metadata_retry(1, 10), 5, 1),
    ]
    assert any(isinstance(c, FetchMetadata) for c in cmds)


@BOTH
def test_intake_at_the_limit_says_queued_then_wontgo(config):
    """update/update.c pv_update_start_install: the QUEUED record comes before the retry check,
    so the Hub sees "Retried 9 of 10" and then WONTGO with 10 retries."""
    u = running(config)
    cmds = offer(u, BSP, hub_progress=rec(Status.QUEUED, "", 9))
    assert records(cmds) == [
        ("QUEUED", "Retried 9 of 10", 5, 9),
        ("WONTGO", Msg.MAX_RETRIES, 100, 10),
    ]


# ============================================================ 6. auto-recovery


def engine_with(config=FAITHFUL, **recovery):
    state = revision(**recovery)
    trails = {"1": TrailView(state, rec(Status.DONE, Msg.DONE), True)}
    u, _ = boot_disk(trails=trails, config=config)
    settle(u)
    return u


AR = {"max_retries": 3, "retry_delay": 5}


@BOTH
def test_unless_stopped_does_not_recover(config):
    """state.c pv_state_check_auto_recovery: only "on-failure" and "always" restart a container;
    "unless-stopped" is a failure (steady state: pantavisor.c _pv_wait reboots)."""
    u = engine_with(config, app_recovery={"policy": "unless-stopped", **AR})
    cmds = u.handle(ContainerExited("app", uptime=100))
    assert reboots(cmds) == ["a container exited"]


@BOTH
def test_always_recovers(config):
    """state.c pv_state_check_auto_recovery: "always" restarts after retry_delay."""
    u = engine_with(config, app_recovery={"policy": "always", **AR})
    cmds = u.handle(ContainerExited("app", uptime=100))
    assert ArmTimer("recovery:app", 5) in cmds and not reboots(cmds)


@BOTH
def test_a_container_policy_no_takes_the_groups_recovery(config):
    """state.c pv_state_start_platform: a container whose auto_recovery type is "no" takes
    its group's whole auto_recovery when the group has one."""
    u = engine_with(
        config,
        app_recovery={"policy": "no"},
        group_recovery={"policy": "on-failure", "max_retries": 2, "retry_delay": 7},
    )
    cmds = u.handle(ContainerExited("app", uptime=100))
    assert ArmTimer("recovery:app", 7) in cmds and not reboots(cmds)


@BOTH
@pytest.mark.parametrize(
    ("factor", "delays"), [(1.5, [5, 7, 11]), (0.5, [5, 5, 5]), (1.0, [5, 5, 5])]
)
def test_retry_delay_is_whole_seconds_and_grows_only_above_factor_one(config, factor, delays):
    """state.c pv_state_check_auto_recovery: from the second attempt, and only when
    backoff_factor > 1.0, the delay is (int)(retry_delay * factor^(attempt-1))."""
    u = engine_with(
        config,
        app_recovery={"policy": "on-failure", "max_retries": 5, "retry_delay": 5,
                      "backoff_factor": factor},
    )
    got = []
    for _ in delays:
        cmds = u.handle(ContainerExited("app", uptime=1))
        got += [c.delay for c in cmds if isinstance(c, ArmTimer) and c.name == "recovery:app"]
        u.handle(TimerFired("recovery:app"))
        u.handle(ContainerStarted("app"))
    assert got == delays


# ============================================================ smaller discrepancies


@BOTH
def test_factory_boot_says_trying_then_factory_done(config):
    """update/update.c pv_update_resume then pv_update_set_factory: a factory revision without a
    DONE record is INPROGRESS "Trying new revision", then DONE "Factory revision" with the
    record's retries, and gets its done marker."""
    trails = {"0": TrailView(OLD, rec(Status.NEW, Msg.READY_TO_RUN, 3))}
    u, cmds = boot_disk("0", "0", "", trails, config=config)
    assert records(cmds) == [
        ("INPROGRESS", Msg.TRYING, 50, 3),
        ("DONE", Msg.FACTORY, 100, 3),
    ]
    assert WriteDoneMarker("0") in cmds and u.phase is Phase.IDLE


def test_factory_boot_keeps_a_failed_record():
    """update/update.c pv_update_resume: a failed factory record is finished as it is
    (pv_update_finish, which unsets pv_try); pv_update_set_factory has no update left to mark."""
    trails = {"0": TrailView(OLD, rec(Status.ERROR, Msg.INTERNAL))}
    u, cmds = boot_disk("0", "0", "", trails, config=FAITHFUL)
    assert records(cmds) == [] and WriteDoneMarker("0") not in cmds
    assert env_writes(cmds) == [(None, "")] and u.running_rev == "0"


def test_faithful_commit_is_two_env_writes():
    """update/update.c pv_update_set_final, bootloader.c pv_bootloader_pre_commit_update: DONE
    is saved, then pv_rev is set and pv_try unset in two env writes, then the done marker
    (pv_state_set_done). Hardened: one redundant env write before DONE (docs/orderings.md)."""
    for config, expected in (
        (FAITHFUL, ["PersistProgress", "SetBootEnv", "SetBootEnv", "WriteDoneMarker"]),
        (HARDENED, ["SetBootEnv", "PersistProgress", "WriteDoneMarker"]),
    ):
        u, _ = try_boot(config)
        u.handle(HubReached())
        settle(u)
        cmds = u.handle(TimerFired("commit"))
        if u.phase is Phase.TESTING:
            cmds = u.handle(TimerFired("stable:app"))
        assert [type(c).__name__ for c in cmds if c.durable] == expected
        writes = [("2", None), (None, "")] if config is FAITHFUL else [("2", "")]
        assert env_writes(cmds) == writes
        assert records(cmds) == [("DONE", Msg.DONE, 100, 1)]


@BOTH
def test_metadata_then_two_downloading_records(config):
    """update/update.c _finish_object_metadata_setting (pv_update_progress_start_download) and
    pv_update_get_unavailable_objects each write DOWNLOADING "Downloading update artifacts"."""
    u = running(config)
    offer(u, BSP)
    cmds = metadata(u, BSP)
    assert records(cmds) == [("DOWNLOADING", Msg.download_retry(1, 10), 25, 1)] * 2


@BOTH
def test_rolled_back_boot_does_not_report_a_failed_record(config):
    """update/update.c pv_update_resume: a rolled-back revision whose record already failed is
    finished without a report (it was reported when it failed; the next poll re-reports it);
    pv_update_finish unsets pv_try."""
    trails = {**DONE_1, "2": TrailView(BSP, rec(Status.ERROR, Msg.HUB_NOT_STABLE, 1))}
    _, cmds = boot_disk("1", "1", "2", trails, config=config)
    assert records(cmds) == [] and not any(isinstance(c, ReportProgress) for c in cmds)
    assert env_writes(cmds) == [(None, "")]


@BOTH
def test_local_run_starts_from_zero_retries(config):
    """update/update.c pv_update_run: a new update object (_update_new), its progress not read
    from disk: the records of a local run carry 0 retries."""
    trails = {**DONE_1, "locals/x": TrailView(BSP, rec(Status.NEW, Msg.READY_TO_RUN, 4))}
    u = running(config, trails=trails)
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/x", state=BSP))
    assert records(cmds) == [("INPROGRESS", Msg.REBOOTING, 50, 0)]


def test_orderings_are_the_two_documented():
    assert {o.value for o in Ordering} == {"faithful", "hardened"}


@BOTH
def test_local_run_commit_of_a_non_reboot_revision_says_transitioning_then_reboots(config):
    """pantavisor.c _pv_command (CMD_LOCAL_RUN_COMMIT): pv_update_run records what
    pv_run_update chose (a non-reboot transition: "Transitioning to new revision without
    rebooting"), then pv_issue_reboot reboots anyway."""
    trails = {**DONE_1, "locals/x": TrailView(APP, rec(Status.NEW, Msg.READY_TO_RUN))}
    u = running(config, trails=trails)
    cmds = u.handle(CtrlCommand("LOCAL_RUN_COMMIT", "locals/x", state=APP))
    assert records(cmds) == [("INPROGRESS", Msg.TRANSITIONING, 50, 0)]
    assert env_writes(cmds) == [(None, "locals/x")] and reboots(cmds) == ["update locals/x"]


@pytest.mark.parametrize(
    ("alias", "field", "value"),
    [
        ("storage.gc.reserved", "gc_reserved", 7),
        ("storage.gc.threshold", "gc_threshold", 20),
        ("storage.gc.threshold.defertime", "gc_threshold_defertime", 30.0),
        ("storage.gc.keep_factory", "gc_keep_factory", True),
        ("updater.use_tmp_objects", "use_tmp_objects", True),
        ("control.remote", "control_remote", False),
        ("control.remote.always", "control_remote_always", True),
        ("secureboot.checksum", "secureboot_checksum", False),
        ("secureboot.mode", "secureboot_mode", "strict"),
        ("bootloader.type", "bootloader_type", "grub"),
        ("revision.retries", "revision_retries", 3),
    ],
)
def test_legacy_config_aliases(alias, field, value):
    """config.c (the alias table): the dotted legacy names map to the PV_/PH_ keys."""
    raw = {True: "1", False: "0"}.get(value, str(value)) if not isinstance(value, float) else "30"
    assert getattr(Config.from_mapping({alias: raw}), field) == value


@BOTH
def test_space_check_counts_real_free_as_zero_below_the_reserve(config):
    """storage.c pv_storage_new / pv_storage_get_free: real free space is 0 when free space is
    below the reserve (never negative); update/update.c _finish_object_metadata_setting then
    compares `update_size > free_size`: nothing to download fits even then."""
    u = running(config)
    offer(u, BSP)
    tight = StorageStats(total=1000, free=10)  # reserve 50: real free 0
    cmds = u.handle(MetadataReceived("2", {s: 0 for s in BSP.object_shas()}, tight))
    assert records(cmds)[0][0] == "DOWNLOADING" and u.phase is Phase.DOWNLOADING
    u = running(config)
    offer(u, BSP)
    u.handle(MetadataReceived("2", {s: 5 for s in BSP.object_shas()}, tight))
    cmds = u.handle(GcDone(0, tight))
    assert records(cmds) == [("WONTGO", "Space required 10 B, available 0 B", 100, 1)]


@BOTH
def test_non_reboot_update_records_as_the_hub_sees_them(config):
    """update/update.c _finish_update_installation (INPROGRESS "Transitioning..."), then
    pantavisor.c _pv_run_state_cb re-enters RUN and pv_update_resume finds the update still
    there: INPROGRESS "Trying new revision"; pv_wait_update: TESTING; pv_update_set_final:
    UPDATED, with no env write (pv_try stays set)."""
    u = running(config)
    seen = download(u, APP)
    seen += u.handle(ContainersStopped(("app",)))
    seen += u.handle(ContainerStarted("app"))
    seen += u.handle(HubReached())
    seen += u.handle(TimerFired("commit"))
    assert records(seen) == [
        *INTAKE_RECORDS,
        ("INPROGRESS", Msg.TRANSITIONING, 50, 1),
        ("INPROGRESS", Msg.TRYING, 50, 1),
        ("TESTING", Msg.TESTING_NON_REBOOT, 75, 1),
        ("UPDATED", Msg.UPDATED, 100, 1),
    ]
    assert env_writes(seen) == [(None, "2")]


@BOTH
def test_reboot_update_records_as_the_hub_sees_them(config):
    """update/update.c pv_update_start_install, pv_update_get_unrecorded_objects,
    _finish_object_metadata_setting, pv_update_get_unavailable_objects,
    _finish_update_installation (INPROGRESS "Rebooting"); after the reboot pv_update_resume
    (INPROGRESS "Trying new revision"), pv_wait_update (TESTING), pv_update_set_final (DONE)."""
    u = running(config)
    seen = download(u, BSP)
    assert reboots(seen) == ["update 2"]
    trails = {**DONE_1, "2": TrailView(BSP, u.progress_of("2"))}
    t, after = boot_disk("2", "1", "2", trails, config=config)
    after += t.handle(HubReached())
    after += settle(t)
    after += t.handle(TimerFired("commit"))
    assert records(seen) + records(after) == [
        *INTAKE_RECORDS,
        ("INPROGRESS", Msg.REBOOTING, 50, 1),
        ("INPROGRESS", Msg.TRYING, 50, 1),
        ("TESTING", Msg.TESTING_REBOOT, 75, 1),
        ("DONE", Msg.DONE, 100, 1),
    ]


def test_progress_json_key_order_is_pantavisors():
    """update/update_progress.c _ser_progress: status, status-msg, progress, retries, then
    `downloads` (DOWNLOADING only), then `logs`."""
    from shared.engine.progress import Downloads, Progress

    record = Progress(Status.DOWNLOADING, "m", 25, 1, logs="l", downloads=Downloads(10, 5))
    assert list(record.to_json()) == [
        "status", "status-msg", "progress", "retries", "downloads", "logs"
    ]


def exits(u, n, uptime=1.0):
    """`n` crashes of `app`, each restarted when its recovery timer fires; the last exit's
    commands are returned."""
    cmds = []
    for _ in range(n):
        cmds = u.handle(ContainerExited("app", uptime=uptime))
        if u.phase is not Phase.IDLE:
            break
        u.handle(TimerFired("recovery:app"))
        u.handle(ContainerStarted("app"))
    return cmds


@BOTH
def test_max_retries_in_steady_state_with_backoff_never_leaves_it_stopped(config):
    """state.c pv_state_check_auto_recovery: at max_retries outside an update, backoff_policy
    "never" leaves the container stopped (recovery_failed), no reboot."""
    u = engine_with(config, app_recovery={"policy": "on-failure", "max_retries": 2,
                                          "retry_delay": 1, "backoff_policy": "never"})
    exits(u, 2)
    cmds = u.handle(ContainerExited("app", uptime=1))
    assert not reboots(cmds) and not any(isinstance(c, (ArmTimer, StartContainers)) for c in cmds)


@BOTH
def test_max_retries_in_steady_state_with_backoff_reboot_reboots(config):
    """state.c pv_state_check_auto_recovery: backoff_policy "reboot" (the default) at
    max_retries fails the platform: pantavisor.c _pv_wait reboots outside an update."""
    u = engine_with(config, app_recovery={"policy": "on-failure", "max_retries": 2,
                                          "retry_delay": 1})
    exits(u, 2)
    assert reboots(u.handle(ContainerExited("app", uptime=1))) == ["a container exited"]


@BOTH
def test_max_retries_with_a_backoff_duration_waits_then_starts_over(config):
    """state.c pv_state_check_auto_recovery: a duration backoff_policy resets the retries,
    arms the retry timer for that duration and marks the container recovering."""
    u = engine_with(config, app_recovery={"policy": "on-failure", "max_retries": 2,
                                          "retry_delay": 1, "backoff_policy": "10min"})
    exits(u, 2)
    cmds = u.handle(ContainerExited("app", uptime=1))
    assert ArmTimer("backoff:app", 600.0) in cmds and not reboots(cmds)
    cmds = u.handle(TimerFired("backoff:app"))
    assert any(isinstance(c, StartContainers) for c in cmds)
    u.handle(ContainerStarted("app"))
    cmds = u.handle(ContainerExited("app", uptime=1))
    assert ArmTimer("recovery:app", 1) in cmds  # counting starts over


@BOTH
def test_a_run_longer_than_reset_window_resets_the_retries(config):
    """state.c pv_state_check_auto_recovery: when the container ran longer than reset_window
    since its last start, current_retries goes back to 0 before counting this crash."""
    u = engine_with(config, app_recovery={"policy": "on-failure", "max_retries": 2,
                                          "retry_delay": 1, "reset_window": 60})
    exits(u, 2)
    cmds = u.handle(ContainerExited("app", uptime=61))
    assert ArmTimer("recovery:app", 1) in cmds and not reboots(cmds)


@BOTH
def test_a_step_whose_objects_are_all_in_the_pool_installs_at_once(config):
    """update/update.c pv_update_start_install: when pv_state_are_all_objects_installed, it
    calls _finish_update_installation at once: no metadata or download record."""
    u = running(config, objects=OLD.object_shas() | BSP.object_shas())
    cmds = offer(u, BSP)
    assert records(cmds) == [
        ("QUEUED", "Retried 0 of 10", 5, 0),
        ("INPROGRESS", Msg.REBOOTING, 50, 1),
    ]
    assert not any(isinstance(c, FetchMetadata) for c in cmds) and reboots(cmds) == ["update 2"]
