/* ms_gpu_built / ms_gpu_build_info / ms_gpu_list for the emulated device
 * (kernels/gpu.cu's discovery needs a real kernel image). */
#include <string.h>
#include <stdio.h>
#include "moestream/kernels.h"
extern "C" bool ms_gpu_built(void) { return true; }
extern "C" const char *ms_gpu_build_info(void) { return "CPU emulation of CUDA (cuda_emu.h)"; }
extern "C" int ms_gpu_list(struct ms_gpu_info *out, int max, struct ms_err *)
{
	if (max < 1)
		return 0;
	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "emulated GPU");
	snprintf(out->pci_bus_id, sizeof(out->pci_bus_id), "0000:00:00.0");
	out->total_mem = 1ull << 34;
	out->cc_major = 9;
	out->multiprocessors = 8;
	out->kernel_arch = 900;
	return 1;
}
