package migrate

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"hash/crc32"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fxImage is a file of a fixture images directory.
type fxImage struct {
	name string
	data []byte
	mode fs.FileMode
}

// fxRandom returns n reproducible random bytes.
func fxRandom(seed uint64, n int) []byte {
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

// fxImageDir writes files into a new directory with exactly their modes (0600 if unset).
func fxImageDir(t testing.TB, files []fxImage) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		mode := cmp.Or(f.mode, 0o600)
		path := filepath.Join(dir, f.name)
		if err := os.WriteFile(path, f.data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// fxEncode returns the image stream of dir.
func fxEncode(t testing.TB, dir string, opts StreamOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteImages(context.Background(), &buf, dir, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fxCraft builds a stream by hand, without WriteImages' checks on names (or anything):
// files in the given order, with correct checksums and trailer.
func fxCraft(chunk int, files []fxImage) []byte {
	b := appendStreamHeader(nil, uint32(chunk))
	dig := newStreamDigest()
	var total uint64
	for _, f := range files {
		mode := cmp.Or(f.mode, 0o600)
		b = appendRecord(b, kindFile, f.name, uint32(mode), uint64(len(f.data)), nil)
		for data := f.data; len(data) > 0; {
			c := data[:min(chunk, len(data))]
			b = append(b, c...)
			b = append(b, fxCRC(c)...)
			data = data[len(c):]
		}
		sum := sha256.Sum256(f.data)
		b = append(b, sum[:]...)
		dig.add(f.name, uint64(len(f.data)), sum)
		total += uint64(len(f.data))
	}
	return appendTrailer(b, uint64(len(files)), total, dig.sum())
}

func fxCRC(data []byte) []byte {
	c := crc32.Checksum(data, castagnoli)
	return []byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)}
}

// fxFileLayout is where a file's parts sit in a stream.
type fxFileLayout struct {
	record int   // the record's kind byte
	chunks []int // the first data byte of each chunk
	sha    int   // the file's sha256
	end    int   // the first byte after the file
}

// fxLayout computes where every file (in stream order) sits in its stream, and where
// the trailer starts.
func fxLayout(chunk int, files []fxImage) (map[string]fxFileLayout, int) {
	m := map[string]fxFileLayout{}
	off := headerLen
	for _, f := range files {
		l := fxFileLayout{record: off}
		off += recordLen + len(f.name)
		for n := len(f.data); n > 0; n -= min(chunk, n) {
			l.chunks = append(l.chunks, off)
			off += min(chunk, n) + crcLen
		}
		l.sha = off
		off += shaLen
		l.end = off
		m[f.name] = l
	}
	return m, off
}

func fxNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func fxAssertEmpty(t testing.TB, dir string) {
	t.Helper()
	if names := fxNames(t, dir); len(names) > 0 {
		t.Fatalf("%s should be empty after a failed transfer, holds %q", dir, names)
	}
}

// fxAssertImages checks that dir holds exactly files, each with mode 0600.
func fxAssertImages(t testing.TB, dir string, files []fxImage) {
	t.Helper()
	var want []string
	for _, f := range files {
		want = append(want, f.name)
	}
	slices.Sort(want)
	if got := fxNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("%s holds %q, want %q", dir, got, want)
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f.data) {
			t.Errorf("%s: %d bytes differ from the %d sent", f.name, len(got), len(f.data))
		}
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != 0o600 {
			t.Errorf("%s has mode %v, want -rw-------", f.name, st.Mode())
		}
	}
}

func fxSum(files []fxImage) (n int, bytes int64) {
	for _, f := range files {
		n++
		bytes += int64(len(f.data))
	}
	return n, bytes
}

// fxCountingReader counts what was read through it.
type fxCountingReader struct {
	r io.Reader
	n int
}

