"""U-Boot environment images, and Pantavisor's plain `uboot.txt`.

U-Boot image (what U-Boot's `saveenv`, `mkenvimage` and `fw_printenv`/`fw_setenv` use):
    offset 0   CRC32 of the data area, little-endian (uint32)
    offset 4   [redundant layout only] flags byte: a serial that grows by one per save
    then       data area: `key=value\\0` entries, an empty entry (`\\0`) ending the list,
               then padding (0xFF from mkenvimage, 0x00 from fw_setenv) up to the env size.
The CRC covers the whole data area, padding included. The redundant layout keeps two copies; the
valid copy with the newer flags wins (see `newer_copy`).

Pantavisor's `uboot.txt` (`/storage/boot/uboot.txt`) is simpler: 1024 bytes of `key=value\\0`
entries and NUL padding, no CRC and no flags, rewritten in place by Pantavisor.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from pvreal.bootenv.errors import EnvCorrupt, EnvFull, check_entry

DEFAULT_SIZE = 8192  # the file size used for new images when none is given
CRC = struct.Struct("<I")
SINGLE_HEADER = CRC.size  # 4
REDUNDANT_HEADER = CRC.size + 1  # 5: CRC + flags
UBOOT_TXT_SIZE = 1024


@dataclass(frozen=True)
class UbootImage:
    """A decoded U-Boot env image: its variables, its layout and (redundant only) its flags."""

    env: dict[str, str]
    redundant: bool
    flags: int | None


def check_variable(key: str, value: str, *, source: str | None = None) -> None:
    """Raise InvalidEntry when a U-Boot env cannot store this variable."""
    check_entry(key, value, source=source, bad_key_chars="=\0")


def header_size(redundant: bool) -> int:
    return REDUNDANT_HEADER if redundant else SINGLE_HEADER


def encode_image(
    env: Mapping[str, str],
    size: int,
    *,
    redundant: bool = False,
    flags: int = 1,
    pad: int = 0x00,
    source: str | None = None,
) -> bytes:
    """An env image of exactly `size` bytes; EnvFull when the variables do not fit."""
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"flags must be one byte, not {flags}")
    header = header_size(redundant)
    entries = _pack_entries(env, source) + b"\0"  # the empty entry ends the list
    room = size - header
    if len(entries) > room:
        raise EnvFull(
            f"the variables need {len(entries)} bytes but a {size}-byte U-Boot env has room "
            f"for {max(room, 0)}; nothing was written",
            source=source,
        )
    data = entries + bytes([pad]) * (room - len(entries))
    crc = CRC.pack(zlib.crc32(data))
    return crc + (bytes([flags]) if redundant else b"") + data


def crc_matches(image: bytes, *, redundant: bool) -> bool:
    header = header_size(redundant)
    if len(image) <= header:
        return False
    (stored,) = CRC.unpack_from(image)
    return stored == zlib.crc32(image[header:])


def decode_image(
    image: bytes, *, redundant: bool | None = None, source: str | None = None
) -> UbootImage:
    """Decode a whole image (its length is the env size). `redundant=None` tries both layouts."""
    layouts = [False, True] if redundant is None else [redundant]
    for layout in layouts:
        if crc_matches(image, redundant=layout):
            env = _unpack_entries(image[header_size(layout) :], source)
            return UbootImage(env, layout, image[CRC.size] if layout else None)
    if len(image) <= SINGLE_HEADER:
        raise EnvCorrupt(f"is only {len(image)} bytes, too short for a U-Boot env", source=source)
    kind = {None: "single or redundant", False: "single", True: "redundant"}[redundant]
    raise EnvCorrupt(
        f"CRC32 does not match the data ({kind} layout, env size {len(image)} bytes): "
        "corrupt, torn, truncated, or a different env size",
        source=source,
    )


def newer_copy(flags_a: int, flags_b: int) -> int:
    """Which of two valid redundant copies U-Boot uses: 0 for a, 1 for b.

    The flags byte is a serial that wraps: 255 followed by 0 means 0 is newer. Equal flags
    favour the first copy. This is U-Boot's own rule (env_import_redund), which libubootenv's
    fw_printenv applies too, so all three agree on which copy is current.
    """
    if flags_a == 0xFF and flags_b == 0:
        return 1
    if flags_b == 0xFF and flags_a == 0:
        return 0
    return 1 if flags_b > flags_a else 0


def encode_txt(env: Mapping[str, str], *, source: str | None = None) -> bytes:
    """Pantavisor's uboot.txt: NUL-separated entries, NUL-padded to 1024 bytes."""
    entries = _pack_entries(env, source)
    if len(entries) > UBOOT_TXT_SIZE:
        raise EnvFull(
            f"the variables need {len(entries)} bytes but uboot.txt holds {UBOOT_TXT_SIZE}; "
            "nothing was written",
            source=source,
        )
    return entries + b"\0" * (UBOOT_TXT_SIZE - len(entries))


def decode_txt(data: bytes, *, source: str | None = None) -> dict[str, str]:
    """Read uboot.txt. Empty strings between NULs are skipped, as Pantavisor's reader does."""
    if len(data) != UBOOT_TXT_SIZE:
        hint = " (truncated?)" if len(data) < UBOOT_TXT_SIZE else ""
        raise EnvCorrupt(
            f"is {len(data)} bytes{hint}; Pantavisor's uboot.txt is exactly {UBOOT_TXT_SIZE}",
            source=source,
        )
    env: dict[str, str] = {}
    for raw in data.split(b"\0"):
        if raw:
            key, value = _split_entry(raw, source)
            if key in env:
                raise EnvCorrupt("variable defined twice", source=source, key=key)
            env[key] = value
    return env


def looks_like_txt(data: bytes) -> bool:
    """Whether `data` plausibly is a uboot.txt: printable text entries with '=' then NULs."""
    if len(data) != UBOOT_TXT_SIZE:
        return False
    entries = [raw for raw in data.split(b"\0") if raw]
    return all(b"=" in raw and raw.isascii() and raw.decode().isprintable() for raw in entries)


def _pack_entries(env: Mapping[str, str], source: str | None) -> bytes:
    parts = []
    for key, value in env.items():
        check_variable(key, value, source=source)
        parts.append(key.encode() + b"=" + value.encode() + b"\0")
    return b"".join(parts)


def _unpack_entries(data: bytes, source: str | None) -> dict[str, str]:
    env: dict[str, str] = {}
    pos = 0
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise EnvCorrupt(
                "no end-of-environment marker (an empty entry) before the end of the data",
                source=source,
            )
        if end == pos:  # the empty entry: the list ends here, padding follows
            return env
        key, value = _split_entry(data[pos:end], source)
        if key in env:
            raise EnvCorrupt("variable defined twice", source=source, key=key)
        env[key] = value
        pos = end + 1


def _split_entry(raw: bytes, source: str | None) -> tuple[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvCorrupt(f"entry is not UTF-8 ({exc.reason})", source=source) from None
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise EnvCorrupt(f"entry without 'name=': {text[:40]!r}", source=source)
    return key, value
