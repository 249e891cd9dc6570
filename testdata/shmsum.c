/*
 * shmsum: lists and checksums every SysV shm segment of the current IPC
 * namespace (run it with nsenter --ipc=/proc/PID/ns/ipc to look at a
 * workload's namespace).
 *
 * Usage: shmsum
 *
 * Prints one line per segment, sorted by shmid:
 *   shmid=ID key=0xKKKKKKKK size=N fnv64=HHHHHHHHHHHHHHHH
 * where fnv64 is the 64-bit FNV-1a hash of the full contents. Segments are
 * attached read-only and detached right after hashing (this updates only the
 * kernel's attach times/counters, never the contents). Exits 0 on success, 1
 * if any segment could not be read (reported on stderr; other segments are
 * still listed), 2 if the namespace cannot be enumerated.
 */
#define _GNU_SOURCE /* SHM_INFO, SHM_STAT, struct shm_info */

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

struct seg {
	int id;
	unsigned key;
	size_t size;
};

static int cmp_seg(const void *a, const void *b)
{
	const struct seg *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

int main(int argc, char **argv)
{
	struct shm_info info;
	struct seg *segs = NULL;
	size_t nsegs = 0, cap = 0, i;
	int maxidx, idx, rc = 0;

	(void)argv;
	if (argc != 1) {
		fprintf(stderr, "usage: shmsum\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	maxidx = shmctl(0, SHM_INFO, (struct shmid_ds *)(void *)&info);
	if (maxidx < 0) {
		fprintf(stderr, "shmsum: shmctl(SHM_INFO): %s\n", strerror(errno));
		return 2;
	}
	for (idx = 0; idx <= maxidx; idx++) {
		struct shmid_ds ds;
		int id = shmctl(idx, SHM_STAT, &ds);

		if (id < 0) {
			if (errno == EINVAL || errno == EIDRM)
				continue; /* unused index */
			fprintf(stderr, "shmsum: shmctl(%d, SHM_STAT): %s\n", idx, strerror(errno));
			rc = 1;
			continue;
		}
		if (nsegs == cap) {
			struct seg *n;

			cap = cap ? cap * 2 : 16;
			n = realloc(segs, cap * sizeof(*segs));
			if (n == NULL) {
				fprintf(stderr, "shmsum: out of memory\n");
				return 2;
			}
			segs = n;
		}
		segs[nsegs].id = id;
		segs[nsegs].key = (unsigned)ds.shm_perm.__key;
		segs[nsegs].size = (size_t)ds.shm_segsz;
		nsegs++;
	}
	if (nsegs > 0)
		qsort(segs, nsegs, sizeof(*segs), cmp_seg);

	for (i = 0; i < nsegs; i++) {
		const unsigned char *p = shmat(segs[i].id, NULL, SHM_RDONLY);
		uint64_t h;

		if (p == (const void *)-1) {
			fprintf(stderr, "shmsum: shmat(%d, SHM_RDONLY): %s\n", segs[i].id,
				strerror(errno));
			rc = 1;
			continue;
		}
		h = fnv1a64(p, segs[i].size);
		shmdt(p);
		printf("shmid=%d key=0x%08x size=%zu fnv64=%016" PRIx64 "\n", segs[i].id, segs[i].key,
		       segs[i].size, h);
	}
	free(segs);
	return rc;
}
