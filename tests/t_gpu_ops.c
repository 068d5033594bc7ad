/*
 * t_gpu_ops - the forward-pass kernels of kernels/gpu_ops.cu against plain C
 * references written here (the arithmetic of engine/forward.c):
 *
 *  - RMS norm (also in place), add, add_bias, the MoE combine (with and
 *    without a shared expert): relative L2 <= 1e-6 (they are bit-identical
 *    by design, the norm up to the order of a double sum);
 *  - per-head RMS norm + NEOX RoPE: head_dim 64, 96 and 128, n_rot equal
 *    to and below head_dim (and 0: the norm alone), with and without the
 *    norm, positions up to 131071: <= 1e-6;
 *  - the KV store, f32 and f16 (specials included: infinities, NaN,
 *    overflow, subnormals, ties): exactly the bits ms_f32_f16 gives, and
 *    nothing else in the cache touched;
 *  - attention, f32 and f16 caches, grouped heads (8 over 2), head sizes
 *    64, 80, 96, 128 and 256, n_pos from 1 to 700 (several tiles), a
 *    stride wider than the row: <= 1e-5;
 *  - row gather and scatter: exact, untouched rows kept;
 *  - routing top-k against ms_router_select: every gating (sigmoid with
 *    and without a bias), norm on and off, scale 0, 1 and 2.5, n_expert 8
 *    to 1024, n_used 1 to 64, 1, 3 and 17 tokens; a row of exact ties, a
 *    row with a NaN and an inf (ids 0..n_used-1, weight 0, *bad set, the
 *    other rows unaffected), a NaN bias (every row so), *bad left alone
 *    when no row is bad, nothing written past T rows: ids exact, weights
 *    exact or (rarely) 1 ulp, see check_route_topk;
 *  - the router's product and top-k in one launch (route_gemv_topk): the
 *    logits within 1 ulp of the double sums, the choice route_topk's bits
 *    on them, after a kernel that writes its input (PDL), launched twice,
 *    a NaN input; its logits alone (router_logits) the same bits
 *    (check_route_gemv);
 *  - the launches that do two or three of these at once (an attention's
 *    biases, RoPE of q and k, the K and V stores): the bits of the single
 *    calls;
 *  - the argument checks (sizes below 1, NULL pointers, bad parameters).
 *
 * Where there is no GPU it exits 77 with the reason; in a build without
 * CUDA it first checks that every entry point here answers -ENOTSUP "built
 * without CUDA", then exits 77. Fresh seed every run (MS_SEED=... replays
 * one).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

#define TOL_EXACTISH 1e-6 /* norm, rope, add, bias, combine */
#define TOL_ATT 1e-5

static uint64_t rng;
static struct ms_gpu_ctx *ctx;

/* Uniform in [-1, 1). */
static float uni(void)
{
	return (float)((double)(t_rand(&rng) >> 11) / 4503599627370496.0 - 1.0);
}

static float *rand_floats(int64_t n, float amp)
{
	float *p = t_xmalloc((size_t)n * sizeof(float));
	for (int64_t i = 0; i < n; i++)
		p[i] = uni() * amp;
	return p;
}

/* Relative L2 distance of got from ref (absolute when ref is all zeros);
 * NaN anywhere in got makes it NaN. */
