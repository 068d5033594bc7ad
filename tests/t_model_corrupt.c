/*
 * t_model_corrupt.c - model-level corruption: the expert map and split sets.
 *
 * The GGUF files here are all well formed; what is wrong is the model they
 * describe: an expert tensor whose third dimension disagrees with
 * {arch}.expert_count, a MoE layer without its down projection, shapes that
 * do not chain, a block index past block_count, split shards that disagree
 * on split.count / split.no or share a tensor, a missing sibling. Each case
 * asserts that ms_model_open returns a negative errno with a message, and
 * prints the message.
 *
 * The positive cases matter as much: the same builder's valid models (plain,
 * fused gate_up, a glm4moe-like one with dense, shared and NextN blocks and
 * per-layer types, a dense model, a 3-shard split opened through each shard)
 * must open, and every extent of the expert map must equal what this file
 * computes on its own from the tensor infos: data_offset + offset +
 * e * ne1 * row_size.
 *
 *   t_model_corrupt [CASE...]
 */
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moestream/model.h"
#include "gguf_raw.h"
#include "testutil.h"

static const char *root;
static int n_cases, n_rejected, n_probes;

static char *case_dir(const char *cname)
{
	static char d[4096];
	snprintf(d, sizeof(d), "%s/%s", root, cname);
	if (mkdir(d, 0755) && errno != EEXIST)
		t_fatal("mkdir %s: %s", d, strerror(errno));
	return d;
}

/* ---- independent expectations ------------------------------------------------ */

static uint64_t tbytes(const struct gr_tensor *t)
{
	uint64_t n = 0;
	if (!gr_tensor_bytes(t->type, t->n_dims, t->ne, &n))
		t_fatal("builder: tensor %.*s has no size", (int)t->name_len,
			(const char *)t->name);
	return n;
}

/* Finds `name` over the shards: shard index, tensor pointer, data offset. */
static const struct gr_tensor *find_in(const struct gr_gguf *sh, uint32_t n,
				       const char *name, uint32_t *shard,
				       uint64_t *data_off)
{
	for (uint32_t s = 0; s < n; s++) {
		int i = gr_find_tensor(&sh[s], name);
		if (i < 0)
			continue;
		struct gr_buf b;
		struct gr_layout lay;
		gr_build(&sh[s], &b, &lay);
		gr_buf_free(&b);
		*shard = s;
		*data_off = lay.data_offset;
		return &sh[s].t[i];
	}
	return NULL;
}

/* A routed-expert tensor: blk.N.ffn_*_exps.weight, or a legacy per-expert
 * blk.N.ffn_{gate,up,down}.E.weight. */
static bool is_exps(const struct gr_tensor *t)
{
	char n[260], proj[16];
	unsigned b, e;
	int end = 0;
	snprintf(n, sizeof(n), "%.*s", (int)t->name_len, (const char *)t->name);
	if (strstr(n, "_exps.weight"))
		return true;
	return sscanf(n, "blk.%u.ffn_%15[a-z].%u.weight%n", &b, proj, &e,
		      &end) == 3 && end == (int)strlen(n);
}

