/*
 * model.c - a model is one GGUF or a split set of them; this file opens the
 * set and builds the expert map (layer, expert) -> extents.
 *
 * Split sets: llama-gguf-split writes NAME-0000K-of-0000N.gguf, each a
 * standalone GGUF with its own data offset, split.no (0-based) and
 * split.count; only the first carries the model's metadata. Given any shard
 * we find all N, check those keys, check that no tensor name repeats across
 * shards (a tensor never spans two), and resolve every tensor against its own
 * shard.
 *
 * The expert map: routed experts live in blk.N.ffn_{gate,up,down}_exps.weight
 * (or fused ffn_gate_up_exps), 3-D tensors with ne = [in, out, n_expert], so
 * expert e of a tensor is the contiguous slice e of size/ne[2] bytes. Old
 * Mixtral conversions store one 2-D tensor per expert instead
 * (blk.N.ffn_gate.E.weight); both become the same extents. The three slices
 * of an expert are not adjacent: an expert is n_proj extents. Types vary per
 * layer in dynamic quants, so every layer records its own.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/model.h"

static const char *const proj_names[MS_PROJ_COUNT] = {
	[MS_PROJ_GATE] = "gate",
	[MS_PROJ_UP] = "up",
	[MS_PROJ_DOWN] = "down",
	[MS_PROJ_GATE_UP] = "gate_up",
};

const char *ms_proj_name(enum ms_proj p)
{
	return (unsigned)p < MS_PROJ_COUNT ? proj_names[p] : "invalid";
}

/* ---- split sets ---------------------------------------------------------------- */

static int parse_digits(const char *s, size_t n, uint32_t *out)
{
	uint32_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

int ms_split_parse(const char *path, char *prefix, size_t prefix_len,
		   uint32_t *no, uint32_t *count)
{
	static const char tail[] = "-00000-of-00000.gguf";
	size_t n = strlen(path), t = sizeof(tail) - 1;
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if (n <= t || (size_t)(path + n - base) <= t)
		return -EINVAL;
	const char *s = path + n - t;
	if (s[0] != '-' || memcmp(s + 6, "-of-", 4) || strcmp(s + 15, ".gguf"))
		return -EINVAL;
	if (parse_digits(s + 1, 5, no) || parse_digits(s + 10, 5, count))
		return -EINVAL;
	if (*count < 1 || *no < 1 || *no > *count)
		return -EINVAL;
	if ((size_t)(s - path) + 1 > prefix_len)
		return -ENAMETOOLONG;
	memcpy(prefix, path, (size_t)(s - path));
	prefix[s - path] = '\0';
	return 0;
}

/* Reads split.no / split.count of a shard; -ENOENT when absent. */
static int shard_split_keys(const struct ms_gguf *g, uint64_t *no,
			    uint64_t *count, struct ms_err *err)
{
	int rc = ms_gguf_get_u64(g, "split.count", count, err);
	if (rc)
		return rc;
	rc = ms_gguf_get_u64(g, "split.no", no, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -EINVAL,
				  "%s: has split.count = %llu but no split.no",
				  g->path, (unsigned long long)*count);
	return rc;
}

static int open_shards(struct ms_model *m, const char *path,
		       struct ms_err *err)
{
	char prefix[PATH_MAX];
	uint32_t no, count;
	uint64_t k_no, k_count;
	int rc;

	if (ms_split_parse(path, prefix, sizeof(prefix), &no, &count) ||
	    count == 1) {
		/* A single file: it must not claim to be part of a set. */
		m->shards = calloc(1, sizeof(*m->shards));
		if (!m->shards)
			return ms_err_set(err, -ENOMEM, "out of memory");
		if ((rc = ms_gguf_open(&m->shards[0], path, err)))
			return rc;
		m->n_shards = 1;
		rc = shard_split_keys(m->shards[0], &k_no, &k_count, err);
		if (rc == -ENOENT)
			return 0;
		if (rc)
			return rc;
		if (k_count != 1 || k_no != 0)
			return ms_err_set(err, -EINVAL,
					  "%s: says split.no = %llu of split.count "
					  "= %llu, but its name does not follow "
					  "NAME-0000K-of-0000N.gguf, so its "
					  "siblings cannot be found",
					  path, (unsigned long long)k_no,
					  (unsigned long long)k_count);
		return 0;
	}
	if (count > MS_MODEL_MAX_SHARDS)
		return ms_err_set(err, -EINVAL, "%s: %u shards is over the cap of %d",
				  path, count, MS_MODEL_MAX_SHARDS);

	m->shards = calloc(count, sizeof(*m->shards));
	if (!m->shards)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < count; i++) {
		char p[PATH_MAX + 32];
		snprintf(p, sizeof(p), "%s-%05u-of-%05u.gguf", prefix, i + 1,
			 count);
		rc = ms_gguf_open(&m->shards[i], p, err);
		if (rc == -ENOENT)
			return ms_err_set(err, rc,
					  "%s: shard %u of %u (%s) is missing", path,
					  i + 1, count, p);
		if (rc)
			return rc;
		m->n_shards = i + 1;
		rc = shard_split_keys(m->shards[i], &k_no, &k_count, err);
		if (rc == -ENOENT)
			return ms_err_set(err, -EINVAL,
					  "%s: a shard of a %u-file set has no "
					  "split.count / split.no keys",
					  p, count);
		if (rc)
			return rc;
		if (k_count != count || k_no != i)
			return ms_err_set(err, -EINVAL,
					  "%s: says split.no = %llu of split.count "
					  "= %llu, but its name says shard %u of %u",
					  p, (unsigned long long)k_no,
					  (unsigned long long)k_count, i + 1,
					  count);
	}
	return 0;
}

