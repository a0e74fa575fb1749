"""Gunicorn 25+'s dirty arbiter for gpe-ebpf's end-to-end tests (test/e2e/dirty_test.go).

Run with --dirty-app dirty:Jobs --dirty-workers N and dirty:app as the WSGI application: a
request to /job sends one job to the dirty workers over the dirty arbiter's Unix socket and
answers its result; any other path answers "ok" without one. Only Gunicorn 25+ has gunicorn.dirty; nothing imports this module elsewhere.
"""
from gunicorn.dirty import DirtyApp, get_dirty_client


class Jobs(DirtyApp):
    """The dirty app: it holds 16 MB, as a loaded model would, so its workers' memory shows."""

    def init(self):
        self.ballast = bytearray(16 << 20)
        for i in range(0, len(self.ballast), 4096):  # touch every page: resident, not just mapped
            self.ballast[i] = 1

    def square(self, n):
        return n * n


def app(environ, start_response):
    body = b"ok\n"
    if environ.get("PATH_INFO") == "/job":
        body = b"%d\n" % get_dirty_client().execute("dirty:Jobs", "square", 7)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
