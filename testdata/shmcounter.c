/*
 * shmcounter: test workload (b) for migshm.
 *
 * Workload mode:  shmcounter [--workers N] [--key K]
 *   The parent creates a SysV shm segment (header with a magic number, a
 *   shared 64-bit total and one 64-bit slot per worker) and a SysV semaphore
 *   set with the same key holding one semaphore used as a mutex. N forked
 *   workers loop: lock, read total, spin briefly, write total+1, bump their own
 *   slot, unlock, sleep ~1 ms. Invariant whenever nobody holds the mutex:
 *   total == sum(slots). The parent waits for the workers; if one dies it
 *   reports it, stops the others and exits 1. SIGTERM/SIGINT/SIGHUP to the
 *   parent stop the workers cleanly (never inside the critical section).
 *
 * Checker mode:   shmcounter check [--key K]
 *   Run inside the workload's IPC namespace. Takes the mutex (5 s timeout),
 *   reads total and slots, releases, prints "total=T sum=S workers=N ok=0|1"
 *   and exits 0 if ok, 1 if not ok, 2 on error.
 */
#define _GNU_SOURCE /* semtimedop */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC UINT64_C(0x31544e434d534d47) /* "GMSMCNT1" little endian */
#define MAX_WORKERS 1024
#define SPIN_ITERS 2000

struct counter_shm {
	uint64_t magic;
	uint32_t workers;
	uint32_t pad;
	volatile uint64_t total;
	volatile uint64_t slots[];
};

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

static volatile sig_atomic_t stop;

/* Worker pids, read by the parent's signal handler (kill is async-signal-safe). */
static volatile pid_t *worker_pids;
static unsigned worker_count;

static void on_stop(int sig)
{
	int saved = errno;
	unsigned i;

	(void)sig;
	stop = 1;
	if (worker_pids != NULL)
		for (i = 0; i < worker_count; i++)
			if (worker_pids[i] > 0)
				kill(worker_pids[i], SIGTERM);
	errno = saved;
}

static void usage(void)
{
	fprintf(stderr, "usage: shmcounter [--workers N] [--key K]\n"
			"       shmcounter check [--key K]\n");
	exit(2);
}

#define PROG "shmcounter"
#include "common.h"

static size_t segment_size(unsigned workers)
{
	size_t n = sizeof(struct counter_shm) + (size_t)workers * sizeof(uint64_t);
	return (n + 4095) & ~(size_t)4095;
}

/* semop on semaphore 0, retried on EINTR unless stop is set. */
static int sem_change(int semid, short delta)
{
	struct sembuf op = { 0, delta, SEM_UNDO };

	for (;;) {
		if (semop(semid, &op, 1) == 0)
			return 0;
		if (errno != EINTR)
			return -1;
		if (stop && delta < 0)
			return -1;
	}
}

static void spin(void)
{
	volatile unsigned i;

	for (i = 0; i < SPIN_ITERS; i++)
		;
}

static int worker(int semid, struct counter_shm *c, unsigned me, pid_t parent)
{
	struct timespec ms = { 0, 1000000L };

	while (!stop && getppid() == parent) {
		uint64_t t;

		if (sem_change(semid, -1) != 0) {
			if (stop)
				break;
			fprintf(stderr, "shmcounter: worker %u: semop P: %s\n", me, strerror(errno));
			return 1;
		}
		t = c->total;
		spin();
		c->total = t + 1;
		c->slots[me]++;
		if (sem_change(semid, 1) != 0) {
			fprintf(stderr, "shmcounter: worker %u: semop V: %s\n", me, strerror(errno));
			return 1;
		}
		nanosleep(&ms, NULL); /* EINTR just shortens the sleep */
	}
	return 0;
}

static void stop_workers(volatile pid_t *pids, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGTERM);
	for (i = 0; i < n; i++) {
		if (pids[i] <= 0)
			continue;
		while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
			;
		pids[i] = 0;
	}
}

