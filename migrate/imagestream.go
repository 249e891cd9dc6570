package migrate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrCorruptStream means an image stream cannot be trusted: it is not a migshm image
// stream at all, it was cut short, or a checksum, a file name or its trailer is wrong.
// ReadImages keeps nothing of such a stream.
var ErrCorruptStream = errors.New("corrupt stream")

// The image stream carries a CRIU images directory (a flat directory of regular files)
// from the source daemon to the target daemon. It runs inside the peer API's mutual TLS,
// so it only has to find damage, not hide or authenticate anything. All integers are big
// endian; every CRC is CRC-32C (Castagnoli).
//
//	header   "MIGSHM-IMAGES" | version u16 (1) | chunk size u32 | crc u32 of the header
//	file     'F' | name length u16 | name | mode u32 | size u64 | crc u32 of the record
//	         then ceil(size / chunk size) chunks, each: data | crc u32 of the data
//	         then the sha256 of the whole file
//	ref      'R' | name length u16 | name | mode u32 | size u64 | sha256 | crc u32
//	         (a file the receiver already holds: StreamOptions.Skip and Have)
//	paged    'P' | name length u16 | name | mode u32 | size u64 | crc u32 of the record
//	         (a file of raw pages sent page by page: StreamOptions.Paged, Held, Pages)
//	         then ceil(size / (P * 4096)) chunks of P pages, P = max(1, chunk size / 4096),
//	         each: one flag per page of the chunk (0: the page follows as it is, 1: its
//	         hash [16] follows instead) | the pages and hashes, in page order | crc u32 of
//	         the flags and what follows them
//	         then the file's digest: the sha256 over the 16-byte hashes of its pages in
//	         order (HashPage; a short last page, always sent as it is, is hashed the same
//	         way over its bytes)
//	trailer  'E' | files u64 | bytes u64 | digest [32] | crc u32
//
// Files come sorted by name. The trailer counts every file (sent, referenced or paged)
// and their total size; its digest is the sha256 over (name length u16, name, size u64,
// sha256 or, for a paged file, its digest) of every file in stream order, so a dropped
// or reordered file is caught. Each chunk's CRC is checked before the next chunk is read:
// a corrupt stream is refused where the damage is, not at its end.
//
// Paged records are version 1 too: a stream without them is what older senders wrote,
// and a reader that predates them refuses a stream with them ("unknown record kind
// 0x50"). A paged file's digest is built from the page hashes the sender computes
// anyway to decide what to send, so neither side hashes a page twice: the receiver
// hashes only the pages sent in full, and trusts Pages for the others (a PageStore
// checks every page against its hash when it is added).
const (
	streamMagic   = "MIGSHM-IMAGES"
	streamVersion = 1

	// DefaultChunkSize is the chunk size WriteImages uses when StreamOptions.ChunkSize
	// is zero.
	DefaultChunkSize = 1 << 20
	// MaxChunkSize bounds the chunk size a stream may declare (and so what a reader
	// allocates).
	MaxChunkSize = 64 << 20
	// DefaultMaxBytes is how much ReadImages accepts when StreamOptions.MaxBytes is zero.
	DefaultMaxBytes = 64 << 30

	maxStreamName = 255 // NAME_MAX

	kindFile    = 'F'
	kindRef     = 'R'
	kindPaged   = 'P'
	kindTrailer = 'E'

	// The flags of the pages of a paged chunk.
	pageLiteral = 0
	pageRef     = 1

	crcLen       = 4
	shaLen       = sha256.Size
	headerLen    = len(streamMagic) + 2 + 4 + crcLen
	recordLen    = 1 + 2 + 4 + 8 + crcLen // plus the name, plus shaLen for a ref
	trailerLen   = 1 + 8 + 8 + shaLen + crcLen
	maxRecordLen = recordLen + maxStreamName + shaLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// StreamOptions tunes WriteImages and ReadImages.
type StreamOptions struct {
	// ChunkSize is the size of the checksummed chunks WriteImages cuts files into; 0
	// means DefaultChunkSize. The reader takes it from the stream. A paged file's chunks
	// hold ChunkSize / 4096 pages (at least one).
	ChunkSize int
	// MaxBytes bounds the total size of the files ReadImages accepts (sent and
	// referenced alike); 0 means DefaultMaxBytes.
	MaxBytes int64
	// Skip, if set, is asked by WriteImages for every file, with the file's sha256: true
	// sends only a reference (name, size, sha256), for a file the receiver already
	// holds (the pre-copy sent it). Files are then read twice, once to hash them.
	Skip func(name string, sha256 [32]byte) bool
	// Have, if set, is asked by ReadImages for every referenced file: the path of a
	// local file with that content. ReadImages copies it into the directory and checks
	// its sha256. A stream with references and no Have is refused.
	Have func(name string, sha256 [32]byte) (path string, ok bool)

	// Paged, if set, names the files WriteImages sends page by page: PagesImage, CRIU's
	// page data (raw pages; CRIU 4.1 writes SysV shm contents there too). Each page
	// whose hash Held reports, and every zero page, travels as its 16-byte hash only;
	// the others travel as they are. A short last page (a file that is not a multiple
	// of 4096 bytes) always travels as it is. Skip is not asked about paged files.
	Paged func(name string) bool
	// Held reports whether the receiver holds a page (a pre-copy round that the
	// receiver acknowledged sent it): Precopier.Held. nil means none but the zero page.
	Held func(PageHash) bool
	// Pages (receiver) gives the content of pages sent as hashes: a PageStore. A paged
	// file naming a page Pages lacks is refused (the error wraps ErrCorruptStream and
	// says which file and page). nil holds only the zero page.
	Pages interface {
		Get(h PageHash, dst []byte) bool
	}
}

// PagesImage reports whether name is one of CRIU's page data files (pages-N.img): raw
// pages, a multiple of 4096 bytes, holding the dumped private memory and, with CRIU 4.1,
// the contents of SysV shm segments too.
func PagesImage(name string) bool {
	return strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// StreamStats counts what an image stream carried. Files and Bytes are the files whose
// content crossed the stream and that content's size (framing not included); Skipped
// and SkippedBytes the files sent as references only. A paged file counts in Files; its
// pages sent in full count in Bytes, those sent as hashes in RefPages, and their size in
// RefBytes. Bytes + SkippedBytes + RefBytes is the size of all files.
type StreamStats struct {
	Files        int
	Bytes        int64
	Skipped      int
	SkippedBytes int64
	RefPages     int64
	RefBytes     int64
}

// WriteImages writes the regular files of the images directory dir to w as an image
// stream (see ReadImages), sorted by name. dir must be flat: a subdirectory, a symlink
// or a special file is refused, naming it, before anything is written. ctx is checked
// between chunks; a blocked Write is the caller's to interrupt (close the connection).
// On error, w holds part of a stream, which the reader refuses.
func WriteImages(ctx context.Context, w io.Writer, dir string, opts StreamOptions) (StreamStats, error) {
	var st StreamStats
	if err := writeImages(ctx, w, dir, opts, &st); err != nil {
		return st, fmt.Errorf("send images from %s: %w", dir, err)
	}
	return st, nil
}

func writeImages(ctx context.Context, w io.Writer, dir string, opts StreamOptions, st *StreamStats) error {
	chunk := opts.ChunkSize
	if chunk == 0 {
		chunk = DefaultChunkSize
	}
	if chunk < 0 || chunk > MaxChunkSize {
		return fmt.Errorf("chunk size %d is not in 1..%d", chunk, MaxChunkSize)
	}
	names, err := imageFiles(dir)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := w.Write(appendStreamHeader(nil, uint32(chunk))); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	s := &imageSender{ctx: ctx, w: w, dir: dir, opts: opts, st: st, chunk: chunk,
		buf: make([]byte, chunk+crcLen), dig: newStreamDigest()}
	for _, name := range names {
		if err := s.send(name); err != nil {
			return err
		}
	}
	total := st.Bytes + st.SkippedBytes + st.RefBytes
	tr := appendTrailer(nil, uint64(st.Files+st.Skipped), uint64(total), s.dig.sum())
	if _, err := w.Write(tr); err != nil {
		return fmt.Errorf("write trailer: %w", err)
	}
	return nil
}

// imageFiles lists the files of a flat images directory, sorted by name, refusing
// anything but regular files.
func imageFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch t := e.Type(); {
		case t.IsDir():
			return nil, fmt.Errorf("%s is a directory: an images directory must be flat", path)
		case t&fs.ModeSymlink != 0:
			return nil, fmt.Errorf("%s is a symlink: an images directory holds regular files only", path)
		case !t.IsRegular():
			return nil, fmt.Errorf("%s is not a regular file (%v): an images directory holds regular files only",
				path, t)
		}
		if err := checkStreamName(e.Name()); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		names = append(names, e.Name())
	}
	return names, nil
}

