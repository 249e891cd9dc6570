package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/migshm/migshm/internal/cluster"
	"github.com/migshm/migshm/internal/metrics"
	"github.com/migshm/migshm/shmowner"
	"github.com/migshm/migshm/shmowner/record"
)

func TestMetricsAddrConfig(t *testing.T) {
	for _, tt := range []struct {
		addr, wantErr string
	}{
		{"", ""},
		{"127.0.0.1:9641", ""},
		{":9641", ""},
		{"[::1]:9641", ""},
		{"9641", "metrics-addr"},
		{"0.0.0.0:7421", "metrics-addr"}, // the peer API's
	} {
		c := Config{DataDir: t.TempDir(), MetricsAddr: tt.addr}
		err := c.Normalize()
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("metrics-addr %q: %v, want error containing %q", tt.addr, err, tt.wantErr)
		}
	}
}

// TestMetricsServer starts the metrics server of a daemon on a real one-node Raft store,
// commits a command through d.apply and scrapes /metrics over TCP.
func TestMetricsServer(t *testing.T) {
	store, err := shmowner.Open(shmowner.StoreConfig{NodeID: "n1", Dir: t.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: true,
		Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := store.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{cfg: Config{NodeID: "n1", MetricsAddr: "127.0.0.1:0"}, log: slog.New(slog.DiscardHandler)}
	d.metrics = metrics.New("n1", store)
	d.cluster = cluster.New(cluster.Config{Self: "n1", Store: store, Log: d.log, OnApply: d.metrics.ObserveApply})
	if err := d.serveMetrics(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, s := range d.servers {
			s.Close()
		}
		d.wg.Wait()
	}()
	if err := d.cluster.Apply(ctx, shmowner.RegisterNodeType, shmowner.RegisterNodeRequest{ID: "n1", RaftAddr: store.Addr(), APIAddr: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := d.cluster.Apply(ctx, shmowner.SetNodeStateType, shmowner.SetNodeStateRequest{ID: "nobody", State: record.NodeDraining}); !errors.Is(err, record.ErrUnknownNode) {
		t.Fatalf("draining an unknown node: %v, want ErrUnknownNode", err)
	}

	resp, err := http.Get("http://" + d.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %v", resp.Status, err)
	}
	body := string(b)
	for _, w := range []string{
		`migshm_raft_state{state="leader"} 1`,
		`migshm_raft_last_contact_seconds 0`,
		`migshm_raft_peers 0`, // no other voter
		`migshm_node_up{node="n1"} 1`,
		`migshm_raft_apply_seconds_count{outcome="ok",type="RegisterNode"} 1`,
		`migshm_raft_apply_seconds_count{outcome="error",type="SetNodeState"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %q:\n%s", w, body)
		}
	}

	// A second daemon on the same address fails to start, naming the setting.
	d2 := &Daemon{cfg: Config{NodeID: "n2", MetricsAddr: d.metricsAddr}, log: slog.New(slog.DiscardHandler), metrics: d.metrics}
	if err := d2.serveMetrics(); err == nil || !strings.Contains(err.Error(), "metrics-addr") {
		t.Errorf("second daemon on %s: %v, want an error naming metrics-addr", d.metricsAddr, err)
	}
}
