/*
 * t_daemon_faults.c - I/O faults at a rate under a long multi-client run:
 * zero wrong bytes served, every failed load reported to its client, no
 * hung request.
 *
 * moestreamd has no option for the engine's fault injector (struct
 * ms_io_faults is test-only), so the server runs inside this process
 * (inproc.h: the daemon's own model, cache, engine and server code, on a
 * real socket) with the injector on: per completed chunk, 5% short reads,
 * 2% -EAGAIN, 2% -EINTR, 1% -EIO, 64 KiB requests so that an expert of
 * 255 KB is several chunks. The cache (64 MiB) holds under half the
 * model's experts (163 MB), so loads and evictions never stop; the history
 * prefetcher and clients' PREFETCH hints issue prefetches, and clients that
 * move on to the next layer make the daemon cancel the stale ones.
 *
 * Eight client threads, each with its own connection, walk the layers like
 * a token loop: ACQUIRE of 8 experts (a hot set and a tail) with a 10 s
 * timeout, a hint for the next layer, the bytes of every expert answered
 * READY compared with the file at once and again just before RELEASE (a
 * slot reused under a pin would show there). Every 40th step a client
 * sends an ACQUIRE and hangs up before the answer, then reconnects.
 *
 * Checks: every expert answer is READY with the file's bytes or -EIO (the
 * only error injected; -EBUSY is impossible with 64 pins at most in 248
 * slots); no ACQUIRE times out; the clients saw -EIO answers and the cache
 * counted failed loads (the injector was on); at the end no pin is left
 * (within a second), ms_cache_check passes and the loop still runs. The
 * run is made with io_uring and with the preadv pool.
 *
 * Figures: acquires, experts verified (bytes), -EIO answers, the cache's
 * loads, failures, evictions and cancelled prefetches, per engine.
 * MS_FAULTS_SECONDS sets the run time per engine (default 6).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemontest.h"
#include "inproc.h"
#include "moestream/moestream.h"
#include "testutil.h"

#define N_CLIENTS 8
#define PER_ACQ 8

static struct ms_model *model;
static struct ip_server srv;
static atomic_bool run;
static int run_ms = 6000;
static uint64_t seed;

struct counts {
	atomic_ulong acquires, experts_ok, bytes_ok, eio, wrong, bad_status,
		timeouts, hangups, hints;
};
static struct counts cnt;
static char first_bad[512];
static pthread_mutex_t bad_mu = PTHREAD_MUTEX_INITIALIZER;

static void note_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void note_bad(const char *fmt, ...)
{
	pthread_mutex_lock(&bad_mu);
	if (!first_bad[0]) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(first_bad, sizeof(first_bad), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&bad_mu);
}

/* The bytes a client sees for (layer, expert) are the file's. */
static bool bytes_ok(const struct ms_client_expert *g, uint32_t layer,
		     uint32_t expert, uint8_t *buf)
{
	const struct ms_extent *x = ms_model_expert(model, layer, expert);
	if (!x || g->n_proj != model->layers[layer].n_proj)
		return false;
	for (uint32_t j = 0; j < g->n_proj; j++)
		if (g->len[j] != x[j].bytes ||
		    pread(model->shards[x[j].shard]->fd, buf, x[j].bytes,
			  (off_t)x[j].offset) != (ssize_t)x[j].bytes ||
		    memcmp(buf, g->proj[j], x[j].bytes))
			return false;
	return true;
}

static void pick(uint64_t *rs, uint16_t *ex)
{
	for (int i = 0; i < PER_ACQ; i++) {
		uint16_t e;
		bool dup;
		do {
			/* 3 in 4 from a hot set of 12, the rest anywhere */
			e = (uint16_t)(t_rand(rs) % 4 ? t_rand(rs) % 12
						     : t_rand(rs) % model->n_expert);
			dup = false;
			for (int k = 0; k < i; k++)
				dup |= ex[k] == e;
		} while (dup);
		ex[i] = e;
	}
}

