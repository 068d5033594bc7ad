/*
 * bench_gpu_decode.c - `moestream bench gpu-decode`: the GPU decoder
 * (run --device gpu) end to end, each figure against its bound measured in
 * the same run (issue 16's last two targets).
 *
 *  1. resident: every expert a token routes to is already in VRAM (where
 *     VRAM holds every expert the engine loads them all at open and routes
 *     one-token steps on the GPU; else a first pass over the same tokens
 *     put them there; the second pass is timed and must copy nothing). A decode step then reads, from VRAM, the
 *     resident tensors a token uses (all but the embedding) and its routed
 *     experts; at the device's own copy rate (device-to-device, read +
 *     written bytes, as `bench gpu` measures it) that takes
 *     bytes / rate: the bound. Target: tok/s >= 0.5 x the bound.
 *     The same steps again with the step's kernels launched one by one
 *     (no CUDA graph), where the device has PDL, without it (each
 *     kernel waiting for the one before to end), and where the steps
 *     routed with the one-launch router (ms_gpu_route_gemv_topk), with
 *     the router's product through cuBLAS and its top-k apart: the
 *     baselines of the graph's, PDL's and that router's gains.
 *  1b. --profile: the resident steps again, launched one by one with a
 *     GPU event between the parts of each block (ms_engine_gpu_profile):
 *     per part the device's time per token, the weight bytes it read and
 *     their rate against the copy rate, to say where a step's time goes.
 *  2. streaming (skipped with --no-stream): the same tokens through a
 *     private moestreamd whose RAM cache holds every expert (--stream-from
 *     daemon, the default), or through the engine's own expert cache
 *     holding every expert (--stream-from cache; both: each), with a VRAM
 *     expert cache of only two layers' experts, so every layer's experts
 *     are copied host -> device (the GPU tier, the next layer's guess
 *     copied while this one computes). Per token: the copy stream's busy
 *     time (the tier's CUDA events) and the compute time of pass 1. Target:
 *     the step <= 1.1 x max(copy, compute), i.e. copies hidden under
 *     compute or the other way round, and tok/s within 10% of the rate the
 *     host tier delivers a token's experts at (1 / copy time) when the
 *     copies are the longer.
 *
 * The token ids are random (fixed seed) and fed, not sampled: both passes
 * and both parts route the same way. Without a GPU: exit 3 with the
 * reason; on the CPU emulator of CUDA the figures are not a GPU's and say
 * so.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench_rpc.h"
#include "moestream/engine.h"
#include "moestream/kernels.h"
#include "tools.h"

#define CMD "bench gpu-decode"

static const char usage_line[] =
	"usage: moestream bench gpu-decode --model M [--tokens N] [--prompt N] "
	"[--no-stream | --stream-from daemon|cache|both] [--profile] [--json]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n\n"
		"The GPU decoder (moestream run --device gpu) end to end, against "
		"bounds measured\nin the same run:\n"
		"  resident   every routed expert already in VRAM: decode tok/s "
		"against the\n"
		"             device's copy rate over the bytes a token reads "
		"(resident tensors\n"
		"             but the embedding, and its experts); target >= 0.5; "
		"and the same\n"
		"             without the CUDA graph, without PDL (Hopper's "
		"programmatic\n"
		"             dependent launch), and with the router through "
		"cuBLAS, as baselines\n"
		"  streaming  through a private moestreamd holding every expert in "
		"RAM (or the\n"
		"             engine's own expert cache: --stream-from), with a VRAM "
		"expert cache\n"
		"             of two layers: the step against max(copy, compute) per "
		"token;\n"
		"             target <= 1.1\n\n"
		"options:\n"
		"  --model M     the GGUF (gpu-check uses the GLM-4.7 preset cut to "
		"4 MoE layers)\n"
		"  --tokens N    decode steps timed (default 32)\n"
		"  --prompt N    prompt tokens before them (default 16)\n"
		"  --no-stream   the resident part only\n"
		"  --stream-from daemon|cache|both\n"
		"                where the streaming part's experts come from: a "
		"private\n"
		"                moestreamd (default), the engine's own expert "
		"cache (run\n"
		"                without --socket), or each in turn\n"
		"  --profile     the resident steps once more, launched one by one "
		"with GPU events\n"
		"                between the parts of each block: time per token, "
		"bytes and GB/s\n"
		"                per part (attention, router, experts, head, ...)\n"
		"  --json        the figures as JSON\n"
		"exit: 0 ran (the targets are reported, not enforced), 1 failed, "
		"2 bad usage,\n3 no usable GPU\n",
		usage_line);
}

struct pass {
	double decode_s;
	struct ms_engine_stats st0, st1; /* around the timed steps */
};

