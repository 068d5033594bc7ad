/*
 * bench_gpu_tier.h - the GPU tier's benchmark (issue 9): how fast experts
 * come from moestreamd's shared cache into VRAM, and whether those copies
 * hide behind the compute.
 *
 * Two figures, each against its own baseline measured in the same run:
 *  - host->device GB/s of cudaMemcpyAsync from the client's read-only
 *    mapping of the daemon's arena as the tier registers it, over the same
 *    copies from a cudaHostAlloc buffer (the best a host buffer does):
 *    target >= 0.9. The same copies from an unregistered mapping of the
 *    same arena (what a pageable source gives) are shown for context.
 *  - overlap: the wall time of one MoE layer when its experts' copies run
 *    while the previous layer computes (ms_gpu_tier_prefetch, then the
 *    layer's FFN, then a wait for the result as a router would), over
 *    max(copy alone, compute alone): target <= 1.1. Every layer misses
 *    (the VRAM budget holds two layers, and the experts alternate), and
 *    every expert is already in the daemon's RAM, so the copy is PCIe, not
 *    NVMe. Per token count (default 1: decode, fused matvec; 512: prefill,
 *    cuBLAS).
 *
 * It needs a real daemon: by default it writes a model with GLM-4.7's
 * expert shape (n_embd 5120, n_ff 1536, Q2_K/Q2_K/Q3_K: 8,540,160 bytes an
 * expert; 4 MoE layers of 16 experts, 0.8 GB, about a second to write) in a
 * fresh folder and starts a private moestreamd on it (bench_daemon_start:
 * the moestreamd next to the program, or $MOESTREAMD) with a cache that
 * holds every expert used; --model uses a model file instead, --socket a
 * running daemon (then its model's first MoE layers with at least
 * 2 x used experts are used, and its cache should hold them: the report
 * counts the daemon's misses during the run).
 *
 * Why a daemon rather than a memfd of its own: the figure that matters is
 * the one of the mapping a client really gets (SCM_RIGHTS, read-only,
 * hugetlb or not as the daemon made it) through the tier's own code
 * (registration, asynchronous acquire, copy stream, events, host
 * functions). Written once, the model costs about a second.
 */
#ifndef MS_BENCH_GPU_TIER_H
#define MS_BENCH_GPU_TIER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "moestream/util.h"

struct cJSON;

#define BENCH_GPU_TIER_MAX_TOKENS 8

struct bench_gpu_tier_opts {
	int device;
	const char *socket;   /* a running moestreamd; NULL: a private one */
	const char *model;    /* the private daemon's model; NULL: write one */
	const char *dir;      /* where to write it and run the daemon; NULL:
				 a fresh folder under $TMPDIR, removed */
	int layers;           /* MoE layers used (0: 4) */
	int experts;          /* experts per layer written (0: 16; >= 2 used) */
	int used;             /* experts per layer computed (0: 8, GLM-4.7) */
	int64_t n_embd, n_ff; /* shape written (0: 5120, 1536) */
	const char *types;    /* written "g,u,d" (NULL: "q2_K,q2_K,q3_K") */
	int tokens[BENCH_GPU_TIER_MAX_TOKENS]; /* 0-terminated; {0}: 1, 512 */
	double seconds;       /* per timed loop (0: 1) */
	int reps;             /* host->device repetitions (0: 20) */
	bool quiet;           /* no progress on stderr */
};

struct bench_gpu_tier_overlap {
	int tokens;
	char path[16];        /* the FFN path AUTO took: "matvec", "cublas" */
	int layers;           /* layers timed in the copy loop */
	double copy_ms;       /* per layer: acquire (all misses) + wait */
	double compute_ms;    /* per layer: FFN of resident experts + wait */
	double both_ms;       /* per layer: prefetched copies under compute */
	double ratio;         /* both / max(copy, compute); target <= 1.1 */
	double copy_stream_ms;/* per layer: the copy stream's own time (events) */
	double misses_per_layer; /* in the copy loop: should be `used` */
	double prefetch_hit_rate; /* in the overlap loop: should be 1 */
};

struct bench_gpu_tier_report {
	char device[256];
	char host_mode[256];  /* the tier's: registered read-only, or why not */
	bool registered;
	char model[512];
	char daemon[160];     /* "private moestreamd (pid N)" or the socket */
	int64_t n_embd, n_ff;
	uint64_t expert_bytes;
	int used, layers;
	uint64_t vram_bytes;  /* the tier's budget: two layers */
	/* host -> device, the same `used` experts (3 copies each) */
	uint64_t h2d_bytes;
	int h2d_pieces, reps;
	double map_gbps, map_median_gbps;       /* registered mapping */
	double host_gbps, host_median_gbps;     /* cudaHostAlloc */
	double pageable_gbps, pageable_median_gbps; /* unregistered mapping */
	double ratio, ratio_median;             /* map / host; target >= 0.9 */
	int n_overlap;
	struct bench_gpu_tier_overlap overlap[BENCH_GPU_TIER_MAX_TOKENS];
	double daemon_misses; /* the daemon's cache misses while timing */
};

/* Runs the benchmark. 0, or a negative errno with the message in err:
 * -ENOTSUP built without CUDA, -ENODEV no usable GPU (exit 3 for a
 * command), anything else a failure. */
int bench_gpu_tier_run(const struct bench_gpu_tier_opts *o,
		       struct bench_gpu_tier_report *r, struct ms_err *err);

/* The table. */
void bench_gpu_tier_print(const struct bench_gpu_tier_report *r, FILE *f);

/* Adds the report to `o` as an object named "gpu_tier". */
void bench_gpu_tier_json(const struct bench_gpu_tier_report *r,
			 struct cJSON *o);

/* As a command: `NAME [--json] [--json-out FILE] [--device N]
 * [--socket PATH | --model FILE] [--dir DIR] [--layers N] [--experts N]
 * [--used N] [--shape E,F] [--types G,U,D] [--tokens LIST] [--time S]
 * [--reps N] [--quiet]`; argv[0] is the command's name. Exit 0, 1
 * (failed), 2 (usage), 3 (no GPU, or built without CUDA: says so). */
int bench_gpu_tier_main(int argc, char **argv);

#endif
