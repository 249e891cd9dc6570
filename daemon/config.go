package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/balancer"
	"github.com/migshm/migshm/internal/metrics"
	"github.com/migshm/migshm/internal/migration"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/internal/retention"
	"github.com/migshm/migshm/migrate"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// Defaults of the daemon's settings.
const (
	DefaultConfigFile = "/etc/migshm/migshmd.toml"
	DefaultDataDir    = "/var/lib/migshmd"
	DefaultSocket     = api.DefaultSocket
	DefaultRaftAddr   = "0.0.0.0:7420"
	DefaultPeerAddr   = "0.0.0.0:7421"
	// DefaultImageDir holds migration images: under systemd's RuntimeDirectory, a tmpfs,
	// so the final dump while the workload is frozen runs at memory speed.
	DefaultImageDir = "/run/migshmd/images"
	// DefaultBalanceInterval is how often the leader runs the balancer.
	DefaultBalanceInterval = 10 * time.Second
)

// Config is everything a node daemon needs. Zero values of optional fields take the
// defaults above (see Normalize).
type Config struct {
	NodeID      string   // empty: the CN of the node certificate
	DataDir     string   // raft/ (bbolt log, stable store, snapshots), init/
	WorkloadDir string   // per-workload records and logs; empty: DataDir/workloads
	ImageDir    string   // migration images and pre-copied pages; should be tmpfs; empty: DefaultImageDir
	ImageTmpfs  bool     // mount a tmpfs with huge pages at ImageDir unless it is a mount point already
	Socket      string   // local API unix socket (root only, 0600)
	RaftAddr    string   // raft bind address (mutual TLS)
	PeerAddr    string   // peer API bind address (HTTPS, mutual TLS)
	Advertise   string   // IP or host other nodes dial; empty: first non-loopback IPv4
	Bootstrap   bool     // the first node: bootstrap a one-node cluster if there is no state
	Join        []string // peer API addresses of members to join through
	TLSCA       string   // empty: DataDir/tls/ca.crt
	TLSCert     string   // empty: DataDir/tls/node.crt
	TLSKey      string   // empty: DataDir/tls/node.key
	CRIU        string   // criu binary; empty: migrate.FindCRIU's default
	LogLevel    string   // debug, info, warn, error
	MetricsAddr string   // Prometheus /metrics over plain HTTP; empty: no metrics server

	SegmentInterval time.Duration // how often local workloads' segments and pids are read
	LoadInterval    time.Duration // how often this node reports its load
	StopTimeout     time.Duration // default grace period of `migshm stop` before SIGKILL
	ProgressTimeout time.Duration // a move's target silent this long while the workload is frozen: abort
	// Retention is the history the leader keeps in the table; zero: retention.DefaultPolicy.
	Retention retention.Policy

	// Balancing. The leader's settings are the cluster's: give every node the same.
	AutoBalance      bool          // the leader moves workloads on its own (drains run either way)
	BalanceInterval  time.Duration // between the leader's balancer passes
	BalanceThreshold float64       // normalised load a node may sit from the mean (balancer.Config.Threshold)
	BalanceMargin    float64       // least imbalance reduction a CPU move must bring (balancer.Config.Hysteresis)
	WorkloadCooldown time.Duration // a workload moved (or tried) less than this ago stays
	NodeCooldown     time.Duration // a node takes part in one CPU move per this
	MaxMigrations    int           // migrations in flight at once, cluster-wide, that the balancer allows
	MemFloor         uint64        // bytes: a node below this much free memory sheds workloads first
	// This node's capacity, reported with its load.
	CapacityCores float64 // CPU cores this node offers workloads; 0: its CPUs
	MemCapacity   uint64  // bytes this node's workloads may use; 0: the host's memory (from /proc/meminfo)

	// Addresses of their own (`migshm run --ip`): this node's interface to the cluster's
	// network, the range workloads take addresses from (give every node the same) and
	// their default route. Empty IPParent: workloads use the node's network only.
	IPParent  string
	IPPool    netip.Prefix
	IPGateway netip.Addr
}

