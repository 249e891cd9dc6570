package ownnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestMAC(t *testing.T) {
	if got, want := MAC(netip.MustParseAddr("10.213.0.200")).String(), "02:6d:0a:d5:00:c8"; got != want {
		t.Errorf("MAC = %s, want %s", got, want)
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Parent: "eth0"}, "want an IPv4 address with its prefix"},
		{Config{Parent: "eth0", Addr: netip.MustParsePrefix("fd00::5/64")}, "want an IPv4 address"},
		{Config{Addr: netip.MustParsePrefix("10.0.0.5/24")}, "no parent interface"},
	} {
		ns, err := Create(tc.cfg, "")
		if err == nil {
			ns.Close()
			t.Errorf("Create(%+v) succeeded", tc.cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%+v) = %v, want it to say %q", tc.cfg, err, tc.want)
		}
	}
}

func TestResolve(t *testing.T) {
	n := Network{Parent: "eth0", Subnet: netip.MustParsePrefix("10.0.0.0/24"), Self: netip.MustParseAddr("10.0.0.11"),
		Pool: netip.MustParsePrefix("10.0.0.0/30"), Gateway: netip.MustParseAddr("10.0.0.1")}
	held := map[netip.Addr]bool{}
	taken := func(a netip.Addr) bool { return held[a] }
	for _, c := range []struct{ req, want, err string }{
		{req: "auto", want: "10.0.0.2/24"}, // .0 is the network's, .1 the gateway's
		{req: "10.0.0.3", want: "10.0.0.3/24"},
		{req: "10.0.0.3/24", want: "10.0.0.3/24"},
		{req: "10.0.0.3/16", err: "does not fit the node's network"},
		{req: "10.0.0.9", err: "outside the workload address pool"},
		{req: "10.1.0.3", err: "not on the node's network"},
		{req: "10.0.0.1", err: "gateway"},
		{req: "10.0.0.0", err: "network's"},
		{req: "fe80::1", err: "want an IPv4"},
		{req: "ten", err: "want an IPv4"},
		{req: "10.0.0.3/x", err: "want ADDR"},
	} {
		got, err := n.Resolve(c.req, taken)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Resolve(%q) = %v, %v; want error with %q", c.req, got, err, c.err)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("Resolve(%q) = %v, %v; want %s", c.req, got, err, c.want)
		}
	}
	held[netip.MustParseAddr("10.0.0.2")] = true
	if got, err := n.Resolve("auto", taken); err != nil || got.String() != "10.0.0.3/24" {
		t.Errorf("auto with .2 taken = %v, %v", got, err)
	}
	if _, err := n.Resolve("10.0.0.2", taken); err == nil || !strings.Contains(err.Error(), "taken") {
		t.Errorf("taken address: %v", err)
	}
	if f := n.Free(taken); f != 1 {
		t.Errorf("Free = %d with .2 taken, want 1 (.3)", f)
	}
	held[netip.MustParseAddr("10.0.0.3")] = true
	if _, err := n.Resolve("auto", taken); !errors.Is(err, ErrNoAddress) {
		t.Errorf("full pool: %v", err)
	}
	// .255 is the broadcast of a /24.
	n.Pool = netip.MustParsePrefix("10.0.0.254/31")
	if !n.usable(netip.MustParseAddr("10.0.0.254")) || n.usable(netip.MustParseAddr("10.0.0.255")) {
		t.Error("usable: broadcast")
	}
	if _, err := (Network{}).Resolve("auto", taken); err == nil || !strings.Contains(err.Error(), "ip-parent") {
		t.Errorf("no network: %v", err)
	}
}
