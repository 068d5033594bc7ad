/*
 * t_kernel_cli - `moestream route`, `moestream ffn` and `moestream bench
 * kernels` as a user meets them, on `moestream mkmodel --preset tiny`
 * (glm4moe, 16 experts, 4 used, sigmoid gating with exp_probs_b, norm,
 * scale 2.5, Q2_K/Q2_K/Q3_K experts):
 *
 * - route prints what the library computes (bit for bit) and what a float64
 *   computation written here from the tensors selects;
 * - ffn writes what the library computes on the expert's extents (bit for
 *   bit, every path, any thread count, -o or stdout), and that is within
 *   1e-5 of a float64 FFN over the weights read by tensor name;
 * - every error is one line with the right exit code: wrong input sizes,
 *   out-of-range layer and expert, a dense layer, a dense model, a type
 *   without a kernel (1), bad usage (2), --device gpu without a GPU or CUDA
 *   (3);
 * - where a GPU is present (or emulated: tests/cuda-emu), ffn --device gpu
 *   is within 1e-5 of the float64 FFN too, and says it ran on the gpu;
 * - bench kernels --json gives a ratio per type and path, and either a GPU
 *   column (the same ratios, to the GPU's copy bandwidth) or the reason
 *   there is none.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ggml_ref.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

static char cmd[16384];
static const char *dir;
static uint64_t rng;
static bool have_gpu; /* ms_gpu_list found one (real or emulated) */

/* Runs "moestream ARGS 2>&1" (or with stderr dropped when !with_err),
 * checks the exit code, that the output holds `want` and, for errors, is
 * one line. Returns the output (free()). */
static char *expect(const char *args, int want_rc, const char *want,
		    bool one_line)
{
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path("moestream"),
		 args);
	int rc = t_run(cmd, &out, 1 << 20);
	printf("$ moestream %s -> exit %d\n", args, rc);
	if (out && *out && (rc || want))
		printf("%.400s%s", out, strlen(out) > 400 ? "...\n" : "");
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", cmd, rc, want_rc);
	if (want)
		T_CHECK(out && strstr(out, want), "'%s' output lacks '%s'", cmd,
			want);
	if (one_line) {
		size_t nl = 0;
		for (const char *p = out; p && *p; p++)
			nl += *p == '\n';
		T_CHECK(nl == 1, "'%s' printed %zu lines, expected one", cmd,
			nl);
	}
	return out;
}

static float gauss(void)
{
	double s = 0;
	for (int i = 0; i < 4; i++)
		s += (double)(t_rand(&rng) >> 11) / 9007199254740992.0;
	return (float)((s - 2.0) * 1.7320508075688772);
}

static void write_f32(const char *path, const float *v, size_t n)
{
	if (t_write_file(path, v, n * sizeof(float)))
		t_fatal("cannot write %s", path);
}

static void *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	void *buf = malloc(n > 0 ? (size_t)n : 1);
	if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* The bytes of tensor `name` (or of its slice `slice` along ne[2] when
 * slice >= 0), read with pread: malloc'ed, or NULL when absent. */
static void *tensor_bytes(const struct ms_model *m, const char *name,
			  int64_t slice, const struct ms_gguf_tensor **info)
{
	uint32_t shard;
	uint64_t idx;
	if (ms_model_find_tensor(m, name, &shard, &idx))
		return NULL;
	const struct ms_gguf_tensor *t = &m->shards[shard]->tensors[idx];
	uint64_t size = t->size, off = t->file_offset;
	if (slice >= 0) {
		size /= (uint64_t)t->ne[2];
		off += (uint64_t)slice * size;
	}
	void *buf = malloc(size);
	if (!buf ||
	    pread(m->shards[shard]->fd, buf, size, (off_t)off) != (ssize_t)size)
		t_fatal("reading %s", name);
	if (info)
		*info = t;
	return buf;
}

/* ---- route ---------------------------------------------------------------------- */

