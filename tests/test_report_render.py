"""report.html and adoption.png as a person sees them: the report fits a 1280 px wide window
(checked in headless Chromium, by the DOM and by a screenshot), close release markers get rows of
their own, and rollbacks and bricked devices are drawn over time."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from pvsim.report import adoption_figure, label_rows, write_run_outputs
from pvsim.results import RunResult
from pvsim.shard import run_sharded
from pvsim.testing import run, scenario

WIDTH = 1280

# many close releases with long names, one of them bad: a wide releases table, crowded markers,
# bricked devices (A/B without rollback) and a paused canary
CROWDED = {
    "fleet.devices": 200,
    "rollout.strategy": "canary",
    "rollout.canary_devices": 10,
    "rollout.soak_s": 600,
    "update_model.kind": "ab-image",
    "update_model.rollback": False,
    "release": [
        {"name": f"web-1.{k}-long-release-name", "at_s": 300.0 * k, "size_mb": 5}
        for k in range(7)
    ]
    + [{"name": "bsp-2.0", "at_s": 2400.0, "parts": ["bsp"], "defect": "kernel_panic", "defect_fraction": 0.5}],
}


@pytest.fixture(scope="module")
def crowded() -> RunResult:
    return run(**CROWDED)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: apt-get install chromium (Debian's package; .ci/run installs it)")


def _browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


# written into the page's title once everything (the inlined plot too) is laid out
MEASURE = """<script>window.addEventListener("load", () => {
  const root = document.documentElement;
  document.title = "measured " + root.scrollWidth + " " + root.clientWidth;
});</script>"""


def test_report_fits_1280_px_without_horizontal_scrolling(tmp_path, crowded):
    paths = write_run_outputs(crowded, tmp_path / "out")
    measured = tmp_path / "measured.html"
    measured.write_text(paths["report"].read_text(encoding="utf-8") + MEASURE, encoding="utf-8")

    dom = _browse(measured, tmp_path / "profile", f"--window-size={WIDTH},900", "--dump-dom").stdout
    found = re.search(r"<title>measured (\d+) (\d+)</title>", dom)
    assert found, dom[:500]
    scroll_width, client_width = int(found[1]), int(found[2])
    assert client_width == WIDTH
    assert scroll_width <= client_width, f"the page is {scroll_width} px wide in a {WIDTH} px window"

    shot = tmp_path / "report.png"
    _browse(paths["report"], tmp_path / "profile", f"--window-size={WIDTH},2400", f"--screenshot={shot}")
    pixels = plt.imread(shot)
    assert pixels.shape[1] == WIDTH
    # the body is at most 1100 px wide from a 2 em margin: the right-hand strip stays blank,
    # where the releases table used to run on past the window's edge
    right = pixels[:, WIDTH - 80 :, :3]
    assert right.min() > 0.95, "something is drawn in the right-hand 80 px: the page overflows"
    assert pixels[:, :WIDTH - 80, :3].min() < 0.5  # and the page itself did render


def test_releases_table_has_one_column_per_release(tmp_path, crowded):
    report = write_run_outputs(crowded, tmp_path)["report"].read_text(encoding="utf-8")
    section = report.split("<h2>Releases</h2>", 1)[1].split("<h2>", 1)[0]
    tables = section.split("</table>")[:-1]
    assert len(tables) == 2  # eight releases, six to a table
    headers = [table.split("</tr>", 1)[0] for table in tables]
    assert [h.count("<th>") - 1 for h in headers] == [6, 2]
    names = [r["name"] for r in CROWDED["release"]]
    assert all(f"<th>{name}</th>" in "".join(headers) for name in names)
    assert all("<th>rolled_back</th>" in table and "<th>mb_downloaded</th>" in table for table in tables)


def test_rollbacks_and_bricked_devices_over_time(crowded):
    timeline, results = crowded.timeline, crowded.results
    for key in ("rolled_back", "bricked"):
        series = timeline[key]
        assert len(series) == len(timeline["t"])
        assert series == sorted(series) and series[0] == 0
        assert series[-1] == results[key]
    assert results["bricked"] > 0  # the kernel panic bricks A/B devices without rollback

    fig = adoption_figure(crowded)
    failures = fig.axes[2]
    drawn = {line.get_label(): list(line.get_ydata()) for line in failures.get_lines() if line.get_label()[0] != "_"}
    plt.close(fig)
    assert drawn[f"bricked ({results['bricked']})"] == timeline["bricked"]
    assert drawn[f"rolled back ({results['rolled_back']})"] == timeline["rolled_back"]


def test_sharded_run_adds_up_the_shards_series():
    sharded = run_sharded(scenario(**CROWDED), shards=2, workers=1)
    for key in ("rolled_back", "bricked"):
        assert sharded.timeline[key][-1] == sharded.results[key]
    assert sharded.results["bricked"] > 0


def test_rollbacks_over_time_in_the_pantavisor_model():
    result = run(**{"release": [{"name": "bad", "at_s": 0, "defect": "container_crash"}]})
    series = result.timeline["rolled_back"]
    assert series[-1] == result.results["rolled_back"] > 0
    assert series[0] == 0


def test_close_markers_get_rows_of_their_own():
    xlim = (0.0, 12.0)
    close = [(0.0, "web-1.1 released"), (0.05, "web-1.2 released"), (0.1, "web-1.2 paused")]
    assert [row for row, _ in label_rows(close, xlim, axes_width_pt=570)] == [0, 1, 2]
    apart = [(0.0, "web-1.1 released"), (6.0, "bsp-2.0 released")]
    assert label_rows(apart, xlim, axes_width_pt=570) == [(0, False), (0, False)]
    # a label that would leave the plot on the right ends at its line instead
    assert label_rows([(11.9, "bsp-2.1 released")], xlim, axes_width_pt=570) == [(0, True)]
