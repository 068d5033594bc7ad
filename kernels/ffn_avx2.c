/*
 * ffn_avx2.c - the vectorised CPU path of the expert FFN, chosen at run
 * time: AVX2 dequantisers and tiled FMA dots for batches, fused
 * dequantise-and-dot kernels for decode (B = 1), for all 16 types.
 *
 * Build: this file is compiled with the project's flags like any other; each
 * function carries __attribute__((target("avx2,fma,f16c"))) and is only
 * called after ms_ffn_avx2_cpu() checked the CPU. No global -mavx2, so the
 * binary still runs (on the scalar path) on a CPU without AVX2.
 *
 * Dequantisers: each produces exactly the floats ggml's scalar
 * dequantize_row_* produces. That is why floating-point contraction is off
 * here (an FMA would round d*q - m once instead of twice) and why every
 * product keeps ggml's order of operations: Q6_K's d * sc * q is (d*sc)*q,
 * Q2_K's dl*q - ml is a multiply then a subtract. The tests compare the
 * output with ggml's bit for bit.
 *
 * Dot products: one row of weights against one input keeps two 8-lane f32
 * accumulators (even and odd groups of 8), flushed into a 4-lane double
 * accumulator every 1024 elements, summed in a fixed order at the end. The
 * error of a 5120-long dot is then ~1e-7 relative, and since each (row,
 * input) pair is computed by the same instructions whatever tile it sits in,
 * the result does not depend on tiling or on the number of threads.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/model.h"

#include "ffn_internal.h"
#include "quant_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define TGT_INLINE static inline __attribute__((always_inline)) TGT

/* MS_FFN_NO_AVX2=1 in the environment hides the AVX2 path, so that the
 * scalar fallback and the tests' skip can be exercised on any machine. The
 * answer is worked out once: attention asks for every head of every token
 * (thousands of times a decode step of `serve --parallel 4`), and getenv
 * walking the environment each time was 1.3% of such a step's profile. */
bool ms_ffn_avx2_cpu(void)
{
	static _Atomic int known = -1;
	int k = known;
	if (k >= 0)
		return k;
	const char *off = getenv("MS_FFN_NO_AVX2");
	__builtin_cpu_init();
	k = !(off && *off && strcmp(off, "0")) && __builtin_cpu_supports("avx2") &&
	    __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
	known = k;
	return k;
}

/* ---- helpers ----------------------------------------------------------------- */

/* Short names for the loads and lane moves every kernel is made of. */
TGT_INLINE __m128i ld128(const void *p)
{
	return _mm_loadu_si128((const __m128i *)p);
}

TGT_INLINE __m256i ld256(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

TGT_INLINE __m128i lo128(__m256i v)
{
	return _mm256_castsi256_si128(v);
}

TGT_INLINE __m128i hi128(__m256i v)
{
	return _mm256_extracti128_si256(v, 1);
}

TGT_INLINE __m256 bc(float f)
{
	return _mm256_set1_ps(f);
}

TGT_INLINE float h2f(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

/* ggml's GGML_E8M0_TO_FP32_HALF: 2^(x-127) / 2, exact (subnormal below 2). */
static inline float e8m0_half(uint8_t x)
{
	uint32_t bits = x < 2 ? 0x00200000u << x : (uint32_t)(x - 1) << 23;
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

/* 16 unsigned bytes -> y[0..15] = dl * q - ml (two roundings, as ggml). */
TGT_INLINE void emit16_u_ms(float *y, __m128i q, __m256 dl, __m256 ml)
{
	__m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
	__m256 f1 =
		_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
	_mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(dl, f0), ml));
	_mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(dl, f1), ml));
}

/* 16 signed bytes -> y[0..15] = d * q. */
TGT_INLINE void emit16_s_m(float *y, __m128i q, __m256 d)
{
	__m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
	__m256 f1 =
		_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
	_mm256_storeu_ps(y, _mm256_mul_ps(d, f0));
	_mm256_storeu_ps(y + 8, _mm256_mul_ps(d, f1));
}

/* 16 signed bytes -> y[0..15] = q * d + m (Q4_1: x0*d + m). */
TGT_INLINE void emit16_s_ma(float *y, __m128i q, __m256 d, __m256 m)
{
	__m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
	__m256 f1 =
		_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
	_mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(f0, d), m));
	_mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(f1, d), m));
}

/* 32 bits -> 32 bytes, byte i 0xFF when bit i is set (Q5_0/Q5_1's qh). */
TGT_INLINE __m256i bits_to_bytes(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
					     1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
					     3, 3, 3, 3, 3, 3, 3, 3);
	const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
	__m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), sel);
	return _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
}

/* Q5_0/Q5_1 quants of one block: element j < 16 is the low nibble of qs[j]
 * with bit j of qh as its fifth bit, element 16 + j the high nibble with
 * bit 16 + j; unsigned 0..31. */
TGT_INLINE __m256i q5_values(const uint8_t *qh, const uint8_t *qs)
{
	const __m128i m4 = _mm_set1_epi8(0x0F);
	__m128i q = ld128(qs);
	__m256i v = _mm256_setr_m128i(_mm_and_si128(q, m4),
				      _mm_and_si128(_mm_srli_epi16(q, 4), m4));
	return _mm256_or_si256(
		v, _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
}

/* One Q6_K value per byte: the 4 low bits (bits 0-3 of lo4) and the 2 high
 * bits (bits 4-5 of hi2, already shifted there), minus 32. */
TGT_INLINE __m256i q6_values(__m256i lo4, __m256i hi2)
{
	__m256i v =
		_mm256_or_si256(_mm256_and_si256(lo4, _mm256_set1_epi8(0x0F)),
				_mm256_and_si256(hi2, _mm256_set1_epi8(0x30)));
	return _mm256_sub_epi8(v, _mm256_set1_epi8(32));
}

static const int8_t kvalues_iq4nl[16] = { -127, -104, -83, -65, -49, -35,
					  -22,	-10,  1,   13,	25,  38,
					  53,	69,   89,  113 };
static const int8_t kvalues_mxfp4[16] = { 0, 1,	 2,  3,	 4,  6,	 8,  12,
					  0, -1, -2, -3, -4, -6, -8, -12 };

/* ---- dequantisers, one block format each --------------------------------------- */

TGT static void deq_q8_0(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
		__m256 d = bc(h2f(b));
		emit16_s_m(y, ld128(b + 2), d);
		emit16_s_m(y + 16, ld128(b + 18), d);
	}
}