static int run(unsigned long long key, unsigned workers)
{
	struct sigaction sa;
	union semun arg;
	struct counter_shm *c;
	volatile pid_t *pids;
	pid_t parent = getpid();
	size_t size = segment_size(workers);
	unsigned i, alive;
	int shmid, semid;

	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_stop; /* no SA_RESTART: waitpid returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	c = shm_create(key, size, &shmid);
	semid = semget((key_t)(uint32_t)key, 1, IPC_CREAT | 0600);
	if (semid < 0) {
		fprintf(stderr, "shmcounter: semget(key=0x%08llx): %s\n", key, strerror(errno));
		return 1;
	}
	arg.val = 1;
	if (semctl(semid, 0, SETVAL, arg) < 0) {
		fprintf(stderr, "shmcounter: semctl(SETVAL): %s\n", strerror(errno));
		return 1;
	}
	memset(c, 0, size);
	c->workers = workers;
	c->magic = MAGIC;

	pids = calloc(workers, sizeof(*pids));
	if (pids == NULL) {
		fprintf(stderr, "shmcounter: out of memory\n");
		return 1;
	}
	worker_count = workers;
	worker_pids = pids;
	for (i = 0; i < workers; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "shmcounter: fork: %s\n", strerror(errno));
			stop_workers(pids, i);
			return 1;
		}
		if (pid == 0) {
			worker_pids = NULL;
			_exit(worker(semid, c, i, parent));
		}
		pids[i] = pid;
	}
	/* Ready once every worker runs: tests count the tree's processes at this line. */
	printf("shmcounter ready shmid=%d semid=%d workers=%u\n", shmid, semid, workers);
	fflush(stdout);

	alive = workers;
	while (alive > 0) {
		int status;
		pid_t pid;

		if (stop) {
			stop_workers(pids, workers);
			return 0;
		}
		pid = waitpid(-1, &status, 0);
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "shmcounter: waitpid: %s\n", strerror(errno));
			stop_workers(pids, workers);
			return 1;
		}
		for (i = 0; i < workers; i++) {
			if (pids[i] != pid)
				continue;
			pids[i] = 0;
			alive--;
			if (stop)
				break; /* we asked it to stop */
			if (WIFSIGNALED(status))
				fprintf(stderr, "shmcounter: worker %u (pid %d) killed by signal %d\n",
					i, (int)pid, WTERMSIG(status));
			else
				fprintf(stderr, "shmcounter: worker %u (pid %d) exited with status %d\n",
					i, (int)pid, WEXITSTATUS(status));
			stop_workers(pids, workers);
			return 1;
		}
	}
	return 0;
}

static int check(unsigned long long key)
{
	struct sembuf lock = { 0, -1, SEM_UNDO };
	struct sembuf unlock = { 0, 1, SEM_UNDO };
	struct timespec timeout = { 5, 0 };
	struct shmid_ds ds;
	struct counter_shm *c;
	uint64_t total, sum = 0;
	unsigned workers, i;
	int shmid, semid;

	setvbuf(stdout, NULL, _IOLBF, 0);

	shmid = shmget((key_t)(uint32_t)key, 0, 0);
	if (shmid < 0) {
		fprintf(stderr, "shmcounter check: no segment with key 0x%08llx: %s\n", key,
			strerror(errno));
		return 2;
	}
	semid = semget((key_t)(uint32_t)key, 0, 0);
	if (semid < 0) {
		fprintf(stderr, "shmcounter check: no semaphore set with key 0x%08llx: %s\n", key,
			strerror(errno));
		return 2;
	}
	if (shmctl(shmid, IPC_STAT, &ds) < 0) {
		fprintf(stderr, "shmcounter check: shmctl(IPC_STAT): %s\n", strerror(errno));
		return 2;
	}
	c = shmat(shmid, NULL, SHM_RDONLY);
	if (c == (void *)-1) {
		fprintf(stderr, "shmcounter check: shmat(%d): %s\n", shmid, strerror(errno));
		return 2;
	}
	if (ds.shm_segsz < sizeof(*c) || c->magic != MAGIC) {
		fprintf(stderr, "shmcounter check: segment %d is not a shmcounter segment\n", shmid);
		return 2;
	}
	workers = c->workers;
	if (workers > MAX_WORKERS || segment_size(workers) > ds.shm_segsz) {
		fprintf(stderr, "shmcounter check: bad worker count %u for a %zu-byte segment\n",
			workers, (size_t)ds.shm_segsz);
		return 2;
	}
	for (;;) {
		if (semtimedop(semid, &lock, 1, &timeout) == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			fprintf(stderr, "shmcounter check: mutex not acquired within 5 s\n");
		else
			fprintf(stderr, "shmcounter check: semtimedop: %s\n", strerror(errno));
		return 2;
	}
	total = c->total;
	for (i = 0; i < workers; i++)
		sum += c->slots[i];
	if (semop(semid, &unlock, 1) < 0) {
		fprintf(stderr, "shmcounter check: semop V: %s\n", strerror(errno));
		return 2;
	}
	shmdt(c);
	printf("total=%" PRIu64 " sum=%" PRIu64 " workers=%u ok=%d\n", total, sum, workers,
	       total == sum);
	return total == sum ? 0 : 1;
}

int main(int argc, char **argv)
{
	unsigned long long key = 0x4d494754ULL;
	unsigned long long workers = 4;
	int checker = 0;
	int i = 1;

	if (argc > 1 && strcmp(argv[1], "check") == 0) {
		checker = 1;
		i = 2;
	}
	for (; i < argc; i++) {
		if (strcmp(argv[i], "--key") == 0)
			key = parse_num("--key", argv[++i]);
		else if (!checker && strcmp(argv[i], "--workers") == 0)
			workers = parse_num("--workers", argv[++i]);
		else
			usage();
	}
	if (key == 0 || key > 0xffffffffULL) {
		fprintf(stderr, "shmcounter: --key must be a non-zero 32-bit value\n");
		return 2;
	}
	if (checker)
		return check(key);
	if (workers < 1 || workers > MAX_WORKERS) {
		fprintf(stderr, "shmcounter: --workers must be between 1 and %d\n", MAX_WORKERS);
		return 2;
	}
	return run(key, (unsigned)workers);
}
