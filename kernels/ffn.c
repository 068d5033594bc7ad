/*
 * ffn.c - one routed expert's FFN on the CPU, for a batch of tokens:
 *
 *     y = W_down . (silu(W_gate . x) * (W_up . x))
 *
 * This is what a machine without VRAM for the cold experts computes them
 * with (llama.cpp's `-ot exps=CPU`), and the C reference every GPU kernel is
 * checked against.
 *
 * The weights stay quantised. A thread dequantises a few rows (one on the
 * scalar path, R on the vector path, R chosen so that R rows fit in L2) into
 * its own buffer and dots them with all B inputs before moving on, so an
 * expert is read from memory once per call whatever B is, and no f32 copy
 * of a whole projection ever exists.
 *
 * Two phases, each split over the threads by rows: (1) gate and up rows ->
 * h[b][r] = silu(g) * u, computed in double from the two f32 dots; (2) down
 * rows -> y. Every output element is computed by exactly one thread with the
 * same instructions whatever the split, so the result is bit-for-bit the same
 * for any thread count; only the path (scalar or AVX2) changes rounding.
 *
 * The scalar path is the reference: ms_dequant_row (bit-identical to ggml)
 * and dots accumulated in double. The AVX2 path (ffn_avx2.c) at B = 1 uses
 * fused kernels that never write a dequantised row (the store and reload
 * would cost as much as the dequantisation): each takes the block scales
 * out of the sum and needs the sums of the input over every 16 and 32
 * elements, computed here once per call. At B > 1 it dequantises R rows
 * with vector dequantisers (bit-identical to the scalar ones) and dots them
 * with all inputs in 4x2 tiles. Both keep f32 accumulators and flush them
 * into double every 1024 elements.
 *
 * Threads: a struct ms_ffn_pool keeps workers parked on a condition
 * variable, which is what a decode loop wants; without one each call starts
 * and joins its threads (if a thread cannot be started, the caller runs its
 * share: slower, never wrong).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moestream/kernels.h"
#include "moestream/model.h"

#include "ffn_internal.h"

#define MAX_THREADS 512
#define MAX_TOKENS (1 << 20)

static const char *const path_names[MS_FFN_PATH_COUNT] = {
	[MS_FFN_PATH_AUTO] = "auto",
	[MS_FFN_PATH_SCALAR] = "scalar",
	[MS_FFN_PATH_AVX2] = "avx2",
};

const char *ms_ffn_path_name(enum ms_ffn_path p)
{
	return (unsigned)p < MS_FFN_PATH_COUNT ? path_names[p] : "invalid";
}

bool ms_ffn_path_available(enum ms_ffn_path p)
{
	switch (p) {
	case MS_FFN_PATH_AUTO:
	case MS_FFN_PATH_SCALAR:
		return true;
	case MS_FFN_PATH_AVX2:
		return ms_ffn_avx2_cpu();
	default:
		return false;
	}
}

static enum ms_ffn_path resolve_path(enum ms_ffn_path p)
{
	if (p == MS_FFN_PATH_AUTO)
		return ms_ffn_avx2_cpu() ? MS_FFN_PATH_AVX2
					 : MS_FFN_PATH_SCALAR;
	return p;
}

bool ms_ffn_type_supported(uint32_t type)
{
	return ms_dequant_supported(type);
}

bool ms_ffn_q8_ok(uint32_t type, int64_t n)
{
	return ms_q8_type(type) && n > 0 && n % MS_Q8_QK == 0;
}

bool ms_ffn_type_vectorised(uint32_t type, enum ms_ffn_path p)
{
	p = resolve_path(p);
	return p == MS_FFN_PATH_AVX2 && ms_ffn_avx2_cpu() &&
	       ms_ffn_type_supported(type) && ms_ffn_avx2_has(type);
}

/* Caller checked the path and the type. */
static int dequant(enum ms_ffn_path p, uint32_t type, const void *src,
		   float *dst, int64_t n)
{
	if (p == MS_FFN_PATH_AVX2 && ms_ffn_avx2_has(type))
		return ms_ffn_avx2_dequant(type, src, dst, n);
	return ms_dequant_row(type, src, dst, n);
}

int ms_ffn_dequant_row(enum ms_ffn_path p, uint32_t type, const void *src,
		       float *dst, int64_t n)
{
	p = resolve_path(p);
	if (!ms_ffn_path_available(p) || !ms_ffn_type_supported(type))
		return -ENOTSUP;
	const struct ms_type_info *ti = ms_type_get(type);
	if (!ti || n < 1 || n % ti->blck)
		return -EINVAL;
	return dequant(p, type, src, dst, n);
}

int ms_expert_view_bytes(const struct ms_expert_view *v, uint64_t bytes[3],
			 struct ms_err *err)
{
	uint64_t row, rows;
	int rc;
	if (v->n_embd < 1 || v->n_ff < 1)
		return ms_err_set(err, -EINVAL,
				  "expert: n_embd %lld, n_ff %lld: "
				  "both must be >= 1",
				  (long long)v->n_embd, (long long)v->n_ff);
	int np = v->fused ? 2 : 3;
	bytes[2] = 0;
	for (int j = 0; j < np; j++) {
		bool down = j == np - 1;
		int64_t in = down ? v->n_ff : v->n_embd;
		int64_t out =
			down ? v->n_embd : (v->fused ? 2 * v->n_ff : v->n_ff);
		static const char *const names[2][3] = {
			{ "gate", "up", "down" }, { "gate_up", "down", "" }
		};
		if ((rc = ms_type_row_size(v->type[j], in, &row, err)) != 0) {
			ms_err_prefix(err, "expert %s", names[v->fused][j]);
			return rc;
		}
		rows = (uint64_t)out;
		if (ms_mul_overflow_u64(row, rows, &bytes[j]))
			return ms_err_set(err, -EOVERFLOW,
					  "expert %s: %llu rows "
					  "of %llu bytes overflow",
					  names[v->fused][j],
					  (unsigned long long)rows,
					  (unsigned long long)row);
	}
	return 0;
}

/* ---- threads ------------------------------------------------------------------- */

typedef void (*task_fn)(void *ctx, int ith, int nth);

/* A decode step runs a few hundred short jobs (every product, each expert's
 * two halves), a few hundred microseconds apart: a worker that slept in
 * the kernel between them took longer to wake than some jobs take. So a
 * worker (and the caller waiting for the workers) first spins on the
 * generation (the pending count) for about this many pause instructions,
 * a fraction of a millisecond, and only then sleeps on the condition
 * variable; a pool left idle costs no CPU. */
#define POOL_SPIN 8192

struct ms_ffn_pool {
	int n; /* threads, the caller's included */
	pthread_t *th;
	int started; /* workers running */
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	_Atomic uint64_t gen;  /* bumped for every job */
	_Atomic int pending;   /* workers still in the current job */
	_Atomic int sleepers;  /* workers in (or entering) the go wait */
	_Atomic bool waiting;  /* the caller in (or entering) the done wait */
	_Atomic bool stop;
	task_fn fn;
	void *ctx;
};