func (c *fxCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// fxCancelReader cancels its context once more than after bytes have been read.
type fxCancelReader struct {
	r      io.Reader
	after  int
	n      int
	cancel context.CancelFunc
}

func (c *fxCancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n += n; c.n > c.after {
		c.cancel()
	}
	return n, err
}

// fxCancelWriter cancels its context once more than after bytes have been written.
type fxCancelWriter struct {
	w      io.Writer
	after  int
	n      int
	cancel context.CancelFunc
}

func (c *fxCancelWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if c.n += n; c.n > c.after {
		c.cancel()
	}
	return n, err
}

func TestImageStreamRoundTrip(t *testing.T) {
	big := fxRandom(1, 3<<20+5)
	for _, tc := range []struct {
		name  string
		chunk int // 0: default
	}{
		{"default chunks", 0},
		{"4 KiB chunks", 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := tc.chunk
			if cs == 0 {
				cs = DefaultChunkSize
			}
			files := []fxImage{
				{name: "empty", data: nil, mode: 0o644},
				{name: "small", data: []byte("inventory"), mode: 0o600},
				{name: "exact", data: fxRandom(2, cs), mode: 0o640},
				{name: "multi", data: fxRandom(3, 3*cs+17), mode: 0o444},
				{name: "pages-1.img", data: big, mode: 0o755},
			}
			src := fxImageDir(t, files)
			stream := fxEncode(t, src, StreamOptions{ChunkSize: tc.chunk})
			sorted := slices.Clone(files)
			slices.SortFunc(sorted, func(a, b fxImage) int { return strings.Compare(a.name, b.name) })
			if _, end := fxLayout(cs, sorted); len(stream) != end+trailerLen {
				t.Fatalf("stream is %d bytes, layout says %d", len(stream), end+trailerLen)
			}
			if crafted := fxCraft(cs, sorted); !bytes.Equal(crafted, stream) {
				t.Fatal("WriteImages and the hand-crafted stream differ")
			}

			dst := filepath.Join(t.TempDir(), "images")
			// Whatever follows the trailer is not ReadImages' to read.
			r := bytes.NewReader(append(slices.Clip(stream), "next"...))
			st, err := ReadImages(context.Background(), r, dst, StreamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			fxAssertImages(t, dst, files)
			if info, err := os.Stat(dst); err != nil || info.Mode().Perm() != 0o700 {
				t.Errorf("created images dir: %v, %v; want mode 0700", info.Mode(), err)
			}
			n, size := fxSum(files)
			if want := (StreamStats{Files: n, Bytes: size}); st != want {
				t.Errorf("ReadImages stats %+v, want %+v", st, want)
			}
			wst, err := WriteImages(context.Background(), io.Discard, src, StreamOptions{ChunkSize: tc.chunk})
			if err != nil || wst != st {
				t.Errorf("WriteImages stats %+v (%v), want %+v", wst, err, st)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "next" {
				t.Errorf("ReadImages read past the trailer: %q left", rest)
			}
		})
	}
}

// fxCorruptFiles is the fixture of the corruption tests: b has 3.5 chunks of 4 KiB.
func fxCorruptFiles() (int, []fxImage) {
	const chunk = 4096
	return chunk, []fxImage{
		{name: "a", data: fxRandom(10, 10)},
		{name: "b", data: fxRandom(11, 3*chunk+chunk/2)},
		{name: "c", data: fxRandom(12, 100)},
	}
}

func TestImageStreamCorrupt(t *testing.T) {
	chunk, files := fxCorruptFiles()
	stream := fxEncode(t, fxImageDir(t, files), StreamOptions{ChunkSize: chunk})
	L, trailer := fxLayout(chunk, files)
	flip := func(off int) func([]byte) []byte {
		return func(s []byte) []byte { s[off] ^= 0x20; return s }
	}
	part := func(s []byte, name string) []byte { return s[L[name].record:L[name].end] }
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		want   string
		// maxRead, if set, bounds how much of the stream may be read before the damage is
		// found.
		maxRead int
	}{
		{"payload of 2nd chunk", flip(L["b"].chunks[1] + 100), "chunk 2 of b: checksum mismatch: corrupt stream",
			L["b"].chunks[1] + chunk + crcLen},
		{"crc of 1st chunk", flip(L["b"].chunks[0] + chunk + 1), "chunk 1 of b: checksum mismatch: corrupt stream",
			L["b"].chunks[0] + chunk + crcLen},
		{"payload of last chunk", flip(L["b"].sha - crcLen - 1), "chunk 4 of b: checksum mismatch", L["b"].sha},
		{"file sha256", flip(L["b"].sha + 7), "b: sha256 mismatch", 0},
		{"chunks swapped", func(s []byte) []byte {
			c1, c2 := L["b"].chunks[0], L["b"].chunks[1]
			one := slices.Clone(s[c1:c2])
			copy(s[c1:], s[c2:c2+len(one)])
			copy(s[c2:], one)
			return s
		}, "b: sha256 mismatch", 0},
		{"size in record", flip(L["c"].record + 1 + 2 + len("c") + 4 + 7), "record after 2 files: checksum mismatch", 0},
		{"name in record", flip(L["c"].record + 3), "record after 2 files: checksum mismatch", 0},
		{"record kind", func(s []byte) []byte { s[L["c"].record] = 'X'; return s }, "unknown record kind 0x58", 0},
		{"chunk size in header", flip(len(streamMagic) + 3), "header: checksum mismatch", 0},
		{"trailer digest", flip(trailer + 20), "trailer: checksum mismatch", 0},
		{"file dropped", func(s []byte) []byte {
			return slices.Concat(s[:L["b"].record], s[L["b"].end:])
		}, "trailer mismatch: received 2 files", 0},
		{"files reordered", func(s []byte) []byte {
			return slices.Concat(s[:headerLen], part(s, "c"), part(s, "b"), part(s, "a"), s[trailer:])
		}, "trailer mismatch: files dropped, reordered or renamed", 0},
		{"stream doubled", func(s []byte) []byte {
			return slices.Concat(s[:trailer], s[headerLen:])
		}, "a comes twice", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "images")
			cr := &fxCountingReader{r: bytes.NewReader(tc.mutate(slices.Clone(stream)))}
			_, err := ReadImages(context.Background(), cr, dst, StreamOptions{})
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			if tc.maxRead > 0 && cr.n > tc.maxRead {
				t.Errorf("read %d bytes before refusing the stream, the damage ends at %d", cr.n, tc.maxRead)
			}
			fxAssertEmpty(t, dst)
		})
	}
}

