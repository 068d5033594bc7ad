/*
 * gpu_ops.cu - the small kernels of a forward pass on the GPU: RMS norm,
 * residual adds and biases, per-head norm + NEOX RoPE, the KV-cache store,
 * attention over the cache, the MoE router and its top-k, the MoE combine,
 * and row gather/scatter.
 *
 * Each one keeps the arithmetic of the C forward pass (engine/forward.c) so
 * that a GPU pass can be held to the CPU's result:
 *
 *  - norms: the mean of squares in double, one f32 scale, then
 *    (x * scale) * w in f32. The double sum is reduced in a fixed order
 *    (per thread, then a warp butterfly, then the warps in order), so a
 *    result is the same on every run; its order differs from the C loop's
 *    only in the last bits of a double.
 *  - element-wise products and sums that the C code rounds one by one are
 *    written with __fmul_rn / __fadd_rn: nvcc never fuses those into an
 *    FMA, so combine, add and bias are bit-identical to the C loops.
 *  - RoPE in double, as the C code; only pow/cos/sin (CUDA's, within an
 *    ulp or two of glibc's) and a possible double FMA differ, below the
 *    final f32 rounding almost always.
 *  - the KV store rounds to f16 with msq::f32_f16 (gpu_quant.cuh), the same
 *    bits as ms_f32_f16.
 *  - attention: one block per (token, head), positions in tiles of 256
 *    whose scores live in shared memory, an online softmax across tiles
 *    (running max, the running sum in double, the V accumulator rescaled
 *    when the max grows), so n_pos is limited by nothing but time. The
 *    exponentials are taken against the running max rather than the final
 *    one, and V is summed before the 1/sum rather than after: ~1e-7
 *    relative from the C loop, which the test bounds at 1e-5.
 *  - routing top-k: kernels/router.c's select_d over double, one warp per
 *    token (below, at route_topk_kernel). Only the softmax's sum is
 *    reduced in another order (a butterfly) and CUDA's exp/log1p may be
 *    an ulp from glibc's: the last bits of a double, so the choice is the
 *    host's and a weight is the same f32 but in the rarest case.
 *  - the router's product for one token (route_gemv_topk_kernel): each
 *    logit a sum in double of the f32 products, in a fixed order, rounded
 *    to f32 (router.c's dots; the host's f32 matmul flushes its FMA chains
 *    to double), and in the same launch the top-k above: one kernel where
 *    cuBLAS's GEMV and the top-k were two, the router's weights loaded
 *    before the PDL wait.
 *
 * Simple first: one block per row or per (token, head), grid-stride loops
 * beyond 65535 blocks. Attention for a single decode token uses n_head
 * blocks only; splitting the positions across blocks (flash-decoding) is
 * the next step when that matters.
 *
 * Every launch goes through ops_launch (msg_launch: PDL where the context
 * has it), and every kernel's threads first wait for the kernel before
 * (msg_grid_wait, gpu_internal.cuh); shared memory is dynamic (`extern
 * __shared__`, sized at the launch) and the kernels use only what
 * tests/cuda-emu emulates.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "gpu_prep.cuh"
#include "gpu_quant.cuh"

/* Largest element count of one call (rows x columns): offsets stay far from
 * int64 overflow. */
#define OPS_MAX_ELEMS ((int64_t)1 << 40)

/* Largest head size attention takes (one thread per dimension). */
#define ATT_MAX_D 256

/* Positions per attention tile (scores in shared memory). */
#define ATT_TILE 256

/* Most experts of a routing call (ms_gpu_route_topk's contract): each lane
 * of a warp holds ROUTE_MAX_EXPERT / 32 scores in registers. */
#define ROUTE_MAX_EXPERT 1024
#define ROUTE_PER_LANE (ROUTE_MAX_EXPERT / 32)

/* Tokens (warps) per routing CTA. */
#define ROUTE_WARPS 4

/* The router's product (route_gemv_topk_kernel): threads per CTA (one
 * CTA per expert), and the float4 of the row each thread loads before the
 * PDL wait (rows up to RG_THREADS * 4 * RG_EARLY = 8192 floats wholly;
 * longer rows load the rest after it). */
#define RG_THREADS 256
#define RG_EARLY 8

/* Dynamic shared memory: a norm's 32 doubles; attention's q, scores,
 * partial sums (floats), then 32 floats and 32 doubles for reductions. */
#define NORM_SMEM (32 * sizeof(double))
#define ATT_SMEM ((2 * ATT_MAX_D + ATT_TILE + 32) * sizeof(float) + \
		  32 * sizeof(double))
/* routing: each warp's selected weights, in double until the end */
#define ROUTE_SMEM (ROUTE_WARPS * MS_ROUTER_MAX_USED * sizeof(double))
/* the router's product: block_sum_d's 32 doubles, the weights, the
 * logits, the last-CTA flag */
#define RG_SMEM ((32 + MS_ROUTER_MAX_USED) * sizeof(double) + \
		 ROUTE_MAX_EXPERT * sizeof(float) + 16)

namespace {

/* ---- device helpers ---------------------------------------------------- */

/* The sum of v over the block (blockDim.x a multiple of 32, at most 1024),
 * the same value in every thread; sh holds 32 doubles. Safe to call again
 * at once with the same sh. */
__device__ double block_sum_d(double v, double *sh)
{
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	const int lane = (int)(threadIdx.x & 31), w = (int)(threadIdx.x >> 5);
	const int nw = (int)(blockDim.x >> 5);
	__syncthreads(); /* sh's last readers are done */
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	double s = 0;
	for (int i = 0; i < nw; i++)
		s += sh[i];
	return s;
}

/* The max of v over the block, as block_sum_d. */
__device__ float block_max_f(float v, float *sh)
{
	for (int o = 16; o; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	const int lane = (int)(threadIdx.x & 31), w = (int)(threadIdx.x >> 5);
	const int nw = (int)(blockDim.x >> 5);
	__syncthreads();
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	float m = sh[0];
	for (int i = 1; i < nw; i++)
		m = fmaxf(m, sh[i]);
	return m;
}

/* The norm's scale, 1 / sqrtf(mean of squares + eps), from each thread's
 * sum of squares s of its elements (i = threadIdx.x, + blockDim.x, ... in
 * that order): every thread of the block taking part. */
__device__ float rms_finish(double s, int64_t n, float eps, double *sh)
{
	s = block_sum_d(s, sh);
	return 1.0f / sqrtf((float)(s / (double)n) + eps);
}

/* rms_finish's scale of x[0..n), as forward.c's rms_norm. */
__device__ float rms_scale(const float *x, int64_t n, float eps, double *sh)
{
	double s = 0;
	for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
		const double v = x[i];
		s += v * v; /* exact in double: an FMA changes nothing */
	}
	return rms_finish(s, n, eps, sh);
}

/* Element e of token t's MoE output added to its residual x: sum_j
 * w[t][j] * y[t][j][e] in order, plus the shared expert's, rounded one
 * by one as forward.c does (the value moe_combine_kernel stores). */
__device__ __forceinline__ float combine_at(const float *x, const float *y,
					    const float *w, const float *sh,
					    int64_t E, int64_t K, int64_t t,
					    int64_t e)
{
	float m = 0.0f;
	for (int64_t j = 0; j < K; j++)
		m = __fadd_rn(m, __fmul_rn(w[t * K + j], y[(t * K + j) * E + e]));
	if (sh)
		m = __fadd_rn(m, sh[t * E + e]);
	return __fadd_rn(x[t * E + e], m);
}

/* The residual's updates that update_norm_kernel applies: x + a, and the
 * MoE combine. */
struct AddRow {
	const float *a;
	__device__ float operator()(const float *x, int64_t n, int64_t t,
				    int64_t i) const
	{
		return __fadd_rn(x[t * n + i], a[t * n + i]);
	}
};

struct CombineRow {
	const float *y, *w, *sh;
	int64_t K;
	__device__ float operator()(const float *x, int64_t n, int64_t t,
				    int64_t i) const
	{
		return combine_at(x, y, w, sh, n, K, t, i);
	}
};

/* ---- kernels ------------------------------------------------------------- */

/* One block per row. x and y may be the same: every element is read for
 * the sum before the barriers in block_sum_d, then read and written by the
 * one thread that owns it. */
__global__ void __launch_bounds__(256)
rms_norm_kernel(const float *x, const float *__restrict__ w, float *y,
		int64_t n, int64_t T, float eps)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double norm_sm[];
	double *sh = norm_sm;
	for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
		const float *xr = x + t * n;
		float *yr = y + t * n;
		const float scale = rms_scale(xr, n, eps, sh);
		for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
			yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
	}
}

