package migration

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/internal/supervisor"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/workload"
)

// The peer API of a migration's target: the routes the source calls, as http.ServeMux
// patterns ({id} is the migration's id).
const (
	PathCheck   = "/peer/v1/migrations/target-check"
	PathPrepare = "/peer/v1/migrations/{id}/prepare"
	PathPages   = "/peer/v1/migrations/{id}/pages"  // body: a pre-copy round's page stream
	PathFiles   = "/peer/v1/migrations/{id}/files"  // ?workload=ID&name=FILE; body: the file
	PathCarry   = "/peer/v1/migrations/{id}/carry"  // ?path=PATH; body: a file the target said it lacks
	PathImages  = "/peer/v1/migrations/{id}/images" // body: the image stream
	PathRestore = "/peer/v1/migrations/{id}/restore"
	PathResume  = "/peer/v1/migrations/{id}/resume"
	PathAbort   = "/peer/v1/migrations/{id}/abort"
	PathPing    = "/peer/v1/migrations/{id}/ping" // the target is there and holds the migration
)

// TargetCheckRequest is what the source asks the target before a move.
type TargetCheckRequest struct {
	Workload    string             `json:"workload"`
	Group       string             `json:"group"` // its IPC group, whose outdated files the target may replace
	MemoryBytes uint64             `json:"memory_bytes"`
	CPUInfo     []byte             `json:"cpuinfo"`
	Files       []migrate.FileNeed `json:"files"`
	Addr        string             `json:"addr,omitempty"` // the tree's own address, if it has one
}

// TargetCheckResult is what the target found.
type TargetCheckResult struct {
	FreeBytes uint64        `json:"free_bytes"`
	Problems  []api.Problem `json:"problems"`
	// Carry are the files and directories the target lacks and a move would carry.
	Carry []migrate.FileNeed `json:"carry,omitempty"`
}

// PrepareRequest opens a migration on the target.
type PrepareRequest struct {
	// Records are the source's records of the group's members, the one the move was
	// asked for first.
	Records []supervisor.Record `json:"records"`
	Dir     string              `json:"dir"`   // the source's workload dir of Records[0]
	Token   string              `json:"token"` // content of Dir/.migration-ID, if the target can read it the dir is shared
	// GroupToken is the content of the group dir's .migration-ID: the same test for it.
	GroupToken string `json:"group_token"`
	// Files are what the tree reopens by path (migrate.Inspection.Files): the target
	// checks them again and says which files it lacks.
	Files []migrate.FileNeed `json:"files"`
	// ReserveBytes is about how much the final images will be: the target touches that
	// much memory while pre-copy runs and gives it back as they come (migrate.Reserve).
	// 0: none (no pre-copy).
	ReserveBytes uint64 `json:"reserve_bytes,omitempty"`
}

// PrepareResult says whether the target sees the source's workload dir and group dir,
// and which files it lacks (the directories it made already): the source sends those
// while the tree is frozen.
type PrepareResult struct {
	Shared      bool     `json:"shared"`
	GroupShared bool     `json:"group_shared"`
	Carry       []string `json:"carry,omitempty"`
}

// PagesResult is the target's receipt of a pre-copy round.
type PagesResult struct {
	Pages int64 `json:"pages"`
}

// ImagesResult is the target's receipt of the images.
type ImagesResult struct {
	Files    int   `json:"files"`
	Bytes    int64 `json:"bytes"`
	RefPages int64 `json:"ref_pages"`
	// Parts time the target's side: receiving and writing the image files, page
	// files rebuilt from the pre-copied pages included.
	Parts []record.WindowStep `json:"parts,omitempty"`
}

// RestoreRequest asks the target to restore the shipped tree, stopped.
type RestoreRequest struct {
	Segments []workload.Segment `json:"segments"` // digests at the freeze
}

