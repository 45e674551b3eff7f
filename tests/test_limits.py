"""The request-limits middleware answers 413/415 before the service parses anything."""
import asyncio
import json

import pytest

from causalrec.serving.limits import RequestLimits


async def _app(scope, receive, send):  # echoes the body length
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(headers, chunks, method="POST", max_bytes=100):
    sent, queue = [], [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RequestLimits(_app, max_bytes)(scope, receive, send))
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
