package migration

import "testing"

func TestTwinPages(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		tree, available uint64
		want            int
	}{
		{1024 * mib, 8192 * mib, 1280 * mib / 4096},          // room: 1.25x the tree
		{1024 * mib, twinMargin + 256*mib, 256 * mib / 4096}, // what is available beyond the margin
		{1024 * mib, twinMargin, 0},                          // nothing beyond the margin
		{1024 * mib, 0, 0},                                   // unknown: no twin
		{0, 8192 * mib, 0},                                   // nothing to copy
	} {
		if got := twinPages(tc.tree, tc.available); got != tc.want {
			t.Errorf("twinPages(%d MiB, %d MiB) = %d, want %d", tc.tree/mib, tc.available/mib, got, tc.want)
		}
	}
}
