/*
 * sim.c - the expert-cache simulator (the model it implements is in sim.h).
 *
 * Speed is the point: a sweep replays the same trace a few dozen times, and
 * a trace of 1M expert accesses must replay in well under a second per
 * policy, Belady's MIN included. So:
 *  - keys are dense integers (layer * n_expert + expert) and every per-key
 *    field lives in one array indexed by key: no hashing;
 *  - LRU and FIFO keep resident keys in one intrusive doubly linked list
 *    (O(1) append, unlink, move to tail); pinned keys stay in the list and
 *    eviction walks from the head past them (at most 2k of them pinned);
 *  - LFU and MIN keep the unpinned resident keys in a binary min-heap with
 *    a position index (O(log n) insert, remove, pop). A key leaves the heap
 *    while pinned and comes back with its new priority when unpinned, so a
 *    priority never changes while the key is in the heap;
 *  - MIN's "next use" comes from one backward pass over the trace done once
 *    in ms_sim_init() and shared by every run.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

static const char *const policy_names[MS_SIM_POLICY_COUNT] = {
	[MS_SIM_LRU] = "lru",
	[MS_SIM_LFU] = "lfu",
	[MS_SIM_FIFO] = "fifo",
	[MS_SIM_MIN] = "min",
};

const char *ms_sim_policy_name(enum ms_sim_policy p)
{
	return (unsigned)p < MS_SIM_POLICY_COUNT ? policy_names[p] : "?";
}

int ms_sim_policy_from_name(const char *name)
{
	for (int p = 0; p < MS_SIM_POLICY_COUNT; p++)
		if (!strcmp(name, policy_names[p]))
			return p;
	return -EINVAL;
}

/* ---- preparing a trace ------------------------------------------------------ */

void ms_sim_free(struct ms_sim *s)
{
	if (!s)
		return;
	free(s->layer_bytes);
	free(s->key);
	free(s->next);
	free(s);
}

int ms_sim_init(struct ms_sim **out, const struct ms_trace *t,
		const uint64_t *layer_bytes, struct ms_err *err)
{
	struct ms_sim *s = NULL;
	uint64_t *seen = NULL;
	int rc;

	*out = NULL;
	if (!t->n_layers || !t->n_expert || !t->k || t->k > MS_TRACE_MAX_K ||
	    t->k > t->n_expert)
		return ms_err_set(err, -EINVAL,
				  "trace shape %u layers x %u experts, k = %u "
				  "cannot be simulated",
				  t->n_layers, t->n_expert, t->k);
	uint64_t n_keys = (uint64_t)t->n_layers * t->n_expert;
	if (n_keys > MS_SIM_MAX_KEYS)
		return ms_err_set(err, -E2BIG,
				  "%u layers x %u experts = %llu experts is more "
				  "than the simulator's %u",
				  t->n_layers, t->n_expert,
				  (unsigned long long)n_keys, MS_SIM_MAX_KEYS);
	s = calloc(1, sizeof(*s));
	if (!s)
		return ms_err_set(err, -ENOMEM, "out of memory");
	s->n_tokens = t->n_tokens;
	s->n_layers = t->n_layers;
	s->n_expert = t->n_expert;
	s->k = t->k;
	s->n_steps = (uint64_t)t->n_tokens * t->n_layers;
	s->n_access = s->n_steps * t->k;
	s->n_keys = n_keys;

	s->layer_bytes = malloc(t->n_layers * sizeof(*s->layer_bytes));
	s->key = malloc((s->n_access ? s->n_access : 1) * sizeof(*s->key));
	s->next = malloc((s->n_access ? s->n_access : 1) * sizeof(*s->next));
	seen = malloc(n_keys * sizeof(*seen));
	if (!s->layer_bytes || !s->key || !s->next || !seen) {
		rc = ms_err_set(err, -ENOMEM,
				"out of memory preparing %llu accesses",
				(unsigned long long)s->n_access);
		goto fail;
	}

	uint64_t max = 0, sum = 0;
	for (uint32_t l = 0; l < t->n_layers; l++) {
		uint64_t b = layer_bytes[l];
		if (!b) {
			rc = ms_err_set(err, -EINVAL,
					"trace layer %u has 0 bytes per expert", l);
			goto fail;
		}
		s->layer_bytes[l] = b;
		max = b > max ? b : max;
		if (__builtin_add_overflow(sum, b, &sum))
			goto overflow;
	}
	if (__builtin_mul_overflow(sum, (uint64_t)t->n_expert, &s->all_bytes) ||
	    __builtin_mul_overflow(max, (uint64_t)t->k, &s->min_cache))
		goto overflow;

	/* Forward: flatten, check ids, count distinct keys. `seen` holds the
	 * step (+1) that last used a key, so a repeat within a step shows. */
	memset(seen, 0, n_keys * sizeof(*seen));
	for (uint64_t st = 0; st < s->n_steps; st++) {
		uint32_t layer = (uint32_t)(st % t->n_layers);
		const uint16_t *e = &t->expert[st * t->k];
		for (uint32_t j = 0; j < t->k; j++) {
			if (e[j] >= t->n_expert) {
				rc = ms_err_set(err, -EINVAL,
						"token %llu layer %u: expert %u is "
						"out of range (the trace has %u)",
						(unsigned long long)(st / t->n_layers),
						layer, e[j], t->n_expert);
				goto fail;
			}
			uint32_t key = layer * t->n_expert + e[j];
			if (seen[key] == st + 1) {
				rc = ms_err_set(err, -EINVAL,
						"token %llu layer %u: expert %u is "
						"chosen twice",
						(unsigned long long)(st / t->n_layers),
						layer, e[j]);
				goto fail;
			}
			s->distinct += !seen[key];
			seen[key] = st + 1;
			s->key[st * t->k + j] = key;
		}
	}
	/* Backward: the next use of each access, for MIN. */
	for (uint64_t i = 0; i < n_keys; i++)
		seen[i] = MS_SIM_NEVER;
	for (uint64_t i = s->n_access; i-- > 0;) {
		s->next[i] = seen[s->key[i]];
		seen[s->key[i]] = i;
	}
	free(seen);
	*out = s;
	return 0;
overflow:
	rc = ms_err_set(err, -EOVERFLOW,
			"expert bytes of the trace's layers overflow 64 bits");
fail:
	free(seen);
	ms_sim_free(s);
	return rc;
}

