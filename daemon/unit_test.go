package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

// tableOf builds a table the way Raft does: commands applied to a shmowner FSM.
func tableOf(t *testing.T, cmds ...any) *shmowner.Table {
	t.Helper()
	f := shmowner.NewFSM()
	for i, c := range cmds {
		var typ shmowner.MessageType
		switch c.(type) {
		case shmowner.RegisterNodeRequest:
			typ = shmowner.RegisterNodeType
		case shmowner.UpsertWorkloadRequest:
			typ = shmowner.UpsertWorkloadType
		case shmowner.SetWorkloadStateRequest:
			typ = shmowner.SetWorkloadStateType
		default:
			t.Fatalf("tableOf: no type for %T", c)
		}
		b, err := shmowner.Encode(typ, c)
		if err != nil {
			t.Fatal(err)
		}
		if resp := f.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: b}); resp != nil {
			t.Fatalf("apply %s %+v: %v", typ, c, resp)
		}
	}
	return f.Table()
}

func upsert(id, name, node string, initPid int, pids ...int) shmowner.UpsertWorkloadRequest {
	return shmowner.UpsertWorkloadRequest{Workload: record.Workload{
		ID: id, Name: name, Node: node, InitPid: initPid, Pids: append([]int{initPid}, pids...), Group: id}}
}

func TestResolve(t *testing.T) {
	table := tableOf(t,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:7420", APIAddr: "n1:7421"},
		shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: "n2:7420", APIAddr: "n2:7421"},
		upsert("wabc0001", "db1", "n1", 100, 101, 123),
		upsert("wabc0002", "web", "n1", 200, 201),
		upsert("wxyz0003", "123", "n2", 300),
	)
	tests := []struct {
		ref     string
		wantID  string
		wantErr error
	}{
		{"wabc0001", "wabc0001", nil},         // id
		{"web", "wabc0002", nil},              // name
		{"wxy", "wxyz0003", nil},              // unique id prefix of 3
		{"wabc000", "", ErrBadRequest},        // prefix of two
		{"wab", "", ErrBadRequest},            // prefix of two
		{"wa", "", record.ErrUnknownWorkload}, // too short for a prefix
		{"w", "", record.ErrUnknownWorkload},
		{"100", "wabc0001", nil}, // init pid
		{"201", "wabc0002", nil}, // member pid
		{"300", "wxyz0003", nil}, // init pid on another node
		{"123", "wxyz0003", nil}, // a name wins over a member pid
		{"999", "", record.ErrUnknownWorkload},
		{"0", "", record.ErrUnknownWorkload},
		{"-100", "", record.ErrUnknownWorkload},
		{"nope", "", record.ErrUnknownWorkload},
		{"db", "", record.ErrUnknownWorkload}, // names are not matched by prefix
		{"", "", ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.ref), func(t *testing.T) {
			w, err := resolve(table, tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("resolve(%q) = %s, %v; want %v", tt.ref, w.ID, err, tt.wantErr)
				}
				if tt.ref != "" && !strings.Contains(err.Error(), tt.ref) {
					t.Errorf("error %q does not name %q", err, tt.ref)
				}
				return
			}
			if err != nil || w.ID != tt.wantID {
				t.Fatalf("resolve(%q) = %q, %v; want %q", tt.ref, w.ID, err, tt.wantID)
			}
		})
	}
}

// TestResolveStalePid: an exited workload keeps its pids in the table; the kernel reuses
// them. A host pid must name the live workload that has it now, not the dead one.
func TestResolveStalePid(t *testing.T) {
	table := tableOf(t,
		shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "n1:7420", APIAddr: "n1:7421"},
		upsert("w0000001", "old", "n1", 400, 500),
		shmowner.SetWorkloadStateRequest{ID: "w0000001", State: record.WorkloadExited, ExitStatus: 0},
		upsert("w9990002", "new", "n1", 500),
	)
	w, err := resolve(table, "500")
	if err != nil {
		t.Fatal(err)
	}
	if w.ID != "w9990002" {
		t.Errorf("resolve(\"500\") = %s (%s, %s), the exited workload that once had pid 500, "+
			"not w9990002, the running one whose init is pid 500 now", w.ID, w.Name, w.State)
	}
}

