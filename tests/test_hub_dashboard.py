"""The live dashboard in a real headless browser: the fleet table, each release's counts and the
adoption plot show what `pvreal hub status --json` says, and follow the rollout as it runs."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser

from hubkit import device, hub_files, write_release
from test_report_render import _chromium  # the one place that finds a headless browser

from pvreal.cli import main
from pvreal.hub.client import operator_for, publish
from pvreal.hub.server import running
from pvreal.hub.service import Hub


def browse(url: str, profile, *args: str) -> str:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout


class Tables(HTMLParser):
    """Rows (`data-release` / `data-device` -> cell texts) and the plot's polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.releases: dict[str, list[str]] = {}
        self.devices: dict[str, list[str]] = {}
        self.lines: dict[str, str] = {}
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and ("data-release" in attrs or "data-device" in attrs):
            self.row = []
            table = self.releases if "data-release" in attrs else self.devices
            table[attrs.get("data-release") or attrs["data-device"]] = self.row
        elif tag == "td" and self.row is not None:
            self.cell = []
        elif tag == "polyline":
            self.lines[attrs["data-release"]] = attrs["points"]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        elif tag == "tr":
            self.row = None


def shown(url: str, token: str, profile) -> Tables:
    dom = browse(f"{url}/#token={token}", profile, "--dump-dom")
    assert '<div id="error"></div>' in dom, re.search(r'<div id="error">.*?</div>', dom)
    tables = Tables()
    tables.feed(dom)
    return tables


def status_json(capsys, db) -> dict:
    assert main(["hub", "status", "--db", str(db), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_page_matches(tables: Tables, status: dict) -> None:
    assert set(tables.releases) == {r["name"] for r in status["releases"]}
    for r in status["releases"]:
        row = tables.releases[r["name"]]
        assert row[:3] == [r["name"], r["state"], r["strategy"]]
        counts = [int(x) for x in row[3:]]
        assert counts == [r[k] for k in ("fleet", "admitted", "succeeded", "failed", "in_flight")]
        points = [tuple(map(float, p.split(","))) for p in tables.lines[r["name"]].split()]
        # a step line: the origin, a rise per success, now; it ends as high as the successes
        assert len(points) == 2 + 2 * r["succeeded"]
        rises = sum(1 for a, b in zip(points, points[1:], strict=False) if b[1] < a[1])  # SVG y grows downward
        assert rises == r["succeeded"] and points[-1][1] <= points[0][1]
    assert set(tables.devices) == {d["id"] for d in status["devices"]}
    for d in status["devices"]:
        row = tables.devices[d["id"]]
        assert row[:5] == [d["id"], d["nick"], str(d["revision"]), d["status"], d["status-msg"]]


def test_the_dashboard_shows_what_hub_status_says_as_the_rollout_runs(tmp_path, capsys):
    files = hub_files(tmp_path)
    state, objects = write_release(tmp_path, "v1")
    profile = tmp_path / "profile"
    with running(files) as url:
        fleet = [device(url, files, f"d{k}") for k in range(5)]
        publish(operator_for(files.database), state, "web-1.1", "all-at-once", {}, objects)

        before = status_json(capsys, files.database)
        assert_page_matches(shown(url, files.operator_token, profile), before)
        assert before["releases"][0]["in_flight"] == 5

        for d in fleet[:3]:
            d.put_progress(1, {"status": "DONE", "status-msg": "Update finished", "progress": 100})
        fleet[3].put_progress(1, {"status": "ERROR", "status-msg": "Status goal not reached",
                                  "progress": 100})  # fmt: skip
        during = status_json(capsys, files.database)
        page = shown(url, files.operator_token, profile)
        assert_page_matches(page, during)
        assert page.releases["web-1.1"][3:] == ["5", "5", "3", "1", "1"]

        shot = tmp_path / "dashboard.png"
        browse(f"{url}/#token={files.operator_token}", profile, "--window-size=1100,800",
               f"--screenshot={shot}")  # fmt: skip
        assert shot.stat().st_size > 10_000


def test_without_the_token_the_page_says_the_hub_refused(tmp_path):
    files = hub_files(tmp_path)
    with running(files) as url:
        dom = browse(f"{url}/", tmp_path / "profile", "--dump-dom")
    assert re.search(r'<div id="error">Hub not reachable: operator routes need', dom)
    assert "data-device" not in dom


def test_one_page_load_follows_the_rollout_without_a_reload(tmp_path, monkeypatch):
    """Devices report while the page is open (after its second poll): the last poll's answer, not
    the first, is what the page ends up showing."""
    files = hub_files(tmp_path)
    state, objects = write_release(tmp_path, "v1")
    answers: list[dict] = []
    real_adoption = Hub.adoption

    def adoption(hub):
        if len(answers) == 2:  # the page has drawn twice: now the fleet moves on
            for d in fleet:
                hub.put_progress(d.device, "1", {"status": "DONE", "status-msg": "", "progress": 100})
        series = real_adoption(hub)
        answers.append({**hub.status(), "adoption": series})
        return series

    monkeypatch.setattr(Hub, "adoption", adoption)
    with running(files) as url:
        fleet = [device(url, files, f"d{k}") for k in range(3)]
        publish(operator_for(files.database), state, "web-1.1", "all-at-once", {}, objects)
        page = shown(url, files.operator_token, tmp_path / "profile")
    assert len(answers) >= 4, "the page polled fewer times than expected"
    assert answers[0]["releases"][0]["succeeded"] == 0 and answers[-1]["releases"][0]["succeeded"] == 3
    assert_page_matches(page, answers[-1])
