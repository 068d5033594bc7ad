/*
 * t_fuzz_seeds.c - the fuzz corpus as regression tests.
 *
 * Every file in tests/fuzz/corpus/gguf goes through the very entry the
 * libFuzzer target uses (tests/fuzz/fuzz_gguf.c is included below), with
 * its contract checks: a crash found by `make fuzz` and saved there as a
 * file stays a test for good. Files named valid-model-* must open as a
 * model, valid-gguf-* as a GGUF, valid-vocab-* as a GGUF whose vocabulary
 * loads (ms_vocab_load); bad-vocab-* must open as a GGUF whose vocabulary is
 * refused; anything else must merely be survived.
 *
 * The seeds are small valid models written by the raw builder, so the
 * fuzzer starts deep inside the format. They are generated, then committed:
 *
 *   t_fuzz_seeds --write-seeds tests/fuzz/corpus/gguf
 *
 * A normal run also generates them afresh (so a seed that drifted from the
 * builder is noticed) and feeds a few thousand deterministic mutations of
 * each through the entry - a small fuzz run that needs no clang, and under
 * `make check` runs with ASan and UBSan. MS_SEED replays other mutations;
 * MS_FUZZ_CORPUS names another corpus folder.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz/fuzz_gguf.c"
#include "gguf_raw.h"
#include "testutil.h"

/* ---- the seeds ------------------------------------------------------------ */

struct seed {
	const char *name;
	void (*make)(struct gr_gguf *g);
};

static void s_moe(struct gr_gguf *g)
{
	struct gr_moe o;
	gr_moe_default(&o);
	gr_moe_build(g, &o);
}

static void s_fused(struct gr_gguf *g)
{
	struct gr_moe o;
	gr_moe_default(&o);
	o.fused = true;
	gr_moe_build(g, &o);
}

static void s_glm(struct gr_gguf *g)
{
	/* Leading dense block, a shared expert, a NextN block, per-layer types,
	 * v2, 64-byte alignment. */
	struct gr_moe o;
	gr_moe_default(&o);
	o.arch = "glm4moe";
	o.version = 2;
	o.n_block = 3;
	o.n_leading_dense = 1;
	o.n_nextn = 1;
	o.n_shared = 1;
	o.n_ff_dense = 8;
	o.align = 64;
	o.type_alt[0] = GR_T_Q8_0;
	o.type_alt[1] = GR_T_Q8_0;
	o.type_alt[2] = GR_T_BF16;
	gr_moe_build(g, &o);
}

static void s_legacy(struct gr_gguf *g)
{
	/* Old Mixtral conversions: one 2-D tensor per expert. */
	struct gr_moe o;
	gr_moe_default(&o);
	o.arch = "llama";
	o.legacy = true;
	o.n_block = 1;
	gr_moe_build(g, &o);
}

static void s_mxfp4(struct gr_gguf *g)
{
	struct gr_moe o;
	gr_moe_default(&o);
	o.arch = "gpt-oss";
	o.n_block = 1;
	o.n_expert = 2;
	o.n_expert_used = 1;
	o.n_ff = 32;
	o.type[0] = o.type[1] = o.type[2] = GR_T_MXFP4;
	gr_moe_build(g, &o);
}

static void s_dense(struct gr_gguf *g)
{
	struct gr_moe o;
	gr_moe_default(&o);
	o.arch = "llama";
	o.n_expert = 0;
	o.n_block = 1;
	o.n_ff_dense = 8;
	gr_moe_build(g, &o);
}

static void s_allkv(struct gr_gguf *g)
{
	uint8_t buf[24];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 37 + 1);
	gr_set_str(g, "general.architecture", "test");
	gr_set_u32(g, "general.alignment", 16);
	g->align = 16;
	gr_set_u8(g, "a.u8", 1);
	gr_set_i8(g, "a.i8", -1);
	gr_set_u16(g, "a.u16", 2);
	gr_set_i16(g, "a.i16", -2);
	gr_set_u32(g, "a.u32", 3);
	gr_set_i32(g, "a.i32", -3);
	gr_set_f32(g, "a.f32", 0.5f);
	gr_set_bool(g, "a.bool", 1);
	gr_set_str(g, "a.str", "hello");
	gr_set_u64(g, "a.u64", 4);
	gr_set_i64(g, "a.i64", -4);
	gr_set_f64(g, "a.f64", 0.25);
	for (uint32_t t = 0; t <= GR_V_F64; t++) {
		if (t == GR_V_STRING || t == GR_V_ARRAY)
			continue;
		char key[32];
		snprintf(key, sizeof(key), "arr.%u", t);
		gr_set_arr(g, key, t, 3, t == GR_V_BOOL ? (const void *)"\1\0\1" : buf);
	}
	const char *s[3] = {"", "a", "bc"};
	gr_set_arr_str(g, "arr.str", 3, s);
	gr_add_tensor(g, "t1", 1, (const uint64_t[]){4}, GR_T_F32);
	gr_add_tensor(g, "t4", 4, (const uint64_t[]){32, 1, 2, 1}, GR_T_Q8_0);
	gr_add_tensor(g, "t2", 2, (const uint64_t[]){2, 3}, GR_T_F16);
}

