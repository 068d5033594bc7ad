/*
 * bench_e2e.c - `moestream bench e2e --synthetic`: the claim of the project,
 * measured on a routing trace (the real engines, the default without
 * --synthetic, are bench_e2e_real.c; this file's bench_e2e_main chooses).
 * On a machine with far less RAM than the model, how many tokens a second
 * does an engine decode when its experts come through moestreamd, against
 * what users have today, and against what the disk and the routing allow?
 *
 * ---- The workload -----------------------------------------------------------
 *
 * A routing trace (--trace, or a generated one: trace gen's calibrated
 * defaults, --tokens N of them; by default enough tokens for the uncached
 * reads to fill the cache 8 times, so the cold start is a small part of the
 * run: 40 for GLM-4.7 at 25%) is replayed as an inference engine would run
 * it: per token, per MoE layer that runs, the engine spends the hot-layer
 * time (--compute-ms: attention, shared expert, router on the GPU), needs
 * the layer's k experts (the stall: from asking to having all k), and reads
 * them (--touch: every byte summed, as a CPU FFN or a copy to the GPU would
 * read them; --ffn cpu: the real expert FFN, ms_expert_ffn). The same
 * `use` code runs for every method, so the work after the stall is the same
 * and the touch sums (or FFN sums) must agree between methods: a method that
 * is fast because it read the wrong bytes fails the run.
 *
 * ---- The methods (in this order, each in a child process) -------------------
 *
 *  mmap      llama.cpp's default path: every shard mapped PROT_READ,
 *            MAP_SHARED, posix_fadvise(SEQUENTIAL) as llama_mmap does on
 *            Linux. The stall is the page faults: every 4 KiB page of the k
 *            experts touched once, by T threads (--threads, default the
 *            CPUs) that split each projection into T contiguous parts as
 *            ggml's mul_mat_id splits rows over its threads. Its hit rate is
 *            the share of experts whose pages were all in the page cache
 *            when needed (mincore), its bytes read /proc/self/io's
 *            read_bytes (readahead included). NOT modelled: MAP_POPULATE and
 *            MADV_WILLNEED over the whole file at load time (under a limit
 *            far below the file the populated pages are gone before the
 *            first token), llama.cpp's own compute (--touch stands in for
 *            it), and its overlap of one thread's faults with another's
 *            compute. How much a fault reads depends on the disk's
 *            read_ahead_kb (doubled by SEQUENTIAL; a fault reads that much
 *            around the page), so it is printed: 128 KiB is common, some
 *            virtual disks say 8 MiB, which reads 16 MiB around every
 *            fault into an expert projection of 3 MB.
 *  pread     a malloc'd cache of the same size as moestreamd's (slots of
 *            the largest expert), LRU exactly as tools/sim.c models it
 *            (so its hits must equal the simulator's LRU); misses read with
 *            pread through the page cache, the misses of a layer on T
 *            threads. What a simple engine with its own expert cache does.
 *  lru       a real moestreamd (bench_daemon_start: a private folder,
 *            socket and config) with [prefetch] policy = none, through the
 *            client library and replay_run: O_DIRECT io_uring into the
 *            shared arena, LRU, zero copy.
 *  prefetch  the same with policy = auto (--prefetch-policy), and the
 *            client sends the next layer's experts as a PREFETCH hint before
 *            each layer's compute (what an engine applying layer l+1's router
 *            to layer l's hidden state can send; the trace makes it an
 *            oracle). The daemon counts an acquire that finds its expert
 *            resident or already loading as a hit, so this method's hit rate
 *            says how much prefetch started in time, not what it hid.
 *
 * ---- The memory limit -------------------------------------------------------
 *
 * Each method runs in a fresh memory cgroup (bench_cg.c): v2 memory.max where the unified
 * hierarchy has the memory controller (a group under its root: our own group
 * may hold processes, and then v2 lets its children have no controllers),
 * else v1 memory.limit_in_bytes in a group under this process's own in
 * /sys/fs/cgroup/memory. (Only v1 has been run: the box this was written on
 * has no v2 memory controller.) The child joins it before anything else, so
 * the daemon it starts (and so the locked arena) is in it too. Peak is the group's memory.peak (v2) or
 * memory.max_usage_in_bytes (v1): anonymous memory, page cache and shmem of
 * every process in it. The page cache is dropped (sync, drop_caches = 3)
 * before each method. The default limit is the cache + 64 MiB (the issue's
 * allowance) + what the processes themselves need (32 MiB for binaries,
 * stacks and the daemon's tables, plus the client's trace and latency
 * arrays), so that mmap's page cache and the pread engine's page cache get
 * exactly what is left over, as on a machine that has just that much RAM.
 * Without root there is no cgroup and no dropping: the run goes on, says
 * so, and reports no peak.
 *
 * ---- The bounds ---------------------------------------------------------------
 *
 *  device   the trace's distinct experts in first-use order (up to 1.5 GB)
 *           read whole with a plain liburing loop: O_DIRECT, 1 MiB reads, 64
 *           in flight, registered files and buffers, buffers in 2 MiB pages
 *           (a read is one segment: the device's best). Measured twice
 *           before the methods and once after; the best is the device's
 *           limit (a shared disk has hiccups; before and after are both
 *           printed, so drift shows).
 *  Belady   tools/sim's MIN (and its LRU, the cross-check of pread) on the
 *           replayed tokens at the cache size.
 *  tok/s    1 / (bytes a token x (1 - Belady's hit) / device GB/s + compute
 *           a token): no method that loads every miss, one read at a time
 *           with the compute, can beat it. Overlapping reads with compute
 *           can, up to 1 / max(reads, compute): printed too.
 *
 * ---- The compute default --------------------------------------------------------
 *
 * An engine on a 24 GB consumer GPU (RTX 3090: 936 GB/s, 4090: 1008 GB/s)
 * decoding one token streams each MoE layer's hot tensors (attention,
 * shared expert, router, norms: every blk.N tensor but the routed experts)
 * once; decode GEMVs reach about 70% of the peak, so 700 GB/s, plus ~0.1 ms a
 * layer for kernel launches and the hand-off to the experts. For GLM-4.7
 * (~95 MB of hot tensors a layer) that is ~0.24 ms. The dense blocks and the
 * output head (~1 ms a token on GLM-4.7) are not counted: a model cut to a
 * few MoE layers would weigh them far too much.
 *
 * A benchmark is not a test: the targets are printed as met or MISSED and
 * the exit code says only whether the measurement ran (every method, on the
 * right bytes).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/iouring.h"
#include "moestream/kernels.h"
#include "moestream/model.h"
#include "bench_cg.h"
#include "bench_e2e.h"
#include "bench_rpc.h"
#include "replay.h"
#include "sim.h"
#include "tools.h"
#include "trace.h"

#define CMD "bench e2e"
#define MIB (1ull << 20)
#define PAGE 4096u
#define DAEMON_MIN_CACHE (64ull << 20) /* moestreamd's [cache] size minimum */
#define HEADROOM (64ull << 20)         /* the issue's: cache + 64 MiB */
#define PROC_BASE (32ull << 20)        /* binaries, stacks, daemon tables */
#define TOKENS_FILLS 8.0               /* default tokens: see bench_e2e_main */
#define TOKENS_MIN 32u
#define TOKENS_MAX 1000u
#define GPU_GBPS 700.0                 /* see the top of the file */
#define GPU_LAYER_MS 0.1
#define DEV_DEPTH 64u
#define DEV_REQ (1u << 20)
#define DEV_BYTES (1536ull << 20)
#define MAX_THREADS 64u
#define MAX_SWEEP 16
#define CHILD_TIMEOUT_MS 600000        /* per acquire: a slow disk, not a bug */

/* The targets. */
#define T_PREFETCH_OVER_MMAP 3.0
#define T_LRU_OVER_BELADY 0.95
#define T_STALL_CUT 0.30
#define T_READ_OVER_DEVICE 0.9

enum method { M_MMAP, M_PREAD, M_LRU, M_PREFETCH, M_COUNT };
static const char *const method_key[M_COUNT] = { "mmap", "pread", "lru",
						 "prefetch" };
static const char *const method_label[M_COUNT] = {
	"mmap (llama.cpp default)", "pread + malloc LRU",
	"moestreamd, prefetch off", "moestreamd, prefetch on"
};

/* ---- small helpers ---------------------------------------------------------------- */

/* read_ahead_kb of the disk under `path` (its partition's disk), or -1. */
static long read_ahead_kb(const char *path)
{
	struct stat st;
	if (stat(path, &st))
		return -1;
	static const char *const fmt[] = { "/sys/dev/block/%u:%u/queue/read_ahead_kb",
					   "/sys/dev/block/%u:%u/../queue/read_ahead_kb",
					   "/sys/class/bdi/%u:%u/read_ahead_kb" };
	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
		char p[128];
		uint64_t v;
		snprintf(p, sizeof(p), fmt[i], major(st.st_dev), minor(st.st_dev));
		if (bench_read_u64(p, &v))
			return (long)v;
	}
	return -1;
}

/* ---- a pool of threads for page faults, preads and the FFN's callers ------------- */

struct pool;
typedef void (*pool_fn)(void *ctx, uint32_t item, unsigned worker);

struct pool_arg {
	struct pool *p;
	unsigned w;
};

struct pool {
	pthread_t th[MAX_THREADS];
	struct pool_arg arg[MAX_THREADS];
	unsigned n_th;          /* workers started; the caller is worker 0 */
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	uint64_t gen;
	bool quit;
	pool_fn fn;
	void *ctx;
	uint32_t n_items;
	atomic_uint next;
	unsigned active;
};

static void pool_drain(struct pool *p, unsigned w)
{
	for (;;) {
		uint32_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->n_items)
			return;
		p->fn(p->ctx, i, w);
	}
}