int ms_sim_layer_bytes(const struct ms_trace *t, const struct ms_model *m,
		       uint64_t **out, struct ms_err *err)
{
	*out = NULL;
	int rc = ms_trace_check_model(t, m, err);
	if (rc)
		return rc;
	uint64_t *b = malloc(t->n_layers * sizeof(*b));
	if (!b)
		return ms_err_set(err, -ENOMEM, "out of memory");
	uint32_t j = 0;
	for (uint32_t l = 0; l < m->n_layers && j < t->n_layers; l++)
		if (!m->layers[l].nextn)
			b[j++] = m->layers[l].expert_bytes;
	*out = b;
	return 0;
}

/* ---- one run ---------------------------------------------------------------- */

#define NONE UINT32_MAX

struct kstate {
	uint64_t last;     /* access index of the last use */
	uint64_t nextu;    /* MIN: access index of the next use after `last` */
	uint32_t prev, next; /* LRU/FIFO list, NONE at the ends */
	uint32_t hpos;     /* LFU/MIN: heap index + 1; 0 = not in the heap */
	uint32_t freq;     /* LFU: uses since loaded */
	uint8_t resident;
	uint8_t pins;      /* 0..2: step s, and step s+1 while prefetching */
	uint8_t pf;        /* loaded by a prefetch, not used since */
};

struct hnode {
	uint64_t a, b; /* priority, compared (a, b): the smallest goes first */
	uint32_t key;
};

struct run {
	const struct ms_sim *s;
	enum ms_sim_policy policy;
	bool use_heap;
	uint64_t cap, used, pinned_bytes;
	struct kstate *ks;
	uint32_t head, tail;
	struct hnode *heap;
	uint32_t hn;
	struct ms_sim_result *r;
};

static inline uint64_t key_bytes(const struct run *R, uint32_t key)
{
	return R->s->layer_bytes[key / R->s->n_expert];
}

/* -- the list (LRU, FIFO) -- */

static inline void list_unlink(struct run *R, uint32_t key)
{
	struct kstate *k = &R->ks[key];
	if (k->prev != NONE)
		R->ks[k->prev].next = k->next;
	else
		R->head = k->next;
	if (k->next != NONE)
		R->ks[k->next].prev = k->prev;
	else
		R->tail = k->prev;
	k->prev = k->next = NONE;
}

static inline void list_append(struct run *R, uint32_t key)
{
	struct kstate *k = &R->ks[key];
	k->next = NONE;
	k->prev = R->tail;
	if (R->tail != NONE)
		R->ks[R->tail].next = key;
	else
		R->head = key;
	R->tail = key;
}

/* -- the heap (LFU, MIN) -- */

static inline bool hless(const struct hnode *x, const struct hnode *y)
{
	return x->a < y->a || (x->a == y->a && x->b < y->b);
}

static inline void hset(struct run *R, uint32_t i, struct hnode n)
{
	R->heap[i] = n;
	R->ks[n.key].hpos = i + 1;
}