static double rel_l2(const float *got, const float *ref, int64_t n)
{
	double d = 0, r = 0;
	for (int64_t i = 0; i < n; i++) {
		const double e = (double)got[i] - (double)ref[i];
		d += e * e;
		r += (double)ref[i] * (double)ref[i];
	}
	return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* Calls `call` (an ms_gpu_* call) and fails the test with its message when
 * it does not return 0. */
#define GPU_OK(call)                                                           \
	do {                                                                   \
		struct ms_err e_ = { 0 };                                      \
		struct ms_err *err = &e_;                                      \
		int rc_ = (call);                                              \
		T_CHECK(rc_ == 0, "%s = %d: %s", #call, rc_, e_.msg);          \
	} while (0)

static bool prepared_same(const float *dy, const void *yq, int64_t n,
			  int64_t T);

/* Downloads n floats of a device buffer into a new host one. */
static float *dev_copy(const float *d, int64_t n)
{
	float *h = t_xmalloc((size_t)n * sizeof(float));
	t_dev_to(ctx, h, d, (size_t)n * sizeof(float));
	return h;
}

/* attention_q cases whose prepared output was checked */
static int att_prep;

/* ---- C references (engine/forward.c's arithmetic) ------------------------- */

static void ref_rms_norm(const float *x, const float *w, float *out,
			 int64_t n, float eps)
{
	double s = 0;
	for (int64_t i = 0; i < n; i++)
		s += (double)x[i] * (double)x[i];
	float scale = 1.0f / sqrtf((float)(s / (double)n) + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = (x[i] * scale) * w[i];
}

static void ref_rope(float *v, int64_t n_rot, int64_t pos, float base,
		     float freq_scale)
{
	int64_t half = n_rot / 2;
	for (int64_t i = 0; i < half; i++) {
		double theta = (double)pos * (double)freq_scale *
			       pow((double)base, -2.0 * (double)i / (double)n_rot);
		double c = cos(theta), s = sin(theta);
		double a = v[i], b = v[i + half];
		v[i] = (float)(a * c - b * s);
		v[i + half] = (float)(a * s + b * c);
	}
}

/* ---- RMS norm, add, bias ----------------------------------------------------- */

static void check_rms_norm(void)
{
	static const int64_t shapes[][2] = { { 96, 3 }, { 1, 1 }, { 4096, 2 },
					     { 1000, 5 }, { 64, 7 } };
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		const int64_t n = shapes[s][0], T = shapes[s][1];
		const float eps = s % 2 ? 1e-5f : 1e-6f;
		float *x = rand_floats(n * T, 3.0f), *w = rand_floats(n, 1.5f);
		float *ref = t_xmalloc((size_t)(n * T) * sizeof(float));
		float *got = t_xmalloc((size_t)(n * T) * sizeof(float));
		for (int64_t t = 0; t < T; t++)
			ref_rms_norm(x + t * n, w, ref + t * n, n, eps);
		const size_t bytes = (size_t)(n * T) * sizeof(float);
		float *dx = t_dev_from(x, bytes), *dw = t_dev_from(w, n * sizeof(float));
		float *dy = t_dev_alloc(bytes);
		GPU_OK(ms_gpu_rms_norm(ctx, dx, dw, dy, n, T, eps, err));
		t_dev_to(ctx, got, dy, bytes);
		const double e1 = rel_l2(got, ref, n * T);
		T_CHECK(e1 <= TOL_EXACTISH, "rms_norm n=%lld T=%lld: %.3e",
			(long long)n, (long long)T, e1);
		GPU_OK(ms_gpu_rms_norm(ctx, dx, dw, dx, n, T, eps, err));
		t_dev_to(ctx, got, dx, bytes);
		const double e2 = rel_l2(got, ref, n * T);
		T_CHECK(e2 <= TOL_EXACTISH, "rms_norm in place n=%lld T=%lld: "
			"%.3e", (long long)n, (long long)T, e2);
		printf("rms_norm n=%-5lld T=%lld: %.2e, in place %.2e\n",
		       (long long)n, (long long)T, e1, e2);
		ms_gpu_free(dx);
		ms_gpu_free(dw);
		ms_gpu_free(dy);
		free(x);
		free(w);
		free(ref);
		free(got);
	}
}

/* ms_gpu_add_bias_n on three sets of different widths: the bits of three
 * ms_gpu_add_bias calls. */
static void check_add_bias_n(void)
{
	const int64_t ns[MS_GPU_BIAS_MAX] = { 384, 96, 100 }, T = 3;
	float *dx[2][MS_GPU_BIAS_MAX], *db[MS_GPU_BIAS_MAX];
	struct ms_gpu_bias set[MS_GPU_BIAS_MAX];
	int same = 0;
	for (int k = 0; k < MS_GPU_BIAS_MAX; k++) {
		float *x = rand_floats(ns[k] * T, 4.0f), *b = rand_floats(ns[k], 4.0f);
		for (int m = 0; m < 2; m++)
			dx[m][k] = t_dev_from(x, (size_t)(ns[k] * T) * sizeof(float));
		db[k] = t_dev_from(b, (size_t)ns[k] * sizeof(float));
		set[k] = (struct ms_gpu_bias){ dx[1][k], db[k], ns[k] };
		GPU_OK(ms_gpu_add_bias(ctx, dx[0][k], db[k], ns[k], T, err));
		free(x);
		free(b);
	}
	GPU_OK(ms_gpu_add_bias_n(ctx, set, MS_GPU_BIAS_MAX, T, err));
	for (int k = 0; k < MS_GPU_BIAS_MAX; k++) {
		const size_t bytes = (size_t)(ns[k] * T) * sizeof(float);
		float *a = t_xmalloc(bytes), *b = t_xmalloc(bytes);
		t_dev_to(ctx, a, dx[0][k], bytes);
		t_dev_to(ctx, b, dx[1][k], bytes);
		same += !memcmp(a, b, bytes);
		free(a);
		free(b);
		ms_gpu_free(dx[0][k]);
		ms_gpu_free(dx[1][k]);
		ms_gpu_free(db[k]);
	}
	T_CHECK(same == MS_GPU_BIAS_MAX, "add_bias_n: %d of %d sets the bits of "
		"add_bias", same, MS_GPU_BIAS_MAX);
	printf("add_bias_n 3 sets (384, 96, 100) x T=3: %d of 3 the bits of "
	       "add_bias\n", same);
}

static void check_add(void)
{
	static const int64_t ns[] = { 1, 96, 100003 };
	for (size_t s = 0; s < sizeof(ns) / sizeof(ns[0]); s++) {
		const int64_t n = ns[s];
		const size_t bytes = (size_t)n * sizeof(float);
		float *x = rand_floats(n, 4.0f), *a = rand_floats(n, 4.0f);
		float *ref = t_xmalloc(bytes), *got = t_xmalloc(bytes);
		for (int64_t i = 0; i < n; i++)
			ref[i] = x[i] + a[i];
		float *dx = t_dev_from(x, bytes), *da = t_dev_from(a, bytes);
		GPU_OK(ms_gpu_add(ctx, dx, da, n, err));
		t_dev_to(ctx, got, dx, bytes);
		const double e = rel_l2(got, ref, n);
		T_CHECK(e <= TOL_EXACTISH, "add n=%lld: %.3e", (long long)n, e);
		printf("add n=%lld: %.2e\n", (long long)n, e);
		ms_gpu_free(dx);
		ms_gpu_free(da);
		free(x);
		free(a);
		free(ref);
		free(got);
	}
	static const int64_t shapes[][2] = { { 96, 3 }, { 4096, 5 }, { 1, 4 } };
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		const int64_t n = shapes[s][0], T = shapes[s][1];
		const size_t bytes = (size_t)(n * T) * sizeof(float);
		float *x = rand_floats(n * T, 4.0f), *b = rand_floats(n, 4.0f);
		float *ref = t_xmalloc(bytes), *got = t_xmalloc(bytes);
		for (int64_t t = 0; t < T; t++)
			for (int64_t i = 0; i < n; i++)
				ref[t * n + i] = x[t * n + i] + b[i];
		float *dx = t_dev_from(x, bytes),
		      *db = t_dev_from(b, (size_t)n * sizeof(float));
		GPU_OK(ms_gpu_add_bias(ctx, dx, db, n, T, err));
		t_dev_to(ctx, got, dx, bytes);
		const double e = rel_l2(got, ref, n * T);
		T_CHECK(e <= TOL_EXACTISH, "add_bias n=%lld T=%lld: %.3e",
			(long long)n, (long long)T, e);
		printf("add_bias n=%lld T=%lld: %.2e\n", (long long)n,
		       (long long)T, e);
		ms_gpu_free(dx);
		ms_gpu_free(db);
		free(x);
		free(b);
		free(ref);
		free(got);
	}
	check_add_bias_n();
}

/* ---- norm + RoPE ------------------------------------------------------------ */

/* ms_gpu_rope_neox_qk: q and k (other head counts, other norms, one of
 * them none) in one launch, the bits of two ms_gpu_rope_neox calls. */
static void check_rope_qk(void)
{
	const int64_t H = 6, HK = 2, D = 128, R = 64, T = 3;
	const float eps = 1e-6f;
	int same = 0;
	for (int knorm = 0; knorm <= 1; knorm++) {
		float *q = rand_floats(H * D * T, 2.0f), *k = rand_floats(HK * D * T, 2.0f);
		float *wq = rand_floats(D, 1.5f), *wk = rand_floats(D, 1.5f);
		int32_t pos[3] = { 0, 7, 40000 };
		float *dq[2], *dk[2];
		for (int m = 0; m < 2; m++) {
			dq[m] = t_dev_from(q, (size_t)(H * D * T) * sizeof(float));
			dk[m] = t_dev_from(k, (size_t)(HK * D * T) * sizeof(float));
		}
		float *dwq = t_dev_from(wq, (size_t)D * sizeof(float));
		float *dwk = t_dev_from(wk, (size_t)D * sizeof(float));
		int32_t *dp = t_dev_from(pos, sizeof(pos));
		GPU_OK(ms_gpu_rope_neox(ctx, dq[0], dp, dwq, eps, H, D, R, T, 1e6f,
					1.0f, err));
		GPU_OK(ms_gpu_rope_neox(ctx, dk[0], dp, knorm ? dwk : NULL, eps, HK,
					D, R, T, 1e6f, 1.0f, err));
		GPU_OK(ms_gpu_rope_neox_qk(ctx, dq[1], dwq, H, dk[1],
					   knorm ? dwk : NULL, HK, dp, eps, D, R,
					   T, 1e6f, 1.0f, err));
		const size_t qb = (size_t)(H * D * T) * sizeof(float),
			     kb = (size_t)(HK * D * T) * sizeof(float);
		float *a = t_xmalloc(qb), *b = t_xmalloc(qb);
		t_dev_to(ctx, a, dq[0], qb);
		t_dev_to(ctx, b, dq[1], qb);
		same += !memcmp(a, b, qb);
		t_dev_to(ctx, a, dk[0], kb);
		t_dev_to(ctx, b, dk[1], kb);
		same += !memcmp(a, b, kb);
		free(a);
		free(b);
		for (int m = 0; m < 2; m++) {
			ms_gpu_free(dq[m]);
			ms_gpu_free(dk[m]);
		}
		ms_gpu_free(dwq);
		ms_gpu_free(dwk);
		ms_gpu_free(dp);
		free(q);
		free(k);
		free(wq);
		free(wk);
	}
	T_CHECK(same == 4, "rope_neox_qk: %d of 4 tensors the bits of "
		"rope_neox", same);
	printf("rope_neox_qk 6 + 2 heads x 128, k with and without a norm: %d "
	       "of 4 tensors the bits of rope_neox\n", same);
}

/* Compares n bytes of two device buffers. */
static bool dev_same(const void *a, const void *b, size_t n)
{
	uint8_t *x = t_xmalloc(n), *y = t_xmalloc(n);
	t_dev_to(ctx, x, a, n);
	t_dev_to(ctx, y, b, n);
	bool same = !memcmp(x, y, n);
	free(x);
	free(y);
	return same;
}

/* ms_gpu_qkv_post against the three calls it replaces (ms_gpu_add_bias_n,
 * ms_gpu_rope_neox_qk, ms_gpu_kv_store_kv): q, k, v and both caches bit
 * for bit, with biases and norms each there or not, RoPE of the whole head
 * and of half, f16 and f32 caches, one token and three. */
static void check_qkv_post(void)
{
	const int64_t H = 6, HK = 2, D = 128, slots = 9;
	int same = 0, cases = 0;
	for (int v8 = 0; v8 < 16; v8++) {
		const bool bias = v8 & 1, norm = v8 & 2, f16 = v8 & 4,
			   half = v8 & 8;
		const int64_t T = v8 % 3 == 1 ? 1 : 3, R = half ? D / 2 : D;
		const size_t qb = (size_t)(H * D * T) * sizeof(float),
			     kb = (size_t)(HK * D * T) * sizeof(float),
			     cb = (size_t)(slots * HK * D) * (f16 ? 2 : 4);
		float *q = rand_floats(H * D * T, 2.0f), *k = rand_floats(HK * D * T, 2.0f);
		float *v = rand_floats(HK * D * T, 2.0f);
		float *bq = rand_floats(H * D, 1.0f), *bk = rand_floats(HK * D, 1.0f);
		float *bv = rand_floats(HK * D, 1.0f);
		float *wq = rand_floats(D, 1.5f), *wk = rand_floats(D, 1.5f);
		int32_t pos[3] = { 5, 0, 40000 };
		int64_t at[3] = { 3 * HK * D, 0, 8 * HK * D };
		float *dq[2], *dk[2], *dv[2];
		void *kc[2], *vc[2];
		for (int m = 0; m < 2; m++) {
			dq[m] = t_dev_from(q, qb);
			dk[m] = t_dev_from(k, kb);
			dv[m] = t_dev_from(v, kb);
			kc[m] = t_dev_alloc(cb);
			vc[m] = t_dev_alloc(cb);
			ms_gpu_memset(kc[m], 0, cb, NULL);
			ms_gpu_memset(vc[m], 0, cb, NULL);
		}
		float *dbq = t_dev_from(bq, (size_t)(H * D) * sizeof(float));
		float *dbk = t_dev_from(bk, (size_t)(HK * D) * sizeof(float));
		float *dbv = t_dev_from(bv, (size_t)(HK * D) * sizeof(float));
		float *dwq = t_dev_from(wq, (size_t)D * sizeof(float));
		float *dwk = t_dev_from(wk, (size_t)D * sizeof(float));
		int32_t *dp = t_dev_from(pos, sizeof(pos));
		int64_t *da = t_dev_from(at, sizeof(at));
		/* [0]: the three calls */
		const struct ms_gpu_bias sets[3] = { { dq[0], dbq, H * D },
						     { dk[0], dbk, HK * D },
						     { dv[0], dbv, HK * D } };
		if (bias)
			GPU_OK(ms_gpu_add_bias_n(ctx, sets, 3, T, err));
		GPU_OK(ms_gpu_rope_neox_qk(ctx, dq[0], norm ? dwq : NULL, H, dk[0],
					   norm ? dwk : NULL, HK, dp, 1e-6f, D, R,
					   T, 1e6f, 1.0f, err));
		GPU_OK(ms_gpu_kv_store_kv(ctx, dk[0], kc[0], dv[0], vc[0], da,
					  HK * D, T, f16, err));
		/* [1]: the one */
		const struct ms_gpu_qkv a = {
			.q = dq[1], .k = dk[1], .v = dv[1],
			.bq = bias ? dbq : NULL, .bk = bias ? dbk : NULL,
			.bv = bias ? dbv : NULL,
			.q_norm = norm ? dwq : NULL, .k_norm = norm ? dwk : NULL,
			.n_head = H, .n_head_kv = HK, .head_dim = D, .n_rot = R,
			.pos = dp, .eps = 1e-6f, .base = 1e6f, .freq_scale = 1.0f,
			.k_cache = kc[1], .v_cache = vc[1], .at = da, .f16 = f16,
		};
		GPU_OK(ms_gpu_qkv_post(ctx, &a, T, err));
		const bool ok = dev_same(dq[0], dq[1], qb) &&
				dev_same(dk[0], dk[1], kb) &&
				dev_same(dv[0], dv[1], kb) &&
				dev_same(kc[0], kc[1], cb) && dev_same(vc[0], vc[1], cb);
		T_CHECK(ok, "qkv_post T=%lld bias %d norm %d f16 %d rope of %lld: "
			"not the bits of bias_n + rope_neox_qk + kv_store_kv",
			(long long)T, bias, norm, f16, (long long)R);
		same += ok;
		cases++;
		for (int m = 0; m < 2; m++) {
			ms_gpu_free(dq[m]);
			ms_gpu_free(dk[m]);
			ms_gpu_free(dv[m]);
			ms_gpu_free(kc[m]);
			ms_gpu_free(vc[m]);
		}
		void *dd[] = { dbq, dbk, dbv, dwq, dwk, dp, da };
		for (size_t i = 0; i < sizeof(dd) / sizeof(dd[0]); i++)
			ms_gpu_free(dd[i]);
		float *hh[] = { q, k, v, bq, bk, bv, wq, wk };
		for (size_t i = 0; i < sizeof(hh) / sizeof(hh[0]); i++)
			free(hh[i]);
	}
	printf("qkv_post (biases, norms, f16 and f32 caches, RoPE of all or "
	       "half of 128, T 1 and 3): %d of %d cases the bits of bias_n + "
	       "rope_neox_qk + kv_store_kv\n", same, cases);
}

static void check_rope(void)
{
	static const struct {
		int64_t n_head, hd, n_rot, T;
		bool norm;
		float base, fs;
	} cases[] = {
		{ 8, 64, 64, 3, false, 10000.0f, 1.0f },
		{ 8, 128, 128, 3, true, 1000000.0f, 1.0f },
		{ 4, 128, 64, 5, true, 10000.0f, 0.25f },
		{ 2, 64, 32, 1, false, 500000.0f, 1.0f },
		{ 3, 96, 96, 2, true, 10000.0f, 1.0f },
		{ 4, 128, 0, 2, true, 10000.0f, 1.0f },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		const int64_t H = cases[k].n_head, D = cases[k].hd,
			      R = cases[k].n_rot, T = cases[k].T;
		const int64_t n = H * D * T;
		const float eps = 1e-6f;
		float *x = rand_floats(n, 2.0f), *w = rand_floats(D, 1.5f);
		float *ref = t_xmalloc((size_t)n * sizeof(float));
		float *got = t_xmalloc((size_t)n * sizeof(float));
		int32_t *pos = t_xmalloc((size_t)T * sizeof(int32_t));
		for (int64_t t = 0; t < T; t++)
			pos[t] = t == 0 ? 0 : (int32_t)(t_rand(&rng) % 131072);
		memcpy(ref, x, (size_t)n * sizeof(float));
		for (int64_t t = 0; t < T; t++)
			for (int64_t h = 0; h < H; h++) {
				float *v = ref + (t * H + h) * D;
				if (cases[k].norm)
					ref_rms_norm(v, w, v, D, eps);
				ref_rope(v, R, pos[t], cases[k].base, cases[k].fs);
			}
		float *dx = t_dev_from(x, (size_t)n * sizeof(float));
		float *dw = t_dev_from(w, (size_t)D * sizeof(float));
		int32_t *dp = t_dev_from(pos, (size_t)T * sizeof(int32_t));
		GPU_OK(ms_gpu_rope_neox(ctx, dx, dp, cases[k].norm ? dw : NULL,
					eps, H, D, R, T, cases[k].base,
					cases[k].fs, err));
		t_dev_to(ctx, got, dx, (size_t)n * sizeof(float));
		const double e = rel_l2(got, ref, n);
		T_CHECK(e <= TOL_EXACTISH,
			"rope heads=%lld hd=%lld n_rot=%lld T=%lld norm=%d: %.3e",
			(long long)H, (long long)D, (long long)R, (long long)T,
			cases[k].norm, e);
		printf("rope %lld heads x %-3lld n_rot=%-3lld T=%lld %-7s base "
		       "%g x %g: %.2e\n",
		       (long long)H, (long long)D, (long long)R, (long long)T,
		       cases[k].norm ? "+norm" : "no norm",
		       (double)cases[k].base, (double)cases[k].fs, e);
		ms_gpu_free(dx);
		ms_gpu_free(dw);
		ms_gpu_free(dp);
		free(x);
		free(w);
		free(ref);
		free(got);
		free(pos);
	}
	check_rope_qk();
}

/* ---- KV store ------------------------------------------------------------- */

static void check_kv_store(void)
{
	static const float specials[] = {
		65504.0f, 65520.0f, 70000.0f, -1e30f, 5.9604645e-8f /* 2^-24 */,
		2.9802322e-8f /* 2^-25: tie to 0 */, 6.1035156e-5f, 1e-7f,
		1.00048828125f /* 1 + 2^-11: tie */, -0.0f, 0.0f,
	};
	for (int f16 = 0; f16 <= 1; f16++) {
		const int64_t n = 96, T = 3, slots = 7;
		const size_t es = f16 ? 2 : 4;
		float *src = t_xmalloc((size_t)(n * T) * sizeof(float));
		for (int64_t i = 0; i < n * T; i++) {
			/* magnitudes 2^-30 .. 2^17 */
			src[i] = ldexpf(uni(), (int)(t_rand(&rng) % 48) - 30);
		}
		for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
			src[n + (int64_t)i] = specials[i];
		src[2 * n] = INFINITY;
		src[2 * n + 1] = -INFINITY;
		src[2 * n + 2] = NAN;
		int64_t at[3];
		/* distinct slots, one at an odd element offset */
		at[0] = 4 * n;
		at[1] = 1 * n + 1;
		at[2] = 6 * n - 5;
		const size_t cbytes = (size_t)(slots * n) * es;
		uint8_t *cache = t_xmalloc(cbytes), *got = t_xmalloc(cbytes);
		for (size_t i = 0; i < cbytes; i++)
			cache[i] = (uint8_t)(t_rand(&rng) >> 56);
		uint8_t *ref = t_xmalloc(cbytes);
		memcpy(ref, cache, cbytes);
		for (int64_t t = 0; t < T; t++)
			for (int64_t i = 0; i < n; i++) {
				const float v = src[t * n + i];
				if (f16) {
					uint16_t h = ms_f32_f16(v);
					memcpy(ref + (size_t)(at[t] + i) * 2, &h, 2);
				} else {
					memcpy(ref + (size_t)(at[t] + i) * 4, &v, 4);
				}
			}
		float *dsrc = t_dev_from(src, (size_t)(n * T) * sizeof(float));
		void *dc = t_dev_from(cache, cbytes);
		int64_t *dat = t_dev_from(at, sizeof(at));
		GPU_OK(ms_gpu_kv_store(ctx, dsrc, dc, dat, n, T, f16, err));
		t_dev_to(ctx, got, dc, cbytes);
		size_t bad = 0, first = 0;
		for (size_t i = 0; i < cbytes; i += es)
			if (memcmp(got + i, ref + i, es) && !bad++)
				first = i / es;
		T_CHECK(bad == 0, "kv_store %s: %zu elements differ, first at "
			"%zu", f16 ? "f16" : "f32", bad, first);
		printf("kv_store %s n=%lld T=%lld (specials, odd offsets): %s\n",
		       f16 ? "f16" : "f32", (long long)n, (long long)T,
		       bad ? "DIFFERENT" : "exact");
		/* K and V in one launch: V is src reversed, into a second
		 * cache; both the bits of kv_store's */
		float *src2 = t_xmalloc((size_t)(n * T) * sizeof(float));
		for (int64_t i = 0; i < n * T; i++)
			src2[i] = src[n * T - 1 - i];
		float *dsrc2 = t_dev_from(src2, (size_t)(n * T) * sizeof(float));
		void *dk = t_dev_from(cache, cbytes), *dv = t_dev_from(cache, cbytes);
		void *dv1 = t_dev_from(cache, cbytes);
		GPU_OK(ms_gpu_kv_store(ctx, dsrc2, dv1, dat, n, T, f16, err));
		GPU_OK(ms_gpu_kv_store_kv(ctx, dsrc, dk, dsrc2, dv, dat, n, T, f16,
					  err));
		uint8_t *g2 = t_xmalloc(cbytes), *g3 = t_xmalloc(cbytes);
		t_dev_to(ctx, g2, dk, cbytes);
		t_dev_to(ctx, g3, dv, cbytes);
		t_dev_to(ctx, cache, dv1, cbytes);
		T_CHECK(!memcmp(g2, got, cbytes) && !memcmp(g3, cache, cbytes),
			"kv_store_kv %s: K %s, V %s kv_store's", f16 ? "f16" : "f32",
			memcmp(g2, got, cbytes) ? "differs from" : "is",
			memcmp(g3, cache, cbytes) ? "differs from" : "is");
		printf("kv_store_kv %s: K and V the bits of two kv_store calls\n",
		       f16 ? "f16" : "f32");
		ms_gpu_free(dsrc2);
		ms_gpu_free(dk);
		ms_gpu_free(dv);
		ms_gpu_free(dv1);
		free(src2);
		free(g2);
		free(g3);
		ms_gpu_free(dsrc);
		ms_gpu_free(dc);
		ms_gpu_free(dat);
		free(src);
		free(cache);
		free(got);
		free(ref);
	}
}

/* ---- attention --------------------------------------------------------------- */

/* The C loop of engine/forward.c's att_task for one (token, head). */
static void ref_attention(const float *q, const void *kc, const void *vc,
			  bool f16, int64_t base, int64_t n_pos, int64_t stride,
			  int64_t kvh, int64_t D, float scale, float *s,
			  float *out)
{
	float kf[256];
	float mx = -INFINITY;
	for (int64_t p = 0; p < n_pos; p++) {
		const int64_t o = base + p * stride + kvh * D;
		if (f16)
			ms_dequant_row(MS_TYPE_F16, (const uint16_t *)kc + o, kf, D);
		else
			memcpy(kf, (const float *)kc + o, (size_t)D * sizeof(float));
		float acc = 0;
		for (int64_t d = 0; d < D; d++)
			acc += q[d] * kf[d];
		s[p] = acc * scale;
		if (s[p] > mx)
			mx = s[p];
	}
	double sum = 0;
	for (int64_t p = 0; p < n_pos; p++) {
		s[p] = expf(s[p] - mx);
		sum += s[p];
	}
	float inv = (float)(1.0 / sum);
	for (int64_t d = 0; d < D; d++)
		out[d] = 0;
	for (int64_t p = 0; p < n_pos; p++) {
		const int64_t o = base + p * stride + kvh * D;
		if (f16)
			ms_dequant_row(MS_TYPE_F16, (const uint16_t *)vc + o, kf, D);
		else
			memcpy(kf, (const float *)vc + o, (size_t)D * sizeof(float));
		float pw = s[p] * inv;
		for (int64_t d = 0; d < D; d++)
			out[d] += pw * kf[d];
	}
}

static double worst_att;

static void check_attention(void)
{
	static const struct {
		int64_t T, H, Hkv, D, pad; /* stride = Hkv * D + pad */
		int32_t n_pos[3];
	} cases[] = {
		{ 3, 8, 2, 64, 0, { 1, 300, 17 } },
		{ 2, 4, 4, 128, 8, { 300, 1 } },
		{ 1, 2, 1, 96, 0, { 700 } },
		{ 2, 6, 3, 80, 3, { 257, 256 } },
		{ 1, 2, 2, 256, 0, { 40 } },
	};
	const int64_t n_seq = 2;
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
		for (int f16 = 0; f16 <= 1; f16++) {
			const int64_t T = cases[k].T, H = cases[k].H,
				      Hkv = cases[k].Hkv, D = cases[k].D;
			const int64_t stride = Hkv * D + cases[k].pad;
			int64_t n_ctx = 0;
			for (int64_t t = 0; t < T; t++)
				if (cases[k].n_pos[t] > n_ctx)
					n_ctx = cases[k].n_pos[t];
			const int64_t cn = n_seq * n_ctx * stride;
			const size_t es = f16 ? 2 : 4;
			/* the cache: random values (rounded to f16 for f16) */
			void *kc = t_xmalloc((size_t)cn * es), *vc = t_xmalloc((size_t)cn * es);
			for (int64_t i = 0; i < cn; i++) {
				const float a = uni(), b = uni();
				if (f16) {
					((uint16_t *)kc)[i] = ms_f32_f16(a);
					((uint16_t *)vc)[i] = ms_f32_f16(b);
				} else {
					((float *)kc)[i] = a;
					((float *)vc)[i] = b;
				}
			}
			const int64_t nq = T * H * D;
			float *q = rand_floats(nq, 3.0f);
			float *ref = t_xmalloc((size_t)nq * sizeof(float));
			float *got = t_xmalloc((size_t)nq * sizeof(float));
			float *s = t_xmalloc((size_t)n_ctx * sizeof(float));
			int64_t base[3];
			int32_t np[3];
			const float scale = 1.0f / sqrtf((float)D);
			for (int64_t t = 0; t < T; t++) {
				base[t] = (t % n_seq) * n_ctx * stride;
				np[t] = cases[k].n_pos[t];
				for (int64_t h = 0; h < H; h++)
					ref_attention(q + (t * H + h) * D, kc, vc,
						      f16, base[t], np[t], stride,
						      h / (H / Hkv), D, scale, s,
						      ref + (t * H + h) * D);
			}
			float *dq = t_dev_from(q, (size_t)nq * sizeof(float));
			float *dout = t_dev_alloc((size_t)nq * sizeof(float));
			void *dk = t_dev_from(kc, (size_t)cn * es);
			void *dv = t_dev_from(vc, (size_t)cn * es);
			int64_t *db = t_dev_from(base, (size_t)T * sizeof(int64_t));
			int32_t *dn = t_dev_from(np, (size_t)T * sizeof(int32_t));
			GPU_OK(ms_gpu_attention(ctx, dq, dk, dv, f16, db, dn,
						stride, H, Hkv, D, scale, T, dout,
						err));
			t_dev_to(ctx, got, dout, (size_t)nq * sizeof(float));
			/* its output prepared for wo, exact and 8-bit: the same
			 * output, and a product of the prepared form the bits
			 * of one preparing it itself */
			for (int q8 = 0; D % 32 == 0 && q8 <= 1; q8++) {
				void *doq = t_dev_alloc(ms_gpu_xq_bytes(H * D, T));
				float *d2 = t_dev_alloc((size_t)nq * sizeof(float));
				GPU_OK(ms_gpu_ctx_set_q8(ctx, q8, err));
				GPU_OK(ms_gpu_attention_q(ctx, dq, dk, dv, f16, db, dn,
							  stride, H, Hkv, D, scale,
							  T, d2, doq, err));
				float *g2 = dev_copy(d2, nq);
				T_CHECK(!memcmp(g2, got, (size_t)nq * sizeof(float)) &&
						prepared_same(d2, doq, H * D, T),
					"attention_q %s T=%lld D=%lld %s: the output "
					"%s, its prepared form's product %s",
					f16 ? "f16" : "f32", (long long)T,
					(long long)D, q8 ? "8-bit" : "exact",
					memcmp(g2, got, (size_t)nq * sizeof(float))
						? "differs"
						: "the same",
					prepared_same(d2, doq, H * D, T) ? "the same"
									  : "differs");
				att_prep++;
				free(g2);
				ms_gpu_free(doq);
				ms_gpu_free(d2);
			}
			GPU_OK(ms_gpu_ctx_set_q8(ctx, false, err));
			const double e = rel_l2(got, ref, nq);
			T_CHECK(e <= TOL_ATT,
				"attention %s T=%lld H=%lld/%lld D=%lld: %.3e",
				f16 ? "f16" : "f32", (long long)T, (long long)H,
				(long long)Hkv, (long long)D, e);
			if (!(e <= worst_att))
				worst_att = e;
			char npos[64];
			int at = 0;
			for (int64_t t = 0; t < T; t++)
				at += snprintf(npos + at, sizeof(npos) - (size_t)at,
					       "%s%d", t ? "," : "", np[t]);
			printf("attention %s T=%lld heads %lld/%lld D=%-3lld "
			       "stride %-4lld n_pos %s: %.2e\n",
			       f16 ? "f16" : "f32", (long long)T, (long long)H,
			       (long long)Hkv, (long long)D, (long long)stride,
			       npos, e);
			ms_gpu_free(dq);
			ms_gpu_free(dout);
			ms_gpu_free(dk);
			ms_gpu_free(dv);
			ms_gpu_free(db);
			ms_gpu_free(dn);
			free(kc);
			free(vc);
			free(q);
			free(ref);
			free(got);
			free(s);
		}
}

/* ---- MoE combine ---------------------------------------------------------------- */

static void check_moe_combine(void)
{
	static const int64_t shapes[][3] = { { 96, 3, 4 }, { 2048, 2, 8 },
					     { 5, 1, 1 } };
	for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++)
		for (int with_sh = 0; with_sh <= 1; with_sh++) {
			const int64_t E = shapes[k][0], T = shapes[k][1],
				      K = shapes[k][2];
			const size_t xb = (size_t)(E * T) * sizeof(float);
			float *x = rand_floats(E * T, 2.0f);
			float *y = rand_floats(E * T * K, 2.0f);
			float *w = rand_floats(T * K, 1.0f);
			float *sh = rand_floats(E * T, 2.0f);
			float *ref = t_xmalloc(xb), *got = t_xmalloc(xb);
			for (int64_t t = 0; t < T; t++)
				for (int64_t i = 0; i < E; i++) {
					float m = 0;
					for (int64_t j = 0; j < K; j++)
						m += w[t * K + j] *
						     y[(t * K + j) * E + i];
					ref[t * E + i] = x[t * E + i] +
							 (with_sh ? m + sh[t * E + i] : m);
				}
			float *dx = t_dev_from(x, xb);
			float *dy = t_dev_from(y, xb * (size_t)K);
			float *dw = t_dev_from(w, (size_t)(T * K) * sizeof(float));
			float *dsh = t_dev_from(sh, xb);
			GPU_OK(ms_gpu_moe_combine(ctx, dx, dy, dw,
						  with_sh ? dsh : NULL, E, T, K,
						  err));
			t_dev_to(ctx, got, dx, xb);
			const double e = rel_l2(got, ref, E * T);
			T_CHECK(e <= TOL_EXACTISH,
				"moe_combine E=%lld T=%lld K=%lld sh=%d: %.3e",
				(long long)E, (long long)T, (long long)K, with_sh,
				e);
			printf("moe_combine E=%-4lld T=%lld K=%lld %s: %.2e\n",
			       (long long)E, (long long)T, (long long)K,
			       with_sh ? "+shared" : "no shared", e);
			ms_gpu_free(dx);
			ms_gpu_free(dy);
			ms_gpu_free(dw);
			ms_gpu_free(dsh);
			free(x);
			free(y);
			free(w);
			free(sh);
			free(ref);
			free(got);
		}
}

