// Command migshm-lab runs migshm's moving parts by hand on one machine, without the
// daemons: `migshm-lab demo` starts the shared-counter test workload in one node network
// namespace and moves it around the others with the CRIU adapter, checking at every hop
// that each segment's contents are equal at the freeze and before the restored tree
// resumes, that the counter invariant holds, and that the source copy is gone.
// scripts/demo brings up the node namespaces and runs it. `migshm-lab raftbench` times
// table writes through the daemons; `migshm-lab bench` measures `migshm move` against a
// hand-scripted CRIU dump / copy / restore on two throttled local nodes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/migshm/migshm/internal/testwork"
	"github.com/migshm/migshm/migrate"
	"github.com/migshm/migshm/workload"
)

func main() {
	workload.MaybeRunInit()
	if len(os.Args) >= 2 && os.Args[1] == "raftbench" {
		if err := raftBench(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "migshm-lab: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "bench" {
		if err := benchMain(os.Args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(2)
			}
			fmt.Fprintf(os.Stderr, "migshm-lab: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "demo" {
		fmt.Fprintln(os.Stderr, "usage: migshm-lab demo --netns NS1,NS2[,...] [--hops N] [--workers N]\n"+
			"       migshm-lab raftbench --socket SOCK[,SOCK...] [-n N] [-c 1,8,32]\n"+
			"       migshm-lab bench [--sizes 100,512,1024] [--rate 1gbit] [--dirty 5] [--runs N] (--help for more)")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	netns := fs.String("netns", "", "comma-separated node network namespaces (names under /run/netns)")
	hops := fs.Int("hops", 0, "number of moves (default: once around all nodes)")
	workers := fs.Int("workers", 4, "shared-counter worker processes")
	work := fs.String("dir", "/dev/shm/migshm-lab", "working directory for images (tmpfs: memory speed)")
	_ = fs.Parse(os.Args[2:])
	nodes := strings.Split(*netns, ",")
	if *netns == "" || len(nodes) < 2 {
		fmt.Fprintln(os.Stderr, "migshm-lab: --netns needs at least two node namespaces")
		os.Exit(2)
	}
	if *hops <= 0 {
		*hops = len(nodes)
	}
	if err := demo(context.Background(), nodes, *hops, *workers, *work); err != nil {
		fmt.Fprintf(os.Stderr, "migshm-lab: %v\n", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, nodes []string, hops, workers int, work string) error {
	path, err := migrate.FindCRIU("")
	if err != nil {
		return err
	}
	c := &migrate.CRIU{Path: path}
	caps, err := c.Check(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("CRIU %s at %s\n", caps.Version, caps.Path)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(work, "run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := testwork.BuildAll(filepath.Join(dir, "bin"))
	if err != nil {
		return fmt.Errorf("build test workloads: %w", err)
	}

	stdout := filepath.Join(dir, "shmcounter.out")
	proc, err := workload.Start(workload.Spec{
		Args:   []string{bins.ShmCounter, "--workers", strconv.Itoa(workers)},
		Stdout: stdout, Stderr: filepath.Join(dir, "shmcounter.err"),
		NetNS: nsPath(nodes[0]), Hostname: "shmcounter",
	})
	if err != nil {
		return err
	}
	defer func() { _ = proc.Kill(); _, _ = proc.Wait() }()
	if err := waitFor(10*time.Second, func() error { return grep(stdout, "shmcounter ready") }); err != nil {
		return fmt.Errorf("workload did not start: %w", err)
	}
	fmt.Printf("started shmcounter (%d workers, one SysV segment + semaphore) on %s: init pid %d\n\n",
		workers, nodes[0], proc.Pid)

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "hop\tfrom\tto\tprocs\tsegments\tshm sha256 (verified)\tfrozen\timages\trestore\tcounter\t")
	for hop := 1; hop <= hops; hop++ {
		from, to := nodes[(hop-1)%len(nodes)], nodes[hop%len(nodes)]
		if err := waitFor(10*time.Second, func() error { _, err := bins.CounterCheck(proc.Pid); return err }); err != nil {
			return fmt.Errorf("hop %d: invariant before the move: %w", hop, err)
		}
		tree, err := migrate.Preflight{}.Check(proc.Pid)
		if err != nil {
			return fmt.Errorf("hop %d: %w", hop, err)
		}
		images := filepath.Join(dir, fmt.Sprintf("hop%d", hop))
		dump, err := c.Dump(ctx, migrate.DumpOptions{Pid: proc.Pid, ImagesDir: images, LeaveStopped: true, NetNS: nsPath(from)})
		if err != nil {
			return fmt.Errorf("hop %d: %w", hop, err)
		}
		digests, err := workload.DigestSegments(proc.Pid)
		if err != nil {
			return errors.Join(fmt.Errorf("hop %d: %w", hop, err), tree.Signal(syscall.SIGCONT))
		}
		res, err := c.Restore(ctx, migrate.RestoreOptions{
			ImagesDir: images, WorkDir: images + ".restore", NetNS: nsPath(to),
			BeforeResume: migrate.VerifySegments(digests),
		})
		if err != nil {
			// Abort: the stopped source copy goes on where it was.
			return errors.Join(fmt.Errorf("hop %d: %w (the workload resumes on %s)", hop, err, from),
				tree.Signal(syscall.SIGCONT))
		}
		// The copy on the target runs: only now the stopped source goes.
		_ = proc.Kill()
		_, _ = proc.Wait()
		for _, p := range tree.Procs {
			if err := waitFor(5*time.Second, func() error {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.Pid)); err == nil {
					return fmt.Errorf("source process %v still exists", p)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("hop %d: %w", hop, err)
			}
		}
		proc = workload.Attach(res.Pid)
		var total uint64
		if err := waitFor(10*time.Second, func() error { total, err = bins.CounterCheck(proc.Pid); return err }); err != nil {
			return fmt.Errorf("hop %d: after the move: %w", hop, err)
		}
		var sums []string
		for _, d := range digests {
			sums = append(sums, d.Digest[:12])
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%v\t%.1f MB\t%v\t%d\t\n", hop, from, to, len(tree.Procs),
			len(digests), strings.Join(sums, ","), dump.Frozen.Round(time.Millisecond), float64(dump.ImageBytes)/1e6,
			res.Restore.Round(time.Millisecond), total)
		os.RemoveAll(images)
		os.RemoveAll(images + ".restore")
	}
	tw.Flush()
	fmt.Printf("\nshmcounter now runs on %s as pid %d. At every hop the restored segments matched\n"+
		"the frozen ones byte for byte before the tree resumed, the source copy was gone, and\n"+
		"total == sum of the workers' counts (the semaphore-protected invariant).\n",
		nodes[hops%len(nodes)], proc.Pid)
	return nil
}

func nsPath(name string) string { return filepath.Join("/run/netns", name) }

func grep(path, s string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), s) {
		return fmt.Errorf("no %q in %s yet", s, path)
	}
	return nil
}

func waitFor(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
