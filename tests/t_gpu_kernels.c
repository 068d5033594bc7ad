/*
 * t_gpu_kernels - every GPU path against the C reference.
 *
 *  - dequantisation, all 16 types, to f32 and f16: random bytes (NaN,
 *    infinite and subnormal scales included) and random valid blocks, at
 *    odd source offsets and misaligned destinations: f32 bit-identical to
 *    ms_dequant_row, f16 equal to that f32 rounded to nearest even (this
 *    file's own bitwise rounding, itself checked against known values and,
 *    where the CPU has F16C, against vcvtps2ph);
 *  - the fused matvec FFN (B = 1, 2, 3, 4, 8; fused and separate gate/up;
 *    all eight types; gate and up of different types; several experts per
 *    call with shared and separate inputs; GLM-4.7's shape with its
 *    Q2_K/Q2_K/Q3_K mix) against ms_expert_ffn's scalar path (double dots
 *    over f32 weights): relative L2 <= 1e-5; the same call twice gives the
 *    same bits;
 *  - the same with 8-bit activations (MATVEC_Q8, and AUTO after
 *    ms_gpu_ctx_set_q8: the same bits), all eight types, B = 1..8, several
 *    experts, GLM-4.7's shape: relative L2 against float64 printed and
 *    bounded (see check_matvec_q8), and the GPU equal to a CPU emulation
 *    of the same roundings to 4e-3 (it measures ~2e-7);
 *    ms_gpu_matmul exact and q8 against a float64 product, and
 *    ms_gpu_matmul_n (one preparation of x for several products) the same
 *    bits as ms_gpu_matmul for each;
 *  - split-K (ms_gpu_ctx_set_split): the same bits twice, within f32
 *    reassociation (3e-6) of the unsplit result, exact and q8;
 *  - the chunk (ms_gpu_ctx_set_chunk): every size the default's bits;
 *  - the cuBLAS prefill path (B = 16, 64, 512) against the same reference
 *    with a bound derived from its f16 operands, see check_cublas;
 *  - the dense cuBLAS GEMV/GEMM, f32 (<= 1e-5) and f16 weights;
 *  - the argument checks, and the host helper;
 *  - `moestream ffn --device gpu` against `--device cpu --path scalar` on
 *    `moestream mkmodel --preset tiny` (B = 1 and 3: matvec, <= 1e-5;
 *    B = 16: cuBLAS, <= 2e-3), the command as a user runs it, when
 *    $MS_BUILD/moestream is there (tools/gpu-check.sh packs it; under
 *    tests/cuda-emu it is the emulated one);
 *  - `bench gpu` (tools/bench_gpu.c) once on a small shape, in process:
 *    that it runs, skips the types without a fused kernel, and that its
 *    JSON's ratios are its GB/s over its copy bandwidth (the figures
 *    themselves are gpu-check.sh's business).
 *
 * Where there is no GPU it exits 77 with the reason; in a build without
 * CUDA it first checks that every GPU entry point answers -ENOTSUP "built
 * without CUDA", then exits 77.
 *
 * `t_gpu_kernels --bench [OPTIONS]` runs the GPU kernel benchmark instead
 * (tools/bench_gpu.c, the same as `moestream bench gpu`): tools/gpu-check.sh
 * uses it.
 *
 * Weights are random valid blocks as `moestream mkmodel` writes them
 * (random bits, small finite f16 scales), so no ggml library is needed and
 * the test runs on a GPU machine with nothing but CUDA. Fresh seed every
 * run (MS_SEED=... replays one).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../tools/bench_gpu.h"
#include "../tools/tools.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

#define TOL_MATVEC 1e-5
#define TOL_CUBLAS_EXACT 2e-3 /* against the f32 reference */
#define TOL_CUBLAS_EMUL 1e-4  /* against the f16-operand emulation */
#define TOL_DENSE_F32 1e-5
/* MATVEC_Q8 against float64: one product, the FFN (two roundings), and a
 * split-K result against the unsplit one; derived at check_matvec_q8 */
#define TOL_Q8_PRODUCT 1.3e-2
#define TOL_Q8_FFN 0.25
#define TOL_Q8_EMUL 4e-3
#define TOL_SPLIT 3e-6

static uint64_t rng;
static struct ms_gpu_ctx *ctx;

/* Roughly normal: the sum of four uniforms, centred, unit variance. */
static float gauss(void)
{
	double s = 0;
	for (int i = 0; i < 4; i++)
		s += (double)(t_rand(&rng) >> 11) / 9007199254740992.0;
	return (float)((s - 2.0) * 1.7320508075688772);
}

/* ---- f16 on the host, written independently of the device code ---------- */

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

/* float -> half, round to nearest even, by integer arithmetic on the
 * significand. NaN: sign, quiet bit, top 9 payload bits (vcvtps2ph). */
static uint16_t h_f32_f16(float f)
{
	const uint32_t u = f32_bits(f);
	const uint32_t sign = (u >> 16) & 0x8000u, ex = (u >> 23) & 0xffu,
		       man = u & 0x7fffffu;
	if (ex == 0xff)
		return (uint16_t)(sign | (man ? 0x7e00u | (man >> 13) : 0x7c00u));
	if (!ex && !man)
		return (uint16_t)sign;
	const uint64_t m = ex ? man | 0x800000u : man;
	const int E = (ex ? (int)ex : 1) - 150;       /* value = m 2^E */
	const int lg = 63 - __builtin_clzll(m) + E;   /* floor(log2 value) */
	int qe = lg - 10;                             /* f16 quantum 2^qe */
	if (qe < -24)
		qe = -24;
	const int sh = qe - E;
	uint64_t q;
	if (sh <= 0) {
		q = m << -sh;
	} else if (sh >= 60) {
		q = 0;
	} else {
		q = m >> sh;
		const uint64_t rem = m & ((1ull << sh) - 1),
			       half = 1ull << (sh - 1);
		if (rem > half || (rem == half && (q & 1)))
			q++;
	}
	/* q 2^qe with q <= 2048: subnormal when qe = -24 and q < 1024; the
	 * encoding (qe + 24) * 1024 + q covers both and a carry to 2048 */
	uint64_t bits = (uint64_t)(qe + 24) * 1024 + q;
	if (bits >= 0x7c00)
		bits = 0x7c00;
	return (uint16_t)(sign | bits);
}

static float h_f16_f32(uint16_t h)
{
	const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	const int ex = (h >> 10) & 0x1f, man = h & 0x3ff;
	if (ex == 0x1f)
		return bits_f32(sign | 0x7f800000u | (uint32_t)man << 13);
	double v = ex ? ldexp(1024 + man, ex - 25) : ldexp(man, -24);
	return (float)(sign ? -v : v);
}

