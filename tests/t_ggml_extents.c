/*
 * t_ggml_extents.c - `moestream inspect --extents` against ggml's own reader.
 *
 * Issue 2's "done when": the extents agree line for line with ggml's reader
 * on models written by ggml with several type mixes (Q2_K/Q2_K/Q3_K,
 * Q4_K/Q4_K/Q6_K, Q8_0, MXFP4), on split models and on a fused gate_up model.
 *
 * Each case writes a small model with ggml's writer (tests/ggml_ref.c builds
 * the tensors in llama.cpp's layout), then derives the expected lines from
 * ggml's reader alone, never from moestream: for every tensor
 * blk.N.ffn_{gate,up,down,gate_up}_exps.weight in every shard and every
 * expert e < ne[2],
 *
 *   offset = gguf_get_data_offset + gguf_get_tensor_offset
 *            + e * (gguf_get_tensor_size / ne[2])
 *   bytes  = gguf_get_tensor_size / ne[2]
 *   line   = N \t e \t proj \t ggml_type_name \t shard \t offset \t bytes
 *
 * ordered by layer, expert, then gate, up, down (fused: gate_up, down). The
 * tool runs on the first shard and, for split models, on a middle shard too
 * (any shard must find its siblings). `--extents --json` must parse and carry
 * as many extents. The same extents are checked through the library
 * (ms_model_open / ms_model_expert), with the layer bookkeeping (dense and
 * NextN blocks) against the description the model was written from.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

enum {
	F32 = 0, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13,
	Q6_K = 14, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19,
	IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, IQ1_M = 29,
	BF16 = 30, TQ2_0 = 35, MXFP4 = 39,
};

#define OUT_MAX (64u << 20)

struct rec {
	uint32_t layer, expert, order;
	const char *proj;
	int type;
	uint32_t shard;
	uint64_t offset, bytes;
};

struct recs {
	struct rec *v;
	size_t n, cap;
};

static void recs_add(struct recs *rs, const struct rec *r)
{
	if (rs->n == rs->cap) {
		rs->cap = rs->cap ? rs->cap * 2 : 1024;
		rs->v = realloc(rs->v, rs->cap * sizeof(*rs->v));
		if (!rs->v)
			t_fatal("out of memory");
	}
	rs->v[rs->n++] = *r;
}

static int rec_cmp(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	if (x->layer != y->layer)
		return x->layer < y->layer ? -1 : 1;
	if (x->expert != y->expert)
		return x->expert < y->expert ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* The projection of an expert tensor name, or NULL. */
static const char *proj_of(const char *name, uint32_t *layer, uint32_t *order)
{
	static const struct {
		const char *suffix, *proj;
		uint32_t order;
	} p[] = {
		{ "ffn_gate_exps.weight", "gate", 0 },
		{ "ffn_gate_up_exps.weight", "gate_up", 0 },
		{ "ffn_up_exps.weight", "up", 1 },
		{ "ffn_down_exps.weight", "down", 2 },
	};
	unsigned n;
	int used = 0;
	if (sscanf(name, "blk.%u.%n", &n, &used) != 1 || used == 0)
		return NULL;
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		if (!strcmp(name + used, p[i].suffix)) {
			*layer = n;
			*order = p[i].order;
			return p[i].proj;
		}
	}
	return NULL;
}

/* Expected extents from ggml's reader over every shard. */
static int expected_from_ggml(const struct ggml_ref *r, char (*paths)[PATH_MAX],
			      uint32_t n_shards, struct recs *out)
{
	for (uint32_t s = 0; s < n_shards; s++) {
		struct gguf_init_params p = { .no_alloc = true, .ctx = NULL };
		struct gguf_context *g = r->gguf_init_from_file(paths[s], p);
		if (!g) {
			fprintf(stderr, "ggml cannot read %s\n", paths[s]);
			return -1;
		}
		uint64_t doff = r->gguf_get_data_offset(g);
		for (int64_t i = 0; i < r->gguf_get_n_tensors(g); i++) {
			struct rec rc = { 0 };
			const char *name = r->gguf_get_tensor_name(g, i);
			rc.proj = proj_of(name, &rc.layer, &rc.order);
			if (!rc.proj)
				continue;
			const int64_t *ne = r->gguf_get_tensor_ne(g, i);
			uint64_t size = r->gguf_get_tensor_size(g, i);
			if (ne[2] < 1 || size % (uint64_t)ne[2]) {
				fprintf(stderr, "%s: ne[2] %lld, size %llu\n",
					name, (long long)ne[2],
					(unsigned long long)size);
				r->gguf_free(g);
				return -1;
			}
			rc.type = r->gguf_get_tensor_type(g, i);
			rc.shard = s;
			rc.bytes = size / (uint64_t)ne[2];
			for (int64_t e = 0; e < ne[2]; e++) {
				rc.expert = (uint32_t)e;
				rc.offset = doff + r->gguf_get_tensor_offset(g, i) +
					    (uint64_t)e * rc.bytes;
				recs_add(out, &rc);
			}
		}
		r->gguf_free(g);
	}
	qsort(out->v, out->n, sizeof(*out->v), rec_cmp);
	return 0;
}

