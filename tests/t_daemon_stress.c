/*
 * t_daemon_stress.c - the real moestreamd under 64 clients at once, and
 * clients that die holding pins.
 *
 * 1. 64 threads, one connection each, acquire random experts (1..3 at a
 *    time, half from a hot set so that there are hits, half uniform so that
 *    a 64 MiB cache over 640 experts must evict: 4 MiB of it staging
 *    buffers all the reads go through, 60 MiB the arena's 232 slots),
 *    blocking and asynchronous, and compare every byte of every projection
 *    with the model file at the expert's extents (ms_model_expert + pread). A
 *    sampler thread reads STATS all along: held_bytes never exceeds
 *    budget_bytes. At most 64 x 3 = 192 experts are pinned at once, plus at
 *    most 29 slots of prefetch (cache/8): fewer than the 232 slots, so no
 *    acquire may be answered -EBUSY. A watchdog fails the test if anything
 *    deadlocks. At the end pinned_entries is 0 and the daemon stops with
 *    exit 0 on SIGTERM.
 * 2. A child process connects, acquires, and is SIGKILLed while it holds
 *    its pins (and, in a second round, while its acquires are still
 *    loading): pinned_entries drops to 0 within a second.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"

#define N_CLIENTS 64
#define N_ITER 120
#define MAX_K 3
#define HOT 8

static struct ms_model *model;
static struct dt_daemon dmn;
static pthread_mutex_t report_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t start_line;
static atomic_bool sampling;
static uint64_t seed;

/* t_fail_at is not thread-safe: the workers report through this; after
 * 30 reports the rest are only counted. */
static unsigned n_reports;
#define W_FAIL(...)                                                            \
	do {                                                                   \
		pthread_mutex_lock(&report_mu);                                \
		if (++n_reports <= 30)                                         \
			t_fail_at(__FILE__, __LINE__, __VA_ARGS__);            \
		else                                                           \
			t_failures++;                                          \
		pthread_mutex_unlock(&report_mu);                              \
	} while (0)

struct worker {
	pthread_t th;
	unsigned idx;
	uint64_t rng;
	uint8_t *buf;
	size_t buf_len;
	/* results */
	uint64_t bytes_ok, experts_ok, busy, other_err, bad, acquires;
	bool connected;
};

/* Compares an acquired expert with the file: 0, or 1 after a report. */
static int verify(struct worker *w, const struct ms_client_expert *got)
{
	int32_t l = got->block < model->n_block ? model->block_layer[got->block] : -1;
	const struct ms_extent *ext =
		l < 0 ? NULL : ms_model_expert(model, (uint32_t)l, got->expert);
	if (!ext) {
		W_FAIL("client %u: answer for block %u expert %u, not in the model",
		       w->idx, got->block, got->expert);
		return 1;
	}
	const struct ms_moe_layer *L = &model->layers[l];
	if (got->n_proj != L->n_proj) {
		W_FAIL("client %u: %u:%u has %u projections, the file %u", w->idx,
		       got->block, got->expert, got->n_proj, L->n_proj);
		return 1;
	}
	for (uint32_t j = 0; j < L->n_proj; j++) {
		if (got->len[j] != ext[j].bytes) {
			W_FAIL("client %u: %u:%u projection %u is %llu bytes, the "
			       "file's extent %llu",
			       w->idx, got->block, got->expert, j,
			       (unsigned long long)got->len[j],
			       (unsigned long long)ext[j].bytes);
			return 1;
		}
		if (ext[j].bytes > w->buf_len)
			t_fatal("extent of %llu bytes: buffer too small",
				(unsigned long long)ext[j].bytes);
		int fd = model->shards[ext[j].shard]->fd;
		ssize_t n = pread(fd, w->buf, ext[j].bytes, (off_t)ext[j].offset);
		if (n != (ssize_t)ext[j].bytes) {
			W_FAIL("pread of %llu bytes at %llu: %zd",
			       (unsigned long long)ext[j].bytes,
			       (unsigned long long)ext[j].offset, n);
			return 1;
		}
		const uint8_t *p = got->proj[j];
		if (memcmp(p, w->buf, ext[j].bytes)) {
			uint64_t k = 0, wrong = 0;
			for (uint64_t i = 0; i < ext[j].bytes; i++)
				if (p[i] != w->buf[i] && !wrong++)
					k = i;
			W_FAIL("client %u: %u:%u projection %u: %llu of %llu bytes "
			       "differ from the file, first at byte %llu (0x%02x, "
			       "file 0x%02x)",
			       w->idx, got->block, got->expert, j,
			       (unsigned long long)wrong,
			       (unsigned long long)ext[j].bytes,
			       (unsigned long long)k, p[k], w->buf[k]);
			return 1;
		}
		w->bytes_ok += ext[j].bytes;
	}
	w->experts_ok++;
	return 0;
}

