"""A throwaway PKI for signature tests: keys and certificates made with `cryptography`."""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


@cache
def key(kind: str = "rsa", slot: int = 0):
    """A private key; the same (kind, slot) gives the same key within a test session."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(_CURVES[kind]())


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    kind: str = "rsa",
    slot: int | None = None,
    ca: bool = False,
    not_before: dt.datetime = NOW - 30 * DAY,
    not_after: dt.datetime = NOW + 365 * DAY,
    key_usage: str | None = "default",
) -> Issued:
    """A certificate for `cn`, self-signed when `issuer` is None; its key is per CN unless `slot`.

    key_usage: "default" (keyCertSign for CAs, digitalSignature for leaves), None (no extension)
    or "wrong" (the usage the other kind of certificate would need).
    """
    private = key(kind, zlib.crc32(cn.encode()) if slot is None else slot)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key = issuer.key if issuer else private
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
        )
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if key_usage is not None:
        as_ca = ca if key_usage == "default" else not ca
        builder = builder.add_extension(_usage(as_ca), critical=True)
    cert = builder.sign(signer_key, hashes.SHA256())
    return Issued(cert, private)


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@cache
def chain(
    kind: str = "rsa", cn: str = "pvs signer", root_cn: str = "Test Root CA"
) -> tuple[Issued, Issued, Issued]:
    """root CA -> intermediate CA -> leaf whose key is `kind` (CAs are RSA)."""
    root = issue(root_cn, ca=True)
    inter = issue(f"{root_cn} Sub CA", issuer=root, ca=True)
    leaf = issue(cn, issuer=inter, kind=kind)
    return root, inter, leaf
