/*
 * gpu_ffn.cu - the GPU expert FFN and the dense cuBLAS path: the context
 * (device, stream, cuBLAS handle, workspace), argument checks, the choice
 * between the fused matvec (decode) and dequantise + cublasGemmEx
 * (prefill), and the helpers tools and tests use (device memory, timing,
 * random valid blocks, the device's copy bandwidth).
 *
 * Decode, B <= 8 (gpu_matvec.cu): per call, 4 launches whatever the number
 * of experts: prepare x; gate+up as row pairs with the SwiGLU in the same
 * kernel (h = silu(g) * u in double, as kernels/ffn.c); prepare h; down.
 * Experts whose gate and up types differ take two plain launches and the
 * SwiGLU moves into the second preparation. Nothing is dequantised to
 * memory. MATVEC prepares x and h exactly (three int8 digits: f32
 * accuracy); MATVEC_Q8 rounds them to 8 bits per 32-element block as
 * ggml's q8_1 does (one digit, a third of the __dp4a; the error is the
 * rounding's, see gpu_matvec.cu); ms_gpu_ctx_set_q8 makes AUTO take it.
 * Launches too small to fill the device split K (gpu_matvec.cu), with a
 * second pass that adds the ranges in a fixed order: partials in the
 * workspace.
 *
 * Prefill (any B): per expert, gate and up are dequantised to f16 into one
 * [2 n_ff][n_embd] buffer (gate rows first: the fused layout's order, so a
 * fused expert is one dequantisation), x is rounded to f16, one
 * cublasGemmEx gives gate and up for every token in f32, a small kernel
 * forms h = silu(g) * u (double, then f32, then f16), down is dequantised
 * into the same buffer and a second GEMM writes y. f16 operands, f32
 * accumulation: the error is that of rounding the weights, x and h to f16
 * (11 significant bits, a relative error of at most 2^-11 each, ~2.8e-4
 * RMS), ~4e-4..7e-4 relative L2 end to end; t_gpu_kernels computes the
 * prediction for its data and holds the GPU to it.
 *
 * The workspace grows to the largest call and is never shrunk; growing
 * waits for the stream (cudaFree synchronises anyway).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "gpu_quant.cuh"

#define MAX_TOKENS (1 << 20)

struct ms_gpu_ctx {
	int device;
	int sms;
	cudaStream_t stream;
	bool own_stream;
	cublasHandle_t blas; /* NULL until the first GEMM */
	cudaEvent_t ev0, ev1;
	bool marked;
	/* the workspace: ws_size bytes at ws, after the matvec's split-K
	 * counters (cnt: MSG_MV_CNT_MAX, then the router's one; zeroed once,
	 * kept at zero by the launches; one allocation, at cnt) */
	unsigned *cnt;
	void *ws;
	size_t ws_size;
	bool q8;      /* AUTO's matvec is MATVEC_Q8 */
	int mv_split; /* msg_mv_call.split */
	int mv_chunk; /* msg_mv_call.chunk */
	bool pdl;     /* launches with PDL (ms_gpu_ctx_set_pdl) */
	/* why the context cannot have PDL: "" when it can (compute
	 * capability 9.0 or later, and the trial launch ran) */
	char pdl_note[192];
	bool capturing;  /* between ms_gpu_capture_begin and _end */
	uint64_t ws_gen; /* bumped each time ws moves (a graph holds it) */
};

struct ms_gpu_graph {
	cudaGraphExec_t exec;
	uint64_t ws_gen;
	size_t nodes;
};

namespace {

/* ---- small kernels -------------------------------------------------------- */

/* Nothing but the PDL wait: ms_gpu_ctx_init's check that PDL launches
 * run here. */
__global__ void pdl_probe_kernel(int unused)
{
	(void)unused;
	msg_grid_wait();
}

/* h16[b][r] = f16((float)(silu(g) * u)), g = gu[b][r], u = gu[b][F + r]
 * (the GEMM's [B][2F] output, gate columns first). */
__global__ void __launch_bounds__(256)
swiglu16_kernel(const float *__restrict__ gu, uint16_t *__restrict__ h,
		int F, int64_t total)
{
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i < total; i += stride) {
		const int64_t b = i / F, r = i % F;
		const double g = gu[b * 2 * F + r], u = gu[b * 2 * F + F + r];
		h[i] = msq::f32_f16((float)(g / (1.0 + exp(-g)) * u));
	}
}

__device__ __forceinline__ uint64_t splitmix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* f16 bits of 2^-(e..e+2) x (1 + m/1024): small, positive, normal. */
__device__ __forceinline__ uint32_t small_f16(uint64_t r, int e)
{
	return (uint32_t)(15 - e - (int)(r % 3)) << 10 | (uint32_t)((r >> 8) & 0x3ff);
}

/* kind 0: quantized (random bits, then the f16 fields off0/off1 set to
 * small_f16(., e); off0 < 0: MXFP4's exponent byte instead); 1: f32;
 * 2: f16; 3: bf16 (values uniform in +-0.05, f16 as small_f16(., 8) with a
 * random sign). One thread per block. */
__global__ void __launch_bounds__(256)
fill_kernel(uint8_t *__restrict__ p, int64_t n_blocks, int bs, int kind,
	    int off0, int off1, int e, uint64_t seed)
{
	const int64_t stride = (int64_t)gridDim.x * blockDim.x;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	     i < n_blocks; i += stride) {
		uint8_t *b = p + i * bs;
		uint64_t h = splitmix(seed ^ (uint64_t)i * 0xd1b54a32d192ed03ull);
		if (kind == 1 || kind == 3) {
			const float f =
				(float)((double)(h >> 11) / 9007199254740992.0 -
					0.5) * 0.1f;
			const uint32_t u = __float_as_uint(f);
			if (kind == 1) {
				for (int k = 0; k < 4; k++)
					b[k] = (uint8_t)(u >> (8 * k));
			} else {
				b[0] = (uint8_t)(u >> 16);
				b[1] = (uint8_t)(u >> 24);
			}
			continue;
		}
		if (kind == 2) {
			const uint32_t v = small_f16(h, 8) | (uint32_t)(h >> 63) << 15;
			b[0] = (uint8_t)v;
			b[1] = (uint8_t)(v >> 8);
			continue;
		}
		for (int k = 0; k < bs; k++) {
			if (k % 8 == 0)
				h = splitmix(h);
			b[k] = (uint8_t)(h >> (8 * (k % 8)));
		}
		h = splitmix(h);
		if (off0 < 0) {
			b[0] = (uint8_t)(127 - 6 - (int)(h % 2));
			continue;
		}
		const uint32_t d = small_f16(h, e);
		b[off0] = (uint8_t)d;
		b[off0 + 1] = (uint8_t)(d >> 8);
		if (off1 >= 0) {
			const uint32_t m = small_f16(splitmix(h), e);
			b[off1] = (uint8_t)m;
			b[off1 + 1] = (uint8_t)(m >> 8);
		}
	}
}

unsigned grid_for(int64_t threads)
{
	int64_t b = (threads + 255) / 256;
	return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

/* ---- errors ---------------------------------------------------------------- */

int cuda_fail(struct ms_err *err, cudaError_t ce, const char *what)
{
	return msg_cuda_fail(err, "gpu", ce, what);
}

#define CUDA_TRY(call, what) MSG_CUDA_TRY("gpu", call, what)

const char *blas_str(cublasStatus_t s)
{
	switch (s) {
	case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
	case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
	case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
	case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
	case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
	case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
	case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
	default: return "error";
	}
}

int blas_fail(struct ms_err *err, cublasStatus_t s, const char *what)
{
	return ms_err_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO,
			  "gpu: %s: cuBLAS status %d (%s)", what, (int)s,
			  blas_str(s));
}

/* ---- context plumbing --------------------------------------------------- */

int ctx_enter(struct ms_gpu_ctx *c, struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu: NULL context");
	CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
	return 0;
}

