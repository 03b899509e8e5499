"""pvs@2 state signatures: sign a revision and verify it the way Pantavisor does (pantavisor.md §1.8).

A signature is the state entry `_sigs/<name>.json`:
`{"#spec": "pvs@2", "protected": "<b64url header>", "signature": "<b64url>"}`, a JWS whose payload is
detached: it is rebuilt from the state itself. The protected header carries `alg` (RS256, ES256,
ES384, ES512), `typ: "PVS"`, `pvs: {"include": [globs], "exclude": [globs]}` and optionally `x5c`
(standard base64 DER chain, leaf first) and `jwk`.

- Payload: the canonical JSON (`shared.canonical`) of the entries selected by an include glob and no
  exclude glob (`shared.globs`). pvr signs exactly that; the device concatenates the selected
  entries in stored order, which is the same text because pvtwin keeps every state canonical.
- Signing input: `protected + "." + base64url(payload)`; ES signatures are JWS raw `r || s`.
- Key: from the first `x5c` certificate, whose chain must reach the truststore at `now`; without
  `x5c`, from the configured public key (the device's `pvs/trust/pub.pem`). The OEM truststore is
  used instead of the default one only when the leaf CN is the OEM name and the signature includes
  nothing under `bsp/**` or `<oem name>/**`.
- Coverage: an entry matched by any include or exclude glob of any signature is covered; `_sigs/`
  entries are never checked. `strict` needs every other entry covered; `audit` checks but
  tolerates an uncovered state (an invalid signature still fails); `lenient` only verifies the
  signatures present; `disabled` checks nothing.

Pure: the caller passes certificate and key bytes and the time; nothing here reads a file or a clock.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from shared import canonical
from shared.errors import InvalidJson, SignatureError
from shared.globs import any_matches, matcher


class _OnFirstUse:
    """Stands for a cryptography module until one of its names is first read. cryptography's
    compiled core costs about half a second of a QEMU guest's boot, and a device whose states
    carry no signature and whose trust settings hold no certificate never needs it: parsing,
    coverage and the checks of an unsigned state run without it. The first read imports
    cryptography and puts the real modules in place of every stand-in."""

    __slots__ = ("_global",)

    def __init__(self, name: str) -> None:
        self._global = name  # the module global this stands for

    def __getattr__(self, attr: str) -> Any:
        _import_cryptography()
        return getattr(globals()[self._global], attr)


def _import_cryptography() -> None:
    global exceptions, x509, hashes, serialization, ec, padding, rsa, dss, oid, verification
    from cryptography import exceptions, x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric import utils as dss
    from cryptography.x509 import oid, verification


if TYPE_CHECKING:
    from cryptography import exceptions, x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric import utils as dss
    from cryptography.x509 import oid, verification

    PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
else:
    exceptions, x509, hashes, serialization = map(_OnFirstUse, ("exceptions", "x509", "hashes", "serialization"))
    ec, padding, rsa, dss, oid, verification = map(_OnFirstUse, ("ec", "padding", "rsa", "dss", "oid", "verification"))

SPEC = "pvs@2"
TYP = "PVS"
SIGS_PREFIX = "_sigs/"
CONFIG_PREFIX = "_config/"


class SecurebootMode(StrEnum):
    """`PV_SECUREBOOT_MODE` values; `lenient` is Pantavisor's default."""

    DISABLED = "disabled"
    AUDIT = "audit"
    LENIENT = "lenient"
    STRICT = "strict"


class Outcome(Enum):
    """What the device's signature check returns; `message` is the text that goes into progress."""

    OK = None
    INTERNAL = "Internal error"
    UNCOVERED = "State not fully covered by signatures"
    VALIDATION = "Signature validation failed"
    UNKNOWN = "Unknown error"

    @property
    def message(self) -> str | None:
        return self.value


@dataclass(frozen=True, slots=True)
class _Alg:
    hash_name: str  # a class of cryptography's `hashes`
    curve_name: str | None  # a class of cryptography's `ec`; None: RSA
    size: int = 0  # bytes per coordinate of r || s

    @property
    def hash(self) -> type[hashes.HashAlgorithm]:
        return getattr(hashes, self.hash_name)

    @property
    def curve(self) -> type[ec.EllipticCurve] | None:
        return None if self.curve_name is None else getattr(ec, self.curve_name)


