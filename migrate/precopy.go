package migrate

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/migshm/migshm/internal/procfs"
	"golang.org/x/sys/unix"
)

// Pre-copy reads a running workload's memory and sends the target every page it does
// not hold yet, round after round, so that the final, frozen image stream can send most
// pages as hashes (StreamOptions.Held). This kernel has no soft-dirty bits, so a round
// reads all of the tree's memory and finds what changed by hashing it.
//
// A round travels as a page stream. Integers are big endian; every CRC is CRC-32C
// (Castagnoli) over the whole frame before it, kind byte included.
//
//	header   "MIGSHM-PAGES" | version u16 (2) | crc u32
//	batch    'B' | count u32 (1..1024) | count x (hash [16] | page [4096]) | crc u32
//	deltas   'D' | count u32 (1..1024) | size u32 | count x delta | crc u32
//	         delta: hash [16] | base hash [16] | len u16 (0..1024) | runs [len]
//	trailer  'E' | pages u64 | crc u32
//
// A delta is a page given as its base, a page the receiver holds from an earlier round,
// with runs of changed words written over it (appendDelta); size is the bytes of all
// of a batch's deltas. The trailer counts the pages of all batches, so a dropped batch
// is caught. A page whose HashPage is not the hash it comes with is refused as well:
// the receiver only ever holds pages whose name is their content. Version 1 streams
// (no deltas) are still read.
const (
	pagesMagic   = "MIGSHM-PAGES"
	pagesVersion = 2

	kindBatch = 'B'
	kindDelta = 'D'

	deltaEntryHead = 2*len(PageHash{}) + 2
	maxDeltaBatch  = maxBatchPages * (deltaEntryHead + maxDeltaLen)

	pageEntryLen    = len(PageHash{}) + PageSize
	pagesHeaderLen  = len(pagesMagic) + 2 + crcLen
	batchHeadLen    = 1 + 4
	pagesTrailerLen = 1 + 8 + crcLen

	// batchPages is how many pages a round puts in a batch; maxBatchPages is the most
	// a reader accepts (and so what it allocates).
	batchPages    = 256
	maxBatchPages = 1024

	// readWindow is the most a round reads of a process's memory at a time.
	readWindow      = 1 << 20
	readWindowPages = readWindow / PageSize
)

// Bits of a /proc/PID/pagemap entry.
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // a file page, or shared anonymous memory: not copied on write yet
)

// RoundStats are the figures of one pre-copy round.
type RoundStats struct {
	// Pages is how many pages were read.
	Pages int64
	// Changed is how many of them differ from the previous round at the same place (all
	// of them in the first round): the measure of how fast the workload dirties memory.
	Changed int64
	// Sent is how many pages were written to the stream (Deltas of them as deltas);
	// SentBytes how many bytes, its framing included.
	Sent      int64
	Deltas    int64
	SentBytes int64
	Duration  time.Duration
}

// Precopier reads the memory of a running workload tree for pre-copy rounds. It reads
// what CRIU dumps as page data: the private writable mappings (anonymous, heap, stack,
// private file mappings), only the pages present or swapped and, for file mappings,
// already copied on write; and every SysV shm segment the tree attaches, once per round
// and in full. It uses no kernel dirty tracking: every round reads and hashes all of it.
//
// Round and Commit are for one goroutine at a time; Held may be called at any time,
// from any goroutine.
type Precopier struct {
	procRoot string
	pids     func() ([]int, error)

	mu      sync.RWMutex
	held    map[PageHash]struct{} // pages the target acknowledged
	pending map[PageHash]struct{} // sent by the last Round, until Commit

	prev map[placeKey][]pageRun // the last round's hashes, by place
	buf  []byte                 // readWindow bytes
	pm   []byte                 // pagemap entries of a window
	sums []PageHash             // hashes of a window

	twin     *PageStore // copies of the pages sent, the bases of deltas (KeepTwin)
	twinMax  int        // pages the twin may hold
	base     []byte     // a page from the twin
	deltaBuf []byte     // a delta being encoded
}

// KeepTwin makes the Precopier keep in store a copy of every page it sends, up to
// maxPages of them, so that a later round sends a page that changed in a few words as
// a delta against the page the target held at its place. The store is the caller's to
// close (before the dump, say: its memory is then free for the dump to write).
func (p *Precopier) KeepTwin(store *PageStore, maxPages int) {
	p.twin, p.twinMax = store, maxPages
	p.base = make([]byte, PageSize)
}

