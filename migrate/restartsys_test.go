package migrate

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	core_x86 "github.com/checkpoint-restore/go-criu/v7/crit/images/core-x86"
	criu_core "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"google.golang.org/protobuf/proto"
)

// coreImage writes a core image of one thread with the given registers.
func coreImage(t *testing.T, dir, name string, ax, origAx, ip uint64) string {
	t.Helper()
	core := &criu_core.CoreEntry{ThreadInfo: &core_x86.ThreadInfoX86{
		Gpregs: &core_x86.UserX86RegsEntry{Ax: &ax, OrigAx: &origAx, Ip: &ip}}}
	entry, err := (proto.MarshalOptions{AllowPartial: true}).Marshal(core)
	if err != nil {
		t.Fatal(err)
	}
	b := binary.LittleEndian.AppendUint32(nil, imgCommonMagic)
	b = binary.LittleEndian.AppendUint32(b, 0x55155a04) // CORE_MAGIC
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	b = append(b, entry...)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func readRegs(t *testing.T, path string) (ax, origAx, ip uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var core criu_core.CoreEntry
	if err := (proto.UnmarshalOptions{AllowPartial: true}).Unmarshal(b[12:], &core); err != nil {
		t.Fatal(err)
	}
	r := core.GetThreadInfo().GetGpregs()
	return r.GetAx(), r.GetOrigAx(), r.GetIp()
}

// TestRestartInterruptedSemop: a thread the freeze interrupted in semop or semtimedop is
// rewound to issue the call again; a call that returned, another call's EINTR and a
// thread whose signal handler already ran (orig_ax -1) are left exactly as they were.
func TestRestartInterruptedSemop(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("x86-64 registers")
	}
	dir := t.TempDir()
	minus := func(n int64) uint64 { return uint64(-n) }
	semop := coreImage(t, dir, "core-10.img", minus(eintr), sysSemop, 0x401002)
	timed := coreImage(t, dir, "core-11.img", minus(eintr), sysSemtimedop, 0x402002)
	done := coreImage(t, dir, "core-12.img", 0, sysSemop, 0x403002)
	read := coreImage(t, dir, "core-13.img", minus(eintr), 0, 0x404002) // read(2): not ours
	handled := coreImage(t, dir, "core-14.img", minus(eintr), ^uint64(0), 0x405002)
	before := map[string][]byte{}
	for _, p := range []string{done, read, handled} {
		before[p], _ = os.ReadFile(p)
	}
	n, err := RestartInterruptedSemop(dir)
	if err != nil || n != 2 {
		t.Fatalf("RestartInterruptedSemop = %d, %v; want 2 threads", n, err)
	}
	for path, want := range map[string][3]uint64{semop: {sysSemop, sysSemop, 0x401000}, timed: {sysSemtimedop, sysSemtimedop, 0x402000}} {
		if ax, orig, ip := readRegs(t, path); [3]uint64{ax, orig, ip} != want {
			t.Errorf("%s: ax %d orig_ax %d ip %#x; want %v", filepath.Base(path), ax, orig, ip, want)
		}
	}
	for p, b := range before {
		if after, _ := os.ReadFile(p); !bytes.Equal(after, b) {
			t.Errorf("%s changed", filepath.Base(p))
		}
	}
	// Issued again already: a second pass finds nothing.
	if n, err := RestartInterruptedSemop(dir); err != nil || n != 0 {
		t.Fatalf("second pass = %d, %v; want 0", n, err)
	}
	// A corrupt image is an error naming it, not a silent pass.
	if err := os.WriteFile(filepath.Join(dir, "core-15.img"), []byte{0x19, 0x43, 0x56, 0x54, 1, 2, 3, 4, 9, 0, 0, 0, 1}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := RestartInterruptedSemop(dir); err == nil {
		t.Fatal("a truncated core image passed")
	}
}
