/*
 * t_cache - the expert cache, function by function, with exact counters.
 *
 * Every part makes its own cache (fresh counters) on the tiny preset
 * (glm4moe: layer indices 0-3 run, 4 is the NextN block; 16 experts, 4 used;
 * 142,336 bytes per expert, a 159,744-byte slot), sized in slots, and checks
 * every served expert byte for byte against the file, and the cache's own
 * invariants (ms_cache_check) after each step:
 *
 *  basic      -EINVAL for bad indices; an absent expert answers -EINPROGRESS
 *             and exactly one callback; a READY one answers 0 with the same
 *             location and no callback; a release without a pin is refused
 *             and logged; callbacks may call back into the cache; N
 *             acquires of one absent expert make one load.
 *  reference  3,000 random acquire / release / prefetch steps, one at a time,
 *             against a model of the documented policy (free slots, then the
 *             never-used prefetches, then the LRU): hits, misses, evictions,
 *             loads, bytes read, prefetch counters and every entry's state
 *             and pins must match after every step.
 *  full       every slot pinned: an acquire waits and fails with -EBUSY after
 *             acquire_timeout_ms (timed), holding no pin; two acquires of one
 *             waiting expert count as two (each acquire is a hit or a miss);
 *             a pin released within the timeout serves the waiter; the
 *             timeout changed with ms_cache_set_tunables applies at once.
 *  wait_timeout  acquire_wait's own timeout_ms (100) is honoured when the
 *             configured one is far longer (3 s): -ETIMEDOUT, and the pin
 *             that arrives later is dropped by the cache.
 *  prefetch   low priority (a demand read overtakes queued prefetches), the
 *             in-flight cap (-E2BIG), -EBUSY when only pinned or loading
 *             entries are left, never-used prefetches are evicted first, a
 *             demand acquire joins an in-flight prefetch (promoted: it
 *             overtakes the prefetches queued before it; prefetch_used), and
 *             a finished prefetch frees its slot for a waiting acquire.
 *  cancel     ms_cache_cancel_stale cancels in-flight prefetches of earlier
 *             layers only, never one a reader joined; prefetch_cancelled;
 *             the cancelled experts load fine afterwards.
 *  shutdown   ms_cache_free with a load in flight and an acquire waiting
 *             for a slot: one answer each (the result; -ESHUTDOWN).
 *  pin        cache.pin loads its experts at init and they are never
 *             evicted; bad specs are refused with a message naming the value
 *             ("3:99", "x", a dense block, a NextN block, too many: -ENOSPC);
 *             a failed init leaks no descriptor.
 *  pin_top    after 4096 acquires the 3 most used experts stay resident
 *             (sticky: pins 0) through heavy eviction; turned off with
 *             ms_cache_set_tunables, they go back to the LRU.
 *  min_size   a cache below one token's worth of slots is refused with a
 *             message naming the minimum; exactly the minimum works; a cache
 *             larger than the model holds every expert and reports the rest
 *             as surplus, not waste.
 *  classes    a model whose odd blocks have other types gets two slot
 *             classes: each holds at least n_expert_used and its share by
 *             bytes, the waste is exactly arena - sum(slots x expert bytes),
 *             and experts of both classes are served right.
 *  glm        the GLM-4.7 presets (sparse files, 4 MoE layers) in a 512 MB
 *             cache: waste under 5% of the budget (printed).
 *
 * Slow loads, where a part needs a load to stay in flight for a while, come
 * from the engine's fault injection: -EAGAIN on 99% of completions, one
 * thread at queue depth 1, which makes a load take ~60 ms instead of ~0.5.
 * Where the order of the engine's queue cannot make a check deterministic,
 * the check is written so that a late thread can only make it pass, never
 * fail (it says so when that happens). Parts can be run alone by name:
 * `t_cache prefetch cancel`.
 *
 * MS_CT_SABOTAGE=1 expects one hit too many in `reference`, =2 expects the
 * -EBUSY answer at twice acquire_timeout_ms in `full`, =3 expects one
 * prefetch fewer before -E2BIG; each must make the test fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cachetest.h"
#include "gguf_raw.h"

static struct ct_model tiny;
static uint64_t tiny_sb, tiny_raw;
static uint64_t seed;

static struct ms_cache *cache_new(const struct ct_model *cm,
				  const struct ms_cache_config *cfg)
{
	struct ms_cache *c;
	struct ms_err err = { 0 };
	if (ms_cache_init(&c, cm->m, cfg, &err))
		t_fatal("ms_cache_init: %s", err.msg);
	return c;
}

/* Loads that stay in flight ~60 ms: see the header. */
static void slow_io(struct ms_cache_config *cfg)
{
	cfg->io.faults.eagain_ppm = 990000;
	cfg->io.faults.seed = seed;
	cfg->io.threads = 1;
	cfg->io.queue_depth = 1;
}

static struct ms_cache_stats stats(struct ms_cache *c)
{
	struct ms_cache_stats st;
	ms_cache_get_stats(c, &st);
	return st;
}

static void verify_at(const char *file, int line, struct ms_cache *c,
		      const struct ct_model *cm, uint32_t l, uint32_t e,
		      const struct ms_expert_loc *loc)
{
	char why[320];
	if (ct_verify(cm, ms_cache_arena(c), l, e, loc, why, sizeof(why)))
		t_fail_at(file, line, "wrong bytes served: %s", why);
}
#define VERIFY(c, cm, l, e, loc) verify_at(__FILE__, __LINE__, c, cm, l, e, loc)

/* acquire_wait that must succeed; the bytes are checked. */
static int hold_at(const char *file, int line, struct ms_cache *c,
		   const struct ct_model *cm, uint32_t l, uint32_t e,
		   struct ms_expert_loc *loc)
{
	struct ms_expert_loc tmp;
	if (!loc)
		loc = &tmp;
	int rc = ms_cache_acquire_wait(c, l, e, 0, loc);
	if (rc)
		t_fail_at(file, line, "acquire_wait(%u, %u) = %d (%s)", l, e, rc,
			  strerror(-rc));
	else
		verify_at(file, line, c, cm, l, e, loc);
	return rc;
}
#define HOLD(c, cm, l, e, loc) hold_at(__FILE__, __LINE__, c, cm, l, e, loc)

static void expect_state_at(const char *file, int line, struct ms_cache *c,
			    uint32_t l, uint32_t e, enum ms_entry_state want,
			    uint32_t want_pins)
{
	uint32_t pins = 0;
	enum ms_entry_state s = ms_cache_state(c, l, e, &pins);
	if (s != want || pins != want_pins)
		t_fail_at(file, line,
			  "layer %u expert %u: state %d pins %u, expected state %d "
			  "pins %u",
			  l, e, s, pins, want, want_pins);
}
#define EXPECT_STATE(c, l, e, s, p) expect_state_at(__FILE__, __LINE__, c, l, e, s, p)

static bool loc_equal(const struct ms_expert_loc *x, const struct ms_expert_loc *y)
{
	if (x->n_proj != y->n_proj)
		return false;
	for (uint32_t j = 0; j < x->n_proj; j++)
		if (x->off[j] != y->off[j] || x->len[j] != y->len[j])
			return false;
	return true;
}

static uint64_t hist_sum(const struct ms_cache_stats *st)
{
	uint64_t n = 0;
	for (int i = 0; i < 24; i++)
		n += st->lat_us_hist[i];
	return n;
}

/* ---- basic ------------------------------------------------------------------------ */

