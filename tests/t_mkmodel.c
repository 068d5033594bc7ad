/*
 * t_mkmodel - `moestream mkmodel` writes models ggml reads.
 *
 *  - Every preset (at full size as a sparse file, and really written where it
 *    fits a test: tiny, and hand-made models of every writable type): ggml's
 *    reader accepts it and agrees with ours on every tensor's type, shape,
 *    offset and size, and with `inspect --extents`.
 *  - Expert weights are valid blocks of sensible scale: every expert tensor
 *    dequantised by ggml's own dequantize_row_* is finite, not all zero, and
 *    small (|v| < 4).
 *  - --split-size writes NAME-0000K-of-0000N.gguf shards as llama-gguf-split
 *    does (split keys, no tensor across shards, data per shard within the
 *    size unless one tensor is larger), and ggml reads every shard.
 *  - Same seed, same bytes; another seed, other bytes. Refuses to overwrite
 *    without --force. On a full file system (a 4 MiB tmpfs, root only) it
 *    says how much is needed before writing anything.
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

static struct ggml_ref R;
static char cmd[16384];

static int run(const char *args, char **out)
{
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path("moestream"), args);
	int rc = t_run(cmd, out, 1 << 22);
	printf("$ moestream %s -> %d\n", args, rc);
	return rc;
}

/* ggml and our reader agree on one file; returns ggml's context or NULL. */
static void agree(const char *path)
{
	struct gguf_init_params ip = { .no_alloc = true, .ctx = NULL };
	struct gguf_context *g = R.gguf_init_from_file(path, ip);
	T_CHECK(g != NULL, "ggml refuses %s", path);
	struct ms_gguf *m;
	struct ms_err err = { 0 };
	if (ms_gguf_open(&m, path, &err)) {
		T_CHECK(0, "our reader refuses %s: %s", path, err.msg);
		if (g)
			R.gguf_free(g);
		return;
	}
	if (!g) {
		ms_gguf_free(m);
		return;
	}
	T_EQ_U64(R.gguf_get_n_tensors(g), m->n_tensors);
	T_EQ_U64(R.gguf_get_data_offset(g), m->data_offset);
	for (uint64_t i = 0; i < m->n_tensors; i++) {
		const struct ms_gguf_tensor *t = &m->tensors[i];
		int64_t id = R.gguf_find_tensor(g, t->name);
		if (id < 0) {
			T_CHECK(0, "ggml lacks %s", t->name);
			continue;
		}
		const int64_t *ne = R.gguf_get_tensor_ne(g, id);
		T_CHECK(R.gguf_get_tensor_offset(g, id) == t->offset &&
				R.gguf_get_tensor_size(g, id) == t->size &&
				R.gguf_get_tensor_type(g, id) == (int)t->type &&
				ne[0] == t->ne[0] && ne[1] == t->ne[1] &&
				ne[2] == t->ne[2],
			"%s: %s differs between ggml and us", path, t->name);
	}
	printf("  ggml agrees on %s: %llu tensors, data at %llu\n", path,
	       (unsigned long long)m->n_tensors,
	       (unsigned long long)m->data_offset);
	ms_gguf_free(m);
	R.gguf_free(g);
}

/* Dequantises every expert tensor of `path` with ggml and checks values. */
static void sensible(const char *path)
{
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err)) {
		T_CHECK(0, "%s: %s", path, err.msg);
		return;
	}
	FILE *f = fopen(path, "rb");
	uint64_t n_vals = 0, n_zero = 0;
	double max = 0;
	for (uint32_t l = 0; f && l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		for (uint32_t e = 0; e < m->n_expert; e += 5) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			for (uint32_t j = 0; j < L->n_proj; j++) {
				char sym[64];
				const char *tn = R.ggml_type_name((int)x[j].type);
				snprintf(sym, sizeof(sym), "dequantize_row_%s", tn);
				void (*deq)(const void *, float *, int64_t) =
					(void (*)(const void *, float *, int64_t))
						dlsym(R.handle, sym);
				int64_t n = L->ne[j][0] * L->ne[j][1];
				uint8_t *raw = malloc(x[j].bytes);
				float *v = malloc((size_t)n * sizeof(float));
				if (!raw || !v)
					t_fatal("out of memory");
				if (fseeko(f, (off_t)x[j].offset, SEEK_SET) ||
				    fread(raw, 1, x[j].bytes, f) != x[j].bytes)
					t_fatal("%s: short read", path);
				if (x[j].type == MS_TYPE_F32)
					memcpy(v, raw, (size_t)n * 4);
				else if (x[j].type == MS_TYPE_F16)
					R.ggml_fp16_to_fp32_row((const uint16_t *)raw, v, n);
				else if (x[j].type == MS_TYPE_BF16)
					R.ggml_bf16_to_fp32_row((const uint16_t *)raw, v, n);
				else if (deq)
					deq(raw, v, n);
				else
					t_fatal("ggml has no %s", sym);
				for (int64_t i = 0; i < n; i++) {
					T_CHECK(isfinite(v[i]),
						"%s: layer %u expert %u %s[%lld] = %g",
						path, L->block, e,
						ms_proj_name(L->proj[j]), (long long)i,
						(double)v[i]);
					if (!isfinite(v[i]))
						break;
					n_zero += v[i] == 0.0f;
					if (fabs(v[i]) > max)
						max = fabs(v[i]);
				}
				n_vals += (uint64_t)n;
				free(raw);
				free(v);
			}
		}
	}
	if (f)
		fclose(f);
	printf("  %s: %llu expert values, max |v| %.4g, %.1f%% zero\n", path,
	       (unsigned long long)n_vals, max, 100.0 * n_zero / (n_vals ? n_vals : 1));
	T_CHECK(n_vals > 0 && max > 1e-2 && max < 4 && n_zero < n_vals / 4,
		"%s: values not of a sensible scale (max %g)", path, max);
	ms_model_free(m);
}

