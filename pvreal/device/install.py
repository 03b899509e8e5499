"""Install a state as the factory revision 0 of a storage folder (`pvreal device init`).

Everything is checked first (the state parses, every object is present and hashes to its name),
then written: objects, trail 0, `pv_rev=0` in the boot env of the chosen bootloader.
"""

from __future__ import annotations

from pathlib import Path

from pvreal.device.latch import boot_files, set_env
from pvreal.objectstore import ObjectError, ObjectStore
from pvreal.storage import Storage
from shared.errors import InvalidState
from shared.state import parse_state

FACTORY = "0"


def install_factory(
    storage_root: Path, state_path: Path, objects_dir: Path, bootloader: str, ordering: str
) -> Storage:
    """Check everything first (state parses, every object present and hashing to its name),
    then write: objects, trail 0, `pv_rev=0` in the boot env."""
    try:
        data = state_path.read_bytes()
    except OSError as exc:
        raise InvalidState(f"cannot read: {exc.strerror}", source=str(state_path)) from None
    state = parse_state(data, source=str(state_path))
    source = ObjectStore(objects_dir)
    for sha in sorted(state.object_shas()):
        if not source.is_valid(sha):
            raise ObjectError("object missing or corrupt", source=str(source.dir), key=sha)
    storage = Storage(storage_root)
    if storage.revisions():
        raise InvalidState("storage already holds revisions", source=str(storage_root))
    storage.init_layout()
    (storage.trails_dir / "locals").mkdir(exist_ok=True)
    for sha in sorted(state.object_shas()):
        storage.objects.add_file(source.path(sha))
    storage.write_state(FACTORY, state.entries)
    storage.link_trail(FACTORY, state.entries)
    storage.set_current(FACTORY)
    set_env(boot_files(storage.root / "boot", bootloader, ordering), FACTORY, "")
    return storage
