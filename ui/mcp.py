"""MCP that agents can use: images in, URLs and JSON out, one visitor per MCP session, and a login behind `--auth`.

Gradio (6.31) serves every endpoint as an MCP tool, but as shipped:
- a Gallery input's schema points at `#/$defs/GalleryImage`, which the tool-call validator cannot resolve, so no
  tool that takes images can be called with one;
- every tool call reaches the queue through one internal client: all agents are one visitor (one allowance, one
  cache scope), and a caller that hangs up keeps its job;
- behind `--auth` the schema and `tools/list` answer without a login, while tool calls fail (the internal client
  has no login).

`install_mcp()` adjusts Gradio's MCP server class once (the names it touches are listed in
`pipelines/private_names.py`), and `door_middleware()` is the ASGI middleware in front of the MCP routes:
- every image input is declared in the tool's schema as a string: a data URL (`data:image/png;base64,...`) or an
  http(s) URL, or a path returned by Gradio's upload route; data URLs are decoded and URLs fetched (public
  addresses only, checked again at every redirect, at most 25 MB) into the upload folder, counted against the
  caller's upload quota, and then go through the same boundary as every other file;
- the MCP server keeps sessions (`Mcp-Session-Id`), and each call's HTTP request is stamped with its session,
  its caller's address and the call itself: the queue gate, the caches and "is anyone still listening" use them;
- results come back as text: URLs for files (the main image also inline), JSON for metadata and scores;
- behind `--auth`, the MCP routes (schema included) and the page's embedded API description need a login (HTTP
  Basic with the app's user and password, or the app's login cookie); the internal client is let in.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from gradio.utils import get_upload_folder
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipelines.parameters import MAX_FILES_PER_REQUEST, PARAMETERS, SETTINGS_FILE_INPUT, file_limit

from .egress import resolve_public
from .serving import (
    GATE,
    INTERNAL_HEADER,
    MAX_BYTES_PER_REQUEST,
    MCP_HEADER,
    PROCESS_SECRET,
    McpCaller,
    client_ip,
    logged_in_user,
    mcp_caller,
)
from .stop import JOBS
from .uploads import UPLOADS, UploadRefused

log = logging.getLogger("image_prompt_studio")

MAX_FETCH_BYTES = 25 * 2**20  # one image given by data URL or URL (the same cap as an upload)
FETCH_TIMEOUT_S = 20.0
MAX_REDIRECTS = 5
# A tool call's JSON: at most a request's files (64 MB) as base64, and 1 MB for everything else.
MAX_MCP_BODY_BYTES = MAX_BYTES_PER_REQUEST * 4 // 3 + 2**20
MAX_MCP_SESSIONS = 1000  # open MCP sessions in all (mcp's own default, 10 000, lets one address take them all)
MAX_MCP_SESSIONS_PER_IP = 32  # open MCP sessions one address may hold
MCP_FIRST_CALL_S = 120.0  # a session that has called no tool this long after it opened is closed
MCP_IDLE_S = 15 * 60.0  # a session with no request in flight this long is closed (mcp's default: 30 minutes)
MAX_MCP_CALLS_PER_IP = 8  # MCP requests in flight from one address (the queue's per-address allowance)
MCP_PATH = "/gradio_api/mcp"
SINGLE_FILES = ("image", SETTINGS_FILE_INPUT)  # one file each: the image to score, a settings file
GALLERIES = tuple(p.name for p in PARAMETERS if p.kind == "images" and p.name not in SINGLE_FILES)
SUFFIXES = {  # what a data URL or a download may be, and the name it gets (Gradio checks inputs by extension)
    "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp",
    "image/tiff": ".tiff", "image/avif": ".avif", "image/x-icon": ".ico", "image/vnd.microsoft.icon": ".ico",
    "application/json": ".json",
}  # fmt: skip
IMAGE_STRING = (
    "An image: a data URL (data:image/png;base64,...), an http(s) URL of a public image, or a path returned by this "
    "app's upload route."
)


class McpInputError(Exception):
    """A tool argument the app cannot take: the message says what to send instead."""


# ------------------------------------------------------------------------------------------------ the patches


def install_mcp() -> None:
    """Adjust Gradio's MCP server class (once; harmless when MCP is off)."""
    from gradio import mcp

    server_class = mcp.GradioMCPServer
    if getattr(server_class, "_studio_installed", False):
        return
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    class StudioSessions(StreamableHTTPSessionManager):
        """mcp's session manager, telling `SESSIONS` which address opened each session and when it ends."""

        def _admit_session(self, requestor: Any) -> Any:
            transport = super()._admit_session(requestor)
            if transport is not None:
                SESSIONS.opened(transport.mcp_session_id, _OPENER.get(), self)
            return transport

        async def _discard_session(self, session_id: str, transport: Any) -> None:
            SESSIONS.closed(session_id)
            await super()._discard_session(session_id, transport)

    def sessions(app: Any, json_response: bool = False, stateless: bool = True) -> StreamableHTTPSessionManager:
        # Stateful: each MCP session has an id its client sends with every call, so each is its own visitor.
        return StudioSessions(
            app=app, json_response=json_response, stateless=False, max_request_body_size=MAX_MCP_BODY_BYTES,
            session_idle_timeout=MCP_IDLE_S, max_sessions=MAX_MCP_SESSIONS,
        )  # fmt: skip

    server_class.StreamableHTTPSessionManager = staticmethod(sessions)
    create_server = server_class.create_mcp_server
    input_schema = server_class.get_input_schema
    prepare = server_class._prepare_tool_call_args

    def create_mcp_server(self: Any) -> Any:
        server = create_server(self)
        _wrap_tool_calls(self, server)
        return server

    def get_input_schema(self: Any, tool_name: str, parameters: dict[str, str] | None = None) -> tuple[dict, list]:
        schema, _ = input_schema(self, tool_name, parameters)
        for name, prop in schema["properties"].items():
            if name in GALLERIES or name in SINGLE_FILES:
                schema["properties"][name] = _file_schema(name, prop.get("description"))
            elif name == "slots":  # a gr.JSON input: Gradio describes it with "type": {}, which no validator takes
                schema["properties"][name] = _slots_schema(prop.get("description"))
        return schema, []  # no position for Gradio's own string-to-file conversion: `_as_file_data` does it

    def prepare_tool_call_args(self: Any, name: str, arguments: dict[str, Any]) -> tuple:
        return prepare(self, name, _as_file_data(arguments))

    server_class.create_mcp_server = create_mcp_server
    server_class.get_input_schema = get_input_schema
    server_class._prepare_tool_call_args = prepare_tool_call_args
    server_class.postprocess_output_data = _results_as_text
    mcp.Client = _InternalClient
    server_class._studio_installed = True
    logging.getLogger("mcp").setLevel(logging.WARNING)  # one INFO line per request otherwise
    logging.getLogger("mcp.server.streamable_http").addFilter(_client_went_away)