int ctx_blas(struct ms_gpu_ctx *c, struct ms_err *err)
{
	if (c->blas)
		return 0;
	cublasStatus_t s = cublasCreate(&c->blas);
	if (s != CUBLAS_STATUS_SUCCESS) {
		c->blas = nullptr;
		return blas_fail(err, s, "cublasCreate");
	}
	/* CUBLAS_DEFAULT_MATH: f32 GEMMs stay f32 (no TF32) */
	if ((s = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS ||
	    (s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) !=
		    CUBLAS_STATUS_SUCCESS)
		return blas_fail(err, s, "cublasSetStream");
	return 0;
}

/* The split-K counters' room at the front of the workspace's allocation,
 * and the router's after them (a multiple of 256: the workspace stays
 * 256-byte aligned). */
#define WS_CNT_BYTES ((((size_t)MSG_MV_CNT_MAX + 1) * sizeof(unsigned) + \
		       255) & ~(size_t)255)

/* Room for `bytes` of workspace (and the counters). */
int ws_reserve(struct ms_gpu_ctx *c, size_t bytes, struct ms_err *err)
{
	if (c->cnt && bytes <= c->ws_size)
		return 0;
	if (c->capturing)
		return ms_err_set(err, -EAGAIN, "gpu: the workspace would have to "
				  "grow (to %zu bytes) during a graph capture",
				  bytes);
	size_t want = c->ws_size + c->ws_size / 2;
	if (want < bytes)
		want = bytes;
	CUDA_TRY(cudaStreamSynchronize(c->stream), "waiting for the stream");
	cudaFree(c->cnt);
	c->cnt = nullptr;
	c->ws = nullptr;
	c->ws_size = 0;
	void *base = nullptr;
	cudaError_t ce = cudaMalloc(&base, WS_CNT_BYTES + want);
	if (ce != cudaSuccess && want > bytes) {
		cudaGetLastError();
		ce = cudaMalloc(&base, WS_CNT_BYTES + (want = bytes));
	}
	if (ce == cudaSuccess &&
	    (ce = cudaMemset(base, 0, WS_CNT_BYTES)) != cudaSuccess)
		cudaFree(base);
	if (ce != cudaSuccess)
		return ms_err_set(err, msg_cuda_errno(ce),
				  "gpu: a %zu-byte workspace: %s", bytes,
				  cudaGetErrorString(ce));
	c->cnt = (unsigned *)base;
	c->ws = (uint8_t *)base + WS_CNT_BYTES;
	c->ws_size = want;
	c->ws_gen++;
	return 0;
}

/* Carves workspace regions, each 256-byte aligned. */
struct carve {
	size_t off;
	size_t take(size_t bytes)
	{
		size_t at = off;
		off += (bytes + 255) & ~(size_t)255;
		return at;
	}
};

/* ---- the expert FFN ----------------------------------------------------- */

const char *const proj_names[2][3] = { { "gate", "up", "down" },
				       { "gate_up", "down", "" } };

/* Everything about a call that does not depend on the path. */
struct plan {
	int64_t E, F, B;
	int np;
	uint32_t t_gate, t_up, t_down;
	uint64_t rs_gate, rs_up, rs_down; /* bytes per row */
};

struct ms_expert_view view_of(const struct ms_gpu_expert *e)
{
	struct ms_expert_view v;
	memset(&v, 0, sizeof(v));
	v.fused = e->fused;
	v.n_embd = e->n_embd;
	v.n_ff = e->n_ff;
	for (int j = 0; j < 3; j++) {
		v.type[j] = e->type[j];
		v.data[j] = e->data[j];
	}
	return v;
}

int check_experts(const struct ms_gpu_expert *e, int n, int64_t B,
		  struct plan *p, struct ms_err *err)
{
	if (!e || n < 1)
		return ms_err_set(err, -EINVAL, "gpu ffn: %d experts", n);
	if (B < 1 || B > MAX_TOKENS)
		return ms_err_set(err, -EINVAL,
				  "gpu ffn: %lld tokens: expected 1..%d",
				  (long long)B, MAX_TOKENS);
	const struct ms_expert_view v = view_of(&e[0]);
	uint64_t bytes[3];
	int rc = ms_expert_view_bytes(&v, bytes, err);
	if (rc)
		return rc;
	if (e->n_embd % 32 || e->n_ff % 32 || e->n_embd > INT_MAX / 4 ||
	    e->n_ff > INT_MAX / 4)
		return ms_err_set(err, -EINVAL,
				  "gpu ffn: n_embd %lld and n_ff %lld must be "
				  "multiples of 32 below 2^29",
				  (long long)e->n_embd, (long long)e->n_ff);
	p->np = e->fused ? 2 : 3;
	for (int j = 0; j < p->np; j++)
		if (!ms_gpu_dequant_supported(e->type[j]))
			return ms_err_set(err, -ENOTSUP,
					  "gpu ffn: no GPU kernel for type %s "
					  "(projection %s)",
					  ms_type_name(e->type[j]),
					  proj_names[e->fused][j]);
	for (int i = 0; i < n; i++) {
		const struct ms_gpu_expert *x = &e[i];
		if (x->fused != e->fused || x->n_embd != e->n_embd ||
		    x->n_ff != e->n_ff)
			return ms_err_set(err, -EINVAL,
					  "gpu ffn: expert %d's shape differs "
					  "from expert 0's",
					  i);
		for (int j = 0; j < p->np; j++) {
			if (x->type[j] != e->type[j])
				return ms_err_set(err, -EINVAL,
						  "gpu ffn: expert %d's %s is "
						  "%s, expert 0's %s",
						  i, proj_names[e->fused][j],
						  ms_type_name(x->type[j]),
						  ms_type_name(e->type[j]));
			if (!x->data[j])
				return ms_err_set(err, -EINVAL,
						  "gpu ffn: expert %d's %s has "
						  "no data",
						  i, proj_names[e->fused][j]);
		}
	}
	p->E = e->n_embd;
	p->F = e->n_ff;
	p->B = B;
	p->t_gate = e->type[0];
	p->t_up = e->fused ? e->type[0] : e->type[1];
	p->t_down = e->type[p->np - 1];
	p->rs_gate = bytes[0] / (uint64_t)(e->fused ? 2 * p->F : p->F);
	p->rs_up = e->fused ? p->rs_gate : bytes[1] / (uint64_t)p->F;
	p->rs_down = bytes[p->np - 1] / (uint64_t)p->E;
	return 0;
}

/* 0 when the matvec can run this call, else -ENOTSUP/-EINVAL and why. */
int matvec_ok(const struct ms_gpu_expert *e, int n, const struct plan *p,
	      struct ms_err *err)
{
	if (p->B > MSG_MV_MAX_TOKENS)
		return ms_err_set(err, -ENOTSUP,
				  "gpu ffn: the fused matvec takes up to %d "
				  "tokens, not %lld",
				  MSG_MV_MAX_TOKENS, (long long)p->B);
	for (int j = 0; j < p->np; j++)
		if (!msg_matvec_type(e->type[j]))
			return ms_err_set(err, -ENOTSUP,
					  "gpu ffn: no fused matvec kernel for "
					  "type %s (projection %s; there are "
					  "for q2_K q3_K q4_K q5_K q6_K q8_0 "
					  "q4_0 mxfp4)",
					  ms_type_name(e->type[j]),
					  proj_names[e->fused][j]);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < p->np; j++) {
			const int al = msg_matvec_align(e->type[j]);
			if ((uintptr_t)e[i].data[j] % (uintptr_t)al)
				return ms_err_set(
					err, -EINVAL,
					"gpu ffn: expert %d's %s at %p: the "
					"%s matvec needs %d-byte alignment",
					i, proj_names[e->fused][j],
					e[i].data[j], ms_type_name(e->type[j]),
					al);
		}
	return 0;
}

/* The experts' matrices come from e[0..n), or with tab (device memory)
 * from its entries sel[i] (e then only gives the shape, the types and
 * resident). With xq_in (one x for all: x_stride 0), x is read as already
 * prepared there. sel_before (with tab): sel was written by a launch
 * before the last one ahead of this call (ms_gpu_experts_ffn_sel). */
