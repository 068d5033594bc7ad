/*
 * dequant.c - the C reference dequantisers: quantized blocks -> f32, for
 * every type moestream computes on. The truth every other path (AVX2, CUDA)
 * is checked against, and itself checked bit for bit against ggml's
 * dequantize_row_* (tests/t_dequant.c).
 *
 * Written from the formats, not from ggml's code. The facts that had to come
 * from ggml (ggml/src/ggml-common.h, ggml-quants.c, ggml-impl.h) are the
 * block layouts, how each block packs its scales, the IQ4_NL and MXFP4 value
 * tables and how the 8/16-bit scale formats widen to f32. Everything is read
 * byte by byte with explicit little-endian loads: no struct overlays, no
 * alignment assumptions (GGUF tensors are only 32-byte aligned and a
 * projection of a fused layer may start anywhere).
 *
 * Bit-identity is a stronger promise than "the same numbers", and three
 * things decide it:
 *
 * 1. The order of the float operations. Every expression below keeps
 *    ggml's association, e.g. Q2_K as (d * sc) * q - (dmin * m), Q6_K as
 *    (d * sc) * q. For these formats that is belt and braces rather than a
 *    cure: an f16 scale (11 significant bits) times a sub-scale times a
 *    quant or table value never needs more than f32's 24 bits (IQ4_XS,
 *    11 + 6 + 7, is the tightest), so every product is exact, only the
 *    final add or subtract rounds, and inf * 0 gives the same default NaN
 *    in any order. t_dequant would notice a type where that stops being
 *    true.
 *
 * 2. No contraction. a * b + c fused into one FMA rounds once instead of
 *    twice. ggml's library is built without FMA; so must this file be, even
 *    under -march=native, hence the pragmas below.
 *
 * 3. NaN payloads. Random bytes contain NaN and infinite f16 scales. x86
 *    returns the quietened NaN operand, the first one when both are NaN, so
 *    an addition whose operands may both be NaN (Q4_1/Q5_1: q*d + m) has a
 *    result that depends on which operand the compiler puts first. ggml's
 *    build puts the product first; add_nan_first() makes that explicit
 *    instead of leaving it to our compiler. Products and subtractions are
 *    not affected: at most one operand of a product can be NaN here, and a
 *    subtraction's operand order is fixed by the language.
 *
 * f16 -> f32 widens exactly (subnormals normalised, infinities kept) except
 * that a NaN comes out quietened (bit 22 set), as ggml's conversion does: it
 * passes through a float multiply. bf16 -> f32 is a plain shift, NaNs kept
 * as they are. MXFP4's E8M0 scale is read with ggml's "half" rule, 2^(e-128),
 * because its value table holds doubled E2M1 values; e = 0 and 1 give the
 * subnormals 2^-128 and 2^-127, e = 255 gives 2^127 (never NaN).
 *
 * Speed: scalar C, one pass, no tables beyond 16 entries; the inner loops
 * are branch-free over 16 or 32 elements so the compiler vectorises them
 * (which is why the block functions take restrict pointers). A whole
 * GLM-4.7 expert (8.5 MB of Q2_K/Q3_K in, 94 MB of f32 out) takes about
 * 15 ms on one core, ggml's own dequantizers about 21 ms (t_dequant prints
 * both). The FFN does not go through here: it dequantises inside its dot
 * products; this is the reference and the `dump` path.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moestream/kernels.h"
#include "moestream/model.h"

#include "quant_internal.h"

#if defined(__FAST_MATH__)
#error "kernels/dequant.c needs IEEE semantics (NaN tests, no reassociation): build it without -ffast-math"
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define QK_K 256

/* ---- scalar formats ----------------------------------------------------- */

/* E8M0 exponent -> 2^(e-128): half the OCP scale, matching the doubled
 * E2M1 table. */
