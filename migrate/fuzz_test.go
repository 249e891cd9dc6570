package migrate

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadImages feeds the image stream reader what a peer could send: it must never
// panic, and whatever it accepts or refuses, it writes only regular files inside its
// directory, within MaxBytes.
func FuzzReadImages(f *testing.F) {
	src := f.TempDir()
	for name, content := range map[string]string{
		"core-1.img": "core", "pages-1.img": strings.Repeat("p", 3*4096), "pagemap-1.img": "pm", "mm-1.img": "",
	} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	for _, chunk := range []int{0, 4096, 5000} {
		var buf bytes.Buffer
		if _, err := WriteImages(context.Background(), &buf, src, StreamOptions{ChunkSize: chunk}); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		b := buf.Bytes()
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	const maxBytes = 1 << 20
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := filepath.Join(t.TempDir(), "in")
		_, _ = ReadImages(context.Background(), bytes.NewReader(data), dir, StreamOptions{MaxBytes: maxBytes})
		var total int64
		_ = filepath.WalkDir(filepath.Dir(dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == filepath.Dir(dir) {
				return nil
			}
			info, err := os.Lstat(p)
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(dir, p)
			switch {
			case p == dir && info.IsDir():
			case strings.HasPrefix(rel, ".."):
				t.Fatalf("wrote %s, outside %s", p, dir)
			case !info.Mode().IsRegular() && !info.IsDir():
				t.Fatalf("wrote %s, a %v", p, info.Mode())
			case info.Mode().IsRegular():
				total += info.Size()
			}
			return nil
		})
		if total > maxBytes {
			t.Fatalf("wrote %d bytes, more than MaxBytes %d", total, maxBytes)
		}
	})
}
