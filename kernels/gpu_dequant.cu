/*
 * gpu_dequant.cu - quantized blocks -> f32 or f16 on the GPU, for every type
 * of the C reference (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
 * Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4).
 *
 * The promise is the C reference's bits: f32 output bit-identical to
 * ms_dequant_row (NaN payloads and the sign of the default NaN included,
 * random bytes included), f16 output that f32 value rounded to nearest even
 * (NaN as gpu_quant.cuh's f32_f16 says). So each element is computed by
 * dq1<T>() below with the very operations of kernels/dequant.c, in its order,
 * through gpu_quant.cuh's x86_* helpers; reading the two files side by side
 * is the review.
 *
 * Shape: one thread per 4 consecutive output elements, so that the stores
 * of a warp are contiguous (16 bytes of f32 or 8 of f16 per thread when the
 * destination is aligned for it); the block bytes are read with byte loads,
 * which the L1 serves (neighbouring threads read the same block). This is
 * the prefill path's first step and `dump`'s: memory-bound on the f16/f32
 * writes, 2-4x the bytes it reads, and nothing here tries to be cleverer.
 */
#include <errno.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "gpu_quant.cuh"

using namespace msq;

namespace {

/* Element i (0 <= i < QK) of the block at b, as kernels/dequant.c's
 * dq_<type> computes it. */
template <int T> __device__ __forceinline__ float dq1(const uint8_t *b, int i);

template <> __device__ __forceinline__ float dq1<MS_TYPE_F32>(const uint8_t *b, int)
{
	return bits_f32((uint32_t)b[0] | (uint32_t)b[1] << 8 |
			(uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
}

template <> __device__ __forceinline__ float dq1<MS_TYPE_F16>(const uint8_t *b, int)
{
	return f16_f32(rd16(b));
}

template <> __device__ __forceinline__ float dq1<MS_TYPE_BF16>(const uint8_t *b, int)
{
	return bits_f32(rd16(b) << 16);
}

/* Byte j of 16 nibble bytes gives element j (low) and j + 16 (high). */
__device__ __forceinline__ uint32_t nib32(const uint8_t *qs, int i)
{
	return i < 16 ? qs[i] & 0xfu : (uint32_t)qs[i - 16] >> 4;
}

/* Q4_0: (q - 8) * d */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q4_0>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b));
	return x86_mul((float)((int)nib32(b + 2, i) - 8), d);
}

/* Q4_1: q * d + m (the product first: add_nan_first) */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q4_1>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b)), m = f16_f32(rd16(b + 2));
	return x86_add(x86_mul((float)nib32(b + 4, i), d), m);
}

/* Q5_0/Q5_1's fifth bit: bit i of the little-endian 32-bit qh. */
__device__ __forceinline__ uint32_t five32(const uint8_t *qh,
					   const uint8_t *qs, int i)
{
	return nib32(qs, i) | ((qh[i / 8] >> (i % 8)) & 1u) << 4;
}

/* Q5_0: (q - 16) * d */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q5_0>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b));
	return x86_mul((float)((int)five32(b + 2, b + 6, i) - 16), d);
}

/* Q5_1: q * d + m */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q5_1>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b)), m = f16_f32(rd16(b + 2));
	return x86_add(x86_mul((float)five32(b + 4, b + 8, i), d), m);
}

/* Q8_0: q * d */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q8_0>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b));
	return x86_mul((float)(int8_t)b[2 + i], d);
}

/* MXFP4: kv[code] * 2^(e-128) (dequant.c: t[k] = (float)kv[k] * d) */
template <> __device__ __forceinline__ float dq1<MS_TYPE_MXFP4>(const uint8_t *b, int i)
{
	const float d = e8m0_half_f32(b[0]);
	return x86_mul((float)kv_e2m1x2(nib32(b + 1, i)), d);
}

/* IQ4_NL: d * kv[index] */
template <> __device__ __forceinline__ float dq1<MS_TYPE_IQ4_NL>(const uint8_t *b, int i)
{
	const float d = f16_f32(rd16(b));
	return x86_mul(d, (float)kv_iq4nl(nib32(b + 2, i)));
}

