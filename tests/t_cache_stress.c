/*
 * t_cache_stress - cache invariants under a million random operations from
 * several threads, then again with the engine's fault injection on.
 *
 * The model: 5 MoE layers x 32 experts of 6,528 bytes (q8_0, tiny shapes, so
 * that a load costs little and a million operations fit in a minute); the
 * cache: 8 slots, so eviction never stops, and 4 threads that each hold up
 * to 3 pins (12 in all: every slot pinned at times, so acquires wait; now and
 * then a thread sleeps 25 ms with its pins held, a slow client, and some
 * acquires hear -EBUSY after acquire_timeout_ms = 20 ms).
 *
 * Each thread, at random: acquire (async; 1 in 20 of them release the pin
 * from inside the callback), acquire_wait, release, prefetch, cancel_stale,
 * ms_cache_check, ms_cache_get_stats. Every expert served is compared byte
 * for byte with the file when it arrives and again before its release
 * (pinned bytes never change: a pinned entry was never evicted and its slot
 * never reused), and its entry must still be READY with a pin. The main
 * thread samples the stats every 2 ms (held_bytes <= budget, READY + LOADING
 * <= slots) and fails any acquire that has waited more than 10 s (hung).
 *
 * At the end of a phase, all pins released and all loads settled, the
 * counters must add up exactly:
 *   - every -EINPROGRESS got exactly one callback;
 *   - busy == the -EBUSY answers the threads saw;
 *   - hits + misses == acquires answered 0 or -EINPROGRESS (each acquire is
 *     a hit or a miss; the gap is printed);
 *   - hits >= acquires answered 0 at once;
 *   - loads == successful + failed + cancelled loads, so
 *     bytes_read == (loads - load_failures - prefetch_cancelled) x expert
 *     bytes, and READY entries == that count - evictions;
 *   - the latency histogram holds `loads` samples;
 *   - without faults: prefetch_cancelled == the sum of cancel_stale's
 *     answers, load_failures == 0;
 *   - pinned_entries == 0, loading_entries == 0, held_bytes == READY x slot.
 *
 * Phases: "plain" 1,000,000 operations through the page cache; "direct"
 * 100,000 with O_DIRECT; "faults" 200,000 with O_DIRECT and, per completed
 * read, 3% short reads, 3% -EAGAIN, 3% -EINTR, 1% -EIO: zero wrong bytes,
 * failures answered -EIO, no hung acquire, the cache consistent, and every
 * expert that failed loads again afterwards; "staging" 100,000 as "faults"
 * but with reads of 4 KiB through three 4 KiB staging buffers (iouring.h)
 * that both I/O threads share, so that reads wait for a buffer all the
 * time (the buffers come on top of the 8 slots). On a machine too busy for
 * that, a phase stops after 35 / 10 / 12 / 10 s and says so (the checks
 * are the same).
 *
 * MS_STRESS_OPS scales the operation counts (a factor, default 1).
 * MS_CT_SABOTAGE=4 expects one -EBUSY answer more than seen; =5 leaks one
 * pin (pinned_entries must then end at 1).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "cachetest.h"

#define N_THREADS 4
#define MAX_PINS 3
#define N_SLOTS 8
#define TIMEOUT_MS 20
#define HUNG_S 10.0

static struct ct_model model;
static uint64_t slot_bytes, raw_bytes;
static uint64_t seed;

struct worker;

/* One asynchronous acquire in flight. */
struct op {
	struct worker *w;
	uint32_t l, e;
	bool release_in_cb;
	unsigned calls;
	int result;
	bool has_loc;
	struct ms_expert_loc loc;
	uint64_t wrong;      /* checked in the callback (release_in_cb) */
	double t_start;
	struct op *next;     /* on the worker's pending list, then done list */
};

struct counts {
	uint64_t ops, acquires, accepted, immediate, waits;
	uint64_t ok, busy, eio, other_err;
	uint64_t releases, released_in_cb;
	uint64_t prefetch_ok, prefetch_busy, prefetch_2big, prefetch_other;
	uint64_t cancel_calls, cancelled;
	uint64_t checks, stats, verified, wrong, not_pinned, doubles;
};

