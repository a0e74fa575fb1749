#!/usr/bin/env bash
# make demo: start the sample Gunicorn app, attach gpe-ebpf, drive a little traffic, show metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "gpe-ebpf loads BPF programs: run the demo as root (sudo make demo)" >&2
	exit 2
fi
APP_PORT=${APP_PORT:-8000}
METRICS_PORT=${METRICS_PORT:-9090}
work=$(mktemp -d)
cleanup() {
	[ -n "${gpe:-}" ] && kill -TERM "$gpe" 2>/dev/null && wait "$gpe" 2>/dev/null || true
	[ -f "$work/gunicorn.pid" ] && kill -TERM "$(cat "$work/gunicorn.pid")" 2>/dev/null || true
	sleep 0.5
	rm -rf "$work"
}
trap cleanup EXIT

echo "== starting Gunicorn (sync, 2 workers) on 127.0.0.1:$APP_PORT"
gunicorn -w 2 -b "127.0.0.1:$APP_PORT" --chdir test/app --pid "$work/gunicorn.pid" app:app >"$work/gunicorn.log" 2>&1 &
for _ in $(seq 50); do [ -s "$work/gunicorn.pid" ] && curl -s -o /dev/null "http://127.0.0.1:$APP_PORT/ok" && break; sleep 0.2; done
master=$(cat "$work/gunicorn.pid")

echo "== attaching gpe-ebpf to master $master; metrics on 127.0.0.1:$METRICS_PORT"
bin/gpe-ebpf --pid "$master" --bind-address 127.0.0.1 --metrics-port "$METRICS_PORT" --sample-interval 1s 2>"$work/gpe.log" &
gpe=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" && break; sleep 0.2; done

echo "== traffic: 200 x /ok, 20 x /fail (500), 20 x /slow (50 ms), 10 x /users/<id>, 5 x /missing"
hey -n 200 -c 4 -disable-keepalive "http://127.0.0.1:$APP_PORT/ok" >/dev/null
hey -n 20 -c 2 "http://127.0.0.1:$APP_PORT/fail" >/dev/null
hey -n 20 -c 2 "http://127.0.0.1:$APP_PORT/slow" >/dev/null
for i in $(seq 10); do curl -s -o /dev/null "http://127.0.0.1:$APP_PORT/users/$RANDOM$i?token=not-exported"; done
for i in $(seq 5); do curl -s -o /dev/null "http://127.0.0.1:$APP_PORT/missing"; done
sleep 1.5

echo "== a few of the metrics (curl http://127.0.0.1:$METRICS_PORT/metrics for all)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^(gunicorn_worker_requests_total|gunicorn_http_requests_total|gunicorn_worker_failed_requests_total|gunicorn_worker_error_handling_total|gunicorn_worker_memory_bytes|gunicorn_worker_cpu_percent|gunicorn_worker_state|gunicorn_master_workers |gunicorn_http_request_duration_seconds_(sum|count)|gpe_ebpf_events_lost_total)'

echo "== HUP the master: workers are replaced"
kill -HUP "$master"
sleep 2.5
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^(gunicorn_master_signals_total|gunicorn_master_worker_restarts_total|gunicorn_worker_state|gunicorn_worker_exits_total\{reason="graceful"\})'
echo "== done"