/* No tensor name may repeat across shards (within one, the reader checks). */
static int check_shard_tensors(struct ms_model *m, struct ms_err *err)
{
	uint64_t total = 0;
	for (uint32_t s = 0; s < m->n_shards; s++) {
		const struct ms_gguf *g = m->shards[s];
		total += g->n_tensors;
		for (uint64_t i = 0; s > 0 && i < g->n_tensors; i++)
			for (uint32_t o = 0; o < s; o++)
				if (ms_gguf_find_tensor(m->shards[o],
							g->tensors[i].name) >= 0)
					return ms_err_set(
						err, -EINVAL,
						"tensor '%s' is in both %s and %s",
						g->tensors[i].name,
						m->shards[o]->path, g->path);
	}
	m->n_tensors = total;
	uint64_t declared;
	int rc = ms_gguf_get_u64(m->shards[0], "split.tensors.count", &declared,
				 err);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	if (declared != total)
		return ms_err_set(err, -EINVAL,
				  "%s: split.tensors.count = %llu but the %u "
				  "shard(s) hold %llu tensors",
				  m->shards[0]->path,
				  (unsigned long long)declared, m->n_shards,
				  (unsigned long long)total);
	return 0;
}

int ms_model_find_tensor(const struct ms_model *m, const char *name,
			 uint32_t *shard, uint64_t *idx)
{
	for (uint32_t s = 0; s < m->n_shards; s++) {
		int64_t i = ms_gguf_find_tensor(m->shards[s], name);
		if (i >= 0) {
			*shard = s;
			*idx = (uint64_t)i;
			return 0;
		}
	}
	return -ENOENT;
}

/* ---- hyperparameters ------------------------------------------------------------- */

/* Reads {arch}.<suffix> as an integer in [0, max]; leaves *out when absent
 * unless `required`. */
static int arch_u32(struct ms_model *m, const char *suffix, uint32_t max,
		    bool required, uint32_t *out, struct ms_err *err)
{
	char key[128];
	uint64_t v;
	snprintf(key, sizeof(key), "%s.%s", m->arch, suffix);
	int rc = ms_gguf_get_u64(m->shards[0], key, &v, err);
	if (rc == -ENOENT) {
		if (required)
			return ms_err_set(err, -EINVAL, "%s: key '%s' is missing",
					  m->shards[0]->path, key);
		return 0;
	}
	if (rc)
		return rc;
	if (v > max)
		return ms_err_set(err, -EINVAL, "%s: %s = %llu is over the cap of %u",
				  m->shards[0]->path, key,
				  (unsigned long long)v, max);
	*out = (uint32_t)v;
	return 0;
}

