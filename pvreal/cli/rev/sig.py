"""`pvreal rev sign` and `pvreal rev verify`: pvs@2 signatures on a state JSON (pantavisor.md §1.8).

sign   STATE --key K [--cert C] [--chain F]... (--part NAME | --include G... [--exclude G...]) [--name SIG]
       adds or replaces `_sigs/SIG.json` in the STATE file and rewrites it canonical. The write is
       atomic (temp file, fsync, rename): on any error the file keeps its old bytes.
verify STATE [--truststore DIR] [--mode M] [--oem-truststore DIR --oem-name N] [--pubkey PEM]
       [--now ISO] [--json]
       checks every signature and the coverage the way the device does; exit 0 only when the
       device would accept the state under --mode. `--json` prints `ok`, `message` (the
       Pantavisor outcome string or null), `protected`, `excluded`, `notseen` and `signatures`.

The signing is pvreal.rev.sign's, the checks shared.signatures'.
Exit codes (shared.errors): 0 ok, 1 invalid input or failed check, 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from pvreal.rev.read import read_state_json
from pvreal.rev.sign import sign_state_file
from pvreal.truststore import load_trust_config
from shared.errors import EXIT_INVALID, EXIT_OK
from shared.signatures import SecurebootMode, VerifyResult, verify_state


def register(verbs: argparse._SubParsersAction) -> None:
    sign = verbs.add_parser(
        "sign",
        help="add a pvs@2 signature (_sigs/NAME.json) to a state JSON file",
        description="Sign the entries of a state that the include/exclude globs select, "
        "as `pvr sig add` does, and write the signature into the state file.",
    )
    sign.add_argument(
        "state", metavar="STATE", type=Path, help="state JSON file, rewritten in place"
    )
    sign.add_argument("--key", required=True, type=Path, help="PEM private key (RSA or EC)")
    sign.add_argument(
        "--cert",
        type=Path,
        help="PEM certificate of the key, x5c[0]; without it the signature carries no x5c "
        "and verifies only with a trusted public key (pvs/trust/pub.pem)",
    )
    sign.add_argument(
        "--chain",
        type=Path,
        action="append",
        default=[],
        help="PEM file of issuer certificates to append to x5c, leaf side first (repeatable)",
    )
    sign.add_argument("--part", help="sign a part: NAME/** and _config/NAME/** (pvr defaults)")
    sign.add_argument(
        "--noconfig", action="store_true", help="with --part: leave _config/NAME/** out"
    )
    sign.add_argument("--include", nargs="+", metavar="GLOB", help="include globs")
    sign.add_argument("--exclude", nargs="+", metavar="GLOB", help="exclude globs")
    sign.add_argument("--name", help="signature name: writes _sigs/NAME.json (default: --part)")
    sign.add_argument(
        "--no-jwk", action="store_true", help="do not embed the public key as jwk in the header"
    )
    sign.set_defaults(func=sign_command, parser=sign)

    verify = verbs.add_parser(
        "verify",
        help="verify the pvs@2 signatures and coverage of a state JSON",
        description="Check every signature of a state as Pantavisor does; exit 0 only when the "
        "device would accept it under --mode.",
    )
    verify.add_argument(
        "state", metavar="STATE", help="state JSON file, trail directory, or - for stdin"
    )
    verify.add_argument(
        "--truststore", type=Path, help="folder (or bundle file) of trusted PEM certificates"
    )
    verify.add_argument(
        "--mode",
        choices=[m.value for m in SecurebootMode],
        default=SecurebootMode.LENIENT.value,
        help="PV_SECUREBOOT_MODE (default: lenient)",
    )
    verify.add_argument("--oem-truststore", type=Path, help="PV_SECUREBOOT_OEM_TRUSTSTORE folder")
    verify.add_argument("--oem-name", help="PV_OEM_NAME: the CN allowed to use the OEM store")
    verify.add_argument(
        "--pubkey", type=Path, help="PEM public key for signatures without x5c (pvs/trust/pub.pem)"
    )
    verify.add_argument(
        "--now",
        type=_parse_time,
        help="check certificate validity at this ISO 8601 time (default: the current time)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=verify_command, parser=verify)


# --------------------------------------------------------------------------------------------
# sign


def sign_command(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    name = args.name or args.part
    if not name:
        parser.error("--name is required unless --part is given")
    if args.part and args.include:
        parser.error("--part and --include cannot be combined")
    if args.noconfig and not args.part:
        parser.error("--noconfig needs --part")
    if args.chain and not args.cert:
        parser.error("--chain needs --cert")

    signed = sign_state_file(
        args.state,
        args.key,
        ([args.cert] if args.cert else []) + list(args.chain),
        name,
        part=args.part,
        include=args.include,
        exclude=args.exclude,
        config=not args.noconfig,
        embed_jwk=not args.no_jwk,
    )
    signer = signed.signer
    print(
        f"{args.state}: wrote {signed.key} ({signer.alg}, {len(signed.include)} include / "
        f"{len(signed.exclude)} exclude globs"
        + (f", x5c of {len(signer.chain)} certificates)" if signer.chain else ", no x5c)")
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# verify


def verify_command(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.oem_truststore and not args.oem_name:
        parser.error("--oem-truststore needs --oem-name")
    state, source = read_state_json(args.state)
    trust = load_trust_config(
        args.truststore,
        oem_truststore=args.oem_truststore,
        oem_name=args.oem_name,
        public_key=args.pubkey,
    )
    now = args.now or dt.datetime.now(dt.UTC)
    result = verify_state(state, trust, now=now, mode=args.mode)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_result(source, result)
    return EXIT_OK if result.ok else EXIT_INVALID


def _parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _print_result(source: str, result: VerifyResult) -> None:
    for check in result.signatures:
        if check.ok:
            print(
                f"{check.key}: OK {check.alg}, signer {check.signer!r} ({check.store}), "
                f"{len(check.protected)} entries"
            )
        else:
            print(f"{check.key}: FAILED: {check.error}")
    if not result.signatures:
        print("no signatures")
    cov = result.coverage
    print(
        f"coverage: {len(cov.protected)} protected, {len(cov.excluded)} excluded, "
        f"{len(cov.notseen)} not seen"
    )
    for key in cov.notseen:
        print(f"  not seen: {key}")
    verdict = "OK" if result.ok else result.message
    print(f"{source}: {verdict} (mode {result.mode.value})")
