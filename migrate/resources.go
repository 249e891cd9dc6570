package migrate

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/migshm/migshm/internal/procfs"
	"github.com/migshm/migshm/workload"
)

// Blocker is a resource of the tree that CRIU cannot carry to another node.
type Blocker struct {
	Pid int // host pid holding it (the lowest, when several processes share it)
	// Reason is machine-readable: one of the Blocker* constants.
	Reason string
	// Detail says what it is, who holds it and what to do.
	Detail string
}

// Reasons of a Blocker.
const (
	// BlockerTCPEstablished: a TCP connection (any connected state). CRIU carries
	// established connections only with --tcp-established, and only to a node with the
	// same addresses.
	BlockerTCPEstablished = "tcp-established"
	// BlockerTCPListenAddress: a TCP socket listening on an address of this node only.
	BlockerTCPListenAddress = "tcp-listen-address"
	// BlockerTCPBoundAddress: an unconnected TCP socket bound to an address of this
	// node only; restore would bind it again and fail.
	BlockerTCPBoundAddress = "tcp-bound-address"
	BlockerIOURing         = "io-uring"
	BlockerPerfEvent       = "perf-event"
	BlockerUserfaultfd     = "userfaultfd"
	// BlockerDevice: a character or block device other than /dev/{null,zero,full,random,urandom}.
	BlockerDevice = "device"
	// BlockerTerminal: a tty or pty.
	BlockerTerminal = "terminal"
	// BlockerDeletedFile: an open or mapped regular file that was deleted.
	BlockerDeletedFile = "deleted-file"
	// BlockerProcFile: an open file under /proc/<pid>/ of the host's /proc: it is recorded
	// by its host pid, which the restored tree does not have, so CRIU cannot reopen it.
	// (A workload started by migshm has a /proc of its own, whose files move.)
	BlockerProcFile = "proc-file"
)

// CarriedWithOwnNetwork reports whether a blocker of reason is none for a tree that has
// its own network namespace and address (`migshm run --ip`): CRIU carries the namespace,
// the connections and the sockets bound to its address with it.
func CarriedWithOwnNetwork(reason string) bool {
	switch reason {
	case BlockerTCPEstablished, BlockerTCPListenAddress, BlockerTCPBoundAddress:
		return true
	}
	return false
}

const deletedSuffix = " (deleted)"

// isSysV reports whether a path names a SysV shm segment (see procfs.SysVKey).
func isSysV(path string) bool {
	_, ok := procfs.SysVKey(path)
	return ok
}

// kernelObject reports whether a path of /proc/PID/maps or fd names memory the kernel
// made rather than a file anybody could reopen: SysV segments, memfds, shared anonymous
// memory, AIO rings, anonymous huge pages. CRIU carries all of these itself.
func kernelObject(path string) bool {
	switch {
	case isSysV(path),
		strings.HasPrefix(path, "/memfd:"),
		path == "/dev/zero"+deletedSuffix,
		path == "/[aio]"+deletedSuffix,
		path == "/anon_hugepage"+deletedSuffix,
		strings.HasPrefix(path, "/dmabuf:"):
		return true
	}
	return false
}

// procPidFile reports whether path lies under /proc/<pid> (or is it).
func procPidFile(path string) bool {
	rest, ok := strings.CutPrefix(strings.TrimSuffix(path, deletedSuffix), "/proc/")
	if !ok {
		return false
	}
	first, _, _ := strings.Cut(rest, "/")
	_, err := strconv.Atoi(first)
	return err == nil
}

// harmlessDevices are the devices every node has and CRIU reopens by path.
var harmlessDevices = map[string]bool{
	"/dev/null": true, "/dev/zero": true, "/dev/full": true, "/dev/random": true, "/dev/urandom": true,
}

func isTerminal(path string) bool {
	return strings.HasPrefix(path, "/dev/pts/") || strings.HasPrefix(path, "/dev/tty") ||
		path == "/dev/ptmx" || path == "/dev/console"
}