static int read_hparams(struct ms_model *m, struct ms_err *err)
{
	const struct ms_gguf *g = m->shards[0];
	const char *s;
	int rc = ms_gguf_get_str(g, "general.architecture", &s, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -EINVAL,
				  "%s: general.architecture is missing; not a "
				  "model file",
				  g->path);
	if (rc)
		return rc;
	if (!*s || strlen(s) >= sizeof(m->arch) || strchr(s, '%'))
		return ms_err_set(err, -EINVAL,
				  "%s: general.architecture '%.80s' is not a "
				  "valid name",
				  g->path, s);
	snprintf(m->arch, sizeof(m->arch), "%s", s);
	if (!ms_gguf_get_str(g, "general.name", &s, NULL))
		snprintf(m->name, sizeof(m->name), "%s", s);

	uint32_t embd = 0, ff = 0;
	if ((rc = arch_u32(m, "expert_count", 65536, false, &m->n_expert, err)) ||
	    (rc = arch_u32(m, "block_count", 65536, m->n_expert > 0,
			   &m->n_block, err)) ||
	    (rc = arch_u32(m, "expert_used_count", m->n_expert, m->n_expert > 0,
			   &m->n_expert_used, err)) ||
	    (rc = arch_u32(m, "expert_shared_count", 65536, false,
			   &m->n_expert_shared, err)) ||
	    (rc = arch_u32(m, "leading_dense_block_count", m->n_block, false,
			   &m->n_leading_dense, err)) ||
	    (rc = arch_u32(m, "nextn_predict_layers", m->n_block, false,
			   &m->n_nextn, err)) ||
	    (rc = arch_u32(m, "embedding_length", UINT32_MAX, false, &embd,
			   err)) ||
	    (rc = arch_u32(m, "expert_feed_forward_length", UINT32_MAX, false,
			   &ff, err)))
		return rc;
	if (m->n_expert > 0 && m->n_expert_used == 0)
		return ms_err_set(err, -EINVAL,
				  "%s: %s.expert_used_count = 0 with %u experts",
				  g->path, m->arch, m->n_expert);
	m->n_embd = embd;
	m->n_ff_exp = ff;
	return 0;
}

/* ---- the expert map -------------------------------------------------------------- */

/* What was found for one block. */
struct blk_found {
	/* merged 3-D tensors, by proj: shard + 1 (0 = absent) and index */
	uint32_t shard1[MS_PROJ_COUNT];
	uint64_t idx[MS_PROJ_COUNT];
	/* legacy per-expert 2-D tensors (gate, up, down only) */
	uint32_t *lshard1[3];
	uint64_t *lidx[3];
	bool any;
};

/* Parses "blk.<N>.<rest>"; 0 and *block / *rest, -EINVAL when the name is
 * not a block tensor, -ERANGE when N is not written as ggml writes it (a
 * leading zero: "blk.01" would be a second spelling of block 1). */
static int parse_num(const char **pp, uint64_t max, uint64_t *out)
{
	const char *p = *pp;
	uint64_t v = 0;
	if (*p < '0' || *p > '9')
		return -EINVAL;
	bool lead0 = p[0] == '0' && p[1] >= '0' && p[1] <= '9';
	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (uint64_t)(*p++ - '0');
		if (v > max)
			return -ERANGE;
	}
	*pp = p;
	*out = v;
	return lead0 ? -ERANGE : 0;
}

static int parse_blk(const char *name, uint32_t *block, const char **rest)
{
	if (strncmp(name, "blk.", 4))
		return -EINVAL;
	const char *p = name + 4;
	uint64_t v;
	int rc = parse_num(&p, UINT32_MAX, &v);
	if (rc == -EINVAL || *p != '.')
		return -EINVAL;
	*block = (uint32_t)v;
	*rest = p + 1;
	return rc;
}

/* Recognises the expert tensor names after "blk.N.": returns the proj, sets
 * *expert to -1 for a merged tensor or to E for legacy "ffn_gate.E.weight";
 * -1 when the name is not an expert tensor; -2 when it is one with E written
 * with a leading zero or out of range. */