static float round_f16(float f)
{
	return h_f16_f32(h_f32_f16(f));
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
__attribute__((target("f16c"))) static uint16_t hw_f32_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

static bool cpu_f16c(void)
{
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static void check_host_f16(void)
{
	static const struct {
		uint32_t f32;
		uint16_t f16;
	} known[] = {
		{ 0x3f800000u, 0x3c00 }, /* 1 */
		{ 0xc0000000u, 0xc000 }, /* -2 */
		{ 0x477fe000u, 0x7bff }, /* 65504 */
		{ 0x477ff000u, 0x7c00 }, /* 65520: ties to even, overflows */
		{ 0x477fefffu, 0x7bff }, /* just below */
		{ 0x33800000u, 0x0001 }, /* 2^-24 */
		{ 0x33000000u, 0x0000 }, /* 2^-25: tie, to even 0 */
		{ 0x33400000u, 0x0001 }, /* 1.5 * 2^-25 */
		{ 0x38800000u, 0x0400 }, /* 2^-14, smallest normal */
		{ 0x387fc000u, 0x03ff }, /* largest subnormal */
		{ 0x387fe000u, 0x0400 }, /* rounds up into the normals */
		{ 0x3f801000u, 0x3c00 }, /* 1 + 2^-11: tie, to even */
		{ 0x3f803000u, 0x3c02 }, /* 1 + 3 * 2^-11: tie, to even */
		{ 0x7f800000u, 0x7c00 }, /* inf */
		{ 0x7fc00000u, 0x7e00 }, /* qNaN */
		{ 0xffc02000u, 0xfe01 }, /* -qNaN with payload */
		{ 0x00000001u, 0x0000 }, /* f32 subnormal */
		{ 0x80000000u, 0x8000 }, /* -0 */
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		uint16_t h = h_f32_f16(bits_f32(known[i].f32));
		T_CHECK(h == known[i].f16, "f16(0x%08x) = 0x%04x, expected 0x%04x",
			known[i].f32, h, known[i].f16);
	}
#if defined(__x86_64__)
	if (cpu_f16c()) {
		int bad = 0;
		for (int i = 0; i < 1000000 && bad < 5; i++) {
			uint32_t u = (uint32_t)t_rand(&rng);
			float f = bits_f32(u);
			uint16_t a = h_f32_f16(f), b = hw_f32_f16(f);
			if (a != b) {
				T_CHECK(0, "f16(0x%08x): 0x%04x, F16C 0x%04x", u,
					a, b);
				bad++;
			}
		}
		printf("host f16 rounding = F16C on 1e6 random floats\n");
	}
#endif
}

/* ---- random valid blocks ------------------------------------------------- */

/* `size` bytes (whole blocks) of `type`: random bits with small finite
 * scales (quantized types: tool_fill_blocks, mkmodel's recipe), gaussian
 * values (float types), or (valid = false) random bits only. */
static void fill(uint8_t *buf, size_t size, uint32_t type, bool valid)
{
	const bool floats = type == MS_TYPE_F32 || type == MS_TYPE_F16 ||
			    type == MS_TYPE_BF16;
	if (valid && !floats) {
		/* tool_splitmix is t_rand's generator: the same draws */
		tool_fill_blocks(buf, size, type, &rng);
		return;
	}
	for (size_t i = 0; i < size; i += 8) {
		uint64_t r = t_rand(&rng);
		memcpy(buf + i, &r, size - i < 8 ? size - i : 8);
	}
	if (!valid)
		return;
	if (type == MS_TYPE_F32) {
		for (size_t i = 0; i + 4 <= size; i += 4) {
			float f = 0.05f * gauss();
			memcpy(buf + i, &f, 4);
		}
		return;
	}
	if (type == MS_TYPE_F16 || type == MS_TYPE_BF16) {
		for (size_t i = 0; i + 2 <= size; i += 2) {
			float f = 0.05f * gauss();
			uint16_t h = type == MS_TYPE_F16 ? h_f32_f16(f)
							 : (uint16_t)(f32_bits(f) >> 16);
			memcpy(buf + i, &h, 2);
		}
	}
}

static double rel_l2(const float *y, const float *ref, int64_t n)
{
	double num = 0, den = 0;
	for (int64_t i = 0; i < n; i++) {
		double e = (double)y[i] - (double)ref[i];
		num += e * e;
		den += (double)ref[i] * (double)ref[i];
	}
	if (!(num == num))
		return INFINITY;
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const uint32_t all_types[] = {
	MS_TYPE_F32,  MS_TYPE_F16,    MS_TYPE_BF16,   MS_TYPE_Q4_0,
	MS_TYPE_Q4_1, MS_TYPE_Q5_0,   MS_TYPE_Q5_1,   MS_TYPE_Q8_0,
	MS_TYPE_Q2_K, MS_TYPE_Q3_K,   MS_TYPE_Q4_K,   MS_TYPE_Q5_K,
	MS_TYPE_Q6_K, MS_TYPE_IQ4_NL, MS_TYPE_IQ4_XS, MS_TYPE_MXFP4,
};
#define N_ALL (sizeof(all_types) / sizeof(all_types[0]))

static const uint32_t mv_types[] = {
	MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K, MS_TYPE_Q5_K,
	MS_TYPE_Q6_K, MS_TYPE_Q8_0, MS_TYPE_Q4_0, MS_TYPE_MXFP4,
};
#define N_MV (sizeof(mv_types) / sizeof(mv_types[0]))

/* ---- dequantisation ----------------------------------------------------------- */

/* One type, one input: every (source offset, f16, destination offset)
 * against ms_dequant_row's bits. */
static int dequant_case(uint32_t type, const uint8_t *q, int64_t n,
			size_t bytes, const char *what)
{
	float *ref = t_xmalloc(sizeof(float) * (size_t)n);
	float *got = t_xmalloc(sizeof(float) * (size_t)n);
	uint16_t *got16 = t_xmalloc(2 * (size_t)n);
	struct ms_err err = { 0 };
	int bad = 0;
	if (ms_dequant_row(type, q, ref, n))
		t_fatal("ms_dequant_row(%s) failed", ms_type_name(type));
	uint8_t *src = t_dev_alloc(bytes + 16);
	uint8_t *dst = t_dev_alloc((size_t)n * 4 + 64);
	static const int src_off[] = { 0, 1, 6 };
	for (int so = 0; so < 3 && !bad; so++) {
		t_dev_up(src + src_off[so], q, bytes);
		for (int f16 = 0; f16 <= 1 && !bad; f16++)
			for (int dofs = 0; dofs <= 1 && !bad; dofs++) {
				/* dofs: one element in, so the vector store
				 * path is off */
				size_t esz = f16 ? 2 : 4;
				uint8_t *d = dst + (size_t)dofs * esz;
				if (ms_gpu_memset(dst, 0xa5, (size_t)n * 4 + 64,
						  &err))
					t_fatal("%s", err.msg);
				int rc = ms_gpu_dequant(type, src + src_off[so],
							d, n, f16,
							ms_gpu_ctx_stream(ctx),
							&err);
				if (rc) {
					T_CHECK(0, "ms_gpu_dequant(%s) = %d: %s",
						ms_type_name(type), rc, err.msg);
					bad++;
					break;
				}
				if (f16)
					t_dev_to(ctx, got16, d, 2 * (size_t)n);
				else
					t_dev_to(ctx, got, d, 4 * (size_t)n);
				for (int64_t i = 0; i < n; i++) {
					bool ok;
					if (f16)
						ok = got16[i] == h_f32_f16(ref[i]);
					else
						ok = !memcmp(&got[i], &ref[i], 4);
					if (!ok) {
						T_CHECK(0,
							"dequant %s %s (%s, src+%d, "
							"dst+%d) [%lld]: 0x%08x, "
							"reference 0x%08x (%.9g) -> "
							"f16 0x%04x",
							ms_type_name(type),
							f16 ? "f16" : "f32", what,
							src_off[so], dofs,
							(long long)i,
							f16 ? got16[i]
							    : f32_bits(got[i]),
							f32_bits(ref[i]),
							(double)ref[i],
							h_f32_f16(ref[i]));
						bad++;
						break;
					}
				}
			}
	}
	ms_gpu_free(src);
	ms_gpu_free(dst);
	free(ref);
	free(got);
	free(got16);
	return bad;
}

static void check_dequant(void)
{
	for (size_t t = 0; t < N_ALL; t++) {
		uint32_t type = all_types[t];
		const struct ms_type_info *ti = ms_type_get(type);
		T_CHECK(ms_gpu_dequant_supported(type), "%s: no GPU dequantiser",
			ms_type_name(type));
		/* 64 blocks of 256 or 512 of 32; the scalar types an odd
		 * count (the tail without vector stores) */
		int64_t n = ti->blck == 1 ? 8191 : ti->blck == 256 ? 64 * 256
								   : 512 * 32;
		size_t bytes = (size_t)(n / ti->blck) * ti->type_size;
		uint8_t *q = t_xmalloc(bytes);
		int bad = 0;
		for (int rep = 0; rep < 3; rep++) {
			fill(q, bytes, type, false);
			bad += dequant_case(type, q, n, bytes, "random bytes");
		}
		fill(q, bytes, type, true);
		bad += dequant_case(type, q, n, bytes, "valid blocks");
		printf("dequant %-7s f32 %s, f16 %s\n", ms_type_name(type),
		       bad ? "DIFFERS" : "= C reference bit for bit",
		       bad ? "DIFFERS" : "= reference rounded to nearest even");
		free(q);
	}
}

/* ---- experts ---------------------------------------------------------------- */

struct hexpert {
	struct ms_expert_view v;      /* host */
	struct ms_gpu_expert g;       /* device */
	uint8_t *h[3];
	void *d[3];
	uint64_t bytes[3];
};

/* ty = gate, up, down (fused: gate must equal up; gate_up = gate rows then
 * up rows). dev_off: bytes added to each device pointer (misalignment). */
static void hexpert_make(struct hexpert *x, const uint32_t ty[3], int64_t E,
			 int64_t F, bool fused, size_t dev_off)
{
	memset(x, 0, sizeof(*x));
	struct ms_err err = { 0 };
	x->v.fused = fused;
	x->v.n_embd = E;
	x->v.n_ff = F;
	if (fused) {
		x->v.type[0] = ty[0];
		x->v.type[1] = ty[2];
	} else {
		memcpy(x->v.type, ty, sizeof(x->v.type));
	}
	if (ms_expert_view_bytes(&x->v, x->bytes, &err))
		t_fatal("%s", err.msg);
	int np = fused ? 2 : 3;
	for (int j = 0; j < np; j++) {
		x->h[j] = t_xmalloc(x->bytes[j]);
		fill(x->h[j], x->bytes[j], x->v.type[j], true);
		x->v.data[j] = x->h[j];
		x->d[j] = t_dev_alloc(x->bytes[j] + dev_off + 16);
		t_dev_up((uint8_t *)x->d[j] + dev_off, x->h[j], x->bytes[j]);
		x->g.data[j] = (uint8_t *)x->d[j] + dev_off;
		x->g.type[j] = x->v.type[j];
	}
	x->g.fused = fused;
	x->g.n_embd = E;
	x->g.n_ff = F;
}

static void hexpert_free(struct hexpert *x)
{
	for (int j = 0; j < 3; j++) {
		free(x->h[j]);
		ms_gpu_free(x->d[j]);
	}
}

/* The C reference: the scalar path (ms_dequant_row + double dots). */
static void ref_ffn(const struct hexpert *x, const float *in, float *out,
		    int64_t B)
{
	struct ms_ffn_opts o = { .path = MS_FFN_PATH_SCALAR };
	struct ms_err err = { 0 };
	if (ms_expert_ffn(&x->v, in, out, B, &o, &err))
		t_fatal("reference ffn: %s", err.msg);
}

static const char *ty_name(const uint32_t ty[3], char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s", ms_type_name(ty[0]),
		 ms_type_name(ty[1]), ms_type_name(ty[2]));
	return buf;
}

static double worst_matvec;

static void emul_ffn(const struct hexpert *x, const float *in, float *out,
		     int64_t B, bool q8);

/* MATVEC_Q8 cases: the worst distance from the CPU emulation of its
 * roundings, and the worst error that emulation predicts */
static double q8_vs_emul, q8_predicted;

/* n experts of the same types, B tokens, shared or separate x: the GPU
 * against the reference for each expert. Returns the worst error. */
static double run_ffn_case(const uint32_t ty[3], int64_t E, int64_t F,
			   bool fused, int n, int64_t B, bool shared_x,
			   enum ms_gpu_ffn_path path, size_t dev_off,
			   double tol, bool twice)
{
	struct hexpert *x = t_xmalloc(sizeof(*x) * (size_t)n);
	struct ms_gpu_expert *ge = t_xmalloc(sizeof(*ge) * (size_t)n);
	int nx = shared_x ? 1 : n;
	size_t xs = (size_t)(B * E);
	float *in = t_xmalloc(sizeof(float) * xs * (size_t)nx);
	float *ref = t_xmalloc(sizeof(float) * xs);
	float *got = t_xmalloc(sizeof(float) * xs * (size_t)n);
	float *got2 = t_xmalloc(sizeof(float) * xs * (size_t)n);
	char nm[64];
	struct ms_err err = { 0 };
	double worst = 0;
	for (int i = 0; i < n; i++) {
		hexpert_make(&x[i], ty, E, F, fused, dev_off);
		ge[i] = x[i].g;
	}
	for (size_t i = 0; i < xs * (size_t)nx; i++)
		in[i] = gauss();
	float *din = t_dev_alloc(sizeof(float) * xs * (size_t)nx);
	float *dout = t_dev_alloc(sizeof(float) * xs * (size_t)n);
	t_dev_up(din, in, sizeof(float) * xs * (size_t)nx);
	if (ms_gpu_memset(dout, 0xff, sizeof(float) * xs * (size_t)n, &err))
		t_fatal("%s", err.msg);
	int rc = ms_gpu_experts_ffn(ctx, ge, n, din, shared_x ? 0 : (int64_t)xs,
				    dout, B, path, &err);
	T_CHECK(rc == 0, "%s %s B=%lld x%d: %s", ty_name(ty, nm, sizeof(nm)),
		ms_gpu_ffn_path_name(path), (long long)B, n, err.msg);
	if (rc)
		goto out;
	t_dev_to(ctx, got, dout, sizeof(float) * xs * (size_t)n);
	if (twice) {
		if (ms_gpu_memset(dout, 0xff, sizeof(float) * xs * (size_t)n,
				  &err) ||
		    ms_gpu_experts_ffn(ctx, ge, n, din,
				       shared_x ? 0 : (int64_t)xs, dout, B,
				       path, &err))
			t_fatal("second run: %s", err.msg);
		t_dev_to(ctx, got2, dout, sizeof(float) * xs * (size_t)n);
		T_CHECK(!memcmp(got, got2, sizeof(float) * xs * (size_t)n),
			"%s B=%lld: two runs differ", ty_name(ty, nm, sizeof(nm)),
			(long long)B);
	}
	for (int i = 0; i < n; i++) {
		const float *xi = in + (shared_x ? 0 : (size_t)i * xs);
		ref_ffn(&x[i], xi, ref, B);
		double e = rel_l2(got + (size_t)i * xs, ref, (int64_t)xs);
		if (e > worst)
			worst = e;
		if (path != MS_GPU_FFN_MATVEC_Q8)
			continue;
		/* got2 is free after the comparison above */
		emul_ffn(&x[i], xi, got2, B, true);
		const double ve = rel_l2(got + (size_t)i * xs, got2, (int64_t)xs);
		const double pr = rel_l2(got2, ref, (int64_t)xs);
		T_CHECK(ve <= TOL_Q8_EMUL,
			"%s matvec-q8 B=%lld expert %d: %.3g from the CPU "
			"emulation of its roundings (bound %.0e)",
			ty_name(ty, nm, sizeof(nm)), (long long)B, i, ve,
			TOL_Q8_EMUL);
		q8_vs_emul = ve > q8_vs_emul ? ve : q8_vs_emul;
		q8_predicted = pr > q8_predicted ? pr : q8_predicted;
	}
	T_CHECK(worst <= tol,
		"%s %s E=%lld F=%lld %s B=%lld x%d%s: relative L2 %.3g > %.1g",
		ty_name(ty, nm, sizeof(nm)), ms_gpu_ffn_path_name(path),
		(long long)E, (long long)F, fused ? "fused" : "separate",
		(long long)B, n, shared_x ? " shared x" : "", worst, tol);
out:
	ms_gpu_free(din);
	ms_gpu_free(dout);
	for (int i = 0; i < n; i++)
		hexpert_free(&x[i]);
	free(x);
	free(ge);
	free(in);
	free(ref);
	free(got);
	free(got2);
	return worst;
}

static void check_matvec(void)
{
	static const int64_t Bs[] = { 1, 2, 3, 4, 8 };
	char nm[64];
	for (size_t t = 0; t < N_MV; t++) {
		uint32_t T = mv_types[t];
		uint32_t ty[3] = { T, T, T };
		T_CHECK(ms_gpu_matvec_supported(T), "%s: no matvec kernel",
			ms_type_name(T));
		const struct ms_type_info *ti = ms_type_get(T);
		/* 32-element types also on a shape with partial tiles */
		int n_shapes = ti->blck == 32 ? 2 : 1;
		for (int s = 0; s < n_shapes; s++) {
			int64_t E = s ? 160 : 512, F = s ? 96 : 256;
			double w = 0;
			for (size_t k = 0; k < sizeof(Bs) / sizeof(Bs[0]); k++)
				for (int fused = 0; fused <= 1; fused++) {
					double e = run_ffn_case(
						ty, E, F, fused, 1, Bs[k], true,
						MS_GPU_FFN_MATVEC, 0,
						TOL_MATVEC, k == 0);
					w = e > w ? e : w;
				}
			printf("matvec %-22s E=%-4lld F=%-4lld B=1,2,3,4,8 "
			       "fused+separate: worst relative L2 %.2e\n",
			       ty_name(ty, nm, sizeof(nm)), (long long)E,
			       (long long)F, w);
			worst_matvec = w > worst_matvec ? w : worst_matvec;
		}
	}
	/* MXFP4 at an odd address (it needs none) */
	{
		uint32_t ty[3] = { MS_TYPE_MXFP4, MS_TYPE_MXFP4, MS_TYPE_MXFP4 };
		double e = run_ffn_case(ty, 160, 96, false, 1, 3, true,
					MS_GPU_FFN_MATVEC, 1, TOL_MATVEC, false);
		printf("matvec mxfp4 at an odd address: %.2e\n", e);
	}
	/* gate and up of different types: two plain launches */
	{
		uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q6_K, MS_TYPE_Q8_0 };
		double w = 0;
		for (int k = 0; k < 3; k++) {
			double e = run_ffn_case(ty, 512, 256, false, 1,
						(int64_t[]){ 1, 4, 8 }[k], true,
						MS_GPU_FFN_MATVEC, 0,
						TOL_MATVEC, false);
			w = e > w ? e : w;
		}
		printf("matvec %-22s (gate != up) B=1,4,8: %.2e\n",
		       ty_name(ty, nm, sizeof(nm)), w);
	}
	/* several experts per call */
	{
		uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q5_K };
		double a = run_ffn_case(ty, 512, 256, true, 3, 2, true,
					MS_GPU_FFN_MATVEC, 0, TOL_MATVEC, true);
		double b = run_ffn_case(ty, 512, 256, false, 3, 5, false,
					MS_GPU_FFN_MATVEC, 0, TOL_MATVEC, false);
		printf("matvec 3 experts per call, shared x %.2e, separate x "
		       "%.2e\n",
		       a, b);
	}
	/* GLM-4.7: n_embd 5120, n_ff 1536, UD-Q2_K_XL's Q2_K/Q2_K/Q3_K */
	{
		uint32_t ty[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
		double w = 0;
		for (int fused = 0; fused <= 1; fused++)
			for (int k = 0; k < 2; k++) {
				double e = run_ffn_case(
					ty, 5120, 1536, fused, k ? 2 : 1,
					k ? 8 : 1, true, MS_GPU_FFN_MATVEC, 0,
					TOL_MATVEC, k == 0);
				w = e > w ? e : w;
			}
		printf("matvec GLM-4.7 %s 5120x1536 B=1 (1 expert), B=8 (2 "
		       "experts), fused+separate: %.2e\n",
		       ty_name(ty, nm, sizeof(nm)), w);
		worst_matvec = w > worst_matvec ? w : worst_matvec;
	}
}

/* ---- the 8-bit-activation matvec ------------------------------------------ */

/*
 * MATVEC_Q8 rounds each block of 32 inputs to q * d, d = amax / 127 and
 * q = rint(x / d), as ggml's q8_1 does: per element an error uniform in
 * +-d/2, an RMS of d / sqrt(12) = amax / (127 sqrt 12) = 2.27e-3 amax. A
 * dot product with the rounded input then has a relative error of about
 * that RMS over the input's: 2.27e-3 x amax / rms (in expectation over the
 * input, whatever the weights). gauss() inputs (the sum of four uniforms)
 * give amax / rms ~2.3 in a block of 32, so ~5e-3 per product; no block of
 * 32 can exceed sqrt(32) = 5.66, so 2.27e-3 x 5.66 = 1.29e-2 bounds one
 * product (TOL_Q8_PRODUCT, ms_gpu_matmul; measured ~5e-3).
 *
 * The FFN rounds twice, x and h, and x's error reaches y through silu(g) u
 * (about sqrt(2) of it), so sqrt(e_h^2 + 2 e_x^2) ~ 1e-2 is the typical
 * figure; but h is heavy-tailed (amax / rms near the sqrt(32) limit) and
 * the test's random K-quant blocks have large per-group offsets (A q - M
 * with unrelated A and M: every weight of a group one sign), which make
 * the errors of a group add coherently, so single experts reach 2-4e-2.
 * That is the rounding's own error, not the kernel's: each case is also
 * computed on the CPU with the same roundings (emul_ffn with q8: x and h
 * rounded per block exactly as prep_kernel<1> does, double dots), and the
 * GPU must match that emulation to TOL_Q8_EMUL (what it measures is ~2e-7:
 * f32 sums; the bound leaves room for a rare h element whose f32 and
 * double values round to neighbouring q, one step of h moving y by about
 * (amax / rms) / (127 sqrt F) ~ 1.5e-3 at F = 256). Against float64 the
 * FFN is only held to TOL_Q8_FFN = 0.25, a bound against gross errors (a
 * wrong scale or block is off by ~1): 4 x sqrt(3) x 1.29e-2 ~ 9e-2 (the
 * per-product bound for the three roundings, times 4 for the coherent
 * groups of these random weights) was only 2.2x the worst of five seeds
 * (4.1e-2, q5_K), too close for a test CI runs on a fresh seed each time;
 * the kernel's own accuracy is the emulation check above, and the figures
 * printed are the measure of the rounding's error.
 */
static double worst_q8;

/* Same bits from MATVEC_Q8 and from AUTO on a context set to q8, and
 * AUTO back on the exact kernel after unsetting it. */
static void check_q8_auto(void)
{
	uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q6_K };
	const int64_t E = 512, F = 256, B = 2;
	struct hexpert x;
	struct ms_err err = { 0 };
	hexpert_make(&x, ty, E, F, true, 0);
	float *in = t_xmalloc(sizeof(float) * (size_t)(B * E));
	float *y[3];
	for (int k = 0; k < 3; k++)
		y[k] = t_xmalloc(sizeof(float) * (size_t)(B * E));
	for (int64_t i = 0; i < B * E; i++)
		in[i] = gauss();
	float *din = t_dev_alloc(sizeof(float) * (size_t)(B * E));
	float *dout = t_dev_alloc(sizeof(float) * (size_t)(B * E));
	t_dev_up(din, in, sizeof(float) * (size_t)(B * E));
	static const enum ms_gpu_ffn_path paths[3] = {
		MS_GPU_FFN_MATVEC_Q8, MS_GPU_FFN_AUTO, MS_GPU_FFN_AUTO
	};
	for (int k = 0; k < 3; k++) {
		if (ms_gpu_ctx_set_q8(ctx, k == 1, &err) ||
		    ms_gpu_expert_ffn(ctx, &x.g, din, dout, B, paths[k], &err))
			t_fatal("q8 auto %d: %s", k, err.msg);
		t_dev_to(ctx, y[k], dout, sizeof(float) * (size_t)(B * E));
	}
	T_CHECK(!memcmp(y[0], y[1], sizeof(float) * (size_t)(B * E)),
		"auto with q8 set differs from matvec-q8");
	float *ref = t_xmalloc(sizeof(float) * (size_t)(B * E));
	ref_ffn(&x, in, ref, B);
	const double eq = rel_l2(y[1], ref, B * E), ee = rel_l2(y[2], ref, B * E);
	T_CHECK(ee <= TOL_MATVEC, "auto after q8 unset: %.3g (exact?)", ee);
	printf("auto: q8 set = matvec-q8 bit for bit (%.2e), unset exact "
	       "(%.2e)\n",
	       eq, ee);
	T_CHECK(!strcmp(ms_gpu_ffn_path_name(MS_GPU_FFN_MATVEC_Q8),
			"matvec-q8"),
		"path name %s", ms_gpu_ffn_path_name(MS_GPU_FFN_MATVEC_Q8));
	ms_gpu_free(din);
	ms_gpu_free(dout);
	hexpert_free(&x);
	free(in);
	free(ref);
	for (int k = 0; k < 3; k++)
		free(y[k]);
}

