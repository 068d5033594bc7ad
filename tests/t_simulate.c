/*
 * t_simulate - the cache simulator behind `moestream simulate`, checked
 * against an independent, deliberately naive implementation written here
 * from the definition in tools/sim.h (and sharing no code with tools/):
 * resident experts in a plain array, every victim found by scanning all of
 * them, Belady's "next use" found by scanning the trace forward. The two
 * must agree EXACTLY (hits, prefetch hits, misses, prefetch loads and skips,
 * evictions, bytes) on traces with uniform, strongly skewed and bursty
 * routing, a one-layer trace (consecutive steps share experts), equal and
 * unequal expert sizes, and cache sizes from the minimum up to everything,
 * for lru, lfu, fifo and min, with and without the oracle prefetch.
 *
 * Then properties that need no second implementation: MIN hits at least as
 * often as every other policy with equal sizes (Belady's theorem; with
 * unequal sizes furthest-next-use is not a theorem, so there the count of
 * traces where another policy beat it is printed, not judged); a cache
 * holding everything hits every access after a key's first (hits = accesses
 * - distinct) and evicts nothing; the refusal of a cache below k experts.
 *
 * Then the command: --json equals the library's result, the sweep's rows
 * too, bad usage exits 2 naming the bad value, a trace made for another
 * model exits 1 with one line.
 *
 * And a figure for the note (not a verdict, timing is noisy): accesses per
 * second per policy on a GLM-4.7-shaped trace of ~1M expert accesses.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "../tools/sim.h"
#include "../tools/trace.h"
#include "moestream/model.h"
#include "testutil.h"

static uint64_t rng;

static uint32_t rnd(uint32_t n)
{
	return (uint32_t)(t_rand(&rng) % n);
}

static double rndf(void)
{
	return (double)(t_rand(&rng) >> 11) / 9007199254740992.0;
}

/* ---- traces ----------------------------------------------------------------- */

enum routing { R_UNIFORM, R_SKEWED, R_BURSTY, R_COUNT };
static const char *const routing_name[R_COUNT] = { "uniform", "skewed",
						    "bursty" };

static bool chosen(const uint16_t *e, uint32_t n, uint16_t x)
{
	for (uint32_t i = 0; i < n; i++)
		if (e[i] == x)
			return true;
	return false;
}

/* Zipf(1.3) over a per-layer permutation of the experts. */
static uint16_t pick_skewed(uint32_t n_expert, const uint16_t *perm)
{
	double tot = 0, u;
	for (uint32_t r = 0; r < n_expert; r++)
		tot += 1.0 / pow(r + 1, 1.3);
	u = rndf() * tot;
	for (uint32_t r = 0; r < n_expert; r++) {
		u -= 1.0 / pow(r + 1, 1.3);
		if (u <= 0)
			return perm[r];
	}
	return perm[n_expert - 1];
}

static struct ms_trace *make_trace(enum routing how, uint32_t n_tokens,
				   uint32_t n_layers, uint32_t n_expert,
				   uint32_t k)
{
	struct ms_trace *t;
	struct ms_err err = { 0 };
	if (ms_trace_alloc(&t, "glm4moe", n_tokens, n_layers, n_expert, k, &err))
		t_fatal("ms_trace_alloc: %s", err.msg);
	for (uint32_t l = 0; l < n_layers; l++)
		t->blocks[l] = l + 1;
	uint16_t *perm = malloc(n_layers * n_expert * sizeof(*perm));
	uint16_t *hot = malloc(n_layers * 2 * k * sizeof(*hot));
	if (!perm || !hot)
		t_fatal("out of memory");
	for (uint32_t l = 0; l < n_layers; l++) {
		uint16_t *p = &perm[l * n_expert];
		for (uint32_t e = 0; e < n_expert; e++)
			p[e] = (uint16_t)e;
		for (uint32_t e = n_expert - 1; e > 0; e--) {
			uint32_t j = rnd(e + 1);
			uint16_t x = p[e];
			p[e] = p[j];
			p[j] = x;
		}
	}
	uint32_t phase_left = 0;
	uint32_t n_hot = 2 * k < n_expert ? 2 * k : n_expert;
	for (uint32_t tok = 0; tok < n_tokens; tok++) {
		/* Bursty: phases of 4..15 tokens in which each layer draws
		 * 90% of its choices from a hot set of 2k experts. */
		if (how == R_BURSTY && !phase_left) {
			phase_left = 4 + rnd(12);
			for (uint32_t l = 0; l < n_layers; l++)
				for (uint32_t i = 0; i < n_hot; i++) {
					uint16_t x;
					do
						x = (uint16_t)rnd(n_expert);
					while (chosen(&hot[l * 2 * k], i, x));
					hot[l * 2 * k + i] = x;
				}
		}
		for (uint32_t l = 0; l < n_layers; l++) {
			uint16_t *e = ms_trace_experts(t, tok, l);
			for (uint32_t j = 0; j < k; j++) {
				uint16_t x;
				do {
					if (how == R_SKEWED)
						x = pick_skewed(n_expert,
								&perm[l * n_expert]);
					else if (how == R_BURSTY && rndf() < 0.9)
						x = hot[l * 2 * k + rnd(n_hot)];
					else
						x = (uint16_t)rnd(n_expert);
				} while (chosen(e, j, x));
				e[j] = x;
				ms_trace_weights(t, tok, l)[j] = 1.0f / (float)k;
			}
		}
		if (phase_left)
			phase_left--;
	}
	free(perm);
	free(hot);
	return t;
}

