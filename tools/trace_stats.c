/*
 * trace_stats.c - what a routing trace looks like to a cache (see trace.h).
 *
 * Per layer: how many experts it uses at all; how many of them a window of
 * 75 tokens touches (the "237 of 256 experts within 75 tokens" kind of
 * figure, averaged over every window position); how long an expert waits
 * before it is chosen again; how even its popularity is (entropy); the hit
 * rate of an LRU holding half the layer's experts; and how well the layer's
 * choices predict the next layer's.
 *
 * Everything is one or two passes over the trace, O(tokens x layers x k),
 * except predictability, which adds O(n_expert) per token and layer for the
 * top-k, and a dense n_expert^2 transition table per layer pair (one at a
 * time).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

const char *const ms_trace_reuse_bucket_name[MS_TRACE_REUSE_BUCKETS] = {
	"1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", ">128",
	"never",
};

static unsigned reuse_bucket(uint32_t d)
{
	if (d <= 2)
		return d - 1;
	unsigned b = 2; /* 3-4 */
	uint32_t hi = 4;
	while (d > hi && b < 8) {
		hi *= 2;
		b++;
	}
	return b; /* 8 is >128 */
}

/* Distinct experts, reuse histogram and entropy of one layer. */
static void layer_basic(const struct ms_trace *t, uint32_t l, uint32_t *last,
			uint64_t *count, struct ms_trace_layer_stats *s)
{
	uint32_t n = t->n_expert, k = t->k;
	memset(count, 0, n * sizeof(*count));
	for (uint32_t e = 0; e < n; e++)
		last[e] = UINT32_MAX;
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		const uint16_t *x = ms_trace_experts(t, tok, l);
		for (uint32_t j = 0; j < k; j++) {
			uint32_t e = x[j];
			s->reuse[last[e] == UINT32_MAX
					 ? MS_TRACE_REUSE_BUCKETS - 1
					 : reuse_bucket(tok - last[e])]++;
			last[e] = tok;
			count[e]++;
		}
	}
	double total = (double)t->n_tokens * k, h = 0;
	s->distinct = 0;
	for (uint32_t e = 0; e < n; e++) {
		if (!count[e])
			continue;
		s->distinct++;
		double p = (double)count[e] / total;
		h -= p * log2(p);
	}
	s->entropy_bits = h;
	s->entropy_ratio = n > 1 ? h / log2((double)n) : 1.0;
}

/* Mean over all window positions of the distinct experts in the window. */
static double layer_coverage(const struct ms_trace *t, uint32_t l, uint32_t w,
			     uint64_t *count)
{
	uint32_t n = t->n_expert, k = t->k, distinct = 0;
	memset(count, 0, n * sizeof(*count));
	double sum = 0;
	uint64_t windows = 0;
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		const uint16_t *x = ms_trace_experts(t, tok, l);
		for (uint32_t j = 0; j < k; j++)
			distinct += count[x[j]]++ == 0;
		if (tok >= w) {
			const uint16_t *o = ms_trace_experts(t, tok - w, l);
			for (uint32_t j = 0; j < k; j++)
				distinct -= --count[o[j]] == 0;
		}
		if (tok + 1 >= w) {
			sum += distinct;
			windows++;
		}
	}
	return windows ? sum / (double)windows / n : 0;
}

/* An LRU of `cap` experts of one layer, as a doubly linked list over expert
 * ids (O(1) per access). */
