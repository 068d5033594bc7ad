/*
 * t_dequant - the C reference dequantisers against ggml's, bit for bit.
 *
 * For each of the 16 types moestream dequantises (F32, F16, BF16, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
 * MXFP4) and several shapes (64 rows of 4096, and odd row lengths that are
 * multiples of the block), three kinds of input:
 *
 *   quant    random floats (per-row scales from 1e-4 to 1e4, zero blocks,
 *            outliers) quantized by ggml itself (ggml_quantize_chunk;
 *            ggml_fp32_to_fp16_row / _bf16_row for F16 / BF16);
 *   raw      random bytes: every bit of every block, scale fields included,
 *            so subnormal, infinite and NaN scales occur;
 *   special  random bytes whose f16 scale fields (E8M0 for MXFP4) are
 *            drawn from zeros, subnormals, the largest finite, infinities,
 *            quiet and signalling NaNs of both signs.
 *
 * plus every one of the 65,536 f16 and bf16 patterns and every E8M0
 * exponent. ms_dequant_row's output must equal ggml's dequantize_row_* (f16 /
 * bf16: ggml_*_to_fp32_row) with memcmp: the same float bits, NaN payloads
 * included. Our side also reads from a source that is misaligned by one byte.
 * A mismatch prints the type, row, element, both values, both bit patterns
 * and the seed (MS_SEED=... replays it).
 *
 * Also: ms_dequant_supported is true for exactly those 16 ids, and
 * unsupported types, negative n and n not a multiple of the block answer
 * -EINVAL. The time to dequantise one GLM-4.7-sized expert is printed (ours
 * and ggml's) but not judged: sanitizer builds run this too.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml_ref.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

static struct ggml_ref R;
static uint64_t seed, rng;

/* The types under test and where their f16 scale fields sit in a block
 * (from ggml-common.h's block structs); MXFP4's scale is byte 0, E8M0. */
static const struct {
	uint32_t type;
	int f16[2]; /* byte offsets, -1 = none */
} types[] = {
	{ MS_TYPE_F32, { -1, -1 } },    { MS_TYPE_F16, { -1, -1 } },
	{ MS_TYPE_BF16, { -1, -1 } },   { MS_TYPE_Q4_0, { 0, -1 } },
	{ MS_TYPE_Q4_1, { 0, 2 } },     { MS_TYPE_Q5_0, { 0, -1 } },
	{ MS_TYPE_Q5_1, { 0, 2 } },     { MS_TYPE_Q8_0, { 0, -1 } },
	{ MS_TYPE_Q2_K, { 80, 82 } },   { MS_TYPE_Q3_K, { 108, -1 } },
	{ MS_TYPE_Q4_K, { 0, 2 } },     { MS_TYPE_Q5_K, { 0, 2 } },
	{ MS_TYPE_Q6_K, { 208, -1 } },  { MS_TYPE_IQ4_NL, { 0, -1 } },
	{ MS_TYPE_IQ4_XS, { 0, -1 } },  { MS_TYPE_MXFP4, { -1, -1 } },
};
#define N_TYPES (sizeof(types) / sizeof(types[0]))

static const uint16_t f16_special[] = {
	0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x7bff,
	0xfbff, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0xfc01, 0x7dff,
	0x7fff, 0xffff, 0x3c00, 0xbc00,
};
static const uint8_t e8m0_special[] = { 0, 1, 2, 126, 127, 128, 253, 254, 255 };

static double rand_unit(void) /* [0, 1) */
{
	return (double)(t_rand(&rng) >> 11) * 0x1p-53;
}

static float rand_normalish(void) /* sum of 4 uniforms, centred */
{
	double s = 0;
	for (int i = 0; i < 4; i++)
		s += rand_unit();
	return (float)((s - 2.0) * 1.7);
}

static void rand_bytes(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = t_rand(&rng);
		memcpy(p + i, &v, n - i < 8 ? n - i : 8);
	}
}

/* Rows of floats of varied character: each row its own scale 1e-4..1e4,
 * with now and then a block of zeros, a constant block or an outlier. */
