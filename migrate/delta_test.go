package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestDeltaRoundTrip(t *testing.T) {
	base := fxRandom(70, PageSize)
	setWord := func(p []byte, w int, v uint64) { binary.NativeEndian.PutUint64(p[w*8:], v) }
	for _, tc := range []struct {
		name  string
		edit  func(p []byte)
		runs  int // runs in the delta; -1: too big to be a delta
		words int
	}{
		{"nothing", func(p []byte) {}, 0, 0},
		{"one word", func(p []byte) { setWord(p, 17, 1) }, 1, 1},
		{"first and last word", func(p []byte) { setWord(p, 0, 2); setWord(p, pageWords-1, 3) }, 2, 2},
		{"adjacent words", func(p []byte) { setWord(p, 100, 4); setWord(p, 101, 5); setWord(p, 102, 6) }, 1, 3},
		{"one byte", func(p []byte) { p[4095] ^= 0xff }, 1, 1},
		{"three places", func(p []byte) { setWord(p, 3, 7); setWord(p, 300, 8); setWord(p, 301, 9); setWord(p, 511, 10) }, 3, 4},
		{"half the page", func(p []byte) { copy(p[:PageSize/2], fxRandom(71, PageSize/2)) }, -1, 0},
		{"every other word", func(p []byte) {
			for w := 0; w < pageWords; w += 2 {
				setWord(p, w, ^word(p, w))
			}
		}, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			page := bytes.Clone(base)
			tc.edit(page)
			prefix := []byte("kept")
			d, ok := appendDelta(bytes.Clone(prefix), base, page)
			if !bytes.HasPrefix(d, prefix) {
				t.Fatalf("appendDelta lost what dst held: %q", d[:min(len(d), 8)])
			}
			d = d[len(prefix):]
			if tc.runs < 0 {
				if ok || len(d) != 0 {
					t.Fatalf("a page that changed this much gave a delta of %d bytes (ok %v)", len(d), ok)
				}
				return
			}
			if want := tc.runs*runHead + tc.words*8; !ok || len(d) != want {
				t.Fatalf("delta of %d bytes (ok %v), want %d: %d runs of %d words", len(d), ok, want, tc.runs, tc.words)
			}
			got := bytes.Clone(base)
			if err := applyDelta(got, d); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, page) {
				t.Fatal("the delta applied to the base does not give the page")
			}
		})
	}
}

func TestApplyDeltaRefusesBadRuns(t *testing.T) {
	run := func(off, n uint16, data int) []byte {
		b := binary.BigEndian.AppendUint16(nil, off)
		b = binary.BigEndian.AppendUint16(b, n)
		return append(b, make([]byte, data)...)
	}
	for name, d := range map[string][]byte{
		"past the page":  run(510, 3, 24),
		"no words":       run(10, 0, 0),
		"cut short":      run(10, 2, 15),
		"half a head":    {0, 1},
		"second too far": append(run(0, 1, 8), run(512, 1, 8)...),
	} {
		if err := applyDelta(make([]byte, PageSize), d); !errors.Is(err, errBadDelta) {
			t.Errorf("%s: applyDelta = %v, want errBadDelta", name, err)
		}
	}
}

// fxDeltaStream writes a page stream of the given pages followed by, for each
// (base, page) pair, page as a delta against base.
func fxDeltaStream(t testing.TB, literal [][]byte, pairs [][2][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	pw := newPageWriter(&buf)
	if err := pw.header(); err != nil {
		t.Fatal(err)
	}
	for _, p := range literal {
		if err := pw.add(HashPage(p), p); err != nil {
			t.Fatal(err)
		}
	}
	for _, bp := range pairs {
		d, ok := appendDelta(nil, bp[0], bp[1])
		if !ok {
			t.Fatal("fixture pages differ too much for a delta")
		}
		if err := pw.addDelta(HashPage(bp[1]), HashPage(bp[0]), d); err != nil {
			t.Fatal(err)
		}
	}
	if err := pw.finish(); err != nil {
		t.Fatal(err)
	}
	if pw.deltas != int64(len(pairs)) || pw.pages != int64(len(literal)+len(pairs)) || pw.bytes != int64(buf.Len()) {
		t.Fatalf("writer counted %d pages, %d deltas, %d bytes", pw.pages, pw.deltas, pw.bytes)
	}
	return buf.Bytes()
}

func TestPageStreamDeltas(t *testing.T) {
	bases, _ := fxPages(80, 2*batchPages+5) // more deltas than a batch holds
	var pairs [][2][]byte
	for i, b := range bases {
		p := bytes.Clone(b)
		binary.NativeEndian.PutUint64(p[(i%pageWords)*8:], uint64(i)<<1|1)
		pairs = append(pairs, [2][]byte{b, p})
	}
	extra := fxRandom(81, PageSize)
	s := fxOpenStore(t)
	if n, err := ReadPages(context.Background(), bytes.NewReader(fxPageStream(t, bases)), s); err != nil || n != int64(len(bases)) {
		t.Fatalf("round 1: %d, %v", n, err)
	}
	stream := fxDeltaStream(t, [][]byte{extra}, pairs)
	n, err := ReadPages(context.Background(), bytes.NewReader(stream), s)
	if err != nil || n != int64(len(pairs)+1) {
		t.Fatalf("round 2: ReadPages = %d, %v; want %d", n, err, len(pairs)+1)
	}
	dst := make([]byte, PageSize)
	for i, bp := range pairs {
		if !s.Get(HashPage(bp[1]), dst) || !bytes.Equal(dst, bp[1]) {
			t.Fatalf("page %d given as a delta is not in the store", i)
		}
	}
	// A delta costs its hashes, its length and one run: 16+16+2 + 4+8 bytes.
	if per := (len(stream) - pagesHeaderLen - pagesTrailerLen - (batchHeadLen + pageEntryLen + crcLen)) / len(pairs); per > 48 {
		t.Fatalf("%d bytes per one-word delta", per)
	}

	// Damage, each in a fresh store holding the bases.
	one := fxDeltaStream(t, nil, pairs[:3])
	d0 := pagesHeaderLen + batchHeadLen + 4 // first delta entry
	fix := func(b []byte) []byte {          // recompute the batch CRC
		end := len(b) - pagesTrailerLen - crcLen
		copy(b[end:], fxCRC(b[pagesHeaderLen:end]))
		return b
	}
	for _, tc := range []struct {
		name, want string
		edit       func(b []byte) []byte
		bases      bool
	}{
		{"base not held", "which is not held here", func(b []byte) []byte { return b }, false},
		{"wrong result", "does not give its page", func(b []byte) []byte { b[d0+deltaEntryHead+4] ^= 1; return fix(b) }, true},
		{"bad run", "delta runs do not fit a page", func(b []byte) []byte { b[d0+deltaEntryHead] = 0xff; return fix(b) }, true},
		{"crc", "checksum mismatch", func(b []byte) []byte { b[d0+40] ^= 1; return b }, true},
		{"size too small", "3 deltas in 10 bytes", func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[pagesHeaderLen+batchHeadLen:], 10)
			return b
		}, true},
		{"truncated", "truncated", func(b []byte) []byte { return b[:d0+20] }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fxOpenStore(t)
			if tc.bases {
				if _, err := ReadPages(context.Background(), bytes.NewReader(fxPageStream(t, bases[:3])), s); err != nil {
					t.Fatal(err)
				}
			}
			before := s.Len()
			n, err := ReadPages(context.Background(), bytes.NewReader(tc.edit(bytes.Clone(one))), s)
			if !errors.Is(err, ErrCorruptStream) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrCorruptStream saying %q", err, tc.want)
			}
			if n != 0 || s.Len() != before {
				t.Fatalf("a damaged delta batch added pages: %d reported, %d -> %d in the store", n, before, s.Len())
			}
		})
	}
}

