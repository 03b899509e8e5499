"""Run QEMU under a timeout, capture the serial console to a file, wait for marker lines.

Every QEMU started here runs in its own process group and is killed (the whole group) when the
run ends, when its timeout passes, or at interpreter exit, so a stuck guest (a `grub>` prompt,
a hung kernel) can never outlive the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import PvError

QEMU = "qemu-system-x86_64"
GUEST_CTRL_PORT = 7100  # pvreal.device.guest.GUEST_CTRL_PORT (not imported: host-only module)
_LIVE: set[QemuRun] = set()


class QemuTimeout(PvError):
    """A wait ran out of time; the message ends with the console's last lines."""


@dataclass(frozen=True)
class ConsoleLine:
    t: float  # seconds since QEMU started
    text: str


def available() -> bool:
    return shutil.which(QEMU) is not None


ICOUNT_SHIFT = 2  # 4 ns an instruction: about this host's TCG speed when it is idle


def qemu_argv(
    grub_lnx: Path,
    disk: Path,
    *,
    memory_mb: int = 512,
    watchdog: bool = False,
    qmp_socket: Path | None = None,
    no_reboot: bool = False,
    read_only: bool = False,
    ctrl_port: int | None = None,
    icount: int | None = None,
) -> list[str]:
    """The QEMU command line: TCG (KVM is unusable here), GRUB as -kernel, the disk on virtio.
    `icount` N: the guest's clock counts instructions (2**N ns each; ICOUNT_SHIFT), so guest-side
    timings measure the guest's work whatever the host's load (a benchmark, not a device)."""
    argv = [
        # qemu64 + RDRAND: the kernel (RANDOM_TRUST_CPU) seeds its RNG at once; without it
        # Python's start as PID 1 waits ~1 s under TCG for the jitter entropy (docs/qemu.md)
        QEMU, "-accel", "tcg", "-cpu", "qemu64,+rdrand",
        "-m", str(memory_mb), "-display", "none", "-monitor", "none",
        "-serial", "stdio", "-nic", "none", "-no-user-config",
        "-kernel", str(grub_lnx),
        "-drive", f"file={disk},if=virtio,format=raw" + (",readonly=on" if read_only else ""),
    ]  # fmt: skip
    if ctrl_port is not None:
        # The host reaches the guest's pv-ctrl through 127.0.0.1:<port> only: user networking
        # with restrict=on lets the guest reach nothing, the forward is the one way in. No
        # option ROM: iPXE would only cost boot time.
        index = argv.index("-nic")
        argv[index : index + 2] = [
            "-netdev", f"user,id=pvnet,restrict=on,hostfwd=tcp:127.0.0.1:{ctrl_port}-:{GUEST_CTRL_PORT}",
            "-device", "virtio-net-pci,netdev=pvnet,romfile=",
        ]  # fmt: skip
    if watchdog:
        argv += ["-device", "i6300esb", "-action", "watchdog=reset"]
    if qmp_socket is not None:
        argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if no_reboot:
        argv.append("-no-reboot")
    if icount is not None:
        # sleep=on (the default): while the guest idles (a wait for I/O) its clock follows the
        # host's, instead of warping to the next timer (sleep=off jumped minutes ahead here)
        argv += ["-icount", f"shift={icount}"]
    return argv


class QemuRun:
    """One QEMU process: `with QemuRun(argv, log, timeout=60) as vm: vm.wait_for("PVTWIN BOOT")`."""

    def __init__(self, argv: list[str], log_path: Path, *, timeout: float = 120.0):
        self.argv = argv
        self.log_path = log_path
        self.timeout = timeout
        self.lines: list[ConsoleLine] = []
        self.returncode: int | None = None
        self.timed_out = False
        self.last_index = 0  # the console line the last wait_for matched
        self.killed = False  # the host killed QEMU (the run's end or its timeout), not the guest
        self.on_line: list[Callable[[ConsoleLine], None]] = []  # called by the reader, in order
        self._proc: subprocess.Popen[bytes] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._start = 0.0

    def start(self) -> QemuRun:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._start = time.monotonic()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._read, name="qemu-console", daemon=True)
        self._reader.start()
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self.log_path.open("w") as log:
            for raw in self._proc.stdout:
                text = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                line = ConsoleLine(round(time.monotonic() - self._start, 3), text)
                log.write(f"{line.t:8.3f} {text}\n")
                log.flush()
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
                for listener in self.on_line:
                    try:
                        listener(line)
                    except Exception:  # a listener's bug must not stop the console capture
                        traceback.print_exc()
        self.returncode = self._proc.wait()
        with self._changed:
            self._changed.notify_all()

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def elapsed(self) -> float:
        """Seconds since QEMU started (the clock of ConsoleLine.t)."""
        return round(time.monotonic() - self._start, 3)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_for(self, pattern: str, *, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """The first console line from index `start` on matching the regex `pattern` (its index
        is then `last_index`); QemuTimeout when the time passes or QEMU exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                for position in range(index, len(self.lines)):
                    match = regex.search(self.lines[position].text)
                    if match:
                        self.last_index = position
                        return match
                index = len(self.lines)
                finished = self._reader is not None and not self._reader.is_alive()
                left = deadline - time.monotonic()
                if finished or left <= 0:
                    why = "QEMU exited" if finished else f"{timeout} s passed"
                    raise QemuTimeout(
                        f"{why} before {pattern!r}; last lines:\n{self.tail()}",
                        source=str(self.log_path),
                    )
                self._changed.wait(min(left, 0.5))

    def wait_exit(self, *, timeout: float = 60.0) -> int:
        """QEMU's exit status (the guest powered off); QemuTimeout if it is still running."""
        assert self._reader is not None
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise QemuTimeout(
                f"QEMU still running after {timeout} s; last lines:\n{self.tail()}",
                source=str(self.log_path),
            )
        assert self.returncode is not None
        return self.returncode

    def tail(self, count: int = 25) -> str:
        return "\n".join(f"{line.t:8.3f} {line.text}" for line in self.lines[-count:])

    def kill(self) -> None:
        """Kill QEMU's whole process group (idempotent)."""
        if self._proc is not None and self._proc.poll() is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.kill()
        if self._reader is not None:
            self._reader.join(10)
        _LIVE.discard(self)

    def __enter__(self) -> QemuRun:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _kill_all() -> None:
    for run in list(_LIVE):
        run.kill()
