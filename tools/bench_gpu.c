/*
 * bench_gpu.c - `moestream bench gpu`: how close the fused decode matvec
 * (kernels/gpu_matvec.cu) comes to the memory bandwidth of the GPU it runs
 * on, per quant type.
 *
 * Decode on the GPU is a stream over the expert's quantized bytes, as on the
 * CPU: the best it can do is the rate at which device memory delivers them.
 * Both fused kernels are timed: the exact one (MS_GPU_FFN_MATVEC, f32
 * accuracy; the JSON's "gbps"/"ratio" keys, as before) and the one with
 * 8-bit activations (MS_GPU_FFN_MATVEC_Q8; "q8_gbps"/"q8_ratio"), whose
 * target is the issue's: >= 0.6 of the copy rate for q2_K, q3_K, q4_K and
 * q6_K at 32 experts, B = 1.
 * The figure reported is therefore a ratio: GB/s of quantized weights
 * consumed by the FFN over the device's own cudaMemcpy device-to-device
 * rate measured in the same run (counting bytes read plus bytes written, as
 * METHOD.md's ceiling does; a read-only stream can beat it slightly, so a
 * ratio near or above 1 is possible and means "at the memory's speed").
 *
 * The expert has GLM-4.7's shape (n_embd 5120, n_ff 1536) with the type
 * under test for gate, up and down. Experts are cycled over a ring of at
 * least 1 GiB (20x an H100's L2), so every call reads from DRAM, as an
 * expert just copied in from the host would be. A call is
 * ms_gpu_experts_ffn on 1, 8 (one decode step of GLM-4.7) or 32 experts
 * (the GPU busy: this is the figure held to the target) at B = 1, and 32
 * experts at B = 8. Each figure is the best of windows of at least 2 ms of
 * back-to-back calls timed with CUDA events (the median is reported too);
 * the calls include every launch of the path (prepare x, gate/up, prepare
 * h, down), not just the matvec kernels.
 *
 * Weights are random valid blocks (ms_gpu_fill_blocks: small finite
 * scales), the input random normal-ish values; nothing is zeros.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench_gpu.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "tools.h"

#define CMD "bench gpu"
#define GLM_EMBD 5120
#define GLM_FF 1536
#define WINDOW_MS 2.0
#define MAX_WINDOWS 256
#define RING_MULT 32 /* ring sizes are multiples of the largest batch */

static const int conf_experts[BENCH_GPU_NCONF] = { 1, 8, 32, 32 };
static const int conf_tokens[BENCH_GPU_NCONF] = { 1, 1, 1, 8 };
static const char *const conf_names[BENCH_GPU_NCONF] = {
	"b1_e1", "b1_e8", "b1_e32", "b8_e32"
};

static const uint32_t default_types[] = {
	MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K, MS_TYPE_Q5_K,
	MS_TYPE_Q6_K, MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_MXFP4,
};
#define N_DEFAULT (int)(sizeof(default_types) / sizeof(default_types[0]))

/* The expert shape: GLM-4.7's unless --shape says otherwise. */
static int64_t shape_embd = GLM_EMBD, shape_ff = GLM_FF;
/* --calls N (0: the timed benchmark) */
static int profile_calls;
/* --chunks: the matvec chunk sizes to sweep (none by default) */
static int sweep_chunks[BENCH_GPU_MAX_CHUNKS], n_sweep_chunks;

static bool is_kquant(uint32_t t)
{
	return t == MS_TYPE_Q2_K || t == MS_TYPE_Q3_K || t == MS_TYPE_Q4_K ||
	       t == MS_TYPE_Q5_K || t == MS_TYPE_Q6_K;
}

/* Random inputs on the host: roughly normal (sum of four uniforms). */
static void fill_inputs(float *x, size_t n, uint64_t seed)
{
	uint64_t s = seed;
	for (size_t i = 0; i < n; i++) {
		double v = 0;
		for (int k = 0; k < 4; k++) {
			uint64_t z = (s += 0x9e3779b97f4a7c15ull);
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
			z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
			z ^= z >> 31;
			v += (double)(z >> 11) / 9007199254740992.0;
		}
		x[i] = (float)((v - 2.0) * 1.7320508075688772);
	}
}

struct ring {
	struct ms_gpu_expert *e;
	int n;
	uint64_t bytes; /* one expert */
	void *mem;
};