// Normalize fills in defaults and checks the settings, so that a bad one fails at start
// with a message naming the setting.
func (c *Config) Normalize() error {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		abs, err := filepath.Abs(c.DataDir)
		if err != nil {
			return fmt.Errorf("data-dir %q: %w", c.DataDir, err)
		}
		c.DataDir = abs
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.WorkloadDir, filepath.Join(c.DataDir, "workloads"))
	def(&c.ImageDir, DefaultImageDir)
	for _, p := range []*string{&c.WorkloadDir, &c.ImageDir, &c.Socket, &c.TLSCA, &c.TLSCert, &c.TLSKey} {
		if *p != "" && !filepath.IsAbs(*p) {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return err
			}
			*p = abs
		}
	}
	def(&c.Socket, DefaultSocket)
	def(&c.RaftAddr, DefaultRaftAddr)
	def(&c.PeerAddr, DefaultPeerAddr)
	def(&c.TLSCA, filepath.Join(c.DataDir, "tls", "ca.crt"))
	def(&c.TLSCert, filepath.Join(c.DataDir, "tls", "node.crt"))
	def(&c.TLSKey, filepath.Join(c.DataDir, "tls", "node.key"))
	def(&c.LogLevel, "info")
	if c.SegmentInterval == 0 {
		c.SegmentInterval = time.Second
	}
	if c.LoadInterval == 0 {
		c.LoadInterval = 5 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.ProgressTimeout == 0 {
		c.ProgressTimeout = migration.DefaultProgressTimeout
	}
	if c.Retention == (retention.Policy{}) {
		c.Retention = retention.DefaultPolicy()
	}
	if c.Retention.Batch == 0 {
		c.Retention.Batch = retention.DefaultPolicy().Batch
	}
	if c.Retention.Migrations < 0 || c.Retention.Exited < 0 || c.Retention.MaxAge < 0 {
		return fmt.Errorf("retain-migrations %d, retain-exited %d, retain-age %v: none may be negative (0 keeps none, or no age limit for retain-age)",
			c.Retention.Migrations, c.Retention.Exited, c.Retention.MaxAge)
	}
	if c.NodeID != "" && pki.ValidateName(c.NodeID) != nil {
		return fmt.Errorf("node-id %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", c.NodeID)
	}
	for _, a := range []struct{ name, v string }{{"raft-addr", c.RaftAddr}, {"peer-addr", c.PeerAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT (e.g. 0.0.0.0:7420): %v", a.name, a.v, err)
		}
	}
	if c.RaftAddr == c.PeerAddr {
		return fmt.Errorf("raft-addr and peer-addr are both %s; give them different ports", c.RaftAddr)
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fmt.Errorf("join %q: want the HOST:PORT of a member's peer API (e.g. 10.0.0.11:7421): %v", j, err)
		}
	}
	if c.Advertise != "" && strings.Contains(c.Advertise, ":") && net.ParseIP(c.Advertise) == nil {
		return fmt.Errorf("advertise %q: give an IP or host name without a port", c.Advertise)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("metrics-addr %q: want HOST:PORT (e.g. %s), or \"\" to serve no metrics: %v",
				c.MetricsAddr, metrics.DefaultAddr, err)
		}
		if c.MetricsAddr == c.RaftAddr || c.MetricsAddr == c.PeerAddr {
			return fmt.Errorf("metrics-addr %s is also raft-addr or peer-addr; give it its own port", c.MetricsAddr)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.SegmentInterval < 50*time.Millisecond || c.LoadInterval < 50*time.Millisecond {
		return errors.New("segment-interval and load-interval must be at least 50ms")
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = DefaultBalanceInterval
	}
	if c.MaxMigrations == 0 {
		c.MaxMigrations = balancer.DefaultConfig().MaxConcurrent
	}
	if c.BalanceInterval < 100*time.Millisecond {
		return fmt.Errorf("balance-interval %v: at least 100ms", c.BalanceInterval)
	}
	if err := c.balancerConfig(nil).Validate(); err != nil {
		return fmt.Errorf("balancer settings: %w", err)
	}
	// NaN or Inf would reach every load report, which JSON cannot encode.
	if !(c.CapacityCores >= 0) || math.IsInf(c.CapacityCores, 0) {
		return fmt.Errorf("capacity-cores %v: want a finite value > 0, or 0 for this host's CPUs", c.CapacityCores)
	}
	if c.ProgressTimeout < 200*time.Millisecond {
		return fmt.Errorf("progress-timeout %v: at least 200ms (a healthy peer answers within milliseconds, but not always within fewer)", c.ProgressTimeout)
	}
	if (c.IPParent == "") != !c.IPPool.IsValid() {
		return fmt.Errorf("ip-parent %q and ip-pool %q: set both (workloads with an address of their own) or neither", c.IPParent, c.IPPool)
	}
	if c.IPPool.IsValid() && !c.IPPool.Addr().Is4() {
		return fmt.Errorf("ip-pool %v: want an IPv4 range, e.g. 10.0.0.192/26", c.IPPool)
	}
	if c.IPGateway.IsValid() && c.IPParent == "" {
		return fmt.Errorf("ip-gateway %v without ip-parent and ip-pool: set those too", c.IPGateway)
	}
	if c.StopTimeout < 100*time.Millisecond {
		return fmt.Errorf("stop-timeout %v: give workloads at least 100ms to exit before SIGKILL", c.StopTimeout)
	}
	return nil
}

