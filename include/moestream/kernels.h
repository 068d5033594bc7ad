/*
 * kernels.h - the kernels room's contract. For now: what GPU this build can
 * use. Dequantisation, the router and the expert FFN (C reference, CUDA,
 * cuBLAS) join here.
 *
 * CUDA is optional at build time. A build without it answers every GPU call
 * with -ENOTSUP and the message "built without CUDA"; a CUDA build on a
 * machine without a usable device answers -ENODEV with the runtime's reason.
 */
#ifndef MOESTREAM_KERNELS_H
#define MOESTREAM_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* C reference: dequantisation (kernels/dequant.c). The truth every other   */
/* path is checked against; bit-identical to ggml's dequantize_row_*.       */

/* True when `type` has a dequantiser: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4. */
bool ms_dequant_supported(uint32_t type);

/* Dequantises `n` elements (a multiple of the type's block size) from `src`
 * into `dst`: 0, or -EINVAL (unsupported type, bad n) / -ENOTSUP. */
int ms_dequant_row(uint32_t type, const void *src, float *dst, int64_t n);

/* ------------------------------------------------------------------------ */
/* Router and expert FFN, CPU (kernels/router.c, kernels/ffn.c,             */
/* kernels/ffn_avx2.c). Owner: the router / FFN block, from here to the     */
/* "end of router / FFN" line.                                              */

/* llama.cpp's {arch}.expert_gating_func values (src/llama-hparams.h). */
enum ms_gating {
	MS_GATING_NONE = 0,           /* not set: the arch's default */
	MS_GATING_SOFTMAX = 1,
	MS_GATING_SIGMOID = 2,
	MS_GATING_SOFTMAX_WEIGHT = 3, /* softmax over the selected logits */
	MS_GATING_SQRT_SOFTPLUS = 4,  /* sqrt(softplus(logit)): DeepSeek V4 */
	MS_GATING_COUNT = 5,
};

const char *ms_gating_name(enum ms_gating g); /* "softmax", ..., "invalid" */

/* Most experts a router may select per token. */
#define MS_ROUTER_MAX_USED 64

struct ms_model; /* model.h */

/* How one layer's router turns logits into a choice, as llama.cpp's
 * build_moe_ffn() does:
 *   probs     = gating(logits)             (softmax_weight: probs = logits)
 *   selection = top n_used of probs + exp_probs_b (ties: lower expert first)
 *   weights   = probs of the selected      (unbiased)
 *               softmax over them           (softmax_weight only)
 *               / their sum, the sum clamped >= 2^-14 (when norm)
 *               x scale                     (when scale is neither 0 nor 1) */
struct ms_router_params {
	enum ms_gating gating; /* never MS_GATING_NONE once resolved */
	bool norm;             /* {arch}.expert_weights_norm */
	float scale;           /* {arch}.expert_weights_scale; 0 = absent */
	uint32_t n_expert;     /* logits per token */
	uint32_t n_used;       /* experts selected, 1..min(n_expert, MAX_USED) */
};

/* The router parameters llama.cpp would use for model `m`: the keys where
 * the arch's graph reads them, its constants where it hard-codes them
 * (qwen3moe and llama/Mixtral: softmax + norm; gpt-oss: softmax_weight, no
 * norm), and the arch's default gating when the key is absent (glm4moe:
 * sigmoid; everything else: softmax). -EINVAL (message names the key) for a
 * gating value we do not know, a non-finite scale or a dense model. */
int ms_router_params_from_model(const struct ms_model *m,
				struct ms_router_params *p, struct ms_err *err);

/* Top-k selection and weights from `logits` [n_expert] (one token), with an
 * optional selection bias `exp_probs_b` [n_expert] (NULL: none). Writes
 * n_used expert ids, best first, and their weights. Computes in double.
 * 0, or -EINVAL (bad params, non-finite logits or bias). */
int ms_router_select(const struct ms_router_params *p, const float *logits,
		     const float *exp_probs_b, uint32_t *experts,
		     float *weights, struct ms_err *err);

/* The whole router for one token: logits = W_gate_inp . x (+ gate_inp_b),
 * then ms_router_select. W_gate_inp is n_expert rows of n_embd elements of
 * `w_type` (normally F32; any type with a dequantiser is accepted), as
 * GGUF's ne = [n_embd, n_expert]. gate_inp_b: gpt-oss's logit bias or NULL.
 * `logits` (may be NULL) receives the raw logits. Dots in double. */
int ms_router_run(const struct ms_router_params *p, uint32_t w_type,
		  const void *w_gate_inp, const float *gate_inp_b,
		  const float *exp_probs_b, int64_t n_embd, const float *x,
		  uint32_t *experts, float *weights, float *logits,
		  struct ms_err *err);

/* One expert's three projections, as they lie in memory (a cache slot or a
 * mapping of the file): gate/up [n_embd -> n_ff], down [n_ff -> n_embd];
 * fused: gate_up [n_embd -> 2 n_ff] (gate rows first) in data[0]/type[0]
 * and down in data[1]/type[1] (entry 2 unused). Rows are ne0-major, as in
 * GGUF: gate has n_ff rows of n_embd elements, down n_embd rows of n_ff. */
struct ms_expert_view {
	bool fused;
	int64_t n_embd, n_ff;
	uint32_t type[3];
	const void *data[3];
};

/* Bytes of each projection of `v` (bytes[2] = 0 when fused): 0, or -EINVAL
 * (a dimension < 1 or not a multiple of the type's block, an unknown type)
 * / -EOVERFLOW. */
int ms_expert_view_bytes(const struct ms_expert_view *v, uint64_t bytes[3],
			 struct ms_err *err);