func TestImageStreamTruncated(t *testing.T) {
	const chunk = 1024
	files := []fxImage{
		{name: "a", data: nil},
		{name: "b", data: fxRandom(20, 2*chunk+chunk/2)},
		{name: "c", data: []byte("tail")},
	}
	stream := fxEncode(t, fxImageDir(t, files), StreamOptions{ChunkSize: chunk})
	L, trailer := fxLayout(chunk, files)
	// Every byte of the header and the first record, every boundary and its neighbours,
	// and a sample of the rest.
	cuts := map[int]bool{}
	for i := range headerLen + recordLen + 8 {
		cuts[i] = true
	}
	edges := []int{trailer, trailer + 1, trailer + 9, trailer + 17, len(stream) - crcLen}
	for _, l := range L {
		edges = append(edges, l.record, l.record+3, l.record+recordLen, l.sha, l.end)
		for _, c := range l.chunks {
			edges = append(edges, c, c+chunk)
		}
	}
	for _, e := range edges {
		for _, d := range []int{-1, 0, 1} {
			if c := e + d; c >= 0 && c < len(stream) {
				cuts[c] = true
			}
		}
	}
	for c := 0; c < len(stream); c += 17 {
		cuts[c] = true
	}
	cuts[len(stream)-1] = true

	// One target for all cuts: each failed transfer must leave it empty for the next.
	dst := filepath.Join(t.TempDir(), "images")
	for _, cut := range slices.Sorted(maps.Keys(cuts)) {
		_, err := ReadImages(context.Background(), bytes.NewReader(stream[:cut]), dst, StreamOptions{})
		switch {
		case !errors.Is(err, ErrCorruptStream):
			t.Fatalf("cut at %d of %d: got %v, want ErrCorruptStream", cut, len(stream), err)
		case cut > 0 && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Fatalf("cut at %d of %d: got %v, want io.ErrUnexpectedEOF", cut, len(stream), err)
		}
		fxAssertEmpty(t, dst)
	}
	t.Logf("%d cut points in a stream of %d bytes", len(cuts), len(stream))
	if _, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{}); err != nil {
		t.Fatalf("the whole stream: %v", err)
	}
	fxAssertImages(t, dst, files)
}

