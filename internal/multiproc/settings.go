package multiproc

import "github.com/gpe-ebpf/gpe-ebpf/internal/setting"

// Settings is the row of the directory NewCollector reads (dir; "" reads none).
func Settings(dir *string) []setting.Setting {
	return []setting.Setting{{Name: "multiproc-dir", Env: "PROMETHEUS_MULTIPROC_DIR", Group: setting.Metrics, Value: setting.String(dir),
		Help:  "serve the app's prometheus_client multiprocess files from this directory too",
		Check: func(name string) error { return setting.Exists(name, *dir) }}}
}
