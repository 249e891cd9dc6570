//go:build faults

package faults

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestParse(t *testing.T) {
	f := parse("crash-at:planned, pause-at:frozen:2s,corrupt-images,bogus,pause-at:x:nope")
	if !f.crash["planned"] || f.pause["frozen"] != 2*time.Second || !f.corrupt || len(f.crash) != 1 || len(f.pause) != 1 {
		t.Fatalf("parse = %+v", f)
	}
	if f := parse(""); len(f.crash)+len(f.pause) != 0 || f.corrupt {
		t.Fatalf("no faults set, got %+v", f)
	}
}

func TestCorruptReader(t *testing.T) {
	// One byte at a time, so the flip lands inside a later read.
	r := &corruptReader{r: iotest.OneByteReader(strings.NewReader("abcdefghij")), at: 5}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("abcdefghij")
	want[5] ^= 0x5a
	if string(got) != string(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
