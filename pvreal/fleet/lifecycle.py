"""`fleet up`, `fleet down`, `fleet status`: N real devices wired to a Hub (docs/fleet.md).

Every name the fleet creates starts with its id (`pf` + 6 hex digits of DIR's path), and each is
written to fleet.json before it is created, so `down` removes exactly what `up` made, even after
`up` itself was killed half-way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvreal.ctrl.client import CtrlClient, CtrlError
from pvreal.device.executor import storage_prefix
from pvreal.device.install import install_factory
from pvreal.fleet import net, procs
from pvreal.fleet.state import VERSION, load, locked, save, state_path
from pvreal.netns import NETNS_DIR
from shared.errors import PvError

RUN_ROOT = Path("/run/pvtwin")
STOP_GRACE_S = 1.0  # the fleet's devices stop their containers quickly on `down`
RELAY_MARKER = "pvreal.fleet.relay"
SUPERVISOR_MARKER = "fleet up"  # in the command line of a foreground `pvreal fleet up`


@dataclass
class FleetSpec:
    storage: Path
    hub: str  # the Hub's URL as this machine's root namespace reaches it
    devices: int
    state: Path  # the factory revision
    objects: Path | None = None
    token: str | None = None
    hub_db: Path | None = None  # the fleet runs the Hub on this database itself
    subnet: str = net.DEFAULT_SUBNET
    config: dict[str, str] = field(default_factory=dict)
    local: bool = False  # never pass the remote-mode flags
    ready_timeout: float = 120.0
    supervised: bool = False  # this process stays as the fleet's foreground supervisor


def fleet_id(storage: Path) -> str:
    return "pf" + hashlib.sha256(str(storage.resolve()).encode()).hexdigest()[:6]


def plan_of(doc: dict[str, Any]) -> net.Plan:
    return net.Plan(doc["id"], ipaddress.IPv4Network(doc["subnet"]))


def _hub_address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise PvError(f"--hub {url!r}: expected http://HOST:PORT")
    return parts.hostname, parts.port or 80


def _device_entry(spec: FleetSpec, plan: net.Plan, index: int) -> dict[str, Any]:
    name = f"d{index + 1:02d}"
    folder = spec.storage.resolve() / "devices" / name
    storage = folder / "storage"
    prefix = storage_prefix(storage)
    return {
        "name": name, "netns": plan.device_netns(name), "address": str(plan.address(index)),
        "folder": str(folder), "storage": str(storage), "prefix": prefix,
        "run_dir": str(RUN_ROOT / prefix), "socket": str(RUN_ROOT / prefix / "pv-ctrl"),
        "log": str(folder / "daemon.log"), "pid": None, "link": "up",
        "shaping": {"delay_ms": 0.0, "loss_pct": 0.0}, "boots": 0,
    }  # fmt: skip


def daemon_argv(doc: dict[str, Any], dev: dict[str, Any]) -> list[str]:
    argv = procs.python_argv("-m", "pvreal.device", "run", "--storage", dev["storage"],
                             "--socket", dev["socket"], "--stop-grace", str(STOP_GRACE_S))  # fmt: skip
    for key, value in sorted(doc["config"].items()):
        argv += ["--config", f"{key}={value}"]
    if doc["remote"]:
        argv += procs.remote_args(doc["hub"]["device_url"], doc["hub"]["token"])
    return argv


def boot_device(doc: dict[str, Any], dev: dict[str, Any]) -> None:
    """Start the device's daemon in its netns (its latch picks the revision, as at power-on)."""
    Path(dev["socket"]).unlink(missing_ok=True)
    dev["pid"] = procs.spawn(daemon_argv(doc, dev), Path(dev["log"]), dev["netns"])
    dev["boots"] += 1
    dev["started_at"] = time.time()  # power-on: `pvsim calibrate` measures boots from it