TGT static void deq_q4_0(const uint8_t *b, float *y, int64_t nb)
{
	const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
	for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
		__m256 d = bc(h2f(b));
		__m128i q = ld128(b + 2);
		__m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
		__m128i hi = _mm_sub_epi8(
			_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
		emit16_s_m(y, lo, d);
		emit16_s_m(y + 16, hi, d);
	}
}

TGT static void deq_q4_1(const uint8_t *b, float *y, int64_t nb)
{
	const __m128i m4 = _mm_set1_epi8(0x0F);
	for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
		__m256 d = bc(h2f(b)), m = bc(h2f(b + 2));
		__m128i q = ld128(b + 4);
		emit16_s_ma(y, _mm_and_si128(q, m4), d, m);
		emit16_s_ma(y + 16, _mm_and_si128(_mm_srli_epi16(q, 4), m4), d,
			    m);
	}
}

TGT static void deq_q5_0(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 22, y += 32) {
		__m256 d = bc(h2f(b));
		__m256i v = _mm256_sub_epi8(q5_values(b + 2, b + 6),
					    _mm256_set1_epi8(16));
		emit16_s_m(y, lo128(v), d);
		emit16_s_m(y + 16, hi128(v), d);
	}
}

TGT static void deq_q5_1(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 24, y += 32) {
		__m256 d = bc(h2f(b)), m = bc(h2f(b + 2));
		__m256i v = q5_values(b + 4, b + 8);
		emit16_s_ma(y, lo128(v), d, m);
		emit16_s_ma(y + 16, hi128(v), d, m);
	}
}

/* IQ4_NL and MXFP4: 16 nibbles -> a 16-entry signed table -> x scale. */
TGT_INLINE void nl_block(const uint8_t *qs, const int8_t *table, __m256 d,
			 float *y)
{
	const __m128i m4 = _mm_set1_epi8(0x0F);
	const __m128i lut = ld128(table);
	__m128i q = ld128(qs);
	__m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(q, m4));
	__m128i hi =
		_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
	emit16_s_m(y, lo, d);
	emit16_s_m(y + 16, hi, d);
}

TGT static void deq_iq4_nl(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 18, y += 32)
		nl_block(b + 2, kvalues_iq4nl, bc(h2f(b)), y);
}

TGT static void deq_mxfp4(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 17, y += 32)
		nl_block(b + 1, kvalues_mxfp4, bc(e8m0_half(b[0])), y);
}

/* IQ4_XS: d(2) scales_h(2) scales_l(4) qs(128); eight groups of 32. */
TGT static void deq_iq4_xs(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 136) {
		float d = h2f(b);
		uint16_t sh;
		memcpy(&sh, b + 2, 2);
		const uint8_t *sl = b + 4, *qs = b + 8;
#pragma GCC unroll 8
		for (int ib = 0; ib < 8; ib++, qs += 16, y += 32) {
			int ls = ((sl[ib / 2] >> 4 * (ib % 2)) & 0xf) |
				 (((sh >> 2 * ib) & 3) << 4);
			nl_block(qs, kvalues_iq4nl, bc(d * (float)(ls - 32)),
				 y);
		}
	}
}

/* Q2_K: scales(16) qs(64) d(2) dmin(2). */
TGT static void deq_q2_K(const uint8_t *b, float *y, int64_t nb)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	for (int64_t i = 0; i < nb; i++, b += 84) {
		const uint8_t *sc = b;
		float d = h2f(b + 80), dmin = h2f(b + 82);
		int is = 0;
#pragma GCC unroll 8
		for (int n = 0; n < 2; n++) {
			__m256i q = ld256(b + 16 + 32 * n);
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++, is += 2, y += 32) {
				__m256i v = _mm256_and_si256(
					_mm256_srli_epi16(q, 2 * j), m3);
				emit16_u_ms(y, lo128(v),
					    bc(d * (float)(sc[is] & 0xF)),
					    bc(dmin * (float)(sc[is] >> 4)));
				emit16_u_ms(
					y + 16, hi128(v),
					bc(d * (float)(sc[is + 1] & 0xF)),
					bc(dmin * (float)(sc[is + 1] >> 4)));
			}
		}
	}
}

