package migration

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRemoveLaterSetsAsideAtOnce(t *testing.T) {
	images := t.TempDir()
	e := &Engine{cfg: Config{ImageDir: images}}
	dir := filepath.Join(images, "in-m1")
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "pages-1.img"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	e.removeLater(dir)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s is still there after removeLater: %v", dir, err)
	}
	e.wg.Wait()
	if left, _ := os.ReadDir(images); len(left) != 0 {
		t.Fatalf("left in the image dir: %v", left)
	}

	// What a daemon set aside before it stopped goes when the next one recovers; the
	// rest stays.
	for _, d := range []string{removingPrefix + "in-m2", "in-m3", "out-m4"} {
		if err := os.MkdirAll(filepath.Join(images, d, "images"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e.removeSetAside()
	var names []string
	left, _ := os.ReadDir(images)
	for _, ent := range left {
		names = append(names, ent.Name())
	}
	if len(names) != 2 || names[0] != "in-m3" || names[1] != "out-m4" {
		t.Fatalf("after removeSetAside the image dir holds %v, want [in-m3 out-m4]", names)
	}
}