static void check_matvec_q8(void)
{
	static const int64_t Bs[] = { 1, 2, 3, 4, 8 };
	const enum ms_gpu_ffn_path q8 = MS_GPU_FFN_MATVEC_Q8;
	char nm[64];
	for (size_t t = 0; t < N_MV; t++) {
		uint32_t T = mv_types[t];
		uint32_t ty[3] = { T, T, T };
		double w = 0;
		/* fused and separate in turn; the first twice (same bits) */
		for (size_t k = 0; k < sizeof(Bs) / sizeof(Bs[0]); k++) {
			double e = run_ffn_case(ty, 512, 256, k & 1, 1, Bs[k],
						true, q8, 0, TOL_Q8_FFN, k == 0);
			w = e > w ? e : w;
		}
		printf("matvec-q8 %-19s E=512  F=256  B=1,2,3,4,8: worst "
		       "relative L2 vs float64 %.2e (bound %.2g; the "
		       "roundings predict %.2e, GPU vs their emulation "
		       "%.1e)\n",
		       ty_name(ty, nm, sizeof(nm)), w, TOL_Q8_FFN, q8_predicted,
		       q8_vs_emul);
		q8_predicted = q8_vs_emul = 0;
		worst_q8 = w > worst_q8 ? w : worst_q8;
	}
	{
		uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q6_K, MS_TYPE_Q8_0 };
		double e = run_ffn_case(ty, 512, 256, false, 1, 4, true, q8, 0,
					TOL_Q8_FFN, false);
		printf("matvec-q8 %-19s (gate != up) B=4: %.2e\n",
		       ty_name(ty, nm, sizeof(nm)), e);
		worst_q8 = e > worst_q8 ? e : worst_q8;
	}
	{
		uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q5_K };
		double a = run_ffn_case(ty, 512, 256, true, 3, 2, true, q8, 0,
					TOL_Q8_FFN, true);
		double b = run_ffn_case(ty, 512, 256, false, 3, 3, false, q8, 0,
					TOL_Q8_FFN, false);
		printf("matvec-q8 3 experts per call, shared x %.2e, separate "
		       "x %.2e\n",
		       a, b);
		worst_q8 = a > worst_q8 ? a : worst_q8;
		worst_q8 = b > worst_q8 ? b : worst_q8;
	}
	{
		uint32_t ty[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
		double a = run_ffn_case(ty, 5120, 1536, true, 1, 1, true, q8, 0,
					TOL_Q8_FFN, true);
		double b = run_ffn_case(ty, 5120, 1536, false, 2, 8, true, q8, 0,
					TOL_Q8_FFN, false);
		printf("matvec-q8 GLM-4.7 %s 5120x1536 B=1 (1 expert, fused) "
		       "%.2e, B=8 (2 experts) %.2e\n",
		       ty_name(ty, nm, sizeof(nm)), a, b);
		worst_q8 = a > worst_q8 ? a : worst_q8;
		worst_q8 = b > worst_q8 ? b : worst_q8;
	}
	printf("matvec-q8 the cases above: the roundings predict up to %.2e, "
	       "GPU vs their emulation %.1e (bound %.0e)\n",
	       q8_predicted, q8_vs_emul, TOL_Q8_EMUL);
	check_q8_auto();
}

/* ms_gpu_matmul_n over one input: a product of all n_out rows, one of the
 * first half and the whole again, each the bits of its own ms_gpu_matmul
 * (the split by the rule, as the engine runs them). */
static void matmul_n_case(uint32_t type, const void *dw, const float *dx,
			  int64_t n_in, int64_t n_out, int64_t B, bool q8)
{
	struct ms_err err = { 0 };
	const int64_t rows[3] = { n_out, n_out / 2 > 0 ? n_out / 2 : 1, n_out };
	float *dy = t_dev_alloc(sizeof(float) * (size_t)(3 * B * n_out));
	float *one = t_xmalloc(sizeof(float) * (size_t)(B * n_out));
	float *all = t_xmalloc(sizeof(float) * (size_t)(3 * B * n_out));
	struct ms_gpu_mm mm[3];
	for (int i = 0; i < 3; i++)
		mm[i] = (struct ms_gpu_mm){ type, dw, rows[i],
					    dy + (size_t)(i * B * n_out),
					    true };
	if (ms_gpu_ctx_set_split(ctx, 0, &err) ||
	    ms_gpu_memset(dy, 0xff, sizeof(float) * (size_t)(3 * B * n_out),
			  &err) ||
	    ms_gpu_matmul_n(ctx, mm, 3, n_in, dx, NULL, B, &err))
		t_fatal("matmul_n %s: %s", ms_type_name(type), err.msg);
	t_dev_to(ctx, all, dy, sizeof(float) * (size_t)(3 * B * n_out));
	int same = 0;
	for (int i = 0; i < 3; i++) {
		if (ms_gpu_memset(dy, 0xff, sizeof(float) * (size_t)(B * n_out),
				  &err) ||
		    ms_gpu_matmul(ctx, type, dw, n_in, rows[i], dx, dy, B, &err))
			t_fatal("matmul %s: %s", ms_type_name(type), err.msg);
		t_dev_to(ctx, one, dy, sizeof(float) * (size_t)(B * rows[i]));
		same += !memcmp(one, all + (size_t)(i * B * n_out),
				sizeof(float) * (size_t)(B * rows[i]));
	}
	T_CHECK(same == 3, "matmul_n %s %s %lldx%lld B=%lld: %d of 3 products "
		"the bits of their own matmul", ms_type_name(type),
		q8 ? "q8" : "exact", (long long)n_out, (long long)n_in,
		(long long)B, same);
	ms_gpu_free(dy);
	free(one);
	free(all);
}

