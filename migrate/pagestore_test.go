package migrate

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// fxPages returns n distinct random pages and their hashes.
func fxPages(seed uint64, n int) ([][]byte, []PageHash) {
	data := fxRandom(seed, n*PageSize)
	pages := make([][]byte, n)
	sums := make([]PageHash, n)
	for i := range pages {
		pages[i] = data[i*PageSize : (i+1)*PageSize]
		sums[i] = HashPage(pages[i])
	}
	return pages, sums
}

func fxOpenStore(t testing.TB) *PageStore {
	t.Helper()
	s, err := OpenPageStore(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPageStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s, err := OpenPageStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	backing := filepath.Join(dir, "pages.bin")
	if st, err := os.Stat(backing); err != nil || st.Mode() != 0o600 {
		t.Fatalf("backing file: %v, %v; want mode -rw-------", st.Mode(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store dir: %v, %v; want mode 0700", st.Mode(), err)
	}

	// More than a segment, so that the store grows.
	n := segmentPages + 10
	pages, sums := fxPages(200, n)
	dst := make([]byte, PageSize)
	if !s.Has(ZeroPageHash) || !s.Get(ZeroPageHash, fxFill(dst, 0xff)) || !bytes.Equal(dst, make([]byte, PageSize)) {
		t.Fatal("an empty store does not give the zero page")
	}
	if s.Has(sums[0]) || s.Get(sums[0], dst) || s.Len() != 0 {
		t.Fatal("an empty store claims a page")
	}
	for i := range pages {
		if err := s.Add(sums[i], pages[i]); err != nil {
			t.Fatalf("add page %d: %v", i, err)
		}
	}
	// Adding again, or adding the zero page, stores nothing.
	for _, i := range []int{0, n - 1} {
		if err := s.Add(sums[i], pages[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(ZeroPageHash, make([]byte, PageSize)); err != nil {
		t.Fatal(err)
	}
	if s.Len() != n {
		t.Fatalf("Len = %d, want %d", s.Len(), n)
	}
	for i := range pages {
		if !s.Has(sums[i]) || !s.Get(sums[i], fxFill(dst, 0xaa)) || !bytes.Equal(dst, pages[i]) {
			t.Fatalf("page %d does not come back", i)
		}
	}
	if s.Get(sums[0], make([]byte, PageSize-1)) {
		t.Fatal("Get into a short buffer succeeded")
	}
	if err := s.Add(HashPage(pages[0]), pages[0][:100]); err == nil {
		t.Fatal("a short page was added")
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(backing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("backing file after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if s.Has(sums[0]) || s.Get(sums[0], dst) || s.Len() != 0 {
		t.Fatal("a closed store gives pages")
	}
	if !s.Get(ZeroPageHash, dst) {
		t.Fatal("a closed store does not give the zero page")
	}
	if err := s.Add(sums[0], pages[0]); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("Add after Close: %v, want ErrStoreClosed", err)
	}
}

func fxFill(b []byte, v byte) []byte {
	for i := range b {
		b[i] = v
	}
	return b
}

func TestPageStoreNil(t *testing.T) {
	var s *PageStore
	_, sums := fxPages(201, 1)
	dst := make([]byte, PageSize)
	if s.Has(sums[0]) || s.Get(sums[0], dst) || s.Len() != 0 || s.Close() != nil {
		t.Fatal("a nil store claims pages")
	}
	if !s.Has(ZeroPageHash) || !s.Get(ZeroPageHash, dst) {
		t.Fatal("a nil store lacks the zero page")
	}
}

func TestPageStoreRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenPageStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if b, err := OpenPageStore(dir); err == nil {
		b.Close()
		t.Fatal("a second store opened on the same backing file")
	}
	// The first store is untouched.
	pages, sums := fxPages(202, 1)
	if err := a.Add(sums[0], pages[0]); err != nil || !a.Has(sums[0]) {
		t.Fatalf("first store after the refused open: %v", err)
	}
}

func TestPageStoreConcurrent(t *testing.T) {
	s := fxOpenStore(t)
	pages, sums := fxPages(203, 2000)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]byte, PageSize)
			for i := range pages {
				// Every writer adds every page (duplicates are no-ops); readers find
				// either nothing or the whole page.
				j := (i + w*500) % len(pages)
				if err := s.Add(sums[j], pages[j]); err != nil {
					t.Error(err)
					return
				}
				k := (i * 7) % len(pages)
				if s.Get(sums[k], dst) && !bytes.Equal(dst, pages[k]) {
					t.Errorf("page %d came back different", k)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s.Len() != len(pages) {
		t.Fatalf("Len = %d, want %d", s.Len(), len(pages))
	}
}

// A backing file cut short behind the store's back gives missing pages, not a crash.
func TestPageStoreTruncatedBehindItsBack(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenPageStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pages, sums := fxPages(204, 3)
	for i := range pages {
		if err := s.Add(sums[i], pages[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(filepath.Join(dir, "pages.bin"), 0); err != nil {
		t.Fatal(err)
	}
	if s.Get(sums[1], make([]byte, PageSize)) {
		t.Fatal("Get succeeded on a truncated backing file")
	}
	if err := s.Add(HashPage(fxRandom(205, PageSize)), fxRandom(205, PageSize)); err == nil {
		t.Fatal("Add succeeded on a truncated backing file")
	}
}