static void test_basic(void)
{
	printf("-- basic\n");
	int fds0 = ct_fd_count();
	struct ms_cache_config cfg;
	ct_config(&cfg, 6 * tiny_sb, 1000);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.slots, 6);
	T_EQ_U64(st.slot_classes, 1);
	T_EQ_U64(st.budget_bytes, 6 * tiny_sb);
	T_EQ_U64(st.waste_bytes, 6 * (tiny_sb - tiny_raw));
	T_EQ_U64(st.held_bytes, 0);
	T_EQ_U64(st.hits + st.misses + st.loads, 0);
	printf("arena: %s\n", ms_cache_arena(c)->mode);
	struct ms_io_mode mode;
	ms_cache_get_io_mode(c, &mode);
	printf("engine: %s, %s%s%s\n",
	       mode.engine == MS_IO_ENGINE_URING ? "io_uring" : "preadv",
	       mode.direct ? "O_DIRECT" : "buffered",
	       *mode.why ? "; " : "", mode.why);

	/* bad indices */
	struct ct_answer a;
	struct ms_expert_loc loc, loc2;
	uint32_t pins;
	ct_answer_init(&a);
	T_EQ_U64(ms_cache_acquire(c, tiny.m->n_layers, 0, ct_answer_cb, &a, &loc),
		 (uint64_t)-EINVAL);
	T_EQ_U64(ms_cache_acquire(c, 0, tiny.m->n_expert, ct_answer_cb, &a, &loc),
		 (uint64_t)-EINVAL);
	T_EQ_U64(ms_cache_acquire_wait(c, UINT32_MAX, 0, 0, &loc), (uint64_t)-EINVAL);
	T_EQ_U64(ms_cache_prefetch(c, 99, 0), (uint64_t)-EINVAL);
	T_EQ_U64(ms_cache_prefetch(c, 0, 16), (uint64_t)-EINVAL);
	ms_cache_release(c, 99, 0);
	T_CHECK(ms_cache_state(c, 99, 0, &pins) == MS_ENTRY_EMPTY, "bad index state");
	T_EQ_U64(ct_answer_calls(&a), 0);
	st = stats(c);
	T_EQ_U64(st.hits + st.misses, 0);

	/* absent: -EINPROGRESS and exactly one callback */
	T_EQ_U64(ms_cache_acquire(c, 1, 2, ct_answer_cb, &a, &loc),
		 (uint64_t)-EINPROGRESS);
	T_CHECK(ct_answer_wait(&a, 10), "no callback for (1, 2)");
	ct_sleep_ms(50);
	T_EQ_U64(ct_answer_calls(&a), 1);
	T_EQ_U64(a.result, 0);
	T_CHECK(a.has_loc && a.layer == 1 && a.expert == 2,
		"callback: loc %d, layer %u expert %u", a.has_loc, a.layer, a.expert);
	VERIFY(c, &tiny, 1, 2, &a.loc);
	EXPECT_STATE(c, 1, 2, MS_ENTRY_READY, 1);
	st = stats(c);
	T_EQ_U64(st.misses, 1);
	T_EQ_U64(st.hits, 0);
	T_EQ_U64(st.loads, 1);
	T_EQ_U64(st.bytes_read, tiny_raw);
	T_EQ_U64(st.held_bytes, tiny_sb);
	T_EQ_U64(st.ready_entries, 1);
	T_EQ_U64(st.pinned_entries, 1);
	T_EQ_U64(hist_sum(&st), 1);

	/* READY: 0, the same location, no callback */
	struct ct_answer b;
	ct_answer_init(&b);
	T_EQ_U64(ms_cache_acquire(c, 1, 2, ct_answer_cb, &b, &loc2), 0);
	T_CHECK(loc_equal(&loc2, &a.loc), "READY loc differs from the callback's");
	ct_sleep_ms(20);
	T_EQ_U64(ct_answer_calls(&b), 0);
	EXPECT_STATE(c, 1, 2, MS_ENTRY_READY, 2);
	T_EQ_U64(stats(c).hits, 1);
	ms_cache_release(c, 1, 2);
	ms_cache_release(c, 1, 2);
	EXPECT_STATE(c, 1, 2, MS_ENTRY_READY, 0);
	T_EQ_U64(stats(c).pinned_entries, 0);
	CT_CACHE_OK(c, "after releases");

	/* a release without a pin: refused, logged, nothing changes */
	struct ms_cache_stats before = stats(c);
	ct_stderr_begin();
	ms_cache_release(c, 1, 2); /* READY, unpinned */
	ms_cache_release(c, 3, 3); /* EMPTY */
	char *log = ct_stderr_end();
	T_CHECK(strstr(log, "layer 2 expert 2") && strstr(log, "layer 4 expert 3") &&
			strstr(log, "no pin"),
		"unpinned releases were not logged by block and expert: '%s'", log);
	free(log);
	EXPECT_STATE(c, 1, 2, MS_ENTRY_READY, 0);
	EXPECT_STATE(c, 3, 3, MS_ENTRY_EMPTY, 0);
	st = stats(c);
	T_CHECK(!memcmp(&st, &before, sizeof(st)), "stats changed on a refused release");
	CT_CACHE_OK(c, "after refused releases");

	/* a callback may call back into the cache: it releases its own pin */
	struct ct_answer d;
	ct_answer_init(&d);
	d.release_in_cb = c;
	T_EQ_U64(ms_cache_acquire(c, 2, 7, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	T_CHECK(ct_answer_wait(&d, 10) && d.result == 0, "callback-release: %d",
		d.result);
	EXPECT_STATE(c, 2, 7, MS_ENTRY_READY, 0);

	/* five acquires of one absent expert: one load, five answers */
	struct ct_answer five[5];
	before = stats(c);
	int five_rc[5];
	for (int i = 0; i < 5; i++) {
		ct_answer_init(&five[i]);
		five_rc[i] = ms_cache_acquire(c, 3, 1, ct_answer_cb, &five[i], &loc);
		if (i == 0)
			T_EQ_U64(five_rc[i], (uint64_t)-EINPROGRESS);
		T_CHECK(five_rc[i] == 0 || five_rc[i] == -EINPROGRESS, "acquire %d: %d",
			i, five_rc[i]);
		if (five_rc[i] == 0)
			VERIFY(c, &tiny, 3, 1, &loc);
	}
	for (int i = 0; i < 5; i++)
		if (five_rc[i] == -EINPROGRESS)
			T_CHECK(ct_answer_wait(&five[i], 10), "acquire %d: no callback", i);
	ct_sleep_ms(20);
	for (int i = 0; i < 5; i++) {
		T_EQ_U64(ct_answer_calls(&five[i]), five_rc[i] == -EINPROGRESS);
		if (five[i].calls) {
			T_EQ_U64(five[i].result, 0);
			VERIFY(c, &tiny, 3, 1, &five[i].loc);
		}
	}
	st = stats(c);
	T_EQ_U64(st.misses - before.misses, 1);
	T_EQ_U64(st.hits - before.hits, 4);
	T_EQ_U64(st.loads - before.loads, 1);
	EXPECT_STATE(c, 3, 1, MS_ENTRY_READY, 5);
	for (int i = 0; i < 5; i++) {
		ms_cache_release(c, 3, 1);
		ct_answer_destroy(&five[i]);
	}
	EXPECT_STATE(c, 3, 1, MS_ENTRY_READY, 0);
	CT_CACHE_OK(c, "end of basic");
	st = stats(c);
	T_EQ_U64(hist_sum(&st), st.loads);
	T_EQ_U64(st.load_failures + st.busy, 0);
	ms_cache_free(c);
	ct_answer_destroy(&a);
	ct_answer_destroy(&b);
	ct_answer_destroy(&d);
	T_EQ_U64(ct_fd_count(), fds0);
}

/* ---- reference model ------------------------------------------------------------------ */

enum { SIM_NONE = 0, SIM_MAIN = 1, SIM_PF = 2 };

struct sim {
	uint32_t n;             /* entries */
	uint32_t free_slots;
	bool *ready;
	uint32_t *pins;
	bool *prefetched;       /* loaded by a prefetch, unused since */
	uint8_t *list;
	uint64_t *stamp;        /* order within the list: older = smaller */
	uint64_t tick;
	uint64_t raw;
	uint32_t n_expert;
	uint64_t seq;           /* acquires so far */
	uint64_t *layer_seq;    /* [layer]: seq of its last acquire */
	uint64_t *pf_seq;       /* [entry]: seq when its prefetch started */
	uint32_t cur_layer;     /* layer of the last acquire */
	unsigned took[3];       /* evictions: stale prefetch, LRU, ahead prefetch */
	struct ms_cache_stats st;
};

/* Stale: an unused prefetch whose layer was acquired since it started, the
 * reader since gone on to another layer. */
static bool sim_stale(const struct sim *s, uint32_t i)
{
	uint32_t l = i / s->n_expert;
	return s->layer_seq[l] > s->pf_seq[i] && s->cur_layer != l;
}

static void sim_append(struct sim *s, uint32_t i, uint8_t which)
{
	s->list[i] = which;
	s->stamp[i] = ++s->tick;
}

/* A slot: free, else the oldest stale never-used prefetch, else the LRU,
 * else the oldest prefetch still ahead of its reader. */
static bool sim_take(struct sim *s)
{
	if (s->free_slots) {
		s->free_slots--;
		return true;
	}
	for (int pass = 0; pass < 3; pass++) {
		uint8_t w = pass == 1 ? SIM_MAIN : SIM_PF;
		uint32_t best = UINT32_MAX;
		for (uint32_t i = 0; i < s->n; i++)
			if (s->list[i] == w && (pass || sim_stale(s, i)) &&
			    (best == UINT32_MAX || s->stamp[i] < s->stamp[best]))
				best = i;
		if (best == UINT32_MAX)
			continue;
		if (s->prefetched[best])
			s->st.prefetch_wasted_bytes += s->raw;
		s->ready[best] = false;
		s->prefetched[best] = false;
		s->list[best] = SIM_NONE;
		s->st.evictions++;
		s->took[pass]++;
		return true;
	}
	return false;
}

static bool sim_can_take(const struct sim *s)
{
	if (s->free_slots)
		return true;
	for (uint32_t i = 0; i < s->n; i++)
		if (s->list[i] != SIM_NONE)
			return true;
	return false;
}

static void sim_acquire(struct sim *s, uint32_t i)
{
	s->layer_seq[i / s->n_expert] = ++s->seq;
	s->cur_layer = i / s->n_expert;
	if (s->ready[i]) {
		s->st.hits++;
		if (s->prefetched[i]) {
			s->prefetched[i] = false;
			s->st.prefetch_used++;
		}
	} else {
		s->st.misses++;
		if (!sim_take(s))
			t_fatal("sim: no slot (the test holds too many pins)");
		s->st.loads++;
		s->st.bytes_read += s->raw;
		s->ready[i] = true;
	}
	s->list[i] = SIM_NONE;
	s->pins[i]++;
}

static void sim_release(struct sim *s, uint32_t i)
{
	if (--s->pins[i] == 0)
		sim_append(s, i, SIM_MAIN);
}

/* The expected answer of ms_cache_prefetch. */
static int sim_prefetch(struct sim *s, uint32_t i)
{
	if (s->ready[i])
		return 0;
	if (!sim_take(s))
		return -EBUSY;
	s->st.loads++;
	s->st.prefetch_issued++;
	s->st.bytes_read += s->raw;
	s->ready[i] = true;
	s->prefetched[i] = true;
	s->pf_seq[i] = s->seq;
	sim_append(s, i, SIM_PF);
	return 0;
}

static void sim_compare(struct sim *s, struct ms_cache *c, uint32_t n_expert,
			unsigned step, const char *op)
{
	struct ms_cache_stats st = stats(c);
	uint64_t sab = ct_sabotage() == 1;
#define CMP(f)                                                                 \
	if (st.f != s->st.f + (sab && !strcmp(#f, "hits")))                    \
	t_fail_at(__FILE__, __LINE__, "step %u (%s): %s = %llu, the model says %llu", \
		  step, op, #f, (unsigned long long)st.f,                      \
		  (unsigned long long)(s->st.f + (sab && !strcmp(#f, "hits"))))
	CMP(hits);
	CMP(misses);
	CMP(evictions);
	CMP(loads);
	CMP(bytes_read);
	CMP(prefetch_issued);
	CMP(prefetch_used);
	CMP(prefetch_wasted_bytes);
	CMP(busy);
	CMP(load_failures);
#undef CMP
	uint32_t ready = 0, pinned = 0;
	for (uint32_t i = 0; i < s->n; i++) {
		uint32_t pins = 0;
		enum ms_entry_state want = s->ready[i] ? MS_ENTRY_READY : MS_ENTRY_EMPTY;
		enum ms_entry_state got = ms_cache_state(c, i / n_expert, i % n_expert,
							 &pins);
		if (got != want || pins != s->pins[i]) {
			t_fail_at(__FILE__, __LINE__,
				  "step %u (%s): layer %u expert %u is state %d pins %u, "
				  "the model says state %d pins %u",
				  step, op, i / n_expert, i % n_expert, got, pins, want,
				  s->pins[i]);
			return;
		}
		ready += s->ready[i];
		pinned += s->pins[i] > 0;
	}
	if (st.ready_entries != ready || st.pinned_entries != pinned ||
	    st.loading_entries)
		t_fail_at(__FILE__, __LINE__,
			  "step %u (%s): ready %llu pinned %llu loading %llu, the model "
			  "says %u %u 0",
			  step, op, (unsigned long long)st.ready_entries,
			  (unsigned long long)st.pinned_entries,
			  (unsigned long long)st.loading_entries, ready, pinned);
}

static void test_reference(void)
{
	printf("-- reference\n");
	const uint32_t n_slots = 6, steps = 3000;
	const struct ms_model *m = tiny.m;
	struct ms_cache_config cfg;
	ct_config(&cfg, n_slots * tiny_sb, 1000);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	struct sim s = { 0 };
	s.n = m->n_layers * m->n_expert;
	s.free_slots = n_slots;
	s.raw = tiny_raw;
	s.ready = calloc(s.n, sizeof(*s.ready));
	s.pins = calloc(s.n, sizeof(*s.pins));
	s.prefetched = calloc(s.n, sizeof(*s.prefetched));
	s.list = calloc(s.n, sizeof(*s.list));
	s.stamp = calloc(s.n, sizeof(*s.stamp));
	s.n_expert = m->n_expert;
	s.layer_seq = calloc(m->n_layers, sizeof(*s.layer_seq));
	s.pf_seq = calloc(s.n, sizeof(*s.pf_seq));
	uint32_t held[8], n_held = 0, pf_last = UINT32_MAX;
	uint64_t rng = seed ^ 0x5eed;
	unsigned counts[6] = { 0 };
	if (!s.ready || !s.pins || !s.prefetched || !s.list || !s.stamp ||
	    !s.layer_seq || !s.pf_seq)
		t_fatal("out of memory");

	int failures0 = t_failures;
	for (unsigned step = 0; step < steps && t_failures == failures0; step++) {
		unsigned r = (unsigned)(t_rand(&rng) % 100);
		/* mostly the layers that run; a skewed choice of experts */
		uint32_t l = (uint32_t)(t_rand(&rng) % 10);
		l = l < 9 ? l % 4 : 4;
		uint32_t e = (uint32_t)(t_rand(&rng) % 2 ? t_rand(&rng) % 4
							 : t_rand(&rng) % 16);
		uint32_t i = l * m->n_expert + e;
		const char *op;
		if (r < 45 && pf_last != UINT32_MAX && t_rand(&rng) % 2) {
			/* use what was prefetched, now and then */
			i = pf_last;
			l = i / m->n_expert;
			e = i % m->n_expert;
			pf_last = UINT32_MAX;
		}
		if (r < 45 && n_held < 8 && (s.ready[i] || sim_can_take(&s))) {
			struct ms_expert_loc loc;
			bool was_ready = s.ready[i];
			sim_acquire(&s, i);
			if (step % 2) {
				op = "acquire_wait";
				int rc = ms_cache_acquire_wait(c, l, e, 0, &loc);
				T_CHECK(rc == 0, "step %u: acquire_wait(%u, %u) = %d", step, l,
					e, rc);
			} else {
				op = "acquire";
				struct ct_answer w;
				ct_answer_init(&w);
				int rc = ms_cache_acquire(c, l, e, ct_answer_cb, &w, &loc);
				T_CHECK(rc == (was_ready ? 0 : -EINPROGRESS),
					"step %u: acquire(%u, %u) = %d, %s", step, l, e, rc,
					was_ready ? "READY" : "absent");
				if (rc == -EINPROGRESS) {
					T_CHECK(ct_answer_wait(&w, 10) && w.result == 0,
						"step %u: callback %d", step, w.result);
					loc = w.loc;
				}
				ct_answer_destroy(&w);
			}
			VERIFY(c, &tiny, l, e, &loc);
			held[n_held++] = i;
			counts[0]++;
		} else if (r < 80) {
			if (!n_held)
				continue;
			op = "release";
			uint32_t k = (uint32_t)(t_rand(&rng) % n_held);
			uint32_t h = held[k];
			held[k] = held[--n_held];
			sim_release(&s, h);
			ms_cache_release(c, h / m->n_expert, h % m->n_expert);
			counts[1]++;
		} else if (r < 94) {
			op = "prefetch";
			bool was_ready = s.ready[i];
			int want = sim_prefetch(&s, i);
			if (!want && !was_ready)
				pf_last = i;
			int rc = ms_cache_prefetch(c, l, e);
			T_CHECK(rc == want, "step %u: prefetch(%u, %u) = %d, the model "
				"says %d", step, l, e, rc, want);
			ct_wait_settled(c, l, e, 10);
			counts[2 + (rc != 0)]++;
		} else if (r < 96) {
			if (s.pins[i])
				continue;
			op = "unpinned release";
			ms_cache_release(c, l, e);
			counts[4]++;
		} else {
			op = "check";
			CT_CACHE_OK(c, "reference");
			counts[5]++;
		}
		sim_compare(&s, c, m->n_expert, step, op);
	}
	while (n_held) {
		uint32_t h = held[--n_held];
		sim_release(&s, h);
		ms_cache_release(c, h / m->n_expert, h % m->n_expert);
	}
	sim_compare(&s, c, m->n_expert, steps, "end");
	CT_CACHE_OK(c, "end of reference");
	struct ms_cache_stats st = stats(c);
	printf("%u steps: %u acquires, %u releases, %u prefetches (+%u -EBUSY), "
	       "%u refused releases, %u checks\n",
	       steps, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]);
	printf("hits %llu misses %llu evictions %llu loads %llu prefetch issued %llu "
	       "used %llu wasted %llu B\n",
	       (unsigned long long)st.hits, (unsigned long long)st.misses,
	       (unsigned long long)st.evictions, (unsigned long long)st.loads,
	       (unsigned long long)st.prefetch_issued,
	       (unsigned long long)st.prefetch_used,
	       (unsigned long long)st.prefetch_wasted_bytes);
	printf("evictions: %u stale prefetches, %u LRU, %u prefetches ahead of "
	       "their reader\n", s.took[0], s.took[1], s.took[2]);
	T_CHECK(st.evictions > 100 && st.hits > 100 && st.prefetch_used > 10 &&
			st.prefetch_wasted_bytes > 0 && counts[3] > 0 &&
			s.took[0] > 0 && s.took[1] > 0,
		"the sequence did not exercise the policy");
	ms_cache_free(c);
	free(s.ready);
	free(s.pins);
	free(s.prefetched);
	free(s.list);
	free(s.stamp);
	free(s.layer_seq);
	free(s.pf_seq);
}

/* ---- every slot pinned ------------------------------------------------------------------ */

static void test_full(void)
{
	printf("-- full\n");
	const uint32_t timeout_ms = 400;
	struct ms_cache_config cfg;
	ct_config(&cfg, 6 * tiny_sb, timeout_ms);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	struct ms_expert_loc loc;
	for (uint32_t e = 0; e < 6; e++)
		HOLD(c, &tiny, 0, e, NULL);
	struct ms_cache_stats st = stats(c), before;
	T_EQ_U64(st.pinned_entries, 6);
	T_EQ_U64(st.held_bytes, st.budget_bytes);
	T_EQ_U64(ms_cache_prefetch(c, 1, 0), (uint64_t)-EBUSY);

	/* an async acquire waits, then hears -EBUSY, holding no pin */
	struct ct_answer a;
	ct_answer_init(&a);
	before = stats(c);
	double t0 = ct_now();
	T_EQ_U64(ms_cache_acquire(c, 1, 0, ct_answer_cb, &a, &loc),
		 (uint64_t)-EINPROGRESS);
	ms_cache_tick(c); /* nothing is due yet */
	ct_sleep_ms(timeout_ms / 2);
	T_EQ_U64(ct_answer_calls(&a), 0);
	T_CHECK(ct_answer_wait(&a, 10), "no -EBUSY answer in 10 s");
	double dt = (a.t_done - t0) * 1000;
	double want = ct_sabotage() == 2 ? 2.0 * timeout_ms : timeout_ms;
	printf("-EBUSY after %.1f ms (acquire_timeout_ms %u)\n", dt, timeout_ms);
	T_EQ_U64(a.result, (uint64_t)-EBUSY);
	T_CHECK(!a.has_loc, "a failure came with a location");
	T_CHECK(dt >= want - 5 && dt <= want + 750,
		"-EBUSY after %.1f ms, expected about %.0f", dt, want);
	EXPECT_STATE(c, 1, 0, MS_ENTRY_EMPTY, 0);
	st = stats(c);
	T_EQ_U64(st.busy - before.busy, 1);
	T_EQ_U64(st.misses - before.misses, 1);
	T_EQ_U64(st.pinned_entries, 6);
	for (uint32_t e = 0; e < 6; e++)
		EXPECT_STATE(c, 0, e, MS_ENTRY_READY, 1);
	CT_CACHE_OK(c, "after -EBUSY");

	/* the slot wait's timeout can change while running (SIGHUP) */
	ms_cache_set_tunables(c, timeout_ms / 2, 0, 0);
	t0 = ct_now();
	int rc = ms_cache_acquire_wait(c, 1, 2, 0, &loc);
	dt = (ct_now() - t0) * 1000;
	printf("acquire_timeout_ms set to %u: %d after %.1f ms\n", timeout_ms / 2, rc,
	       dt);
	T_EQ_U64(rc, (uint64_t)-EBUSY);
	T_CHECK(dt >= timeout_ms / 2 - 5 && dt <= timeout_ms / 2 + 750,
		"-EBUSY after %.1f ms, expected about %u", dt, timeout_ms / 2);
	ms_cache_set_tunables(c, timeout_ms, 0, 0);

	/* acquire_wait with timeout_ms 0: the configured slot wait */
	t0 = ct_now();
	rc = ms_cache_acquire_wait(c, 1, 1, 0, &loc);
	dt = (ct_now() - t0) * 1000;
	printf("acquire_wait(timeout 0): %d after %.1f ms\n", rc, dt);
	T_EQ_U64(rc, (uint64_t)-EBUSY);
	T_CHECK(dt >= timeout_ms - 5 && dt <= timeout_ms + 750,
		"acquire_wait: -EBUSY after %.1f ms, expected about %u", dt, timeout_ms);
	EXPECT_STATE(c, 1, 1, MS_ENTRY_EMPTY, 0);

	/* two acquires of one expert waiting for a slot: two -EBUSY answers,
	 * and each acquire counts once, as a hit or a miss */
	struct ct_answer w2[2];
	before = stats(c);
	for (int i = 0; i < 2; i++) {
		ct_answer_init(&w2[i]);
		T_EQ_U64(ms_cache_acquire(c, 1, 3, ct_answer_cb, &w2[i], &loc),
			 (uint64_t)-EINPROGRESS);
	}
	for (int i = 0; i < 2; i++) {
		T_CHECK(ct_answer_wait(&w2[i], 10), "no answer for waiter %d", i);
		T_EQ_U64(w2[i].result, (uint64_t)-EBUSY);
		ct_answer_destroy(&w2[i]);
	}
	st = stats(c);
	T_EQ_U64(st.busy - before.busy, 2);
	T_CHECK(st.hits + st.misses - before.hits - before.misses == 2,
		"2 acquires of an expert waiting for a slot moved hits + misses by "
		"%llu (hits %+lld, misses %+lld): the second acquire is not counted",
		(unsigned long long)(st.hits + st.misses - before.hits - before.misses),
		(long long)(st.hits - before.hits), (long long)(st.misses - before.misses));
	EXPECT_STATE(c, 1, 3, MS_ENTRY_EMPTY, 0);

	/* a pin released within the timeout serves the waiter */
	struct ct_answer b;
	ct_answer_init(&b);
	before = stats(c);
	T_EQ_U64(ms_cache_acquire(c, 1, 4, ct_answer_cb, &b, &loc),
		 (uint64_t)-EINPROGRESS);
	ct_sleep_ms(timeout_ms / 3);
	T_EQ_U64(ct_answer_calls(&b), 0);
	t0 = ct_now();
	ms_cache_release(c, 0, 2);
	T_CHECK(ct_answer_wait(&b, 10), "the waiter was not answered");
	dt = (b.t_done - t0) * 1000;
	printf("waiter served %.1f ms after the release\n", dt);
	T_EQ_U64(b.result, 0);
	if (b.has_loc)
		VERIFY(c, &tiny, 1, 4, &b.loc);
	T_CHECK(dt < timeout_ms, "served %.1f ms after the release", dt);
	EXPECT_STATE(c, 0, 2, MS_ENTRY_EMPTY, 0); /* the only one evictable */
	EXPECT_STATE(c, 1, 4, MS_ENTRY_READY, 1);
	st = stats(c);
	T_EQ_U64(st.evictions - before.evictions, 1);
	T_EQ_U64(st.busy - before.busy, 0);
	T_EQ_U64(st.misses - before.misses, 1);
	CT_CACHE_OK(c, "after serving the waiter");
	for (uint32_t e = 0; e < 6; e++)
		if (e != 2)
			ms_cache_release(c, 0, e);
	ms_cache_release(c, 1, 4);
	st = stats(c);
	T_EQ_U64(st.pinned_entries, 0);
	/* the slots are usable again */
	for (uint32_t e = 0; e < 6; e++) {
		if (!HOLD(c, &tiny, 2, e, NULL))
			ms_cache_release(c, 2, e);
	}
	CT_CACHE_OK(c, "end of full");
	ms_cache_free(c);
	ct_answer_destroy(&a);
	ct_answer_destroy(&b);
}

/* acquire_wait's own timeout (cache.h: -ETIMEDOUT after timeout_ms; a pin
 * that arrives later is dropped by the cache), with a configured slot wait
 * far longer. */
static void test_wait_timeout(void)
{
	printf("-- wait_timeout\n");
	struct ms_cache_config cfg;
	ct_config(&cfg, 4 * tiny_sb, 3000);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	struct ms_expert_loc loc;
	for (uint32_t e = 0; e < 4; e++)
		HOLD(c, &tiny, 0, e, NULL);
	double t0 = ct_now();
	int rc = ms_cache_acquire_wait(c, 1, 1, 100, &loc);
	double dt = (ct_now() - t0) * 1000;
	printf("acquire_wait(timeout_ms 100), acquire_timeout_ms 3000: %d after "
	       "%.1f ms\n", rc, dt);
	T_EQ_U64(rc, (uint64_t)-ETIMEDOUT);
	T_CHECK(dt < 1000,
		"acquire_wait(timeout_ms 100) returned after %.0f ms: the argument is "
		"ignored (acquire_timeout_ms 3000 applies)", dt);
	for (uint32_t e = 0; e < 4; e++)
		ms_cache_release(c, 0, e);
	/* a wait that is answered in time is unaffected; whatever the given-up
	 * wait left behind, no pin survives it */
	rc = ms_cache_acquire_wait(c, 1, 1, 1000, &loc);
	T_EQ_U64(rc, 0);
	if (!rc) {
		VERIFY(c, &tiny, 1, 1, &loc);
		ms_cache_release(c, 1, 1);
	}
	double end = ct_now() + 5;
	uint32_t pins = 1;
	while (ms_cache_state(c, 1, 1, &pins) != MS_ENTRY_READY || pins)
		if (ct_now() > end)
			break;
		else
			ct_sleep_ms(5);
	EXPECT_STATE(c, 1, 1, MS_ENTRY_READY, 0);
	T_EQ_U64(stats(c).pinned_entries, 0);
	CT_CACHE_OK(c, "wait_timeout");
	ms_cache_free(c);
}

/* ---- prefetch ----------------------------------------------------------------------------- */

static unsigned count_state(struct ms_cache *c, uint32_t l, uint32_t e0,
			    uint32_t e1, enum ms_entry_state s)
{
	unsigned n = 0;
	for (uint32_t e = e0; e <= e1; e++)
		n += ms_cache_state(c, l, e, NULL) == s;
	return n;
}

/* A demand read overtakes the prefetches queued before it. */
static void prefetch_priority(void)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, 16 * tiny_sb, 5000);
	slow_io(&cfg);
	cfg.max_prefetch_bytes = 16 * tiny_raw;
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (uint32_t e = 0; e < 8; e++)
		T_EQ_U64(ms_cache_prefetch(c, 1, e), 0);
	T_EQ_U64(ms_cache_prefetch(c, 1, 0), 0); /* already loading */
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.prefetch_issued, 8);
	T_EQ_U64(st.loads, 8);
	T_EQ_U64(st.loading_entries, 8);
	T_EQ_U64(st.hits + st.misses, 0);
	struct ct_answer d;
	struct ms_expert_loc loc;
	ct_answer_init(&d);
	unsigned pre = count_state(c, 1, 0, 7, MS_ENTRY_READY);
	T_EQ_U64(ms_cache_acquire(c, 0, 0, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	T_CHECK(ct_answer_wait(&d, 60) && d.result == 0, "demand: %d", d.result);
	unsigned done = count_state(c, 1, 0, 7, MS_ENTRY_READY);
	printf("priority: %u of 8 earlier prefetches were READY when the demand "
	       "read was queued, %u when it finished\n", pre, done);
	T_CHECK(done <= pre + 1, "%u of 8 prefetches queued before a demand read "
		"finished first (%u had before it was queued)", done, pre);
	VERIFY(c, &tiny, 0, 0, &d.loc);
	T_CHECK(ct_wait_quiet(c, 60), "prefetches never finished");
	T_EQ_U64(count_state(c, 1, 0, 7, MS_ENTRY_READY), 8);
	st = stats(c);
	T_EQ_U64(st.loads, 9);
	T_EQ_U64(st.misses, 1);
	T_EQ_U64(st.bytes_read, 9 * tiny_raw);
	T_EQ_U64(st.prefetch_used, 0);
	for (uint32_t e = 0; e < 8; e++) {
		if (!HOLD(c, &tiny, 1, e, NULL))
			ms_cache_release(c, 1, e);
	}
	T_EQ_U64(stats(c).prefetch_used, 8);
	ms_cache_release(c, 0, 0);
	CT_CACHE_OK(c, "priority");
	ms_cache_free(c);
	ct_answer_destroy(&d);
}

/* A demand acquire joins an in-flight prefetch: no second read, promoted. */
static void prefetch_join(void)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, 16 * tiny_sb, 5000);
	slow_io(&cfg);
	cfg.max_prefetch_bytes = 16 * tiny_raw;
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (uint32_t e = 0; e < 6; e++)
		T_EQ_U64(ms_cache_prefetch(c, 2, e), 0);
	struct ct_answer d;
	struct ms_expert_loc loc;
	ct_answer_init(&d);
	unsigned pre = count_state(c, 2, 0, 4, MS_ENTRY_READY);
	T_EQ_U64(ms_cache_acquire(c, 2, 5, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.hits, 1); /* in flight already: no new read */
	T_EQ_U64(st.misses, 0);
	T_EQ_U64(st.prefetch_used, 1);
	T_EQ_U64(st.loads, 6);
	T_CHECK(ct_answer_wait(&d, 60) && d.result == 0, "join: %d", d.result);
	unsigned done = count_state(c, 2, 0, 4, MS_ENTRY_READY);
	printf("join: %u of 5 prefetches queued before the joined one were READY "
	       "at the join, %u when it finished\n", pre, done);
	T_CHECK(done <= pre + 1, "the joined prefetch was not promoted: %u of the 5 "
		"prefetches queued before it finished first (%u at the join)", done,
		pre);
	VERIFY(c, &tiny, 2, 5, &d.loc);
	EXPECT_STATE(c, 2, 5, MS_ENTRY_READY, 1);
	T_CHECK(ct_wait_quiet(c, 60), "prefetches never finished");
	st = stats(c);
	T_EQ_U64(st.loads, 6);
	T_EQ_U64(st.prefetch_issued, 6);
	T_EQ_U64(st.prefetch_used, 1);
	T_EQ_U64(st.prefetch_wasted_bytes, 0);
	T_EQ_U64(st.bytes_read, 6 * tiny_raw);
	ms_cache_release(c, 2, 5);
	CT_CACHE_OK(c, "join");
	ms_cache_free(c);
	ct_answer_destroy(&d);
}

/* The in-flight cap: -E2BIG, set and default (1/8 of the arena). */
static void prefetch_cap(void)
{
	for (int dflt = 0; dflt < 2; dflt++) {
		struct ms_cache_config cfg;
		ct_config(&cfg, 16 * tiny_sb, 5000);
		slow_io(&cfg);
		cfg.max_prefetch_bytes = dflt ? 0 : 2 * tiny_raw + tiny_raw / 2;
		uint64_t cap = dflt ? 16 * tiny_sb / 8 : cfg.max_prefetch_bytes;
		uint32_t fit = (uint32_t)(cap / tiny_raw);
		if (ct_sabotage() == 3)
			fit--;
		struct ms_cache *c = cache_new(&tiny, &cfg);
		/* four demand loads first: the prefetches queue behind them and
		 * stay in flight for at least four loads' time */
		struct ct_answer d[4];
		struct ms_expert_loc loc;
		for (uint32_t i = 0; i < 4; i++) {
			ct_answer_init(&d[i]);
			T_EQ_U64(ms_cache_acquire(c, 2, i, ct_answer_cb, &d[i], &loc),
				 (uint64_t)-EINPROGRESS);
		}
		for (uint32_t e = 0; e < fit; e++)
			T_EQ_U64(ms_cache_prefetch(c, 3, e), 0);
		int rc = ms_cache_prefetch(c, 3, fit);
		printf("cap %llu B (%s): %u prefetches in flight, the next: %d\n",
		       (unsigned long long)cap, dflt ? "default" : "set", fit, rc);
		T_EQ_U64(rc, (uint64_t)-E2BIG);
		T_EQ_U64(ms_cache_prefetch(c, 3, 0), 0); /* already loading */
		EXPECT_STATE(c, 3, fit, MS_ENTRY_EMPTY, 0);
		T_EQ_U64(stats(c).prefetch_issued, fit);
		T_CHECK(ct_wait_quiet(c, 60), "prefetches never finished");
		T_EQ_U64(ms_cache_prefetch(c, 3, fit), 0);
		T_CHECK(ct_wait_quiet(c, 60), "prefetch never finished");
		EXPECT_STATE(c, 3, fit, MS_ENTRY_READY, 0);
		T_EQ_U64(stats(c).prefetch_issued, fit + 1);
		for (uint32_t i = 0; i < 4; i++) {
			T_CHECK(ct_answer_wait(&d[i], 60) && d[i].result == 0,
				"demand (2, %u): %d", i, d[i].result);
			ms_cache_release(c, 2, i);
			ct_answer_destroy(&d[i]);
		}
		CT_CACHE_OK(c, "cap");
		ms_cache_free(c);
	}
}

/* Nothing but pinned or loading entries: -EBUSY; never evicts them. */
static void prefetch_busy(void)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, 6 * tiny_sb, 5000);
	slow_io(&cfg);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	struct ct_answer d;
	struct ms_expert_loc loc;
	ct_answer_init(&d);
	for (uint32_t e = 0; e < 5; e++)
		HOLD(c, &tiny, 0, e, NULL);
	T_EQ_U64(ms_cache_acquire(c, 1, 0, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	T_EQ_U64(ms_cache_prefetch(c, 1, 1), (uint64_t)-EBUSY); /* 5 pinned, 1 loading */
	T_CHECK(ct_answer_wait(&d, 60) && d.result == 0, "acquire (1, 0): %d", d.result);
	T_EQ_U64(ms_cache_prefetch(c, 1, 1), (uint64_t)-EBUSY); /* 6 pinned */
	ms_cache_release(c, 1, 0);
	struct ms_cache_stats before = stats(c);
	T_EQ_U64(ms_cache_prefetch(c, 1, 1), 0); /* evicts (1, 0) */
	EXPECT_STATE(c, 1, 0, MS_ENTRY_EMPTY, 0);
	/* 5 pinned, 1 loading: -EBUSY, unless (1, 1) finished already (a load
	 * takes ~60 ms; this thread would have to sleep that long) */
	int rc = ms_cache_prefetch(c, 1, 2);
	if (rc == 0) {
		printf("busy: the prefetch finished before the next call (not "
		       "checked)\n");
		ct_wait_quiet(c, 60);
		T_EQ_U64(ms_cache_prefetch(c, 1, 1), 0);
	} else {
		T_EQ_U64(rc, (uint64_t)-EBUSY);
	}
	T_CHECK(ct_wait_settled(c, 1, 1, 60) == MS_ENTRY_READY, "prefetch (1, 1)");
	T_EQ_U64(ms_cache_prefetch(c, 1, 2), 0); /* evicts the unused (1, 1) */
	T_CHECK(ct_wait_quiet(c, 60), "prefetch (1, 2)");
	EXPECT_STATE(c, 1, 1, MS_ENTRY_EMPTY, 0);
	EXPECT_STATE(c, 1, 2, MS_ENTRY_READY, 0);
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.evictions - before.evictions, 2 + (rc == 0));
	T_EQ_U64(st.prefetch_wasted_bytes, (1 + (rc == 0)) * tiny_raw);
	for (uint32_t e = 0; e < 5; e++) {
		EXPECT_STATE(c, 0, e, MS_ENTRY_READY, 1);
		ms_cache_release(c, 0, e);
	}
	CT_CACHE_OK(c, "busy");
	ms_cache_free(c);
	ct_answer_destroy(&d);
}

/* Eviction order: a never-used prefetch whose reader came and went (stale)
 * goes first, then the least recently used expert; a prefetch still ahead of
 * its reader is kept over the LRU. */
static void prefetch_order(void)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, 6 * tiny_sb, 5000);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (uint32_t e = 0; e < 5; e++)
		if (!HOLD(c, &tiny, 0, e, NULL))
			ms_cache_release(c, 0, e);
	T_EQ_U64(ms_cache_prefetch(c, 1, 0), 0);
	T_CHECK(ct_wait_settled(c, 1, 0, 10) == MS_ENTRY_READY, "prefetch (1, 0)");
	/* layer 1 not read yet: the prefetch is ahead of its reader, kept */
	if (!HOLD(c, &tiny, 2, 0, NULL))
		ms_cache_release(c, 2, 0);
	EXPECT_STATE(c, 1, 0, MS_ENTRY_READY, 0); /* the prefetch ahead ... */
	EXPECT_STATE(c, 0, 0, MS_ENTRY_EMPTY, 0); /* ... over the LRU */
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.evictions, 1);
	T_EQ_U64(st.prefetch_wasted_bytes, 0);
	/* layer 1 being read (another expert of it): not stale yet, the next
	 * expert of the batch may be it */
	if (!HOLD(c, &tiny, 1, 1, NULL))
		ms_cache_release(c, 1, 1);
	EXPECT_STATE(c, 1, 0, MS_ENTRY_READY, 0);
	EXPECT_STATE(c, 0, 1, MS_ENTRY_EMPTY, 0);
	/* the reader moved on to layer 2 without it: stale, evicted first */
	if (!HOLD(c, &tiny, 2, 1, NULL))
		ms_cache_release(c, 2, 1);
	EXPECT_STATE(c, 1, 0, MS_ENTRY_EMPTY, 0);
	EXPECT_STATE(c, 0, 2, MS_ENTRY_READY, 0);
	st = stats(c);
	T_EQ_U64(st.evictions, 3);
	T_EQ_U64(st.prefetch_wasted_bytes, tiny_raw);
	T_EQ_U64(ms_cache_prefetch(c, 3, 0), 0); /* no prefetch left: the LRU */
	T_CHECK(ct_wait_settled(c, 3, 0, 10) == MS_ENTRY_READY, "prefetch (3, 0)");
	EXPECT_STATE(c, 0, 2, MS_ENTRY_EMPTY, 0);
	if (!HOLD(c, &tiny, 3, 0, NULL)) /* used: now an ordinary entry */
		ms_cache_release(c, 3, 0);
	if (!HOLD(c, &tiny, 4, 0, NULL))
		ms_cache_release(c, 4, 0);
	EXPECT_STATE(c, 0, 3, MS_ENTRY_EMPTY, 0); /* the LRU ... */
	EXPECT_STATE(c, 3, 0, MS_ENTRY_READY, 0); /* ... not the used prefetch */
	st = stats(c);
	T_EQ_U64(st.evictions, 5);
	T_EQ_U64(st.prefetch_used, 1);
	T_EQ_U64(st.prefetch_wasted_bytes, tiny_raw);
	/* every slot a prefetch ahead of its reader but one pinned: the
	 * oldest such prefetch goes when nothing else can */
	HOLD(c, &tiny, 4, 1, NULL);
	for (uint32_t e = 5; e < 10; e++) {
		T_EQ_U64(ms_cache_prefetch(c, 1, e), 0);
		T_CHECK(ct_wait_settled(c, 1, e, 10) == MS_ENTRY_READY,
			"prefetch (1, %u)", e);
	}
	T_EQ_U64(ms_cache_prefetch(c, 2, 5), 0);
	T_CHECK(ct_wait_settled(c, 2, 5, 10) == MS_ENTRY_READY, "prefetch (2, 5)");
	EXPECT_STATE(c, 1, 5, MS_ENTRY_EMPTY, 0);
	EXPECT_STATE(c, 1, 6, MS_ENTRY_READY, 0);
	EXPECT_STATE(c, 4, 1, MS_ENTRY_READY, 1);
	ms_cache_release(c, 4, 1);
	CT_CACHE_OK(c, "order");
	ms_cache_free(c);
}

/* A prefetch that finishes while an acquire waits for a slot is the
 * evictable entry that acquire needs. */
static void prefetch_frees_waiter(void)
{
	struct ms_cache_config cfg;
	const uint32_t timeout_ms = 1500;
	ct_config(&cfg, 6 * tiny_sb, timeout_ms);
	slow_io(&cfg);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (uint32_t e = 0; e < 5; e++)
		HOLD(c, &tiny, 0, e, NULL);
	T_EQ_U64(ms_cache_prefetch(c, 1, 0), 0);
	EXPECT_STATE(c, 1, 0, MS_ENTRY_LOADING, 0);
	struct ct_answer d;
	struct ms_expert_loc loc;
	ct_answer_init(&d);
	T_EQ_U64(ms_cache_acquire(c, 1, 1, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	/* READY, or already evicted for the waiter */
	T_CHECK(ct_wait_settled(c, 1, 0, 60) != MS_ENTRY_LOADING, "prefetch (1, 0)");
	double t_ready = ct_now();
	T_CHECK(ct_answer_wait(&d, 60), "no answer");
	double dt = (d.t_done - t_ready) * 1000;
	printf("waiter answered %d %.0f ms after the prefetch it needed finished\n",
	       d.result, dt);
	T_CHECK(d.result == 0 && dt < timeout_ms / 2,
		"an acquire waiting for a slot got %d %.0f ms after a never-used "
		"prefetch finished and became evictable (finished prefetches do not "
		"serve slot waiters)",
		d.result, dt);
	if (d.result == 0) {
		VERIFY(c, &tiny, 1, 1, &d.loc);
		ms_cache_release(c, 1, 1);
	}
	for (uint32_t e = 0; e < 5; e++)
		ms_cache_release(c, 0, e);
	CT_CACHE_OK(c, "prefetch frees a waiter");
	ms_cache_free(c);
	ct_answer_destroy(&d);
}

static void test_prefetch(void)
{
	printf("-- prefetch\n");
	prefetch_priority();
	prefetch_join();
	prefetch_cap();
	prefetch_busy();
	prefetch_order();
	prefetch_frees_waiter();
}

/* ---- cancel_stale ---------------------------------------------------------------------------- */

static void test_cancel(void)
{
	printf("-- cancel\n");
	struct ms_cache_config cfg;
	ct_config(&cfg, 24 * tiny_sb, 5000);
	slow_io(&cfg);
	cfg.max_prefetch_bytes = 24 * tiny_raw;
	struct ms_cache *c = cache_new(&tiny, &cfg);
	T_EQ_U64(ms_cache_cancel_stale(c, 4), 0); /* nothing in flight */
	/* layer 2 first: the queue is served in order, so the layer 0 and 1
	 * prefetches cannot finish before cancel_stale (8 loads of ~60 ms are
	 * ahead of them) */
	for (uint32_t e = 0; e < 8; e++)
		T_EQ_U64(ms_cache_prefetch(c, 2, e), 0);
	for (uint32_t l = 0; l < 2; l++)
		for (uint32_t e = 0; e < 4; e++)
			T_EQ_U64(ms_cache_prefetch(c, l, e), 0);
	struct ct_answer d;
	struct ms_expert_loc loc;
	ct_answer_init(&d);
	/* a reader joins (0, 3): it must not be cancelled */
	T_EQ_U64(ms_cache_acquire(c, 0, 3, ct_answer_cb, &d, &loc),
		 (uint64_t)-EINPROGRESS);
	T_EQ_U64(ms_cache_cancel_stale(c, 0), 0); /* no layer before 0 */
	unsigned n = ms_cache_cancel_stale(c, 2);
	printf("cancel_stale(2): %u cancelled\n", n);
	T_EQ_U64(n, 7); /* (0, 0..2) and (1, 0..3) */
	T_CHECK(ct_answer_wait(&d, 60) && d.result == 0,
		"the joined prefetch (0, 3): %d", d.result);
	VERIFY(c, &tiny, 0, 3, &d.loc);
	T_CHECK(ct_wait_quiet(c, 60), "loads never finished");
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.prefetch_cancelled, 7);
	T_EQ_U64(count_state(c, 0, 0, 2, MS_ENTRY_EMPTY), 3);
	T_EQ_U64(count_state(c, 1, 0, 3, MS_ENTRY_EMPTY), 4);
	T_EQ_U64(count_state(c, 2, 0, 7, MS_ENTRY_READY), 8);
	T_EQ_U64(st.ready_entries, 9);
	T_EQ_U64(st.held_bytes, 9 * tiny_sb);
	T_EQ_U64(st.load_failures, 0);
	CT_CACHE_OK(c, "after cancel");
	/* the cancelled ones load fine */
	struct ms_cache_stats before = stats(c);
	if (!HOLD(c, &tiny, 0, 1, NULL))
		ms_cache_release(c, 0, 1);
	if (!HOLD(c, &tiny, 1, 2, NULL))
		ms_cache_release(c, 1, 2);
	st = stats(c);
	T_EQ_U64(st.misses - before.misses, 2);
	T_EQ_U64(ms_cache_prefetch(c, 1, 3), 0);
	T_CHECK(ct_wait_settled(c, 1, 3, 60) == MS_ENTRY_READY, "prefetch again");
	ms_cache_release(c, 0, 3);
	CT_CACHE_OK(c, "end of cancel");
	/* stale by reading: prefetches of layer 3 in flight, a reader takes
	 * one expert of layer 3 (still reading it: nothing stale), then moves
	 * on to layer 4: the rest of layer 3's are stale, cancelled */
	ct_wait_quiet(c, 60);
	before = stats(c);
	for (uint32_t e = 0; e < 6; e++)
		T_EQ_U64(ms_cache_prefetch(c, 3, e), 0);
	if (!HOLD(c, &tiny, 3, 9, NULL))
		ms_cache_release(c, 3, 9);
	T_EQ_U64(ms_cache_cancel_stale(c, 0), 0);
	if (!HOLD(c, &tiny, 4, 0, NULL))
		ms_cache_release(c, 4, 0);
	unsigned loading = count_state(c, 3, 0, 5, MS_ENTRY_LOADING);
	n = ms_cache_cancel_stale(c, 0);
	printf("cancel_stale(0) after the reader left layer 3: %u cancelled, %u "
	       "were loading\n", n, loading);
	T_CHECK(n >= 1 && n <= loading, "cancel_stale(0) = %u with %u loading", n,
		loading);
	T_CHECK(ct_wait_quiet(c, 60), "loads never finished");
	st = stats(c);
	T_EQ_U64(st.prefetch_cancelled - before.prefetch_cancelled, n);
	T_EQ_U64(count_state(c, 3, 0, 5, MS_ENTRY_EMPTY), n);
	CT_CACHE_OK(c, "end of stale cancel");
	ms_cache_free(c);
	ct_answer_destroy(&d);
}

/* ---- shutdown ---------------------------------------------------------------------------------- */

/* ms_cache_free with a demand load and a prefetch in flight and an acquire
 * waiting for a slot: the load's reader hears its result, the waiter
 * -ESHUTDOWN, each exactly once, and free returns. */
static void test_shutdown(void)
{
	printf("-- shutdown\n");
	int fds = ct_fd_count();
	struct ms_cache_config cfg;
	ct_config(&cfg, 6 * tiny_sb, 5000);
	slow_io(&cfg);
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (uint32_t e = 0; e < 4; e++)
		HOLD(c, &tiny, 0, e, NULL);
	struct ct_answer load, waiter;
	struct ms_expert_loc loc;
	ct_answer_init(&load);
	ct_answer_init(&waiter);
	/* the demand load first, the prefetch queued behind it: neither is
	 * evictable for two loads' time, so (1, 2) waits for a slot */
	T_EQ_U64(ms_cache_acquire(c, 1, 1, ct_answer_cb, &load, &loc),
		 (uint64_t)-EINPROGRESS);
	T_EQ_U64(ms_cache_prefetch(c, 1, 0), 0);
	T_EQ_U64(ms_cache_acquire(c, 1, 2, ct_answer_cb, &waiter, &loc),
		 (uint64_t)-EINPROGRESS);
	bool waiting = ms_cache_state(c, 1, 0, NULL) == MS_ENTRY_LOADING &&
		       ms_cache_state(c, 1, 2, NULL) == MS_ENTRY_EMPTY;
	double t0 = ct_now();
	ms_cache_free(c);
	printf("ms_cache_free took %.0f ms; the load's reader heard %d (%u call), the "
	       "slot waiter %d (%u call)\n",
	       (ct_now() - t0) * 1000, load.result, load.calls, waiter.result,
	       waiter.calls);
	T_EQ_U64(load.calls, 1);
	T_EQ_U64(load.result, 0);
	T_EQ_U64(waiter.calls, 1);
	if (waiting)
		T_EQ_U64(waiter.result, (uint64_t)-ESHUTDOWN);
	else
		printf("shutdown: the prefetch finished first, (1, 2) got a slot (not "
		       "checked)\n");
	T_EQ_U64(ct_fd_count(), fds);
	ct_answer_destroy(&load);
	ct_answer_destroy(&waiter);
}

/* ---- cache.pin --------------------------------------------------------------------------------- */

/* n acquire + release of random experts of layers 0-3 other than keep[];
 * with `what`, each of keep[] must stay READY (and unpinned) throughout. */
static void churn(struct ms_cache *c, uint64_t *rng, unsigned n,
		  const uint32_t (*keep)[2], unsigned n_keep, const char *what)
{
	for (unsigned i = 0; i < n; i++) {
		uint32_t l = (uint32_t)(t_rand(rng) % 4), e = (uint32_t)(t_rand(rng) % 16);
		bool skip = false;
		for (unsigned k = 0; k < n_keep; k++)
			skip |= keep[k][0] == l && keep[k][1] == e;
		if (skip)
			continue;
		if (!HOLD(c, &tiny, l, e, NULL))
			ms_cache_release(c, l, e);
		for (unsigned k = 0; what && k < n_keep; k++) {
			uint32_t pins;
			enum ms_entry_state s = ms_cache_state(c, keep[k][0], keep[k][1],
							       &pins);
			if (s != MS_ENTRY_READY || pins) {
				t_fail_at(__FILE__, __LINE__,
					  "%s: (%u, %u) is state %d pins %u after %u "
					  "acquires of others",
					  what, keep[k][0], keep[k][1], s, pins, i);
				return;
			}
		}
	}
}

static void pin_spec(const char *spec, int want_rc, const char *needle1,
		     const char *needle2)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, 8 * tiny_sb, 300);
	cfg.pin = spec;
	struct ms_cache *c = NULL;
	struct ms_err err = { 0 };
	int fds = ct_fd_count();
	int rc = ms_cache_init(&c, tiny.m, &cfg, &err);
	printf("cache.pin = \"%s\": %d %s\n", spec, rc, err.msg);
	T_CHECK(rc == want_rc, "cache.pin = \"%s\": %d, expected %d", spec, rc, want_rc);
	if (rc) {
		T_CHECK(c == NULL, "a failed init left *out set");
		T_CHECK(strstr(err.msg, "cache.pin") && strstr(err.msg, needle1) &&
				(!needle2 || strstr(err.msg, needle2)),
			"cache.pin = \"%s\": the message '%s' does not name '%s'%s%s",
			spec, err.msg, needle1, needle2 ? " and " : "",
			needle2 ? needle2 : "");
		T_EQ_U64(ct_fd_count(), fds);
	} else {
		ms_cache_free(c);
	}
}

