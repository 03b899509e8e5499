"""`pvsim validate` and `pvsim calibrate` (docs/validation.md): the comparison's arithmetic and
verdict, calibration into a fragment pvsim loads, pvsim's side with a scheduled power cut, and —
as root — the shipped validation scenarios on a real fleet of 4 devices, each agreeing with pvsim,
with nothing left behind (also after Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from devicekit import need_device

from pvreal.fleet import net
from pvsim.cli import main as pvsim_main
from pvsim.scenario import ScenarioError, load_scenario
from pvsim.validate import calibrate, compare, realrun, run, simrun, timeline
from shared.errors import PvError

# Every test that brings up a real fleet, here and in tests/test_fleet.py, runs in one xdist worker:
# the leftover checks look at every fleet namespace and validate folder on the machine.
FLEET_GROUP = pytest.mark.xdist_group("fleet")

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((REPO / "scenarios" / "validation").glob("*.toml"))
CI_DEVICES = 4


def _slot(release, position, statuses, device="d01"):
    reports = [[float(k), s, m] for k, (s, m) in enumerate(statuses)]
    ok = statuses[-1][0] in ("DONE", "UPDATED")
    return {"release": release, "position": position, "device": device, "reports": reports,
            "outcome": "succeeded" if ok else "failed", "outcome_t": float(len(statuses))}  # fmt: skip


def _doc(world, slots, at_s=0.0):
    doc = timeline.empty(world, "t", len(slots), 1.0)
    ok = sum(s["outcome"] == "succeeded" for s in slots)
    doc["releases"] = [{"name": "r1", "at_s": at_s, "changed_mb": 1.0, "state": "completed",
                        "admitted": len(slots), "succeeded": ok, "failed": len(slots) - ok,
                        "timed_out": 0}]  # fmt: skip
    doc["slots"] = slots
    return doc


GOOD = [("QUEUED", ""), ("DOWNLOADING", ""), ("DOWNLOADING", "60 %"), ("INPROGRESS", ""),
        ("TESTING", ""), ("UPDATED", "Update finished")]  # fmt: skip
BAD = [("QUEUED", ""), ("INPROGRESS", ""), ("ERROR", "Status goal not reached")]


def test_a_status_sequence_folds_repeats_and_keeps_the_final_message():
    slot = _slot("r1", 0, GOOD)
    assert timeline.statuses(slot) == ["QUEUED", "DOWNLOADING", "INPROGRESS", "TESTING",
                                       "UPDATED: Update finished"]  # fmt: skip


def test_ks_statistic_and_quantiles_are_the_textbook_ones():
    assert compare.ks_statistic([1, 2, 3], [2, 3, 4]) == pytest.approx(1 / 3)
    assert compare.ks_statistic([1, 2], [5, 6]) == 1.0
    assert compare.ks_statistic([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert compare.quantile([1, 2, 3, 4], 0.5) == 2.5
    assert compare.quantile([10, 20, 30, 40, 50], 0.9) == 46.0


def test_the_worlds_agree_only_with_equal_counts_and_95_percent_identical_sequences():
    real = _doc("real", [_slot("r1", k, GOOD) for k in range(20)])
    same = compare.compare(real, _doc("sim", [_slot("r1", k, GOOD) for k in range(20)]))
    assert same["agree"] and same["sequences_identical"] == 20
    assert same["time_to_commit"]["ks"] == 0.0 and same["time_to_commit"]["real_median_s"] == 5.0
    # one of 20 slots differs in its path (a DOWNLOADING skipped) but ends the same: 95 %, agree
    odd = [_slot("r1", 0, [s for s in GOOD if s[0] != "DOWNLOADING"])]
    one_off = compare.compare(real, _doc("sim", odd + [_slot("r1", k, GOOD) for k in range(1, 20)]))
    assert one_off["sequences_identical"] == 19 and one_off["agree"]
    two_off = compare.compare(real, _doc("sim", odd * 2 + [_slot("r1", k, GOOD) for k in range(2, 20)]))
    assert not two_off["agree"]  # 18 of 20 < 95 %
    # one device failing instead: the counts differ, whatever the sequences
    failing = compare.compare(real, _doc("sim", [_slot("r1", 0, BAD)] + [_slot("r1", k, GOOD) for k in range(1, 20)]))
    assert failing["real"]["r1"]["failed"] == 0 and failing["sim"]["r1"]["failed"] == 1
    assert not failing["agree"] and failing["sequences_identical"] == 19


def _real_timeline(tmp_path: Path) -> Path:
    doc = _doc("real", [_slot("r1", 0, GOOD)])
    doc["observations"] = {"boot_s": [1.0, 2.0, 4.0], "container_start_s": [0.2, 0.2],
                           "ready_s": [], "transfers": [[2.0, 0.5], [2.0, 1.0]]}  # fmt: skip
    path = tmp_path / "real-timeline.json"
    timeline.save(doc, path)
    return path


def test_calibrate_writes_a_fragment_a_scenario_includes(tmp_path, capsys):
    path = _real_timeline(tmp_path)
    fragment = tmp_path / "calibrated.toml"
    assert pvsim_main(["calibrate", str(path), "-o", str(fragment)]) == 0
    scenario = tmp_path / "s.toml"
    scenario.write_text('include = ["calibrated.toml"]\n[[release]]\nname = "r1"\n[device]\nready_s = 0.5\n')
    loaded = load_scenario(scenario)
    boot = loaded.device.boot_s
    assert (boot.kind, boot.a) == ("lognormal", 2.0)  # median of 1, 2, 4
    assert boot.b == pytest.approx(0.5660, abs=1e-3)  # population sd of ln 1, ln 2, ln 4
    assert loaded.device.storage_write_mb_s.a == pytest.approx(3.0)  # median of 4 and 2 MB/s
    assert loaded.device.container_start_s.b == calibrate.SIGMA_FLOOR  # one repeated value
    assert loaded.device.ready_s.a == 0.5  # nothing observed: the scenario's own key stays
    assert "\nready_s" not in fragment.read_text()


def test_bad_input_is_one_line_naming_the_file_or_option(tmp_path, capsys):
    broken = tmp_path / "t.json"
    broken.write_text('{"format": "something else"}')
    assert pvsim_main(["calibrate", str(broken), "-o", str(tmp_path / "f.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert str(broken) in err and "format" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "f.toml").exists()
    assert pvsim_main(["validate", str(SCENARIOS[0]), "--real-devices", "0"]) == 1
    assert "--real-devices" in capsys.readouterr().err
    bad = tmp_path / "v.toml"
    bad.write_text('[[release]]\nname = "r"\n[validation]\ntime_scal = 0.5\n')
    with pytest.raises(ScenarioError, match="validation.time_scal"):
        load_scenario(bad)
    bad.write_text('include = "missing.toml"\n[[release]]\nname = "r"\n')
    with pytest.raises(ScenarioError, match="include"):
        load_scenario(bad)


def test_pvsims_side_cuts_power_on_the_scheduled_slot_only():
    """In pvsim the first-admitted device of bsp-power-cuts loses power in its test window and
    the engine rolls it back; the devices without a cut commit."""
    scn = load_scenario(REPO / "scenarios" / "validation" / "bsp-power-cuts.toml")
    doc = simrun.run_sim(scn, CI_DEVICES, [0.01], {"boot_s": 1.5, "container_start_s": 0.2, "ready_s": 0.01})
    by_slot = {s["position"]: timeline.statuses(s) for s in doc["slots"]}
    assert by_slot[0][-1] == "ERROR: Unexpected rollback" and by_slot[1][-1] == "ERROR: Unexpected rollback"
    assert all(seq[-1].startswith("DONE") for k, seq in by_slot.items() if k >= 2)
    assert doc["releases"][0]["failed"] == 2


def test_a_failed_real_run_keeps_its_logs_with_keep_and_says_how_without(tmp_path, monkeypatch):
    """The real fleet failing (here: a device dying while it boots) names a log in the run's
    temporary folder, which is removed: with --keep the logs stay in DIR/logs and the error says
    so; without it, the error says how to keep them. Nothing is left in the temporary parent."""
    scn = load_scenario(SCENARIOS[0])

    def device_dies_booting(_scn, _devices, work, _display):
        log = work / "real" / "fleet" / "devices" / "d01" / "daemon.log"
        log.parent.mkdir(parents=True)
        log.write_text("boot 1: the root container did not start\n")
        (work / "real.log").write_text("bringing up 4 real devices\n")
        raise PvError(f"pvreal fleet: device d01 exited during boot; see {log}")

    monkeypatch.setattr(realrun, "run_real", device_dies_booting)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(run, "TMP_PARENT", tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    kept = tmp_path / "kept"
    with pytest.raises(PvError, match=f"exited during boot.*logs are kept in {kept / 'logs'}"):
        run.validate(scn, 4, None, kept)
    assert (kept / "logs" / "d01.log").read_text() == "boot 1: the root container did not start\n"
    assert (kept / "real.log").is_file() and not (kept / "real-timeline.json").exists()
    with pytest.raises(PvError, match="run with --keep DIR to keep the logs"):
        run.validate(scn, 4, None)
    assert not list((tmp_path / "tmp").iterdir())


def _log_tails(logs: Path, tail: int = 40) -> str:
    """For a failure message: the end of every log the failed real run left (pvsim validate
    --keep keeps them also when the real fleet fails, e.g. a device that died while booting)."""
    lines = []
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        lines += [f"\n-- {log.name}", *log.read_text(errors="replace").splitlines()[-tail:]]
    return "\n".join(lines)


def _why_the_real_side_differed(doc: dict, kept: Path, tail: int = 40) -> str:
    """For a failure message: each differing real device's reports, with their times, and the end
    of its daemon's log (a real device once took a release 44 s late: docs/validation.md)."""
    if not (kept / "real-timeline.json").is_file():
        return ""
    real = json.loads((kept / "real-timeline.json").read_text())
    times = {(s["release"], s["position"]): s["reports"] for s in real["slots"]}
    lines = []
    for slot in doc["sequences"]:
        if slot["identical"]:
            continue
        device = slot["real_device"]
        lines.append(f"\n-- real {device}, {slot['release']} #{slot['position']}: {times.get((slot['release'], slot['position']))}")
        log = kept / "logs" / f"{device}.log"
        if log.is_file():
            lines.extend(log.read_text(errors="replace").splitlines()[-tail:])
    return "\n".join(lines)


