package workload

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkQuickDigest digests a 64 MiB segment as the frozen window does, against a
// read of it one page fault at a time (the baseline, in the same run):
//
//	go test ./workload -run '^$' -bench QuickDigest
func BenchmarkQuickDigest(b *testing.B) {
	const size = 64 << 20
	id, err := unix.SysvShmGet(unix.IPC_PRIVATE, size, unix.IPC_CREAT|0o600)
	if err != nil {
		b.Skipf("no SysV shm here: %v", err)
	}
	b.Cleanup(func() { _, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
	w, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < size; i += 4096 {
		w[i] = byte(i >> 12)
	}
	_ = unix.SysvShmDetach(w)
	b.Run("populated", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := quickDigest(id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("faulting", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			mem, err := unix.SysvShmAttach(id, 0, unix.SHM_RDONLY)
			if err != nil {
				b.Fatal(err)
			}
			var x byte
			for i := 0; i < len(mem); i += 4096 {
				x ^= mem[i]
			}
			_ = unix.SysvShmDetach(mem)
			_ = x
		}
	})
}