static void check_route(const struct ms_model *m, uint32_t block,
			const char *x_path, const float *x)
{
	char name[96], args[8192];
	int64_t E = (int64_t)m->n_embd, X = m->n_expert;
	snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", block);
	float *W = tensor_bytes(m, name, -1, NULL);
	snprintf(name, sizeof(name), "blk.%u.exp_probs_b.bias", block);
	float *b = tensor_bytes(m, name, -1, NULL);
	T_CHECK(W && b, "blk.%u: router tensors missing", block);
	if (!W || !b)
		return;

	/* The library. */
	struct ms_router_params p;
	struct ms_err err = { 0 };
	T_CHECK(ms_router_params_from_model(m, &p, &err) == 0, "%s", err.msg);
	T_CHECK(p.gating == MS_GATING_SIGMOID && p.norm && p.scale == 2.5f &&
			p.n_used == 4 && p.n_expert == 16,
		"tiny's router: %s norm %d scale %g, %u of %u",
		ms_gating_name(p.gating), p.norm, (double)p.scale, p.n_used,
		p.n_expert);
	uint32_t ids[4];
	float wt[4];
	T_CHECK(ms_router_run(&p, MS_TYPE_F32, W, NULL, b, E, x, ids, wt, NULL,
			      &err) == 0,
		"%s", err.msg);

	/* float64 from the definition: sigmoid, + bias, top 4, norm, x 2.5. */
	double prob[64], score[64];
	uint32_t rid[4];
	for (int64_t e = 0; e < X; e++) {
		double s = 0;
		for (int64_t i = 0; i < E; i++)
			s += (double)W[e * E + i] * x[i];
		prob[e] = 1 / (1 + exp(-s));
		score[e] = prob[e] + b[e];
	}
	double sum = 0;
	for (int k = 0; k < 4; k++) {
		int64_t best = -1;
		for (int64_t e = 0; e < X; e++)
			if (score[e] > -1e300 &&
			    (best < 0 || score[e] > score[best]))
				best = e;
		rid[k] = (uint32_t)best;
		sum += prob[best];
		score[best] = -1e301;
	}

	/* The command. */
	snprintf(args, sizeof(args), "route %s/tiny.gguf --layer %u --in %s",
		 dir, block, x_path);
	char *out = expect(args, 0, NULL, false);
	char *save = NULL, *line = out ? strtok_r(out, "\n", &save) : NULL;
	double wsum = 0;
	for (int k = 0; k < 4; k++, line = strtok_r(NULL, "\n", &save)) {
		unsigned id;
		float w;
		if (!line || sscanf(line, "%u\t%g", &id, &w) != 2) {
			T_CHECK(0, "blk.%u: line %d of route's output is '%s'",
				block, k, line ? line : "(none)");
			break;
		}
		T_CHECK(id == ids[k] && w == wt[k],
			"blk.%u #%d: route printed "
			"%u %.9g, the library %u %.9g",
			block, k, id, (double)w, ids[k], (double)wt[k]);
		T_CHECK(id == rid[k],
			"blk.%u #%d: expert %u, float64 reference "
			"%u",
			block, k, id, rid[k]);
		double want = prob[rid[k]] / sum * 2.5;
		T_CHECK(fabs(w - want) <= 1e-6 * want,
			"blk.%u #%d: weight %.9g, "
			"float64 %.9g",
			block, k, (double)w, want);
		wsum += w;
	}
	T_CHECK(line == NULL, "blk.%u: route printed more than 4 lines", block);
	T_CHECK(fabs(wsum - 2.5) < 1e-5, "blk.%u: weights sum to %.7f, not 2.5",
		block, wsum);
	free(out);
	free(W);
	free(b);
}

/* ---- ffn -------------------------------------------------------------------------- */

/* y = down . (silu(gate . x) * (up . x)) in double, weights read by tensor
 * name (not through the expert map the command uses). */
static void ref_ffn(const struct ms_model *m, uint32_t block, uint32_t expert,
		    const float *x, int64_t B, double *y)
{
	const char *proj[3] = { "gate", "up", "down" };
	const struct ms_gguf_tensor *t[3];
	float *w[3];
	int64_t E = (int64_t)m->n_embd, F = (int64_t)m->n_ff_exp;
	for (int j = 0; j < 3; j++) {
		char name[96];
		snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.weight", block,
			 proj[j]);
		uint8_t *q = tensor_bytes(m, name, expert, &t[j]);
		if (!q)
			t_fatal("%s missing", name);
		int64_t in = t[j]->ne[0], out = t[j]->ne[1];
		uint64_t rs;
		ms_type_row_size(t[j]->type, in, &rs, NULL);
		w[j] = malloc(sizeof(float) * (size_t)(in * out));
		for (int64_t r = 0; r < out; r++)
			if (ms_dequant_row(t[j]->type, q + (uint64_t)r * rs,
					   w[j] + r * in, in))
				t_fatal("dequantising %s", name);
		free(q);
	}
	double *h = malloc(sizeof(double) * (size_t)F);
	for (int64_t b = 0; b < B; b++) {
		for (int64_t r = 0; r < F; r++) {
			double g = 0, u = 0;
			for (int64_t i = 0; i < E; i++) {
				g += (double)w[0][r * E + i] * x[b * E + i];
				u += (double)w[1][r * E + i] * x[b * E + i];
			}
			h[r] = g / (1 + exp(-g)) * u;
		}
		for (int64_t r = 0; r < E; r++) {
			double s = 0;
			for (int64_t i = 0; i < F; i++)
				s += (double)w[2][r * F + i] * h[i];
			y[b * E + r] = s;
		}
	}
	free(h);
	for (int j = 0; j < 3; j++)
		free(w[j]);
}

