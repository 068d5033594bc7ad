/*
 * gpu_quant.cuh - the quant formats on the device: block geometry, scale
 * widening, and the arithmetic kernels/dequant.c does, with x86's rules for
 * NaN. Included by kernels/gpu_dequant.cu and kernels/gpu_matvec.cu; not a
 * contract between rooms (kernels.h is).
 *
 * Bit-identity with the C reference (which is bit-identical to ggml on x86)
 * needs three things on a GPU that the CPU gives for free:
 *
 * 1. No contraction. nvcc fuses a * b + c into an FMA by default
 *    (-fmad=true); every operation below whose rounding matters is written
 *    with __fmul_rn / __fadd_rn / __fsub_rn, which the compiler never fuses,
 *    so the files need no -fmad=false.
 *
 * 2. Subnormals. nvcc keeps them (-ftz=false) unless --use_fast_math is
 *    given; the Makefile does not give it, and MXFP4's 2^-128 scale needs it.
 *
 * 3. NaN payloads. An NVIDIA GPU returns the canonical NaN 0x7fffffff from
 *    any arithmetic that produces a NaN; x86 (SSE/AVX) returns the first NaN
 *    operand, quietened, and for an invalid operation (inf * 0, inf - inf)
 *    the "default NaN" 0xffc00000. Random bytes hold NaN and infinite f16
 *    scales, so x86_mul/x86_add/x86_sub below compute the IEEE result and,
 *    when it is NaN, put back the NaN x86 would have given. Operand order is
 *    the C reference's (which keeps ggml's): for a product at most one
 *    operand can be NaN there, so its order does not matter; a subtraction's
 *    and Q4_1/Q5_1's addition's first operand is the product.
 *
 * The widenings are the C reference's, bit for bit: f16 -> f32 exact with a
 * NaN quietened (bit 22 set), bf16 -> f32 a shift, MXFP4's E8M0 read with
 * ggml's "half" rule 2^(e-128).
 */
#ifndef MS_KERNELS_GPU_QUANT_CUH
#define MS_KERNELS_GPU_QUANT_CUH

#include <stdint.h>

#include <cuda_fp16.h>

#include "moestream/model.h"

namespace msq {

/* ---- block geometry (the same numbers as kernels/dequant.c's table) ---- */

template <int T> struct Geo;
#define MSQ_GEO(t, qk, bs)                                                     \
	template <> struct Geo<t> {                                            \
		static constexpr int QK = qk, BS = bs;                         \
	}
MSQ_GEO(MS_TYPE_F32, 1, 4);
MSQ_GEO(MS_TYPE_F16, 1, 2);
MSQ_GEO(MS_TYPE_BF16, 1, 2);
MSQ_GEO(MS_TYPE_Q4_0, 32, 18);
MSQ_GEO(MS_TYPE_Q4_1, 32, 20);
MSQ_GEO(MS_TYPE_Q5_0, 32, 22);
MSQ_GEO(MS_TYPE_Q5_1, 32, 24);
MSQ_GEO(MS_TYPE_Q8_0, 32, 34);
MSQ_GEO(MS_TYPE_Q2_K, 256, 84);
MSQ_GEO(MS_TYPE_Q3_K, 256, 110);
MSQ_GEO(MS_TYPE_Q4_K, 256, 144);
MSQ_GEO(MS_TYPE_Q5_K, 256, 176);
MSQ_GEO(MS_TYPE_Q6_K, 256, 210);
MSQ_GEO(MS_TYPE_IQ4_NL, 32, 18);
MSQ_GEO(MS_TYPE_IQ4_XS, 256, 136);
MSQ_GEO(MS_TYPE_MXFP4, 32, 17);
#undef MSQ_GEO

/* ---- bits ---------------------------------------------------------------- */

__device__ __forceinline__ float bits_f32(uint32_t u)
{
	return __uint_as_float(u);
}

__device__ __forceinline__ uint32_t f32_bits(float f)
{
	return __float_as_uint(f);
}

/* Little-endian 16-bit read at any byte address. */
__device__ __forceinline__ uint32_t rd16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

/* IEEE half -> float, exactly as dequant.c's f16_f32: exact for finite
 * values and infinities, a NaN keeps sign and payload and gets bit 22. */
__device__ __forceinline__ float f16_f32(uint32_t h)
{
	const uint32_t sign = (h & 0x8000u) << 16;
	const uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000u | man << 13 |
				(man ? 0x00400000u : 0u));
	if (exp)
		return bits_f32(sign | (exp + 112) << 23 | man << 13);
	if (!man)
		return bits_f32(sign);
	/* subnormal: man x 2^-24; move the leading 1 up to bit 10 */
	const int shift = __clz((int)man) - 21; /* 1..10 */
	man = (man << shift) & 0x3ffu;
	return bits_f32(sign | (uint32_t)(113 - shift) << 23 | man << 13);
}

/* IEEE half -> float by the hardware's conversion (one instruction, where
 * f16_f32 takes a dozen and branches): the same value as f16_f32 for every
 * input but a NaN, which comes out as a NaN whose payload is the
 * hardware's. For the matvec's block scales, where a NaN scale makes the
 * row's sum NaN either way. */