static unsigned pick(struct worker *w, uint32_t *block, uint16_t *ex)
{
	uint32_t l = (uint32_t)(t_rand(&w->rng) % model->n_layers);
	*block = model->layers[l].block;
	unsigned k = 1 + (unsigned)(t_rand(&w->rng) % MAX_K);
	for (unsigned i = 0; i < k; i++) {
		for (;;) {
			bool hot = t_rand(&w->rng) & 1;
			uint16_t e = (uint16_t)(t_rand(&w->rng) %
						(hot ? HOT : model->n_expert));
			bool dup = false;
			for (unsigned j = 0; j < i; j++)
				dup |= ex[j] == e;
			if (!dup) {
				ex[i] = e;
				break;
			}
		}
	}
	return k;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char name[32];
	snprintf(name, sizeof(name), "stress-%u", w->idx);
	pthread_barrier_wait(&start_line); /* 64 HELLOs at once */
	struct ms_err err = { 0 };
	struct ms_client *c = dt_connect(dmn.sock, name, &err);
	pthread_barrier_wait(&start_line);
	if (!c) {
		W_FAIL("client %u: connect: %s", w->idx, err.msg);
		return NULL;
	}
	w->connected = true;
	for (unsigned it = 0; it < N_ITER; it++) {
		uint32_t block;
		uint16_t ex[MAX_K];
		struct ms_client_expert got[MAX_K];
		unsigned k = pick(w, &block, ex);
		int rc;
		w->acquires++;
		if (it & 1) {
			/* asynchronous: answers one by one, maybe batched */
			uint64_t id, gid;
			rc = ms_client_acquire_async(c, block, ex, k, &id);
			for (unsigned i = 0; !rc && i < k; i++) {
				struct ms_client_expert one;
				rc = ms_client_next(c, &one, &gid, 30000);
				if (rc)
					break;
				unsigned slot = k;
				for (unsigned j = 0; j < k; j++)
					if (ex[j] == one.expert && gid == id)
						slot = j;
				if (slot == k) {
					W_FAIL("client %u: answer %u:%u (id %llu) to "
					       "request %llu, which did not ask for it",
					       w->idx, one.block, one.expert,
					       (unsigned long long)gid,
					       (unsigned long long)id);
					rc = -EBADMSG;
					break;
				}
				got[slot] = one;
			}
			if (rc) {
				W_FAIL("client %u: async acquire of %u experts of "
				       "block %u: %s",
				       w->idx, k, block, strerror(-rc));
				break;
			}
		} else {
			rc = ms_client_acquire(c, block, ex, k, got, 30000);
			if (rc && rc != -EBUSY && rc != -EIO) {
				W_FAIL("client %u: acquire of %u experts of block "
				       "%u: %s (%s)",
				       w->idx, k, block, strerror(-rc),
				       ms_client_last_error(c));
				break;
			}
		}
		uint16_t rel[MAX_K];
		unsigned n_rel = 0;
		for (unsigned i = 0; i < k; i++) {
			if (got[i].status == 0) {
				w->bad += (uint64_t)verify(w, &got[i]);
				rel[n_rel++] = ex[i];
			} else if (got[i].status == -EBUSY) {
				w->busy++;
			} else {
				w->other_err++;
				W_FAIL("client %u: %u:%u answered %s", w->idx, block,
				       ex[i], strerror(-got[i].status));
			}
		}
		if (n_rel && (rc = ms_client_release(c, block, rel, n_rel)))
			W_FAIL("client %u: release: %s", w->idx, strerror(-rc));
	}
	/* The releases are in before we go: an ERROR would show up here. */
	int rc = ms_client_ping(c, 10000);
	if (rc)
		W_FAIL("client %u: final ping: %s", w->idx, strerror(-rc));
	if (*ms_client_last_error(c))
		W_FAIL("client %u: the daemon reported '%s'", w->idx,
		       ms_client_last_error(c));
	ms_client_close(c);
	return NULL;
}

