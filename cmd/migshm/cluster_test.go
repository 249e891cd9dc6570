package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/shmowner/record"
)

var (
	fakeStatus = api.Status{
		Node: "n1", RaftAddr: "10.0.0.11:7420", APIAddr: "10.0.0.11:7421", RaftState: "Leader", Member: true,
		Leader: "n1", LeaderAddr: "10.0.0.11:7420", Term: 7, CommitIndex: 120, AppliedIndex: 119, LastLogIndex: 120,
		Workloads: 2, Version: "v0.1.0-test", Uptime: "1h2m3s",
		Peers: []api.Peer{
			{ID: "n1", Address: "10.0.0.11:7420", Suffrage: "Voter", Leader: true},
			{ID: "n2", Address: "10.0.0.12:7420", Suffrage: "Voter"},
		},
	}
	fakeSegments = []api.Segment{
		{Group: "g1", Shmid: 5, Key: 0x1234, Size: 4 << 20, Mode: 0o600, Owner: "n1", Epoch: 2, Replicas: []string{"n2"}},
		{Group: "w00000002", Shmid: 0, Key: 0, Size: 4096, Mode: 0o640, Owner: "n2", Epoch: 1},
	}
)

// fakeTable returns the daemon's canned nodes and workloads: a load reported now,
// workloads started two minutes ago.
func fakeTable() (nodes []api.Node, workloads []api.Workload) {
	now := time.Now()
	startedAt := now.Add(-2 * time.Minute).UnixNano()
	nodes = []api.Node{
		{ID: "n1", RaftAddr: "10.0.0.11:7420", APIAddr: "10.0.0.11:7421", State: record.NodeActive, LoadAt: now.UnixNano(),
			Load: record.LoadVector{CPU: 0.25, MemFreeBytes: 2 << 30, MemTotalBytes: 8 << 30, Workloads: 2, Cores: 2.5}},
		{ID: "n2", RaftAddr: "10.0.0.12:7420", APIAddr: "10.0.0.12:7421", State: record.NodeDraining},
	}
	workloads = []api.Workload{
		{ID: "w00000001", Name: "db1", Node: "n1", InitPid: 4242, Pids: []int{4242, 4243, 4250}, Group: "g1", Addr: "10.0.0.50/24",
			State: record.WorkloadRunning, Args: []string{"/usr/bin/postgres", "-D", "/srv/pg"}, StartedAt: startedAt,
			Load: &record.WorkloadLoad{CPU: 0.984, MemBytes: 1288 << 20, At: now.UnixNano()}},
		{ID: "w00000002", Name: "web", Node: "n2", InitPid: 5000, Pids: []int{5000}, Group: "w00000002",
			State: record.WorkloadExited, ExitStatus: 3, Args: []string{"/usr/bin/web"}, StartedAt: startedAt,
			Load: &record.WorkloadLoad{CPU: 0.5, MemBytes: 1 << 20, At: startedAt}}, // before it exited
		{ID: "w00000003", Name: "api", Node: "n1", InitPid: 4300, Pids: []int{4300}, Group: "g1", Addr: "10.0.0.50/24",
			State: record.WorkloadRunning, Args: []string{"/usr/bin/api"}, StartedAt: startedAt, Pinned: true},
	}
	return nodes, workloads
}

// strict decodes a request body as the daemon does: unknown fields are errors.
func strict(body string, v any) error {
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// cli runs migshm against the fake daemon.
func (f *fakeDaemon) cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(t, append([]string{"--socket", f.sock}, args...)...)
}

// mustCLI runs migshm against the fake daemon and returns its output; the test fails
// there if migshm fails.
func (f *fakeDaemon) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := f.cli(t, args...)
	if err != nil {
		t.Fatalf("migshm %q: %v\n%s", args, err, out)
	}
	return out
}

// wantRefused checks that migshm args fails with an error containing want, and sends
// the daemon nothing.
func (f *fakeDaemon) wantRefused(t *testing.T, args []string, want string) {
	t.Helper()
	_, err := f.cli(t, args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("migshm %q: %v, want an error containing %q", args, err, want)
	}
	wantNoCalls(t, f)
}

// tableRows splits table output into rows of columns (two or more spaces apart).
func tableRows(out string) [][]string {
	var rows [][]string
	sep := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, sep.Split(strings.TrimSpace(line), -1))
	}
	return rows
}

