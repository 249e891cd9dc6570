package daemon

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/httpapi"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// service is the daemon as its APIs see it (httpapi.Service): what each request does
// on the node that serves it.
type service Daemon

var _ httpapi.Service = (*service)(nil)

func (s *service) d() *Daemon { return (*Daemon)(s) }

func (s *service) table(ctx context.Context, fresh bool) *shmowner.Table {
	if fresh {
		return s.cluster.FreshTable(ctx)
	}
	return s.cluster.Table()
}

func (s *service) Status(ctx context.Context) api.Status {
	st := s.cluster.Status()
	st.Version = Version
	st.Uptime = time.Since(s.started).Round(time.Second).String()
	st.Workloads = s.sup.RunningCount()
	st.Addresses = addressStatus(s.network, s.cluster.Table())
	return st
}

// addressStatus is what n offers and what the table's running workloads hold; nil if
// neither is anything.
func addressStatus(n ownnet.Network, t *shmowner.Table) *api.AddressStatus {
	as := &api.AddressStatus{Held: []api.HeldAddress{}}
	taken := map[netip.Addr]bool{}
	for _, w := range t.Workloads() {
		p, err := netip.ParsePrefix(w.Addr)
		if err != nil || w.State == record.WorkloadExited {
			continue
		}
		if !taken[p.Addr()] { // the members of a group share theirs: listed once
			as.Held = append(as.Held, api.HeldAddress{Addr: w.Addr, Workload: w.ID, Name: w.Name, Node: w.Node})
		}
		taken[p.Addr()] = true
	}
	slices.SortFunc(as.Held, func(a, b api.HeldAddress) int {
		return netip.MustParsePrefix(a.Addr).Addr().Compare(netip.MustParsePrefix(b.Addr).Addr())
	})
	if n.Enabled() {
		as.Parent, as.Network, as.Pool = n.Parent, n.Subnet.String(), n.Pool.String()
		if n.Gateway.IsValid() {
			as.Gateway = n.Gateway.String()
		}
		as.Free = n.Free(func(a netip.Addr) bool { return taken[a] })
	} else if len(as.Held) == 0 {
		return nil
	}
	return as
}

func (s *service) Nodes(ctx context.Context, fresh bool) []api.Node {
	return s.table(ctx, fresh).Nodes()
}

func (s *service) Workloads(ctx context.Context, fresh bool) []api.Workload {
	return s.table(ctx, fresh).Workloads()
}

func (s *service) Segments(ctx context.Context, fresh bool) []api.Segment {
	return s.table(ctx, fresh).Segments()
}

func (s *service) Migrations(ctx context.Context, fresh bool) []api.Migration {
	return s.table(ctx, fresh).Migrations()
}

func (s *service) Workload(ctx context.Context, ref string) (api.Workload, error) {
	return resolve(s.cluster.FreshTable(ctx), ref)
}

