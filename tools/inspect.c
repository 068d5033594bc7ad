/*
 * inspect.c - `moestream inspect MODEL [--extents] [--json]`.
 *
 * Reads only metadata (a 134 GB model costs a few MB of reads), then prints
 * what matters for streaming: how many experts, how big, what a token costs
 * when nothing is cached and what that means in tokens per second for a
 * given disk. --extents prints the expert map itself, one line per expert
 * projection, in the order a loader would issue the reads.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tools.h"

static const double disk_gbps[] = { 3.5, 7.0, 14.0 };
#define N_DISKS (sizeof(disk_gbps) / sizeof(disk_gbps[0]))

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestream inspect MODEL [--extents] [--json]\n"
		"\n"
		"Summarises a GGUF model for streaming: architecture, blocks, MoE "
		"layers,\nexperts (routed, used per token, shared), the quant "
		"types of gate/up/down\nand how they vary by layer, bytes per "
		"expert, total expert and resident\nbytes, the bytes a token "
		"reads when nothing is cached, and the tokens/s\nthat allows at "
		"3.5, 7 and 14 GB/s. Reads only the metadata.\n"
		"\n"
		"MODEL is a .gguf file or any shard of a split model\n"
		"(NAME-00002-of-00003.gguf finds its siblings).\n"
		"\n"
		"  --extents   one TSV line per expert projection, by layer, "
		"expert, proj:\n"
		"              layer expert proj type shard offset bytes\n"
		"              (layer = block index N of blk.N; proj gate|up|down|"
		"gate_up;\n"
		"              shard 0-based; offset absolute in that shard's "
		"file)\n"
		"  --json      the summary (and with --extents, the extents) as "
		"JSON\n"
		"  -h, --help  this text\n"
		"\n"
		"exit: 0 ok, 1 bad or unreadable model, 2 bad usage\n");
}

/* ---- the summary -------------------------------------------------------------- */

static bool same_types(const struct ms_moe_layer *a,
		       const struct ms_moe_layer *b)
{
	if (a->n_proj != b->n_proj)
		return false;
	for (uint32_t j = 0; j < a->n_proj; j++)
		if (a->proj[j] != b->proj[j] || a->type[j] != b->type[j])
			return false;
	return true;
}

static void print_types(const struct ms_moe_layer *L)
{
	for (uint32_t j = 0; j < L->n_proj; j++)
		printf("%s%s %s", j ? ", " : "", ms_proj_name(L->proj[j]),
		       ms_type_name(L->type[j]));
}

/* Prints "; LABEL blk.0-2, blk.5" for the blocks `pick` selects. */
static void print_blocks(const char *label, const struct ms_model *m,
			 bool (*pick)(const struct ms_model *, uint32_t))
{
	bool first = true;
	for (uint32_t b = 0; b < m->n_block; b++) {
		if (!pick(m, b) || (b > 0 && pick(m, b - 1)))
			continue;
		uint32_t e = b;
		while (e + 1 < m->n_block && pick(m, e + 1))
			e++;
		if (first)
			printf("; %s blk.%u", label, b);
		else
			printf(", blk.%u", b);
		if (e > b)
			printf("-%u", e);
		first = false;
	}
}

static bool is_dense(const struct ms_model *m, uint32_t b)
{
	return m->block_layer[b] < 0;
}

static bool is_nextn(const struct ms_model *m, uint32_t b)
{
	return m->block_layer[b] >= 0 && m->layers[m->block_layer[b]].nextn;
}

