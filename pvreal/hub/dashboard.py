"""The Hub's live dashboard: one self-contained page (inline CSS, script and SVG; nothing fetched
from elsewhere) that polls /operator/dashboard every second and redraws the releases with their
counts, the fleet table and the adoption plot (devices succeeded over time, one line per release).

The operator token comes from the page address's fragment (`/#token=...`), which a browser never
sends to a server, so it stays out of logs and the page itself holds nothing secret.
"""

from __future__ import annotations

POLL_MS = 1000

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pvtwin Hub</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; } th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.running { color: #0a6; } .paused { color: #c80; } .aborted { color: #c22; } .completed { color: #36c; }
#error { color: #c22; } svg text { font-size: 11px; fill: #444; }
</style></head>
<body>
<h1>pvtwin Hub</h1>
<div id="updated">waiting for the Hub...</div><div id="error"></div>
<h2>Releases</h2>
<table id="releases"><thead><tr><th>release</th><th>state</th><th>strategy</th><th>fleet</th>
<th>admitted</th><th>succeeded</th><th>failed</th><th>in flight</th></tr></thead><tbody></tbody></table>
<h2>Adoption</h2>
<svg id="plot" width="640" height="240" viewBox="0 0 640 240" role="img"
 aria-label="devices succeeded over time per release"></svg>
<h2>Fleet</h2>
<table id="devices"><thead><tr><th>device</th><th>nick</th><th>revision</th><th>status</th>
<th>message</th><th>last seen</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const COLORS = ["#36c", "#0a6", "#c80", "#c22", "#839", "#088"];
const NS = "http://www.w3.org/2000/svg";

function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td;
}

function fillReleases(releases) {
  const body = document.querySelector("#releases tbody"); body.replaceChildren();
  for (const r of releases) {
    const row = body.insertRow(); row.dataset.release = r.name;
    cell(row, r.name); cell(row, r.state, r.state); cell(row, r.strategy);
    for (const k of ["fleet", "admitted", "succeeded", "failed", "in_flight"]) cell(row, String(r[k]), "n");
  }
}

function fillDevices(devices) {
  const body = document.querySelector("#devices tbody"); body.replaceChildren();
  for (const d of devices) {
    const row = body.insertRow(); row.dataset.device = d.id;
    cell(row, d.id); cell(row, d.nick); cell(row, String(d.revision), "n");
    cell(row, d.status); cell(row, d["status-msg"]); cell(row, d["last-seen"] || "");
  }
}

function svg(name, attrs, text) {
  const el = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawPlot(adoption, releases) {
  const plot = document.getElementById("plot"); plot.replaceChildren();
  const W = 640, H = 240, L = 40, R = 130, T = 10, B = 30;
  const fleet = Math.max(1, ...releases.map(r => r.fleet));
  const tmax = Math.max(1, ...Object.values(adoption).map(a => a.elapsed));
  const x = t => L + (W - L - R) * t / tmax, y = n => H - B - (H - T - B) * n / fleet;
  plot.append(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"}));
  plot.append(svg("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"}));
  plot.append(svg("text", {x: L - 6, y: T + 8, "text-anchor": "end"}, String(fleet)));
  plot.append(svg("text", {x: L - 6, y: H - B, "text-anchor": "end"}, "0"));
  plot.append(svg("text", {x: W - R, y: H - 8, "text-anchor": "end"}, tmax.toFixed(1) + " s"));
  releases.forEach((r, i) => {
    const color = COLORS[i % COLORS.length], a = adoption[r.name] || {elapsed: 0, points: []};
    // a step line: flat until a device succeeds, then up by one, and flat again until now
    const steps = [[0, 0]];
    for (const [t, n] of a.points) steps.push([t, n - 1], [t, n]);
    steps.push([a.elapsed, a.points.length]);
    const path = steps.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    plot.append(svg("polyline", {points: path.join(" "), fill: "none", stroke: color,
                                 "stroke-width": 2, "data-release": r.name}));
    plot.append(svg("text", {x: W - R + 8, y: T + 12 + 14 * i, fill: color},
                    r.name + " " + r.succeeded + "/" + r.fleet));
  });
}

async function poll() {
  try {
    const answer = await fetch("/operator/dashboard", {headers: {Authorization: "Bearer " + token}});
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.Error || answer.statusText);
    fillReleases(data.releases); fillDevices(data.devices); drawPlot(data.adoption, data.releases);
    document.getElementById("updated").textContent =
      "updated " + new Date().toISOString() + " (" + data.devices.length + " devices)";
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "Hub not reachable: " + e.message;
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body></html>
""".replace("POLL_MS", str(POLL_MS))
