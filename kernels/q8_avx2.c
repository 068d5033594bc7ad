/*
 * q8_avx2.c - kernels/q8.c's unpackers and dot in AVX2, the same bits.
 *
 * Unpacking a block is a handful of shifts and masks per 32 codes (the
 * layouts put 32 consecutive elements in 32 consecutive bytes, or in the
 * same bit field of them), done once per row whatever the number of inputs.
 * The dot per block: for each 32 codes one unsigned x signed byte
 * multiply-add into 16-bit pairs (at most 2 x 63 x 127 = 16002: no
 * saturation), one 16-bit multiply-add by the two groups' scales into 8
 * 32-bit lanes (exact), then per lane into floats as ms_q8_factors says,
 * with one horizontal sum per row, not per block: ffn_internal.h has the
 * lane layout every form keeps, so all give the same bits.
 *
 * Like ffn_avx2.c, compiled with the project's flags; each function carries
 * the target attribute and is only reached after ms_ffn_avx2_cpu().
 */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/model.h"

#include "ffn_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma,f16c")))
#define TGT_INLINE static inline __attribute__((always_inline)) TGT

TGT_INLINE __m256i ld(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

TGT_INLINE void st(uint8_t *p, __m256i v)
{
	_mm256_store_si256((__m256i *)p, v);
}

/* Each byte's bit `b` (0..7) as 0/1. A 16-bit shift is fine: the mask
 * keeps only what came from the byte's own bit. */
TGT_INLINE __m256i bit_of(__m256i v, int b)
{
	return _mm256_and_si256(_mm256_srli_epi16(v, b), _mm256_set1_epi8(1));
}

/* ---- block headers: kernels/q8.c's hdr_* in a few word operations ---------------- */

TGT_INLINE float h2f(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

/* 16 unsigned bytes -> w->s (and w->m when m is NULL: the same) as int16,
 * minus `sub`. */
TGT_INLINE void put16(int16_t *dst, __m128i bytes, int sub)
{
	__m256i v = _mm256_sub_epi16(_mm256_cvtepu8_epi16(bytes),
				     _mm256_set1_epi16((short)sub));
	_mm256_storeu_si256((__m256i *)dst, v);
}

/* 8 unsigned bytes (a u64) -> 16 int16, each twice (a scale per 32
 * elements, stored per 16). */
TGT_INLINE void put8x2(int16_t *dst, uint64_t b8)
{
	__m128i v = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)b8));
	__m256i d = _mm256_setr_m128i(_mm_unpacklo_epi16(v, v),
				      _mm_unpackhi_epi16(v, v));
	_mm256_storeu_si256((__m256i *)dst, d);
}

TGT_INLINE void hdr_q2_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = h2f(x + 80);
	w->dm = h2f(x + 82);
	w->off = 0;
	__m128i sc = _mm_loadu_si128((const __m128i *)x);
	put16(w->s, _mm_and_si128(sc, _mm_set1_epi8(0x0f)), 0);
	put16(w->m, _mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0f)), 0);
}

/* Q3_K's 16 6-bit scales as words, less 32: groups 0..7 from the low
 * nibbles of bytes 0..7 and top bits 0-1 then 2-3 of bytes 8..11; groups
 * 8..15 from the high nibbles and top bits 4-5 then 6-7. */
TGT_INLINE __m256i q3_scales16(const uint8_t *x)
{
	uint64_t lo;
	uint32_t hi;
	memcpy(&lo, x + 96, 8);
	memcpy(&hi, x + 104, 4);
	const uint64_t m4 = 0x0f0f0f0f0f0f0f0full;
	const uint32_t m2 = 0x03030303u;
	uint64_t a = (lo & m4) | ((uint64_t)(hi & m2) | (uint64_t)((hi >> 2) & m2) << 32) << 4;
	uint64_t b = ((lo >> 4) & m4) |
		     ((uint64_t)((hi >> 4) & m2) | (uint64_t)((hi >> 6) & m2) << 32) << 4;
	return _mm256_sub_epi16(
		_mm256_cvtepu8_epi16(_mm_set_epi64x((long long)b, (long long)a)),
		_mm256_set1_epi16(32));
}

TGT_INLINE void hdr_q3_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = h2f(x + 108);
	w->dm = 0;
	w->off = 4;
	_mm256_storeu_si256((__m256i *)w->s, q3_scales16(x));
	memcpy(w->m, w->s, sizeof(w->m));
}

/* Q4_K/Q5_K's 8 6-bit scales and 8 mins as bytes. */
TGT_INLINE void q4_scale_bytes(const uint8_t *x, uint64_t *sc, uint64_t *mn)
{
	uint32_t w0, w1, w2;
	memcpy(&w0, x + 4, 4);
	memcpy(&w1, x + 8, 4);
	memcpy(&w2, x + 12, 4);
	const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, t2 = 0x30303030u;
	*sc = (w0 & m6) | (uint64_t)((w2 & m4) | ((w0 >> 2) & t2)) << 32;
	*mn = (w1 & m6) | (uint64_t)(((w2 >> 4) & m4) | ((w1 >> 2) & t2)) << 32;
}

