/*
 * t_trace - routing traces: the file format, the generator, the statistics
 * and the `moestream trace` command as a user meets it.
 *
 *  - save/load round trip of random traces, bit for bit;
 *  - corrupt files are refused with one line naming the problem (bad magic,
 *    truncated, expert out of range, an expert twice, a NaN weight, a size
 *    that does not match the header, a header asking for 2^31 tokens, bad
 *    version, bad shape, blocks out of order);
 *  - statistics against hand-computed answers on small traces;
 *  - the generator: deterministic per seed, different across seeds, N
 *    tokens a prefix of N+1, every record valid, weights summing to the
 *    model's expert_weights_scale;
 *  - `trace gen` on a GLM-4.7-shaped model (a sparse file: metadata only)
 *    then `trace stats --json` shows the calibrated properties;
 *  - CSV export -> import gives the same trace file byte for byte, rows in
 *    any order; bad CSV is refused with one line naming the line;
 *  - bad usage exits 2, bad files exit 1 with one line.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../tools/tools.h"
#include "../tools/trace.h"
#include "testutil.h"

static char cmd[16384];
static const char *dir;

static char *read_whole(const char *path, size_t *len);


/* ---- helpers --------------------------------------------------------------- */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *path_in(const char *name)
{
	static char buf[8][4096];
	static int i;
	char *p = buf[i++ % 8];
	snprintf(p, 4096, "%s/%s", dir, name);
	return p;
}

static bool one_line(const char *s)
{
	size_t nl = 0;
	for (; s && *s; s++)
		nl += *s == '\n';
	return nl == 1;
}

/* Runs "moestream ARGS" and returns its exit code, with stdout and stderr
 * together in *out. A `trace` command without a shell pipe runs in this
 * process, through cmd_trace() with fds 1 and 2 sent to a file: a process
 * start costs ~0.1 s on a small VM, and this test runs ~80 commands (and so
 * the command paths also run under this test's sanitizers, leaks
 * included). Anything else, or bin = true, runs the real binary. */
