/*
 * engine/sampler.c - picking the next token from the logits (engine.h).
 *
 * The order is llama.cpp's common sampler chain, so that the same settings
 * mean the same thing here and there: repetition penalty over the last
 * repeat_last_n accepted tokens, top-k, top-p on the softmax of what is left,
 * min-p, then the temperature and one draw. temp <= 0 is greedy (the argmax
 * after the penalty, as llama.cpp's temperature sampler leaves only the
 * largest logit when temp <= 0).
 *
 * Cost with a 150k-200k vocabulary: the logits are copied once into a
 * candidate array (the caller's are never written), and nothing is sorted
 * whole. Candidates are ordered by (logit descending, id ascending): a total
 * order, so that ties always resolve to the lowest id and the result of a
 * selection never depends on how the selection went. top-k is a selection
 * of k (a heap of k in one pass for the usual small k, else quickselect)
 * and a sort of those k; top-p with top-k off is a quickselect by
 * probability mass rather than by count, O(n) and no sort; min-p is a
 * threshold on the logits (p >= min_p * p_max is l >= l_max + log(min_p))
 * and needs no order; the draw is one linear pass. All buffers are made at
 * init.
 *
 * The generator is xoshiro256** seeded through splitmix64 (Vigna's
 * recommendation), and the selections' pivots come from a second splitmix64
 * stream of the same seed: the same seed, logits and accepted tokens give
 * the same tokens (across machines too, as far as their expf agrees).
 */
#include "moestream/engine.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The penalty's window is kept in memory: 1M tokens is far past any n_ctx
 * the engine takes, and bounds the allocation from a bad --repeat-last-n. */
#define REPEAT_LAST_N_MAX (1 << 20)

struct cand {
	float l;
	int32_t id;
	float w;     /* exp(l - max): top-p's weight, set where it is used */
};

struct ms_sampler {
	struct ms_sampler_params p;
	uint32_t n_vocab;
	struct cand *c;      /* n_vocab candidates */
	float *pr;           /* their probabilities, same index */
	int32_t *hist;       /* ring of the last repeat_last_n accepted tokens */
	uint32_t hist_n, hist_at;
	uint64_t rng[4];     /* xoshiro256** */
	uint64_t pivot;      /* splitmix64 state for quickselect pivots */
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Uniform in [0, 1): the top 53 bits. */
static double rng_uniform(uint64_t s[4])
{
	return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

void ms_sampler_params_default(struct ms_sampler_params *p)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t s = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	s ^= (uint64_t)getpid() << 32;
	*p = (struct ms_sampler_params){
		.temp = 0.8f,
		.top_k = 40,
		.top_p = 0.95f,
		.min_p = 0.05f,
		.repeat_penalty = 1.0f,
		.repeat_last_n = 64,
		.seed = splitmix64(&s),
	};
}

/* One place for every rule on the parameters; the message names the value. */
static int check_params(const struct ms_sampler_params *p, uint32_t n_vocab,
			struct ms_err *err)
{
	if (n_vocab == 0 || n_vocab > MS_VOCAB_MAX_TOKENS)
		return ms_err_set(err, -EINVAL, "sampler: n_vocab %u is not in "
				  "1..%u", n_vocab, MS_VOCAB_MAX_TOKENS);
	if (!isfinite(p->temp))
		return ms_err_set(err, -EINVAL, "sampler: temp %g is not a finite "
				  "number (<= 0 is greedy)", (double)p->temp);
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return ms_err_set(err, -EINVAL, "sampler: top_p %g is not in (0, 1] "
				  "(1 is off)", (double)p->top_p);
	if (!(p->min_p <= 1.0f) || isnan(p->min_p))
		return ms_err_set(err, -EINVAL, "sampler: min_p %g is not <= 1 "
				  "(<= 0 is off)", (double)p->min_p);
	if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
		return ms_err_set(err, -EINVAL, "sampler: repeat_penalty %g is not "
				  "a finite number > 0 (1 is off)",
				  (double)p->repeat_penalty);
	if (p->repeat_last_n < 0 || p->repeat_last_n > REPEAT_LAST_N_MAX)
		return ms_err_set(err, -EINVAL, "sampler: repeat_last_n %d is not "
				  "in 0..%d", p->repeat_last_n, REPEAT_LAST_N_MAX);
	return 0;
}

int ms_sampler_init(struct ms_sampler **out, const struct ms_sampler_params *p,
		    uint32_t n_vocab, struct ms_err *err)
{
	*out = NULL;
	int rc = check_params(p, n_vocab, err);
	if (rc)
		return rc;
	struct ms_sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return ms_err_set(err, -ENOMEM, "sampler: out of memory");
	s->p = *p;
	s->n_vocab = n_vocab;
	s->c = malloc((size_t)n_vocab * sizeof(*s->c));
	s->pr = malloc((size_t)n_vocab * sizeof(*s->pr));
	if (p->repeat_last_n > 0)
		s->hist = malloc((size_t)p->repeat_last_n * sizeof(*s->hist));
	if (!s->c || !s->pr || (p->repeat_last_n > 0 && !s->hist)) {
		rc = ms_err_set(err, -ENOMEM, "sampler: out of memory for %u "
				"candidates", n_vocab);
		goto err;
	}
	uint64_t seed = p->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&seed);
	s->pivot = p->seed ^ 0x5deece66dull;
	*out = s;
	return 0;
err:
	ms_sampler_free(s);
	return rc;
}