func wantRows(t *testing.T, out string, want [][]string) {
	t.Helper()
	got := tableRows(out)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("table\n%s\nrows %q\nwant %q", out, got, want)
	}
}

func wantNoCalls(t *testing.T, f *fakeDaemon) {
	t.Helper()
	if c := f.takeCalls(); len(c) > 0 {
		t.Errorf("the daemon was called: %+v", c)
	}
}

func wantJSON[T any](t *testing.T, out string, want T) {
	t.Helper()
	var got T
	if err := strict(out, &got); err != nil {
		t.Fatalf("--json output does not parse as %T: %v\n%s", got, err, out)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("--json gives\n %+v\nwant\n %+v", got, want)
	}
}

func TestCLIStatus(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "status")
	head, voters, ok := strings.Cut(out, "\nvoters:\n")
	if !ok {
		t.Fatalf("no voters in\n%s", out)
	}
	voters, balancer, ok := strings.Cut(voters, "\n\nbalancer: ")
	if !ok || balancer != "leader did not answer\n" {
		t.Errorf("status without the leader's balancer report ends with %q, want \"balancer: leader did not answer\"", balancer)
	}
	wantRows(t, regexp.MustCompile(`(?m)^([a-z ]+):`).ReplaceAllString(head, "$1"), [][]string{
		{"node", "n1 (leader)"},
		{"raft address", "10.0.0.11:7420"},
		{"peer api", "10.0.0.11:7421"},
		{"leader", "n1"},
		{"term", "7"},
		{"commit index", "120 (applied 119)"},
		{"workloads here", "2 running"},
		{"daemon", "v0.1.0-test, up 1h2m3s"},
	})
	wantRows(t, voters, [][]string{
		{"ID", "ADDRESS", "SUFFRAGE", "ROLE"},
		{"n1", "10.0.0.11:7420", "Voter", "leader"},
		{"n2", "10.0.0.12:7420", "Voter", "follower"},
	})
	if c := f.takeCalls(); len(c) != 1 || c[0].Method != "GET" || c[0].Path != "/v1/status" {
		t.Errorf("calls %+v", c)
	}

	out = f.mustCLI(t, "status", "--json")
	wantJSON(t, out, fakeStatus)
}

func TestCLINodes(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "nodes")
	rows := tableRows(out)
	if len(rows) != 3 {
		t.Fatalf("nodes:\n%s", out)
	}
	wantRows(t, out, [][]string{
		{"NODE", "STATE", "RAFT", "PEER API", "CORES", "CPU", "MEM FREE", "WORKLOADS", "REPORTED"},
		{"n1", "active", "10.0.0.11:7420", "10.0.0.11:7421", "2.5", "25%", "2.0 GiB", "2", rows[1][8]},
		{"n2", "draining", "10.0.0.12:7420", "10.0.0.12:7421", "-", "0%", "0 B", "0", "-"},
	})
	if !regexp.MustCompile(`^\d+s$`).MatchString(rows[1][8]) {
		t.Errorf("REPORTED of a fresh report: %q", rows[1][8])
	}
	out = f.mustCLI(t, "nodes", "--json")
	wantJSON(t, out, f.nodes)
}

func TestCLIPs(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "ps")
	rows := tableRows(out)
	if len(rows) != 3 {
		t.Fatalf("ps shows %d rows, want the header and the 2 running workloads:\n%s", len(rows), out)
	}
	// CPU and MEM are "-" without a measurement, and for an exited workload (its last one
	// is stale).
	wantRows(t, out, [][]string{
		{"ID", "NAME", "NODE", "STATE", "INIT", "PIDS", "CPU", "MEM", "PIN", "GROUP", "ADDR", "STARTED", "COMMAND"},
		{"w00000003", "api", "n1", "running", "4300", "1", "-", "-", "yes", "g1", "10.0.0.50/24", "2m0s", "/usr/bin/api"},
		{"w00000001", "db1", "n1", "running", "4242", "3", "0.98", "1.3 GiB", "-", "g1", "10.0.0.50/24", "2m0s", "/usr/bin/postgres -D /srv/pg"},
	})

	for _, all := range []string{"--all", "-a"} {
		out = f.mustCLI(t, "ps", all)
		wantRows(t, out, [][]string{
			{"ID", "NAME", "NODE", "STATE", "INIT", "PIDS", "CPU", "MEM", "PIN", "GROUP", "ADDR", "STARTED", "COMMAND"},
			{"w00000003", "api", "n1", "running", "4300", "1", "-", "-", "yes", "g1", "10.0.0.50/24", "2m0s", "/usr/bin/api"},
			{"w00000001", "db1", "n1", "running", "4242", "3", "0.98", "1.3 GiB", "-", "g1", "10.0.0.50/24", "2m0s", "/usr/bin/postgres -D /srv/pg"},
			{"w00000002", "web", "n2", "exited(3)", "5000", "1", "-", "-", "-", "w00000002", "-", "2m0s", "/usr/bin/web"},
		})
	}

	out = f.mustCLI(t, "ps", "--json")
	wantJSON(t, out, []api.Workload{f.workloads[0], f.workloads[2]})
	out = f.mustCLI(t, "ps", "--json", "--all")
	wantJSON(t, out, f.workloads)
}