/* One block per row: the residual's update (each element computed and
 * stored by the one thread that owns it, its square summed as
 * rms_scale sums it), then y = the RMS norm of the new row with w:
 * rms_norm_kernel's bits on what add_kernel or moe_combine_kernel would
 * have left in x. y must not overlap x or the update's inputs. With yq,
 * y is also written prepared for the fused matvec (8-bit blocks with
 * q8): n is a multiple of 32, so each warp's elements of one pass of the
 * loop are one whole block (blockDim is a multiple of 32). */
template <class Upd>
__global__ void __launch_bounds__(256)
update_norm_kernel(float *x, const float *__restrict__ w, float *y,
		   void *yq, bool q8, int64_t n, int64_t T, float eps, Upd upd)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double norm_sm[];
	double *sh = norm_sm;
	for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
		float *xr = x + t * n, *yr = y + t * n;
		double s = 0;
		for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
			const float v = upd(x, n, t, i);
			xr[i] = v;
			s += (double)v * (double)v;
		}
		const float scale = rms_finish(s, n, eps, sh);
		for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
			const float v = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
			yr[i] = v;
			const int64_t blk = (t * n + i) / 32;
			if (yq && q8)
				msq::prep_block<1>(v, (msq::XBlk<1> *)yq + blk);
			else if (yq)
				msq::prep_block<3>(v, (msq::XBlk<3> *)yq + blk);
		}
	}
}

__global__ void __launch_bounds__(256)
add_kernel(float *__restrict__ x, const float *__restrict__ a, int64_t n)
{
	msg_grid_wait();
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += stride)
		x[i] = __fadd_rn(x[i], a[i]);
}

/* Up to three (x, b) sets in one launch: element i of the sets' elements
 * laid end to end (set k from at[k], x[t][j] += b[j]). */
struct BiasSets {
	float *x[MS_GPU_BIAS_MAX];
	const float *b[MS_GPU_BIAS_MAX];
	int64_t n[MS_GPU_BIAS_MAX], at[MS_GPU_BIAS_MAX + 1];
};

__global__ void __launch_bounds__(256)
add_bias_kernel(const __grid_constant__ BiasSets s, int nset)
{
	msg_grid_wait();
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	const int64_t total = s.at[nset];
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i < total; i += stride) {
		int k = 0;
		while (i >= s.at[k + 1])
			k++;
		const int64_t j = i - s.at[k];
		s.x[k][j] = __fadd_rn(s.x[k][j], s.b[k][j % s.n[k]]);
	}
}

/* One block per (token, head) row of hd floats: the optional RMS norm,
 * then the NEOX rotation of pairs (i, i + n_rot/2). After the norm's
 * barriers each element belongs to one thread: i < half rotates i and
 * i + half, i >= n_rot is only normalised. */
/* One tensor's rows for rope_neox_kernel. */
struct RopeSet {
	float *x;
	const float *nw;
	int64_t n_head, rows;
};

/* One head's row v[hd] at position p, the whole block taking part: the
 * optional RMS norm (nw), then the NEOX rotation. */
__device__ void rope_row(float *v, const float *__restrict__ nw, double p,
			 float eps, int64_t hd, int64_t n_rot, float base,
			 float freq_scale, double *sh)
{
	const int64_t half = n_rot / 2;
	float scale = 1.0f;
	if (nw)
		scale = rms_scale(v, hd, eps, sh);
	for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) {
		if (i >= n_rot) {
			if (nw)
				v[i] = __fmul_rn(__fmul_rn(v[i], scale), nw[i]);
			continue;
		}
		if (i >= half)
			continue;
		float fa = v[i], fb = v[i + half];
		if (nw) {
			fa = __fmul_rn(__fmul_rn(fa, scale), nw[i]);
			fb = __fmul_rn(__fmul_rn(fb, scale), nw[i + half]);
		}
		const double theta = p * (double)freq_scale *
				     pow((double)base,
					 -2.0 * (double)i / (double)n_rot);
		const double c = cos(theta), s = sin(theta);
		const double a = fa, b = fb;
		v[i] = (float)(a * c - b * s);
		v[i + half] = (float)(a * s + b * c);
	}
}

/* A KV-cache element: an f16 (ms_f32_f16's bits) or the float. */
__device__ __forceinline__ void kv_put(void *cache, int64_t o, float v, bool f16)
{
	if (f16)
		((uint16_t *)cache)[o] = msq::f32_f16(v);
	else
		((float *)cache)[o] = v;
}

__global__ void __launch_bounds__(128)
rope_neox_kernel(RopeSet a, RopeSet b2, const int32_t *__restrict__ pos,
		 float eps, int64_t hd, int64_t n_rot, float base,
		 float freq_scale)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double rope_sm[];
	double *sh = rope_sm;
	for (int64_t r2 = blockIdx.x; r2 < a.rows + b2.rows; r2 += gridDim.x) {
		/* the block's row is a's or b2's: uniform across it */
		const bool in_a = r2 < a.rows;
		const int64_t r = in_a ? r2 : r2 - a.rows;
		const float *__restrict__ nw = in_a ? a.nw : b2.nw;
		float *v = (in_a ? a.x : b2.x) + r * hd;
		const double p = (double)pos[r / (in_a ? a.n_head : b2.n_head)];
		rope_row(v, nw, p, eps, hd, n_rot, base, freq_scale, sh);
	}
}

/* An attention's q, k and v after their products (ms_gpu_qkv_post): one
 * block per head row, q's rows first, then k's, then v's. Each row: its
 * bias added (each element by the thread that owns it), then for q and
 * k the norm and RoPE (rope_row), then for k and v the row stored into
 * its cache; barriers between the steps, whose elements other threads
 * read. The bits of add_bias_kernel, rope_neox_kernel, kv_store_kernel. */
struct QkvArgs {
	float *x[3];
	const float *b[3], *nw[2];
	int64_t n_head[3];
	void *cache[2];
	const int64_t *at;
	const int32_t *pos;
	int64_t hd, n_rot, T;
	float eps, base, freq_scale;
	bool f16;
};

