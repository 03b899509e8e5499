"""`kill -9` of the device daemon at chosen points of an update, then a restart (which is a reboot:
the latch on disk decides what boots). Each kill waits until the progress record on disk shows the
state to crash in, so where the update is cut does not depend on the machine's speed. After each
restart, once the device settles:

- the committed revision (`pv_rev`) is the old one or the new one, never lost: its trail is
  complete, its progress is DONE, and it is what runs;
- the object store is consistent: every object re-hashes to its name, no `.tmp` is left;
- the new revision ends DONE (committed) or failed/not run, and the old one is then still DONE;
- an update whose DONE was on disk when the power went stays committed.
"""

from __future__ import annotations

import json
import time

import pytest
from devicekit import Daemon, Revisions, need_device

from pvreal.storage import Storage
from shared.engine.progress import PROGRESS_NUMBER, Status

pytestmark = pytest.mark.xdist_group("real")

# (pv-ctrl command, the status the new revision's record must have reached when the power goes).
# The two tags differ only in an app, so LOCAL_RUN switches without a reboot and ends UPDATED, and
# LOCAL_RUN_COMMIT reboots into a try and ends DONE.
CUTS = (
    ("LOCAL_RUN", Status.INPROGRESS),
    ("LOCAL_RUN", Status.TESTING),
    ("LOCAL_RUN", Status.UPDATED),
    ("LOCAL_RUN_COMMIT", Status.INPROGRESS),
    ("LOCAL_RUN_COMMIT", Status.TESTING),
    ("LOCAL_RUN_COMMIT", Status.DONE),
)
ROUNDS = 2


def _wait_for_progress(storage: Storage, rev: str, status: Status, d: Daemon) -> None:
    """Until `rev`'s record on disk is at `status` or past it (a fast step may be missed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = storage.read_progress(rev)
        if record is not None and record["progress"] >= PROGRESS_NUMBER[status]:
            return
        time.sleep(0.005)
    raise AssertionError(f"{rev} never reached {status}: {storage.read_progress(rev)}\n{d.tail()}")


def test_kill9_during_updates_loses_nothing(tmp_path):
    need_device()
    revs = Revisions(tmp_path / "revs", group_timeout=3)
    states = {tag: revs.state(f"k{tag}", {"app1": {"tag": tag}}) for tag in ("ka", "kb")}
    d = Daemon(tmp_path / "dev", network=False, config={"PV_UPDATER_COMMIT_DELAY": 0.3})
    d.init(states["ka"], revs.objects)
    d.start()
    storage = Storage(d.storage)
    tag_of = {"0": "ka"}  # revision -> state tag, so each update changes what runs
    cut_at: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    try:
        for k, (op, status) in enumerate(CUTS * ROUNDS):
            before = d.wait_settled()
            committed = before["pv_rev"]
            rev = f"locals/k{k}"
            tag_of[rev] = "kb" if tag_of[committed] == "ka" else "ka"
            state = states[tag_of[rev]]
            objects = [v for v in json.loads(state.read_text()).values()
                       if isinstance(v, str) and len(v) == 64]  # fmt: skip
            for sha in objects:
                assert d.client.put_object(sha, revs.objects / sha).ok
            assert d.client.put_step(rev, state.read_bytes()).ok
            assert d.client.command(op, rev).ok
            _wait_for_progress(storage, rev, status, d)
            d.kill9()
            frozen = storage.read_progress(rev)  # what the power cut left on disk
            assert frozen is not None
            cut_at[frozen["status"]] = cut_at.get(frozen["status"], 0) + 1
            d.start()
            after = d.wait_settled()
            record = d.client.progress(rev)
            outcome = record["status"] if record else "none"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            where = (k, op, frozen["status"], after)
            assert after["pv_rev"] in (committed, rev), where
            assert after["running"] == after["pv_rev"] and after["pv_try"] == "", where
            assert d.client.progress(after["pv_rev"])["status"] == "DONE", where
            if after["pv_rev"] == rev:
                assert outcome == "DONE", (where, record)
            else:
                assert outcome in ("NEW", "ERROR", "WONTGO"), (where, record)
            if frozen["status"] == "DONE":
                assert after["pv_rev"] == rev, where
            report = storage.check([after["pv_rev"]])
            assert report.ok, (k, report)
    finally:
        d.stop()
    assert d.leftovers() == [], d.tail()
    print("\nstatus on disk at each kill:", cut_at, "\noutcome of the new revision:", outcomes)
    # the power went both before the update finished and after (counted from the disk, not hoped)
    assert cut_at.get("DONE", 0) > 0 and cut_at.get("INPROGRESS", 0) + cut_at.get("TESTING", 0) > 0
    assert sum(outcomes.values()) == len(CUTS) * ROUNDS, outcomes
