//go:build faults

package faults

import (
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

// set is what Env asked for.
type set struct {
	crash   map[string]bool
	pause   map[string]time.Duration
	corrupt bool
}

var injected = parse(os.Getenv(Env))

func parse(env string) set {
	f := set{crash: map[string]bool{}, pause: map[string]time.Duration{}}
	for _, s := range strings.Split(env, ",") {
		parts := strings.Split(strings.TrimSpace(s), ":")
		switch {
		case len(parts) == 2 && parts[0] == "crash-at":
			f.crash[parts[1]] = true
		case len(parts) == 3 && parts[0] == "pause-at":
			if d, err := time.ParseDuration(parts[2]); err == nil {
				f.pause[parts[1]] = d
			}
		case len(parts) == 1 && parts[0] == "corrupt-images":
			f.corrupt = true
		}
	}
	return f
}

// At runs the faults injected at point.
func At(point string) {
	if d := injected.pause[point]; d > 0 {
		time.Sleep(d)
	}
	if injected.crash[point] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}

// corruptAt is where corrupt-images flips a byte: inside the first files' data.
const corruptAt = 2000

// Stream returns r, or with corrupt-images r with one byte flipped at corruptAt.
func Stream(r io.Reader) io.Reader {
	if !injected.corrupt {
		return r
	}
	return &corruptReader{r: r, at: corruptAt}
}

// corruptReader flips the byte at offset at of what is read through it.
type corruptReader struct {
	r   io.Reader
	at  int64
	off int64
}

func (c *corruptReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.off <= c.at && c.at < c.off+int64(n) {
		p[c.at-c.off] ^= 0x5a
	}
	c.off += int64(n)
	return n, err
}
