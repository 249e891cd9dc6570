package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func lines(s string) []string { return strings.Fields(s) }

// TestCompletionWords: the words each position completes to, commands and flags from
// the CLI's definitions, workloads and nodes from the daemon (nothing when it does not
// answer).
func TestCompletionWords(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tc := range []struct {
		name string
		args []string
		want []string // all present
		not  []string // none present
	}{
		{"commands", nil, []string{"run", "move", "completion", "man"}, nil},
		{"move: workloads", []string{"move"}, []string{"db1", "web", "api"}, []string{"n1"}},
		{"move WORKLOAD: nodes", []string{"move", "db1"}, []string{"n1", "n2"}, []string{"db1"}},
		{"move WORKLOAD NODE: nothing more", []string{"move", "db1", "n2"}, nil, []string{"n1", "db1"}},
		{"move flags", []string{"move", "-"}, []string{"--max-downtime", "--json"}, []string{"db1"}},
		{"drain: nodes", []string{"drain"}, []string{"n1", "n2"}, []string{"db1"}},
		{"logs: workloads", []string{"logs"}, []string{"db1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"--socket", f.sock}, tc.args...), "--generate-bash-completion")
			out, err := run(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			got := lines(out)
			for _, w := range tc.want {
				if !contains(got, w) {
					t.Errorf("completions %q lack %q", got, w)
				}
			}
			for _, w := range tc.not {
				if contains(got, w) {
					t.Errorf("completions %q hold %q", got, w)
				}
			}
		})
	}
	// No daemon: no names, no error.
	out, err := run(t, "--socket", filepath.Join(t.TempDir(), "none.sock"), "move", "--generate-bash-completion")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("completion without a daemon: %v %q, want nothing", err, out)
	}
}

func contains(ws []string, w string) bool {
	for _, x := range ws {
		if x == w {
			return true
		}
	}
	return false
}

// TestCompletionScripts: the bash script asks migshm for the words of what is typed so
// far (a stub migshm records what it was asked) and offers those matching the current
// word; the zsh script is a compdef; other shells are refused by name.
func TestCompletionScripts(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed (scripts/setup installs it with the base system)")
	}
	script, err := run(t, "completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	asked := filepath.Join(dir, "asked")
	stub := "#!/bin/sh\necho \"$*\" >> " + asked + "\nprintf 'move\\nmigrations\\n--max-downtime\\n'\n"
	if err := os.WriteFile(filepath.Join(dir, "migshm"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "completion.bash"), []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	probe := `source "$1"
COMP_WORDS=(migshm m); COMP_CWORD=1; _migshm; echo "1:${COMPREPLY[*]}"
COMP_WORDS=(migshm move --max); COMP_CWORD=2; _migshm; echo "2:${COMPREPLY[*]}"
complete -p migshm`
	cmd := exec.Command(bash, "-c", probe, "probe", filepath.Join(dir, "completion.bash"))
	cmd.Env = append(os.Environ(), "PATH="+dir+":/usr/bin:/bin")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	for _, want := range []string{"1:move migrations", "2:--max-downtime", "complete -o default -F _migshm migshm"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bash completion printed %q, want %q", out, want)
		}
	}
	b, _ := os.ReadFile(asked)
	if got := string(b); got != "--generate-bash-completion\nmove --max --generate-bash-completion\n" {
		t.Errorf("migshm was asked %q", got)
	}

	zsh, err := run(t, "completion", "zsh")
	if err != nil || !strings.HasPrefix(zsh, "#compdef migshm") || !strings.Contains(zsh, "--generate-bash-completion") {
		t.Errorf("completion zsh: %v\n%s", err, zsh)
	}
	if _, err := run(t, "completion", "fish"); err == nil || !strings.Contains(err.Error(), `no script for shell "fish"`) {
		t.Errorf("completion fish: %v, want a refusal naming the shell", err)
	}
	if _, err := run(t, "completion"); err == nil || !strings.Contains(err.Error(), "bash or zsh") {
		t.Errorf("completion without a shell: %v", err)
	}
}

// TestManPage: the manual page is made from the CLI's definitions: every command and
// its usage is in it, under a heading of its own.
func TestManPage(t *testing.T) {
	page, err := run(t, "man")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page, ".TH migshm 8") {
		t.Fatalf("man page lacks its title line:\n%.300s", page)
	}
	for _, cmd := range newApp().Commands {
		first := strings.Fields(cmd.Usage)[0]
		if !strings.Contains(page, "\n.SH "+cmd.Name+"\n"+first+" ") {
			t.Errorf("man page lacks command %s (%q)", cmd.Name, cmd.Usage)
		}
	}
	if _, err := run(t, "man", "extra"); err == nil {
		t.Error("man with an argument: no error")
	}
}