static void test_pin(void)
{
	printf("-- pin\n");
	struct ms_cache_config cfg;
	ct_config(&cfg, 8 * tiny_sb, 300);
	cfg.pin = "1:3,2:5,4:15"; /* blocks 1, 2, 4 = layers 0, 1, 3 */
	cfg.io.direct = MS_IO_DIRECT_OFF;
	static const uint32_t pinned[3][2] = { { 0, 3 }, { 1, 5 }, { 3, 15 } };
	struct ms_cache *c = cache_new(&tiny, &cfg);
	for (int k = 0; k < 3; k++) {
		T_CHECK(ct_wait_settled(c, pinned[k][0], pinned[k][1], 10) ==
				MS_ENTRY_READY,
			"pinned (%u, %u) did not load at init", pinned[k][0], pinned[k][1]);
		EXPECT_STATE(c, pinned[k][0], pinned[k][1], MS_ENTRY_READY, 0);
	}
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.pinned_entries, 3);
	T_EQ_U64(st.loads, 3);
	T_EQ_U64(st.hits + st.misses, 0);
	CT_CACHE_OK(c, "pins at init");
	uint64_t rng = seed ^ 0x9119;
	churn(c, &rng, 300, pinned, 3, "cache.pin");
	struct ms_expert_loc loc;
	for (int k = 0; k < 3; k++) {
		T_EQ_U64(ms_cache_acquire(c, pinned[k][0], pinned[k][1], ct_answer_cb,
					  NULL, &loc), 0);
		VERIFY(c, &tiny, pinned[k][0], pinned[k][1], &loc);
		ms_cache_release(c, pinned[k][0], pinned[k][1]);
	}
	churn(c, &rng, 100, pinned, 3, "cache.pin after use");
	st = stats(c);
	printf("cache.pin: %llu evictions of others, 3 pinned stayed\n",
	       (unsigned long long)st.evictions);
	T_CHECK(st.evictions > 100, "only %llu evictions", (unsigned long long)st.evictions);
	T_EQ_U64(st.pinned_entries, 3);
	CT_CACHE_OK(c, "end of pin");
	ms_cache_free(c);

	/* 8 slots, 4 used per token: 4 sticky pins fit, 5 do not */
	pin_spec("1:0,1:1,1:2,1:3", 0, NULL, NULL);
	pin_spec("1:0,1:1,1:2,1:3,1:4", -ENOSPC, "1:4", NULL);
	pin_spec("3:99", -EINVAL, "99", "16");
	pin_spec("x", -EINVAL, "'x'", NULL);
	pin_spec("0:1", -EINVAL, "block 0", NULL);  /* dense */
	pin_spec("5:1", -EINVAL, "block 5", NULL);  /* NextN: never runs */
	pin_spec("9:1", -EINVAL, "block 9", NULL);  /* no such block */
	pin_spec("1:2,,1:3", -EINVAL, "1:2,,1:3", NULL);
	pin_spec("1:", -EINVAL, "'1:'", NULL);
	pin_spec("1:2;2:3", -EINVAL, "1:2;2:3", NULL);
}