static void summary(const char *path, const struct ms_model *m)
{
	char b1[32], b2[32], b3[32];
	uint64_t file_bytes = 0;
	for (uint32_t s = 0; s < m->n_shards; s++)
		file_bytes += m->shards[s]->file_size;

	printf("model          %s\n", path);
	printf("files          %u (%s), GGUF v%u, %s tensors\n", m->n_shards,
	       fmt_bytes(file_bytes, b1, sizeof(b1)), m->shards[0]->version,
	       fmt_count(m->n_tensors, b2, sizeof(b2)));
	printf("architecture   %s%s%s%s\n", m->arch, *m->name ? " (\"" : "",
	       m->name, *m->name ? "\")" : "");
	if (!m->n_expert) {
		printf("experts        none: not a Mixture-of-Experts model (no "
		       "%s.expert_count), nothing to stream\n",
		       m->arch);
		printf("resident       %s in %s tensors\n",
		       fmt_bytes(m->resident_bytes, b1, sizeof(b1)),
		       fmt_count(m->n_resident_tensors, b2, sizeof(b2)));
		return;
	}
	printf("blocks         %u: %u MoE layers run per token", m->n_block,
	       m->n_layers_run);
	print_blocks("dense", m, is_dense);
	print_blocks("NextN", m, is_nextn);
	printf("%s\n", m->n_layers > m->n_layers_run ? " (in the file, not run)"
						     : "");
	printf("experts        %u routed per MoE layer, %u used per token, %u "
	       "shared\n",
	       m->n_expert, m->n_expert_used, m->n_expert_shared);

	/* Types, grouped over runs of layers that agree. */
	bool uniform = true;
	for (uint32_t l = 1; l < m->n_layers; l++)
		uniform &= same_types(&m->layers[l], &m->layers[0]);
	printf("expert types   ");
	if (uniform) {
		print_types(&m->layers[0]);
		printf(" (all %u MoE layers)\n", m->n_layers);
	} else {
		printf("vary by layer:\n");
		for (uint32_t l = 0; l < m->n_layers;) {
			uint32_t e = l;
			while (e + 1 < m->n_layers &&
			       same_types(&m->layers[e + 1], &m->layers[l]))
				e++;
			printf("                 blk.%u", m->layers[l].block);
			if (e > l)
				printf("-%u", m->layers[e].block);
			printf(": ");
			print_types(&m->layers[l]);
			printf("\n");
			l = e + 1;
		}
	}
	printf("bytes/expert   %s", fmt_count(m->expert_bytes_min, b1, sizeof(b1)));
	if (m->expert_bytes_max != m->expert_bytes_min)
		printf(" .. %s (by layer)", fmt_count(m->expert_bytes_max, b2,
						      sizeof(b2)));
	printf(" (%s)\n", fmt_bytes(m->expert_bytes_max, b3, sizeof(b3)));
	printf("routed experts %s in the %u layers run",
	       fmt_bytes(m->expert_bytes_run, b1, sizeof(b1)), m->n_layers_run);
	if (m->expert_bytes > m->expert_bytes_run)
		printf(", + %s in NextN layers",
		       fmt_bytes(m->expert_bytes - m->expert_bytes_run, b2,
				 sizeof(b2)));
	printf("\n");
	printf("resident       %s in %s tensors (attention, norms, router, "
	       "shared experts,\n               dense blocks, embeddings: "
	       "what belongs in VRAM)\n",
	       fmt_bytes(m->resident_bytes, b1, sizeof(b1)),
	       fmt_count(m->n_resident_tensors, b2, sizeof(b2)));
	printf("per token      %s read when nothing is cached (%u experts x %u "
	       "layers)\n",
	       fmt_bytes(m->bytes_per_token, b1, sizeof(b1)), m->n_expert_used,
	       m->n_layers_run);
	printf("tok/s bound   ");
	for (size_t i = 0; i < N_DISKS; i++)
		printf(" %.2f at %g GB/s%s",
		       m->bytes_per_token
			       ? disk_gbps[i] * 1e9 / (double)m->bytes_per_token
			       : 0.0,
		       disk_gbps[i], i + 1 < N_DISKS ? "," : "");
	printf("\n               (no cache; at hit rate h the bound is 1/(1-h) "
	       "times that)\n");
}

/* ---- extents ------------------------------------------------------------------ */

/* Calls fn for every expert projection, ordered by layer, expert, proj: the
 * order of the TSV and of the JSON array. */
typedef void (*extent_fn)(void *ctx, uint32_t block, uint32_t expert,
			  enum ms_proj proj, const struct ms_extent *x);

static void each_extent(const struct ms_model *m, extent_fn fn, void *ctx)
{
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		for (uint32_t e = 0; e < m->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			for (uint32_t j = 0; j < L->n_proj; j++)
				fn(ctx, L->block, e, L->proj[j], &x[j]);
		}
	}
}

static void print_extent(void *ctx, uint32_t block, uint32_t expert,
			 enum ms_proj proj, const struct ms_extent *x)
{
	(void)ctx;
	printf("%u\t%u\t%s\t%s\t%u\t%llu\t%llu\n", block, expert,
	       ms_proj_name(proj), ms_type_name(x->type), x->shard,
	       (unsigned long long)x->offset, (unsigned long long)x->bytes);
}

/* ---- JSON ------------------------------------------------------------------------ */

#define JNUM(o, k, v) cJSON_AddNumberToObject((o), (k), (double)(v))

static void json_extent(void *ctx, uint32_t block, uint32_t expert,
			enum ms_proj proj, const struct ms_extent *x)
{
	cJSON *y = cJSON_CreateObject();
	JNUM(y, "layer", block);
	JNUM(y, "expert", expert);
	cJSON_AddStringToObject(y, "proj", ms_proj_name(proj));
	cJSON_AddStringToObject(y, "type", ms_type_name(x->type));
	JNUM(y, "shard", x->shard);
	JNUM(y, "offset", x->offset);
	JNUM(y, "bytes", x->bytes);
	cJSON_AddItemToArray(ctx, y);
}