static void rand_floats(float *x, int64_t nrows, int64_t n, int64_t blck)
{
	for (int64_t r = 0; r < nrows; r++) {
		float *row = x + r * n;
		float scale = (float)pow(10.0, -4.0 + 8.0 * rand_unit());
		for (int64_t i = 0; i < n; i++)
			row[i] = scale * rand_normalish();
		for (int64_t b = 0; b + blck <= n; b += blck) {
			uint64_t k = t_rand(&rng) % 64;
			if (k == 0)
				memset(row + b, 0, (size_t)blck * sizeof(float));
			else if (k == 1)
				for (int64_t i = 0; i < blck; i++)
					row[b + i] = scale;
			else if (k == 2)
				row[b + (int64_t)(t_rand(&rng) % (uint64_t)blck)] *= 100;
		}
	}
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

struct tally {
	uint64_t rows, elems;
	int bad_rows;
};

/* Dequantises `nrows` rows of `n` elements at `q` both ways and compares.
 * `what` names the input kind in messages. */
static void compare(uint32_t type, const char *what, const uint8_t *q,
		    int64_t nrows, int64_t n, struct tally *t)
{
	uint64_t rs;
	if (ms_type_row_size(type, n, &rs, NULL))
		t_fatal("row size of %s x %lld", ms_type_name(type), (long long)n);
	float *ours = malloc((size_t)n * sizeof(float));
	float *ref = malloc((size_t)n * sizeof(float));
	uint8_t *mis = malloc((size_t)rs + 1);
	if (!ours || !ref || !mis)
		t_fatal("out of memory");
	for (int64_t r = 0; r < nrows; r++) {
		const uint8_t *row = q + (uint64_t)r * rs;
		/* Our reader must not care about alignment. */
		memcpy(mis + 1, row, rs);
		memset(ours, 0xa5, (size_t)n * sizeof(float));
		int rc = ms_dequant_row(type, mis + 1, ours, n);
		if (ggml_ref_dequantize(&R, (int)type, row, ref, n) != 0)
			t_fatal("ggml has no dequantizer for %s", ms_type_name(type));
		t->rows++;
		t->elems += (uint64_t)n;
		if (rc != 0) {
			T_CHECK(0, "%s %s: ms_dequant_row(n=%lld) = %d", ms_type_name(type),
				what, (long long)n, rc);
			t->bad_rows++;
			continue;
		}
		if (!memcmp(ours, ref, (size_t)n * sizeof(float)))
			continue;
		int64_t i = 0, nbad = 0;
		for (int64_t k = 0; k < n; k++)
			if (f32_bits(ours[k]) != f32_bits(ref[k]))
				nbad++;
		while (f32_bits(ours[i]) == f32_bits(ref[i]))
			i++;
		if (t->bad_rows++ < 4)
			T_CHECK(0, "%s %s: row %lld of %lld (n=%lld): element %lld: "
				"ours %.9g (0x%08x), ggml %.9g (0x%08x); %lld "
				"elements differ; seed MS_SEED=%llu",
				ms_type_name(type), what, (long long)r,
				(long long)nrows, (long long)n, (long long)i,
				(double)ours[i], f32_bits(ours[i]), (double)ref[i],
				f32_bits(ref[i]), (long long)nbad,
				(unsigned long long)seed);
		else
			t_failures++;
	}
	free(ours);
	free(ref);
	free(mis);
}

/* Sets the scale fields of every block to specials, half of the time. */
static void plant_specials(int k, uint8_t *q, uint64_t bytes)
{
	const struct ms_type_info *ti = ms_type_get(types[k].type);
	for (uint64_t b = 0; b + ti->type_size <= bytes; b += ti->type_size) {
		if (types[k].type == MS_TYPE_MXFP4) {
			if (t_rand(&rng) & 1)
				q[b] = e8m0_special[t_rand(&rng) %
						    sizeof(e8m0_special)];
			continue;
		}
		for (int j = 0; j < 2; j++) {
			if (types[k].f16[j] < 0 || !(t_rand(&rng) & 1))
				continue;
			uint16_t h = f16_special[t_rand(&rng) %
						 (sizeof(f16_special) / 2)];
			q[b + (uint64_t)types[k].f16[j]] = (uint8_t)h;
			q[b + (uint64_t)types[k].f16[j] + 1] = (uint8_t)(h >> 8);
		}
	}
}

static void test_type(int k)
{
	const uint32_t type = types[k].type;
	const char *name = ms_type_name(type);
	const int64_t blck = R.ggml_blck_size((int)type);
	const int64_t shapes[][2] = {
		{ 64, 4096 },
		{ 7, blck },
		{ 5, blck * 11 },
		{ 3, blck * 37 },
		{ 2, blck == 1 ? 4097 : blck * 129 },
	};
	struct tally tq = { 0 }, tr = { 0 }, ts = { 0 };

	if (R.ggml_quantize_requires_imatrix((int)type))
		t_fatal("ggml says %s needs an imatrix", name);
	R.ggml_quantize_init((int)type);

	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		const int64_t nrows = shapes[s][0], n = shapes[s][1];
		uint64_t rs;
		if (ms_type_row_size(type, n, &rs, NULL))
			t_fatal("%s: row size of %lld", name, (long long)n);
		T_EQ_U64(rs, R.ggml_row_size((int)type, n));
		const uint64_t bytes = rs * (uint64_t)nrows;
		float *x = malloc((size_t)(nrows * n) * sizeof(float));
		uint8_t *q = malloc((size_t)bytes);
		if (!x || !q)
			t_fatal("out of memory");

		/* 1. ggml's quantizer makes the blocks. */
		rand_floats(x, nrows, n, blck);
		if (type == MS_TYPE_F32) {
			memcpy(q, x, (size_t)bytes);
		} else if (type == MS_TYPE_F16) {
			R.ggml_fp32_to_fp16_row(x, (uint16_t *)q, nrows * n);
		} else if (type == MS_TYPE_BF16) {
			R.ggml_fp32_to_bf16_row(x, (uint16_t *)q, nrows * n);
		} else {
			size_t w = R.ggml_quantize_chunk((int)type, x, q, 0, nrows,
							 n, NULL);
			T_EQ_U64(w, bytes);
		}
		compare(type, "quantized by ggml", q, nrows, n, &tq);

		/* 2. Random bytes, scales and all. */
		rand_bytes(q, (size_t)bytes);
		compare(type, "random bytes", q, nrows, n, &tr);

		/* 3. Random bytes with special scales. */
		if (types[k].f16[0] >= 0 || type == MS_TYPE_MXFP4) {
			plant_specials(k, q, bytes);
			compare(type, "special scales", q, nrows, n, &ts);
		}
		free(x);
		free(q);
	}
	printf("%-7s quantized %4llu rows (%7llu values), random %4llu rows, "
	       "special scales %4llu rows: %s\n",
	       name, (unsigned long long)tq.rows, (unsigned long long)tq.elems,
	       (unsigned long long)tr.rows, (unsigned long long)ts.rows,
	       tq.bad_rows + tr.bad_rows + ts.bad_rows ? "MISMATCH"
						       : "bit-identical");
}

