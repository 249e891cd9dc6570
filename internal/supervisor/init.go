package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/migshm/migshm/internal/atomicfile"
)

// installInit copies this executable to dir/migshm-init-<sha256 prefix>, the init of
// every workload this node starts. Workloads then do not depend on the daemon's own
// file, which an upgrade replaces; CRIU needs the init's file unchanged at restore.
func installInit(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	f, err := os.Open(self)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "migshm-init-"+hex.EncodeToString(h.Sum(nil))[:16])
	selfInfo, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(path); err == nil && st.Size() == selfInfo.Size() {
		return path, nil // written whole (atomicfile) by an earlier start
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := atomicfile.WriteFrom(path, f, 0o700); err != nil {
		return "", fmt.Errorf("install the init: %w", err)
	}
	return path, nil
}