// tailRef is what seekTail must leave: the last n lines of s (all of s if n <= 0).
func tailRef(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if n <= 0 || n >= len(lines) {
		return s
	}
	return strings.Join(lines[len(lines)-n:], "")
}

func TestSeekTail(t *testing.T) {
	const chunk = 64 << 10
	long := func(n int, c byte) string { return strings.Repeat(string(c), n) }
	contents := map[string]string{
		"empty":             "",
		"one line":          "hello\n",
		"one line no eol":   "hello",
		"lines":             "a\nbb\nccc\n",
		"lines no eol":      "a\nbb\nccc",
		"empty lines":       "\n\n\n",
		"just eol":          "\n",
		"blank last line":   "a\n\n",
		"long lines":        long(100_000, 'a') + "\n" + long(150_000, 'b') + "\n" + long(70_000, 'c') + "\n",
		"long no eol":       long(100_000, 'a') + "\n" + long(3*chunk, 'b'),
		"eol at chunk edge": long(chunk, 'a') + "\n" + long(chunk-1, 'b') + "\n",
		"eol before edge":   "x\n" + long(chunk-2, 'a') + "\n" + long(chunk-1, 'b') + "\n",
		"eol after edge":    "x\n" + long(chunk, 'a') + "\n" + long(chunk, 'b') + "\nc",
		"many short": func() string {
			var b strings.Builder
			for i := range 30_000 {
				fmt.Fprintf(&b, "line %d\n", i)
			}
			return b.String()
		}(),
	}
	dir := t.TempDir()
	for name, s := range contents {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0, 1, 2, 3, 10, 29_999, 30_000, 100_000} {
			t.Run(fmt.Sprintf("%s/%d", name, n), func(t *testing.T) {
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := seekTail(f, n); err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(f)
				if err != nil {
					t.Fatal(err)
				}
				if want := tailRef(s, n); string(got) != want {
					t.Errorf("last %d lines: got %d bytes %q..., want %d bytes %q...",
						n, len(got), head(string(got)), len(want), head(want))
				}
			})
		}
	}
}

