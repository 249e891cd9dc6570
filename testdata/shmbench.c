/*
 * shmbench: test workload (c) for migshm: a memory dirtier for downtime
 * benchmarks.
 *
 * Usage: shmbench --private-mib P --shm-mib S --dirty-pct-per-sec D [--key K]
 *
 * Allocates P MiB of private anonymous memory and a SysV segment of S MiB
 * (key K, default 0x4d494755), fills both with pseudo-random non-zero data,
 * then forever dirties D% of all those pages per second, spread over 10 ms
 * ticks, choosing pages with xorshift and writing 8 bytes in each. Prints a
 * ready line at start and "shmbench tick=N dirtied=M" once per second, where M
 * is the number of page writes done during that second. Any of P, S, D may be 0
 * (S = 0: no segment is created).
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 10000000L /* 10 ms */
#define TICKS_PER_SEC 100

static uint64_t rng = UINT64_C(0x2545f4914f6cdd1d);

static void usage(void)
{
	fprintf(stderr, "usage: shmbench --private-mib P --shm-mib S --dirty-pct-per-sec D [--key K]\n");
	exit(2);
}

#define PROG "shmbench"
#include "common.h"

static double parse_pct(const char *s)
{
	char *end;
	double v;

	if (s == NULL)
		usage();
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0 && v <= 100.0)) {
		fprintf(stderr, "shmbench: --dirty-pct-per-sec must be a number from 0 to 100: %s\n",
			s);
		exit(2);
	}
	return v;
}

/* Fills len bytes (a multiple of 8) with pseudo-random non-zero words. */
static void fill(unsigned char *p, size_t len)
{
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t v = xorshift64(&rng) | 1;
		memcpy(p + i, &v, 8);
	}
}

static void ts_add_ns(struct timespec *t, long ns)
{
	t->tv_nsec += ns;
	while (t->tv_nsec >= 1000000000L) {
		t->tv_nsec -= 1000000000L;
		t->tv_sec++;
	}
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

int main(int argc, char **argv)
{
	unsigned long long private_mib = 0, shm_mib = 0, key = 0x4d494755ULL;
	double pct = 0;
	int have_p = 0, have_s = 0, have_d = 0;
	const char *pct_arg = NULL;
	unsigned char *priv = NULL, *shm = NULL;
	size_t page, priv_pages, shm_pages, total_pages;
	unsigned long long per_sec, done_this_sec = 0, tick_no = 0;
	struct timespec next;
	int i, k = 0;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--private-mib") == 0) {
			private_mib = parse_num("--private-mib", argv[++i]);
			have_p = 1;
		} else if (strcmp(argv[i], "--shm-mib") == 0) {
			shm_mib = parse_num("--shm-mib", argv[++i]);
			have_s = 1;
		} else if (strcmp(argv[i], "--dirty-pct-per-sec") == 0) {
			pct_arg = argv[++i];
			pct = parse_pct(pct_arg);
			have_d = 1;
		} else if (strcmp(argv[i], "--key") == 0) {
			key = parse_num("--key", argv[++i]);
		} else {
			usage();
		}
	}
	if (!have_p || !have_s || !have_d)
		usage();
	if (key == 0 || key > 0xffffffffULL) {
		fprintf(stderr, "shmbench: --key must be a non-zero 32-bit value\n");
		return 2;
	}
	if (private_mib > (1ULL << 20) || shm_mib > (1ULL << 20)) {
		fprintf(stderr, "shmbench: sizes are limited to 1 TiB\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	page = (size_t)sysconf(_SC_PAGESIZE);
	seed_xorshift64(&rng);

	if (private_mib > 0) {
		priv = mmap(NULL, (size_t)private_mib << 20, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (priv == MAP_FAILED) {
			fprintf(stderr, "shmbench: mmap %llu MiB: %s\n", private_mib, strerror(errno));
			return 1;
		}
		fill(priv, (size_t)private_mib << 20);
	}
	if (shm_mib > 0) {
		shm = shm_create(key, (size_t)shm_mib << 20, NULL);
		fill(shm, (size_t)shm_mib << 20);
	}
	priv_pages = ((size_t)private_mib << 20) / page;
	shm_pages = ((size_t)shm_mib << 20) / page;
	total_pages = priv_pages + shm_pages;
	per_sec = (unsigned long long)((double)total_pages * pct / 100.0 + 0.5);

	printf("shmbench ready private_mib=%llu shm_mib=%llu dirty_pct=%s\n", private_mib, shm_mib,
	       pct_arg);

	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		/* Cumulative target after tick k of this second: per_sec*(k+1)/100. */
		unsigned long long target = per_sec * (unsigned long long)(k + 1) / TICKS_PER_SEC;
		struct timespec now;

		while (done_this_sec < target) {
			size_t p = (size_t)(xorshift64(&rng) % total_pages);
			unsigned char *base = p < priv_pages ? priv + p * page : shm + (p - priv_pages) * page;
			size_t off = (size_t)(xorshift64(&rng) % (page / 8)) * 8;
			uint64_t v = xorshift64(&rng) | 1;

			memcpy(base + off, &v, 8);
			done_this_sec++;
		}
		if (++k == TICKS_PER_SEC) {
			printf("shmbench tick=%llu dirtied=%llu\n", ++tick_no, done_this_sec);
			k = 0;
			done_this_sec = 0;
		}

		ts_add_ns(&next, TICK_NS);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (ts_before(&next, &now)) {
			/* Late (e.g. frozen for a checkpoint): do not try to catch up. */
			next = now;
			continue;
		}
		ts_add_ns(&now, 2 * TICK_NS);
		if (ts_before(&now, &next)) {
			/* The clock went backwards (restored elsewhere): restart from now. */
			clock_gettime(CLOCK_MONOTONIC, &next);
			ts_add_ns(&next, TICK_NS);
		}
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
	}
}