@FLEET_GROUP
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_each_validation_scenario_agrees_on_a_real_fleet(scenario, tmp_path):
    need_device()
    out = tmp_path / "out.json"
    before = set(os.listdir(net.NETNS_DIR)) if os.path.isdir(net.NETNS_DIR) else set()
    kept = tmp_path / "kept"
    argv = ["validate", str(scenario), "--real-devices", str(CI_DEVICES), "--json", str(out), "--keep", str(kept)]
    rc = pvsim_main([*argv, "--quiet"])
    assert out.is_file(), f"pvsim validate exited {rc} without a comparison" + _log_tails(kept / "logs")
    doc = json.loads(out.read_text())
    assert set(doc) >= {"devices", "real", "sim", "sequences_identical", "time_to_commit", "agree"}
    assert set(doc["time_to_commit"]) >= {"real_median_s", "sim_median_s", "ks"}
    assert doc["devices"] == CI_DEVICES
    assert doc["agree"] and rc == 0, json.dumps(doc, indent=1) + _why_the_real_side_differed(doc, kept)
    after = set(os.listdir(net.NETNS_DIR)) if os.path.isdir(net.NETNS_DIR) else set()
    assert not {n for n in after - before if n.startswith("pf")}  # the fleet's namespaces are gone
    assert not list(Path("/var/tmp").glob("pvsim-validate-*/real/fleet/fleet.json"))


