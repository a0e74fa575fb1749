package export

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Settings are the rows of c: where the metrics are served, and with what TLS.
func Settings(c *ServerConfig) []setting.Setting {
	return append([]setting.Setting{
		{Name: "metrics-port", Env: "PROMETHEUS_METRICS_PORT", Group: setting.Endpoint, Value: setting.Int(&c.Port),
			Help: "port of the metrics endpoint",
			Check: func(name string) error {
				return setting.Require(c.Port >= 1 && c.Port <= 65535, "invalid %s %d: must be 1-65535", name, c.Port)
			}},
		{Name: "bind-address", Env: "PROMETHEUS_BIND_ADDRESS", Group: setting.Endpoint, Value: setting.String(&c.BindAddress),
			Help: "address of the metrics endpoint",
			Check: func(name string) error {
				return setting.Require(net.ParseIP(c.BindAddress) != nil || c.BindAddress == "localhost", "invalid %s %q: must be an IP address", name, c.BindAddress)
			}},
		{Name: "metrics-path", Group: setting.Endpoint, Value: setting.String(&c.MetricsPath),
			Help: "path of the metrics endpoint",
			Check: func(name string) error {
				return setting.Require(strings.HasPrefix(c.MetricsPath, "/"), "invalid %s %q: must start with /", name, c.MetricsPath)
			}},
	}, TLSSettings(c)...)
}

// WorkersSettings is the row of the workers a master should have, CollectorConfig's
// ExpectedWorkers (n; 0: not exported).
func WorkersSettings(n *int) []setting.Setting {
	return []setting.Setting{{Name: "workers", Env: "GUNICORN_WORKERS", Group: setting.Metrics, Value: setting.Int(n),
		Help:  "workers expected; exported as gunicorn_master_workers_expected",
		Check: func(name string) error { return setting.Require(*n >= 0, "invalid %s %d: must be 0 or more", name, *n) }}}
}

// TLSSettings are the rows of c's TLS: a key pair, or an exporter-toolkit web config. Serve
// uses nothing else of c, so redis-collect serves with these too.
func TLSSettings(c *ServerConfig) []setting.Setting {
	return []setting.Setting{
		{Name: "tls-cert-file", Env: "PROMETHEUS_SSL_CERTFILE", Group: setting.Endpoint, Value: setting.String(&c.TLSCertFile),
			Help:  "serve HTTPS with this certificate (with --tls-key-file)",
			Check: func(name string) error { return setting.Exists(name, c.TLSCertFile) }},
		{Name: "tls-key-file", Env: "PROMETHEUS_SSL_KEYFILE", Group: setting.Endpoint, Value: setting.String(&c.TLSKeyFile),
			Help:  "key of --tls-cert-file",
			Check: func(name string) error { return checkKeyPair(name, c.TLSCertFile, c.TLSKeyFile) }},
		{Name: "web.config.file", Group: setting.Endpoint, Value: setting.String(&c.WebConfigFile),
			Help: "exporter-toolkit web config (TLS, client certificates, basic auth)",
			Check: func(name string) error {
				if c.TLSCertFile != "" && c.WebConfigFile != "" {
					return fmt.Errorf("--tls-cert-file and %s are exclusive: put the certificate in the web config", name)
				}
				if err := CheckWebConfig(c.WebConfigFile); err != nil {
					return fmt.Errorf("invalid %s: %v", name, err)
				}
				return nil
			}},
	}
}

// checkKeyPair loads the pair now: a bad certificate is a usage error found at start, not a
// failure of the metrics server after the probes are attached.
func checkKeyPair(name, cert, key string) error {
	if (cert == "") != (key == "") {
		return fmt.Errorf("--tls-cert-file (PROMETHEUS_SSL_CERTFILE) and %s go together", name)
	}
	if cert == "" {
		return nil
	}
	if err := setting.Exists(name, key); err != nil {
		return err
	}
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		return fmt.Errorf("invalid --tls-cert-file/--tls-key-file (PROMETHEUS_SSL_CERTFILE/PROMETHEUS_SSL_KEYFILE): %v", err)
	}
	return nil
}

// OTLPSettings are the rows of c: where and how often the metrics are pushed.
func OTLPSettings(c *OTLPConfig) []setting.Setting {
	return []setting.Setting{
		{Name: "otlp-endpoint", Group: setting.OTLP, Value: setting.String(&c.Endpoint),
			Help: "push the metrics over OTLP/HTTP (protobuf) to this URL, such as http://collector:4318 (path /v1/metrics when none is given)",
			Check: func(name string) error {
				if c.Endpoint == "" {
					return nil
				}
				if _, _, _, err := CheckOTLPEndpoint(c.Endpoint); err != nil {
					return fmt.Errorf("invalid %s: %w", name, err)
				}
				return nil
			}},
		{Name: "otlp-interval", Group: setting.OTLP, Value: setting.Duration(&c.Interval), Help: "time between OTLP pushes",
			Check: func(name string) error {
				return setting.Require(c.Interval >= time.Second, "invalid %s: at least 1s", name)
			}},
	}
}