__global__ void __launch_bounds__(128)
qkv_post_kernel(const __grid_constant__ QkvArgs a)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double qkv_sm[];
	double *sh = qkv_sm;
	const int64_t rq = a.T * a.n_head[0], rk = a.T * a.n_head[1];
	for (int64_t r2 = blockIdx.x; r2 < rq + 2 * rk; r2 += gridDim.x) {
		const int s = r2 < rq ? 0 : r2 < rq + rk ? 1 : 2; /* uniform */
		const int64_t r = r2 - (s == 0 ? 0 : s == 1 ? rq : rq + rk);
		const int64_t t = r / a.n_head[s], h = r % a.n_head[s];
		float *v = a.x[s] + r * a.hd;
		const float *b = a.b[s];
		if (b)
			for (int64_t i = threadIdx.x; i < a.hd; i += blockDim.x)
				v[i] = __fadd_rn(v[i], b[h * a.hd + i]);
		__syncthreads();
		if (s < 2) {
			rope_row(v, a.nw[s], (double)a.pos[t], a.eps, a.hd,
				 a.n_rot, a.base, a.freq_scale, sh);
			__syncthreads();
		}
		if (s > 0)
			for (int64_t i = threadIdx.x; i < a.hd; i += blockDim.x)
				kv_put(a.cache[s - 1], a.at[t] + h * a.hd + i, v[i],
				       a.f16);
		__syncthreads(); /* sh and v's last readers, before the next row */
	}
}

/* K and V (src2 NULL: one tensor) in one launch: elements [0, total) of
 * src into cache, [total, 2 total) of src2 into cache2. */
__global__ void __launch_bounds__(256)
kv_store_kernel(const float *__restrict__ src, void *cache,
		const float *__restrict__ src2, void *cache2,
		const int64_t *__restrict__ at, int64_t n, int64_t total,
		bool f16)
{
	msg_grid_wait();
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	const int64_t all = src2 ? 2 * total : total;
	for (int64_t i2 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i2 < all; i2 += stride) {
		const bool one = i2 < total;
		const int64_t i = one ? i2 : i2 - total;
		const float *sp = one ? src : src2;
		void *cp = one ? cache : cache2;
		const int64_t t = i / n;
		kv_put(cp, at[t] + i % n, sp[i], f16);
	}
}

/* One block of 256 threads per (token, head) pair r = t * n_head + h.
 *
 * A tile: warp w scores positions w, w + 8, ... (its lanes across D, then
 * a butterfly), into sc[]; the tile's max joins the running max m; sc[j]
 * becomes expf(s - m), its sum (double) joins the running sum, both the
 * sum and the V accumulators scaled by expf(m_old - m) first. For V, the
 * threads form nG = 256 / D groups of D (thread d of group g takes
 * dimension d of the tile's positions g, g + nG, ...); the groups' sums
 * are added at the end. With oq (D a multiple of 32: whole warps write
 * the output), the output is also written prepared for the fused matvec
 * (8-bit with q8), as the norms' yq. */
__global__ void __launch_bounds__(256)
attention_kernel(const float *q, const void *kc, const void *vc, bool f16,
		 const int64_t *__restrict__ base,
		 const int32_t *__restrict__ n_pos, int64_t stride,
		 int64_t n_head, int64_t group, int D, float scale, int64_t T,
		 float *out, void *oq, bool q8)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double att_sm[];
	double *dsh = att_sm; /* [32] */
	float *qs = (float *)(att_sm + 32); /* [ATT_MAX_D] */
	float *sc = qs + ATT_MAX_D;         /* [ATT_TILE] */
	float *part = sc + ATT_TILE;        /* [ATT_MAX_D] */
	float *fsh = part + ATT_MAX_D;      /* [32] */
	const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int nwarp = (int)(blockDim.x >> 5), nthr = (int)blockDim.x;
	const int nG = nthr / D, g = tid / D, d = tid % D;
	const uint16_t *k16 = (const uint16_t *)kc, *v16 = (const uint16_t *)vc;
	const float *k32 = (const float *)kc, *v32 = (const float *)vc;

	for (int64_t r = blockIdx.x; r < T * n_head; r += gridDim.x) {
		const int64_t t = r / n_head, kvh = (r % n_head) / group;
		const int64_t np = n_pos[t], off = base[t] + kvh * D;
		__syncthreads(); /* the last pair is done with qs and part */
		for (int i = tid; i < D; i += nthr)
			qs[i] = q[r * D + i];
		__syncthreads();
		float m = -INFINITY, acc = 0.0f;
		double sum = 0;
		for (int64_t p0 = 0; p0 < np; p0 += ATT_TILE) {
			const int nt = (int)(np - p0 < ATT_TILE ? np - p0 : ATT_TILE);
			for (int j = warp; j < nt; j += nwarp) {
				const int64_t row = off + (p0 + j) * stride;
				float s = 0.0f;
				if (f16)
					for (int e = lane; e < D; e += 32)
						s += qs[e] * msq::f16_f32(k16[row + e]);
				else
					for (int e = lane; e < D; e += 32)
						s += qs[e] * k32[row + e];
				for (int o = 16; o; o >>= 1)
					s += __shfl_xor_sync(0xffffffffu, s, o);
				if (lane == 0)
					sc[j] = s * scale;
			}
			__syncthreads();
			float mx = -INFINITY;
			for (int j = tid; j < nt; j += nthr)
				mx = fmaxf(mx, sc[j]);
			const float m_new = fmaxf(m, block_max_f(mx, fsh));
			const float f = expf(m - m_new); /* 0 on the first tile */
			/* every thread has read sc[] for the max (barriers in
			 * block_max_f): each now rewrites its own entries */
			double ts = 0;
			for (int j = tid; j < nt; j += nthr) {
				const float e = expf(sc[j] - m_new);
				sc[j] = e;
				ts += e;
			}
			ts = block_sum_d(ts, dsh); /* its barriers publish sc[] */
			sum = sum * (double)f + ts;
			m = m_new;
			acc *= f;
			if (g < nG)
				for (int j = g; j < nt; j += nG) {
					const int64_t row = off + (p0 + j) * stride + d;
					const float v = f16 ? msq::f16_f32(v16[row])
							    : v32[row];
					acc += sc[j] * v;
				}
			__syncthreads(); /* before the next tile's scores */
		}
		if (g < nG)
			part[tid] = acc; /* g * D + d */
		__syncthreads();
		if (tid < D) {
			float o = 0.0f;
			if (np >= 1) {
				for (int k = 0; k < nG; k++)
					o += part[k * D + tid];
				o *= (float)(1.0 / sum);
			}
			out[r * D + tid] = o;
			const int64_t blk = (r * D + tid) / 32;
			if (oq && q8)
				msq::prep_block<1>(o, (msq::XBlk<1> *)oq + blk);
			else if (oq)
				msq::prep_block<3>(o, (msq::XBlk<3> *)oq + blk);
		}
	}
}

__global__ void __launch_bounds__(256)
moe_combine_kernel(float *__restrict__ x, const float *__restrict__ y,
		   const float *__restrict__ w, const float *__restrict__ sh,
		   int64_t E, int64_t K, int64_t total)
{
	msg_grid_wait();
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i < total; i += stride) {
		x[i] = combine_at(x, y, w, sh, E, K, i / E, i % E);
	}
}

/* scatter = false: dst[i] = src[rows[i]]; true: dst[rows[i]] = src[i]. */
__global__ void __launch_bounds__(256)
rows_kernel(const float *__restrict__ src, const int32_t *__restrict__ rows,
	    int64_t E, int64_t total, float *__restrict__ dst, bool scatter)
{
	msg_grid_wait();
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i < total; i += stride) {
		const int64_t r = i / E, e = i % E, o = (int64_t)rows[r] * E + e;
		if (scatter)
			dst[o] = src[i];
		else
			dst[i] = src[o];
	}
}

/* The probability of one logit l as select_d computes it: softmax's
 * exp(l - mx) / sum (mx and sum over the row), sigmoid, sqrt(softplus)
 * (ggml_softplus's cut-over at 20), or l itself for softmax_weight. The
 * kernel's first pass and lane 0's second look at the chosen expert both
 * come here or do the same operations, so they agree to the bit. */