/* The streaming part's figures, for one source. */
struct stream_res {
	double tokps, copy_tok, step;
	uint64_t copied, hits;
};

/* Prompt then n single steps over ids, each computing its logits as a
 * decode step does (the output head is among the bytes a token reads);
 * the second of two passes timed. */
static int two_passes(struct ms_engine *e, const int32_t *ids, int P, int N,
		      float *logits, struct pass *out, struct ms_err *err)
{
	for (int k = 0; k < 2; k++) {
		ms_engine_reset(e);
		int rc = ms_engine_eval(e, ids, (size_t)P, logits, false, err);
		if (rc)
			return rc;
		ms_engine_get_stats(e, &out->st0);
		double t0 = tool_now_s();
		for (int i = P; i < P + N; i++)
			if ((rc = ms_engine_eval(e, ids + i, 1, logits, false,
						 err)))
				return rc;
		out->decode_s = tool_now_s() - t0;
		ms_engine_get_stats(e, &out->st1);
	}
	return 0;
}

/* two_passes in an engine of its own, opened with cfg. */
static int own_passes(const struct ms_engine_config *cfg, const int32_t *ids,
		      uint32_t P, uint32_t N, float *logits, struct pass *b,
		      struct ms_err *err)
{
	struct ms_engine *e = NULL;
	int rc = ms_engine_open(&e, cfg, err);
	if (!rc)
		rc = two_passes(e, ids, (int)P, (int)N, logits, b, err);
	ms_engine_close(e);
	return rc;
}

/* The timed pass's tok/s, in an engine opened with cfg (a baseline). */
static int baseline(const struct ms_engine_config *cfg, const int32_t *ids,
		    uint32_t P, uint32_t N, float *logits, double *tokps,
		    struct ms_err *err)
{
	struct pass b;
	int rc = own_passes(cfg, ids, P, N, logits, &b, err);
	if (!rc)
		*tokps = N / b.decode_s;
	return rc;
}

/* The same tokens with a VRAM cache of two layers' experts, on cfg's
 * source. */
static int stream_part(const struct ms_engine_config *cfg, const int32_t *ids,
		       uint32_t P, uint32_t N, float *logits,
		       struct stream_res *r, struct ms_err *err)
{
	struct pass b;
	int rc = own_passes(cfg, ids, P, N, logits, &b, err);
	if (rc)
		return rc;
	r->tokps = N / b.decode_s;
	r->copied = b.st1.vram_misses - b.st0.vram_misses;
	r->hits = b.st1.vram_hits - b.st0.vram_hits;
	r->copy_tok = (double)(b.st1.vram_copy_ns - b.st0.vram_copy_ns) / 1e9 / N;
	r->step = b.decode_s / N;
	return 0;
}

static void print_stream(const char *name, const struct stream_res *r,
			 uint32_t slots, double comp_tok)
{
	double mx = r->copy_tok > comp_tok ? r->copy_tok : comp_tok;
	printf("streaming  from %s: %.2f tok/s with a VRAM cache of %u experts: "
	       "%llu copies in, %llu hits; per token: step %.2f ms, copy %.2f "
	       "ms, compute %.2f ms; step / max = %.3f (target <= 1.1)\n",
	       name, r->tokps, slots, (unsigned long long)r->copied,
	       (unsigned long long)r->hits, r->step * 1e3, r->copy_tok * 1e3,
	       comp_tok * 1e3, mx > 0 ? r->step / mx : 0);
	fflush(stdout);
}

