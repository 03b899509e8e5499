"""The commands docs/*.md shows as typed (`$ ` lines) run as written.

Every fenced block of a doc whose lines start with `$ ` is listed here: either it runs in this
test (one bash session in a scratch folder; each command must exit 0 and print the lines shown
under it), or the test module that runs it is named, and this test checks that module still
reads that doc. A new `$` block in docs/ fails `test_every_docs_block_is_accounted_for` until it
is added to one of the two tables, so no typed command goes unrun.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent

# (doc, first command) run here, with the host tools each needs (Debian packages in .ci/run).
RUN_HERE = {
    ("bootenv.md", "pvreal env set grubenv pv_rev=0 pv_try=1"): ("grub-editenv", "fw_printenv"),
    ("real-backend.md", "pvreal crashcheck --ordering hardened --kind bsp-good"): ("runc",),
}
# (doc, first command) -> the test module that runs it as written.
RUN_ELSEWHERE = {
    ("trace.md", "pvsim trace"): "test_trace.py",
    ("hub.md", "pvreal hub serve"): "test_hub_cli.py",
}


def typed_blocks() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(doc name, [(command, lines shown under it)]) for each fenced block with `$ ` lines."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        for body in re.findall(r"^```[a-z]*\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M):
            commands: list[tuple[str, list[str]]] = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    commands.append((line[2:], []))
                elif commands and line.strip():
                    commands[-1][1].append(line)
            if commands:
                found.append((doc.name, commands))
    return found


def _key(doc: str, first: str, table) -> tuple[str, str] | None:
    return next((k for k in table if k[0] == doc and first.startswith(k[1])), None)


def test_every_docs_block_is_accounted_for() -> None:
    blocks = typed_blocks()
    assert blocks, "no `$` block found in docs/: the parser is broken"
    for doc, commands in blocks:
        first = commands[0][0]
        here, elsewhere = _key(doc, first, RUN_HERE), _key(doc, first, RUN_ELSEWHERE)
        assert here or elsewhere, f"docs/{doc}: block starting `{first}` is run by no test"
        if elsewhere:
            module = (ROOT / "tests" / RUN_ELSEWHERE[elsewhere]).read_text(encoding="utf-8")
            assert doc in module, f"tests/{RUN_ELSEWHERE[elsewhere]} no longer reads docs/{doc}"


@pytest.mark.parametrize("key", sorted(RUN_HERE), ids=lambda k: k[0])
def test_docs_block_runs_as_written(key, tmp_path: Path) -> None:
    missing = [tool for tool in RUN_HERE[key] if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: grub-common, libubootenv-tool, runc)")
    doc, first = key
    commands = next(c for d, c in typed_blocks() if d == doc and c[0][0].startswith(first))
    script = ["set -u"]
    for n, (command, _) in enumerate(commands):
        script += [f"echo '<<<{n}>>>'", command, 'echo "<<<rc $?>>>"']
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "200"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    outputs = re.split(r"<<<\d+>>>\n", done.stdout)[1:]
    assert len(outputs) == len(commands), done.stdout + done.stderr
    for (command, shown), output in zip(commands, outputs, strict=True):
        text, _, rc = output.rpartition("<<<rc ")
        assert rc.startswith("0>>>"), (f"docs/{doc}", command, text, done.stderr)
        printed = text + done.stderr  # an error line the doc shows goes to stderr
        for line in shown:
            assert line.strip() in printed or line.strip() in done.stderr, (f"docs/{doc}", command, line)