static void *client_main(void *arg)
{
	unsigned id = (unsigned)(uintptr_t)arg;
	uint64_t rs = seed ^ (0x1234567ull * (id + 1));
	uint8_t *buf = malloc(model->expert_bytes_max);
	struct ms_err err = { 0 };
	struct ms_client *c = dt_connect(srv.sock, "faults", &err);
	if (!c || !buf) {
		note_bad("client %u: connect: %s", id, err.msg);
		atomic_fetch_add(&cnt.bad_status, 1);
		free(buf);
		return NULL;
	}
	uint32_t layer = id % model->n_layers;
	unsigned step = 0;
	while (atomic_load(&run)) {
		uint32_t block = model->layers[layer].block;
		uint16_t ex[PER_ACQ];
		pick(&rs, ex);
		if (++step % 40 == 0) {
			/* Ask, and hang up before the answer comes. */
			uint64_t rid;
			ms_client_acquire_async(c, block, ex, PER_ACQ, &rid);
			ms_client_close(c);
			atomic_fetch_add(&cnt.hangups, 1);
			c = dt_connect(srv.sock, "faults", &err);
			if (!c) {
				note_bad("client %u: reconnect: %s", id, err.msg);
				atomic_fetch_add(&cnt.bad_status, 1);
				break;
			}
			continue;
		}
		struct ms_client_expert got[PER_ACQ];
		memset(got, 0, sizeof(got));
		int rc = ms_client_acquire(c, block, ex, PER_ACQ, got, 10000);
		atomic_fetch_add(&cnt.acquires, 1);
		if (rc == -ETIMEDOUT) {
			atomic_fetch_add(&cnt.timeouts, 1);
			note_bad("client %u: ACQUIRE of block %u timed out after 10 s",
				 id, block);
			break;
		}
		uint16_t held[PER_ACQ];
		uint32_t nh = 0;
		for (int i = 0; i < PER_ACQ; i++) {
			if (got[i].status == -EIO) {
				atomic_fetch_add(&cnt.eio, 1);
				continue;
			}
			if (got[i].status) {
				atomic_fetch_add(&cnt.bad_status, 1);
				note_bad("client %u: block %u expert %u answered %s (only "
					 "EIO is injected)", id, block, ex[i],
					 strerror(-got[i].status));
				continue;
			}
			if (!bytes_ok(&got[i], layer, ex[i], buf)) {
				atomic_fetch_add(&cnt.wrong, 1);
				note_bad("client %u: block %u expert %u: wrong bytes served",
					 id, block, ex[i]);
			}
			held[nh++] = ex[i];
		}
		/* a hint for the next layer, like an engine's router would */
		uint32_t next = (layer + 1) % model->n_layers;
		uint16_t hint[4];
		for (int i = 0; i < 4; i++)
			hint[i] = (uint16_t)(t_rand(&rs) % model->n_expert);
		ms_client_prefetch(c, model->layers[next].block, hint, NULL, 4);
		atomic_fetch_add(&cnt.hints, 1);
		/* "compute", then look again: a slot must not change under a pin */
		for (uint32_t i = 0, k = 0; i < PER_ACQ && k < nh; i++) {
			if (got[i].status || ex[i] != held[k])
				continue;
			k++;
			if (!bytes_ok(&got[i], layer, ex[i], buf)) {
				atomic_fetch_add(&cnt.wrong, 1);
				note_bad("client %u: block %u expert %u changed while "
					 "pinned", id, block, ex[i]);
			} else {
				atomic_fetch_add(&cnt.experts_ok, 1);
				atomic_fetch_add(&cnt.bytes_ok,
						 model->layers[layer].expert_bytes);
			}
		}
		if (nh)
			ms_client_release(c, block, held, nh);
		layer = next;
	}
	ms_client_close(c);
	free(buf);
	return NULL;
}

static bool pinned_zero(double v, double arg)
{
	return v == arg;
}

