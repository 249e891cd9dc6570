// Package systemd holds migshmd's systemd unit and example config; its tests check them.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/migshm/migshm/internal/testenv"
)

const (
	unitFile   = "migshmd.service"
	configFile = "migshmd.toml"
	// installedDaemon is where the unit expects migshmd.
	installedDaemon = "/usr/local/bin/migshmd"
	// installedConfig is where the README installs migshmd.toml and the unit points --config.
	installedConfig = "/etc/migshm/migshmd.toml"
)

// unit is a parsed unit file: section -> key -> values, in file order.
type unit map[string]map[string][]string

// parseUnit reads a unit file as systemd does for what these tests need: [Section]
// headers, Key=Value lines, '#' and ';' comments, backslash continuation lines, and an
// empty assignment resetting the key's list.
func parseUnit(text string) (unit, error) {
	u := unit{}
	section := ""
	var pending string // a line continued with a backslash
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", n, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: want Key=Value inside a [Section], got %q", n, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if value == "" {
			u[section][key] = nil
			continue
		}
		u[section][key] = append(u[section][key], value)
	}
	if pending != "" {
		return nil, errors.New("file ends in a continuation line")
	}
	return u, sc.Err()
}

func readUnit(t *testing.T) (string, unit) {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(string(b))
	if err != nil {
		t.Fatalf("%s: %v", unitFile, err)
	}
	return string(b), u
}

// TestUnitSettings asserts the settings migshm depends on, and the absence of the sandboxing
// that CRIU and the workloads it restores would inherit.
func TestUnitSettings(t *testing.T) {
	_, u := readUnit(t)

	want := []struct{ section, key, value, why string }{
		{"Unit", "Wants", "network-online.target", "the default --advertise is read from the interfaces at start"},
		{"Unit", "After", "network-online.target", "the default --advertise is read from the interfaces at start"},
		{"Service", "Type", "notify", "the daemon sends READY=1 once Raft and its listeners are up"},
		{"Service", "NotifyAccess", "main", "workloads inherit NOTIFY_SOCKET; only the daemon may notify"},
		{"Service", "KillMode", "process", "workloads are the daemon's children and must survive its restart"},
		{"Service", "StateDirectory", "migshmd", "/var/lib/migshmd is the default --data-dir"},
		{"Service", "StateDirectoryMode", "0700", "Raft state, TLS keys and CRIU images are private"},
		{"Service", "RuntimeDirectory", "migshmd", "/run/migshmd holds the default --socket"},
		{"Service", "RuntimeDirectoryMode", "0700", "the local API is root only"},
		{"Service", "Restart", "on-failure", "a crashed daemon must come back"},
		{"Service", "UMask", "0077", "everything the daemon writes is private"},
		{"Service", "TasksMax", "infinity", "the workloads share the unit's task limit"},
		{"Service", "OOMPolicy", "continue", "a workload's OOM kill must not stop the daemon"},
		{"Install", "WantedBy", "multi-user.target", "start at boot"},
	}
	for _, w := range want {
		got := u[w.section][w.key]
		if len(got) != 1 || got[0] != w.value {
			t.Errorf("[%s] %s = %q, want exactly %s=%s (%s)", w.section, w.key, got, w.key, w.value, w.why)
		}
	}

	execStart := u["Service"]["ExecStart"]
	if len(execStart) != 1 {
		t.Fatalf("ExecStart = %q, want exactly one", execStart)
	}
	f := strings.Fields(execStart[0])
	if i := slices.Index(f, "--config"); f[0] != installedDaemon || i < 0 || i+1 >= len(f) || f[i+1] != installedConfig {
		t.Errorf("ExecStart=%s, want %s ... --config %s ...", execStart[0], installedDaemon, installedConfig)
	}

	// Each of these would be inherited by CRIU and by every workload the daemon starts or
	// restores: a private mount namespace (another /tmp, read-only /usr, hidden /home), no
	// setuid, no devices, a seccomp filter, fewer capabilities, no executable mappings for
	// CRIU's restorer, no new namespaces, no /proc/sys writes (ns_last_pid), another user.
	forbidden := []string{
		"PrivateTmp", "ProtectSystem", "NoNewPrivileges", "ProtectHome",
		"PrivateDevices", "PrivateIPC", "PrivateNetwork", "PrivateMounts", "PrivateUsers", "PrivatePIDs",
		"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
		"ProtectProc", "ProtectClock", "ProtectHostname", "ReadOnlyPaths", "InaccessiblePaths",
		"TemporaryFileSystem", "RootDirectory", "RootImage",
		"SystemCallFilter", "SystemCallArchitectures", "MemoryDenyWriteExecute", "RestrictNamespaces",
		"RestrictSUIDSGID", "LockPersonality", "CapabilityBoundingSet",
		"User", "DynamicUser", "RemoveIPC",
	}
	for section, keys := range u {
		for key := range keys {
			if slices.Contains(forbidden, key) {
				t.Errorf("[%s] sets %s: CRIU and the processes it restores inherit it; remove it", section, key)
			}
		}
	}
}

