#!/usr/bin/python3
"""One member of a group of processes sharing a SysV segment and semaphore.

Written against Debian's python3-sysv-ipc, as a third-party user of SysV IPC would:
every member started with the same key attaches to (or creates) one segment and one
semaphore. The segment holds a total and one counter per member. Under the semaphore
(SEM_UNDO) a member adds one to its counter and to the total; every 200 steps it checks,
still under the semaphore, that the total equals the sum of the counters and prints

    ok member=N total=T mine=M

or "BAD ..." (and exits 3) if the invariant broke. SIGTERM ends it with exit 0.

usage: shmgroup.py KEY MEMBER   (MEMBER in 0..15)
"""
import signal
import struct
import sys
import time

import sysv_ipc

SLOTS = 16
SIZE = 8 * (SLOTS + 1)


def attach(key):
    try:
        sem = sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=0o600, initial_value=1)
    except sysv_ipc.ExistentialError:
        sem = sysv_ipc.Semaphore(key)
    sem.undo = True
    mem = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREAT, mode=0o600, size=SIZE)
    return sem, mem


def main():
    key, me = int(sys.argv[1], 0), int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sem, mem = attach(key)
    step = 0
    while True:
        sem.acquire()
        try:
            vals = list(struct.unpack("<%dq" % (SLOTS + 1), mem.read(SIZE)))
            vals[0] += 1
            vals[1 + me] += 1
            mem.write(struct.pack("<q", vals[0]), 0)
            mem.write(struct.pack("<q", vals[1 + me]), 8 * (1 + me))
            step += 1
            if step % 200 == 0:
                total, parts = vals[0], vals[1:]
                if total != sum(parts):
                    print("BAD member=%d total=%d sum=%d" % (me, total, sum(parts)), flush=True)
                    sys.exit(3)
                print("ok member=%d total=%d mine=%d" % (me, total, parts[me]), flush=True)
        finally:
            sem.release()
        time.sleep(0.001)


if __name__ == "__main__":
    main()
