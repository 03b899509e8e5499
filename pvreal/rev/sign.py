"""Sign a state JSON file in place (`pvreal rev sign`): a pvs@2 signature over the entries the
include/exclude globs select, as `pvr sig add` does (the signing itself is shared.signatures').

The write is atomic (temp file, fsync, rename): on any error the file keeps its old bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvreal.durable import atomic_write
from shared import canonical
from shared.errors import PvError
from shared.signatures import Signer, add_signature, default_rules


@dataclass(frozen=True)
class Signed:
    key: str  # the state key written, `_sigs/NAME.json`
    signer: Signer
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def sign_state_file(
    path: Path,
    key: Path,
    certs: list[Path],
    name: str,
    *,
    part: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    config: bool = True,
    embed_jwk: bool = True,
) -> Signed:
    """Add or replace `_sigs/NAME.json` in the state at `path`; `certs` is x5c, leaf first."""
    state = canonical.loads_object(read_file(path), source=str(path))
    cert_blobs = [read_file(p) for p in certs]
    try:
        signer = Signer.from_pem(read_file(key), cert_blobs)
    except PvError as exc:
        exc.source = exc.source or str(key)
        raise
    globs = default_rules(name, part=part, include=include, exclude=exclude, config=config)
    try:
        new_state = add_signature(
            state, signer, name=name, include=globs[0], exclude=globs[1], embed_jwk=embed_jwk
        )
    except PvError as exc:
        exc.source = exc.source or str(path)
        raise
    atomic_write(path, canonical.dump_bytes(new_state))
    return Signed(f"_sigs/{name}.json", signer, *globs)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PvError(f"cannot read: {exc.strerror}", source=str(path)) from None
