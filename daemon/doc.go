// Package daemon is migshmd's composition root: its configuration (flags, environment,
// TOML file), opening a node (certificate, Raft store, listeners) and building its parts
// (cluster, supervisor, migration engine, HTTP APIs, metrics), the service the APIs call,
// the loops a node runs (membership, load reports, recovery; as leader: node states and
// the balancer), sd_notify, and orderly shutdown.
package daemon
