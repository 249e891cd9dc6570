package migrate

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Operations of FuzzPageStore: an op byte (taken modulo psOpCount), then two bytes a, b
// that name a page (psPage).
const (
	psOpAdd      = iota
	psOpLookup   // Has and Get of a page's hash, added or not
	psOpMissing  // a hash that is no page's: Has and Get say no
	psOpShortGet // a held page into a short buffer: Get says no
	psOpBadSize  // Add of a page that is not PageSize long: an error, nothing stored
	psOpAddZero  // the zero page: always held, never stored
	psOpClose    // Close, twice: the file is gone, and the store holds only the zero page
	psOpCount    // number of operations
	psMaxOps     = 64
	psOpBytes    = 3
)

// psPage returns the page named by a and b: all zero for 0, 0, and a different page
// for every other pair (p[0] = a, p[1] = a+b), so that a short input repeats pages.
func psPage(a, b byte) []byte {
	p := make([]byte, PageSize)
	for i := range 256 { // byte(i) repeats every 256 bytes: copy the rest (fast under -fuzz)
		p[i] = a + byte(i)*b
	}
	for i := 256; i < PageSize; i *= 2 {
		copy(p[i:], p[:i])
	}
	return p
}

// FuzzPageStore runs a sequence of operations on a PageStore and checks it against a
// map: every page added, and the zero page, comes back byte-exact by its hash, to the
// end (a later Add overwrites nothing); a hash never added is missing; duplicates, the
// zero page and refused pages take no room (Len); Close removes the backing file, keeps
// only the zero page, and makes Add fail with ErrStoreClosed.
func FuzzPageStore(f *testing.F) {
	seq := func(ops ...[3]byte) []byte {
		var b []byte
		for _, o := range ops {
			b = append(b, o[:]...)
		}
		return b
	}
	f.Add([]byte{})
	f.Add(seq([3]byte{psOpAdd, 1, 2}, [3]byte{psOpLookup, 1, 2}, [3]byte{psOpLookup, 1, 2}, [3]byte{psOpLookup, 1, 3}))
	f.Add(seq([3]byte{psOpAdd, 1, 2}, [3]byte{psOpAdd, 1, 2}, [3]byte{psOpAdd, 0, 0}, [3]byte{psOpAddZero, 0, 0},
		[3]byte{psOpAdd, 2, 1}, [3]byte{psOpMissing, 1, 2}, [3]byte{psOpShortGet, 2, 1}, [3]byte{psOpLookup, 2, 1}))
	f.Add(seq([3]byte{psOpAdd, 7, 7}, [3]byte{psOpBadSize, 7, 7}, [3]byte{psOpBadSize, 0, 0}, [3]byte{psOpBadSize, 255, 255},
		[3]byte{psOpLookup, 7, 7}))
	f.Add(seq([3]byte{psOpAdd, 9, 1}, [3]byte{psOpAdd, 9, 2}, [3]byte{psOpClose, 0, 0}, [3]byte{psOpLookup, 9, 1},
		[3]byte{psOpAdd, 9, 3}, [3]byte{psOpAdd, 0, 0}, [3]byte{psOpLookup, 0, 0}, [3]byte{psOpClose, 0, 0}))
	var many []byte
	for i := range psMaxOps {
		many = append(many, byte(i%psOpCount), byte(i/psOpCount), byte(i))
	}
	f.Add(many)

	// One directory for all inputs (a directory each would be most of an input's time);
	// Close removes the backing file, and a failed input's is removed here.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = os.Remove(filepath.Join(dir, "pages.bin"))
		s, err := OpenPageStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		// The first segment is mapped here, without read-ahead: on a disk file system the
		// first fault into a fresh segment otherwise reads ahead megabytes of zeroes
		// (read_ahead_kb), most of an input's time. Add's own grow is TestPageStore's.
		s.mu.Lock()
		err = s.grow()
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		_ = unix.Madvise(s.segs[0], unix.MADV_RANDOM)
		model := map[PageHash][]byte{} // what the store must hold, the zero page aside
		closed := false
		dst, junk := make([]byte, PageSize), bytes.Repeat([]byte{0xa5}, PageSize)
		// want checks Has and Get of h against the model.
		want := func(i int, h PageHash, page []byte) {
			t.Helper()
			held := h == ZeroPageHash || (!closed && model[h] != nil)
			if got := s.Has(h); got != held {
				t.Fatalf("op %d: Has(%x) = %v, want %v (closed %v)", i, h, got, held, closed)
			}
			copy(dst, junk)
			if got := s.Get(h, dst); got != held {
				t.Fatalf("op %d: Get(%x) = %v, want %v (closed %v)", i, h, got, held, closed)
			}
			if held && !bytes.Equal(dst, page) {
				t.Fatalf("op %d: Get(%x) gives a different page", i, h)
			}
		}
		n := min(len(data)/psOpBytes, psMaxOps)
		for i := range n {
			op, a, b := data[i*psOpBytes]%psOpCount, data[i*psOpBytes+1], data[i*psOpBytes+2]
			page := psPage(a, b)
			h := HashPage(page)
			switch op {
			case psOpAdd, psOpAddZero:
				if op == psOpAddZero {
					page, h = make([]byte, PageSize), ZeroPageHash
				}
				err := s.Add(h, page)
				switch {
				case h == ZeroPageHash && err != nil:
					t.Fatalf("op %d: Add of the zero page: %v", i, err)
				case h != ZeroPageHash && closed && !errors.Is(err, ErrStoreClosed):
					t.Fatalf("op %d: Add after Close: %v, want ErrStoreClosed", i, err)
				case h != ZeroPageHash && !closed && err != nil:
					t.Fatalf("op %d: Add: %v", i, err)
				}
				if h != ZeroPageHash && !closed {
					model[h] = page
				}
				want(i, h, page)
			case psOpLookup:
				want(i, h, page)
			case psOpMissing:
				h[b%byte(len(h))] ^= 1 << (a % 8)
				want(i, h, nil) // no page has this hash (a 2^-128 chance)
			case psOpShortGet:
				if s.Get(h, dst[:PageSize-1-int(a)]) {
					t.Fatalf("op %d: Get into %d bytes succeeded", i, PageSize-1-int(a))
				}
			case psOpBadSize:
				bad := append(page, make([]byte, b)...)[:PageSize-int(a)+int(b)]
				if len(bad) == PageSize {
					bad = page[:PageSize-1]
				}
				if err := s.Add(HashPage(page), bad); err == nil || errors.Is(err, ErrStoreClosed) {
					t.Fatalf("op %d: Add of %d bytes: %v, want a size error", i, len(bad), err)
				}
				want(i, h, page)
			case psOpClose:
				if err := s.Close(); err != nil {
					t.Fatalf("op %d: Close: %v", i, err)
				}
				if _, err := os.Stat(filepath.Join(dir, "pages.bin")); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("op %d: backing file after Close: %v", i, err)
				}
				if err := s.Close(); err != nil {
					t.Fatalf("op %d: second Close: %v", i, err)
				}
				closed = true
				for h := range model {
					want(i, h, nil)
				}
				model = map[PageHash][]byte{}
			}
			if got := s.Len(); got != len(model) {
				t.Fatalf("op %d: Len = %d, want %d", i, got, len(model))
			}
		}
		for h, page := range model {
			want(n, h, page)
		}
	})
}
