package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/atomicfile"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// ownAddress settles the address of its own a new workload gets (base.Addr): req.IP,
// or in a group that runs already the group's, which its members share. A new address
// is held in the table before anything uses it: base is saved and registered with it
// (no pids yet; a restart finds it never ran and records it exited), and the network
// namespace the workload is to start in is returned. reserved says base is in the table,
// for the caller to remove should the start fail.
func (s *Supervisor) ownAddress(ctx context.Context, table *shmowner.Table, req api.RunRequest, base *Record) (ns *os.File, reserved bool, err error) {
	if req.Group != "" {
		for _, w := range table.Workloads() {
			if w.Group != req.Group || w.State == record.WorkloadExited {
				continue
			}
			// The group's network is its init's; members join it.
			if req.IP != "" && req.IP != ownnet.Auto && req.IP != w.Addr && !sameAddr(req.IP, w.Addr) {
				have := "the node's network"
				if w.Addr != "" {
					have = "the address " + w.Addr
				}
				return nil, false, fmt.Errorf("run: ipc group %s has %s, which its members share; leave --ip out to join it: %w",
					req.Group, have, api.ErrBadRequest)
			}
			base.Addr = w.Addr
			return nil, false, nil
		}
	}
	if req.IP == "" {
		return nil, false, nil
	}
	held := map[netip.Addr]bool{}
	for _, w := range table.Workloads() {
		if p, err := netip.ParsePrefix(w.Addr); err == nil && w.State != record.WorkloadExited {
			held[p.Addr()] = true
		}
	}
	taken := func(a netip.Addr) bool { return held[a] }
	base.StartedAt = time.Now().UnixNano()
	for {
		addr, err := s.cfg.Network.Resolve(req.IP, taken)
		if err != nil {
			return nil, false, fmt.Errorf("run on %s: %w: %w", s.cfg.Self, err, api.ErrBadRequest)
		}
		base.Addr = addr.String()
		if err := atomicfile.Write(filepath.Join(s.dir, base.ID, recordFile), mustJSON(*base), 0o600); err != nil {
			return nil, false, fmt.Errorf("run: save record: %w", err)
		}
		err = s.table.Apply(ctx, shmowner.UpsertWorkloadType, shmowner.UpsertWorkloadRequest{Workload: base.workload()})
		if errors.Is(err, record.ErrAddressTaken) && req.IP == ownnet.Auto {
			held[addr.Addr()] = true // another node's run took it a moment ago
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("run: hold address %s: %w", addr, err)
		}
		ns, err := ownnet.Create(s.cfg.Network.Config(addr), "")
		if err != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = s.table.Apply(rctx, shmowner.RemoveWorkloadType, shmowner.RemoveWorkloadRequest{ID: base.ID})
			return nil, false, fmt.Errorf("run on %s: %w", s.cfg.Self, err)
		}
		s.log.Info("workload address held", "workload", base.Name, "addr", addr, "parent", s.cfg.Network.Parent)
		return ns, true, nil
	}
}

// sameAddr reports whether the --ip request req names the address of prefix have.
func sameAddr(req, have string) bool {
	p, err := netip.ParsePrefix(have)
	if err != nil {
		return false
	}
	if a, err := netip.ParseAddr(req); err == nil {
		return a == p.Addr()
	}
	q, err := netip.ParsePrefix(req)
	return err == nil && q == p
}