struct sampler {
	pthread_t th;
	uint64_t samples, max_held, max_pinned, budget, over;
	double first_over_held;
};

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	struct ms_client *c = dt_connect(dmn.sock, "sampler", NULL);
	if (!c) {
		W_FAIL("sampler: cannot connect");
		return NULL;
	}
	while (atomic_load(&sampling)) {
		char *json = NULL;
		if (ms_client_stats(c, &json, 5000)) {
			W_FAIL("sampler: STATS failed");
			break;
		}
		/* three numbers of one snapshot */
		double held = NAN, budget = NAN, pinned = NAN;
		const char *p;
		if ((p = strstr(json, "\"held_bytes\":")))
			held = strtod(p + 13, NULL);
		if ((p = strstr(json, "\"budget_bytes\":")))
			budget = strtod(p + 15, NULL);
		if ((p = strstr(json, "\"pinned_entries\":")))
			pinned = strtod(p + 17, NULL);
		free(json);
		if (isnan(held) || isnan(budget) || isnan(pinned)) {
			W_FAIL("sampler: STATS lacks held_bytes/budget_bytes/"
			       "pinned_entries");
			break;
		}
		s->samples++;
		s->budget = (uint64_t)budget;
		if (held > budget && !s->over++)
			s->first_over_held = held;
		if (held > (double)s->max_held)
			s->max_held = (uint64_t)held;
		if (pinned > (double)s->max_pinned)
			s->max_pinned = (uint64_t)pinned;
		dt_sleep_ms(3);
	}
	ms_client_close(c);
	return NULL;
}