/* Checks every field of the model and every extent against the builder. */
static void verify_model(const char *cname, const struct ms_model *m,
			 const struct gr_gguf *sh, uint32_t n_sh,
			 const struct gr_moe *o)
{
	T_EQ_U64(m->n_shards, n_sh);
	T_CHECK(!strcmp(m->arch, o->arch), "%s: arch %s", cname, m->arch);
	T_CHECK(!strcmp(m->name, o->name ? o->name : ""), "%s: name %s", cname,
		m->name);
	T_EQ_U64(m->n_block, o->n_block);
	T_EQ_U64(m->n_expert, o->n_expert);
	T_EQ_U64(m->n_embd, o->n_embd);
	if (o->n_expert) {
		T_EQ_U64(m->n_expert_used, o->n_expert_used);
		T_EQ_U64(m->n_expert_shared, o->n_shared);
		T_EQ_U64(m->n_leading_dense, o->n_leading_dense);
		T_EQ_U64(m->n_nextn, o->n_nextn);
		T_EQ_U64(m->n_ff_exp, o->n_ff);
	}

	uint64_t n_tensors = 0, all_bytes = 0, exps_bytes = 0, n_exps = 0;
	for (uint32_t s = 0; s < n_sh; s++) {
		n_tensors += sh[s].nt;
		for (size_t i = 0; i < sh[s].nt; i++) {
			uint64_t b = tbytes(&sh[s].t[i]);
			all_bytes += b;
			if (is_exps(&sh[s].t[i])) {
				exps_bytes += b;
				n_exps++;
			}
		}
	}
	T_EQ_U64(m->n_tensors, n_tensors);
	T_EQ_U64(m->resident_bytes, all_bytes - exps_bytes);
	T_EQ_U64(m->n_resident_tensors, n_tensors - n_exps);
	T_EQ_U64(m->expert_bytes, exps_bytes);

	uint32_t want_layers = o->n_expert ? o->n_block - o->n_leading_dense : 0;
	T_EQ_U64(m->n_layers, want_layers);
	T_EQ_U64(m->n_layers_run, o->n_expert ? want_layers - o->n_nextn : 0);
	if (m->n_layers != want_layers)
		return;

	uint64_t per_token = 0, emin = UINT64_MAX, emax = 0;
	for (uint32_t b = 0; b < o->n_block; b++) {
		bool moe = o->n_expert && b >= o->n_leading_dense;
		int32_t want_l = moe ? (int32_t)(b - o->n_leading_dense) : -1;
		T_CHECK(m->block_layer && m->block_layer[b] == want_l,
			"%s: block_layer[%u] = %d, expected %d", cname, b,
			m->block_layer ? m->block_layer[b] : -99, want_l);
	}
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		uint32_t blk = o->n_leading_dense + l;
		bool nextn = blk >= o->n_block - o->n_nextn;
		T_EQ_U64(L->block, blk);
		T_CHECK(L->nextn == nextn, "%s: layer %u nextn %d", cname, l,
			L->nextn);
		T_CHECK(L->fused == o->fused, "%s: layer %u fused %d", cname, l,
			L->fused);
		const char *pn[3] = {"gate", "up", "down"};
		enum ms_proj pp[3] = {MS_PROJ_GATE, MS_PROJ_UP, MS_PROJ_DOWN};
		uint32_t np = 3;
		if (o->fused) {
			pn[0] = "gate_up";
			pn[1] = "down";
			pp[0] = MS_PROJ_GATE_UP;
			pp[1] = MS_PROJ_DOWN;
			np = 2;
		}
		T_EQ_U64(L->n_proj, np);
		if (L->n_proj != np)
			continue;
		/* Where expert e's projection p must be: slice e of the 3-D
		 * tensor, or the whole legacy 2-D tensor of expert e. */
		uint64_t ebytes = 0;
		for (uint32_t e = 0; e < o->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			T_CHECK(x != NULL, "%s: no extents for layer %u expert %u",
				cname, l, e);
			for (uint32_t p = 0; p < np; p++) {
				const char *tn = o->legacy
					? gr_legacy_name(blk, pn[p], e)
					: gr_exps_name(blk, pn[p]);
				uint32_t shard;
				uint64_t doff;
				const struct gr_tensor *t = find_in(sh, n_sh, tn,
								    &shard, &doff);
				if (!t)
					t_fatal("%s: builder lost %s", cname, tn);
				uint64_t slice = o->legacy
					? tbytes(t) : tbytes(t) / t->ne[2];
				uint64_t off = doff + t->offset +
					(o->legacy ? 0 : e * slice);
				if (e == 0) {
					ebytes += slice;
					T_EQ_U64(L->proj[p], pp[p]);
					T_EQ_U64(L->type[p], t->type);
					T_EQ_U64(L->ne[p][0], t->ne[0]);
					T_EQ_U64(L->ne[p][1], t->ne[1]);
					T_EQ_U64(L->ne[p][2], o->n_expert);
				}
				if (!x)
					continue;
				if (x[p].offset != off || x[p].bytes != slice ||
				    x[p].shard != shard || x[p].type != t->type)
					t_fail_at(__FILE__, __LINE__,
						  "%s: layer %u expert %u %s: got "
						  "shard %u offset %llu bytes %llu "
						  "type %u, expected shard %u "
						  "offset %llu bytes %llu type %u",
						  cname, l, e, pn[p], x[p].shard,
						  (unsigned long long)x[p].offset,
						  (unsigned long long)x[p].bytes,
						  x[p].type, shard,
						  (unsigned long long)off,
						  (unsigned long long)slice,
						  t->type);
			}
		}
		T_EQ_U64(L->expert_bytes, ebytes);
		if (!nextn)
			per_token += ebytes;
		if (ebytes < emin)
			emin = ebytes;
		if (ebytes > emax)
			emax = ebytes;
		T_CHECK(ms_model_expert(m, l, o->n_expert) == NULL,
			"%s: expert %u (== n_expert) must be NULL", cname,
			o->n_expert);
	}
	T_CHECK(ms_model_expert(m, m->n_layers, 0) == NULL,
		"%s: layer n_layers must be NULL", cname);
	if (m->n_layers) {
		T_EQ_U64(m->bytes_per_token, per_token * o->n_expert_used);
		T_EQ_U64(m->expert_bytes_min, emin);
		T_EQ_U64(m->expert_bytes_max, emax);
	}

	/* Every tensor is found in the shard it was written to. */
	for (uint32_t s = 0; s < n_sh; s++) {
		for (size_t i = 0; i < sh[s].nt; i++) {
			char n[260];
			uint32_t fs = 99;
			uint64_t fi = 99;
			snprintf(n, sizeof(n), "%.*s", (int)sh[s].t[i].name_len,
				 (const char *)sh[s].t[i].name);
			int rc = ms_model_find_tensor(m, n, &fs, &fi);
			T_CHECK(rc == 0 && fs == s && fi == i, "%s: find_tensor(%s) "
				"= %d shard %u idx %llu, expected shard %u idx %zu",
				cname, n, rc, fs, (unsigned long long)fi, s, i);
		}
	}
	uint32_t fs;
	uint64_t fi;
	T_CHECK(ms_model_find_tensor(m, "no.such.tensor", &fs, &fi) == -ENOENT,
		"%s: find_tensor of a missing name", cname);
}

/* ---- open and judge ------------------------------------------------------------ */

