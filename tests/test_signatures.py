"""pvs@2 signatures: globs, signing, verification, trust and coverage (pantavisor.md §1.8)."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime as dt
import functools
import hashlib
import hmac
import json
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pki import DAY, NOW, chain, issue, key

from shared import canonical
from shared import signatures as S
from shared.errors import SignatureError
from shared.globs import fnmatch_pathname, glob_matches
from shared.state import parse_state

SPEC = "pantavisor-service-system@1"
SHA = "0123456789abcdef" * 4


def base_state() -> dict:
    return {
        "#spec": SPEC,
        "bsp/run.json": {"kernel": "kernel.img", "initrd": "pantavisor"},
        "bsp/kernel.img": SHA,
        "bsp/pantavisor": SHA,
        "bsp/src.json": {"#spec": "bsp-manifest-src@1"},
        "device.json": {"groups": []},
        "app/run.json": {"#spec": "service-manifest-run@1", "name": "app"},
        "app/root.squashfs": SHA,
        "app/src.json": {"#spec": "service-manifest-src@1"},
        "_config/app/etc/app.conf": SHA,
    }


def trust_for(root, **kw) -> S.TrustConfig:
    return S.TrustConfig(truststore=S.Truststore((root.cert,), name="default store"), **kw)


def signed(state: dict, kind: str = "rsa", *, name: str = "app", part: str | None = "app", **rules):
    root, inter, leaf = chain(kind)
    include, exclude = S.default_rules(name, part=part, **rules)
    signer = S.Signer(leaf.key, (leaf.cert, inter.cert))
    return S.add_signature(state, signer, name=name, include=include, exclude=exclude), root


def header_of(sig: dict) -> dict:
    return json.loads(S.b64url_decode(sig["protected"], what="h", key="k"))


def with_header(sig: dict, **changes) -> dict:
    header = header_of(sig) | changes
    return dict(sig, protected=S.b64url_encode(canonical.dump_bytes(header)))


# ---------------------------------------------------------------------------------------------
# globs


GLOB_TABLE = [
    # pattern, key, matches
    ("**", "bsp/kernel.img", True),
    ("**", "#spec", True),
    ("**", "_config/a/b/c", True),
    ("bsp/**", "bsp/kernel.img", True),
    ("bsp/**", "bsp/firmware/a/b.bin", True),
    ("bsp/**", "bsp", True),  # FNM_LEADING_DIR on "bsp": the directory itself matches
    ("bsp/**", "bspx/kernel.img", False),
    ("bsp/**", "_config/bsp/x", False),
    ("_config/*/**", "_config/app/etc/x", True),
    ("_config/*/**", "_config", False),
    ("*", "device.json", True),
    ("*", "#spec", True),
    ("*", "app/run.json", False),  # FNM_PATHNAME: '*' never crosses '/'
    ("*.json", "device.json", True),
    ("*.json", "app/run.json", False),
    ("**/src.json", "app/src.json", True),
    ("**/src.json", "a/b/src.json", False),  # not bare: '**' is two '*', one level only
    ("src.json", "app/src.json", False),
    ("app/?un.json", "app/run.json", True),
    ("app?run.json", "app/run.json", False),  # '?' never matches '/'
    ("app/[rs]un.json", "app/run.json", True),
    ("app/[!r]un.json", "app/run.json", False),
    ("app[/]run.json", "app/run.json", False),  # a bracket never matches '/'
    ("a\\*", "a*", True),
    ("a\\*", "ab", False),
    ("#spec", "#spec", True),
    ("_sigs/.json", "_sigs/bsp.json", False),
    ("_config/nginx/something/to/something.txt", "_config/nginx/something/to/something.txt", True),
    ("*/run.json", ".hidden/run.json", True),  # no FNM_PERIOD: dots are ordinary
    ("app/[[:digit:]].txt", "app/7.txt", True),
    ("app/[", "app/[", True),  # unterminated bracket: a literal '['
]


@pytest.mark.parametrize(("pattern", "key", "expected"), GLOB_TABLE)
def test_glob_table(pattern, key, expected):
    assert glob_matches(pattern, key) is expected


@functools.cache
def _libc_fnmatch():
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "fnmatch"):
        pytest.skip("the C library has no fnmatch")
    libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    return libc.fnmatch


FNM_PATHNAME, FNM_LEADING_DIR = 1, 8

_BRACKET_MEMBERS = ["a", "b", "-", "a-b", "b-a", "[:alpha:]", "[:digit:]", "\\]", "/"]
_TOKENS = ["a", "b", ".", "-", "/", "*", "?", "\\a", "\\*", "1"]


def _random_pattern(rng: random.Random) -> str:
    """Tokens and well-formed brackets (glibc's handling of broken brackets is not mirrored)."""
    parts = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.2:
            members = rng.choice(["a", "]", "-", "b"]) + "".join(
                rng.choice(_BRACKET_MEMBERS) for _ in range(rng.randint(0, 3))
            )
            parts.append("[" + rng.choice(["", "!", "^"]) + members + "]")
        else:
            parts.append(rng.choice(_TOKENS))
    return "".join(parts)


def test_fnmatch_agrees_with_glibc():
    """The regex translation answers like the C library the device links, on 16000 cases."""
    fnmatch = _libc_fnmatch()
    rng = random.Random(1808)
    mismatches = []
    for _ in range(8000):
        pattern = _random_pattern(rng)
        name = "".join(rng.choice("ab/.-*[]1!") for _ in range(rng.randint(0, 7)))
        for leading_dir in (False, True):
            flags = FNM_PATHNAME | (FNM_LEADING_DIR if leading_dir else 0)
            expected = fnmatch(pattern.encode(), name.encode(), flags) == 0
            if fnmatch_pathname(pattern, name, leading_dir=leading_dir) is not expected:
                mismatches.append((pattern, name, leading_dir, expected))
    assert mismatches == []


def test_default_rules_mirror_pvr():
    assert S.default_rules("app", part="app") == (
        ("app/**", "_config/app/**"),
        ("app/src.json", "_sigs/app.json"),
    )
    assert S.default_rules("app", part="app", config=False) == (
        ("app/**",),
        ("app/src.json", "_sigs/app.json"),
    )
    assert S.default_rules("cfg", include=["_config/os/**"]) == (
        ("_config/os/**",),
        ("src.json", "_sigs/cfg.json"),
    )
    assert S.default_rules("all") == (("*",), ("**/src.json", "_sigs/all.json"))
    with pytest.raises(SignatureError, match="not both"):
        S.default_rules("x", part="x", include=["a"])
    with pytest.raises(SignatureError, match="file name"):
        S.default_rules("a/b")


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    ("kind", "alg", "size"),
    [
        ("rsa", "RS256", 256),
        ("P-256", "ES256", 64),
        ("P-384", "ES384", 96),
        ("P-521", "ES512", 132),
    ],
)
def test_round_trip_per_algorithm(kind, alg, size):
    state, root = signed(base_state(), kind)
    sig = state["_sigs/app.json"]
    assert set(sig) == {"#spec", "protected", "signature"}  # detached: no payload
    header = header_of(sig)
    assert header["alg"] == alg and header["typ"] == "PVS"
    assert header["pvs"] == {
        "include": ["app/**", "_config/app/**"],
        "exclude": ["app/src.json", "_sigs/app.json"],
    }
    assert len(header["x5c"]) == 2
    assert len(S.b64url_decode(sig["signature"], what="s", key="k")) == size  # raw r||s for ES
    check = S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)
    assert check.ok and check.alg == alg and check.signer == "pvs signer"
    assert check.protected == ("_config/app/etc/app.conf", "app/root.squashfs", "app/run.json")


