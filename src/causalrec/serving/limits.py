"""ASGI middleware in front of the Recommender: what the HTTP edge guarantees, whatever the framework.

RequestLimits, on the service's own POST routes, before any framework code parses a body (an
unparseable multipart header must be a 4xx, never a 500):
* bodies larger than `max_bytes` (Content-Length, or counted while streaming) -> 413;
* bodies that are not `application/json` -> 415;
* JSON that names a key twice in an object -> 400 (strict JSON: no silent "last one wins").

ErrorContract: every error body is one object `{"error": str, "detail"?: ...}`, and the OpenAPI
document says so. BentoML 1.4 answers a BentoMLException with a one-element *list* and documents
only 400/404/500; this middleware unwraps the list and adds to the published document what the
service really answers (401 on write routes, 409, 413, 415, the shared error schema, the API-key
security scheme), so schema-based testing (schemathesis, tests/test_fuzz.py) checks the real contract.
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
    def __init__(self, app, routes: frozenset[str] = frozenset(), max_bytes: int | None = None):
        """routes: the POST routes to guard (others, e.g. POST /healthz, get the framework's 405)."""
        self.app, self.routes = app, routes
        self.max_bytes = int(max_bytes if max_bytes is not None else os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
        if self.max_bytes <= 0:
            raise ValueError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got {self.max_bytes}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
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
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media != b"application/json" and (media or size):  # no body at all: the framework decides (400)
            return await _reply(send, 415, f"content type {media.decode(errors='replace') or 'missing'} is not "
                                           "supported; send application/json")
        body = b"".join(chunks)
        if size and _has_duplicate_keys(body):
            return await _reply(send, 400, "the JSON body repeats a key; send each field once")
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}],
                                              receive), send)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey
    return dict(pairs)


def _has_duplicate_keys(body: bytes) -> bool:
    """Strict JSON: an object that names a key twice is refused (json.loads would keep the last one
    silently, so a client and the service could read different events). Unparseable bodies are the
    framework's to refuse (400)."""
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        return True
    except ValueError:
        return False
    return False


def _replay(messages: list[dict], then=None):
    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "what is wrong, in one sentence"},
    "detail": {"description": "optional: for a 400 from request validation, pydantic's list of errors "
                              "(loc, msg, type); otherwise a string"}}}
_ERRORS = {400: "the body does not match the schema or breaks a rule (named in `error`)",
           401: "missing or wrong x-api-key (write endpoints)", 404: "an id the service does not know",
           409: "the id already exists", 413: "the body is over the size limit",
           415: "the body is not application/json", 500: "a bug: the server log has the traceback"}


def _nullable_as_30(node):
    """pydantic writes Optional[X] as anyOf [X, {type: null}] (JSON Schema); OpenAPI 3.0 says X + nullable."""
    if isinstance(node, list):
        return [_nullable_as_30(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_as_30(v) for k, v in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        node["nullable"] = True
    return node


def document_errors(spec: dict, routes: frozenset[str], write_routes: frozenset[str]) -> dict:
    """The published OpenAPI document with the responses the edge and the service really give, valid 3.0."""
    spec = _nullable_as_30(spec)
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    spec["components"].setdefault("securitySchemes", {})["ApiKey"] = {"type": "apiKey", "in": "header",
                                                                       "name": "x-api-key"}
    for route in routes:
        op = spec["paths"][route]["post"]
        body = op.get("requestBody", {})
        if body.get("content", {}).get("application/json", {}).get("schema", {}).get("required"):
            body["required"] = True  # a missing body is a 400, as for a missing field
        codes = [400, 413, 415, 500] + ([401] if route in write_routes else []) + \
                ([404] if "404" in op["responses"] else []) + ([409] if route == "/items" else [])
        for code in codes:
            op["responses"][str(code)] = {"description": _ERRORS[code], "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if route in write_routes:
            op["security"] = [{"ApiKey": []}]
    return spec


class ErrorContract:
    def __init__(self, app, routes: frozenset[str], write_routes: frozenset[str] = frozenset(),
                 docs_path: str = "/docs.json"):
        self.app, self.routes, self.write_routes, self.docs_path = app, routes, write_routes, docs_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == self.docs_path and scope["method"] == "GET":
            return await self.app(scope, receive, _rewrite(send, lambda status: status == 200, lambda body: json.dumps(
                document_errors(body, self.routes, self.write_routes))))
        if scope["path"] in self.routes:
            return await self.app(scope, receive, _rewrite(send, lambda status: status >= 400, _one_error_object))
        return await self.app(scope, receive, send)


def _one_error_object(body):
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return json.dumps(body[0])
    return None


def _rewrite(send, applies, change):
    """For responses whose status `applies`, buffer the JSON body and send `change(parsed)` instead
    (None: keep it); every other response streams through untouched (no cost on the success path)."""
    start, chunks = {}, []

    async def wrapped(message):
        if message["type"] == "http.response.start":
            start.update(message)
            if not applies(message["status"]):
                start["passthrough"] = True
                return await send(message)
            return None
        if message["type"] != "http.response.body" or start.get("passthrough"):
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = b"".join(chunks)
        try:
            new = change(json.loads(body)) if body else None
        except ValueError:
            new = None
        if new is not None:
            body = new.encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({"type": "http.response.start", "status": start["status"],
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return wrapped
