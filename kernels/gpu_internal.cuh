/*
 * gpu_internal.cuh - what the kernels/gpu_*.cu files share on the host side:
 * launchers of one file called by another, and the CUDA error -> errno rule.
 * Not a contract between rooms: kernels.h is.
 */
#ifndef MS_KERNELS_GPU_INTERNAL_CUH
#define MS_KERNELS_GPU_INTERNAL_CUH

#include <errno.h>
#include <stdint.h>

#include <utility>

#include <cuda_runtime.h>

#include "moestream/kernels.h"
#include "moestream/model.h"

/* -ENOMEM for an allocation failure, -ENODEV when there is no usable device
 * or driver, -EIO for everything else (a failed launch, a fault). */
static inline int msg_cuda_errno(cudaError_t ce)
{
	switch (ce) {
	case cudaSuccess:
		return 0;
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorInvalidDevice:
	case cudaErrorNoKernelImageForDevice:
	case cudaErrorDevicesUnavailable:
		return -ENODEV;
	default:
		return -EIO;
	}
}

/* "WHO: WHAT: <CUDA's description> (<its name>)", with msg_cuda_errno's
 * errno. */
static inline int msg_cuda_fail(struct ms_err *err, const char *who,
				cudaError_t ce, const char *what)
{
	return ms_err_set(err, msg_cuda_errno(ce), "%s: %s: %s (%s)", who, what,
			  cudaGetErrorString(ce), cudaGetErrorName(ce));
}

/* In a function with a `struct ms_err *err`: returns msg_cuda_fail's answer
 * when `call` fails. */
#define MSG_CUDA_TRY(who, call, what)                                          \
	do {                                                                   \
		cudaError_t ce_ = (call);                                      \
		if (ce_ != cudaSuccess)                                        \
			return msg_cuda_fail(err, who, ce_, what);             \
	} while (0)

/* Whether the runtime sees devices, and `device` among them: 0 and *n, or
 * -ENODEV (no usable runtime, driver or device) / -EINVAL (no such device)
 * with one line that starts with `prefix` ("" or "gpu tier: "). */
static inline int msg_find_device(int device, const char *prefix, int *n,
				  struct ms_err *err)
{
	*n = 0;
	cudaError_t ce = cudaGetDeviceCount(n);
	if (ce != cudaSuccess) {
		cudaGetLastError(); /* do not leave it for the next check */
		return ms_err_set(err, -ENODEV, "%sno usable CUDA device: %s (%s)",
				  prefix, cudaGetErrorString(ce), cudaGetErrorName(ce));
	}
	if (*n == 0)
		return ms_err_set(err, -ENODEV, "%sno CUDA device present", prefix);
	if (device < 0 || device >= *n)
		return ms_err_set(err, -EINVAL,
				  "%sgpu %d: no such device (there are %d)", prefix,
				  device, *n);
	return 0;
}

/* ---- programmatic dependent launch (PDL) ----------------------------------
 *
 * On sm_90 and later a kernel launched with programmatic stream
 * serialization may start before the kernel ahead of it on the stream
 * (or in the graph) has ended: its CTAs are scheduled once every CTA of
 * that kernel has triggered (each of ours triggers right after its own
 * wait), so the launch's latency, and the matvec's first weight loads,
 * overlap the end of the kernel before. What keeps it correct is one
 * rule, kept by every kernel that msg_launch may launch with pdl: each
 * thread calls msg_grid_wait() before it reads anything a kernel before
 * it wrote, and before it writes anything. The wait returns once the
 * kernel before has completed and its writes are visible (that kernel
 * waited for the one before it in turn), and at once when the launch
 * was not PDL. What is read before it: weights that nothing on the
 * device writes (the matvec's first chunk, msg_mv_call.early; the
 * router's rows, gpu_ops.cu's route_gemv_topk_kernel), and what a launch
 * two or more ahead wrote (a table matvec's sel, msg_mv_call.early): the
 * launch just ahead lets this one start only after its own wait (a PDL
 * launch of ours triggers right after it) or, a plain launch, after it
 * started, once the launch ahead of it had ended; either way everything
 * before the launch just ahead is then complete and visible (in L2: read
 * it with __ldcg). The
 * CPU emulator of CUDA starts one CTA of each PDL launch before the
 * kernel ahead of it runs at all, and checks that every thread waited.
 */
__device__ __forceinline__ void msg_grid_wait()
{
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || !defined(__CUDACC__)
	cudaGridDependencySynchronize();
	cudaTriggerProgrammaticLaunchCompletion();
#endif
}

/* Launches k<<<g, b, smem, s>>>(args), with programmatic stream
 * serialization where pdl (ms_gpu_ctx_pdl: the device has it and it is
 * not turned off). The launch's error, or the runtime's last one. */
template <class... P, class... A>
static inline cudaError_t msg_launch(void (*k)(P...), dim3 g, dim3 b,
				     size_t smem, cudaStream_t s, bool pdl,
				     A &&...args)
{
	cudaLaunchAttribute at[1] = {};
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	/* in order: gridDim, blockDim (names the CPU emulator's kernels take
	 * as theirs), dynamicSmemBytes, stream, attrs, numAttrs */
	cudaLaunchConfig_t cfg = { g, b, smem, s, at, pdl ? 1u : 0u };
	const cudaError_t ce = cudaLaunchKernelEx(&cfg, k, std::forward<A>(args)...);
	const cudaError_t le = cudaGetLastError();
	return ce != cudaSuccess ? ce : le;
}

/* ---- gpu_dequant.cu ----------------------------------------------------- */

/* ms_gpu_dequant without the checks (the caller made them). */
cudaError_t msg_dequant_launch(uint32_t type, const void *src, void *dst,
			       int64_t n, bool f16, cudaStream_t stream);