static int run_cmd(const char *args, char **out, bool bin)
{
	if (bin || strncmp(args, "trace", 5) || (args[5] && args[5] != ' ') ||
	    strchr(args, '|')) {
		snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path("moestream"),
			 args);
		return t_run(cmd, out, 1 << 20);
	}
	char *copy = strdup(args), *argv[64], *save = NULL;
	int argc = 0;
	argv[argc++] = "moestream trace";
	strtok_r(copy, " ", &save); /* "trace" */
	for (char *a; argc < 63 && (a = strtok_r(NULL, " ", &save));)
		argv[argc++] = a;
	argv[argc] = NULL;
	static char log[4096]; /* not path_in: its buffers rotate */
	snprintf(log, sizeof(log), "%s/cmd.out", dir);
	fflush(stdout);
	fflush(stderr);
	int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int o1 = dup(1), o2 = dup(2);
	if (fd < 0 || o1 < 0 || o2 < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		t_fatal("redirecting output: %s", strerror(errno));
	int rc = cmd_trace(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(o1, 1);
	dup2(o2, 2);
	close(o1);
	close(o2);
	close(fd);
	free(copy);
	size_t n;
	*out = read_whole(log, &n);
	return rc;
}

/* Runs "moestream ARGS", checks the exit code, that the output holds
 * `want` (when not NULL) and, when `one`, that it is exactly one line. */
static void expect_how(const char *args, int want_rc, const char *want,
		       bool one, bool bin)
{
	char *out = NULL;
	int rc = run_cmd(args, &out, bin);
	printf("$ moestream %s%s -> exit %d\n%.400s%s", args,
	       bin ? "  (binary)" : "", rc, out ? out : "",
	       out && strlen(out) > 400 ? "...\n" : "");
	T_CHECK(rc == want_rc, "'moestream %s' exited %d, expected %d", args, rc,
		want_rc);
	if (want)
		T_CHECK(out && strstr(out, want), "'moestream %s' output lacks '%s'",
			args, want);
	if (one)
		T_CHECK(one_line(out), "'moestream %s' printed more or less than "
				       "one line",
			args);
	free(out);
}

static void expect(const char *args, int want_rc, const char *want, bool one)
{
	expect_how(args, want_rc, want, one, false);
}

static char *read_whole(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		t_fatal("%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (!b || fread(b, 1, (size_t)n, f) != (size_t)n)
		t_fatal("reading %s", path);
	b[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return b;
}

static bool same_file(const char *a, const char *b)
{
	size_t la, lb;
	char *x = read_whole(a, &la), *y = read_whole(b, &lb);
	bool same = la == lb && !memcmp(x, y, la);
	free(x);
	free(y);
	return same;
}

static bool same_trace(const struct ms_trace *a, const struct ms_trace *b)
{
	if (strcmp(a->arch, b->arch) || a->n_tokens != b->n_tokens ||
	    a->n_layers != b->n_layers || a->n_expert != b->n_expert ||
	    a->k != b->k ||
	    memcmp(a->blocks, b->blocks, a->n_layers * sizeof(*a->blocks)))
		return false;
	size_t n = (size_t)a->n_tokens * a->n_layers * a->k;
	return !memcmp(a->expert, b->expert, n * sizeof(*a->expert)) &&
	       !memcmp(a->weight, b->weight, n * sizeof(*a->weight));
}

#define CK(x)                                                                  \
	do {                                                                   \
		if ((x) < 0)                                                   \
			t_fatal("%s: %s", #x, err.msg);                        \
	} while (0)

/* A GLM-4.7-shaped model as t_inspect_sparse writes it, without the
 * vocabulary (not needed here): 93 blocks, 3 dense, 1 NextN, 160 experts,
 * 8 used, expert_weights_scale 2.5; a sparse file of ~123 GB. */
static void write_glm(const char *path)
{
	struct ms_err err = { 0 };
	struct ms_gguf_writer *w;
	char k[96];
	CK(ms_gguf_writer_init(&w, 32, &err));
	CK(ms_gguf_writer_set_str(w, "general.architecture", "glm4moe", &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.block_count", 93, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.embedding_length", 5120, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_feed_forward_length", 1536, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_count", 160, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_used_count", 8, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_shared_count", 1, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.leading_dense_block_count", 3, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.nextn_predict_layers", 1, &err));
	CK(ms_gguf_writer_set_f32(w, "glm4moe.expert_weights_scale", 2.5f, &err));
	for (int b = 3; b < 93; b++) {
		int64_t g[3] = { 5120, 1536, 160 }, d[3] = { 1536, 5120, 160 };
		snprintf(k, sizeof(k), "blk.%d.ffn_gate_exps.weight", b);
		CK(ms_gguf_writer_add_tensor(w, k, 3, g, MS_TYPE_Q2_K, &err));
		snprintf(k, sizeof(k), "blk.%d.ffn_up_exps.weight", b);
		CK(ms_gguf_writer_add_tensor(w, k, 3, g, MS_TYPE_Q2_K, &err));
		snprintf(k, sizeof(k), "blk.%d.ffn_down_exps.weight", b);
		CK(ms_gguf_writer_add_tensor(w, k, 3, d, MS_TYPE_Q3_K, &err));
	}
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		t_fatal("%s: %s", path, strerror(errno));
	CK(ms_gguf_writer_write_meta(w, fd, &err));
	if (ftruncate(fd, (off_t)ms_gguf_writer_file_size(w)))
		t_skip("cannot make a sparse file in %s: %s", dir, strerror(errno));
	close(fd);
	ms_gguf_writer_free(w);
}

/* ---- the format ------------------------------------------------------------ */

static struct ms_trace *random_trace(uint64_t *rs, uint32_t tokens,
				     uint32_t layers, uint32_t n, uint32_t k)
{
	struct ms_trace *t;
	struct ms_err err = { 0 };
	CK(ms_trace_alloc(&t, "glm4moe", tokens, layers, n, k, &err));
	for (uint32_t l = 0; l < layers; l++)
		t->blocks[l] = 1 + 2 * l;
	for (uint32_t tok = 0; tok < tokens; tok++)
		for (uint32_t l = 0; l < layers; l++) {
			uint16_t *e = ms_trace_experts(t, tok, l);
			float *w = ms_trace_weights(t, tok, l);
			for (uint32_t j = 0; j < k; j++) {
				uint16_t x;
				bool dup;
				do {
					x = (uint16_t)(t_rand(rs) % n);
					dup = false;
					for (uint32_t q = 0; q < j; q++)
						dup |= e[q] == x;
				} while (dup);
				e[j] = x;
				/* any finite float, tiny and huge ones too */
				uint32_t u;
				do
					u = (uint32_t)t_rand(rs);
				while (!isfinite(*(float *)memcpy(&w[j], &u, 4)));
			}
		}
	return t;
}

static void test_round_trip(uint64_t *rs)
{
	struct ms_err err = { 0 };
	const uint32_t shapes[][4] = {
		{ 37, 5, 16, 4 }, { 1, 1, 1, 1 }, { 0, 3, 8, 2 }, { 200, 89, 160, 8 },
		{ 3, 2, 65535, 64 },
	};
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		const uint32_t *s = shapes[i];
		struct ms_trace *a = random_trace(rs, s[0], s[1], s[2], s[3]), *b;
		char *p = path_in("rt.trace");
		CK(ms_trace_save(a, p, &err));
		CK(ms_trace_load(&b, p, &err));
		T_CHECK(same_trace(a, b), "round trip of %u x %u x %u/%u differs",
			s[0], s[1], s[3], s[2]);
		ms_trace_free(a);
		ms_trace_free(b);
	}
}

/* Saves a small valid trace, applies `mutate` to its bytes and checks that
 * loading fails with a one-line message holding `want`. */
static void expect_corrupt(const char *what, void (*mutate)(char **b, size_t *n),
			   const char *want)
{
	uint64_t rs = 7;
	struct ms_err err = { 0 };
	struct ms_trace *t = random_trace(&rs, 10, 3, 16, 4), *u = NULL;
	char *p = path_in("bad.trace");
	CK(ms_trace_save(t, p, &err));
	ms_trace_free(t);
	size_t n;
	char *b = read_whole(p, &n);
	mutate(&b, &n);
	if (t_write_file(p, b, n))
		t_fatal("rewriting %s", p);
	free(b);
	ms_err_clear(&err);
	int rc = ms_trace_load(&u, p, &err);
	printf("corrupt (%s): rc %d: %s\n", what, rc, err.msg);
	T_CHECK(rc < 0 && !u, "%s: loaded (rc %d)", what, rc);
	T_CHECK(strstr(err.msg, want), "%s: message '%s' lacks '%s'", what,
		err.msg, want);
	T_CHECK(!strchr(err.msg, '\n') && strlen(err.msg) > 10,
		"%s: message is not one line", what);
	ms_trace_free(u);
}

/* Byte offsets in the file of the 10 x 3 x 4-of-16 trace. */
#define HDR (8 + 4 + 4 + 64 + 16 + 4 * 3)
#define REC (4 * 6)
static void m_magic(char **b, size_t *n) { (void)n; (*b)[0] = 'X'; }
static void m_trunc(char **b, size_t *n) { (void)b; *n -= 1; }
static void m_trunc_hdr(char **b, size_t *n) { (void)b; *n = 50; }
static void m_extra(char **b, size_t *n)
{
	*b = realloc(*b, *n + 6);
	memset(*b + *n, 0, 6);
	*n += 6;
}
static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void m_range(char **b, size_t *n) { (void)n; (*b)[HDR + 2 * REC] = 16; (*b)[HDR + 2 * REC + 1] = 0; }
static void m_dup(char **b, size_t *n)
{
	(void)n;
	memcpy(*b + HDR + 5 * REC + 2, *b + HDR + 5 * REC, 2);
}
static void m_nan(char **b, size_t *n) { (void)n; put32(*b + HDR + 7 * REC + 8 + 4, 0x7fc00000u); }
static void m_inf(char **b, size_t *n) { (void)n; put32(*b + HDR + 3 * REC + 8, 0x7f800000u); }
static void m_tokens(char **b, size_t *n) { (void)n; put32(*b + 80, 1u << 31); }
static void m_version(char **b, size_t *n) { (void)n; put32(*b + 8, 2); }
static void m_k0(char **b, size_t *n) { (void)n; put32(*b + 92, 0); }
static void m_kbig(char **b, size_t *n) { (void)n; put32(*b + 92, 17); }
static void m_blocks(char **b, size_t *n) { (void)n; put32(*b + HDR - 4, 1); }
static void m_hdrlen(char **b, size_t *n) { (void)n; put32(*b + 12, 4); }

static void test_corrupt(void)
{
	expect_corrupt("bad magic", m_magic, "not a moestream trace");
	expect_corrupt("truncated by a byte", m_trunc, "truncated");
	expect_corrupt("truncated in the header", m_trunc_hdr, "truncated");
	expect_corrupt("6 bytes too many", m_extra, "but its header");
	expect_corrupt("expert out of range", m_range, "expert 16 (out of range)");
	expect_corrupt("expert twice", m_dup, "(chosen twice)");
	expect_corrupt("NaN weight", m_nan, "weight nan");
	expect_corrupt("inf weight", m_inf, "weight inf");
	expect_corrupt("2^31 tokens", m_tokens, "2147483648 tokens");
	expect_corrupt("version 2", m_version, "version 2");
	expect_corrupt("k = 0", m_k0, "out of range");
	expect_corrupt("k > experts", m_kbig, "k = 17");
	expect_corrupt("blocks out of order", m_blocks, "not after");
	expect_corrupt("header length", m_hdrlen, "header 4 bytes");

	struct ms_trace *t = NULL;
	struct ms_err err = { 0 };
	T_CHECK(ms_trace_load(&t, dir, &err) < 0 && strstr(err.msg, "regular"),
		"a directory loaded: %s", err.msg);
	T_CHECK(ms_trace_load(&t, path_in("nope.trace"), &err) == -ENOENT,
		"a missing file: %s", err.msg);
}

/* ---- statistics, against answers worked out by hand ------------------------ */

static void test_stats_known(void)
{
	struct ms_err err = { 0 };
	struct ms_trace *t;
	struct ms_trace_stats *s;
	/* One layer, 4 experts, k = 1: 0 1 0 1 2 3 0 0. */
	const uint16_t seq[] = { 0, 1, 0, 1, 2, 3, 0, 0 };
	CK(ms_trace_alloc(&t, "x", 8, 1, 4, 1, &err));
	t->blocks[0] = 3;
	for (uint32_t i = 0; i < 8; i++) {
		t->expert[i] = seq[i];
		t->weight[i] = 1;
	}
	CK(ms_trace_stats_compute(&s, t, 3, &err));
	const struct ms_trace_layer_stats *x = &s->layer[0];
	T_EQ_U64(x->distinct, 4);
	/* windows of 3: {0,1,0} 2, {1,0,1} 2, {0,1,2} 3, {1,2,3} 3, {2,3,0} 3,
	 * {3,0,0} 2: mean 15/6 = 2.5 of 4 */
	T_CHECK(fabs(x->coverage - 2.5 / 4) < 1e-12, "coverage %g", x->coverage);
	/* LRU of 2: miss miss hit hit miss miss miss hit -> 3/8 */
	T_CHECK(fabs(x->lru_hit - 3.0 / 8) < 1e-12, "lru %g", x->lru_hit);
	/* reuse: 0@2 d2, 1@3 d2, 0@6 d4, 0@7 d1; never: 4 */
	T_EQ_U64(x->reuse[0], 1);
	T_EQ_U64(x->reuse[1], 2);
	T_EQ_U64(x->reuse[2], 1);
	T_EQ_U64(x->reuse[MS_TRACE_REUSE_BUCKETS - 1], 4);
	/* popularity 4/8, 2/8, 1/8, 1/8: 1.75 bits, 0.875 of 2 */
	T_CHECK(fabs(x->entropy_bits - 1.75) < 1e-12, "entropy %g", x->entropy_bits);
	T_CHECK(fabs(x->entropy_ratio - 0.875) < 1e-12, "ratio %g", x->entropy_ratio);
	T_CHECK(x->predict == -1 && s->predict == -1, "predict %g for one layer",
		x->predict);
	T_EQ_U64(s->lru_capacity, 2);
	ms_trace_stats_free(s);
	ms_trace_free(t);

	/* Reuse buckets at their edges: distances 1..300 at one layer. */
	CK(ms_trace_alloc(&t, "x", 1 + 300 * 301 / 2, 1, 2, 1, &err));
	uint32_t at = 0;
	t->expert[at++] = 0;
	for (uint32_t d = 1; d <= 300; d++) {
		for (uint32_t i = 1; i < d; i++)
			t->expert[at++] = 1;
		t->expert[at++] = 0;
	}
	CK(ms_trace_stats_compute(&s, t, 75, &err));
	/* expert 0's distances 1..300 fall in 1, 2, 3-4, 5-8, ..., 65-128,
	 * >128: 1, 1, 2, 4, 8, 16, 32, 64, 172 (expert 1 adds its own) */
	const uint64_t want0[] = { 1, 1, 2, 4, 8, 16, 32, 64, 172 };
	uint64_t ones = 0; /* expert 1 runs: distance 1 each but the first */
	for (uint32_t d = 2; d <= 300; d++)
		ones += d - 1 - 1;
	for (unsigned b = 0; b < 9; b++) {
		uint64_t got = s->layer[0].reuse[b];
		uint64_t want = want0[b] + (b == 0 ? ones : 0);
		/* expert 1 comes back after one 0 at distance 2 each time */
		if (b == 1)
			want += 298;
		T_CHECK(got == want, "bucket %s: %llu, want %llu",
			ms_trace_reuse_bucket_name[b], (unsigned long long)got,
			(unsigned long long)want);
	}
	ms_trace_stats_free(s);
	ms_trace_free(t);

	/* Two layers, 8 experts, k = 2: layer 1 = layer 0 + 3 (mod 8), layer 0
	 * cycling through pairs: predictability 1. With layer 1 random, it
	 * is near k / n. */
	uint64_t rs = 11;
	CK(ms_trace_alloc(&t, "x", 400, 2, 8, 2, &err));
	t->blocks[1] = 1;
	for (uint32_t tok = 0; tok < 400; tok++) {
		uint16_t *a = ms_trace_experts(t, tok, 0), *b = ms_trace_experts(t, tok, 1);
		a[0] = (uint16_t)(t_rand(&rs) % 8);
		a[1] = (uint16_t)((a[0] + 1 + t_rand(&rs) % 7) % 8);
		b[0] = (uint16_t)((a[1] + 3) % 8);
		b[1] = (uint16_t)((a[0] + 3) % 8);
	}
	CK(ms_trace_stats_compute(&s, t, 75, &err));
	T_CHECK(s->layer[0].predict == 1.0 && s->predict == 1.0,
		"planted map predicted %g", s->layer[0].predict);
	T_CHECK(s->layer[1].predict == -1, "last layer predict %g",
		s->layer[1].predict);
	ms_trace_stats_free(s);
	ms_trace_free(t);
}

/* ---- the generator --------------------------------------------------------- */

static void test_gen(const char *glm)
{
	struct ms_err err = { 0 };
	struct ms_model *m;
	CK(ms_model_open(&m, glm, &err));
	struct ms_trace_gen_params p;
	ms_trace_gen_defaults(&p);
	p.weight_scale = 2.5;
	struct ms_trace *a, *b, *c, *d;
	CK(ms_trace_alloc_for_model(&a, m, 300, &err));
	CK(ms_trace_alloc_for_model(&b, m, 300, &err));
	CK(ms_trace_alloc_for_model(&c, m, 300, &err));
	CK(ms_trace_alloc_for_model(&d, m, 200, &err));
	CK(ms_trace_check_model(a, m, &err));
	CK(ms_trace_gen(a, &p, &err));
	CK(ms_trace_gen(b, &p, &err));
	CK(ms_trace_gen(d, &p, &err));
	p.seed = 2;
	CK(ms_trace_gen(c, &p, &err));
	T_CHECK(same_trace(a, b), "the same seed gave two traces");
	size_t n = (size_t)300 * a->n_layers * a->k, differ = 0;
	for (size_t i = 0; i < n; i++)
		differ += a->expert[i] != c->expert[i];
	printf("seeds 1 and 2: %zu of %zu choices differ\n", differ, n);
	T_CHECK(differ > n / 2, "seeds 1 and 2 differ in only %zu of %zu", differ, n);
	size_t nd = (size_t)200 * d->n_layers * d->k;
	T_CHECK(!memcmp(a->expert, d->expert, nd * 2) &&
			!memcmp(a->weight, d->weight, nd * 4),
		"200 tokens are not a prefix of 300");

	/* every record: k distinct experts in range, weights positive, by
	 * weight, summing to the scale */
	size_t bad = 0;
	for (uint32_t tok = 0; tok < a->n_tokens; tok++)
		for (uint32_t l = 0; l < a->n_layers; l++) {
			const uint16_t *e = ms_trace_experts(a, tok, l);
			const float *w = ms_trace_weights(a, tok, l);
			double sum = 0;
			for (uint32_t j = 0; j < a->k; j++) {
				sum += w[j];
				bad += e[j] >= a->n_expert || !(w[j] > 0) ||
				       (j && w[j] > w[j - 1]);
				for (uint32_t q = 0; q < j; q++)
					bad += e[q] == e[j];
			}
			bad += fabs(sum - 2.5) > 1e-5;
		}
	T_CHECK(!bad, "%zu bad choices or records", bad);
	T_EQ_U64(a->n_layers, 89);
	T_EQ_U64(a->blocks[0], 3);
	T_EQ_U64(a->blocks[88], 91);

	/* parameters out of range are refused, naming the value */
	ms_trace_gen_defaults(&p);
	p.reuse = 0.5;
	p.corr = 0.6;
	T_CHECK(ms_trace_gen(a, &p, &err) == -EINVAL && strstr(err.msg, "0.6"),
		"reuse + corr > 1: %s", err.msg);
	ms_trace_gen_defaults(&p);
	p.partners = 161;
	T_CHECK(ms_trace_gen(a, &p, &err) == -EINVAL && strstr(err.msg, "161"),
		"161 partners of 160: %s", err.msg);
	ms_trace_free(a);
	ms_trace_free(b);
	ms_trace_free(c);
	ms_trace_free(d);
	ms_model_free(m);
}

/* ---- the command ----------------------------------------------------------- */

static double jnum(const cJSON *o, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

/* The calibrated properties (see tools/trace_cmd.c). The generator is
 * deterministic, so at seed 1 these figures are exact for a given build;
 * over seeds and lengths they vary by less than 0.005. The tolerances are
 * the "within a few points" of the targets that the defaults promise:
 * wide enough for a deliberate recalibration to move a figure a little,
 * narrow enough that a broken mechanism (no reuse: LRU 0.49; no partners:
 * predictability 0.05; no drift: coverage 0.3) fails at once. */
static void test_calibration(const char *glm)
{
	char args[8192], *out = NULL;
	char *tr = path_in("glm.trace");
	snprintf(args, sizeof(args), "trace gen --model %s --tokens 1200 --seed 1 "
				     "-o %s", glm, tr);
	expect_how(args, 0, "1200 tokens x 89 MoE layers x 8 of 160", true, true);
	snprintf(args, sizeof(args), "trace stats %s --model %s --json", tr, glm);
	int rc = run_cmd(args, &out, false);
	T_CHECK(rc == 0, "trace stats --json exited %d", rc);
	cJSON *j = cJSON_Parse(out ? out : "");
	free(out);
	if (!j) {
		t_fail_at(__FILE__, __LINE__, "trace stats --json is not JSON");
		return;
	}
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "summary");
	double cov = jnum(s, "coverage"), lru = jnum(s, "lru_hit");
	double pred = jnum(s, "predict"), ent = jnum(s, "entropy_ratio");
	printf("GLM shape, 1200 tokens, seed 1: coverage@75 %.3f, LRU@80 %.3f, "
	       "predictability %.3f, entropy %.3f of uniform\n",
	       cov, lru, pred, ent);
	T_CHECK(fabs(cov - 0.93) <= 0.03, "coverage %.3f, target 0.93 +- 0.03", cov);
	T_CHECK(fabs(lru - 0.81) <= 0.03, "LRU hit %.3f, target 0.81 +- 0.03", lru);
	T_CHECK(fabs(pred - 0.70) <= 0.03, "predictability %.3f, target 0.70 +- "
					   "0.03", pred);
	T_CHECK(ent >= 0.98, "entropy %.3f of uniform: not near-uniform", ent);
	T_CHECK(jnum(j, "window") == 75 && jnum(j, "lru_capacity") == 80 &&
			jnum(j, "n_layers") == 89,
		"window %g, lru capacity %g, layers %g", jnum(j, "window"),
		jnum(j, "lru_capacity"), jnum(j, "n_layers"));
	/* every layer alike: no layer drifts from the mean */
	const cJSON *layers = cJSON_GetObjectItemCaseSensitive(j, "layers"), *x;
	int i = 0, far = 0;
	cJSON_ArrayForEach(x, layers)
	{
		double c = jnum(x, "coverage"), h = jnum(x, "lru_hit");
		double pr = jnum(x, "predict");
		if (fabs(c - cov) > 0.05 || fabs(h - lru) > 0.05 ||
		    (i < 88 && fabs(pr - pred) > 0.05)) {
			printf("layer %d: coverage %.3f LRU %.3f predict %.3f\n", i, c,
			       h, pr);
			far++;
		}
		i++;
	}
	T_CHECK(i == 89 && !far, "%d layers, %d far from the mean", i, far);
	T_CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
			cJSON_GetArrayItem(layers, 88), "predict")),
		"the last layer has a predictability");
	cJSON_Delete(j);

	/* The text table: a summary line with the same figures. */
	snprintf(args, sizeof(args), "trace stats %s", tr);
	expect(args, 0, "next-layer predictability", false);
}

