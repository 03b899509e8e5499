"""Rule-by-rule tests of the Updater (pantavisor.md §3, §4)."""

from __future__ import annotations

import pytest
from enginekit import build_state

from shared.engine.commands import (
    ArmTimer,
    CtrlReply,
    DeleteRevision,
    FetchMetadata,
    FetchObject,
    LinkObjects,
    PersistProgress,
    Reboot,
    ReportProgress,
    RunGc,
    SetBootEnv,
    StartContainers,
    StopContainers,
    WriteDoneMarker,
    WriteTrail,
)
from shared.engine.config import DEFAULT_CONFIG, Config, Ordering
from shared.engine.events import (
    ContainerExited,
    ContainerMounted,
    ContainersStopped,
    ContainerStarted,
    CtrlCommand,
    DiskView,
    GcDone,
    HubReached,
    HubRequestFailed,
    LocalStepStarted,
    LocalStepUploaded,
    MetadataFailed,
    MetadataReceived,
    ObjectFetched,
    ObjectPut,
    PendingSteps,
    Step,
    StorageStats,
    TimerFired,
    TrailView,
    WaitTick,
)
from shared.engine.progress import Msg, Progress, Status
from shared.engine.updater import Phase, Updater

OLD = build_state()
APP = build_state(app="a2")
BSP = build_state(kernel="k2")
READY = build_state(app="a2", app_goal="READY")
ROOMY = StorageStats(10**9, 5 * 10**8)
FAITHFUL = Config(ordering=Ordering.FAITHFUL)
UPLOADED = OLD.object_shas() | APP.object_shas()  # a local revision's objects PUT over pv-ctrl


def rec(status: Status, msg: str = "", retries: int = 0) -> Progress:
    return Progress.make(status, msg, retries)


def boot(booted="0", pv_rev="0", pv_try="", trails=None, objects=None, config=DEFAULT_CONFIG):
    trails = (
        trails if trails is not None else {"0": TrailView(OLD, rec(Status.DONE, Msg.FACTORY), True)}
    )
    objs = (
        objects
        if objects is not None
        else frozenset().union(
            *(t.state.object_shas() for t in trails.values() if t.state is not None)
        )
    )
    return Updater.boot(DiskView(booted, pv_rev, pv_try, trails, objs, ROOMY), config)


def settle(u: Updater) -> None:
    """Bring the running revision's containers to their goals."""
    for c in u.running_state.containers:
        u.handle(ContainerMounted(c.name))
        u.handle(ContainerStarted(c.name))


def records(cmds, rev=None):
    return [
        (c.record.status, c.record.status_msg)
        for c in cmds
        if isinstance(c, PersistProgress) and (rev is None or c.rev == rev)
    ]


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def running_idle(config=DEFAULT_CONFIG, objects=None):
    u, _ = boot(config=config, objects=objects)
    settle(u)
    assert u.phase is Phase.IDLE
    return u


def offer(u, state, rev="1", **kw):
    return u.handle(PendingSteps((Step(rev, state, **kw),)))


def download_all(u, state, rev="1"):
    cmds = u.handle(MetadataReceived(rev, {s: 10 for s in state.object_shas()}, ROOMY))
    out = list(cmds)
    for f in of(cmds, FetchObject):
        out += u.handle(ObjectFetched(f.sha))
    return out


# ------------------------------------------------------------------------------ boot


def test_factory_revision_is_marked_done_once():
    _, cmds = boot(trails={"0": TrailView(OLD)})
    # pv_update_resume says INPROGRESS before pv_update_set_factory says DONE
    assert records(cmds) == [(Status.INPROGRESS, Msg.TRYING), (Status.DONE, Msg.FACTORY)]
    assert of(cmds, WriteDoneMarker) == [WriteDoneMarker("0")]
    _, again = boot()
    assert records(again) == []


def test_boot_starts_groups_in_order():
    _, cmds = boot()
    starts = of(cmds, StartContainers)
    assert [s.names for s in starts] == [("sysc",)]  # platform first; app waits for it
    assert ArmTimer("goal:platform", 30.0) in cmds