static void ring_free(struct ring *r)
{
	ms_gpu_free(r->mem);
	free(r->e);
	memset(r, 0, sizeof(*r));
}

static int ring_make(struct ring *r, uint32_t type, uint64_t ring_bytes,
		     void *stream, struct ms_err *err)
{
	struct ms_expert_view v = { .n_embd = shape_embd,
				    .n_ff = shape_ff,
				    .type = { type, type, type } };
	uint64_t b[3];
	memset(r, 0, sizeof(*r));
	int rc = ms_expert_view_bytes(&v, b, err);
	if (rc)
		return rc;
	r->bytes = b[0] + b[1] + b[2];
	uint64_t n = (ring_bytes + r->bytes - 1) / r->bytes;
	if (n < 2 * RING_MULT)
		n = 2 * RING_MULT;
	n = (n + RING_MULT - 1) / RING_MULT * RING_MULT;
	r->n = (int)n;
	r->e = calloc(n, sizeof(*r->e));
	if (!r->e)
		return ms_err_set(err, -ENOMEM, "out of memory");
	if ((rc = ms_gpu_malloc(&r->mem, r->bytes * n, err)) ||
	    (rc = ms_gpu_fill_blocks(type, r->mem, r->bytes * n,
				     0x5eed0000ull + type, stream, err))) {
		ring_free(r);
		return rc;
	}
	for (int i = 0; i < r->n; i++) {
		uint8_t *base = (uint8_t *)r->mem + (uint64_t)i * r->bytes;
		r->e[i] = (struct ms_gpu_expert){
			.n_embd = shape_embd,
			.n_ff = shape_ff,
			.type = { type, type, type },
			.data = { base, base + b[0], base + b[0] + b[1] },
		};
	}
	return 0;
}

/* k calls of n_e experts x B tokens, numbered from *call on: call i takes
 * the ring's experts from i * n_e on, so the calls walk the ring. */
static int ffn_calls(struct ms_gpu_ctx *c, const struct ring *r, int n_e,
		     int B, enum ms_gpu_ffn_path path, const float *x, float *y,
		     int *call, int k, struct ms_err *err)
{
	for (int i = 0; i < k; i++) {
		const int start = (int)(((int64_t)(*call)++ * n_e) % r->n);
		int rc = ms_gpu_experts_ffn(c, &r->e[start], n_e, x, 0, y, B,
					    path, err);
		if (rc)
			return rc;
	}
	return 0;
}

/* Times calls of n_e experts x B tokens for about `seconds`: windows of
 * >= WINDOW_MS; the best and median window in weight GB/s. */
static int time_conf(struct ms_gpu_ctx *c, const struct ring *r, int n_e,
		     int B, enum ms_gpu_ffn_path path, const float *x, float *y,
		     double seconds, double *best, double *median,
		     double *us_call, struct ms_err *err)
{
	double win[MAX_WINDOWS], ms = 0, spent = 0;
	int call = 0, rc, nw = 0;
	/* warm-up (module load, workspace, cuBLAS), then the size of a
	 * window from four calls */
	if ((rc = ffn_calls(c, r, n_e, B, path, x, y, &call, 2, err)) ||
	    (rc = ms_gpu_ctx_mark(c, err)) ||
	    (rc = ffn_calls(c, r, n_e, B, path, x, y, &call, 4, err)) ||
	    (rc = ms_gpu_ctx_elapsed(c, &ms, err)))
		return rc;
	int k = ms > 0 ? (int)ceil(WINDOW_MS / (ms / 4)) : 1000;
	k = k < 4 ? 4 : k > 1000 ? 1000 : k;
	double best_ms = 1e30;
	while (nw < MAX_WINDOWS && (nw < 5 || spent < seconds * 1e3)) {
		if ((rc = ms_gpu_ctx_mark(c, err)) ||
		    (rc = ffn_calls(c, r, n_e, B, path, x, y, &call, k, err)) ||
		    (rc = ms_gpu_ctx_elapsed(c, &ms, err)))
			return rc;
		spent += ms;
		win[nw++] = (double)k * n_e * (double)r->bytes / (ms * 1e-3) / 1e9;
		if (ms / k < best_ms)
			best_ms = ms / k;
	}
	*median = tool_median(win, (size_t)nw); /* sorts win */
	*best = win[nw - 1];
	*us_call = best_ms * 1e3;
	return 0;
}