__device__ double route_prob(int gating, double l, double mx, double sum)
{
	switch (gating) {
	case MS_GATING_SOFTMAX:
		return exp(l - mx) / sum;
	case MS_GATING_SIGMOID:
		return 1.0 / (1.0 + exp(-l));
	case MS_GATING_SQRT_SOFTPLUS:
		return sqrt(l > 20.0 ? l : log1p(exp(l)));
	default: /* softmax_weight: the raw logit */
		return l;
	}
}

/* select_d's tail over the k chosen probabilities wd[] (double, changed
 * in place), in its order: softmax_weight's softmax, norm (the sum clamped
 * at 2^-14, as llama.cpp does), scale, the f32 rounding into wo[]. */
__device__ void route_tail(double *wd, int k, int gating, bool norm,
			   float scale, float *wo)
{
	if (gating == MS_GATING_SOFTMAX_WEIGHT) {
		double m = wd[0], z = 0;
		for (int i = 1; i < k; i++)
			m = wd[i] > m ? wd[i] : m;
		for (int i = 0; i < k; i++)
			z += wd[i] = exp(wd[i] - m);
		for (int i = 0; i < k; i++)
			wd[i] /= z;
	}
	if (norm) {
		double z = 0;
		for (int i = 0; i < k; i++)
			z += wd[i];
		if (z < 6.103515625e-5) /* llama.cpp's clamp, as router.c */
			z = 6.103515625e-5;
		for (int i = 0; i < k; i++)
			wd[i] /= z;
	}
	if (scale != 0.0f && scale != 1.0f)
		for (int i = 0; i < k; i++)
			wd[i] *= (double)scale;
	for (int i = 0; i < k; i++)
		wo[i] = (float)wd[i];
}

/* One token's choice by one warp: ms_router_select's select_d on its n
 * logits lr (global or shared memory) and the bias pb (NULL: none), the
 * ids best first into so[k], the weights into wo[k]; wd: k doubles of
 * shared memory for the warp.
 *
 * Lane j holds experts j, j + 32, ... (ascending ids) in s[], a register
 * array indexed only by unrolled loops: first the logits, then the
 * probabilities, then the scores (prob + bias). Softmax's max is exact in
 * any order; its sum is a butterfly (the last bits of a double differ
 * from select_d's sequential sum). A non-finite logit or bias anywhere in
 * the row makes it a fallback row (ids 0..k-1, weight 0, *bad = 1).
 *
 * Each of the k rounds: every lane its best by strict >, so the lower id
 * wins a tie as in select_d; then a butterfly argmax under the same order
 * (the greater score, or the same score and the lower id), which every
 * lane ends with; the owner marks it taken (-inf; scores are finite).
 * Lane 0 writes the id and keeps the unbiased probability (route_prob
 * again from the logit) in shared memory, then route_tail. */
__device__ void route_one(const float *lr, const float *__restrict__ pb,
			  int n, int k, int gating, bool norm, float scale,
			  int32_t *__restrict__ so, float *__restrict__ wo,
			  int32_t *bad, double *wd)
{
	const int lane = (int)(threadIdx.x & 31);
	double s[ROUTE_PER_LANE];
	double mx = -INFINITY, sum = 0;
	int nonfin = 0;
#pragma unroll
	for (int j = 0; j < ROUTE_PER_LANE; j++) {
		const int e = j * 32 + lane;
		s[j] = -INFINITY;
		if (e >= n)
			continue;
		s[j] = (double)lr[e];
		if (!isfinite(s[j]) || (pb && !isfinite(pb[e])))
			nonfin = 1;
		mx = s[j] > mx ? s[j] : mx;
	}
	for (int o = 16; o; o >>= 1)
		nonfin |= __shfl_xor_sync(0xffffffffu, nonfin, o);
	if (nonfin) { /* the whole warp: nonfin is the same in all */
		for (int i = lane; i < k; i += 32) {
			so[i] = i;
			wo[i] = 0.0f;
		}
		if (lane == 0)
			*bad = 1;
		return;
	}
	if (gating == MS_GATING_SOFTMAX) {
		for (int o = 16; o; o >>= 1) {
			const double m = __shfl_xor_sync(0xffffffffu, mx, o);
			mx = m > mx ? m : mx;
		}
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane < n) {
				s[j] = exp(s[j] - mx);
				sum += s[j];
			}
		for (int o = 16; o; o >>= 1)
			sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane < n)
				s[j] /= sum;
	} else if (gating != MS_GATING_SOFTMAX_WEIGHT) {
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane < n)
				s[j] = route_prob(gating, s[j], 0, 0);
	}
	if (pb) {
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane < n)
				s[j] += (double)pb[j * 32 + lane];
	}

	for (int i = 0; i < k; i++) {
		double bs = -INFINITY;
		int bi = INT32_MAX; /* none: this lane has none left */
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane < n && s[j] > bs) {
				bs = s[j];
				bi = j * 32 + lane;
			}
		for (int o = 16; o; o >>= 1) {
			const double os = __shfl_xor_sync(0xffffffffu, bs, o);
			const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			if (os > bs || (os == bs && oi < bi)) {
				bs = os;
				bi = oi;
			}
		}
#pragma unroll
		for (int j = 0; j < ROUTE_PER_LANE; j++)
			if (j * 32 + lane == bi)
				s[j] = -INFINITY;
		if (lane == 0) {
			so[i] = bi;
			wd[i] = route_prob(gating, (double)lr[bi], mx, sum);
		}
	}
	if (lane == 0)
		route_tail(wd, k, gating, norm, scale, wo);
}

/* One warp per token, ROUTE_WARPS per CTA: route_one on each row. */
__global__ void __launch_bounds__(ROUTE_WARPS * 32)
route_topk_kernel(const float *__restrict__ logits,
		  const float *__restrict__ pb, int64_t T, int n, int k,
		  int gating, bool norm, float scale, int32_t *__restrict__ sel,
		  float *__restrict__ w, int32_t *bad)
{
	msg_grid_wait();
	extern __shared__ __align__(16) double route_sm[];
	const int wid = (int)(threadIdx.x >> 5);
	const int64_t step = (int64_t)gridDim.x * ROUTE_WARPS;
	for (int64_t t = (int64_t)blockIdx.x * ROUTE_WARPS + wid; t < T;
	     t += step)
		route_one(logits + t * n, pb, n, k, gating, norm, scale,
			  sel + t * k, w + t * k, bad,
			  route_sm + wid * MS_ROUTER_MAX_USED);
}

/* acc + a . x over a float4's four products, in double, in order. */
__device__ __forceinline__ double dot4_d(double acc, float4 a, float4 x)
{
	acc = fma((double)a.x, (double)x.x, acc);
	acc = fma((double)a.y, (double)x.y, acc);
	acc = fma((double)a.z, (double)x.z, acc);
	return fma((double)a.w, (double)x.w, acc);
}

/* The router's product and its choice in one launch, for one token: CTA
 * r (of n) forms logit r = W[r] . h, each thread's share of the row in
 * double, the block's sum in a fixed order (block_sum_d), rounded to f32
 * as the host's router stores it. The row's first RG_EARLY float4 per
 * thread are loaded before the PDL wait (W is a resident tensor: nothing
 * on the device writes it), so the router's weights come in under the
 * kernel before; h only after. Each CTA then takes a ticket (the
 * split-K's pattern: a fence, an atomic count); the last one reads the n
 * logits back from L2 into shared memory, sets the counter back to zero
 * for the next launch and makes the choice with route_one: the same code,
 * so the same bits, as ms_gpu_route_topk on these logits. With sel NULL
 * the launch ends at the logits (ms_gpu_router_logits). */