int run_matvec(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e, int n,
	       const struct plan *p, const float *x, const void *xq_in,
	       int64_t x_stride, float *y, bool q8, const void *const *tab,
	       const int32_t *sel, bool sel_before, struct ms_err *err)
{
	const int64_t E = p->E, F = p->F, B = p->B;
	const int n_sets = x_stride ? n : 1;
	const bool mixed = p->t_gate != p->t_up;
	const size_t xb = msg_xblk_bytes(q8);

	const void **pa = (const void **)malloc(sizeof(void *) * 3 * (size_t)n);
	if (!pa)
		return ms_err_set(err, -ENOMEM, "gpu ffn: out of memory");
	const void **pb = pa + n, **pd = pa + 2 * n;
	for (int i = 0; i < n && !tab; i++) {
		pa[i] = e[i].data[0];
		pb[i] = e[i].fused ? (const uint8_t *)e[i].data[0] +
					     (uint64_t)F * p->rs_gate
				   : e[i].data[1];
		pd[i] = e[i].data[p->np - 1];
	}

	/* the launches: gate and up (a pair, or two plain ones), down */
	struct msg_mv_call gu, up, dn;
	memset(&gu, 0, sizeof(gu));
	gu.n_e = n;
	gu.B = (int)B;
	gu.sms = c->sms;
	gu.split = c->mv_split;
	gu.chunk = c->mv_chunk;
	gu.q8 = q8;
	gu.pdl = c->pdl;
	/* the first chunk before the PDL wait: resident weights (with tab,
	 * the table's experts); the gate/up launch of a table's experts
	 * only where sel's writer is not the launch just ahead of it (below) */
	gu.early = true;
	for (int i = 0; i < (tab ? 1 : n); i++)
		gu.early = gu.early && e[i].resident;
	gu.xq_stride = n_sets > 1 ? B * (E / 32) : 0;
	gu.out_stride = B * F;
	gu.n_rows = (int)F;
	gu.n_in = (int)E;
	gu.type = p->t_gate;
	gu.pair = !mixed;
	gu.wa = pa;
	gu.wb = mixed ? nullptr : pb;
	gu.rs = (int64_t)p->rs_gate;
	up = gu;
	up.type = p->t_up;
	up.wa = pb;
	up.rs = (int64_t)p->rs_up;
	dn = gu;
	dn.type = p->t_down;
	dn.pair = false;
	dn.wa = pd;
	dn.wb = nullptr;
	dn.xq_stride = B * (F / 32);
	dn.out = y;
	dn.out_stride = B * E;
	dn.n_rows = (int)E;
	dn.n_in = (int)F;
	dn.rs = (int64_t)p->rs_down;
	if (tab) {
		gu.tab = up.tab = dn.tab = tab;
		gu.sel = up.sel = dn.sel = sel;
		gu.tab_j = 0;
		up.tab_j = 1;
		dn.tab_j = 2;
	}

	size_t part = msg_matvec_part_bytes(&gu);
	if (mixed && msg_matvec_part_bytes(&up) > part)
		part = msg_matvec_part_bytes(&up);
	if (msg_matvec_part_bytes(&dn) > part)
		part = msg_matvec_part_bytes(&dn);
	carve cv = { 0 };
	const size_t o_xq = cv.take((size_t)n_sets * B * (E / 32) * xb);
	const size_t o_h = cv.take((size_t)n * B * F * sizeof(float));
	const size_t o_u = mixed ? cv.take((size_t)n * B * F * sizeof(float)) : 0;
	const size_t o_hq = cv.take((size_t)n * B * (F / 32) * xb);
	const size_t o_part = cv.take(part);
	int rc = ws_reserve(c, cv.off, err);
	if (rc) {
		free(pa);
		return rc;
	}
	uint8_t *ws = (uint8_t *)c->ws;
	const bool given = xq_in && n_sets == 1;
	const void *xq = given ? xq_in : ws + o_xq;
	/* a table's gate/up launch reads sel before its wait only where a
	 * launch lies between it and sel's writer: the caller's (sel_before)
	 * or x's preparation; up (mixed) and down come after gate/up, so
	 * always do (a PDL launch starts once the one ahead of it has
	 * waited, so what came before that one is complete) */
	if (tab && given && !sel_before)
		gu.early = false;
	void *hq = ws + o_hq;
	float *h = (float *)(ws + o_h);
	float *u = mixed ? (float *)(ws + o_u) : nullptr;
	gu.part = up.part = dn.part = part ? ws + o_part : nullptr;
	gu.part_bytes = up.part_bytes = dn.part_bytes = part;
	gu.cnt = up.cnt = dn.cnt = c->cnt;
	gu.xq = up.xq = xq;
	gu.out = h;
	up.out = u;
	dn.xq = hq;

	cudaError_t ce;
	const char *what = "preparing x";
	if (!given &&
	    (ce = msg_prep_launch(x, nullptr, x_stride, ws + o_xq, (int)E,
				  (int)B, n_sets, q8, c->stream, c->pdl)) !=
		    cudaSuccess)
		goto fail;

	/* gate and up -> h (or g, u), a pair whose tiles are whole blocks of
	 * h also h prepared for down */
	if (!mixed && msg_matvec_out_prep(&gu)) {
		gu.out_q = hq;
		gu.out_q_stride = dn.xq_stride;
	}
	what = "the gate/up matvec";
	if ((ce = msg_matvec_launch(&gu, c->stream)) != cudaSuccess)
		goto fail;
	if (mixed && (ce = msg_matvec_launch(&up, c->stream)) != cudaSuccess)
		goto fail;

	/* h (mixed: silu(g) * u here) -> prepared, unless the pair kernel
	 * wrote it so (above) */
	what = "preparing h";
	if (!gu.out_q &&
	    (ce = msg_prep_launch(h, u, B * F, hq, (int)F, (int)B, n, q8,
				  c->stream, c->pdl)) != cudaSuccess)
		goto fail;

	/* down -> y */
	what = "the down matvec";
	if ((ce = msg_matvec_launch(&dn, c->stream)) != cudaSuccess)
		goto fail;
	free(pa);
	return 0;
fail:
	free(pa);
	return cuda_fail(err, ce, what);
}

int gemm_f16(struct ms_gpu_ctx *c, int m, int n, int k, const void *a16,
	     const void *b16, float *out, struct ms_err *err)
{
	const float one = 1.0f, zero = 0.0f;
	/* out (m x n, column-major, ldc m) = A^T B: A is the row-major
	 * weight matrix [m][k] (column-major k x m, lda k), B the row-major
	 * inputs [n][k] (column-major k x n) */
	cublasStatus_t s = cublasGemmEx(
		c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, a16,
		CUDA_R_16F, k, b16, CUDA_R_16F, k, &zero, out, CUDA_R_32F, m,
		CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, s, "cublasGemmEx");
}

int run_cublas(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e, int n,
	       const struct plan *p, const float *x, int64_t x_stride,
	       float *y, struct ms_err *err)
{
	const int64_t E = p->E, F = p->F, B = p->B;
	if (2 * F > INT_MAX || B > INT_MAX || E > INT_MAX)
		return ms_err_set(err, -EINVAL, "gpu ffn: too large for cuBLAS");
	int rc = ctx_blas(c, err);
	if (rc)
		return rc;
	carve cv = { 0 };
	const size_t o_w = cv.take((size_t)2 * F * E * 2);
	const size_t o_x = cv.take((size_t)B * E * 2);
	const size_t o_gu = cv.take((size_t)B * 2 * F * sizeof(float));
	const size_t o_h = cv.take((size_t)B * F * 2);
	if ((rc = ws_reserve(c, cv.off, err)))
		return rc;
	uint8_t *ws = (uint8_t *)c->ws;
	uint16_t *w16 = (uint16_t *)(ws + o_w), *x16 = (uint16_t *)(ws + o_x);
	uint16_t *h16 = (uint16_t *)(ws + o_h);
	float *gu = (float *)(ws + o_gu);

	for (int i = 0; i < n; i++) {
		const float *xi = x + i * x_stride;
		if (i == 0 || x_stride)
			CUDA_TRY(msg_f32_to_f16_launch(xi, x16, B * E, c->stream),
				 "rounding x to f16");
		if (e[i].fused) {
			CUDA_TRY(msg_dequant_launch(p->t_gate, e[i].data[0], w16,
						    2 * F * E, true, c->stream),
				 "dequantising gate_up");
		} else {
			CUDA_TRY(msg_dequant_launch(p->t_gate, e[i].data[0], w16,
						    F * E, true, c->stream),
				 "dequantising gate");
			CUDA_TRY(msg_dequant_launch(p->t_up, e[i].data[1],
						    w16 + F * E, F * E, true,
						    c->stream),
				 "dequantising up");
		}
		if ((rc = gemm_f16(c, (int)(2 * F), (int)B, (int)E, w16, x16, gu,
				   err)))
			return rc;
		swiglu16_kernel<<<grid_for(B * F), 256, 0, c->stream>>>(
			gu, h16, (int)F, B * F);
		CUDA_TRY(cudaGetLastError(), "the SwiGLU kernel");
		CUDA_TRY(msg_dequant_launch(p->t_down, e[i].data[p->np - 1], w16,
					    E * F, true, c->stream),
			 "dequantising down");
		if ((rc = gemm_f16(c, (int)E, (int)B, (int)F, w16, h16,
				   y + (int64_t)i * B * E, err)))
			return rc;
	}
	return 0;
}

} /* namespace */

