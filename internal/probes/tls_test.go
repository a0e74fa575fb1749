package probes

import (
	"strings"
	"testing"
)

// TestLibsslOf: the libssl of a /proc/PID/maps listing, as the process names it.
func TestLibsslOf(t *testing.T) {
	for _, tc := range []struct {
		name, maps, want, id string
		err                  bool
	}{
		{"debian", `55d0c0a00000-55d0c0a6c000 r--p 00000000 fe:01 1311 /usr/bin/python3.11
7f1c2a000000-7f1c2a01c000 r--p 00000000 fe:01 5280 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1c2b000000-7f1c2b01c000 r--p 00000000 fe:01 5290 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b01c000-7f1c2b077000 r-xp 0001c000 fe:01 5290 /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffd1b1f0000-7ffd1b211000 rw-p 00000000 00:00 0 [stack]`, "/usr/lib/x86_64-linux-gnu/libssl.so.3", "fe:01 5290 /usr/lib/x86_64-linux-gnu/libssl.so.3", false},
		{"openssl 1.1", "7f00-7f10 r-xp 00000000 08:01 77 /lib/libssl.so.1.1\n", "/lib/libssl.so.1.1", "08:01 77 /lib/libssl.so.1.1", false},
		{"space in path", "7f00-7f10 r-xp 00000000 08:01 77 /opt/my app/libssl.so.3\n", "/opt/my app/libssl.so.3", "08:01 77 /opt/my app/libssl.so.3", false},
		{"none", "7f00-7f10 r-xp 00000000 08:01 77 /usr/lib/libc.so.6\n7f20-7f30 rw-p 00000000 00:00 0\n", "", "", false},
		{"not libssl3 lookalike", "7f00-7f10 r-xp 00000000 08:01 77 /usr/lib/libssl3.so\n", "", "", false},
		{"deleted", "7f00-7f10 r-xp 00000000 08:01 77 /usr/lib/libssl.so.3 (deleted)\n", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, id, err := libsslOf(strings.NewReader(tc.maps))
			if got != tc.want || id != tc.id || (err != nil) != tc.err {
				t.Errorf("libsslOf = %q, %q, %v; want %q, %q (error %v)", got, id, err, tc.want, tc.id, tc.err)
			}
		})
	}
}

// TestTLSPrograms: both program pairs are in the object, and every cookie names one function.
func TestTLSPrograms(t *testing.T) {
	spec, err := loadGpe()
	if err != nil {
		t.Fatal(err)
	}
	for _, multi := range []bool{true, false} {
		for _, name := range tlsPrograms(multi) {
			if spec.Programs[name] == nil {
				t.Errorf("no program %s in the object", name)
			}
		}
	}
	seen := map[uint64]string{}
	for _, f := range tlsFuncs {
		if other, ok := seen[f.cookie]; ok || f.cookie == 0 {
			t.Errorf("%s: cookie %d (also %q)", f.symbol, f.cookie, other)
		}
		seen[f.cookie] = f.symbol
	}
}
