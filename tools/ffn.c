/*
 * ffn.c - `moestream ffn MODEL --layer L --expert E --in X.f32 [-o Y.f32]
 * [--device cpu|gpu] [--threads N] [--path auto|scalar|avx2]`: one routed
 * expert's FFN on a batch of hidden states.
 *
 * The expert's bytes are read as the daemon reads them: its extents from the
 * expert map (ms_model_expert), pread from each shard at each offset, into
 * memory that then serves as the struct ms_expert_view a cache slot would
 * be. The CPU kernel (kernels/ffn.c) computes on the quantised bytes
 * directly. X holds B hidden states of n_embd f32 (B from the file's size);
 * Y gets B outputs of n_embd f32, unweighted (the router's weight is the
 * caller's to apply).
 *
 * --device gpu copies the expert and X to GPU 0 and runs
 * ms_gpu_expert_ffn_host (kernels/gpu_ffn.cu): the fused matvec for B <= 8,
 * dequantise + cuBLAS above; exit 3 with "built without CUDA" or the
 * runtime's reason when there is no GPU.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moestream/kernels.h"
#include "tools.h"

#define CMD "ffn"
#define MAX_INPUT_BYTES (1u << 30)

static const char usage_line[] =
	"usage: moestream ffn MODEL --layer L --expert E --in X.f32 [-o Y.f32] "
	"[--device cpu|gpu] [--threads N] [--path auto|scalar|avx2]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Computes one routed expert on a batch of hidden states, straight "
		"from the\nquantised weights in the file:\n"
		"    y = W_down . (silu(W_gate . x) * (W_up . x))\n"
		"X holds B hidden states of n_embd little-endian f32 each (B is "
		"the file size\nover 4 n_embd); Y gets B outputs of n_embd f32, "
		"not multiplied by the router's\nweight.\n"
		"\n"
		"  -l, --layer L       the block N of blk.N, as in 'moestream "
		"inspect --extents'\n"
		"  -e, --expert E      the routed expert, 0-based\n"
		"  -i, --in FILE       the inputs, B x n_embd f32\n"
		"  -o, --output FILE   where Y goes (default: stdout, which must "
		"not be a terminal)\n"
		"  -d, --device D      cpu (default) or gpu\n"
		"  -t, --threads N     CPU threads (default 0: all online CPUs)\n"
		"  -p, --path P        CPU code: auto (default: AVX2 where the CPU "
		"has it), scalar\n"
		"                      (the C reference) or avx2\n"
		"  -h, --help          this text\n"
		"\n"
		"CPU kernels, scalar and AVX2: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 "
		"q8_0 q2_K q3_K\nq4_K q5_K q6_K iq4_nl iq4_xs mxfp4. GPU "
		"(--device gpu, GPU 0): the same types;\nB <= 8 through the "
		"fused matvec where the type has one (the K-quants, q8_0,\n"
		"q4_0, mxfp4: f32 sums), else and above dequantised to f16 for "
		"cuBLAS (f16\noperands: relative error ~5e-4).\n"
		"\n"
		"example:\n"
		"  moestream mkmodel --preset tiny -o tiny.gguf\n"
		"  python3 -c 'import numpy as np; np.random.default_rng(1)."
		"standard_normal(\n"
		"              (8, 512), \"f4\").tofile(\"x.f32\")'\n"
		"  moestream ffn tiny.gguf --layer 2 --expert 5 --in x.f32 -o y.f32\n"
		"\n"
		"exit: 0 ok; 1 bad or unreadable model or input, no such layer or "
		"expert, a dense\n      layer, a type without a kernel, a write "
		"error; 2 bad usage; 3 --device gpu\n      without a GPU or in a "
		"build without CUDA\n",
		usage_line);
}

/* The expert's bytes, read from its extents, as a view. */
struct expert_buf {
	struct ms_expert_view v;
	void *mem[MS_MOE_MAX_PROJ];
};

/* 0, or 1 after one line saying why. `gpu`: the types are checked against
 * the GPU's kernels rather than the CPU's. */
