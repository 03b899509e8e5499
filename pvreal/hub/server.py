"""Running the Hub: its files beside the database, the listening address, the event loop.

Beside `hub.sqlite` the Hub keeps `hub.sqlite.objects/` (the object store), the two tokens
(`.operator-token`, `.device-token`, 0600, created on first start unless given) and `.url`, the
address it listens on, written once bound, so that `pvreal hub status --db hub.sqlite` finds it
even when the port was chosen by the system (`--listen 127.0.0.1:0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from pvreal.durable import atomic_write
from pvreal.hub import auth, db
from pvreal.hub.api import make_app
from pvreal.hub.objects import ObjectStore
from pvreal.hub.service import Hub

# how long a stopping Hub (Ctrl-C) waits for the requests under way (aiohttp's default: 60 s)
SHUTDOWN_TIMEOUT_S = 5.0


def token_for(database: Path, kind: str, given: str | None) -> str:
    """`given`, or the token stored beside the database (created, 0600, on first start)."""
    return given or auth.load_or_create_token(database, kind)


@dataclass
class HubFiles:
    database: Path
    operator_token: str
    device_token: str

    @classmethod
    def prepare(cls, database: str | Path, operator_token: str | None = None,
                device_token: str | None = None) -> HubFiles:  # fmt: skip
        database = Path(database)
        return cls(database, token_for(database, "operator", operator_token),
                   token_for(database, "device", device_token))  # fmt: skip

    def open_hub(self, clock: Callable[[], float] | None = None) -> Hub:
        conn = db.connect(self.database)
        objects = ObjectStore(auth.beside(self.database, "objects"))
        if clock is None:
            return Hub(conn, objects, device_token=self.device_token)
        return Hub(conn, objects, device_token=self.device_token, clock=clock)


async def start(files: HubFiles, host: str, port: int, clock: Callable[[], float] | None = None
                ) -> tuple[web.AppRunner, str]:  # fmt: skip
    """Bind and serve; returns the runner (to clean up) and the URL the Hub answers on."""
    runner = web.AppRunner(make_app(files.open_hub(clock), files.operator_token), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
    atomic_write(auth.beside(files.database, "url"), (url + "\n").encode())
    return runner, url


def serve_forever(files: HubFiles, host: str, port: int, announce: Callable[[str], None]) -> None:
    async def main() -> None:
        runner, url = await start(files, host, port)
        announce(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def running(files: HubFiles, host: str = "127.0.0.1", port: int = 0,
            clock: Callable[[], float] | None = None) -> Iterator[str]:  # fmt: skip
    """A Hub in a background thread for as long as the block runs (tests, tools); yields its URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="pvtwin-hub", daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(start(files, host, port, clock), loop).result(30)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
