"""A WSGI application with its own prometheus_client metrics in multiprocess mode.

It is what an application that used the Python exporter looks like once the exporter is gone:
PROMETHEUS_MULTIPROC_DIR is set in the environment before this module is imported (by whoever
starts Gunicorn), and the app only records its own metrics. There is no metrics server, no
MultiProcessCollector and no Gunicorn hook (not even child_exit/mark_process_dead): gpe-ebpf
--multiproc-dir merges the files and knows from the kernel which workers are gone.

Metrics:
  app_orders_total{kind}   counter, one per /order request
  app_order_value          histogram of the ?value= of each /order request
  app_inflight             gauge (livesum): requests being served by this worker

Endpoints:
  /order/<kind>?value=<float>  counts an order of that kind (value 1 by default), answers 200
  /hold/<seconds>              keeps app_inflight at 1 in this worker for that long, then 200
  anything else                404
"""
import os
import time
from urllib.parse import parse_qs

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    raise RuntimeError("custom_metrics: PROMETHEUS_MULTIPROC_DIR must be set before import")

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402 (after the check)

ORDERS = Counter("app_orders", "Orders received, by kind.", ["kind"])
ORDER_VALUE = Histogram("app_order_value", "Value of the orders received.",
                        buckets=(1, 5, 10, 50, 100))
INFLIGHT = Gauge("app_inflight", "Requests being served.", multiprocess_mode="livesum")


def _answer(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    parts = [p for p in environ.get("PATH_INFO", "/").split("/") if p]
    INFLIGHT.inc()
    try:
        if len(parts) == 2 and parts[0] == "order":
            qs = parse_qs(environ.get("QUERY_STRING", ""))
            value = float(qs.get("value", ["1"])[0])
            ORDERS.labels(kind=parts[1]).inc()
            ORDER_VALUE.observe(value)
            return _answer(start_response, "200 OK", b"ordered\n")
        if len(parts) == 2 and parts[0] == "hold":
            time.sleep(float(parts[1]))
            return _answer(start_response, "200 OK", b"held\n")
        return _answer(start_response, "404 Not Found", b"not found\n")
    finally:
        INFLIGHT.dec()
