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
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fxPagedData returns a pages file of n pages (every tenth one zero, the others
// distinct) followed by tail random bytes.
func fxPagedData(seed uint64, n, tail int) []byte {
	data := fxRandom(seed, n*PageSize+tail)
	for i := 0; i < n; i += 10 {
		clear(data[i*PageSize : (i+1)*PageSize])
	}
	return data
}

// fxHeld makes the receiver hold pct% of the non-zero whole pages of data: it returns
// the sender's Held, a store holding exactly those pages, and how many pages (zero
// pages included) will travel as hashes.
func fxHeld(t testing.TB, data []byte, pct int) (func(PageHash) bool, *PageStore, int64) {
	t.Helper()
	s := fxOpenStore(t)
	held := map[PageHash]bool{}
	var refs int64
	for i := 0; (i+1)*PageSize <= len(data); i++ {
		p := data[i*PageSize : (i+1)*PageSize]
		h := HashPage(p)
		switch {
		case h == ZeroPageHash:
			refs++
		case i%100 < pct:
			held[h] = true
			if err := s.Add(h, p); err != nil {
				t.Fatal(err)
			}
			refs++
		}
	}
	return func(h PageHash) bool { return held[h] }, s, refs
}

func TestPagedImageStreamRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chunk int
		pct   int // share of the non-zero pages the receiver holds
		tail  int // bytes after the last whole page
	}{
		{"nothing held", 0, 0, 0},
		{"half held", 0, 50, 0},
		{"all held", 0, 100, 0},
		{"half held, a page per chunk", PageSize, 50, 0},
		{"half held, 3 pages per chunk", 3*PageSize + 100, 50, 0},
		{"half held, chunks smaller than a page", 100, 50, 0},
		{"all held, short last page", 3 * PageSize, 100, 1000},
		{"nothing held, short last page", 0, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paged := fxPagedData(500, 300, tc.tail)
			files := []fxImage{
				{name: "core-1.img", data: fxRandom(501, 3000)},
				{name: "pagemap-1.img", data: fxRandom(502, 200)},
				{name: "pages-1.img", data: paged},
				{name: "pages-2.img", data: nil},
				{name: "pages-3.img", data: fxPagedData(503, 2, 0)},
			}
			src := fxImageDir(t, files)
			held, store, refs := fxHeld(t, paged, tc.pct)
			refs += 1 // the zero page of pages-3.img
			wopts := StreamOptions{ChunkSize: tc.chunk, Paged: PagesImage, Held: held,
				Skip: func(name string, _ [32]byte) bool {
					if PagesImage(name) {
						t.Errorf("Skip asked about paged file %s", name)
					}
					return false
				}}
			stream := fxEncode(t, src, wopts)
			dst := filepath.Join(t.TempDir(), "images")
			r := bytes.NewReader(append(stream, "next"...))
			st, err := ReadImages(context.Background(), r, dst, StreamOptions{Pages: store})
			if err != nil {
				t.Fatal(err)
			}
			fxAssertImages(t, dst, files)
			n, size := fxSum(files)
			want := StreamStats{Files: n, Bytes: size - refs*PageSize, RefPages: refs, RefBytes: refs * PageSize}
			if st != want {
				t.Errorf("ReadImages stats %+v, want %+v", st, want)
			}
			wst, err := WriteImages(context.Background(), io.Discard, src, wopts)
			if err != nil || wst != st {
				t.Errorf("WriteImages stats %+v (%v), want %+v", wst, err, st)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "next" {
				t.Errorf("ReadImages read past the trailer: %q left", rest)
			}
			if want := fxStreamLen(files, cmpOr(tc.chunk, DefaultChunkSize), wopts); len(stream) != want {
				t.Errorf("stream is %d bytes, the layout says %d", len(stream), want)
			}
		})
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// fxStreamLen computes the length of the stream of files (sorted by name): a flag per
// page of a paged file, and a hash instead of each page held or zero.
func fxStreamLen(files []fxImage, chunk int, opts StreamOptions) int {
	n := headerLen + trailerLen
	for _, f := range files {
		n += recordLen + len(f.name) + shaLen
		size := len(f.data)
		if !opts.Paged(f.name) {
			n += size + (size+chunk-1)/chunk*crcLen
			continue
		}
		ppc := pagesPerChunk(chunk)
		n += (size + ppc*PageSize - 1) / (ppc * PageSize) * crcLen
		for off := 0; off < size; off += PageSize {
			n++ // the flag
			if p := f.data[off:min(off+PageSize, size)]; len(p) == PageSize && (HashPage(p) == ZeroPageHash || opts.Held(HashPage(p))) {
				n += 16
			} else {
				n += len(p)
			}
		}
	}
	return n
}

func TestPagesImage(t *testing.T) {
	for name, want := range map[string]bool{
		"pages-1.img": true, "pages-12.img": true, "pagemap-1.img": false, "core-1.img": false, "pages-1.img.tmp": false,
	} {
		if got := PagesImage(name); got != want {
			t.Errorf("PagesImage(%q) = %v, want %v", name, got, want)
		}
	}
}

// Paged set and no file paged: the stream is byte for byte the one older senders wrote.
func TestPagedImageStreamOldFormat(t *testing.T) {
	files := []fxImage{{name: "core-1.img", data: fxRandom(510, 5000)}, {name: "mm-1.img", data: fxRandom(511, 9000)}}
	src := fxImageDir(t, files)
	stream := fxEncode(t, src, StreamOptions{ChunkSize: 4096, Paged: PagesImage, Held: func(PageHash) bool { return true }})
	if !bytes.Equal(stream, fxCraft(4096, files)) {
		t.Fatal("a stream without paged files differs from the version 1 format")
	}
}

// fxPagedChunk is where a paged chunk's parts sit in a stream.
type fxPagedChunk struct {
	flags   int   // the first flag
	entries []int // each page's entry
	crc     int
}

// fxPagedLayout finds the chunks and the digest of the paged file whose record starts at
// rec in stream.
func fxPagedLayout(stream []byte, rec int, name string, size, ppc int) ([]fxPagedChunk, int) {
	var chunks []fxPagedChunk
	off := rec + recordLen + len(name)
	for start := 0; start < size; start += ppc * PageSize {
		n := min(ppc*PageSize, size-start)
		np := (n + PageSize - 1) / PageSize
		c := fxPagedChunk{flags: off}
		off += np
		for p := range np {
			c.entries = append(c.entries, off)
			if stream[c.flags+p] == pageRef {
				off += 16
			} else {
				off += min(PageSize, n-p*PageSize)
			}
		}
		c.crc = off
		off += crcLen
		chunks = append(chunks, c)
	}
	return chunks, off
}

func TestPagedImageStreamCorrupt(t *testing.T) {
	// pages-1.img: 10 pages and a short one, 4 pages a chunk. Page 0 is zero, odd pages
	// are held.
	data := fxPagedData(520, 10, 700)
	held := map[PageHash]bool{}
	store := fxOpenStore(t)
	for i := 1; i < 10; i += 2 {
		p := data[i*PageSize : (i+1)*PageSize]
		held[HashPage(p)] = true
		if err := store.Add(HashPage(p), p); err != nil {
			t.Fatal(err)
		}
	}
	files := []fxImage{{name: "pages-1.img", data: data}}
	const chunk = 4 * PageSize
	stream := fxEncode(t, fxImageDir(t, files), StreamOptions{ChunkSize: chunk, Paged: PagesImage,
		Held: func(h PageHash) bool { return held[h] }})
	chunks, digest := fxPagedLayout(stream, headerLen, "pages-1.img", len(data), 4)
	if len(chunks) != 3 || digest+shaLen+trailerLen != len(stream) {
		t.Fatalf("layout: %d chunks, digest at %d, stream of %d bytes", len(chunks), digest, len(stream))
	}
	for p, want := range []byte{1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0} {
		c := chunks[p/4]
		if got := stream[c.flags+p%4]; got != want {
			t.Fatalf("page %d has flag %d, want %d", p, got, want)
		}
	}
	flip := func(off int) func([]byte) {
		return func(s []byte) { s[off] ^= 0x20 }
	}
	// recrc applies edit and fixes the CRC of chunk c, so that only the deeper checks
	// can catch the damage.
	recrc := func(c int, edit func([]byte)) func([]byte) {
		return func(s []byte) {
			edit(s)
			ch := chunks[c]
			binary.BigEndian.PutUint32(s[ch.crc:], crc32c(s[ch.flags:ch.crc]))
		}
	}
	hashOf := func(page int) []byte {
		h := HashPage(data[page*PageSize : (page+1)*PageSize])
		return h[:]
	}
	tests := []struct {
		name string
		edit func([]byte)
		want string
	}{
		{"flag", flip(chunks[0].flags + 2), "chunk 1 of pages-1.img: page 3 has flag 0x20"},
		{"byte in a hash", flip(chunks[1].entries[1] + 5), "chunk 2 of pages-1.img: checksum mismatch"},
		{"byte in a page", flip(chunks[1].entries[2] + 5), "chunk 2 of pages-1.img: checksum mismatch"},
		{"chunk crc", flip(chunks[2].crc), "chunk 3 of pages-1.img: checksum mismatch"},
		{"hash of a page not held", recrc(1, func(s []byte) { copy(s[chunks[1].entries[1]:], hashOf(4)) }),
			"pages-1.img: page 6 (offset 20480) was sent as hash " + HashPage(data[4*PageSize:5*PageSize]).String()},
		{"hash of another held page", recrc(1, func(s []byte) { copy(s[chunks[1].entries[1]:], hashOf(3)) }),
			"pages-1.img: digest mismatch"},
		{"byte in a page, crc fixed", recrc(1, flip(chunks[1].entries[2]+5)), "pages-1.img: digest mismatch"},
		{"short page, crc fixed", recrc(2, flip(chunks[2].entries[2]+5)), "pages-1.img: digest mismatch"},
		{"digest", flip(digest + 31), "pages-1.img: digest mismatch"},
		{"short page sent as a hash", recrc(2, func(s []byte) { s[chunks[2].flags+2] = pageRef }),
			"chunk 3 of pages-1.img: page 3 has flag 0x1"},
		{"record kind", func(s []byte) { s[headerLen] = 'Q' }, "unknown record kind 0x51"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(stream)
			tc.edit(bad)
			dst := t.TempDir()
			_, err := ReadImages(context.Background(), bytes.NewReader(bad), dst, StreamOptions{Pages: store})
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			fxAssertEmpty(t, dst)
		})
	}

	t.Run("intact", func(t *testing.T) {
		dst := t.TempDir()
		if _, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{Pages: store}); err != nil {
			t.Fatal(err)
		}
		fxAssertImages(t, dst, files)
	})

	t.Run("missing page", func(t *testing.T) {
		// The receiver lost page 7: refused, naming the file and the page.
		partial := fxOpenStore(t)
		for i := 1; i < 10; i += 2 {
			if i != 7 {
				p := data[i*PageSize : (i+1)*PageSize]
				if err := partial.Add(HashPage(p), p); err != nil {
					t.Fatal(err)
				}
			}
		}
		dst := t.TempDir()
		_, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{Pages: partial})
		want := fmt.Sprintf("pages-1.img: page 8 (offset %d) was sent as hash %s, and no such page is held here",
			7*PageSize, HashPage(data[7*PageSize:8*PageSize]))
		if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, want)
		}
		fxAssertEmpty(t, dst)
	})

	t.Run("no store", func(t *testing.T) {
		dst := t.TempDir()
		_, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{})
		if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), "page 2 (offset 4096)") {
			t.Fatalf("got %v, want page 2 refused", err)
		}
		fxAssertEmpty(t, dst)
	})

	t.Run("truncated", func(t *testing.T) {
		var cuts []int
		for _, c := range chunks {
			for _, at := range append([]int{c.flags, c.crc}, c.entries...) {
				cuts = append(cuts, at-1, at, at+1)
			}
		}
		cuts = append(cuts, headerLen+3, digest, digest+shaLen-1, len(stream)-1)
		for _, cut := range cuts {
			dst := t.TempDir()
			_, err := ReadImages(context.Background(), bytes.NewReader(stream[:cut]), dst, StreamOptions{Pages: store})
			if !errors.Is(err, ErrCorruptStream) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("cut at %d of %d: %v, want a truncated ErrCorruptStream", cut, len(stream), err)
			}
			fxAssertEmpty(t, dst)
		}
	})

	t.Run("max bytes", func(t *testing.T) {
		dst := t.TempDir()
		_, err := ReadImages(context.Background(), bytes.NewReader(stream), dst,
			StreamOptions{Pages: store, MaxBytes: int64(len(data) - 1)})
		if err == nil || !strings.Contains(err.Error(), "would exceed its limit") {
			t.Fatalf("got %v, want the limit enforced on the paged file's size", err)
		}
		fxAssertEmpty(t, dst)
	})
}

