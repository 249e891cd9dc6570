package migrate

import (
	"encoding/hex"
	"fmt"
	"runtime"
	"sync"

	"github.com/zeebo/xxh3"
)

// PageSize is the unit of pre-copy and of page-level deduplication: the page size of
// every architecture migshm runs on, and the unit CRIU's pages-*.img files are made of.
const PageSize = 4096

// PageHash names a page by its content: the 128-bit XXH3 hash of its 4096 bytes.
// Pre-copy sends pages under their hash; the final image stream then sends the hash
// alone for every page the target already holds.
//
// XXH3 rather than SHA-256: the final stream hashes every page of the workload while it
// is frozen, and XXH3 runs an order of magnitude faster (see BenchmarkHashPages). It is
// not collision resistant against an adversary, and need not be: the traffic is inside
// mutual TLS, and a page store holds the pages of one workload only, so crafted
// colliding pages could only corrupt the memory of the workload that made them.
type PageHash [16]byte

// ZeroPageHash is the hash of the all-zero page. Every receiver holds that page without
// being sent it.
var ZeroPageHash = HashPage(make([]byte, PageSize))

// HashPage returns the hash of one page. p must be exactly PageSize long; anything else
// is a programming error and panics.
func HashPage(p []byte) PageHash {
	if len(p) != PageSize {
		panic(fmt.Sprintf("migrate.HashPage: %d bytes, a page is %d", len(p), PageSize))
	}
	return sum16(p)
}

// String returns the hash in hex.
func (h PageHash) String() string { return hex.EncodeToString(h[:]) }

// sum16 is the 128-bit XXH3 hash of p, of any length (the image stream hashes the
// short last page of a file with it), big endian.
func sum16(p []byte) PageHash {
	return PageHash(xxh3.Hash128(p).Bytes())
}

// minParallelPages is the fewest pages hashPages splits across goroutines: below it
// starting them costs more than it saves.
const minParallelPages = 32

// hashPages sets sums[i] to the hash of the i-th page of data, which holds len(sums)
// whole pages. Large inputs are hashed on every CPU the runtime may use.
func hashPages(data []byte, sums []PageHash) {
	parallel(len(sums), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			sums[i] = sum16(data[i*PageSize : (i+1)*PageSize])
		}
	})
}

// parallel calls fn on consecutive, non-empty parts [lo, hi) of [0, n) that cover it, on up to
// GOMAXPROCS goroutines (the caller's among them) when n is at least
// minParallelPages, and returns when all are done.
func parallel(n int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	workers := min(runtime.GOMAXPROCS(0), n/(minParallelPages/2))
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for lo := per; lo < n; lo += per {
		wg.Add(1)
		go func(lo int) {
			defer wg.Done()
			fn(lo, min(lo+per, n))
		}(lo)
	}
	fn(0, per)
	wg.Wait()
}