TGT_INLINE void hdr_q4_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = h2f(x);
	w->dm = h2f(x + 2);
	w->off = 0;
	uint64_t sc, mn;
	q4_scale_bytes(x, &sc, &mn);
	put8x2(w->s, sc);
	put8x2(w->m, mn);
}

TGT_INLINE void hdr_q6_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = h2f(x + 208);
	w->dm = 0;
	w->off = 32;
	__m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 192)));
	_mm256_storeu_si256((__m256i *)w->s, v);
	_mm256_storeu_si256((__m256i *)w->m, v);
}

TGT static void up_q2_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	for (int64_t i = 0; i < nb; i++, x += 84, w++) {
		hdr_q2_K(x, w);
		for (int h = 0; h < 2; h++) {
			__m256i q = ld(x + 16 + 32 * h);
			for (int j = 0; j < 4; j++)
				st(w->u + 128 * h + 32 * j,
				   _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3));
		}
	}
}

TGT static void up_q3_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	for (int64_t i = 0; i < nb; i++, x += 110, w++) {
		hdr_q3_K(x, w);
		__m256i hm = ld(x);
		for (int h = 0; h < 2; h++) {
			__m256i q = ld(x + 32 + 32 * h);
			for (int j = 0; j < 4; j++) {
				__m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
				__m256i hb = _mm256_slli_epi16(bit_of(hm, 4 * h + j), 2);
				st(w->u + 128 * h + 32 * j, _mm256_or_si256(lo, hb));
			}
		}
	}
}

TGT_INLINE void k45(const uint8_t *qh, const uint8_t *qs, struct ms_q8_w *w)
{
	const __m256i m4 = _mm256_set1_epi8(0x0f);
	__m256i h = qh ? ld(qh) : _mm256_setzero_si256();
	for (int j = 0; j < 4; j++) {
		__m256i q = ld(qs + 32 * j);
		__m256i lo = _mm256_and_si256(q, m4);
		__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
		if (qh) {
			lo = _mm256_or_si256(lo, _mm256_slli_epi16(bit_of(h, 2 * j), 4));
			hi = _mm256_or_si256(hi, _mm256_slli_epi16(bit_of(h, 2 * j + 1), 4));
		}
		st(w->u + 64 * j, lo);
		st(w->u + 64 * j + 32, hi);
	}
}

TGT static void up_q4_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 144, w++) {
		hdr_q4_K(x, w);
		k45(NULL, x + 16, w);
	}
}

TGT static void up_q5_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 176, w++) {
		hdr_q4_K(x, w);
		k45(x + 16, x + 48, w);
	}
}

TGT static void up_q6_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
	for (int64_t i = 0; i < nb; i++, x += 210, w++) {
		hdr_q6_K(x, w);
		for (int h = 0; h < 2; h++) {
			__m256i qh = ld(x + 128 + 32 * h);
			__m256i l0 = ld(x + 64 * h), l1 = ld(x + 64 * h + 32);
			for (int r = 0; r < 4; r++) {
				__m256i ql = r % 2 ? l1 : l0;
				__m256i lo = _mm256_and_si256(
					_mm256_srli_epi16(ql, 4 * (r / 2)), m4);
				__m256i hi = _mm256_and_si256(
					_mm256_srli_epi16(qh, 2 * r), m3);
				st(w->u + 128 * h + 32 * r,
				   _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)));
			}
		}
	}
}

TGT_INLINE int32_t hsum32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
				  _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

/* acc += fa * float(a), one lane each: ms_q8_factors' per-block step */
TGT_INLINE __m256 lane_step(__m256 acc, float f, __m256i a)
{
	return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(f),
						_mm256_cvtepi32_ps(a)));
}