func TestImageStreamForeign(t *testing.T) {
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	body := []byte("core dump")
	if err := tw.WriteHeader(&tar.Header{Name: "core-1.img", Mode: 0o600, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		input []byte
		want  string
	}{
		{"tar file", tarball.Bytes(), "not a migshm image stream"},
		{"random bytes", fxRandom(30, 4096), "not a migshm image stream"},
		{"empty input", nil, "not a migshm image stream (it is empty)"},
		{"near miss", []byte("MIGSHM-IMAGEZ\x00\x01\x00\x10\x00\x00"), "not a migshm image stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			_, err := ReadImages(context.Background(), bytes.NewReader(tc.input), dst, StreamOptions{})
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			fxAssertEmpty(t, dst)
		})
	}
	t.Run("newer version", func(t *testing.T) {
		s := fxCraft(DefaultChunkSize, []fxImage{{name: "a", data: []byte("x")}})
		s[len(streamMagic)+1] = 2
		dst := t.TempDir()
		_, err := ReadImages(context.Background(), bytes.NewReader(s), dst, StreamOptions{})
		if err == nil || !strings.Contains(err.Error(), "image stream version 2 is not supported") {
			t.Fatalf("got %v, want version 2 refused", err)
		}
		fxAssertEmpty(t, dst)
	})
}

func TestImageStreamRefusedNames(t *testing.T) {
	ok := fxImage{name: "a", data: []byte("fine")}
	tests := []struct {
		name  string
		files []fxImage
		want  string
	}{
		{"parent", []fxImage{ok, {name: "../x", data: []byte("escape")}}, `invalid file name "../x"`},
		{"dot dot", []fxImage{ok, {name: "..", data: []byte("escape")}}, `invalid file name ".."`},
		{"dot", []fxImage{ok, {name: ".", data: nil}}, `invalid file name "."`},
		{"subdir", []fxImage{ok, {name: "a/b", data: []byte("deep")}}, `invalid file name "a/b"`},
		{"absolute", []fxImage{ok, {name: "/x", data: []byte("root")}}, `invalid file name "/x"`},
		{"nul", []fxImage{ok, {name: "x\x00y", data: []byte("c")}}, `invalid file name "x\x00y"`},
		{"empty", []fxImage{ok, {name: "", data: []byte("c")}}, "empty file name"},
		{"long", []fxImage{ok, {name: strings.Repeat("n", 256), data: nil}}, "name of 256 bytes"},
		{"duplicate", []fxImage{ok, {name: "b"}, ok}, "a comes twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "images")
			s := fxCraft(1024, tc.files)
			_, err := ReadImages(context.Background(), bytes.NewReader(s), dst, StreamOptions{})
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			fxAssertEmpty(t, dst)
			if got := fxNames(t, parent); !slices.Equal(got, []string{"images"}) {
				t.Errorf("the stream wrote next to the images dir: %q", got)
			}
		})
	}
}

func TestImageStreamExistingFile(t *testing.T) {
	chunk, files := fxCorruptFiles()
	stream := fxEncode(t, fxImageDir(t, files), StreamOptions{ChunkSize: chunk})
	dst := fxImageDir(t, []fxImage{{name: "b", data: []byte("mine")}})
	_, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dst, "b")+" already exists") {
		t.Fatalf("got %v, want b refused as already there", err)
	}
	if errors.Is(err, ErrCorruptStream) {
		t.Errorf("%v: the stream is fine, the target is not empty", err)
	}
	if got := fxNames(t, dst); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("target holds %q, want only its own b", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "b")); string(got) != "mine" {
		t.Fatalf("the target's own b was changed to %d bytes", len(got))
	}
}

