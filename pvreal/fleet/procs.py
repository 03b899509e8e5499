"""The fleet's processes: device daemons (each started inside its own netns), the Hub relay,
and the Hub when the fleet runs it. Every process gets its own session, so a Ctrl-C in the
terminal reaches only `fleet up`, which then stops them in order."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pvreal
from pvreal.fleet.net import enter_netns, in_netns

# the same code as this process, whatever the caller's working folder
CODE_ROOT = str(Path(pvreal.__file__).resolve().parent.parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": CODE_ROOT + (os.pathsep + path if path else "")}


def spawn(argv: list[str], log: Path, netns_name: str | None = None, cwd: str = CODE_ROOT) -> int:
    """Start `argv` in a session of its own, output appended to `log`, inside `netns_name`."""

    def enter() -> None:  # in the child, before exec: one thread, so setns moves the process
        if netns_name:
            enter_netns(netns_name)

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=_env(), cwd=cwd, start_new_session=True,
                                preexec_fn=enter if netns_name else None)  # fmt: skip
    return proc.pid


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def alive(pid: int | None, marker: str) -> bool:
    """`pid` runs and is ours (its command line holds `marker`: pids are reused)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and exited
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # an empty command line: the process is between fork and exec, where it cannot be told apart
    return stat.rpartition(")")[2].split()[0] != "Z" and (marker in cmdline or not cmdline.strip())


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(procs: Iterable[tuple[int, str]], grace: float) -> None:
    """SIGTERM every (pid, marker) still ours, SIGKILL what remains after `grace` seconds."""
    left = [(p, m) for p, m in procs if alive(p, m)]
    for pid, _ in left:
        signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [(p, m) for p, m in left if alive(p, m)]
    kill(left)


def kill(procs: Iterable[tuple[int, str]]) -> None:
    left = [(p, m) for p, m in procs if alive(p, m)]
    for pid, _ in left:
        signal_pid(pid, signal.SIGKILL)
    while left:
        time.sleep(0.02)
        left = [(p, m) for p, m in left if alive(p, m)]


def runc_kill_all(runc_root: Path) -> list[str]:
    """SIGKILL and delete every container under a runc root (a device's, after a power cut)."""
    if not runc_root.is_dir():
        return []
    listed = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    ids = listed.stdout.split()
    for cid in ids:
        subprocess.run(["runc", "--root", str(runc_root), "kill", cid, "KILL"],
                       capture_output=True, check=False)  # fmt: skip
    for cid in ids:
        subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", cid],
                       capture_output=True, check=False)  # fmt: skip
    return ids


def wait_port(host: str, port: int, timeout: float, netns_name: str | None = None,
              pid: tuple[int, str] | None = None) -> bool:  # fmt: skip
    """True once a TCP connect to host:port succeeds (from inside `netns_name` if given);
    False after `timeout` or as soon as the process `pid` (pid, marker) that should listen died."""

    def attempt() -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if in_netns(netns_name, attempt) if netns_name else attempt():
            return True
        if pid is not None and not alive(*pid):
            return False
        time.sleep(0.1)
    return False


def daemon_takes_hub() -> bool:
    """Whether `pvreal device run` has remote mode (`--hub URL --token T`, issue 17 point 4)."""
    out = subprocess.run(python_argv("-m", "pvreal.device", "run", "--help"), env=_env(),
                         cwd=CODE_ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    return "--hub" in out.stdout


def remote_args(hub_url: str, token: str) -> list[str]:
    """The one place that knows the daemon's remote-mode flags. `--token=T` in one word: a token
    may start with "-" (one in 64 of the Hub's do), which argparse would take for an option,
    and every device of the fleet would exit at once ("expected one argument")."""
    return ["--hub", hub_url, f"--token={token}"]


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, RSS in KiB, CPU ticks used), for every process."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # after the name: state ppid ... utime(12) stime(13) ... rss(22), counted from state
        table[int(entry)] = (int(fields[1]), int(fields[21]) * page_kb,
                             int(fields[11]) + int(fields[12]))  # fmt: skip
    return table


def usage(roots: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per key, the RSS (MiB) and CPU time (s) of the listed processes and all their
    descendants: a device is its daemon plus its containers (runc makes them no children of
    the daemon)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for key, pids in roots.items():
        seen: set[int] = set()
        todo = [p for p in pids if p in table]
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo += children.get(pid, [])
        out[key] = {"rss_mib": round(sum(table[p][1] for p in seen) / 1024, 1),
                    "cpu_s": round(sum(table[p][2] for p in seen) / ticks, 2),
                    "processes": len(seen)}  # fmt: skip
    return out
