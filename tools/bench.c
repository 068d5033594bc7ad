/*
 * bench.c - `moestream bench kernels [--json]`: how close the CPU expert FFN
 * comes to the memory bandwidth of the machine it runs on, and, where a GPU
 * is present, the GPU's fused matvec to the GPU's. (`moestream bench
 * io|rpc|e2e|gpu|gpu-tier` live in bench_io.c, bench_rpc.c, bench_e2e.c,
 * bench_gpu.c and bench_gpu_tier.c; this file only dispatches to them.)
 *
 * Decode (B = 1) on the CPU is a stream over the expert's quantised bytes:
 * each byte is read once and a few multiply-adds are done per weight. The
 * best it can do is the rate at which memory delivers bytes, so the figure
 * reported is a ratio: GB/s of quantised weights consumed by the FFN over the
 * read bandwidth measured in the same run, on the same threads, over a buffer
 * several times the last-level cache. Absolute times vary from box to box;
 * the ratio says how much of the box the kernel uses.
 *
 * The expert has GLM-4.7's shape (n_embd 5120, n_ff 1536) and the type under
 * test for all three projections. Enough copies of it to exceed 4x the LLC
 * are cycled through, so every call reads from DRAM, as a cold expert that
 * has just arrived from NVMe would be. Weights are random but valid blocks
 * (small finite scales, as `mkmodel` writes them), so no denormal or NaN
 * arithmetic skews the timing.
 *
 * Each figure is the best over windows of tens of milliseconds: passes
 * over the buffer (memory), runs of calls of at least 25 ms (FFN), both
 * sides alike. On a machine that other work shares, the best is what the
 * hardware does and the median is what the neighbours left (per-call
 * medians are in the JSON). Every type is measured between two bandwidth
 * measurements, so a ratio compares figures taken at the same time.
 *
 * The GPU column is bench_gpu_run's (tools/bench_gpu.c, `moestream bench
 * gpu` in full): the same expert shape and types, B = 1, 32 experts per call
 * (the GPU kept busy: one expert per call measures launch latency, not the
 * kernel), experts cycled over 1 GiB of device memory, against the device's
 * own device-to-device copy measured in the same run. The two ratios are to
 * different memories, each the limit of its own processor.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench_e2e.h"
#include "bench_gpu.h"
#include "bench_gpu_tier.h"
#include "bench_io.h"
#include "bench_rpc.h"
#include "moestream/kernels.h"
#include "tools.h"

#define CMD "bench"
#define N_EMBD 5120
#define N_FF 1536
#define MAX_THREADS 512
#define WINDOW_S 0.025 /* seconds of FFN calls per measurement */