__device__ __forceinline__ float f16_f32_hw(uint32_t h)
{
	return __half2float(__ushort_as_half((unsigned short)h));
}

/* float -> IEEE half, round to nearest even (overflow to infinity,
 * subnormals kept). A NaN keeps its sign and the top payload bits and is
 * made quiet: 0x7e00 | (bits 13..21 of the payload), which is what x86's
 * F16C (vcvtps2ph) gives, so a host check can say "exactly". */
__device__ __forceinline__ uint16_t f32_f16(float f)
{
	if (f != f) {
		const uint32_t u = f32_bits(f);
		return (uint16_t)(((u >> 16) & 0x8000u) | 0x7e00u |
				  ((u >> 13) & 0x3ffu));
	}
	return __half_as_ushort(__float2half_rn(f));
}

/* E8M0 exponent -> 2^(e-128) (half the OCP scale; the table is doubled). */
__device__ __forceinline__ float e8m0_half_f32(uint32_t e)
{
	return bits_f32(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}

/* ---- x86 arithmetic --------------------------------------------------- */

/* The NaN x86 returns for an operation on a, b whose result is NaN: the
 * first NaN operand quietened, else (an invalid operation) the default NaN. */
__device__ __forceinline__ float x86_nan(float a, float b)
{
	if (a != a)
		return bits_f32(f32_bits(a) | 0x00400000u);
	if (b != b)
		return bits_f32(f32_bits(b) | 0x00400000u);
	return bits_f32(0xffc00000u);
}

__device__ __forceinline__ float x86_mul(float a, float b)
{
	const float r = __fmul_rn(a, b);
	return r != r ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float x86_add(float a, float b)
{
	const float r = __fadd_rn(a, b);
	return r != r ? x86_nan(a, b) : r;
}

__device__ __forceinline__ float x86_sub(float a, float b)
{
	const float r = __fsub_rn(a, b);
	return r != r ? x86_nan(a, b) : r;
}

/* ---- value tables (ggml-common.h) -------------------------------------- */

/* IQ4_NL / IQ4_XS levels and MXFP4's E2M1 values doubled, each as four
 * little-endian words of int8: entry k is byte k % 4 of word k / 4. Packed
 * like this so that the matvec can look four codes up at once with
 * __byte_perm, and the dequantiser with a shift. */
#define MSQ_IQ4NL_W0 0xbfad9881u /* -127 -104  -83  -65 */
#define MSQ_IQ4NL_W1 0xf6eaddcfu /*  -49  -35  -22  -10 */
#define MSQ_IQ4NL_W2 0x26190d01u /*    1   13   25   38 */
#define MSQ_IQ4NL_W3 0x71594535u /*   53   69   89  113 */
#define MSQ_E2M1_W0 0x03020100u  /*    0    1    2    3 */
#define MSQ_E2M1_W1 0x0c080604u  /*    4    6    8   12 */
#define MSQ_E2M1_W2 0xfdfeff00u  /*    0   -1   -2   -3 */
#define MSQ_E2M1_W3 0xf4f8fafcu  /*   -4   -6   -8  -12 */

__device__ __forceinline__ int tbl16(uint32_t k, uint32_t w0, uint32_t w1,
				     uint32_t w2, uint32_t w3)
{
	const uint32_t w = k < 4 ? w0 : k < 8 ? w1 : k < 12 ? w2 : w3;
	return (int8_t)(w >> (8 * (k & 3)));
}

__device__ __forceinline__ int kv_iq4nl(uint32_t k)
{
	return tbl16(k, MSQ_IQ4NL_W0, MSQ_IQ4NL_W1, MSQ_IQ4NL_W2, MSQ_IQ4NL_W3);
}

__device__ __forceinline__ int kv_e2m1x2(uint32_t k)
{
	return tbl16(k, MSQ_E2M1_W0, MSQ_E2M1_W1, MSQ_E2M1_W2, MSQ_E2M1_W3);
}

/* Four 4-bit codes (one in the low nibble of each byte of `codes`, high
 * nibbles zero) -> the four int8 table values, one per byte: two 8-entry
 * byte permutes and a select on bit 3 of each code. */
__device__ __forceinline__ uint32_t lut16x4(uint32_t codes, uint32_t w0,
					    uint32_t w1, uint32_t w2,
					    uint32_t w3)
{
	const uint32_t lo = codes & 0x07070707u;
	const uint32_t v = lo | lo >> 4; /* byte 0: c0 | c1 << 4, byte 2: c2 | c3 << 4 */
	const uint32_t sel = (v & 0xffu) | ((v >> 8) & 0xff00u);
	const uint32_t a = __byte_perm(w0, w1, sel); /* entries 0..7 */
	const uint32_t b = __byte_perm(w2, w3, sel); /* entries 8..15 */
	const uint32_t m = ((codes >> 3) & 0x01010101u) * 0xffu;
	return (a & ~m) | (b & m);
}

} /* namespace msq */

#endif /* MS_KERNELS_GPU_QUANT_CUH */
