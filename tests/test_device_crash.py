"""`kill -9` of the device daemon at seeded random moments of an update, then a restart (which is
a reboot: the latch on disk decides what boots). After each restart, once the device settles:

- the committed revision (`pv_rev`) is the old one or the new one, never lost: its trail is
  complete, its progress is DONE, and it is what runs;
- the object store is consistent: every object re-hashes to its name, no `.tmp` is left;
- the new revision ends DONE (committed) or failed/not run, and the old one is then still DONE.
"""

from __future__ import annotations

import random
import time

import pytest
from devicekit import Daemon, Revisions, need_device

from pvreal.storage import Storage

pytestmark = pytest.mark.xdist_group("real")
KILLS = 20
SEED = 20261127


def test_kill9_during_updates_loses_nothing(tmp_path):
    need_device()
    revs = Revisions(tmp_path / "revs", group_timeout=3)
    states = {
        tag: revs.state(f"k{tag}", {"app1": {"tag": tag}}) for tag in ("ka", "kb")
    }
    d = Daemon(tmp_path / "dev", network=False, config={"PV_UPDATER_COMMIT_DELAY": 0.3})
    d.init(states["ka"], revs.objects)
    d.start()
    rng = random.Random(SEED)
    storage = Storage(d.storage)
    outcomes: dict[str, int] = {}
    try:
        for k in range(KILLS):
            before = d.wait_settled()
            committed = before["pv_rev"]
            rev = f"locals/k{k}"
            tag = "kb" if k % 2 == 0 else "ka"
            state = states[tag]
            objects = [v for v in __import__("json").loads(state.read_text()).values()
                       if isinstance(v, str) and len(v) == 64]
            for sha in objects:
                assert d.client.put_object(sha, revs.objects / sha).ok
            assert d.client.put_step(rev, state.read_bytes()).ok
            op = rng.choice(("LOCAL_RUN", "LOCAL_RUN_COMMIT"))
            assert d.client.command(op, rev).ok
            time.sleep(rng.uniform(0.0, 1.5))
            d.kill9()
            d.start()
            after = d.wait_settled()
            record = d.client.progress(rev)
            status = record["status"] if record else "none"
            outcomes[status] = outcomes.get(status, 0) + 1
            assert after["pv_rev"] in (committed, rev), (k, op, after)
            assert after["running"] == after["pv_rev"] and after["pv_try"] == "", (k, after)
            assert d.client.progress(after["pv_rev"])["status"] == "DONE", (k, after)
            if after["pv_rev"] == rev:
                assert status == "DONE"
            else:
                assert status in ("NEW", "ERROR", "WONTGO"), (k, op, record)
            report = storage.check([after["pv_rev"]])
            assert report.ok, (k, report)
    finally:
        d.stop()
    assert d.leftovers() == [], d.tail()
    print("outcomes of the new revision after each kill:", outcomes)
    # the seed must have cut both before and after the commit at least once
    assert outcomes.get("DONE", 0) > 0 and sum(outcomes.values()) == KILLS, outcomes