/* --calls: n calls of the target's configuration (8-bit, B = 1, 32
 * experts), untimed but for their total; the same launches time_conf
 * makes. */
static int untimed_calls(struct ms_gpu_ctx *c, const struct ring *r, int n,
			 const float *x, float *y, double *ms,
			 struct ms_err *err)
{
	int call = 0, rc;
	if ((rc = ms_gpu_ctx_mark(c, err)) ||
	    (rc = ffn_calls(c, r, conf_experts[BENCH_GPU_E32],
			    conf_tokens[BENCH_GPU_E32], MS_GPU_FFN_MATVEC_Q8,
			    x, y, &call, n, err)))
		return rc;
	return ms_gpu_ctx_elapsed(c, ms, err);
}

int bench_gpu_run(const uint32_t *types, int n_types, double seconds,
		  int device, uint64_t ring_bytes, bool prefill,
		  struct bench_gpu_report *rep, struct ms_err *err)
{
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_gpu_ctx *c = NULL;
	float *x = NULL, *hx = NULL, *y = NULL;
	struct ring r = { 0 };
	int rc;

	memset(rep, 0, sizeof(*rep));
	if (n_types < 1 || n_types > BENCH_GPU_MAX_TYPES)
		return ms_err_set(err, -EINVAL, "%d types", n_types);
	int ng = ms_gpu_list(g, MS_GPU_MAX, err);
	if (ng < 0)
		return ng;
	if (device < 0 || device >= ng)
		return ms_err_set(err, -EINVAL, "no gpu %d (there are %d)",
				  device, ng);
	snprintf(rep->device, sizeof(rep->device), "%s", g[device].name);
	rep->sms = g[device].multiprocessors;
	if (!ring_bytes)
		ring_bytes = 1ull << 30;
	rep->ring_bytes = ring_bytes;
	rep->n_embd = shape_embd;
	rep->n_ff = shape_ff;
	rep->n_chunks = n_sweep_chunks;
	memcpy(rep->chunks, sweep_chunks, sizeof(rep->chunks));
	rep->calls = profile_calls;
	if ((rc = ms_gpu_ctx_init(&c, device, NULL, err)))
		return rc;
	rep->pdl = ms_gpu_ctx_pdl(c);
	void *st = ms_gpu_ctx_stream(c);

	/* inputs for up to 512 tokens (the prefill line), outputs for 32
	 * experts x 8 tokens or 512 tokens */
	const size_t nx = (size_t)512 * shape_embd;
	hx = malloc(nx * sizeof(float));
	if (!hx) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	fill_inputs(hx, nx, 7);
	if ((rc = ms_gpu_malloc((void **)&x, nx * sizeof(float), err)) ||
	    (rc = ms_gpu_upload(x, hx, nx * sizeof(float), err)) ||
	    (rc = ms_gpu_malloc((void **)&y, nx * sizeof(float), err)))
		goto out;

	/* the ceiling, before and after: the better of the two */
	/* 512 MiB each way (10x an H100's L2), less only for a small --mem */
	rep->copy_bytes = ring_bytes / 2 < (512ull << 20) ? ring_bytes / 2
							   : 512ull << 20;
	double best0 = 0, med0 = 0, best1 = 0, med1 = 0;
	if (!rep->calls && (rc = ms_gpu_copy_bandwidth(c, rep->copy_bytes, 20,
						       &best0, &med0, err)))
		goto out;

