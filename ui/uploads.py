"""What one visitor may keep in Gradio's upload folder: a quota per address and a cap on the whole folder.

Gradio caps each file (`max_file_size`) but not how many files one client stores: a burst of requests could fill
the disk. `UploadQuota` meters every upload (Gradio's `/upload` route, and the files the MCP tools save from data
URLs) by the visitor's address, in this order:
1. behind `--auth`, an upload without the login is refused before anything else (Gradio would refuse it too, but
   only after the meter acted);
2. an upload must declare its size (`Content-Length`) and may not be chunked (`Transfer-Encoding`: the declared
   size would then mean nothing);
3. admission reserves the declared bytes: uploads still arriving may not add up to more than the visitor's quota
   (or the folder's), so a second large upload started while the first arrives is refused, not let in;
4. bytes are counted as they arrive (never more than declared; an upload that stalls is cut off), and only once the
   whole body is here are the oldest files removed to make room (the visitor's own, then anyone's): an upload that
   never arrives deletes nothing;
5. the reservation is released when the request ends, whatever happened to it.
Gradio's own cache cleaning (`delete_cache`) still removes everything after an hour.
"""

from __future__ import annotations

import asyncio
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

from .serving import client_ip, logged_in_user

MAX_UPLOAD_BYTES_PER_VISITOR = 256 * 2**20  # what one address keeps in the upload folder at once
MAX_UPLOAD_BYTES_TOTAL = 4 * 2**30  # the whole upload folder
MOVE_GRACE_S = 60.0  # Gradio moves an upload to its final path in a background task: missing until then
STALL_S = 30.0  # an upload whose next bytes take longer than this to arrive is cut off (and its reservation freed)


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
        self.counters: dict[str, int] = {"evicted": 0, "refused": 0, "stalled": 0}
        self._uploads: list[_Upload] = []  # oldest first
        self._reserved: dict[str, int] = {}  # visitor -> bytes declared by its uploads still arriving
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

    def _check_size(self, incoming: int) -> None:
        limit = min(self.per_visitor, self.total)
        if incoming > limit:
            self.counters["refused"] += 1
            raise UploadRefused(
                f"This upload is {incoming / 2**20:.0f} MB; one visitor may keep at most {limit // 2**20} MB here. "
                "Upload fewer or smaller images."
            )

    def reserve(self, visitor: str, incoming: int) -> None:
        """Admit an upload of `incoming` declared bytes that has not arrived yet (nothing is removed for it);
        UploadRefused when the visitor's (or everyone's) uploads still arriving would pass the quota."""
        self._check_size(incoming)
        with self._lock:
            if self._reserved.get(visitor, 0) + incoming > self.per_visitor:
                self.counters["refused"] += 1
                raise UploadRefused(
                    "Another upload of yours is still arriving; together they would pass the "
                    f"{self.per_visitor // 2**20} MB one visitor may keep here. Wait for it to finish."
                )
            if sum(self._reserved.values()) + incoming > self.total:
                self.counters["refused"] += 1
                raise UploadRefused("The server is receiving too many uploads right now. Try again in a minute.")
            self._reserved[visitor] = self._reserved.get(visitor, 0) + incoming

    def release(self, visitor: str, incoming: int) -> None:
        """End a reservation (the upload arrived, failed or was cut off)."""
        with self._lock:
            left = self._reserved.get(visitor, 0) - incoming
            if left > 0:
                self._reserved[visitor] = left
            else:
                self._reserved.pop(visitor, None)

    def reserved(self, visitor: str | None = None) -> int:
        """Bytes declared by uploads still arriving (of `visitor`, or of everyone)."""
        with self._lock:
            return self._reserved.get(visitor, 0) if visitor is not None else sum(self._reserved.values())

    def make_room(self, visitor: str, incoming: int) -> None:
        """Remove the oldest uploads until `incoming` more bytes fit; UploadRefused when they never can. Only for
        bytes that have arrived (a finished upload's body, an MCP image already decoded)."""
        self._check_size(incoming)
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


def _refuse(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _UploadMeter:
    """Pure ASGI middleware around Gradio's `POST .../upload`: login, declared size, reservation, bytes counted as
    they arrive, room made once they have, files recorded (see the module docstring)."""

    def __init__(self, app: Callable[..., Any], quota: UploadQuota) -> None:
        self.app = app
        self.quota = quota

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        gradio_app = scope.get("app")
        headers = dict(scope.get("headers") or [])
        if getattr(gradio_app, "auth", None) is not None and await logged_in_user(gradio_app, scope, headers) is None:
            return await _refuse(401, "Log in to upload files.")(scope, receive, send)
        length = headers.get(b"content-length", b"").decode("latin-1")
        if b"transfer-encoding" in headers or not length.isdigit():
            detail = "An upload must say its size (Content-Length) and not be sent in chunks (Transfer-Encoding)."
            return await _refuse(411, detail)(scope, receive, send)
        visitor, declared = visitor_of(scope), int(length)
        try:
            self.quota.reserve(visitor, declared)
        except UploadRefused as e:
            return await _refuse(413, str(e))(scope, receive, send)
        try:
            await self._metered(scope, receive, send, visitor, declared)
        finally:
            self.quota.release(visitor, declared)

    async def _metered(
        self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any], visitor: str, declared: int
    ) -> None:
        arrived = 0

        async def counted_receive() -> dict:
            nonlocal arrived
            try:
                message = await asyncio.wait_for(receive(), timeout=STALL_S)
            except asyncio.TimeoutError:
                self.quota.counters["stalled"] += 1
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                arrived += len(message.get("body", b""))
                if arrived > declared:  # more than it said: nothing of it is kept
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    with contextlib.suppress(UploadRefused):  # within the size checked at admission: always fits
                        self.quota.make_room(visitor, arrived)  # the bytes are here: now older files may go
            return message

        status: list[int] = []
        body: list[bytes] = []

        async def metered_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and status and status[0] == 200:
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, counted_receive, metered_send)
        if status and status[0] == 200:
            with contextlib.suppress(ValueError, TypeError):
                paths = [p for p in json.loads(b"".join(body)) if isinstance(p, str)]
                self.quota.record(visitor, paths, arrived)


UPLOADS = UploadQuota()  # one per server process, like the upload folder it meters