func TestImageStreamMaxBytes(t *testing.T) {
	chunk, files := fxCorruptFiles()
	stream := fxEncode(t, fxImageDir(t, files), StreamOptions{ChunkSize: chunk})
	huge := slices.Concat(appendStreamHeader(nil, 4096), appendRecord(nil, kindFile, "big", 0o600, 1<<62, nil))
	tests := []struct {
		name   string
		stream []byte
		max    int64
		want   string
	}{
		{"total over the limit", stream, 5000, "b of 14336 bytes: the stream would exceed its limit of 5000 bytes"},
		{"exactly the limit", stream, 10 + 14336 + 100, ""},
		{"one file claims 4 EiB", huge, 0, "big of 4611686018427387904 bytes: the stream would exceed its limit of 68719476736 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			_, err := ReadImages(context.Background(), bytes.NewReader(tc.stream), dst, StreamOptions{MaxBytes: tc.max})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				fxAssertImages(t, dst, files)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			fxAssertEmpty(t, dst)
		})
	}
}

func TestImageStreamSkipHave(t *testing.T) {
	const chunk = 4096
	pages := fxRandom(40, 3*chunk+99)
	files := []fxImage{
		{name: "core-1.img", data: []byte("core")},
		{name: "inventory.img", data: fxRandom(41, 300)},
		{name: "pages-1.img", data: pages},
	}
	src := fxImageDir(t, files)
	pagesSum := sha256.Sum256(pages)
	skip := func(name string, sum [32]byte) bool { return sum == pagesSum }
	opts := StreamOptions{ChunkSize: chunk, Skip: skip}
	var buf bytes.Buffer
	wst, err := WriteImages(context.Background(), &buf, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	stream := buf.Bytes()
	want := StreamStats{Files: 2, Bytes: 304, Skipped: 1, SkippedBytes: int64(len(pages))}
	if wst != want {
		t.Errorf("WriteImages stats %+v, want %+v", wst, want)
	}
	if len(stream) > 1024 || bytes.Contains(stream, pages[:64]) {
		t.Fatalf("the skipped file was sent: the stream is %d bytes", len(stream))
	}

	cache := func(data []byte) string {
		return filepath.Join(fxImageDir(t, []fxImage{{name: "cached", data: data}}), "cached")
	}
	at := func(path string) func(string, [32]byte) (string, bool) {
		return func(name string, sum [32]byte) (string, bool) {
			return path, name == "pages-1.img" && sum == pagesSum
		}
	}
	wrong := slices.Clone(pages)
	wrong[chunk+5] ^= 1
	tests := []struct {
		name string
		have func(string, [32]byte) (string, bool)
		want string
	}{
		{"taken from the cache", at(cache(pages)), ""},
		{"cache with wrong content", at(cache(wrong)), "local copy"},
		{"cache too short", at(cache(pages[:len(pages)-1])), "local copy"},
		{"cache too long", at(cache(append(slices.Clone(pages), 0))), "longer than"},
		{"cache gone", at(filepath.Join(t.TempDir(), "gone")), "local copy of pages-1.img"},
		{"not in the cache", func(string, [32]byte) (string, bool) { return "", false }, "it is not here"},
		{"no Have", nil, "no local copy to take it from"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "images")
			st, err := ReadImages(context.Background(), bytes.NewReader(stream), dst, StreamOptions{Have: tc.have})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				fxAssertImages(t, dst, files)
				if st != want {
					t.Errorf("ReadImages stats %+v, want %+v", st, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			fxAssertEmpty(t, dst)
		})
	}
}

func TestImageStreamCancel(t *testing.T) {
	chunk, files := fxCorruptFiles()
	src := fxImageDir(t, files)
	stream := fxEncode(t, src, StreamOptions{ChunkSize: chunk})
	L, _ := fxLayout(chunk, files)

	t.Run("reader", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		dst := filepath.Join(t.TempDir(), "images")
		r := &fxCancelReader{r: bytes.NewReader(stream), after: L["b"].chunks[1], cancel: cancel}
		_, err := ReadImages(ctx, r, dst, StreamOptions{})
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrCorruptStream) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if r.n >= len(stream) {
			t.Errorf("read the whole stream despite the cancel")
		}
		fxAssertEmpty(t, dst)
	})
	t.Run("writer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var buf bytes.Buffer
		w := &fxCancelWriter{w: &buf, after: L["b"].chunks[1], cancel: cancel}
		_, err := WriteImages(ctx, w, src, StreamOptions{ChunkSize: chunk})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if buf.Len() > L["b"].chunks[2] {
			t.Errorf("wrote %d bytes, more than a chunk after the cancel", buf.Len())
		}
	})
}

