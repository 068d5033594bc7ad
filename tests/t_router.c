/*
 * t_router - the MoE router against a float64 reference written here from
 * llama.cpp's build_moe_ffn(): every gating function (softmax, sigmoid,
 * softmax_weight, sqrt_softplus), with and without the exp_probs_b
 * selection bias, with and without norm, with scale 0 (absent), 1 and 2.5,
 * for several expert counts. The selection must be the same, the weights
 * within 1e-6 relative. Also: exact ties go to the lower expert id, the
 * norm's clamp, bad parameters, a non-f32 gate_inp, and the parameters
 * ms_router_params_from_model reads from GGUF files that ggml wrote (the
 * keys, the arch constants and the arch defaults).
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "ggml_ref.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

static struct ggml_ref R;
static uint64_t rng;

static double unif(void) /* [-1, 1) */
{
	return (double)(t_rand(&rng) >> 11) / 4503599627370496.0 - 1.0;
}

/* ---- the reference --------------------------------------------------------------- */

/* Selection and weights in float64 from logits, written from the definition
 * (sorting by score, stable so that ties keep the lower id first). */
static void ref_select(const struct ms_router_params *p, const double *logit,
		       const float *bias, uint32_t *ids, double *w)
{
	uint32_t n = p->n_expert, k = p->n_used;
	double probs[512], score[512];
	uint32_t order[512];
	double mx = -INFINITY, sum = 0;
	for (uint32_t e = 0; e < n; e++)
		mx = fmax(mx, logit[e]);
	for (uint32_t e = 0; e < n; e++) {
		switch (p->gating) {
		case MS_GATING_SOFTMAX:
			probs[e] = exp(logit[e] - mx);
			sum += probs[e];
			break;
		case MS_GATING_SIGMOID:
			probs[e] = 1 / (1 + exp(-logit[e]));
			break;
		case MS_GATING_SQRT_SOFTPLUS:
			probs[e] = sqrt(logit[e] > 20 ? logit[e]
						      : log(1 + exp(logit[e])));
			break;
		default:
			probs[e] = logit[e];
		}
	}
	if (p->gating == MS_GATING_SOFTMAX)
		for (uint32_t e = 0; e < n; e++)
			probs[e] /= sum;
	for (uint32_t e = 0; e < n; e++) {
		score[e] = probs[e] + (bias ? bias[e] : 0.0);
		order[e] = e;
	}
	/* insertion sort, descending, stable */
	for (uint32_t i = 1; i < n; i++) {
		uint32_t v = order[i];
		uint32_t j = i;
		while (j > 0 && score[order[j - 1]] < score[v]) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = v;
	}
	for (uint32_t i = 0; i < k; i++) {
		ids[i] = order[i];
		w[i] = probs[order[i]];
	}
	if (p->gating == MS_GATING_SOFTMAX_WEIGHT) {
		double m2 = -INFINITY, s2 = 0;
		for (uint32_t i = 0; i < k; i++)
			m2 = fmax(m2, w[i]);
		for (uint32_t i = 0; i < k; i++)
			s2 += w[i] = exp(w[i] - m2);
		for (uint32_t i = 0; i < k; i++)
			w[i] /= s2;
	}
	if (p->norm) {
		double s = 0;
		for (uint32_t i = 0; i < k; i++)
			s += w[i];
		s = fmax(s, 6.103515625e-5);
		for (uint32_t i = 0; i < k; i++)
			w[i] /= s;
	}
	if (p->scale != 0 && p->scale != 1)
		for (uint32_t i = 0; i < k; i++)
			w[i] *= p->scale;
}

static int n_cases;