def device_status(dev: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        return CtrlClient(dev["socket"], timeout=timeout).status()
    except (CtrlError, OSError):
        return None


def settled(status: dict[str, Any] | None) -> bool:
    if not status or status.get("phase") != "IDLE" or status.get("activity"):
        return False
    containers = status.get("containers", {}).values()
    return all(c["status"] in ("STARTED", "READY", "MOUNTED") for c in containers)


def _registered(status: dict[str, Any] | None) -> bool:
    hub = (status or {}).get("hub")
    return isinstance(hub, dict) and bool(hub.get("device"))


def wait_ready(doc: dict[str, Any], names: list[str], timeout: float) -> None:
    waiting = {d["name"]: d for d in doc["devices"] if d["name"] in names}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for name, dev in list(waiting.items()):
            if not procs.alive(dev["pid"], dev["storage"]):
                raise PvError(f"device {name} exited during boot; see {dev['log']}")
            status = device_status(dev)
            # in remote mode a device is ready once it also registered with the Hub, so a release
            # created right after `fleet up` counts it in its fleet
            if settled(status) and (not doc.get("remote") or _registered(status)):
                del waiting[name]
        time.sleep(0.1)
    if waiting:
        raise PvError(f"devices not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}")


def up(spec: FleetSpec) -> dict[str, Any]:
    """Bring the fleet up and return its state; on any failure (or Ctrl-C) remove what was
    made, then re-raise."""
    if os.geteuid() != 0:
        raise PvError("fleet up needs root (network namespaces, mounts, runc)")
    folder = spec.storage.resolve()
    with locked(folder):
        if state_path(folder).exists():
            raise PvError(f"{state_path(folder)} exists: a fleet runs here (pvreal fleet down)")
        hub_host, hub_port = _hub_address(spec.hub)
        plan = net.Plan(fleet_id(folder), ipaddress.IPv4Network(spec.subnet))
        gateway = str(plan.gateway.ip)
        doc: dict[str, Any] = {
            "version": VERSION, "id": plan.fleet_id, "storage": str(folder),
            "subnet": spec.subnet, "hub_netns": plan.hub_netns, "bridge": net.BRIDGE,
            "supervisor_pid": os.getpid() if spec.supervised else None, "phase": "starting", "config": spec.config,
            "remote": False, "started_at": time.time(), "up_s": None,
            "hub": {"url": spec.hub, "device_url": f"http://{gateway}:{hub_port}",
                    "db": str(spec.hub_db.resolve()) if spec.hub_db else None,
                    "token": spec.token, "pid": None, "argv": None},
            "relay": {"pid": None, "argv": None, "log": str(folder / "relay.log")},
            "devices": [_device_entry(spec, plan, i) for i in range(spec.devices)],
        }  # fmt: skip
        save(folder, doc)
    try:
        _bring_up(spec, doc, plan, hub_host, hub_port)
    except BaseException:
        down(folder)
        raise
    return doc


def _bring_up(spec: FleetSpec, doc: dict[str, Any], plan: net.Plan, hub_host: str,
              hub_port: int) -> None:  # fmt: skip
    folder = Path(doc["storage"])
    started = time.monotonic()
    if spec.hub_db is not None:
        _start_hub(doc, hub_host, hub_port)
        if doc["hub"]["token"] is None:
            doc["hub"]["token"] = Path(f"{doc['hub']['db']}.device-token").read_text().strip()
    doc["remote"] = not spec.local and bool(doc["hub"]["token"]) and procs.daemon_takes_hub()
    net.create_hub_side(plan)
    gateway = str(plan.gateway.ip)
    relay = doc["relay"]
    relay["argv"] = procs.python_argv(
        "-m", "pvreal.fleet.relay", plan.hub_netns, gateway, str(hub_port), hub_host,
        str(hub_port), str(folder / "shaping.json"))  # fmt: skip
    relay["pid"] = procs.spawn(relay["argv"], Path(relay["log"]))
    save(folder, doc)
    if not procs.wait_port(gateway, hub_port, 60, plan.hub_netns, (relay["pid"], RELAY_MARKER)):
        raise PvError(f"the Hub relay did not start; see {relay['log']}")
    objects = spec.objects or spec.state.resolve().parent / "objects"
    for index, dev in enumerate(doc["devices"]):
        net.add_device(plan, dev["name"], index)
        storage = Path(dev["storage"])
        if not (storage / "trails").exists():  # a fleet's disks survive `down`
            install_factory(storage, spec.state, objects, "uboot", "hardened")
        boot_device(doc, dev)
        save(folder, doc)
    wait_ready(doc, [d["name"] for d in doc["devices"]], spec.ready_timeout)
    doc["phase"], doc["up_s"] = "up", round(time.monotonic() - started, 2)
    save(folder, doc)


def hub_argv(doc: dict[str, Any], host: str, port: int) -> list[str]:
    return procs.python_argv("-m", "pvreal", "hub", "serve", "--db", doc["hub"]["db"],
                             "--listen", f"{host}:{port}")  # fmt: skip


def _start_hub(doc: dict[str, Any], host: str, port: int) -> None:
    hub = doc["hub"]
    hub["argv"] = hub_argv(doc, host, port)
    hub["log"] = str(Path(doc["storage"]) / "hub.log")
    hub["pid"] = procs.spawn(hub["argv"], Path(hub["log"]))
    save(Path(doc["storage"]), doc)
    if not procs.wait_port(host, port, 60, pid=(hub["pid"], hub["db"])):
        raise PvError(f"the Hub did not start on {host}:{port}; see {hub['log']}")


def down(storage: Path) -> list[str]:
    """Stop and remove everything fleet.json names; what was removed, for the report."""
    folder = storage.resolve()
    try:
        doc = load(folder)
    except PvError:
        return []
    supervisor = doc.get("supervisor_pid")
    if supervisor and supervisor != os.getpid() and procs.alive(supervisor, SUPERVISOR_MARKER):
        # a foreground `fleet up` tears down itself on SIGTERM; give it the time to
        procs.stop([(supervisor, SUPERVISOR_MARKER)], grace=120)
    try:
        doc = load(folder)
    except PvError:
        return ["fleet (by its up process)"]
    removed: list[str] = []
    devices = doc["devices"]
    procs.stop([(d["pid"], d["storage"]) for d in devices if d["pid"]], grace=30)
    for dev in devices:
        killed = procs.runc_kill_all(Path(dev["run_dir"]) / "containers" / "runc")
        removed += [f"container {cid}" for cid in killed]
        for name in net.leftovers(dev["prefix"] + "-"):
            net.remove_netns(name)
            removed.append(f"netns {name}")
        _remove_stale_netns_files(dev["prefix"] + "-")
        # the daemon's run dir (runc state, sockets); its mounts lived in its own mount
        # namespace, gone with it, so this is plain files on tmpfs
        if Path(dev["run_dir"]).is_dir():
            shutil.rmtree(dev["run_dir"], ignore_errors=True)
            removed.append(f"run dir {dev['run_dir']}")
    relay, hub = doc["relay"], doc["hub"]
    if relay["pid"]:
        procs.stop([(relay["pid"], RELAY_MARKER)], grace=10)
    if hub["pid"]:
        procs.stop([(hub["pid"], hub["db"])], grace=10)
    for dev in devices:
        if net.remove_netns(dev["netns"]):
            removed.append(f"netns {dev['netns']}")
    if net.remove_netns(doc["hub_netns"]):
        removed.append(f"netns {doc['hub_netns']} (bridge {doc['bridge']} and every veth)")
    (folder / "shaping.json").unlink(missing_ok=True)
    state_path(folder).unlink(missing_ok=True)
    return removed


def _remove_stale_netns_files(prefix: str) -> None:
    """A daemon killed with its mount namespace leaves the empty files its binds covered."""
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            if entry.name.startswith(prefix):
                net.remove_netns(entry.name)


def status(storage: Path) -> dict[str, Any]:
    """Each device: its daemon (alive?), netns, address, storage, link, revision, and what it
    costs (RSS and CPU time of the daemon and its containers)."""
    doc = load(storage.resolve())
    present = set(net.leftovers(doc["id"]))
    rows, roots = [], {}
    for dev in doc["devices"]:
        alive = procs.alive(dev["pid"], dev["storage"])
        st = device_status(dev, timeout=1.0) if alive else None
        containers = (st or {}).get("containers", {}).values()
        roots[dev["name"]] = [dev["pid"]] * alive + [c["pid"] for c in containers if c.get("pid")]
        rows.append({
            "name": dev["name"], "pid": dev["pid"], "alive": alive,
            "netns": dev["netns"], "netns_present": dev["netns"] in present,
            "address": dev["address"], "storage": dev["storage"], "link": dev["link"],
            "shaping": dev["shaping"], "boots": dev["boots"],
            "revision": (st.get("running") or st.get("booted")) if st else None,
            "phase": st.get("phase") if st else None,
        })  # fmt: skip
    costs = procs.usage(roots)
    for row in rows:
        row.update(costs[row["name"]])
    hub = doc["hub"]
    return {
        "id": doc["id"], "phase": doc["phase"], "storage": doc["storage"], "up_s": doc["up_s"],
        "remote": doc["remote"], "hub": hub["url"], "device_url": hub["device_url"],
        "hub_owned": bool(hub["argv"]),
        "relay_alive": procs.alive(doc["relay"]["pid"], RELAY_MARKER),
        "devices": rows,
    }  # fmt: skip
