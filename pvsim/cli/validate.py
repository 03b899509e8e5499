"""`pvsim validate SCENARIO --real-devices N [--json OUT] [--keep DIR]`: the scenario on a real
fleet and in pvsim, side by side (library: pvsim/validate/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from pvsim.outputs import check_file
from pvsim.scenario import load_scenario
from pvsim.validate import display, report
from pvsim.validate.run import validate
from shared.errors import PvError

DESCRIPTION = """\
Run one scenario twice and compare: on a REAL fleet on this machine (a Hub from `pvreal hub
serve` and N real devices from `pvreal fleet`, each a real daemon with runc containers in its
own network namespace, all started in a temporary folder and torn down afterwards, also on
Ctrl-C or failure) and in pvsim with the same N, releases, strategy and fault schedule.

The scenario's [validation] table says how: `time_scale` (real seconds per scenario second:
releases, faults and run.until_s are multiplied by it in both worlds; device configuration in
[update_model.engine] and fleet.poll_interval_s is used as written), `power_cuts` (e.g.
[{slot = 0, at_s = 20, off_s = 2}]: the device admitted first loses power), `settle_s`, and the
default `devices`. Hub outages are the scenario's [faults] hub_outages. Scenario defects that
can be made real: never_ready. Times printed are scenario seconds.

Before pvsim runs, the device figures (boot, container start, ready, write speed) are fitted from
the real fleet's timeline (`pvsim calibrate` does the same from a saved timeline), and each
release moves the bytes its real objects have.

Printed: per release the outcome counts of both worlds, how many devices' Hub-visible status
sequences are identical (slot by slot: the k-th admitted device of each world), and the
time-to-commit distributions (median, p90, Kolmogorov-Smirnov statistic). `agree` is true when
the counts are equal and at least 95 % of the sequences are identical; the exit status is 0
then, 3 when the worlds disagree. Needs root, runc, busybox and mksquashfs.

Example:
  sudo pvsim validate scenarios/validation/good-app.toml --real-devices 16 --json out.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="run a scenario on a real fleet and in pvsim, and compare",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("scenario", help="scenario TOML file (with a [validation] table)")
    parser.add_argument("--real-devices", type=int, metavar="N",
                        help="devices in both worlds (default: validation.devices)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the comparison as JSON")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep both timelines (real-timeline.json, sim-timeline.json) and the real side's logs "
                             "(DIR/logs: each daemon's, the Hub's, the relay's) in DIR, also when the real run fails")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no live display")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    scn = load_scenario(args.scenario)
    devices = args.real_devices if args.real_devices is not None else scn.validation.devices
    if not 1 <= devices <= 253:
        raise PvError("must be between 1 and 253 (one /24 of addresses)", source="--real-devices")
    if args.json is not None:
        check_file(args.json, "--json")
    if args.keep is not None and args.keep.exists() and not args.keep.is_dir():
        raise PvError("exists and is not a folder", source="--keep")
    live = display.Quiet() if args.quiet else display.Live_()
    try:
        result = validate(scn, devices, live, args.keep)
    finally:
        live.close()
    Console().print(report.table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(report.json_doc(result), indent=1) + "\n")
    return 0 if result["agree"] else 3
