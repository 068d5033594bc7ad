/*
 * engine/forward.c - the forward pass of the MoE decoders, on the CPU.
 *
 * The path of a batch of T tokens (T = 1 when decoding, up to n_batch in a
 * prefill), as llama.cpp's glm4moe / qwen3moe graphs compute it:
 *
 *   x = embedding rows
 *   per block: h = rms_norm(x) * attn_norm
 *              q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)
 *              q, k = rms_norm per head * q_norm / k_norm   (when present)
 *              q, k = NEOX RoPE on the first n_rot dims of each head
 *              K, V cache <- k, v (as f16, llama.cpp's default cache type)
 *              att = softmax(q K^T / sqrt(head_dim), causal) V, per head,
 *                    query head h on KV head h / (n_head / n_head_kv)
 *              x += Wo att
 *              h = rms_norm(x) * ffn_norm
 *              dense block: x += down(silu(gate h) * up h)
 *              MoE block:   the router picks k experts per token; every
 *                           expert any token of the batch needs is asked of
 *                           the expert source once, the shared expert runs
 *                           while they stream, each routed expert runs on
 *                           the tokens that chose it as it arrives;
 *                           x += sum_j w_j y_j + shared     (j in top-k order)
 *   logits = output . (rms_norm(x) * output_norm)
 *
 * Activations are f32 and every product is the exact one of the C reference
 * kernels (kernels/ffn.c: f32 FMA chains flushed to double), so the result
 * does not depend on threads or on the order experts arrive in (each
 * expert's output is kept per (token, slot) and summed in top-k order).
 * llama.cpp's CPU backend rounds activations to 8 bits for quantised
 * weights; that difference is what t_forward_ref measures.
 *
 * Prefetch without an oracle: at the start of each block, the next MoE
 * block's router is applied to this block's input (speculative routing) and
 * the experts it names are hinted to the source; after the last block, the
 * first MoE layer's experts of this token are hinted for the next one.
 * ms_engine_stats counts how often a hint named an expert really routed.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

/* ---- small pieces ------------------------------------------------------------------ */

