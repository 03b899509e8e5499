"""A real fleet on this machine (root, runc): `pvreal fleet up` wires devices into namespaces of
its own, each reaches the Hub through the relay and nothing else, faults act on one device only,
and `down` leaves nothing behind (docs/fleet.md).
Sixteen devices, the size docs/fleet.md measures, come up in about 8 s here, so that check runs
every time too."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from devicekit import Revisions, need_device

from pvreal.cli import main as pvreal_main
from pvreal.fleet import faults, lifecycle, net, procs
from pvreal.fleet.state import load
from shared.errors import PvError

# One xdist worker for every real fleet (tests/test_validate.py says why).
pytestmark = pytest.mark.xdist_group("fleet")

REPO = Path(__file__).resolve().parent.parent
README_MARKER = "<!-- tests/test_fleet.py runs this block as written -->"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hub_answers(
    netns_name: str, host: str, port: int, timeout: float = 20.0, tries: int = 3
) -> bool:
    """An HTTP request from inside `netns_name` gets the Hub's own answer (a long timeout: a
    loaded machine is slow, and a cut link fails at once or within `timeout`). Up to `tries`
    requests a second apart: a path just brought up may refuse the very first one."""

    def ask() -> bool:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/operator/status")
            return conn.getresponse().status == 401  # the Hub itself: no operator token
        except OSError:
            return False
        finally:
            conn.close()

    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        if net.in_netns(netns_name, ask):
            return True
    return False


def _connects(netns_name: str, host: str, port: int) -> str:
    def attempt() -> str:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return "connected"
        except OSError as exc:
            return type(exc).__name__

    return net.in_netns(netns_name, attempt)


def _spec(tmp_path: Path, devices: int) -> lifecycle.FleetSpec:
    revs = Revisions(tmp_path / "revs", group_timeout=3)
    state = revs.state("f0", {"app1": {"tag": "a1"}})
    port = _free_port()
    return lifecycle.FleetSpec(storage=tmp_path / "fleet", hub=f"http://127.0.0.1:{port}",
                               devices=devices, state=state, objects=revs.objects,
                               hub_db=tmp_path / "hub.sqlite",
                               config={"PV_UPDATER_COMMIT_DELAY": "0.5"})  # fmt: skip


def _everything_of(doc: dict) -> dict[str, list]:
    """What of this fleet still exists: namespaces, processes, runc containers, run dirs."""
    prefixes = [doc["id"]] + [d["prefix"] for d in doc["devices"]]
    netns_left = [n for n in os.listdir(net.NETNS_DIR) if n.startswith(tuple(prefixes))]
    pids = [(d["pid"], d["storage"]) for d in doc["devices"]]
    pids += [(doc["relay"]["pid"], lifecycle.RELAY_MARKER), (doc["hub"]["pid"], doc["hub"]["db"])]
    running = [p for p, m in pids if procs.alive(p, m)]
    containers = []
    for d in doc["devices"]:
        root = Path(d["run_dir"]) / "containers" / "runc"
        if root.is_dir():
            containers += subprocess.run(["runc", "--root", str(root), "list", "-q"],
                                         capture_output=True, text=True).stdout.split()  # fmt: skip
    run_dirs = [d["run_dir"] for d in doc["devices"] if Path(d["run_dir"]).exists()]
    return {"netns": netns_left, "pids": running, "containers": containers, "run_dirs": run_dirs}


def test_fleet_up_isolation_faults_and_down(tmp_path, capsys):
    need_device()
    spec = _spec(tmp_path, 3)
    doc = lifecycle.up(spec)
    fid = doc["id"]
    try:
        gateway, port = doc["hub"]["device_url"].removeprefix("http://").split(":")
        port_n = int(port)
        assert [d["name"] for d in doc["devices"]] == ["d01", "d02", "d03"]
        for dev in doc["devices"]:
            ns = dev["netns"]
            assert _hub_answers(ns, gateway, port_n), dev
            # nothing else: not the root namespace's loopback Hub, not the outside, not a peer
            assert _connects(ns, "127.0.0.1", port_n) == "ConnectionRefusedError"
            assert _connects(ns, "192.0.2.1", 80) == "OSError"  # ENETUNREACH: no default route
            peer = next(d for d in doc["devices"] if d is not dev)["address"].split("/")[0]
            assert _connects(ns, peer, port_n) != "connected"

        # status: every device alive in its netns, on its factory revision
        capsys.readouterr()
        assert pvreal_main(["fleet", "status", "--storage", str(spec.storage), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert [(d["alive"], d["netns_present"], d["revision"]) for d in shown["devices"]] == [
            (True, True, "0")] * 3

        # link-down cuts one device's Hub requests; the others still get through
        faults.inject(spec.storage, "link-down", "d01")
        assert not _hub_answers(f"{fid}-d01", gateway, port_n, timeout=3, tries=1)
        assert _hub_answers(f"{fid}-d02", gateway, port_n)
        faults.inject(spec.storage, "link-up", "d01")
        assert _hub_answers(f"{fid}-d01", gateway, port_n)

        # loss and latency applied, read back, removed
        faults.inject(spec.storage, "loss", "d02", "10%")
        faults.inject(spec.storage, "latency", "d02", "50ms")
        shaped = load(spec.storage)["devices"][1]["shaping"]
        assert shaped["loss_pct"] == 10 and shaped["delay_ms"] == 50
        if shaped["by"] == "netem":
            qdiscs = net.read_netem(lifecycle.plan_of(doc), "d02")
            assert len(qdiscs) == 2 and all(q["loss"] for q in qdiscs)
        else:  # this kernel has no netem: the relay's table holds it
            table = json.loads((spec.storage / "shaping.json").read_text())
            assert table == {"10.218.0.3": {"delay_ms": 50.0, "loss_pct": 10.0}}
        assert _hub_answers(f"{fid}-d02", gateway, port_n)  # slower, still there
        faults.inject(spec.storage, "loss", "d02", "0")
        faults.inject(spec.storage, "latency", "d02", "0")
        assert net.read_netem(lifecycle.plan_of(doc), "d02") == []
        if shaped["by"] == "relay":
            assert json.loads((spec.storage / "shaping.json").read_text()) == {}

        # a crash and a power cut: the device boots again through its latch
        before = {d["name"]: d["pid"] for d in load(spec.storage)["devices"]}
        faults.inject(spec.storage, "kill", "d03")
        assert not procs.alive(before["d03"], "pvreal.device")
        faults.inject(spec.storage, "power-cut", "d02")
        for name in ("d02", "d03"):
            faults.wait_booted(spec.storage, name)
        after = {d["name"]: d for d in load(spec.storage)["devices"]}
        for name in ("d02", "d03"):
            assert after[name]["pid"] != before[name] and after[name]["boots"] == 2
            assert lifecycle.device_status(after[name])["running"] == "0"
            assert _hub_answers(after[name]["netns"], gateway, port_n)

        # the Hub restarts; devices reach it again
        faults.inject(spec.storage, "hub-restart")
        assert _hub_answers(f"{fid}-d01", gateway, port_n)
        doc = load(spec.storage)
    finally:
        lifecycle.down(spec.storage)
    assert _everything_of(doc) == {"netns": [], "pids": [], "containers": [], "run_dirs": []}
    assert not (spec.storage / "fleet.json").exists()


def test_a_device_that_cannot_boot_takes_the_fleet_down_cleanly(tmp_path):
    need_device()
    spec = _spec(tmp_path, 2)
    spec.state.write_text("{}")  # no factory revision can be installed from this
    with pytest.raises(PvError):
        lifecycle.up(spec)
    assert not (spec.storage / "fleet.json").exists()
    assert net.leftovers(lifecycle.fleet_id(spec.storage)) == []


def test_sixteen_devices_each_reach_the_hub(tmp_path):
    need_device()
    spec = _spec(tmp_path, 16)
    doc = lifecycle.up(spec)
    try:
        gateway, port = doc["hub"]["device_url"].removeprefix("http://").split(":")
        for dev in doc["devices"]:
            assert lifecycle.device_status(dev)["running"] == "0"
            assert _hub_answers(dev["netns"], gateway, int(port)), dev["name"]
        assert len({d["address"] for d in doc["devices"]}) == 16
    finally:
        lifecycle.down(spec.storage)
    assert _everything_of(doc) == {"netns": [], "pids": [], "containers": [], "run_dirs": []}


def _readme_fleet_steps() -> list[tuple[str, list[str]]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### A real fleet"):]
    assert README_MARKER in section, "the fleet section lost its tested block"
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block is not None
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("# "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def _printed(expected: str, output: str) -> bool:
    """A printed line matches `expected`, where `...` stands for anything."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line) for line in output.splitlines())


