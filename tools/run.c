/*
 * run.c - `moestream run`: text from a MoE GGUF. The engine (engine/) runs
 * the forward pass on the CPU from resident tensors in its own memory, with
 * routed experts streamed through an embedded expert cache (default) or a
 * moestreamd (--socket); this file is the command: options, the prompt, the
 * sampling loop, the figures at the end, Ctrl-C.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/engine.h"
#include "tools.h"

#define CMD "run"

static volatile int stop_flag;

static void on_sigint(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static const char usage_line[] =
	"usage: moestream run MODEL (-p TEXT | -f FILE) [-n N] [--socket S | "
	"--cache-size SZ]\n"
	"       [--threads T] [--ctx N] [--batch N] [--chat] [--temp T] "
	"[--seed S] [--json]\n"
	"       [--device cpu|gpu] [--vram-experts SZ]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Generates text from a Mixture-of-Experts GGUF (glm4moe: GLM-4.5/4.6/"
		"4.7;\nqwen3moe: Qwen3-30B-A3B, 235B-A22B) on the CPU. The tensors "
		"every token uses are\nread into memory once; the routed experts "
		"stream from disk into an expert cache\nas the router picks them "
		"(O_DIRECT reads, no mapping of the file), so a model\nfar larger "
		"than RAM runs. The next layer's experts are guessed from each\n"
		"layer's input (speculative routing) and read while this one "
		"computes.\n"
		"\noptions:\n"
		"  -p, --prompt TEXT      the prompt\n"
		"  -f, --file FILE        the prompt from FILE ('-': stdin)\n"
		"  -n, --n-predict N      tokens to generate (default 128); stops "
		"earlier at an\n"
		"                         end-of-generation token\n"
		"  --chat                 wrap the prompt as one user turn in the "
		"model's chat\n"
		"                         template (Qwen3, GLM-4.5/4.6, GLM-4.7 built in)\n"
		"  --chat-template NAME   use this template: qwen3, glm4 (GLM-4.5/4.6), glm47\n"
		"  --socket PATH          take experts from a running moestreamd "
		"(same model)\n"
		"  --cache-size SIZE      the embedded expert cache (default: the "
		"RAM left under\n"
		"                         the cgroup limit or MemAvailable, less "
		"256 MiB; at most\n"
		"                         what every expert needs; printed)\n"
		"  --threads N            threads for the products (default: all "
		"CPUs)\n"
		"  --ctx N                KV cache tokens (default 4096)\n"
		"  --batch N              prompt tokens per pass (default 64)\n"
		"  --temp T               0: greedy; default 0.8\n"
		"  --top-k K, --top-p P, --min-p P, --repeat-penalty R, "
		"--repeat-last-n N\n"
		"                         sampling as llama.cpp (defaults 40, 0.95, "
		"0.05, 1.0, 64)\n"
		"  --seed S               the sampler's seed (default: from the "
		"clock)\n"
		"  --no-speculate         no speculative prefetch hints\n"
		"  --activations A        q8 (default): round the activations of "
		"every K-quant\n"
		"                         product to 8 bits and compute in "
		"integers, as llama.cpp's\n"
		"                         CPU backend does (faster; ~1e-2 "
		"relative per product),\n"
		"                         and decode steps' attention with its "
		"f16 accumulator;\n"
		"                         f32: exact f32 activations (the C "
		"reference)\n"
		"  --device D             cpu (default) or gpu: the forward pass on "
		"GPU 0, resident\n"
		"                         tensors and the KV cache in VRAM, "
		"experts copied into a\n"
		"                         VRAM expert cache from the expert "
		"cache or daemon; with\n"
		"                         q8 activations the 8-bit matvec (per 32 "
		"values, as ggml's\n"
		"                         q8_1), with f32 the exact one; exit 3 "
		"where there is no\n"
		"                         usable GPU\n"
		"  --vram-experts SIZE    the VRAM expert cache (default: the VRAM "
		"left, less 1.5 GB)\n"
		"  --json                 the figures as one JSON object on stdout "
		"(the text then\n"
		"                         goes to stderr)\n"
		"\nAt the end (or at Ctrl-C), on stderr: prompt tokens and prefill "
		"tok/s, generated\ntokens and decode tok/s, expert hit rate, GB "
		"read, the share of decode time\nspent waiting for experts, "
		"speculation accuracy, peak RSS.\n"
		"examples:\n"
		"  moestream run model.gguf -p 'The capital of France is' -n 32 "
		"--temp 0\n"
		"  moestream run GLM-4.7-UD-Q2_K_XL-00001-of-00003.gguf --chat -p "
		"'Hello' --cache-size 24G\n"
		"exit codes: 0 ok (also after Ctrl-C), 1 failed (bad model, no "
		"tokenizer,\nprompt too long, daemon gone), 2 bad usage, 3 --device gpu without a "
		"usable GPU\n",
		usage_line);
}

static int parse_float(const char *opt, const char *s, double lo, double hi,
		       double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		tool_error(CMD, "%s '%s': expected a number in [%g, %g]", opt, s,
			   lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

int cmd_run(int argc, char **argv)
{
	enum {
		O_SOCKET = 256, O_CACHE, O_THREADS, O_CTX, O_BATCH, O_CHAT,
		O_TMPL, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_REPN, O_SEED,
		O_JSON, O_NOSPEC, O_ACT, O_DEVICE, O_VRAM,
	};
	static const struct option opts[] = {
		{ "prompt", required_argument, 0, 'p' },
		{ "file", required_argument, 0, 'f' },
		{ "n-predict", required_argument, 0, 'n' },
		{ "socket", required_argument, 0, O_SOCKET },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "threads", required_argument, 0, O_THREADS },
		{ "ctx", required_argument, 0, O_CTX },
		{ "batch", required_argument, 0, O_BATCH },
		{ "chat", no_argument, 0, O_CHAT },
		{ "chat-template", required_argument, 0, O_TMPL },
		{ "temp", required_argument, 0, O_TEMP },
		{ "top-k", required_argument, 0, O_TOPK },
		{ "top-p", required_argument, 0, O_TOPP },
		{ "min-p", required_argument, 0, O_MINP },
		{ "repeat-penalty", required_argument, 0, O_REP },
		{ "repeat-last-n", required_argument, 0, O_REPN },
		{ "seed", required_argument, 0, O_SEED },
		{ "json", no_argument, 0, O_JSON },
		{ "no-speculate", no_argument, 0, O_NOSPEC },
		{ "activations", required_argument, 0, O_ACT },
		{ "device", required_argument, 0, O_DEVICE },
		{ "vram-experts", required_argument, 0, O_VRAM },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct ms_engine_config cfg = { .q8_activations = true };
	struct ms_sampler_params sp;
	ms_sampler_params_default(&sp);
	const char *prompt = NULL, *file = NULL, *tmpl_name = NULL;
	uint32_t n_predict = 128, u;
	bool chat = false, json = false;
	double d;
	int c;
	while ((c = getopt_long(argc, argv, "p:f:n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'p': prompt = optarg; break;
		case 'f': file = optarg; break;
		case 'n':
			if (tool_parse_u32(CMD, "-n", optarg, &n_predict))
				return EXIT_USAGE;
			break;
		case O_SOCKET: cfg.socket = optarg; break;
		case O_CACHE:
			if (tool_parse_size(CMD, "--cache-size", optarg,
					    &cfg.cache_size))
				return EXIT_USAGE;
			break;
		case O_THREADS:
			if (tool_parse_u32(CMD, "--threads", optarg, &u) || u > 512)
				return EXIT_USAGE;
			cfg.n_threads = (int)u;
			break;
		case O_CTX:
			if (tool_parse_u32(CMD, "--ctx", optarg, &cfg.n_ctx) ||
			    !cfg.n_ctx)
				return EXIT_USAGE;
			break;
		case O_BATCH:
			if (tool_parse_u32(CMD, "--batch", optarg, &cfg.n_batch) ||
			    !cfg.n_batch || cfg.n_batch > 4096) {
				tool_error(CMD, "--batch: 1..4096");
				return EXIT_USAGE;
			}
			break;
		case O_CHAT: chat = true; break;
		case O_TMPL: tmpl_name = optarg; chat = true; break;
		case O_TEMP:
			if (parse_float("--temp", optarg, 0, 100, &d))
				return EXIT_USAGE;
			sp.temp = (float)d;
			break;
		case O_TOPK:
			if (tool_parse_u32(CMD, "--top-k", optarg, &u))
				return EXIT_USAGE;
			sp.top_k = (int32_t)u;
			break;
		case O_TOPP:
			if (parse_float("--top-p", optarg, 0, 1, &d))
				return EXIT_USAGE;
			sp.top_p = (float)d;
			break;
		case O_MINP:
			if (parse_float("--min-p", optarg, 0, 1, &d))
				return EXIT_USAGE;
			sp.min_p = (float)d;
			break;
		case O_REP:
			if (parse_float("--repeat-penalty", optarg, 0.01, 100, &d))
				return EXIT_USAGE;
			sp.repeat_penalty = (float)d;
			break;
		case O_REPN:
			if (tool_parse_u32(CMD, "--repeat-last-n", optarg, &u))
				return EXIT_USAGE;
			sp.repeat_last_n = (int32_t)u;
			break;
		case O_SEED: {
			char *end;
			errno = 0;
			unsigned long long s = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end) {
				tool_error(CMD, "--seed '%s': expected a whole number",
					   optarg);
				return EXIT_USAGE;
			}
			sp.seed = s;
			break;
		}
		case O_JSON: json = true; break;
		case O_NOSPEC: cfg.no_speculate = true; break;
		case O_ACT:
			if (tool_parse_activations(CMD, optarg,
						   &cfg.q8_activations))
				return 2;
			break;
		case O_DEVICE:
			if (tool_parse_device(CMD, optarg, &cfg.gpu))
				return EXIT_USAGE;
			break;
		case O_VRAM:
			if (tool_parse_size(CMD, "--vram-experts", optarg,
					    &cfg.vram_experts))
				return EXIT_USAGE;
			break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	const char *model = tool_one_model(CMD, argc, argv, optind);
	if (!model)
		return tool_bad_usage(usage_line);
	if (!!prompt == !!file) {
		tool_error(CMD, "give the prompt with -p TEXT or -f FILE (one of "
			   "them)");
		return tool_bad_usage(usage_line);
	}
	if (cfg.socket && cfg.cache_size) {
		tool_error(CMD, "--socket and --cache-size exclude each other: the "
			   "daemon's cache is sized by moestreamd");
		return EXIT_USAGE;
	}
	if (cfg.vram_experts && !cfg.gpu) {
		tool_error(CMD, "--vram-experts sizes the GPU's expert cache: it "
			   "needs --device gpu");
		return EXIT_USAGE;
	}
	if (cfg.gpu && tool_gpu_usable(CMD))
		return EXIT_UNAVAILABLE;
	enum ms_chat_tmpl forced = MS_CHAT_NONE;
	if (tmpl_name && (forced = ms_chat_from_name(tmpl_name)) == MS_CHAT_NONE) {
		tool_error(CMD, "--chat-template '%s': known are qwen3, glm4, glm47",
			   tmpl_name);
		return EXIT_USAGE;
	}

	char *text = NULL;
	size_t text_len = 0;
	if (file) {
		if (tool_read_input(CMD, file, 64u << 20, &text, &text_len))
			return 1;
	} else {
		text = strdup(prompt);
		text_len = strlen(prompt);
	}

	struct ms_err err = { 0 };
	struct ms_engine *e = NULL;
	struct ms_sampler *smp = NULL;
	struct ms_tokens toks = { 0 };
	float *logits = NULL;
	FILE *out = json ? stderr : stdout;
	int rc = 1;
	cfg.model = model;
	if (ms_engine_open(&e, &cfg, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto done;
	}
	const struct ms_engine_info *info = ms_engine_info(e);
	const struct ms_vocab *v = ms_engine_vocab(e);
	char a[32], b[32], k[32];
	fprintf(stderr, "moestream run: %s, %u blocks (%u MoE), resident %s (%.0f%% "
		"on 2 MiB pages), KV %s for %u tokens\n", info->arch,
		info->n_block_run, info->n_moe_run,
		fmt_bytes(info->resident_bytes, a, sizeof(a)),
		100.0 * (double)info->resident_huge_bytes /
			(double)(info->resident_bytes ? info->resident_bytes : 1),
		fmt_bytes(info->kv_bytes, b, sizeof(b)), info->n_ctx);
	if (cfg.gpu) {
		fprintf(stderr, "moestream run: GPU %s: resident %s, KV %s and an "
			"expert cache of %s (%u experts) in VRAM\n", info->gpu_name,
			fmt_bytes(info->vram_resident_bytes, a, sizeof(a)),
			fmt_bytes(info->vram_kv_bytes, b, sizeof(b)),
			fmt_bytes(info->vram_expert_bytes, k, sizeof(k)),
			info->vram_expert_slots);
		fprintf(stderr, "moestream run: experts are copied into VRAM from "
			"the %s's memory, %s\n", cfg.socket ? "daemon" : "expert cache",
			info->vram_copy_mode);
		if (info->vram_all_experts)
			fprintf(stderr, "moestream run: every expert is in VRAM: "
				"one-token steps route on the GPU\n");
		fprintf(stderr, "moestream run: of the resident tensors the host "
			"keeps %s (the embedding, the routers' biases)\n",
			fmt_bytes(info->resident_host_bytes, a, sizeof(a)));
	}
	if (cfg.socket)
		fprintf(stderr, "moestream run: experts from %s\n", info->cache_mode);
	else
		fprintf(stderr, "moestream run: expert cache %s of %s of experts "
			"(%.0f%%): %s\n", fmt_bytes(info->cache_bytes, a, sizeof(a)),
			fmt_bytes(info->expert_bytes, k, sizeof(k)),
			info->expert_bytes ? 100.0 * (double)info->cache_bytes /
						     (double)info->expert_bytes
					   : 0.0,
			info->cache_mode);

	if (chat) {
		enum ms_chat_tmpl t = forced;
		if (t == MS_CHAT_NONE && ms_engine_chat_template(e, &t, &err)) {
			tool_error(CMD, "--chat: %s", err.msg);
			goto done;
		}
		struct ms_chat_msg m = { "user", text };
		char *r = NULL;
		if (ms_chat_render(t, &m, 1, true, &r, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto done;
		}
		free(text);
		text = r;
		text_len = strlen(r);
	}

	if (ms_tokenize(v, text, text_len,
			MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL, &toks,
			&err)) {
		tool_error(CMD, "%s", err.msg);
		goto done;
	}
	if (!toks.n) {
		tool_error(CMD, "the prompt is empty");
		goto done;
	}
	if (toks.n >= info->n_ctx) {
		tool_error(CMD, "the prompt is %zu tokens; the context holds %u "
			   "(--ctx), and at least one must be left to generate",
			   toks.n, info->n_ctx);
		goto done;
	}
	if (ms_sampler_init(&smp, &sp, info->n_vocab, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto done;
	}
	logits = malloc((size_t)info->n_vocab * sizeof(float));
	if (!logits) {
		tool_error(CMD, "out of memory");
		goto done;
	}
	struct sigaction sa = { .sa_handler = on_sigint };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	ms_engine_set_stop_flag(e, &stop_flag);

	fwrite(text, 1, text_len, out);
	fflush(out);
	for (size_t i = 0; i < toks.n; i++)
		ms_sampler_accept(smp, toks.ids[i]);

	struct ms_engine_stats s1, s2;
	double t0 = tool_now_s();
	int er = ms_engine_eval(e, toks.ids, toks.n, logits, false, &err);
	double t1 = tool_now_s();
	ms_engine_get_stats(e, &s1);
	uint32_t gen = 0;
	bool interrupted = false;
	while (!er && gen < n_predict) {
		if (stop_flag) {
			interrupted = true;
			break;
		}
		int32_t id = ms_sampler_sample(smp, logits);
		if (ms_vocab_is_eog(v, id))
			break;
		ms_sampler_accept(smp, id);
		char piece[4096];
		int l = ms_token_piece(v, id, false, piece, sizeof(piece));
		if (l > 0)
			fwrite(piece, 1, (size_t)l < sizeof(piece) ? (size_t)l
								   : sizeof(piece), out);
		fflush(out);
		gen++;
		if (gen == n_predict || ms_engine_pos(e) >= info->n_ctx)
			break;
		er = ms_engine_eval(e, &id, 1, logits, false, &err);
	}
	double t2 = tool_now_s();
	ms_engine_get_stats(e, &s2);
	fputc('\n', out);
	fflush(out);
	if (er == -EINTR || stop_flag)
		interrupted = true;
	else if (er) {
		tool_error(CMD, "%s", err.msg);
		goto done;
	}

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double pre_s = t1 - t0, dec_s = t2 - t1;
	uint64_t routed = s2.expert_hits + s2.expert_misses;
	double hit = routed ? (double)s2.expert_hits / (double)routed : 0;
	double wait_dec = (double)(s2.wait_ns - s1.wait_ns) / 1e9;
	double spec = s2.spec_routed ? (double)s2.spec_hit / (double)s2.spec_routed
				     : 0;
	double gb = (double)s2.expert_bytes_read / 1e9;
	uint64_t peak = (uint64_t)ru.ru_maxrss * 1024;
	if (json) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "model", model);
		cJSON_AddNumberToObject(j, "prompt_tokens", (double)toks.n);
		cJSON_AddNumberToObject(j, "prefill_s", pre_s);
		cJSON_AddNumberToObject(j, "prefill_tokps",
					pre_s > 0 ? (double)toks.n / pre_s : 0);
		cJSON_AddNumberToObject(j, "generated_tokens", gen);
		cJSON_AddNumberToObject(j, "decode_s", dec_s);
		cJSON_AddNumberToObject(j, "decode_tokps",
					dec_s > 0 ? (double)gen / dec_s : 0);
		cJSON_AddNumberToObject(j, "expert_hit_rate", hit);
		cJSON_AddNumberToObject(j, "expert_gb_read", gb);
		cJSON_AddNumberToObject(j, "decode_wait_share",
					dec_s > 0 ? wait_dec / dec_s : 0);
		cJSON_AddNumberToObject(j, "speculation_accuracy", spec);
		cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)peak);
		/* what the peak is made of (issue 15: peak <= resident + KV +
		 * cache + 128 MiB); the cache is 0 through a daemon */
		cJSON_AddNumberToObject(j, "resident_bytes", (double)info->resident_bytes);
		cJSON_AddNumberToObject(j, "kv_bytes", (double)info->kv_bytes);
		cJSON_AddNumberToObject(j, "cache_bytes", (double)info->cache_bytes);
		cJSON_AddBoolToObject(j, "interrupted", interrupted);
		if (cfg.gpu) {
			cJSON_AddNumberToObject(j, "vram_hits", (double)s2.vram_hits);
			cJSON_AddNumberToObject(j, "vram_misses",
						(double)s2.vram_misses);
			cJSON_AddNumberToObject(j, "vram_copied_bytes",
						(double)s2.vram_copied_bytes);
			cJSON_AddNumberToObject(j, "cuda_graph_nodes",
						info->gpu_graph ? info->gpu_graph_nodes
								: 0);
			cJSON_AddBoolToObject(j, "pdl", info->gpu_pdl);
		}
		char *str = cJSON_Print(j);
		printf("%s\n", str);
		free(str);
		cJSON_Delete(j);
	} else {
		fprintf(stderr,
			"%sprompt     %zu tokens in %.2f s: %.2f tok/s\n"
			"decode     %u tokens in %.2f s: %.2f tok/s\n"
			"experts    hit rate %.3f (%llu of %llu), %.3f GB read\n"
			"waiting    %.1f%% of decode time waiting for experts\n"
			"speculate  %.1f%% of routed experts were hinted\n"
			"peak RSS   %s\n",
			interrupted ? "(interrupted)\n" : "", toks.n, pre_s,
			pre_s > 0 ? (double)toks.n / pre_s : 0, gen, dec_s,
			dec_s > 0 ? (double)gen / dec_s : 0, hit,
			(unsigned long long)s2.expert_hits,
			(unsigned long long)routed, gb,
			dec_s > 0 ? 100.0 * wait_dec / dec_s : 0, 100.0 * spec,
			fmt_bytes(peak, a, sizeof(a)));
		if (cfg.gpu) {
			uint64_t vr = s2.vram_hits + s2.vram_misses;
			fprintf(stderr, "VRAM       expert hit rate %.3f (%llu of "
				"%llu), %.3f GB copied in\n",
				vr ? (double)s2.vram_hits / (double)vr : 0,
				(unsigned long long)s2.vram_hits,
				(unsigned long long)vr,
				(double)s2.vram_copied_bytes / 1e9);
			if (info->gpu_graph)
				fprintf(stderr, "graph      decode steps replayed "
					"from a CUDA graph of %u nodes\n",
					info->gpu_graph_nodes);
			else
				fprintf(stderr, "graph      none: decode steps "
					"launched kernel by kernel%s\n",
					info->vram_all_experts
						? ""
						: " (experts not all in VRAM: "
						  "routing is the host's)");
			if (info->gpu_pdl)
				fprintf(stderr, "PDL        on: each kernel may "
					"start while the one before ends\n");
			else
				fprintf(stderr, "PDL        off: each kernel "
					"waits for the one before (%s)\n",
					info->gpu_pdl_note);
		}
	}
	rc = 0;
done:
	free(logits);
	ms_tokens_free(&toks);
	ms_sampler_free(smp);
	ms_engine_close(e);
	free(text);
	return rc;
}
