"""ASGI middleware in front of the Recommender: request size and content type, checked before
any framework code parses a body (an unparseable multipart header must be a 4xx, never a 500).

* POST bodies larger than `max_bytes` (Content-Length, or counted while streaming) -> 413.
* POST bodies that are not `application/json` -> 415.
Error bodies have the service's error shape: {"error": "..."}.
"""
from __future__ import annotations

import json
import os

MAX_BYTES_ENV = "CAUSALREC_MAX_REQUEST_BYTES"
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: the largest legitimate body (an item text of 10k chars) is far below


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app, max_bytes: int | None = None):
        self.app = app
        self.max_bytes = int(max_bytes if max_bytes is not None else os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
        if self.max_bytes <= 0:
            raise ValueError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got {self.max_bytes}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json":
            return await _reply(send, 415, f"content type {media.decode(errors='replace') or 'missing'} is not "
                                           "supported; send application/json")
        declared = headers.get(b"content-length")
        try:
            if declared is not None and int(declared) > self.max_bytes:
                return await _reply(send, 413, f"request body of {int(declared)} bytes is over the {self.max_bytes}-byte limit")
        except ValueError:
            return await _reply(send, 400, "content-length is not a number")
        # Streamed (or lying) bodies: read up to the limit, then replay what was read.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await _reply(send, 413, f"request body is over the {self.max_bytes}-byte limit")
        return await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                              receive), send)


def _replay(messages: list[dict], then=None):
    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
