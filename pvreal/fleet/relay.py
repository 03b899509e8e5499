"""The Hub relay: the one door from the fleet's namespaces to the Hub.

The Hub keeps listening on loopback in the root namespace (no `--allow-remote`, nothing on an
external interface). This process opens its listening socket inside the fleet netns, on the
bridge's gateway address, and opens every upstream connection from the root namespace: a socket
stays in the namespace it was created in, so one process bridges the two without a route, a veth
or forwarding between them. Only TCP to the one Hub address crosses.

It also shapes a device's traffic when the kernel has no netem (see net.py): every chunk it
forwards for that device (by source address) waits `delay_ms`, and with probability `loss_pct`
it also waits a TCP retransmission timeout (200 ms, doubling while the draw repeats), which is
how loss looks to a TCP connection. The table is `shaping.json` beside fleet.json, re-read when
it changes.

    python -m pvreal.fleet.relay NETNS LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT SHAPING
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
from pathlib import Path
from typing import Any

from pvreal.fleet.net import in_netns

CHUNK = 65536
RTO_S = 0.2


class Shaping:
    """Per source address: (delay_ms, loss_pct), re-read from its file when that changes."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime = -1.0
        self._table: dict[str, tuple[float, float]] = {}
        self._rng = random.Random()

    def of(self, address: str) -> tuple[float, float]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
            self._table = {}
        if mtime != self._mtime:
            self._mtime = mtime
            if mtime:
                doc = json.loads(self.path.read_text())
                self._table = {a: (float(v["delay_ms"]), float(v["loss_pct"])) for a, v in doc.items()}
        return self._table.get(address, (0.0, 0.0))

    def wait_s(self, address: str) -> float:
        delay_ms, loss_pct = self.of(address)
        wait, rto = delay_ms / 1000, RTO_S
        while loss_pct and self._rng.random() * 100 < loss_pct and rto < 60:
            wait += rto
            rto *= 2
        return wait


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                shaping: Shaping, device: str) -> None:  # fmt: skip
    try:
        while data := await reader.read(CHUNK):
            wait = shaping.wait_s(device)
            if wait:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listener: socket.socket, upstream: tuple[str, int], shaping: Shaping) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device = writer.get_extra_info("peername")[0]
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:  # the Hub is down: the device sees its connection closed
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, shaping, device),
                             _pipe(up_reader, writer, shaping, device))  # fmt: skip

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def listen_in(netns_name: str, host: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        return socket.create_server((host, port), backlog=256)

    return in_netns(netns_name, make)


def main(argv: list[str]) -> int:
    netns_name, host, port, up_host, up_port, shaping = argv
    listener = listen_in(netns_name, host, int(port))
    print(f"relay: {host}:{port} in netns {netns_name} -> {up_host}:{up_port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listener, (up_host, int(up_port)), Shaping(Path(shaping))))
    return 0


def write_shaping(path: Path, table: dict[str, dict[str, Any]]) -> None:
    from pvreal.durable import atomic_write

    atomic_write(path, json.dumps(table, sort_keys=True).encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
