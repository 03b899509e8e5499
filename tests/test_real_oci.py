"""pvreal.oci: OCI layouts and `docker save` tarballs built here, layers applied in order,
whiteouts honoured, nothing written outside the destination."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pvreal.oci import OciError, extract_image


def _tar_bytes(entries: list[tuple], *, gz: bool = False) -> bytes:
    """entries: (name, kind, payload) with kind file|dir|symlink|hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "exec":
                info.size, info.mode = len(payload), 0o755
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            tar.addfile(info)
    data = buf.getvalue()
    return gzip.compress(data, mtime=0) if gz else data


def _outer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = {"config": {"Cmd": ["/bin/app", "--serve"], "Env": ["A=1"], "Volumes": {"/data": {}}}}

LOWER = [
    ("etc", "dir", None),
    ("etc/keep", "file", b"keep"),
    ("etc/gone", "file", b"deleted by the upper layer"),
    ("opaque", "dir", None),
    ("opaque/old1", "file", b"hidden by opaque"),
    ("opaque/sub", "dir", None),
    ("opaque/sub/old2", "file", b"hidden too"),
    ("bin", "dir", None),
    ("bin/app", "exec", b"#!/bin/sh\necho app\n"),
    ("lib", "symlink", "/usr/lib"),
    ("usr/lib", "dir", None),
]
UPPER = [
    ("etc/.wh.gone", "file", b""),
    ("opaque/.wh..wh..opq", "file", b""),
    ("opaque/new", "file", b"added with the opaque marker"),
    ("etc/keep", "file", b"replaced"),
    ("lib/libx.so", "file", b"through an absolute symlink, re-rooted"),
    ("bin/app-link", "hardlink", "bin/app"),
]


def oci_layout_tar(layers: list[list[tuple]], path: Path) -> Path:
    blobs: dict[str, bytes] = {}
    descs = []
    for layer in layers:
        data = _tar_bytes(layer, gz=True)
        blobs[_digest(data)] = data
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(data),
                "size": len(data),
            }
        )
    config = json.dumps(CONFIG).encode()
    blobs[_digest(config)] = config
    manifest = json.dumps(
        {"schemaVersion": 2, "config": {"digest": _digest(config)}, "layers": descs}
    ).encode()
    blobs[_digest(manifest)] = manifest
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "digest": _digest(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "test:1"},
            }
        ],
    }
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(index).encode(),
    }
    files.update({"blobs/sha256/" + d.split(":")[1]: b for d, b in blobs.items()})
    path.write_bytes(_outer(files))
    return path


def docker_save_tar(layers: list[list[tuple]], path: Path) -> Path:
    files: dict[str, bytes] = {}
    names = []
    for n, layer in enumerate(layers):
        files[f"l{n}/layer.tar"] = _tar_bytes(layer)
        names.append(f"l{n}/layer.tar")
    config = json.dumps(CONFIG).encode()
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    files[cfg_name] = config
    files["manifest.json"] = json.dumps(
        [{"Config": cfg_name, "RepoTags": ["demo:2"], "Layers": names}]
    ).encode()
    path.write_bytes(_outer(files))
    return path


@pytest.mark.parametrize("build", [oci_layout_tar, docker_save_tar])
def test_layers_in_order_with_whiteouts(tmp_path: Path, build):
    image = extract_image(build([LOWER, UPPER], tmp_path / "img.tar"), tmp_path / "rootfs")
    root = tmp_path / "rootfs"
    assert (root / "etc/keep").read_bytes() == b"replaced"
    assert not (root / "etc/gone").exists()
    assert sorted(os.listdir(root / "opaque")) == ["new"]
    assert not any(name.startswith(".wh.") for _, _, files in os.walk(root) for name in files)
    assert (root / "usr/lib/libx.so").read_bytes() == b"through an absolute symlink, re-rooted"
    assert os.readlink(root / "lib") == "/usr/lib"  # stored verbatim, never followed on the host
    assert os.path.samestat((root / "bin/app").stat(), (root / "bin/app-link").stat())
    assert os.stat(root / "bin/app").st_mode & 0o777 == 0o755
    assert image.init_args == ["/bin/app", "--serve"]
    assert image.config["Volumes"] == {"/data": {}}
    assert image.repo_tags in (("test:1",), ("demo:2",))


@pytest.mark.parametrize(
    "evil",
    [
        [("../escape", "file", b"x")],
        [("ok/../../escape", "file", b"x")],
        [("link", "hardlink", "../../etc/passwd")],
        [("link", "hardlink", "/nonexistent-in-image")],
    ],
)
def test_escapes_are_refused(tmp_path: Path, evil):
    with pytest.raises(OciError):
        extract_image(docker_save_tar([evil], tmp_path / "evil.tar"), tmp_path / "rootfs")
    assert not (tmp_path / "escape").exists()


def test_symlink_to_outside_cannot_redirect_writes(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = [
        [("evil", "symlink", str(outside))],  # absolute host path: re-rooted inside the image
        [("evil/planted", "file", b"x")],
        [("up", "symlink", "../../../..")],
        [("up/planted2", "file", b"y")],
    ]
    extract_image(docker_save_tar(layers, tmp_path / "img.tar"), tmp_path / "rootfs")
    assert list(outside.iterdir()) == []
    root = tmp_path / "rootfs"
    assert (root / str(outside).lstrip("/") / "planted").read_bytes() == b"x"
    assert (root / "planted2").read_bytes() == b"y"  # '..' stops at the image root


def test_not_an_image(tmp_path: Path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_outer({"hello.txt": b"hi"}))
    with pytest.raises(OciError, match="neither index.json"):
        extract_image(bad, tmp_path / "rootfs")
