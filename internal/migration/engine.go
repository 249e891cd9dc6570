// Package migration is the migration engine: this node's part of moving a workload to
// another node, as its source (check, pre-copy, freeze, ship, commit or roll back) and
// as its target (prepare, receive, restore stopped, resume or remove), the journal each
// side keeps on disk, and the recovery that settles a migration nobody drives any more
// from its replicated record. It talks to the cluster, the supervisor and the other
// side through the small interfaces below (go-criu's phaul: Local and Remote), and to
// CRIU and images through package migrate.
//
// Every phase is a Raft entry, validated by the leader's FSM against the migration's
// epoch:
//
//	planned -> precopy -> frozen -> shipped -> restored -> done | aborted
//
// The commit point is the done entry. Two rules make "exactly one copy runs" hold
// through any crash, restart, election or network cut:
//
//   - Only the source applies done, and only after the target holds the restored tree
//     stopped with its segments verified. The target resumes its copy only once the
//     table says done; the source kills its stopped copy only once the table says done.
//   - The source resumes its stopped copy only once the table says aborted. An apply
//     whose outcome is unknown (a leader change) is settled by reading the record back
//     from the leader before either copy is touched.
//
// A daemon that restarts finds its part from its journal and the replicated record
// (recover.go): the source rolls a migration it no longer drives back (aborted, then
// resume), the target resumes or removes what it restored according to the record.
package migration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"time"

	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/supervisor"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/workload"
)

// Table is what the engine needs of the cluster.
type Table interface {
	Self() string
	Table() *shmowner.Table
	// Apply commits through the leader; ApplyHere only on this node, the leader.
	Apply(ctx context.Context, t shmowner.MessageType, body any) error
	ApplyHere(ctx context.Context, t shmowner.MessageType, body any) error
	// CatchUp waits until this node applied what the leader has.
	CatchUp(ctx context.Context) bool
	IsMember() bool
}

// Workloads is what the engine needs of this node's supervisor. A migration moves an IPC
// group's tree: the group init and every member under it.
type Workloads interface {
	Running(id string) (supervisor.Record, bool)
	Record(id string) (supervisor.Record, bool)
	GroupMembers(group string) []supervisor.Record
	Adopt(recs []supervisor.Record, groupInit *workload.Process) error
	Release(group string, ids []string, removeFiles, removeGroupDir bool)
	Dir(id string) string
}

// Peers reaches the target node of a migration at its peer API address.
type Peers interface {
	Target(addr string) Remote
}

// Config is what an Engine is built from.
type Config struct {
	WorkloadDir string // the supervisor's workload dir (the target writes shipped log files there)
	ImageDir    string // images and pre-copied pages; should be a tmpfs
	DataDir     string // the journal lives in DataDir/migrations
	CRIU        string // criu binary ("" : migrate.FindCRIU's default)
	Log         *slog.Logger
	// ProgressTimeout is how long a target may not answer: while the workload is frozen
	// the move then aborts and the workload resumes here; while it runs the move waits
	// and says it is stalled. 0: DefaultProgressTimeout.
	ProgressTimeout time.Duration
	// Network is what this node offers workloads with an address of their own (the
	// ip-parent and ip-pool settings): such a workload moving here gets its macvlan back
	// on Network.Parent. The zero Network: such workloads cannot move here.
	Network ownnet.Network
}

// DefaultProgressTimeout is Config.ProgressTimeout's default.
const DefaultProgressTimeout = 2 * time.Second

// Engine runs this node's part of migrations, as source and as target.
type Engine struct {
	cfg   Config
	self  string
	table Table
	wl    Workloads
	peers Peers
	log   *slog.Logger
	criu  *migrate.CRIU // its checks are cached (CachedCheck, CPUInfo)

	// ctx is the migrations' own: they do not end with the request that started them,
	// only when the daemon stops (Close).
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	driving map[string]string       // workload id -> migration id this process drives as source
	targets map[string]*targetState // migration id -> this node's target side
}

// New returns the engine of the node table.Self().
func New(cfg Config, table Table, wl Workloads, peers Peers) *Engine {
	if cfg.ProgressTimeout <= 0 {
		cfg.ProgressTimeout = DefaultProgressTimeout
	}
	e := &Engine{cfg: cfg, self: table.Self(), table: table, wl: wl, peers: peers,
		log: cfg.Log.With("component", "migrate"), criu: &migrate.CRIU{Path: cfg.CRIU},
		driving: map[string]string{}, targets: map[string]*targetState{}}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e
}

// Close cancels the migrations this node drives (each rolls back or settles as it
// does on any failure) and waits for them.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
}

func (e *Engine) goFn(fn func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
}

func newMigrationID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "m" + hex.EncodeToString(b[:])
}
