"""Interoperability with the real tools: grub-editenv (grub-common), mkenvimage (u-boot-tools) and
fw_printenv/fw_setenv (libubootenv-tool on Debian 12). Files live in tmp_path; nothing is faked.

Each direction is checked: files pvtwin writes are read by the tool, and files the tool writes are
read by pvtwin, byte for byte where the tool's output is deterministic.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvreal.bootenv import grubenv, layout, store, ubootenv
from pvreal.bootenv.errors import EnvFull


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


@pytest.fixture
def grub_editenv() -> str:
    return _tool("grub-editenv", "grub-common")


@pytest.fixture
def mkenvimage() -> str:
    return _tool("mkenvimage", "u-boot-tools")


@pytest.fixture
def fw_tools() -> tuple[str, str]:
    # Debian 12 ships fw_printenv/fw_setenv in libubootenv-tool (only recommended by u-boot-tools)
    return _tool("fw_printenv", "libubootenv-tool"), _tool("fw_setenv", "libubootenv-tool")


def run(*argv: str | Path, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], input=stdin, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"{argv}: rc={done.returncode} {done.stderr.decode()}"
    return done.stdout.decode()


def fw_config(folder: Path, *copies: Path, size: int) -> Path:
    """fw_env.config: one `DEVICE OFFSET ENVSIZE` line per copy (numbers in hex, as it parses)."""
    config = folder / "fw_env.config"
    config.write_text("".join(f"{copy} 0x0 {size:#x}\n" for copy in copies))
    return config


def printenv(fw_printenv: str, config: Path) -> dict[str, str]:
    lines = run(fw_printenv, "-c", config).splitlines()
    return dict(line.split("=", 1) for line in lines)


# Names and values every tool below can carry on its command line or text input. A name starting
# with '-' would be taken for an option (grub-editenv has no '--').
SIMPLE_KEYS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#"),
    min_size=1,
    max_size=10,
).filter(lambda key: not key.startswith("-"))
SIMPLE_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
INTEROP = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ------------------------------------------------------------------------------ GRUB


@INTEROP
@given(st.dictionaries(SIMPLE_KEYS, SIMPLE_VALUES | st.just("back\\slash\nnew line"), max_size=6))
def test_grub_editenv_writes_what_we_write_byte_for_byte(tmp_path, grub_editenv, env):
    theirs = tmp_path / "theirs"
    theirs.unlink(missing_ok=True)
    run(grub_editenv, theirs, "create")
    if env:
        run(grub_editenv, theirs, "set", *[f"{k}={v}" for k, v in env.items()])
    assert grubenv.decode(theirs.read_bytes()) == env
    assert grubenv.encode(env) == theirs.read_bytes()


@INTEROP
@given(st.dictionaries(SIMPLE_KEYS, SIMPLE_VALUES | st.just("a\\b\nc\\\n"), max_size=6))
def test_grub_editenv_reads_and_edits_what_we_write(tmp_path, grub_editenv, env):
    ours = tmp_path / "grubenv"
    ours.write_bytes(grubenv.encode(env))
    listed = run(grub_editenv, ours, "list")
    for key, value in env.items():
        assert f"{key}={value}\n" in listed
    # grub-editenv parses the whole block and writes it back: our escaping must survive that
    run(grub_editenv, ours, "set", "pv_trying=1")
    assert grubenv.decode(ours.read_bytes()) == {**env, "pv_trying": "1"}


def test_grub_editenv_unset_on_our_file(tmp_path, grub_editenv):
    ours = tmp_path / "grubenv"
    ours.write_bytes(grubenv.encode({"pv_rev": "0", "pv_try": "1", "pv_trying": "1"}))
    run(grub_editenv, ours, "unset", "pv_trying")
    assert grubenv.decode(ours.read_bytes()) == {"pv_rev": "0", "pv_try": "1"}
    assert ours.stat().st_size == 1024


def test_grub_capacity_matches_grub_editenv(tmp_path, grub_editenv):
    """The largest value grub-editenv accepts in a fresh block is exactly the largest we accept."""
    probe = tmp_path / "probe"
    run(grub_editenv, probe, "create")
    room_with_warning = 1024 - len(grubenv.HEADER) - len(grubenv.WARNING)
    longest = room_with_warning - len("k=\n")
    run(grub_editenv, probe, "set", "k=" + "v" * longest)
    assert grubenv.encode({"k": "v" * longest}) == probe.read_bytes()
    too_long = subprocess.run(
        [grub_editenv, str(probe), "set", "k=" + "v" * (longest + 1)], capture_output=True
    )
    assert too_long.returncode != 0
    assert b"too small" in too_long.stderr
    # grub-editenv keeps its warning comment; we drop it before refusing, so we hold a bit more
    assert grubenv.decode(grubenv.encode({"k": "v" * (longest + 1)})) == {"k": "v" * (longest + 1)}
    with pytest.raises(EnvFull):
        grubenv.encode({"k": "v" * (1024 - len(grubenv.HEADER))})


def test_grub_editenv_rejects_what_we_reject(tmp_path, grub_editenv):
    headerless = tmp_path / "headerless"
    headerless.write_bytes(b"#" * 1024)
    done = subprocess.run([grub_editenv, str(headerless), "list"], capture_output=True)
    assert done.returncode != 0 and b"invalid environment block" in done.stderr
    assert layout.detect_layout(headerless.read_bytes()) is None


# ------------------------------------------------------------------------------ U-Boot images


# mkenvimage's text input reads a backslash before the newline as "the value goes on".
MKENVIMAGE_VALUES = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="\\"), max_size=30
)


@INTEROP
@given(
    env=st.dictionaries(SIMPLE_KEYS, MKENVIMAGE_VALUES, max_size=8),
    redundant=st.booleans(),
    size=st.sampled_from([0x400, 0x2000]),
)
def test_mkenvimage_output_is_what_we_write(tmp_path, mkenvimage, env, redundant, size):
    text = "".join(f"{k}={v}\n" for k, v in env.items()).encode()
    out = tmp_path / "env.bin"
    run(mkenvimage, "-s", str(size), *(["-r"] if redundant else []), "-o", out, "-", stdin=text)
    image = ubootenv.decode_image(out.read_bytes())
    assert image.env == env
    assert image.redundant is redundant
    ours = ubootenv.encode_image(env, size, redundant=redundant, flags=1, pad=0xFF)
    assert ours == out.read_bytes()


def test_mkenvimage_multiline_value_is_read_with_its_newline(tmp_path, mkenvimage):
    out = tmp_path / "env.bin"
    run(mkenvimage, "-s", "0x400", "-o", out, "-", stdin=b"script=echo a\\\necho b\nx=1\n")
    assert ubootenv.decode_image(out.read_bytes()).env == {"script": "echo a\necho b", "x": "1"}


@INTEROP
@given(env=st.dictionaries(SIMPLE_KEYS, SIMPLE_VALUES, min_size=1, max_size=8))
def test_fw_printenv_reads_what_we_write(tmp_path, fw_tools, env):
    fw_printenv, _ = fw_tools
    ours = tmp_path / "uboot.env"
    ours.write_bytes(ubootenv.encode_image(env, 0x2000))
    assert printenv(fw_printenv, fw_config(tmp_path, ours, size=0x2000)) == env


def test_fw_setenv_edits_we_read(tmp_path, fw_tools):
    fw_printenv, fw_setenv = fw_tools
    ours = tmp_path / "uboot.env"
    ours.write_bytes(ubootenv.encode_image({"pv_rev": "0", "bootcmd": "run pv"}, 0x2000))
    config = fw_config(tmp_path, ours, size=0x2000)
    run(fw_setenv, "-c", config, "pv_try", "1")
    run(fw_setenv, "-c", config, "bootcmd")  # no value: delete
    assert ubootenv.decode_image(ours.read_bytes()).env == {"pv_rev": "0", "pv_try": "1"}
    assert printenv(fw_printenv, config) == {"pv_rev": "0", "pv_try": "1"}


def test_fw_printenv_rejects_what_we_reject(tmp_path, fw_tools):
    fw_printenv, _ = fw_tools
    ours = tmp_path / "uboot.env"
    image = bytearray(ubootenv.encode_image({"pv_rev": "0"}, 0x400))
    image[8] ^= 0x40  # one flipped bit in the data
    ours.write_bytes(bytes(image))
    config = fw_config(tmp_path, ours, size=0x400)
    done = subprocess.run([fw_printenv, "-c", str(config)], capture_output=True)
    assert done.returncode != 0
    assert layout.detect_layout(bytes(image)) is None


# ------------------------------------------------------------------------------ redundant pair


@pytest.fixture
def pair(tmp_path):
    env_store = store.HardenedUbootStore(tmp_path / "uboot.env", size=0x400)
    config = fw_config(tmp_path, *env_store.paths, size=0x400)
    return env_store, config


def test_fw_printenv_reads_our_hardened_pair_after_each_save(pair, fw_tools):
    fw_printenv, _ = fw_tools
    env_store, config = pair
    for rev in range(4):  # alternates between the two copies
        env_store.save({"pv_rev": str(rev)})
        assert printenv(fw_printenv, config) == {"pv_rev": str(rev)}


def test_fw_setenv_on_our_pair_writes_the_older_copy_and_we_follow(pair, fw_tools):
    fw_printenv, fw_setenv = fw_tools
    env_store, config = pair
    env_store.save({"pv_rev": "0"})
    env_store.save({"pv_rev": "0", "pv_try": "1"})
    current = env_store.inspect()
    current_bytes = env_store.paths[current.chosen].read_bytes()
    run(fw_setenv, "-c", config, "pv_trying", "1")
    after = env_store.inspect()
    assert after.chosen == 1 - current.chosen  # fw_setenv wrote the other copy
    assert env_store.paths[current.chosen].read_bytes() == current_bytes
    assert after.env == {"pv_rev": "0", "pv_try": "1", "pv_trying": "1"}
    assert after.copies[after.chosen].seq == (current.copies[current.chosen].seq + 1) & 0xFF
    env_store.save({"pv_rev": "1"})
    assert printenv(fw_printenv, config) == {"pv_rev": "1"}


def test_fw_printenv_and_we_agree_on_flag_wraparound(tmp_path, fw_tools):
    fw_printenv, _ = fw_tools
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    first.write_bytes(ubootenv.encode_image({"v": "old"}, 0x400, redundant=True, flags=255))
    second.write_bytes(ubootenv.encode_image({"v": "new"}, 0x400, redundant=True, flags=0))
    config = fw_config(tmp_path, first, second, size=0x400)
    assert printenv(fw_printenv, config) == {"v": "new"}
    assert store.HardenedUbootStore(first, second, size=0x400).load() == {"v": "new"}


def test_fw_printenv_and_we_agree_after_a_torn_copy(pair, fw_tools):
    fw_printenv, _ = fw_tools
    env_store, config = pair
    env_store.save({"pv_rev": "0"})
    env_store.save({"pv_rev": "1"})
    newest = env_store.paths[env_store.inspect().chosen]
    torn = bytearray(newest.read_bytes())
    torn[5:200] = b"\xff" * 195  # the start of a write that never finished
    newest.write_bytes(bytes(torn))
    assert env_store.load() == {"pv_rev": "0"}
    assert printenv(fw_printenv, config) == {"pv_rev": "0"}


def test_mkenvimage_pair_loads_in_our_store(tmp_path, mkenvimage):
    primary, secondary = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"
    run(mkenvimage, "-r", "-s", "0x400", "-o", primary, "-", stdin=b"pv_rev=7\n")
    run(mkenvimage, "-r", "-s", "0x400", "-o", secondary, "-", stdin=b"pv_rev=7\n")
    env_store = store.HardenedUbootStore(primary, size=0x400)
    assert env_store.load() == {"pv_rev": "7"}
    env_store.save({"pv_rev": "8"})
    assert ubootenv.decode_image(secondary.read_bytes()).env == {"pv_rev": "8"}
    assert ubootenv.decode_image(primary.read_bytes()).env == {"pv_rev": "7"}


def test_cli_hardened_pair_is_read_and_edited_by_fw_tools(tmp_path, fw_tools, capsys):
    from pvreal.cli import build_parser
    from pvreal.cli import run as run_cli

    fw_printenv, fw_setenv = fw_tools
    primary, second = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"

    def pvreal(*argv: str | Path) -> str:
        parser = build_parser("pvreal", "", ("pvreal.cli.env",))
        assert run_cli(parser, ["env", *map(str, argv)]) == 0
        return capsys.readouterr().out

    pvreal("set", primary, "--hardened", "--format", "uboot", "--size", "0x400", "pv_rev=0")
    pvreal("set", primary, "--hardened", "pv_try=1")
    config = fw_config(tmp_path, primary, second, size=0x400)
    assert printenv(fw_printenv, config) == {"pv_rev": "0", "pv_try": "1"}
    run(fw_setenv, "-c", config, "pv_trying", "1")
    assert pvreal("get", primary, "pv_trying", "--hardened") == "1\n"