static int expert_tensor_kind(const char *rest, int64_t *expert)
{
	static const struct {
		const char *name;
		enum ms_proj proj;
	} merged[] = {
		{ "ffn_gate_exps.weight", MS_PROJ_GATE },
		{ "ffn_up_exps.weight", MS_PROJ_UP },
		{ "ffn_down_exps.weight", MS_PROJ_DOWN },
		{ "ffn_gate_up_exps.weight", MS_PROJ_GATE_UP },
	};
	for (size_t i = 0; i < sizeof(merged) / sizeof(merged[0]); i++)
		if (!strcmp(rest, merged[i].name)) {
			*expert = -1;
			return (int)merged[i].proj;
		}
	static const char *const legacy[3] = { "ffn_gate.", "ffn_up.",
					       "ffn_down." };
	for (int p = 0; p < 3; p++) {
		size_t n = strlen(legacy[p]);
		if (strncmp(rest, legacy[p], n))
			continue;
		const char *q = rest + n;
		uint64_t e;
		int rc = parse_num(&q, 1000000, &e);
		if (rc == -EINVAL || (rc == 0 && strcmp(q, ".weight")))
			return -1;
		if (rc)
			return -2;
		*expert = (int64_t)e;
		return p;
	}
	return -1;
}

static void found_free(struct blk_found *f, uint32_t n_block)
{
	for (uint32_t b = 0; f && b < n_block; b++)
		for (int p = 0; p < 3; p++) {
			free(f[b].lshard1[p]);
			free(f[b].lidx[p]);
		}
	free(f);
}

static const struct ms_gguf_tensor *tensor_at(const struct ms_model *m,
					      uint32_t shard, uint64_t idx)
{
	return &m->shards[shard]->tensors[idx];
}

/* Collects every expert tensor by block. */
static int collect(struct ms_model *m, struct blk_found *found,
		   struct ms_err *err)
{
	uint64_t legacy_extents = 0; /* per-expert tensors seen, capped */

	for (uint32_t s = 0; s < m->n_shards; s++) {
		const struct ms_gguf *g = m->shards[s];
		for (uint64_t i = 0; i < g->n_tensors; i++) {
			const char *name = g->tensors[i].name, *rest;
			uint32_t block;
			int64_t e;
			int rc = parse_blk(name, &block, &rest);
			if (rc == -EINVAL)
				continue;
			int p = expert_tensor_kind(rest, &e);
			if (p == -1)
				continue;
			if (rc || p == -2)
				return ms_err_set(err, -EINVAL,
						  "%s: tensor '%s' holds experts but "
						  "its block or expert number is not "
						  "written as ggml writes it (no "
						  "leading zeros)",
						  g->path, name);
			if (!m->n_expert)
				return ms_err_set(err, -EINVAL,
						  "%s: tensor '%s' holds experts "
						  "but %s.expert_count is missing",
						  g->path, name, m->arch);
			if (block >= m->n_block)
				return ms_err_set(err, -EINVAL,
						  "%s: tensor '%s': block %u is not "
						  "below %s.block_count = %u",
						  g->path, name, block, m->arch,
						  m->n_block);
			struct blk_found *f = &found[block];
			f->any = true;
			if (e < 0) {
				if (f->shard1[p])
					return ms_err_set(
						err, -EINVAL,
						"%s: block %u has two "
						"ffn_%s_exps tensors ('%s' and "
						"'%s')",
						g->path, block, proj_names[p],
						tensor_at(m, f->shard1[p] - 1,
							  f->idx[p])->name,
						name);
				f->shard1[p] = s + 1;
				f->idx[p] = i;
				continue;
			}
			if (e >= m->n_expert)
				return ms_err_set(err, -EINVAL,
						  "%s: tensor '%s': expert %lld is "
						  "not below %s.expert_count = %u",
						  g->path, name, (long long)e,
						  m->arch, m->n_expert);
			if (!f->lshard1[p]) {
				legacy_extents += m->n_expert;
				if (legacy_extents > MS_MODEL_MAX_EXTENTS)
					return ms_err_set(
						err, -E2BIG,
						"%s: per-expert tensors of %u "
						"experts in too many blocks (over "
						"%u extents)",
						g->path, m->n_expert,
						MS_MODEL_MAX_EXTENTS);
				f->lshard1[p] = calloc(m->n_expert, sizeof(uint32_t));
				f->lidx[p] = calloc(m->n_expert, sizeof(uint64_t));
				if (!f->lshard1[p] || !f->lidx[p])
					return ms_err_set(err, -ENOMEM,
							  "out of memory");
			}
			if (f->lshard1[p][e])
				return ms_err_set(err, -EINVAL,
						  "%s: block %u expert %lld has two "
						  "ffn_%s tensors ('%s' and '%s')",
						  g->path, block, (long long)e,
						  proj_names[p],
						  tensor_at(m, f->lshard1[p][e] - 1,
							    f->lidx[p][e])->name,
						  name);
			f->lshard1[p][e] = s + 1;
			f->lidx[p][e] = i;
		}
	}
	return 0;
}

