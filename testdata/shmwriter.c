/*
 * shmwriter: test workload (a) for migshm.
 *
 * Creates a keyed SysV shm segment and an IPC_PRIVATE one of the same size,
 * fills both with a verifiable pattern and then, every interval, increments a
 * 64-bit counter kept in the header of both segments and re-verifies a few
 * random pages of the pattern. Any mismatch is reported on stderr as
 * "CORRUPT seg=S off=O ..." and the program exits with status 3.
 *
 * SIGUSR1 pauses the writes (after the current one), SIGUSR2 resumes them.
 *
 * Usage: shmwriter [--key K] [--size BYTES] [--interval-ms N]
 */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE 64
#define MAGIC UINT64_C(0x315752484d534d47) /* "GMSMHRW1" little endian */
#define PAGE 4096
#define PAGES_PER_CHECK 4

/* Header at the start of each segment (fits in HEADER_SIZE bytes). */
struct header {
	uint64_t magic;
	volatile uint64_t counter;
	uint64_t size;
	uint32_t seg_index;
	uint32_t pad;
};

static volatile sig_atomic_t paused;

static void on_usr1(int sig)
{
	(void)sig;
	paused = 1;
}

static void on_usr2(int sig)
{
	(void)sig;
	paused = 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: shmwriter [--key K] [--size BYTES] [--interval-ms N]\n");
	exit(2);
}

#define PROG "shmwriter"
#include "common.h"

static inline unsigned char pattern(size_t i, int seg)
{
	return (unsigned char)((i * 31u + (size_t)seg) & 0xff);
}

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static void corrupt(int seg, size_t off, unsigned got, unsigned want)
{
	fprintf(stderr, "CORRUPT seg=%d off=%zu got=%u want=%u\n", seg, off, got, want);
	fflush(stderr);
	exit(3);
}

/* Verifies bytes [from, to) of segment seg against the pattern. */
static void verify_range(const volatile unsigned char *base, int seg, size_t from, size_t to)
{
	size_t i;

	if (from < HEADER_SIZE)
		from = HEADER_SIZE;
	for (i = from; i < to; i++) {
		unsigned char want = pattern(i, seg);
		if (base[i] != want)
			corrupt(seg, i, base[i], want);
	}
}

static void check_header(const struct header *h, int seg, size_t size, uint64_t counter)
{
	if (h->magic != MAGIC)
		corrupt(seg, 0, (unsigned)(h->magic & 0xff), (unsigned)(MAGIC & 0xff));
	if (h->size != size || h->seg_index != (uint32_t)seg)
		corrupt(seg, 16, (unsigned)(h->size & 0xff), (unsigned)(size & 0xff));
	if (h->counter != counter) {
		fprintf(stderr, "CORRUPT seg=%d off=8 counter=%" PRIu64 " want=%" PRIu64 "\n",
			seg, h->counter, counter);
		fflush(stderr);
		exit(3);
	}
}

int main(int argc, char **argv)
{
	unsigned long long key = 0x4d494753ULL;
	unsigned long long size = 4ULL << 20;
	unsigned long long interval_ms = 10;
	int ids[2];
	unsigned char *seg[2];
	uint64_t counter = 0;
	size_t npages;
	struct sigaction sa;
	struct timespec ts;
	int i, s;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--key") == 0)
			key = parse_num("--key", argv[++i]);
		else if (strcmp(argv[i], "--size") == 0)
			size = parse_num("--size", argv[++i]);
		else if (strcmp(argv[i], "--interval-ms") == 0)
			interval_ms = parse_num("--interval-ms", argv[++i]);
		else
			usage();
	}
	if (size <= HEADER_SIZE) {
		fprintf(stderr, "shmwriter: --size must be larger than %d\n", HEADER_SIZE);
		return 2;
	}
	if (key == 0 || key > 0xffffffffULL) {
		fprintf(stderr, "shmwriter: --key must be a non-zero 32-bit value\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	ids[0] = shmget((key_t)(uint32_t)key, (size_t)size, IPC_CREAT | 0600);
	if (ids[0] < 0) {
		fprintf(stderr, "shmwriter: shmget(key=0x%08llx, size=%llu): %s\n", key, size,
			strerror(errno));
		return 1;
	}
	ids[1] = shmget(IPC_PRIVATE, (size_t)size, IPC_CREAT | 0600);
	if (ids[1] < 0) {
		fprintf(stderr, "shmwriter: shmget(IPC_PRIVATE, size=%llu): %s\n", size,
			strerror(errno));
		return 1;
	}
	for (s = 0; s < 2; s++) {
		struct header *h;
		size_t j;

		seg[s] = shmat(ids[s], NULL, 0);
		if (seg[s] == (void *)-1) {
			fprintf(stderr, "shmwriter: shmat(%d): %s\n", ids[s], strerror(errno));
			return 1;
		}
		memset(seg[s], 0, HEADER_SIZE);
		for (j = HEADER_SIZE; j < (size_t)size; j++)
			seg[s][j] = pattern(j, s);
		h = (struct header *)seg[s];
		h->size = size;
		h->seg_index = (uint32_t)s;
		h->counter = 0;
		h->magic = MAGIC;
		verify_range(seg[s], s, 0, (size_t)size);
	}
	npages = ((size_t)size + PAGE - 1) / PAGE;
	seed_xorshift64(&rng_state);

	printf("shmwriter ready keyed_id=%d private_id=%d size=%llu\n", ids[0], ids[1], size);

	ts.tv_sec = (time_t)(interval_ms / 1000);
	ts.tv_nsec = (long)(interval_ms % 1000) * 1000000L;
	for (;;) {
		/* The flag is read once per iteration: a write in progress finishes first. */
		if (paused) {
			printf("shmwriter paused counter=%" PRIu64 "\n", counter);
			while (paused) {
				struct timespec p = { 0, 5000000L };
				nanosleep(&p, NULL);
			}
			printf("shmwriter resumed counter=%" PRIu64 "\n", counter);
		}

		for (s = 0; s < 2; s++)
			check_header((struct header *)seg[s], s, (size_t)size, counter);
		counter++;
		for (s = 0; s < 2; s++)
			((struct header *)seg[s])->counter = counter;
		for (s = 0; s < 2; s++) {
			int k;
			for (k = 0; k < PAGES_PER_CHECK; k++) {
				size_t p = (size_t)(xorshift64(&rng_state) % npages);
				size_t to = (p + 1) * PAGE;
				if (to > (size_t)size)
					to = (size_t)size;
				verify_range(seg[s], s, p * PAGE, to);
			}
		}
		if (interval_ms > 0)
			nanosleep(&ts, NULL); /* EINTR just shortens this interval */
	}
}
