package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fxPageStream writes pages as a page stream, batches of batchPages.
func fxPageStream(t testing.TB, pages [][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	pw := newPageWriter(&buf)
	if err := pw.header(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		if err := pw.add(HashPage(p), p); err != nil {
			t.Fatal(err)
		}
	}
	if err := pw.finish(); err != nil {
		t.Fatal(err)
	}
	if pw.bytes != int64(buf.Len()) || pw.pages != int64(len(pages)) {
		t.Fatalf("writer counted %d bytes, %d pages; wrote %d bytes, %d pages", pw.bytes, pw.pages, buf.Len(), len(pages))
	}
	return buf.Bytes()
}

func TestPageStreamRoundTrip(t *testing.T) {
	pages, _ := fxPages(300, 2*batchPages+88)
	pages = append(pages, pages[5], make([]byte, PageSize)) // a duplicate and the zero page
	stream := fxPageStream(t, pages)
	batches := (len(pages) + batchPages - 1) / batchPages
	if want := pagesHeaderLen + batches*(batchHeadLen+crcLen) + len(pages)*pageEntryLen + pagesTrailerLen; len(stream) != want {
		t.Fatalf("stream is %d bytes, want %d", len(stream), want)
	}
	s := fxOpenStore(t)
	r := bytes.NewReader(append(stream, "next"...))
	n, err := ReadPages(context.Background(), r, s)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(pages)) {
		t.Fatalf("ReadPages = %d, want %d", n, len(pages))
	}
	if s.Len() != len(pages)-2 {
		t.Fatalf("store holds %d pages, want %d (no duplicate, no zero page)", s.Len(), len(pages)-2)
	}
	dst := make([]byte, PageSize)
	for i, p := range pages {
		if !s.Get(HashPage(p), dst) || !bytes.Equal(dst, p) {
			t.Fatalf("page %d is not in the store", i)
		}
	}
	if rest, _ := io.ReadAll(r); string(rest) != "next" {
		t.Fatalf("ReadPages read past the trailer: %q left", rest)
	}

	t.Run("empty round", func(t *testing.T) {
		n, err := ReadPages(context.Background(), bytes.NewReader(fxPageStream(t, nil)), fxOpenStore(t))
		if n != 0 || err != nil {
			t.Fatalf("ReadPages = %d, %v", n, err)
		}
	})
}