/* ---- a residual update with the norm after it ------------------------------------- */


/* Q8_0 weights of `rows` rows of n: scale 1/64 (f16 0x2400), random
 * quants (device memory). */
static void *q8_0_weights(int64_t rows, int64_t n)
{
	const size_t nb = (size_t)(rows * (n / 32)), bytes = nb * 34;
	uint8_t *w = t_xmalloc(bytes);
	for (size_t b = 0; b < nb; b++) {
		w[b * 34] = 0x00;
		w[b * 34 + 1] = 0x24;
		for (int i = 0; i < 32; i++)
			w[b * 34 + 2 + i] = (uint8_t)(t_rand(&rng) % 255);
	}
	void *d = t_dev_from(w, bytes);
	free(w);
	return d;
}

/* The prepared output a fused norm wrote at yq (both forms: the context's
 * 8-bit setting off and on), checked where it is used: a product given
 * yq has the bits of the same product preparing y itself. */
static bool prepared_same(const float *dy, const void *yq, int64_t n,
			  int64_t T)
{
	const int64_t R = 48;
	void *dw = q8_0_weights(R, n);
	float *out = t_dev_alloc((size_t)(2 * R * T) * sizeof(float));
	/* resident: with PDL the weights are read before the wait, yq
	 * (the norm's, just before) after it */
	struct ms_gpu_mm mm[2] = { { MS_TYPE_Q8_0, dw, R, out, true },
				   { MS_TYPE_Q8_0, dw, R, out + R * T, true } };
	GPU_OK(ms_gpu_matmul_n(ctx, &mm[0], 1, n, dy, yq, T, err));
	GPU_OK(ms_gpu_matmul_n(ctx, &mm[1], 1, n, dy, NULL, T, err));
	float *h = dev_copy(out, 2 * R * T);
	bool same = !memcmp(h, h + R * T, (size_t)(R * T) * sizeof(float));
	free(h);
	ms_gpu_free(dw);
	ms_gpu_free(out);
	return same;
}

