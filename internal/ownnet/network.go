package ownnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Network is what a node offers workloads that get an address of their own: its
// interface to the cluster's network (Parent), that network (Subnet, read from the
// interface), the addresses workloads may take (Pool, inside Subnet) and their default
// route (Gateway, optional). The zero Network offers none.
type Network struct {
	Parent  string
	Subnet  netip.Prefix // the network Parent is on, e.g. 10.0.0.0/24
	Self    netip.Addr   // Parent's own address, never handed out
	Pool    netip.Prefix
	Gateway netip.Addr
}

// Enabled reports whether the node offers addresses of their own.
func (n Network) Enabled() bool { return n.Parent != "" }

// Discover reads the node's network from its interface parent (in the calling thread's
// network namespace) and checks that pool and gateway lie on it.
func Discover(parent string, pool netip.Prefix, gateway netip.Addr) (Network, error) {
	ifc, err := net.InterfaceByName(parent)
	if err != nil {
		return Network{}, fmt.Errorf("ip-parent %s: %w (give this node's interface to the cluster's network, see `ip -br addr`)", parent, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return Network{}, fmt.Errorf("ip-parent %s: %w", parent, err)
	}
	n := Network{Parent: parent, Pool: pool.Masked(), Gateway: gateway}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		self, _ := netip.AddrFromSlice(ipn.IP.To4())
		bits, _ := ipn.Mask.Size()
		if p := netip.PrefixFrom(self, bits).Masked(); p.Contains(pool.Addr()) {
			n.Subnet, n.Self = p, self
			break
		}
	}
	if !n.Subnet.IsValid() {
		return Network{}, fmt.Errorf("ip-pool %v is on none of the IPv4 networks of ip-parent %s; give a range of the network %s is on",
			pool, parent, parent)
	}
	if pool.Bits() < n.Subnet.Bits() {
		return Network{}, fmt.Errorf("ip-pool %v is larger than the network %v of ip-parent %s", pool, n.Subnet, parent)
	}
	if gateway.IsValid() && !n.Subnet.Contains(gateway) {
		return Network{}, fmt.Errorf("ip-gateway %v is not on the network %v of ip-parent %s", gateway, n.Subnet, parent)
	}
	return n, nil
}

// Auto is the address request that takes the first free address of the pool.
const Auto = "auto"

// ErrNoAddress: the pool has no free address left.
var ErrNoAddress = errors.New("no free address")

// Resolve turns an address request into the workload's address with the prefix of the
// node's network: ADDR or ADDR/PREFIX (which must be the network's), inside the pool,
// or Auto for the first address of the pool that taken says is free (never the
// network's or broadcast address, the node's own or the gateway). An ADDR another
// workload holds is refused here when taken knows it; the table refuses it otherwise.
func (n Network) Resolve(req string, taken func(netip.Addr) bool) (netip.Prefix, error) {
	if !n.Enabled() {
		return netip.Prefix{}, errors.New("this node offers workloads no address of their own: set ip-parent and ip-pool in its migshmd settings " +
			"(see deploy/systemd/README.md)")
	}
	if req == Auto {
		for a := n.Pool.Addr(); n.Pool.Contains(a); a = a.Next() {
			if n.usable(a) && !taken(a) {
				return netip.PrefixFrom(a, n.Subnet.Bits()), nil
			}
		}
		return netip.Prefix{}, fmt.Errorf("ip-pool %v: every address is taken: %w", n.Pool, ErrNoAddress)
	}
	addr, bits := req, n.Subnet.Bits()
	if s, b, ok := strings.Cut(req, "/"); ok {
		p, err := netip.ParsePrefix(req)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("--ip %q: want ADDR, ADDR/PREFIX or auto: %v", req, err)
		}
		if p.Bits() != n.Subnet.Bits() {
			return netip.Prefix{}, fmt.Errorf("--ip %s: the prefix /%s does not fit the node's network %v; give /%d or leave it out",
				req, b, n.Subnet, n.Subnet.Bits())
		}
		addr = s
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("--ip %q: want an IPv4 ADDR, ADDR/PREFIX or auto", req)
	}
	switch {
	case !n.Subnet.Contains(a):
		return netip.Prefix{}, fmt.Errorf("--ip %s is not on the node's network %v", req, n.Subnet)
	case !n.Pool.Contains(a):
		return netip.Prefix{}, fmt.Errorf("--ip %s is outside the workload address pool %v (ip-pool); pick one inside it, or auto", req, n.Pool)
	case !n.usable(a):
		return netip.Prefix{}, fmt.Errorf("--ip %s is the network's, its broadcast, the gateway's or this node's own address", req)
	case taken(a):
		return netip.Prefix{}, fmt.Errorf("--ip %s is taken by another workload; pick another, or auto", req)
	}
	return netip.PrefixFrom(a, bits), nil
}

// Free counts the addresses of the pool a workload could take: usable, and not taken.
func (n Network) Free(taken func(netip.Addr) bool) int {
	free := 0
	for a := n.Pool.Addr(); n.Pool.Contains(a); a = a.Next() {
		if n.usable(a) && !taken(a) {
			free++
		}
	}
	return free
}

// usable reports whether a may be handed to a workload.
func (n Network) usable(a netip.Addr) bool {
	b := n.Subnet.Addr().As4()
	host := uint32(1)<<(32-n.Subnet.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	broadcast := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return a != n.Subnet.Addr() && a != broadcast && a != n.Self && a != n.Gateway
}

// Config returns what Create needs for address addr.
func (n Network) Config(addr netip.Prefix) Config {
	return Config{Parent: n.Parent, Addr: addr, Gateway: n.Gateway}
}
