"""pvtx's own test suite (test/pvtx/pvtx.sh), case by case, against `pvreal tx`.

Each of the 29 original functions is one parametrized case with a fresh PVTXDIR, objects, queue
and deploy folder. Like the original harness, results are compared as parsed JSON; on top of that
every `show` must print canonical JSON (pvtwin keeps states canonical). Case 17 reads pvtx's
binary `.status`; pvtwin keeps its own record, so the same four facts are checked through it.
The tests after the cases cover what the suite leaves out: exit statuses, commit and `current`
over a control socket, objects and deploy layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socketserver
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from pvreal.cli import build_parser, run
from pvreal.tx import TxFolder, TxStatus
from shared.canonical import is_canonical

# Only the tx group, built once: building pvreal's whole parser per command dominated the runtime.
# test_console_script_exit_status goes through the real entry point.
PARSER = build_parser("pvreal", "pvreal tx under test", ["pvreal.cli.tx"])

SPEC = "pantavisor-service-system@1"


# --------------------------------------------------------------------------------------------
# harness


@dataclass
class Pvtx:
    """One scratch area (T in CASES.md) and a way to run `pvreal tx` in-process."""

    data: Path
    root: Path
    txdir: Path = field(init=False)
    objects: Path = field(init=False)
    queue: Path = field(init=False)
    deploy: Path = field(init=False)

    def __post_init__(self) -> None:
        self.txdir = self.root / "pvtxdir"
        self.objects = self.root / "objects"
        self.queue = self.root / "queue"
        self.deploy = self.root / "deploy"
        self.txdir.mkdir()
        self.objects.mkdir()

    def res(self, name: str) -> Path:
        return self.data / "resources" / name

    def exp(self, name: str) -> Path:
        return self.data / "expected" / name

    def run(self, *args: str | Path, stdin: bytes = b"") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = run(PARSER, ["tx", *map(str, args)])
        finally:
            sys.stdin = saved
        return code, out.getvalue(), err.getvalue()

    def ok(self, *args: str | Path, stdin: bytes = b"") -> str:
        code, out, err = self.run(*args, stdin=stdin)
        assert code == 0, f"tx {' '.join(map(str, args))} exited {code}: {err}"
        return out

    def show(self) -> str:
        result = self.ok("show")
        check_canonical(result)
        return result

    def pkgtar(self, resource: str) -> Path:
        """The driver's pkgtar: a gzip tar with exactly one member `json`."""
        path = self.root / (resource + ".tgz")
        data = self.res(resource).read_bytes()
        with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
            info = tarfile.TarInfo("json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        return path


def same_json(result: str | bytes, reference: Path | str | bytes) -> bool:
    if isinstance(reference, Path):
        reference = reference.read_bytes()
    return json.loads(result) == json.loads(reference)


def check_canonical(result: str) -> None:
    assert result.endswith("\n")
    body = result[:-1]
    assert is_canonical(body), "show must print canonical JSON (sorted keys, compact)"
    spec = json.loads(body).get("#spec")
    assert isinstance(spec, str) and spec


def tar_objects(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {
            member.name.removeprefix("objects/"): archive.extractfile(member).read()
            for member in archive.getmembers()
            if member.isfile() and member.name.startswith("objects/")
        }


def tar_json(path: Path) -> bytes:
    with tarfile.open(path) as archive:
        return archive.extractfile("json").read()


def assert_objects_from(px: Pvtx, tarball: Path) -> None:
    expected = tar_objects(tarball)
    assert expected, "the tarball carries objects"
    for sha, content in expected.items():
        stored = (px.objects / sha).read_bytes()
        assert stored == content
        assert hashlib.sha256(stored).hexdigest() == sha


@pytest.fixture
def px(conformance_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pvtx:
    harness = Pvtx(conformance_dir, tmp_path)
    monkeypatch.setenv("PVTXDIR", str(harness.txdir))
    monkeypatch.setenv("PVTX_SOCKET", str(tmp_path / "no-device.sock"))
    return harness


# --------------------------------------------------------------------------------------------
# the 29 cases, in the driver's order

CASES: dict[str, Callable[[Pvtx], None]] = {}


def case(function: Callable[[Pvtx], None]) -> Callable[[Pvtx], None]:
    """Register a case under its original name; pytest runs it through test_pvtx_case only."""
    CASES[function.__name__] = function
    function.__test__ = False  # type: ignore[attr-defined]
    return function


def _begin_with_initial_state(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res("initial_state.json"))


@case
def test_create_empty_transaction(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    assert same_json(px.show(), px.exp("state-empty.json"))


@case
def test_process_json_keys_with_spaces(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res("state_with_spaces.json"))
    result = px.show()
    assert same_json(result, px.res("state_with_spaces.json"))
    assert "_config/container/name with spaces.txt" in json.loads(result)


def _signature_removal(px: Pvtx, part: str) -> None:
    _begin_with_initial_state(px)
    px.ok("remove", part)
    assert same_json(px.show(), px.exp("state_after_remove.json"))


@case
def test_signature_removal(px: Pvtx) -> None:
    _signature_removal(px, "_sigs/awconnect.json")


@case
def test_signature_removal2(px: Pvtx) -> None:
    _signature_removal(px, "awconnect")


@case
def test_signature_removal3(px: Pvtx) -> None:
    _signature_removal(px, "_config/awconnect")


@case
def test_removal_config_pkg(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res("state-1.json"))
    px.ok("remove", "_sigs/nginx-config.json")
    assert same_json(px.show(), px.exp("state_after_remove_config_pkg.json"))


@case
def test_package_update(px: Pvtx) -> None:
    _begin_with_initial_state(px)  # remote: no objects directory
    px.ok("add", px.pkgtar("awconnect.json"))
    assert same_json(px.show(), px.exp("state_after_adding_existing.json"))


@case
def test_add_package_from_tar(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty", px.objects)
    px.ok("add", px.res("watchdog_pinger.tar"))
    assert same_json(px.show(), px.exp("state_after_add_from_tar.json"))
    assert_objects_from(px, px.res("watchdog_pinger.tar"))


@case
def test_add_new_package(px: Pvtx) -> None:
    package = px.pkgtar("vaultwarden.json")
    _begin_with_initial_state(px)
    px.ok("add", package)
    assert same_json(px.show(), px.exp("state_after_new_package.json"))


@case
def test_add_new_package_from_cat(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty", px.objects)
    px.ok("add", px.res("initial_state.json"))
    px.ok("add", "-", stdin=px.res("pvwificonnect.tgz").read_bytes())
    assert same_json(px.show(), px.exp("state_after_pvwificonnect.json"))
    assert_objects_from(px, px.res("pvwificonnect.tgz"))


def _update_bsp(px: Pvtx, initial: str) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res(initial))
    px.ok("add", px.pkgtar("bsp_update.json"))
    assert same_json(px.show(), px.exp("state_bsp_update.json"))


@case
def test_update_bsp(px: Pvtx) -> None:
    _update_bsp(px, "bsp_init.json")


@case
def test_update_bsp_with_groups(px: Pvtx) -> None:
    _update_bsp(px, "bsp_init_groups.json")


@case
def test_install_from_tgz(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.pkgtar("os.json"))
    assert same_json(px.show(), px.exp("state_after_os_install.json"))


def _two_packages(px: Pvtx, a: str, b: str, expected: str) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res(a))
    px.ok("add", px.res(b))
    px.ok("remove", "_sigs/config_a.json")
    assert same_json(px.show(), px.exp(expected))


@case
def test_two_package_signing_same_files(px: Pvtx) -> None:
    _two_packages(px, "config_a.json", "config_b.json",
                  "state_after_install_config_b_remove_config_a.json")


@case
def test_two_package_signing_same_files_with_globs(px: Pvtx) -> None:
    _two_packages(px, "config_a_glob.json", "config_b_glob.json",
                  "state_after_install_config_b_remove_config_a_with_glob.json")


@case
def test_removal_of_signed_config(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    px.ok("add", px.res("pvws_with_config.json"))
    assert same_json(px.show(), px.exp("state_pvws_with_config.json"))
    px.ok("add", px.res("pvws_without_config.json"))
    assert same_json(px.show(), px.exp("state_pvws_without_config.json"))


@case
def test_queue_new(px: Pvtx) -> None:
    # pvtx checks its binary .status (status SET, is_local, objdir, queuedir); pvtwin's record is
    # JSON, so the same four facts are read through it, plus the behaviour they drive.
    px.ok("abort")
    px.ok("queue", "new", px.queue, px.objects)
    record = TxFolder(px.txdir).record()
    assert record is not None
    assert record.status is TxStatus.SET
    assert record.is_local is True
    assert record.objdir == str(px.objects)
    assert record.queue is not None and record.queue.dir == str(px.queue)
    assert px.queue.is_dir()
    # SET is not a transaction: show refuses, and a second `queue new` is allowed.
    assert px.run("show")[0] == 11
    px.ok("queue", "new", px.queue, px.objects)


@case
def test_queue_actions(px: Pvtx) -> None:
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "remove", "nginx")
    px.ok("queue", "remove", "_config/nginx")
    px.ok("queue", "remove", "_sigs/nginx-config.json")
    px.ok("queue", "unpack", px.res("pvwificonnect.tgz"))
    for name in ("000__nginx.remove", "001___config%2Fnginx.remove",
                 "002___sigs%2Fnginx-config.json.remove"):
        assert (px.queue / name).is_file()
    unpacked = px.queue / "003__pvwificonnect.tgz" / "json"
    assert unpacked.read_bytes() == tar_json(px.res("pvwificonnect.tgz"))
    assert_objects_from(px, px.res("pvwificonnect.tgz"))


@case
def test_queue_process(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "unpack", px.res("pvwificonnect.tgz"))
    px.ok("begin", px.res("initial_state.json"))
    px.ok("queue", "process")
    assert same_json(px.show(), px.exp("state_after_pvwificonnect.json"))
    record = TxFolder(px.txdir).record()
    assert record is not None and record.is_local and record.objdir == str(px.objects)


@case
def test_queue_process_with_remove(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "remove", "_sigs/awconnect.json")
    px.ok("begin", px.res("initial_state.json"))
    px.ok("queue", "process")
    assert same_json(px.show(), px.exp("state_after_remove.json"))


@case
def test_deploy(px: Pvtx) -> None:
    px.deploy.mkdir()
    px.ok("abort")
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "unpack", px.res("pvwificonnect.tgz"))
    px.ok("begin", "empty")
    px.ok("queue", "process")
    result = px.show()
    px.ok("deploy", px.deploy)
    assert same_json(result, px.deploy / ".pvr" / "json")
    # Derived checks (CASES.md): the package on top of an empty state, laid out like pvr.
    package = json.loads(tar_json(px.res("pvwificonnect.tgz")))
    assert json.loads(result) == {**package, "#spec": SPEC}
    _assert_deployed_layout(px, json.loads(result))


def _assert_deployed_layout(px: Pvtx, state: dict) -> None:
    config = json.loads((px.deploy / ".pvr" / "config").read_bytes())
    assert config == {"ObjectsDir": str(px.objects)}
    for key, value in state.items():
        if key == "#spec":
            continue
        path = px.deploy / key
        if isinstance(value, str):
            assert path.stat().st_ino == (px.objects / value).stat().st_ino, key
        else:
            assert json.loads(path.read_bytes()) == value, key
    assert (px.deploy / ".pv").is_dir() and not any((px.deploy / ".pv").iterdir())
    assert not px.deploy.with_name("deploy.tmp").exists()
    assert not px.deploy.with_name("deploy.bak").exists()


@case
def test_process_queue_without_begin(px: Pvtx) -> None:
    px.deploy.mkdir()
    (px.deploy / "stale-file").write_text("from an earlier deploy")
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "unpack", px.res("watchdog_pinger.tar"))
    px.ok("queue", "process", "empty")
    result = px.show()
    px.ok("deploy", px.deploy)
    assert same_json(result, px.deploy / ".pvr" / "json")
    assert same_json(result, px.exp("state_after_add_from_tar.json"))
    assert not (px.deploy / "stale-file").exists()  # the folder is replaced as a whole
    _assert_deployed_layout(px, json.loads(result))


@case
def test_local_transaction(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty", px.objects)
    assert px.run("commit")[0] == 12


@case
def test_empty_transaction_has_spec(px: Pvtx) -> None:
    px.ok("abort")
    px.ok("begin", "empty")
    assert json.loads(px.show())["#spec"]


@case
def test_show_is_idempotent(px: Pvtx) -> None:
    _begin_with_initial_state(px)
    first = px.show()
    second = px.show()
    assert json.loads(first) == json.loads(second)
    assert first == second


@case
def test_spec_preserved_after_remove(px: Pvtx) -> None:
    _begin_with_initial_state(px)
    px.ok("remove", "awconnect")
    result = px.show()
    assert json.loads(result)["#spec"] == SPEC
    assert same_json(result, px.exp("state_after_remove.json"))


@case
def test_add_state_roundtrip(px: Pvtx) -> None:
    _begin_with_initial_state(px)
    assert same_json(px.show(), px.res("initial_state.json"))


@case
def test_double_add_is_idempotent(px: Pvtx) -> None:
    _begin_with_initial_state(px)
    first = px.show()
    px.ok("add", px.res("initial_state.json"))
    second = px.show()
    assert json.loads(first) == json.loads(second)
    assert first == second


@case
def test_abort_clears_transaction(px: Pvtx) -> None:
    _begin_with_initial_state(px)
    px.ok("abort")
    assert px.run("show")[0] == 11
    px.ok("begin", "empty")
    assert same_json(px.show(), px.exp("state-empty.json"))


def test_all_29_cases_are_listed():
    assert len(CASES) == 29


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_pvtx_case(name: str, px: Pvtx) -> None:
    CASES[name](px)


# --------------------------------------------------------------------------------------------
# beyond the suite


def test_legacy_queue_process_keyset(px: Pvtx) -> None:
    """CASES.md §4: the unreferenced expected file, usable as a key-set check only."""
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "remove", "_sigs/nginx.json")
    px.ok("queue", "unpack", "-", stdin=px.res("pvwificonnect.tgz").read_bytes())
    assert (px.queue / "001__package" / "json").is_file()
    px.ok("begin", px.res("state-1.json"))
    px.ok("queue", "process")
    result = json.loads(px.show())
    assert set(result) == set(json.loads(px.exp("state_queue_process.json").read_bytes()))


def test_exit_statuses_without_a_transaction(px: Pvtx) -> None:
    assert px.run("abort")[0] == 0
    assert px.run("show")[0] == 11
    assert px.run("commit")[0] == 11
    assert px.run("deploy", px.deploy)[0] == 11
    assert px.run("add", px.res("os.json"))[0] == 1
    assert px.run("remove", "awconnect")[0] == 3
    assert px.run("queue", "remove", "x")[0] == 1
    assert px.run("queue", "unpack", px.res("os.json"))[0] == 1
    assert px.run("queue", "process")[0] == 255
    assert px.run("deploy")[0] == 1


def test_exit_statuses_with_a_transaction(px: Pvtx) -> None:
    px.ok("begin", "empty", px.objects)
    assert px.run("begin", "empty")[0] == 255
    assert px.run("remove")[0] == 4
    assert px.run("add")[0] == 255
    assert px.run("remove", "nothing-matches")[0] == 0
    assert px.run("queue", "new", px.queue, px.objects)[0] == 12
    assert px.run("queue", "process", "empty", px.queue, px.objects)[0] == 12
    px.ok("abort")
    px.ok("begin", "empty")  # remote
    assert px.run("deploy", px.deploy)[0] == 255


def test_queue_process_needs_a_transaction(px: Pvtx) -> None:
    px.ok("queue", "new", px.queue, px.objects)
    px.ok("queue", "remove", "awconnect")
    assert px.run("queue", "process")[0] == 3


def test_errors_name_the_file(px: Pvtx) -> None:
    px.ok("begin", "empty")
    bad = px.root / "bad.json"
    bad.write_text('{"#spec": "pantavisor-service-system@1", "../x": "' + "0" * 64 + '"}')
    code, _, err = px.run("add", bad)
    assert code == 255
    assert str(bad) in err and "'../x'" in err
    px.ok("abort")
    missing = px.root / "missing"
    code, _, err = px.run("begin", missing)
    assert code == 255 and "no state JSON found" in err


def test_remove_that_matches_nothing_leaves_the_text(px: Pvtx) -> None:
    px.ok("begin", px.res("initial_state.json"))
    before = (px.txdir / "current.json").read_bytes()
    px.ok("remove", "no-such-part")
    assert (px.txdir / "current.json").read_bytes() == before


def test_begin_from_a_revision_folder(px: Pvtx) -> None:
    revision = px.root / "rev"
    (revision / ".pvr").mkdir(parents=True)
    (revision / ".pvr" / "json").write_bytes(px.res("bsp_init.json").read_bytes())
    px.ok("begin", revision)
    assert same_json(px.show(), px.res("bsp_init.json"))


def test_begin_current_without_a_device_says_what_is_missing(px: Pvtx) -> None:
    code, _, err = px.run("begin", "current")
    assert code == 255
    assert "control socket" in err and "--socket" in err
    assert not (px.txdir / ".status.json").exists()


def test_prefix_quirks_are_kept(px: Pvtx) -> None:
    """SEMANTICS marks these as likely unintended; pvtx does them, so pvreal tx does too."""
    px.ok("begin", "empty.json")  # any base starting with "empty" is the empty state
    assert same_json(px.show(), px.exp("state-empty.json"))
    px.ok("add", px.res("state-1.json"))
    # `nginx` finds _sigs/nginx-config.json (first by name), not _sigs/nginx.json.
    px.ok("remove", "nginx")
    state = json.loads(px.show())
    assert "_sigs/nginx-config.json" in state  # it does not exclude its own key
    assert not any(key.startswith("_config/nginx/") for key in state)
    # The part string also matches nginx/* by prefix; keys claimed twice by _sigs/nginx.json
    # (include + exclude) survive, the others go.
    assert "nginx/src.json" in state and "nginx/run.json" not in state


def test_a_broken_result_is_refused_at_deploy(px: Pvtx) -> None:
    """`remove pv` claims every key starting with "pv" (no path boundary, as in pvtx): it takes
    pvr-sdk/run.json but keeps pvr-sdk/src.json. pvtx would deploy that; pvreal tx keeps the
    transaction but refuses to deploy a state the revision model rejects."""
    px.ok("abort")
    px.ok("begin", "empty", px.objects)
    px.ok("add", px.res("initial_state.json"))
    px.ok("remove", "pv")
    state = json.loads(px.show())
    assert "pvr-sdk/src.json" in state and "pvr-sdk/run.json" not in state
    code, _, err = px.run("deploy", px.deploy)
    assert code == 255 and "pvr-sdk/run.json" in err
    assert not px.deploy.exists()


def test_deploy_links_boot_assets(px: Pvtx) -> None:
    kernel, initrd = b"kernel image", b"initrd image"
    shas = {}
    for content in (kernel, initrd):
        sha = hashlib.sha256(content).hexdigest()
        (px.objects / sha).write_bytes(content)
        shas[content] = sha
    package = {
        "#spec": SPEC,
        "bsp/run.json": {"initrd": "pantavisor", "linux": "kernel.img", "fdt": "none.dtb"},
        "bsp/kernel.img": shas[kernel],
        "bsp/pantavisor": shas[initrd],
    }
    path = px.root / "bsp.json"
    path.write_text(json.dumps(package))
    px.ok("begin", "empty", px.objects)
    px.ok("add", path)
    px.ok("deploy", px.deploy)  # the folder does not exist yet: created
    assert (px.deploy / ".pv" / "pv-kernel.img").read_bytes() == kernel
    assert (px.deploy / ".pv" / "pv-initrd.img").read_bytes() == initrd
    assert sorted(p.name for p in (px.deploy / ".pv").iterdir()) == [
        "pv-initrd.img", "pv-kernel.img"]
    assert TxFolder(px.txdir).record().status is TxStatus.DEPLOYED
    assert px.run("show")[0] == 11


def test_deploy_warns_about_a_missing_boot_asset(px: Pvtx) -> None:
    """pvtx only warns; the warning comes back from the library and the command prints it."""
    package = {"#spec": SPEC, "bsp/run.json": {"linux": "kernel.img"}}
    path = px.root / "bsp.json"
    path.write_text(json.dumps(package))
    px.ok("begin", "empty", px.objects)
    px.ok("add", path)
    out = px.ok("deploy", px.deploy)
    assert out.startswith("WARN: ") and "bsp/kernel.img" in out and "pv-kernel.img" in out
    assert not any((px.deploy / ".pv").iterdir())
    assert TxFolder(px.txdir).record().status is TxStatus.DEPLOYED


def test_deploy_with_a_missing_object_changes_nothing(px: Pvtx) -> None:
    px.deploy.mkdir()
    (px.deploy / "keep").write_text("old revision")
    px.ok("begin", "empty", px.objects)
    px.ok("add", px.res("os.json"))  # its objects are not in px.objects
    code, _, err = px.run("deploy", px.deploy)
    assert code == 255 and "hard-link" in err
    assert [p.name for p in px.deploy.iterdir()] == ["keep"]
    assert not px.deploy.with_name("deploy.tmp").exists()
    assert TxFolder(px.txdir).record().status is TxStatus.ACTIVE


# --------------------------------------------------------------------------------------------
# a fake pv-ctrl on a Unix socket


@dataclass
class FakeControl:
    path: Path
    requests: list[tuple[str, str, dict, bytes]] = field(default_factory=list)
    current: bytes = b""
    status: int = 200


@contextlib.contextmanager
def fake_control(path: Path, current: bytes = b"", status: int = 200):
    state = FakeControl(path, current=current, status=status)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.requests.append(("GET", self.path, dict(self.headers), b""))
            self._reply(200 if self.path == "/steps/current" else 404, state.current)

        def do_PUT(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(("PUT", self.path, dict(self.headers), body))
            self._reply(state.status)

        def log_message(self, *args) -> None:
            pass

    server = socketserver.UnixStreamServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def control(px: Pvtx, monkeypatch: pytest.MonkeyPatch):
    path = px.root / "ctrl.sock"
    monkeypatch.setenv("PVTX_SOCKET", str(path))
    with fake_control(path, current=px.res("initial_state.json").read_bytes()) as state:
        yield state


def test_commit_puts_the_state_as_a_local_step(px: Pvtx, control: FakeControl) -> None:
    px.ok("begin", "current")
    assert control.requests[0][:2] == ("GET", "/steps/current")
    px.ok("remove", "awconnect")
    shown = px.show()
    code, out, err = px.run("commit")
    assert code == 0, err
    revision = out.strip()
    assert revision.startswith("locals/pvtx-")
    method, path, headers, body = control.requests[-1]
    assert (method, path) == ("PUT", f"/steps/{revision}")
    assert headers["Content-Type"] == "application/json"
    assert body.decode() + "\n" == shown
    assert TxFolder(px.txdir).record().status is TxStatus.COMMITED
    assert px.run("show")[0] == 11


def test_commit_with_a_name(px: Pvtx, control: FakeControl) -> None:
    px.ok("begin", "empty")
    assert px.run("commit", "not-local")[0] == 255
    assert px.ok("commit", "locals/mine").strip() == "locals/mine"
    assert control.requests[-1][1] == "/steps/locals/mine"


def test_commit_reports_http_errors(px: Pvtx, control: FakeControl) -> None:
    control.status = 409
    px.ok("begin", "empty")
    code, _, err = px.run("commit", "locals/x")
    assert code == (-409) % 256 and "409" in err
    assert TxFolder(px.txdir).record().status is TxStatus.ACTIVE


def test_remote_add_uploads_objects(px: Pvtx, control: FakeControl) -> None:
    px.ok("begin", "empty")
    px.ok("add", px.res("watchdog_pinger.tar"))
    uploads = {path.removeprefix("/objects/"): (headers, body)
               for method, path, headers, body in control.requests if method == "PUT"}
    expected = tar_objects(px.res("watchdog_pinger.tar"))
    assert {sha: body for sha, (_, body) in uploads.items()} == expected
    assert all(h["Content-Type"] == "application/octet-stream" for h, _ in uploads.values())
    assert not any(px.objects.iterdir())


def test_remote_add_with_objects_needs_the_socket(px: Pvtx) -> None:
    px.ok("begin", "empty")
    before = (px.txdir / "current.json").read_bytes()
    code, _, err = px.run("add", px.res("watchdog_pinger.tar"))
    assert code == 255 and "control socket" in err
    assert (px.txdir / "current.json").read_bytes() == before


def test_console_script_exit_status(px: Pvtx) -> None:
    """The real entry point returns pvtx's statuses to the shell."""
    env = {**os.environ, "PVTXDIR": str(px.txdir)}
    command = [sys.executable, "-m", "pvreal", "tx"]
    subprocess.run([*command, "begin", "empty", str(px.objects)], env=env, check=True)
    result = subprocess.run([*command, "commit"], env=env, capture_output=True, text=True)
    assert result.returncode == 12
    assert "local transaction" in result.stderr


def test_stdin_takes_json_and_plain_tar_too(px: Pvtx) -> None:
    px.ok("begin", "empty", px.objects)
    px.ok("add", "-", stdin=px.res("os.json").read_bytes())
    px.ok("add", "-", stdin=px.res("watchdog_pinger.tar").read_bytes())
    state = json.loads(px.show())
    assert set(json.loads(px.res("os.json").read_bytes())) <= set(state)
    assert_objects_from(px, px.res("watchdog_pinger.tar"))


def test_queued_objects_are_verified_before_they_move(px: Pvtx) -> None:
    """Queues prepared by other tools may carry NNN__name/objects/; pvtx moves them blindly."""
    px.ok("queue", "new", px.queue, px.objects)
    step = px.queue / "000__hand-made"
    (step / "objects").mkdir(parents=True)
    (step / "json").write_bytes(px.res("state_with_spaces.json").read_bytes())
    content = b"object content"
    good = step / "objects" / hashlib.sha256(content).hexdigest()
    good.write_bytes(content)
    liar = step / "objects" / hashlib.sha256(b"something else").hexdigest()
    liar.write_bytes(content)
    px.ok("begin", "empty")
    before = (px.txdir / "current.json").read_bytes()
    code, _, err = px.run("queue", "process")
    assert code == 255 and liar.name in err
    assert (px.txdir / "current.json").read_bytes() == before
    assert not any(px.objects.iterdir())
    liar.unlink()
    px.ok("queue", "process")
    assert (px.objects / good.name).read_bytes() == content
    assert same_json(px.show(), px.res("state_with_spaces.json"))


def test_txdir_option_before_or_after_the_verb(px: Pvtx, tmp_path: Path) -> None:
    other = tmp_path / "other-txdir"
    px.ok("--txdir", other, "begin", "empty")
    assert (other / "current.json").is_file()
    assert px.run("show")[0] == 11  # $PVTXDIR holds no transaction
    assert same_json(px.ok("show", "--txdir", other), px.exp("state-empty.json"))
