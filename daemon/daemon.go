package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/migshm/migshm/internal/cluster"
	"github.com/migshm/migshm/internal/events"
	"github.com/migshm/migshm/internal/httpapi"
	"github.com/migshm/migshm/internal/metrics"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/internal/ownnet"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/internal/supervisor"
	"github.com/migshm/migshm/shmowner"
	"golang.org/x/sys/unix"
)

// Version is the daemon's build, set with -ldflags "-X github.com/migshm/migshm/daemon.Version=...".
var Version = "dev"

// Daemon is one migshm node.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	cluster *cluster.Cluster
	peers   *peer.Peers
	sup     *supervisor.Supervisor
	engine  *migration.Engine
	metrics *metrics.Metrics
	// metricsAddr is where the metrics are served, "" if they are not.
	metricsAddr string
	bal         balanceState   // the leader's balancer passes
	events      *events.Log    // the table's changes as this node saw them (GET /v1/events)
	tls         *pki.Config    // this node's certificate, reloaded on SIGHUP
	network     ownnet.Network // what this node offers workloads with an address of their own
	// revoked is the table's denylist of certificate serials (lower-case hex), kept
	// current by tableChanged and read at every TLS handshake.
	revoked atomic.Pointer[map[string]bool]

	// ctx ends when the daemon stops: its loops, and what they start, run under it.
	ctx     context.Context
	stop    context.CancelFunc
	servers []*http.Server
	wg      sync.WaitGroup // the servers and the loops
	ready   chan struct{}  // closed when listeners and raft are up
}

// New checks cfg and returns a daemon; Run starts it.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	d := &Daemon{cfg: cfg, log: log, ready: make(chan struct{}), events: events.NewLog(eventsKept),
		bal: balanceState{soon: make(chan struct{}, 1)}}
	d.ctx, d.stop = context.WithCancel(context.Background())
	return d, nil
}

// Ready is closed once Raft and both listeners are up.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// NodeID returns the node's id (known once Run loaded the certificate).
func (d *Daemon) NodeID() string { return d.cfg.NodeID }

// Run starts the node and serves until ctx is cancelled, then shuts down in order:
// stop accepting requests, end the migrations this node drives (each rolls back or
// settles), stop following workloads (they keep running), close Raft and bbolt.
// Workloads are never stopped by a daemon shutdown.
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
	st := d.cluster.Status()
	d.log.Info("migshmd up", "version", Version, "raft", st.RaftAddr, "peer_api", st.APIAddr, "socket", d.cfg.Socket)
	close(d.ready)
	if err := sdNotify("READY=1\nSTATUS=serving"); err != nil {
		d.log.Warn("sd_notify READY failed", "err", err)
	}

	defer d.stop()
	bg := d.ctx
	d.goFn(func() { d.cluster.Membership(bg, d.cfg.Join, d.cfg.Bootstrap) })
	d.goFn(func() { d.engine.Recover(bg) })
	d.goFn(func() { d.leaderLoop(bg) })
	d.goFn(func() { d.balanceLoop(bg) })
	d.goFn(func() { d.loadLoop(bg) })
	d.goFn(func() { d.sup.Run(bg) })
	d.goFn(func() { d.reloadOnHangup(bg) })

	<-ctx.Done()
	d.log.Info("shutting down; workloads keep running")
	_ = sdNotify("STOPPING=1")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range d.servers {
		_ = s.Shutdown(sctx)
	}
	d.stop()
	d.engine.Close()
	d.wg.Wait()
	return nil
}

// eventsKept is how many of the table's events a node keeps for GET /v1/events.
const eventsKept = 1000

func (d *Daemon) goFn(fn func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		fn()
	}()
}

// serve runs srv on ln until Run shuts it down.
func (d *Daemon) serve(srv *http.Server, ln net.Listener, what string) {
	d.servers = append(d.servers, srv)
	d.goFn(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error(what+" stopped", "err", err)
		}
	})
}

