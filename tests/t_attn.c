/*
 * t_attn - ms_attn_f16 (kernels/attn.c), the attention the engine computes
 * as llama.cpp's CPU flash attention does for batches of under 64 tokens,
 * and ms_f32_f16, the half rounding it and the KV cache use.
 *
 *   - ms_f32_f16 gives ggml's own bits (libggml-base's ggml_fp32_to_fp16_row)
 *     for random floats over the whole half range and beyond: normals,
 *     subnormals, ties, overflow to infinity, signed zeros;
 *   - one position: the output is that position's V row exactly (the
 *     accumulator starts at 0, takes v * 1 once, and S = 1);
 *   - against attention in float64 on the same f16 K and V: within 4e-3
 *     relative (the f16 accumulator, ~2^-11 per step), and not equal to it
 *     (the f16 rounding is really there: an exact path would be ~1e-7);
 *   - the AVX2 path gives the C path's bits, for head sizes 32..256, 1..300
 *     positions, strided rows (GQA: several KV heads per row);
 *   - d out of range is refused.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml_ref.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next32(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

static float uni(void) /* [-1, 1) */
{
	return (float)next32() / 2147483648.0f - 1.0f;
}

static float half_val(uint16_t h)
{
	float f;
	ms_ffn_dequant_row(MS_FFN_PATH_SCALAR, MS_TYPE_F16, &h, &f, 1);
	return f;
}

static void check_rounding(const struct ggml_ref *g)
{
	enum { N = 1 << 16 };
	static float x[N];
	static uint16_t ours[N], theirs[N];
	size_t bad = 0, at = 0;
	for (int round = 0; round < 16; round++) {
		for (int i = 0; i < N; i++) {
			uint32_t u = next32() | (next32() & 1u) << 31;
			/* exponents around the half range: 2^-30 .. 2^20 */
			uint32_t e = 97 + next32() % 51;
			u = (u & 0x807FFFFFu) | e << 23;
			if (i % 7 == 0) /* an exact tie between two halves */
				u &= ~0x0FFFu, u |= 0x1000u;
			memcpy(&x[i], &u, 4);
		}
		x[0] = 0.0f;
		x[1] = -0.0f;
		x[2] = 65504.0f;
		x[3] = 65520.0f;      /* rounds up to infinity */
		x[4] = 5.9604645e-8f; /* the smallest subnormal */
		x[5] = -2.9802322e-8f; /* half of it: a tie, to even (zero) */
		x[6] = INFINITY;
		for (int i = 0; i < N; i++)
			ours[i] = ms_f32_f16(x[i]);
		g->ggml_fp32_to_fp16_row(x, theirs, N);
		for (int i = 0; i < N; i++)
			if (ours[i] != theirs[i] && !bad++)
				at = (size_t)i;
		if (bad) {
			T_CHECK(0, "ms_f32_f16(%a) = 0x%04x, ggml's 0x%04x (%zu "
				"differ)", (double)x[at], ours[at], theirs[at], bad);
			return;
		}
	}
	printf("f32 -> f16: %d values, ggml's bits for every one\n", 16 * N);
}

/* float64 attention over the same f16 rows */
static void attn_f64(const float *q, const uint16_t *k, const uint16_t *v,
		     size_t stride, uint32_t n, int64_t d, float scale,
		     double *out)
{
	double *s = malloc(n * sizeof(double)), mx = -INFINITY, sum = 0;
	for (uint32_t p = 0; p < n; p++) {
		double a = 0;
		for (int64_t i = 0; i < d; i++)
			a += (double)q[i] * half_val(k[p * stride + i]);
		s[p] = a * scale;
		mx = s[p] > mx ? s[p] : mx;
	}
	for (int64_t i = 0; i < d; i++)
		out[i] = 0;
	for (uint32_t p = 0; p < n; p++) {
		double w = exp(s[p] - mx);
		sum += w;
		for (int64_t i = 0; i < d; i++)
			out[i] += w * half_val(v[p * stride + i]);
	}
	for (int64_t i = 0; i < d; i++)
		out[i] /= sum;
	free(s);
}

