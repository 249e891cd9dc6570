package httpapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/peer"
	"github.com/migshm/migshm/shmowner/record"
)

// routeCluster is a Cluster of fixed answers.
type routeCluster struct {
	self, leaderAPI string
	leads           bool
	nodes           map[string]string // node id -> peer API address
}

func (c routeCluster) Self() string             { return c.self }
func (c routeCluster) IsLeader() bool           { return c.leads }
func (c routeCluster) LeaderAPI() string        { return c.leaderAPI }
func (c routeCluster) NodeAPI(id string) string { return c.nodes[id] }

// routeService serves what the routing tests need and fails the test on anything else.
type routeService struct {
	Service // nil: any other call panics
	w       api.Workload
	balance func() (*api.BalanceReport, error)
	stopped []string
}

func (s *routeService) Workload(context.Context, string) (api.Workload, error) { return s.w, nil }
func (s *routeService) Balance(context.Context, bool) (*api.BalanceReport, error) {
	return s.balance()
}
func (s *routeService) Stop(_ context.Context, w api.Workload, _ api.StopRequest) (api.Workload, error) {
	s.stopped = append(s.stopped, w.ID)
	return w, nil
}

// relayed is what the other node received.
type relayed struct {
	method, path, by string
	body             []byte
}

// otherNode serves as the leader or the workload's node over TLS and records what it
// was sent; peers reach it.
func otherNode(t *testing.T, answer any) (addr string, peers *peer.Peers, got *[]relayed) {
	t.Helper()
	var calls []relayed
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls = append(calls, relayed{r.Method, r.URL.RequestURI(), peer.ForwardedBy(r), b})
		writeJSON(w, http.StatusOK, answer)
	}))
	t.Cleanup(srv.Close)
	cfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	return strings.TrimPrefix(srv.URL, "https://"), peer.New(cfg, "n1"), &calls
}

func serveOnce(h http.Handler, method, path, body, forwardedBy string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "https://n1"+path, strings.NewReader(body))
	req.TLS = &tls.ConnectionState{}
	if forwardedBy != "" {
		req.Header.Set(peer.ForwardedHeader, forwardedBy)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestLeaderRoutes: a leader route runs here on the leader; a follower relays it to the
// leader, marked; a request relayed to a node that does not lead is refused, never
// relayed again.
func TestLeaderRoutes(t *testing.T) {
	addr, peers, got := otherNode(t, api.BalanceReport{Leader: "n3", Mean: 0.5})
	svc := &routeService{balance: func() (*api.BalanceReport, error) { return &api.BalanceReport{Leader: "n1"}, nil }}
	local := func(cl routeCluster) http.Handler {
		return userAPI(Config{Service: svc, Cluster: cl, Peers: peers, Log: discardLog()})
	}

	// The leader answers itself.
	rec := serveOnce(local(routeCluster{self: "n1", leads: true}), "POST", "/v1/balance", "{}", "")
	var rep api.BalanceReport
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &rep) != nil || rep.Leader != "n1" || len(*got) != 0 {
		t.Fatalf("on the leader: %d %s, relayed %v", rec.Code, rec.Body, *got)
	}
	// A follower relays, marked with its id, and answers what the leader said.
	rec = serveOnce(local(routeCluster{self: "n1", leaderAPI: addr}), "POST", "/v1/balance", "{}", "")
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &rep) != nil || rep.Leader != "n3" || rep.Mean != 0.5 {
		t.Fatalf("on a follower: %d %s", rec.Code, rec.Body)
	}
	if len(*got) != 1 || (*got)[0].method != "POST" || (*got)[0].path != "/v1/balance" || (*got)[0].by != "n1" {
		t.Fatalf("relayed %+v, want one POST /v1/balance marked by n1", *got)
	}
	// A relayed request that reaches a node that does not lead is refused.
	rec = serveOnce(local(routeCluster{self: "n2", leaderAPI: addr}), "POST", "/v1/balance", "{}", "n1")
	if e := checkWireBody(t, rec, "not_leader"); !strings.Contains(e.Message, "n1 sent this here") || len(*got) != 1 {
		t.Fatalf("relayed to a follower: %s, relayed again %v", e.Message, *got)
	}
	// No leader known.
	rec = serveOnce(local(routeCluster{self: "n1"}), "POST", "/v1/balance", "{}", "")
	checkWireBody(t, rec, "no_leader")
}

// TestWorkloadRoutes: a workload's request runs on its node; another node relays it
// there, by the workload's id; a relayed request for a workload the table places
// elsewhere is refused, never relayed again.
func TestWorkloadRoutes(t *testing.T) {
	addr, peers, got := otherNode(t, api.Workload{ID: "w1", Name: "db1", Node: "n2", State: record.WorkloadExited})
	svc := &routeService{w: api.Workload{ID: "w1", Name: "db1", Node: "n2"}}
	h := userAPI(Config{Service: svc, Cluster: routeCluster{self: "n1", nodes: map[string]string{"n2": addr}}, Peers: peers, Log: discardLog()})

	rec := serveOnce(h, "POST", "/v1/workloads/db1/stop", `{"timeout_ms":5}`, "")
	if rec.Code != http.StatusOK || len(*got) != 1 || len(svc.stopped) != 0 {
		t.Fatalf("stop on another node's workload: %d %s, relayed %v, stopped here %v", rec.Code, rec.Body, *got, svc.stopped)
	}
	if r := (*got)[0]; r.path != "/v1/workloads/w1/stop" || r.by != "n1" || string(r.body) != `{"timeout_ms":5}` {
		t.Errorf("relayed %+v", r)
	}
	rec = serveOnce(h, "POST", "/v1/workloads/db1/stop", `{}`, "n3")
	if e := checkWireBody(t, rec, "unreachable"); !strings.Contains(e.Message, "n3 sent the request here") || len(*got) != 1 {
		t.Fatalf("relayed for a workload elsewhere: %s, relayed again %v", e.Message, *got)
	}

	svc.w.Node = "n1"
	rec = serveOnce(h, "POST", "/v1/workloads/db1/stop", `{}`, "n3")
	if rec.Code != http.StatusOK || len(svc.stopped) != 1 {
		t.Fatalf("stop of a workload here: %d %s", rec.Code, rec.Body)
	}
	// A workload's node without an address cannot be reached.
	svc.w.Node = "n9"
	rec = serveOnce(h, "POST", "/v1/workloads/db1/stop", `{}`, "")
	if e := checkWireBody(t, rec, "unreachable"); !errors.Is(e.Err(), api.ErrUnreachable) {
		t.Fatalf("node without an address: %+v", e)
	}
}

// userAPI is the local API's routes without the root check (the requests here carry no
// peer credentials).
func userAPI(cfg Config) http.Handler {
	srv := &server{cfg}
	mux := http.NewServeMux()
	srv.userRoutes(mux)
	return mux
}
