package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"migshm"}, args...))
	return out.String(), err
}

func TestCheckRefusesHostProcess(t *testing.T) {
	// The test binary itself lives in the host PID namespace: not a workload.
	out, err := run(t, "check", "--json", strconv.Itoa(os.Getpid()))
	if err == nil || !strings.Contains(err.Error(), "no-pid-namespace") {
		t.Fatalf("check of a host process: err %v, want a no-pid-namespace refusal", err)
	}
	var r checkReport
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", jerr, out)
	}
	if r.Movable || r.Reason != "no-pid-namespace" || r.Pid != os.Getpid() || len(r.Procs) != 1 {
		t.Fatalf("report %+v", r)
	}
}

func TestCheckBadInput(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"check"}, "check needs one PID, or a WORKLOAD and a NODE (got 0 arguments)"},
		{[]string{"check", "1", "2", "3"}, "check needs one PID, or a WORKLOAD and a NODE (got 3 arguments)"},
		{[]string{"check", "abc"}, `"abc" is not a process id`},
		{[]string{"check", "0"}, `"0" is not a process id`},
		{[]string{"check", "1073741824"}, "no process with pid 1073741824"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := run(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDoctorReportsMissingCRIU(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "criu")
	out, err := run(t, "--criu", missing, "doctor", "--json")
	if err == nil {
		t.Fatal("doctor with a missing CRIU succeeded")
	}
	var r doctorReport
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", jerr, out)
	}
	if r.OK || len(r.Problems) == 0 || !strings.Contains(strings.Join(r.Problems, "\n"), "scripts/setup") {
		t.Fatalf("report %+v: want not OK with a problem pointing at scripts/setup", r)
	}
}