/* Q3_K: hmask(32) qs(64) scales(12) d(2). */
TGT static void deq_q3_K(const uint8_t *b, float *y, int64_t nb)
{
	const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
	const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
	for (int64_t i = 0; i < nb; i++, b += 110) {
		uint32_t aux[4];
		memcpy(aux, b + 96, 12);
		uint32_t tmp = aux[2];
		aux[2] =
			((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
		aux[3] =
			((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
		aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
		aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
		int8_t sc[16];
		memcpy(sc, aux, 16);
		float d_all = h2f(b + 108);
		__m256i hm = ld256(b);
		int is = 0;
#pragma GCC unroll 8
		for (int n = 0; n < 2; n++) {
			__m256i q = ld256(b + 32 + 32 * n);
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++, is += 2, y += 32) {
				__m256i bit = _mm256_set1_epi8(
					(char)(1 << (4 * n + j)));
				__m256i v = _mm256_and_si256(
					_mm256_srli_epi16(q, 2 * j), m3);
				__m256i clear = _mm256_cmpeq_epi8(
					_mm256_and_si256(hm, bit),
					_mm256_setzero_si256());
				v = _mm256_sub_epi8(
					v, _mm256_and_si256(clear, four));
				emit16_s_m(y, lo128(v),
					   bc(d_all * (float)(sc[is] - 32)));
				emit16_s_m(
					y + 16, hi128(v),
					bc(d_all * (float)(sc[is + 1] - 32)));
			}
		}
	}
}

/* Q4_K: d(2) dmin(2) scales(12) qs(128). */
TGT static void deq_q4_K(const uint8_t *b, float *y, int64_t nb)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	for (int64_t i = 0; i < nb; i++, b += 144) {
		float d = h2f(b), dmin = h2f(b + 2);
		const uint8_t *scales = b + 4, *qs = b + 16;
#pragma GCC unroll 8
		for (int j = 0; j < 4; j++, qs += 32, y += 64) {
			int s1, m1, s2, m2;
			k4_scale_min(scales, 2 * j, &s1, &m1);
			k4_scale_min(scales, 2 * j + 1, &s2, &m2);
			__m256 d1 = bc(d * (float)s1);
			__m256 n1 = bc(dmin * (float)m1);
			__m256 d2 = bc(d * (float)s2);
			__m256 n2 = bc(dmin * (float)m2);
			__m256i q = ld256(qs);
			__m256i lo = _mm256_and_si256(q, m4);
			__m256i hi =
				_mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
			emit16_u_ms(y, lo128(lo), d1, n1);
			emit16_u_ms(y + 16, hi128(lo), d1, n1);
			emit16_u_ms(y + 32, lo128(hi), d2, n2);
			emit16_u_ms(y + 48, hi128(hi), d2, n2);
		}
	}
}

/* Q5_K: d(2) dmin(2) scales(12) qh(32) qs(128). */
TGT static void deq_q5_K(const uint8_t *b, float *y, int64_t nb)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F),
		      sixteen = _mm256_set1_epi8(16);
	for (int64_t i = 0; i < nb; i++, b += 176) {
		float d = h2f(b), dmin = h2f(b + 2);
		const uint8_t *scales = b + 4, *ql = b + 48;
		__m256i qh = ld256(b + 16);
#pragma GCC unroll 8
		for (int j = 0; j < 4; j++, ql += 32, y += 64) {
			int s1, m1, s2, m2;
			k4_scale_min(scales, 2 * j, &s1, &m1);
			k4_scale_min(scales, 2 * j + 1, &s2, &m2);
			__m256 d1 = bc(d * (float)s1);
			__m256 n1 = bc(dmin * (float)m1);
			__m256 d2 = bc(d * (float)s2);
			__m256 n2 = bc(dmin * (float)m2);
			__m256i u1 = _mm256_set1_epi8((char)(1 << (2 * j)));
			__m256i u2 = _mm256_set1_epi8((char)(1 << (2 * j + 1)));
			__m256i q = ld256(ql);
			__m256i h1 = _mm256_and_si256(
				_mm256_cmpeq_epi8(_mm256_and_si256(qh, u1), u1),
				sixteen);
			__m256i h2 = _mm256_and_si256(
				_mm256_cmpeq_epi8(_mm256_and_si256(qh, u2), u2),
				sixteen);
			__m256i lo =
				_mm256_or_si256(_mm256_and_si256(q, m4), h1);
			__m256i hi = _mm256_or_si256(
				_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
				h2);
			emit16_u_ms(y, lo128(lo), d1, n1);
			emit16_u_ms(y + 16, hi128(lo), d1, n1);
			emit16_u_ms(y + 32, lo128(hi), d2, n2);
			emit16_u_ms(y + 48, hi128(hi), d2, n2);
		}
	}
}

/* Q6_K: ql(128) qh(64) scales(16, signed) d(2). */
TGT static void deq_q6_K(const uint8_t *b, float *y, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, b += 210) {
		const uint8_t *ql = b, *qh = b + 128;
		const int8_t *sc = (const int8_t *)(b + 192);
		float d = h2f(b + 208);
#pragma GCC unroll 8
		for (int n = 0; n < 2;
		     n++, ql += 64, qh += 32, sc += 8, y += 128) {
			__m256i l0 = ld256(ql);
			__m256i l1 = ld256(ql + 32);
			__m256i hb = ld256(qh);
			__m256i q[4] = {
				q6_values(l0, _mm256_slli_epi16(hb, 4)),
				q6_values(l1, _mm256_slli_epi16(hb, 2)),
				q6_values(_mm256_srli_epi16(l0, 4), hb),
				q6_values(_mm256_srli_epi16(l1, 4),
					  _mm256_srli_epi16(hb, 2)),
			};
#pragma GCC unroll 8
			for (int k = 0; k < 4; k++) {
				emit16_s_m(y + 32 * k, lo128(q[k]),
					   bc(d * (float)sc[2 * k]));
				emit16_s_m(y + 32 * k + 16, hi128(q[k]),
					   bc(d * (float)sc[2 * k + 1]));
			}
		}
	}
}

TGT static void deq_f16(const uint8_t *b, float *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(
						(const __m128i *)(b + 2 * i))));
	for (; i < n; i++)
		y[i] = h2f(b + 2 * i);
}

TGT static void deq_bf16(const uint8_t *b, float *y, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256i v = _mm256_cvtepu16_epi32(ld128(b + 2 * i));
		_mm256_storeu_ps(y + i,
				 _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
	}
	for (; i < n; i++) {
		uint32_t u = (uint32_t)(b[2 * i] | b[2 * i + 1] << 8) << 16;
		memcpy(y + i, &u, 4);
	}
}

/* ---- the table -------------------------------------------------------------------- */

static const struct {
	uint32_t type;
	uint32_t blck;
	void (*fn)(const uint8_t *b, float *y, int64_t n_blocks);
} kernels[] = {
	{ MS_TYPE_Q8_0, 32, deq_q8_0 },	  { MS_TYPE_Q4_0, 32, deq_q4_0 },
	{ MS_TYPE_Q4_1, 32, deq_q4_1 },	  { MS_TYPE_IQ4_NL, 32, deq_iq4_nl },
	{ MS_TYPE_Q5_0, 32, deq_q5_0 },	  { MS_TYPE_Q5_1, 32, deq_q5_1 },
	{ MS_TYPE_MXFP4, 32, deq_mxfp4 }, { MS_TYPE_IQ4_XS, 256, deq_iq4_xs },
	{ MS_TYPE_Q2_K, 256, deq_q2_K },  { MS_TYPE_Q3_K, 256, deq_q3_K },
	{ MS_TYPE_Q4_K, 256, deq_q4_K },  { MS_TYPE_Q5_K, 256, deq_q5_K },
	{ MS_TYPE_Q6_K, 256, deq_q6_K },  { MS_TYPE_F16, 1, deq_f16 },
	{ MS_TYPE_BF16, 1, deq_bf16 },
};

#define N_KERNELS (sizeof(kernels) / sizeof(kernels[0]))

