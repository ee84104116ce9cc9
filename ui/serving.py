"""Serving strangers safely: the one boundary every endpoint goes through, a fair queue, and bounded files.

- `boundary` wraps every endpoint: file inputs must be files Gradio received (inside its upload folder, regular,
  not linked), a request carries a bounded number and size of files, a job whose client went away is dropped
  before it runs, and errors become messages with any markup escaped.
- `ClientGate` limits how many jobs one client (browser session, and IP address) holds in the queue at once, and
  tracks which clients are still listening for their results.
- `OutputStore` is the folder results are written to before Gradio serves them: bounded in age and count, removed
  at exit.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import functools
import html
import inspect
import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.requests import Request

from pipelines.errors import ImagePromptError, InvalidRequestError
from pipelines.images import decode_cache
from pipelines.parameters import MAX_FILES_PER_REQUEST, file_limit, max_files

from .stop import JOBS

log = logging.getLogger("image_prompt_studio")

MAX_BYTES_PER_REQUEST = 64 * 2**20  # all files of one request together (each is also capped at upload: 25 MB)
MAX_JOBS_PER_SESSION = 3  # queued or running jobs one browser tab / API client may hold at once
MAX_JOBS_PER_IP = 8  # the same for one address (several tabs, or people behind one NAT)
LISTENER_GRACE_S = 2.0  # from its join, a job waits at most this long for its client to open the result stream
# (a browser opens it one round trip after the join; slow links need the margin)
OUTPUT_MAX_AGE_S = 15 * 60  # results are copied into Gradio's cache when returned: our own copy can go soon
OUTPUT_MAX_FILES = 256
GRADIO_CACHE_LIMITS = (600, 3600)  # Gradio's delete_cache: every 10 minutes, files older than an hour


class UploadRefusedError(InvalidRequestError):
    """A file input that is not a file this app received. One message for every case: it reveals nothing."""

    def __init__(self, label: str) -> None:
        super().__init__(
            "reference", f"{label[:1].upper()}{label[1:]} was not uploaded to this app. Upload the file itself."
        )


class ClientGoneError(Exception):
    """The job's client stopped listening before the job started: nobody would see its result."""


def escape(text: str) -> str:
    """Text for Gradio's toasts and error boxes, which render HTML: shown as typed, never as markup."""
    return html.escape(text, quote=False)


def as_code(text: str) -> str:
    """User-derived text inside Markdown: an inline code span shows it literally (no links, images or HTML)."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


# ------------------------------------------------------------------------------------------------------ files


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A `gr.Image` input that hands its endpoint the path as sent, undecoded.

    gr.Image's own preprocessing opens whatever path it is given (a path without Gradio's `meta` marker is not
    checked against the upload folder) and writes any picture that is not plain RGB into a new file in Gradio's
    cache, which would then look uploaded. Here nothing is opened: the path goes to `boundary` like every other
    file input (uploads only, one message whether or not it exists), then to the bounded decoder. (An instance
    attribute, not a subclass: Gradio writes a .pyi stub next to the module of every Component subclass.)
    """
    image = gr.Image(**kwargs)

    def preprocess(payload: Any) -> str | None:
        return None if payload is None else payload.path

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def _paths_in(value: Any) -> list[Any]:
    """A Gallery or File value (paths, (path, caption) pairs, FileData dicts) as a list of raw paths."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    paths = []
    for item in items:
        if isinstance(item, (list, tuple)):
            item = item[0] if item else None
        if isinstance(item, dict):
            item = item.get("path") or (item.get("image") or {}).get("path")
        if item is not None:
            paths.append(item)
    return paths


def uploaded_file(raw: Any, label: str) -> tuple[str, int]:
    """(path, size) of `raw` when it is a regular file inside Gradio's upload folder; else UploadRefusedError."""
    if not isinstance(raw, (str, os.PathLike)):
        raise UploadRefusedError(label)
    text = os.fspath(raw)
    if not text or "\0" in text or not os.path.isabs(text):
        raise UploadRefusedError(label)
    root = os.path.realpath(get_upload_folder())
    resolved = os.path.realpath(text)
    if os.path.commonpath([root, resolved]) != root or resolved == root:
        raise UploadRefusedError(label)
    try:
        info = os.lstat(text)  # the name as given: a symbolic link is refused even when it points inside
    except (OSError, ValueError):
        raise UploadRefusedError(label) from None
    if not stat.S_ISREG(info.st_mode):
        raise UploadRefusedError(label)
    return resolved, info.st_size