/* Rewrites a CSV with its data rows sorted by (layer, token), keeping the
 * order of rows within each (token, layer): a different order of rows for
 * the same trace. */
static void reorder_csv(const char *in, const char *out)
{
	snprintf(cmd, sizeof(cmd),
		 "(head -n 1 '%s'; tail -n +2 '%s' | sort -t, -s -k2,2n -k1,1n) > '%s'",
		 in, in, out);
	T_CHECK(t_run(cmd, NULL, 0) == 0, "%s failed", cmd);
}

static void test_csv(const char *glm, const char *tiny)
{
	char args[16384];
	const char *traces[][2] = { { glm, "g100.trace" }, { tiny, "t.trace" } };
	for (int i = 0; i < 2; i++) {
		char *tr = path_in(traces[i][1]), *csv = path_in("a.csv");
		char *back = path_in("back.trace"), *csv2 = path_in("b.csv");
		snprintf(args, sizeof(args), "trace gen --model %s --tokens 100 "
					     "--seed 5 -o %s", traces[i][0], tr);
		expect(args, 0, "wrote", true);
		snprintf(args, sizeof(args), "trace export %s --csv -o %s --force", tr,
			 csv);
		expect(args, 0, NULL, false);
		snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s "
					     "--force", csv, traces[i][0], back);
		expect(args, 0, "wrote", true);
		T_CHECK(same_file(tr, back), "%s: export -> import changed the trace",
			traces[i][1]);
		/* rows in another order: the same trace */
		reorder_csv(csv, csv2);
		T_CHECK(!same_file(csv, csv2), "reordering the CSV changed nothing");
		snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s "
					     "--force", csv2, traces[i][0], back);
		expect(args, 0, "wrote", true);
		T_CHECK(same_file(tr, back), "%s: reordered rows changed the trace",
			traces[i][1]);
		/* stdout, and stdin */
		snprintf(args, sizeof(args), "trace export %s --csv | %s trace import "
					     "--csv - --model %s -o %s --force",
			 tr, t_build_path("moestream"), traces[i][0], back);
		expect(args, 0, "wrote", true);
		T_CHECK(same_file(tr, back), "%s: through a pipe, the trace changed",
			traces[i][1]);
	}
	size_t n;
	char *head = read_whole(path_in("a.csv"), &n);
	T_CHECK(!strncmp(head, "token,layer,expert,weight\n0,1,", 30),
		"CSV starts '%.40s'", head);
	free(head);
}