/* Compares ms_router_run with the reference on random W, x, bias. */
static void check_case(enum ms_gating g, bool bias, bool norm, float scale,
		       uint32_t n_expert, uint32_t n_used, int64_t n_embd,
		       bool logit_bias)
{
	struct ms_router_params p = { .gating = g,
				      .norm = norm,
				      .scale = scale,
				      .n_expert = n_expert,
				      .n_used = n_used };
	float *W = malloc(sizeof(float) * (size_t)(n_expert * n_embd));
	float *x = malloc(sizeof(float) * (size_t)n_embd);
	float b[512], lb[512];
	double logit[512], wref[64];
	uint32_t ids[64], rids[64];
	float wt[64];
	if (!W || !x)
		t_fatal("out of memory");
	float sd = 1.0f / sqrtf((float)n_embd);
	for (int64_t i = 0; i < n_expert * n_embd; i++)
		W[i] = (float)unif() * sd * 3.0f;
	for (int64_t i = 0; i < n_embd; i++)
		x[i] = (float)unif() * 1.7f;
	for (uint32_t e = 0; e < n_expert; e++) {
		b[e] = (float)(unif() * 0.1);
		lb[e] = (float)(unif() * 0.5);
		double s = 0;
		for (int64_t i = 0; i < n_embd; i++)
			s += (double)W[e * n_embd + i] * x[i];
		logit[e] = s + (logit_bias ? lb[e] : 0.0);
	}
	struct ms_err err = { 0 };
	int rc = ms_router_run(&p, MS_TYPE_F32, W, logit_bias ? lb : NULL,
			       bias ? b : NULL, n_embd, x, ids, wt, NULL, &err);
	T_CHECK(rc == 0, "ms_router_run: %s", err.msg);
	ref_select(&p, logit, bias ? b : NULL, rids, wref);
	double worst = 0;
	for (uint32_t i = 0; !rc && i < n_used; i++) {
		T_CHECK(ids[i] == rids[i],
			"%s bias=%d norm=%d scale=%g "
			"%u/%u: position %u is expert %u, reference %u",
			ms_gating_name(g), bias, norm, (double)scale, n_used,
			n_expert, i, ids[i], rids[i]);
		double rel = fabs(wt[i] - wref[i]) / fmax(fabs(wref[i]), 1e-30);
		worst = fmax(worst, rel);
		T_CHECK(rel <= 1e-6,
			"%s bias=%d norm=%d scale=%g: weight %u "
			"%.9g, reference %.12g (rel %.2e)",
			ms_gating_name(g), bias, norm, (double)scale, i,
			(double)wt[i], wref[i], rel);
	}
	if (n_cases++ % 16 == 0)
		printf("%-14s bias=%d norm=%d scale=%-3g %2u of %3u n_embd %3lld%s: "
		       "top %u (%.6f), worst rel %.1e\n",
		       ms_gating_name(g), bias, norm, (double)scale, n_used,
		       n_expert, (long long)n_embd,
		       logit_bias ? " logit bias" : "", ids[0], (double)wt[0],
		       worst);
	free(W);
	free(x);
}

/* ---- ties, clamps and errors ------------------------------------------------------ */

static void check_select(enum ms_gating g, bool norm, const float *logits,
			 const float *bias, uint32_t n, uint32_t k,
			 const uint32_t *want)
{
	struct ms_router_params p = {
		.gating = g, .norm = norm, .n_expert = n, .n_used = k
	};
	uint32_t ids[64];
	float w[64];
	struct ms_err err = { 0 };
	int rc = ms_router_select(&p, logits, bias, ids, w, &err);
	T_CHECK(rc == 0, "ms_router_select: %s", err.msg);
	for (uint32_t i = 0; !rc && i < k; i++)
		T_CHECK(ids[i] == want[i],
			"%s ties: position %u is %u, want %u",
			ms_gating_name(g), i, ids[i], want[i]);
}