/* ms_gpu_add_rms_norm and ms_gpu_moe_combine_norm: the bits of the two
 * calls each replaces, both the residual x and the normed y (rows above
 * and below the block size, one row and several; with and without the
 * shared expert); with rows of a multiple of 32 also y prepared for the
 * fused matvec, exact and 8-bit (prepared_same). */
static void check_update_norm(void)
{
	static const int64_t shapes[][3] = { { 5120, 1, 8 }, { 96, 3, 4 },
					     { 1000, 5, 2 }, { 7, 2, 1 } };
	int same = 0, cases = 0, prep_same = 0, prep_cases = 0;
	for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++)
		for (int op = 0; op < 6; op++) {
			const int64_t E = shapes[k][0], T = shapes[k][1],
				      K = shapes[k][2];
			/* ops 3..5: 0..2 again, 8-bit */
			const bool q8 = op >= 3;
			const bool prep = E % 32 == 0;
			void *dq = prep ? t_dev_alloc(ms_gpu_xq_bytes(E, T)) : NULL;
			GPU_OK(ms_gpu_ctx_set_q8(ctx, q8, err));
			const float eps = k % 2 ? 1e-5f : 1e-6f;
			const size_t xb = (size_t)(E * T) * sizeof(float);
			float *x = rand_floats(E * T, 3.0f);
			float *a = rand_floats(E * T * K, 2.0f);
			float *w = rand_floats(E, 1.5f);
			float *r = rand_floats(T * K, 1.0f);
			float *sh = rand_floats(E * T, 2.0f);
			float *dx[2], *dh[2];
			float *da = t_dev_from(a, xb * (size_t)K);
			float *dw = t_dev_from(w, (size_t)E * sizeof(float));
			float *dr = t_dev_from(r, (size_t)(T * K) * sizeof(float));
			float *dsh = op % 3 == 2 ? t_dev_from(sh, xb) : NULL;
			for (int m = 0; m < 2; m++) {
				dx[m] = t_dev_from(x, xb);
				dh[m] = t_dev_alloc(xb);
				ms_gpu_memset(dh[m], 0xff, xb, NULL);
			}
			/* [0]: the two calls; [1]: the one */
			if (op % 3 == 0) {
				GPU_OK(ms_gpu_add(ctx, dx[0], da, E * T, err));
				GPU_OK(ms_gpu_add_rms_norm(ctx, dx[1], da, dw, dh[1],
							   dq, E, T, eps, err));
			} else {
				GPU_OK(ms_gpu_moe_combine(ctx, dx[0], da, dr, dsh,
							  E, T, K, err));
				GPU_OK(ms_gpu_moe_combine_norm(ctx, dx[1], da, dr,
							       dsh, E, T, K, dw,
							       eps, dh[1], dq,
							       err));
			}
			GPU_OK(ms_gpu_rms_norm(ctx, dx[0], dw, dh[0], E, T, eps,
					       err));
			float *x0 = dev_copy(dx[0], E * T), *x1 = dev_copy(dx[1], E * T);
			float *h0 = dev_copy(dh[0], E * T), *h1 = dev_copy(dh[1], E * T);
			const bool ok = !memcmp(x0, x1, xb) && !memcmp(h0, h1, xb);
			const char *name = op % 3 == 0 ? "add_rms_norm"
					   : op % 3 == 1
						   ? "moe_combine_norm"
						   : "moe_combine_norm (shared)";
			if (prep) {
				const bool ps = prepared_same(dh[1], dq, E, T);
				T_CHECK(ps, "%s E=%lld T=%lld %s: a product of its "
					"prepared output differs from the same "
					"product preparing the output itself",
					name, (long long)E, (long long)T,
					q8 ? "8-bit" : "exact");
				prep_same += ps;
				prep_cases++;
			}
			T_CHECK(ok, "%s E=%lld T=%lld K=%lld: against the "
				"separate calls, x %s and the norm %s", name,
				(long long)E, (long long)T, (long long)K,
				memcmp(x0, x1, xb) ? "differs" : "the same",
				memcmp(h0, h1, xb) ? "differs" : "the same");
			same += ok;
			cases++;
			for (int m = 0; m < 2; m++) {
				ms_gpu_free(dx[m]);
				ms_gpu_free(dh[m]);
			}
			ms_gpu_free(da);
			ms_gpu_free(dw);
			ms_gpu_free(dr);
			ms_gpu_free(dsh);
			ms_gpu_free(dq);
			free(x);
			free(a);
			free(w);
			free(r);
			free(sh);
			free(x0);
			free(x1);
			free(h0);
			free(h1);
		}
	GPU_OK(ms_gpu_ctx_set_q8(ctx, false, err));
	printf("add_rms_norm, moe_combine_norm (with and without a shared "
	       "expert): %d of %d cases the bits of the separate calls; their "
	       "prepared output (exact and 8-bit) the bits of the products' own "
	       "preparation in %d of %d\n", same, cases, prep_same, prep_cases);
}