static void *pool_main(void *v)
{
	struct pool_arg *a = v;
	struct pool *p = a->p;
	uint64_t seen = 0;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->gen == seen && !p->quit)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit)
			break;
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		pool_drain(p, a->w);
		pthread_mutex_lock(&p->mu);
		if (--p->active == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* T threads in all, the caller's included: 0 or -errno. */
static int pool_init(struct pool *p, unsigned threads)
{
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	for (unsigned i = 1; i < threads && i < MAX_THREADS; i++) {
		p->arg[p->n_th] = (struct pool_arg){ p, i };
		int rc = pthread_create(&p->th[p->n_th], NULL, pool_main, &p->arg[p->n_th]);
		if (rc)
			return -rc;
		p->n_th++;
	}
	return 0;
}

static void pool_free(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->quit = true;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n_th; i++)
		pthread_join(p->th[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
}

/* fn(ctx, i, worker) for i < n, on every thread; returns when all are done. */
static void pool_run(struct pool *p, pool_fn fn, void *ctx, uint32_t n)
{
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->n_items = n;
	atomic_store(&p->next, 0);
	p->active = p->n_th;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	pool_drain(p, 0);
	pthread_mutex_lock(&p->mu);
	while (p->active)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

/* ---- what the run is about -------------------------------------------------------- */

struct cfg {
	const char *model_path;
	struct ms_model *m;
	struct ms_trace *t;          /* the replayed tokens only (n_tokens cut) */
	char trace_desc[4200];
	uint32_t *tlayer;            /* trace layer -> model layer index */
	uint64_t bytes_per_token;    /* k x expert bytes over the layers run */
	uint64_t distinct;           /* (layer, expert) pairs the trace uses: the
					first uses, which no cache can hit */
	uint64_t max_expert;
	uint64_t expert_bytes_run;
	bool uniform;                /* every layer run has the same expert size */
	double compute_ms;
	char compute_why[200];
	bool ffn;
	unsigned threads;
	const char *policy;          /* the prefetch method's [prefetch] policy */
	char daemon_extra[1024];     /* --set, as INI lines for both daemons */
	char sets[1024];             /* --set, as given, space-separated */
	bool progress_tty;
	bool want[M_COUNT];
	long ra_kb;                  /* the model's disk's read_ahead_kb, or -1 */
};

/* One method at one cache size: what the child sends back through a pipe
 * (plain data, the same binary on both ends), then the cgroup's figures. */
struct mres {
	bool ran, ok;
	int rc;
	char err[480];
	uint32_t tokens;
	double seconds, tokps, stall_s, compute_s, use_s;
	double lat_p50_us, lat_p99_us;
	uint64_t experts, hits, misses;
	double hit_rate;
	bool disk_known;
	uint64_t disk_bytes;         /* read from the device */
	uint64_t used_bytes, touch_sum;
	double ffn_sum;
	/* moestreamd */
	uint64_t prefetch_issued, prefetch_used, prefetch_wasted_bytes;
	uint64_t prefetch_cancelled, prefetch_hints;
	double daemon_demand_stall_s;
	double io_busy_s;            /* the daemon's engine had a read in flight */
	uint32_t daemon_slots;
	uint64_t daemon_arena_bytes;   /* STATS: the arena ... */
	uint64_t daemon_staging_bytes; /* ... and the staging buffers: cache.size
					  between them */
	char read_path[400];           /* STATS: "staging: O_DIRECT into ..." */
	char arena[256], io[200], note[200];
	char stop_err[240];          /* the daemon did not exit cleanly */
	/* the cgroup's, filled by the parent */
	bool peak_known;
	uint64_t peak_bytes, failcnt, oom_kills;
};

/* One cache size. */
struct run {
	uint64_t cache_bytes, mem_limit, proc_need;
	uint32_t slots;              /* pread's slots (and the simulator's) */
	double hit_belady, hit_lru_sim;
	uint64_t lru_sim_hits;
	struct mres r[M_COUNT];
};

struct device {
	bool ran;
	double gbps_before, gbps_after, gbps; /* gbps: the best */
	uint64_t bytes;
	uint32_t n_experts;
	char note[200];
};

static double stalled_gbps(const struct mres *r)
{
	return r->ok && r->disk_known && r->stall_s > 0
		       ? (double)r->disk_bytes / r->stall_s / 1e9
		       : NAN;
}

/* The rate while the daemon's engine was reading: its bytes over the time
 * it had a read in flight. Unlike stalled_gbps, which also counts the
 * socket round trips and the wake-ups inside a stall. */
static double reading_gbps(const struct mres *r)
{
	return r->ok && r->disk_known && r->io_busy_s > 0
		       ? (double)r->disk_bytes / r->io_busy_s / 1e9
		       : NAN;
}

static double read_gbps(const struct mres *r)
{
	return r->ok && r->disk_known && r->seconds > 0
		       ? (double)r->disk_bytes / r->seconds / 1e9
		       : NAN;
}

static double tokps(const struct mres *r)
{
	return r->ok ? r->tokps : NAN;
}

/* ---- the use of the experts: the same for every method ----------------------------- */

struct user {
	const struct cfg *c;
	struct ms_ffn_pool *ffn_pool;
	float *x, *y, *acc;
	uint64_t touch_sum, used_bytes;
	double ffn_sum, use_s;
};

static int user_init(struct user *u, const struct cfg *c, struct ms_err *err)
{
	memset(u, 0, sizeof(*u));
	u->c = c;
	if (!c->ffn)
		return 0;
	uint64_t n = c->m->n_embd ? c->m->n_embd : 1;
	for (uint32_t l = 0; l < c->m->n_layers; l++)
		if ((uint64_t)c->m->layers[l].ne[0][0] > n)
			n = (uint64_t)c->m->layers[l].ne[0][0];
	u->x = calloc(n, sizeof(float));
	u->y = calloc(n, sizeof(float));
	u->acc = calloc(n, sizeof(float));
	if (!u->x || !u->y || !u->acc)
		return ms_err_set(err, -ENOMEM, "out of memory");
	uint64_t s = 0x5eedull;
	for (uint64_t i = 0; i < n; i++)
		u->x[i] = (float)((double)(tool_splitmix(&s) >> 11) / 9007199254740992.0 - 0.5);
	return ms_ffn_pool_init(&u->ffn_pool, (int)c->threads, err);
}

/* Hands what the use added up to the method's result, then frees the
 * rest: every method ends with this, whether it finished or not. */
static void user_done(struct user *u, struct mres *res)
{
	res->touch_sum = u->touch_sum;
	res->used_bytes = u->used_bytes;
	res->ffn_sum = u->ffn_sum;
	res->use_s = u->use_s;
	ms_ffn_pool_free(u->ffn_pool);
	free(u->x);
	free(u->y);
	free(u->acc);
}

/* Touch every byte, or run the FFN, of the k experts of trace layer tl. */
static int user_use(struct user *u, uint32_t tl, const struct ms_client_expert *got,
		    const float *w, unsigned k, struct ms_err *err)
{
	double t0 = tool_now_s();
	if (!u->c->ffn) {
		for (unsigned i = 0; i < k; i++)
			for (uint32_t j = 0; j < got[i].n_proj; j++) {
				u->touch_sum += replay_sum_bytes(got[i].proj[j], got[i].len[j]);
				u->used_bytes += got[i].len[j];
			}
		u->use_s += tool_now_s() - t0;
		return 0;
	}
	const struct ms_moe_layer *L = &u->c->m->layers[u->c->tlayer[tl]];
	struct ms_expert_view v = { .fused = L->fused, .n_embd = L->ne[0][0],
				    .n_ff = L->fused ? L->ne[0][1] / 2 : L->ne[0][1] };
	for (uint32_t j = 0; j < L->n_proj; j++)
		v.type[j] = L->type[j];
	struct ms_ffn_opts o = { .pool = u->ffn_pool };
	int64_t n = v.n_embd;
	memset(u->acc, 0, (size_t)n * sizeof(float));
	for (unsigned i = 0; i < k; i++) {
		for (uint32_t j = 0; j < got[i].n_proj; j++) {
			v.data[j] = got[i].proj[j];
			u->used_bytes += got[i].len[j];
		}
		int rc = ms_expert_ffn(&v, u->x, u->y, 1, &o, err);
		if (rc)
			return rc;
		for (int64_t e = 0; e < n; e++)
			u->acc[e] += w[i] * u->y[e];
	}
	double s = 0;
	for (int64_t e = 0; e < n; e++)
		s += u->acc[e];
	u->ffn_sum += s;
	u->use_s += tool_now_s() - t0;
	return 0;
}

/* ---- progress on stderr -------------------------------------------------------------- */

struct prog {
	const struct cfg *c;
	enum method mt;
	double last;
	bool drawn;
};

static void prog_draw(struct prog *p, uint32_t done, uint32_t total, double secs,
		      bool have_hit, double hit)
{
	if (!p->c->progress_tty)
		return;
	double t = tool_now_s();
	if (done != total && t - p->last < 0.25)
		return;
	p->last = t;
	double tps = secs > 0 ? done / secs : 0;
	char h[32] = "";
	if (have_hit)
		snprintf(h, sizeof(h), "  hit %5.1f%%", 100.0 * hit);
	fprintf(stderr, "\r  %-8s %u/%u tokens  %.2f tok/s%s  ETA %.0fs   ",
		method_key[p->mt], done, total, tps, h,
		tps > 0 ? (total - done) / tps : 0.0);
	if (done == total)
		fputc('\n', stderr);
	p->drawn = true;
}

/* ---- method 1: mmap -------------------------------------------------------------------- */

struct fault_item {
	const volatile uint8_t *p;
	uint64_t len;
};

struct fault_job {
	struct fault_item *it;
	uint64_t sink[MAX_THREADS];
};

/* One load per 4 KiB page, and the last byte: every page faulted in. */
static void fault_fn(void *ctx, uint32_t i, unsigned w)
{
	struct fault_job *j = ctx;
	const struct fault_item *x = &j->it[i];
	uint64_t s = 0;
	for (uint64_t o = 0; o < x->len; o += PAGE)
		s += x->p[o];
	if (x->len)
		s += x->p[x->len - 1];
	j->sink[w] += s;
}

/* All pages of [p, p + len) in the page cache (p inside a mapping). */
static bool resident(const uint8_t *p, uint64_t len, unsigned char *vec)
{
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)(PAGE - 1);
	uint64_t n = ((uintptr_t)p + len - a + PAGE - 1) / PAGE;
	if (mincore((void *)a, n * PAGE, vec))
		return false;
	for (uint64_t i = 0; i < n; i++)
		if (!(vec[i] & 1))
			return false;
	return true;
}

static void finish_lat(struct mres *res, double *lat, uint64_t n)
{
	if (!n)
		return;
	qsort(lat, n, sizeof(*lat), tool_cmp_double);
	res->lat_p50_us = tool_pct(lat, n, 0.50) * 1e6;
	res->lat_p99_us = tool_pct(lat, n, 0.99) * 1e6;
}

static int run_mmap(const struct cfg *c, struct mres *res, struct ms_err *err)
{
	const struct ms_model *m = c->m;
	const struct ms_trace *t = c->t;
	uint32_t S = m->n_shards, L = t->n_layers, k = t->k, T = c->threads;
	int *fds = calloc(S, sizeof(*fds));
	uint8_t **maps = calloc(S, sizeof(*maps));
	uint64_t *sizes = calloc(S, sizeof(*sizes));
	uint64_t n_acq = (uint64_t)t->n_tokens * L;
	double *lat = malloc((n_acq ? n_acq : 1) * sizeof(*lat));
	struct ms_client_expert *got = calloc(k, sizeof(*got));
	struct fault_job job = { .it = calloc((size_t)k * MS_MOE_MAX_PROJ * T,
					      sizeof(*job.it)) };
	unsigned char *vec = malloc(c->max_expert / PAGE + 4);
	struct user u;
	struct pool pool;
	bool pool_ok = false;
	struct prog pg = { .c = c, .mt = M_MMAP };
	int rc = user_init(&u, c, err);
	if (rc)
		goto out;
	if (!fds || !maps || !sizes || !lat || !got || !job.it || !vec) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t s = 0; s < S; s++)
		fds[s] = -1;
	for (uint32_t s = 0; s < S; s++) {
		const char *path = m->shards[s]->path;
		struct stat st;
		if ((fds[s] = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fds[s], &st)) {
			rc = ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
			goto out;
		}
		sizes[s] = (uint64_t)st.st_size;
		/* As llama_mmap on Linux: a larger readahead window, shared. */
		posix_fadvise(fds[s], 0, 0, POSIX_FADV_SEQUENTIAL);
		void *a = mmap(NULL, sizes[s], PROT_READ, MAP_SHARED, fds[s], 0);
		if (a == MAP_FAILED) {
			rc = ms_err_set(err, -errno, "mmap %s: %s", path, strerror(errno));
			goto out;
		}
		maps[s] = a;
	}
	if ((rc = pool_init(&pool, T))) {
		ms_err_set(err, rc, "cannot start %u threads", T);
		goto out;
	}
	pool_ok = true;
	bool io_ok = true;
	uint64_t io0 = bench_io_read_bytes(&io_ok);
	double t0 = tool_now_s();
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		for (uint32_t l = 0; l < L; l++) {
			const uint16_t *ex = ms_trace_experts(t, tok, l);
			uint32_t li = c->tlayer[l];
			const struct ms_moe_layer *ML = &m->layers[li];
			if (c->compute_ms > 0) {
				double c0 = tool_now_s();
				tool_wait_s(c->compute_ms * 1e-3);
				res->compute_s += tool_now_s() - c0;
			}
			uint32_t n_it = 0;
			for (unsigned i = 0; i < k; i++) {
				const struct ms_extent *x = ms_model_expert(m, li, ex[i]);
				bool hit = true;
				got[i] = (struct ms_client_expert){ .block = ML->block,
								    .expert = ex[i],
								    .n_proj = ML->n_proj };
				for (uint32_t j = 0; j < ML->n_proj; j++) {
					const uint8_t *p = maps[x[j].shard] + x[j].offset;
					hit = hit && resident(p, x[j].bytes, vec);
					got[i].proj[j] = p;
					got[i].len[j] = x[j].bytes;
					/* T contiguous parts: ggml's row split */
					uint64_t part = (x[j].bytes + T - 1) / T;
					for (uint64_t o = 0; o < x[j].bytes; o += part)
						job.it[n_it++] = (struct fault_item){
							p + o, x[j].bytes - o < part
								       ? x[j].bytes - o
								       : part };
				}
				res->hits += hit;
				res->misses += !hit;
			}
			double a0 = tool_now_s();
			pool_run(&pool, fault_fn, &job, n_it);
			double dt = tool_now_s() - a0;
			lat[res->experts / k] = dt;
			res->stall_s += dt;
			res->experts += k;
			if ((rc = user_use(&u, l, got, ms_trace_weights(t, tok, l), k, err)))
				goto out;
		}
		res->tokens = tok + 1;
		prog_draw(&pg, tok + 1, t->n_tokens, tool_now_s() - t0, true,
			  (double)res->hits / (double)(res->hits + res->misses));
	}
	res->seconds = tool_now_s() - t0;
	res->disk_bytes = bench_io_read_bytes(&io_ok) - io0;
	res->disk_known = io_ok;
	snprintf(res->note, sizeof(res->note), "%u thread%s faulting, MAP_SHARED, "
		 "FADV_SEQUENTIAL", T, T == 1 ? "" : "s");
	finish_lat(res, lat, res->experts / k);
out:
	if (pool_ok)
		pool_free(&pool);
	for (uint32_t s = 0; maps && s < S; s++)
		if (maps[s])
			munmap(maps[s], sizes[s]);
	for (uint32_t s = 0; fds && s < S; s++)
		if (fds[s] >= 0)
			close(fds[s]);
	user_done(&u, res);
	free(fds);
	free(maps);
	free(sizes);
	free(lat);
	free(got);
	free(job.it);
	free(vec);
	return rc;
}

/* ---- method 2: pread into a malloc'd LRU cache ------------------------------------- */

struct lru {
	uint32_t n_slots;
	uint8_t *mem;            /* n_slots x slot_bytes */
	uint64_t slot_bytes;
	int64_t *slot_key;       /* key held, or -1 */
	uint64_t *last_use;
	int32_t *key_slot;       /* slot of each key, or -1 */
};

struct pread_job {
	const struct cfg *c;
	const int *fds;
	uint32_t li;             /* model layer */
	const uint16_t *ex;
	uint32_t miss[MS_TRACE_MAX_K];   /* the misses' positions in ex[] */
	uint8_t *dst[MS_TRACE_MAX_K];
	atomic_int err;
};

static void pread_fn(void *ctx, uint32_t i, unsigned w)
{
	struct pread_job *j = ctx;
	(void)w;
	const struct ms_model *m = j->c->m;
	const struct ms_moe_layer *L = &m->layers[j->li];
	const struct ms_extent *x = ms_model_expert(m, j->li, j->ex[j->miss[i]]);
	uint64_t at = 0;
	for (uint32_t p = 0; p < L->n_proj; p++) {
		int rc = tool_pread_full(j->fds[x[p].shard], j->dst[i] + at, x[p].bytes,
					 x[p].offset);
		if (rc) {
			atomic_store(&j->err, rc);
			return;
		}
		at += x[p].bytes;
	}
}