static void s_v2(struct gr_gguf *g)
{
	s_allkv(g);
	g->version = 2;
}

static void s_split1(struct gr_gguf *g)
{
	struct gr_gguf full;
	gr_init(&full);
	s_moe(&full);
	gr_free(g);
	gr_split(&full, 1, g);
	gr_free(&full);
}

static void s_empty(struct gr_gguf *g)
{
	(void)g; /* header only: no kv, no tensors */
}

static void s_bad_ne2(struct gr_gguf *g)
{
	s_moe(g);
	g->t[gr_find_tensor(g, gr_exps_name(1, "down"))].ne[2] = 3;
	gr_relayout(g);
}

static void s_bad_dup(struct gr_gguf *g)
{
	s_allkv(g);
	struct gr_buf b;
	gr_buf_init(&b);
	gr_str(&b, "a.u8");
	gr_u32(&b, GR_V_U8);
	gr_u8(&b, 9);
	gr_append_raw(g, "dup", b.p, b.len);
	gr_buf_free(&b);
}

/* Vocabulary-only files (tokenizer.ggml.* keys, no tensors): the
 * hand-made vocabulary of gguf_raw.h with each pre-tokenizer, and one defect
 * of each class t_vocab_corrupt covers, for the fuzzer to start from. */
static void vocab_with(struct gr_gguf *g, const struct gr_vocab *v)
{
	gr_set_str(g, "general.architecture", "test");
	gr_vocab_build(g, v);
}

#define VOCAB_SEED(fname, edit)                                                \
	static void fname(struct gr_gguf *g)                                   \
	{                                                                      \
		struct gr_vocab v;                                             \
		gr_vocab_default(&v);                                          \
		edit;                                                          \
		vocab_with(g, &v);                                             \
	}
VOCAB_SEED(s_vocab_qwen2, (void)0)
VOCAB_SEED(s_vocab_llama3, v.pre = "llama-bpe"; v.add_bos = 1)
VOCAB_SEED(s_vocab_glm4, v.pre = "glm4")
VOCAB_SEED(s_vocab_deepseek3, v.pre = "deepseek-v3")
VOCAB_SEED(s_vocab_gpt4o, v.pre = "gpt-4o")
VOCAB_SEED(s_vocab_bad_type, v.type['q'] = 7)
VOCAB_SEED(s_vocab_bad_dup, v.tok[GR_VOCAB_AA] = "ab")
VOCAB_SEED(s_vocab_bad_merge_absent, v.merge[2] = "zz bc")
VOCAB_SEED(s_vocab_bad_merge_nospace, v.merge[1] = "ab")
VOCAB_SEED(s_vocab_bad_bos, v.bos = GR_VOCAB_N)
VOCAB_SEED(s_vocab_bad_pre, v.pre = "foo")
VOCAB_SEED(s_vocab_bad_empty, v.tok[GR_VOCAB_TOOL] = "")
VOCAB_SEED(s_vocab_bad_add_bos, v.pre = "glm4"; v.add_bos = 1)

static void s_vocab_bad_type_count(struct gr_gguf *g)
{
	struct gr_vocab v;
	gr_vocab_default(&v);
	vocab_with(g, &v);
	gr_set_arr(g, "tokenizer.ggml.token_type", GR_V_I32, GR_VOCAB_N - 1,
		   v.type);
}

static const struct seed seeds[] = {
	{"valid-model-moe.gguf", s_moe},
	{"valid-model-fused.gguf", s_fused},
	{"valid-model-glm4moe.gguf", s_glm},
	{"valid-model-mxfp4.gguf", s_mxfp4},
	{"valid-model-legacy.gguf", s_legacy},
	{"valid-model-dense.gguf", s_dense},
	{"valid-gguf-allkv.gguf", s_allkv},
	{"valid-gguf-v2.gguf", s_v2},
	{"valid-gguf-split-1-of-1.gguf", s_split1},
	{"valid-gguf-empty.gguf", s_empty},
	{"bad-expert-ne2.gguf", s_bad_ne2},
	{"bad-duplicate-key.gguf", s_bad_dup},
	{"valid-vocab-qwen2.gguf", s_vocab_qwen2},
	{"valid-vocab-llama-bpe.gguf", s_vocab_llama3},
	{"valid-vocab-glm4.gguf", s_vocab_glm4},
	{"valid-vocab-deepseek-v3.gguf", s_vocab_deepseek3},
	{"valid-vocab-gpt-4o.gguf", s_vocab_gpt4o},
	{"bad-vocab-token-type-7.gguf", s_vocab_bad_type},
	{"bad-vocab-token-type-count.gguf", s_vocab_bad_type_count},
	{"bad-vocab-duplicate-token.gguf", s_vocab_bad_dup},
	{"bad-vocab-merge-absent-token.gguf", s_vocab_bad_merge_absent},
	{"bad-vocab-merge-no-space.gguf", s_vocab_bad_merge_nospace},
	{"bad-vocab-bos-id-out-of-range.gguf", s_vocab_bad_bos},
	{"bad-vocab-pre-unknown.gguf", s_vocab_bad_pre},
	{"bad-vocab-empty-token.gguf", s_vocab_bad_empty},
	{"bad-vocab-add-bos-without-bos.gguf", s_vocab_bad_add_bos},
};
#define N_SEEDS (sizeof(seeds) / sizeof(seeds[0]))