bool ms_ffn_avx2_has(uint32_t type)
{
	if (type == MS_TYPE_F32)
		return true;
	for (size_t i = 0; i < N_KERNELS; i++)
		if (kernels[i].type == type)
			return true;
	return false;
}

int ms_ffn_avx2_dequant(uint32_t type, const void *src, float *dst, int64_t n)
{
	if (type == MS_TYPE_F32) {
		memcpy(dst, src, (size_t)n * sizeof(float));
		return 0;
	}
	for (size_t i = 0; i < N_KERNELS; i++)
		if (kernels[i].type == type) {
			if (n < 0 || n % kernels[i].blck)
				return -EINVAL;
			kernels[i].fn(
				src, dst,
				kernels[i].blck == 1 ? n : n / kernels[i].blck);
			return 0;
		}
	return -ENOTSUP;
}

/* ---- dot products ----------------------------------------------------------------- */

#define FLUSH 1024 /* elements between flushes of f32 into double */

/* Adds the f32 pair (a0 + a1) into the double accumulator d. */
TGT_INLINE __m256d flush(__m256d d, __m256 a0, __m256 a1)
{
	__m256 s = _mm256_add_ps(a0, a1);
	d = _mm256_add_pd(d, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
	return _mm256_add_pd(d, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
}

/* Adds one f32 accumulator into the double accumulator d. */
TGT_INLINE __m256d flush1(__m256d d, __m256 a)
{
	d = _mm256_add_pd(d, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
	return _mm256_add_pd(d, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
}

TGT_INLINE float hsum_pd(__m256d d)
{
	__m128d lo = _mm256_castpd256_pd128(d),
		hi = _mm256_extractf128_pd(d, 1);
	double d0 = _mm_cvtsd_f64(lo),
	       d1 = _mm_cvtsd_f64(_mm_unpackhi_pd(lo, lo));
	double d2 = _mm_cvtsd_f64(hi),
	       d3 = _mm_cvtsd_f64(_mm_unpackhi_pd(hi, hi));
	return (float)((d0 + d1) + (d2 + d3));
}

/*
 * Four rows against two inputs: eight (row, input) pairs, one FMA chain
 * each, so that eight independent chains hide the FMA latency and each
 * 8-element load of a row serves two inputs. A pair's sequence of
 * operations is the same in every tile (a missing row or input is a copy of
 * the first, its result dropped), which is what makes the output independent
 * of B, of tiling and of threads. Written out by hand: arrays of
 * accumulators in a loop are kept in memory by the compiler.
 */
TGT_INLINE void dot_4x2(const float *w0, const float *w1, const float *w2,
			const float *w3, const float *x0, const float *x1,
			int64_t n, float out[4][2])
{
	__m256d d00 = _mm256_setzero_pd(), d01 = d00, d10 = d00, d11 = d00;
	__m256d d20 = d00, d21 = d00, d30 = d00, d31 = d00;
	for (int64_t c = 0; c < n; c += FLUSH) {
		int64_t e = c + FLUSH < n ? c + FLUSH : n;
		__m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00,
		       a11 = a00;
		__m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
		for (int64_t i = c; i < e; i += 8) {
			__m256 u = _mm256_loadu_ps(x0 + i),
			       v = _mm256_loadu_ps(x1 + i);
			__m256 w = _mm256_loadu_ps(w0 + i);
			a00 = _mm256_fmadd_ps(w, u, a00);
			a01 = _mm256_fmadd_ps(w, v, a01);
			w = _mm256_loadu_ps(w1 + i);
			a10 = _mm256_fmadd_ps(w, u, a10);
			a11 = _mm256_fmadd_ps(w, v, a11);
			w = _mm256_loadu_ps(w2 + i);
			a20 = _mm256_fmadd_ps(w, u, a20);
			a21 = _mm256_fmadd_ps(w, v, a21);
			w = _mm256_loadu_ps(w3 + i);
			a30 = _mm256_fmadd_ps(w, u, a30);
			a31 = _mm256_fmadd_ps(w, v, a31);
		}
		d00 = flush1(d00, a00);
		d01 = flush1(d01, a01);
		d10 = flush1(d10, a10);
		d11 = flush1(d11, a11);
		d20 = flush1(d20, a20);
		d21 = flush1(d21, a21);
		d30 = flush1(d30, a30);
		d31 = flush1(d31, a31);
	}
	out[0][0] = hsum_pd(d00);
	out[0][1] = hsum_pd(d01);
	out[1][0] = hsum_pd(d10);
	out[1][1] = hsum_pd(d11);
	out[2][0] = hsum_pd(d20);
	out[2][1] = hsum_pd(d21);
	out[3][0] = hsum_pd(d30);
	out[3][1] = hsum_pd(d31);
}

TGT void ms_ffn_avx2_dot(const float *w, int n_rows, const float *x,
			 int64_t ldx, int64_t nb, int64_t n, float *out,
			 int64_t ld_out)
{
	float o[4][2];
	for (int64_t b = 0; b < nb; b += 2) {
		int nt = nb - b < 2 ? (int)(nb - b) : 2;
		const float *x0 = x + b * ldx, *x1 = nt > 1 ? x0 + ldx : x0;
		for (int r = 0; r < n_rows; r += 4) {
			int nr = n_rows - r < 4 ? n_rows - r : 4;
			const float *w0 = w + (int64_t)r * n;
			dot_4x2(w0, nr > 1 ? w0 + n : w0,
				nr > 2 ? w0 + 2 * n : w0,
				nr > 3 ? w0 + 3 * n : w0, x0, x1, n, o);
			for (int i = 0; i < nr; i++)
				for (int t = 0; t < nt; t++)
					out[(b + t) * ld_out + r + i] = o[i][t];
		}
	}
}

/* ---- fused dequantise + dot, one row against one input (decode) ------------------- */

/*
 * For B = 1 the dequantised row would be written once and read once: the
 * store and the load cost as much as the dequantisation. These kernels take
 * the scales out of the sums instead,
 *     sum_i (dl q_i - ml) x_i = dl sum_i q_i x_i - ml sum_i x_i,
 * so each weight costs a widening, a conversion and an FMA; the sums of x
 * over every 16 and 32 elements (xs16, xs32) are computed once per input by
 * the caller. The products round differently from "dequantise, then dot"
 * (dl q_i is never rounded on its own), well inside the 1e-5 the tests hold
 * the FFN to. Two accumulators (even and odd sub-blocks) hide the FMA
 * latency; they are flushed into double every 1024 elements, as in the dot.
 */

/* sum over 16 elements of q[i] x[i], signed / unsigned bytes, as 8 lanes */
TGT_INLINE __m256 dot16s(__m128i q, const float *x)
{
	__m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
				 _mm256_loadu_ps(x));
	return _mm256_fmadd_ps(
		_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))),
		_mm256_loadu_ps(x + 8), a);
}

