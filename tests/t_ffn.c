/*
 * t_ffn - the CPU expert FFN against a float64 computation over weights that
 * ggml itself quantised (ggml_quantize_chunk) and dequantised
 * (dequantize_row_*): relative L2 error <= 1e-5 for every type, fused and
 * unfused layouts, B = 1, 3, 8, 64, the scalar reference and the AVX2 path.
 *
 * Also: the AVX2 dequantisers give ggml's floats bit for bit; the result is
 * the same bit for bit on 1, 3 and 4 threads and through a pool; fused
 * gate_up equals separate gate and up; bad views fail with the right errno.
 * Where the CPU lacks AVX2/FMA/F16C the AVX2 half is skipped with a note.
 * Each case prints its relative L2 error.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "ggml_ref.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

#define TOL 1e-5

static struct ggml_ref R;
static uint64_t rng;

/* Roughly normal: the sum of four uniforms, centred, unit variance. */
static float gauss(void)
{
	double s = 0;
	for (int i = 0; i < 4; i++)
		s += (double)(t_rand(&rng) >> 11) / 9007199254740992.0;
	return (float)((s - 2.0) * 1.7320508075688772);
}

/* One quantised matrix: rows x cols of `type`, and ggml's dequantisation. */
struct mat {
	uint32_t type;
	int64_t rows, cols;
	size_t row_bytes;
	uint8_t *q;
	float *f; /* ggml's dequantised values */
};

static void mat_make(struct mat *m, uint32_t type, int64_t rows, int64_t cols)
{
	m->type = type;
	m->rows = rows;
	m->cols = cols;
	m->row_bytes = R.ggml_row_size((int)type, cols);
	m->q = t_xmalloc(m->row_bytes * (size_t)rows);
	m->f = t_xmalloc(sizeof(float) * (size_t)(rows * cols));
	float *src = t_xmalloc(sizeof(float) * (size_t)(rows * cols));
	float sd = 1.0f / sqrtf((float)cols);
	for (int64_t i = 0; i < rows * cols; i++)
		src[i] = sd * gauss();
	R.ggml_quantize_init((int)type);
	size_t w = R.ggml_quantize_chunk((int)type, src, m->q, 0, rows, cols,
					 NULL);
	if (w != m->row_bytes * (size_t)rows)
		t_fatal("ggml_quantize_chunk(%s) wrote %zu bytes, expected %zu",
			ms_type_name(type), w, m->row_bytes * (size_t)rows);
	for (int64_t r = 0; r < rows; r++)
		if (ggml_ref_dequantize(&R, (int)type, m->q + r * m->row_bytes,
					m->f + r * cols, cols))
			t_fatal("ggml cannot dequantise %s",
				ms_type_name(type));
	free(src);
}

static void mat_free(struct mat *m)
{
	free(m->q);
	free(m->f);
}

/* Dot product in double, four partial sums (n % 4 == 0): float64 all the
 * way, and fast enough to be the reference for thousands of rows. */
static double dot_d(const float *w, const double *x, int64_t n)
{
	double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (int64_t i = 0; i < n; i += 4) {
		s0 += (double)w[i] * x[i];
		s1 += (double)w[i + 1] * x[i + 1];
		s2 += (double)w[i + 2] * x[i + 2];
		s3 += (double)w[i + 3] * x[i + 3];
	}
	return (s0 + s1) + (s2 + s3);
}

/* y = down . (silu(gate . x) * (up . x)), all in double. */
static void ref_ffn(const struct mat *g, const struct mat *u,
		    const struct mat *d, const float *x, int64_t B, double *y)
{
	int64_t E = g->cols, F = g->rows;
	double *h = t_xmalloc(sizeof(double) * (size_t)F);
	double *xd = t_xmalloc(sizeof(double) * (size_t)E);
	for (int64_t b = 0; b < B; b++) {
		for (int64_t i = 0; i < E; i++)
			xd[i] = x[b * E + i];
		for (int64_t r = 0; r < F; r++) {
			double sg = dot_d(g->f + r * E, xd, E);
			double su = dot_d(u->f + r * E, xd, E);
			h[r] = sg / (1.0 + exp(-sg)) * su;
		}
		for (int64_t r = 0; r < E; r++)
			y[b * E + r] = dot_d(d->f + r * F, h, F);
	}
	free(h);
	free(xd);
}

