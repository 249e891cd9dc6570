package migrate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fxClock is a clock tests move by hand.
type fxClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fxClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fxClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestCachedCheck(t *testing.T) {
	clock := &fxClock{t: time.Unix(1_700_000_000, 0)}
	path := fxFakeCRIU(t, "exit 0\n") // FindCRIU only needs an executable
	var calls int
	var fail error
	c := &CRIU{Path: path}
	c.cache.now = clock.now
	c.cache.check = func(_ context.Context, p string) (*Capabilities, error) {
		calls++
		if p != path {
			t.Errorf("check of %q, want %q", p, path)
		}
		if fail != nil {
			return nil, fail
		}
		return &Capabilities{Path: p, Version: "4.1.1"}, nil
	}
	ctx := context.Background()
	check := func(wantCalls int, wantErr error) {
		t.Helper()
		caps, err := c.CachedCheck(ctx)
		if !errors.Is(err, wantErr) || (err == nil) != (caps != nil) || calls != wantCalls {
			t.Fatalf("CachedCheck = %+v, %v after %d checks; want error %v after %d checks", caps, err, calls, wantErr, wantCalls)
		}
	}
	check(1, nil)
	clock.add(CheckTTL - time.Nanosecond)
	check(1, nil) // still fresh
	clock.add(time.Nanosecond)
	fail = ErrCRIUUnavailable
	check(2, ErrCRIUUnavailable) // a minute old: asked again, and it broke
	clock.add(30 * time.Second)
	fail = nil
	check(2, ErrCRIUUnavailable) // failures are kept as long
	clock.add(30 * time.Second)
	check(3, nil) // and then asked again

	// A binary that is not there is not run, and the answer is kept too.
	gone := &CRIU{Path: filepath.Join(t.TempDir(), "criu")}
	gone.cache.now = clock.now
	gone.cache.check = func(context.Context, string) (*Capabilities, error) {
		t.Error("check ran without a binary")
		return nil, nil
	}
	for range 2 {
		if _, err := gone.CachedCheck(ctx); !errors.Is(err, ErrCRIUUnavailable) {
			t.Fatalf("missing binary: %v, want ErrCRIUUnavailable", err)
		}
	}
}

// TestCachedCheckRunsCRIUOnce: concurrent callers share one run of a (fake) criu.
func TestCachedCheckRunsCRIUOnce(t *testing.T) {
	log := filepath.Join(t.TempDir(), "runs")
	path := fxFakeCRIU(t, `echo "$*" >> `+log+`
case "$*" in
check) echo "Looks good."; exit 0 ;;
--version) echo "Version: 4.1.1"; exit 0 ;;
esac
exit 1
`)
	c := &CRIU{Path: path}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caps, err := c.CachedCheck(context.Background())
			if err != nil || caps.Version != "4.1.1" || caps.Path != path {
				t.Errorf("CachedCheck = %+v, %v", caps, err)
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	// One check: `check`, `--version` and one `check --feature` per optional feature.
	if n := strings.Count(string(b), "\n"); n != 2+len(OptionalFeatures) {
		t.Errorf("criu ran %d times for 8 callers:\n%s", n, b)
	}
}

func TestCPUInfoCached(t *testing.T) {
	c := &CRIU{}
	var calls int
	results := []error{errors.New("criu is busy"), nil, errors.New("never asked")}
	c.cache.cpuDump = func(context.Context) ([]byte, error) {
		err := results[calls]
		calls++
		if err != nil {
			return nil, err
		}
		return []byte("cpuinfo"), nil
	}
	ctx := context.Background()
	if _, err := c.CPUInfo(ctx); err == nil {
		t.Fatal("the first dump failed, CPUInfo did not")
	}
	for range 3 {
		if img, err := c.CPUInfo(ctx); err != nil || string(img) != "cpuinfo" {
			t.Fatalf("CPUInfo = %q, %v", img, err)
		}
	}
	if calls != 2 {
		t.Errorf("%d dumps, want 2: a failure is not kept, a success is kept for good", calls)
	}
}
