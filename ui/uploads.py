"""What one visitor may keep in Gradio's upload folder: a quota per address and a cap on the whole folder.

Gradio caps each file (`max_file_size`) but not how many files one client stores: a burst of requests could fill
the disk. `UploadQuota` meters every upload (Gradio's `/upload` route, and the files the MCP tools save from data
URLs) by the visitor's address. When an upload would take a visitor past `per_visitor`, or the folder past
`total`, the oldest files are removed first (the visitor's own, then anyone's); an upload that cannot fit even
then is refused with a message. Gradio's own cache cleaning (`delete_cache`) still removes everything after an hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .serving import client_ip

MAX_UPLOAD_BYTES_PER_VISITOR = 256 * 2**20  # what one address keeps in the upload folder at once
MAX_UPLOAD_BYTES_TOTAL = 4 * 2**30  # the whole upload folder
MOVE_GRACE_S = 60.0  # Gradio moves an upload to its final path in a background task: missing until then


@dataclass
class _Upload:
    visitor: str
    path: str
    size: int
    at: float


class UploadRefused(Exception):
    """An upload that cannot fit: the message says why and what to do."""


class UploadQuota:
    """Bytes kept in the upload folder per visitor and in all; the oldest go first."""

    def __init__(self, per_visitor: int = MAX_UPLOAD_BYTES_PER_VISITOR, total: int = MAX_UPLOAD_BYTES_TOTAL) -> None:
        self.per_visitor = per_visitor
        self.total = total
        self.counters: dict[str, int] = {"evicted": 0, "refused": 0}
        self._uploads: list[_Upload] = []  # oldest first
        self._lock = threading.Lock()

    def _live(self) -> list[_Upload]:
        """The uploads still on disk (or still being moved there); forgets the rest."""
        now = time.monotonic()
        kept = []
        for upload in self._uploads:
            try:
                upload.size = os.path.getsize(upload.path)
            except OSError:
                if now - upload.at > MOVE_GRACE_S:
                    continue  # removed (by Gradio's cache cleaning, or by us)
            kept.append(upload)
        self._uploads = kept
        return kept

    def used(self, visitor: str | None = None) -> int:
        """Bytes held by `visitor` (None: by everyone)."""
        with self._lock:
            return sum(u.size for u in self._live() if visitor is None or u.visitor == visitor)

    def make_room(self, visitor: str, incoming: int) -> None:
        """Remove the oldest uploads until `incoming` more bytes fit; UploadRefused when they never can."""
        limit = min(self.per_visitor, self.total)
        if incoming > limit:
            self.counters["refused"] += 1
            raise UploadRefused(
                f"This upload is {incoming / 2**20:.0f} MB; one visitor may keep at most {limit // 2**20} MB here. "
                "Upload fewer or smaller images."
            )
        with self._lock:
            live = self._live()
            mine = [u for u in live if u.visitor == visitor]
            self._evict(mine, sum(u.size for u in mine) + incoming - self.per_visitor)
            live = self._live()
            self._evict(live, sum(u.size for u in live) + incoming - self.total)

    def _evict(self, oldest_first: list[_Upload], excess: int) -> None:
        for upload in oldest_first:
            if excess <= 0:
                return
            with contextlib.suppress(OSError):
                os.remove(upload.path)
            self.counters["evicted"] += 1
            excess -= upload.size
            self._uploads.remove(upload)

    def record(self, visitor: str, paths: list[str], incoming: int) -> None:
        """Note files just stored for `visitor` (sizes read from disk, else shared out of `incoming`)."""
        now = time.monotonic()
        share = incoming // max(len(paths), 1)
        with self._lock:
            for path in paths:
                try:
                    size = os.path.getsize(path)
                except OSError:
                    size = share  # not moved to its final path yet
                self._uploads.append(_Upload(visitor, path, size, now))

    def middleware(self) -> Any:
        """A Starlette `Middleware` entry for `launch(app_kwargs={"middleware": [...]})`."""
        from starlette.middleware import Middleware

        return Middleware(_UploadMeter, quota=self)


def visitor_of(scope: dict) -> str:
    """The address an upload is counted against."""
    return client_ip(Request(scope)) or "unknown"


class _UploadMeter:
    """Pure ASGI middleware around Gradio's `POST .../upload`: makes room (or refuses), then records the files."""

    def __init__(self, app: Callable[..., Any], quota: UploadQuota) -> None:
        self.app = app
        self.quota = quota

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if not length.isdigit():
            response = JSONResponse({"detail": "An upload must say its size (Content-Length)."}, status_code=411)
            return await response(scope, receive, send)
        visitor = visitor_of(scope)
        try:
            self.quota.make_room(visitor, int(length))
        except UploadRefused as e:
            return await JSONResponse({"detail": str(e)}, status_code=413)(scope, receive, send)
        status: list[int] = []
        body: list[bytes] = []

        async def metered_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and status and status[0] == 200:
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, metered_send)
        if status and status[0] == 200:
            with contextlib.suppress(ValueError, TypeError):
                paths = [p for p in json.loads(b"".join(body)) if isinstance(p, str)]
                self.quota.record(visitor, paths, int(length))


UPLOADS = UploadQuota()  # one per server process, like the upload folder it meters
