package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
)

// fakeEvents are the events the fake daemon keeps from the start: seq 1 to 3.
func fakeEvents() []api.Event {
	at := time.Date(2026, 3, 1, 12, 3, 4, 0, time.Local).UnixNano()
	return []api.Event{
		{At: at, Kind: api.EventKindNode, ID: "n2", Node: "n2", Change: "draining"},
		{At: at, Kind: api.EventKindMigration, ID: "m1a2b3c", Name: "db1", Node: "n1", From: "n1", To: "n2", Change: "frozen"},
		{At: at + int64(time.Second), Kind: api.EventKindWorkload, ID: "w3", Name: "job", Node: "n1", Change: "exited", Detail: "status 3"},
	}
}

func TestEventsList(t *testing.T) {
	f := newFakeDaemon(t)
	out := f.mustCLI(t, "events")
	want := "12:03:04  node n2  draining\n" +
		"12:03:04  migration m1a2b3c  db1  n1 -> n2  frozen\n" +
		"12:03:05  workload w3  job  n1  exited  status 3\n"
	if out != want {
		t.Errorf("events:\n%s\nwant:\n%s", out, want)
	}
	if got := callPaths(f.takeCalls()); strings.Join(got, ",") != "GET /v1/events" {
		t.Errorf("events asked %q", got)
	}

	out = f.mustCLI(t, "events", "--since", "1", "--json")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("--since 1 --json: %d lines, want 2 (NDJSON):\n%s", len(lines), out)
	}
	for i, l := range lines {
		var ev api.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Seq != uint64(i+2) {
			t.Errorf("line %d: %+v, %v", i, ev, err)
		}
	}
	if c := f.takeCalls(); len(c) != 1 || c[0].Query.Get("since") != "1" {
		t.Errorf("--since 1 asked %+v", c)
	}
	if out := f.mustCLI(t, "events", "--since", "3"); out != "" {
		t.Errorf("--since 3 printed %q", out)
	}
	f.takeCalls()
	f.wantRefused(t, []string{"events", "n1"}, "events takes no arguments")
}

// syncBuffer is a buffer the CLI writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEventsFollow: -f prints the kept events, then each new one as the daemon logs it,
// until interrupted (here: its context ends), which is no error.
func TestEventsFollow(t *testing.T) {
	for _, json := range []bool{false, true} {
		f := newFakeDaemon(t)
		args := []string{"migshm", "--socket", f.sock, "events", "-f", "--since", "2"}
		if json {
			args = append(args, "--json")
		}
		app := newApp()
		var out syncBuffer
		app.Writer, app.ErrWriter = &out, &out
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- app.RunContext(ctx, args) }()

		waitFor := func(want string) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(out.String(), want) {
				if time.Now().After(deadline) {
					cancel()
					t.Fatalf("json=%t: output lacks %q:\n%s", json, want, out.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		waitFor("job")
		f.events.Append(api.Event{At: time.Now().UnixNano(), Kind: api.EventKindSegment, ID: "g1/7",
			From: "n1", To: "n2", Change: "owner"})
		if json {
			waitFor(`"seq":4,`)
		} else {
			waitFor("segment g1/7  n1 -> n2  owner\n")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("json=%t: interrupted follow: %v", json, err)
		}
		got := out.String()
		if strings.Contains(got, "draining") || strings.Contains(got, "frozen") {
			t.Errorf("json=%t: --since 2 printed earlier events:\n%s", json, got)
		}
		if n := strings.Count(got, "\n"); n != 2 {
			t.Errorf("json=%t: %d lines, want 2:\n%s", json, n, got)
		}
		if c := f.takeCalls(); len(c) != 1 || c[0].Query.Get("follow") != "true" || c[0].Query.Get("since") != "2" {
			t.Errorf("json=%t: -f asked %+v", json, c)
		}
	}
}
