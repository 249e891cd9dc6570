package balancer

import "errors"

// ErrInvalidConfig is returned by Config.Validate for a configuration the policy cannot
// run with (a negative margin, a cap below one, a headroom outside [0, 1) ...).
var ErrInvalidConfig = errors.New("invalid balancer config")
