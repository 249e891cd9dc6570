package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// Version is the daemon's build, set with -ldflags "-X github.com/migshm/migshm/daemon.Version=...".
var Version = "dev"

// Daemon is one migshm node.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	tls      *pki.Config
	store    *shmowner.Store
	raftAddr string // advertised
	apiAddr  string // advertised peer API address
	peerTr   *http.Transport
	metrics  *metrics

	localLn, peerLn   net.Listener
	localSrv, peerSrv *http.Server

	sup *supervisor
	mig *migrator
	bal balanceState    // the leader's balancer passes
	bg  context.Context // ends when the daemon stops; migrations run under it

	mu        sync.Mutex
	joinErr   error // last reason this node is not a member yet
	wg        sync.WaitGroup
	readyOnce sync.Once
	ready     chan struct{} // closed when listeners and raft are up
}

// New checks cfg and returns a daemon; Run starts it.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return &Daemon{cfg: cfg, log: log, ready: make(chan struct{}),
		joinErr: errors.New("starting: not yet a member of the cluster")}, nil
}

// Ready is closed once Raft and both listeners are up.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// NodeID returns the node's id (known once Run loaded the certificate).
func (d *Daemon) NodeID() string { return d.cfg.NodeID }

// Run starts the node and serves until ctx is cancelled, then shuts down in order:
// stop accepting requests, stop following workloads (they keep running), close Raft
// and bbolt. Workloads are never stopped by a daemon shutdown.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.started = time.Now()
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	if err := d.open(&cleanups); err != nil {
		return err
	}
	d.log.Info("migshmd up", "version", Version, "raft", d.raftAddr, "peer_api", d.apiAddr,
		"socket", d.cfg.Socket, "bootstrapped", d.store.Bootstrapped())
	d.readyOnce.Do(func() { close(d.ready) })
	if err := sdNotify("READY=1\nSTATUS=serving"); err != nil {
		d.log.Warn("sd_notify READY failed", "err", err)
	}

	bg, stopBG := context.WithCancel(ctx)
	d.mu.Lock()
	d.bg = bg
	d.mu.Unlock()
	d.goFn(func() { d.membership(bg) })
	d.goFn(func() { d.mig.recoverLoop(bg) })
	d.goFn(func() { d.leaderLoop(bg) })
	d.goFn(func() { d.balanceLoop(bg) })
	d.goFn(func() { d.loadLoop(bg) })
	d.goFn(func() { d.sup.run(bg) })

	<-ctx.Done()
	d.log.Info("shutting down; workloads keep running")
	_ = sdNotify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = d.localSrv.Shutdown(sctx)
	_ = d.peerSrv.Shutdown(sctx)
	d.metrics.shutdown(sctx)
	stopBG()
	d.wg.Wait()
	return nil
}

func (d *Daemon) goFn(fn func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		fn()
	}()
}

// open loads the certificate, opens Raft and binds both listeners.
func (d *Daemon) open(cleanups *[]func()) error {
	cfg := &d.cfg
	tc, err := pki.Load(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return err
	}
	d.tls = tc
	switch cn := tc.NodeName(); {
	case cfg.NodeID == "":
		cfg.NodeID = cn
	case cfg.NodeID != cn:
		return fmt.Errorf("node-id %q does not match the name in %s (%q): peers know a node by its certificate; "+
			"make one with `migshm tls node %s` or drop --node-id", cfg.NodeID, cfg.TLSCert, cn, cfg.NodeID)
	}
	d.log = d.log.With("node", cfg.NodeID)
	for _, dir := range []string{cfg.DataDir, cfg.WorkloadDir, filepath.Dir(cfg.Socket)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	host := cfg.Advertise
	if host == "" {
		if host, err = defaultAdvertise(); err != nil {
			return err
		}
	}

	// Raft over mutual TLS.
	raftAdv, err := advertiseAddr(host, cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("raft-addr: %w", err)
	}
	sl, err := pki.Listen(cfg.RaftAddr, raftAdv, tc)
	if err != nil {
		return fmt.Errorf("listen for raft on %s: %w", cfg.RaftAddr, err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr})
	if lvl, _ := parseLevel(cfg.LogLevel); lvl < slog.LevelWarn && lvl >= slog.LevelInfo {
		hlog.SetLevel(hclog.Warn) // raft's info lines are noise for operators
	}
	trans := pki.NewTransport(sl, hlog.Named("transport"))
	d.raftAddr = string(trans.LocalAddr())
	store, err := shmowner.Open(shmowner.StoreConfig{
		NodeID: cfg.NodeID, Dir: filepath.Join(cfg.DataDir, "raft"), Bootstrap: cfg.Bootstrap,
		Transport: trans, Logger: hlog,
	})
	if err != nil {
		_ = trans.Close()
		return err
	}
	d.store = store
	*cleanups = append(*cleanups, func() {
		if err := store.Close(); err != nil {
			d.log.Error("close raft", "err", err)
		}
		_ = trans.Close()
	})

	// Peer API: HTTPS with client certificates from the cluster CA only.
	d.peerTr = peerTransport(tc.ClientTLS())
	pln, err := tls.Listen("tcp", cfg.PeerAddr, tc.ServerTLS())
	if err != nil {
		return fmt.Errorf("listen for peers on %s: %w", cfg.PeerAddr, err)
	}
	d.peerLn = pln
	if d.apiAddr, err = advertiseAddr(host, pln.Addr().String()); err != nil {
		_ = pln.Close()
		return err
	}

	// Workloads: re-attach to the ones an earlier run of this daemon started.
	d.sup, err = newSupervisor(d)
	if err != nil {
		_ = pln.Close()
		return err
	}

	d.mig = newMigrator(d)
	if err := os.MkdirAll(cfg.ImageDir, 0o700); err != nil {
		_ = pln.Close()
		return fmt.Errorf("create image-dir %s: %w", cfg.ImageDir, err)
	}
	warnIfNotTmpfs(d.log, cfg.ImageDir)

	// Local API: unix socket, root only.
	lln, err := listenUnix(cfg.Socket)
	if err != nil {
		_ = pln.Close()
		return err
	}
	d.localLn = lln
	d.localSrv = &http.Server{Handler: d.localHandler(), ConnContext: peerCredContext, ReadHeaderTimeout: 10 * time.Second}
	d.peerSrv = &http.Server{Handler: d.peerHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slogErrorLog(d.log, "peer api")}
	for _, s := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{d.localSrv, lln}, {d.peerSrv, pln}} {
		s := s
		d.goFn(func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("api server stopped", "err", err)
			}
		})
	}
	*cleanups = append(*cleanups, func() {
		_ = d.localSrv.Close()
		_ = d.peerSrv.Close()
		_ = os.Remove(cfg.Socket)
	})
	return d.startMetrics(cleanups)
}

