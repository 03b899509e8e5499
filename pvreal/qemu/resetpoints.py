"""Where hard-reset points go and where they landed (pvreal.qemu.scenarios.hard_reset).

A reboot update has three branches a hard reset can cut: before the try (GRUB has not latched
it yet), in the try (latched, not committed: the next GRUB rolls back) and after the commit (the
new revision must stay). Points are anchored to these in turns, and where each one really landed
is read back from the console lines the guest printed before the reset.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

# Where a hard-reset point lands, relative to the update it cuts.
BEFORE_TRY, IN_TRY, AFTER_COMMIT = "before the try", "in the try", "after the commit"
RESET_ANCHORS = (BEFORE_TRY, IN_TRY, AFTER_COMMIT)
AFTER_COMMIT_SPREAD = 2.0  # s: how long after the commit line an "after the commit" reset falls


def plan_reset_anchors(points: int, seed: int) -> list[str]:
    """The anchor of each point: the three anchors in turn, shuffled by `seed`, so that any seed
    with 2 points or more tests both the "before the try" and the "after the commit" branches
    (with 3 or more, "in the try" too); the moment within the anchor's window is random."""
    order = [BEFORE_TRY, AFTER_COMMIT, IN_TRY]
    anchors = [order[i % len(order)] for i in range(points)]
    random.Random(seed).shuffle(anchors)
    return anchors


def commit_pattern(rev: str) -> str:
    """The console line of the commit of `rev`: the grubenv written with pv_rev=<rev> and no
    pv_try (pvreal.device.guest prints every grubenv write as PVTWIN ENV)."""
    return rf"PVTWIN ENV (?!.*\bpv_try=).*\bpv_rev={re.escape(rev)}(\s|$)"


def try_pattern(rev: str) -> str:
    return rf"PVGRUB: first attempt of {re.escape(rev)}$"


def landing(texts: Sequence[str], rev: str) -> str:
    """Where a reset landed, from the console lines between LOCAL_RUN and the reset: after the
    commit line, after GRUB's first attempt of the try, or before it."""
    committed, tried = re.compile(commit_pattern(rev)), re.compile(try_pattern(rev))
    if any(committed.search(t) for t in texts):
        return AFTER_COMMIT
    if any(tried.search(t) for t in texts):
        return IN_TRY
    return BEFORE_TRY


def check_point(where: str, committed: str, old: str, rev: str) -> str | None:
    """What is wrong with a point's settled committed revision, or None. A reset after the
    commit must keep the new revision; one in the try (GRUB latched it, no commit) must roll
    back; before the try either can be right (pv_try may already be in the grubenv)."""
    if committed not in (old, rev):
        return f"committed {committed!r} is neither the old {old!r} nor the new {rev!r}"
    if where == AFTER_COMMIT and committed != rev:
        return f"reset {where} lost the commit of {rev}"
    return None


def reset_summary(reset_points: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many points landed where, and what each left committed."""
    landed = {anchor: 0 for anchor in RESET_ANCHORS}
    committed = {"old": 0, "new": 0}
    for point in reset_points:
        landed[point["landed"]] += 1
        committed[point["committed"]] += 1
    return {"landed": landed, "committed": committed}