/* ms_gpu_matmul (exact, q8; unsplit and split into `split` ranges) against
 * a float64 product; split results within TOL_SPLIT of the unsplit ones and
 * the same bits twice. The matrix lies at byte off of its device buffer
 * (its rows then start off bytes into their words). */
static void matmul_case_at(uint32_t type, int64_t n_in, int64_t n_out,
			   int64_t B, int split, size_t off)
{
	const struct ms_type_info *ti = ms_type_get(type);
	const size_t bytes = (size_t)(n_out * (n_in / ti->blck)) * ti->type_size;
	struct ms_err err = { 0 };
	uint8_t *w = t_xmalloc(bytes);
	fill(w, bytes, type, true);
	float *wf = t_xmalloc(sizeof(float) * (size_t)(n_in * n_out));
	if (ms_dequant_row(type, w, wf, n_in * n_out))
		t_fatal("dequant %s", ms_type_name(type));
	float *in = t_xmalloc(sizeof(float) * (size_t)(B * n_in));
	for (int64_t i = 0; i < B * n_in; i++)
		in[i] = gauss();
	const size_t ny = (size_t)(B * n_out);
	float *ref = t_xmalloc(sizeof(float) * ny), *y[2][3];
	for (int64_t b = 0; b < B; b++)
		for (int64_t r = 0; r < n_out; r++) {
			double s = 0;
			for (int64_t i = 0; i < n_in; i++)
				s += (double)wf[r * n_in + i] * in[b * n_in + i];
			ref[b * n_out + r] = (float)s;
		}
	uint8_t *dbuf = t_dev_alloc(bytes + off), *dw = dbuf + off;
	float *dx = t_dev_alloc(sizeof(float) * (size_t)(B * n_in));
	float *dy = t_dev_alloc(sizeof(float) * ny);
	t_dev_up(dw, w, bytes);
	t_dev_up(dx, in, sizeof(float) * (size_t)(B * n_in));
	for (int q8 = 0; q8 <= 1; q8++) {
		/* [0] unsplit, [1] split, [2] split again */
		for (int k = 0; k < 3; k++) {
			y[q8][k] = t_xmalloc(sizeof(float) * ny);
			if (ms_gpu_ctx_set_q8(ctx, q8, &err) ||
			    ms_gpu_ctx_set_split(ctx, k ? split : 1, &err) ||
			    ms_gpu_memset(dy, 0xff, sizeof(float) * ny, &err) ||
			    ms_gpu_matmul(ctx, type, dw, n_in, n_out, dx, dy, B,
					  &err))
				t_fatal("matmul %s: %s", ms_type_name(type),
					err.msg);
			t_dev_to(ctx, y[q8][k], dy, sizeof(float) * ny);
		}
		const double e = rel_l2(y[q8][0], ref, (int64_t)ny);
		const double es = rel_l2(y[q8][1], y[q8][0], (int64_t)ny);
		const double tol = q8 ? TOL_Q8_PRODUCT : TOL_MATVEC;
		T_CHECK(e <= tol,
			"matmul %s %s %lldx%lld B=%lld at +%zu: %.3g > %.1g",
			ms_type_name(type), q8 ? "q8" : "exact",
			(long long)n_out, (long long)n_in, (long long)B, off, e,
			tol);
		T_CHECK(es <= TOL_SPLIT, "matmul %s %s split %d: %.3g from "
			"unsplit", ms_type_name(type), q8 ? "q8" : "exact",
			split, es);
		T_CHECK(!memcmp(y[q8][1], y[q8][2], sizeof(float) * ny),
			"matmul %s split %d: two runs differ",
			ms_type_name(type), split);
		printf("matmul %-6s %s %lldx%lld B=%lld at +%zu: relative L2 "
		       "vs float64 %.2e (bound %.1e); split %d vs unsplit "
		       "%.2e, same bits twice\n",
		       ms_type_name(type), q8 ? "q8   " : "exact",
		       (long long)n_out, (long long)n_in, (long long)B, off, e,
		       tol, split, es);
		if (q8)
			worst_q8 = e > worst_q8 ? e : worst_q8;
		matmul_n_case(type, dw, dx, n_in, n_out, B, q8);
	}
	if (ms_gpu_ctx_set_q8(ctx, false, &err) ||
	    ms_gpu_ctx_set_split(ctx, 0, &err))
		t_fatal("%s", err.msg);
	ms_gpu_free(dbuf);
	ms_gpu_free(dx);
	ms_gpu_free(dy);
	for (int q8 = 0; q8 <= 1; q8++)
		for (int k = 0; k < 3; k++)
			free(y[q8][k]);
	free(w);
	free(wf);
	free(in);
	free(ref);
}

static void matmul_case(uint32_t type, int64_t n_in, int64_t n_out,
			int64_t B, int split)
{
	matmul_case_at(type, n_in, n_out, B, split, 0);
}

/* n experts of types ty (E x F), each with B random inputs, on the host
 * and the device, and a device output of the same size. */
struct ffn_fix {
	int n;
	struct hexpert *x;
	struct ms_gpu_expert *ge;
	size_t xs, ny; /* one expert's inputs (B x E); all of them */
	float *in, *din, *dout;
};

static void ffn_fix_make(struct ffn_fix *f, const uint32_t ty[3], int64_t E,
			 int64_t F, bool fused, int n, int64_t B)
{
	f->n = n;
	f->x = t_xmalloc(sizeof(*f->x) * (size_t)n);
	f->ge = t_xmalloc(sizeof(*f->ge) * (size_t)n);
	for (int i = 0; i < n; i++) {
		hexpert_make(&f->x[i], ty, E, F, fused, 0);
		f->ge[i] = f->x[i].g;
	}
	f->xs = (size_t)(B * E);
	f->ny = f->xs * (size_t)n;
	f->in = t_xmalloc(sizeof(float) * f->ny);
	for (size_t i = 0; i < f->ny; i++)
		f->in[i] = gauss();
	f->din = t_dev_alloc(sizeof(float) * f->ny);
	f->dout = t_dev_alloc(sizeof(float) * f->ny);
	t_dev_up(f->din, f->in, sizeof(float) * f->ny);
}

static void ffn_fix_free(struct ffn_fix *f)
{
	ms_gpu_free(f->din);
	ms_gpu_free(f->dout);
	for (int i = 0; i < f->n; i++)
		hexpert_free(&f->x[i]);
	free(f->x);
	free(f->ge);
	free(f->in);
}

/* The expert FFN: unsplit, split into `split` ranges twice; split within
 * `tol` of unsplit, the same bits twice, and both against float64. */
static void split_ffn_case(const uint32_t ty[3], int64_t E, int64_t F,
			   bool fused, int n, int64_t B, int split,
			   enum ms_gpu_ffn_path path, double tol)
{
	struct ffn_fix fx;
	ffn_fix_make(&fx, ty, E, F, fused, n, B);
	const size_t xs = fx.xs, ny = fx.ny;
	float *ref = t_xmalloc(sizeof(float) * xs), *y[3];
	struct ms_err err = { 0 };
	char nm[64];
	for (int k = 0; k < 3; k++) {
		y[k] = t_xmalloc(sizeof(float) * ny);
		if (ms_gpu_ctx_set_split(ctx, k ? split : 1, &err) ||
		    ms_gpu_memset(fx.dout, 0xff, sizeof(float) * ny, &err) ||
		    ms_gpu_experts_ffn(ctx, fx.ge, n, fx.din, (int64_t)xs,
				       fx.dout, B, path, &err))
			t_fatal("split ffn: %s", err.msg);
		t_dev_to(ctx, y[k], fx.dout, sizeof(float) * ny);
	}
	if (ms_gpu_ctx_set_split(ctx, 0, &err))
		t_fatal("%s", err.msg);
	const double es = rel_l2(y[1], y[0], (int64_t)ny);
	double e = 0;
	for (int i = 0; i < n; i++) {
		ref_ffn(&fx.x[i], fx.in + (size_t)i * xs, ref, B);
		const double ei = rel_l2(y[1] + (size_t)i * xs, ref, (int64_t)xs);
		e = ei > e ? ei : e;
	}
	const double tol_ref =
		path == MS_GPU_FFN_MATVEC_Q8 ? TOL_Q8_FFN : TOL_MATVEC;
	T_CHECK(es <= tol, "%s %s split %d: %.3g from unsplit (bound %.1g)",
		ms_gpu_ffn_path_name(path), ty_name(ty, nm, sizeof(nm)), split,
		es, tol);
	T_CHECK(e <= tol_ref, "%s %s split %d: %.3g from float64",
		ms_gpu_ffn_path_name(path), ty_name(ty, nm, sizeof(nm)), split,
		e);
	T_CHECK(!memcmp(y[1], y[2], sizeof(float) * ny),
		"%s split %d: two runs differ", ms_gpu_ffn_path_name(path),
		split);
	printf("%-9s %s E=%lld F=%lld %s B=%lld x%d split %d: vs unsplit "
	       "%.2e (bound %.0e), vs float64 %.2e, same bits twice\n",
	       ms_gpu_ffn_path_name(path), ty_name(ty, nm, sizeof(nm)),
	       (long long)E, (long long)F, fused ? "fused" : "separate",
	       (long long)B, n, split, es, tol, e);
	ffn_fix_free(&fx);
	for (int k = 0; k < 3; k++)
		free(y[k]);
	free(ref);
}

/* The chunk (ms_gpu_ctx_set_chunk) sets how many blocks of a row a CTA
 * copies at a time, not which thread adds which unit: every chunk gives the
 * default's bits, on the exact and the 8-bit path, at B = 1 and 3. */
static void chunk_ffn_case(const uint32_t ty[3], int64_t E, int64_t F, int n)
{
	static const int chunks[] = { MS_GPU_CHUNK_MIN, 6144, 12288,
				      MS_GPU_CHUNK_MAX };
	static const enum ms_gpu_ffn_path paths[] = { MS_GPU_FFN_MATVEC,
						      MS_GPU_FFN_MATVEC_Q8 };
	const int64_t B = 3;
	struct ffn_fix fx;
	ffn_fix_make(&fx, ty, E, F, true, n, B);
	float *y0 = t_xmalloc(sizeof(float) * fx.ny);
	float *y = t_xmalloc(sizeof(float) * fx.ny);
	struct ms_err err = { 0 };
	char nm[64];
	int same = 0, cases = 0;
	for (int p = 0; p < 2; p++)
		for (int64_t b = 1; b <= B; b += B - 1)
			for (int k = -1; k < (int)(sizeof(chunks) / sizeof(*chunks)); k++) {
				if (ms_gpu_ctx_set_chunk(ctx, k < 0 ? 0 : chunks[k], &err) ||
				    ms_gpu_memset(fx.dout, 0xff, sizeof(float) * fx.ny, &err) ||
				    ms_gpu_experts_ffn(ctx, fx.ge, n, fx.din, (int64_t)fx.xs,
						       fx.dout, b, paths[p], &err))
					t_fatal("chunk ffn: %s", err.msg);
				/* n experts' b x E outputs, one after another */
				const size_t nb = (size_t)(n * b * E);
				t_dev_to(ctx, k < 0 ? y0 : y, fx.dout, sizeof(float) * nb);
				if (k < 0)
					continue;
				cases++;
				const bool eq = !memcmp(y, y0, sizeof(float) * nb);
				same += eq;
				T_CHECK(eq, "%s %s B=%lld chunk %d: not the default "
					"chunk's bits (relative L2 %.3g)",
					ms_gpu_ffn_path_name(paths[p]),
					ty_name(ty, nm, sizeof(nm)), (long long)b,
					chunks[k], rel_l2(y, y0, (int64_t)nb));
			}
	if (ms_gpu_ctx_set_chunk(ctx, 0, &err))
		t_fatal("%s", err.msg);
	printf("chunk     %s E=%lld F=%lld x%d: chunks of %d..%d bytes give "
	       "the default's bits in %d of %d cases (exact and 8-bit, B = 1 "
	       "and 3)\n", ty_name(ty, nm, sizeof(nm)), (long long)E,
	       (long long)F, n, MS_GPU_CHUNK_MIN, MS_GPU_CHUNK_MAX, same, cases);
	ffn_fix_free(&fx);
	free(y0);
	free(y);
}

