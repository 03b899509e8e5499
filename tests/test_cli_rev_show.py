"""`pvreal rev show` and `pvreal rev diff`: output, exit codes, errors naming file and key."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pvreal import cli
from pvreal.cli import run
from pvreal.cli.rev import show as cli_rev_show
from pvreal.examples import example
from shared import canonical

REPO = Path(__file__).resolve().parent.parent


def rev(argv: list[str]) -> int:
    """Run only this module's verbs, so other families being written cannot interfere."""
    parser = argparse.ArgumentParser(prog="pvreal rev")
    cli_rev_show.register(parser.add_subparsers(dest="verb", required=True))
    return run(parser, argv)


def example_path(name: str) -> str:
    return str(example(name))


def write(tmp_path: Path, name: str, state: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(state))
    return str(path)


def rev0() -> dict:
    return json.loads(example("rev0.json").read_text())


# ---- show


def test_show_json_lists_containers_groups_objects(capsys):
    assert rev(["show", "--json", example_path("rev0.json")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["containers"]] == ["pv-avahi", "web"]
    web = doc["containers"][1]
    assert (web["group"], web["status_goal"], web["restart_policy"]) == (
        "app",
        "READY",
        "container",
    )
    assert web["auto_recovery"]["max_retries"] == 3
    assert web["storage"] == {"docker--var-www": "permanent", "lxc-overlay": "boot"}
    assert [(g["name"], g["timeout"]) for g in doc["groups"]] == [
        ("data", 30),
        ("root", 30),
        ("platform", 30),
        ("app", 60),
    ]
    assert doc["objects"] == {"entries": 9, "distinct": 9}
    assert doc["bsp"]["linux"] == "kernel.img"
    assert doc["signatures"] == []
    assert rev(["show", example_path("rev0.json")]) == 0
    out = capsys.readouterr().out
    assert "Signatures: none" in out and "on-failure ×3" in out


def test_show_table_of_conformance_state(capsys, conformance_dir):
    assert rev(["show", str(conformance_dir / "resources/initial_state.json")]) == 0
    out = capsys.readouterr().out
    for word in ("awconnect", "pv-avahi", "pvr-sdk", "dm-verity", "Groups", "_hostconfig/**"):
        assert word in out


def test_show_decodes_signature_globs(capsys, conformance_dir):
    path = conformance_dir / "resources/bsp_init_groups.json"
    assert rev(["show", "--json", str(path)]) == 0
    sigs = json.loads(capsys.readouterr().out)["signatures"]
    assert [s["name"] for s in sigs] == ["bsp"]
    assert {"bsp/**", "groups.json", "disks.json", "#spec"} <= set(sigs[0]["include"])
    assert "_sigs/bsp.json" in sigs[0]["exclude"]
    assert sigs[0]["alg"] == "RS256"


def test_show_objects_dir_counts_present_and_missing(capsys, tmp_path):
    state = rev0()
    objects = tmp_path / "objects"
    objects.mkdir()
    (objects / state["bsp/kernel.img"]).write_bytes(b"12345")
    (objects / state["web/root.squashfs"]).write_bytes(b"abc")
    assert rev(["show", "--json", "--objects", str(objects), example_path("rev0.json")]) == 0
    summary = json.loads(capsys.readouterr().out)["objects"]
    assert summary == {"entries": 9, "distinct": 9, "present": 2, "missing": 7, "size": 8}
    assert rev(["show", "--objects", str(objects), example_path("rev0.json")]) == 0
    assert "2 present, 7 missing, 8 bytes" in capsys.readouterr().out


def test_show_from_stdin(capsys, monkeypatch):
    data = example("rev1-app.json").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert rev(["show", "--json", "-"]) == 0
    assert (
        json.loads(capsys.readouterr().out)["digest"]
        == hashlib.sha256(canonical.dump_bytes(json.loads(data))).hexdigest()
    )


def test_show_trail_directory(capsys, tmp_path):
    trail = tmp_path / "trails" / "3"
    (trail / ".pvr").mkdir(parents=True)
    (trail / ".pvr" / "json").write_bytes(example("rev0.json").read_bytes())
    assert rev(["show", "--json", str(trail)]) == 0
    assert len(json.loads(capsys.readouterr().out)["containers"]) == 2
    assert rev(["show", str(tmp_path)]) == 1
    assert ".pvr/json" in capsys.readouterr().err


def test_package_needs_partial(capsys, conformance_dir):
    path = str(conformance_dir / "resources/os.json")
    assert rev(["show", path]) == 1
    err = capsys.readouterr().err
    assert path in err and "'bsp/run.json'" in err and "--partial" in err
    assert rev(["show", "--partial", "--json", path]) == 0
    assert json.loads(capsys.readouterr().out)["containers"][0]["name"] == "os"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda s: s["web/run.json"].update(status_goal="BOGUS"), "web/run.json"),
        (lambda s: s.update({"bsp/kernel.img": "xyz"}), "bsp/kernel.img"),
        (lambda s: s.update({"#spec": "nope@1"}), "#spec"),
        (lambda s: s.update({"../escape": "0" * 64}), "../escape"),
    ],
)
def test_invalid_state_exit_1_names_file_and_key(capsys, tmp_path, mutate, key):
    state = rev0()
    mutate(state)
    path = write(tmp_path, "bad.json", state)
    assert rev(["show", path]) == 1
    err = capsys.readouterr().err
    assert path in err and repr(key) in err
    assert capsys.readouterr().out == ""


