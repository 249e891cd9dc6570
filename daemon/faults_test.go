package daemon

import (
	"testing"
	"time"
)

func TestLoadFaults(t *testing.T) {
	t.Setenv(EnvFaults, "crash-at:planned, pause-at:frozen:2s,corrupt-images,bogus,pause-at:x:nope")
	f := loadFaults()
	if !f.crash["planned"] || f.pause["frozen"] != 2*time.Second || !f.corrupt || len(f.crash) != 1 || len(f.pause) != 1 {
		t.Fatalf("loadFaults = %+v", f)
	}
	t.Setenv(EnvFaults, "")
	if f := loadFaults(); len(f.crash)+len(f.pause) != 0 || f.corrupt {
		t.Fatalf("no faults set, got %+v", f)
	}
}

func TestCorruptWriter(t *testing.T) {
	var got []byte
	w := &corruptWriter{w: writerFunc(func(p []byte) (int, error) { got = append(got, p...); return len(p), nil }), at: 5}
	for _, chunk := range []string{"abc", "defgh", "ij"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	want := []byte("abcdefghij")
	want[5] ^= 0x5a
	if string(got) != string(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
