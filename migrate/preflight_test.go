package migrate

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/migshm/migshm/workload"
)

const (
	fxHostPidNS   = "pid:[4026531836]"
	fxHostIPCNS   = "ipc:[4026531839]"
	fxWorkPidNS   = "pid:[4026532301]"
	fxWorkIPCNS   = "ipc:[4026532300]"
	fxOtherIPCNS  = "ipc:[4026532900]"
	fxNestedPidNS = "pid:[4026532400]"
)

// fxHost returns the host's init and a daemon, in the host namespaces, with no SysV.
func fxHost() []workload.Proc {
	return []workload.Proc{
		{Pid: 1, PPid: 0, Comm: "systemd", NSpid: []int{1}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
		{Pid: 3900, PPid: 1, Comm: "migshmd", NSpid: []int{3900}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS},
	}
}

// fxWork returns a movable workload: init 4000 with two children sharing a segment, all in
// the workload's own PID and IPC namespaces.
func fxWork() []workload.Proc {
	seg := []workload.Attachment{{Shmid: 3, Key: 0x4d494753}}
	return []workload.Proc{
		{Pid: 4000, PPid: 3900, Comm: "migshm-init", NSpid: []int{4000, 1}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS},
		{Pid: 4001, PPid: 4000, Comm: "shmcounter", NSpid: []int{4001, 2}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS, SysV: seg},
		{Pid: 4002, PPid: 4000, Comm: "shmcounter", NSpid: []int{4002, 3}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS, SysV: seg},
	}
}

// fxJoin joins process lists, applying edit (if any) to every process.
func fxJoin(edit func(*workload.Proc), lists ...[]workload.Proc) []workload.Proc {
	var out []workload.Proc
	for _, l := range lists {
		for _, p := range l {
			if edit != nil {
				edit(&p)
			}
			out = append(out, p)
		}
	}
	return out
}

func fxFind(t *testing.T, all []workload.Proc, pid int) workload.Proc {
	t.Helper()
	for _, p := range all {
		if p.Pid == pid {
			return p
		}
	}
	t.Fatalf("pid %d is not in the listing", pid)
	return workload.Proc{}
}

func fxPids(ps []workload.Proc) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out
}