@FLEET_GROUP
def test_ctrl_c_during_the_real_run_removes_everything(tmp_path):
    need_device()
    argv = [sys.executable, "-m", "pvsim", "validate", str(SCENARIOS[0]), "--real-devices", "2", "--quiet"]
    existing = set(Path("/var/tmp").glob("pvsim-validate-*"))
    # SIGINT as a terminal delivers it (a test run started in the background inherits it ignored)
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))  # fmt: skip
    try:
        fleet_json = None
        for _ in range(1200):  # until the fleet is up
            found = [p for p in Path("/var/tmp").glob("pvsim-validate-*") if p not in existing]
            if found and (found[0] / "real" / "fleet" / "fleet.json").exists():
                fleet_json = found[0] / "real" / "fleet" / "fleet.json"
                doc = json.loads(fleet_json.read_text())
                if doc["phase"] == "up":
                    break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert fleet_json is not None
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out
    assert net.leftovers(doc["id"]) == []
    assert not fleet_json.parent.parent.parent.exists()  # the temporary folder is gone
    assert [d["run_dir"] for d in doc["devices"] if Path(d["run_dir"]).exists()] == []
    pids = [doc["relay"]["pid"], doc["hub"]["pid"]] + [d["pid"] for d in doc["devices"]]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or str(fleet_json.parent) not in cmdline.read_bytes().decode(errors="replace")