def test_try_boot_sets_trying_and_arms_network_timer():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.INPROGRESS, Msg.REBOOTING, 2))}
    u, cmds = boot("1", "0", "1", trails)
    assert records(cmds) == [(Status.INPROGRESS, Msg.TRYING)]
    assert of(cmds, PersistProgress)[0].record.retries == 2
    assert ArmTimer("network", 120.0) in cmds and u.phase is Phase.INPROGRESS


def test_try_boot_of_an_already_failed_revision_rolls_back_at_once():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.ERROR, Msg.CONTAINER_FAILED))}
    u, cmds = boot("1", "0", "1", trails)
    assert of(cmds, Reboot) and records(cmds) == [] and u.finished


@pytest.mark.parametrize("config", [Config(), FAITHFUL])
def test_rolled_back_boot_records_error_then_clears_pv_try(config):
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.TESTING, Msg.TESTING_REBOOT))}
    u, cmds = boot("0", "0", "1", trails, config=config)
    durable = [c for c in cmds if c.durable]
    assert records(durable) == [(Status.ERROR, Msg.UNEXPECTED_ROLLBACK)]
    assert durable.index(of(durable, PersistProgress)[0]) < durable.index(
        of(durable, SetBootEnv)[0]
    )
    assert of(cmds, SetBootEnv)[0].pv_try == "" and u.pv_try == ""


def test_rolled_back_boot_keeps_an_existing_failure_reason():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.ERROR, Msg.HUB_NOT_STABLE))}
    _, cmds = boot("0", "0", "1", trails)
    assert records(cmds) == [] and of(cmds, SetBootEnv)[0].pv_try == ""
    # pv_update_resume finishes a failed record without reporting it (the next poll does)
    assert not of(cmds, ReportProgress)


def test_rolled_back_boot_with_done_faithful_keeps_pv_try_hardened_repairs():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.DONE, Msg.DONE))}
    _, faithful = boot("0", "0", "1", trails, config=FAITHFUL)
    assert records(faithful) == [] and of(faithful, SetBootEnv) == []
    _, hardened = boot("0", "0", "1", trails)
    assert records(hardened) == [(Status.ERROR, Msg.UNEXPECTED_ROLLBACK)]
    assert of(hardened, SetBootEnv)[0].pv_try == ""


def test_hardened_boot_repairs_a_commit_cut_before_done():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.TESTING, Msg.TESTING_REBOOT, 1))}
    _, cmds = boot("1", "1", "", trails)
    assert records(cmds) == [(Status.DONE, Msg.DONE)] and WriteDoneMarker("1") in cmds
    _, faithful = boot("1", "1", "", trails, config=FAITHFUL)
    assert records(faithful) == []


def test_missing_objects_at_try_boot_is_object_validation_error():
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.INPROGRESS, Msg.REBOOTING))}
    u, cmds = boot("1", "0", "1", trails, objects=OLD.object_shas())
    assert records(cmds) == [(Status.ERROR, Msg.OBJECT_VALIDATION)] and u.finished


# ------------------------------------------------------------------------------ remote intake


def test_first_pending_step_only_and_trail_saved():
    u = running_idle()
    cmds = u.handle(PendingSteps((Step("1", APP), Step("2", BSP))))
    # QUEUED with the count as read, then the metadata round (pv_update_start_install)
    assert records(cmds) == [
        (Status.QUEUED, "Retried 0 of 10"),
        (Status.QUEUED, Msg.metadata_retry(1, 10)),
    ]
    assert WriteTrail("1", APP) in cmds and of(cmds, FetchMetadata)[0].rev == "1"
    assert u.phase is Phase.QUEUED and not u.accepts_remote_steps


