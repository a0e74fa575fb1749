package main

import "fmt"

// tlsUprobes is --tls-uprobes: auto (the default) attaches uprobes to the libssl each worker
// has mapped, so that Gunicorn serving HTTPS itself (--certfile) is measured; off loads none of
// the TLS programs (README "Gunicorn serving TLS").
type tlsUprobes struct{ on *bool }

func (v tlsUprobes) String() string {
	if v.on == nil || *v.on {
		return "auto"
	}
	return "off"
}

func (v tlsUprobes) Set(s string) error {
	switch s {
	case "auto":
		*v.on = true
	case "off":
		*v.on = false
	default:
		return fmt.Errorf("auto or off")
	}
	return nil
}

func (v tlsUprobes) Type() string { return "auto|off" }
