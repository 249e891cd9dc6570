package migration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Validate refuses what is wrong with a move request before anything runs: a missing
// or unknown target, a workload that exited, is pinned or already runs there, tuning
// out of range.
func Validate(table *shmowner.Table, w record.Workload, req api.MoveRequest) error {
	if req.Target == "" {
		return fmt.Errorf("move: no target node given: %w", api.ErrBadRequest)
	}
	if _, ok := table.Node(req.Target); !ok {
		return fmt.Errorf("move: no node %q (see `migshm nodes`): %w", req.Target, record.ErrUnknownNode)
	}
	if w.State == record.WorkloadExited {
		return fmt.Errorf("move: workload %s exited (status %d); there is nothing to move: %w", w.Name, w.ExitStatus, api.ErrNotRunning)
	}
	if w.Node == req.Target {
		return fmt.Errorf("move: workload %s already runs on %s: %w", w.Name, w.Node, record.ErrSameNode)
	}
	if w.Pinned {
		return fmt.Errorf("move: workload %s is pinned to %s; `migshm unpin %s` first: %w", w.Name, w.Node, w.Name, api.ErrNotMovable)
	}
	if req.MaxDowntimeMS < 0 || req.MaxRounds < 0 || req.MaxFreezeMS < 0 {
		return fmt.Errorf("move: max downtime, max rounds and max freeze must not be negative: %w", api.ErrBadRequest)
	}
	if req.MaxRounds > 100 {
		return fmt.Errorf("move: max rounds %d: at most 100: %w", req.MaxRounds, api.ErrBadRequest)
	}
	return nil
}

// Check finds every reason workload w (running on this node) cannot move to target
// now. It changes nothing. An error means the check itself could not run.
func (e *Engine) Check(ctx context.Context, w record.Workload, target string) (api.CheckReport, error) {
	rep, _, _, err := e.check(ctx, w, target)
	return rep, err
}