static int run_pread(const struct cfg *c, const struct run *r, struct mres *res,
		     struct ms_err *err)
{
	const struct ms_model *m = c->m;
	const struct ms_trace *t = c->t;
	uint32_t S = m->n_shards, L = t->n_layers, k = t->k;
	uint64_t n_keys = (uint64_t)L * t->n_expert;
	uint64_t n_acq = (uint64_t)t->n_tokens * L;
	struct lru lr = { .n_slots = r->slots, .slot_bytes = c->max_expert };
	int *fds = calloc(S, sizeof(*fds));
	double *lat = malloc((n_acq ? n_acq : 1) * sizeof(*lat));
	struct ms_client_expert *got = calloc(k, sizeof(*got));
	struct pread_job job = { .c = c, .fds = fds };
	int32_t step_slot[MS_TRACE_MAX_K];
	struct user u;
	struct pool pool;
	bool pool_ok = false;
	struct prog pg = { .c = c, .mt = M_PREAD };
	int rc = user_init(&u, c, err);
	if (rc)
		goto out;
	lr.slot_key = malloc(lr.n_slots * sizeof(*lr.slot_key));
	lr.last_use = calloc(lr.n_slots, sizeof(*lr.last_use));
	lr.key_slot = malloc(n_keys * sizeof(*lr.key_slot));
	/* The cache, in memory the engine owns: malloc'd and faulted in
	 * before the clock, so that it counts from the start as it would in
	 * an engine that has been running. */
	lr.mem = malloc(lr.n_slots * lr.slot_bytes);
	if (!fds || !lat || !got || !lr.slot_key || !lr.last_use || !lr.key_slot ||
	    !lr.mem) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for a %u-slot cache",
				lr.n_slots);
		goto out;
	}
	/* Not 0: malloc + memset(0) may become calloc, which touches nothing. */
	memset(lr.mem, 0x55, lr.n_slots * lr.slot_bytes);
	for (uint32_t s = 0; s < lr.n_slots; s++)
		lr.slot_key[s] = -1;
	for (uint64_t i = 0; i < n_keys; i++)
		lr.key_slot[i] = -1;
	for (uint32_t s = 0; s < S; s++)
		fds[s] = -1;
	for (uint32_t s = 0; s < S; s++)
		if ((fds[s] = open(m->shards[s]->path, O_RDONLY | O_CLOEXEC)) < 0) {
			rc = ms_err_set(err, -errno, "%s: %s", m->shards[s]->path,
					strerror(errno));
			goto out;
		}
	if ((rc = pool_init(&pool, c->threads))) {
		ms_err_set(err, rc, "cannot start %u threads", c->threads);
		goto out;
	}
	pool_ok = true;
	bool io_ok = true;
	uint64_t io0 = bench_io_read_bytes(&io_ok);
	uint64_t step = 0;
	uint32_t n_used = 0;
	double t0 = tool_now_s();
	for (uint32_t tok = 0; tok < t->n_tokens; tok++) {
		for (uint32_t l = 0; l < L; l++, step++) {
			const uint16_t *ex = ms_trace_experts(t, tok, l);
			uint32_t li = c->tlayer[l];
			const struct ms_moe_layer *ML = &m->layers[li];
			if (c->compute_ms > 0) {
				double c0 = tool_now_s();
				tool_wait_s(c->compute_ms * 1e-3);
				res->compute_s += tool_now_s() - c0;
			}
			double a0 = tool_now_s();
			/* Hits are what is resident at the start of the step;
			 * the step's k keys are pinned while misses load, in
			 * order, each into a free slot or the least recently
			 * used unpinned one (sim.h's model). */
			uint32_t n_miss = 0;
			for (unsigned i = 0; i < k; i++) {
				int32_t s = lr.key_slot[(uint64_t)l * t->n_expert + ex[i]];
				step_slot[i] = s;
				if (s < 0)
					job.miss[n_miss++] = i;
			}
			for (uint32_t q = 0; q < n_miss; q++) {
				unsigned i = job.miss[q];
				int64_t victim = -1;
				if (n_used < lr.n_slots) {
					victim = n_used++; /* slots are never freed */
				} else {
					for (uint32_t v = 0; v < lr.n_slots; v++) {
						bool pinned = false;
						for (unsigned x = 0; x < k && !pinned; x++)
							pinned = step_slot[x] == (int32_t)v;
						if (!pinned && (victim < 0 ||
								lr.last_use[v] < lr.last_use[victim]))
							victim = v;
					}
				}
				if (victim < 0) {
					rc = ms_err_set(err, -ENOSPC, "pread: no unpinned "
							"slot of %u for %u experts",
							lr.n_slots, k);
					goto out;
				}
				if (lr.slot_key[victim] >= 0)
					lr.key_slot[lr.slot_key[victim]] = -1;
				uint64_t key = (uint64_t)l * t->n_expert + ex[i];
				lr.slot_key[victim] = (int64_t)key;
				lr.key_slot[key] = (int32_t)victim;
				step_slot[i] = (int32_t)victim;
				job.dst[q] = lr.mem + (uint64_t)victim * lr.slot_bytes;
			}
			if (n_miss) {
				job.li = li;
				job.ex = ex;
				atomic_store(&job.err, 0);
				pool_run(&pool, pread_fn, &job, n_miss);
				if ((rc = atomic_load(&job.err))) {
					ms_err_set(err, rc, "pread of blk.%u failed: %s",
						   ML->block, strerror(-rc));
					goto out;
				}
			}
			double dt = tool_now_s() - a0;
			lat[res->experts / k] = dt;
			res->stall_s += dt;
			res->experts += k;
			res->misses += n_miss;
			res->hits += k - n_miss;
			for (unsigned i = 0; i < k; i++) {
				const struct ms_extent *x = ms_model_expert(m, li, ex[i]);
				uint8_t *p = lr.mem + (uint64_t)step_slot[i] * lr.slot_bytes;
				got[i] = (struct ms_client_expert){ .block = ML->block,
								    .expert = ex[i],
								    .n_proj = ML->n_proj };
				for (uint32_t j = 0; j < ML->n_proj; j++) {
					got[i].proj[j] = p;
					got[i].len[j] = x[j].bytes;
					p += x[j].bytes;
				}
			}
			if ((rc = user_use(&u, l, got, ms_trace_weights(t, tok, l), k, err)))
				goto out;
			for (unsigned i = 0; i < k; i++)
				lr.last_use[step_slot[i]] = step * k + i + 1;
		}
		res->tokens = tok + 1;
		prog_draw(&pg, tok + 1, t->n_tokens, tool_now_s() - t0, true,
			  (double)res->hits / (double)(res->hits + res->misses));
	}
	res->seconds = tool_now_s() - t0;
	res->disk_bytes = bench_io_read_bytes(&io_ok) - io0;
	res->disk_known = io_ok;
	snprintf(res->note, sizeof(res->note), "%u slots of %llu bytes, %u thread%s "
		 "reading", lr.n_slots, (unsigned long long)lr.slot_bytes, c->threads,
		 c->threads == 1 ? "" : "s");
	finish_lat(res, lat, res->experts / k);
out:
	if (pool_ok)
		pool_free(&pool);
	for (uint32_t s = 0; fds && s < S; s++)
		if (fds[s] >= 0)
			close(fds[s]);
	user_done(&u, res);
	free(fds);
	free(lat);
	free(got);
	free(lr.mem);
	free(lr.slot_key);
	free(lr.last_use);
	free(lr.key_slot);
	return rc;
}

/* ---- methods 3 and 4: moestreamd ------------------------------------------------------- */

struct daemon_ctx {
	struct user u;
	struct prog p;
	struct ms_err *err;
};

static void prog_replay(void *ctx, const struct replay_progress *pg)
{
	struct daemon_ctx *d = ctx;
	prog_draw(&d->p, pg->tokens_done, pg->tokens_total, pg->seconds,
		  pg->have_hit_rate, pg->hit_rate);
}

static int daemon_use(void *ctx, uint32_t token, uint32_t layer,
		      const struct ms_client_expert *got, const float *weights,
		      unsigned k)
{
	struct daemon_ctx *d = ctx;
	(void)token;
	return user_use(&d->u, layer, got, weights, k, d->err);
}

/* The figures STATS has beyond replay_run's. */
static void daemon_extras(struct ms_client *cl, struct mres *res)
{
	char *json = NULL;
	if (ms_client_stats(cl, &json, 10000))
		return;
	cJSON *o = cJSON_Parse(json);
	free(json);
	if (!o)
		return;
	const cJSON *v;
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "slots")))
		res->daemon_slots = (uint32_t)v->valuedouble;
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "prefetch_cancelled")))
		res->prefetch_cancelled = (uint64_t)v->valuedouble;
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "prefetch_hints")))
		res->prefetch_hints = (uint64_t)v->valuedouble;
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "demand_stall_s")))
		res->daemon_demand_stall_s = v->valuedouble;
	if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "arena")))
		snprintf(res->arena, sizeof(res->arena), "%s", v->valuestring);
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "arena_bytes")))
		res->daemon_arena_bytes = (uint64_t)v->valuedouble;
	if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "staging_bytes")))
		res->daemon_staging_bytes = (uint64_t)v->valuedouble;
	const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "read_path");
	if (cJSON_IsString(rp) &&
	    cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "read_path_detail")))
		snprintf(res->read_path, sizeof(res->read_path), "%s: %s",
			 rp->valuestring, v->valuestring);
	const cJSON *eng = cJSON_GetObjectItemCaseSensitive(o, "io_engine");
	const cJSON *dir = cJSON_GetObjectItemCaseSensitive(o, "io_direct");
	const cJSON *fb = cJSON_GetObjectItemCaseSensitive(o, "io_fixed_buffers");
	const cJSON *why = cJSON_GetObjectItemCaseSensitive(o, "io_fallbacks");
	snprintf(res->io, sizeof(res->io), "%s, %s%s%s%s",
		 cJSON_IsString(eng) ? eng->valuestring : "?",
		 cJSON_IsTrue(dir) ? "O_DIRECT" : "buffered",
		 cJSON_IsTrue(fb) ? ", fixed buffers" : "",
		 cJSON_IsString(why) && *why->valuestring ? "; " : "",
		 cJSON_IsString(why) ? why->valuestring : "");
	cJSON_Delete(o);
}

static int run_daemon(const struct cfg *c, const struct run *r, bool prefetch,
		      struct mres *res, struct ms_err *err)
{
	struct bench_daemon d = { 0 };
	struct ms_client *cl = NULL;
	struct daemon_ctx dc = { .p = { .c = c, .mt = prefetch ? M_PREFETCH : M_LRU },
				 .err = err };
	int rc = user_init(&dc.u, c, err);
	if (rc)
		goto out;
	struct bench_daemon_opts o = { .model = c->model_path,
				       .cache_bytes = r->cache_bytes, .max_clients = 8,
				       .prefetch = prefetch ? c->policy : "none",
				       .extra = c->daemon_extra,
				       .log_level = "warning" };
	if ((rc = bench_daemon_start(&d, &o, err)))
		goto out;
	if ((rc = ms_client_connect(&cl, d.socket, "bench-e2e", err)))
		goto out;
	/* The client's expert layout must be the model's, which the FFN
	 * views and the touch sums are built from. */
	for (uint32_t l = 0; l < c->t->n_layers; l++) {
		const struct ms_moe_layer *ML = &c->m->layers[c->tlayer[l]];
		const struct ms_client_layer *CL = ms_client_layer(cl, ML->block);
		bool same = CL && CL->n_proj == ML->n_proj;
		for (uint32_t j = 0; same && j < ML->n_proj; j++)
			same = CL->proj[j] == ML->proj[j] && CL->type[j] == ML->type[j];
		if (!same) {
			rc = ms_err_set(err, -EPROTO, "the daemon describes blk.%u "
					"otherwise than the model file does", ML->block);
			goto out;
		}
	}
	struct replay_opts ro = { .tokens = c->t->n_tokens, .compute_ms = c->compute_ms,
				  .prefetch_hint = prefetch,
				  .acquire_timeout_ms = CHILD_TIMEOUT_MS,
				  .use = daemon_use, .ctx = &dc,
				  .progress = prog_replay, .progress_every_s = 0.25,
				  .stats_every_s = c->progress_tty ? 2.0 : 0 };
	struct replay_result rr;
	rc = replay_run(cl, c->t, &ro, &rr, err);
	res->tokens = rr.tokens;
	res->seconds = rr.seconds;
	res->tokps = rr.tokps;
	res->stall_s = rr.stall_s;
	res->compute_s = rr.compute_s;
	res->lat_p50_us = rr.lat_p50_us;
	res->lat_p99_us = rr.lat_p99_us;
	res->experts = rr.experts;
	res->hits = rr.hits;
	res->misses = rr.misses;
	res->hit_rate = rr.hit_rate;
	res->disk_bytes = rr.bytes_read;
	res->disk_known = rr.have_stats;
	res->prefetch_issued = rr.prefetch_issued;
	res->prefetch_used = rr.prefetch_used;
	res->prefetch_wasted_bytes = rr.prefetch_wasted_bytes;
	res->io_busy_s = rr.io_busy_s;
	if (rc)
		goto out;
	if (!rr.have_stats) {
		rc = ms_err_set(err, -EBADMSG, "the daemon's STATS did not answer");
		goto out;
	}
	daemon_extras(cl, res);
	snprintf(res->note, sizeof(res->note), "policy %s%s",
		 prefetch ? c->policy : "none", prefetch ? ", next layer hinted" : "");
out:
	ms_client_close(cl);
	if (d.pid > 0) {
		struct ms_err serr = { 0 };
		if (bench_daemon_stop(&d, &serr))
			snprintf(res->stop_err, sizeof(res->stop_err), "%s (log: %s)",
				 serr.msg, d.log);
	}
	user_done(&dc.u, res);
	return rc;
}

/* ---- running one method in a child in its group (bench_cg.c) -------------------------- */