/* --profile's table: per part, the device's time and the weight bytes per
 * token and their rate against the copy rate. */
static void print_profile(const struct ms_gpu_profile *p, double step_s,
			  double copy_gbps)
{
	double n = p->steps ? (double)p->steps : 1, total = 0, bytes = 0;
	for (int i = 0; i < MS_GPU_PART_COUNT; i++) {
		total += p->ms[i];
		bytes += (double)p->bytes[i];
	}
	printf("profile    %llu one-token steps launched one by one, a GPU "
	       "event between the parts of each block (step %.3f ms on the "
	       "host's clock):\n", (unsigned long long)p->steps, step_s * 1e3);
	printf("profile    %-9s %10s %6s %10s %8s %8s\n", "part", "us/token",
	       "share", "MB/token", "GB/s", "x copy");
	for (int i = 0; i < MS_GPU_PART_COUNT; i++) {
		double ms = p->ms[i] / n, mb = (double)p->bytes[i] / n / 1e6;
		double gbps = ms > 0 ? mb / ms : 0; /* MB/ms = GB/s */
		printf("profile    %-9s %10.1f %5.1f%% %10.2f %8.1f %8.3f\n",
		       ms_gpu_part_name((enum ms_gpu_part)i), ms * 1e3,
		       total > 0 ? 100 * p->ms[i] / total : 0, mb, gbps,
		       copy_gbps > 0 ? gbps / copy_gbps : 0);
	}
	double ms = total / n, mb = bytes / n / 1e6;
	printf("profile    %-9s %10.1f %5.1f%% %10.2f %8.1f %8.3f\n", "all",
	       ms * 1e3, 100.0, mb, ms > 0 ? mb / ms : 0,
	       ms > 0 && copy_gbps > 0 ? mb / ms / copy_gbps : 0);
}

/* The same table as JSON. */
static cJSON *profile_json(const struct ms_gpu_profile *p)
{
	cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "parts");
	double n = p->steps ? (double)p->steps : 1;
	cJSON_AddNumberToObject(o, "steps", (double)p->steps);
	for (int i = 0; i < MS_GPU_PART_COUNT; i++) {
		cJSON *x = cJSON_CreateObject();
		cJSON_AddStringToObject(x, "part",
					ms_gpu_part_name((enum ms_gpu_part)i));
		cJSON_AddNumberToObject(x, "s_per_token", p->ms[i] / 1e3 / n);
		cJSON_AddNumberToObject(x, "bytes_per_token",
					(double)p->bytes[i] / n);
		cJSON_AddItemToArray(a, x);
	}
	return o;
}

