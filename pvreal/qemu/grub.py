"""`grub.lnx`: a real GRUB (i386-pc) that QEMU loads with `-kernel`, carrying the try-boot latch.

lnxboot.img + core.img makes GRUB look like a bzImage to QEMU's loader, while SeaBIOS stays up
so GRUB's biosdisk reads the virtio storage disk through int13 (brief grub-qemu.md, approach A').
The boot script is embedded in core.img too: the early config (`-c`) only sets up the serial
console, root and `prefix=(memdisk)/boot/grub`, because it runs under GRUB's rescue parser, which
has no `if` (every branch would run). Normal mode then reads the latch, grub.cfg, from the memdisk
(`-m`, a tar). The storage disk therefore needs no GRUB files, only /boot/grubenv and the trails;
GRUB is a host file rebuilt in milliseconds.

The latch is a port of Pantavisor's boot.cmd.pvgeneric (see docs/qemu.md):
- no pv_try: boot pv_rev;
- pv_try set and pv_trying != pv_try: first attempt, save pv_trying=pv_try, boot pv_try;
- pv_try set and pv_trying == pv_try: the try already had its chance (the device did not commit
  before this reset): delete pv_trying, boot pv_rev (rollback).

When save_env fails on a first attempt (sparse or unwritable grubenv, read-only disk) the latch
cannot record the attempt, so booting pv_try would retry it forever with no rollback. The default
("boot-committed") boots pv_rev instead and prints why; "boot-try" is the faithful behaviour of the
U-Boot script, kept so that the failure mode can be shown.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

from pvreal import tools

GRUB_DIR = Path("/usr/lib/grub/i386-pc")
MODULES = (
    "biosdisk", "part_msdos", "ext2", "loadenv", "test", "echo", "linux", "serial", "terminal",
    "sleep", "reboot", "halt", "normal", "memdisk", "tar", "linux16",
)  # fmt: skip
ENV_PATH = "/boot/grubenv"  # Pantavisor's GRUB_FMT "%s/boot/grubenv" under the storage mount
ON_SAVE_ENV_FAILURE = ("boot-committed", "boot-try")

EARLY_CFG = """\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set root=(hd0,msdos1)
set prefix=(memdisk)/boot/grub
"""

_HEAD = """\
set timeout=0
set root=(hd0,msdos1)
set pv_env={env}
echo "PVGRUB: up"
load_env -f ${{pv_env}} pv_rev pv_try pv_trying
if [ -z "${{pv_rev}}" ]; then set pv_rev=0; fi
echo "PVGRUB: env pv_rev=[${{pv_rev}}] pv_try=[${{pv_try}}] pv_trying=[${{pv_trying}}]"
set boot_rev="${{pv_rev}}"
if [ -n "${{pv_try}}" ]; then
  if [ "${{pv_trying}}" = "${{pv_try}}" ]; then
    echo "PVGRUB: try of ${{pv_try}} already attempted, rollback to ${{pv_rev}}"
    unset pv_trying
    if save_env -f ${{pv_env}} pv_trying; then echo "PVGRUB: save_env ok"; else echo "PVGRUB: save_env FAILED"; fi
  else
    set pv_trying="${{pv_try}}"
    if save_env -f ${{pv_env}} pv_trying; then
      echo "PVGRUB: save_env ok"
      echo "PVGRUB: first attempt of ${{pv_try}}"
      set boot_rev="${{pv_try}}"
    else
{on_failure}
    fi
  fi
