"""Canonical JSON: round trips, detection of non-canonical text, duplicate keys."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import canonical
from shared.errors import InvalidJson

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(_text, json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_dumps_is_a_fixed_point(value):
    text = canonical.dumps(value)
    assert canonical.dumps(canonical.loads(text)) == text
    assert canonical.is_canonical(text)
    assert canonical.is_canonical(canonical.dump_bytes(value))


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_loads_of_dumps_gives_the_same_value(value):
    assert canonical.loads(canonical.dumps(value)) == value


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_whitespace_variants_are_detected(value):
    for variant in (
        json.dumps(value, indent=1, ensure_ascii=False),
        json.dumps(value, separators=(", ", ": "), sort_keys=True, ensure_ascii=False),
        " " + canonical.dumps(value),
        canonical.dumps(value) + "\n",
    ):
        assert canonical.is_canonical(variant) == (variant == canonical.dumps(value))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_text, _scalars, max_size=6))
def test_unsorted_keys_are_detected(obj):
    reversed_order = dict(reversed(list(obj.items())))
    text = json.dumps(reversed_order, separators=(",", ":"), ensure_ascii=False)
    keys_sorted = list(reversed_order) == sorted(reversed_order)
    assert canonical.is_canonical(text) == keys_sorted


@settings(max_examples=100, deadline=None)
@given(json_objects, _text, json_values)
def test_a_duplicated_key_is_rejected_with_its_name(obj, key, value):
    body = canonical.dumps(obj)[1:-1]
    pair = f"{json.dumps(key, ensure_ascii=False)}:{canonical.dumps(value)}"
    text = "{" + ",".join(p for p in (pair, body, pair) if p) + "}"
    with pytest.raises(InvalidJson) as info:
        canonical.loads(text, source="dup.json")
    assert info.value.source == "dup.json"
    assert info.value.key is not None
    assert not canonical.is_canonical(text)


def test_nested_duplicate_names_the_key():
    with pytest.raises(InvalidJson) as info:
        canonical.loads('{"a":{"x":1,"x":2}}')
    assert info.value.key == "x"
    assert "duplicate" in str(info.value)


def test_duplicates_allowed_on_request_last_wins():
    assert canonical.loads('{"a":1,"a":2}', allow_duplicates=True) == {"a": 2}


def test_non_utf8_and_malformed_text_are_invalid():
    with pytest.raises(InvalidJson, match="UTF-8"):
        canonical.loads(b"\xff\xfe", source="bin.json")
    with pytest.raises(InvalidJson, match="line 1"):
        canonical.loads("{", source="cut.json")
    assert not canonical.is_canonical(b"\xff")
    assert not canonical.is_canonical("{")


def test_non_ascii_is_kept_as_is():
    assert canonical.dumps({"k": "é"}) == '{"k":"é"}'
    assert canonical.is_canonical('{"k":"é"}')
    assert not canonical.is_canonical('{"k":"\\u00e9"}')


def test_loads_object_rejects_other_roots():
    with pytest.raises(InvalidJson, match="root must be a JSON object"):
        canonical.loads_object("[1]", source="list.json")
    assert canonical.loads_object('{"a":1}') == {"a": 1}
