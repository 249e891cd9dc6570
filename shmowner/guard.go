package shmowner

import (
	"errors"
	"runtime"
	"sync"

	"github.com/hashicorp/raft"
)

// boltStore is what the Store needs of raft-boltdb: raft's log and stable stores, and
// Close.
type boltStore interface {
	raft.LogStore
	raft.StableStore
	Close() error
}

// errClosed is what the Store's own reads get once the store is closed.
var errClosed = errors.New("raft store closed")

// guardedStore is the log and stable store raft is given: bbolt behind a lock that
// makes every operation and Close mutually exclusive (operations hold the read lock,
// Close the write lock), so that nothing touches bbolt once Close has closed it.
//
// Raft.Shutdown does not wait for everything that uses the stores (hashicorp/raft#717):
// the transport runs the heartbeat fast path (processHeartbeat -> appendEntries) on a
// goroutine of its own, and a heartbeat that passed raft's shutdown check just before
// Shutdown can call setCurrentTerm after Shutdown returned and Close closed bbolt. Raft
// panics on any error from SetUint64, Set or StoreLogs (and from GetLog in places):
// "failed to save current term: database not open" killed a test run, and would kill a
// daemon on its way out instead of letting it exit 0.
//
// So an operation that finds the store closed must neither touch bbolt nor return.
// Returning an error makes raft panic. Returning nil would tell raft that a term or an
// entry was persisted when it was not: appendEntries would go on to answer the leader
// Success=true, with the new term, for something this node never wrote. Instead the
// operation ends its goroutine with runtime.Goexit. Deferred calls run: appendEntries'
// deferred Respond leaves its answer (the old term, Success=false) on the RPC's
// channel, and the transport's handleConn closes the connection, so the leader sees a
// failed heartbeat, as from any node that has gone away, which this one has. Nothing
// after the call runs, so nothing can act on a write that did not happen. Only raft's
// own goroutines call these methods, and after Close only such a straggler can: Close
// runs after raft.Shutdown returned. The Store's own reads go through ifOpen, which
// returns errClosed instead.
type guardedStore struct {
	mu     sync.RWMutex
	closed bool
	s      boltStore
}

var (
	_ raft.LogStore    = (*guardedStore)(nil)
	_ raft.StableStore = (*guardedStore)(nil)
)

// enter takes the read lock for one operation and returns its release; on a closed
// store it ends the calling goroutine instead (see guardedStore).
func (g *guardedStore) enter() (release func()) {
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		runtime.Goexit()
	}
	return g.mu.RUnlock
}

// ifOpen runs fn on the store, holding Close off while it runs, or returns errClosed.
func (g *guardedStore) ifOpen(fn func(boltStore) error) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return errClosed
	}
	return fn(g.s)
}

// Close waits for the operations in progress, then closes bbolt; later operations do
// not reach it. Closing again does nothing.
func (g *guardedStore) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return g.s.Close()
}

func (g *guardedStore) FirstIndex() (uint64, error) {
	defer g.enter()()
	return g.s.FirstIndex()
}

func (g *guardedStore) LastIndex() (uint64, error) {
	defer g.enter()()
	return g.s.LastIndex()
}

func (g *guardedStore) GetLog(index uint64, log *raft.Log) error {
	defer g.enter()()
	return g.s.GetLog(index, log)
}

func (g *guardedStore) StoreLog(log *raft.Log) error {
	defer g.enter()()
	return g.s.StoreLog(log)
}

func (g *guardedStore) StoreLogs(logs []*raft.Log) error {
	defer g.enter()()
	return g.s.StoreLogs(logs)
}

func (g *guardedStore) DeleteRange(min, max uint64) error {
	defer g.enter()()
	return g.s.DeleteRange(min, max)
}

func (g *guardedStore) Set(key, val []byte) error {
	defer g.enter()()
	return g.s.Set(key, val)
}

func (g *guardedStore) Get(key []byte) ([]byte, error) {
	defer g.enter()()
	return g.s.Get(key)
}

func (g *guardedStore) SetUint64(key []byte, val uint64) error {
	defer g.enter()()
	return g.s.SetUint64(key, val)
}

func (g *guardedStore) GetUint64(key []byte) (uint64, error) {
	defer g.enter()()
	return g.s.GetUint64(key)
}
