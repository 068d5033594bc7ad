/*
 * t_dump - `moestream dump` against ggml: the f32 it writes must be, bit for
 * bit, ggml's dequantisation of the bytes at the expert's extent.
 *
 * The expected side uses ggml alone: ggml's GGUF reader finds the tensor
 * blk.N.ffn_{gate,up,down,gate_up}_exps.weight in whichever shard holds it
 * and its extent (data offset + tensor offset + expert x slice), the test
 * preads those bytes and runs ggml's dequantize_row_* over each row. The
 * tool's output (with -o, and once through stdout) must match with memcmp
 * and have exactly ne1 x ne0 floats.
 *
 * Models:
 *   tiny   `moestream mkmodel --preset tiny`: glm4moe, Q2_K/Q2_K/Q3_K
 *          experts of random bytes with small finite f16 scales, so the
 *          values must also be finite, |v| < 10 and not all zero;
 *   fused  written by ggml: fused gate_up, 3 shards, per-block types
 *          (MXFP4, Q8_0, Q4_K, Q6_K, IQ4_NL, IQ2_XXS), random bytes: gate
 *          and up are the halves of gate_up (gate rows first), gate_up the
 *          whole, and IQ2_XXS (no dequantiser) is refused.
 *
 * Errors, each one clear line: layer out of range, a dense layer, expert
 * out of range, gate_up asked of an unfused layer, a type without a
 * dequantiser, -o naming the model, a truncated model (exit 1); a bad
 * --proj, a missing option, a non-number, no model, a terminal on stdout
 * (exit 2, a real pty).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

enum { F32 = 0, Q8_0 = 8, Q4_K = 12, Q6_K = 14, IQ2_XXS = 16, IQ4_NL = 20,
       MXFP4 = 39 };

static struct ggml_ref R;
static uint64_t seed;
static char cmd[16384];
static int n_compared;

struct model {
	const char *label;
	char arg[PATH_MAX];        /* what is passed to the tool */
	uint32_t n_shards;
	char (*paths)[PATH_MAX];   /* every shard */
};

static char *read_all(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	if (buf)
		buf[got] = '\0';
	*len = got;
	return buf;
}

/* Runs the command (stderr into the captured output), checks the exit code,
 * that the output holds `want` and, when asked, is one line. */
static void expect(const char *args, int want_rc, const char *want,
		   bool one_line)
{
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path("moestream"),
		 args);
	int rc = t_run(cmd, &out, 1 << 16);
	printf("$ %s -> exit %d\n%s", cmd, rc, out ? out : "");
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", cmd, rc, want_rc);
	if (want)
		T_CHECK(out && strstr(out, want), "'%s': output lacks '%s'", cmd,
			want);
	if (one_line) {
		size_t nl = 0;
		for (const char *p = out; p && *p; p++)
			nl += *p == '\n';
		T_CHECK(nl == 1, "'%s' printed %zu lines, expected one", cmd, nl);
	}
	free(out);
}

/* Where ggml's reader says expert `e` of blk.B.ffn_<proj>_exps.weight is. */
struct extent {
	const char *path;
	int type;
	int64_t ne0, ne1;
	uint64_t offset, row_bytes;
};

static bool ggml_extent(const struct model *m, uint32_t block, uint32_t e,
			const char *proj, struct extent *x)
{
	char name[128];
	snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.weight", block, proj);
	for (uint32_t s = 0; s < m->n_shards; s++) {
		struct gguf_init_params p = { .no_alloc = true, .ctx = NULL };
		struct gguf_context *g = R.gguf_init_from_file(m->paths[s], p);
		if (!g)
			t_fatal("ggml cannot read %s", m->paths[s]);
		int64_t id = R.gguf_find_tensor(g, name);
		if (id >= 0) {
			const int64_t *ne = R.gguf_get_tensor_ne(g, id);
			uint64_t slice = R.gguf_get_tensor_size(g, id) /
					 (uint64_t)ne[2];
			x->path = m->paths[s];
			x->type = R.gguf_get_tensor_type(g, id);
			x->ne0 = ne[0];
			x->ne1 = ne[1];
			x->row_bytes = R.ggml_row_size(x->type, ne[0]);
			x->offset = R.gguf_get_data_offset(g) +
				    R.gguf_get_tensor_offset(g, id) +
				    (uint64_t)e * slice;
			T_EQ_U64(slice, x->row_bytes * (uint64_t)ne[1]);
			R.gguf_free(g);
			return true;
		}
		R.gguf_free(g);
	}
	return false;
}

