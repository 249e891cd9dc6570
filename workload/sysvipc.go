package workload

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/migshm/migshm/internal/nsutil"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Segment is one SysV shm segment of an IPC namespace, as /proc/sysvipc/shm lists it.
type Segment struct {
	Key    uint32
	Shmid  int
	Mode   uint32 // permission bits
	Size   uint64
	CPid   int // creator pid, in the namespace's view
	NAttch int
	UID    int
	// Digest is the SHA-256 of the contents, hex (DigestSegments), or QuickDigestPrefix
	// and an XXH3-128 digest of the contents, hex (QuickDigestSegments); empty otherwise.
	Digest string `json:",omitempty"`
}

// ParseSysVShm parses the contents of /proc/sysvipc/shm (the header line included),
// sorted by shmid.
func ParseSysVShm(r io.Reader) ([]Segment, error) {
	var out []Segment
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if first {
			first = false
			if len(f) > 0 && f[0] == "key" {
				continue
			}
		}
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("sysvipc/shm: short line %q", sc.Text())
		}
		var s Segment
		var err error
		num := func(i int, base int, bits int) uint64 {
			if err != nil {
				return 0
			}
			var v uint64
			v, err = strconv.ParseUint(f[i], base, bits)
			return v
		}
		// Columns: key shmid perms size cpid lpid nattch uid gid cuid ...; key is signed
		// decimal (IPC_PRIVATE is 0, large keys print negative).
		k, kerr := strconv.ParseInt(f[0], 10, 64)
		if kerr != nil {
			return nil, fmt.Errorf("sysvipc/shm: bad key in %q", sc.Text())
		}
		s.Key = uint32(k)
		s.Shmid = int(num(1, 10, 31))
		s.Mode = uint32(num(2, 8, 32)) & 0o777
		s.Size = num(3, 10, 64)
		s.CPid = int(num(4, 10, 31))
		s.NAttch = int(num(6, 10, 31))
		s.UID = int(num(7, 10, 31))
		if err != nil {
			return nil, fmt.Errorf("sysvipc/shm: %v in %q", err, sc.Text())
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shmid < out[j].Shmid })
	return out, nil
}

// Segments lists the SysV shm segments of the IPC namespace process pid lives in
// (attached or not).
func Segments(pid int) ([]Segment, error) {
	var segs []Segment
	err := nsutil.Do(nsutil.IPC, fmt.Sprintf("/proc/%d/ns/ipc", pid), func() error {
		var err error
		segs, err = readSysVShm()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list segments of pid %d: %w", pid, err)
	}
	return segs, nil
}

// DigestSegments lists the segments of pid's IPC namespace with the SHA-256 of each one's
// contents. It attaches each segment read-only for the time of the hash (the kernel then
// updates the segment's attach time and last pid, nothing else); call it on a stopped
// tree to get a stable answer.
func DigestSegments(pid int) ([]Segment, error) {
	return digestSegments(pid, digest)
}

// QuickDigestSegments is DigestSegments with an XXH3-128 digest of the contents instead
// (QuickDigestPrefix), an order of magnitude faster: a migration digests the segments
// twice while the workload is frozen. It finds any accidental difference, not one
// crafted by an adversary (the workload can change its own memory anyway).
func QuickDigestSegments(pid int) ([]Segment, error) {
	return digestSegments(pid, quickDigest)
}

func digestSegments(pid int, digest func(int) (string, error)) ([]Segment, error) {
	var segs []Segment
	err := nsutil.Do(nsutil.IPC, fmt.Sprintf("/proc/%d/ns/ipc", pid), func() error {
		var err error
		if segs, err = readSysVShm(); err != nil {
			return err
		}
		for i := range segs {
			if segs[i].Digest, err = digest(segs[i].Shmid); err != nil {
				return fmt.Errorf("shmid %d: %w", segs[i].Shmid, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("digest segments of pid %d: %w", pid, err)
	}
	return segs, nil
}

// readSysVShm reads /proc/sysvipc/shm, which lists the segments of the calling thread's
// IPC namespace.
func readSysVShm() ([]Segment, error) {
	f, err := os.Open("/proc/sysvipc/shm")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseSysVShm(f)
}

// QuickDigestPrefix starts every digest QuickDigestSegments makes: XXH3-128 of the
// XXH3-128 sums of the segment's 4 MiB pieces (the last one shorter), so that the
// pieces are mapped and hashed on all CPUs at once. (The prefix was "xxh3:" when the
// digest was one XXH3-128 of the whole: a node of that build compares unequal, and a
// move between the two aborts and rolls back.)
const QuickDigestPrefix = "xxh3x4m:"

// digestPiece is the size of the pieces of a quick digest.
const digestPiece = 4 << 20

func quickDigest(shmid int) (string, error) {
	mem, err := unix.SysvShmAttach(shmid, 0, unix.SHM_RDONLY)
	if err != nil {
		return "", fmt.Errorf("attach: %w", err)
	}
	defer unix.SysvShmDetach(mem)
	sums := make([]byte, 16*((len(mem)+digestPiece-1)/digestPiece))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(sums)/16) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i*16 >= len(sums) {
					return
				}
				piece := mem[i*digestPiece : min((i+1)*digestPiece, len(mem))]
				// Mapped in one call, not one fault at a time (see attachPopulated).
				_ = unix.Madvise(piece, madvPopulateRead)
				sum := xxh3.Hash128(piece).Bytes()
				copy(sums[i*16:], sum[:])
			}
		})
	}
	wg.Wait()
	sum := xxh3.Hash128(sums).Bytes()
	return QuickDigestPrefix + hex.EncodeToString(sum[:]), nil
}

func digest(shmid int) (string, error) {
	mem, err := attachPopulated(shmid)
	if err != nil {
		return "", err
	}
	defer unix.SysvShmDetach(mem)
	sum := sha256.Sum256(mem)
	return hex.EncodeToString(sum[:]), nil
}

// madvPopulateRead is MADV_POPULATE_READ (Linux 5.14).
const madvPopulateRead = 22

// attachPopulated attaches segment shmid read-only with its pages mapped in one call
// (MADV_POPULATE_READ), not one fault at a time: reading 256 MiB that way costs 0.7 s of
// page faults on a VM, populated 0.12 s, hash included. The digests run while the
// workload is frozen. Without the call (older kernels) reading faults pages in as before.
func attachPopulated(shmid int) ([]byte, error) {
	mem, err := unix.SysvShmAttach(shmid, 0, unix.SHM_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	if len(mem) > 0 {
		_ = unix.Madvise(mem, madvPopulateRead) // an optimisation: EINVAL on old kernels
	}
	return mem, nil
}
