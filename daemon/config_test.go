package daemon

import (
	"errors"
	"github.com/migshm/migshm/internal/retention"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/migshm/migshm/migrate"
	"github.com/urfave/cli/v2"
)

// exampleConfig is the config file shipped for systemd.
const exampleConfig = "../deploy/systemd/migshmd.toml"

// clearConfigEnv unsets every environment variable the daemon's flags read, for the
// duration of the test, so that the caller's environment cannot leak into a result.
func clearConfigEnv(t *testing.T) {
	t.Helper()
	for _, f := range Flags() {
		ev, ok := f.(interface{ GetEnvVars() []string })
		if !ok {
			t.Fatalf("flag %s has no env vars", f.Names()[0])
		}
		for _, name := range ev.GetEnvVars() {
			t.Setenv(name, "") // restores the old value at the end of the test
			os.Unsetenv(name)
		}
	}
}

// loadConfig runs args through the daemon's flags and config loading exactly as
// cmd/migshmd does (Flags, Before: LoadConfigFile, ConfigFromCLI), except that the
// default config path is defaultConfig, so a file in /etc on the test host never leaks in.
func loadConfig(t *testing.T, defaultConfig string, args ...string) (Config, error) {
	t.Helper()
	flags := Flags()
	cf, ok := flags[0].(*cli.StringFlag)
	if !ok || cf.Name != "config" {
		t.Fatalf("first flag is %T %v, want the config string flag", flags[0], flags[0].Names())
	}
	if cf.Value != DefaultConfigFile {
		t.Fatalf("config flag default %q, want %q", cf.Value, DefaultConfigFile)
	}
	cf.Value = defaultConfig
	var cfg Config
	ran := false
	app := &cli.App{
		Name: "migshmd", Flags: flags, Before: LoadConfigFile, Writer: io.Discard, ErrWriter: io.Discard,
		Action: func(c *cli.Context) error {
			ran = true
			var err error
			cfg, err = ConfigFromCLI(c)
			return err
		},
	}
	err := app.Run(append([]string{"migshmd"}, args...))
	if err == nil && !ran {
		t.Fatalf("migshmd %q: the action did not run", args)
	}
	return cfg, err
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence checks flag > env (MIGSHMD_*) > config file > default for a
// string, a bool, a duration and the join list.
func TestConfigPrecedence(t *testing.T) {
	file := `
node-id = "from-file"
bootstrap = true
stop-timeout = "20s"
join = ["10.0.0.1:7421", "10.0.0.2:7421"]
`
	type levels struct {
		file bool
		env  map[string]string
		args []string
	}
	tests := []struct {
		name  string
		lv    levels
		check func(Config) (got, want any)
	}{
		{"string/default", levels{}, func(c Config) (any, any) { return c.NodeID, "" }},
		{"string/file", levels{file: true}, func(c Config) (any, any) { return c.NodeID, "from-file" }},
		{"string/env", levels{file: true, env: map[string]string{"MIGSHMD_NODE_ID": "from-env"}},
			func(c Config) (any, any) { return c.NodeID, "from-env" }},
		{"string/flag", levels{file: true, env: map[string]string{"MIGSHMD_NODE_ID": "from-env"}, args: []string{"--node-id", "from-flag"}},
			func(c Config) (any, any) { return c.NodeID, "from-flag" }},

		{"bool/default", levels{}, func(c Config) (any, any) { return c.Bootstrap, false }},
		{"bool/file", levels{file: true}, func(c Config) (any, any) { return c.Bootstrap, true }},
		{"bool/env", levels{file: true, env: map[string]string{"MIGSHMD_BOOTSTRAP": "false"}},
			func(c Config) (any, any) { return c.Bootstrap, false }},
		{"bool/flag", levels{file: true, env: map[string]string{"MIGSHMD_BOOTSTRAP": "false"}, args: []string{"--bootstrap"}},
			func(c Config) (any, any) { return c.Bootstrap, true }},
		{"bool/flag false", levels{file: true, args: []string{"--bootstrap=false"}},
			func(c Config) (any, any) { return c.Bootstrap, false }},

		{"duration/default", levels{}, func(c Config) (any, any) { return c.StopTimeout, 10 * time.Second }},
		{"duration/file", levels{file: true}, func(c Config) (any, any) { return c.StopTimeout, 20 * time.Second }},
		{"duration/env", levels{file: true, env: map[string]string{"MIGSHMD_STOP_TIMEOUT": "30s"}},
			func(c Config) (any, any) { return c.StopTimeout, 30 * time.Second }},
		{"duration/flag", levels{file: true, env: map[string]string{"MIGSHMD_STOP_TIMEOUT": "30s"}, args: []string{"--stop-timeout", "40s"}},
			func(c Config) (any, any) { return c.StopTimeout, 40 * time.Second }},

		{"join/default", levels{}, func(c Config) (any, any) { return c.Join, []string(nil) }},
		{"join/file", levels{file: true}, func(c Config) (any, any) { return c.Join, []string{"10.0.0.1:7421", "10.0.0.2:7421"} }},
		{"join/env", levels{file: true, env: map[string]string{"MIGSHMD_JOIN": "10.0.0.3:7421, 10.0.0.4:7421"}},
			func(c Config) (any, any) { return c.Join, []string{"10.0.0.3:7421", "10.0.0.4:7421"} }},
		{"join/flag", levels{file: true, env: map[string]string{"MIGSHMD_JOIN": "10.0.0.3:7421"},
			args: []string{"--join", "10.0.0.5:7421", "--join", "10.0.0.6:7421,10.0.0.7:7421"}},
			func(c Config) (any, any) { return c.Join, []string{"10.0.0.5:7421", "10.0.0.6:7421", "10.0.0.7:7421"} }},

		// The file may be named by the environment too.
		{"file via MIGSHMD_CONFIG", levels{env: map[string]string{"MIGSHMD_CONFIG": "FILE"}},
			func(c Config) (any, any) { return c.NodeID, "from-file" }},
		// The criu flag also reads the CLI's MIGSHM_CRIU.
		{"criu/MIGSHM_CRIU", levels{env: map[string]string{migrate.EnvCRIU: "/x/criu"}},
			func(c Config) (any, any) { return c.CRIU, "/x/criu" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearConfigEnv(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "migshmd.toml")
			if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
				t.Fatal(err)
			}
			var args []string
			if tt.lv.file {
				args = append(args, "--config", path)
			}
			for k, v := range tt.lv.env {
				if v == "FILE" {
					v = path
				}
				t.Setenv(k, v)
			}
			args = append(args, tt.lv.args...)
			cfg, err := loadConfig(t, filepath.Join(dir, "absent.toml"), args...)
			if err != nil {
				t.Fatalf("migshmd %q: %v", args, err)
			}
			if got, want := tt.check(cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("migshmd %q with env %v: got %#v, want %#v", args, tt.lv.env, got, want)
			}
		})
	}
}