static double rel_l2(const float *y, const double *ref, int64_t n)
{
	double num = 0, den = 0;
	for (int64_t i = 0; i < n; i++) {
		double e = (double)y[i] - ref[i];
		num += e * e;
		den += ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- the dequantisers ------------------------------------------------------------ */

static const uint32_t all_types[] = {
	MS_TYPE_F32,  MS_TYPE_F16,    MS_TYPE_BF16,   MS_TYPE_Q4_0,
	MS_TYPE_Q4_1, MS_TYPE_Q5_0,   MS_TYPE_Q5_1,   MS_TYPE_Q8_0,
	MS_TYPE_Q2_K, MS_TYPE_Q3_K,   MS_TYPE_Q4_K,   MS_TYPE_Q5_K,
	MS_TYPE_Q6_K, MS_TYPE_IQ4_NL, MS_TYPE_IQ4_XS, MS_TYPE_MXFP4,
};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))

/* The hot types must have their own AVX2 dequantiser. */
static const uint32_t hot_types[] = { MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K,
				      MS_TYPE_Q6_K, MS_TYPE_Q8_0 };

/* The types the FFN is also run at B = 64 with. */
static const uint32_t b64_types[] = {
	MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K,  MS_TYPE_Q5_K,   MS_TYPE_Q6_K,
	MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_MXFP4, MS_TYPE_IQ4_NL, MS_TYPE_F16,
};

static void check_dequant(enum ms_ffn_path path)
{
	for (size_t t = 0; t < N_TYPES; t++) {
		uint32_t type = all_types[t];
		struct mat m;
		mat_make(&m, type, 16, 512);
		float *got = t_xmalloc(sizeof(float) * 512);
		int bad = 0;
		for (int64_t r = 0; r < m.rows; r++) {
			int rc = ms_ffn_dequant_row(
				path, type, m.q + r * m.row_bytes, got, 512);
			if (rc) {
				T_CHECK(0, "%s: ms_ffn_dequant_row(%s) = %d",
					ms_ffn_path_name(path),
					ms_type_name(type), rc);
				bad++;
				break;
			}
			if (memcmp(got, m.f + r * 512, 512 * sizeof(float))) {
				for (int i = 0; i < 512; i++)
					if (memcmp(&got[i], &m.f[r * 512 + i],
						   4)) {
						T_CHECK(0,
							"%s %s row %lld [%d]: "
							"%.9g, ggml %.9g",
							ms_ffn_path_name(path),
							ms_type_name(type),
							(long long)r, i,
							(double)got[i],
							(double)m.f[r * 512 +
								    i]);
						break;
					}
				bad++;
			}
		}
		printf("dequant %-6s %-7s %s%s\n", ms_ffn_path_name(path),
		       ms_type_name(type), bad ? "DIFFERS from ggml" : "= ggml",
		       ms_ffn_type_vectorised(type, path) ? " (vector kernel)"
							  : "");
		free(got);
		mat_free(&m);
	}
}

/* Random bytes, not just what ggml's quantiser writes: every scale pattern,
 * subnormal, infinite and NaN f16 scales included. The AVX2 dequantisers
 * must agree with the scalar reference bit for bit (NaN with NaN). */
static void check_dequant_random(void)
{
	enum { N = 2048 };
	float *a = t_xmalloc(sizeof(float) * N), *b = t_xmalloc(sizeof(float) * N);
	uint8_t *q = t_xmalloc(N * 4);
	for (size_t t = 0; t < N_TYPES; t++) {
		uint32_t type = all_types[t];
		int bad = 0;
		for (int rep = 0; rep < 8 && !bad; rep++) {
			for (int i = 0; i < N * 4; i++)
				q[i] = (uint8_t)t_rand(&rng);
			if (ms_ffn_dequant_row(MS_FFN_PATH_SCALAR, type, q, a,
					       N) ||
			    ms_ffn_dequant_row(MS_FFN_PATH_AVX2, type, q, b,
					       N)) {
				T_CHECK(0,
					"%s: dequantising random bytes failed",
					ms_type_name(type));
				break;
			}
			for (int i = 0; i < N; i++)
				if (memcmp(&a[i], &b[i], 4) &&
				    !(isnan(a[i]) && isnan(b[i]))) {
					T_CHECK(0,
						"random %s [%d]: avx2 %.9g, scalar "
						"%.9g",
						ms_type_name(type), i,
						(double)b[i], (double)a[i]);
					bad = 1;
					break;
				}
		}
		printf("dequant random bytes %-7s avx2 %s scalar\n",
		       ms_type_name(type), bad ? "DIFFERS from" : "=");
	}
	free(a);
	free(b);
	free(q);
}

