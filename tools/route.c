/*
 * route.c - `moestream route MODEL --layer L --in X.f32`: one layer's router
 * on one hidden state.
 *
 * The router tensors are read with pread at their file offsets (they are
 * small: n_expert x n_embd f32, 3.3 MB for GLM-4.7), the parameters come
 * from the model the way llama.cpp would take them
 * (ms_router_params_from_model), and the answer is what build_moe_ffn()
 * selects: the experts, best first, with their weights. That makes routing
 * checkable from a shell against llama.cpp's own debug output, and gives
 * the traces a reference.
 *
 * X is the input of the MoE block: the hidden state after the layer's
 * post-attention norm, n_embd little-endian f32.
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

#define CMD "route"
#define MAX_INPUT_BYTES (1u << 30)

static const char usage_line[] =
	"usage: moestream route MODEL --layer L --in X.f32 [--verbose]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Runs the router of MoE layer L on one hidden state and prints "
		"the experts it\nselects, best first, one 'expert<TAB>weight' "
		"line each: logits =\nffn_gate_inp . x, then the model's gating "
		"function (softmax, sigmoid,\nsoftmax over the selected, "
		"sqrt-softplus), top-k over probs + exp_probs_b\n(when the layer "
		"has that bias), weights from the unbiased probs, normalised\n"
		"and scaled as the model says. Computed in double, as llama.cpp's "
		"build_moe_ffn\ndefines it.\n"
		"\n"
		"  -l, --layer L   the block N of blk.N, as in 'moestream inspect "
		"--extents'\n"
		"  -i, --in FILE   the hidden state: n_embd little-endian f32 "
		"(the input of the\n"
		"                  MoE block, after its norm)\n"
		"  -v, --verbose   also say, on stderr, which gating, bias, norm "
		"and scale\n"
		"  -h, --help      this text\n"
		"\n"
		"example:\n"
		"  moestream mkmodel --preset tiny -o tiny.gguf\n"
		"  python3 -c 'import numpy as np; np.random.default_rng(1)."
		"standard_normal(512,\n"
		"              \"f4\").tofile(\"x.f32\")'\n"
		"  moestream route tiny.gguf --layer 2 --in x.f32\n"
		"\n"
		"exit: 0 ok; 1 bad or unreadable model or input, no such layer, a "
		"dense layer,\n      a router of a type without a dequantiser; "
		"2 bad usage\n",
		usage_line);
}

/* Reads tensor `name` of the model if present: 0 and *out (malloc'ed), 0
 * and *out = NULL when absent and optional, or 1 after saying why. Checks
 * its shape against ne0 x ne1 and, for f32 tensors (want_f32), its type. */
static int read_tensor(const struct ms_model *m, const char *name, int64_t ne0,
		       int64_t ne1, bool optional, bool want_f32, void **out,
		       uint32_t *type)
{
	uint32_t shard;
	uint64_t idx;
	*out = NULL;
	if (ms_model_find_tensor(m, name, &shard, &idx)) {
		if (optional)
			return 0;
		tool_error(CMD, "%s has no tensor %s", m->shards[0]->path,
			   name);
		return 1;
	}
	const struct ms_gguf *g = m->shards[shard];
	const struct ms_gguf_tensor *t = &g->tensors[idx];
	if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 ||
	    t->ne[3] != 1) {
		tool_error(CMD,
			   "%s: %s has shape [%lld, %lld, %lld], expected "
			   "[%lld, %lld]",
			   g->path, name, (long long)t->ne[0],
			   (long long)t->ne[1], (long long)t->ne[2],
			   (long long)ne0, (long long)ne1);
		return 1;
	}
	if (want_f32 && t->type != MS_TYPE_F32) {
		tool_error(CMD, "%s: %s is %s, expected f32", g->path, name,
			   ms_type_name(t->type));
		return 1;
	}
	if (!want_f32 && !ms_dequant_supported(t->type)) {
		tool_error(CMD,
			   "%s: %s is %s, which moestream cannot "
			   "dequantise",
			   g->path, name, ms_type_name(t->type));
		return 1;
	}
	void *buf = malloc(t->size ? t->size : 1);
	if (!buf) {
		tool_error(CMD, "out of memory for %s", name);
		return 1;
	}
	int rc = tool_pread_full(g->fd, buf, t->size, t->file_offset);
	if (rc) {
		tool_error(CMD, "%s: reading %s (%llu bytes at %llu): %s",
			   g->path, name, (unsigned long long)t->size,
			   (unsigned long long)t->file_offset,
			   rc == -ENODATA ? "the file ends early"
					  : strerror(-rc));
		free(buf);
		return 1;
	}
	*out = buf;
	if (type)
		*type = t->type;
	return 0;
}

