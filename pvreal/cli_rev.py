"""`pvreal rev ...`: revision tools. Each family of verbs lives in its own module."""

from __future__ import annotations

import argparse

from shared.cli_support import register_groups

VERB_MODULES = (
    "pvreal.cli_rev_show",  # show, diff
    "pvreal.cli_rev_sig",  # sign, verify
    "pvreal.cli_rev_build",  # add-container, add-bsp
)


def register(subparsers: argparse._SubParsersAction) -> None:
    rev = subparsers.add_parser(
        "rev",
        help="inspect, diff, build, sign and verify revisions (state JSON)",
        description="Revision tools: a revision is one state JSON plus its objects.",
    )
    verbs = rev.add_subparsers(dest="verb", metavar="VERB", required=True)
    register_groups(verbs, VERB_MODULES)
