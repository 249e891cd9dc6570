package wait_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/wait"
)

// fatalTB records Fatalf and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls wait.For on its own goroutine (Fatalf ends it) and returns the failure.
func run(maxWait time.Duration, cond func() (bool, string)) string {
	tb := &fatalTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait.For(tb, maxWait, "the thing", cond)
	}()
	<-done
	return tb.msg
}

func TestFor(t *testing.T) {
	calls := 0
	if msg := run(time.Minute, func() (bool, string) { calls++; return calls == 3, "" }); msg != "" || calls != 3 {
		t.Errorf("a condition true on the 3rd call: %d calls, failure %q", calls, msg)
	}

	calls = 0
	msg := run(50*time.Millisecond, func() (bool, string) { calls++; return false, fmt.Sprintf("count %d", calls) })
	if want := fmt.Sprintf("timed out after 50ms waiting for the thing; last seen: count %d", calls); msg != want {
		t.Errorf("failure %q, want %q", msg, want)
	}
	if calls < 2 {
		t.Errorf("condition called %d times in 50ms", calls)
	}

	msg = run(0, func() (bool, string) { return false, "" })
	if !strings.HasSuffix(msg, "waiting for the thing") {
		t.Errorf("failure without a last state: %q", msg)
	}
}

func TestUntil(t *testing.T) {
	calls := 0
	tb := &fatalTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait.Until(tb, 50*time.Millisecond, "the thing", func() error {
			calls++
			return fmt.Errorf("count %d", calls)
		})
	}()
	<-done
	if want := fmt.Sprintf("timed out after 50ms waiting for the thing; last seen: count %d", calls); tb.msg != want {
		t.Errorf("failure %q, want %q", tb.msg, want)
	}
	calls = 0
	wait.Until(t, time.Minute, "the third call", func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("%d calls, want 3", calls)
	}
}