static char *fmt_lines(const struct ggml_ref *r, const struct recs *rs)
{
	size_t cap = rs->n * 96 + 1, len = 0;
	char *s = malloc(cap);
	if (!s)
		t_fatal("out of memory");
	s[0] = '\0';
	for (size_t i = 0; i < rs->n; i++) {
		const struct rec *x = &rs->v[i];
		len += (size_t)snprintf(s + len, cap - len,
					"%u\t%u\t%s\t%s\t%u\t%llu\t%llu\n",
					x->layer, x->expert, x->proj,
					r->ggml_type_name(x->type), x->shard,
					(unsigned long long)x->offset,
					(unsigned long long)x->bytes);
	}
	return s;
}

/* Splits `s` into lines in place; the last line need not end in '\n'. */
static size_t split_lines(char *s, char ***out)
{
	size_t n = 0, cap = 1024;
	char **v = malloc(cap * sizeof(*v));
	if (!v)
		t_fatal("out of memory");
	char *p = s;
	while (*p) {
		if (n == cap) {
			cap *= 2;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				t_fatal("out of memory");
		}
		v[n++] = p;
		char *nl = strchr(p, '\n');
		if (!nl)
			break;
		*nl = '\0';
		p = nl + 1;
	}
	*out = v;
	return n;
}

/* Line-for-line comparison; prints the first difference of each side. */
static void compare_lines(const char *what, char *got, char *want)
{
	char **g, **w;
	size_t ng = split_lines(got, &g), nw = split_lines(want, &w);
	size_t i;
	for (i = 0; i < ng && i < nw; i++)
		if (strcmp(g[i], w[i]))
			break;
	if (i < ng || i < nw) {
		T_CHECK(0, "%s: line %zu differs (%zu lines, ggml %zu)\n"
			"  moestream: %s\n  ggml:      %s", what, i + 1, ng, nw,
			i < ng ? g[i] : "(no more lines)",
			i < nw ? w[i] : "(no more lines)");
	} else {
		printf("  %s: %zu lines agree\n", what, ng);
	}
	free(g);
	free(w);
}

static const char *tool;

static char *run_tool(const char *args, const char *path, int *rc)
{
	char cmd[2 * PATH_MAX + 256];
	snprintf(cmd, sizeof(cmd), "'%s' inspect %s '%s'", tool, args, path);
	char *out = NULL;
	*rc = t_run(cmd, &out, OUT_MAX);
	return out;
}

static void check_json(const char *path, const struct recs *want)
{
	int rc;
	char *out = run_tool("--extents --json", path, &rc);
	T_CHECK(rc == 0, "inspect --extents --json %s: exit %d", path, rc);
	cJSON *root = cJSON_Parse(out ? out : "");
	if (!root || !cJSON_IsObject(root)) {
		T_CHECK(0, "inspect --extents --json %s: not a JSON object "
			"(%.200s)", path, out ? out : "");
		goto out;
	}
	const cJSON *ext = cJSON_GetObjectItemCaseSensitive(root, "extents");
	if (!ext) {
		printf("  note: --json has no \"extents\" key; count not "
		       "checked\n");
		goto out;
	}
	if (!cJSON_IsArray(ext)) {
		T_CHECK(0, "--json: \"extents\" is not an array");
		goto out;
	}
	int n = cJSON_GetArraySize(ext);
	T_CHECK((size_t)n == want->n, "--json: %d extents, ggml %zu", n,
		want->n);
	/* Where the elements carry offset/bytes, they are ggml's, in order. */
	int i = 0, checked = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, ext) {
		if ((size_t)i >= want->n)
			break;
		const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "offset");
		const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, "bytes");
		if (cJSON_IsNumber(o) && cJSON_IsNumber(b)) {
			T_CHECK(o->valuedouble == (double)want->v[i].offset &&
				b->valuedouble == (double)want->v[i].bytes,
				"--json extent %d: offset %.0f bytes %.0f, "
				"ggml %llu %llu", i, o->valuedouble,
				b->valuedouble,
				(unsigned long long)want->v[i].offset,
				(unsigned long long)want->v[i].bytes);
			checked++;
		}
		i++;
	}
	printf("  --json: %d extents%s\n", n,
	       checked ? ", offsets and bytes agree" : "");