/* ms_q8_tree8 of acc - accm */
TGT_INLINE float lane_tree(__m256 acc, __m256 accm)
{
	__m256 r = _mm256_sub_ps(acc, accm);
	__m128 a = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
	__m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
	return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

/* One input's block done: its lanes a (and M from the mins mv and the
 * input's sums) into acc and accm. */
TGT_INLINE void lane_block(__m256 *acc, __m256 *accm, const struct ms_q8_w *w,
			   const struct ms_q8_act *x, __m256i a, __m256i mv)
{
	float fa, fm;
	ms_q8_factors(w, x, &fa, &fm);
	*acc = lane_step(*acc, fa, a);
	*accm = lane_step(*accm, fm, _mm256_madd_epi16(mv, ld(x->bsum)));
}

/* The entry point of a fused form: nt (1..4) as a constant, so that the
 * inputs' loops unroll. */
#define NT_SWITCH(F, A, B, C, D, E)                                                   \
	switch (nt) {                                                                 \
	case 1: F(A, B, C, D, E, 1); break;                                           \
	case 2: F(A, B, C, D, E, 2); break;                                           \
	case 3: F(A, B, C, D, E, 3); break;                                           \
	default: F(A, B, C, D, E, 4); break;                                          \
	}

/* The weights MS_Q8_PF_BYTES past a block of `bytes` at x, into L2: a
 * line at a time, between the blocks' products (a row's worth at once, at
 * the row's start, queued behind the misses and stalled the kernel: Zen 5,
 * two threads, four inputs, q4_K 16% slower). Past the matrix's end it
 * touches nothing (a prefetch never faults). */
TGT_INLINE void pf_block(const uint8_t *x, int64_t ahead, const int bytes)
{
	for (int o = 0; o < bytes; o += 64)
		_mm_prefetch((const char *)x + ahead + o, _MM_HINT_T1);
}

/* Where a fused form starts and ends, and how far ahead it prefetches
 * (0: not), for a whole row (part NULL) or a part of one. */
struct span {
	int64_t i, end, pf;
};

TGT_INLINE struct span row_span(const struct ms_q8_in *in,
				const struct ms_q8_part *part, int64_t nb)
{
	if (part)
		return (struct span){ part->i0, part->i1, part->pf };
	return (struct span){ 0, nb, in->pf ? MS_Q8_PF_BYTES : 0 };
}

TGT static float dot_avx2(const struct ms_q8_w *w, const struct ms_q8_act *x,
			  int64_t nb)
{
	/* scale pair (s[2g], s[2g+1]) -> s[2g] in the low lane's 8 words (its
	 * 16 codes), s[2g+1] in the high lane's */
	const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
						0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
						2, 3, 2, 3, 2, 3, 2, 3);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	for (int64_t i = 0; i < nb; i++, w++, x++) {
		__m256i a = _mm256_setzero_si256();
		for (int g = 0; g < 8; g++) {
			__m256i p = _mm256_maddubs_epi16(ld(w->u + 32 * g),
							 ld(x->q + 32 * g));
			int32_t pair;
			memcpy(&pair, w->s + 2 * g, 4);
			__m256i sc = _mm256_shuffle_epi8(_mm256_set1_epi32(pair),
							 spread);
			a = _mm256_add_epi32(a, _mm256_madd_epi16(p, sc));
		}
		lane_block(&acc, &accm, w, x, a, ld(w->m));
	}
	return lane_tree(acc, accm);
}

/* ---- the inputs rounded to 8 bits: kernels/q8.c's quantize_scalar --------------
 *
 * The same steps in vectors: the first value of largest magnitude (a NaN
 * never compares larger, as there), the scale -127 / that value, each
 * product rounded to nearest even (vroundps; nearbyintf in the default
 * mode) and held to 127, the sums of 16 exact in 32 bits. */
TGT static void quantize_avx2(const float *x, struct ms_q8_act *y, int64_t n)
{
	const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
	for (int64_t b = 0; b < n / MS_Q8_QK; b++, x += MS_Q8_QK, y++) {
		__m256 mx = _mm256_setzero_ps();
		for (int j = 0; j < MS_Q8_QK; j += 8) /* NaN: keeps mx */
			mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), absm),
					   mx);
		__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx),
				       _mm256_extractf128_ps(mx, 1));
		m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
		m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
		float amax = _mm_cvtss_f32(m4);
		if (!amax) {
			memset(y, 0, sizeof(*y));
			continue;
		}
		float max = 0;
		const __m256 am = _mm256_set1_ps(amax);
		for (int j = 0; j < MS_Q8_QK; j += 8) {
			int k = _mm256_movemask_ps(_mm256_cmp_ps(
				_mm256_and_ps(_mm256_loadu_ps(x + j), absm), am,
				_CMP_EQ_OQ));
			if (k) {
				max = x[j + __builtin_ctz((unsigned)k)];
				break;
			}
		}
		const float iscale = -127.f / max;
		const __m256 is = _mm256_set1_ps(iscale);
		const __m256i top = _mm256_set1_epi32(127);
		for (int j = 0; j < MS_Q8_QK; j += 32) {
			__m256i v[4];
			for (int k = 0; k < 4; k++)
				v[k] = _mm256_min_epi32(
					_mm256_cvtps_epi32(_mm256_round_ps(
						_mm256_mul_ps(is, _mm256_loadu_ps(x + j + 8 * k)),
						_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
					top);
			for (int h = 0; h < 2; h++)
				y->bsum[j / 16 + h] = (int16_t)hsum32(
					_mm256_add_epi32(v[2 * h], v[2 * h + 1]));
			__m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
						       _mm256_packs_epi32(v[2], v[3]));
			_mm256_storeu_si256((__m256i *)(y->q + j),
					    _mm256_permutevar8x32_epi32(p, order));
		}
		y->d = 1 / iscale;
	}
}

/* ---- fused: codes made in registers, dotted with up to four inputs ------------
 *
 * For decode (one to four tokens) the store and reload of the unpacked row
 * cost as much as making it: here each 32 codes are made in a register and
 * multiplied with every input at once. The integer lanes are the same
 * integers as the unpacked path's, then the same float steps: the same bits
 * (t_q8 compares a token alone with the same token in a batch of five). */

TGT_INLINE __m256i codes_q2_K(const uint8_t *x, int g)
{
	return _mm256_and_si256(_mm256_srli_epi16(ld(x + 16 + 32 * (g / 4)), 2 * (g % 4)),
				_mm256_set1_epi8(3));
}

TGT_INLINE __m256i codes_q3_K(const uint8_t *x, int g)
{
	__m256i lo = _mm256_and_si256(
		_mm256_srli_epi16(ld(x + 32 + 32 * (g / 4)), 2 * (g % 4)),
		_mm256_set1_epi8(3));
	return _mm256_or_si256(lo, _mm256_slli_epi16(bit_of(ld(x), g), 2));
}

