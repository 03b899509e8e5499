"""Real boot environment files: GRUB's grubenv, U-Boot env images, Pantavisor's uboot.txt.

- codecs: `grubenv` (1024-byte block), `ubootenv` (CRC32 images, single or redundant; uboot.txt)
- `layout`: an env's format + size, and detecting it from the bytes
- `store`: `FaithfulStore` (one file, in place) and the hardened two-copy stores
All writes go through pvreal.durable. See docs/bootenv.md.
"""

from pvreal.bootenv.errors import BootEnvError, EnvCorrupt, EnvFull, InvalidEntry
from pvreal.bootenv.layout import EnvLayout, detect_layout, grub, uboot, uboot_txt
from pvreal.bootenv.store import (
    EnvStore,
    FaithfulStore,
    HardenedGrubStore,
    HardenedUbootStore,
    LoadReport,
    open_store,
)

__all__ = [
    "BootEnvError",
    "EnvCorrupt",
    "EnvFull",
    "InvalidEntry",
    "EnvLayout",
    "detect_layout",
    "grub",
    "uboot",
    "uboot_txt",
    "EnvStore",
    "FaithfulStore",
    "HardenedGrubStore",
    "HardenedUbootStore",
    "LoadReport",
    "open_store",
]