class UploadBudget:
    """Counts the files and bytes of one request against its caps (per input, and all inputs together)."""

    def __init__(self, max_files: int = MAX_FILES_PER_REQUEST) -> None:
        self.max_files = max_files  # what the endpoint's inputs may carry (pipelines.parameters.max_files)
        self.files = 0
        self.bytes = 0

    def take(self, value: Any, label: str, name: str = "reference") -> list[str]:
        """The checked paths of input `name`'s value; each is numbered in messages ("reference 2")."""
        raw_paths = _paths_in(value)
        limit = file_limit(name) or MAX_FILES_PER_REQUEST
        if len(raw_paths) > limit:  # counted before any file is looked at
            raise InvalidRequestError(name, f"At most {limit} files for {label}, got {len(raw_paths)}.")
        paths = []
        for i, raw in enumerate(raw_paths, 1):
            path, size = uploaded_file(raw, f"{label} {i}")
            self.files += 1
            self.bytes += size
            if self.files > self.max_files:
                raise InvalidRequestError(name, f"At most {self.max_files} files per request.")
            if self.bytes > MAX_BYTES_PER_REQUEST:
                raise InvalidRequestError(
                    "reference", f"The files of one request may add up to {MAX_BYTES_PER_REQUEST // 2**20} MB at most."
                )
            paths.append(path)
        return paths


# ------------------------------------------------------------------------------------------------------ queue


def client_ip(request: Any) -> str | None:
    """The visitor's address: the peer uvicorn reports (which follows `X-Forwarded-For` only from the proxies
    named in `--forwarded-allow-ips`; none by default). On a Hugging Face Space, the last `X-Forwarded-For` entry:
    the one the platform's proxy appended (earlier entries are whatever the client sent)."""
    headers = getattr(request, "headers", None) or {}
    if os.environ.get("SPACE_ID") and headers.get("x-forwarded-for"):
        return headers["x-forwarded-for"].split(",")[-1].strip()
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


# MCP tool calls reach the queue through Gradio's one internal client (one session, the loopback address). The MCP
# door (ui/mcp.py) stamps each call's HTTP request with who made it: this header, carrying a secret that never
# leaves this process, travels with the call's queue join (Gradio forwards the caller's headers), so the gate and
# the caches can tell MCP sessions apart. A header without the secret is ignored.
MCP_HEADER = "x-studio-mcp"
INTERNAL_HEADER = "x-studio-internal"  # on the internal client's own requests (its config, its result stream)
PROCESS_SECRET = secrets.token_hex(16)


@dataclass(frozen=True)
class McpCaller:
    """Who made an MCP tool call: its MCP session, its address, and this HTTP request (open while it listens)."""

    session: str
    ip: str
    call: str

    def header(self) -> str:
        return "|".join((PROCESS_SECRET, self.session, self.ip, self.call))


def mcp_caller(request: Any) -> McpCaller | None:
    """The MCP caller stamped on `request` by the MCP door, if any (and only with this process's secret)."""
    headers = getattr(request, "headers", None) or {}
    parts = (headers.get(MCP_HEADER) or "").split("|")
    if len(parts) != 4 or not secrets.compare_digest(parts[0], PROCESS_SECRET):
        return None
    return McpCaller(parts[1], parts[2], parts[3])