/* Which CPU code computes the FFN. */
enum ms_ffn_path {
	MS_FFN_PATH_AUTO = 0,   /* the best this CPU has */
	MS_FFN_PATH_SCALAR = 1, /* C reference: ms_dequant_row + double dots */
	MS_FFN_PATH_AVX2 = 2,   /* AVX2/FMA/F16C: at B = 1 fused
				   dequantise-and-dot kernels, scales taken
				   out of the sums; at B > 1 vector
				   dequantisers (bit-identical to the scalar
				   ones) and 4x2-tiled f32 FMA dots; f32
				   accumulators flushed to double every 1024
				   elements */
	MS_FFN_PATH_COUNT = 3,
};

const char *ms_ffn_path_name(enum ms_ffn_path p); /* "auto", "scalar", "avx2" */

/* True when this CPU (and build) can run `p` (AUTO and SCALAR: always).
 * MS_FFN_NO_AVX2=1 in the environment makes AVX2 unavailable. */
bool ms_ffn_path_available(enum ms_ffn_path p);

/* True when the FFN accepts weights of `type` (it has a dequantiser). */
bool ms_ffn_type_supported(uint32_t type);

/* True when `p` has its own vectorised dequantiser for `type`; other
 * supported types use the scalar dequantiser inside the vector path. */
bool ms_ffn_type_vectorised(uint32_t type, enum ms_ffn_path p);

/* The dequantiser `p` uses for `type` (bit-identical to ms_dequant_row by
 * design; the tests hold it to that). 0, -ENOTSUP (path unavailable or type
 * unsupported), -EINVAL (n not a positive multiple of the block). */
int ms_ffn_dequant_row(enum ms_ffn_path p, uint32_t type, const void *src,
		       float *dst, int64_t n);

/* f32 -> IEEE half, round to nearest even (as F16C's vcvtps2ph and ggml's
 * GGML_FP32_TO_FP16 do); the row form writes n of them. */
uint16_t ms_f32_f16(float f);
void ms_f32_f16_row(const float *x, uint16_t *y, int64_t n);

/* One query's attention over n cached f16 rows as llama.cpp's CPU flash
 * attention computes it for batches of fewer than 64 tokens: q rounded to
 * f16, scores dot(q, k) * scale in f32, an online softmax whose V
 * accumulator is held in f16 (kernels/attn.c says exactly how). Row p of K
 * and V starts at k + p * stride and v + p * stride (values); d <=
 * MS_ATTN_MAX_D. The AVX2 path gives the C path's bits. 0, -EINVAL (d or
 * stride), -ENOTSUP (path unavailable). */
#define MS_ATTN_MAX_D 1024
int ms_attn_f16(enum ms_ffn_path p, const float *q, const uint16_t *k,
		const uint16_t *v, size_t stride, uint32_t n, int64_t d,
		float scale, float *out);

/* A pool of worker threads for the FFN, so that a decode step does not pay
 * for thread creation (tens of microseconds each). Optional: without one,
 * ms_expert_ffn starts and joins threads per call. One call at a time per
 * pool. */
struct ms_ffn_pool;

/* n_threads: total threads including the caller's; 0 = all online CPUs.
 * 0, -EINVAL, -ENOMEM, or -errno from pthread_create. */
int ms_ffn_pool_init(struct ms_ffn_pool **out, int n_threads,
		     struct ms_err *err);
void ms_ffn_pool_free(struct ms_ffn_pool *pool);
int ms_ffn_pool_threads(const struct ms_ffn_pool *pool);

struct ms_ffn_opts {
	int n_threads;           /* 0: all online CPUs (ignored with a pool) */
	enum ms_ffn_path path;   /* AUTO: AVX2 where the CPU has it */
	struct ms_ffn_pool *pool;/* NULL: threads per call */
	bool q8;                 /* K-quant weights (Q2_K..Q6_K) only: round
				    the activations to 8 bits per 256 values
				    as ggml's CPU backend does (its Q8_K) and
				    compute in integers; rows of a multiple
				    of 256. Another type, or rows that are
				    not, is -ENOTSUP: see ms_ffn_q8_ok. */
};

/* True when ms_expert_ffn / ms_matmul take opts.q8 for rows of n values
 * of `type`. */
bool ms_ffn_q8_ok(uint32_t type, int64_t n);

/* For n_tokens inputs x [n_tokens][n_embd] (row-major, f32):
 *   y = W_down . (silu(W_gate . x) * (W_up . x))     y [n_tokens][n_embd]
 * dequantising the weights on the fly a few rows at a time (never the whole
 * expert), on opts->n_threads threads. The result does not depend on the
 * thread count (bit for bit); a token's result may depend on whether it is
 * alone (B = 1 takes the fused kernels) or in a batch, within the 1e-5
 * relative L2 both keep to a float64 computation. opts NULL = defaults.
 * y must not overlap x. Not weighted by the router (the caller scales).
 * 0, or -EINVAL (bad view or sizes), -ENOTSUP (a type without a kernel,
 * path unavailable), -ENOMEM; the message says which. */
int ms_expert_ffn(const struct ms_expert_view *v, const float *x, float *y,
		  int64_t n_tokens, const struct ms_ffn_opts *opts,
		  struct ms_err *err);

/* ------------------------ end of router / FFN ---------------------------- */

/* y[b * n_out + r] = row r of W . x[b * n_in ..] for every row r < n_out and
 * token b < n_tokens: W is n_out rows of n_in elements (a multiple of 32) of
 * `type`, quantised as in the file. Threads split the rows; the sums are the
 * FFN's (f32 FMA chains flushed to double, or double on the scalar path), so
 * the result does not depend on the thread count. */