func TestPagedImageStreamPipe(t *testing.T) {
	data := fxPagedData(540, 1000, 0)
	files := []fxImage{{name: "core-1.img", data: fxRandom(541, 700)}, {name: "pages-1.img", data: data}}
	src := fxImageDir(t, files)
	held, store, refs := fxHeld(t, data, 50)
	wopts := StreamOptions{Paged: PagesImage, Held: held}

	t.Run("ok", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "images")
		wst, rst, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, wopts, StreamOptions{Pages: store}, nil)
		if werr != nil || rerr != nil {
			t.Fatalf("writer: %v; reader: %v", werr, rerr)
		}
		fxAssertImages(t, dst, files)
		if wst != rst || rst.RefPages != refs {
			t.Fatalf("stats: writer %+v, reader %+v; want %d pages as hashes", wst, rst, refs)
		}
	})
	t.Run("sender cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wrap := func(w io.Writer) io.Writer { return &fxCancelWriter{w: w, after: 1 << 20, cancel: cancel} }
		dst := filepath.Join(t.TempDir(), "images")
		_, _, werr, rerr := fxPipe(ctx, context.Background(), src, dst, wopts, StreamOptions{Pages: store}, wrap)
		if !errors.Is(werr, context.Canceled) || !errors.Is(rerr, context.Canceled) {
			t.Fatalf("writer: %v; reader: %v; want both context.Canceled", werr, rerr)
		}
		fxAssertEmpty(t, dst)
	})
	t.Run("receiver lacks pages", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "images")
		_, _, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, wopts, StreamOptions{}, nil)
		if !errors.Is(rerr, ErrCorruptStream) || !strings.Contains(rerr.Error(), "no such page is held here") {
			t.Fatalf("reader: %v, want the missing page refused", rerr)
		}
		if werr == nil || !strings.Contains(werr.Error(), "receiver gone") {
			t.Fatalf("writer: %v, want it stopped by the receiver", werr)
		}
		fxAssertEmpty(t, dst)
	})
}