fi
"""
_ON_FAILURE = {
    "boot-committed": """\
      echo "PVGRUB: save_env FAILED, the try cannot be latched: booting committed ${pv_rev}"
      unset pv_trying""",
    "boot-try": """\
      echo "PVGRUB: save_env FAILED, booting the try anyway (no rollback possible)"
      set boot_rev="${pv_try}\"""",
}
_TAIL = """\
echo "PVGRUB: booting rev ${{boot_rev}}"
set pv_cmdline=""
if [ -f /trails/${{boot_rev}}/.pv/{cmdline_env} ]; then
  load_env -f /trails/${{boot_rev}}/.pv/{cmdline_env} pv_cmdline
fi
linux16 /trails/${{boot_rev}}/.pv/pv-kernel.img {cmdline} ${{pv_cmdline}} pv_rev=${{boot_rev}} pv_try=${{pv_try}}
echo "PVGRUB: kernel loaded"
initrd16 /trails/${{boot_rev}}/.pv/pv-initrd.img
echo "PVGRUB: initrd loaded"
boot
echo "PVGRUB: cannot boot rev ${{boot_rev}}, resetting"
sleep 1
reboot
"""
# Kernel arguments that only make the guest boot sooner under TCG (measured with initcall_debug,
# docs/qemu.md "Under 10 s"): the crypto self-tests (~0.3 s); and the first kernel user of
# hmac(sha256) waits ~0.5 s, which is the KDF108 self-test, else IPv6, else the encrypted/trusted
# key types (none of which the device uses: its networks are IPv4, it holds no kernel keys).
KERNEL_ARGS = (
    "cryptomgr.notests=1",
    "initcall_blacklist=crypto_kdf108_init,init_encrypted,init_trusted",
    "ipv6.disable=1",
)
DEFAULT_CMDLINE = " ".join(("console=ttyS0", "panic=2", *KERNEL_ARGS))
# Pantavisor skips its boot-time checksum pass when `pv_quickboot` is in its environment (state.c
# `pv_state_validate_checksum`), and the generic U-Boot script always passes it. Under TCG the pass
# re-hashes ~44 MB of kernel and initramfs at every boot (~0.7 s at load ~2); `--boot-checksum` keeps it.
QUICKBOOT = "pv_quickboot=1"
# A revision's extra kernel arguments (bsp/run.json "cmdline", a pvtwin extension): a grubenv
# block in its trail holding pv_cmdline, written when the trail is linked (pvreal.qemu.cmdline).
CMDLINE_ENV = "pv-cmdline.env"


def boot_script(
    *,
    on_save_env_failure: str = "boot-committed",
    cmdline: str = DEFAULT_CMDLINE,
    quickboot: bool = False,
) -> str:
    """The latch (grub.cfg in the memdisk): read the env, decide, linux/initrd from the trail.
    `quickboot`: the kernel command line carries `pv_quickboot` (no boot-time checksum pass)."""
    if quickboot:
        cmdline = f"{cmdline} {QUICKBOOT}"
    if on_save_env_failure not in ON_SAVE_ENV_FAILURE:
        raise ValueError(f"on_save_env_failure must be one of {ON_SAVE_ENV_FAILURE}")
    head = _HEAD.format(env=ENV_PATH, on_failure=_ON_FAILURE[on_save_env_failure])
    return head + _TAIL.format(cmdline=cmdline, cmdline_env=CMDLINE_ENV)


def available() -> bool:
    return tools.available("grub-mkimage") and (GRUB_DIR / "lnxboot.img").exists()


def fingerprint(script: str) -> str:
    version = tools.run(["grub-mkimage", "--version"]).strip()
    text = f"{version}\n{' '.join(MODULES)}\n{EARLY_CFG}\n{script}"
    return hashlib.sha256(text.encode()).hexdigest()


def build(out: Path, script: str) -> None:
    """Write grub.lnx (lnxboot.img followed by a core.img embedding `script`) to `out`."""
    import tarfile  # build time only: the guest imports this module (pvreal.qemu.cmdline)

    work = out.parent
    early = work / "grub-early.cfg"
    memdisk = work / "grub-memdisk.tar"
    core = work / "grub-core.img"
    early.write_text(EARLY_CFG)
    data = script.encode()
    with tarfile.open(memdisk, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("boot/grub/grub.cfg")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    tools.run(
        [
            tools.require("grub-mkimage"), "-O", "i386-pc", "-o", str(core), "-c", str(early),
            "-m", str(memdisk), "-p", "(memdisk)/boot/grub", "-d", str(GRUB_DIR), *MODULES,
        ]
    )  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes((GRUB_DIR / "lnxboot.img").read_bytes() + core.read_bytes())
    tmp.replace(out)
    for scratch in (early, memdisk, core):
        scratch.unlink()


def grub_editenv_list(path: Path) -> str:
    """`grub-editenv PATH list`, for cross-checking our writer against GRUB's own tool."""
    done = subprocess.run(
        ["grub-editenv", str(path), "list"], capture_output=True, text=True, check=True
    )
    return done.stdout