def test_final_progress_on_disk_is_re_reported_not_redone():
    u, _ = boot(
        trails={"0": TrailView(OLD, rec(Status.DONE)), "1": TrailView(APP, rec(Status.ERROR, "x"))}
    )
    settle(u)
    cmds = offer(u, APP)
    # C saves and reports the record again; a failed one also unsets pv_try (pv_update_finish),
    # a write hardened skips while pv_try is already unset
    assert cmds == [
        PersistProgress("1", rec(Status.ERROR, "x")),
        ReportProgress("1", rec(Status.ERROR, "x")),
    ]
    assert u.phase is Phase.IDLE


def test_retries_cap_gives_wontgo():
    u = running_idle()
    cmds = offer(u, APP, hub_progress=rec(Status.QUEUED, "", retries=9))
    assert records(cmds) == [(Status.QUEUED, "Retried 9 of 10"), (Status.WONTGO, Msg.MAX_RETRIES)]


def test_bad_signature_and_bad_format_are_wontgo():
    u = running_idle()
    assert records(offer(u, APP, signature_error=Msg.SIG_FAILED))[-1] == (
        Status.WONTGO,
        Msg.SIG_FAILED,
    )
    u = running_idle()
    cmds = u.handle(PendingSteps((Step("1", None, raw=b'{"#spec": 3}'),)))
    assert records(cmds)[-1] == (Status.WONTGO, Msg.BAD_FORMAT)
    u = running_idle(Config(verify_signature=lambda s: Msg.SIG_NOT_COVERED if s is APP else None))
    assert records(offer(u, APP))[-1] == (Status.WONTGO, Msg.SIG_NOT_COVERED)


def test_space_check_runs_gc_once_then_wontgo():
    u = running_idle()
    offer(u, BSP)
    tight = StorageStats(total=1000, free=60)  # reserve 50, real free 10
    cmds = u.handle(MetadataReceived("1", {s: 100 for s in BSP.object_shas()}, tight))
    gc = of(cmds, RunGc)[0]
    assert (
        gc.reason == "space" and {"0", "1"} <= gc.keep_revisions and u.phase is Phase.GC_FOR_SPACE
    )
    cmds = u.handle(GcDone(0, tight))
    assert records(cmds) == [(Status.WONTGO, "Space required 200 B, available 10 B")]


def test_space_check_passes_after_gc():
    u = running_idle()
    offer(u, BSP)
    u.handle(MetadataReceived("1", {s: 100 for s in BSP.object_shas()}, StorageStats(1000, 60)))
    cmds = u.handle(GcDone(500, StorageStats(1000, 560)))
    assert records(cmds)[0][0] is Status.DOWNLOADING and len(of(cmds, FetchObject)) == 2


def test_metadata_failures_count_as_retries():
    u = running_idle()
    offer(u, BSP, hub_progress=rec(Status.QUEUED, "", 7))  # 8 after intake
    cmds = u.handle(MetadataFailed("1"))
    assert records(cmds) == [(Status.QUEUED, Msg.metadata_retry(9, 10))]
    assert records(u.handle(MetadataFailed("1"))) == [(Status.QUEUED, Msg.metadata_retry(10, 10))]
    assert records(u.handle(MetadataFailed("1"))) == [(Status.WONTGO, Msg.MAX_DOWNLOAD_RETRIES)]


def test_hash_mismatch_refetches_then_wontgo():
    u = running_idle()
    offer(u, BSP, hub_progress=rec(Status.QUEUED, "", 7))
    cmds = u.handle(MetadataReceived("1", {s: 10 for s in BSP.object_shas()}, ROOMY))
    sha = of(cmds, FetchObject)[0].sha
    other = of(cmds, FetchObject)[1].sha
    assert records(u.handle(ObjectFetched(sha, ok=False, hash_mismatch=True))) == []
    cmds = u.handle(ObjectFetched(other))  # the round ends: one new round for the failed object
    assert records(cmds) == [(Status.DOWNLOADING, Msg.download_retry(9, 10))]
    assert of(cmds, FetchObject)[0].sha == sha
    assert records(u.handle(ObjectFetched(sha, ok=False))) == [
        (Status.DOWNLOADING, Msg.download_retry(10, 10))
    ]
    assert records(u.handle(ObjectFetched(sha, ok=False))) == [
        (Status.WONTGO, Msg.MAX_DOWNLOAD_RETRIES)
    ]