def test_signature_survives_a_json_round_trip_of_the_state():
    state, root = signed(base_state())
    reloaded = canonical.loads(canonical.dumps(state))
    assert S.verify_state(reloaded, trust_for(root), now=NOW).ok


def test_der_encoded_ecdsa_signature_is_rejected():
    """JWS ES* signatures are fixed-size r||s; a DER signature over the right input must fail."""
    state, root = signed(base_state(), "P-256")
    sig = state["_sigs/app.json"]
    _, _, leaf = chain("P-256")
    payload = S.payload_bytes(state, *S.default_rules("app", part="app"))
    der = leaf.key.sign(S.signing_input(sig["protected"], payload), ec.ECDSA(hashes.SHA256()))
    state["_sigs/app.json"] = dict(sig, signature=S.b64url_encode(der))
    with pytest.raises(SignatureError, match="does not match"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


def test_signing_replaces_an_existing_signature_of_the_same_name():
    state, root = signed(base_state())
    state["app/root.squashfs"] = "f" * 64
    resigned, _ = signed(state)
    assert resigned["_sigs/app.json"] != state["_sigs/app.json"]
    assert S.verify_state(resigned, trust_for(root), now=NOW).ok


def test_signing_refuses_its_own_file_and_empty_selections():
    _, _, leaf = chain()
    signer = S.Signer(leaf.key, (leaf.cert,))
    with pytest.raises(SignatureError, match="its own file") as err:
        S.make_signature(base_state(), signer, name="all", include=["**"], exclude=[])
    assert err.value.key == "_sigs/all.json"
    with pytest.raises(SignatureError, match="selects no entry"):
        S.make_signature(base_state(), signer, name="x", include=["nothing/**"], exclude=[])


def test_signer_refuses_a_certificate_for_another_key():
    _, inter, leaf = chain()
    with pytest.raises(SignatureError, match="does not match the signing key"):
        S.Signer.from_pem(
            key("P-256", 99).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            [leaf.cert_pem],
        )
    signer = S.Signer.from_pem(leaf.key_pem, [leaf.cert_pem + inter.cert_pem])
    assert [c.subject for c in signer.chain] == [leaf.cert.subject, inter.cert.subject]


# ---------------------------------------------------------------------------------------------
# tampering


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: s.__setitem__("app/root.squashfs", "e" * 64), id="changed-object"),
        pytest.param(lambda s: s["app/run.json"].__setitem__("name", "evil"), id="changed-json"),
        pytest.param(lambda s: s.__setitem__("app/extra.bin", SHA), id="added-entry"),
        pytest.param(lambda s: s.__setitem__("_config/app/new", SHA), id="added-config"),
        pytest.param(lambda s: s.pop("_config/app/etc/app.conf"), id="removed-entry"),
    ],
)
def test_tampered_state_fails(tamper):
    state, root = signed(base_state())
    state = json.loads(json.dumps(state))
    tamper(state)
    result = S.verify_state(state, trust_for(root), now=NOW)
    assert result.outcome is S.Outcome.VALIDATION
    assert result.message == "Signature validation failed"
    assert "does not match" in result.signatures[0].error


