"""The transition table cannot hold a dead rule, and pv-ctrl's answers come from the engine."""

from __future__ import annotations

import pytest
from enginekit import idle_engine

from shared.engine import ctrl
from shared.engine.ctrl import Op, ctrl_decision
from shared.engine.events import (
    EVENT_TYPES,
    CtrlCommand,
    TimerFired,
    timer_key,
)
from shared.engine.updater import (
    _ANY_PHASE,
    TABLE,
    Phase,
    Rule,
    TableError,
    check_table,
)


def test_the_real_table_passes_and_names_only_real_events():
    check_table()
    classes = {c.key for c in EVENT_TYPES if c is not TimerFired}
    for _, key in TABLE:
        assert key in classes or key.startswith(("timer:", "container:", "goals:", "containers:"))


@pytest.mark.parametrize(
    "key, rule, message",
    [
        ("MetadataRecieved", Rule("_on_metadata", (Phase.IDLE,)), "no event"),  # the typo
        ("timer:comit", Rule("_on_commit_timer", (Phase.IDLE,)), "no event"),
        ("MetadataReceived", Rule("_on_metadat", (Phase.IDLE,)), "no handler"),
        ("ObjectFetched", Rule("_on_metadata", (Phase.IDLE,)), "takes"),  # wrong event type
        ("MetadataReceived", Rule("_on_metadata", ("IDLE",)), "targets"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_rule_is_refused(key, rule, message):
    table = {**TABLE, (Phase.QUEUED, key): rule}
    with pytest.raises(TableError, match=message):
        check_table(table)


def test_a_rule_in_rebooting_is_dead_and_refused():
    table = {**TABLE, (Phase.REBOOTING, "HubReached"): Rule("_on_hub_reached", (Phase.IDLE,))}
    with pytest.raises(TableError, match="not a phase"):
        check_table(table)
    with pytest.raises(TableError, match="no such event"):
        check_table(TABLE, {**_ANY_PHASE, "CtrlComand": "_on_ctrl"})


def test_timer_keys_are_checked():
    assert timer_key("commit") == TimerFired("commit").key == TimerFired("commit:x").key
    with pytest.raises(ValueError):
        timer_key("comit")


def test_ops_are_pantavisor_names_and_equal_their_strings():
    assert Op.RUN_GC == "RUN_GC" and Op.parse("RUN_GC") is Op.RUN_GC
    assert Op.parse("FROBNICATE") is None
    assert set(Op) >= ctrl.BLOCKED_DURING_UPDATE and set(Op) >= ctrl.OPS_WITH_REVISION


@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("op", [*Op, "FROBNICATE"])
def test_engine_answers_with_the_shared_rule(op, queued):
    for engine in (idle_engine(), idle_engine(local=True), idle_engine(PV_CONTROL_REMOTE="0")):
        expected = ctrl_decision(
            op,
            update_active=engine.update_active,
            command_queued=queued,
            control_remote=engine.config.control_remote,
            local_mode=engine.local_mode,
        )
        assert engine.ctrl_decision(op, command_queued=queued) == expected
        if not queued and not expected.accepted:
            (reply,) = engine.handle(CtrlCommand(op))
            assert (reply.status, reply.retry_after, reply.body) == (
                expected.status, expected.retry_after, expected.reason)


def test_go_remote_refused_when_control_remote_is_off():
    assert idle_engine(PV_CONTROL_REMOTE="0").ctrl_decision(Op.GO_REMOTE).status == 409
    assert idle_engine(local=True).ctrl_decision(Op.UPDATE_METADATA).status == 409


def test_defer_reboot_needs_the_debug_shell():
    """ctrl/ctrl_cmd.c pv_ctrl_cmd_add: DEFER_REBOOT is refused when PV_DEBUG_SHELL is off; the
    engine passes its own config, so the key (and its alias) reaches the decision."""
    assert idle_engine().ctrl_decision(Op.DEFER_REBOOT).status == 200
    assert idle_engine(PV_DEBUG_SHELL="0").ctrl_decision(Op.DEFER_REBOOT).status == 409
    assert idle_engine(**{"debug.shell": "0"}).ctrl_decision(Op.DEFER_REBOOT).status == 409


def test_signal_of_an_unknown_container_is_404():
    assert idle_engine().signal_decision("nobody").status == 404


def test_only_signal_without_the_mgmt_role():
    assert ctrl.endpoint_decision(["signal"], mgmt=False).accepted
    assert ctrl.endpoint_decision(["commands"], mgmt=False).status == 403
    assert ctrl.endpoint_decision(["steps", "locals", "x"], mgmt=True).accepted
