/*
 * t_gpu - GPU discovery. A build without CUDA must answer -ENOTSUP with
 * "built without CUDA" (and `moestream gpu` exit 3); a CUDA build without a
 * device skips (77); with a device, every device must run the test kernel
 * from this build's fat binary and `moestream gpu` must list it.
 */
#include <errno.h>
#include <string.h>

#include "moestream/kernels.h"
#include "testutil.h"

int main(void)
{
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	char cmd[4200], *out = NULL;
	int n = ms_gpu_list(g, MS_GPU_MAX, &err);

	snprintf(cmd, sizeof(cmd), "%s gpu 2>&1", t_build_path("moestream"));
	if (!ms_gpu_built()) {
		T_CHECK(n == -ENOTSUP, "ms_gpu_list = %d, expected -ENOTSUP", n);
		T_CHECK(strstr(err.msg, "built without CUDA") != NULL,
			"message '%s' does not say 'built without CUDA'", err.msg);
		int rc = t_run(cmd, &out, 4096);
		T_CHECK(rc == 3 && strstr(out, "built without CUDA"),
			"moestream gpu: exit %d, '%s'", rc, out);
		free(out);
		printf("built without CUDA: %s\n", err.msg);
		return t_done();
	}
	printf("%s\n", ms_gpu_build_info());
	if (n == -ENODEV)
		t_skip("no GPU: %s", err.msg);
	T_CHECK(n >= 1, "ms_gpu_list = %d: %s", n, err.msg);
	for (int i = 0; i < n; i++) {
		printf("gpu %d: %s sm_%d%d, kernel image sm_%d\n", i, g[i].name,
		       g[i].cc_major, g[i].cc_minor, g[i].kernel_arch / 10);
		T_CHECK(g[i].kernel_arch > 0, "gpu %d ran no kernel", i);
		T_CHECK(g[i].total_mem > 0, "gpu %d has no memory", i);
	}
	int rc = t_run(cmd, &out, 4096);
	printf("%s", out);
	T_CHECK(rc == 0 && strstr(out, "test kernel ran"), "moestream gpu exit %d",
		rc);
	free(out);
	return t_done();
}
