package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/pki"
	"github.com/migshm/migshm/internal/wait"
	"github.com/migshm/migshm/shmowner"
)

// newCA makes a cluster CA in a fresh directory and returns what issues node
// certificates of it, with their TLS configurations loaded.
func newCA(t *testing.T) func(name string, opts pki.NodeOptions) *pki.Config {
	t.Helper()
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := pki.InitCA(caDir, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return func(name string, opts pki.NodeOptions) *pki.Config {
		t.Helper()
		dir, err := pki.IssueNode(caDir, name, opts)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pki.Load(filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.NodeCertFile), filepath.Join(dir, pki.NodeKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func listen(t *testing.T, cfg *pki.Config) *StreamLayer {
	t.Helper()
	sl, err := ListenRaft("127.0.0.1:0", "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Close() })
	return sl
}

func TestListen(t *testing.T) {
	cfg := newCA(t)("n1", pki.NodeOptions{})
	for _, tt := range []struct {
		bind, advertise string
		want            string // Addr(); "127.0.0.1:*" for the bound port
		err             string
	}{
		{bind: "127.0.0.1:0", want: "127.0.0.1:*"},
		{bind: "0.0.0.0:0", advertise: "192.0.2.7:7420", want: "192.0.2.7:7420"},
		{bind: "127.0.0.1:0", advertise: "[2001:db8::7]:7420", want: "[2001:db8::7]:7420"},
		{bind: "0.0.0.0:0", err: "is unspecified, so other nodes cannot dial it: set an advertise address"},
		{bind: "[::]:0", err: "set an advertise address"},
		{bind: "127.0.0.1:0", advertise: "0.0.0.0:7420", err: "need the IP and port"},
		{bind: "127.0.0.1:0", advertise: "192.0.2.7:0", err: "need the IP and port"},
		{bind: "127.0.0.1:0", advertise: "192.0.2.7", err: `raft advertise address "192.0.2.7"`},
		{bind: "127.0.0.1:99999", err: "raft listen on 127.0.0.1:99999"},
	} {
		t.Run(tt.bind+" "+tt.advertise, func(t *testing.T) {
			sl, err := ListenRaft(tt.bind, tt.advertise, cfg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer sl.Close()
			a, ok := sl.Addr().(*net.TCPAddr)
			if !ok {
				t.Fatalf("Addr is a %T", sl.Addr())
			}
			want := tt.want
			if strings.HasSuffix(want, ":*") {
				want = strings.TrimSuffix(want, "*") + fmt.Sprint(sl.ln.Addr().(*net.TCPAddr).Port)
			}
			if a.String() != want {
				t.Errorf("Addr %s, want %s", a, want)
			}
		})
	}
	if _, err := ListenRaft("127.0.0.1:0", "", nil); err == nil {
		t.Error("Listen without a Config succeeded")
	}
}

func TestStreamLayerDial(t *testing.T) {
	issue := newCA(t)
	a := listen(t, issue("n1", pki.NodeOptions{}))
	b := listen(t, issue("n2", pki.NodeOptions{}))
	foreign := listen(t, newCA(t)("n3", pki.NodeOptions{}))

	// Same CA: the connection works and the accepting side knows who called. As raft's
	// transport does, the accepting side reads at once, which runs its handshake.
	type accepted struct {
		msg  string
		peer string
		err  error
	}
	done := make(chan accepted, 1)
	go func() {
		c, err := b.Accept()
		if err != nil {
			done <- accepted{err: err}
			return
		}
		defer c.Close()
		buf := make([]byte, 4)
		_, err = io.ReadFull(c, buf)
		done <- accepted{string(buf), pki.PeerName(c.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState()), err}
	}()
	c, err := a.Dial(raft.ServerAddress(b.Addr().String()), 5*time.Second)
	if err != nil {
		t.Fatalf("dial a node of the same CA: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.msg != "ping" || r.peer != "n1" {
		t.Fatalf("accepting side read %q from %q: %v; want ping from n1", r.msg, r.peer, r.err)
	}

	// Foreign CA: Dial itself fails, with the verification error.
	go func() {
		if c, err := foreign.Accept(); err == nil {
			io.Copy(io.Discard, c) // drives the handshake, which fails
			c.Close()
		}
	}()
	_, err = a.Dial(raft.ServerAddress(foreign.Addr().String()), 5*time.Second)
	var cve *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &cve) || !errors.As(err, &ua) {
		t.Fatalf("dial a node of another CA: %v, want a certificate verification error", err)
	}
}

func TestStreamLayerHandshakeTimeout(t *testing.T) {
	sl := listen(t, newCA(t)("n1", pki.NodeOptions{}))
	sl.handshakeTimeout = 100 * time.Millisecond
	raw, err := net.Dial("tcp", sl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close() // connects, then says nothing
	c, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		errc <- err
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read from a silent peer: %v, want a handshake timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read from a silent peer still blocked after 5 s")
	}
	if _, err := c.Write([]byte{1}); err == nil {
		t.Error("write after a failed handshake succeeded")
	}
}

// recordingStream records the errors of the dials raft makes.
type recordingStream struct {
	*StreamLayer
	mu   sync.Mutex
	errs map[raft.ServerAddress][]error
}

func (r *recordingStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := r.StreamLayer.Dial(addr, timeout)
	if err != nil {
		r.mu.Lock()
		r.errs[addr] = append(r.errs[addr], err)
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingStream) dialErrors(addr string) []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs[raft.ServerAddress(addr)]...)
}

// testRaftConfig is RaftConfig with a short commit timeout. The leader keeps raft's
// default lease (500 ms) and heartbeat and election timeouts (1 s): TestRaftOverTLS
// needs n0 to stay the leader, and under -race, TLS and a busy machine a 100 ms lease
// made it step down in about one run in four ("leadership lost while committing log").
func testRaftConfig(id string) *raft.Config {
	c := shmowner.RaftConfig(id)
	c.CommitTimeout = 10 * time.Millisecond
	return c
}

// openStore opens a shmowner store whose raft transport is trans, closed after the store.
func openStore(t *testing.T, id string, trans raft.Transport, bootstrap bool) *shmowner.Store {
	t.Helper()
	t.Cleanup(func() { trans.(raft.WithClose).Close() })
	s, err := shmowner.Open(shmowner.StoreConfig{
		NodeID: id, Dir: filepath.Join(t.TempDir(), id), Bootstrap: bootstrap, Transport: trans,
		Logger: hclog.NewNullLogger(), Raft: testRaftConfig(id),
	})
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRaftOverTLS(t *testing.T) {
	issue := newCA(t)
	ids := []string{"n0", "n1", "n2"}
	stores := make([]*shmowner.Store, len(ids))
	var rec *recordingStream
	for i, id := range ids {
		sl := listen(t, issue(id, pki.NodeOptions{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}))
		var trans raft.Transport
		if i == 0 {
			// The leader's transport is NewTransport's, with the dials recorded.
			rec = &recordingStream{StreamLayer: sl, errs: map[raft.ServerAddress][]error{}}
			trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
				Stream: rec, MaxPool: 3, Timeout: 10 * time.Second, Logger: hclog.NewNullLogger(),
			})
		} else {
			trans = NewTransport(sl, hclog.NewNullLogger())
		}
		stores[i] = openStore(t, id, trans, i == 0)
	}
	leader := stores[0]
	wait.For(t, 10*time.Second, "n0 to lead", func() (bool, string) {
		return leader.IsLeader(), leader.Raft().State().String()
	})
	for i := 1; i < len(ids); i++ {
		if err := leader.Join(ids[i], stores[i].Addr()); err != nil {
			t.Fatalf("join %s: %v", ids[i], err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: stores[1].Addr(), APIAddr: "127.0.0.1:7421"}
	if _, err := leader.Apply(ctx, shmowner.RegisterNodeType, reg); err != nil {
		t.Fatalf("register n1: %v", err)
	}
	for i, s := range stores {
		wait.For(t, 10*time.Second, ids[i]+" to see n1 in its table", func() (bool, string) {
			n := s.Table().Nodes()
			return len(n) == 1 && n[0].ID == reg.ID && n[0].RaftAddr == reg.RaftAddr && n[0].APIAddr == reg.APIAddr,
				fmt.Sprintf("nodes %+v", n)
		})
	}

	// A node of another CA that the leader is told to add never gets the table: the
	// leader's dials to it fail with a certificate verification error.
	fsl := listen(t, newCA(t)("evil", pki.NodeOptions{}))
	foreign := openStore(t, "evil", NewTransport(fsl, hclog.NewNullLogger()), false)
	if err := leader.Join("evil", foreign.Addr()); err != nil {
		t.Fatalf("join evil: %v", err) // a 3-of-4 quorum commits the change without it
	}
	wait.For(t, 5*time.Second, "the leader to fail dialling evil", func() (bool, string) {
		return len(rec.dialErrors(foreign.Addr())) > 0, "no failed dial"
	})
	for _, err := range rec.dialErrors(foreign.Addr()) {
		var cve *tls.CertificateVerificationError
		if !errors.As(err, &cve) {
			t.Fatalf("leader's dial to evil failed with %v, want a certificate verification error", err)
		}
	}
	if _, err := leader.Apply(ctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: "n2", RaftAddr: stores[2].Addr()}); err != nil {
		t.Fatalf("register n2 with evil in the configuration: %v", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if n := foreign.Table().Nodes(); len(n) != 0 {
			t.Fatalf("the foreign node received the table: %+v", n)
		}
		if idx := foreign.Raft().LastIndex(); idx != 0 {
			t.Fatalf("the foreign node received log entries up to %d", idx)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wait.For(t, 5*time.Second, "n2 to see both nodes", func() (bool, string) {
		n := stores[2].Table().Nodes()
		return len(n) == 2, fmt.Sprintf("nodes %+v", n)
	})
}
