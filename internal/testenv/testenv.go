// Package testenv decides whether integration tests that need root, namespaces and a real
// CRIU can run here. Outside CI they skip and say why; in CI (CI=true) they fail instead,
// so a machine that cannot run them never passes by skipping.
package testenv

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/migshm/migshm/migrate"
)

// Strict reports whether missing prerequisites must fail tests (CI=true).
func Strict() bool { return os.Getenv("CI") == "true" }

// Unavailable fails the test in CI and skips it elsewhere, with the reason.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if Strict() {
		tb.Fatalf("CI=true and this test cannot run: "+format, args...)
	}
	tb.Skipf("skipped: "+format, args...)
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "needs root (namespaces, CRIU); run the tests as root")
	}
}

// RequireCRIU stops the test unless root and a CRIU that passes `criu check` are here,
// and returns that CRIU.
func RequireCRIU(tb testing.TB) *migrate.CRIU {
	tb.Helper()
	RequireRoot(tb)
	path, err := migrate.FindCRIU("")
	if err != nil {
		Unavailable(tb, "%v", err)
	}
	c := &migrate.CRIU{Path: path}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Check(ctx); err != nil {
		Unavailable(tb, "%v", err)
	}
	return c
}