/* ---- the FFN ------------------------------------------------------------------------ */

struct expert {
	struct mat gate, up, down;
	uint8_t *gate_up; /* fused: gate rows then up rows */
	int64_t E, F;
};

static void expert_make(struct expert *e, const uint32_t ty[3], int64_t E,
			int64_t F)
{
	e->E = E;
	e->F = F;
	mat_make(&e->gate, ty[0], F, E);
	mat_make(&e->up, ty[1], F, E);
	mat_make(&e->down, ty[2], E, F);
	e->gate_up = NULL;
	if (ty[0] == ty[1]) {
		size_t n = e->gate.row_bytes * (size_t)F;
		e->gate_up = t_xmalloc(2 * n);
		memcpy(e->gate_up, e->gate.q, n);
		memcpy(e->gate_up + n, e->up.q, n);
	}
}

static void expert_free(struct expert *e)
{
	mat_free(&e->gate);
	mat_free(&e->up);
	mat_free(&e->down);
	free(e->gate_up);
}

static struct ms_expert_view view_of(const struct expert *e, bool fused)
{
	struct ms_expert_view v = { .fused = fused,
				    .n_embd = e->E,
				    .n_ff = e->F };
	if (fused) {
		v.type[0] = e->gate.type;
		v.data[0] = e->gate_up;
		v.type[1] = e->down.type;
		v.data[1] = e->down.q;
	} else {
		v.type[0] = e->gate.type;
		v.type[1] = e->up.type;
		v.type[2] = e->down.type;
		v.data[0] = e->gate.q;
		v.data[1] = e->up.q;
		v.data[2] = e->down.q;
	}
	return v;
}

static double worst[MS_FFN_PATH_COUNT];

/* Runs one expert for every B, layout, path and thread count. */
/* Thread counts are compared for every B up to thread_B_max. */
static void check_expert(const uint32_t ty[3], int64_t E, int64_t F,
			 const int64_t *Bs, int nB, int64_t thread_B_max,
			 struct ms_ffn_pool *pool, bool avx2)
{
	struct expert e;
	expert_make(&e, ty, E, F);
	char name[64];
	snprintf(name, sizeof(name), "%s/%s/%s", ms_type_name(ty[0]),
		 ms_type_name(ty[1]), ms_type_name(ty[2]));
	for (int k = 0; k < nB; k++) {
		int64_t B = Bs[k];
		float *x = t_xmalloc(sizeof(float) * (size_t)(B * E));
		for (int64_t i = 0; i < B * E; i++)
			x[i] = gauss();
		double *ref = t_xmalloc(sizeof(double) * (size_t)(B * E));
		ref_ffn(&e.gate, &e.up, &e.down, x, B, ref);
		float *y = t_xmalloc(sizeof(float) * (size_t)(B * E));
		float *y1 = t_xmalloc(sizeof(float) * (size_t)(B * E));
		float *yu = t_xmalloc(sizeof(float) * (size_t)(B * E));

		for (int p = MS_FFN_PATH_SCALAR; p <= MS_FFN_PATH_AVX2; p++) {
			if (p == MS_FFN_PATH_AVX2 && !avx2)
				continue;
			for (int fused = 0; fused <= (e.gate_up != NULL);
			     fused++) {
				struct ms_expert_view v = view_of(&e, fused);
				struct ms_err err = { 0 };
				struct ms_ffn_opts o = {
					.n_threads = 1,
					.path = (enum ms_ffn_path)p
				};
				int rc = ms_expert_ffn(&v, x, y1, B, &o, &err);
				T_CHECK(rc == 0, "%s B=%lld: %s", name,
					(long long)B, err.msg);
				if (rc)
					continue;
				double l2 = rel_l2(y1, ref, B * E);
				printf("ffn %-6s %-20s %-7s E=%-4lld F=%-4lld B=%-3lld "
				       "rel L2 %.2e\n",
				       ms_ffn_path_name((enum ms_ffn_path)p),
				       name, fused ? "fused" : "unfused",
				       (long long)E, (long long)F, (long long)B,
				       l2);
				T_CHECK(l2 <= TOL,
					"%s %s %s B=%lld: relative L2 "
					"%.3e > %g",
					ms_ffn_path_name((enum ms_ffn_path)p),
					name, fused ? "fused" : "unfused",
					(long long)B, l2, TOL);
				if (l2 > worst[p])
					worst[p] = l2;
				if (!fused)
					memcpy(yu, y1,
					       sizeof(float) * (size_t)(B * E));
				else
					T_CHECK(!memcmp(yu, y1,
							sizeof(float) *
								(size_t)(B *
									 E)),
						"%s %s B=%lld: fused differs from "
						"unfused",
						ms_ffn_path_name(
							(enum ms_ffn_path)p),
						name, (long long)B);
				if (B > thread_B_max)
					continue;
				/* Other thread counts, and a pool: same bits. */
				int nts[] = { 3, 4 };
				for (int t = 0; t < 3; t++) {
					o.n_threads = t < 2 ? nts[t] : 0;
					o.pool = t == 2 ? pool : NULL;
					memset(y, 0xff,
					       sizeof(float) * (size_t)(B * E));
					rc = ms_expert_ffn(&v, x, y, B, &o,
							   &err);
					T_CHECK(rc == 0 &&
							!memcmp(y, y1,
								sizeof(float) *
									(size_t)(B *
										 E)),
						"%s %s %s B=%lld: %s%d threads differ "
						"from 1 (rc %d)",
						ms_ffn_path_name(
							(enum ms_ffn_path)p),
						name,
						fused ? "fused" : "unfused",
						(long long)B,
						t == 2 ? "a pool of " : "",
						t == 2 ? ms_ffn_pool_threads(
								 pool)
						       : nts[t],
						rc);
				}
			}
		}
		free(x);
		free(ref);
		free(y);
		free(y1);
		free(yu);
	}
	expert_free(&e);
}