func TestCLISegments(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "segments")
	// WORKLOADS lists the running workloads of the group, in the order the daemon lists them;
	// web has exited, so its group shows none.
	wantRows(t, out, [][]string{
		{"GROUP", "SHMID", "KEY", "SIZE", "MODE", "OWNER", "EPOCH", "WORKLOADS"},
		{"g1", "5", "0x00001234", "4.0 MiB", "0600", "n1", "2", "db1,api"},
		{"w00000002", "0", "0x00000000", "4.0 KiB", "0640", "n2", "1"},
	})
	out = f.mustCLI(t, "segments", "--json")
	wantJSON(t, out, fakeSegments)
}

// runRequest runs `migshm run ...`, which must send the daemon one POST /v1/workloads,
// and returns migshm's output and the request, decoded as the daemon does.
func (f *fakeDaemon) runRequest(t *testing.T, args ...string) (string, api.RunRequest) {
	t.Helper()
	out := f.mustCLI(t, args...)
	calls := f.takeCalls()
	if len(calls) != 1 || calls[0].Method != "POST" || calls[0].Path != "/v1/workloads" {
		t.Fatalf("migshm %q: calls %+v, want one POST /v1/workloads", args, calls)
	}
	var req api.RunRequest
	if err := strict(calls[0].Body, &req); err != nil {
		t.Fatal(err)
	}
	return out, req
}

func TestCLIRun(t *testing.T) {
	f := newFakeDaemon(t)
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("refused before calling the daemon", func(t *testing.T) {
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"run"}, "no command given"},
			{[]string{"run", "--name", "x", "--"}, "no command given"},
			{[]string{"run", "--env", "FOO", "--", "/bin/true"}, `--env "FOO": want KEY=VALUE`},
			{[]string{"run", "--env", "A=1", "--env", "=x", "--", "/bin/true"}, `--env "=x": want KEY=VALUE`},
			{[]string{"run", "--pidfile", "/run/x.pid", "--pidfile-timeout", "0s", "--", "/bin/true"}, `--pidfile-timeout 0s: want a positive duration`},
		} {
			f.wantRefused(t, tt.args, tt.want)
		}
	})

	for _, tt := range []struct {
		name string
		args []string
		want api.RunRequest
	}{
		{"relative path", []string{"run", "--", "./bin/prog", "arg1", "--flag"},
			api.RunRequest{Args: []string{filepath.Join(cwd, "bin/prog"), "arg1", "--flag"}, Dir: cwd}},
		{"relative path without --", []string{"run", "bin/prog", "-x"},
			api.RunRequest{Args: []string{filepath.Join(cwd, "bin/prog"), "-x"}, Dir: cwd}},
		{"command from PATH", []string{"run", "--", "sleep", "100"},
			api.RunRequest{Args: []string{"sleep", "100"}, Dir: cwd}},
		{"everything", []string{"run", "--name", "db2", "--ipc-group", "g1", "--env", "A=B", "--env", "C=D=E", "--dir", "/srv", "--", "/usr/bin/x"},
			api.RunRequest{Name: "db2", Group: "g1", Args: []string{"/usr/bin/x"}, Env: []string{"A=B", "C=D=E"}, Dir: "/srv"}},
		{"pidfile", []string{"run", "--pidfile", "run/d.pid", "--", "/usr/sbin/d", "--daemon"},
			api.RunRequest{Args: []string{"/usr/sbin/d", "--daemon"}, Dir: cwd, PidFile: "run/d.pid", PidFileTimeoutMS: 10000}},
		{"pidfile timeout", []string{"run", "--pidfile", "/run/d.pid", "--pidfile-timeout", "90s", "--", "/usr/sbin/d"},
			api.RunRequest{Args: []string{"/usr/sbin/d"}, Dir: cwd, PidFile: "/run/d.pid", PidFileTimeoutMS: 90000}},
		{"own address", []string{"run", "--ip", "auto", "--", "/usr/sbin/web"},
			api.RunRequest{Args: []string{"/usr/sbin/web"}, Dir: cwd, IP: "auto"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, got := f.runRequest(t, tt.args...)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("request %+v, want %+v", got, tt.want)
			}
			if !regexp.MustCompile(`^started \S+ \(id w0000000a\) on n1, init pid 777, ipc group \S+\n$`).MatchString(out) {
				t.Errorf("output %q", out)
			}
		})
	}

	out := f.mustCLI(t, "run", "--json", "--name", "j1", "--", "/bin/true")
	f.takeCalls()
	wantJSON(t, out, api.Workload{ID: "w0000000a", Name: "j1", Node: "n1", InitPid: 777, Pids: []int{777},
		Group: "w0000000a", State: record.WorkloadRunning, Args: []string{"/bin/true"}})

	_, err = f.cli(t, "run", "--name", "taken", "--", "/bin/true")
	if !errors.Is(err, record.ErrExists) || err.Error() != `run: a workload named "taken" exists` {
		t.Errorf("run of a taken name: %v", err)
	}
}

