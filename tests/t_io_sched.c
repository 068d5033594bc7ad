/*
 * t_io_sched - the I/O engine's scheduling and the edges of its API.
 *
 *   priority    1 thread, depth 1, 4K requests, a backlog of 32 prefetch
 *               requests of 256 chunks queued first: a demand request
 *               submitted after them completes before all of them but the
 *               one being read when it came (the completion order is
 *               recorded), on io_uring and preadv.
 *   promote     the same backlog: ms_io_promote of the 21st prefetch makes
 *               it finish before the ones queued ahead of it; afterwards it
 *               is demand (cancel and a second promote say -ENOENT) and the
 *               counters moved it from prefetch to demand.
 *   cancel      -ENOENT for a demand request, an unknown id, id 0, a
 *               completed request and a second cancel; 0 for a queued
 *               prefetch, whose callback then says -ECANCELED exactly once.
 *               ms_io_promote: -ENOENT likewise.
 *   invalid     -EINVAL, and no callback, for: len 0, n 0, no callback
 *               function, a class out of range, a file index out of range,
 *               dst before / after / straddling the registered memory, a
 *               length that would wrap the address space, and under O_DIRECT
 *               a misaligned offset, length or dst (the same misalignment is
 *               read byte-exact in buffered mode).
 *   past EOF    an extent wholly past the end of the file, or whose offset
 *               wraps (io_uring reads offset -1 as "the file position"), is
 *               refused (-EINVAL) or fails; it never "succeeds" with
 *               zeros or with other bytes of the file.
 *   truncated   the file shrinks after ms_io_init. The contract checked here:
 *               requests inside the new size read the right bytes; a request
 *               that touches bytes the file held at init but no longer
 *               holds fails with -EIO (the data is gone: zero-filling it
 *               would hand out a wrong expert) and never hangs.
 *   chained     a callback that submits the next request (allowed by the
 *               header) runs a chain of 64 requests to the end; a chain
 *               still growing when ms_io_free is called: the submits made
 *               once it stops are refused, every accepted request gets its
 *               one callback before ms_io_free returns, no deadlock.
 *   prefetch cap
 *               prefetch_inflight = 4 chunks, 2 threads x depth 16: while 8
 *               prefetch requests of 64 chunks run, a watcher that reads
 *               the counters without pause never sees more than 4
 *               prefetch chunks in flight, and (one thread) the requests
 *               complete in the order they were asked for; with the cap
 *               off (the control) the watcher does see more, so the check
 *               can fail. A demand request
 *               added mid-way is not held back by the cap (it completes
 *               before the backlog does). Busy time: > 0, at most the
 *               wall time, and still while idle.
 *   init        errors name the bad value: threads 0 and 65, queue_depth 0
 *               and 4097, request_size 0, 1000 and 4097, no files, a
 *               missing file (-ENOENT, the path in the message), no memory;
 *               *out is NULL after each. ms_io_block_size and
 *               ms_io_free(NULL).
 *
 * MS_IOT_SABOTAGE=1 submits the "demand" request as one more prefetch and
 * leaves out the promotion: both order checks must then fail.
 * MS_IOT_SABOTAGE=2 runs the prefetch-cap half with the cap off: its limit
 * check must then fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "iotest.h"
#include "testutil.h"

#define FILE_SIZE ((32ull << 20) + 1000)
#define MEM_SIZE (40ull << 20)

static char path[512];
static uint8_t *mem;
static uint64_t rng;

static uint64_t rnd(uint64_t n)
{
	return n ? t_rand(&rng) % n : 0;
}

static const char *const eng_names[] = { "auto", "uring", "preadv" };

/* Opens the engine on `file` or returns NULL (io_uring unavailable: said). */
static struct ms_io *open_cfg(const struct ms_io_config *cfg, const char *file,
			      void *m, size_t mlen)
{
	struct ms_io *io;
	struct ms_err err = { 0 };
	const char *paths[] = { file };
	int rc = ms_io_init(&io, cfg, paths, 1, m, mlen, &err);
	if (rc && cfg->engine == MS_IO_ENGINE_URING &&
	    (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)) {
		printf("io_uring unavailable (%s): its half is skipped\n", err.msg);
		return NULL;
	}
	if (rc)
		t_fatal("ms_io_init (%s): %d %s", eng_names[cfg->engine], rc, err.msg);
	return io;
}

static struct ms_io *open_io(enum ms_io_engine engine, enum ms_io_direct direct,
			     unsigned threads, unsigned depth, uint32_t rs,
			     const char *file, void *m, size_t mlen)
{
	struct ms_io_config cfg = iot_config(engine, direct, threads, depth, rs);
	return open_cfg(&cfg, file, m, mlen);
}

static int submit_cb(struct ms_io *io, uint64_t off, uint64_t len,
		     uint8_t *dst, enum ms_io_class cls, ms_io_done_fn done,
		     struct iot_track *tr, unsigned slot, uint64_t *id)
{
	struct ms_io_extent x = { 0, off, len, dst };
	return ms_io_submit(io, &x, 1, cls, done, &tr->slot[slot], id);
}

static int submit1(struct ms_io *io, uint64_t off, uint64_t len, uint8_t *dst,
		   enum ms_io_class cls, struct iot_track *tr, unsigned slot,
		   uint64_t *id)
{
	return submit_cb(io, off, len, dst, cls, iot_track_cb, tr, slot, id);
}

static void wait_all(struct iot_track *tr, unsigned n, const char *what)
{
	if (!iot_track_wait(tr, n, 30)) {
		for (unsigned i = 0; i < n; i++)
			if (!tr->slot[i].calls)
				fprintf(stderr, "%s: request %u never completed\n",
					what, i);
		t_fatal("%s: %u of %u requests hung", what, n - tr->done, n);
	}
}

