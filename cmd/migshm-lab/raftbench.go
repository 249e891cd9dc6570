package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/migshm/migshm/api"
)

// raftBench measures, on a running cluster, what a table write costs end to end: a
// probe entry sent to a node's local API, forwarded to the leader if that node follows,
// committed by a quorum and applied. The baseline, measured in the same run on the same
// sockets, is a read of the same API (GET /v1/status), so the ratio isolates the cost of
// replication from that of the API round trip.
func raftBench(args []string) error {
	fs := flag.NewFlagSet("raftbench", flag.ContinueOnError)
	socks := fs.String("socket", "", "comma-separated local API sockets of the nodes to send through")
	n := fs.Int("n", 2000, "requests per row")
	conc := fs.String("c", "1,8,32", "comma-separated concurrency levels")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socks == "" {
		return errors.New("raftbench: --socket is required (e.g. /run/migshm-cluster/migshm-n1.sock)")
	}
	var levels []int
	for _, s := range strings.Split(*conc, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 1 {
			return fmt.Errorf("raftbench: -c %q: want positive integers", *conc)
		}
		levels = append(levels, v)
	}
	ctx := context.Background()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "via\trole\top\tconc\tn\tp50\tp99\tops/s\tp50 vs read\t")
	for _, sock := range strings.Split(*socks, ",") {
		c := api.NewClient(sock)
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		role := "follower"
		if st.Leader == st.Node {
			role = "leader"
		}
		for _, cc := range levels {
			read := run(*n, cc, func() error { _, err := c.Status(ctx); return err })
			write := run(*n, cc, func() error { return c.Probe(ctx) })
			if read.err != nil {
				return read.err
			}
			if write.err != nil {
				return write.err
			}
			for _, r := range []struct {
				op  string
				res result
			}{{"read", read}, {"write", write}} {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%v\t%v\t%.0f\t%.2fx\t\n", st.Node, role, r.op, cc, *n,
					r.res.p50.Round(10*time.Microsecond), r.res.p99.Round(10*time.Microsecond), r.res.rate,
					float64(r.res.p50)/float64(read.p50))
			}
		}
	}
	return w.Flush()
}

type result struct {
	p50, p99 time.Duration
	rate     float64
	err      error
}

// run does n calls of fn from cc goroutines and returns latency percentiles and rate.
func run(n, cc int, fn func() error) result {
	lat := make([]time.Duration, n)
	var next int
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < cc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := fn(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	total := time.Since(start)
	if firstErr != nil {
		return result{err: firstErr}
	}
	slices.Sort(lat)
	return result{p50: lat[n/2], p99: lat[n*99/100], rate: float64(n) / total.Seconds()}
}
