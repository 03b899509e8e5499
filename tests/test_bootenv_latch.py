"""The bootloader latch is decided in shared.engine.bootloader only: pvreal's stores apply what it
returns, and the GRUB script pvreal boots QEMU with follows the same table (run here by a POSIX
shell standing in for GRUB's script engine, with load_env/save_env on a variable file)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pvreal.bootenv import FaithfulStore, grub
from pvreal.device.guest import set_grubenv
from pvreal.qemu.grub import boot_script
from shared.engine import bootloader
from shared.engine.bootloader import (
    PV_REV,
    PV_TRY,
    PV_TRYING,
    Latch,
    boot_from_env,
    env_after_set,
    latch_after_try_write,
    latch_from_env,
    latch_to_env,
)
from shared.engine.config import BootLatch

# GRUB script commands, as shell functions: the env file holds one `name=value` a line.
_SHIM = r"""
load_env() {
  shift; file=$1; shift
  for name in "$@"; do unset "$name"; done
  while IFS='=' read -r key value; do
    for name in "$@"; do [ "$key" = "$name" ] && eval "$key=\$value"; done
  done < "$ENVFILE"
}
save_env() {
  shift; shift
  keep=$(cat "$ENVFILE")
  for name in "$@"; do keep=$(printf '%s\n' "$keep" | grep -v "^$name=" || true); done
  printf '%s\n' "$keep" | grep . > "$ENVFILE.new" || true
  for name in "$@"; do
    eval "isset=\${$name+x}; value=\${$name}"
    [ -n "$isset" ] && printf '%s=%s\n' "$name" "$value" >> "$ENVFILE.new"
  done
  mv "$ENVFILE.new" "$ENVFILE"
}
linux16() { for arg in "$@"; do case $arg in pv_rev=*) echo "BOOTED ${arg#pv_rev=}";; esac; done; }
initrd16() { :; }
boot() { exit 0; }
reboot() { exit 1; }
"""


def _as_shell(script: str) -> str:
    """GRUB's `set name=value` is the shell's `name=value` (bare values quoted)."""

    def assign(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        return name + "=" + (value if value.startswith('"') else repr(value))

    return _SHIM + re.sub(r"\bset (\w+)=(\"[^\"]*\"|[^\s;]+)", assign, script)


def run_grub(tmp: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Run the boot script on `env`: the revision it boots and the env it leaves."""
    file = tmp / "grubenv"
    file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    out = subprocess.run(
        ["sh", "-c", _as_shell(boot_script())],
        env={"ENVFILE": str(file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (booted,) = re.findall(r"^BOOTED (.*)$", out, re.M)
    after = dict(line.split("=", 1) for line in file.read_text().splitlines() if line)
    return booted, after


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh to run the GRUB script")
@pytest.mark.parametrize(
    "pv_rev, pv_try, pv_trying",
    list(itertools.product(["", "0", "3"], ["", "1", "3"], ["", "1", "2"])),
)
def test_grub_script_is_the_single_shot_table(tmp_path, pv_rev, pv_try, pv_trying):
    env = {k: v for k, v in ((PV_REV, pv_rev), (PV_TRY, pv_try), (PV_TRYING, pv_trying)) if v}
    booted, after = run_grub(tmp_path, env)
    # GRUB's latch shares Pantavisor's env file: the same mapping is both
    choice, latch_env = boot_from_env(env, env, BootLatch.SINGLE_SHOT)
    assert booted == choice.rev
    # the single-shot table keeps no count (pvreal's pv.env stores one anyway; GRUB does not)
    latch_env.pop(bootloader.PV_TRYING_ATTEMPTS, None)
    assert after == latch_env


def test_grub_script_reads_and_writes_the_shared_variable_names():
    script = boot_script()
    assert f"load_env -f ${{pv_env}} {PV_REV} {PV_TRY} {PV_TRYING}" in script
    assert f"save_env -f ${{pv_env}} {PV_TRYING}" in script


def test_latch_encoding_round_trips_and_drops_empty_values():
    assert latch_from_env({PV_TRYING: "4", bootloader.PV_TRYING_ATTEMPTS: "2"}) == Latch("4", 2)
    assert latch_from_env({bootloader.PV_TRYING_ATTEMPTS: "x"}) == Latch()
    kept = {"other": "1", PV_TRYING: "old", bootloader.PV_TRYING_ATTEMPTS: "3"}
    assert latch_to_env(kept, Latch()) == {"other": "1"}
    assert latch_to_env({}, Latch("4", 1)) == {PV_TRYING: "4", bootloader.PV_TRYING_ATTEMPTS: "1"}


def test_set_env_and_the_latch_after_a_pv_try_write():
    assert env_after_set({PV_REV: "1", PV_TRY: "2", "x": "y"}, None, "") == {PV_REV: "1", "x": "y"}
    assert env_after_set({}, "5", "6") == {PV_REV: "5", PV_TRY: "6"}
    trying = Latch("2", 1)
    assert latch_after_try_write(trying, "2", "2") == trying  # pv_rev written alone
    assert latch_after_try_write(trying, "2", "") == Latch()  # commit or rollback
    assert latch_after_try_write(trying, "2", "3") == Latch()  # a new try


def test_guest_grubenv_write_applies_the_shared_latch_rule(tmp_path):
    store = FaithfulStore(tmp_path / "grubenv", grub())
    store.save({PV_REV: "0", PV_TRY: "1", PV_TRYING: "1"})
    assert set_grubenv(store, None, None) == {PV_REV: "0", PV_TRY: "1", PV_TRYING: "1"}
    assert set_grubenv(store, "1", "") == {PV_REV: "1"}  # commit: the latch goes with pv_try
    assert store.load() == {PV_REV: "1"}