int main(void)
{
	struct ggml_ref g;
	ggml_ref_load_or_fail(&g);
	check_rounding(&g);

	bool avx2 = ms_ffn_path_available(MS_FFN_PATH_AVX2);
	if (!avx2)
		printf("no AVX2 on this CPU: the C path only\n");
	static const int64_t ds[] = { 32, 64, 128, 256 };
	static const uint32_t ns[] = { 1, 2, 7, 64, 300 };
	double worst = 0, least = INFINITY;
	int cases = 0;
	for (size_t a = 0; a < sizeof(ds) / sizeof(ds[0]); a++) {
		for (size_t b = 0; b < sizeof(ns) / sizeof(ns[0]); b++) {
			int64_t d = ds[a];
			uint32_t n = ns[b];
			size_t stride = (size_t)d * 3; /* 3 KV heads per row */
			uint16_t *k = malloc(n * stride * 2), *v = malloc(n * stride * 2);
			float *q = malloc((size_t)d * 4), *o1 = malloc((size_t)d * 4),
			      *o2 = malloc((size_t)d * 4);
			double *ref = malloc((size_t)d * 8);
			float qs = 1.0f + 3.0f * (float)(next32() % 4);
			for (size_t i = 0; i < n * stride; i++) {
				k[i] = ms_f32_f16(uni());
				v[i] = ms_f32_f16(uni() * 4.0f);
			}
			for (int64_t i = 0; i < d; i++)
				q[i] = uni() * qs;
			const uint16_t *kh = k + d, *vh = v + d; /* head 1 */
			float scale = 1.0f / sqrtf((float)d);
			T_CHECK(!ms_attn_f16(MS_FFN_PATH_SCALAR, q, kh, vh, stride,
					     n, d, scale, o1), "scalar refused");
			if (avx2) {
				T_CHECK(!ms_attn_f16(MS_FFN_PATH_AVX2, q, kh, vh,
						     stride, n, d, scale, o2),
					"avx2 refused");
				T_CHECK(!memcmp(o1, o2, (size_t)d * 4),
					"d %lld, n %u: the AVX2 path's bits differ "
					"from the C path's", (long long)d, n);
			}
			if (n == 1)
				for (int64_t i = 0; i < d; i++)
					T_CHECK(o1[i] == half_val(vh[i]),
						"one position: out[%lld] %g, v %g",
						(long long)i, (double)o1[i],
						(double)half_val(vh[i]));
			attn_f64(q, kh, vh, stride, n, d, scale, ref);
			double e2 = 0, r2 = 0;
			for (int64_t i = 0; i < d; i++) {
				e2 += (o1[i] - ref[i]) * (o1[i] - ref[i]);
				r2 += ref[i] * ref[i];
			}
			double rel = sqrt(e2 / r2);
			T_CHECK(rel <= 4e-3, "d %lld, n %u: %.2e relative from "
				"float64", (long long)d, n, rel);
			worst = rel > worst ? rel : worst;
			if (n > 2)
				least = rel < least ? rel : least;
			cases++;
			free(k), free(v), free(q), free(o1), free(o2), free(ref);
		}
	}
	/* the f16 accumulator's rounding is there: an f32 one would be ~1e-7 */
	T_CHECK(least > 2e-5, "%.2e from float64 over several positions: no "
		"f16 rounding?", least);
	printf("attention, %d cases: relative L2 from float64 %.2e .. %.2e; "
	       "AVX2 %s\n", cases, least, worst,
	       avx2 ? "bit for bit the C path's" : "not available");
	float q[8] = { 0 }, o[8];
	uint16_t kv[8] = { 0 };
	T_CHECK(ms_attn_f16(MS_FFN_PATH_SCALAR, q, kv, kv, 8, 1, 0, 1, o) ==
		-EINVAL, "d 0 accepted");
	T_CHECK(ms_attn_f16(MS_FFN_PATH_SCALAR, q, kv, kv, 8, 1,
			    MS_ATTN_MAX_D + 1, 1, o) == -EINVAL,
		"d over MS_ATTN_MAX_D accepted");
	return t_done();
}
