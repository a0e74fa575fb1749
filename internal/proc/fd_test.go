package proc

import "testing"

func TestParseInodeLink(t *testing.T) {
	for _, tc := range []struct {
		target, kind string
		want         uint64
		ok           bool
	}{
		{"socket:[12345]", "socket", 12345, true},
		{"net:[4026531840]", "net", 4026531840, true},
		{"socket:[12345]", "net", 0, false},
		{"pipe:[12345]", "socket", 0, false},
		{"socket:[]", "socket", 0, false},
		{"socket:[0]", "socket", 0, false},
		{"socket:[12x]", "socket", 0, false},
		{"socket:[123", "socket", 0, false},
		{"/tmp/socket:[123]", "socket", 0, false},
		{"anon_inode:[eventpoll]", "socket", 0, false},
		{"", "socket", 0, false},
	} {
		t.Run(tc.target+"/"+tc.kind, func(t *testing.T) {
			got, ok := parseInodeLink(tc.target, tc.kind)
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseInodeLink(%q, %q) = %d, %v; want %d, %v", tc.target, tc.kind, got, ok, tc.want, tc.ok)
			}
		})
	}
}
