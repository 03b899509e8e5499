"""`pvreal qemu build|run`: build the boot chain artifacts, boot them under QEMU (TCG).

The library is pvreal/qemu/ (`build` for build, `launch` for run).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from pvreal.qemu import build as build_mod
from pvreal.qemu import grub, kernel, launch, runner, scenarios, timeline
from pvreal.tools import ToolError
from shared.errors import PvError


def register(subparsers: argparse._SubParsersAction) -> None:
    qemu = subparsers.add_parser(
        "qemu",
        help="build and boot a QEMU guest: real GRUB with the try-boot latch, Python as PID 1",
        description=(
            "Build the kernel, the Python initramfs, grub.lnx and the storage disk (cached), "
            "then boot them under QEMU/TCG and report each boot. See docs/qemu.md."
        ),
    )
    verbs = qemu.add_subparsers(dest="verb", metavar="VERB", required=True)

    make = verbs.add_parser("build", help="build (or reuse) every artifact in --out")
    make.add_argument(
        "--out", type=Path, default=Path("build/qemu"), help="output folder (default: build/qemu)"
    )
    make.add_argument(
        "--cache",
        type=Path,
        help="download/strip cache (default: ~/.cache/pvtwin/qemu or $PVTWIN_CACHE/qemu)",
    )
    make.add_argument(
        "--revisions",
        default="0",
        help="comma-separated trails to lay out on the disk (default: 0)",
    )
    make.add_argument(
        "--fresh-disk",
        action="store_true",
        help="rebuild the storage disk even if its inputs did not change",
    )
    make.add_argument(
        "--on-save-env-failure",
        choices=grub.ON_SAVE_ENV_FAILURE,
        default="boot-committed",
        help="what GRUB boots when it cannot record a try (default: boot-committed)",
    )
    make.add_argument(
        "--kernel", choices=sorted(kernel.FLAVOURS), default=kernel.DEFAULT_FLAVOUR,
        help="Debian kernel flavour: cloud (LZ4, ~3 s faster per boot under TCG; watchdog = "
        "softdog) or generic (XZ; has the i6300esb driver). Default: cloud",
    )  # fmt: skip
    make.add_argument(
        "--boot-checksum", action="store_true",
        help="re-hash the booted revision's objects at every boot (Pantavisor's boot-time "
        "checksum pass, ~0.7 s per boot under TCG). Default: GRUB passes pv_quickboot on the "
        "kernel command line, as Pantavisor's generic U-Boot script does, which skips the pass",
    )  # fmt: skip
    make.set_defaults(func=_build)

    boot = verbs.add_parser(
        "run",
        help="boot the device (factory revision 0), push updates over pv-ctrl, follow progress",
        description=(
            "Boot IMAGE/device.img (a copy: the image stays factory-fresh) with the real daemon "
            "as PID 1, wait for it to come up, push each --update through pv-ctrl (a loopback "
            "port forwarded into the guest) and follow its progress, or run a --scenario. Each "
            "boot (GRUB's decision, the revision, where its time went, how it ended) and each "
            "step is printed as it happens; a summary at the end. --harness boots "
            "IMAGE/storage.img with the boot chain test harness instead (until it powers off)."
        ),
    )
    boot.add_argument(
        "--image", type=Path, required=True, help="a folder made by `pvreal qemu build`"
    )
    boot.add_argument(
        "--update", action="append", default=[], type=Path, metavar="SRC",
        help="a state JSON (objects in objects/ beside it), run with LOCAL_RUN; repeatable",
    )  # fmt: skip
    boot.add_argument(
        "--scenario", action="append", default=[], choices=sorted(scenarios.SCENARIOS),
        help="an end-to-end scenario (repeatable, run in order in the same VM)",
    )  # fmt: skip
    boot.add_argument(
        "--points", type=int, default=5,
        help="hard-reset: reset points (anchored before the try, in the try or after the "
        "commit, in turns shuffled by --seed; default: 5)",
    )  # fmt: skip
    boot.add_argument("--seed", type=int, default=1, help="hard-reset: random seed (default: 1)")
    boot.add_argument(
        "--timeout", type=float, default=None,
        help="seconds before QEMU is killed (default: 120 with --harness; else 900, plus 180 "
        "per hard-reset point and one for its uncut baseline update)",
    )  # fmt: skip
    boot.add_argument("--json", type=Path, help="write the timeline as JSON to this file")
    boot.add_argument(
        "--watchdog", action="store_true",
        help="add QEMU's i6300esb watchdog device (driven by the generic kernel; the cloud "
        "kernel's softdog needs no device)",
    )  # fmt: skip
    boot.add_argument(
        "--icount", action="store_true",
        help="benchmark: the guest's clock counts instructions (QEMU -icount shift="
        f"{runner.ICOUNT_SHIFT}), so the breakdown's guest column measures the guest's work, "
        "not the host's load; compare two images on a busy machine with it",
    )  # fmt: skip
    boot.add_argument("--harness", action="store_true", help="boot storage.img (test harness)")
    boot.add_argument("--log", type=Path, help="serial console log (default: IMAGE/console.log)")
    boot.set_defaults(func=_run)


HARNESS_TIMEOUT = 120.0


def _build(args: argparse.Namespace) -> int:
    revisions = tuple(r for r in args.revisions.split(",") if r)
    if not revisions or not all(r.isdigit() for r in revisions):
        raise PvError(
            f"--revisions must be numbers separated by commas, got {args.revisions!r}",
            key="revisions",
        )
    image = build_mod.build(
        args.out,
        cache=args.cache,
        revisions=revisions,
        on_save_env_failure=args.on_save_env_failure,
        fresh_disk=args.fresh_disk,
        kernel_flavour=args.kernel,
        boot_checksum=args.boot_checksum,
    )
    for artifact in image.artifacts.values():
        print(
            f"{artifact.name:7} {artifact.source:11} {artifact.size / 1e6:7.1f} MB  {artifact.seconds:6.2f} s  {artifact.path}"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        image = build_mod.Image.load(args.image)
    except FileNotFoundError:
        raise PvError(
            "not a built image (no build.json); run `pvreal qemu build --out DIR` first",
            source=str(args.image),
        ) from None
    if not runner.available():
        raise ToolError(
            "qemu-system-x86_64 not found on PATH (install qemu-system-x86)",
            source="qemu-system-x86_64",
        )
    log = args.log or image.out / "console.log"
    if not args.harness:
        return _run_device(args, image, log)
    timeout = args.timeout or HARNESS_TIMEOUT
    run = launch.run_harness(image, log, timeout=timeout, watchdog=args.watchdog)
    print(timeline.render(run.boots) or "no boot reached GRUB")
    outcome = "powered off" if run.powered_off else f"killed after {timeout} s"
    print(f"QEMU {outcome}; console: {log}")
    if args.json:
        report = {
            "boots": [b.to_json() for b in run.boots],
            "powered_off": run.powered_off,
            "timed_out": run.timed_out,
            "console_log": str(log),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if run.powered_off else 1


def _run_device(args: argparse.Namespace, image: build_mod.Image, log: Path) -> int:
    report, failure = launch.run_device(
        image, log, updates=args.update, scenario_names=args.scenario, points=args.points,
        seed=args.seed, timeout=args.timeout, watchdog=args.watchdog,
        icount=runner.ICOUNT_SHIFT if args.icount else None,
    )  # fmt: skip
    # boots and steps were printed as they happened; the first boot's breakdown and a summary
    boots = [timeline.Boot(**boot) for boot in report["boots"]]
    if boots and boots[0].breakdown():
        load = report["load"]
        print("boot 0, where the time went (seconds by the host's time line and by the guest's "
              f"own clock; load average {load['start']:.2f} at QEMU start, {load['end']:.2f} at "
              "the end):")  # fmt: skip
        if args.icount:
            print(f"  (guest clock counted in instructions, -icount shift={runner.ICOUNT_SHIFT}: "
                  "its column does not depend on the host's load)")  # fmt: skip
        print(timeline.render_breakdown(boots[0]))
    endings = ", ".join(f"{n} {e}" for e, n in Counter(b.ended for b in boots).items())
    print(f"{len(boots)} boots ({endings})")
    if "reset_summary" in report:
        summary = report["reset_summary"]
        print("reset points landed: " + ", ".join(f"{n} {w}" for w, n in summary["landed"].items())
              + "; committed revision after them: "
              + ", ".join(f"{n} {w}" for w, n in summary["committed"].items()))  # fmt: skip
    if report.get("timed_out"):
        print(f"QEMU killed: the run's timeout ({report['timeout']:.0f} s) passed")
    print(f"console: {log}")
    if failure:
        print(f"FAILED: {failure}")
    if args.json:
        report.update(failed=failure, console_log=str(log))
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failure else 0