// TestUnitVerifies runs `systemd-analyze verify` on a copy of the unit whose ExecStart
// points at a freshly built migshmd (verify insists that the binary exists) and fails on
// any problem it reports about the unit.
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Unavailable(t, "systemd-analyze not found (install the systemd package): %v", err)
	}
	text, _ := readUnit(t)
	bin := filepath.Join(t.TempDir(), "migshmd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/migshm/migshm/cmd/migshmd").CombinedOutput(); err != nil {
		t.Fatalf("go build migshmd: %v\n%s", err, out)
	}
	shipped := withExecStart(t, text, bin)

	tests := []struct {
		name        string
		unit        string
		wantProblem bool // false: the unit as shipped must be clean
	}{
		{"as shipped", shipped, false},
		// Make sure this systemd-analyze reports problems in a form the filter sees, so a
		// clean result above means something.
		{"unknown key", strings.Replace(shipped, "\n[Service]\n", "\n[Service]\nKilMode=process\n", 1), true},
		{"missing binary", strings.Replace(shipped, bin, bin+"-missing", 1), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			problems, out, err := verify(t, analyze, tt.unit)
			switch {
			case !tt.wantProblem && (len(problems) > 0 || err != nil):
				t.Errorf("systemd-analyze verify %s: %v; about the unit:\n  %s\nfull output:\n%s",
					unitFile, err, strings.Join(problems, "\n  "), out)
			case tt.wantProblem && len(problems) == 0:
				t.Errorf("systemd-analyze verify reported nothing about a broken %s (err %v); full output:\n%s",
					unitFile, err, out)
			default:
				t.Logf("systemd-analyze verify: err %v, output:\n%s", err, out)
			}
		})
	}
}

// withExecStart returns the unit text with ExecStart's binary replaced by bin.
func withExecStart(t *testing.T, text, bin string) string {
	t.Helper()
	var b strings.Builder
	n := 0
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(line, "ExecStart="+installedDaemon+" "); ok {
			line = "ExecStart=" + bin + " " + rest
			n++
		}
		b.WriteString(line)
	}
	if n != 1 {
		t.Fatalf("%s: found %d lines starting ExecStart=%s, want 1", unitFile, n, installedDaemon)
	}
	return b.String()
}

// verify writes text as migshmd.service in a temporary directory and runs systemd-analyze
// verify on it. It returns the output lines that mention the unit (problems with other units
// of the machine may appear and are not ours), the whole output, and the exit error.
func verify(t *testing.T, analyze, text string) (problems []string, out string, err error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), unitFile)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, "verify", file)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	for line := range strings.Lines(buf.String()) {
		if strings.Contains(line, unitFile) {
			problems = append(problems, strings.TrimSpace(line))
		}
	}
	return problems, buf.String(), err
}

// fileKeys are the keys migshmd.toml may hold: the daemon's flag names, all but "config",
// with the TOML type the daemon's config loader (urfave/cli altsrc) accepts for each. The
// daemon's own config test checks this list against its flags.
var fileKeys = map[string]valueKind{
	"node-id":           kindString,
	"data-dir":          kindString,
	"workload-dir":      kindString,
	"image-dir":         kindString,
	"image-tmpfs":       kindBool,
	"socket":            kindString,
	"raft-addr":         kindString,
	"peer-addr":         kindString,
	"advertise":         kindString,
	"bootstrap":         kindBool,
	"join":              kindStrings,
	"tls-ca":            kindString,
	"tls-cert":          kindString,
	"tls-key":           kindString,
	"criu":              kindString,
	"log-level":         kindString,
	"segment-interval":  kindDuration,
	"load-interval":     kindDuration,
	"stop-timeout":      kindDuration,
	"progress-timeout":  kindDuration,
	"retain-migrations": kindInt,
	"retain-exited":     kindInt,
	"retain-age":        kindDuration,
	"metrics-addr":      kindString,

	"auto-balance":      kindBool,
	"balance-interval":  kindDuration,
	"balance-threshold": kindFloat,
	"balance-margin":    kindFloat,
	"workload-cooldown": kindDuration,
	"node-cooldown":     kindDuration,
	"max-migrations":    kindInt,
	"mem-floor":         kindString,
	"capacity-cores":    kindFloat,
	"mem-capacity":      kindString,

	"ip-parent":  kindString,
	"ip-pool":    kindString,
	"ip-gateway": kindString,
}

type valueKind string

const (
	kindString   valueKind = "a string"
	kindBool     valueKind = "a boolean"
	kindStrings  valueKind = "an array of strings"
	kindDuration valueKind = `a duration string such as "1s"`
	kindFloat    valueKind = "a float (with a decimal point, e.g. 1.0)"
	kindInt      valueKind = "an integer"
)

