package multiproc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

func TestParse(t *testing.T) {
	k1 := jsonKey("c", "c_total", map[string]string{"a": "b"}, "help")
	k2 := jsonKey("h", "h_bucket", map[string]string{"le": "+Inf", "x": "☃\"\\\n"}, "")
	k3 := `["g", "g", {}, "python spacing"]` // len 33: 4+33 needs 3 bytes of padding
	withBytes := func(b []byte, off int, patch ...byte) []byte {
		b = bytes.Clone(b)
		copy(b[off:], patch)
		return b
	}
	setUsed := func(b []byte, used uint32) []byte {
		b = bytes.Clone(b)
		binary.NativeEndian.PutUint32(b, used)
		return b
	}
	old := encode(layoutValue, 4096, encodeRecord{key: k1, value: 1}, encodeRecord{key: k2, value: 2.5}, encodeRecord{key: k3, value: -3})
	newer := encode(layoutValueTimestamp, 0, encodeRecord{key: k1, value: 1, ts: 1e9}, encodeRecord{key: k3, value: 7})
	tests := []struct {
		name       string
		data       []byte
		wantLayout layout
		wantValues []float64
		wantTS     []float64
		wantErr    bool
	}{
		{name: "zero-length file", data: nil, wantLayout: layoutEmpty},
		{name: "sized, header not written", data: make([]byte, 4096), wantLayout: layoutEmpty},
		{name: "header only", data: encode(layoutValue, 4096), wantLayout: layoutEmpty},
		{name: "value layout", data: old, wantLayout: layoutValue, wantValues: []float64{1, 2.5, -3}, wantTS: []float64{0, 0, 0}},
		{name: "value+timestamp layout", data: newer, wantLayout: layoutValueTimestamp, wantValues: []float64{1, 7}, wantTS: []float64{1e9, 0}},
		{name: "one record, value layout", data: encode(layoutValue, 0, encodeRecord{key: k3, value: 4}), wantLayout: layoutValue, wantValues: []float64{4}, wantTS: []float64{0}},
		{name: "one record, value+timestamp layout", data: encode(layoutValueTimestamp, 0, encodeRecord{key: k3, value: 4, ts: 5}), wantLayout: layoutValueTimestamp, wantValues: []float64{4}, wantTS: []float64{5}},
		{name: "shorter than the header", data: []byte{16, 0, 0}, wantErr: true},
		{name: "used smaller than the header", data: setUsed(old, 4), wantErr: true},
		{name: "used negative", data: setUsed(old, 0xffffffff), wantErr: true},
		{name: "truncated below used", data: old[:len(encode(layoutValue, 0, encodeRecord{key: k1}))+10], wantErr: true},
		{name: "used cuts a key", data: setUsed(old, uint32(len(encode(layoutValue, 0, encodeRecord{key: k1})))+12), wantErr: true},
		{name: "key length beyond used", data: withBytes(old, 8, 0xff, 0xff, 0, 0), wantErr: true},
		{name: "key length zero", data: withBytes(old, 8, 0, 0, 0, 0), wantErr: true},
		{name: "key not JSON", data: withBytes(old, 12, 'x'), wantErr: true},
		{name: "padding not spaces", data: withBytes(old, 12+len(k1), 0), wantErr: true},
		{name: "key not UTF-8", data: withBytes(old, 14, 0xff), wantErr: true},
		{name: "garbage", data: bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 1024), wantErr: true},
		{name: "key of wrong shape", data: encode(layoutValue, 0, encodeRecord{key: `["a", "b", ["c"], "d"]`}), wantErr: true},
		{name: "key with three elements", data: encode(layoutValue, 0, encodeRecord{key: `["a", "b", {}]`}), wantErr: true},
		{name: "key with a null name", data: encode(layoutValue, 0, encodeRecord{key: `["a", null, {}, ""]`}), wantErr: true},
		{name: "label value not a string", data: encode(layoutValue, 0, encodeRecord{key: `["a", "a", {"x": 1}, ""]`}), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, l, err := parse(tt.data, keyCache{})
			if tt.wantErr {
				if !errors.Is(err, errCorrupt) {
					t.Fatalf("err = %v, want errCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l != tt.wantLayout {
				t.Errorf("layout %v, want %v", l, tt.wantLayout)
			}
			if len(recs) != len(tt.wantValues) {
				t.Fatalf("%d records, want %d", len(recs), len(tt.wantValues))
			}
			for i, r := range recs {
				if r.value != tt.wantValues[i] || r.timestamp != tt.wantTS[i] {
					t.Errorf("record %d = %v@%v, want %v@%v", i, r.value, r.timestamp, tt.wantValues[i], tt.wantTS[i])
				}
			}
		})
	}
	t.Run("key decoded", func(t *testing.T) {
		recs, _, err := parse(old, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := recs[1]; r.metricName != "h" || r.name != "h_bucket" || r.labels["x"] != "☃\"\\\n" || r.labels["le"] != "+Inf" || r.help != "" {
			t.Errorf("record = %+v", r)
		}
	})
}

// TestBadFilesSkippedAndCounted puts unreadable files next to good ones:
// the good ones are still served, every bad one counts once per scrape.
func TestBadFilesSkippedAndCounted(t *testing.T) {
	good := encode(layoutValue, 4096, encodeRecord{key: jsonKey("c", "c_total", nil, "C."), value: 3})
	tests := []struct {
		name       string
		files      map[string][]byte
		wantErrors float64
	}{
		{name: "only the good file"},
		{name: "truncated file", files: map[string][]byte{"counter_2.db": good[:20]}, wantErrors: 1},
		{name: "garbage file", files: map[string][]byte{"counter_2.db": bytes.Repeat([]byte("garbage!"), 64)}, wantErrors: 1},
		{name: "garbage and truncated gauge", files: map[string][]byte{
			"counter_2.db":       []byte("\x10\x00\x00\x00\x00\x00\x00\x00junkjunk"),
			"gauge_livesum_3.db": good[:30],
		}, wantErrors: 2},
		{name: "unknown type and odd gauge name", files: map[string][]byte{"foo_2.db": good, "gauge_2.db": good}, wantErrors: 2},
		{name: "empty files are not errors", files: map[string][]byte{"counter_2.db": {}, "summary_2.db": make([]byte, 4096)}},
		{name: "other files are ignored", files: map[string][]byte{"notes.txt": []byte("x"), ".counter_9.db": []byte("x")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "counter_1.db"), good, 0o644); err != nil {
				t.Fatal(err)
			}
			for name, data := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			c := NewCollector(dir, nil, nil)
			compareExpositions(t, "# TYPE c_total counter\nc_total 3\n", gather(t, c))
			// gather ran Collect twice (once above, once in errorCount).
			if got := errorCount(t, c); got != 2*tt.wantErrors {
				t.Errorf("%s = %v after two scrapes, want %v", errorsMetric, got, 2*tt.wantErrors)
			}
		})
	}
	t.Run("missing directory", func(t *testing.T) {
		c := NewCollector(filepath.Join(t.TempDir(), "nope"), nil, nil)
		if got := errorCount(t, c); got != 1 {
			t.Errorf("%s = %v, want 1", errorsMetric, got)
		}
	})
	t.Run("no directory configured", func(t *testing.T) {
		c := NewCollector("", nil, nil)
		if got := errorCount(t, c); got != 0 {
			t.Errorf("%s = %v, want 0", errorsMetric, got)
		}
	})
}

