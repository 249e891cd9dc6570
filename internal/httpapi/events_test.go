package httpapi

import (
	"context"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/migshm/migshm/internal/events"
	"github.com/migshm/migshm/internal/testenv"
)

// serveEvents serves the local API with log as its events and returns a client of it.
func serveEvents(t *testing.T, log *events.Log) *api.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the local API serves root only; run the tests as root")
	}
	h := Local(Config{Service: &fakeService{}, Cluster: oneNode{}, Log: discardLog(), Events: log})
	return api.NewClient(serveUnix(t, h, PeerCredContext))
}

func TestEvents(t *testing.T) {
	log := events.NewLog(10)
	c := serveEvents(t, log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	evs, err := c.Events(ctx, 0)
	if err != nil || evs == nil || len(evs) != 0 {
		t.Fatalf("Events of an empty log: %v, %v; want an empty list", evs, err)
	}
	log.Append(api.Event{Kind: api.EventKindNode, ID: "n2", Change: "down"},
		api.Event{Kind: api.EventKindWorkload, ID: "w1", Name: "db1", Change: "moved", From: "n1", To: "n2"})
	evs, err = c.Events(ctx, 1)
	if err != nil || len(evs) != 1 || evs[0].Seq != 2 || evs[0].Name != "db1" || evs[0].To != "n2" {
		t.Fatalf("Events(since 1): %+v, %v", evs, err)
	}
	if err := c.Call(ctx, http.MethodGet, "/v1/events?since=x", nil, nil); !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("since=x: %v, want bad_request", err)
	}

	// Follow: the kept events after since, then the new ones; ctx ends it without error.
	fctx, fcancel := context.WithCancel(ctx)
	got := make(chan api.Event, 10)
	done := make(chan error, 1)
	go func() { done <- c.FollowEvents(fctx, 1, func(ev api.Event) { got <- ev }) }()
	if ev := <-got; ev.Seq != 2 {
		t.Fatalf("first followed event: %+v, want seq 2", ev)
	}
	log.Append(api.Event{Kind: api.EventKindMigration, ID: "m1", Change: "frozen"})
	select {
	case ev := <-got:
		if ev.Seq != 3 || ev.Change != "frozen" {
			t.Errorf("followed event: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a follower did not get a new event")
	}
	fcancel()
	if err := <-done; err != nil {
		t.Errorf("FollowEvents after its ctx ended: %v", err)
	}

	// Closing the log (the daemon stops) ends the stream: an error, the node went away.
	go func() { done <- c.FollowEvents(ctx, 3, func(ev api.Event) { t.Errorf("unexpected event %+v", ev) }) }()
	time.Sleep(50 * time.Millisecond)
	log.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("FollowEvents of a closed stream: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the log did not end the stream")
	}
}

func TestEventsWithoutLog(t *testing.T) {
	c := serveEvents(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Events(ctx, 0); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("Events without a log: %v, want not_ready", err)
	}
	if err := c.FollowEvents(ctx, 0, func(api.Event) {}); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("FollowEvents without a log: %v, want not_ready", err)
	}
}
