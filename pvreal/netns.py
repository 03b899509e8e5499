"""Container networking with pyroute2 (netlink only; no `ip` command).

    device side (a network namespace of our own, or the current one)
        bridge <br>  with the pool's first address (the containers' gateway)
          |-- veth <host end>  ====  eth0 in netns <prefix>-<container>, next free pool address
          |-- ...
    each container netns: lo up, eth0 up, default route via the bridge

The pool is a private /24 that only exists inside namespaces we create, so nothing here reaches
the host's own network. `detach` removes a container's netns, which destroys its veth pair;
`teardown` removes the bridge and the device netns.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from shared.errors import PvError

NETNS_DIR = Path("/var/run/netns")
DEFAULT_SUBNET = "10.213.0.0/24"


class NetworkError(PvError):
    """Address pool exhausted or a netlink request that failed."""


@dataclass
class AddressPool:
    """Addresses of one subnet: the first host is the gateway, the rest go to containers."""

    subnet: ipaddress.IPv4Network
    leases: dict[str, ipaddress.IPv4Interface] = field(default_factory=dict)

    @classmethod
    def of(cls, subnet: str) -> AddressPool:
        return cls(ipaddress.IPv4Network(subnet))

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}")

    def allocate(self, owner: str) -> ipaddress.IPv4Interface:
        if owner in self.leases:
            return self.leases[owner]
        used = {lease.ip for lease in self.leases.values()} | {self.gateway.ip}
        for host in self.subnet.hosts():
            if host not in used:
                lease = ipaddress.IPv4Interface(f"{host}/{self.subnet.prefixlen}")
                self.leases[owner] = lease
                return lease
        raise NetworkError(f"no free address left in {self.subnet}", key=owner)

    def release(self, owner: str) -> None:
        self.leases.pop(owner, None)


@dataclass(frozen=True, slots=True)
class ContainerNet:
    container: str
    netns_name: str
    netns_path: Path
    address: ipaddress.IPv4Interface
    host_if: str


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@contextmanager
def _netlink(ns_name: str | None) -> Iterator[Any]:
    sock = NetNS(ns_name) if ns_name else IPRoute()
    try:
        yield sock
    finally:
        sock.close()


class DeviceNetwork:
    """The bridge and per-container veth pairs of one device (one daemon instance)."""

    def __init__(
        self, prefix: str, subnet: str = DEFAULT_SUBNET, *, device_netns: str | None = ""
    ) -> None:
        """`prefix` makes every name unique to this device. `device_netns`: "" (default) creates
        `<prefix>-dev`; None uses the current netns (a device that owns its machine, in QEMU)."""
        self.prefix = prefix
        self.pool = AddressPool.of(subnet)
        self.device_netns = f"{prefix}-dev" if device_netns == "" else device_netns
        self.bridge = "br" + _short(prefix)
        self.attached: dict[str, ContainerNet] = {}
        self._lock = threading.Lock()
        self._sock: Any = (
            None  # the device side's netlink socket, kept open (opening one costs ~25 ms)
        )

    @contextmanager
    def _device(self) -> Iterator[Any]:
        """The device side's netlink socket, one user at a time (the daemon starts containers
        from a thread pool)."""
        with self._lock:
            if self._sock is None:
                self._sock = NetNS(self.device_netns) if self.device_netns else IPRoute()
            yield self._sock

    def _close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def netns_name(self, container: str) -> str:
        return f"{self.prefix}-{container}"

    def setup(self) -> None:
        if self.device_netns and self.device_netns not in netns.listnetns():
            netns.create(self.device_netns)
        with self._device() as ns:
            if not ns.link_lookup(ifname=self.bridge):
                ns.link("add", ifname=self.bridge, kind="bridge")
            index = ns.link_lookup(ifname=self.bridge)[0]
            gw = self.pool.gateway
            if not any(a.get("address") == str(gw.ip) for a in ns.get_addr(index=index)):
                ns.addr("add", index=index, address=str(gw.ip), prefixlen=gw.network.prefixlen)
            ns.link("set", index=index, state="up")
            if self.device_netns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def attach(self, container: str) -> ContainerNet:
        """A fresh netns for `container` with eth0 (veth to the bridge), an address, lo up."""
        name = self.netns_name(container)
        if name in netns.listnetns():  # left over from a crash: start clean
            netns.remove(name)
        host_if = "ve" + _short(f"{self.prefix}/{container}")
        address = self.pool.allocate(container)
        netns.create(name)
        try:
            with self._device() as ns:
                for stale in ns.link_lookup(ifname=host_if):
                    ns.link("del", index=stale)
                ns.link(
                    "add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name}
                )
                bridge = ns.link_lookup(ifname=self.bridge)[0]
                ns.link("set", index=ns.link_lookup(ifname=host_if)[0], master=bridge, state="up")
            with _netlink(name) as ns:
                eth0 = ns.link_lookup(ifname="eth0")[0]
                ns.addr(
                    "add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen
                )
                ns.link("set", index=eth0, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.route("add", dst="0.0.0.0/0", gateway=str(self.pool.gateway.ip))
        except Exception as exc:
            self.pool.release(container)
            netns.remove(name)
            raise NetworkError(
                f"wiring the container network failed: {exc}", key=container
            ) from exc
        net = ContainerNet(container, name, NETNS_DIR / name, address, host_if)
        self.attached[container] = net
        return net

    def detach(self, container: str) -> None:
        """Remove the container's netns; the kernel deletes its veth pair with it."""
        name = self.netns_name(container)
        # Deleting the host end first removes both ends now; a netns is destroyed lazily.
        with self._device() as ns:
            for index in ns.link_lookup(ifname="ve" + _short(f"{self.prefix}/{container}")):
                ns.link("del", index=index)
        if name in netns.listnetns():
            netns.remove(name)
        self.pool.release(container)
        self.attached.pop(container, None)

    def teardown(self) -> None:
        for container in list(self.attached):
            self.detach(container)
        if self.device_netns:
            self._close()
            if self.device_netns in netns.listnetns():
                netns.remove(self.device_netns)
        else:
            with self._device() as ns:
                for index in ns.link_lookup(ifname=self.bridge):
                    ns.link("del", index=index)
            self._close()

    def leftovers(self) -> list[str]:
        """Namespaces of this device still present (empty after a full teardown)."""
        return [n for n in netns.listnetns() if n.startswith(self.prefix + "-")]