def visitor(request: Any, session: str | None) -> tuple[str | None, str | None]:
    """(session key, address) a job counts against: an MCP session and its caller's address for MCP calls."""
    caller = mcp_caller(request)
    if caller is not None:
        return f"mcp:{caller.session}", caller.ip
    return session, client_ip(request)


async def logged_in_user(gradio_app: Any, scope: dict, headers: dict, basic: bool = True) -> str | None:
    """The logged-in user: the app's login cookie, or (MCP) HTTP Basic with the app's user and password."""
    cookies = Request(scope).cookies
    cookie_id = getattr(gradio_app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    tokens = getattr(gradio_app, "tokens", {}) or {}
    if token in tokens:
        return tokens[token]
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if not basic or not authorization.lower().startswith("basic "):
        return None
    with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):
        user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
        auth = gradio_app.auth
        if callable(auth):
            ok = auth(user, password)
            ok = await ok if inspect.isawaitable(ok) else ok
        else:
            ok = user in auth and secrets.compare_digest(password.encode(), str(auth[user]).encode())
        return user if ok else None
    return None


class ClientGate:
    """Per-client limits on queued jobs, and which clients are still listening for their results.

    Gradio's queue is first come, first served for everyone; `install` wraps its `push` (Gradio 6.31) so one
    session may hold `per_session` jobs and one address `per_ip` at once, and a flood is refused at the door
    (HTTP 400 with the reason) while others still get in. The ASGI middleware from `middleware()` counts each
    session's open result streams (`/queue/data`), so a job can tell that its client went away (or never
    listened) and is dropped before it runs. (Gradio removes a job whose stream closed only when its stream loop
    next wakes, up to seconds later: measured, it ran such jobs.) REST `/call/` jobs are exempt: their callers may
    fetch the result after it is done.
    """

    def __init__(self, per_session: int = MAX_JOBS_PER_SESSION, per_ip: int = MAX_JOBS_PER_IP) -> None:
        self.per_session = per_session
        self.per_ip = per_ip
        self.counters: Counter[str] = Counter()  # refused_session, refused_ip, dropped_gone
        self._streams: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()  # MCP tool calls whose HTTP request is still open
        self._rest_sessions: dict[str, float] = {}  # REST `/call/` jobs: results may be fetched after they finish
        self._joined: dict[str, float] = {}  # when each session last had a job accepted
        self._pruned = 0.0
        self._lock = threading.Lock()
        self.tracking = False  # True once the middleware sees traffic: without it no job is dropped
        self._queue: Any = None

    # -- limits
    def install(self, demo: Any) -> None:
        """Wrap `demo`'s queue so `push` refuses a client over its limits (call after `demo.queue()`)."""
        queue = self._queue = demo._queue
        push = queue.push

        async def limited_push(body: Any, request: Any, username: str | None) -> tuple:
            refusal = self._refusal(queue, *visitor(request, body.session_hash))
            if refusal is not None:
                return False, refusal, "error"
            result = await push(body, request, username)
            if result[0]:  # push has set the session when the caller sent none (REST: the event id)
                self._accepted(body.session_hash, rest=getattr(body, "simple_format", False))
            return result

        queue.push = limited_push

    def refusal_for(self, request: Any) -> str | None:
        """Why a job from `request`'s visitor would be refused now (None: it would be let in)."""
        if self._queue is None:
            return None
        return self._refusal(self._queue, *visitor(request, getattr(request, "session_hash", None)))

    def _held(self, queue: Any) -> Iterator[Any]:
        for event_queue in queue.event_queue_per_concurrency_id.values():
            yield from event_queue.queue
        for job in queue.active_jobs:
            yield from job or ()

    def _refusal(self, queue: Any, session: str | None, ip: str | None) -> str | None:
        by_session = by_ip = 0
        for event in self._held(queue):
            if not event.alive:
                continue
            held_session, held_ip = visitor(event.request, event.session_hash)
            by_session += session is not None and held_session == session
            by_ip += ip is not None and held_ip == ip
        if by_session >= self.per_session:
            self.counters["refused_session"] += 1
            return f"You already have {by_session} requests waiting or running. Wait for one to finish, then try again."
        if by_ip >= self.per_ip:
            self.counters["refused_ip"] += 1
            return f"Your address already has {by_ip} requests waiting or running. Wait for one to finish."
        return None

    # -- listeners
    def middleware(self) -> Any:
        """A Starlette `Middleware` entry for `launch(app_kwargs={"middleware": [...]})`."""
        from starlette.middleware import Middleware

        return Middleware(_StreamTracker, gate=self)

    def _opened(self, session: str) -> None:
        with self._lock:
            self._streams[session] += 1

    def _closed(self, session: str) -> None:
        with self._lock:
            self._streams[session] -= 1
            if self._streams[session] <= 0:
                del self._streams[session]

    def _accepted(self, session: str, rest: bool = False) -> None:
        """Note a session's accepted join (and whether it came through REST); forget entries an hour old."""
        now = time.monotonic()
        with self._lock:
            self._joined[session] = now
            if rest:
                self._rest_sessions[session] = now
            if now - self._pruned > 60:
                self._pruned = now
                for table in (self._rest_sessions, self._joined):
                    for key in [k for k, since in table.items() if now - since > 3600]:
                        del table[key]

    def call_opened(self, call: str) -> None:
        with self._lock:
            self._calls[call] += 1

    def call_closed(self, call: str) -> None:
        with self._lock:
            self._calls[call] -= 1
            if self._calls[call] <= 0:
                del self._calls[call]

    def listening(self, session: str | None) -> bool:
        """Whether a result stream is open for `session` (or it is a REST job, whose results wait for a GET)."""
        with self._lock:
            return session is not None and (self._streams[session] > 0 or session in self._rest_sessions)

    def check_listening(
        self, session: str | None, grace_s: float = LISTENER_GRACE_S, caller: McpCaller | None = None
    ) -> None:
        """Raise ClientGoneError when nobody listens for this session's results.

        A client opens its stream right after joining: the grace runs from the session's last accepted join, so a
        job that waited in the queue is judged at once and a flood's jobs hold the GPU slot for no time. An MCP
        call listens while its own HTTP request is open (the internal client's stream always is).
        """
        if caller is not None and caller.call.startswith("http:"):
            with self._lock:
                gone = self._calls[caller.call] <= 0
            if gone:
                self.counters["dropped_gone"] += 1
                raise ClientGoneError()
            return
        if not self.tracking or session is None:
            return  # served without the middleware (a bare `demo.launch()`), or called directly: nothing to know
        with self._lock:
            joined = self._joined.get(session, time.monotonic())
        deadline = joined + grace_s
        while not self.listening(session):
            if time.monotonic() >= deadline:
                self.counters["dropped_gone"] += 1
                raise ClientGoneError()
            time.sleep(0.02)


