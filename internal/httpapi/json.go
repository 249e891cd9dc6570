package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/migshm/migshm/api"
)

// maxBody bounds every request body but the data streams; API requests are small.
const maxBody = 1 << 20

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// readJSON decodes a request body strictly: unknown fields and trailing data are errors.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed request body: %v: %w", err, api.ErrBadRequest)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("malformed request body: trailing data: %w", api.ErrBadRequest)
	}
	return nil
}

// writeError answers err with its wire code and HTTP status; an error that wraps no
// sentinel is an internal error, logged here.
func writeError(w http.ResponseWriter, log *slog.Logger, err error) {
	code, status := api.Code(err)
	if status == http.StatusInternalServerError {
		log.Error("request failed", "err", err)
	}
	writeJSON(w, status, api.ErrorBody{Error: api.Error{Code: code, Message: err.Error()}})
}

// handle adapts a func returning (value, error) to HTTP: the value as JSON with 200,
// or the error with its code.
func (s *server) handle(fn func(r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := fn(r)
		if err != nil {
			writeError(w, s.Log, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// withBody adapts a handler of a request with a JSON body of type T: the body is
// decoded strictly (a bad_request otherwise) before fn runs.
func withBody[T any](fn func(r *http.Request, req T) (any, error)) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		var req T
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return fn(r, req)
	}
}

// flushWriter flushes after every write, so a follower of a stream sees each piece at
// once.
type flushWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func newFlushWriter(w http.ResponseWriter) flushWriter {
	f, _ := w.(http.Flusher)
	return flushWriter{w, f}
}

func (fw flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	fw.Flush()
	return n, err
}

func (fw flushWriter) Flush() {
	if fw.f != nil {
		fw.f.Flush()
	}
}
