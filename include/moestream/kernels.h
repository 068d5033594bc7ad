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
