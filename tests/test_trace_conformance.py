"""The conformance corpus: Pantavisor's behaviour as traces (tests/conformance/pantavisor/).

Each `NAME.toml` is a trace case (docs/trace.md) naming, in `c_function`, the C function of
pantavisor/pantavisor its behaviour was read from; `NAME.expected.json` is its trace, checked in.
The test runs every case with the case's own ordering and compares the whole trace.

Maintainers: after a deliberate change of the engine, regenerate the expected traces with
`PVTWIN_REGEN=1 pytest tests/test_trace_conformance.py` and review the diff line by line:
every changed line is a changed prediction of what Pantavisor does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pvsim.trace import load_case, run_trace

CORPUS = Path(__file__).resolve().parent / "conformance" / "pantavisor"
CASES = sorted(CORPUS.glob("*.toml"))
C_FUNCTION = re.compile(r"^[\w/.-]+\.c: \w+(, \w+)*(; [\w/.-]+\.c: \w+(, \w+)*)*$")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path):
    case = load_case(path)
    assert C_FUNCTION.match(case.c_function), f"{path.name}: c_function must be 'file.c: function'"
    assert case.description, f"{path.name}: say what the case shows"
    trace = json.loads(json.dumps(run_trace(case)))
    expected = path.with_suffix(".expected.json")
    if os.environ.get("PVTWIN_REGEN") == "1":
        expected.write_text(json.dumps(trace, indent=1) + "\n")
    assert expected.exists(), f"{expected.name} missing: run with PVTWIN_REGEN=1 and review it"
    assert trace == json.loads(expected.read_text())