// resolve finds a workload by id, name, unique id prefix, or host pid of a process on
// the node that runs it.
func resolve(t *shmowner.Table, ref string) (record.Workload, error) {
	if ref == "" {
		return record.Workload{}, fmt.Errorf("no workload named: %w", api.ErrBadRequest)
	}
	ws := t.Workloads()
	for _, w := range ws {
		if w.ID == ref || w.Name == ref {
			return w, nil
		}
	}
	if pid, err := strconv.Atoi(ref); err == nil && pid > 0 {
		// Only running workloads: exited ones keep their pids, which the kernel reuses.
		for _, w := range ws {
			if w.State == record.WorkloadExited {
				continue
			}
			if w.InitPid == pid {
				return w, nil
			}
			for _, p := range w.Pids {
				if p == pid {
					return w, nil
				}
			}
		}
	}
	var match []record.Workload
	for _, w := range ws {
		if len(ref) >= 3 && len(w.ID) > len(ref) && w.ID[:len(ref)] == ref {
			match = append(match, w)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	if len(match) > 1 {
		return record.Workload{}, fmt.Errorf("%q matches %d workloads; give more of the id: %w", ref, len(match), api.ErrBadRequest)
	}
	return record.Workload{}, fmt.Errorf("no workload %q (see `migshm ps`): %w", ref, record.ErrUnknownWorkload)
}

func (s *service) Run(ctx context.Context, req api.RunRequest) (api.Workload, error) {
	return s.sup.Start(ctx, req)
}

func (s *service) Stop(ctx context.Context, w api.Workload, req api.StopRequest) (api.Workload, error) {
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = s.cfg.StopTimeout
	}
	return s.sup.Stop(ctx, w.ID, timeout)
}

func (s *service) Remove(ctx context.Context, w api.Workload) error {
	return s.sup.Remove(ctx, w.ID)
}

func (s *service) OpenLog(ctx context.Context, w api.Workload, stream string, tail int) (httpapi.Log, error) {
	return s.sup.OpenLog(w.ID, stream, tail)
}

func (s *service) Check(ctx context.Context, w api.Workload, target string) (api.CheckReport, error) {
	return s.engine.Check(ctx, w, target)
}

func (s *service) ValidateMove(ctx context.Context, w api.Workload, req api.MoveRequest) error {
	return migration.Validate(s.cluster.FreshTable(ctx), w, req)
}

func (s *service) Move(w api.Workload, req api.MoveRequest, emit func(api.MoveEvent)) (<-chan error, error) {
	return s.engine.Move(w, req, emit)
}

// SetDrain cordons a node (it takes no new workloads; the balancer moves every workload
// it can off it) or lifts the cordon. The cordon is a flag of its own: a node that is
// down keeps it and comes back draining.
func (s *service) SetDrain(ctx context.Context, id string, drain bool) (api.Node, error) {
	op := map[bool]string{true: "drain", false: "undrain"}[drain]
	n, ok := s.cluster.FreshTable(ctx).Node(id)
	switch {
	case !ok:
		return n, fmt.Errorf("%s: no node %q (see `migshm nodes`): %w", op, id, record.ErrUnknownNode)
	case n.Drain == drain:
		return n, nil
	case n.State == record.NodeLeft:
		return n, fmt.Errorf("%s %s: the node has left the cluster: %w", op, id, record.ErrNodeNotActive)
	}
	if err := s.cluster.Apply(ctx, shmowner.SetNodeDrainType, shmowner.SetNodeDrainRequest{ID: id, Drain: drain}); err != nil {
		return n, fmt.Errorf("%s %s: %w", op, id, err)
	}
	s.log.Info("node cordon changed", "peer", id, "drain", drain, "state", n.State, "by", "operator")
	n, _ = s.cluster.FreshTable(ctx).Node(id)
	return n, nil
}

// Revoke puts a node certificate on the cluster's denylist. It refuses this node's own
// certificate: revoke it from another node, after this one has a new certificate
// (`migshm tls node`, then SIGHUP).
func (s *service) Revoke(ctx context.Context, req api.RevokeRequest) (api.Revocation, error) {
	serial, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(req.Serial, ":", "")), "0x"), 16)
	if !ok || serial.Sign() <= 0 {
		return api.Revocation{}, fmt.Errorf("revoke: serial %q: want the certificate's serial number in hex: %w", req.Serial, api.ErrBadRequest)
	}
	if pki.ValidateName(req.Node) != nil {
		return api.Revocation{}, fmt.Errorf("revoke: node %q: want the name the certificate was issued for: %w", req.Node, api.ErrBadRequest)
	}
	if serial.Cmp(s.tls.Serial()) == 0 {
		return api.Revocation{}, fmt.Errorf("revoke: %s is the certificate of %s, the node serving this request; renew it "+
			"(`migshm tls node %s`, copy, `systemctl reload migshmd`) and revoke the old one from another node: %w",
			serial.Text(16), s.cfg.NodeID, s.cfg.NodeID, api.ErrBadRequest)
	}
	rev := api.Revocation{Serial: serial.Text(16), Node: req.Node, Reason: req.Reason, At: time.Now().UnixNano()}
	if err := s.cluster.Apply(ctx, shmowner.RevokeType, shmowner.RevokeRequest{Revocation: rev}); err != nil {
		return api.Revocation{}, fmt.Errorf("revoke %s: %w", rev.Serial, err)
	}
	s.log.Warn("certificate revoked", "serial", rev.Serial, "peer", rev.Node, "reason", rev.Reason, "by", "operator")
	for _, r := range s.cluster.FreshTable(ctx).Revocations() {
		if r.Serial == rev.Serial {
			return r, nil
		}
	}
	return rev, nil
}

func (s *service) Revocations(ctx context.Context) []api.Revocation {
	return s.cluster.FreshTable(ctx).Revocations()
}

// SetPinned pins a workload (nothing moves it) or unpins it.
func (s *service) SetPinned(ctx context.Context, w api.Workload, pinned bool) (api.Workload, error) {
	if err := s.cluster.Apply(ctx, shmowner.SetWorkloadPinnedType, shmowner.SetWorkloadPinnedRequest{ID: w.ID, Pinned: pinned}); err != nil {
		return w, fmt.Errorf("%s %s: %w", map[bool]string{true: "pin", false: "unpin"}[pinned], w.Name, err)
	}
	s.log.Info("workload pinned", "workload", w.Name, "pinned", pinned)
	w, _ = s.cluster.FreshTable(ctx).Workload(w.ID)
	return w, nil
}

// Probe commits a no-op entry through the leader.
func (s *service) Probe(ctx context.Context) error {
	return s.cluster.Apply(ctx, shmowner.ProbeType, shmowner.ProbeRequest{Seq: uint64(time.Now().UnixNano())})
}

func (s *service) Balance(ctx context.Context, dryRun bool) (*api.BalanceReport, error) {
	return s.d().balancePass(ctx, dryRun, false)
}

func (s *service) LastBalance(ctx context.Context) (*api.BalanceReport, error) {
	return s.d().lastBalance(ctx)
}

// Leave removes a node from Raft and the table (on the leader). A node that still runs
// workloads is refused unless req.Force.
func (s *service) Leave(ctx context.Context, req api.LeaveRequest) (api.LeaveResult, error) {
	t := s.cluster.FreshTable(ctx)
	if _, ok := t.Node(req.Node); !ok && !s.cluster.InConfig(req.Node) {
		return api.LeaveResult{}, fmt.Errorf("leave: node %q is not in the cluster: %w", req.Node, record.ErrUnknownNode)
	}
	if !req.Force {
		var running []string
		for _, w := range t.Workloads() {
			if w.Node == req.Node && w.State != record.WorkloadExited {
				running = append(running, w.Name)
			}
		}
		if len(running) > 0 {
			return api.LeaveResult{}, fmt.Errorf("node %s still runs %d workload(s) %v: stop or move them first, or use --force "+
				"(they keep running but the cluster forgets them): %w", req.Node, len(running), running, api.ErrStillRunning)
		}
	}
	if err := s.cluster.Remove(ctx, req.Node); err != nil {
		return api.LeaveResult{}, err
	}
	s.log.Info("node left the cluster", "peer", req.Node)
	return api.LeaveResult{Node: req.Node}, nil
}
