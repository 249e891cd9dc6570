package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/api"
)

// TestHoldMoves: a workload whose last move failed within moveRetryAfter is held, and
// with it the rest of its group on that node; with auto-balance off only drains go; a
// failure older than moveRetryAfter holds nothing.
func TestHoldMoves(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	moves := []api.BalanceMove{
		{Workload: "a1", Name: "a1", Group: "ga", From: "n1", To: "n2", Kind: "cpu"},
		{Workload: "a2", Name: "a2", Group: "ga", From: "n1", To: "n2", Kind: "cpu"},
		{Workload: "b", Name: "b", Group: "gb", From: "n1", To: "n3", Kind: "cpu"},
		{Workload: "c", Name: "c", Group: "gc", From: "n2", To: "n3", Kind: "drain"},
		{Workload: "d", Name: "d", Group: "gd", From: "n3", To: "n1", Kind: "memory"},
	}
	failed := map[string]moveFault{
		"a1": {at: now.Add(-10 * time.Second), err: "tcp-established"},
		"b":  {at: now.Add(-moveRetryAfter - time.Second), err: "old"},
	}
	names := func(ms []api.BalanceMove) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Workload)
		}
		return strings.Join(s, ",")
	}

	kept, skipped := holdMoves(moves, nil, failed, now, false)
	if got := names(kept); got != "b,c,d" {
		t.Errorf("kept %s, want b,c,d (a1 failed 10s ago, a2 is in its group; b's failure is old)", got)
	}
	if len(skipped) != 2 || skipped[0].Workload != "a1" || skipped[1].Workload != "a2" ||
		!strings.Contains(skipped[1].Reason, "tcp-established") || skipped[0].Node != "n1" {
		t.Errorf("skipped %+v, want a1 and a2 with a1's failure", skipped)
	}

	kept, skipped = holdMoves(moves, []api.BalanceSkip{{Node: "n9", Reason: "earlier"}}, nil, now, true)
	if got := names(kept); got != "c" {
		t.Errorf("auto-balance off: kept %s, want only the drain c", got)
	}
	if len(skipped) != 5 || skipped[0].Reason != "earlier" || !strings.Contains(skipped[4].Reason, "auto-balance is off") {
		t.Errorf("auto-balance off: skipped %+v", skipped)
	}
}