TGT_INLINE __m256 dot16u(__m128i q, const float *x)
{
	__m256 a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)),
				 _mm256_loadu_ps(x));
	return _mm256_fmadd_ps(
		_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8))),
		_mm256_loadu_ps(x + 8), a);
}

#define ACC_DECL                                                               \
	__m256d dacc = _mm256_setzero_pd();                                    \
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();         \
	int64_t since = 0
/* after each block of `blck` elements */
#define ACC_STEP(blck)                                                         \
	do {                                                                   \
		since += (blck);                                               \
		if (since >= FLUSH) {                                          \
			dacc = flush(dacc, acc0, acc1);                        \
			acc0 = acc1 = _mm256_setzero_ps();                     \
			since = 0;                                             \
		}                                                              \
	} while (0)
#define ACC_RETURN return hsum_pd(since ? flush(dacc, acc0, acc1) : dacc)

TGT static float rd_q8_0(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 34, x += 32) {
		__m256 d = bc(h2f(b));
		acc0 = _mm256_fmadd_ps(dot16s(ld128(b + 2), x), d, acc0);
		acc1 = _mm256_fmadd_ps(dot16s(ld128(b + 18), x + 16), d, acc1);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_q4_0(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 18, x += 32) {
		__m256 d = bc(h2f(b));
		__m128i q = ld128(b + 2);
		__m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
		__m128i hi = _mm_sub_epi8(
			_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
		acc0 = _mm256_fmadd_ps(dot16s(lo, x), d, acc0);
		acc1 = _mm256_fmadd_ps(dot16s(hi, x + 16), d, acc1);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_q5_0(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 22, x += 32) {
		__m256 d = bc(h2f(b));
		__m256i v = _mm256_sub_epi8(q5_values(b + 2, b + 6),
					    _mm256_set1_epi8(16));
		acc0 = _mm256_fmadd_ps(dot16s(lo128(v), x), d, acc0);
		acc1 = _mm256_fmadd_ps(dot16s(hi128(v), x + 16), d, acc1);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

/* Q5_1 and Q4_1 add m * (sum of x over the block), in lane 0. */
TGT static float rd_q5_1(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 24, x += 32, xs32++) {
		__m256 d = bc(h2f(b));
		__m256i v = q5_values(b + 4, b + 8);
		acc0 = _mm256_fmadd_ps(dot16u(lo128(v), x), d, acc0);
		acc1 = _mm256_fmadd_ps(dot16u(hi128(v), x + 16), d, acc1);
		acc1 = _mm256_add_ps(acc1, _mm256_setr_ps(h2f(b + 2) * xs32[0],
							  0, 0, 0, 0, 0, 0, 0));
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_q4_1(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16;
	const __m128i m4 = _mm_set1_epi8(0x0F);
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 20, x += 32, xs32++) {
		__m256 d = bc(h2f(b));
		__m128i q = ld128(b + 4);
		acc0 = _mm256_fmadd_ps(dot16u(_mm_and_si128(q, m4), x), d,
				       acc0);
		acc1 = _mm256_fmadd_ps(
			dot16u(_mm_and_si128(_mm_srli_epi16(q, 4), m4), x + 16),
			d, acc1);
		acc1 = _mm256_add_ps(acc1, _mm256_setr_ps(h2f(b + 2) * xs32[0],
							  0, 0, 0, 0, 0, 0, 0));
		ACC_STEP(32);
	}
	ACC_RETURN;
}

/* IQ4_NL and MXFP4 blocks: nibbles through a signed table, one scale. */
TGT_INLINE void nl_dot(const uint8_t *qs, __m128i lut, __m256 d, const float *x,
		       __m256 *acc0, __m256 *acc1)
{
	const __m128i m4 = _mm_set1_epi8(0x0F);
	__m128i q = ld128(qs);
	__m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(q, m4));
	__m128i hi =
		_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
	*acc0 = _mm256_fmadd_ps(dot16s(lo, x), d, *acc0);
	*acc1 = _mm256_fmadd_ps(dot16s(hi, x + 16), d, *acc1);
}

TGT static float rd_iq4_nl(const uint8_t *b, const float *x, const float *xs16,
			   const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	const __m128i lut = ld128(kvalues_iq4nl);
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 18, x += 32) {
		nl_dot(b + 2, lut, bc(h2f(b)), x, &acc0, &acc1);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_mxfp4(const uint8_t *b, const float *x, const float *xs16,
			  const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	const __m128i lut = ld128(kvalues_mxfp4);
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 17, x += 32) {
		nl_dot(b + 1, lut, bc(e8m0_half(b[0])), x, &acc0, &acc1);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_iq4_xs(const uint8_t *b, const float *x, const float *xs16,
			   const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	const __m128i lut = ld128(kvalues_iq4nl);
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 136) {
		float d = h2f(b);
		uint16_t sh;
		memcpy(&sh, b + 2, 2);
		const uint8_t *sl = b + 4, *qs = b + 8;
#pragma GCC unroll 8
		for (int ib = 0; ib < 8; ib++, qs += 16, x += 32) {
			int ls = ((sl[ib / 2] >> 4 * (ib % 2)) & 0xf) |
				 (((sh >> 2 * ib) & 3) << 4);
			nl_dot(qs, lut, bc(d * (float)(ls - 32)), x, &acc0,
			       &acc1);
		}
		ACC_STEP(256);
	}
	ACC_RETURN;
}

/* ---- the K-quants over one or two inputs at once ----
 * Each quantised row is unpacked once and dotted with two inputs
 * (continuous batching: a decode step of several sequences). For each input
 * the operations and their order are those of one input alone: the result
 * for a token is the same bit for bit whether it came alone or with
 * others, and costs the unpacking once. rd_TYPE (one input) is NT = 1. */
#define MT 2
#define ACCM_DECL                                                              \
	__m256d dacc[MT];                                                      \
	__m256 acc0[MT], acc1[MT];                                             \
	int64_t since = 0;                                                     \
	for (int t = 0; t < NT; t++) {                                         \
		dacc[t] = _mm256_setzero_pd();                                 \
		acc0[t] = acc1[t] = _mm256_setzero_ps();                       \
	}
#define ACCM_STEP(blck)                                                        \
	do {                                                                   \
		since += (blck);                                               \
		if (since >= FLUSH) {                                          \
			for (int t = 0; t < NT; t++) {                         \
				dacc[t] = flush(dacc[t], acc0[t], acc1[t]);    \
				acc0[t] = acc1[t] = _mm256_setzero_ps();       \
			}                                                      \
			since = 0;                                             \
		}                                                              \
	} while (0)
#define ACCM_RETURN                                                            \
	for (int t = 0; t < NT; t++)                                           \
	out[t] = hsum_pd(since ? flush(dacc[t], acc0[t], acc1[t]) : dacc[t])

/* 16 bytes as floats, unsigned / signed; dot16f(f, x) is dot16u / dot16s's
 * arithmetic on them */
TGT_INLINE void cvt16u(__m128i q, __m256 f[2])
{
	f[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
	f[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
}

TGT_INLINE void cvt16s(__m128i q, __m256 f[2])
{
	f[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
	f[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
}

/* the 16 weights of a sub-block, dequantised in registers (q x its
 * scale, rounded to f32 as "dequantise, then dot" rounds them), then
 * accumulated against an input: two FMAs per input */
TGT_INLINE void scale16(__m256 f[2], __m256 s)
{
	f[0] = _mm256_mul_ps(f[0], s);
	f[1] = _mm256_mul_ps(f[1], s);
}

TGT_INLINE __m256 fma16(const __m256 f[2], const float *x, __m256 acc)
{
	acc = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(x), acc);
	return _mm256_fmadd_ps(f[1], _mm256_loadu_ps(x + 8), acc);
}

/* Two sub-blocks of 16 quants (v's low and high halves, signed or not),
 * scales s0 and s1, into every input's two accumulators at offset o. */
TGT_INLINE void sub32(__m256i v, const bool sgn, float s0, float s1,
		      const float *const *xv, int64_t o, __m256 *acc0,
		      __m256 *acc1, const int NT)
{
	__m256 f0[2], f1[2];
	if (sgn) {
		cvt16s(lo128(v), f0);
		cvt16s(hi128(v), f1);
	} else {
		cvt16u(lo128(v), f0);
		cvt16u(hi128(v), f1);
	}
	scale16(f0, bc(s0));
	scale16(f1, bc(s1));
	for (int t = 0; t < NT; t++) {
		acc0[t] = fma16(f0, xv[t] + o, acc0[t]);
		acc1[t] = fma16(f1, xv[t] + o + 16, acc1[t]);
	}
}

TGT_INLINE void rdm_q2_K(const uint8_t *b, const float *const *xv,
			 const float *const *x16v, const float *const *x32v,
			 int64_t n, float *out, const int NT)
{
	(void)x32v;
	const __m256i m3 = _mm256_set1_epi8(3);
	const __m128i m4 = _mm_set1_epi8(0x0F);
	ACCM_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 84) {
		const uint8_t *sc = b;
		float d = h2f(b + 80), dmin = h2f(b + 82);
#pragma GCC unroll 8
		for (int h = 0; h < 2; h++) {
			__m256i q = ld256(b + 16 + 32 * h);
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++) {
				int is = 8 * h + 2 * j;
				int64_t o = i + 128 * h + 32 * j;
				__m256i v = _mm256_and_si256(
					_mm256_srli_epi16(q, 2 * j), m3);
				sub32(v, false, d * (float)(sc[is] & 0xF),
				      d * (float)(sc[is + 1] & 0xF), xv, o, acc0,
				      acc1, NT);
			}
		}
		/* mins: dmin * sum_j m_j xs16_j, m_j = scales[j] >> 4 */
		__m128i m = _mm_and_si128(_mm_srli_epi16(ld128(sc), 4), m4);
		__m256 mlo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m)),
		       mhi = _mm256_cvtepi32_ps(
			       _mm256_cvtepu8_epi32(_mm_srli_si128(m, 8)));
		for (int t = 0; t < NT; t++) {
			const float *xs = x16v[t] + i / 16;
			__m256 mv = _mm256_mul_ps(mlo, _mm256_loadu_ps(xs));
			mv = _mm256_fmadd_ps(mhi, _mm256_loadu_ps(xs + 8), mv);
			acc0[t] = _mm256_fnmadd_ps(mv, bc(dmin), acc0[t]);
		}
		ACCM_STEP(256);
	}
	ACCM_RETURN;
}

TGT_INLINE void rdm_q3_K(const uint8_t *b, const float *const *xv,
			 const float *const *x16v, const float *const *x32v,
			 int64_t n, float *out, const int NT)
{
	(void)x16v, (void)x32v;
	const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
	const __m256i m3 = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
	ACCM_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 110) {
		uint32_t aux[4];
		memcpy(aux, b + 96, 12);
		uint32_t tmp = aux[2];
		aux[2] =
			((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
		aux[3] =
			((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
		aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
		aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
		int8_t sc[16];
		memcpy(sc, aux, 16);
		float d_all = h2f(b + 108);
		__m256i hm = ld256(b);
#pragma GCC unroll 8
		for (int h = 0; h < 2; h++) {
			__m256i q = ld256(b + 32 + 32 * h);
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++) {
				int is = 8 * h + 2 * j;
				int64_t o = i + 128 * h + 32 * j;
				__m256i bit = _mm256_set1_epi8(
					(char)(1 << (4 * h + j)));
				__m256i v = _mm256_and_si256(
					_mm256_srli_epi16(q, 2 * j), m3);
				__m256i clear = _mm256_cmpeq_epi8(
					_mm256_and_si256(hm, bit),
					_mm256_setzero_si256());
				v = _mm256_sub_epi8(
					v, _mm256_and_si256(clear, four));
				sub32(v, true, d_all * (float)(sc[is] - 32),
				      d_all * (float)(sc[is + 1] - 32), xv, o, acc0,
				      acc1, NT);
			}
		}
		ACCM_STEP(256);
	}
	ACCM_RETURN;
}

/* Q4_K and Q5_K share the scale layout; `qh` NULL for Q4_K. */
TGT_INLINE void k4_block(const uint8_t *b, const uint8_t *qs,
			 const uint8_t *qhp, const float *const *xv,
			 const float *const *x32v, int64_t i, __m256 *acc0,
			 __m256 *acc1, const int NT)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F),
		      sixteen = _mm256_set1_epi8(16);
	float d = h2f(b), dmin = h2f(b + 2);
	const uint8_t *scales = b + 4;
	int s[8], m[8];
#pragma GCC unroll 8
	for (int j = 0; j < 8; j++)
		k4_scale_min(scales, j, &s[j], &m[j]);
	__m256i qh = qhp ? ld256(qhp) : _mm256_setzero_si256();
#pragma GCC unroll 8
	for (int j = 0; j < 4; j++, qs += 32) {
		int64_t o = i + 64 * j;
		__m256i q = ld256(qs);
		__m256i lo = _mm256_and_si256(q, m4);
		__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
		if (qhp) {
			__m256i u1 = _mm256_set1_epi8((char)(1 << (2 * j)));
			__m256i u2 = _mm256_set1_epi8((char)(1 << (2 * j + 1)));
			lo = _mm256_or_si256(
				lo,
				_mm256_and_si256(
					_mm256_cmpeq_epi8(
						_mm256_and_si256(qh, u1), u1),
					sixteen));
			hi = _mm256_or_si256(
				hi,
				_mm256_and_si256(
					_mm256_cmpeq_epi8(
						_mm256_and_si256(qh, u2), u2),
					sixteen));
		}
		__m256 l0[2], l1[2], h0[2], h1[2];
		cvt16u(lo128(lo), l0);
		cvt16u(hi128(lo), l1);
		cvt16u(lo128(hi), h0);
		cvt16u(hi128(hi), h1);
		__m256 c1 = bc(d * (float)s[2 * j]), c2 = bc(d * (float)s[2 * j + 1]);
		scale16(l0, c1);
		scale16(l1, c1);
		scale16(h0, c2);
		scale16(h1, c2);
		for (int t = 0; t < NT; t++) {
			const float *x = xv[t] + o;
			acc0[t] = fma16(l1, x + 16, fma16(l0, x, acc0[t]));
			acc1[t] = fma16(h1, x + 48, fma16(h0, x + 32, acc1[t]));
		}
	}
	__m256 mm = _mm256_setr_ps(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]);
	for (int t = 0; t < NT; t++) {
		__m256 mv = _mm256_mul_ps(mm, _mm256_loadu_ps(x32v[t] + i / 32));
		acc0[t] = _mm256_fnmadd_ps(mv, bc(dmin), acc0[t]);
	}
}

TGT_INLINE void rdm_q4_K(const uint8_t *b, const float *const *xv,
			 const float *const *x16v, const float *const *x32v,
			 int64_t n, float *out, const int NT)
{
	(void)x16v;
	ACCM_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 144) {
		k4_block(b, b + 16, NULL, xv, x32v, i, acc0, acc1, NT);
		ACCM_STEP(256);
	}
	ACCM_RETURN;
}

TGT_INLINE void rdm_q5_K(const uint8_t *b, const float *const *xv,
			 const float *const *x16v, const float *const *x32v,
			 int64_t n, float *out, const int NT)
{
	(void)x16v;
	ACCM_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 176) {
		k4_block(b, b + 48, b + 16, xv, x32v, i, acc0, acc1, NT);
		ACCM_STEP(256);
	}
	ACCM_RETURN;
}