def test_transfers_are_capped():
    many = build_state(kernel="k9", app="a9", sysc="s9")
    u = running_idle(Config(transfer_max_count=2))
    offer(u, many)
    cmds = u.handle(MetadataReceived("1", {s: 1 for s in many.object_shas()}, ROOMY))
    assert len(of(cmds, FetchObject)) == 2


# ------------------------------------------------------------------------------ install


def test_reboot_update_installs_then_reboots():
    u = running_idle()
    offer(u, BSP)
    cmds = download_all(u, BSP)
    durable = [type(c).__name__ for c in cmds if c.durable]
    assert durable[-3:] == ["LinkObjects", "SetBootEnv", "PersistProgress"]
    assert records(cmds)[-1] == (Status.INPROGRESS, Msg.REBOOTING)
    assert of(cmds, SetBootEnv)[0].pv_try == "1" and of(cmds, Reboot) and u.finished


def test_non_reboot_update_stops_only_affected_containers():
    u = running_idle()
    offer(u, APP)
    cmds = download_all(u, APP)
    assert records(cmds)[-1] == (Status.INPROGRESS, Msg.TRANSITIONING)
    assert of(cmds, StopContainers) == [StopContainers(("app",), 5.0)] and not of(cmds, Reboot)
    cmds = u.handle(ContainersStopped(("app",)))
    assert [s.names for s in of(cmds, StartContainers)] == [("app",)]
    assert u.running_rev == "1" and u.phase is Phase.INPROGRESS


def to_testing(u, state=APP):
    offer(u, state)
    download_all(u, state)
    u.handle(ContainersStopped(("app",)))
    u.handle(ContainerStarted("app"))
    return u.handle(HubReached())


def test_goals_wait_for_the_hub_then_testing():
    u = running_idle()
    offer(u, APP)
    download_all(u, APP)
    u.handle(ContainersStopped(("app",)))
    assert records(u.handle(ContainerStarted("app"))) == []  # goals met, Hub not yet reached
    cmds = u.handle(HubReached())
    assert records(cmds) == [(Status.TESTING, Msg.TESTING_NON_REBOOT)]
    assert ArmTimer("commit", 25.0) in cmds


def test_non_reboot_commit_is_updated_and_keeps_pv_try():
    u = running_idle()
    to_testing(u)
    cmds = u.handle(TimerFired("commit"))
    assert records(cmds) == [(Status.TESTING, Msg.TESTING_STABLE)]  # app has stable_timeout 30
    cmds = u.handle(TimerFired("stable:app"))
    assert records(cmds) == [(Status.UPDATED, Msg.UPDATED)] and not of(cmds, SetBootEnv)
    assert u.pv_try == "1" and u.phase is Phase.IDLE


def test_hub_not_reachable_rolls_back_a_live_transition():
    u = running_idle()
    offer(u, APP)
    download_all(u, APP)
    u.handle(ContainersStopped(("app",)))
    cmds = u.handle(TimerFired("network"))
    assert records(cmds) == [(Status.ERROR, Msg.HUB_NOT_REACHABLE)]
    assert of(cmds, SetBootEnv)[0].pv_try == "" and of(cmds, Reboot)


def test_hub_failure_in_testing_ignores_threshold():
    u = running_idle(Config(online_request_threshold=1))
    to_testing(u)
    # pv_wait_network: any failed request in TESTING fails it, whatever the threshold
    assert records(u.handle(HubRequestFailed())) == [(Status.ERROR, Msg.HUB_NOT_STABLE)]


def try_boot_testing(config):
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.INPROGRESS, Msg.REBOOTING, 1))}
    u, _ = boot("1", "0", "1", trails, config=config)
    settle(u)
    u.handle(HubReached())
    u.handle(TimerFired("commit"))
    return u


