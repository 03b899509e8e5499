"""`pvsim calibrate TIMELINE [-o FRAGMENT]`: device figures fitted from a real fleet's timeline,
written as a scenario fragment (library: pvsim/validate/calibrate.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvsim.outputs import check_file
from pvsim.validate import calibrate, timeline

DESCRIPTION = """\
Fit pvsim's device figures from a real fleet's timeline, as `pvsim validate --keep DIR` saves it
(DIR/real-timeline.json; the format is in docs/validation.md): boot_s, container_start_s,
ready_s and storage_write_mb_s as log-normals (median and log-space sigma of what was measured).
The result is a scenario fragment: a [device] table that a scenario takes in with
`include = ["calibrated.toml"]` (its own keys win over the fragment's).

Example:
  pvsim calibrate runs/real-timeline.json -o scenarios/validation/calibrated.toml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit device figures from a real fleet's timeline (a scenario fragment)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("timeline", type=Path, help="a real timeline (JSON)")
    parser.add_argument("-o", "--out", type=Path, help="write the fragment here (default: print it)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    doc = timeline.load(args.timeline)
    if args.out is not None:
        check_file(args.out, "--out")
    figures = calibrate.fit(doc)
    text = calibrate.fragment(figures, str(args.timeline), calibrate.observation_counts(doc))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}: {', '.join(figures) or 'no figure (nothing observed)'}")
    return 0
