/*
 * prefetch.c - the `history` prefetch policy: an online table of
 * layer-to-layer expert transitions, (l, e) -> (l+1, e'), with decay.
 *
 * Why this works: one hidden state drives every router of a token, so the
 * experts chosen at layer l say a lot about those at l+1 (published figures
 * put next-layer predictability around 70%). Each observed pair adds a
 * weight; the weight grows geometrically with every observation of a layer,
 * which is the same as decaying everything older by `decay` per token,
 * without touching the table. When the weight gets large, the layer's rows
 * are scaled down together.
 *
 * Prediction: every expert e chosen at layer l gives each candidate f the
 * probability P(f | e) - how often f was chosen at l+1 when e was chosen at
 * l - and f's score is the largest of these, in [0, 1]. The largest, not the
 * sum: the k experts of a token co-occur, so every row also carries the
 * successors of the others, and summing lets that co-occurrence noise crowd
 * out the one successor each voter really predicts. The top `width` with score >= min_prob are prefetched. Deeper
 * layers chain: the prediction for l+1 votes for l+2, and so on, with scores
 * multiplied along the way.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/cache.h"

#define RESCALE_AT 1e30f

struct ms_prefetcher {
	uint32_t n_layers, n_expert;
	float decay;
	float *t;       /* [n_layers][n_expert][n_expert]: t[l][e][f]: e at l-1
			   was followed by f at l (row l = into layer l) */
	float *rowsum;  /* [n_layers][n_expert] */
	float *w;       /* [n_layers]: the weight of the next observation */
	float *votes;   /* [n_expert]: predict's scratch, under mu */
	uint64_t observed;
	pthread_mutex_t mu;
};

int ms_prefetcher_init(struct ms_prefetcher **out, uint32_t n_layers,
		       uint32_t n_expert, float decay, struct ms_err *err)
{
	*out = NULL;
	uint64_t cells = (uint64_t)n_layers * n_expert * n_expert;
	if (!n_layers || !n_expert || cells > (1ull << 28))
		return ms_err_set(err, -E2BIG,
				  "prefetch history for %u layers x %u experts "
				  "(%llu cells) is too large",
				  n_layers, n_expert, (unsigned long long)cells);
	if (!(decay > 0.0f && decay <= 1.0f))
		return ms_err_set(err, -EINVAL, "prefetch decay %g is not in (0, 1]",
				  (double)decay);
	struct ms_prefetcher *p = calloc(1, sizeof(*p));
	if (!p)
		return ms_err_set(err, -ENOMEM,
				  "out of memory for the prefetch history");
	p->n_layers = n_layers;
	p->n_expert = n_expert;
	p->decay = decay;
	p->t = calloc(cells, sizeof(float));
	p->rowsum = calloc((size_t)n_layers * n_expert, sizeof(float));
	p->w = malloc(n_layers * sizeof(float));
	p->votes = malloc(n_expert * sizeof(float));
	if (!p->t || !p->rowsum || !p->w || !p->votes) {
		ms_prefetcher_free(p);
		return ms_err_set(err, -ENOMEM,
				  "out of memory for the prefetch history (%llu MB)",
				  (unsigned long long)(cells * 4 >> 20));
	}
	for (uint32_t l = 0; l < n_layers; l++)
		p->w[l] = 1.0f;
	pthread_mutex_init(&p->mu, NULL);
	*out = p;
	return 0;
}

void ms_prefetcher_free(struct ms_prefetcher *p)
{
	if (!p)
		return;
	free(p->t);
	free(p->rowsum);
	free(p->w);
	free(p->votes);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

static float *row(struct ms_prefetcher *p, uint32_t layer, uint32_t e)
{
	return &p->t[((size_t)layer * p->n_expert + e) * p->n_expert];
}

void ms_prefetcher_observe(struct ms_prefetcher *p, uint32_t layer,
			   const uint16_t *prev, unsigned n_prev,
			   const uint16_t *cur, unsigned n_cur)
{
	if (!p || !layer || layer >= p->n_layers)
		return;
	pthread_mutex_lock(&p->mu);
	float w = p->w[layer];
	for (unsigned i = 0; i < n_prev; i++) {
		if (prev[i] >= p->n_expert)
			continue;
		float *r = row(p, layer, prev[i]);
		for (unsigned j = 0; j < n_cur; j++)
			if (cur[j] < p->n_expert)
				r[cur[j]] += w;
		/* rowsum counts observations, so r[f] / rowsum = P(f | e) */
		p->rowsum[(size_t)layer * p->n_expert + prev[i]] += w;
	}
	w /= p->decay;
	if (w > RESCALE_AT) {
		/* Scale the layer's history down; relative weights stay. */
		size_t n = (size_t)p->n_expert * p->n_expert;
		float *r = row(p, layer, 0);
		/* Forgotten history is flushed to 0, not left as denormals
		 * whose ratios no longer mean anything. */
		for (size_t i = 0; i < n; i++) {
			r[i] /= w;
			if (r[i] < 1e-20f)
				r[i] = 0;
		}
		for (uint32_t e = 0; e < p->n_expert; e++) {
			float *rs = &p->rowsum[(size_t)layer * p->n_expert + e];
			*rs /= w;
			if (*rs < 1e-20f)
				*rs = 0;
		}
		w = 1.0f;
	}
	p->w[layer] = w;
	p->observed++;
	pthread_mutex_unlock(&p->mu);
}

unsigned ms_prefetcher_predict(struct ms_prefetcher *p, uint32_t layer,
			       const uint16_t *cur, const float *cur_score,
			       unsigned n_cur, unsigned width, float min_prob,
			       uint16_t *out, float *out_score)
{
	if (!p || layer + 1 >= p->n_layers || !width || !n_cur)
		return 0;
	pthread_mutex_lock(&p->mu);
	float *votes = p->votes;
	memset(votes, 0, p->n_expert * sizeof(float));
	float voters = 0;
	for (unsigned i = 0; i < n_cur; i++) {
		if (cur[i] >= p->n_expert)
			continue;
		float s = cur_score ? cur_score[i] : 1.0f;
		float sum = p->rowsum[(size_t)(layer + 1) * p->n_expert + cur[i]];
		voters += s;
		if (sum <= 0)
			continue;
		const float *r = row(p, layer + 1, cur[i]);
		for (uint32_t f = 0; f < p->n_expert; f++) {
			float v = s * r[f] / sum;
			if (v > votes[f])
				votes[f] = v;
		}
	}
	unsigned n = 0;
	if (voters > 0) {
		/* Top `width` by votes: selection, width is small. */
		for (unsigned k = 0; k < width; k++) {
			uint32_t best = UINT32_MAX;
			float bv = 0;
			for (uint32_t f = 0; f < p->n_expert; f++)
				if (votes[f] > bv) {
					bv = votes[f];
					best = f;
				}
			if (best == UINT32_MAX)
				break;
			float score = bv;
			if (score > 1.0f)
				score = 1.0f;
			votes[best] = 0;
			if (score < min_prob)
				break;
			out[n] = (uint16_t)best;
			if (out_score)
				out_score[n] = score;
			n++;
		}
	}
	pthread_mutex_unlock(&p->mu);
	return n;
}

uint64_t ms_prefetcher_observed(const struct ms_prefetcher *p)
{
	return p ? p->observed : 0;
}