type imageSender struct {
	ctx   context.Context
	w     io.Writer
	dir   string
	opts  StreamOptions
	st    *StreamStats
	chunk int
	buf   []byte // chunk size + crcLen
	dig   *streamDigest

	// For paged files: flags, pages and CRC of a chunk, and the pages' hashes.
	pbuf  []byte
	psums []PageHash
}

// send writes one file, or a reference to it if opts.Skip says the receiver has it.
func (s *imageSender) send(name string) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	path := filepath.Join(s.dir, name)
	// O_NOFOLLOW: the listing said regular file; a symlink swapped in since is refused.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%v)", path, info.Mode().Type())
	}
	size, mode := info.Size(), uint32(info.Mode().Perm())
	if s.opts.Paged != nil && s.opts.Paged(name) {
		return s.sendPaged(f, path, name, mode, size)
	}
	var pre [32]byte
	if s.opts.Skip != nil {
		if pre, err = s.hash(f, path, size); err != nil {
			return err
		}
		if s.opts.Skip(name, pre) {
			if _, err := s.w.Write(appendRecord(nil, kindRef, name, mode, uint64(size), &pre)); err != nil {
				return fmt.Errorf("write reference to %s: %w", name, err)
			}
			s.dig.add(name, uint64(size), pre)
			s.st.Skipped++
			s.st.SkippedBytes += size
			return nil
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	if _, err := s.w.Write(appendRecord(nil, kindFile, name, mode, uint64(size), nil)); err != nil {
		return fmt.Errorf("write record of %s: %w", name, err)
	}
	h := sha256.New()
	for i, off := 1, int64(0); off < size; i++ {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(len(s.buf)-crcLen), size-off))
		data := s.buf[:n]
		if _, err := io.ReadFull(f, data); err != nil {
			return fmt.Errorf("%s: %w (did it shrink while being sent?)", path, err)
		}
		h.Write(data)
		binary.BigEndian.PutUint32(s.buf[n:], crc32.Checksum(data, castagnoli))
		if _, err := s.w.Write(s.buf[:n+crcLen]); err != nil {
			return fmt.Errorf("write chunk %d of %s: %w", i, name, err)
		}
		off += int64(n)
		s.st.Bytes += int64(n)
	}
	if err := noMore(f, path); err != nil {
		return err
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if s.opts.Skip != nil && sum != pre {
		return fmt.Errorf("%s changed while being sent", path)
	}
	if _, err := s.w.Write(sum[:]); err != nil {
		return fmt.Errorf("write sha256 of %s: %w", name, err)
	}
	s.dig.add(name, uint64(size), sum)
	s.st.Files++
	return nil
}

