"""A small WSGI application for gpe-ebpf's end-to-end tests, demo and benchmark.

Endpoints: /ok (200), /fail (500: an exception the framework turns into a 500), /status/<code>,
/slow (50 ms), /sleep/<ms>, /cpu/<ms> (a CPU loop of that long), /big (2 MB), /file/<mb> (sent with wsgi.file_wrapper, so sendfile),
/chunked (no Content-Length), /upload (POST: reads the body), /hang (sleeps 1 h: for timeouts),
/users/<id> (an id in the path), and anything else 404.
"""
import os
import tempfile
import time

_FILES = {}


def _file(mb):
    if mb not in _FILES:
        f = tempfile.NamedTemporaryFile(prefix="gpe-file-", delete=False)
        f.write(b"x" * (mb << 20))
        f.close()
        _FILES[mb] = f.name
    return _FILES[mb]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    parts = [p for p in path.split("/") if p]
    head = parts[0] if parts else ""
    if path == "/ok" or path == "/":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/fail":
        raise RuntimeError("boom: the framework answers 500")
    if head == "status" and len(parts) == 2:
        code = int(parts[1])
        body = b"status %d\n" % code
        start_response("%d Whatever" % code, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/slow":
        time.sleep(0.05)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"slow"]
    if head == "sleep" and len(parts) == 2:
        time.sleep(int(parts[1]) / 1000.0)
        start_response("200 OK", [("Content-Length", "5")])
        return [b"slept"]
    if head == "cpu" and len(parts) == 2:
        end = time.monotonic() + int(parts[1]) / 1000.0
        n = 0
        while time.monotonic() < end:
            n += 1
        start_response("200 OK", [("Content-Length", "3")])
        return [b"cpu"]
    if path == "/big":
        body = b"b" * (2 << 20)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if head == "file" and len(parts) == 2:
        name = _file(int(parts[1]))
        start_response("200 OK", [("Content-Length", str(os.path.getsize(name)))])
        f = open(name, "rb")
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper:
            return wrapper(f, 1 << 20)
        return iter(lambda: f.read(1 << 20), b"")
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %d\n" % i for i in range(10))
    if path == "/upload":
        n = 0
        inp = environ["wsgi.input"]
        while True:
            b = inp.read(65536)
            if not b:
                break
            n += len(b)
        body = b"%d\n" % n
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/hang":
        time.sleep(3600)
    if head == "users" and len(parts) == 2:
        start_response("200 OK", [("Content-Length", "4")])
        return [b"user"]
    start_response("404 Not Found", [("Content-Length", "9")])
    return [b"not found"]
