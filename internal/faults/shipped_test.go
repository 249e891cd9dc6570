package faults

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestShippedDaemonHasNoFaults builds migshmd as it ships (no build tags) and checks
// that no fault injection is in it: neither the variable that switches faults on nor
// the names of the faults.
func TestShippedDaemonHasNoFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds migshmd")
	}
	bin := filepath.Join(t.TempDir(), "migshmd")
	cmd := exec.Command("go", "build", "-o", bin, "../../cmd/migshmd")
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/migshmd: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{Env, "crash-at", "corrupt-images"} {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("the shipped migshmd contains %q: fault injection is compiled in", s)
		}
	}
}