// pagesPerChunk is how many pages a chunk of a paged file holds.
func pagesPerChunk(chunk int) int {
	return max(1, chunk/PageSize)
}

// sendPaged writes a paged file: each chunk's pages are read in place behind the
// chunk's flags, hashed, and then those the receiver holds are replaced by their hash,
// moving the following pages down. Nothing is copied when no page, or every page, is
// held.
func (s *imageSender) sendPaged(f *os.File, path, name string, mode uint32, size int64) error {
	if _, err := s.w.Write(appendRecord(nil, kindPaged, name, mode, uint64(size), nil)); err != nil {
		return fmt.Errorf("write record of %s: %w", name, err)
	}
	ppc := pagesPerChunk(s.chunk)
	if s.pbuf == nil {
		s.pbuf = make([]byte, ppc+ppc*PageSize+crcLen)
		s.psums = make([]PageHash, ppc)
	}
	dig := sha256.New()
	var literal, refs int64
	for i, off := 1, int64(0); off < size; i++ {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(ppc*PageSize), size-off))
		np := (n + PageSize - 1) / PageSize
		full := n / PageSize
		out := s.pbuf
		data := out[np : np+n]
		if _, err := io.ReadFull(f, data); err != nil {
			return fmt.Errorf("%s: %w (did it shrink while being sent?)", path, err)
		}
		sums := s.psums[:np]
		hashPages(data, sums[:full])
		if full < np {
			sums[full] = sum16(data[full*PageSize:])
		}
		w := np // where the next page or hash goes
		for p := range np {
			if p < full && (sums[p] == ZeroPageHash || s.opts.Held != nil && s.opts.Held(sums[p])) {
				out[p] = pageRef
				w += copy(out[w:], sums[p][:])
				refs++
				continue
			}
			out[p] = pageLiteral
			src, ln := np+p*PageSize, min(PageSize, n-p*PageSize)
			if w != src {
				copy(out[w:w+ln], out[src:src+ln])
			}
			w += ln
			literal += int64(ln)
		}
		for p := range sums {
			dig.Write(sums[p][:])
		}
		out = binary.BigEndian.AppendUint32(out[:w], crc32.Checksum(out[:w], castagnoli))
		if _, err := s.w.Write(out); err != nil {
			return fmt.Errorf("write chunk %d of %s: %w", i, name, err)
		}
		off += int64(n)
	}
	if err := noMore(f, path); err != nil {
		return err
	}
	var sum [32]byte
	dig.Sum(sum[:0])
	if _, err := s.w.Write(sum[:]); err != nil {
		return fmt.Errorf("write digest of %s: %w", name, err)
	}
	s.dig.add(name, uint64(size), sum)
	s.st.Files++
	s.st.Bytes += literal
	s.st.RefPages += refs
	s.st.RefBytes += refs * PageSize
	return nil
}