class _StreamTracker:
    """Pure ASGI middleware: counts the open `/queue/data?session_hash=...` streams of each session."""

    def __init__(self, app: Callable[..., Any], gate: ClientGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.gate.tracking = True
        if not scope["path"].endswith("/queue/data"):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        session = (query.get("session_hash") or [None])[0]
        if session is None:
            return await self.app(scope, receive, send)
        self.gate._opened(session)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.gate._closed(session)


GATE = ClientGate()  # one per server process: the queue and the middleware it watches are per process too


# ----------------------------------------------------------------------------------------------------- outputs


class OutputStore:
    """A folder for results and settings files, made on first use, pruned by age and count, removed at exit.

    It lies inside Gradio's cache folder: Gradio hands out files already there as they are, instead of hashing and
    copying each result (measured by bench.serving: a third of Gradio's return path for a 5-cell comparison).
    """

    def __init__(self, max_age_s: float = OUTPUT_MAX_AGE_S, max_files: int = OUTPUT_MAX_FILES) -> None:
        self.max_age_s = max_age_s
        self.max_files = max_files
        self._root: Path | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None or not self._root.is_dir():
                cache = Path(get_upload_folder())
                cache.mkdir(parents=True, exist_ok=True)
                self._root = Path(tempfile.mkdtemp(prefix="image-prompt-studio-", dir=cache))
                atexit.register(shutil.rmtree, self._root, ignore_errors=True)
            return self._root

    def path(self, prefix: str, suffix: str = ".png") -> Path:
        """A fresh file name in the folder (after pruning it)."""
        self.prune()
        return self.root / f"{prefix}-{uuid.uuid4().hex[:12]}{suffix}"

    def prune(self) -> int:
        """Delete files older than `max_age_s`, then the oldest beyond `max_files`; return how many went."""
        entries = []
        for entry in os.scandir(self.root):
            try:
                entries.append((entry.stat().st_mtime, entry.path))
            except FileNotFoundError:
                continue
        entries.sort()
        cutoff = time.time() - self.max_age_s
        doomed = [p for m, p in entries if m < cutoff]
        kept = [p for m, p in entries if m >= cutoff]
        doomed += kept[: max(0, len(kept) - self.max_files + 1)]  # +1: room for the file about to be written
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):  # another thread removed it first
                os.remove(path)
        return len(doomed)

    def files(self) -> list[Path]:
        return sorted(self.root.iterdir())