int ms_matmul(uint32_t type, const void *w, int64_t n_in, int64_t n_out,
	      const float *x, float *y, int64_t n_tokens,
	      const struct ms_ffn_opts *opts, struct ms_err *err);

/* Runs fn(ctx, ith, nth) on every thread of `pool` (the caller's thread is
 * ith 0), or on n_threads fresh threads when pool is NULL (0: all CPUs). */
void ms_ffn_parallel(struct ms_ffn_pool *pool, int n_threads,
		     void (*fn)(void *ctx, int ith, int nth), void *ctx);

#define MS_GPU_MAX 16

struct ms_gpu_info {
	int device;
	char name[256];
	char pci_bus_id[32];   /* "0000:65:00.0", for NUMA placement */
	uint64_t total_mem;    /* bytes */
	int cc_major, cc_minor;
	int multiprocessors;
	int kernel_arch;       /* __CUDA_ARCH__ of the image that ran on it */
};

/* True when this build has CUDA (nvcc was found at build time). */
bool ms_gpu_built(void);

/* Versions linked in: "CUDA runtime 13.0, cuBLAS 13.0.0", or "built without
 * CUDA". Static buffer. */
const char *ms_gpu_build_info(void);

/* Lists up to `max` devices into `out` and runs a one-thread test kernel on
 * each: the count (>= 1), -ENOTSUP when built without CUDA, -ENODEV when
 * there is no usable device or the kernel cannot run (message says why). */