@pytest.mark.parametrize(
    ("config", "order"),
    [
        (Config(), ["SetBootEnv", "PersistProgress", "WriteDoneMarker"]),
        (FAITHFUL, ["PersistProgress", "SetBootEnv", "SetBootEnv", "WriteDoneMarker"]),
    ],
)
def test_commit_order_per_ordering(config, order):
    u = try_boot_testing(config)
    cmds = u.handle(TimerFired("stable:app"))
    assert [type(c).__name__ for c in cmds if c.durable] == order
    envs = of(cmds, SetBootEnv)
    # faithful: pv_bootloader_pre_commit_update sets pv_rev, then unsets pv_try (two writes)
    assert (envs[0].pv_rev, envs[-1].pv_try) == ("1", "")
    assert all(e.redundant is (config.ordering is Ordering.HARDENED) for e in envs)
    assert records(cmds) == [(Status.DONE, Msg.DONE)] and u.phase is Phase.IDLE


def test_container_exit_during_update_rolls_back_after_auto_recovery():
    u = running_idle()
    to_testing(u)
    delays = []
    for _ in range(3):
        cmds = u.handle(ContainerExited("app", uptime=1))
        delays += [c.delay for c in of(cmds, ArmTimer) if c.name == "recovery:app"]
        u.handle(TimerFired("recovery:app"))
        u.handle(ContainerStarted("app"))
    assert delays == [5.0, 10.0, 20.0]  # retry_delay × backoff_factor^(n-1)
    cmds = u.handle(ContainerExited("app", uptime=1))
    assert records(cmds) == [(Status.ERROR, Msg.CONTAINER_FAILED)] and of(cmds, Reboot)


def test_container_without_recovery_reboots_in_steady_state():
    u = running_idle()
    cmds = u.handle(ContainerExited("sysc"))
    assert of(cmds, Reboot) and records(cmds) == []


def test_goal_timeout_fails_update_but_only_unblocks_in_steady_state():
    u = running_idle()
    offer(u, READY)
    download_all(u, READY)
    u.handle(ContainersStopped(("app",)))
    u.handle(HubReached())
    u.handle(ContainerStarted("app"))
    cmds = u.handle(TimerFired("goal:app"))
    assert records(cmds) == [(Status.ERROR, Msg.GOAL_NOT_REACHED)]
    steady, cmds = boot()
    cmds = steady.handle(TimerFired("goal:platform"))
    assert [s.names for s in of(cmds, StartContainers)] == [("app",)] and not of(cmds, Reboot)


# ------------------------------------------------------------------------------ local


def test_local_upload_failure_deletes_the_revision_with_422():
    u = running_idle()
    cmds = u.handle(LocalStepUploaded("locals/x", None, Msg.SIG_FAILED))
    assert DeleteRevision("locals/x") in cmds and CtrlReply(422, None, Msg.SIG_FAILED) in cmds


def test_a_step_upload_never_replaces_the_running_or_rollback_revision():
    u = running_idle()
    running = u.running_rev
    for event in (LocalStepStarted(running), LocalStepUploaded(running, APP)):
        cmds = u.handle(event)
        assert not of(cmds, PersistProgress) and not of(cmds, DeleteRevision)
        assert [c.status for c in of(cmds, CtrlReply)] == [409]
    cmds = u.handle(LocalStepStarted("locals/new"))
    assert records(cmds) == [(Status.NEW, Msg.NOT_INSTALLED)] and CtrlReply(200) in cmds


def test_local_run_commit_forces_a_reboot_and_local_run_is_refused_while_busy():
    u = running_idle(objects=UPLOADED)
    cmds = u.handle(CtrlCommand("LOCAL_RUN_COMMIT", "locals/x", APP))
    # a non-reboot diff: the record says what pv_run_update chose, the reboot comes on top
    assert records(cmds)[-1] == (Status.INPROGRESS, Msg.TRANSITIONING) and of(cmds, Reboot)
    assert not of(cmds, ReportProgress)  # local revisions are not reported to the Hub
    u = running_idle()
    offer(u, APP)
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/x", APP))
    assert cmds == [CtrlReply(503, 600, "an update is in progress")]


