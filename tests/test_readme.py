"""The README's console examples run as written.

Each ```console block of README.md whose commands start with `$ ` is run in one bash session, in a
scratch folder that holds the repository's `scenarios/` and `pvreal/` (so relative paths work as
in a checkout) and the few inputs a block names but does not make (a signing key, a package).
Paths under /tmp/ become paths under the scratch folder, so parallel runs do not meet. A command
must exit 0, or with the status its `# exit N` comment gives; an output line printed in the README
right below a command must appear in what it printed.

Blocks run elsewhere: the `# ` (root) device block by tests/test_readme_device.py, the QEMU block
by tests/test_qemu_*.py (a boot takes minutes), the Hub block by tests/test_hub_*.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pki import issue

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


@dataclass
class Command:
    line: str
    exit_code: int = 0
    expected: list[str] = field(default_factory=list)  # output lines shown under it


@dataclass
class Block:
    title: str  # the heading above it
    commands: list[Command]

    @property
    def first(self) -> str:
        return self.commands[0].line


def console_blocks(text: str) -> list[Block]:
    """Every ```console block made of `$ ` commands, with their shown output."""
    blocks: list[Block] = []
    title = ""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            title = line.lstrip("# ").strip()
        if line.strip() != "```console":
            continue
        commands: list[Command] = []
        for body in lines:
            if body.strip() == "```":
                break
            if body.startswith("$ "):
                command = body[2:]
                while command.endswith("\\"):
                    command = command[:-1] + " " + next(lines).strip()
                code = re.search(r"#\s*exit (\d+)", command)
                commands.append(Command(command, int(code.group(1)) if code else 0))
            elif commands and body.strip() and not body.startswith("#"):
                commands[-1].expected.append(body)
        if commands:
            blocks.append(Block(title, commands))
    return blocks


# Run elsewhere: QEMU boots (tests/test_qemu_*.py), the Hub (tests/test_hub_cli.py runs its block).
ELSEWHERE = ("pvreal qemu", "pvreal hub")
BLOCKS = [
    b for b in console_blocks(README.read_text(encoding="utf-8"))
    if not any(c.line.startswith(ELSEWHERE) for c in b.commands)
]


# The first command of every block this test knows how to run; a new block must be added here
# (with its inputs in PREPARE), so that it cannot go unrun.
KNOWN = ("pvsim run ", "pvsim crashcheck", "pvreal rev show", "pvreal rev sign",
         "export PVTXDIR=", "pvreal env set")


def test_every_readme_block_is_known():
    assert len(BLOCKS) == len(KNOWN), [b.first for b in BLOCKS]
    for block in BLOCKS:
        assert block.first.startswith(KNOWN), block.first


def _signing_inputs(work: Path) -> None:
    ca = issue("pvtwin README CA", kind="P-256", ca=True)
    leaf = issue("pvtwin README signer", issuer=ca, kind="P-256")
    (work / "key.pem").write_bytes(leaf.key_pem)
    (work / "cert.pem").write_bytes(leaf.cert_pem)
    (work / "trust").mkdir()
    (work / "trust" / "ca.pem").write_bytes(ca.cert_pem)
    (work / "rev0.json").write_bytes((ROOT / "pvreal/examples/rev0.json").read_bytes())


def _package(work: Path) -> None:
    """A pvtx package (`json` and `objects/<sha>`): the `web` container with new objects."""
    rev0 = json.loads((ROOT / "pvreal/examples/rev0.json").read_text())
    blobs = {"web/lxc.container.conf": b"lxc.uts.name = web\n", "web/root.squashfs": b"rootfs\n"}
    doc = {"#spec": rev0["#spec"], "web/run.json": rev0["web/run.json"]}
    doc.update({key: hashlib.sha256(blob).hexdigest() for key, blob in blobs.items()})
    members = [("json", json.dumps(doc).encode())]
    members += [(f"objects/{hashlib.sha256(b).hexdigest()}", b) for b in blobs.values()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (work / "package.tgz").write_bytes(buffer.getvalue())


def _uboot_env(work: Path) -> None:
    subprocess.run(
        [BIN / "pvreal", "env", "set", "--format", "uboot", "--size", "8192", "uboot.env",
         "pv_rev=0"],
        cwd=work, check=True, capture_output=True,
    )


# Table rows whose value differs run to run (or with the terminal's width).
VARIES = ("wall_s", "peak_rss_mb")


def _words(text: str) -> str:
    """White space folded, and durations (which differ run to run) made alike."""
    return re.sub(r"\d+(\.\d+)? s\b", "<t> s", " ".join(text.split()))


PREPARE = {"rev sign": _signing_inputs, "PVTXDIR": _package, "env set": _uboot_env}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.first.split("#")[0].strip()[:40])
def test_readme_block_runs_as_written(block: Block, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("scenarios", "pvreal"):
        (work / name).symlink_to(ROOT / name)
    for marker, prepare in PREPARE.items():
        if marker in block.first:
            prepare(work)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "200"}
    script = ["set -u"]
    for n, command in enumerate(block.commands):
        line = command.line.replace("/tmp/", f"{tmp_path}/")
        script += [f"echo '<<<{n}>>>'", line, "echo \"<<<rc $?>>>\""]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
        timeout=600,
    )
    outputs = re.split(r"<<<\d+>>>\n", done.stdout)[1:]
    assert len(outputs) == len(block.commands), done.stdout + done.stderr
    for command, output in zip(block.commands, outputs, strict=True):
        text, _, rc = output.rpartition("<<<rc ")
        assert int(rc.split(">>>")[0]) == command.exit_code, (command.line, text, done.stderr)
        for shown in command.expected:
            if shown.strip() in ("...", "") or shown.lstrip()[:1] in "┏┃┡└{}[]\"":
                continue  # table borders and JSON are shown abridged in the README
            if any(f"│ {key} " in shown for key in VARIES):
                continue
            assert _words(shown) in _words(text), (command.line, shown, text)
