package cluster

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
)

// EventKind says what an Event reports.
type EventKind int

// Events of Raft the leader acts on.
const (
	// LeaderChanged: a leader was elected (Leading says whether it is this node).
	LeaderChanged EventKind = iota + 1
	// PeerFailed: the leader's heartbeats to Peer fail; LastContact is the last success.
	PeerFailed
	// PeerResumed: the leader's heartbeats to Peer succeed again.
	PeerResumed
)

// Event is a change in the cluster as this node's Raft sees it.
type Event struct {
	Kind        EventKind
	Leading     bool      // LeaderChanged
	Peer        string    // PeerFailed, PeerResumed
	LastContact time.Time // PeerFailed
}

// Watch calls on for every leadership change and heartbeat failure or recovery Raft
// observes, until ctx ends. Events may be dropped when on is slow (Raft does not block
// on its observers), and a leadership change may come before Watch registered: a
// watcher checks IsLeader itself from time to time (consul's monitorLeadership does).
func (c *Cluster) Watch(ctx context.Context, on func(Event)) {
	r := c.store.Raft()
	ch := make(chan raft.Observation, 128)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-ch:
			switch ob := o.Data.(type) {
			case raft.LeaderObservation:
				on(Event{Kind: LeaderChanged, Leading: string(ob.LeaderID) == c.cfg.Self})
			case raft.FailedHeartbeatObservation:
				on(Event{Kind: PeerFailed, Peer: string(ob.PeerID), LastContact: ob.LastContact})
			case raft.ResumedHeartbeatObservation:
				on(Event{Kind: PeerResumed, Peer: string(ob.PeerID)})
			}
		}
	}
}