struct worker {
	int id;
	struct ms_cache *c;
	uint64_t rng, ops_target;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct op *pending;  /* issued, not answered (for the hang check) */
	struct op *done;     /* answered, not yet harvested */
	unsigned n_pending;
	struct {
		uint32_t l, e;
		struct ms_expert_loc loc;
	} held[16];
	unsigned n_held;
	_Atomic double wait_since; /* in acquire_wait since, or 0 */
	uint32_t *failed;    /* [entries]: times an acquire heard -EIO */
	struct counts n;
	char first_bad[320];
};

struct phase {
	const char *name;
	uint64_t ops;
	double max_s;        /* stop early after this long (a busy machine) */
	bool direct;
	struct ms_io_faults faults;
	uint64_t staging;    /* staging bytes, reads of 4 KiB; 0: none */
};

static atomic_bool stop_all;

static void note_bad(struct worker *w, const char *why)
{
	if (!w->first_bad[0])
		snprintf(w->first_bad, sizeof(w->first_bad), "%s", why);
}

static uint64_t verify(struct worker *w, uint32_t l, uint32_t e,
		       const struct ms_expert_loc *loc)
{
	char why[320];
	uint64_t n = ct_verify(&model, ms_cache_arena(w->c), l, e, loc, why,
			       sizeof(why));
	if (n)
		note_bad(w, why);
	return n;
}

static void op_cb(void *ctx, uint32_t layer, uint32_t expert, int result,
		  const struct ms_expert_loc *loc)
{
	struct op *o = ctx;
	struct worker *w = o->w;
	uint64_t wrong = 0;
	bool released = false;
	/* Callbacks may call back into the cache: check and release here. */
	if (!result && o->release_in_cb && loc && !o->calls) {
		wrong = ct_verify(&model, ms_cache_arena(w->c), layer, expert, loc,
				  NULL, 0);
		ms_cache_release(w->c, layer, expert);
		released = true;
	}
	pthread_mutex_lock(&w->mu);
	if (o->calls++) {
		w->n.doubles++;
		pthread_mutex_unlock(&w->mu);
		return;
	}
	o->result = result;
	o->has_loc = loc != NULL;
	if (loc)
		o->loc = *loc;
	o->wrong = wrong;
	o->release_in_cb = released;
	if (layer != o->l || expert != o->e)
		o->result = -ENOTRECOVERABLE; /* the wrong expert was answered */
	/* off the pending list, onto the done list */
	for (struct op **p = &w->pending; *p; p = &(*p)->next)
		if (*p == o) {
			*p = o->next;
			break;
		}
	o->next = w->done;
	w->done = o;
	w->n_pending--;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void count_result(struct worker *w, int rc, uint32_t l, uint32_t e)
{
	if (rc == 0)
		w->n.ok++;
	else if (rc == -EBUSY)
		w->n.busy++;
	else if (rc == -EIO) {
		w->n.eio++;
		w->failed[l * model.m->n_expert + e]++;
	} else {
		w->n.other_err++;
		char why[128];
		snprintf(why, sizeof(why), "acquire (%u, %u) answered %d (%s)", l, e, rc,
			 strerror(-rc));
		note_bad(w, why);
	}
}

static void got_pin(struct worker *w, uint32_t l, uint32_t e,
		    const struct ms_expert_loc *loc)
{
	w->n.verified++;
	w->n.wrong += verify(w, l, e, loc);
	w->held[w->n_held].l = l;
	w->held[w->n_held].e = e;
	w->held[w->n_held].loc = *loc;
	w->n_held++;
}

/* Takes the answered asynchronous acquires. */
static void harvest(struct worker *w)
{
	pthread_mutex_lock(&w->mu);
	struct op *d = w->done;
	w->done = NULL;
	pthread_mutex_unlock(&w->mu);
	while (d) {
		struct op *next = d->next;
		count_result(w, d->result, d->l, d->e);
		if (d->result == 0) {
			if (!d->has_loc)
				note_bad(w, "a successful callback without a location");
			if (d->release_in_cb) {
				w->n.verified++;
				w->n.wrong += d->wrong;
				w->n.released_in_cb++;
				if (d->wrong)
					note_bad(w, "wrong bytes seen in a callback");
			} else {
				got_pin(w, d->l, d->e, &d->loc);
			}
		}
		free(d);
		d = next;
	}
}

/* Waits for at least one answer; a hang is the main thread's to report. */
static void wait_answer(struct worker *w)
{
	pthread_mutex_lock(&w->mu);
	while (!w->done && w->n_pending) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&w->cv, &w->mu, &ts);
	}
	pthread_mutex_unlock(&w->mu);
	harvest(w);
}

