/*
 * t_ggml_legacy - old Mixtral conversions store one 2-D tensor per expert
 * (blk.N.ffn_gate.E.weight, ffn_up.E, ffn_down.E) instead of merged _exps
 * tensors. Written by ggml's own writer (tensors in a shuffled order, so the
 * map cannot lean on file order), `inspect --extents` must list each expert's
 * three tensors where ggml's reader puts them; and a missing expert tensor
 * must be refused with its name.
 */
#include <string.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

#define N_BLOCK 3
#define N_EXPERT 4
#define EMBD 256
#define FF 512

static void set_kv(const struct ggml_ref *r, struct gguf_context *ctx,
		   void *user)
{
	(void)user;
	r->gguf_set_val_str(ctx, "general.architecture", "llama");
	r->gguf_set_val_u32(ctx, "llama.block_count", N_BLOCK);
	r->gguf_set_val_u32(ctx, "llama.expert_count", N_EXPERT);
	r->gguf_set_val_u32(ctx, "llama.expert_used_count", 2);
	r->gguf_set_val_u32(ctx, "llama.embedding_length", EMBD);
}

static const int types[3] = { 12 /* q4_K */, 12, 14 /* q6_K */ };
static const char *const pname[3] = { "gate", "up", "down" };

int main(void)
{
	struct ggml_ref r;
	ggml_ref_load_or_fail(&r);
	uint64_t rng = t_seed();

	struct ggml_ref_tensor ts[N_BLOCK * (N_EXPERT * 3 + 2) + 1];
	size_t n = 0;
	for (int b = 0; b < N_BLOCK; b++) {
		struct ggml_ref_tensor *t = &ts[n++];
		memset(t, 0, sizeof(*t));
		snprintf(t->name, sizeof(t->name), "blk.%d.attn_q.weight", b);
		t->type = 8;
		t->n_dims = 2;
		t->ne[0] = EMBD, t->ne[1] = EMBD, t->ne[2] = t->ne[3] = 1;
		t = &ts[n++];
		memset(t, 0, sizeof(*t));
		snprintf(t->name, sizeof(t->name), "blk.%d.ffn_gate_inp.weight", b);
		t->type = 0;
		t->n_dims = 2;
		t->ne[0] = EMBD, t->ne[1] = N_EXPERT, t->ne[2] = t->ne[3] = 1;
		for (int e = 0; e < N_EXPERT; e++)
			for (int p = 0; p < 3; p++) {
				t = &ts[n++];
				memset(t, 0, sizeof(*t));
				snprintf(t->name, sizeof(t->name),
					 "blk.%d.ffn_%s.%d.weight", b, pname[p], e);
				t->type = types[p];
				t->n_dims = 2;
				t->ne[0] = p == 2 ? FF : EMBD;
				t->ne[1] = p == 2 ? EMBD : FF;
				t->ne[2] = t->ne[3] = 1;
			}
	}
	/* Shuffle: the order in the file must not matter. */
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = t_rand(&rng) % (i + 1);
		struct ggml_ref_tensor x = ts[i];
		ts[i] = ts[j];
		ts[j] = x;
	}

	char path[4096];
	snprintf(path, sizeof(path), "%s/mixtral-legacy.gguf", t_tmpdir());
	struct ggml_ref_file f = { .path = path, .n_shards = 1, .set_kv = set_kv,
				   .tensors = ts, .n_tensors = n, .rng = &rng };
	if (ggml_ref_write(&r, &f))
		t_fatal("ggml could not write %s", path);

	/* Expected lines, from ggml's reader alone. */
	struct gguf_init_params ip = { .no_alloc = true, .ctx = NULL };
	struct gguf_context *g = r.gguf_init_from_file(path, ip);
	if (!g)
		t_fatal("ggml cannot read back %s", path);
	size_t cap = 1 << 16, len = 0;
	char *want = malloc(cap);
	if (!want)
		t_fatal("out of memory");
	for (int b = 0; b < N_BLOCK; b++)
		for (int e = 0; e < N_EXPERT; e++)
			for (int p = 0; p < 3; p++) {
				char nm[64];
				snprintf(nm, sizeof(nm), "blk.%d.ffn_%s.%d.weight", b,
					 pname[p], e);
				int64_t id = r.gguf_find_tensor(g, nm);
				if (id < 0)
					t_fatal("ggml lost %s", nm);
				len += (size_t)snprintf(
					want + len, cap - len,
					"%d\t%d\t%s\t%s\t0\t%zu\t%zu\n", b, e,
					pname[p],
					r.ggml_type_name(r.gguf_get_tensor_type(g, id)),
					r.gguf_get_data_offset(g) +
						r.gguf_get_tensor_offset(g, id),
					r.gguf_get_tensor_size(g, id));
			}
	r.gguf_free(g);

	char cmd[8300], *got = NULL;
	snprintf(cmd, sizeof(cmd), "%s inspect --extents '%s'",
		 t_build_path("moestream"), path);
	int rc = t_run(cmd, &got, 1 << 20);
	T_CHECK(rc == 0, "'%s' exited %d", cmd, rc);
	if (strcmp(got, want)) {
		const char *a = got, *b = want;
		int line = 1;
		while (*a && *a == *b) {
			line += *a == '\n';
			a++, b++;
		}
		T_CHECK(0, "line %d differs:\n  moestream: %.80s\n  ggml:      %.80s",
			line, a, b);
	} else {
		printf("%d extents agree with ggml's reader\n", N_BLOCK * N_EXPERT * 3);
	}
	free(got);
	free(want);

	/* A missing expert tensor is named. */
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(ts[i].name, "blk.1.ffn_up.2.weight"))
			ts[k++] = ts[i];
	f.n_tensors = k;
	snprintf(path, sizeof(path), "%s/mixtral-missing.gguf", t_tmpdir());
	if (ggml_ref_write(&r, &f))
		t_fatal("ggml could not write %s", path);
	struct ms_model *m;
	struct ms_err err = { 0 };
	rc = ms_model_open(&m, path, &err);
	printf("missing expert tensor: %d %s\n", rc, err.msg);
	T_CHECK(rc < 0 && strstr(err.msg, "blk.1.ffn_up.2.weight"),
		"a missing per-expert tensor gave %d '%s'", rc, err.msg);
	if (!rc)
		ms_model_free(m);
	return t_done();
}