/* ---- the naive reference ------------------------------------------------------ */
/*
 * Written from sim.h's definition, for clarity not speed. A resident expert
 * is an entry in an unordered array; "pinned" is computed from the trace
 * each time (the experts of step s, and of s+1 while prefetching for it).
 */

enum { N_LRU, N_LFU, N_FIFO, N_MIN }; /* the same order as the simulator's */

struct nent {
	uint32_t layer, expert;
	uint64_t bytes;
	uint64_t last;   /* access index of the last use */
	uint64_t loaded; /* load sequence number */
	uint64_t uses;   /* since loaded */
	bool by_prefetch;
};

struct naive {
	const struct ms_trace *t;
	const uint64_t *lb;
	int policy;
	uint64_t cap, used, seq;
	struct nent *e;
	size_t n;
	struct ms_sim_result r;
};

static bool in_step(const struct ms_trace *t, uint64_t step, uint32_t layer,
		    uint32_t expert)
{
	uint64_t n_steps = (uint64_t)t->n_tokens * t->n_layers;
	if (step >= n_steps || step % t->n_layers != layer)
		return false;
	const uint16_t *x = &t->expert[step * t->k];
	for (uint32_t j = 0; j < t->k; j++)
		if (x[j] == expert)
			return true;
	return false;
}

static bool is_pinned(const struct naive *N, const struct nent *x,
		      uint64_t step, bool prefetching)
{
	return in_step(N->t, step, x->layer, x->expert) ||
	       (prefetching && in_step(N->t, step + 1, x->layer, x->expert));
}

/* Access index of the first use of (layer, expert) at or after `step`. */
static uint64_t next_use(const struct ms_trace *t, uint64_t step,
			 uint32_t layer, uint32_t expert)
{
	uint64_t n_steps = (uint64_t)t->n_tokens * t->n_layers;
	for (uint64_t s = step; s < n_steps; s++) {
		if (s % t->n_layers != layer)
			continue;
		for (uint32_t j = 0; j < t->k; j++)
			if (t->expert[s * t->k + j] == expert)
				return s * t->k + j;
	}
	return UINT64_MAX;
}

static struct nent *nfind(struct naive *N, uint32_t layer, uint32_t expert)
{
	for (size_t i = 0; i < N->n; i++)
		if (N->e[i].layer == layer && N->e[i].expert == expert)
			return &N->e[i];
	return NULL;
}

/* true when a is a better victim than b. */
static bool better_victim(const struct naive *N, const struct nent *a,
			  const struct nent *b, uint64_t step)
{
	switch (N->policy) {
	case N_LRU:
		return a->last < b->last;
	case N_FIFO:
		return a->loaded < b->loaded;
	case N_LFU:
		return a->uses < b->uses ||
		       (a->uses == b->uses && a->last < b->last);
	default: {
		uint64_t na = next_use(N->t, step, a->layer, a->expert);
		uint64_t nb = next_use(N->t, step, b->layer, b->expert);
		return na > nb || (na == nb && a->last < b->last);
	}
	}
}

static bool nroom(struct naive *N, uint64_t bytes, uint64_t step,
		  bool prefetching)
{
	uint64_t pinned = 0;
	for (size_t i = 0; i < N->n; i++)
		if (is_pinned(N, &N->e[i], step, prefetching))
			pinned += N->e[i].bytes;
	if (pinned + bytes > N->cap)
		return false;
	while (N->used + bytes > N->cap) {
		struct nent *v = NULL;
		for (size_t i = 0; i < N->n; i++) {
			struct nent *x = &N->e[i];
			if (is_pinned(N, x, step, prefetching))
				continue;
			if (!v || better_victim(N, x, v, step))
				v = x;
		}
		if (!v)
			t_fatal("naive: nothing to evict (cannot happen)");
		N->used -= v->bytes;
		*v = N->e[--N->n];
		N->r.evictions++;
	}
	return true;
}

static void nadd(struct naive *N, uint32_t layer, uint32_t expert,
		 bool by_prefetch)
{
	N->e[N->n++] = (struct nent){ .layer = layer, .expert = expert,
				      .bytes = N->lb[layer],
				      .loaded = N->seq++,
				      .by_prefetch = by_prefetch };
	N->used += N->lb[layer];
	if (N->used > N->r.peak_bytes)
		N->r.peak_bytes = N->used;
}