func head(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

// procStat is a /proc/PID/stat line; comm may hold spaces and ')'.
func procStat(pid int, comm string, state byte, utime, stime uint64) string {
	return fmt.Sprintf("%d (%s) %c 1 %d %d 0 -1 4194560 1000 0 12 0 %d %d 0 0 20 0 1 0 123456 10000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n",
		pid, comm, state, pid, pid, utime, stime)
}

func writeStat(t *testing.T, root string, pid int, text string) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadCPU(t *testing.T) {
	root := t.TempDir()
	writeStat(t, root, 10, procStat(10, "my (weird) proc) x", 'R', 250, 50))
	writeStat(t, root, 11, procStat(11, "plain", 'S', 0, 7))
	writeStat(t, root, 12, "12 (no close paren S 1 2 3\n")
	writeStat(t, root, 13, "13 (short) S 1 2 3\n")
	writeStat(t, root, 14, "14 (x) S 1 14 14 0 -1 0 0 0 0 0 abc 5 0\n")
	writeStat(t, root, 15, "")

	for _, tt := range []struct {
		pid   int
		ticks uint64
		state byte
		err   bool
	}{
		{10, 300, 'R', false},
		{11, 7, 'S', false},
		{12, 0, 0, true},
		{13, 0, 0, true},
		{14, 0, 0, true},
		{15, 0, 0, true},
		{16, 0, 0, true}, // no such pid
	} {
		ticks, state, err := readCPU(root, tt.pid)
		if (err != nil) != tt.err || ticks != tt.ticks || state != tt.state {
			t.Errorf("readCPU(%d) = %d %q %v; want %d %q, error %v", tt.pid, ticks, state, err, tt.ticks, tt.state, tt.err)
		}
	}

	// The real thing: this process.
	if ticks, state, err := readCPU("/proc", os.Getpid()); err != nil || state == 0 {
		t.Errorf("readCPU(/proc, self) = %d %q %v", ticks, state, err)
	}
}

func TestCPUSampler(t *testing.T) {
	root := t.TempDir()
	t0 := time.Unix(1_700_000_000, 0)
	writeStat(t, root, 10, procStat(10, "worker (1)", 'R', 100, 0))
	writeStat(t, root, 11, procStat(11, "idle", 'S', 50, 50))
	writeStat(t, root, 12, procStat(12, "reused", 'R', 1000, 0))

	var c cpuSampler
	one := func(pids ...int) map[string][]int { return map[string][]int{"w1": pids[:2], "w2": pids[2:]} }
	got := c.sample(root, one(10, 11, 12, 99), t0)
	if got.total != 0 || len(got.cores) != 0 || got.running != 2 || got.interval {
		t.Fatalf("first sample: %+v; want no figures (no interval yet), 2 running", got)
	}

	// 0.5s later: pid 10 used 100 ticks (1s of CPU: 2 cores), 11 nothing, 12 was reused by
	// a process with fewer ticks (not counted), 13 is new (no previous sample).
	writeStat(t, root, 10, procStat(10, "worker (1)", 'R', 150, 50))
	writeStat(t, root, 11, procStat(11, "idle", 'S', 50, 50))
	writeStat(t, root, 12, procStat(12, "reused", 'S', 3, 0))
	writeStat(t, root, 13, procStat(13, "new", 'R', 500, 0))
	got = c.sample(root, one(10, 11, 12, 13), t0.Add(500*time.Millisecond))
	if math.Abs(got.total-2.0) > 1e-9 || got.running != 2 || math.Abs(got.cores["w1"]-2.0) > 1e-9 || got.cores["w2"] != 0 {
		t.Fatalf("second sample: %+v; want w1 2 cores = 100 ticks / %d / 0.5s, w2 0 (12 reused), 2 running", got, clockTicks)
	}

	// 2s later: 13 used 100 ticks, 10 exited; w3 is new (just arrived): no figure yet.
	writeStat(t, root, 13, procStat(13, "new", 'S', 550, 50))
	writeStat(t, root, 14, procStat(14, "arrived", 'R', 9000, 0))
	os.RemoveAll(filepath.Join(root, "10"))
	got = c.sample(root, map[string][]int{"w1": {10, 11}, "w2": {13}, "w3": {14}}, t0.Add(2500*time.Millisecond))
	if math.Abs(got.total-0.5) > 1e-9 || got.running != 1 || got.cores["w1"] != 0 || math.Abs(got.cores["w2"]-0.5) > 1e-9 {
		t.Fatalf("third sample: %+v; want w1 0, w2 0.5, 1 running", got)
	}
	if _, ok := got.cores["w3"]; ok {
		t.Fatalf("third sample: w3 has a figure %v without a previous sample of its pids", got.cores["w3"])
	}

	// The same instant again: no interval, no load (and no division by zero).
	got = c.sample(root, map[string][]int{"w1": {11}, "w2": {13}}, t0.Add(2500*time.Millisecond))
	if got.total != 0 || got.interval || len(got.cores) != 0 {
		t.Fatalf("zero interval: %+v", got)
	}
}

func TestReadJSON(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		ok         bool
	}{
		{"ok", `{"node":"n2","force":true}`, true},
		{"ok with spaces", " {\"node\":\"n2\"}\n\n", true},
		{"unknown field", `{"node":"n2","forse":true}`, false},
		{"wrong type", `{"node":2}`, false},
		{"trailing object", `{"node":"n2"} {"node":"n3"}`, false},
		{"trailing garbage", `{"node":"n2"}x`, false},
		{"trailing brace", `{"node":"n2"}}`, false},
		{"trailing bracket", `{"node":"n2"}]`, false},
		{"empty", ``, false},
		{"not json", `node=n2`, false},
		{"array", `[]`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var req LeaveRequest
			err := readJSON(httptest.NewRequest("POST", "/v1/leave", strings.NewReader(tt.body)), &req)
			switch {
			case tt.ok && err != nil:
				t.Fatalf("readJSON(%q): %v", tt.body, err)
			case tt.ok && req.Node != "n2":
				t.Fatalf("readJSON(%q) = %+v", tt.body, req)
			case !tt.ok && !errors.Is(err, ErrBadRequest):
				t.Fatalf("readJSON(%q) = %v, want ErrBadRequest", tt.body, err)
			}
		})
	}
	// Every request type of the API decodes from what the client sends.
	for _, v := range []any{
		&RunRequest{Name: "db1", Group: "g1", Args: []string{"/bin/sleep", "1"}, Env: []string{"A=B"}, Dir: "/tmp"},
		&StopRequest{TimeoutMS: 1500}, &LeaveRequest{Node: "n3", Force: true},
		&applyRequest{Type: uint8(shmowner.ProbeType), Body: json.RawMessage(`{"seq":1}`)},
		&joinRequest{ID: "n2", RaftAddr: "10.0.0.2:7420", APIAddr: "10.0.0.2:7421"},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out := newOf(v)
		if err := readJSON(httptest.NewRequest("POST", "/", bytes.NewReader(b)), out); err != nil {
			t.Errorf("%T %s: %v", v, b, err)
		}
		if got, _ := json.Marshal(out); !bytes.Equal(got, b) {
			t.Errorf("%T: %s decoded as %s", v, b, got)
		}
	}
}

