/*
 * t_q8 - the 8-bit-activation products (ms_ffn_opts.q8; kernels/q8.c and
 * q8_avx2.c) against ggml's CPU backend itself: libggml-cpu of the pinned
 * llama.cpp package, by dlopen, its type traits' from_float (quantize_row_
 * q8_K) and vec_dot (ggml_vec_dot_qN_K_q8_K).
 *
 * For Q2_K..Q6_K, random blocks and random inputs of several magnitudes
 * (and an all-zero block):
 *   - the rounded activations equal ggml's Q8_K blocks byte for byte
 *     (codes, sums of 16, scale);
 *   - each row's dot is within 2e-6 of ggml's, relative to the sum of the
 *     magnitudes of its terms (the two sum the same integers in a different
 *     float order), and so is a float64 sum of ggml's dequantised weights
 *     times the rounded activations;
 *   - the scalar and AVX2 forms unpack to the same bytes and give the same
 *     bits; the fused forms (AVX2, and AVX-512 where the CPU has BW and
 *     VNNI) give each of 1..4 inputs the scalar form's bits;
 *   - ms_matmul and ms_expert_ffn with q8 give each token the same bits
 *     alone or among 2..10 tokens, on 1, 2 or 3 threads, and the FFN is
 *     exactly its three products composed; also with rows long enough
 *     (MS_FFN_L1_BYTES made small) that the fused forms go in parts;
 *   - a type without an 8-bit kernel is refused, naming it.
 *   - the q8 product equals the f32 one of the rounded inputs within 1e-5
 *     (relative L2), and the q8 FFN is off the f32 one by at most 3 x
 *     what rounding its inputs alone (x, and h before the down product)
 *     moves the f32 FFN.
 * It prints the error of the 8-bit path against the exact f32 one (what
 * rounding the activations costs: 1e-3..0.17 relative L2 on these random
 * weights, whose dots cancel; a wrong code or scale gives ~1).
 *
 * Needs $MS_LLAMA_DIR (tests/fetch-ggml.sh; tests/run.sh sets it).
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/kernels.h"
#include "moestream/model.h"
#include "../kernels/ffn_internal.h"
#include "testutil.h"

void tool_fill_blocks(uint8_t *buf, uint64_t size, uint32_t type, uint64_t *s);

/* ggml-cpu.h's type traits (the pinned build): passed by pointer. */
typedef void (*from_float_t)(const float *x, void *y, int64_t k);
typedef void (*vec_dot_t)(int n, float *s, size_t bs, const void *x,
			  size_t bx, const void *y, size_t by, int nrc);
struct traits_cpu {
	from_float_t from_float;
	vec_dot_t vec_dot;
	int vec_dot_type;
	int64_t nrows;
};

#define GGML_Q8_K 15
#define G8_BYTES 292 /* block_q8_K: f32 d, int8 qs[256], int16 bsums[16] */

static const uint32_t types[] = { MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K,
				  MS_TYPE_Q5_K, MS_TYPE_Q6_K };

static const struct traits_cpu *(*get_traits)(int type);