/* The library on the expert's extents. */
static void lib_ffn(const struct ms_model *m, uint32_t block, uint32_t expert,
		    const float *x, int64_t B, enum ms_ffn_path path, float *y)
{
	int32_t li = m->block_layer[block];
	const struct ms_moe_layer *L = &m->layers[li];
	const struct ms_extent *ext = ms_model_expert(m, (uint32_t)li, expert);
	struct ms_expert_view v = { .n_embd = (int64_t)m->n_embd,
				    .n_ff = (int64_t)m->n_ff_exp };
	void *mem[3] = { 0 };
	for (uint32_t j = 0; j < L->n_proj; j++) {
		mem[j] = malloc(ext[j].bytes);
		if (pread(m->shards[ext[j].shard]->fd, mem[j], ext[j].bytes,
			  (off_t)ext[j].offset) != (ssize_t)ext[j].bytes)
			t_fatal("reading an extent");
		int slot = L->proj[j] == MS_PROJ_GATE ? 0
			   : L->proj[j] == MS_PROJ_UP ? 1
						      : 2;
		v.type[slot] = ext[j].type;
		v.data[slot] = mem[j];
	}
	struct ms_ffn_opts o = { .path = path };
	struct ms_err err = { 0 };
	T_CHECK(ms_expert_ffn(&v, x, y, B, &o, &err) == 0, "library ffn: %s",
		err.msg);
	for (int j = 0; j < 3; j++)
		free(mem[j]);
}

static void check_ffn(const struct ms_model *m, uint32_t block, uint32_t expert,
		      const char *x_path, const float *x, int64_t B)
{
	int64_t E = (int64_t)m->n_embd;
	char args[8192], y_path[4096];
	float *lib = malloc(sizeof(float) * (size_t)(B * E));
	double *ref = malloc(sizeof(double) * (size_t)(B * E));
	ref_ffn(m, block, expert, x, B, ref);

	static const char *const paths[] = { "", " --path scalar",
					     " --path avx2 --threads 1",
					     " --device gpu" };
	for (int p = 0; p < 4; p++) {
		enum ms_ffn_path path =
			p == 1 ? MS_FFN_PATH_SCALAR : MS_FFN_PATH_AUTO;
		if (p == 2 && !ms_ffn_path_available(MS_FFN_PATH_AVX2))
			continue;
		if (p == 3 && !have_gpu)
			continue;
		if (p < 3)
			lib_ffn(m, block, expert, x, B, path, lib);
		snprintf(y_path, sizeof(y_path), "%s/y-%u-%u-%d.f32", dir,
			 block, expert, p);
		snprintf(
			args, sizeof(args),
			"ffn %s/tiny.gguf --layer %u --expert %u --in %s -o %s%s",
			dir, block, expert, x_path, y_path, paths[p]);
		free(expect(args, 0, p == 3 ? "gpu path" : "wrote", true));
		size_t len;
		float *y = read_file(y_path, &len);
		T_CHECK(y && len == sizeof(float) * (size_t)(B * E),
			"%s: %zu bytes", y_path, y ? len : 0);
		if (!y || len != sizeof(float) * (size_t)(B * E)) {
			free(y);
			continue;
		}
		/* the GPU's sums are in another order: only the bound */
		T_CHECK(p == 3 || !memcmp(y, lib, len),
			"blk.%u expert %u%s: the command "
			"and the library differ",
			block, expert, paths[p]);
		double num = 0, den = 0;
		for (int64_t i = 0; i < B * E; i++) {
			num += (y[i] - ref[i]) * (y[i] - ref[i]);
			den += ref[i] * ref[i];
		}
		double l2 = sqrt(num / den);
		printf("ffn blk.%u expert %u B=%lld%s: relative L2 %.2e against "
		       "float64\n",
		       block, expert, (long long)B, paths[p], l2);
		T_CHECK(l2 <= 1e-5, "blk.%u expert %u%s: relative L2 %.3e",
			block, expert, paths[p], l2);
		free(y);
	}
	/* stdout instead of -o: the same bytes */
	snprintf(y_path, sizeof(y_path), "%s/y-stdout.f32", dir);
	snprintf(cmd, sizeof(cmd),
		 "%s ffn %s/tiny.gguf --layer %u --expert %u "
		 "--in %s --threads 3 > %s",
		 t_build_path("moestream"), dir, block, expert, x_path, y_path);
	T_CHECK(t_run(cmd, NULL, 0) == 0, "'%s' failed", cmd);
	lib_ffn(m, block, expert, x, B, MS_FFN_PATH_AUTO, lib);
	size_t len;
	float *y = read_file(y_path, &len);
	T_CHECK(y && len == sizeof(float) * (size_t)(B * E) &&
			!memcmp(y, lib, len),
		"ffn to stdout differs from the library");
	free(y);
	free(lib);
	free(ref);
}

