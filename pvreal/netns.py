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

import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

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


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_CLONE_NEWNET = 0x40000000
_MS_BIND, _MS_REC, _MS_SHARED = 4096, 16384, 1 << 20


def _os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _share_netns_dir() -> None:
    """Make /var/run/netns a shared mount of its own, as iproute2 does, so a netns bound there
    is seen from every mount namespace that has it."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    target = os.fsencode(NETNS_DIR)
    if _libc.mount(b"none", target, None, _MS_SHARED | _MS_REC, None) == 0:
        return
    if _libc.mount(target, target, b"none", _MS_BIND | _MS_REC, None) != 0:
        raise _os_error(f"bind {NETNS_DIR} on itself")
    if _libc.mount(b"none", target, None, _MS_SHARED | _MS_REC, None) != 0:
        raise _os_error(f"make {NETNS_DIR} shared")


def create_netns(name: str, configure: Callable[[Any], None] | None = None) -> Path:
    """Create the named netns `name` (like `ip netns add`) and run `configure(socket)` inside it.

    A short-lived thread unshares its own network namespace and binds it to /var/run/netns/<name>:
    about 1 ms, where pyroute2's `netns.create` forks a process (30-50 ms). The same thread opens
    the netlink socket for `configure`, so no extra `NetNS` helper is needed either.
    """
    path = NETNS_DIR / name
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _share_netns_dir()
            if _libc.unshare(_CLONE_NEWNET) != 0:
                raise _os_error("unshare(CLONE_NEWNET)")
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
            if _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), b"none", _MS_BIND, None):
                raise _os_error(f"bind the new netns on {path}")
            if configure is not None:
                with IPRoute() as inside:
                    configure(inside)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{name}")
    thread.start()
    thread.join()
    if errors:
        if name in netns.listnetns():
            netns.remove(name)
        raise errors[0]
    return path


@dataclass(frozen=True, slots=True)
class ContainerNet:
    container: str
    netns_name: str
    netns_path: Path
    address: ipaddress.IPv4Interface
    host_if: str


def bridge_mac(owner: str) -> str:
    """A fixed, locally administered unicast MAC address for the bridge `owner` makes.

    A bridge created without one takes the lowest MAC of its ports, and changes it as ports join
    and leave. Whoever learned the gateway's MAC before the change (the first container, the
    first device of a fleet) keeps sending to the old one, and its connections can stall until
    its neighbour entry is renewed: in `pvsim validate` a real device took a release 44-56 s late
    (tests/test_bridge_mac.py)."""
    digest = hashlib.sha256(owner.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


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
        # The device side by path when it is the daemon's own netns: pyroute2 opens a netlink
        # socket per thread, in the netns the thread is in, and containers are wired from threads
        # that have entered the container's netns (a plain IPRoute() there would add the bridge
        # port inside the container: EOPNOTSUPP).
        self._device_ns = self.device_netns or f"/proc/{os.getpid()}/ns/net"
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
                self._sock = NetNS(self._device_ns)
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
            create_netns(self.device_netns)
        with self._device() as ns:
            if not ns.link_lookup(ifname=self.bridge):
                ns.link("add", ifname=self.bridge, kind="bridge", address=bridge_mac(self.prefix))
            index = ns.link_lookup(ifname=self.bridge)[0]
            self._bridge_index = index
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
        step = ["creating the netns"]  # what was being done, for the error

        def wire(inside: Any) -> None:
            """Runs in a thread that lives in the new netns; `inside` is its netlink socket."""
            # Every netlink lookup costs a few ms, so the bridge index is kept from setup(),
            # a stale veth is only looked for when the add collides, and lo is index 1 in a
            # fresh netns.
            peer = {"ifname": "eth0", "net_ns_fd": name}
            step[0] = f"adding veth {host_if} with its peer eth0 in netns {name}"
            with self._device() as ns:
                try:
                    ns.link("add", ifname=host_if, kind="veth", peer=peer)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    for stale in ns.link_lookup(ifname=host_if):
                        ns.link("del", index=stale)
                    ns.link("add", ifname=host_if, kind="veth", peer=peer)
                step[0] = f"attaching {host_if} to bridge {self.bridge}"
                bridge = self._bridge_index
                if bridge is None:
                    bridge = ns.link_lookup(ifname=self.bridge)[0]
                ns.link("set", index=ns.link_lookup(ifname=host_if)[0], master=bridge, state="up")
            step[0] = f"giving eth0 {address} in netns {name}"
            eth0 = inside.link_lookup(ifname="eth0")[0]
            inside.addr(
                "add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen
            )
            inside.link("set", index=eth0, state="up")
            inside.link("set", index=1, state="up")  # lo
            step[0] = f"adding the default route via {self.pool.gateway.ip} in netns {name}"
            inside.route("add", dst="0.0.0.0/0", gateway=str(self.pool.gateway.ip))

        try:
            create_netns(name, wire)
        except Exception as exc:
            self.pool.release(container)
            if name in netns.listnetns():
                netns.remove(name)
            raise NetworkError(
                f"wiring the container network failed ({step[0]}): {exc}", key=container
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
