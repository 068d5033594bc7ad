/*
 * gpu.c - `moestream gpu`: the CUDA devices this build can use.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "moestream/kernels.h"
#include "tools.h"

int cmd_gpu(int argc, char **argv)
{
	static const struct option opts[] = { { "help", no_argument, 0, 'h' },
					      { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			printf("usage: moestream gpu\n\nLists the CUDA devices "
			       "this build can use (name, memory, compute\n"
			       "capability, PCI bus id). Exits 3 when built "
			       "without CUDA or when no device is present.\n");
			return 0;
		}
		return EXIT_USAGE;
	}
	if (optind < argc) {
		tool_error("gpu", "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	int n = ms_gpu_list(g, MS_GPU_MAX, &err);
	if (n < 0) {
		tool_error("gpu", "%s", err.msg);
		return EXIT_UNAVAILABLE;
	}
	printf("%s\n", ms_gpu_build_info());
	for (int i = 0; i < n; i++) {
		char b[32];
		printf("gpu %d: %s, %s, sm_%d%d, %d SMs, PCI %s, test kernel ran "
		       "(image sm_%d)\n",
		       g[i].device, g[i].name,
		       fmt_bytes(g[i].total_mem, b, sizeof(b)), g[i].cc_major,
		       g[i].cc_minor, g[i].multiprocessors, g[i].pci_bus_id,
		       g[i].kernel_arch / 10);
	}
	return 0;
}
