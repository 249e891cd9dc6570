package daemon

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// downAfter is how long the leader waits without contact before it marks a node down.
const downAfter = 3 * time.Second

// leaderLoop does the leader's housekeeping (consul's monitorLeadership): on gaining
// leadership it waits for a Barrier, so its table is current, and then keeps node
// states in line with what Raft's heartbeats see: a node the leader cannot reach for
// downAfter is marked down, and active again once heartbeats resume.
func (d *Daemon) leaderLoop(ctx context.Context) {
	r := d.store.Raft()
	obsCh := make(chan raft.Observation, 128)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)

	leading := false
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-obsCh:
			switch ob := o.Data.(type) {
			case raft.LeaderObservation:
				now := string(ob.LeaderID) == d.cfg.NodeID
				if now && !leading {
					d.becameLeader(ctx)
				}
				leading = now
			case raft.FailedHeartbeatObservation:
				if leading && time.Since(ob.LastContact) > downAfter {
					// A draining node that dies is down too (its migrations get
					// aborted); it comes back active and must be drained again.
					d.setNodeState(ctx, string(ob.PeerID), record.NodeActive, record.NodeDown)
					d.setNodeState(ctx, string(ob.PeerID), record.NodeDraining, record.NodeDown)
				}
			case raft.ResumedHeartbeatObservation:
				if leading {
					d.setNodeState(ctx, string(ob.PeerID), record.NodeDown, record.NodeActive)
				}
			}
		case <-check.C:
			// LeaderObservation may come before this loop registered its observer.
			if now := d.store.IsLeader(); now != leading {
				if now {
					d.becameLeader(ctx)
				}
				leading = now
			}
			if leading {
				d.abortOrphans(ctx)
			}
		}
	}
}

// becameLeader makes the new leader's table current and gives nodes another leader
// marked down a fresh chance: heartbeats mark them down again if they are.
func (d *Daemon) becameLeader(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.store.Barrier(bctx); err != nil {
		d.log.Warn("leader barrier failed", "err", err)
		return
	}
	d.log.Info("leading the cluster", "term", d.store.Stats()["term"])
	for _, n := range d.store.Table().Nodes() {
		if n.State == record.NodeDown && d.inRaftConfig(n.ID) {
			d.setNodeState(bctx, n.ID, record.NodeDown, record.NodeActive)
		}
	}
}

// setNodeState moves a node from state from to state to (and does nothing if it is in
// any other state: a draining node stays draining).
func (d *Daemon) setNodeState(ctx context.Context, id string, from, to record.NodeState) {
	n, ok := d.store.Table().Node(id)
	if !ok || n.State != from {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d.store.Apply(cctx, shmowner.SetNodeStateType, shmowner.SetNodeStateRequest{ID: id, State: to}); err != nil {
		d.log.Warn("set node state", "peer", id, "state", to, "err", err)
		return
	}
	d.log.Info("node state changed", "peer", id, "from", from, "to", to)
}