def test_local_run_of_a_missing_revision_is_wontgo():
    u = running_idle()
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/none", None, Msg.NOT_FOUND))
    assert records(cmds) == [(Status.WONTGO, Msg.NOT_FOUND)]


def test_run_gc_command_keeps_running_and_committed():
    u = running_idle()
    cmds = u.handle(CtrlCommand("RUN_GC"))
    gc = of(cmds, RunGc)[0]
    assert gc.keep_revisions == {"0"} and gc.reason == "command"


def test_linkobjects_precedes_pv_try():
    u = running_idle(objects=UPLOADED)
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/x", APP))
    kinds = [type(c) for c in cmds if c.durable]
    assert kinds.index(LinkObjects) < kinds.index(SetBootEnv)


def test_install_with_a_missing_object_is_internal_error_before_pv_try():
    u, _ = boot(objects=OLD.object_shas())
    settle(u)
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/x", APP))
    assert records(cmds) == [(Status.ERROR, Msg.INTERNAL)] and not of(cmds, SetBootEnv)
    assert u.phase is Phase.IDLE
    for sha in APP.object_shas() - OLD.object_shas():
        u.handle(ObjectPut(sha))  # pv-ctrl uploads complete
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/y", APP))
    assert of(cmds, SetBootEnv)[0].pv_try == "locals/y"


def test_threshold_gc_on_wait_tick_but_not_while_downloading_or_just_after_a_put():
    u = running_idle(Config(gc_threshold=20))
    low, high = StorageStats(1000, 150), StorageStats(1000, 900)  # real free 10 % / 85 %
    assert of(u.handle(WaitTick(high)), RunGc) == []
    assert of(u.handle(WaitTick(low, since_object_put=30)), RunGc) == []  # within defer time
    assert of(u.handle(WaitTick(low)), RunGc)[0].reason == "threshold"
    offer(u, BSP)
    u.handle(MetadataReceived("1", {s: 1 for s in BSP.object_shas()}, ROOMY))
    assert u.phase is Phase.DOWNLOADING and of(u.handle(WaitTick(low)), RunGc) == []


def test_exit_of_a_container_stopped_for_a_transition_is_not_a_failure():
    u = running_idle()
    offer(u, APP)
    download_all(u, APP)
    assert u.phase is Phase.TRANSITIONING
    cmds = u.handle(ContainerExited("app", uptime=100))
    assert not of(cmds, Reboot) and records(cmds) == [] and u.phase is Phase.TRANSITIONING


def test_update_that_changes_no_container_goes_straight_to_testing_when_local():
    only_sig = build_state()  # same loaded entries: transition "none"
    u = running_idle(objects=UPLOADED)
    cmds = u.handle(CtrlCommand("LOCAL_RUN", "locals/same", only_sig))
    assert records(cmds)[-1] == (Status.TESTING, Msg.TESTING_NON_REBOOT)
    assert u.update_rev == "locals/same" and u.phase is Phase.TESTING


def test_signature_checked_at_try_boot_and_skipped_when_disabled():
    reject = Config(verify_signature=lambda s: Msg.SIG_FAILED if s is BSP else None)
    trails = {"0": TrailView(OLD), "1": TrailView(BSP, rec(Status.INPROGRESS, Msg.REBOOTING))}
    u, cmds = boot("1", "0", "1", trails, config=reject)
    assert records(cmds) == [(Status.ERROR, Msg.SIG_FAILED)] and u.finished
    disabled = Config(verify_signature=reject.verify_signature, secureboot_mode="disabled")
    u, cmds = boot("1", "0", "1", trails, config=disabled)
    assert records(cmds) == [(Status.INPROGRESS, Msg.TRYING)]


def test_every_table_handler_exists_and_targets_are_phases():
    from shared.engine.updater import TABLE

    for (phase, key), rule in TABLE.items():
        assert callable(getattr(Updater, rule.handler)), rule.handler
        assert rule.targets and all(isinstance(t, Phase) for t in rule.targets)
        assert isinstance(phase, Phase) and key
