"""The command lines' layout: one module per command group, named like its command; a group
whose module is missing is an error; the exit-code rule both CLIs share."""

from __future__ import annotations

import pytest

import pvreal.cli
import pvsim.cli
from shared.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, PvError, run_command


@pytest.mark.parametrize("build", [pvsim.cli.build_parser, pvreal.cli.build_parser])
def test_a_group_list_naming_a_missing_module_raises(build) -> None:
    with pytest.raises(ModuleNotFoundError):
        build(groups=("pvsim.cli.crashcheck", "pvreal.cli.no_such_group"))


def test_a_missing_rev_verb_module_raises() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    with pytest.raises(ModuleNotFoundError):
        pvreal.cli.register_groups(parser.add_subparsers(), ("pvreal.cli.rev.no_such_verbs",))


@pytest.mark.parametrize(
    ("package", "build"), [(pvsim.cli, pvsim.cli.build_parser), (pvreal.cli, pvreal.cli.build_parser)]
)
def test_every_group_module_is_named_like_the_command_it_adds(package, build) -> None:
    commands = build()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    named = [name.rsplit(".", 1)[1].replace("_", "-") for name in package.GROUPS]
    assert list(commands) == named


def test_run_command_maps_errors_to_exit_codes_and_lines() -> None:
    said: list[str | None] = []

    def fail(exc: BaseException):
        def command() -> int:
            raise exc

        return command

    assert run_command("pv", lambda: None, said.append) == EXIT_OK
    assert run_command("pv", lambda: 3, said.append) == 3
    assert run_command("pv", fail(PvError("bad", source="f.json")), said.append) == EXIT_INVALID
    assert run_command("pv", fail(KeyboardInterrupt()), said.append) == EXIT_INTERRUPTED
    assert run_command("pv", fail(BrokenPipeError()), said.append) == EXIT_OK
    assert said == ["pv: error: f.json: bad", "pv: interrupted", None]
    with pytest.raises(ZeroDivisionError):  # a bug is not turned into an exit code
        run_command("pv", fail(ZeroDivisionError()), said.append)