static void expect_open(const char *cname, const char *path,
			const struct gr_gguf *sh, uint32_t n_sh,
			const struct gr_moe *o)
{
	struct ms_model *m = NULL;
	struct ms_err err = {0};
	int rc = ms_model_open(&m, path, &err);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "%s: a VALID model was rejected: "
			  "rc %d: %s", cname, rc, err.msg);
		return;
	}
	printf("  %-34s opens: %u shard(s), %u blocks, %u MoE layers (%u run), "
	       "%u experts, %llu B/expert, %llu B/token\n", cname, m->n_shards,
	       m->n_block, m->n_layers, m->n_layers_run, m->n_expert,
	       (unsigned long long)m->expert_bytes_max,
	       (unsigned long long)m->bytes_per_token);
	verify_model(cname, m, sh, n_sh, o);
	ms_model_free(m);
}

static void expect_reject_path(const char *cname, const char *path,
			       const char *want)
{
	struct ms_model *m = NULL;
	struct ms_err err = {0};
	int rc = ms_model_open(&m, path, &err);
	n_cases++;
	if (rc >= 0) {
		t_fail_at(__FILE__, __LINE__, "%s: ms_model_open ACCEPTED it",
			  cname);
		ms_model_free(m);
		return;
	}
	bool ok = true;
	if (!err.msg[0]) {
		t_fail_at(__FILE__, __LINE__, "%s: rc %d with an EMPTY message",
			  cname, rc);
		ok = false;
	}
	if (err.code != rc) {
		t_fail_at(__FILE__, __LINE__, "%s: rc %d but err.code %d", cname,
			  rc, err.code);
		ok = false;
	}
	if (m) {
		t_fail_at(__FILE__, __LINE__, "%s: failed but *out != NULL",
			  cname);
		ok = false;
	}
	if (want && !strcasestr(err.msg, want)) {
		t_fail_at(__FILE__, __LINE__, "%s: message lacks \"%s\"", cname,
			  want);
		ok = false;
	}
	printf("  %-34s rc=%d (%s): %s\n", cname, rc, strerror(-rc), err.msg);
	if (ok)
		n_rejected++;
}

/* A policy the brief leaves open: print what happens, never fail (except on
 * an error without a message, which is always wrong). */
static void probe_path(const char *cname, const char *path)
{
	struct ms_model *m = NULL;
	struct ms_err err = {0};
	int rc = ms_model_open(&m, path, &err);
	n_probes++;
	if (rc < 0) {
		T_CHECK(err.msg[0], "%s: rc %d with an EMPTY message", cname, rc);
		printf("  %-34s (probe) rejected rc=%d: %s\n", cname, rc, err.msg);
	} else {
		printf("  %-34s (probe) ACCEPTED: %u layers, %u experts\n", cname,
		       m->n_layers, m->n_expert);
	}
	ms_model_free(m);
}

static char *write_single(const char *cname, const struct gr_gguf *g)
{
	static char path[4200];
	snprintf(path, sizeof(path), "%s/model.gguf", case_dir(cname));
	int rc = gr_write(g, path);
	if (rc)
		t_fatal("write %s: %s", path, strerror(-rc));
	return path;
}

static void moe(struct gr_gguf *g, struct gr_moe *o)
{
	gr_moe_default(o);
	gr_init(g);
	gr_moe_build(g, o);
}

static struct gr_tensor *T(struct gr_gguf *g, const char *name)
{
	int i = gr_find_tensor(g, name);
	if (i < 0)
		t_fatal("builder: no tensor %s", name);
	return &g->t[i];
}

/* ---- single-file cases -------------------------------------------------------- */

typedef void model_case_fn(struct gr_gguf *g, struct gr_moe *o);
#define MCASE(name) static void m_##name(struct gr_gguf *g, struct gr_moe *o)

