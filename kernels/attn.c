/*
 * attn.c - one query's attention over an f16 KV cache, computed the way
 * llama.cpp's CPU backend computes it for a batch of fewer than 64 tokens
 * (ggml-cpu's flash attention, one-chunk path, K and V in f16):
 *
 *   q is rounded to f16; for each cached position in order,
 *     s = dot(q16, k16) * scale                     (f32)
 *     a new maximum M rescales the accumulator:  acc = f16(acc * exp(Mold - M))
 *     otherwise the weight is vs = exp(s - M)
 *     acc = f16(fma(v16, vs, acc))                   (one f32 fma, then f16)
 *     S = S * ms + vs
 *   out = acc / S
 *
 * The accumulator held in f16 is where most of llama.cpp's decode-time
 * rounding comes from (~1e-3 relative); an engine that wants its tokens
 * must round the same way (tests/t_forward_ref.c: the tiny preset's logits
 * within 0.999 cosine at every position only with it). Facts from ggml's
 * ops.cpp (flash_attn_ext_f16_one_chunk), code our own.
 *
 * The dot keeps 8 lanes (element i in lane i % 8, one fma chain each) summed
 * as (l0+l4, l1+l5, l2+l6, l3+l7), then pairs (0+2, 1+3), then the two: the
 * scalar form follows that order, so the AVX2 form gives the same bits
 * (t_attn compares them). Contraction is off: every fma is written out.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moestream/kernels.h"

#include "ffn_internal.h"
#include "quant_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

uint16_t ms_f32_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xFF, m = x & 0x7FFFFF;
	if (e == 0xFF)
		return (uint16_t)(sign | 0x7C00 | (m ? 0x200 | m >> 13 : 0));
	int32_t ne = (int32_t)e - 127 + 15;
	if (ne >= 31)
		return (uint16_t)(sign | 0x7C00);
	if (ne <= 0) {
		if (ne < -10)
			return (uint16_t)sign;
		m |= 0x800000;
		uint32_t shift = (uint32_t)(14 - ne);
		uint32_t h = m >> shift, rem = m & ((1u << shift) - 1),
			 half = 1u << (shift - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	uint32_t h = (uint32_t)ne << 10 | m >> 13, rem = m & 0x1FFF;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++; /* may carry into the exponent: still right */
	return (uint16_t)(sign | h);
}

void ms_f32_f16_row(const float *x, uint16_t *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = ms_f32_f16(x[i]);
}

static float dot16(const uint16_t *a, const uint16_t *b, int64_t d)
{
	float l[8] = { 0 };
	for (int64_t i = 0; i < d; i++)
		l[i % 8] = fmaf(f16_f32(a[i]), f16_f32(b[i]), l[i % 8]);
	return ms_q8_tree8(l);
}

static void attn_scalar(const float *q, const uint16_t *k, const uint16_t *v,
			size_t stride, uint32_t n, int64_t d, float scale,
			float *out)
{
	uint16_t q16[MS_ATTN_MAX_D], acc[MS_ATTN_MAX_D];
	for (int64_t i = 0; i < d; i++) {
		q16[i] = ms_f32_f16(q[i]);
		acc[i] = 0;
	}
	float S = 0, M = -INFINITY;
	for (uint32_t p = 0; p < n; p++) {
		const uint16_t *kp = k + (size_t)p * stride,
			       *vp = v + (size_t)p * stride;
		float s = dot16(kp, q16, d) * scale, ms = 1.0f, vs = 1.0f;
		if (s > M) {
			ms = expf(M - s);
			M = s;
			for (int64_t i = 0; i < d; i++)
				acc[i] = ms_f32_f16(f16_f32(acc[i]) * ms);
		} else {
			vs = expf(s - M);
		}
		for (int64_t i = 0; i < d; i++)
			acc[i] = ms_f32_f16(fmaf(f16_f32(vp[i]), vs,
						 f16_f32(acc[i])));
		S = S * ms + vs;
	}
	float inv = S == 0.0f ? 0.0f : 1.0f / S;
	for (int64_t i = 0; i < d; i++)
		out[i] = f16_f32(acc[i]) * inv;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

TGT static inline __m256 ld16(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

TGT static inline void st16(uint16_t *p, __m256 x)
{
	_mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(x, RNE));
}

TGT static void attn_avx2(const float *q, const uint16_t *k,
			  const uint16_t *v, size_t stride, uint32_t n,
			  int64_t d, float scale, float *out)
{
	uint16_t q16[MS_ATTN_MAX_D], acc[MS_ATTN_MAX_D];
	for (int64_t i = 0; i < d; i += 8) {
		st16(q16 + i, _mm256_loadu_ps(q + i));
		st16(acc + i, _mm256_setzero_ps());
	}
	float S = 0, M = -INFINITY;
	for (uint32_t p = 0; p < n; p++) {
		const uint16_t *kp = k + (size_t)p * stride,
			       *vp = v + (size_t)p * stride;
		__m256 l = _mm256_setzero_ps();
		for (int64_t i = 0; i < d; i += 8)
			l = _mm256_fmadd_ps(ld16(kp + i), ld16(q16 + i), l);
		__m128 a = _mm_add_ps(_mm256_castps256_ps128(l),
				      _mm256_extractf128_ps(l, 1));
		__m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
		__m128 c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
		float s = _mm_cvtss_f32(c) * scale, ms = 1.0f, vs = 1.0f;
		if (s > M) {
			ms = expf(M - s);
			M = s;
			__m256 m8 = _mm256_set1_ps(ms);
			for (int64_t i = 0; i < d; i += 8)
				st16(acc + i, _mm256_mul_ps(ld16(acc + i), m8));
		} else {
			vs = expf(s - M);
		}
		__m256 v8 = _mm256_set1_ps(vs);
		for (int64_t i = 0; i < d; i += 8)
			st16(acc + i, _mm256_fmadd_ps(ld16(vp + i), v8,
						      ld16(acc + i)));
		S = S * ms + vs;
	}
	__m256 inv = _mm256_set1_ps(S == 0.0f ? 0.0f : 1.0f / S);
	for (int64_t i = 0; i < d; i += 8)
		_mm256_storeu_ps(out + i, _mm256_mul_ps(ld16(acc + i), inv));
}
#endif

int ms_attn_f16(enum ms_ffn_path p, const float *q, const uint16_t *k,
		const uint16_t *v, size_t stride, uint32_t n, int64_t d,
		float scale, float *out)
{
	if (d < 1 || d > MS_ATTN_MAX_D || stride < (size_t)d)
		return -EINVAL;
	if (p == MS_FFN_PATH_AUTO)
		p = ms_ffn_avx2_cpu() ? MS_FFN_PATH_AVX2 : MS_FFN_PATH_SCALAR;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (p == MS_FFN_PATH_AVX2) {
		if (!ms_ffn_avx2_cpu())
			return -ENOTSUP;
		if (d % 8 == 0) {
			attn_avx2(q, k, v, stride, n, d, scale, out);
			return 0;
		}
	}
#else
	if (p == MS_FFN_PATH_AVX2)
		return -ENOTSUP;
#endif
	attn_scalar(q, k, v, stride, n, d, scale, out);
	return 0;
}