static int method_main(const struct cfg *c, const struct run *r, enum method mt,
		       struct mres *res, struct ms_err *err)
{
	switch (mt) {
	case M_MMAP: return run_mmap(c, res, err);
	case M_PREAD: return run_pread(c, r, res, err);
	case M_LRU: return run_daemon(c, r, false, res, err);
	default: return run_daemon(c, r, true, res, err);
	}
}

struct method_job {
	const struct cfg *c;
	const struct run *r;
	enum method mt;
};

static int method_child(void *ctx, void *out, struct ms_err *err)
{
	const struct method_job *j = ctx;
	return method_main(j->c, j->r, j->mt, out, err);
}

static void run_method(const struct cfg *c, struct run *r, enum method mt,
		       const struct bench_cg_env *cg, bool *dropped)
{
	struct mres *res = &r->r[mt];
	memset(res, 0, sizeof(*res));
	res->ran = true;
	*dropped &= tool_drop_caches();
	struct method_job job = { c, r, mt };
	struct bench_child_res cr;
	bench_cg_run(cg, method_key[mt], r->mem_limit, method_child, &job, res,
		     sizeof(*res), &cr);
	res->ran = true;
	res->ok = cr.ok;
	res->rc = cr.rc;
	snprintf(res->err, sizeof(res->err), "%s", cr.err);
	res->peak_known = cr.peak_known;
	res->peak_bytes = cr.peak_bytes;
	res->failcnt = cr.failcnt;
	res->oom_kills = cr.oom_kills;
	if (res->ok)
		res->hit_rate = res->hits + res->misses
					? (double)res->hits / (double)(res->hits + res->misses)
					: 0;
	if (res->ok && res->seconds > 0 && mt <= M_PREAD)
		res->tokps = res->tokens / res->seconds;
}

/* ---- the device: the trace's experts, whole, plain io_uring O_DIRECT ----------------- */

struct dev_chunk {
	uint64_t off, len;
	uint32_t file, buf;
	uint32_t done;           /* bytes already read (a short read's rest) */
};

