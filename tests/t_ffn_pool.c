/*
 * t_ffn_pool - the kernels' thread pool (kernels/ffn.c): every job runs
 * once on every thread, and the caller returns only after all of them,
 * whether the threads were spinning between jobs (jobs back to back),
 * asleep (a gap longer than the spin), or the caller had to sleep waiting
 * for a slow worker. Many short jobs, as a decode step runs them. Also in
 * tests/t_tsan.sh: a lost wake-up hangs (the run's timeout), a missing
 * ordering is a ThreadSanitizer report.
 */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "moestream/kernels.h"
#include "testutil.h"

#define NTH 4

struct job {
	uint64_t n;               /* jobs so far, set by the caller */
	uint64_t seen[NTH];       /* per thread: the job it last ran */
	atomic_int ran;           /* threads that ran this job */
	int bad;                  /* a thread ran a job twice or skipped one */
	int slow;                 /* this thread sleeps in this job */
	int data[NTH];            /* written by each thread, read by the caller */
};

static void nap(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

static void task(void *ctx, int ith, int nth)
{
	struct job *j = ctx;
	if (nth != NTH || ith < 0 || ith >= NTH || j->seen[ith] + 1 != j->n)
		j->bad = 1;
	else
		j->seen[ith] = j->n;
	if (ith == j->slow)
		nap(2000); /* longer than the caller's spin */
	j->data[ith] = (int)j->n * (ith + 1);
	atomic_fetch_add(&j->ran, 1);
}

int main(void)
{
	struct ms_ffn_pool *pool;
	struct ms_err err = { 0 };
	if (ms_ffn_pool_init(&pool, NTH, &err))
		t_fatal("pool: %s", err.msg);
	T_CHECK(ms_ffn_pool_threads(pool) == NTH, "pool of %d threads",
		ms_ffn_pool_threads(pool));
	static struct job j;
	int incomplete = 0, wrong = 0;
	const int N = 5000;
	for (int k = 0; k < N; k++) {
		j.n++;
		atomic_store(&j.ran, 0);
		/* every 500th job: one worker slow (the caller sleeps); every
		 * 1000th, a pause first (the workers sleep) */
		j.slow = k % 500 == 499 ? 1 + k % (NTH - 1) : -1;
		if (k % 1000 == 999)
			nap(5000);
		ms_ffn_parallel(pool, 0, task, &j);
		incomplete += atomic_load(&j.ran) != NTH;
		for (int i = 0; i < NTH; i++)
			wrong += j.data[i] != (int)j.n * (i + 1);
	}
	printf("%d jobs on a pool of %d threads: %d returned before every "
	       "thread had run, %d results missing, %s\n",
	       N, NTH, incomplete, wrong,
	       j.bad ? "a job ran twice or was skipped" : "each ran once");
	T_CHECK(incomplete == 0, "%d jobs returned early", incomplete);
	T_CHECK(wrong == 0, "%d results not seen by the caller", wrong);
	T_CHECK(!j.bad, "a thread ran a job twice or skipped one");
	ms_ffn_pool_free(pool);
	return t_done();
}