static const char usage_line[] =
	"usage: moestream bench kernels [--json] [--threads N] [--types LIST] "
	"[--time S] [--mem SIZE] [--no-gpu]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Measures, per quant type, the GB/s of quantised weights the CPU "
		"expert FFN\nreads at B = 1 (one decode token) on an expert of "
		"GLM-4.7's shape (n_embd 5120,\nn_ff 1536), on the scalar "
		"reference path and the AVX2 path, and the memory\nread "
		"bandwidth of this machine in the same run (and a memcpy's, for "
		"scale). The\nfigure is the ratio: 1.0 would be an FFN as fast as "
		"reading its weights.\nWhere a GPU is present, a GPU column: its "
		"fused matvec (B = 1, 32 experts per\ncall) against its own "
		"device-to-device copy bandwidth, as `moestream bench gpu`\n"
		"measures it (that command has more).\n"
		"For the K-quants, the 8-bit path `run` and `serve` compute with "
		"(activations\nrounded as llama.cpp rounds them): ns per block of "
		"an expert's gate on one\nthread for one input and for four at "
		"once (four sequences' decode step).\n"
		"\n"
		"  --json          the results as JSON\n"
		"  -t, --threads N threads for the FFN and the bandwidth loops "
		"(default 0: all\n"
		"                  online CPUs)\n"
		"  --types LIST    comma-separated types (default: every type the "
		"FFN has):\n"
		"                  q2_K,q3_K,q4_K,q5_K,q6_K,q8_0,q4_0,q4_1,q5_0,"
		"q5_1,iq4_nl,\n"
		"                  iq4_xs,mxfp4,f16,bf16,f32\n"
		"  --time S        seconds per measurement (default 0.5)\n"
		"  --mem SIZE      bytes streamed over, for the bandwidth loop and "
		"the expert\n"
		"                  copies (default 4x the LLC, at least 256M; K/M/G "
		"suffixes);\n"
		"                  smaller than the LLC measures caches, not "
		"memory\n"
		"  --no-gpu        no GPU column, even where a GPU is present\n"
		"  -h, --help      this text\n"
		"\n"
		"example:\n"
		"  moestream bench kernels --types q2_K,q3_K,q4_K,q6_K,q8_0\n"
		"\n"
		"exit: 0 ok; 1 out of memory or the GPU benchmark failed; 2 bad "
		"usage\n",
		usage_line);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Last-level cache size in bytes: sysfs's highest cache level on cpu0
 * (sysconf's answer is wrong on some VMs), else sysconf, else 32 MiB. */
static uint64_t llc_bytes(void)
{
	uint64_t best = 0;
	int best_level = 0;
	for (int i = 0; i < 16; i++) {
		char p[128], buf[64];
		int level = 0;
		unsigned long long v = 0;
		char unit = 0;
		snprintf(p, sizeof(p),
			 "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
		FILE *f = fopen(p, "r");
		if (!f)
			break;
		if (fgets(buf, sizeof(buf), f))
			level = atoi(buf);
		fclose(f);
		snprintf(p, sizeof(p),
			 "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
		f = fopen(p, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f) &&
		    sscanf(buf, "%llu%c", &v, &unit) >= 1) {
			uint64_t bytes = v << (unit == 'K'   ? 10
					       : unit == 'M' ? 20
							     : 0);
			if (level > best_level ||
			    (level == best_level && bytes > best)) {
				best_level = level;
				best = bytes;
			}
		}
		fclose(f);
	}
	if (best)
		return best;
	long v = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
	v = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
	return v > 0 ? (uint64_t)v : 32ull << 20;
}

/* ---- memory bandwidth ------------------------------------------------------------ */

struct bw_job {
	uint8_t *buf;
	size_t bytes;
	int nth;
	bool copy;
	uint64_t sink[MAX_THREADS];
};

struct bw_arg {
	struct bw_job *job;
	int ith;
};

static void *bw_worker(void *p)
{
	struct bw_arg *a = p;
	struct bw_job *j = a->job;
	/* Each thread its own contiguous part, in whole 4 KiB pages. */
	size_t half = j->copy ? j->bytes / 2 : j->bytes;
	size_t pages = half / 4096;
	size_t p0 = pages * (size_t)a->ith / (size_t)j->nth;
	size_t p1 = pages * (size_t)(a->ith + 1) / (size_t)j->nth;
	if (j->copy) {
		memcpy(j->buf + half + p0 * 4096, j->buf + p0 * 4096,
		       (p1 - p0) * 4096);
		j->sink[a->ith] = j->buf[half + p0 * 4096];
		return NULL;
	}
	/* Four sequential streams per thread, read side by side: one stream
	 * per core leaves bandwidth unused on many CPUs (the FFN itself reads
	 * two or three at a time: gate, up, and later down). */
	size_t q = (p1 - p0) / 4 * 4096 / 8; /* words per stream */
	const uint64_t *w0 = (const uint64_t *)(j->buf + p0 * 4096);
	const uint64_t *w1 = w0 + q, *w2 = w1 + q, *w3 = w2 + q;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i < q; i += 2) {
		s0 += w0[i] + w0[i + 1];
		s1 += w1[i] + w1[i + 1];
		s2 += w2[i] + w2[i + 1];
		s3 += w3[i] + w3[i + 1];
	}
	j->sink[a->ith] = s0 ^ s1 ^ s2 ^ s3;
	return NULL;
}

/* Bytes a read pass covers: each thread's whole pages, in 4 streams. */
static size_t read_bytes(size_t bytes, int nth)
{
	size_t pages = bytes / 4096, sum = 0;
	for (int i = 0; i < nth; i++) {
		size_t p0 = pages * (size_t)i / (size_t)nth;
		size_t p1 = pages * (size_t)(i + 1) / (size_t)nth;
		sum += (p1 - p0) / 4 * 4 * 4096;
	}
	return sum;
}

/* One pass over the buffer on nth threads: seconds. */
static double bw_pass(struct bw_job *j)
{
	pthread_t th[MAX_THREADS];
	struct bw_arg args[MAX_THREADS];
	bool ok[MAX_THREADS];
	double t0 = now();
	for (int i = 1; i < j->nth; i++) {
		args[i] = (struct bw_arg){ j, i };
		ok[i] = pthread_create(&th[i], NULL, bw_worker, &args[i]) == 0;
	}
	args[0] = (struct bw_arg){ j, 0 };
	bw_worker(&args[0]);
	for (int i = 1; i < j->nth; i++) {
		if (ok[i])
			pthread_join(th[i], NULL);
		else
			bw_worker(&args[i]);
	}
	return now() - t0;
}

/* Best GB/s of passes over `seconds` (the median into *med when not NULL):
 * bytes read (and, for copy, bytes read + written). */
static double bandwidth(uint8_t *buf, size_t bytes, int nth, bool copy,
			double seconds, double *med)
{
	struct bw_job j = {
		.buf = buf, .bytes = bytes, .nth = nth, .copy = copy
	};
	double v[256];
	int n = 0;
	double t_end = now() + seconds;
	bw_pass(&j); /* warm-up: page faults, frequency */
	while (n < 256 && (n < 5 || now() < t_end)) {
		double t = bw_pass(&j);
		size_t moved = copy ? (bytes / 2 / 4096) * 4096 * 2
				    : read_bytes(bytes, nth);
		v[n++] = (double)moved / t / 1e9;
	}
	double m = tool_median(v, (size_t)n); /* sorts v */
	if (med)
		*med = m;
	return v[n - 1];
}

/* ---- experts --------------------------------------------------------------------- */

/* f16 bits of a small value: +-2^-(8..10) x (1 + m/1024). */
static uint16_t small_f16(uint64_t r, bool sign)
{
	uint16_t exp = (uint16_t)(15 - 8 - (r % 3));
	return (uint16_t)((sign ? 0x8000 : 0) | exp << 10 | ((r >> 8) & 0x3ff));
}

/* Valid random blocks of `type` (so that no NaN, infinity or denormal
 * reaches the arithmetic). */
static void fill_weights(uint8_t *buf, size_t size, uint32_t type, uint64_t *s)
{
	const struct ms_type_info *ti = ms_type_get(type);
	if (type == MS_TYPE_F32) {
		for (size_t i = 0; i + 4 <= size; i += 4) {
			float f = (float)((double)(tool_splitmix(s) >> 11) /
						  9007199254740992.0 -
					  0.5) *
				  0.05f;
			memcpy(buf + i, &f, 4);
		}
		return;
	}
	if (type == MS_TYPE_F16 || type == MS_TYPE_BF16) {
		for (size_t i = 0; i + 2 <= size; i += 2) {
			uint64_t r = tool_splitmix(s);
			uint16_t h;
			if (type == MS_TYPE_F16) {
				h = small_f16(r, r >> 63);
			} else {
				float f = (float)((double)(r >> 11) /
							  9007199254740992.0 -
						  0.5) *
					  0.05f;
				uint32_t u;
				memcpy(&u, &f, 4);
				h = (uint16_t)(u >> 16);
			}
			memcpy(buf + i, &h, 2);
		}
		return;
	}
	for (size_t i = 0; i < size; i += 8) {
		uint64_t r = tool_splitmix(s);
		memcpy(buf + i, &r, size - i < 8 ? size - i : 8);
	}
	if (type == MS_TYPE_MXFP4) {
		for (size_t b = 0; b < size; b += ti->type_size)
			buf[b] = (uint8_t)(127 - 6 - tool_splitmix(s) % 2);
		return;
	}
	/* where the block keeps its f16 scales; MXFP4 has an e8m0 byte at 0 */
	const struct tool_scales *sf = tool_scales_of(type);
	if (!sf)
		return;
	for (size_t b = 0; b < size; b += ti->type_size)
		for (int j = 0; j < 2; j++) {
			if (sf->f16[j] < 0)
				continue;
			uint16_t h = small_f16(tool_splitmix(s), false);
			memcpy(buf + b + sf->f16[j], &h, 2);
		}
}

struct result {
	uint32_t type;
	uint64_t bytes;			/* one expert */
	int n_experts;			/* cycled through */
	bool vectorised;		/* AVX2 has its own dequantiser */
	double read_gbps;		/* best pass around this type */
	double read_median;		/* median passes, mean of both */
	double gbps[MS_FFN_PATH_COUNT]; /* best call; 0: not run */
	double ms[MS_FFN_PATH_COUNT];	/* best call */
	double ms_median[MS_FFN_PATH_COUNT];
};

/* The 8-bit path (opts.q8, what run and serve use) on one thread: an
 * expert's gate product (N_EMBD x N_FF, 4-13 MB, in the LLC after the first
 * call), ns per 256-value block for one input and for four (a decode step
 * of four sequences), the inputs' rounding included; T = 1 and T = 4
 * alternating so that both see the same machine, best call of each. 4 / 1
 * is what four sequences' shared weights cost against one token's where
 * compute, not memory, bounds them. 0, or -1 when the type has no 8-bit
 * kernel. */
#define Q8B_ROWS N_FF
struct q8b {
	uint32_t type;
	double ns1, ns4; /* per block */
};

static int bench_q8_batch(uint32_t type, double seconds, struct q8b *r)
{
	r->type = type;
	r->ns1 = r->ns4 = 0;
	uint64_t rs;
	if (!ms_ffn_q8_ok(type, N_EMBD) || ms_type_row_size(type, N_EMBD, &rs, NULL))
		return -1;
	uint8_t *w = malloc((size_t)(rs * Q8B_ROWS));
	float *x = malloc(4 * N_EMBD * sizeof(float)),
	      *y = malloc(4 * Q8B_ROWS * sizeof(float));
	int rc = !w || !x || !y ? -1 : 0;
	uint64_t s = 7;
	if (!rc) {
		fill_weights(w, (size_t)(rs * Q8B_ROWS), type, &s);
		for (int i = 0; i < 4 * N_EMBD; i++)
			x[i] = (float)((double)(tool_splitmix(&s) % 2001) / 1000.0 - 1.0);
	}
	struct ms_ffn_opts o = { .n_threads = 1, .q8 = true };
	double best[2] = { 1e30, 1e30 }, t_end = now() + seconds;
	for (int k = 0; !rc && (k < 20 || now() < t_end); k++)
		for (int b = 0; b < 2 && !rc; b++) {
			double t0 = now();
			rc = ms_matmul(type, w, N_EMBD, Q8B_ROWS, x, y, b ? 4 : 1, &o,
				       NULL);
			double t = now() - t0;
			best[b] = t < best[b] ? t : best[b];
		}
	double blocks = (double)Q8B_ROWS * N_EMBD / 256;
	r->ns1 = best[0] / blocks * 1e9;
	r->ns4 = best[1] / blocks * 1e9;
	free(w), free(x), free(y);
	return rc ? -1 : 0;
}

/* Times the FFN on `type`: 0, or 1 after saying why. */
static int bench_type(uint32_t type, uint64_t span, struct ms_ffn_pool *pool,
		      double seconds, struct result *res)
{
	struct ms_expert_view v = { .n_embd = N_EMBD,
				    .n_ff = N_FF,
				    .type = { type, type, type } };
	uint64_t b[3];
	struct ms_err err = { 0 };
	if (ms_expert_view_bytes(&v, b, &err)) {
		tool_error(CMD, "%s: %s", ms_type_name(type), err.msg);
		return 1;
	}
	memset(res, 0, sizeof(*res));
	res->type = type;
	res->bytes = b[0] + b[1] + b[2];
	res->vectorised = ms_ffn_type_vectorised(type, MS_FFN_PATH_AVX2);
	int n = (int)((span + res->bytes - 1) / res->bytes);
	n = n < 2 ? 2 : n;
	res->n_experts = n;

	uint8_t *mem = malloc((size_t)res->bytes * (size_t)n);
	float x[N_EMBD], y[N_EMBD];
	if (!mem) {
		tool_error(CMD, "out of memory for %d %s experts (%llu bytes)",
			   n, ms_type_name(type),
			   (unsigned long long)res->bytes *
				   (unsigned long long)n);
		return 1;
	}
	uint64_t s = 0x5eed0000ull + type;
	fill_weights(mem, (size_t)res->bytes * (size_t)n, type, &s);
	for (int i = 0; i < N_EMBD; i++)
		x[i] = (float)((double)(tool_splitmix(&s) >> 11) /
				       9007199254740992.0 -
			       0.5);

	for (int p = MS_FFN_PATH_SCALAR; p < MS_FFN_PATH_COUNT; p++) {
		if (!ms_ffn_path_available((enum ms_ffn_path)p))
			continue;
		struct ms_ffn_opts o = { .path = (enum ms_ffn_path)p,
					 .pool = pool };
		/* Calls are grouped into windows of >= WINDOW_S, about as long
		 * as a bandwidth pass, so that the best window and the best
		 * pass are figures of the same kind. */
		double t[4096], win[4096], win_t = 0, win_b = 0;
		int k = 0, nw = 0, call = 0;
		double t_end = now() + seconds;
		/* one warm-up call per expert would cost as much as the run:
		 * one call only, then the copies are cold anyway (4x LLC) */
		while (k < 4096 && (nw < 3 || now() < t_end)) {
			uint8_t *e = mem + (size_t)(call++ % n) * res->bytes;
			v.data[0] = e;
			v.data[1] = e + b[0];
			v.data[2] = e + b[0] + b[1];
			double t0 = now();
			if (ms_expert_ffn(&v, x, y, 1, &o, &err)) {
				tool_error(
					CMD, "%s %s: %s", ms_type_name(type),
					ms_ffn_path_name((enum ms_ffn_path)p),
					err.msg);
				free(mem);
				return 1;
			}
			double dt = now() - t0;
			if (call == 1)
				continue;
			t[k++] = dt;
			win_t += dt;
			win_b += (double)res->bytes;
			if (win_t >= WINDOW_S) {
				win[nw++] = win_b / win_t / 1e9;
				win_t = win_b = 0;
			}
		}
		double med = tool_median(t, (size_t)k); /* sorts t */
		double best = tool_median(win, (size_t)nw) > 0 ? win[nw - 1] : 0; /* sorts */
		res->ms[p] = t[0] * 1e3;
		res->ms_median[p] = med * 1e3;
		res->gbps[p] = best;
	}
	free(mem);
	return 0;
}

static const uint32_t default_types[] = {
	MS_TYPE_Q2_K,  MS_TYPE_Q3_K, MS_TYPE_Q4_K,   MS_TYPE_Q5_K,
	MS_TYPE_Q6_K,  MS_TYPE_Q8_0, MS_TYPE_Q4_0,   MS_TYPE_Q4_1,
	MS_TYPE_Q5_0,  MS_TYPE_Q5_1, MS_TYPE_IQ4_NL, MS_TYPE_IQ4_XS,
	MS_TYPE_MXFP4, MS_TYPE_F16,  MS_TYPE_BF16,   MS_TYPE_F32,
};
#define N_DEFAULT (sizeof(default_types) / sizeof(default_types[0]))

/* The GPU's row for `type`, or NULL (not measured, or no fused matvec). */
static const struct bench_gpu_row *gpu_row(const struct bench_gpu_report *g,
					   uint32_t type)
{
	for (int i = 0; i < g->n_rows; i++)
		if (g->rows[i].type == type)
			return g->rows[i].ran && g->copy_gbps > 0 ? &g->rows[i]
								  : NULL;
	return NULL;
}

/* Runs the GPU benchmark into *out when a real GPU is there and wanted;
 * otherwise leaves *out NULL and says why in `why` (and sets *failed when
 * the GPU was there but its benchmark failed). 1 only when out of memory. */
static int gpu_column(bool want, const uint32_t *types, int n_types,
		      double seconds, struct bench_gpu_report **out, char *why,
		      size_t len, bool *failed)
{
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	*out = NULL;
	if (!want) {
		snprintf(why, len, "--no-gpu");
		return 0;
	}
	if (ms_gpu_list(g, MS_GPU_MAX, &err) < 0) {
		snprintf(why, len, "%s", err.msg);
		return 0;
	}
	if (strstr(ms_gpu_build_info(), "emulation")) {
		snprintf(why, len,
			 "%s: its figures would not be a GPU's",
			 ms_gpu_build_info());
		return 0;
	}
	struct bench_gpu_report *r = malloc(sizeof(*r));
	if (!r) {
		tool_error(CMD, "out of memory");
		return 1;
	}
	int n = n_types < BENCH_GPU_MAX_TYPES ? n_types : BENCH_GPU_MAX_TYPES;
	if (bench_gpu_run(types, n, seconds, 0, 0, false, r, &err)) {
		snprintf(why, len, "the GPU benchmark failed: %s", err.msg);
		*failed = true;
		free(r);
		return 0;
	}
	*out = r;
	return 0;
}

static int bench_kernels(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "threads", required_argument, 0, 't' },
		{ "types", required_argument, 0, 'T' },
		{ "time", required_argument, 0, 's' },
		{ "mem", required_argument, 0, 'm' },
		{ "no-gpu", no_argument, 0, 'G' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	bool json = false, want_gpu = true;
	int threads = 0, n_types = (int)N_DEFAULT;
	double seconds = 0.5;
	uint64_t span = 0;
	uint32_t types[N_DEFAULT * 2];
	memcpy(types, default_types, sizeof(default_types));
	char *end;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "jt:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 't': {
			errno = 0;
			long v = strtol(optarg, &end, 10);
			if (errno || *end || !*optarg || v < 0 ||
			    v > MAX_THREADS) {
				tool_error(CMD,
					   "--threads '%s': expected 0..%d",
					   optarg, MAX_THREADS);
				return tool_bad_usage(usage_line);
			}
			threads = (int)v;
			break;
		}
		case 'T':
			if (tool_parse_types(CMD, optarg, ms_ffn_type_supported,
					     types, (int)N_DEFAULT * 2, &n_types))
				return tool_bad_usage(usage_line);
			break;
		case 's':
			if (tool_parse_seconds(CMD, optarg, 60, &seconds))
				return tool_bad_usage(usage_line);
			break;
		case 'm': {
			errno = 0;
			unsigned long long v = strtoull(optarg, &end, 10);
			int sh = *end == 'K' || *end == 'k'   ? 10
				 : *end == 'M' || *end == 'm' ? 20
				 : *end == 'G' || *end == 'g' ? 30
							      : 0;
			if (sh)
				end++;
			if (errno || *end || !isdigit((unsigned char)*optarg) ||
			    v < 1 || v > (64ull << 30) >> sh) {
				tool_error(CMD,
					   "--mem '%s': expected a size "
					   "like 512M (at most 64G)",
					   optarg);
				return tool_bad_usage(usage_line);
			}
			span = v << sh;
			break;
		}
		case 'G':
			want_gpu = false;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return tool_bad_usage(usage_line);
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s'", argv[optind]);
		return tool_bad_usage(usage_line);
	}

	struct ms_err err = { 0 };
	struct ms_ffn_pool *pool;
	struct bench_gpu_report *gpu = NULL;
	struct q8b *qb = NULL;
	if (ms_ffn_pool_init(&pool, threads, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	int nth = ms_ffn_pool_threads(pool);
	uint64_t llc = llc_bytes();
	if (!span) {
		span = 4 * llc > (256u << 20) ? 4 * llc : (256u << 20);
		span = span > (4ull << 30) ? 4ull << 30 : span;
	}
	size_t buf_bytes = (size_t)span < 8192 ? 8192 : (size_t)span;
	uint8_t *buf = malloc(buf_bytes);
	struct result *res = calloc((size_t)n_types, sizeof(*res));
	int rc = 1;
	if (!buf || !res) {
		tool_error(CMD, "out of memory for a %zu-byte buffer",
			   buf_bytes);
		goto out;
	}
	uint64_t s = 1;
	for (size_t i = 0; i < buf_bytes; i += 8) {
		uint64_t r = tool_splitmix(&s);
		memcpy(buf + i, &r, 8);
	}
	/* The machine may be shared and its bandwidth may drift: every type's
	 * FFN is measured between two bandwidth measurements and its ratio is
	 * to the better of them, so both halves of a ratio see the same
	 * machine. */
	double copy_gbps = bandwidth(buf, buf_bytes, nth, true, seconds, NULL);
	double *reads = calloc((size_t)n_types, sizeof(double));
	if (!reads) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	for (int i = 0; i < n_types; i++) {
		double m0, m1;
		double before =
			bandwidth(buf, buf_bytes, nth, false, seconds / 2, &m0);
		if (bench_type(types[i], span, pool, seconds, &res[i])) {
			free(reads);
			goto out;
		}
		double after =
			bandwidth(buf, buf_bytes, nth, false, seconds / 2, &m1);
		res[i].read_gbps = reads[i] = before > after ? before : after;
		res[i].read_median = 0.5 * (m0 + m1);
	}
	double read_gbps = tool_median(reads, (size_t)n_types);
	free(reads);
	free(buf);
	buf = NULL;

	/* the GPU column, or the reason there is none */
	char no_gpu[sizeof(err.msg) + 64] = "";
	bool gpu_failed = false;
	if (gpu_column(want_gpu, types, n_types, seconds, &gpu, no_gpu,
		       sizeof(no_gpu), &gpu_failed))
		goto out;
	bool avx2 = ms_ffn_path_available(MS_FFN_PATH_AVX2);
	char b1[32], b2[32];
	int n_qb = 0;
	qb = calloc((size_t)n_types, sizeof(*qb));
	for (int i = 0; qb && i < n_types; i++)
		if (!bench_q8_batch(types[i], seconds, &qb[n_qb]))
			n_qb++;

	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON *mem = cJSON_AddObjectToObject(o, "memory");
		cJSON_AddNumberToObject(mem, "read_gbps", read_gbps);
		cJSON_AddNumberToObject(mem, "copy_gbps", copy_gbps);
		cJSON_AddNumberToObject(mem, "buffer_bytes", (double)buf_bytes);
		cJSON_AddNumberToObject(mem, "llc_bytes", (double)llc);
		cJSON_AddNumberToObject(o, "threads", nth);
		cJSON *ex = cJSON_AddObjectToObject(o, "expert");
		cJSON_AddNumberToObject(ex, "n_embd", N_EMBD);
		cJSON_AddNumberToObject(ex, "n_ff", N_FF);
		cJSON_AddNumberToObject(ex, "tokens", 1);
		cJSON_AddBoolToObject(o, "avx2", avx2);
		cJSON *arr = cJSON_AddArrayToObject(o, "types");
		for (int i = 0; i < n_types; i++) {
			cJSON *t = cJSON_CreateObject();
			cJSON_AddStringToObject(t, "type",
						ms_type_name(res[i].type));
			cJSON_AddNumberToObject(t, "expert_bytes",
						(double)res[i].bytes);
			cJSON_AddNumberToObject(t, "experts_cycled",
						res[i].n_experts);
			cJSON_AddBoolToObject(t, "avx2_dequantiser",
					      res[i].vectorised);
			cJSON_AddNumberToObject(t, "read_gbps",
						res[i].read_gbps);
			cJSON_AddNumberToObject(t, "read_gbps_median",
						res[i].read_median);
			for (int p = MS_FFN_PATH_SCALAR; p < MS_FFN_PATH_COUNT;
			     p++) {
				const char *name =
					ms_ffn_path_name((enum ms_ffn_path)p);
				if (!res[i].gbps[p]) {
					cJSON_AddNullToObject(t, name);
					continue;
				}
				cJSON *x = cJSON_AddObjectToObject(t, name);
				cJSON_AddNumberToObject(x, "gbps",
							res[i].gbps[p]);
				cJSON_AddNumberToObject(
					x, "ratio",
					res[i].gbps[p] / res[i].read_gbps);
				cJSON_AddNumberToObject(x, "ms_per_call",
							res[i].ms[p]);
				cJSON_AddNumberToObject(x, "ms_per_call_median",
							res[i].ms_median[p]);
			}
			/* "gpu": like a CPU path (null: no GPU, or no
			 * fused matvec for the type) */
			const struct bench_gpu_row *gr =
				gpu ? gpu_row(gpu, res[i].type) : NULL;
			if (!gr) {
				cJSON_AddNullToObject(t, "gpu");
			} else {
				cJSON *x = cJSON_AddObjectToObject(t, "gpu");
				cJSON_AddNumberToObject(
					x, "gbps", gr->gbps[BENCH_GPU_E32]);
				cJSON_AddNumberToObject(
					x, "ratio",
					gr->gbps[BENCH_GPU_E32] / gpu->copy_gbps);
				cJSON_AddNumberToObject(x, "experts_per_call",
							32);
				cJSON_AddNumberToObject(
					x, "ms_per_call",
					gr->us_call[BENCH_GPU_E32] * 1e-3);
				cJSON_AddNumberToObject(
					x, "gbps_median",
					gr->median[BENCH_GPU_E32]);
			}
			cJSON_AddItemToArray(arr, t);
		}
		/* "q8_batch": the 8-bit path, one thread, L2-resident rows */
		cJSON *qa = cJSON_AddArrayToObject(o, "q8_batch");
		for (int i = 0; i < n_qb; i++) {
			cJSON *t = cJSON_CreateObject();
			cJSON_AddStringToObject(t, "type", ms_type_name(qb[i].type));
			cJSON_AddNumberToObject(t, "ns_per_block_1", qb[i].ns1);
			cJSON_AddNumberToObject(t, "ns_per_block_4", qb[i].ns4);
			cJSON_AddNumberToObject(t, "cost_4_over_1",
						qb[i].ns4 / qb[i].ns1);
			cJSON_AddItemToArray(qa, t);
		}
		/* "gpu": bench gpu's report (device, copy bandwidth, every
		 * configuration), or null and "gpu_absent" saying why */
		if (gpu) {
			bench_gpu_json(gpu, o);
		} else {
			cJSON_AddNullToObject(o, "gpu");
			cJSON_AddStringToObject(o, "gpu_absent", no_gpu);
		}
		char *str = cJSON_Print(o);
		if (str)
			puts(str);
		free(str);
		cJSON_Delete(o);
	} else {
		printf("memory      read %.1f GB/s (median over types of the best "
		       "pass around each),\n            memcpy %.1f GB/s (read + "
		       "write); %d thread%s, %s buffer, LLC %s\n",
		       read_gbps, copy_gbps, nth, nth == 1 ? "" : "s",
		       fmt_bytes(buf_bytes, b1, sizeof(b1)),
		       fmt_bytes(llc, b2, sizeof(b2)));
		printf("expert      n_embd %d, n_ff %d (GLM-4.7), one type for "
		       "gate/up/down, B = 1,\n            cycled over copies "
		       "worth %s; best 25 ms window\n",
		       N_EMBD, N_FF, fmt_bytes(span, b1, sizeof(b1)));
		if (gpu)
			printf("gpu         %s, %d SMs: device-to-device copy "
			       "%.0f GB/s (read + write);\n            fused "
			       "matvec, B = 1, 32 experts per call, over %s\n",
			       gpu->device, gpu->sms, gpu->copy_gbps,
			       fmt_bytes(gpu->ring_bytes, b1, sizeof(b1)));
		printf("\n%-7s %13s %10s %12s %6s %12s %6s", "type",
		       "bytes/expert", "read GB/s", "scalar GB/s", "ratio",
		       avx2 ? "avx2 GB/s" : "avx2 (n/a)", "ratio");
		if (gpu)
			printf(" %10s %6s", "gpu GB/s", "ratio");
		printf("\n");
		for (int i = 0; i < n_types; i++) {
			const struct result *r = &res[i];
			printf("%-7s %13s %10.1f", ms_type_name(r->type),
			       fmt_count(r->bytes, b1, sizeof(b1)),
			       r->read_gbps);
			for (int p = MS_FFN_PATH_SCALAR; p < MS_FFN_PATH_COUNT;
			     p++) {
				if (!r->gbps[p]) {
					printf(" %12s %6s", "-", "-");
					continue;
				}
				printf(" %11.2f%s %6.2f", r->gbps[p],
				       p == MS_FFN_PATH_AVX2 && !r->vectorised
					       ? "*"
					       : " ",
				       r->gbps[p] / r->read_gbps);
			}
			const struct bench_gpu_row *gr =
				gpu ? gpu_row(gpu, r->type) : NULL;
			if (gpu && gr)
				printf(" %10.0f %6.2f", gr->gbps[BENCH_GPU_E32],
				       gr->gbps[BENCH_GPU_E32] / gpu->copy_gbps);
			else if (gpu)
				printf(" %10s %6s", "-", "-");
			printf("\n");
		}
		printf("\nratio = FFN GB/s / the read GB/s measured around it "
		       "(same threads)%s",
		       gpu ? "; for the gpu, to\nits device-to-device copy "
			     "GB/s (-: no fused matvec for the type)."
			   : ".");
		for (int i = 0; i < n_types; i++)
			if (avx2 && !res[i].vectorised) {
				printf("\n* scalar dequantiser inside the AVX2 "
				       "path (no vector kernel for that type).");
				break;
			}
		printf("\n");
		if (!gpu)
			printf("gpu         no GPU column: %s\n", no_gpu);
		if (n_qb) {
			printf("\n8-bit path (run, serve): an expert's gate, %d x %d, on "
			       "one thread, from the LLC,\nns per 256-value block "
			       "(best call), one input and four at once\n\n"
			       "%-7s %10s %10s %8s\n", N_EMBD, Q8B_ROWS, "type",
			       "1 input", "4 inputs", "4 / 1");
			for (int i = 0; i < n_qb; i++)
				printf("%-7s %10.2f %10.2f %8.2f\n",
				       ms_type_name(qb[i].type), qb[i].ns1,
				       qb[i].ns4, qb[i].ns4 / qb[i].ns1);
		}
	}
	rc = fflush(stdout) || ferror(stdout) ? 1 : 0;
	if (rc)
		tool_error(CMD, "writing the output failed");
	if (gpu_failed) {
		tool_error(CMD, "%s", no_gpu);
		rc = 1;
	}
out:
	free(qb);
	free(gpu);
	free(buf);
	free(res);
	ms_ffn_pool_free(pool);
	return rc;
}