TGT_INLINE __m256i codes_q4_K(const uint8_t *x, int g)
{
	__m256i q = ld(x + 16 + 32 * (g / 2));
	return _mm256_and_si256(g % 2 ? _mm256_srli_epi16(q, 4) : q,
				_mm256_set1_epi8(0x0f));
}

TGT_INLINE __m256i codes_q5_K(const uint8_t *x, int g)
{
	__m256i q = ld(x + 48 + 32 * (g / 2));
	__m256i lo = _mm256_and_si256(g % 2 ? _mm256_srli_epi16(q, 4) : q,
				      _mm256_set1_epi8(0x0f));
	return _mm256_or_si256(lo, _mm256_slli_epi16(bit_of(ld(x + 16), g), 4));
}

TGT_INLINE __m256i codes_q6_K(const uint8_t *x, int g)
{
	const int h = g / 4, r = g % 4;
	__m256i lo = _mm256_and_si256(
		_mm256_srli_epi16(ld(x + 64 * h + 32 * (r % 2)), 4 * (r / 2)),
		_mm256_set1_epi8(0x0f));
	__m256i hi = _mm256_and_si256(_mm256_srli_epi16(ld(x + 128 + 32 * h), 2 * r),
				      _mm256_set1_epi8(3));
	return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

#define SPREAD_MASK                                                                   \
	_mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, \
			 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3)

/* The two groups' scales of chunk g spread over its two lanes. */
TGT_INLINE __m256i chunk_scales(const int16_t *s, int g)
{
	int32_t pair;
	memcpy(&pair, s + 2 * g, 4);
	return _mm256_shuffle_epi8(_mm256_set1_epi32(pair), SPREAD_MASK);
}

#define FUSED(T, BYTES, HDR)                                                          \
	TGT_INLINE void fused_##T##_n(const uint8_t *x, const struct ms_q8_in *in,    \
				      const struct ms_q8_part *part, int64_t nb,      \
				      float *out, const int NT)                       \
	{                                                                             \
		__m256 acc[4], accm[4];                                               \
		struct span sp = row_span(in, part, nb);                              \
		for (int t = 0; t < NT; t++)                                          \
			acc[t] = accm[t] = _mm256_setzero_ps();                       \
		if (sp.i)                                                             \
			for (int t = 0; t < NT; t++) {                                \
				acc[t] = _mm256_loadu_ps(part->acc + 16 * t);         \
				accm[t] = _mm256_loadu_ps(part->acc + 16 * t + 8);    \
			}                                                             \
		x += sp.i * BYTES;                                                    \
		struct ms_q8_w h;                                                     \
		for (int64_t i = sp.i; i < sp.end; i++, x += BYTES) {                 \
			if (sp.pf)                                                    \
				pf_block(x, sp.pf, BYTES);                            \
			HDR(x, &h);                                                   \
			__m256i a[4];                                                 \
			for (int t = 0; t < NT; t++)                                  \
				a[t] = _mm256_setzero_si256();                        \
			_Pragma("GCC unroll 8") for (int g = 0; g < 8; g++)          \
			{                                                             \
				__m256i u = codes_##T(x, g);                          \
				__m256i sc = chunk_scales(h.s, g);                    \
				for (int t = 0; t < NT; t++)                          \
					a[t] = _mm256_add_epi32(                      \
						a[t],                                 \
						_mm256_madd_epi16(                    \
							_mm256_maddubs_epi16(         \
								u, ld(in->x[t][i].q + \
								      32 * g)),       \
							sc));                         \
			}                                                             \
			__m256i mv = ld(h.m);                                         \
			for (int t = 0; t < NT; t++)                                  \
				lane_block(&acc[t], &accm[t], &h, &in->x[t][i], a[t], \
					   mv);                                       \
		}                                                                     \
		if (sp.end < nb) {                                                    \
			for (int t = 0; t < NT; t++) {                                \
				_mm256_storeu_ps(part->acc + 16 * t, acc[t]);         \
				_mm256_storeu_ps(part->acc + 16 * t + 8, accm[t]);    \
			}                                                             \
			return;                                                       \
		}                                                                     \
		for (int t = 0; t < NT; t++)                                          \
			out[t] = lane_tree(acc[t], accm[t]);                          \
	}                                                                             \
	TGT static void fused_##T(const uint8_t *x, const struct ms_q8_in *in,        \
				  const struct ms_q8_part *part, int64_t nb,          \
				  float *out)                                         \
	{                                                                             \
		const int nt = in->nt;                                                \
		NT_SWITCH(fused_##T##_n, x, in, part, nb, out)                        \
	}

FUSED(q2_K, 84, hdr_q2_K)
FUSED(q3_K, 110, hdr_q3_K)
FUSED(q4_K, 144, hdr_q4_K)
FUSED(q5_K, 176, hdr_q4_K)
FUSED(q6_K, 210, hdr_q6_K)

/* ---- fused, AVX-512: two chunks (64 codes) per register -----------------------
 *
 * The same integers again: 64 codes made at once (the two chunks of a pair
 * come from the same bytes at two shifts, or from 64 adjacent bytes), one
 * unsigned x signed multiply-add into 16-bit pairs per input, and one
 * 16-bit multiply-accumulate by the four groups' scales into 32-bit lanes
 * (VNNI's vpdpwssd, which adds what madd + add would). Exact integer
 * lanes, the two chunks' halves added into AVX2's 8, then the same float
 * steps: the same bits as the AVX2 forms (t_q8).
 *
 * With four inputs the integer products are half the work (Zen 5, 2
 * vCPUs, a q4_K block: 19 of 41 cycles); the rest was each input's float
 * steps in 256-bit halves and the block header stored and reloaded. So
 * two inputs' float steps share 512-bit registers (their lanes side by
 * side, the same operations per lane), the header stays in registers, and
 * Q2_K scales its codes once for every input (below): 41 -> 31 cycles a
 * q4_K block for four inputs, 19.2 -> 16.1 for one. */

#define TGT5 __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma,f16c")))
#define TGT5_INLINE static inline __attribute__((always_inline)) TGT5

/* 32 bytes at p in both halves, each 16-bit lane shifted right by a (low
 * half) or b (high half). */
TGT5_INLINE __m512i two_shifts(const uint8_t *p, int a, int b)
{
	__m512i v = _mm512_broadcast_i64x4(ld(p));
	__m512i sh = _mm512_inserti64x4(_mm512_set1_epi16((short)a),
					_mm256_set1_epi16((short)b), 1);
	return _mm512_srlv_epi16(v, sh);
}

TGT5_INLINE __m512i m8(int v)
{
	return _mm512_set1_epi8((char)v);
}

/* chunks g and g + 1 (g even) */
TGT5_INLINE __m512i codes2_q2_K(const uint8_t *x, int g)
{
	int s = 2 * (g % 4);
	return _mm512_and_si512(two_shifts(x + 16 + 32 * (g / 4), s, s + 2), m8(3));
}

TGT5_INLINE __m512i codes2_q3_K(const uint8_t *x, int g)
{
	int s = 2 * (g % 4);
	__m512i lo = _mm512_and_si512(two_shifts(x + 32 + 32 * (g / 4), s, s + 2),
				      m8(3));
	__m512i hb = _mm512_and_si512(two_shifts(x, g, g + 1), m8(1));
	return _mm512_or_si512(lo, _mm512_slli_epi16(hb, 2));
}

TGT5_INLINE __m512i codes2_q4_K(const uint8_t *x, int g)
{
	return _mm512_and_si512(two_shifts(x + 16 + 32 * (g / 2), 0, 4), m8(0x0f));
}

TGT5_INLINE __m512i codes2_q5_K(const uint8_t *x, int g)
{
	__m512i lo = _mm512_and_si512(two_shifts(x + 48 + 32 * (g / 2), 0, 4),
				      m8(0x0f));
	__m512i hb = _mm512_and_si512(two_shifts(x + 16, g, g + 1), m8(1));
	return _mm512_or_si512(lo, _mm512_slli_epi16(hb, 4));
}

TGT5_INLINE __m512i codes2_q6_K(const uint8_t *x, int g)
{
	const int h = g / 4, r = g % 4; /* r even: 64 adjacent low bytes */
	__m512i lo = _mm512_and_si512(
		_mm512_srli_epi16(_mm512_loadu_si512(x + 64 * h), 4 * (r / 2)),
		m8(0x0f));
	__m512i hi = _mm512_and_si512(two_shifts(x + 128 + 32 * h, 2 * r,
						 2 * r + 2), m8(3));
	return _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4));
}

