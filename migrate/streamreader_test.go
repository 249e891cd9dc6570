package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/wait"
)

// fxStreamFiles is an images directory of about 6 MiB: many chunks, so a writer is
// still writing when a test stops reading.
func fxStreamFiles(t *testing.T) (string, []fxImage) {
	t.Helper()
	files := []fxImage{
		{name: "core-1.img", data: fxRandom(600, 5000)},
		{name: "pages-1.img", data: fxPagedData(601, 1500, 0)},
		{name: "pstree.img", data: fxRandom(602, 100)},
	}
	return fxImageDir(t, files), files
}

// waitGoroutines waits until no more goroutines run than before (the writer is gone).
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	wait.For(t, 5*time.Second, "the writer's goroutine to end", func() (bool, string) {
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			return false, fmt.Sprintf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return true, ""
	})
}

// TestImageReader: read to its end, the reader gives what WriteImages writes, counts
// it, and gives WriteImages' result.
func TestImageReader(t *testing.T) {
	src, files := fxStreamFiles(t)
	opts := StreamOptions{ChunkSize: 64 << 10, Paged: PagesImage}
	want := fxEncode(t, src, opts)
	wantSt, err := WriteImages(context.Background(), io.Discard, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := NewImageReader(context.Background(), src, opts)
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the reader gave %d bytes that differ from WriteImages' %d", len(got), len(want))
	}
	if r.Bytes() != int64(len(want)) {
		t.Errorf("Bytes() = %d, want %d", r.Bytes(), len(want))
	}
	st, err := r.Result()
	if err != nil || st != wantSt {
		t.Errorf("Result() = %+v, %v; want %+v", st, err, wantSt)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close after the end: %v", err)
	}
	if st, err := r.Result(); err != nil || st != wantSt {
		t.Errorf("Result() after Close = %+v, %v; want it unchanged", st, err)
	}
	// What it gave is a stream ReadImages takes.
	dst := filepath.Join(t.TempDir(), "images")
	if _, err := ReadImages(context.Background(), bytes.NewReader(got), dst, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	fxAssertImages(t, dst, files)
}

// TestImageReaderClose: closing the reader before the end stops the writer, whose
// result says so; nothing is left running.
func TestImageReaderClose(t *testing.T) {
	src, _ := fxStreamFiles(t)
	before := runtime.NumGoroutine()
	r := NewImageReader(context.Background(), src, StreamOptions{ChunkSize: 4096})
	if _, err := io.ReadFull(r, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		r.Close()
		r.Close() // twice: http.Client closes a body itself
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := r.Result(); !errors.Is(err, ErrReaderClosed) {
		t.Errorf("Result() after an early Close: %v, want ErrReaderClosed", err)
	}
	if n := r.Bytes(); n < 10000 || n > 10000+2*4096+1000 {
		t.Errorf("Bytes() = %d after reading 10000 and closing", n)
	}
	if _, err := r.Read(make([]byte, 10)); err == nil {
		t.Error("Read after Close succeeded")
	}
	waitGoroutines(t, before)
}

// TestImageReaderContext: the end of the reader's context stops a writer that waits for
// a reader that reads no more; Read and Result say why.
func TestImageReaderContext(t *testing.T) {
	src, _ := fxStreamFiles(t)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := NewImageReader(ctx, src, StreamOptions{ChunkSize: 4096})
	if _, err := io.ReadFull(r, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	cancel() // the writer is blocked in a write nobody reads
	res := make(chan error, 1)
	go func() { _, err := r.Result(); res <- err }()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Result() = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not stop when the context ended")
	}
	if _, err := io.ReadAll(r); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after the context ended: %v, want context.Canceled", err)
	}
	waitGoroutines(t, before)
	r.Close()
}

// TestImageReaderError: the writer's error reaches the reader and Result.
func TestImageReaderError(t *testing.T) {
	r := NewImageReader(context.Background(), filepath.Join(t.TempDir(), "none"), StreamOptions{})
	defer r.Close()
	b, err := io.ReadAll(r)
	if !errors.Is(err, fs.ErrNotExist) || len(b) != 0 {
		t.Errorf("ReadAll = %d bytes, %v; want ErrNotExist", len(b), err)
	}
	if _, err := r.Result(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Result() = %v, want ErrNotExist", err)
	}
}

// TestRoundReader: a round read through NewRoundReader is the round Round writes, with
// its figures; Commit after it holds its pages; an early Close fails the round, which
// then commits nothing.
func TestRoundReader(t *testing.T) {
	f := newPrecopyFixture(t)
	pids := func() ([]int, error) { return []int{100, 101}, nil }
	var want bytes.Buffer
	wantSt, err := NewPrecopier(f.root, pids).Round(context.Background(), &want)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPrecopier(f.root, pids)
	r := p.NewRoundReader(context.Background())
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Result()
	if err != nil || !bytes.Equal(got, want.Bytes()) || r.Bytes() != int64(len(got)) {
		t.Fatalf("round reader: %d bytes (Bytes %d), %v; want Round's %d bytes", len(got), r.Bytes(), err, want.Len())
	}
	st.Duration, wantSt.Duration = 0, 0
	if st != wantSt {
		t.Errorf("Result() = %+v, want %+v", st, wantSt)
	}
	p.Commit()
	if h := HashPage(f.pages["p0"]); !p.Held(h) {
		t.Error("a page of the committed round is not held")
	}

	f.set(t, 101, 0x80000, fxRandom(460, PageSize))
	before := runtime.NumGoroutine()
	r = p.NewRoundReader(context.Background())
	if _, err := io.ReadFull(r, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := r.Result(); !errors.Is(err, ErrReaderClosed) {
		t.Errorf("Result() after an early Close: %v, want ErrReaderClosed", err)
	}
	p.Commit()
	if p.Held(HashPage(fxRandom(460, PageSize))) {
		t.Error("a page of the failed round is held after Commit")
	}
	waitGoroutines(t, before)
}