	for (int t = 0; t < n_types; t++) {
		struct bench_gpu_row *row = &rep->rows[rep->n_rows++];
		row->type = types[t];
		struct ms_expert_view v = { .n_embd = shape_embd,
					    .n_ff = shape_ff,
					    .type = { types[t], types[t],
						      types[t] } };
		uint64_t b[3];
		if ((rc = ms_expert_view_bytes(&v, b, err)))
			goto out;
		row->expert_bytes = b[0] + b[1] + b[2];
		if (!ms_gpu_matvec_supported(types[t]))
			continue;
		if ((rc = ring_make(&r, types[t], ring_bytes, st, err)))
			goto out;
		row->ring_experts = r.n;
		if (rep->calls) {
			if ((rc = untimed_calls(c, &r, rep->calls, x, y,
						&row->calls_ms, err))) {
				ms_err_prefix(err, "%s",
					      ms_type_name(types[t]));
				goto out;
			}
			row->ran = true;
			ring_free(&r);
			continue;
		}
		for (int k = 0; k < BENCH_GPU_NCONF; k++)
			if ((rc = time_conf(c, &r, conf_experts[k],
					    conf_tokens[k], MS_GPU_FFN_MATVEC,
					    x, y, seconds / (2 * BENCH_GPU_NCONF),
					    &row->gbps[k], &row->median[k],
					    &row->us_call[k], err)) ||
			    (rc = time_conf(c, &r, conf_experts[k],
					    conf_tokens[k],
					    MS_GPU_FFN_MATVEC_Q8, x, y,
					    seconds / (2 * BENCH_GPU_NCONF),
					    &row->q8_gbps[k],
					    &row->q8_median[k],
					    &row->q8_us_call[k], err))) {
				ms_err_prefix(err, "%s",
					      ms_type_name(types[t]));
				goto out;
			}
		/* the chunk sweep: the figure held to the target, per size */
		for (int k = 0; k < rep->n_chunks; k++) {
			double med, us;
			if ((rc = ms_gpu_ctx_set_chunk(c, rep->chunks[k], err)) ||
			    (rc = time_conf(c, &r, conf_experts[BENCH_GPU_E32],
					    conf_tokens[BENCH_GPU_E32],
					    MS_GPU_FFN_MATVEC_Q8, x, y,
					    seconds / (2 * BENCH_GPU_NCONF),
					    &row->chunk_gbps[k], &med, &us,
					    err)) ||
			    (rc = ms_gpu_ctx_set_chunk(c, 0, err))) {
				ms_err_prefix(err, "%s, chunk of %d bytes",
					      ms_type_name(types[t]),
					      rep->chunks[k]);
				goto out;
			}
		}
		row->ran = true;
		if (prefill && !rep->prefill_tokens && is_kquant(types[t])) {
			double gb, med, us;
			if ((rc = time_conf(c, &r, 1, 512, MS_GPU_FFN_CUBLAS, x,
					    y, seconds / 2, &gb, &med, &us,
					    err))) {
				ms_err_prefix(err, "%s prefill",
					      ms_type_name(types[t]));
				goto out;
			}
			rep->prefill_type = types[t];
			rep->prefill_tokens = 512;
			rep->prefill_ms = us * 1e-3;
			rep->prefill_tflops = 2.0 * 512 * 3.0 * shape_embd * shape_ff /
					      (us * 1e-6) / 1e12;
		}
		ring_free(&r);
	}
	if (!rep->calls && (rc = ms_gpu_copy_bandwidth(c, rep->copy_bytes, 20,
						       &best1, &med1, err)))
		goto out;
	rep->copy_gbps = best0 > best1 ? best0 : best1;
	rep->copy_median_gbps = 0.5 * (med0 + med1);
out:
	ring_free(&r);
	ms_gpu_free(x);
	ms_gpu_free(y);
	free(hx);
	ms_gpu_ctx_free(c);
	return rc;
}

/* GB/s of weights over the copy rate measured in the same run (0 if none). */
static double copy_ratio(const struct bench_gpu_report *r, double gbps)
{
	return r->copy_gbps > 0 ? gbps / r->copy_gbps : 0;
}