// open loads the certificate, opens Raft, builds the node's parts and binds the
// listeners.
func (d *Daemon) open(cleanups *[]func()) error {
	cfg := &d.cfg
	tc, err := pki.Load(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return err
	}
	switch cn := tc.NodeName(); {
	case cfg.NodeID == "":
		cfg.NodeID = cn
	case cfg.NodeID != cn:
		return fmt.Errorf("node-id %q does not match the name in %s (%q): peers know a node by its certificate; "+
			"make one with `migshm tls node %s` or drop --node-id", cfg.NodeID, cfg.TLSCert, cn, cfg.NodeID)
	}
	d.log = d.log.With("node", cfg.NodeID)
	d.tls = tc
	tc.SetRevoked(func(serial *big.Int) bool {
		m := d.revoked.Load()
		return m != nil && (*m)[serial.Text(16)]
	})
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

	store, raftAddr, err := d.openRaft(host, tc, cleanups)
	if err != nil {
		return err
	}

	// Peer API: HTTPS with client certificates from the cluster CA only.
	pln, err := pki.Listener(cfg.PeerAddr, tc)
	if err != nil {
		return fmt.Errorf("listen for peers on %s: %w", cfg.PeerAddr, err)
	}
	*cleanups = append(*cleanups, func() { _ = pln.Close() })
	apiAddr, err := advertiseAddr(host, pln.Addr().String())
	if err != nil {
		return err
	}
	d.peers = peer.New(tc.ClientTLS(), cfg.NodeID)
	d.metrics = metrics.New(cfg.NodeID, store)
	// Addresses of their own: the network they are on, which the table records.
	var network ownnet.Network
	if cfg.IPParent != "" {
		if network, err = ownnet.Discover(cfg.IPParent, cfg.IPPool, cfg.IPGateway); err != nil {
			return err
		}
	}
	d.network = network
	addrNet := ""
	if network.Enabled() {
		addrNet = network.Subnet.Masked().String()
	}
	d.cluster = cluster.New(cluster.Config{Self: cfg.NodeID, RaftAddr: raftAddr, APIAddr: apiAddr, AddrNet: addrNet,
		DataDir: cfg.DataDir, Store: store, Peers: d.peers, Log: d.log, OnApply: d.metrics.ObserveApply})

	// Workloads: re-attach to the ones an earlier run of this daemon started.
	d.sup, err = supervisor.New(supervisor.Config{Self: cfg.NodeID, Dir: cfg.WorkloadDir,
		InitDir: filepath.Join(cfg.DataDir, "init"), SegmentInterval: cfg.SegmentInterval,
		CapacityCores: cfg.CapacityCores, MemCapacity: cfg.MemCapacity, Network: network, Log: d.log}, d.cluster)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.ImageDir, 0o700); err != nil {
		return fmt.Errorf("create image-dir %s: %w", cfg.ImageDir, err)
	}
	if cfg.ImageTmpfs {
		unmount, err := mountImages(d.log, cfg.ImageDir)
		if err != nil {
			return err
		}
		*cleanups = append(*cleanups, unmount)
	}
	warnIfNotTmpfs(d.log, cfg.ImageDir)
	noteShmHugePages(d.log)
	d.engine = migration.New(migration.Config{WorkloadDir: cfg.WorkloadDir, ImageDir: cfg.ImageDir,
		DataDir: cfg.DataDir, CRIU: cfg.CRIU, Log: d.log, ProgressTimeout: cfg.ProgressTimeout, Network: network}, d.cluster, d.sup, migration.OverPeers(d.peers))

	// Local API: unix socket, root only.
	lln, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	*cleanups = append(*cleanups, func() {
		for _, s := range d.servers {
			_ = s.Close()
		}
		_ = os.Remove(cfg.Socket)
	})
	hc := httpapi.Config{Service: (*service)(d), Cluster: d.cluster, Members: d.cluster, Target: d.engine,
		Peers: d.peers, Log: d.log, Events: d.events, Revoked: tc.Revoked}
	local := &http.Server{Handler: httpapi.Local(hc), ConnContext: httpapi.PeerCredContext,
		ReadHeaderTimeout: 10 * time.Second}
	// Shutdown waits for open requests: end the event followers' streams first.
	local.RegisterOnShutdown(d.events.Close)
	d.serve(local, lln, "local api")
	peerSrv := &http.Server{Handler: httpapi.Peer(hc), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slogErrorLog(d.log, "peer api")}
	peerSrv.RegisterOnShutdown(d.events.Close)
	d.serve(peerSrv, pln, "peer api")
	return d.serveMetrics()
}