out:
	cJSON_Delete(root);
	free(out);
}

/* The library's view of the same model. */
static void check_api(const struct ggml_ref *r, const char *path,
		      const struct ggml_ref_moe *m, const struct recs *want)
{
	struct ms_model *mm = NULL;
	struct ms_err err = { 0 };
	int rc = ms_model_open(&mm, path, &err);
	if (rc != 0 || !mm) {
		T_CHECK(0, "ms_model_open(%s) = %d: %s", path, rc, err.msg);
		return;
	}
	uint32_t n_moe = m->n_block - m->n_leading_dense;
	uint32_t shards = m->n_shards ? m->n_shards : 1;
	T_CHECK(mm->n_shards == shards, "n_shards %u, wrote %u", mm->n_shards,
		shards);
	T_CHECK(!strcmp(mm->arch, m->arch), "arch '%s', wrote '%s'", mm->arch,
		m->arch);
	T_EQ_U64(mm->n_block, m->n_block);
	T_EQ_U64(mm->n_expert, m->n_expert);
	T_EQ_U64(mm->n_expert_used, m->n_expert_used);
	T_EQ_U64(mm->n_expert_shared, m->n_shared);
	T_EQ_U64(mm->n_leading_dense, m->n_leading_dense);
	T_EQ_U64(mm->n_nextn, m->n_nextn);
	T_EQ_U64(mm->n_embd, m->n_embd);
	T_EQ_U64(mm->n_ff_exp, m->n_ff);
	T_EQ_U64(mm->n_layers, n_moe);
	T_EQ_U64(mm->n_layers_run, n_moe - m->n_nextn);

	size_t k = 0;
	uint64_t total = 0;
	for (uint32_t li = 0; li < mm->n_layers; li++) {
		const struct ms_moe_layer *L = &mm->layers[li];
		uint32_t blk = m->n_leading_dense + li;
		T_CHECK(L->block == blk, "layer %u: block %u, want %u", li,
			L->block, blk);
		T_CHECK(L->nextn == (blk >= m->n_block - m->n_nextn),
			"block %u: nextn %d", L->block, L->nextn);
		T_CHECK(L->fused == m->fused, "block %u: fused %d", L->block,
			L->fused);
		T_CHECK(L->n_proj == (m->fused ? 2u : 3u), "block %u: n_proj %u",
			L->block, L->n_proj);
		if (L->block < mm->n_block)
			T_CHECK(mm->block_layer[L->block] == (int32_t)li,
				"block_layer[%u] = %d, want %u", L->block,
				mm->block_layer[L->block], li);
		for (uint32_t e = 0; e < mm->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(mm, li, e);
			if (!x) {
				T_CHECK(0, "ms_model_expert(%u, %u) = NULL", li,
					e);
				continue;
			}
			for (uint32_t p = 0; p < L->n_proj; p++, k++) {
				if (k >= want->n) {
					T_CHECK(0, "more extents than ggml");
					break;
				}
				const struct rec *w = &want->v[k];
				T_CHECK(w->layer == L->block && w->expert == e &&
					!strcmp(ms_proj_name(L->proj[p]),
						w->proj) &&
					x[p].offset == w->offset &&
					x[p].bytes == w->bytes &&
					x[p].shard == w->shard &&
					x[p].type == (uint32_t)w->type,
					"ms_model_expert(%u, %u)[%u]: blk %u %s "
					"%s shard %u offset %llu bytes %llu; "
					"ggml: blk %u %s %s shard %u offset "
					"%llu bytes %llu", li, e, p, L->block,
					ms_proj_name(L->proj[p]),
					ms_type_name(x[p].type), x[p].shard,
					(unsigned long long)x[p].offset,
					(unsigned long long)x[p].bytes,
					w->layer, w->proj,
					r->ggml_type_name(w->type), w->shard,
					(unsigned long long)w->offset,
					(unsigned long long)w->bytes);
				total += x[p].bytes;
			}
		}
	}
	T_CHECK(k == want->n, "the library has %zu extents, ggml %zu", k,
		want->n);
	T_EQ_U64(mm->expert_bytes, total);
	T_CHECK(ms_model_expert(mm, mm->n_layers, 0) == NULL &&
		ms_model_expert(mm, 0, mm->n_expert) == NULL,
		"ms_model_expert out of range returned extents");
	for (uint32_t b = 0; b < m->n_leading_dense && b < mm->n_block; b++)
		T_CHECK(mm->block_layer[b] == -1, "dense block %u: layer %d", b,
			mm->block_layer[b]);
	ms_model_free(mm);
}