ALGORITHMS: Mapping[str, _Alg] = {
    "RS256": _Alg("SHA256", None),
    "ES256": _Alg("SHA256", "SECP256R1", 32),
    "ES384": _Alg("SHA384", "SECP384R1", 48),
    "ES512": _Alg("SHA512", "SECP521R1", 66),
}
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*\Z")


# --------------------------------------------------------------------------------------------
# base64 and small helpers


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, what: str, key: str) -> bytes:
    """Strict base64url (padding optional): anything else is a malformed signature."""
    if not isinstance(text, str):
        raise SignatureError(f"{what} must be a base64url string", key=key)
    stripped = text.rstrip("=")
    # the decoder would silently skip foreign characters, which would let junk ride along
    if not _B64URL_RE.match(stripped) or len(stripped) % 4 == 1:
        raise SignatureError(f"{what} is not valid base64url", key=key)
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def _entries_of(state: Any) -> Mapping[str, Any]:
    """A raw state dict, or anything with an `entries` mapping (shared.state.State)."""
    entries = getattr(state, "entries", state)
    if not isinstance(entries, Mapping):
        raise SignatureError(f"a state must be a JSON object, found {type(entries).__name__}")
    return entries


def leaf_common_name(cert: x509.Certificate) -> str | None:
    """The subject CN; with several CN attributes the device keeps the last one."""
    names = cert.subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[-1].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------------------------
# selection and coverage


def select_entries(
    entries: Mapping[str, Any], include: Sequence[str], exclude: Sequence[str]
) -> dict[str, Any]:
    """The entries a signature protects: matched by an include glob and by no exclude glob."""
    included, excluded = matcher(tuple(include)), matcher(tuple(exclude))
    return {key: value for key, value in entries.items() if included(key) and not excluded(key)}


def payload_bytes(
    entries: Mapping[str, Any], include: Sequence[str], exclude: Sequence[str]
) -> bytes:
    """The detached JWS payload: canonical JSON of the selected entries."""
    return canonical.dump_bytes(select_entries(entries, include, exclude))


def signing_input(protected: str, payload: bytes) -> bytes:
    return (protected + "." + b64url_encode(payload)).encode("ascii")


@dataclass(frozen=True, slots=True)
class Coverage:
    """`pvr sig ls` lists: protected (in some payload), excluded (matched, in no payload), notseen."""

    protected: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    notseen: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return not self.notseen


def coverage(
    entries: Mapping[str, Any], rules: Iterable[tuple[Sequence[str], Sequence[str]]]
) -> Coverage:
    """Coverage of a state by signatures given as (include, exclude) glob lists.

    As on the device, matching an exclude glob covers an entry just like matching an include
    glob; entries under `_sigs/` never count as not seen.
    """
    protected: set[str] = set()
    matched: set[str] = set()
    for include, exclude in rules:
        included, excluded = matcher(tuple(include)), matcher(tuple(exclude))
        for key in entries:
            inc = included(key)
            exc = excluded(key)
            if inc or exc:
                matched.add(key)
            if inc and not exc:
                protected.add(key)
    notseen = [k for k in entries if k not in matched and not k.startswith(SIGS_PREFIX)]
    return Coverage(
        protected=tuple(sorted(protected)),
        excluded=tuple(sorted(matched - protected)),
        notseen=tuple(sorted(notseen)),
    )


