package migrate_test

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/cpuinfo"
	"github.com/migshm/migshm/internal/testenv"
	"github.com/migshm/migshm/migrate"
	"google.golang.org/protobuf/proto"
)

// cpuinfoHeader is the size of the image header before the protobuf entry: the common
// magic, the cpuinfo magic and the entry's length (each 32 bits, little-endian).
const cpuinfoHeader = 12

// editCPUInfo decodes a cpuinfo.img, lets edit change the entry and encodes it again.
func editCPUInfo(t *testing.T, img []byte, edit func(*cpuinfo.CpuinfoEntry)) []byte {
	t.Helper()
	if len(img) < cpuinfoHeader {
		t.Fatalf("cpuinfo.img of %d bytes", len(img))
	}
	n := binary.LittleEndian.Uint32(img[8:12])
	if int(n) != len(img)-cpuinfoHeader {
		t.Fatalf("cpuinfo.img: entry of %d bytes in %d", n, len(img))
	}
	var e cpuinfo.CpuinfoEntry
	if err := proto.Unmarshal(img[cpuinfoHeader:], &e); err != nil {
		t.Fatalf("decode cpuinfo.img: %v", err)
	}
	edit(&e)
	body, err := proto.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint32(append([]byte{}, img[:8]...), uint32(len(body)))
	return append(out, body...)
}

// fpuBits are the capability bits CRIU's FPU check reads before it compares instruction
// sets (X86_FEATURE_FPU, FXSR, OSXSAVE and XSAVES, in the kernel's word*32+bit numbering).
var fpuBits = []int{0*32 + 0, 0*32 + 24, 4*32 + 27, 10*32 + 3}

// TestCPUInfoRoundTrip: the description of this machine's CPU passes CRIU's check here;
// one that claims features no CPU has is refused with ErrCPUIncompatible; a damaged one
// fails clearly, and not as an incompatible CPU.
func TestCPUInfoRoundTrip(t *testing.T) {
	c := testenv.RequireCRIU(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img, err := c.CPUInfoDump(ctx)
	if err != nil {
		t.Fatalf("cpuinfo dump: %v", err)
	}
	t.Logf("cpuinfo.img: %d bytes", len(img))
	if err := c.CPUInfoCheck(ctx, img); err != nil {
		t.Fatalf("this node's own CPU description is refused here: %v", err)
	}

	var x86 bool
	_ = editCPUInfo(t, img, func(e *cpuinfo.CpuinfoEntry) { x86 = len(e.X86Entry) > 0 })
	type bad struct {
		name         string
		img          []byte
		incompatible bool
		says         string // in the error
	}
	cases := []bad{
		{name: "empty", img: nil, says: "empty CPU description"},
		{name: "truncated", img: img[:len(img)/2], says: "cannot read the CPU description"},
		{name: "header only", img: img[:cpuinfoHeader], says: "cannot read the CPU description"},
		{name: "garbage", img: []byte(strings.Repeat("not a CRIU image ", 8)), says: "magic"},
		{name: "flipped entry length", img: func() []byte {
			b := append([]byte{}, img...)
			b[8] ^= 0x40
			return b
		}(), says: "cannot read the CPU description"},
	}
	if x86 {
		cases = append(cases,
			bad{name: "instruction set this CPU lacks", incompatible: true, says: "capabilities do not match",
				img: editCPUInfo(t, img, func(e *cpuinfo.CpuinfoEntry) {
					// Every instruction set, but the FPU bits CRIU checks first as
					// this CPU has them: a CPU without XSAVES (some VMs) would
					// otherwise be refused for its FPU before its instructions.
					c := e.X86Entry[0].Capability
					fpu := make([]uint32, len(c))
					for _, b := range fpuBits {
						if w := b / 32; w < len(c) {
							fpu[w] |= 1 << (b % 32)
						}
					}
					for i := range c {
						c[i] = ^fpu[i] | c[i]&fpu[i]
					}
				})},
			bad{name: "xsave state this CPU lacks", incompatible: true, says: "xfeatures",
				img: editCPUInfo(t, img, func(e *cpuinfo.CpuinfoEntry) {
					x := e.X86Entry[0]
					x.XfeaturesMask = proto.Uint64(x.GetXfeaturesMask() | 1<<62)
				})},
		)
	} else {
		t.Logf("not x86: only damaged descriptions are tried")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.CPUInfoCheck(ctx, tc.img)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("refused: %v", err)
			if got := errors.Is(err, migrate.ErrCPUIncompatible); got != tc.incompatible {
				t.Errorf("errors.Is(err, ErrCPUIncompatible) = %v, want %v", got, tc.incompatible)
			}
			var ce *migrate.CRIUError
			if !errors.As(err, &ce) || !strings.HasPrefix(ce.Op, "cpuinfo") {
				t.Errorf("want a *CRIUError for cpuinfo check, got %T", err)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error does not say %q", tc.says)
			}
		})
	}
}

// TestCPUInfoWithoutCRIU: a CRIU that is not there is ErrCRIUUnavailable, for both.
func TestCPUInfoWithoutCRIU(t *testing.T) {
	c := &migrate.CRIU{Path: "/nonexistent/criu"}
	ctx := context.Background()
	if _, err := c.CPUInfoDump(ctx); !errors.Is(err, migrate.ErrCRIUUnavailable) {
		t.Errorf("dump: got %v, want ErrCRIUUnavailable", err)
	}
	if err := c.CPUInfoCheck(ctx, []byte("x")); !errors.Is(err, migrate.ErrCRIUUnavailable) {
		t.Errorf("check: got %v, want ErrCRIUUnavailable", err)
	}
}