/* Q2_K: (d * sc) * q - (dmin * m); group g = i / 16 = 8h + 2j + k takes bits
 * 2j of qs[32h + 16k + l]. */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q2_K>(const uint8_t *b, int i)
{
	const int g = i / 16, l = i % 16;
	const float d = f16_f32(rd16(b + 80)), dmin = f16_f32(rd16(b + 82));
	const uint8_t *q = b + 16 + 32 * (g / 8) + 16 * (g % 2);
	const int shift = 2 * ((g % 8) / 2);
	const float dl = x86_mul(d, (float)(b[g] & 0xf));
	const float ml = x86_mul(dmin, (float)(b[g] >> 4));
	return x86_sub(x86_mul(dl, (float)((q[l] >> shift) & 3)), ml);
}

/* Q3_K: (d * (s - 32)) * q, q = 2 bits - 4 * !hbit */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q3_K>(const uint8_t *b, int i)
{
	const int g = i / 16, l = i % 16;
	const uint8_t *ss = b + 96;
	const float d = f16_f32(rd16(b + 108));
	const int lo = g < 8 ? ss[g] & 0xf : ss[g - 8] >> 4;
	const int hi = (ss[8 + g % 4] >> (2 * (g / 4))) & 3;
	const float dl = x86_mul(d, (float)((lo | hi << 4) - 32));
	const uint8_t *q = b + 32 + 32 * (g / 8) + 16 * (g % 2);
	const uint8_t *hm = b + 16 * (g % 2);
	const int shift = 2 * ((g % 8) / 2);
	const int hbit = 4 * (g / 8) + (g % 8) / 2;
	const int v = ((q[l] >> shift) & 3) - 4 * (~(hm[l] >> hbit) & 1);
	return x86_mul(dl, (float)v);
}

/* Q4_K/Q5_K's packed 6-bit scale and min of group g. */
__device__ __forceinline__ void k4_scale_min(const uint8_t *s, int g, int *sc,
					     int *mn)
{
	if (g < 4) {
		*sc = s[g] & 63;
		*mn = s[g + 4] & 63;
	} else {
		*sc = (s[g + 4] & 0xf) | (s[g - 4] >> 6) << 4;
		*mn = (s[g + 4] >> 4) | (s[g] >> 6) << 4;
	}
}

/* Q4_K: (d * sc) * q - (dmin * m) */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q4_K>(const uint8_t *b, int i)
{
	const int g = i / 32, l = i % 32;
	const float d = f16_f32(rd16(b)), dmin = f16_f32(rd16(b + 2));
	int sc, mn;
	k4_scale_min(b + 4, g, &sc, &mn);
	const float dl = x86_mul(d, (float)sc), ml = x86_mul(dmin, (float)mn);
	const int q = (b[16 + 32 * (g / 2) + l] >> (4 * (g % 2))) & 0xf;
	return x86_sub(x86_mul(dl, (float)q), ml);
}

/* Q5_K: as Q4_K, plus bit g of qh[l] worth 16 */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q5_K>(const uint8_t *b, int i)
{
	const int g = i / 32, l = i % 32;
	const float d = f16_f32(rd16(b)), dmin = f16_f32(rd16(b + 2));
	int sc, mn;
	k4_scale_min(b + 4, g, &sc, &mn);
	const float dl = x86_mul(d, (float)sc), ml = x86_mul(dmin, (float)mn);
	const int q = ((b[48 + 32 * (g / 2) + l] >> (4 * (g % 2))) & 0xf) |
		      ((b[16 + l] >> g) & 1) << 4;
	return x86_sub(x86_mul(dl, (float)q), ml);
}