static struct ms_sim_result naive_run(const struct ms_trace *t,
				      const uint64_t *lb, int policy,
				      uint64_t cap, bool prefetch)
{
	struct naive N = { .t = t, .lb = lb, .policy = policy, .cap = cap };
	N.e = calloc((size_t)t->n_layers * t->n_expert, sizeof(*N.e));
	if (!N.e)
		t_fatal("out of memory");
	uint64_t n_steps = (uint64_t)t->n_tokens * t->n_layers;
	bool was[MS_TRACE_MAX_K];
	for (uint64_t s = 0; s < n_steps; s++) {
		uint32_t layer = (uint32_t)(s % t->n_layers);
		const uint16_t *x = &t->expert[s * t->k];
		for (uint32_t j = 0; j < t->k; j++) {
			struct nent *e = nfind(&N, layer, x[j]);
			was[j] = e != NULL;
			if (!e)
				continue;
			if (e->by_prefetch)
				N.r.prefetch_hits++;
			else
				N.r.hits++;
			e->by_prefetch = false;
		}
		for (uint32_t j = 0; j < t->k; j++) {
			if (was[j])
				continue;
			if (!nroom(&N, lb[layer], s, false))
				t_fatal("naive: no room for a demand load");
			nadd(&N, layer, x[j], false);
			N.r.misses++;
			N.r.bytes_demand += lb[layer];
		}
		if (prefetch && s + 1 < n_steps) {
			uint32_t l1 = (uint32_t)((s + 1) % t->n_layers);
			const uint16_t *y = &t->expert[(s + 1) * t->k];
			for (uint32_t j = 0; j < t->k; j++) {
				if (nfind(&N, l1, y[j]))
					continue;
				if (!nroom(&N, lb[l1], s, true)) {
					N.r.prefetch_skipped++;
					continue;
				}
				nadd(&N, l1, y[j], true);
				N.r.prefetch_loads++;
				N.r.bytes_prefetch += lb[l1];
			}
		}
		for (uint32_t j = 0; j < t->k; j++) {
			struct nent *e = nfind(&N, layer, x[j]);
			e->last = s * t->k + j;
			e->uses++;
		}
	}
	free(N.e);
	N.r.tokens = t->n_tokens;
	N.r.accesses = n_steps * t->k;
	return N.r;
}

/* ---- comparing --------------------------------------------------------------- */

static const char *const pname[] = { "lru", "lfu", "fifo", "min" };

#define SAME(f)                                                                \
	T_CHECK(a->f == b->f, "%s: " #f " = %llu, naive says %llu", what,      \
		(unsigned long long)a->f, (unsigned long long)b->f)

static void compare(const char *what, const struct ms_sim_result *a,
		    const struct ms_sim_result *b)
{
	SAME(accesses);
	SAME(hits);
	SAME(prefetch_hits);
	SAME(misses);
	SAME(prefetch_loads);
	SAME(prefetch_skipped);
	SAME(evictions);
	SAME(bytes_demand);
	SAME(bytes_prefetch);
	SAME(peak_bytes);
}

static struct ms_sim *prepare(const struct ms_trace *t, const uint64_t *lb)
{
	struct ms_sim *s;
	struct ms_err err = { 0 };
	if (ms_sim_init(&s, t, lb, &err))
		t_fatal("ms_sim_init: %s", err.msg);
	return s;
}

static struct ms_sim_result sim(const struct ms_sim *s, int policy,
				uint64_t cap, bool prefetch)
{
	struct ms_sim_opts o = { .policy = (enum ms_sim_policy)policy,
				 .cache_bytes = cap, .prefetch = prefetch };
	struct ms_sim_result r;
	struct ms_err err = { 0 };
	if (ms_sim_run(s, &o, &r, &err))
		t_fatal("ms_sim_run(%s, %llu): %s", pname[policy],
			(unsigned long long)cap, err.msg);
	return r;
}

static unsigned n_compared, n_unequal_min_beaten;

/* Every policy x prefetch at several sizes, against the naive reference;
 * and the properties. */
