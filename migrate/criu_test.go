package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fxWriteFile writes content to name under dir with exactly mode perm (whatever the umask).
func fxWriteFile(t *testing.T, dir, name, content string, perm fs.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

func fxLogLines(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("(00.%06d) %s %d", 100+i, prefix, i)
	}
	return out
}

func TestLogTail(t *testing.T) {
	errLine := func(i int) string {
		return fmt.Sprintf("(00.0123%02d) Error (criu/cr-dump.c:%d): ptrace: cannot seize task %d", i, 1234+i, 4000+i)
	}
	var tenErrors []string
	for i := range 10 {
		tenErrors = append(tenErrors, errLine(i))
	}
	normal := fxLogLines("Dumping pages", 40)
	tests := []struct {
		name string
		log  []string
		want []string
	}{
		{
			// Early errors, then much normal output: the last 8 errors, then the last 6 lines.
			name: "early errors",
			log: append(append([]string{"(00.000007) Version: 4.1.1 (gitid 0)", "(00.000010) Running on node1"},
				tenErrors...), normal...),
			want: append(append([]string{}, tenErrors[2:]...), normal[34:]...),
		},
		{
			// An error among the last lines is shown once, before the tail.
			name: "error at the end",
			log:  append(append([]string{errLine(0)}, normal[:20]...), errLine(1), normal[20], normal[21]),
			want: []string{errLine(0), errLine(1), normal[17], normal[18], normal[19], normal[20], normal[21]},
		},
		{
			name: "short log without errors",
			log:  normal[:3],
			want: normal[:3],
		},
		{
			name: "warnings are not errors",
			log: append([]string{"(00.000500) Warn  (criu/kerndat.c:1111): Can't keep kdat cache"},
				normal[:10]...),
			want: normal[4:10],
		},
		{
			// CRIU logs this on every run when root lacks CAP_SYS_RESOURCE; it explains nothing.
			name: "harmless rlimit error left out",
			log: append([]string{"(00.019503) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted",
				errLine(3)}, normal[:10]...),
			want: append([]string{errLine(3)}, normal[4:10]...),
		},
		{name: "empty log", log: nil, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := strings.Join(tt.log, "\n")
			if len(tt.log) > 0 {
				content += "\n"
			}
			path := fxWriteFile(t, t.TempDir(), "dump.log", content, 0o600)
			got := logTail(path)
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
			lines := strings.Split(got, "\n")
			errs, seen := 0, map[string]bool{}
			for _, l := range lines {
				if seen[l] && l != "" {
					t.Errorf("line %q shown twice", l)
				}
				seen[l] = true
				if strings.Contains(l, "Error (") {
					errs++
				}
			}
			if errs > 8 {
				t.Errorf("%d error lines, want at most 8", errs)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if got := logTail(filepath.Join(t.TempDir(), "nope.log")); got != "" {
			t.Errorf("got %q, want empty", got)
		}
	})
}

func TestParseVersion(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Version: 4.1.1\nGitID: v4.1.1\n", "4.1.1"},
		{"Version: 3.17.1\n", "3.17.1"},
		{"  Version:   4.1  \r\nGitID: v4.1\n", "4.1"},
		{"GitID: v4.0-12-gabc\nVersion: 4.0\n", "4.0"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := parseVersion(tt.in); got != tt.want {
				t.Errorf("parseVersion(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestMakePrivate(t *testing.T) {
	dir := t.TempDir()
	outside := fxWriteFile(t, t.TempDir(), "outside.img", "x", 0o644)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	fxWriteFile(t, dir, "pages-1.img", "p", 0o644)
	fxWriteFile(t, dir, "core-4000.img", "c", 0o600)
	fxWriteFile(t, dir, "stats-dump", "s", 0o640)
	fxWriteFile(t, dir, "run.sh", "#!/bin/sh\n", 0o755)
	fxWriteFile(t, sub, "inventory.img", "i", 0o666)
	// CRIU links a pre-dump's images as "parent"; a link may also dangle.
	if err := os.Symlink(outside, filepath.Join(dir, "parent")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}

	if err := makePrivate(dir); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want fs.FileMode
	}{
		{filepath.Join(dir, "pages-1.img"), 0o600},
		{filepath.Join(dir, "core-4000.img"), 0o600},
		{filepath.Join(dir, "stats-dump"), 0o600},
		{filepath.Join(dir, "run.sh"), 0o700},
		{sub, 0o700},
		{filepath.Join(sub, "inventory.img"), 0o600},
		// Not under dir: a link to it must not be followed.
		{outside, 0o644},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			st, err := os.Stat(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != tt.want {
				t.Errorf("mode %#o, want %#o", got, tt.want)
			}
		})
	}
	t.Run("missing dir", func(t *testing.T) {
		if err := makePrivate(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("got %v, want ErrNotExist", err)
		}
	})
}

func TestFindCRIU(t *testing.T) {
	dir := t.TempDir()
	exe := fxWriteFile(t, dir, "criu", "#!/bin/sh\nexit 0\n", 0o755)
	other := fxWriteFile(t, dir, "criu-other", "#!/bin/sh\nexit 0\n", 0o755)
	plain := fxWriteFile(t, dir, "criu.txt", "not a program", 0o644)
	missing := filepath.Join(dir, "bin", "criu")
	tests := []struct {
		name    string
		path    string
		env     string
		want    string // the path returned; empty means an error
		wantErr []string
	}{
		{name: "explicit executable", path: exe, want: exe},
		{name: "explicit beats env", path: exe, env: other, want: exe},
		{name: "env", env: other, want: other},
		{name: "explicit missing", path: missing, wantErr: []string{missing, "scripts/setup", EnvCRIU}},
		{name: "env missing", env: missing, wantErr: []string{missing, "scripts/setup"}},
		{name: "not executable", path: plain, wantErr: []string{plain, "not an executable file"}},
		{name: "directory", path: dir, wantErr: []string{dir, "not an executable file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvCRIU, tt.env)
			got, err := FindCRIU(tt.path)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrCRIUUnavailable) {
				t.Fatalf("got %q, %v; want ErrCRIUUnavailable", got, err)
			}
			if got != "" {
				t.Errorf("returned path %q with the error", got)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestCRIUErrorError(t *testing.T) {
	inner := fmt.Errorf("%w: swrk exited", ErrCRIUUnavailable)
	tests := []struct {
		name string
		err  *CRIUError
		want string
	}{
		{
			name: "with pid and log",
			err: &CRIUError{Op: "dump", PID: 4000, LogFile: "/var/lib/migshm/w1/dump.log",
				LogTail: "(00.012345) Error (criu/cr-dump.c:1234): Dumping FAILED.", Err: inner},
			want: "criu dump of pid 4000: CRIU is not available: swrk exited\n" +
				"criu log /var/lib/migshm/w1/dump.log ends with:\n" +
				"(00.012345) Error (criu/cr-dump.c:1234): Dumping FAILED.",
		},
		{
			name: "without pid or log",
			err:  &CRIUError{Op: "restore", LogFile: "/tmp/restore.log", Err: inner},
			want: "criu restore: CRIU is not available: swrk exited",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
			wrapped := fmt.Errorf("move w1: %w", tt.err)
			if !errors.Is(wrapped, ErrCRIUUnavailable) {
				t.Errorf("errors.Is(%v, ErrCRIUUnavailable) = false", wrapped)
			}
			var ce *CRIUError
			if !errors.As(wrapped, &ce) || ce != tt.err {
				t.Errorf("errors.As did not find the CRIUError in %v", wrapped)
			}
		})
	}
	if errors.Is(&CRIUError{Op: "dump", Err: errors.New("boom")}, ErrCRIUUnavailable) {
		t.Error("an unrelated CRIU failure is ErrCRIUUnavailable")
	}
}

// fxFakeCRIU writes a shell script standing in for criu.
func fxFakeCRIU(t *testing.T, body string) string {
	t.Helper()
	return fxWriteFile(t, t.TempDir(), "criu", "#!/bin/sh\n"+body, 0o755)
}

func TestCRIUCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := fxFakeCRIU(t, `case "$*" in
check) echo "Looks good."; exit 0 ;;
--version) echo "Version: 4.1.1"; echo "GitID: v4.1.1"; exit 0 ;;
"check --feature uffd") echo "uffd is supported"; exit 0 ;;
"check --feature "*) echo "$3 is not supported" >&2; exit 1 ;;
esac
echo "unexpected arguments: $*" >&2
exit 2
`)
	caps, err := (&CRIU{Path: path}).Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.Path != path || caps.Version != "4.1.1" {
		t.Errorf("path %q version %q, want %q 4.1.1", caps.Path, caps.Version, path)
	}
	if len(caps.Features) != len(OptionalFeatures) {
		t.Errorf("features %v, want all of %v probed", caps.Features, OptionalFeatures)
	}
	for _, f := range OptionalFeatures {
		want := f == "uffd"
		got, ok := caps.Features[f]
		if !ok || got != want {
			t.Errorf("feature %s = %v (probed %v), want %v", f, got, ok, want)
		}
	}
}

func TestCRIUCheckFails(t *testing.T) {
	const vdso = "(00.020335) Error (criu/vdso.c:249): vdso: Unexpected rt vDSO area bounds"
	tests := []struct {
		name string
		body string // script body; empty means no binary at all
		want []string
	}{
		{
			// CRIU 3.17 on kernels >= 6.13: it has a version, but nothing works.
			name: "criu 3.17 vdso",
			body: `case "$1" in
--version) echo "Version: 3.17.1"; exit 0 ;;
check) echo "` + vdso + `" >&2; echo "(00.020400) Error (criu/cr-check.c:1623): check failed"; exit 1 ;;
esac
exit 2
`,
			want: []string{vdso, "exit status 1"},
		},
		{
			name: "exit 0 without looks good",
			body: "echo 'Warn: something odd'; exit 0\n",
			want: []string{"Warn: something odd"},
		},
		{name: "missing binary", want: []string{"no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "criu")
			if tt.body != "" {
				path = fxFakeCRIU(t, tt.body)
			}
			caps, err := (&CRIU{Path: path}).Check(context.Background())
			if err == nil {
				t.Fatalf("got %+v, want an error", caps)
			}
			if !errors.Is(err, ErrCRIUUnavailable) {
				t.Errorf("got %v, want ErrCRIUUnavailable", err)
			}
			var ce *CRIUError
			if !errors.As(err, &ce) || ce.Op != "check" {
				t.Errorf("got %#v, want a CRIUError of op check", err)
			}
			msg := err.Error()
			for _, w := range append([]string{"criu check", path}, tt.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}
