"""`pvreal rev ...`: revision tools, one module per family of verbs; the library is pvreal/rev/."""

from __future__ import annotations

import argparse

from pvreal.cli import register_groups

VERB_MODULES = (
    "pvreal.cli.rev.show",  # show, diff
    "pvreal.cli.rev.sig",  # sign, verify
    "pvreal.cli.rev.build",  # add-container, add-bsp
)


def register(subparsers: argparse._SubParsersAction) -> None:
    rev = subparsers.add_parser(
        "rev",
        help="inspect, diff, build, sign and verify revisions (state JSON)",
        description="Revision tools: a revision is one state JSON plus its objects.",
    )
    verbs = rev.add_subparsers(dest="verb", metavar="VERB", required=True)
    register_groups(verbs, VERB_MODULES)