struct tcase {
	const char *name;
	struct ggml_ref_moe m;
	bool random_data;
};

static const int unsloth_types[6][3] = {
	{ Q2_K, Q2_K, Q3_K },          /* block 0 is dense: unused */
	{ Q2_K, Q2_K, Q3_K },
	{ IQ2_XXS, IQ2_XXS, Q2_K },
	{ IQ3_XXS, IQ3_S, IQ4_XS },
	{ IQ1_S, IQ2_S, Q5_K },
	{ IQ2_XS, IQ1_M, Q6_K },
};

static const int gptoss_types[4][3] = {
	{ MXFP4, MXFP4, MXFP4 },
	{ MXFP4, MXFP4, Q8_0 },
	{ MXFP4, MXFP4, MXFP4 },
	{ IQ4_NL, IQ4_NL, MXFP4 },
};

static const struct tcase cases[] = {
	{ .name = "glm4moe-q2k", .m = {
		.arch = "glm4moe", .n_block = 5, .n_expert = 16,
		.n_expert_used = 4, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 320, .n_leading_dense = 1,
		.n_nextn = 1, .n_shared = 1, .probs_bias = true,
		.type = { Q2_K, Q2_K, Q3_K }, .resident_type = Q8_0 } },
	{ .name = "qwen3moe-q4k", .m = {
		.arch = "qwen3moe", .n_block = 4, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 512,
		.n_ff_dense = 512, .n_vocab = 256,
		.type = { Q4_K, Q4_K, Q6_K }, .resident_type = Q8_0 },
	  .random_data = true },
	{ .name = "mixtral-q8_0", .m = {
		.arch = "llama", .n_block = 3, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 256,
		.type = { Q8_0, Q8_0, Q8_0 }, .resident_type = Q8_0 } },
	{ .name = "gpt-oss-mxfp4", .m = {
		.arch = "gpt-oss", .n_block = 4, .n_expert = 16,
		.n_expert_used = 4, .n_embd = 288, .n_ff = 288,
		.n_ff_dense = 288, .n_vocab = 200, .expert_bias = true,
		.type = { MXFP4, MXFP4, MXFP4 }, .block_type = gptoss_types,
		.resident_type = BF16, .alignment = 64 } },
	{ .name = "deepseek2-unsloth-mix", .m = {
		.arch = "deepseek2", .n_block = 6, .n_expert = 12,
		.n_expert_used = 4, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 256, .n_leading_dense = 1,
		.n_shared = 2, .probs_bias = true,
		.type = { Q2_K, Q2_K, Q3_K }, .block_type = unsloth_types,
		.resident_type = Q8_0 } },
	{ .name = "qwen3moe-split3", .m = {
		.arch = "qwen3moe", .n_block = 4, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 256,
		.type = { Q4_K, Q4_K, Q6_K }, .resident_type = Q8_0,
		.n_shards = 3 } },
	{ .name = "glm4moe-split2-align128", .m = {
		.arch = "glm4moe", .n_block = 4, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 256, .n_leading_dense = 1,
		.n_nextn = 1, .n_shared = 1, .probs_bias = true,
		.type = { Q2_K, Q2_K, Q3_K }, .resident_type = Q8_0,
		.n_shards = 2, .alignment = 128 },
	  .random_data = true },
	{ .name = "fused-gate-up", .m = {
		.arch = "qwen3moe", .n_block = 3, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 512, .n_vocab = 256, .fused = true,
		.type = { Q4_K, Q4_K, Q6_K }, .resident_type = Q8_0 } },
	{ .name = "fused-split3-nextn", .m = {
		.arch = "glm4moe", .n_block = 5, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 256, .n_vocab = 256, .n_leading_dense = 2,
		.n_nextn = 1, .fused = true, .probs_bias = true,
		.type = { IQ4_XS, IQ4_XS, Q5_K }, .resident_type = F32,
		.n_shards = 3 } },
};