/* ---- the API ---------------------------------------------------------------- */

extern "C" const char *ms_gpu_ffn_path_name(enum ms_gpu_ffn_path p)
{
	switch (p) {
	case MS_GPU_FFN_AUTO: return "auto";
	case MS_GPU_FFN_MATVEC: return "matvec";
	case MS_GPU_FFN_CUBLAS: return "cublas";
	case MS_GPU_FFN_MATVEC_Q8: return "matvec-q8";
	default: return "invalid";
	}
}

extern "C" bool ms_gpu_matvec_supported(uint32_t type)
{
	return msg_matvec_type(type);
}

extern "C" int ms_gpu_set_device(int device, struct ms_err *err)
{
	CUDA_TRY(cudaSetDevice(device), "cudaSetDevice");
	return 0;
}

extern "C" int ms_gpu_malloc(void **dev, size_t bytes, struct ms_err *err)
{
	*dev = nullptr;
	cudaError_t ce = cudaMalloc(dev, bytes ? bytes : 1);
	if (ce != cudaSuccess) {
		*dev = nullptr;
		return ms_err_set(err, msg_cuda_errno(ce),
				  "gpu: cudaMalloc(%zu): %s", bytes,
				  cudaGetErrorString(ce));
	}
	return 0;
}

extern "C" void ms_gpu_free(void *dev)
{
	if (dev)
		cudaFree(dev);
}

extern "C" int ms_gpu_upload(void *dev, const void *host, size_t bytes,
			     struct ms_err *err)
{
	/* from pageable memory cudaMemcpy may return before the DMA lands,
	 * and the legacy stream does not order non-blocking streams: wait */
	CUDA_TRY(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice),
		 "copying to the device");
	CUDA_TRY(cudaStreamSynchronize(0), "copying to the device");
	return 0;
}

extern "C" int ms_gpu_download(void *host, const void *dev, size_t bytes,
			       struct ms_err *err)
{
	CUDA_TRY(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost),
		 "copying from the device");
	return 0;
}

extern "C" int ms_gpu_capture_begin(struct ms_gpu_ctx *c, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (c->capturing)
		return ms_err_set(err, -EINVAL, "gpu: a capture is already open");
	CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed),
		 "cudaStreamBeginCapture");
	c->capturing = true;
	return 0;
}

extern "C" int ms_gpu_capture_end(struct ms_gpu_ctx *c,
				  struct ms_gpu_graph **out, struct ms_err *err)
{
	if (out)
		*out = nullptr;
	if (!c || !c->capturing)
		return ms_err_set(err, -EINVAL, "gpu: no capture is open");
	c->capturing = false;
	cudaGraph_t graph = nullptr;
	cudaError_t ce = cudaStreamEndCapture(c->stream, &graph);
	if (ce != cudaSuccess || !out) {
		if (graph)
			cudaGraphDestroy(graph);
		cudaGetLastError();
		return ce != cudaSuccess ? cuda_fail(err, ce, "cudaStreamEndCapture")
					 : 0;
	}
	struct ms_gpu_graph *g =
		(struct ms_gpu_graph *)calloc(1, sizeof(struct ms_gpu_graph));
	if (!g) {
		cudaGraphDestroy(graph);
		return ms_err_set(err, -ENOMEM, "gpu: out of memory");
	}
	if ((ce = cudaGraphGetNodes(graph, nullptr, &g->nodes)) == cudaSuccess)
		ce = cudaGraphInstantiate(&g->exec, graph, 0);
	cudaGraphDestroy(graph);
	if (ce != cudaSuccess) {
		free(g);
		cudaGetLastError();
		return cuda_fail(err, ce, "cudaGraphInstantiate");
	}
	g->ws_gen = c->ws_gen;
	*out = g;
	return 0;
}

extern "C" int ms_gpu_graph_launch(struct ms_gpu_ctx *c,
				   struct ms_gpu_graph *g, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (!g)
		return ms_err_set(err, -EINVAL, "gpu: NULL graph");
	if (g->ws_gen != c->ws_gen)
		return ms_err_set(err, -ESTALE, "gpu: the graph's workspace has "
				  "moved since it was captured");
	CUDA_TRY(cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch");
	return 0;
}

extern "C" size_t ms_gpu_graph_nodes(const struct ms_gpu_graph *g)
{
	return g ? g->nodes : 0;
}

extern "C" void ms_gpu_graph_free(struct ms_gpu_graph *g)
{
	if (!g)
		return;
	cudaGraphExecDestroy(g->exec);
	free(g);
}

/* An asynchronous copy on the context's stream (the host side page-locked
 * or registered: the caller's guarantee). */
static int copy_async(struct ms_gpu_ctx *c, void *dst, const void *src,
		      size_t bytes, cudaMemcpyKind kind, const char *what,
		      struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc || !bytes)
		return rc;
	if (!dst || !src)
		return ms_err_set(err, -EINVAL, "gpu %s: NULL pointer", what);
	CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, c->stream), what);
	return 0;
}

extern "C" int ms_gpu_upload_async(struct ms_gpu_ctx *c, void *dev,
				   const void *host, size_t bytes,
				   struct ms_err *err)
{
	return copy_async(c, dev, host, bytes, cudaMemcpyHostToDevice,
			  "copying to the device", err);
}

extern "C" int ms_gpu_download_async(struct ms_gpu_ctx *c, void *host,
				     const void *dev, size_t bytes,
				     struct ms_err *err)
{
	return copy_async(c, host, dev, bytes, cudaMemcpyDeviceToHost,
			  "copying from the device", err);
}

extern "C" int ms_gpu_memset(void *dev, int byte, size_t bytes,
			     struct ms_err *err)
{
	CUDA_TRY(cudaMemset(dev, byte, bytes), "cudaMemset");
	CUDA_TRY(cudaStreamSynchronize(0), "cudaMemset");
	return 0;
}

extern "C" int ms_gpu_stream_sync(void *stream, struct ms_err *err)
{
	CUDA_TRY(cudaStreamSynchronize((cudaStream_t)stream),
		 "waiting for the stream");
	return 0;
}

/* A plain launch, then a PDL one behind it, on c's stream: PDL is the
 * context's default when both ran (a runtime or a virtualised driver
 * could refuse the launch attribute; every decode launch would then
 * fail), else pdl_note says what was refused. */
static void pdl_probe(struct ms_gpu_ctx *c)
{
	cudaError_t ce = msg_launch(pdl_probe_kernel, dim3(1), dim3(32), 0,
				    c->stream, false, 0);
	if (ce == cudaSuccess)
		ce = msg_launch(pdl_probe_kernel, dim3(1), dim3(32), 0,
				c->stream, true, 0);
	if (ce == cudaSuccess)
		ce = cudaStreamSynchronize(c->stream);
	if (ce != cudaSuccess) {
		cudaGetLastError(); /* not the next launch's */
		snprintf(c->pdl_note, sizeof(c->pdl_note),
			 "the runtime refused a PDL launch: %s (%s)",
			 cudaGetErrorString(ce), cudaGetErrorName(ce));
		return;
	}
	c->pdl = true;
}