/* ---- cache.pin_top ------------------------------------------------------------------------------ */

static void test_pin_top(void)
{
	printf("-- pin_top\n");
	struct ms_cache_config cfg;
	ct_config(&cfg, 8 * tiny_sb, 300);
	cfg.io.direct = MS_IO_DIRECT_OFF; /* 6,000 loads: from the page cache */
	cfg.pin_top = 3;
	struct ms_cache *c = cache_new(&tiny, &cfg);
	static const uint32_t hot[3][2] = { { 0, 1 }, { 1, 2 }, { 2, 3 } };
	uint64_t rng = seed ^ 0x7007;
	for (unsigned i = 0; i < 4096; i++) {
		uint32_t l, e;
		if (t_rand(&rng) % 2) {
			unsigned k = (unsigned)(t_rand(&rng) % 3);
			l = hot[k][0];
			e = hot[k][1];
		} else {
			do {
				l = (uint32_t)(t_rand(&rng) % 4);
				e = (uint32_t)(t_rand(&rng) % 16);
			} while ((l == 0 && e == 1) || (l == 1 && e == 2) ||
				 (l == 2 && e == 3));
		}
		if (i == 4095)
			T_EQ_U64(stats(c).pinned_entries, 0); /* not yet */
		if (!HOLD(c, &tiny, l, e, NULL))
			ms_cache_release(c, l, e);
	}
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.pinned_entries, 3);
	for (int k = 0; k < 3; k++) {
		T_CHECK(ct_wait_settled(c, hot[k][0], hot[k][1], 10) == MS_ENTRY_READY,
			"hot (%u, %u) is not resident", hot[k][0], hot[k][1]);
		EXPECT_STATE(c, hot[k][0], hot[k][1], MS_ENTRY_READY, 0);
	}
	uint64_t ev = st.evictions;
	churn(c, &rng, 2000, hot, 3, "cache.pin_top");
	st = stats(c);
	printf("pin_top: 3 hot experts sticky after 4096 acquires; %llu evictions of "
	       "others after\n", (unsigned long long)(st.evictions - ev));
	T_CHECK(st.evictions - ev > 1000, "only %llu evictions",
		(unsigned long long)(st.evictions - ev));
	T_EQ_U64(st.pinned_entries, 3);
	CT_CACHE_OK(c, "pin_top");
	/* pin_top turned off (SIGHUP): the sticky set goes back to the LRU */
	ms_cache_set_tunables(c, 300, 0, 0);
	st = stats(c);
	T_EQ_U64(st.pinned_entries, 0);
	CT_CACHE_OK(c, "pin_top off");
	churn(c, &rng, 200, hot, 3, NULL);
	for (int k = 0; k < 3; k++)
		EXPECT_STATE(c, hot[k][0], hot[k][1], MS_ENTRY_EMPTY, 0);
	CT_CACHE_OK(c, "end of pin_top");
	ms_cache_free(c);
}