def default_rules(
    name: str,
    *,
    part: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    config: bool = True,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The include/exclude globs pvr writes for `pvr sig add`.

    - `part`: `X/**` and (unless `config=False`) `_config/X/**`; excludes `X/src.json`.
    - explicit `include`: the given globs; excludes the given ones, or `src.json` when none
      (what the pvr-made conformance signatures carry).
    - neither: `*` (top-level keys only); excludes `**/src.json`.
    The signature's own file `_sigs/<name>.json` is always excluded: it cannot sign itself.
    """
    if part is not None and include:
        raise SignatureError("give a part or include globs, not both", key=_sig_key(name))
    own = _sig_key(name)
    if part is not None:
        _check_name(part, what="part name")
        inc = [f"{part}/**"] + ([f"{CONFIG_PREFIX}{part}/**"] if config else [])
        exc = [f"{part}/src.json", *(exclude or ())]
    elif include:
        inc = list(include)
        exc = list(exclude) if exclude else ["src.json"]
    else:
        inc = ["*"]
        exc = list(exclude) if exclude else ["**/src.json"]
    if own not in exc:
        exc.append(own)
    return tuple(inc), tuple(exc)


def _check_name(name: str, *, what: str = "signature name") -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise SignatureError(f"{what} must be a non-empty file name without '/', got {name!r}")


def _sig_key(name: str) -> str:
    _check_name(name)
    return f"{SIGS_PREFIX}{name}.json"


# --------------------------------------------------------------------------------------------
# parsing a signature entry


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    key: str  # "_sigs/bsp.json"
    protected: str  # the raw base64url header, part of the signing input
    signature: bytes
    header: Mapping[str, Any]
    alg: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    x5c: tuple[x509.Certificate, ...]
    jwk: Mapping[str, Any] | None


def is_signature_entry(key: str, value: Any) -> bool:
    """What the device treats as a signature: any entry whose JSON has `#spec: pvs@2`."""
    return isinstance(value, Mapping) and value.get("#spec") == SPEC


def parse_signature(key: str, value: Any) -> ParsedSignature:
    """Decode and check one signature entry; every problem is a SignatureError naming `key`."""
    if not isinstance(value, Mapping):
        raise SignatureError("a signature must be a JSON object", key=key)
    if value.get("#spec") != SPEC:
        raise SignatureError(f"#spec must be {SPEC!r}, found {value.get('#spec')!r}", key=key)
    for field_name in ("protected", "signature"):
        if not isinstance(value.get(field_name), str) or not value.get(field_name):
            raise SignatureError(f"missing or empty {field_name!r}", key=key)
    protected = value["protected"]
    header_bytes = b64url_decode(protected, what="protected header", key=key)
    try:
        header = canonical.loads(header_bytes)
    except InvalidJson as exc:
        raise SignatureError(f"protected header is not JSON: {exc.message}", key=key) from None
    if not isinstance(header, dict):
        raise SignatureError("protected header must be a JSON object", key=key)
    alg = _check_alg(header.get("alg"), key)
    if header.get("typ") != TYP:
        raise SignatureError(f"typ must be {TYP!r}, found {header.get('typ')!r}", key=key)
    if "crit" in header:
        raise SignatureError("critical header parameters are not supported", key=key)
    include, exclude = _check_pvs(header.get("pvs"), key)
    return ParsedSignature(
        key=key,
        protected=protected,
        signature=b64url_decode(value["signature"], what="signature", key=key),
        header=header,
        alg=alg,
        include=include,
        exclude=exclude,
        x5c=_parse_x5c(header.get("x5c"), key),
        jwk=_check_jwk(header.get("jwk"), key),
    )


def _check_alg(alg: Any, key: str) -> str:
    if not isinstance(alg, str):
        raise SignatureError("protected header has no 'alg'", key=key)
    if alg.lower() == "none":
        raise SignatureError("alg 'none' (an unsigned JWS) is not accepted", key=key)
    if alg.upper().startswith("HS"):
        raise SignatureError(f"alg {alg!r} is an HMAC (shared secret) and is not accepted", key=key)
    if alg not in ALGORITHMS:
        raise SignatureError(
            f"unknown alg {alg!r}; expected one of {', '.join(ALGORITHMS)}", key=key
        )
    return alg


def _check_pvs(pvs: Any, key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(pvs, Mapping):
        raise SignatureError("protected header has no 'pvs' object", key=key)
    lists = []
    for name in ("include", "exclude"):
        globs = pvs.get(name)
        if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
            raise SignatureError(f"pvs.{name} must be a list of glob strings", key=key)
        lists.append(tuple(globs))
    return lists[0], lists[1]


def _parse_x5c(x5c: Any, key: str) -> tuple[x509.Certificate, ...]:
    if x5c is None:
        return ()
    if not isinstance(x5c, list) or not x5c:
        raise SignatureError("x5c must be a non-empty list of certificates", key=key)
    certs = []
    for index, item in enumerate(x5c):
        try:
            der = base64.b64decode(item, validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except (TypeError, binascii.Error, ValueError):
            raise SignatureError(f"x5c[{index}] is not a base64 DER certificate", key=key) from None
    return tuple(certs)


def _check_jwk(jwk: Any, key: str) -> Mapping[str, Any] | None:
    if jwk is not None and not isinstance(jwk, Mapping):
        raise SignatureError("jwk must be a JSON object", key=key)
    return jwk


# --------------------------------------------------------------------------------------------
# trust


@dataclass(frozen=True, slots=True)
class Truststore:
    """Trust anchors: certificates a signature's x5c chain may end at."""

    certificates: tuple[x509.Certificate, ...] = ()
    name: str = "truststore"

    @classmethod
    def from_bytes(cls, blobs: Iterable[bytes], *, name: str = "truststore") -> Truststore:
        """Certificates from PEM blobs (several per blob allowed) or single DER blobs."""
        certs: list[x509.Certificate] = []
        for index, blob in enumerate(blobs):
            try:
                if b"-----BEGIN" in blob:
                    certs.extend(x509.load_pem_x509_certificates(blob))
                else:
                    certs.append(x509.load_der_x509_certificate(blob))
            except ValueError as exc:
                raise SignatureError(
                    f"item {index} is not a PEM or DER certificate: {exc}", source=name
                ) from None
        return cls(tuple(certs), name)


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Everything a device trusts: `PV_SECUREBOOT_TRUSTSTORE`, `PV_SECUREBOOT_OEM_TRUSTSTORE`,
    `PV_OEM_NAME` and `pvs/trust/pub.pem` (PEM bytes)."""

    truststore: Truststore = field(default_factory=Truststore)
    oem_truststore: Truststore = field(default_factory=lambda: Truststore(name="oem truststore"))
    oem_name: str | None = None
    public_key_pem: bytes | None = None

    def public_key(self) -> PublicKey | None:
        if self.public_key_pem is None:
            return None
        try:
            key = serialization.load_pem_public_key(self.public_key_pem)
        except (ValueError, exceptions.UnsupportedAlgorithm) as exc:
            raise SignatureError(f"trusted public key is not a PEM public key: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise SignatureError("trusted public key must be RSA or EC")
        return key


def oem_signable(selected: Iterable[str], oem_name: str | None) -> bool:
    """An OEM certificate may sign only outside `bsp/**` and `<oem name>/**`."""
    forbidden = ("bsp/**",) + ((f"{oem_name}/**",) if oem_name else ())
    return not any(any_matches(forbidden, key) for key in selected)


def _ca_key_usage(policy: Any, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("CA certificate key usage lacks keyCertSign")


def _leaf_key_usage(policy: Any, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.digital_signature:
        raise ValueError("signing certificate key usage lacks digitalSignature")


def _ca_basic_constraints(
    policy: Any, cert: x509.Certificate, constraints: x509.BasicConstraints | None
) -> None:
    if constraints is None or not constraints.ca:
        raise ValueError("issuer is not a CA (basicConstraints CA:FALSE or missing)")


# Pantavisor checks a chain with mbedtls: validity dates, issuer signatures up to a trusted
# certificate, CA flag and keyCertSign on issuers. The web-PKI profile of cryptography's verifier
# adds TLS-specific rules (SAN, EKU serverAuth...), so those extension policies are replaced by
# the checks above; path building, signatures and dates stay cryptography's.
@cache
def _policies() -> tuple[verification.ExtensionPolicy, verification.ExtensionPolicy]:
    """(CA policy, end-entity policy), built when a chain is first checked."""
    agnostic = verification.Criticality.AGNOSTIC
    ca = (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, agnostic, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage)
    )
    ee = verification.ExtensionPolicy.permit_all().may_be_present(
        x509.KeyUsage, agnostic, _leaf_key_usage
    )
    return ca, ee


def verify_chain(
    chain: Sequence[x509.Certificate], store: Truststore, *, now: dt.datetime, key: str
) -> tuple[x509.Certificate, ...]:
    """Check that `chain[0]` leads to a certificate of `store` at time `now`; returns the path."""
    if not store.certificates:
        raise SignatureError(f"{store.name} is empty: no certificate to anchor x5c", key=key)
    if now.tzinfo is None:
        raise SignatureError("verification time must be timezone-aware", key=key)
    leaf = chain[0]
    _check_dates(leaf, now, key)
    ca_policy, ee_policy = _policies()
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(store.certificates)))
        .time(now)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(chain[1:]))
    except verification.VerificationError as exc:
        raise SignatureError(
            f"x5c chain of {_describe(leaf)} does not verify against {store.name}: {exc}", key=key
        ) from None
    return tuple(verified.chain)


def _check_dates(cert: x509.Certificate, now: dt.datetime, key: str) -> None:
    """A clear message for the common failure; the verifier checks the issuers' dates too."""
    what = f"signing certificate {_describe(cert)}"
    if now < cert.not_valid_before_utc:
        raise SignatureError(
            f"{what} is not valid yet (from {cert.not_valid_before_utc.isoformat()})", key=key
        )
    if now > cert.not_valid_after_utc:
        raise SignatureError(f"{what} expired on {cert.not_valid_after_utc.isoformat()}", key=key)


def _describe(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string()}'"


# --------------------------------------------------------------------------------------------
# verifying one signature


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """The result for one `_sigs/<name>.json`."""

    key: str
    ok: bool
    error: str | None = None
    alg: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()  # the entries in this signature's payload
    signer: str | None = None  # leaf CN, or "public key"
    store: str | None = None  # truststore name, or "public key"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ok": self.ok,
            "error": self.error,
            "alg": self.alg,
            "signer": self.signer,
            "store": self.store,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "protected": list(self.protected),
        }


