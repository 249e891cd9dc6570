package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"

	"github.com/migshm/migshm/shmowner/record"
)

// Client talks to one daemon: over its local unix socket (the CLI) or over its peer API
// with mutual TLS (other daemons, see NewPeerClient).
type Client struct {
	base   string // "http://migshmd" or "https://HOST:PORT"
	target string // what to name in errors: the socket path or the address
	hc     *http.Client
	header http.Header // added to every request
}

// NewClient returns a client of the local API at socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}
	return &Client{base: "http://migshmd", target: socket, hc: &http.Client{Transport: tr}}
}

// NewPeerClient returns a client of the peer API at addr (HOST:PORT) over rt, which
// carries the TLS configuration; header is added to every request.
func NewPeerClient(addr string, rt http.RoundTripper, header http.Header) *Client {
	return &Client{base: "https://" + addr, target: addr, hc: &http.Client{Transport: rt}, header: header}
}

func (c *Client) local() bool { return c.base == "http://migshmd" }

// Call sends one JSON request (in, if not nil) and decodes the JSON answer into out (if
// not nil). An error answer comes back as the daemon's error, mapped to its sentinel.
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.Open(ctx, method, path, in)
	if err != nil {
		return err
	}
	return c.decode(resp, method, path, out)
}

// call is Call with the answer decoded into a new T.
func call[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var out T
	return out, c.Call(ctx, method, path, in, &out)
}

// Upload POSTs body, a raw stream, and decodes the JSON answer into out (if not nil).
func (c *Client) Upload(ctx context.Context, path string, body io.Reader, out any) error {
	resp, err := c.send(ctx, http.MethodPost, path, "application/octet-stream", body)
	if err != nil {
		return err
	}
	return c.decode(resp, http.MethodPost, path, out)
}

func (c *Client) decode(resp *http.Response, method, path string, out any) error {
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer of %s: %w", method, path, c.target, err)
	}
	return nil
}

// Open sends a JSON request (in, if not nil) and returns the response of a 2xx answer,
// whose body the caller reads (a stream) and closes; an error answer comes back as the
// daemon's error, mapped to its sentinel.
func (c *Client) Open(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	ctype := ""
	if in != nil {
		ctype = "application/json"
	}
	return c.send(ctx, method, path, ctype, body)
}

func (c *Client) send(ctx context.Context, method, path, ctype string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e ErrorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
		return nil, fmt.Errorf("%s %s at %s: HTTP %d: %s", method, path, c.target, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil, e.Error.Err()
}

func (c *Client) dialError(err error) error {
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Op == "dial" && op.Timeout() && !c.local():
		// A peer that does not answer the connection: nothing was sent, so the caller
		// may retry, elsewhere too (a leader cut off from the cluster).
		return fmt.Errorf("cannot reach %s: %v: %w", c.target, err, ErrUnreachable)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%s did not answer in time: %w", c.target, err)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		if c.local() {
			return fmt.Errorf("no migshmd listening on %s (is the daemon running? pick another node with --socket or MIGSHM_SOCKET): %w", c.target, ErrUnreachable)
		}
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot connect to %s: permission denied (the local API is root only; use sudo): %w", c.target, ErrForbidden)
	}
	return fmt.Errorf("%s: %v: %w", c.target, err, ErrUnreachable)
}

// Status returns the node's view of itself and the cluster.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return call[Status](ctx, c, http.MethodGet, "/v1/status", nil)
}

// Nodes lists the nodes of the table.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	return call[[]Node](ctx, c, http.MethodGet, "/v1/nodes", nil)
}

// Workloads lists the workloads of the table.
func (c *Client) Workloads(ctx context.Context) ([]Workload, error) {
	return call[[]Workload](ctx, c, http.MethodGet, "/v1/workloads", nil)
}

// Segments lists the segments of the table.
func (c *Client) Segments(ctx context.Context) ([]Segment, error) {
	return call[[]Segment](ctx, c, http.MethodGet, "/v1/segments", nil)
}

// Run starts a workload on the node.
func (c *Client) Run(ctx context.Context, r RunRequest) (Workload, error) {
	return call[Workload](ctx, c, http.MethodPost, "/v1/workloads", r)
}

// Stop stops a workload (id, name or host pid) wherever it runs.
func (c *Client) Stop(ctx context.Context, ref string, r StopRequest) (Workload, error) {
	return call[Workload](ctx, c, http.MethodPost, "/v1/workloads/"+url.PathEscape(ref)+"/stop", r)
}