TGT_INLINE void rdm_q6_K(const uint8_t *b, const float *const *xv,
			 const float *const *x16v, const float *const *x32v,
			 int64_t n, float *out, const int NT)
{
	(void)x16v, (void)x32v;
	ACCM_DECL;
	for (int64_t i = 0; i < n; i += 256, b += 210) {
		const uint8_t *ql = b, *qh = b + 128;
		const int8_t *sc = (const int8_t *)(b + 192);
		float d = h2f(b + 208);
#pragma GCC unroll 8
		for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8) {
			__m256i l0 = ld256(ql);
			__m256i l1 = ld256(ql + 32);
			__m256i hb = ld256(qh);
			__m256i q[4] = {
				q6_values(l0, _mm256_slli_epi16(hb, 4)),
				q6_values(l1, _mm256_slli_epi16(hb, 2)),
				q6_values(_mm256_srli_epi16(l0, 4), hb),
				q6_values(_mm256_srli_epi16(l1, 4),
					  _mm256_srli_epi16(hb, 2)),
			};
#pragma GCC unroll 8
			for (int k = 0; k < 4; k++) {
				int64_t o = i + 128 * h + 32 * k;
				sub32(q[k], true, d * (float)sc[2 * k],
				      d * (float)sc[2 * k + 1], xv, o, acc0, acc1, NT);
			}
		}
		ACCM_STEP(256);
	}
	ACCM_RETURN;
}