void bench_gpu_print(const struct bench_gpu_report *r, FILE *f)
{
	char b1[32];
	if (strstr(ms_gpu_build_info(), "emulation"))
		fprintf(f, "note        %s: no figure below is a GPU's\n",
			ms_gpu_build_info());
	if (r->calls) {
		fprintf(f, "gpu         %s, %d SMs; nothing timed (--calls)\n",
			r->device, r->sms);
		for (int i = 0; i < r->n_rows; i++) {
			const struct bench_gpu_row *w = &r->rows[i];
			if (!w->ran) {
				fprintf(f, "calls       %-6s no fused matvec "
					"kernel\n", ms_type_name(w->type));
				continue;
			}
			fprintf(f, "calls       %-6s %d of %d experts, "
				"8-bit, B = 1 (n_embd %lld, n_ff %lld): "
				"%.3f ms in all\n", ms_type_name(w->type),
				r->calls, conf_experts[BENCH_GPU_E32],
				(long long)r->n_embd, (long long)r->n_ff,
				w->calls_ms);
		}
		return;
	}
	fprintf(f,
		"gpu         %s, %d SMs; device-to-device copy %.0f GB/s (best, "
		"read + write;\n            median %.0f), %s buffers\n",
		r->device, r->sms, r->copy_gbps, r->copy_median_gbps,
		fmt_bytes(r->copy_bytes, b1, sizeof(b1)));
	fprintf(f,
		"expert      n_embd %lld, n_ff %lld%s, one type for "
		"gate/up/down; fused matvec,\n            experts cycled over a "
		"ring of %s; best 2 ms window; launches %s PDL\n\n",
		(long long)r->n_embd, (long long)r->n_ff,
		r->n_embd == GLM_EMBD && r->n_ff == GLM_FF ? " (GLM-4.7)" : "",
		fmt_bytes(r->ring_bytes, b1, sizeof(b1)),
		r->pdl ? "with" : "without");
	fprintf(f, "%-7s %12s %-7s %7s %7s %7s %6s %11s\n", "type",
		"bytes/expert", "kernel", "1 exp", "8 exp", "32 exp", "ratio",
		"B=8 32 exp");
	fprintf(f, "%-7s %12s %-7s %7s %7s %7s %6s %11s\n", "", "", "", "GB/s",
		"GB/s", "GB/s", "", "GB/s");
	for (int i = 0; i < r->n_rows; i++) {
		const struct bench_gpu_row *w = &r->rows[i];
		fprintf(f, "%-7s %12s", ms_type_name(w->type),
			fmt_count(w->expert_bytes, b1, sizeof(b1)));
		if (!w->ran) {
			fprintf(f, "   (no fused matvec kernel)\n");
			continue;
		}
		for (int q8 = 0; q8 <= 1; q8++) {
			const double *gb = q8 ? w->q8_gbps : w->gbps;
			if (q8)
				fprintf(f, "%-7s %12s", "", "");
			fprintf(f, " %-7s %7.0f %7.0f %7.0f %6.2f %11.0f\n",
				q8 ? "q8" : "exact", gb[BENCH_GPU_E1],
				gb[BENCH_GPU_E8], gb[BENCH_GPU_E32],
				copy_ratio(r, gb[BENCH_GPU_E32]),
				gb[BENCH_GPU_B8]);
		}
	}
	if (r->n_chunks) {
		fprintf(f, "\nchunk sweep: q8, B = 1, 32 experts; GB/s (ratio) "
			   "by the bytes a CTA copies at a time\n%-7s", "type");
		for (int k = 0; k < r->n_chunks; k++)
			fprintf(f, " %13d", r->chunks[k]);
		fprintf(f, "\n");
		for (int i = 0; i < r->n_rows; i++) {
			const struct bench_gpu_row *w = &r->rows[i];
			if (!w->ran)
				continue;
			fprintf(f, "%-7s", ms_type_name(w->type));
			for (int k = 0; k < r->n_chunks; k++)
				fprintf(f, " %6.0f (%4.2f)", w->chunk_gbps[k],
					copy_ratio(r, w->chunk_gbps[k]));
			fprintf(f, "\n");
		}
		fprintf(f, "(the default chunk is %d bytes; the results are the "
			   "same bits at every size)\n", MS_GPU_CHUNK_DEFAULT);
	}
	if (r->prefill_tokens)
		fprintf(f,
			"\nprefill     %s, B = %d, cuBLAS path (dequantise to "
			"f16 + cublasGemmEx): %.3f ms\n            per expert, "
			"%.1f TFLOP/s\n",
			ms_type_name(r->prefill_type), r->prefill_tokens,
			r->prefill_ms, r->prefill_tflops);
	fprintf(f, "\nratio = fused-matvec GB/s of quantized weights (B = 1, "
		   "32 experts per call) / the\ndevice-to-device copy GB/s; "
		   "exact = f32-accurate input (MATVEC), q8 = 8-bit\ninput "
		   "(MATVEC_Q8). Targets for the K-quants: exact >= 0.80; q8 "
		   ">= 0.60 (q2_K, q3_K,\nq4_K, q6_K).\n");
	for (int q8 = 0; q8 <= 1; q8++) {
		bool first = true;
		for (int i = 0; i < r->n_rows; i++) {
			const struct bench_gpu_row *w = &r->rows[i];
			if (!w->ran || !is_kquant(w->type) || r->copy_gbps <= 0 ||
			    (q8 && w->type == MS_TYPE_Q5_K))
				continue;
			const double q = (q8 ? w->q8_gbps : w->gbps)[BENCH_GPU_E32] /
					 r->copy_gbps;
			fprintf(f, "%s%s %.2f %s",
				!first ? ", "
				: q8   ? "target q8   "
				       : "target      ",
				ms_type_name(w->type), q,
				q >= (q8 ? 0.6 : 0.8) ? "met" : "BELOW");
			first = false;
		}
		if (!first)
			fprintf(f, "\n");
	}
}

