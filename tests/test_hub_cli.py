"""`pvreal hub`: the operator commands against a running Hub, and the README's Hub commands run
as written (as processes, in a folder holding rev1.json and objects/)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hubkit import device, hub_files, write_release

from pvreal.cli import main
from pvreal.hub.server import running

REPO = Path(__file__).resolve().parent.parent


def test_operator_round_trip(tmp_path, capsys):
    files = hub_files(tmp_path)
    state, objects = write_release(tmp_path, "v1")
    db = ["--db", str(files.database)]
    with running(files) as url:
        d1, d2 = device(url, files, "d1"), device(url, files, "d2")
        assert main(["hub", "release", str(state), "--name", "web-1.1", *db]) == 0
        assert "web-1.1: running, 2 of 2 devices admitted (9 objects sent)" in capsys.readouterr().out
        d1.put_progress(1, {"status": "DONE", "status-msg": "ok", "progress": 100})
        d2.put_progress(1, {"status": "TESTING", "status-msg": "", "progress": 75})
        assert main(["hub", "pause", "web-1.1", *db]) == 0
        assert capsys.readouterr().out == "web-1.1: paused\n"
        assert main(["hub", "resume", "web-1.1", *db, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "running"
        assert main(["hub", "status", *db, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        [rel] = doc["releases"]
        assert (rel["fleet"], rel["admitted"], rel["succeeded"], rel["in_flight"]) == (2, 2, 1, 1)
        assert {(d["nick"], d["revision"], d["status"]) for d in doc["devices"]} == {
            ("d1", 1, "DONE"), ("d2", 0, "TESTING")}
        assert main(["hub", "status", *db]) == 0
        text = capsys.readouterr().out
        assert re.search(r"web-1.1 +running +all-at-once +fleet 2  admitted 2  succeeded 1", text)
        # mistakes: exit 1 with a line that says what is wrong
        assert main(["hub", "release", str(state), "--name", "web-1.2", "--set", "soak_s=5", *db]) == 1
        assert "has no option 'soak_s'" in capsys.readouterr().err
        assert main(["hub", "release", str(state), "--name", "web-1.1", *db]) == 1
        assert "409 release web-1.1 exists" in capsys.readouterr().err
        assert main(["hub", "abort", "web-1.1", *db, "--operator-token", "wrong"]) == 1
        assert "401" in capsys.readouterr().err
    assert main(["hub", "status", *db]) == 1  # the Hub stopped
    assert "not reachable" in capsys.readouterr().err
    assert main(["hub", "status", "--db", str(tmp_path / "other.sqlite")]) == 1
    assert "is `pvreal hub serve --db" in capsys.readouterr().err


def test_serve_refuses_a_non_loopback_address(tmp_path, capsys):
    assert main(["hub", "serve", "--db", str(tmp_path / "hub.sqlite"), "--listen", "0.0.0.0:1"]) == 1
    assert "not a loopback address" in capsys.readouterr().err
    assert not (tmp_path / "hub.sqlite").exists()


def typed_commands(text: str, after: str) -> list[str]:
    """The `$ ` commands of the first console block after `after`, comments dropped."""
    block = re.search(r"```console\n(.*?)```", text.split(after, 1)[1], re.S)
    assert block, f"no console block after {after!r}"
    return [line[2:].split("#", 1)[0].strip() for line in block[1].splitlines() if line.startswith("$ ")]


def readme_hub_commands() -> list[str]:
    return typed_commands((REPO / "README.md").read_text(), "### Hub")


def test_docs_hub_md_types_the_commands_the_readme_test_runs():
    """docs/hub.md's block is the README's, so running the README's runs it (tests/test_docs_commands.py)."""
    assert typed_commands((REPO / "docs" / "hub.md").read_text(), "# The Hub") == readme_hub_commands()


def run(words: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *words], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _sigint_as_from_a_terminal() -> None:
    """In the Hub's process before exec: SIGINT as a terminal delivers it. A test run started in
    the background (`make test &`, nohup) has SIGINT ignored, and an ignored signal stays ignored
    across exec, so the Hub would never see the Ctrl-C these tests send."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _start_hub(words: list[str], folder: Path) -> subprocess.Popen:
    """`python -m WORDS...` (a `pvreal hub serve`) in `folder`, its output piped, Ctrl-C deliverable."""
    return subprocess.Popen([sys.executable, "-m", *words], cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_from_a_terminal)  # fmt: skip


def _served_url(proc: subprocess.Popen, folder: Path) -> str:
    """The URL a `pvreal hub serve --db hub.sqlite` started in `folder` wrote once it listened."""
    url_file = folder / "hub.sqlite.url"
    for _ in range(300):
        if url_file.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert url_file.exists(), proc.communicate(timeout=10)
    return url_file.read_text().strip()


def test_the_readme_hub_commands_work_as_written(tmp_path):
    commands = readme_hub_commands()
    assert commands[0].startswith("pvreal hub serve") and commands[0].endswith("&")
    write_release(tmp_path, "v1")
    # the README's serve line, on a port the system picks so parallel tests never collide
    serve = shlex.split(commands[0].rstrip("&")) + ["--listen", "127.0.0.1:0"]
    proc = _start_hub(serve, tmp_path)
    try:
        url = _served_url(proc, tmp_path)
        files = hub_files(tmp_path)
        device(url, files, "d1")  # a device, so the rollout has a fleet
        outputs = []
        for command in commands[1:]:
            done = run(shlex.split(command), tmp_path)
            assert done.returncode == 0, (command, done.stderr)
            outputs.append(done.stdout)
        status = json.loads(outputs[-1])
        assert status["releases"][0]["name"] == "web-1.1" and len(status["devices"]) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # the Hub did not stop: its threads' stacks (faulthandler on SIGUSR1) say where
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert proc.returncode in (0, 130), f"the Hub did not stop on Ctrl-C within 30 s:\n{stderr}"


def test_ctrl_c_stops_the_hub_in_seconds_even_mid_request_and_sigusr1_shows_its_threads(tmp_path):
    """A client that sent half a request (its headers, part of its body) used to hold Ctrl-C for
    aiohttp's default 60 s: the Hub now waits SHUTDOWN_TIMEOUT_S for requests under way. And
    `kill -USR1` prints every thread's stack to stderr, to see why a Hub hangs."""
    import socket

    from pvreal.hub.server import SHUTDOWN_TIMEOUT_S

    proc = _start_hub(["pvreal", "hub", "serve", "--db", "hub.sqlite", "--listen", "127.0.0.1:0"], tmp_path)
    try:
        host, port = _served_url(proc, tmp_path).removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as half:
            half.sendall(b"POST /auth/login HTTP/1.1\r\nHost: hub\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.5)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S + 20)
            took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert proc.returncode in (0, 130) and SHUTDOWN_TIMEOUT_S - 1 < took < 15, (proc.returncode, took, stderr)
    assert "Current thread" in stderr or "Thread 0x" in stderr, stderr


@pytest.mark.parametrize("flag", ["--operator-token", "--device-token"])
def test_given_tokens_are_used_and_not_written(tmp_path, flag):
    from pvreal.hub.server import HubFiles

    files = HubFiles.prepare(tmp_path / "hub.sqlite", **{flag[2:].replace("-", "_"): "given-token"})
    kind = flag[2:].removesuffix("-token")
    assert getattr(files, f"{kind}_token") == "given-token"
    assert not (tmp_path / f"hub.sqlite.{kind}-token").exists()
    other = "device" if kind == "operator" else "operator"
    assert (tmp_path / f"hub.sqlite.{other}-token").stat().st_mode & 0o777 == 0o600