MCASE(exps_ne2_ne_expert_count)
{
	(void)o;
	T(g, gr_exps_name(1, "up"))->ne[2] = 3;
	gr_relayout(g);
}
MCASE(expert_count_ne_all_tensors)
{
	gr_set_u32(g, "qwen3moe.expert_count", o->n_expert * 2);
}
MCASE(expert_count_huge)
{
	(void)o;
	gr_set_u32(g, "qwen3moe.expert_count", 0x80000000u);
}
MCASE(expert_count_wrong_type_string)
{
	(void)o;
	gr_set_str(g, "qwen3moe.expert_count", "4");
}
MCASE(expert_count_negative_i32)
{
	(void)o;
	gr_set_i32(g, "qwen3moe.expert_count", -4);
}
MCASE(missing_down_exps)
{
	(void)o;
	gr_del_tensor(g, gr_exps_name(1, "down"));
	gr_relayout(g);
}
MCASE(missing_up_exps)
{
	(void)o;
	gr_del_tensor(g, gr_exps_name(0, "up"));
	gr_relayout(g);
}
MCASE(missing_gate_exps)
{
	(void)o;
	gr_del_tensor(g, gr_exps_name(0, "gate"));
	gr_relayout(g);
}
MCASE(gate_down_shape_mismatch)
{
	/* down's ne0 (n_ff in) disagrees with gate's ne1 (n_ff out). */
	T(g, gr_exps_name(0, "down"))->ne[0] = o->n_ff * 2;
	gr_relayout(g);
}
MCASE(gate_up_shape_mismatch)
{
	T(g, gr_exps_name(1, "up"))->ne[1] = o->n_ff * 2;
	gr_relayout(g);
}
MCASE(down_out_ne_embd_mismatch)
{
	T(g, gr_exps_name(0, "down"))->ne[1] = o->n_embd * 2;
	gr_relayout(g);
}
MCASE(exps_n_dims_2)
{
	(void)o;
	struct gr_tensor *t = T(g, gr_exps_name(0, "gate"));
	t->n_dims = t->n_ne = 2;
	gr_relayout(g);
}
MCASE(exps_n_dims_4)
{
	(void)o;
	struct gr_tensor *t = T(g, gr_exps_name(0, "down"));
	t->n_dims = t->n_ne = 4;
	t->ne[3] = 2;
	gr_relayout(g);
}
static void add_triple(struct gr_gguf *g, const struct gr_moe *o, uint32_t blk)
{
	gr_add_tensor(g, gr_exps_name(blk, "gate"), 3,
		      (const uint64_t[]){o->n_embd, o->n_ff, o->n_expert},
		      o->type[0]);
	gr_add_tensor(g, gr_exps_name(blk, "up"), 3,
		      (const uint64_t[]){o->n_embd, o->n_ff, o->n_expert},
		      o->type[1]);
	gr_add_tensor(g, gr_exps_name(blk, "down"), 3,
		      (const uint64_t[]){o->n_ff, o->n_embd, o->n_expert},
		      o->type[2]);
}
MCASE(block_index_999) { add_triple(g, o, 999); }
MCASE(block_index_eq_block_count) { add_triple(g, o, o->n_block); }
MCASE(block_index_u32_overflow) { add_triple(g, o, 4294967295u); }
MCASE(fused_gate_up_odd_rows)
{
	/* Built fused (see the table); 2*n_ff + 1 rows cannot be halved. */
	T(g, gr_exps_name(0, "gate_up"))->ne[1] = 2 * o->n_ff + 1;
	gr_relayout(g);
}
MCASE(fused_gate_up_rows_ne_down)
{
	T(g, gr_exps_name(1, "gate_up"))->ne[1] = 4 * o->n_ff;
	gr_relayout(g);
}
MCASE(block_count_wrong_type_string)
{
	(void)o;
	gr_set_str(g, "qwen3moe.block_count", "2");
}

/* The same (block, projection) reached through two names: blk.01 is block
 * 1 to a number parser. Which of the two tensors the map would use depends
 * on their order in the file, so the file is ambiguous. */
MCASE(exps_block_leading_zero_duplicate)
{
	gr_add_tensor(g, "blk.01.ffn_gate_exps.weight", 3,
		      (const uint64_t[]){o->n_embd, o->n_ff, o->n_expert},
		      o->type[0]);
}
MCASE(exps_block_leading_zero_only)
{
	/* blk.01 as the only name for block 1's gate: not the canonical
	 * spelling ggml writes; a reader must not silently take it for
	 * blk.1 or silently drop it. Rejection or acceptance both print. */
	(void)o;
	gr_tensor_name(T(g, gr_exps_name(1, "gate")),
		       "blk.01.ffn_gate_exps.weight", 27);
}

/* ---- the legacy layout: one 2-D tensor per expert (old Mixtral files) ---- */
MCASE(legacy_missing_expert)
{
	(void)o;
	gr_del_tensor(g, gr_legacy_name(1, "up", 2));
	gr_relayout(g);
}
MCASE(legacy_type_differs)
{
	(void)o;
	T(g, gr_legacy_name(0, "down", 3))->type = GR_T_F32;
	gr_relayout(g);
}
MCASE(legacy_shape_differs)
{
	T(g, gr_legacy_name(0, "gate", 1))->ne[1] = 2 * o->n_ff;
	gr_relayout(g);
}
MCASE(legacy_expert_ge_count)
{
	gr_add_tensor(g, gr_legacy_name(0, "gate", o->n_expert), 2,
		      (const uint64_t[]){o->n_embd, o->n_ff}, o->type[0]);
}
MCASE(legacy_mixed_with_merged)
{
	gr_add_tensor(g, gr_exps_name(0, "gate"), 3,
		      (const uint64_t[]){o->n_embd, o->n_ff, o->n_expert},
		      o->type[0]);
}
MCASE(legacy_n_dims_3)
{
	(void)o;
	struct gr_tensor *t = T(g, gr_legacy_name(0, "gate", 0));
	t->n_dims = t->n_ne = 3;
	t->ne[2] = 1;
}
MCASE(legacy_expert_leading_zero_duplicate)
{
	gr_add_tensor(g, "blk.0.ffn_gate.01.weight", 2,
		      (const uint64_t[]){o->n_embd, o->n_ff}, o->type[0]);
}
MCASE(legacy_down_shape_mismatch)
{
	for (uint32_t e = 0; e < o->n_expert; e++)
		T(g, gr_legacy_name(1, "down", e))->ne[0] = 2 * o->n_ff;
	gr_relayout(g);
}

enum { BASE_PLAIN, BASE_FUSED, BASE_LEGACY };

