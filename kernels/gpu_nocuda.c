/*
 * gpu_nocuda.c - the GPU entry points of a build without CUDA: each answers
 * -ENOTSUP with "built without CUDA", so that no GPU feature degrades
 * silently into something else.
 */
#include <errno.h>

#include "moestream/kernels.h"

bool ms_gpu_built(void)
{
	return false;
}

const char *ms_gpu_build_info(void)
{
	return "built without CUDA (no nvcc at build time, or NO_CUDA=1; install "
	       "the CUDA toolkit or set CUDA_HOME, then rebuild)";
}

int ms_gpu_list(struct ms_gpu_info *out, int max, struct ms_err *err)
{
	(void)out;
	(void)max;
	return ms_err_set(err, -ENOTSUP, "%s", ms_gpu_build_info());
}