/* chunk g's lanes + chunk g + 1's: AVX2's 8 */
TGT5_INLINE __m256i fold8(__m512i a)
{
	return _mm256_add_epi32(_mm512_castsi512_si256(a),
				_mm512_extracti64x4_epi64(a, 1));
}

/* A block's header for the AVX-512 forms, kept in registers: the scales
 * as words in s (per 16 codes, or per 32 with per32: Q4_K, Q5_K), the
 * mins (or scales) per 16 codes in m, and the scalars of ms_q8_factors.
 * The same values as hdr_*'s struct ms_q8_w; nothing stored and loaded. */
struct hdr5 {
	__m512i s;
	__m256i m;
	float d, dm;
	int32_t off;
};

/* Scales of chunks g, g + 1 (g even), each over the words of its 16 codes
 * (per 16: s[2g..2g+3], 8 words each; per 32: s[g], s[g + 1], 16 each). */
TGT5_INLINE __m512i pair_scales(__m512i s, int g, const int per32)
{
	const __m512i w = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22,
					   21, 20, 19, 18, 17, 16, 15, 14, 13, 12,
					   11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
	__m512i idx = per32 ? _mm512_add_epi16(_mm512_srli_epi16(w, 4),
					       _mm512_set1_epi16((short)g))
			    : _mm512_add_epi16(_mm512_srli_epi16(w, 3),
					       _mm512_set1_epi16((short)(2 * g)));
	return _mm512_permutexvar_epi16(idx, s);
}

/* pair_scales of an unpacked row's scales (per 16) */
TGT5_INLINE __m512i pair_scales_w(const int16_t *s, int g)
{
	return pair_scales(_mm512_castsi256_si512(ld(s)), g, 0);
}