def verify_signature(
    state: Any, key: str, trust: TrustConfig, *, now: dt.datetime
) -> SignatureCheck:
    """Verify the signature stored at `key`; raises SignatureError naming `key` on any failure."""
    entries = _entries_of(state)
    if key not in entries:
        raise SignatureError("no such signature in the state", key=key)
    return _verify_parsed(entries, parse_signature(key, entries[key]), trust, now)


def _verify_parsed(
    entries: Mapping[str, Any], sig: ParsedSignature, trust: TrustConfig, now: dt.datetime
) -> SignatureCheck:
    key = sig.key
    selected = select_entries(entries, sig.include, sig.exclude)
    public_key, signer, store = _signing_key(sig, selected, trust, now)
    _check_key_alg(public_key, sig.alg, key)
    if sig.jwk is not None and not _jwk_matches(sig.jwk, public_key):
        raise SignatureError("jwk in the header is not the signing certificate's key", key=key)
    data = signing_input(sig.protected, canonical.dump_bytes(selected))
    if not _verify_bytes(public_key, sig.alg, sig.signature, data):
        raise SignatureError(
            f"{sig.alg} signature does not match the state entries it covers "
            f"({len(selected)} selected by include {list(sig.include)}, "
            f"exclude {list(sig.exclude)}) with the key of {signer}",
            key=key,
        )
    return SignatureCheck(
        key=key,
        ok=True,
        alg=sig.alg,
        include=sig.include,
        exclude=sig.exclude,
        protected=tuple(sorted(selected)),
        signer=signer,
        store=store,
    )


