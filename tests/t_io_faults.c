/*
 * t_io_faults - the I/O engine under injected faults and cancellations:
 * zero wrong bytes, zero hung loads, every load completes exactly once,
 * failed loads report their error, and the engine's counters add up.
 *
 * The engine's test-only injector (struct ms_io_faults) turns completed
 * chunks into short reads, -EAGAIN, -EINTR or -EIO at the configured rates.
 * On two offset-stamped files (iotest.h), for io_uring and preadv, O_DIRECT
 * (auto) and buffered, with 2 threads, depth 8 and 16K requests (so that a
 * request has many chunks to fault), thousands of requests of 1 to 3
 * extents stream through a pool of destination slots; a second thread picks
 * live requests at random every few tens of microseconds and cancels them
 * (sometimes promotes a prefetch instead, sometimes tries a demand one).
 * For each request:
 *
 *   - exactly one callback (a second one, or none within 30 s, fails);
 *   - result 0: every byte of every extent (widened bytes included, zeros
 *     past EOF) is the file's; -EIO only when EIO is injected; -ECANCELED
 *     only when an ms_io_cancel of it returned 0; nothing else;
 *   - ms_io_cancel of a demand request (or a promoted one) is -ENOENT, and
 *     a request is never both cancelled and promoted;
 *   - the poisoned guards between its destinations are untouched, failed or
 *     not, and the slot is reused only after the callback: a read landing
 *     after its request's callback shows up as wrong bytes in the next one.
 *
 * After the drain: submitted = completed per class (promotions move a
 * request from prefetch to demand), cancelled = the cancels that returned 0,
 * failed = the -EIO results of requests not cancelled, nothing queued or in
 * flight; short_reads > 0 and retries > 0 when those faults were injected.
 * A control run with every rate 0 must read everything with no retry.
 *
 * Then ms_io_free with a backlog: prefetches still queued are cancelled
 * (-ECANCELED, once each), demand requests finish with the right bytes, and
 * every callback has come when ms_io_free returns.
 *
 * MS_IOT_SABOTAGE=1 injects 1% EIO into the run that expects none;
 * MS_IOT_SABOTAGE=2 flips a byte of a completed destination: either must
 * fail the test.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iotest.h"
#include "testutil.h"

#define FILE_SIZE ((48ull << 20) + 777)
#define FILE1_SIZE ((8ull << 20) + 123)   /* a second file, tag 1 */
static const uint64_t file_size[2] = { FILE_SIZE, FILE1_SIZE };
#define SLOT_SIZE (512u << 10)
#define N_SLOTS 48
#define MEM_SIZE ((size_t)SLOT_SIZE * N_SLOTS)
#define N_REQ 2000
#define MAX_X 3

struct ext {
	uint32_t file;
	uint64_t aoff, alen;  /* what is read */
	uint64_t dst;         /* offset in mem */
};

struct req {
	struct ext x[MAX_X];
	unsigned n;
	unsigned slot;
	enum ms_io_class cls;
	uint64_t id;
	bool submitted;
	/* written by the cancel thread under live_mu, read after removal */
	unsigned cancel_ok, promote_ok, cancel_tries;
	int cancel_bad;       /* an ms_io_cancel answer that is not 0/-ENOENT */
};

static struct req reqs[N_REQ];
static uint64_t rng;
static uint8_t *mem;

static uint64_t rnd(uint64_t n)
{
	return n ? t_rand(&rng) % n : 0;
}

/* ---- the cancel thread --------------------------------------------------- */

static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned live[N_REQ], n_live;
static unsigned live_pos[N_REQ];
static atomic_bool cancel_stop;
static struct ms_io *cur_io;
static unsigned cancel_gap_us;

static void live_add(unsigned r)
{
	pthread_mutex_lock(&live_mu);
	live_pos[r] = n_live;
	live[n_live++] = r;
	pthread_mutex_unlock(&live_mu);
}

/* After this returns, the cancel thread no longer touches request r. */
static void live_del(unsigned r)
{
	pthread_mutex_lock(&live_mu);
	unsigned p = live_pos[r], last = live[--n_live];
	live[p] = last;
	live_pos[last] = p;
	pthread_mutex_unlock(&live_mu);
}

/* The lock is held across ms_io_cancel / ms_io_promote so that the request's
 * record is stable once the main thread has removed it from the table. The
 * engine may run the callback from inside ms_io_cancel: it only takes the
 * tracker's lock, never live_mu. */