/* 8 bytes as words, each twice: per 32 codes -> per 16 */
TGT5_INLINE __m256i twice8(__m128i w8)
{
	const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
					     0, 0, 0, 0, 7, 7, 6, 6, 5, 5, 4, 4, 3,
					     3, 2, 2, 1, 1, 0, 0);
	return _mm512_castsi512_si256(
		_mm512_permutexvar_epi16(idx, _mm512_castsi128_si512(w8)));
}

TGT5_INLINE void hdr5_q2_K(const uint8_t *x, struct hdr5 *h)
{
	h->d = h2f(x + 80);
	h->dm = h2f(x + 82);
	h->off = 0;
	__m128i sc = _mm_loadu_si128((const __m128i *)x);
	__m256i s = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x0f)));
	h->s = _mm512_castsi256_si512(s);
	h->m = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4),
						  _mm_set1_epi8(0x0f)));
}

TGT5_INLINE void hdr5_q3_K(const uint8_t *x, struct hdr5 *h)
{
	h->d = h2f(x + 108);
	h->dm = 0;
	h->off = 4;
	h->m = q3_scales16(x);
	h->s = _mm512_castsi256_si512(h->m);
}

TGT5_INLINE void hdr5_q4_K(const uint8_t *x, struct hdr5 *h)
{
	h->d = h2f(x);
	h->dm = h2f(x + 2);
	h->off = 0;
	uint64_t sc, mn;
	q4_scale_bytes(x, &sc, &mn);
	h->s = _mm512_castsi128_si512(
		_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
	h->m = twice8(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn)));
}

TGT5_INLINE void hdr5_q6_K(const uint8_t *x, struct hdr5 *h)
{
	h->d = h2f(x + 208);
	h->dm = 0;
	h->off = 32;
	__m256i s = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 192)));
	h->s = _mm512_castsi256_si512(s);
	h->m = s;
}

/* lane_block from a hdr5 */
TGT5_INLINE void lane_block5(__m256 *acc, __m256 *accm, const struct hdr5 *h,
			     const struct ms_q8_act *x, __m256i a)
{
	struct ms_q8_w w;
	w.d = h->d;
	w.dm = h->dm;
	w.off = h->off;
	float fa, fm;
	ms_q8_factors(&w, x, &fa, &fm);
	*acc = lane_step(*acc, fa, a);
	*accm = lane_step(*accm, fm, _mm256_madd_epi16(h->m, ld(x->bsum)));
}

/* Two inputs' lanes side by side (input t0 in the low 8, t1 in the high 8):
 * each input's chunk g + chunk g + 1, fold8's sums for both in one add. */
TGT5_INLINE __m512i fold_pair(__m512i a0, __m512i a1)
{
	return _mm512_add_epi32(_mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
				_mm512_shuffle_i64x2(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
}

/* lane_block for two inputs at once, their lanes side by side (x: the
 * pair's d and group sums, ms_q8_pairs): the same float operations on each
 * lane (x.d * w.d, x.d * (w.dm + w.d * off), a multiply, then an add), so
 * the same bits as two lane_blocks. */
TGT5_INLINE void lane_block_pair(__m512 *acc, __m512 *accm, __m512 wd, __m512 wc,
				 __m512i mv, const struct ms_q8_pair *x, __m512i a)
{
	__m512 d = _mm512_load_ps(x->d);
	__m512i bs = _mm512_load_si512(x->bsum);
	*acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_mul_ps(d, wd),
						 _mm512_cvtepi32_ps(a)));
	*accm = _mm512_add_ps(*accm, _mm512_mul_ps(_mm512_mul_ps(d, wc),
						   _mm512_cvtepi32_ps(
							   _mm512_madd_epi16(mv, bs))));
}

