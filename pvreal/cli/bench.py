"""`pvreal bench`: what a container-only update costs on the real device (as root); the
measurements are pvreal.bench's (see there for how each is taken)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pvreal.bench import TARGET_AMPLIFICATION, TARGET_RUN_S, bench


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="measure a container-only update on this machine")
    bench.add_argument("--runs", type=int, default=5, metavar="N")
    bench.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    bench.add_argument("--workdir", type=Path, metavar="DIR", help="default: a folder in /var/tmp")
    bench.add_argument("--keep", action="store_true", help="keep the work folder")
    bench.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    result = bench(args.runs, args.workdir, keep=args.keep)
    lat, wr = result["local_run_to_started_s"], result["app_only_update_writes"]
    rows = [
        ("LOCAL_RUN → container STARTED (median)", f"{lat['median']:.3f} s",
         f"≤ {TARGET_RUN_S} s", lat["median"] <= TARGET_RUN_S),
        (f"  min / max over {lat['runs']} runs", f"{lat['min']:.3f} / {lat['max']:.3f} s", "", None),
        ("bytes written, app-only update", f"{wr['bytes_written']:,} B", "", None),
        ("size of the changed objects", f"{wr['changed_objects_bytes']:,} B", "", None),
        ("write amplification", f"{wr['ratio']:.3f}×", f"≤ {TARGET_AMPLIFICATION}×",
         wr["ratio"] <= TARGET_AMPLIFICATION),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>22}  {'target':>8}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:<{width}}  {value:>22}  {target:>8}  {mark}")
    print(f"writes measured by {wr['measured_by']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0
