package migrate

import "time"

// Defaults of PrecopyPolicy.
const (
	// DefaultMaxDowntime is the downtime pre-copy aims for: it stops once what changed
	// in a round would ship within it.
	DefaultMaxDowntime = 300 * time.Millisecond
	// DefaultMaxRounds bounds the pre-copy rounds.
	DefaultMaxRounds = 8
)

// PrecopyPolicy decides after each pre-copy round whether it was the last one (go-criu's
// phaul calls it isLastIter). It is pure: no clock, no I/O.
type PrecopyPolicy struct {
	// MaxDowntime is the downtime aimed for; 0 or less means DefaultMaxDowntime.
	MaxDowntime time.Duration
	// MaxRounds bounds the rounds; 0 or less means DefaultMaxRounds.
	MaxRounds int
}

// PrecopyRound is what is known after a pre-copy round.
type PrecopyRound struct {
	// Round is the round's number, from 1.
	Round int
	// Changed is how many pages changed in it (RoundStats.Changed); PrevChanged how many
	// changed in the round before (unused in round 1).
	Changed, PrevChanged int64
	// Rate is the best rate seen on the wire so far, in bytes per second (0: none yet).
	Rate float64
}

// PrecopyStop says why pre-copy stopped.
type PrecopyStop string

// Reasons to stop pre-copy, in the order Last checks them.
const (
	// PrecopyConverged: what changed in the round would ship within MaxDowntime at
	// the rate seen (never after round 1, whose pages all count as changed).
	PrecopyConverged PrecopyStop = "converged"
	// PrecopyRoundLimit: MaxRounds rounds are done.
	PrecopyRoundLimit PrecopyStop = "round-limit"
	// PrecopyNotConverging: the round changed at least 90% of the pages the round
	// before did: the workload dirties memory as fast as pre-copy sends it.
	PrecopyNotConverging PrecopyStop = "not-converging"
)

func (p PrecopyPolicy) maxDowntime() time.Duration {
	if p.MaxDowntime <= 0 {
		return DefaultMaxDowntime
	}
	return p.MaxDowntime
}

func (p PrecopyPolicy) maxRounds() int {
	if p.MaxRounds <= 0 {
		return DefaultMaxRounds
	}
	return p.MaxRounds
}

// Last reports whether r was the last pre-copy round, and if so why.
func (p PrecopyPolicy) Last(r PrecopyRound) (PrecopyStop, bool) {
	remaining := float64(r.Changed * PageSize)
	switch {
	case r.Round > 1 && r.Rate > 0 && remaining/r.Rate <= p.maxDowntime().Seconds():
		return PrecopyConverged, true
	case r.Round >= p.maxRounds():
		return PrecopyRoundLimit, true
	case r.Round > 1 && r.Changed*10 >= r.PrevChanged*9:
		return PrecopyNotConverging, true
	}
	return "", false
}
