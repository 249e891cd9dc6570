package migrate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrStoreClosed is returned by PageStore.Add after Close.
var ErrStoreClosed = errors.New("page store is closed")

// storeSegment is how much of its backing file a PageStore maps at a time.
const (
	storeSegment = 16 << 20
	segmentPages = storeSegment / PageSize
)

// PageStore holds pages by content on the receiving node: what pre-copy rounds sent
// (ReadPages), for the image stream to take the pages it was sent as hashes from
// (StreamOptions.Pages). Pages live in one backing file, dir/pages.bin, meant to be on
// tmpfs, mapped into memory segment by segment, so that Get is a copy and no system
// call; the index from hash to place is in memory. The zero page is always there and
// takes no room. A PageStore is safe for concurrent use; a nil *PageStore holds only
// the zero page.
type PageStore struct {
	path string

	mu     sync.RWMutex
	f      *os.File
	index  map[PageHash]uint32 // page number in the backing file
	segs   [][]byte            // mappings of the backing file, storeSegment bytes each
	n      int                 // pages stored
	closed bool
}

// OpenPageStore creates an empty store with its backing file dir/pages.bin (mode 0600;
// dir is created with mode 0700 if missing). An existing pages.bin is refused, never
// reused or overwritten: it belongs to another store, or one that was not closed.
func OpenPageStore(dir string) (*PageStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open page store: %w", err)
	}
	path := filepath.Join(dir, "pages.bin")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open page store: %w", err)
	}
	// Exactly 0600, whatever the umask: the pages are process memory.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("open page store: %w", err)
	}
	return &PageStore{path: path, f: f, index: map[PageHash]uint32{}}, nil
}

// Has reports whether the store holds the page with hash h.
func (s *PageStore) Has(h PageHash) bool {
	if h == ZeroPageHash {
		return true
	}
	if s == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.index[h]
	return ok
}

// Add stores page under h. The caller has checked that h is HashPage(page). A page
// already held (and the zero page) is not stored again.
func (s *PageStore) Add(h PageHash, page []byte) error {
	if len(page) != PageSize {
		return fmt.Errorf("page store: a page of %d bytes (a page is %d)", len(page), PageSize)
	}
	if h == ZeroPageHash {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	if _, ok := s.index[h]; ok {
		return nil
	}
	seg, slot := s.n/segmentPages, s.n%segmentPages
	if seg == len(s.segs) {
		if err := s.grow(); err != nil {
			return err
		}
	}
	if err := guardedCopy(s.segs[seg][slot*PageSize:(slot+1)*PageSize], page); err != nil {
		return fmt.Errorf("page store %s: %w", s.path, err)
	}
	s.index[h] = uint32(s.n)
	s.n++
	return nil
}

// grow extends the backing file by a segment and maps it. The space is allocated up
// front, so a full tmpfs is an error here instead of a fault on a later write.
func (s *PageStore) grow() error {
	if len(s.segs) >= (1<<32)/segmentPages {
		return fmt.Errorf("page store %s is full (%d pages)", s.path, s.n)
	}
	off := int64(len(s.segs)) * storeSegment
	fd := int(s.f.Fd())
	err := unix.Fallocate(fd, 0, off, storeSegment)
	if errors.Is(err, unix.EOPNOTSUPP) {
		// No fallocate here: a plain size; guardedCopy catches a write that finds no
		// room.
		err = unix.Ftruncate(fd, off+storeSegment)
	}
	if err != nil {
		return fmt.Errorf("page store %s: grow to %d bytes: %w", s.path, off+storeSegment, err)
	}
	m, err := unix.Mmap(fd, off, storeSegment, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("page store %s: map: %w", s.path, err)
	}
	s.segs = append(s.segs, m)
	return nil
}

// Get copies the page with hash h into dst (PageSize bytes) and reports whether the
// store holds it.
func (s *PageStore) Get(h PageHash, dst []byte) bool {
	if len(dst) < PageSize {
		return false
	}
	if h == ZeroPageHash {
		clear(dst[:PageSize])
		return true
	}
	if s == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.index[h]
	if !ok || s.closed {
		return false
	}
	seg, slot := int(n)/segmentPages, int(n)%segmentPages
	return guardedCopy(dst[:PageSize], s.segs[seg][slot*PageSize:(slot+1)*PageSize]) == nil
}

// Len returns how many pages the store holds (the zero page not counted).
func (s *PageStore) Len() int {
	if s == nil {
		return 0
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.n
}

// Close forgets every page and removes the backing file. Later calls do nothing.
func (s *PageStore) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, m := range s.segs {
		if err := unix.Munmap(m); err != nil {
			errs = append(errs, err)
		}
	}
	s.segs, s.index, s.n = nil, nil, 0
	if err := s.f.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(s.path); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close page store %s: %w", s.path, err)
	}
	return nil
}

// guardedCopy copies between a mapping of the backing file and memory. A fault (the
// file was truncated behind the store's back, or a file system without fallocate ran
// out of room) is returned as an error instead of crashing the process.
func guardedCopy(dst, src []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("memory fault on the backing file: %v", r)
		}
	}()
	copy(dst, src)
	return nil
}
