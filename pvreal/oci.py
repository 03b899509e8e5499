"""OCI image layout or `docker save` tarball → a root filesystem folder.

Layers are applied in manifest order. Whiteouts follow the OCI image spec: `.wh.<name>` deletes
`<name>` from the lower layers, `.wh..wh..opq` empties its folder of everything the lower layers
put there. Extraction is confined to the destination the way a chroot would be: member names with
`..` are rejected, symlinks met on the way are resolved as if `dest` were `/` (an absolute target
re-roots at `dest`), hard links must name a file inside the image, and files are opened with
O_NOFOLLOW. Symlink targets are stored verbatim: they are read inside the container, never here.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.errors import PvError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_AM_ROOT = os.geteuid() == 0


class OciError(PvError):
    """A malformed image or a layer member that would escape the root filesystem."""


@dataclass(frozen=True, slots=True)
class OciImage:
    """What an image says about itself: its layers (in order) and its container config."""

    layers: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)  # the image's "config" object
    repo_tags: tuple[str, ...] = ()
    config_digest: str = ""

    @property
    def init_args(self) -> list[str]:
        """Entrypoint + Cmd, the process a runtime would start."""
        args = list(self.config.get("Entrypoint") or []) + list(self.config.get("Cmd") or [])
        return args or ["/sbin/init"]


# --------------------------------------------------------------------------------------------
# Reading the archive (a tarball or an unpacked OCI layout folder)


class _Archive:
    def __init__(self, source: Path):
        self.source = Path(source)
        self._tar = None if self.source.is_dir() else tarfile.open(self.source, "r:*")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def open(self, name: str) -> IO[bytes]:
        name = name[2:] if name.startswith("./") else name
        if self._tar is None:
            path = self.source / name
            if not path.is_file():
                raise OciError("image file missing", source=str(self.source), key=name)
            return open(path, "rb")
        for candidate in (name, "./" + name):
            try:
                f = self._tar.extractfile(candidate)
            except KeyError:
                continue
            if f is not None:
                return f
        raise OciError("image file missing", source=str(self.source), key=name)

    def has(self, name: str) -> bool:
        try:
            self.open(name).close()
        except OciError:
            return False
        return True

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            try:
                return json.load(f)
            except (ValueError, UnicodeDecodeError) as exc:
                raise OciError(f"not JSON: {exc}", source=str(self.source), key=name) from None


def _blob(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if not hexpart or "/" in hexpart or "/" in algo:
        raise OciError("malformed digest", key=digest)
    return f"blobs/{algo}/{hexpart}"


def read_image(archive: _Archive) -> OciImage:
    """Find the layers and config: OCI `index.json` first, then docker's `manifest.json`."""
    src = str(archive.source)
    if archive.has("index.json"):
        index = archive.json("index.json")
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not manifests:
            raise OciError("no manifests", source=src, key="index.json")
        manifest = archive.json(_blob(manifests[0]["digest"]))
        if "manifests" in manifest:  # an image index nested in the layout: take its first entry
            manifest = archive.json(_blob(manifest["manifests"][0]["digest"]))
        layers = tuple(_blob(layer["digest"]) for layer in manifest.get("layers", []))
        config_desc = manifest.get("config") or {}
        config = archive.json(_blob(config_desc["digest"])) if config_desc else {}
        tags = tuple(
            m.get("annotations", {}).get("org.opencontainers.image.ref.name", "") for m in manifests
        )
        return OciImage(
            layers,
            config.get("config") or {},
            tuple(t for t in tags if t),
            config_desc.get("digest", ""),
        )
    if archive.has("manifest.json"):
        entries = archive.json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise OciError("expected a non-empty list", source=src, key="manifest.json")
        entry = entries[0]
        config = archive.json(entry["Config"]) if entry.get("Config") else {}
        digest = entry.get("Config", "")
        digest = "sha256:" + posixpath.basename(digest).removesuffix(".json") if digest else ""
        return OciImage(
            tuple(entry.get("Layers") or ()),
            config.get("config") or {},
            tuple(entry.get("RepoTags") or ()),
            digest,
        )
    raise OciError("neither index.json (OCI layout) nor manifest.json (docker save)", source=src)


# --------------------------------------------------------------------------------------------
# Confined path resolution