// TestConfigFile checks how the config file is found and what a broken one does.
func TestConfigFile(t *testing.T) {
	tests := []struct {
		name    string
		text    string // the file's content; "" with noFile: no file
		noFile  bool
		asDef   bool   // the file is the default path, not named by --config
		env     bool   // named by MIGSHMD_CONFIG instead of --config
		wantErr string // "" for success; "FILE" is replaced by the file's path
		want    func(Config) bool
	}{
		{name: "default path absent", noFile: true, asDef: true,
			want: func(c Config) bool { return c.NodeID == "" && c.StopTimeout == 10*time.Second }},
		{name: "default path present", text: `node-id = "n9"`, asDef: true,
			want: func(c Config) bool { return c.NodeID == "n9" }},
		{name: "named file missing", noFile: true, wantErr: "config file FILE"},
		{name: "env-named file missing", noFile: true, env: true, wantErr: "config file FILE"},
		{name: "empty file", text: "", want: func(c Config) bool { return c.NodeID == "" }},
		// All zeros keeps no history; it does not fall back to the defaults.
		{name: "retention keeps none", text: "retain-migrations = 0\nretain-exited = 0\nretain-age = \"0s\"\n",
			want: func(c Config) bool {
				return c.Retention == retention.Policy{Batch: retention.DefaultPolicy().Batch}
			}},
		{name: "malformed", text: "node-id = \"n1\n", wantErr: "config file FILE"},
		{name: "malformed default", text: "node-id = [", asDef: true, wantErr: "config file FILE"},
		{name: "bool as string", text: `bootstrap = "yes"`, wantErr: "bootstrap"},
		{name: "duration as integer", text: `stop-timeout = 10`, wantErr: "stop-timeout"},
		{name: "bad duration", text: `load-interval = "soon"`, wantErr: "load-interval"},
		{name: "join as string", text: `join = "10.0.0.1:7421"`, wantErr: "join"},
		{name: "join of numbers", text: `join = [7421]`, wantErr: "join"},
		{name: "string as number", text: `node-id = 7`, wantErr: "node-id"},
		// A value that loads but Normalize refuses names the setting.
		{name: "bad value", text: `raft-addr = "7420"`, wantErr: `raft-addr "7420"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearConfigEnv(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "migshmd.toml")
			if !tt.noFile {
				if err := os.WriteFile(path, []byte(tt.text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			def := filepath.Join(dir, "default-absent.toml")
			var args []string
			switch {
			case tt.asDef:
				def = path
			case tt.env:
				t.Setenv("MIGSHMD_CONFIG", path)
			default:
				args = []string{"--config", path}
			}
			cfg, err := loadConfig(t, def, args...)
			if tt.wantErr != "" {
				want := strings.ReplaceAll(tt.wantErr, "FILE", path)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("got %v, want an error containing %q", err, want)
				}
				// Every file problem names the file.
				if !strings.HasPrefix(tt.text, "raft-addr") && !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the file %s", err, path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(cfg) {
				t.Errorf("config %+v", cfg)
			}
		})
	}
	t.Run("no config", func(t *testing.T) {
		clearConfigEnv(t)
		if _, err := loadConfig(t, filepath.Join(t.TempDir(), "x.toml"), "--config", ""); err != nil {
			t.Fatalf("--config '': %v", err)
		}
	})
}

// TestConfigFileUnknownKey: a misspelt key (node_id for node-id) must not be silently
// ignored: the node would start with the default instead of what the admin wrote.
func TestConfigFileUnknownKey(t *testing.T) {
	clearConfigEnv(t)
	path := writeFile(t, "migshmd.toml", "node_id = \"node1\"\nbootstrap = true\n")
	cfg, err := loadConfig(t, filepath.Join(t.TempDir(), "absent.toml"), "--config", path)
	if err == nil {
		t.Fatalf("config file %s with the unknown key node_id loads without error (node-id = %q); "+
			"LoadConfigFile should reject keys that are not flag names", path, cfg.NodeID)
	}
	if !strings.Contains(err.Error(), "node_id") || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q should name the key node_id and the file", err)
	}
}

func TestNormalize(t *testing.T) {
	base := func() Config { return Config{DataDir: "/srv/migshmd"} }
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"node-id ok", func(c *Config) { c.NodeID = "node-1.a_b" }, ""},
		{"retention negative", func(c *Config) { c.Retention = retention.Policy{Migrations: 5, Exited: -1} }, "retain-exited -1"},
		{"retention none kept", func(c *Config) { c.Retention = retention.Policy{MaxAge: time.Hour} }, ""},
		{"node-id leading dash", func(c *Config) { c.NodeID = "-n1" }, "node-id"},
		{"node-id space", func(c *Config) { c.NodeID = "n 1" }, "node-id"},
		{"node-id slash", func(c *Config) { c.NodeID = "n/1" }, "node-id"},
		{"node-id too long", func(c *Config) { c.NodeID = strings.Repeat("a", 64) }, "node-id"},
		{"node-id 63", func(c *Config) { c.NodeID = strings.Repeat("a", 63) }, ""},
		{"raft-addr no port", func(c *Config) { c.RaftAddr = "10.0.0.1" }, "raft-addr"},
		{"raft-addr port only", func(c *Config) { c.RaftAddr = "7420" }, "raft-addr"},
		{"peer-addr bad", func(c *Config) { c.PeerAddr = "a:b:c" }, "peer-addr"},
		{"raft-addr ipv6", func(c *Config) { c.RaftAddr = "[::1]:7420" }, ""},
		{"same addrs", func(c *Config) { c.RaftAddr, c.PeerAddr = "0.0.0.0:9000", "0.0.0.0:9000" }, "different ports"},
		{"default raft with peer on its port", func(c *Config) { c.PeerAddr = DefaultRaftAddr }, "different ports"},
		{"join ok", func(c *Config) { c.Join = []string{"10.0.0.1:7421", "node2:7421"} }, ""},
		{"join no port", func(c *Config) { c.Join = []string{"10.0.0.1:7421", "10.0.0.2"} }, `join "10.0.0.2"`},
		{"advertise ip", func(c *Config) { c.Advertise = "10.0.0.1" }, ""},
		{"advertise ipv6", func(c *Config) { c.Advertise = "fd00::1" }, ""},
		{"advertise with port", func(c *Config) { c.Advertise = "10.0.0.1:7420" }, "advertise"},
		{"log level debug", func(c *Config) { c.LogLevel = "debug" }, ""},
		{"log level bad", func(c *Config) { c.LogLevel = "verbose" }, "log-level"},
		{"segment interval tiny", func(c *Config) { c.SegmentInterval = 10 * time.Millisecond }, "segment-interval"},
		{"load interval tiny", func(c *Config) { c.LoadInterval = time.Millisecond }, "load-interval"},
		{"load interval negative", func(c *Config) { c.LoadInterval = -time.Second }, "load-interval"},
		{"intervals at the minimum", func(c *Config) { c.SegmentInterval, c.LoadInterval = 50*time.Millisecond, 50*time.Millisecond }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			err := c.Normalize()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Normalize(%+v): %v", c, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Normalize: got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestNormalizeStopTimeout: a negative stop-timeout would make every `migshm stop` without
// --timeout a SIGKILL at once (time.After fires immediately); it should be refused like the
// intervals are.
func TestNormalizeStopTimeout(t *testing.T) {
	c := Config{DataDir: "/srv/migshmd", StopTimeout: -time.Second}
	if err := c.Normalize(); err == nil {
		t.Fatal("Normalize accepts stop-timeout -1s; handleStop would then SIGKILL without a grace period")
	}
}

func TestNormalizeDefaults(t *testing.T) {
	c := Config{DataDir: "/srv/m"}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	want := Config{
		DataDir: "/srv/m", WorkloadDir: "/srv/m/workloads", ImageDir: DefaultImageDir, Socket: DefaultSocket,
		RaftAddr: DefaultRaftAddr, PeerAddr: DefaultPeerAddr,
		TLSCA: "/srv/m/tls/ca.crt", TLSCert: "/srv/m/tls/node.crt", TLSKey: "/srv/m/tls/node.key",
		LogLevel: "info", SegmentInterval: time.Second, LoadInterval: 5 * time.Second, StopTimeout: 10 * time.Second, ProgressTimeout: 2 * time.Second,
		// A Config built by hand balances only when told (AutoBalance false), with
		// zero thresholds and cooldowns as given; the interval and cap need a value.
		BalanceInterval: DefaultBalanceInterval, MaxMigrations: 4, Retention: retention.DefaultPolicy(),
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Normalize filled\n %+v\nwant\n %+v", c, want)
	}

	// Empty data-dir: the default; a relative one is made absolute before the paths
	// derived from it.
	c = Config{}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if c.DataDir != DefaultDataDir || c.WorkloadDir != DefaultDataDir+"/workloads" {
		t.Errorf("empty data-dir: %q, workload dir %q", c.DataDir, c.WorkloadDir)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	c = Config{DataDir: "state"}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if c.DataDir != filepath.Join(wd, "state") || c.TLSKey != filepath.Join(wd, "state", "tls", "node.key") {
		t.Errorf("relative data-dir: data %q, tls key %q", c.DataDir, c.TLSKey)
	}

	// Explicit settings are kept.
	c = Config{DataDir: "/srv/m", WorkloadDir: "/w", TLSCA: "/ca", TLSCert: "/crt", TLSKey: "/key", Socket: "/s",
		StopTimeout: time.Minute}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if c.WorkloadDir != "/w" || c.TLSCA != "/ca" || c.TLSCert != "/crt" || c.TLSKey != "/key" || c.Socket != "/s" ||
		c.StopTimeout != time.Minute {
		t.Errorf("explicit settings changed: %+v", c)
	}
}

// exampleSetting is one key of the shipped example config, set or commented out.
type exampleSetting struct {
	key       string
	value     any
	line      int
	commented bool
}

// commentedSetting matches a commented-out `# key = value` line, as deploy/systemd's test does.
var commentedSetting = regexp.MustCompile(`^#\s?([a-z][a-z0-9-]*\s*=.*)$`)

// readExample returns the settings of the example config, including commented-out ones.
func readExample(t *testing.T) []exampleSetting {
	t.Helper()
	b, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	md, err := toml.Decode(string(b), &doc)
	if err != nil {
		t.Fatalf("%s: %v", exampleConfig, err)
	}
	var out []exampleSetting
	for _, k := range md.Keys() {
		out = append(out, exampleSetting{key: k.String(), value: doc[k.String()]})
	}
	for i, line := range strings.Split(string(b), "\n") {
		m := commentedSetting.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var one map[string]any
		if _, err := toml.Decode(m[1], &one); err != nil {
			t.Fatalf("%s:%d: commented-out setting does not parse: %v", exampleConfig, i+1, err)
		}
		for k, v := range one {
			out = append(out, exampleSetting{key: k, value: v, line: i + 1, commented: true})
		}
	}
	return out
}

// TestExampleConfigLoads loads the shipped example through the real flags.
func TestExampleConfigLoads(t *testing.T) {
	clearConfigEnv(t)
	cfg, err := loadConfig(t, filepath.Join(t.TempDir(), "absent.toml"), "--config", exampleConfig)
	if err != nil {
		t.Fatalf("--config %s: %v", exampleConfig, err)
	}
	want := Config{
		NodeID: "node1", Advertise: "10.0.0.11", Bootstrap: true,
		TLSCA: "/var/lib/migshmd/tls/ca.crt", TLSCert: "/var/lib/migshmd/tls/node.crt", TLSKey: "/var/lib/migshmd/tls/node.key",
		DataDir: DefaultDataDir, WorkloadDir: DefaultDataDir + "/workloads", ImageDir: DefaultImageDir, ImageTmpfs: true, Socket: DefaultSocket,
		RaftAddr: DefaultRaftAddr, PeerAddr: DefaultPeerAddr, LogLevel: "info",
		SegmentInterval: time.Second, LoadInterval: 5 * time.Second, StopTimeout: 10 * time.Second, ProgressTimeout: 2 * time.Second,
		MetricsAddr: "127.0.0.1:9641", AutoBalance: true, BalanceInterval: DefaultBalanceInterval, BalanceThreshold: 0.1,
		BalanceMargin: 0.005, WorkloadCooldown: 5 * time.Minute, NodeCooldown: 30 * time.Second, MaxMigrations: 4,
		MemFloor: 512 << 20, Retention: retention.DefaultPolicy(),
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("%s gives\n %+v\nwant\n %+v", exampleConfig, cfg, want)
	}

	// A flag still wins over the file.
	cfg, err = loadConfig(t, filepath.Join(t.TempDir(), "absent.toml"), "--config", exampleConfig, "--node-id", "node2", "--bootstrap=false")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "node2" || cfg.Bootstrap {
		t.Errorf("flags over the example: node-id %q bootstrap %v", cfg.NodeID, cfg.Bootstrap)
	}
}

// TestExampleConfigCommentedDefaults: the example says a commented-out key shows its
// default. Uncommenting all of them (but join, an example of a list) must change nothing.
func TestExampleConfigCommentedDefaults(t *testing.T) {
	clearConfigEnv(t)
	var text strings.Builder
	for _, s := range readExample(t) {
		if !s.commented || s.key == "join" {
			continue
		}
		b, err := toml.Marshal(map[string]any{s.key: s.value})
		if err != nil {
			t.Fatal(err)
		}
		text.Write(b)
	}
	path := writeFile(t, "defaults.toml", text.String())
	absent := filepath.Join(t.TempDir(), "absent.toml")
	got, err := loadConfig(t, absent, "--config", path)
	if err != nil {
		t.Fatalf("the commented-out settings of %s:\n%s\n%v", exampleConfig, text.String(), err)
	}
	def, err := loadConfig(t, absent)
	if err != nil {
		t.Fatal(err)
	}
	def.CRIU = migrate.DefaultCRIUPrefix + "/bin/criu" // the flag's default is "" for "FindCRIU's default"
	if !reflect.DeepEqual(got, def) {
		t.Errorf("commented-out settings of %s are not the defaults:\n%s\ngive\n %+v\ndefaults\n %+v", exampleConfig, text.String(), got, def)
	}
}

// TestExampleConfigMatchesFlags: every key of the example (set or commented out) is a
// daemon flag, every flag but config is in the example, and the example names each
// flag's environment variable.
func TestExampleConfigMatchesFlags(t *testing.T) {
	flags := map[string]cli.Flag{}
	for _, f := range Flags() {
		flags[f.Names()[0]] = f
	}
	seen := map[string]bool{}
	for _, s := range readExample(t) {
		if _, ok := flags[s.key]; !ok || s.key == "config" {
			t.Errorf("%s:%d: key %q is not a migshmd flag", exampleConfig, s.line, s.key)
		}
		seen[s.key] = true
	}
	b, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range flags {
		if name == "config" {
			continue
		}
		if !seen[name] {
			t.Errorf("flag --%s is not in %s (set, or commented out with its default)", name, exampleConfig)
		}
		env := f.(interface{ GetEnvVars() []string }).GetEnvVars()
		if len(env) == 0 || !slices.Contains(env, "MIGSHMD_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))) {
			t.Errorf("flag --%s: env vars %v, want MIGSHMD_<NAME>", name, env)
			continue
		}
		if !strings.Contains(string(b), env[0]) {
			t.Errorf("%s does not mention %s, the env var of --%s", exampleConfig, env[0], name)
		}
	}
}

// TestConfigErrorIsPlain: a config problem must be a plain error. urfave/cli's App.Run
// calls os.Exit itself for a cli.ExitCoder, and cmd/migshmd prints "migshmd: <err>".
func TestConfigErrorIsPlain(t *testing.T) {
	clearConfigEnv(t)
	_, err := loadConfig(t, filepath.Join(t.TempDir(), "absent.toml"), "--config", filepath.Join(t.TempDir(), "nope.toml"))
	var ec cli.ExitCoder
	if err == nil || errors.As(err, &ec) {
		t.Fatalf("got %v (%T), want a plain error", err, err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"", 0, false}, {"0", 0, false}, {"4096", 4096, false}, {"512MiB", 512 << 20, false}, {"512M", 512 << 20, false},
		{"1.5GiB", 3 << 29, false}, {"2 gib", 2 << 30, false}, {"1T", 1 << 40, false}, {"10B", 10, false},
		{"-1", 0, true}, {"12XB", 0, true}, {"GiB", 0, true}, {"1e3", 0, true}, {"99999999TiB", 0, true},
	} {
		got, err := parseSize("mem-floor", tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
		if err != nil && !strings.Contains(err.Error(), "mem-floor") {
			t.Errorf("parseSize(%q): error %q does not name the setting", tt.in, err)
		}
	}
}

func TestBalancerSettingsChecked(t *testing.T) {
	for _, args := range [][]string{
		{"--balance-threshold", "-0.1"}, {"--balance-margin", "-1"}, {"--node-cooldown", "-1s"},
		{"--max-migrations", "-2"}, {"--balance-interval", "10ms"}, {"--capacity-cores", "-1"}, {"--mem-floor", "lots"},
		{"--capacity-cores", "NaN"}, {"--capacity-cores", "+Inf"}, // FuzzConfig: JSON cannot encode the load reports
	} {
		if _, err := loadConfig(t, filepath.Join(t.TempDir(), "absent.toml"), args...); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
