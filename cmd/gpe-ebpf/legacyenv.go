package main

import (
	"log/slog"
	"strings"
)

// legacyEnv lists the Python exporter's environment variables (its settings and YAML loader)
// that gpe-ebpf does not read, each with what to do instead. Someone moving over may still
// set them and expect an effect: gpe-ebpf says once, at start, that they are ignored. The
// variables it does read are the Env of its setting rows (Config.settings).
var legacyEnv = []struct{ name, instead string }{
	{"PROMETHEUS_SSL_CLIENT_CAFILE", "client_ca_file in --web.config.file"},
	{"PROMETHEUS_SSL_CLIENT_CAPATH", "client_ca_file in --web.config.file"},
	{"PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED", "client_auth_type in --web.config.file"},
	{"REDIS_TTL_SECONDS", "timestamp keys expire after 3 x --redis-forward-interval; :latest never"},
	{"REDIS_TTL_DISABLED", "timestamp keys expire after 3 x --redis-forward-interval; :latest never"},
	{"SIDECAR_MODE", "gpe-ebpf runs beside Gunicorn in any case; gpe-ebpf redis-collect serves what hosts forwarded"},
	{"CLEANUP_DB_FILES", "gpe-ebpf writes no multiprocess files; it only reads --multiproc-dir"},
	{"GUNICORN_TIMEOUT", "the timeout is Gunicorn's; gpe-ebpf sees its aborts (state aborting)"},
	{"GUNICORN_KEEPALIVE", "the keep-alive is Gunicorn's; gpe-ebpf needs no setting"},
}

// warnLegacyEnv logs one warning naming the Python exporter's variables that are set but not
// honoured, or nothing when none is.
func warnLegacyEnv(lookup func(string) (string, bool), logger *slog.Logger) {
	var names, instead []string
	for _, v := range legacyEnv {
		if val, ok := lookup(v.name); ok && val != "" {
			names = append(names, v.name)
			instead = append(instead, v.name+": "+v.instead)
		}
	}
	if len(names) == 0 {
		return
	}
	logger.Warn("environment variables of the Python exporter that gpe-ebpf does not honour are set; they have no effect",
		"variables", strings.Join(names, ","), "instead", strings.Join(instead, "; "))
}
