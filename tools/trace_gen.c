/*
 * trace_gen.c - synthetic routing traces (see trace.h; the calibration of
 * the defaults, with sources, is at the top of trace_cmd.c).
 *
 * Real routing at every layer is a function of one hidden state, so what
 * makes it local in time (the context drifts slowly) and what makes it
 * correlated across layers (the same state feeds every router) have one
 * cause. The model here keeps that shape:
 *
 *  - A context: a working set of `working_set` x n_expert "latent" experts
 *    that drifts. Each member stays for `stint` tokens, then leaves; members
 *    join at the rate that keeps the set at its size (first in, first out:
 *    equal stints, which is what lets a trace be local for an LRU and still
 *    cover almost every expert within a few dozen tokens, as GLM's does).
 *    A joining member is drawn from the first layer's Zipf popularity among
 *    those not in the set and out of it for more than `fresh_gap` tokens.
 *  - Partners: every expert of layer l-1 has `partners` fixed partners at
 *    layer l, from random permutations, so every expert of layer l is a
 *    partner of exactly `partners` experts of layer l-1. A latent expert x
 *    is expert x at the first layer and its first partner's first partner
 *    ... further down, so the context is one set seen through each layer.
 *  - Each of the k slots of (token, layer), in this order:
 *      with probability corr (layers after the first): a partner of one of
 *        the experts this token chose at layer l-1 (token-level affinity:
 *        what makes the next layer predictable from this one);
 *      with probability reuse: a member of the context, seen at this
 *        layer, drawn by the layer's popularity: Zipf, exponent skew, over
 *        a random ranking of the experts per layer;
 *      otherwise fresh: a one-off, drawn by the same popularity among
 *        experts the layer has not used for more than fresh_gap tokens.
 *    Each mechanism picks among its candidates not yet in the slot set;
 *    one that has none hands the slot to the next in the order (partner,
 *    context, fresh; fresh always has one). The first layer has no
 *    partners: its slots are fresh with probability fresh / (1 - corr), the
 *    density of one-offs that the partner chain settles to further down (a
 *    partner of a one-off is a one-off), and context otherwise.
 *
 * Weights imitate a sigmoid router with normalised top-k (glm4moe,
 * deepseek2): k scores sigmoid(N(0, 1)), normalised to sum to 1, times the
 * model's expert_weights_scale; the choices are stored by weight, highest
 * first, as llama.cpp's top-k hands them over.
 *
 * One PRNG stream (splitmix64) drives everything in a fixed order: first the
 * structure (rankings, partners, the initial context), then tokens in
 * order. So the same seed gives the same bytes, and N tokens are a prefix
 * of N+1.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

#define NEVER UINT32_MAX

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, n), n >= 1 (Lemire's multiply-shift; the bias of at most
 * n / 2^64 is far below anything a trace could show). */
static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}