static double layer_lru(const struct ms_trace *t, uint32_t l, uint32_t cap,
			uint32_t *prev, uint32_t *next, uint8_t *in)
{
	const uint32_t NIL = UINT32_MAX;
	uint32_t n = t->n_expert, head = NIL, tail = NIL, size = 0;
	uint64_t hits = 0, total = 0;
	memset(in, 0, n);
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		const uint16_t *x = ms_trace_experts(t, tok, l);
		for (uint32_t j = 0; j < t->k; j++) {
			uint32_t e = x[j];
			total++;
			if (in[e]) {
				hits++;
				if (head == e)
					continue;
				/* unlink */
				next[prev[e]] = next[e];
				if (next[e] != NIL)
					prev[next[e]] = prev[e];
				else
					tail = prev[e];
			} else {
				if (size == cap) {
					uint32_t v = tail;
					tail = prev[v];
					if (tail != NIL)
						next[tail] = NIL;
					else
						head = NIL;
					in[v] = 0;
					size--;
				}
				in[e] = 1;
				size++;
			}
			/* push front */
			prev[e] = NIL;
			next[e] = head;
			if (head != NIL)
				prev[head] = e;
			head = e;
			if (tail == NIL)
				tail = e;
		}
	}
	return total ? (double)hits / (double)total : 0;
}

static bool in_top(const uint16_t *top, uint32_t k, uint16_t e)
{
	for (uint32_t i = 0; i < k; i++)
		if (top[i] == e)
			return true;
	return false;
}

/* Learns (l, e) -> (l+1, e') on tokens [0, half) and predicts the top-k of
 * l+1 on [half, n_tokens). Each expert chosen at l votes for its likeliest
 * successors: score(e') = max over e chosen at l of P(e' at l+1 | e at l);
 * ties go to the larger sum of those probabilities, then to the more popular
 * e', then to the lower id. The max, not the sum: a sum lets experts that
 * merely co-occurred with several of the chosen ones in a burst of tokens
 * crowd out each chosen expert's actual successor (on generated traces the
 * max recovers the planted partner map exactly; the sum loses a sixth). */
static double layer_predict(const struct ms_trace *t, uint32_t l,
			    uint32_t *tab, uint64_t *from, uint64_t *pop,
			    float *cond, float *score, float *sum, uint16_t *top)
{
	uint32_t n = t->n_expert, k = t->k, half = t->n_tokens / 2;
	memset(tab, 0, (size_t)n * n * sizeof(*tab));
	memset(from, 0, n * sizeof(*from));
	memset(pop, 0, n * sizeof(*pop));
	for (uint32_t tok = 0; tok < half; tok++) {
		const uint16_t *a = ms_trace_experts(t, tok, l);
		const uint16_t *b = ms_trace_experts(t, tok, l + 1);
		for (uint32_t i = 0; i < k; i++) {
			from[a[i]]++;
			pop[b[i]]++;
			uint32_t *row = &tab[(size_t)a[i] * n];
			for (uint32_t j = 0; j < k; j++)
				row[b[j]]++;
		}
	}
	/* P(e' | e) once, as floats: the loop below is the hot one */
	for (uint32_t e = 0; e < n; e++) {
		float inv = from[e] ? 1.0f / (float)from[e] : 0.0f;
		for (uint32_t x = 0; x < n; x++)
			cond[(size_t)e * n + x] = (float)tab[(size_t)e * n + x] * inv;
	}
	uint64_t got = 0, want = 0;
	for (uint32_t tok = half; tok < t->n_tokens; tok++) {
		const uint16_t *a = ms_trace_experts(t, tok, l);
		const uint16_t *b = ms_trace_experts(t, tok, l + 1);
		for (uint32_t e = 0; e < n; e++)
			score[e] = sum[e] = 0;
		for (uint32_t i = 0; i < k; i++) {
			const float *row = &cond[(size_t)a[i] * n];
			for (uint32_t e = 0; e < n; e++) {
				sum[e] += row[e];
				score[e] = row[e] > score[e] ? row[e] : score[e];
			}
		}
		/* top-k, kept sorted best first */
		uint32_t m = 0;
		for (uint32_t e = 0; e < n; e++) {
			uint32_t i = m;
			while (i > 0) {
				uint16_t o = top[i - 1];
				bool better = score[e] > score[o] ||
					      (score[e] == score[o] &&
					       (sum[e] > sum[o] ||
						(sum[e] == sum[o] && pop[e] > pop[o])));
				if (!better)
					break;
				i--;
			}
			if (i >= k)
				continue;
			uint32_t end = m < k ? m : k - 1;
			for (uint32_t q = end; q > i; q--)
				top[q] = top[q - 1];
			top[i] = (uint16_t)e;
			if (m < k)
				m++;
		}
		for (uint32_t j = 0; j < k; j++)
			got += in_top(top, k, b[j]);
		want += k;
	}
	return want ? (double)got / (double)want : -1;
}