int cmd_bench(int argc, char **argv)
{
	static char kernels[] = "moestream bench kernels",
		    io[] = "moestream bench io", rpc[] = "moestream bench rpc",
		    e2e[] = "moestream bench e2e", gpu[] = "moestream bench gpu",
		    tier[] = "moestream bench gpu-tier",
		    gdec[] = "moestream bench gpu-decode",
		    tok[] = "moestream bench tokenize",
		    srv[] = "moestream bench serve";
	if (argc >= 2 && !strcmp(argv[1], "serve")) {
		argv[1] = srv;
		return bench_serve_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "tokenize")) {
		argv[1] = tok;
		return bench_tokenize_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "kernels")) {
		argv[1] = kernels; /* getopt's messages name the command */
		return bench_kernels(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "io")) {
		argv[1] = io;
		return bench_io_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "rpc")) {
		argv[1] = rpc;
		return bench_rpc_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "e2e")) {
		argv[1] = e2e;
		return bench_e2e_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "gpu")) {
		argv[1] = gpu;
		return bench_gpu_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "gpu-decode")) {
		argv[1] = gdec;
		return bench_gpu_decode_main(argc - 1, argv + 1);
	}
	if (argc >= 2 && !strcmp(argv[1], "gpu-tier")) {
		argv[1] = tier;
		return bench_gpu_tier_main(argc - 1, argv + 1);
	}
	if (argc >= 2 &&
	    (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: moestream bench kernels|io|rpc|e2e|serve|gpu|gpu-tier|gpu-decode|tokenize "
		       "[OPTIONS]\n\n"
		       "Benchmarks, each against the machine's own limit "
		       "measured in the same run:\n"
		       "  kernels  the CPU expert FFN against memory bandwidth "
		       "(and the GPU's fused\n"
		       "           matvec against the GPU's, where one is "
		       "present)\n"
		       "  io       whole-expert loads through the I/O engine "
		       "against the device\n"
		       "  rpc      moestreamd's ACQUIRE+RELEASE round trip and "
		       "64-client rate on\n"
		       "           resident experts, against the socket's PING\n"
		       "  e2e      decoding end to end under a memory limit: "
		       "moestreamd against\n"
		       "           llama.cpp's mmap and a pread + LRU engine, with "
		       "the device's\n"
		       "           and Belady's bounds (make bench)\n"
		       "  serve    moestream serve against moestream run under "
		       "the same limit, and\n"
		       "           --parallel 4's aggregate decode rate against "
		       "one request's\n"
		       "  gpu      the GPU's fused decode matvec per type "
		       "against the device's own\n"
		       "           copy bandwidth, and the cuBLAS prefill path "
		       "(exit 3 without a GPU)\n"
		       "  gpu-tier the GPU expert tier: host->device GB/s from "
		       "moestreamd's cache\n"
		       "           against pinned memory, and copies under "
		       "compute (exit 3 without\n"
		       "           a GPU)\n"
		       "  gpu-decode the GPU decoder (run --device gpu): decode "
		       "with every expert in\n"
		       "           VRAM against the device's copy rate, and with "
		       "experts streaming\n"
		       "           through moestreamd against max(copy, compute) "
		       "(exit 3 without a GPU)\n"
		       "  tokenize the model's tokenizer against llama.cpp's on "
		       "the same text\n"
		       "'moestream bench NAME --help' explains each.\n");
		return 0;
	}
	if (argc < 2)
		tool_error(CMD, "which benchmark? (kernels, io, rpc, e2e, serve, "
				"gpu, gpu-tier, gpu-decode, tokenize)");
	else
		tool_error(CMD,
			   "'%s' is not a benchmark (kernels, io, rpc, e2e, serve, "
			   "gpu, gpu-tier, gpu-decode, tokenize)",
			   argv[1]);
	fprintf(stderr, "usage: moestream bench kernels|io|rpc|e2e|serve|gpu|gpu-tier|gpu-decode|tokenize "
			"[OPTIONS]  (see --help)\n");
	return EXIT_USAGE;
}
