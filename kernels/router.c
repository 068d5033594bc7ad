/*
 * router.c - the MoE router of one layer, for one token, on the CPU.
 *
 * What it must reproduce is llama.cpp's build_moe_ffn() (src/llama-graph.cpp):
 * logits = W_gate_inp . x (+ a logit bias for gpt-oss), probs by the gating
 * function, selection by top-k over probs + exp_probs_b (DeepSeek V3's and
 * GLM-4.5's load-balancing bias: it moves the choice, never the weights),
 * weights from the unbiased probs, softmax over the selected logits for
 * softmax_weight, division by their sum (clamped at the smallest normal f16,
 * as llama.cpp does) when the model normalises, and a final scale.
 *
 * Why double: the router decides which experts are read from disk. A
 * near-tie decided differently by f32 rounding would make a trace disagree
 * with its reference for no reason, so logits, probs and weights are
 * computed in double and only the weights are rounded to f32 at the end.
 * Exact ties (equal scores in double) go to the lower expert id, so the
 * order of the output never depends on the sort.
 *
 * Which parameters a model gets is the arch's business in llama.cpp: some
 * graphs read the GGUF keys, some pass constants. ms_router_params_from_model
 * encodes the arches we have checked against llama.cpp's source (glm4moe,
 * deepseek2, qwen3moe, llama/Mixtral, gpt-oss); any other arch gets the keys
 * with softmax as the default, which is what an arch that reads the keys does.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/kernels.h"
#include "moestream/model.h"

static const char *const gating_names[MS_GATING_COUNT] = {
	[MS_GATING_NONE] = "none",
	[MS_GATING_SOFTMAX] = "softmax",
	[MS_GATING_SIGMOID] = "sigmoid",
	[MS_GATING_SOFTMAX_WEIGHT] = "softmax_weight",
	[MS_GATING_SQRT_SOFTPLUS] = "sqrt_softplus",
};

const char *ms_gating_name(enum ms_gating g)
{
	return (unsigned)g < MS_GATING_COUNT ? gating_names[g] : "invalid";
}

/* ---- parameters from a model ---------------------------------------------------- */

/* How an arch's graph in llama.cpp passes the router's parameters. */
enum arch_src { FROM_KEY, FIXED_ON, FIXED_OFF };

static const struct {
	const char *arch;
	enum ms_gating gating; /* NONE: from the key */
	enum ms_gating dflt;   /* when the key is absent */
	enum arch_src norm;
} arch_rules[] = {
	/* src/models/glm4-moe.cpp: key, default sigmoid (llama-model.cpp:
	 * "GLM-4.5 uses sigmoid"); norm and scale from the keys. */
	{ "glm4moe", MS_GATING_NONE, MS_GATING_SIGMOID, FROM_KEY },
	/* deepseek2: key, default softmax for old V2/V2.5 files. (llama.cpp
	 * also guesses sigmoid for GLM-4.7-Lite files without the key, from
	 * their layer and vocab counts; such files are not handled here.) */
	{ "deepseek2", MS_GATING_NONE, MS_GATING_SOFTMAX, FROM_KEY },
	/* src/models/qwen3moe.cpp, llama.cpp: softmax and norm constants. */
	{ "qwen3moe", MS_GATING_SOFTMAX, MS_GATING_SOFTMAX, FIXED_ON },
	{ "llama", MS_GATING_SOFTMAX, MS_GATING_SOFTMAX, FIXED_ON },
	/* src/models/openai-moe-iswa.cpp: softmax over the selected logits,
	 * no norm. */
	{ "gpt-oss", MS_GATING_SOFTMAX_WEIGHT, MS_GATING_SOFTMAX_WEIGHT,
	  FIXED_OFF },
};

int ms_router_params_from_model(const struct ms_model *m,
				struct ms_router_params *p, struct ms_err *err)
{
	const struct ms_gguf *g = m->shards[0];
	char key[128];
	int rc;

	memset(p, 0, sizeof(*p));
	if (!m->n_expert)
		return ms_err_set(err, -EINVAL,
				  "%s: not a Mixture-of-Experts model (no "
				  "%s.expert_count): it has no router",
				  g->path, m->arch);
	if (m->n_expert_used < 1 || m->n_expert_used > m->n_expert ||
	    m->n_expert_used > MS_ROUTER_MAX_USED)
		return ms_err_set(err, -EINVAL,
				  "%s: %s.expert_used_count = %u: expected "
				  "1..%u",
				  g->path, m->arch, m->n_expert_used,
				  m->n_expert < MS_ROUTER_MAX_USED
					  ? m->n_expert
					  : MS_ROUTER_MAX_USED);
	p->n_expert = m->n_expert;
	p->n_used = m->n_expert_used;

	enum ms_gating fixed = MS_GATING_NONE, dflt = MS_GATING_SOFTMAX;
	enum arch_src norm = FROM_KEY;
	for (size_t i = 0; i < sizeof(arch_rules) / sizeof(arch_rules[0]); i++)
		if (!strcmp(m->arch, arch_rules[i].arch)) {
			fixed = arch_rules[i].gating;
			dflt = arch_rules[i].dflt;
			norm = arch_rules[i].norm;
		}