def test_the_readme_fleet_block_runs_as_written(tmp_path):
    """The README's fleet commands, with /var/lib/pvfleet and the Hub's port swapped for a
    temporary folder and a free port; `&` starts the Hub in the background, `kill %1` ends it."""
    need_device()
    spec = _spec(tmp_path, 1)  # builds a busybox factory revision
    shutil.copy(spec.state, tmp_path / "rev0.json")
    shutil.copytree(spec.objects, tmp_path / "objects")
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    storage = tmp_path / "fleetdir"
    background = None
    try:
        for command, expected in _readme_fleet_steps():
            command = command.replace("/var/lib/pvfleet", str(storage)).replace("12365", port)
            if command.endswith("&"):
                background = subprocess.Popen(["bash", "-c", command.rstrip("& ")], cwd=tmp_path,
                                              env=env, start_new_session=True)  # fmt: skip
                assert procs.wait_port("127.0.0.1", int(port), 30)
                continue
            if command == "kill %1":
                assert background is not None
                os.killpg(background.pid, signal.SIGTERM)
                assert background.wait(30) in (0, -signal.SIGTERM, 143)
                background = None
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            for line in expected:
                assert _printed(line, done.stdout), (command, line, done.stdout)
    finally:
        lifecycle.down(storage)
        if background is not None:
            os.killpg(background.pid, signal.SIGKILL)
            background.wait()
    assert net.leftovers(lifecycle.fleet_id(storage)) == []


def test_ctrl_c_on_a_foreground_fleet_up_removes_everything(tmp_path):
    need_device()
    spec = _spec(tmp_path, 2)
    argv = [sys.executable, "-m", "pvreal", "fleet", "up", "--storage", str(spec.storage),
            "--hub", spec.hub, "--hub-db", str(spec.hub_db), "--devices", "2",
            "--state", str(spec.state), "--objects", str(spec.objects)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        doc = None
        for _ in range(600):
            if (spec.storage / "fleet.json").exists():
                doc = load(spec.storage)
                if doc["phase"] == "up":
                    break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert doc is not None and doc["phase"] == "up" and doc["supervisor_pid"] == proc.pid
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            lifecycle.down(spec.storage)
    assert proc.returncode == 0, out
    assert "fleet: down" in out
    assert _everything_of(doc) == {"netns": [], "pids": [], "containers": [], "run_dirs": []}
    assert not (spec.storage / "fleet.json").exists()