// TestConcurrentAppend reads a file through readFile while a writer in the
// same shared mapping appends records and flips values between two bit
// patterns that differ in both halves, as prometheus_client does (record
// first, used size after, values with one aligned store). Every read must
// succeed and every value must be one the writer stored.
func TestConcurrentAppend(t *testing.T) {
	const size = 1 << 16
	path := filepath.Join(t.TempDir(), "counter_1.db")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(m)
	store64 := func(off int, v uint64) { atomic.StoreUint64((*uint64)(unsafe.Pointer(&m[off])), v) }
	store32 := func(off int, v uint32) { atomic.StoreUint32((*uint32)(unsafe.Pointer(&m[off])), v) }
	a, b := math.Float64bits(1.0), math.Float64bits(-123456.789012345)
	store32(0, headerSize)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		used := headerSize
		var positions []int
		for i := 0; i < 50_000_000; i++ {
			if i%1024 == 0 {
				select {
				case <-stop:
					return
				default:
				}
			}
			if i%100 == 0 && len(positions) < 200 {
				key := jsonKey("c", "c_total", map[string]string{"n": strconv.Itoa(i)}, "C.")
				rec := encode(layoutValue, 0, encodeRecord{key: key, value: math.Float64frombits(a)})[headerSize:]
				copy(m[used:], rec)
				positions = append(positions, used+len(rec)-8)
				used += len(rec)
				store32(0, uint32(used))
			}
			v := a
			if i%2 == 1 {
				v = b
			}
			for _, p := range positions {
				store64(p, v)
			}
		}
	}()
	defer wg.Wait()
	defer close(stop)
	maxRecs := 0
	for reads := 0; reads < 1000; reads++ {
		recs, _, err := readFile(path, keyCache{})
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		for _, r := range recs {
			if bits := math.Float64bits(r.value); bits != a && bits != b {
				t.Fatalf("read %d: torn value %x", reads, bits)
			}
		}
		maxRecs = max(maxRecs, len(recs))
	}
	t.Logf("up to %d records seen while appending", maxRecs)
}