// Remove deletes the record and files of an exited workload.
func (c *Client) Remove(ctx context.Context, ref string) error {
	return c.Call(ctx, http.MethodDelete, "/v1/workloads/"+url.PathEscape(ref), nil, nil)
}

// Logs copies a workload's stdout or stderr to w; with follow it keeps copying until
// the workload exits or ctx ends. tail > 0 starts with the last tail lines.
func (c *Client) Logs(ctx context.Context, ref, stream string, follow bool, tail int, w io.Writer) error {
	q := url.Values{"stream": {stream}, "follow": {strconv.FormatBool(follow)}, "tail": {strconv.Itoa(tail)}}
	resp, err := c.Open(ctx, http.MethodGet, "/v1/workloads/"+url.PathEscape(ref)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if err != nil && ctx.Err() != nil {
		return nil // the user interrupted a follow
	}
	return err
}

// Leave removes a node (r.Node, or the node served) from the cluster.
func (c *Client) Leave(ctx context.Context, r LeaveRequest) (LeaveResult, error) {
	return call[LeaveResult](ctx, c, http.MethodPost, "/v1/leave", r)
}

// Probe commits a no-op entry through the leader (forwarded if this node is not the
// leader) and returns once the leader applied it.
func (c *Client) Probe(ctx context.Context) error {
	return c.Call(ctx, http.MethodPost, "/v1/probe", struct{}{}, nil)
}

// ErrOutcomeUnknown: a move's event stream ended (the connection broke, the daemon
// stopped, the caller gave up) before its last event, "done" or "error". The migration
// may have gone on, committed or been rolled back: its record says which.
var ErrOutcomeUnknown = errors.New("outcome of the move unknown")

// Move asks the daemon to move a workload and follows the migration until it ends. It
// calls onEvent (if not nil) for every event as it arrives, the last one included, and
// returns the last event: "done", or "error" together with the error it carries, mapped
// back to its sentinel by its code (and matching ErrMigrationFailed too if the event
// says the migration was aborted). A move refused before it started returns the
// daemon's error and no event. A stream that ends before its outcome, ctx ending
// included, returns an error wrapping ErrOutcomeUnknown. Move sets no time limit of its
// own: a pre-copy of a large workload takes as long as it takes; bound it with ctx.
func (c *Client) Move(ctx context.Context, r MoveRequest, onEvent func(MoveEvent)) (MoveEvent, error) {
	resp, err := c.Open(ctx, http.MethodPost, "/v1/migrations", r)
	if err != nil {
		return MoveEvent{}, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var last MoveEvent
	var id, phase string // of the migration, as last seen
	for {
		var ev MoveEvent
		if err := dec.Decode(&ev); err != nil {
			return last, c.moveCut(ctx, r, id, phase, err)
		}
		if onEvent != nil {
			onEvent(ev)
		}
		last = ev
		if ev.Migration != "" {
			id = ev.Migration
		}
		if ev.Phase != "" {
			phase = ev.Phase
		}
		switch ev.Event {
		case EventDone:
			return ev, nil
		case EventError:
			msg := ev.Error
			if msg == "" {
				msg = "move " + r.Workload + " to " + r.Target + " failed (the daemon gave no reason)"
			}
			err := Error{Code: ev.Code, Message: msg}.Err()
			if moveAborted(ev) && !errors.Is(err, ErrMigrationFailed) {
				err = &abortedError{err}
			}
			return ev, err
		}
	}
}

// moveAborted reports whether an error event says its migration was rolled back: its
// phase, or its record's, is aborted. (The record may lag: the source reads it from its
// own copy of the table.)
func moveAborted(ev MoveEvent) bool {
	return ev.Phase == string(record.PhaseAborted) || ev.Record != nil && ev.Record.Phase == record.PhaseAborted
}

// abortedError is the error of a migration that was rolled back: it is both the
// cause's sentinel (from the event's code) and ErrMigrationFailed.
type abortedError struct{ cause error }

func (e *abortedError) Error() string   { return e.cause.Error() }
func (e *abortedError) Unwrap() []error { return []error{e.cause, ErrMigrationFailed} }

// moveCut is the error of a move stream that ended before its last event.
func (c *Client) moveCut(ctx context.Context, r MoveRequest, id, phase string, err error) error {
	what := "the move of " + r.Workload + " to " + r.Target
	if id != "" {
		what = "migration " + id
	}
	if phase != "" {
		what += " (last seen in phase " + phase + ")"
	}
	var cause error
	switch {
	case ctx.Err() != nil:
		cause = ctx.Err()
	case errors.Is(err, io.EOF):
		cause = fmt.Errorf("%s ended the stream early", c.target)
	case errors.Is(err, io.ErrUnexpectedEOF):
		cause = fmt.Errorf("%s ended the stream in the middle of an event", c.target)
	default:
		cause = fmt.Errorf("reading the stream from %s: %w", c.target, err)
	}
	return fmt.Errorf("lost track of %s: %w: %w; see `migshm migrations`", what, cause, ErrOutcomeUnknown)
}

// Check asks whether a workload can move to a node now, without moving it.
func (c *Client) Check(ctx context.Context, r CheckRequest) (CheckReport, error) {
	return call[CheckReport](ctx, c, http.MethodPost, "/v1/migrations/check", r)
}

// Migrations lists the migrations of the table, finished ones included.
func (c *Client) Migrations(ctx context.Context) ([]Migration, error) {
	return call[[]Migration](ctx, c, http.MethodGet, "/v1/migrations", nil)
}

// Drain sets a node draining: it takes no new workloads, and the leader's balancer
// moves every workload it can off it. It returns the node as the table has it then;
// the workloads move afterwards (see Workloads).
func (c *Client) Drain(ctx context.Context, node string) (Node, error) {
	return call[Node](ctx, c, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/drain", struct{}{})
}

// Undrain makes a draining node active again: it takes new workloads.
func (c *Client) Undrain(ctx context.Context, node string) (Node, error) {
	return call[Node](ctx, c, http.MethodPost, "/v1/nodes/"+url.PathEscape(node)+"/undrain", struct{}{})
}

// Revoke puts a node certificate on the cluster's denylist.
func (c *Client) Revoke(ctx context.Context, req RevokeRequest) (Revocation, error) {
	return call[Revocation](ctx, c, http.MethodPost, "/v1/revocations", req)
}

// Revocations lists the cluster's denylist.
func (c *Client) Revocations(ctx context.Context) ([]Revocation, error) {
	return call[[]Revocation](ctx, c, http.MethodGet, "/v1/revocations", nil)
}

// Pin keeps a workload (id, name, host pid or unique id prefix) where it runs: the
// balancer never moves it, not even off a draining node.
func (c *Client) Pin(ctx context.Context, ref string) (Workload, error) {
	return call[Workload](ctx, c, http.MethodPost, "/v1/workloads/"+url.PathEscape(ref)+"/pin", struct{}{})
}

// Unpin lets the balancer move a pinned workload again.
func (c *Client) Unpin(ctx context.Context, ref string) (Workload, error) {
	return call[Workload](ctx, c, http.MethodPost, "/v1/workloads/"+url.PathEscape(ref)+"/unpin", struct{}{})
}

// Balance asks the leader for a balancer pass. With dryRun it only plans: nothing
// moves. Otherwise the leader runs a pass now and starts its moves; each move says
// whether it started (Started, Error). The migrations go on after Balance returns: see
// Migrations.
func (c *Client) Balance(ctx context.Context, dryRun bool) (BalanceReport, error) {
	if dryRun {
		return call[BalanceReport](ctx, c, http.MethodGet, "/v1/balance", nil)
	}
	return call[BalanceReport](ctx, c, http.MethodPost, "/v1/balance", struct{}{})
}

// LastBalance returns the leader's newest balancer pass, with the moves of the newest
// pass that started any (LastMoves, LastMovesAt).
func (c *Client) LastBalance(ctx context.Context) (BalanceReport, error) {
	return call[BalanceReport](ctx, c, http.MethodGet, "/v1/balance/last", nil)
}

// Events returns the table changes the node kept whose Seq is greater than since,
// oldest first. Each node numbers its own events and keeps only its newest ones.
func (c *Client) Events(ctx context.Context, since uint64) ([]Event, error) {
	return call[[]Event](ctx, c, http.MethodGet, "/v1/events?since="+strconv.FormatUint(since, 10), nil)
}

// FollowEvents calls onEvent for each table change the node kept after since, then for
// each new one as the node sees it, until ctx ends (it returns nil then) or the stream
// breaks (an error: the node went away).
func (c *Client) FollowEvents(ctx context.Context, since uint64, onEvent func(Event)) error {
	resp, err := c.Open(ctx, http.MethodGet, "/v1/events?follow=true&since="+strconv.FormatUint(since, 10), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return nil // the caller stopped following
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s ended the event stream (the daemon stopped?)", c.target)
			}
			return fmt.Errorf("reading the event stream from %s: %w", c.target, err)
		}
		onEvent(ev)
	}
}
