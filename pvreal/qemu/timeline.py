"""Turn a guest's console lines into a timeline of boots: what GRUB decided, what ran, how it ended."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from pvreal.qemu.runner import ConsoleLine

_BOOTED = re.compile(r"PVTWIN BOOT pv_rev=(\S*) pv_try=(\S*)")
_ENDINGS = (  # (pattern, how the boot ended)
    (re.compile(r"PVTWIN POWEROFF"), "poweroff"),
    (re.compile(r"PVTWIN REBOOT"), "reboot"),
    (re.compile(r"PVTWIN PANIC|Kernel panic"), "panic"),
    (re.compile(r"PVTWIN HANG"), "hang"),
)


@dataclass
class Boot:
    index: int
    grub_at: float  # seconds since QEMU started, when GRUB came up
    grub: list[str] = field(default_factory=list)  # GRUB's PVGRUB lines (the latch decision)
    booted_at: float | None = None  # when PID 1 printed PVTWIN BOOT
    pv_rev: str | None = None  # as reported on the serial console by the guest
    pv_try: str | None = None
    events: list[str] = field(default_factory=list)  # PVTWIN lines after the boot line
    ended: str = "reset"  # poweroff, reboot, panic, hang, or reset (watchdog/QMP/unknown)

    def to_json(self) -> dict:
        return asdict(self)


def boots(lines: Iterable[ConsoleLine]) -> list[Boot]:
    result: list[Boot] = []
    for line in lines:
        if "PVGRUB: up" in line.text:
            result.append(Boot(index=len(result), grub_at=line.t))
            continue
        if not result:
            continue
        boot = result[-1]
        if line.text.startswith("PVGRUB:"):
            boot.grub.append(line.text.removeprefix("PVGRUB: "))
        match = _BOOTED.search(line.text)
        if match:
            boot.booted_at, boot.pv_rev, boot.pv_try = line.t, match.group(1), match.group(2)
        elif "PVTWIN" in line.text:
            boot.events.append(line.text[line.text.index("PVTWIN") :])
        for pattern, ending in _ENDINGS:
            if pattern.search(line.text):
                boot.ended = ending
    return result


def render(result: list[Boot]) -> str:
    rows = []
    for boot in result:
        decision = "; ".join(g for g in boot.grub if not g.startswith(("up", "save_env ok")))
        booted = (
            f"rev {boot.pv_rev} (pv_try={boot.pv_try or '-'}) at {boot.booted_at:.1f}s"
            if boot.pv_rev is not None
            else "no revision reached PID 1"
        )
        rows.append(
            f"boot {boot.index}: GRUB at {boot.grub_at:.1f}s [{decision}] -> {booted} -> {boot.ended}"
        )
    return "\n".join(rows)
