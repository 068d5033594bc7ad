/*
 * gpu.cu - device discovery for CUDA builds. Compiled by nvcc for sm_80,
 * sm_86, sm_89, sm_90 and sm_120 where nvcc exists; kernels/gpu_nocuda.c
 * stands in otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "moestream/kernels.h"

/* One thread writes the device's compute capability back: proves the fat
 * binary holds an image this device can run ("no kernel image is available"
 * is the failure a missing -gencode gives). */
__global__ void ms_probe_kernel(int *out)
{
#ifdef __CUDA_ARCH__
	*out = __CUDA_ARCH__;
#endif
}

static int probe_device(int dev, int *arch, struct ms_err *err)
{
	int *d = NULL;
	cudaError_t ce;
	if ((ce = cudaSetDevice(dev)) != cudaSuccess ||
	    (ce = cudaMalloc(&d, sizeof(int))) != cudaSuccess)
		return ms_err_set(err, -ENODEV, "gpu %d: %s", dev,
				  cudaGetErrorString(ce));
	ms_probe_kernel<<<1, 1>>>(d);
	if ((ce = cudaGetLastError()) == cudaSuccess)
		ce = cudaMemcpy(arch, d, sizeof(int), cudaMemcpyDeviceToHost);
	cudaFree(d);
	if (ce != cudaSuccess)
		return ms_err_set(err, -ENODEV,
				  "gpu %d: a test kernel does not run: %s (this "
				  "build has sm_80, 86, 89, 90, 120)",
				  dev, cudaGetErrorString(ce));
	return 0;
}

extern "C" bool ms_gpu_built(void)
{
	return true;
}

extern "C" const char *ms_gpu_build_info(void)
{
	static char buf[128];
	int rt = 0, maj = 0, min = 0, pat = 0;
	cudaRuntimeGetVersion(&rt);
	cublasGetProperty(MAJOR_VERSION, &maj);
	cublasGetProperty(MINOR_VERSION, &min);
	cublasGetProperty(PATCH_LEVEL, &pat);
	snprintf(buf, sizeof(buf), "CUDA runtime %d.%d, cuBLAS %d.%d.%d",
		 rt / 1000, (rt % 1000) / 10, maj, min, pat);
	return buf;
}

extern "C" int ms_gpu_list(struct ms_gpu_info *out, int max,
			   struct ms_err *err)
{
	int n;
	int rc = msg_find_device(0, "", &n, err); /* device 0: any at all */
	if (rc)
		return rc;
	cudaError_t ce;
	if (n > max)
		n = max;
	for (int i = 0; i < n; i++) {
		cudaDeviceProp p;
		struct ms_gpu_info *g = &out[i];
		memset(g, 0, sizeof(*g));
		if ((ce = cudaGetDeviceProperties(&p, i)) != cudaSuccess)
			return ms_err_set(err, -ENODEV,
					  "cudaGetDeviceProperties(%d): %s", i,
					  cudaGetErrorString(ce));
		g->device = i;
		snprintf(g->name, sizeof(g->name), "%s", p.name);
		cudaDeviceGetPCIBusId(g->pci_bus_id, sizeof(g->pci_bus_id), i);
		g->total_mem = p.totalGlobalMem;
		g->cc_major = p.major;
		g->cc_minor = p.minor;
		g->multiprocessors = p.multiProcessorCount;
		int rc = probe_device(i, &g->kernel_arch, err);
		if (rc)
			return rc;
	}
	return n;
}