/* ggml's dequantisation of rows [r0, r0 + rows) of the extent. */
static float *ggml_rows(const struct extent *x, int64_t r0, int64_t rows)
{
	size_t nb = (size_t)(x->row_bytes * (uint64_t)rows);
	uint8_t *q = malloc(nb);
	float *y = malloc((size_t)(rows * x->ne0) * sizeof(float));
	int fd = open(x->path, O_RDONLY | O_CLOEXEC);
	if (!q || !y || fd < 0)
		t_fatal("cannot read %s", x->path);
	ssize_t got = pread(fd, q, nb, (off_t)(x->offset +
					      (uint64_t)r0 * x->row_bytes));
	close(fd);
	if (got != (ssize_t)nb)
		t_fatal("%s: short read", x->path);
	for (int64_t r = 0; r < rows; r++)
		if (ggml_ref_dequantize(&R, x->type, q + (uint64_t)r * x->row_bytes,
					y + r * x->ne0, x->ne0))
			t_fatal("ggml has no dequantizer for type %d", x->type);
	free(q);
	return y;
}

static uint32_t bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

/* Dumps (block, expert, proj) with -o and checks it against ggml; with
 * `sane`, also that the values are finite, small and not all zero. */
static void check(const struct model *m, bool fused, uint32_t block,
		  uint32_t e, const char *proj, bool sane)
{
	const char *dir = t_tmpdir();
	char out[PATH_MAX], args[8192];
	snprintf(out, sizeof(out), "%s/dump.f32", dir);
	unlink(out);
	snprintf(args, sizeof(args), "dump %s --layer %u --expert %u --proj %s "
		 "-o %s", m->arg, block, e, proj, out);
	expect(args, 0, "wrote", true);

	bool half = fused && (!strcmp(proj, "gate") || !strcmp(proj, "up"));
	struct extent x;
	if (!ggml_extent(m, block, e, half ? "gate_up" : proj, &x)) {
		T_CHECK(0, "%s: ggml finds no blk.%u %s tensor", m->label, block,
			proj);
		return;
	}
	int64_t rows = half ? x.ne1 / 2 : x.ne1;
	int64_t r0 = half && !strcmp(proj, "up") ? rows : 0;
	float *want = ggml_rows(&x, r0, rows);
	size_t len = 0;
	float *got = (float *)read_all(out, &len);
	size_t n = (size_t)(rows * x.ne0);
	T_CHECK(got && len == n * sizeof(float),
		"%s blk.%u e%u %s: %zu bytes, expected %lld x %lld x 4 = %zu",
		m->label, block, e, proj, len, (long long)rows,
		(long long)x.ne0, n * sizeof(float));
	if (got && len == n * sizeof(float)) {
		n_compared++;
		if (memcmp(got, want, len)) {
			size_t i = 0;
			while (bits(got[i]) == bits(want[i]))
				i++;
			T_CHECK(0, "%s blk.%u e%u %s (%s): element %zu (row %zu, "
				"col %zu): dump %.9g (0x%08x), ggml %.9g "
				"(0x%08x); MS_SEED=%llu", m->label, block, e,
				proj, R.ggml_type_name(x.type), i,
				i / (size_t)x.ne0, i % (size_t)x.ne0,
				(double)got[i], bits(got[i]), (double)want[i],
				bits(want[i]), (unsigned long long)seed);
		}
		if (sane) {
			size_t nonzero = 0, bad = 0;
			for (size_t i = 0; i < n; i++) {
				nonzero += got[i] != 0;
				if (!isfinite(got[i]) || fabsf(got[i]) >= 10)
					if (bad++ == 0)
						T_CHECK(0, "%s blk.%u e%u %s: "
							"value %zu is %g",
							m->label, block, e, proj,
							i, (double)got[i]);
			}
			T_CHECK(nonzero > n / 2, "%s blk.%u e%u %s: only %zu of "
				"%zu values nonzero", m->label, block, e, proj,
				nonzero, n);
		}
	}
	free(want);
	free(got);
}

/* The same dump through stdout equals the -o one. */
static void check_stdout(const struct model *m, uint32_t block, uint32_t e,
			 const char *proj)
{
	const char *dir = t_tmpdir();
	char a[PATH_MAX], b[PATH_MAX], args[8192];
	snprintf(a, sizeof(a), "%s/a.f32", dir);
	snprintf(b, sizeof(b), "%s/b.f32", dir);
	snprintf(args, sizeof(args), "dump %s -l %u -e %u -p %s -o %s", m->arg,
		 block, e, proj, a);
	expect(args, 0, "wrote", true);
	snprintf(cmd, sizeof(cmd), "%s dump %s -l %u -e %u -p %s > %s",
		 t_build_path("moestream"), m->arg, block, e, proj, b);
	int rc = t_run(cmd, NULL, 0);
	T_CHECK(rc == 0, "'%s' exited %d", cmd, rc);
	size_t la = 0, lb = 0;
	char *x = read_all(a, &la), *y = read_all(b, &lb);
	T_CHECK(x && y && la == lb && la > 0 && !memcmp(x, y, la),
		"stdout dump (%zu bytes) differs from -o dump (%zu bytes)", lb,
		la);
	free(x);
	free(y);
}