static unsigned n_pending(struct worker *w)
{
	pthread_mutex_lock(&w->mu);
	unsigned n = w->n_pending;
	pthread_mutex_unlock(&w->mu);
	return n;
}

static void pick(struct worker *w, uint32_t *l, uint32_t *e)
{
	uint64_t r = t_rand(&w->rng);
	*l = (uint32_t)(r % model.m->n_layers);
	r >>= 8;
	*e = (uint32_t)(r % 2 ? (r >> 1) % 8 : (r >> 1) % model.m->n_expert);
}

static void do_release(struct worker *w, unsigned k)
{
	uint32_t l = w->held[k].l, e = w->held[k].e;
	uint32_t pins = 0;
	enum ms_entry_state s = ms_cache_state(w->c, l, e, &pins);
	if (s != MS_ENTRY_READY || pins < 1) {
		w->n.not_pinned++;
		char why[128];
		snprintf(why, sizeof(why),
			 "held (%u, %u) is state %d with %u pins before its release", l,
			 e, s, pins);
		note_bad(w, why);
	}
	/* the bytes of a pinned expert never change */
	w->n.verified++;
	w->n.wrong += verify(w, l, e, &w->held[k].loc);
	if (!(ct_sabotage() == 5 && w->id == 0 && w->n.releases == 999))
		ms_cache_release(w->c, l, e);
	w->n.releases++;
	w->n.ops++;
	w->held[k] = w->held[w->n_held - 1];
	w->n_held--;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ms_cache *c = w->c;
	while (w->n.ops < w->ops_target && !atomic_load(&stop_all)) {
		harvest(w);
		unsigned r = (unsigned)(t_rand(&w->rng) % 100);
		uint32_t l, e;
		pick(w, &l, &e);
		unsigned pending = n_pending(w);
		bool room = w->n_held + pending < MAX_PINS;
		if (r < 30 && room) {
			struct op *o = calloc(1, sizeof(*o));
			if (!o)
				t_fatal("out of memory");
			o->w = w;
			o->l = l;
			o->e = e;
			o->release_in_cb = t_rand(&w->rng) % 20 == 0;
			o->t_start = ct_now();
			/* on the pending list before the call: the callback may
			 * come before ms_cache_acquire returns */
			pthread_mutex_lock(&w->mu);
			o->next = w->pending;
			w->pending = o;
			w->n_pending++;
			pthread_mutex_unlock(&w->mu);
			struct ms_expert_loc loc;
			int rc = ms_cache_acquire(c, l, e, op_cb, o, &loc);
			w->n.acquires++;
			w->n.ops++;
			if (rc != -EINPROGRESS) {
				pthread_mutex_lock(&w->mu);
				bool called = o->calls > 0;
				if (!called) {
					for (struct op **p = &w->pending; *p; p = &(*p)->next)
						if (*p == o) {
							*p = o->next;
							break;
						}
					w->n_pending--;
				}
				pthread_mutex_unlock(&w->mu);
				if (called)
					note_bad(w, "a callback for an acquire that did "
						    "not answer -EINPROGRESS");
				if (rc == 0) {
					w->n.accepted++;
					w->n.immediate++;
					w->n.ok++;
					got_pin(w, l, e, &loc);
				} else {
					count_result(w, rc, l, e);
				}
				if (!called)
					free(o);
			} else {
				w->n.accepted++;
			}
		} else if (r < 40 && room) {
			struct ms_expert_loc loc;
			atomic_store(&w->wait_since, ct_now());
			int rc = ms_cache_acquire_wait(c, l, e, 0, &loc);
			atomic_store(&w->wait_since, 0.0);
			w->n.acquires++;
			w->n.waits++;
			w->n.ops++;
			if (rc != -EINVAL && rc != -ESHUTDOWN && rc != -ENOMEM)
				w->n.accepted++;
			count_result(w, rc, l, e);
			if (rc == 0)
				got_pin(w, l, e, &loc);
		} else if (r < 75) {
			if (w->n_held)
				do_release(w, (unsigned)(t_rand(&w->rng) % w->n_held));
			else if (pending)
				wait_answer(w);
		} else if (r < 87) {
			int rc = ms_cache_prefetch(c, l, e);
			w->n.ops++;
			if (rc == 0)
				w->n.prefetch_ok++;
			else if (rc == -EBUSY)
				w->n.prefetch_busy++;
			else if (rc == -E2BIG)
				w->n.prefetch_2big++;
			else
				w->n.prefetch_other++;
		} else if (r < 89) {
			w->n.cancelled += ms_cache_cancel_stale(c, l);
			w->n.cancel_calls++;
			w->n.ops++;
		} else if (r < 90 && t_rand(&w->rng) % 20 == 0) {
			/* a slow client: computes 25 ms with its pins held, so
			 * that the others run out of slots and some hear -EBUSY */
			ct_sleep_ms(25);
		} else if (r < 90) {
			struct ms_err err = { 0 };
			if (ms_cache_check(c, &err)) {
				char why[400];
				snprintf(why, sizeof(why), "ms_cache_check: %s", err.msg);
				note_bad(w, why);
				w->n.wrong++;
			}
			w->n.checks++;
		} else {
			struct ms_cache_stats st;
			ms_cache_get_stats(c, &st);
			if (st.held_bytes > st.budget_bytes)
				note_bad(w, "held_bytes over the budget");
			w->n.stats++;
		}
	}
	/* wind down: every answer in, every pin released */
	while (n_pending(w))
		wait_answer(w);
	harvest(w);
	while (w->n_held)
		do_release(w, w->n_held - 1);
	return NULL;
}

