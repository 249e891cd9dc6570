// Package ownnet gives a workload a network namespace and an address of its own, which
// move with it: a macvlan (mode bridge) on the node's interface to the cluster's network,
// named eth0 inside, with the workload's address, a MAC derived from it, and loopback.
//
// CRIU dumps such a namespace with the tree (addresses, routes, sysctls, the macvlan with
// its MAC) and re-creates the macvlan on the target's parent interface
// (External "macvlan[eth0]:PARENT"), so peers' ARP caches stay right and the switch learns
// the new port from the first frame. A macvlan needs nothing set up on the node (no
// bridge to enslave the node's interface to); its one limit is that the workload and its
// own node cannot reach each other over it.
package ownnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"github.com/migshm/migshm/internal/nsutil"
	"golang.org/x/sys/unix"
)

// Inside is the name of the workload's interface in its own namespace.
const Inside = "eth0"

// Config says what network a workload gets.
type Config struct {
	// Parent is the node's interface to the cluster's network (e.g. "eth0").
	Parent string
	// Addr is the workload's address and the prefix of the network it is on.
	Addr netip.Prefix
	// Gateway, if valid, is the default route.
	Gateway netip.Addr
}

// MAC is the address a workload's interface gets: locally administered, derived from its
// IPv4 address (02:6d:a.b.c.d), so it is the same on every node it runs on.
func MAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x02, 0x6d, a[0], a[1], a[2], a[3]}
}

// Create makes a network namespace for a workload on the node whose namespace is nodeNS
// ("" for this process's): the caller starts the workload in it through the path
// "/proc/self/fd/N" of the returned file and closes the file once the workload runs.
func Create(cfg Config, nodeNS string) (*os.File, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("workload address %v: want an IPv4 address with its prefix, e.g. 10.0.0.50/24", cfg.Addr)
	}
	if cfg.Parent == "" {
		return nil, errors.New("workload address: no parent interface given")
	}
	ns, err := newNetNS()
	if err != nil {
		return nil, err
	}
	if err := configure(cfg, nodeNS, ns); err != nil {
		ns.Close()
		return nil, fmt.Errorf("workload address %v on %s: %w", cfg.Addr, cfg.Parent, err)
	}
	return ns, nil
}

// newNetNS creates an empty network namespace and returns a file that holds it.
func newNetNS() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("create network namespace: %w", err)}
			return
		}
		f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// Path returns the path through which this process reaches the namespace ns holds.
func Path(ns *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", ns.Fd()) }

func configure(cfg Config, nodeNS string, ns *os.File) error {
	tmp := fmt.Sprintf("mv%x", []byte(MAC(cfg.Addr.Addr())[2:]))
	err := nsutil.Do(nsutil.Net, nodeNS, func() error {
		if err := ip(nil, "link", "add", tmp, "link", cfg.Parent, "type", "macvlan", "mode", "bridge"); err != nil {
			return err
		}
		// The child sees ns as its fd 3.
		if err := ip([]*os.File{ns}, "link", "set", tmp, "netns", "/proc/self/fd/3"); err != nil {
			_ = ip(nil, "link", "del", tmp)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return nsutil.Do(nsutil.Net, Path(ns), func() error {
		steps := [][]string{
			{"link", "set", tmp, "name", Inside, "address", MAC(cfg.Addr.Addr()).String()},
			{"addr", "add", cfg.Addr.String(), "dev", Inside},
			{"link", "set", Inside, "up"},
			{"link", "set", "lo", "up"},
		}
		if cfg.Gateway.IsValid() {
			steps = append(steps, []string{"route", "add", "default", "via", cfg.Gateway.String()})
		}
		for _, s := range steps {
			if err := ip(nil, s...); err != nil {
				return err
			}
		}
		return nil
	})
}

// ip runs the ip tool in the calling thread's network namespace.
func ip(files []*os.File, args ...string) error {
	cmd := exec.Command("ip", args...)
	cmd.ExtraFiles = files
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Own reports whether process pid lives in a network namespace other than the one at
// nodeNS ("" for this process's): the tree then carries its own network.
func Own(pid int, nodeNS string) bool {
	if nodeNS == "" {
		nodeNS = "/proc/self/ns/net"
	}
	return nsutil.Differ(nodeNS, fmt.Sprintf("/proc/%d/ns/net", pid))
}

// Release undoes what a dump that left the tree stopped (CRIU's --leave-stopped) did to
// a tree with its own network, so that the tree can run on where it was (an aborted
// move): CRIU leaves the namespace locked (its "inet CRIU-..." nftables table drops
// every packet) and the tree's TCP connections in repair mode, expecting the tree to be
// killed. Release deletes the lock tables and turns repair off on every TCP socket of
// pids (the processes of the tree), which sends a window probe that restarts the flow.
func Release(pids []int) error {
	if len(pids) == 0 {
		return nil
	}
	nsPath := fmt.Sprintf("/proc/%d/ns/net", pids[0])
	err := nsutil.Do(nsutil.Net, nsPath, func() error {
		out, err := exec.Command("nft", "list", "tables").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft list tables: %v: %s", err, bytes.TrimSpace(out))
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line) // "table inet CRIU-<run id>"
			if len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "CRIU-") {
				if out, err := exec.Command("nft", "delete", "table", f[1], f[2]).CombinedOutput(); err != nil {
					return fmt.Errorf("nft delete table %s %s: %v: %s", f[1], f[2], err, bytes.TrimSpace(out))
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("unlock the network of pid %d: %w", pids[0], err)
	}
	for _, pid := range pids {
		if err := repairOff(pid); err != nil {
			return err
		}
	}
	return nil
}

// repairOff turns TCP repair mode off on every TCP socket process pid holds.
func repairOff(pid int) error {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if errors.Is(err, os.ErrNotExist) {
		return nil // gone
	}
	if err != nil {
		return fmt.Errorf("repair off in pid %d: %w", pid, err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("repair off in pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	for _, e := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if tcpConnection(fd) {
			err = unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("repair off on fd %d of pid %d: %w", n, pid, err)
		}
	}
	return nil
}

// tcpConnection reports whether fd is a TCP socket that is not listening: the kernel
// refuses repair mode on listeners, and CRIU puts none in it.
func tcpConnection(fd int) bool {
	dom, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	proto, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	listening, err3 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	return err1 == nil && err2 == nil && err3 == nil && listening == 0 &&
		(dom == unix.AF_INET || dom == unix.AF_INET6) && proto == unix.IPPROTO_TCP
}