func TestPageStreamCorrupt(t *testing.T) {
	pages, _ := fxPages(301, batchPages+3) // two batches
	stream := fxPageStream(t, pages)
	b1 := pagesHeaderLen                                       // first batch
	b2 := b1 + batchHeadLen + batchPages*pageEntryLen + crcLen // second batch
	tr := b2 + batchHeadLen + 3*pageEntryLen + crcLen          // trailer
	entry := func(batch, i int) int { return batch + batchHeadLen + i*pageEntryLen }
	flip := func(off int) func([]byte) []byte {
		return func(s []byte) []byte { s[off] ^= 0x20; return s }
	}
	// recrc rewrites batch 2's CRC so that only the deeper check can catch the damage.
	recrc := func(edit func([]byte)) func([]byte) []byte {
		return func(s []byte) []byte {
			edit(s)
			end := tr - crcLen
			binary.BigEndian.PutUint32(s[end:], crc32c(s[b2:end]))
			return s
		}
	}
	if len(stream) != tr+pagesTrailerLen {
		t.Fatalf("layout: stream is %d bytes, computed %d", len(stream), tr+pagesTrailerLen)
	}
	tests := []struct {
		name  string
		edit  func([]byte) []byte
		want  string
		added int64 // pages ReadPages reports before the damage
	}{
		{"header magic", flip(3), "not a migshm page stream", 0},
		{"header crc", flip(pagesHeaderLen - 1), "header: checksum mismatch", 0},
		{"byte in a page", flip(entry(b1, 7) + 16 + 100), "batch 1: checksum mismatch", 0},
		{"byte in a hash", flip(entry(b1, 7) + 3), "batch 1: checksum mismatch", 0},
		{"batch crc", flip(b2 - 1), "batch 1: checksum mismatch", 0},
		{"batch count", flip(b1 + 4), "batch 1", 0},
		{"page and crc agree, hash does not", recrc(func(s []byte) { s[entry(b2, 1)+16] ^= 1 }),
			"batch 2, page 2: content does not match its hash", batchPages},
		{"hash and crc agree, page does not", recrc(func(s []byte) { s[entry(b2, 2)] ^= 1 }),
			"batch 2, page 3: content does not match its hash", batchPages},
		{"zero pages", func(s []byte) []byte {
			return fxSplice(s, b2, tr, fxBatchHead(0))
		}, "batch 2: 0 pages", batchPages},
		{"too many pages", func(s []byte) []byte {
			return fxSplice(s, b2, b2+batchHeadLen, fxBatchHead(maxBatchPages+1))
		}, "batch 2: 1025 pages, not in 1..1024", batchPages},
		{"unknown record", func(s []byte) []byte { s[b2] = 'X'; return s }, "unknown record kind 0x58", batchPages},
		{"trailer crc", flip(len(stream) - 1), "trailer: checksum mismatch", batchPages + 3},
		{"batch dropped", func(s []byte) []byte { return fxSplice(s, b2, tr, nil) },
			"received 256 pages, the trailer says 259", batchPages},
		{"batch repeated", func(s []byte) []byte { return fxSplice(s, tr, tr, s[b2:tr]) },
			"received 262 pages, the trailer says 259", batchPages + 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := fxOpenStore(t)
			bad := tc.edit(bytes.Clone(stream))
			n, err := ReadPages(context.Background(), bytes.NewReader(bad), s)
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			if n != tc.added {
				t.Fatalf("ReadPages reports %d pages, want %d", n, tc.added)
			}
		})
	}
	t.Run("newer version", func(t *testing.T) {
		bad := bytes.Clone(stream)
		bad[len(pagesMagic)+1] = 3
		_, err := ReadPages(context.Background(), bytes.NewReader(bad), fxOpenStore(t))
		if err == nil || !strings.Contains(err.Error(), "page stream version 3 is not supported (this migshm reads versions 1 to 2)") {
			t.Fatalf("got %v, want version 3 refused", err)
		}
	})
	t.Run("version 1", func(t *testing.T) {
		old := bytes.Clone(stream)
		old[len(pagesMagic)+1] = 1
		copy(old[len(pagesMagic)+2:], fxCRC(old[:len(pagesMagic)+2]))
		n, err := ReadPages(context.Background(), bytes.NewReader(old), fxOpenStore(t))
		if err != nil || n != batchPages+3 {
			t.Fatalf("a version 1 stream: ReadPages = %d, %v", n, err)
		}
	})
}

func crc32c(b []byte) uint32 { return binary.BigEndian.Uint32(fxCRC(b)) }

// fxSplice returns s with s[from:to] replaced by repl.
func fxSplice(s []byte, from, to int, repl []byte) []byte {
	out := append(bytes.Clone(s[:from]), repl...)
	return append(out, s[to:]...)
}

func fxBatchHead(count uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{kindBatch}, count)
}

func TestPageStreamTruncated(t *testing.T) {
	pages, _ := fxPages(302, 3)
	stream := fxPageStream(t, pages)
	for cut := range len(stream) {
		s := fxOpenStore(t)
		_, err := ReadPages(context.Background(), bytes.NewReader(stream[:cut]), s)
		if !errors.Is(err, ErrCorruptStream) {
			t.Fatalf("cut at %d of %d: %v, want ErrCorruptStream", cut, len(stream), err)
		}
		if cut > 0 && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d of %d: %v, want io.ErrUnexpectedEOF", cut, len(stream), err)
		}
	}
}

func TestPageStreamForeign(t *testing.T) {
	images := fxCraft(DefaultChunkSize, []fxImage{{name: "a", data: []byte("x")}})
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"image stream", images, "not a migshm page stream"},
		{"random bytes", fxRandom(303, 4096), "not a migshm page stream"},
		{"empty input", nil, "not a migshm page stream (it is empty)"},
		{"near miss", []byte("MIGSHM-PAGEZ\x00\x01\x00\x00\x00\x00"), "not a migshm page stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := fxOpenStore(t)
			_, err := ReadPages(context.Background(), bytes.NewReader(tc.input), s)
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			if s.Len() != 0 {
				t.Fatalf("store holds %d pages", s.Len())
			}
		})
	}
}

