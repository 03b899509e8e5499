"""A Hub token that starts with "-" reaches the daemons and a detached `fleet up` whole.

The Hub's tokens are URL-safe base64, so one in 64 started with "-". `fleet up` passed it to each
daemon as `--token T`, argparse took "-..." for an option, and every daemon exited at once
("argument --token: expected one argument"): the fleet flake "device d01 exited during boot",
reproduced here in 1 of 11 bring-ups of a 4-device fleet (docs/validation.md). Tokens are now
passed as one word, `--token=T`, and new tokens never start with "-"."""

from __future__ import annotations

import secrets
from pathlib import Path

from pvreal.cli import build_parser
from pvreal.cli.fleet import _up_argv
from pvreal.fleet import procs
from pvreal.hub import auth

DASHED = "-Zq3" + "x" * 39  # the shape of a token_urlsafe(32) that starts with "-"


def test_the_daemons_remote_flags_carry_a_dashed_token_whole(tmp_path: Path):
    argv = [
        "device",
        "run",
        "--storage",
        str(tmp_path),
        *procs.remote_args("http://10.218.0.1:1", DASHED),
    ]
    args = build_parser().parse_args(argv)
    assert (args.hub, args.token) == ("http://10.218.0.1:1", DASHED)


def test_a_detached_fleet_up_hands_a_dashed_token_on_whole(tmp_path: Path):
    state = tmp_path / "state.json"
    typed = ["fleet", "up", "--storage", str(tmp_path / "fleet"), "--hub", "http://127.0.0.1:1",
             "--devices", "2", "--state", str(state), f"--token={DASHED}", "--detach"]  # fmt: skip
    again = build_parser().parse_args(_up_argv(build_parser().parse_args(typed)))
    assert again.token == DASHED
    assert not again.detach


def test_new_tokens_never_start_with_a_dash(monkeypatch):
    drawn = iter(["-first", "second"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: next(drawn))
    assert auth.new_token() == "second"
    monkeypatch.undo()
    tokens = [auth.new_token() for _ in range(2000)]  # 2000 draws: ~31 would start with "-"
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == 2000 and all(len(t) == 43 for t in tokens)