func TestCheckMovable(t *testing.T) {
	hostSysV := workload.Proc{Pid: 5000, PPid: 1, Comm: "shmwriter", NSpid: []int{5000}, PidNS: fxHostPidNS,
		IPCNS: fxHostIPCNS, SysV: []workload.Attachment{{Shmid: 32769, Key: 0x6d00beef}, {Shmid: 32770, Key: 0}}}
	hostPlain := workload.Proc{Pid: 5001, PPid: 1, Comm: "sleep", NSpid: []int{5001}, PidNS: fxHostPidNS, IPCNS: fxHostIPCNS}
	// Joined the workload's IPC namespace from the host (nsenter --ipc).
	outsider := workload.Proc{Pid: 5002, PPid: 1, Comm: "sleep", NSpid: []int{5002}, PidNS: fxHostPidNS, IPCNS: fxWorkIPCNS}
	outsider2 := workload.Proc{Pid: 5003, PPid: 3900, Comm: "ipcs", NSpid: []int{5003}, PidNS: fxHostPidNS, IPCNS: fxWorkIPCNS}
	// Another workload with its own namespaces: unrelated.
	other := []workload.Proc{
		{Pid: 6000, PPid: 3900, Comm: "migshm-init", NSpid: []int{6000, 1}, PidNS: "pid:[4026532800]", IPCNS: fxOtherIPCNS},
		{Pid: 6001, PPid: 6000, Comm: "postgres", NSpid: []int{6001, 2}, PidNS: "pid:[4026532800]", IPCNS: fxOtherIPCNS,
			SysV: []workload.Attachment{{Shmid: 3, Key: 0x5432}}},
	}
	inHostIPC := func(p *workload.Proc) {
		if p.IPCNS == fxWorkIPCNS {
			p.IPCNS = fxHostIPCNS
		}
	}
	tests := []struct {
		name   string
		all    []workload.Proc
		pid    int
		reason Reason // empty: movable
		procs  []int  // the pids the refusal names (in NotMovableError.Procs and the message)
		want   []string
	}{
		{name: "movable from the init", all: fxJoin(nil, fxHost(), fxWork(), other), pid: 4000},
		{name: "movable from a child", all: fxJoin(nil, fxHost(), fxWork(), other), pid: 4002},
		{
			name: "host process with SysV", all: fxJoin(nil, fxHost(), fxWork(), []workload.Proc{hostSysV}), pid: 5000,
			reason: ReasonHostIPCSysV, procs: []int{5000},
			want: []string{"5000 (shmwriter)", "shmid 32769 key 0x6d00beef", "shmid 32770 key 0", "migshm run"},
		},
		{
			name: "host process without SysV", all: fxJoin(nil, fxHost(), []workload.Proc{hostPlain}), pid: 5001,
			reason: ReasonNoPidNS, procs: []int{5001},
			want: []string{"5001 (sleep) is not inside a PID namespace of its own"},
		},
		{
			name: "tree in the host IPC namespace", all: fxJoin(inHostIPC, fxHost(), fxWork()[:1]), pid: 4000,
			reason: ReasonHostIPC, procs: []int{4000},
			want: []string{"shares the host IPC namespace", "4000 (migshm-init)"},
		},
		{
			// With SysV attached there, the more specific reason wins, naming the attachers.
			name: "tree with SysV in the host IPC namespace", all: fxJoin(inHostIPC, fxHost(), fxWork()), pid: 4000,
			reason: ReasonHostIPCSysV, procs: []int{4001, 4002},
			want: []string{"processes 4001 (shmcounter), 4002 (shmcounter)", "shmid 3 key 0x4d494753"},
		},
		{
			name: "outsiders share the IPC namespace", pid: 4001,
			all:    fxJoin(nil, fxHost(), fxWork(), []workload.Proc{outsider, hostPlain, outsider2}, other),
			reason: ReasonIPCShared, procs: []int{5002, 5003},
			want: []string{fxWorkIPCNS, "5002 (sleep)", "5003 (ipcs)", "4000 (migshm-init)"},
		},
		{
			name: "child in another IPC namespace", pid: 4000,
			all: fxJoin(func(p *workload.Proc) {
				if p.Pid == 4002 {
					p.IPCNS = fxOtherIPCNS
				}
			}, fxHost(), fxWork()),
			reason: ReasonMixedIPC, procs: []int{4002},
			want: []string{"process 4002 (shmcounter) live in another IPC namespace"},
		},
		{
			name: "nested PID namespace", pid: 4001,
			all: fxJoin(nil, fxHost(), fxWork(), []workload.Proc{
				{Pid: 4010, PPid: 4002, Comm: "unshare", NSpid: []int{4010, 11, 1}, PidNS: fxNestedPidNS, IPCNS: fxWorkIPCNS},
				{Pid: 4011, PPid: 4010, Comm: "sh", NSpid: []int{4011, 12, 2}, PidNS: fxNestedPidNS, IPCNS: fxWorkIPCNS},
			}),
			reason: ReasonNestedPidNS, procs: []int{4010, 4011},
			want: []string{"4010 (unshare)", "4011 (sh)", "nested PID namespace"},
		},
		{
			// Entered the workload's PID namespace with setns: not below its init.
			name: "entered the PID namespace from outside", pid: 7001,
			all: fxJoin(nil, fxHost(), fxWork(), []workload.Proc{
				{Pid: 7000, PPid: 1, Comm: "nsenter", NSpid: []int{7000}, PidNS: fxHostPidNS, IPCNS: fxOtherIPCNS},
				{Pid: 7001, PPid: 7000, Comm: "sh", NSpid: []int{7001, 9}, PidNS: fxWorkPidNS, IPCNS: fxOtherIPCNS},
			}),
			reason: ReasonNoPidNS, procs: []int{7001},
			want: []string{"cannot find the init of its PID namespace " + fxWorkPidNS},
		},
		{
			// The same intruder, seen when checking the workload itself.
			name: "PID namespace entered from outside", pid: 4001,
			all: fxJoin(nil, fxHost(), fxWork(), []workload.Proc{
				{Pid: 7000, PPid: 1, Comm: "nsenter", NSpid: []int{7000}, PidNS: fxHostPidNS, IPCNS: fxOtherIPCNS},
				{Pid: 7001, PPid: 7000, Comm: "sh", NSpid: []int{7001, 9}, PidNS: fxWorkPidNS, IPCNS: fxOtherIPCNS},
			}),
			reason: ReasonPidShared, procs: []int{7001},
			want: []string{"process 7001 (sh) entered the PID namespace", "4000 (migshm-init)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := checkMovable(tt.all, fxFind(t, tt.all, tt.pid), fxHostIPCNS)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if tree.Init.Pid != 4000 || !reflect.DeepEqual(fxPids(tree.Procs), []int{4000, 4001, 4002}) {
					t.Errorf("tree init %d, procs %v; want init 4000 with 4000 4001 4002", tree.Init.Pid, fxPids(tree.Procs))
				}
				return
			}
			var nm *NotMovableError
			if !errors.As(err, &nm) {
				t.Fatalf("got tree %v, error %v; want a refusal (%s)", tree, err, tt.reason)
			}
			if tree != nil {
				t.Errorf("refusal came with a tree")
			}
			if nm.Reason != tt.reason {
				t.Errorf("reason %s, want %s (%v)", nm.Reason, tt.reason, err)
			}
			if nm.Pid != tt.pid {
				t.Errorf("refusal is about pid %d, want %d", nm.Pid, tt.pid)
			}
			if got := fxPids(nm.Procs); !reflect.DeepEqual(got, tt.procs) {
				t.Errorf("refusal names %v, want %v", got, tt.procs)
			}
			msg := err.Error()
			prefix := fmt.Sprintf("pid %d cannot be moved (%s): ", tt.pid, tt.reason)
			if !strings.HasPrefix(msg, prefix) {
				t.Errorf("message %q does not start with %q", msg, prefix)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not contain %q", msg, w)
				}
			}
		})
	}
}