/* ---- minimum size ---------------------------------------------------------------------------------- */

static void test_min_size(void)
{
	printf("-- min_size\n");
	char path[512];
	snprintf(path, sizeof(path), "%s/m8.gguf", t_tmpdir());
	ct_mkmodel("--layers 3 --experts 8 --used 4 --embd 1024 --ff 256 --vocab 256 "
		   "--types q8_0,q8_0,q8_0",
		   path);
	struct ct_model cm;
	ct_model_open(&cm, path);
	uint64_t sb = ct_slot_bytes(cm.m, 0);
	uint64_t need = cm.m->n_expert_used * sb;
	uint64_t min_mb = (need + (1u << 20) - 1) >> 20;
	char want[64];
	snprintf(want, sizeof(want), "minimum %llu MB", (unsigned long long)min_mb);
	struct ms_cache_config cfg;
	struct ms_cache *c = NULL;
	struct ms_err err = { 0 };
	int fds = ct_fd_count();
	ct_config(&cfg, 2 << 20, 300);
	int rc = ms_cache_init(&c, cm.m, &cfg, &err);
	printf("2 MB: %d %s\n", rc, err.msg);
	T_EQ_U64(rc, (uint64_t)-EINVAL);
	T_CHECK(strstr(err.msg, want) && strstr(err.msg, "cache.size 2 MB"),
		"the message '%s' does not say '%s' (4 slots of %llu bytes)", err.msg,
		want, (unsigned long long)sb);
	T_EQ_U64(ct_fd_count(), fds);
	ct_config(&cfg, need - MS_IO_ALIGN, 300);
	T_EQ_U64(ms_cache_init(&c, cm.m, &cfg, &err), (uint64_t)-EINVAL);
	ct_config(&cfg, need, 300);
	rc = ms_cache_init(&c, cm.m, &cfg, &err);
	T_CHECK(rc == 0, "exactly the minimum (%llu bytes): %d %s",
		(unsigned long long)need, rc, err.msg);
	if (!rc) {
		T_EQ_U64(stats(c).slots, cm.m->n_expert_used);
		for (uint32_t e = 0; e < 4; e++)
			if (!HOLD(c, &cm, 2, e, NULL))
				ms_cache_release(c, 2, e);
		CT_CACHE_OK(c, "minimum");
		ms_cache_free(c);
	}
	ct_model_close(&cm);
	unlink(path);

	/* a cache larger than the model: every expert gets a slot, the rest is
	 * surplus, not waste */
	uint32_t n_all = tiny.m->n_layers * tiny.m->n_expert;
	ct_config(&cfg, (n_all + 10) * tiny_sb, 300);
	c = cache_new(&tiny, &cfg);
	struct ms_cache_stats st = stats(c);
	printf("%u + 10 slots' worth: %llu slots, waste %llu, surplus %llu\n", n_all,
	       (unsigned long long)st.slots, (unsigned long long)st.waste_bytes,
	       (unsigned long long)st.surplus_bytes);
	T_EQ_U64(st.slots, n_all);
	T_EQ_U64(st.waste_bytes, n_all * (tiny_sb - tiny_raw));
	T_EQ_U64(st.surplus_bytes, 10 * tiny_sb);
	ms_cache_free(c);
	ct_config(&cfg, 6 * tiny_sb, 300);
	c = cache_new(&tiny, &cfg);
	T_EQ_U64(stats(c).surplus_bytes, 0);
	ms_cache_free(c);
}