/* Split-K, on products and FFNs. The q8 FFN rounds h to 8 bits after
 * gate/up, and a reassociated f32 sum can land on the other side of a
 * rounding boundary (one step of one element of h, ~1e-4 of y here, and
 * rare): its split is held to 1e-3 instead of TOL_SPLIT. */
static void check_split(void)
{
	struct ms_err err = { 0 };
	uint32_t ty[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q3_K };
	matmul_case(MS_TYPE_Q6_K, 1024, 256, 2, 3);
	matmul_case(MS_TYPE_MXFP4, 1024, 96, 1, 5);
	matmul_case(MS_TYPE_Q2_K, 2048, 64, 8, 8);
	/* 37 rows: the last tile's rows past the end repeat the last row,
	 * which is read from a buffer of exactly the matrix (under ASan, a
	 * read past it fails), Q3_K's with ragged first and last words */
	matmul_case(MS_TYPE_Q4_K, 512, 37, 1, 2);
	matmul_case(MS_TYPE_Q3_K, 768, 37, 3, 2);
	/* rows a whole number of words long (4 blocks of 110, 210 and 34 x
	 * 32 bytes), the matrix 2 bytes into a word: every row's chunk
	 * starts 2 bytes into its first word, and with 3 and 5 ranges
	 * split-K's start at odd blocks too */
	matmul_case_at(MS_TYPE_Q3_K, 1024, 96, 1, 3, 2);
	matmul_case_at(MS_TYPE_Q6_K, 1024, 64, 1, 5, 2);
	matmul_case_at(MS_TYPE_Q8_0, 1024, 64, 2, 3, 2);
	split_ffn_case(ty, 1024, 512, true, 2, 3, 4, MS_GPU_FFN_MATVEC,
		       TOL_SPLIT);
	split_ffn_case(ty, 1024, 512, false, 1, 1, 3, MS_GPU_FFN_MATVEC_Q8,
		       1e-3);
	T_CHECK(ms_gpu_ctx_set_split(ctx, 17, &err) == -EINVAL,
		"split 17 accepted");
}

static void check_chunk(void)
{
	struct ms_err err = { 0 };
	const uint32_t glm[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
	const uint32_t k46[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q6_K };
	chunk_ffn_case(glm, 2048, 1024, 2);
	chunk_ffn_case(k46, 2048, 1024, 2);
	T_CHECK(ms_gpu_ctx_set_chunk(ctx, MS_GPU_CHUNK_MIN - 1, &err) ==
			-EINVAL && strstr(err.msg, "2047"),
		"chunk %d accepted (%s)", MS_GPU_CHUNK_MIN - 1, err.msg);
	T_CHECK(ms_gpu_ctx_set_chunk(ctx, MS_GPU_CHUNK_MAX + 1, &err) ==
			-EINVAL,
		"chunk %d accepted", MS_GPU_CHUNK_MAX + 1);
	T_CHECK(ms_gpu_ctx_set_chunk(NULL, 0, &err) == -EINVAL,
		"chunk on a NULL context accepted");
}

/* The experts of a device table (ms_gpu_experts_ffn_sel) under PDL: each
 * of `rounds` steps is an RMS norm that writes h and its prepared form,
 * a top-k that writes sel (two sets of logits in turn, so sel changes
 * every step), a norm of other buffers when `between`, then the table's
 * FFN of h with sel_before = `claim`. Returns y after the last step. */
static void sel_steps(const struct ffn_fix *fx, const void *const *tab,
		      bool between, bool claim, int rounds, float *y)
{
	const int64_t E = fx->x[0].v.n_embd;
	const int k = 2;
	struct ms_err err = { 0 };
	const struct ms_router_params rp = { .gating = MS_GATING_SOFTMAX,
					     .norm = true,
					     .n_expert = (uint32_t)fx->n,
					     .n_used = (uint32_t)k };
	/* logits that choose {2, 0} and {1, 2} */
	const float lg[2][3] = { { 1.0f, -1.0f, 2.0f }, { -1.0f, 2.0f, 1.0f } };
	const int32_t sel0[2] = { 0, 1 };
	float *dl = t_dev_from(lg, sizeof(lg));
	int32_t *dsel = t_dev_from(sel0, sizeof(sel0));
	float *dw = t_dev_alloc(sizeof(float) * k);
	int32_t *dbad = t_dev_alloc(sizeof(int32_t));
	float *nw = t_xmalloc(sizeof(float) * (size_t)E);
	for (int64_t i = 0; i < E; i++)
		nw[i] = 1.0f + 0.001f * (float)(i % 7);
	float *dnw = t_dev_from(nw, sizeof(float) * (size_t)E);
	float *dx = t_dev_from(fx->in, sizeof(float) * (size_t)E);
	float *dz = t_dev_alloc(sizeof(float) * (size_t)E);
	float *dh = t_dev_alloc(sizeof(float) * (size_t)E);
	float *dd = t_dev_alloc(sizeof(float) * (size_t)E);
	void *dq = t_dev_alloc(ms_gpu_xq_bytes(E, 1));
	if (ms_gpu_memset(dz, 0, sizeof(float) * (size_t)E, &err))
		t_fatal("sel steps: %s", err.msg);
	for (int r = 0; r < rounds; r++)
		if (ms_gpu_add_rms_norm(ctx, dx, dz, dnw, dh, dq, E, 1, 1e-5f,
					&err) ||
		    ms_gpu_route_topk(ctx, &rp, dl + 3 * (r & 1), NULL, 1, dsel,
				      dw, dbad, &err) ||
		    (between && ms_gpu_rms_norm(ctx, dx, dnw, dd, E, 1, 1e-5f,
						&err)) ||
		    ms_gpu_experts_ffn_sel(ctx, &fx->ge[0], tab, dsel, k, dh, dq,
					   fx->dout, claim, &err))
			t_fatal("sel steps: %s", err.msg);
	t_dev_to(ctx, y, fx->dout, sizeof(float) * (size_t)(k * E));
	ms_gpu_free(dl);
	ms_gpu_free(dsel);
	ms_gpu_free(dw);
	ms_gpu_free(dbad);
	ms_gpu_free(dnw);
	ms_gpu_free(dx);
	ms_gpu_free(dz);
	ms_gpu_free(dh);
	ms_gpu_free(dd);
	ms_gpu_free(dq);
	free(nw);
}

/* sel_steps with PDL and without: the same bits where the table's FFN
 * claims no more than holds (sel written by the launch just ahead, no
 * claim; a launch between, the claim); and on the emulator, which starts
 * a CTA of each PDL launch before the launch ahead of it, a false claim
 * (sel written just ahead) gives other bits: the test can see the race
 * the claim would make on a GPU. Returns the cases that held. */
static int check_pdl_sel(struct ffn_fix *fx, bool emu)
{
	const int64_t E = fx->x[0].v.n_embd, F = fx->x[0].v.n_ff;
	const int k = 2, rounds = 3;
	struct ms_err err = { 0 };
	uint64_t rs;
	if (ms_type_row_size(fx->ge[0].type[0], E, &rs, &err))
		t_fatal("pdl sel: %s", err.msg);
	const void **h = t_xmalloc(sizeof(void *) * 3 * (size_t)fx->n);
	for (int i = 0; i < fx->n; i++) {
		const struct ms_gpu_expert *g = &fx->ge[i];
		h[3 * i] = g->data[0];
		h[3 * i + 1] = (const uint8_t *)g->data[0] + rs * (uint64_t)F;
		h[3 * i + 2] = g->data[1];
	}
	const void *const *tab = t_dev_from(h, sizeof(void *) * 3 * (size_t)fx->n);
	const size_t nb = sizeof(float) * (size_t)(k * E);
	float *y[2] = { t_xmalloc(nb), t_xmalloc(nb) };
	int held = 0;
	static const struct {
		bool between, claim, ok;
	} cs[] = { { false, false, true }, { true, true, true },
		   { false, true, false } };
	for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
		if (!cs[i].ok && !emu)
			continue; /* a race: on a GPU, either result */
		for (int on = 0; on < 2; on++) {
			if (ms_gpu_ctx_set_pdl(ctx, on, &err))
				t_fatal("pdl sel: %s", err.msg);
			sel_steps(fx, tab, cs[i].between, cs[i].claim, rounds,
				  y[on]);
		}
		const bool eq = !memcmp(y[0], y[1], nb);
		T_CHECK(eq == cs[i].ok,
			"pdl: the table's FFN, sel written %s, sel_before %d: "
			"PDL's bits %s without it's",
			cs[i].between ? "two launches ahead" : "just ahead",
			cs[i].claim, eq ? "are" : "differ from");
		held += eq == cs[i].ok;
	}
	ms_gpu_free((void *)tab);
	free(h);
	free(y[0]);
	free(y[1]);
	return held;
}

/* PDL (ms_gpu_ctx_set_pdl): on by default where the device has it, and the
 * same bits as without it. Each case runs `rounds` FFNs back to back with
 * no sync between them, on two inputs in turn (each call's preparations
 * overwrite, with other values, what the call before read), the experts
 * resident (their first chunk read before the kernels' wait): with PDL
 * on a GPU the kernels overlap the ones before them, and on the CPU
 * emulator one CTA of each runs ahead of the kernel before it, so a read
 * or a write before the wait shows as different bits. */