/* rd_TYPE: one input; rdn_TYPE: nt of them (1 or 2: more spill the
 * sixteen registers), each bit-identical to rd_TYPE on it alone */
#define RD_MULTI(T)                                                            \
	TGT static float rd_##T(const uint8_t *b, const float *x,              \
				const float *xs16, const float *xs32,          \
				int64_t n)                                     \
	{                                                                      \
		float o;                                                       \
		const float *xv[1] = { x }, *a[1] = { xs16 }, *c[1] = { xs32 }; \
		rdm_##T(b, xv, a, c, n, &o, 1);                                \
		return o;                                                      \
	}                                                                      \
	TGT static void rdn_##T(const uint8_t *b, const float *const *xv,      \
				const float *const *a, const float *const *c,  \
				int64_t n, float *out, int nt)                 \
	{                                                                      \
		if (nt == 1)                                                   \
			rdm_##T(b, xv, a, c, n, out, 1);                       \
		else                                                           \
			rdm_##T(b, xv, a, c, n, out, 2);                       \
	}
RD_MULTI(q2_K)
RD_MULTI(q3_K)
RD_MULTI(q4_K)
RD_MULTI(q5_K)
RD_MULTI(q6_K)

/* Plain floats: four independent FMA chains, paired into acc0/acc1. */
TGT static float rd_f16(const uint8_t *b, const float *x, const float *xs16,
			const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 64, x += 32) {
		__m256 a = _mm256_mul_ps(_mm256_cvtph_ps(ld128(b)),
					 _mm256_loadu_ps(x));
		__m256 c = _mm256_mul_ps(_mm256_cvtph_ps(ld128(b + 16)),
					 _mm256_loadu_ps(x + 8));
		a = _mm256_fmadd_ps(_mm256_cvtph_ps(ld128(b + 32)),
				    _mm256_loadu_ps(x + 16), a);
		c = _mm256_fmadd_ps(_mm256_cvtph_ps(ld128(b + 48)),
				    _mm256_loadu_ps(x + 24), c);
		acc0 = _mm256_add_ps(acc0, a);
		acc1 = _mm256_add_ps(acc1, c);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT_INLINE __m256 bf16x8(const uint8_t *b)
{
	return _mm256_castsi256_ps(
		_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(b)), 16));
}