// check is Check, also returning the files the tree reopens by path.
// check also returns what the tree reopens by path and its memory (private resident
// and shm: about what a dump writes).
func (e *Engine) check(ctx context.Context, w record.Workload, target string) (rep api.CheckReport, files []migrate.FileNeed, memory uint64, err error) {
	rep = api.CheckReport{Workload: w.ID, Name: w.Name, Source: e.self, Target: target, Problems: []api.Problem{}}
	add := func(reason, format string, args ...any) {
		rep.Problems = append(rep.Problems, api.Problem{Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	defer func() { rep.OK = len(rep.Problems) == 0 }()
	table := e.table.Table()
	tn, ok := table.Node(target)
	switch {
	case !ok:
		return rep, nil, 0, fmt.Errorf("no node %q (see `migshm nodes`): %w", target, record.ErrUnknownNode)
	case target == e.self:
		return rep, nil, 0, fmt.Errorf("workload %s already runs on %s: %w", w.Name, target, record.ErrSameNode)
	case tn.State != record.NodeActive:
		add("target-state", "node %s is %s; only an active node takes workloads", target, tn.State)
		return rep, files, memory, nil
	}
	if mg, ok := table.ActiveMigration(w.ID); ok {
		add("migration-in-flight", "migration %s of %s (%s -> %s) is in phase %s; wait for it (`migshm migrations`)",
			mg.ID, w.Name, mg.Source, mg.Target, mg.Phase)
		return rep, files, memory, nil
	}
	if _, running := e.wl.Running(w.ID); !running {
		return rep, nil, 0, fmt.Errorf("workload %s is not running on %s: %w", w.Name, e.self, api.ErrNotRunning)
	}
	rep.Group = w.Group
	recs, err := e.group(table, w)
	switch {
	case errors.Is(err, record.ErrGroupSplit):
		add("group-split", "%v", err)
		return rep, files, memory, nil
	case errors.Is(err, api.ErrNotMovable):
		add("group", "%v", err)
		return rep, files, memory, nil
	case err != nil:
		return rep, nil, 0, fmt.Errorf("check %s: %w", w.Name, err)
	}
	dirs := make([]string, len(recs))
	for i, r := range recs {
		rep.Members = append(rep.Members, r.Name)
		dirs[i] = e.wl.Dir(r.ID)
	}
	caps, err := e.criu.CachedCheck(ctx)
	if err != nil {
		add("criu-source", "CRIU does not work on %s: %v", e.self, err)
	}
	tree, err := migrate.Preflight{}.Check(recs[0].GroupPid)
	var nm *migrate.NotMovableError
	switch {
	case errors.As(err, &nm):
		add(string(nm.Reason), "%s", nm.Detail)
		return rep, files, memory, nil
	case err != nil:
		return rep, nil, 0, fmt.Errorf("check %s: %w", w.Name, err)
	}
	rep.Processes = len(tree.Procs)
	// The engine ships the members' own files (logs) itself; everything else the tree
	// reopens by path must already be on the target.
	in, err := migrate.Inspect("/proc", tree, dirs...)
	if err != nil {
		return rep, nil, 0, fmt.Errorf("check %s: %w", w.Name, err)
	}
	files = in.Files
	rep.Segments = len(in.Segments)
	ownAddr := recs[0].Addr != "" && ownnet.Own(recs[0].GroupPid, "")
	for _, b := range in.Blockers {
		if !ownAddr || !migrate.CarriedWithOwnNetwork(b.Reason) {
			add(b.Reason, "%s", b.Detail)
		}
	}
	if recs[0].Addr != "" && !ownAddr {
		add("own-address", "the table gives %s the address %s but its tree runs on the node's network; restart it with --ip", w.Name, recs[0].Addr)
	}
	if in.InetSockets > 0 && caps != nil && !caps.InetSockets {
		add("criu-inet-sockets", "the workload holds %d TCP/UDP socket(s) and CRIU %s on %s cannot dump sockets on this kernel "+
			"(CRIU < 4.2 on Linux >= 6.16): run scripts/setup, which installs CRIU >= 4.2, or point --criu at one",
			in.InetSockets, caps.Version, e.self)
	}
	// The dump writes about the tree's memory into tmpfs here while the tree is frozen
	// (and pre-copy's twin holds as much before it): without room, the dump would fail
	// or wake the OOM killer in the frozen window.
	if avail := availableMemory(); avail > 0 && in.MemoryBytes > avail {
		add("source-memory", "node %s has %s available; the dump of %s writes about %s of images here while it is frozen: free memory here first",
			e.self, humanBytes(avail), w.Name, humanBytes(in.MemoryBytes))
	}
	// The target holds the images (in tmpfs) and the restored memory at once.
	memory = in.MemoryBytes
	mem := in.MemoryBytes * 2
	rep.MemoryBytes = mem
	req := TargetCheckRequest{Workload: w.ID, Group: w.Group, MemoryBytes: mem, Files: in.Files, Addr: recs[0].Addr}
	if req.CPUInfo, err = e.criu.CPUInfo(ctx); err != nil {
		add("criu-source", "CRIU cannot describe this node's CPU: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	res, err := e.peers.Target(tn.APIAddr).Check(cctx, req)
	if err != nil {
		add("target-unreachable", "node %s does not answer: %v", target, err)
		return rep, files, memory, nil
	}
	rep.TargetFree = res.FreeBytes
	rep.Problems = append(rep.Problems, res.Problems...)
	for _, n := range res.Carry {
		rep.Carries = append(rep.Carries, api.CarriedFile{Path: n.Path, Bytes: n.Bytes, Dir: n.Dir, Replaces: n.Replace})
	}
	return rep, files, memory, nil
}

// CheckTarget answers a source's check on this node, the candidate target.
func (e *Engine) CheckTarget(ctx context.Context, req TargetCheckRequest) (TargetCheckResult, error) {
	res := TargetCheckResult{Problems: []api.Problem{}}
	add := func(reason, format string, args ...any) {
		res.Problems = append(res.Problems, api.Problem{Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	if _, err := e.criu.CachedCheck(ctx); err != nil {
		add("criu-target", "CRIU does not work on %s: %v", e.self, err)
	} else if len(req.CPUInfo) > 0 {
		if err := e.criu.CPUInfoCheck(ctx, req.CPUInfo); errors.Is(err, migrate.ErrCPUIncompatible) {
			add("cpu", "the CPU of %s lacks features the workload may use: %v", e.self, err)
		} else if err != nil {
			add("criu-target", "CRIU on %s cannot compare the CPUs: %v", e.self, err)
		}
	}
	mi, err := procfs.ReadMeminfo("/proc/meminfo")
	if err != nil {
		return res, err
	}
	free := mi.MemAvailable
	res.FreeBytes = free
	// Keep a margin: the images and the pre-copied pages live in tmpfs next to the
	// restored memory for a while.
	if need := req.MemoryBytes; need > free {
		add("target-memory", "node %s has %s available; moving this workload needs about %s (its memory, and its images while it restores)",
			e.self, humanBytes(free), humanBytes(need))
	}
	problems, carry := migrate.CheckFiles("/", e.self, req.Files, e.isLeftover(req.Group))
	for _, p := range problems {
		add("file-"+p.Reason, "%s", p.Detail)
	}
	res.Carry = carry
	if p := e.targetNetwork(req.Addr); p != "" {
		add("target-network", "%s", p)
	}
	if _, running := e.wl.Running(req.Workload); running {
		add("target-has-workload", "node %s still runs a copy of %s", e.self, req.Workload)
	}
	return res, nil
}

// targetNetwork says why this node cannot give a workload its address addr (its own,
// "" for none), or "" if it can.
func (e *Engine) targetNetwork(addr string) string {
	if addr == "" {
		return ""
	}
	n := e.cfg.Network
	p, err := netip.ParsePrefix(addr)
	switch {
	case err != nil:
		return fmt.Sprintf("the workload's address %q is malformed", addr)
	case !n.Enabled():
		return fmt.Sprintf("node %s offers no addresses of their own (no ip-parent setting), so the workload could not keep %s there: "+
			"set ip-parent and ip-pool on %s, or move it to a node that has them", e.self, p.Addr(), e.self)
	case !n.Subnet.Contains(p.Addr()) || n.Subnet.Bits() != p.Bits():
		return fmt.Sprintf("node %s is on the network %v (ip-parent %s), not the workload's %v: its address %s would reach no one there",
			e.self, n.Subnet, n.Parent, p.Masked(), p.Addr())
	}
	return ""
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// notMovable turns a failed check into an error that lists every problem.
func notMovable(rep api.CheckReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s cannot move to %s:", rep.Name, rep.Target)
	for _, p := range rep.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s", p.Reason, p.Detail)
	}
	return fmt.Errorf("%s: %w", b.String(), api.ErrNotMovable)
}