static bool same_file(const char *a, const char *b)
{
	char c[8500];
	snprintf(c, sizeof(c), "cmp -s '%s' '%s'", a, b);
	return t_run(c, NULL, 0) == 0;
}

int main(void)
{
	ggml_ref_load_or_fail(&R);
	const char *d = t_tmpdir();
	char p[4096], q[4096], args[8192], *out = NULL;

	/* Every preset at full size, sparse: ggml agrees on every offset. */
	static const char *const presets[] = { "glm4.7-ud-q2_k_xl",
					       "glm4.7-ud-q4_k_xl",
					       "qwen3-moe-30b-a3b", "tiny" };
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof(p), "%s/%s.gguf", d, presets[i]);
		snprintf(args, sizeof(args), "mkmodel --preset %s --sparse -o %s",
			 presets[i], p);
		T_CHECK(run(args, NULL) == 0, "%s", args);
		agree(p);
	}
	/* The GLM-4.7 preset has DESIGN.md's numbers. */
	struct ms_model *m;
	struct ms_err err = { 0 };
	snprintf(p, sizeof(p), "%s/glm4.7-ud-q2_k_xl.gguf", d);
	if (!ms_model_open(&m, p, &err)) {
		T_EQ_U64(m->expert_bytes_max, 8540160);
		T_EQ_U64(m->n_layers_run, 89);
		T_EQ_U64(m->bytes_per_token, 6080593920ull);
		ms_model_free(m);
	} else {
		T_CHECK(0, "%s", err.msg);
	}
	snprintf(p, sizeof(p), "%s/glm8.gguf", d);
	snprintf(args, sizeof(args),
		 "mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers 8 --sparse -o %s", p);
	T_CHECK(run(args, NULL) == 0, "%s", args);
	if (!ms_model_open(&m, p, &err)) {
		T_CHECK(m->n_layers == 8 && m->n_layers_run == 8 && m->n_block == 11,
			"--moe-layers 8: %u layers (%u run), %u blocks", m->n_layers,
			m->n_layers_run, m->n_block);
		ms_model_free(m);
	}

	/* Really written: tiny, and hand-made models of every writable type. */
	snprintf(p, sizeof(p), "%s/tiny-real.gguf", d);
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", p);
	T_CHECK(run(args, NULL) == 0, "%s", args);
	agree(p);
	sensible(p);
	static const char *const mixes[] = {
		"q2_K,q2_K,q3_K", "q4_K,q5_K,q6_K", "q8_0,q4_0,q4_1",
		"q5_0,q5_1,iq4_nl", "iq4_xs,mxfp4,f16", "bf16,f32,q8_0",
	};
	for (size_t i = 0; i < sizeof(mixes) / sizeof(mixes[0]); i++) {
		snprintf(p, sizeof(p), "%s/mix%zu.gguf", d, i);
		snprintf(args, sizeof(args),
			 "mkmodel --layers 3 --dense 1 --experts 6 --used 2 "
			 "--embd 512 --ff 256 --vocab 256 --types %s --seed %zu -o %s",
			 mixes[i], i + 7, p);
		T_CHECK(run(args, NULL) == 0, "%s", args);
		agree(p);
		sensible(p);
	}

	/* Split: shards named and keyed like llama-gguf-split's. */
	snprintf(p, sizeof(p), "%s/split.gguf", d);
	snprintf(args, sizeof(args),
		 "mkmodel --layers 5 --experts 8 --used 2 --embd 512 --ff 512 "
		 "--vocab 256 --types q4_K,q4_K,q6_K --split-size 2M -o %s", p);
	T_CHECK(run(args, &out) == 0, "%s: %s", args, out);
	int n_sh = 0;
	const char *sh = out ? strstr(out, ", ") : NULL;
	if (sh)
		n_sh = atoi(sh + 2);
	free(out);
	T_CHECK(n_sh >= 3, "split into %d shards, expected several", n_sh);
	uint64_t tensors = 0;
	for (int s = 0; s < n_sh; s++) {
		snprintf(q, sizeof(q), "%s/split-%05d-of-%05d.gguf", d, s + 1, n_sh);
		agree(q);
		struct ms_gguf *g;
		if (ms_gguf_open(&g, q, &err)) {
			T_CHECK(0, "%s", err.msg);
			continue;
		}
		uint64_t no = 99, cnt = 0, data = 0, max = 0;
		ms_gguf_get_u64(g, "split.no", &no, NULL);
		ms_gguf_get_u64(g, "split.count", &cnt, NULL);
		T_CHECK(no == (uint64_t)s && cnt == (uint64_t)n_sh,
			"%s: split.no %llu split.count %llu", q,
			(unsigned long long)no, (unsigned long long)cnt);
		T_CHECK((s == 0) == (ms_gguf_find_key(g, "general.architecture") >= 0),
			"%s: the model's metadata belongs to the first shard only", q);
		for (uint64_t i = 0; i < g->n_tensors; i++) {
			data += g->tensors[i].size;
			if (g->tensors[i].size > max)
				max = g->tensors[i].size;
		}
		T_CHECK(data <= (2u << 20) || g->n_tensors == 1,
			"%s: %llu bytes of data in %llu tensors, over --split-size 2M",
			q, (unsigned long long)data, (unsigned long long)g->n_tensors);
		tensors += g->n_tensors;
		ms_gguf_free(g);
	}
	snprintf(q, sizeof(q), "%s/split-%05d-of-%05d.gguf", d, 2, n_sh);
	if (!ms_model_open(&m, q, &err)) {
		T_EQ_U64(m->n_tensors, tensors);
		T_EQ_U64(m->n_shards, (uint64_t)n_sh);
		ms_model_free(m);
	} else {
		T_CHECK(0, "split model: %s", err.msg);
	}

	/* Deterministic per seed. */
	snprintf(p, sizeof(p), "%s/seed-a.gguf", d);
	snprintf(q, sizeof(q), "%s/seed-b.gguf", d);
	snprintf(args, sizeof(args), "mkmodel --preset tiny --seed 5 -o %s", p);
	run(args, NULL);
	snprintf(args, sizeof(args), "mkmodel --preset tiny --seed 5 -o %s", q);
	run(args, NULL);
	T_CHECK(same_file(p, q), "same seed, different bytes");
	snprintf(args, sizeof(args), "mkmodel --preset tiny --seed 6 --force -o %s", q);
	run(args, NULL);
	T_CHECK(!same_file(p, q), "seeds 5 and 6 wrote the same bytes");

	/* Refuses to overwrite; bad values are named. */
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", p);
	T_CHECK(run(args, &out) == 1 && strstr(out, "--force"), "overwrite: %s", out);
	free(out);
	T_CHECK(run("mkmodel --preset tiny --types q2_K,zz,q3_K -o /tmp/x.gguf",
		    &out) == 2 && strstr(out, "'zz'"), "bad type: %s", out);
	free(out);
	T_CHECK(run("mkmodel --layers 3 --experts 4 --used 2 --embd 300 --ff 256 "
		    "--types q4_K,q4_K,q4_K -o /tmp/x.gguf", &out) == 2 &&
			strstr(out, "300"), "bad embd: %s", out);
	free(out);
	T_CHECK(run("mkmodel --preset tiny --split-size 12Q -o /tmp/x.gguf", &out) ==
			2 && strstr(out, "12Q"), "bad split size: %s", out);
	free(out);

	/* A full disk is found before writing (root: a 4 MiB tmpfs). */
	if (geteuid() == 0) {
		snprintf(q, sizeof(q), "%s/small-fs", d);
		mkdir(q, 0755);
		if (mount("tmpfs", q, "tmpfs", 0, "size=4m") == 0) {
			snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s/t.gguf",
				 q);
			int rc = run(args, &out);
			printf("  %s", out);
			T_CHECK(rc == 1 && strstr(out, "needs") && strstr(out, "free"),
				"full disk: exit %d '%s'", rc, out);
			snprintf(p, sizeof(p), "%s/t.gguf", q);
			T_CHECK(access(p, F_OK) != 0, "a partial file was left behind");
			free(out);
			umount(q);
		} else {
			printf("  (no tmpfs mount: %s; disk-space check not run)\n",
			       strerror(errno));
		}
	} else {
		printf("  (not root: disk-space check on a small tmpfs not run)\n");
	}
	return t_done();
}
