"""pvtx's merge rules: what `add <package>` and `remove <part>` do to a state (pure, no I/O).

A state here is the decoded state JSON (a dict: `#spec` plus entries `path -> sha | inline JSON`).
The rules follow pvtx (conformance/pvtx/SEMANTICS.md §3-§7):

* Every `_sigs/<name>` entry claims key prefixes: its base64url `protected` header's
  `include` **and** `exclude` lists, each element cut at its first `*` (`awconnect/**` ->
  `awconnect/`). pvtx treats exclude like include; so do we (it is what makes a signature claim its
  own `_sigs` key).
* A *part* (the argument of `remove`, or each key of an added package) claims the part string
  itself plus the patterns of the first existing signature whose name starts with the part's
  stem (the part minus a leading `_config/` or `_sigs/`).
* An entry is removed when the part claims it at least once and at least as many times as all
  signatures of the state together (`n >= 1 and coverage <= n`): a file two packages sign survives
  the removal of one of them.
* `add` evaluates every package key as a removal request against the original state, drops the
  union, then merges the package in (its values win). Adding always rebuilds the header as
  `pantavisor-service-system@1`; a remove that removes nothing leaves the state untouched.

Deviations from pvtx live in docs/pvtx.md; in short, the state is a dict (each key once, the
package value wins, no order-dependent merge) and documents are validated before anything changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared import canonical
from shared.errors import InvalidState, SignatureError
from shared.state import check_path, parse_state

SPEC_KEY = "#spec"
HEADER_SPEC = "pantavisor-service-system@1"  # what pvtx writes whenever it rebuilds a state
SIGS_PREFIX = "_sigs/"
CONFIG_PREFIX = "_config/"
_CLAIM_KEY_PREFIXES = ("include", "exclude")
_B64URL_NOISE = re.compile(r"[^A-Za-z0-9_-]")

State = dict[str, Any]


def empty_state() -> State:
    """What `begin empty` starts from."""
    return {SPEC_KEY: HEADER_SPEC}


def entries(state: Mapping[str, Any]) -> Iterator[str]:
    """The state's entry keys (everything but `#spec`) in canonical (byte-sorted) order."""
    return (key for key in sorted(state) if key != SPEC_KEY)


# --------------------------------------------------------------------------------------------
# documents


def check_document(doc: Any, *, source: str | None) -> State:
    """Check a package or state document before it touches a transaction.

    The root must be an object carrying `#spec`, every other key a clean relative path, every
    signature decodable. (Value rules come from the revision model when the result is checked.)
    """
    if not isinstance(doc, dict):
        raise InvalidState(
            f"root must be a JSON object, found {type(doc).__name__}", source=source
        )
    if not isinstance(doc.get(SPEC_KEY), str) or not doc[SPEC_KEY]:
        # pvtx silently drops the first key of every document, assuming it is #spec; a document
        # without #spec would lose a real entry, so it is refused instead.
        raise InvalidState("missing or empty; every state and package starts with it",
                           source=source, key=SPEC_KEY)
    for key in doc:
        if key != SPEC_KEY:
            check_path(key, source=source)
    signature_claims(doc, source=source)  # raises on an undecodable signature
    return doc


def parse_document(text: str | bytes, *, source: str | None) -> State:
    """Parse JSON text (duplicate keys rejected) and check it as a document."""
    return check_document(canonical.loads(text, source=source), source=source)


def check_revision(state: Mapping[str, Any], *, source: str | None) -> None:
    """The revision model's rules (partial mode: no BSP needed): checked on every package and base
    before they are used, and on the final state before deploy or commit. Not after `remove`:
    pvtx's removal rules can leave e.g. a lone `<name>/src.json` mid-transaction."""
    parse_state(dict(state), source=source, partial=True)


# --------------------------------------------------------------------------------------------
# signatures


def signature_patterns(value: Any, *, key: str, source: str | None = None) -> tuple[str, ...]:
    """The key prefixes one `_sigs/...` value claims (include and exclude alike, cut at `*`)."""
    if not isinstance(value, dict) or "protected" not in value:
        return ()
    protected = value["protected"]
    if not isinstance(protected, str):
        raise SignatureError("'protected' must be a base64url string", source=source, key=key)
    header = _decode_protected(protected, key=key, source=source)
    return tuple(element.split("*", 1)[0] for element in _claim_lists(header))


def _decode_protected(text: str, *, key: str, source: str | None) -> Any:
    # The base64url rule is shared.signatures'; pvtx only adds leniency on top: characters
    # outside the alphabet are dropped first (padding is optional in both).
    from shared.signatures import b64url_decode  # lazy: cryptography is heavy for pvtx starts

    try:
        raw = b64url_decode(_B64URL_NOISE.sub("", text), what="protected header", key=key)
    except SignatureError:
        raw = b""
    if not raw:
        raise SignatureError("couldn't decode the signature's protected header",
                             source=source, key=key)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"protected header is not JSON: {exc}", source=source,
                             key=key) from None
    if not isinstance(header, dict):
        raise SignatureError("protected header must be a JSON object", source=source, key=key)
    return header