int ms_trace_stats_compute(struct ms_trace_stats **out, const struct ms_trace *t,
			   uint32_t window, struct ms_err *err)
{
	*out = NULL;
	if (!window)
		return ms_err_set(err, -EINVAL, "coverage window of 0 tokens");
	uint32_t n = t->n_expert, L = t->n_layers;
	struct ms_trace_stats *s = calloc(1, sizeof(*s));
	uint32_t *last = malloc(n * sizeof(*last));
	uint32_t *prev = malloc(n * sizeof(*prev));
	uint32_t *next = malloc(n * sizeof(*next));
	uint64_t *count = malloc(n * sizeof(*count));
	uint64_t *pop = malloc(n * sizeof(*pop));
	uint8_t *in = malloc(n);
	float *score = malloc(n * sizeof(*score));
	float *sum = malloc(n * sizeof(*sum));
	uint16_t *top = malloc(t->k * sizeof(*top));
	bool predict = t->n_tokens >= 2 && L >= 2 &&
		       n <= MS_TRACE_PREDICT_MAX_EXPERT;
	uint32_t *tab = predict ? malloc((size_t)n * n * sizeof(*tab)) : NULL;
	float *cond = predict ? malloc((size_t)n * n * sizeof(*cond)) : NULL;
	int rc = 0;
	if (!s || !last || !prev || !next || !count || !pop || !in || !score ||
	    !sum || !top || (predict && (!tab || !cond)) ||
	    !(s->layer = calloc(L, sizeof(*s->layer)))) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for trace statistics");
		goto out;
	}
	s->n_layers = L;
	s->window = window < t->n_tokens ? window : t->n_tokens;
	s->lru_capacity = n / 2 ? n / 2 : 1;
	uint32_t n_pred = 0;
	for (uint32_t l = 0; l < L; l++) {
		struct ms_trace_layer_stats *x = &s->layer[l];
		x->block = t->blocks[l];
		layer_basic(t, l, last, count, x);
		x->coverage = s->window ? layer_coverage(t, l, s->window, count) : 0;
		x->lru_hit = layer_lru(t, l, s->lru_capacity, prev, next, in);
		x->predict = predict && l + 1 < L
				     ? layer_predict(t, l, tab, count, pop, cond, score,
						     sum, top)
				     : -1;
		s->distinct += x->distinct;
		s->coverage += x->coverage;
		s->entropy_bits += x->entropy_bits;
		s->entropy_ratio += x->entropy_ratio;
		s->lru_hit += x->lru_hit;
		if (x->predict >= 0) {
			s->predict += x->predict;
			n_pred++;
		}
		for (unsigned b = 0; b < MS_TRACE_REUSE_BUCKETS; b++)
			s->reuse[b] += x->reuse[b];
	}
	s->distinct /= L;
	s->coverage /= L;
	s->entropy_bits /= L;
	s->entropy_ratio /= L;
	s->lru_hit /= L;
	s->predict = n_pred ? s->predict / n_pred : -1;
	*out = s;
	s = NULL;
out:
	ms_trace_stats_free(s);
	free(last);
	free(prev);
	free(next);
	free(count);
	free(pop);
	free(in);
	free(score);
	free(sum);
	free(top);
	free(tab);
	free(cond);
	return rc;
}

void ms_trace_stats_free(struct ms_trace_stats *s)
{
	if (!s)
		return;
	free(s->layer);
	free(s);
}