func TestPrecopierSendsDeltas(t *testing.T) {
	f := newPrecopyFixture(t)
	p := NewPrecopier(f.root, func() ([]int, error) { return []int{100, 101}, nil })
	twin := fxOpenStore(t)
	p.KeepTwin(twin, 1000)
	s := fxOpenStore(t)
	st := fxRound(t, p, s)
	if st.Deltas != 0 || st.Sent == 0 {
		t.Fatalf("round 1: %d sent, %d as deltas; want all whole", st.Sent, st.Deltas)
	}
	if twin.Len() != s.Len() {
		t.Fatalf("the twin holds %d pages, the target %d", twin.Len(), s.Len())
	}
	// Not committed yet: a changed page cannot be a delta against what the target may lack.
	a3 := bytes.Clone(f.pages["a3"])
	a3[100] ^= 0x55
	f.set(t, 100, 0x13000, a3)
	if st := fxRound(t, p, s); st.Deltas != 0 {
		t.Fatalf("a delta against pages not committed: %+v", st)
	}
	p.Commit()

	// Committed: one word changed travels as a delta, a page rewritten whole as it is.
	a3[200] ^= 0x55
	f.set(t, 100, 0x13000, a3)
	f.set(t, 100, 0x41000, fxRandom(470, PageSize)) // s1, rewritten
	st = fxRound(t, p, s)
	if st.Changed != 2 || st.Sent != 2 || st.Deltas != 1 {
		t.Fatalf("round: %d changed, %d sent, %d deltas; want 2, 2, 1", st.Changed, st.Sent, st.Deltas)
	}
	dst := make([]byte, PageSize)
	if !s.Get(HashPage(a3), dst) || !bytes.Equal(dst, a3) {
		t.Fatal("the page sent as a delta did not reach the store")
	}
	p.Commit()

	// A full twin keeps no more, and pages it lacks travel whole.
	p.KeepTwin(fxOpenStore(t), 0)
	a3[300] ^= 0x55
	f.set(t, 100, 0x13000, a3)
	if st := fxRound(t, p, s); st.Sent != 1 || st.Deltas != 0 {
		t.Fatalf("with an empty twin: %+v", st)
	}
}

// FuzzReadPages feeds the page stream reader what a peer could send, deltas included,
// into a store that holds some bases: it must never panic, every page it adds must be
// the page its hash names, and the count it returns must be what it added.
func FuzzReadPages(f *testing.F) {
	bases, _ := fxPages(90, 4)
	pair := func(i, w int) [2][]byte {
		p := bytes.Clone(bases[i])
		binary.NativeEndian.PutUint64(p[w*8:], uint64(w)*7+1)
		return [2][]byte{bases[i], p}
	}
	for _, s := range [][]byte{
		fxPageStream(f, bases[:2]),
		fxDeltaStream(f, nil, [][2][]byte{pair(0, 3), pair(1, 511)}),
		fxDeltaStream(f, bases[2:3], [][2][]byte{pair(3, 0)}),
	} {
		f.Add(s)
		f.Add(s[:len(s)*2/3])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fxOpenStore(t)
		for _, b := range bases {
			if err := s.Add(HashPage(b), b); err != nil {
				t.Fatal(err)
			}
		}
		before := s.Len()
		n, _ := ReadPages(context.Background(), bytes.NewReader(data), s)
		if added := s.Len() - before; int64(added) > n {
			t.Fatalf("the store gained %d pages, ReadPages reports %d", added, n)
		}
		page := make([]byte, PageSize)
		for h := range s.index {
			if !s.Get(h, page) || HashPage(page) != h {
				t.Fatalf("the store holds a page under %s that is not its content", h)
			}
		}
	})
}
