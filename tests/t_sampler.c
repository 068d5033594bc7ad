/*
 * t_sampler.c - the sampler (engine/sampler.c): greedy and its ties, top-k 1
 * as greedy at any temperature, the same tokens for the same seed, the
 * empirical distribution against the softmax, what top-p, min-p and the
 * repetition penalty must exclude or change, and every bad parameter refused
 * with its value named.
 *
 * The frequency checks draw 20000 times: a frequency's standard deviation is
 * at most sqrt(0.25 / 20000) = 0.0035, and the tolerance is 0.015 (over 4
 * sigma), so a correct sampler fails them about once in 10^5 runs; the seeds
 * are fixed, so a run is reproducible anyway.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moestream/engine.h"
#include "testutil.h"

#define DRAWS 20000

static struct ms_sampler_params plain(void)
{
	/* temp 1, every filter off, no penalty. */
	return (struct ms_sampler_params){ .temp = 1.0f, .top_k = 0, .top_p = 1.0f,
					   .min_p = 0.0f, .repeat_penalty = 1.0f,
					   .repeat_last_n = 64, .seed = 42 };
}

static struct ms_sampler *mk(const struct ms_sampler_params *p, uint32_t n)
{
	struct ms_sampler *s = NULL;
	struct ms_err err = { 0 };
	int rc = ms_sampler_init(&s, p, n, &err);
	if (rc)
		t_fatal("ms_sampler_init(n_vocab %u): %d %s", n, rc, err.msg);
	return s;
}

/* Counts of `draws` draws into cnt[n]. */
static void draw_n(struct ms_sampler *s, const float *l, uint32_t n,
		   uint32_t *cnt, int draws)
{
	memset(cnt, 0, n * sizeof(*cnt));
	for (int i = 0; i < draws; i++) {
		int32_t t = ms_sampler_sample(s, l);
		if (t < 0 || (uint32_t)t >= n) {
			t_fail_at(__FILE__, __LINE__, "drew id %d of %u", t, n);
			return;
		}
		cnt[t]++;
	}
}

static void draw(struct ms_sampler *s, const float *l, uint32_t n, uint32_t *cnt)
{
	draw_n(s, l, n, cnt, DRAWS);
}

static void softmax_ref(const float *l, uint32_t n, double temp, double *p)
{
	double mx = -INFINITY, sum = 0;
	for (uint32_t i = 0; i < n; i++)
		mx = l[i] > mx ? l[i] : mx;
	for (uint32_t i = 0; i < n; i++)
		sum += p[i] = exp((l[i] - mx) / temp);
	for (uint32_t i = 0; i < n; i++)
		p[i] /= sum;
}

static void check_freq(const char *what, const uint32_t *cnt, const double *p,
		       uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		double f = (double)cnt[i] / DRAWS;
		T_CHECK(fabs(f - p[i]) < 0.015, "%s: token %u drawn %.4f of the "
			"time, softmax says %.4f", what, i, f, p[i]);
	}
}

