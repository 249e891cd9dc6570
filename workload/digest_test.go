package workload

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// fxSegment makes a private segment of size bytes filled by fill.
func fxSegment(t *testing.T, size int, fill func(b []byte)) int {
	t.Helper()
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, size, unix.IPC_CREAT|0o600)
	if err != nil {
		t.Fatalf("shmget: %v", err)
	}
	t.Cleanup(func() { _, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
	mem, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	fill(mem)
	_ = unix.SysvShmDetach(mem)
	return id
}

func TestQuickDigestByPieces(t *testing.T) {
	for _, size := range []int{4096, digestPiece, 2*digestPiece + 3*4096} {
		pattern := func(b []byte) {
			for i := range b {
				b[i] = byte(i*7 + i>>12)
			}
		}
		a := fxSegment(t, size, pattern)
		b := fxSegment(t, size, pattern)
		c := fxSegment(t, size, func(m []byte) { pattern(m); m[len(m)-1] ^= 1 })
		da, err := quickDigest(a)
		if err != nil {
			t.Fatal(err)
		}
		db, _ := quickDigest(b)
		dc, _ := quickDigest(c)
		if !strings.HasPrefix(da, QuickDigestPrefix) || da != db || da == dc {
			t.Fatalf("size %d: digests %s, %s (same content), %s (last byte changed)", size, da, db, dc)
		}
		// The definition, computed the slow way.
		want := make([]byte, size)
		pattern(want)
		var sums []byte
		for off := 0; off < size; off += digestPiece {
			s := xxh3.Hash128(want[off:min(off+digestPiece, size)]).Bytes()
			sums = append(sums, s[:]...)
		}
		s := xxh3.Hash128(sums).Bytes()
		if want := QuickDigestPrefix + hex.EncodeToString(s[:]); da != want {
			t.Fatalf("size %d: digest %s, want %s", size, da, want)
		}
	}
}
