// Package wait is the tests' one way to wait for a condition (tailscale's
// tstest.WaitFor): poll with a deadline, and on timeout say what was last seen. Tests
// never sleep to "let things settle"; they wait for the state they need.
//
// The name reads at the call site (wait.For) and does not clash with
// prometheus/client_golang's testutil, which metrics tests import.
package wait

import (
	"testing"
	"time"
)

// Polling starts at firstPoll and doubles up to maxPoll: a condition that holds soon is
// seen soon, and a slow one (a command run per poll) does not hog the CPU.
const (
	firstPoll = 10 * time.Millisecond
	maxPoll   = 100 * time.Millisecond
)

// For calls cond until it reports true, and fails the test if that has not happened
// within maxWait. cond's string says what it saw (a state, a count, an error); the last
// one goes into the failure message, after "waiting for <what>". cond runs on the test's
// goroutine, so it may itself call t.Fatal.
func For(tb testing.TB, maxWait time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(maxWait)
	poll := firstPoll
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if seen == "" {
				tb.Fatalf("timed out after %v waiting for %s", maxWait, what)
			}
			tb.Fatalf("timed out after %v waiting for %s; last seen: %s", maxWait, what, seen)
			return // a tb whose Fatalf returns
		}
		time.Sleep(poll)
		poll = min(2*poll, maxPoll)
	}
}

// Until is For with a condition that returns nil once it holds, and otherwise an error
// saying what it saw.
func Until(tb testing.TB, maxWait time.Duration, what string, cond func() error) {
	tb.Helper()
	For(tb, maxWait, what, func() (bool, string) {
		if err := cond(); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}