static void test_bad_params(void)
{
	struct bad {
		struct ms_sampler_params p;
		uint32_t n;
		const char *want;
	} b[16];
	int nb = 0;
	struct ms_sampler_params d = plain();
#define BAD(field, val, n_, w)                                                 \
	do {                                                                   \
		b[nb].p = d;                                                   \
		b[nb].p.field = val;                                           \
		b[nb].n = n_;                                                  \
		b[nb++].want = w;                                              \
	} while (0)
	BAD(temp, NAN, 10, "temp nan");
	BAD(temp, INFINITY, 10, "temp inf");
	BAD(top_p, 0.0f, 10, "top_p 0");
	BAD(top_p, -0.5f, 10, "top_p -0.5");
	BAD(top_p, 1.5f, 10, "top_p 1.5");
	BAD(top_p, NAN, 10, "top_p nan");
	BAD(min_p, NAN, 10, "min_p nan");
	BAD(min_p, 2.0f, 10, "min_p 2");
	BAD(repeat_penalty, 0.0f, 10, "repeat_penalty 0");
	BAD(repeat_penalty, -1.0f, 10, "repeat_penalty -1");
	BAD(repeat_penalty, NAN, 10, "repeat_penalty nan");
	BAD(repeat_penalty, INFINITY, 10, "repeat_penalty inf");
	BAD(repeat_last_n, -1, 10, "repeat_last_n -1");
	BAD(repeat_last_n, 1 << 30, 10, "repeat_last_n 1073741824");
	BAD(seed, 1, 0, "n_vocab 0");
#undef BAD
	for (int i = 0; i < nb; i++) {
		struct ms_sampler *s = (struct ms_sampler *)1;
		struct ms_err err = { 0 };
		int rc = ms_sampler_init(&s, &b[i].p, b[i].n, &err);
		T_CHECK(rc == -EINVAL, "case '%s': rc %d, expected -EINVAL",
			b[i].want, rc);
		T_CHECK(s == NULL, "case '%s': *out not NULL on failure",
			b[i].want);
		T_CHECK(strstr(err.msg, b[i].want) != NULL, "case '%s': message "
			"\"%s\" does not name it", b[i].want, err.msg);
		if (rc == 0)
			ms_sampler_free(s);
	}

	/* What is allowed: negative temp (greedy), top_k anything, top_p 1,
	 * min_p <= 0, repeat_last_n 0. */
	struct ms_sampler_params ok = d;
	ok.temp = -3;
	ok.top_k = -7;
	ok.min_p = -1;
	ok.repeat_last_n = 0;
	struct ms_sampler *s = mk(&ok, 3);
	const float l[3] = { 0, 5, 1 };
	ms_sampler_accept(s, 1);
	T_EQ_U64(ms_sampler_sample(s, l), 1);
	ms_sampler_free(s);
	ms_sampler_free(NULL);
}

static void test_defaults(void)
{
	struct ms_sampler_params p;
	ms_sampler_params_default(&p);
	T_CHECK(p.temp == 0.8f && p.top_k == 40 && p.top_p == 0.95f &&
		p.min_p == 0.05f && p.repeat_penalty == 1.0f &&
		p.repeat_last_n == 64, "defaults are temp %g top_k %d top_p %g "
		"min_p %g repeat_penalty %g repeat_last_n %d, not llama.cpp's",
		(double)p.temp, p.top_k, (double)p.top_p, (double)p.min_p,
		(double)p.repeat_penalty, p.repeat_last_n);
}

/* A Qwen3-sized row of random logits in [-10, 10). */
static float *random_logits(uint32_t n, uint64_t *st)
{
	float *l = malloc(n * sizeof(*l));
	if (!l)
		t_fatal("out of memory");
	for (uint32_t i = 0; i < n; i++)
		l[i] = (float)(t_rand(st) >> 40) / (float)(1 << 24) * 20.0f - 10.0f;
	return l;
}

static void test_greedy(uint64_t *st)
{
	const uint32_t n = 151936;
	float *l = random_logits(n, st);
	float *copy = malloc(n * sizeof(*l));
	if (!copy)
		t_fatal("out of memory");
	uint32_t am = 0;
	for (uint32_t i = 1; i < n; i++)
		if (l[i] > l[am])
			am = i;
	static const float temps[] = { 0.0f, -1.0f };
	for (int k = 0; k < 2; k++) {
		struct ms_sampler_params p = plain();
		p.temp = temps[k];
		struct ms_sampler *s = mk(&p, n);
		memcpy(copy, l, n * sizeof(*l));
		T_EQ_U64(ms_sampler_sample(s, l), am);
		T_CHECK(!memcmp(copy, l, n * sizeof(*l)), "the logits were "
			"modified");
		/* A tie with a lower id: that one wins. */
		uint32_t low = am > 1000 ? am - 1000 : am + 1000;
		float keep = l[low];
		l[low] = l[am];
		T_EQ_U64(ms_sampler_sample(s, l), am < low ? am : low);
		l[low] = keep;
		/* NaN is never the argmax. */
		float k0 = l[0];
		l[0] = NAN;
		T_EQ_U64(ms_sampler_sample(s, l), am);
		l[0] = k0;
		ms_sampler_free(s);
	}

	/* top_k 1 is greedy at any temperature, ties included. */
	static const float hot[] = { 0.1f, 0.8f, 1.0f, 5.0f, 1000.0f };
	uint32_t low = am > 5 ? am - 5 : am + 5;
	float keep = l[low];
	l[low] = l[am];
	uint32_t want = am < low ? am : low;
	for (size_t k = 0; k < sizeof(hot) / sizeof(hot[0]); k++) {
		struct ms_sampler_params p = plain();
		p.temp = hot[k];
		p.top_k = 1;
		p.seed = 1000 + k;
		struct ms_sampler *s = mk(&p, n);
		for (int i = 0; i < 50; i++) {
			int32_t t = ms_sampler_sample(s, l);
			if ((uint32_t)t != want) {
				t_fail_at(__FILE__, __LINE__, "top_k 1 at temp %g "
					  "drew %d, greedy is %u",
					  (double)hot[k], t, want);
				break;
			}
		}
		ms_sampler_free(s);
	}
	l[low] = keep;

	/* All -inf or NaN: id 0, no crash. */
	for (uint32_t i = 0; i < n; i++)
		l[i] = i & 1 ? -INFINITY : NAN;
	struct ms_sampler_params p = plain();
	struct ms_sampler *s = mk(&p, n);
	T_EQ_U64(ms_sampler_sample(s, l), 0);
	ms_sampler_free(s);
	free(copy);
	free(l);
}

