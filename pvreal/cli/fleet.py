"""`pvreal fleet up|down|status|fault`: a real fleet on this machine (the library is
pvreal/fleet/; docs/fleet.md)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from types import FrameType

from pvreal.cli.device import parse_overrides
from shared.errors import PvError


def register(subparsers: argparse._SubParsersAction) -> None:
    fleet = subparsers.add_parser(
        "fleet", help="a real fleet on this machine: N devices, netns, faults",
        description="N real devices in network namespaces, wired to a Hub (pvreal/fleet/).",
    )  # fmt: skip
    verbs = fleet.add_subparsers(dest="verb", metavar="VERB", required=True)

    up = verbs.add_parser("up", help="start the fleet; stays until Ctrl-C unless --detach")
    up.add_argument("--storage", type=Path, required=True, metavar="DIR")
    up.add_argument("--hub", required=True, metavar="URL", help="the Hub, e.g. http://127.0.0.1:12365")
    up.add_argument("--devices", type=int, required=True, metavar="N")
    up.add_argument("--state", type=Path, required=True, metavar="STATE",
                    help="the devices' factory revision")  # fmt: skip
    up.add_argument("--objects", type=Path, metavar="DIR", help="default: objects/ beside STATE")
    up.add_argument("--token", metavar="T", help="the Hub's device token (default: from --hub-db)")
    up.add_argument("--hub-db", type=Path, metavar="FILE",
                    help="run the Hub on FILE at --hub's address (hub-restart needs this)")  # fmt: skip
    up.add_argument("--subnet", default="10.218.0.0/24", help="private, used only in the fleet")
    up.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="a device config key for every daemon (repeatable)")  # fmt: skip
    up.add_argument("--local", action="store_true", help="daemons without remote mode")
    up.add_argument("--detach", action="store_true", help="return once every device is ready")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds for every device to settle")
    up.set_defaults(func=up_command)

    down = verbs.add_parser("down", help="stop and remove everything the fleet made")
    down.add_argument("--storage", type=Path, required=True, metavar="DIR")
    down.set_defaults(func=down_command)

    status = verbs.add_parser("status", help="devices: pid, netns, address, storage, revision")
    status.add_argument("--storage", type=Path, required=True, metavar="DIR")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=status_command)

    fault = verbs.add_parser("fault", help="inject a fault",
                             description="link-down|link-up DEVICE, loss|latency DEVICE VALUE "
                                         "(0 removes it), hub-restart, kill|power-cut DEVICE")  # fmt: skip
    fault.add_argument("--storage", type=Path, required=True, metavar="DIR")
    fault.add_argument("fault", choices=("link-down", "link-up", "loss", "latency", "hub-restart",
                                         "kill", "power-cut"))  # fmt: skip
    fault.add_argument("device", nargs="?", metavar="DEVICE")
    fault.add_argument("value", nargs="?", metavar="VALUE", help="10%% (loss), 100ms (latency)")
    fault.add_argument("--off", type=float, default=0.0, metavar="S",
                       help="kill/power-cut: seconds before the device boots again")  # fmt: skip
    fault.add_argument("--wait", action="store_true", help="kill/power-cut: until it is ready")
    fault.set_defaults(func=fault_command)


_SUPERVISOR = [0]  # the pid of the `fleet up` process that installed the handler


def _terminate(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _SUPERVISOR[0]:
        # a fork of ours that has not exec'd (pyroute2's netns helper, which is stopped with
        # SIGTERM): it must just end, not tear the fleet down from inside a copy of `up`
        os._exit(128 + signum)
    raise KeyboardInterrupt


def up_command(args: argparse.Namespace) -> int:
    from pvreal.fleet.lifecycle import FleetSpec, down, up

    if args.detach:
        return _detach(args)
    spec = FleetSpec(storage=args.storage, hub=args.hub, devices=args.devices, state=args.state,
                     objects=args.objects, token=args.token, hub_db=args.hub_db,
                     subnet=args.subnet, config=parse_overrides(args.config), local=args.local,
                     ready_timeout=args.timeout, supervised=True)  # fmt: skip
    _SUPERVISOR[0] = os.getpid()
    # both, explicitly: a shell starts a background job with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    doc = up(spec)  # removes what it made if interrupted
    # from here on the fleet is up (fleet.json says so): a Ctrl-C, even one that comes while the
    # lines below are printed, takes it down
    try:
        mode = "remote" if doc["remote"] else "local (no remote mode)"
        print(f"fleet {doc['id']}: {len(doc['devices'])} devices up in {doc['up_s']} s, {mode}, "
              f"Hub at {doc['hub']['device_url']} in the fleet", flush=True)  # fmt: skip
        print(f"fleet: Ctrl-C or `pvreal fleet down --storage {args.storage}` to stop", flush=True)
        while True:
            time.sleep(1)
            _reap()  # daemons killed by a fault, a restarted Hub: they were our children
    except KeyboardInterrupt:
        removed = down(args.storage)
        print(f"fleet: down ({len(removed)} removed)", flush=True)
    return 0


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _up_argv(args: argparse.Namespace) -> list[str]:
    """The same `fleet up`, without --detach, paths made absolute."""
    argv = ["fleet", "up", "--storage", str(args.storage.resolve()), "--hub", args.hub,
            "--devices", str(args.devices), "--state", str(args.state.resolve()),
            "--subnet", args.subnet, "--timeout", str(args.timeout)]  # fmt: skip
    if args.objects:
        argv += ["--objects", str(args.objects.resolve())]
    if args.token:
        argv += [f"--token={args.token}"]  # one word: a token may start with "-" (procs.remote_args)
    if args.hub_db:
        argv += ["--hub-db", str(args.hub_db.resolve())]
    for item in args.config:
        argv += ["--config", item]
    return argv + ["--local"] * args.local


def _detach(args: argparse.Namespace) -> int:
    """Run `fleet up` in a session of its own; return once the fleet is up."""
    from pvreal.fleet.procs import python_argv, spawn
    from pvreal.fleet.state import load, state_path

    if state_path(args.storage).exists():
        raise PvError(f"{state_path(args.storage)} exists: a fleet runs here (pvreal fleet down)")
    log = args.storage.resolve() / "fleet.log"
    log.unlink(missing_ok=True)
    pid = spawn(python_argv("-m", "pvreal", *_up_argv(args)), log)
    deadline = time.monotonic() + args.timeout + 60
    while time.monotonic() < deadline:
        if state_path(args.storage).exists():
            doc = load(args.storage)
            if doc["phase"] == "up":
                print(f"fleet {doc['id']}: {len(doc['devices'])} devices up in {doc['up_s']} s "
                      f"(pid {pid}, log {log})")  # fmt: skip
                return 0
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: it exited
            raise PvError(f"fleet up exited before the fleet was up; see {log}")
        time.sleep(0.2)
    raise PvError(f"fleet not up in time; see {log}")


def down_command(args: argparse.Namespace) -> int:
    from pvreal.fleet.lifecycle import down

    removed = down(args.storage)
    print(f"fleet: down ({len(removed)} removed)" if removed else "fleet: nothing to remove")
    return 0


def status_command(args: argparse.Namespace) -> int:
    from pvreal.fleet.lifecycle import status

    doc = status(args.storage)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    print(f"fleet {doc['id']} ({doc['phase']}), Hub {doc['hub']} as {doc['device_url']}, "
          f"{'remote' if doc['remote'] else 'local'} devices")  # fmt: skip
    print(f"{'DEVICE':7} {'PID':>7} {'ALIVE':5} {'NETNS':13} {'ADDRESS':15} {'LINK':4} "
          f"{'REV':8} {'RSS MiB':>7} STORAGE")  # fmt: skip
    for d in doc["devices"]:
        print(f"{d['name']:7} {d['pid'] or '-':>7} {'yes' if d['alive'] else 'no':5} "
              f"{d['netns']:13} {d['address']:15} {d['link']:4} {d['revision'] or '-':8} "
              f"{d['rss_mib']:7.1f} {d['storage']}")  # fmt: skip
    return 0


def fault_command(args: argparse.Namespace) -> int:
    from pvreal.fleet.faults import inject, wait_booted

    print(inject(args.storage, args.fault, args.device, args.value, off_s=args.off))
    if args.wait and args.fault in ("kill", "power-cut"):
        wait_booted(args.storage, args.device)
    return 0