struct mcase {
	const char *name;
	model_case_fn *fn;
	int base;    /* which valid model the defect goes into */
	bool probe;  /* policy not fixed by the brief: report only */
};

#define M(name) {#name, m_##name, BASE_PLAIN, false}
#define MF(name) {#name, m_##name, BASE_FUSED, false}
#define ML(name) {#name, m_##name, BASE_LEGACY, false}
#define MP(name) {#name, m_##name, BASE_PLAIN, true}

MCASE(expert_used_gt_count)
{
	gr_set_u32(g, "qwen3moe.expert_used_count", o->n_expert + 1);
}
MCASE(probe_expert_count_zero)
{
	(void)o;
	gr_set_u32(g, "qwen3moe.expert_count", 0);
}
MCASE(block_count_missing)
{
	(void)o;
	gr_del(g, "qwen3moe.block_count");
}
MCASE(block_count_huge)
{
	/* 4 billion blocks in a 5 KB file: a [n_block] table would be 16 GB. */
	(void)o;
	gr_set_u32(g, "qwen3moe.block_count", 0xffffffffu);
}
MCASE(probe_arch_missing)
{
	(void)o;
	gr_del(g, "general.architecture");
}
MCASE(fused_and_separate)
{
	/* A layer with gate + up + down AND a gate_up. */
	gr_add_tensor(g, gr_exps_name(0, "gate_up"), 3,
		      (const uint64_t[]){o->n_embd, 2 * o->n_ff, o->n_expert},
		      o->type[0]);
}

static const struct mcase mcases[] = {
	M(exps_ne2_ne_expert_count), M(expert_count_ne_all_tensors),
	M(expert_count_huge), M(expert_count_wrong_type_string),
	M(expert_count_negative_i32), M(missing_down_exps),
	M(missing_up_exps), M(missing_gate_exps), M(gate_down_shape_mismatch),
	M(gate_up_shape_mismatch), M(down_out_ne_embd_mismatch),
	M(exps_n_dims_2), M(exps_n_dims_4), M(block_index_999),
	M(block_index_eq_block_count), M(block_index_u32_overflow),
	MF(fused_gate_up_odd_rows), MF(fused_gate_up_rows_ne_down),
	M(block_count_wrong_type_string),
	M(expert_used_gt_count), M(block_count_missing), M(block_count_huge),
	M(fused_and_separate),
	M(exps_block_leading_zero_duplicate),
	ML(legacy_missing_expert), ML(legacy_type_differs),
	ML(legacy_shape_differs), ML(legacy_expert_ge_count),
	ML(legacy_mixed_with_merged), ML(legacy_n_dims_3),
	ML(legacy_expert_leading_zero_duplicate),
	ML(legacy_down_shape_mismatch),
	MP(probe_expert_count_zero), MP(probe_arch_missing),
	MP(exps_block_leading_zero_only),
};

/* ---- split sets ------------------------------------------------------------------ */

/* Writes the shards of `o` split in `n` into dir as m-0000K-of-0000N.gguf,
 * after `mut` (may be NULL) has had its way with them; `skip` (1-based, 0 =
 * none) is not written. Returns the path of shard `open_k`. */
typedef void split_mut_fn(struct gr_gguf *sh, uint32_t n);

static char *write_split(const char *dir, struct gr_gguf *sh, uint32_t n,
			 uint32_t skip, uint32_t open_k)
{
	char *ret = NULL;
	for (uint32_t k = 1; k <= n; k++) {
		char *p = gr_split_path(dir, "m", k, n);
		if (k != skip) {
			int rc = gr_write(&sh[k - 1], p);
			if (rc)
				t_fatal("write %s: %s", p, strerror(-rc));
		}
		if (k == open_k)
			ret = p;
		else
			free(p);
	}
	return ret;
}

static void split_mut_none(struct gr_gguf *sh, uint32_t n) { (void)sh; (void)n; }
static void split_count_mismatch(struct gr_gguf *sh, uint32_t n)
{
	gr_set_u16(&sh[2], "split.count", (uint16_t)(n - 1));
}
static void split_count_says_5(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_u16(&sh[1], "split.count", 5);
}
static void split_first_count_says_5(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_u16(&sh[0], "split.count", 5);
}
static void split_no_wrong(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_u16(&sh[1], "split.no", 0); /* the file is -00002-: no 1 */
}
static void split_no_out_of_range(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_u16(&sh[2], "split.no", 7);
}
static void split_no_missing(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_del(&sh[1], "split.no");
}
static void split_count_wrong_type(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_str(&sh[1], "split.count", "3");
}
static void split_duplicate_tensor(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	/* shard 2's first tensor takes the name of one in shard 1. */
	struct gr_tensor *src = &sh[0].t[sh[0].nt - 1];
	gr_tensor_name(&sh[1].t[0], src->name, src->name_len);
}
static void split_duplicate_tensor_12(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	struct gr_tensor *src = &sh[1].t[0];
	gr_tensor_name(&sh[2].t[sh[2].nt - 1], src->name, src->name_len);
}
static void split_shard_not_gguf(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	memcpy(sh[1].magic, "JUNK", 4);
}
static void split_shard_bad_tensor(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	sh[2].t[0].type = 0xffffffffu;
}
static void split_shard_truncated(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(&sh[2], &b, &lay);
	gr_buf_free(&b);
	sh[2].data_size_set = true;
	sh[2].data_size = lay.file_size - lay.data_offset - 32;
}
static void split_shard_expert_ne2_bad(struct gr_gguf *sh, uint32_t n)
{
	/* an expert tensor that is in a later shard, with a wrong ne[2] */
	for (uint32_t s = n; s-- > 1;) {
		for (size_t i = 0; i < sh[s].nt; i++) {
			if (is_exps(&sh[s].t[i])) {
				sh[s].t[i].ne[2] = 3;
				gr_relayout(&sh[s]);
				return;
			}
		}
	}
	t_fatal("no expert tensor outside shard 1");
}
static void split_probe_tensors_count(struct gr_gguf *sh, uint32_t n)
{
	(void)n;
	gr_set_i32(&sh[0], "split.tensors.count", (int32_t)1000);
}

