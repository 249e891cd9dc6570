package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/migshm/migshm/migrate"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// Defaults of the daemon's settings.
const (
	DefaultConfigFile = "/etc/migshm/migshmd.toml"
	DefaultDataDir    = "/var/lib/migshmd"
	DefaultSocket     = "/run/migshmd/migshmd.sock"
	DefaultRaftAddr   = "0.0.0.0:7420"
	DefaultPeerAddr   = "0.0.0.0:7421"
	// DefaultImageDir holds migration images: under systemd's RuntimeDirectory, a tmpfs,
	// so the final dump while the workload is frozen runs at memory speed.
	DefaultImageDir = "/run/migshmd/images"
)

// Config is everything a node daemon needs. Zero values of optional fields take the
// defaults above (see Normalize).
type Config struct {
	NodeID      string   // empty: the CN of the node certificate
	DataDir     string   // raft/ (bbolt log, stable store, snapshots), init/
	WorkloadDir string   // per-workload records and logs; empty: DataDir/workloads
	ImageDir    string   // migration images and pre-copied pages; should be tmpfs; empty: DefaultImageDir
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

	SegmentInterval time.Duration // how often local workloads' segments and pids are read
	LoadInterval    time.Duration // how often this node reports its load
	StopTimeout     time.Duration // default grace period of `migshm stop` before SIGKILL
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

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
	if c.NodeID != "" && !nodeIDPattern.MatchString(c.NodeID) {
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
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.SegmentInterval < 50*time.Millisecond || c.LoadInterval < 50*time.Millisecond {
		return errors.New("segment-interval and load-interval must be at least 50ms")
	}
	if c.StopTimeout < 100*time.Millisecond {
		return fmt.Errorf("stop-timeout %v: give workloads at least 100ms to exit before SIGKILL", c.StopTimeout)
	}
	return nil
}

// Flags returns the daemon's command-line flags. Each has an env var MIGSHMD_<NAME> and
// may be set in the TOML config file under its flag name (flag > env > file > default).
func Flags() []cli.Flag {
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
		dur("segment-interval", "how often workloads' segments are read", time.Second),
		dur("load-interval", "how often this node reports its load", 5*time.Second),
		dur("stop-timeout", "default grace period of migshm stop before SIGKILL", 10*time.Second),
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
		SegmentInterval: c.Duration("segment-interval"),
		LoadInterval:    c.Duration("load-interval"),
		StopTimeout:     c.Duration("stop-timeout"),
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