def test_malformed_and_missing_files_exit_1(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"#spec": "pantavisor-service-system@1",')
    assert rev(["show", str(bad)]) == 1
    assert "malformed JSON" in capsys.readouterr().err
    dup = tmp_path / "dup.json"
    dup.write_text('{"#spec":"pantavisor-service-system@1","a.json":{},"a.json":{}}')
    assert rev(["show", str(dup)]) == 1
    assert "duplicate key" in capsys.readouterr().err
    assert rev(["show", str(tmp_path / "absent.json")]) == 1
    assert "absent.json" in capsys.readouterr().err


def test_bad_signature_header_names_the_key(capsys, tmp_path):
    state = rev0()
    state["_sigs/web.json"] = {"#spec": "pvs@2", "protected": "!!!", "signature": ""}
    path = write(tmp_path, "sig.json", state)
    assert rev(["show", path]) == 1
    err = capsys.readouterr().err
    assert path in err and "'_sigs/web.json'" in err and "base64url" in err
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","pvs":{"include":["web/**"],"exclude":[]}}')
    state["_sigs/web.json"]["protected"] = header.decode().rstrip("=")
    path = write(tmp_path, "sig.json", state)
    assert rev(["show", "--json", path]) == 0
    sig = json.loads(capsys.readouterr().out)["signatures"][0]
    assert (sig["name"], sig["alg"], sig["include"]) == ("web", "ES256", ["web/**"])


# ---- diff


def test_diff_json_keys_and_transition(capsys):
    assert rev(["diff", "--json", example_path("rev0.json"), example_path("rev1-app.json")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["transition", "reasons", "containers", "added", "removed", "changed"]
    assert doc["transition"] == "non-reboot"
    assert doc["containers"] == ["web"]
    assert doc["changed"] == [
        "_config/web/etc/nginx/conf.d/site.conf",
        "web/lxc.container.conf",
        "web/root.squashfs",
        "web/src.json",
    ]


def test_diff_table(capsys):
    assert rev(["diff", example_path("rev1-app.json"), example_path("rev2-bsp.json")]) == 0
    out = capsys.readouterr().out
    assert "transition: reboot" in out
    assert "system-owned entry bsp/kernel.img changed" in out


def test_diff_stdin_for_one_side(capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO(example("rev0.json").read_bytes()))
    )
    assert rev(["diff", "--json", "-", example_path("rev2-bsp.json")]) == 0
    assert json.loads(capsys.readouterr().out)["transition"] == "reboot"
    assert rev(["diff", "-", "-"]) == 1


def test_diff_invalid_side_exit_1(capsys, tmp_path):
    state = rev0()
    del state["#spec"]
    path = write(tmp_path, "nospec.json", state)
    assert rev(["diff", example_path("rev0.json"), path]) == 1
    err = capsys.readouterr().err
    assert path in err and "'#spec'" in err


def test_usage_errors_exit_2(capsys):
    for argv in (["diff", example_path("rev0.json")], ["show"], ["show", "--bogus", "x"]):
        with pytest.raises(SystemExit) as info:
            rev(argv)
        assert info.value.code == 2
    capsys.readouterr()


# ---- registration in the real command line


def test_registered_under_pvreal_rev(capsys):
    assert (
        cli.main(["rev", "diff", "--json", example_path("rev0.json"), example_path("rev0.json")])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["transition"] == "none"


def test_console_script_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "pvreal", "rev", "show", "--json", example_path("rev2-bsp.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"] == "pantavisor-service-system@1"
