/*
 * t_prefetch - the history prefetch policy's transition table.
 *
 *  - A deterministic routing (expert e at layer l is always followed by
 *    (3e + 1) mod E at layer l+1) is predicted exactly, with score 1.
 *  - A noisy routing (each of the k successors follows the rule with
 *    probability 0.7, else random) is predicted with recall close to 0.7 on
 *    tokens it has not seen, and far above chance (k / E).
 *  - Decay: after the rule changes, the new rule wins within a few dozen
 *    observations; with decay 1 (no forgetting) the old rule still weighs.
 *  - min_prob and width are honoured; bad inputs (layer 0 observe, last
 *    layer predict, out-of-range experts) are ignored, not crashed on.
 */
#include <errno.h>
#include <string.h>

#include "moestream/cache.h"
#include "testutil.h"

#define L 6
#define E 64
#define K 8

static uint16_t rule(uint16_t e, int which)
{
	return (uint16_t)(which ? (5 * e + 7) % E : (3 * e + 1) % E);
}

/* One token: k distinct experts per layer, following the rule with prob p. */
static void token(uint64_t *rng, double p, int which, uint16_t ex[L][K])
{
	for (int l = 0; l < L; l++) {
		for (int j = 0; j < K; j++) {
			uint16_t e;
			bool dup;
			double pp = p;
			do {
				if (l > 0 && (double)(t_rand(rng) % 1000) < pp * 1000)
					e = rule(ex[l - 1][j], which);
				else
					e = (uint16_t)(t_rand(rng) % E);
				dup = false;
				for (int q = 0; q < j; q++)
					dup |= ex[l][q] == e;
				if (dup)
					pp = 0; /* taken: this slot falls back to random */
			} while (dup);
			ex[l][j] = e;
		}
	}
}

static double recall(struct ms_prefetcher *pf, uint64_t *rng, double p,
		     int which, int n_tokens)
{
	uint64_t hit = 0, total = 0;
	for (int t = 0; t < n_tokens; t++) {
		uint16_t ex[L][K];
		token(rng, p, which, ex);
		for (int l = 0; l + 1 < L; l++) {
			uint16_t pred[K];
			unsigned n = ms_prefetcher_predict(pf, (uint32_t)l, ex[l], NULL, K, K,
							   0.0f, pred, NULL);
			for (unsigned i = 0; i < n; i++)
				for (int j = 0; j < K; j++)
					hit += pred[i] == ex[l + 1][j];
			total += K;
		}
	}
	return (double)hit / (double)total;
}

static void train(struct ms_prefetcher *pf, uint64_t *rng, double p, int which,
		  int n_tokens)
{
	for (int t = 0; t < n_tokens; t++) {
		uint16_t ex[L][K];
		token(rng, p, which, ex);
		for (int l = 1; l < L; l++)
			ms_prefetcher_observe(pf, (uint32_t)l, ex[l - 1], K, ex[l], K);
	}
}