func TestImageStreamRefusedSource(t *testing.T) {
	tests := []struct {
		name string
		make func(dir string) error
		want string
	}{
		{"symlink", func(dir string) error { return os.Symlink("a", filepath.Join(dir, "parent")) }, "parent is a symlink"},
		{"subdirectory", func(dir string) error { return os.Mkdir(filepath.Join(dir, "sub"), 0o700) }, "sub is a directory"},
		{"fifo", func(dir string) error { return unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600) }, "fifo is not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := fxImageDir(t, []fxImage{{name: "a", data: []byte("x")}, {name: "z", data: []byte("y")}})
			if err := tc.make(src); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, err := WriteImages(context.Background(), &buf, src, StreamOptions{})
			if err == nil || !strings.Contains(err.Error(), filepath.Join(src, tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if buf.Len() > 0 {
				t.Errorf("wrote %d bytes of a stream that was refused", buf.Len())
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := WriteImages(context.Background(), io.Discard, filepath.Join(t.TempDir(), "none"), StreamOptions{})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("chunk size", func(t *testing.T) {
		_, err := WriteImages(context.Background(), io.Discard, t.TempDir(), StreamOptions{ChunkSize: MaxChunkSize + 1})
		if err == nil || !strings.Contains(err.Error(), "chunk size") {
			t.Fatalf("got %v, want the chunk size refused", err)
		}
	})
}

// fxPipe streams src into dst through an io.Pipe, writer and reader in their own
// goroutines, as the peer API will.
func fxPipe(wctx, rctx context.Context, src, dst string, wopts, ropts StreamOptions, wrap func(io.Writer) io.Writer) (wst, rst StreamStats, werr, rerr error) {
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		var w io.Writer = pw
		if wrap != nil {
			w = wrap(pw)
		}
		wst, werr = WriteImages(wctx, w, src, wopts)
		pw.CloseWithError(werr)
	}()
	go func() {
		defer wg.Done()
		rst, rerr = ReadImages(rctx, pr, dst, ropts)
		// Unblock the writer if the reader gave up.
		pr.CloseWithError(errors.New("receiver gone"))
	}()
	wg.Wait()
	return
}

func TestImageStreamPipe(t *testing.T) {
	files := []fxImage{
		{name: "core-1.img", data: fxRandom(50, 700)},
		{name: "mm-1.img", data: nil},
		{name: "pages-1.img", data: fxRandom(51, 2<<20+3)},
		{name: "pages-2.img", data: fxRandom(52, 1<<20)},
	}
	src := fxImageDir(t, files)
	n, size := fxSum(files)

	t.Run("ok", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "images")
		wst, rst, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, StreamOptions{}, StreamOptions{}, nil)
		if werr != nil || rerr != nil {
			t.Fatalf("writer: %v; reader: %v", werr, rerr)
		}
		fxAssertImages(t, dst, files)
		want := StreamStats{Files: n, Bytes: size}
		if wst != want || rst != want {
			t.Errorf("stats: writer %+v, reader %+v, want %+v", wst, rst, want)
		}
	})
	t.Run("receiver refuses", func(t *testing.T) {
		dst := fxImageDir(t, []fxImage{{name: "pages-1.img", data: []byte("mine")}})
		_, _, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, StreamOptions{}, StreamOptions{}, nil)
		if rerr == nil || !strings.Contains(rerr.Error(), "already exists") {
			t.Fatalf("reader: %v, want pages-1.img refused", rerr)
		}
		if werr == nil || !strings.Contains(werr.Error(), "receiver gone") {
			t.Fatalf("writer: %v, want it stopped by the receiver", werr)
		}
		if got := fxNames(t, dst); !slices.Equal(got, []string{"pages-1.img"}) {
			t.Fatalf("target holds %q", got)
		}
	})
	t.Run("sender cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wrap := func(w io.Writer) io.Writer { return &fxCancelWriter{w: w, after: 1 << 20, cancel: cancel} }
		dst := filepath.Join(t.TempDir(), "images")
		// The reader's own context is not cancelled: it learns of the writer's error
		// from the pipe.
		_, _, werr, rerr := fxPipe(ctx, context.Background(), src, dst, StreamOptions{}, StreamOptions{}, wrap)
		if !errors.Is(werr, context.Canceled) {
			t.Fatalf("writer: %v, want context.Canceled", werr)
		}
		if !errors.Is(rerr, context.Canceled) {
			t.Fatalf("reader: %v, want the writer's context.Canceled", rerr)
		}
		fxAssertEmpty(t, dst)
	})
}