/* One bad CSV for the tiny model (16 experts, 4 used, MoE blocks 1..4,
 * NextN block 5): import must exit 1 with one line holding `want`. */
static void bad_csv_n(const char *tiny, const char *body, size_t len,
		      const char *want)
{
	char args[8192];
	char *csv = path_in("bad.csv");
	if (t_write_file(csv, body, len))
		t_fatal("writing %s", csv);
	snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s "
				     "--force", csv, tiny, path_in("bad-out.trace"));
	expect(args, 1, want, true);
}

static void bad_csv(const char *tiny, const char *body, const char *want)
{
	bad_csv_n(tiny, body, strlen(body), want);
}

/* Valid records: tokens 0..tokens-1 at every MoE block of the tiny model. */
static void good_rows(char *b, size_t n, uint32_t tokens)
{
	size_t o = strlen(b);
	for (uint32_t t = 0; t < tokens; t++)
		for (uint32_t blk = 1; blk <= 4; blk++)
			for (uint32_t e = 0; e < 4; e++)
				o += (size_t)snprintf(b + o, n - o, "%u,%u,%u,0.25\n", t,
						      blk, (e * 5 + blk + t) % 16);
}

static void test_csv_errors(const char *tiny)
{
	char b[65536], args[8192];
	const char *H = "token,layer,expert,weight\n";
	/* the good base the bad cases below spoil: it imports */
	snprintf(b, sizeof(b), "%s", H);
	good_rows(b, sizeof(b), 2);
	char *csv = path_in("good.csv");
	if (t_write_file(csv, b, strlen(b)))
		t_fatal("writing %s", csv);
	snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s",
		 csv, tiny, path_in("good.trace"));
	expect(args, 0, "2 tokens x 4 MoE layers x 4 of 16", true);

	const struct {
		const char *rows, *want;
	} cases[] = {
		{ "0,1,x,0.5\n", "bad.csv:2: expert 'x'" },
		{ "-1,1,0,0.5\n", "bad.csv:2: token '-1'" },
		{ "0,0,3,0.5\n", "bad.csv:2: layer 0 is not a MoE block" },
		{ "0,5,3,0.5\n", "bad.csv:2: layer 5 is not a MoE block" },
		{ "0,1,16,0.5\n", "bad.csv:2: expert '16'" },
		{ "0,1,3,nan\n", "bad.csv:2: weight 'nan'" },
		{ "0,1,3,1e999\n", "bad.csv:2: weight '1e999'" },
		{ "0,1,3\n", "bad.csv:2: 3 fields" },
		{ "0,1,3,0.5,9\n", "bad.csv:2: more than 4 fields" },
		{ "0,1,3,\n", "bad.csv:2: weight ''" },
		{ "0,1,99999999999,1\n", "bad.csv:2: expert '99999999999'" },
		{ "4294967295,1,3,1\n", "bad.csv:2: token '4294967295'" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(b, sizeof(b), "%s%s", H, cases[i].rows);
		good_rows(b, sizeof(b), 1);
		bad_csv(tiny, b, cases[i].want);
	}
	/* record-level errors */
	snprintf(b, sizeof(b), "%s", H);
	good_rows(b, sizeof(b), 1);
	strcat(b, "0,1,15,0.5\n"); /* a fifth expert at (0, blk 1) */
	bad_csv(tiny, b, "bad.csv:18: token 0 layer 1 has more than 4 experts");
	snprintf(b, sizeof(b), "%s0,1,1,0.5\n0,1,6,0.5\n0,1,1,0.5\n", H);
	bad_csv(tiny, b, "bad.csv:4: expert 1 chosen twice for token 0 layer 1 "
			 "(also on line 2)");
	snprintf(b, sizeof(b), "%s0,1,1,0.5\n", H);
	bad_csv(tiny, b, "bad.csv:2: token 0 layer 1 has 1 expert; the model uses 4");
	snprintf(b, sizeof(b), "%s", H);
	good_rows(b, sizeof(b), 1);
	strcat(b, "2,1,1,0.5\n"); /* token 1 missing */
	bad_csv(tiny, b, "token 1 has no rows for layer 1");
	bad_csv(tiny, "", "no rows");
	bad_csv(tiny, "tok,layer,expert,weight\n", "bad.csv:1: header");
	bad_csv_n(tiny, "token,layer,expert,weight\n0,1,2,0.5\0\n", 37,
		  "bad.csv:2: a NUL byte");
}

