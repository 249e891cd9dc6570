package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// ErrReaderClosed is what a StreamReader's producer ends with when the reader was closed
// before the end of the stream.
var ErrReaderClosed = errors.New("stream reader closed before the end of the stream")

// StreamReader is a stream read while it is being written: an image stream
// (NewImageReader) or a pre-copy round (Precopier.NewRoundReader), ready to be an HTTP
// request body. A goroutine of its own writes it (WriteImages, Round) as it is read;
// what that writer returned, S and an error, is Result once the stream was read to its
// end or the reader closed.
//
// Close stops the writer if it is still running and waits for it, so nothing outlives
// the reader; so does the end of the context the reader was made with, and then Read
// returns the context's error. Close may be called more than once, from any goroutine
// (http.Client closes a request's body itself).
type StreamReader[S any] struct {
	pr     *io.PipeReader
	cancel context.CancelCauseFunc
	done   chan struct{} // closed once the writer returned
	n      atomic.Int64
	res    S
	err    error
}

// newStreamReader starts write, which writes the stream to w and returns its result.
func newStreamReader[S any](ctx context.Context, write func(ctx context.Context, w io.Writer) (S, error)) *StreamReader[S] {
	ctx, cancel := context.WithCancelCause(ctx)
	pr, pw := io.Pipe()
	r := &StreamReader[S]{pr: pr, cancel: cancel, done: make(chan struct{})}
	// A writer blocked in the pipe sees no context: close the pipe under it.
	stop := context.AfterFunc(ctx, func() { pw.CloseWithError(context.Cause(ctx)) })
	go func() {
		defer close(r.done)
		res, err := write(ctx, &ctxWriter{ctx: ctx, w: pw, n: &r.n})
		stop()
		if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		r.res, r.err = res, err
		pw.CloseWithError(err) // nil: the reader sees io.EOF
		cancel(nil)
	}()
	return r
}

// Read reads the stream; at its end it returns io.EOF, or the writer's error if it
// failed.
func (r *StreamReader[S]) Read(p []byte) (int, error) { return r.pr.Read(p) }

// Close stops the writer (its result then holds an error wrapping ErrReaderClosed,
// unless it had already finished) and waits for it to return.
func (r *StreamReader[S]) Close() error {
	r.pr.CloseWithError(ErrReaderClosed)
	r.cancel(ErrReaderClosed)
	<-r.done
	return nil
}

// Bytes is how many bytes of the stream were written so far; all of them were read.
func (r *StreamReader[S]) Bytes() int64 { return r.n.Load() }

// Result waits for the writer to return and returns what it returned. Call it after
// Read returned io.EOF or an error, or after Close: before that it waits for the stream
// to be read.
func (r *StreamReader[S]) Result() (S, error) {
	<-r.done
	return r.res, r.err
}

// ctxWriter counts what passes through it; a write that fails because the stream's
// context ended says so.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
	n   *atomic.Int64
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	if err != nil && c.ctx.Err() != nil {
		err = context.Cause(c.ctx)
	}
	return n, err
}

// NewImageReader returns the image stream of the images directory dir (WriteImages with
// opts) as a reader; its Result is WriteImages'.
func NewImageReader(ctx context.Context, dir string, opts StreamOptions) *StreamReader[StreamStats] {
	return newStreamReader(ctx, func(ctx context.Context, w io.Writer) (StreamStats, error) {
		return WriteImages(ctx, w, dir, opts)
	})
}

// NewRoundReader returns one pre-copy round (Round) as a reader; its Result is Round's.
// The round runs until the reader reaches its end or is closed: call nothing else of p
// but Held until Result returned, and Commit only once the target acknowledged it.
func (p *Precopier) NewRoundReader(ctx context.Context) *StreamReader[RoundStats] {
	return newStreamReader(ctx, p.Round)
}
