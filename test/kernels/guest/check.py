"""The checks the kernel matrix runs inside each guest, once per hook mode.

Reads /gpe/config (one `key=value` a line: `modes=syscall auto`, `hooks_flag=yes|no`), and for
each mode: starts Debian's Gunicorn on the test app (sync, 2 workers), attaches gpe-ebpf by PID,
sends 100 requests (60 x /ok 200, 20 x /fail 500, 20 x /slow 50 ms), scrapes /metrics and checks
the exact counts, HUPs the master and checks the restarts, then SIGTERMs gpe-ebpf and checks exit 0
with no BPF program left loaded.

What the mode costs other processes: the CPU time (user+sys, from its rusage) of a
`dd if=/dev/zero of=/dev/null bs=1 count=N` (two syscalls a byte) with gpe-ebpf attached, against
one without, in pairs measured back to back across an attach or a detach: the first pair around
the check's attach, the second around its detach, the others (`dd_pairs=` in the config, 2 by
default) around one more start and stop of gpe-ebpf each. Each side of a pair is the least of
DD_RUNS runs (N is calibrated once per boot so that a run takes about DD_SECONDS of CPU). The
host boots the guest with -icount and one vCPU: its clock counts the instructions executed, so
the host's own load stays out, and while dd runs gpe-ebpf and Gunicorn are stopped (SIGSTOP, then
SIGCONT; the hooks stay attached) and the guest left to settle first, so that their work and the
kernel's deferred work stay out too: what is left is what dd executed, hooks included. Only the ratio means anything, and the host computes it.

It prints for the host to read, on the serial console:

    GPE-CHECK mode=M name=N ok=true|false detail=...
    GPE-LOG mode=M ...            (gpe-ebpf's stderr, when a mode fails)
    GPE-DD mode=M pair=I without=SECONDS with=SECONDS count=N
    GPE-RESULT mode=M result=pass|fail hooks=H detail=...   (H: the hooks gpe-ebpf said it loaded)

Only loopback is used. Waits are generous (the guest runs under TCG emulation) and no timing is
asserted: the 50 ms requests are checked by the histogram bucket they must not fall in.
"""
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

APP_PORT = 8000
DD_SECONDS = 0.25  # the CPU time a dd run aims at
DD_RUNS = 5  # runs a side of a pair; the least counts
METRICS_PORT = 9090
WORKERS = 2
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def loopback_up():
    """Sets lo up with SIOCGIFFLAGS/SIOCSIFFLAGS: the minbase tree has no iproute2."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sh14x", b"lo", 0))
    flags = struct.unpack("16sh14x", ifr)[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sh14x", b"lo", flags | 0x1))
    s.close()


def get(url, timeout=30):
    """Returns (status, body) of a GET on a new connection; status 0 when nothing answered."""
    req = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return 0, ""


def scrape():
    """Returns {name: [(labels, value)]} from gpe-ebpf's /metrics, or None."""
    status, body = get("http://127.0.0.1:%d/metrics" % METRICS_PORT)
    if status != 200:
        return None
    series = {}
    for line in body.splitlines():
        m = SERIES.match(line)
        if not m or line.startswith("#"):
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        series.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return series


