"""Turn a guest's console lines into a timeline of boots: what GRUB decided, what ran, how it ended,
and where each boot's time went (the boot-time breakdown of docs/qemu.md).

`boots(lines)` reads a whole console; `Follower` reads it line by line while QEMU runs and reports
each boot as it happens (`pvreal qemu run` prints them live).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from pvreal.qemu.runner import ConsoleLine

_BOOTED = re.compile(r"PVTWIN BOOT pv_rev=(\S*) pv_try=(\S*)")
_ENDINGS = (  # (pattern, how the boot ended)
    (re.compile(r"PVTWIN POWEROFF"), "poweroff"),
    (re.compile(r"PVTWIN REBOOT"), "reboot"),
    (re.compile(r"PVTWIN PANIC|Kernel panic"), "panic"),
    (re.compile(r"PVTWIN HANG"), "hang"),
    (re.compile(r"PVGRUB: cannot boot"), "GRUB could not load it"),  # then GRUB resets
)
UNKNOWN_END = "reset"  # watchdog, or anything else the console does not say
HOST_RESET = "reset (QMP)"  # the host's system_reset
HOST_KILL = "killed by the host"  # the run was over and QEMU was killed: not a device event

# Milestones of one boot, in the order they happen: (name, console pattern). `kernel` is not a
# line: it is the host time of the kernel's clock start (printk timestamps and `uptime=` marks).
_MARKS = (
    ("grub", re.compile(r"PVGRUB: up")),
    ("kernel_loaded", re.compile(r"PVGRUB: kernel loaded")),
    ("initrd_loaded", re.compile(r"PVGRUB: initrd loaded")),
    ("unpacked", re.compile(r"Freeing initrd memory")),
    ("init", re.compile(r"PVTWIN INIT ")),
    ("storage", re.compile(r"PVTWIN BOOT ")),
    ("imported", re.compile(r"PVTWIN DAEMON imported")),
    ("up", re.compile(r"PVTWIN DEVICE up")),
)
_GUEST_CLOCK = re.compile(r"^\[\s*(\d+\.\d+)\]|uptime=(\d+\.\d+)")
# (short name, label, from mark, to mark) for the breakdown; a phase whose marks are missing is
# left out.
PHASES = (
    ("firmware", "firmware (QEMU start or reset -> GRUB up)", "start", "grub"),
    ("GRUB reads", "GRUB reads kernel + initramfs (BIOS int13)", "grub", "initrd_loaded"),
    ("hand-over", "GRUB hand-over + kernel decompression", "initrd_loaded", "kernel"),
    ("kernel+unpack", "kernel: start -> initramfs unpacked", "kernel", "unpacked"),
    ("kernel->init", "kernel: unpacked -> /init (python) runs", "unpacked", "init"),
    ("kernel", "kernel: start -> /init (python) runs", "kernel", "init"),
    ("PID 1", "PID 1: python start-up, modules, /storage", "init", "storage"),
    ("imports", "daemon imports", "storage", "imported"),
    ("daemon", "daemon start -> device up", "imported", "up"),
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
    # poweroff, reboot, panic, hang, reset (watchdog/unknown), reset (QMP), killed by the host
    ended: str = UNKNOWN_END
    marks: dict[str, float] = field(default_factory=dict)  # milestone -> s since QEMU started
    # milestone -> the guest's own clock (printk stamp or `uptime=`) on that line: the guest-side
    # breakdown, which a loaded host stretches less than the host's time line (no GRUB, no BIOS)
    guest: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def breakdown(self, short: bool = False) -> list[tuple[str, float]]:
        """(phase, seconds) for the phases whose marks this boot has, in boot order."""
        rows = []
        for name, label, start, end in PHASES:
            if start in self.marks and end in self.marks:
                if start == "kernel" and end == "init" and "unpacked" in self.marks:
                    continue  # shown as its two halves
                rows.append((name if short else label, round(self.marks[end] - self.marks[start], 2)))
        return rows

    def guest_breakdown(self, short: bool = False) -> list[tuple[str, float]]:
        """(phase, seconds) by the guest's own clock, for the phases from the kernel on."""
        rows = []
        clock = {"kernel": 0.0, **self.guest}
        for name, label, start, end in PHASES:
            if start in clock and end in clock and not (start == "kernel" and end == "init"):
                rows.append((name if short else label, round(clock[end] - clock[start], 2)))
        return rows

    def up_seconds(self) -> float | None:
        """From QEMU start (or the boot's start after a reboot) to the daemon up."""
        if "up" in self.marks and "start" in self.marks:
            return round(self.marks["up"] - self.marks["start"], 2)
        return None


