package migrate

import (
	"io/fs"
	"testing"

	"github.com/migshm/migshm/workload"
)

// TestInspectReadsOnce: an inspection stats each link once (its blockers and its files
// ask about the same ones), and its memory is the anonymous memory of the processes
// (anonMemory) plus the segments'. The fixture tests of blockers and files check the
// rest (TestCheckResourcesFixtures, TestNeededFilesFixture).
func TestInspectReadsOnce(t *testing.T) {
	procs := func(pids ...int) *workload.Tree {
		var ps []workload.Proc
		for _, pid := range pids {
			ps = append(ps, workload.Proc{Pid: pid, Comm: "p"})
		}
		return fxTree(ps...)
	}
	for _, tc := range []struct {
		fx   string
		tree *workload.Tree
	}{
		{"proc-blockers", procs(4000, 4001, 4002, 4003)},
		{"proc-clean", procs(4200, 4201)},
		{"proc-files", procs(4100, 4101, 4102, 4103, 4999)},
	} {
		t.Run(tc.fx, func(t *testing.T) {
			v := fxView(t, tc.fx)
			anon, err := anonMemory(v, tc.tree)
			if err != nil {
				t.Fatal(err)
			}
			stats := map[[2]string]int{}
			counting := v
			counting.stat = func(procPath, target string) (fs.FileInfo, error) {
				stats[[2]string{procPath, target}]++
				return v.stat(procPath, target)
			}
			in, err := inspect(counting, tc.tree, nil)
			if err != nil {
				t.Fatal(err)
			}
			if want := anon + segmentBytes(fxSegments); in.MemoryBytes != want || len(in.Segments) != len(fxSegments) {
				t.Errorf("memory %d, segments %+v; want %d, %+v", in.MemoryBytes, in.Segments, want, fxSegments)
			}
			if len(stats) == 0 {
				t.Error("nothing was statted")
			}
			for k, n := range stats {
				if n != 1 {
					t.Errorf("%s (%s) statted %d times", k[0], k[1], n)
				}
			}
		})
	}
}