/* Checks that a layer's projections agree: gate/up [embd, ff], down [ff,
 * embd], fused gate_up [embd, 2 ff], all with n_expert slices. */
static int check_shapes(const struct ms_model *m, const struct ms_moe_layer *L,
			struct ms_err *err)
{
	int64_t embd = L->ne[L->n_proj - 1][1]; /* down's output */
	int64_t ff = L->ne[L->n_proj - 1][0];   /* down's input */
	for (uint32_t j = 0; j + 1 < L->n_proj; j++) {
		int64_t want_out = L->proj[j] == MS_PROJ_GATE_UP ? 2 * ff : ff;
		if (L->ne[j][0] != embd || L->ne[j][1] != want_out)
			return ms_err_set(err, -EINVAL,
					  "block %u: ffn_%s has shape [%lld, %lld] "
					  "but ffn_down [%lld, %lld] implies "
					  "[%lld, %lld]",
					  L->block, ms_proj_name(L->proj[j]),
					  (long long)L->ne[j][0],
					  (long long)L->ne[j][1], (long long)ff,
					  (long long)embd, (long long)embd,
					  (long long)want_out);
	}
	(void)m;
	return 0;
}

static int build_merged(struct ms_model *m, struct blk_found *f,
			struct ms_moe_layer *L, struct ms_err *err)
{
	for (uint32_t j = 0; j < L->n_proj; j++) {
		enum ms_proj p = L->proj[j];
		const struct ms_gguf_tensor *t =
			tensor_at(m, f->shard1[p] - 1, f->idx[p]);
		if (t->n_dims != 3 || t->ne[2] != (int64_t)m->n_expert)
			return ms_err_set(err, -EINVAL,
					  "tensor '%s': shape [%lld, %lld, %lld, "
					  "%lld] (n_dims %u) is not [in, out, %u] "
					  "for %s.expert_count = %u",
					  t->name, (long long)t->ne[0],
					  (long long)t->ne[1], (long long)t->ne[2],
					  (long long)t->ne[3], t->n_dims,
					  m->n_expert, m->arch, m->n_expert);
		L->type[j] = t->type;
		memcpy(L->ne[j], t->ne, sizeof(L->ne[j]));
		uint64_t slice = t->size / (uint64_t)m->n_expert;
		L->expert_bytes += slice;
		for (uint32_t e = 0; e < m->n_expert; e++) {
			struct ms_extent *x = &L->ext[e * L->n_proj + j];
			x->offset = t->file_offset + e * slice;
			x->bytes = slice;
			x->shard = f->shard1[p] - 1;
			x->type = t->type;
		}
	}
	return check_shapes(m, L, err);
}