// hash returns the sha256 of f's size bytes, checking ctx between chunks.
func (s *imageSender) hash(f *os.File, path string, size int64) ([32]byte, error) {
	var sum [32]byte
	h := sha256.New()
	for off := int64(0); off < size; {
		if err := s.ctx.Err(); err != nil {
			return sum, err
		}
		data := s.buf[:min(int64(len(s.buf)), size-off)]
		if _, err := io.ReadFull(f, data); err != nil {
			return sum, fmt.Errorf("%s: %w (did it shrink while being sent?)", path, err)
		}
		h.Write(data)
		off += int64(len(data))
	}
	if err := noMore(f, path); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

// noMore checks that f, read up to the size it had when opened, has nothing more.
func noMore(f *os.File, path string) error {
	var one [1]byte
	n, err := f.Read(one[:])
	if n > 0 {
		return fmt.Errorf("%s grew while being sent", path)
	}
	if err != nil && err != io.EOF {
		return err
	}
	return nil
}

// ReadImages reads an image stream written by WriteImages from r into the directory dir
// (created with mode 0700 if missing). Files are written with mode 0600 whatever mode
// the sender had (images hold process memory), each under a temporary name first and
// renamed to its own once its sha256 checks out. A file already in dir is never
// replaced. Referenced files are copied from opts.Have's paths and checked as well.
//
// ReadImages reads the stream up to its trailer and no further. dir is complete only
// when it returns nil: on any error every file this call wrote is removed again, so a
// failed transfer leaves nothing behind (dir itself stays). A stream that is damaged,
// cut short, hand-crafted or not an image stream at all gives an error wrapping
// ErrCorruptStream (and io.ErrUnexpectedEOF when cut short). ctx is checked between
// chunks; a blocked Read is the caller's to interrupt (close the connection).
func ReadImages(ctx context.Context, r io.Reader, dir string, opts StreamOptions) (StreamStats, error) {
	rd := &imageReceiver{ctx: ctx, r: r, dir: dir, opts: opts, maxBytes: opts.MaxBytes,
		seen: map[string]bool{}, dig: newStreamDigest()}
	if rd.maxBytes <= 0 {
		rd.maxBytes = DefaultMaxBytes
	}
	if err := rd.receive(); err != nil {
		if cerr := rd.cleanup(); cerr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
		}
		return rd.st, fmt.Errorf("receive images into %s: %w", dir, err)
	}
	return rd.st, nil
}

type imageReceiver struct {
	ctx      context.Context
	r        io.Reader
	dir      string
	opts     StreamOptions
	maxBytes int64

	chunk   int
	buf     []byte
	head    [maxRecordLen]byte
	seen    map[string]bool
	total   int64 // sizes of all files so far, sent and referenced
	dig     *streamDigest
	st      StreamStats
	tmp     string   // the temporary file being written, if any
	written []string // files this call created

	// For paged files: a chunk's flags, its pages (and CRC), the pages' hashes, and
	// which pages came in full.
	pflags []byte
	pbuf   []byte
	psums  []PageHash
	plits  []int
}