func (k valueKind) check(v any) error {
	switch k {
	case kindString:
		if _, ok := v.(string); ok {
			return nil
		}
	case kindBool:
		if _, ok := v.(bool); ok {
			return nil
		}
	case kindStrings:
		if a, ok := v.([]any); ok {
			for _, e := range a {
				if _, ok := e.(string); !ok {
					return fmt.Errorf("want %s, got element %#v", k, e)
				}
			}
			return nil
		}
	case kindFloat:
		if _, ok := v.(float64); ok {
			return nil
		}
	case kindInt:
		if _, ok := v.(int64); ok {
			return nil
		}
	case kindDuration:
		if s, ok := v.(string); ok {
			if _, err := time.ParseDuration(s); err != nil {
				return fmt.Errorf("want %s: %v", k, err)
			}
			return nil
		}
	}
	return fmt.Errorf("want %s, got %T %#v", k, v, v)
}

// setting is one key of the example config, set or commented out.
type setting struct {
	key       string
	value     any
	line      int
	commented bool
}

// commentedSetting matches a commented-out key = value line ("# data-dir = ...").
var commentedSetting = regexp.MustCompile(`^#\s?([a-z][a-z0-9-]*\s*=.*)$`)

// readConfig parses the example config, and each commented-out setting in it, as TOML. It
// returns the settings and the file's lines.
func readConfig(t *testing.T) ([]setting, []string) {
	t.Helper()
	b, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	md, err := toml.Decode(string(b), &doc)
	if err != nil {
		t.Fatalf("%s does not parse: %v", configFile, err)
	}
	lines := strings.Split(string(b), "\n")
	var settings []setting
	for _, k := range md.Keys() {
		if len(k) != 1 {
			t.Errorf("%s: key %s: the daemon reads top-level keys only, not tables", configFile, k)
			continue
		}
		s := setting{key: k[0], value: doc[k[0]]}
		for i, line := range lines {
			if key, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") && strings.TrimSpace(key) == s.key {
				s.line = i + 1
				break
			}
		}
		settings = append(settings, s)
	}
	for i, line := range lines {
		m := commentedSetting.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var one map[string]any
		if _, err := toml.Decode(m[1], &one); err != nil {
			t.Errorf("%s:%d: commented-out setting does not parse once uncommented: %v", configFile, i+1, err)
			continue
		}
		for k, v := range one {
			settings = append(settings, setting{key: k, value: v, line: i + 1, commented: true})
		}
	}
	return settings, lines
}

// TestExampleConfig checks that migshmd.toml parses, that every key in it, set or
// commented out, is a daemon flag with a value of the type the daemon accepts, that each
// appears once, with a comment saying what it does, and that every flag is documented.
func TestExampleConfig(t *testing.T) {
	settings, lines := readConfig(t)
	seen := map[string]int{}
	for _, s := range settings {
		where := fmt.Sprintf("%s:%d: %s", configFile, s.line, s.key)
		kind, ok := fileKeys[s.key]
		if !ok {
			t.Errorf("%s: not a migshmd flag (known: %s)", where, strings.Join(slices.Sorted(maps.Keys(fileKeys)), ", "))
			continue
		}
		if err := kind.check(s.value); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if prev, dup := seen[s.key]; dup {
			t.Errorf("%s: appears again (first on line %d)", where, prev)
		}
		seen[s.key] = s.line
		if !documented(lines, s.line) {
			t.Errorf("%s: no comment above it says what it does", where)
		}
	}
	for key := range fileKeys {
		if _, ok := seen[key]; !ok {
			t.Errorf("%s: flag %s is not in the example (set it, or show its default commented out, with what it does)",
				configFile, key)
		}
	}
}

// documented reports whether the setting on line n (1-based) has a comment above it that
// explains it; settings in a block (tls-cert, tls-key) share the comment above the block.
func documented(lines []string, n int) bool {
	for i := n - 2; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		switch {
		case l == "" || strings.HasPrefix(l, "# ---"): // a blank line or a section rule
			return false
		case commentedSetting.MatchString(l) || !strings.HasPrefix(l, "#"):
			continue // another setting of the same block
		default:
			return true
		}
	}
	return false
}

// TestConfigMatchesUnit checks that the example's paths live where the unit creates
// directories, so a node set up from the README starts.
func TestConfigMatchesUnit(t *testing.T) {
	_, u := readUnit(t)
	stateDir := "/var/lib/" + first(u["Service"]["StateDirectory"])
	runtimeDir := "/run/" + first(u["Service"]["RuntimeDirectory"])
	under := map[string]string{
		"data-dir": stateDir, "workload-dir": stateDir,
		"tls-ca": stateDir, "tls-cert": stateDir, "tls-key": stateDir,
		"socket": runtimeDir,
	}
	settings, _ := readConfig(t)
	for _, s := range settings {
		dir, ok := under[s.key]
		if !ok {
			continue
		}
		p, _ := s.value.(string)
		if p != dir && !strings.HasPrefix(path.Clean(p), dir+"/") {
			t.Errorf("%s:%d: %s = %q is not under %s, which the unit creates", configFile, s.line, s.key, p, dir)
		}
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