def _client_went_away(record: logging.LogRecord) -> bool:
    """Drop mcp's traceback when a client closes its event stream (mcp 1.30 logs that normal end as an error)."""
    import anyio

    error = record.exc_info[1] if record.exc_info else None
    return not (
        record.getMessage() == "Error in standalone SSE writer" and isinstance(error, anyio.ClosedResourceError)
    )


def _internal_client_class() -> type:
    from gradio_client import Client

    class InternalClient(Client):
        """Gradio's internal MCP client, carrying this process's secret: the door lets it in behind `--auth`."""

        def __init__(self, *args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, headers={**(headers or {}), INTERNAL_HEADER: PROCESS_SECRET}, **kwargs)

    return InternalClient


_InternalClient = _internal_client_class()


def _file_schema(name: str, description: str | None) -> dict[str, Any]:
    image = {"type": "string", "description": IMAGE_STRING}
    if name == SETTINGS_FILE_INPUT:
        image = {"type": "string", "description": IMAGE_STRING.replace("An image", "A PNG made here or a .json")}
    if name in SINGLE_FILES:
        return {**image, "description": f"{description or ''} {image['description']}".strip()}
    return {
        "type": "array",
        "maxItems": file_limit(name),
        "items": {"type": "object", "properties": {"image": image}, "required": ["image"]},
        "description": f"{description or ''} Each item is {{'image': <data URL or http(s) URL>}}.".strip(),
        "default": [],
    }


