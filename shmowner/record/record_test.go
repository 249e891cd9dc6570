package record

import (
	"errors"
	"testing"
)

func TestSegmentID(t *testing.T) {
	id := SegmentID{Group: "ns/ipc:4026532", Shmid: 32769}
	if s := id.String(); s != "ns/ipc:4026532/32769" {
		t.Errorf("String = %q", s)
	}
	got, err := ParseSegmentID(id.String())
	if err != nil || got != id {
		t.Errorf("ParseSegmentID = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "grp", "/1", "grp/", "grp/x", "grp/-1"} {
		if _, err := ParseSegmentID(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSegmentID(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
