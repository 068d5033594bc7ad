/*
 * ffn_internal.h - what kernels/ffn.c needs from the vectorised code in
 * kernels/ffn_avx2.c. Not a contract between rooms: kernels.h is.
 *
 * The AVX2 file is compiled like every other file (no global -mavx2); its
 * functions carry target attributes and ffn.c only calls them after
 * ms_ffn_avx2_cpu() said yes.
 */
#ifndef MS_KERNELS_FFN_INTERNAL_H
#define MS_KERNELS_FFN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

/* The CPU has AVX2, FMA and F16C (and the build is x86-64). */
bool ms_ffn_avx2_cpu(void);

/* True when ms_ffn_avx2_dequant has a vector kernel for `type`. */
bool ms_ffn_avx2_has(uint32_t type);

/* Dequantises n elements (a multiple of the block, checked by the caller)
 * of `type`; bit-identical to ggml's scalar dequantisers. -ENOTSUP when
 * there is no vector kernel for `type`. */
int ms_ffn_avx2_dequant(uint32_t type, const void *src, float *dst, int64_t n);

/* out[b * ld_out + r] = dot(w + r * n, x + b * ldx) for r < n_rows, b < nb:
 * rows of n floats (n a multiple of 8) against nb inputs. Each result is
 * computed by the same sequence of operations whatever n_rows and nb are
 * (one f32 FMA chain per (row, input), flushed to double every 1024
 * elements), so tiling and threading never change a bit of it. */
void ms_ffn_avx2_dot(const float *w, int n_rows, const float *x, int64_t ldx,
		     int64_t nb, int64_t n, float *out, int64_t ld_out);

/* A fused dequantise-and-dot of one row of n elements (a multiple of the
 * type's block) of weights `row` against x, given the sums of x over every
 * 16 and every 32 elements (xs16 [n/16], xs32 [n/32]). */
typedef float (*ms_ffn_rowdot_fn)(const uint8_t *row, const float *x,
				  const float *xs16, const float *xs32,
				  int64_t n);

/* The fused kernel for `type`, or NULL (then: dequantise and dot). */
ms_ffn_rowdot_fn ms_ffn_avx2_rowdot(uint32_t type);

/* The same row against nt inputs (1 or 2) at once, the row unpacked once:
 * out[t] is bit-identical to the one-input kernel on x[t] alone. NULL for
 * the types that have none (then: the one-input kernel per input). */
typedef void (*ms_ffn_rowdot_multi_fn)(const uint8_t *row,
				       const float *const *x,
				       const float *const *xs16,
				       const float *const *xs32, int64_t n,
				       float *out, int nt);
ms_ffn_rowdot_multi_fn ms_ffn_avx2_rowdot_multi(uint32_t type);

/* ---- 8-bit activations (kernels/q8.c, kernels/q8_avx2.c) ----------------------
 *
 * ggml's CPU backend multiplies a K-quant weight by activations rounded to
 * 8 bits (its Q8_K: per 256 values one f32 scale, int8 codes and the sums
 * of every 16 codes). With ms_ffn_opts.q8 the K-quant products here do the
 * same, in integers: each 256-block of a weight row is unpacked once into
 * unsigned codes u (natural element order) with a signed integer scale s
 * and min m per 16 elements, and every input's block is then
 *   A = sum_g s_g * sum_{l in g} u_l * q_l,   M = sum_g m_g * bsum_g
 *   block = q.d * (w.d * (float)(A - w.off * M) - w.dm * (float)M)
 * (Q2_K/Q4_K/Q5_K: value d*s*u - dm*m, off = 0; Q3_K/Q6_K: value
 * d*s*(u - off), m = s, dm = 0), summed over blocks in double. A and M are
 * exact integers, so the scalar and AVX2 forms give the same bits. */
#define MS_Q8_QK 256

struct ms_q8_act {
	_Alignas(32) int8_t q[MS_Q8_QK];
	int16_t bsum[MS_Q8_QK / 16];
	float d;
};

struct ms_q8_w {
	_Alignas(32) uint8_t u[MS_Q8_QK];
	int16_t s[MS_Q8_QK / 16];
	int16_t m[MS_Q8_QK / 16];
	float d, dm;
	int32_t off;
};

/* True when `type` has an 8-bit-activation kernel (Q2_K..Q6_K). */
bool ms_q8_type(uint32_t type);

/* x (n values, n % 256 == 0) -> n / 256 blocks, rounded as ggml's
 * quantize_row_q8_K rounds (scale -127 / the value of largest magnitude,
 * nearest, ties to even), by the best form the CPU has. */
void ms_q8_quantize(const float *x, struct ms_q8_act *y, int64_t n);

/* The scalar form, or the AVX2 form where the CPU has it (avx2: true); the
 * same bits for finite inputs. ms_q8_avx2_quantizer: NULL without AVX2. */
typedef void (*ms_q8_quantize_fn)(const float *x, struct ms_q8_act *y,
				  int64_t n);
ms_q8_quantize_fn ms_q8_quantizer(bool avx2);
ms_q8_quantize_fn ms_q8_avx2_quantizer(void);

/* One row of nb 256-blocks of `type` unpacked; a dot of an unpacked row
 * with an input. */
typedef void (*ms_q8_unpack_fn)(const uint8_t *row, struct ms_q8_w *w,
				int64_t nb);
