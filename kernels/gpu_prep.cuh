/*
 * gpu_prep.cuh - the fused matvec's prepared input (kernels/gpu_matvec.cu
 * says why and how): its block type and the warp function that writes one
 * block, shared by the matvec's own preparation (prep_kernel) and the norms
 * that hand their output over already prepared (kernels/gpu_ops.cu), so
 * that both write the same bits. Not a contract between rooms (kernels.h
 * is).
 */
#ifndef MS_KERNELS_GPU_PREP_CUH
#define MS_KERNELS_GPU_PREP_CUH

#include <stdint.h>

#include <cuda_runtime.h>

#include "gpu_internal.cuh"

namespace msq {

/* 32 elements of one token in NP int8 digit planes (elements 0..15 in
 * dig[p][0], 16..31 in dig[p][1]) and meta = (s, s * sum X[0..15],
 * s * sum X[16..31], 0), x ~ s * X.
 * NP = 3: X = d0 + 256 d1 + 65536 d2 (digit p in plane p), a 22-bit integer
 *         and s a power of two: exact to f32's precision;
 * NP = 1: X = q in -127..127 and s = amax / 127 (ggml's q8_1). */
template <int NP> struct __align__(16) XBlk {
	int4 dig[NP][2];
	float4 meta;
};
static_assert(sizeof(XBlk<3>) == MSG_XBLK_BYTES, "prepared block size");
static_assert(sizeof(XBlk<1>) == MSG_XBLK8_BYTES, "prepared block size");

/*
 * One warp writes block o of 32 elements, lane = element v (every lane of
 * the warp calling, with its element).
 * NP = 3: s = 2^(E - 22) where the block's largest magnitude is < 2^E, so
 * |X| = |rint(x / s)| <= 2^22 and the digits fit: d0, d1 in -128..127 and
 * |d2| <= 65. E is clamped to [-100, 127] so that s stays a normal float (a
 * block whose largest element is below 2^-100 is read as zeros, an error
 * under 2^-123 each).
 * NP = 1: s = amax / 127 (f32), q = rint(x / s) (a zero block: s = 0, q = 0).
 * Inputs must be finite.
 */
template <int NP>
__device__ __forceinline__ void prep_block(float v, XBlk<NP> *o)
{
	const int lane = threadIdx.x & 31;
	const uint32_t mbits =
		__reduce_max_sync(0xffffffffu, __float_as_uint(fabsf(v)));
	int8_t *dig = (int8_t *)o->dig;
	float sc;
	int X;
	if (NP == 1) {
		sc = __uint_as_float(mbits) / 127.0f;
		X = sc > 0.0f ? __float2int_rn(v / sc) : 0;
		X = X < -127 ? -127 : X > 127 ? 127 : X;
		dig[lane] = (int8_t)X;
	} else {
		int E = 0;
		frexpf(__uint_as_float(mbits), &E);
		E = E < -100 ? -100 : E > 127 ? 127 : E;
		sc = ldexpf(1.0f, E - 22);
		X = __float2int_rn(ldexpf(v, 22 - E));
		const int d0 = ((X + 128) & 255) - 128;
		const int r = (X - d0) >> 8; /* exact: a multiple of 256 */
		const int d1 = ((r + 128) & 255) - 128;
		const int d2 = (r - d1) >> 8;
		dig[lane] = (int8_t)d0;
		dig[32 + lane] = (int8_t)d1;
		dig[64 + lane] = (int8_t)d2;
	}
	int s = X; /* |sum| <= 16 * 2^22: fits */
#pragma unroll
	for (int off = 8; off > 0; off >>= 1)
		s += __shfl_xor_sync(0xffffffffu, s, off); /* within halves */
	const int s_hi = __shfl_sync(0xffffffffu, s, 16);
	if (lane == 0)
		o->meta = make_float4(sc, sc * (float)s, sc * (float)s_hi, 0.0f);
}

} /* namespace msq */

#endif /* MS_KERNELS_GPU_PREP_CUH */
