/* common.h — helpers shared by the C test workloads. Include after defining PROG (the
 * program name for messages) and declaring `static void usage(void)`. */
#ifndef MIGSHM_TESTDATA_COMMON_H
#define MIGSHM_TESTDATA_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

/* parse_num parses a non-negative number (decimal, 0x hex or 0 octal) given for flag, or
 * exits 2 with a message. */
static unsigned long long parse_num(const char *flag, const char *s)
{
	char *end;
	unsigned long long v;

	if (s == NULL)
		usage();
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
		fprintf(stderr, PROG ": bad value for %s: %s\n", flag, s);
		exit(2);
	}
	return v;
}

/* xorshift64 returns the next number of the pseudo-random sequence in *state (never 0). */
static inline uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* seed_xorshift64 mixes the pid and the time into *state, so runs differ. */
static inline void seed_xorshift64(uint64_t *state)
{
	*state ^= (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);
	if (*state == 0)
		*state = 1;
}

/* shm_create creates (or finds) the segment of key with size bytes and attaches it, or
 * exits 1 with a message. *idp, if not NULL, gets its shmid. */
static inline void *shm_create(unsigned long long key, size_t size, int *idp)
{
	int id = shmget((key_t)(uint32_t)key, size, IPC_CREAT | 0600);
	void *p;

	if (id < 0) {
		fprintf(stderr, PROG ": shmget(key=0x%08llx, size=%zu): %s\n", key, size, strerror(errno));
		exit(1);
	}
	p = shmat(id, NULL, 0);
	if (p == (void *)-1) {
		fprintf(stderr, PROG ": shmat(%d): %s\n", id, strerror(errno));
		exit(1);
	}
	if (idp != NULL)
		*idp = id;
	return p;
}

#endif
