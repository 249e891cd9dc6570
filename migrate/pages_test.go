package migrate

import (
	"bytes"
	"sync/atomic"
	"testing"

	"github.com/zeebo/xxh3"
)

func TestHashPage(t *testing.T) {
	page := fxRandom(100, PageSize)
	full := xxh3.Hash128(page).Bytes()
	if h := HashPage(page); !bytes.Equal(h[:], full[:]) {
		t.Fatalf("HashPage = %x, want the XXH3-128 %x", h, full)
	}
	zero := xxh3.Hash128(make([]byte, PageSize)).Bytes()
	if !bytes.Equal(ZeroPageHash[:], zero[:]) {
		t.Fatalf("ZeroPageHash = %x, want %x", ZeroPageHash, zero)
	}
	// A known answer, so the hash cannot change without this test noticing: page
	// hashes are part of the wire format between daemons.
	if got := HashPage(make([]byte, PageSize)).String(); got != knownZeroPageXXH3 {
		t.Fatalf("hash of the zero page %s, want %s", got, knownZeroPageXXH3)
	}
	if got, want := HashPage(page).String(), HashPage(page); got != string(fxHex(want[:])) {
		t.Fatalf("String() = %q", got)
	}
	for _, n := range []int{0, 1, PageSize - 1, PageSize + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("HashPage of %d bytes did not panic", n)
				}
			}()
			HashPage(make([]byte, n))
		}()
	}
}

func fxHex(b []byte) []byte {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return out
}

func TestHashPagesParallel(t *testing.T) {
	data := fxRandom(101, 300*PageSize)
	for _, n := range []int{0, 1, minParallelPages - 1, minParallelPages, minParallelPages + 1, 257, 300} {
		sums := make([]PageHash, n)
		hashPages(data, sums)
		for i := range sums {
			if want := HashPage(data[i*PageSize : (i+1)*PageSize]); sums[i] != want {
				t.Fatalf("%d pages: page %d hashed to %s, want %s", n, i, sums[i], want)
			}
		}
	}
}

func TestParallelCoversOnce(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1001} {
		seen := make([]atomic.Int32, n)
		parallel(n, func(lo, hi int) {
			if lo >= hi {
				t.Errorf("n=%d: empty part [%d, %d)", n, lo, hi)
			}
			for i := lo; i < hi; i++ {
				seen[i].Add(1)
			}
		})
		for i := range seen {
			if c := seen[i].Load(); c != 1 {
				t.Fatalf("n=%d: index %d done %d times", n, i, c)
			}
		}
	}
}

// BenchmarkHashPages hashes 64 MiB a page at a time; run with -cpu=1,2 to see what
// hashing on every core gives.
func BenchmarkHashPages(b *testing.B) {
	data := fxRandom(102, 64<<20)
	sums := make([]PageHash, len(data)/PageSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		hashPages(data, sums)
	}
}

// knownZeroPageXXH3 is the XXH3-128 of 4096 zero bytes, big endian.
const knownZeroPageXXH3 = "3ee8dc4f9e7ee49593d76fe148c689ba"
