"""The HTTP edge: 413/415 before the service parses anything; one error object, documented."""
import asyncio
import json

import pytest

from causalrec.serving.limits import ErrorContract, RequestLimits


async def _app(scope, receive, send):  # echoes the body length
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(headers, chunks, method="POST", max_bytes=100, path="/recommend"):
    sent, queue = [], [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RequestLimits(_app, frozenset({"/recommend"}), max_bytes)(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.mark.parametrize("ctype, status", [("application/json", 200), ("application/json; charset=utf-8", 200),
                                           ("multipart/form-data", 415), ("text/plain", 415), ("", 415)])
def test_only_json_is_accepted(ctype, status):
    headers = {"content-type": ctype} if ctype else {}
    assert _call(headers, [b'{"a": 1}'])[0] == status


def test_declared_and_streamed_bodies_over_the_limit_get_413():
    status, body = _call({"content-type": "application/json", "content-length": "5000"}, [b"{}"])
    assert status == 413 and "over the 100-byte limit" in json.loads(body)["error"]
    assert _call({"content-type": "application/json"}, [b"x" * 60, b"x" * 60])[0] == 413  # chunked, no length
    assert _call({"content-type": "application/json"}, [b"x" * 40, b"x" * 40]) == (200, b"80")  # replayed whole


def test_get_passes_untouched():
    assert _call({}, [b""], method="GET")[0] == 200


def test_routes_other_than_the_api_are_left_to_the_framework():
    assert _call({"content-type": "text/plain"}, [b"x"], path="/healthz")[0] == 200  # the app answers (405 there)


def _respond(status, body):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _get(app, path, method="POST"):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    mw = ErrorContract(app, frozenset({"/recommend", "/items"}), frozenset({"/items"}))
    asyncio.run(mw({"type": "http", "method": method, "path": path, "headers": []}, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    length = dict(sent[0]["headers"])[b"content-length"]
    assert int(length) == len(body)
    return sent[0]["status"], json.loads(body)


def test_error_bodies_are_one_object():
    # BentoML 1.4 wraps a BentoMLException's message in a one-element list.
    assert _get(_respond(400, b'[{"error": "k=0 is below 1"}]'), "/recommend") == (400, {"error": "k=0 is below 1"})
    assert _get(_respond(200, b'[{"a": 1}]'), "/recommend") == (200, [{"a": 1}])  # success bodies untouched


def test_published_document_lists_every_error_the_edge_gives():
    spec = {"paths": {r: {"post": {"responses": {"200": {}, "404": {}}}} for r in ("/recommend", "/items")}}
    _, doc = _get(_respond(200, json.dumps(spec).encode()), "/docs.json", method="GET")
    items, recommend = doc["paths"]["/items"]["post"], doc["paths"]["/recommend"]["post"]
    assert {"400", "401", "404", "409", "413", "415", "500"} <= set(items["responses"])
    assert "401" not in recommend["responses"] and "security" not in recommend
    assert items["security"] == [{"ApiKey": []}] and doc["components"]["schemas"]["Error"]["required"] == ["error"]