func TestReadPagesCancelAndStore(t *testing.T) {
	pages, _ := fxPages(304, 600)
	stream := fxPageStream(t, pages)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &fxCancelReader{r: bytes.NewReader(stream), after: 1 << 20, cancel: cancel}
	n, err := ReadPages(ctx, r, fxOpenStore(t))
	if !errors.Is(err, context.Canceled) || n == 0 || n == int64(len(pages)) {
		t.Fatalf("ReadPages = %d, %v; want context.Canceled part way", n, err)
	}

	if _, err := ReadPages(context.Background(), bytes.NewReader(stream), nil); err == nil {
		t.Fatal("ReadPages into no store succeeded")
	}
	closed := fxOpenStore(t)
	closed.Close()
	if _, err := ReadPages(context.Background(), bytes.NewReader(stream), closed); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("ReadPages into a closed store: %v, want ErrStoreClosed", err)
	}
}

// fxProc is a process of a fixture /proc: its maps, its memory by address, and its
// pagemap entries by page address (pages not listed have none: not present).
type fxProc struct {
	pid  int
	maps []string
	mem  map[uint64][]byte
	pm   map[uint64]uint64
}

// fxProcRoot writes procs as a /proc tree: PID/maps, PID/mem (a sparse file whose
// offsets are addresses) and PID/pagemap.
func fxProcRoot(t *testing.T, procs ...fxProc) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range procs {
		fxWriteProc(t, root, p)
	}
	return root
}