/* ggml's rms_norm: the mean of squares in double, one f32 scale. */
static void rms_norm(const float *x, const float *w, float *out, int64_t n,
		     float eps)
{
	double s = 0;
	for (int64_t i = 0; i < n; i++)
		s += (double)x[i] * (double)x[i];
	float scale = 1.0f / sqrtf((float)(s / (double)n) + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = (x[i] * scale) * w[i];
}

/* llama.cpp's CPU backend rounds the activations of a product with a
 * quantised weight to 8 bits first (ggml-cpu's vec_dot_type): Q8_K blocks of
 * 256 for the k-quants, Q8_0 blocks of 32 (f16 scale) for Q8_0/Q4_0/Q5_0.
 * With cfg.q8_activations the engine does the same: for the K-quants with
 * the integer kernels (kernels/q8.c, the same arithmetic as ggml's), for
 * the other types by this rounding followed by the exact f32 product. */
static void q8_round(uint32_t wtype, float *x, int64_t n)
{
	bool k = wtype == MS_TYPE_Q2_K || wtype == MS_TYPE_Q3_K ||
		 wtype == MS_TYPE_Q4_K || wtype == MS_TYPE_Q5_K ||
		 wtype == MS_TYPE_Q6_K || wtype == MS_TYPE_IQ4_XS;
	bool z = wtype == MS_TYPE_Q8_0 || wtype == MS_TYPE_Q4_0 ||
		 wtype == MS_TYPE_Q5_0 || wtype == MS_TYPE_IQ4_NL;
	if (k && n % 256 == 0) {
		for (int64_t b = 0; b < n; b += 256) {
			float amax = 0, max = 0;
			for (int j = 0; j < 256; j++)
				if (fabsf(x[b + j]) > amax) {
					amax = fabsf(x[b + j]);
					max = x[b + j];
				}
			if (!amax)
				continue;
			float iscale = -127.f / max, d = 1 / iscale;
			for (int j = 0; j < 256; j++) {
				int v = (int)nearbyintf(iscale * x[b + j]);
				x[b + j] = (float)(v > 127 ? 127 : v) * d;
			}
		}
	} else if (z) {
		for (int64_t b = 0; b + 32 <= n; b += 32) {
			float amax = 0;
			for (int j = 0; j < 32; j++)
				if (fabsf(x[b + j]) > amax)
					amax = fabsf(x[b + j]);
			/* ggml's x86 quantize_row_q8_0: d = amax / 127 kept as
			 * f16, the values multiplied by 127 / amax and rounded
			 * to nearest even */
			float d = amax / 127, id = amax ? 127.f / amax : 0;
			uint16_t h = ms_f32_f16(d);
			float d16;
			ms_dequant_row(MS_TYPE_F16, &h, &d16, 1);
			for (int j = 0; j < 32; j++)
				x[b + j] = nearbyintf(x[b + j] * id) * d16;
		}
	}
}

/* NEOX: pairs (i, i + n_rot/2), theta_i = pos * base^(-2i/n_rot). A
 * token's angles are the same for every head of every layer: cs gets the
 * cosine and sine of each (rope_angles) once a token and layer, not once
 * a head (96 + 8 heads of GLM-4.7: pow, sin and cos were 1% of a decode
 * step). */
static void rope_angles(double *cs, int64_t n_rot, int64_t pos, float base,
			float freq_scale)
{
	for (int64_t i = 0; i < n_rot / 2; i++) {
		double theta = (double)pos * (double)freq_scale *
			       pow((double)base, -2.0 * (double)i / (double)n_rot);
		cs[2 * i] = cos(theta);
		cs[2 * i + 1] = sin(theta);
	}
}

static void rope(float *v, int64_t n_rot, const double *cs)
{
	int64_t half = n_rot / 2;
	for (int64_t i = 0; i < half; i++) {
		double c = cs[2 * i], s = cs[2 * i + 1];
		double a = v[i], b = v[i + half];
		v[i] = (float)(a * c - b * s);
		v[i + half] = (float)(a * s + b * c);
	}
}

static int matmul(struct ms_engine *e, const struct ms_rt *w, const float *x,
		  float *y, int64_t T, struct ms_err *err)
{
	if (e->q8 && ms_ffn_q8_ok(w->type, w->ne[0])) {
		/* the integer kernels: the same rounding, computed in 8 bits */
		struct ms_ffn_opts o = e->opts;
		o.q8 = true;
		return ms_matmul(w->type, w->data, w->ne[0], w->ne[1], x, y, T,
				 &o, err);
	}
	if (e->q8) {
		float *xq = malloc((size_t)(T * w->ne[0]) * sizeof(float));
		if (!xq)
			return ms_err_set(err, -ENOMEM, "out of memory");
		memcpy(xq, x, (size_t)(T * w->ne[0]) * sizeof(float));
		for (int64_t t = 0; t < T; t++)
			q8_round(w->type, xq + t * w->ne[0], w->ne[0]);
		int rc = ms_matmul(w->type, w->data, w->ne[0], w->ne[1], xq, y, T,
				   &e->opts, err);
		free(xq);
		return rc;
	}
	return ms_matmul(w->type, w->data, w->ne[0], w->ne[1], x, y, T, &e->opts,
			 err);
}

/* An expert's FFN; with e->q8, as three products with the activations
 * rounded as llama.cpp's CPU backend rounds them. */
static int expert_ffn(struct ms_engine *e, const struct ms_expert_view *v,
		      const float *x, float *y, int64_t T, struct ms_err *err)
{
	if (!e->q8 || v->fused)
		return ms_expert_ffn(v, x, y, T, &e->opts, err);
	if (ms_ffn_q8_ok(v->type[0], v->n_embd) &&
	    ms_ffn_q8_ok(v->type[1], v->n_embd) &&
	    ms_ffn_q8_ok(v->type[2], v->n_ff)) {
		struct ms_ffn_opts o = e->opts;
		o.q8 = true;
		return ms_expert_ffn(v, x, y, T, &o, err);
	}
	int64_t E = v->n_embd, F = v->n_ff;
	float *g = malloc((size_t)(2 * T * F) * sizeof(float));
	if (!g)
		return ms_err_set(err, -ENOMEM, "out of memory");
	float *u = g + T * F;
	struct ms_rt wg = { v->data[0], v->type[0], { E, F } },
		     wu = { v->data[1], v->type[1], { E, F } },
		     wd = { v->data[2], v->type[2], { F, E } };
	int rc = matmul(e, &wg, x, g, T, err);
	if (!rc)
		rc = matmul(e, &wu, x, u, T, err);
	if (!rc) {
		for (int64_t i = 0; i < T * F; i++)
			g[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
		rc = matmul(e, &wd, g, y, T, err);
	}
	free(g);
	return rc;
}

/* ---- attention ---------------------------------------------------------------------- */

/* The KV cache holds f16 (llama.cpp's default type) or, with cfg.kv_f32,
 * f32; rows are read back as f32. */
static void kv_row(const struct ms_engine *e, const void *cache, size_t at,
		   int64_t n, float *out)
{
	if (e->cfg.kv_f32) {
		memcpy(out, (const float *)cache + at, (size_t)n * sizeof(float));
		return;
	}
	/* the kernels' f16 row (F16C where the CPU has it); exact */
	ms_ffn_dequant_row(e->opts.path, MS_TYPE_F16, (const uint16_t *)cache + at,
			   out, n);
}

static void kv_store(const struct ms_engine *e, void *cache, size_t at,
		     const float *v, int64_t n)
{
	if (e->cfg.kv_f32) {
		memcpy((float *)cache + at, v, (size_t)n * sizeof(float));
		return;
	}
	ms_f32_f16_row(v, (uint16_t *)cache + at, n);
}

struct att_job {
	struct ms_engine *e;
	uint32_t block;
	int64_t T;
};

/* Where sequence seq's K (or V) row for block b at position pos starts, in
 * values. */
size_t ms_eng_kv_at(const struct ms_engine *e, uint32_t seq, uint32_t b,
		    uint32_t pos)
{
	size_t HK = (size_t)(e->n_head_kv * e->head_dim);
	return (((size_t)seq * e->n_run + b) * e->cfg.n_ctx + pos) * HK;
}

static void att_task(void *ctx, int ith, int nth)
{
	struct att_job *j = ctx;
	struct ms_engine *e = j->e;
	int64_t H = e->n_head, D = e->head_dim, HK = e->n_head_kv * D;
	int64_t group = e->n_head / e->n_head_kv;
	int64_t total = j->T * H;
	float *s = e->scores + (size_t)ith * e->cfg.n_ctx;
	float scale = 1.0f / sqrtf((float)D);
	float kf[1024];
	for (int64_t w = total * ith / nth; w < total * (ith + 1) / nth; w++) {
		int64_t t = w / H, h = w % H, kvh = h / group;
		const float *q = e->q + t * H * D + h * D;
		float *out = e->att + t * H * D + h * D;
		size_t base = ms_eng_kv_at(e, e->tseq[t], j->block, 0);
		uint32_t n_pos = e->tpos[t] + 1; /* causal */
		if (e->fa16) {
			ms_attn_f16(e->opts.path, q,
				    (const uint16_t *)e->k_cache + base + kvh * D,
				    (const uint16_t *)e->v_cache + base + kvh * D,
				    (size_t)HK, n_pos, D, scale, out);
			continue;
		}
		float mx = -INFINITY;
		for (uint32_t p = 0; p < n_pos; p++) {
			kv_row(e, e->k_cache, base + (size_t)p * HK + kvh * D, D, kf);
			float acc = 0;
			for (int64_t d = 0; d < D; d++)
				acc += q[d] * kf[d];
			s[p] = acc * scale;
			if (s[p] > mx)
				mx = s[p];
		}
		double sum = 0;
		for (uint32_t p = 0; p < n_pos; p++) {
			s[p] = expf(s[p] - mx);
			sum += s[p];
		}
		float inv = (float)(1.0 / sum);
		for (int64_t d = 0; d < D; d++)
			out[d] = 0;
		for (uint32_t p = 0; p < n_pos; p++) {
			kv_row(e, e->v_cache, base + (size_t)p * HK + kvh * D, D, kf);
			float pw = s[p] * inv;
			for (int64_t d = 0; d < D; d++)
				out[d] += pw * kf[d];
		}
	}
}

static int attention(struct ms_engine *e, uint32_t b, int64_t T,
		     struct ms_err *err)
{
	const struct ms_block *k = &e->blk[b];
	int64_t E = e->n_embd, H = e->n_head, D = e->head_dim;
	int64_t HQ = H * D, HK = e->n_head_kv * D;
	int rc;
	if ((rc = matmul(e, &k->wq, e->h, e->q, T, err)) ||
	    (rc = matmul(e, &k->wk, e->h, e->k, T, err)) ||
	    (rc = matmul(e, &k->wv, e->h, e->v, T, err)))
		return rc;
	for (int64_t t = 0; t < T; t++) {
		float *q = e->q + t * HQ, *kk = e->k + t * HK, *v = e->v + t * HK;
		if (k->bq.data)
			for (int64_t i = 0; i < HQ; i++)
				q[i] += ((const float *)k->bq.data)[i];
		if (k->bk.data)
			for (int64_t i = 0; i < HK; i++)
				kk[i] += ((const float *)k->bk.data)[i];
		if (k->bv.data)
			for (int64_t i = 0; i < HK; i++)
				v[i] += ((const float *)k->bv.data)[i];
		double cs[1024]; /* n_rot <= key_length <= 1024 (engine.c) */
		rope_angles(cs, e->n_rot, e->tpos[t], e->rope_base, e->freq_scale);
		for (int64_t h = 0; h < H; h++) {
			if (k->q_norm.data)
				rms_norm(q + h * D, k->q_norm.data, q + h * D, D, e->eps);
			rope(q + h * D, e->n_rot, cs);
		}
		for (int64_t h = 0; h < e->n_head_kv; h++) {
			if (k->k_norm.data)
				rms_norm(kk + h * D, k->k_norm.data, kk + h * D, D,
					 e->eps);
			rope(kk + h * D, e->n_rot, cs);
		}
		size_t at = ms_eng_kv_at(e, e->tseq[t], b, e->tpos[t]);
		kv_store(e, e->k_cache, at, kk, HK);
		kv_store(e, e->v_cache, at, v, HK);
	}
	struct att_job j = { .e = e, .block = b, .T = T };
	ms_ffn_parallel(e->pool, 0, att_task, &j);
	if ((rc = matmul(e, &k->wo, e->att, e->o, T, err)))
		return rc;
	for (int64_t i = 0; i < T * E; i++)
		e->x[i] += e->o[i];
	return 0;
}

/* ---- FFN ------------------------------------------------------------------------------ */

static int dense_ffn(struct ms_engine *e, const struct ms_block *k, int64_t T,
		     struct ms_err *err)
{
	struct ms_expert_view v = {
		.n_embd = e->n_embd, .n_ff = k->gate.ne[1],
		.type = { k->gate.type, k->up.type, k->down.type },
		.data = { k->gate.data, k->up.data, k->down.data },
	};
	int rc = expert_ffn(e, &v, e->h, e->o, T, err);
	if (rc)
		return rc;
	for (int64_t i = 0; i < T * e->n_embd; i++)
		e->x[i] += e->o[i];
	return 0;
}

/* Remembers which experts were hinted for a layer, until the layer runs. */
void ms_eng_hint_mark(struct ms_engine *e, uint32_t layer, const uint32_t *x,
		      uint32_t n)
{
	uint8_t *m = e->hinted + (size_t)layer * e->model->n_expert;
	memset(m, 0, e->model->n_expert);
	for (uint32_t i = 0; i < n; i++)
		m[x[i]] = 1;
	e->has_hint[layer] = n > 0;
}

/* Block nb's top experts over a batch, from its router's logits
 * [T][n_expert], each once into e->xlist: read ahead from the expert
 * source and marked as that layer's hint. Their count; 0 (nothing hinted)
 * when a token's logits cannot be ranked. */
uint32_t ms_eng_hint(struct ms_engine *e, uint32_t nb, const float *logits,
		     int64_t T)
{
	const struct ms_block *k = &e->blk[nb];
	uint32_t X = e->model->n_expert;
	bool *mark = e->need;
	memset(mark, 0, X * sizeof(*mark));
	uint32_t *hint = e->xlist, n = 0;
	for (int64_t t = 0; t < T; t++) {
		uint32_t sel[MS_ROUTER_MAX_USED];
		float w[MS_ROUTER_MAX_USED];
		if (ms_router_select(&e->router, logits + t * X, k->probs_b.data,
				     sel, w, NULL))
			return 0;
		for (int64_t j = 0; j < e->n_used; j++)
			if (!mark[sel[j]]) {
				mark[sel[j]] = true;
				hint[n++] = sel[j];
			}
	}
	ms_xsrc_prefetch(e, (uint32_t)k->layer, hint, n);
	ms_eng_hint_mark(e, (uint32_t)k->layer, hint, n);
	return n;
}

/* Speculative routing: block nb's router applied to x (this block's input,
 * normed as nb would norm it), its top experts over the batch hinted. The
 * batch's rows go through the router in one product (its weights read
 * once, not once per token). */
static void speculate(struct ms_engine *e, uint32_t nb, int64_t T)
{
	const struct ms_block *k = &e->blk[nb];
	uint32_t X = e->model->n_expert;
	for (int64_t t = 0; t < T; t++)
		rms_norm(e->x + t * e->n_embd, k->ffn_norm.data,
			 e->hint_x + t * e->n_embd, e->n_embd, e->eps);
	if (ms_matmul(k->gate_inp.type, k->gate_inp.data, e->n_embd, X,
		      e->hint_x, e->rlog, T, &e->opts, NULL))
		return;
	ms_eng_hint(e, nb, e->rlog, T);
}

/* Block b's routing of the batch from its router's logits [T][n_expert]
 * into e->rsel / e->rw, and how well this layer's hint guessed it. */
int ms_eng_route(struct ms_engine *e, uint32_t b, const float *logits,
		 int64_t T, struct ms_err *err)
{
	const struct ms_block *k = &e->blk[b];
	int64_t K = e->n_used, X = e->model->n_expert;
	for (int64_t t = 0; t < T; t++) {
		int rc = ms_router_select(&e->router, logits + t * X,
					  k->probs_b.data, e->rsel + t * K,
					  e->rw + t * K, err);
		if (rc)
			return rc;
	}
	ms_eng_spec_score(e, (uint32_t)k->layer, T);
	return 0;
}

/* The experts the batch's routing (e->rsel) names, each once, into
 * e->xlist: their count. At the first MoE block, also keeps the last
 * token's for the next token's hint. */
uint32_t ms_eng_needed(struct ms_engine *e, uint32_t b, int64_t T)
{
	int64_t K = e->n_used;
	memset(e->need, 0, e->model->n_expert * sizeof(*e->need));
	uint32_t n = 0;
	for (int64_t i = 0; i < T * K; i++)
		if (!e->need[e->rsel[i]]) {
			e->need[e->rsel[i]] = true;
			e->xlist[n++] = e->rsel[i];
		}
	if ((int32_t)b == e->first_moe) {
		e->n_first_used = (uint32_t)K;
		for (int64_t j = 0; j < K; j++)
			e->first_used[j] = e->rsel[(T - 1) * K + j];
	}
	return n;
}

/* Speculation accuracy: did the hint for this layer name the experts
 * e->rsel[0 .. T * n_used) routed to? */
void ms_eng_spec_score(struct ms_engine *e, uint32_t layer, int64_t T)
{
	if (!e->has_hint[layer])
		return;
	const uint8_t *m = e->hinted + (size_t)layer * e->model->n_expert;
	for (int64_t i = 0; i < T * e->n_used; i++) {
		e->st.spec_routed++;
		e->st.spec_hit += m[e->rsel[i]];
	}
	e->has_hint[layer] = false;
}

static int moe_ffn(struct ms_engine *e, uint32_t b, int64_t T,
		   struct ms_err *err)
{
	const struct ms_block *k = &e->blk[b];
	uint32_t layer = (uint32_t)k->layer;
	int64_t E = e->n_embd, K = e->n_used;
	int rc;
	if ((rc = matmul(e, &k->gate_inp, e->h, e->rlog, T, err)))
		return rc;
	if ((rc = ms_eng_route(e, b, e->rlog, T, err)))
		return rc;
	uint32_t *ex = e->xlist, n = ms_eng_needed(e, b, T);
	if ((rc = ms_xsrc_acquire(e, layer, ex, n, err)))
		return rc;

	/* the shared expert while they stream; a failure there, or of any
	 * expert, still takes (and releases) every expert asked for */
	int first_rc = 0;
	bool shared = k->sh_gate.data != NULL;
	if (shared) {
		struct ms_expert_view v = {
			.n_embd = E, .n_ff = k->sh_gate.ne[1],
			.type = { k->sh_gate.type, k->sh_up.type, k->sh_down.type },
			.data = { k->sh_gate.data, k->sh_up.data, k->sh_down.data },
		};
		first_rc = expert_ffn(e, &v, e->h, e->sh, T, err);
	}
	for (uint32_t got = 0; got < n; got++) {
		uint32_t x;
		struct ms_expert_view v;
		rc = ms_xsrc_next(e, layer, &x, &v, first_rc ? NULL : err);
		if (rc) {
			if (!first_rc)
				first_rc = rc;
			continue;
		}
		if (first_rc) {
			ms_xsrc_release(e, layer, x);
			continue;
		}
		/* the tokens that chose x, gathered */
		int64_t cnt = 0;
		int64_t slot[4096];
		for (int64_t t = 0; t < T; t++)
			for (int64_t j = 0; j < K; j++)
				if (e->rsel[t * K + j] == x) {
					memcpy(e->xg + cnt * E, e->h + t * E,
					       (size_t)E * sizeof(float));
					slot[cnt++] = t * K + j;
				}
		rc = expert_ffn(e, &v, e->xg, e->yg, cnt, err);
		ms_xsrc_release(e, layer, x);
		if (rc) {
			first_rc = rc;
			continue;
		}
		for (int64_t c = 0; c < cnt; c++)
			memcpy(e->ylist + slot[c] * E, e->yg + c * E,
			       (size_t)E * sizeof(float));
	}
	if (first_rc)
		return first_rc;
	for (int64_t t = 0; t < T; t++) {
		float *m = e->moe + t * E;
		for (int64_t i = 0; i < E; i++)
			m[i] = 0;
		for (int64_t j = 0; j < K; j++) {
			const float *y = e->ylist + (t * K + j) * E;
			float w = e->rw[t * K + j];
			for (int64_t i = 0; i < E; i++)
				m[i] += w * y[i];
		}
		float *xx = e->x + t * E;
		for (int64_t i = 0; i < E; i++)
			xx[i] += shared ? m[i] + e->sh[t * E + i] : m[i];
	}
	return 0;
}

/* llama.cpp's CPU flash attention takes a ubatch of this many tokens or
 * more through its tiled path (f32 throughout), a smaller one through the
 * path that holds V's accumulator in f16 (ggml-cpu's GGML_FA_TILE_Q); and
 * llama_decode cuts a call's tokens into ubatches of n_ubatch (512 by
 * default). So with llama.cpp's rounding, the tokens done..done+T of a call
 * of n take the f16 path when the ubatch llama.cpp would put token `done`
 * in is short: a decode step, a prompt under 64 tokens, the tail of a long
 * one. (Measured with tests/t_forward_ref.c, 96 tokens in one call: taking
 * our second batch of 32 through the f16 path, where llama.cpp had all 96
 * in one ubatch, doubled the median cosine distance on the GLM preset,
 * 5.5e-7 against 2.7e-7.) */
#define LLAMA_FA_TILE 64
#define LLAMA_UBATCH 512

static bool fa16_for(const struct ms_engine *e, size_t n, size_t done)
{
	size_t start = done / LLAMA_UBATCH * LLAMA_UBATCH;
	size_t ub = n - start < LLAMA_UBATCH ? n - start : LLAMA_UBATCH;
	return e->q8 && !e->cfg.kv_f32 && ub < LLAMA_FA_TILE;
}

/* The batch's embeddings into e->x. */
int ms_eng_embed(struct ms_engine *e, const int32_t *ids, int64_t T,
		 struct ms_err *err)
{
	int64_t E = e->n_embd;
	uint64_t row;
	int rc = ms_type_row_size(e->tok_embd.type, E, &row, err);
	if (rc)
		return rc;
	for (int64_t t = 0; t < T; t++) {
		if (ids[t] < 0 || ids[t] >= e->n_vocab)
			return ms_err_set(err, -EINVAL, "token id %d is outside the "
					  "vocabulary of %lld", ids[t],
					  (long long)e->n_vocab);
		if ((rc = ms_dequant_row(e->tok_embd.type,
					 (const uint8_t *)e->tok_embd.data +
						 (uint64_t)ids[t] * row,
					 e->x + t * E, E)))
			return ms_err_set(err, rc, "token_embd: dequantising row %d "
					  "failed", ids[t]);
	}
	return 0;
}

/* The hint for the first MoE layer, from the last token's history. */
void ms_eng_hint_first(struct ms_engine *e)
{
	int32_t fm = e->first_moe;
	if (!e->cfg.no_speculate && e->n_first_used && fm >= 0) {
		ms_xsrc_prefetch(e, (uint32_t)e->blk[fm].layer, e->first_used,
				 e->n_first_used);
		ms_eng_hint_mark(e, (uint32_t)e->blk[fm].layer, e->first_used,
				 e->n_first_used);
	}
}

/* ---- one batch --------------------------------------------------------------------- */

/* One pass over tokens ids[0..T) whose sequences and positions are in
 * e->tseq / e->tpos; logits for the tokens listed in out_rows[0..n_out). */
static int eval_batch(struct ms_engine *e, const int32_t *ids, int64_t T,
		      float *logits, const int64_t *out_rows, int64_t n_out,
		      struct ms_err *err)
{
	if (e->gpu)
		return ms_gpu_eval_batch(e, ids, T, logits, out_rows, n_out, err);
	int64_t E = e->n_embd;
	int rc = ms_eng_embed(e, ids, T, err);
	if (rc)
		return rc;
	ms_eng_hint_first(e);
	for (uint32_t b = 0; b < e->n_run; b++) {
		if (e->stop && *e->stop)
			return ms_err_set(err, -EINTR, "stopped");
		const struct ms_block *k = &e->blk[b];
		int32_t nb = k->next_moe;
		if (!e->cfg.no_speculate && nb >= 0 && T <= MS_ENG_SPEC_MAX_T)
			speculate(e, (uint32_t)nb, T);
		for (int64_t t = 0; t < T; t++)
			rms_norm(e->x + t * E, k->attn_norm.data, e->h + t * E, E,
				 e->eps);
		if ((rc = attention(e, b, T, err)))
			return rc;
		for (int64_t t = 0; t < T; t++)
			rms_norm(e->x + t * E, k->ffn_norm.data, e->h + t * E, E,
				 e->eps);
		rc = k->moe ? moe_ffn(e, b, T, err) : dense_ffn(e, k, T, err);
		if (rc)
			return rc;
	}
	e->st.tokens += (uint64_t)T;
	if (!logits || !n_out)
		return 0;
	for (int64_t r = 0; r < n_out; r++)
		rms_norm(e->x + out_rows[r] * E, e->out_norm.data, e->h + r * E, E,
			 e->eps);
	return matmul(e, &e->output, e->h, logits, n_out, err);
}

int ms_engine_eval(struct ms_engine *e, const int32_t *ids, size_t n,
		   float *logits, bool all_logits, struct ms_err *err)
{
	if (!n)
		return 0;
	if (n > e->cfg.n_ctx - e->seq_pos[0])
		return ms_err_set(err, -ENOSPC, "%zu tokens at position %u would "
				  "pass the context of %u tokens (--ctx)", n,
				  e->seq_pos[0], e->cfg.n_ctx);
	int64_t *rows = e->out_rows;
	size_t done = 0;
	int rc = 0;
	while (done < n) {
		size_t T = n - done < e->cfg.n_batch ? n - done : e->cfg.n_batch;
		bool last = done + T == n;
		float *out = NULL;
		int64_t n_out = 0;
		if (logits && all_logits) {
			out = logits + done * (size_t)e->n_vocab;
			for (size_t t = 0; t < T; t++)
				rows[n_out++] = (int64_t)t;
		} else if (logits && last) {
			out = logits;
			rows[n_out++] = (int64_t)T - 1;
		}
		e->fa16 = fa16_for(e, n, done);
		for (size_t t = 0; t < T; t++) {
			e->tseq[t] = 0;
			e->tpos[t] = e->seq_pos[0] + (uint32_t)t;
		}
		rc = eval_batch(e, ids + done, (int64_t)T, out, rows, n_out, err);
		if (rc)
			break;
		e->seq_pos[0] += (uint32_t)T;
		done += T;
	}
	return rc;
}

int ms_engine_eval_seqs(struct ms_engine *e, const int32_t *ids,
			const uint32_t *seq, size_t n, const bool *want,
			float *logits, struct ms_err *err)
{
	if (!n)
		return 0;
	uint32_t S = e->cfg.n_seq;
	uint32_t *room = e->seq_room;
	int64_t *rows = e->out_rows;
	memset(room, 0, S * sizeof(*room));
	for (size_t i = 0; i < n; i++) {
		if (seq[i] >= S)
			return ms_err_set(err, -EINVAL, "token %zu: sequence %u, "
					  "but the engine has %u", i, seq[i], S);
		if (++room[seq[i]] > e->cfg.n_ctx - e->seq_pos[seq[i]])
			return ms_err_set(err, -ENOSPC, "sequence %u at position "
					  "%u: its tokens would pass the context "
					  "of %u tokens (--ctx)", seq[i],
					  e->seq_pos[seq[i]], e->cfg.n_ctx);
	}
	size_t done = 0, out_at = 0;
	while (done < n) {
		size_t T = n - done < e->cfg.n_batch ? n - done : e->cfg.n_batch;
		int64_t n_out = 0;
		e->fa16 = fa16_for(e, n, done);
		for (size_t t = 0; t < T; t++) {
			uint32_t s = seq[done + t];
			e->tseq[t] = s;
			e->tpos[t] = e->seq_pos[s]++;
			if (!want || want[done + t])
				rows[n_out++] = (int64_t)t;
		}
		int rc = eval_batch(e, ids + done, (int64_t)T,
				    logits ? logits + out_at * (size_t)e->n_vocab
					   : NULL,
				    rows, n_out, err);
		if (rc)
			return rc;
		out_at += (size_t)n_out;
		done += T;
	}
	return 0;
}
