"""The Hub's egress is shared max-min fairly (pvsim.fairshare, pvsim.transfer.Egress).

A brute-force water-filling over all running transfers is the reference: at every moment each
transfer's rate must equal it, the total never exceeds the egress and equals it whenever the
transfers could take more. Checked on the pure structure with random staggered, mixed-size,
mixed-link fleets (hypothesis), and on a real run.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvsim.fairshare import CAPPED, ENDED, INF, FairShare
from pvsim.runner import run_scenario
from pvsim.scenario import validate_scenario
from pvsim.transfer import Egress


def water_fill(caps: list[float], egress: float) -> list[float]:
    """Max-min fair rates, the slow obvious way."""
    rates = [0.0] * len(caps)
    left, todo = egress, sorted(range(len(caps)), key=lambda i: caps[i])
    while todo:
        share = left / len(todo)
        i = todo[0]
        if caps[i] <= share:
            rates[i] = caps[i]
            left -= caps[i]
            todo.pop(0)
        else:
            for j in todo:
                rates[j] = share
            break
    return rates


def rates_of(share: FairShare, flows: list) -> list[float]:
    return [f.cap if f.state == CAPPED else share.fair for f in flows]


flow_st = st.tuples(
    st.floats(0, 100),  # start
    st.floats(0.5, 200),  # MB
    st.sampled_from([0.05, 0.5, 1.25, 2.5, 12.5, 100.0]),  # link MB/s
    st.one_of(st.none(), st.floats(0, 200)),  # stopped at (power cut, outage), if before its end
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(flow_st, min_size=1, max_size=40), st.sampled_from([0.0, 1.0, 12.5, 50.0]))
def test_rates_are_max_min_fair_at_every_change(specs, egress):
    share = FairShare(egress)
    limit = egress if egress > 0 else INF
    pending = sorted(((start, k) for k, (start, *_rest) in enumerate(specs)), reverse=True)
    stops = sorted(((stop, k) for k, (_, _, _, stop) in enumerate(specs) if stop is not None), reverse=True)
    flows: dict[int, object] = {}
    running: dict[int, object] = {}
    moved = 0.0
    now = 0.0
    while pending or running:
        nxt = min(share.next_end(), pending[-1][0] if pending else INF, stops[-1][0] if stops else INF)
        assert nxt >= now - 1e-9
        # between changes every running transfer keeps its rate: check them against the reference
        live = list(running.values())
        rates = rates_of(share, live)
        expected = water_fill([f.cap for f in live], limit)
        for got, want in zip(rates, expected, strict=True):
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
        total = sum(rates)
        assert total <= limit * (1 + 1e-9)
        if sum(f.cap for f in live) >= limit:
            assert math.isclose(total, limit, rel_tol=1e-9)
        assert math.isclose(share.rate, total, rel_tol=1e-9, abs_tol=1e-9)
        now = nxt
        for flow in share.advance(now):
            moved += flow.size
            running = {k: f for k, f in running.items() if f is not flow}
        while stops and stops[-1][0] <= now:
            _, k = stops.pop()
            if k in running:
                moved += share.stop(running.pop(k), now)
        while pending and pending[-1][0] <= now:
            _, k = pending.pop()
            _, size, cap, _ = specs[k]
            flows[k] = running[k] = share.start(now, size, cap)
    assert share.active == 0
    assert all(f.state == ENDED for f in flows.values())
    full = sum(size for start, size, _, stop in specs if stop is None)
    assert moved >= full - 1e-6 * len(specs)


def test_equal_transfers_progress_together():
    """Three equal transfers started one after another end together-ish: a fair share, not first-come."""
    share = FairShare(1.0)
    a = share.start(0.0, 10.0, 10.0)
    share.advance(5.0)  # a alone: 5 MB moved
    b = share.start(5.0, 10.0, 10.0)
    assert math.isclose(share.fair, 0.5)
    ended = []
    t = 5.0
    while share.active:
        t = share.next_end()
        ended += [(round(t, 6), f) for f in share.advance(t)]
    # a has 5 MB left at 0.5 MB/s: ends at 15; b then runs alone: 5 MB left at 1 MB/s, ends at 20
    assert ended == [(15.0, a), (20.0, b)]


SCENARIO = {
    "name": "fair",
    "fleet": {"devices": 120, "seed": 3, "poll_interval_s": 120, "hub_egress_mbit_s": 200},
    "device": {"link_mbit_s": {"dist": "lognormal", "median": 20, "sigma": 1.0}},
    "release": [
        {"name": "a", "at_s": 0, "parts": ["app:web"], "size_mb": 15},
        {"name": "b", "at_s": 900, "parts": ["bsp", "app:web"], "size_mb": 40},
    ],
    "rollout": {"strategy": "all-at-once"},
    "run": {"until_s": 4000, "timeline_step_s": 60},
}


@pytest.mark.parametrize("model", ["pantavisor", "ab-image"])
def test_a_real_run_never_exceeds_the_egress_and_fills_it_under_demand(monkeypatch, model):
    seen: list[tuple[float, float, float]] = []
    count = Egress._count

    def spy(self, now):
        if now > self.counted_to:
            live = self.share.flows()
            seen.append((self.share.rate, sum(f.cap for f in live), now - self.counted_to))
        count(self, now)

    monkeypatch.setattr(Egress, "_count", spy)
    result = run_scenario(validate_scenario({**SCENARIO, "update_model": {"kind": model, "image_mb": 40}}, "fair"))
    limit = 200 / 8
    assert any(demand > limit for _, demand, _ in seen)  # the egress was the bottleneck at times
    for rate, demand, _ in seen:
        assert rate <= limit * (1 + 1e-9)
        assert math.isclose(rate, min(limit, demand), rel_tol=1e-9, abs_tol=1e-12)
    # what the timeline shows moved equals what the devices were counted
    assert math.isclose(result.timeline["mb_moved"][-1] * 1e6, result.results["bytes_downloaded"], rel_tol=1e-6)
    steps = result.timeline["mb_moved"]
    assert all(later - earlier <= limit * 60 * (1 + 1e-9) for earlier, later in zip(steps, steps[1:], strict=False))


def test_the_issue_example_half_the_fleet_finishes_near_the_fair_time():
    """Issue 15: devices polling over ten minutes behind a shared egress, 30 MB each. Fairly shared,
    they progress together: half finish near total bytes / egress (here 300 x 30 MB at 1.25 MB/s =
    7 200 s), not at half that (first-come shares fixed at the start gave ~3 650 s)."""
    doc = {
        "name": "fair-example",
        "fleet": {"devices": 300, "seed": 1, "poll_interval_s": 600, "hub_egress_mbit_s": 10},
        "release": [{"name": "app-2", "parts": ["app:web"], "size_mb": 30}],
        "rollout": {"strategy": "all-at-once"},
        "run": {"until_s": 20000, "timeline_step_s": 300},
    }
    r = run_scenario(validate_scenario(doc, "fair-example")).results
    assert 6500 < r["time_to_50pct_s"] < 7300
    assert r["time_to_95pct_s"] < 7400
