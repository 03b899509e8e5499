"""`pvsim trace`: the case format's errors, the CLI, and the worked examples of docs/trace.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pvsim.cli import main
from pvsim.trace import TraceCaseError, TraceError, load_case, run_trace

DOC = Path(__file__).resolve().parent.parent / "docs" / "trace.md"
UPDATE = """
[revisions.1]
on_disk = true
progress = { status = "DONE", message = "Update finished, revision set as rollback point" }

[revisions.2]
kernel = "k2"
"""


def write(tmp_path, text, name="case.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def doc_examples():
    """(files, [(command, expected output)]) of docs/trace.md: each ```toml block starts with
    `# NAME.toml`; each ```console block that runs `pvsim trace` shows its whole output."""
    text = DOC.read_text()
    files = {}
    for body in re.findall(r"```toml\n(.*?)```", text, re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and first.endswith(".toml"):
            files[first[2:]] = rest
    runs = []
    for body in re.findall(r"```console\n(\$ pvsim trace .*?)```", text, re.S):
        command, _, output = body.partition("\n")
        runs.append((shlex.split(command)[3:], output))
    return files, runs


def test_the_docs_worked_examples_print_what_the_doc_shows(tmp_path, capsys, monkeypatch):
    files, runs = doc_examples()
    assert len(files) >= 3 and len(runs) >= 3
    for name, text in files.items():
        write(tmp_path, text, name)
    monkeypatch.chdir(tmp_path)
    for args, output in runs:
        assert main(["trace", *args]) == 0
        assert capsys.readouterr().out == output, f"docs/trace.md: pvsim trace {' '.join(args)}"


def test_json_is_the_same_trace(tmp_path, capsys):
    path = write(tmp_path, UPDATE + '\n[[step]]\noffer = "2"\n\n[[step]]\nsettle = true\n')
    assert main(["trace", str(path), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries == json.loads(json.dumps(run_trace(load_case(path))))
    assert entries[-1]["what"] == "end" and entries[-1]["pv_rev"] == "2"
    envs = [e for e in entries if e["what"] == "env"]
    assert [e.get("pv_rev") for e in envs] == [None, "2", None]  # faithful: two commit writes


def test_ordering_option_overrides_the_case(tmp_path, capsys):
    path = write(tmp_path, UPDATE + '\n[[step]]\noffer = "2"\n\n[[step]]\nsettle = true\n')
    assert main(["trace", str(path), "--ordering", "hardened", "--json"]) == 0
    envs = [e for e in json.loads(capsys.readouterr().out) if e["what"] == "env"]
    assert all(e["redundant"] for e in envs) and len(envs) == 2


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[[step]]\noffer = "2"\nhub = "reached"\n', "step[0]", "exactly one thing"),
        ('[[step]]\nofer = "2"\n', "step[0].ofer", "unknown key"),
        ('[[step]]\noffer = "9"\n', "step[0]", "revision '9' is not in"),
        ('config = { PV_NO_SUCH = 1 }\n', "config", "PV_NO_SUCH"),
        ('[[step]]\nctrl = "FROBNICATE"\n', "step[0]", "unknown pv-ctrl command"),
        ('[world]\ncrashes = ["app"]\n', "world.crashes", "REV:CONTAINER"),
        ('[[step]]\nhub = "failed"\nsignature_error = "x"\n', "step[0]", "only with offer"),
    ],
)
def test_a_bad_case_names_the_file_and_the_key(tmp_path, text, key, words):
    path = write(tmp_path, UPDATE + text if text.startswith("[") else text + UPDATE)
    with pytest.raises(TraceCaseError) as caught:
        load_case(path)
    error = caught.value
    assert error.source == str(path) and words in error.message
    assert error.key == key or words in str(error)


def test_a_timer_that_is_not_armed_is_an_error_naming_the_armed_ones(tmp_path):
    path = write(tmp_path, UPDATE + '\n[[step]]\ntimer = "commit"\n')
    with pytest.raises(TraceError, match="timer 'commit' is not armed"):
        run_trace(load_case(path))


def test_a_cut_beyond_the_steps_writes_is_an_error(tmp_path):
    path = write(tmp_path, UPDATE + '\n[[step]]\nhub = "reached"\ncut_before_write = 1\n')
    with pytest.raises(TraceError, match="fewer durable writes"):
        run_trace(load_case(path))