static int run_device(const struct cfg *c, double *gbps, uint64_t *bytes,
		      uint32_t *n_exp, char *note, size_t note_len, struct ms_err *err)
{
	const struct ms_model *m = c->m;
	const struct ms_trace *t = c->t;
	uint32_t S = m->n_shards, L = t->n_layers;
	uint64_t n_keys = (uint64_t)L * t->n_expert;
	uint8_t *seen = calloc(n_keys ? n_keys : 1, 1);
	int *fds = calloc(S, sizeof(*fds));
	struct dev_chunk *ch = NULL;
	uint64_t n_ch = 0, cap = 0, own = 0;
	uint8_t *map = NULL, *mem = NULL;
	size_t map_len = 0, len = (size_t)DEV_DEPTH * DEV_REQ;
	struct io_uring ring;
	bool ring_ok = false, direct = true;
	uint64_t *fsize = calloc(S, sizeof(*fsize));
	int rc = 0;
	*n_exp = 0;
	if (!seen || !fds || !fsize) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t s = 0; s < S; s++)
		fsize[s] = m->shards[s]->file_size;
	/* The distinct experts in first-use order, up to DEV_BYTES, cut into
	 * reads of at most DEV_REQ of their widened extents. */
	for (uint32_t tok = 0; tok < t->n_tokens && own < DEV_BYTES; tok++)
		for (uint32_t l = 0; l < L && own < DEV_BYTES; l++) {
			const uint16_t *ex = ms_trace_experts(t, tok, l);
			for (uint32_t i = 0; i < t->k && own < DEV_BYTES; i++) {
				uint64_t key = (uint64_t)l * t->n_expert + ex[i];
				if (seen[key]++)
					continue;
				uint32_t li = c->tlayer[l];
				const struct ms_extent *x = ms_model_expert(m, li, ex[i]);
				for (uint32_t j = 0; j < m->layers[li].n_proj; j++) {
					uint64_t aoff, alen, skip;
					ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip);
					for (uint64_t o = 0; o < alen; o += DEV_REQ) {
						if (n_ch == cap) {
							cap = cap ? cap * 2 : 1024;
							struct dev_chunk *nc =
								realloc(ch, cap * sizeof(*ch));
							if (!nc) {
								rc = ms_err_set(err, -ENOMEM,
										"out of memory");
								goto out;
							}
							ch = nc;
						}
						ch[n_ch++] = (struct dev_chunk){
							.off = aoff + o,
							.len = alen - o < DEV_REQ ? alen - o
										  : DEV_REQ,
							.file = x[j].shard
						};
					}
				}
				own += m->layers[li].expert_bytes;
				(*n_exp)++;
			}
		}
	*bytes = own;
	for (uint32_t s = 0; s < S; s++)
		fds[s] = -1;
	for (uint32_t s = 0; s < S; s++) {
		fds[s] = open(m->shards[s]->path, O_RDONLY | O_CLOEXEC |
							  (direct ? O_DIRECT : 0));
		if (fds[s] < 0 && errno == EINVAL && direct) {
			direct = false;
			for (uint32_t q = 0; q < s; q++)
				close(fds[q]);
			s = (uint32_t)-1;
			continue;
		}
		if (fds[s] < 0) {
			rc = ms_err_set(err, -errno, "%s: %s", m->shards[s]->path,
					strerror(errno));
			goto out;
		}
	}
	/* D buffers of one read each, 2 MiB-aligned and advised for THP (a read
	 * is then one physically contiguous segment: the device's best), touched
	 * before the clock. */
	map_len = len + (2u << 20);
	map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		   -1, 0);
	if (map == MAP_FAILED) {
		map = NULL;
		rc = ms_err_set(err, -errno, "mmap: %s", strerror(errno));
		goto out;
	}
	mem = (uint8_t *)(((uintptr_t)map + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
	madvise(mem, len, MADV_HUGEPAGE);
	memset(mem, 0, len);
	if ((rc = io_uring_queue_init(DEV_DEPTH, &ring, 0))) {
		ms_err_set(err, rc, "io_uring_queue_init: %s", strerror(-rc));
		goto out;
	}
	ring_ok = true;
	bool ffiles = !io_uring_register_files(&ring, fds, S);
	struct iovec iov[DEV_DEPTH];
	for (unsigned i = 0; i < DEV_DEPTH; i++)
		iov[i] = (struct iovec){ mem + (size_t)i * DEV_REQ, DEV_REQ };
	bool fbufs = !io_uring_register_buffers(&ring, iov, DEV_DEPTH);
	snprintf(note, note_len, "io_uring, %s%s%s, %u x %u KiB reads in flight",
		 direct ? "O_DIRECT" : "buffered (O_DIRECT refused)",
		 fbufs ? ", fixed buffers" : "", ffiles ? ", fixed files" : "",
		 DEV_DEPTH, DEV_REQ >> 10);

	uint32_t free_b[DEV_DEPTH], n_free = DEV_DEPTH;
	for (unsigned i = 0; i < DEV_DEPTH; i++)
		free_b[i] = DEV_DEPTH - 1 - i;
	uint64_t next = 0, inflight = 0;
	struct dev_chunk *again[DEV_DEPTH];
	unsigned n_again = 0;
	double t0 = tool_now_s();
	for (;;) {
		while (!rc && (n_again || (next < n_ch && n_free))) {
			struct dev_chunk *x;
			if (n_again) {
				x = again[--n_again];
			} else {
				x = &ch[next++];
				x->buf = free_b[--n_free];
				x->done = 0;
			}
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			int fd = ffiles ? (int)x->file : fds[x->file];
			uint8_t *dst = (uint8_t *)iov[x->buf].iov_base + x->done;
			unsigned n = (unsigned)(x->len - x->done);
			if (fbufs)
				io_uring_prep_read_fixed(sqe, fd, dst, n, x->off + x->done,
							 (int)x->buf);
			else
				io_uring_prep_read(sqe, fd, dst, n, x->off + x->done);
			if (ffiles)
				sqe->flags |= IOSQE_FIXED_FILE;
			io_uring_sqe_set_data(sqe, x);
			inflight++;
		}
		if (!inflight)
			break;
		int w = io_uring_submit_and_wait(&ring, 1);
		if (w < 0 && w != -EINTR && w != -EAGAIN && w != -EBUSY) {
			rc = ms_err_set(err, w, "io_uring_submit: %s", strerror(-w));
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n_seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			struct dev_chunk *x = io_uring_cqe_get_data(cqe);
			int r = cqe->res;
			n_seen++;
			inflight--;
			if (r == -EAGAIN || r == -EINTR) {
				again[n_again++] = x;
				continue;
			}
			if (r < 0 && !rc)
				rc = ms_err_set(err, r, "device read at %llu: %s",
						(unsigned long long)(x->off + x->done),
						strerror(-r));
			/* Short: the rest again, unless it is the end of the file
			 * (the widened last extent may pass it). */
			if (r > 0 && x->done + (uint64_t)r < x->len &&
			    x->off + x->done + (uint64_t)r < fsize[x->file]) {
				x->done += (uint32_t)r;
				again[n_again++] = x;
				continue;
			}
			free_b[n_free++] = x->buf;
		}
		io_uring_cq_advance(&ring, n_seen);
	}
	double dt = tool_now_s() - t0;
	*gbps = dt > 0 ? (double)own / dt / 1e9 : 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	for (uint32_t s = 0; fds && s < S; s++)
		if (fds[s] >= 0)
			close(fds[s]);
	if (map)
		munmap(map, map_len);
	free(fds);
	free(fsize);
	free(seen);
	free(ch);
	return rc;
}

/* ---- the figures of a run ------------------------------------------------------------- */

static double stall_cut(const struct run *r)
{
	const struct mres *a = &r->r[M_LRU], *b = &r->r[M_PREFETCH];
	return a->ok && b->ok && a->stall_s > 0 ? 1.0 - b->stall_s / a->stall_s : NAN;
}

static double ratio(double a, double b)
{
	return isfinite(a) && isfinite(b) && b > 0 ? a / b : NAN;
}

static double bound_io_s(const struct cfg *c, const struct run *r, const struct device *d)
{
	return d->gbps > 0 ? (double)c->bytes_per_token * (1 - r->hit_belady) /
				     (d->gbps * 1e9)
			   : NAN;
}

static double bound_tokps(const struct cfg *c, const struct run *r,
			  const struct device *d, bool overlap)
{
	double io = bound_io_s(c, r, d);
	double comp = c->compute_ms * 1e-3 * c->t->n_layers;
	if (!isfinite(io))
		return NAN;
	double per = overlap ? (io > comp ? io : comp) : io + comp;
	return per > 0 ? 1.0 / per : NAN;
}

/* moestreamd's peak: the larger of its two methods'. */
static bool ms_peak(const struct run *r, uint64_t *out)
{
	bool any = false;
	*out = 0;
	for (int mt = M_LRU; mt <= M_PREFETCH; mt++)
		if (r->r[mt].ok && r->r[mt].peak_known) {
			any = true;
			if (r->r[mt].peak_bytes > *out)
				*out = r->r[mt].peak_bytes;
		}
	return any;
}

struct target {
	const char *text;
	double value, goal;
	bool higher_better;     /* value >= goal, else value <= goal */
	const char *unit;       /* "x", "%", "bytes" */
};

static int targets_of(const struct cfg *c, const struct run *r, const struct device *d,
		      struct target *t)
{
	uint64_t peak;
	bool hp = ms_peak(r, &peak);
	(void)c;
	t[0] = (struct target){ "moestream with prefetch >= 3 x mmap tok/s",
				ratio(tokps(&r->r[M_PREFETCH]), tokps(&r->r[M_MMAP])),
				T_PREFETCH_OVER_MMAP, true, "x" };
	t[1] = (struct target){ "LRU hit rate >= 0.95 x Belady's at the same capacity",
				r->r[M_LRU].ok ? ratio(r->r[M_LRU].hit_rate, r->hit_belady)
					       : NAN,
				T_LRU_OVER_BELADY, true, "x" };
	t[2] = (struct target){ "prefetch cuts demand stall time by >= 30% against "
				"LRU alone",
				stall_cut(r), T_STALL_CUT, true, "%" };
	t[3] = (struct target){ "during misses, read GB/s >= 0.9 x the device's",
				ratio(stalled_gbps(&r->r[M_LRU]), d->gbps),
				T_READ_OVER_DEVICE, true, "x" };
	t[4] = (struct target){ "peak RSS of the cgroup <= cache size + 64 MiB",
				hp ? (double)peak : NAN,
				(double)(r->cache_bytes + HEADROOM), false, "bytes" };
	return 5;
}

static bool target_met(const struct target *t)
{
	return isfinite(t->value) &&
	       (t->higher_better ? t->value >= t->goal : t->value <= t->goal);
}

/* ---- output: JSON -------------------------------------------------------------------- */

static void jnum(cJSON *o, const char *k, double v)
{
	if (isfinite(v))
		cJSON_AddNumberToObject(o, k, v);
	else
		cJSON_AddNullToObject(o, k);
}

static void jkey(cJSON *o, const char *pre, enum method mt, double v)
{
	char k[64];
	snprintf(k, sizeof(k), "%s_%s", pre, method_key[mt]);
	jnum(o, k, v);
}

static void json_run(cJSON *o, const struct cfg *c, const struct run *r,
		     const struct device *d)
{
	jnum(o, "cache_bytes", (double)r->cache_bytes);
	jnum(o, "cache_pct", 100.0 * (double)r->cache_bytes / (double)c->expert_bytes_run);
	jnum(o, "cache_slots", r->slots);
	jnum(o, "mem_limit_bytes", (double)r->mem_limit);
	jnum(o, "hit_belady", r->hit_belady);
	jnum(o, "hit_lru_sim", r->hit_lru_sim);
	jnum(o, "tokps_bound", bound_tokps(c, r, d, false));
	jnum(o, "tokps_bound_overlap", bound_tokps(c, r, d, true));
	for (int mt = 0; mt < M_COUNT; mt++) {
		const struct mres *x = &r->r[mt];
		bool ok = x->ok;
		jkey(o, "tokps", mt, tokps(x));
		jkey(o, "hit", mt, ok ? x->hit_rate : NAN);
		jkey(o, "seconds", mt, ok ? x->seconds : NAN);
		jkey(o, "stall_s", mt, ok ? x->stall_s : NAN);
		jkey(o, "compute_s", mt, ok ? x->compute_s : NAN);
		jkey(o, "use_s", mt, ok ? x->use_s : NAN);
		jkey(o, "read_gbps", mt, read_gbps(x));
		jkey(o, "stalled_gbps", mt, stalled_gbps(x));
		if (mt == M_LRU || mt == M_PREFETCH) {
			jkey(o, "io_busy_s", mt, ok && x->io_busy_s > 0 ? x->io_busy_s : NAN);
			jkey(o, "reading_gbps", mt, reading_gbps(x));
			jkey(o, "daemon_arena_bytes", mt,
			     ok && x->daemon_arena_bytes ? (double)x->daemon_arena_bytes
							 : NAN);
			jkey(o, "daemon_staging_bytes", mt,
			     ok && x->daemon_arena_bytes ? (double)x->daemon_staging_bytes
							 : NAN);
		}
		jkey(o, "disk_bytes", mt, ok && x->disk_known ? (double)x->disk_bytes : NAN);
		jkey(o, "hits", mt, ok ? (double)x->hits : NAN);
		jkey(o, "misses", mt, ok ? (double)x->misses : NAN);
		jkey(o, "experts", mt, ok ? (double)x->experts : NAN);
		jkey(o, "acquire_p50_us", mt, ok ? x->lat_p50_us : NAN);
		jkey(o, "acquire_p99_us", mt, ok ? x->lat_p99_us : NAN);
		jkey(o, "peak_rss_bytes", mt,
		     x->ran && x->peak_known ? (double)x->peak_bytes : NAN);
		jkey(o, "mem_failcnt", mt, x->ran && x->peak_known ? (double)x->failcnt : NAN);
		jkey(o, "oom_kills", mt, x->ran && x->peak_known ? (double)x->oom_kills : NAN);
		char k[64];
		snprintf(k, sizeof(k), "touch_sum_%s", method_key[mt]);
		if (ok && !c->ffn)
			cJSON_AddNumberToObject(o, k, (double)x->touch_sum);
		else
			cJSON_AddNullToObject(o, k);
		snprintf(k, sizeof(k), "error_%s", method_key[mt]);
		if (x->ran && !x->ok)
			cJSON_AddStringToObject(o, k, x->err);
		else
			cJSON_AddNullToObject(o, k);
		if (mt >= M_LRU) {
			snprintf(k, sizeof(k), "daemon_stop_error_%s", method_key[mt]);
			if (*x->stop_err)
				cJSON_AddStringToObject(o, k, x->stop_err);
			else
				cJSON_AddNullToObject(o, k);
		}
	}
	const struct mres *p = &r->r[M_PREFETCH];
	jnum(o, "prefetch_issued", p->ok ? (double)p->prefetch_issued : NAN);
	jnum(o, "prefetch_used", p->ok ? (double)p->prefetch_used : NAN);
	jnum(o, "prefetch_wasted_bytes", p->ok ? (double)p->prefetch_wasted_bytes : NAN);
	jnum(o, "prefetch_cancelled", p->ok ? (double)p->prefetch_cancelled : NAN);
	jnum(o, "prefetch_hints", p->ok ? (double)p->prefetch_hints : NAN);
	const struct mres *dm = r->r[M_PREFETCH].ok ? p : &r->r[M_LRU];
	jnum(o, "daemon_slots", dm->ok ? dm->daemon_slots : NAN);
	if (dm->ok) {
		cJSON_AddStringToObject(o, "arena", dm->arena);
		cJSON_AddStringToObject(o, "io_mode", dm->io);
		cJSON_AddStringToObject(o, "read_path", dm->read_path);
	} else {
		cJSON_AddNullToObject(o, "arena");
		cJSON_AddNullToObject(o, "io_mode");
		cJSON_AddNullToObject(o, "read_path");
	}
	uint64_t peak;
	jnum(o, "peak_rss_bytes", ms_peak(r, &peak) ? (double)peak : NAN);
	jnum(o, "prefetch_over_mmap", ratio(tokps(p), tokps(&r->r[M_MMAP])));
	jnum(o, "lru_over_mmap", ratio(tokps(&r->r[M_LRU]), tokps(&r->r[M_MMAP])));
	jnum(o, "pread_over_mmap", ratio(tokps(&r->r[M_PREAD]), tokps(&r->r[M_MMAP])));
	jnum(o, "prefetch_over_lru", ratio(tokps(p), tokps(&r->r[M_LRU])));
	jnum(o, "prefetch_over_pread", ratio(tokps(p), tokps(&r->r[M_PREAD])));
	jnum(o, "prefetch_over_bound", ratio(tokps(p), bound_tokps(c, r, d, false)));
	jnum(o, "hit_lru_over_belady",
	     r->r[M_LRU].ok ? ratio(r->r[M_LRU].hit_rate, r->hit_belady) : NAN);
	jnum(o, "stall_cut", stall_cut(r));
	jnum(o, "lru_stalled_gbps_over_device", ratio(stalled_gbps(&r->r[M_LRU]), d->gbps));
	struct target t[8];
	int n = targets_of(c, r, d, t);
	static const char *const tkey[] = { "prefetch_over_mmap", "hit_lru_over_belady",
					    "stall_cut", "lru_stalled_gbps_over_device",
					    "peak_rss_bytes" };
	cJSON *tg = cJSON_AddObjectToObject(o, "targets");
	for (int i = 0; i < n; i++) {
		cJSON *x = cJSON_AddObjectToObject(tg, tkey[i]);
		cJSON_AddStringToObject(x, "text", t[i].text);
		jnum(x, "value", t[i].value);
		jnum(x, "goal", t[i].goal);
		if (isfinite(t[i].value))
			cJSON_AddBoolToObject(x, "met", target_met(&t[i]));
		else
			cJSON_AddNullToObject(x, "met");
	}
}

/* Whether the methods that ran read the same bytes (or computed the same
 * FFN sums): the check that no method is fast for reading wrong bytes. */
static bool sums_agree(const struct cfg *c, const struct run *r)
{
	const struct mres *ref = NULL;
	for (int mt = 0; mt < M_COUNT; mt++) {
		const struct mres *x = &r->r[mt];
		if (!x->ok)
			continue;
		if (!ref) {
			ref = x;
			continue;
		}
		if (c->ffn ? x->ffn_sum != ref->ffn_sum
			   : x->touch_sum != ref->touch_sum || x->used_bytes != ref->used_bytes)
			return false;
	}
	return true;
}

struct report {
	const struct cfg *c;
	const struct run *runs;
	unsigned n_runs;
	const struct device *d;
	const struct bench_cg_env *cg;
	bool dropped;
};

static void json_common(cJSON *o, const struct report *rp)
{
	const struct cfg *c = rp->c;
	const struct device *d = rp->d;
	cJSON_AddStringToObject(o, "model", c->model_path);
	cJSON_AddStringToObject(o, "architecture", c->m->arch);
	cJSON_AddStringToObject(o, "trace", c->trace_desc);
	jnum(o, "tokens", c->t->n_tokens);
	jnum(o, "layers", c->t->n_layers);
	jnum(o, "k", c->t->k);
	jnum(o, "n_expert", c->t->n_expert);
	jnum(o, "expert_bytes_max", (double)c->max_expert);
	jnum(o, "expert_bytes_run", (double)c->expert_bytes_run);
	jnum(o, "bytes_per_token", (double)c->bytes_per_token);
	jnum(o, "distinct_experts", (double)c->distinct);
	jnum(o, "compute_ms", c->compute_ms);
	cJSON_AddStringToObject(o, "compute_ms_from", c->compute_why);
	cJSON_AddStringToObject(o, "use", c->ffn ? "ffn cpu" : "touch");
	jnum(o, "threads", c->threads);
	cJSON_AddStringToObject(o, "prefetch_policy", c->policy);
	cJSON_AddStringToObject(o, "daemon_set", c->sets);
	cJSON_AddBoolToObject(o, "mem_limited", rp->cg->kind != BENCH_CG_NONE);
	if (rp->cg->kind != BENCH_CG_NONE)
		cJSON_AddStringToObject(o, "cgroup", rp->cg->kind == BENCH_CG_V2 ? "v2" : "v1");
	else
		cJSON_AddNullToObject(o, "cgroup");
	if (rp->cg->kind == BENCH_CG_NONE)
		cJSON_AddStringToObject(o, "cgroup_why_not", rp->cg->why);
	cJSON_AddBoolToObject(o, "page_cache_dropped", rp->dropped);
	jnum(o, "device_gbps", d->ran ? d->gbps : NAN);
	jnum(o, "device_gbps_before", d->ran ? d->gbps_before : NAN);
	jnum(o, "device_gbps_after", d->ran ? d->gbps_after : NAN);
	jnum(o, "device_bytes", d->ran ? (double)d->bytes : NAN);
	jnum(o, "device_experts", d->ran ? d->n_experts : NAN);
	cJSON_AddStringToObject(o, "device_mode", d->note);
	jnum(o, "read_ahead_kb", c->ra_kb >= 0 ? (double)c->ra_kb : NAN);
	bool agree = true;
	for (unsigned i = 0; i < rp->n_runs; i++)
		agree &= sums_agree(c, &rp->runs[i]);
	cJSON_AddBoolToObject(o, "sums_agree", agree);
}

static int print_json(const struct report *rp)
{
	cJSON *o = cJSON_CreateObject();
	json_common(o, rp);
	if (rp->n_runs == 1) {
		json_run(o, rp->c, &rp->runs[0], rp->d);
	} else {
		cJSON *a = cJSON_AddArrayToObject(o, "runs");
		for (unsigned i = 0; i < rp->n_runs; i++) {
			cJSON *x = cJSON_CreateObject();
			json_run(x, rp->c, &rp->runs[i], rp->d);
			cJSON_AddItemToArray(a, x);
		}
	}
	char *s = cJSON_Print(o);
	cJSON_Delete(o);
	if (!s)
		return -ENOMEM;
	puts(s);
	free(s);
	return 0;
}

/* ---- output: CSV --------------------------------------------------------------------- */

static void csv_num(FILE *f, double v)
{
	if (!isfinite(v))
		fputc(',', f);
	else if (v == floor(v) && fabs(v) < 1e15)
		fprintf(f, ",%.0f", v); /* counts and bytes, whole */
	else
		fprintf(f, ",%.6g", v);
}

static void print_csv(FILE *f, const struct report *rp)
{
	const struct cfg *c = rp->c;
	fprintf(f, "cache_bytes,cache_pct,mem_limit_bytes,cache_slots,tokens,compute_ms,"
		   "device_gbps,hit_belady,hit_lru_sim,tokps_bound,tokps_bound_overlap");
	static const char *const col[] = { "tokps", "hit", "read_gbps", "stalled_gbps",
					   "stall_s", "peak_rss_bytes" };
	for (int mt = 0; mt < M_COUNT; mt++)
		for (size_t i = 0; i < sizeof(col) / sizeof(col[0]); i++)
			fprintf(f, ",%s_%s", col[i], method_key[mt]);
	fputc('\n', f);
	for (unsigned i = 0; i < rp->n_runs; i++) {
		const struct run *r = &rp->runs[i];
		fprintf(f, "%llu", (unsigned long long)r->cache_bytes);
		csv_num(f, 100.0 * (double)r->cache_bytes / (double)c->expert_bytes_run);
		csv_num(f, (double)r->mem_limit);
		csv_num(f, r->slots);
		csv_num(f, c->t->n_tokens);
		csv_num(f, c->compute_ms);
		csv_num(f, rp->d->ran ? rp->d->gbps : NAN);
		csv_num(f, r->hit_belady);
		csv_num(f, r->hit_lru_sim);
		csv_num(f, bound_tokps(c, r, rp->d, false));
		csv_num(f, bound_tokps(c, r, rp->d, true));
		for (int mt = 0; mt < M_COUNT; mt++) {
			const struct mres *x = &r->r[mt];
			csv_num(f, tokps(x));
			csv_num(f, x->ok ? x->hit_rate : NAN);
			csv_num(f, read_gbps(x));
			csv_num(f, stalled_gbps(x));
			csv_num(f, x->ok ? x->stall_s : NAN);
			csv_num(f, x->ran && x->peak_known ? (double)x->peak_bytes : NAN);
		}
		fputc('\n', f);
	}
}

/* ---- output: the table ----------------------------------------------------------------- */

static void cellf(double v, const char *fmt, int w)
{
	if (isfinite(v))
		printf(fmt, v);
	else
		printf(" %*s |", w, "-");
}

static void print_run(const struct report *rp, const struct run *r)
{
	const struct cfg *c = rp->c;
	const struct device *d = rp->d;
	char b1[32], b2[32], b3[32];
	printf("\ncache      %s = %.1f%% of the %s of experts run (%u experts",
	       fmt_bytes(r->cache_bytes, b1, sizeof(b1)),
	       100.0 * (double)r->cache_bytes / (double)c->expert_bytes_run,
	       fmt_bytes(c->expert_bytes_run, b2, sizeof(b2)), r->slots);
	const struct mres *dm = r->r[M_PREFETCH].ok ? &r->r[M_PREFETCH] : &r->r[M_LRU];
	if (dm->ok)
		printf("; moestreamd: %u slots", dm->daemon_slots);
	printf(")\n");
	if (rp->cg->kind != BENCH_CG_NONE)
		printf("limit      %s for each method: cache + 64 MiB + %s for the "
		       "processes (cgroup %s)\n",
		       fmt_bytes(r->mem_limit, b1, sizeof(b1)),
		       fmt_bytes(r->proc_need, b2, sizeof(b2)),
		       rp->cg->kind == BENCH_CG_V2 ? "v2" : "v1");
	if (dm->ok)
		printf("moestreamd %s; %s\n           reads %s\n", dm->io, dm->arena,
		       dm->read_path);
	if (*c->sets)
		printf("moestreamd --set %s\n", c->sets);
	for (int mt = 0; mt < M_COUNT; mt++) {
		if (r->r[mt].ok && *r->r[mt].note)
			printf("%-10s %s\n", method_key[mt], r->r[mt].note);
		if (*r->r[mt].stop_err)
			printf("%-10s moestreamd did not stop cleanly: %s\n", method_key[mt],
			       r->r[mt].stop_err);
	}

	printf("\n%-26s | %7s | %8s | %9s | %12s | %9s | %11s | %9s\n", "method", "tok/s",
	       "hit rate", "GB/s read", "GB/s stalled", "stall (s)", "stall/token",
	       "peak RSS");
	printf("---------------------------+---------+----------+-----------+--------------"
	       "+-----------+-------------+----------\n");
	for (int mt = 0; mt < M_COUNT; mt++) {
		const struct mres *x = &r->r[mt];
		if (!x->ran)
			continue;
		printf("%-26s |", method_label[mt]);
		if (!x->ok) {
			printf(" FAILED: %s\n", x->err);
			continue;
		}
		cellf(tokps(x), " %7.3f |", 7);
		cellf(x->hit_rate, " %8.3f |", 8);
		cellf(read_gbps(x), " %9.3f |", 9);
		cellf(stalled_gbps(x), " %12.3f |", 12);
		cellf(x->stall_s, " %9.2f |", 9);
		printf(" %8.1f ms |", x->tokens ? x->stall_s / x->tokens * 1e3 : 0.0);
		if (x->peak_known)
			printf(" %s", fmt_bytes(x->peak_bytes, b1, sizeof(b1)));
		else
			printf(" %8s", "-");
		if (x->oom_kills)
			printf(" (%llu OOM kills)", (unsigned long long)x->oom_kills);
		printf("\n");
	}
	printf("%-26s |", "bound (Belady + device)");
	cellf(bound_tokps(c, r, d, false), " %7.3f |", 7);
	cellf(r->hit_belady, " %8.3f |", 8);
	cellf(d->ran ? d->gbps : NAN, " %9.3f |", 9);
	printf("\n");

	const struct mres *p = &r->r[M_PREFETCH];
	uint64_t acc = (uint64_t)c->t->n_tokens * c->t->n_layers * c->t->k;
	printf("\nbounds     Belady (MIN) hits %.3f at this capacity, the simulator's LRU "
	       "%.3f;\n           first uses: %llu of %llu accesses, so no cache hits "
	       "more than %.3f\n           a token reads %s x (1 - %.3f) = %s, at %.2f GB/s %.1f ms,"
	       " + compute %.2f ms\n           -> %.3f tok/s read then compute, %.3f "
	       "tok/s if every read hid\n           under compute\n",
	       r->hit_belady, r->hit_lru_sim, (unsigned long long)c->distinct,
	       (unsigned long long)acc, acc ? 1.0 - (double)c->distinct / (double)acc : 0.0,
	       fmt_bytes(c->bytes_per_token, b1, sizeof(b1)),
	       r->hit_belady,
	       fmt_bytes((uint64_t)((double)c->bytes_per_token * (1 - r->hit_belady)), b2,
			 sizeof(b2)),
	       d->gbps, bound_io_s(c, r, d) * 1e3, c->compute_ms * c->t->n_layers,
	       bound_tokps(c, r, d, false), bound_tokps(c, r, d, true));
	if (c->uniform && r->r[M_PREAD].ok)
		printf("check      pread's LRU hits %llu, the simulator's %llu: %s\n",
		       (unsigned long long)r->r[M_PREAD].hits,
		       (unsigned long long)r->lru_sim_hits,
		       r->r[M_PREAD].hits == r->lru_sim_hits ? "equal" : "DIFFERENT");
	if (p->ok)
		printf("prefetch   %llu issued, %llu used before eviction, %s wasted, "
		       "%llu cancelled; %llu hints sent\n",
		       (unsigned long long)p->prefetch_issued,
		       (unsigned long long)p->prefetch_used,
		       fmt_bytes(p->prefetch_wasted_bytes, b3, sizeof(b3)),
		       (unsigned long long)p->prefetch_cancelled,
		       (unsigned long long)p->prefetch_hints);

	bool any_busy = false;
	for (int mt = M_LRU; mt <= M_PREFETCH; mt++) {
		const struct mres *x = &r->r[mt];
		if (!x->ok || !(x->io_busy_s > 0))
			continue;
		printf("%-10s %s: reading %.2f s of %.2f s (%.0f%%), %.3f GB/s while "
		       "reading = %.2f x the device\n",
		       any_busy ? "" : "disk", method_key[mt], x->io_busy_s, x->seconds,
		       100 * x->io_busy_s / x->seconds, reading_gbps(x),
		       ratio(reading_gbps(x), d->ran ? d->gbps : NAN));
		any_busy = true;
	}

	printf("\nratios     prefetch / mmap %.2f, lru / mmap %.2f, pread / mmap %.2f, "
	       "prefetch / pread %.2f,\n           prefetch / lru %.2f, prefetch / bound "
	       "%.2f\n",
	       ratio(tokps(p), tokps(&r->r[M_MMAP])),
	       ratio(tokps(&r->r[M_LRU]), tokps(&r->r[M_MMAP])),
	       ratio(tokps(&r->r[M_PREAD]), tokps(&r->r[M_MMAP])),
	       ratio(tokps(p), tokps(&r->r[M_PREAD])), ratio(tokps(p), tokps(&r->r[M_LRU])),
	       ratio(tokps(p), bound_tokps(c, r, d, false)));

	struct target t[8];
	int n = targets_of(c, r, d, t);
	printf("\ntargets (issue 7)\n");
	for (int i = 0; i < n; i++) {
		char v[64];
		if (!isfinite(t[i].value))
			snprintf(v, sizeof(v), "n/a");
		else if (!strcmp(t[i].unit, "%"))
			snprintf(v, sizeof(v), "%.1f%%", 100 * t[i].value);
		else if (!strcmp(t[i].unit, "bytes"))
			snprintf(v, sizeof(v), "%s <= %s",
				 fmt_bytes((uint64_t)t[i].value, b1, sizeof(b1)),
				 fmt_bytes((uint64_t)t[i].goal, b2, sizeof(b2)));
		else
			snprintf(v, sizeof(v), "%.2f x", t[i].value);
		printf("  %-58s %20s  %s\n", t[i].text, v,
		       !isfinite(t[i].value) ? "n/a" : target_met(&t[i]) ? "met" : "MISSED");
	}
	printf("%s\n", sums_agree(c, r) ? c->ffn ? "every method computed the same FFN "
						   "sums"
						 : "every method read the same bytes "
						   "(touch sums agree)"
					: "METHODS DISAGREE on the bytes they read");
}

static void print_human(const struct report *rp)
{
	const struct cfg *c = rp->c;
	const struct device *d = rp->d;
	char b1[32], b2[32];
	printf("bench e2e: %s (%s), %u MoE layers x %u of %u experts, %s an expert\n",
	       c->model_path, c->m->arch, c->t->n_layers, c->t->k, c->t->n_expert,
	       fmt_bytes(c->max_expert, b1, sizeof(b1)));
	printf("trace      %s; %u tokens; %s a token when nothing is cached\n",
	       c->trace_desc, c->t->n_tokens,
	       fmt_bytes(c->bytes_per_token, b2, sizeof(b2)));
	printf("compute    %.3f ms a MoE layer (%s); then %s\n", c->compute_ms,
	       c->compute_why,
	       c->ffn ? "the CPU expert FFN on every expert" : "every byte read (touch)");
	if (rp->cg->kind == BENCH_CG_NONE)
		printf("memory     NOT LIMITED (%s): peaks unknown\n", rp->cg->why);
	printf("page cache %s\n", rp->dropped ? "dropped before each method"
					       : "NOT dropped (needs root): "
						 "figures may come from RAM");
	if (d->ran)
		printf("device     %.3f GB/s: %s, 2 MiB pages, %u of the trace's "
		       "experts (%s);\n           the better of before the methods (%.3f, "
		       "best of 2) and after (%.3f)\n",
		       d->gbps, d->note, d->n_experts, fmt_bytes(d->bytes, b1, sizeof(b1)),
		       d->gbps_before, d->gbps_after);
	if (c->ra_kb >= 0)
		printf("readahead  the model's disk: read_ahead_kb %ld (FADV_SEQUENTIAL "
		       "doubles it; an mmap fault\n           reads that much around its "
		       "page: mmap's figures depend on it)\n", c->ra_kb);
	for (unsigned i = 0; i < rp->n_runs; i++)
		print_run(rp, &rp->runs[i]);
	if (rp->n_runs > 1) {
		printf("\nsweep: tok/s by cache size\n%10s %7s", "cache", "%");
		for (int mt = 0; mt < M_COUNT; mt++)
			printf(" %9s", method_key[mt]);
		printf(" %9s %7s\n", "bound", "Belady");
		for (unsigned i = 0; i < rp->n_runs; i++) {
			const struct run *r = &rp->runs[i];
			printf("%10s %6.1f%%", fmt_bytes(r->cache_bytes, b1, sizeof(b1)),
			       100.0 * (double)r->cache_bytes / (double)c->expert_bytes_run);
			for (int mt = 0; mt < M_COUNT; mt++) {
				double v = tokps(&r->r[mt]);
				if (isfinite(v))
					printf(" %9.3f", v);
				else
					printf(" %9s", "-");
			}
			printf(" %9.3f %7.3f\n", bound_tokps(c, r, d, false), r->hit_belady);
		}
	}
}

/* ---- the plot ------------------------------------------------------------------------- */

/* gnuplot on $PATH: 0 and its path, or -ENOENT. */
static int find_gnuplot(char *buf, size_t len)
{
	const char *path = getenv("PATH");
	if (!path || !*path)
		return -ENOENT;
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	int rc = -ENOENT;
	for (char *save = NULL, *d = strtok_r(copy, ":", &save); d;
	     d = strtok_r(NULL, ":", &save)) {
		snprintf(buf, len, "%s/gnuplot", *d ? d : ".");
		if (!access(buf, X_OK)) {
			rc = 0;
			break;
		}
	}
	free(copy);
	return rc;
}

static int write_plot(const struct report *rp, const char *gnuplot, const char *png,
		      struct ms_err *err)
{
	char dir[] = "/tmp/moestream-plot-XXXXXX", data[64], script[64];
	if (!mkdtemp(dir))
		return ms_err_set(err, -errno, "mkdtemp: %s", strerror(errno));
	snprintf(data, sizeof(data), "%s/data.csv", dir);
	snprintf(script, sizeof(script), "%s/plot.gp", dir);
	int rc = 0;
	FILE *f = fopen(data, "w");
	if (!f) {
		rc = ms_err_set(err, -errno, "%s: %s", data, strerror(errno));
		goto out;
	}
	print_csv(f, rp);
	fclose(f);
	f = fopen(script, "w");
	if (!f) {
		rc = ms_err_set(err, -errno, "%s: %s", script, strerror(errno));
		goto out;
	}
	/* Columns (print_csv): 2 cache %, 10 bound; per method 6 columns from
	 * 12 (mmap), 18 (pread), 24 (lru), 30 (prefetch). */
	fprintf(f,
		"if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
		"  set terminal pngcairo size 1000,650 font ',10'\n"
		"} else {\n  set terminal png size 1000,650\n}\n"
		"set output '%s'\n"
		"set datafile separator ','\n"
		"set key top left\nset grid\n"
		"set title 'moestream bench e2e: %s, %u tokens x %u MoE layers, limit = "
		"cache + 64 MiB + processes'\n"
		"set xlabel 'expert cache (%% of the expert bytes run)'\n"
		"set ylabel 'tokens / s'\nset yrange [0:*]\n"
		"plot '%s' every ::1 using 2:10 with linespoints dt 2 lw 2 title "
		"'bound (Belady + device)', \\\n"
		"     '' every ::1 using 2:12 with linespoints lw 2 title 'mmap "
		"(llama.cpp)', \\\n"
		"     '' every ::1 using 2:18 with linespoints lw 2 title 'pread + LRU', \\\n"
		"     '' every ::1 using 2:24 with linespoints lw 2 title 'moestreamd, "
		"prefetch off', \\\n"
		"     '' every ::1 using 2:30 with linespoints lw 2 title 'moestreamd, "
		"prefetch on'\n",
		png, rp->c->m->arch, rp->c->t->n_tokens, rp->c->t->n_layers, data);
	fclose(f);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		rc = ms_err_set(err, -errno, "fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0) {
		execl(gnuplot, "gnuplot", script, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	struct stat sb;
	if (!WIFEXITED(st) || WEXITSTATUS(st) || stat(png, &sb) || !sb.st_size)
		rc = ms_err_set(err, -EIO, "gnuplot (%s) failed to draw %s", gnuplot, png);
out:
	unlink(data);
	unlink(script);
	rmdir(dir);
	return rc;
}

/* ---- the command ----------------------------------------------------------------------- */

static const char usage_line[] =
	"usage: moestream bench e2e --synthetic --model MODEL [--trace T | --tokens N] "
	"[--cache-size S]\n"
	"         [--mem-limit S] [--compute-ms X] [--touch | --ffn cpu] [--json | "
	"--csv]\n"
	"         [--plot FILE.png] [--sweep S,S,...] [--methods LIST] [--threads N]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Decodes a routing trace end to end under a memory limit, the same "
		"trace in the\nsame run through four methods, each in its own memory "
		"cgroup with the page\ncache dropped first:\n"
		"  mmap      llama.cpp's default: the GGUF mapped MAP_SHARED, each "
		"expert's pages\n"
		"            faulted in as they are needed\n"
		"  pread     pread through the page cache into a malloc'd LRU cache "
		"of the same\n"
		"            size\n"
		"  lru       a real moestreamd, prefetch off\n"
		"  prefetch  moestreamd, prefetch on (policy auto; the next layer's "
		"experts sent\n"
		"            as a hint before each layer, as an engine applying the "
		"next router\n"
		"            early would)\n"
		"Per token, per MoE layer: the hint, the hot-layer compute, the k "
		"experts, then\nevery byte read (or the CPU FFN). Measured in the "
		"same run: the device's GB/s\nfor whole-expert reads (io_uring, "
		"O_DIRECT), Belady's hit rate for the trace at\nthe cache size, and "
		"the tok/s they allow. Prints tok/s, hit rate, GB/s read, stall\n"
		"time and the cgroup's peak for each, the ratios and issue 7's "
		"targets:\nprefetch >= 3 x mmap tok/s; LRU hit rate >= 0.95 x "
		"Belady's; prefetch cuts the\nstall by >= 30%% against LRU; read "
		"GB/s while stalled >= 0.9 x the device's;\npeak <= cache + 64 MiB. "
		"For the daemon methods also the time its engine had a read\nin "
		"flight (the disk's working time) and the rate while reading.\n"
		"\n"
		"  --model MODEL      the GGUF (any shard of a split model)\n"
		"  --trace T          a routing trace of the model (`moestream trace "
		"gen`)\n"
		"  --tokens N         tokens to replay (default: enough for the "
		"uncached reads\n"
		"                     to fill the cache 8 times, 32..1000; 40 for "
		"GLM-4.7 at\n"
		"                     25%%; with --trace: all of it, or its first N)\n"
		"  --seed S           the generated trace's seed (default 1; trace "
		"gen's\n"
		"                     calibrated defaults otherwise)\n"
		"  --cache-size S     the expert cache of every method: bytes (K/M/G) "
		"or a share\n"
		"                     of the expert bytes of the layers run (default "
		"25%%); raised\n"
		"                     to moestreamd's 64 MiB minimum when it runs\n"
		"  --mem-limit S      the cgroup's limit (default: cache + 64 MiB + "
		"what the\n"
		"                     processes need)\n"
		"  --compute-ms X     hot-layer time per MoE layer (default: the "
		"layer's hot\n"
		"                     tensors / 700 GB/s + 0.1 ms, a 24 GB consumer "
		"GPU)\n"
		"  --touch            read every byte of every expert (the default)\n"
		"  --ffn cpu          run the CPU expert FFN on every expert instead\n"
		"  --threads N        threads for mmap's faults, pread's reads and the "
		"FFN\n"
		"                     (default: the online CPUs)\n"
		"  --methods LIST     a subset of mmap,pread,lru,prefetch (default: "
		"all)\n"
		"  --prefetch-policy P  the prefetch method's [prefetch] policy: "
		"auto (default),\n"
		"                     hint or history\n"
		"  --set S.K=V        a moestreamd option for both daemon methods, as "
		"[S] K = V\n"
		"                     in its config (repeatable; e.g. "
		"io.prefetch_inflight=64M; not\n"
		"                     model, socket, cache.size, cache.lock, "
		"prefetch.policy or\n"
		"                     log.level, which the benchmark sets)\n"
		"  --sweep S,S,...    run everything at each cache size (as "
		"--cache-size)\n"
		"  --json             one JSON object: tokps_mmap, tokps_pread, "
		"tokps_lru,\n"
		"                     tokps_prefetch, hit_*, hit_belady, device_gbps, "
		"peak_rss_bytes\n"
		"                     (moestreamd's) and peak_rss_bytes_*, stall_s_*, "
		"targets, ...;\n"
		"                     with --sweep: \"runs\", one object per size\n"
		"  --csv              one line per cache size\n"
		"  --plot FILE.png    tok/s against cache size (needs gnuplot and "
		"--sweep)\n"
		"  -h, --help         this text\n"
		"\n"
		"Needs root for the cgroups and for dropping the page cache; "
		"without root it\nruns unlimited and says so. moestreamd is "
		"$MOESTREAMD, else the one next to\nthis program.\n"
		"\n"
		"example:\n"
		"  moestream mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers 8 -o "
		"glm8.gguf\n"
		"  sudo moestream bench e2e --synthetic --model glm8.gguf --tokens 100\n"
		"\n"
		"exit: 0 measured (targets met or not); 1 a method failed, methods "
		"disagree on\nthe bytes read, a bad model or trace, --plot without "
		"gnuplot; 2 bad usage\n",
		usage_line);
}

/* The default compute: see the top of the file. */
static double default_compute_ms(const struct ms_model *m, char *why, size_t len)
{
	uint64_t hot = 0;
	for (uint32_t s = 0; s < m->n_shards; s++) {
		const struct ms_gguf *g = m->shards[s];
		for (uint64_t i = 0; i < g->n_tensors; i++) {
			const char *n = g->tensors[i].name;
			char *end;
			if (strncmp(n, "blk.", 4))
				continue;
			unsigned long b = strtoul(n + 4, &end, 10);
			if (end == n + 4 || *end != '.' || b >= m->n_block)
				continue;
			int32_t l = m->block_layer[b];
			if (l < 0 || m->layers[l].nextn || strstr(n, "_exps"))
				continue;
			hot += g->tensors[i].size;
		}
	}
	double per = m->n_layers_run ? (double)hot / m->n_layers_run : 0;
	double ms = per / (GPU_GBPS * 1e9) * 1e3 + GPU_LAYER_MS;
	char b[32];
	snprintf(why, len, "default: %s of hot tensors a layer / %.0f GB/s + %.1f ms",
		 fmt_bytes((uint64_t)per, b, sizeof(b)), GPU_GBPS, GPU_LAYER_MS);
	return ms;
}

/* A cache size: bytes or a share of the expert bytes run, rounded up to a
 * MiB (moestreamd's unit), raised to the daemon's minimum when it runs. */
static int parse_cache(const char *s, const struct cfg *c, bool daemon, uint64_t *out)
{
	uint64_t v;
	int rc = ms_sim_parse_size(s, c->expert_bytes_run, &v);
	if (rc)
		return rc;
	v = (v + MIB - 1) / MIB * MIB;
	if (daemon && v < DAEMON_MIN_CACHE)
		v = DAEMON_MIN_CACHE;
	*out = v;
	return 0;
}

static int sim_run(const struct ms_sim *sim, struct run *r, struct ms_err *err)
{
	struct ms_sim_opts so = { .policy = MS_SIM_MIN, .cache_bytes = r->cache_bytes };
	struct ms_sim_result sr;
	int rc = ms_sim_run(sim, &so, &sr, err);
	if (rc)
		return rc;
	r->hit_belady = ms_sim_hit_rate(&sr);
	so.policy = MS_SIM_LRU;
	if ((rc = ms_sim_run(sim, &so, &sr, err)))
		return rc;
	r->hit_lru_sim = ms_sim_hit_rate(&sr);
	r->lru_sim_hits = sr.hits;
	return 0;
}

static void say_method(const struct run *r, enum method mt)
{
	char b1[32], b2[32];
	fprintf(stderr, "bench e2e: %s (cache %s, limit %s) ...\n", method_label[mt],
		fmt_bytes(r->cache_bytes, b1, sizeof(b1)),
		fmt_bytes(r->mem_limit, b2, sizeof(b2)));
}

static void said_method(const struct mres *x)
{
	if (*x->stop_err)
		fprintf(stderr, "  moestreamd did not stop cleanly: %s\n", x->stop_err);
	if (x->ok)
		fprintf(stderr, "  %.3f tok/s, hit %.3f, stall %.1f s, %.1f s in all\n",
			x->tokps, x->hit_rate, x->stall_s, x->seconds);
	else
		fprintf(stderr, "  FAILED: %s\n", x->err);
}

static int synthetic_main(int argc, char **argv)
{
	enum { O_MODEL = 1000, O_TRACE, O_TOKENS, O_SEED, O_CACHE, O_MEM, O_COMPUTE,
	       O_TOUCH, O_FFN, O_JSON, O_CSV, O_PLOT, O_SWEEP, O_METHODS, O_THREADS,
	       O_POLICY, O_SET };
	static const struct option opts[] = {
		{ "model", required_argument, 0, O_MODEL },
		{ "trace", required_argument, 0, O_TRACE },
		{ "tokens", required_argument, 0, O_TOKENS },
		{ "seed", required_argument, 0, O_SEED },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "mem-limit", required_argument, 0, O_MEM },
		{ "compute-ms", required_argument, 0, O_COMPUTE },
		{ "touch", no_argument, 0, O_TOUCH },
		{ "ffn", required_argument, 0, O_FFN },
		{ "json", no_argument, 0, O_JSON },
		{ "csv", no_argument, 0, O_CSV },
		{ "plot", required_argument, 0, O_PLOT },
		{ "sweep", required_argument, 0, O_SWEEP },
		{ "methods", required_argument, 0, O_METHODS },
		{ "threads", required_argument, 0, O_THREADS },
		{ "prefetch-policy", required_argument, 0, O_POLICY },
		{ "set", required_argument, 0, O_SET },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *trace_path = NULL, *cache_arg = "25%", *mem_arg = NULL;
	const char *plot = NULL, *sweep = NULL;
	uint32_t tokens = 0, threads = 0;
	unsigned long long seed = 1;
	double compute_ms = -1;
	bool json = false, csv = false, touch = false, ffn = false;
	struct cfg c = { .policy = "auto", .want = { true, true, true, true } };
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		switch (ch) {
		case O_MODEL: c.model_path = optarg; break;
		case O_TRACE: trace_path = optarg; break;
		case O_TOKENS:
			if (tool_parse_u32(CMD, "tokens", optarg, &tokens))
				return tool_bad_usage(usage_line);
			if (!tokens) {
				tool_error(CMD, "--tokens '0': at least 1");
				return tool_bad_usage(usage_line);
			}
			break;
		case O_SEED:
			errno = 0;
			seed = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || *optarg == '-') {
				tool_error(CMD, "--seed '%s': a whole number", optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case O_CACHE: cache_arg = optarg; break;
		case O_MEM: mem_arg = optarg; break;
		case O_COMPUTE:
			errno = 0;
			compute_ms = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(compute_ms >= 0) ||
			    compute_ms > 60000) {
				tool_error(CMD, "--compute-ms '%s': milliseconds from 0 to "
						"60000", optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case O_TOUCH: touch = true; break;
		case O_FFN:
			if (strcmp(optarg, "cpu")) {
				tool_error(CMD, "--ffn '%s': only 'cpu' (the GPU FFN is "
						"not in this build)", optarg);
				return tool_bad_usage(usage_line);
			}
			ffn = true;
			break;
		case O_JSON: json = true; break;
		case O_CSV: csv = true; break;
		case O_PLOT: plot = optarg; break;
		case O_SWEEP: sweep = optarg; break;
		case O_METHODS:
			if (tool_parse_methods(CMD, "--methods", optarg, method_key,
					       M_COUNT, "mmap, pread, lru, prefetch",
					       c.want))
				return tool_bad_usage(usage_line);
			break;
		case O_THREADS:
			if (tool_parse_u32_in(CMD, "threads", optarg, 1, MAX_THREADS,
					      &threads))
				return tool_bad_usage(usage_line);
			break;
		case O_POLICY:
			if (strcmp(optarg, "auto") && strcmp(optarg, "hint") &&
			    strcmp(optarg, "history")) {
				tool_error(CMD, "--prefetch-policy '%s': auto, hint or "
						"history", optarg);
				return tool_bad_usage(usage_line);
			}
			c.policy = optarg;
			break;
		case O_SET: {
			/* SECTION.KEY=VALUE -> "[SECTION]\nKEY = VALUE\n"; the
			 * daemon checks the key and the value when it starts. */
			const char *dot = strchr(optarg, '.'), *eq = strchr(optarg, '=');
			size_t used = strlen(c.daemon_extra);
			/* What bench_daemon_start writes itself (a key twice is
			 * an error to moestreamd). */
			static const char *const own[] = {
				"model.path", "socket.path", "socket.mode",
				"socket.max_clients", "cache.size", "cache.lock",
				"prefetch.policy", "log.level" };
			for (size_t i = 0; eq && i < sizeof(own) / sizeof(own[0]); i++)
				if ((size_t)(eq - optarg) == strlen(own[i]) &&
				    !strncmp(optarg, own[i], strlen(own[i]))) {
					tool_error(CMD, "--set '%s': the benchmark sets %s "
						   "itself%s", optarg, own[i],
						   !strcmp(own[i], "cache.size")
							   ? " (use --cache-size)"
						   : !strcmp(own[i], "prefetch.policy")
							   ? " (use --prefetch-policy)"
							   : "");
					return tool_bad_usage(usage_line);
				}
			bool ok = dot && eq && dot > optarg && eq > dot + 1 && eq[1] &&
				  !strpbrk(optarg, "\n\r[]");
			int n = ok ? snprintf(c.daemon_extra + used,
					      sizeof(c.daemon_extra) - used,
					      "[%.*s]\n%.*s = %s\n", (int)(dot - optarg),
					      optarg, (int)(eq - dot - 1), dot + 1, eq + 1)
				   : 0;
			if (!ok || n < 0 || (size_t)n >= sizeof(c.daemon_extra) - used) {
				c.daemon_extra[used] = 0;
				tool_error(CMD, "--set '%s': %s", optarg,
					   ok ? "too many --set options (1 KiB in all)"
					      : "expected SECTION.KEY=VALUE, e.g. "
						"io.prefetch_inflight=64M");
				return tool_bad_usage(usage_line);
			}
			size_t sl = strlen(c.sets);
			snprintf(c.sets + sl, sizeof(c.sets) - sl, "%s%s", sl ? " " : "",
				 optarg);
			break;
		}
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s'", argv[optind]);
		return tool_bad_usage(usage_line);
	}
	if (!c.model_path) {
		tool_error(CMD, "give the model: --model MODEL");
		return tool_bad_usage(usage_line);
	}
	if (touch && ffn) {
		tool_error(CMD, "--touch and --ffn cpu: one or the other");
		return tool_bad_usage(usage_line);
	}
	if (json && csv) {
		tool_error(CMD, "--json and --csv: one or the other");
		return tool_bad_usage(usage_line);
	}
	if (mem_arg && sweep) {
		tool_error(CMD, "--mem-limit goes without --sweep: each size gets its "
				"cache + 64 MiB + what the processes need");
		return tool_bad_usage(usage_line);
	}
	/* Sizes are checked against the model below; count them here. */
	char *sizes[MAX_SWEEP];
	unsigned n_sizes = 0;
	char sweep_buf[1024];
	snprintf(sweep_buf, sizeof(sweep_buf), "%s", sweep ? sweep : cache_arg);
	for (char *save = NULL, *s = strtok_r(sweep_buf, ",", &save); s;
	     s = strtok_r(NULL, ",", &save)) {
		if (n_sizes == MAX_SWEEP) {
			tool_error(CMD, "--sweep: at most %d sizes", MAX_SWEEP);
			return tool_bad_usage(usage_line);
		}
		sizes[n_sizes++] = s;
	}
	if (!n_sizes) {
		tool_error(CMD, "--sweep '%s': no size", sweep ? sweep : "");
		return tool_bad_usage(usage_line);
	}
	if (plot && n_sizes < 2) {
		tool_error(CMD, "--plot draws tok/s against cache size: give --sweep "
				"with two sizes or more");
		return tool_bad_usage(usage_line);
	}
	char gnuplot[4200];
	if (plot && find_gnuplot(gnuplot, sizeof(gnuplot))) {
		tool_error(CMD, "--plot needs gnuplot, which is not installed: "
				"apt-get install gnuplot-nox");
		return 1;
	}
	c.ffn = ffn;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	c.threads = threads ? threads
			    : (unsigned)(ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : ncpu);

	struct ms_err err = { 0 };
	struct ms_trace *full = NULL, cut;
	struct ms_sim *sim = NULL;
	uint64_t *layer_bytes = NULL;
	struct run *runs = NULL;
	struct device dev = { 0 };
	int rc = 1;
	bool handlers = false;
	if (ms_model_open(&c.m, c.model_path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	const struct ms_model *m = c.m;
	c.ra_kb = read_ahead_kb(m->shards[0]->path);
	if (!m->n_expert || !m->n_layers_run) {
		tool_error(CMD, "%s is not a Mixture-of-Experts model (no experts in the "
				"layers run)", c.model_path);
		goto out;
	}
	/* What the model gives: the bytes of the layers run. */
	c.uniform = true;
	uint32_t first_run = UINT32_MAX;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		if (m->layers[l].nextn)
			continue;
		if (first_run == UINT32_MAX)
			first_run = l;
		c.bytes_per_token += (uint64_t)m->n_expert_used * m->layers[l].expert_bytes;
		c.expert_bytes_run += (uint64_t)m->n_expert * m->layers[l].expert_bytes;
		if (m->layers[l].expert_bytes > c.max_expert)
			c.max_expert = m->layers[l].expert_bytes;
		c.uniform &= m->layers[l].expert_bytes == m->layers[first_run].expert_bytes;
	}
	bool daemon = c.want[M_LRU] || c.want[M_PREFETCH];
	runs = calloc(n_sizes, sizeof(*runs));
	if (!runs) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	uint64_t max_cache = 0;
	for (unsigned i = 0; i < n_sizes; i++) {
		if (parse_cache(sizes[i], &c, daemon, &runs[i].cache_bytes)) {
			tool_error(CMD, "%s '%s': bytes with K/M/G or a share like "
					"25%%", sweep ? "--sweep" : "--cache-size", sizes[i]);
			rc = tool_bad_usage(usage_line);
			goto out;
		}
		if (runs[i].cache_bytes > max_cache)
			max_cache = runs[i].cache_bytes;
	}
	/* The default length: the run's uncached reads fill the (largest)
	 * cache TOKENS_FILLS times, so the cold start is a small part of it:
	 * 40 tokens for GLM-4.7 at 25%. */
	uint32_t n_tok = tokens;
	if (!n_tok) {
		double v = round(TOKENS_FILLS * (double)max_cache / (double)c.bytes_per_token);
		n_tok = v < TOKENS_MIN ? TOKENS_MIN : v > TOKENS_MAX ? TOKENS_MAX : (uint32_t)v;
	}
	/* The trace: loaded, or generated with trace gen's defaults. */
	if (trace_path) {
		if (ms_trace_load(&full, trace_path, &err) ||
		    ms_trace_check_model(full, m, &err)) {
			tool_error(CMD, "%s: %s", trace_path, err.msg);
			goto out;
		}
		snprintf(c.trace_desc, sizeof(c.trace_desc), "%s", trace_path);
	} else {
		struct ms_trace_gen_params gp;
		ms_trace_gen_defaults(&gp);
		gp.seed = seed;
		if (ms_trace_alloc_for_model(&full, m, n_tok, &err) ||
		    ms_trace_gen(full, &gp, &err)) {
			tool_error(CMD, "generating the trace: %s", err.msg);
			goto out;
		}
		snprintf(c.trace_desc, sizeof(c.trace_desc), "generated (seed %llu, trace "
			 "gen's calibrated defaults)", seed);
	}
	cut = *full;
	if (trace_path && !tokens)
		n_tok = full->n_tokens; /* a trace given: all of it */
	if (n_tok < cut.n_tokens)
		cut.n_tokens = n_tok;
	c.t = &cut;
	c.tlayer = calloc(cut.n_layers, sizeof(*c.tlayer));
	if (!c.tlayer) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	for (uint32_t l = 0, j = 0; l < m->n_layers; l++)
		if (!m->layers[l].nextn)
			c.tlayer[j++] = l;
	{
		uint8_t *seen = calloc((size_t)cut.n_layers * cut.n_expert + 1, 1);
		if (!seen) {
			tool_error(CMD, "out of memory");
			goto out;
		}
		for (uint32_t tk = 0; tk < cut.n_tokens; tk++)
			for (uint32_t l = 0; l < cut.n_layers; l++) {
				const uint16_t *ex = ms_trace_experts(&cut, tk, l);
				for (uint32_t i = 0; i < cut.k; i++)
					c.distinct += !seen[(size_t)l * cut.n_expert + ex[i]]++;
			}
		free(seen);
	}
	if (ffn)
		for (uint32_t l = 0; l < cut.n_layers; l++) {
			const struct ms_moe_layer *L = &m->layers[c.tlayer[l]];
			for (uint32_t j = 0; j < L->n_proj; j++)
				if (!ms_ffn_type_supported(L->type[j])) {
					tool_error(CMD, "--ffn cpu: blk.%u's %s is %s, which "
							"the CPU FFN does not compute",
						   L->block, ms_proj_name(L->proj[j]),
						   ms_type_name(L->type[j]));
					goto out;
				}
		}
	if (compute_ms >= 0) {
		c.compute_ms = compute_ms;
		snprintf(c.compute_why, sizeof(c.compute_why), "--compute-ms");
	} else {
		c.compute_ms = default_compute_ms(m, c.compute_why, sizeof(c.compute_why));
	}
	if (ms_sim_layer_bytes(&cut, m, &layer_bytes, &err) ||
	    ms_sim_init(&sim, &cut, layer_bytes, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	/* What the processes need beside the cache: PROC_BASE, and the
	 * client's trace and latency arrays (8 bytes an acquire). */
	uint64_t proc_need = PROC_BASE + (uint64_t)cut.n_tokens * cut.n_layers *
						 (cut.k * 6 + 8);
	proc_need = (proc_need + MIB - 1) / MIB * MIB;
	for (unsigned i = 0; i < n_sizes; i++) {
		struct run *r = &runs[i];
		if (r->cache_bytes < sim->min_cache) {
			char b[32];
			tool_error(CMD, "cache size %s is below one layer's %u experts (%s)",
				   sizes[i], cut.k, fmt_bytes(sim->min_cache, b, sizeof(b)));
			rc = tool_bad_usage(usage_line);
			goto out;
		}
		r->slots = (uint32_t)(r->cache_bytes / c.max_expert);
		r->proc_need = proc_need;
		r->mem_limit = r->cache_bytes + HEADROOM + proc_need;
		if (mem_arg) {
			uint64_t v;
			if (ms_parse_size(mem_arg, &v) || v < r->cache_bytes) {
				char b[32];
				tool_error(CMD, "--mem-limit '%s': bytes (K/M/G), at least "
						"the cache's %s", mem_arg,
					   fmt_bytes(r->cache_bytes, b, sizeof(b)));
				rc = tool_bad_usage(usage_line);
				goto out;
			}
			r->mem_limit = v;
		}
		if ((rc = sim_run(sim, r, &err))) {
			tool_error(CMD, "simulating the trace: %s", err.msg);
			rc = 1;
			goto out;
		}
	}

	struct bench_cg_env cg;
	bench_cg_detect(&cg);
	c.progress_tty = isatty(2) && !json && !csv;
	bench_cg_signals_install();
	handlers = true;
	if (cg.kind == BENCH_CG_NONE)
		fprintf(stderr, "bench e2e: no memory limit (%s): peaks will not be "
				"known\n", cg.why);
	if (mem_arg && cg.kind == BENCH_CG_NONE)
		fprintf(stderr, "bench e2e: --mem-limit ignored: no cgroup\n");

	/* The device, before: twice (a shared disk has hiccups), the better. */
	bool dropped = tool_drop_caches();
	fprintf(stderr, "bench e2e: the device (the trace's experts, O_DIRECT) ...\n");
	double g1 = 0, g2 = 0;
	if (run_device(&c, &g1, &dev.bytes, &dev.n_experts, dev.note, sizeof(dev.note),
		       &err) ||
	    run_device(&c, &g2, &dev.bytes, &dev.n_experts, dev.note, sizeof(dev.note),
		       &err)) {
		tool_error(CMD, "measuring the device: %s", err.msg);
		goto out;
	}
	dev.gbps_before = g1 > g2 ? g1 : g2;
	dev.ran = true;
	for (unsigned i = 0; i < n_sizes; i++)
		for (int mt = 0; mt < M_COUNT; mt++) {
			if (!c.want[mt])
				continue;
			say_method(&runs[i], (enum method)mt);
			run_method(&c, &runs[i], (enum method)mt, &cg, &dropped);
			said_method(&runs[i].r[mt]);
		}
	/* After: once, and the best figure is the device's. */
	tool_drop_caches();
	fprintf(stderr, "bench e2e: the device again ...\n");
	if (run_device(&c, &dev.gbps_after, &dev.bytes, &dev.n_experts, dev.note,
		       sizeof(dev.note), &err)) {
		tool_error(CMD, "measuring the device: %s", err.msg);
		goto out;
	}
	dev.gbps = dev.gbps_before > dev.gbps_after ? dev.gbps_before : dev.gbps_after;

	struct report rp = { .c = &c, .runs = runs, .n_runs = n_sizes, .d = &dev,
			     .cg = &cg, .dropped = dropped };
	if (json) {
		if (print_json(&rp)) {
			tool_error(CMD, "out of memory building JSON");
			goto out;
		}
	} else if (csv) {
		print_csv(stdout, &rp);
	} else {
		print_human(&rp);
	}
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		goto out;
	}
	if (plot) {
		if (write_plot(&rp, gnuplot, plot, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		fprintf(stderr, "bench e2e: plot in %s\n", plot);
	}
	rc = 0;
	for (unsigned i = 0; i < n_sizes; i++) {
		for (int mt = 0; mt < M_COUNT; mt++)
			if (runs[i].r[mt].ran && !runs[i].r[mt].ok) {
				tool_error(CMD, "%s failed: %s", method_label[mt],
					   runs[i].r[mt].err);
				rc = 1;
			}
		if (!sums_agree(&c, &runs[i])) {
			tool_error(CMD, "the methods read different bytes (their %s sums "
					"differ)", c.ffn ? "FFN" : "touch");
			rc = 1;
		}
	}
out:
	if (handlers)
		bench_cg_signals_restore();
	free(runs);
	ms_sim_free(sim);
	free(layer_bytes);
	free(c.tlayer);
	ms_trace_free(full);
	ms_model_free(c.m);
	return rc;
}

/* The real engines by default (bench_e2e_real.c); the trace replays above
 * behind --synthetic, which is taken out of the options they parse. */
int bench_e2e_main(int argc, char **argv)
{
	int at = -1;
	for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--synthetic"))
			at = i;
	if (at < 0)
		return bench_e2e_real_main(argc, argv);
	char **av = malloc((size_t)argc * sizeof(*av));
	if (!av) {
		tool_error(CMD, "out of memory");
		return 1;
	}
	int n = 0;
	for (int i = 0; i < argc; i++)
		if (i != at)
			av[n++] = argv[i];
	int rc = synthetic_main(n, av);
	free(av);
	return rc;
}
