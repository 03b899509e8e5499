"""README.md's device section runs as written (root, runc, busybox, mksquashfs).

The ```console block that follows the marker comment in "A real device" is parsed: a line
starting with `# ` is a command (a root shell's prompt), every other line is output the command
must print (a line ending in `...` matches any line that starts with the part before it). Each
command runs with `bash -c`, in an empty temporary folder, with the `pvreal` of this checkout
first on PATH, and must exit 0.

What is swapped, and why (nothing else is touched):
- `/var/lib/pvtwin` (the storage) and `/run/pvtwin.sock` (the socket) become paths in the temporary
  folder, in commands and expected output alike, so the test never touches the machine's own
  folders and can run beside other devices;
- the command ending in ` &` is started in the background by the test (not by a shell that would
  exit at once), and `kill %1` terminates that background process: it must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from devicekit import need_device

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARKER = "<!-- tests/test_readme_device.py runs this block as written"
SWAPS = {"/var/lib/pvtwin": "storage", "/run/pvtwin.sock": "pv-ctrl.sock"}


def readme_device_steps() -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)] of the marked block of README's device section."""
    text = README.read_text()
    section = text[text.index("## A real device"):]
    section = section[: section.index("\n## ", 1)]
    assert MARKER in section, "the device section lost its tested block"
    block = re.search(r"```console\n(.*?)```", section[section.index(MARKER):], re.S)
    assert block is not None
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("# "):
            steps.append((line[2:], []))
        elif line.strip():
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return steps


def _swap(text: str, tmp: Path) -> str:
    for real, temporary in SWAPS.items():
        text = text.replace(real, str(tmp / temporary))
    return text


def _printed(expected: str, output: str) -> bool:
    lines = output.splitlines()
    if expected.endswith("..."):
        return any(line.startswith(expected[:-3]) for line in lines)
    return expected in lines


def test_readme_steps_parse_into_the_documented_flow():
    steps = readme_device_steps()
    commands = [command for command, _ in steps]
    assert any(c.startswith("pvreal rev add-bsp") for c in commands)
    assert any(re.match(r"pvreal ctl .* put rev1\.json locals/web-2", c) for c in commands)
    assert sum(c.rstrip().endswith("&") for c in commands) == 1
    assert commands[-1].split("#")[0].strip() == "kill %1"
    # the wait expects the status the engine really ends on (web is in a reboot group: DONE)
    waits = [(c, out) for c, out in steps if " wait locals/" in c]
    assert waits and all("--until DONE" in c and out[0].endswith(": DONE Update finished, "
                                                                 "revision set as rollback point")
                         for c, out in waits)


def test_readme_device_section_runs_as_written(tmp_path):
    need_device()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    work = tmp_path / "work"
    work.mkdir()
    daemon: subprocess.Popen[bytes] | None = None
    log = tmp_path / "daemon.log"
    try:
        for command, expected in readme_device_steps():
            command, expected = _swap(command, tmp_path), [_swap(e, tmp_path) for e in expected]
            bare = command.split(" #")[0].strip()
            if bare.endswith("&"):
                with open(log, "wb") as out:
                    daemon = subprocess.Popen(["bash", "-c", "exec " + bare[:-1]], cwd=work,
                                              env=env, stdout=out, stderr=out,
                                              start_new_session=True)
                continue
            if bare == "kill %1":
                assert daemon is not None
                daemon.send_signal(signal.SIGTERM)
                assert daemon.wait(120) == 0, log.read_text()
                daemon = None
                continue
            done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=300, check=False)
            where = f"README: {command}\n{done.stdout}{done.stderr}"
            if log.exists():
                where += "\n--- daemon ---\n" + log.read_text()[-3000:]
            assert done.returncode == 0, where
            for line in expected:
                assert _printed(line, done.stdout), f"missing {line!r}\n{where}"
        assert daemon is None, "the README starts a daemon it never stops"
        assert "boot 2: locals/web-2" in log.read_text()  # the update really rebooted
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