static void check_ties(void)
{
	/* Equal scores: the lower id first, whatever the gating. */
	const float l1[6] = { 0.5f, 2.0f, 1.0f, 2.0f, 2.0f, 1.0f };
	const uint32_t w1[4] = { 1, 3, 4, 2 };
	for (int g = MS_GATING_SOFTMAX; g < MS_GATING_COUNT; g++)
		check_select((enum ms_gating)g, true, l1, NULL, 6, 4, w1);
	/* A bias moves the choice, never the weight: expert 3's sigmoid(-5)
	 * plus 10 wins, and its weight is sigmoid(-5). */
	const float l2[4] = { 0.0f, 0.0f, 1.0f, -5.0f };
	const float b2[4] = { 0.0f, 0.0f, 0.0f, 10.0f };
	struct ms_router_params p = { .gating = MS_GATING_SIGMOID,
				      .n_expert = 4,
				      .n_used = 3 };
	uint32_t ids[4];
	float w[4];
	T_CHECK(ms_router_select(&p, l2, b2, ids, w, NULL) == 0 &&
			ids[0] == 3 && ids[1] == 2 && ids[2] == 0,
		"biased sigmoid: %u %u %u, want 3 2 0", ids[0], ids[1], ids[2]);
	T_CHECK(fabsf(w[0] - 1.0f / (1.0f + expf(5.0f))) < 1e-7f,
		"weight of the biased expert %g is not its unbiased prob",
		(double)w[0]);
	/* An exact tie made by the bias: 1.0 against 0.75 + 0.25. */
	const float l4[3] = { 1.0f, 0.75f, -3.0f };
	const float b4[3] = { 0.0f, 0.25f, 0.0f };
	struct ms_router_params p3 = { .gating = MS_GATING_SOFTMAX_WEIGHT,
				       .n_expert = 3,
				       .n_used = 2 };
	const float b5[3] = { 0.25f, 0.5f, 0.0f }; /* 1.25 vs 1.25 */
	T_CHECK(ms_router_select(&p3, l4, b4, ids, w, NULL) == 0 &&
			ids[0] == 0 && ids[1] == 1,
		"softmax_weight tie by bias: %u %u, want 0 1", ids[0], ids[1]);
	T_CHECK(ms_router_select(&p3, l4, b5, ids, w, NULL) == 0 &&
			ids[0] == 0 && ids[1] == 1,
		"softmax_weight tie by bias: %u %u, want 0 1", ids[0], ids[1]);
	/* softmax over the selected logits 1 and 0.75 (unbiased) */
	double e0 = 1.0 / (1.0 + exp(-0.25));
	T_CHECK(fabs(w[0] - e0) < 1e-7, "softmax_weight weight %g, want %g",
		(double)w[0], e0);
	/* Identical rows of W: all logits tie, selection is 0..k-1. */
	float W[8 * 32], x[32];
	for (int i = 0; i < 32; i++)
		x[i] = (float)unif();
	for (int e = 0; e < 8; e++)
		for (int i = 0; i < 32; i++)
			W[e * 32 + i] = (float)(i % 5) * 0.1f;
	struct ms_router_params p5 = { .gating = MS_GATING_SOFTMAX,
				       .norm = true,
				       .n_expert = 8,
				       .n_used = 3 };
	T_CHECK(ms_router_run(&p5, MS_TYPE_F32, W, NULL, NULL, 32, x, ids, w,
			      NULL, NULL) == 0 &&
			ids[0] == 0 && ids[1] == 1 && ids[2] == 2,
		"identical rows: %u %u %u, want 0 1 2", ids[0], ids[1], ids[2]);
	T_CHECK(fabsf(w[0] - 1.0f / 3) < 1e-7f, "equal weights %g",
		(double)w[0]);
}

static void check_clamp_and_errors(void)
{
	/* Sigmoid of -20 is 2e-9: four of them sum below 2^-14, so the norm
	 * divides by the clamp, not by the sum (llama.cpp's ggml_clamp). */
	float l[4] = { -20, -20, -20, -20 };
	struct ms_router_params p = { .gating = MS_GATING_SIGMOID,
				      .norm = true,
				      .scale = 2.5f,
				      .n_expert = 4,
				      .n_used = 4 };
	uint32_t ids[4];
	float w[4];
	T_CHECK(ms_router_select(&p, l, NULL, ids, w, NULL) == 0, "select");
	double want = 1 / (1 + exp(20.0)) / 6.103515625e-5 * 2.5;
	T_CHECK(fabs(w[0] - want) / want < 1e-6,
		"clamped weight %.9g, want %.9g", (double)w[0], want);

	struct ms_err err = { 0 };
	struct ms_router_params bad = p;
	bad.gating = MS_GATING_NONE;
	T_CHECK(ms_router_select(&bad, l, NULL, ids, w, &err) == -EINVAL,
		"gating none accepted");
	bad = p;
	bad.n_used = 5;
	T_CHECK(ms_router_select(&bad, l, NULL, ids, w, &err) == -EINVAL,
		"5 of 4 accepted");
	bad.n_used = 0;
	T_CHECK(ms_router_select(&bad, l, NULL, ids, w, &err) == -EINVAL,
		"0 of 4 accepted");
	bad = p;
	bad.gating = (enum ms_gating)9;
	T_CHECK(ms_router_select(&bad, l, NULL, ids, w, &err) == -EINVAL,
		"gating 9 accepted");
	float ln[4] = { 0, NAN, 0, 0 };
	T_CHECK(ms_router_select(&p, ln, NULL, ids, w, &err) == -EINVAL,
		"NaN logit accepted");
	printf("NaN logit: %s\n", err.msg);
	float bn[4] = { 0, 0, INFINITY, 0 };
	T_CHECK(ms_router_select(&p, l, bn, ids, w, &err) == -EINVAL,
		"infinite bias accepted");
	float W[4 * 33] = { 0 }, x[33] = { 0 };
	T_CHECK(ms_router_run(&p, MS_TYPE_Q8_0, W, NULL, NULL, 33, x, ids, w,
			      NULL, &err) == -EINVAL,
		"q8_0 router with n_embd 33 accepted");
}