/* ---- models for the error cases ----------------------------------------------------- */

static void dense_kv(const struct ggml_ref *r, struct gguf_context *g, void *u)
{
	(void)u;
	r->gguf_set_val_str(g, "general.architecture", "llama");
	r->gguf_set_val_u32(g, "llama.block_count", 1);
	r->gguf_set_val_u32(g, "llama.embedding_length", 64);
}

static void write_models(struct ggml_ref *R)
{
	char path[4096];
	/* Experts in IQ2_XXS: a real type without a CPU kernel. */
	struct ggml_ref_moe m = { .arch = "glm4moe",
				  .n_block = 2,
				  .n_expert = 8,
				  .n_expert_used = 2,
				  .n_embd = 256,
				  .n_ff = 256,
				  .n_ff_dense = 256,
				  .n_vocab = 16,
				  .n_leading_dense = 1,
				  .probs_bias = true,
				  .type = { MS_TYPE_IQ2_XXS, MS_TYPE_IQ2_XXS,
					    MS_TYPE_IQ2_XXS },
				  .resident_type = 0 };
	snprintf(path, sizeof(path), "%s/iq2.gguf", dir);
	if (ggml_ref_write_moe(R, &m, path))
		t_fatal("writing %s", path);
	/* A dense model. */
	struct ggml_ref_tensor t = { .name = "token_embd.weight",
				     .type = 0,
				     .n_dims = 2,
				     .ne = { 64, 16, 1, 1 } };
	snprintf(path, sizeof(path), "%s/dense.gguf", dir);
	struct ggml_ref_file f = {
		.path = path, .set_kv = dense_kv, .tensors = &t, .n_tensors = 1
	};
	if (ggml_ref_write(R, &f))
		t_fatal("writing %s", path);
}