func TestCLIStop(t *testing.T) {
	f := newFakeDaemon(t)
	for _, args := range [][]string{{"stop"}, {"stop", "db1", "api"}} {
		f.wantRefused(t, args, "give one workload")
	}

	out := f.mustCLI(t, "stop", "--timeout", "30s", "db1")
	if out != "stopped db1 on n1: exit status 143\n" {
		t.Errorf("output %q", out)
	}
	calls := f.takeCalls()
	if len(calls) != 1 || calls[0].Method != "POST" || calls[0].Path != "/v1/workloads/db1/stop" || calls[0].Body != `{"timeout_ms":30000}` {
		t.Errorf("calls %+v", calls)
	}

	out = f.mustCLI(t, "stop", "--json", "api")
	if calls := f.takeCalls(); len(calls) != 1 || calls[0].Body != `{}` {
		t.Errorf("stop without --timeout sent %+v, want an empty request (the node's stop-timeout)", calls)
	}
	want := f.workloads[2]
	want.State, want.ExitStatus = record.WorkloadExited, 143
	wantJSON(t, out, want)

	// API errors surface with the daemon's message and map back to their sentinel.
	for _, tt := range []struct {
		ref      string
		msg      string
		sentinel error
	}{
		{"x", "no workload \"x\" (see `migshm ps`)", record.ErrUnknownWorkload},
		{"web", "stop web: it already exited with status 3", api.ErrNotRunning},
	} {
		out, err := f.cli(t, "stop", tt.ref)
		if err == nil || err.Error() != tt.msg || !errors.Is(err, tt.sentinel) {
			t.Errorf("stop %s: %v, want %q (%v)", tt.ref, err, tt.msg, tt.sentinel)
		}
		if out != "" {
			t.Errorf("stop %s printed %q", tt.ref, out)
		}
	}
}

// TestCLIRunEnvForms: --env is repeatable and has no short alias (urfave/cli v2 refuses a
// slice flag given in both forms, "Cannot use two forms of the same flag").
func TestCLIRunEnvForms(t *testing.T) {
	f := newFakeDaemon(t)
	_, req := f.runRequest(t, "run", "--env", "A=1", "--env", "B=2", "--", "/bin/true")
	if strings.Join(req.Env, " ") != "A=1 B=2" {
		t.Errorf("env sent %q, want A=1 B=2", req.Env)
	}
	if _, err := f.cli(t, "run", "-e", "A=1", "--", "/bin/true"); err == nil {
		t.Error("-e is accepted; the help does not offer it")
	}
	f.takeCalls()
}

// TestCLIRunRelativeDir: like a relative command, a relative --dir means the caller's
// directory; the daemon (cwd / under systemd) would resolve it against its own.
func TestCLIRunRelativeDir(t *testing.T) {
	f := newFakeDaemon(t)
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	_, req := f.runRequest(t, "run", "--dir", "sub", "--", "/bin/true")
	if want := filepath.Join(cwd, "sub"); req.Dir != want {
		t.Errorf("migshm run --dir sub sends dir %q, want %q", req.Dir, want)
	}
}

