"""Writes multiprocess files byte for byte, in either record layout.

usage: write_layout.py DIR < spec.json

spec: {"files": {"<file name>": {"layout": "value" | "value+timestamp",
                                 "records": [[metric_name, name, {labels}, help, value, timestamp], ...]}}}

"value" is the layout of prometheus_client up to 0.16; "value+timestamp" the
one of 0.17 and later (mmap_dict.py there: value then timestamp, both
float64, after the key padded with spaces to 8-byte alignment). Keys are
json.dumps([metric_name, name, labels, help], sort_keys=True) as mmap_key
makes them. Files are preallocated like MmapedDict does (zeros past used).
"""
import json
import os
import struct
import sys

_INITIAL_MMAP_SIZE = 1 << 16

workdir = sys.argv[1]
spec = json.load(sys.stdin)
for name, f in spec['files'].items():
    body = b''
    for metric_name, sample, labels, help_text, value, ts in f['records'] or []:
        key = json.dumps([metric_name, sample, labels, help_text], sort_keys=True).encode('utf-8')
        padded = key + b' ' * (8 - (len(key) + 4) % 8)
        if f['layout'] == 'value':
            body += struct.pack(f'i{len(padded)}sd', len(key), padded, value)
        else:
            body += struct.pack(f'i{len(padded)}sdd', len(key), padded, value, ts)
    used = 8 + len(body)
    data = struct.pack('i', used) + b'\0' * 4 + body
    size = _INITIAL_MMAP_SIZE
    while size < len(data):
        size *= 2
    with open(os.path.join(workdir, name), 'wb') as out:
        out.write(data + b'\0' * (size - len(data)))