// NewPrecopier returns a Precopier that reads the tree pids lists (its host pids, asked
// anew each round: processes may come and go) under procRoot (normally "/proc").
func NewPrecopier(procRoot string, pids func() ([]int, error)) *Precopier {
	return &Precopier{procRoot: procRoot, pids: pids, held: map[PageHash]struct{}{}}
}

// Held reports whether the target holds the page with hash h: a page sent by a
// committed round, or the zero page.
func (p *Precopier) Held(h PageHash) bool {
	if h == ZeroPageHash {
		return true
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	_, ok := p.held[h]
	return ok
}

// Commit records that the target holds every page the last Round sent. Call it only
// once the target has acknowledged the whole round.
func (p *Precopier) Commit() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for h := range p.pending {
		p.held[h] = struct{}{}
	}
	p.pending = nil
}

// Round reads the tree's memory once and writes to w, as a page stream, every page the
// target is not known to hold: not Held, not sent earlier in this round, not the zero
// page. Processes that exit and mappings that go away while it reads are skipped. A
// failed round commits nothing; the next one sends its pages again.
func (p *Precopier) Round(ctx context.Context, w io.Writer) (RoundStats, error) {
	start := time.Now()
	r := &round{p: p, ctx: ctx, pw: newPageWriter(w), cur: map[placeKey][]pageRun{},
		sent: map[PageHash]struct{}{}, shmRead: map[uint64][][2]uint64{}}
	if p.buf == nil {
		p.buf = make([]byte, readWindow)
		p.pm = make([]byte, readWindowPages*8)
		p.sums = make([]PageHash, readWindowPages)
	}
	err := r.run()
	r.st.Duration = time.Since(start)
	r.st.Sent, r.st.Deltas, r.st.SentBytes = r.pw.pages, r.pw.deltas, r.pw.bytes
	p.mu.Lock()
	p.pending = nil
	if err == nil {
		p.pending = r.sent
	}
	p.mu.Unlock()
	if err != nil {
		return r.st, fmt.Errorf("pre-copy round: %w", err)
	}
	for _, runs := range r.cur {
		slices.SortFunc(runs, func(a, b pageRun) int { return cmp.Compare(a.first, b.first) })
	}
	p.prev = r.cur
	return r.st, nil
}

// placeKey names where pages live: a process's private memory (by page number of the
// virtual address) or a SysV segment (by page number in the segment).
type placeKey struct {
	shm bool
	id  uint64 // pid, or shmid
}

// pageRun is the hashes of consecutive pages read in a round.
type pageRun struct {
	first  uint64 // page number of hashes[0]
	hashes []PageHash
}

// errProcessGone stops the reading of a process that exited.
var errProcessGone = errors.New("process is gone")

// round is one Round in progress.
type round struct {
	p       *Precopier
	ctx     context.Context
	pw      *pageWriter
	st      RoundStats
	cur     map[placeKey][]pageRun
	sent    map[PageHash]struct{}
	shmRead map[uint64][][2]uint64 // page ranges of each segment read this round
}

func (r *round) run() error {
	pids, err := r.p.pids()
	if err != nil {
		return fmt.Errorf("list the tree's processes: %w", err)
	}
	if err := r.pw.header(); err != nil {
		return err
	}
	for _, pid := range pids {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		if err := r.process(pid); err != nil {
			return err
		}
	}
	return r.pw.finish()
}

// process reads one process's memory. Its exit is not an error.
func (r *round) process(pid int) error {
	dir := filepath.Join(r.p.procRoot, strconv.Itoa(pid))
	err := r.readProcess(pid, dir)
	var we *writeError
	if err == nil || errors.As(err, &we) || errors.Is(err, r.ctx.Err()) {
		return err
	}
	if errors.Is(err, errProcessGone) || errors.Is(err, procfs.ErrNoProcess) || errors.Is(err, fs.ErrNotExist) ||
		errors.Is(err, unix.ESRCH) {
		return nil
	}
	if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
		return nil // it exited while being read
	}
	return fmt.Errorf("read memory of pid %d: %w", pid, err)
}