func (rd *imageReceiver) receive() error {
	if err := os.MkdirAll(rd.dir, 0o700); err != nil {
		return err
	}
	if err := rd.readHeader(); err != nil {
		return err
	}
	for {
		if err := rd.ctx.Err(); err != nil {
			return err
		}
		kind := rd.head[:1]
		if _, err := io.ReadFull(rd.r, kind); err != nil {
			return rd.readErr(err, fmt.Sprintf("after %d files, before the trailer", len(rd.seen)))
		}
		switch kind[0] {
		case kindFile, kindRef, kindPaged:
			if err := rd.readFile(kind[0]); err != nil {
				return err
			}
		case kindTrailer:
			return rd.readTrailer()
		default:
			return fmt.Errorf("after %d files: unknown record kind %#x: %w", len(rd.seen), kind[0], ErrCorruptStream)
		}
	}
}

// readErr says where a read failed; a stream that ends early is corrupt.
func (rd *imageReceiver) readErr(err error, where string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: truncated (%w): %w", where, io.ErrUnexpectedEOF, ErrCorruptStream)
	}
	return fmt.Errorf("%s: %w", where, err)
}

func (rd *imageReceiver) readHeader() error {
	h := rd.head[:headerLen]
	if err := readHead(rd.r, h, streamMagic, streamVersion, streamVersion, "image stream", rd.readErr); err != nil {
		return err
	}
	chunk := binary.BigEndian.Uint32(h[len(streamMagic)+2:])
	if chunk == 0 || chunk > MaxChunkSize {
		return fmt.Errorf("header: chunk size %d is not in 1..%d: %w", chunk, MaxChunkSize, ErrCorruptStream)
	}
	rd.chunk = int(chunk)
	return nil
}

// readHead reads a stream's header into h (all of it: magic, version, the stream's own
// fields, a CRC) and checks it, taking versions oldest to version; what names the
// stream in errors, readErr says how a short read ended.
func readHead(r io.Reader, h []byte, magic string, oldest, version uint16, what string, readErr func(err error, where string) error) error {
	n, err := io.ReadFull(r, h)
	if n == 0 && err != nil {
		if err == io.EOF {
			return fmt.Errorf("not a migshm %s (it is empty): %w", what, ErrCorruptStream)
		}
		return fmt.Errorf("header: %w", err)
	}
	if m := min(n, len(magic)); string(h[:m]) != magic[:m] {
		return fmt.Errorf("not a migshm %s (it begins %q): %w", what, h[:min(n, 16)], ErrCorruptStream)
	}
	if n >= len(magic)+2 {
		// Checked before the rest: a newer sender's header may be longer.
		if v := binary.BigEndian.Uint16(h[len(magic):]); v < oldest || v > version {
			if oldest == version {
				return fmt.Errorf("%s version %d is not supported (this migshm reads version %d)", what, v, version)
			}
			return fmt.Errorf("%s version %d is not supported (this migshm reads versions %d to %d)", what, v, oldest, version)
		}
	}
	if err != nil {
		return readErr(err, "header")
	}
	if crc32.Checksum(h[:len(h)-crcLen], castagnoli) != binary.BigEndian.Uint32(h[len(h)-crcLen:]) {
		return fmt.Errorf("header: checksum mismatch: %w", ErrCorruptStream)
	}
	return nil
}