static void test_seed(uint64_t *st)
{
	const uint32_t n = 151936;
	float *l = random_logits(n, st);
	for (uint32_t i = 0; i < n; i++)
		l[i] *= 0.3f; /* a flatter row: many tokens in play */
	struct ms_sampler_params p;
	ms_sampler_params_default(&p);
	p.top_k = 0;   /* the larger paths: top-p over the whole row */
	p.min_p = 0;
	for (int round = 0; round < 2; round++) {
		p.seed = 12345;
		struct ms_sampler *a = mk(&p, n), *b = mk(&p, n);
		p.seed = 12346;
		struct ms_sampler *c = mk(&p, n);
		int same_c = 0, distinct = 0;
		int32_t first = -1;
		for (int i = 0; i < 150; i++) {
			int32_t x = ms_sampler_sample(a, l),
				y = ms_sampler_sample(b, l),
				z = ms_sampler_sample(c, l);
			if (x != y) {
				t_fail_at(__FILE__, __LINE__, "seed 12345 drew %d "
					  "then %d at draw %d", x, y, i);
				break;
			}
			same_c += x == z;
			if (first < 0)
				first = x;
			distinct += x != first;
		}
		T_CHECK(same_c < 50, "seeds 12345 and 12346 agreed on %d of 150 "
			"draws", same_c);
		T_CHECK(distinct > 50, "only %d of 150 draws differ from the "
			"first: not sampling", distinct);
		ms_sampler_free(a);
		ms_sampler_free(b);
		ms_sampler_free(c);
		p = plain(); /* then with every filter off */
		p.temp = 0.7f;
	}
	free(l);
}

static void test_distribution(void)
{
	const float l[5] = { 1.0f, 2.0f, 0.5f, -1.0f, 1.5f };
	double want[5];
	uint32_t cnt[5];
	static const float temps[] = { 1.0f, 0.5f, 2.0f };
	for (int k = 0; k < 3; k++) {
		struct ms_sampler_params p = plain();
		p.temp = temps[k];
		p.seed = 7 + k;
		struct ms_sampler *s = mk(&p, 5);
		draw(s, l, 5, cnt);
		softmax_ref(l, 5, temps[k], want);
		char what[64];
		snprintf(what, sizeof(what), "temp %g, no filters",
			 (double)temps[k]);
		check_freq(what, cnt, want, 5);
		ms_sampler_free(s);
	}

	/* top_k 40 of a bigger row where 5 tokens matter: the same law over
	 * those 5 (the rest have e^-30 of the mass). */
	const uint32_t n = 20000;
	float *big = malloc(n * sizeof(*big));
	uint32_t *bc = malloc(n * sizeof(*bc));
	if (!big || !bc)
		t_fatal("out of memory");
	for (uint32_t i = 0; i < n; i++)
		big[i] = -30.0f;
	static const uint32_t at[5] = { 19999, 3, 7777, 15000, 42 };
	for (int i = 0; i < 5; i++)
		big[at[i]] = l[i];
	struct ms_sampler_params p = plain();
	p.top_k = 40;
	struct ms_sampler *s = mk(&p, n);
	draw(s, big, n, bc);
	softmax_ref(l, 5, 1.0, want);
	for (int i = 0; i < 5; i++)
		cnt[i] = bc[at[i]];
	check_freq("top_k 40 over 20000", cnt, want, 5);
	ms_sampler_free(s);
	free(big);
	free(bc);
}