struct scase {
	const char *name;
	split_mut_fn *fn;
	uint32_t skip;   /* shard not written (1-based) */
	uint32_t open_k; /* shard opened (1-based) */
	bool probe;
};

static const struct scase scases[] = {
	{"split_missing_sibling", split_mut_none, 2, 1, false},
	{"split_missing_last_open_middle", split_mut_none, 3, 2, false},
	{"split_missing_first", split_mut_none, 1, 3, false},
	{"split_count_mismatch", split_count_mismatch, 0, 1, false},
	{"split_00002_of_00003_count_5", split_count_says_5, 0, 2, false},
	{"split_00002_count_5_open_1", split_count_says_5, 0, 1, false},
	{"split_first_count_5", split_first_count_says_5, 0, 3, false},
	{"split_no_wrong", split_no_wrong, 0, 1, false},
	{"split_no_out_of_range", split_no_out_of_range, 0, 1, false},
	{"split_no_missing", split_no_missing, 0, 1, false},
	{"split_count_wrong_type", split_count_wrong_type, 0, 1, false},
	{"split_duplicate_tensor", split_duplicate_tensor, 0, 1, false},
	{"split_duplicate_tensor_2_3", split_duplicate_tensor_12, 0, 3, false},
	{"split_shard_not_gguf", split_shard_not_gguf, 0, 1, false},
	{"split_shard_bad_tensor_type", split_shard_bad_tensor, 0, 1, false},
	{"split_shard_truncated", split_shard_truncated, 0, 1, false},
	{"split_shard_expert_ne2_bad", split_shard_expert_ne2_bad, 0, 1, false},
	{"split_tensors_count_wrong", split_probe_tensors_count, 0, 1, false},
};

static void split_cases(void)
{
	struct gr_gguf g, sh[3];
	struct gr_moe o;

	/* Positive: a 3-shard split, expert tensors of one layer spread over
	 * shards; opened through each of its shards. */
	moe(&g, &o);
	gr_split(&g, 3, sh);
	const char *d = case_dir("valid_split_3");
	for (uint32_t k = 1; k <= 3; k++) {
		char *p = write_split(d, sh, 3, 0, k);
		char cname[64];
		snprintf(cname, sizeof(cname), "valid_split_3_open_%u", k);
		expect_open(cname, p, sh, 3, &o);
		free(p);
	}
	for (int s = 0; s < 3; s++)
		gr_free(&sh[s]);

	/* A one-shard "split" is a split too. */
	gr_split(&g, 1, sh);
	char *p = write_split(case_dir("valid_split_1"), sh, 1, 0, 1);
	expect_open("valid_split_1_of_1", p, sh, 1, &o);
	free(p);
	gr_free(&sh[0]);
	gr_free(&g);

	/* Fused, split in two. */
	gr_moe_default(&o);
	o.fused = true;
	gr_init(&g);
	gr_moe_build(&g, &o);
	gr_split(&g, 2, sh);
	p = write_split(case_dir("valid_split_fused_2"), sh, 2, 0, 2);
	expect_open("valid_split_fused_2", p, sh, 2, &o);
	free(p);
	gr_free(&sh[0]);
	gr_free(&sh[1]);
	gr_free(&g);

	for (size_t i = 0; i < sizeof(scases) / sizeof(scases[0]); i++) {
		const struct scase *c = &scases[i];
		moe(&g, &o);
		gr_split(&g, 3, sh);
		c->fn(sh, 3);
		p = write_split(case_dir(c->name), sh, 3, c->skip, c->open_k);
		if (c->probe)
			probe_path(c->name, p);
		else
			expect_reject_path(c->name, p, NULL);
		free(p);
		for (int s = 0; s < 3; s++)
			gr_free(&sh[s]);
		gr_free(&g);
	}
}

/* ---- split names ----------------------------------------------------------------- */

/* ms_split_parse on good and bad names; the prefix buffer is exactly
 * prefix_len bytes on the heap, so ASan sees any write past it. */