static void test_usage(const char *glm, const char *tiny)
{
	char args[8192];
	char *tr = path_in("u.trace");
	expect("trace", 2, "usage: moestream trace COMMAND", false);
	expect("trace frob", 2, "'frob' is not a trace command", true);
	expect("trace --help", 0, "gen", false);
	expect("trace gen --help", 0, "237 of 256", false);
	expect_how("trace gen --help", 0, "237 of 256", false, true);
	expect_how("trace frob", 2, "'frob' is not a trace command", true, true);
	expect("trace stats --help", 0, "predict", false);
	expect("trace export --help", 0, "--csv", false);
	expect("trace import --help", 0, "--model", false);
	expect("trace gen -o x.trace", 2, "--model and -o are required", true);
	snprintf(args, sizeof(args), "trace gen --model %s", tiny);
	expect(args, 2, "--model and -o are required", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --tokens 0", tiny, tr);
	expect(args, 2, "--tokens '0'", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --reuse 1.5", tiny, tr);
	expect(args, 2, "--reuse '1.5' is not a probability", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --reuse 0.5 --corr 0.6",
		 tiny, tr);
	expect(args, 2, "plus --corr 0.6 is over 1", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --skew 1:x", tiny, tr);
	expect(args, 2, "--skew '1:x'", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --partners 17", tiny, tr);
	expect(args, 2, "--partners 17 is more than the 16 experts", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --bogus", tiny, tr);
	expect(args, 2, NULL, false);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s extra", tiny, tr);
	expect(args, 2, "unexpected argument 'extra'", true);
	expect("trace stats", 2, "no TRACE given", true);
	expect("trace stats a b", 2, "one TRACE at a time", true);
	expect("trace stats --window 0 a", 2, "--window '0'", true);
	expect("trace export a", 2, "--csv", true);
	expect("trace import --csv a.csv", 2, "--csv, --model and -o are required", true);

	/* bad files: exit 1, one line */
	snprintf(args, sizeof(args), "trace gen --model %s -o %s", path_in("none.gguf"), tr);
	expect(args, 1, "none.gguf", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s --tokens 10", tiny, tr);
	expect(args, 0, "wrote", true);
	expect(args, 1, "exists; pass --force", true);
	snprintf(args, sizeof(args), "trace stats %s", path_in("none.trace"));
	expect(args, 1, "No such file", true);
	snprintf(args, sizeof(args), "trace stats %s", dir);
	expect(args, 1, "not a regular file", true);
	snprintf(args, sizeof(args), "trace stats %s", tiny);
	expect(args, 1, "not a moestream trace", true);
	snprintf(args, sizeof(args), "trace stats %s --model %s", tr, glm);
	expect(args, 1, "trace is for 16 experts, 4 per token", true);
	snprintf(args, sizeof(args), "trace export %s --csv", tiny);
	expect(args, 1, "not a moestream trace", true);
	snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s",
		 path_in("none.csv"), tiny, path_in("n.trace"));
	expect(args, 1, "none.csv", true);
	snprintf(args, sizeof(args), "trace import --csv %s --model %s -o %s", dir,
		 tiny, path_in("n.trace"));
	expect(args, 1, "is a directory", true);
	snprintf(args, sizeof(args), "trace gen --model %s -o %s", path_in("bad.csv"),
		 path_in("n.trace"));
	expect(args, 1, NULL, true);
}

int main(void)
{
	uint64_t rs = t_seed();
	dir = t_tmpdir();
	static char glm[4096], tiny[4096]; /* path_in's buffers rotate */
	snprintf(glm, sizeof(glm), "%s", path_in("glm.gguf"));
	snprintf(tiny, sizeof(tiny), "%s", path_in("tiny.gguf"));
	write_glm(glm);
	char args[8192];
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", tiny);
	expect(args, 0, "wrote", false);

	double t0 = now();
#define STEP(x)                                                                \
	do {                                                                   \
		x;                                                             \
		double t1 = now();                                             \
		printf("-- %s: %.2f s\n", #x, t1 - t0);                        \
		t0 = t1;                                                       \
	} while (0)
	STEP(test_round_trip(&rs));
	STEP(test_corrupt());
	STEP(test_stats_known());
	STEP(test_gen(glm));
	STEP(test_calibration(glm));
	STEP(test_csv(glm, tiny));
	STEP(test_csv_errors(tiny));
	STEP(test_usage(glm, tiny));
	return t_done();
}
