"""One env file's layout (format, size, redundant flag) and how to tell it from the bytes.

Formats:
- `grub`: a 1024-byte grubenv block (pvreal.bootenv.grubenv).
- `uboot`: a U-Boot env image, single or redundant layout, any size (pvreal.bootenv.ubootenv).
- `uboot-txt`: Pantavisor's 1024-byte uboot.txt (NUL-separated, no CRC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pvreal.bootenv import grubenv, ubootenv
from pvreal.bootenv.errors import EnvCorrupt

GRUB, UBOOT, UBOOT_TXT = "grub", "uboot", "uboot-txt"
FORMATS = (GRUB, UBOOT, UBOOT_TXT)


@dataclass(frozen=True)
class EnvLayout:
    """How an env is laid out on disk. `size` is the env size (U-Boot) or the fixed block size."""

    format: str
    size: int
    redundant: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown env format {self.format!r}; expected one of {FORMATS}")
        fixed = {GRUB: grubenv.BLOCK_SIZE, UBOOT_TXT: ubootenv.UBOOT_TXT_SIZE}.get(self.format)
        if fixed is not None and self.size != fixed:
            raise ValueError(f"a {self.format} env is always {fixed} bytes, not {self.size}")
        if self.redundant and self.format != UBOOT:
            raise ValueError("only U-Boot images have a redundant layout")
        if self.format == UBOOT and self.size <= ubootenv.REDUNDANT_HEADER:
            raise ValueError(f"a U-Boot env of {self.size} bytes cannot hold anything")

    def encode(self, env: Mapping[str, str], *, flags: int = 1, source: str | None = None) -> bytes:
        if self.format == GRUB:
            return grubenv.encode(env, source=source)
        if self.format == UBOOT_TXT:
            return ubootenv.encode_txt(env, source=source)
        return ubootenv.encode_image(
            env, self.size, redundant=self.redundant, flags=flags, source=source
        )

    def decode(self, data: bytes, *, source: str | None = None) -> dict[str, str]:
        """Decode the env at the start of `data`; a U-Boot env may sit in a larger file."""
        if self.format == GRUB:
            return grubenv.decode(data, source=source)
        if self.format == UBOOT_TXT:
            return ubootenv.decode_txt(data, source=source)
        if len(data) < self.size:
            raise EnvCorrupt(
                f"is {len(data)} bytes, shorter than the U-Boot env size {self.size} (truncated?)",
                source=source,
            )
        image = data[: self.size]
        return ubootenv.decode_image(image, redundant=self.redundant, source=source).env


def grub() -> EnvLayout:
    return EnvLayout(GRUB, grubenv.BLOCK_SIZE)


def uboot(size: int = ubootenv.DEFAULT_SIZE, *, redundant: bool = False) -> EnvLayout:
    return EnvLayout(UBOOT, size, redundant)


def uboot_txt() -> EnvLayout:
    return EnvLayout(UBOOT_TXT, ubootenv.UBOOT_TXT_SIZE)


def detect_layout(
    data: bytes, *, size: int | None = None, redundant: bool | None = None
) -> EnvLayout | None:
    """Recognise a layout from the bytes; None when nothing matches (corrupt or unknown).

    A U-Boot image is recognised by a matching CRC (single layout tried first) over `size`
    bytes, or over the whole file when no size is given. `redundant` forces one layout.
    """
    if data.startswith(grubenv.HEADER) and redundant is None:
        return grub()
    env_size = size if size is not None else len(data)
    if env_size > ubootenv.REDUNDANT_HEADER and len(data) >= env_size:
        image = data[:env_size]
        for layout in [False, True] if redundant is None else [redundant]:
            if ubootenv.crc_matches(image, redundant=layout):
                return uboot(env_size, redundant=layout)
    if redundant is None and ubootenv.looks_like_txt(data):
        return uboot_txt()
    return None


def describe_unknown(data: bytes, *, size: int | None = None) -> str:
    """Why `detect_layout` found nothing, in words a person can act on."""
    if not data:
        return "is empty: not a GRUB block, U-Boot image or uboot.txt"
    env_size = size if size is not None else len(data)
    return (
        f"format not recognised ({len(data)} bytes): no GRUB header, no matching U-Boot CRC32 "
        f"for an env size of {env_size} bytes (single or redundant layout), not a uboot.txt; "
        "the file is corrupt or truncated, or pass --format/--size"
    )