typedef float (*ms_q8_dot_fn)(const struct ms_q8_w *w,
			      const struct ms_q8_act *x, int64_t nb);

/* The scalar forms, and the AVX2 forms (NULL off x86-64); the same bits. */
ms_q8_unpack_fn ms_q8_unpacker(uint32_t type, bool avx2);
ms_q8_dot_fn ms_q8_dotter(bool avx2);
ms_q8_unpack_fn ms_q8_avx2_unpacker(uint32_t type);
ms_q8_dot_fn ms_q8_avx2_dotter(void);

/* An unpacked row against nt inputs, input t's blocks at x + t * xs, its
 * result at out[t * os]: each the same bits as the dot of that input alone.
 * AVX-512 BW + VNNI only (NULL without, or with MS_FFN_NO_AVX512=1): the
 * row's codes and scales are loaded once per eight inputs (then four, then
 * the rest). */
typedef void (*ms_q8_dotn_fn)(const struct ms_q8_w *w,
			      const struct ms_q8_act *x, int64_t xs, int64_t nb,
			      int nt, float *out, int64_t os);
ms_q8_dotn_fn ms_q8_avx512_dotn(void);

/* AVX2 only (NULL elsewhere): one row against in->nt (1..4) inputs, the
 * codes made in registers; out[t] has the same bits as unpack + dot. With
 * in->pf, each block also prefetches the weights MS_Q8_PF_BYTES ahead into
 * L2 (a matrix's rows are contiguous: near a row's end, the next row's
 * first blocks; kernels/ffn.c says when that pays). */
#define MS_Q8_FUSED_MAX 4
#define MS_Q8_PF_BYTES 4096

/* Two inputs' block factors side by side, as the AVX-512 forms' float
 * steps take them (input 2p in the low half, 2p + 1 in the high): each d
 * eight times and each input's 16 group sums. A product makes them once
 * (ms_q8_pairs), not every row: building them per row and block was a
 * tenth of a four-input block's time. */
struct ms_q8_pair {
	_Alignas(64) float d[16];
	int16_t bsum[32];
};

/* A fused product's inputs: nt (1..4) inputs' blocks x[t][0 .. nb), and
 * with nt >= 2 pair[p * nb + i] the pair (2p, 2p + 1)'s block i. */
struct ms_q8_in {
	const struct ms_q8_act *x[MS_Q8_FUSED_MAX];
	const struct ms_q8_pair *pair;
	int nt;
	bool pf;
};
void ms_q8_pairs(struct ms_q8_in *in, int64_t nb, struct ms_q8_pair *out);

/* A row in parts, for rows whose inputs would not stay in L1 together
 * (kernels/ffn.c): blocks i0..i1 of the row's nb in one call, the lanes
 * carried between the calls in acc (MS_Q8_PART_FLOATS floats, the kernel's
 * own layout). The part with i0 == 0 starts them, the one with i1 == nb
 * writes out[]; the parts in order give the bits of the whole row in one
 * call. pf: each block prefetches the weights this many bytes from it
 * (0: none; may be negative), in place of in->pf's MS_Q8_PF_BYTES: the
 * caller knows which part comes next. */
#define MS_Q8_PART_FLOATS 80
struct ms_q8_part {
	int64_t i0, i1, pf;
	float *acc;
};

/* part NULL: the whole row, prefetching as in->pf says */
typedef void (*ms_q8_fused_fn)(const uint8_t *row, const struct ms_q8_in *in,
			       const struct ms_q8_part *part, int64_t nb,
			       float *out);
ms_q8_fused_fn ms_q8_avx2_fused(uint32_t type);  /* the best of the two: */
ms_q8_fused_fn ms_q8_avx256_fused(uint32_t type); /* AVX2 */
ms_q8_fused_fn ms_q8_avx512_fused(uint32_t type); /* AVX-512 BW + VNNI, the
						     same bits; NULL without
						     them or with
						     MS_FFN_NO_AVX512=1 */

/* What every form does with a block's integer sums. Each sums the block's
 * products exactly in 8 integer lanes: lane k of A holds bytes 4k..4k+3 of
 * every 32-code chunk times its group's scale, lane k of M the mins (or
 * scales) of groups 2k and 2k+1 times the input's sums of 16. Then, as
 * ggml's AVX2 vec_dots do, floats per lane, with no horizontal sum per
 * block: acc[k] += fa * A[k], accm[k] += fm * M[k] (a multiply, then an
 * add), and at the end of the row the lanes acc - accm summed in a fixed
 * tree. The same operations in C and in vectors: the same bits. */
/* The weight's factor of M: dm + d * off (the AVX-512 forms apply it to
 * two inputs at once). */
static inline float ms_q8_wmin(float d, float dm, int32_t off)
{
	return dm + d * (float)off;
}

static inline void ms_q8_factors(const struct ms_q8_w *w,
				 const struct ms_q8_act *x, float *fa,
				 float *fm)
{
	*fa = x->d * w->d;
	*fm = x->d * ms_q8_wmin(w->d, w->dm, w->off);
}

/* ((r0 + r4) + (r2 + r6)) + ((r1 + r5) + (r3 + r7)) */
static inline float ms_q8_tree8(const float *r)
{
	float a0 = r[0] + r[4], a1 = r[1] + r[5], a2 = r[2] + r[6],
	      a3 = r[3] + r[7];
	float b0 = a0 + a2, b1 = a1 + a3;
	return b0 + b1;
}

#endif