// Flags returns the daemon's command-line flags. Each has an env var MIGSHMD_<NAME> and
// may be set in the TOML config file under its flag name (flag > env > file > default).
func Flags() []cli.Flag {
	d := balancer.DefaultConfig()
	env := func(name string) []string {
		return []string{"MIGSHMD_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	str := func(name, usage, def string) cli.Flag {
		return altsrc.NewStringFlag(&cli.StringFlag{Name: name, Usage: usage, EnvVars: env(name), Value: def})
	}
	dur := func(name, usage string, def time.Duration) cli.Flag {
		return altsrc.NewDurationFlag(&cli.DurationFlag{Name: name, Usage: usage, EnvVars: env(name), Value: def})
	}
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "TOML config file (keys are the flag names); the default is read only if it exists",
			EnvVars: env("config"), Value: DefaultConfigFile},
		str("node-id", "this node's name (default: the CN of the node certificate)", ""),
		str("data-dir", "raft state, snapshots and the init copy", DefaultDataDir),
		str("workload-dir", "workload records and logs (default: DATA-DIR/workloads)", ""),
		str("image-dir", "migration images and pre-copied pages; use a tmpfs: the final dump runs while the workload is frozen", DefaultImageDir),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "image-tmpfs", EnvVars: env("image-tmpfs"), Value: true,
			Usage: "mount a tmpfs of its own, with transparent huge pages, at image-dir unless it is a mount point already (the frozen window writes the workload's size there, several times faster on huge pages)"}),
		str("socket", "local API socket for the migshm CLI (root only, mode 0600)", DefaultSocket),
		str("raft-addr", "Raft bind address (mutual TLS)", DefaultRaftAddr),
		str("peer-addr", "peer API bind address (HTTPS, mutual TLS)", DefaultPeerAddr),
		str("advertise", "IP or host name other nodes use to reach this one (default: first non-loopback IPv4)", ""),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "bootstrap", EnvVars: env("bootstrap"),
			Usage: "first node only: start a new cluster if this node has no Raft state (never re-bootstraps)"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "join", EnvVars: env("join"),
			Usage: "peer API address (HOST:PORT) of a member to join through; repeat or comma-separate"}),
		str("tls-ca", "cluster CA certificate (default: DATA-DIR/tls/ca.crt)", ""),
		str("tls-cert", "this node's certificate (default: DATA-DIR/tls/node.crt)", ""),
		str("tls-key", "this node's private key, mode 0600 (default: DATA-DIR/tls/node.key)", ""),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "criu", Usage: "criu binary",
			EnvVars: []string{"MIGSHMD_CRIU", migrate.EnvCRIU}, DefaultText: migrate.DefaultCRIUPrefix + "/bin/criu"}),
		str("log-level", "debug, info, warn or error", "info"),
		str("metrics-addr", "serve Prometheus metrics on http://HOST:PORT/metrics (plain HTTP, no auth: keep it on loopback "+
			"or a trusted network); \"\" serves none", metrics.DefaultAddr),
		dur("segment-interval", "how often workloads' segments are read", time.Second),
		dur("load-interval", "how often this node reports its load", 5*time.Second),
		dur("stop-timeout", "default grace period of migshm stop before SIGKILL", 10*time.Second),
		dur("progress-timeout", "a move whose target does not answer for this long while the workload is frozen aborts, "+
			"and the workload resumes on its node (while it runs, the move waits and says it is stalled)", migration.DefaultProgressTimeout),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "retain-migrations", EnvVars: env("retain-migrations"), Value: retention.DefaultPolicy().Migrations,
			Usage: "ended migrations the table keeps, newest first (older ones are pruned; metrics keep their totals)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "retain-exited", EnvVars: env("retain-exited"), Value: retention.DefaultPolicy().Exited,
			Usage: "exited workloads the table keeps, newest first (a pruned one's name is free again)"}),
		dur("retain-age", "ended migrations and exited workloads older than this are pruned whatever their count; 0: no age limit",
			retention.DefaultPolicy().MaxAge),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "auto-balance", EnvVars: env("auto-balance"), Value: true,
			Usage: "as leader, move workloads to balance CPU and memory on its own (--auto-balance=false: only drains and `migshm balance`)"}),
		dur("balance-interval", "how often the leader runs the balancer", DefaultBalanceInterval),
		altsrc.NewFloat64Flag(&cli.Float64Flag{Name: "balance-threshold", EnvVars: env("balance-threshold"), Value: d.Threshold,
			Usage: "how far (normalised CPU load, 0.1 = a tenth of a node) a node may sit from the cluster mean before the balancer moves work"}),
		altsrc.NewFloat64Flag(&cli.Float64Flag{Name: "balance-margin", EnvVars: env("balance-margin"), Value: d.Hysteresis,
			Usage: "least reduction of the imbalance a CPU move must bring (hysteresis; stops moves that barely help)"}),
		dur("workload-cooldown", "a workload moved (or tried) less than this ago is not moved by the balancer", d.WorkloadCooldown),
		dur("node-cooldown", "a node takes part in at most one balancing move per this", d.NodeCooldown),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "max-migrations", EnvVars: env("max-migrations"), Value: d.MaxConcurrent,
			Usage: "migrations in flight at once, cluster-wide, that the balancer allows"}),
		str("mem-floor", "a node with less free memory than this sheds workloads first (e.g. 512MiB, 2GiB)", "512MiB"),
		altsrc.NewFloat64Flag(&cli.Float64Flag{Name: "capacity-cores", EnvVars: env("capacity-cores"),
			Usage: "CPU cores this node offers workloads (default: its CPUs)"}),
		str("mem-capacity", "memory this node's workloads may use, e.g. 8GiB (default: the host's; set it when nodes share one host)", ""),
		str("ip-parent", "this node's interface to the cluster's network, on which workloads run with --ip get a macvlan of their own (e.g. eth0); \"\": none", ""),
		str("ip-pool", "the addresses workloads may take with --ip, a range of ip-parent's network, e.g. 10.0.0.192/26 (the same on every node)", ""),
		str("ip-gateway", "default route of workloads with an address of their own (default: none, the local network only)", ""),
	}
}