def _slots_schema(description: str | None) -> dict[str, Any]:
    from pipelines.parameters import MAX_SLOTS, SLOT_KEYS

    kinds = {"text": "string", "number": "number", "integer": "integer"}
    keys = {k.name: {"type": kinds[k.kind], "description": k.doc} for k in SLOT_KEYS}
    item = {"type": "object", "properties": keys, "required": ["mode"], "additionalProperties": False}
    return {"type": "array", "maxItems": MAX_SLOTS, "items": item, "default": [], "description": description or ""}


def _as_file_data(arguments: dict[str, Any]) -> dict[str, Any]:
    """Path strings at the file inputs as Gradio file values without its `meta` marker: the boundary vets them."""
    out = dict(arguments)
    for name in GALLERIES:
        if isinstance(out.get(name), list):
            out[name] = [
                {**item, "image": {"path": item["image"]}}
                if isinstance(item, dict) and isinstance(item.get("image"), str)
                else item
                for item in out[name]
            ]
    for name in SINGLE_FILES:
        if isinstance(out.get(name), str):
            out[name] = {"path": out[name]}
    return out


def _wrap_tool_calls(gradio_server: Any, server: Any) -> None:
    """Before Gradio's tool call: refuse a caller over its allowance with the reason, and turn data URLs and URLs
    into files in the upload folder (asynchronously: a download never blocks the server)."""
    from mcp import types

    call_tool = server.request_handlers[types.CallToolRequest]

    async def studio_call_tool(req: types.CallToolRequest) -> types.ServerResult:
        request = server.request_context.request
        caller = mcp_caller(request)
        if caller is not None:
            SESSIONS.called(caller.session)
        try:
            refusal = GATE.refusal_for(request)
            if refusal is not None:
                raise McpInputError(refusal)
            arguments = await _materialize(dict(req.params.arguments or {}), caller)
        except McpInputError as e:
            log.info("MCP call refused: %s", str(e)[:200])
            return server._make_error_result(str(e))
        finally:
            if caller is not None:
                SESSIONS.decoded(caller.call)
        params = req.params.model_copy(update={"arguments": arguments})
        return await _stoppable(call_tool(req.model_copy(update={"params": params})), caller)

    server.request_handlers[types.CallToolRequest] = studio_call_tool


# ------------------------------------------------------------------------------------------- images as text


async def _stoppable(call: Any, caller: McpCaller | None) -> Any:
    """Run a tool call; when the client cancels it (`notifications/cancelled`: mcp cancels the call's scope), its
    job stops at its next step. Gradio waits for the job in a worker thread, which a cancellation cannot reach, so a
    watcher beside it, in the same scope, is what notices."""
    import anyio

    answered = False

    async def watch() -> None:
        try:
            await anyio.sleep_forever()
        finally:  # cancelled with the call, or because it ended
            if not answered and caller is not None:
                JOBS.stop(f"mcp-call:{caller.call}")

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result = await call
            answered = True
        finally:
            group.cancel_scope.cancel()
    # A cancelled call was answered already (mcp sent the client its error): this checkpoint raises the
    # cancellation, so mcp does not answer it a second time (which crashed the session: "Request already responded").
    await anyio.lowlevel.checkpoint()
    return result


def _file_places(arguments: dict[str, Any]) -> list[tuple[dict[str, Any], str, str, str]]:
    """Where each image string given at a file input sits: (its holder, the key in it, the input's name, its label
    in messages), in order."""
    places = []
    for name in GALLERIES:
        items = arguments.get(name)
        if isinstance(items, list):
            places += [(item, "image", name, f"{name} {i}") for i, item in enumerate(items, 1)
                       if isinstance(item, dict) and isinstance(item.get("image"), str)]  # fmt: skip
    places += [(arguments, name, name, name) for name in SINGLE_FILES if isinstance(arguments.get(name), str)]
    return places