/* Logits whose softmax is p exactly: log p. */
static void logp(const double *p, float *l, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		l[i] = (float)log(p[i]);
}

static void test_top_p_min_p(void)
{
	/* probabilities 0.05, 0.5, 0.15, 0.3 (ids out of order on purpose) */
	static const double pr[4] = { 0.05, 0.5, 0.15, 0.3 };
	float l[4];
	uint32_t cnt[4];
	logp(pr, l, 4);
	static const struct {
		float top_p, min_p;
		int32_t top_k;
		unsigned keep; /* bit i: id i may be drawn (and must be) */
	} cases[] = {
		{ 0.75f, 0, 0, 0x0a },   /* 0.5 + 0.3 */
		{ 0.85f, 0, 0, 0x0e },   /* + 0.15 */
		{ 0.4f, 0, 0, 0x02 },    /* the first alone reaches it */
		{ 0.99f, 0, 0, 0x0f },
		{ 1.0f, 0.2f, 0, 0x0e }, /* p >= 0.1 */
		{ 1.0f, 0.5f, 0, 0x0a }, /* p >= 0.25 */
		{ 1.0f, 1.0f, 0, 0x02 }, /* only the max */
		{ 1.0f, 0.2f, 3, 0x0e }, /* the same, sorted by top-k */
		{ 1.0f, 0.5f, 3, 0x0a },
		{ 0.85f, 0.5f, 0, 0x0a },  /* top-p, then min-p */
		{ 0.75f, 0, 3, 0x0a },
		{ 1.0f, 0, 2, 0x0a },      /* top-k alone */
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct ms_sampler_params p = plain();
		p.top_p = cases[k].top_p;
		p.min_p = cases[k].min_p;
		p.top_k = cases[k].top_k;
		p.seed = 100 + k;
		struct ms_sampler *s = mk(&p, 4);
		draw(s, l, 4, cnt);
		double kept = 0, want[4];
		for (int i = 0; i < 4; i++)
			kept += cases[k].keep >> i & 1 ? pr[i] : 0;
		for (int i = 0; i < 4; i++) {
			bool in = cases[k].keep >> i & 1;
			want[i] = in ? pr[i] / kept : 0;
			T_CHECK(in ? cnt[i] > 0 : cnt[i] == 0, "top_p %g min_p %g "
				"top_k %d: token %d (p %.2f) drawn %u times, it "
				"should %s", (double)p.top_p, (double)p.min_p,
				p.top_k, i, pr[i], cnt[i], in ? "be kept" :
				"be excluded");
		}
		char what[80];
		snprintf(what, sizeof(what), "top_p %g min_p %g top_k %d",
			 (double)p.top_p, (double)p.min_p, p.top_k);
		check_freq(what, cnt, want, 4);
		ms_sampler_free(s);
	}

	/* top-p on a flat row of 100000 with top-k off (the selection by
	 * mass): 30005 tokens kept, ties to the lowest ids. 2000 draws see an
	 * id above 29000 but with probability 1 - (29005/30005)^2000. */
	const uint32_t n = 100000;
	float *flat = calloc(n, sizeof(*flat));
	uint32_t *c = malloc(n * sizeof(*c));
	if (!flat || !c)
		t_fatal("out of memory");
	struct ms_sampler_params p = plain();
	p.top_p = 0.30005f;
	struct ms_sampler *s = mk(&p, n);
	draw_n(s, flat, n, c, 2000);
	uint32_t hi = 0, out = 0;
	for (uint32_t i = 0; i < n; i++)
		if (c[i]) {
			hi = i;
			out += i >= 30005;
		}
	T_CHECK(out == 0 && hi > 29000, "top_p 0.30005 over a flat 100000: "
		"%u draws past id 30004, highest id drawn %u (want the ids "
		"0..30004)", out, hi);
	ms_sampler_free(s);

	/* min-p with top-k and top-p off keeps what passes, unordered. */
	for (uint32_t i = 0; i < n; i++)
		flat[i] = i % 1000 == 7 ? 0.0f : -5.0f;
	p = plain();
	p.min_p = 0.01f; /* e^-5 = 0.0067 < 0.01 */
	s = mk(&p, n);
	draw_n(s, flat, n, c, 2000);
	out = 0;
	uint32_t seen = 0;
	for (uint32_t i = 0; i < n; i++) {
		out += c[i] && i % 1000 != 7;
		seen += c[i] && i % 1000 == 7;
	}
	T_CHECK(out == 0 && seen > 80, "min_p 0.01: %u draws of excluded ids, "
		"%u of the 100 kept ids seen", out, seen);
	ms_sampler_free(s);
	free(flat);
	free(c);
}

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x > y ? -1 : x < y ? 1 : 0;
}