static int load_expert(const struct ms_model *m, const char *path,
		       uint32_t block, uint32_t expert, bool gpu,
		       struct expert_buf *eb)
{
	char list[256];
	memset(eb, 0, sizeof(*eb));
	if (!m->n_expert || !m->n_layers) {
		tool_error(CMD,
			   "%s is not a Mixture-of-Experts model: it has no "
			   "routed experts",
			   path);
		return 1;
	}
	if (block >= m->n_block) {
		tool_error(CMD,
			   "layer %u out of range: %s has blocks 0..%u "
			   "(MoE layers %s)",
			   block, path, m->n_block - 1,
			   tool_moe_blocks(m, list, sizeof(list)));
		return 1;
	}
	int32_t li = m->block_layer[block];
	if (li < 0) {
		tool_error(CMD,
			   "blk.%u is a dense layer: it has no routed "
			   "experts (MoE layers %s)",
			   block, tool_moe_blocks(m, list, sizeof(list)));
		return 1;
	}
	if (expert >= m->n_expert) {
		tool_error(CMD,
			   "expert %u out of range: blk.%u has experts "
			   "0..%u",
			   expert, block, m->n_expert - 1);
		return 1;
	}
	/* This FFN is llama.cpp's SiLU-gated one without biases. Experts with
	 * biases (gpt-oss: a clamped SwiGLU-OAI on biased projections) are a
	 * different function; computing them as this one would be wrong. */
	static const char *const biased[] = { "gate", "up", "down", "gate_up" };
	for (size_t k = 0; k < sizeof(biased) / sizeof(biased[0]); k++) {
		char name[MS_GGUF_MAX_NAME + 1];
		uint32_t shard;
		uint64_t idx;
		snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.bias", block,
			 biased[k]);
		if (!ms_model_find_tensor(m, name, &shard, &idx)) {
			tool_error(CMD,
				   "blk.%u has expert biases (%s): this FFN is "
				   "the unbiased SiLU-gated one, not %s's",
				   block, name, m->arch);
			return 1;
		}
	}
	const struct ms_moe_layer *L = &m->layers[li];
	const struct ms_extent *x = ms_model_expert(m, (uint32_t)li, expert);

	/* Slot of each projection in the view: gate 0, up 1, down 2; fused:
	 * gate_up 0, down 1. */
	struct ms_expert_view *v = &eb->v;
	v->fused = L->fused;
	int slot[MS_MOE_MAX_PROJ];
	int64_t n_embd = -1, n_ff = -1;
	for (uint32_t j = 0; j < L->n_proj; j++) {
		switch (L->proj[j]) {
		case MS_PROJ_GATE:
			slot[j] = 0;
			break;
		case MS_PROJ_UP:
			slot[j] = 1;
			break;
		case MS_PROJ_GATE_UP:
			slot[j] = 0;
			break;
		default:
			slot[j] = L->fused ? 1 : 2;
			break;
		}
		if (L->proj[j] == MS_PROJ_DOWN) {
			n_embd = L->ne[j][1];
			n_ff = L->ne[j][0];
		}
	}
	for (uint32_t j = 0; j < L->n_proj; j++) {
		int64_t want_in = L->proj[j] == MS_PROJ_DOWN ? n_ff : n_embd;
		int64_t want_out = L->proj[j] == MS_PROJ_DOWN ? n_embd
				   : L->fused		      ? 2 * n_ff
							      : n_ff;
		if (n_embd < 1 || L->ne[j][0] != want_in ||
		    L->ne[j][1] != want_out) {
			tool_error(CMD,
				   "blk.%u: the %s projection has shape "
				   "[%lld, %lld], which does not fit down's "
				   "[%lld, %lld]",
				   block, ms_proj_name(L->proj[j]),
				   (long long)L->ne[j][0],
				   (long long)L->ne[j][1], (long long)n_ff,
				   (long long)n_embd);
			return 1;
		}
		if (!(gpu ? ms_gpu_dequant_supported(x[j].type)
			  : ms_ffn_type_supported(x[j].type))) {
			tool_error(CMD,
				   "blk.%u %s is %s: no %s kernel for that "
				   "type (there are for f32 f16 bf16 q4_0 q4_1 "
				   "q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K "
				   "iq4_nl iq4_xs mxfp4)",
				   block, ms_proj_name(L->proj[j]),
				   ms_type_name(x[j].type), gpu ? "GPU" : "CPU");
			return 1;
		}
		v->type[slot[j]] = x[j].type;
	}
	v->n_embd = n_embd;
	v->n_ff = n_ff;

	uint64_t bytes[3];
	struct ms_err err = { 0 };
	if (ms_expert_view_bytes(v, bytes, &err)) {
		tool_error(CMD, "blk.%u expert %u: %s", block, expert, err.msg);
		return 1;
	}
	for (uint32_t j = 0; j < L->n_proj; j++) {
		if (bytes[slot[j]] != x[j].bytes) {
			tool_error(CMD,
				   "blk.%u %s: the extent has %llu bytes, "
				   "the shape needs %llu",
				   block, ms_proj_name(L->proj[j]),
				   (unsigned long long)x[j].bytes,
				   (unsigned long long)bytes[slot[j]]);
			return 1;
		}
		eb->mem[j] = malloc(x[j].bytes ? x[j].bytes : 1);
		if (!eb->mem[j]) {
			tool_error(CMD, "out of memory for %llu bytes",
				   (unsigned long long)x[j].bytes);
			return 1;
		}
		int rc = tool_pread_full(m->shards[x[j].shard]->fd, eb->mem[j],
				    x[j].bytes, x[j].offset);
		if (rc) {
			tool_error(CMD,
				   "%s: reading %llu bytes at offset %llu: "
				   "%s",
				   m->shards[x[j].shard]->path,
				   (unsigned long long)x[j].bytes,
				   (unsigned long long)x[j].offset,
				   rc == -ENODATA ? "the file ends early"
						  : strerror(-rc));
			return 1;
		}
		v->data[slot[j]] = eb->mem[j];
	}
	return 0;
}

