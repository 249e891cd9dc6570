package daemon

import (
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
)

// loadConfigText loads text as the config file, through the daemon's flags as
// cmd/migshmd does (see loadConfig), and returns LoadConfigFile's error apart.
func loadConfigText(t *testing.T, dir string, text []byte) (cfg Config, fileErr, err error) {
	t.Helper()
	path := filepath.Join(dir, "migshmd.toml")
	// Rewritten in place, not truncated first: ext4 flushes a file truncated to 0 and
	// rewritten when it is closed (auto_da_alloc), and a new file each time costs an
	// inode; either would be most of an input's time.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err == nil {
		_, err = w.WriteAt(text, 0)
	}
	if err == nil {
		err = w.Truncate(int64(len(text)))
	}
	if w != nil {
		w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	app := &cli.App{
		Name: "migshmd", Flags: Flags(), Writer: io.Discard, ErrWriter: io.Discard,
		Before: func(c *cli.Context) error { fileErr = LoadConfigFile(c); return fileErr },
		Action: func(c *cli.Context) error {
			ran = true
			cfg, err = ConfigFromCLI(c)
			return err
		},
	}
	if runErr := app.Run([]string{"migshmd", "--config", path}); runErr != nil && fileErr == nil && err == nil {
		t.Fatalf("%q: neither LoadConfigFile nor ConfigFromCLI failed, yet: %v", text, runErr)
	} else if runErr == nil && !ran {
		t.Fatalf("%q: the action did not run", text)
	}
	if fileErr != nil {
		err = fileErr
	}
	return cfg, fileErr, err
}

// configFile returns cfg as a config file's settings, keyed by flag name.
func configFile(cfg Config) map[string]any {
	join := cfg.Join
	if join == nil {
		join = []string{}
	}
	return map[string]any{
		"node-id": cfg.NodeID, "data-dir": cfg.DataDir, "workload-dir": cfg.WorkloadDir, "image-dir": cfg.ImageDir, "image-tmpfs": cfg.ImageTmpfs,
		"socket": cfg.Socket, "raft-addr": cfg.RaftAddr, "peer-addr": cfg.PeerAddr, "advertise": cfg.Advertise,
		"bootstrap": cfg.Bootstrap, "join": join, "tls-ca": cfg.TLSCA, "tls-cert": cfg.TLSCert, "tls-key": cfg.TLSKey,
		"criu": cfg.CRIU, "log-level": cfg.LogLevel, "metrics-addr": cfg.MetricsAddr,
		"segment-interval": cfg.SegmentInterval.String(), "load-interval": cfg.LoadInterval.String(),
		"stop-timeout": cfg.StopTimeout.String(), "progress-timeout": cfg.ProgressTimeout.String(),
		"retain-migrations": cfg.Retention.Migrations, "retain-exited": cfg.Retention.Exited,
		"retain-age":   cfg.Retention.MaxAge.String(),
		"auto-balance": cfg.AutoBalance, "balance-interval": cfg.BalanceInterval.String(),
		"balance-threshold": cfg.BalanceThreshold, "balance-margin": cfg.BalanceMargin,
		"workload-cooldown": cfg.WorkloadCooldown.String(), "node-cooldown": cfg.NodeCooldown.String(),
		"max-migrations": cfg.MaxMigrations, "mem-floor": strconv.FormatUint(cfg.MemFloor, 10),
		"capacity-cores": cfg.CapacityCores, "mem-capacity": strconv.FormatUint(cfg.MemCapacity, 10),
		"ip-parent": cfg.IPParent, "ip-pool": orEmpty(cfg.IPPool), "ip-gateway": orEmpty(cfg.IPGateway),
	}
}