/* Random peaky rows: the draws stay inside the set a full sort and a
 * cumulative sum keep, and reach its edge, for each path through top-k
 * (heap, quickselect, off) and top-p (prefix sum, selection by mass). */
static void test_top_p_reference(uint64_t *st)
{
	const uint32_t n = 5000;
	float *l = malloc(n * sizeof(*l)), *sorted = malloc(n * sizeof(*l));
	uint32_t *c = malloc(n * sizeof(*c));
	double *pr = malloc(n * sizeof(*pr));
	if (!l || !sorted || !c || !pr)
		t_fatal("out of memory");
	static const int32_t ks[] = { 0, 100, 2000, 6000 };
	for (int round = 0; round < 8; round++) {
		for (uint32_t i = 0; i < n; i++) {
			/* a sum of 4 uniforms: roughly normal, sd ~ 4 */
			double u = 0;
			for (int k = 0; k < 4; k++)
				u += (double)(t_rand(st) >> 11) * 0x1.0p-53;
			l[i] = (float)((u - 2.0) * 7.0);
		}
		int32_t top_k = ks[round % 4];
		float top_p = round < 4 ? 0.9f : 0.6f;
		/* The reference: the top_k best, their softmax, the cut. */
		memcpy(sorted, l, n * sizeof(*l));
		qsort(sorted, n, sizeof(*sorted), cmp_desc);
		uint32_t m = top_k > 0 && (uint32_t)top_k < n ? (uint32_t)top_k : n;
		softmax_ref(sorted, m, 1.0, pr);
		double cum = 0;
		uint32_t keep = m;
		for (uint32_t i = 0; i < m; i++) {
			cum += pr[i];
			if (cum >= top_p) {
				keep = i + 1;
				break;
			}
		}
		float edge = sorted[keep - 1];
		struct ms_sampler_params p = plain();
		p.top_k = top_k;
		p.top_p = top_p;
		p.seed = (uint64_t)round;
		struct ms_sampler *s = mk(&p, n);
		draw_n(s, l, n, c, 4000);
		uint32_t outside = 0, at_edge = 0;
		float lowest = INFINITY;
		for (uint32_t i = 0; i < n; i++) {
			if (!c[i])
				continue;
			outside += l[i] < edge;
			at_edge += l[i] == edge;
			lowest = l[i] < lowest ? l[i] : lowest;
		}
		T_CHECK(outside == 0, "top_k %d top_p %g: %u ids drawn below the "
			"reference cut (logit %g, %u kept)", top_k, (double)top_p,
			outside, (double)edge, keep);
		T_CHECK(lowest - edge < 3.0f, "top_k %d top_p %g: lowest logit "
			"drawn %g, the cut is at %g: the set looks too small",
			top_k, (double)top_p, (double)lowest, (double)edge);
		ms_sampler_free(s);
	}
	free(l);
	free(sorted);
	free(c);
	free(pr);
}

