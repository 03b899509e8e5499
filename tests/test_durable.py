"""pvreal.durable: atomic replace and Pantavisor-style in-place writes, on real files."""

from __future__ import annotations

import os
import stat

import pytest

from pvreal import durable


@pytest.fixture
def fsync_log(monkeypatch):
    """Record what each fsync call flushed: 'dir' or 'file'."""
    calls: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    return calls


def test_atomic_write_creates_file_with_content_and_default_mode(tmp_path):
    target = tmp_path / "grubenv"
    durable.atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == durable.DEFAULT_MODE


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "env"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o600)
    durable.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_syncs_file_before_folder(tmp_path, fsync_log):
    durable.atomic_write(tmp_path / "env", b"x" * 10)
    assert fsync_log == ["file", "dir"]


def test_atomic_write_failure_keeps_old_content_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "env"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        durable.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env"]


def test_atomic_write_never_leaves_a_sparse_file(tmp_path):
    target = tmp_path / "grubenv"
    durable.atomic_write(target, b"#" * 4096)
    assert target.stat().st_blocks * 512 >= target.stat().st_size


def test_write_in_place_overwrites_prefix_and_keeps_the_rest(tmp_path):
    target = tmp_path / "uboot.txt"
    target.write_bytes(b"A" * 10)
    inode = target.stat().st_ino
    durable.write_in_place(target, b"bbb")
    assert target.read_bytes() == b"bbbAAAAAAA"
    assert target.stat().st_ino == inode  # same file, not a replacement


def test_write_in_place_at_offset(tmp_path):
    target = tmp_path / "disk.img"
    target.write_bytes(b"\0" * 8)
    durable.write_in_place(target, b"xy", offset=6)
    durable.write_in_place(target, b"zz", offset=8)  # appending at the very end is fine
    assert target.read_bytes() == b"\0" * 6 + b"xyzz"


def test_write_in_place_uses_o_sync_and_fsyncs_new_file_folder(tmp_path, monkeypatch, fsync_log):
    flags_seen: list[int] = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        flags_seen.append(flags)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(durable.os, "open", recording_open)
    durable.write_in_place(tmp_path / "new", b"data")
    assert flags_seen[0] & os.O_SYNC == os.O_SYNC
    assert fsync_log == ["file", "dir"]  # the new directory entry is made durable too


def test_write_in_place_refuses_to_leave_a_hole(tmp_path):
    existing = tmp_path / "short"
    existing.write_bytes(b"abc")
    with pytest.raises(ValueError, match="sparse"):
        durable.write_in_place(existing, b"x", offset=10)
    assert existing.read_bytes() == b"abc"
    with pytest.raises(ValueError, match="sparse"):
        durable.write_in_place(tmp_path / "absent", b"x", offset=1)
    assert not (tmp_path / "absent").exists()


def test_write_in_place_writes_everything_when_pwrite_is_short(tmp_path, monkeypatch):
    real_pwrite = os.pwrite

    def short_pwrite(fd, data, offset):
        return real_pwrite(fd, bytes(data[:3]), offset)

    monkeypatch.setattr(durable.os, "pwrite", short_pwrite)
    durable.write_in_place(tmp_path / "f", b"0123456789")
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_fsync_dir_rejects_a_regular_file(tmp_path):
    regular = tmp_path / "f"
    regular.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(regular)