TGT5_INLINE __m256 hi8(__m512 v)
{
	return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* PRE: the codes times their group's scale fit a byte (Q2_K: 3 x 15), so
 * one 16-bit multiply per 64 codes scales them for every input and each
 * input takes one vpdpbusd: the same exact lanes as maddubs + dpwssd. */
#define FUSED5(T, BYTES, HDR, PER32, PRE)                                                    \
	TGT5_INLINE void f5_##T##_n(const uint8_t *x, const struct ms_q8_in *in,      \
				    const struct ms_q8_part *part, int64_t nb,        \
				    float *out, const int NT)                         \
	{                                                                             \
		const int NP = NT / 2; /* inputs in pairs, then an odd one */         \
		__m512 acc[2], accm[2];                                               \
		__m256 acc1 = _mm256_setzero_ps(), accm1 = _mm256_setzero_ps();       \
		acc[0] = accm[0] = acc[1] = accm[1] = _mm512_setzero_ps();            \
		struct span sp = row_span(in, part, nb);                              \
		if (sp.i) {                                                           \
			for (int p = 0; p < NP; p++) {                                \
				acc[p] = _mm512_loadu_ps(part->acc + 32 * p);         \
				accm[p] = _mm512_loadu_ps(part->acc + 32 * p + 16);   \
			}                                                             \
			if (NT % 2) {                                                 \
				acc1 = _mm256_loadu_ps(part->acc + 64);               \
				accm1 = _mm256_loadu_ps(part->acc + 72);              \
			}                                                             \
		}                                                                     \
		x += sp.i * BYTES;                                                    \
		struct hdr5 h;                                                        \
		for (int64_t i = sp.i; i < sp.end; i++, x += BYTES) {                 \
			if (sp.pf)                                                    \
				pf_block(x, sp.pf, BYTES);                            \
			HDR(x, &h);                                                   \
			__m512i a[4];                                                 \
			_Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)          \
				a[t] = _mm512_setzero_si512();                        \
			_Pragma("GCC unroll 4") for (int g = 0; g < 8; g += 2)       \
			{                                                             \
				__m512i u = codes2_##T(x, g);                         \
				__m512i sc = pair_scales(h.s, g, PER32);              \
				if (PRE)                                              \
					u = _mm512_mullo_epi16(u, sc);                \
				_Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) { \
					__m512i q = _mm512_loadu_si512(in->x[t][i].q + 32 * g); \
					a[t] = PRE ? _mm512_dpbusd_epi32(a[t], u, q)  \
						   : _mm512_dpwssd_epi32(             \
							     a[t], _mm512_maddubs_epi16(u, q), sc); \
				}                                                     \
			}                                                             \
			if (NP) {                                                     \
				__m512 wd = _mm512_set1_ps(h.d);                      \
				__m512 wc = _mm512_set1_ps(ms_q8_wmin(h.d, h.dm, h.off)); \
				__m512i mv = _mm512_broadcast_i64x4(h.m);             \
				_Pragma("GCC unroll 2") for (int p = 0; p < NP; p++)  \
					lane_block_pair(&acc[p], &accm[p], wd, wc, mv, \
							&in->pair[p * nb + i],        \
							fold_pair(a[2 * p], a[2 * p + 1])); \
			}                                                             \
			if (NT % 2)                                                   \
				lane_block5(&acc1, &accm1, &h, &in->x[NT - 1][i],     \
					    fold8(a[NT - 1]));                        \
		}                                                                     \
		if (sp.end < nb) {                                                    \
			for (int p = 0; p < NP; p++) {                                \
				_mm512_storeu_ps(part->acc + 32 * p, acc[p]);         \
				_mm512_storeu_ps(part->acc + 32 * p + 16, accm[p]);   \
			}                                                             \
			if (NT % 2) {                                                 \
				_mm256_storeu_ps(part->acc + 64, acc1);               \
				_mm256_storeu_ps(part->acc + 72, accm1);              \
			}                                                             \
			return;                                                       \
		}                                                                     \
		_Pragma("GCC unroll 2") for (int p = 0; p < NP; p++) {               \
			out[2 * p] = lane_tree(_mm512_castps512_ps256(acc[p]),        \
					       _mm512_castps512_ps256(accm[p]));      \
			out[2 * p + 1] = lane_tree(hi8(acc[p]), hi8(accm[p]));        \
		}                                                                     \
		if (NT % 2)                                                           \
			out[NT - 1] = lane_tree(acc1, accm1);                         \
	}                                                                             \
	TGT5 static void f5_##T(const uint8_t *x, const struct ms_q8_in *in,          \
				const struct ms_q8_part *part, int64_t nb,            \
				float *out)                                           \
	{                                                                             \
		const int nt = in->nt;                                                \
		NT_SWITCH(f5_##T##_n, x, in, part, nb, out)                           \
	}

FUSED5(q2_K, 84, hdr5_q2_K, 0, 1)
FUSED5(q3_K, 110, hdr5_q3_K, 0, 0)
FUSED5(q4_K, 144, hdr5_q4_K, 1, 0)
FUSED5(q5_K, 176, hdr5_q4_K, 1, 0)
FUSED5(q6_K, 210, hdr5_q6_K, 0, 0)

/* The unpacked row's dot (batches over MS_Q8_FUSED_MAX): 64 codes a step. */
TGT5 static float dot_avx512(const struct ms_q8_w *w, const struct ms_q8_act *x,
			     int64_t nb)
{
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	for (int64_t i = 0; i < nb; i++, w++, x++) {
		__m512i a = _mm512_setzero_si512();
		for (int g = 0; g < 8; g += 2)
			a = _mm512_dpwssd_epi32(
				a,
				_mm512_maddubs_epi16(_mm512_loadu_si512(w->u + 32 * g),
						     _mm512_loadu_si512(x->q + 32 * g)),
				pair_scales_w(w->s, g));
		lane_block(&acc, &accm, w, x, fold8(a), ld(w->m));
	}
	return lane_tree(acc, accm);
}

/* The unpacked row against nt inputs at once (prompts: many tokens per
 * row). Per block the row's codes and scales are loaded and spread once for
 * up to eight inputs, not once per input; each input's lanes and float steps
 * are dot_avx512's: the same bits (t_q8 compares them). */
TGT5_INLINE void dotn5_n(const struct ms_q8_w *w, const struct ms_q8_act *x,
			 int64_t xs, int64_t nb, float *out, int64_t os,
			 const int NT)
{
	__m256 acc[8], accm[8];
	_Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)
		acc[t] = accm[t] = _mm256_setzero_ps();
	for (int64_t i = 0; i < nb; i++, w++, x++) {
		__m512i a[8];
		_Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)
			a[t] = _mm512_setzero_si512();
		/* chunk pairs outer, inputs inner: NT independent chains */
		_Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
		{
			__m512i u = _mm512_loadu_si512(w->u + 64 * k);
			__m512i sc = pair_scales_w(w->s, 2 * k);
			_Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)
				a[t] = _mm512_dpwssd_epi32(
					a[t],
					_mm512_maddubs_epi16(
						u, _mm512_loadu_si512(x[t * xs].q +
								      64 * k)),
					sc);
		}
		__m256i mv = ld(w->m);
		_Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)
			lane_block(&acc[t], &accm[t], w, &x[t * xs], fold8(a[t]),
				   mv);
	}
	_Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)
		out[t * os] = lane_tree(acc[t], accm[t]);
}