/* stdout a terminal: exit 2, a message, and not one byte on the tty. */
static void check_tty(const struct model *m)
{
	const char *dir = t_tmpdir();
	char errpath[PATH_MAX];
	snprintf(errpath, sizeof(errpath), "%s/tty.err", dir);
	int mfd = posix_openpt(O_RDWR | O_NOCTTY);
	if (mfd < 0 || grantpt(mfd) || unlockpt(mfd) || !ptsname(mfd)) {
		printf("no pseudo-terminal here (%s): tty refusal not tested\n",
		       strerror(errno));
		if (mfd >= 0)
			close(mfd);
		return;
	}
	char slave[PATH_MAX];
	snprintf(slave, sizeof(slave), "%s", ptsname(mfd));
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int s = open(slave, O_RDWR | O_NOCTTY);
		int e = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (s < 0 || e < 0 || dup2(s, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		execl(t_build_path("moestream"), "moestream", "dump", m->arg,
		      "--layer", "1", "--expert", "0", "--proj", "gate",
		      (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	fcntl(mfd, F_SETFL, O_NONBLOCK);
	char junk[64];
	ssize_t n = read(mfd, junk, sizeof(junk));
	close(mfd);
	size_t el = 0;
	char *err = read_all(errpath, &el);
	printf("$ moestream dump %s --layer 1 --expert 0 --proj gate  (stdout "
	       "a pty) -> exit %d\n%s", m->arg, rc, err ? err : "");
	T_CHECK(rc == 2, "dump to a terminal exited %d, expected 2", rc);
	T_CHECK(err && strstr(err, "terminal"), "no word of the terminal: '%s'",
		err ? err : "");
	T_CHECK(n <= 0, "dump wrote %zd bytes to the terminal", n);
	free(err);
}

static void errors(const struct model *tiny, const struct model *fused)
{
	const char *d = t_tmpdir();
	char a[8192];
	const char *t = tiny->arg;

	snprintf(a, sizeof(a), "dump %s --layer 6 --expert 0 --proj gate -o %s/x",
		 t, d);
	expect(a, 1, "layer 6 out of range", true);
	snprintf(a, sizeof(a), "dump %s --layer 4000000000 -e 0 -p up -o %s/x",
		 t, d);
	expect(a, 1, "out of range", true);
	snprintf(a, sizeof(a), "dump %s --layer 0 --expert 0 --proj gate -o %s/x",
		 t, d);
	expect(a, 1, "dense layer", true);
	snprintf(a, sizeof(a), "dump %s --layer 1 --expert 16 --proj down -o "
		 "%s/x", t, d);
	expect(a, 1, "expert 16 out of range", true);
	snprintf(a, sizeof(a), "dump %s --layer 1 --expert 0 --proj gate_up -o "
		 "%s/x", t, d);
	expect(a, 1, "no fused gate_up", true);
	snprintf(a, sizeof(a), "dump %s --layer 1 --expert 0 --proj down -o %s",
		 t, t);
	expect(a, 1, "the model itself", true);
	snprintf(a, sizeof(a), "dump %s --layer 1 --expert 0 --proj down -o "
		 "%s/no/such/dir/x", t, d);
	expect(a, 1, "No such file", true);
	struct stat st;
	T_CHECK(!stat(t, &st) && st.st_size > (1 << 20),
		"the model was damaged by -o");

	/* Fused model, block 3: down is IQ2_XXS. */
	snprintf(a, sizeof(a), "dump %s -l 3 -e 1 -p down -o %s/x", fused->arg, d);
	expect(a, 1, "iq2_xxs", true);
	snprintf(a, sizeof(a), "%s/x", d);
	T_CHECK(access(a, F_OK) != 0, "a refused dump left %s behind", a);

	/* A model cut short: whatever layer the cut lands in, one line. */
	char cut[PATH_MAX];
	snprintf(cut, sizeof(cut), "%s/cut.gguf", d);
	size_t len = 0;
	char *bytes = read_all(t, &len);
	if (!bytes || t_write_file(cut, bytes, len / 2))
		t_fatal("cannot write %s", cut);
	free(bytes);
	snprintf(a, sizeof(a), "dump %s -l 4 -e 15 -p down -o %s/x", cut, d);
	expect(a, 1, NULL, true);

	/* Usage: exit 2. */
	snprintf(a, sizeof(a), "dump %s -l 1 -e 0 -p sideways -o %s/x", t, d);
	expect(a, 2, "--proj 'sideways'", false);
	snprintf(a, sizeof(a), "dump %s -l 1 -p up -o %s/x", t, d);
	expect(a, 2, "--expert is required", false);
	snprintf(a, sizeof(a), "dump %s -l one -e 0 -p up -o %s/x", t, d);
	expect(a, 2, "--layer 'one'", false);
	snprintf(a, sizeof(a), "dump %s -l -1 -e 0 -p up -o %s/x", t, d);
	expect(a, 2, "--layer '-1'", false);
	snprintf(a, sizeof(a), "dump -l 1 -e 0 -p up -o %s/x", d);
	expect(a, 2, "no MODEL", false);
	snprintf(a, sizeof(a), "dump %s %s -l 1 -e 0 -p up", t, t);
	expect(a, 2, "one MODEL at a time", false);
	expect("dump --bogus", 2, "usage", false);
	expect("dump --help", 0, "--proj", false);
	check_tty(tiny);
}

int main(void)
{
	ggml_ref_load_or_fail(&R);
	seed = t_seed();
	uint64_t rng = seed;
	const char *dir = t_tmpdir();

	/* tiny: the demo model, written by our own mkmodel. */
	char tiny_path[1][PATH_MAX];
	struct model tiny = { .label = "tiny", .n_shards = 1,
			      .paths = tiny_path };
	snprintf(tiny.arg, sizeof(tiny.arg), "%s/tiny.gguf", dir);
	snprintf(tiny_path[0], sizeof(tiny_path[0]), "%s", tiny.arg);
	char args[PATH_MAX + 64];
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", tiny.arg);
	expect(args, 0, "wrote", false);

	/* fused: ggml writes it, 3 shards, a different type mix per block. */
	static const int fused_types[5][3] = {
		{ F32, F32, F32 },           /* dense */
		{ MXFP4, MXFP4, Q8_0 },
		{ Q4_K, Q4_K, Q6_K },
		{ IQ4_NL, IQ4_NL, IQ2_XXS },
		{ Q8_0, Q8_0, MXFP4 },
	};
	struct ggml_ref_moe fm = {
		.arch = "glm4moe", .n_block = 5, .n_expert = 8,
		.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		.n_ff_dense = 256, .n_vocab = 256, .n_leading_dense = 1,
		.fused = true, .probs_bias = true,
		.type = { Q8_0, Q8_0, Q8_0 }, .block_type = fused_types,
		.resident_type = Q8_0, .n_shards = 3, .rng = &rng,
	};
	char fused_paths[3][PATH_MAX];
	struct model fused = { .label = "fused", .n_shards = 3,
			       .paths = fused_paths };
	char base[PATH_MAX];
	snprintf(base, sizeof(base), "%s/fused", dir);
	if (ggml_ref_write_moe(&R, &fm, base) != 0)
		t_fatal("ggml could not write the fused model");
	for (uint32_t s = 0; s < 3; s++)
		ggml_ref_shard_path(fused_paths[s], sizeof(fused_paths[s]), base,
				    s, 3);
	/* Any shard finds the others; start from the middle one. */
	snprintf(fused.arg, sizeof(fused.arg), "%s", fused_paths[1]);

	/* tiny: MoE blocks 1-5 (5 is NextN), experts 0..15: the first and
	 * last expert of the first layer, a random one in three layers. */
	static const char *const projs[] = { "gate", "up", "down" };
	const uint32_t blocks[] = { 1, 1, 1, 3, 5 };
	for (size_t b = 0; b < 5; b++) {
		uint32_t e = b == 0 ? 0 : b == 1 ? 15
						 : (uint32_t)(t_rand(&rng) % 16);
		for (size_t p = 0; p < 3; p++)
			check(&tiny, false, blocks[b], e, projs[p], true);
	}
	check_stdout(&tiny, 2, 5, "down");

	/* fused: every block's halves and whole, down where dequantisable. */
	for (uint32_t b = 1; b < 5; b++) {
		uint32_t e = (uint32_t)(t_rand(&rng) % 8);
		check(&fused, true, b, e, "gate", false);
		check(&fused, true, b, e, "up", false);
		check(&fused, true, b, e, "gate_up", false);
		if (b != 3)
			check(&fused, true, b, e, "down", false);
	}
	check(&fused, true, 4, 7, "up", false);
	check_stdout(&fused, 2, 3, "up");

	errors(&tiny, &fused);
	printf("%d dumps compared bit for bit with ggml's dequantisation\n",
	       n_compared);
	T_CHECK(n_compared == 15 + 4 * 3 + 3 + 1, "compared %d dumps",
		n_compared);
	return t_done();
}