extern "C" int ms_gpu_ctx_init(struct ms_gpu_ctx **out, int device,
			       void *stream, struct ms_err *err)
{
	*out = nullptr;
	int n;
	int rc = msg_find_device(device, "", &n, err);
	if (rc)
		return rc;
	cudaError_t ce;
	struct ms_gpu_ctx *c =
		(struct ms_gpu_ctx *)calloc(1, sizeof(struct ms_gpu_ctx));
	if (!c)
		return ms_err_set(err, -ENOMEM, "gpu: out of memory");
	c->device = device;
	int major;
	if ((ce = cudaSetDevice(device)) != cudaSuccess ||
	    (ce = cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount,
					 device)) != cudaSuccess ||
	    (ce = cudaDeviceGetAttribute(&major,
					 cudaDevAttrComputeCapabilityMajor,
					 device)) != cudaSuccess) {
		rc = cuda_fail(err, ce, "opening the device");
		goto fail;
	}
	if (major < 9)
		snprintf(c->pdl_note, sizeof(c->pdl_note),
			 "compute capability %d.x: PDL needs 9.0 (Hopper) or "
			 "later", major);
	if (stream) {
		c->stream = (cudaStream_t)stream;
	} else {
		if ((ce = cudaStreamCreateWithFlags(&c->stream,
						    cudaStreamNonBlocking)) !=
		    cudaSuccess) {
			rc = cuda_fail(err, ce, "cudaStreamCreate");
			goto fail;
		}
		c->own_stream = true;
	}
	if ((ce = cudaEventCreate(&c->ev0)) != cudaSuccess ||
	    (ce = cudaEventCreate(&c->ev1)) != cudaSuccess) {
		rc = cuda_fail(err, ce, "cudaEventCreate");
		goto fail;
	}
	if (major >= 9)
		pdl_probe(c);
	*out = c;
	return 0;
fail:
	ms_gpu_ctx_free(c);
	return rc;
}

extern "C" void ms_gpu_ctx_free(struct ms_gpu_ctx *c)
{
	if (!c)
		return;
	cudaSetDevice(c->device);
	if (c->stream)
		cudaStreamSynchronize(c->stream);
	if (c->blas)
		cublasDestroy(c->blas);
	if (c->ev0)
		cudaEventDestroy(c->ev0);
	if (c->ev1)
		cudaEventDestroy(c->ev1);
	if (c->own_stream && c->stream)
		cudaStreamDestroy(c->stream);
	cudaFree(c->cnt);
	free(c);
}

extern "C" int ms_gpu_ctx_set_q8(struct ms_gpu_ctx *c, bool q8,
				 struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu: NULL context");
	c->q8 = q8;
	return 0;
}

extern "C" int ms_gpu_ctx_set_split(struct ms_gpu_ctx *c, int split,
				    struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu: NULL context");
	if (split < 0 || split > MSG_MV_MAX_SPLIT)
		return ms_err_set(err, -EINVAL,
				  "gpu: split %d: expected 0 (the rule), 1 "
				  "(never) or up to %d ranges",
				  split, MSG_MV_MAX_SPLIT);
	c->mv_split = split;
	return 0;
}

extern "C" int ms_gpu_ctx_set_chunk(struct ms_gpu_ctx *c, int bytes,
				    struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu: NULL context");
	if (bytes && (bytes < MS_GPU_CHUNK_MIN || bytes > MS_GPU_CHUNK_MAX))
		return ms_err_set(err, -EINVAL,
				  "gpu: chunk of %d bytes: expected 0 (the "
				  "default, %d) or %d..%d",
				  bytes, MS_GPU_CHUNK_DEFAULT,
				  MS_GPU_CHUNK_MIN, MS_GPU_CHUNK_MAX);
	c->mv_chunk = bytes;
	return 0;
}

extern "C" int ms_gpu_ctx_set_pdl(struct ms_gpu_ctx *c, bool on,
				  struct ms_err *err)
{
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu: NULL context");
	if (on && c->pdl_note[0])
		return ms_err_set(err, -ENOTSUP,
				  "gpu %d: no programmatic dependent launch: %s",
				  c->device, c->pdl_note);
	c->pdl = on;
	return 0;
}

extern "C" bool ms_gpu_ctx_pdl(const struct ms_gpu_ctx *c)
{
	return c && c->pdl;
}

extern "C" const char *ms_gpu_ctx_pdl_note(const struct ms_gpu_ctx *c)
{
	return c ? c->pdl_note : "";
}

int msg_ctx_route_cnt(struct ms_gpu_ctx *c, unsigned **cnt,
		      struct ms_err *err)
{
	int rc = ws_reserve(c, 0, err);
	*cnt = rc ? nullptr : c->cnt + MSG_MV_CNT_MAX;
	return rc;
}

bool msg_ctx_q8(const struct ms_gpu_ctx *c)
{
	return c->q8;
}

extern "C" size_t ms_gpu_xq_bytes(int64_t n, int64_t T)
{
	if (n < 32 || n % 32 || T < 1 || T > (int64_t)1 << 30 ||
	    n > (int64_t)1 << 40)
		return 0;
	return (size_t)T * (size_t)(n / 32) * MSG_XBLK_BYTES;
}

extern "C" void *ms_gpu_ctx_stream(const struct ms_gpu_ctx *c)
{
	return c ? (void *)c->stream : nullptr;
}

extern "C" int ms_gpu_ctx_device(const struct ms_gpu_ctx *c)
{
	return c ? c->device : -1;
}

/* ms_gpu_experts_ffn with x maybe prepared (xq, for the fused matvec). */
static int experts_ffn(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
		       int n_experts, const float *x_dev, const void *xq,
		       int64_t x_stride, float *y_dev, int64_t n_tokens,
		       enum ms_gpu_ffn_path path, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if ((unsigned)path >= MS_GPU_FFN_PATH_COUNT)
		return ms_err_set(err, -EINVAL, "gpu ffn: path %d unknown",
				  (int)path);
	if (!x_dev || !y_dev)
		return ms_err_set(err, -EINVAL, "gpu ffn: NULL input or output");
	if (x_stride < 0)
		return ms_err_set(err, -EINVAL, "gpu ffn: x stride %lld",
				  (long long)x_stride);
	struct plan p;
	if ((rc = check_experts(e, n_experts, n_tokens, &p, err)))
		return rc;
	if (path == MS_GPU_FFN_AUTO) {
		struct ms_err why = { 0, "" };
		path = matvec_ok(e, n_experts, &p, &why) ? MS_GPU_FFN_CUBLAS
			: c->q8				 ? MS_GPU_FFN_MATVEC_Q8
							 : MS_GPU_FFN_MATVEC;
	} else if (path == MS_GPU_FFN_MATVEC || path == MS_GPU_FFN_MATVEC_Q8) {
		if ((rc = matvec_ok(e, n_experts, &p, err)))
			return rc;
	}
	return path == MS_GPU_FFN_CUBLAS
		       ? run_cublas(c, e, n_experts, &p, x_dev, x_stride, y_dev,
				    err)
		       : run_matvec(c, e, n_experts, &p, x_dev, xq, x_stride,
				    y_dev, path == MS_GPU_FFN_MATVEC_Q8, nullptr,
				    nullptr, false, err);
}

extern "C" int ms_gpu_experts_ffn(struct ms_gpu_ctx *c,
				  const struct ms_gpu_expert *e, int n_experts,
				  const float *x_dev, int64_t x_stride,
				  float *y_dev, int64_t n_tokens,
				  enum ms_gpu_ffn_path path, struct ms_err *err)
{
	return experts_ffn(c, e, n_experts, x_dev, nullptr, x_stride, y_dev,
			   n_tokens, path, err);
}