def _signing_key(
    sig: ParsedSignature, selected: Mapping[str, Any], trust: TrustConfig, now: dt.datetime
) -> tuple[PublicKey, str, str]:
    if sig.x5c:
        leaf = sig.x5c[0]
        cn = leaf_common_name(leaf)
        use_oem = (
            trust.oem_name is not None
            and cn == trust.oem_name
            and oem_signable(selected, trust.oem_name)
        )
        store = trust.oem_truststore if use_oem else trust.truststore
        verify_chain(sig.x5c, store, now=now, key=sig.key)
        leaf_key = leaf.public_key()
        if not isinstance(leaf_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise SignatureError("signing certificate key is neither RSA nor EC", key=sig.key)
        return leaf_key, cn or _describe(leaf), store.name
    public_key = trust.public_key()
    if public_key is None:
        raise SignatureError(
            "no x5c certificate in the header and no trusted public key (pvs/trust/pub.pem)",
            key=sig.key,
        )
    return public_key, "public key", "public key"


def _check_key_alg(public_key: PublicKey, alg: str, key: str) -> None:
    spec = ALGORITHMS[alg]
    if spec.curve is None:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError(f"alg {alg} needs an RSA key, the signer has an EC key", key=key)
        return
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"alg {alg} needs an EC key, the signer has an RSA key", key=key)
    if not isinstance(public_key.curve, spec.curve):
        raise SignatureError(
            f"alg {alg} needs curve {spec.curve.name}, the signer's key is on "
            f"{public_key.curve.name}",
            key=key,
        )