__global__ void __launch_bounds__(RG_THREADS)
route_gemv_topk_kernel(const float *__restrict__ W, const float *h,
		       int64_t E, const float *__restrict__ pb, int n, int k,
		       int gating, bool norm, float scale, float *logits,
		       int32_t *__restrict__ sel, float *__restrict__ w,
		       int32_t *bad, unsigned *cnt)
{
	extern __shared__ __align__(16) double rg_sm[];
	double *red = rg_sm, *wd = rg_sm + 32;
	float *lg = (float *)(wd + MS_ROUTER_MAX_USED);
	int *last = (int *)(lg + ROUTE_MAX_EXPERT);
	const int tid = (int)threadIdx.x;
	const int64_t n4 = E / 4;
	const float4 *wr = (const float4 *)(W + (int64_t)blockIdx.x * E);
	float4 wv[RG_EARLY];
#pragma unroll
	for (int j = 0; j < RG_EARLY; j++) {
		const int64_t i = (int64_t)j * RG_THREADS + tid;
		wv[j] = i < n4 ? __ldg(wr + i) : make_float4(0, 0, 0, 0);
	}
	msg_grid_wait();
	const float4 *h4 = (const float4 *)h;
	double acc = 0;
#pragma unroll
	for (int j = 0; j < RG_EARLY; j++) {
		const int64_t i = (int64_t)j * RG_THREADS + tid;
		if (i < n4)
			acc = dot4_d(acc, wv[j], h4[i]);
	}
	for (int64_t i = (int64_t)RG_EARLY * RG_THREADS + tid; i < n4;
	     i += RG_THREADS)
		acc = dot4_d(acc, __ldg(wr + i), h4[i]);
	const double s = block_sum_d(acc, red);
	if (tid == 0)
		logits[blockIdx.x] = (float)s;
	if (!sel) /* the logits alone (ms_gpu_router_logits) */
		return;
	if (tid == 0) {
		__threadfence(); /* the logit is device-wide before the count */
		*last = atomicAdd(cnt, 1u) == (unsigned)n - 1;
	}
	__syncthreads();
	if (!*last)
		return;
	__threadfence();
	for (int i = tid; i < n; i += RG_THREADS)
		lg[i] = __ldcg(logits + i); /* from L2: the other CTAs' */
	if (tid == 0)
		*cnt = 0;
	__syncthreads();
	if (tid < 32)
		route_one(lg, pb, n, k, gating, norm, scale, sel, w, bad, wd);
}

/* ---- host side ------------------------------------------------------------ */

/* Blocks for `work` items of `per` each, within 1..65535 (the kernels loop
 * over the rest). */
unsigned blocks_for(int64_t work, int64_t per)
{
	const int64_t b = (work + per - 1) / per;
	return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

/* a >= 1, b >= 1 and a * b <= OPS_MAX_ELEMS. */
bool dims_ok(int64_t a, int64_t b)
{
	return a >= 1 && b >= 1 && a <= OPS_MAX_ELEMS / b;
}

/* The context's device made current (ops_launch takes its stream). */
int ops_enter(struct ms_gpu_ctx *c, const char *who, struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "%s: NULL context", who);
	cudaError_t ce = cudaSetDevice(ms_gpu_ctx_device(c));
	if (ce != cudaSuccess)
		return msg_cuda_fail(err, who, ce, "cudaSetDevice");
	return 0;
}

/* Launches k<<<blocks, threads, smem>>>(args) on c's stream, PDL where
 * c's launches are (every kernel of this file waits first): 0 when it
 * went in, else -EIO etc. and the runtime's message. */
template <class... P, class... A>
int ops_launch(const struct ms_gpu_ctx *c, const char *who,
	       struct ms_err *err, void (*k)(P...), unsigned blocks,
	       unsigned threads, size_t smem, A &&...args)
{
	cudaError_t ce = msg_launch(k, dim3(blocks), dim3(threads), smem,
				    (cudaStream_t)ms_gpu_ctx_stream(c),
				    ms_gpu_ctx_pdl(c), std::forward<A>(args)...);
	return ce == cudaSuccess ? 0 : msg_cuda_fail(err, who, ce, "launch");
}

/* -EINVAL naming the first of n pointers that is NULL ("x,w,y": their
 * names, comma-separated), else 0. */
int nonnull(const char *who, const char *names, const void *const *p, int n,
	    struct ms_err *err)
{
	for (int i = 0; i < n; i++, names = strchr(names, ',') + 1)
		if (!p[i]) {
			const char *end = strchr(names, ',');
			int len = end ? (int)(end - names) : (int)strlen(names);
			return ms_err_set(err, -EINVAL, "%s: %.*s is NULL", who,
					  len, names);
		}
	return 0;
}

/* ops_enter, then T rows of n elements checked ("%s: T rows of n"). */
int enter_rows(struct ms_gpu_ctx *c, const char *who, int64_t n, int64_t T,
	       struct ms_err *err)
{
	int rc = ops_enter(c, who, err);
	if (!rc && !dims_ok(n, T))
		rc = ms_err_set(err, -EINVAL, "%s: %lld rows of %lld", who,
				(long long)T, (long long)n);
	return rc;
}

#define NONNULL(who, names, ...)                                              \
	do {                                                                  \
		const void *const p_[] = { __VA_ARGS__ };                     \
		int rc_ = nonnull(who, names, p_,                             \
				  (int)(sizeof(p_) / sizeof(p_[0])), err);    \
		if (rc_)                                                      \
			return rc_;                                           \
	} while (0)

/* Launches add_bias_kernel over n sets, T rows each. */
int bias_launch(const struct ms_gpu_bias *b, int n, int64_t T,
		const struct ms_gpu_ctx *c, const char *who, struct ms_err *err)
{
	BiasSets s;
	memset(&s, 0, sizeof(s));
	int64_t at = 0;
	for (int k = 0; k < n; k++) {
		s.x[k] = b[k].x;
		s.b[k] = b[k].b;
		s.n[k] = b[k].n;
		s.at[k] = at;
		if (b[k].n * T > OPS_MAX_ELEMS - at)
			return ms_err_set(err, -EINVAL, "%s: %lld elements in all",
					  who, (long long)(at + b[k].n * T));
		at += b[k].n * T;
	}
	s.at[n] = at;
	return ops_launch(c, who, err, add_bias_kernel, blocks_for(at, 256),
			  256, 0, s, n);
}

} /* namespace */

/* The checks of a norm's eps and of its prepared output's shape. */
static int norm_args(const char *who, float eps, const void *yq, int64_t n,
		     struct ms_err *err)
{
	if (!(eps >= 0.0f) || isinf(eps))
		return ms_err_set(err, -EINVAL, "%s: eps %g", who, (double)eps);
	if (yq && n % 32)
		return ms_err_set(err, -EINVAL, "%s: a prepared output of rows "
				  "of %lld (not a multiple of 32)", who,
				  (long long)n);
	return 0;
}

extern "C" int ms_gpu_rms_norm(struct ms_gpu_ctx *c, const float *x,
			       const float *w, float *y, int64_t n, int64_t T,
			       float eps, struct ms_err *err)
{
	static const char who[] = "gpu rms_norm";
	int rc = enter_rows(c, who, n, T, err);
	if (rc || (rc = norm_args(who, eps, nullptr, n, err)))
		return rc;
	NONNULL(who, "x,w,y", x, w, y);
	return ops_launch(c, who, err, rms_norm_kernel, blocks_for(T, 1), 256,
			  NORM_SMEM, x, w, y, n, T, eps);
}