extern "C" int ms_gpu_experts_ffn_xq(struct ms_gpu_ctx *c,
				     const struct ms_gpu_expert *e,
				     int n_experts, const float *x_dev,
				     const void *xq, float *y_dev,
				     int64_t n_tokens, struct ms_err *err)
{
	return experts_ffn(c, e, n_experts, x_dev, xq, 0, y_dev, n_tokens,
			   MS_GPU_FFN_AUTO, err);
}

extern "C" int ms_gpu_experts_ffn_sel(struct ms_gpu_ctx *c,
				      const struct ms_gpu_expert *proto,
				      const void *const *tab, const int32_t *sel,
				      int n, const float *x_dev, const void *xq,
				      float *y_dev, bool sel_before,
				      struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (!proto || !tab || !sel || !x_dev || !y_dev)
		return ms_err_set(err, -EINVAL, "gpu ffn (device-chosen experts): "
				  "NULL pointer");
	if (n < 1)
		return ms_err_set(err, -EINVAL, "gpu ffn (device-chosen experts): "
				  "%d experts", n);
	/* the shape and types are checked on proto; its addresses are the
	 * table's (on the device, the caller's guarantee), so the checks see
	 * the table's own (aligned, non-NULL) address in their place */
	struct ms_gpu_expert e = *proto;
	for (int j = 0; j < 3; j++)
		e.data[j] = (const void *)tab;
	struct plan p;
	if ((rc = check_experts(&e, 1, 1, &p, err)) ||
	    (rc = matvec_ok(&e, 1, &p, err)))
		return rc;
	return run_matvec(c, &e, n, &p, x_dev, xq, 0, y_dev, c->q8, tab, sel,
			  sel_before, err);
}

extern "C" int ms_gpu_expert_ffn(struct ms_gpu_ctx *c,
				 const struct ms_gpu_expert *e,
				 const float *x_dev, float *y_dev,
				 int64_t n_tokens, enum ms_gpu_ffn_path path,
				 struct ms_err *err)
{
	return ms_gpu_experts_ffn(c, e, 1, x_dev, 0, y_dev, n_tokens, path,
				  err);
}

extern "C" int ms_gpu_dense(struct ms_gpu_ctx *c, uint32_t w_type,
			    const void *w_dev, int64_t rows, int64_t cols,
			    const float *x_dev, float *y_dev, int64_t n_tokens,
			    struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (w_type != MS_TYPE_F32 && w_type != MS_TYPE_F16)
		return ms_err_set(err, -ENOTSUP,
				  "gpu dense: weights of type %s: f32 or f16 "
				  "only (dequantise others first)",
				  ms_type_name(w_type));
	if (rows < 1 || cols < 1 || n_tokens < 1 || rows > INT_MAX ||
	    cols > INT_MAX || n_tokens > INT_MAX)
		return ms_err_set(err, -EINVAL,
				  "gpu dense: %lld x %lld weights, %lld tokens",
				  (long long)rows, (long long)cols,
				  (long long)n_tokens);
	if (!w_dev || !x_dev || !y_dev)
		return ms_err_set(err, -EINVAL, "gpu dense: NULL pointer");
	if ((rc = ctx_blas(c, err)))
		return rc;
	const float one = 1.0f, zero = 0.0f;
	cublasStatus_t s;
	if (w_type == MS_TYPE_F32) {
		s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows,
				 (int)n_tokens, (int)cols, &one, w_dev,
				 CUDA_R_32F, (int)cols, x_dev, CUDA_R_32F,
				 (int)cols, &zero, y_dev, CUDA_R_32F, (int)rows,
				 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
		return s == CUBLAS_STATUS_SUCCESS
			       ? 0
			       : blas_fail(err, s, "cublasGemmEx (f32)");
	}
	if ((rc = ws_reserve(c, (size_t)n_tokens * (size_t)cols * 2, err)))
		return rc;
	CUDA_TRY(msg_f32_to_f16_launch(x_dev, c->ws, n_tokens * cols,
				       c->stream),
		 "rounding x to f16");
	return gemm_f16(c, (int)rows, (int)n_tokens, (int)cols, w_dev, c->ws,
			y_dev, err);
}

/* Rows of f16 weights a prefill product dequantises at once: 64 MiB of
 * workspace, whatever the matrix (an output head of 150k x 5120 would be
 * 1.5 GB in one piece). */
#define MM_CHUNK_BYTES (64u << 20)

/* Whether a product of n_tokens inputs takes the fused matvec. */
static bool mm_fused(uint32_t type, const void *w_dev, int64_t n_in,
		     int64_t n_tokens)
{
	return n_tokens <= MSG_MV_MAX_TOKENS && msg_matvec_type(type) &&
	       n_in % 32 == 0 &&
	       (uintptr_t)w_dev % (uintptr_t)msg_matvec_align(type) == 0;
}

/* The arguments' checks of one product; rs its bytes per row. */
static int mm_check(uint32_t type, const void *w_dev, int64_t n_in,
		    int64_t n_out, const float *x_dev, const float *y_dev,
		    int64_t n_tokens, uint64_t *rs, struct ms_err *err)
{
	if (n_in < 1 || n_out < 1 || n_tokens < 1 || n_in > INT_MAX ||
	    n_out > INT_MAX || n_tokens > INT_MAX ||
	    ms_type_row_size(type, n_in, rs, NULL))
		return ms_err_set(err, -EINVAL,
				  "gpu matmul: %lld x %lld %s weights, %lld "
				  "tokens",
				  (long long)n_out, (long long)n_in,
				  ms_type_name(type), (long long)n_tokens);
	if (!w_dev || !x_dev || !y_dev)
		return ms_err_set(err, -EINVAL, "gpu matmul: NULL pointer");
	if (!ms_gpu_dequant_supported(type))
		return ms_err_set(err, -ENOTSUP,
				  "gpu matmul: no GPU kernel for %s weights",
				  ms_type_name(type));
	return 0;
}

/* The fused matvec's call for one product, one "expert" (8-bit input
 * with ms_gpu_ctx_set_q8); xq and part are set by the caller. */
static void mm_call(const struct ms_gpu_ctx *c, struct msg_mv_call *mv,
		    const void **wa, uint32_t type, int64_t n_in, int64_t n_out,
		    uint64_t rs, float *y_dev, int64_t n_tokens)
{
	memset(mv, 0, sizeof(*mv));
	mv->type = type;
	mv->q8 = c->q8;
	mv->n_e = 1;
	mv->wa = wa;
	mv->out = y_dev;
	mv->out_stride = n_tokens * n_out;
	mv->n_rows = (int)n_out;
	mv->n_in = (int)n_in;
	mv->rs = (int64_t)rs;
	mv->B = (int)n_tokens;
	mv->sms = c->sms;
	mv->split = c->mv_split;
	mv->chunk = c->mv_chunk;
	mv->pdl = c->pdl;
	mv->part_bytes = msg_matvec_part_bytes(mv);
}

/* Products that each take the fused matvec (mm_fused), rs their bytes per
 * row: x prepared once, then each product's matvec (and split-K
 * reduction) in turn, the partials' room shared. */
static int mm_fused_run(struct ms_gpu_ctx *c, const struct ms_gpu_mm *mm,
			int n, const uint64_t *rs, int64_t n_in,
			const float *x_dev, const void *xq, int64_t n_tokens,
			struct ms_err *err)
{
	const void *wa[MS_GPU_MM_MAX][1];
	struct msg_mv_call mv[MS_GPU_MM_MAX];
	size_t part = 0;
	for (int i = 0; i < n; i++) {
		wa[i][0] = mm[i].w;
		mm_call(c, &mv[i], wa[i], mm[i].type, n_in, mm[i].n_out, rs[i],
			mm[i].y, n_tokens);
		mv[i].early = mm[i].resident;
		part = mv[i].part_bytes > part ? mv[i].part_bytes : part;
	}
	carve cv = { 0 };
	const size_t o_xq = cv.take((size_t)n_tokens * (size_t)(n_in / 32) *
				    msg_xblk_bytes(c->q8));
	const size_t o_part = cv.take(part);
	int rc = ws_reserve(c, cv.off, err);
	if (rc)
		return rc;
	cudaError_t ce;
	if (!xq &&
	    (ce = msg_prep_launch(x_dev, nullptr, 0, (uint8_t *)c->ws + o_xq,
				  (int)n_in, (int)n_tokens, 1, c->q8,
				  c->stream, c->pdl)) != cudaSuccess)
		return cuda_fail(err, ce, "preparing x");
	for (int i = 0; i < n; i++) {
		mv[i].xq = xq ? xq : (uint8_t *)c->ws + o_xq;
		mv[i].part = mv[i].part_bytes ? (uint8_t *)c->ws + o_part
					      : nullptr;
		mv[i].cnt = c->cnt;
		if ((ce = msg_matvec_launch(&mv[i], c->stream)) != cudaSuccess)
			return cuda_fail(err, ce, "the matvec");
	}
	return 0;
}