static void check_errors(const char *x1, const char *x8)
{
	char args[8192], p[4096];
	const char *t = "tiny.gguf";
	/* wrong input sizes */
	snprintf(p, sizeof(p), "%s/x100.f32", dir);
	if (t_write_file(p,
			 "0123456789012345678901234567890123456789"
			 "0123456789012345678901234567890123456789"
			 "01234567890123456789",
			 100))
		t_fatal("write");
	snprintf(args, sizeof(args), "route %s/%s --layer 1 --in %s", dir, t,
		 x8);
	free(expect(args, 1, "n_embd = 512", true));
	snprintf(args, sizeof(args), "route %s/%s --layer 1 --in %s", dir, t,
		 p);
	free(expect(args, 1, "x100.f32", true));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s -o %s/y", dir,
		 t, p, dir);
	free(expect(args, 1, "not a whole number of hidden states", true));
	snprintf(p, sizeof(p), "%s/empty.f32", dir);
	if (t_write_file(p, "", 0))
		t_fatal("write");
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s -o %s/y", dir,
		 t, p, dir);
	free(expect(args, 1, "0 bytes", true));
	snprintf(args, sizeof(args),
		 "ffn %s/%s -l 1 -e 0 --in %s/nope.f32 -o "
		 "%s/y",
		 dir, t, dir, dir);
	free(expect(args, 1, "No such file", true));
	float nan_x[512] = { 0 };
	nan_x[7] = NAN;
	snprintf(p, sizeof(p), "%s/nan.f32", dir);
	write_f32(p, nan_x, 512);
	snprintf(args, sizeof(args), "route %s/%s --layer 1 --in %s", dir, t,
		 p);
	free(expect(args, 1, "value 7 is nan", true));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s -o %s/y", dir,
		 t, p, dir);
	free(expect(args, 1, "value 7", true));

	/* out-of-range layer and expert, dense layer, dense model */
	snprintf(args, sizeof(args), "route %s/%s --layer 6 --in %s", dir, t,
		 x1);
	free(expect(args, 1, "layer 6 out of range", true));
	snprintf(args, sizeof(args), "route %s/%s --layer 0 --in %s", dir, t,
		 x1);
	free(expect(args, 1, "blk.0 is a dense layer", true));
	snprintf(args, sizeof(args), "ffn %s/%s -l 0 -e 0 --in %s -o %s/y", dir,
		 t, x1, dir);
	free(expect(args, 1, "blk.0 is a dense layer", true));
	snprintf(args, sizeof(args), "ffn %s/%s -l 7 -e 0 --in %s -o %s/y", dir,
		 t, x1, dir);
	free(expect(args, 1, "layer 7 out of range", true));
	snprintf(args, sizeof(args), "ffn %s/%s -l 2 -e 16 --in %s -o %s/y",
		 dir, t, x1, dir);
	free(expect(args, 1, "expert 16 out of range", true));
	snprintf(args, sizeof(args), "route %s/dense.gguf --layer 0 --in %s",
		 dir, x1);
	free(expect(args, 1, "not a Mixture-of-Experts model", true));
	snprintf(args, sizeof(args),
		 "ffn %s/dense.gguf -l 0 -e 0 --in %s -o %s/y", dir, x1, dir);
	free(expect(args, 1, "not a Mixture-of-Experts model", true));

	/* a type without a kernel; its router (f32) still routes */
	float x256[256];
	for (int i = 0; i < 256; i++)
		x256[i] = gauss();
	snprintf(p, sizeof(p), "%s/x256.f32", dir);
	write_f32(p, x256, 256);
	snprintf(args, sizeof(args),
		 "ffn %s/iq2.gguf -l 1 -e 3 --in %s -o %s/y", dir, p, dir);
	free(expect(args, 1, "iq2_xxs: no CPU kernel", true));
	snprintf(args, sizeof(args), "route %s/iq2.gguf -l 1 --in %s", dir, p);
	free(expect(args, 0, "0\t", false)); /* all-zero router: ties -> 0, 1 */

	/* bad usage: 2 */
	snprintf(args, sizeof(args), "route %s/%s --in %s", dir, t, x1);
	free(expect(args, 2, "--layer is required", false));
	free(expect("route", 2, "no MODEL", false));
	snprintf(args, sizeof(args), "route %s/%s --layer x1 --in %s", dir, t,
		 x1);
	free(expect(args, 2, "not a whole number", false));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 --in %s", dir, t, x1);
	free(expect(args, 2, "--expert is required", false));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s --device tpu",
		 dir, t, x1);
	free(expect(args, 2, "not cpu or gpu", false));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s --threads -1",
		 dir, t, x1);
	free(expect(args, 2, "not a whole number", false));
	snprintf(args, sizeof(args), "ffn %s/%s -l 1 -e 0 --in %s --path fast",
		 dir, t, x1);
	free(expect(args, 2, "not auto, scalar or avx2", false));
	free(expect("ffn --help", 0, "silu", false));
	free(expect("route --help", 0, "expert<TAB>weight", false));
	free(expect("bench", 2, "which benchmark", false));
	free(expect("bench kernels --types q9_K", 2, "q9_K", false));
	free(expect("bench kernels --help", 0, "ratio", false));

	/* --device gpu without a GPU: 3, saying why in one line (the
	 * runtime's reason, or "built without CUDA"); with one, a type
	 * without a GPU kernel is 1 as on the CPU */
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	int ng = ms_gpu_list(g, MS_GPU_MAX, &err);
	snprintf(args, sizeof(args),
		 "ffn %s/%s -l 1 -e 0 --in %s -o %s/y "
		 "--device gpu",
		 dir, t, x1, dir);
	if (ng < 0) {
		free(expect(args, 3, err.msg, true));
		free(expect(args, 3, "--device gpu", true));
		if (!ms_gpu_built())
			free(expect(args, 3, "built without CUDA", true));
	} else {
		snprintf(args, sizeof(args),
			 "ffn %s/iq2.gguf -l 1 -e 3 --in %s -o %s/y --device "
			 "gpu",
			 dir, p, dir);
		free(expect(args, 1, "iq2_xxs: no GPU kernel", true));
	}
}

/* ---- a fused gate_up model (qwen3moe: softmax, norm), filled by ggml ------------- */

/* Overwrites tensor `name` with ggml's quantisation of random values. */
static void fill_tensor(struct ggml_ref *R, const struct ms_model *m,
			const char *path, const char *name)
{
	uint32_t shard;
	uint64_t idx;
	if (ms_model_find_tensor(m, name, &shard, &idx))
		t_fatal("%s has no %s", path, name);
	const struct ms_gguf_tensor *t = &m->shards[shard]->tensors[idx];
	int64_t ne0 = t->ne[0], rows = t->ne[1] * t->ne[2];
	float *f = malloc(sizeof(float) * (size_t)(ne0 * rows));
	uint8_t *q = malloc(t->size);
	if (!f || !q)
		t_fatal("out of memory");
	for (int64_t i = 0; i < ne0 * rows; i++)
		f[i] = gauss() / sqrtf((float)ne0);
	size_t n;
	if (t->type == MS_TYPE_F32) {
		memcpy(q, f, t->size);
		n = t->size;
	} else {
		R->ggml_quantize_init((int)t->type);
		n = R->ggml_quantize_chunk((int)t->type, f, q, 0, rows, ne0,
					   NULL);
	}
	int fd = open(path, O_WRONLY);
	if (n != t->size || fd < 0 ||
	    pwrite(fd, q, t->size, (off_t)t->file_offset) != (ssize_t)t->size)
		t_fatal("filling %s of %s", name, path);
	close(fd);
	free(f);
	free(q);
}

