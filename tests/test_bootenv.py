"""Boot env codecs (grubenv, U-Boot images, uboot.txt), layout detection and the two store flavours."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvreal.bootenv import grubenv, layout, store, ubootenv
from pvreal.bootenv.errors import EnvCorrupt, EnvFull, InvalidEntry

# ---------------------------------------------------------------- alphabets each format allows

_ANY_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
GRUB_KEYS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="=\n\0"),
    min_size=1,
    max_size=12,
).filter(lambda k: not k.startswith("#"))
UBOOT_KEYS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="=\0"), min_size=1, max_size=12
)
VALUES = st.text(_ANY_TEXT, max_size=40)


def _grub_body_size(env: dict[str, str]) -> int:
    return sum(len(k.encode()) + 2 + len(grubenv._escape(v.encode())) for k, v in env.items())


# ---------------------------------------------------------------- GRUB block


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(GRUB_KEYS, VALUES, max_size=12))
def test_grub_round_trip(env):
    room = grubenv.BLOCK_SIZE - len(grubenv.HEADER)
    try:
        block = grubenv.encode(env)
    except EnvFull:
        assert _grub_body_size(env) > room
        return
    assert len(block) == grubenv.BLOCK_SIZE
    assert block.startswith(grubenv.HEADER)
    assert grubenv.decode(block) == env
    assert list(grubenv.decode(block)) == list(env)  # order is kept, as grub-editenv keeps it


def test_grub_layout_is_header_warning_lines_and_hash_padding():
    block = grubenv.encode({"pv_rev": "0", "pv_try": "1"})
    body = grubenv.HEADER + grubenv.WARNING + b"pv_rev=0\npv_try=1\n"
    assert block == body + b"#" * (1024 - len(body))


def test_grub_escapes_backslash_and_newline_like_grub():
    block = grubenv.encode({"v": "a\\b\nc"})
    assert b"v=a\\\\b\\\nc\n" in block
    assert grubenv.decode(block) == {"v": "a\\b\nc"}


def test_grub_drops_the_warning_comment_before_refusing_a_block_that_fits():
    room = grubenv.BLOCK_SIZE - len(grubenv.HEADER)
    env = {"k": "x" * (room - 3)}  # "k=" + value + "\n" fills the block exactly
    block = grubenv.encode(env)
    assert grubenv.WARNING not in block
    assert grubenv.decode(block) == env


def test_grub_overflow_is_a_clear_error():
    env = {f"key{i:03d}": "v" * 20 for i in range(60)}
    with pytest.raises(EnvFull, match=r"need \d+ bytes .* room for 999") as err:
        grubenv.encode(env, source="boot/grubenv")
    assert "boot/grubenv" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("a=b", "1", "'='"),
        ("a\0", "1", "NUL"),
        ("a\nb", "1", "newline"),
        ("#x", "1", "comment"),
        ("", "1", "empty"),
        ("ok", "x\0y", "NUL"),
    ],
)
def test_grub_rejects_entries_it_cannot_store(key, value, problem):
    with pytest.raises(InvalidEntry, match=problem):
        grubenv.encode({key: value})


def _grub_with_body(body: bytes) -> bytes:
    block = grubenv.HEADER + body
    return block + b"#" * (1024 - len(block))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is 0 bytes"),
        (grubenv.encode({"a": "1"})[:1000], r"1000 bytes \(truncated\?\)"),
        (grubenv.encode({"a": "1"}) + b"#", "1025 bytes; a GRUB environment block is exactly 1024"),
        (b"# GRUB Environment Blocc\n" + b"#" * 999, "does not start with the GRUB header"),
        (_grub_with_body(b"foo\nbar=1\n"), "has no '='"),
        (_grub_with_body(b"a=1\n" + b"\0" * 40), "NUL byte at offset 29"),
        ((grubenv.HEADER + b"a=1\nb=" + b"x" * 1024)[:1024], "without a newline"),
        (_grub_with_body(b"a=1\na=2\n"), "defined twice"),
        (_grub_with_body(b"a=\xff\n"), "not UTF-8"),
    ],
)
def test_grub_reports_what_is_wrong(data, problem):
    with pytest.raises(EnvCorrupt, match=problem) as err:
        grubenv.decode(data, source="/storage/boot/grubenv")
    assert str(err.value).startswith("/storage/boot/grubenv")


def test_grub_comments_anywhere_are_skipped():
    assert grubenv.decode(_grub_with_body(b"# note\na=1\n#x=2\nb=\n")) == {"a": "1", "b": ""}


# ---------------------------------------------------------------- U-Boot image


@settings(max_examples=200, deadline=None)
@given(
    env=st.dictionaries(UBOOT_KEYS, VALUES, max_size=10),
    redundant=st.booleans(),
    flags=st.integers(0, 255),
    pad=st.sampled_from([0x00, 0xFF]),
)
def test_uboot_round_trip(env, redundant, flags, pad):
    image = ubootenv.encode_image(env, 1024, redundant=redundant, flags=flags, pad=pad)
    assert len(image) == 1024
    decoded = ubootenv.decode_image(image)  # layout found from the CRC
    assert decoded.env == env
    assert decoded.redundant is redundant
    assert decoded.flags == (flags if redundant else None)


def test_uboot_image_bytes_are_crc_le_then_entries_then_padding():
    image = ubootenv.encode_image({"a": "1", "b": "x=y"}, 32, pad=0xFF)
    data = b"a=1\0b=x=y\0\0" + b"\xff" * (28 - 11)
    assert image == struct.pack("<I", zlib.crc32(data)) + data
    redundant = ubootenv.encode_image({"a": "1", "b": "x=y"}, 32, redundant=True, flags=7)
    rdata = b"a=1\0b=x=y\0\0" + b"\0" * (27 - 11)
    assert redundant == struct.pack("<I", zlib.crc32(rdata)) + b"\x07" + rdata


def test_uboot_empty_env_is_a_single_nul():
    image = ubootenv.encode_image({}, 16, pad=0xFF)
    assert image[4:] == b"\0" + b"\xff" * 11
    assert ubootenv.decode_image(image).env == {}


def test_uboot_overflow_is_a_clear_error():
    with pytest.raises(EnvFull, match="need 13 bytes but a 16-byte U-Boot env has room for 12"):
        ubootenv.encode_image({"key": "value12"}, 16)
    exact = ubootenv.encode_image({"key": "value1"}, 16)  # 11 + the end marker = 12: fits
    assert ubootenv.decode_image(exact).env == {"key": "value1"}


@pytest.mark.parametrize(("key", "value"), [("a=b", "1"), ("a\0b", "1"), ("", "1"), ("k", "v\0")])
def test_uboot_rejects_entries_it_cannot_store(key, value):
    with pytest.raises(InvalidEntry):
        ubootenv.encode_image({key: value}, 64)


def _with_crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data)) + data


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (b"\0\0", "too short"),
        (ubootenv.encode_image({"a": "1"}, 64)[:-1], "CRC32 does not match"),
        (_with_crc(b"a=1\0" + b"b" * 12), "no end-of-environment marker"),
        (_with_crc(b"junk\0\0" + b"\0" * 10), "without 'name='"),
        (_with_crc(b"a=1\0a=2\0\0" + b"\0" * 7), "defined twice"),
        (_with_crc(b"a=\xfe\0\0" + b"\0" * 11), "not UTF-8"),
    ],
)
def test_uboot_reports_what_is_wrong(image, problem):
    with pytest.raises(EnvCorrupt, match=problem):
        ubootenv.decode_image(image, source="uboot.env")


def test_uboot_flipped_bit_breaks_the_crc():
    image = bytearray(ubootenv.encode_image({"pv_rev": "3"}, 256))
    image[10] ^= 0x01
    with pytest.raises(EnvCorrupt, match="CRC32"):
        ubootenv.decode_image(bytes(image))


@pytest.mark.parametrize(
    ("flags_a", "flags_b", "newer"),
    [(1, 2, 1), (2, 1, 0), (5, 5, 0), (255, 0, 1), (0, 255, 0), (254, 255, 1), (0, 1, 1)],
)
def test_uboot_redundant_copy_choice_follows_uboot(flags_a, flags_b, newer):
    assert ubootenv.newer_copy(flags_a, flags_b) == newer


# ---------------------------------------------------------------- Pantavisor uboot.txt


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(UBOOT_KEYS, VALUES, max_size=10))
def test_uboot_txt_round_trip(env):
    data = ubootenv.encode_txt(env)
    assert len(data) == 1024
    assert ubootenv.decode_txt(data) == env


def test_uboot_txt_skips_empty_strings_like_pantavisor():
    data = b"\0\0pv_rev=2\0\0\0pv_try=3\0"
    data += b"\0" * (1024 - len(data))
    assert ubootenv.decode_txt(data) == {"pv_rev": "2", "pv_try": "3"}


def test_uboot_txt_size_and_overflow():
    with pytest.raises(EnvCorrupt, match="truncated"):
        ubootenv.decode_txt(b"pv_rev=0\0", source="uboot.txt")
    with pytest.raises(EnvFull, match="uboot.txt holds 1024"):
        ubootenv.encode_txt({"k": "v" * 1100})


# ---------------------------------------------------------------- layout detection


def test_detect_each_format():
    assert layout.detect_layout(grubenv.encode({"a": "1"})) == layout.grub()
    single = ubootenv.encode_image({"a": "1"}, 4096)
    assert layout.detect_layout(single) == layout.uboot(4096)
    redundant = ubootenv.encode_image({"a": "1"}, 4096, redundant=True)
    assert layout.detect_layout(redundant) == layout.uboot(4096, redundant=True)
    assert layout.detect_layout(ubootenv.encode_txt({"pv_rev": "0"})) == layout.uboot_txt()
    # an env at the start of a larger partition image, found with an explicit size
    assert layout.detect_layout(single + b"\0" * 1000, size=4096) == layout.uboot(4096)


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03" * 500, b"hello world\n"])
def test_detect_returns_none_for_unknown_bytes(data):
    assert layout.detect_layout(data) is None
    assert "not" in layout.describe_unknown(data)


def test_layout_rejects_impossible_combinations():
    with pytest.raises(ValueError):
        layout.EnvLayout("grub", 2048)
    with pytest.raises(ValueError):
        layout.EnvLayout("grub", 1024, redundant=True)
    with pytest.raises(ValueError):
        layout.EnvLayout("fat", 1024)


# ---------------------------------------------------------------- faithful store


@pytest.mark.parametrize("env_layout", [layout.grub(), layout.uboot(2048), layout.uboot_txt()])
def test_faithful_store_round_trip_in_place(tmp_path, env_layout):
    path = tmp_path / "env"
    env_store = store.open_store(path, env_layout)
    assert env_store.load() == {}
    env_store.save({"pv_rev": "0", "pv_try": "1"})
    inode = path.stat().st_ino
    env_store.save({"pv_rev": "1"})
    assert path.stat().st_ino == inode  # rewritten in place, like Pantavisor
    assert env_store.load() == {"pv_rev": "1"}
    assert path.stat().st_size == env_layout.size


def test_faithful_store_refuses_overflow_without_writing(tmp_path):
    path = tmp_path / "grubenv"
    env_store = store.FaithfulStore(path, layout.grub())
    env_store.save({"pv_rev": "0"})
    before = path.read_bytes()
    with pytest.raises(EnvFull):
        env_store.save({"big": "x" * 2000})
    assert path.read_bytes() == before


class PowerCut(Exception):
    pass


def _torn_in_place(written_fraction: float):
    """A write_in_place that stops part-way, as a power cut during the write would."""
    from pvreal.durable import write_in_place

    def torn(path, data, offset=0):
        write_in_place(path, data[: int(len(data) * written_fraction)], offset)
        raise PowerCut(str(path))

    return torn


def test_faithful_store_can_be_torn(tmp_path, monkeypatch):
    """The reason for the hardened flavour: a torn in-place write loses the only copy."""
    path = tmp_path / "uboot.env"
    env_store = store.FaithfulStore(path, layout.uboot(1024))
    env_store.save({"pv_rev": "0", "filler": "a" * 200})
    monkeypatch.setattr(store, "write_in_place", _torn_in_place(0.1))
    with pytest.raises(PowerCut):
        env_store.save({"pv_rev": "1", "filler": "b" * 200})
    with pytest.raises(EnvCorrupt, match="CRC32"):
        env_store.load()


# ---------------------------------------------------------------- hardened U-Boot store


def test_hardened_uboot_first_save_creates_both_valid_copies(tmp_path):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=1024)
    assert env_store.secondary == tmp_path / "uboot-redund.env"
    env_store.save({"pv_rev": "0"})
    for path in env_store.paths:
        image = ubootenv.decode_image(path.read_bytes(), redundant=True)
        assert image.env == {"pv_rev": "0"}
    assert env_store.load() == {"pv_rev": "0"}


def test_hardened_uboot_writes_only_the_older_copy(tmp_path):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=1024)
    env_store.save({"pv_rev": "0"})
    flags_seen = []
    for rev in range(1, 6):
        report = env_store.inspect()
        current = env_store.paths[report.chosen].read_bytes()
        env_store.save({"pv_rev": str(rev)})
        assert env_store.paths[report.chosen].read_bytes() == current  # untouched
        new_report = env_store.inspect()
        assert new_report.chosen == 1 - report.chosen
        assert new_report.env == {"pv_rev": str(rev)}
        flags_seen.append(new_report.copies[new_report.chosen].seq)
    assert flags_seen == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.95])
def test_hardened_uboot_survives_a_torn_write(tmp_path, monkeypatch, fraction):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=1024)
    env_store.save({"pv_rev": "0"})
    env_store.save({"pv_rev": "0", "pv_try": "1"})
    monkeypatch.setattr(store, "write_in_place", _torn_in_place(fraction))
    with pytest.raises(PowerCut):
        # the filler makes every part of the new image differ from the old bytes
        env_store.save({"pv_rev": "1", "pv_filler": "z" * 990})
    monkeypatch.undo()
    report = env_store.inspect()
    assert report.env == {"pv_rev": "0", "pv_try": "1"}  # the previous save, intact
    # and the next save repairs the torn copy
    env_store.save({"pv_rev": "1"})
    assert all(c.valid for c in env_store.inspect().copies)
    assert env_store.load() == {"pv_rev": "1"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_hardened_uboot_loads_the_other_copy_and_reports_damage(tmp_path, damage, caplog):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=1024)
    env_store.save({"pv_rev": "0"})
    env_store.save({"pv_rev": "1"})  # now in the secondary
    newest = env_store.paths[env_store.inspect().chosen]
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:500])
    elif damage == "flip":
        data = bytearray(newest.read_bytes())
        data[20] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.unlink()
    report = env_store.inspect()
    assert report.env == {"pv_rev": "0"}
    if damage != "delete":
        assert [c.path for c in report.damaged] == [newest]
        assert newest.name in caplog.text


def test_hardened_uboot_both_copies_corrupt_names_both(tmp_path):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=1024)
    env_store.save({"pv_rev": "0"})
    for path in env_store.paths:
        path.write_bytes(b"\xff" * 1024)
    with pytest.raises(EnvCorrupt) as err:
        env_store.load()
    assert "uboot.env" in str(err.value) and "uboot-redund.env" in str(err.value)
    env_store.save({"pv_rev": "5"})  # a save starts over from a fresh copy
    assert env_store.load() == {"pv_rev": "5"}


def test_hardened_uboot_flags_wrap_like_uboot(tmp_path):
    primary, secondary = tmp_path / "a.env", tmp_path / "b.env"
    primary.write_bytes(ubootenv.encode_image({"v": "old"}, 512, redundant=True, flags=255))
    secondary.write_bytes(ubootenv.encode_image({"v": "new"}, 512, redundant=True, flags=0))
    env_store = store.HardenedUbootStore(primary, secondary, size=512)
    assert env_store.load() == {"v": "new"}
    env_store.save({"v": "newer"})
    assert ubootenv.decode_image(primary.read_bytes()).flags == 1
    assert env_store.load() == {"v": "newer"}


# ---------------------------------------------------------------- hardened GRUB store


def test_hardened_grub_writes_both_copies_with_a_hidden_sequence(tmp_path):
    env_store = store.HardenedGrubStore(tmp_path / "grubenv")
    env_store.save({"pv_rev": "0"})
    env_store.save({"pv_rev": "0", "pv_try": "1"})
    for path in env_store.paths:
        raw = grubenv.decode(path.read_bytes())
        assert raw == {"pv_rev": "0", "pv_try": "1", store.GRUB_SEQ_KEY: "2"}
    assert env_store.load() == {"pv_rev": "0", "pv_try": "1"}


def test_hardened_grub_replaces_the_primary_atomically(tmp_path):
    env_store = store.HardenedGrubStore(tmp_path / "grubenv")
    env_store.save({"pv_rev": "0"})
    inode = env_store.primary.stat().st_ino
    env_store.save({"pv_rev": "1"})
    assert env_store.primary.stat().st_ino != inode  # a new file renamed over the old one


def test_hardened_grub_keeps_what_grub_wrote_in_the_primary(tmp_path):
    """GRUB's save_env edits only the primary and leaves the sequence alone: primary wins ties."""
    env_store = store.HardenedGrubStore(tmp_path / "grubenv")
    env_store.save({"pv_rev": "0", "pv_try": "1"})
    as_grub_saw_it = grubenv.decode(env_store.primary.read_bytes())
    as_grub_saw_it["pv_trying"] = "1"
    env_store.primary.write_bytes(grubenv.encode(as_grub_saw_it))
    assert env_store.load() == {"pv_rev": "0", "pv_try": "1", "pv_trying": "1"}


