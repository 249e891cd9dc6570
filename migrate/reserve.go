package migrate

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// reserveChunk is how much of a Reserve is populated at a time: the most Release waits
// for once it asked the populating to stop.
const reserveChunk = 8 << 20

// A Reserve is memory a node touches before a frozen window and gives back just before
// the window writes: CRIU's page files on the source, the received images on the
// target. The kernel hands recently freed pages out first, so those writes land on
// pages the machine already backs.
//
// Why it matters: in a VM with free page reporting (virtio-balloon, on by default in
// many clouds and on the machines this project is measured on), pages that stayed free
// for a couple of seconds are handed back to the host, and the next write to each costs
// a host fault and zeroing. Measured here, writing 3 GiB to tmpfs took 6-8 s on such
// pages and 1.2-1.9 s on pages freed just before; the frozen window writes the
// workload's size twice (dump, receive). On a machine without it a Reserve costs its
// populating, outside the window, and nothing else.
//
// A Reserve is populated in the background, a chunk at a time; Release stops that,
// waits for the chunk under way, and unmaps what there is. A nil *Reserve is valid and
// holds nothing.
type Reserve struct {
	mem       []byte
	stop      atomic.Bool
	done      chan struct{}
	populated atomic.Int64
	once      sync.Once
}

// NewReserve maps n bytes of anonymous memory and starts populating them. It returns
// nil (a Reserve of nothing) when n is not positive or the mapping fails: a Reserve
// only makes a window shorter, it is never needed.
func NewReserve(n int64) *Reserve {
	if n <= 0 {
		return nil
	}
	n = (n + PageSize - 1) &^ (PageSize - 1)
	mem, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	// Huge pages where the kernel has them: fewer faults to populate, fewer pages to free.
	unix.Madvise(mem, unix.MADV_HUGEPAGE)
	r := &Reserve{mem: mem, done: make(chan struct{})}
	go r.populate()
	return r
}

func (r *Reserve) populate() {
	defer close(r.done)
	for off := 0; off < len(r.mem) && !r.stop.Load(); off += reserveChunk {
		end := min(off+reserveChunk, len(r.mem))
		if err := unix.Madvise(r.mem[off:end], unix.MADV_POPULATE_WRITE); err != nil {
			return // out of memory, or a kernel before 5.14: what there is serves
		}
		r.populated.Add(int64(end - off))
	}
}

// Populated is how many bytes the Reserve has touched so far.
func (r *Reserve) Populated() int64 {
	if r == nil {
		return 0
	}
	return r.populated.Load()
}

// Release gives the memory back and returns how many bytes of it were populated. It
// may be called more than once; later calls return 0.
func (r *Reserve) Release() int64 {
	if r == nil {
		return 0
	}
	var n int64
	r.once.Do(func() {
		r.stop.Store(true)
		<-r.done
		n = r.populated.Load()
		unix.Munmap(r.mem)
		r.mem = nil
	})
	return n
}