TGT5 static void dotn_avx512(const struct ms_q8_w *w, const struct ms_q8_act *x,
			     int64_t xs, int64_t nb, int nt, float *out,
			     int64_t os)
{
	int t = 0;
	for (; t + 8 <= nt; t += 8)
		dotn5_n(w, x + t * xs, xs, nb, out + t * os, os, 8);
	if (nt - t >= 4) {
		dotn5_n(w, x + t * xs, xs, nb, out + t * os, os, 4);
		t += 4;
	}
	switch (nt - t) {
	case 3: dotn5_n(w, x + t * xs, xs, nb, out + t * os, os, 3); break;
	case 2: dotn5_n(w, x + t * xs, xs, nb, out + t * os, os, 2); break;
	case 1: dotn5_n(w, x + t * xs, xs, nb, out + t * os, os, 1); break;
	default: break;
	}
}

/* MS_FFN_NO_AVX512=1 in the environment hides these (the AVX2 forms then
 * serve), as MS_FFN_NO_AVX2 hides AVX2. */
static bool avx512_cpu(void)
{
	const char *off = getenv("MS_FFN_NO_AVX512");
	if (off && *off && strcmp(off, "0"))
		return false;
	__builtin_cpu_init();
	return ms_ffn_avx2_cpu() && __builtin_cpu_supports("avx512f") &&
	       __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vnni");
}

ms_q8_fused_fn ms_q8_avx512_fused(uint32_t type)
{
	if (!avx512_cpu())
		return NULL;
	switch (type) {
	case MS_TYPE_Q2_K: return f5_q2_K;
	case MS_TYPE_Q3_K: return f5_q3_K;
	case MS_TYPE_Q4_K: return f5_q4_K;
	case MS_TYPE_Q5_K: return f5_q5_K;
	case MS_TYPE_Q6_K: return f5_q6_K;
	default: return NULL;
	}
}

ms_q8_fused_fn ms_q8_avx2_fused(uint32_t type)
{
	ms_q8_fused_fn f = ms_q8_avx512_fused(type);
	return f ? f : ms_q8_avx256_fused(type);
}

ms_q8_fused_fn ms_q8_avx256_fused(uint32_t type)
{
	if (!ms_ffn_avx2_cpu())
		return NULL;
	switch (type) {
	case MS_TYPE_Q2_K: return fused_q2_K;
	case MS_TYPE_Q3_K: return fused_q3_K;
	case MS_TYPE_Q4_K: return fused_q4_K;
	case MS_TYPE_Q5_K: return fused_q5_K;
	case MS_TYPE_Q6_K: return fused_q6_K;
	default: return NULL;
	}
}

ms_q8_unpack_fn ms_q8_avx2_unpacker(uint32_t type)
{
	if (!ms_ffn_avx2_cpu())
		return NULL;
	switch (type) {
	case MS_TYPE_Q2_K: return up_q2_K;
	case MS_TYPE_Q3_K: return up_q3_K;
	case MS_TYPE_Q4_K: return up_q4_K;
	case MS_TYPE_Q5_K: return up_q5_K;
	case MS_TYPE_Q6_K: return up_q6_K;
	default: return NULL;
	}
}

ms_q8_quantize_fn ms_q8_avx2_quantizer(void)
{
	return ms_ffn_avx2_cpu() ? quantize_avx2 : NULL;
}

ms_q8_dot_fn ms_q8_avx2_dotter(void)
{
	if (avx512_cpu())
		return dot_avx512;
	return ms_ffn_avx2_cpu() ? dot_avx2 : NULL;
}

ms_q8_dotn_fn ms_q8_avx512_dotn(void)
{
	return avx512_cpu() ? dotn_avx512 : NULL;
}

#else /* not x86-64: the scalar forms only */

ms_q8_unpack_fn ms_q8_avx2_unpacker(uint32_t type)
{
	(void)type;
	return NULL;
}

ms_q8_dot_fn ms_q8_avx2_dotter(void)
{
	return NULL;
}

ms_q8_quantize_fn ms_q8_avx2_quantizer(void)
{
	return NULL;
}

ms_q8_dotn_fn ms_q8_avx512_dotn(void)
{
	return NULL;
}

ms_q8_fused_fn ms_q8_avx2_fused(uint32_t type)
{
	(void)type;
	return NULL;
}

ms_q8_fused_fn ms_q8_avx256_fused(uint32_t type)
{
	(void)type;
	return NULL;
}

ms_q8_fused_fn ms_q8_avx512_fused(uint32_t type)
{
	(void)type;
	return NULL;
}

#endif
