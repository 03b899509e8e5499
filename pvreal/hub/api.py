"""The Hub's HTTP API on aiohttp: routes, credentials, body limits, JSON errors.

Handlers decode, authenticate and hand over to `Hub` (service.py); every refusal is a JSON body
`{"Error": "..."}` with a 4xx status, as pv-ctrl answers. Device routes follow Pantahub's paths
(docs/hub.md lists them with their sources); operator routes live under /operator/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pvreal.hub import auth
from pvreal.hub.dashboard import PAGE
from pvreal.hub.objects import BadObject
from pvreal.hub.service import Hub, HubError
from shared import canonical
from shared.engine.ctrl import MAX_STATE_BYTES
from shared.engine.progress import Status
from shared.errors import PvError

HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
OPERATOR_TOKEN: web.AppKey[str] = web.AppKey("operator_token", str)
MAX_SMALL_BODY = 64 << 10  # registration, login, metadata, progress
MAX_RELEASE_BODY = MAX_STATE_BYTES + (64 << 10)  # a state plus the release's few fields
MAX_OBJECT_BYTES = 4 << 30
AUTO_TOKEN_HEADER = "Pantahub-Devices-Auto-Token-V1"  # Pantahub's header for a fleet's token
TICK_S = 0.5  # how often the Hub wakes rollouts whose controller asked for a later look

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"Error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Client mistakes become JSON 4xx answers, including aiohttp's own (404, 405, 413)."""
    try:
        return await handler(request)
    except HubError as exc:
        return error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)


async def read_json(request: web.Request, limit: int = MAX_SMALL_BODY) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise HubError(413, f"body of {request.content_length} B is larger than the {limit} B limit")
    body = await request.read()
    if len(body) > limit:
        raise HubError(413, f"body is larger than the {limit} B limit")
    try:
        return canonical.loads(body, source=f"{request.method} {request.path}")
    except PvError as exc:
        raise HubError(400, str(exc)) from None


def _hub(request: web.Request) -> Hub:
    return request.app[HUB]


def device_of(request: web.Request) -> str:
    """The authenticated device; 401 without a valid session, 403 on another device's path."""
    hub = _hub(request)
    device = hub.authenticate(auth.bearer(request.headers.get("Authorization")))
    asked = request.match_info.get("id")
    if asked is not None:
        hub.own(device, asked)
    return device


def operator(request: web.Request) -> Hub:
    if not auth.same_token(auth.bearer(request.headers.get("Authorization")), request.app[OPERATOR_TOKEN]):
        raise HubError(401, "operator routes need Authorization: Bearer <operator token>")
    return _hub(request)


routes = web.RouteTableDef()


# ---------------------------------------------------------------------- devices


@routes.post("/devices/")
async def register(request: web.Request) -> web.Response:
    doc = await read_json(request)
    hub = _hub(request)
    return web.json_response(await hub.register(request.headers.get(AUTO_TOKEN_HEADER), doc))


@routes.post("/auth/login")
async def login(request: web.Request) -> web.Response:
    return web.json_response(await _hub(request).login(await read_json(request)))


@routes.get("/devices/{id}")
async def get_device(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).device_info(device_of(request)))


@routes.patch("/devices/{id}/device-meta")
async def patch_meta(request: web.Request) -> web.Response:
    device = device_of(request)
    return web.json_response(_hub(request).put_meta(device, await read_json(request)))


@routes.get("/trails/{id}/steps")
async def get_steps(request: web.Request) -> web.Response:
    statuses = status_filter(request.query.get("progress.status", "NEW"))
    return web.json_response(_hub(request).steps(device_of(request), statuses))


def status_filter(text: str) -> tuple[str, ...] | None:
    """`progress.status` of a steps query: one status, `{"$in": [...]}` as Pantavisor's device
    asks for every pending one (pantahub.c), or `ALL` (None: no filter)."""
    if text == "ALL":
        return None
    if not text.startswith("{"):
        wanted: Any = [text]
    else:
        try:
            wanted = canonical.loads_object(text).get("$in")
        except PvError:
            wanted = None
    known = {s.value for s in Status}
    if not isinstance(wanted, list) or not wanted or not all(w in known for w in wanted):
        raise HubError(400, f"progress.status: expected a status or {{\"$in\": [statuses]}}, got {text[:80]!r}")
    return tuple(wanted)