static void check_trace(const char *name, const struct ms_trace *t,
			const uint64_t *lb, bool equal_sizes)
{
	struct ms_sim *s = prepare(t, lb);
	uint64_t max = 0, all = 0;
	for (uint32_t l = 0; l < t->n_layers; l++) {
		max = lb[l] > max ? lb[l] : max;
		all += lb[l] * t->n_expert;
	}
	T_EQ_U64(s->min_cache, max * t->k);
	T_EQ_U64(s->all_bytes, all);

	/* From the minimum (and just above it) to everything. */
	uint64_t caps[] = { max * t->k, max * t->k + max - 1, all / 5, all / 3,
			    all / 2, all * 3 / 4, all };
	for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
		uint64_t cap = caps[c] < s->min_cache ? s->min_cache : caps[c];
		struct ms_sim_result r[4];
		for (int pf = 0; pf < 2; pf++)
			for (int p = 0; p < 4; p++) {
				char what[160];
				snprintf(what, sizeof(what),
					 "%s, %s sizes, cache %llu, %s%s", name,
					 equal_sizes ? "equal" : "unequal",
					 (unsigned long long)cap, pname[p],
					 pf ? "+prefetch" : "");
				struct ms_sim_result a = sim(s, p, cap, pf);
				struct ms_sim_result b =
					naive_run(t, lb, p, cap, pf);
				compare(what, &a, &b);
				n_compared++;
				T_CHECK(a.hits + a.prefetch_hits + a.misses ==
						a.accesses,
					"%s: hits + prefetch hits + misses != "
					"accesses",
					what);
				T_CHECK(a.peak_bytes <= cap, "%s: held %llu > %llu",
					what, (unsigned long long)a.peak_bytes,
					(unsigned long long)cap);
				if (!pf)
					r[p] = a;
				if (cap >= all) {
					/* Everything fits: nothing leaves. */
					T_EQ_U64(a.evictions, 0);
					if (!pf)
						T_EQ_U64(a.hits,
							 a.accesses - s->distinct);
					else
						T_EQ_U64(a.misses, t->k);
				}
			}
		printf("  %-8s %-7s cache %8llu: hits lru %5llu lfu %5llu fifo "
		       "%5llu min %5llu of %llu\n",
		       name, equal_sizes ? "equal" : "unequal",
		       (unsigned long long)cap, (unsigned long long)r[0].hits,
		       (unsigned long long)r[1].hits, (unsigned long long)r[2].hits,
		       (unsigned long long)r[3].hits,
		       (unsigned long long)r[0].accesses);
		for (int p = 0; p < 3; p++) {
			if (equal_sizes)
				T_CHECK(r[3].hits >= r[p].hits,
					"%s, cache %llu: min hits %llu < %s hits "
					"%llu (Belady is optimal with equal sizes)",
					name, (unsigned long long)cap,
					(unsigned long long)r[3].hits, pname[p],
					(unsigned long long)r[p].hits);
			else if (r[3].hits < r[p].hits)
				n_unequal_min_beaten++;
		}
	}
	ms_sim_free(s);
}

static void test_against_naive(void)
{
	static const struct {
		uint32_t tokens, layers, experts, k;
	} shapes[] = {
		{ 48, 4, 16, 4 },  /* the tiny model's shape */
		{ 30, 3, 40, 6 },
		{ 160, 1, 12, 3 }, /* one layer: steps in a row share experts */
		{ 40, 5, 6, 6 },   /* k = every expert */
	};
	for (size_t sh = 0; sh < sizeof(shapes) / sizeof(shapes[0]); sh++)
		for (int how = 0; how < R_COUNT; how++) {
			struct ms_trace *t =
				make_trace((enum routing)how, shapes[sh].tokens,
					   shapes[sh].layers, shapes[sh].experts,
					   shapes[sh].k);
			uint64_t lb[8];
			char name[32];
			snprintf(name, sizeof(name), "%s#%zu", routing_name[how],
				 sh);
			for (uint32_t l = 0; l < t->n_layers; l++)
				lb[l] = 1000;
			check_trace(name, t, lb, true);
			for (uint32_t l = 0; l < t->n_layers; l++)
				lb[l] = 500 + rnd(2500);
			check_trace(name, t, lb, false);
			ms_trace_free(t);
		}
	printf("compared %u runs with the naive reference; with unequal sizes "
	       "another policy beat\nmin's hit count %u times (allowed: "
	       "furthest-next-use is not optimal there)\n",
	       n_compared, n_unequal_min_beaten);
}

/* ---- edges of the library ---------------------------------------------------------- */

