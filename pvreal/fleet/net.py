"""The fleet's private network, with pyroute2 only (no `ip` command).

    netns <fid>-hub: bridge fbr0 (the gateway address, where the Hub relay listens)
        |-- veth d01 ==== eth0 in netns <fid>-d01 (one address, no default route)
        |-- veth d02 ==== eth0 in netns <fid>-d02
        ...

Nothing here touches the root namespace's interfaces: the bridge, every veth and every address
live in namespaces the fleet created, the subnet is private and no namespace has a route out of
it, so a device can reach the fleet subnet (the Hub relay on the gateway) and nothing else. Bridge
ports are isolated, so devices do not see each other either. Faults act on a device's link: the
bridge end goes down (a cable pulled at the switch), or a netem qdisc delays or drops packets on
both ends. A kernel built without netem (this CI machine's: CONFIG_NET_SCH_NETEM is not set, and
there are no modules) answers ENOENT; `set_netem` then raises `NetemUnavailable` and the caller
shapes the device's traffic in the Hub relay instead (pvreal/fleet/relay.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import NetlinkError, NetNS, netns

from pvreal.netns import NETNS_DIR, bridge_mac, create_netns

BRIDGE = "fbr0"
DEVICE_IF = "eth0"
DEFAULT_SUBNET = "10.218.0.0/24"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Names and addresses of a fleet, a pure function of its id, size and subnet."""

    fleet_id: str
    subnet: ipaddress.IPv4Network

    @property
    def hub_netns(self) -> str:
        return f"{self.fleet_id}-hub"

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}")

    def device_netns(self, name: str) -> str:
        return f"{self.fleet_id}-{name}"

    def address(self, index: int) -> ipaddress.IPv4Interface:
        """The address of device `index` (0-based): the hosts after the gateway."""
        hosts = self.subnet.num_addresses - 3  # network, gateway, broadcast
        if not 0 <= index < hosts:
            raise ValueError(f"{self.subnet} holds {hosts} devices, not {index + 1}")
        return ipaddress.IPv4Interface(
            f"{self.subnet.network_address + 2 + index}/{self.subnet.prefixlen}"
        )


def enter_netns(name: str) -> None:
    """Move the calling thread (a process, if it has one thread) into netns `name`."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, work: Callable[[], T]) -> T:
    """Run `work()` in a short-lived thread that entered netns `name`: sockets it creates stay
    in that namespace; the calling thread's namespace is untouched (setns acts per thread)."""
    out: list[Any] = []

    def enter_and_work() -> None:
        try:
            enter_netns(name)
            out.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread
            out.append((False, exc))

    thread = threading.Thread(target=enter_and_work, name=f"in-{name}")
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def create_hub_side(plan: Plan) -> None:
    """The fleet netns with its bridge holding the gateway address (its MAC fixed: bridge_mac)."""

    def configure(ns: Any) -> None:
        ns.link("set", index=1, state="up")  # lo
        ns.link("add", ifname=BRIDGE, kind="bridge", address=bridge_mac(plan.fleet_id))
        bridge = ns.link_lookup(ifname=BRIDGE)[0]
        gw = plan.gateway
        ns.addr("add", index=bridge, address=str(gw.ip), prefixlen=gw.network.prefixlen)
        ns.link("set", index=bridge, state="up")

    create_netns(plan.hub_netns, configure)


def add_device(plan: Plan, name: str, index: int) -> ipaddress.IPv4Interface:
    """Device `name`'s netns, and a veth from the bridge (end `name`) to its eth0."""
    devns = plan.device_netns(name)
    address = plan.address(index)
    create_netns(devns)
    with NetNS(plan.hub_netns) as hub:
        hub.link("add", ifname=name, kind="veth", peer={"ifname": DEVICE_IF, "net_ns_fd": devns})
        port = hub.link_lookup(ifname=name)[0]
        hub.link("set", index=port, master=hub.link_lookup(ifname=BRIDGE)[0], state="up")
        hub.brport("set", index=port, isolated=1)  # devices reach the gateway, not each other
    with NetNS(devns) as dev:
        eth0 = dev.link_lookup(ifname=DEVICE_IF)[0]
        dev.addr("add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen)
        dev.link("set", index=eth0, state="up")
        dev.link("set", index=1, state="up")  # lo
    return address


def set_link(plan: Plan, name: str, up: bool, settle_s: float = 5.0) -> None:
    """The bridge end of the device's veth: down is a pulled cable (eth0 loses its carrier).
    Returns once eth0 shows the change (the kernel reports a carrier change with a delay of up
    to a second), or after `settle_s`."""
    with NetNS(plan.hub_netns) as hub:
        hub.link("set", index=hub.link_lookup(ifname=name)[0], state="up" if up else "down")
    with NetNS(plan.device_netns(name)) as dev:
        index = dev.link_lookup(ifname=DEVICE_IF)[0]
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            if (dev.get_links(index)[0].get_attr("IFLA_OPERSTATE") == "UP") == up:
                break
            time.sleep(0.05)
        if up:  # forget the gateway's failed lookup, so the next packet asks again at once
            for neigh in dev.get_neighbours(ifindex=index):
                dev.neigh("del", ifindex=index, dst=neigh.get_attr("NDA_DST"))


def _ends(plan: Plan, name: str) -> list[tuple[str, str]]:
    return [(plan.hub_netns, name), (plan.device_netns(name), DEVICE_IF)]


class NetemUnavailable(RuntimeError):
    """The kernel has no netem qdisc."""


def set_netem(plan: Plan, name: str, delay_ms: float, loss_pct: float) -> None:
    """Delay and drop packets both ways on the device's link (each end's egress); both zero
    removes the qdisc."""
    for ns_name, ifname in _ends(plan, name):
        with NetNS(ns_name) as ns:
            index = ns.link_lookup(ifname=ifname)[0]
            if any(q.get_attr("TCA_KIND") == "netem" for q in ns.get_qdiscs(index=index)):
                ns.tc("del", index=index, root=True)
            if not (delay_ms or loss_pct):
                continue
            try:
                ns.tc("add", "netem", index=index, root=True,
                      delay=int(delay_ms * 1000), loss=loss_pct)  # fmt: skip
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:
                    raise NetemUnavailable("this kernel has no netem qdisc") from None
                raise


def read_netem(plan: Plan, name: str) -> list[dict[str, Any]]:
    """The netem qdiscs on the device's two link ends, as the kernel reports them."""
    found = []
    for ns_name, ifname in _ends(plan, name):
        with NetNS(ns_name) as ns:
            index = ns.link_lookup(ifname=ifname)[0]
            for qdisc in ns.get_qdiscs(index=index):
                if qdisc.get_attr("TCA_KIND") == "netem":
                    opts = qdisc.get_attr("TCA_OPTIONS")
                    found.append({"netns": ns_name, "ifname": ifname,
                                  "delay_ticks": opts["delay"], "loss": opts["loss"]})  # fmt: skip
    return found


def remove_netns(name: str) -> bool:
    """Remove a named netns if present (its veths go with it); True if it was there."""
    if name in netns.listnetns():
        netns.remove(name)
        return True
    if (NETNS_DIR / name).exists():  # an unmounted leftover file
        (NETNS_DIR / name).unlink()
        return True
    return False


def leftovers(prefix: str) -> list[str]:
    """Named network namespaces whose name starts with `prefix` (the fleet's, its devices')."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))