static void build_seed(const struct seed *s, struct gr_buf *out,
		       struct gr_layout *lay)
{
	struct gr_gguf g;
	gr_init(&g);
	s->make(&g);
	gr_build(&g, out, lay);
	gr_free(&g);
}

static int write_seeds(const char *dir)
{
	if (mkdir(dir, 0755) && errno != EEXIST)
		t_fatal("mkdir %s: %s", dir, strerror(errno));
	for (size_t i = 0; i < N_SEEDS; i++) {
		struct gr_buf b;
		build_seed(&seeds[i], &b, NULL);
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, seeds[i].name);
		int rc = t_write_file(path, b.p, b.len);
		if (rc)
			t_fatal("write %s: %s", path, strerror(-rc));
		printf("wrote %s (%zu bytes)\n", path, b.len);
		gr_buf_free(&b);
	}
	return 0;
}

/* ---- running ----------------------------------------------------------------- */

static int expect_for(const char *name)
{
	if (!strncmp(name, "valid-model-", 12))
		return FUZZ_GGUF_OK | FUZZ_MODEL_OK;
	if (!strncmp(name, "valid-gguf-", 11))
		return FUZZ_GGUF_OK;
	if (!strncmp(name, "valid-vocab-", 12))
		return FUZZ_GGUF_OK | FUZZ_VOCAB_OK;
	if (!strncmp(name, "bad-vocab-", 10))
		return FUZZ_GGUF_OK;
	return 0;
}

static int run_one(const char *label, const char *name, const uint8_t *p,
		   size_t n)
{
	int want = expect_for(name);
	int got = fuzz_gguf_one(p, n);
	T_CHECK((got & want) == want, "%s: expected%s%s%s, got%s%s%s", label,
		want & FUZZ_GGUF_OK ? " gguf-ok" : "",
		want & FUZZ_MODEL_OK ? " model-ok" : "",
		want & FUZZ_VOCAB_OK ? " vocab-ok" : "",
		got & FUZZ_GGUF_OK ? " gguf-ok" : " gguf-rejected",
		got & FUZZ_MODEL_OK ? " model-ok" : " model-rejected",
		got & FUZZ_VOCAB_OK ? " vocab-ok" : " vocab-rejected");
	if (!strncmp(name, "bad-vocab-", 10))
		T_CHECK(!(got & FUZZ_VOCAB_OK), "%s: the vocabulary was LOADED",
			label);
	return got;
}

static const char *corpus_dir(void)
{
	const char *e = getenv("MS_FUZZ_CORPUS");
	if (e && *e)
		return e;
	/* Here, or from build/tests/t_fuzz_seeds (or build/san/tests/...)
	 * upwards. */
	return t_source_path("tests/fuzz/corpus/gguf", 5);
}

/* Hostile numbers a mutation may plant. */
static const uint64_t magic_vals[] = {
	0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 31, 32, 33, 40, 63, 64, 255, 256,
	0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 1ull << 32,
	1ull << 61, 1ull << 62, 1ull << 63, UINT64_MAX, UINT64_MAX - 31,
	UINT64_MAX - 63,
};

/* Four mutations in five land in the metadata (the first `hot` bytes): the
 * tensor data is never read, so flipping it proves little. */