static void test_library_edges(void)
{
	struct ms_err err = { 0 };
	struct ms_trace *t = make_trace(R_UNIFORM, 10, 2, 8, 3);
	uint64_t lb[2] = { 100, 300 };
	struct ms_sim *s = prepare(t, lb);
	struct ms_sim_opts o = { .policy = MS_SIM_MIN, .cache_bytes = 899 };
	struct ms_sim_result r;
	int rc = ms_sim_run(s, &o, &r, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "900"),
		"cache 899 < 3 x 300: rc %d, '%s' (want -EINVAL naming 900)", rc,
		err.msg);
	o.cache_bytes = 900;
	T_CHECK(!ms_sim_run(s, &o, &r, &err), "cache 900 refused: %s", err.msg);
	o.policy = (enum ms_sim_policy)7;
	T_CHECK(ms_sim_run(s, &o, &r, &err) == -EINVAL, "policy 7 accepted");
	ms_sim_free(s);

	/* A step that names an expert twice, one out of range, a 0 size. */
	struct ms_sim *bad;
	ms_trace_experts(t, 3, 1)[2] = ms_trace_experts(t, 3, 1)[0];
	rc = ms_sim_init(&bad, t, lb, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "twice"),
		"duplicate expert: rc %d, '%s'", rc, err.msg);
	ms_trace_experts(t, 3, 1)[2] = 8;
	rc = ms_sim_init(&bad, t, lb, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "out of range"),
		"expert 8 of 8: rc %d, '%s'", rc, err.msg);
	ms_trace_experts(t, 3, 1)[2] = (ms_trace_experts(t, 3, 1)[0] + 1) % 8;
	if (ms_trace_experts(t, 3, 1)[2] == ms_trace_experts(t, 3, 1)[1])
		ms_trace_experts(t, 3, 1)[2] =
			(ms_trace_experts(t, 3, 1)[2] + 1) % 8;
	lb[1] = 0;
	rc = ms_sim_init(&bad, t, lb, &err);
	T_CHECK(rc == -EINVAL, "a 0-byte layer accepted: rc %d", rc);
	ms_trace_free(t);

	/* Policy names. */
	for (int p = 0; p < MS_SIM_POLICY_COUNT; p++)
		T_CHECK(ms_sim_policy_from_name(ms_sim_policy_name(
				(enum ms_sim_policy)p)) == p,
			"policy %d does not round-trip its name", p);
	T_CHECK(ms_sim_policy_from_name("LRU") < 0, "'LRU' accepted");

	/* Sizes. */
	static const struct {
		const char *s;
		int rc;
		uint64_t v;
	} sz[] = {
		{ "100", 0, 100 },
		{ "32G", 0, 32ull << 30 },
		{ "32GB", 0, 32ull << 30 },
		{ "32GiB", 0, 32ull << 30 },
		{ "512M", 0, 512ull << 20 },
		{ "4k", 0, 4096 },
		{ "1.5G", 0, 3ull << 29 },
		{ "2T", 0, 2ull << 40 },
		{ "25%", 0, 250 },
		{ "12.5%", 0, 125 },
		{ "100%", 0, 1000 },
		{ "0", -EINVAL, 0 },
		{ "0%", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
		{ "-1G", -EINVAL, 0 },
		{ "12Q", -EINVAL, 0 },
		{ "1 G", -EINVAL, 0 },
		{ "G", -EINVAL, 0 },
		{ "5%%", -EINVAL, 0 },
		{ "99999999999999999999", -ERANGE, 0 },
		{ "20000000T", -ERANGE, 0 },
	};
	for (size_t i = 0; i < sizeof(sz) / sizeof(sz[0]); i++) {
		uint64_t v = 7;
		rc = ms_sim_parse_size(sz[i].s, 1000, &v);
		T_CHECK(rc == sz[i].rc && (rc || v == sz[i].v),
			"parse_size('%s') = %d, %llu; expected %d, %llu", sz[i].s,
			rc, (unsigned long long)v, sz[i].rc,
			(unsigned long long)sz[i].v);
	}
}

/* Why MIN >= others is only asserted with equal sizes: a 2-layer trace,
 * k = 1, experts of 8 and 9 bytes, a 17-byte cache, found by a random
 * search. Furthest-next-use evicts more than it must; LFU hits twice, MIN
 * once. Checked against the naive reference too, so this is the policy as
 * defined, not a bug; a size-aware MIN would change it on purpose. */
static void test_unequal_counterexample(void)
{
	static const uint16_t choice[12] = { 2, 0, 2, 1, 0, 0, 2, 2, 1, 1, 0, 2 };
	struct ms_trace *t;
	struct ms_err err = { 0 };
	if (ms_trace_alloc(&t, "glm4moe", 6, 2, 3, 1, &err))
		t_fatal("%s", err.msg);
	t->blocks[0] = 1;
	t->blocks[1] = 2;
	memcpy(t->expert, choice, sizeof(choice));
	const uint64_t lb[2] = { 8, 9 };
	struct ms_sim *s = prepare(t, lb);
	struct ms_sim_result lfu = sim(s, N_LFU, 17, false);
	struct ms_sim_result min = sim(s, N_MIN, 17, false);
	struct ms_sim_result nmin = naive_run(t, lb, N_MIN, 17, false);
	compare("counterexample, min", &min, &nmin);
	printf("unequal sizes: lfu hits %llu, min hits %llu (of %llu)\n",
	       (unsigned long long)lfu.hits, (unsigned long long)min.hits,
	       (unsigned long long)min.accesses);
	T_CHECK(lfu.hits == 2 && min.hits == 1,
		"counterexample: lfu %llu, min %llu hits (expected 2 and 1)",
		(unsigned long long)lfu.hits, (unsigned long long)min.hits);
	ms_sim_free(s);
	ms_trace_free(t);
}

/* ---- the command -------------------------------------------------------------- */

static char cmd[16384];

