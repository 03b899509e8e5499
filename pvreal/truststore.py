"""Read trust material from disk for shared.signatures (which reads no files itself).

A truststore is a folder of certificate files (`*.pem`, `*.crt`, `*.cer`; each may hold several
PEM certificates, or one DER certificate), or a single such file: Pantavisor resolves a store
name to one `<etc>/pantavisor/pvs/trust/<name>.crt` bundle, while `/etc/pantavisor/certs/...` style
setups keep one certificate per file. The public key is a PEM file like `pvs/trust/pub.pem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import PvError
from shared.signatures import TrustConfig, Truststore

if TYPE_CHECKING:
    from cryptography import x509

CERT_SUFFIXES = (".pem", ".crt", ".cer")


class TrustError(PvError):
    """Trust material that cannot be read: a missing store, a file that is no certificate."""


def load_truststore(path: str | Path, *, name: str | None = None) -> Truststore:
    """All certificates of a truststore folder (or bundle file), in file-name order."""
    path = Path(path)
    label = name or str(path)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CERT_SUFFIXES
        )
        if not files:
            raise TrustError(f"no certificate files ({', '.join(CERT_SUFFIXES)})", source=str(path))
    elif path.is_file():
        files = [path]
    else:
        raise TrustError("truststore not found", source=str(path))
    certificates: list[x509.Certificate] = []
    for file in files:
        try:
            blob = file.read_bytes()
        except OSError as exc:
            raise TrustError(f"cannot read: {exc.strerror}", source=str(file)) from None
        try:
            store = Truststore.from_bytes([blob], name=str(file))
        except PvError as exc:
            raise TrustError(exc.message, source=str(file)) from None
        if not store.certificates:
            raise TrustError("holds no certificate", source=str(file))
        certificates.extend(store.certificates)
    return Truststore(tuple(certificates), name=label)


def load_public_key(path: str | Path) -> bytes:
    """PEM bytes of a public key file (checked when the key is first used)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read public key: {exc.strerror}", source=str(path)) from None
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise TrustError("not a PEM public key (BEGIN PUBLIC KEY)", source=str(path))
    return data


def load_trust_config(
    truststore: str | Path | None = None,
    *,
    oem_truststore: str | Path | None = None,
    oem_name: str | None = None,
    public_key: str | Path | None = None,
) -> TrustConfig:
    """A device's trust settings read from disk; anything not given is empty."""
    return TrustConfig(
        truststore=load_truststore(truststore) if truststore else Truststore(name="truststore"),
        oem_truststore=(
            load_truststore(oem_truststore) if oem_truststore else Truststore(name="oem truststore")
        ),
        oem_name=oem_name,
        public_key_pem=load_public_key(public_key) if public_key else None,
    )