/* A gate_inp in f16: the dequantised rows must give the reference's
 * choice computed on the rounded values. */
static void check_f16_gate(void)
{
	enum { E = 128, X = 16 };
	float W[X * E], Wr[X * E], x[E];
	uint16_t h[X * E];
	for (int i = 0; i < X * E; i++)
		W[i] = (float)unif() * 0.3f;
	for (int i = 0; i < E; i++)
		x[i] = (float)unif();
	R.ggml_fp32_to_fp16_row(W, h, X * E);
	R.ggml_fp16_to_fp32_row(h, Wr, X * E);
	struct ms_router_params p = { .gating = MS_GATING_SOFTMAX,
				      .norm = true,
				      .n_expert = X,
				      .n_used = 4 };
	double logit[X], wref[4];
	for (int e = 0; e < X; e++) {
		double s = 0;
		for (int i = 0; i < E; i++)
			s += (double)Wr[e * E + i] * x[i];
		logit[e] = s;
	}
	uint32_t ids[4], rids[4];
	float w[4], lg[X];
	struct ms_err err = { 0 };
	T_CHECK(ms_router_run(&p, MS_TYPE_F16, h, NULL, NULL, E, x, ids, w, lg,
			      &err) == 0,
		"f16 router: %s", err.msg);
	ref_select(&p, logit, NULL, rids, wref);
	for (int i = 0; i < 4; i++)
		T_CHECK(ids[i] == rids[i] &&
				fabs(w[i] - wref[i]) <= 1e-6 * wref[i],
			"f16 gate_inp: %u %g vs %u %g", ids[i], (double)w[i],
			rids[i], wref[i]);
	for (int e = 0; e < X; e++)
		T_CHECK(lg[e] == (float)logit[e] ||
				fabs(lg[e] - logit[e]) <= 1e-6 * fabs(logit[e]),
			"logit %d: %g vs %g", e, (double)lg[e], logit[e]);
}

/* ---- parameters from GGUF files ------------------------------------------------------ */

struct kv_spec {
	const struct ggml_ref_moe *moe;
	int gating;  /* -1: no key */
	int norm;    /* -1: no key */
	float scale; /* NAN: no key */
};

static void kv_fn(const struct ggml_ref *r, struct gguf_context *g, void *user)
{
	const struct kv_spec *s = user;
	const struct ggml_ref_moe *m = s->moe;
	char k[128];
	const char *a = m->arch;
	r->gguf_set_val_str(g, "general.architecture", a);
#define KU32(suffix, v)                                                        \
	do {                                                                   \
		snprintf(k, sizeof(k), "%s." suffix, a);                       \
		r->gguf_set_val_u32(g, k, (v));                                \
	} while (0)
	KU32("block_count", m->n_block);
	KU32("embedding_length", m->n_embd);
	KU32("feed_forward_length", m->n_ff_dense);
	KU32("expert_count", m->n_expert);
	KU32("expert_used_count", m->n_expert_used);
	KU32("expert_feed_forward_length", m->n_ff);
	if (s->gating >= 0)
		KU32("expert_gating_func", (uint32_t)s->gating);
#undef KU32
	if (s->norm >= 0) {
		snprintf(k, sizeof(k), "%s.expert_weights_norm", a);
		r->gguf_set_val_bool(g, k, s->norm);
	}
	if (!isnan(s->scale)) {
		snprintf(k, sizeof(k), "%s.expert_weights_scale", a);
		r->gguf_set_val_f32(g, k, s->scale);
	}
}