def _claim_lists(node: Any) -> Iterator[str]:
    """Elements of every array under a key starting with include/exclude, at any depth.

    pvtx scans tokens: it takes the consecutive scalar elements of such an array and stops at the
    first element that has children. Only strings are patterns here.
    """
    if isinstance(node, dict):
        for name, child in node.items():
            if name.startswith(_CLAIM_KEY_PREFIXES) and isinstance(child, list):
                for element in child:
                    if isinstance(element, dict | list):
                        break
                    if isinstance(element, str):
                        yield element
            else:
                yield from _claim_lists(child)
    elif isinstance(node, list):
        for child in node:
            yield from _claim_lists(child)


def signature_claims(state: Mapping[str, Any], *, source: str | None = None
                     ) -> dict[str, tuple[str, ...]]:
    """Every `_sigs/...` entry of the state with its claimed prefixes, in entry order."""
    return {
        key: signature_patterns(state[key], key=key, source=source)
        for key in entries(state)
        if key.startswith(SIGS_PREFIX)
    }


# --------------------------------------------------------------------------------------------
# ownership


@dataclass(frozen=True, slots=True)
class Ownership:
    """Precomputed claims of one state: the signatures' patterns and each entry's coverage."""

    claims: Mapping[str, tuple[str, ...]]
    coverage: Mapping[str, int]

    @classmethod
    def of(cls, state: Mapping[str, Any], *, source: str | None = None) -> Ownership:
        claims = signature_claims(state, source=source)
        every = [pattern for patterns in claims.values() for pattern in patterns]
        coverage = {key: _count(every, key) for key in entries(state)}
        return cls(claims=claims, coverage=coverage)

    def part_patterns(self, part: str) -> list[str]:
        """The part itself plus the patterns of the first signature its stem prefixes.

        The lookup is a prefix test on the signature name, as in pvtx: `pv` finds
        `_sigs/pv-avahi.json`, and `nginx` finds `_sigs/nginx-config.json` when that sorts first.
        """
        stem = part
        if part.startswith(CONFIG_PREFIX):
            stem = part[len(CONFIG_PREFIX):]
        elif part.startswith(SIGS_PREFIX):
            stem = part[len(SIGS_PREFIX):]
        patterns = [part]
        for sig_key, sig_patterns in self.claims.items():
            if len(sig_key) > len(SIGS_PREFIX) and sig_key[len(SIGS_PREFIX):].startswith(stem):
                patterns.extend(sig_patterns)
                break
        return patterns

    def doomed(self, part: str) -> set[str]:
        """Entries a removal request for `part` takes away (`n >= 1 and coverage <= n`)."""
        patterns = self.part_patterns(part)
        doomed = set()
        for key, coverage in self.coverage.items():
            n = _count(patterns, key)
            if n >= 1 and coverage <= n:
                doomed.add(key)
        return doomed


def _count(patterns: Iterable[str], key: str) -> int:
    return sum(1 for pattern in patterns if key.startswith(pattern))


# --------------------------------------------------------------------------------------------
# operations


def _rebuilt(state: Mapping[str, Any], drop: set[str]) -> State:
    rebuilt: State = {SPEC_KEY: HEADER_SPEC}
    rebuilt.update((key, state[key]) for key in entries(state) if key not in drop)
    return rebuilt


def remove_part(state: Mapping[str, Any], part: str) -> tuple[State, tuple[str, ...]]:
    """`remove <part>`: the new state and the keys removed (sorted).

    When nothing matches, the state comes back unchanged (pvtx does not even rebuild it).
    """
    doomed = Ownership.of(state).doomed(part)
    if not doomed:
        return dict(state), ()
    return _rebuilt(state, doomed), tuple(sorted(doomed))


def apply_package(state: Mapping[str, Any], package: Mapping[str, Any]
                  ) -> tuple[State, tuple[str, ...]]:
    """`add <package>`: the merged state and the keys the removal phase dropped (sorted).

    Every package key is a removal request against the original state (so a package carrying
    `_sigs/X.json` first drops everything the old X signature owned); then the package's entries
    are merged in and win.
    """
    ownership = Ownership.of(state)
    doomed: set[str] = set()
    for key in entries(package):
        doomed |= ownership.doomed(key)
    merged = _rebuilt(state, doomed)
    merged.update((key, package[key]) for key in entries(package))
    return dict(sorted(merged.items())), tuple(sorted(doomed))


def dump_state(state: Mapping[str, Any]) -> bytes:
    """The stored and shown form: canonical JSON (sorted keys, compact)."""
    return canonical.dump_bytes(state)
