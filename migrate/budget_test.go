package migrate

import (
	"testing"
	"time"
)

func TestFreezeBudget(t *testing.T) {
	for _, tc := range []struct {
		bytes int64
		want  time.Duration
	}{
		{0, 30 * time.Second},
		{slowLink - 1, 30 * time.Second}, // whole seconds at 20 MiB/s
		{slowLink, 31 * time.Second},
		{265_000_000, 42 * time.Second}, // 200 MiB anonymous + 64 MiB shm: 12.6 s at 20 MiB/s
		{1 << 30, 81 * time.Second},     // 51.2 s
		{64 << 30, 30*time.Second + 3276*time.Second},
	} {
		if got := FreezeBudget(tc.bytes); got != tc.want {
			t.Errorf("FreezeBudget(%d) = %v, want %v", tc.bytes, got, tc.want)
		}
	}
}