static void check_model(const char *arch, int gating, int norm, float scale,
			int want_rc, enum ms_gating want_g, bool want_norm,
			float want_scale)
{
	struct ggml_ref_moe m = { .arch = arch,
				  .n_block = 2,
				  .n_expert = 8,
				  .n_expert_used = 2,
				  .n_embd = 64,
				  .n_ff = 32,
				  .n_ff_dense = 64,
				  .n_vocab = 16,
				  .type = { 0, 0, 0 },
				  .resident_type = 0 };
	struct ggml_ref_tensor *t;
	size_t n;
	if (ggml_ref_moe_tensors(&R, &m, &t, &n))
		t_fatal("ggml_ref_moe_tensors");
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s-%d-%d-%g.gguf", t_tmpdir(), arch,
		 gating, norm, (double)scale);
	struct kv_spec s = { &m, gating, norm, scale };
	struct ggml_ref_file f = { .path = path,
				   .set_kv = kv_fn,
				   .user = &s,
				   .tensors = t,
				   .n_tensors = n };
	if (ggml_ref_write(&R, &f))
		t_fatal("writing %s", path);
	free(t);
	struct ms_model *mod;
	struct ms_err err = { 0 };
	if (ms_model_open(&mod, path, &err))
		t_fatal("%s: %s", path, err.msg);
	struct ms_router_params p;
	int rc = ms_router_params_from_model(mod, &p, &err);
	printf("%-9s key gating %2d norm %2d scale %-4g -> rc %d: %s, norm %d, "
	       "scale %g%s%s\n",
	       arch, gating, norm, (double)scale, rc, ms_gating_name(p.gating),
	       p.norm, (double)p.scale, rc ? " | " : "", rc ? err.msg : "");
	T_CHECK(rc == want_rc, "%s: rc %d, want %d", arch, rc, want_rc);
	if (!rc && !want_rc) {
		T_CHECK(p.gating == want_g, "%s gating %s, want %s", arch,
			ms_gating_name(p.gating), ms_gating_name(want_g));
		T_CHECK(p.norm == want_norm, "%s norm %d, want %d", arch,
			p.norm, want_norm);
		T_CHECK(p.scale == want_scale, "%s scale %g, want %g", arch,
			(double)p.scale, (double)want_scale);
		T_CHECK(p.n_expert == 8 && p.n_used == 2, "%s: %u of %u", arch,
			p.n_used, p.n_expert);
	}
	ms_model_free(mod);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* lines whole among stderr's */
	ggml_ref_load_or_fail(&R);
	rng = t_seed();

	const float scales[] = { 0.0f, 1.0f, 2.5f };
	const uint32_t shapes[][3] = {
		{ 16, 4, 256 }, { 160, 8, 320 }, { 64, 1, 96 }, { 128, 8, 512 }
	};
	for (int g = MS_GATING_SOFTMAX; g < MS_GATING_COUNT; g++)
		for (int bias = 0; bias < 2; bias++)
			for (int norm = 0; norm < 2; norm++)
				for (int s = 0; s < 3; s++)
					for (int k = 0; k < 4; k++)
						check_case(
							(enum ms_gating)g, bias,
							norm, scales[s],
							shapes[k][0],
							shapes[k][1],
							shapes[k][2], k == 3);
	printf("%d random cases checked against float64\n", n_cases);

	check_ties();
	check_clamp_and_errors();
	check_f16_gate();

	/* Keys, constants and defaults, as llama.cpp takes them. */
	float none = NAN;
	check_model("glm4moe", 2, 1, 2.5f, 0, MS_GATING_SIGMOID, true, 2.5f);
	check_model("glm4moe", -1, -1, none, 0, MS_GATING_SIGMOID, false, 0.0f);
	check_model("glm4moe", 1, 0, 1.0f, 0, MS_GATING_SOFTMAX, false, 1.0f);
	check_model("glm4moe", 0, -1, none, 0, MS_GATING_SIGMOID, false, 0.0f);
	check_model("deepseek2", -1, 1, 16.0f, 0, MS_GATING_SOFTMAX, true,
		    16.0f);
	check_model("deepseek2", 2, 1, 2.5f, 0, MS_GATING_SIGMOID, true, 2.5f);
	check_model("qwen3moe", -1, -1, none, 0, MS_GATING_SOFTMAX, true, 0.0f);
	check_model("qwen3moe", 2, 0, none, 0, MS_GATING_SOFTMAX, true, 0.0f);
	check_model("llama", -1, -1, none, 0, MS_GATING_SOFTMAX, true, 0.0f);
	check_model("gpt-oss", 1, 1, none, 0, MS_GATING_SOFTMAX_WEIGHT, false,
		    0.0f);
	check_model("qwen2moe", -1, -1, none, 0, MS_GATING_SOFTMAX, false,
		    0.0f);
	check_model("glm4moe", 7, 1, 2.5f, -EINVAL, MS_GATING_NONE, false,
		    0.0f);
	check_model("glm4moe", 2, 1, INFINITY, -EINVAL, MS_GATING_NONE, false,
		    0.0f);
	return t_done();
}
