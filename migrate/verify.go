package migrate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/migshm/migshm/workload"
)

// ErrSegmentMismatch means a restored IPC namespace does not hold exactly the segments
// (keys, ids, sizes, modes, contents) that were there at the freeze.
var ErrSegmentMismatch = errors.New("restored segments differ from the dumped ones")

// CompareSegments returns nil when got holds the same segments as want, key, shmid, size,
// mode and digest alike, and an error wrapping ErrSegmentMismatch listing every difference
// otherwise.
func CompareSegments(want, got []workload.Segment) error {
	byID := func(ss []workload.Segment) map[int]workload.Segment {
		m := make(map[int]workload.Segment, len(ss))
		for _, s := range ss {
			m[s.Shmid] = s
		}
		return m
	}
	w, g := byID(want), byID(got)
	var diffs []string
	for _, s := range want {
		r, ok := g[s.Shmid]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("shmid %d (key %#x) is missing", s.Shmid, s.Key))
		case r.Key != s.Key || r.Size != s.Size || r.Mode != s.Mode:
			diffs = append(diffs, fmt.Sprintf("shmid %d: key %#x size %d mode %o, was key %#x size %d mode %o",
				s.Shmid, r.Key, r.Size, r.Mode, s.Key, s.Size, s.Mode))
		case r.Digest != s.Digest:
			diffs = append(diffs, fmt.Sprintf("shmid %d (key %#x): contents differ (sha256 %.12s, was %.12s)",
				s.Shmid, s.Key, r.Digest, s.Digest))
		}
	}
	for _, s := range got {
		if _, ok := w[s.Shmid]; !ok {
			diffs = append(diffs, fmt.Sprintf("shmid %d (key %#x) was not there at the dump", s.Shmid, s.Key))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: %s", ErrSegmentMismatch, strings.Join(diffs, "; "))
	}
	return nil
}

// VerifySegments returns a RestoreOptions.BeforeResume hook that digests the restored
// namespace's segments and fails the restore (CRIU then kills the restored tree) unless
// they equal want, the digests taken from the stopped source tree (by DigestSegments or
// QuickDigestSegments: the same function digests the restored ones).
func VerifySegments(want []workload.Segment) func(pid int) error {
	return func(pid int) error {
		digest := workload.DigestSegments
		if len(want) > 0 && strings.HasPrefix(want[0].Digest, workload.QuickDigestPrefix) {
			digest = workload.QuickDigestSegments
		}
		got, err := digest(pid)
		if err != nil {
			return err
		}
		return CompareSegments(want, got)
	}
}