// newOf returns a new zero value of the type *v points to.
func newOf(v any) any {
	switch v.(type) {
	case *RunRequest:
		return &RunRequest{}
	case *StopRequest:
		return &StopRequest{}
	case *LeaveRequest:
		return &LeaveRequest{}
	case *applyRequest:
		return &applyRequest{}
	case *joinRequest:
		return &joinRequest{}
	}
	panic(fmt.Sprintf("newOf %T", v))
}

// TestCheckDecodes: a forwarded command's body is refused before it enters the log
// exactly when the FSM could not decode it (and would panic on every node).
func TestCheckDecodes(t *testing.T) {
	valid := map[shmowner.MessageType]any{
		shmowner.RegisterNodeType:     shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: "a:1", APIAddr: "a:2"},
		shmowner.RemoveNodeType:       shmowner.RemoveNodeRequest{ID: "n1"},
		shmowner.SetNodeStateType:     shmowner.SetNodeStateRequest{ID: "n1", State: record.NodeDraining},
		shmowner.ReportLoadType:       shmowner.ReportLoadRequest{ID: "n1", Load: record.LoadVector{CPU: 0.5}, At: 1},
		shmowner.UpsertWorkloadType:   shmowner.UpsertWorkloadRequest{Workload: record.Workload{ID: "w1", Node: "n1", Group: "g"}},
		shmowner.RemoveWorkloadType:   shmowner.RemoveWorkloadRequest{ID: "w1"},
		shmowner.SetWorkloadStateType: shmowner.SetWorkloadStateRequest{ID: "w1", State: record.WorkloadExited},
		shmowner.SetSegmentsType: shmowner.SetSegmentsRequest{Node: "n1", Group: "g",
			Segments: []shmowner.SegmentInfo{{Shmid: 1, Key: 2, Size: 4096, Mode: 0o600}}},
		shmowner.PlanMigrationType:     shmowner.PlanMigrationRequest{ID: "m1", Workload: "w1", Target: "n2", Epoch: 1},
		shmowner.SetMigrationPhaseType: shmowner.SetMigrationPhaseRequest{ID: "m1", Phase: record.PhasePrecopy, Epoch: 1},
		shmowner.ProbeType:             shmowner.ProbeRequest{Seq: 7},
		shmowner.SetMigrationStatsType: shmowner.SetMigrationStatsRequest{ID: "m1"},
		shmowner.SetWorkloadPinnedType: shmowner.SetWorkloadPinnedRequest{ID: "w1", Pinned: true},
	}
	// Bodies the FSM cannot decode, for each type: a field of the wrong JSON type.
	wrongType := map[shmowner.MessageType]string{
		shmowner.RegisterNodeType:      `{"id":1}`,
		shmowner.RemoveNodeType:        `{"id":true}`,
		shmowner.SetNodeStateType:      `{"state":3}`,
		shmowner.ReportLoadType:        `{"load":{"cpu":"high"}}`,
		shmowner.UpsertWorkloadType:    `{"workload":{"pids":"1,2"}}`,
		shmowner.RemoveWorkloadType:    `{"id":[]}`,
		shmowner.SetWorkloadStateType:  `{"exit_status":"0"}`,
		shmowner.SetSegmentsType:       `{"segments":[{"shmid":-1,"key":-1}]}`,
		shmowner.PlanMigrationType:     `{"epoch":-1}`,
		shmowner.SetMigrationPhaseType: `{"bytes":1.5}`,
		shmowner.ProbeType:             `{"seq":"x"}`,
		shmowner.SetMigrationStatsType: `{"stats":{"rounds":"2"}}`,
		shmowner.SetWorkloadPinnedType: `{"pinned":"yes"}`,
	}
	for typ, body := range valid {
		t.Run(typ.String(), func(t *testing.T) {
			b, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				name string
				body string
				ok   bool
			}{
				{"valid", string(b), true},
				{"empty object", `{}`, true},
				{"unknown field", `{"from_a_newer_node":1}`, true}, // the FSM ignores them too
				{"wrong type", wrongType[typ], false},
				{"trailing data", string(b) + ` {}`, false},
				{"not an object", `"x"`, false},
				{"truncated", string(b[:len(b)-1]), false},
			}
			for _, c := range cases {
				err := checkDecodes(typ, []byte(c.body))
				if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadRequest)) {
					t.Errorf("%s: checkDecodes(%s) = %v, want ok=%v (ErrBadRequest otherwise)", c.name, c.body, err, c.ok)
				}
				if typ == shmowner.ProbeType {
					continue // the FSM skips probes without decoding them
				}
				if panicked := fsmPanics(typ, []byte(c.body)); panicked == (err == nil) {
					t.Errorf("%s: checkDecodes(%s) = %v but the FSM panics: %v", c.name, c.body, err, panicked)
				}
			}
		})
	}
}

