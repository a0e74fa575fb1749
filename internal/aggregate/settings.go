package aggregate

import (
	"fmt"
	"strings"

	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Settings are the rows of c: how long series stay and how requests are labelled.
func Settings(c *Config) []setting.Setting {
	return []setting.Setting{
		{Name: "stale-after", Group: setting.Metrics, Value: setting.Duration(&c.StaleAfter),
			Help: "drop the series of an exited worker after this long",
			Check: func(name string) error {
				return setting.Require(c.StaleAfter > 0, "invalid %s: must be positive", name)
			}},
		{Name: "max-endpoints", Group: setting.Metrics, Value: setting.Int(&c.MaxEndpoints),
			Help: `distinct endpoint values per master; the rest become "other"`,
			Check: func(name string) error {
				return setting.Require(c.MaxEndpoints >= 1, "invalid %s: must be at least 1", name)
			}},
		{Name: "max-peers", Group: setting.Metrics, Value: setting.Int(&c.MaxPeers),
			Help: `distinct peer values of downstream calls per master; the rest become "other"`,
			Check: func(name string) error {
				return setting.Require(c.MaxPeers >= 1, "invalid %s: must be at least 1", name)
			}},
		{Name: "endpoint-mode", Group: setting.Metrics, Value: setting.String((*string)(&c.EndpointMode)),
			Help: "normalized (ids become {id}) or raw",
			Check: func(name string) error {
				m := c.EndpointMode
				return setting.Require(m == EndpointNormalized || m == EndpointRaw, "invalid %s %q: normalized or raw", name, m)
			}},
		{Name: "route", Group: setting.Metrics, Value: setting.Strings(&c.Routes),
			Help:  "route template such as /users/{id}/orders/{order} (repeatable); wins over the id heuristic",
			Check: func(name string) error { return checkPaths(name, c.Routes) }},
		{Name: "ignore-route", Group: setting.Metrics, Value: setting.Strings(&c.IgnoreRoutes),
			Help:  "route template of requests not to count, such as /healthz (repeatable); counted in gpe_ebpf_ignored_requests_total",
			Check: func(name string) error { return checkPaths(name, c.IgnoreRoutes) }},
		{Name: "native-histograms", Group: setting.Metrics, Value: setting.Bool(&c.NativeHistograms),
			Help: "give the duration, queue-wait and size histograms a native (exponential) form too, for a scraper that asks for protobuf; the classic buckets stay"},
	}
}

func checkPaths(name string, templates []string) error {
	for _, t := range templates {
		if !strings.HasPrefix(t, "/") {
			return fmt.Errorf("invalid %s %q: must start with /", name, t)
		}
	}
	return nil
}