extern "C" int ms_gpu_add(struct ms_gpu_ctx *c, float *x, const float *a,
			  int64_t n, struct ms_err *err)
{
	static const char who[] = "gpu add";
	int rc = ops_enter(c, who, err);
	if (rc)
		return rc;
	if (!dims_ok(n, 1))
		return ms_err_set(err, -EINVAL, "%s: n %lld", who, (long long)n);
	NONNULL(who, "x,a", x, a);
	return ops_launch(c, who, err, add_kernel, blocks_for(n, 256), 256, 0,
			  x, a, n);
}

extern "C" int ms_gpu_add_rms_norm(struct ms_gpu_ctx *c, float *x,
				   const float *a, const float *w, float *y,
				   void *yq, int64_t n, int64_t T, float eps,
				   struct ms_err *err)
{
	static const char who[] = "gpu add_rms_norm";
	int rc = enter_rows(c, who, n, T, err);
	if (rc || (rc = norm_args(who, eps, yq, n, err)))
		return rc;
	NONNULL(who, "x,a,w,y", x, a, w, y);
	const auto k = update_norm_kernel<AddRow>;
	return ops_launch(c, who, err, k, blocks_for(T, 1), 256, NORM_SMEM, x,
			  w, y, yq, msg_ctx_q8(c), n, T, eps, AddRow{ a });
}

extern "C" int ms_gpu_add_bias(struct ms_gpu_ctx *c, float *x, const float *b,
			       int64_t n, int64_t T, struct ms_err *err)
{
	static const char who[] = "gpu add_bias";
	int rc = enter_rows(c, who, n, T, err);
	if (rc)
		return rc;
	NONNULL(who, "x,b", x, b);
	const struct ms_gpu_bias one = { x, b, n };
	return bias_launch(&one, 1, T, c, who, err);
}

extern "C" int ms_gpu_add_bias_n(struct ms_gpu_ctx *c, const struct ms_gpu_bias *b,
				 int n, int64_t T, struct ms_err *err)
{
	static const char who[] = "gpu add_bias_n";
	int rc = ops_enter(c, who, err);
	if (rc)
		return rc;
	if (!b || n < 1 || n > MS_GPU_BIAS_MAX)
		return ms_err_set(err, -EINVAL, "%s: %d sets (1..%d)", who, n,
				  MS_GPU_BIAS_MAX);
	for (int k = 0; k < n; k++) {
		if (!dims_ok(b[k].n, T))
			return ms_err_set(err, -EINVAL,
					  "%s: set %d: %lld rows of %lld", who,
					  k, (long long)T, (long long)b[k].n);
		NONNULL(who, "x,b", b[k].x, b[k].b);
	}
	return bias_launch(b, n, T, c, who, err);
}

/* rope_neox's checks of what both tensors share. */
static int rope_args(const char *who, int64_t head_dim, int64_t n_rot, float base,
	      float freq_scale, bool norm, float eps, struct ms_err *err)
{
	if (n_rot < 0 || n_rot % 2 || n_rot > head_dim)
		return ms_err_set(err, -EINVAL,
				  "%s: n_rot %lld: expected an even number "
				  "0..head_dim (%lld)",
				  who, (long long)n_rot, (long long)head_dim);
	if (!(base > 0.0f) || isinf(base) || !isfinite(freq_scale))
		return ms_err_set(err, -EINVAL, "%s: base %g, freq_scale %g",
				  who, (double)base, (double)freq_scale);
	if (norm && (!(eps >= 0.0f) || isinf(eps)))
		return ms_err_set(err, -EINVAL, "%s: eps %g", who, (double)eps);
	return 0;
}

static int rope_dims(const char *who, int64_t n_head, int64_t head_dim, int64_t T,
	      struct ms_err *err)
{
	if (!dims_ok(n_head, T) || !dims_ok(n_head * T, head_dim))
		return ms_err_set(err, -EINVAL,
				  "%s: %lld tokens of %lld heads of %lld", who,
				  (long long)T, (long long)n_head,
				  (long long)head_dim);
	return 0;
}

/* RoPE of q (and, k not NULL, of k) in one launch, each checked. */
static int rope_launch(struct ms_gpu_ctx *c, const char *who, float *q,
		const float *q_norm, int64_t n_head, float *k,
		const float *k_norm, int64_t n_head_kv, const int32_t *pos,
		float eps, int64_t head_dim, int64_t n_rot, int64_t T,
		float base, float freq_scale, struct ms_err *err)
{
	int rc = ops_enter(c, who, err);
	if (rc || (rc = rope_dims(who, n_head, head_dim, T, err)) ||
	    (k && (rc = rope_dims(who, n_head_kv, head_dim, T, err))) ||
	    (rc = rope_args(who, head_dim, n_rot, base, freq_scale,
			    q_norm || k_norm, eps, err)))
		return rc;
	if (k && (n_head + n_head_kv) > OPS_MAX_ELEMS / T)
		return ms_err_set(err, -EINVAL, "%s: %lld + %lld heads of %lld "
				  "tokens", who, (long long)n_head,
				  (long long)n_head_kv, (long long)T);
	NONNULL(who, "x,pos", q, pos);
	const RopeSet a = { q, q_norm, n_head, n_head * T },
		      b2 = { k, k_norm, k ? n_head_kv : 1, k ? n_head_kv * T : 0 };
	return ops_launch(c, who, err, rope_neox_kernel,
			  blocks_for(a.rows + b2.rows, 1), 128, NORM_SMEM, a, b2,
			  pos, eps, head_dim, n_rot, base, freq_scale);
}

extern "C" int ms_gpu_rope_neox(struct ms_gpu_ctx *c, float *x,
				const int32_t *pos, const float *norm_w,
				float eps, int64_t n_head, int64_t head_dim,
				int64_t n_rot, int64_t T, float base,
				float freq_scale, struct ms_err *err)
{
	return rope_launch(c, "gpu rope_neox", x, norm_w, n_head, nullptr,
			   nullptr, 0, pos, eps, head_dim, n_rot, T, base,
			   freq_scale, err);
}

extern "C" int ms_gpu_rope_neox_qk(struct ms_gpu_ctx *c, float *q,
				   const float *q_norm, int64_t n_head,
				   float *k, const float *k_norm,
				   int64_t n_head_kv, const int32_t *pos,
				   float eps, int64_t head_dim, int64_t n_rot,
				   int64_t T, float base, float freq_scale,
				   struct ms_err *err)
{
	if (!k)
		return ms_err_set(err, -EINVAL, "gpu rope_neox_qk: k is NULL");
	return rope_launch(c, "gpu rope_neox_qk", q, q_norm, n_head, k, k_norm,
			   n_head_kv, pos, eps, head_dim, n_rot, T, base,
			   freq_scale, err);
}


/* kv_store's checks of one (src, cache) pair. */
static int kv_pair(const char *who, const float *src, const void *cache, bool f16,
	    struct ms_err *err)
{
	NONNULL(who, "src,cache", src, cache);
	if ((uintptr_t)cache % (f16 ? 2u : 4u))
		return ms_err_set(err, -EINVAL,
				  "%s: cache %p is not aligned to its %s "
				  "elements",
				  who, cache, f16 ? "f16" : "f32");
	return 0;
}

