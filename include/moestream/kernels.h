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
/* Router and expert FFN, CPU (kernels/router.c, kernels/ffn.c).            */

/* llama.cpp's {arch}.expert_gating_func values. */
enum ms_gating {
	MS_GATING_NONE = 0,           /* not set: the arch's default */
	MS_GATING_SOFTMAX = 1,
	MS_GATING_SIGMOID = 2,
	MS_GATING_SOFTMAX_WEIGHT = 3, /* softmax over the selected logits */
};

/* One expert's three projections, as they lie in memory (a cache slot or a
 * mapping of the file): gate/up [n_embd -> n_ff], down [n_ff -> n_embd];
 * fused: gate_up [n_embd -> 2 n_ff] (gate rows first) in data[0] and
 * down in data[1]. Rows are ne0-major, as in GGUF. */
struct ms_expert_view {
	bool fused;
	int64_t n_embd, n_ff;
	uint32_t type[3];
	const void *data[3];
};

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

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_KERNELS_H */