extern "C" int ms_gpu_matmul_n(struct ms_gpu_ctx *c,
			       const struct ms_gpu_mm *mm, int n, int64_t n_in,
			       const float *x_dev, const void *xq,
			       int64_t n_tokens, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (!mm || n < 1 || n > MS_GPU_MM_MAX)
		return ms_err_set(err, -EINVAL, "gpu matmul: %d products "
				  "(1..%d)", n, MS_GPU_MM_MAX);
	bool fused = true;
	uint64_t rs[MS_GPU_MM_MAX];
	for (int i = 0; i < n; i++) {
		if (mm[i].type == MS_TYPE_F32 || mm[i].type == MS_TYPE_F16) {
			fused = false; /* ms_gpu_dense's, with its checks */
			continue;
		}
		if ((rc = mm_check(mm[i].type, mm[i].w, n_in, mm[i].n_out, x_dev,
				   mm[i].y, n_tokens, &rs[i], err)))
			return rc;
		fused = fused && mm_fused(mm[i].type, mm[i].w, n_in, n_tokens);
	}
	if (!fused) {
		for (int i = 0; i < n && !rc; i++)
			rc = ms_gpu_matmul(c, mm[i].type, mm[i].w, n_in,
					   mm[i].n_out, x_dev, mm[i].y, n_tokens,
					   err);
		return rc;
	}
	return mm_fused_run(c, mm, n, rs, n_in, x_dev, xq, n_tokens, err);
}

extern "C" int ms_gpu_matmul(struct ms_gpu_ctx *c, uint32_t type,
			     const void *w_dev, int64_t n_in, int64_t n_out,
			     const float *x_dev, float *y_dev, int64_t n_tokens,
			     struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (type == MS_TYPE_F32 || type == MS_TYPE_F16)
		return ms_gpu_dense(c, type, w_dev, n_out, n_in, x_dev, y_dev,
				    n_tokens, err);
	uint64_t rs = 0;
	if ((rc = mm_check(type, w_dev, n_in, n_out, x_dev, y_dev, n_tokens, &rs,
			   err)))
		return rc;
	if (mm_fused(type, w_dev, n_in, n_tokens)) {
		/* decode: the fused matvec, one "expert" (8-bit input with
		 * ms_gpu_ctx_set_q8) */
		const struct ms_gpu_mm one = { type, w_dev, n_out, y_dev,
					       false };
		return mm_fused_run(c, &one, 1, &rs, n_in, x_dev, nullptr,
				    n_tokens, err);
	}
	/* prefill: x to f16 once, then the rows in chunks dequantised to f16
	 * and one GEMM each into their columns of y */
	if ((rc = ctx_blas(c, err)))
		return rc;
	int64_t rows = (int64_t)(MM_CHUNK_BYTES / 2) / n_in;
	rows = rows < 1 ? 1 : rows > n_out ? n_out : rows;
	carve cv = { 0 };
	const size_t o_x = cv.take((size_t)n_tokens * (size_t)n_in * 2);
	const size_t o_w = cv.take((size_t)rows * (size_t)n_in * 2);
	if ((rc = ws_reserve(c, cv.off, err)))
		return rc;
	uint8_t *ws = (uint8_t *)c->ws;
	CUDA_TRY(msg_f32_to_f16_launch(x_dev, ws + o_x, n_tokens * n_in,
				       c->stream),
		 "rounding x to f16");
	const float one = 1.0f, zero = 0.0f;
	for (int64_t r0 = 0; r0 < n_out; r0 += rows) {
		int64_t m = n_out - r0 < rows ? n_out - r0 : rows;
		CUDA_TRY(msg_dequant_launch(type, (const uint8_t *)w_dev +
							  (uint64_t)r0 * rs,
					    ws + o_w, m * n_in, true, c->stream),
			 "dequantising weights");
		/* y[b][r0 + i] (column-major m x n_tokens, ldc n_out) */
		cublasStatus_t s = cublasGemmEx(
			c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, (int)n_tokens,
			(int)n_in, &one, ws + o_w, CUDA_R_16F, (int)n_in,
			ws + o_x, CUDA_R_16F, (int)n_in, &zero, y_dev + r0,
			CUDA_R_32F, (int)n_out, CUBLAS_COMPUTE_32F,
			CUBLAS_GEMM_DEFAULT);
		if (s != CUBLAS_STATUS_SUCCESS)
			return blas_fail(err, s, "cublasGemmEx");
	}
	return 0;
}

extern "C" int ms_gpu_expert_ffn_host(const struct ms_expert_view *v,
				      const float *x, float *y,
				      int64_t n_tokens,
				      enum ms_gpu_ffn_path path, int device,
				      struct ms_err *err)
{
	if (!v || !x || !y)
		return ms_err_set(err, -EINVAL,
				  "gpu ffn: NULL view, input or output");
	uint64_t bytes[3];
	int rc = ms_expert_view_bytes(v, bytes, err);
	if (rc)
		return rc;
	if (n_tokens < 1 || n_tokens > MAX_TOKENS)
		return ms_err_set(err, -EINVAL,
				  "gpu ffn: %lld tokens: expected 1..%d",
				  (long long)n_tokens, MAX_TOKENS);
	const int np = v->fused ? 2 : 3;
	for (int j = 0; j < np; j++)
		if (!v->data[j])
			return ms_err_set(err, -EINVAL,
					  "gpu ffn: projection %d has no data",
					  j);
	struct ms_gpu_ctx *c = nullptr;
	void *d[3] = { nullptr, nullptr, nullptr };
	float *dx = nullptr, *dy = nullptr;
	const size_t xy = (size_t)n_tokens * (size_t)v->n_embd * sizeof(float);
	struct ms_gpu_expert ge;
	memset(&ge, 0, sizeof(ge));
	if ((rc = ms_gpu_ctx_init(&c, device, nullptr, err)))
		return rc;
	for (int j = 0; j < np; j++) {
		if ((rc = ms_gpu_malloc(&d[j], bytes[j], err)) ||
		    (rc = ms_gpu_upload(d[j], v->data[j], bytes[j], err)))
			goto out;
		ge.type[j] = v->type[j];
		ge.data[j] = d[j];
	}
	ge.fused = v->fused;
	ge.n_embd = v->n_embd;
	ge.n_ff = v->n_ff;
	if ((rc = ms_gpu_malloc((void **)&dx, xy, err)) ||
	    (rc = ms_gpu_malloc((void **)&dy, xy, err)) ||
	    (rc = ms_gpu_upload(dx, x, xy, err)))
		goto out;
	if ((rc = ms_gpu_expert_ffn(c, &ge, dx, dy, n_tokens, path, err)))
		goto out;
	if ((rc = ms_gpu_stream_sync(c->stream, err)) ||
	    (rc = ms_gpu_download(y, dy, xy, err)))
		goto out;
out:
	for (int j = 0; j < 3; j++)
		ms_gpu_free(d[j]);
	ms_gpu_free(dx);
	ms_gpu_free(dy);
	ms_gpu_ctx_free(c);
	return rc;
}

