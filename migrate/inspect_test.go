package migrate

import (
	"io/fs"
	"reflect"
	"testing"

	"github.com/migshm/migshm/workload"
)

// TestInspectEqualsSeparateChecks: on every fixture, Inspect says what CheckResources,
// TreeMemory and NeededFiles say, and stats each link once where they stat it twice.
func TestInspectEqualsSeparateChecks(t *testing.T) {
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
		skip []string
	}{
		{"proc-blockers", procs(4000, 4001, 4002, 4003), nil},
		{"proc-clean", procs(4200, 4201), nil},
		{"proc-files", procs(4100, 4101, 4102, 4103, 4999), nil},
		{"proc-files", procs(4100, 4101, 4102, 4103, 4999), []string{"/var/lib/migshm/workloads/w1"}},
	} {
		t.Run(tc.fx, func(t *testing.T) {
			v := fxView(t, tc.fx)
			wantBlockers, err := checkResources(v, tc.tree)
			if err != nil {
				t.Fatal(err)
			}
			wantFiles, err := neededFiles(v, tc.tree, tc.skip)
			if err != nil {
				t.Fatal(err)
			}
			anon, err := anonMemory(v, tc.tree)
			if err != nil {
				t.Fatal(err)
			}
			wantMem := anon + segmentBytes(fxSegments)

			stats := map[[2]string]int{}
			counting := v
			counting.stat = func(procPath, target string) (fs.FileInfo, error) {
				stats[[2]string{procPath, target}]++
				return v.stat(procPath, target)
			}
			got, err := inspect(counting, tc.tree, tc.skip)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Blockers, wantBlockers) {
				t.Errorf("blockers\n%+v\nwant\n%+v", got.Blockers, wantBlockers)
			}
			if !reflect.DeepEqual(got.Files, wantFiles) {
				t.Errorf("files\n%s\nwant\n%s", fmtNeeds(got.Files), fmtNeeds(wantFiles))
			}
			if got.MemoryBytes != wantMem || !reflect.DeepEqual(got.Segments, fxSegments) {
				t.Errorf("memory %d, segments %+v; want %d, %+v", got.MemoryBytes, got.Segments, wantMem, fxSegments)
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
