"""`pvreal env list` of a two-copy env says which copy is current: a hardened pair (`--hardened`)
and a U-Boot redundant image whose partner lies beside it, in text and in JSON."""

from __future__ import annotations

import json

from test_cli_env import pvreal

from pvreal.bootenv import ubootenv

UBOOT = ("--format", "uboot", "--size", "0x400")


def test_hardened_uboot_list_marks_the_current_copy_with_its_flags(tmp_path, capsys):
    primary, second = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"
    pvreal("set", primary, "--hardened", *UBOOT, "pv_rev=0", capsys=capsys)
    pvreal("set", primary, "--hardened", "pv_rev=1", capsys=capsys)  # lands in the second copy
    rc, out, _ = pvreal("list", primary, "--hardened", capsys=capsys)
    assert rc == 0
    assert out == (
        f"# copy 1 {primary} (stale, flags 1)\n"
        f"# copy 2 {second} (current, flags 2)\n"
        "pv_rev=1\n"
    )
    pvreal("set", primary, "--hardened", "pv_rev=2", capsys=capsys)  # back in the first
    doc = json.loads(pvreal("list", primary, "--hardened", "--json", capsys=capsys)[1])
    assert doc == {
        "copies": [
            {"path": str(primary), "role": "current", "flags": 3, "problem": None},
            {"path": str(second), "role": "stale", "flags": 2, "problem": None},
        ],
        "env": {"pv_rev": "2"},
    }


def test_a_redundant_image_listed_alone_names_its_pair_and_warns_when_stale(tmp_path, capsys):
    primary, second = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"
    pvreal("set", primary, "--hardened", *UBOOT, "pv_rev=0", capsys=capsys)
    pvreal("set", primary, "--hardened", "pv_rev=1", capsys=capsys)
    # without --hardened: the file's own variables, and which copy U-Boot would use
    rc, out, err = pvreal("list", primary, capsys=capsys)
    assert rc == 0
    assert out.splitlines() == [
        f"# copy 1 {primary} (stale, flags 1)",
        f"# copy 2 {second} (current, flags 2)",
        "pv_rev=0",
    ]
    assert f"{primary} is not the current copy of its pair: {second} is (flags 2)" in err
    rc, out, err = pvreal("list", second, "--json", capsys=capsys)
    doc = json.loads(out)
    assert [c["role"] for c in doc["copies"]] == ["stale", "current"]
    assert doc["env"] == {"pv_rev": "1"} and err == ""


def test_a_damaged_copy_is_listed_as_damaged(tmp_path, capsys):
    primary, second = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"
    pvreal("set", primary, "--hardened", *UBOOT, "pv_rev=0", capsys=capsys)
    pvreal("set", primary, "--hardened", "pv_rev=1", capsys=capsys)
    second.write_bytes(second.read_bytes()[:300])  # the newest copy, torn
    rc, out, err = pvreal("list", primary, "--hardened", capsys=capsys)
    assert rc == 0
    assert out.splitlines() == [
        f"# copy 1 {primary} (current, flags 1)",
        f"# copy 2 {second} (damaged: is 300 bytes (truncated?), expected 1024)",
        "pv_rev=0",
    ]
    assert "warning" in err


def test_grub_pair_copies_written_together_are_identical(tmp_path, capsys):
    primary = tmp_path / "grubenv"
    pvreal("set", primary, "--hardened", "a=1", capsys=capsys)
    pvreal("set", primary, "--hardened", "a=2", capsys=capsys)
    out = pvreal("list", primary, "--hardened", capsys=capsys)[1]
    assert out.splitlines() == [
        f"# copy 1 {primary} (current, sequence 2)",
        f"# copy 2 {tmp_path / 'grubenv-redund'} (identical, sequence 2)",
        "a=2",
    ]


def test_single_files_list_only_variables(tmp_path, capsys):
    lone = tmp_path / "lone.env"  # redundant layout, but no partner beside it
    lone.write_bytes(ubootenv.encode_image({"a": "1"}, 1024, redundant=True, flags=7))
    assert pvreal("list", lone, capsys=capsys)[1:] == ("a=1\n", "")
    assert pvreal("list", lone, "--json", capsys=capsys)[1] == '{"a":"1"}\n'
