// Package daemon wires a migshm node together: configuration, the local API on a
// root-only unix socket for the CLI, the peer API between daemons over mutual TLS,
// forwarding of writes to the Raft leader, the leader loop that runs the balancer,
// sd_notify, and orderly shutdown. It is built in the "Cluster" milestone on top of
// shmowner, migrate and balancer.
package daemon
