package daemon

import (
	"context"
	"time"

	"github.com/migshm/migshm/internal/cluster"
	"github.com/migshm/migshm/internal/retention"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// downAfter is how long the leader waits without contact before it marks a node down.
const downAfter = 3 * time.Second

// leaderLoop does the leader's housekeeping (consul's monitorLeadership): on gaining
// leadership it waits for a Barrier, so its table is current; then it keeps node states
// in line with what Raft's heartbeats see (a node the leader cannot reach for downAfter
// is marked down, and active again once heartbeats resume) and aborts migrations whose
// source is down.
func (d *Daemon) leaderLoop(ctx context.Context) {
	events := make(chan cluster.Event, 128)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	d.goFn(func() {
		d.cluster.Watch(wctx, func(e cluster.Event) {
			select {
			case events <- e:
			default: // Raft's own observers drop too; the ticker below catches up
			}
		})
	})

	leading := false
	// failing holds, per peer whose heartbeats fail, since when. Raft reports a failure
	// only when an RPC times out (10s across a cut link) and the LastContact it gives
	// then may be recent, so the ticker marks down a peer that failed for downAfter
	// without resuming, not only the failure event itself.
	failing := map[string]time.Time{}
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-events:
			switch e.Kind {
			case cluster.LeaderChanged:
				clear(failing) // what a former leadership saw says nothing now
				if e.Leading && !leading {
					d.becameLeader(ctx)
				}
				leading = e.Leading
			case cluster.PeerFailed:
				since := e.LastContact
				if since.IsZero() {
					since = time.Now()
				}
				if f, ok := failing[e.Peer]; ok && f.Before(since) {
					since = f
				}
				failing[e.Peer] = since
				if leading && time.Since(since) > downAfter {
					d.markDown(ctx, e.Peer)
				}
			case cluster.PeerResumed:
				delete(failing, e.Peer)
				if leading {
					d.setNodeState(ctx, e.Peer, record.NodeDown, record.NodeActive)
				}
			}
		case <-check.C:
			// LeaderChanged may come before Watch registered its observer.
			if now := d.cluster.IsLeader(); now != leading {
				if now {
					d.becameLeader(ctx)
				}
				leading = now
			}
			if leading {
				for peer, since := range failing {
					if time.Since(since) > downAfter {
						d.markDown(ctx, peer)
					}
				}
				d.engine.AbortOrphans(ctx)
				d.prune(ctx)
			}
		}
	}
}

// markDown marks a node the leader cannot reach down. A draining node is down too (its
// migrations get aborted); its Drain flag stays, so it comes back draining.
func (d *Daemon) markDown(ctx context.Context, id string) {
	d.setNodeState(ctx, id, record.NodeActive, record.NodeDown)
	d.setNodeState(ctx, id, record.NodeDraining, record.NodeDown)
}

// becameLeader makes the new leader's table current and gives nodes another leader
// marked down a fresh chance: heartbeats mark them down again if they are.
func (d *Daemon) becameLeader(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.cluster.Barrier(bctx); err != nil {
		d.log.Warn("leader barrier failed", "err", err)
		return
	}
	d.log.Info("leading the cluster", "term", d.cluster.Term())
	for _, n := range d.cluster.Table().Nodes() {
		if n.State == record.NodeDown && d.cluster.InConfig(n.ID) {
			d.setNodeState(bctx, n.ID, record.NodeDown, record.NodeActive)
		}
	}
}

// setNodeState moves a node from state from to state to, on this node as the leader
// (what it saw of a node must not be applied by another leader), and does nothing if
// the node is in any other state. A cordoned node made active becomes draining (fsm.go).
func (d *Daemon) setNodeState(ctx context.Context, id string, from, to record.NodeState) {
	n, ok := d.cluster.Table().Node(id)
	if !ok || n.State != from {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.cluster.ApplyHere(cctx, shmowner.SetNodeStateType, shmowner.SetNodeStateRequest{ID: id, State: to}); err != nil {
		d.log.Warn("set node state", "peer", id, "state", to, "err", err)
		return
	}
	d.log.Info("node state changed", "peer", id, "from", from, "to", to)
}

// prune removes from the table what the retention policy says is old history, one
// batch per call: the leader calls it every second, so a backlog drains in batches.
func (d *Daemon) prune(ctx context.Context) {
	req, ok := retention.Plan(d.cluster.Table(), d.cfg.Retention, time.Now())
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.cluster.ApplyHere(cctx, shmowner.PruneType, req); err != nil {
		d.log.Warn("prune old records", "err", err)
		return
	}
	d.log.Info("pruned old records", "migrations", len(req.Migrations), "workloads", len(req.Workloads))
}