TGT static float rd_bf16(const uint8_t *b, const float *x, const float *xs16,
			 const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, b += 64, x += 32) {
		__m256 a = _mm256_mul_ps(bf16x8(b), _mm256_loadu_ps(x));
		__m256 c =
			_mm256_mul_ps(bf16x8(b + 16), _mm256_loadu_ps(x + 8));
		a = _mm256_fmadd_ps(bf16x8(b + 32), _mm256_loadu_ps(x + 16), a);
		c = _mm256_fmadd_ps(bf16x8(b + 48), _mm256_loadu_ps(x + 24), c);
		acc0 = _mm256_add_ps(acc0, a);
		acc1 = _mm256_add_ps(acc1, c);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

TGT static float rd_f32(const uint8_t *b, const float *x, const float *xs16,
			const float *xs32, int64_t n)
{
	(void)xs16, (void)xs32;
	const float *w = (const float *)(const void *)b;
	ACC_DECL;
	for (int64_t i = 0; i < n; i += 32, w += 32, x += 32) {
		__m256 a =
			_mm256_mul_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(x));
		__m256 c = _mm256_mul_ps(_mm256_loadu_ps(w + 8),
					 _mm256_loadu_ps(x + 8));
		a = _mm256_fmadd_ps(_mm256_loadu_ps(w + 16),
				    _mm256_loadu_ps(x + 16), a);
		c = _mm256_fmadd_ps(_mm256_loadu_ps(w + 24),
				    _mm256_loadu_ps(x + 24), c);
		acc0 = _mm256_add_ps(acc0, a);
		acc1 = _mm256_add_ps(acc1, c);
		ACC_STEP(32);
	}
	ACC_RETURN;
}

static const struct {
	uint32_t type;
	ms_ffn_rowdot_fn fn;
} rowdots[] = {
	{ MS_TYPE_Q8_0, rd_q8_0 },   { MS_TYPE_Q4_0, rd_q4_0 },
	{ MS_TYPE_Q4_1, rd_q4_1 },   { MS_TYPE_Q5_0, rd_q5_0 },
	{ MS_TYPE_Q5_1, rd_q5_1 },   { MS_TYPE_IQ4_NL, rd_iq4_nl },
	{ MS_TYPE_MXFP4, rd_mxfp4 }, { MS_TYPE_IQ4_XS, rd_iq4_xs },
	{ MS_TYPE_Q2_K, rd_q2_K },   { MS_TYPE_Q3_K, rd_q3_K },
	{ MS_TYPE_Q4_K, rd_q4_K },   { MS_TYPE_Q5_K, rd_q5_K },
	{ MS_TYPE_Q6_K, rd_q6_K },   { MS_TYPE_F16, rd_f16 },
	{ MS_TYPE_BF16, rd_bf16 },   { MS_TYPE_F32, rd_f32 },
};

static const struct {
	uint32_t type;
	ms_ffn_rowdot_multi_fn fn;
} rowdots_multi[] = {
	{ MS_TYPE_Q2_K, rdn_q2_K }, { MS_TYPE_Q3_K, rdn_q3_K },
	{ MS_TYPE_Q4_K, rdn_q4_K }, { MS_TYPE_Q5_K, rdn_q5_K },
	{ MS_TYPE_Q6_K, rdn_q6_K },
};

ms_ffn_rowdot_multi_fn ms_ffn_avx2_rowdot_multi(uint32_t type)
{
	for (size_t i = 0; i < sizeof(rowdots_multi) / sizeof(rowdots_multi[0]);
	     i++)
		if (rowdots_multi[i].type == type)
			return rowdots_multi[i].fn;
	return NULL;
}

ms_ffn_rowdot_fn ms_ffn_avx2_rowdot(uint32_t type)
{
	for (size_t i = 0; i < sizeof(rowdots) / sizeof(rowdots[0]); i++)
		if (rowdots[i].type == type)
			return rowdots[i].fn;
	return NULL;
}

#else /* not x86-64: the scalar path only */

bool ms_ffn_avx2_cpu(void)
{
	return false;
}

bool ms_ffn_avx2_has(uint32_t type)
{
	(void)type;
	return false;
}

int ms_ffn_avx2_dequant(uint32_t type, const void *src, float *dst, int64_t n)
{
	(void)type, (void)src, (void)dst, (void)n;
	return -ENOTSUP;
}

void ms_ffn_avx2_dot(const float *w, int n_rows, const float *x, int64_t ldx,
		     int64_t nb, int64_t n, float *out, int64_t ld_out)
{
	(void)w, (void)n_rows, (void)x, (void)ldx, (void)nb, (void)n;
	(void)out, (void)ld_out;
}

ms_ffn_rowdot_fn ms_ffn_avx2_rowdot(uint32_t type)
{
	(void)type;
	return NULL;
}

ms_ffn_rowdot_multi_fn ms_ffn_avx2_rowdot_multi(uint32_t type)
{
	(void)type;
	return NULL;
}

#endif