static void heap_up(struct run *R, uint32_t i)
{
	struct hnode n = R->heap[i];
	while (i) {
		uint32_t p = (i - 1) / 2;
		if (!hless(&n, &R->heap[p]))
			break;
		hset(R, i, R->heap[p]);
		i = p;
	}
	hset(R, i, n);
}

static void heap_down(struct run *R, uint32_t i)
{
	struct hnode n = R->heap[i];
	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= R->hn)
			break;
		if (c + 1 < R->hn && hless(&R->heap[c + 1], &R->heap[c]))
			c++;
		if (!hless(&R->heap[c], &n))
			break;
		hset(R, i, R->heap[c]);
		i = c;
	}
	hset(R, i, n);
}

static void heap_insert(struct run *R, uint32_t key)
{
	const struct kstate *k = &R->ks[key];
	struct hnode n = { .key = key, .b = k->last };
	/* MIN: furthest next use first. With unequal sizes this is the
	 * classic bound, not the optimum (see sim.h): it may evict several
	 * small keys where one big key used a little sooner would do. */
	if (R->policy == MS_SIM_MIN)
		n.a = MS_SIM_NEVER - k->nextu;
	else
		n.a = k->freq;                 /* fewest uses first */
	R->heap[R->hn++] = n;
	heap_up(R, R->hn - 1);
}

static void heap_remove(struct run *R, uint32_t key)
{
	uint32_t i = R->ks[key].hpos - 1;
	R->ks[key].hpos = 0;
	if (--R->hn == i)
		return;
	R->heap[i] = R->heap[R->hn];
	R->ks[R->heap[i].key].hpos = i + 1;
	if (i && hless(&R->heap[i], &R->heap[(i - 1) / 2]))
		heap_up(R, i);
	else
		heap_down(R, i);
}

/* -- cache operations -- */

static inline void pin(struct run *R, uint32_t key)
{
	struct kstate *k = &R->ks[key];
	if (k->pins++)
		return;
	R->pinned_bytes += key_bytes(R, key);
	if (R->use_heap)
		heap_remove(R, key);
}

/* The end of the step that used `key` as access `i`. */
static inline void use_unpin(struct run *R, uint32_t key, uint64_t i)
{
	struct kstate *k = &R->ks[key];
	k->last = i;
	k->nextu = R->s->next[i];
	k->freq++;
	if (R->policy == MS_SIM_LRU) {
		list_unlink(R, key);
		list_append(R, key);
	}
	if (--k->pins)
		return;
	R->pinned_bytes -= key_bytes(R, key);
	if (R->use_heap)
		heap_insert(R, key);
}

static inline void load(struct run *R, uint32_t key, bool prefetch)
{
	struct kstate *k = &R->ks[key];
	uint64_t b = key_bytes(R, key);
	k->resident = 1;
	k->pins = 1;
	k->pf = prefetch;
	k->freq = 0;
	R->used += b;
	R->pinned_bytes += b;
	if (R->used > R->r->peak_bytes)
		R->r->peak_bytes = R->used;
	if (!R->use_heap)
		list_append(R, key);
}

static bool evict_one(struct run *R)
{
	uint32_t v;
	if (R->use_heap) {
		if (!R->hn)
			return false;
		v = R->heap[0].key;
		heap_remove(R, v);
	} else {
		v = R->head;
		while (v != NONE && R->ks[v].pins)
			v = R->ks[v].next;
		if (v == NONE)
			return false;
	}
	if (!R->use_heap)
		list_unlink(R, v);
	R->ks[v].resident = 0;
	R->ks[v].pf = 0;
	R->used -= key_bytes(R, v);
	R->r->evictions++;
	return true;
}

/* Evicts until `bytes` more fit; false (and nothing evicted) when the
 * pinned keys leave too little room. */
static bool make_room(struct run *R, uint64_t bytes)
{
	if (R->cap - R->pinned_bytes < bytes)
		return false;
	while (R->used + bytes > R->cap)
		if (!evict_one(R))
			return false; /* cannot happen: unpinned bytes suffice */
	return true;
}

int ms_sim_run(const struct ms_sim *s, const struct ms_sim_opts *o,
	       struct ms_sim_result *r, struct ms_err *err)
{
	memset(r, 0, sizeof(*r));
	if ((unsigned)o->policy >= MS_SIM_POLICY_COUNT)
		return ms_err_set(err, -EINVAL, "unknown policy %d", o->policy);
	if (o->cache_bytes < s->min_cache)
		return ms_err_set(err, -EINVAL,
				  "a cache of %llu bytes cannot hold one step's "
				  "%u experts: the minimum is %llu bytes (%u x "
				  "%llu, the largest expert)",
				  (unsigned long long)o->cache_bytes, s->k,
				  (unsigned long long)s->min_cache, s->k,
				  (unsigned long long)(s->min_cache / s->k));