static void test_penalty(void)
{
	float l[10] = { 0, 0.5f, 0.2f, 1.5f, 0.1f, 0, 0, 2.0f, 0, 0 };
	struct ms_sampler_params p = plain();
	p.temp = 0;
	p.repeat_penalty = 1.5f;
	p.repeat_last_n = 3;
	struct ms_sampler *s = mk(&p, 10);
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_accept(s, 7);          /* 2.0 / 1.5 = 1.33 < 1.5 */
	T_EQ_U64(ms_sampler_sample(s, l), 3);
	ms_sampler_accept(s, 3);          /* 1.0 and 1.33: 7 again */
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_accept(s, 1);
	ms_sampler_accept(s, 4);          /* 7 left the window of 3 */
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_accept(s, -5);         /* out of range: ignored */
	ms_sampler_accept(s, 10);
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_free(s);

	/* Once per distinct token: 7 twice is still 2.0 / 1.5 = 1.33 > 1.3. */
	l[3] = 1.3f;
	s = mk(&p, 10);
	ms_sampler_accept(s, 7);
	ms_sampler_accept(s, 7);
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_free(s);

	/* Negative logits are multiplied: -1.0 * 1.5 = -1.5 < -1.2. */
	float neg[6] = { -3, -3, -1.0f, -3, -3, -1.2f };
	s = mk(&p, 6);
	T_EQ_U64(ms_sampler_sample(s, neg), 2);
	ms_sampler_accept(s, 2);
	T_EQ_U64(ms_sampler_sample(s, neg), 5);
	ms_sampler_free(s);

	/* A penalty of 1 and a window of 0 change nothing. */
	p.repeat_penalty = 1.0f;
	s = mk(&p, 10);
	ms_sampler_accept(s, 7);
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_free(s);
	p.repeat_penalty = 1.5f;
	p.repeat_last_n = 0;
	s = mk(&p, 10);
	ms_sampler_accept(s, 7);
	T_EQ_U64(ms_sampler_sample(s, l), 7);
	ms_sampler_free(s);

	/* Sampling (temp 1) sees the penalty too: { 4, 3 } with 4 penalised
	 * by 2 is drawn as softmax({ 2, 3 }). */
	p = plain();
	p.repeat_penalty = 2.0f;
	const float two[2] = { 4.0f, 3.0f }, pen[2] = { 2.0f, 3.0f };
	s = mk(&p, 2);
	ms_sampler_accept(s, 0);
	uint32_t cnt[2];
	double want[2];
	draw(s, two, 2, cnt);
	softmax_ref(pen, 2, 1.0, want);
	check_freq("repeat_penalty 2 at temp 1", cnt, want, 2);
	ms_sampler_free(s);
}

/* Not a check: the cost per token on a Qwen3-sized row, for the log. */
static void report_speed(uint64_t *st)
{
	const uint32_t n = 151936;
	float *l = random_logits(n, st);
	static const struct {
		const char *what;
		int32_t top_k;
		float top_p;
	} modes[] = { { "defaults (top_k 40)", 40, 0.95f },
		      { "top_k off, top_p 0.95", 0, 0.95f },
		      { "no filters", 0, 1.0f } };
	for (int m = 0; m < 3; m++) {
		struct ms_sampler_params p;
		ms_sampler_params_default(&p);
		p.top_k = modes[m].top_k;
		p.top_p = modes[m].top_p;
		struct ms_sampler *s = mk(&p, n);
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (int i = 0; i < 100; i++)
			ms_sampler_sample(s, l);
		clock_gettime(CLOCK_MONOTONIC, &b);
		double us = ((double)(b.tv_sec - a.tv_sec) * 1e9 +
			     (double)(b.tv_nsec - a.tv_nsec)) / 100 / 1e3;
		printf("sample over %u logits, %s: %.0f us\n", n, modes[m].what,
		       us);
		ms_sampler_free(s);
	}
	free(l);
}

int main(void)
{
	uint64_t st = t_seed();
	test_bad_params();
	test_defaults();
	test_greedy(&st);
	test_seed(&st);
	test_distribution();
	test_top_p_min_p();
	test_top_p_reference(&st);
	test_penalty();
	report_speed(&st);
	return t_done();
}
