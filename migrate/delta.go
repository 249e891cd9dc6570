package migrate

import (
	"encoding/binary"
	"errors"
)

// A page that changed in a few words travels as its delta against the page the target
// held at its place (QEMU's XBZRLE does the same for re-sent pages): runs of changed
// 8-byte words, each as
//
//	offset u16 (in words) | words u16 | words x 8 bytes
//
// Programs rewrite a counter, a pointer, a slot; a page rewritten whole (or most of it)
// travels as it is, since its delta would be no smaller.
const (
	pageWords = PageSize / 8
	runHead   = 4
	// maxDeltaLen is the most a delta may take; a page that changed more travels whole.
	maxDeltaLen = 1024
)

// appendDelta appends to dst the delta that turns base into page, and reports false
// (dst unchanged) when it would exceed maxDeltaLen.
func appendDelta(dst, base, page []byte) ([]byte, bool) {
	start := len(dst)
	for w := 0; w < pageWords; {
		if word(page, w) == word(base, w) {
			w++
			continue
		}
		end := w + 1
		for end < pageWords && word(page, end) != word(base, end) {
			end++
		}
		if len(dst)-start+runHead+(end-w)*8 > maxDeltaLen {
			return dst[:start], false
		}
		dst = binary.BigEndian.AppendUint16(dst, uint16(w))
		dst = binary.BigEndian.AppendUint16(dst, uint16(end-w))
		dst = append(dst, page[w*8:end*8]...)
		w = end
	}
	return dst, true
}

func word(p []byte, w int) uint64 { return binary.NativeEndian.Uint64(p[w*8:]) }

// errBadDelta is a delta whose runs do not fit a page.
var errBadDelta = errors.New("delta runs do not fit a page")

// applyDelta writes delta's runs over page (which holds the base).
func applyDelta(page, delta []byte) error {
	for len(delta) > 0 {
		if len(delta) < runHead {
			return errBadDelta
		}
		off, n := int(binary.BigEndian.Uint16(delta)), int(binary.BigEndian.Uint16(delta[2:]))
		delta = delta[runHead:]
		if n == 0 || off+n > pageWords || len(delta) < n*8 {
			return errBadDelta
		}
		copy(page[off*8:], delta[:n*8])
		delta = delta[n*8:]
	}
	return nil
}
