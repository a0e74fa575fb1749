package export

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// ServerConfig is the metrics endpoint.
type ServerConfig struct {
	BindAddress   string
	Port          int
	MetricsPath   string
	TLSCertFile   string // with TLSKeyFile: serve HTTPS without a web config
	TLSKeyFile    string
	WebConfigFile string // exporter-toolkit web config: TLS, client certificates, basic auth
	// RetryDelays are the waits between attempts to bind a port in use (the reference's
	// 2, 4, 6, 8 s); after the last one Listen gives up.
	RetryDelays []time.Duration
}

// DefaultServerConfig is the defaults of README "Configuration".
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		BindAddress: "0.0.0.0", Port: 9090, MetricsPath: "/metrics",
		RetryDelays: []time.Duration{2 * time.Second, 4 * time.Second, 6 * time.Second, 8 * time.Second},
	}
}

// Addr is host:port.
func (c ServerConfig) Addr() string {
	return net.JoinHostPort(c.BindAddress, strconv.Itoa(c.Port))
}

// ErrPortInUse is wrapped when the port stayed taken through every retry.
var ErrPortInUse = errors.New("metrics port in use")

// Listen binds the metrics port, retrying on the schedule while it is in use.
func Listen(ctx context.Context, cfg ServerConfig, logger *slog.Logger) (net.Listener, error) {
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", cfg.Addr())
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Addr(), err)
		}
		if attempt >= len(cfg.RetryDelays) {
			return nil, fmt.Errorf("%w: port %d on %s is still taken after %d attempts", ErrPortInUse, cfg.Port, cfg.BindAddress, attempt+1)
		}
		logger.Warn("metrics port in use, retrying", "port", cfg.Port, "retry_in", cfg.RetryDelays[attempt])
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(cfg.RetryDelays[attempt]):
		}
	}
}

// Probe paths, as Prometheus and its exporters name them.
const (
	HealthyPath = "/-/healthy"
	ReadyPath   = "/-/ready"
)

// Handler serves the gatherer at the metrics path (OpenMetrics to a scraper that asks for
// application/openmetrics-text, the protobuf format to one that asks for it, the classic text
// format otherwise), a small landing page at /, and the probes:
// HealthyPath answers 200 while the process serves at all, ReadyPath 200 while ready says
// so (gpe-ebpf is attached to at least one master) and 503 otherwise. They sit behind the same
// TLS and basic auth as the metrics (Serve applies the web config to the whole handler).
func Handler(cfg ServerConfig, g prometheus.Gatherer, ready func() bool, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	if cfg.MetricsPath != HealthyPath {
		mux.HandleFunc(HealthyPath, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "gpe-ebpf is healthy.")
		})
	}
	if cfg.MetricsPath != ReadyPath {
		mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if ready != nil && !ready() {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "gpe-ebpf is not ready: no Gunicorn master attached.")
				return
			}
			fmt.Fprintln(w, "gpe-ebpf is ready.")
		})
	}
	mux.Handle(cfg.MetricsPath, gzipFast(promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:           slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling:      promhttp.ContinueOnError,
		DisableCompression: true, // gzipFast compresses, faster than promhttp's default level
		// A scraper that asks for OpenMetrics (Prometheus does, first) gets it, with the
		// _created lines of the series whose start the collector knows.
		EnableOpenMetrics:                   true,
		EnableOpenMetricsTextCreatedSamples: true,
	})))
	if cfg.MetricsPath != "/" {
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, "<html><head><title>gpe-ebpf</title></head><body><h1>gpe-ebpf</h1><p><a href=%q>Metrics</a></p></body></html>\n", cfg.MetricsPath)
		})
	}
	return mux
}

// CheckWebConfig validates an exporter-toolkit web config file up front.
func CheckWebConfig(path string) error {
	if path == "" {
		return nil
	}
	if err := web.Validate(path); err != nil {
		return fmt.Errorf("web config %s: %w", path, err)
	}
	return nil
}

// Serve serves h on l until ctx is done, then shuts down within a second.
func Serve(ctx context.Context, l net.Listener, cfg ServerConfig, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() {
		switch {
		case cfg.WebConfigFile != "":
			file := cfg.WebConfigFile
			errc <- web.Serve(l, srv, &web.FlagConfig{WebConfigFile: &file}, logger)
		case cfg.TLSCertFile != "":
			cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
			if err != nil {
				errc <- fmt.Errorf("load TLS key pair: %w", err)
				return
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			errc <- srv.ServeTLS(l, "", "")
		default:
			errc <- srv.Serve(l)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}