void bench_gpu_json(const struct bench_gpu_report *r, struct cJSON *o)
{
	cJSON *g = cJSON_AddObjectToObject(o, "gpu");
	cJSON_AddStringToObject(g, "device", r->device);
	cJSON_AddStringToObject(g, "build", ms_gpu_build_info());
	cJSON_AddNumberToObject(g, "sms", r->sms);
	cJSON_AddNumberToObject(g, "copy_gbps", r->copy_gbps);
	cJSON_AddNumberToObject(g, "copy_gbps_median", r->copy_median_gbps);
	cJSON_AddNumberToObject(g, "copy_bytes", (double)r->copy_bytes);
	cJSON *ex = cJSON_AddObjectToObject(g, "expert");
	cJSON_AddNumberToObject(ex, "n_embd", (double)r->n_embd);
	cJSON_AddNumberToObject(ex, "n_ff", (double)r->n_ff);
	cJSON_AddNumberToObject(g, "ring_bytes", (double)r->ring_bytes);
	cJSON_AddBoolToObject(g, "pdl", r->pdl);
	if (r->calls)
		cJSON_AddNumberToObject(g, "calls", r->calls);
	cJSON *arr = cJSON_AddArrayToObject(g, "types");
	for (int i = 0; i < r->n_rows; i++) {
		const struct bench_gpu_row *w = &r->rows[i];
		cJSON *t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "type", ms_type_name(w->type));
		cJSON_AddNumberToObject(t, "expert_bytes",
					(double)w->expert_bytes);
		cJSON_AddBoolToObject(t, "matvec", w->ran);
		if (w->ran && r->calls) {
			cJSON_AddNumberToObject(t, "calls_ms", w->calls_ms);
		} else if (w->ran) {
			cJSON_AddNumberToObject(t, "ring_experts",
						w->ring_experts);
			for (int k = 0; k < BENCH_GPU_NCONF; k++) {
				cJSON *c = cJSON_AddObjectToObject(
					t, conf_names[k]);
				cJSON_AddNumberToObject(c, "experts",
							conf_experts[k]);
				cJSON_AddNumberToObject(c, "tokens",
							conf_tokens[k]);
				cJSON_AddNumberToObject(c, "gbps", w->gbps[k]);
				cJSON_AddNumberToObject(c, "gbps_median",
							w->median[k]);
				cJSON_AddNumberToObject(c, "us_per_call",
							w->us_call[k]);
				cJSON_AddNumberToObject(
					c, "ratio", copy_ratio(r, w->gbps[k]));
				cJSON_AddNumberToObject(c, "q8_gbps",
							w->q8_gbps[k]);
				cJSON_AddNumberToObject(c, "q8_gbps_median",
							w->q8_median[k]);
				cJSON_AddNumberToObject(c, "q8_us_per_call",
							w->q8_us_call[k]);
				cJSON_AddNumberToObject(
					c, "q8_ratio",
					copy_ratio(r, w->q8_gbps[k]));
			}
			cJSON *ch = r->n_chunks ? cJSON_AddArrayToObject(
							  t, "q8_b1_e32_chunks")
						: NULL;
			for (int k = 0; k < r->n_chunks; k++) {
				cJSON *c = cJSON_CreateObject();
				cJSON_AddNumberToObject(c, "bytes", r->chunks[k]);
				cJSON_AddNumberToObject(c, "gbps",
							w->chunk_gbps[k]);
				cJSON_AddNumberToObject(
					c, "ratio",
					copy_ratio(r, w->chunk_gbps[k]));
				cJSON_AddItemToArray(ch, c);
			}
		}
		cJSON_AddItemToArray(arr, t);
	}
	if (r->prefill_tokens) {
		cJSON *p = cJSON_AddObjectToObject(g, "prefill");
		cJSON_AddStringToObject(p, "type",
					ms_type_name(r->prefill_type));
		cJSON_AddNumberToObject(p, "tokens", r->prefill_tokens);
		cJSON_AddNumberToObject(p, "ms_per_expert", r->prefill_ms);
		cJSON_AddNumberToObject(p, "tflops", r->prefill_tflops);
	}
}