def test_hardened_grub_torn_primary_falls_back_to_the_copy(tmp_path, caplog):
    env_store = store.HardenedGrubStore(tmp_path / "grubenv")
    env_store.save({"pv_rev": "3"})
    torn = bytearray(env_store.primary.read_bytes())
    torn[512:] = b"\0" * 512  # GRUB's in-place save_env cut short by a power loss
    env_store.primary.write_bytes(bytes(torn))
    report = env_store.inspect()
    assert report.env == {"pv_rev": "3"}
    assert report.chosen == 1
    assert "NUL byte" in report.damaged[0].problem
    env_store.save({"pv_rev": "4"})  # the next save repairs the primary
    assert grubenv.decode(env_store.primary.read_bytes())["pv_rev"] == "4"


def test_hardened_grub_crash_between_copies_keeps_the_new_primary(tmp_path, monkeypatch):
    env_store = store.HardenedGrubStore(tmp_path / "grubenv")
    env_store.save({"pv_rev": "0"})
    real_atomic_write = store.atomic_write
    calls = []

    def crash_on_second(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise PowerCut(str(path))
        real_atomic_write(path, data)

    monkeypatch.setattr(store, "atomic_write", crash_on_second)
    with pytest.raises(PowerCut):
        env_store.save({"pv_rev": "1"})
    assert calls == [env_store.primary, env_store.secondary]
    report = env_store.inspect()
    assert report.env == {"pv_rev": "1"}  # what GRUB reads and what load says agree
    assert report.chosen == 0


def test_hardened_grub_reserved_key_and_bad_sequence(tmp_path):
    env_store = store.HardenedGrubStore(tmp_path / "grubenv", tmp_path / "grubenv.copy")
    with pytest.raises(InvalidEntry, match="reserved"):
        env_store.save({store.GRUB_SEQ_KEY: "9"})
    assert not env_store.primary.exists()
    env_store.save({"a": "1"})
    env_store.primary.write_bytes(grubenv.encode({"a": "2", store.GRUB_SEQ_KEY: "x"}))
    report = env_store.inspect()
    assert report.env == {"a": "1"}
    assert "not a number" in report.damaged[0].problem


def test_open_store_picks_the_flavour(tmp_path):
    assert isinstance(store.open_store(tmp_path / "e", layout.grub()), store.FaithfulStore)
    grub_store = store.open_store(tmp_path / "g", layout.grub(), "hardened")
    assert isinstance(grub_store, store.HardenedGrubStore)
    uboot_store = store.open_store(tmp_path / "u", layout.uboot(4096), "hardened")
    assert isinstance(uboot_store, store.HardenedUbootStore)
    assert uboot_store.layout.size == 4096
    with pytest.raises(ValueError, match="uboot.txt has no redundant form"):
        store.open_store(tmp_path / "t", layout.uboot_txt(), "hardened")
    with pytest.raises(ValueError, match="unknown ordering"):
        store.open_store(tmp_path / "t", layout.grub(), "sloppy")