/* Runs "moestream ARGS 2>&1" (or without 2>&1 for JSON), returns the exit
 * code and the output (caller frees). */
static int run_cli(const char *args, bool merge, char **out)
{
	snprintf(cmd, sizeof(cmd), "%s %s%s", t_build_path("moestream"), args,
		 merge ? " 2>&1" : " 2>/dev/null");
	int rc = t_run(cmd, out, 4 << 20);
	printf("$ %s -> exit %d\n", cmd, rc);
	return rc;
}

static void expect_err(const char *args, int want_rc, const char *want,
		       bool one_line)
{
	char *out = NULL;
	int rc = run_cli(args, true, &out);
	printf("%.400s", out ? out : "");
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", args, rc, want_rc);
	T_CHECK(out && strstr(out, want), "'%s' output lacks '%s'", args, want);
	if (one_line) {
		size_t nl = 0;
		for (const char *p = out; p && *p; p++)
			nl += *p == '\n';
		T_CHECK(nl == 1, "'%s' printed %zu lines, expected one", args, nl);
	}
	free(out);
}

static double jnum(const cJSON *o, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
	if (!cJSON_IsNumber(x)) {
		t_fail_at(__FILE__, __LINE__, "JSON lacks number '%s'", k);
		return NAN;
	}
	return x->valuedouble;
}

static void json_matches(const char *what, const cJSON *o,
			 const struct ms_sim_result *r, bool prefetch)
{
	T_CHECK(jnum(o, "hits") == (double)r->hits, "%s: hits %g, library %llu",
		what, jnum(o, "hits"), (unsigned long long)r->hits);
	T_CHECK(jnum(o, "evictions") == (double)r->evictions,
		"%s: evictions %g, library %llu", what, jnum(o, "evictions"),
		(unsigned long long)r->evictions);
	T_CHECK(jnum(o, "prefetch_hits") == (double)r->prefetch_hits,
		"%s: prefetch_hits %g, library %llu", what,
		jnum(o, "prefetch_hits"), (unsigned long long)r->prefetch_hits);
	T_CHECK(jnum(o, "bytes_read") ==
			(double)(r->bytes_demand + r->bytes_prefetch),
		"%s: bytes_read %g", what, jnum(o, "bytes_read"));
	T_CHECK(fabs(jnum(o, "hit_rate") - ms_sim_hit_rate(r)) < 1e-12,
		"%s: hit_rate %.15g, library %.15g", what, jnum(o, "hit_rate"),
		ms_sim_hit_rate(r));
	if (prefetch)
		T_CHECK(fabs(jnum(o, "prefetch_covered") -
			     ms_sim_prefetch_rate(r)) < 1e-12,
			"%s: prefetch_covered %g", what,
			jnum(o, "prefetch_covered"));
}

