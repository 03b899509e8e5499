"""`pvreal device init|run`: install a factory revision, run the device daemon (docs/device.md).

The library is pvreal/device/ (`install` for init, `service` for run).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pvreal.device.install import install_factory
from pvreal.device.latch import BOOTLOADERS
from shared.errors import InvalidState, PvError
from shared.signatures import SecurebootMode


def register(subparsers: argparse._SubParsersAction) -> None:
    device = subparsers.add_parser("device", help="a real device on a storage folder")
    verbs = device.add_subparsers(dest="verb", metavar="VERB", required=True)

    init = verbs.add_parser("init", help="install a state as the factory revision 0")
    init.add_argument("--storage", type=Path, required=True, metavar="DIR")
    init.add_argument("--state", type=Path, required=True, metavar="STATE")
    init.add_argument("--objects", type=Path, metavar="DIR", help="default: objects/ beside STATE")
    _boot_args(init)
    init.set_defaults(func=init_command)

    run = verbs.add_parser("run", help="run the device daemon (as root)")
    run.add_argument("--storage", type=Path, required=True, metavar="DIR")
    run.add_argument("--socket", type=Path, metavar="PATH", help="default: <run-dir>/pv-ctrl")
    run.add_argument("--run-dir", type=Path, metavar="DIR", help="default: /run/pvtwin/<id>")
    _boot_args(run)
    run.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE",
        help="a Pantavisor config key, e.g. PV_UPDATER_COMMIT_DELAY=2 (repeatable)",
    )
    run.add_argument("--no-network", action="store_true", help="no bridge, veth or netns")
    run.add_argument(
        "--stop-grace", type=float, metavar="S",
        help="seconds between SIGTERM and SIGKILL when containers stop (pvtwin's "
             "PVTWIN_STOP_GRACE; Pantavisor's is a fixed 5)",
    )
    remote = run.add_argument_group("remote mode (updates from a Hub: docs/device.md)")
    remote.add_argument("--hub", metavar="URL", help="the Hub, e.g. http://127.0.0.1:12365")
    remote.add_argument("--token", metavar="T",
                        help="the fleet's registration token (first start only: the device keeps "
                             "its own credentials in the storage folder)")
    remote.add_argument("--nick", metavar="NAME", help="the name the Hub shows (at registration)")
    sig = run.add_argument_group("secure boot (pvs@2 signatures, pantavisor.md §1.8)")
    sig.add_argument("--truststore", type=Path, metavar="DIR",
                     help="PV_SECUREBOOT_TRUSTSTORE: a folder of certificates or a bundle")
    sig.add_argument("--oem-truststore", type=Path, metavar="DIR",
                     help="PV_SECUREBOOT_OEM_TRUSTSTORE (used with --oem-name)")
    sig.add_argument("--oem-name", metavar="N", help="PV_OEM_NAME")
    sig.add_argument("--pubkey", type=Path, metavar="PEM",
                     help="pvs/trust/pub.pem: the key for signatures without x5c")
    sig.add_argument("--secureboot-mode", choices=tuple(SecurebootMode), metavar="MODE",
                     help="PV_SECUREBOOT_MODE: disabled|audit|lenient|strict "
                          "(default: the --config value, else lenient)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=run_command)


def _boot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootloader", choices=BOOTLOADERS, default="uboot")
    parser.add_argument("--ordering", choices=("hardened", "faithful"), default="hardened")


def init_command(args: argparse.Namespace) -> int:
    objects = args.objects or args.state.resolve().parent / "objects"
    install_factory(args.storage, args.state, objects, args.bootloader, args.ordering)
    print(f"{args.storage}: factory revision 0 installed ({args.bootloader}, {args.ordering})")
    return 0


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidState("expected KEY=VALUE", key=item, source="--config")
        out[key.strip()] = value.strip()
    return out


def run_command(args: argparse.Namespace) -> int:
    from pvreal.device.daemon import DeviceOptions, HubOptions
    from pvreal.device.remote import CREDENTIALS
    from pvreal.device.secureboot import TrustOptions
    from pvreal.device.service import serve

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s pvreal[%(process)d] %(levelname)s %(message)s",
    )
    if args.hub is None and (args.token or args.nick):
        raise PvError("--token and --nick go with --hub URL")
    if args.hub and not args.token and not (args.storage / CREDENTIALS).exists():
        raise PvError(f"--hub needs --token (the fleet's registration token): {args.storage} "
                      "holds no credentials of an earlier registration")  # fmt: skip
    if os.geteuid() != 0:
        raise PvError("device run needs root (mounts, network namespaces, runc)")
    overrides = parse_overrides(args.config)
    if args.secureboot_mode:
        overrides["PV_SECUREBOOT_MODE"] = args.secureboot_mode
    if args.stop_grace is not None:
        overrides["PVTWIN_STOP_GRACE"] = str(args.stop_grace)
    options = DeviceOptions(
        storage=args.storage,
        bootloader=args.bootloader,
        ordering=args.ordering,
        config=overrides,
        run_dir=args.run_dir,
        network=not args.no_network,
        trust=TrustOptions(args.truststore, args.oem_truststore, args.oem_name, args.pubkey),
        hub=HubOptions(args.hub, args.token or "", args.nick) if args.hub else None,
    )
    serve(options, args.socket)
    return 0