	/* Gating: a constant of the arch, else the key, else the default. */
	if (fixed != MS_GATING_NONE) {
		p->gating = fixed;
	} else {
		uint64_t v;
		snprintf(key, sizeof(key), "%s.expert_gating_func", m->arch);
		rc = ms_gguf_get_u64(g, key, &v, err);
		if (rc == -ENOENT || (rc == 0 && v == MS_GATING_NONE))
			p->gating = dflt;
		else if (rc)
			return rc;
		else if (v >= MS_GATING_COUNT)
			return ms_err_set(
				err, -EINVAL,
				"%s: %s = %llu: not a gating function "
				"we know (1 softmax, 2 sigmoid, 3 "
				"softmax_weight, 4 sqrt_softplus)",
				g->path, key, (unsigned long long)v);
		else
			p->gating = (enum ms_gating)v;
	}

	if (norm == FROM_KEY) {
		bool b = false;
		snprintf(key, sizeof(key), "%s.expert_weights_norm", m->arch);
		rc = ms_gguf_get_bool(g, key, &b, err);
		if (rc && rc != -ENOENT)
			return rc;
		p->norm = b;
	} else {
		p->norm = norm == FIXED_ON;
	}

	double s = 0.0;
	snprintf(key, sizeof(key), "%s.expert_weights_scale", m->arch);
	rc = ms_gguf_get_f64(g, key, &s, err);
	if (rc && rc != -ENOENT)
		return rc;
	if (!isfinite(s))
		return ms_err_set(err, -EINVAL, "%s: %s = %g: not finite",
				  g->path, key, s);
	p->scale = (float)s;
	ms_err_clear(err);
	return 0;
}

/* ---- selection ------------------------------------------------------------------- */

static int check_params(const struct ms_router_params *p, struct ms_err *err)
{
	if (!p || p->gating <= MS_GATING_NONE || p->gating >= MS_GATING_COUNT)
		return ms_err_set(err, -EINVAL,
				  "router: gating %d is not a "
				  "resolved gating function",
				  p ? (int)p->gating : -1);
	if (p->n_expert < 1 || p->n_used < 1 || p->n_used > p->n_expert ||
	    p->n_used > MS_ROUTER_MAX_USED)
		return ms_err_set(err, -EINVAL,
				  "router: %u of %u experts: expected 1..%d "
				  "of at least as many",
				  p->n_used, p->n_expert, MS_ROUTER_MAX_USED);
	if (!isfinite(p->scale))
		return ms_err_set(err, -EINVAL,
				  "router: scale %g is not "
				  "finite",
				  (double)p->scale);
	return 0;
}

/* ggml_softplus: log(1 + e^x), with the same cut-over to x for large x. */
static double softplus(double x)
{
	return x > 20.0 ? x : log1p(exp(x));
}

/* Selection over doubles, shared by ms_router_select and ms_router_run. */
static int select_d(const struct ms_router_params *p, const double *logits,
		    const float *exp_probs_b, uint32_t *experts, float *weights,
		    struct ms_err *err)
{
	uint32_t n = p->n_expert, k = p->n_used;
	double *probs = malloc(2 * (size_t)n * sizeof(double));
	if (!probs)
		return ms_err_set(err, -ENOMEM,
				  "router: out of memory for %u "
				  "probabilities",
				  n);
	double *score = probs + n;

	for (uint32_t e = 0; e < n; e++)
		if (!isfinite(logits[e])) {
			free(probs);
			return ms_err_set(err, -EINVAL,
					  "router: logit of "
					  "expert %u is %g",
					  e, logits[e]);
		}

	switch (p->gating) {
	case MS_GATING_SOFTMAX: {
		double mx = logits[0], sum = 0.0;
		for (uint32_t e = 1; e < n; e++)
			mx = logits[e] > mx ? logits[e] : mx;
		for (uint32_t e = 0; e < n; e++)
			sum += probs[e] = exp(logits[e] - mx);
		for (uint32_t e = 0; e < n; e++)
			probs[e] /= sum;
		break;
	}
	case MS_GATING_SIGMOID:
		for (uint32_t e = 0; e < n; e++)
			probs[e] = 1.0 / (1.0 + exp(-logits[e]));
		break;
	case MS_GATING_SQRT_SOFTPLUS:
		for (uint32_t e = 0; e < n; e++)
			probs[e] = sqrt(softplus(logits[e]));
		break;
	default: /* softmax_weight: selection over the raw logits */
		memcpy(probs, logits, n * sizeof(double));
		break;
	}
	for (uint32_t e = 0; e < n; e++) {
		double b = exp_probs_b ? (double)exp_probs_b[e] : 0.0;
		if (!isfinite(b)) {
			free(probs);
			return ms_err_set(err, -EINVAL,
					  "router: exp_probs_b of "
					  "expert %u is %g",
					  e, b);
		}
		score[e] = probs[e] + b;
	}