// orEmpty is v's text, "" for the zero value (which an unset setting means).
func orEmpty[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

// FuzzConfig feeds the config file loader (LoadConfigFile, then ConfigFromCLI and
// Normalize) any file. It must not panic. What it refuses, it refuses with a plain error
// (cli.App.Run would os.Exit on a cli.ExitCoder), and a problem of the file names the
// file. What it accepts is a config the daemon can run with: its paths absolute, its
// numbers finite and not negative, Normalize a no-op on it, and written back as a
// config file it loads to the same Config.
func FuzzConfig(f *testing.F) {
	for _, ev := range Flags() {
		for _, name := range ev.(interface{ GetEnvVars() []string }).GetEnvVars() {
			f.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	var keys []string
	for _, fl := range Flags() {
		if n := fl.Names()[0]; n != "config" {
			keys = append(keys, n)
		}
	}
	for k := range configFile(Config{}) {
		if !slices.Contains(keys, k) {
			f.Fatalf("configFile writes %q, which is no flag", k)
		}
	}
	if n := len(configFile(Config{})); n != len(keys) {
		f.Fatalf("configFile writes %d settings; the daemon has %d flags besides config", n, len(keys))
	}

	// Seeds: the shipped example, as is and with every commented-out setting set; the
	// files of config_test.go; and values at and past the edges.
	example, err := os.ReadFile(exampleConfig)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(regexp.MustCompile(`(?m)^#\s?([a-z][a-z0-9-]*\s*=)`).ReplaceAllString(string(example), "$1")))
	for _, s := range []string{
		"", `node-id = "n9"`, "node-id = \"from-file\"\nbootstrap = true\nstop-timeout = \"20s\"\njoin = [\"10.0.0.1:7421\", \"10.0.0.2:7421\"]\n",
		"node-id = \"n1\n", "node-id = [", `bootstrap = "yes"`, `stop-timeout = 10`, `load-interval = "soon"`,
		`join = "10.0.0.1:7421"`, `join = [7421]`, `node-id = 7`, `raft-addr = "7420"`, "node_id = \"node1\"\nbootstrap = true\n",
		`join = ["10.0.0.1:7421, 10.0.0.2:7421", " node3:7421 "]`, `data-dir = "rel/state"`, `socket = "s.sock"`,
		`raft-addr = "[::1]:7420"`, `peer-addr = "0.0.0.0:7420"`, `metrics-addr = ""`, `metrics-addr = "0.0.0.0:7421"`,
		`advertise = "fd00::1"`, `advertise = "10.0.0.1:7420"`, `log-level = "verbose"`, `segment-interval = "50ms"`,
		`stop-timeout = "-1s"`, `progress-timeout = "199ms"`, `balance-interval = "2562047h"`, `max-migrations = -1`,
		`max-migrations = 9223372036854775807`, `balance-threshold = 1`, `balance-threshold = nan`, `balance-margin = -inf`,
		`retain-exited = -1`, "ip-parent = \"eth0\"\nip-pool = \"10.0.0.192/26\"\n", `ip-pool = "10.0.0.0/33"`,
		"ip-parent = \"eth0\"\nip-pool = \"fd00::/64\"\n", `ip-gateway = "10.0.0.1"`, `ip-parent = "eth0"`,
		"retain-migrations = 0\nretain-exited = 0\nretain-age = \"0s\"\n", `capacity-cores = 6.0`, `capacity-cores = -0.0`, `capacity-cores = nan`, `capacity-cores = inf`,
		`mem-floor = "1.5GiB"`, `mem-floor = "99999999TiB"`, `mem-capacity = "16 gib"`, `mem-capacity = 16`,
		"[node-id]\nx = 1\n", "[tls]\nca = \"/ca\"\n", `help = true`, `config = "/etc/other.toml"`,
	} {
		f.Add([]byte(s))
	}

	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, text []byte) {
		cfg, fileErr, err := loadConfigText(t, dir, text)
		if err != nil {
			var ec cli.ExitCoder
			switch {
			case err.Error() == "":
				t.Fatalf("%q: an empty error", text)
			case errors.As(err, &ec):
				t.Fatalf("%q: error %v is a cli.ExitCoder", text, err)
			case fileErr != nil && !strings.Contains(fileErr.Error(), filepath.Join(dir, "migshmd.toml")):
				t.Fatalf("%q: error %q does not name the file", text, fileErr)
			}
			return
		}
		for _, p := range []string{cfg.DataDir, cfg.WorkloadDir, cfg.ImageDir, cfg.Socket, cfg.TLSCA, cfg.TLSCert, cfg.TLSKey} {
			if !filepath.IsAbs(p) {
				t.Fatalf("%q: accepted with the relative path %q: %+v", text, p, cfg)
			}
		}
		for _, v := range []float64{cfg.BalanceThreshold, cfg.BalanceMargin, cfg.CapacityCores} {
			if !(v >= 0) || math.IsInf(v, 0) {
				t.Fatalf("%q: accepted with the number %v: %+v", text, v, cfg)
			}
		}
		again := cfg
		if err := again.Normalize(); err != nil || !reflect.DeepEqual(again, cfg) {
			t.Fatalf("%q: Normalize of the accepted config: %v, and\n %+v\nbecomes\n %+v", text, err, cfg, again)
		}
		out, err := toml.Marshal(configFile(cfg))
		if err != nil {
			t.Fatalf("%q: %+v as TOML: %v", text, cfg, err)
		}
		back, _, err := loadConfigText(t, dir, out)
		if err != nil || !reflect.DeepEqual(back, cfg) {
			t.Fatalf("%q: loads to\n %+v\nwritten back as\n%s\nit loads to\n %+v (%v)", text, cfg, out, back, err)
		}
	})
}