static void expert_buf_free(struct expert_buf *eb)
{
	for (int j = 0; j < MS_MOE_MAX_PROJ; j++)
		free(eb->mem[j]);
}

/* True when fd is one of the model's own files (so -o would destroy it). */
static bool is_model_file(const struct ms_model *m, const char *out_path)
{
	struct stat a, b;
	if (stat(out_path, &a))
		return false;
	for (uint32_t i = 0; i < m->n_shards; i++)
		if (!fstat(m->shards[i]->fd, &b) && a.st_dev == b.st_dev &&
		    a.st_ino == b.st_ino)
			return true;
	return false;
}

struct args {
	uint32_t block, expert;
	const char *in_path, *out_path;
	int threads;
	enum ms_ffn_path path;
	bool gpu;
};

static int run(const struct ms_model *m, const char *path, const struct args *a)
{
	struct expert_buf eb;
	float *x = NULL, *y = NULL;
	size_t bytes;
	int rc = 1, fd = -1;

	if (load_expert(m, path, a->block, a->expert, a->gpu, &eb))
		goto out;
	if (tool_read_f32(CMD, a->in_path, MAX_INPUT_BYTES, &x, &bytes))
		goto out;
	size_t row = (size_t)eb.v.n_embd * sizeof(float);
	if (!bytes || bytes % row) {
		tool_error(CMD,
			   "%s has %zu bytes: not a whole number of hidden "
			   "states of n_embd = %lld f32 (%zu bytes each)",
			   a->in_path, bytes, (long long)eb.v.n_embd, row);
		goto out;
	}
	int64_t B = (int64_t)(bytes / row);
	for (size_t i = 0; i < bytes / 4; i++)
		if (!isfinite(x[i])) {
			tool_error(CMD, "%s: value %zu (token %zu) is %g",
				   a->in_path, i, i / (size_t)eb.v.n_embd,
				   (double)x[i]);
			goto out;
		}
	y = malloc(bytes);
	if (!y) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	struct ms_ffn_opts o = { .n_threads = a->threads, .path = a->path };
	struct ms_err err = { 0 };
	int e = a->gpu ? ms_gpu_expert_ffn_host(&eb.v, x, y, B,
						MS_GPU_FFN_AUTO, 0, &err)
		       : ms_expert_ffn(&eb.v, x, y, B, &o, &err);
	if (e) {
		tool_error(CMD, "blk.%u expert %u: %s", a->block, a->expert,
			   err.msg);
		goto out;
	}
	tool_swap_f32(y, bytes / 4);

	if (a->out_path) {
		if (is_model_file(m, a->out_path)) {
			tool_error(CMD, "-o %s is the model itself",
				   a->out_path);
			goto out;
		}
		fd = open(a->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			  0644);
		if (fd < 0) {
			tool_error(CMD, "%s: %s", a->out_path, strerror(errno));
			goto out;
		}
	}
	e = tool_write_full(fd >= 0 ? fd : STDOUT_FILENO, y, bytes);
	if (!e && fd >= 0 && close(fd))
		e = -errno;
	fd = -1;
	if (e) {
		tool_error(CMD, "writing %s: %s",
			   a->out_path ? a->out_path : "stdout", strerror(-e));
		goto out;
	}
	if (a->out_path) {
		enum ms_ffn_path used = a->path;
		if (used == MS_FFN_PATH_AUTO)
			used = ms_ffn_path_available(MS_FFN_PATH_AVX2)
				       ? MS_FFN_PATH_AVX2
				       : MS_FFN_PATH_SCALAR;
		printf("wrote %s: %lld x %lld f32 (blk.%u expert %u, %s path)\n",
		       a->out_path, (long long)B, (long long)eb.v.n_embd,
		       a->block, a->expert,
		       a->gpu ? "gpu" : ms_ffn_path_name(used));
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	expert_buf_free(&eb);
	free(x);
	free(y);
	return rc;
}

int cmd_ffn(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "layer", required_argument, 0, 'l' },
		{ "expert", required_argument, 0, 'e' },
		{ "in", required_argument, 0, 'i' },
		{ "output", required_argument, 0, 'o' },
		{ "device", required_argument, 0, 'd' },
		{ "threads", required_argument, 0, 't' },
		{ "path", required_argument, 0, 'p' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct args a = { .path = MS_FFN_PATH_AUTO };
	bool have_layer = false, have_expert = false;
	uint32_t u;
	int c;

	while ((c = getopt_long(argc, argv, "l:e:i:o:d:t:p:h", opts, NULL)) !=
	       -1) {
		switch (c) {
		case 'l':
			if (tool_parse_u32(CMD, "layer", optarg, &a.block))
				return tool_bad_usage(usage_line);
			have_layer = true;
			break;
		case 'e':
			if (tool_parse_u32(CMD, "expert", optarg, &a.expert))
				return tool_bad_usage(usage_line);
			have_expert = true;
			break;
		case 'i':
			a.in_path = optarg;
			break;
		case 'o':
			a.out_path = optarg;
			break;
		case 'd':
			if (strcmp(optarg, "cpu") && strcmp(optarg, "gpu")) {
				tool_error(CMD,
					   "--device '%s' is not cpu or gpu",
					   optarg);
				return tool_bad_usage(usage_line);
			}
			a.gpu = !strcmp(optarg, "gpu");
			break;
		case 't':
			if (tool_parse_u32(CMD, "threads", optarg, &u))
				return tool_bad_usage(usage_line);
			if (u > 512) {
				tool_error(CMD, "--threads %u: at most 512", u);
				return tool_bad_usage(usage_line);
			}
			a.threads = (int)u;
			break;
		case 'p': {
			int p = -1;
			for (int i = 0; i < MS_FFN_PATH_COUNT; i++)
				if (!strcmp(optarg,
					    ms_ffn_path_name(
						    (enum ms_ffn_path)i)))
					p = i;
			if (p < 0) {
				tool_error(CMD,
					   "--path '%s' is not auto, scalar "
					   "or avx2",
					   optarg);
				return tool_bad_usage(usage_line);
			}
			a.path = (enum ms_ffn_path)p;
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			return tool_bad_usage(usage_line);
		}
	}
	const char *path = tool_one_model(CMD, argc, argv, optind);
	if (!path)
		return tool_bad_usage(usage_line);
	if (!have_layer || !have_expert || !a.in_path) {
		tool_error(CMD, "%s is required",
			   !have_layer	  ? "--layer"
			   : !have_expert ? "--expert"
					  : "--in");
		return tool_bad_usage(usage_line);
	}
	if (a.gpu) {
		struct ms_gpu_info g[MS_GPU_MAX];
		struct ms_err err = { 0 };
		if (ms_gpu_list(g, MS_GPU_MAX, &err) < 0) {
			tool_error(CMD, "--device gpu: %s", err.msg);
			return EXIT_UNAVAILABLE;
		}
	}
	if (!ms_ffn_path_available(a.path)) {
		tool_error(CMD, "--path %s: this CPU lacks AVX2, FMA or F16C",
			   ms_ffn_path_name(a.path));
		return EXIT_UNAVAILABLE;
	}
	if (!a.out_path && isatty(STDOUT_FILENO)) {
		tool_error(CMD, "not writing binary f32 to a terminal: give -o "
				"FILE or redirect stdout");
		return tool_bad_usage(usage_line);
	}
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	int rc = run(m, path, &a);
	if (!rc && (fflush(stdout) || ferror(stdout))) {
		tool_error(CMD, "writing the output failed");
		rc = 1;
	}
	ms_model_free(m);
	return rc;
}
