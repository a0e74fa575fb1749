package main

// flagGroups and envFlags are gpe-ebpf's rows as the tests look at them: --help's sections
// with their flags, and the environment variables read.
var flagGroups, envFlags = views()

func views() (groups []struct {
	title string
	flags []string
}, envs []struct{ flag, env string }) {
	cfg := defaultConfig()
	for _, s := range cfg.settings() {
		if len(groups) == 0 || groups[len(groups)-1].title != s.Group.String() {
			groups = append(groups, struct {
				title string
				flags []string
			}{title: s.Group.String()})
		}
		g := &groups[len(groups)-1]
		g.flags = append(g.flags, s.Name)
		if s.Env != "" {
			envs = append(envs, struct{ flag, env string }{s.Name, s.Env})
		}
	}
	return groups, envs
}