// RestoreResult names the restored tree.
type RestoreResult struct {
	Pid       int   `json:"pid"`
	RestoreNS int64 `json:"restore_ns"`
	// Parts time the target's side of the restore, in order.
	Parts []record.WindowStep `json:"parts,omitempty"`
	// Members is the host pid of each member's init in the restored tree, by workload id.
	Members map[string]int `json:"members,omitempty"`
}

// Remote is the target side of migrations as the source sees it: one node.
type Remote interface {
	Check(ctx context.Context, req TargetCheckRequest) (TargetCheckResult, error)
	Prepare(ctx context.Context, id string, req PrepareRequest) (PrepareResult, error)
	Pages(ctx context.Context, id string, pages io.Reader) (PagesResult, error)
	File(ctx context.Context, id, workload, name string, content io.Reader) error
	Carry(ctx context.Context, id, file string, content io.Reader) error
	Images(ctx context.Context, id string, images io.Reader) (ImagesResult, error)
	Restore(ctx context.Context, id string, req RestoreRequest) (RestoreResult, error)
	Resume(ctx context.Context, id string) error
	Abort(ctx context.Context, id string) error
	Ping(ctx context.Context, id string) error
}

// clientRemote is a Remote over a peer API client.
type clientRemote struct{ c *api.Client }

// newRemote returns the Remote that calls the peer API through c.
func newRemote(c *api.Client) Remote { return clientRemote{c} }

func path(pattern, id string) string { return strings.Replace(pattern, "{id}", url.PathEscape(id), 1) }

func (r clientRemote) Check(ctx context.Context, req TargetCheckRequest) (TargetCheckResult, error) {
	var res TargetCheckResult
	return res, r.c.Call(ctx, http.MethodPost, PathCheck, req, &res)
}

func (r clientRemote) Prepare(ctx context.Context, id string, req PrepareRequest) (PrepareResult, error) {
	var res PrepareResult
	return res, r.c.Call(ctx, http.MethodPost, path(PathPrepare, id), req, &res)
}

func (r clientRemote) Pages(ctx context.Context, id string, pages io.Reader) (PagesResult, error) {
	var res PagesResult
	return res, r.c.Upload(ctx, path(PathPages, id), pages, &res)
}

func (r clientRemote) File(ctx context.Context, id, workload, name string, content io.Reader) error {
	return r.c.Upload(ctx, path(PathFiles, id)+"?"+url.Values{"workload": {workload}, "name": {name}}.Encode(), content, nil)
}

func (r clientRemote) Carry(ctx context.Context, id, file string, content io.Reader) error {
	return r.c.Upload(ctx, path(PathCarry, id)+"?"+url.Values{"path": {file}}.Encode(), content, nil)
}

func (r clientRemote) Images(ctx context.Context, id string, images io.Reader) (ImagesResult, error) {
	var res ImagesResult
	return res, r.c.Upload(ctx, path(PathImages, id), images, &res)
}

func (r clientRemote) Restore(ctx context.Context, id string, req RestoreRequest) (RestoreResult, error) {
	var res RestoreResult
	return res, r.c.Call(ctx, http.MethodPost, path(PathRestore, id), req, &res)
}

func (r clientRemote) Resume(ctx context.Context, id string) error {
	return r.c.Call(ctx, http.MethodPost, path(PathResume, id), struct{}{}, nil)
}

func (r clientRemote) Ping(ctx context.Context, id string) error {
	return r.c.Call(ctx, http.MethodGet, path(PathPing, id), nil, nil)
}

func (r clientRemote) Abort(ctx context.Context, id string) error {
	return r.c.Call(ctx, http.MethodPost, path(PathAbort, id), struct{}{}, nil)
}

// OverPeers returns the Peers that reach targets through the daemon's peer dialer.
func OverPeers(p *peer.Peers) Peers { return peerTargets{p} }

type peerTargets struct{ p *peer.Peers }

func (t peerTargets) Target(addr string) Remote { return newRemote(t.p.Client(addr)) }
