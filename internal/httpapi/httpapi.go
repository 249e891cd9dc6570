// Package httpapi is the HTTP side of a daemon: the local API (the CLI's, on a
// root-only unix socket) and the peer API (other daemons', over mutual TLS), their route
// tables, authentication, JSON and error encoding, and the one way a request reaches
// the node that must serve it: on this node, on the leader, or on the node that runs a
// workload, relayed there once at most (a relayed request is never relayed again).
//
// What a request does once it is on the right node is the daemon's (Service), the
// cluster's (Members) or the migration engine's (Target): the handlers here never run
// a daemon job and the jobs never see an http.ResponseWriter.
package httpapi

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/events"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/internal/peer"
)

// Service is the daemon behind the local API (and the same routes on the peer API,
// where another daemon relays a user's request).
type Service interface {
	// Status describes this node and the cluster as it sees it.
	Status(ctx context.Context) api.Status
	// The table's records; fresh asks to catch up with the leader first.
	Nodes(ctx context.Context, fresh bool) []api.Node
	Workloads(ctx context.Context, fresh bool) []api.Workload
	Segments(ctx context.Context, fresh bool) []api.Segment
	Migrations(ctx context.Context, fresh bool) []api.Migration
	// Workload finds a workload by id, name, host pid or unique id prefix.
	Workload(ctx context.Context, ref string) (api.Workload, error)

	// Run starts a workload on this node (local API only).
	Run(ctx context.Context, req api.RunRequest) (api.Workload, error)
	// Stop, Remove, OpenLog, Check and Move act on a workload this node runs.
	Stop(ctx context.Context, w api.Workload, req api.StopRequest) (api.Workload, error)
	Remove(ctx context.Context, w api.Workload) error
	OpenLog(ctx context.Context, w api.Workload, stream string, tail int) (Log, error)
	Check(ctx context.Context, w api.Workload, target string) (api.CheckReport, error)
	// ValidateMove refuses a move request that cannot work, wherever w runs.
	ValidateMove(ctx context.Context, w api.Workload, req api.MoveRequest) error
	// Move starts a migration and returns once it is planned, with its outcome to
	// come on the channel; events arrive through emit, which must not block.
	Move(w api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error)

	SetDrain(ctx context.Context, node string, drain bool) (api.Node, error)
	SetPinned(ctx context.Context, w api.Workload, pinned bool) (api.Workload, error)
	Probe(ctx context.Context) error
	// Revoke puts a certificate on the denylist; Revocations lists it.
	Revoke(ctx context.Context, req api.RevokeRequest) (api.Revocation, error)
	Revocations(ctx context.Context) []api.Revocation

	// Balance, LastBalance and Leave run on the leader.
	Balance(ctx context.Context, dryRun bool) (*api.BalanceReport, error)
	LastBalance(ctx context.Context) (*api.BalanceReport, error)
	Leave(ctx context.Context, req api.LeaveRequest) (api.LeaveResult, error)
}

// Log is a workload's open log.
type Log interface {
	// Copy writes the log to w (flushing it if it has a Flush method) and with follow
	// new output until the workload exits or ctx ends; it closes the log.
	Copy(ctx context.Context, w io.Writer, follow bool)
}

// Cluster says where a request must be served.
type Cluster interface {
	Self() string
	IsLeader() bool
	// LeaderAPI is the leader's peer API address, "" if this node leads or none is known.
	LeaderAPI() string
	// NodeAPI is a node's peer API address from the table, "" if it has none.
	NodeAPI(id string) string
}

// Members is what the peer API asks of the cluster, on its leader.
type Members interface {
	Join(ctx context.Context, req api.JoinRequest) error
	ApplyForwarded(ctx context.Context, from string, req api.ApplyRequest) error
}

// Target is the target side of migrations (migration.Engine); caller is the calling
// node's certificate name.
type Target interface {
	CheckTarget(ctx context.Context, req migration.TargetCheckRequest) (migration.TargetCheckResult, error)
	Prepare(ctx context.Context, caller, id string, req migration.PrepareRequest) (migration.PrepareResult, error)
	Pages(ctx context.Context, caller, id string, pages io.Reader) (migration.PagesResult, error)
	File(ctx context.Context, caller, id, workload, name string, content io.Reader) error
	Carry(ctx context.Context, caller, id, path string, content io.Reader) error
	Ping(caller, id string) error
	Images(ctx context.Context, caller, id string, images io.Reader) (migration.ImagesResult, error)
	Restore(ctx context.Context, caller, id string, req migration.RestoreRequest) (migration.RestoreResult, error)
	Resume(ctx context.Context, caller, id string) error
	Abort(ctx context.Context, caller, id string) error
}

// Config is what the handlers are built from.
type Config struct {
	Service Service
	Cluster Cluster
	Members Members     // peer API only
	Target  Target      // peer API only
	Peers   *peer.Peers // to relay requests; nil: this node serves everything itself
	// Events are the table's changes as this node saw them (GET /v1/events); nil: the
	// route answers not_ready.
	Events *events.Log
	Log    *slog.Logger
	// Revoked reports whether a peer's certificate is on the cluster's denylist: its
	// requests are refused, on connections opened before the revocation too. Nil: none is.
	Revoked func(*x509.Certificate) bool
}

// server holds the handlers' dependencies.
type server struct {
	Config
}