	/* Top-k by repeated selection: k <= 64 and n in the hundreds, so this
	 * is cheaper than a sort and its tie rule (the lower id wins, because
	 * only a strictly greater score replaces the best so far) is plain. */
	double w[MS_ROUTER_MAX_USED];
	for (uint32_t i = 0; i < k; i++) {
		uint32_t best = UINT32_MAX;
		for (uint32_t e = 0; e < n; e++) {
			if (score[e] == -INFINITY)
				continue;
			if (best == UINT32_MAX || score[e] > score[best])
				best = e;
		}
		if (best == UINT32_MAX) { /* cannot happen: scores are finite */
			free(probs);
			return ms_err_set(err, -EINVAL,
					  "router: no expert left "
					  "to select");
		}
		experts[i] = best;
		w[i] = probs[best];
		score[best] = -INFINITY;
	}
	free(probs);

	if (p->gating == MS_GATING_SOFTMAX_WEIGHT) {
		double mx = w[0], sum = 0.0;
		for (uint32_t i = 1; i < k; i++)
			mx = w[i] > mx ? w[i] : mx;
		for (uint32_t i = 0; i < k; i++)
			sum += w[i] = exp(w[i] - mx);
		for (uint32_t i = 0; i < k; i++)
			w[i] /= sum;
	}
	if (p->norm) {
		double sum = 0.0;
		for (uint32_t i = 0; i < k; i++)
			sum += w[i];
		/* llama.cpp clamps the sum to the smallest normal f16. */
		if (sum < 6.103515625e-5)
			sum = 6.103515625e-5;
		for (uint32_t i = 0; i < k; i++)
			w[i] /= sum;
	}
	if (p->scale != 0.0f && p->scale != 1.0f)
		for (uint32_t i = 0; i < k; i++)
			w[i] *= (double)p->scale;
	for (uint32_t i = 0; i < k; i++)
		weights[i] = (float)w[i];
	return 0;
}

int ms_router_select(const struct ms_router_params *p, const float *logits,
		     const float *exp_probs_b, uint32_t *experts,
		     float *weights, struct ms_err *err)
{
	int rc = check_params(p, err);
	if (rc)
		return rc;
	double *l = malloc((size_t)p->n_expert * sizeof(double));
	if (!l)
		return ms_err_set(err, -ENOMEM, "router: out of memory");
	for (uint32_t e = 0; e < p->n_expert; e++)
		l[e] = logits[e];
	rc = select_d(p, l, exp_probs_b, experts, weights, err);
	free(l);
	return rc;
}

int ms_router_run(const struct ms_router_params *p, uint32_t w_type,
		  const void *w_gate_inp, const float *gate_inp_b,
		  const float *exp_probs_b, int64_t n_embd, const float *x,
		  uint32_t *experts, float *weights, float *logits,
		  struct ms_err *err)
{
	int rc = check_params(p, err);
	if (rc)
		return rc;
	uint64_t row;
	rc = ms_type_row_size(w_type, n_embd, &row, err);
	if (rc)
		return rc;
	if (!ms_dequant_supported(w_type))
		return ms_err_set(err, -ENOTSUP,
				  "router: no dequantiser for "
				  "ffn_gate_inp of type %s",
				  ms_type_name(w_type));

	double *l = malloc((size_t)p->n_expert * sizeof(double));
	float *wrow = malloc((size_t)n_embd * sizeof(float));
	if (!l || !wrow) {
		rc = ms_err_set(err, -ENOMEM, "router: out of memory");
		goto out;
	}
	for (uint32_t e = 0; e < p->n_expert; e++) {
		const float *w = wrow;
		if (w_type == MS_TYPE_F32) {
			w = (const float *)((const char *)w_gate_inp + e * row);
		} else if ((rc = ms_dequant_row(
				    w_type, (const char *)w_gate_inp + e * row,
				    wrow, n_embd)) != 0) {
			rc = ms_err_set(err, rc,
					"router: dequantising row %u "
					"of ffn_gate_inp (%s) failed",
					e, ms_type_name(w_type));
			goto out;
		}
		/* Four partial sums: the order is fixed, so the result is too. */
		double s[4] = { 0, 0, 0, 0 };
		int64_t i = 0;
		for (; i + 4 <= n_embd; i += 4)
			for (int j = 0; j < 4; j++)
				s[j] += (double)w[i + j] * (double)x[i + j];
		for (; i < n_embd; i++)
			s[0] += (double)w[i] * (double)x[i];
		l[e] = (s[0] + s[1]) + (s[2] + s[3]);
		if (gate_inp_b)
			l[e] += (double)gate_inp_b[e];
		if (logits)
			logits[e] = (float)l[e];
	}
	rc = select_d(p, l, exp_probs_b, experts, weights, err);
out:
	free(l);
	free(wrow);
	return rc;
}