func fxWriteProc(t *testing.T, root string, p fxProc) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(p.pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "maps"), []byte(strings.Join(p.maps, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mem, err := os.Create(filepath.Join(dir, "mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for addr, data := range p.mem {
		if _, err := mem.WriteAt(data, int64(addr)); err != nil {
			t.Fatal(err)
		}
	}
	pm, err := os.Create(filepath.Join(dir, "pagemap"))
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	// Cover the whole address range the maps use, so reads end where maps do.
	if err := pm.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	for addr, e := range p.pm {
		if _, err := pm.WriteAt(binary.NativeEndian.AppendUint64(nil, e), int64(addr/PageSize*8)); err != nil {
			t.Fatal(err)
		}
	}
}

// fxPrecopyFixture is two processes sharing SysV segment 7 and a third that is gone.
// Named pages: a0..a9 anonymous (a8 is zero, a9 swapped, a10..a15 not present), f1 a
// written page of a private file mapping, s0..s3 the segment, p0 the heap; dupA0 and
// dupS0 are copies of a0 and s0.
type fxPrecopyFixture struct {
	root  string
	pages map[string][]byte
	procs []fxProc
}

func newPrecopyFixture(t *testing.T) *fxPrecopyFixture {
	f := &fxPrecopyFixture{pages: map[string][]byte{}}
	page := func(name string, seed uint64) []byte {
		p := fxRandom(seed, PageSize)
		f.pages[name] = p
		return p
	}
	mem100 := map[uint64][]byte{}
	pm100 := map[uint64]uint64{}
	for i := range 16 {
		addr := 0x10000 + uint64(i)*PageSize
		mem100[addr] = page(fmt.Sprintf("a%d", i), 400+uint64(i))
		switch {
		case i < 8:
			pm100[addr] = pmPresent
		case i == 8:
			mem100[addr] = make([]byte, PageSize)
			f.pages["a8"] = mem100[addr]
			pm100[addr] = pmPresent
		case i == 9:
			pm100[addr] = pmSwapped
		}
	}
	// A private file mapping: only the page copied on write is read.
	for i := range 4 {
		addr := 0x20000 + uint64(i)*PageSize
		mem100[addr] = page(fmt.Sprintf("f%d", i), 420+uint64(i))
	}
	pm100[0x20000] = pmPresent | pmFile
	pm100[0x21000] = pmPresent
	pm100[0x23000] = pmPresent | pmFile
	// Read-only private and shared file mappings are not read.
	mem100[0x30000] = page("ro", 430)
	pm100[0x30000] = pmPresent
	mem100[0x50000] = page("shared", 431)
	pm100[0x50000] = pmPresent
	for i := range 4 {
		mem100[0x40000+uint64(i)*PageSize] = page(fmt.Sprintf("s%d", i), 440+uint64(i))
	}
	mem100[0x60000] = f.pages["a0"]
	mem100[0x61000] = f.pages["s0"]
	pm100[0x60000] = pmPresent
	pm100[0x61000] = pmPresent
	f.procs = append(f.procs, fxProc{pid: 100, mem: mem100, pm: pm100, maps: []string{
		"00010000-00020000 rw-p 00000000 00:00 0 ",
		"00020000-00024000 rw-p 00003000 fe:00 1234                       /usr/lib/libfoo.so",
		"00030000-00031000 r--p 00000000 fe:00 1234                       /usr/lib/libfoo.so",
		"00040000-00044000 rw-s 00000000 00:01 7                          /SYSV0000abcd (deleted)",
		"00050000-00051000 rw-s 00000000 00:05 99                         /dev/shm/foo",
		"00060000-00062000 rw-p 00000000 00:00 0 ",
	}})
	mem101 := map[uint64][]byte{0x80000: page("p0", 450)}
	for i := range 4 {
		mem101[0x70000+uint64(i)*PageSize] = f.pages[fmt.Sprintf("s%d", i)]
	}
	f.procs = append(f.procs, fxProc{pid: 101, mem: mem101, pm: map[uint64]uint64{0x80000: pmPresent}, maps: []string{
		"00070000-00074000 rw-s 00000000 00:01 7                          /SYSV0000abcd (deleted)",
		"00080000-00081000 rw-p 00000000 00:00 0                          [heap]",
	}})
	f.root = fxProcRoot(t, f.procs...)
	return f
}

// set changes the page at addr in pid's memory.
func (f *fxPrecopyFixture) set(t *testing.T, pid int, addr uint64, data []byte) {
	t.Helper()
	mem, err := os.OpenFile(filepath.Join(f.root, strconv.Itoa(pid), "mem"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := mem.WriteAt(data, int64(addr)); err != nil {
		t.Fatal(err)
	}
}

// fxRound runs a round, feeds its stream to a store, and checks the stream's size.
func fxRound(t *testing.T, p *Precopier, s *PageStore) RoundStats {
	t.Helper()
	var buf bytes.Buffer
	st, err := p.Round(context.Background(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if st.SentBytes != int64(buf.Len()) {
		t.Fatalf("round says %d bytes sent, wrote %d", st.SentBytes, buf.Len())
	}
	n, err := ReadPages(context.Background(), &buf, s)
	if err != nil {
		t.Fatal(err)
	}
	if n != st.Sent {
		t.Fatalf("round says %d pages sent, the stream has %d", st.Sent, n)
	}
	return st
}

func TestPrecopierRounds(t *testing.T) {
	f := newPrecopyFixture(t)
	pids := []int{100, 101, 102} // 102 is gone
	p := NewPrecopier(f.root, func() ([]int, error) { return pids, nil })
	s := fxOpenStore(t)
	check := func(t *testing.T, st RoundStats, pages, changed, sent int64) {
		t.Helper()
		if st.Pages != pages || st.Changed != changed || st.Sent != sent {
			t.Fatalf("round: %d pages, %d changed, %d sent; want %d, %d, %d", st.Pages, st.Changed, st.Sent, pages, changed, sent)
		}
		if st.Duration <= 0 {
			t.Fatal("no duration")
		}
	}
	// a0..a9 (a8 zero), f1, s0..s3 once, a0 and s0 again, p0.
	const all = 10 + 1 + 4 + 2 + 1
	const distinct = 9 + 1 + 4 + 1 // no zero page, no duplicates
	st := fxRound(t, p, s)
	check(t, st, all, all, distinct)
	dst := make([]byte, PageSize)
	for _, name := range []string{"a0", "a7", "a9", "f1", "s0", "s3", "p0"} {
		h := HashPage(f.pages[name])
		if !s.Get(h, dst) || !bytes.Equal(dst, f.pages[name]) {
			t.Fatalf("page %s did not reach the store", name)
		}
		if p.Held(h) {
			t.Fatalf("page %s is held before Commit", name)
		}
	}
	for _, name := range []string{"a10", "a15", "f0", "f2", "f3", "ro", "shared"} {
		if s.Has(HashPage(f.pages[name])) {
			t.Fatalf("page %s was sent: it is not one CRIU would dump", name)
		}
	}
	if !p.Held(ZeroPageHash) {
		t.Fatal("the zero page is not held")
	}

	// Not committed: the target may not have it, so it is all sent again.
	check(t, fxRound(t, p, s), all, 0, distinct)
	p.Commit()
	if !p.Held(HashPage(f.pages["a3"])) || !p.Held(HashPage(f.pages["s2"])) {
		t.Fatal("pages are not held after Commit")
	}
	check(t, fxRound(t, p, s), all, 0, 0)
	p.Commit()

	// Two pages change: both are counted and sent; a page changing back to what the
	// target holds is counted but not sent.
	f.set(t, 100, 0x13000, fxRandom(460, PageSize))
	f.set(t, 100, 0x41000, fxRandom(461, PageSize))
	f.set(t, 101, 0x71000, fxRandom(461, PageSize))
	check(t, fxRound(t, p, s), all, 2, 2)
	p.Commit()
	f.set(t, 100, 0x13000, f.pages["a3"])
	check(t, fxRound(t, p, s), all, 1, 0)

	// The segment read through the other process is the same place: nothing changed.
	pids = []int{101}
	check(t, fxRound(t, p, s), 4+1, 0, 0)
}

func TestPrecopierVanishing(t *testing.T) {
	// Process 200's second mapping ends in the middle (unmapped while read); process 201
	// lists a mapping its memory does not have (it exited); 202 has no maps at all.
	pages, _ := fxPages(470, 4)
	root := fxProcRoot(t,
		fxProc{pid: 200, maps: []string{
			"00010000-00012000 rw-p 00000000 00:00 0 ",
			"00020000-00024000 rw-p 00000000 00:00 0 ",
		}, mem: map[uint64][]byte{0x10000: pages[0], 0x11000: pages[1], 0x20000: pages[2], 0x21000: pages[3]},
			pm: map[uint64]uint64{0x10000: pmPresent, 0x11000: pmPresent, 0x20000: pmPresent, 0x21000: pmPresent,
				0x22000: pmPresent, 0x23000: pmPresent}},
		fxProc{pid: 201, maps: []string{"00090000-00091000 rw-p 00000000 00:00 0 "},
			pm: map[uint64]uint64{0x90000: pmPresent}},
	)
	if err := os.MkdirAll(filepath.Join(root, "202"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := NewPrecopier(root, func() ([]int, error) { return []int{200, 201, 202, 203}, nil })
	var buf bytes.Buffer
	st, err := p.Round(context.Background(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pages != 4 || st.Sent != 4 {
		t.Fatalf("round: %+v, want 4 pages read and sent", st)
	}
}

// fxFailWriter fails every write after the first n bytes.
type fxFailWriter struct {
	n   int
	err error
}

func (w *fxFailWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		n := w.n
		w.n = 0
		return n, w.err
	}
	w.n -= len(p)
	return len(p), nil
}

func TestPrecopierErrors(t *testing.T) {
	f := newPrecopyFixture(t)
	pids := func() ([]int, error) { return []int{100, 101}, nil }
	t.Run("pids", func(t *testing.T) {
		p := NewPrecopier(f.root, func() ([]int, error) { return nil, errors.New("no tree") })
		if _, err := p.Round(context.Background(), io.Discard); err == nil || !strings.Contains(err.Error(), "no tree") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("write", func(t *testing.T) {
		p := NewPrecopier(f.root, pids)
		broken := errors.New("connection reset")
		st, err := p.Round(context.Background(), &fxFailWriter{n: 100, err: broken})
		if !errors.Is(err, broken) {
			t.Fatalf("got %v, want the write error", err)
		}
		if st.SentBytes != 100 {
			t.Fatalf("SentBytes = %d, want the 100 written", st.SentBytes)
		}
		// A failed round commits nothing, even after a good one that was not committed.
		if _, err := p.Round(context.Background(), io.Discard); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Round(context.Background(), &fxFailWriter{n: 100, err: broken}); !errors.Is(err, broken) {
			t.Fatal(err)
		}
		p.Commit()
		if p.Held(HashPage(f.pages["a0"])) {
			t.Fatal("a page of a failed round is held")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		p := NewPrecopier(f.root, pids)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := p.Round(ctx, io.Discard); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
	t.Run("unreadable process", func(t *testing.T) {
		// A process that is there but cannot be read is an error, not skipped.
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "300", "maps"), 0o755); err != nil {
			t.Fatal(err)
		}
		p := NewPrecopier(root, func() ([]int, error) { return []int{300}, nil })
		if _, err := p.Round(context.Background(), io.Discard); err == nil || !strings.Contains(err.Error(), "pid 300") {
			t.Fatalf("got %v, want an error about pid 300", err)
		}
	})
}