README_MARKER = "<!-- tests/test_validate.py runs this block as written (with 4 devices, paths swapped) -->"
# the README's 16 devices become 4 here (2 for its `pvsim validate`), to keep CI affordable
README_SWAPS = {
    "--devices 16": "--devices 4", "--real-devices 16": "--real-devices 2",
    "4 of 16 devices": "1 of 4 devices", ": 16 devices up": ": 4 devices up",
    "fleet 16  admitted 16  succeeded 16": "fleet 4  admitted 4  succeeded 4",
}  # fmt: skip


def _readme_steps() -> list[tuple[str, list[str]]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index(README_MARKER):]
    start = section.index("```console\n") + len("```console\n")
    block = section[start:section.index("\n```", start)]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("# "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    assert len(steps) >= 8, "the README's rollout block lost its commands"
    return steps


def _swap(text: str, storage: Path, port: str) -> str:
    for old, new in README_SWAPS.items():
        text = text.replace(old, new)
    return text.replace("/var/lib/pvfleet", str(storage)).replace("12365", port)


def _printed(expected: str, output: str) -> bool:
    import re

    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line.rstrip()) for line in output.splitlines())


@FLEET_GROUP
def test_the_readme_rollout_and_validation_block_runs_as_written(tmp_path):
    need_device()
    from devicekit import Revisions

    from pvreal.fleet import lifecycle, procs

    # the device section's rev0.json and rev1.json: one `web` container (goal STARTED), changed
    revs = Revisions(tmp_path, group_timeout=10)
    revs.state("rev0", {"web": {"tag": "w1"}})
    revs.state("rev1", {"web": {"tag": "w2"}})
    os.symlink(REPO / "scenarios", tmp_path / "scenarios")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    storage = tmp_path / "fleetdir"
    background = None
    try:
        for command, expected in _readme_steps():
            command = _swap(command.split("   #")[0], storage, port)
            if command.endswith("&"):
                background = subprocess.Popen(["bash", "-c", command.rstrip("& ")], cwd=tmp_path,
                                              env=env, start_new_session=True)  # fmt: skip
                assert procs.wait_port("127.0.0.1", int(port), 30)
                continue
            if command == "kill %1":
                assert background is not None
                os.killpg(background.pid, signal.SIGTERM)
                background.wait(30)
                background = None
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=400)  # fmt: skip
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            for line in expected:
                assert _printed(_swap(line, storage, port), done.stdout), (command, line, done.stdout)
    finally:
        lifecycle.down(storage)
        if background is not None:
            os.killpg(background.pid, signal.SIGKILL)
            background.wait()
    assert net.leftovers(lifecycle.fleet_id(storage)) == []