/* K (and, v not NULL, V) stored in one launch, each checked. */
static int kv_launch(struct ms_gpu_ctx *c, const char *who, const float *k,
	      void *k_cache, const float *v, void *v_cache, const int64_t *at,
	      int64_t n, int64_t T, bool f16, struct ms_err *err)
{
	int rc = enter_rows(c, who, n, T, err);
	if (rc || (rc = kv_pair(who, k, k_cache, f16, err)) ||
	    (v && (rc = kv_pair(who, v, v_cache, f16, err))))
		return rc;
	NONNULL(who, "at", at);
	if (v && n * T > OPS_MAX_ELEMS / 2)
		return ms_err_set(err, -EINVAL, "%s: 2 x %lld rows of %lld", who,
				  (long long)T, (long long)n);
	return ops_launch(c, who, err, kv_store_kernel,
			  blocks_for((v ? 2 : 1) * n * T, 256), 256, 0, k,
			  k_cache, v, v_cache, at, n, n * T, f16);
}

extern "C" int ms_gpu_kv_store(struct ms_gpu_ctx *c, const float *src,
			       void *cache, const int64_t *at, int64_t n,
			       int64_t T, bool f16, struct ms_err *err)
{
	return kv_launch(c, "gpu kv_store", src, cache, nullptr, nullptr, at, n,
			 T, f16, err);
}

extern "C" int ms_gpu_kv_store_kv(struct ms_gpu_ctx *c, const float *k,
				  void *k_cache, const float *v, void *v_cache,
				  const int64_t *at, int64_t n, int64_t T,
				  bool f16, struct ms_err *err)
{
	if (!v)
		return ms_err_set(err, -EINVAL, "gpu kv_store_kv: v is NULL");
	return kv_launch(c, "gpu kv_store_kv", k, k_cache, v, v_cache, at, n, T,
			 f16, err);
}

extern "C" int ms_gpu_qkv_post(struct ms_gpu_ctx *c,
			       const struct ms_gpu_qkv *q, int64_t T,
			       struct ms_err *err)
{
	static const char who[] = "gpu qkv_post";
	int rc = ops_enter(c, who, err);
	if (rc)
		return rc;
	if (!q)
		return ms_err_set(err, -EINVAL, "%s: NULL arguments", who);
	if ((rc = rope_dims(who, q->n_head, q->head_dim, T, err)) ||
	    (rc = rope_dims(who, q->n_head_kv, q->head_dim, T, err)) ||
	    (rc = rope_args(who, q->head_dim, q->n_rot, q->base, q->freq_scale,
			    q->q_norm || q->k_norm, q->eps, err)) ||
	    (rc = kv_pair(who, q->k, q->k_cache, q->f16, err)) ||
	    (rc = kv_pair(who, q->v, q->v_cache, q->f16, err)))
		return rc;
	if (q->n_head + 2 * q->n_head_kv > OPS_MAX_ELEMS / T)
		return ms_err_set(err, -EINVAL, "%s: %lld + 2 x %lld heads of "
				  "%lld tokens", who, (long long)q->n_head,
				  (long long)q->n_head_kv, (long long)T);
	NONNULL(who, "q,pos,at", q->q, q->pos, q->at);
	QkvArgs a;
	memset(&a, 0, sizeof(a));
	a.x[0] = q->q;
	a.x[1] = q->k;
	a.x[2] = q->v;
	a.b[0] = q->bq;
	a.b[1] = q->bk;
	a.b[2] = q->bv;
	a.nw[0] = q->q_norm;
	a.nw[1] = q->k_norm;
	a.n_head[0] = q->n_head;
	a.n_head[1] = a.n_head[2] = q->n_head_kv;
	a.cache[0] = q->k_cache;
	a.cache[1] = q->v_cache;
	a.at = q->at;
	a.pos = q->pos;
	a.hd = q->head_dim;
	a.n_rot = q->n_rot;
	a.T = T;
	a.eps = q->eps;
	a.base = q->base;
	a.freq_scale = q->freq_scale;
	a.f16 = q->f16;
	return ops_launch(c, who, err, qkv_post_kernel,
			  blocks_for(T * (q->n_head + 2 * q->n_head_kv), 1), 128,
			  NORM_SMEM, a);
}

extern "C" int ms_gpu_attention_q(struct ms_gpu_ctx *c, const float *q,
				  const void *k_cache, const void *v_cache,
				  bool f16, const int64_t *base,
				  const int32_t *n_pos, int64_t stride,
				  int64_t n_head, int64_t n_head_kv, int64_t D,
				  float scale, int64_t T, float *out,
				  void *out_q, struct ms_err *err)
{
	static const char who[] = "gpu attention";
	int rc = ops_enter(c, who, err);
	if (rc)
		return rc;
	if (D < 1 || D > ATT_MAX_D)
		return ms_err_set(err, -EINVAL, "%s: head size %lld: expected "
				  "1..%d", who, (long long)D, ATT_MAX_D);
	if (!dims_ok(n_head, T) || !dims_ok(n_head * T, D))
		return ms_err_set(err, -EINVAL, "%s: %lld tokens of %lld heads",
				  who, (long long)T, (long long)n_head);
	if (n_head_kv < 1 || n_head % n_head_kv)
		return ms_err_set(err, -EINVAL,
				  "%s: n_head_kv %lld does not divide n_head "
				  "%lld",
				  who, (long long)n_head_kv, (long long)n_head);
	if (stride < n_head_kv * D || stride > OPS_MAX_ELEMS)
		return ms_err_set(err, -EINVAL,
				  "%s: stride %lld: expected at least "
				  "n_head_kv * D = %lld",
				  who, (long long)stride,
				  (long long)(n_head_kv * D));
	if (!isfinite(scale))
		return ms_err_set(err, -EINVAL, "%s: scale %g", who,
				  (double)scale);
	if (out_q && D % 32)
		return ms_err_set(err, -EINVAL, "%s: a prepared output of heads "
				  "of %lld (not a multiple of 32)", who,
				  (long long)D);
	NONNULL(who, "q,k_cache,v_cache,base,n_pos,out", q, k_cache, v_cache,
		base, n_pos, out);
	return ops_launch(c, who, err, attention_kernel,
			  blocks_for(T * n_head, 1), 256, ATT_SMEM, q, k_cache,
			  v_cache, f16, base, n_pos, stride, n_head,
			  n_head / n_head_kv, (int)D, scale, T, out, out_q,
			  msg_ctx_q8(c));
}

extern "C" int ms_gpu_attention(struct ms_gpu_ctx *c, const float *q,
				const void *k_cache, const void *v_cache,
				bool f16, const int64_t *base,
				const int32_t *n_pos, int64_t stride,
				int64_t n_head, int64_t n_head_kv, int64_t D,
				float scale, int64_t T, float *out,
				struct ms_err *err)
{
	return ms_gpu_attention_q(c, q, k_cache, v_cache, f16, base, n_pos,
				  stride, n_head, n_head_kv, D, scale, T, out,
				  nullptr, err);
}

/* The MoE combine's shape checked. */
static int combine_dims(const char *who, int64_t E, int64_t T, int64_t K,
			struct ms_err *err)
{
	if (!dims_ok(E, T) || !dims_ok(E * T, K))
		return ms_err_set(err, -EINVAL,
				  "%s: %lld tokens of %lld, %lld experts each",
				  who, (long long)T, (long long)E, (long long)K);
	return 0;
}

extern "C" int ms_gpu_moe_combine(struct ms_gpu_ctx *c, float *x,
				  const float *y, const float *w,
				  const float *sh, int64_t E, int64_t T,
				  int64_t K, struct ms_err *err)
{
	static const char who[] = "gpu moe_combine";
	int rc = ops_enter(c, who, err);
	if (rc || (rc = combine_dims(who, E, T, K, err)))
		return rc;
	NONNULL(who, "x,y,w", x, y, w);
	return ops_launch(c, who, err, moe_combine_kernel,
			  blocks_for(E * T, 256), 256, 0, x, y, w, sh, E, K,
			  E * T);
}