static void check_pdl(void)
{
	static const enum ms_gpu_ffn_path paths[] = { MS_GPU_FFN_MATVEC,
						      MS_GPU_FFN_MATVEC_Q8 };
	const uint32_t ty[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
	const int64_t E = 1024, F = 512, B = 3;
	const int n = 3, rounds = 3;
	struct ms_err err = { 0 };
	const bool had = ms_gpu_ctx_pdl(ctx);
	int rc = ms_gpu_ctx_set_pdl(ctx, true, &err);
	T_CHECK(rc == 0 ? had : rc == -ENOTSUP && !had && strstr(err.msg, "9.0"),
		"PDL: on by default: %d; turning it on: %d (%s)", had, rc,
		err.msg);
	T_CHECK(ms_gpu_ctx_set_pdl(NULL, false, &err) == -EINVAL,
		"PDL on a NULL context accepted");
	if (rc) {
		printf("pdl       the device has no PDL (%s): nothing to "
		       "compare\n", err.msg);
		return;
	}
	struct ffn_fix fx;
	ffn_fix_make(&fx, ty, E, F, true, n, B);
	for (int i = 0; i < n; i++)
		fx.ge[i].resident = true;
	const size_t bytes = sizeof(float) * fx.ny;
	float *y[2] = { t_xmalloc(bytes), t_xmalloc(bytes) };
	/* the other input: the same values in reverse order */
	for (size_t i = 0; i < fx.ny; i++)
		y[0][i] = fx.in[fx.ny - 1 - i];
	float *din2 = t_dev_from(y[0], bytes);
	float *in[2] = { fx.din, din2 };
	int same = 0, cases = 0;
	char nm[64];
	for (int p = 0; p < 2; p++)
		for (int64_t b = 1; b <= B; b += B - 1) {
			for (int on = 0; on < 2; on++) {
				if (ms_gpu_ctx_set_pdl(ctx, on, &err) ||
				    ms_gpu_memset(fx.dout, 0xff, bytes, &err))
					t_fatal("pdl: %s", err.msg);
				for (int r = 0; r < rounds; r++)
					if (ms_gpu_experts_ffn(ctx, fx.ge, n,
							       in[(rounds - 1 - r) & 1],
							       (int64_t)fx.xs,
							       fx.dout, b,
							       paths[p], &err))
						t_fatal("pdl ffn: %s", err.msg);
				t_dev_to(ctx, y[on], fx.dout, bytes);
			}
			const size_t nb = (size_t)(n * b * E);
			const bool eq = !memcmp(y[0], y[1], sizeof(float) * nb);
			cases++;
			same += eq;
			T_CHECK(eq, "%s %s B=%lld: PDL's bits differ from "
				"without it (relative L2 %.3g)",
				ms_gpu_ffn_path_name(paths[p]),
				ty_name(ty, nm, sizeof(nm)), (long long)b,
				rel_l2(y[1], y[0], (int64_t)nb));
		}
	const bool emu = strstr(ms_gpu_build_info(), "emulation") != NULL;
	const int sel_held = check_pdl_sel(&fx, emu);
	if (ms_gpu_ctx_set_pdl(ctx, true, &err))
		t_fatal("pdl: %s", err.msg);
	T_CHECK(ms_gpu_ctx_pdl(ctx), "PDL on, yet the context says off");
	T_CHECK(!*ms_gpu_ctx_pdl_note(ctx), "PDL on, and a note: %s",
		ms_gpu_ctx_pdl_note(ctx));
	if (emu) {
		/* a runtime that refuses the launch attribute (the emulator's
		 * EMU_NO_PDL): the context's trial launch finds it, PDL is
		 * off and says why, and FFNs still run */
		struct ms_gpu_ctx *c2 = NULL;
		setenv("EMU_NO_PDL", "1", 1);
		if (ms_gpu_ctx_init(&c2, 0, NULL, &err))
			t_fatal("ctx: %s", err.msg);
		const int r2 = ms_gpu_ctx_set_pdl(c2, true, &err);
		const bool ran = !ms_gpu_experts_ffn(c2, fx.ge, n, fx.din,
						     (int64_t)fx.xs, fx.dout, 1,
						     MS_GPU_FFN_MATVEC_Q8, &err) &&
				 !ms_gpu_stream_sync(ms_gpu_ctx_stream(c2), &err);
		unsetenv("EMU_NO_PDL");
		T_CHECK(!ms_gpu_ctx_pdl(c2) &&
				strstr(ms_gpu_ctx_pdl_note(c2), "refused") &&
				r2 == -ENOTSUP && ran,
			"PDL refused: on %d, note '%s', set_pdl %d, an FFN %s",
			ms_gpu_ctx_pdl(c2), ms_gpu_ctx_pdl_note(c2), r2,
			ran ? "ran" : err.msg);
		printf("pdl       a runtime that refuses PDL launches: the "
		       "context says '%s' and launches plainly\n",
		       ms_gpu_ctx_pdl_note(c2));
		ms_gpu_ctx_free(c2);
	}
	printf("pdl       %s E=%lld F=%lld x%d, %d FFNs back to back: PDL "
	       "gives the bits of plain launches in %d of %d cases (exact "
	       "and 8-bit, B = 1 and 3)\n", ty_name(ty, nm, sizeof(nm)),
	       (long long)E, (long long)F, n, rounds, same, cases);
	printf("pdl       a device table's experts (ffn_sel) after a top-k: "
	       "%d of %d cases as expected (sel written just ahead, or two "
	       "ahead with sel_before: PDL's bits%s)\n", sel_held,
	       emu ? 3 : 2,
	       emu ? "; sel_before claimed falsely: other bits, the race seen"
		   : "");
	ffn_fix_free(&fx);
	ms_gpu_free(din2);
	free(y[0]);
	free(y[1]);
}

/* ---- cuBLAS prefill ------------------------------------------------------------ */

/*
 * The cuBLAS path rounds the weights, x and h to f16 (11 significant bits:
 * a relative error of at most 2^-11 = 4.9e-4 each, uniformly spread, so
 * 2^-11 / sqrt(3) = 2.8e-4 RMS) and accumulates in f32. Each dot product of
 * random-signed terms then carries a relative error of about the RMS of its
 * terms' errors: gate and up ~ sqrt(2) x 2.8e-4 = 4e-4 (weights and x), h
 * ~ 4e-4 through silu and the product plus 2.8e-4 from its own rounding,
 * y ~ sqrt(2.8^2 + 4^2 + 4^2 + 2.8^2) e-4 ~ 7e-4 (in practice less: silu
 * damps the gate's error). So the bound against the f32 reference is
 * 2e-3, and the error is also computed exactly: emul_ffn below does the
 * same f16 roundings on the CPU with double dots; the GPU must match that
 * to 1e-4 (what is left is f32 accumulation in the tensor cores), and the
 * emulation's own distance from the reference (the "predicted" error) is
 * printed next to the measured one.
 */
/* n floats rounded as MATVEC_Q8 prepares them (gpu_matvec.cu's
 * prep_kernel<1>: per block of 32, d = amax / 127 in f32, q = rint(x / d)
 * ties to even), as doubles. */
static void round_q8(const float *v, double *o, int64_t n)
{
	for (int64_t b = 0; b < n; b += 32) {
		float amax = 0;
		for (int i = 0; i < 32; i++)
			amax = fabsf(v[b + i]) > amax ? fabsf(v[b + i]) : amax;
		const float d = amax / 127.0f;
		for (int i = 0; i < 32; i++) {
			float q = d > 0 ? nearbyintf(v[b + i] / d) : 0.0f;
			q = q > 127 ? 127 : q < -127 ? -127 : q;
			o[b + i] = (double)q * d;
		}
	}
}

/* q8: MATVEC_Q8's roundings instead (x and h to 8 bits per block of 32,
 * weights exact). */
static void emul_ffn(const struct hexpert *x, const float *in, float *out,
		     int64_t B, bool q8)
{
	const int64_t E = x->v.n_embd, F = x->v.n_ff;
	float *wg = t_xmalloc(sizeof(float) * (size_t)(F * E));
	float *wu = t_xmalloc(sizeof(float) * (size_t)(F * E));
	float *wd = t_xmalloc(sizeof(float) * (size_t)(E * F));
	double *xr = t_xmalloc(sizeof(double) * (size_t)E);
	double *h = t_xmalloc(sizeof(double) * (size_t)F);
	float *hf = t_xmalloc(sizeof(float) * (size_t)F);
	uint32_t tg = x->v.type[0];
	uint32_t tu = x->v.fused ? tg : x->v.type[1];
	uint32_t td = x->v.type[x->v.fused ? 1 : 2];
	uint64_t rg = x->bytes[0] / (uint64_t)(x->v.fused ? 2 * F : F);
	const uint8_t *gp = x->h[0];
	const uint8_t *upp = x->v.fused ? gp + (uint64_t)F * rg : x->h[1];
	const uint8_t *dp = x->h[x->v.fused ? 1 : 2];
	uint64_t ru = x->v.fused ? rg : x->bytes[1] / (uint64_t)F;
	uint64_t rd = x->bytes[x->v.fused ? 1 : 2] / (uint64_t)E;
	for (int64_t r = 0; r < F; r++) {
		ms_dequant_row(tg, gp + r * rg, wg + r * E, E);
		ms_dequant_row(tu, upp + r * ru, wu + r * E, E);
	}
	for (int64_t r = 0; r < E; r++)
		ms_dequant_row(td, dp + r * rd, wd + r * F, F);
	for (int64_t i = 0; !q8 && i < F * E; i++) {
		wg[i] = round_f16(wg[i]);
		wu[i] = round_f16(wu[i]);
		wd[i] = round_f16(wd[i]);
	}
	for (int64_t b = 0; b < B; b++) {
		if (q8)
			round_q8(in + b * E, xr, E);
		for (int64_t i = 0; !q8 && i < E; i++)
			xr[i] = round_f16(in[b * E + i]);
		for (int64_t r = 0; r < F; r++) {
			double g = 0, u = 0;
			for (int64_t i = 0; i < E; i++) {
				g += wg[r * E + i] * xr[i];
				u += wu[r * E + i] * xr[i];
			}
			/* the GEMM (or matvec) writes f32; h is formed in
			 * double, then f32, then f16 (or 8 bits) */
			double gf = (float)g, uf = (float)u;
			hf[r] = (float)(gf / (1.0 + exp(-gf)) * uf);
			h[r] = round_f16(hf[r]);
		}
		if (q8)
			round_q8(hf, h, F);
		for (int64_t r = 0; r < E; r++) {
			double s = 0;
			for (int64_t i = 0; i < F; i++)
				s += wd[r * F + i] * h[i];
			out[b * E + r] = (float)s;
		}
	}
	free(wg);
	free(wu);
	free(wd);
	free(xr);
	free(h);
	free(hf);
}

static void cublas_case(const uint32_t ty[3], int64_t E, int64_t F, bool fused,
			int64_t B)
{
	struct hexpert x;
	struct ms_err err = { 0 };
	char nm[64];
	hexpert_make(&x, ty, E, F, fused, 0);
	size_t n = (size_t)(B * E);
	float *in = t_xmalloc(sizeof(float) * n), *ref = t_xmalloc(sizeof(float) * n);
	float *emu = t_xmalloc(sizeof(float) * n), *got = t_xmalloc(sizeof(float) * n);
	for (size_t i = 0; i < n; i++)
		in[i] = gauss();
	float *din = t_dev_alloc(sizeof(float) * n), *dout = t_dev_alloc(sizeof(float) * n);
	t_dev_up(din, in, sizeof(float) * n);
	if (ms_gpu_memset(dout, 0xff, sizeof(float) * n, &err))
		t_fatal("%s", err.msg);
	int rc = ms_gpu_expert_ffn(ctx, &x.g, din, dout, B, MS_GPU_FFN_CUBLAS,
				   &err);
	T_CHECK(rc == 0, "cublas %s B=%lld: %s", ty_name(ty, nm, sizeof(nm)),
		(long long)B, err.msg);
	if (!rc) {
		t_dev_to(ctx, got, dout, sizeof(float) * n);
		ref_ffn(&x, in, ref, B);
		emul_ffn(&x, in, emu, B, false);
		double exact = rel_l2(got, ref, (int64_t)n);
		double vs_emul = rel_l2(got, emu, (int64_t)n);
		double predicted = rel_l2(emu, ref, (int64_t)n);
		printf("cublas %-22s E=%-4lld F=%-4lld %s B=%-3lld: %.2e vs "
		       "reference (predicted %.2e from f16 rounding), %.2e vs "
		       "the f16 emulation\n",
		       ty_name(ty, nm, sizeof(nm)), (long long)E, (long long)F,
		       fused ? "fused   " : "separate", (long long)B, exact,
		       predicted, vs_emul);
		T_CHECK(exact <= TOL_CUBLAS_EXACT,
			"cublas %s B=%lld: %.3g > %.1g against the reference",
			nm, (long long)B, exact, TOL_CUBLAS_EXACT);
		T_CHECK(vs_emul <= TOL_CUBLAS_EMUL,
			"cublas %s B=%lld: %.3g > %.1g against the f16 "
			"emulation",
			nm, (long long)B, vs_emul, TOL_CUBLAS_EMUL);
		T_CHECK(predicted <= TOL_CUBLAS_EXACT,
			"cublas %s: the f16 emulation itself is %.3g from "
			"the reference",
			nm, predicted);
	}
	ms_gpu_free(din);
	ms_gpu_free(dout);
	hexpert_free(&x);
	free(in);
	free(ref);
	free(emu);
	free(got);
}

static void check_cublas(void)
{
	uint32_t glm[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
	uint32_t k4[3] = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q6_K };
	uint32_t iq[3] = { MS_TYPE_IQ4_XS, MS_TYPE_Q5_0, MS_TYPE_Q4_1 };
	cublas_case(glm, 5120, 1536, false, 16);
	cublas_case(glm, 5120, 1536, true, 16);
	cublas_case(k4, 1024, 512, true, 64);
	cublas_case(k4, 1024, 512, false, 512);
	cublas_case(iq, 512, 256, false, 16); /* types without a matvec */
}

/* ---- dense ---------------------------------------------------------------------- */

static void dense_case(uint32_t wt, int64_t rows, int64_t cols, int64_t B)
{
	struct ms_err err = { 0 };
	size_t nw = (size_t)(rows * cols), esz = wt == MS_TYPE_F32 ? 4 : 2;
	uint8_t *w = t_xmalloc(nw * esz);
	fill(w, nw * esz, wt, true);
	float *wf = t_xmalloc(sizeof(float) * nw);
	ms_dequant_row(wt, w, wf, (int64_t)nw);
	float *in = t_xmalloc(sizeof(float) * (size_t)(B * cols));
	for (int64_t i = 0; i < B * cols; i++)
		in[i] = gauss();
	float *ref = t_xmalloc(sizeof(float) * (size_t)(B * rows));
	float *emu = t_xmalloc(sizeof(float) * (size_t)(B * rows));
	float *got = t_xmalloc(sizeof(float) * (size_t)(B * rows));
	for (int64_t b = 0; b < B; b++)
		for (int64_t r = 0; r < rows; r++) {
			double s = 0, s16 = 0;
			for (int64_t i = 0; i < cols; i++) {
				s += (double)wf[r * cols + i] * in[b * cols + i];
				s16 += (double)wf[r * cols + i] *
				       round_f16(in[b * cols + i]);
			}
			ref[b * rows + r] = (float)s;
			emu[b * rows + r] = (float)s16;
		}
	void *dw = t_dev_alloc(nw * esz);
	float *dx = t_dev_alloc(sizeof(float) * (size_t)(B * cols));
	float *dy = t_dev_alloc(sizeof(float) * (size_t)(B * rows));
	t_dev_up(dw, w, nw * esz);
	t_dev_up(dx, in, sizeof(float) * (size_t)(B * cols));
	if (ms_gpu_memset(dy, 0xff, sizeof(float) * (size_t)(B * rows), &err))
		t_fatal("%s", err.msg);
	int rc = ms_gpu_dense(ctx, wt, dw, rows, cols, dx, dy, B, &err);
	T_CHECK(rc == 0, "dense %s: %s", ms_type_name(wt), err.msg);
	if (!rc) {
		t_dev_to(ctx, got, dy, sizeof(float) * (size_t)(B * rows));
		double e = rel_l2(got, ref, B * rows);
		if (wt == MS_TYPE_F32) {
			printf("dense f32 %lldx%lld B=%-3lld: %.2e\n",
			       (long long)rows, (long long)cols, (long long)B, e);
			T_CHECK(e <= TOL_DENSE_F32,
				"dense f32 B=%lld: %.3g > %.1g", (long long)B,
				e, TOL_DENSE_F32);
		} else {
			double ee = rel_l2(got, emu, B * rows);
			double pred = rel_l2(emu, ref, B * rows);
			printf("dense f16 %lldx%lld B=%-3lld: %.2e vs reference "
			       "(predicted %.2e: x rounded to f16), %.2e vs the "
			       "emulation\n",
			       (long long)rows, (long long)cols, (long long)B, e,
			       pred, ee);
			T_CHECK(ee <= TOL_CUBLAS_EMUL,
				"dense f16 B=%lld: %.3g from the emulation",
				(long long)B, ee);
			T_CHECK(e <= TOL_CUBLAS_EXACT,
				"dense f16 B=%lld: %.3g from the reference",
				(long long)B, e);
		}
	}
	ms_gpu_free(dw);
	ms_gpu_free(dx);
	ms_gpu_free(dy);
	free(w);
	free(wf);
	free(in);
	free(ref);
	free(emu);
	free(got);
}

static void check_dense(void)
{
	static const int64_t Bs[] = { 1, 7, 64 };
	for (size_t k = 0; k < 3; k++) {
		dense_case(MS_TYPE_F32, 1000, 768, Bs[k]);
		dense_case(MS_TYPE_F16, 1000, 768, Bs[k]);
	}
}

/* ---- argument checks, the host helper ------------------------------------------ */

static void check_errors(void)
{
	struct ms_err err = { 0 };
	uint32_t ty[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
	struct hexpert x;
	hexpert_make(&x, ty, 512, 256, false, 2); /* 2 bytes off */
	float *d = t_dev_alloc(sizeof(float) * 512 * 16);
	int rc;

	rc = ms_gpu_expert_ffn(ctx, &x.g, d, d + 512 * 8, 1, MS_GPU_FFN_MATVEC,
			       &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "alignment"),
		"misaligned q2_K, matvec: %d '%s'", rc, err.msg);
	struct ms_gpu_expert g = x.g;
	g.n_embd = 500;
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 1, MS_GPU_FFN_AUTO, &err);
	T_CHECK(rc == -EINVAL, "n_embd 500: %d '%s'", rc, err.msg);
	g = x.g;
	g.data[1] = NULL;
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 1, MS_GPU_FFN_AUTO, &err);
	T_CHECK(rc == -EINVAL, "NULL up: %d '%s'", rc, err.msg);
	g = x.g;
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 0, MS_GPU_FFN_AUTO, &err);
	T_CHECK(rc == -EINVAL, "0 tokens: %d '%s'", rc, err.msg);
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 9, MS_GPU_FFN_MATVEC,
			       &err);
	T_CHECK(rc == -ENOTSUP, "9 tokens, matvec: %d '%s'", rc, err.msg);
	struct ms_gpu_expert two[2] = { x.g, x.g };
	two[1].type[2] = MS_TYPE_Q4_K;
	rc = ms_gpu_experts_ffn(ctx, two, 2, d, 0, d + 512 * 8, 1,
				MS_GPU_FFN_AUTO, &err);
	T_CHECK(rc == -EINVAL, "mixed experts: %d '%s'", rc, err.msg);
	g = x.g;
	g.type[0] = g.type[1] = MS_TYPE_Q5_0;
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 1, MS_GPU_FFN_MATVEC,
			       &err);
	T_CHECK(rc == -ENOTSUP, "q5_0 matvec: %d '%s'", rc, err.msg);
	g.type[0] = g.type[1] = MS_TYPE_IQ2_XXS;
	rc = ms_gpu_expert_ffn(ctx, &g, d, d + 512 * 8, 1, MS_GPU_FFN_AUTO, &err);
	T_CHECK(rc == -ENOTSUP || rc == -EINVAL, "iq2_xxs: %d '%s'", rc,
		err.msg);
	rc = ms_gpu_dequant(MS_TYPE_Q4_0, d, d + 64, 33, false, NULL, &err);
	T_CHECK(rc == -EINVAL, "dequant 33 q4_0: %d", rc);
	rc = ms_gpu_dequant(MS_TYPE_IQ2_XXS, d, d + 64, 256, false, NULL, &err);
	T_CHECK(rc == -ENOTSUP, "dequant iq2_xxs: %d", rc);
	rc = ms_gpu_dense(ctx, MS_TYPE_Q4_0, d, 32, 32, d, d, 1, &err);
	T_CHECK(rc == -ENOTSUP, "dense q4_0: %d", rc);
	ms_gpu_free(d);
	hexpert_free(&x);

	/* misaligned q2_K under AUTO: the cuBLAS path, still right */
	double e = run_ffn_case(ty, 512, 256, false, 1, 2, true,
				MS_GPU_FFN_AUTO, 2, TOL_CUBLAS_EXACT, false);
	printf("auto on misaligned q2_K (cuBLAS): %.2e\n", e);
	printf("argument checks done\n");
}