def _check_sizes(arguments: dict[str, Any]) -> None:
    """The request's file caps, counted from the strings before any of them is decoded or fetched."""
    given = [(name, holder[key]) for holder, key, name, _ in _file_places(arguments)]
    for name in {n for n, _ in given}:
        count, limit = sum(n == name for n, _ in given), file_limit(name) or MAX_FILES_PER_REQUEST
        if count > limit:
            raise McpInputError(f"At most {limit} files for {name}, got {count}.")
    if len(given) > MAX_FILES_PER_REQUEST:
        raise McpInputError(f"At most {MAX_FILES_PER_REQUEST} files per request, got {len(given)}.")
    decoded = sum(len(v.partition(",")[2]) * 3 // 4 for _, v in given if v.startswith("data:"))
    if decoded > MAX_BYTES_PER_REQUEST:
        raise McpInputError(
            f"The files of one request may add up to {MAX_BYTES_PER_REQUEST // 2**20} MB at most; these data URLs "
            f"hold about {decoded / 2**20:.0f} MB."
        )


async def _materialize(arguments: dict[str, Any], caller: McpCaller | None) -> dict[str, Any]:
    """Data URLs and URLs at the file inputs, saved into the upload folder; their paths in their place (after the
    request's caps are checked on the strings themselves)."""
    visitor = caller.ip if caller is not None else "unknown"
    _check_sizes(arguments)
    for holder, key, _, label in _file_places(arguments):
        holder[key] = await _to_upload(holder[key], label, visitor)
    return arguments


async def _to_upload(value: str, label: str, visitor: str) -> str:
    if value.startswith("data:"):
        mime, data = _decode_data_url(value, label)
    elif value.lower().startswith(("http://", "https://")):
        mime, data = await fetch(value, label)
    else:
        return value  # a path: the boundary checks it is an upload
    try:
        UPLOADS.make_room(visitor, len(data))
    except UploadRefused as e:
        raise McpInputError(str(e)) from None
    folder = Path(get_upload_folder()) / f"mcp-{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label.replace(' ', '-')}{SUFFIXES[mime]}"
    path.write_bytes(data)
    UPLOADS.record(visitor, [str(path)], len(data))
    return str(path)


def _decode_data_url(value: str, label: str) -> tuple[str, bytes]:
    head, _, payload = value.partition(",")
    mime = head.removeprefix("data:").split(";")[0].strip().lower()
    if mime not in SUFFIXES or ";base64" not in head.lower():
        raise McpInputError(
            f"{label}: a data URL must be base64 with an image type (data:image/png;base64,...); got {head[:60]!r}."
        )
    if len(payload) > MAX_FETCH_BYTES * 4 // 3 + 4:
        raise McpInputError(f"{label} is over {MAX_FETCH_BYTES // 2**20} MB. Send a smaller image.")
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise McpInputError(f"{label}: the data URL is not valid base64.") from None


async def fetch(url: str, label: str, validate: Callable[[str], Any] | None = None) -> tuple[str, bytes]:
    """Download an image from a public address: every hop's host must resolve to public IPs only (connected to by
    that IP, so DNS cannot change its answer between check and use; `ui.egress.resolve_public`), at most
    `MAX_REDIRECTS` hops and `MAX_FETCH_BYTES`, an image type. One message per failure, no traceback."""
    import safehttpx

    validate = validate or resolve_public
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                parsed = httpx.URL(url)
            except (httpx.InvalidURL, ValueError, TypeError):
                raise McpInputError(f"{label}: {url[:80]!r} is not a valid http(s) URL.") from None
            host = parsed.host
            if parsed.scheme not in ("http", "https") or not host:
                raise McpInputError(f"{label}: {url[:80]!r} is not a valid http(s) URL.")
            try:
                ip = await validate(host)
            except ValueError:
                raise McpInputError(
                    f"{label}: {host or url!r} is not a public address; the app fetches public images only."
                ) from None
            transport = safehttpx.AsyncSecureTransport(ip)
            async with (
                httpx.AsyncClient(transport=transport, timeout=FETCH_TIMEOUT_S, trust_env=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.is_redirect and "location" in response.headers:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise McpInputError(f"{label}: the URL answered HTTP {response.status_code}.")
                mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if mime not in SUFFIXES:
                    raise McpInputError(f"{label}: the URL is not an image (content type {mime or 'unknown'!r}).")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_FETCH_BYTES:
                        raise McpInputError(f"{label}: the image is over {MAX_FETCH_BYTES // 2**20} MB.")
                return mime, bytes(body)
        raise McpInputError(f"{label}: more than {MAX_REDIRECTS} redirects.")
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as e:
        raise McpInputError(f"{label}: the URL could not be fetched ({type(e).__name__}).") from None


def _results_as_text(self: Any, data: Any, root_url: str) -> list[Any]:
    """A tool's outputs for an agent: files as URLs it can fetch (the first image also inline, as its own PNG bytes,
    not re-encoded), metadata and scores as JSON, the rest as text."""
    from gradio import processing_utils
    from gradio_client import utils as client_utils
    from mcp import types

    if len(data) == 1 and isinstance(data[0], tuple):  # the queued path hands over (outputs...) as one item
        data = list(data[0])
    content: list[Any] = []
    shown_inline = False
    for output in processing_utils.add_root_url(data, root_url, None):
        if client_utils.is_file_obj_with_meta(output):
            url = output.get("url") or output["path"]
            path = Path(output["path"])
            if not shown_inline and path.suffix.lower() == ".png" and path.is_file():
                content.append(types.ImageContent(type="image", data=base64.b64encode(path.read_bytes()).decode(),
                                                  mimeType="image/png"))  # fmt: skip
                shown_inline = True
            content.append(types.TextContent(type="text", text=f"File: {url}"))
        elif isinstance(output, list) and output and all(isinstance(i, dict) and "image" in i for i in output):
            files = [{"url": i["image"].get("url") or i["image"].get("path"), "caption": i.get("caption")}
                     for i in output]  # fmt: skip
            content.append(types.TextContent(type="text", text=json.dumps({"images": files}, ensure_ascii=False)))
        elif isinstance(output, (dict, list)):
            content.append(types.TextContent(type="text", text=json.dumps(output, ensure_ascii=False)))
        else:
            content.append(types.TextContent(type="text", text=str(output)))
    return content


# --------------------------------------------------------------------------------------------------- the door


def door_middleware() -> Any:
    """A Starlette `Middleware` entry for `launch(app_kwargs={"middleware": [...]})`."""
    from starlette.middleware import Middleware

    return Middleware(_Door)


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)


class _Door:
    """Pure ASGI middleware: logins and caller stamps for the MCP routes, the internal client's way in, and no API
    description in the login page."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gradio_app = scope.get("app")
        auth_on = getattr(gradio_app, "auth", None) is not None
        headers = dict(scope.get("headers") or [])
        internal = _is_internal(scope, headers)
        path = scope["path"]
        if MCP_PATH in path:
            user = await logged_in_user(gradio_app, scope, headers) if auth_on else "anyone"
            if user is None:
                message = (
                    "This app asks for a login. Send the app's user and password as HTTP Basic auth "
                    "(Authorization: Basic base64(user:password)), or its login cookie."
                )
                return await JSONResponse({"error": message}, status_code=401)(scope, receive, send)
            return await self._mcp(scope, receive, send, headers)
        if auth_on and internal:
            _log_in_internal(gradio_app, scope)
            return await self.app(scope, receive, send)
        anonymous = auth_on and await logged_in_user(gradio_app, scope, headers, basic=False) is None
        if scope["method"] == "GET" and anonymous:
            return await self.app(scope, receive, _without_api_info(send))
        return await self.app(scope, receive, send)

    async def _mcp(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any], headers: dict) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = headers.get(b"mcp-session-id", b"").decode("latin-1") or (query.get("session_id") or [""])[0]
        session = given or f"call-{uuid.uuid4().hex}"  # no session yet (its first request): a visitor of its own
        streamable = "/messages" not in scope["path"]  # SSE answers on another request: judged like REST jobs
        call = f"{'http' if streamable else 'sse'}:{uuid.uuid4().hex}"
        ip = client_ip(Request(scope)) or "unknown"
        opening = SESSIONS.opening(scope, given)
        refusal = await SESSIONS.admit(scope, ip, opening, call, headers)
        if refusal is not None:
            log.info("MCP request refused: %s", refusal)
            return await JSONResponse({"error": refusal}, status_code=429)(scope, receive, send)
        caller = McpCaller(session.replace("|", ""), ip, call)
        stamped = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != MCP_HEADER.encode()]
        stamped.append((MCP_HEADER.encode(), caller.header().encode("latin-1")))
        scope = {**scope, "headers": stamped}
        GATE.call_opened(call)
        opener = _OPENER.set(ip)  # read by the session manager when this request opens a session
        try:
            return await self.app(scope, receive, send)
        finally:
            _OPENER.reset(opener)
            GATE.call_closed(call)
            SESSIONS.ended(scope, ip, opening, call)


class McpSessions:
    """Bounds on what one address holds of the MCP server: open sessions (Streamable HTTP sessions and SSE streams),
    requests in flight, and bytes of tool-call bodies being received and decoded.

    mcp's session manager bounds only the total (and closes a session after `MCP_IDLE_S` without requests): one
    address could open them all. Here an address holds at most `per_ip` sessions; a session that has called no tool
    `first_call_s` after it opened is closed when the next one is asked for (its id then answers 404, and its client
    opens a new one, as the MCP specification says). A tool call's body counts against its address's budget
    (`MAX_MCP_BODY_BYTES`) until its images are decoded into files.
    """

    def __init__(self) -> None:
        self.per_ip = MAX_MCP_SESSIONS_PER_IP
        self.first_call_s = MCP_FIRST_CALL_S
        self.calls_per_ip = MAX_MCP_CALLS_PER_IP
        self.body_budget = MAX_MCP_BODY_BYTES
        self.counters: Counter[str] = Counter()  # refused_sessions, refused_calls, refused_bodies, closed_unused
        self._sessions: dict[str, tuple[str, float, Any]] = {}  # session id -> (address, opened at, its manager)
        self._called: set[str] = set()  # sessions that have called a tool
        self._streams: Counter[str] = Counter()  # address -> open SSE-transport streams (a session each)
        self._posts: Counter[str] = Counter()  # address -> POST requests in flight
        self._bodies: dict[str, tuple[str, int]] = {}  # call -> (address, body bytes not yet decoded)

    @staticmethod
    def opening(scope: dict, given_session: str) -> str | None:
        """ "streamable" for a request that opens a Streamable HTTP session, "sse" for an SSE stream, else None."""
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path.endswith("/sse"):
            return "sse"
        if scope["method"] == "POST" and not given_session and "/messages" not in path and not path.endswith("/sse"):
            return "streamable"
        return None

    def held(self, ip: str) -> int:
        """Sessions `ip` holds open now."""
        return sum(owner == ip for owner, _, _ in self._sessions.values()) + self._streams[ip]

    async def close_unused(self) -> None:
        """Close the sessions that called no tool within `first_call_s` of opening."""
        now = time.monotonic()
        for session, (_, opened, manager) in list(self._sessions.items()):
            if session in self._called or now - opened <= self.first_call_s:
                continue
            self.closed(session)
            self.counters["closed_unused"] += 1
            transport = manager._server_instances.get(session)
            if transport is not None:
                await manager._discard_session(session, transport)

    async def admit(self, scope: dict, ip: str, opening: str | None, call: str, headers: dict) -> str | None:
        """Why this MCP request is refused (None: it is let in, and counted)."""
        if opening is not None:
            await self.close_unused()
            if self.held(ip) >= self.per_ip:
                self.counters["refused_sessions"] += 1
                return (
                    f"This address already has {self.per_ip} MCP sessions open. Close one (DELETE) or reuse it; "
                    f"a session that calls no tool closes {self.first_call_s:.0f} s after it opened."
                )
        if scope["method"] == "POST":
            if self._posts[ip] >= self.calls_per_ip:
                self.counters["refused_calls"] += 1
                return f"This address already has {self.calls_per_ip} MCP requests in flight. Wait for one to finish."
            length = headers.get(b"content-length", b"").decode("latin-1")
            size = int(length) if length.isdigit() else self.body_budget  # chunked: as if it were the largest
            pending = sum(n for owner, n in self._bodies.values() if owner == ip)
            if pending and pending + size > self.body_budget:
                self.counters["refused_bodies"] += 1
                return (
                    f"This address is already sending {pending / 2**20:.0f} MB of images to the MCP tools; wait "
                    "until they are read, then send this call."
                )
            self._posts[ip] += 1
            self._bodies[call] = (ip, size)
        if opening == "sse":
            self._streams[ip] += 1
        return None

    def opened(self, session: str, ip: str, manager: Any) -> None:
        self._sessions[session] = (ip, time.monotonic(), manager)

    def closed(self, session: str) -> None:
        self._sessions.pop(session, None)
        self._called.discard(session)

    def called(self, session: str) -> None:
        self._called.add(session)

    def decoded(self, call: str) -> None:
        """A tool call's images are files now: its body no longer counts."""
        self._bodies.pop(call, None)

    def ended(self, scope: dict, ip: str, opening: str | None, call: str) -> None:
        if scope["method"] == "POST":
            self._posts[ip] -= 1
            if self._posts[ip] <= 0:
                del self._posts[ip]
            self._bodies.pop(call, None)
        if opening == "sse":
            self._streams[ip] -= 1
            if self._streams[ip] <= 0:
                del self._streams[ip]


SESSIONS = McpSessions()  # one per server process: an address's sessions on every MCP server it runs
_OPENER: ContextVar[str] = ContextVar("mcp_opener", default="unknown")  # the address of the request being served


def _is_internal(scope: dict, headers: dict) -> bool:
    """The internal MCP client (or a call it makes for an MCP caller), from this machine, with this process's secret."""
    host = (scope.get("client") or ("",))[0]
    if host not in ("127.0.0.1", "::1", "localhost"):
        return False
    secret = headers.get(INTERNAL_HEADER.encode(), b"").decode("latin-1")
    if secret and secrets.compare_digest(secret, PROCESS_SECRET):
        return True
    return mcp_caller(Request(scope)) is not None


def _log_in_internal(gradio_app: Any, scope: dict) -> None:
    """The internal client acts for MCP callers the door has let in: it gets the app's login cookie."""
    token = getattr(gradio_app, "_studio_internal_token", None)
    if token is None:
        token = gradio_app._studio_internal_token = f"mcp-{uuid.uuid4().hex}"
        gradio_app.tokens[token] = "mcp"
    cookie = f"access-token-{gradio_app.cookie_id}={token}".encode("latin-1")
    scope["headers"] = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"cookie"]
    scope["headers"].append((b"cookie", cookie))


def _without_api_info(send: Callable[..., Any]) -> Callable[..., Any]:
    """Gradio's page embeds the whole API description even in its login page: an HTML answer drops it."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def filtered(message: dict) -> None:
        if message["type"] == "http.response.start":
            types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
            if not types or not types[0].startswith(b"text/html"):
                start["passthrough"] = True
                return await send(message)
            start["message"] = message
            return None
        if start.get("passthrough"):
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        body = _API_INFO.sub(b"window.gradio_api_info = {};</script>", b"".join(chunks))
        head = start["message"]
        head["headers"] = [(k, v) for k, v in head["headers"] if k.lower() != b"content-length"]
        head["headers"].append((b"content-length", str(len(body)).encode()))
        await send(head)
        await send({"type": "http.response.body", "body": body})

    return filtered