static void add_counts(struct counts *a, const struct counts *b)
{
	const uint64_t *s = (const uint64_t *)b;
	uint64_t *d = (uint64_t *)a;
	for (size_t i = 0; i < sizeof(*a) / sizeof(uint64_t); i++)
		d[i] += s[i];
}

static uint64_t hist_sum(const struct ms_cache_stats *st)
{
	uint64_t n = 0;
	for (int i = 0; i < 24; i++)
		n += st->lat_us_hist[i];
	return n;
}

static void run_phase(const struct phase *ph)
{
	printf("-- %s: %llu operations, %d threads, %s%s%s\n", ph->name,
	       (unsigned long long)ph->ops, N_THREADS,
	       ph->direct ? "O_DIRECT" : "page cache",
	       ph->faults.eio_ppm ? ", faults on" : "",
	       ph->staging ? ", staging buffers" : "");
	int failures0 = t_failures;
	struct ms_cache_config cfg;
	ct_config(&cfg, N_SLOTS * slot_bytes + ph->staging, TIMEOUT_MS);
	cfg.io.threads = 2;
	cfg.io.queue_depth = 8;
	if (ph->staging) {
		cfg.staging = ph->staging;
		cfg.io.request_size = MS_IO_ALIGN;
	}
	cfg.io.direct = ph->direct ? MS_IO_DIRECT_ON : MS_IO_DIRECT_OFF;
	cfg.io.faults = ph->faults;
	cfg.max_prefetch_bytes = 4 * raw_bytes;
	struct ms_err err = { 0 };
	struct ms_cache *c;
	if (ms_cache_init(&c, model.m, &cfg, &err))
		t_fatal("ms_cache_init: %s", err.msg);
	struct ms_cache_stats st;
	ms_cache_get_stats(c, &st);
	if (st.slots != N_SLOTS)
		t_fatal("%llu slots, expected %d", (unsigned long long)st.slots, N_SLOTS);
	struct ms_read_info ri;
	ms_cache_get_read_info(c, &ri);
	T_CHECK(ph->staging ? ri.path == MS_READ_STAGING && ri.staging_bytes == ph->staging
			    : ri.path != MS_READ_STAGING,
		"%s: read path %s with %llu staging bytes: %s", ph->name,
		ms_read_path_name(ri.path), (unsigned long long)ri.staging_bytes,
		ri.line);

	uint32_t n_entries = model.m->n_layers * model.m->n_expert;
	struct worker w[N_THREADS];
	pthread_t th[N_THREADS];
	memset(w, 0, sizeof(w));
	atomic_store(&stop_all, false);
	double t0 = ct_now();
	for (int i = 0; i < N_THREADS; i++) {
		w[i].id = i;
		w[i].c = c;
		w[i].rng = seed * 31 + (uint64_t)i * 0x1234567;
		w[i].ops_target = ph->ops / N_THREADS;
		w[i].failed = calloc(n_entries, sizeof(*w[i].failed));
		if (!w[i].failed)
			t_fatal("out of memory");
		pthread_mutex_init(&w[i].mu, NULL);
		pthread_cond_init(&w[i].cv, NULL);
		if (pthread_create(&th[i], NULL, worker_main, &w[i]))
			t_fatal("pthread_create");
	}

	/* watch: stats often, hung acquires */
	uint64_t samples = 0, over_budget = 0, over_slots = 0;
	bool hung = false, joined[N_THREADS] = { false };
	for (;;) {
		bool running = false;
		for (int i = 0; i < N_THREADS; i++) {
			if (!joined[i])
				joined[i] = pthread_tryjoin_np(th[i], NULL) == 0;
			running |= !joined[i];
		}
		ms_cache_get_stats(c, &st);
		samples++;
		over_budget += st.held_bytes > st.budget_bytes;
		over_slots += st.ready_entries + st.loading_entries > st.slots;
		double now = ct_now();
		for (int i = 0; i < N_THREADS && !hung; i++) {
			double ws = atomic_load(&w[i].wait_since);
			if (ws > 0 && now - ws > HUNG_S) {
				t_fail_at(__FILE__, __LINE__,
					  "%s: thread %d has been in acquire_wait for %.1f "
					  "s: hung", ph->name, i, now - ws);
				hung = true;
			}
			pthread_mutex_lock(&w[i].mu);
			for (struct op *o = w[i].pending; o && !hung; o = o->next)
				if (now - o->t_start > HUNG_S) {
					t_fail_at(__FILE__, __LINE__,
						  "%s: thread %d's acquire of (%u, %u) "
						  "unanswered for %.1f s: hung",
						  ph->name, i, o->l, o->e, now - o->t_start);
					hung = true;
				}
			pthread_mutex_unlock(&w[i].mu);
		}
		if (hung) {
			struct ms_err e2 = { 0 };
			int rc = ms_cache_check(c, &e2);
			fprintf(stderr, "ms_cache_check: %d %s\n", rc, e2.msg);
			fflush(stdout);
			_exit(T_FAIL); /* a hung cache cannot be freed */
		}
		if (!running)
			break;
		if (!atomic_load(&stop_all) && now - t0 > ph->max_s) {
			printf("%s: stopping after %.0f s (the time cap)\n", ph->name,
			       ph->max_s);
			atomic_store(&stop_all, true);
		}
		ct_sleep_ms(2);
	}
	/* threads were joined by tryjoin as they finished */
	double dt = ct_now() - t0;
	T_CHECK(ct_wait_quiet(c, HUNG_S), "%s: loads still in flight %.0f s after the "
		"threads finished", ph->name, HUNG_S);

	struct counts n = { 0 };
	for (int i = 0; i < N_THREADS; i++) {
		add_counts(&n, &w[i].n);
		if (w[i].first_bad[0])
			t_fail_at(__FILE__, __LINE__, "%s: thread %d: %s", ph->name, i,
				  w[i].first_bad);
	}
	ms_cache_get_stats(c, &st);
	printf("%s: %llu operations in %.1f s = %.0f ops/s; %llu stats samples\n",
	       ph->name, (unsigned long long)n.ops, dt, (double)n.ops / dt,
	       (unsigned long long)samples);
	printf("threads: %llu acquires (%llu waits), %llu ok (%llu at once, %llu "
	       "released in the callback), %llu -EBUSY, %llu -EIO, %llu releases; "
	       "prefetch %llu ok / %llu -EBUSY / %llu -E2BIG; cancel_stale %llu calls "
	       "= %llu cancelled; %llu checks; %llu experts verified\n",
	       (unsigned long long)n.acquires, (unsigned long long)n.waits,
	       (unsigned long long)n.ok, (unsigned long long)n.immediate,
	       (unsigned long long)n.released_in_cb, (unsigned long long)n.busy,
	       (unsigned long long)n.eio, (unsigned long long)n.releases,
	       (unsigned long long)n.prefetch_ok, (unsigned long long)n.prefetch_busy,
	       (unsigned long long)n.prefetch_2big, (unsigned long long)n.cancel_calls,
	       (unsigned long long)n.cancelled, (unsigned long long)n.checks,
	       (unsigned long long)n.verified);
	printf("cache: hits %llu misses %llu evictions %llu loads %llu failures %llu "
	       "busy %llu bytes_read %llu prefetch issued %llu used %llu cancelled "
	       "%llu wasted %llu B; ready %llu pinned %llu held %llu of %llu B\n",
	       (unsigned long long)st.hits, (unsigned long long)st.misses,
	       (unsigned long long)st.evictions, (unsigned long long)st.loads,
	       (unsigned long long)st.load_failures, (unsigned long long)st.busy,
	       (unsigned long long)st.bytes_read,
	       (unsigned long long)st.prefetch_issued,
	       (unsigned long long)st.prefetch_used,
	       (unsigned long long)st.prefetch_cancelled,
	       (unsigned long long)st.prefetch_wasted_bytes,
	       (unsigned long long)st.ready_entries,
	       (unsigned long long)st.pinned_entries, (unsigned long long)st.held_bytes,
	       (unsigned long long)st.budget_bytes);

	/* invariants over the run */
	T_EQ_U64(over_budget, 0);
	T_EQ_U64(over_slots, 0);
	T_EQ_U64(n.wrong, 0);
	T_EQ_U64(n.not_pinned, 0);
	T_EQ_U64(n.doubles, 0);
	T_EQ_U64(n.other_err, 0);
	T_EQ_U64(n.prefetch_other, 0);
	CT_CACHE_OK(c, ph->name);
	/* the counters add up */
	T_EQ_U64(st.pinned_entries, 0);
	T_EQ_U64(st.loading_entries, 0);
	T_EQ_U64(st.held_bytes, st.ready_entries * slot_bytes);
	T_EQ_U64(st.busy, n.busy + (ct_sabotage() == 4));
	T_CHECK(st.hits >= n.immediate, "hits %llu < %llu answered 0 at once",
		(unsigned long long)st.hits, (unsigned long long)n.immediate);
	T_CHECK(st.hits + st.misses == n.accepted,
		"%s: hits + misses = %llu, but %llu acquires were accepted (answered 0 "
		"or -EINPROGRESS): %lld not counted",
		ph->name, (unsigned long long)(st.hits + st.misses),
		(unsigned long long)n.accepted,
		(long long)(n.accepted - st.hits - st.misses));
	uint64_t good = st.loads - st.load_failures - st.prefetch_cancelled;
	T_EQ_U64(st.bytes_read, good * raw_bytes);
	/* staged: every byte of every good load came through a copy (widened,
	 * so at least the experts' bytes), and some of the failed ones' */
	if (ph->staging)
		T_CHECK(st.bytes_copied >= st.bytes_read && st.copy_ns > 0,
			"%s: %llu bytes copied in %llu ns, %llu bytes loaded", ph->name,
			(unsigned long long)st.bytes_copied,
			(unsigned long long)st.copy_ns, (unsigned long long)st.bytes_read);
	else
		T_EQ_U64(st.bytes_copied, 0);
	T_EQ_U64(st.ready_entries, good - st.evictions);
	T_EQ_U64(hist_sum(&st), st.loads);
	T_CHECK(st.prefetch_used <= st.prefetch_issued, "prefetch used %llu > issued",
		(unsigned long long)st.prefetch_used);
	/* -EBUSY needs a slow client at the wrong moment: demanded of the long
	 * phase only, whose million operations make hundreds of them */
	T_CHECK(st.evictions > 1000 && (st.busy > 0 || ph->ops < 1000000) &&
			st.prefetch_issued > 0 && n.cancelled > 0,
		"%s: the run did not exercise eviction, -EBUSY, prefetch and cancel",
		ph->name);
	if (ph->faults.eio_ppm) {
		T_CHECK(st.load_failures > 0 && n.eio > 0,
			"faults: %llu load failures, %llu -EIO answers",
			(unsigned long long)st.load_failures, (unsigned long long)n.eio);
		T_CHECK(st.prefetch_cancelled <= n.cancelled,
			"prefetch_cancelled %llu > %llu cancelled",
			(unsigned long long)st.prefetch_cancelled,
			(unsigned long long)n.cancelled);
		/* every expert that failed loads again */
		unsigned n_failed = 0, recovered = 0;
		for (uint32_t i = 0; i < n_entries; i++) {
			uint32_t f = 0;
			for (int k = 0; k < N_THREADS; k++)
				f += w[k].failed[i];
			if (!f)
				continue;
			n_failed++;
			uint32_t l = i / model.m->n_expert, e = i % model.m->n_expert;
			for (int tries = 0; tries < 50; tries++) {
				struct ms_expert_loc loc;
				int rc = ms_cache_acquire_wait(c, l, e, 0, &loc);
				if (rc == 0) {
					char why[320];
					if (ct_verify(&model, ms_cache_arena(c), l, e, &loc, why,
						      sizeof(why)))
						t_fail_at(__FILE__, __LINE__,
							  "after failure: %s", why);
					ms_cache_release(c, l, e);
					recovered++;
					break;
				}
				T_CHECK(rc == -EIO, "retrying (%u, %u): %d", l, e, rc);
			}
		}
		printf("faults: %u experts failed at least once; %u of them loaded "
		       "fine later\n", n_failed, recovered);
		T_EQ_U64(recovered, n_failed);
		CT_CACHE_OK(c, "after the retries");
	} else {
		T_EQ_U64(st.load_failures, 0);
		T_EQ_U64(n.eio, 0);
		T_EQ_U64(st.prefetch_cancelled, n.cancelled);
	}
	ms_cache_free(c);
	for (int i = 0; i < N_THREADS; i++) {
		free(w[i].failed);
		pthread_mutex_destroy(&w[i].mu);
		pthread_cond_destroy(&w[i].cv);
	}
	printf("%s: %s\n", ph->name, t_failures == failures0 ? "ok" : "FAILED");
}