def test_changes_outside_the_signed_set_keep_the_signature_valid():
    state, root = signed(base_state())
    state["app/src.json"] = {"#spec": "service-manifest-src@1", "changed": True}  # excluded
    state["device.json"] = {"groups": ["x"]}  # not included
    assert S.verify_state(state, trust_for(root), now=NOW).ok


def test_junk_appended_to_the_signature_is_not_ignored():
    state, root = signed(base_state())
    sig = state["_sigs/app.json"]
    state["_sigs/app.json"] = dict(sig, signature=sig["signature"] + "!")
    with pytest.raises(SignatureError, match="not valid base64url"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


def test_tampered_protected_header_fails():
    state, root = signed(base_state())
    sig = state["_sigs/app.json"]
    header = header_of(sig)
    header["pvs"]["exclude"].append("app/root.squashfs")  # narrow what is signed
    state["_sigs/app.json"] = with_header(sig, pvs=header["pvs"])
    with pytest.raises(SignatureError, match="does not match"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


# ---------------------------------------------------------------------------------------------
# algorithms and header


def _forged(state: dict, header: dict, signature: bytes) -> dict:
    protected = S.b64url_encode(canonical.dump_bytes(header))
    return dict(state) | {
        "_sigs/app.json": {
            "#spec": "pvs@2",
            "protected": protected,
            "signature": S.b64url_encode(signature),
        }
    }


def test_alg_none_is_rejected():
    state = _forged(
        base_state(),
        {"alg": "none", "typ": "PVS", "pvs": {"include": ["app/**"], "exclude": []}},
        b"x",
    )
    with pytest.raises(SignatureError, match="'none'") as err:
        S.verify_signature(state, "_sigs/app.json", S.TrustConfig(), now=NOW)
    assert err.value.key == "_sigs/app.json"


def test_hmac_is_rejected_even_with_a_correct_mac():
    """HS256 keyed with the public key bytes is the classic JWS confusion attack."""
    root, _, leaf = chain()
    pem = leaf.cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "PVS", "pvs": {"include": ["app/**"], "exclude": []}}
    protected = S.b64url_encode(canonical.dump_bytes(header))
    payload = S.payload_bytes(base_state(), ["app/**"], [])
    mac = hmac.new(pem, S.signing_input(protected, payload), hashlib.sha256).digest()
    state = _forged(base_state(), header, mac)
    result = S.verify_state(state, S.TrustConfig(public_key_pem=pem), now=NOW)
    assert not result.ok and "HMAC" in result.signatures[0].error


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"alg": "PS256"}, "unknown alg"),
        ({"alg": "ES256"}, "needs an EC key"),  # RSA leaf with an EC algorithm
        ({"typ": "JWT"}, "typ must be"),
        ({"pvs": {"include": ["app/**"]}}, "pvs.exclude"),
        ({"crit": ["exp"]}, "critical"),
        ({"x5c": ["not base64!"]}, "x5c"),
        ({"x5c": []}, "x5c must be"),
    ],
)
def test_bad_headers_are_rejected(change, error):
    state, root = signed(base_state())
    state["_sigs/app.json"] = with_header(state["_sigs/app.json"], **change)
    with pytest.raises(SignatureError, match=error):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


