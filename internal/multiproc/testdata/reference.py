"""Reference side of the multiproc tests: run with Debian's /usr/bin/python3.

usage: reference.py DIR REFDIR DEAD_PIDS SCENARIO_FILE

Sets PROMETHEUS_MULTIPROC_DIR=DIR, makes prometheus_client's multiprocess
values take their pid from as_pid() so that one interpreter plays several
processes, and runs SCENARIO_FILE (Python using the real metric classes).
Then copies DIR to REFDIR, calls mark_process_dead there for every pid of
DEAD_PIDS (comma-separated, may be empty) and prints what
MultiProcessCollector over REFDIR renders with generate_latest. DIR is left
untouched for the Go side, which must give the same answer by being told
which pids are dead.
"""
import os
import shutil
import sys

workdir, refdir, dead, scenario = sys.argv[1:5]
os.environ['PROMETHEUS_MULTIPROC_DIR'] = workdir

from prometheus_client import values  # noqa: E402

_current = {'pid': 1}
values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _current['pid'])


def as_pid(pid):
    """From now on, metric writes go to the files of process pid."""
    _current['pid'] = pid


from prometheus_client import (  # noqa: E402
    CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest, multiprocess,
)

with open(scenario, encoding='utf-8') as f:
    code = f.read()
exec(compile(code, scenario, 'exec'), {
    'as_pid': as_pid, 'Counter': Counter, 'Gauge': Gauge,
    'Histogram': Histogram, 'Summary': Summary, 'registry': CollectorRegistry(),
})

shutil.copytree(workdir, refdir)
for pid in filter(None, dead.split(',')):
    multiprocess.mark_process_dead(int(pid), refdir)
reg = CollectorRegistry()
multiprocess.MultiProcessCollector(reg, path=refdir)
sys.stdout.buffer.write(generate_latest(reg))