extern "C" int ms_gpu_moe_combine_norm(struct ms_gpu_ctx *c, float *x,
				       const float *y, const float *w,
				       const float *sh, int64_t E, int64_t T,
				       int64_t K, const float *norm_w,
				       float eps, float *h, void *hq,
				       struct ms_err *err)
{
	static const char who[] = "gpu moe_combine_norm";
	int rc = ops_enter(c, who, err);
	if (rc || (rc = combine_dims(who, E, T, K, err)))
		return rc;
	if ((rc = norm_args(who, eps, hq, E, err)))
		return rc;
	NONNULL(who, "x,y,w,norm_w,h", x, y, w, norm_w, h);
	const auto k = update_norm_kernel<CombineRow>;
	return ops_launch(c, who, err, k, blocks_for(T, 1), 256, NORM_SMEM, x,
			  norm_w, h, hq, msg_ctx_q8(c), E, T, eps,
			  CombineRow{ y, w, sh, K });
}

/* The checks and launch of gather and scatter. */
static int rows_call(struct ms_gpu_ctx *c, const char *who, const float *src,
		     const int32_t *rows, int64_t n, int64_t E, float *dst,
		     bool scatter, struct ms_err *err)
{
	int rc = enter_rows(c, who, E, n, err);
	if (rc)
		return rc;
	NONNULL(who, "src,rows,dst", src, rows, dst);
	return ops_launch(c, who, err, rows_kernel, blocks_for(n * E, 256),
			  256, 0, src, rows, E, n * E, dst, scatter);
}

extern "C" int ms_gpu_gather_rows(struct ms_gpu_ctx *c, const float *src,
				  const int32_t *rows, int64_t n, int64_t E,
				  float *dst, struct ms_err *err)
{
	return rows_call(c, "gpu gather_rows", src, rows, n, E, dst, false, err);
}

extern "C" int ms_gpu_scatter_rows(struct ms_gpu_ctx *c, const float *src,
				   const int32_t *rows, int64_t n, int64_t E,
				   float *dst, struct ms_err *err)
{
	return rows_call(c, "gpu scatter_rows", src, rows, n, E, dst, true, err);
}

/* router.c's check_params, and the kernels' bound on n_expert. */
static int route_check(const char *who, const struct ms_router_params *p,
		       int64_t T, struct ms_err *err)
{
	if (!p)
		return ms_err_set(err, -EINVAL, "%s: NULL params", who);
	if (p->gating <= MS_GATING_NONE || p->gating >= MS_GATING_COUNT)
		return ms_err_set(err, -EINVAL,
				  "%s: gating %d is not a resolved gating "
				  "function",
				  who, (int)p->gating);
	if (p->n_expert < 1 || p->n_expert > ROUTE_MAX_EXPERT)
		return ms_err_set(err, -EINVAL, "%s: n_expert %u: expected 1..%d",
				  who, p->n_expert, ROUTE_MAX_EXPERT);
	const uint32_t max_used = p->n_expert < MS_ROUTER_MAX_USED
					  ? p->n_expert
					  : MS_ROUTER_MAX_USED;
	if (p->n_used < 1 || p->n_used > max_used)
		return ms_err_set(err, -EINVAL,
				  "%s: n_used %u of %u experts: expected 1..%u",
				  who, p->n_used, p->n_expert, max_used);
	if (!isfinite(p->scale))
		return ms_err_set(err, -EINVAL, "%s: scale %g is not finite",
				  who, (double)p->scale);
	if (!dims_ok(p->n_expert, T))
		return ms_err_set(err, -EINVAL, "%s: %lld tokens of %u logits",
				  who, (long long)T, p->n_expert);
	return 0;
}

extern "C" int ms_gpu_route_topk(struct ms_gpu_ctx *c,
				 const struct ms_router_params *p,
				 const float *logits, const float *probs_b,
				 int64_t T, int32_t *sel, float *w,
				 int32_t *bad, struct ms_err *err)
{
	static const char who[] = "gpu route_topk";
	int rc = ops_enter(c, who, err);
	if (rc || (rc = route_check(who, p, T, err)))
		return rc;
	NONNULL(who, "logits,sel,w,bad", logits, sel, w, bad);
	return ops_launch(c, who, err, route_topk_kernel,
			  blocks_for(T, ROUTE_WARPS), ROUTE_WARPS * 32,
			  ROUTE_SMEM, logits, probs_b, T, (int)p->n_expert,
			  (int)p->n_used, (int)p->gating, p->norm, p->scale,
			  sel, w, bad);
}

/* The router product's shape and alignment (route_gemv_topk_kernel's
 * float4 loads). */
static int gemv_check(const char *who, const float *w_dev, int64_t n_embd,
		      uint32_t n_expert, const float *x, struct ms_err *err)
{
	if (n_embd < 4 || n_embd % 4 || !dims_ok(n_embd, n_expert))
		return ms_err_set(err, -EINVAL,
				  "%s: rows of %lld floats: expected a multiple "
				  "of 4",
				  who, (long long)n_embd);
	if ((uintptr_t)w_dev % 16 || (uintptr_t)x % 16)
		return ms_err_set(err, -EINVAL,
				  "%s: the weights (%p) and the input (%p) must "
				  "be 16-byte aligned (float4 loads)",
				  who, (const void *)w_dev, (const void *)x);
	return 0;
}

extern "C" int ms_gpu_route_gemv_topk(struct ms_gpu_ctx *c,
				      const struct ms_router_params *p,
				      const float *w_dev, int64_t n_embd,
				      const float *x, const float *probs_b,
				      float *logits, int32_t *sel, float *w,
				      int32_t *bad, struct ms_err *err)
{
	static const char who[] = "gpu route_gemv_topk";
	int rc = ops_enter(c, who, err);
	if (rc || (rc = route_check(who, p, 1, err)))
		return rc;
	NONNULL(who, "w_dev,x,logits,sel,w,bad", w_dev, x, logits, sel, w,
		bad);
	if ((rc = gemv_check(who, w_dev, n_embd, p->n_expert, x, err)))
		return rc;
	unsigned *cnt;
	if ((rc = msg_ctx_route_cnt(c, &cnt, err)))
		return rc;
	return ops_launch(c, who, err, route_gemv_topk_kernel,
			  (unsigned)p->n_expert, RG_THREADS, RG_SMEM, w_dev, x,
			  n_embd, probs_b, (int)p->n_expert, (int)p->n_used,
			  (int)p->gating, p->norm, p->scale, logits, sel, w,
			  bad, cnt);
}

extern "C" int ms_gpu_router_logits(struct ms_gpu_ctx *c, const float *w_dev,
				    int64_t n_embd, uint32_t n_expert,
				    const float *x, float *logits,
				    struct ms_err *err)
{
	static const char who[] = "gpu router_logits";
	int rc = ops_enter(c, who, err);
	if (rc)
		return rc;
	if (n_expert < 1 || n_expert > 65535)
		return ms_err_set(err, -EINVAL, "%s: n_expert %u: expected "
				  "1..65535", who, n_expert);
	NONNULL(who, "w_dev,x,logits", w_dev, x, logits);
	if ((rc = gemv_check(who, w_dev, n_embd, n_expert, x, err)))
		return rc;
	return ops_launch(c, who, err, route_gemv_topk_kernel, n_expert,
			  RG_THREADS, RG_SMEM, w_dev, x, n_embd,
			  (const float *)nullptr, (int)n_expert, 0, 0, false,
			  0.0f, logits, (int32_t *)nullptr, (float *)nullptr,
			  (int32_t *)nullptr, (unsigned *)nullptr);
}
