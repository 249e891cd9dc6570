package shmowner_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
	"github.com/migshm/migshm/shmowner/shmownertest"
)

var update = flag.Bool("update", false, "rewrite testdata/snapshot-v1.json from the scenario")

// memSink is a raft.SnapshotSink writing to memory; failAfter > 0 makes writes fail once
// that many bytes went through.
type memSink struct {
	bytes.Buffer
	failAfter         int
	closed, cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failAfter > 0 && s.Len()+len(p) > s.failAfter {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func scenarioFSM(t *testing.T) *shmowner.FSM {
	t.Helper()
	f := shmowner.NewFSM()
	shmownertest.MustApply(t, f, scenario()...)
	return f
}

func persist(t *testing.T, f *shmowner.FSM) *memSink {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := scenarioFSM(t)
	sink := persist(t, f)
	if !strings.HasPrefix(sink.String(), `{"version":1,`) {
		t.Errorf("snapshot does not start with its version: %.40s", sink.String())
	}

	g := shmowner.NewFSM()
	shmownertest.MustApply(t, g, regNode("leftover")) // Restore replaces everything
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	want, got := f.Table(), g.Table()
	if !reflect.DeepEqual(want, got) {
		t.Errorf("restored table differs:\nwant %s\ngot  %s", tableJSON(t, want), tableJSON(t, got))
	}
	// The restored FSM goes on applying like the original.
	for _, x := range []*shmowner.FSM{f, g} {
		shmownertest.MustApply(t, x, phase("mig-4", record.PhaseRestored, 0), phase("mig-4", record.PhaseDone, 0))
	}
	if a, b := tableJSON(t, f.Table()), tableJSON(t, g.Table()); a != b {
		t.Errorf("after more entries:\n%s\n%s", a, b)
	}
}

func TestSnapshotIsAPointInTimeCopy(t *testing.T) {
	f := scenarioFSM(t)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	before := tableJSON(t, f.Table())
	shmownertest.MustApply(t, f, regNode("node-late"), shmowner.RemoveWorkloadRequest{ID: "wl-5"})
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(sink.String()); got != before {
		t.Errorf("snapshot saw later entries:\n%s\n%s", got, before)
	}
}

func TestPersistCancelsOnError(t *testing.T) {
	snap, err := scenarioFSM(t).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{failAfter: 10}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("persist did not fail")
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink closed=%v cancelled=%v, want cancelled only", sink.closed, sink.cancelled)
	}
}

func TestRestoreRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"future version":    `{"version":2,"nodes":[]}`,
		"no version":        `{"nodes":[]}`,
		"not json":          `{"version":1,`,
		"duplicate node":    `{"version":1,"nodes":[{"id":"a"},{"id":"a"}]}`,
		"duplicate segment": `{"version":1,"segments":[{"group":"g","shmid":1},{"group":"g","shmid":1}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			f := scenarioFSM(t)
			before := tableJSON(t, f.Table())
			if err := f.Restore(io.NopCloser(strings.NewReader(doc))); err == nil {
				t.Fatal("restore did not fail")
			}
			if after := tableJSON(t, f.Table()); after != before {
				t.Error("failed restore changed the table")
			}
		})
	}
}

// TestGoldenSnapshot checks that a version 1 snapshot written by an earlier build keeps
// decoding into the same table. Regenerate with: go test ./shmowner -run Golden -update
// (only when the scenario changes; never to paper over a decoding change).
func TestGoldenSnapshot(t *testing.T) {
	path := filepath.Join("testdata", "snapshot-v1.json")
	sf := scenarioFSM(t)
	// No command sets replicas yet; plant some so that the field is in the golden file.
	id := record.SegmentID{Group: "grp-1", Shmid: 7}
	shmowner.SetReplicas(sf, id, []string{"node-b", "node-c"})
	want := sf.Table()
	if *update {
		b, err := json.MarshalIndent(want, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	f := shmowner.NewFSM()
	if err := f.Restore(io.NopCloser(bytes.NewReader(golden))); err != nil {
		t.Fatalf("restore golden: %v", err)
	}
	if got := f.Table(); !reflect.DeepEqual(got, want) {
		t.Errorf("golden snapshot decodes to a different table:\ngot  %s\nwant %s", tableJSON(t, got), tableJSON(t, want))
	}
	// Spot checks that do not depend on the scenario code, so that a change to both the
	// scenario and the decoder cannot hide.
	tb := f.Table()
	if s, ok := tb.Segment(record.SegmentID{Group: "grp-0", Shmid: 1}); !ok || s.Owner != "node-a" || s.Epoch != 3 {
		t.Errorf("grp-0/1 = %+v %v", s, ok)
	}
	if m, ok := tb.Migration("mig-4"); !ok || m.Phase != record.PhaseShipped || m.Bytes != 3<<20 || m.Source != "node-a" || m.Target != "node-c" {
		t.Errorf("mig-4 = %+v %v", m, ok)
	}
	if n, ok := tb.Node("node-d"); !ok || n.State != record.NodeDraining || n.Load.CPU != 0.75 || n.LoadAt != 1_700_000_000_000_000_003 {
		t.Errorf("node-d = %+v %v", n, ok)
	}
	if s, ok := tb.Segment(id); !ok || len(s.Replicas) != 2 || s.Replicas[1] != "node-c" || s.Key != 0x1007 {
		t.Errorf("grp-1/7 = %+v %v", s, ok)
	}
	if w, ok := tb.Workload("wl-5"); !ok || w.State != record.WorkloadExited || w.ExitStatus != 3 {
		t.Errorf("wl-5 = %+v %v", w, ok)
	}
}

// TestObservedFSM: an observer sees the table before and after each applied entry and
// each restored snapshot, and nothing for a refused entry.
func TestObservedFSM(t *testing.T) {
	type change struct{ prev, cur string }
	var seen []change
	g := shmowner.NewObservedFSM(func(prev, cur *shmowner.Table, at time.Time) {
		if at.IsZero() {
			t.Error("observer called without a time")
		}
		seen = append(seen, change{tableJSON(t, prev), tableJSON(t, cur)})
	})
	empty := tableJSON(t, shmowner.NewTable())
	shmownertest.MustApply(t, g, regNode("leftover"))
	after1 := tableJSON(t, g.Table())
	if err := shmownertest.Apply(t, g, nodeState("nope", record.NodeDraining)); err == nil {
		t.Fatal("state of an unknown node was set")
	}
	f := scenarioFSM(t)
	if err := g.Restore(io.NopCloser(bytes.NewReader(persist(t, f).Bytes()))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	want := []change{{empty, after1}, {after1, tableJSON(t, f.Table())}}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("observer saw %d changes:\n%v\nwant %d:\n%v", len(seen), seen, len(want), want)
	}
}