/* ---- gather / scatter -------------------------------------------------------------- */

static void check_rows(void)
{
	const int64_t E = 96, n_src = 11, n = 5;
	const size_t rb = (size_t)E * sizeof(float);
	float *src = rand_floats(n_src * E, 5.0f);
	int32_t rows[5];
	/* gather: any rows, repeats allowed */
	for (int64_t i = 0; i < n; i++)
		rows[i] = (int32_t)(t_rand(&rng) % (uint64_t)n_src);
	rows[1] = rows[3];
	float *ref = t_xmalloc((size_t)n_src * rb), *got = t_xmalloc((size_t)n_src * rb);
	for (int64_t i = 0; i < n; i++)
		memcpy(ref + i * E, src + rows[i] * E, rb);
	float *ds = t_dev_from(src, (size_t)n_src * rb);
	int32_t *dr = t_dev_from(rows, sizeof(rows));
	float *dd = t_dev_alloc((size_t)n * rb);
	GPU_OK(ms_gpu_gather_rows(ctx, ds, dr, n, E, dd, err));
	t_dev_to(ctx, got, dd, (size_t)n * rb);
	bool same = !memcmp(got, ref, (size_t)n * rb);
	T_CHECK(same, "gather_rows n=%lld E=%lld differs", (long long)n,
		(long long)E);
	printf("gather_rows n=%lld of %lld, E=%lld: %s\n", (long long)n,
	       (long long)n_src, (long long)E, same ? "exact" : "DIFFERENT");
	ms_gpu_free(dr);
	ms_gpu_free(dd);

	/* scatter: distinct rows of a destination of n_src rows, the others
	 * kept */
	int32_t perm[11];
	for (int i = 0; i < 11; i++)
		perm[i] = i;
	for (int i = 10; i > 0; i--) {
		int j = (int)(t_rand(&rng) % (uint64_t)(i + 1));
		int32_t tmp = perm[i];
		perm[i] = perm[j];
		perm[j] = tmp;
	}
	memcpy(rows, perm, sizeof(rows));
	float *dst0 = rand_floats(n_src * E, 1.0f);
	memcpy(ref, dst0, (size_t)n_src * rb);
	for (int64_t i = 0; i < n; i++)
		memcpy(ref + rows[i] * E, src + i * E, rb);
	dr = t_dev_from(rows, sizeof(rows));
	dd = t_dev_from(dst0, (size_t)n_src * rb);
	GPU_OK(ms_gpu_scatter_rows(ctx, ds, dr, n, E, dd, err));
	t_dev_to(ctx, got, dd, (size_t)n_src * rb);
	same = !memcmp(got, ref, (size_t)n_src * rb);
	T_CHECK(same, "scatter_rows n=%lld E=%lld differs", (long long)n,
		(long long)E);
	printf("scatter_rows n=%lld into %lld, E=%lld: %s\n", (long long)n,
	       (long long)n_src, (long long)E, same ? "exact" : "DIFFERENT");
	ms_gpu_free(ds);
	ms_gpu_free(dr);
	ms_gpu_free(dd);
	free(src);
	free(dst0);
	free(ref);
	free(got);
}

/* ---- routing top-k --------------------------------------------------------------- */

/* Rows of logits per n_expert; row 1 holds exact ties, ROUTE_BAD_ROW a NaN
 * and an inf (so only the 17-token calls see it). */
#define ROUTE_T 17
#define ROUTE_BAD_ROW 9

/* How many floats apart a and b are: 0 when equal (-0 and 0 too),
 * UINT32_MAX for a NaN or different signs. */
static uint32_t ulps_apart(float a, float b)
{
	if (a == b)
		return 0;
	if (isnan(a) || isnan(b) || signbit(a) != signbit(b))
		return UINT32_MAX;
	uint32_t ia, ib;
	memcpy(&ia, &a, sizeof(ia));
	memcpy(&ib, &b, sizeof(ib));
	return ia > ib ? ia - ib : ib - ia;
}

/* The counts check_route_topk prints. */
static struct {
	int calls;
	int64_t entries, ids, w_exact, w_ulp1, bad_rows;
} rt;

/* One call of T rows (T <= ROUTE_T) against the references ref_id, ref_w
 * [ROUTE_T][k] (ref_bad[t]: ms_router_select refused row t). sel and w on
 * the device hold ROUTE_T * MS_ROUTER_MAX_USED entries, all 0xff bytes
 * before the call: past T * k they must stay so. bad0 is *bad before the
 * call: it must become 1 if a row is bad, else stay bad0. */
static void route_call(const struct ms_router_params *p, const float *dl,
		       const float *db, int64_t T, int32_t bad0,
		       const uint32_t *ref_id, const float *ref_w,
		       const bool *ref_bad, int32_t *dsel, float *dw,
		       int32_t *dbad)
{
	const int64_t cap = ROUTE_T * MS_ROUTER_MAX_USED;
	const size_t bytes = (size_t)cap * 4;
	const int64_t k = p->n_used;
	static uint8_t ff[ROUTE_T * MS_ROUTER_MAX_USED * 4];
	static int32_t gsel[ROUTE_T * MS_ROUTER_MAX_USED];
	static float gw[ROUTE_T * MS_ROUTER_MAX_USED];
	memset(ff, 0xff, sizeof(ff));
	t_dev_up(dsel, ff, bytes);
	t_dev_up(dw, ff, bytes);
	t_dev_up(dbad, &bad0, sizeof(bad0));
	GPU_OK(ms_gpu_route_topk(ctx, p, dl, db, T, dsel, dw, dbad, err));
	int32_t gbad = -1;
	t_dev_to(ctx, gsel, dsel, bytes);
	t_dev_to(ctx, gw, dw, bytes);
	t_dev_to(ctx, &gbad, dbad, sizeof(gbad));
	rt.calls++;

	bool any_bad = false;
	int64_t first = -1; /* the first wrong entry */
	int32_t want_id = -1;
	float want_w = 0.0f;
	for (int64_t t = 0; t < T; t++) {
		any_bad |= ref_bad[t];
		rt.bad_rows += ref_bad[t];
		for (int64_t i = 0; i < k; i++) {
			const int64_t o = t * k + i;
			/* a bad row: ids 0..k-1, weight 0 */
			const int32_t id = ref_bad[t] ? (int32_t)i
						      : (int32_t)ref_id[o];
			const float rw = ref_bad[t] ? 0.0f : ref_w[o];
			const uint32_t d = ulps_apart(gw[o], rw);
			rt.entries++;
			rt.ids += gsel[o] == id;
			rt.w_exact += d == 0;
			rt.w_ulp1 += d == 1;
			if ((gsel[o] != id || d > 1) && first < 0) {
				first = o;
				want_id = id;
				want_w = rw;
			}
		}
	}
	/* past T rows: untouched (all bits set: id -1, w a NaN) */
	for (int64_t o = T * k; o < cap && first < 0; o++)
		if (memcmp(&gsel[o], ff, 4) || memcmp(&gw[o], ff, 4))
			first = o;
	T_CHECK(first < 0,
		"route_topk %s%s norm=%d scale=%g n_expert=%u n_used=%u "
		"T=%lld: entry %lld (row %lld) is id %d w %.9g, expected id "
		"%d w %.9g",
		ms_gating_name(p->gating), db ? "+bias" : "", p->norm,
		(double)p->scale, p->n_expert, p->n_used, (long long)T,
		(long long)first, (long long)(first / k),
		first >= 0 ? gsel[first] : 0,
		first >= 0 ? (double)gw[first] : 0.0, want_id, (double)want_w);
	const int32_t want = any_bad ? 1 : bad0;
	T_CHECK(gbad == want,
		"route_topk %s%s n_expert=%u n_used=%u T=%lld: *bad %d, "
		"expected %d",
		ms_gating_name(p->gating), db ? "+bias" : "", p->n_expert,
		p->n_used, (long long)T, gbad, want);
}

/* The device's selection is ms_router_select's: the same doubles but for
 * the softmax's sum (added in another order) and, on a GPU, CUDA's exp and
 * log1p (within an ulp of glibc's), so a weight can differ from the host's
 * by an f32 ulp when its double lies that close to a rounding boundary
 * (about one weight in 10^8 to 10^9: this check compares some 10^5 per
 * run, so exactness would fail a run now and then for nothing). 1 ulp is
 * allowed and the count printed; ids must be exact (the scores' last-bit
 * differences would have to meet a near-tie in double, which distinct f32
 * logits in [-4, 4) do not make; exact ties give the same bits). */