static void check_fused(struct ggml_ref *R)
{
	char path[4096], args[8192], yp[4096], xp[4096];
	struct ggml_ref_moe g = { .arch = "qwen3moe",
				  .n_block = 2,
				  .n_expert = 4,
				  .n_expert_used = 2,
				  .n_embd = 256,
				  .n_ff = 256,
				  .n_ff_dense = 256,
				  .n_vocab = 16,
				  .fused = true,
				  .type = { MS_TYPE_Q8_0, MS_TYPE_Q8_0,
					    MS_TYPE_Q4_K },
				  .resident_type = 0 };
	snprintf(path, sizeof(path), "%s/fused.gguf", dir);
	if (ggml_ref_write_moe(R, &g, path))
		t_fatal("writing %s", path);
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err))
		t_fatal("%s", err.msg);
	fill_tensor(R, m, path, "blk.1.ffn_gate_inp.weight");
	fill_tensor(R, m, path, "blk.1.ffn_gate_up_exps.weight");
	fill_tensor(R, m, path, "blk.1.ffn_down_exps.weight");
	T_CHECK(m->layers[1].fused, "blk.1 of %s is not fused", path);

	enum { E = 256, F = 256, B = 2 };
	float x[B * E];
	for (int i = 0; i < B * E; i++)
		x[i] = gauss();
	snprintf(xp, sizeof(xp), "%s/xf.f32", dir);
	write_f32(xp, x, B * E);

	/* ffn: against float64 over the gate_up slice read by name, gate rows
	 * first */
	const struct ms_gguf_tensor *tgu, *tdn;
	uint8_t *gu = tensor_bytes(m, "blk.1.ffn_gate_up_exps.weight", 2, &tgu);
	uint8_t *dn = tensor_bytes(m, "blk.1.ffn_down_exps.weight", 2, &tdn);
	uint64_t rgu, rdn;
	ms_type_row_size(tgu->type, E, &rgu, NULL);
	ms_type_row_size(tdn->type, F, &rdn, NULL);
	float *wgu = malloc(sizeof(float) * 2 * F * E);
	float *wdn = malloc(sizeof(float) * E * F);
	for (int r = 0; r < 2 * F; r++)
		ms_dequant_row(tgu->type, gu + r * rgu, wgu + r * E, E);
	for (int r = 0; r < E; r++)
		ms_dequant_row(tdn->type, dn + r * rdn, wdn + r * F, F);
	double ref[B * E], h[F];
	for (int b = 0; b < B; b++) {
		for (int r = 0; r < F; r++) {
			double gs = 0, us = 0;
			for (int i = 0; i < E; i++) {
				gs += (double)wgu[r * E + i] * x[b * E + i];
				us += (double)wgu[(F + r) * E + i] *
				      x[b * E + i];
			}
			h[r] = gs / (1 + exp(-gs)) * us;
		}
		for (int r = 0; r < E; r++) {
			double sum = 0;
			for (int i = 0; i < F; i++)
				sum += (double)wdn[r * F + i] * h[i];
			ref[b * E + r] = sum;
		}
	}
	for (int p = 0; p < 2; p++) {
		snprintf(yp, sizeof(yp), "%s/yf%d.f32", dir, p);
		snprintf(args, sizeof(args),
			 "ffn %s -l 1 -e 2 --in %s -o %s --path %s", path, xp,
			 yp, p ? "scalar" : "auto");
		free(expect(args, 0, "wrote", true));
		size_t len;
		float *y = read_file(yp, &len);
		T_CHECK(y && len == sizeof(float) * B * E, "%s: %zu bytes", yp,
			y ? len : 0);
		if (y && len == sizeof(float) * B * E) {
			double num = 0, den = 0;
			for (int i = 0; i < B * E; i++) {
				num += (y[i] - ref[i]) * (y[i] - ref[i]);
				den += ref[i] * ref[i];
			}
			printf("fused gate_up (q8_0) + down (q4_K), %s: relative "
			       "L2 %.2e against float64\n",
			       p ? "scalar" : "auto", sqrt(num / den));
			T_CHECK(sqrt(num / den) <= 1e-5,
				"fused: relative L2 %.3e", sqrt(num / den));
		}
		free(y);
	}

	/* route: qwen3moe is softmax + norm whatever the keys say */
	float *W = tensor_bytes(m, "blk.1.ffn_gate_inp.weight", -1, NULL);
	double lg[4], pr[4], mx = -1e300, sum = 0;
	for (int e = 0; e < 4; e++) {
		lg[e] = 0;
		for (int i = 0; i < E; i++)
			lg[e] += (double)W[e * E + i] * x[i];
		mx = fmax(mx, lg[e]);
	}
	for (int e = 0; e < 4; e++)
		sum += pr[e] = exp(lg[e] - mx);
	int b0 = 0, b1 = -1;
	for (int e = 1; e < 4; e++)
		if (pr[e] > pr[b0])
			b0 = e;
	for (int e = 0; e < 4; e++)
		if (e != b0 && (b1 < 0 || pr[e] > pr[b1]))
			b1 = e;
	snprintf(xp, sizeof(xp), "%s/xf1.f32", dir);
	write_f32(xp, x, E);
	snprintf(args, sizeof(args), "route %s -l 1 --in %s", path, xp);
	char *out = expect(args, 0, NULL, false);
	unsigned i0 = 99, i1 = 99;
	float w0 = 0, w1 = 0;
	T_CHECK(out && sscanf(out, "%u\t%g\n%u\t%g", &i0, &w0, &i1, &w1) == 4,
		"route output '%s'", out ? out : "");
	double want0 = pr[b0] / (pr[b0] + pr[b1]);
	T_CHECK(i0 == (unsigned)b0 && i1 == (unsigned)b1 &&
			fabs(w0 - want0) < 1e-6 && fabs(w0 + w1 - 1) < 1e-6,
		"qwen3moe route %u %g, %u %g; float64 %d %g, %d", i0,
		(double)w0, i1, (double)w1, b0, want0, b1);
	free(out);
	free(W);
	free(gu);
	free(dn);
	free(wgu);
	free(wdn);
	ms_model_free(m);

	/* gpt-oss: biased experts are not this FFN */
	struct ggml_ref_moe o = g;
	o.arch = "gpt-oss";
	o.expert_bias = true;
	o.type[0] = o.type[1] = o.type[2] = MS_TYPE_MXFP4;
	snprintf(path, sizeof(path), "%s/gpt-oss.gguf", dir);
	if (ggml_ref_write_moe(R, &o, path))
		t_fatal("writing %s", path);
	snprintf(args, sizeof(args), "ffn %s -l 1 -e 0 --in %s -o %s", path, xp,
		 yp);
	free(expect(args, 1, "expert biases", true));
}