static void test_cli(void)
{
	const char *d = t_tmpdir();
	char model[4096], trace[4096], other[4096], args[12288];
	snprintf(model, sizeof(model), "%s/tiny.gguf", d);
	snprintf(trace, sizeof(trace), "%s/tiny.trace", d);
	snprintf(other, sizeof(other), "%s/other.trace", d);
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", model);
	char *out = NULL;
	if (run_cli(args, true, &out))
		t_fatal("mkmodel failed: %s", out ? out : "");
	free(out);

	struct ms_err err = { 0 };
	struct ms_model *m;
	if (ms_model_open(&m, model, &err))
		t_fatal("%s", err.msg);
	struct ms_trace *t;
	if (ms_trace_alloc_for_model(&t, m, 300, &err))
		t_fatal("%s", err.msg);
	struct ms_trace *src = make_trace(R_SKEWED, 300, t->n_layers,
					  t->n_expert, t->k);
	memcpy(t->expert, src->expert,
	       (size_t)300 * t->n_layers * t->k * sizeof(*t->expert));
	memcpy(t->weight, src->weight,
	       (size_t)300 * t->n_layers * t->k * sizeof(*t->weight));
	ms_trace_free(src);
	if (ms_trace_save(t, trace, &err))
		t_fatal("%s", err.msg);
	uint64_t *lb;
	if (ms_sim_layer_bytes(t, m, &lb, &err))
		t_fatal("ms_sim_layer_bytes: %s", err.msg);
	struct ms_sim *s = prepare(t, lb);
	T_EQ_U64(s->all_bytes, m->expert_bytes_run);

	/* Single runs: every policy, with and without prefetch, at 50%. */
	for (int pf = 0; pf < 2; pf++)
		for (int p = 0; p < 4; p++) {
			snprintf(args, sizeof(args),
				 "simulate --trace %s --model %s --cache-size 50%% "
				 "--policy %s%s --json",
				 trace, model, pname[p], pf ? " --prefetch" : "");
			int rc = run_cli(args, false, &out);
			T_CHECK(rc == 0, "'%s' exited %d", args, rc);
			cJSON *o = cJSON_Parse(out ? out : "");
			T_CHECK(o != NULL, "'%s' printed no JSON: %.200s", args,
				out ? out : "");
			if (o) {
				struct ms_sim_result r =
					sim(s, p, s->all_bytes / 2, pf);
				json_matches(args, o, &r, pf);
				T_CHECK(jnum(o, "cache_bytes") ==
						(double)(s->all_bytes / 2),
					"cache_bytes %g", jnum(o, "cache_bytes"));
			}
			cJSON_Delete(o);
			free(out);
		}

	/* The sweep: the default sizes (5%..100%; those below the minimum of
	 * 4 of 16 experts are skipped), as JSON, against the library. */
	snprintf(args, sizeof(args), "simulate -t %s -m %s --sweep --json", trace,
		 model);
	T_CHECK(run_cli(args, false, &out) == 0, "'%s' failed", args);
	cJSON *o = cJSON_Parse(out ? out : "");
	const cJSON *rows = cJSON_GetObjectItemCaseSensitive(o, "rows");
	T_CHECK(cJSON_IsArray(rows) && cJSON_GetArraySize(rows) == 12,
		"sweep: %d rows, expected 12 (10%%..100%%)",
		cJSON_IsArray(rows) ? cJSON_GetArraySize(rows) : -1);
	const cJSON *row;
	cJSON_ArrayForEach(row, rows)
	{
		uint64_t cap = (uint64_t)jnum(row, "cache_bytes");
		static const char *const col[] = { "lru", "lfu", "fifo", "min",
						   "min+prefetch" };
		for (int v = 0; v < 5; v++) {
			const cJSON *x = cJSON_GetObjectItemCaseSensitive(row,
									  col[v]);
			T_CHECK(x != NULL, "sweep row lacks '%s'", col[v]);
			if (!x)
				continue;
			struct ms_sim_result r = sim(s, v == 4 ? 3 : v, cap,
						     v == 4);
			char what[64];
			snprintf(what, sizeof(what), "sweep %llu %s",
				 (unsigned long long)cap, col[v]);
			json_matches(what, x, &r, v == 4);
		}
	}
	cJSON_Delete(o);
	free(out);

	/* The table, and --sizes. */
	snprintf(args, sizeof(args), "simulate -t %s -m %s --sweep", trace, model);
	T_CHECK(run_cli(args, true, &out) == 0, "'%s' failed", args);
	printf("%s", out ? out : "");
	T_CHECK(out && strstr(out, "skipped") && strstr(out, "fifo"),
		"the sweep table lacks its skipped line or header");
	free(out);
	/* The table's row for 50% shows the library's hit rates, in order. */
	snprintf(args, sizeof(args), "simulate -t %s -m %s --sizes 50%%", trace,
		 model);
	T_CHECK(run_cli(args, true, &out) == 0, "'%s' failed", args);
	const char *line = out ? strstr(out, " 50.0% ") : NULL;
	T_CHECK(line != NULL, "no 50%% row in:\n%s", out ? out : "");
	const char *cur = line ? line + 7 : NULL;
	for (int v = 0; line && v < 6; v++) {
		struct ms_sim_result r = sim(s, v >= 4 ? 3 : v, s->all_bytes / 2,
					     v >= 4);
		char want[32];
		snprintf(want, sizeof(want), " %.1f%%",
			 100 * (v == 5 ? ms_sim_prefetch_rate(&r)
				       : ms_sim_hit_rate(&r)));
		const char *at = strstr(cur, want);
		T_CHECK(at && !memchr(line, '\n', (size_t)(at - line)),
			"column %d of the 50%% row should read '%s': %.100s", v,
			want, line);
		cur = at ? at + strlen(want) : cur;
	}
	free(out);
	snprintf(args, sizeof(args), "simulate -t %s -m %s --sizes 30%%,8M,1K "
		 "--json", trace, model);
	T_CHECK(run_cli(args, false, &out) == 0, "'%s' failed", args);
	o = cJSON_Parse(out ? out : "");
	rows = cJSON_GetObjectItemCaseSensitive(o, "rows");
	T_CHECK(cJSON_IsArray(rows) && cJSON_GetArraySize(rows) == 2,
		"--sizes 30%%,8M,1K: expected 2 rows (1K is below the minimum)");
	cJSON_Delete(o);
	free(out);
	snprintf(args, sizeof(args), "simulate -t %s -m %s -c 50%% -p min",
		 trace, model);
	T_CHECK(run_cli(args, true, &out) == 0, "'%s' failed", args);
	printf("%s", out ? out : "");
	T_CHECK(out && strstr(out, "hit rate"), "the report lacks 'hit rate'");
	free(out);

	/* Bad usage: exit 2, naming the value. */
	char base[9000];
	snprintf(base, sizeof(base), "simulate -t %s -m %s", trace, model);
	snprintf(args, sizeof(args), "%s -c 50%% --policy belady", base);
	expect_err(args, 2, "'belady'", true);
	snprintf(args, sizeof(args), "%s -c 12Q", base);
	expect_err(args, 2, "'12Q'", true);
	snprintf(args, sizeof(args), "%s -c 0", base);
	expect_err(args, 2, "'0'", true);
	snprintf(args, sizeof(args), "%s -c 1K", base);
	char minb[64];
	snprintf(minb, sizeof(minb), "minimum of %llu bytes",
		 (unsigned long long)s->min_cache);
	expect_err(args, 2, minb, true);
	snprintf(args, sizeof(args), "%s --sweep --policy lru", base);
	expect_err(args, 2, "--policy", true);
	snprintf(args, sizeof(args), "%s --sizes 1G,abc", base);
	expect_err(args, 2, "'abc'", true);
	snprintf(args, sizeof(args), "%s", base);
	expect_err(args, 2, "--cache-size", false);
	snprintf(args, sizeof(args), "simulate -m %s -c 1G", model);
	expect_err(args, 2, "--trace", false);
	snprintf(args, sizeof(args), "%s -c 1G --frobnicate", base);
	expect_err(args, 2, "frobnicate", false);
	expect_err("simulate --help", 0, "Belady", false);

	/* The work failing: exit 1, one line. */
	struct ms_trace *bad;
	if (ms_trace_alloc(&bad, "glm4moe", 5, t->n_layers, 32, t->k, &err))
		t_fatal("%s", err.msg);
	memcpy(bad->blocks, t->blocks, t->n_layers * sizeof(*bad->blocks));
	for (uint32_t i = 0; i < 5 * t->n_layers; i++)
		for (uint32_t j = 0; j < t->k; j++)
			bad->expert[i * t->k + j] = (uint16_t)(j * 7 + i % 3);
	if (ms_trace_save(bad, other, &err))
		t_fatal("%s", err.msg);
	ms_trace_free(bad);
	snprintf(args, sizeof(args), "simulate -t %s -m %s -c 1G", other, model);
	expect_err(args, 1, "32 experts", true);
	snprintf(args, sizeof(args), "simulate -t %s/missing.trace -m %s -c 1G",
		 d, model);
	expect_err(args, 1, "No such file", true);
	snprintf(args, sizeof(args), "simulate -t %s -m %s -c 1G", model, model);
	expect_err(args, 1, "not a moestream trace", true);

	ms_sim_free(s);
	free(lb);
	ms_trace_free(t);
	ms_model_free(m);
}