int bench_gpu_decode_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, 0, 'm' },
		{ "tokens", required_argument, 0, 'n' },
		{ "prompt", required_argument, 0, 'p' },
		{ "no-stream", no_argument, 0, 's' },
		{ "stream-from", required_argument, 0, 'f' },
		{ "json", no_argument, 0, 'j' },
		{ "profile", no_argument, 0, 'P' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 }
	};
	const char *model = NULL;
	uint32_t N = 32, P = 16;
	bool stream = true, json = false, from_daemon = true, from_cache = false;
	bool profile = false;
	int o;
	optind = 1;
	while ((o = getopt_long(argc, argv, "m:n:p:jh", opts, NULL)) != -1) {
		switch (o) {
		case 'm': model = optarg; break;
		case 'n':
			if (tool_parse_u32(CMD, "--tokens", optarg, &N) || !N)
				return EXIT_USAGE;
			break;
		case 'p':
			if (tool_parse_u32(CMD, "--prompt", optarg, &P) || !P)
				return EXIT_USAGE;
			break;
		case 's': stream = false; break;
		case 'f':
			from_daemon = !strcmp(optarg, "daemon") ||
				      !strcmp(optarg, "both");
			from_cache = !strcmp(optarg, "cache") ||
				     !strcmp(optarg, "both");
			if (!from_daemon && !from_cache) {
				tool_error(CMD, "--stream-from '%s': expected "
					   "daemon, cache or both", optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case 'j': json = true; break;
		case 'P': profile = true; break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	if (!model || optind < argc) {
		tool_error(CMD, model ? "unexpected argument '%s'"
				      : "--model is required%s",
			   model ? argv[optind] : "");
		return tool_bad_usage(usage_line);
	}
	if (tool_gpu_usable(CMD))
		return EXIT_UNAVAILABLE;
	bool emu = strstr(ms_gpu_build_info(), "emulation") != NULL;

	struct ms_err err = { 0 };
	struct ms_engine_config cfg = { .model = model, .gpu = true, .quiet = true,
					.n_ctx = P + N + 8, .n_batch = 64 };
	struct ms_engine *e = NULL;
	struct ms_gpu_ctx *ctx = NULL;
	struct bench_daemon d = { 0 };
	int32_t *ids = NULL;
	float *logits = NULL;
	int rc = 1;
	fprintf(stderr, "bench gpu-decode: loading %s to the GPU ...\n", model);
	if (ms_engine_open(&e, &cfg, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	/* a copy: the engine is closed and opened again below */
	struct ms_engine_info info = *ms_engine_info(e);
	const struct ms_engine_info *in = &info;
	ids = malloc((size_t)(P + N) * sizeof(*ids));
	logits = malloc((size_t)in->n_vocab * sizeof(*logits));
	if (!ids || !logits) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	uint64_t s = 0x9e3779b97f4a7c15ull;
	for (uint32_t i = 0; i < P + N; i++)
		ids[i] = (int32_t)(tool_splitmix(&s) % in->n_vocab);

	/* 1. resident */
	struct pass a;
	if (two_passes(e, ids, (int)P, (int)N, logits, &a, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	uint64_t copied_a = a.st1.vram_misses - a.st0.vram_misses;
	uint32_t n_moe = in->n_moe_run, K = in->n_expert_used;
	double expert = n_moe ? (double)in->expert_bytes /
					(double)n_moe /
					(double)in->n_expert
			      : 0;
	double bytes = (double)in->resident_token_bytes + n_moe * K * expert;
	double best = 0, med = 0;
	if (ms_gpu_ctx_init(&ctx, 0, NULL, &err) ||
	    ms_gpu_copy_bandwidth(ctx, 512ull << 20, 10, &best, &med, &err)) {
		tool_error(CMD, "the device's copy bandwidth: %s", err.msg);
		goto out;
	}
	double tokps_a = N / a.decode_s, bound = best * 1e9 / bytes;
	bool all_a = in->vram_all_experts, graph_a = ms_engine_info(e)->gpu_graph;
	bool pdl_a = ms_engine_info(e)->gpu_pdl;
	bool fused_a = ms_engine_info(e)->gpu_router_fused;
	char pdl_note[sizeof(ms_engine_info(e)->gpu_pdl_note)];
	snprintf(pdl_note, sizeof(pdl_note), "%s", ms_engine_info(e)->gpu_pdl_note);
	uint32_t nodes_a = ms_engine_info(e)->gpu_graph_nodes;
	uint64_t slot = in->vram_expert_slots
				? in->vram_expert_bytes / in->vram_expert_slots
				: 0;
	ms_engine_close(e);
	e = NULL;

	/* 1b. the same with the step's kernels launched one by one, 1c.
	 * without PDL (each kernel waiting for the one before to end), 1e.
	 * with the router's product through cuBLAS and its top-k apart: the
	 * baselines of the graph's, PDL's and the one-launch router's gains */
	double tokps_e = 0, tokps_n = 0, tokps_r = 0;
	struct ms_engine_config ce = cfg, cn = cfg, cr = cfg;
	ce.gpu_no_graph = true;
	cn.gpu_no_pdl = true;
	cr.gpu_router_cublas = true;
	if ((graph_a && baseline(&ce, ids, P, N, logits, &tokps_e, &err)) ||
	    (pdl_a && baseline(&cn, ids, P, N, logits, &tokps_n, &err)) ||
	    (fused_a && baseline(&cr, ids, P, N, logits, &tokps_r, &err))) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}

	/* 1d. where the time goes: the same steps, timed part by part */
	struct ms_gpu_profile prof = { 0 };
	double prof_step = 0;
	if (profile) {
		struct pass pp;
		struct ms_engine_config cp = cfg;
		cp.gpu_profile = true;
		if (ms_engine_open(&e, &cp, &err) ||
		    two_passes(e, ids, (int)P, (int)N, logits, &pp, &err) ||
		    ms_engine_gpu_profile(e, &prof, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		prof_step = pp.decode_s / N;
		ms_engine_close(e);
		e = NULL;
	}

	/* the text as each part ends (a run cut short keeps what it had) */
	if (!json) {
		printf("bench gpu-decode: %s on %s%s\n", model, in->gpu_name,
		       emu ? " (the CPU emulator of CUDA: these figures are not a "
			     "GPU's)"
			   : "");
		printf("per token  %.1f MB from VRAM: resident tensors %.1f MB (all "
		       "but the embedding) + %u x %u experts of %.2f MB\n",
		       bytes / 1e6, (double)in->resident_token_bytes / 1e6, n_moe, K,
		       expert / 1e6);
		printf("resident   %u decode steps in %.3f s: %.2f tok/s; bound %.2f "
		       "tok/s (copy rate %.0f GB/s); ratio %.3f (target >= 0.5); "
		       "%llu copies in the timed pass; routing on the %s%s%s\n",
		       N, a.decode_s, tokps_a, bound, best, tokps_a / bound,
		       (unsigned long long)copied_a, all_a ? "GPU" : "host",
		       graph_a ? ", steps replayed from a CUDA graph" : "",
		       pdl_a ? ", kernels launched with PDL" : "");
		if (graph_a)
			printf("resident   the step's CUDA graph: %u nodes (%.1f per "
			       "block)\n", nodes_a,
			       in->n_block_run ? (double)nodes_a / in->n_block_run
						: 0.0);
		if (graph_a)
			printf("resident   the same, kernels launched one by one: "
			       "%.2f tok/s; ratio %.3f\n", tokps_e, tokps_e / bound);
		if (!pdl_a)
			printf("resident   no PDL: %s\n", pdl_note);
		if (pdl_a)
			printf("resident   the same without PDL (each kernel "
			       "waits for the one before to end): %.2f tok/s; "
			       "ratio %.3f; PDL's gain x%.3f\n", tokps_n,
			       tokps_n / bound, tokps_a / tokps_n);
		if (fused_a)
			printf("resident   the same with the router's product "
			       "through cuBLAS and its top-k apart: %.2f tok/s; "
			       "ratio %.3f; the one-launch router's gain x%.3f\n",
			       tokps_r, tokps_r / bound, tokps_a / tokps_r);
		if (profile)
			print_profile(&prof, prof_step, best);
		fflush(stdout);
	}

	/* 2. streaming: each source asked for, its RAM cache holding every
	 * expert */
	struct stream_res sd = { 0 }, sc = { 0 };
	double comp_tok = a.decode_s / N;
	const uint64_t hold_all = in->expert_bytes + in->expert_bytes / 4 +
				  (64ull << 20);
	if (stream && from_daemon) {
		struct bench_daemon_opts dopt = {
			.model = model,
			.cache_bytes = hold_all,
		};
		fprintf(stderr, "bench gpu-decode: starting a private moestreamd "
			"...\n");
		if (bench_daemon_start(&d, &dopt, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		struct ms_engine_config cd = cfg;
		cd.socket = d.socket;
		cd.vram_experts = slot * 2 * K;
		if (stream_part(&cd, ids, P, N, logits, &sd, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		if (!json)
			print_stream("moestreamd", &sd, 2 * K, comp_tok);
	}
	if (stream && from_cache) {
		/* the engine's own cache (the first pass reads the experts
		 * from the file) */
		struct ms_engine_config cc = cfg;
		cc.cache_size = hold_all;
		cc.vram_experts = slot * 2 * K;
		fprintf(stderr, "bench gpu-decode: streaming from the engine's "
			"expert cache ...\n");
		if (stream_part(&cc, ids, P, N, logits, &sc, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		if (!json)
			print_stream("the expert cache", &sc, 2 * K, comp_tok);
	}
	if (json) {
		const struct {
			const char *key;
			bool on;
			const struct stream_res *r;
		} src[2] = {
			{ "stream", stream && from_daemon, &sd },
			{ "stream_cache", stream && from_cache, &sc },
		};
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "model", model);
		cJSON_AddStringToObject(j, "device", in->gpu_name);
		cJSON_AddBoolToObject(j, "emulated", emu);
		cJSON_AddNumberToObject(j, "tokens", N);
		cJSON_AddNumberToObject(j, "bytes_per_token", bytes);
		cJSON_AddNumberToObject(j, "copy_gbps", best);
		cJSON_AddNumberToObject(j, "resident_tokps", tokps_a);
		cJSON_AddNumberToObject(j, "resident_bound_tokps", bound);
		cJSON_AddNumberToObject(j, "resident_ratio", tokps_a / bound);
		cJSON_AddNumberToObject(j, "resident_copies", (double)copied_a);
		cJSON_AddBoolToObject(j, "resident_gpu_routing", all_a);
		cJSON_AddBoolToObject(j, "resident_cuda_graph", graph_a);
		cJSON_AddNumberToObject(j, "resident_graph_nodes", nodes_a);
		if (graph_a) {
			cJSON_AddNumberToObject(j, "resident_eager_tokps", tokps_e);
			cJSON_AddNumberToObject(j, "resident_eager_ratio",
						tokps_e / bound);
		}
		cJSON_AddBoolToObject(j, "resident_pdl", pdl_a);
		if (pdl_a) {
			cJSON_AddNumberToObject(j, "resident_nopdl_tokps", tokps_n);
			cJSON_AddNumberToObject(j, "resident_nopdl_ratio",
						tokps_n / bound);
		}
		cJSON_AddBoolToObject(j, "resident_router_fused", fused_a);
		if (fused_a) {
			cJSON_AddNumberToObject(j, "resident_router_cublas_tokps",
						tokps_r);
			cJSON_AddNumberToObject(j, "resident_router_cublas_ratio",
						tokps_r / bound);
		}
		if (profile) {
			cJSON_AddItemToObject(j, "profile", profile_json(&prof));
			cJSON_AddNumberToObject(j, "profile_step_s", prof_step);
		}
		for (int i = 0; i < 2; i++) {
			if (!src[i].on)
				continue;
			const struct stream_res *r = src[i].r;
			double mx = r->copy_tok > comp_tok ? r->copy_tok : comp_tok;
			char k[64];
#define KEY(suffix) (snprintf(k, sizeof(k), "%s_%s", src[i].key, suffix), k)
			cJSON_AddNumberToObject(j, KEY("tokps"), r->tokps);
			cJSON_AddNumberToObject(j, KEY("copy_s_per_token"), r->copy_tok);
			cJSON_AddNumberToObject(j, KEY("compute_s_per_token"), comp_tok);
			cJSON_AddNumberToObject(j, KEY("overlap"),
						mx > 0 ? r->step / mx : 0);
			cJSON_AddNumberToObject(j, KEY("copies"), (double)r->copied);
			cJSON_AddNumberToObject(j, KEY("hits"), (double)r->hits);
#undef KEY
		}
		char *str = cJSON_Print(j);
		printf("%s\n", str);
		free(str);
		cJSON_Delete(j);
	}
	rc = 0;
out:
	ms_engine_close(e);
	ms_gpu_ctx_free(ctx);
	if (d.pid)
		bench_daemon_stop(&d, NULL);
	free(ids);
	free(logits);
	return rc;
}
