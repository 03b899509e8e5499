"""pvsim compare's statistics respect the metric: intervals of counts never go below zero, times say
how many seeds reached them, empty panels say "not reached"."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from pvsim.compare import (
    METRICS,
    bootstrap_interval,
    cell,
    comparison_png,
    comparison_table,
    summarize_cells,
    wilson_interval,
)


def row(label, **metrics):
    base = dict.fromkeys(METRICS, 0)
    base.update(metrics)
    return {"label": label, "error": None, **base}


def test_a_bimodal_count_has_no_negative_interval():
    # the case: committed 0 in most seeds, ~1460 in one (292.8 +- 596.9 with a t interval)
    c = cell([0, 0, 0, 0, 1464], 5, "committed")
    assert c.mean == pytest.approx(292.8)
    assert c.low >= 0 and c.high <= 1464
    assert c.n == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=12))
def test_bootstrap_interval_stays_within_the_values(values):
    low, high = bootstrap_interval(values)
    assert min(values) <= low <= sum(values) / len(values) + 1e-9 <= high + 2e-9
    assert high <= max(values)


def test_wilson_interval_of_a_proportion():
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(0, 5)[1] > 0.3
    assert wilson_interval(5, 5)[1] == 1.0 and wilson_interval(5, 5)[0] < 0.7
    low, high = wilson_interval(3, 10)
    assert low < 0.3 < high


def test_times_count_the_seeds_that_reached_them():
    rows = [row("a", time_to_95pct_s=100.0), row("a", time_to_95pct_s=None), row("a", time_to_95pct_s=140.0)]
    rows += [row("b", time_to_95pct_s=None) for _ in range(3)]
    cells = summarize_cells(rows)
    a, b = cells["a"]["time_to_95pct_s"], cells["b"]["time_to_95pct_s"]
    assert (a.mean, a.reached, a.n) == (120.0, 2, 3)
    assert a.reached_low < 2 / 3 < a.reached_high
    assert (b.mean, b.reached, b.n) == (None, 0, 3)
    out = io.StringIO()
    Console(file=out, width=200).print(comparison_table("t", cells))
    text = out.getvalue()
    assert "(reached in 2 of 3)" in text and "not reached (0 of 3)" in text
    assert "n=3" in text


def test_an_empty_panel_is_labelled_not_reached(monkeypatch):
    import matplotlib.axes

    texts = []
    original = matplotlib.axes.Axes.text

    def spy(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy)
    rows = [row(label, time_to_95pct_s=None) for label in ("a", "b") for _ in range(2)]
    png = comparison_png(summarize_cells(rows), "t")
    assert png[:4] == b"\x89PNG"
    assert any("not reached" in t for t in texts)


def test_failed_runs_are_not_counted_in_n():
    rows = [row("a", committed=10), {**row("a"), "error": "Traceback", "committed": None}]
    assert summarize_cells(rows)["a"]["committed"].n == 1