static int build_legacy(struct ms_model *m, struct blk_found *f,
			struct ms_moe_layer *L, struct ms_err *err)
{
	for (uint32_t j = 0; j < 3; j++) {
		for (uint32_t e = 0; e < m->n_expert; e++) {
			if (!f->lshard1[j][e])
				return ms_err_set(err, -EINVAL,
						  "block %u: tensor "
						  "'blk.%u.ffn_%s.%u.weight' is "
						  "missing (%s.expert_count = %u)",
						  L->block, L->block,
						  proj_names[j], e, m->arch,
						  m->n_expert);
			const struct ms_gguf_tensor *t =
				tensor_at(m, f->lshard1[j][e] - 1, f->lidx[j][e]);
			if (t->n_dims != 2)
				return ms_err_set(err, -EINVAL,
						  "tensor '%s': n_dims %u, expected "
						  "2 for a per-expert tensor",
						  t->name, t->n_dims);
			if (e == 0) {
				L->type[j] = t->type;
				L->ne[j][0] = t->ne[0];
				L->ne[j][1] = t->ne[1];
				L->ne[j][2] = m->n_expert;
				L->expert_bytes += t->size;
			} else if (t->type != L->type[j] ||
				   t->ne[0] != L->ne[j][0] ||
				   t->ne[1] != L->ne[j][1]) {
				return ms_err_set(err, -EINVAL,
						  "tensor '%s': type %s shape [%lld, "
						  "%lld] differs from expert 0's",
						  t->name, ms_type_name(t->type),
						  (long long)t->ne[0],
						  (long long)t->ne[1]);
			}
			struct ms_extent *x = &L->ext[e * 3 + j];
			x->offset = t->file_offset;
			x->bytes = t->size;
			x->shard = f->lshard1[j][e] - 1;
			x->type = t->type;
		}
	}
	return check_shapes(m, L, err);
}

static int build_layer(struct ms_model *m, struct blk_found *f, uint32_t block,
		       struct ms_moe_layer *L, struct ms_err *err)
{
	bool has[MS_PROJ_COUNT], legacy = false;
	for (int p = 0; p < MS_PROJ_COUNT; p++)
		has[p] = f->shard1[p] != 0;
	for (int p = 0; p < 3; p++)
		legacy |= f->lshard1[p] != NULL;

	L->block = block;
	L->nextn = block >= m->n_block - m->n_nextn;
	if (legacy) {
		if (has[0] || has[1] || has[2] || has[3])
			return ms_err_set(err, -EINVAL,
					  "block %u mixes per-expert tensors with "
					  "merged _exps tensors",
					  block);
		for (int p = 0; p < 3; p++)
			if (!f->lshard1[p])
				return ms_err_set(err, -EINVAL,
						  "block %u: no blk.%u.ffn_%s.E.weight "
						  "tensors",
						  block, block, proj_names[p]);
	} else if (has[MS_PROJ_GATE_UP]) {
		if (has[MS_PROJ_GATE] || has[MS_PROJ_UP] || !has[MS_PROJ_DOWN])
			return ms_err_set(err, -EINVAL,
					  "block %u: fused ffn_gate_up_exps needs "
					  "ffn_down_exps and no separate gate/up",
					  block);
		L->fused = true;
	} else {
		for (int p = 0; p < 3; p++)
			if (!has[p])
				return ms_err_set(err, -EINVAL,
						  "block %u: blk.%u.ffn_%s_exps.weight "
						  "is missing",
						  block, block, proj_names[p]);
	}

	L->n_proj = L->fused ? 2 : 3;
	if (L->fused) {
		L->proj[0] = MS_PROJ_GATE_UP;
		L->proj[1] = MS_PROJ_DOWN;
	} else {
		for (uint32_t j = 0; j < 3; j++)
			L->proj[j] = (enum ms_proj)j;
	}
	L->ext = calloc((size_t)m->n_expert * L->n_proj, sizeof(*L->ext));
	if (!L->ext)
		return ms_err_set(err, -ENOMEM, "out of memory");
	return legacy ? build_legacy(m, f, L, err) : build_merged(m, f, L, err);
}

