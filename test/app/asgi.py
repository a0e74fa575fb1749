"""The ASGI twin of app.py for the uvicorn worker (uvicorn.workers.UvicornWorker)."""
import asyncio
import os

from app import _file


async def _send(send, status, body, headers=None, more=False):
    h = [(b"content-type", b"text/plain")]
    if headers is None:
        h.append((b"content-length", str(len(body)).encode()))
    else:
        h += headers
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    parts = [p for p in path.split("/") if p]
    head = parts[0] if parts else ""
    if path in ("/", "/ok"):
        return await _send(send, 200, b"ok")
    if path == "/fail":
        raise RuntimeError("boom: the server answers 500")
    if head == "status" and len(parts) == 2:
        return await _send(send, int(parts[1]), b"status\n")
    if path == "/slow":
        await asyncio.sleep(0.05)
        return await _send(send, 200, b"slow")
    if head == "sleep" and len(parts) == 2:
        await asyncio.sleep(int(parts[1]) / 1000.0)
        return await _send(send, 200, b"slept")
    if path == "/big":
        return await _send(send, 200, b"b" * (2 << 20))
    if head == "file" and len(parts) == 2:
        with open(_file(int(parts[1])), "rb") as f:
            data = f.read()
        return await _send(send, 200, data)
    if path == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(10):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        return await send({"type": "http.response.body", "body": b"", "more_body": False})
    if path == "/upload":
        n = 0
        while True:
            msg = await receive()
            n += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        return await _send(send, 200, b"%d\n" % n)
    if path == "/hang":
        await asyncio.sleep(3600)
    if head == "users" and len(parts) == 2:
        return await _send(send, 200, b"user")
    return await _send(send, 404, b"not found")