static void check_route_topk(void)
{
	static const uint32_t ns[] = { 8, 128, 160, 256, 384, 1024 };
	static const uint32_t ks[] = { 1, 2, 8, 64 };
	static const int64_t Ts[] = { 1, 3, 17 };
	static const struct {
		enum ms_gating g;
		bool bias;
	} gs[] = {
		{ MS_GATING_SOFTMAX, false },       { MS_GATING_SIGMOID, false },
		{ MS_GATING_SIGMOID, true },        { MS_GATING_SQRT_SOFTPLUS, false },
		{ MS_GATING_SOFTMAX_WEIGHT, false },
	};
	static const float scales[] = { 0.0f, 1.0f, 2.5f };
	const size_t cap = (size_t)ROUTE_T * MS_ROUTER_MAX_USED;
	uint32_t *ref_id = t_xmalloc(cap * sizeof(uint32_t));
	float *ref_w = t_xmalloc(cap * sizeof(float));
	bool ref_bad[ROUTE_T];
	int32_t *dsel = t_dev_alloc(cap * sizeof(int32_t));
	float *dw = t_dev_alloc(cap * sizeof(float));
	int32_t *dbad = t_dev_alloc(sizeof(int32_t));

	for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
		const uint32_t n = ns[ni];
		float *lg = rand_floats(ROUTE_T * (int64_t)n, 4.0f);
		float *bias = rand_floats(n, 0.25f);
		/* row 1: five experts tie above the rest (5, 37 and 69 in one
		 * lane's slots, 42 and 79 in other lanes; for n = 8: 5, 2 and
		 * 7), three more tie in the middle (other ids) */
		for (uint32_t i = 0; i < 3; i++)
			lg[n + (5 + 32 * i) % n] = 4.5f;
		for (uint32_t i = 1; i < 3; i++)
			lg[n + (i * 37 + 5) % n] = 4.5f;
		for (uint32_t i = 0; i < 3; i++)
			lg[n + (i * 53 + 14) % n] = 0.25f;
		lg[ROUTE_BAD_ROW * n + 2] = NAN;
		lg[ROUTE_BAD_ROW * n + n - 1] = INFINITY;
		float *dl = t_dev_from(lg, (size_t)(ROUTE_T * n) * sizeof(float));
		float *db = t_dev_from(bias, (size_t)n * sizeof(float));

		/* every gating x norm x scale x n_used */
		const int n_s = (int)(sizeof(scales) / sizeof(scales[0]));
		const int n_k = (int)(sizeof(ks) / sizeof(ks[0]));
		const int n_c = (int)(sizeof(gs) / sizeof(gs[0])) * 2 * n_s * n_k;
		for (int c = 0; c < n_c; c++) {
			const int gi = c / (2 * n_s * n_k), norm = c / (n_s * n_k) % 2;
			const int si = c / n_k % n_s, ki = c % n_k;
			if (ks[ki] > n)
				continue;
			const struct ms_router_params p = {
				.gating = gs[gi].g,
				.norm = norm,
				.scale = scales[si],
				.n_expert = n,
				.n_used = ks[ki],
			};
			const float *hb = gs[gi].bias ? bias : NULL;
			for (int64_t t = 0; t < ROUTE_T; t++) {
				struct ms_err err = { 0 };
				const int rc = ms_router_select(
					&p, lg + t * n, hb, ref_id + t * p.n_used,
					ref_w + t * p.n_used, &err);
				ref_bad[t] = rc == -EINVAL;
				T_CHECK(rc == (t == ROUTE_BAD_ROW ? -EINVAL : 0),
					"ms_router_select row %lld = %d: %s",
					(long long)t, rc, err.msg);
			}
			for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++)
				/* *bad: 0 before, or 5 to see it left alone */
				route_call(&p, dl, gs[gi].bias ? db : NULL, Ts[ti],
					   Ts[ti] == 3 ? 5 : 0, ref_id, ref_w,
					   ref_bad, dsel, dw, dbad);
		}

		/* a NaN bias: every row is bad */
		bias[n / 2] = NAN;
		t_dev_up(db, bias, (size_t)n * sizeof(float));
		const struct ms_router_params p = {
			.gating = MS_GATING_SIGMOID,
			.norm = true,
			.n_expert = n,
			.n_used = 8,
		};
		for (int64_t t = 0; t < ROUTE_T; t++)
			ref_bad[t] = true;
		route_call(&p, dl, db, 3, 0, ref_id, ref_w, ref_bad, dsel, dw,
			   dbad);

		ms_gpu_free(dl);
		ms_gpu_free(db);
		free(lg);
		free(bias);
	}
	printf("route_topk: %d calls (5 gatings, norm, 3 scales, n_expert "
	       "8..1024, n_used 1..64, T 1/3/17; ties, NaN/inf rows, NaN "
	       "bias): of %lld entries, ids %lld exact, weights %lld exact "
	       "and %lld 1 ulp off; %lld bad rows\n",
	       rt.calls, (long long)rt.entries, (long long)rt.ids,
	       (long long)rt.w_exact, (long long)rt.w_ulp1,
	       (long long)rt.bad_rows);
	ms_gpu_free(dsel);
	ms_gpu_free(dw);
	ms_gpu_free(dbad);
	free(ref_id);
	free(ref_w);
}


/* The router's product and its choice in one launch
 * (ms_gpu_route_gemv_topk), for one token, against:
 *  - the logits: the host's double sum of each row, rounded to f32; the
 *    device adds the same products in another order, so a logit is the
 *    same f32 or (its double that close to a rounding boundary) 1 ulp off;
 *  - the choice: ms_gpu_route_topk on the launch's own logits, bit for bit
 *    (the same code), and ms_router_select's ids on them;
 *  - the input written by the kernel just before (an RMS norm, launched
 *    PDL where the context is): the emulator runs one CTA of the router up
 *    to its wait before that norm, so a read of x before the wait gives
 *    other logits; with PDL off, the same bits;
 *  - a second launch: the same bits (the ticket counter set back);
 *  - a NaN in x: every logit NaN, ids 0..k-1, weight 0, *bad set;
 *  - ms_gpu_router_logits: the same logits, bit for bit.
 * Rows of 64 to 10240 floats (past the part loaded before the wait), 8 to
 * 1024 experts. */
static void check_route_gemv(void)
{
	static const struct {
		uint32_t n, k;
		int64_t E;
		enum ms_gating g;
		bool bias, norm;
		float scale;
	} cs[] = {
		{ 160, 8, 5120, MS_GATING_SIGMOID, true, true, 2.5f },
		{ 128, 8, 2048, MS_GATING_SOFTMAX, false, true, 0.0f },
		{ 8, 2, 64, MS_GATING_SOFTMAX, false, false, 1.0f },
		{ 1024, 64, 256, MS_GATING_SQRT_SOFTPLUS, false, true, 1.0f },
		{ 64, 4, 10240, MS_GATING_SOFTMAX_WEIGHT, false, false, 0.0f },
	};
	int64_t lg_n = 0, lg_exact = 0, lg_ulp1 = 0, choices = 0;
	int pdl_runs = 0;
	const bool pdl0 = ms_gpu_ctx_pdl(ctx);
	for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
		const uint32_t n = cs[ci].n, k = cs[ci].k;
		const int64_t E = cs[ci].E;
		const struct ms_router_params p = {
			.gating = cs[ci].g, .norm = cs[ci].norm,
			.scale = cs[ci].scale, .n_expert = n, .n_used = k,
		};
		float *W = rand_floats((int64_t)n * E, 0.05f);
		float *x0 = rand_floats(E, 2.0f), *nw = rand_floats(E, 1.0f);
		float *bias = cs[ci].bias ? rand_floats(n, 0.25f) : NULL;
		float *dW = t_dev_from(W, (size_t)(n * E) * sizeof(float));
		float *dx0 = t_dev_from(x0, (size_t)E * sizeof(float));
		float *dnw = t_dev_from(nw, (size_t)E * sizeof(float));
		float *dx = t_dev_from(nw, (size_t)E * sizeof(float)); /* stale */
		float *db = bias ? t_dev_from(bias, n * sizeof(float)) : NULL;
		float *dl = t_dev_alloc(n * sizeof(float));
		int32_t *dsel = t_dev_alloc(2 * k * sizeof(int32_t));
		float *dw = t_dev_alloc(2 * k * sizeof(float));
		int32_t *dbad = t_dev_alloc(sizeof(int32_t));
		float *x = t_xmalloc((size_t)E * sizeof(float));
		float *gl = t_xmalloc(n * sizeof(float));
		float *gl2 = t_xmalloc(n * sizeof(float));
		/* the two runs' choices, one after the other as on the device */
		int32_t gsel[2 * MS_ROUTER_MAX_USED], gsel2[MS_ROUTER_MAX_USED];
		float gw[2 * MS_ROUTER_MAX_USED], gw2[MS_ROUTER_MAX_USED];
		uint32_t ref_id[MS_ROUTER_MAX_USED];
		float ref_w[MS_ROUTER_MAX_USED];
		const int32_t zero = 0;
		t_dev_up(dbad, &zero, sizeof(zero));
		/* PDL (where the device has it), then without: the same bits */
		for (int run = 0; run < 2; run++) {
			struct ms_err e2 = { 0 };
			if (run == 1 &&
			    ms_gpu_ctx_set_pdl(ctx, false, &e2) != 0)
				t_fatal("set_pdl: %s", e2.msg);
			pdl_runs += ms_gpu_ctx_pdl(ctx);
			GPU_OK(ms_gpu_rms_norm(ctx, dx0, dnw, dx, E, 1, 1e-5f,
					       err));
			GPU_OK(ms_gpu_route_gemv_topk(ctx, &p, dW, E, dx, db, dl,
						      dsel + run * k,
						      dw + run * k, dbad, err));
			t_dev_to(ctx, run ? gl2 : gl, dl, n * sizeof(float));
		}
		if (pdl0)
			GPU_OK(ms_gpu_ctx_set_pdl(ctx, true, err));
		t_dev_to(ctx, gsel, dsel, 2 * k * sizeof(int32_t));
		t_dev_to(ctx, gw, dw, 2 * k * sizeof(float));
		t_dev_to(ctx, x, dx, (size_t)E * sizeof(float));
		T_CHECK(!memcmp(gl, gl2, n * sizeof(float)) &&
				!memcmp(gsel, gsel + k, k * sizeof(int32_t)) &&
				!memcmp(gw, gw + k, k * sizeof(float)),
			"route_gemv n=%u E=%lld: the second launch (PDL %s) "
			"differs from the first",
			n, (long long)E, pdl0 ? "off" : "off again");
		/* the logits against the host's double sums of the normed x */
		int64_t worst = -1;
		uint32_t worst_d = 0;
		for (uint32_t r = 0; r < n; r++) {
			double acc = 0;
			for (int64_t i = 0; i < E; i++)
				acc += (double)W[r * E + i] * (double)x[i];
			const uint32_t d = ulps_apart(gl[r], (float)acc);
			lg_n++;
			lg_exact += d == 0;
			lg_ulp1 += d == 1;
			if (d > worst_d) {
				worst_d = d;
				worst = r;
			}
		}
		T_CHECK(worst_d <= 1,
			"route_gemv n=%u E=%lld: logit %lld is %u ulps from the "
			"double sum",
			n, (long long)E, (long long)worst, worst_d);
		/* the logits alone (ms_gpu_router_logits): the same bits */
		GPU_OK(ms_gpu_router_logits(ctx, dW, E, n, dx, dl, err));
		t_dev_to(ctx, gl2, dl, n * sizeof(float));
		T_CHECK(!memcmp(gl, gl2, n * sizeof(float)),
			"router_logits n=%u E=%lld: not route_gemv_topk's logits",
			n, (long long)E);
		/* the choice: route_topk's on these logits, bit for bit */
		GPU_OK(ms_gpu_route_topk(ctx, &p, dl, db, 1, dsel + k, dw + k,
					 dbad, err));
		t_dev_to(ctx, gsel2, dsel + k, k * sizeof(int32_t));
		t_dev_to(ctx, gw2, dw + k, k * sizeof(float));
		T_CHECK(!memcmp(gsel, gsel2, k * sizeof(int32_t)) &&
				!memcmp(gw, gw2, k * sizeof(float)),
			"route_gemv n=%u E=%lld: its choice differs from "
			"route_topk's on the same logits",
			n, (long long)E);
		struct ms_err e3 = { 0 };
		T_CHECK(ms_router_select(&p, gl, bias, ref_id, ref_w, &e3) == 0,
			"ms_router_select: %s", e3.msg);
		for (uint32_t i = 0; i < k; i++)
			T_CHECK(gsel[i] == (int32_t)ref_id[i] &&
					ulps_apart(gw[i], ref_w[i]) <= 1,
				"route_gemv n=%u: choice %u is %d w %.9g, "
				"ms_router_select's %u w %.9g",
				n, i, gsel[i], (double)gw[i], ref_id[i],
				(double)ref_w[i]);
		choices += k;
		int32_t gbad = -1;
		t_dev_to(ctx, &gbad, dbad, sizeof(gbad));
		T_CHECK(gbad == 0, "route_gemv n=%u: *bad %d on finite input",
			n, gbad);
		/* a NaN in the input: every logit NaN, the fallback row */
		x[E / 3] = NAN;
		t_dev_up(dx, x, (size_t)E * sizeof(float));
		GPU_OK(ms_gpu_route_gemv_topk(ctx, &p, dW, E, dx, db, dl, dsel,
					      dw, dbad, err));
		t_dev_to(ctx, gl, dl, n * sizeof(float));
		t_dev_to(ctx, gsel, dsel, k * sizeof(int32_t));
		t_dev_to(ctx, gw, dw, k * sizeof(float));
		t_dev_to(ctx, &gbad, dbad, sizeof(gbad));
		bool fallback = gbad == 1;
		for (uint32_t r = 0; r < n; r++)
			fallback &= isnan(gl[r]);
		for (uint32_t i = 0; i < k; i++)
			fallback &= gsel[i] == (int32_t)i && gw[i] == 0.0f;
		T_CHECK(fallback,
			"route_gemv n=%u: a NaN input gave *bad %d, id0 %d w0 %g",
			n, gbad, gsel[0], (double)gw[0]);
		ms_gpu_free(dW);
		ms_gpu_free(dx0);
		ms_gpu_free(dnw);
		ms_gpu_free(dx);
		ms_gpu_free(db);
		ms_gpu_free(dl);
		ms_gpu_free(dsel);
		ms_gpu_free(dw);
		ms_gpu_free(dbad);
		free(W);
		free(x0);
		free(nw);
		free(bias);
		free(x);
		free(gl);
		free(gl2);
	}
	printf("route_gemv_topk: %zu cases (n_expert 8..1024, rows of 64..10240, "
	       "after an RMS norm; PDL in %d launches): logits %lld exact and "
	       "%lld 1 ulp from the double sums of %lld; %lld choices "
	       "route_topk's bits and ms_router_select's ids\n",
	       sizeof(cs) / sizeof(cs[0]), pdl_runs, (long long)lg_exact,
	       (long long)lg_ulp1, (long long)lg_n, (long long)choices);
}