def _verify_bytes(public_key: PublicKey, alg: str, signature: bytes, data: bytes) -> bool:
    spec = ALGORITHMS[alg]
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), spec.hash())
        else:
            if len(signature) != 2 * spec.size:  # JWS ES*: fixed-size r || s, not DER
                return False
            r = int.from_bytes(signature[: spec.size], "big")
            s = int.from_bytes(signature[spec.size :], "big")
            public_key.verify(dss.encode_dss_signature(r, s), data, ec.ECDSA(spec.hash()))
    except exceptions.InvalidSignature:
        return False
    return True


def jwk_of(public_key: PublicKey) -> dict[str, str]:
    """RFC 7517 public JWK, as pvr embeds it."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
    point = public_key.public_numbers()
    size = ALGORITHMS[_CURVE_ALG[public_key.curve.name]].size
    return {
        "kty": "EC",
        "crv": _JWK_CURVES[public_key.curve.name],
        "x": b64url_encode(point.x.to_bytes(size, "big")),
        "y": b64url_encode(point.y.to_bytes(size, "big")),
    }


def _b64_uint(value: int) -> str:
    return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _jwk_matches(jwk: Mapping[str, Any], public_key: PublicKey) -> bool:
    expected = jwk_of(public_key)
    return all(jwk.get(name) == value for name, value in expected.items())


# --------------------------------------------------------------------------------------------
# verifying a state


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The device's answer for one state, plus the detail `pvr sig ls` would show."""

    outcome: Outcome
    mode: SecurebootMode
    coverage: Coverage = field(default_factory=Coverage)
    signatures: tuple[SignatureCheck, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def message(self) -> str | None:
        """`None` when OK, else one of the exact Pantavisor outcome strings."""
        return self.outcome.message

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{c.key}: {c.error}" for c in self.signatures if not c.ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "message": self.message,
            "protected": list(self.coverage.protected),
            "excluded": list(self.coverage.excluded),
            "notseen": list(self.coverage.notseen),
            "signatures": [check.to_json() for check in self.signatures],
        }


def verify_state(
    state: Any,
    trust: TrustConfig,
    *,
    now: dt.datetime,
    mode: SecurebootMode | str = SecurebootMode.LENIENT,
) -> VerifyResult:
    """Check every signature of a state and its coverage under `mode`, as the device does.

    Never raises for a bad signature: the failure is in the result (`outcome`, and `error` of the
    signature's check). A state that is not a JSON object gives `Internal error`.
    """
    mode = SecurebootMode(mode)
    if mode is SecurebootMode.DISABLED:
        return VerifyResult(Outcome.OK, mode)
    try:
        entries = _entries_of(state)
    except SignatureError:
        return VerifyResult(Outcome.INTERNAL, mode)
    checks: list[SignatureCheck] = []
    rules: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for key in sorted(k for k, v in entries.items() if _is_candidate(k, v)):
        try:
            parsed = parse_signature(key, entries[key])
            rules.append((parsed.include, parsed.exclude))
            checks.append(_verify_parsed(entries, parsed, trust, now))
        except SignatureError as exc:
            checks.append(SignatureCheck(key=key, ok=False, error=exc.message))
    cov = coverage(entries, rules)
    if any(not check.ok for check in checks):
        outcome = Outcome.VALIDATION
    elif mode in (SecurebootMode.STRICT, SecurebootMode.AUDIT) and not cov.full:
        # audit runs the coverage check but lets an uncovered state through
        outcome = Outcome.OK if mode is SecurebootMode.AUDIT else Outcome.UNCOVERED
    else:
        outcome = Outcome.OK
    return VerifyResult(outcome, mode, cov, tuple(checks))