def total(series, name, **match):
    return sum(v for labels, v in (series or {}).get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def bpf_prog_ids():
    """IDs of the BPF programs loaded now, from Debian's bpftool."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("bpftool prog show: " + r.stderr.strip())
    return {p["id"]: p.get("name", "") for p in json.loads(r.stdout or "[]")}


def dd_cpu(count):
    """The CPU time (user+sys, seconds) of one `dd bs=1` of count bytes from /dev/zero to /dev/null."""
    null = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawn("/bin/dd", ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=%d" % count],
                         os.environ, file_actions=null)
    _, status, ru = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("dd exited with status %d" % os.waitstatus_to_exitcode(status))
    return ru.ru_utime + ru.ru_stime


def children(pid):
    """The PIDs whose parent is pid."""
    kids = []
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % d) as f:
                if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def busy():
    """The guest's busy CPU time so far, in clock ticks, from /proc/stat."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    return sum(t) - t[3] - t[4]  # all but idle and iowait


def settle(limit=5.0):
    """Waits, at most limit seconds, for a quarter second in which the guest was nearly idle: the
    kernel's deferred work after an attach or a detach (freeing programs, trampolines, kprobes)
    would run in the middle of dd's and count in its time."""
    deadline = time.time() + limit
    while time.time() < deadline:
        b = busy()
        time.sleep(0.25)
        if busy() - b <= 2:  # ticks of 1/100 s
            return


def dd_side(count, stopped):
    """The least CPU time of DD_RUNS dd runs, with the processes `stopped` stopped meanwhile."""
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        settle()
        return min(dd_cpu(count) for _ in range(DD_RUNS))
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def dd_count():
    """The byte count that makes one dd run take about DD_SECONDS of CPU in this guest."""
    count = 20000
    for _ in range(3):
        cpu = min(dd_cpu(count) for _ in range(3))
        if cpu >= 0.1:
            break
        count *= 5
    return max(1000, int(count * DD_SECONDS / max(cpu, 0.001)))


def wait_for(pred, timeout, step=0.5):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v or time.time() > deadline:
            return v
        time.sleep(step)


class Mode:
    def __init__(self, mode, hooks_flag, dd_n, dd_pairs):
        self.mode = mode
        self.hooks_flag = hooks_flag
        self.dd_n = dd_n
        self.dd_pairs = dd_pairs
        self.pairs = 0
        self.master = 0
        self.ok = True
        self.first_failure = ""
        self.gunicorn = None
        self.gpe = None
        self.gpe_log = "/tmp/gpe-%s.log" % mode
        self.chosen = ""  # the hooks gpe-ebpf says it loaded, when it says
        self.counted = None  # the scrape after the 100 requests

    def check(self, name, ok, detail):
        detail = " ".join(str(detail).split())[:400]
        out("GPE-CHECK mode=%s name=%s ok=%s detail=%s" % (self.mode, name, "true" if ok else "false", detail))
        if not ok and self.ok:
            self.ok = False
            self.first_failure = "%s: %s" % (name, detail)
        return ok

    def diagnosis(self):
        """What the scrape taken after the 100 requests says of a wrong count: every failure
        series, and gpe-ebpf's own counters that are not 0 (lost records, drops, program runs
        the kernel skipped)."""
        lines = []
        for name, series in sorted((self.counted or {}).items()):
            if name == "gunicorn_worker_failed_requests_total" or (name.startswith("gpe_ebpf_") and name.endswith("_total")):
                for labels, v in series:
                    if v:
                        lines.append("%s%s %g" % (name, labels, v))
        return lines

    def gpe_stderr(self):
        try:
            with open(self.gpe_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def refusal(self):
        """The loader's or verifier's words from gpe-ebpf's stderr: the lines that say why."""
        lines = [l for l in self.gpe_stderr().splitlines() if l.strip()]
        keys = ("verifier", "invalid", "load", "attach", "error", "level=ERROR", "permission", "not supported")
        picked = [l for l in lines if any(k in l.lower() for k in keys)]
        return " | ".join((picked or lines)[-3:]) or "(no output)"

    def dd(self):
        """One side of a dd pair, gpe-ebpf (when running) and Gunicorn stopped meanwhile."""
        stopped = [self.master] + children(self.master)
        if self.gpe and self.gpe.poll() is None:
            stopped.append(self.gpe.pid)
        return dd_side(self.dd_n, stopped)

    def dd_pair(self, without, with_):
        self.pairs += 1
        out("GPE-DD mode=%s pair=%d without=%.4f with=%.4f count=%d" % (self.mode, self.pairs, without, with_, self.dd_n))

    def start_gpe(self, args, log_mode):
        """Starts gpe-ebpf and waits for its /metrics; returns None when it serves, else why not."""
        self.gpe = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.gpe_log, log_mode))
        wait_for(lambda: self.gpe.poll() is not None or scrape() is not None, 300)
        if self.gpe.poll() is not None:
            return "gpe-ebpf exited %d: %s" % (self.gpe.returncode, self.refusal())
        return None if scrape() is not None else "no /metrics in 300 s"

    def stop_gpe(self):
        """SIGTERMs gpe-ebpf; returns its exit code, None when it did not exit in 60 s."""
        self.gpe.send_signal(signal.SIGTERM)
        try:
            return self.gpe.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return None

    def run(self):
        pidfile = "/tmp/gunicorn-%s.pid" % self.mode
        self.gunicorn = subprocess.Popen(
            ["gunicorn", "-w", str(WORKERS), "-b", "127.0.0.1:%d" % APP_PORT, "--chdir", "/gpe/app",
             "--pid", pidfile, "app:app"],
            stdout=open("/tmp/gunicorn-%s.log" % self.mode, "w"), stderr=subprocess.STDOUT)
        up = wait_for(lambda: os.path.exists(pidfile) and get("http://127.0.0.1:%d/ok" % APP_PORT)[0] == 200, 180)
        if not self.check("gunicorn_up", up, "Gunicorn answers /ok" if up else "Gunicorn did not answer in 180 s"):
            return
        master = self.master = int(open(pidfile).read().strip())
        before = bpf_prog_ids()

        args = ["/gpe/gpe-ebpf", "--pid", str(master), "--bind-address", "127.0.0.1",
                "--metrics-port", str(METRICS_PORT), "--sample-interval", "1s"]
        if self.hooks_flag:
            args += ["--hooks", self.mode]
        without = self.dd()
        t0 = time.time()
        why = self.start_gpe(args, "w")
        if not self.check("attach", why is None, why or "serving /metrics %.1f s after start" % (time.time() - t0)):
            return
        self.dd_pair(without, self.dd())
        chosen = re.search(r"hooks=(\w+)", self.gpe_stderr())
        self.chosen = chosen.group(1) if chosen else ""
        loaded = {i: n for i, n in bpf_prog_ids().items() if i not in before}
        self.check("programs_loaded", len(loaded) > 0, "%d programs: %s" % (len(loaded), " ".join(sorted(set(loaded.values())))))

        # The 100 requests, each on its own connection, and what the client saw.
        plan = [("/ok", 200)] * 60 + [("/fail", 500)] * 20 + [("/slow", 200)] * 20
        seen = {}
        for path, want in plan:
            status, _ = get("http://127.0.0.1:%d%s" % (APP_PORT, path))
            seen[(path, status)] = seen.get((path, status), 0) + 1
        self.check("client", seen == {("/ok", 200): 60, ("/fail", 500): 20, ("/slow", 200): 20}, "client saw %s" % seen)

        # A request is counted at its status line and observed in the histograms at its end (the
        # close), which can come in the next ring-buffer drain: wait for both.
        wait_for(lambda: (lambda m: total(m, "gunicorn_worker_requests_total") >= 100
                          and total(m, "gunicorn_worker_request_duration_seconds_count") >= 100)(scrape()), 60)
        time.sleep(1)
        s = self.counted = scrape()  # once more: a late event would show as more than 100
        self.check("requests_total", total(s, "gunicorn_worker_requests_total") == 100,
                   "sum gunicorn_worker_requests_total = %g, want 100" % total(s, "gunicorn_worker_requests_total"))
        self.check("by_status",
                   total(s, "gunicorn_http_requests_total", endpoint="/ok", status="200") == 60
                   and total(s, "gunicorn_http_requests_total", endpoint="/fail", status="500") == 20
                   and total(s, "gunicorn_http_requests_total", endpoint="/slow", status="200") == 20,
                   "/ok 200 = %g, /fail 500 = %g, /slow 200 = %g, want 60, 20, 20" % (
                       total(s, "gunicorn_http_requests_total", endpoint="/ok", status="200"),
                       total(s, "gunicorn_http_requests_total", endpoint="/fail", status="500"),
                       total(s, "gunicorn_http_requests_total", endpoint="/slow", status="200")))
        failed = total(s, "gunicorn_worker_failed_requests_total")
        failed_fail = total(s, "gunicorn_worker_failed_requests_total", method="GET", endpoint="/fail")
        self.check("failed_requests", failed == 20 and failed_fail == 20,
                   "gunicorn_worker_failed_requests_total = %g (GET /fail %g), want 20" % (failed, failed_fail))
        hist = "gunicorn_http_request_duration_seconds_bucket"
        slow_all = total(s, hist, endpoint="/slow", le="+Inf")
        slow_fast = total(s, hist, endpoint="/slow", le="0.05")
        worker_count = total(s, "gunicorn_worker_request_duration_seconds_count")
        self.check("duration_histogram", slow_all == 20 and slow_fast == 0 and worker_count == 100,
                   "/slow: %g observed, %g at or under 50 ms (want 20, 0); worker histogram count %g (want 100)"
                   % (slow_all, slow_fast, worker_count))

        # HUP: the master replaces every worker; the restarts counter grows by the worker count.
        r0 = total(s, "gunicorn_master_worker_restarts_total")
        old_ids = {labels.get("worker_id") for labels, _ in s.get("gunicorn_worker_requests_total", [])}
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: total(scrape(), "gunicorn_master_worker_restarts_total") >= r0 + WORKERS, 120)
        time.sleep(2)
        s = scrape()
        r1 = total(s, "gunicorn_master_worker_restarts_total")
        self.check("hup_restarts", r1 - r0 == WORKERS and total(s, "gunicorn_master_signals_total", signal="hup") == 1,
                   "restarts %g -> %g (want +%d), hup signals %g (want 1)"
                   % (r0, r1, WORKERS, total(s, "gunicorn_master_signals_total", signal="hup")))
        # The new workers are counted too. The old workers' series go once two scrapes have shown
        # them exited, so the new workers' own counters are summed, and the per-endpoint
        # counter (no worker_id) keeps every request.
        after_hup = sum(1 for _ in range(10) if get("http://127.0.0.1:%d/ok" % APP_PORT)[0] == 200)

        def new_workers(m):
            return sum(v for labels, v in (m or {}).get("gunicorn_worker_requests_total", [])
                       if labels.get("worker_id") not in old_ids)
        wait_for(lambda: new_workers(scrape()) >= 10, 60)
        time.sleep(1)
        s = scrape()
        n_new, n_http = new_workers(s), total(s, "gunicorn_http_requests_total")
        self.check("after_hup", after_hup == 10 and n_new == 10 and n_http == 110,
                   "10 more /ok after the HUP: client %d, the new workers' gunicorn_worker_requests_total %g (want 10), "
                   "sum gunicorn_http_requests_total %g (want 110)" % (after_hup, n_new, n_http))

        # SIGTERM: exit 0 and no program left behind.
        with_ = self.dd()
        rc = self.stop_gpe()
        self.check("sigterm_exit", rc == 0, "gpe-ebpf exit code %s after SIGTERM" % rc)
        # The kernel frees a program once its last reference is gone, some of them after an RCU
        # grace period, which under TCG can outlast the exit: a program still there after 10 s stayed.
        wait_for(lambda: not [i for i in bpf_prog_ids() if i not in before], 10)
        left = {i: n for i, n in bpf_prog_ids().items() if i not in before}
        if not self.check("detached", not left, "programs still loaded: %s" % (left or "none")):
            return
        self.dd_pair(self.dd(), with_)

        # The other dd pairs, each around one more start and stop of gpe-ebpf.
        while self.pairs < self.dd_pairs:
            without = self.dd()
            why = self.start_gpe(args, "a")
            if not self.check("dd_attach", why is None, why or "attached again for dd pair %d" % (self.pairs + 1)):
                return
            with_ = self.dd()
            rc = self.stop_gpe()
            if not self.check("dd_detach", rc == 0, "gpe-ebpf exit code %s after SIGTERM" % rc):
                return
            self.dd_pair(without, with_)

    def stop(self):
        if self.gpe and self.gpe.poll() is None:
            self.gpe.kill()
            self.gpe.wait()
        if self.gunicorn and self.gunicorn.poll() is None:
            self.gunicorn.send_signal(signal.SIGTERM)
            try:
                self.gunicorn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.gunicorn.kill()
                self.gunicorn.wait()
        # the next mode binds the same ports
        wait_for(lambda: get("http://127.0.0.1:%d/ok" % APP_PORT, timeout=2)[0] == 0, 30)


def main():
    conf = {}
    with open("/gpe/config") as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                conf[k] = v
    loopback_up()
    out("GPE-KERNEL release=%s machine=%s" % (os.uname().release, os.uname().machine))
    dd_n = dd_count()
    for mode in conf.get("modes", "socket").split():
        m = Mode(mode, conf.get("hooks_flag") == "yes", dd_n, int(conf.get("dd_pairs", "2")))
        try:
            m.run()
        except Exception as e:  # a broken check is a failed mode, never a hung guest
            m.check("harness", False, "%s: %s" % (type(e).__name__, e))
        finally:
            m.stop()
        if not m.ok:
            for line in m.diagnosis():
                out("GPE-LOG mode=%s metric %s" % (mode, line))
            for line in m.gpe_stderr().splitlines()[-40:]:
                out("GPE-LOG mode=%s %s" % (mode, line))
        detail = " ".join(m.first_failure.split())[:600] or "all checks passed"
        if m.chosen:
            detail += " (gpe-ebpf loaded hooks=%s)" % m.chosen
        out("GPE-RESULT mode=%s result=%s hooks=%s detail=%s" % (mode, "pass" if m.ok else "fail", m.chosen or "-", detail))
    out("GPE-DONE")


if __name__ == "__main__":
    main()
