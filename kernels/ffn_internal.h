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

#endif
