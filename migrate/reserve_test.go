package migrate

import (
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestReserveTouchesAndGivesBack(t *testing.T) {
	const n = 48<<20 + 100 // not a multiple of the chunk nor of a page
	r := NewReserve(n)
	if r == nil {
		t.Fatal("NewReserve returned nil for 48 MiB")
	}
	want := int64(n+PageSize-1) &^ (PageSize - 1)
	deadline := time.Now().Add(time.Minute)
	for r.Populated() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.Populated(); got != want {
		t.Fatalf("populated %d bytes, want %d", got, want)
	}
	// Every page is backed: mincore says resident.
	vec := make([]byte, want/PageSize)
	if err := mincore(r.mem, vec); err != nil {
		t.Fatal(err)
	}
	for i, v := range vec {
		if v&1 == 0 {
			t.Fatalf("page %d of the reserve is not resident", i)
		}
	}
	if got := r.Release(); got != want {
		t.Fatalf("Release returned %d, want %d", got, want)
	}
	if got := r.Release(); got != 0 {
		t.Fatalf("a second Release returned %d, want 0", got)
	}
}

func TestReserveReleasedEarly(t *testing.T) {
	r := NewReserve(1 << 30)
	if r == nil {
		t.Fatal("NewReserve returned nil for 1 GiB")
	}
	got := r.Release() // at once: the populating stops after the chunk under way
	if got < 0 || got > 1<<30 || got%reserveChunk != 0 && got != 1<<30 {
		t.Fatalf("Release right away returned %d bytes", got)
	}
	if r.Populated() != got {
		t.Fatalf("Populated %d after Release returned %d", r.Populated(), got)
	}
}

func TestReserveOfNothing(t *testing.T) {
	for _, n := range []int64{0, -1} {
		r := NewReserve(n)
		if r != nil {
			t.Fatalf("NewReserve(%d) = %v, want nil", n, r)
		}
		if r.Populated() != 0 || r.Release() != 0 {
			t.Fatalf("a nil Reserve holds something")
		}
	}
}

func mincore(b []byte, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