static void check_errors(void)
{
	struct expert e;
	const uint32_t ty[3] = { MS_TYPE_Q8_0, MS_TYPE_Q8_0, MS_TYPE_Q8_0 };
	expert_make(&e, ty, 64, 64);
	float x[64], y[64];
	memset(x, 0, sizeof(x));
	struct ms_err err = { 0 };
	struct ms_expert_view v = view_of(&e, false);

	T_CHECK(ms_expert_ffn(&v, x, y, 0, NULL, &err) == -EINVAL,
		"0 tokens accepted");
	v.n_embd = 48; /* not a multiple of Q8_0's 32 */
	T_CHECK(ms_expert_ffn(&v, x, y, 1, NULL, &err) == -EINVAL,
		"n_embd 48 with Q8_0 accepted");
	printf("n_embd 48: %s\n", err.msg);
	v = view_of(&e, false);
	v.type[0] = v.type[1] = v.type[2] = MS_TYPE_F32;
	v.n_embd = 48; /* f32 rows of any length are valid; the FFN wants 32s */
	T_CHECK(ms_expert_ffn(&v, x, y, 1, NULL, &err) == -EINVAL,
		"f32 with n_embd 48 accepted");
	printf("f32 n_embd 48: %s\n", err.msg);
	v = view_of(&e, false);
	v.n_embd = v.n_ff = 256;
	v.type[2] = MS_TYPE_IQ2_XXS; /* a real type without a kernel */
	T_CHECK(ms_expert_ffn(&v, x, y, 1, NULL, &err) == -ENOTSUP,
		"iq2_xxs accepted");
	T_CHECK(strstr(err.msg, "iq2_xxs") != NULL,
		"message '%s' lacks the type", err.msg);
	printf("iq2_xxs: %s\n", err.msg);
	v = view_of(&e, false);
	v.type[1] = 4; /* retired Q4_2 */
	T_CHECK(ms_expert_ffn(&v, x, y, 1, NULL, &err) == -EINVAL,
		"retired type 4 accepted");
	v = view_of(&e, false);
	v.data[1] = NULL;
	T_CHECK(ms_expert_ffn(&v, x, y, 1, NULL, &err) == -EINVAL,
		"NULL data accepted");
	v = view_of(&e, false);
	struct ms_ffn_opts o = { .n_threads = -1 };
	T_CHECK(ms_expert_ffn(&v, x, y, 1, &o, &err) == -EINVAL,
		"-1 threads accepted");
	o = (struct ms_ffn_opts){ .path = MS_FFN_PATH_COUNT };
	T_CHECK(ms_expert_ffn(&v, x, y, 1, &o, &err) == -EINVAL,
		"path %d accepted", MS_FFN_PATH_COUNT);
	T_CHECK(ms_ffn_dequant_row(MS_FFN_PATH_SCALAR, MS_TYPE_Q4_K, e.gate.q,
				   y, 100) == -EINVAL,
		"dequant of 100 q4_K elements accepted");
	/* Bytes of a GLM-4.7 expert: Q2_K / Q2_K / Q3_K = 8,540,160. */
	struct ms_expert_view glm = { .n_embd = 5120,
				      .n_ff = 1536,
				      .type = { MS_TYPE_Q2_K, MS_TYPE_Q2_K,
						MS_TYPE_Q3_K } };
	uint64_t b[3];
	T_CHECK(ms_expert_view_bytes(&glm, b, &err) == 0 &&
			b[0] + b[1] + b[2] == 8540160,
		"GLM-4.7 expert bytes %llu, expected 8540160",
		(unsigned long long)(b[0] + b[1] + b[2]));
	expert_free(&e);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* lines whole among stderr's */
	ggml_ref_load_or_fail(&R);
	rng = t_seed();

	for (size_t t = 0; t < N_TYPES; t++)
		T_CHECK(ms_ffn_type_supported(all_types[t]),
			"no CPU FFN kernel for %s", ms_type_name(all_types[t]));

	bool avx2 = ms_ffn_path_available(MS_FFN_PATH_AVX2);
	if (!avx2)
		printf("note: this CPU lacks AVX2/FMA/F16C: the AVX2 half of the "
		       "test is skipped\n");
	check_dequant(MS_FFN_PATH_SCALAR);
	if (avx2) {
		check_dequant(MS_FFN_PATH_AVX2);
		check_dequant_random();
		for (size_t i = 0; i < sizeof(hot_types) / sizeof(hot_types[0]);
		     i++)
			T_CHECK(ms_ffn_type_vectorised(hot_types[i],
						       MS_FFN_PATH_AVX2),
				"%s has no AVX2 dequantiser",
				ms_type_name(hot_types[i]));
	}

	struct ms_ffn_pool *pool;
	struct ms_err err = { 0 };
	if (ms_ffn_pool_init(&pool, 4, &err))
		t_fatal("pool: %s", err.msg);

	/* Every type, same type for all three projections, at n_embd 512,
	 * n_ff 256: B 1, 3, 8, and 64 for the types the issue names (the
	 * K-quants, Q8_0, Q4_0, MXFP4, IQ4_NL, F16); thread counts compared
	 * at B 1 and 3. */
	const int64_t Bs[] = { 1, 3, 8, 64 };
	for (size_t t = 0; t < N_TYPES; t++) {
		uint32_t ty[3] = { all_types[t], all_types[t], all_types[t] };
		bool named = false;
		for (size_t i = 0; i < sizeof(b64_types) / sizeof(b64_types[0]);
		     i++)
			named |= b64_types[i] == ty[0];
		if (ms_ffn_type_supported(ty[0]))
			check_expert(ty, 512, 256, Bs, named ? 4 : 3, 3, pool,
				     avx2);
	}
	/* The mixes Unsloth's dynamic quants use, and rows longer than the
	 * AVX2 path's 1024-element flush (n_embd 2304 = 2 x 1024 + 256). */
	const uint32_t mixes[][3] = {
		{ MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K },
		{ MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q6_K },
		{ MS_TYPE_IQ4_XS, MS_TYPE_IQ4_XS, MS_TYPE_Q5_K },
		{ MS_TYPE_MXFP4, MS_TYPE_MXFP4, MS_TYPE_Q8_0 },
	};
	const int64_t Bl[] = { 1, 8 };
	for (size_t i = 0; i < sizeof(mixes) / sizeof(mixes[0]); i++) {
		bool ok = true;
		for (int j = 0; j < 3; j++)
			ok &= ms_ffn_type_supported(mixes[i][j]);
		if (ok)
			check_expert(mixes[i], 2304, 256, Bl, 2, 8, pool, avx2);
	}
	ms_ffn_pool_free(pool);
	check_errors();

	printf("worst relative L2: scalar %.2e", worst[MS_FFN_PATH_SCALAR]);
	if (avx2)
		printf(", avx2 %.2e", worst[MS_FFN_PATH_AVX2]);
	printf(" (bound %g)\n", TOL);
	return t_done();
}