static void *cancel_main(void *arg)
{
	uint64_t s = *(uint64_t *)arg;
	while (!atomic_load(&cancel_stop)) {
		long us = (long)(t_rand(&s) % (2 * cancel_gap_us + 1));
		struct timespec ts = { 0, 1000 * us };
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&live_mu);
		if (n_live) {
			struct req *q = &reqs[live[t_rand(&s) % n_live]];
			unsigned k = (unsigned)(t_rand(&s) % 100);
			if (k < 85) {
				int rc = ms_io_cancel(cur_io, q->id);
				q->cancel_tries++;
				if (rc == 0)
					q->cancel_ok++;
				else if (rc != -ENOENT)
					q->cancel_bad = rc;
			} else {
				int rc = ms_io_promote(cur_io, q->id);
				if (rc == 0)
					q->promote_ok++;
				else if (rc != -ENOENT)
					q->cancel_bad = rc;
			}
		}
		pthread_mutex_unlock(&live_mu);
	}
	return NULL;
}

/* ---- one streaming run --------------------------------------------------- */

struct run {
	const char *name;
	enum ms_io_engine engine;
	enum ms_io_direct direct;
	struct ms_io_faults faults;
	bool cancels;
	unsigned n_req;
	/* results */
	unsigned ok, eio, ecanceled, promoted, cancel_calls;
	uint64_t wrong, guard;
	struct ms_io_stats st;
	double s;
	char mode[32];
};

static void gen_req(struct req *q, unsigned slot, bool direct)
{
	memset(q, 0, sizeof(*q));
	q->slot = slot;
	q->n = 1 + (unsigned)rnd(MAX_X);
	q->cls = rnd(3) == 0 ? MS_IO_DEMAND : MS_IO_PREFETCH;
	uint64_t at = (uint64_t)slot * SLOT_SIZE;
	uint64_t end = at + SLOT_SIZE;
	for (unsigned i = 0; i < q->n; i++) {
		struct ext *e = &q->x[i];
		e->file = rnd(5) == 0;
		uint64_t fs = file_size[e->file];
		uint64_t len = 1 + rnd(rnd(4) ? 48 << 10 : 160 << 10);
		uint64_t off = rnd(20) ? rnd(fs - len + 1)
				       : fs - len - rnd(len < 5000 ? 2 : 5000);
		uint64_t skip;
		bool widen = direct || rnd(2);
		if (widen) {
			ms_io_widen(off, len, &e->aoff, &e->alen, &skip);
			e->dst = (at + MS_IO_ALIGN - 1) & ~(uint64_t)(MS_IO_ALIGN - 1);
		} else {
			e->aoff = off;
			e->alen = len;
			e->dst = at + rnd(64);
		}
		if (e->dst + e->alen + 1 > end) {
			q->n = i; /* the slot is full */
			break;
		}
		at = e->dst + e->alen + 1 + rnd(256);
	}
	if (!q->n) { /* always room for one small extent */
		q->n = 1;
		q->x[0].file = 0;
		q->x[0].aoff = rnd(FILE_SIZE / MS_IO_ALIGN) * MS_IO_ALIGN;
		q->x[0].alen = MS_IO_ALIGN;
		q->x[0].dst = (uint64_t)slot * SLOT_SIZE;
	}
}

static const uint8_t POISON = 0xC3;

static bool faults_any(const struct ms_io_faults *f)
{
	return f->short_ppm || f->eagain_ppm || f->eintr_ppm || f->eio_ppm;
}