@pytest.mark.parametrize(
    "value",
    [
        {"#spec": "pvs@2", "protected": "e30", "signature": ""},
        {"#spec": "pvs@2", "protected": "not*b64", "signature": "AA"},
        {"#spec": "pvs@2", "protected": "e30", "signature": "AA+/"},
        {"#spec": "pvs@2", "protected": "e30", "signature": "A"},
        {"#spec": "pvs@2", "protected": S.b64url_encode(b"[1]"), "signature": "AA"},
        {"#spec": "pvs@1", "protected": "e30", "signature": "AA"},
        "not an object",
    ],
)
def test_malformed_signature_files_fail_validation(value):
    state = base_state() | {"_sigs/bad.json": value}
    result = S.verify_state(state, S.TrustConfig(), now=NOW)
    assert result.outcome is S.Outcome.VALIDATION
    assert result.signatures[0].key == "_sigs/bad.json" and result.signatures[0].error


def test_embedded_jwk_must_be_the_signing_key():
    state, root = signed(base_state())
    other = S.jwk_of(key("rsa", 77).public_key())
    state["_sigs/app.json"] = with_header(state["_sigs/app.json"], jwk=other)
    with pytest.raises(SignatureError, match="jwk"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


# ---------------------------------------------------------------------------------------------
# certificate trust


def test_wrong_key_for_the_x5c_certificate_fails():
    """A signature made with one key but carrying another key's certificate."""
    root, inter, leaf = chain()
    impostor = S.Signer(key("rsa", 55))  # not the leaf's key; build the header by hand
    include, exclude = S.default_rules("app", part="app")
    sig = S.make_signature(
        base_state(), impostor, name="app", include=include, exclude=exclude, embed_jwk=False
    )
    der = [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
        for c in (leaf.cert, inter.cert)
    ]
    state = base_state() | {"_sigs/app.json": with_header(sig, x5c=der)}
    with pytest.raises(SignatureError, match="does not match"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


def test_chain_to_another_root_is_untrusted():
    state, _ = signed(base_state())
    stranger, _, _ = chain(root_cn="Stranger Root CA")
    with pytest.raises(SignatureError, match="does not verify against default store"):
        S.verify_signature(state, "_sigs/app.json", trust_for(stranger), now=NOW)


def test_missing_intermediate_is_untrusted():
    root, inter, leaf = chain()
    include, exclude = S.default_rules("app", part="app")
    state = S.add_signature(
        base_state(), S.Signer(leaf.key, (leaf.cert,)), name="app", include=include, exclude=exclude
    )
    with pytest.raises(SignatureError, match="does not verify"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)
    # trusting the intermediate directly anchors the chain (mbedtls accepts that too)
    assert S.verify_signature(
        state, "_sigs/app.json", S.TrustConfig(truststore=S.Truststore((inter.cert,))), now=NOW
    ).ok


def test_empty_truststore_fails():
    state, _ = signed(base_state())
    with pytest.raises(SignatureError, match="is empty"):
        S.verify_signature(state, "_sigs/app.json", S.TrustConfig(), now=NOW)


@pytest.mark.parametrize(
    ("when", "error"),
    [(NOW + 400 * DAY, "expired"), (NOW - 60 * DAY, "not valid yet")],
)
def test_leaf_outside_its_validity_fails(when, error):
    state, root = signed(base_state())
    with pytest.raises(SignatureError, match=error):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=when)


def test_expired_intermediate_fails():
    root = issue("Dates Root", ca=True)
    inter = issue("Dates Sub", issuer=root, ca=True, not_after=NOW - DAY)
    leaf = issue("dates leaf", issuer=inter)
    state = S.add_signature(
        base_state(),
        S.Signer(leaf.key, (leaf.cert, inter.cert)),
        name="app",
        include=["app/**"],
        exclude=["_sigs/app.json"],
    )
    with pytest.raises(SignatureError, match="not valid at validation time"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


@pytest.mark.parametrize("bad", ["leaf-usage", "ca-usage", "leaf-as-issuer"])
def test_key_usage_and_ca_flag_are_enforced(bad):
    root = issue(f"KU Root {bad}", ca=True)
    if bad == "ca-usage":
        inter = issue(f"KU Sub {bad}", issuer=root, ca=True, key_usage="wrong")
    elif bad == "leaf-as-issuer":
        inter = issue(f"KU Sub {bad}", issuer=root, ca=False)
    else:
        inter = issue(f"KU Sub {bad}", issuer=root, ca=True)
    leaf = issue(
        f"KU leaf {bad}", issuer=inter, key_usage="wrong" if bad == "leaf-usage" else "default"
    )
    state = S.add_signature(
        base_state(),
        S.Signer(leaf.key, (leaf.cert, inter.cert)),
        name="app",
        include=["app/**"],
        exclude=["_sigs/app.json"],
    )
    with pytest.raises(SignatureError, match="does not verify"):
        S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW)


def test_certificates_without_key_usage_are_accepted():
    root = issue("NoKU Root", ca=True, key_usage=None)
    leaf = issue("noku leaf", issuer=root, key_usage=None)
    state = S.add_signature(
        base_state(),
        S.Signer(leaf.key, (leaf.cert,)),
        name="app",
        include=["app/**"],
        exclude=["_sigs/app.json"],
    )
    assert S.verify_signature(state, "_sigs/app.json", trust_for(root), now=NOW).ok


def test_public_key_is_used_when_there_is_no_x5c():
    private = key("P-384", 3)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    state = S.add_signature(
        base_state(), S.Signer(private), name="app", include=["app/**"], exclude=["_sigs/app.json"]
    )
    assert "x5c" not in header_of(state["_sigs/app.json"])
    check = S.verify_signature(state, "_sigs/app.json", S.TrustConfig(public_key_pem=pem), now=NOW)
    assert check.ok and check.store == "public key"
    with pytest.raises(SignatureError, match="no trusted public key"):
        S.verify_signature(state, "_sigs/app.json", S.TrustConfig(), now=NOW)
    wrong = (
        key("P-384", 4)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError):
        S.verify_signature(state, "_sigs/app.json", S.TrustConfig(public_key_pem=wrong), now=NOW)


# ---------------------------------------------------------------------------------------------
# OEM truststore


def _oem_setup(include: list[str], cn: str = "pv-oem-test"):
    default_root = chain()[0]
    oem_root = issue("OEM Root CA", ca=True)
    oem_leaf = issue(cn, issuer=oem_root)
    state = S.add_signature(
        base_state(),
        S.Signer(oem_leaf.key, (oem_leaf.cert,)),
        name="oem",
        include=include,
        exclude=["_sigs/oem.json"],
    )
    trust = S.TrustConfig(
        truststore=S.Truststore((default_root.cert,), name="default store"),
        oem_truststore=S.Truststore((oem_root.cert,), name="oem store"),
        oem_name="pv-oem-test",
    )
    return state, trust


def test_oem_certificate_signs_outside_bsp_with_the_oem_store():
    state, trust = _oem_setup(["app/**"])
    check = S.verify_signature(state, "_sigs/oem.json", trust, now=NOW)
    assert check.ok and check.store == "oem store" and check.signer == "pv-oem-test"


@pytest.mark.parametrize("include", [["bsp/**"], ["app/**", "bsp/kernel.img"]])
def test_oem_certificate_cannot_sign_the_bsp(include):
    state, trust = _oem_setup(include)
    with pytest.raises(SignatureError, match="default store"):
        S.verify_signature(state, "_sigs/oem.json", trust, now=NOW)


def test_oem_certificate_cannot_sign_the_oem_container():
    state, trust = _oem_setup(["pv-oem-test/**", "app/**"])
    state["pv-oem-test/run.json"] = {"name": "pv-oem-test"}
    include = ["pv-oem-test/**", "app/**"]
    oem_leaf = issue("pv-oem-test", issuer=issue("OEM Root CA", ca=True))
    state = S.add_signature(
        state,
        S.Signer(oem_leaf.key, (oem_leaf.cert,)),
        name="oem",
        include=include,
        exclude=["_sigs/oem.json"],
    )
    with pytest.raises(SignatureError, match="default store"):
        S.verify_signature(state, "_sigs/oem.json", trust, now=NOW)


def test_non_oem_cn_uses_the_default_store():
    state, trust = _oem_setup(["app/**"], cn="someone else")
    with pytest.raises(SignatureError, match="default store"):
        S.verify_signature(state, "_sigs/oem.json", trust, now=NOW)


# ---------------------------------------------------------------------------------------------
# modes and coverage


def test_coverage_counts_excludes_as_covered_and_never_checks_sigs():
    state, root = signed(base_state())
    result = S.verify_state(state, trust_for(root), now=NOW, mode="lenient")
    assert result.coverage.protected == (
        "_config/app/etc/app.conf",
        "app/root.squashfs",
        "app/run.json",
    )
    assert result.coverage.excluded == ("_sigs/app.json", "app/src.json")
    assert "#spec" in result.coverage.notseen and "bsp/kernel.img" in result.coverage.notseen
    assert not any(k.startswith("_sigs/") for k in result.coverage.notseen)


def _fully_signed():
    state, root = signed(base_state())
    bsp_include = ["bsp/**", "#spec", "device.json"]
    state, _ = signed(state, name="bsp", part=None, include=bsp_include, exclude=["bsp/src.json"])
    return state, root


def test_modes_on_a_fully_covered_state():
    state, root = _fully_signed()
    for mode in S.SecurebootMode:
        result = S.verify_state(state, trust_for(root), now=NOW, mode=mode)
        assert result.ok, (mode, result.errors)
    assert S.verify_state(state, trust_for(root), now=NOW, mode="strict").coverage.notseen == ()


def test_uncovered_entry_fails_strict_only():
    state, root = _fully_signed()
    state["_hostconfig/etc/motd"] = SHA  # nobody signs it
    strict = S.verify_state(state, trust_for(root), now=NOW, mode="strict")
    assert strict.outcome is S.Outcome.UNCOVERED
    assert strict.message == "State not fully covered by signatures"
    assert strict.coverage.notseen == ("_hostconfig/etc/motd",)
    for mode in ("audit", "lenient"):
        result = S.verify_state(state, trust_for(root), now=NOW, mode=mode)
        assert result.ok and result.coverage.notseen == ("_hostconfig/etc/motd",)


def test_unsigned_state_passes_lenient_and_fails_strict():
    state = base_state()
    assert S.verify_state(state, S.TrustConfig(), now=NOW).ok
    assert S.verify_state(state, S.TrustConfig(), now=NOW, mode="audit").ok
    assert S.verify_state(state, S.TrustConfig(), now=NOW, mode="strict").message == (
        "State not fully covered by signatures"
    )


def test_invalid_signature_fails_every_mode_but_disabled():
    state, root = _fully_signed()
    state["app/root.squashfs"] = "e" * 64
    for mode in ("audit", "lenient", "strict"):
        result = S.verify_state(state, trust_for(root), now=NOW, mode=mode)
        assert result.outcome is S.Outcome.VALIDATION, mode
    assert S.verify_state(state, trust_for(root), now=NOW, mode="disabled").ok


def test_a_state_that_is_not_an_object_is_an_internal_error():
    result = S.verify_state(["not", "a", "state"], S.TrustConfig(), now=NOW)
    assert result.outcome is S.Outcome.INTERNAL and result.message == "Internal error"


def test_result_json_has_the_documented_keys():
    state, root = signed(base_state())
    data = S.verify_state(state, trust_for(root), now=NOW).to_json()
    assert list(data)[:5] == ["ok", "message", "protected", "excluded", "notseen"]
    assert data["ok"] is True and data["message"] is None
    assert data["signatures"][0]["key"] == "_sigs/app.json"


# ---------------------------------------------------------------------------------------------
# real pvr signatures from the conformance data


def _real(conformance_dir, name: str) -> dict:
    return canonical.loads_object((conformance_dir / "resources" / name).read_bytes())


def _anchored_at_chain_end(state: dict, key: str) -> S.TrustConfig:
    """No root CA ships with the data, so trust the last certificate of the x5c chain."""
    last = S.parse_signature(key, state[key]).x5c[-1]
    return S.TrustConfig(truststore=S.Truststore((last,), name="chain end"))


VALID_AT = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)  # inside every conformance cert's validity


