"""`pvsim trace`: one scripted device through the engine, and what Pantavisor would show.

- `case`: the TOML case format (pydantic), `load_case`;
- `run`: the device (`pvsim.memdevice`'s crashcheck device) and `run_trace`;
- `text`: the human-readable form of a trace. docs/trace.md is the user's guide.
"""

from __future__ import annotations

from pvsim.trace.case import TraceCase, TraceCaseError, load_case, validate_case
from pvsim.trace.run import Entry, TraceError, run_trace
from pvsim.trace.text import render

__all__ = [
    "Entry",
    "TraceCase",
    "TraceCaseError",
    "TraceError",
    "load_case",
    "render",
    "run_trace",
    "validate_case",
]