int main(void)
{
	uint64_t rng = t_seed();
	struct ms_prefetcher *pf;
	struct ms_err err = { 0 };

	/* Deterministic rule: exact, score 1. */
	if (ms_prefetcher_init(&pf, L, E, 0.99f, &err))
		t_fatal("%s", err.msg);
	train(pf, &rng, 1.0, 0, 200);
	uint16_t cur[K], pred[K];
	float score[K];
	for (int j = 0; j < K; j++)
		cur[j] = (uint16_t)(j * 7);
	unsigned n = ms_prefetcher_predict(pf, 2, cur, NULL, K, K, 0.5f, pred, score);
	T_CHECK(n == K, "deterministic rule: %u predictions, expected %d", n, K);
	for (unsigned i = 0; i < n; i++) {
		bool ok = false;
		for (int j = 0; j < K; j++)
			ok |= pred[i] == rule(cur[j], 0);
		T_CHECK(ok && score[i] > 0.99f, "prediction %u = %u (score %.3f) is not "
						"a successor", i, pred[i], (double)score[i]);
	}
	double r = recall(pf, &rng, 1.0, 0, 50);
	printf("deterministic rule: recall %.3f\n", r);
	T_CHECK(r > 0.99, "deterministic recall %.3f", r);
	ms_prefetcher_free(pf);

	/* Noisy rule: recall near p on unseen tokens, far above chance. */
	if (ms_prefetcher_init(&pf, L, E, 0.999f, &err))
		t_fatal("%s", err.msg);
	train(pf, &rng, 0.7, 0, 2000);
	r = recall(pf, &rng, 0.7, 0, 500);
	printf("noisy rule (p = 0.7): recall %.3f (chance %.3f)\n", r, (double)K / E);
	T_CHECK(r > 0.6 && r < 0.85, "noisy recall %.3f, expected near 0.7", r);

	/* min_prob cuts the unlikely; width caps the count. */
	n = ms_prefetcher_predict(pf, 1, cur, NULL, K, 3, 0.0f, pred, score);
	T_CHECK(n == 3, "width 3 gave %u", n);
	n = ms_prefetcher_predict(pf, 1, cur, NULL, K, K, 0.99f, pred, score);
	T_CHECK(n == 0, "min_prob 0.99 on a 0.7 rule gave %u predictions", n);
	ms_prefetcher_free(pf);

	/* Decay: the rule changes; with decay the new one wins soon. */
	for (int d = 0; d < 2; d++) {
		float decay = d ? 1.0f : 0.95f;
		if (ms_prefetcher_init(&pf, L, E, decay, &err))
			t_fatal("%s", err.msg);
		train(pf, &rng, 1.0, 0, 500);
		train(pf, &rng, 1.0, 1, 120);
		double r_new = recall(pf, &rng, 1.0, 1, 50);
		printf("decay %.2f: after switching rules, recall of the new one %.3f\n",
		       (double)decay, r_new);
		if (d == 0)
			T_CHECK(r_new > 0.95, "with decay the new rule has recall %.3f",
				r_new);
		else
			T_CHECK(r_new < 0.5, "without decay the old rule should still "
					     "dominate (recall of new %.3f)", r_new);
		ms_prefetcher_free(pf);
	}

	/* Long runs rescale without losing the rule. */
	if (ms_prefetcher_init(&pf, L, E, 0.8f, &err))
		t_fatal("%s", err.msg);
	train(pf, &rng, 1.0, 0, 1000); /* 0.8^-1000: rescaled three times */
	r = recall(pf, &rng, 1.0, 0, 20);
	printf("decay 0.80, 1000 tokens (rescaled): recall %.3f\n", r);
	/* not 1: at decay 0.8 an expert unseen for ~300 tokens has decayed
	 * below the float range and been forgotten, as it should */
	T_CHECK(r > 0.95, "after rescaling, recall %.3f", r);

	/* Bad inputs are ignored. */
	uint16_t bad[2] = { E + 5, 1 };
	ms_prefetcher_observe(pf, 0, bad, 2, bad, 2);
	ms_prefetcher_observe(pf, L + 3, bad, 2, bad, 2);
	T_CHECK(ms_prefetcher_predict(pf, L - 1, cur, NULL, K, K, 0, pred, NULL) == 0,
		"the last layer has no next layer to predict");
	n = ms_prefetcher_predict(pf, 1, bad, NULL, 2, K, 0, pred, NULL);
	T_CHECK(n <= K, "out-of-range voter gave %u", n);
	ms_prefetcher_free(pf);

	T_CHECK(ms_prefetcher_init(&pf, L, E, 0.0f, &err) == -EINVAL,
		"decay 0 accepted");
	T_CHECK(ms_prefetcher_init(&pf, 100000, 65535, 0.9f, &err) == -E2BIG,
		"a huge table accepted");
	printf("%s\n", err.msg);
	return t_done();
}