static void split_parse_one(const char *path, size_t prefix_len, int want_rc,
			    const char *want_prefix, uint32_t want_no,
			    uint32_t want_count)
{
	char *prefix = malloc(prefix_len ? prefix_len : 1);
	uint32_t no = 0, count = 0;
	int rc = ms_split_parse(path, prefix, prefix_len, &no, &count);
	if (want_rc == 0) {
		T_CHECK(rc == 0 && !strcmp(prefix, want_prefix) && no == want_no &&
				count == want_count,
			"ms_split_parse(\"%s\") = %d, prefix \"%s\" %u of %u; "
			"expected 0, \"%s\" %u of %u", path, rc,
			rc == 0 ? prefix : "", no, count, want_prefix, want_no,
			want_count);
	} else {
		T_CHECK(rc < 0, "ms_split_parse(\"%s\", prefix_len %zu) = %d, "
			"expected an error", path, prefix_len, rc);
	}
	free(prefix);
}

static void split_parse_cases(void)
{
	split_parse_one("dir/NAME-00002-of-00003.gguf", 64, 0, "dir/NAME", 2, 3);
	split_parse_one("/a/b/m-00001-of-00001.gguf", 64, 0, "/a/b/m", 1, 1);
	split_parse_one("x-y-00003-of-00003.gguf", 64, 0, "x-y", 3, 3);
	split_parse_one("NAME-00002-of-00003.gguf", 5, 0, "NAME", 2, 3);
	split_parse_one("NAME-00002-of-00003.gguf", 4, -1, NULL, 0, 0);
	split_parse_one("NAME-00002-of-00003.gguf", 0, -1, NULL, 0, 0);
	split_parse_one("NAME-00000-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-00004-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-00001-of-00000.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-0001-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-00001-of-00003.GGUF", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-00001-of-00003.gguf.bak", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-0000a-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME-+0001-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("NAME- 0001-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("-00001-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("dir/-00001-of-00003.gguf", 64, -1, NULL, 0, 0);
	split_parse_one("", 64, -1, NULL, 0, 0);
	split_parse_one("model.gguf", 64, -1, NULL, 0, 0);
	printf("  %-34s checked\n", "ms_split_parse");
}

/* A valid shard 1 of a 3-set (or a plain model) under a name of our choice. */
static void split_name_case(const char *cname, const char *fname,
			    bool plain, bool probe)
{
	struct gr_gguf g, sh[3];
	struct gr_moe o;
	moe(&g, &o);
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", case_dir(cname), fname);
	int rc;
	if (plain) {
		rc = gr_write(&g, path);
	} else {
		gr_split(&g, 3, sh);
		rc = gr_write(&sh[0], path);
		for (int s = 0; s < 3; s++)
			gr_free(&sh[s]);
	}
	if (rc)
		t_fatal("write %s: %s", path, strerror(-rc));
	if (probe)
		probe_path(cname, path);
	else
		expect_reject_path(cname, path, NULL);
	gr_free(&g);
}

static void split_name_cases(void)
{
	split_name_case("split_name_shard_0", "m-00000-of-00003.gguf", false, false);
	split_name_case("split_name_k_gt_n", "m-00004-of-00003.gguf", false, false);
	split_name_case("split_name_count_0", "m-00001-of-00000.gguf", false, false);
	split_name_case("split_name_count_over_cap", "m-00001-of-10000.gguf",
			false, false);
	split_name_case("split_keys_plain_name", "model.gguf", false, false);
	/* A file named like shard 1 of 2 that carries no split keys. */
	split_name_case("split_name_without_keys", "m-00001-of-00002.gguf", true,
			false);
	/* ... and like shard 1 of 1: just a model with a long name. */
	split_name_case("probe_name_1_of_1_no_keys", "m-00001-of-00001.gguf", true,
			true);
}

/* ---- every prefix of the tiny MoE -------------------------------------------------- */

static void truncation_case(void)
{
	struct gr_gguf g;
	struct gr_moe o;
	struct gr_buf b;
	moe(&g, &o);
	gr_build(&g, &b, NULL);
	char path[4200];
	snprintf(path, sizeof(path), "%s/trunc.gguf", case_dir("truncated"));
	size_t bad = 0;
	char last[MS_ERR_MSG_MAX] = "";
	for (size_t len = 0; len < b.len; len++) {
		if (t_write_file(path, b.p, len))
			t_fatal("write %s", path);
		struct ms_model *m = NULL;
		struct ms_err err = {0};
		int rc = ms_model_open(&m, path, &err);
		if (rc >= 0 || !err.msg[0] || err.code != rc) {
			if (bad++ < 5)
				t_fail_at(__FILE__, __LINE__, "model truncated to "
					  "%zu of %zu bytes: rc %d code %d msg "
					  "\"%s\"", len, b.len, rc, err.code,
					  err.msg);
		}
		snprintf(last, sizeof(last), "%s", err.msg);
		ms_model_free(m);
	}
	n_cases++;
	if (!bad)
		n_rejected++;
	printf("  %-34s %zu prefixes, %zu not cleanly rejected; the last "
	       "said: %s\n", "model_truncated_every_prefix", b.len, bad, last);
	gr_buf_free(&b);
	gr_free(&g);
}

/* ---- positive single-file models -------------------------------------------------- */

static void positive_cases(void)
{
	struct gr_gguf g;
	struct gr_moe o;
	char why[512];

	moe(&g, &o);
	char *p = write_single("valid_moe", &g);
	expect_open("valid_moe", p, &g, 1, &o);
	int r = gr_ggml_check(p, &g, why, sizeof(why));
	T_CHECK(r != 0, "valid_moe: ggml disagrees with the builder: %s", why);
	if (r < 0)
		printf("  (ggml not consulted: %s)\n", why);
	gr_free(&g);

	gr_moe_default(&o);
	o.fused = true;
	gr_init(&g);
	gr_moe_build(&g, &o);
	p = write_single("valid_fused", &g);
	expect_open("valid_fused", p, &g, 1, &o);
	gr_free(&g);

	/* The legacy layout: one 2-D tensor per expert and projection. */
	gr_moe_default(&o);
	o.arch = "llama";
	o.legacy = true;
	gr_init(&g);
	gr_moe_build(&g, &o);
	p = write_single("valid_legacy_per_expert", &g);
	expect_open("valid_legacy_per_expert", p, &g, 1, &o);
	gr_free(&g);

	/* glm4moe-like: a leading dense block, a shared expert, a NextN last
	 * block, q8_0/q8_0/bf16 on odd blocks, 64-byte alignment, v2. */
	gr_moe_default(&o);
	o.arch = "glm4moe";
	o.name = NULL;
	o.version = 2;
	o.n_block = 4;
	o.n_leading_dense = 1;
	o.n_nextn = 1;
	o.n_shared = 1;
	o.n_expert = 8;
	o.n_expert_used = 3;
	o.align = 64;
	o.type_alt[0] = GR_T_Q8_0;
	o.type_alt[1] = GR_T_Q8_0;
	o.type_alt[2] = GR_T_BF16;
	gr_init(&g);
	gr_moe_build(&g, &o);
	p = write_single("valid_glm_like", &g);
	expect_open("valid_glm_like", p, &g, 1, &o);
	r = gr_ggml_check(p, &g, why, sizeof(why));
	T_CHECK(r != 0, "valid_glm_like: ggml disagrees with the builder: %s",
		why);
	gr_free(&g);

	/* K-quants the way real files have them: q2_K/q2_K/q3_K. */
	gr_moe_default(&o);
	o.n_embd = 256;
	o.n_ff = 256;
	o.n_expert = 2;
	o.n_expert_used = 1;
	o.type[0] = GR_T_Q2_K;
	o.type[1] = GR_T_Q2_K;
	o.type[2] = GR_T_Q3_K;
	o.type_alt[0] = GR_T_MXFP4;
	o.type_alt[1] = GR_T_MXFP4;
	o.type_alt[2] = GR_T_IQ4_XS;
	gr_init(&g);
	gr_moe_build(&g, &o);
	p = write_single("valid_kquants", &g);
	expect_open("valid_kquants", p, &g, 1, &o);
	gr_free(&g);

	/* Dense: no expert_count, must open with n_expert 0 and no layers. */
	gr_moe_default(&o);
	o.arch = "llama";
	o.n_expert = 0;
	gr_init(&g);
	gr_moe_build(&g, &o);
	p = write_single("valid_dense", &g);
	{
		struct ms_model *m = NULL;
		struct ms_err err = {0};
		int rc = ms_model_open(&m, p, &err);
		T_CHECK(rc == 0, "valid_dense: a dense model must open: rc %d: %s",
			rc, err.msg);
		if (!rc) {
			T_EQ_U64(m->n_expert, 0);
			T_EQ_U64(m->n_layers, 0);
			T_EQ_U64(m->n_layers_run, 0);
			T_EQ_U64(m->expert_bytes, 0);
			T_EQ_U64(m->bytes_per_token, 0);
			T_CHECK(ms_model_expert(m, 0, 0) == NULL,
				"valid_dense: ms_model_expert(0, 0) != NULL");
			verify_model("valid_dense", m, &g, 1, &o);
			printf("  %-34s opens: dense, n_expert %u, %llu resident "
			       "bytes\n", "valid_dense", m->n_expert,
			       (unsigned long long)m->resident_bytes);
		}
		ms_model_free(m);
	}
	gr_free(&g);
}

static bool selected(int argc, char **argv, const char *name)
{
	if (argc < 2)
		return true;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* keep the log in order */
	root = t_tmpdir();

	printf("valid models:\n");
	positive_cases();
	if (t_failures)
		t_fatal("valid models do not open or disagree with the builder; "
			"the rejections below would prove nothing");

	printf("model-level corruption (each: one defect in a valid model):\n");
	for (size_t i = 0; i < sizeof(mcases) / sizeof(mcases[0]); i++) {
		const struct mcase *c = &mcases[i];
		if (!selected(argc, argv, c->name))
			continue;
		struct gr_gguf g;
		struct gr_moe o;
		gr_moe_default(&o);
		o.fused = c->base == BASE_FUSED;
		o.legacy = c->base == BASE_LEGACY;
		gr_init(&g);
		gr_moe_build(&g, &o);
		c->fn(&g, &o);
		char *p = write_single(c->name, &g);
		if (c->probe)
			probe_path(c->name, p);
		else
			expect_reject_path(c->name, p, NULL);
		gr_free(&g);
	}
	printf("split sets:\n");
	split_cases();
	split_parse_cases();
	split_name_cases();
	truncation_case();

	printf("%d of %d model-level corruption classes rejected cleanly "
	       "(%d probes reported)\n", n_rejected, n_cases, n_probes);
	return t_done();
}