// LoadConfigFile is the urfave/cli Before hook that reads the TOML file named by
// --config into the flags not set on the command line or in the environment. A missing
// file is an error unless it is the default path.
func LoadConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !c.IsSet("config") {
		return nil
	}
	if err := checkConfigKeys(path, c.Command.Flags); err != nil {
		return err
	}
	src, err := altsrc.NewTomlSourceFromFile(path)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := altsrc.ApplyInputSourceValues(c, src, c.Command.Flags); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// ConfigFromCLI reads the flags (after LoadConfigFile) into a normalised Config.
func ConfigFromCLI(c *cli.Context) (Config, error) {
	var join []string
	for _, j := range c.StringSlice("join") {
		for _, p := range strings.Split(j, ",") {
			if p = strings.TrimSpace(p); p != "" {
				join = append(join, p)
			}
		}
	}
	cfg := Config{
		NodeID:          c.String("node-id"),
		DataDir:         c.String("data-dir"),
		WorkloadDir:     c.String("workload-dir"),
		ImageDir:        c.String("image-dir"),
		ImageTmpfs:      c.Bool("image-tmpfs"),
		Socket:          c.String("socket"),
		RaftAddr:        c.String("raft-addr"),
		PeerAddr:        c.String("peer-addr"),
		Advertise:       c.String("advertise"),
		Bootstrap:       c.Bool("bootstrap"),
		Join:            join,
		TLSCA:           c.String("tls-ca"),
		TLSCert:         c.String("tls-cert"),
		TLSKey:          c.String("tls-key"),
		CRIU:            c.String("criu"),
		LogLevel:        c.String("log-level"),
		MetricsAddr:     c.String("metrics-addr"),
		SegmentInterval: c.Duration("segment-interval"),
		LoadInterval:    c.Duration("load-interval"),
		StopTimeout:     c.Duration("stop-timeout"),
		ProgressTimeout: c.Duration("progress-timeout"),
		// Batch set: a policy of all zeros from the flags keeps nothing, it is not "unset".
		Retention: retention.Policy{Migrations: c.Int("retain-migrations"), Exited: c.Int("retain-exited"),
			MaxAge: c.Duration("retain-age"), Batch: retention.DefaultPolicy().Batch},

		AutoBalance:      c.Bool("auto-balance"),
		BalanceInterval:  c.Duration("balance-interval"),
		BalanceThreshold: c.Float64("balance-threshold"),
		BalanceMargin:    c.Float64("balance-margin"),
		WorkloadCooldown: c.Duration("workload-cooldown"),
		NodeCooldown:     c.Duration("node-cooldown"),
		MaxMigrations:    c.Int("max-migrations"),
		CapacityCores:    c.Float64("capacity-cores"),
	}
	var err error
	if cfg.MemFloor, err = parseSize("mem-floor", c.String("mem-floor")); err != nil {
		return cfg, err
	}
	if cfg.MemCapacity, err = parseSize("mem-capacity", c.String("mem-capacity")); err != nil {
		return cfg, err
	}
	cfg.IPParent = c.String("ip-parent")
	if v := c.String("ip-pool"); v != "" {
		if cfg.IPPool, err = netip.ParsePrefix(v); err != nil {
			return cfg, fmt.Errorf("ip-pool %q: want a range such as 10.0.0.192/26: %v", v, err)
		}
	}
	if v := c.String("ip-gateway"); v != "" {
		if cfg.IPGateway, err = netip.ParseAddr(v); err != nil {
			return cfg, fmt.Errorf("ip-gateway %q: want an IPv4 address: %v", v, err)
		}
	}
	return cfg, cfg.Normalize()
}

// checkConfigKeys refuses keys that name no flag: a typo such as node_id for node-id
// would otherwise be ignored and the node start with a default.
func checkConfigKeys(path string, flags []cli.Flag) error {
	var doc map[string]any
	md, err := toml.DecodeFile(path, &doc)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	known := map[string]bool{}
	for _, f := range flags {
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	for _, k := range md.Keys() {
		if len(k) != 1 {
			continue // inside a table: reported with the table's key
		}
		if !known[k[0]] || k[0] == "config" {
			return fmt.Errorf("config file %s: unknown key %q (keys are the flag names, e.g. node-id; see migshmd --help)", path, k[0])
		}
	}
	return nil
}

// parseSize reads a byte size: a number with an optional unit (B, KiB, MiB, GiB, TiB, or
// K, M, G, T as powers of 1024). Empty means 0.
func parseSize(name, s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	mult := map[string]float64{"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}[strings.ToLower(unit)]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 || v*mult >= 1<<63 {
		return 0, fmt.Errorf("%s %q: want a size such as 512MiB or 8GiB", name, s)
	}
	return uint64(v * mult), nil
}
