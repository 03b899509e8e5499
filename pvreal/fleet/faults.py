"""Fault injection on a running fleet: links, loss and latency, the Hub, device crashes and
power cuts. Each fault acts on what fleet.json names and records the new state there."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pvreal.fleet import net, procs
from pvreal.fleet.lifecycle import boot_device, plan_of, wait_ready
from pvreal.fleet.relay import write_shaping
from pvreal.fleet.state import device, editing, load
from shared.errors import PvError

FAULTS = ("link-down", "link-up", "loss", "latency", "hub-restart", "kill", "power-cut")


def parse_loss(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%?", text.strip())
    if not match or float(match[1]) > 100:
        raise PvError(f"loss {text!r}: expected a percentage, e.g. 10% (0 removes it)")
    return float(match[1])


def parse_latency(text: str) -> float:
    """Milliseconds from `100ms`, `0.5s` or a bare number of ms."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", text.strip())
    if not match:
        raise PvError(f"latency {text!r}: expected e.g. 100ms or 0.5s (0 removes it)")
    value = float(match[1])
    return value * 1000 if match[2] == "s" else value


def inject(storage: Path, fault: str, name: str | None = None, value: str | None = None,
           off_s: float = 0.0) -> str:  # fmt: skip
    """Apply one fault; a line saying what was done."""
    folder = storage.resolve()
    if fault == "hub-restart":
        return _hub_restart(folder)
    if name is None:
        raise PvError(f"fleet fault {fault} needs a DEVICE")
    with editing(folder) as doc:
        dev = device(doc, name)
        if fault in ("link-down", "link-up"):
            net.set_link(plan_of(doc), name, fault == "link-up")
            dev["link"] = fault.removeprefix("link-")
            return f"{name}: link {dev['link']}"
        if fault in ("loss", "latency"):
            if value is None:
                raise PvError(f"fleet fault {fault} needs a VALUE")
            key = "loss_pct" if fault == "loss" else "delay_ms"
            dev["shaping"][key] = parse_loss(value) if fault == "loss" else parse_latency(value)
            return f"{name}: {fault} {value} (by {_shape(folder, doc, dev)})"
    if fault in ("kill", "power-cut"):
        return _crash(folder, name, power_cut=fault == "power-cut", off_s=off_s)
    raise PvError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")


def _shape(folder: Path, doc: dict[str, Any], dev: dict[str, Any]) -> str:
    """netem in the kernel when it has it, else the relay's shaping table (rewritten every time,
    so a value set back to 0 leaves it too)."""
    shaping = dev["shaping"]
    try:
        net.set_netem(plan_of(doc), dev["name"], shaping["delay_ms"], shaping["loss_pct"])
        shaping["by"] = "netem"
    except net.NetemUnavailable:
        shaping["by"] = "relay"
    table = {}
    for other in doc["devices"]:
        s = other["shaping"]
        if s.get("by") == "relay" and (s["delay_ms"] or s["loss_pct"]):
            table[other["address"].split("/")[0]] = {"delay_ms": s["delay_ms"],
                                                     "loss_pct": s["loss_pct"]}  # fmt: skip
    write_shaping(folder / "shaping.json", table)
    return str(shaping["by"])


def _crash(folder: Path, name: str, *, power_cut: bool, off_s: float) -> str:
    """SIGKILL the daemon (a crash: its containers live on until the next boot clears them) or,
    for a power cut, the daemon and every container at once; then boot it again through its
    latch after `off_s` seconds."""
    with editing(folder) as doc:
        dev = device(doc, name)
        procs.kill([(dev["pid"], dev["storage"])] if dev["pid"] else [])
        killed = []
        if power_cut:
            killed = procs.runc_kill_all(Path(dev["run_dir"]) / "containers" / "runc")
        dev["pid"] = None
    time.sleep(off_s)
    with editing(folder) as doc:
        dev = device(doc, name)
        boot_device(doc, dev)
    what = "power cut" if power_cut else "SIGKILL"
    extra = f" and {len(killed)} containers" if power_cut else ""
    return f"{name}: {what} (daemon{extra}), booted again (boot {dev['boots']}, pid {dev['pid']})"


def _hub_restart(folder: Path) -> str:
    hub_stop(folder)
    pid = hub_start(folder)
    return f"hub: restarted (pid {pid})"


def hub_stop(folder: Path) -> None:
    """The Hub goes away (SIGTERM): devices' requests are refused until `hub_start`."""
    with editing(folder) as doc:
        hub = doc["hub"]
        if not hub["argv"]:
            raise PvError("this fleet did not start the Hub (fleet up --hub-db FILE does)")
        procs.stop([(hub["pid"], hub["db"])], grace=10)
        hub["pid"] = None


def hub_start(folder: Path) -> int:
    """Start the Hub again on the same database and port; returns once it listens."""
    with editing(folder) as doc:
        hub = doc["hub"]
        if not hub["argv"]:
            raise PvError("this fleet did not start the Hub (fleet up --hub-db FILE does)")
        hub["pid"] = procs.spawn(hub["argv"], Path(hub["log"]))
        host, port = hub["argv"][-1].rsplit(":", 1)
    if not procs.wait_port(host, int(port), 30):
        raise PvError(f"the Hub did not come back; see {hub['log']}")
    return int(hub["pid"])


def wait_booted(storage: Path, name: str, timeout: float = 60.0) -> None:
    wait_ready(load(storage.resolve()), [name], timeout)