static void test_64_clients(struct ms_client *ctl)
{
	/* The model must not be trivially uniform, or a wrong offset would
	 * read as right. */
	const struct ms_extent *a = ms_model_expert(model, 0, 0);
	const struct ms_extent *b = ms_model_expert(model, 0, 1);
	uint8_t *ba = malloc(a[0].bytes), *bb = malloc(a[0].bytes);
	if (!ba || !bb || pread(model->shards[0]->fd, ba, a[0].bytes,
				(off_t)a[0].offset) != (ssize_t)a[0].bytes ||
	    pread(model->shards[0]->fd, bb, a[0].bytes, (off_t)b[0].offset) !=
		    (ssize_t)a[0].bytes)
		t_fatal("reading the model");
	T_CHECK(memcmp(ba, bb, a[0].bytes) != 0,
		"experts 0 and 1 of layer 0 have the same bytes: the byte "
		"comparison would prove nothing");
	free(ba);
	free(bb);

	double slots = dt_stat(ctl, "slots");
	double budget = dt_stat(ctl, "budget_bytes");
	printf("cache: %.0f slots, %.0f bytes; model: %u layers x %u experts = %u "
	       "experts of %llu bytes\n",
	       slots, budget, model->n_layers, model->n_expert,
	       model->n_layers * model->n_expert,
	       (unsigned long long)model->expert_bytes_max);
	T_CHECK(slots < model->n_layers * model->n_expert,
		"the cache holds every expert (%.0f slots): nothing would be "
		"evicted", slots);
	T_CHECK(slots >= N_CLIENTS * MAX_K + slots / 8,
		"%.0f slots cannot hold %d pins + prefetch", slots,
		N_CLIENTS * MAX_K);

	struct worker *ws = calloc(N_CLIENTS, sizeof(*ws));
	if (!ws)
		t_fatal("out of memory");
	pthread_barrier_init(&start_line, NULL, N_CLIENTS);
	struct sampler smp = { 0 };
	atomic_store(&sampling, true);
	if (pthread_create(&smp.th, NULL, sampler_main, &smp))
		t_fatal("pthread_create");
	int64_t t0 = dt_now_ms();
	for (unsigned i = 0; i < N_CLIENTS; i++) {
		ws[i].idx = i;
		ws[i].rng = seed ^ (0x9e3779b97f4a7c15ull * (i + 1));
		ws[i].buf_len = model->expert_bytes_max;
		ws[i].buf = malloc(ws[i].buf_len);
		if (!ws[i].buf || pthread_create(&ws[i].th, NULL, worker_main, &ws[i]))
			t_fatal("starting client thread %u", i);
	}
	uint64_t bytes = 0, experts = 0, busy = 0, other = 0, bad = 0, acq = 0;
	unsigned connected = 0;
	for (unsigned i = 0; i < N_CLIENTS; i++) {
		pthread_join(ws[i].th, NULL);
		bytes += ws[i].bytes_ok;
		experts += ws[i].experts_ok;
		busy += ws[i].busy;
		other += ws[i].other_err;
		bad += ws[i].bad;
		acq += ws[i].acquires;
		connected += ws[i].connected;
		free(ws[i].buf);
	}
	int64_t dt = dt_now_ms() - t0;
	atomic_store(&sampling, false);
	pthread_join(smp.th, NULL);
	pthread_barrier_destroy(&start_line);
	free(ws);

	printf("64 clients: %u connected, %llu acquire requests, %llu experts "
	       "verified, %llu bytes equal to the file, %llu -EBUSY, %llu other "
	       "errors, %llu wrong, in %lld ms\n",
	       connected, (unsigned long long)acq, (unsigned long long)experts,
	       (unsigned long long)bytes, (unsigned long long)busy,
	       (unsigned long long)other, (unsigned long long)bad, (long long)dt);
	printf("sampler: %llu STATS samples, held_bytes max %llu of budget %llu "
	       "(%llu over), pinned_entries max %llu\n",
	       (unsigned long long)smp.samples, (unsigned long long)smp.max_held,
	       (unsigned long long)smp.budget, (unsigned long long)smp.over,
	       (unsigned long long)smp.max_pinned);
	T_EQ_U64(connected, N_CLIENTS);
	T_EQ_U64(bad, 0);
	T_EQ_U64(other, 0);
	T_CHECK(busy == 0,
		"%llu acquires answered -EBUSY although at most %d pins + %.0f "
		"prefetch slots were wanted of %.0f slots",
		(unsigned long long)busy, N_CLIENTS * MAX_K, slots / 8, slots);
	T_CHECK(experts >= N_CLIENTS * N_ITER, "only %llu experts verified",
		(unsigned long long)experts);
	T_CHECK(smp.samples >= 10, "only %llu STATS samples taken",
		(unsigned long long)smp.samples);
	T_CHECK(smp.over == 0,
		"held_bytes exceeded budget_bytes in %llu of %llu samples (first "
		"%.0f > %llu)",
		(unsigned long long)smp.over, (unsigned long long)smp.samples,
		smp.first_over_held, (unsigned long long)smp.budget);

	double last = NAN;
	int64_t ms = dt_stat_wait(ctl, "pinned_entries", dt_eq, 0, 2000, &last);
	T_CHECK(ms >= 0, "pinned_entries is %.0f 2 s after every client left",
		last);
	double ev = dt_stat(ctl, "evictions"), hits = dt_stat(ctl, "hits"),
	       miss = dt_stat(ctl, "misses"), acqs = dt_stat(ctl, "acquires");
	printf("daemon: %.0f acquires, %.0f hits, %.0f misses, %.0f evictions; "
	       "pinned_entries 0 after %lld ms\n",
	       acqs, hits, miss, ev, (long long)ms);
	T_CHECK(ev > 0, "no eviction happened (evictions %.0f)", ev);
	T_CHECK(hits > 0 && miss > 0, "hits %.0f, misses %.0f: both expected",
		hits, miss);
	T_CHECK(acqs >= (double)acq, "daemon counted %.0f acquires, clients sent "
		"%llu", acqs, (unsigned long long)acq);
	ms = dt_stat_wait(ctl, "clients", dt_eq, 1, 2000, &last);
	T_CHECK(ms >= 0, "%.0f clients still connected (expected only this one)",
		last);
}

/* The child: connects, acquires, tells the parent, waits to be killed.
 * Never returns; never exit() (the parent's atexit handlers). */