OUTPUTS = OutputStore()


# --------------------------------------------------------------------------------------------------- boundary

_SCOPE: ContextVar[str] = ContextVar("visitor_scope", default="")


def visitor_scope() -> str:
    """The current request's visitor (its Gradio session): caches are kept apart per visitor."""
    return _SCOPE.get()


def boundary(fn: Callable[..., Any], files: Mapping[str, str] | None = None) -> Callable[..., Any]:
    """The one wrapper every endpoint goes through (UI and API alike).

    `files` maps a parameter name to the label its files get in messages ("reference"): those values become
    lists of checked paths inside Gradio's upload folder, within the request's file caps. A job whose client is
    gone is dropped here, before any work. Library errors become messages for the person (markup escaped);
    anything unexpected is logged and reported briefly, and the app keeps serving.
    """
    files = dict(files or {})
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    # Gradio injects the request into a parameter annotated gr.Request; the API does not list it.
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                    annotation=gr.Request))  # fmt: skip
    outer = signature.replace(parameters=params)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = outer.bind(*args, **kwargs)
        request = bound.arguments.pop("request", None)
        session = getattr(request, "session_hash", None)
        caller = mcp_caller(request)
        token = _SCOPE.set(f"mcp:{caller.session}" if caller is not None else session or "")
        try:
            GATE.check_listening(session, caller=caller)
            budget = UploadBudget(max_files(list(files)))
            for name, label in files.items():
                if name in bound.arguments:
                    bound.arguments[name] = budget.take(bound.arguments[name], label, name)
            stop_keys = (session, f"mcp-call:{caller.call}") if caller is not None else (session,)
            with decode_cache(_SCOPE.get()), JOBS.running(*stop_keys):  # one decode per upload; Stop reaches it
                return fn(*bound.args, **bound.kwargs)
        except ClientGoneError:
            log.info("dropped a job whose client went away before it started")
            raise gr.Error(
                "This request was dropped: its page or client went away before it started.", print_exception=False
            ) from None
        except ImagePromptError as e:  # the person's to fix: one log line, no traceback
            log.info("refused: %s", str(e)[:200])
            raise gr.Error(escape(str(e)), print_exception=False) from e
        except gr.Error:
            raise
        except Exception as e:
            log.exception("generation failed")
            raise gr.Error(
                f"Generation failed ({type(e).__name__}). Please try again; the app is still running."
            ) from e
        finally:
            _SCOPE.reset(token)

    wrapper.__signature__ = outer  # type: ignore[attr-defined] - Gradio reads it to inject the request
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "request": gr.Request}  # ... and the hints
    return wrapper