/* ---- slot classes ------------------------------------------------------------------------------------ */

/* How many experts of `layers` can be pinned at once (the class's slots). */
static uint32_t class_capacity(struct ms_cache *c, const struct ct_model *cm,
			       const uint32_t *layers, uint32_t n_layers,
			       uint64_t (*range)[2], uint32_t *n_range)
{
	uint32_t n = 0;
	uint32_t held[64][2];
	for (uint32_t i = 0; i < n_layers; i++)
		for (uint32_t e = 0; e < cm->m->n_expert; e++) {
			struct ms_expert_loc loc;
			int rc = ms_cache_acquire_wait(c, layers[i], e, 0, &loc);
			if (rc == -EBUSY)
				goto full;
			T_CHECK(rc == 0, "acquire (%u, %u): %d", layers[i], e, rc);
			if (rc)
				continue;
			VERIFY(c, cm, layers[i], e, &loc);
			uint64_t lo = UINT64_MAX, hi = 0;
			for (uint32_t j = 0; j < loc.n_proj; j++) {
				lo = loc.off[j] < lo ? loc.off[j] : lo;
				hi = loc.off[j] + loc.len[j] > hi ? loc.off[j] + loc.len[j] : hi;
			}
			range[*n_range][0] = lo;
			range[*n_range][1] = hi;
			++*n_range;
			held[n][0] = layers[i];
			held[n][1] = e;
			n++;
		}
full:
	for (uint32_t i = 0; i < n; i++)
		ms_cache_release(c, held[i][0], held[i][1]);
	return n;
}