int ms_gpu_list(struct ms_gpu_info *out, int max, struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* GPU: dequantisation, the expert FFN (fused matvec for decode, cuBLAS for */
/* prefill) and the dense cuBLAS path (kernels/gpu_*.cu). Owner: the GPU    */
/* block, from here to the "end of GPU" line.                               */
/*                                                                          */
/* Every function below answers -ENOTSUP "built without CUDA" in a build    */
/* without CUDA (kernels/gpu_nocuda.c), and -ENODEV with the runtime's      */
/* reason where there is no usable device. Pointers named *_dev, and the    */
/* data of a struct ms_gpu_expert, are device memory; `stream` is a         */
/* cudaStream_t, NULL for the legacy default stream. Calls are asynchronous */
/* on their stream unless they say otherwise. CUDA failures after the       */
/* arguments were checked are -ENOMEM (allocation) or -EIO (a launch, a     */
/* fault; the device may then be unusable), with the runtime's message.     */

/* Device memory, so that C callers need no CUDA headers. The copies and
 * the memset have completed when they return (so work on any stream sees
 * them); a download does not wait for other streams: sync them first. */
int ms_gpu_set_device(int device, struct ms_err *err);
int ms_gpu_malloc(void **dev, size_t bytes, struct ms_err *err);
void ms_gpu_free(void *dev); /* NULL is fine */
int ms_gpu_upload(void *dev, const void *host, size_t bytes,
		  struct ms_err *err);
int ms_gpu_download(void *host, const void *dev, size_t bytes,
		    struct ms_err *err);
int ms_gpu_memset(void *dev, int byte, size_t bytes, struct ms_err *err);
int ms_gpu_stream_sync(void *stream, struct ms_err *err);

/* True when ms_gpu_dequant has a kernel for `type`: the same 16 types as
 * ms_dequant_supported. */
bool ms_gpu_dequant_supported(uint32_t type);

/* Dequantises n elements (a multiple of the type's block) from src_dev
 * (any alignment) into dst_dev: f32 bit-identical to ms_dequant_row (NaN
 * payloads included), or with f16 = true that f32 value rounded to nearest
 * even (overflow to infinity; a NaN keeps its sign and top payload bits and
 * is made quiet, as x86's vcvtps2ph does). dst_dev aligned to its element.
 * 0, -ENOTSUP (no kernel for the type), -EINVAL (n, NULL, alignment). */
int ms_gpu_dequant(uint32_t type, const void *src_dev, void *dst_dev,
		   int64_t n, bool f16, void *stream, struct ms_err *err);

/* True when the fused decode matvec has a kernel for `type`: Q2_K, Q3_K,
 * Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, MXFP4. */
bool ms_gpu_matvec_supported(uint32_t type);

/* One expert on the device: as struct ms_expert_view (gate/up/down, or
 * fused gate_up with gate rows first in data[0] and down in data[1]), the
 * data pointers device memory. resident: no kernel writes its bytes (a
 * model's resident tensors; a weight filled by a kernel of the same
 * stream is not), so with PDL (ms_gpu_ctx_set_pdl) the fused matvec
 * loads its first chunk before it waits for the kernel ahead of it. */
struct ms_gpu_expert {
	bool fused;
	int64_t n_embd, n_ff;
	uint32_t type[3];
	const void *data[3];
	bool resident;
};

/* Which GPU code computes the FFN. */
enum ms_gpu_ffn_path {
	MS_GPU_FFN_AUTO = 0,   /* MATVEC (MATVEC_Q8 after ms_gpu_ctx_set_q8)
				  where it can, else CUBLAS */
	MS_GPU_FFN_MATVEC = 1, /* fused dequantise + matvec straight from the
				  quantized bytes, SwiGLU fused into the
				  gate/up kernel; B <= 8, the matvec types;
				  f32 accumulation of exact integer partial
				  sums: relative L2 ~1e-7 against the C
				  reference */
	MS_GPU_FFN_CUBLAS = 2, /* dequantise to f16, cublasGemmEx (f16 in,
				  f32 accumulation); x and h rounded to f16:
				  relative L2 ~4e-4 (f16 rounding of weights
				  and activations); any B, every type */
	MS_GPU_FFN_MATVEC_Q8 = 3, /* MATVEC with x and h rounded to 8 bits
				  per block of 32 as ggml's q8_1 (d = amax /
				  127, q = rint(x / d)): a third of the
				  integer work and input bytes; the error is
				  that rounding's, ~5e-3 relative per product
				  for normal-ish inputs (at most ~1.3e-2),
				  ~1e-2 relative L2 for the whole FFN (two
				  roundings: x and h; up to ~4e-2 seen on
				  random weights); t_gpu_kernels measures it
				  against float64 */
	MS_GPU_FFN_PATH_COUNT = 4,
};

const char *ms_gpu_ffn_path_name(enum ms_gpu_ffn_path p); /* "auto", ... */

/* A device, a stream, a cuBLAS handle (made on first use) and a workspace
 * that grows to the largest call. One call at a time per context; a
 * context per thread or per stream. */
struct ms_gpu_ctx;

/* stream: NULL makes the context its own non-blocking stream. On a
 * device of compute capability 9.0 or later it runs two tiny kernels on
 * the stream and waits for them (PDL's trial: ms_gpu_ctx_set_pdl). 0,
 * -EINVAL, -ENODEV, -ENOMEM. */
int ms_gpu_ctx_init(struct ms_gpu_ctx **out, int device, void *stream,
		    struct ms_err *err);
void ms_gpu_ctx_free(struct ms_gpu_ctx *c); /* waits for its stream */
void *ms_gpu_ctx_stream(const struct ms_gpu_ctx *c);
int ms_gpu_ctx_device(const struct ms_gpu_ctx *c);

/* q8 = true: the context's decode products take 8-bit activations, AUTO
 * in ms_gpu_experts_ffn picking MATVEC_Q8 where it would pick MATVEC, and
 * ms_gpu_matmul's fused matvec (<= 8 tokens) doing the same (its error
 * then ~5e-3 relative, see MS_GPU_FFN_MATVEC_Q8). Default false: exact.
 * 0, -EINVAL (NULL context). */
int ms_gpu_ctx_set_q8(struct ms_gpu_ctx *c, bool q8, struct ms_err *err);

/* How the fused matvec splits K (each output row's blocks, across CTAs)
 * when a launch is too small to fill the device: 0 (default) by its rule
 * (from the multiprocessor count, see kernels/gpu_matvec.cu), 1 never,
 * 2..16 into that many ranges on every launch (at most one per block),
 * for tests and benchmarks. The ranges' sums are added in a fixed order,
 * so results are deterministic; a split result differs from the unsplit
 * one by f32 reassociation only. 0, -EINVAL. */
int ms_gpu_ctx_set_split(struct ms_gpu_ctx *c, int split, struct ms_err *err);

/* The fused matvec's chunk: the bytes of weights (all its rows, both
 * matrices of a gate/up pair) a CTA copies into shared memory at a time,
 * into one of two buffers (the two stay under 46 KB of shared memory).
 * 0 (default): MS_GPU_CHUNK_DEFAULT; else MS_GPU_CHUNK_MIN..
 * MS_GPU_CHUNK_MAX, rounded to whole blocks (and to whole units per
 * thread where they fit). The results do not depend on it, bit for bit:
 * a knob for benchmarks (`moestream bench gpu --chunks`) to find the
 * fastest on a GPU. 0, -EINVAL. */
#define MS_GPU_CHUNK_DEFAULT 20480
#define MS_GPU_CHUNK_MIN 2048
#define MS_GPU_CHUNK_MAX 22528
int ms_gpu_ctx_set_chunk(struct ms_gpu_ctx *c, int bytes, struct ms_err *err);

/* Programmatic dependent launch (PDL): on a device of compute capability
 * 9.0 or later (Hopper), the context's decode kernels (the fused matvec
 * and its input preparation, norms, RoPE, attention, routing, the MoE
 * combine) are launched so that each may start while the kernel before
 * it on the stream ends, and waits inside for that kernel's results: the
 * gap between launches, and the matvec's first weight loads (resident
 * weights only), overlap the kernel before. The results are the same
 * bits. On by default where the device has it and a trial launch at
 * ms_gpu_ctx_init ran; off: every launch waits for the one before, as a
 * plain launch does. 0, or -ENOTSUP (on, and the context cannot:
 * ms_gpu_ctx_pdl_note says why). */
int ms_gpu_ctx_set_pdl(struct ms_gpu_ctx *c, bool on, struct ms_err *err);
/* Whether the context's launches are PDL (the default or the last
 * ms_gpu_ctx_set_pdl). */
bool ms_gpu_ctx_pdl(const struct ms_gpu_ctx *c);

/* Why the context cannot have PDL ("compute capability 8.6: ...", or
 * "the runtime refused a PDL launch: ..." when ms_gpu_ctx_init's trial
 * launch failed); "" when it can. */
const char *ms_gpu_ctx_pdl_note(const struct ms_gpu_ctx *c);

/* The FFN of n_experts experts that share fused, n_embd, n_ff and types
 * (one layer's routed experts), each on n_tokens inputs, unweighted:
 *   y_e = W_down_e . (silu(W_gate_e . x_e) * (W_up_e . x_e))
 * x_dev + e * x_stride (floats; 0: every expert reads the same x) holds
 * expert e's n_tokens x n_embd inputs, finite; y_dev + e * n_tokens *
 * n_embd receives its outputs (must not overlap x). n_embd and n_ff are
 * multiples of 32 and of the types' blocks. AUTO takes MATVEC (or
 * MATVEC_Q8, after ms_gpu_ctx_set_q8) when n_tokens <= 8, every type has
 * a matvec kernel and each projection is aligned as the matvec needs (4
 * bytes for Q2_K/Q4_K/Q5_K, 2 for Q3_K/Q6_K/Q8_0/Q4_0), else CUBLAS. Asynchronous on the context's stream.
 * 0, or -EINVAL (shapes, NULLs, mixed experts, alignment for MATVEC*),
 * -ENOTSUP (MATVEC* for a type without a kernel, or n_tokens > 8), -ENOMEM,
 * -EIO. */
int ms_gpu_experts_ffn(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
		       int n_experts, const float *x_dev, int64_t x_stride,
		       float *y_dev, int64_t n_tokens,
		       enum ms_gpu_ffn_path path, struct ms_err *err);

/* One expert: ms_gpu_experts_ffn with n_experts = 1. */
int ms_gpu_expert_ffn(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
		      const float *x_dev, float *y_dev, int64_t n_tokens,
		      enum ms_gpu_ffn_path path, struct ms_err *err);

/* The dense hot-layer product through cuBLAS: y[b] = W . x[b] for n_tokens
 * inputs, W rows x cols (row-major, GGUF's ne = [cols, rows]) of F32 or F16
 * on the device, x [n_tokens][cols] f32, y [n_tokens][rows] f32. F32: an
 * f32 GEMM (no TF32); F16: x rounded to f16, cublasGemmEx with f32
 * accumulation. 0, -ENOTSUP (another type), -EINVAL, -ENOMEM, -EIO. */
int ms_gpu_dense(struct ms_gpu_ctx *c, uint32_t w_type, const void *w_dev,
		 int64_t rows, int64_t cols, const float *x_dev, float *y_dev,
		 int64_t n_tokens, struct ms_err *err);

/* A hot-layer product from the quantised bytes: y[b][r] = W[r] . x[b] for
 * n_tokens inputs x [n_tokens][n_in], W n_out rows of n_in elements of
 * `type` as in the file (row-major), y [n_tokens][n_out]. Up to 8 tokens
 * and a type with a fused matvec (and W aligned as it needs): the fused
 * matvec, f32 sums of exact integer partial sums (~1e-7 relative; with
 * ms_gpu_ctx_set_q8, x rounded to 8 bits per block of 32: ~5e-3); F32 and
 * F16: ms_gpu_dense; otherwise rows dequantised to f16 in 64 MiB chunks
 * and cublasGemmEx with f32 accumulation (f16 operands, ~4e-4 relative).
 * 0, -EINVAL, -ENOTSUP (no GPU dequantiser for the type), -ENOMEM, -EIO. */
int ms_gpu_matmul(struct ms_gpu_ctx *c, uint32_t type, const void *w_dev,
		  int64_t n_in, int64_t n_out, const float *x_dev, float *y_dev,
		  int64_t n_tokens, struct ms_err *err);

/* One product of ms_gpu_matmul_n: y [n_tokens][n_out] = W . x;
 * resident as struct ms_gpu_expert's. */
struct ms_gpu_mm {
	uint32_t type;
	const void *w;
	int64_t n_out;
	float *y;
	bool resident;
};
#define MS_GPU_MM_MAX 4

/* n (1..MS_GPU_MM_MAX) products of the same input x [n_tokens][n_in], the
 * same bits as n calls of ms_gpu_matmul; when each takes the fused matvec,
 * x is prepared for them once (an attention's q, k and v: two launches
 * fewer), or not at all with xq (not NULL): x already prepared there by a
 * norm of this context (ms_gpu_add_rms_norm's yq), since its 8-bit
 * setting last changed (the caller's guarantee; xq is ignored where a
 * product does not take the fused matvec). Same returns. */
int ms_gpu_matmul_n(struct ms_gpu_ctx *c, const struct ms_gpu_mm *mm, int n,
		    int64_t n_in, const float *x_dev, const void *xq,
		    int64_t n_tokens, struct ms_err *err);

/* The largest batch the fused matvec (decode) takes; larger ones go
 * through cuBLAS. */
#define MS_GPU_MATVEC_MAX_TOKENS 8

/* The bytes of an input prepared for the fused matvec (either form): T
 * rows of n floats, n a multiple of 32; 0 for a shape that has none. */
size_t ms_gpu_xq_bytes(int64_t n, int64_t T);

/* ms_gpu_experts_ffn on one x for all (x_stride 0) and the path AUTO
 * picks, with x maybe already prepared at xq (as ms_gpu_matmul_n takes
 * it). */
int ms_gpu_experts_ffn_xq(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
			  int n_experts, const float *x_dev, const void *xq,
			  float *y_dev, int64_t n_tokens, struct ms_err *err);

/* For tools and tests: copies the expert `v` (host memory, as
 * ms_expert_ffn takes it) and x [n_tokens][n_embd] to device `device`,
 * runs ms_gpu_expert_ffn and copies y back. Synchronous; everything it
 * allocates is freed. Same returns. */
int ms_gpu_expert_ffn_host(const struct ms_expert_view *v, const float *x,
			   float *y, int64_t n_tokens,
			   enum ms_gpu_ffn_path path, int device,
			   struct ms_err *err);

/* For benchmarks and tests: fills `bytes` (a multiple of the type's block
 * size) at dev with random valid blocks of `type`, deterministic in seed:
 * random bits whose f16 scales (d, dmin) are small finite values and
 * MXFP4's exponents near 2^-6, so that every value is finite and of a
 * sensible size. 0, -ENOTSUP (a type without a dequantiser), -EINVAL. */
int ms_gpu_fill_blocks(uint32_t type, void *dev, uint64_t bytes,
		       uint64_t seed, void *stream, struct ms_err *err);

/* Timing on the context's stream with CUDA events: mark, enqueue work,
 * then elapsed waits for it and gives the milliseconds since the mark. */
int ms_gpu_ctx_mark(struct ms_gpu_ctx *c, struct ms_err *err);
int ms_gpu_ctx_elapsed(struct ms_gpu_ctx *c, double *ms, struct ms_err *err);

/* n (1..4096) timing marks on the context's stream, for the parts of a
 * longer piece of work: ms_gpu_marks_at records mark i where the stream
 * has got to (asynchronous), ms_gpu_marks_ms gives the milliseconds from
 * mark i to mark j once both have passed (after a sync of the stream). */
struct ms_gpu_marks;
int ms_gpu_marks_new(struct ms_gpu_ctx *c, int n, struct ms_gpu_marks **out,
		     struct ms_err *err);
int ms_gpu_marks_at(struct ms_gpu_ctx *c, struct ms_gpu_marks *m, int i,
		    struct ms_err *err);
int ms_gpu_marks_ms(const struct ms_gpu_marks *m, int i, int j, double *ms,
		    struct ms_err *err);
void ms_gpu_marks_free(struct ms_gpu_marks *m); /* NULL is fine */

/* The device's own copy rate: cudaMemcpyAsync device-to-device of `bytes`
 * (two buffers allocated and freed here), reps times after a warm-up copy;
 * *best_gbps and *median_gbps count bytes read plus bytes written, as a
 * kernel that reads its input once and writes its output once would.
 * Synchronous. */
int ms_gpu_copy_bandwidth(struct ms_gpu_ctx *c, uint64_t bytes, int reps,
			  double *best_gbps, double *median_gbps,
			  struct ms_err *err);

/* The small operations of a forward pass on the device (kernels/gpu_ops.cu),
 * each with the arithmetic of the C forward pass (engine/forward.c). Every
 * pointer is device memory; each call is asynchronous on the context's
 * stream. 0, or -EINVAL (a size below 1 or too large, a NULL pointer, a bad
 * parameter: the message names it), -EIO (the launch failed: the runtime's
 * message). */

/* y[t] = x[t] * (1 / sqrtf((float)(sum_i (double)x[t][i]^2 / n) + eps)) * w
 * for T rows of n floats; per element (x[i] * scale) * w[i] in f32. y may
 * equal x. */
int ms_gpu_rms_norm(struct ms_gpu_ctx *c, const float *x, const float *w,
		    float *y, int64_t n, int64_t T, float eps,
		    struct ms_err *err);

/* x[i] += a[i] for i < n. */
int ms_gpu_add(struct ms_gpu_ctx *c, float *x, const float *a, int64_t n,
	       struct ms_err *err);

/* ms_gpu_add of T rows of n (x[t] += a[t]), then ms_gpu_rms_norm of the
 * new x into y with w, in one launch: the bits of the two calls. y must
 * not overlap x or a. yq (may be NULL; n a multiple of 32): y also
 * prepared there for the fused matvec in the context's form, the bytes
 * the products' own preparation would write (ms_gpu_xq_bytes(n, T) of
 * room), for ms_gpu_matmul_n and the FFN calls that take an xq. */
int ms_gpu_add_rms_norm(struct ms_gpu_ctx *c, float *x, const float *a,
			const float *w, float *y, void *yq, int64_t n,
			int64_t T, float eps, struct ms_err *err);

/* x[t][i] += b[i] for T rows of n. */
int ms_gpu_add_bias(struct ms_gpu_ctx *c, float *x, const float *b,
		    int64_t n, int64_t T, struct ms_err *err);

/* One set of ms_gpu_add_bias_n: x[t][i] += b[i], T rows of n. */
struct ms_gpu_bias {
	float *x;
	const float *b;
	int64_t n;
};
#define MS_GPU_BIAS_MAX 3

/* 1..MS_GPU_BIAS_MAX sets of T rows each in one launch (an attention's q,
 * k and v biases), the bits of ms_gpu_add_bias on each. */
int ms_gpu_add_bias_n(struct ms_gpu_ctx *c, const struct ms_gpu_bias *b, int n,
		      int64_t T, struct ms_err *err);

/* For T tokens of n_head heads of head_dim floats (x[t][h][d]), in place:
 * when norm_w is not NULL, first an RMS norm of each head with weight
 * norm_w[head_dim] and eps (ms_gpu_rms_norm's arithmetic), then NEOX RoPE
 * of the first n_rot dims (even, 0..head_dim) at position pos[t] (int32):
 * for i < n_rot/2, theta = (double)pos * (double)freq_scale *
 * pow((double)base, -2.0 * i / n_rot), c = cos(theta), s = sin(theta),
 * a = x[i], b = x[i + n_rot/2] in double; x[i] = (float)(a*c - b*s),
 * x[i + n_rot/2] = (float)(a*s + b*c). */
int ms_gpu_rope_neox(struct ms_gpu_ctx *c, float *x, const int32_t *pos,
		     const float *norm_w, float eps, int64_t n_head,
		     int64_t head_dim, int64_t n_rot, int64_t T, float base,
		     float freq_scale, struct ms_err *err);

/* The same for q (n_head heads, norm q_norm) and k (n_head_kv heads, norm
 * k_norm) of the same tokens in one launch: the bits of two
 * ms_gpu_rope_neox calls. */
int ms_gpu_rope_neox_qk(struct ms_gpu_ctx *c, float *q, const float *q_norm,
			int64_t n_head, float *k, const float *k_norm,
			int64_t n_head_kv, const int32_t *pos, float eps,
			int64_t head_dim, int64_t n_rot, int64_t T, float base,
			float freq_scale, struct ms_err *err);

/* Stores T rows of n floats (src[t][n]) into a KV cache at element offsets
 * at[t] (int64): with f16, cache holds IEEE halves rounded to nearest even
 * (the bits of ms_f32_f16), else floats. cache aligned to its element. */
int ms_gpu_kv_store(struct ms_gpu_ctx *c, const float *src, void *cache,
		    const int64_t *at, int64_t n, int64_t T, bool f16,
		    struct ms_err *err);

/* K and V of the same tokens at the same offsets in one launch: the bits
 * of ms_gpu_kv_store on each. */
int ms_gpu_kv_store_kv(struct ms_gpu_ctx *c, const float *k, void *k_cache,
		       const float *v, void *v_cache, const int64_t *at,
		       int64_t n, int64_t T, bool f16, struct ms_err *err);

/* An attention's q [T][n_head][head_dim], k and v [T][n_head_kv][head_dim]
 * after their products, for ms_gpu_qkv_post. */
struct ms_gpu_qkv {
	float *q, *k, *v;
	const float *bq, *bk, *bv;     /* biases (each may be NULL) */
	const float *q_norm, *k_norm;  /* per-head norms (each may be NULL) */
	int64_t n_head, n_head_kv, head_dim, n_rot;
	const int32_t *pos;            /* [T] */
	float eps, base, freq_scale;
	void *k_cache, *v_cache;       /* K and V stored at at[t] (int64) */
	const int64_t *at;
	bool f16;
};

/* In one launch: the biases added, q and k normed and rotated, k and v
 * stored into the caches: the bits of ms_gpu_add_bias_n,
 * ms_gpu_rope_neox_qk and ms_gpu_kv_store_kv on the same arguments. */
int ms_gpu_qkv_post(struct ms_gpu_ctx *c, const struct ms_gpu_qkv *q,
		    int64_t T, struct ms_err *err);

/* Attention of T query tokens, n_head heads of size D (1..256), grouped:
 * head h reads kv head h / (n_head / n_head_kv) (n_head % n_head_kv == 0).
 * Token t's K row for position p < n_pos[t] (int32, >= 1) starts at
 * k_cache + base[t] (int64) + p * stride + kvh * D elements (stride >=
 * n_head_kv * D; f16 elements when f16, else f32; v_cache the same). Per
 * (t, h): s[p] = (q . k_p in f32) * scale, e[p] = expf(s[p] - max s), the
 * sum of e in double, out[t][h] = sum_p (e[p] / sum) v_p in f32. An online
 * softmax over tiles of positions (any n_pos): ~1e-6 relative from
 * that loop. q and out are [T][n_head][D]. */
int ms_gpu_attention(struct ms_gpu_ctx *c, const float *q,
		     const void *k_cache, const void *v_cache, bool f16,
		     const int64_t *base, const int32_t *n_pos, int64_t stride,
		     int64_t n_head, int64_t n_head_kv, int64_t D, float scale,
		     int64_t T, float *out, struct ms_err *err);

/* ms_gpu_attention, with its output also prepared at out_q (may be NULL;
 * D a multiple of 32) for the fused matvec, as ms_gpu_add_rms_norm's yq:
 * for the output projection. */
int ms_gpu_attention_q(struct ms_gpu_ctx *c, const float *q,
		       const void *k_cache, const void *v_cache, bool f16,
		       const int64_t *base, const int32_t *n_pos, int64_t stride,
		       int64_t n_head, int64_t n_head_kv, int64_t D, float scale,
		       int64_t T, float *out, void *out_q, struct ms_err *err);

/* The MoE output of T tokens of E floats, K experts each: m[i] = sum_{j<K}
 * w[t*K + j] * y[(t*K + j) * E + i] (f32, j in order), then x[t*E + i] +=
 * sh ? m[i] + sh[t*E + i] : m[i] (sh, the shared expert's output, may be
 * NULL). */
int ms_gpu_moe_combine(struct ms_gpu_ctx *c, float *x, const float *y,
		       const float *w, const float *sh, int64_t E, int64_t T,
		       int64_t K, struct ms_err *err);

/* ms_gpu_moe_combine, then ms_gpu_rms_norm of the new x into h with
 * norm_w and eps (the next block's norm), in one launch: the bits of the
 * two calls. h must not overlap x, y, w or sh. hq: as
 * ms_gpu_add_rms_norm's yq. */
int ms_gpu_moe_combine_norm(struct ms_gpu_ctx *c, float *x, const float *y,
			    const float *w, const float *sh, int64_t E,
			    int64_t T, int64_t K, const float *norm_w,
			    float eps, float *h, void *hq, struct ms_err *err);

/* dst[i][.] = src[rows[i]][.] for n rows of E floats (rows int32). */
int ms_gpu_gather_rows(struct ms_gpu_ctx *c, const float *src,
		       const int32_t *rows, int64_t n, int64_t E, float *dst,
		       struct ms_err *err);

/* dst[rows[i]][.] = src[i][.] for n rows of E floats (rows int32). */
int ms_gpu_scatter_rows(struct ms_gpu_ctx *c, const float *src,
			const int32_t *rows, int64_t n, int64_t E, float *dst,
			struct ms_err *err);

/* Top-k routing of T tokens on the device: ms_router_select's selection and
 * weights for each row of logits [T][n_expert] (f32), with the selection
 * bias probs_b [n_expert] (NULL: none), computed as it does (in double,
 * the same gating, the lower id winning a tie, norm and scale), so that a
 * forward pass need not copy the logits back to choose. sel [T][n_used]
 * (int32, best first) and w [T][n_used] (f32) receive the choice. A row
 * with a non-finite logit or bias gets experts 0..n_used-1 with weight 0
 * (valid ids for the kernels that follow) and sets *bad (int32, device
 * memory, never cleared here) to 1: the caller checks it once the stream
 * has passed. n_expert <= 1024. 0, -EINVAL (params, sizes, NULLs), -EIO. */
int ms_gpu_route_topk(struct ms_gpu_ctx *c, const struct ms_router_params *p,
		      const float *logits, const float *probs_b, int64_t T,
		      int32_t *sel, float *w, int32_t *bad, struct ms_err *err);

/* The router's product and its top-k in one launch, for one token (the
 * decode step): logits [n_expert] = W . x, W the router's f32 rows
 * [n_expert][n_embd] on the device, x [n_embd]; each logit a sum in
 * double, in a fixed order, rounded to f32 (ms_router_run's dots, to the
 * last bits of a double); then ms_gpu_route_topk's choice on those
 * logits, the same code and so the same bits (sel, w, bad as there). W
 * is read before the kernel's PDL wait, so it must be a tensor nothing on
 * the device writes (a model's resident router). n_embd a multiple of 4;
 * W and x 16-byte aligned. Uses a counter of the context's workspace:
 * not for two launches at once on one context. 0, -EINVAL, -ENOMEM,
 * -EIO. */
int ms_gpu_route_gemv_topk(struct ms_gpu_ctx *c,
			   const struct ms_router_params *p, const float *w_dev,
			   int64_t n_embd, const float *x,
			   const float *probs_b, float *logits, int32_t *sel,
			   float *w, int32_t *bad, struct ms_err *err);

/* Its logits alone: logits [n_expert] = W . x for one token, the same bits
 * as ms_gpu_route_gemv_topk's (n_expert 1..65535, the same shape and
 * alignment; no counter). For a step that routes on the host, so that its
 * logits are those of a step that routes on the device. 0, -EINVAL,
 * -EIO. */
int ms_gpu_router_logits(struct ms_gpu_ctx *c, const float *w_dev,
			 int64_t n_embd, uint32_t n_expert, const float *x,
			 float *logits, struct ms_err *err);

/* ms_gpu_experts_ffn for one token whose experts the device chose: expert
 * i of the call (i < n) is entry sel[i] (int32, device memory) of tab, a
 * device array of three projection addresses per expert {gate, up, down}
 * (for a fused gate_up tensor: its gate rows, its up rows, down), each
 * aligned as the matvec needs for its type (the caller's guarantee: these
 * addresses are not read on the host). `proto` gives what the experts
 * share (fused, n_embd, n_ff, types; its data is not read). Every expert
 * reads x_dev [n_embd] (already prepared at xq, if not NULL: as
 * ms_gpu_matmul_n takes it); y_dev + i * n_embd receives expert i's output.
 * The fused matvec only (MATVEC_Q8 after ms_gpu_ctx_set_q8, else MATVEC),
 * bit-identical to ms_gpu_experts_ffn on the same experts. With PDL and
 * proto->resident (nothing on the device writes tab or the experts it
 * names) the products load their first weights before they wait for the
 * kernel ahead: down always, gate/up where sel_before says that sel was
 * written by a launch before the last one queued ahead of this call (a
 * shared expert's FFN between the top-k and this; see gpu_internal.cuh's
 * PDL rule) or x is not given prepared. Asynchronous.
 * 0, -EINVAL, -ENOTSUP (a type without a matvec kernel), -ENOMEM, -EIO. */
int ms_gpu_experts_ffn_sel(struct ms_gpu_ctx *c,
			   const struct ms_gpu_expert *proto,
			   const void *const *tab, const int32_t *sel, int n,
			   const float *x_dev, const void *xq, float *y_dev,
			   bool sel_before, struct ms_err *err);

/* CUDA graphs: what the context queues between capture_begin and
 * capture_end (on its stream; nothing may wait for the device meanwhile:
 * such a call fails, as does a workspace that would have to grow, -EAGAIN)
 * is recorded, not run; capture_end turns it into a graph (out NULL:
 * discards it, the way to close a capture after a failure), which
 * graph_launch queues whole, as often as wanted, with the same arguments
 * (device buffers are read as they are when it runs). graph_launch answers
 * -ESTALE once the context's workspace has moved since the capture
 * (capture again). Fewer launches on the host and less time between
 * kernels on the device: what one decode step's ~200 small kernels need. */
struct ms_gpu_graph;
int ms_gpu_capture_begin(struct ms_gpu_ctx *c, struct ms_err *err);
int ms_gpu_capture_end(struct ms_gpu_ctx *c, struct ms_gpu_graph **out,
		       struct ms_err *err);
int ms_gpu_graph_launch(struct ms_gpu_ctx *c, struct ms_gpu_graph *g,
			struct ms_err *err);
void ms_gpu_graph_free(struct ms_gpu_graph *g); /* NULL is fine */
/* The graph's nodes as captured: its kernels, copies and event records
 * (0 for NULL). */
size_t ms_gpu_graph_nodes(const struct ms_gpu_graph *g);

/* Copies that run asynchronously on a context's stream: host must be
 * page-locked (ms_gpu_host_alloc in gpu_tier.h) or registered, and the
 * host must not touch it until the stream has passed the copy. */
int ms_gpu_upload_async(struct ms_gpu_ctx *c, void *dev, const void *host,
			size_t bytes, struct ms_err *err);
int ms_gpu_download_async(struct ms_gpu_ctx *c, void *host, const void *dev,
			  size_t bytes, struct ms_err *err);

/* ------------------------------- end of GPU ------------------------------ */

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_KERNELS_H */