/* Q6_K: (d * sc) * q, q = (4 low bits | 2 high bits << 4) - 32 */
template <> __device__ __forceinline__ float dq1<MS_TYPE_Q6_K>(const uint8_t *b, int i)
{
	const int h = i / 128, r = (i % 128) / 32, l = i % 32;
	const float d = f16_f32(rd16(b + 208));
	const uint8_t *ql = b + 64 * h + 32 * (r % 2);
	const uint8_t *qh = b + 128 + 32 * h;
	const int8_t sc = (int8_t)b[192 + 8 * h + 2 * r + l / 16];
	const float s = x86_mul(d, (float)sc);
	const int lo = (ql[l] >> (4 * (r / 2))) & 0xf;
	const int hi = (qh[l] >> (2 * r)) & 3;
	return x86_mul(s, (float)((lo | hi << 4) - 32));
}

/* IQ4_XS: (d * (ls - 32)) * kv[index] */
template <> __device__ __forceinline__ float dq1<MS_TYPE_IQ4_XS>(const uint8_t *b, int i)
{
	const int g = i / 32, l = i % 32;
	const float d = f16_f32(rd16(b));
	const uint32_t sh = rd16(b + 2);
	const int ls = ((b[4 + g / 2] >> (4 * (g % 2))) & 0xf) |
		       (int)((sh >> (2 * g)) & 3) << 4;
	const float dl = x86_mul(d, (float)(ls - 32));
	return x86_mul(dl, (float)kv_iq4nl(nib32(b + 8 + 16 * g, l)));
}

/*
 * Thread q writes elements 4q .. 4q+3 (those < n). `vec`: n % 4 == 0 and
 * dst aligned to the 4-element store (16 bytes f32, 8 bytes f16), decided
 * by the host once per call.
 */
template <int T, bool F16>
__global__ void __launch_bounds__(256)
dequant_kernel(const uint8_t *__restrict__ src, void *__restrict__ dst,
	       int64_t n, bool vec)
{
	constexpr int QK = Geo<T>::QK, BS = Geo<T>::BS;
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     q * 4 < n; q += stride) {
		const int64_t i0 = q * 4;
		float v[4];
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const int64_t i = i0 + k;
			v[k] = 0.0f;
			if (i < n) {
				const int64_t blk = i / QK;
				v[k] = dq1<T>(src + blk * BS, (int)(i - blk * QK));
			}
		}
		if (F16) {
			uint16_t *o = (uint16_t *)dst + i0;
			if (vec) {
				uint2 w;
				w.x = (uint32_t)f32_f16(v[0]) |
				      (uint32_t)f32_f16(v[1]) << 16;
				w.y = (uint32_t)f32_f16(v[2]) |
				      (uint32_t)f32_f16(v[3]) << 16;
				*(uint2 *)o = w;
			} else {
				for (int k = 0; k < 4 && i0 + k < n; k++)
					o[k] = f32_f16(v[k]);
			}
		} else {
			float *o = (float *)dst + i0;
			if (vec) {
				*(float4 *)o = make_float4(v[0], v[1], v[2], v[3]);
			} else {
				for (int k = 0; k < 4 && i0 + k < n; k++)
					o[k] = v[k];
			}
		}
	}
}

typedef void (*dq_kernel_t)(const uint8_t *, void *, int64_t, bool);

struct dq_entry {
	dq_kernel_t f32, f16;
	int qk;
};

template <int T> constexpr dq_entry dq_make()
{
	return { dequant_kernel<T, false>, dequant_kernel<T, true>, Geo<T>::QK };
}