// bgCtx returns the daemon's background context (cancelled when it stops).
func (d *Daemon) bgCtx() context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.bg == nil {
		return context.Background()
	}
	return d.bg
}

// advertiseAddr joins host with the port of bind.
func advertiseAddr(host, bind string) (string, error) {
	_, port, err := net.SplitHostPort(bind)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// defaultAdvertise picks the first non-loopback IPv4 address of this host (or netns).
func defaultAdvertise() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("find an address to advertise: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() && ip.IP.To4() != nil {
			return ip.IP.String(), nil
		}
	}
	return "", errors.New("no non-loopback IPv4 address to advertise to other nodes; set --advertise (MIGSHMD_ADVERTISE)")
}

// membership makes this node a member: join through --join if Raft does not know it,
// then keep its node record registered with the current addresses.
func (d *Daemon) membership(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := d.ensureMember(ctx)
		d.mu.Lock()
		d.joinErr = err
		d.mu.Unlock()
		if err == nil {
			d.log.Info("member of the cluster", "leader", d.leaderID())
			return
		}
		// The first attempts race the cluster's own start (no leader elected yet).
		lvl := slog.LevelInfo
		if attempt > 5 {
			lvl = slog.LevelWarn
		}
		d.log.Log(ctx, lvl, "not a member yet; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (d *Daemon) ensureMember(ctx context.Context) error {
	if !d.isMember() {
		if len(d.cfg.Join) == 0 {
			if d.cfg.Bootstrap {
				return errors.New("waiting for this bootstrapped node's raft configuration")
			}
			return errors.New("this node has no cluster: start it with --bootstrap (first node) or --join ADDR")
		}
		var errs []error
		joined := false
		for _, addr := range d.cfg.Join {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := newPeerClient(addr, d.peerTr).do(cctx, http.MethodPost, "/peer/v1/join",
				joinRequest{ID: d.cfg.NodeID, RaftAddr: d.raftAddr, APIAddr: d.apiAddr}, nil)
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
	if err := d.store.WaitLeader(wctx); err != nil {
		return err
	}
	if n, ok := d.store.Table().Node(d.cfg.NodeID); ok && n.RaftAddr == d.raftAddr &&
		n.APIAddr == d.apiAddr && n.State != record.NodeDown && n.State != record.NodeLeft {
		return nil
	}
	return d.apply(wctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{
		ID: d.cfg.NodeID, RaftAddr: d.raftAddr, APIAddr: d.apiAddr})
}

// isMember reports whether Raft's latest configuration includes this node.
func (d *Daemon) isMember() bool {
	f := d.store.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == d.cfg.NodeID {
			return true
		}
	}
	return false
}

func (d *Daemon) leaderID() string {
	_, id := d.store.Leader()
	return id
}

// apply commits a table command, on this node if it leads, otherwise through the
// leader's peer API. It retries through elections until ctx ends (give it a deadline).
func (d *Daemon) apply(ctx context.Context, t shmowner.MessageType, body any) (err error) {
	start := time.Now()
	defer func() { d.metrics.observeApply(t, time.Since(start), err) }()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	raw, err := shmowner.Encode(t, body)
	if err != nil {
		return err
	}
	wait := 20 * time.Millisecond
	for {
		_, err = d.store.Apply(ctx, t, body)
		if errors.Is(err, record.ErrNotLeader) {
			if addr := d.leaderAPI(); addr != "" {
				err = newPeerClient(addr, d.peerTr).do(ctx, http.MethodPost, "/peer/v1/apply",
					applyRequest{Type: raw[0], Body: raw[1:]}, nil)
			}
		}
		if err == nil || !(errors.Is(err, record.ErrNotLeader) || errors.Is(err, ErrUnreachable)) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", t, ErrNoLeader, err)
		case <-time.After(wait):
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// leaderAPI returns the leader's peer API address, "" if this node leads or none is known.
func (d *Daemon) leaderAPI() string {
	_, id := d.store.Leader()
	if id == "" || id == d.cfg.NodeID {
		return ""
	}
	if n, ok := d.store.Table().Node(id); ok {
		return n.APIAddr
	}
	return ""
}

// status builds this node's Status.
func (d *Daemon) status() Status {
	st := d.store.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	addr, id := d.store.Leader()
	s := Status{
		Node: d.cfg.NodeID, RaftAddr: d.raftAddr, APIAddr: d.apiAddr, RaftState: st["state"],
		Leader: id, LeaderAddr: addr, Term: u("term"), CommitIndex: u("commit_index"),
		AppliedIndex: u("applied_index"), LastLogIndex: u("last_log_index"), LastContact: st["last_contact"],
		Version: Version, Uptime: time.Since(d.started).Round(time.Second).String(), Peers: []Peer{},
		Workloads: d.sup.runningCount(),
	}
	if f := d.store.Raft().GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			s.Peers = append(s.Peers, Peer{ID: string(srv.ID), Address: string(srv.Address),
				Suffrage: suffrage(srv.Suffrage), Leader: string(srv.ID) == id})
			if string(srv.ID) == d.cfg.NodeID {
				s.Member = true
			}
		}
	}
	d.mu.Lock()
	switch {
	case d.joinErr != nil:
		s.Error = d.joinErr.Error()
	case !s.Member:
		s.Error = fmt.Sprintf("this node is no longer a voter of the cluster (it left or was removed); its table is stale. "+
			"To join again: stop it, delete %s, start it with --join", filepath.Join(d.cfg.DataDir, "raft"))
	}
	d.mu.Unlock()
	return s
}

func suffrage(s raft.ServerSuffrage) string {
	return strings.ToLower(s.String())
}

// readTable returns the table for a read request. On a follower it first catches up
// with the leader: it asks the leader for its commit index and waits (up to a second)
// until it has applied that much, so a user who just wrote through one node reads the
// write from any other (read-your-writes, like Raft's ReadIndex without the lease
// check). If the leader is unknown or slow the follower answers with what it has: a
// partitioned node still shows its last view rather than nothing.
func (d *Daemon) readTable(r *http.Request) *shmowner.Table {
	if r.URL.Query().Get("stale") == "true" {
		return d.store.Table()
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	d.catchUp(ctx)
	return d.store.Table()
}

// catchUp waits until this node has applied everything the leader had in its log when
// asked, and reports whether it got there before ctx ended. The leader's last log
// index, not its commit index: a leader elected a moment ago does not know yet that
// entries of the last term are committed (it learns when its own first entry commits),
// but it holds every committed entry (Raft's leader completeness). For the same reason
// the leader itself waits until it applied its whole log.
func (d *Daemon) catchUp(ctx context.Context) bool {
	if d.store.IsLeader() {
		return d.waitApplied(ctx, d.store.Raft().LastIndex())
	}
	addr := d.leaderAPI()
	for addr == "" && d.leaderID() != "" && ctx.Err() == nil {
		// A leader is known but not yet in this node's table: a node that just restarted
		// replays the log once it hears from the leader. Give it a moment.
		time.Sleep(5 * time.Millisecond)
		addr = d.leaderAPI()
	}
	if addr == "" {
		return false
	}
	var ls Status
	if err := newPeerClient(addr, d.peerTr).do(ctx, http.MethodGet, "/v1/status?stale=true", nil, &ls); err != nil {
		return false
	}
	if ls.RaftState != "Leader" {
		return false
	}
	return d.waitApplied(ctx, max(ls.LastLogIndex, ls.CommitIndex))
}

// waitApplied waits until this node's table reflects log index i.
func (d *Daemon) waitApplied(ctx context.Context, i uint64) bool {
	return d.store.WaitApplied(ctx, i)
}