// readFile reads a file, ref or paged record (its kind byte is already in rd.head) and
// what follows it, and installs the file.
func (rd *imageReceiver) readFile(kind byte) error {
	where := fmt.Sprintf("record after %d files", len(rd.seen))
	if _, err := io.ReadFull(rd.r, rd.head[1:3]); err != nil {
		return rd.readErr(err, where)
	}
	nameLen := int(binary.BigEndian.Uint16(rd.head[1:3]))
	if nameLen > maxStreamName {
		return fmt.Errorf("%s: name of %d bytes: %w", where, nameLen, ErrCorruptStream)
	}
	n := recordLen + nameLen
	if kind == kindRef {
		n += shaLen
	}
	rec := rd.head[:n]
	if _, err := io.ReadFull(rd.r, rec[3:]); err != nil {
		return rd.readErr(err, where)
	}
	if crc32.Checksum(rec[:n-crcLen], castagnoli) != binary.BigEndian.Uint32(rec[n-crcLen:]) {
		return fmt.Errorf("%s: checksum mismatch: %w", where, ErrCorruptStream)
	}
	name := string(rec[3 : 3+nameLen])
	size := binary.BigEndian.Uint64(rec[3+nameLen+4:])
	if err := checkStreamName(name); err != nil {
		return fmt.Errorf("%s: %w: %w", where, err, ErrCorruptStream)
	}
	if rd.seen[name] {
		return fmt.Errorf("%s: %s comes twice: %w", where, name, ErrCorruptStream)
	}
	rd.seen[name] = true
	if size > math.MaxInt64 || int64(size) > rd.maxBytes-rd.total {
		return fmt.Errorf("%s of %d bytes: the stream would exceed its limit of %d bytes", name, size, rd.maxBytes)
	}
	rd.total += int64(size)
	final := filepath.Join(rd.dir, name)
	if _, err := os.Lstat(final); err == nil {
		return fmt.Errorf("%s already exists", final)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var sum [32]byte
	if kind == kindRef {
		copy(sum[:], rec[3+nameLen+4+8:])
		if err := rd.fetch(name, int64(size), sum); err != nil {
			return err
		}
		rd.st.Skipped++
		rd.st.SkippedBytes += int64(size)
	} else if kind == kindPaged {
		var err error
		if sum, err = rd.readPaged(name, int64(size)); err != nil {
			return err
		}
		rd.st.Files++
	} else {
		var err error
		if sum, err = rd.readContent(name, int64(size)); err != nil {
			return err
		}
		rd.st.Files++
		rd.st.Bytes += int64(size)
	}
	if err := rd.install(final); err != nil {
		return err
	}
	rd.dig.add(name, size, sum)
	return nil
}

// create makes the temporary file the next file is written to.
func (rd *imageReceiver) create() (*os.File, error) {
	f, err := os.CreateTemp(rd.dir, ".migshm-recv-*")
	if err != nil {
		return nil, err
	}
	rd.tmp = f.Name()
	// Exactly 0600, whatever the umask.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readContent reads a file's chunks and sha256 into a new temporary file.
func (rd *imageReceiver) readContent(name string, size int64) ([32]byte, error) {
	var sum [32]byte
	f, err := rd.create()
	if err != nil {
		return sum, err
	}
	defer f.Close()
	if want := int(min(int64(rd.chunk), size)) + crcLen; len(rd.buf) < want {
		rd.buf = make([]byte, want)
	}
	h := sha256.New()
	for i, off := 1, int64(0); off < size; i++ {
		if err := rd.ctx.Err(); err != nil {
			return sum, err
		}
		n := int(min(int64(rd.chunk), size-off))
		c := rd.buf[:n+crcLen]
		if _, err := io.ReadFull(rd.r, c); err != nil {
			return sum, rd.readErr(err, fmt.Sprintf("chunk %d of %s", i, name))
		}
		data := c[:n]
		if crc32.Checksum(data, castagnoli) != binary.BigEndian.Uint32(c[n:]) {
			return sum, fmt.Errorf("chunk %d of %s: checksum mismatch: %w", i, name, ErrCorruptStream)
		}
		h.Write(data)
		if _, err := f.Write(data); err != nil {
			return sum, err
		}
		off += int64(n)
	}
	return rd.endFile(f, name, "sha256", h)
}

// readPaged reads a paged file's chunks and digest into a new temporary file. The
// entries of a chunk are read into the end of its buffer and spread out to their places
// in page order (each entry starts at or after its page's place, so none is overwritten
// before it is used); pages sent as hashes come from opts.Pages.
func (rd *imageReceiver) readPaged(name string, size int64) ([32]byte, error) {
	var sum [32]byte
	f, err := rd.create()
	if err != nil {
		return sum, err
	}
	defer f.Close()
	ppc := pagesPerChunk(rd.chunk)
	if want := ppc*PageSize + crcLen; len(rd.pbuf) < want {
		rd.pbuf = make([]byte, want)
		rd.pflags = make([]byte, ppc)
		rd.psums = make([]PageHash, ppc)
	}
	dig := sha256.New()
	for i, off := 1, int64(0); off < size; i++ {
		if err := rd.ctx.Err(); err != nil {
			return sum, err
		}
		where := fmt.Sprintf("chunk %d of %s", i, name)
		n := int(min(int64(ppc*PageSize), size-off))
		np := (n + PageSize - 1) / PageSize
		full := n / PageSize
		flags := rd.pflags[:np]
		if _, err := io.ReadFull(rd.r, flags); err != nil {
			return sum, rd.readErr(err, where)
		}
		entries := 0
		for p, fl := range flags {
			switch {
			case fl == pageLiteral:
				entries += min(PageSize, n-p*PageSize)
			case fl == pageRef && p < full:
				entries += len(PageHash{})
			default:
				return sum, fmt.Errorf("%s: page %d has flag %#x: %w", where, p+1, fl, ErrCorruptStream)
			}
		}
		out := rd.pbuf[:n+crcLen]
		if _, err := io.ReadFull(rd.r, out[n-entries:]); err != nil {
			return sum, rd.readErr(err, where)
		}
		crc := crc32.Update(crc32.Checksum(flags, castagnoli), castagnoli, out[n-entries:n])
		if crc != binary.BigEndian.Uint32(out[n:]) {
			return sum, fmt.Errorf("%s: checksum mismatch: %w", where, ErrCorruptStream)
		}
		sums := rd.psums[:np]
		lits := rd.plits[:0]
		pos := n - entries
		for p, fl := range flags {
			dst, ln := p*PageSize, min(PageSize, n-p*PageSize)
			if fl == pageRef {
				h := PageHash(out[pos : pos+len(PageHash{})])
				pos += len(h)
				if !rd.page(h, out[dst:dst+PageSize]) {
					return sum, fmt.Errorf("%s: page %d (offset %d) was sent as hash %s, and no such page is held here: %w",
						name, p+1+(i-1)*ppc, off+int64(dst), h, ErrCorruptStream)
				}
				sums[p] = h
				rd.st.RefPages++
				rd.st.RefBytes += PageSize
				continue
			}
			if pos != dst {
				copy(out[dst:dst+ln], out[pos:pos+ln])
			}
			pos += ln
			lits = append(lits, p)
			rd.st.Bytes += int64(ln)
		}
		parallel(len(lits), func(lo, hi int) {
			for _, p := range lits[lo:hi] {
				sums[p] = sum16(out[p*PageSize : min((p+1)*PageSize, n)])
			}
		})
		rd.plits = lits
		for p := range sums {
			dig.Write(sums[p][:])
		}
		if _, err := f.Write(out[:n]); err != nil {
			return sum, err
		}
		off += int64(n)
	}
	return rd.endFile(f, name, "digest", dig)
}

// endFile reads the digest (what) that ends file name in the stream, checks it
// against h's, the digest of what was received, and closes f.
func (rd *imageReceiver) endFile(f *os.File, name, what string, h hash.Hash) ([32]byte, error) {
	var sum, want [32]byte
	if _, err := io.ReadFull(rd.r, want[:]); err != nil {
		return sum, rd.readErr(err, what+" of "+name)
	}
	h.Sum(sum[:0])
	if sum != want {
		return sum, fmt.Errorf("%s: %s mismatch: received %.12x, the stream says %.12x: %w", name, what, sum, want, ErrCorruptStream)
	}
	return sum, f.Close()
}

// page copies the page with hash h into dst: the zero page, or one of opts.Pages.
func (rd *imageReceiver) page(h PageHash, dst []byte) bool {
	if h == ZeroPageHash {
		clear(dst)
		return true
	}
	return rd.opts.Pages != nil && rd.opts.Pages.Get(h, dst)
}

// fetch copies the local file opts.Have names for a referenced file into a new
// temporary file, checking its size and sha256.
func (rd *imageReceiver) fetch(name string, size int64, want [32]byte) error {
	if rd.opts.Have == nil {
		return fmt.Errorf("the sender skipped %s (sha256 %.12x) but there is no local copy to take it from", name, want)
	}
	path, ok := rd.opts.Have(name, want)
	if !ok {
		return fmt.Errorf("the sender skipped %s (sha256 %.12x) but it is not here", name, want)
	}
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("local copy of %s: %w", name, err)
	}
	defer src.Close()
	f, err := rd.create()
	if err != nil {
		return err
	}
	defer f.Close()
	if len(rd.buf) < DefaultChunkSize {
		rd.buf = make([]byte, DefaultChunkSize)
	}
	h := sha256.New()
	var n int64
	for {
		if err := rd.ctx.Err(); err != nil {
			return err
		}
		m, err := src.Read(rd.buf)
		if m > 0 {
			n += int64(m)
			if n > size {
				return fmt.Errorf("local copy %s of %s: longer than %d bytes", path, name, size)
			}
			h.Write(rd.buf[:m])
			if _, err := f.Write(rd.buf[:m]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("local copy of %s: %w", name, err)
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if n != size || sum != want {
		return fmt.Errorf("local copy %s of %s: %d bytes with sha256 %.12x, the sender has %d bytes with sha256 %.12x",
			path, name, n, sum, size, want)
	}
	return f.Close()
}

// install renames the temporary file to final, never replacing a file.
func (rd *imageReceiver) install(final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, rd.tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: a hard link never replaces either.
		if err = os.Link(rd.tmp, final); err == nil {
			rd.written = append(rd.written, final)
			if err := os.Remove(rd.tmp); err != nil {
				return err
			}
			rd.tmp = ""
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("install %s: %w", final, err)
	}
	rd.tmp = ""
	rd.written = append(rd.written, final)
	return nil
}

// readTrailer checks the trailer against what was received.
func (rd *imageReceiver) readTrailer() error {
	t := rd.head[:trailerLen]
	if _, err := io.ReadFull(rd.r, t[1:]); err != nil {
		return rd.readErr(err, "trailer")
	}
	if crc32.Checksum(t[:trailerLen-crcLen], castagnoli) != binary.BigEndian.Uint32(t[trailerLen-crcLen:]) {
		return fmt.Errorf("trailer: checksum mismatch: %w", ErrCorruptStream)
	}
	files, total := binary.BigEndian.Uint64(t[1:]), binary.BigEndian.Uint64(t[9:])
	gotFiles := uint64(rd.st.Files + rd.st.Skipped)
	if files != gotFiles || total != uint64(rd.total) {
		return fmt.Errorf("trailer mismatch: received %d files of %d bytes, the trailer says %d files of %d bytes: %w",
			gotFiles, rd.total, files, total, ErrCorruptStream)
	}
	if d := rd.dig.sum(); !bytes.Equal(d[:], t[17:17+shaLen]) {
		return fmt.Errorf("trailer mismatch: files dropped, reordered or renamed on the way: %w", ErrCorruptStream)
	}
	return nil
}

// cleanup removes every file this call created.
func (rd *imageReceiver) cleanup() error {
	var errs []error
	if rd.tmp != "" {
		if err := os.Remove(rd.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, p := range rd.written {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	rd.written = nil
	return errors.Join(errs...)
}

// checkStreamName refuses names that are not a plain file name within the directory.
func checkStreamName(name string) error {
	switch {
	case name == "":
		return errors.New("empty file name")
	case len(name) > maxStreamName:
		return fmt.Errorf("file name %.32q... is longer than %d bytes", name, maxStreamName)
	case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("invalid file name %q", name)
	}
	return nil
}

func appendStreamHeader(b []byte, chunk uint32) []byte {
	start := len(b)
	b = append(b, streamMagic...)
	b = binary.BigEndian.AppendUint16(b, streamVersion)
	b = binary.BigEndian.AppendUint32(b, chunk)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// appendRecord appends a file record (sum nil) or a ref record.
func appendRecord(b []byte, kind byte, name string, mode uint32, size uint64, sum *[32]byte) []byte {
	start := len(b)
	b = append(b, kind)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, mode)
	b = binary.BigEndian.AppendUint64(b, size)
	if sum != nil {
		b = append(b, sum[:]...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

func appendTrailer(b []byte, files, total uint64, digest [32]byte) []byte {
	start := len(b)
	b = append(b, kindTrailer)
	b = binary.BigEndian.AppendUint64(b, files)
	b = binary.BigEndian.AppendUint64(b, total)
	b = append(b, digest[:]...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// streamDigest is the trailer's digest over (name, size, sha256) of every file.
type streamDigest struct {
	h   hash.Hash
	buf []byte
}

func newStreamDigest() *streamDigest { return &streamDigest{h: sha256.New()} }

func (d *streamDigest) add(name string, size uint64, sum [32]byte) {
	d.buf = binary.BigEndian.AppendUint16(d.buf[:0], uint16(len(name)))
	d.buf = append(d.buf, name...)
	d.buf = binary.BigEndian.AppendUint64(d.buf, size)
	d.buf = append(d.buf, sum[:]...)
	d.h.Write(d.buf)
}

func (d *streamDigest) sum() [32]byte {
	var s [32]byte
	d.h.Sum(s[:0])
	return s
}
