package record

import (
	"errors"
	"fmt"
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

func TestErrorCodes(t *testing.T) {
	for _, c := range codes {
		wrapped := fmt.Errorf("plan migration m1: %w", c.err)
		code := ErrorCode(wrapped)
		if code != c.code {
			t.Errorf("ErrorCode(%v) = %q, want %q", wrapped, code, c.code)
		}
		back := ErrorFromCode(code, wrapped.Error())
		if !errors.Is(back, c.err) || back.Error() != wrapped.Error() {
			t.Errorf("ErrorFromCode(%q) = %v, not %v", code, back, c.err)
		}
	}
	if ErrorCode(errors.New("x")) != "" {
		t.Error("plain error has a code")
	}
	if err := ErrorFromCode("martian", "boom"); err.Error() != "boom" || ErrorCode(err) != "" {
		t.Errorf("unknown code: %v", err)
	}
}