static void check_host_helper(void)
{
	uint32_t ty[3] = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K };
	struct hexpert x;
	struct ms_err err = { 0 };
	hexpert_make(&x, ty, 1024, 512, true, 0);
	float in[2 * 1024], ref[2 * 1024], got[2 * 1024];
	for (int i = 0; i < 2 * 1024; i++)
		in[i] = gauss();
	int rc = ms_gpu_expert_ffn_host(&x.v, in, got, 2, MS_GPU_FFN_AUTO, 0,
					&err);
	T_CHECK(rc == 0, "ms_gpu_expert_ffn_host: %s", err.msg);
	ref_ffn(&x, in, ref, 2);
	double e = rel_l2(got, ref, 2 * 1024);
	T_CHECK(e <= TOL_MATVEC, "host helper: %.3g", e);
	printf("host helper (fused q2_K/q3_K, B=2): %.2e\n", e);
	hexpert_free(&x);
}

/* ---- the commands ---------------------------------------------------------------- */

static float *read_f32_file(const char *path, size_t n)
{
	float *v = t_xmalloc(n * sizeof(float));
	FILE *f = fopen(path, "rb");
	size_t got = f ? fread(v, sizeof(float), n + 1, f) : 0;
	if (f)
		fclose(f);
	if (got != n)
		t_fatal("%s: %zu floats, expected %zu", path, got, n);
	return v;
}

/* `moestream ffn` on the GPU and on the CPU's scalar path: same model, same
 * input, outputs within the path's bound. */
static void check_cli(void)
{
	const char *mo = t_build_path("moestream");
	if (access(mo, X_OK)) {
		printf("ffn --device gpu: not checked (no %s)\n", mo);
		return;
	}
	const char *dir = t_tmpdir();
	char cmd[8192], *out = NULL;
	snprintf(cmd, sizeof(cmd),
		 "%s mkmodel --preset tiny -o %s/tiny.gguf 2>&1 >/dev/null", mo,
		 dir);
	if (t_run(cmd, &out, 4096))
		t_fatal("%s: %s", cmd, out ? out : "");
	free(out);
	const int64_t E = 512; /* the tiny preset's n_embd */
	static const struct {
		int layer, expert;
		int64_t B;
		double tol;
	} cases[] = { { 1, 0, 1, TOL_MATVEC },
		      { 3, 15, 3, TOL_MATVEC },
		      { 2, 7, 16, TOL_CUBLAS_EXACT } };
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		const int64_t B = cases[c].B;
		float *x = t_xmalloc(sizeof(float) * (size_t)(B * E));
		for (int64_t i = 0; i < B * E; i++)
			x[i] = gauss();
		char xp[4200], yc[4200], yg[4200];
		snprintf(xp, sizeof(xp), "%s/x%lld.f32", dir, (long long)B);
		snprintf(yc, sizeof(yc), "%s/ycpu.f32", dir);
		snprintf(yg, sizeof(yg), "%s/ygpu.f32", dir);
		if (t_write_file(xp, x, sizeof(float) * (size_t)(B * E)))
			t_fatal("writing %s", xp);
		int rc[2];
		char *o[2] = { NULL, NULL };
		for (int d = 0; d < 2; d++) {
			snprintf(cmd, sizeof(cmd),
				 "%s ffn %s/tiny.gguf -l %d -e %d --in %s -o %s "
				 "%s 2>&1",
				 mo, dir, cases[c].layer, cases[c].expert, xp,
				 d ? yg : yc,
				 d ? "--device gpu" : "--device cpu --path scalar");
			rc[d] = t_run(cmd, &o[d], 4096);
			T_CHECK(rc[d] == 0, "%s: exit %d: %s", cmd, rc[d], o[d]);
		}
		T_CHECK(rc[1] || strstr(o[1], "gpu path"),
			"ffn --device gpu says '%s'", o[1]);
		if (!rc[0] && !rc[1]) {
			float *a = read_f32_file(yc, (size_t)(B * E));
			float *b = read_f32_file(yg, (size_t)(B * E));
			double e = rel_l2(b, a, B * E);
			printf("ffn --device gpu vs cpu (scalar), blk.%d expert "
			       "%d, B=%-2lld: relative L2 %.2e (bound %.0e)\n",
			       cases[c].layer, cases[c].expert, (long long)B, e,
			       cases[c].tol);
			T_CHECK(e <= cases[c].tol,
				"ffn --device gpu B=%lld: %.3g from the CPU",
				(long long)B, e);
			free(a);
			free(b);
		}
		free(o[0]);
		free(o[1]);
		free(x);
	}
}