// fxFastDir returns a new directory on tmpfs (/dev/shm) when there is one, as the
// daemon's images are, else in the test's temporary directory.
func fxFastDir(tb testing.TB) string {
	tb.Helper()
	if dir, err := os.MkdirTemp("/dev/shm", "migshm-bench-"); err == nil {
		tb.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return tb.TempDir()
}

// fxCPUTime is the CPU time this process has used (user and system): on a machine
// shared with others it is a steadier measure than the time that passed.
func fxCPUTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPagedImageStream sends a 512 MiB pages file (distinct random pages) with the
// image stream on tmpfs, with 0%, 95% and 100% of its pages held by the receiver's
// PageStore, against the plain stream and a raw io.Copy of the same file:
//
//	pipe/...     WriteImages -> io.Pipe -> ReadImages, both sides in this process
//	send/...     WriteImages into io.Discard: the source's share
//	receive/...  ReadImages from the stream in memory: the target's share
//
// Each result reports its time as a multiple of pipe/copy's ("x-copy") and the CPU time
// it took ("cpu-s/op"; this machine's vCPUs see much steal, CPU time is the steadier
// figure). Run with -benchtime=3x, and -cpu=1,2 to see what hashing on both cores does.
func BenchmarkPagedImageStream(b *testing.B) {
	const size = 512 << 20
	dir := fxFastDir(b)
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o700); err != nil {
		b.Fatal(err)
	}
	data := fxRandom(530, size)
	if err := os.WriteFile(filepath.Join(src, "pages-1.img"), data, 0o600); err != nil {
		b.Fatal(err)
	}
	store, err := OpenPageStore(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	sums := make([]PageHash, size/PageSize)
	hashPages(data, sums)
	for i, h := range sums {
		if err := store.Add(h, data[i*PageSize:(i+1)*PageSize]); err != nil {
			b.Fatal(err)
		}
	}
	data = nil
	type variant struct {
		name         string
		wopts, ropts StreamOptions
	}
	variants := []variant{{name: "plain"}}
	for _, pct := range []int{0, 95, 100} {
		set := make(map[PageHash]bool, len(sums))
		for i, h := range sums {
			if i%100 < pct {
				set[h] = true
			}
		}
		variants = append(variants, variant{name: fmt.Sprintf("paged-held-%d%%", pct),
			wopts: StreamOptions{Paged: PagesImage, Held: func(h PageHash) bool { return set[h] }},
			ropts: StreamOptions{Pages: store}})
	}

	var copyNS float64
	run := func(b *testing.B, baseline bool, transfer func(dst string) error) {
		b.SetBytes(size)
		var cpu time.Duration
		for range b.N {
			dst := filepath.Join(dir, "dst")
			c0 := fxCPUTime(b)
			if err := transfer(dst); err != nil {
				b.Fatal(err)
			}
			cpu += fxCPUTime(b) - c0
			b.StopTimer()
			if err := os.RemoveAll(dst); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if baseline {
			copyNS = ns
		}
		if copyNS > 0 {
			b.ReportMetric(ns/copyNS, "x-copy")
		}
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	}
	b.Run("pipe/copy", func(b *testing.B) {
		run(b, true, func(dst string) error {
			if err := os.Mkdir(dst, 0o700); err != nil {
				return err
			}
			pr, pw := io.Pipe()
			errc := make(chan error, 1)
			go func() {
				in, err := os.Open(filepath.Join(src, "pages-1.img"))
				if err == nil {
					_, err = io.Copy(pw, in)
					in.Close()
				}
				pw.CloseWithError(err)
				errc <- err
			}()
			out, err := os.OpenFile(filepath.Join(dst, "pages-1.img"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err == nil {
				_, err = io.Copy(out, pr)
				err = errors.Join(err, out.Close())
			}
			pr.CloseWithError(errors.New("receiver gone"))
			return errors.Join(err, <-errc)
		})
	})
	for _, v := range variants {
		b.Run("pipe/"+v.name, func(b *testing.B) {
			run(b, false, func(dst string) error {
				_, _, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, v.wopts, v.ropts, nil)
				return errors.Join(werr, rerr)
			})
		})
	}
	for _, v := range variants {
		b.Run("send/"+v.name, func(b *testing.B) {
			run(b, false, func(string) error {
				_, err := WriteImages(context.Background(), io.Discard, src, v.wopts)
				return err
			})
		})
	}
	for _, v := range variants {
		var buf bytes.Buffer
		if _, err := WriteImages(context.Background(), &buf, src, v.wopts); err != nil {
			b.Fatal(err)
		}
		b.Run("receive/"+v.name, func(b *testing.B) {
			run(b, false, func(dst string) error {
				_, err := ReadImages(context.Background(), bytes.NewReader(buf.Bytes()), dst, v.ropts)
				return err
			})
		})
	}
}