// TestCLIFlagsAfterArgument: urfave/cli v2 stops parsing flags at the first argument, so
// `migshm stop db1 --timeout 30s` passes three arguments. `migshm tls node` handles this
// (interspersedArgs); the cluster commands should too, or at least not say "give one
// workload" to someone who gave one.
func TestCLIFlagsAfterArgument(t *testing.T) {
	f := newFakeDaemon(t)
	var failed []string
	for _, args := range [][]string{
		{"stop", "db1", "--timeout", "30s"},
		{"logs", "db1", "-f"},
		{"leave", "n2", "--force"},
		{"drain", "n2", "--no-wait"},
		{"undrain", "n2", "--json"},
		{"pin", "db1", "--json"},
		{"unpin", "db1", "--json"},
	} {
		if _, err := f.cli(t, args...); err != nil {
			failed = append(failed, strings.Join(args, " ")+": "+err.Error())
		}
		f.takeCalls()
	}
	if len(failed) > 0 {
		t.Errorf("flags after the WORKLOAD/NODE argument are taken as more arguments:\n  %s", strings.Join(failed, "\n  "))
	}
}

func TestCLIRm(t *testing.T) {
	f := newFakeDaemon(t)
	out, err := f.cli(t, "rm", "web")
	if err != nil || out != "removed web\n" {
		t.Fatalf("rm web: %q %v", out, err)
	}
	if c := f.takeCalls(); len(c) != 1 || c[0].Method != "DELETE" || c[0].Path != "/v1/workloads/web" {
		t.Errorf("calls %+v", c)
	}
	_, err = f.cli(t, "rm", "db1")
	if !errors.Is(err, api.ErrStillRunning) || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("rm of a running workload: %v", err)
	}
	f.takeCalls()
	for _, args := range [][]string{{"rm"}, {"rm", "a", "b"}} {
		f.wantRefused(t, args, "give one workload")
	}
}

func TestCLILogs(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tt := range []struct {
		args []string
		q    url.Values
	}{
		{[]string{"logs", "db1"}, url.Values{"stream": {"stdout"}, "follow": {"false"}, "tail": {"0"}}},
		{[]string{"logs", "--stderr", "--tail", "5", "-f", "db1"}, url.Values{"stream": {"stderr"}, "follow": {"true"}, "tail": {"5"}}},
	} {
		out, err := f.cli(t, tt.args...)
		if err != nil || out != "line one\nline two\n" {
			t.Fatalf("migshm %q: %q %v", tt.args, out, err)
		}
		c := f.takeCalls()
		if len(c) != 1 || c[0].Method != "GET" || c[0].Path != "/v1/workloads/db1/logs" || !reflect.DeepEqual(c[0].Query, tt.q) {
			t.Errorf("migshm %q: calls %+v, want query %v", tt.args, c, tt.q)
		}
	}
	out, err := f.cli(t, "logs", "nope")
	if !errors.Is(err, record.ErrUnknownWorkload) || err.Error() != "no workload \"nope\" (see `migshm ps`)" || out != "" {
		t.Errorf("logs nope: %q %v", out, err)
	}
	f.takeCalls()
	f.wantRefused(t, []string{"logs"}, "give one workload")
}

func TestCLILeave(t *testing.T) {
	f := newFakeDaemon(t)
	_, err := f.cli(t, "leave")
	if !errors.Is(err, api.ErrStillRunning) || !strings.Contains(err.Error(), "use --force") {
		t.Errorf("leave: %v", err)
	}
	if c := f.takeCalls(); len(c) != 1 || c[0].Method != "POST" || c[0].Path != "/v1/leave" || c[0].Body != `{}` {
		t.Errorf("calls %+v", c)
	}
	out, err := f.cli(t, "leave", "--force")
	if err != nil || out != "node n1 left the cluster; stop its daemon now\n" {
		t.Errorf("leave --force: %q %v", out, err)
	}
	if c := f.takeCalls(); len(c) != 1 || c[0].Body != `{"force":true}` {
		t.Errorf("calls %+v", c)
	}
	out = f.mustCLI(t, "leave", "--json", "n3")
	wantJSON(t, out, api.LeaveResult{Node: "n3"})
	if c := f.takeCalls(); len(c) != 1 || c[0].Body != `{"node":"n3"}` {
		t.Errorf("calls %+v", c)
	}
	f.wantRefused(t, []string{"leave", "n2", "n3"}, "at most one node")
}