static void __attribute__((noreturn))
child_hold(int wfd, uint32_t block, const uint16_t *ex, unsigned k, bool wait_ready)
{
	struct ms_client *c = dt_connect(dmn.sock, "doomed", NULL);
	char r = 'x';
	if (c) {
		if (wait_ready) {
			struct ms_client_expert got[16];
			if (!ms_client_acquire(c, block, ex, k, got, 20000))
				r = 'k';
		} else {
			uint64_t id;
			if (!ms_client_acquire_async(c, block, ex, k, &id))
				r = 'k';
		}
	}
	if (write(wfd, &r, 1) != 1)
		_exit(2);
	for (;;)
		pause();
}

static void test_sigkill(struct ms_client *ctl)
{
	uint64_t rng = seed ^ 0x5151;
	/* round 0: pins held and ready; rounds 1..4: acquires still loading
	 * (blocks the stress test left cold, 16 experts each) */
	for (int round = 0; round < 5; round++) {
		bool ready = round == 0;
		uint32_t l = (uint32_t)(t_rand(&rng) % model->n_layers);
		uint32_t block = model->layers[l].block;
		uint16_t ex[16];
		unsigned k = ready ? 4 : 16;
		for (unsigned i = 0; i < k; i++)
			ex[i] = (uint16_t)(ready ? 20 + i : 16 + 3 * i + (unsigned)round);
		int p[2];
		if (pipe(p))
			t_fatal("pipe");
		fflush(NULL);
		pid_t pid = fork();
		if (pid < 0)
			t_fatal("fork");
		if (pid == 0) {
			close(p[0]);
			child_hold(p[1], block, ex, k, ready);
		}
		dt_track(pid);
		close(p[1]);
		char r = 0;
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		if (poll(&pfd, 1, 20000) != 1 || read(p[0], &r, 1) != 1 || r != 'k') {
			t_fail_at(__FILE__, __LINE__,
				  "round %d: the child could not acquire (%c)", round,
				  r ? r : '-');
			kill(pid, SIGKILL);
			dt_waitpid(pid, 5000);
			close(p[0]);
			continue;
		}
		close(p[0]);
		double pinned = dt_stat(ctl, "pinned_entries");
		if (ready)
			T_CHECK(pinned >= k, "the child holds %u pins; pinned_entries "
				"%.0f", k, pinned);
		int64_t t0 = dt_now_ms();
		kill(pid, SIGKILL);
		double last = NAN;
		int64_t ms = dt_stat_wait(ctl, "pinned_entries", dt_eq, 0, 1000, &last);
		int64_t total = dt_now_ms() - t0;
		printf("SIGKILL round %d (%s, %u experts of block %u): pinned_entries "
		       "%.0f -> 0 in %lld ms\n",
		       round, ready ? "pins held" : "acquires in flight", k, block,
		       pinned, ms < 0 ? (long long)total : (long long)ms);
		T_CHECK(ms >= 0,
			"round %d: pinned_entries still %.0f 1 s after the client "
			"holding them was SIGKILLed",
			round, last);
		int st = dt_waitpid(pid, 5000);
		T_CHECK(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
			"the child did not die of SIGKILL (status %d)", st);
	}
	double last;
	int64_t ms = dt_stat_wait(ctl, "clients", dt_eq, 1, 2000, &last);
	T_CHECK(ms >= 0, "%.0f clients connected after the children died", last);
}

int main(void)
{
	seed = t_seed();
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(240, "t_daemon_stress");
	const char *path = dt_model("stress.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, path, &err))
		t_fatal("%s", err.msg);
	if (dt_start(&dmn, "stress", path,
		     "[socket]\nmax_clients = 80\n"
		     "[cache]\nacquire_timeout = 5000\n"
		     "[io]\nstaging = 4M\n"))
		return t_done();
	printf("moestreamd ready in %lld ms (pid %d)\n", (long long)dmn.ready_ms,
	       (int)dmn.pid);
	struct ms_client *ctl = dt_connect(dmn.sock, "control", &err);
	if (!ctl)
		t_fatal("control client: %s", err.msg);

	test_64_clients(ctl);
	test_sigkill(ctl);

	ms_client_close(ctl);
	int rc = dt_stop(&dmn);
	T_CHECK(rc == 0, "moestreamd exited %d on SIGTERM (0 expected)", rc);
	if (rc != 0 || t_failures)
		dt_daemon_dump_log(&dmn, 40);
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
