"""A small WSGI application for gpe-ebpf's end-to-end tests, demo and benchmark.

Endpoints: /ok (200), /fail (500: an exception the framework turns into a 500), /status/<code>,
/slow (50 ms), /sleep/<ms>, /cpu/<ms> (a CPU loop of that long), /big (2 MB), /file/<mb> (sent with wsgi.file_wrapper, so sendfile),
/chunked (no Content-Length), /upload (POST: reads the body), /hang (sleeps 1 h: for timeouts),
/users/<id> (an id in the path), and anything else 404.

Downstream calls (the tests set where to): /redis/<n> (n GETs, each its own round trip),
/redispipe/<n> (one pipeline of n GETs: one round trip), /sql/<n> and /sqlunix/<n> (n SELECTs,
each its own round trip, over TCP and over the server's Unix socket). The clients connect when a
worker imports the app (Gunicorn imports it in each worker unless --preload), so no connection
is set up inside a request. GPE_TEST_REDIS=host:port, GPE_TEST_PG and GPE_TEST_PG_UNIX (libpq
DSNs) say where; unset, or the server unreachable at import, those endpoints answer 500 and
nothing else changes.
"""
import os
import tempfile
import time

_FILES = {}


def _connect(var, connect):
    """Connects with connect(value of var) at import; returns (client, None) or (None, why)."""
    where = os.environ.get(var)
    if not where:
        return None, "%s is not set" % var
    try:
        return connect(where), None
    except Exception as e:  # the endpoint answers 500 with this, rather than a worker that fails to boot
        return None, "%s=%s: %r" % (var, where, e)


def _redis(where):
    import redis

    host, port = where.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    r.ping()
    r.set("gpe-test", b"v")
    return r


def _pg(dsn):
    import psycopg2

    conn = psycopg2.connect(dsn)
    # Autocommit: psycopg2 would otherwise send a BEGIN of its own, a round trip more per request.
    conn.autocommit = True
    return conn


_REDIS = _connect("GPE_TEST_REDIS", _redis)
_PG = {"sql": _connect("GPE_TEST_PG", _pg), "sqlunix": _connect("GPE_TEST_PG_UNIX", _pg)}


def _text(start_response, status, body):
    body = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _downstream(start_response, head, n):
    """Serves /redis/<n>, /redispipe/<n>, /sql/<n> and /sqlunix/<n>."""
    client, why = _PG[head] if head in _PG else _REDIS
    if client is None:
        return _text(start_response, "500 Internal Server Error", why + "\n")
    want = [b"v"] * n
    if head == "redis":
        got = [client.get("gpe-test") for _ in range(n)]
    elif head == "redispipe":
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            pipe.get("gpe-test")
        got = pipe.execute()
    else:
        want, got = list(range(n)), []
        with client.cursor() as cur:
            for i in range(n):
                cur.execute("SELECT %s", (i,))
                got.append(cur.fetchone()[0])
    if got != want:
        return _text(start_response, "500 Internal Server Error", "wrong answers %r\n" % got)
    return _text(start_response, "200 OK", "%s %d\n" % (head, n))


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
    if head in ("redis", "redispipe", "sql", "sqlunix") and len(parts) == 2:
        return _downstream(start_response, head, int(parts[1]))
    if head == "users" and len(parts) == 2:
        start_response("200 OK", [("Content-Length", "4")])
        return [b"user"]
    start_response("404 Not Found", [("Content-Length", "9")])
    return [b"not found"]