/* --chunks LIST: sizes like 5K or 20480, each MS_GPU_CHUNK_MIN..MAX. */
static int parse_chunks(const char *arg)
{
	char buf[256];
	if (strlen(arg) >= sizeof(buf)) {
		tool_error(CMD, "--chunks: a list of at most %d sizes",
			   BENCH_GPU_MAX_CHUNKS);
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", arg);
	n_sweep_chunks = 0;
	char *save = NULL;
	for (char *s = strtok_r(buf, ",", &save); s;
	     s = strtok_r(NULL, ",", &save)) {
		uint64_t v;
		if (n_sweep_chunks == BENCH_GPU_MAX_CHUNKS) {
			tool_error(CMD, "--chunks '%s': at most %d sizes", arg,
				   BENCH_GPU_MAX_CHUNKS);
			return -1;
		}
		if (ms_parse_size(s, &v) || v < MS_GPU_CHUNK_MIN ||
		    v > MS_GPU_CHUNK_MAX) {
			tool_error(CMD,
				   "--chunks: '%s': expected a size of %d..%d "
				   "bytes (like 10K)",
				   s, MS_GPU_CHUNK_MIN, MS_GPU_CHUNK_MAX);
			return -1;
		}
		sweep_chunks[n_sweep_chunks++] = (int)v;
	}
	if (!n_sweep_chunks) {
		tool_error(CMD, "--chunks '%s': no size", arg);
		return -1;
	}
	return 0;
}

static const char usage_line[] =
	"usage: moestream bench gpu [--json] [--types LIST] [--time S] "
	"[--device N] [--mem SIZE] [--shape E,F] [--chunks LIST] "
	"[--calls N] [--no-prefill] [--json-out FILE]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Measures, per quant type, the GB/s of quantized weights the "
		"GPU's fused decode\nmatvec reads (the exact kernel and the "
		"8-bit-activation one) on experts of\nGLM-4.7's shape (n_embd "
		"5120, n_ff 1536): B = 1 with 1, 8 and 32 experts per\ncall "
		"and B = 8 with 32, against the device-to-device copy bandwidth "
		"measured\nin the same run; and the cuBLAS prefill path once.\n"
		"\n"
		"  --json          the results as JSON\n"
		"  --types LIST    comma-separated (default: q2_K,q3_K,q4_K,"
		"q5_K,q6_K,q8_0,q4_0,\n"
		"                  mxfp4, the types with a fused kernel)\n"
		"  --time S        seconds per type (default 1)\n"
		"  --device N      the GPU (default 0)\n"
		"  --mem SIZE      device memory the experts are cycled over "
		"(default 1G; the copy\n"
		"                  measured is half of it, at most 512M)\n"
		"  --shape E,F     n_embd and n_ff of the expert (default "
		"5120,1536; multiples\n"
		"                  of 256 for the K-quants)\n"
		"  --chunks LIST   also time the 8-bit kernel (B = 1, 32 "
		"experts) with each of\n"
		"                  these chunk sizes, the weight bytes a CTA "
		"copies into shared\n"
		"                  memory at a time (e.g. 5K,10K,20K; %d..%d; "
		"default %d;\n"
		"                  the results are the same bits at every "
		"size)\n"
		"  --calls N       time nothing: per type, N calls of the "
		"figure held to the\n"
		"                  target (8-bit, B = 1, 32 experts) and no "
		"other launch, for a\n"
		"                  profiler (1..1000; e.g. ncu --kernel-name "
		"regex:mv_kernel)\n"
		"  --no-prefill    skip the cuBLAS prefill line\n"
		"  --json-out FILE the JSON to FILE as well as the table to "
		"stdout\n"
		"  -h, --help      this text\n"
		"\n"
		"exit: 0 ok; 1 a failure; 2 bad usage; 3 no GPU or built "
		"without CUDA\n",
		usage_line, MS_GPU_CHUNK_MIN, MS_GPU_CHUNK_MAX,
		MS_GPU_CHUNK_DEFAULT);
}