// tcpState names the states of /proc/net/tcp.
var tcpState = map[uint8]string{
	0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1", 0x05: "FIN_WAIT2",
	0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT", 0x09: "LAST_ACK", 0x0A: "LISTEN",
	0x0B: "CLOSING", 0x0C: "NEW_SYN_RECV",
}

const (
	tcpEstablished = 0x01
	tcpClose       = 0x07
	tcpListen      = 0x0A
)

// inetSocket is one line of /proc/net/tcp, tcp6, udp or udp6.
type inetSocket struct {
	local, remote netip.AddrPort
	state         uint8
	udp           bool // a UDP socket (read from /proc/net/udp, same format)
}

// parseTCP parses /proc/net/tcp or tcp6 into sockets by inode. Sockets without an inode
// (TIME_WAIT, request sockets) belong to no file descriptor and are left out.
func parseTCP(r io.Reader) (map[uint64]inetSocket, error) {
	out := map[uint64]inetSocket{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad inode in %q", sc.Text())
		}
		if inode == 0 {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("bad state in %q", sc.Text())
		}
		local, err := parseTCPAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("%v in %q", err, sc.Text())
		}
		remote, err := parseTCPAddr(f[2])
		if err != nil {
			return nil, fmt.Errorf("%v in %q", err, sc.Text())
		}
		out[inode] = inetSocket{local: local, remote: remote, state: uint8(st)}
	}
	return out, sc.Err()
}

// parseTCPAddr parses "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6). The
// kernel prints the address as 32-bit words in host byte order, the port as a number.
func parseTCPAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(a) != 8 && len(a) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// nodeLocal reports whether an address belongs to this node alone: neither the wildcard
// nor loopback, which every node has.
func nodeLocal(a netip.Addr) bool {
	a = a.Unmap()
	return !a.IsUnspecified() && !a.IsLoopback()
}

