package ownnet

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/migshm/migshm/internal/nsutil"
	"golang.org/x/sys/unix"
)

// holdTable is the nftables table that keeps a restored tree's network shut until its
// move commits.
const holdTable = "migshm-hold"

// Hold shuts the network namespace of process pid (a tree restored on a move's target,
// not yet committed): every packet in or out is dropped, so that the target's kernel
// neither answers nor acknowledges what the source may still have to, should the move
// abort. CRIU unlocks the namespace when its restore returns; this table stays until
// Unhold.
func Hold(pid int) error {
	rules := "add table inet " + holdTable + "\n" +
		"add chain inet " + holdTable + " in { type filter hook input priority -300; policy drop; }\n" +
		"add chain inet " + holdTable + " out { type filter hook output priority -300; policy drop; }\n"
	return nftIn(pid, rules, "hold the network")
}

// Unhold removes Hold's table from pid's network namespace, if it is there.
func Unhold(pid int) error {
	// "destroy" would need nft >= 1.0.8; add-then-delete works with any.
	return nftIn(pid, "add table inet "+holdTable+"\ndelete table inet "+holdTable+"\n", "open the network")
}

// nftIn runs the nft script rules in pid's network namespace.
func nftIn(pid int, rules, what string) error {
	return nsutil.Do(nsutil.Net, fmt.Sprintf("/proc/%d/ns/net", pid), func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s of pid %d: nft: %v: %s", what, pid, err, bytes.TrimSpace(out))
		}
		return nil
	})
}

// Announce sends a gratuitous ARP for the address of Inside in pid's network namespace,
// so that the switch learns the interface's new port and peers refresh their caches
// at once, before the tree sends anything itself.
func Announce(pid int) error {
	return nsutil.Do(nsutil.Net, fmt.Sprintf("/proc/%d/ns/net", pid), func() error {
		ifc, err := net.InterfaceByName(Inside)
		if err != nil {
			return fmt.Errorf("announce the address of pid %d: %w", pid, err)
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return fmt.Errorf("announce the address of pid %d: %w", pid, err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				ip, _ := netip.AddrFromSlice(ipn.IP.To4())
				if err := gratuitousARP(ifc, ip); err != nil {
					return fmt.Errorf("announce %v from pid %d: %w", ip, pid, err)
				}
			}
		}
		return nil
	})
}

// gratuitousARP broadcasts an ARP request for ip from ip on ifc (RFC 5227's
// announcement).
func gratuitousARP(ifc *net.Interface, ip netip.Addr) error {
	const ethPArp = 0x0806
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(ethPArp)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	a := ip.As4()
	pkt := make([]byte, 28)
	binary.BigEndian.PutUint16(pkt[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(pkt[2:], 0x0800) // IPv4
	pkt[4], pkt[5] = 6, 4
	binary.BigEndian.PutUint16(pkt[6:], 1) // request
	copy(pkt[8:], ifc.HardwareAddr)
	copy(pkt[14:], a[:])
	copy(pkt[24:], a[:]) // target hardware address left zero
	to := &unix.SockaddrLinklayer{Protocol: htons(ethPArp), Ifindex: ifc.Index, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return unix.Sendto(fd, pkt, 0, to)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