	struct run R = {
		.s = s,
		.policy = o->policy,
		.use_heap = o->policy == MS_SIM_LFU || o->policy == MS_SIM_MIN,
		.cap = o->cache_bytes,
		.head = NONE,
		.tail = NONE,
		.r = r,
	};
	R.ks = malloc(s->n_keys * sizeof(*R.ks));
	if (R.use_heap)
		R.heap = malloc(s->n_keys * sizeof(*R.heap));
	if (!R.ks || (R.use_heap && !R.heap)) {
		free(R.ks);
		free(R.heap);
		return ms_err_set(err, -ENOMEM,
				  "out of memory for %llu experts' state",
				  (unsigned long long)s->n_keys);
	}
	for (uint64_t i = 0; i < s->n_keys; i++)
		R.ks[i] = (struct kstate){ .prev = NONE, .next = NONE };

	const uint32_t k = s->k;
	const uint32_t *K = s->key;
	int rc = 0;
	uint8_t hit[MS_TRACE_MAX_K];
	for (uint64_t st = 0; st < s->n_steps; st++) {
		const uint64_t base = st * k;
		/* With prefetch on, step st's resident experts were pinned
		 * for it by the prefetch during st - 1. */
		const bool pinned = o->prefetch && st > 0;
		for (uint32_t j = 0; j < k; j++) {
			struct kstate *ks = &R.ks[K[base + j]];
			hit[j] = ks->resident;
			if (!hit[j])
				continue;
			if (!pinned)
				pin(&R, K[base + j]);
			if (ks->pf) {
				r->prefetch_hits++;
				ks->pf = 0;
			} else {
				r->hits++;
			}
		}
		for (uint32_t j = 0; j < k; j++) {
			if (hit[j])
				continue;
			uint64_t b = key_bytes(&R, K[base + j]);
			if (!make_room(&R, b)) {
				rc = ms_err_set(err, -EFAULT,
						"internal: no room at access %llu",
						(unsigned long long)(base + j));
				goto out;
			}
			load(&R, K[base + j], false);
			r->misses++;
			r->bytes_demand += b;
		}
		if (o->prefetch && st + 1 < s->n_steps) {
			const uint32_t *N = &K[base + k];
			for (uint32_t j = 0; j < k; j++)
				if (R.ks[N[j]].resident)
					pin(&R, N[j]);
			for (uint32_t j = 0; j < k; j++) {
				if (R.ks[N[j]].resident)
					continue;
				uint64_t b = key_bytes(&R, N[j]);
				if (!make_room(&R, b)) {
					r->prefetch_skipped++;
					continue;
				}
				load(&R, N[j], true);
				r->prefetch_loads++;
				r->bytes_prefetch += b;
			}
		}
		for (uint32_t j = 0; j < k; j++)
			use_unpin(&R, K[base + j], base + j);
	}
	r->tokens = s->n_tokens;
	r->accesses = s->n_access;
	r->distinct = s->distinct;
out:
	free(R.ks);
	free(R.heap);
	return rc;
}

static double frac(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0.0;
}

double ms_sim_hit_rate(const struct ms_sim_result *r)
{
	return frac(r->hits, r->accesses);
}

double ms_sim_prefetch_rate(const struct ms_sim_result *r)
{
	return frac(r->prefetch_hits, r->accesses);
}

double ms_sim_miss_rate(const struct ms_sim_result *r)
{
	return frac(r->misses, r->accesses);
}

/* ---- sizes -------------------------------------------------------------------- */

int ms_sim_parse_size(const char *str, uint64_t all_bytes, uint64_t *out)
{
	size_t n = strlen(str);

	*out = 0;
	if (n > 1 && str[n - 1] == '%') {
		/* A share of the expert bytes: digits, an optional fraction. */
		char *end;
		if (str[0] < '0' || str[0] > '9')
			return -EINVAL;
		double pct = strtod(str, &end);
		if (end != str + n - 1 || !(pct > 0))
			return -EINVAL;
		long double v = (long double)pct / 100.0L * (long double)all_bytes;
		if (v >= 18446744073709551615.0L)
			return -ERANGE;
		*out = (uint64_t)v;
		return *out ? 0 : -EINVAL;
	}
	int rc = ms_parse_size(str, out); /* K/M/G/T, KiB/KB/B, fractions */
	if (rc)
		return rc;
	return *out ? 0 : -EINVAL;
}