/* In a split case, some block's expert tensors must sit in two shards. */
static bool layer_spread(const struct ggml_ref *r, const struct ggml_ref_moe *m)
{
	struct ggml_ref_tensor *t;
	size_t n;
	if (ggml_ref_moe_tensors(r, m, &t, &n) != 0)
		t_fatal("ggml_ref_moe_tensors failed");
	bool spread = false;
	for (size_t i = 0; i < n && !spread; i++) {
		uint32_t li, oi;
		if (!proj_of(t[i].name, &li, &oi))
			continue;
		for (size_t j = i + 1; j < n; j++) {
			uint32_t lj, oj;
			if (proj_of(t[j].name, &lj, &oj) && lj == li &&
			    t[j].shard != t[i].shard)
				spread = true;
		}
	}
	free(t);
	return spread;
}

static void run_case(const struct ggml_ref *r, const struct tcase *c,
		     uint64_t *rng)
{
	const char *dir = t_tmpdir();
	struct ggml_ref_moe m = c->m;
	uint32_t ns = m.n_shards ? m.n_shards : 1;
	char base[PATH_MAX];
	char(*paths)[PATH_MAX] = calloc(ns, sizeof(*paths));
	if (!paths)
		t_fatal("out of memory");
	m.rng = c->random_data ? rng : NULL;

	printf("case %s\n", c->name);
	if (ns > 1) {
		snprintf(base, sizeof(base), "%s/%s", dir, c->name);
		for (uint32_t s = 0; s < ns; s++)
			ggml_ref_shard_path(paths[s], sizeof(paths[s]), base, s,
					    ns);
		/* Cut as gguf-split --split-max-tensors would, at a count
		 * that leaves a layer's experts in two shards. */
		if (!layer_spread(r, &m)) {
			struct ggml_ref_tensor *t;
			size_t n;
			if (ggml_ref_moe_tensors(r, &m, &t, &n) != 0)
				t_fatal("ggml_ref_moe_tensors failed");
			free(t);
			for (size_t k = (n + ns - 1) / ns; k < n; k++) {
				if ((n + k - 1) / k != ns)
					break;
				m.split_max_tensors = (uint32_t)k;
				if (layer_spread(r, &m))
					break;
				m.split_max_tensors = 0;
			}
		}
		T_CHECK(layer_spread(r, &m), "%s: no layer spans two shards; "
			"the case does not test what it should", c->name);
	} else {
		snprintf(base, sizeof(base), "%s/%s.gguf", dir, c->name);
		snprintf(paths[0], sizeof(paths[0]), "%s", base);
	}
	if (ggml_ref_write_moe(r, &m, base) != 0)
		t_fatal("%s: ggml could not write the model", c->name);

	struct recs want = { 0 };
	if (expected_from_ggml(r, paths, ns, &want) != 0)
		t_fatal("%s: ggml cannot read the model it wrote", c->name);
	uint32_t n_moe = m.n_block - m.n_leading_dense;
	size_t n_expect = (size_t)n_moe * m.n_expert * (m.fused ? 2 : 3);
	T_CHECK(want.n == n_expect, "%s: ggml lists %zu expert extents, the "
		"description %zu: the harness is broken", c->name, want.n,
		n_expect);
	char *want_txt = fmt_lines(r, &want);

	/* The tool on the first shard, and on a middle one. */
	uint32_t starts[2] = { 0, ns / 2 };
	for (int k = 0; k < (ns > 1 ? 2 : 1); k++) {
		const char *p = paths[starts[k]];
		int rc;
		char *got = run_tool("--extents", p, &rc);
		char *exp = strdup(want_txt);
		if (!exp)
			t_fatal("out of memory");
		char what[PATH_MAX + 64];
		snprintf(what, sizeof(what), "%s (inspect --extents on shard "
			 "%u of %u)", c->name, starts[k] + 1, ns);
		T_CHECK(rc == 0, "%s: exit %d", what, rc);
		if (got)
			compare_lines(what, got, exp);
		else
			T_CHECK(0, "%s: could not run %s", what, tool);
		free(got);
		free(exp);
	}
	check_json(paths[0], &want);
	check_api(r, paths[ns / 2], &m, &want);

	free(want_txt);
	free(want.v);
	free(paths);
}

int main(void)
{
	struct ggml_ref r;
	ggml_ref_load_or_fail(&r);
	uint64_t rng = t_seed();

	tool = t_build_path("moestream");
	if (access(tool, X_OK) != 0)
		t_fatal("%s: %s (build it with make)", tool, strerror(errno));

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_case(&r, &cases[i], &rng);
	return t_done();
}
