"""`pvreal hub`: run the Hub, and operate it over HTTP (the library is pvreal/hub/).

    serve --db FILE [--listen HOST:PORT]          the Hub: device API, operator API, dashboard
    release STATE --name N --strategy S [--set K=V ...] [--objects DIR]
    pause|resume|abort NAME                        the operator's hand on a rollout
    status [--json]                                releases with their counts, devices
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
from pathlib import Path
from typing import Any

from pvreal.hub.client import OperatorClient, operator_for, publish
from pvreal.hub.listen import DEFAULT_LISTEN, ListenError, parse_listen
from shared.errors import PvError
from shared.rollout import REGISTRY, RolloutError, parse_options


def register(subparsers: argparse._SubParsersAction) -> None:
    hub = subparsers.add_parser(
        "hub", help="a real Hub: device API, rollouts, live dashboard",
        description="Run a Hub over SQLite and operate it (the library is pvreal/hub/).",
    )  # fmt: skip
    verbs = hub.add_subparsers(dest="verb", metavar="VERB", required=True)

    serve = verbs.add_parser("serve", help="run the Hub until interrupted")
    serve.add_argument("--db", type=Path, default=Path("hub.sqlite"), metavar="FILE")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help=f"default {DEFAULT_LISTEN}; port 0 lets the system choose")  # fmt: skip
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback address (tokens travel in clear HTTP)")  # fmt: skip
    serve.add_argument("--operator-token", metavar="TOKEN", help="default: FILE.operator-token")
    serve.add_argument("--device-token", metavar="TOKEN",
                       help="the fleet's registration token; default: FILE.device-token")  # fmt: skip
    serve.set_defaults(func=serve_command)

    def operator_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, default=Path("hub.sqlite"), metavar="FILE",
                       help="find the Hub's URL and operator token beside FILE")  # fmt: skip
        p.add_argument("--hub", metavar="URL", help="default: read from FILE.url")
        p.add_argument("--operator-token", metavar="TOKEN", help="default: FILE.operator-token")
        p.add_argument("--json", action="store_true", help="print JSON")

    release = verbs.add_parser("release", help="publish a state and start its rollout")
    release.add_argument("state", type=Path, metavar="STATE")
    release.add_argument("--name", required=True)
    release.add_argument("--strategy", default="all-at-once", choices=sorted(REGISTRY))
    release.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="options",
                         help="a strategy option (repeatable)")  # fmt: skip
    release.add_argument("--objects", type=Path, metavar="DIR", help="default: objects/ beside STATE")
    operator_args(release)
    release.set_defaults(func=release_command)

    for verb in ("pause", "resume", "abort"):
        p = verbs.add_parser(verb, help=f"{verb} a release's rollout")
        p.add_argument("name", metavar="NAME")
        operator_args(p)
        p.set_defaults(func=operate_command, action=verb)

    status = verbs.add_parser("status", help="releases with their counts, devices")
    operator_args(status)
    status.set_defaults(func=status_command)


def serve_command(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen, allow_remote=args.allow_remote)
    except ListenError as exc:
        raise PvError(str(exc)) from None
    from pvreal.hub.server import HubFiles, serve_forever  # the web framework, only to serve

    files = HubFiles.prepare(args.db, args.operator_token, args.device_token)

    def announce(url: str) -> None:
        print(f"hub: serving {args.db} at {url}", flush=True)
        print(f"hub: dashboard {url}/#token=<{files.database}.operator-token>", flush=True)

    # `kill -USR1 PID` prints every thread's stack to stderr: why a Hub does not answer or stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        serve_forever(files, host, port, announce)
    except OSError as exc:
        raise PvError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    return 0


def _client(args: argparse.Namespace) -> OperatorClient:
    return operator_for(args.db, args.hub, args.operator_token)


def _options(pairs: list[str], strategy: str) -> dict[str, Any]:
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PvError(f"--set {pair!r}: expected KEY=VALUE")
        raw[key] = value
    try:
        return parse_options(strategy, raw)
    except RolloutError as exc:
        raise PvError(str(exc)) from None


def release_command(args: argparse.Namespace) -> int:
    options = _options(args.options, args.strategy)
    objects = args.objects or args.state.resolve().parent / "objects"
    doc = publish(_client(args), args.state, args.name, args.strategy, options, objects)
    _print(args, doc, f"{doc['name']}: {doc['state']}, {doc['admitted']} of {doc['fleet']} devices "
                      f"admitted ({doc['objects_sent']} objects sent)")  # fmt: skip
    return 0


def operate_command(args: argparse.Namespace) -> int:
    doc = _client(args).operate(args.name, args.action)
    _print(args, doc, f"{doc['name']}: {doc['state']}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    doc = _client(args).status()
    lines = ["releases:" if doc["releases"] else "no releases"]
    lines += [
        f"  {r['name']:<20} {r['state']:<10} {r['strategy']:<14} fleet {r['fleet']}  admitted "
        f"{r['admitted']}  succeeded {r['succeeded']}  failed {r['failed']}  in flight {r['in_flight']}"
        for r in doc["releases"]
    ]
    lines.append(f"devices: {len(doc['devices'])}")
    lines += [
        f"  {d['id']} {d['nick']:<16} rev {d['revision']:<4} {d['status'] or '-':<12} {d['status-msg']}"
        for d in doc["devices"]
    ]
    _print(args, doc, "\n".join(lines))
    return 0


def _print(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True) if args.json else text)