static int route(const struct ms_model *m, const char *path, uint32_t block,
		 const char *in_path, bool verbose)
{
	char list[256], name[MS_GGUF_MAX_NAME + 1];
	if (!m->n_expert || !m->n_layers) {
		tool_error(CMD,
			   "%s is not a Mixture-of-Experts model: it has no "
			   "router",
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
	if (m->block_layer[block] < 0) {
		tool_error(CMD,
			   "blk.%u is a dense layer: it has no router (MoE "
			   "layers %s)",
			   block, tool_moe_blocks(m, list, sizeof(list)));
		return 1;
	}
	struct ms_router_params p;
	struct ms_err err = { 0 };
	if (ms_router_params_from_model(m, &p, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	int64_t E = (int64_t)m->n_embd, X = m->n_expert;
	if (E < 1) {
		tool_error(CMD, "%s has no %s.embedding_length", path, m->arch);
		return 1;
	}

	float *x = NULL, *w_b = NULL, *probs_b = NULL;
	void *w = NULL;
	uint32_t w_type = MS_TYPE_F32;
	size_t n = 0;
	int rc = 1;
	if (tool_read_f32(CMD, in_path, MAX_INPUT_BYTES, &x, &n))
		goto out;
	n /= sizeof(float);
	if (n != (size_t)E) {
		tool_error(CMD,
			   "%s holds %zu f32 values; the router takes one "
			   "hidden state of n_embd = %lld",
			   in_path, n, (long long)E);
		goto out;
	}
	snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", block);
	if (read_tensor(m, name, E, X, false, false, &w, &w_type))
		goto out;
	snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.bias", block);
	if (read_tensor(m, name, X, 1, true, true, (void **)&w_b, NULL))
		goto out;
	snprintf(name, sizeof(name), "blk.%u.exp_probs_b.bias", block);
	if (read_tensor(m, name, X, 1, true, true, (void **)&probs_b, NULL))
		goto out;
	if (verbose)
		fprintf(stderr,
			"blk.%u router: %s, %u of %u experts, ffn_gate_inp "
			"%s%s%s, norm %s, scale %g\n",
			block, ms_gating_name(p.gating), p.n_used, p.n_expert,
			ms_type_name(w_type), w_b ? ", logit bias" : "",
			probs_b ? ", exp_probs_b" : "", p.norm ? "on" : "off",
			p.scale != 0.0f && p.scale != 1.0f ? (double)p.scale
							   : 1.0);

	uint32_t ids[MS_ROUTER_MAX_USED];
	float wt[MS_ROUTER_MAX_USED];
	if (ms_router_run(&p, w_type, w, w_b, probs_b, E, x, ids, wt, NULL,
			  &err)) {
		tool_error(CMD, "blk.%u: %s", block, err.msg);
		goto out;
	}
	for (uint32_t i = 0; i < p.n_used; i++)
		printf("%u\t%.9g\n", ids[i], (double)wt[i]);
	rc = 0;
out:
	free(x);
	free(w);
	free(w_b);
	free(probs_b);
	return rc;
}

int cmd_route(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "layer", required_argument, 0, 'l' },
		{ "in", required_argument, 0, 'i' },
		{ "verbose", no_argument, 0, 'v' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint32_t block = 0;
	bool have_layer = false, verbose = false;
	const char *in_path = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "l:i:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (tool_parse_u32(CMD, "layer", optarg, &block))
				return tool_bad_usage(usage_line);
			have_layer = true;
			break;
		case 'i':
			in_path = optarg;
			break;
		case 'v':
			verbose = true;
			break;
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
	if (!have_layer || !in_path) {
		tool_error(CMD, "%s is required",
			   !have_layer ? "--layer" : "--in");
		return tool_bad_usage(usage_line);
	}
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	int rc = route(m, path, block, in_path, verbose);
	if (!rc && (fflush(stdout) || ferror(stdout))) {
		tool_error(CMD, "writing the output failed");
		rc = 1;
	}
	ms_model_free(m);
	return rc;
}