static void test_classes(void)
{
	printf("-- classes\n");
	char path[512];
	snprintf(path, sizeof(path), "%s/classes.gguf", t_tmpdir());
	struct gr_gguf g;
	struct gr_moe o;
	gr_init(&g);
	gr_moe_default(&o);
	o.n_block = 4;
	o.n_expert = 8;
	o.n_expert_used = 2;
	o.n_embd = 512;
	o.n_ff = 256;
	o.n_ff_dense = 512;
	o.n_vocab = 32;
	o.type[0] = o.type[1] = GR_T_Q4_K;
	o.type[2] = GR_T_Q6_K;
	o.type_alt[0] = o.type_alt[1] = o.type_alt[2] = GR_T_Q8_0;
	gr_moe_build(&g, &o);
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(&g, &b, &lay);
	gr_buf_free(&b);
	if (gr_write(&g, path))
		t_fatal("writing %s", path);
	gr_free(&g);
	ct_scramble(path, lay.data_offset, seed);
	struct ct_model cm;
	ct_model_open(&cm, path);
	const struct ms_model *m = cm.m;
	T_EQ_U64(m->n_layers, 4);
	uint64_t sb[2] = { ct_slot_bytes(m, 0), ct_slot_bytes(m, 1) };
	uint64_t raw[2] = { m->layers[0].expert_bytes, m->layers[1].expert_bytes };
	printf("class A (even blocks, q4_K/q4_K/q6_K): %llu B experts in %llu B "
	       "slots; class B (odd, q8_0): %llu in %llu\n",
	       (unsigned long long)raw[0], (unsigned long long)sb[0],
	       (unsigned long long)raw[1], (unsigned long long)sb[1]);
	struct ms_cache_config cfg;
	uint64_t size = 2 * (sb[0] + sb[1]) + 3 * sb[0] + 3 * sb[1] + 100 * 1024;
	ct_config(&cfg, size, 100);
	struct ms_cache *c = cache_new(&cm, &cfg);
	struct ms_cache_stats st = stats(c);
	T_EQ_U64(st.slot_classes, 2);
	/* the contract: one token's worth each, the rest by the bytes of the
	 * experts a class holds (both classes: 2 layers x 8 experts) */
	uint64_t budget = st.budget_bytes;
	uint64_t rest = budget - 2 * (sb[0] + sb[1]);
	double w[2] = { (double)raw[0], (double)raw[1] };
	uint32_t want[2];
	for (int k = 0; k < 2; k++)
		want[k] = 2 + (uint32_t)((double)rest * w[k] / (w[0] + w[1]) /
					 (double)sb[k]);
	static const uint32_t la[2] = { 0, 2 }, lb[2] = { 1, 3 };
	uint64_t range[64][2];
	uint32_t n_range = 0;
	uint32_t got[2] = { class_capacity(c, &cm, la, 2, range, &n_range),
			    class_capacity(c, &cm, lb, 2, range, &n_range) };
	printf("slots: A %u (by the bytes: %u), B %u (%u); stats: %llu slots, waste "
	       "%llu B = %.2f%% of %llu\n",
	       got[0], want[0], got[1], want[1], (unsigned long long)st.slots,
	       (unsigned long long)st.waste_bytes,
	       100.0 * (double)st.waste_bytes / (double)budget,
	       (unsigned long long)budget);
	for (int k = 0; k < 2; k++) {
		T_CHECK(got[k] >= o.n_expert_used, "class %d: %u slots", k, got[k]);
		T_CHECK(got[k] + 1 >= want[k] && got[k] <= want[k] + 1,
			"class %d: %u slots, its share by bytes is %u", k, got[k], want[k]);
	}
	T_EQ_U64(got[0] + got[1], st.slots);
	T_EQ_U64(st.waste_bytes, budget - got[0] * raw[0] - got[1] * raw[1]);
	T_CHECK(st.waste_bytes <= got[0] * (sb[0] - raw[0]) + got[1] * (sb[1] - raw[1]) +
					  sb[0] + sb[1],
		"waste %llu is more than the padding and one slot per class",
		(unsigned long long)st.waste_bytes);
	/* pinned at once, no two experts of either class share a byte */
	for (uint32_t i = 0; i < n_range; i++)
		for (uint32_t j = 0; j < n_range; j++)
			if (i != j && range[i][0] < range[j][1] && range[j][0] < range[i][1] &&
			    (i < got[0]) == (j < got[0]))
				t_fail_at(__FILE__, __LINE__, "experts %u and %u overlap", i, j);
	/* mixed traffic over both classes */
	uint64_t rng = seed ^ 0xc1a5;
	for (int i = 0; i < 400; i++) {
		uint32_t l = (uint32_t)(t_rand(&rng) % 4), e = (uint32_t)(t_rand(&rng) % 8);
		if (!HOLD(c, &cm, l, e, NULL))
			ms_cache_release(c, l, e);
	}
	st = stats(c);
	T_CHECK(st.held_bytes <= st.budget_bytes, "held %llu > budget",
		(unsigned long long)st.held_bytes);
	T_CHECK(st.evictions > 0, "no evictions");
	CT_CACHE_OK(c, "classes");
	ms_cache_free(c);
	ct_model_close(&cm);
	unlink(path);
}

