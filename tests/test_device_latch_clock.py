"""The daemon's timers and its bootloader latch on real env files (no root needed)."""

from __future__ import annotations

import pytest

from pvreal.device.clock import Timers
from pvreal.device.latch import apply_latch, boot_files, set_env
from shared.engine.config import Config


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_timers_fire_in_deadline_order_and_rearm_replaces():
    clock = FakeClock()
    timers = Timers(clock)
    assert timers.next_delay() is None
    timers.arm("commit", 5)
    timers.arm("goal:app", 2)
    timers.arm("commit", 1)  # re-arming replaces the earlier deadline
    assert timers.next_delay() == pytest.approx(1)
    clock.t += 1.5
    assert timers.due() == ["commit"]
    timers.cancel("goal:app")
    clock.t += 10
    assert timers.due() == [] and timers.next_delay() is None


@pytest.mark.parametrize("bootloader", ["uboot", "grub"])
@pytest.mark.parametrize("ordering", ["faithful", "hardened"])
def test_latch_tries_once_then_falls_back(tmp_path, bootloader, ordering):
    files = boot_files(tmp_path, bootloader, ordering)
    config = Config()
    set_env(files, "0", "")
    choice, env = apply_latch(files, config)
    assert choice.rev == "0" and not choice.trying and env["pv_rev"] == "0"
    set_env(files, None, "locals/new")  # an update sets pv_try and reboots
    first, _ = apply_latch(files, config)
    assert first.rev == "locals/new" and first.trying
    assert files.latch.load()["pv_trying"] == "locals/new"  # written before booting
    second, env = apply_latch(files, config)  # that try did not commit: fall back
    assert second.rev == "0" and not second.trying and env["pv_try"] == "locals/new"
    assert "pv_trying" not in files.latch.load()
    set_env(files, "locals/new", "")  # a commit: pv_rev moves, pv_try goes
    third, _ = apply_latch(files, config)
    assert third.rev == "locals/new"


def test_set_env_keeps_unnamed_keys(tmp_path):
    files = boot_files(tmp_path, "uboot", "hardened")
    set_env(files, "3", "4")
    set_env(files, None, "")
    assert files.env.load() == {"pv_rev": "3"}


def test_unknown_bootloader_is_refused(tmp_path):
    with pytest.raises(ValueError, match="bootloader"):
        boot_files(tmp_path, "lilo", "hardened")