@pytest.mark.parametrize(
    ("resource", "key", "alg", "count"),
    [
        ("awconnect.json", "_sigs/awconnect.json", "RS256", 9),
        ("bsp_init.json", "_sigs/bsp.json", "ES384", 8),
        ("bsp_init_groups.json", "_sigs/bsp.json", "RS256", 9),
        ("vaultwarden.json", "_sigs/vaultwarden.json", "RS256", 4),
        ("initial_state.json", "_sigs/pvr-sdk.json", "RS256", 7),
        ("config_b_glob.json", "_sigs/config_b.json", "RS256", 14),
    ],
)
def test_real_pvr_signature_verifies_and_a_one_byte_tamper_fails(
    conformance_dir, resource, key, alg, count
):
    state = _real(conformance_dir, resource)
    trust = _anchored_at_chain_end(state, key)
    check = S.verify_signature(state, key, trust, now=VALID_AT)
    assert check.ok and check.alg == alg and len(check.protected) == count
    victim = next(k for k in check.protected if isinstance(state[k], str))
    value = state[victim]
    state[victim] = value[:-1] + ("0" if value[-1] != "0" else "1")
    with pytest.raises(SignatureError, match="does not match"):
        S.verify_signature(state, key, trust, now=VALID_AT)


def test_real_certificates_have_expired(conformance_dir):
    state = _real(conformance_dir, "awconnect.json")
    trust = _anchored_at_chain_end(state, "_sigs/awconnect.json")
    with pytest.raises(SignatureError, match="expired on 2024-09-14"):
        S.verify_signature(state, "_sigs/awconnect.json", trust, now=NOW)