static double rng_normal(struct rng *r)
{
	double u = rng_unit(r), v = rng_unit(r);
	return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

void ms_trace_gen_defaults(struct ms_trace_gen_params *p)
{
	/* The values and where they come from: trace_cmd.c, top comment. */
	*p = (struct ms_trace_gen_params){
		.seed = 1,
		.skew_first = 0.3,
		.skew_last = 0.3,
		.reuse = 0.32,
		.corr = 0.67,
		.partners = 1,
		.working_set = 0.38,
		.stint = 42,
		.fresh_gap = 75,
		.weight_scale = 1.0,
	};
}

int ms_trace_gen_check(const struct ms_trace_gen_params *p, uint32_t n_expert,
		       uint32_t k, struct ms_err *err)
{
	if (!(p->skew_first >= 0 && p->skew_first <= 8) ||
	    !(p->skew_last >= 0 && p->skew_last <= 8))
		return ms_err_set(err, -EINVAL,
				  "skew %g:%g is out of range (0 = uniform .. 8)",
				  p->skew_first, p->skew_last);
	if (!(p->reuse >= 0 && p->reuse <= 1) || !(p->corr >= 0 && p->corr <= 1) ||
	    !(p->reuse + p->corr <= 1 + 1e-9))
		return ms_err_set(err, -EINVAL,
				  "reuse %g and corr %g must each be in 0..1 and "
				  "sum to at most 1 (they share the slots)",
				  p->reuse, p->corr);
	if (!(p->working_set > 0 && p->working_set <= 1))
		return ms_err_set(err, -EINVAL,
				  "working set %g is out of range (a share of the "
				  "experts, > 0 and <= 1)",
				  p->working_set);
	if (p->stint < 1 || p->stint > MS_TRACE_GEN_MAX_TOKENS)
		return ms_err_set(err, -EINVAL,
				  "stint %u is out of range (1..%u tokens)",
				  p->stint, MS_TRACE_GEN_MAX_TOKENS);
	if (p->partners < 1 || p->partners > n_expert)
		return ms_err_set(err, -EINVAL,
				  "partners %u is out of range (1..%u, the expert "
				  "count)",
				  p->partners, n_expert);
	if (p->fresh_gap > MS_TRACE_GEN_MAX_TOKENS)
		return ms_err_set(err, -EINVAL,
				  "fresh gap %u is out of range (0..%u tokens)",
				  p->fresh_gap, MS_TRACE_GEN_MAX_TOKENS);
	if (!(p->weight_scale > 0) || !isfinite(p->weight_scale))
		return ms_err_set(err, -EINVAL,
				  "weight scale %g must be a finite number > 0",
				  p->weight_scale);
	if (k > n_expert)
		return ms_err_set(err, -EINVAL, "k = %u is more than the %u experts",
				  k, n_expert);
	return 0;
}

struct gen {
	const struct ms_trace *t;
	const struct ms_trace_gen_params *p;
	struct rng r;
	uint32_t n;        /* experts */
	double *pw;        /* [layer][n]: Zipf weight of each expert */
	uint16_t *partner; /* [layer][n][partners]: layer l-1's expert -> layer l */
	uint16_t *map;     /* [layer][n]: latent expert -> expert at the layer */
	uint32_t *last;    /* [layer][n]: last token that chose it, or NEVER */
	/* The context: a FIFO ring of latent experts and their stint starts. */
	uint16_t *ctx;
	int64_t *ctx_start;
	uint32_t ctx_head, ctx_len, ctx_size;
	uint8_t *in_ctx;   /* [n] */
	int64_t *left;     /* [n]: when its last stint ended; INT64_MIN: never in */
	double credit;     /* members owed to the context */
};

static bool in_set(const uint16_t *set, uint32_t n, uint16_t e)
{
	for (uint32_t i = 0; i < n; i++)
		if (set[i] == e)
			return true;
	return false;
}

/* A Zipf draw over the experts `ok` accepts (weights pw), or UINT32_MAX when
 * it accepts none. O(n); draws are a small share of all picks. */
static uint32_t zipf_among(struct gen *g, const double *pw,
			   bool (*ok)(const struct gen *, uint32_t, const void *),
			   const void *ctx)
{
	double total = 0;
	for (uint32_t e = 0; e < g->n; e++)
		if (ok(g, e, ctx))
			total += pw[e];
	if (!(total > 0))
		return UINT32_MAX;
	double u = rng_unit(&g->r) * total;
	uint32_t pick = UINT32_MAX;
	for (uint32_t e = 0; e < g->n; e++) {
		if (!ok(g, e, ctx))
			continue;
		pick = e; /* the last eligible, should rounding leave u >= 0 */
		if ((u -= pw[e]) < 0)
			break;
	}
	return pick;
}

struct fresh_ctx {
	uint32_t t, l, have;
	const uint16_t *set;
};

static bool fresh_ok(const struct gen *g, uint32_t e, const void *p)
{
	const struct fresh_ctx *c = p;
	uint32_t last = g->last[(size_t)c->l * g->n + e];
	return (last == NEVER || c->t - last > g->p->fresh_gap) &&
	       !in_set(c->set, c->have, (uint16_t)e);
}

/* A one-off for slot `have` of (t, l): Zipf among the experts not in the set
 * and unused at the layer for more than fresh_gap tokens; when there are
 * none, the least recently used expert not in the set (there always is
 * one: k <= n). */
static uint16_t fresh_pick(struct gen *g, uint32_t t, uint32_t l,
			   const uint16_t *set, uint32_t have)
{
	struct fresh_ctx c = { t, l, have, set };
	uint32_t e = zipf_among(g, &g->pw[(size_t)l * g->n], fresh_ok, &c);
	if (e != UINT32_MAX)
		return (uint16_t)e;
	const uint32_t *last = &g->last[(size_t)l * g->n];
	uint16_t best = 0;
	uint64_t best_age = 0;
	for (uint32_t x = 0; x < g->n; x++) {
		if (in_set(set, have, (uint16_t)x))
			continue;
		uint64_t age = last[x] == NEVER ? UINT64_MAX : t - last[x];
		if (age >= best_age) {
			best = (uint16_t)x;
			best_age = age;
		}
		if (age == UINT64_MAX)
			break;
	}
	return best;
}

static bool join_ok(const struct gen *g, uint32_t x, const void *p)
{
	int64_t now = *(const int64_t *)p;
	return !g->in_ctx[x] &&
	       (g->left[x] == INT64_MIN || now - g->left[x] > g->p->fresh_gap);
}

/* Adds one latent expert to the context at time `now`: Zipf (first layer's
 * popularity) among those out of it for more than fresh_gap tokens, else
 * the one out of it longest. */
static void ctx_join(struct gen *g, int64_t now)
{
	uint32_t x = zipf_among(g, g->pw, join_ok, &now);
	if (x == UINT32_MAX) {
		int64_t oldest = INT64_MAX;
		for (uint32_t e = 0; e < g->n; e++)
			if (!g->in_ctx[e] && g->left[e] < oldest) {
				oldest = g->left[e];
				x = e;
			}
	}
	uint32_t at = (g->ctx_head + g->ctx_len) % g->n;
	g->ctx[at] = (uint16_t)x;
	g->ctx_start[at] = now;
	g->ctx_len++;
	g->in_ctx[x] = 1;
}

/* Ends the stints that began `stint` or more tokens before `now`, then
 * lets members join at size / stint per token. */
static void ctx_step(struct gen *g, int64_t now)
{
	while (g->ctx_len && now - g->ctx_start[g->ctx_head] >= g->p->stint) {
		uint16_t x = g->ctx[g->ctx_head];
		g->in_ctx[x] = 0;
		g->left[x] = now;
		g->ctx_head = (g->ctx_head + 1) % g->n;
		g->ctx_len--;
	}
	g->credit += (double)g->ctx_size / g->p->stint;
	while (g->credit >= 1 && g->ctx_len < g->n) {
		ctx_join(g, now);
		g->credit -= 1;
	}
}

static void shuffle(struct gen *g, uint16_t *a, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		a[i] = (uint16_t)i;
	for (uint32_t i = n - 1; i > 0; i--) {
		uint32_t j = rng_below(&g->r, i + 1);
		uint16_t x = a[i];
		a[i] = a[j];
		a[j] = x;
	}
}

/* Rankings and Zipf weights per layer; partners: `np` random permutations
 * per layer pair, fixed up so that no expert gets the same partner twice;
 * the latent map; and the initial context, its stints staggered as if it
 * had been drifting all along. */
static void build_structure(struct gen *g, uint16_t *perm)
{
	const struct ms_trace *t = g->t;
	uint32_t n = g->n, np = g->p->partners;
	for (uint32_t l = 0; l < t->n_layers; l++) {
		shuffle(g, perm, n);
		double s = t->n_layers > 1
				   ? g->p->skew_first +
					     (g->p->skew_last - g->p->skew_first) *
						     l / (t->n_layers - 1)
				   : g->p->skew_first;
		for (uint32_t i = 0; i < n; i++)
			g->pw[(size_t)l * n + perm[i]] = pow((double)(i + 1), -s);
	}
	for (uint32_t l = 1; l < t->n_layers; l++) {
		uint16_t *pl = &g->partner[(size_t)l * n * np];
		for (uint32_t j = 0; j < np; j++) {
			shuffle(g, perm, n);
			for (uint32_t e = 0; e < n; e++) {
				/* a repeat: swap with a slot whose value is new
				 * to e and whose owner can take e's value */
				for (uint32_t tries = 0;
				     in_set(&pl[e * np], j, perm[e]) && tries < 4 * n;
				     tries++) {
					uint32_t o = rng_below(&g->r, n);
					if (o == e || in_set(&pl[e * np], j, perm[o]) ||
					    (o < e && in_set(&pl[o * np], j, perm[e])))
						continue;
					uint16_t x = perm[e];
					perm[e] = perm[o];
					perm[o] = x;
					if (o < e)
						pl[o * np + j] = perm[o];
				}
				pl[e * np + j] = perm[e];
			}
		}
	}
	for (uint32_t x = 0; x < n; x++)
		g->map[x] = (uint16_t)x;
	for (uint32_t l = 1; l < t->n_layers; l++)
		for (uint32_t x = 0; x < n; x++)
			g->map[(size_t)l * n + x] =
				g->partner[((size_t)l * n + g->map[(size_t)(l - 1) * n + x]) * np];
	for (uint32_t x = 0; x < n; x++)
		g->left[x] = INT64_MIN;
	/* Steady state at token 0: members that joined over the last stint. */
	for (int64_t now = -(int64_t)g->p->stint; now < 0; now++)
		ctx_step(g, now);
}

/* A partner at layer l of one of the experts this token chose at layer
 * l-1, uniform over those whose partner (the same one of the np, drawn
 * first) is not in the set yet; -1 when there is none. */
static int partner_pick(struct gen *g, uint32_t t, uint32_t l,
			const uint16_t *set, uint32_t have)
{
	uint32_t k = g->t->k, np = g->p->partners, q = rng_below(&g->r, np);
	const uint16_t *up = ms_trace_experts(g->t, t, l - 1);
	uint16_t cand[MS_TRACE_MAX_K];
	uint32_t nc = 0;
	for (uint32_t i = 0; i < k; i++) {
		uint16_t e = g->partner[((size_t)l * g->n + up[i]) * np + q];
		if (!in_set(set, have, e) && !in_set(cand, nc, e))
			cand[nc++] = e;
	}
	return nc ? cand[rng_below(&g->r, nc)] : -1;
}

/* A member of the context, seen at layer l through `map`, drawn by the
 * layer's popularity among those not in the set yet; -1 when there is
 * none. O(context) per pick. */
static int context_pick(struct gen *g, uint32_t l, const uint16_t *map,
			const uint16_t *set, uint32_t have)
{
	const double *pw = &g->pw[(size_t)l * g->n];
	double total = 0;
	for (uint32_t m = 0; m < g->ctx_len; m++) {
		uint16_t e = map[g->ctx[(g->ctx_head + m) % g->n]];
		if (!in_set(set, have, e))
			total += pw[e];
	}
	if (!(total > 0))
		return -1;
	double u = rng_unit(&g->r) * total;
	int pick = -1;
	for (uint32_t m = 0; m < g->ctx_len; m++) {
		uint16_t e = map[g->ctx[(g->ctx_head + m) % g->n]];
		if (in_set(set, have, e))
			continue;
		pick = e; /* the last eligible, should rounding leave u >= 0 */
		if ((u -= pw[e]) < 0)
			break;
	}
	return pick;
}

static void weights(struct gen *g, uint16_t *e, float *w, uint32_t k)
{
	double s[MS_TRACE_MAX_K], sum = 0;
	for (uint32_t j = 0; j < k; j++) {
		s[j] = 1.0 / (1.0 + exp(-rng_normal(&g->r)));
		sum += s[j];
	}
	for (uint32_t j = 0; j < k; j++)
		s[j] = s[j] / sum * g->p->weight_scale;
	/* Highest weight first (insertion sort: k <= 64). */
	for (uint32_t j = 1; j < k; j++) {
		double v = s[j];
		uint16_t x = e[j];
		uint32_t i = j;
		for (; i > 0 && s[i - 1] < v; i--) {
			s[i] = s[i - 1];
			e[i] = e[i - 1];
		}
		s[i] = v;
		e[i] = x;
	}
	for (uint32_t j = 0; j < k; j++)
		w[j] = (float)s[j];
}

int ms_trace_gen(struct ms_trace *t, const struct ms_trace_gen_params *p,
		 struct ms_err *err)
{
	int rc = ms_trace_gen_check(p, t->n_expert, t->k, err);
	if (rc)
		return rc;
	if (t->n_tokens > MS_TRACE_GEN_MAX_TOKENS)
		return ms_err_set(err, -EINVAL, "%u tokens is more than %u",
				  t->n_tokens, MS_TRACE_GEN_MAX_TOKENS);
	struct gen g = { .t = t, .p = p, .r = { p->seed }, .n = t->n_expert };
	uint32_t L = t->n_layers, k = t->k, n = t->n_expert, np = p->partners;
	size_t ln = (size_t)L * n;
	g.ctx_size = (uint32_t)lround(p->working_set * n);
	if (g.ctx_size < 1)
		g.ctx_size = 1;
	g.pw = malloc(ln * sizeof(*g.pw));
	g.partner = malloc(ln * np * sizeof(*g.partner));
	g.map = malloc(ln * sizeof(*g.map));
	g.last = malloc(ln * sizeof(*g.last));
	g.ctx = malloc(n * sizeof(*g.ctx));
	g.ctx_start = malloc(n * sizeof(*g.ctx_start));
	g.in_ctx = calloc(n, 1);
	g.left = malloc(n * sizeof(*g.left));
	uint16_t *perm = malloc(n * sizeof(*perm));
	if (!g.pw || !g.partner || !g.map || !g.last || !g.ctx || !g.ctx_start ||
	    !g.in_ctx || !g.left || !perm) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for the generator");
		goto out;
	}
	for (size_t i = 0; i < ln; i++)
		g.last[i] = NEVER;
	/* Skip the splitmix state past 0 so that seed 0 is as good as any. */
	rng_next(&g.r);
	build_structure(&g, perm);

	double fresh = 1 - p->reuse - p->corr;
	if (fresh < 0)
		fresh = 0;
	double fresh0 = p->corr < 1 ? fresh / (1 - p->corr) : 0;
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		ctx_step(&g, tok);
		for (uint32_t l = 0; l < L; l++) {
			uint16_t *set = ms_trace_experts(t, tok, l);
			const uint16_t *map = &g.map[(size_t)l * n];
			/* thresholds on one uniform draw per slot */
			double t_corr = l ? p->corr : 0;
			double t_reuse = l ? p->corr + p->reuse : 1 - fresh0;
			for (uint32_t j = 0; j < k; j++) {
				double u = rng_unit(&g.r);
				int e = -1;
				if (u < t_corr)
					e = partner_pick(&g, tok, l, set, j);
				if (e < 0 && u < t_reuse)
					e = context_pick(&g, l, map, set, j);
				if (e < 0)
					e = fresh_pick(&g, tok, l, set, j);
				set[j] = (uint16_t)e;
			}
			for (uint32_t j = 0; j < k; j++)
				g.last[(size_t)l * n + set[j]] = tok;
			weights(&g, set, ms_trace_weights(t, tok, l), k);
		}
	}
out:
	free(g.pw);
	free(g.partner);
	free(g.map);
	free(g.last);
	free(g.ctx);
	free(g.ctx_start);
	free(g.in_ctx);
	free(g.left);
	free(perm);
	return rc;
}