static void verify_dst(const char *what, unsigned i, const uint8_t *dst,
		       uint64_t off, uint64_t len, uint64_t size)
{
	uint64_t first, bad = iot_verify(dst, off, len, size, 0, &first);
	T_CHECK(!bad, "%s: request %u [%llu +%llu): %llu wrong bytes, first at "
		"file offset %llu", what, i, (unsigned long long)off,
		(unsigned long long)len, (unsigned long long)bad,
		(unsigned long long)(off + first));
}

/* ---- priority and promote ------------------------------------------------ */

#define BACKLOG 32
#define BACKLOG_LEN (1u << 20)   /* 256 chunks of 4K each */

static void test_priority(enum ms_io_engine engine, bool promote)
{
	char what[64];
	snprintf(what, sizeof(what), "%s %s", promote ? "promote" : "priority",
		 eng_names[engine]);
	iot_watchdog(60, what);
	struct ms_io *io = open_io(engine, MS_IO_DIRECT_AUTO, 1, 1, 4096, path,
				   mem, MEM_SIZE);
	if (!io)
		return;
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	struct iot_track *tr = iot_track_new(BACKLOG + 1);
	uint64_t ids[BACKLOG + 1];
	const unsigned D = BACKLOG; /* the demand request's slot */
	const unsigned P = 20;      /* the promoted prefetch */
	bool sab = iot_sabotage() == 1;
	uint64_t offs[BACKLOG + 1];
	double t0 = iot_now();
	for (unsigned i = 0; i < BACKLOG; i++) {
		offs[i] = rnd((FILE_SIZE - BACKLOG_LEN) / MS_IO_ALIGN) * MS_IO_ALIGN;
		int rc = submit1(io, offs[i], BACKLOG_LEN,
				 mem + (uint64_t)i * BACKLOG_LEN, MS_IO_PREFETCH,
				 tr, i, &ids[i]);
		T_CHECK(rc == 0, "%s: submit prefetch %u: %d", what, i, rc);
	}
	offs[D] = 0;
	/* Backlog requests already done when the demand read is asked for (or
	 * the prefetch promoted) were not overtaken: they do not count. */
	pthread_mutex_lock(&tr->mu);
	unsigned done_at_ask = tr->done;
	pthread_mutex_unlock(&tr->mu);
	if (promote && !sab) {
		int rc = ms_io_promote(io, ids[P]);
		T_CHECK(rc == 0, "%s: ms_io_promote of a queued prefetch: %d",
			what, rc);
		T_CHECK(ms_io_promote(io, ids[P]) == -ENOENT, "%s: second "
			"promote is not -ENOENT", what);
		T_CHECK(ms_io_cancel(io, ids[P]) == -ENOENT, "%s: cancel of a "
			"promoted request is not -ENOENT", what);
		struct ms_io_stats st;
		ms_io_get_stats(io, &st);
		T_EQ_U64(st.submitted[MS_IO_DEMAND], 1);
		T_EQ_U64(st.submitted[MS_IO_PREFETCH], BACKLOG - 1);
	} else if (!promote) {
		/* sabotage: the "demand" read goes in as one more prefetch */
		int rc = submit1(io, 0, 64 << 10, mem + (uint64_t)D * BACKLOG_LEN,
				 sab ? MS_IO_PREFETCH : MS_IO_DEMAND, tr, D, &ids[D]);
		T_CHECK(rc == 0, "%s: submit demand: %d", what, rc);
	}
	double t_sub = iot_now() - t0;
	unsigned n = promote ? BACKLOG : BACKLOG + 1;
	unsigned watch = promote ? P : D;
	/* Wait for the watched one, then cancel the rest of the backlog. */
	double t_watch = 0;
	for (;;) {
		int i = iot_track_pop(tr, 30);
		if (i < 0)
			t_fatal("%s: hung waiting for request %u", what, watch);
		if ((unsigned)i == watch) {
			t_watch = iot_now() - t0;
			break;
		}
	}
	unsigned before = (unsigned)tr->slot[watch].seq - 1 - done_at_ask;
	unsigned cancelled = 0;
	for (unsigned i = 0; i < BACKLOG; i++)
		if (i != watch && ms_io_cancel(io, ids[i]) == 0)
			cancelled++;
	wait_all(tr, n, what);
	double t_all = iot_now() - t0;
	struct ms_io_stats st;
	ms_io_get_stats(io, &st);
	ms_io_free(io);
	/* The backlog is 32 x 256 reads; the watched request needs 16 (demand)
	 * or 256 (promoted) of them. The prefetch being read when it was asked
	 * for may finish first; more means it waited in line. */
	printf("%-18s %s: %s (asked at %.1f ms, %u backlog requests done "
	       "then) completed after %u more of %u, at %.1f ms; %u of the "
	       "backlog then cancelled; all done at %.1f ms\n", what,
	       mode.direct ? "direct" : "buffered",
	       promote ? "the promoted prefetch" : "the demand read",
	       t_sub * 1e3, done_at_ask, before, BACKLOG - (promote ? 1 : 0),
	       t_watch * 1e3, cancelled, t_all * 1e3);
	T_CHECK(before <= 1, "%s: the %s request completed after %u backlog "
		"requests (expected at most 1)", what,
		promote ? "promoted" : "demand", before);
	T_CHECK(tr->slot[watch].result == 0, "%s: result %d", what,
		tr->slot[watch].result);
	verify_dst(what, watch, mem + (uint64_t)watch * BACKLOG_LEN, offs[watch],
		   promote ? BACKLOG_LEN : 64 << 10, FILE_SIZE);
	for (unsigned i = 0; i < n; i++) {
		int res = tr->slot[i].result;
		T_CHECK(tr->slot[i].calls == 1, "%s: request %u: %u callbacks",
			what, i, tr->slot[i].calls);
		T_CHECK(res == 0 || (res == -ECANCELED && i < BACKLOG),
			"%s: request %u: result %d", what, i, res);
		if (res == 0 && i < BACKLOG)
			verify_dst(what, i, mem + (uint64_t)i * BACKLOG_LEN,
				   offs[i], BACKLOG_LEN, FILE_SIZE);
	}
	T_EQ_U64(st.cancelled, cancelled);
	for (int c = 0; c < MS_IO_N_CLASSES; c++)
		T_EQ_U64(st.submitted[c], st.completed[c]);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- the prefetch cap, and busy time ------------------------------------- */

#define CAP_REQS 8
#define CAP_LEN (256u << 10)     /* 64 chunks of 4K */
#define CAP_CHUNKS 4

struct cap_watch {
	struct ms_io *io;
	atomic_int stop;
	uint64_t max_inflight, samples;
};

static void *cap_watch_main(void *v)
{
	struct cap_watch *w = v;
	while (!atomic_load(&w->stop)) {
		struct ms_io_stats st;
		ms_io_get_stats(w->io, &st);
		uint64_t in = st.inflight_bytes[MS_IO_PREFETCH];
		if (in > w->max_inflight)
			w->max_inflight = in;
		w->samples++;
	}
	return NULL;
}

/* Runs the backlog with the cap on or off; returns the watcher's maximum. */
static uint64_t cap_run(enum ms_io_engine engine, bool cap, unsigned threads,
		       bool *ok_order)
{
	char what[64];
	snprintf(what, sizeof(what), "cap %s %s %ut", cap ? "on" : "off",
		 eng_names[engine], threads);
	iot_watchdog(60, what);
	/* the preadv engine starts threads x queue depth workers: one thread
	 * of depth 1 is one worker */
	unsigned depth = engine == MS_IO_ENGINE_PREADV && threads == 1 ? 1 : 16;
	struct ms_io_config cfg = iot_config(engine, MS_IO_DIRECT_AUTO, threads,
					     depth, 4096);
	cfg.prefetch_inflight = cap ? CAP_CHUNKS * 4096 : 0;
	double t0 = iot_now();
	struct ms_io *io = open_cfg(&cfg, path, mem, MEM_SIZE);
	int rc;
	*ok_order = true;
	if (!io) {
		iot_watchdog(0, NULL);
		return 0;
	}
	struct iot_track *tr = iot_track_new(CAP_REQS + 1);
	struct cap_watch w = { .io = io };
	pthread_t th;
	if (pthread_create(&th, NULL, cap_watch_main, &w))
		t_fatal("%s: pthread_create", what);
	uint64_t offs[CAP_REQS + 1], id;
	for (unsigned i = 0; i <= CAP_REQS; i++) {
		offs[i] = rnd((FILE_SIZE - CAP_LEN) / MS_IO_ALIGN) * MS_IO_ALIGN;
		if (i == CAP_REQS)
			continue;
		rc = submit1(io, offs[i], CAP_LEN, mem + (uint64_t)i * CAP_LEN,
			     MS_IO_PREFETCH, tr, i, &id);
		T_CHECK(rc == 0, "%s: submit %u: %d", what, i, rc);
	}
	/* A demand request, asked for once the first prefetch is done. */
	while (iot_track_pop(tr, 30) != 0)
		;
	pthread_mutex_lock(&tr->mu);
	unsigned done_at_ask = tr->done;
	pthread_mutex_unlock(&tr->mu);
	rc = submit1(io, offs[CAP_REQS], CAP_LEN, mem + (uint64_t)CAP_REQS * CAP_LEN,
		     MS_IO_DEMAND, tr, CAP_REQS, &id);
	T_CHECK(rc == 0, "%s: submit demand: %d", what, rc);
	wait_all(tr, CAP_REQS + 1, what);
	atomic_store(&w.stop, 1);
	pthread_join(th, NULL);
	double wall = iot_now() - t0;
	struct ms_io_stats st1, st2;
	ms_io_get_stats(io, &st1);
	usleep(20000);
	ms_io_get_stats(io, &st2);
	/* In order: prefetch i completed before prefetch i + 1. */
	*ok_order = true;
	for (unsigned i = 0; i + 1 < CAP_REQS; i++)
		if (tr->slot[i].seq > tr->slot[i + 1].seq)
			*ok_order = false;
	unsigned demand_after = (unsigned)tr->slot[CAP_REQS].seq - 1 - done_at_ask;
	printf("%-18s max prefetch in flight %llu KiB (cap %s) over %llu samples; prefetches "
	       "%s in order; the demand read completed after %u more; busy %.1f ms "
	       "of %.1f ms\n", what, (unsigned long long)(w.max_inflight >> 10),
	       cap ? "16 KiB" : "off", (unsigned long long)w.samples,
	       *ok_order ? "completed" : "NOT completed", demand_after,
	       (double)st1.busy_ns / 1e6, wall * 1e3);
	for (unsigned i = 0; i <= CAP_REQS; i++) {
		T_CHECK(tr->slot[i].result == 0, "%s: request %u: %d", what, i,
			tr->slot[i].result);
		verify_dst(what, i, mem + (uint64_t)i * CAP_LEN, offs[i], CAP_LEN,
			   FILE_SIZE);
	}
	if (cap) {
		T_CHECK(demand_after < CAP_REQS - 1, "%s: the demand read waited for "
			"all %u prefetches left", what, demand_after);
	}
	T_CHECK(st1.busy_ns > 0 && (double)st1.busy_ns <= wall * 1e9,
		"%s: busy %llu ns, wall %.0f ns", what,
		(unsigned long long)st1.busy_ns, wall * 1e9);
	T_CHECK(st1.busy_ns == st2.busy_ns, "%s: the busy clock ran while idle "
		"(%llu -> %llu ns)", what, (unsigned long long)st1.busy_ns,
		(unsigned long long)st2.busy_ns);
	ms_io_free(io);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
	return w.max_inflight;
}

static void test_prefetch_cap(enum ms_io_engine engine)
{
	bool order_on, order_1, order_off;
	/* MS_IOT_SABOTAGE=2 runs the capped half without the cap: the limit
	 * check must then fail. */
	bool sab = iot_sabotage() == 2;
	uint64_t on = cap_run(engine, !sab, 2, &order_on);
	if (!on && engine == MS_IO_ENGINE_URING)
		return; /* io_uring unavailable: said */
	/* The order is judged with one thread: with two, a thread descheduled
	 * while it holds the last read of request i can let i + 1 finish
	 * first, which says nothing about the queue. (The preadv engine's one
	 * thread is one worker, queue depth 1: at depth 16 it had 16 workers,
	 * and under load request 1's 64 reads once all finished while a
	 * worker sat descheduled on request 0's last.) */
	cap_run(engine, !sab, 1, &order_1);
	/* the control is a sampling: a watcher thread descheduled through the
	 * whole burst (a loaded 2-core machine, reads served from the host's
	 * cache) sees nothing, so it gets three tries */
	uint64_t off = 0;
	for (int k = 0; k < 3 && off <= CAP_CHUNKS * 4096; k++)
		off = cap_run(engine, false, 2, &order_off);
	T_CHECK(on <= CAP_CHUNKS * 4096, "%s: %llu prefetch bytes in flight with "
		"the cap at "
		"%u", eng_names[engine], (unsigned long long)on, CAP_CHUNKS * 4096);
	T_CHECK(order_1, "%s: capped prefetches (one thread) completed out of "
		"order", eng_names[engine]);
	T_CHECK(off > CAP_CHUNKS * 4096, "%s: the control (no cap) never had "
		"more than %llu prefetch bytes in flight: the watcher cannot tell",
		eng_names[engine], (unsigned long long)off);
}

/* ---- cancel and promote answers ------------------------------------------ */

static void test_cancel_api(enum ms_io_engine engine)
{
	char what[64];
	snprintf(what, sizeof(what), "cancel-api %s", eng_names[engine]);
	iot_watchdog(60, what);
	struct ms_io *io = open_io(engine, MS_IO_DIRECT_AUTO, 1, 1, 4096, path,
				   mem, MEM_SIZE);
	if (!io)
		return;
	struct iot_track *tr = iot_track_new(8);
	uint64_t id[8];
	/* 0: a long prefetch keeps the one thread busy; 1: demand;
	 * 2, 3: queued prefetches (cancelled, promoted) */
	T_CHECK(submit1(io, 0, 4 << 20, mem, MS_IO_PREFETCH, tr, 0, &id[0]) == 0,
		"submit");
	T_CHECK(submit1(io, 0, 4 << 20, mem + (4 << 20), MS_IO_DEMAND, tr, 1,
			&id[1]) == 0, "submit");
	T_CHECK(submit1(io, 4096, 4 << 20, mem + (8 << 20), MS_IO_PREFETCH, tr,
			2, &id[2]) == 0, "submit");
	T_CHECK(submit1(io, 8192, 4 << 20, mem + (12 << 20), MS_IO_PREFETCH, tr,
			3, &id[3]) == 0, "submit");
	int rc;
	rc = ms_io_cancel(io, id[1]);
	T_CHECK(rc == -ENOENT, "%s: cancel of a demand request: %d", what, rc);
	rc = ms_io_cancel(io, 987654321);
	T_CHECK(rc == -ENOENT, "%s: cancel of an unknown id: %d", what, rc);
	rc = ms_io_cancel(io, 0);
	T_CHECK(rc == -ENOENT, "%s: cancel of id 0: %d", what, rc);
	rc = ms_io_promote(io, id[1]);
	T_CHECK(rc == -ENOENT, "%s: promote of a demand request: %d", what, rc);
	rc = ms_io_promote(io, 987654321);
	T_CHECK(rc == -ENOENT, "%s: promote of an unknown id: %d", what, rc);
	rc = ms_io_cancel(io, id[2]);
	T_CHECK(rc == 0, "%s: cancel of a queued prefetch: %d", what, rc);
	rc = ms_io_cancel(io, id[2]);
	T_CHECK(rc == -ENOENT, "%s: second cancel: %d", what, rc);
	rc = ms_io_promote(io, id[2]);
	T_CHECK(rc == -ENOENT, "%s: promote of a cancelled request: %d", what, rc);
	rc = ms_io_promote(io, id[3]);
	T_CHECK(rc == 0, "%s: promote of a queued prefetch: %d", what, rc);
	wait_all(tr, 4, what);
	T_EQ_U64(tr->slot[2].result, (uint64_t)(int64_t)-ECANCELED);
	for (unsigned i = 0; i < 4; i++)
		T_CHECK(tr->slot[i].calls == 1, "%s: request %u: %u callbacks",
			what, i, tr->slot[i].calls);
	T_CHECK(tr->slot[0].result == 0 && tr->slot[1].result == 0 &&
		tr->slot[3].result == 0, "%s: results %d %d %d", what,
		tr->slot[0].result, tr->slot[1].result, tr->slot[3].result);
	verify_dst(what, 3, mem + (12 << 20), 8192, 4 << 20, FILE_SIZE);
	rc = ms_io_cancel(io, id[0]);
	T_CHECK(rc == -ENOENT, "%s: cancel of a completed prefetch: %d", what, rc);
	rc = ms_io_promote(io, id[0]);
	T_CHECK(rc == -ENOENT, "%s: promote of a completed prefetch: %d", what, rc);
	usleep(20000);
	T_CHECK(tr->doubles == 0, "%s: %u second callbacks", what, tr->doubles);
	ms_io_free(io);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- invalid extents ----------------------------------------------------- */

struct bad_case {
	const char *name;
	struct ms_io_extent x[2];
	unsigned n;
	int cls;
	bool no_done;
	bool direct_only;     /* only invalid under O_DIRECT */
};

static void test_invalid(enum ms_io_engine engine, enum ms_io_direct direct)
{
	char what[64];
	snprintf(what, sizeof(what), "invalid %s %s", eng_names[engine],
		 direct == MS_IO_DIRECT_OFF ? "buffered" : "direct");
	iot_watchdog(60, what);
	/* The engine gets the middle of the mapping: there is memory on both
	 * sides of it that is not its. */
	uint8_t *m = mem + (1 << 20);
	const size_t mlen = 8u << 20;
	struct ms_io *io = open_io(engine, direct, 2, 4, 64 << 10, path, m, mlen);
	if (!io)
		return;
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	const uint64_t A = MS_IO_ALIGN;
	const struct ms_io_extent good = { 0, 8 * A, 4 * A, m };
#define BAD1(nm, f, o, l, d, dio)                                              \
	{ nm, { { f, o, l, d } }, 1, MS_IO_DEMAND, false, dio }
	struct bad_case cases[] = {
		BAD1("len 0", 0, 0, 0, m, false),
		{ "n 0", { good }, 0, MS_IO_DEMAND, false, false },
		{ "no callback", { good }, 1, MS_IO_DEMAND, true, false },
		{ "class 2", { good }, 1, 2, false, false },
		{ "class -1", { good }, 1, -1, false, false },
		BAD1("file 1 of 1", 1, 0, A, m, false),
		BAD1("file 1024", 1024, 0, A, m, false),
		BAD1("file 2^32-1", UINT32_MAX, 0, A, m, false),
		BAD1("dst before mem", 0, 0, A, m - A, false),
		BAD1("dst straddles the start", 0, 0, 2 * A, m - A, false),
		BAD1("dst at the end", 0, 0, A, m + mlen, false),
		BAD1("dst straddles the end", 0, 0, 2 * A, m + mlen - A, false),
		BAD1("len past the end", 0, 0, mlen + A, m, false),
		BAD1("len wraps the address space", 0, 0, UINT64_MAX & ~(A - 1),
		     m + A, false),
		{ "second extent bad", { good, { 0, 0, A, m + mlen } }, 2,
		  MS_IO_DEMAND, false, false },
		BAD1("misaligned offset", 0, A + 512, A, m, true),
		BAD1("misaligned len", 0, A, A + 1, m, true),
		BAD1("misaligned dst", 0, A, A, m + 512, true),
		BAD1("misaligned dst by 1", 0, 0, A, m + 1, true),
	};
	const unsigned n_cases = sizeof(cases) / sizeof(cases[0]);
	struct iot_track *tr = iot_track_new(n_cases);
	struct ms_io_stats st0, st1;
	ms_io_get_stats(io, &st0);
	unsigned accepted = 0;
	for (unsigned i = 0; i < n_cases; i++) {
		const struct bad_case *c = &cases[i];
		uint64_t id = 0;
		bool expect_ok = c->direct_only && !mode.direct;
		if (expect_ok)
			memset(m, 0xEE, 4 * A);
		int rc = ms_io_submit(io, c->x, c->n, (enum ms_io_class)c->cls,
				      c->no_done ? NULL : iot_track_cb,
				      &tr->slot[i], &id);
		if (expect_ok) {
			/* buffered: any alignment is a valid read */
			T_CHECK(rc == 0, "%s: %s: %d, expected 0 in buffered mode",
				what, c->name, rc);
			if (rc == 0) {
				accepted++;
				if (!iot_track_wait(tr, accepted, 30))
					t_fatal("%s: %s hung", what, c->name);
				T_CHECK(tr->slot[i].calls == 1 &&
					tr->slot[i].result == 0, "%s: %s: %u callbacks, "
					"result %d", what, c->name, tr->slot[i].calls,
					tr->slot[i].result);
				verify_dst(what, i, c->x[0].dst, c->x[0].offset,
					   c->x[0].len, FILE_SIZE);
			}
			continue;
		}
		T_CHECK(rc == -EINVAL, "%s: %s: %d, expected -EINVAL (%d)", what,
			c->name, rc, -EINVAL);
	}
	usleep(20000);
	for (unsigned i = 0; i < n_cases; i++) {
		bool expect_ok = cases[i].direct_only && !mode.direct;
		T_CHECK(tr->slot[i].calls == (expect_ok ? 1u : 0u),
			"%s: %s: %u callbacks", what, cases[i].name,
			tr->slot[i].calls);
	}
	ms_io_get_stats(io, &st1);
	T_EQ_U64(st1.submitted[MS_IO_DEMAND] - st0.submitted[MS_IO_DEMAND],
		 accepted);
	printf("%-26s %u invalid extents refused with -EINVAL%s\n", what,
	       n_cases - accepted,
	       accepted ? ", misaligned ones read byte-exact" : "");
	ms_io_free(io);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- extents past the end of the file ------------------------------------ */

static void test_past_eof(enum ms_io_engine engine, enum ms_io_direct direct)
{
	char what[64];
	snprintf(what, sizeof(what), "past-eof %s %s", eng_names[engine],
		 direct == MS_IO_DIRECT_OFF ? "buffered" : "direct");
	iot_watchdog(60, what);
	struct ms_io *io = open_io(engine, direct, 1, 4, 64 << 10, path, mem,
				   MEM_SIZE);
	if (!io)
		return;
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	const uint64_t A = MS_IO_ALIGN;
	const uint64_t end = (FILE_SIZE + A - 1) & ~(A - 1);
	struct {
		const char *name;
		uint64_t off, len;
		bool buffered_only;
	} cases[] = {
		{ "wholly past the widened EOF", end + 16 * A, 4 * A, false },
		{ "1 GiB past EOF", end + (1ull << 30), A, false },
		{ "offset 2^63", 1ull << 63, A, false },
		{ "offset wraps to 0", UINT64_MAX - A + 1, A, false },
		{ "offset -1 (the file position)", UINT64_MAX, 1, true },
		{ "offset -4096 + 1", UINT64_MAX - A + 2, A, true },
	};
	const unsigned n = sizeof(cases) / sizeof(cases[0]);
	struct iot_track *tr = iot_track_new(n);
	unsigned judged = 0, accepted = 0;
	for (unsigned i = 0; i < n; i++) {
		if (cases[i].buffered_only && mode.direct)
			continue;
		uint8_t *dst = mem + (uint64_t)i * (1 << 20);
		memset(dst, 0xEE, 64 << 10);
		uint64_t id;
		int rc = submit1(io, cases[i].off, cases[i].len, dst, MS_IO_DEMAND,
				 tr, i, &id);
		judged++;
		if (rc) {
			T_CHECK(rc == -EINVAL, "%s: %s: submit %d, expected "
				"-EINVAL", what, cases[i].name, rc);
			continue;
		}
		if (!iot_track_wait(tr, ++accepted, 30))
			t_fatal("%s: %s hung", what, cases[i].name);
		T_CHECK(tr->slot[i].calls == 1, "%s: %s: %u callbacks", what,
			cases[i].name, tr->slot[i].calls);
		T_CHECK(tr->slot[i].result < 0, "%s: %s [%llu +%llu) was accepted "
			"and completed with %d (dst now starts %02x %02x %02x %02x): "
			"bytes that are not in the file must not read as data",
			what, cases[i].name, (unsigned long long)cases[i].off,
			(unsigned long long)cases[i].len, tr->slot[i].result,
			dst[0], dst[1], dst[2], dst[3]);
	}
	printf("%-26s %u extents past EOF judged\n", what, judged);
	ms_io_free(io);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- a file that shrinks after init -------------------------------------- */

#define TR_OLD ((4ull << 20) + 1000)
#define TR_NEW ((1ull << 20) + 300)

static void test_truncated(enum ms_io_engine engine, enum ms_io_direct direct)
{
	char what[64];
	snprintf(what, sizeof(what), "truncated %s %s", eng_names[engine],
		 direct == MS_IO_DIRECT_OFF ? "buffered" : "direct");
	iot_watchdog(60, what);
	char tpath[600];
	snprintf(tpath, sizeof(tpath), "%s/shrinks.bin", t_tmpdir());
	int rc = iot_make_stamped(tpath, TR_OLD, 0);
	if (rc)
		t_fatal("%s: %s", tpath, strerror(-rc));
	struct ms_io *io = open_io(engine, direct, 1, 4, 64 << 10, tpath, mem,
				   MEM_SIZE);
	if (!io)
		return;
	if (truncate(tpath, TR_NEW))
		t_fatal("truncate %s: %s", tpath, strerror(errno));
	const uint64_t A = MS_IO_ALIGN;
	const uint64_t nb = TR_NEW & ~(A - 1);  /* the block holding the new EOF */
	struct {
		const char *name;
		uint64_t off, len;
		bool ok;      /* wholly inside the new size */
	} cases[] = {
		{ "inside the new size", 0, 512 << 10, true },
		{ "the last whole block before the new EOF", nb - A, A, true },
		{ "the block holding the new EOF", nb, A, false },
		{ "spans the new EOF", nb - (64 << 10), 128 << 10, false },
		{ "wholly between the new and old EOF", 2ull << 20, 64 << 10, false },
		{ "the old EOF block", TR_OLD & ~(A - 1), A, false },
		{ "from the new EOF to the old one", nb,
		  ((TR_OLD + A - 1) & ~(A - 1)) - nb, false },
	};
	const unsigned n = sizeof(cases) / sizeof(cases[0]);
	struct iot_track *tr = iot_track_new(n);
	for (unsigned i = 0; i < n; i++) {
		uint64_t id;
		rc = submit1(io, cases[i].off, cases[i].len,
			     mem + (uint64_t)i * (4 << 20), MS_IO_DEMAND, tr, i, &id);
		T_CHECK(rc == 0, "%s: %s: submit %d", what, cases[i].name, rc);
		if (rc)
			iot_track_cb(&tr->slot[i], 0, rc);
	}
	wait_all(tr, n, what);
	char line[256] = "";
	for (unsigned i = 0; i < n; i++) {
		int res = tr->slot[i].result;
		size_t l = strlen(line);
		snprintf(line + l, sizeof(line) - l, " %d", res);
		if (cases[i].ok) {
			T_CHECK(res == 0, "%s: %s: %d", what, cases[i].name, res);
			if (!res)
				verify_dst(what, i, mem + (uint64_t)i * (4 << 20),
					   cases[i].off, cases[i].len, TR_NEW);
		} else {
			T_CHECK(res == -EIO, "%s: %s [%llu +%llu), file now %llu "
				"bytes (was %llu): result %d (%s), expected -EIO",
				what, cases[i].name, (unsigned long long)cases[i].off,
				(unsigned long long)cases[i].len,
				(unsigned long long)TR_NEW,
				(unsigned long long)TR_OLD, res,
				res ? strerror(-res) : "success");
		}
	}
	printf("%-26s results:%s (0 for the first 2, -EIO = %d for the rest)\n",
	       what, line, -EIO);
	ms_io_free(io);
	iot_track_free(tr);
	unlink(tpath);
	iot_watchdog(0, NULL);
}

/* ---- a callback that submits --------------------------------------------- */

#define CHAIN 64

struct chain {
	struct ms_io *io;
	struct iot_track *tr;
	unsigned next;
	int submit_rc;
	uint64_t off[CHAIN];
};

static struct chain chain;

static void chain_cb(void *ctx, uint64_t id, int result)
{
	iot_track_cb(ctx, id, result);
	if (chain.next < CHAIN) {
		unsigned i = chain.next++;
		uint64_t nid;
		int rc = submit_cb(chain.io, chain.off[i], 64 << 10,
				   mem + (uint64_t)i * (64 << 10),
				   i & 1 ? MS_IO_PREFETCH : MS_IO_DEMAND, chain_cb,
				   chain.tr, i, &nid);
		if (rc) {
			chain.submit_rc = rc;
			iot_track_cb(&chain.tr->slot[i], 0, rc);
		}
	}
}

static void test_chain(enum ms_io_engine engine)
{
	char what[64];
	snprintf(what, sizeof(what), "chained %s", eng_names[engine]);
	iot_watchdog(60, what);
	struct ms_io *io = open_io(engine, MS_IO_DIRECT_AUTO, 2, 4, 16 << 10, path,
				   mem, MEM_SIZE);
	if (!io)
		return;
	memset(&chain, 0, sizeof(chain));
	chain.io = io;
	chain.tr = iot_track_new(CHAIN);
	for (unsigned i = 0; i < CHAIN; i++)
		chain.off[i] = rnd((FILE_SIZE >> 16) - 1) << 16;
	chain.next = 1;
	struct ms_io_extent x = { 0, chain.off[0], 64 << 10, mem };
	uint64_t id;
	T_CHECK(ms_io_submit(io, &x, 1, MS_IO_DEMAND,
			     chain_cb, &chain.tr->slot[0], &id) == 0,
		"%s: submit", what);
	wait_all(chain.tr, CHAIN, what);
	T_CHECK(chain.submit_rc == 0, "%s: submit from a callback: %d", what,
		chain.submit_rc);
	for (unsigned i = 0; i < CHAIN; i++) {
		T_CHECK(chain.tr->slot[i].result == 0, "%s: %u: %d", what, i,
			chain.tr->slot[i].result);
		verify_dst(what, i, mem + (uint64_t)i * (64 << 10), chain.off[i],
			   64 << 10, FILE_SIZE);
	}
	ms_io_free(io);
	printf("%-26s %u requests, each submitted by the previous callback\n",
	       what, CHAIN);
	iot_track_free(chain.tr);
	iot_watchdog(0, NULL);
}

/* A chain that is still running when ms_io_free is called: the submits its
 * callbacks make once the engine is stopping are refused (the header says
 * -EINVAL for "stopped engine"), every accepted request gets its one
 * callback before ms_io_free returns, and nothing deadlocks. */

static struct {
	struct ms_io *io;
	struct iot_track *tr;
	unsigned next, accepted, refused;
	int refused_rc;
	uint64_t off[CHAIN];
	pthread_mutex_t mu;
} fchain = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void fchain_cb(void *ctx, uint64_t id, int result)
{
	iot_track_cb(ctx, id, result);
	/* two follow-ups per callback, so the chain outlives the call to
	 * ms_io_free */
	for (int k = 0; k < 2; k++) {
		pthread_mutex_lock(&fchain.mu);
		unsigned i = fchain.next < CHAIN ? fchain.next++ : CHAIN;
		pthread_mutex_unlock(&fchain.mu);
		if (i == CHAIN)
			return;
		uint64_t nid;
		int rc = submit_cb(fchain.io, fchain.off[i], 64 << 10,
				   mem + (uint64_t)i * (64 << 10), MS_IO_DEMAND,
				   fchain_cb, fchain.tr, i, &nid);
		pthread_mutex_lock(&fchain.mu);
		if (rc) {
			fchain.refused++;
			fchain.refused_rc = rc;
		} else {
			fchain.accepted++;
		}
		pthread_mutex_unlock(&fchain.mu);
	}
}

static void test_chain_free(enum ms_io_engine engine)
{
	char what[64];
	snprintf(what, sizeof(what), "chain-at-free %s", eng_names[engine]);
	iot_watchdog(60, what);
	struct ms_io *io = open_io(engine, MS_IO_DIRECT_AUTO, 2, 2, 4096, path,
				   mem, MEM_SIZE);
	if (!io)
		return;
	fchain.io = io;
	fchain.tr = iot_track_new(CHAIN);
	fchain.next = 1;
	fchain.accepted = 1;
	fchain.refused = 0;
	fchain.refused_rc = 0;
	for (unsigned i = 0; i < CHAIN; i++)
		fchain.off[i] = rnd((FILE_SIZE >> 16) - 1) << 16;
	uint64_t id;
	T_CHECK(submit_cb(io, fchain.off[0], 64 << 10, mem, MS_IO_DEMAND,
			  fchain_cb, fchain.tr, 0, &id) == 0, "%s: submit", what);
	if (!iot_track_wait(fchain.tr, 3, 30))
		t_fatal("%s: the chain did not start", what);
	ms_io_free(io);
	pthread_mutex_lock(&fchain.mu);
	unsigned accepted = fchain.accepted, refused = fchain.refused;
	int rrc = fchain.refused_rc;
	pthread_mutex_unlock(&fchain.mu);
	unsigned done = fchain.tr->done;
	T_CHECK(done == accepted, "%s: %u requests accepted, %u callbacks when "
		"ms_io_free returned", what, accepted, done);
	T_CHECK(fchain.tr->doubles == 0, "%s: second callbacks", what);
	for (unsigned i = 0; i < CHAIN; i++)
		if (fchain.tr->slot[i].calls) {
			T_CHECK(fchain.tr->slot[i].result == 0, "%s: %u: %d", what, i,
				fchain.tr->slot[i].result);
			if (!fchain.tr->slot[i].result)
				verify_dst(what, i, mem + (uint64_t)i * (64 << 10),
					   fchain.off[i], 64 << 10, FILE_SIZE);
		}
	T_CHECK(!refused || rrc < 0, "%s: refused with %d", what, rrc);
	printf("%-26s %u accepted and completed, %u refused while stopping "
	       "(rc %d%s)\n", what, accepted, refused, rrc,
	       rrc == -EINVAL ? ", as the header says"
	       : rrc ? ": the header says -EINVAL for a stopped engine" : "");
	iot_track_free(fchain.tr);
	iot_watchdog(0, NULL);
}

/* ---- init errors --------------------------------------------------------- */

/* True when `msg` has the decimal number `v` as a whole token. */
static bool has_number(const char *msg, unsigned long long v)
{
	for (const char *p = msg; *p; p++) {
		if (*p < '0' || *p > '9' || (p > msg && p[-1] >= '0' && p[-1] <= '9'))
			continue;
		char *e;
		unsigned long long x = strtoull(p, &e, 10);
		if (x == v)
			return true;
	}
	return false;
}

static void test_init_errors(void)
{
	iot_watchdog(60, "init errors");
	struct {
		const char *name, *word;
		unsigned threads, depth;
		uint32_t rs;
		unsigned long long value;
		int n_paths;
		bool missing, no_mem;
		int rc;
	} cases[] = {
#define INIT_BAD(nm, w, t, d, rs, v)                                           \
	{ nm, w, t, d, rs, v, 1, false, false, -EINVAL }
		INIT_BAD("threads 0", "threads", 0, 8, 1 << 20, 0),
		INIT_BAD("threads 65", "threads", 65, 8, 1 << 20, 65),
		INIT_BAD("depth 0", "queue_depth", 1, 0, 1 << 20, 0),
		INIT_BAD("depth 4097", "queue_depth", 1, 4097, 1 << 20, 4097),
		INIT_BAD("request_size 0", "request_size", 1, 8, 0, 0),
		INIT_BAD("request_size 1000", "request_size", 1, 8, 1000, 1000),
		INIT_BAD("request_size 4097", "request_size", 1, 8, 4097, 4097),
		{ "no files", "files", 1, 8, 1 << 20, 0, 0, false, false, -EINVAL },
		{ "missing file", "no-such-shard.gguf", 1, 8, 1 << 20, ~0ull, 1,
		  true, false, -ENOENT },
		{ "no memory", "memory", 1, 8, 1 << 20, ~0ull, 1, false, true,
		  -EINVAL },
	};
	char missing[600];
	snprintf(missing, sizeof(missing), "%s/no-such-shard.gguf", t_tmpdir());
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ms_io_config cfg;
		ms_io_config_default(&cfg);
		cfg.threads = cases[i].threads;
		cfg.queue_depth = cases[i].depth;
		cfg.request_size = cases[i].rs;
		const char *paths[] = { cases[i].missing ? missing : path };
		struct ms_io *io = (struct ms_io *)(uintptr_t)1;
		struct ms_err err = { 0 };
		int rc = ms_io_init(&io, &cfg, paths, (unsigned)cases[i].n_paths,
				    cases[i].no_mem ? NULL : mem, MEM_SIZE, &err);
		T_CHECK(rc == cases[i].rc, "init %s: %d, expected %d (%s)",
			cases[i].name, rc, cases[i].rc, err.msg);
		T_CHECK(io == NULL, "init %s: *out not NULL on error", cases[i].name);
		T_CHECK(err.code == rc, "init %s: err.code %d, returned %d",
			cases[i].name, err.code, rc);
		T_CHECK(strstr(err.msg, cases[i].word), "init %s: the message does "
			"not name '%s': '%s'", cases[i].name, cases[i].word, err.msg);
		if (cases[i].value != ~0ull)
			T_CHECK(has_number(err.msg, cases[i].value), "init %s: the "
				"message does not give the value %llu: '%s'",
				cases[i].name, cases[i].value, err.msg);
		printf("init %-18s -> %d '%s'\n", cases[i].name, rc, err.msg);
		if (rc == 0)
			ms_io_free(io);
	}
	ms_io_free(NULL);

	struct ms_io *io = open_io(MS_IO_ENGINE_AUTO, MS_IO_DIRECT_AUTO, 1, 1,
				   4096, path, mem, MEM_SIZE);
	if (io) {
		uint32_t bs = ms_io_block_size(io, 0);
		T_CHECK(bs >= 512 && bs <= MS_IO_ALIGN && MS_IO_ALIGN % bs == 0,
			"ms_io_block_size: %u", bs);
		T_EQ_U64(ms_io_block_size(io, 1), 0);
		struct ms_io_mode mode;
		ms_io_get_mode(io, &mode);
		printf("default engine: %s, %s, block size %u%s%s\n",
		       iot_engine_name(mode.engine),
		       mode.direct ? "O_DIRECT" : "buffered", bs,
		       *mode.why ? ", fallbacks: " : "", mode.why);
		ms_io_free(io);
	}
	iot_watchdog(0, NULL);
}

int main(void)
{
	uint64_t seed = t_seed();
	rng = seed;
	snprintf(path, sizeof(path), "%s/stamped.bin", t_tmpdir());
	int rc = iot_make_stamped(path, FILE_SIZE, 0);
	if (rc)
		t_fatal("writing %s: %s", path, strerror(-rc));
	mem = iot_mem_alloc(MEM_SIZE, 0);

	test_init_errors();
	const enum ms_io_engine engines[] = { MS_IO_ENGINE_URING, MS_IO_ENGINE_PREADV };
	for (unsigned e = 0; e < 2; e++) {
		test_priority(engines[e], false);
		test_priority(engines[e], true);
		test_cancel_api(engines[e]);
		test_prefetch_cap(engines[e]);
		test_chain(engines[e]);
		test_chain_free(engines[e]);
		for (int d = 0; d < 2; d++) {
			enum ms_io_direct dio = d ? MS_IO_DIRECT_OFF : MS_IO_DIRECT_AUTO;
			test_invalid(engines[e], dio);
			test_past_eof(engines[e], dio);
			test_truncated(engines[e], dio);
		}
	}
	iot_mem_free(mem, MEM_SIZE);
	return t_done();
}