func (r *round) readProcess(pid int, dir string) error {
	maps, err := procfs.ReadMaps(r.p.procRoot, pid)
	if err != nil {
		return err
	}
	mem, err := os.Open(filepath.Join(dir, "mem"))
	if err != nil {
		return err
	}
	defer mem.Close()
	var pagemap *os.File // opened when a private mapping needs it
	defer func() {
		if pagemap != nil {
			pagemap.Close()
		}
	}()
	for _, v := range maps {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		shmid, _, sysv := v.SysV()
		switch {
		case sysv:
			if err := r.readShm(mem, v, shmid); err != nil {
				return err
			}
		case v.Private() && v.Writable():
			if pagemap == nil {
				if pagemap, err = os.Open(filepath.Join(dir, "pagemap")); err != nil {
					return err
				}
			}
			if err := r.readPrivate(pid, mem, pagemap, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// readShm reads a SysV segment's mapping in full, unless this round read that part of
// the segment already (through another process, or another attachment).
func (r *round) readShm(mem *os.File, v procfs.Mapping, shmid int) error {
	id := uint64(shmid)
	lo := v.Offset / PageSize
	hi := lo + (v.End-v.Start)/PageSize
	for _, s := range r.shmRead[id] {
		if s[0] <= lo && hi <= s[1] {
			return nil
		}
	}
	r.shmRead[id] = append(r.shmRead[id], [2]uint64{lo, hi})
	key := placeKey{shm: true, id: id}
	prev := r.p.prev[key]
	for addr := v.Start; addr < v.End; addr += readWindow {
		n := min(readWindowPages, int((v.End-addr)/PageSize))
		first := lo + (addr-v.Start)/PageSize
		if done, err := r.readRun(mem, key, prev, addr, first, n); err != nil || done {
			return err
		}
	}
	return nil
}

// readPrivate reads the pages of a private mapping that CRIU would dump: present or
// swapped, and not a file page nobody wrote to.
func (r *round) readPrivate(pid int, mem, pagemap *os.File, v procfs.Mapping) error {
	key := placeKey{id: uint64(pid)}
	prev := r.p.prev[key]
	for addr := v.Start; addr < v.End; addr += readWindow {
		n := min(readWindowPages, int((v.End-addr)/PageSize))
		pm := r.p.pm[:n*8]
		got, err := unix.Pread(int(pagemap.Fd()), pm, int64(addr/PageSize*8))
		if err != nil {
			return err
		}
		if got == 0 {
			return errProcessGone
		}
		entries := got / 8
		for i := 0; i < entries; {
			if !wanted(binary.NativeEndian.Uint64(pm[i*8:])) {
				i++
				continue
			}
			j := i + 1
			for j < entries && wanted(binary.NativeEndian.Uint64(pm[j*8:])) {
				j++
			}
			a := addr + uint64(i)*PageSize
			if done, err := r.readRun(mem, key, prev, a, a/PageSize, j-i); err != nil || done {
				return err
			}
			i = j
		}
		if entries < n {
			return nil // the mapping ended early: unmapped while being read
		}
	}
	return nil
}

func wanted(pme uint64) bool {
	return pme&(pmPresent|pmSwapped) != 0 && pme&pmFile == 0
}

// readRun reads n pages at addr, first being the number of the first page in its place.
// done reports that the rest of the mapping is gone.
func (r *round) readRun(mem *os.File, key placeKey, prev []pageRun, addr, first uint64, n int) (done bool, err error) {
	if err := r.ctx.Err(); err != nil {
		return true, err
	}
	buf := r.p.buf[:n*PageSize]
	got, err := unix.Pread(int(mem.Fd()), buf, int64(addr))
	if got <= 0 {
		switch {
		case err == nil:
			return true, errProcessGone // its memory is gone: it exited
		case errors.Is(err, unix.EIO) || errors.Is(err, unix.EFAULT):
			return true, nil // unmapped while being read
		default:
			return true, err
		}
	}
	pages := got / PageSize
	sums := r.p.sums[:pages]
	hashPages(buf, sums)
	r.cur[key] = append(r.cur[key], pageRun{first: first, hashes: slices.Clone(sums)})
	r.st.Pages += int64(pages)
	for i, h := range sums {
		old, had := lookup(prev, first+uint64(i))
		if !had || old != h {
			r.st.Changed++
		}
		if h == ZeroPageHash || r.p.Held(h) {
			continue
		}
		if _, ok := r.sent[h]; ok {
			continue
		}
		r.sent[h] = struct{}{}
		if err := r.send(h, old, had, buf[i*PageSize:(i+1)*PageSize]); err != nil {
			return true, err
		}
	}
	return pages < n, nil
}

// send writes page (hash h) to the stream: as a delta against old, the page its place
// held in the last round, when the target holds old, the twin has it and the delta is
// small; else whole. The twin keeps a copy.
func (r *round) send(h, old PageHash, had bool, page []byte) error {
	p := r.p
	if p.twin == nil {
		return r.pw.add(h, page)
	}
	if had && p.Held(old) && p.twin.Get(old, p.base) {
		if d, ok := appendDelta(p.deltaBuf[:0], p.base, page); ok {
			p.deltaBuf = d
			if err := r.pw.addDelta(h, old, d); err != nil {
				return err
			}
			return r.keep(h, page)
		}
	}
	if err := r.pw.add(h, page); err != nil {
		return err
	}
	return r.keep(h, page)
}

// keep copies a sent page into the twin while it has room.
func (r *round) keep(h PageHash, page []byte) error {
	if r.p.twin.Len() >= r.p.twinMax {
		return nil
	}
	if err := r.p.twin.Add(h, page); err != nil && !errors.Is(err, ErrStoreClosed) {
		return fmt.Errorf("keep a copy of the pages sent: %w", err)
	}
	return nil
}

// lookup finds the hash page pn had in runs (sorted by first page).
func lookup(runs []pageRun, pn uint64) (PageHash, bool) {
	i, _ := slices.BinarySearchFunc(runs, pn, func(r pageRun, pn uint64) int {
		switch {
		case r.first+uint64(len(r.hashes)) <= pn:
			return -1
		case r.first > pn:
			return 1
		}
		return 0
	})
	if i < len(runs) && runs[i].first <= pn && pn < runs[i].first+uint64(len(runs[i].hashes)) {
		return runs[i].hashes[pn-runs[i].first], true
	}
	return PageHash{}, false
}

// writeError is a failed write of the stream: never mistaken for a process that went
// away.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// pageWriter writes a page stream.
type pageWriter struct {
	w      io.Writer
	buf    []byte // the batch being built
	count  int    // pages in it
	dbuf   []byte // the delta batch being built
	dcount int    // deltas in it
	pages  int64  // pages written, all batches, deltas included
	deltas int64  // deltas written
	bytes  int64  // bytes written, framing included
}

func newPageWriter(w io.Writer) *pageWriter {
	return &pageWriter{w: w}
}

func (pw *pageWriter) write(b []byte, what string) error {
	n, err := pw.w.Write(b)
	pw.bytes += int64(n)
	if err != nil {
		return &writeError{fmt.Errorf("write %s: %w", what, err)}
	}
	return nil
}

func (pw *pageWriter) header() error {
	b := append([]byte(pagesMagic), 0, pagesVersion)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return pw.write(b, "page stream header")
}

// add appends a page to the batch, writing the batch when it is full.
func (pw *pageWriter) add(h PageHash, page []byte) error {
	if pw.buf == nil {
		pw.buf = make([]byte, batchHeadLen, batchHeadLen+batchPages*pageEntryLen+crcLen)
	}
	pw.buf = append(pw.buf, h[:]...)
	pw.buf = append(pw.buf, page...)
	if pw.count++; pw.count == batchPages {
		return pw.flush()
	}
	return nil
}

func (pw *pageWriter) flush() error {
	if pw.count == 0 {
		return nil
	}
	pw.buf[0] = kindBatch
	binary.BigEndian.PutUint32(pw.buf[1:], uint32(pw.count))
	pw.buf = binary.BigEndian.AppendUint32(pw.buf, crc32.Checksum(pw.buf, castagnoli))
	err := pw.write(pw.buf, "page batch")
	pw.pages += int64(pw.count)
	pw.buf, pw.count = pw.buf[:batchHeadLen], 0
	return err
}

// addDelta appends page h, given as delta against base, to the delta batch, writing
// the batch when it is full.
func (pw *pageWriter) addDelta(h, base PageHash, delta []byte) error {
	if pw.dbuf == nil {
		pw.dbuf = make([]byte, batchHeadLen+4, batchHeadLen+4+batchPages*(deltaEntryHead+64)+crcLen)
	}
	pw.dbuf = append(pw.dbuf, h[:]...)
	pw.dbuf = append(pw.dbuf, base[:]...)
	pw.dbuf = binary.BigEndian.AppendUint16(pw.dbuf, uint16(len(delta)))
	pw.dbuf = append(pw.dbuf, delta...)
	if pw.dcount++; pw.dcount == batchPages {
		return pw.flushDeltas()
	}
	return nil
}

func (pw *pageWriter) flushDeltas() error {
	if pw.dcount == 0 {
		return nil
	}
	pw.dbuf[0] = kindDelta
	binary.BigEndian.PutUint32(pw.dbuf[1:], uint32(pw.dcount))
	binary.BigEndian.PutUint32(pw.dbuf[batchHeadLen:], uint32(len(pw.dbuf)-batchHeadLen-4))
	pw.dbuf = binary.BigEndian.AppendUint32(pw.dbuf, crc32.Checksum(pw.dbuf, castagnoli))
	err := pw.write(pw.dbuf, "delta batch")
	pw.pages += int64(pw.dcount)
	pw.deltas += int64(pw.dcount)
	pw.dbuf, pw.dcount = pw.dbuf[:batchHeadLen+4], 0
	return err
}

// finish writes the last batches and the trailer.
func (pw *pageWriter) finish() error {
	if err := pw.flush(); err != nil {
		return err
	}
	if err := pw.flushDeltas(); err != nil {
		return err
	}
	b := binary.BigEndian.AppendUint64([]byte{kindTrailer}, uint64(pw.pages))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return pw.write(b, "page stream trailer")
}

// ReadPages reads one page stream from r into store and returns how many pages it
// carried (each is in the store now). It reads up to the trailer and no further. A
// stream that is damaged, cut short or not a page stream at all gives an error wrapping
// ErrCorruptStream; the pages added before the damage stay (each was checked against
// its hash). ctx is checked between batches.
func ReadPages(ctx context.Context, r io.Reader, store *PageStore) (int64, error) {
	n, err := readPages(ctx, r, store)
	if err != nil {
		return n, fmt.Errorf("receive pre-copy pages: %w", err)
	}
	return n, nil
}

func readPages(ctx context.Context, r io.Reader, store *PageStore) (int64, error) {
	if store == nil {
		return 0, errors.New("no page store")
	}
	if err := readPagesHeader(r); err != nil {
		return 0, err
	}
	var pages int64
	var buf, dbuf []byte
	var sums []PageHash
	for batch := 1; ; batch++ {
		if err := ctx.Err(); err != nil {
			return pages, err
		}
		var head [batchHeadLen]byte
		where := fmt.Sprintf("after %d pages", pages)
		if _, err := io.ReadFull(r, head[:1]); err != nil {
			return pages, pagesReadErr(err, where)
		}
		switch head[0] {
		case kindBatch:
		case kindDelta:
			n, err := readDeltas(r, store, fmt.Sprintf("batch %d", batch), &dbuf)
			pages += n
			if err != nil {
				return pages, err
			}
			continue
		case kindTrailer:
			return pages, readPagesTrailer(r, pages)
		default:
			return pages, fmt.Errorf("%s: unknown record kind %#x: %w", where, head[0], ErrCorruptStream)
		}
		where = fmt.Sprintf("batch %d", batch)
		if _, err := io.ReadFull(r, head[1:]); err != nil {
			return pages, pagesReadErr(err, where)
		}
		count := int(binary.BigEndian.Uint32(head[1:]))
		if count == 0 || count > maxBatchPages {
			return pages, fmt.Errorf("%s: %d pages, not in 1..%d: %w", where, count, maxBatchPages, ErrCorruptStream)
		}
		if need := count*pageEntryLen + crcLen; cap(buf) < need {
			buf = make([]byte, need)
			sums = make([]PageHash, count)
		}
		b := buf[:count*pageEntryLen+crcLen]
		if _, err := io.ReadFull(r, b); err != nil {
			return pages, pagesReadErr(err, where)
		}
		data := b[:len(b)-crcLen]
		crc := crc32.Update(crc32.Checksum(head[:], castagnoli), castagnoli, data)
		if crc != binary.BigEndian.Uint32(b[len(data):]) {
			return pages, fmt.Errorf("%s: checksum mismatch: %w", where, ErrCorruptStream)
		}
		sums = sums[:count]
		parallel(count, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				e := data[i*pageEntryLen:]
				sums[i] = sum16(e[len(PageHash{}):pageEntryLen])
			}
		})
		// The batch is taken whole or not at all.
		for i := range count {
			if h := PageHash(data[i*pageEntryLen:]); h != sums[i] {
				return pages, fmt.Errorf("%s, page %d: content does not match its hash %s: %w", where, i+1, h, ErrCorruptStream)
			}
		}
		for i := range count {
			if err := store.Add(sums[i], data[i*pageEntryLen+len(PageHash{}):(i+1)*pageEntryLen]); err != nil {
				return pages, err
			}
			pages++
		}
	}
}

// readDeltas reads a delta batch (its kind byte is read) into store: each page is its
// base, which the store must hold, with the delta's runs written over it, and must
// match its hash. The batch is taken whole or not at all.
func readDeltas(r io.Reader, store *PageStore, where string, buf *[]byte) (int64, error) {
	var head [batchHeadLen + 4]byte
	head[0] = kindDelta
	if _, err := io.ReadFull(r, head[1:]); err != nil {
		return 0, pagesReadErr(err, where)
	}
	count := int(binary.BigEndian.Uint32(head[1:]))
	size := int(binary.BigEndian.Uint32(head[batchHeadLen:]))
	if count == 0 || count > maxBatchPages || size < count*deltaEntryHead || size > count*(deltaEntryHead+maxDeltaLen) {
		return 0, fmt.Errorf("%s: %d deltas in %d bytes: %w", where, count, size, ErrCorruptStream)
	}
	if cap(*buf) < size+crcLen {
		*buf = make([]byte, size+crcLen)
	}
	b := (*buf)[:size+crcLen]
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, pagesReadErr(err, where)
	}
	data := b[:size]
	if crc32.Update(crc32.Checksum(head[:], castagnoli), castagnoli, data) != binary.BigEndian.Uint32(b[size:]) {
		return 0, fmt.Errorf("%s: checksum mismatch: %w", where, ErrCorruptStream)
	}
	pages := make([]byte, count*PageSize)
	sums := make([]PageHash, count)
	for i := range count {
		if len(data) < deltaEntryHead {
			return 0, fmt.Errorf("%s: delta %d is cut short: %w", where, i+1, ErrCorruptStream)
		}
		h, base := PageHash(data), PageHash(data[len(PageHash{}):])
		n := int(binary.BigEndian.Uint16(data[2*len(PageHash{}):]))
		data = data[deltaEntryHead:]
		if n > maxDeltaLen || n > len(data) {
			return 0, fmt.Errorf("%s: delta %d of %d bytes: %w", where, i+1, n, ErrCorruptStream)
		}
		page := pages[i*PageSize : (i+1)*PageSize]
		if !store.Get(base, page) {
			return 0, fmt.Errorf("%s: delta %d is against page %s, which is not held here: %w", where, i+1, base, ErrCorruptStream)
		}
		if err := applyDelta(page, data[:n]); err != nil {
			return 0, fmt.Errorf("%s: delta %d: %w: %w", where, i+1, err, ErrCorruptStream)
		}
		if sum16(page) != h {
			return 0, fmt.Errorf("%s: delta %d does not give its page %s: %w", where, i+1, h, ErrCorruptStream)
		}
		sums[i] = h
		data = data[n:]
	}
	if len(data) != 0 {
		return 0, fmt.Errorf("%s: %d bytes after the last delta: %w", where, len(data), ErrCorruptStream)
	}
	for i := range count {
		if err := store.Add(sums[i], pages[i*PageSize:(i+1)*PageSize]); err != nil {
			return int64(i), err
		}
	}
	return int64(count), nil
}

func readPagesHeader(r io.Reader) error {
	var h [pagesHeaderLen]byte
	return readHead(r, h[:], pagesMagic, 1, pagesVersion, "page stream", pagesReadErr)
}

// readPagesTrailer reads the rest of the trailer (its kind byte is read) and checks it.
func readPagesTrailer(r io.Reader, pages int64) error {
	var t [pagesTrailerLen]byte
	t[0] = kindTrailer
	if _, err := io.ReadFull(r, t[1:]); err != nil {
		return pagesReadErr(err, "trailer")
	}
	if crc32.Checksum(t[:pagesTrailerLen-crcLen], castagnoli) != binary.BigEndian.Uint32(t[pagesTrailerLen-crcLen:]) {
		return fmt.Errorf("trailer: checksum mismatch: %w", ErrCorruptStream)
	}
	if n := binary.BigEndian.Uint64(t[1:]); n != uint64(pages) {
		return fmt.Errorf("trailer mismatch: received %d pages, the trailer says %d: %w", pages, n, ErrCorruptStream)
	}
	return nil
}

// pagesReadErr says where a read failed; a stream that ends early is corrupt.
func pagesReadErr(err error, where string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: truncated (%w): %w", where, io.ErrUnexpectedEOF, ErrCorruptStream)
	}
	return fmt.Errorf("%s: %w", where, err)
}