/* Every f16 and bf16 pattern; every E8M0 exponent in an MXFP4 block. */
static void test_exhaustive(void)
{
	static uint16_t h[65536];
	struct tally t = { 0 };
	for (uint32_t i = 0; i < 65536; i++)
		h[i] = (uint16_t)i;
	compare(MS_TYPE_F16, "all 65536 patterns", (const uint8_t *)h, 1, 65536,
		&t);
	compare(MS_TYPE_BF16, "all 65536 patterns", (const uint8_t *)h, 1,
		65536, &t);

	uint8_t blocks[256 * 17];
	rand_bytes(blocks, sizeof(blocks));
	for (int e = 0; e < 256; e++)
		blocks[e * 17] = (uint8_t)e;
	compare(MS_TYPE_MXFP4, "every e8m0 exponent", blocks, 1, 256 * 32, &t);
	printf("exhaustive: all f16 and bf16 patterns, all 256 e8m0 scales: %s\n",
	       t.bad_rows ? "MISMATCH" : "bit-identical");
}

static void test_contract(void)
{
	float out[512];
	uint8_t in[2048] = { 0 };
	int n_supported = 0;
	for (uint32_t t = 0; t < MS_TYPE_COUNT + 8; t++) {
		bool want = false;
		for (size_t k = 0; k < N_TYPES; k++)
			want |= types[k].type == t;
		T_CHECK(ms_dequant_supported(t) == want,
			"ms_dequant_supported(%s) = %d", ms_type_name(t), !want);
		n_supported += ms_dequant_supported(t);
		if (!want)
			T_CHECK(ms_dequant_row(t, in, out, 256) == -EINVAL,
				"ms_dequant_row(%s) accepted", ms_type_name(t));
	}
	T_EQ_U64(n_supported, N_TYPES);
	T_CHECK(!ms_dequant_supported(UINT32_MAX), "UINT32_MAX supported");
	T_CHECK(ms_dequant_row(UINT32_MAX, in, out, 256) == -EINVAL,
		"ms_dequant_row(UINT32_MAX) accepted");

	for (size_t k = 0; k < N_TYPES; k++) {
		uint32_t t = types[k].type;
		const struct ms_type_info *ti = ms_type_get(t);
		const int64_t b = R.ggml_blck_size((int)t);
		T_EQ_U64(ti->blck, b);
		T_EQ_U64(ti->type_size, R.ggml_type_size((int)t));
		T_CHECK(ms_dequant_row(t, in, out, -b) == -EINVAL,
			"%s: n = %lld accepted", ti->name, (long long)-b);
		if (b > 1) {
			T_CHECK(ms_dequant_row(t, in, out, b + 1) == -EINVAL,
				"%s: n = %lld accepted", ti->name,
				(long long)(b + 1));
			T_CHECK(ms_dequant_row(t, in, out, b / 2) == -EINVAL,
				"%s: n = %lld accepted", ti->name,
				(long long)(b / 2));
		}
		T_CHECK(ms_dequant_row(t, in, out, 0) == 0, "%s: n = 0 refused",
			ti->name);
		T_CHECK(ms_dequant_row(t, NULL, out, b) == -EINVAL,
			"%s: NULL src accepted", ti->name);
		T_CHECK(ms_dequant_row(t, in, NULL, b) == -EINVAL,
			"%s: NULL dst accepted", ti->name);
	}
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One GLM-4.7 expert: gate and up Q2_K [5120 -> 1536], down Q3_K
 * [1536 -> 5120]; 8,540,160 bytes. Random bytes, best of 3. */
static void time_expert(void)
{
	const struct { uint32_t type; int64_t ne0, ne1; } p[3] = {
		{ MS_TYPE_Q2_K, 5120, 1536 },
		{ MS_TYPE_Q2_K, 5120, 1536 },
		{ MS_TYPE_Q3_K, 1536, 5120 },
	};
	uint8_t *q[3];
	uint64_t rs[3], total = 0;
	float *y = malloc((size_t)5120 * 1536 * sizeof(float));
	for (int j = 0; j < 3; j++) {
		if (ms_type_row_size(p[j].type, p[j].ne0, &rs[j], NULL))
			t_fatal("row size");
		q[j] = malloc((size_t)(rs[j] * (uint64_t)p[j].ne1));
		if (!q[j] || !y)
			t_fatal("out of memory");
		rand_bytes(q[j], (size_t)(rs[j] * (uint64_t)p[j].ne1));
		total += rs[j] * (uint64_t)p[j].ne1;
	}
	T_EQ_U64(total, 8540160);
	double best[2] = { 1e9, 1e9 };
	for (int rep = 0; rep < 3; rep++) {
		for (int who = 0; who < 2; who++) {
			double t0 = now();
			for (int j = 0; j < 3; j++)
				for (int64_t r = 0; r < p[j].ne1; r++) {
					const uint8_t *src = q[j] + (uint64_t)r * rs[j];
					float *dst = y + r * p[j].ne0;
					if (who == 0)
						ms_dequant_row(p[j].type, src, dst,
							       p[j].ne0);
					else
						ggml_ref_dequantize(&R, (int)p[j].type,
								    src, dst, p[j].ne0);
				}
			double dt = now() - t0;
			if (dt < best[who])
				best[who] = dt;
		}
	}
	printf("one GLM-4.7 expert (8,540,160 bytes Q2_K/Q2_K/Q3_K -> %.1f MB "
	       "f32): ours %.2f ms, ggml %.2f ms\n",
	       3.0 * 5120 * 1536 * 4 / 1e6, best[0] * 1e3, best[1] * 1e3);
	for (int j = 0; j < 3; j++)
		free(q[j]);
	free(y);
}

int main(void)
{
	ggml_ref_load_or_fail(&R);
	seed = rng = t_seed();
	test_contract();
	test_exhaustive();
	for (size_t k = 0; k < N_TYPES; k++)
		test_type((int)k);
	time_expert();
	return t_done();
}