def _is_candidate(key: str, value: Any) -> bool:
    """Entries checked as signatures: the device's `#spec: pvs@2` rule, plus every `_sigs/` file
    (a malformed `_sigs/` entry fails instead of being skipped silently)."""
    return key.startswith(SIGS_PREFIX) or is_signature_entry(key, value)


# --------------------------------------------------------------------------------------------
# signing


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key and its certificate chain (leaf first; may be empty: then no x5c)."""

    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def alg(self) -> str:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return "RS256"
        curve = self.private_key.curve.name
        if curve not in _CURVE_ALG:
            raise SignatureError(f"EC curve {curve} has no JWS algorithm; use P-256/384/521")
        return _CURVE_ALG[curve]

    @classmethod
    def from_pem(
        cls,
        key_pem: bytes,
        certs_pem: Iterable[bytes] = (),
        *,
        password: bytes | None = None,
    ) -> Signer:
        try:
            key = serialization.load_pem_private_key(key_pem, password=password)
        except (ValueError, TypeError, exceptions.UnsupportedAlgorithm) as exc:
            raise SignatureError(f"signing key is not a usable PEM private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise SignatureError("signing key must be RSA or EC (P-256, P-384, P-521)")
        chain: list[x509.Certificate] = []
        for blob in certs_pem:
            try:
                chain.extend(x509.load_pem_x509_certificates(blob))
            except ValueError as exc:
                raise SignatureError(f"certificate file is not PEM: {exc}") from None
        signer = cls(key, tuple(chain))
        signer.check()
        return signer

    def check(self) -> None:
        _ = self.alg
        if self.chain:
            leaf_key = self.chain[0].public_key()
            mine = self.private_key.public_key()
            if leaf_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) != mine.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                raise SignatureError(
                    f"certificate {_describe(self.chain[0])} does not match the signing key"
                )

    def sign(self, data: bytes) -> bytes:
        spec = ALGORITHMS[self.alg]
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(data, padding.PKCS1v15(), spec.hash())
        r, s = dss.decode_dss_signature(self.private_key.sign(data, ec.ECDSA(spec.hash())))
        return r.to_bytes(spec.size, "big") + s.to_bytes(spec.size, "big")


def make_signature(
    state: Any,
    signer: Signer,
    *,
    name: str,
    include: Sequence[str],
    exclude: Sequence[str],
    embed_jwk: bool = True,
) -> dict[str, str]:
    """The `_sigs/<name>.json` value signing the entries `include`/`exclude` select."""
    key = _sig_key(name)
    entries = {k: v for k, v in _entries_of(state).items() if k != key}  # re-signing replaces
    if any_matches(tuple(include), key) and not any_matches(tuple(exclude), key):
        raise SignatureError("a signature cannot include its own file; exclude it", key=key)
    selected = select_entries(entries, include, exclude)
    if not selected:
        raise SignatureError(
            f"include {list(include)} minus exclude {list(exclude)} selects no entry", key=key
        )
    header: dict[str, Any] = {
        "alg": signer.alg,
        "typ": TYP,
        "pvs": {"include": list(include), "exclude": list(exclude)},
    }
    if embed_jwk:
        header["jwk"] = jwk_of(signer.private_key.public_key())
    if signer.chain:
        header["x5c"] = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for cert in signer.chain
        ]
    protected = b64url_encode(canonical.dump_bytes(header))
    signature = signer.sign(signing_input(protected, canonical.dump_bytes(selected)))
    return {"#spec": SPEC, "protected": protected, "signature": b64url_encode(signature)}


def add_signature(
    state: Any,
    signer: Signer,
    *,
    name: str,
    include: Sequence[str],
    exclude: Sequence[str],
    embed_jwk: bool = True,
) -> dict[str, Any]:
    """A copy of the state with `_sigs/<name>.json` set (replaced when it exists)."""
    entries = dict(_entries_of(state))
    entries[_sig_key(name)] = make_signature(
        entries, signer, name=name, include=include, exclude=exclude, embed_jwk=embed_jwk
    )
    return entries
