/*
 * q8.c - the K-quant products with activations rounded to 8 bits, as
 * ggml's CPU backend computes them (its vec_dot_type Q8_K), in portable C:
 * the quantiser of the activations, one unpacker per weight type and the
 * integer dot. kernels/q8_avx2.c has the same in AVX2 with the same bits;
 * ffn_internal.h says what the unpacked form and the sums are.
 *
 * Why: an int8 x uint8 multiply-add does 32 products per instruction where
 * an f32 FMA does 8, and the rounding is llama.cpp's own, so the logits move
 * nearer to its logits, not away (issue 15's teacher-forced figures). The
 * f32 path stays the reference; the error of this one against it is the
 * rounding of the activations (tests/t_q8.c states it).
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "moestream/model.h"

#include "ffn_internal.h"
#include "quant_internal.h"

bool ms_q8_type(uint32_t type)
{
	return type == MS_TYPE_Q2_K || type == MS_TYPE_Q3_K ||
	       type == MS_TYPE_Q4_K || type == MS_TYPE_Q5_K ||
	       type == MS_TYPE_Q6_K;
}

static void quantize_scalar(const float *x, struct ms_q8_act *y, int64_t n)
{
	for (int64_t b = 0; b < n / MS_Q8_QK; b++, x += MS_Q8_QK, y++) {
		float amax = 0, max = 0;
		for (int j = 0; j < MS_Q8_QK; j++)
			if (fabsf(x[j]) > amax) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		if (!amax) {
			memset(y, 0, sizeof(*y));
			continue;
		}
		const float iscale = -127.f / max;
		for (int j = 0; j < MS_Q8_QK; j++) {
			int v = (int)nearbyintf(iscale * x[j]);
			y->q[j] = (int8_t)(v > 127 ? 127 : v);
		}
		for (int g = 0; g < MS_Q8_QK / 16; g++) {
			int s = 0;
			for (int l = 0; l < 16; l++)
				s += y->q[16 * g + l];
			y->bsum[g] = (int16_t)s;
		}
		y->d = 1 / iscale;
	}
}

ms_q8_quantize_fn ms_q8_quantizer(bool avx2)
{
	ms_q8_quantize_fn f = avx2 ? ms_q8_avx2_quantizer() : NULL;
	return f ? f : quantize_scalar;
}

void ms_q8_quantize(const float *x, struct ms_q8_act *y, int64_t n)
{
	static _Atomic(ms_q8_quantize_fn) best;
	ms_q8_quantize_fn f = atomic_load_explicit(&best, memory_order_relaxed);
	if (!f) {
		f = ms_q8_quantizer(true);
		atomic_store_explicit(&best, f, memory_order_relaxed);
	}
	f(x, y, n);
}

/* ---- unpackers: the layouts are kernels/dequant.c's (see its comments) --------- */

/* The scales, mins, d, dm and off of one block (q8_avx2.c: the same in
 * word operations). */
static void hdr_q2_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = f16_f32(rd16(x + 80));
	w->dm = f16_f32(rd16(x + 82));
	w->off = 0;
	for (int g = 0; g < 16; g++) {
		w->s[g] = (int16_t)(x[g] & 0xf);
		w->m[g] = (int16_t)(x[g] >> 4);
	}
}

static void hdr_q3_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = f16_f32(rd16(x + 108));
	w->dm = 0;
	w->off = 4;
	for (int g = 0; g < 16; g++)
		w->s[g] = w->m[g] = (int16_t)(k3_scale(x + 96, g) - 32);
}

/* Q4_K and Q5_K: the same header. */
static void hdr_q4_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = f16_f32(rd16(x));
	w->dm = f16_f32(rd16(x + 2));
	w->off = 0;
	for (int g = 0; g < 8; g++) {
		int sc, mn;
		k4_scale_min(x + 4, g, &sc, &mn);
		w->s[2 * g] = w->s[2 * g + 1] = (int16_t)sc;
		w->m[2 * g] = w->m[2 * g + 1] = (int16_t)mn;
	}
}

static void hdr_q6_K(const uint8_t *x, struct ms_q8_w *w)
{
	w->d = f16_f32(rd16(x + 208));
	w->dm = 0;
	w->off = 32;
	for (int g = 0; g < 16; g++)
		w->s[g] = w->m[g] = (int16_t)(int8_t)x[192 + g];
}

/* Q2_K's and Q3_K's 2-bit codes of group g (16 elements). */
static void two_bits(const uint8_t *qs, int g, uint8_t *u)
{
	const uint8_t *q = qs + 32 * (g / 8) + 16 * (g % 2);
	const int shift = 2 * ((g % 8) / 2);
	for (int l = 0; l < 16; l++)
		u[l] = (uint8_t)((q[l] >> shift) & 3);
}

static void up_q2_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 84, w++) {
		hdr_q2_K(x, w);
		for (int g = 0; g < 16; g++)
			two_bits(x + 16, g, w->u + 16 * g);
	}
}