// inetSockets reads the TCP and UDP sockets of pid's network namespace, as pid sees them.
func (v procView) inetSockets(pid int) (map[uint64]inetSocket, error) {
	all := map[uint64]inetSocket{}
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(v.path(pid, "net", name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // no IPv6, or the process is gone
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		socks, err := parseTCP(f)
		f.Close()
		if gone(err) {
			continue
		}
		if err != nil {
			return nil, readErr(pid, "net/"+name, err)
		}
		for k, s := range socks {
			s.udp = strings.HasPrefix(name, "udp")
			all[k] = s
		}
	}
	return all, nil
}

// finding is one blocker while it is being collected: the object, who holds it, how.
type finding struct {
	reason, what, fix string
	pid               int
	comm              string
	fds               []int
	mapped            bool
	others            []int
}

type findings struct {
	byKey map[string]*finding
	order []*finding
}

// add records that p holds the object key (through fd, or a mapping if fd < 0).
func (fl *findings) add(key string, p workload.Proc, fd int, reason, what, fix string) {
	f, ok := fl.byKey[key]
	if !ok {
		f = &finding{reason: reason, what: what, fix: fix, pid: p.Pid, comm: p.Comm}
		fl.byKey[key] = f
		fl.order = append(fl.order, f)
	}
	switch {
	case f.pid != p.Pid:
		if len(f.others) == 0 || f.others[len(f.others)-1] != p.Pid {
			f.others = append(f.others, p.Pid)
		}
	case fd >= 0:
		f.fds = append(f.fds, fd)
	default:
		f.mapped = true
	}
}

func (f *finding) blocker() Blocker {
	var how []string
	switch len(f.fds) {
	case 0:
	case 1:
		how = append(how, fmt.Sprintf("fd %d", f.fds[0]))
	default:
		s := make([]string, len(f.fds))
		for i, n := range f.fds {
			s[i] = strconv.Itoa(n)
		}
		how = append(how, "fds "+strings.Join(s, ", "))
	}
	if f.mapped && len(f.fds) > 0 {
		how = append(how, "mapped")
	}
	where := strings.Join(how, ", ")
	if len(f.others) > 0 {
		s := make([]string, len(f.others))
		for i, n := range f.others {
			s[i] = strconv.Itoa(n)
		}
		word := "pid"
		if len(s) > 1 {
			word = "pids"
		}
		if where != "" {
			where += "; "
		}
		where += fmt.Sprintf("also held by %s %s", word, strings.Join(s, ", "))
	}
	if where != "" {
		where = " (" + where + ")"
	}
	return Blocker{
		Pid:    f.pid,
		Reason: f.reason,
		Detail: fmt.Sprintf("pid %d (%s) %s%s; %s", f.pid, f.comm, f.what, where, f.fix),
	}
}

const (
	fixTCPEstablished = "a connection moves only with its address: start the workload with an address of its own " +
		"(`migshm run --ip`), which moves with it, or close the connection"
	fixTCPAddress = "the target node has another address, so CRIU could not restore the socket there: bind to 0.0.0.0 or :: instead, " +
		"or start the workload with an address of its own (`migshm run --ip`)"
	fixIOURing     = "CRIU cannot checkpoint io_uring instances: stop using io_uring (close the ring) before moving it"
	fixPerfEvent   = "CRIU cannot checkpoint perf events: close it (stop the profiler or tracer using it)"
	fixUserfaultfd = "CRIU cannot checkpoint a userfaultfd the workload owns: close it"
	fixDevice      = "CRIU cannot move an open device to another node: close it"
	fixTerminal    = "CRIU cannot move a terminal to another node: start the workload with its input and output on files (`migshm run` does) and close the terminal"
	fixDeleted     = "CRIU reopens files by path on the target and this one has none (replaced or removed while the workload ran): restart the workload so it uses the current file, or close it"
	fixProcFile    = "it is on the host's /proc and recorded by the host pid, which the restored tree does not have, so CRIU cannot reopen it on the target: close it, or start the program with `migshm run`, which gives it a /proc of its own"
)

// blockers returns what cannot move among the open files and mappings of procs (nil if
// nothing), in pid order, and how many TCP and UDP sockets they hold. A resource shared
// by several processes (an inherited socket or terminal) is reported once, by its
// lowest pid, naming the others.
func blockers(v procView, procs []procFiles) (_ []Blocker, inet int, _ error) {
	seenInet := map[uint64]bool{}
	found := &findings{byKey: map[string]*finding{}}
	// TCP and UDP tables by network namespace: every process of a workload normally shares one.
	inetByNS := map[string]map[uint64]inetSocket{}
	for _, pf := range procs {
		p := pf.proc
		var socks map[uint64]inetSocket
		for _, fd := range pf.fds {
			link := fd.link
			switch {
			case strings.HasPrefix(link, "socket:["):
				inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]"), 10, 64)
				if err != nil {
					continue
				}
				if socks == nil {
					ns, err := os.Readlink(v.path(p.Pid, "ns", "net"))
					if err != nil {
						ns = "pid " + strconv.Itoa(p.Pid)
					}
					if socks = inetByNS[ns]; socks == nil {
						if socks, err = v.inetSockets(p.Pid); err != nil {
							return nil, 0, err
						}
						inetByNS[ns] = socks
					}
				}
				s, ok := socks[inode]
				if !ok {
					continue // unix, netlink... CRIU carries those
				}
				if !seenInet[inode] {
					seenInet[inode] = true
					inet++
				}
				if s.udp {
					continue
				}
				key := "socket " + strconv.FormatUint(inode, 10)
				switch {
				case s.state == tcpListen:
					if nodeLocal(s.local.Addr()) {
						found.add(key, p, fd.fd, BlockerTCPListenAddress,
							fmt.Sprintf("listens on TCP %s, an address of this node only", s.local), fixTCPAddress)
					}
				case s.state == tcpClose:
					if nodeLocal(s.local.Addr()) {
						found.add(key, p, fd.fd, BlockerTCPBoundAddress,
							fmt.Sprintf("has a TCP socket bound to %s, an address of this node only", s.local), fixTCPAddress)
					}
				case s.state == tcpEstablished:
					found.add(key, p, fd.fd, BlockerTCPEstablished,
						fmt.Sprintf("has an established TCP connection %s -> %s", s.local, s.remote), fixTCPEstablished)
				default:
					found.add(key, p, fd.fd, BlockerTCPEstablished,
						fmt.Sprintf("has a TCP connection %s -> %s in state %s", s.local, s.remote, stateName(s.state)), fixTCPEstablished)
				}
			case link == "anon_inode:[io_uring]":
				found.add(fmt.Sprintf("io_uring %d/%d", p.Pid, fd.fd), p, fd.fd, BlockerIOURing, "uses io_uring", fixIOURing)
			case link == "anon_inode:[perf_event]":
				found.add(fmt.Sprintf("perf %d/%d", p.Pid, fd.fd), p, fd.fd, BlockerPerfEvent, "has a perf event open", fixPerfEvent)
			case link == "anon_inode:[userfaultfd]":
				found.add(fmt.Sprintf("uffd %d/%d", p.Pid, fd.fd), p, fd.fd, BlockerUserfaultfd, "has a userfaultfd open", fixUserfaultfd)
			case strings.HasPrefix(link, "/"):
				if err := checkFile(v, found, p, fd.fd, v.path(p.Pid, "fd", strconv.Itoa(fd.fd)), link); err != nil {
					return nil, 0, err
				}
			}
		}
		for _, m := range pf.maps {
			if err := checkFile(v, found, p, -1, v.mapFile(p.Pid, m), m.Path); err != nil {
				return nil, 0, err
			}
		}
	}
	if len(found.order) == 0 {
		return nil, inet, nil
	}
	out := make([]Blocker, len(found.order))
	for i, f := range found.order {
		out[i] = f.blocker()
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	return out, inet, nil
}

func stateName(st uint8) string {
	if n, ok := tcpState[st]; ok {
		return n
	}
	return fmt.Sprintf("%#02x", st)
}

// checkFile classifies a path a process has open (fd >= 0) or mapped (fd < 0).
func checkFile(v procView, found *findings, p workload.Proc, fd int, procPath, path string) error {
	if kernelObject(path) {
		return nil
	}
	if fd >= 0 && procPidFile(path) && !v.ownProc(p.Pid, fd) {
		found.add("file "+path, p, fd, BlockerProcFile, "has "+path+" open", fixProcFile)
		return nil
	}
	name := strings.TrimSuffix(path, deletedSuffix)
	deleted := name != path
	info, err := v.stat(procPath, path)
	var mode fs.FileMode
	switch {
	case err == nil:
		mode = info.Mode()
	case errors.Is(err, fs.ErrNotExist):
		return nil // closed or unmapped meanwhile
	default:
		// Cannot tell (a hung network file system, say): judge by the name.
		if strings.HasPrefix(name, "/dev/") && !strings.HasPrefix(name, "/dev/shm/") {
			mode = fs.ModeDevice | fs.ModeCharDevice
		}
	}
	verb := "has"
	obj := "open"
	if fd < 0 {
		verb, obj = "maps", ""
	}
	switch {
	case mode&fs.ModeDevice != 0:
		if harmlessDevices[name] {
			return nil
		}
		if isTerminal(name) {
			found.add("file "+name, p, fd, BlockerTerminal, strings.TrimSpace(fmt.Sprintf("%s the terminal %s %s", verb, name, obj)), fixTerminal)
			return nil
		}
		kind := "character device"
		if mode&fs.ModeCharDevice == 0 {
			kind = "block device"
		}
		found.add("file "+name, p, fd, BlockerDevice, strings.TrimSpace(fmt.Sprintf("%s the %s %s %s", verb, kind, name, obj)), fixDevice)
	case deleted && (mode.IsRegular() || err != nil):
		found.add("file "+path, p, fd, BlockerDeletedFile, strings.TrimSpace(fmt.Sprintf("%s the deleted file %s %s", verb, name, obj)), fixDeleted)
	}
	return nil
}
