"""The globs of a pvs@2 signature: which state keys an `include` or `exclude` pattern selects.

Pantavisor matches each pattern against each state key with glibc `fnmatch(3)` and
`FNM_PATHNAME`, so `*`, `?` and `[...]` never match a `/`. Two shapes are special:
- a bare `**` selects every key;
- `dir/**` selects `dir` and everything under it (the device strips `/**` and matches the rest
  with `FNM_LEADING_DIR`, so `_config/*/**` selects everything below any `_config/<x>`).
Any other `**`, as in `**/src.json`, is just two `*` and does not cross a `/`.

Python's `fnmatch` lets `*` cross `/`, so the glibc rules are rebuilt here as regular
expressions (tests compare them with the C library's own `fnmatch`). Character classes such as
`[:alpha:]` are ASCII-only, as in the C locale.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}

_NEVER = "(?!)"  # a regex that matches nothing: glibc answers FNM_NOMATCH for broken patterns


def _class_char(char: str) -> str:
    """One character, escaped for use inside a regex character class."""
    return "\\" + char if char in "\\]^-[" else char


def _bracket(pattern: str, start: int) -> tuple[str, int] | None:
    """Translate the bracket expression opening at `pattern[start]` ('[').

    Returns the regex and the index after the closing ']', or None when the bracket is not
    closed (glibc then matches the '[' literally). glibc reads the members in order and gives
    up (no match) at an unknown class name unless an earlier member already matched, so the
    members after such a name are dropped.
    """
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    broken = False  # an unknown [:class:] or a multi-character [.x.]/[=x=] was met

    def keep(item: str) -> None:
        if not broken:
            items.append(item)

    while True:
        if i >= len(pattern):
            return None
        char = pattern[i]
        if char == "]" and not first:
            i += 1
            break
        first = False
        if char == "[" and i + 1 < len(pattern) and pattern[i + 1] in ":=.":
            kind = pattern[i + 1]
            end = pattern.find(kind + "]", i + 2)
            if end < 0:
                return None
            name = pattern[i + 2 : end]
            i = end + 2
            if kind == ":":
                if name in _CLASSES:
                    keep(_CLASSES[name])
                else:
                    broken = True
                continue
            if len(name) != 1:  # the C locale has single-character collating elements only
                broken = True
                continue
            low = name
        elif char == "\\":
            if i + 1 >= len(pattern):
                return None
            low = pattern[i + 1]
            i += 2
        else:
            low = char
            i += 1
        # a range "low-high", unless the '-' is the last member before ']'
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            high = pattern[i + 1]
            i += 2
            if high == "\\":
                if i >= len(pattern):
                    return None
                high = pattern[i]
                i += 1
            elif high == "[" and i < len(pattern) and pattern[i] == ".":
                end = pattern.find(".]", i + 1)
                if end < 0:
                    return None
                name = pattern[i + 1 : end]
                i = end + 2
                if len(name) != 1:
                    broken = True
                    continue
                high = name
            if low <= high:  # a reversed range matches nothing
                keep(f"{_class_char(low)}-{_class_char(high)}")
            continue
        keep(_class_char(low))
    # with FNM_PATHNAME a bracket never matches '/', whatever it lists
    if negate:
        return (_NEVER if broken else "[^/" + "".join(items) + "]"), i
    if not items:
        return _NEVER, i
    return "(?!/)[" + "".join(items) + "]", i


@lru_cache(maxsize=4096)
def _regex(pattern: str, leading_dir: bool) -> str:
    """The regex text (anchored at the end) of one fnmatch pattern."""
    parts: list[str] = []
    i = 0
    after_star = False  # inside a run of '*' and '?' that holds a '*'
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            parts.append("[^/]*")
            after_star = True
            i += 1
            continue
        if char == "?":
            parts.append("[^/]")
            i += 1
            continue
        if char == "\\":
            if i + 1 >= len(pattern):  # a trailing backslash: glibc matches nothing
                return _NEVER
            if after_star and pattern[i + 1] == "/":
                # glibc tries the rest of the pattern only before the next '/' of the name
                # here, so a '*' followed by an escaped '/' can never match
                return _NEVER
            parts.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "[":
            bracket = _bracket(pattern, i)
            if bracket is None:
                parts.append(re.escape("["))
                i += 1
            else:
                regex, i = bracket
                parts.append(regex)
        else:
            parts.append(re.escape(char))
            i += 1
        after_star = False
    tail = "(?:/.*)?" if leading_dir else ""
    return "".join(parts) + tail + r"\Z"


@lru_cache(maxsize=4096)
def _compile(pattern: str, leading_dir: bool) -> re.Pattern[str]:
    return re.compile(_regex(pattern, leading_dir), re.DOTALL)


def fnmatch_pathname(pattern: str, name: str, *, leading_dir: bool = False) -> bool:
    """glibc `fnmatch(pattern, name, FNM_PATHNAME [| FNM_LEADING_DIR]) == 0`."""
    return _compile(pattern, leading_dir).match(name) is not None


def _dirname(pattern: str) -> str:
    """POSIX dirname(3) of a pattern ending in '/**', which is what the device matches."""
    head = pattern[: -len("/**")].rstrip("/") if pattern != "/**" else "/"
    if head == "" and pattern.startswith("/"):
        return "/"
    return head or "."


def _pvs_regex(pattern: str) -> str:
    if pattern == "**":
        return r".*\Z"
    if pattern.endswith("/**"):
        return _regex(_dirname(pattern), True)
    return _regex(pattern, False)


def glob_matches(pattern: str, key: str) -> bool:
    """Does a pvs@2 include/exclude pattern select this state key? (see the module docstring)"""
    return matcher((pattern,))(key)


@lru_cache(maxsize=1024)
def matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled test for "any of these patterns selects the key" (a signature's globs are
    matched against every key of every state, so they are compiled once)."""
    if not patterns:
        return lambda key: False
    regex = re.compile("|".join(f"(?:{_pvs_regex(p)})" for p in patterns), re.DOTALL)
    return lambda key: regex.match(key) is not None


def any_matches(patterns: Sequence[str], key: str) -> bool:
    return matcher(tuple(patterns))(key)
