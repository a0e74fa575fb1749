// Package setting is the row every configuration setting is declared in: its flag, its
// environment variable, its --help group, its default, its check and the field it fills.
//
// The package that owns a setting's Config returns its rows (a Settings function, as
// node_exporter's collectors declare their own flags), and cmd/gpe-ebpf collects them, defines
// them on one flag set, reads the environment for them, checks them and prints --help from
// them. It is a package of its own because every owner and cmd need the row type and none of
// them can import another for it: adding a setting is adding one row beside its field.
package setting