static size_t mutate(uint8_t *p, size_t n, size_t cap, size_t hot,
		     uint64_t *rs)
{
	unsigned k = 1 + (unsigned)(t_rand(rs) % 3);
	for (unsigned i = 0; i < k && n; i++) {
		size_t span = (t_rand(rs) % 5 && hot && hot < n) ? hot : n;
		size_t at = (size_t)(t_rand(rs) % span);
		switch (t_rand(rs) % 6) {
		case 0: /* flip a bit */
			p[at] ^= (uint8_t)(1u << (t_rand(rs) % 8));
			break;
		case 1: /* a random byte */
			p[at] = (uint8_t)t_rand(rs);
			break;
		case 2: case 3: { /* a hostile number, 1/2/4/8 bytes wide */
			uint64_t v = magic_vals[t_rand(rs) %
						(sizeof(magic_vals) / sizeof(magic_vals[0]))];
			size_t w = (size_t)1 << (t_rand(rs) % 4);
			if (at + w > n)
				at = n - (n < w ? n : w);
			for (size_t b = 0; b < w && at + b < n; b++)
				p[at + b] = (uint8_t)(v >> (8 * b));
			break;
		}
		case 4: /* truncate */
			n = at;
			break;
		case 5: /* duplicate a run of bytes (grows the file) */
			n = t_dup_run(p, n, cap, at, rs);
			break;
		}
	}
	return n;
}

static unsigned mutate_runs(const uint8_t *p, size_t n, size_t hot,
			    unsigned iters, uint64_t *rs)
{
	size_t cap = n + 4096;
	uint8_t *m = malloc(cap);
	unsigned ok = 0;
	if (!m)
		t_fatal("out of memory");
	for (unsigned i = 0; i < iters; i++) {
		memcpy(m, p, n);
		size_t len = mutate(m, n, cap, hot, rs);
		if (fuzz_gguf_one(m, len) & FUZZ_GGUF_OK)
			ok++;
	}
	free(m);
	return ok;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* keep the log in order */
	if (argc == 3 && !strcmp(argv[1], "--write-seeds"))
		return write_seeds(argv[2]);
	if (argc > 1) {
		fprintf(stderr, "usage: t_fuzz_seeds [--write-seeds DIR]\n");
		return 2;
	}
	ms_log_threshold = MS_LOG_ERR - 1; /* messages are checked, not shown */

	/* 1: the committed corpus, every file in it. */
	const char *dir = corpus_dir();
	if (!dir)
		t_fatal("no tests/fuzz/corpus/gguf (run from the repository root "
			"or set MS_FUZZ_CORPUS)");
	DIR *d = opendir(dir);
	if (!d)
		t_fatal("opendir %s: %s", dir, strerror(errno));
	struct dirent *de;
	unsigned n_files = 0;
	bool have[N_SEEDS] = {false};
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		size_t n = 0;
		uint8_t *p = t_read_file(path, 64 << 20, &n);
		if (!p) {
			t_fail_at(__FILE__, __LINE__, "cannot read %s", path);
			continue;
		}
		int got = run_one(path, de->d_name, p, n);
		printf("  corpus %-40s %6zu bytes  gguf %-8s model %-8s "
		       "vocab %s\n", de->d_name, n,
		       got & FUZZ_GGUF_OK ? "ok" : "rejected",
		       got & FUZZ_MODEL_OK ? "ok" : "rejected",
		       got & FUZZ_VOCAB_OK ? "ok" : "rejected");
		for (size_t i = 0; i < N_SEEDS; i++) {
			if (strcmp(de->d_name, seeds[i].name))
				continue;
			have[i] = true;
			struct gr_buf b;
			build_seed(&seeds[i], &b, NULL);
			T_CHECK(b.len == n && !memcmp(b.p, p, n), "%s differs from "
				"what the builder makes now; regenerate with "
				"t_fuzz_seeds --write-seeds %s", path, dir);
			gr_buf_free(&b);
		}
		free(p);
		n_files++;
	}
	closedir(d);
	for (size_t i = 0; i < N_SEEDS; i++)
		T_CHECK(have[i], "seed %s is missing from %s (t_fuzz_seeds "
			"--write-seeds %s)", seeds[i].name, dir, dir);
	printf("%u corpus files from %s ran clean\n", n_files, dir);

	/* 2: deterministic mutations of every seed, fresh from the builder. */
	uint64_t seed = getenv("MS_SEED") ? t_seed() : 0x5eed5eedull;
	printf("mutations: MS_SEED=%llu\n", (unsigned long long)seed);
	const unsigned iters = 400;
	unsigned total = 0;
	for (size_t i = 0; i < N_SEEDS; i++) {
		struct gr_buf b;
		struct gr_layout lay;
		build_seed(&seeds[i], &b, &lay);
		run_one(seeds[i].name, seeds[i].name, b.p, b.len);
		uint64_t rs = seed ^ (0x9e3779b97f4a7c15ull * (i + 1));
		unsigned ok = mutate_runs(b.p, b.len, (size_t)lay.data_offset,
					  iters, &rs);
		printf("  %-34s %u mutations, %u still parse\n", seeds[i].name,
		       iters, ok);
		total += iters;
		gr_buf_free(&b);
	}
	printf("%u mutated files ran clean\n", total);
	return t_done();
}