/* n floats -> n halves (round to nearest even). */
cudaError_t msg_f32_to_f16_launch(const float *src, void *dst, int64_t n,
				  cudaStream_t stream);

/* ---- gpu_matvec.cu ------------------------------------------------------ */

/* One prepared block of 32 input elements of one token: the elements as
 * 22-bit integers split into three int8 digit planes, a power-of-two scale
 * and the scaled sums of each half (see gpu_matvec.cu); with q8, one int8
 * plane (ggml's q8_1 rounding: d = amax / 127), d and the scaled sums. */
#define MSG_XBLK_BYTES 112
#define MSG_XBLK8_BYTES 48

/* Experts per matvec launch (the kernel takes their pointers by value). */
#define MSG_MV_MAX_EXPERTS 32

/* Largest batch the fused matvec takes. */
#define MSG_MV_MAX_TOKENS MS_GPU_MATVEC_MAX_TOKENS

/* Most split-K ranges a matvec launch is cut into. */
#define MSG_MV_MAX_SPLIT 16

/* True for the types with a fused matvec kernel. */
bool msg_matvec_type(uint32_t type);

/* Alignment in bytes the matvec needs of a projection's base pointer. */
int msg_matvec_align(uint32_t type);

/* Bytes of one prepared block: MSG_XBLK8_BYTES with q8, else
 * MSG_XBLK_BYTES. */
size_t msg_xblk_bytes(bool q8);

/* Whether the context's fused matvec takes 8-bit inputs (what a prepared
 * input must be). */
bool msg_ctx_q8(const struct ms_gpu_ctx *c);
/* The router's ticket counter (ms_gpu_route_gemv_topk) into *cnt: zero
 * between launches, the context's own. 0, or ws_reserve's error. */
int msg_ctx_route_cnt(struct ms_gpu_ctx *c, unsigned **cnt,
		      struct ms_err *err);

/* Prepares the input: for each of n_sets sets (set i at in + i * in_stride
 * floats), B tokens of n floats (n % 32 == 0) -> n_sets * B * n / 32
 * blocks at xq, [set][token][block] (msg_xblk_bytes(q8) each). With in2 !=
 * NULL the input is silu(in) * in2, computed in double and rounded to f32,
 * as the C FFN computes h. */
cudaError_t msg_prep_launch(const float *in, const float *in2,
			    int64_t in_stride, void *xq, int n, int B,
			    int n_sets, bool q8, cudaStream_t stream, bool pdl);

/* One fused matvec over up to MSG_MV_MAX_EXPERTS experts of one type:
 *   pair:  out[e][b][r] = silu(A_e[r] . x_e[b]) * (B_e[r] . x_e[b])
 *   plain: out[e][b][r] = A_e[r] . x_e[b]
 * A_e = wa[e], B_e = wb[e]: n_rows rows of rs bytes, n_in elements each;
 * x_e = the prepared blocks at xq + e * xq_stride blocks (0: shared),
 * prepared with the same q8. A split-K launch needs
 * msg_matvec_part_bytes(c) of device workspace at part (not overlapping
 * anything else of the call). */
struct msg_mv_call {
	uint32_t type;
	bool pair;
	bool q8; /* xq holds 8-bit blocks */
	int n_e;
	const void *const *wa, *const *wb;
	/* or, with tab != NULL (device memory): expert e's A is tab[sel[e] *
	 * 3 + tab_j], a pair's B the entry after it (wa, wb unused) */
	const void *const *tab;
	const int32_t *sel;
	int tab_j;
	const void *xq;
	int64_t xq_stride; /* in prepared blocks */
	float *out;
	int64_t out_stride; /* in floats */
	int n_rows, n_in;
	int64_t rs;
	int B;   /* 1..MSG_MV_MAX_TOKENS */
	int sms; /* multiprocessors, to size the tiles and the split */
	int split; /* 0: the rule (gpu_matvec.cu); 1: never; N: N ranges */
	int chunk; /* weight bytes per buffer; 0: MS_GPU_CHUNK_DEFAULT */
	void *part; /* split-K partials */
	size_t part_bytes;
	/* split-K: MSG_MV_CNT_MAX counters, zero before the launch and after
	 * it (the last CTA of each tile sets its counter back), not shared
	 * with a launch that may run at the same time */
	unsigned *cnt;
	/* not NULL: the output also prepared there (q8's form) as the next
	 * product's input, out_q_stride blocks per expert; only where
	 * msg_matvec_out_prep says the launch can */
	void *out_q;
	int64_t out_q_stride;
	/* launched with programmatic stream serialization (msg_launch) */
	bool pdl;
	/* with pdl: wa's and wb's bytes are written by nothing on the
	 * device (a model's resident tensors; with tab, the table and the
	 * experts it names, and sel was written by a launch before the one
	 * just ahead of this: that one starts only once its own wait has
	 * seen the writer complete, and this one only once that one has
	 * waited), so the first chunk is loaded before the kernel's wait,
	 * under the end of the kernel before */
	bool early;
};

/* Whether the launch can write its output prepared (out_q): its tiles are
 * of 32 rows, n_rows a multiple of 32. */
bool msg_matvec_out_prep(const struct msg_mv_call *c);

/* Split-K counters a launch may use: one per tile of rows and expert (the
 * rule splits only launches of under a wave of CTAs). */
#define MSG_MV_CNT_MAX 16384

/* The workspace msg_matvec_launch needs at c->part for this call: 0 when
 * it does not split. */
size_t msg_matvec_part_bytes(const struct msg_mv_call *c);

cudaError_t msg_matvec_launch(const struct msg_mv_call *c,
			      cudaStream_t stream);

#endif /* MS_KERNELS_GPU_INTERNAL_CUH */