/* ---- argument checks ------------------------------------------------------------ */

static int n_arg_checks;

static void check_einval(int rc, const struct ms_err *err, const char *what)
{
	n_arg_checks++;
	T_CHECK(rc == -EINVAL, "%s = %d, expected -EINVAL (%s)", what, rc,
		err->msg);
	T_CHECK(err->msg[0] != '\0', "%s: no message", what);
}

static void check_errors(void)
{
	struct ms_err err = { 0 };
	float *f = t_dev_alloc(4096 * sizeof(float));
	int32_t *pos = t_dev_alloc(64 * sizeof(int32_t));
	int64_t *at = t_dev_alloc(64 * sizeof(int64_t));
	void *v = f;
#define E_(call) check_einval((memset(&err, 0, sizeof(err)), (call)), &err, #call)
	E_(ms_gpu_rms_norm(NULL, f, f, f, 4, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, f, 0, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, f, 4, 0, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, f, -4, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, NULL, f, f, 4, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, NULL, f, 4, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, f, 4, 1, -1.0f, &err));
	E_(ms_gpu_rms_norm(ctx, f, f, f, INT64_MAX / 2, 4, 1e-6f, &err));
	E_(ms_gpu_add(NULL, f, f, 4, &err));
	E_(ms_gpu_add(ctx, f, f, 0, &err));
	E_(ms_gpu_add(ctx, NULL, f, 4, &err));
	E_(ms_gpu_add(ctx, f, NULL, 4, &err));
	E_(ms_gpu_add_bias(ctx, f, f, 0, 1, &err));
	E_(ms_gpu_add_bias(ctx, f, f, 4, 0, &err));
	E_(ms_gpu_add_bias(ctx, f, NULL, 4, 1, &err));
	E_(ms_gpu_add_bias(ctx, NULL, f, 4, 1, &err));
	E_(ms_gpu_rope_neox(NULL, f, pos, NULL, 1e-6f, 2, 64, 64, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 0, 64, 64, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 0, 0, 1, 1e4f, 1, &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 64, 64, 0, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 64, 63, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 64, 66, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 64, -2, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, pos, NULL, 1e-6f, 2, 64, 64, 1, 0.0f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, NULL, pos, NULL, 1e-6f, 2, 64, 64, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_rope_neox(ctx, f, NULL, NULL, 1e-6f, 2, 64, 64, 1, 1e4f, 1,
			    &err));
	E_(ms_gpu_kv_store(NULL, f, v, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, v, at, 0, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, v, at, 4, 0, false, &err));
	E_(ms_gpu_kv_store(ctx, NULL, v, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, NULL, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, v, NULL, 4, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, (char *)v + 1, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store(ctx, f, (char *)v + 2, at, 4, 1, false, &err));
	E_(ms_gpu_kv_store_kv(ctx, f, v, NULL, v, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store_kv(ctx, f, v, f, (char *)v + 1, at, 4, 1, true, &err));
	E_(ms_gpu_kv_store_kv(ctx, f, v, f, v, NULL, 4, 1, true, &err));
	{
		struct ms_gpu_bias bs[2] = { { f, f, 4 }, { f, NULL, 4 } };
		E_(ms_gpu_add_bias_n(ctx, bs, 2, 1, &err));
		E_(ms_gpu_add_bias_n(ctx, bs, 0, 1, &err));
		E_(ms_gpu_add_bias_n(ctx, bs, MS_GPU_BIAS_MAX + 1, 1, &err));
		E_(ms_gpu_add_bias_n(ctx, bs, 1, 0, &err));
	}
	E_(ms_gpu_rope_neox_qk(ctx, f, NULL, 2, NULL, NULL, 1, pos, 1e-6f, 64, 64,
			       1, 1e4f, 1, &err));
	E_(ms_gpu_rope_neox_qk(ctx, f, NULL, 2, f, NULL, 0, pos, 1e-6f, 64, 64, 1,
			       1e4f, 1, &err));
	E_(ms_gpu_rope_neox_qk(ctx, f, NULL, 2, f, NULL, 1, pos, 1e-6f, 64, 63, 1,
			       1e4f, 1, &err));
	/* q, k, v, base, n_pos, stride, H, Hkv, D, scale, T, out */
	E_(ms_gpu_attention(NULL, f, v, v, true, at, pos, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 2, 1, 0, 0.125f, 1,
			    f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 512, 2, 1, 257, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 0, 1, 64, 0.125f, 1,
			    f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 2, 1, 64, 0.125f, 0,
			    f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 192, 8, 3, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 2, 0, 64, 0.125f, 1,
			    f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 127, 4, 2, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 2, 1, 64, NAN, 1, f,
			    &err));
	E_(ms_gpu_attention(ctx, NULL, v, v, true, at, pos, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, NULL, v, true, at, pos, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, NULL, true, at, pos, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, NULL, pos, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, NULL, 64, 2, 1, 64, 0.125f,
			    1, f, &err));
	E_(ms_gpu_attention(ctx, f, v, v, true, at, pos, 64, 2, 1, 64, 0.125f,
			    1, NULL, &err));
	E_(ms_gpu_add_rms_norm(NULL, f, f, f, f, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, f, NULL, 0, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, f, NULL, 4, 0, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, NULL, f, f, f, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, NULL, f, f, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, NULL, f, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, NULL, NULL, 4, 1, 1e-6f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, f, NULL, 4, 1, -1.0f, &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, f, NULL, INT64_MAX / 2, 4, 1e-6f,
			       &err));
	E_(ms_gpu_moe_combine_norm(NULL, f, f, f, NULL, 4, 1, 2, f, 1e-6f, f,
				   NULL, &err));
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 0, 1, 2, f, 1e-6f, f,
				   NULL, &err));
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 4, 1, 0, f, 1e-6f, f,
				   NULL, &err));
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 4, 1, 2, NULL, 1e-6f, f,
				   NULL, &err));
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 4, 1, 2, f, 1e-6f, NULL,
				   NULL, &err));
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 4, 1, 2, f, NAN, f,
				   NULL, &err));
	/* a prepared output needs rows of a multiple of 32 */
	E_(ms_gpu_moe_combine_norm(ctx, f, f, f, NULL, 4, 1, 2, f, 1e-6f, f, f,
				   &err));
	E_(ms_gpu_add_rms_norm(ctx, f, f, f, f, f, 4, 1, 1e-6f, &err));
	{
		const struct ms_gpu_qkv ok = {
			.q = f, .k = f, .v = f, .n_head = 2, .n_head_kv = 1,
			.head_dim = 4, .n_rot = 4, .pos = pos, .eps = 1e-6f,
			.base = 1e4f, .freq_scale = 1.0f, .k_cache = v,
			.v_cache = v, .at = at, .f16 = true,
		};
		struct ms_gpu_qkv bad;
		E_(ms_gpu_qkv_post(ctx, NULL, 1, &err));
		E_(ms_gpu_qkv_post(ctx, &ok, 0, &err));
		bad = ok, bad.q = NULL;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.k_cache = NULL;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.v = NULL;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.at = NULL;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.n_rot = 5;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.n_head_kv = 0;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
		bad = ok, bad.k_cache = (uint8_t *)v + 1;
		E_(ms_gpu_qkv_post(ctx, &bad, 1, &err));
	}
	/* a prepared output needs heads of a multiple of 32 */
	E_(ms_gpu_attention_q(ctx, f, v, v, true, at, pos, 48, 2, 1, 48, 0.125f,
			      1, f, f, &err));
	E_(ms_gpu_moe_combine(NULL, f, f, f, NULL, 4, 1, 2, &err));
	E_(ms_gpu_moe_combine(ctx, f, f, f, NULL, 0, 1, 2, &err));
	E_(ms_gpu_moe_combine(ctx, f, f, f, NULL, 4, 0, 2, &err));
	E_(ms_gpu_moe_combine(ctx, f, f, f, NULL, 4, 1, 0, &err));
	E_(ms_gpu_moe_combine(ctx, NULL, f, f, NULL, 4, 1, 2, &err));
	E_(ms_gpu_moe_combine(ctx, f, NULL, f, NULL, 4, 1, 2, &err));
	E_(ms_gpu_moe_combine(ctx, f, f, NULL, NULL, 4, 1, 2, &err));
	E_(ms_gpu_gather_rows(NULL, f, pos, 1, 4, f, &err));
	E_(ms_gpu_gather_rows(ctx, f, pos, 0, 4, f, &err));
	E_(ms_gpu_gather_rows(ctx, f, pos, 1, 0, f, &err));
	E_(ms_gpu_gather_rows(ctx, NULL, pos, 1, 4, f, &err));
	E_(ms_gpu_gather_rows(ctx, f, NULL, 1, 4, f, &err));
	E_(ms_gpu_gather_rows(ctx, f, pos, 1, 4, NULL, &err));
	E_(ms_gpu_scatter_rows(NULL, f, pos, 1, 4, f, &err));
	E_(ms_gpu_scatter_rows(ctx, f, pos, -1, 4, f, &err));
	E_(ms_gpu_scatter_rows(ctx, f, pos, 1, -4, f, &err));
	E_(ms_gpu_scatter_rows(ctx, NULL, pos, 1, 4, f, &err));
	E_(ms_gpu_scatter_rows(ctx, f, NULL, 1, 4, f, &err));
	E_(ms_gpu_scatter_rows(ctx, f, pos, 1, 4, NULL, &err));
	/* routing: params as router.c's check_params, n_expert <= 1024 */
	const struct ms_router_params rp = { .gating = MS_GATING_SOFTMAX,
					     .norm = true,
					     .n_expert = 64,
					     .n_used = 8 };
	struct ms_router_params rq;
