package shmowner

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/migshm/migshm/internal/wait"
)

// fakeBolt is a boltStore that records every rule broken against it: an operation after
// Close, or Close while an operation is in progress. block, if set, runs inside every
// operation (while it counts as in progress).
type fakeBolt struct {
	mu       sync.Mutex
	closed   bool
	inFlight int
	calls    int
	broken   []string
	block    func(op string)
}

func (f *fakeBolt) op(name string) error {
	f.mu.Lock()
	if f.closed {
		f.broken = append(f.broken, name+" after Close")
	}
	f.inFlight++
	f.calls++
	block := f.block
	f.mu.Unlock()
	if block != nil {
		block(name)
	}
	f.mu.Lock()
	f.inFlight--
	f.mu.Unlock()
	return nil
}

func (f *fakeBolt) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inFlight > 0 {
		f.broken = append(f.broken, fmt.Sprintf("Close with %d operations in progress", f.inFlight))
	}
	f.closed = true
	return nil
}

func (f *fakeBolt) state() (closed bool, calls int, broken []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed, f.calls, append([]string(nil), f.broken...)
}

func (f *fakeBolt) FirstIndex() (uint64, error)      { return 0, f.op("FirstIndex") }
func (f *fakeBolt) LastIndex() (uint64, error)       { return 0, f.op("LastIndex") }
func (f *fakeBolt) GetLog(uint64, *raft.Log) error   { return f.op("GetLog") }
func (f *fakeBolt) StoreLog(*raft.Log) error         { return f.op("StoreLog") }
func (f *fakeBolt) StoreLogs([]*raft.Log) error      { return f.op("StoreLogs") }
func (f *fakeBolt) DeleteRange(uint64, uint64) error { return f.op("DeleteRange") }
func (f *fakeBolt) Set([]byte, []byte) error         { return f.op("Set") }
func (f *fakeBolt) Get([]byte) ([]byte, error)       { return nil, f.op("Get") }
func (f *fakeBolt) SetUint64([]byte, uint64) error   { return f.op("SetUint64") }
func (f *fakeBolt) GetUint64([]byte) (uint64, error) { return 0, f.op("GetUint64") }
func (f *fakeBolt) ifOpenOp(g *guardedStore) error {
	return g.ifOpen(func(boltStore) error { return f.op("ifOpen") })
}
func (f *fakeBolt) ops(g *guardedStore) map[string]func() {
	return map[string]func(){
		"FirstIndex":  func() { g.FirstIndex() },
		"LastIndex":   func() { g.LastIndex() },
		"GetLog":      func() { g.GetLog(1, &raft.Log{}) },
		"StoreLog":    func() { g.StoreLog(&raft.Log{}) },
		"StoreLogs":   func() { g.StoreLogs(nil) },
		"DeleteRange": func() { g.DeleteRange(1, 2) },
		"Set":         func() { g.Set([]byte("k"), []byte("v")) },
		"Get":         func() { g.Get([]byte("k")) },
		"SetUint64":   func() { g.SetUint64([]byte("CurrentTerm"), 7) },
		"GetUint64":   func() { g.GetUint64([]byte("CurrentTerm")) },
	}
}

// runOp runs op on a goroutine of its own, as raft's transport would, and reports
// whether op returned (rather than ending the goroutine) and what it panicked with.
func runOp(op func()) (returned bool, panicked any) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		op()
		returned = true
	}()
	<-done
	return returned, panicked
}

// TestGuardCloseWaitsForOperation: Close does not close bbolt under an operation in
// progress; it waits for it, and the operation completes normally.
func TestGuardCloseWaitsForOperation(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	f := &fakeBolt{}
	f.block = func(string) {
		close(entered)
		<-release
	}
	g := &guardedStore{s: f}
	opDone := make(chan error, 1)
	go func() { opDone <- g.SetUint64([]byte("CurrentTerm"), 7) }()
	<-entered
	closeDone := make(chan error, 1)
	go func() { closeDone <- g.Close() }()
	// Close is waiting for the lock once a reader can no longer take it.
	wait.For(t, 10*time.Second, "Close to wait for the operation", func() (bool, string) {
		if g.mu.TryRLock() {
			g.mu.RUnlock()
			return false, "the read lock is still free"
		}
		return true, ""
	})
	if closed, _, _ := f.state(); closed {
		t.Fatal("bbolt closed under an operation in progress")
	}
	close(release)
	if err := <-opDone; err != nil {
		t.Errorf("the operation Close waited for failed: %v", err)
	}
	if err := <-closeDone; err != nil {
		t.Errorf("Close: %v", err)
	}
	if closed, _, broken := f.state(); !closed || len(broken) > 0 {
		t.Errorf("closed=%v, broken rules: %q", closed, broken)
	}
}

// TestGuardAfterClose: once closed, no operation reaches bbolt; raft's operations end
// their goroutine (deferred calls run, nothing after the call does, no panic), the
// Store's own reads get errClosed.
func TestGuardAfterClose(t *testing.T) {
	f := &fakeBolt{}
	g := &guardedStore{s: f}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for name, op := range f.ops(g) {
		returned, panicked := runOp(op)
		if returned || panicked != nil {
			t.Errorf("%s after Close: returned=%v, panicked with %v; want its goroutine ended", name, returned, panicked)
		}
	}
	if err := f.ifOpenOp(g); !errors.Is(err, errClosed) {
		t.Errorf("ifOpen after Close = %v, want errClosed", err)
	}
	if _, calls, broken := f.state(); calls != 0 || len(broken) > 0 {
		t.Errorf("bbolt saw %d calls after Close; broken rules: %q", calls, broken)
	}
}

// TestGuardRacingClose: operations of every kind race Close from many goroutines; in
// every interleaving each one either completes before bbolt closes or never reaches it.
func TestGuardRacingClose(t *testing.T) {
	for round := range 20 {
		f := &fakeBolt{}
		g := &guardedStore{s: f}
		ops := f.ops(g)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, op := range ops {
			wg.Go(func() {
				<-start
				for {
					op() // ends this goroutine once the store is closed
				}
			})
		}
		wg.Go(func() {
			<-start
			for f.ifOpenOp(g) == nil {
			}
		})
		close(start)
		wait.For(t, 10*time.Second, "operations to run", func() (bool, string) {
			_, calls, _ := f.state()
			return calls >= 100, fmt.Sprintf("%d calls", calls)
		})
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if _, _, broken := f.state(); len(broken) > 0 {
			t.Fatalf("round %d: broken rules: %q", round, broken)
		}
	}
}