int main(int argc, char **argv)
{
	seed = t_seed();
	setvbuf(stdout, NULL, _IOLBF, 0);
	double scale = 1;
	const char *s = getenv("MS_STRESS_OPS");
	if (s && *s)
		scale = atof(s);
	char path[512];
	snprintf(path, sizeof(path), "%s/stress.gguf", t_tmpdir());
	ct_mkmodel("--layers 5 --experts 32 --used 4 --embd 64 --ff 32 --vocab 256 "
		   "--types q8_0,q8_0,q8_0",
		   path);
	ct_model_open(&model, path);
	raw_bytes = model.m->layers[0].expert_bytes;
	slot_bytes = ct_slot_bytes(model.m, 0);
	for (uint32_t l = 1; l < model.m->n_layers; l++)
		if (ct_slot_bytes(model.m, l) != slot_bytes)
			t_fatal("layers differ in slot size");
	printf("model: %u layers x %u experts of %llu B, %llu B slots; cache %d "
	       "slots\n",
	       model.m->n_layers, model.m->n_expert, (unsigned long long)raw_bytes,
	       (unsigned long long)slot_bytes, N_SLOTS);
	uint64_t fseed = seed ^ 0xfa17;
	struct phase phases[] = {
		{ "plain", (uint64_t)(1000000 * scale), 35, false, { 0 }, 0 },
		{ "direct", (uint64_t)(100000 * scale), 10, true, { 0 }, 0 },
		{ "faults", (uint64_t)(200000 * scale), 12, true,
		  { .short_ppm = 30000, .eagain_ppm = 30000, .eintr_ppm = 30000,
		    .eio_ppm = 10000, .seed = fseed }, 0 },
		{ "staging", (uint64_t)(100000 * scale), 10, true,
		  { .short_ppm = 30000, .eagain_ppm = 30000, .eintr_ppm = 30000,
		    .eio_ppm = 10000, .seed = fseed + 1 },
		  3 * MS_IO_ALIGN },
	};
	/* A load that fails is logged once: keep the log short. */
	for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]); i++) {
		if (!t_part_wanted(phases[i].name, argc, argv))
			continue;
		if (phases[i].faults.eio_ppm)
			ms_log_threshold = MS_LOG_ERR;
		ct_watchdog(300, phases[i].name);
		run_phase(&phases[i]);
		ct_watchdog(0, NULL);
		ms_log_threshold = MS_LOG_NOTICE;
	}
	ct_model_close(&model);
	return t_done();
}