static void check_bench(void)
{
	char *out =
		expect("bench kernels --json --threads 1 --time 0.02 --mem 48M "
		       "--types q8_0,q4_K",
		       0, NULL, false);
	cJSON *o = out ? cJSON_Parse(out) : NULL;
	T_CHECK(o != NULL, "bench kernels --json is not JSON");
	if (o) {
		cJSON *mem = cJSON_GetObjectItem(o, "memory");
		double rd = cJSON_GetNumberValue(
			cJSON_GetObjectItem(mem, "read_gbps"));
		T_CHECK(rd > 0, "read bandwidth %g", rd);
		cJSON *types = cJSON_GetObjectItem(o, "types");
		T_CHECK(cJSON_GetArraySize(types) == 2, "%d types",
			cJSON_GetArraySize(types));
		/* the GPU column: bench gpu's report, or null and why */
		cJSON *gpu = cJSON_GetObjectItem(o, "gpu");
		double copy = cJSON_GetNumberValue(
			cJSON_GetObjectItem(gpu, "copy_gbps"));
		const char *absent = cJSON_GetStringValue(
			cJSON_GetObjectItem(o, "gpu_absent"));
		T_CHECK(cJSON_IsNull(gpu) ? absent && *absent
					  : cJSON_IsObject(gpu) && copy > 0,
			"bench kernels: gpu %s, copy %g, absent '%s'",
			cJSON_IsNull(gpu) ? "null" : "present", copy,
			absent ? absent : "(none)");
		printf("bench kernels: %s\n",
		       cJSON_IsNull(gpu) ? absent : "a GPU column");
		/* the 8-bit path: q4_K only (q8_0 has no 8-bit kernel), one
		 * input and four, and their quotient */
		cJSON *qa = cJSON_GetObjectItem(o, "q8_batch");
		cJSON *q0 = cJSON_GetArrayItem(qa, 0);
		double n1 = cJSON_GetNumberValue(cJSON_GetObjectItem(q0, "ns_per_block_1")),
		       n4 = cJSON_GetNumberValue(cJSON_GetObjectItem(q0, "ns_per_block_4")),
		       c4 = cJSON_GetNumberValue(cJSON_GetObjectItem(q0, "cost_4_over_1"));
		const char *qn = cJSON_GetStringValue(cJSON_GetObjectItem(q0, "type"));
		T_CHECK(cJSON_GetArraySize(qa) == 1 && qn && !strcmp(qn, "q4_K") &&
				n1 > 0 && n4 > 0 && fabs(c4 - n4 / n1) < 1e-9 * c4,
			"bench kernels q8_batch: %d entries, %s: %g, %g ns, 4/1 %g",
			cJSON_GetArraySize(qa), qn ? qn : "(none)", n1, n4, c4);
		cJSON *t;
		cJSON_ArrayForEach(t, types)
		{
			const char *name = cJSON_GetStringValue(
				cJSON_GetObjectItem(t, "type"));
			/* each type's ratio is to the bandwidth measured
			 * around it */
			rd = cJSON_GetNumberValue(
				cJSON_GetObjectItem(t, "read_gbps"));
			T_CHECK(rd > 0, "%s: read bandwidth %g", name, rd);
			for (int p = MS_FFN_PATH_SCALAR; p < MS_FFN_PATH_COUNT;
			     p++) {
				cJSON *x = cJSON_GetObjectItem(
					t,
					ms_ffn_path_name((enum ms_ffn_path)p));
				if (!ms_ffn_path_available(
					    (enum ms_ffn_path)p)) {
					T_CHECK(cJSON_IsNull(x),
						"%s: %s not null", name,
						ms_ffn_path_name(
							(enum ms_ffn_path)p));
					continue;
				}
				double r = cJSON_GetNumberValue(
					cJSON_GetObjectItem(x, "ratio"));
				double gb = cJSON_GetNumberValue(
					cJSON_GetObjectItem(x, "gbps"));
				T_CHECK(r > 0 && fabs(r - gb / rd) < 1e-9 * r,
					"%s %s: ratio %g, gbps %g, read %g",
					name,
					ms_ffn_path_name((enum ms_ffn_path)p),
					r, gb, rd);
			}
			/* q8_0 and q4_K have fused GPU kernels: a figure
			 * wherever there is a GPU column */
			cJSON *x = cJSON_GetObjectItem(t, "gpu");
			if (cJSON_IsNull(gpu)) {
				T_CHECK(cJSON_IsNull(x), "%s: gpu not null",
					name);
			} else {
				double r = cJSON_GetNumberValue(
					cJSON_GetObjectItem(x, "ratio"));
				double gb = cJSON_GetNumberValue(
					cJSON_GetObjectItem(x, "gbps"));
				T_CHECK(r > 0 && fabs(r - gb / copy) < 1e-9 * r,
					"%s gpu: ratio %g, gbps %g, copy %g",
					name, r, gb, copy);
			}
		}
		cJSON_Delete(o);
	}
	free(out);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* lines whole among stderr's */
	struct ggml_ref R;
	ggml_ref_load_or_fail(&R);
	rng = t_seed();
	dir = t_tmpdir();
	{
		struct ms_gpu_info g[MS_GPU_MAX];
		struct ms_err e = { 0 };
		have_gpu = ms_gpu_list(g, MS_GPU_MAX, &e) > 0;
		printf("gpu: %s\n", have_gpu ? ms_gpu_build_info() : e.msg);
	}
	char args[8192], x1[4096], x8[4096], x3[4096];

	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s/tiny.gguf",
		 dir);
	free(expect(args, 0, "wrote", false));
	snprintf(args, sizeof(args), "%s/tiny.gguf", dir);
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, args, &err))
		t_fatal("%s", err.msg);
	write_models(&R);

	int64_t E = (int64_t)m->n_embd;
	float *x = malloc(sizeof(float) * (size_t)(8 * E));
	for (int64_t i = 0; i < 8 * E; i++)
		x[i] = gauss();
	snprintf(x1, sizeof(x1), "%s/x1.f32", dir);
	snprintf(x3, sizeof(x3), "%s/x3.f32", dir);
	snprintf(x8, sizeof(x8), "%s/x8.f32", dir);
	write_f32(x1, x, (size_t)E);
	write_f32(x3, x + E, (size_t)(3 * E));
	write_f32(x8, x, (size_t)(8 * E));

	/* route on every MoE block, NextN included (it has a router too) */
	for (uint32_t l = 0; l < m->n_layers; l++)
		check_route(m, m->layers[l].block, x1, x);

	check_ffn(m, 1, 0, x1, x, 1);
	check_ffn(m, 3, 15, x8, x, 8);
	check_ffn(m, 4, 7, x3, x + E, 3);

	check_errors(x1, x8);
	check_fused(&R);
	check_bench();
	ms_model_free(m);
	free(x);
	return t_done();
}