extern "C" int ms_gpu_fill_blocks(uint32_t type, void *dev, uint64_t bytes,
				  uint64_t seed, void *stream,
				  struct ms_err *err)
{
	/* f16 scale fields and the exponent e of their size (mkmodel's) */
	static const struct {
		uint32_t type;
		int off0, off1, e;
	} fields[] = {
		{ MS_TYPE_Q4_0, 0, -1, 8 },    { MS_TYPE_Q4_1, 0, 2, 8 },
		{ MS_TYPE_Q5_0, 0, -1, 8 },    { MS_TYPE_Q5_1, 0, 2, 8 },
		{ MS_TYPE_Q8_0, 0, -1, 8 },    { MS_TYPE_Q2_K, 80, 82, 8 },
		{ MS_TYPE_Q3_K, 108, -1, 8 },  { MS_TYPE_Q4_K, 0, 2, 10 },
		{ MS_TYPE_Q5_K, 0, 2, 11 },    { MS_TYPE_Q6_K, 208, -1, 12 },
		{ MS_TYPE_IQ4_NL, 0, -1, 8 },  { MS_TYPE_IQ4_XS, 0, -1, 12 },
		{ MS_TYPE_MXFP4, -1, -1, 0 },
	};
	const struct ms_type_info *ti = ms_type_get(type);
	if (!ti || !ms_gpu_dequant_supported(type))
		return ms_err_set(err, -ENOTSUP,
				  "gpu fill: no kernel for type %s",
				  ms_type_name(type));
	if (!dev || bytes % ti->type_size)
		return ms_err_set(err, -EINVAL,
				  "gpu fill: %llu bytes: not whole %u-byte "
				  "blocks of %s",
				  (unsigned long long)bytes, ti->type_size,
				  ms_type_name(type));
	int kind = 0, off0 = -1, off1 = -1, e = 0;
	if (type == MS_TYPE_F32)
		kind = 1;
	else if (type == MS_TYPE_F16)
		kind = 2;
	else if (type == MS_TYPE_BF16)
		kind = 3;
	for (size_t k = 0; kind == 0 && k < sizeof(fields) / sizeof(fields[0]);
	     k++)
		if (fields[k].type == type) {
			off0 = fields[k].off0;
			off1 = fields[k].off1;
			e = fields[k].e;
		}
	const int64_t nb = (int64_t)(bytes / ti->type_size);
	if (nb == 0)
		return 0;
	/* a grid-stride loop: 1024 CTAs keep any of our GPUs' memory busy */
	const unsigned grid = grid_for(nb) < 1024 ? grid_for(nb) : 1024;
	fill_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(
		(uint8_t *)dev, nb, (int)ti->type_size, kind, off0, off1, e,
		seed);
	CUDA_TRY(cudaGetLastError(), "the fill kernel");
	return 0;
}

extern "C" int ms_gpu_ctx_mark(struct ms_gpu_ctx *c, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	CUDA_TRY(cudaEventRecord(c->ev0, c->stream), "cudaEventRecord");
	c->marked = true;
	return 0;
}

struct ms_gpu_marks {
	int device, n;
	cudaEvent_t *ev;
};

extern "C" int ms_gpu_marks_new(struct ms_gpu_ctx *c, int n,
				struct ms_gpu_marks **out, struct ms_err *err)
{
	*out = nullptr;
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (n < 1 || n > 4096)
		return ms_err_set(err, -EINVAL, "gpu marks: %d (1..4096)", n);
	struct ms_gpu_marks *m =
		(struct ms_gpu_marks *)calloc(1, sizeof(struct ms_gpu_marks));
	if (m)
		m->ev = (cudaEvent_t *)calloc((size_t)n, sizeof(cudaEvent_t));
	if (!m || !m->ev) {
		free(m);
		return ms_err_set(err, -ENOMEM, "gpu marks: out of memory");
	}
	m->device = c->device;
	for (; m->n < n; m->n++) {
		cudaError_t ce = cudaEventCreate(&m->ev[m->n]);
		if (ce != cudaSuccess) {
			ms_gpu_marks_free(m);
			return cuda_fail(err, ce, "cudaEventCreate");
		}
	}
	*out = m;
	return 0;
}

extern "C" int ms_gpu_marks_at(struct ms_gpu_ctx *c, struct ms_gpu_marks *m,
			       int i, struct ms_err *err)
{
	if (!c || !m || i < 0 || i >= m->n)
		return ms_err_set(err, -EINVAL, "gpu marks: mark %d of %d", i,
				  m ? m->n : 0);
	CUDA_TRY(cudaEventRecord(m->ev[i], c->stream), "cudaEventRecord");
	return 0;
}

extern "C" int ms_gpu_marks_ms(const struct ms_gpu_marks *m, int i, int j,
			       double *ms, struct ms_err *err)
{
	if (!m || i < 0 || j < 0 || i >= m->n || j >= m->n)
		return ms_err_set(err, -EINVAL, "gpu marks: %d to %d of %d", i,
				  j, m ? m->n : 0);
	float t = 0;
	CUDA_TRY(cudaSetDevice(m->device), "cudaSetDevice");
	CUDA_TRY(cudaEventElapsedTime(&t, m->ev[i], m->ev[j]),
		 "cudaEventElapsedTime");
	*ms = t;
	return 0;
}

extern "C" void ms_gpu_marks_free(struct ms_gpu_marks *m)
{
	if (!m)
		return;
	cudaSetDevice(m->device);
	for (int i = 0; i < m->n; i++)
		cudaEventDestroy(m->ev[i]);
	free(m->ev);
	free(m);
}

extern "C" int ms_gpu_ctx_elapsed(struct ms_gpu_ctx *c, double *ms,
				  struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (!c->marked)
		return ms_err_set(err, -EINVAL, "gpu: elapsed without a mark");
	float t = 0;
	CUDA_TRY(cudaEventRecord(c->ev1, c->stream), "cudaEventRecord");
	CUDA_TRY(cudaEventSynchronize(c->ev1), "waiting for the stream");
	CUDA_TRY(cudaEventElapsedTime(&t, c->ev0, c->ev1),
		 "cudaEventElapsedTime");
	*ms = t;
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

extern "C" int ms_gpu_copy_bandwidth(struct ms_gpu_ctx *c, uint64_t bytes,
				     int reps, double *best_gbps,
				     double *median_gbps, struct ms_err *err)
{
	int rc = ctx_enter(c, err);
	if (rc)
		return rc;
	if (reps < 1 || reps > 1000 || bytes < 4096 || bytes % 4)
		return ms_err_set(err, -EINVAL,
				  "gpu copy: %llu bytes x %d: expected >= 4096 "
				  "bytes (a multiple of 4), 1..1000 reps",
				  (unsigned long long)bytes, reps);
	void *a = nullptr, *b = nullptr;
	double *t = (double *)calloc((size_t)reps, sizeof(double));
	if (!t)
		return ms_err_set(err, -ENOMEM, "gpu copy: out of memory");
	if ((rc = ms_gpu_malloc(&a, bytes, err)) ||
	    (rc = ms_gpu_malloc(&b, bytes, err)) ||
	    (rc = ms_gpu_fill_blocks(MS_TYPE_F32, a, bytes, 42, c->stream, err)))
		goto out;
	for (int i = -1; i < reps && !rc; i++) {
		double ms = 0;
		cudaError_t ce;
		if ((rc = ms_gpu_ctx_mark(c, err)))
			break;
		if ((ce = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice,
					  c->stream)) != cudaSuccess) {
			rc = cuda_fail(err, ce, "cudaMemcpyAsync");
			break;
		}
		if ((rc = ms_gpu_ctx_elapsed(c, &ms, err)))
			break;
		if (i >= 0) /* the first copy warms up */
			t[i] = ms;
	}
	if (!rc) {
		qsort(t, (size_t)reps, sizeof(double), cmp_double);
		const double med = reps % 2 ? t[reps / 2]
					    : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
		*best_gbps = 2.0 * (double)bytes / (t[0] * 1e-3) / 1e9;
		*median_gbps = 2.0 * (double)bytes / (med * 1e-3) / 1e9;
	}
out:
	ms_gpu_free(a);
	ms_gpu_free(b);
	free(t);
	return rc;
}