#define RQ_(field, v) (rq = rp, rq.field = (v), &rq)
	E_(ms_gpu_route_topk(NULL, &rp, f, NULL, 1, pos, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, NULL, f, NULL, 1, pos, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, RQ_(n_used, 0), f, NULL, 1, pos, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, RQ_(n_used, 65), f, NULL, 1, pos, f, pos,
			     &err));
	E_(ms_gpu_route_topk(ctx, RQ_(n_expert, 1025), f, NULL, 1, pos, f, pos,
			     &err));
	E_(ms_gpu_route_topk(ctx, RQ_(n_expert, 4), f, NULL, 1, pos, f, pos,
			     &err));
	E_(ms_gpu_route_topk(ctx, RQ_(gating, MS_GATING_NONE), f, NULL, 1, pos,
			     f, pos, &err));
	E_(ms_gpu_route_topk(ctx, RQ_(gating, MS_GATING_COUNT), f, NULL, 1, pos,
			     f, pos, &err));
	E_(ms_gpu_route_topk(ctx, RQ_(scale, NAN), f, NULL, 1, pos, f, pos,
			     &err));
	E_(ms_gpu_route_topk(ctx, &rp, f, NULL, 0, pos, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, &rp, NULL, NULL, 1, pos, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, &rp, f, NULL, 1, NULL, f, pos, &err));
	E_(ms_gpu_route_topk(ctx, &rp, f, NULL, 1, pos, NULL, pos, &err));
	E_(ms_gpu_route_topk(ctx, &rp, f, NULL, 1, pos, f, NULL, &err));
	/* the router's product: the same params, rows of a multiple of 4
	 * floats, 16-byte aligned weights and input */
	E_(ms_gpu_route_gemv_topk(NULL, &rp, f, 64, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, NULL, f, 64, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, RQ_(n_used, 0), f, 64, f, NULL, f, pos,
				  f, pos, &err));
	E_(ms_gpu_route_gemv_topk(ctx, RQ_(n_expert, 1025), f, 64, f, NULL, f,
				  pos, f, pos, &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 0, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 62, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f + 1, 60, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 60, f + 2, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, NULL, 64, f, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 64, NULL, NULL, f, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 64, f, NULL, NULL, pos, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 64, f, NULL, f, NULL, f, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 64, f, NULL, f, pos, NULL, pos,
				  &err));
	E_(ms_gpu_route_gemv_topk(ctx, &rp, f, 64, f, NULL, f, pos, f, NULL,
				  &err));
	E_(ms_gpu_router_logits(NULL, f, 64, 8, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 64, 0, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 64, 65536, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 62, 8, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f + 1, 60, 8, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 60, 8, f + 3, f, &err));
	E_(ms_gpu_router_logits(ctx, NULL, 64, 8, f, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 64, 8, NULL, f, &err));
	E_(ms_gpu_router_logits(ctx, f, 64, 8, f, NULL, &err));
#undef RQ_
#undef E_
	/* the stream is still good after all that */
	struct ms_err e2 = { 0 };
	T_CHECK(ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &e2) == 0,
		"stream after the argument checks: %s", e2.msg);
	printf("argument checks: %d calls answered -EINVAL with a message\n",
	       n_arg_checks);
	ms_gpu_free(f);
	ms_gpu_free(pos);
	ms_gpu_free(at);
}

/* ---- without CUDA ------------------------------------------------------------------ */

static void check_stubs(void)
{
	struct ms_err err = { 0 };
	struct ms_gpu_ctx *c = (struct ms_gpu_ctx *)1;
	float f[4] = { 0 };
	int32_t p[1] = { 0 };
	int64_t a[1] = { 0 };
	t_check_no_cuda(ms_gpu_rms_norm(c, f, f, f, 4, 1, 1e-6f, &err), &err,
		   "ms_gpu_rms_norm");
	t_check_no_cuda(ms_gpu_add(c, f, f, 4, &err), &err, "ms_gpu_add");
	t_check_no_cuda(ms_gpu_attention_q(c, f, f, f, false, a, p, 4, 1, 1, 4,
					   0.5f, 1, f, NULL, &err),
			&err, "ms_gpu_attention_q");
	const struct ms_gpu_qkv qk = { .q = f };
	t_check_no_cuda(ms_gpu_qkv_post(c, &qk, 1, &err), &err, "ms_gpu_qkv_post");
	t_check_no_cuda(ms_gpu_add_rms_norm(c, f, f, f, f, NULL, 4, 1, 1e-6f,
					    &err),
			&err, "ms_gpu_add_rms_norm");
	t_check_no_cuda(ms_gpu_moe_combine_norm(c, f, f, f, NULL, 4, 1, 1, f,
						1e-6f, f, NULL, &err),
			&err, "ms_gpu_moe_combine_norm");
	t_check_no_cuda(ms_gpu_add_bias(c, f, f, 4, 1, &err), &err,
		   "ms_gpu_add_bias");
	t_check_no_cuda(ms_gpu_rope_neox(c, f, p, NULL, 1e-6f, 1, 4, 4, 1, 1e4f,
				    1.0f, &err),
		   &err, "ms_gpu_rope_neox");
	t_check_no_cuda(ms_gpu_kv_store(c, f, f, a, 4, 1, true, &err), &err,
		   "ms_gpu_kv_store");
	t_check_no_cuda(ms_gpu_kv_store_kv(c, f, f, f, f, a, 4, 1, true, &err),
			&err, "ms_gpu_kv_store_kv");
	t_check_no_cuda(ms_gpu_rope_neox_qk(c, f, NULL, 1, f, NULL, 1, p, 1e-6f,
					    4, 4, 1, 1e4f, 1.0f, &err),
			&err, "ms_gpu_rope_neox_qk");
	const struct ms_gpu_bias bs = { f, f, 4 };
	t_check_no_cuda(ms_gpu_add_bias_n(c, &bs, 1, 1, &err), &err,
			"ms_gpu_add_bias_n");
	const struct ms_gpu_mm mm = { MS_TYPE_Q4_0, f, 1, f, false };
	t_check_no_cuda(ms_gpu_matmul_n(c, &mm, 1, 32, f, NULL, 1, &err), &err,
			"ms_gpu_matmul_n");
	t_check_no_cuda(ms_gpu_attention(c, f, f, f, false, a, p, 4, 1, 1, 4, 0.5f,
				    1, f, &err),
		   &err, "ms_gpu_attention");
	t_check_no_cuda(ms_gpu_moe_combine(c, f, f, f, NULL, 4, 1, 1, &err), &err,
		   "ms_gpu_moe_combine");
	t_check_no_cuda(ms_gpu_gather_rows(c, f, p, 1, 4, f, &err), &err,
		   "ms_gpu_gather_rows");
	t_check_no_cuda(ms_gpu_scatter_rows(c, f, p, 1, 4, f, &err), &err,
		   "ms_gpu_scatter_rows");
	const struct ms_router_params rp = { .gating = MS_GATING_SOFTMAX,
					     .n_expert = 4,
					     .n_used = 1 };
	t_check_no_cuda(ms_gpu_route_topk(c, &rp, f, NULL, 1, p, f, p, &err),
			&err, "ms_gpu_route_topk");
	t_check_no_cuda(ms_gpu_route_gemv_topk(c, &rp, f, 64, f, NULL, f, p, f,
					       p, &err),
			&err, "ms_gpu_route_gemv_topk");
	t_check_no_cuda(ms_gpu_router_logits(c, f, 64, 8, f, f, &err), &err,
			"ms_gpu_router_logits");
}

int main(void)
{
	rng = t_seed();
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	if (!ms_gpu_built()) {
		check_stubs();
		if (t_failures)
			return t_done();
		t_skip("built without CUDA (every gpu_ops entry point answers "
		       "-ENOTSUP, checked)");
	}
	int n = ms_gpu_list(g, MS_GPU_MAX, &err);
	if (n == -ENODEV)
		t_skip("no GPU: %s", err.msg);
	T_CHECK(n >= 1, "ms_gpu_list = %d: %s", n, err.msg);
	if (n < 1)
		return t_done();
	printf("%s; gpu 0: %s, sm_%d%d, %d SMs\n", ms_gpu_build_info(),
	       g[0].name, g[0].cc_major, g[0].cc_minor, g[0].multiprocessors);
	if (ms_gpu_ctx_init(&ctx, 0, NULL, &err))
		t_fatal("ms_gpu_ctx_init: %s", err.msg);

	check_rms_norm();
	check_add();
	check_rope();
	check_kv_store();
	check_attention();
	check_moe_combine();
	check_update_norm();
	check_qkv_post();
	check_rows();
	check_route_topk();
	check_route_gemv();
	check_errors();
	printf("worst attention relative L2 %.2e (bound %.0e); %d attention_q "
	       "cases with their prepared output the same as a product's own "
	       "preparation\n", worst_att, TOL_ATT, att_prep);
	T_CHECK(att_prep > 0, "no attention_q case had a prepared output");
	ms_gpu_ctx_free(ctx);
	return t_done();
}