class Follower:
    """Builds the boots from console lines one at a time; calls `on_boot(event, boot)` with
    "booted" when a boot's PID 1 reports its revision, "up" when the daemon is up, "event" for
    any other PVTWIN line (the last of `boot.events`) and "ended" when the boot ends (or the
    next GRUB shows that it did)."""

    def __init__(self, on_boot: Callable[[str, Boot], None] | None = None):
        self.boots: list[Boot] = []
        self.on_boot = on_boot or (lambda event, boot: None)
        self._last_t = 0.0
        self._ended: set[int] = set()

    def feed(self, line: ConsoleLine) -> None:
        if "PVGRUB: up" in line.text:
            if self.boots:
                self._end(self.boots[-1])
            start = self._last_t if self.boots else 0.0
            boot = Boot(index=len(self.boots), grub_at=line.t)
            boot.marks.update(start=start, grub=line.t)
            self.boots.append(boot)
            self._last_t = line.t
            return
        if not self.boots:
            return
        boot = self.boots[-1]
        if boot.index not in self._ended:  # a boot's end is its last line, or what ended it
            self._last_t = line.t
        if line.text.startswith("PVGRUB:"):
            boot.grub.append(line.text.removeprefix("PVGRUB: "))
        self._mark(boot, line)
        match = _BOOTED.search(line.text)
        if match:
            boot.booted_at, boot.pv_rev, boot.pv_try = line.t, match.group(1), match.group(2)
            self.on_boot("booted", boot)
        elif "PVTWIN" in line.text:
            boot.events.append(line.text[line.text.index("PVTWIN") :])
            self.on_boot("up" if "PVTWIN DEVICE up" in line.text else "event", boot)
        for pattern, ending in _ENDINGS:
            if boot.index not in self._ended and pattern.search(line.text):
                boot.ended = ending
                if ending in ("poweroff", "reboot"):
                    self._end(boot)

    def host_reset(self, at: float | None = None) -> None:
        """The host reset the machine (QMP system_reset) `at` s since QEMU started: the current
        boot ended by it (and the next one starts then)."""
        if self.boots and self.boots[-1].index not in self._ended:
            if at is not None:
                self._last_t = at
            if self.boots[-1].ended == UNKNOWN_END:
                self.boots[-1].ended = HOST_RESET
            self._end(self.boots[-1])

    def finish(self, *, killed: bool) -> list[Boot]:
        """QEMU is gone: `killed` when the host killed it (the run's end or its timeout), so a
        boot that was still running is labelled as such, not as a device reset."""
        if self.boots:
            last = self.boots[-1]
            if killed and last.ended == UNKNOWN_END and last.index not in self._ended:
                last.ended = HOST_KILL
            self._end(last)
        return self.boots

    def _end(self, boot: Boot) -> None:
        if boot.index not in self._ended:
            self._ended.add(boot.index)
            self.on_boot("ended", boot)

    def _mark(self, boot: Boot, line: ConsoleLine) -> None:
        clock = _GUEST_CLOCK.search(line.text)
        for name, pattern in _MARKS:
            if name not in boot.marks and pattern.search(line.text):
                boot.marks[name] = line.t
                if clock:
                    boot.guest[name] = float(clock.group(1) or clock.group(2))
        if clock:
            guest = float(clock.group(1) or clock.group(2))
            if guest > 0:  # the host saw the line at or after the guest wrote it: keep the earliest
                start = round(line.t - guest, 3)
                if start < boot.marks.get("kernel", start + 1) and start >= boot.marks.get(
                    "initrd_loaded", boot.marks["grub"]
                ):
                    boot.marks["kernel"] = start


def boots(
    lines: Iterable[ConsoleLine], *, killed: bool = False, resets: Iterable[float] = ()
) -> list[Boot]:
    """The boots of a whole console. `killed`: the host killed QEMU at the end; `resets`: when
    (s since QEMU start) the host reset the machine, so those boots say so."""
    follower = Follower()
    pending = sorted(resets)
    for line in lines:
        while pending and pending[0] <= line.t:
            follower.host_reset(pending.pop(0))
        follower.feed(line)
    return follower.finish(killed=killed)


def render_boot(boot: Boot) -> str:
    quiet = ("up", "save_env ok", "kernel loaded", "initrd loaded")
    decision = "; ".join(g for g in boot.grub if not g.startswith(quiet))
    booted = (
        f"rev {boot.pv_rev} (pv_try={boot.pv_try or '-'}) at {boot.booted_at:.1f}s"
        if boot.pv_rev is not None and boot.booted_at is not None
        else "no revision reached PID 1"
    )
    return f"boot {boot.index}: GRUB at {boot.grub_at:.1f}s [{decision}] -> {booted} -> {boot.ended}"


def render(result: list[Boot]) -> str:
    return "\n".join(render_boot(boot) for boot in result)


def render_breakdown(boot: Boot) -> str:
    """The boot-time breakdown of one boot, one phase a line: by the host's time line (what a
    user waits) and, beside it, by the guest's own clock where the guest stamps its lines."""
    guest = dict(boot.guest_breakdown())
    rows = ["    host   guest"]
    for label, seconds in boot.breakdown():
        mine = f"{guest[label]:6.2f}" if label in guest else "     -"
        rows.append(f"  {seconds:6.2f} {mine} s  {label}")
    total = boot.up_seconds()
    if total is not None:
        up = f"{boot.guest['up']:6.2f}" if "up" in boot.guest else "     -"
        rows.append(f"  {total:6.2f} {up} s  total: boot start -> device up (guest: kernel start -> up)")
    return "\n".join(rows)
