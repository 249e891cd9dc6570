package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/migshm/migshm/shmowner/record"
)

// Log is a workload's stdout or stderr, open for reading from where Copy starts.
type Log struct {
	f      *os.File
	exited <-chan struct{} // closed when the workload's init is gone
}

// OpenLog opens workload id's stream ("stdout" or "stderr") at the start of its last
// tail lines (tail <= 0: at the start).
func (s *Supervisor) OpenLog(id, stream string, tail int) (*Log, error) {
	l := s.get(id)
	if l == nil {
		return nil, fmt.Errorf("logs: workload %s has no files on this node: %w", id, record.ErrUnknownWorkload)
	}
	name := StdoutFile
	if stream == "stderr" {
		name = StderrFile
	}
	f, err := os.Open(s.path(id, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("logs: %s has no %s file: %w", l.rec.Name, stream, record.ErrUnknownWorkload)
	}
	if err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	if tail > 0 {
		if err := seekTail(f, tail); err != nil {
			f.Close()
			return nil, fmt.Errorf("logs: %w", err)
		}
	}
	return &Log{f: f, exited: l.exited}, nil
}

// Copy writes the log to w, calling w's Flush (if it has one) after each batch, and
// with follow keeps writing new output until the workload exits, ctx ends or a write
// fails. It closes the log.
func (lg *Log) Copy(ctx context.Context, w io.Writer, follow bool) {
	defer lg.f.Close()
	fl, _ := w.(interface{ Flush() })
	buf := make([]byte, 64<<10)
	drain := func() bool {
		for {
			n, err := lg.f.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return false
				}
			}
			if err != nil || n == 0 {
				if fl != nil {
					fl.Flush()
				}
				return true
			}
		}
	}
	if !drain() || !follow {
		return
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lg.exited:
			drain()
			return
		case <-t.C:
			if !drain() {
				return
			}
		}
	}
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	const chunk = 64 << 10
	lines := 0
	pos := size
	buf := make([]byte, chunk)
	for pos > 0 {
		step := min(int64(chunk), pos)
		pos -= step
		if _, err := f.ReadAt(buf[:step], pos); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for i := step - 1; i >= 0; i-- {
			if buf[i] != '\n' || pos+i == size-1 {
				continue
			}
			lines++
			if lines == n {
				_, err := f.Seek(pos+i+1, io.SeekStart)
				return err
			}
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}