/* ---- the GLM-4.7 presets ----------------------------------------------------------------------------- */

static void test_glm(void)
{
	printf("-- glm\n");
	static const char *presets[2] = { "glm4.7-ud-q2_k_xl", "glm4.7-ud-q4_k_xl" };
	for (int p = 0; p < 2; p++) {
		char path[512], args[128];
		snprintf(path, sizeof(path), "%s/glm.gguf", t_tmpdir());
		snprintf(args, sizeof(args), "--preset %s --moe-layers 4 --sparse",
			 presets[p]);
		ct_mkmodel(args, path);
		struct ms_model *m;
		struct ms_err err = { 0 };
		if (ms_model_open(&m, path, &err))
			t_fatal("%s: %s", path, err.msg);
		struct ms_cache_config cfg;
		ct_config(&cfg, 512ull << 20, 1000);
		struct ms_cache *c;
		if (ms_cache_init(&c, m, &cfg, &err))
			t_fatal("ms_cache_init: %s", err.msg);
		struct ms_cache_stats st = stats(c);
		double pct = 100.0 * (double)st.waste_bytes / (double)st.budget_bytes;
		printf("%s: %llu B experts, 512 MB: %llu slots in %llu class(es), waste "
		       "%llu B = %.2f%%\n",
		       presets[p], (unsigned long long)m->layers[0].expert_bytes,
		       (unsigned long long)st.slots, (unsigned long long)st.slot_classes,
		       (unsigned long long)st.waste_bytes, pct);
		T_CHECK(pct < 5.0, "%s: waste %.2f%% of the budget", presets[p], pct);
		/* the data is a hole: every served byte is 0 */
		for (int k = 0; k < 2; k++) {
			uint32_t l = k ? m->n_layers - 1 : 0, e = k ? m->n_expert - 1 : 0;
			struct ms_expert_loc loc;
			int rc = ms_cache_acquire_wait(c, l, e, 0, &loc);
			T_CHECK(rc == 0, "acquire (%u, %u): %d", l, e, rc);
			if (rc)
				continue;
			const struct ms_extent *x = ms_model_expert(m, l, e);
			const uint8_t *base = ms_cache_arena(c)->base;
			for (uint32_t j = 0; j < loc.n_proj; j++) {
				T_EQ_U64(loc.len[j], x[j].bytes);
				uint64_t nz = 0;
				for (uint64_t i = 0; i < loc.len[j]; i++)
					nz += base[loc.off[j] + i] != 0;
				T_EQ_U64(nz, 0);
			}
			ms_cache_release(c, l, e);
		}
		CT_CACHE_OK(c, presets[p]);
		ms_cache_free(c);
		ms_model_free(m);
		unlink(path);
	}
}

/* ---- main --------------------------------------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(void);
} parts[] = {
	{ "basic", test_basic },       { "reference", test_reference },
	{ "full", test_full },         { "wait_timeout", test_wait_timeout },
	{ "prefetch", test_prefetch },
	{ "cancel", test_cancel },     { "shutdown", test_shutdown },
	{ "pin", test_pin },
	{ "pin_top", test_pin_top },   { "min_size", test_min_size },
	{ "classes", test_classes },   { "glm", test_glm },
};

int main(int argc, char **argv)
{
	seed = t_seed();
	setvbuf(stdout, NULL, _IOLBF, 0);
	char path[512];
	snprintf(path, sizeof(path), "%s/tiny.gguf", t_tmpdir());
	ct_mkmodel("--preset tiny", path);
	ct_model_open(&tiny, path);
	tiny_sb = ct_slot_bytes(tiny.m, 0);
	tiny_raw = tiny.m->layers[0].expert_bytes;
	for (uint32_t l = 0; l < tiny.m->n_layers; l++)
		if (ct_slot_bytes(tiny.m, l) != tiny_sb ||
		    tiny.m->layers[l].expert_bytes != tiny_raw)
			t_fatal("the tiny preset's layers differ: this test assumes one "
				"slot size");
	printf("tiny: %u layers x %u experts, %llu B per expert, %llu B slots\n",
	       tiny.m->n_layers, tiny.m->n_expert, (unsigned long long)tiny_raw,
	       (unsigned long long)tiny_sb);
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		if (!t_part_wanted(parts[i].name, argc, argv))
			continue;
		int before = t_failures;
		double t0 = ct_now();
		ct_watchdog(120, parts[i].name);
		parts[i].fn();
		ct_watchdog(0, NULL);
		printf("%s: %s (%.1f s)\n", parts[i].name,
		       t_failures == before ? "ok" : "FAILED", ct_now() - t0);
	}
	ct_model_close(&tiny);
	return t_done();
}