class _Root:
    """Resolves image paths inside `root` with chroot semantics."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def parent_of(self, parts: list[str], *, create: bool) -> Path | None:
        """The real folder that will hold `parts[-1]`; None when it is missing and not `create`."""
        resolved: list[str] = []
        pending = list(parts[:-1])
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            here = self.root.joinpath(*resolved, part)
            if here.is_symlink():
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise OciError("too many levels of symbolic links", key="/".join(parts))
                target = os.readlink(here)
                if target.startswith("/"):
                    resolved = []
                pending = target.split("/") + pending
                continue
            if here.exists() and not here.is_dir():
                raise OciError("a path component is not a folder", key="/".join(parts))
            if not here.exists():
                if not create:
                    return None
                here.mkdir(mode=0o755)
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def resolve_existing(self, parts: list[str]) -> Path | None:
        """Follow every component, the last one too (hard link targets)."""
        parent = self.parent_of(parts, create=False)
        if parent is None:
            return None
        path = parent / parts[-1]
        if path.is_symlink():
            return path  # a hard link to a symlink links the symlink itself
        return path if path.exists() else None


def _member_parts(member: tarfile.TarInfo, layer: str) -> list[str] | None:
    """Split a member name; None for the root entry itself; an error for `..`."""
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OciError(
            "member name climbs out of the image with '..'", source=layer, key=member.name
        )
    return parts or None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------------
# Applying layers


def _apply_whiteouts(members: list[tarfile.TarInfo], root: _Root, layer: str) -> None:
    for member in members:
        parts = _member_parts(member, layer)
        if not parts or not parts[-1].startswith(WHITEOUT_PREFIX):
            continue
        parent = root.parent_of(parts, create=False)
        if parent is None:
            continue
        if parts[-1] == OPAQUE_MARKER:
            for child in list(parent.iterdir()):
                _remove(child)
        else:
            _remove(parent / parts[-1][len(WHITEOUT_PREFIX) :])


def _set_attrs(path: Path, member: tarfile.TarInfo) -> None:
    if _AM_ROOT:
        os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, stat.S_IMODE(member.mode))
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: _Root, layer: str) -> None:
    parts = _member_parts(member, layer)
    if parts is None:
        return
    if parts[-1].startswith(WHITEOUT_PREFIX):
        return
    parent = root.parent_of(parts, create=True)
    assert parent is not None
    target = parent / parts[-1]
    if member.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            _remove(target)
        target.mkdir(exist_ok=True)
        _set_attrs(target, member)
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    if member.isreg():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(member)
            if src is not None:
                shutil.copyfileobj(src, out, 1 << 20)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        link_parts = [p for p in member.linkname.split("/") if p not in ("", ".")]
        if not link_parts or ".." in link_parts:
            raise OciError("hard link target outside the image", source=layer, key=member.name)
        source = root.resolve_existing(link_parts)
        if source is None or (source.is_dir() and not source.is_symlink()):
            raise OciError(
                f"hard link target {member.linkname!r} is not a file in the image",
                source=layer,
                key=member.name,
            )
        os.link(source, target, follow_symlinks=False)
        return
    elif member.isfifo():
        os.mkfifo(target)
    else:
        return  # device nodes: the container runtime provides /dev
    _set_attrs(target, member)


def apply_layer(layer_file: IO[bytes], dest: Path, *, label: str) -> None:
    """Apply one layer tar (plain or compressed) on top of `dest`."""
    root = _Root(dest)
    with tarfile.open(fileobj=layer_file, mode="r:*") as tar:
        members = tar.getmembers()
        _apply_whiteouts(members, root, label)
        for member in members:
            _extract_member(tar, member, root, label)


def extract_image(source: Path, dest: Path) -> OciImage:
    """Unpack an OCI layout (folder or tar) or a `docker save` tarball into the empty folder `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise OciError("destination folder is not empty", source=str(dest))
    archive = _Archive(source)
    try:
        image = read_image(archive)
        for layer in image.layers:
            with archive.open(layer) as f:
                try:
                    apply_layer(f, dest, label=f"{source}:{layer}")
                except tarfile.TarError as exc:
                    raise OciError(
                        f"unreadable layer: {exc}", source=str(source), key=layer
                    ) from None
        os.chmod(dest, 0o755)
        return image
    finally:
        archive.close()