/* bench gpu on a small shape: runs, and its JSON agrees with itself. */
static void check_bench(void)
{
	char jp[4200];
	snprintf(jp, sizeof(jp), "%s/bench.json", t_tmpdir());
	/* q8_0 has a fused kernel, q5_0 not; 64x64 keeps it short under
	 * tests/cuda-emu */
	char *argv[] = { "bench gpu",  "--shape",      "64,64",
			 "--mem",      "64M",	       "--time",
			 "0.001",      "--types",      "q8_0,q5_0",
			 "--no-prefill", "--json-out", jp,
			 "--chunks",   "4K,8K",	       NULL };
	int rc = bench_gpu_main((int)(sizeof(argv) / sizeof(argv[0])) - 1,
				argv);
	T_CHECK(rc == 0, "bench gpu: exit %d", rc);
	char *js = t_read_text(jp);
	cJSON *o = js ? cJSON_Parse(js) : NULL;
	T_CHECK(o != NULL, "bench gpu --json-out: no JSON");
	cJSON *g = cJSON_GetObjectItem(o, "gpu");
	double copy = cJSON_GetNumberValue(cJSON_GetObjectItem(g, "copy_gbps"));
	T_CHECK(copy > 0, "bench gpu: copy bandwidth %g", copy);
	cJSON *types = cJSON_GetObjectItem(g, "types"), *t;
	T_CHECK(cJSON_GetArraySize(types) == 2, "bench gpu: %d types",
		cJSON_GetArraySize(types));
	int checked = 0;
	cJSON_ArrayForEach(t, types)
	{
		const char *name =
			cJSON_GetStringValue(cJSON_GetObjectItem(t, "type"));
		bool mv = cJSON_IsTrue(cJSON_GetObjectItem(t, "matvec"));
		T_CHECK(name && mv == !strcmp(name, "q8_0"),
			"bench gpu: %s matvec %d", name ? name : "?", mv);
		static const char *const confs[] = { "b1_e1", "b1_e8",
						     "b1_e32", "b8_e32" };
		for (int k = 0; mv && k < 4; k++) {
			cJSON *c = cJSON_GetObjectItem(t, confs[k]);
			double gb = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "gbps"));
			double r = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "ratio"));
			T_CHECK(gb > 0 && fabs(r - gb / copy) <= 1e-9 * r,
				"bench gpu %s %s: %g GB/s, ratio %g, copy %g",
				name, confs[k], gb, r, copy);
			gb = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "q8_gbps"));
			r = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "q8_ratio"));
			T_CHECK(gb > 0 && fabs(r - gb / copy) <= 1e-9 * r,
				"bench gpu %s %s q8: %g GB/s, ratio %g, copy %g",
				name, confs[k], gb, r, copy);
			checked += 2;
		}
		/* --chunks: one figure per size, in order */
		cJSON *ch = cJSON_GetObjectItem(t, "q8_b1_e32_chunks"), *c;
		T_CHECK(!mv || cJSON_GetArraySize(ch) == 2,
			"bench gpu %s: %d chunk figures", name ? name : "?",
			cJSON_GetArraySize(ch));
		int k = 0;
		cJSON_ArrayForEach(c, ch)
		{
			double by = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "bytes"));
			double gb = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "gbps"));
			double r = cJSON_GetNumberValue(
				cJSON_GetObjectItem(c, "ratio"));
			T_CHECK(by == 4096.0 * ++k && gb > 0 &&
					fabs(r - gb / copy) <= 1e-9 * r,
				"bench gpu %s chunk %g: %g GB/s, ratio %g", name,
				by, gb, r);
			checked++;
		}
	}
	/* a size out of range is a usage error that names the range */
	char *bad[] = { "bench gpu", "--chunks", "4K,1K", NULL };
	T_CHECK(bench_gpu_main(3, bad) == 2, "bench gpu --chunks 4K,1K "
		"accepted");
	cJSON_Delete(o);
	free(js);

	/* --calls: the target's calls alone, untimed (for a profiler): no
	 * copy, no configurations, a total per type with a kernel */
	char *calls[] = { "bench gpu",	  "--shape",	"64,64", "--mem",
			  "64M",	  "--types",	"q8_0,q5_0",
			  "--calls",	  "3",		"--json-out",
			  jp,		  NULL };
	rc = bench_gpu_main((int)(sizeof(calls) / sizeof(calls[0])) - 1,
			    calls);
	T_CHECK(rc == 0, "bench gpu --calls 3: exit %d", rc);
	js = t_read_text(jp);
	o = js ? cJSON_Parse(js) : NULL;
	g = cJSON_GetObjectItem(o, "gpu");
	T_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(g, "calls")) == 3 &&
			cJSON_GetNumberValue(
				cJSON_GetObjectItem(g, "copy_gbps")) == 0,
		"bench gpu --calls 3: calls/copy in the JSON");
	int with_ms = 0;
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(g, "types"))
	{
		double ms = cJSON_GetNumberValue(
			cJSON_GetObjectItem(t, "calls_ms"));
		bool mv = cJSON_IsTrue(cJSON_GetObjectItem(t, "matvec"));
		T_CHECK(mv == (ms > 0) && !cJSON_GetObjectItem(t, "b1_e32"),
			"bench gpu --calls: %s %g ms",
			cJSON_GetStringValue(cJSON_GetObjectItem(t, "type")),
			ms);
		with_ms += ms > 0;
	}
	T_CHECK(with_ms == 1, "bench gpu --calls: %d types ran", with_ms);
	char *bad2[] = { "bench gpu", "--calls", "0", NULL };
	T_CHECK(bench_gpu_main(3, bad2) == 2, "bench gpu --calls 0 accepted");
	char *bad3[] = { "bench gpu", "--calls", "2", "--chunks", "4K", NULL };
	T_CHECK(bench_gpu_main(5, bad3) == 2,
		"bench gpu --calls 2 --chunks 4K accepted");
	printf("bench gpu (64x64, q8_0 and q5_0): ran, JSON consistent (%d "
	       "figures); --calls 3 ran the q8_0 calls alone\n",
	       checked);
	cJSON_Delete(o);
	free(js);
}

/* ---- without CUDA --------------------------------------------------------------- */

static void check_stubs(void)
{
	struct ms_err err = { 0 };
	struct ms_gpu_ctx *c = (struct ms_gpu_ctx *)1;
	void *p = (void *)1;
	double a = 1, b = 1;
	struct ms_gpu_expert g = { 0 };
	struct ms_expert_view v = { 0 };
	float f[4] = { 0 };
	t_check_no_cuda(ms_gpu_set_device(0, &err), &err, "ms_gpu_set_device");
	t_check_no_cuda(ms_gpu_malloc(&p, 16, &err), &err, "ms_gpu_malloc");
	T_CHECK(p == NULL, "ms_gpu_malloc left a pointer");
	ms_gpu_free(NULL);
	t_check_no_cuda(ms_gpu_upload(f, f, 4, &err), &err, "ms_gpu_upload");
	t_check_no_cuda(ms_gpu_download(f, f, 4, &err), &err, "ms_gpu_download");
	t_check_no_cuda(ms_gpu_memset(f, 0, 4, &err), &err, "ms_gpu_memset");
	t_check_no_cuda(ms_gpu_stream_sync(NULL, &err), &err, "ms_gpu_stream_sync");
	t_check_no_cuda(ms_gpu_dequant(MS_TYPE_Q4_0, f, f, 32, false, NULL, &err),
		   &err, "ms_gpu_dequant");
	t_check_no_cuda(ms_gpu_ctx_init(&c, 0, NULL, &err), &err, "ms_gpu_ctx_init");
	T_CHECK(c == NULL, "ms_gpu_ctx_init left a context");
	ms_gpu_ctx_free(NULL);
	T_CHECK(ms_gpu_ctx_stream(NULL) == NULL, "stream");
	T_CHECK(ms_gpu_ctx_device(NULL) == -1, "device");
	t_check_no_cuda(ms_gpu_experts_ffn(NULL, &g, 1, f, 0, f, 1, MS_GPU_FFN_AUTO,
				      &err),
		   &err, "ms_gpu_experts_ffn");
	t_check_no_cuda(ms_gpu_expert_ffn(NULL, &g, f, f, 1, MS_GPU_FFN_AUTO, &err),
		   &err, "ms_gpu_expert_ffn");
	t_check_no_cuda(ms_gpu_dense(NULL, MS_TYPE_F32, f, 1, 1, f, f, 1, &err),
		   &err, "ms_gpu_dense");
	t_check_no_cuda(ms_gpu_expert_ffn_host(&v, f, f, 1, MS_GPU_FFN_AUTO, 0,
					  &err),
		   &err, "ms_gpu_expert_ffn_host");
	t_check_no_cuda(ms_gpu_fill_blocks(MS_TYPE_Q4_0, f, 18, 1, NULL, &err),
		   &err, "ms_gpu_fill_blocks");
	t_check_no_cuda(ms_gpu_ctx_set_q8(NULL, true, &err), &err,
		   "ms_gpu_ctx_set_q8");
	t_check_no_cuda(ms_gpu_ctx_set_split(NULL, 2, &err), &err,
		   "ms_gpu_ctx_set_split");
	t_check_no_cuda(ms_gpu_ctx_set_chunk(NULL, 4096, &err), &err,
		   "ms_gpu_ctx_set_chunk");
	t_check_no_cuda(ms_gpu_ctx_set_pdl(NULL, true, &err), &err,
		   "ms_gpu_ctx_set_pdl");
	T_CHECK(!ms_gpu_ctx_pdl(NULL) && *ms_gpu_ctx_pdl_note(NULL),
		"ms_gpu_ctx_pdl without CUDA: on, or no note");
	t_check_no_cuda(ms_gpu_ctx_mark(NULL, &err), &err, "ms_gpu_ctx_mark");
	t_check_no_cuda(ms_gpu_ctx_elapsed(NULL, &a, &err), &err,
		   "ms_gpu_ctx_elapsed");
	t_check_no_cuda(ms_gpu_copy_bandwidth(NULL, 1 << 20, 1, &a, &b, &err), &err,
		   "ms_gpu_copy_bandwidth");
	struct ms_gpu_marks *mk = (struct ms_gpu_marks *)1;
	t_check_no_cuda(ms_gpu_marks_new(NULL, 4, &mk, &err), &err,
		   "ms_gpu_marks_new");
	T_CHECK(!mk, "ms_gpu_marks_new without CUDA: a set of marks");
	t_check_no_cuda(ms_gpu_marks_at(NULL, NULL, 0, &err), &err,
		   "ms_gpu_marks_at");
	t_check_no_cuda(ms_gpu_marks_ms(NULL, 0, 1, &a, &err), &err,
		   "ms_gpu_marks_ms");
	ms_gpu_marks_free(NULL);
	T_CHECK(ms_gpu_xq_bytes(64, 1) == 0 && ms_gpu_graph_nodes(NULL) == 0,
		"without CUDA: prepared inputs of %zu bytes, graphs of %zu nodes",
		ms_gpu_xq_bytes(64, 1), ms_gpu_graph_nodes(NULL));
	for (size_t t = 0; t < N_ALL; t++) {
		T_CHECK(!ms_gpu_dequant_supported(all_types[t]),
			"dequant supported without CUDA");
		T_CHECK(!ms_gpu_matvec_supported(all_types[t]),
			"matvec supported without CUDA");
	}
	T_CHECK(!strcmp(ms_gpu_ffn_path_name(MS_GPU_FFN_CUBLAS), "cublas"),
		"path name");
	T_CHECK(!strcmp(ms_gpu_ffn_path_name(MS_GPU_FFN_MATVEC_Q8),
			"matvec-q8"),
		"path name");
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "--bench"))
		return bench_gpu_main(argc - 1, argv + 1);

	rng = t_seed();
	check_host_f16();
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	if (!ms_gpu_built()) {
		check_stubs();
		if (t_failures)
			return t_done();
		t_skip("built without CUDA (every GPU entry point answers "
		       "-ENOTSUP, checked)");
	}
	int n = ms_gpu_list(g, MS_GPU_MAX, &err);
	if (n == -ENODEV) {
		struct ms_err e2 = { 0 };
		int rc = ms_gpu_ctx_init(&ctx, 0, NULL, &e2);
		T_CHECK(rc == -ENODEV, "ms_gpu_ctx_init without a GPU: %d", rc);
		if (t_failures)
			return t_done();
		t_skip("no GPU: %s", err.msg);
	}
	T_CHECK(n >= 1, "ms_gpu_list = %d: %s", n, err.msg);
	if (n < 1)
		return t_done();
	printf("%s; gpu 0: %s, sm_%d%d, %d SMs\n", ms_gpu_build_info(),
	       g[0].name, g[0].cc_major, g[0].cc_minor, g[0].multiprocessors);
	if (ms_gpu_ctx_init(&ctx, 0, NULL, &err))
		t_fatal("ms_gpu_ctx_init: %s", err.msg);

	check_dequant();
	check_matvec();
	check_matvec_q8();
	check_split();
	check_chunk();
	check_pdl();
	check_cublas();
	check_dense();
	check_errors();
	check_host_helper();
	check_cli();
	check_bench();
	printf("worst matvec relative L2 %.2e (bound %.0e)\n", worst_matvec,
	       TOL_MATVEC);
	printf("worst matvec-q8 relative L2 vs float64 %.2e (bounds %.1e a "
	       "product, %.1e the FFN)\n",
	       worst_q8, TOL_Q8_PRODUCT, TOL_Q8_FFN);
	ms_gpu_ctx_free(ctx);
	return t_done();
}