static inline float e8m0_half_f32(uint8_t e)
{
	return bits_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* p + m where p is a product: when p is NaN the result is p (a product is
 * already quiet), whatever m is. See point 3 at the top. */
static inline float add_nan_first(float p, float m)
{
	return isnan(p) ? p : p + m;
}

/* IQ4_NL / IQ4_XS levels (ggml-common.h kvalues_iq4nl). */
static const int8_t kv_iq4nl[16] = {
	-127, -104, -83, -65, -49, -35, -22, -10,
	1, 13, 25, 38, 53, 69, 89, 113,
};

/* MXFP4: E2M1 values times two (ggml-common.h kvalues_mxfp4): codes 0-7 are
 * 0, 0.5, 1, 1.5, 2, 3, 4, 6 and 8-15 their negatives. */
static const int8_t kv_e2m1x2[16] = {
	0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
};

/* ---- one function per type: nb blocks from x into y -------------------- */

/*
 * Shape of the loops: per block (or group of 16/32), first the scales and
 * the integer quants, then one flat loop y[l] = scale * (float)q[l] over a
 * local array, which the compiler turns into SIMD. Where the quants index a
 * value table (IQ4_NL, IQ4_XS, MXFP4) the 16 possible products are made
 * once per block and then looked up: the same operation on the same
 * operands, so the same bits, at a sixteenth of the multiplies.
 */
typedef void dequant_fn(const uint8_t *restrict x, float *restrict y,
			int64_t nb);

#define DQ(name) \
	static void name(const uint8_t *restrict x, float *restrict y, \
			 int64_t nb)

DQ(dq_f32)
{
	memcpy(y, x, (size_t)nb * sizeof(float));
}

DQ(dq_f16)
{
	for (int64_t i = 0; i < nb; i++)
		y[i] = f16_f32(rd16(x + 2 * i));
}

DQ(dq_bf16)
{
	for (int64_t i = 0; i < nb; i++)
		y[i] = bits_f32((uint32_t)rd16(x + 2 * i) << 16);
}

/* 16 bytes of nibbles -> 32 codes: byte j gives element j (low nibble) and
 * element j+16 (high nibble). The layout of Q4_0, Q4_1, Q5_*, IQ4_NL,
 * MXFP4 and of each IQ4_XS group. */
static inline void nibbles32(const uint8_t *restrict qs, uint8_t *restrict c)
{
	for (int j = 0; j < 16; j++) {
		c[j] = qs[j] & 0xf;
		c[j + 16] = qs[j] >> 4;
	}
}

/* Q4_0, 18 bytes / 32: f16 d; qs[16]. Value (q - 8) * d. */
DQ(dq_q4_0)
{
	for (int64_t i = 0; i < nb; i++, x += 18, y += 32) {
		const float d = f16_f32(rd16(x));
		uint8_t c[32];
		nibbles32(x + 2, c);
		for (int j = 0; j < 32; j++)
			y[j] = (float)(c[j] - 8) * d;
	}
}

/* Q4_1, 20 bytes / 32: f16 d, f16 m; qs[16]. Value q * d + m. */
DQ(dq_q4_1)
{
	for (int64_t i = 0; i < nb; i++, x += 20, y += 32) {
		const float d = f16_f32(rd16(x));
		const float m = f16_f32(rd16(x + 2));
		uint8_t c[32];
		nibbles32(x + 4, c);
		if (!isnan(m)) {
			for (int j = 0; j < 32; j++)
				y[j] = (float)c[j] * d + m;
		} else {
			for (int j = 0; j < 32; j++)
				y[j] = add_nan_first((float)c[j] * d, m);
		}
	}
}

/* Q5_0/Q5_1's 5-bit codes: the nibbles as Q4_0, plus bit j of the 32-bit
 * little-endian qh as bit 4 of element j. */
static inline void fivebit32(const uint8_t *restrict qh,
			     const uint8_t *restrict qs, uint8_t *restrict c)
{
	nibbles32(qs, c);
	for (int j = 0; j < 32; j++)
		c[j] |= (uint8_t)(((qh[j / 8] >> (j % 8)) & 1) << 4);
}

/* Q5_0, 22 bytes / 32: f16 d; qh[4]; qs[16]. Value (q - 16) * d. */
DQ(dq_q5_0)
{
	for (int64_t i = 0; i < nb; i++, x += 22, y += 32) {
		const float d = f16_f32(rd16(x));
		uint8_t c[32];
		fivebit32(x + 2, x + 6, c);
		for (int j = 0; j < 32; j++)
			y[j] = (float)(c[j] - 16) * d;
	}
}

/* Q5_1, 24 bytes / 32: f16 d, f16 m; qh[4]; qs[16]. Value q * d + m. */
DQ(dq_q5_1)
{
	for (int64_t i = 0; i < nb; i++, x += 24, y += 32) {
		const float d = f16_f32(rd16(x));
		const float m = f16_f32(rd16(x + 2));
		uint8_t c[32];
		fivebit32(x + 4, x + 8, c);
		if (!isnan(m)) {
			for (int j = 0; j < 32; j++)
				y[j] = (float)c[j] * d + m;
		} else {
			for (int j = 0; j < 32; j++)
				y[j] = add_nan_first((float)c[j] * d, m);
		}
	}
}

/* Q8_0, 34 bytes / 32: f16 d; int8 qs[32]. Value q * d. */
DQ(dq_q8_0)
{
	for (int64_t i = 0; i < nb; i++, x += 34, y += 32) {
		const float d = f16_f32(rd16(x));
		const int8_t *qs = (const int8_t *)(x + 2);
		for (int j = 0; j < 32; j++)
			y[j] = (float)qs[j] * d;
	}
}

/* 32 elements from nibble codes through a 16-entry table of products. */
static inline void lookup32(const uint8_t *restrict qs,
			    const float *restrict t, float *restrict y)
{
	for (int j = 0; j < 16; j++) {
		y[j] = t[qs[j] & 0xf];
		y[j + 16] = t[qs[j] >> 4];
	}
}

/* MXFP4, 17 bytes / 32: E8M0 exponent e; qs[16] of E2M1 codes as Q4_0.
 * Value kv[code] * 2^(e-128). */
DQ(dq_mxfp4)
{
	for (int64_t i = 0; i < nb; i++, x += 17, y += 32) {
		const float d = e8m0_half_f32(x[0]);
		float t[16];
		for (int k = 0; k < 16; k++)
			t[k] = (float)kv_e2m1x2[k] * d;
		lookup32(x + 1, t, y);
	}
}

/* IQ4_NL, 18 bytes / 32: f16 d; qs[16] of indices into kv_iq4nl, laid out
 * as Q4_0. Value d * kv[index]. */
DQ(dq_iq4_nl)
{
	for (int64_t i = 0; i < nb; i++, x += 18, y += 32) {
		const float d = f16_f32(rd16(x));
		float t[16];
		for (int k = 0; k < 16; k++)
			t[k] = d * (float)kv_iq4nl[k];
		lookup32(x + 2, t, y);
	}
}

/*
 * Q2_K, 84 bytes / 256: scales[16] @0, qs[64] @16, f16 d @80, f16 dmin @82.
 * Sixteen groups of 16; byte scales[g] holds group g's 4-bit scale (low
 * nibble) and 4-bit min (high). The 2-bit quants of group g = 8h + 2j + k
 * (half h, bit pair j, k = 0/1) are bits 2j..2j+1 of qs[32h + 16k + l],
 * l = 0..15. Value (d * sc) * q - (dmin * m).
 */
DQ(dq_q2_K)
{
	for (int64_t i = 0; i < nb; i++, x += 84) {
		const float d = f16_f32(rd16(x + 80));
		const float dmin = f16_f32(rd16(x + 82));
		for (int g = 0; g < 16; g++, y += 16) {
			const uint8_t *q = x + 16 + 32 * (g / 8) + 16 * (g % 2);
			const int shift = 2 * ((g % 8) / 2);
			const float dl = d * (float)(x[g] & 0xf);
			const float ml = dmin * (float)(x[g] >> 4);
			for (int l = 0; l < 16; l++)
				y[l] = dl * (float)((q[l] >> shift) & 3) - ml;
		}
	}
}

/*
 * Q3_K, 110 bytes / 256: hmask[32] @0, qs[64] @32, scales[12] @96,
 * f16 d @108. Sixteen groups of 16 with 6-bit scales stored + 32: the low 4
 * bits of scale g are the low nibble of scales[g] for g < 8, the high
 * nibble of scales[g-8] for g >= 8; the top 2 bits are bits 2(g/4) of
 * scales[8 + g%4]. The 2-bit quants are laid out as Q2_K's; the third bit
 * of group g = 8h + 2j + k, element l is bit 4h + j of hmask[16k + l], and
 * a clear bit subtracts 4. Value (d * (s - 32)) * q.
 */
DQ(dq_q3_K)
{
	for (int64_t i = 0; i < nb; i++, x += 110) {
		const uint8_t *ss = x + 96;
		const float d = f16_f32(rd16(x + 108));
		for (int g = 0; g < 16; g++, y += 16) {
			const float dl = d * (float)(k3_scale(ss, g) - 32);
			const uint8_t *q = x + 32 + 32 * (g / 8) + 16 * (g % 2);
			const uint8_t *hm = x + 16 * (g % 2);
			const int shift = 2 * ((g % 8) / 2);
			const int hbit = 4 * (g / 8) + (g % 8) / 2;
			int v[16];
			for (int l = 0; l < 16; l++)
				v[l] = ((q[l] >> shift) & 3) -
				       4 * (~(hm[l] >> hbit) & 1);
			for (int l = 0; l < 16; l++)
				y[l] = dl * (float)v[l];
		}
	}
}

/*
 * Q4_K, 144 bytes / 256: f16 d @0, f16 dmin @2, scales[12] @4, qs[128] @16.
 * Eight groups of 32: group g takes the low (g even) or high (g odd)
 * nibbles of qs[32(g/2) .. 32(g/2)+31]. Value (d * sc) * q - (dmin * m).
 */
DQ(dq_q4_K)
{
	for (int64_t i = 0; i < nb; i++, x += 144) {
		const float d = f16_f32(rd16(x));
		const float dmin = f16_f32(rd16(x + 2));
		for (int g = 0; g < 8; g++, y += 32) {
			const uint8_t *q = x + 16 + 32 * (g / 2);
			const int shift = 4 * (g % 2);
			int sc, mn;
			k4_scale_min(x + 4, g, &sc, &mn);
			const float dl = d * (float)sc, ml = dmin * (float)mn;
			for (int l = 0; l < 32; l++)
				y[l] = dl * (float)((q[l] >> shift) & 0xf) - ml;
		}
	}
}

/*
 * Q5_K, 176 bytes / 256: f16 d @0, f16 dmin @2, scales[12] @4, qh[32] @16,
 * qs[128] @48. As Q4_K, plus a fifth bit (worth 16): bit g of qh[l] for
 * element l of group g.
 */
DQ(dq_q5_K)
{
	for (int64_t i = 0; i < nb; i++, x += 176) {
		const float d = f16_f32(rd16(x));
		const float dmin = f16_f32(rd16(x + 2));
		const uint8_t *qh = x + 16;
		for (int g = 0; g < 8; g++, y += 32) {
			const uint8_t *q = x + 48 + 32 * (g / 2);
			const int shift = 4 * (g % 2);
			int sc, mn;
			k4_scale_min(x + 4, g, &sc, &mn);
			const float dl = d * (float)sc, ml = dmin * (float)mn;
			int v[32];
			for (int l = 0; l < 32; l++)
				v[l] = ((q[l] >> shift) & 0xf) |
				       ((qh[l] >> g) & 1) << 4;
			for (int l = 0; l < 32; l++)
				y[l] = dl * (float)v[l] - ml;
		}
	}
}

/*
 * Q6_K, 210 bytes / 256: ql[128] @0, qh[64] @128, int8 scales[16] @192,
 * f16 d @208. Per 128-element half h (ql + 64h, qh + 32h), quarter r
 * (0..3) of 32 elements takes its low 4 bits from the low (r < 2) or high
 * (r >= 2) nibbles of ql[32(r%2) + l], its top 2 bits from bits 2r, 2r+1
 * of qh[l], and is stored + 32. Groups of 16 share a scale: group 8h + 2r
 * + l/16. Value (d * sc) * q.
 */
DQ(dq_q6_K)
{
	for (int64_t i = 0; i < nb; i++, x += 210) {
		const float d = f16_f32(rd16(x + 208));
		const int8_t *sc = (const int8_t *)(x + 192);
		for (int h = 0; h < 2; h++) {
			const uint8_t *qh = x + 128 + 32 * h;
			for (int r = 0; r < 4; r++, y += 32) {
				const uint8_t *ql = x + 64 * h + 32 * (r % 2);
				const int shift = 4 * (r / 2);
				const int8_t *s = sc + 8 * h + 2 * r;
				const float s0 = d * (float)s[0];
				const float s1 = d * (float)s[1];
				int v[32];
				for (int l = 0; l < 32; l++) {
					int lo = (ql[l] >> shift) & 0xf;
					int hi = (qh[l] >> (2 * r)) & 3;
					v[l] = (lo | hi << 4) - 32;
				}
				for (int l = 0; l < 16; l++)
					y[l] = s0 * (float)v[l];
				for (int l = 16; l < 32; l++)
					y[l] = s1 * (float)v[l];
			}
		}
	}
}

/*
 * IQ4_XS, 136 bytes / 256: f16 d @0, scales_h (16 bits, LE) @2,
 * scales_l[4] @4, qs[128] @8. Eight groups of 32 with 6-bit scales stored
 * + 32: low 4 bits in nibble g%2 of scales_l[g/2], top 2 bits at bit 2g of
 * scales_h. Each group's 16 bytes index kv_iq4nl as IQ4_NL's do.
 * Value (d * (ls - 32)) * kv.
 */
DQ(dq_iq4_xs)
{
	for (int64_t i = 0; i < nb; i++, x += 136) {
		const float d = f16_f32(rd16(x));
		const uint16_t sh = rd16(x + 2);
		for (int g = 0; g < 8; g++, y += 32) {
			const int ls = ((x[4 + g / 2] >> (4 * (g % 2))) & 0xf) |
				       ((sh >> (2 * g)) & 3) << 4;
			const float dl = d * (float)(ls - 32);
			float t[16];
			for (int k = 0; k < 16; k++)
				t[k] = dl * (float)kv_iq4nl[k];
			lookup32(x + 8 + 16 * g, t, y);
		}
	}
}

#undef DQ

/* ---- the table ---------------------------------------------------------- */

/* Block geometry is repeated here (not taken from model/types.c) so that a
 * change there cannot silently change how bytes are walked; t_dequant checks
 * both against ggml. */
static const struct {
	dequant_fn *fn;
	uint32_t blck, size;
} dequant[MS_TYPE_COUNT] = {
	[MS_TYPE_F32] = { dq_f32, 1, 4 },
	[MS_TYPE_F16] = { dq_f16, 1, 2 },
	[MS_TYPE_BF16] = { dq_bf16, 1, 2 },
	[MS_TYPE_Q4_0] = { dq_q4_0, 32, 18 },
	[MS_TYPE_Q4_1] = { dq_q4_1, 32, 20 },
	[MS_TYPE_Q5_0] = { dq_q5_0, 32, 22 },
	[MS_TYPE_Q5_1] = { dq_q5_1, 32, 24 },
	[MS_TYPE_Q8_0] = { dq_q8_0, 32, 34 },
	[MS_TYPE_Q2_K] = { dq_q2_K, QK_K, 84 },
	[MS_TYPE_Q3_K] = { dq_q3_K, QK_K, 110 },
	[MS_TYPE_Q4_K] = { dq_q4_K, QK_K, 144 },
	[MS_TYPE_Q5_K] = { dq_q5_K, QK_K, 176 },
	[MS_TYPE_Q6_K] = { dq_q6_K, QK_K, 210 },
	[MS_TYPE_IQ4_NL] = { dq_iq4_nl, 32, 18 },
	[MS_TYPE_IQ4_XS] = { dq_iq4_xs, QK_K, 136 },
	[MS_TYPE_MXFP4] = { dq_mxfp4, 32, 17 },
};

bool ms_dequant_supported(uint32_t type)
{
	return type < MS_TYPE_COUNT && dequant[type].fn != NULL;
}

int ms_dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
	if (!ms_dequant_supported(type) || n < 0 || n % dequant[type].blck)
		return -EINVAL;
	if (n == 0)
		return 0;
	if (!src || !dst)
		return -EINVAL;
	dequant[type].fn(src, dst, n / dequant[type].blck);
	return 0;
}
