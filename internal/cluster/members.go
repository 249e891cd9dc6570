package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Membership makes this node a member and returns once it is one, or when ctx ends:
// it joins through one of join (peer API addresses) if Raft does not know this node,
// then makes sure the table has its record with its current addresses. It retries with
// a backoff; Status reports the last reason it is not a member yet.
func (c *Cluster) Membership(ctx context.Context, join []string, bootstrap bool) {
	backoff := 100 * time.Millisecond
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := c.ensureMember(ctx, join, bootstrap)
		c.mu.Lock()
		c.joinErr = err
		c.mu.Unlock()
		if err == nil {
			c.log.Info("member of the cluster", "leader", c.leaderID())
			return
		}
		// The first attempts race the cluster's own start (no leader elected yet).
		lvl := slog.LevelInfo
		if attempt > 5 {
			lvl = slog.LevelWarn
		}
		c.log.Log(ctx, lvl, "not a member yet; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (c *Cluster) ensureMember(ctx context.Context, join []string, bootstrap bool) error {
	if !c.IsMember() {
		if len(join) == 0 {
			if bootstrap {
				return errors.New("waiting for this bootstrapped node's raft configuration")
			}
			return errors.New("this node has no cluster: start it with --bootstrap (first node) or --join ADDR")
		}
		var errs []error
		joined := false
		for _, addr := range join {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := c.join(cctx, addr)
			cancel()
			if err == nil {
				joined = true
				break
			}
			errs = append(errs, fmt.Errorf("join through %s: %w", addr, err))
		}
		if !joined {
			return errors.Join(errs...)
		}
	}
	// A member: make sure the table has this node with its current addresses.
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := c.store.WaitLeader(wctx); err != nil {
		return err
	}
	if n, ok := c.store.Table().Node(c.cfg.Self); ok && n.RaftAddr == c.cfg.RaftAddr &&
		n.APIAddr == c.cfg.APIAddr && n.AddrNet == c.cfg.AddrNet && n.State != record.NodeDown && n.State != record.NodeLeft {
		return nil
	}
	return c.Apply(wctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{
		ID: c.cfg.Self, RaftAddr: c.cfg.RaftAddr, APIAddr: c.cfg.APIAddr, AddrNet: c.cfg.AddrNet})
}

// join asks the leader to add this node, over this node's own connection: only the
// leader serves joins. Through a member that does not lead, it asks that member who
// leads and joins there.
func (c *Cluster) join(ctx context.Context, addr string) error {
	req := api.JoinRequest{ID: c.cfg.Self, RaftAddr: c.cfg.RaftAddr, APIAddr: c.cfg.APIAddr}
	err := c.cfg.Peers.Client(addr).Call(ctx, "POST", "/peer/v1/join", req, nil)
	if !errors.Is(err, record.ErrNotLeader) {
		return err
	}
	var st api.Status
	if serr := c.cfg.Peers.Client(addr).Call(ctx, "GET", "/v1/status?stale=true", nil, &st); serr != nil {
		return fmt.Errorf("%w (asking %s who leads: %v)", err, addr, serr)
	}
	if st.LeaderAPI == "" {
		return err
	}
	if err := c.cfg.Peers.Client(st.LeaderAPI).Call(ctx, "POST", "/peer/v1/join", req, nil); err != nil {
		return fmt.Errorf("join through the leader %s (%s): %w", st.Leader, st.LeaderAPI, err)
	}
	return nil
}