static int build_map(struct ms_model *m, struct ms_err *err)
{
	m->block_layer = malloc((m->n_block ? m->n_block : 1) *
				sizeof(*m->block_layer));
	if (!m->block_layer)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t b = 0; b < m->n_block; b++)
		m->block_layer[b] = -1;

	struct blk_found *found = calloc(m->n_block ? m->n_block : 1,
					 sizeof(*found));
	if (!found)
		return ms_err_set(err, -ENOMEM, "out of memory");
	int rc = collect(m, found, err);
	if (rc)
		goto out;

	uint32_t n = 0;
	for (uint32_t b = 0; b < m->n_block; b++)
		n += found[b].any;
	if ((uint64_t)n * m->n_expert * MS_MOE_MAX_PROJ > MS_MODEL_MAX_EXTENTS) {
		rc = ms_err_set(err, -E2BIG,
				"%s: %u MoE layers x %u experts is over the cap "
				"of %u extents",
				m->shards[0]->path, n, m->n_expert,
				MS_MODEL_MAX_EXTENTS);
		goto out;
	}
	m->layers = calloc(n ? n : 1, sizeof(*m->layers));
	if (!m->layers) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t b = 0; b < m->n_block; b++) {
		if (!found[b].any)
			continue;
		struct ms_moe_layer *L = &m->layers[m->n_layers];
		m->n_layers++; /* counted before building so free() sees ext */
		if ((rc = build_layer(m, &found[b], b, L, err))) {
			ms_err_prefix(err, "%s", m->shards[0]->path);
			goto out;
		}
		m->block_layer[b] = (int32_t)(m->n_layers - 1);
	}
	if (m->n_expert && !m->n_layers) {
		rc = ms_err_set(err, -EINVAL,
				"%s: %s.expert_count = %u but no tensor holds "
				"experts (blk.N.ffn_*_exps.weight)",
				m->shards[0]->path, m->arch, m->n_expert);
		goto out;
	}

	m->expert_bytes_min = UINT64_MAX;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		uint64_t all = L->expert_bytes * m->n_expert;
		m->expert_bytes += all;
		if (!L->nextn) {
			m->n_layers_run++;
			m->expert_bytes_run += all;
			m->bytes_per_token += L->expert_bytes * m->n_expert_used;
		}
		if (L->expert_bytes < m->expert_bytes_min)
			m->expert_bytes_min = L->expert_bytes;
		if (L->expert_bytes > m->expert_bytes_max)
			m->expert_bytes_max = L->expert_bytes;
	}
	if (!m->n_layers)
		m->expert_bytes_min = 0;

	uint64_t all = 0;
	for (uint32_t s = 0; s < m->n_shards; s++)
		for (uint64_t i = 0; i < m->shards[s]->n_tensors; i++)
			all += m->shards[s]->tensors[i].size;
	m->resident_bytes = all - m->expert_bytes;
	m->n_resident_tensors = m->n_tensors;
	for (uint32_t l = 0; l < m->n_layers; l++)
		m->n_resident_tensors -= found[m->layers[l].block].lshard1[0]
						 ? 3ull * m->n_expert
						 : m->layers[l].n_proj;
out:
	found_free(found, m->n_block);
	return rc;
}

int ms_model_open(struct ms_model **out, const char *path, struct ms_err *err)
{
	*out = NULL;
	struct ms_model *m = calloc(1, sizeof(*m));
	if (!m)
		return ms_err_set(err, -ENOMEM, "out of memory");
	int rc;
	if ((rc = open_shards(m, path, err)) ||
	    (rc = check_shard_tensors(m, err)) ||
	    (rc = read_hparams(m, err)) || (rc = build_map(m, err))) {
		ms_model_free(m);
		return rc;
	}
	*out = m;
	return 0;
}

void ms_model_free(struct ms_model *m)
{
	if (!m)
		return;
	for (uint32_t s = 0; s < m->n_shards; s++)
		ms_gguf_free(m->shards[s]);
	free(m->shards);
	for (uint32_t l = 0; m->layers && l < m->n_layers; l++)
		free(m->layers[l].ext);
	free(m->layers);
	free(m->block_layer);
	free(m);
}

const struct ms_extent *ms_model_expert(const struct ms_model *m,
					uint32_t layer, uint32_t expert)
{
	if (!m || layer >= m->n_layers || expert >= m->n_expert)
		return NULL;
	const struct ms_moe_layer *L = &m->layers[layer];
	return &L->ext[(size_t)expert * L->n_proj];
}