func TestCLISocket(t *testing.T) {
	f := newFakeDaemon(t)
	missing := filepath.Join(t.TempDir(), "missing.sock")

	for _, args := range [][]string{{"ps"}, {"status"}, {"run", "--", "/bin/true"}, {"stop", "x"}, {"logs", "x"}, {"leave"}} {
		_, err := run(t, append([]string{"--socket", missing}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "no migshmd listening on "+missing) || !errors.Is(err, api.ErrUnreachable) {
			t.Errorf("migshm --socket %s %q: %v", missing, args, err)
		}
	}

	t.Run("MIGSHM_SOCKET", func(t *testing.T) {
		defer resetSocketFlag()
		t.Setenv("MIGSHM_SOCKET", f.sock)
		if _, err := run(t, "ps"); err != nil {
			t.Fatalf("MIGSHM_SOCKET=%s migshm ps: %v", f.sock, err)
		}
		if c := f.takeCalls(); len(c) != 1 {
			t.Errorf("calls %+v", c)
		}
		// The flag wins over the environment.
		if _, err := run(t, "--socket", missing, "ps"); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("--socket over MIGSHM_SOCKET: %v", err)
		}
		t.Setenv("MIGSHM_SOCKET", missing)
		if _, err := run(t, "ps"); err == nil || !strings.Contains(err.Error(), "no migshmd listening on "+missing) {
			t.Errorf("MIGSHM_SOCKET=%s migshm ps: %v", missing, err)
		}
		wantNoCalls(t, f)
	})
}

// resetSocketFlag is a no-op kept for the tests that call it: newApp builds its flags
// afresh, so nothing is shared between runs.
func resetSocketFlag() {}

// TestCLISocketFlagNotShared: newApp() must give a fresh app. socketFlag is a package
// variable, and urfave/cli writes MIGSHM_SOCKET into the flag's Value when it applies it,
// so one run's environment becomes the next run's default.
func TestCLISocketFlagNotShared(t *testing.T) {
	defer resetSocketFlag()
	missing := filepath.Join(t.TempDir(), "from-env.sock")
	t.Setenv("MIGSHM_SOCKET", missing)
	_, _ = run(t, "ps")
	os.Unsetenv("MIGSHM_SOCKET")
	app := newApp()
	for _, fl := range app.Flags {
		if fl.Names()[0] != "socket" {
			continue
		}
		if v := fl.(interface{ GetValue() string }).GetValue(); v != api.DefaultSocket {
			t.Errorf("after a run with MIGSHM_SOCKET=%s, a new app's --socket default is %q, not %q "+
				"(the package-level socketFlag is shared and mutated)", missing, v, api.DefaultSocket)
		}
	}
}

// TestCLIAPIErrorFormat: what the user sees of an API error is the daemon's message,
// nothing else (main prints "migshm: " before it).
func TestCLIAPIErrorFormat(t *testing.T) {
	f := newFakeDaemon(t)
	_, err := f.cli(t, "stop", "x")
	var want = "no workload \"x\" (see `migshm ps`)"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// The same through the client directly, to be sure the CLI adds nothing.
	if _, err := api.NewClient(f.sock).Stop(ctx, "x", api.StopRequest{}); err == nil || err.Error() != want {
		t.Errorf("client: %v", err)
	}
}

func TestPrintAddresses(t *testing.T) {
	var b strings.Builder
	if err := printAddresses(&b, nil); err != nil || b.Len() != 0 {
		t.Errorf("no addresses: %q, %v", b.String(), err)
	}
	err := printAddresses(&b, &api.AddressStatus{Parent: "eth0", Network: "10.0.0.0/24", Pool: "10.0.0.192/28", Free: 15,
		Held: []api.HeldAddress{{Addr: "10.0.0.192/24", Workload: "w1", Name: "web", Node: "n2"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "\naddresses of their own (migshm run --ip):\n" +
		"  this node:     macvlan on eth0, network 10.0.0.0/24, pool 10.0.0.192/28 (15 free), gateway none\n" +
		"  10.0.0.192/24  web (w1) on n2\n"
	if b.String() != want {
		t.Errorf("printAddresses:\n%q\nwant\n%q", b.String(), want)
	}
}