struct worker_arg {
	struct ms_ffn_pool *pool;
	int ith;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Sleeping takes the mutex, counts itself in `sleepers` and checks the
 * generation again before waiting; the caller bumps the generation and
 * then takes the mutex to broadcast only when it sees a sleeper. Both
 * orders are sequentially consistent, so one of the two sees the other's
 * store: no wake-up is lost (the same for `pending` and `waiting`). */
static void *pool_worker(void *arg)
{
	struct worker_arg *a = arg;
	struct ms_ffn_pool *p = a->pool;
	int ith = a->ith;
	free(a);
	uint64_t seen = 0;
	for (;;) {
		for (int k = 0; k < POOL_SPIN && p->gen == seen && !p->stop; k++)
			cpu_relax();
		if (p->gen == seen && !p->stop) {
			pthread_mutex_lock(&p->mu);
			p->sleepers++;
			while (p->gen == seen && !p->stop)
				pthread_cond_wait(&p->go, &p->mu);
			p->sleepers--;
			pthread_mutex_unlock(&p->mu);
		}
		if (p->stop)
			break;
		seen = p->gen;
		p->fn(p->ctx, ith, p->n);
		if (--p->pending == 0 && p->waiting) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return NULL;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

int ms_ffn_pool_init(struct ms_ffn_pool **out, int n_threads,
		     struct ms_err *err)
{
	*out = NULL;
	if (n_threads < 0 || n_threads > MAX_THREADS)
		return ms_err_set(err, -EINVAL,
				  "ffn pool: %d threads: expected "
				  "0 (all CPUs) .. %d",
				  n_threads, MAX_THREADS);
	struct ms_ffn_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return ms_err_set(err, -ENOMEM, "ffn pool: out of memory");
	p->n = n_threads ? n_threads : online_cpus();
	p->th = calloc((size_t)p->n, sizeof(*p->th));
	if (!p->th) {
		free(p);
		return ms_err_set(err, -ENOMEM, "ffn pool: out of memory");
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	for (int i = 1; i < p->n; i++) {
		struct worker_arg *a = malloc(sizeof(*a));
		int rc = a ? 0 : ENOMEM;
		if (a) {
			a->pool = p;
			a->ith = i;
			rc = pthread_create(&p->th[i], NULL, pool_worker, a);
			if (rc)
				free(a);
		}
		if (rc) {
			ms_ffn_pool_free(p);
			return ms_err_set(err, -rc,
					  "ffn pool: starting thread "
					  "%d of %d: %s",
					  i + 1, n_threads, strerror(rc));
		}
		p->started = i;
	}
	*out = p;
	return 0;
}

void ms_ffn_pool_free(struct ms_ffn_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 1; i <= p->started; i++)
		pthread_join(p->th[i], NULL);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->mu);
	free(p->th);
	free(p);
}

int ms_ffn_pool_threads(const struct ms_ffn_pool *p)
{
	return p ? p->n : 0;
}

static void pool_run(struct ms_ffn_pool *p, task_fn fn, void *ctx)
{
	p->fn = fn;
	p->ctx = ctx;
	p->pending = p->n - 1;
	p->gen++; /* publishes fn and ctx (sequentially consistent) */
	if (p->sleepers) {
		pthread_mutex_lock(&p->mu);
		pthread_cond_broadcast(&p->go);
		pthread_mutex_unlock(&p->mu);
	}
	fn(ctx, 0, p->n);
	for (int k = 0; k < POOL_SPIN && p->pending; k++)
		cpu_relax();
	if (p->pending) {
		pthread_mutex_lock(&p->mu);
		p->waiting = true;
		while (p->pending)
			pthread_cond_wait(&p->done, &p->mu);
		p->waiting = false;
		pthread_mutex_unlock(&p->mu);
	}
}

struct spawn_arg {
	task_fn fn;
	void *ctx;
	int ith, nth;
};

static void *spawn_main(void *arg)
{
	struct spawn_arg *a = arg;
	a->fn(a->ctx, a->ith, a->nth);
	return NULL;
}

/* Without a pool: threads for this one job. A share whose thread could not
 * start runs on the caller. */
static void spawn_run(int n, task_fn fn, void *ctx)
{
	pthread_t th[MAX_THREADS];
	struct spawn_arg args[MAX_THREADS];
	bool ok[MAX_THREADS];
	for (int i = 1; i < n; i++) {
		args[i] = (struct spawn_arg){ fn, ctx, i, n };
		ok[i] = pthread_create(&th[i], NULL, spawn_main, &args[i]) == 0;
	}
	fn(ctx, 0, n);
	for (int i = 1; i < n; i++) {
		if (ok[i])
			pthread_join(th[i], NULL);
		else
			fn(ctx, i, n);
	}
}

/* ---- the FFN ---------------------------------------------------------------------- */

/* Up to this many inputs go through the fused kernels, two at a time where
 * the type has a two-input form (decode steps of several sequences: as
 * fast as dequantising for four, 1.5x faster for two, and a token's result
 * does not depend on how many came together). More (a prompt) dequantise
 * a few rows and dot them, which is faster from five on. */
#define MULTI_MAX 4

struct ffn_job {
	enum ms_ffn_path path;
	int64_t n_embd, n_ff, n_tok;
	const uint8_t *gate, *up, *down;
	uint32_t t_gate, t_up, t_down;
	uint64_t rs_gate, rs_up, rs_down; /* bytes per row */
	const float *x;
	float *h;     /* [n_tok][n_ff] */
	float *y;     /* [n_tok][n_embd] */
	int rows;     /* rows dequantised at a time */
	float **wbuf; /* per thread: rows x max(in) */
	float **tbuf; /* per thread: 2 x rows x n_tok */
	/* B <= MULTI_MAX on the AVX2 path: fused kernels (NULL: dequantise +
	 * dot), their several-input forms (NULL: one input at a time), and
	 * the sums of x and of h over every 16 and 32 elements they need,
	 * per input */
	ms_ffn_rowdot_fn rd_gate, rd_up, rd_down;
	ms_ffn_rowdot_multi_fn md_gate, md_up, md_down;
	float *xs16, *xs32, *hs16, *hs32;
	/* opts.q8: the inputs and h rounded to 8 bits, per token; each
	 * thread's unpacked row; the unpackers and the dot */
	bool q8;
	struct ms_q8_act *xq, *hq;
	struct ms_q8_w **wq;
	ms_q8_unpack_fn up_gate, up_up, up_down;
	ms_q8_dot_fn q8dot;
	ms_q8_dotn_fn q8dotn; /* NULL: q8dot per input */
	/* n_tok <= 4 on AVX2: the fused forms (NULL: unpack + dot), and
	 * their inputs, xq's and hq's (q8_fused_in) */
	ms_q8_fused_fn fu_gate, fu_up, fu_down;
	struct ms_q8_in xin, hin;
	int64_t xpart, hpart; /* blocks per fused call (q8_part_blocks) */
	struct ms_q8_pair *pairs;
	const float *xv[MULTI_MAX], *x16v[MULTI_MAX], *x32v[MULTI_MAX];
	const float *hv[MULTI_MAX], *h16v[MULTI_MAX], *h32v[MULTI_MAX];
	int rc; /* first failure, atomically */
	_Atomic int64_t next; /* the q8 phases' first unclaimed row (claim) */
};

/* Row `row` against nt inputs (<= MULTI_MAX) through the fused kernels:
 * out[t], each the same bits as the one-input kernel gives it alone. */
static void rowdot_tokens(ms_ffn_rowdot_fn rd, ms_ffn_rowdot_multi_fn md,
			  const uint8_t *row, const float *const *xv,
			  const float *const *a, const float *const *c,
			  int64_t n, int nt, float *out)
{
	for (int g = 0; g < nt; g += 2) {
		int k = nt - g < 2 ? nt - g : 2;
		if (md)
			md(row, xv + g, a + g, c + g, n, out + g, k);
		else
			for (int t = 0; t < k; t++)
				out[g + t] = rd(row, xv[g + t], a[g + t], c[g + t], n);
	}
}

/* s16[k] = sum of x[16k .. 16k+15], s32[k] likewise over 32 (n % 32 == 0). */
static void block_sums(const float *x, int64_t n, float *s16, float *s32)
{
	for (int64_t k = 0; k < n / 16; k++) {
		float s = 0.0f;
		for (int i = 0; i < 16; i++)
			s += x[16 * k + i];
		s16[k] = s;
	}
	for (int64_t k = 0; k < n / 32; k++)
		s32[k] = s16[2 * k] + s16[2 * k + 1];
}

static void job_fail(struct ffn_job *j, int rc)
{
	int zero = 0;
	__atomic_compare_exchange_n(&j->rc, &zero, rc, false, __ATOMIC_SEQ_CST,
				    __ATOMIC_SEQ_CST);
}

/* out[b * ld_out + r] = dot(w_r, x_b): the scalar reference in double. */
static void dot_scalar(const float *w, int n_rows, const float *x, int64_t ldx,
		       int64_t nb, int64_t n, float *out, int64_t ld_out)
{
	for (int64_t b = 0; b < nb; b++)
		for (int r = 0; r < n_rows; r++) {
			const float *wr = w + r * n, *xb = x + b * ldx;
			double s[4] = { 0, 0, 0, 0 };
			for (int64_t i = 0; i < n; i += 4) /* n % 32 == 0 */
				for (int k = 0; k < 4; k++)
					s[k] += (double)wr[i + k] *
						(double)xb[i + k];
			out[b * ld_out + r] =
				(float)((s[0] + s[1]) + (s[2] + s[3]));
		}
}

static void dot_rows(const struct ffn_job *j, const float *w, int n_rows,
		     const float *x, int64_t ldx, int64_t n, float *out,
		     int64_t ld_out)
{
	if (j->path == MS_FFN_PATH_AVX2)
		ms_ffn_avx2_dot(w, n_rows, x, ldx, j->n_tok, n, out, ld_out);
	else
		dot_scalar(w, n_rows, x, ldx, j->n_tok, n, out, ld_out);
}

static int dequant_rows(const struct ffn_job *j, uint32_t type,
			const uint8_t *base, uint64_t row_bytes, int64_t r0,
			int n_rows, int64_t n, float *w)
{
	for (int i = 0; i < n_rows; i++) {
		int rc = dequant(j->path, type,
				 base + (uint64_t)(r0 + i) * row_bytes,
				 w + (int64_t)i * n, n);
		if (rc)
			return rc;
	}
	return 0;
}

/* h = silu(g) * u, in double as every path forms it */
static inline float swiglu(double g, double u)
{
	return (float)(g / (1.0 + exp(-g)) * u);
}

static void share(int64_t n, int ith, int nth, int64_t *r0, int64_t *r1)
{
	*r0 = n * ith / nth;
	*r1 = n * (ith + 1) / nth;
}

/* The q8 phases hand out their n rows as the threads ask for them, from
 * j->next (0 when the phase starts: run_rows): each claim takes a 2 nth-th of the
 * rows left, rounded up to a multiple of `unit` (the rows unpacked at a
 * time) and at least CLAIM_MIN, so that the claims shrink towards the end
 * and the threads finish within a few rows of each other. A row's result
 * is the same whichever thread computes it.
 *
 * With a fixed half each (share), one thread often waited for the other:
 * on two vCPUs of a shared VM, 10-23 ms of a 160-180 ms four-sequence
 * decode step, up to 45 ms when one vCPU was slowed. Measured in one
 * process, alternating with the fixed halves: a one-sequence glm8 decode
 * step took 0.73-1.03 x the time (medians of 12-24 pairs over six runs;
 * 0.91-0.98 in four), four sequences 0.96-1.05 x; a 151552 x 5120 product
 * with four inputs 0.82 x (q4_K) and 0.87 x (q6_K), with one input 0.88 x.
 * Claims of a fixed 16 or 64 rows instead were 1.4 x and 1.17 x slower. */
#define CLAIM_MIN 8

static bool claim(struct ffn_job *j, int64_t n, int64_t unit, int nth,
		  int64_t *r0, int64_t *r1)
{
	int64_t at = j->next, c;
	do {
		if (at >= n)
			return false;
		c = (n - at) / (2 * nth);
		c = c < CLAIM_MIN ? CLAIM_MIN : c;
		c = (c + unit - 1) / unit * unit;
		c = c > n - at ? n - at : c;
	} while (!atomic_compare_exchange_weak(&j->next, &at, at + c));
	*r0 = at;
	*r1 = at + c;
	return true;
}

/* ---- opts.q8: 8-bit activations, integer dots (q8.c) --------------------------- */

/* x [n_tok][n] -> q [n_tok][n / 256], the threads splitting the tokens. */
struct q8_quant_job {
	const float *x;
	struct ms_q8_act *q;
	int64_t n, n_tok;
};

static void phase_q8_quantize(void *ctx, int ith, int nth)
{
	struct q8_quant_job *j = ctx;
	int64_t nb = j->n / MS_Q8_QK;
	for (int64_t t = j->n_tok * ith / nth; t < j->n_tok * (ith + 1) / nth; t++)
		ms_q8_quantize(j->x + t * j->n, j->q + t * nb, j->n);
}

/* Prompts (more than MS_Q8_FUSED_MAX inputs): each thread unpacks Q8_ROWS
 * rows at a time, then dots them with the inputs a tile at a time, the
 * tile small enough to stay in L2 while every row of the chunk passes over
 * it (a 12288-long input of 64 tokens is ~1 MB). */
#define Q8_ROWS 8
#define Q8_TILE_BYTES (192 * 1024)

/* Inputs per tile for rows of nb blocks: a multiple of 8, at least 8. */
static int64_t q8_tile(int64_t nb)
{
	int64_t t = Q8_TILE_BYTES / (nb * (int64_t)sizeof(struct ms_q8_act));
	return t < 8 ? 8 : t / 8 * 8;
}

/* out[k * B + b] (B = the job's inputs) = unpacked row k of w (nr rows
 * of nb blocks) against input b's blocks in q, tile by tile. */
static void q8_dots(const struct ffn_job *j, const struct ms_q8_w *w, int nr,
		    const struct ms_q8_act *q, int64_t nb, float *out,
		    int64_t os_row, int64_t os_tok)
{
	int64_t B = j->n_tok, tile = q8_tile(nb);
	for (int64_t t0 = 0; t0 < B; t0 += tile) {
		int64_t nt = B - t0 < tile ? B - t0 : tile;
		for (int k = 0; k < nr; k++) {
			const struct ms_q8_w *wk = w + k * nb;
			float *o = out + k * os_row + t0 * os_tok;
			if (j->q8dotn) {
				j->q8dotn(wk, q + t0 * nb, nb, nb, (int)nt, o,
					  os_tok);
				continue;
			}
			for (int64_t b = 0; b < nt; b++)
				o[b * os_tok] = j->q8dot(wk, q + (t0 + b) * nb, nb);
		}
	}
}

/* Software prefetch of the fused forms' weights, MS_Q8_PF_BYTES ahead of
 * the block being computed, into L2 (prefetcht1), from q8_pf_min_tok()
 * inputs on. Three or four inputs make a row compute-bound: 5-14 GB/s per
 * core, and at that pace the hardware prefetchers left the kernels waiting
 * on DRAM (Zen 4, one thread, 4 inputs, a 5120 x 12288 matrix: q6_K 33
 * GMAC/s from DRAM against 47 from L3; q4_K 43 against 48). With a row's
 * prefetch at the row's start, two threads, 4 inputs: q6_K 56-65 -> 87-92
 * GMAC/s, q4_K 74-88 -> 88-100, q2_K and q3_K +6-8% (a shared VM: wide
 * ranges). Into L1 (prefetcht0) it gained nothing. A line per block
 * between the products (the kernels' pf) then beat the row at once on Zen
 * 5 (two threads, 60000 x 5120, in-process pairs, median time against the
 * row's: 3 inputs q4_K 0.79, q6_K 0.96, q2_K 0.96; 4 inputs q4_K 0.84,
 * q6_K 0.97, q2_K 0.95, q3_K 0.95; against 4 KiB ahead, 2 KiB was 2%
 * (q4_K) and 9% (q6_K) slower, 8 KiB 4%).
 *
 * With one or two inputs (memory-bound) the two CPUs differ: on Zen 4 it
 * cost up to 20% (Zen 5 a line per block: q4_K +5%, q6_K +10-12%, q2_K
 * -4%), so there those rows are left to the hardware; on an Intel Xeon
 * with AMX (Sapphire Rapids class, 2 vCPUs, 30 GB/s read) the hardware
 * alone streamed a 5120 x 65536 matrix at one input at 10-17 GB/s, with
 * the row prefetch at 20-23 (q2_K 38 -> 60 GMAC/s, q3_K 30 -> 46, q4_K 17
 * -> 40, q6_K 21 -> 28; prefetcht0 no better, prefetchnta half; 4, 8 or
 * 16 KiB ahead the same). So on Intel every input count prefetches (a line
 * per block there not yet measured). MS_FFN_PF_MIN_TOK=N in the
 * environment sets the threshold (1..5; 5: never), for measuring. */
static int64_t q8_pf_min_tok(void)
{
	static _Atomic int known = 0;
	int k = known;
	if (k)
		return k;
	const char *v = getenv("MS_FFN_PF_MIN_TOK");
	if (v && *v >= '1' && *v <= '5' && !v[1]) {
		k = *v - '0';
	} else {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
		__builtin_cpu_init();
		k = __builtin_cpu_is("intel") ? 1 : 3;
#else
		k = 3;
#endif
	}
	known = k;
	return k;
}

/* A fused product's rows with long inputs. Four inputs' blocks and pairs
 * take 1424 bytes per block of a row: a 12288-long row's (attn_output, a
 * dense FFN's down) 67 KB, more than a 48 KB L1, so that each block reread
 * its inputs from L2 while its weights came from DRAM: 1.58 x the time per
 * block of a 5120-long row (Zen 5, one thread, in-process pairs). So when a
 * row's inputs would fill more than 2/3 of L1, a fused call takes a part
 * of Q8_TILE rows at a time (the same blocks of each), the lanes carried
 * between the parts (struct ms_q8_part), and each part prefetches the part
 * that comes two calls later (the row two on, or at the tile's end the
 * next part's first rows): 0.72 x the time per block, 11.2 against 15.7
 * ns (the next 4 KiB instead: 0.91 x). ms_matmul of 5120 x 12288 on two
 * threads, alternating with whole rows in one process: q4_K 0.82 x the
 * time with four inputs, 0.93 x with three, 0.87 x with two; q6_K 0.79 x
 * with four. In a four-sequence glm8 decode step (11 attn_output and 3
 * dense down products, ~15% of it) that is a few percent, below what
 * this VM's noise lets a step's time show (1.01 x, quartiles 0.97-1.09,
 * 30 pairs). MS_FFN_L1_BYTES=N in the environment sets the L1 size taken
 * (0: rows never cut), for measuring. */
#define Q8_TILE 8

static int64_t q8_l1_bytes(void)
{
	static _Atomic int64_t known = -1;
	int64_t k = known;
	if (k >= 0)
		return k;
	const char *v = getenv("MS_FFN_L1_BYTES");
	if (v && *v) {
		char *end;
		long long n = strtoll(v, &end, 10);
		k = !*end && n >= 0 ? n : -1;
	}
	if (k < 0) {
		long n = sysconf(_SC_LEVEL1_DCACHE_SIZE);
		k = n > 0 ? n : 32 * 1024;
	}
	known = k;
	return k;
}

/* The blocks of a row a fused call takes against nt inputs: all nb, or
 * equal parts that fit in 2/3 of L1 (at least 4 blocks). */
static int64_t q8_part_blocks(int nt, int64_t nb)
{
	int64_t per = nt * (int64_t)sizeof(struct ms_q8_act) +
		      nt / 2 * (int64_t)sizeof(struct ms_q8_pair);
	int64_t room = q8_l1_bytes() * 2 / 3;
	if (!room || nb * per <= room)
		return nb;
	int64_t fit = room / per < 4 ? 4 : room / per;
	int64_t parts = (nb + fit - 1) / fit;
	return (nb + parts - 1) / parts;
}

/* Rows r0 .. r0 + nr - 1 (nr <= Q8_TILE) of `base` against in through fu,
 * row k's outputs into o[k]: whole rows when part >= nb, else parts of
 * `part` blocks, every row's part before the next part of any. */
static void q8_fused_rows(ms_q8_fused_fn fu, const uint8_t *base, uint64_t rs,
			  const struct ms_q8_in *in, int64_t nb, int64_t part,
			  int64_t r0, int nr, float (*o)[MS_Q8_FUSED_MAX])
{
	if (part >= nb) {
		for (int k = 0; k < nr; k++)
			fu(base + (uint64_t)(r0 + k) * rs, in, NULL, nb, o[k]);
		return;
	}
	_Alignas(64) float acc[Q8_TILE][MS_Q8_PART_FLOATS];
	int64_t bb = (int64_t)rs / nb; /* bytes per block */
	for (int64_t i0 = 0; i0 < nb; i0 += part) {
		int64_t i1 = i0 + part < nb ? i0 + part : nb;
		for (int k = 0; k < nr; k++) {
			/* two calls on: row k + 2 here, else the first rows
			 * of the next part, or of the next tile */
			int64_t ahead = k + 2 < nr ? 2 * (int64_t)rs
					: i1 < nb  ? (2 - nr) * (int64_t)rs + part * bb
						   : 2 * (int64_t)rs - i0 * bb;
			struct ms_q8_part p = { i0, i1, in->pf ? ahead : 0, acc[k] };
			fu(base + (uint64_t)(r0 + k) * rs, in, &p, nb, o[k]);
		}
	}
}

/* Rows r .. r + nr - 1 of `base` unpacked into w. */
static void q8_unpack_rows(ms_q8_unpack_fn up, const uint8_t *base, uint64_t rs,
			   int64_t r, int nr, struct ms_q8_w *w, int64_t nb)
{
	for (int k = 0; k < nr; k++)
		up(base + (uint64_t)(r + k) * rs, w + k * nb, nb);
}

/* Phase 1 with opts.q8: gate and up rows against every token (fused for a
 * few tokens, else Q8_ROWS unpacked rows at a time); h as on the other
 * paths. */
static void phase_gate_up_q8(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	int64_t r0, r1, B = j->n_tok, F = j->n_ff, nb = j->n_embd / MS_Q8_QK;
	struct ms_q8_w *w = j->wq[ith];
	float *g = j->tbuf[ith];
	if (j->fu_gate && j->fu_up) {
		float go[Q8_TILE][MS_Q8_FUSED_MAX], uo[Q8_TILE][MS_Q8_FUSED_MAX];
		while (claim(j, F, 1, nth, &r0, &r1))
			for (int64_t r = r0; r < r1; r += Q8_TILE) {
				int nr = r1 - r < Q8_TILE ? (int)(r1 - r) : Q8_TILE;
				q8_fused_rows(j->fu_gate, j->gate, j->rs_gate,
					      &j->xin, nb, j->xpart, r, nr, go);
				q8_fused_rows(j->fu_up, j->up, j->rs_up, &j->xin,
					      nb, j->xpart, r, nr, uo);
				for (int k = 0; k < nr; k++)
					for (int64_t b = 0; b < B; b++)
						j->h[b * F + r + k] =
							swiglu(go[k][b], uo[k][b]);
			}
		return;
	}
	float *uo = g + Q8_ROWS * B;
	while (claim(j, F, Q8_ROWS, nth, &r0, &r1))
		for (int64_t r = r0; r < r1; r += Q8_ROWS) {
			int nr = r1 - r < Q8_ROWS ? (int)(r1 - r) : Q8_ROWS;
			q8_unpack_rows(j->up_gate, j->gate, j->rs_gate, r, nr, w,
				       nb);
			q8_dots(j, w, nr, j->xq, nb, g, B, 1);
			q8_unpack_rows(j->up_up, j->up, j->rs_up, r, nr, w, nb);
			q8_dots(j, w, nr, j->xq, nb, uo, B, 1);
			for (int k = 0; k < nr; k++)
				for (int64_t b = 0; b < B; b++)
					j->h[b * F + r + k] =
						swiglu(g[k * B + b], uo[k * B + b]);
		}
}

/* Phase 2 with opts.q8 (h already rounded into hq); also ms_matmul's rows,
 * with the job's gate fields holding W and n_embd its row length. */
static void phase_rows_q8(struct ffn_job *j, int ith, int nth,
			  const uint8_t *base, uint64_t rs, ms_q8_unpack_fn up,
			  ms_q8_fused_fn fu, const struct ms_q8_act *q,
			  const struct ms_q8_in *in, int64_t part, int64_t n_in,
			  int64_t n_out)
{
	int64_t r0, r1, nb = n_in / MS_Q8_QK;
	struct ms_q8_w *w = j->wq[ith];
	if (fu) {
		float o[Q8_TILE][MS_Q8_FUSED_MAX];
		while (claim(j, n_out, 1, nth, &r0, &r1))
			for (int64_t r = r0; r < r1; r += Q8_TILE) {
				int nr = r1 - r < Q8_TILE ? (int)(r1 - r) : Q8_TILE;
				q8_fused_rows(fu, base, rs, in, nb, part, r, nr, o);
				for (int k = 0; k < nr; k++)
					for (int64_t b = 0; b < j->n_tok; b++)
						j->y[b * n_out + r + k] = o[k][b];
			}
		return;
	}
	while (claim(j, n_out, Q8_ROWS, nth, &r0, &r1))
		for (int64_t r = r0; r < r1; r += Q8_ROWS) {
			int nr = r1 - r < Q8_ROWS ? (int)(r1 - r) : Q8_ROWS;
			q8_unpack_rows(up, base, rs, r, nr, w, nb);
			q8_dots(j, w, nr, q, nb, j->y + r, 1, n_out);
		}
}

static void phase_down_q8(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	phase_rows_q8(j, ith, nth, j->down, j->rs_down, j->up_down, j->fu_down,
		      j->hq, &j->hin, j->hpart, j->n_ff, j->n_embd);
}

static void phase_matmul_q8(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	phase_rows_q8(j, ith, nth, j->gate, j->rs_gate, j->up_gate, j->fu_gate,
		      j->xq, &j->xin, j->xpart, j->n_embd, j->n_ff);
}

static void run_phase(const struct ms_ffn_opts *opts, int nth, task_fn fn,
		      void *ctx)
{
	if (opts->pool)
		pool_run(opts->pool, fn, ctx);
	else
		spawn_run(nth, fn, ctx);
}

/* A q8 phase: its rows claimed from the first (claim) */
static void run_rows(const struct ms_ffn_opts *opts, int nth, task_fn fn,
		     struct ffn_job *j)
{
	j->next = 0;
	run_phase(opts, nth, fn, j);
}

/* Rounds n_tok rows of n values to 8 bits, on the job's threads from
 * Q8_QUANT_PAR values on: in vectors a 5120-value row takes about a
 * microsecond, less than handing a job to the pool and waiting for it
 * (a four-sequence decode step made ~290 such hand-offs). */
#define Q8_QUANT_PAR (64 * 1024)

static void q8_quantize_all(const struct ms_ffn_opts *opts, int nth,
			    const float *x, struct ms_q8_act *q, int64_t n,
			    int64_t n_tok)
{
	struct q8_quant_job qj = { x, q, n, n_tok };
	if (n_tok == 1 || n * n_tok < Q8_QUANT_PAR)
		ms_q8_quantize(x, q, n * n_tok); /* the rows' blocks are contiguous */
	else
		run_phase(opts, nth < n_tok ? nth : (int)n_tok,
			  phase_q8_quantize, &qj);
}

/* A fused product's inputs: n_tok rows of nb blocks at q, their pairs at
 * pp (q8_setup's pairs), the prefetch as q8_pf_min_tok says. */
static void q8_fused_in(const struct ffn_job *j, const struct ms_q8_act *q,
			int64_t nb, struct ms_q8_pair *pp, struct ms_q8_in *in,
			int64_t *part)
{
	memset(in, 0, sizeof(*in));
	*part = q8_part_blocks((int)j->n_tok, nb);
	in->nt = (int)j->n_tok;
	in->pf = j->n_tok >= q8_pf_min_tok();
	for (int64_t b = 0; b < j->n_tok; b++)
		in->x[b] = q + b * nb;
	if (j->n_tok >= 2)
		ms_q8_pairs(in, nb, pp);
}

/* The q8 fields of a job: unpackers, dot, the rounded inputs and a row
 * buffer per thread (Q8_ROWS rows of `rows_in` values at most). */
static int q8_setup(struct ffn_job *j, int nth, int64_t rows_in,
		    int64_t n_x, int64_t n_h)
{
	bool avx2 = j->path == MS_FFN_PATH_AVX2;
	j->q8 = true;
	j->q8dot = ms_q8_dotter(avx2);
	j->q8dotn = avx2 ? ms_q8_avx512_dotn() : NULL;
	j->up_gate = ms_q8_unpacker(j->t_gate, avx2);
	j->up_up = j->up ? ms_q8_unpacker(j->t_up, avx2) : NULL;
	j->up_down = j->down ? ms_q8_unpacker(j->t_down, avx2) : NULL;
	if (avx2 && j->n_tok <= MS_Q8_FUSED_MAX) {
		j->fu_gate = ms_q8_avx2_fused(j->t_gate);
		j->fu_up = j->up ? ms_q8_avx2_fused(j->t_up) : NULL;
		j->fu_down = j->down ? ms_q8_avx2_fused(j->t_down) : NULL;
	}
	size_t nx = (size_t)(j->n_tok * n_x / MS_Q8_QK),
	       nh = (size_t)(j->n_tok * n_h / MS_Q8_QK);
	j->xq = aligned_alloc(32, (nx + nh) * sizeof(struct ms_q8_act));
	j->hq = j->xq ? j->xq + nx : NULL;
	j->wq = calloc((size_t)nth, sizeof(*j->wq));
	if (!j->xq || !j->wq)
		return -ENOMEM;
	if ((j->fu_gate || j->fu_down) && j->n_tok >= 2) {
		/* a pair's blocks per two inputs (nx / n_tok blocks each) */
		size_t np = (size_t)(j->n_tok / 2) * (nx + nh) / (size_t)j->n_tok;
		if (!(j->pairs = aligned_alloc(64, np * sizeof(*j->pairs))))
			return -ENOMEM;
	}
	for (int i = 0; i < nth; i++)
		if (!(j->wq[i] = aligned_alloc(32, (size_t)(Q8_ROWS * rows_in /
								   MS_Q8_QK) *
							   sizeof(struct ms_q8_w))))
			return -ENOMEM;
	return 0;
}

static void q8_free(struct ffn_job *j, int nth)
{
	for (int i = 0; j->wq && i < nth; i++)
		free(j->wq[i]);
	free(j->wq);
	free(j->xq);
	free(j->pairs);
}

/* Phase 1: gate and up rows of this thread's share -> h. */
static void phase_gate_up(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	int64_t r0, r1, B = j->n_tok, E = j->n_embd, F = j->n_ff;
	float *w = j->wbuf[ith], *g = j->tbuf[ith],
	      *u = g + (int64_t)j->rows * B;
	share(F, ith, nth, &r0, &r1);
	if (j->rd_gate && j->rd_up) {
		for (int64_t r = r0; r < r1; r++) {
			float go[MULTI_MAX], uo[MULTI_MAX];
			rowdot_tokens(j->rd_gate, j->md_gate,
				      j->gate + (uint64_t)r * j->rs_gate, j->xv,
				      j->x16v, j->x32v, E, (int)B, go);
			rowdot_tokens(j->rd_up, j->md_up,
				      j->up + (uint64_t)r * j->rs_up, j->xv,
				      j->x16v, j->x32v, E, (int)B, uo);
			for (int64_t b = 0; b < B; b++)
				j->h[b * F + r] = swiglu(go[b], uo[b]);
		}
		return;
	}
	for (int64_t r = r0; r < r1; r += j->rows) {
		int nr = r1 - r < j->rows ? (int)(r1 - r) : j->rows;
		int rc = dequant_rows(j, j->t_gate, j->gate, j->rs_gate, r, nr,
				      E, w);
		if (rc) {
			job_fail(j, rc);
			return;
		}
		dot_rows(j, w, nr, j->x, E, E, g, j->rows);
		rc = dequant_rows(j, j->t_up, j->up, j->rs_up, r, nr, E, w);
		if (rc) {
			job_fail(j, rc);
			return;
		}
		dot_rows(j, w, nr, j->x, E, E, u, j->rows);
		for (int64_t b = 0; b < B; b++)
			for (int i = 0; i < nr; i++)
				j->h[b * F + r + i] = swiglu(g[b * j->rows + i],
							     u[b * j->rows + i]);
	}
}

/* Phase 2: down rows of this thread's share -> y. */
static void phase_down(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	int64_t r0, r1, E = j->n_embd, F = j->n_ff;
	float *w = j->wbuf[ith];
	share(E, ith, nth, &r0, &r1);
	if (j->rd_down) {
		for (int64_t r = r0; r < r1; r++) {
			float o[MULTI_MAX];
			rowdot_tokens(j->rd_down, j->md_down,
				      j->down + (uint64_t)r * j->rs_down, j->hv,
				      j->h16v, j->h32v, F, (int)j->n_tok, o);
			for (int64_t b = 0; b < j->n_tok; b++)
				j->y[b * E + r] = o[b];
		}
		return;
	}
	for (int64_t r = r0; r < r1; r += j->rows) {
		int nr = r1 - r < j->rows ? (int)(r1 - r) : j->rows;
		int rc = dequant_rows(j, j->t_down, j->down, j->rs_down, r, nr,
				      F, w);
		if (rc) {
			job_fail(j, rc);
			return;
		}
		dot_rows(j, w, nr, j->h, F, F, j->y + r, E);
	}
}

/* Validates the view against the path: sizes, types, pointers. */
static int check_view(const struct ms_expert_view *v, enum ms_ffn_path path,
		      uint64_t bytes[3], struct ms_err *err)
{
	int rc = ms_expert_view_bytes(v, bytes, err);
	if (rc)
		return rc;
	/* Every kernel steps through rows 32 elements at a time (a block of
	 * the 32-element types; f32/f16/bf16 rows are held to the same). */
	if (v->n_embd % 32 || v->n_ff % 32)
		return ms_err_set(err, -EINVAL,
				  "expert: n_embd %lld and n_ff %lld must be "
				  "multiples of 32",
				  (long long)v->n_embd, (long long)v->n_ff);
	int np = v->fused ? 2 : 3;
	for (int j = 0; j < np; j++) {
		if (!v->data[j])
			return ms_err_set(err, -EINVAL,
					  "expert: projection %d "
					  "has no data",
					  j);
		if (!ms_ffn_type_supported(v->type[j]))
			return ms_err_set(err, -ENOTSUP,
					  "expert: no CPU kernel for type %s "
					  "(projection %s)",
					  ms_type_name(v->type[j]),
					  j == np - 1 ? "down"
					  : v->fused  ? "gate_up"
					  : j == 0    ? "gate"
						      : "up");
	}
	if (!ms_ffn_path_available(path))
		return ms_err_set(err, -ENOTSUP,
				  "ffn: the %s path is not "
				  "available on this CPU",
				  ms_ffn_path_name(path));
	return 0;
}

/* ms_expert_ffn with opts.q8: x rounded once for gate and up, h once for
 * down. */
static int expert_ffn_q8(struct ffn_job *j, const struct ms_ffn_opts *opts,
			 int nth, struct ms_err *err)
{
	int64_t E = j->n_embd, F = j->n_ff, B = j->n_tok;
	uint32_t ty[3] = { j->t_gate, j->t_up, j->t_down };
	int64_t len[3] = { E, E, F };
	for (int p = 0; p < 3; p++)
		if (!ms_ffn_q8_ok(ty[p], len[p]))
			return ms_err_set(err, -ENOTSUP,
					  "ffn: 8-bit activations need K-quant "
					  "weights (q2_K..q6_K) with rows of a "
					  "multiple of 256; %s is %s with rows of "
					  "%lld",
					  p == 0 ? "gate" : p == 1 ? "up" : "down",
					  ms_type_name(ty[p]), (long long)len[p]);
	j->h = malloc((size_t)(B * F) * sizeof(float));
	j->tbuf = calloc((size_t)nth, sizeof(*j->tbuf));
	int rc = !j->h || !j->tbuf ? -ENOMEM
				   : q8_setup(j, nth, E > F ? E : F, E, F);
	for (int i = 0; !rc && i < nth; i++)
		if (!(j->tbuf[i] = malloc((size_t)(2 * Q8_ROWS * B) *
					  sizeof(float))))
			rc = -ENOMEM;
	if (rc) {
		rc = ms_err_set(err, rc, "ffn: out of memory for %lld tokens on "
				"%d threads", (long long)B, nth);
		goto out;
	}
	q8_quantize_all(opts, nth, j->x, j->xq, E, B);
	if (j->fu_gate)
		q8_fused_in(j, j->xq, E / MS_Q8_QK, j->pairs, &j->xin,
			    &j->xpart);
	run_rows(opts, nth, phase_gate_up_q8, j);
	q8_quantize_all(opts, nth, j->h, j->hq, F, B);
	if (j->fu_down)
		q8_fused_in(j, j->hq, F / MS_Q8_QK,
			    j->pairs ? j->pairs + (B / 2) * (E / MS_Q8_QK) : NULL,
			    &j->hin, &j->hpart);
	run_rows(opts, nth, phase_down_q8, j);
out:
	q8_free(j, nth);
	for (int i = 0; j->tbuf && i < nth; i++)
		free(j->tbuf[i]);
	free(j->tbuf);
	free(j->h);
	return rc;
}

int ms_expert_ffn(const struct ms_expert_view *v, const float *x, float *y,
		  int64_t n_tokens, const struct ms_ffn_opts *opts,
		  struct ms_err *err)
{
	struct ms_ffn_opts def = { 0 };
	if (!opts)
		opts = &def;
	if (!v || !x || !y)
		return ms_err_set(err, -EINVAL,
				  "ffn: NULL view, input or output");
	if (n_tokens < 1 || n_tokens > MAX_TOKENS)
		return ms_err_set(err, -EINVAL,
				  "ffn: %lld tokens: expected "
				  "1..%d",
				  (long long)n_tokens, MAX_TOKENS);
	if ((unsigned)opts->path >= MS_FFN_PATH_COUNT)
		return ms_err_set(err, -EINVAL, "ffn: path %d unknown",
				  (int)opts->path);
	if (opts->n_threads < 0 || opts->n_threads > MAX_THREADS)
		return ms_err_set(err, -EINVAL,
				  "ffn: %d threads: expected 0 "
				  "(all CPUs) .. %d",
				  opts->n_threads, MAX_THREADS);
	enum ms_ffn_path path = resolve_path(opts->path);
	uint64_t bytes[3];
	int rc = check_view(v, path, bytes, err);
	if (rc)
		return rc;

	struct ffn_job j = {
		.path = path,
		.n_embd = v->n_embd,
		.n_ff = v->n_ff,
		.n_tok = n_tokens,
		.x = x,
		.y = y,
	};
	int64_t E = v->n_embd, F = v->n_ff;
	if (v->fused) {
		j.gate = v->data[0];
		j.t_gate = j.t_up = v->type[0];
		j.rs_gate = j.rs_up = bytes[0] / (uint64_t)(2 * F);
		j.up = j.gate + (uint64_t)F * j.rs_gate;
		j.down = v->data[1];
		j.t_down = v->type[1];
	} else {
		j.gate = v->data[0];
		j.up = v->data[1];
		j.down = v->data[2];
		j.t_gate = v->type[0];
		j.t_up = v->type[1];
		j.t_down = v->type[2];
		j.rs_gate = bytes[0] / (uint64_t)F;
		j.rs_up = bytes[1] / (uint64_t)F;
	}
	j.rs_down = (v->fused ? bytes[1] : bytes[2]) / (uint64_t)E;

	/* Rows per dequantisation: the vector path amortises the load of each
	 * input over R rows; R rows of the longer projection input stay within
	 * ~192 KiB, i.e. in L2. The scalar reference keeps one. */
	int64_t n_in = E > F ? E : F;
	if (path == MS_FFN_PATH_AVX2) {
		int64_t r = (192 << 10) / (n_in * (int64_t)sizeof(float));
		r &= ~(int64_t)3;
		j.rows = r < 4 ? 4 : r > 16 ? 16 : (int)r;
	} else {
		j.rows = 1;
	}

	int nth = opts->pool	    ? opts->pool->n
		  : opts->n_threads ? opts->n_threads
				    : online_cpus();
	int64_t rows_max = E > F ? E : F;
	if (!opts->pool && nth > rows_max)
		nth = (int)rows_max; /* no idle threads to start */

	if (opts->q8)
		return expert_ffn_q8(&j, opts, nth, err);

	/* Decode on the AVX2 path: fused kernels where the types have them. */
	if (path == MS_FFN_PATH_AVX2 && n_tokens <= MULTI_MAX) {
		j.rd_gate = ms_ffn_avx2_rowdot(j.t_gate);
		j.rd_up = ms_ffn_avx2_rowdot(j.t_up);
		if (!j.rd_gate || !j.rd_up)
			j.rd_gate = j.rd_up = NULL;
		j.rd_down = ms_ffn_avx2_rowdot(j.t_down);
		j.md_gate = j.rd_gate ? ms_ffn_avx2_rowdot_multi(j.t_gate) : NULL;
		j.md_up = j.rd_up ? ms_ffn_avx2_rowdot_multi(j.t_up) : NULL;
		j.md_down = j.rd_down ? ms_ffn_avx2_rowdot_multi(j.t_down) : NULL;
	}

	/* All memory up front, so that workers cannot fail for lack of it;
	 * row buffers only where rows are dequantised. */
	bool rows_needed = !(j.rd_gate && j.rd_down);
	size_t wsz =
		rows_needed ? (size_t)j.rows * (size_t)n_in * sizeof(float) : 0;
	size_t tsz = rows_needed ? 2 * (size_t)j.rows * (size_t)n_tokens *
					   sizeof(float)
				 : 0;
	j.h = malloc((size_t)n_tokens * (size_t)F * sizeof(float));
	int64_t nsum = j.rd_gate || j.rd_down ? n_tokens : 1;
	j.xs16 = malloc(((size_t)E / 16 + (size_t)E / 32 + (size_t)F / 16 +
			 (size_t)F / 32) * (size_t)nsum * sizeof(float) +
			4 * sizeof(float));
	if (j.xs16) {
		j.xs32 = j.xs16 + nsum * (E / 16);
		j.hs16 = j.xs32 + nsum * (E / 32);
		j.hs32 = j.hs16 + nsum * (F / 16);
	}
	j.wbuf = calloc((size_t)nth, sizeof(*j.wbuf));
	j.tbuf = calloc((size_t)nth, sizeof(*j.tbuf));
	rc = !j.h || !j.wbuf || !j.tbuf || !j.xs16 ? -ENOMEM : 0;
	for (int i = 0; !rc && i < nth; i++) {
		j.wbuf[i] = aligned_alloc(64, (wsz + 64) & ~(size_t)63);
		j.tbuf[i] = malloc(tsz + 1);
		if (!j.wbuf[i] || !j.tbuf[i])
			rc = -ENOMEM;
	}
	if (rc) {
		rc = ms_err_set(err, rc,
				"ffn: out of memory for %lld tokens on "
				"%d threads",
				(long long)n_tokens, nth);
		goto out;
	}

	for (int64_t b = 0; j.rd_gate && b < n_tokens; b++) {
		j.xv[b] = x + b * E;
		j.x16v[b] = j.xs16 + b * (E / 16);
		j.x32v[b] = j.xs32 + b * (E / 32);
		block_sums(j.xv[b], E, j.xs16 + b * (E / 16), j.xs32 + b * (E / 32));
	}
	if (opts->pool)
		pool_run(opts->pool, phase_gate_up, &j);
	else
		spawn_run(nth, phase_gate_up, &j);
	for (int64_t b = 0; !j.rc && j.rd_down && b < n_tokens; b++) {
		j.hv[b] = j.h + b * F;
		j.h16v[b] = j.hs16 + b * (F / 16);
		j.h32v[b] = j.hs32 + b * (F / 32);
		block_sums(j.hv[b], F, j.hs16 + b * (F / 16), j.hs32 + b * (F / 32));
	}
	if (!j.rc && opts->pool)
		pool_run(opts->pool, phase_down, &j);
	else if (!j.rc)
		spawn_run(nth, phase_down, &j);
	if (j.rc)
		rc = ms_err_set(err, j.rc, "ffn: dequantisation failed: %s",
				strerror(-j.rc));
out:
	for (int i = 0; j.wbuf && i < nth; i++)
		free(j.wbuf[i]);
	for (int i = 0; j.tbuf && i < nth; i++)
		free(j.tbuf[i]);
	free(j.wbuf);
	free(j.tbuf);
	free(j.h);
	free(j.xs16);
	return rc;
}

/* ---- a plain matrix product ------------------------------------------------------ */

/* One thread's rows of W x: the fused row-dot at B = 1 on the AVX2 path,
 * else R rows dequantised then dotted against every input. The job's
 * gate/t_gate/rs_gate hold W, n_embd its row length, n_ff its rows. */
static void phase_matmul(void *ctx, int ith, int nth)
{
	struct ffn_job *j = ctx;
	int64_t r0, r1, n_in = j->n_embd, n_out = j->n_ff;
	share(n_out, ith, nth, &r0, &r1);
	if (j->rd_gate) {
		for (int64_t r = r0; r < r1; r++) {
			float o[MULTI_MAX];
			rowdot_tokens(j->rd_gate, j->md_gate,
				      j->gate + (uint64_t)r * j->rs_gate, j->xv,
				      j->x16v, j->x32v, n_in, (int)j->n_tok, o);
			for (int64_t b = 0; b < j->n_tok; b++)
				j->y[b * n_out + r] = o[b];
		}
		return;
	}
	float *w = j->wbuf[ith];
	for (int64_t r = r0; r < r1; r += j->rows) {
		int nr = r1 - r < j->rows ? (int)(r1 - r) : j->rows;
		int rc = dequant_rows(j, j->t_gate, j->gate, j->rs_gate, r, nr,
				      n_in, w);
		if (rc) {
			job_fail(j, rc);
			return;
		}
		dot_rows(j, w, nr, j->x, n_in, n_in, j->y + r, n_out);
	}
}

int ms_matmul(uint32_t type, const void *w, int64_t n_in, int64_t n_out,
	      const float *x, float *y, int64_t n_tokens,
	      const struct ms_ffn_opts *opts, struct ms_err *err)
{
	struct ms_ffn_opts def = { 0 };
	if (!opts)
		opts = &def;
	if (!w || !x || !y)
		return ms_err_set(err, -EINVAL, "matmul: NULL weights, input or "
				  "output");
	if (n_tokens < 1 || n_tokens > MAX_TOKENS || n_in < 32 || n_in % 32 ||
	    n_out < 1)
		return ms_err_set(err, -EINVAL, "matmul: %lld tokens, %lld x %lld: "
				  "expected 1..%d tokens and rows of a multiple "
				  "of 32", (long long)n_tokens, (long long)n_out,
				  (long long)n_in, MAX_TOKENS);
	if (!ms_ffn_type_supported(type))
		return ms_err_set(err, -ENOTSUP, "matmul: no CPU kernel for type "
				  "%s", ms_type_name(type));
	enum ms_ffn_path path = resolve_path(opts->path);
	if (!ms_ffn_path_available(path))
		return ms_err_set(err, -ENOTSUP, "matmul: the %s path is not "
				  "available on this CPU", ms_ffn_path_name(path));
	uint64_t rs;
	int rc = ms_type_row_size(type, n_in, &rs, err);
	if (rc)
		return rc;
	struct ffn_job j = {
		.path = path, .n_embd = n_in, .n_ff = n_out, .n_tok = n_tokens,
		.gate = w, .t_gate = type, .rs_gate = rs, .x = x, .y = y,
	};
	int nth = opts->pool	    ? opts->pool->n
		  : opts->n_threads ? opts->n_threads
				    : online_cpus();
	if (!opts->pool && nth > n_out)
		nth = (int)n_out;
	if (opts->q8) {
		if (!ms_ffn_q8_ok(type, n_in))
			return ms_err_set(err, -ENOTSUP,
					  "matmul: 8-bit activations need K-quant "
					  "weights (q2_K..q6_K) with rows of a "
					  "multiple of 256; got %s with rows of "
					  "%lld",
					  ms_type_name(type), (long long)n_in);
		rc = q8_setup(&j, nth, n_in, n_in, 0);
		if (rc)
			rc = ms_err_set(err, rc, "matmul: out of memory");
		else {
			q8_quantize_all(opts, nth, x, j.xq, n_in, n_tokens);
			if (j.fu_gate)
				q8_fused_in(&j, j.xq, n_in / MS_Q8_QK, j.pairs,
					    &j.xin, &j.xpart);
			run_rows(opts, nth, phase_matmul_q8, &j);
		}
		q8_free(&j, nth);
		return rc;
	}
	if (path == MS_FFN_PATH_AVX2) {
		int64_t r = (192 << 10) / (n_in * (int64_t)sizeof(float));
		r &= ~(int64_t)3;
		j.rows = r < 4 ? 4 : r > 16 ? 16 : (int)r;
		if (n_tokens <= MULTI_MAX) {
			j.rd_gate = ms_ffn_avx2_rowdot(type);
			j.md_gate = ms_ffn_avx2_rowdot_multi(type);
		}
	} else {
		j.rows = 1;
	}
	size_t wsz = j.rd_gate ? 0 : (size_t)j.rows * (size_t)n_in * sizeof(float);
	j.wbuf = calloc((size_t)nth, sizeof(*j.wbuf));
	j.xs16 = j.rd_gate ? malloc(((size_t)n_in / 16 + (size_t)n_in / 32) *
					    (size_t)n_tokens * sizeof(float) +
				    2 * sizeof(float))
			   : NULL;
	rc = !j.wbuf || (j.rd_gate && !j.xs16) ? -ENOMEM : 0;
	for (int i = 0; !rc && wsz && i < nth; i++)
		if (!(j.wbuf[i] = aligned_alloc(64, (wsz + 63) & ~(size_t)63)))
			rc = -ENOMEM;
	if (rc) {
		rc = ms_err_set(err, rc, "matmul: out of memory");
		goto out;
	}
	if (j.rd_gate) {
		j.xs32 = j.xs16 + n_tokens * (n_in / 16);
		for (int64_t b = 0; b < n_tokens; b++) {
			j.xv[b] = x + b * n_in;
			j.x16v[b] = j.xs16 + b * (n_in / 16);
			j.x32v[b] = j.xs32 + b * (n_in / 32);
			block_sums(j.xv[b], n_in, j.xs16 + b * (n_in / 16),
				   j.xs32 + b * (n_in / 32));
		}
	}
	if (opts->pool)
		pool_run(opts->pool, phase_matmul, &j);
	else
		spawn_run(nth, phase_matmul, &j);
	if (j.rc)
		rc = ms_err_set(err, j.rc, "matmul: dequantisation failed: %s",
				strerror(-j.rc));
out:
	for (int i = 0; j.wbuf && i < nth; i++)
		free(j.wbuf[i]);
	free(j.wbuf);
	free(j.xs16);
	return rc;
}

/* Runs fn(ctx, ith, nth) on every thread of the pool (or nth fresh threads
 * without one), for the engine's own parallel loops. */
void ms_ffn_parallel(struct ms_ffn_pool *pool, int n_threads,
		     void (*fn)(void *ctx, int ith, int nth), void *ctx)
{
	if (pool)
		pool_run(pool, fn, ctx);
	else
		spawn_run(n_threads > 0 ? n_threads : online_cpus(), fn, ctx);
}