// A pid read alone but missing from the full listing exited in between.
func TestCheckMovableProcessGone(t *testing.T) {
	all := fxJoin(nil, fxHost(), fxWork())
	gone := workload.Proc{Pid: 4003, PPid: 4000, Comm: "worker", NSpid: []int{4003, 4}, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS}
	_, err := checkMovable(all, gone, fxHostIPCNS)
	if !errors.Is(err, workload.ErrNoProcess) {
		t.Fatalf("got %v, want ErrNoProcess", err)
	}
	var nm *NotMovableError
	if errors.As(err, &nm) {
		t.Errorf("got refusal %v for a process that exited", nm)
	}
}

func TestPreflightCheckFixture(t *testing.T) {
	pf := Preflight{ProcRoot: "../workload/testdata/proc/tree1", HostIPCNS: fxHostIPCNS}
	t.Run("outsider shares the IPC namespace", func(t *testing.T) {
		tree, err := pf.Check(4001)
		var nm *NotMovableError
		if !errors.As(err, &nm) {
			t.Fatalf("got tree %v, error %v; want a refusal", tree, err)
		}
		if nm.Reason != ReasonIPCShared {
			t.Errorf("reason %s, want %s", nm.Reason, ReasonIPCShared)
		}
		if got := fxPids(nm.Procs); !reflect.DeepEqual(got, []int{5000}) {
			t.Errorf("refusal names %v, want [5000]", got)
		}
		if msg := err.Error(); !strings.Contains(msg, "5000 (sleep)") || !strings.Contains(msg, fxWorkIPCNS) {
			t.Errorf("message %q does not name 5000 (sleep) and %s", msg, fxWorkIPCNS)
		}
	})
	t.Run("missing pid", func(t *testing.T) {
		_, err := pf.Check(4003)
		if !errors.Is(err, workload.ErrNoProcess) {
			t.Fatalf("got %v, want ErrNoProcess", err)
		}
	})
	t.Run("missing proc root", func(t *testing.T) {
		_, err := Preflight{ProcRoot: t.TempDir()}.Check(4001)
		if err == nil || !strings.Contains(err.Error(), "read own IPC namespace") {
			t.Fatalf("got %v, want an error reading self/ns/ipc", err)
		}
	})
}

// TestOrphanedSession: a daemon whose session leader exited moves when it is a child of
// the tree's init (CRIU recreates its session with a helper) and is refused, naming it,
// when it is a child of a member init of a group.
func TestOrphanedSession(t *testing.T) {
	w := func(pid, ppid, nspid, sid int, comm string) workload.Proc {
		return workload.Proc{Pid: pid, PPid: ppid, Comm: comm, NSpid: []int{pid, nspid}, Sid: sid, PidNS: fxWorkPidNS, IPCNS: fxWorkIPCNS}
	}
	groupInit := w(4000, 3900, 1, 1, "migshm-init")
	// Alone: the init runs the command; the daemon (ns pid 5, session 4 of its exited
	// middle process) was reparented to the init.
	alone := fxJoin(nil, fxHost(), []workload.Proc{groupInit, w(4005, 4000, 5, 4, "perl"), w(4006, 4005, 6, 4, "perl")})
	if _, err := checkMovable(alone, groupInit, fxHostIPCNS); err != nil {
		t.Fatalf("a daemon under the init refused: %v", err)
	}
	// In a group: the member init (ns pid 2, its own session) is the daemon's subreaper.
	group := fxJoin(nil, fxHost(), []workload.Proc{groupInit, w(4002, 4000, 2, 2, "migshm-init"),
		w(4003, 4002, 3, 2, "sleep"), w(4005, 4002, 5, 4, "perl"), w(4006, 4005, 6, 4, "perl")})
	_, err := checkMovable(group, groupInit, fxHostIPCNS)
	var nm *NotMovableError
	if !errors.As(err, &nm) || nm.Reason != ReasonOrphanSession || !strings.Contains(err.Error(), "process 4005 (perl)") ||
		strings.Contains(err.Error(), "4006") || strings.Contains(err.Error(), "4003") {
		t.Fatalf("a daemon under a member init: %v; want %s naming 4005 only", err, ReasonOrphanSession)
	}
	// A process that called setsid and leads its session, or whose leader is an ancestor,
	// is fine anywhere.
	led := fxJoin(nil, fxHost(), []workload.Proc{groupInit, w(4002, 4000, 2, 2, "migshm-init"),
		w(4004, 4002, 4, 4, "perl"), w(4005, 4004, 5, 4, "perl"), w(4007, 4005, 7, 4, "perl")})
	if _, err := checkMovable(led, groupInit, fxHostIPCNS); err != nil {
		t.Fatalf("sessions with their leaders refused: %v", err)
	}
}