def test_real_hostconfig_signature_covers_entries_no_longer_in_the_state(conformance_dir):
    """initial_state.json keeps `_sigs/_hostconfig.json` (include `_hostconfig/**`) without any
    `_hostconfig/` entry: its payload cannot be rebuilt, so a device rejects this state."""
    state = _real(conformance_dir, "initial_state.json")
    key = "_sigs/_hostconfig.json"
    sig = S.parse_signature(key, state[key])
    assert S.select_entries(state, sig.include, sig.exclude) == {}
    result = S.verify_state(state, _anchored_at_chain_end(state, key), now=VALID_AT)
    assert result.outcome is S.Outcome.VALIDATION
    assert [c.key for c in result.signatures if not c.ok] == [key]


def test_parsed_state_objects_are_accepted(conformance_dir):
    """The engine holds shared.state.State values; their `entries` are what gets verified."""
    raw = _real(conformance_dir, "bsp_init_groups.json")
    state = parse_state(raw, partial=True)
    trust = _anchored_at_chain_end(raw, "_sigs/bsp.json")
    result = S.verify_state(state, trust, now=VALID_AT, mode="strict")
    assert result.ok and result.coverage.notseen == ()


def test_an_unsigned_state_is_checked_without_importing_cryptography():
    """cryptography is imported on first use (about 0.5 s of a QEMU guest's boot): an unsigned
    state is verified without it, and a signed one still brings it in."""
    import subprocess
    import sys

    code = (
        "import sys, datetime as dt\n"
        "from shared.signatures import TrustConfig, verify_state\n"
        "r = verify_state({'#spec': 'pantavisor-service-system@1', 'a/x': 'y'}, TrustConfig(),"
        " now=dt.datetime.now(dt.timezone.utc))\n"
        "print(r.outcome.name, 'cryptography' in sys.modules)\n"
        "from shared.signatures import ALGORITHMS\n"
        "print(ALGORITHMS['ES256'].curve.__name__, 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OK", "False", "SECP256R1", "True"]