@routes.get("/trails/{id}/steps/{rev}")
async def get_step(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).step(device_of(request), request.match_info["rev"]))


@routes.get("/trails/{id}/steps/{rev}/objects")
async def get_step_objects(request: web.Request) -> web.Response:
    device = device_of(request)
    return web.json_response(_hub(request).step_objects(device, request.match_info["rev"]))


@routes.get("/trails/{id}/steps/{rev}/state")
async def get_step_state(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).step_state(device_of(request), request.match_info["rev"]))


@routes.get("/trails/{id}/steps/{rev}/objects/{sha}")
async def get_step_object(request: web.Request) -> web.Response:
    device, info = device_of(request), request.match_info
    return web.json_response(_hub(request).step_object(device, info["rev"], info["sha"]))


@routes.get("/trails/{id}/steps/{rev}/objects/{sha}/blob")
async def get_step_blob(request: web.Request) -> web.StreamResponse:
    hub, info = _hub(request), request.match_info
    hub.step_object(device_of(request), info["rev"], info["sha"])
    return _blob(hub, info["sha"])


@routes.put("/trails/{id}/steps/{rev}/progress")
async def put_progress(request: web.Request) -> web.Response:
    device = device_of(request)
    doc = await read_json(request)
    return web.json_response(_hub(request).put_progress(device, request.match_info["rev"], doc))


@routes.get("/objects/{sha}")
async def get_object(request: web.Request) -> web.Response:
    return web.json_response(_hub(request).offered_object(device_of(request), request.match_info["sha"]))


@routes.get("/objects/{sha}/blob")
async def get_blob(request: web.Request) -> web.StreamResponse:
    """The bytes; aiohttp's FileResponse answers Range requests (206), so a cut download resumes."""
    hub = _hub(request)
    sha = request.match_info["sha"]
    hub.offered_object(device_of(request), sha)
    return _blob(hub, sha)


def _blob(hub: Hub, sha: str) -> web.FileResponse:
    return web.FileResponse(hub.objects.path(sha), headers={"Content-Type": "application/octet-stream"})


# ---------------------------------------------------------------------- operator


@routes.put("/operator/objects/{sha}")
async def put_object(request: web.Request) -> web.Response:
    hub = operator(request)
    try:
        writer = hub.objects.writer(request.match_info["sha"], MAX_OBJECT_BYTES)
    except BadObject as exc:
        raise HubError(400, str(exc)) from None
    try:
        async for chunk in request.content.iter_chunked(1 << 20):
            writer.write(chunk)
        size = writer.commit()
    except BadObject as exc:
        writer.abort()
        raise HubError(422, str(exc)) from None
    except BaseException:
        writer.abort()
        raise
    hub.add_object(writer.sha, size)
    return web.json_response({"sha256sum": writer.sha, "size": size})


@routes.post("/operator/releases")
async def post_release(request: web.Request) -> web.Response:
    hub = operator(request)
    return web.json_response(hub.create_release(await read_json(request, MAX_RELEASE_BODY)))


@routes.post("/operator/releases/{name}/{action}")
async def operate(request: web.Request) -> web.Response:
    hub = operator(request)
    return web.json_response(hub.operate(request.match_info["name"], request.match_info["action"]))


@routes.get("/operator/status")
async def status(request: web.Request) -> web.Response:
    return web.json_response(operator(request).status())


@routes.get("/operator/dashboard")
async def dashboard_data(request: web.Request) -> web.Response:
    hub = operator(request)
    return web.json_response({**hub.status(), "adoption": hub.adoption()})


@routes.get("/")
async def dashboard_page(request: web.Request) -> web.Response:
    # the page holds no data: its script reads the operator token from the URL's #fragment
    # (never sent to a server) and polls /operator/dashboard with it
    return web.Response(text=PAGE, content_type="text/html")


# ---------------------------------------------------------------------- the application


async def _ticker(app: web.Application) -> Any:
    async def loop() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            app[HUB].tick_due()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(hub: Hub, operator_token: str) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_RELEASE_BODY)
    app[HUB] = hub
    app[OPERATOR_TOKEN] = operator_token
    app.add_routes(routes)
    app.cleanup_ctx.append(_ticker)
    return app