// fsmPanics reports whether applying the entry to a fresh FSM panics.
func fsmPanics(typ shmowner.MessageType, body []byte) (panicked bool) {
	defer func() { panicked = recover() != nil }()
	shmowner.NewFSM().Apply(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: append([]byte{byte(typ)}, body...)})
	return false
}

func TestInstallInit(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data", "init")
	p1, err := installInit(dir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p1) != dir || !regexp.MustCompile(`^migshm-init-[0-9a-f]{16}$`).MatchString(filepath.Base(p1)) {
		t.Fatalf("installed at %s, want %s/migshm-init-<16 hex>", p1, dir)
	}
	st1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	if st1.Mode() != 0o700 {
		t.Errorf("mode %v, want -rwx------", st1.Mode())
	}
	if dst, err := os.Stat(dir); err != nil || dst.Mode().Perm()&0o077 != 0 {
		t.Errorf("init dir: %v %v, want no group or other access", dst.Mode(), err)
	}
	if got, err := os.ReadFile(p1); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the copy differs from %s (%d bytes, want %d): %v", self, len(got), len(want), err)
	}

	p2, err := installInit(dir)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := os.Stat(p2)
	if err != nil {
		t.Fatal(err)
	}
	if p2 != p1 || !st2.ModTime().Equal(st1.ModTime()) ||
		st2.Sys().(*syscall.Stat_t).Ino != st1.Sys().(*syscall.Stat_t).Ino {
		t.Errorf("second install: %s (mtime %v, inode %d), want the same file %s untouched (mtime %v, inode %d)",
			p2, st2.ModTime(), st2.Sys().(*syscall.Stat_t).Ino, p1, st1.ModTime(), st1.Sys().(*syscall.Stat_t).Ino)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("init dir holds %v, want only %s (no temporary files)", names, filepath.Base(p1))
	}

	// Another data dir gets its own copy with the same name (same content, same hash).
	p3, err := installInit(filepath.Join(t.TempDir(), "init"))
	if err != nil || filepath.Base(p3) != filepath.Base(p1) {
		t.Errorf("other dir: %s %v", p3, err)
	}
}