/* The kernels of `type`, or all-NULL for a type without one. */
dq_entry dq_lookup(uint32_t type)
{
	switch (type) {
	case MS_TYPE_F32: return dq_make<MS_TYPE_F32>();
	case MS_TYPE_F16: return dq_make<MS_TYPE_F16>();
	case MS_TYPE_BF16: return dq_make<MS_TYPE_BF16>();
	case MS_TYPE_Q4_0: return dq_make<MS_TYPE_Q4_0>();
	case MS_TYPE_Q4_1: return dq_make<MS_TYPE_Q4_1>();
	case MS_TYPE_Q5_0: return dq_make<MS_TYPE_Q5_0>();
	case MS_TYPE_Q5_1: return dq_make<MS_TYPE_Q5_1>();
	case MS_TYPE_Q8_0: return dq_make<MS_TYPE_Q8_0>();
	case MS_TYPE_Q2_K: return dq_make<MS_TYPE_Q2_K>();
	case MS_TYPE_Q3_K: return dq_make<MS_TYPE_Q3_K>();
	case MS_TYPE_Q4_K: return dq_make<MS_TYPE_Q4_K>();
	case MS_TYPE_Q5_K: return dq_make<MS_TYPE_Q5_K>();
	case MS_TYPE_Q6_K: return dq_make<MS_TYPE_Q6_K>();
	case MS_TYPE_IQ4_NL: return dq_make<MS_TYPE_IQ4_NL>();
	case MS_TYPE_IQ4_XS: return dq_make<MS_TYPE_IQ4_XS>();
	case MS_TYPE_MXFP4: return dq_make<MS_TYPE_MXFP4>();
	default: return { nullptr, nullptr, 0 };
	}
}

/* float -> f16 (f32_f16's rounding), for the prefill path's inputs. */
__global__ void __launch_bounds__(256)
f32_to_f16_kernel(const float *__restrict__ src, uint16_t *__restrict__ dst,
		  int64_t n)
{
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += stride)
		dst[i] = f32_f16(src[i]);
}

/* Enough blocks to fill the device a few times over; the kernels loop. */
unsigned grid_for(int64_t threads)
{
	int64_t b = (threads + 255) / 256;
	return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

} /* namespace */

extern "C" bool ms_gpu_dequant_supported(uint32_t type)
{
	return dq_lookup(type).f32 != nullptr;
}

cudaError_t msg_dequant_launch(uint32_t type, const void *src, void *dst,
			       int64_t n, bool f16, cudaStream_t stream)
{
	const dq_entry e = dq_lookup(type);
	if (!e.f32)
		return cudaErrorInvalidValue;
	const bool vec = n % 4 == 0 && (uintptr_t)dst % (f16 ? 8 : 16) == 0;
	(f16 ? e.f16 : e.f32)<<<grid_for((n + 3) / 4), 256, 0, stream>>>(
		(const uint8_t *)src, dst, n, vec);
	return cudaGetLastError();
}

cudaError_t msg_f32_to_f16_launch(const float *src, void *dst, int64_t n,
				  cudaStream_t stream)
{
	f32_to_f16_kernel<<<grid_for(n), 256, 0, stream>>>(src, (uint16_t *)dst,
							   n);
	return cudaGetLastError();
}

extern "C" int ms_gpu_dequant(uint32_t type, const void *src, void *dst,
			      int64_t n, bool f16, void *stream,
			      struct ms_err *err)
{
	const dq_entry e = dq_lookup(type);
	if (!e.f32)
		return ms_err_set(err, -ENOTSUP,
				  "gpu dequant: no kernel for type %s",
				  ms_type_name(type));
	if (n < 0 || n % e.qk)
		return ms_err_set(err, -EINVAL,
				  "gpu dequant: %lld elements of %s: not a "
				  "multiple of its block of %d",
				  (long long)n, ms_type_name(type), e.qk);
	if (n == 0)
		return 0;
	if (!src || !dst)
		return ms_err_set(err, -EINVAL,
				  "gpu dequant: NULL source or destination");
	if ((uintptr_t)dst % (f16 ? 2 : 4))
		return ms_err_set(err, -EINVAL,
				  "gpu dequant: destination %p is not aligned "
				  "to its %s elements",
				  dst, f16 ? "f16" : "f32");
	cudaError_t ce =
		msg_dequant_launch(type, src, dst, n, f16, (cudaStream_t)stream);
	if (ce != cudaSuccess)
		return ms_err_set(err, msg_cuda_errno(ce),
				  "gpu dequant %s: launch failed: %s",
				  ms_type_name(type), cudaGetErrorString(ce));
	return 0;
}
