"""`pvreal env list|get|set|unset` on real files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pvreal.bootenv import grubenv, ubootenv
from pvreal.cli import build_parser, run

ONLY_ENV = ("pvreal.cli.env",)


def pvreal(*argv, capsys):
    """Run `pvreal env ...` in-process with only the env group; returns (rc, stdout, stderr)."""
    rc = run(build_parser("pvreal", "", ONLY_ENV), ["env", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_set_creates_a_grubenv_then_list_get_unset(tmp_path, capsys):
    env_file = tmp_path / "grubenv"
    assert pvreal("set", env_file, "pv_rev=0", "pv_try=1", capsys=capsys)[0] == 0
    assert env_file.stat().st_size == 1024
    assert grubenv.decode(env_file.read_bytes()) == {"pv_rev": "0", "pv_try": "1"}
    assert pvreal("list", env_file, capsys=capsys) == (0, "pv_rev=0\npv_try=1\n", "")
    assert pvreal("get", env_file, "pv_try", capsys=capsys) == (0, "1\n", "")
    assert pvreal("unset", env_file, "pv_try", capsys=capsys)[0] == 0
    assert pvreal("list", env_file, "--json", capsys=capsys)[1] == '{"pv_rev":"0"}\n'
    assert pvreal("get", env_file, "pv_rev", "--json", capsys=capsys)[1] == '{"pv_rev":"0"}\n'


def test_set_updates_in_order_and_values_may_hold_equals(tmp_path, capsys):
    env_file = tmp_path / "grubenv"
    pvreal("set", env_file, "a=1", "b=2", capsys=capsys)
    pvreal("set", env_file, "a=x=y", "c=", capsys=capsys)
    assert list(grubenv.decode(env_file.read_bytes()).items()) == [
        ("a", "x=y"),
        ("b", "2"),
        ("c", ""),
    ]


def test_uboot_image_created_with_default_and_explicit_size(tmp_path, capsys):
    default = tmp_path / "uboot.env"
    assert pvreal("set", default, "--format", "uboot", "pv_rev=0", capsys=capsys)[0] == 0
    assert default.stat().st_size == ubootenv.DEFAULT_SIZE
    small = tmp_path / "small.env"
    pvreal("set", small, "--format", "uboot", "--size", "0x400", "pv_rev=0", capsys=capsys)
    assert small.stat().st_size == 0x400
    # later commands detect the format and size from the file
    pvreal("set", small, "pv_try=1", capsys=capsys)
    image = ubootenv.decode_image(small.read_bytes())
    assert image.env == {"pv_rev": "0", "pv_try": "1"}
    assert not image.redundant


def test_redundant_copy_bumps_flags_on_each_set(tmp_path, capsys):
    copy = tmp_path / "uboot.env"
    pvreal("set", copy, "--format", "uboot", "--redundant", "--size", "1024", "a=1", capsys=capsys)
    assert ubootenv.decode_image(copy.read_bytes(), redundant=True).flags == 1
    pvreal("set", copy, "a=2", capsys=capsys)  # the redundant layout is detected
    image = ubootenv.decode_image(copy.read_bytes(), redundant=True)
    assert (image.env, image.flags) == ({"a": "2"}, 2)
    assert pvreal("list", copy, "--redundant", capsys=capsys)[1] == "a=2\n"


def test_uboot_txt_is_detected(tmp_path, capsys):
    txt = tmp_path / "uboot.txt"
    txt.write_bytes(ubootenv.encode_txt({"pv_rev": "4"}))
    assert pvreal("get", txt, "pv_rev", capsys=capsys)[1] == "4\n"
    pvreal("set", txt, "pv_try=5", capsys=capsys)
    assert ubootenv.decode_txt(txt.read_bytes()) == {"pv_rev": "4", "pv_try": "5"}


def test_env_at_the_start_of_a_larger_file_is_edited_in_place(tmp_path, capsys):
    disk = tmp_path / "env-partition.img"
    tail = b"\xaa" * 3072
    disk.write_bytes(ubootenv.encode_image({"pv_rev": "0"}, 1024) + tail)
    inode = disk.stat().st_ino
    assert pvreal("set", disk, "--size", "1024", "pv_rev=1", capsys=capsys)[0] == 0
    data = disk.read_bytes()
    assert ubootenv.decode_image(data[:1024]).env == {"pv_rev": "1"}
    assert data[1024:] == tail
    assert disk.stat().st_ino == inode


def _flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x55
    return bytes(changed)


GRUB_OK = grubenv.encode({"pv_rev": "0", "pv_try": "1"})
UBOOT_OK = ubootenv.encode_image({"pv_rev": "0"}, 2048)


@pytest.mark.parametrize(
    ("content", "extra", "problem"),
    [
        (GRUB_OK[:700], [], "700 bytes (truncated?)"),
        (GRUB_OK.replace(b"pv_try=1", b"pv_try 1"), [], "has no '='"),
        (_flip(UBOOT_OK, 40), [], "format not recognised"),
        (_flip(UBOOT_OK, 40), ["--format", "uboot"], "CRC32 does not match"),
        (UBOOT_OK[:1500], ["--format", "uboot", "--size", "2048"], "shorter than the U-Boot env"),
        (b"", [], "is empty"),
        (b"\x00\x01garbage" * 50, [], "format not recognised"),
        (UBOOT_OK, ["--format", "grub"], "is 2048 bytes"),
    ],
)
@pytest.mark.parametrize(
    "verb", [["list"], ["get", "pv_rev"], ["set", "pv_rev=9"], ["unset", "pv_rev"]]
)
def test_corrupt_file_is_reported_and_never_rewritten(
    tmp_path, capsys, content, extra, problem, verb
):
    env_file = tmp_path / "bootenv"
    env_file.write_bytes(content)
    rc, out, err = pvreal(verb[0], env_file, *verb[1:], *extra, capsys=capsys)
    assert rc == 1
    assert out == ""
    assert str(env_file) in err and problem in err
    assert env_file.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bootenv"]  # no temp file left


def test_overflow_is_refused_and_nothing_written(tmp_path, capsys):
    env_file = tmp_path / "grubenv"
    pvreal("set", env_file, "pv_rev=0", capsys=capsys)
    before = env_file.read_bytes()
    rc, _, err = pvreal("set", env_file, "big=" + "x" * 1100, capsys=capsys)
    assert rc == 1 and "room for" in err and "nothing was written" in err
    assert env_file.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["set", "{f}", "novalue"], "expected KEY=VALUE"),
        (["set", "{f}", "#hidden=1"], "comment"),
        (["set", "{f}", "=1"], "empty variable name"),
        (["get", "{f}", "absent"], "key 'absent': variable not set"),
        (["list", "{f}", "--size", "4096"], "apply to U-Boot images only"),
        (["list", "{missing}"], "no such file"),
    ],
)
def test_bad_requests_exit_1_with_a_reason(tmp_path, capsys, argv, problem):
    env_file = tmp_path / "grubenv"
    env_file.write_bytes(GRUB_OK)
    argv = [a.format(f=env_file, missing=tmp_path / "nope") for a in argv]
    rc, _, err = pvreal(*argv, capsys=capsys)
    assert rc == 1 and problem in err
    assert env_file.read_bytes() == GRUB_OK


def test_unset_of_an_absent_key_does_not_rewrite(tmp_path, capsys):
    env_file = tmp_path / "grubenv"
    env_file.write_bytes(GRUB_OK)
    inode = env_file.stat().st_ino
    assert pvreal("unset", env_file, "nothing", capsys=capsys)[0] == 0
    assert env_file.stat().st_ino == inode


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pvreal("set", tmp_path / "grubenv", capsys=capsys)
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        pvreal("list", tmp_path / "x", "--size", "lots", capsys=capsys)


def test_registered_in_the_real_pvreal_command(tmp_path):
    env_file = tmp_path / "grubenv"
    env_file.write_bytes(GRUB_OK)
    done = subprocess.run(
        [sys.executable, "-m", "pvreal", "env", "list", str(env_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pv_rev": "0", "pv_try": "1"}


# ---------------------------------------------------------------- --hardened: two-copy stores


def test_hardened_grub_pair_via_cli(tmp_path, capsys):
    primary = tmp_path / "grubenv"
    assert pvreal("set", primary, "--hardened", "pv_rev=0", "pv_try=1", capsys=capsys)[0] == 0
    second = tmp_path / "grubenv-redund"
    for copy in (primary, second):
        assert grubenv.decode(copy.read_bytes())["pv_try"] == "1"
    listed = json.loads(pvreal("list", primary, "--hardened", "--json", capsys=capsys)[1])
    assert listed["env"] == {"pv_rev": "0", "pv_try": "1"}  # beside "copies" (test_cli_env_copies)
    # the single-file view shows the store's sequence marker, as grub-editenv would
    assert "pvtwin_env_seq=1" in pvreal("list", primary, capsys=capsys)[1]


def test_hardened_uboot_pair_via_cli_with_explicit_second(tmp_path, capsys):
    primary, second = tmp_path / "env.a", tmp_path / "env.b"
    argv = ["--hardened", "--second", second, "--format", "uboot", "--size", "0x400"]
    assert pvreal("set", primary, *argv, "pv_rev=0", capsys=capsys)[0] == 0
    assert (
        pvreal("set", primary, "--hardened", "--second", second, "pv_rev=1", capsys=capsys)[0] == 0
    )
    images = [ubootenv.decode_image(p.read_bytes(), redundant=True) for p in (primary, second)]
    assert [i.env for i in images] == [{"pv_rev": "0"}, {"pv_rev": "1"}]
    assert [i.flags for i in images] == [1, 2]
    assert pvreal("get", primary, "pv_rev", "--hardened", "--second", second, capsys=capsys)[1] == (
        "1\n"
    )


def test_hardened_cli_uses_the_good_copy_warns_and_repairs(tmp_path, capsys):
    primary = tmp_path / "uboot.env"
    argv = ["--hardened", "--format", "uboot", "--size", "1024"]
    pvreal("set", primary, *argv, "pv_rev=0", capsys=capsys)
    pvreal("set", primary, "--hardened", "pv_rev=1", capsys=capsys)  # lands in the second copy
    second = tmp_path / "uboot-redund.env"
    second.write_bytes(second.read_bytes()[:300])  # torn
    rc, out, err = pvreal("get", primary, "pv_rev", "--hardened", capsys=capsys)
    assert (rc, out) == (0, "0\n")
    assert f"warning: {second}: is 300 bytes (truncated?)" in err
    pvreal("set", primary, "--hardened", "pv_rev=2", capsys=capsys)
    assert ubootenv.decode_image(second.read_bytes(), redundant=True).env == {"pv_rev": "2"}


def test_hardened_cli_both_copies_bad_is_an_error_and_writes_nothing(tmp_path, capsys):
    primary, second = tmp_path / "grubenv", tmp_path / "grubenv-redund"
    primary.write_bytes(GRUB_OK[:100])
    second.write_bytes(b"")
    for verb in (["list"], ["set", "a=1"], ["unset", "pv_rev"]):
        rc, _, err = pvreal(verb[0], primary, *verb[1:], "--hardened", capsys=capsys)
        assert rc == 1 and "no valid copy" in err and str(second) in err
    assert primary.read_bytes() == GRUB_OK[:100] and second.read_bytes() == b""
    rc, _, err = pvreal("list", tmp_path / "absent", "--hardened", capsys=capsys)
    assert rc == 1 and "no such file, nor its second copy" in err
    rc, _, err = pvreal("list", primary, "--second", second, capsys=capsys)
    assert rc == 1 and "--second needs --hardened" in err


def test_unwritable_or_impossible_targets_are_reported(tmp_path, capsys):
    rc, _, err = pvreal("set", tmp_path / "no-dir" / "grubenv", "a=1", capsys=capsys)
    assert rc == 1 and "cannot write" in err
    rc, _, err = pvreal("set", tmp_path / "nd" / "env", "--hardened", "a=1", capsys=capsys)
    assert rc == 1 and "cannot write" in err
    rc, _, err = pvreal(
        "set", tmp_path / "t", "--hardened", "--format", "uboot-txt", "a=1", capsys=capsys
    )
    assert rc == 1 and "no hardened store" in err
    empty = tmp_path / "empty.env"
    empty.write_bytes(b"")
    rc, _, err = pvreal("list", empty, "--hardened", "--format", "uboot", capsys=capsys)
    assert rc == 1 and "cannot hold anything" in err