static void one_engine(const char *engine, const char *model_path)
{
	char extra[256];
	snprintf(extra, sizeof(extra),
		 "[io]\nengine = %s\nrequest_size = 64K\n[prefetch]\npolicy = auto\n"
		 "depth = 2\n",
		 engine);
	struct ms_io_faults f = { .short_ppm = 50000, .eagain_ppm = 20000,
				  .eintr_ppm = 20000, .eio_ppm = 10000,
				  .seed = seed };
	struct ms_err err = { 0 };
	/* A line per failed load is noise here. Set before the loop's thread
	 * exists: it reads the threshold. */
	ms_log_threshold = MS_LOG_ERR;
	if (ip_start(&srv, engine, model_path, extra, &f, &err))
		t_fatal("%s: %s", engine, err.msg);
	memset(&cnt, 0, sizeof(cnt));
	first_bad[0] = '\0';
	atomic_store(&run, true);
	pthread_t th[N_CLIENTS];
	int64_t t0 = dt_now_ms();
	for (unsigned i = 0; i < N_CLIENTS; i++)
		if (pthread_create(&th[i], NULL, client_main, (void *)(uintptr_t)i))
			t_fatal("pthread_create");
	dt_sleep_ms(run_ms);
	atomic_store(&run, false);
	for (unsigned i = 0; i < N_CLIENTS; i++)
		pthread_join(th[i], NULL);
	double secs = (double)(dt_now_ms() - t0) / 1000.0;

	struct ms_client *c = dt_connect(srv.sock, "check", &err);
	T_CHECK(c != NULL, "%s: the server no longer accepts: %s", engine, err.msg);
	double left = NAN;
	int64_t ms = c ? dt_stat_wait(c, "pinned_entries", pinned_zero, 0, 1000, &left)
		       : -1;
	T_CHECK(ms >= 0, "%s: %g entries still pinned 1 s after every client left",
		engine, left);
	struct ms_cache_stats st;
	ms_cache_get_stats(srv.cache, &st);
	struct ms_err e2 = { 0 };
	T_CHECK(!ms_cache_check(srv.cache, &e2), "%s: %s", engine, e2.msg);
	T_CHECK(ip_alive(&srv), "%s: the server's loop ended", engine);
	ms_client_close(c);
	T_CHECK(ip_stop(&srv, 0) == 0, "%s: the loop failed", engine);

	unsigned long acq = atomic_load(&cnt.acquires), eio = atomic_load(&cnt.eio);
	printf("%-8s %.1f s, %u clients: %lu acquires (%lu hang-ups mid-request), "
	       "%lu experts verified twice (%.1f MB), %lu -EIO answers, %lu wrong, "
	       "%lu other errors, %lu timeouts; cache: %llu loads, %llu failed, "
	       "%llu evictions, %llu prefetches (%llu cancelled), %.1f MB read; "
	       "pins back to 0 in %lld ms\n",
	       engine, secs, N_CLIENTS, acq, atomic_load(&cnt.hangups),
	       atomic_load(&cnt.experts_ok),
	       (double)atomic_load(&cnt.bytes_ok) / 1e6, eio,
	       atomic_load(&cnt.wrong), atomic_load(&cnt.bad_status),
	       atomic_load(&cnt.timeouts), (unsigned long long)st.loads,
	       (unsigned long long)st.load_failures,
	       (unsigned long long)st.evictions,
	       (unsigned long long)st.prefetch_issued,
	       (unsigned long long)st.prefetch_cancelled,
	       (double)st.bytes_read / 1e6, (long long)ms);
	T_CHECK(!atomic_load(&cnt.wrong) && !atomic_load(&cnt.bad_status) &&
		!atomic_load(&cnt.timeouts), "%s: %s", engine, first_bad);
	T_CHECK(acq >= 40, "%s: only %lu acquires in %.1f s", engine, acq, secs);
	T_CHECK(st.load_failures > 0 && eio > 0, "%s: the injector did not show: "
		"%llu failed loads, %lu -EIO answers", engine,
		(unsigned long long)st.load_failures, eio);
	T_CHECK(st.evictions > 0, "%s: no evictions: the cache was not under "
		"pressure", engine);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	ms_server_block_signals(NULL);
	dt_watchdog(240, "t_daemon_faults");
	const char *s = getenv("MS_FAULTS_SECONDS");
	if (s && atof(s) > 0)
		run_ms = (int)(atof(s) * 1000);
	seed = t_seed();
	const char *path = dt_model("faults.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, path, &err))
		t_fatal("%s", err.msg);
	one_engine("io_uring", path);
	one_engine("preadv", path);
	ms_model_free(model);
	return t_done();
}