void ms_sampler_free(struct ms_sampler *s)
{
	if (!s)
		return;
	free(s->c);
	free(s->pr);
	free(s->hist);
	free(s);
}

void ms_sampler_accept(struct ms_sampler *s, int32_t token)
{
	/* An id the vocabulary has not got cannot be penalised: dropped. */
	if (!s || s->p.repeat_last_n <= 0 || token < 0 ||
	    (uint32_t)token >= s->n_vocab)
		return;
	s->hist[s->hist_at] = token;
	s->hist_at = (s->hist_at + 1) % (uint32_t)s->p.repeat_last_n;
	if (s->hist_n < (uint32_t)s->p.repeat_last_n)
		s->hist_n++;
}

/* a before b: larger logit, then lower id. A total order on candidates. */
static inline bool better(const struct cand *a, const struct cand *b)
{
	return a->l > b->l || (a->l == b->l && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb)
{
	const struct cand *a = pa, *b = pb;
	return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

static inline void swap_cand(struct cand *a, struct cand *b)
{
	struct cand t = *a;
	*a = *b;
	*b = t;
}

/* Partitions c[lo..hi] (lo < hi) around a pseudo-random pivot: returns its
 * final place st, with c[lo..st) better than it and c(st..hi] worse. The
 * order is total, so no run of equal keys can make selection quadratic; the
 * random pivot guards already ordered rows. */
static uint32_t partition(struct cand *c, uint32_t lo, uint32_t hi,
			  uint64_t *ps)
{
	uint32_t pi = lo + (uint32_t)(splitmix64(ps) % (hi - lo + 1));
	swap_cand(&c[pi], &c[hi]);
	struct cand pv = c[hi];
	uint32_t st = lo;
	for (uint32_t i = lo; i < hi; i++)
		if (better(&c[i], &pv))
			swap_cand(&c[i], &c[st++]);
	swap_cand(&c[st], &c[hi]);
	return st;
}

/* Sift-down in a heap of k whose root is the worst (a min-heap in the
 * candidate order). */
static void heap_down(struct cand *h, uint32_t k, uint32_t i)
{
	for (;;) {
		uint32_t w = i, a = 2 * i + 1, b = a + 1;
		if (a < k && better(&h[w], &h[a]))
			w = a;
		if (b < k && better(&h[w], &h[b]))
			w = b;
		if (w == i)
			return;
		swap_cand(&h[i], &h[w]);
		i = w;
	}
}

/* Moves the k best of c[0..n) to c[0..k) (in no order), 0 < k < n. A small
 * k (top-k's usual 40) is one pass against a heap of k, which most
 * candidates leave at the first comparison; a large one is Hoare's
 * selection. */
static void select_top(struct cand *c, uint32_t n, uint32_t k, uint64_t *ps)
{
	if (k <= 1024 && k <= n / 16) {
		for (uint32_t i = k / 2; i-- > 0;)
			heap_down(c, k, i);
		for (uint32_t i = k; i < n; i++)
			if (better(&c[i], &c[0])) {
				swap_cand(&c[i], &c[0]);
				heap_down(c, k, 0);
			}
		return;
	}
	uint32_t lo = 0, hi = n - 1;
	while (lo < hi) {
		uint32_t st = partition(c, lo, hi, ps);
		/* c[0..st) are the st best, c[st] the next. */
		if (st == k || st + 1 == k)
			return;
		if (st > k)
			hi = st - 1;
		else
			lo = st + 1;
	}
}

/* Probabilities of c[0..n) (softmax of l / t) into pr. Divided, not
 * multiplied by 1/t, so that a tiny t still gives the max exp(0) = 1. */
static void softmax(const struct cand *c, float *pr, uint32_t n, float t)
{
	float mx = -INFINITY;
	for (uint32_t i = 0; i < n; i++)
		if (c[i].l > mx)
			mx = c[i].l;
	double sum = 0;
	for (uint32_t i = 0; i < n; i++) {
		float e = expf((c[i].l - mx) / t);
		pr[i] = e;
		sum += e;
	}
	float inv = (float)(1.0 / sum);
	for (uint32_t i = 0; i < n; i++)
		pr[i] *= inv;
}

/* top-p over c[0..n): the size of the smallest set, first in (logit, id)
 * order, whose probability reaches p (at least 1), moved to the front.
 * When c is sorted that is a prefix sum. When it is not (top-k off), it is a
 * selection by mass, not by count: partition around a pivot, and go into the
 * better side when it already holds the mass still needed, else take it
 * whole (and the pivot) and go into the worse side. O(n) expected, nothing
 * sorted; the set is left unordered. The mass is compared unnormalised
 * (cum >= p * total), which is llama.cpp's test on the softmax. */
static uint32_t top_p_cut(struct ms_sampler *s, uint32_t n, bool sorted)
{
	struct cand *c = s->c;
	double p = s->p.top_p, all = 0, acc = 0;
	float mx = -INFINITY;
	for (uint32_t i = 0; i < n; i++)
		if (c[i].l > mx)
			mx = c[i].l;
	for (uint32_t i = 0; i < n; i++)
		all += c[i].w = expf(c[i].l - mx);
	double target = p * all;
	if (sorted) {
		for (uint32_t i = 0; i < n; i++) {
			acc += c[i].w;
			if (acc >= target)
				return i + 1;
		}
		return n;
	}
	/* Invariant: c[0..lo) are in the set, their mass acc < target, and
	 * the set ends in c[lo..hi]. */
	uint32_t lo = 0, hi = n - 1;
	while (lo < hi) {
		uint32_t st = partition(c, lo, hi, &s->pivot);
		double m = 0;
		for (uint32_t i = lo; i < st; i++)
			m += c[i].w;
		if (acc + m >= target) {
			hi = st - 1; /* st > lo: acc alone is short of it */
			continue;
		}
		acc += m + c[st].w;
		if (acc >= target || st == hi)
			return st + 1;
		lo = st + 1;
	}
	return lo + 1;
}

static inline float clean(float l)
{
	return isnan(l) ? -INFINITY : l == INFINITY ? FLT_MAX : l;
}

int32_t ms_sampler_sample(struct ms_sampler *s, const float *logits)
{
	if (!s || !logits)
		return MS_TOKEN_NULL;
	struct cand *c = s->c;
	uint32_t n = s->n_vocab;

	/* The candidates: NaN as -inf (never chosen), +inf as the largest
	 * float (so that differences to the max stay numbers). A row with
	 * nothing above -inf has no distribution: the lowest id. */
	bool any = false;
	for (uint32_t i = 0; i < n; i++) {
		float l = clean(logits[i]);
		any |= l != -INFINITY;
		c[i].l = l;
		c[i].id = (int32_t)i;
	}
	if (!any)
		return 0;
	/* llama.cpp's repetition penalty: once per distinct token in the
	 * window, however often it occurs; computed from the caller's logit,
	 * so a repeated id is simply penalised again to the same value. */
	float rp = s->p.repeat_penalty;
	if (rp != 1.0f)
		for (uint32_t i = 0; i < s->hist_n; i++) {
			int32_t t = s->hist[i];
			float l = clean(logits[t]);
			if (l == -INFINITY)
				continue;
			l = l <= 0.0f ? l * rp : l / rp;
			c[t].l = fmaxf(fminf(l, FLT_MAX), -FLT_MAX);
		}

	if (s->p.temp <= 0.0f) {
		uint32_t b = 0;
		for (uint32_t i = 1; i < n; i++)
			if (better(&c[i], &c[b]))
				b = i;
		return c[b].id;
	}

	bool sorted = false;
	if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n) {
		uint32_t k = (uint32_t)s->p.top_k;
		select_top(c, n, k, &s->pivot);
		n = k;
		qsort(c, n, sizeof(*c), cmp_cand);
		sorted = true;
	}
	if (n == 1)
		return c[0].id;
	if (s->p.top_p < 1.0f)
		n = top_p_cut(s, n, sorted);
	if (s->p.min_p > 0.0f && n > 1) {
		/* p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p). */
		float mx = -INFINITY;
		for (uint32_t i = 0; i < n; i++)
			if (c[i].l > mx)
				mx = c[i].l;
		float th = mx + logf(s->p.min_p);
		uint32_t m = 0;
		if (sorted) {
			while (m < n && c[m].l >= th)
				m++;
		} else {
			for (uint32_t i = 0; i < n; i++)
				if (c[i].l >= th)
					c[m++] = c[i];
		}
		n = m ? m : 1;
	}
	if (n == 1)
		return c[0].id;

	softmax(c, s->pr, n, s->p.temp);
	double r = rng_uniform(s->rng), cum = 0;
	for (uint32_t i = 0; i < n; i++) {
		cum += s->pr[i];
		if (r < cum)
			return c[i].id;
	}
	/* Rounding left r past the last sum: the last with any mass. */
	for (uint32_t i = n; i-- > 0;)
		if (s->pr[i] > 0.0f)
			return c[i].id;
	return c[0].id;
}
