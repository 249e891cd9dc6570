package testwork

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/migshm/migshm/internal/nsutil"
)

// ConnServer returns the path of testdata/shmserver.pl: run as `perl PATH PORT`, it
// answers every line on every TCP connection to PORT with a counter kept in a SysV
// segment, and prints "listening" once it listens.
func ConnServer(tb testing.TB) string {
	tb.Helper()
	dir, err := SourceDir()
	if err != nil {
		tb.Fatal(err)
	}
	return filepath.Join(dir, "shmserver.pl")
}

// ConnClient keeps one TCP connection to a server and sends a request every 10 ms, checking
// that every answer comes and that the counter only grows.
type ConnClient struct {
	mu      sync.Mutex
	answers int
	last    int
	maxGap  time.Duration
	err     error
	stop    chan struct{}
	done    chan struct{}
}

// StartConnClient connects to addr from network namespace netns (a path) and starts
// asking.
func StartConnClient(t testing.TB, netns, addr string) *ConnClient {
	t.Helper()
	var conn net.Conn
	err := nsutil.Do(nsutil.Net, netns, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("client: connect to %s: %v", addr, err)
	}
	c := &ConnClient{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer conn.Close()
		r := bufio.NewReader(conn)
		prev := time.Now()
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			var n int
			_, err := conn.Write([]byte("x\n"))
			if err == nil {
				_, err = fmt.Fscanln(r, &n)
			}
			now := time.Now()
			c.mu.Lock()
			switch {
			case err != nil:
				c.err = fmt.Errorf("after %d answers: %w", c.answers, err)
			case n <= c.last:
				c.err = fmt.Errorf("answer %d after %d: the counter went back", n, c.last)
			}
			if c.err != nil {
				c.mu.Unlock()
				return
			}
			c.answers, c.last = c.answers+1, n
			c.maxGap = max(c.maxGap, now.Sub(prev))
			prev = now
			c.mu.Unlock()
		}
	}()
	return c
}

// WaitAnswers waits until the client has had n more answers than now, or failed.
func (c *ConnClient) WaitAnswers(t testing.TB, n int) {
	t.Helper()
	c.mu.Lock()
	want := c.answers + n
	c.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got, err := c.answers, c.err
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("client: %v", err)
		}
		if got >= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("client: fewer than %d answers in 30 s", want)
}

// Gap returns the longest wait between two answers so far and resets it.
func (c *ConnClient) Gap() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.maxGap
	c.maxGap = 0
	return g
}

// Close stops the client and fails t if it saw anything wrong.
func (c *ConnClient) Close(t testing.TB) {
	t.Helper()
	close(c.stop)
	<-c.done
	if c.err != nil {
		t.Fatalf("client: %v", c.err)
	}
}
