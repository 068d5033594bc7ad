/*
 * bench_gpu.h - the GPU kernel benchmark: per quant type, the GB/s of
 * quantized weights the fused decode matvec reads (B = 1, GLM-4.7's expert
 * shape; the exact and the 8-bit-activation kernel), against the device's own device-to-device copy bandwidth measured
 * in the same run. As a command (`moestream bench gpu`, and
 * `t_gpu_kernels --bench` for tools/gpu-check.sh) and as functions that
 * `moestream bench kernels` can call for its GPU column.
 */
#ifndef MS_BENCH_GPU_H
#define MS_BENCH_GPU_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "moestream/util.h"

struct cJSON;

/* The configurations each type is timed in, all on GLM-4.7's expert shape
 * (n_embd 5120, n_ff 1536, the type for gate, up and down), experts cycled
 * over a ring several times the L2 so that every call reads from DRAM. */
enum bench_gpu_conf {
	BENCH_GPU_E1 = 0,  /* B = 1, 1 expert per call */
	BENCH_GPU_E8 = 1,  /* B = 1, 8 experts per call (one decode step) */
	BENCH_GPU_E32 = 2, /* B = 1, 32 experts per call: the GPU busy */
	BENCH_GPU_B8 = 3,  /* B = 8, 32 experts per call */
	BENCH_GPU_NCONF = 4,
};

#define BENCH_GPU_MAX_TYPES 32
#define BENCH_GPU_MAX_CHUNKS 8

struct bench_gpu_row {
	uint32_t type;
	uint64_t expert_bytes;		 /* gate + up + down */
	int ring_experts;		 /* distinct experts cycled over */
	bool ran;			 /* false: no matvec kernel */
	double gbps[BENCH_GPU_NCONF];	 /* best window, weight bytes / s */
	double median[BENCH_GPU_NCONF];	 /* median window */
	double us_call[BENCH_GPU_NCONF]; /* best window, per call */
	/* the same for the 8-bit-activation kernel (MATVEC_Q8); the three
	 * above are the exact kernel's (MATVEC) */
	double q8_gbps[BENCH_GPU_NCONF];
	double q8_median[BENCH_GPU_NCONF];
	double q8_us_call[BENCH_GPU_NCONF];
	/* --chunks: the 8-bit kernel at B = 1, 32 experts, with each of the
	 * report's chunk sizes (ms_gpu_ctx_set_chunk); best window */
	double chunk_gbps[BENCH_GPU_MAX_CHUNKS];
	/* --calls: those calls' wall time, ms (one sync after them all) */
	double calls_ms;
};

struct bench_gpu_report {
	char device[256];
	int sms;
	int64_t n_embd, n_ff;  /* the expert shape */
	uint64_t ring_bytes;   /* experts cycled over */
	bool pdl;              /* launches with PDL (ms_gpu_ctx_set_pdl) */
	double copy_gbps, copy_median_gbps; /* read + write, D2D memcpy */
	uint64_t copy_bytes;
	int n_chunks; /* --chunks: the sizes swept, bytes */
	int chunks[BENCH_GPU_MAX_CHUNKS];
	/* --calls N: nothing timed; per type, N calls of the figure held to
	 * the target (8-bit, B = 1, 32 experts) and no others, for a
	 * profiler to look at those launches alone */
	int calls;
	int n_rows;
	struct bench_gpu_row rows[BENCH_GPU_MAX_TYPES];
	/* the prefill path once: cuBLAS at B = 512 on one expert */
	uint32_t prefill_type;
	int prefill_tokens;
	double prefill_ms, prefill_tflops; /* 0: not run */
};

/* Runs the benchmark on `device` for the given types (types without a
 * matvec kernel get a row with ran = false), spending about `seconds` per
 * type; ring_bytes 0 = 1 GiB (at least 2 x 32 experts). 0, or a negative
 * errno with the message in err (-ENOTSUP built without CUDA, -ENODEV no
 * device). */
int bench_gpu_run(const uint32_t *types, int n_types, double seconds,
		  int device, uint64_t ring_bytes, bool prefill,
		  struct bench_gpu_report *r, struct ms_err *err);

/* The table, as `moestream bench gpu` prints it. */
void bench_gpu_print(const struct bench_gpu_report *r, FILE *f);

/* Adds the report to `o` as an object named "gpu". */
void bench_gpu_json(const struct bench_gpu_report *r, struct cJSON *o);

/* `moestream bench gpu [--json] [--types LIST] [--time S] [--device N]
 * [--mem SIZE] [--shape E,F] [--chunks LIST] [--calls N] [--no-prefill]`:
 * exit 0, 1 (failed), 2 (usage), 3 (no GPU or built without CUDA).
 * argv[0] is the command's name. */
int bench_gpu_main(int argc, char **argv);

#endif