// TestPythonWriterWhileReading runs a real prometheus_client process that
// keeps adding series and incrementing counters while the Collector's reader
// reads its file: no read may fail and no counter may go back or be torn.
func TestPythonWriterWhileReading(t *testing.T) {
	py := requirePython(t)
	dir := t.TempDir()
	script := `
import os, sys
from prometheus_client import Counter
c = Counter('work', 'Work.', ['n'])
for i in range(60000):
    c.labels(str(i % 400)).inc()
`
	cmd := exec.Command(py, "-c", script)
	cmd.Env = append(os.Environ(), "PROMETHEUS_MULTIPROC_DIR="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	path := filepath.Join(dir, fmt.Sprintf("counter_%d.db", cmd.Process.Pid))
	last := map[string]float64{}
	deadline := time.After(2 * time.Minute)
	reads := 0
	for finished := false; !finished; {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("writer: %v", err)
			}
			finished = true
		case <-deadline:
			t.Fatal("writer did not finish in 2 minutes")
		default:
		}
		recs, _, err := readFile(path, keyCache{})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		reads++
		for _, r := range recs {
			n := r.labels["n"]
			if r.value != math.Trunc(r.value) || r.value < last[n] {
				t.Fatalf("read %d: work{n=%q} = %v after %v", reads, n, r.value, last[n])
			}
			last[n] = r.value
		}
	}
	recs, _, err := readFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, r := range recs {
		total += r.value
	}
	if len(recs) != 400 || total != 60000 {
		t.Errorf("final: %d series totalling %v, want 400 totalling 60000", len(recs), total)
	}
	t.Logf("%d reads while prometheus_client wrote", reads)
}

// FuzzParse checks that no input makes the reader or the merge panic, and
// that what parses walks back to the same used size.
func FuzzParse(f *testing.F) {
	k := jsonKey("h", "h_bucket", map[string]string{"le": "1.0", "x": "ü\"\n"}, "H.")
	f.Add([]byte{})
	f.Add(encode(layoutValue, 64))
	f.Add(encode(layoutValue, 0, encodeRecord{key: k, value: 1}, encodeRecord{key: `["g", "g", {}, ""]`, value: 2}))
	f.Add(encode(layoutValueTimestamp, 0, encodeRecord{key: k, value: 1, ts: 2}))
	f.Add(encode(layoutValueTimestamp, 128, encodeRecord{key: `["a", "a", {"pid": "x"}, ""]`, value: math.NaN(), ts: 1}))
	f.Add([]byte("\x20\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00[]  \x00\x00\x00\x00\x00\x00\xf0\x3f"))
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	c := NewCollector("", nil, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, l, err := parse(data, keyCache{})
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("error not errCorrupt: %v", err)
			}
			return
		}
		if l == layoutEmpty && len(recs) > 0 {
			t.Fatalf("empty layout with %d records", len(recs))
		}
		for _, typ := range []processFile{
			{typ: "counter"}, {typ: "histogram"}, {typ: "summary"},
			{typ: "gauge", mode: "all", pid: "1"}, {typ: "gauge", mode: "min", pid: "1"},
			{typ: "gauge", mode: "mostrecent", pid: "1"},
		} {
			typ.recs = recs
			c.build([]processFile{typ, typ})
		}
	})
}
