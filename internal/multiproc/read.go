package multiproc

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
)

// readFile maps path read-only and parses it in place. Mapping, rather than
// read(2), is what makes the 8-byte value loads atomic with respect to the
// writer's stores into the same pages.
func readFile(path string, cache keyCache) (recs []record, l layout, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, layoutEmpty, err
	}
	defer f.Close()

	// The writer grows the file before it stores a larger used size, so a
	// used size beyond the mapping means the file grew after fstat: look
	// again once, then call it truncated.
	for attempt := 0; ; attempt++ {
		fi, err := f.Stat()
		if err != nil {
			return nil, layoutEmpty, fmt.Errorf("stat: %w", err)
		}
		size := fi.Size()
		if size == 0 {
			return nil, layoutEmpty, nil
		}
		if size > 1<<31 {
			// used is an int32: no valid file needs more than that.
			size = 1 << 31
		}
		data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			return nil, layoutEmpty, fmt.Errorf("mmap: %w", err)
		}
		recs, l, err = parseMapped(data, cache)
		if uerr := syscall.Munmap(data); uerr != nil && err == nil {
			err = fmt.Errorf("munmap: %w", uerr)
		}
		if err != nil && errors.Is(err, errCorrupt) && attempt == 0 && grew(f, size) {
			continue
		}
		return recs, l, err
	}
}

// grew reports whether the file is now larger than size.
func grew(f *os.File, size int64) bool {
	fi, err := f.Stat()
	return err == nil && fi.Size() > size
}

// parseMapped is parse over a mapping. If someone truncates the file under
// the mapping, touching the lost pages raises SIGBUS; SetPanicOnFault turns
// that into a panic this goroutine recovers as an error instead of a crash.
func parseMapped(data []byte, cache keyCache) (recs []record, l layout, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			recs, l, err = nil, layoutEmpty, fmt.Errorf("%w: fault reading the mapping (file shrunk?): %v", errCorrupt, r)
		}
	}()
	return parse(data, cache)
}
