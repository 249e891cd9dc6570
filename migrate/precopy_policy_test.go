package migrate

import (
	"testing"
	"time"
)

func TestPrecopyPolicy(t *testing.T) {
	const mb = 1 << 20
	pages := func(bytes int64) int64 { return bytes / PageSize }
	tests := []struct {
		name   string
		policy PrecopyPolicy
		round  PrecopyRound
		want   PrecopyStop // "" means go on
	}{
		// Round 1 sends everything: it never converges, and has no round before it.
		{"first round", PrecopyPolicy{}, PrecopyRound{Round: 1, Changed: pages(100 * mb), Rate: 1000 * mb}, ""},
		{"first round, nothing changed", PrecopyPolicy{}, PrecopyRound{Round: 1, Changed: 0, Rate: 100 * mb}, ""},

		// Converged: remaining / rate <= max downtime (300ms by default).
		{"converged", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: pages(10 * mb), PrevChanged: pages(100 * mb), Rate: 100 * mb}, PrecopyConverged},
		{"converged at exactly the downtime", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: pages(30 * mb), PrevChanged: pages(100 * mb), Rate: 100 * mb}, PrecopyConverged},
		{"one page over the downtime", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: pages(30*mb) + 1, PrevChanged: pages(100 * mb), Rate: 100 * mb}, ""},
		{"nothing changed", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: 0, PrevChanged: 5, Rate: 1}, PrecopyConverged},
		{"no rate measured", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: 0, PrevChanged: 5, Rate: 0}, ""},
		{"no rate measured, no progress", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: 5, PrevChanged: 5, Rate: 0}, PrecopyNotConverging},
		{"a longer downtime allowed", PrecopyPolicy{MaxDowntime: time.Second}, PrecopyRound{Round: 2, Changed: pages(100 * mb), PrevChanged: pages(200 * mb), Rate: 100 * mb}, PrecopyConverged},
		{"a shorter downtime asked", PrecopyPolicy{MaxDowntime: 50 * time.Millisecond}, PrecopyRound{Round: 2, Changed: pages(10 * mb), PrevChanged: pages(100 * mb), Rate: 100 * mb}, ""},
		{"negative downtime is the default", PrecopyPolicy{MaxDowntime: -1}, PrecopyRound{Round: 2, Changed: pages(30 * mb), PrevChanged: pages(100 * mb), Rate: 100 * mb}, PrecopyConverged},

		// The round limit (8 by default).
		{"round 7 of 8", PrecopyPolicy{}, PrecopyRound{Round: 7, Changed: 1000, PrevChanged: 2000, Rate: 1}, ""},
		{"round 8 of 8", PrecopyPolicy{}, PrecopyRound{Round: 8, Changed: 1000, PrevChanged: 2000, Rate: 1}, PrecopyRoundLimit},
		{"past the limit", PrecopyPolicy{}, PrecopyRound{Round: 9, Changed: 1000, PrevChanged: 2000, Rate: 1}, PrecopyRoundLimit},
		{"one round only", PrecopyPolicy{MaxRounds: 1}, PrecopyRound{Round: 1, Changed: 1000, Rate: 1}, PrecopyRoundLimit},
		{"three rounds", PrecopyPolicy{MaxRounds: 3}, PrecopyRound{Round: 3, Changed: 1000, PrevChanged: 2000, Rate: 1}, PrecopyRoundLimit},
		{"negative rounds is the default", PrecopyPolicy{MaxRounds: -2}, PrecopyRound{Round: 7, Changed: 1000, PrevChanged: 2000, Rate: 1}, ""},
		{"converged beats the limit", PrecopyPolicy{}, PrecopyRound{Round: 8, Changed: 1, PrevChanged: 1, Rate: 100 * mb}, PrecopyConverged},

		// Not converging: changed*10 >= prevChanged*9.
		{"90% of the round before", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: 900, PrevChanged: 1000, Rate: 1}, PrecopyNotConverging},
		{"just under 90%", PrecopyPolicy{}, PrecopyRound{Round: 2, Changed: 899, PrevChanged: 1000, Rate: 1}, ""},
		{"more than the round before", PrecopyPolicy{}, PrecopyRound{Round: 3, Changed: 1500, PrevChanged: 1000, Rate: 1}, PrecopyNotConverging},
		{"the limit beats not converging", PrecopyPolicy{MaxRounds: 2}, PrecopyRound{Round: 2, Changed: 1000, PrevChanged: 1000, Rate: 1}, PrecopyRoundLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			why, last := tt.policy.Last(tt.round)
			if why != tt.want || last != (tt.want != "") {
				t.Errorf("Last(%+v) = %q, %v; want %q", tt.round, why, last, tt.want)
			}
		})
	}
}