static void up_q3_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 110, w++) {
		hdr_q3_K(x, w);
		for (int g = 0; g < 16; g++) {
			uint8_t *u = w->u + 16 * g;
			two_bits(x + 32, g, u);
			const uint8_t *hm = x + 16 * (g % 2);
			const int hbit = 4 * (g / 8) + (g % 8) / 2;
			for (int l = 0; l < 16; l++)
				u[l] |= (uint8_t)(((hm[l] >> hbit) & 1) << 2);
		}
	}
}

/* Q4_K's codes, and Q5_K's with their fifth bits (qh non-NULL). */
static void k45(const uint8_t *qh, const uint8_t *qs, struct ms_q8_w *w)
{
	for (int g = 0; g < 8; g++) {
		const uint8_t *q = qs + 32 * (g / 2);
		const int shift = 4 * (g % 2);
		uint8_t *u = w->u + 32 * g;
		for (int l = 0; l < 32; l++)
			u[l] = (uint8_t)(((q[l] >> shift) & 0xf) |
					 (qh ? ((qh[l] >> g) & 1) << 4 : 0));
	}
}

static void up_q4_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 144, w++) {
		hdr_q4_K(x, w);
		k45(NULL, x + 16, w);
	}
}

static void up_q5_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 176, w++) {
		hdr_q4_K(x, w);
		k45(x + 16, x + 48, w);
	}
}

static void up_q6_K(const uint8_t *x, struct ms_q8_w *w, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++, x += 210, w++) {
		hdr_q6_K(x, w);
		for (int h = 0; h < 2; h++)
			for (int r = 0; r < 4; r++) {
				const uint8_t *ql = x + 64 * h + 32 * (r % 2);
				const uint8_t *qh = x + 128 + 32 * h;
				uint8_t *u = w->u + 128 * h + 32 * r;
				for (int l = 0; l < 32; l++)
					u[l] = (uint8_t)(((ql[l] >> (4 * (r / 2))) & 0xf) |
							 ((qh[l] >> (2 * r)) & 3) << 4);
			}
	}
}

static float dot_scalar(const struct ms_q8_w *w, const struct ms_q8_act *x,
			int64_t nb)
{
	float acc[8] = { 0 }, accm[8] = { 0 };
	for (int64_t i = 0; i < nb; i++, w++, x++) {
		int32_t A[8] = { 0 }, M[8];
		for (int g = 0; g < 8; g++) /* 32-code chunks */
			for (int k = 0; k < 8; k++) {
				int32_t s = 0;
				for (int b = 0; b < 4; b++)
					s += (int32_t)w->u[32 * g + 4 * k + b] *
					     x->q[32 * g + 4 * k + b];
				A[k] += w->s[2 * g + k / 4] * s;
			}
		for (int k = 0; k < 8; k++)
			M[k] = w->m[2 * k] * x->bsum[2 * k] +
			       w->m[2 * k + 1] * x->bsum[2 * k + 1];
		float fa, fm;
		ms_q8_factors(w, x, &fa, &fm);
		for (int k = 0; k < 8; k++) {
			acc[k] = acc[k] + fa * (float)A[k];
			accm[k] = accm[k] + fm * (float)M[k];
		}
	}
	float r[8];
	for (int k = 0; k < 8; k++)
		r[k] = acc[k] - accm[k];
	return ms_q8_tree8(r);
}

/* Fills out (nt / 2 pairs of nb blocks) from in->x and points in->pair at
 * it. */
void ms_q8_pairs(struct ms_q8_in *in, int64_t nb, struct ms_q8_pair *out)
{
	for (int p = 0; p < in->nt / 2; p++)
		for (int64_t i = 0; i < nb; i++) {
			struct ms_q8_pair *o = out + p * nb + i;
			const struct ms_q8_act *a = &in->x[2 * p][i],
					       *b = &in->x[2 * p + 1][i];
			for (int k = 0; k < 8; k++) {
				o->d[k] = a->d;
				o->d[8 + k] = b->d;
			}
			memcpy(o->bsum, a->bsum, sizeof(a->bsum));
			memcpy(o->bsum + 16, b->bsum, sizeof(b->bsum));
		}
	in->pair = out;
}

ms_q8_unpack_fn ms_q8_unpacker(uint32_t type, bool avx2)
{
	if (avx2) {
		ms_q8_unpack_fn f = ms_q8_avx2_unpacker(type);
		if (f)
			return f;
	}
	switch (type) {
	case MS_TYPE_Q2_K: return up_q2_K;
	case MS_TYPE_Q3_K: return up_q3_K;
	case MS_TYPE_Q4_K: return up_q4_K;
	case MS_TYPE_Q5_K: return up_q5_K;
	case MS_TYPE_Q6_K: return up_q6_K;
	default: return NULL;
	}
}

ms_q8_dot_fn ms_q8_dotter(bool avx2)
{
	ms_q8_dot_fn f = avx2 ? ms_q8_avx2_dotter() : NULL;
	return f ? f : dot_scalar;
}