// openRaft opens this node's Raft store over mutual TLS, advertised at host, and
// returns it with its advertised address; cleanups closes it.
func (d *Daemon) openRaft(host string, tc *pki.Config, cleanups *[]func()) (*shmowner.Store, string, error) {
	cfg := &d.cfg
	raftAdv, err := advertiseAddr(host, cfg.RaftAddr)
	if err != nil {
		return nil, "", fmt.Errorf("raft-addr: %w", err)
	}
	sl, err := cluster.ListenRaft(cfg.RaftAddr, raftAdv, tc)
	if err != nil {
		return nil, "", fmt.Errorf("listen for raft on %s: %w", cfg.RaftAddr, err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr})
	if lvl, _ := parseLevel(cfg.LogLevel); lvl < slog.LevelWarn && lvl >= slog.LevelInfo {
		hlog.SetLevel(hclog.Warn) // raft's info lines are noise for operators
	}
	trans := cluster.NewTransport(sl, hlog.Named("transport"))
	store, err := shmowner.Open(shmowner.StoreConfig{
		NodeID: cfg.NodeID, Dir: filepath.Join(cfg.DataDir, "raft"), Bootstrap: cfg.Bootstrap,
		Transport: trans, Logger: hlog, OnChange: d.tableChanged,
	})
	if err != nil {
		_ = trans.Close()
		return nil, "", err
	}
	if store.Bootstrapped() {
		d.log.Info("bootstrapped a new cluster", "raft", string(trans.LocalAddr()))
	}
	*cleanups = append(*cleanups, func() {
		if err := store.Close(); err != nil {
			d.log.Error("close raft", "err", err)
		}
		_ = trans.Close()
	})
	return store, string(trans.LocalAddr()), nil
}

// serveMetrics serves the metrics on http://METRICS-ADDR/metrics, unless metrics-addr
// is "".
func (d *Daemon) serveMetrics() error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := metrics.Listen(d.cfg.MetricsAddr)
	if err != nil {
		return err
	}
	errLog := slogErrorLog(d.log, "metrics")
	d.serve(&http.Server{Handler: d.metrics.Handler(errLog), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog},
		ln, "metrics server")
	d.metricsAddr = ln.Addr().String()
	d.log.Info("serving metrics", "url", "http://"+d.metricsAddr+"/metrics")
	return nil
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

// reloadOnHangup reloads the node's certificate, key and CA on SIGHUP (`systemctl
// reload migshmd`): renewed files take effect at the next handshake, without a restart.
func (d *Daemon) reloadOnHangup(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, unix.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := d.ReloadTLS(); err != nil {
				d.log.Error("reload TLS files: keeping the current ones", "err", err)
			}
		}
	}
}

// ReloadTLS reads the node's TLS files again (see pki.Config.Reload).
func (d *Daemon) ReloadTLS() error {
	if err := d.tls.Reload(d.cfg.TLSCA, d.cfg.TLSCert, d.cfg.TLSKey); err != nil {
		return err
	}
	d.peers.Renew() // pooled connections carry the old certificate, which may be revoked next
	d.log.Info("reloaded TLS files", "serial", d.tls.Serial().Text(16), "expires", d.tls.NotAfter().Format(time.RFC3339))
	return nil
}