/* Checks one completed request; frees nothing. */
static void check_req(struct run *run, struct iot_track *tr, unsigned r,
		      bool eio_on)
{
	struct req *q = &reqs[r];
	struct iot_slot *s = &tr->slot[r];
	T_CHECK(s->calls == 1, "%s: request %u: %u callbacks", run->name, r,
		s->calls);
	T_CHECK(s->id == q->id, "%s: request %u: callback id %llu, submit said "
		"%llu", run->name, r, (unsigned long long)s->id,
		(unsigned long long)q->id);
	T_CHECK(!q->cancel_bad, "%s: request %u: cancel/promote answered %d",
		run->name, r, q->cancel_bad);
	T_CHECK(!(q->cancel_ok && q->promote_ok), "%s: request %u cancelled "
		"and promoted", run->name, r);
	T_CHECK(q->cancel_ok <= 1, "%s: request %u: cancel returned 0 %u "
		"times", run->name, r, q->cancel_ok);
	if (q->cls == MS_IO_DEMAND)
		T_CHECK(!q->cancel_ok, "%s: demand request %u: ms_io_cancel "
			"returned 0", run->name, r);
	if (q->cancel_ok)
		run->cancel_calls++;
	if (q->promote_ok)
		run->promoted++;
	int res = s->result;
	if (res == 0) {
		run->ok++;
		if (iot_sabotage() == 2 && run->ok == 7)
			mem[q->x[0].dst] ^= 0x10;
		for (unsigned i = 0; i < q->n; i++) {
			const struct ext *e = &q->x[i];
			uint64_t first;
			uint64_t bad = iot_verify(mem + e->dst, e->aoff, e->alen,
						  file_size[e->file],
						  (uint16_t)e->file, &first);
			if (bad) {
				run->wrong += bad;
				T_CHECK(0, "%s: request %u (%s%s) extent %u, file %u "
					"[%llu +%llu): "
					"%llu wrong bytes, first at file offset %llu: "
					"0x%02x, expected 0x%02x", run->name, r,
					q->cls ? "prefetch" : "demand",
					q->cancel_ok ? ", cancelled" : "", i, e->file,
					(unsigned long long)e->aoff,
					(unsigned long long)e->alen,
					(unsigned long long)bad,
					(unsigned long long)(e->aoff + first),
					mem[e->dst + first],
					iot_tbyte(e->aoff + first, file_size[e->file],
						  (uint16_t)e->file));
			}
		}
	} else if (res == -EIO) {
		run->eio++;
		T_CHECK(eio_on, "%s: request %u (%s): -EIO with no EIO injected",
			run->name, r, q->cls ? "prefetch" : "demand");
	} else if (res == -ECANCELED) {
		run->ecanceled++;
		T_CHECK(q->cancel_ok, "%s: request %u: -ECANCELED, but no cancel "
			"of it succeeded", run->name, r);
	} else {
		T_CHECK(0, "%s: request %u: result %d (%s)", run->name, r, res,
			strerror(-res));
	}
	/* guards: the slot outside the extents still holds the poison */
	uint64_t at = (uint64_t)q->slot * SLOT_SIZE;
	for (unsigned i = 0; i <= q->n; i++) {
		uint64_t to = i < q->n ? q->x[i].dst : (uint64_t)(q->slot + 1) * SLOT_SIZE;
		uint64_t first, bad = iot_verify_poison(mem + at, to - at, POISON,
							&first);
		if (bad) {
			run->guard += bad;
			T_CHECK(0, "%s: request %u (result %d): %llu bytes written "
				"outside its extents, first at mem+%llu", run->name,
				r, res, (unsigned long long)bad,
				(unsigned long long)(at + first));
		}
		if (i < q->n)
			at = q->x[i].dst + q->x[i].alen;
	}
}

