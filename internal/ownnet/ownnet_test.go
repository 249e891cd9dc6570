package ownnet

import (
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