// BenchmarkImageStream streams a 64 MiB images dir through an io.Pipe into files, with
// the image stream and, as the baseline, with plain io.Copy.
func BenchmarkImageStream(b *testing.B) {
	files := []fxImage{
		{name: "core-1.img", data: fxRandom(60, 256<<10)},
		{name: "mm-1.img", data: fxRandom(61, 256<<10)},
		{name: "pagemap-1.img", data: fxRandom(62, 512<<10)},
		{name: "pages-1.img", data: fxRandom(63, 40<<20)},
		{name: "pages-2.img", data: fxRandom(64, 16<<20)},
		{name: "pages-3.img", data: fxRandom(65, 7<<20)},
	}
	src := fxImageDir(b, files)
	_, total := fxSum(files)
	if total != 64<<20 {
		b.Fatalf("fixture is %d bytes", total)
	}
	work := b.TempDir()

	run := func(b *testing.B, transfer func(dst string) error) {
		b.SetBytes(total)
		for i := range b.N {
			dst := filepath.Join(work, "dst")
			if err := os.Mkdir(dst, 0o700); err != nil {
				b.Fatal(err)
			}
			if err := transfer(dst); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if i == 0 {
				fxAssertImages(b, dst, files)
			}
			if err := os.RemoveAll(dst); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("stream", func(b *testing.B) {
		run(b, func(dst string) error {
			_, _, werr, rerr := fxPipe(context.Background(), context.Background(), src, dst, StreamOptions{}, StreamOptions{}, nil)
			return errors.Join(werr, rerr)
		})
	})
	b.Run("baseline", func(b *testing.B) {
		run(b, func(dst string) error {
			pr, pw := io.Pipe()
			errc := make(chan error, 1)
			go func() {
				var err error
				for _, f := range files {
					var in *os.File
					if in, err = os.Open(filepath.Join(src, f.name)); err != nil {
						break
					}
					_, err = io.Copy(pw, in)
					in.Close()
					if err != nil {
						break
					}
				}
				pw.CloseWithError(err)
				errc <- err
			}()
			var err error
			for _, f := range files {
				var out *os.File
				if out, err = os.OpenFile(filepath.Join(dst, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					break
				}
				_, err = io.CopyN(out, pr, int64(len(f.data)))
				if cerr := out.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					break
				}
			}
			pr.CloseWithError(errors.New("receiver gone"))
			return errors.Join(err, <-errc)
		})
	})
}