static void run_stream(struct run *run, const char *const *paths,
		       uint64_t seed)
{
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = run->engine;
	cfg.direct = run->direct;
	cfg.threads = 2;
	cfg.queue_depth = 8;
	cfg.request_size = 16 << 10;
	cfg.faults = run->faults;
	cfg.faults.seed = seed;
	bool eio_on = run->faults.eio_ppm > 0;
	if (iot_sabotage() == 1 && !eio_on && run->faults.short_ppm) {
		fprintf(stderr, "(sabotage: %s injects EIO the test does not "
			"expect)\n", run->name);
		cfg.faults.eio_ppm = 10000;
	}
	rng = seed;

	iot_watchdog(60, run->name);
	double t0 = iot_now();
	struct ms_io *io;
	struct ms_err err = { 0 };
	int rc = ms_io_init(&io, &cfg, paths, 2, mem, MEM_SIZE, &err);
	if (rc && cfg.engine == MS_IO_ENGINE_URING &&
	    (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)) {
		printf("%s: io_uring unavailable (%s): skipped\n", run->name,
		       err.msg);
		snprintf(run->mode, sizeof(run->mode), "skipped");
		return;
	}
	if (rc)
		t_fatal("%s: ms_io_init: %d %s", run->name, rc, err.msg);
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	snprintf(run->mode, sizeof(run->mode), "%s,%s",
		 iot_engine_name(mode.engine), mode.direct ? "direct" : "buffered");

	struct iot_track *tr = iot_track_new(run->n_req);
	cur_io = io;
	atomic_store(&cancel_stop, false);
	pthread_t canceller;
	uint64_t cseed = seed ^ 0x5bd1e995u;
	if (run->cancels && pthread_create(&canceller, NULL, cancel_main, &cseed))
		t_fatal("cannot start the cancel thread");

	unsigned free_slots[N_SLOTS], n_free = N_SLOTS, next = 0, seen = 0;
	uint64_t n_cls[2] = { 0, 0 };
	for (unsigned i = 0; i < N_SLOTS; i++)
		free_slots[i] = i;
	memset(mem, POISON, MEM_SIZE);
	while (seen < run->n_req) {
		while (next < run->n_req && n_free) {
			unsigned r = next++, slot = free_slots[--n_free];
			struct req *q = &reqs[r];
			gen_req(q, slot, mode.direct);
			struct ms_io_extent x[MAX_X];
			for (unsigned i = 0; i < q->n; i++) {
				x[i].file = q->x[i].file;
				x[i].offset = q->x[i].aoff;
				x[i].len = q->x[i].alen;
				x[i].dst = mem + q->x[i].dst;
			}
			rc = ms_io_submit(io, x, q->n, q->cls, iot_track_cb,
					  &tr->slot[r], &q->id);
			if (rc) {
				T_CHECK(0, "%s: submit request %u: %d", run->name, r,
					rc);
				iot_track_cb(&tr->slot[r], 0, rc);
				continue;
			}
			q->submitted = true;
			n_cls[q->cls]++;
			if (run->cancels)
				live_add(r);
		}
		int r = iot_track_pop(tr, 30);
		if (r < 0) {
			for (unsigned i = 0; i < next; i++)
				if (!tr->slot[i].calls)
					fprintf(stderr, "%s: request %u (id %llu, %s, "
						"cancelled %u, promoted %u) never "
						"completed\n", run->name, i,
						(unsigned long long)reqs[i].id,
						reqs[i].cls ? "prefetch" : "demand",
						reqs[i].cancel_ok, reqs[i].promote_ok);
			t_fatal("%s: %u requests hung", run->name, next - seen);
		}
		seen++;
		iot_watchdog(60, run->name);
		struct req *q = &reqs[r];
		if (q->submitted && run->cancels)
			live_del((unsigned)r);
		if (q->submitted)
			check_req(run, tr, (unsigned)r, eio_on);
		memset(mem + (size_t)q->slot * SLOT_SIZE, POISON, SLOT_SIZE);
		free_slots[n_free++] = q->slot;
	}
	atomic_store(&cancel_stop, true);
	if (run->cancels)
		pthread_join(canceller, NULL);
	ms_io_get_stats(io, &run->st);
	ms_io_free(io);
	cur_io = NULL;
	run->s = iot_now() - t0;
	T_CHECK(tr->doubles == 0, "%s: %u second callbacks", run->name,
		tr->doubles);

	/* The counters add up. */
	const struct ms_io_stats *st = &run->st;
	unsigned n_eio_plain = 0;
	for (unsigned r = 0; r < run->n_req; r++)
		if (tr->slot[r].result == -EIO && !reqs[r].cancel_ok)
			n_eio_plain++;
	T_EQ_U64(st->submitted[MS_IO_DEMAND], n_cls[MS_IO_DEMAND] + run->promoted);
	T_EQ_U64(st->submitted[MS_IO_PREFETCH], n_cls[MS_IO_PREFETCH] - run->promoted);
	for (int c = 0; c < MS_IO_N_CLASSES; c++) {
		T_CHECK(st->submitted[c] == st->completed[c], "%s: class %d: "
			"submitted %llu, completed %llu", run->name, c,
			(unsigned long long)st->submitted[c],
			(unsigned long long)st->completed[c]);
		T_EQ_U64(st->queued_bytes[c], 0);
		T_EQ_U64(st->inflight_bytes[c], 0);
	}
	T_CHECK(st->cancelled == run->cancel_calls, "%s: stats.cancelled %llu, "
		"%u cancels returned 0", run->name,
		(unsigned long long)st->cancelled, run->cancel_calls);
	T_CHECK(st->failed == n_eio_plain, "%s: stats.failed %llu, %u requests "
		"failed with -EIO uncancelled", run->name,
		(unsigned long long)st->failed, n_eio_plain);
	if (run->faults.short_ppm)
		T_CHECK(st->short_reads > 0, "%s: short reads injected, "
			"stats.short_reads = 0", run->name);
	if (run->faults.eagain_ppm || run->faults.eintr_ppm)
		T_CHECK(st->retries > 0, "%s: EAGAIN/EINTR injected, "
			"stats.retries = 0", run->name);
	if (!faults_any(&run->faults) && !run->cancels) {
		T_EQ_U64(st->retries, 0);
		T_EQ_U64(st->short_reads, 0);
		T_EQ_U64(run->ok, run->n_req);
	}
	if (eio_on)
		T_CHECK(run->eio > 0, "%s: EIO injected, no request failed",
			run->name);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- ms_io_free with a backlog ------------------------------------------- *
 *
 * 8 demand requests of 1.5 MB in 4K chunks go first (3072 reads), then 40
 * prefetches of 256K: the prefetches cannot start before every demand chunk
 * has been taken, and ms_io_free comes right after the last submit. */

#define FREE_DEMAND 8
#define FREE_PREFETCH 40
#define FREE_DLEN (1536u << 10)
#define FREE_PLEN (256u << 10)

static void run_free(enum ms_io_engine engine, enum ms_io_direct direct,
		     const char *path, uint64_t seed)
{
	char name[64];
	snprintf(name, sizeof(name), "free-backlog %s %s", iot_engine_name(engine),
		 direct == MS_IO_DIRECT_OFF ? "buffered" : "direct");
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = engine;
	cfg.direct = direct;
	cfg.threads = 1;
	cfg.queue_depth = 2;
	cfg.request_size = 4096;
	cfg.faults.short_ppm = 50000;
	cfg.faults.eagain_ppm = 20000;
	cfg.faults.eintr_ppm = 20000;
	cfg.faults.seed = seed;
	rng = seed ^ 0xf7ee;

	iot_watchdog(60, name);
	struct ms_io *io;
	struct ms_err err = { 0 };
	const char *paths[] = { path };
	int rc = ms_io_init(&io, &cfg, paths, 1, mem, MEM_SIZE, &err);
	if (rc && engine == MS_IO_ENGINE_URING &&
	    (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)) {
		printf("%s: io_uring unavailable: skipped\n", name);
		return;
	}
	if (rc)
		t_fatal("%s: ms_io_init: %d %s", name, rc, err.msg);
	const unsigned n = FREE_DEMAND + FREE_PREFETCH;
	struct iot_track *tr = iot_track_new(n);
	memset(mem, POISON, MEM_SIZE);
	for (unsigned r = 0; r < n; r++) {
		struct req *q = &reqs[r];
		memset(q, 0, sizeof(*q));
		bool d = r < FREE_DEMAND;
		q->cls = d ? MS_IO_DEMAND : MS_IO_PREFETCH;
		q->n = 1;
		q->x[0].alen = d ? FREE_DLEN : FREE_PLEN;
		q->x[0].aoff = rnd((FILE_SIZE - q->x[0].alen) / MS_IO_ALIGN) *
			       MS_IO_ALIGN;
		q->x[0].dst = d ? (uint64_t)r * FREE_DLEN
				: (uint64_t)FREE_DEMAND * FREE_DLEN +
				  (uint64_t)(r - FREE_DEMAND) * FREE_PLEN;
		struct ms_io_extent x = { 0, q->x[0].aoff, q->x[0].alen,
					  mem + q->x[0].dst };
		rc = ms_io_submit(io, &x, 1, q->cls, iot_track_cb, &tr->slot[r],
				  &q->id);
		T_CHECK(rc == 0, "%s: submit %u: %d", name, r, rc);
		q->submitted = rc == 0;
	}
	ms_io_free(io);
	unsigned done = tr->done, ok = 0, canc = 0;
	uint64_t wrong = 0;
	T_CHECK(done == n, "%s: %u of %u callbacks when ms_io_free returned",
		name, done, n);
	for (unsigned r = 0; r < n; r++) {
		struct req *q = &reqs[r];
		struct iot_slot *s = &tr->slot[r];
		if (!q->submitted)
			continue;
		T_CHECK(s->calls == 1, "%s: request %u: %u callbacks", name, r,
			s->calls);
		if (q->cls == MS_IO_DEMAND)
			T_CHECK(s->result == 0, "%s: demand request %u: %d", name, r,
				s->result);
		else
			T_CHECK(s->result == 0 || s->result == -ECANCELED,
				"%s: prefetch %u: %d", name, r, s->result);
		if (s->result == 0) {
			uint64_t first, bad = iot_verify(mem + q->x[0].dst,
							 q->x[0].aoff, q->x[0].alen,
							 FILE_SIZE, 0, &first);
			T_CHECK(!bad, "%s: request %u: %llu wrong bytes, first at "
				"file offset %llu", name, r, (unsigned long long)bad,
				(unsigned long long)(q->x[0].aoff + first));
			wrong += bad;
		}
		ok += s->result == 0;
		canc += s->result == -ECANCELED;
	}
	T_CHECK(tr->doubles == 0, "%s: %u second callbacks", name, tr->doubles);
	T_CHECK(canc > 0, "%s: no queued prefetch was cancelled", name);
	printf("%-30s %u demand + %u prefetch: %u completed, %u cancelled, "
	       "%llu wrong bytes\n", name, FREE_DEMAND, FREE_PREFETCH, ok, canc,
	       (unsigned long long)wrong);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

int main(void)
{
	uint64_t seed = t_seed();
	const char *paths[2];
	for (unsigned i = 0; i < 2; i++)
		paths[i] = iot_stamped(i, file_size[i]);
	mem = iot_mem_alloc(MEM_SIZE, POISON);

	const struct ms_io_faults none = { 0, 0, 0, 0, 0 };
	const struct ms_io_faults soft = { 50000, 20000, 20000, 0, 0 };
	const struct ms_io_faults hard = { 50000, 20000, 20000, 10000, 0 };
#define RUN(n, e, d, f, c, k)                                                  \
	{ .name = n, .engine = MS_IO_ENGINE_##e, .direct = MS_IO_DIRECT_##d,   \
	  .faults = f, .cancels = c, .n_req = k }
	struct run runs[] = {
		RUN("control uring direct", URING, AUTO, none, false, 400),
		RUN("control preadv buffered", PREADV, OFF, none, false, 400),
		RUN("soft uring direct", URING, AUTO, soft, true, N_REQ),
		RUN("soft uring buffered", URING, OFF, soft, true, N_REQ),
		RUN("soft preadv direct", PREADV, AUTO, soft, true, N_REQ),
		RUN("soft preadv buffered", PREADV, OFF, soft, true, N_REQ),
		RUN("eio uring direct", URING, AUTO, hard, true, N_REQ),
		RUN("eio uring buffered", URING, OFF, hard, true, N_REQ),
		RUN("eio preadv direct", PREADV, AUTO, hard, true, N_REQ),
		RUN("eio preadv buffered", PREADV, OFF, hard, true, N_REQ),
	};
	const unsigned n_runs = sizeof(runs) / sizeof(runs[0]);
	cancel_gap_us = 40;
	printf("faults in ppm (short/eagain/eintr/eio): soft %u/%u/%u/%u, eio "
	       "%u/%u/%u/%u; 2 threads, depth 8, 16K requests; the cancel "
	       "thread tries a live request every ~%u us (85%% cancel, 15%% "
	       "promote)\n", soft.short_ppm, soft.eagain_ppm, soft.eintr_ppm,
	       soft.eio_ppm, hard.short_ppm, hard.eagain_ppm, hard.eintr_ppm,
	       hard.eio_ppm, cancel_gap_us);
	for (unsigned i = 0; i < n_runs; i++)
		run_stream(&runs[i], paths, seed + i);
	printf("%-24s %-16s %5s %5s %4s %5s %4s %7s %6s %6s %6s %6s %5s %5s\n",
	       "run", "mode", "reqs", "ok", "eio", "canc", "prom", "chunks",
	       "short", "retry", "failed", "cancd", "wrong", "s");
	for (unsigned i = 0; i < n_runs; i++) {
		const struct run *r = &runs[i];
		printf("%-24s %-16s %5u %5u %4u %5u %4u %7llu %6llu %6llu %6llu "
		       "%6llu %5llu %5.2f\n", r->name, r->mode, r->n_req, r->ok,
		       r->eio, r->ecanceled, r->promoted,
		       (unsigned long long)r->st.chunks,
		       (unsigned long long)r->st.short_reads,
		       (unsigned long long)r->st.retries,
		       (unsigned long long)r->st.failed,
		       (unsigned long long)r->st.cancelled,
		       (unsigned long long)(r->wrong + r->guard), r->s);
	}
	const enum ms_io_engine engines[] = { MS_IO_ENGINE_URING, MS_IO_ENGINE_PREADV };
	const enum ms_io_direct directs[] = { MS_IO_DIRECT_AUTO, MS_IO_DIRECT_OFF };
	for (unsigned e = 0; e < 2; e++)
		for (unsigned d = 0; d < 2; d++)
			run_free(engines[e], directs[d], paths[0],
				 seed + 100 + e * 2 + d);
	iot_mem_free(mem, MEM_SIZE);
	return t_done();
}