/* ---- speed: a figure, not a verdict ------------------------------------------------ */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_speed(void)
{
	/* GLM-4.7's shape: 89 MoE layers x 160 experts, 8 per token;
	 * 1405 tokens = 1,000,360 expert accesses. Routing: half of each
	 * layer's choices repeat the previous token's, the rest uniform. */
	const uint32_t L = 89, E = 160, K = 8, T = 1405;
	struct ms_trace *t;
	struct ms_err err = { 0 };
	if (ms_trace_alloc(&t, "glm4moe", T, L, E, K, &err))
		t_fatal("%s", err.msg);
	for (uint32_t l = 0; l < L; l++)
		t->blocks[l] = l + 3;
	for (uint32_t tok = 0; tok < T; tok++)
		for (uint32_t l = 0; l < L; l++) {
			uint16_t *e = ms_trace_experts(t, tok, l);
			const uint16_t *p = tok ? ms_trace_experts(t, tok - 1, l)
						: NULL;
			for (uint32_t j = 0; j < K; j++) {
				uint16_t x;
				do
					x = p && rnd(2) ? p[rnd(K)]
							: (uint16_t)rnd(E);
				while (chosen(e, j, x));
				e[j] = x;
			}
		}
	uint64_t lb[89];
	for (uint32_t l = 0; l < L; l++)
		lb[l] = 8540160;
	double t0 = now();
	struct ms_sim *s = prepare(t, lb);
	double t_init = now() - t0;
	printf("speed: %llu accesses (GLM-4.7 shape), prepare (next-use pass) "
	       "%.3f s\n",
	       (unsigned long long)s->n_access, t_init);
	for (int pf = 0; pf < 2; pf++)
		for (int p = 0; p < 4; p++) {
			t0 = now();
			struct ms_sim_result r = sim(s, p, s->all_bytes * 3 / 10, pf);
			double dt = now() - t0;
			printf("speed: %-4s%-9s at 30%%: %.3f s, %.1fM accesses/s "
			       "(hit rate %.2f%%)\n",
			       pname[p], pf ? "+prefetch" : "", dt,
			       (double)r.accesses / dt / 1e6,
			       100 * ms_sim_hit_rate(&r));
		}
	ms_sim_free(s);
	ms_trace_free(t);
}

int main(void)
{
	rng = t_seed();
	test_library_edges();
	test_against_naive();
	test_unequal_counterexample();
	test_cli();
	test_speed();
	return t_done();
}
