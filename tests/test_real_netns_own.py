"""A device whose bridge lives in its own process's netns (`device_netns=None`, PID 1 in QEMU):
containers are wired from threads that enter their netns, yet the bridge ports must be made in
the daemon's. Run in a child process inside a throwaway netns, so the machine's own network is
never touched."""

from __future__ import annotations

import multiprocessing
import secrets
import socket

import pytest
from pyroute2 import NetNS, netns
from realkit import need_root

from pvreal.netns import DeviceNetwork


def _wire_two_containers(outer: str, queue: multiprocessing.Queue) -> None:
    try:
        netns.setns(outer)  # this process's netns is now the throwaway one
        net = DeviceNetwork(f"pvo{secrets.token_hex(2)}", "10.214.0.0/24", device_netns=None)
        net.setup()
        try:
            a, b = net.attach("a"), net.attach("b")
            with NetNS(outer) as ns:
                bridge = ns.link_lookup(ifname=net.bridge)[0]
                ports = {
                    link.get_attr("IFLA_IFNAME")
                    for link in ns.get_links()
                    if link.get_attr("IFLA_MASTER") == bridge
                }
            addresses = {}
            for c in (a, b):
                with NetNS(c.netns_name) as inside:
                    eth0 = inside.link_lookup(ifname="eth0")
                    addresses[c.container] = [
                        x.get_attr("IFA_ADDRESS") for x in inside.get_addr(family=socket.AF_INET, index=eth0[0])
                    ]
            queue.put(
                (
                    "ok",
                    sorted(ports),
                    sorted([a.host_if, b.host_if]),
                    addresses,
                    [str(a.address.ip), str(b.address.ip)],
                )
            )
        finally:
            net.teardown()
    except Exception as exc:  # reported to the test, which fails with it
        queue.put(("error", repr(exc)))


def test_containers_wired_from_threads_join_the_daemons_bridge():
    need_root()
    outer = f"pvtown{secrets.token_hex(3)}"
    netns.create(outer)
    try:
        queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(
            target=_wire_two_containers, args=(outer, queue)
        )
        child.start()
        child.join(60)
        assert child.exitcode == 0
        result = queue.get(timeout=5)
        assert result[0] == "ok", result
        _, ports, host_ifs, addresses, ips = result
        assert ports == host_ifs  # both veths are ports of the bridge in the daemon's netns
        assert addresses == {"a": [ips[0]], "b": [ips[1]]}
    finally:
        netns.remove(outer)
    assert outer not in netns.listnetns()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