int bench_gpu_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "types", required_argument, 0, 'T' },
		{ "time", required_argument, 0, 's' },
		{ "device", required_argument, 0, 'd' },
		{ "mem", required_argument, 0, 'm' },
		{ "no-prefill", no_argument, 0, 'P' },
		{ "shape", required_argument, 0, 'S' },
		{ "json-out", required_argument, 0, 'J' },
		{ "chunks", required_argument, 0, 'C' },
		{ "calls", required_argument, 0, 'N' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint32_t types[BENCH_GPU_MAX_TYPES];
	int n_types = N_DEFAULT, device = 0;
	double seconds = 1.0;
	uint64_t mem = 0;
	bool json = false, prefill = true;
	const char *json_out = NULL;
	int c;
	memcpy(types, default_types, sizeof(default_types));
	n_sweep_chunks = 0;
	profile_calls = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'T':
			if (tool_parse_types(CMD, optarg, ms_dequant_supported,
					     types, BENCH_GPU_MAX_TYPES, &n_types))
				return tool_bad_usage(usage_line);
			break;
		case 's':
			if (tool_parse_seconds(CMD, optarg, 60, &seconds))
				return tool_bad_usage(usage_line);
			break;
		case 'd': {
			uint32_t u;
			if (tool_parse_u32(CMD, "device", optarg, &u) ||
			    u >= MS_GPU_MAX)
				return tool_bad_usage(usage_line);
			device = (int)u;
			break;
		}
		case 'm':
			if (ms_parse_size(optarg, &mem) || mem < (64u << 20) ||
			    mem > (256ull << 30)) {
				tool_error(CMD,
					   "--mem '%s': expected a size like "
					   "1G (64M .. 256G)",
					   optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case 'P':
			prefill = false;
			break;
		case 'J':
			json_out = optarg;
			break;
		case 'C':
			if (parse_chunks(optarg))
				return tool_bad_usage(usage_line);
			break;
		case 'N': {
			uint32_t u;
			if (tool_parse_u32(CMD, "calls", optarg, &u))
				return tool_bad_usage(usage_line);
			if (u < 1 || u > 1000) {
				tool_error(CMD, "--calls %u: expected 1..1000",
					   u);
				return tool_bad_usage(usage_line);
			}
			profile_calls = (int)u;
			break;
		}
		case 'S': {
			long long e = 0, f = 0;
			char tail;
			if (sscanf(optarg, "%lld,%lld%c", &e, &f, &tail) != 2 ||
			    e < 32 || f < 32 || e % 32 || f % 32 ||
			    e > (1 << 16) || f > (1 << 16)) {
				tool_error(CMD,
					   "--shape '%s': expected n_embd,n_ff, "
					   "multiples of 32 up to 65536",
					   optarg);
				return tool_bad_usage(usage_line);
			}
			shape_embd = e;
			shape_ff = f;
			break;
		}
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
	if (profile_calls && n_sweep_chunks) {
		tool_error(CMD, "--calls times nothing, so it has no chunk "
			   "sweep: give --calls or --chunks, not both");
		return tool_bad_usage(usage_line);
	}
	struct bench_gpu_report *rep = malloc(sizeof(*rep));
	if (!rep) {
		tool_error(CMD, "out of memory");
		return 1;
	}
	struct ms_err err = { 0 };
	int rc = bench_gpu_run(types, n_types, seconds, device, mem, prefill,
			       rep, &err);
	if (rc) {
		tool_error(CMD, "%s", err.msg);
		free(rep);
		return rc == -ENOTSUP || rc == -ENODEV ? EXIT_UNAVAILABLE : 1;
	}
	if (json || json_out) {
		cJSON *o = cJSON_CreateObject();
		bench_gpu_json(rep, o);
		char *s = cJSON_Print(o);
		cJSON_Delete(o);
		if (!s) {
			tool_error(CMD, "out of memory");
			free(rep);
			return 1;
		}
		if (json_out && tool_write_text(CMD, json_out, s)) {
			free(s);
			free(rep);
			return 1;
		}
		if (json)
			puts(s);
		free(s);
	}
	if (!json)
		bench_gpu_print(rep, stdout);
	free(rep);
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		return 1;
	}
	return 0;
}