static void load_ggml_cpu(void)
{
	const char *dir = getenv("MS_LLAMA_DIR");
	if (!dir)
		t_fatal("MS_LLAMA_DIR is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	char p[4096];
	snprintf(p, sizeof(p), "%s/libggml-base.so", dir);
	if (!dlopen(p, RTLD_NOW | RTLD_GLOBAL))
		t_fatal("%s: %s (run tests/fetch-ggml.sh)", p, dlerror());
	__builtin_cpu_init();
	bool hw = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		  __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
	snprintf(p, sizeof(p), "%s/libggml-cpu-%s.so", dir, hw ? "haswell" : "x64");
	void *h = dlopen(p, RTLD_NOW | RTLD_GLOBAL);
	if (!h)
		t_fatal("%s: %s", p, dlerror());
	void (*init)(void) = (void (*)(void))dlsym(h, "ggml_cpu_init");
	get_traits = (const struct traits_cpu *(*)(int))dlsym(h, "ggml_get_type_traits_cpu");
	if (!init || !get_traits)
		t_fatal("%s: no ggml_cpu_init / ggml_get_type_traits_cpu", p);
	init();
	printf("reference: %s\n", p);
}

/* Inputs: gaussian-ish, each 256-block at its own magnitude, one block of
 * the first row all zero. */
static void fill_x(float *x, int64_t n, uint64_t *s, bool zero_block)
{
	for (int64_t b = 0; b < n; b += 256) {
		double mag = pow(10.0, (double)(t_rand(s) % 7) - 3.0);
		for (int j = 0; j < 256; j++) {
			double u = 0;
			for (int k = 0; k < 4; k++)
				u += (double)(t_rand(s) % 100001) / 100000.0 - 0.5;
			x[b + j] = (float)(u * mag);
		}
	}
	if (zero_block)
		memset(x + 256, 0, 256 * sizeof(float));
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
	double num = 0, den = 0;
	for (int64_t i = 0; i < n; i++) {
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return den ? sqrt(num / den) : sqrt(num);
}

/* x (T rows of n) rounded as the q8 path rounds it, and back to floats */
static void round_trip(const float *x, float *xr, int64_t T, int64_t n)
{
	struct ms_q8_act *q = malloc((size_t)(n / MS_Q8_QK) * sizeof(*q));
	for (int64_t k = 0; k < T; k++) {
		ms_q8_quantize(x + k * n, q, n);
		for (int64_t b = 0; b < n / MS_Q8_QK; b++)
			for (int j = 0; j < MS_Q8_QK; j++)
				xr[k * n + b * MS_Q8_QK + j] = q[b].d * q[b].q[j];
	}
	free(q);
}

static void against_ggml(uint32_t t, uint64_t *s, bool avx2)
{
	const int64_t n = 2048, nb = n / 256, R = 48;
	const struct traits_cpu *tr = get_traits((int)t);
	if (!tr || !tr->vec_dot || tr->vec_dot_type != GGML_Q8_K)
		t_fatal("ggml: %s has no vec_dot with Q8_K", ms_type_name(t));
	const struct traits_cpu *q8 = get_traits(GGML_Q8_K);
	if (!q8 || !q8->from_float)
		t_fatal("ggml: no Q8_K from_float");
	uint64_t rs;
	ms_type_row_size(t, n, &rs, NULL);
	uint8_t *w = malloc(R * rs), *g8 = malloc(nb * G8_BYTES);
	float *x = malloc(n * sizeof(float)), *wf = malloc(n * sizeof(float));
	struct ms_q8_act *xq = aligned_alloc(32, nb * sizeof(*xq));
	struct ms_q8_w *uw = aligned_alloc(32, nb * sizeof(*uw)),
		       *us = aligned_alloc(32, nb * sizeof(*us));
	tool_fill_blocks(w, R * rs, t, s);
	ms_q8_unpack_fn up = ms_q8_unpacker(t, avx2), ups = ms_q8_unpacker(t, false);
	ms_q8_dot_fn dot = ms_q8_dotter(avx2), dots = ms_q8_dotter(false);
	double worst = 0, worst64 = 0;
	int qdiff = 0, formdiff = 0;
	for (int64_t r = 0; r < R; r++) {
		fill_x(x, n, s, r == 0);
		q8->from_float(x, g8, n);
		ms_q8_quantize(x, xq, n);
		for (int64_t b = 0; b < nb; b++) {
			const uint8_t *gb = g8 + b * G8_BYTES;
			float gd;
			memcpy(&gd, gb, 4);
			int16_t gs[16];
			memcpy(gs, gb + 260, 32);
			/* ggml leaves an all-zero block's sums unwritten */
			qdiff += memcmp(&gd, &xq[b].d, 4) != 0 ||
				 memcmp(gb + 4, xq[b].q, 256) != 0 ||
				 (gd != 0 && memcmp(gs, xq[b].bsum, 32) != 0);
		}
		const uint8_t *row = w + r * rs;
		float ref;
		tr->vec_dot((int)n, &ref, 0, row, 0, g8, 0, 1);
		up(row, uw, nb);
		ups(row, us, nb);
		float ours = dot(uw, xq, nb), scal = dots(us, xq, nb);
		for (int64_t b = 0; b < nb; b++)
			formdiff += memcmp(uw[b].u, us[b].u, 256) != 0 ||
				    memcmp(uw[b].s, us[b].s, 32) != 0 ||
				    memcmp(uw[b].m, us[b].m, 32) != 0 ||
				    memcmp(&uw[b].d, &us[b].d, 4) != 0 ||
				    memcmp(&uw[b].dm, &us[b].dm, 4) != 0 ||
				    uw[b].off != us[b].off;
		formdiff += memcmp(&ours, &scal, 4) != 0;
		/* float64: ggml's dequantised weights x the rounded inputs */
		if (ms_dequant_row(t, row, wf, n))
			t_fatal("dequant %s", ms_type_name(t));
		double d64 = 0, mag = 0;
		for (int64_t i = 0; i < n; i++) {
			double xv = (double)xq[i / 256].d * xq[i / 256].q[i % 256];
			d64 += (double)wf[i] * xv;
			mag += fabs((double)wf[i] * xv);
		}
		if (mag == 0)
			mag = 1;
		double e = fabs((double)ours - ref) / mag,
		       e64 = fabs((double)ours - d64) / mag;
		worst = e > worst ? e : worst;
		worst64 = e64 > worst64 ? e64 : worst64;
	}
	printf("%-5s %-6s rounded inputs differing from ggml's: %d of %lld blocks; "
	       "dot vs ggml %.2e, vs float64 %.2e (of the terms' magnitude); "
	       "scalar/avx2 differences %d\n",
	       ms_type_name(t), avx2 ? "avx2" : "scalar", qdiff,
	       (long long)(R * nb), worst, worst64, formdiff);
	T_CHECK(qdiff == 0, "%s: %d rounded blocks differ from ggml's",
		ms_type_name(t), qdiff);
	T_CHECK(worst <= 2e-6, "%s: dot %.3e from ggml's", ms_type_name(t), worst);
	T_CHECK(worst64 <= 2e-6, "%s: dot %.3e from float64", ms_type_name(t),
		worst64);
	T_CHECK(formdiff == 0, "%s: scalar and avx2 differ in %d rows",
		ms_type_name(t), formdiff);
	free(w), free(g8), free(x), free(wf), free(xq), free(uw), free(us);
}

/* The fused forms (a row against 1..4 inputs, codes made in registers):
 * AVX2 and AVX-512 each give every input the bits the scalar unpack + dot
 * gives it. */
static void fused_forms(uint32_t t, uint64_t *s)
{
	const int64_t n = 2048, nb = n / 256, R = 24;
	uint64_t rs;
	ms_type_row_size(t, n, &rs, NULL);
	uint8_t *w = malloc(R * rs);
	float *x = malloc(n * sizeof(float));
	struct ms_q8_act *xq = aligned_alloc(32, 4 * nb * sizeof(*xq));
	struct ms_q8_w *us = aligned_alloc(32, nb * sizeof(*us));
	struct ms_q8_in in = { .nt = 4 };
	struct ms_q8_pair *pairs = aligned_alloc(64, 2 * nb * sizeof(*pairs));
	for (int k = 0; k < 4; k++) {
		fill_x(x, n, s, k == 1);
		ms_q8_quantize(x, xq + k * nb, n);
		in.x[k] = xq + k * nb;
	}
	ms_q8_pairs(&in, nb, pairs); /* (0, 1), (2, 3): every nt's pairs */
	tool_fill_blocks(w, R * rs, t, s);
	ms_q8_fused_fn f2 = ms_q8_avx256_fused(t), f5 = ms_q8_avx512_fused(t);
	int diff2 = 0, diff5 = 0;
	for (int64_t r = 0; r < R; r++) {
		ms_q8_unpacker(t, false)(w + r * rs, us, nb);
		float ref[4], o[4];
		for (int k = 0; k < 4; k++)
			ref[k] = ms_q8_dotter(false)(us, in.x[k], nb);
		/* with and without the prefetch: the same bits */
		for (in.nt = 1; in.nt <= 4; in.nt++)
			for (int pf = 0; pf < 2; pf++) {
				in.pf = pf;
				if (f2) {
					f2(w + r * rs, &in, NULL, nb, o);
					diff2 += memcmp(o, ref, (size_t)in.nt * 4) != 0;
				}
				if (f5) {
					f5(w + r * rs, &in, NULL, nb, o);
					diff5 += memcmp(o, ref, (size_t)in.nt * 4) != 0;
				}
			}
		/* in parts of 1, 3 and 5 blocks (the last part shorter), the
		 * lanes carried between the calls, prefetching or not */
		for (in.nt = 1; in.nt <= 4; in.nt++)
			for (int64_t len = 1; len <= 5; len += 2) {
				ms_q8_fused_fn fs[2] = { f2, f5 };
				int *dv[2] = { &diff2, &diff5 };
				for (int f = 0; f < 2; f++) {
					if (!fs[f])
						continue;
					_Alignas(64) float acc[MS_Q8_PART_FLOATS];
					memset(o, 0, sizeof(o));
					for (int64_t i0 = 0; i0 < nb; i0 += len) {
						struct ms_q8_part p = {
							i0, i0 + len < nb ? i0 + len : nb,
							len == 3 ? (int64_t)rs : 0, acc
						};
						fs[f](w + r * rs, &in, &p, nb, o);
					}
					*dv[f] += memcmp(o, ref, (size_t)in.nt * 4) != 0;
				}
			}
	}
	printf("%-5s fused: AVX2 %s, AVX-512 %s (rows x 1..4 inputs x prefetch "
	       "or not, and in parts of 1, 3, 5 blocks, differing from scalar "
	       "unpack + dot: %d, %d)\n",
	       ms_type_name(t),
	       f2 ? "run" : "not on this CPU", f5 ? "run" : "not on this CPU",
	       diff2, diff5);
	T_CHECK(diff2 == 0, "%s: the AVX2 fused form differs in %d cases",
		ms_type_name(t), diff2);
	T_CHECK(diff5 == 0, "%s: the AVX-512 fused form differs in %d cases",
		ms_type_name(t), diff5);
	free(w), free(x), free(xq), free(us), free(pairs);
}

/* The AVX-512 form for many inputs (a prompt's tokens against an unpacked
 * row, eight or four at a time, then the rest): every input the bits the
 * scalar dot gives it alone, for 1..13 inputs and a strided output. */
static void many_forms(uint32_t t, uint64_t *s)
{
	const int64_t n = 1024, nb = n / 256, R = 8, N = 13, OS = 3;
	ms_q8_dotn_fn dn = ms_q8_avx512_dotn();
	if (!dn) {
		printf("%-5s many inputs: AVX-512 not on this CPU\n", ms_type_name(t));
		return;
	}
	uint64_t rs;
	ms_type_row_size(t, n, &rs, NULL);
	uint8_t *w = malloc(R * rs);
	float *x = malloc(n * sizeof(float)), ref[13], o[13 * 3];
	struct ms_q8_act *xq = aligned_alloc(32, N * nb * sizeof(*xq));
	struct ms_q8_w *us = aligned_alloc(32, nb * sizeof(*us));
	for (int k = 0; k < N; k++) {
		fill_x(x, n, s, k == 5);
		ms_q8_quantize(x, xq + k * nb, n);
	}
	tool_fill_blocks(w, R * rs, t, s);
	int diff = 0, cases = 0;
	for (int64_t r = 0; r < R; r++) {
		ms_q8_unpacker(t, false)(w + r * rs, us, nb);
		for (int k = 0; k < N; k++)
			ref[k] = ms_q8_dotter(false)(us, xq + k * nb, nb);
		for (int nt = 1; nt <= N; nt++, cases++) {
			memset(o, 0xff, sizeof(o));
			dn(us, xq, nb, nb, nt, o, OS);
			for (int k = 0; k < nt; k++)
				diff += memcmp(&o[k * OS], &ref[k], 4) != 0;
		}
	}
	printf("%-5s many inputs (AVX-512): %d rows x 1..%d inputs, %d results "
	       "differing from scalar unpack + dot\n", ms_type_name(t), (int)R,
	       (int)N, diff);
	T_CHECK(diff == 0 && cases == R * N,
		"%s: the many-input form differs in %d results", ms_type_name(t),
		diff);
	free(w), free(x), free(xq), free(us);
}

/* h = silu(G x) * (U x) of T inputs (E -> F), as the FFN forms it, from
 * ms_matmul's products with `o`; uu is scratch (T x F). */
static void swiglu_h(uint32_t t, const uint8_t *g, const uint8_t *u, int64_t E,
		     int64_t F, const float *x, int64_t T,
		     const struct ms_ffn_opts *o, float *h, float *uu)
{
	struct ms_err err = { 0 };
	if (ms_matmul(t, g, E, F, x, h, T, o, &err) ||
	    ms_matmul(t, u, E, F, x, uu, T, o, &err))
		t_fatal("%s: %s", ms_type_name(t), err.msg);
	for (int64_t i = 0; i < T * F; i++) {
		double gv = h[i], uv = uu[i];
		h[i] = (float)(gv / (1.0 + exp(-gv)) * uv);
	}
}

/* ms_matmul and ms_expert_ffn with q8 (E -> F -> E): batch and thread
 * invariance, the FFN as its products, the error against f32. */
static void products(uint32_t t, uint64_t *s, enum ms_ffn_path path,
		     int64_t E, int64_t F)
{
	const int64_t T = 10;
	uint64_t rs_e, rs_f;
	ms_type_row_size(t, E, &rs_e, NULL);
	ms_type_row_size(t, F, &rs_f, NULL);
	uint8_t *g = malloc(F * rs_e), *u = malloc(F * rs_e), *d = malloc(E * rs_f);
	tool_fill_blocks(g, F * rs_e, t, s);
	tool_fill_blocks(u, F * rs_e, t, s);
	tool_fill_blocks(d, E * rs_f, t, s);
	float *x = malloc(T * E * sizeof(float)), *y1 = malloc(T * F * sizeof(float)),
	      *yn = malloc(T * F * sizeof(float)), *yf = malloc(T * F * sizeof(float)),
	      *gg = malloc(T * F * sizeof(float)), *uu = malloc(T * F * sizeof(float)),
	      *ye = malloc(T * E * sizeof(float)), *yc = malloc(T * E * sizeof(float));
	fill_x(x, T * E, s, false);
	struct ms_err err = { 0 };
	struct ms_expert_view v = { .n_embd = E, .n_ff = F, .type = { t, t, t },
				    .data = { g, u, d } };
	int diff = 0;
	for (int th = 1; th <= 3; th++) {
		struct ms_ffn_opts o = { .path = path, .n_threads = th, .q8 = true };
		for (int nt = 1; nt <= T; nt++) {
			if (ms_matmul(t, g, E, F, x, yn, nt, &o, &err))
				t_fatal("%s: %s", ms_type_name(t), err.msg);
			for (int k = 0; k < nt; k++) {
				if (ms_matmul(t, g, E, F, x + k * E, y1, 1, &o, &err))
					t_fatal("%s", err.msg);
				diff += memcmp(y1, yn + k * F, F * sizeof(float)) != 0;
			}
			if (nt > MS_Q8_FUSED_MAX)
				continue;
			/* the FFN's fused products: gate and up, then down */
			if (ms_expert_ffn(&v, x, ye, nt, &o, &err))
				t_fatal("%s: %s", ms_type_name(t), err.msg);
			for (int k = 0; k < nt; k++) {
				if (ms_expert_ffn(&v, x + k * E, yc, 1, &o, &err))
					t_fatal("%s", err.msg);
				diff += memcmp(yc, ye + k * E, E * sizeof(float)) != 0;
			}
		}
	}
	T_CHECK(diff == 0, "%s/%s: %d tokens changed with their batch or threads",
		ms_type_name(t), ms_ffn_path_name(path), diff);

	/* the FFN = its three products composed (h as the FFN computes it) */
	struct ms_ffn_opts o = { .path = path, .n_threads = 2, .q8 = true };
	if (ms_expert_ffn(&v, x, ye, T, &o, &err))
		t_fatal("%s: %s", ms_type_name(t), err.msg);
	swiglu_h(t, g, u, E, F, x, T, &o, gg, uu);
	if (ms_matmul(t, d, F, E, gg, yc, T, &o, &err))
		t_fatal("%s", err.msg);
	T_CHECK(!memcmp(ye, yc, T * E * sizeof(float)),
		"%s: the q8 FFN is not its products composed", ms_type_name(t));

	/* what rounding the activations costs, against the exact f32 path */
	struct ms_ffn_opts f = { .path = path, .n_threads = 2 };
	if (ms_matmul(t, g, E, F, x, yf, T, &f, &err))
		t_fatal("%s", err.msg);
	double em = rel_l2(yn, yf, T * F);
	if (ms_expert_ffn(&v, x, yc, T, &f, &err))
		t_fatal("%s", err.msg);
	double ef = rel_l2(ye, yc, T * E);

	/* The q8 product is the f32 one of the rounded inputs (the same
	 * numbers, summed in another order). And how far the FFN may move:
	 * rounding x alone (the f32 FFN of the rounded x) and rounding h
	 * alone (the f32 down product of the rounded h) move the f32 result
	 * by ex and eh; on these random weights, whose dots cancel, that is
	 * 1e-3..0.17, and the q8 FFN's error was <= 1.63 x (ex + eh) over
	 * 6,000 draws. A wrong code or scale gives an unrelated result (~1). */
	float *xr = malloc(T * E * sizeof(float)), *hr = malloc(T * F * sizeof(float)),
	      *yr = malloc(T * F * sizeof(float));
	round_trip(x, xr, T, E);
	if (ms_matmul(t, g, E, F, xr, yr, T, &f, &err))
		t_fatal("%s", err.msg);
	double emr = rel_l2(yn, yr, T * F);
	if (ms_expert_ffn(&v, xr, ye, T, &f, &err))
		t_fatal("%s", err.msg);
	double ex = rel_l2(ye, yc, T * E);
	swiglu_h(t, g, u, E, F, x, T, &f, gg, uu);
	round_trip(gg, hr, T, F);
	if (ms_matmul(t, d, F, E, gg, ye, T, &f, &err) ||
	    ms_matmul(t, d, F, E, hr, yc, T, &f, &err))
		t_fatal("%s", err.msg);
	double eh = rel_l2(yc, ye, T * E);
	printf("%-5s %-6s %lld -> %lld: q8 vs f32: matmul rel L2 %.2e (vs f32 of "
	       "the rounded x %.1e), FFN %.2e = %.2f x what rounding x and h "
	       "alone moves it (%.2e + %.2e)\n", ms_type_name(t),
	       ms_ffn_path_name(path), (long long)E, (long long)F, em, emr, ef,
	       ef / (ex + eh), ex, eh);
	T_CHECK(emr < 1e-5, "%s: the q8 product is %.3e from the f32 one of the "
		"rounded inputs: more than summation order", ms_type_name(t), emr);
	T_CHECK(ef <= 3 * (ex + eh), "%s: q8 vs f32 FFN %.3e, %.2f x what "
		"rounding its inputs moves it (%.3e + %.3e): more than 8-bit "
		"rounding", ms_type_name(t), ef, ef / (ex + eh), ex, eh);
	free(xr), free(hr), free(yr);
	free(g), free(u), free(d), free(x), free(y1), free(yn), free(yf);
	free(gg), free(uu), free(ye), free(yc);
}

/* The AVX2 quantizer against the scalar one: random blocks of every
 * magnitude, and made ones: products exactly halfway (ties to even), the
 * largest magnitude twice with both signs (the first one counts), a lone
 * value, all zero, values that round to +-127 and 128 before the clamp. */
static void quantize_forms(uint64_t *s)
{
	ms_q8_quantize_fn fa = ms_q8_quantizer(true), fs = ms_q8_quantizer(false);
	if (fa == fs) {
		printf("quantize: no AVX2 form on this CPU\n");
		return;
	}
	const int64_t nb = 64, n = nb * 256;
	float *x = malloc(n * sizeof(float));
	struct ms_q8_act *qa = malloc(nb * sizeof(*qa)), *qs = malloc(nb * sizeof(*qs));
	int diff = 0, blocks = 0;
	for (int round = 0; round < 8; round++) {
		fill_x(x, n, s, round == 0);
		float *b = x + 256 * (round % 8 + 1);
		/* max -127: iscale 1, halves stay halves */
		for (int j = 0; j < 256; j++)
			b[j] = (float)((int)(t_rand(s) % 253) - 126) + 0.5f;
		b[7] = -127;
		b = x + 256 * 20;
		memset(b, 0, 256 * sizeof(float));
		b[200] = 3.25f;                  /* a lone value */
		b = x + 256 * 21;
		for (int j = 0; j < 256; j++)
			b[j] = (float)(t_rand(s) % 1000) / 1000.f;
		b[30] = -2, b[90] = 2;           /* first of the two wins */
		b = x + 256 * 22;
		for (int j = 0; j < 256; j++)
			b[j] = (float)(t_rand(s) % 1000) / 1000.f;
		b[5] = 2, b[6] = -2;
		fs(x, qs, n);
		fa(x, qa, n);
		for (int64_t k = 0; k < nb; k++, blocks++)
			diff += memcmp(qa[k].q, qs[k].q, 256) != 0 ||
				memcmp(qa[k].bsum, qs[k].bsum, sizeof(qs[k].bsum)) != 0 ||
				memcmp(&qa[k].d, &qs[k].d, sizeof(float)) != 0;
	}
	printf("quantize: the AVX2 form against the scalar one: %d of %d blocks "
	       "differ\n", diff, blocks);
	T_CHECK(diff == 0, "quantize: the AVX2 form differs in %d blocks", diff);
	T_CHECK(qs[21].d > 0 && qs[22].d < 0 && qs[21].q[30] == -127 &&
		qs[21].q[90] == 127 && qs[22].q[5] == -127, "quantize: the first largest value sets the "
		"sign (d %g, %g)", qs[21].d, qs[22].d);
	free(x), free(qa), free(qs);
}

int main(void)
{
	/* L1 taken as 6 KiB (4 KiB for the inputs): with 2..4 inputs the
	 * fused products of 2560- and 1280-long rows go in parts of 4 or 5
	 * blocks (the last shorter), those of 512 and 768 whole */
	setenv("MS_FFN_L1_BYTES", "6144", 1);
	load_ggml_cpu();
	uint64_t s = t_seed();
	bool avx2 = ms_ffn_path_available(MS_FFN_PATH_AVX2);
	if (!avx2)
		printf("note: no AVX2 on this CPU: the scalar forms only\n");
	quantize_forms(&s);
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		against_ggml(types[i], &s, false);
		if (avx2)
			against_ggml(types[i], &s, true);
		products(types[i], &s, MS_FFN_PATH_SCALAR, 512, 768);
		if (avx2) {
			products(types[i], &s, MS_FFN_PATH_AVX2, 512, 768);
			products(types[i], &s, MS_FFN_PATH_AVX2, 2560, 1280);
		}
		fused_forms(types[i], &s);
		many_forms(types[i], &s);
	}
	/* where the CPU has AVX-512, the AVX2 forms again, the AVX-512 ones
	 * hidden (ms_q8_dotter and the fused forms then take AVX2) */
	if (ms_q8_avx512_fused(MS_TYPE_Q2_K)) {
		setenv("MS_FFN_NO_AVX512", "1", 1);
		printf("again with MS_FFN_NO_AVX512=1 (the AVX2 forms):\n");
		for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
			against_ggml(types[i], &s, true);
			products(types[i], &s, MS_FFN_PATH_AVX2, 512, 768);
			products(types[i], &s, MS_FFN_PATH_AVX2, 2560, 1280);
		}
		unsetenv("MS_FFN_NO_AVX512");
	}

	/* refused: a type without an 8-bit kernel, rows not of 256 */
	struct ms_err err = { 0 };
	struct ms_ffn_opts o = { .q8 = true };
	uint8_t w[34 * 8] = { 0 };
	float x[256] = { 0 }, y[1];
	int rc = ms_matmul(MS_TYPE_Q8_0, w, 256, 1, x, y, 1, &o, &err);
	T_CHECK(rc == -ENOTSUP && strstr(err.msg, "q8_0"),
		"q8 on q8_0: rc %d, \"%s\"", rc, err.msg);
	uint8_t w2[84] = { 0 };
	rc = ms_matmul(MS_TYPE_Q2_K, w2, 32, 1, x, y, 1, &o, &err);
	T_CHECK(rc == -EINVAL || rc == -ENOTSUP, "q8 on rows of 32: rc %d", rc);
	return t_done();
}
