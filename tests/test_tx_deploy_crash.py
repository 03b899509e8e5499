"""`pvreal tx deploy` killed at every step of its swap leaves the deploy folder whole.

Each case runs a deploy in a child process that dies (`os._exit`, no cleanup, like SIGKILL) at
one named step (`PVTWIN_TX_CRASH_AT`), then runs the next command in a fresh `TxFolder` and
checks the folder holds exactly the old revision (crash before the second rename) or exactly
the new one (after it), with no `.tmp`, `.bak` or journal left; then a deploy finishes the job.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvreal.tx import TxError, TxFolder, TxStatus, deploy_revision, recover_target
from pvreal.tx.deploy import CRASH_ENV, CRASH_EXIT, CRASH_POINTS, JOURNAL_FILE
from shared.transaction import dump_state, parse_document

REPO = Path(__file__).resolve().parents[1]
SPEC = "pantavisor-service-system@1"
# Steps after which the new revision is in place (the second rename has happened).
NEW_FROM = CRASH_POINTS.index("swapped")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str] | None:
    """Every path under root with its kind and content hash; None when root is missing."""
    if not os.path.lexists(root):
        return None
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[str(Path(folder, name).relative_to(root))] = "dir"
        for name in files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = sha(path.read_bytes())
    return found


class Scene:
    """A local transaction with revision `old` (deployed or not) and revision `new` to deploy."""

    def __init__(self, root: Path, *, deployed_before: bool):
        self.root = root
        self.objects = root / "objects"
        self.objects.mkdir()
        self.txdir = root / "pvtxdir"
        self.target = root / "deploy"
        self.old = self.package("old", b"kernel one")
        self.new = self.package("new", b"kernel two")
        folder = TxFolder(self.txdir)
        self.expected_old = None
        if deployed_before:
            folder.begin("empty", str(self.objects))
            folder.add(str(self.old))
            folder.deploy(str(self.target))
            self.expected_old = tree(self.target)
        folder.begin("empty", str(self.objects))
        folder.add(str(self.new))
        reference = root / "reference" / "deploy"
        state = parse_document(self.new.read_bytes(), source="new")
        if deployed_before:  # deploy copies the old .pvr/config; make the reference do the same
            (reference / ".pvr").mkdir(parents=True)
            (reference / ".pvr" / "config").write_bytes((self.target / ".pvr/config").read_bytes())
        deploy_revision(state, folder.show(), self.objects, reference)
        self.expected_new = tree(reference)
        assert self.expected_new != self.expected_old

    def package(self, name: str, kernel: bytes) -> Path:
        payload = f"{name} payload".encode()
        for data in (kernel, payload, b"initrd"):
            (self.objects / sha(data)).write_bytes(data)
        document = {
            "#spec": SPEC,
            "bsp/run.json": {"linux": "kernel.img", "initrd": "pantavisor"},
            "bsp/kernel.img": sha(kernel),
            "bsp/pantavisor": sha(b"initrd"),
            f"{name}/payload.bin": sha(payload),
            f"{name}/settings.json": {"name": name},
        }
        path = self.root / f"{name}.json"
        path.write_bytes(dump_state(document))
        return path

    def leftovers(self) -> list[Path]:
        return [p for p in (self.target.with_name("deploy.tmp"),
                            self.target.with_name("deploy.bak"),
                            self.txdir / JOURNAL_FILE) if os.path.lexists(p)]


def crash(code: str, *args: str | Path, point: str) -> None:
    env = {**os.environ, CRASH_ENV: point,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                            capture_output=True, text=True, check=False)
    # The exit status proves the child reached the step, so every case tests what it names.
    assert result.returncode == CRASH_EXIT, result.stderr


DEPLOY = "import sys; from pvreal.tx import TxFolder; TxFolder(sys.argv[1]).deploy(sys.argv[2])"


@pytest.mark.parametrize("deployed_before", [True, False], ids=["redeploy", "first-deploy"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_deploy_killed_at_any_step_leaves_the_folder_whole(tmp_path: Path, point: str,
                                                             deployed_before: bool) -> None:
    scene = Scene(tmp_path, deployed_before=deployed_before)
    crash(DEPLOY, scene.txdir, scene.target, point=point)

    folder = TxFolder(scene.txdir)  # the next command, in a fresh process's shoes
    recorded = folder.record()
    assert recorded is not None
    if recorded.status is TxStatus.DEPLOYED:
        with pytest.raises(TxError):
            folder.show()
    else:
        folder.show()

    new_in_place = CRASH_POINTS.index(point) >= NEW_FROM
    assert tree(scene.target) == (scene.expected_new if new_in_place else scene.expected_old)
    assert scene.leftovers() == []
    # The record never claims more than the folder holds.
    assert (folder.record().status is TxStatus.DEPLOYED) == (point == "recorded")

    if folder.record().active:  # the user deploys again and gets the new revision
        folder.deploy(str(scene.target))
    assert tree(scene.target) == scene.expected_new
    assert folder.record().status is TxStatus.DEPLOYED
    assert scene.leftovers() == []


def test_between_the_renames_the_folder_is_missing_until_recovered(tmp_path: Path) -> None:
    """The window the recovery exists for: without it the revision would be gone."""
    scene = Scene(tmp_path, deployed_before=True)
    crash(DEPLOY, scene.txdir, scene.target, point="moved-aside")
    assert not os.path.lexists(scene.target)
    assert (scene.txdir / JOURNAL_FILE).is_file()
    TxFolder(scene.txdir).abort()  # any command repairs it, even one that deploys nothing
    assert tree(scene.target) == scene.expected_old
    assert scene.leftovers() == []


def test_deploy_revision_alone_recovers_its_target(tmp_path: Path) -> None:
    """Without a transaction folder (no journal) the next deploy to the folder repairs it."""
    scene = Scene(tmp_path, deployed_before=True)
    code = ("import sys; from pathlib import Path; from pvreal.tx import deploy_revision; "
            "from shared.transaction import parse_document; "
            "data = Path(sys.argv[1]).read_bytes(); "
            "deploy_revision(parse_document(data, source='new'), data, Path(sys.argv[2]), "
            "Path(sys.argv[3]))")
    crash(code, scene.txdir / "current.json", scene.objects, scene.target, point="moved-aside")
    assert not os.path.lexists(scene.target)
    recover_target(scene.target)
    assert tree(scene.target) == scene.expected_old
    assert scene.leftovers() == []


def test_crash_points_are_in_deploy_order() -> None:
    """The expectations above rely on the order: the old revision until `swapped`."""
    assert CRASH_POINTS.index("moved-aside") < NEW_FROM < CRASH_POINTS.index("recorded")