static cJSON *json_model(const char *path, const struct ms_model *m,
			 bool extents)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", path);
	cJSON *sh = cJSON_AddArrayToObject(o, "shards");
	for (uint32_t s = 0; s < m->n_shards; s++) {
		const struct ms_gguf *g = m->shards[s];
		cJSON *x = cJSON_CreateObject();
		cJSON_AddStringToObject(x, "path", g->path);
		JNUM(x, "size", g->file_size);
		JNUM(x, "version", g->version);
		JNUM(x, "n_tensors", g->n_tensors);
		JNUM(x, "n_kv", g->n_kv);
		JNUM(x, "alignment", g->alignment);
		JNUM(x, "data_offset", g->data_offset);
		cJSON_AddItemToArray(sh, x);
	}
	cJSON_AddStringToObject(o, "architecture", m->arch);
	cJSON_AddStringToObject(o, "name", m->name);
	JNUM(o, "n_tensors", m->n_tensors);
	JNUM(o, "n_block", m->n_block);
	JNUM(o, "n_expert", m->n_expert);
	JNUM(o, "n_expert_used", m->n_expert_used);
	JNUM(o, "n_expert_shared", m->n_expert_shared);
	JNUM(o, "n_leading_dense", m->n_leading_dense);
	JNUM(o, "n_nextn", m->n_nextn);
	JNUM(o, "n_embd", m->n_embd);
	JNUM(o, "n_ff_exp", m->n_ff_exp);
	JNUM(o, "n_moe_layers", m->n_layers);
	JNUM(o, "n_moe_layers_run", m->n_layers_run);
	cJSON *dense = cJSON_AddArrayToObject(o, "dense_blocks");
	for (uint32_t b = 0; b < m->n_block; b++)
		if (m->block_layer[b] < 0)
			cJSON_AddItemToArray(dense, cJSON_CreateNumber(b));
	cJSON *layers = cJSON_AddArrayToObject(o, "moe_layers");
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		cJSON *x = cJSON_CreateObject();
		JNUM(x, "block", L->block);
		cJSON_AddBoolToObject(x, "nextn", L->nextn);
		cJSON_AddBoolToObject(x, "fused", L->fused);
		cJSON *t = cJSON_AddObjectToObject(x, "types");
		for (uint32_t j = 0; j < L->n_proj; j++)
			cJSON_AddStringToObject(t, ms_proj_name(L->proj[j]),
						ms_type_name(L->type[j]));
		JNUM(x, "expert_bytes", L->expert_bytes);
		cJSON_AddItemToArray(layers, x);
	}
	JNUM(o, "expert_bytes", m->expert_bytes);
	JNUM(o, "expert_bytes_run", m->expert_bytes_run);
	JNUM(o, "expert_bytes_min", m->expert_bytes_min);
	JNUM(o, "expert_bytes_max", m->expert_bytes_max);
	JNUM(o, "resident_bytes", m->resident_bytes);
	JNUM(o, "n_resident_tensors", m->n_resident_tensors);
	JNUM(o, "bytes_per_token", m->bytes_per_token);
	cJSON *bound = cJSON_AddObjectToObject(o, "tok_s_bound");
	for (size_t i = 0; i < N_DISKS; i++) {
		char k[16];
		snprintf(k, sizeof(k), "%g", disk_gbps[i]);
		JNUM(bound, k,
		     m->bytes_per_token
			     ? disk_gbps[i] * 1e9 / (double)m->bytes_per_token
			     : 0.0);
	}
	if (!extents)
		return o;
	each_extent(m, json_extent, cJSON_AddArrayToObject(o, "extents"));
	return o;
}

int cmd_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "extents", no_argument, 0, 'e' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	bool extents = false, json = false;
	int c;

	while ((c = getopt_long(argc, argv, "ejh", opts, NULL)) != -1) {
		switch (c) {
		case 'e': extents = true; break;
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "usage: moestream inspect MODEL "
					"[--extents] [--json]  (see --help)\n");
			return EXIT_USAGE;
		}
	}
	const char *path = tool_one_model("inspect", argc, argv, optind);
	if (!path) {
		fprintf(stderr, "usage: moestream inspect MODEL [--extents] "
				"[--json]  (see --help)\n");
		return EXIT_USAGE;
	}
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err)) {
		tool_error("inspect", "%s", err.msg);
		return 1;
	}
	int rc = 0;
	if (json) {
		cJSON *o = json_model(path, m, extents);
		char *s = o ? cJSON_Print(o) : NULL;
		if (s) {
			puts(s);
		} else {
			tool_error("inspect", "out of memory building JSON");
			rc = 1;
		}
		free(s);
		cJSON_Delete(o);
	} else if (extents) {
		each_extent(m, print_extent, NULL);
	} else {
		summary(path, m);
	}
	if (fflush(stdout) || ferror(stdout)) {
		tool_error("inspect", "writing the output failed");
		rc = 1;
	}
	ms_model_free(m);
	return rc;
}
