package multiproc

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// headerSize is the used-size field plus its padding.
const headerSize = 8

// layout is one of the two record layouts prometheus_client has written.
type layout int

const (
	// layoutEmpty is a file with no record yet: both layouts read it alike.
	layoutEmpty layout = iota
	// layoutValue is float64 value only (prometheus_client up to 0.16).
	layoutValue
	// layoutValueTimestamp is float64 value then float64 timestamp
	// (prometheus_client 0.17 and later).
	layoutValueTimestamp
)

// tail is the size of what follows the padded key in a record.
func (l layout) tail() int {
	if l == layoutValueTimestamp {
		return 16
	}
	return 8
}

func (l layout) String() string {
	switch l {
	case layoutValue:
		return "value"
	case layoutValueTimestamp:
		return "value+timestamp"
	default:
		return "empty"
	}
}

// errCorrupt marks a file whose bytes do not follow the format; errors.Is
// tells it from an I/O error.
var errCorrupt = errors.New("corrupt multiprocess file")

// key is a decoded record key: [metric_name, name, labels, help_text].
type key struct {
	metricName string
	name       string
	labels     map[string]string
	help       string
}

// record is one sample of one file.
type record struct {
	key
	value     float64
	timestamp float64 // 0 in the value-only layout, as the newer reader has it
}

// keyCache saves decoding the same key once per process file. The decoded
// labels map is shared between records and must not be modified.
type keyCache map[string]key

// parse decodes a whole file image. data may be a shared mapping that a
// writer is appending to: parse loads the used size once, reads nothing past
// it, and loads each value with one 8-byte load, so it returns either whole
// records or an error wrapping errCorrupt. It never panics on any input and
// returns no slice of data.
func parse(data []byte, cache keyCache) ([]record, layout, error) {
	if len(data) == 0 {
		// Created but not yet sized by the writer: nothing to read yet.
		return nil, layoutEmpty, nil
	}
	if len(data) < headerSize {
		return nil, layoutEmpty, fmt.Errorf("%w: %d bytes, shorter than the header", errCorrupt, len(data))
	}
	used := int64(int32(loadUint32(data, 0)))
	switch {
	case used == 0:
		// Sized but the header not yet written; prometheus_client reads
		// such a file as empty too.
		return nil, layoutEmpty, nil
	case used < headerSize:
		return nil, layoutEmpty, fmt.Errorf("%w: used size %d is smaller than the header", errCorrupt, used)
	case used > int64(len(data)):
		return nil, layoutEmpty, fmt.Errorf("%w: used size %d beyond the %d bytes of the file (truncated)", errCorrupt, used, len(data))
	case used == headerSize:
		return nil, layoutEmpty, nil
	}
	n := int(used)
	oldRecs, oldErr := walk(data, n, layoutValue, cache)
	newRecs, newErr := walk(data, n, layoutValueTimestamp, cache)
	switch {
	case oldErr == nil && newErr == nil:
		// Only possible without records, which was handled above; be
		// conservative rather than guess.
		return nil, layoutEmpty, fmt.Errorf("%w: both layouts fit %d used bytes", errCorrupt, n)
	case oldErr == nil:
		return oldRecs, layoutValue, nil
	case newErr == nil:
		return newRecs, layoutValueTimestamp, nil
	default:
		return nil, layoutEmpty, fmt.Errorf("%w: neither layout fits (value: %v; value+timestamp: %v)", errCorrupt, oldErr, newErr)
	}
}

// walk reads the records of data[headerSize:used] assuming layout l, and fails
// unless the records tile that region exactly with well-formed keys.
func walk(data []byte, used int, l layout, cache keyCache) ([]record, error) {
	tail := l.tail()
	var recs []record
	pos := headerSize
	for pos < used {
		if used-pos < 4 {
			return nil, fmt.Errorf("record at %d: length field cut at used size %d", pos, used)
		}
		klen := int64(int32(loadUint32(data, pos)))
		pos += 4
		if klen <= 0 || klen > int64(used-pos) {
			return nil, fmt.Errorf("record at %d: key length %d out of bounds", pos-4, klen)
		}
		kend := pos + int(klen)
		pad := 8 - (int(klen)+4)%8
		vpos := kend + pad
		if vpos > used || used-vpos < tail {
			return nil, fmt.Errorf("record at %d: value beyond used size %d", pos-4, used)
		}
		for _, b := range data[kend:vpos] {
			if b != ' ' {
				return nil, fmt.Errorf("record at %d: padding is not spaces", pos-4)
			}
		}
		k, err := decodeKey(data[pos:kend], cache)
		if err != nil {
			return nil, fmt.Errorf("record at %d: %w", pos-4, err)
		}
		r := record{key: k, value: loadFloat64(data, vpos)}
		if l == layoutValueTimestamp {
			r.timestamp = loadFloat64(data, vpos+8)
		}
		recs = append(recs, r)
		pos = vpos + tail
	}
	return recs, nil
}

// decodeKey decodes a record key, strictly: a JSON array of exactly a string,
// a string, an object of strings and a string, in valid UTF-8.
func decodeKey(b []byte, cache keyCache) (key, error) {
	if k, ok := cache[string(b)]; ok {
		return k, nil
	}
	if !utf8.Valid(b) {
		return key{}, errors.New("key is not UTF-8")
	}
	if len(b) == 0 || b[0] != '[' {
		return key{}, errors.New("key is not a JSON array")
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		return key{}, fmt.Errorf("decode key: %w", err)
	}
	if len(parts) != 4 {
		return key{}, fmt.Errorf("key has %d elements, want 4", len(parts))
	}
	var k key
	for i, dst := range []*string{&k.metricName, &k.name, nil, &k.help} {
		if dst == nil {
			continue
		}
		if err := decodeString(parts[i], dst); err != nil {
			return key{}, fmt.Errorf("key element %d: %w", i, err)
		}
	}
	if !bytes.HasPrefix(bytes.TrimLeft(parts[2], " \t\r\n"), []byte("{")) {
		return key{}, errors.New("key labels are not a JSON object")
	}
	if err := json.Unmarshal(parts[2], &k.labels); err != nil {
		return key{}, fmt.Errorf("key labels: %w", err)
	}
	if k.labels == nil {
		k.labels = map[string]string{}
	}
	if cache != nil {
		cache[string(b)] = k
	}
	return k, nil
}

// decodeString decodes a JSON string and nothing else (not null).
func decodeString(raw json.RawMessage, dst *string) error {
	if !bytes.HasPrefix(bytes.TrimLeft(raw, " \t\r\n"), []byte(`"`)) {
		return errors.New("not a JSON string")
	}
	return json.Unmarshal(raw, dst)
}

// loadUint32 reads the host-order uint32 at off, with one atomic load when
// the address is aligned (always, for a mapping), so a concurrent store of
// the writer is seen whole or not at all.
func loadUint32(b []byte, off int) uint32 {
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 == 0 && off+4 <= len(b) {
		return atomic.LoadUint32((*uint32)(p))
	}
	return binary.NativeEndian.Uint32(b[off : off+4])
}

// loadFloat64 reads the host-order float64 at off like loadUint32.
func loadFloat64(b []byte, off int) float64 {
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%8 == 0 && off+8 <= len(b) {
		return math.Float64frombits(atomic.LoadUint64((*uint64)(p)))
	}
	return math.Float64frombits(binary.NativeEndian.Uint64(b[off : off+8]))
}
