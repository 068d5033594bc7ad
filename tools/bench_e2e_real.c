/*
 * bench_e2e_real.c - `moestream bench e2e` (without --synthetic): the real
 * engines, the same prompt and the same number of greedy tokens, each in a
 * fresh memory cgroup with the same limit and the page cache dropped first
 * (bench_cg.c, the machinery the trace replays use too):
 *
 *  llamacpp    llama.cpp itself: libllama of the pinned npm package through
 *              tools/llama_ref.c, CPU, the same threads, the model mapped
 *              (llama.cpp's default load_mode = mmap, which is what its users
 *              run). Weight repacking is off (use_extra_bufts = false, as
 *              llama-cli --no-repack): on a CPU with AMX or the q2_K 8x8
 *              kernels llama.cpp otherwise copies the repacked expert
 *              weights into anonymous memory at load (~60% of the expert
 *              bytes for the GLM-4.7 preset), which no limit below the model
 *              holds: the OOM killer ends it. --llamacpp-repack keeps its
 *              default. Its batch is ours (n_batch = n_ubatch = --batch), so
 *              a prompt of up to --batch tokens is one llama_decode, and it
 *              is asked for the last token's logits only, as a generator
 *              asks.
 *  run         our engine (engine/), its embedded expert cache sized so that
 *              the whole process fits the limit: limit - resident - KV - a
 *              64 MiB margin (printed).
 *  run-daemon  the same through a private moestreamd (bench_daemon_start) in
 *              the same group, its cache sized likewise, less 32 MiB for the
 *              daemon process.
 *
 * The default limit is the issue's: resident bytes + 25% of the expert bytes
 * of the layers run (--cache-size) + the KV cache + 64 MiB. Resident and
 * expert bytes are ms_model_open's figures; the KV cache is the engine's
 * formula (layers run x n_ctx x n_head_kv x head_dim x 2 (K, V) x 2 bytes of
 * f16), which llama.cpp's f16 cache of the same context matches.
 *
 * The prompt is tokenized once, here, by our tokenizer (whose ids equal
 * llama_tokenize's: issue 14), and both engines get the same ids. Prefill is
 * timed from the first token in to the last token's logits out; decode is
 * --gen single-token steps. By default (--decode forced) each step is fed
 * the next token of a fixed continuation of the prompt, so both engines do
 * the same work and the routing varies from step to step as in real text;
 * at each step both engines' argmax is recorded and compared. With
 * --decode greedy each step is fed the argmax of the previous logits
 * (lowest id on ties): on a random-weight test model that repeats one token,
 * routes to the same experts every step and reads nothing from disk.
 *
 * What is measured in each child:
 *  - load, prefill and decode wall time;
 *  - bytes read: ours, the engine's expert reads (its cache's bytes_read, or
 *    the daemon's STATS); llama.cpp, /proc/self/io read_bytes of the child
 *    (page faults of the mapping, readahead included), as the mmap replay
 *    does; load reads are counted apart;
 *  - expert hit rate in decode: the engine's hits / (hits + misses);
 *    llama.cpp has none to report;
 *  - I/O wait share of decode: the engine's wait_ns over decode time;
 *    llama.cpp's waits are page faults inside ggml's threads: not
 *    measurable from outside, n/a;
 *  - disk busy time: io_ticks of the model's block device (/proc/diskstats)
 *    over decode; the whole device, so anything else reading it counts;
 *  - for run and run-daemon the overlap check of the issue: decode wall <=
 *    1.25 x max(disk busy, compute), where compute = decode wall - wait.
 * The cgroup's peak comes from the parent once the child is gone.
 *
 * --sweep runs the chosen engines (default llamacpp and run) at limits
 * granting 10, 25, 50, 75 and 100% of the expert bytes, prints decode tok/s
 * as a table and writes PREFIX.dat, PREFIX.gp and (with gnuplot) PREFIX.png.
 *
 * --repeat N runs every method N times, interleaved (llamacpp, run,
 * run-daemon, then again), each in a fresh cgroup after a cache drop: on a
 * shared machine one method's run can land in a slow minute of the
 * neighbours' that the other's misses. Prefill and decode tok/s, and the
 * ratios and targets made from them, are the medians; every run's pair is
 * printed; the other columns come from the run whose decode was the median;
 * the peak is the highest of the N.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/engine.h"
#include "moestream/moestream.h"
#include "bench_cg.h"
#include "bench_e2e.h"
#include "bench_rpc.h"
#include "llama_ref.h"
#include "sim.h"
#include "tools.h"

#define CMD "bench e2e"
#define MIB (1ull << 20)
#define HEADROOM (64ull << 20)      /* the issue's + 64 MiB in the limit */
#define RUN_MARGIN (64ull << 20)    /* the engine's own buffers, binary, stacks */
#define DAEMON_PROC (32ull << 20)   /* moestreamd's tables, binary, stacks */
#define DAEMON_MIN_CACHE (64ull << 20) /* moestreamd's [cache] size minimum */
#define MAX_GEN 4096u
#define MAX_SWEEP 16
#define MAX_REPEAT 9
#define MAX_THREADS 512u
#define T_DECODE 3.0                /* issue 15's targets */
#define T_PREFILL 2.0
#define T_OVERLAP 1.25

/* What decode steps are fed by default (--decode forced): the text goes on,
 * so routing varies from step to step as it does in real generation. Greedy
 * decoding of a random-weight test model repeats one token, routes to the
 * same experts every step and never reads the disk: a compute test only. */
static const char default_continuation[] =
	" whether anyone in the town below still read the sky as he did. On "
	"stormy nights the beam swept across black water and white foam, and "
	"he counted the seconds between each flash of lightning and the thunder "
	"that followed. In the spring a young engineer arrived with plans to "
	"replace the lamp with an automatic light powered from the shore; the "
	"keeper showed him the brass gears, the clockwork that turned the lens, "
	"the oil stains on the floor, and told him about the winter of the "
	"great flood, when seven ships found the harbour by this light alone. "
	"The engineer listened, took notes, measured the walls and the windows, "
	"and promised to return in the autumn with the new equipment.";

const char bench_e2e_default_prompt[] =
	"The old lighthouse keeper climbed the spiral stairs every evening at "
	"dusk, carrying a lantern and a worn notebook. From the top he could see "
	"the fishing boats returning to the harbour, their sails catching the "
	"last light of the sun. He wrote down the weather, the tides and the "
	"names of the ships, and wondered";

enum rmethod { R_LLAMA, R_RUN, R_DAEMON, R_COUNT };
static const char *const r_key[R_COUNT] = { "llamacpp", "run", "run-daemon" };
static const char *const r_jkey[R_COUNT] = { "llamacpp", "run", "run_daemon" };
static const char *const r_label[R_COUNT] = {
	"llama.cpp (mmap, CPU)", "moestream run (embedded)",
	"moestream run (moestreamd)"
};

struct rcfg {
	const char *model_path;
	struct ms_model *m;
	int32_t *ids;                /* the prompt */
	uint32_t n_prompt, n_gen, n_ctx, n_batch;
	const int32_t *force;        /* decode steps' input (NULL: greedy) */
	uint32_t n_force;
	unsigned threads;
	const char *llama_dir;
	bool llama_repack;
	bool f32_act;       /* --activations f32 */
	bool gpu;           /* --device gpu: run's methods on GPU 0 */
	uint64_t kv_bytes;           /* the engine's formula */
	uint32_t n_run;              /* blocks run (dense + MoE) */
	bool want[R_COUNT];
};

/* What a child sends back (plain data). */
struct rres {
	uint32_t prompt_tokens, gen_steps, n_ids;
	int32_t ids[MAX_GEN + 1];    /* the argmax after prefill and after each step */
	double load_s, prefill_s, decode_s;
	bool load_bytes_known;
	uint64_t load_bytes;         /* read while loading */
	bool bytes_known;
	uint64_t bytes_prefill, bytes_decode;
	bool hits_known;
	uint64_t hits, misses;       /* decode */
	uint64_t hits_all, misses_all;
	bool wait_known;
	double wait_prefill_s, wait_decode_s;
	bool busy_known;
	double busy_prefill_s, busy_decode_s; /* the device's io_ticks */
	bool io_busy_known;
	double io_busy_decode_s;     /* the daemon's engine had a read in flight */
	double spec;                 /* speculation accuracy, -1 unknown */
	uint64_t resident_bytes, kv_bytes, cache_bytes;
	char cache_mode[256];
	char note[200];
	char stop_err[240];
};

/* One limit. */
struct rrun {
	uint64_t share_bytes;        /* expert bytes the limit grants */
	uint64_t limit, cache_run, cache_daemon;
	bool raised;                 /* the formula's limit was below the floor */
	struct rres r[R_COUNT];      /* with --repeat: the median decode's run */
	struct bench_child_res cr[R_COUNT];
	unsigned n_rep;              /* runs of each method (--repeat) */
	double pre[R_COUNT][MAX_REPEAT], dec[R_COUNT][MAX_REPEAT]; /* tok/s each */
	double pre_med[R_COUNT], dec_med[R_COUNT];
};

/* ---- the figures ------------------------------------------------------------------ */

static bool ok_(const struct rrun *u, int mt)
{
	return u->cr[mt].ran && u->cr[mt].ok;
}

static double prefill_of(const struct rres *x)
{
	return x->prefill_s > 0 ? x->prompt_tokens / x->prefill_s : NAN;
}

static double decode_of(const struct rres *x)
{
	return x->decode_s > 0 ? x->gen_steps / x->decode_s : NAN;
}

/* With --repeat: the medians over the runs. */
static double prefill_tokps(const struct rrun *u, int mt)
{
	if (!ok_(u, mt))
		return NAN;
	return u->n_rep > 1 ? u->pre_med[mt] : prefill_of(&u->r[mt]);
}

static double decode_tokps(const struct rrun *u, int mt)
{
	if (!ok_(u, mt))
		return NAN;
	return u->n_rep > 1 ? u->dec_med[mt] : decode_of(&u->r[mt]);
}

static double hit_rate(const struct rrun *u, int mt)
{
	const struct rres *x = &u->r[mt];
	uint64_t n = x->hits + x->misses;
	return ok_(u, mt) && x->hits_known && n ? (double)x->hits / (double)n : NAN;
}

static double gb_read(const struct rrun *u, int mt)
{
	const struct rres *x = &u->r[mt];
	return ok_(u, mt) && x->bytes_known
		       ? (double)(x->bytes_prefill + x->bytes_decode) / 1e9
		       : NAN;
}

static double wait_share(const struct rrun *u, int mt)
{
	const struct rres *x = &u->r[mt];
	return ok_(u, mt) && x->wait_known && x->decode_s > 0
		       ? x->wait_decode_s / x->decode_s
		       : NAN;
}

static double disk_busy(const struct rrun *u, int mt)
{
	const struct rres *x = &u->r[mt];
	return ok_(u, mt) && x->busy_known ? x->busy_decode_s : NAN;
}

/* Decode time not spent waiting for experts: the engine's compute. */
static double compute_s(const struct rrun *u, int mt)
{
	const struct rres *x = &u->r[mt];
	return ok_(u, mt) && x->wait_known ? x->decode_s - x->wait_decode_s : NAN;
}

/* decode wall / max(disk busy, compute): <= 1.25 is the target. */
static double overlap(const struct rrun *u, int mt)
{
	double b = disk_busy(u, mt), c = compute_s(u, mt);
	if (!isfinite(c))
		return NAN;
	double m = isfinite(b) && b > c ? b : c;
	return m > 0 ? u->r[mt].decode_s / m : NAN;
}

static double ratio(double a, double b)
{
	return isfinite(a) && isfinite(b) && b > 0 ? a / b : NAN;
}

static double peak(const struct rrun *u, int mt)
{
	return u->cr[mt].ran && u->cr[mt].peak_known ? (double)u->cr[mt].peak_bytes
						      : NAN;
}

/* ---- the children ----------------------------------------------------------------- */

static int32_t argmax(const float *l, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	return (int32_t)best;
}

static bool busy_now(const struct rcfg *c, double *s)
{
	uint64_t ms;
	if (!bench_disk_busy_ms(c->model_path, &ms))
		return false;
	*s = (double)ms / 1e3;
	return true;
}

static int child_llama(const struct rcfg *c, struct rres *x, struct ms_err *err)
{
	struct ms_llref *r = NULL;
	float *logits = NULL;
	struct ms_llref_opts o = { .n_ctx = c->n_ctx, .n_batch = c->n_batch,
				   .n_ubatch = c->n_batch, .n_threads = (int)c->threads,
				   .no_extra_bufts = !c->llama_repack };
	bool io_ok = true;
	double b0 = 0, b1 = 0, b2 = 0;
	uint64_t io0 = bench_io_read_bytes(&io_ok);
	double t0 = tool_now_s();
	int rc = ms_llref_open_opts(&r, c->llama_dir, c->model_path, &o, err);
	if (rc)
		goto out;
	x->load_s = tool_now_s() - t0;
	uint64_t io1 = bench_io_read_bytes(&io_ok);
	x->load_bytes = io1 - io0;
	x->load_bytes_known = io_ok;
	int32_t nv = ms_llref_n_vocab(r);
	logits = malloc((size_t)nv * sizeof(float));
	if (!logits) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	x->busy_known = busy_now(c, &b0);
	t0 = tool_now_s();
	for (uint32_t at = 0; at < c->n_prompt; at += c->n_batch) {
		uint32_t n = c->n_prompt - at < c->n_batch ? c->n_prompt - at : c->n_batch;
		bool last = at + n == c->n_prompt;
		if ((rc = ms_llref_decode_last(r, c->ids + at, n, (int32_t)at,
					       last ? logits : NULL, err)))
			goto out;
	}
	double t1 = tool_now_s();
	uint64_t io2 = bench_io_read_bytes(&io_ok);
	x->busy_known &= busy_now(c, &b1);
	x->prefill_s = t1 - t0;
	x->prompt_tokens = c->n_prompt;
	x->ids[x->n_ids++] = argmax(logits, (uint32_t)nv);
	for (uint32_t i = 0; i < c->n_gen; i++) {
		int32_t tok = c->force ? c->force[i % c->n_force] : x->ids[x->n_ids - 1];
		if ((rc = ms_llref_decode_last(r, &tok, 1, (int32_t)(c->n_prompt + i),
					       logits, err)))
			goto out;
		x->ids[x->n_ids++] = argmax(logits, (uint32_t)nv);
		x->gen_steps = i + 1;
	}
	x->decode_s = tool_now_s() - t1;
	uint64_t io3 = bench_io_read_bytes(&io_ok);
	x->busy_known &= busy_now(c, &b2);
	x->bytes_prefill = io2 - io1;
	x->bytes_decode = io3 - io2;
	x->bytes_known = io_ok;
	x->busy_prefill_s = b1 - b0;
	x->busy_decode_s = b2 - b1;
	x->spec = -1;
	snprintf(x->note, sizeof(x->note), "libllama (node-llama-cpp 3.22.1), "
		 "load_mode mmap, %s, n_batch = n_ubatch = %u, %u thread%s",
		 c->llama_repack ? "repacking on (its default)"
				 : "no repacking (--no-repack)",
		 c->n_batch, c->threads, c->threads == 1 ? "" : "s");
out:
	free(logits);
	ms_llref_close(r);
	return rc;
}

/* The daemon's counters that the engine's stats lack through a socket. */
static bool daemon_counters(struct ms_client *cl, uint64_t *bytes, uint64_t *busy_ns)
{
	char *json = NULL;
	if (!cl || ms_client_stats(cl, &json, 10000))
		return false;
	cJSON *o = cJSON_Parse(json);
	free(json);
	const cJSON *b = o ? cJSON_GetObjectItemCaseSensitive(o, "bytes_read") : NULL;
	const cJSON *t = o ? cJSON_GetObjectItemCaseSensitive(o, "io_busy_ns") : NULL;
	bool ok = cJSON_IsNumber(b) && cJSON_IsNumber(t);
	if (ok) {
		*bytes = (uint64_t)b->valuedouble;
		*busy_ns = (uint64_t)t->valuedouble;
	}
	cJSON_Delete(o);
	return ok;
}

static int child_engine(const struct rcfg *c, const struct rrun *u, bool daemon,
			struct rres *x, struct ms_err *err)
{
	struct bench_daemon d = { 0 };
	struct ms_client *cl = NULL;
	struct ms_engine *e = NULL;
	float *logits = NULL;
	int rc;
	struct ms_engine_config cfg = { .model = c->model_path, .n_ctx = c->n_ctx,
					.n_batch = c->n_batch,
					.n_threads = (int)c->threads, .quiet = true,
					.q8_activations = !c->f32_act,
					.gpu = c->gpu };
	if (daemon) {
		struct bench_daemon_opts o = { .model = c->model_path,
					       .cache_bytes = u->cache_daemon,
					       .max_clients = 8, .prefetch = "auto",
					       .log_level = "warning" };
		if ((rc = bench_daemon_start(&d, &o, err)))
			goto out;
		cfg.socket = d.socket;
		/* A second connection for STATS (bytes read, busy time). */
		if ((rc = ms_client_connect(&cl, d.socket, "bench-e2e-stats", err)))
			goto out;
	} else {
		cfg.cache_size = u->cache_run;
	}
	double t0 = tool_now_s();
	if ((rc = ms_engine_open(&e, &cfg, err)))
		goto out;
	x->load_s = tool_now_s() - t0;
	const struct ms_engine_info *info = ms_engine_info(e);
	x->resident_bytes = info->resident_bytes;
	x->kv_bytes = info->kv_bytes;
	x->cache_bytes = daemon ? u->cache_daemon : info->cache_bytes;
	snprintf(x->cache_mode, sizeof(x->cache_mode), "%s", info->cache_mode);
	logits = malloc((size_t)info->n_vocab * sizeof(float));
	if (!logits) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	struct ms_engine_stats s0, s1, s2;
	uint64_t db0 = 0, db1 = 0, db2 = 0, dn0 = 0, dn1 = 0, dn2 = 0;
	double b0 = 0, b1 = 0, b2 = 0;
	bool dok = daemon && daemon_counters(cl, &db0, &dn0);
	ms_engine_get_stats(e, &s0);
	x->busy_known = busy_now(c, &b0);
	t0 = tool_now_s();
	if ((rc = ms_engine_eval(e, c->ids, c->n_prompt, logits, false, err)))
		goto out;
	double t1 = tool_now_s();
	ms_engine_get_stats(e, &s1);
	x->busy_known &= busy_now(c, &b1);
	dok = dok && daemon_counters(cl, &db1, &dn1);
	x->prefill_s = t1 - t0;
	x->prompt_tokens = c->n_prompt;
	x->ids[x->n_ids++] = argmax(logits, info->n_vocab);
	for (uint32_t i = 0; i < c->n_gen; i++) {
		int32_t tok = c->force ? c->force[i % c->n_force] : x->ids[x->n_ids - 1];
		if ((rc = ms_engine_eval(e, &tok, 1, logits, false, err)))
			goto out;
		x->ids[x->n_ids++] = argmax(logits, info->n_vocab);
		x->gen_steps = i + 1;
	}
	x->decode_s = tool_now_s() - t1;
	ms_engine_get_stats(e, &s2);
	x->busy_known &= busy_now(c, &b2);
	dok = dok && daemon_counters(cl, &db2, &dn2);
	x->busy_prefill_s = b1 - b0;
	x->busy_decode_s = b2 - b1;
	x->hits_known = true;
	x->hits = s2.expert_hits - s1.expert_hits;
	x->misses = s2.expert_misses - s1.expert_misses;
	x->hits_all = s2.expert_hits - s0.expert_hits;
	x->misses_all = s2.expert_misses - s0.expert_misses;
	x->wait_known = true;
	x->wait_prefill_s = (double)(s1.wait_ns - s0.wait_ns) / 1e9;
	x->wait_decode_s = (double)(s2.wait_ns - s1.wait_ns) / 1e9;
	x->spec = s2.spec_routed ? (double)s2.spec_hit / (double)s2.spec_routed : -1;
	if (daemon) {
		x->bytes_known = dok;
		x->bytes_prefill = db1 - db0;
		x->bytes_decode = db2 - db1;
		x->io_busy_known = dok;
		x->io_busy_decode_s = (double)(dn2 - dn1) / 1e9;
	} else {
		x->bytes_known = true;
		x->bytes_prefill = s1.expert_bytes_read - s0.expert_bytes_read;
		x->bytes_decode = s2.expert_bytes_read - s1.expert_bytes_read;
	}
	char b[32];
	snprintf(x->note, sizeof(x->note), "%s cache %s, %u thread%s, batch %u, %s activations%s",
		 daemon ? "moestreamd" : "embedded",
		 fmt_bytes(x->cache_bytes, b, sizeof(b)), c->threads,
		 c->threads == 1 ? "" : "s", c->n_batch,
		 c->f32_act ? "f32" : "8-bit", c->gpu ? ", on GPU 0" : "");
out:
	free(logits);
	ms_engine_close(e);
	ms_client_close(cl);
	if (d.pid > 0) {
		struct ms_err serr = { 0 };
		if (bench_daemon_stop(&d, &serr))
			snprintf(x->stop_err, sizeof(x->stop_err), "%s (log: %s)",
				 serr.msg, d.log);
	}
	return rc;
}

struct rjob {
	const struct rcfg *c;
	const struct rrun *u;
	enum rmethod mt;
};

static int rchild(void *ctx, void *out, struct ms_err *err)
{
	const struct rjob *j = ctx;
	struct rres *x = out;
	memset(x, 0, sizeof(*x));
	if (j->mt == R_LLAMA)
		return child_llama(j->c, x, err);
	return child_engine(j->c, j->u, j->mt == R_DAEMON, x, err);
}

static void run_one(const struct rcfg *c, struct rrun *u, enum rmethod mt,
		    const struct bench_cg_env *cg, bool *dropped)
{
	char b1[32], b2[32];
	fprintf(stderr, "bench e2e: %s (limit %s%s%s) ...\n", r_label[mt],
		fmt_bytes(u->limit, b1, sizeof(b1)), mt == R_LLAMA ? "" : ", cache ",
		mt == R_LLAMA ? ""
			      : fmt_bytes(mt == R_RUN ? u->cache_run : u->cache_daemon,
					  b2, sizeof(b2)));
	*dropped &= tool_drop_caches();
	struct rjob j = { c, u, mt };
	bench_cg_run(cg, r_key[mt], u->limit, rchild, &j, &u->r[mt], sizeof(u->r[mt]),
		     &u->cr[mt]);
	if (*u->r[mt].stop_err)
		fprintf(stderr, "  moestreamd did not stop cleanly: %s\n",
			u->r[mt].stop_err);
	if (u->cr[mt].ok)
		fprintf(stderr, "  load %.1f s, prefill %.2f tok/s, decode %.3f tok/s\n",
			u->r[mt].load_s, prefill_tokps(u, mt), decode_tokps(u, mt));
	else
		fprintf(stderr, "  FAILED: %s\n", u->cr[mt].err);
}

/* Every wanted method n times, interleaved by round. u keeps each method's
 * tok/s of every run and their medians, the record of the run whose decode
 * was nearest the median (the first failed run's when one failed), and the
 * highest peak. 0 or -ENOMEM. */
static int run_rounds(const struct rcfg *c, struct rrun *u, unsigned n,
		      const struct bench_cg_env *cg, bool *dropped)
{
	u->n_rep = n;
	if (n == 1) {
		for (int mt = 0; mt < R_COUNT; mt++)
			if (c->want[mt])
				run_one(c, u, (enum rmethod)mt, cg, dropped);
		return 0;
	}
	struct rrun *k = calloc(n, sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		k[i] = *u;
		fprintf(stderr, "bench e2e: round %u of %u\n", i + 1, n);
		for (int mt = 0; mt < R_COUNT; mt++)
			if (c->want[mt])
				run_one(c, &k[i], (enum rmethod)mt, cg, dropped);
	}
	for (int mt = 0; mt < R_COUNT; mt++) {
		if (!c->want[mt])
			continue;
		unsigned pick = n;
		for (unsigned i = 0; i < n && pick == n; i++)
			if (!ok_(&k[i], mt))
				pick = i;
		if (pick == n) {
			for (unsigned i = 0; i < n; i++) {
				u->pre[mt][i] = prefill_of(&k[i].r[mt]);
				u->dec[mt][i] = decode_of(&k[i].r[mt]);
			}
			/* the runs' figures stay in run order */
			size_t near;
			u->pre_med[mt] = tool_median_of(u->pre[mt], n, NULL);
			u->dec_med[mt] = tool_median_of(u->dec[mt], n, &near);
			pick = (unsigned)near;
		}
		u->r[mt] = k[pick].r[mt];
		u->cr[mt] = k[pick].cr[mt];
		u->cr[mt].oom_kills = 0;
		for (unsigned i = 0; i < n; i++) {
			const struct bench_child_res *x = &k[i].cr[mt];
			if (x->peak_known && (!u->cr[mt].peak_known ||
					      x->peak_bytes > u->cr[mt].peak_bytes)) {
				u->cr[mt].peak_known = true;
				u->cr[mt].peak_bytes = x->peak_bytes;
			}
			u->cr[mt].oom_kills += x->oom_kills;
		}
	}
	free(k);
	return 0;
}

/* ---- output --------------------------------------------------------------------- */

static void jnum(cJSON *o, const char *k, double v)
{
	if (isfinite(v))
		cJSON_AddNumberToObject(o, k, v);
	else
		cJSON_AddNullToObject(o, k);
}

static void jm(cJSON *o, const char *pre, int mt, double v)
{
	char k[96];
	snprintf(k, sizeof(k), "%s_%s", pre, r_jkey[mt]);
	jnum(o, k, v);
}

/* How many of the first ids two methods share. */
/* Greedy: how many tokens both chose before they first parted (after that
 * the contexts differ). Forced: at how many steps both chose the same next
 * token (the contexts are the same throughout). */
static uint32_t ids_agree(const struct rcfg *c, const struct rres *a,
			  const struct rres *b)
{
	uint32_t n = a->n_ids < b->n_ids ? a->n_ids : b->n_ids, k = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (a->ids[i] == b->ids[i])
			k++;
		else if (!c->force)
			break;
	}
	return k;
}

static void json_run(cJSON *o, const struct rcfg *c, const struct rrun *u)
{
	jnum(o, "limit_bytes", (double)u->limit);
	jnum(o, "expert_share_bytes", (double)u->share_bytes);
	jnum(o, "expert_share_pct", 100.0 * (double)u->share_bytes /
					    (double)c->m->expert_bytes_run);
	cJSON_AddBoolToObject(o, "limit_raised", u->raised);
	jnum(o, "repeat", u->n_rep);
	jnum(o, "cache_bytes_run", (double)u->cache_run);
	jnum(o, "cache_bytes_run_daemon", (double)u->cache_daemon);
	for (int mt = 0; mt < R_COUNT; mt++) {
		const struct rres *x = &u->r[mt];
		bool ok = ok_(u, mt);
		jm(o, "prefill_tokps", mt, prefill_tokps(u, mt));
		jm(o, "decode_tokps", mt, decode_tokps(u, mt));
		jm(o, "prompt_tokens", mt, ok ? x->prompt_tokens : NAN);
		jm(o, "decode_tokens", mt, ok ? x->gen_steps : NAN);
		jm(o, "load_s", mt, ok ? x->load_s : NAN);
		jm(o, "prefill_s", mt, ok ? x->prefill_s : NAN);
		jm(o, "decode_s", mt, ok ? x->decode_s : NAN);
		jm(o, "hit_rate", mt, hit_rate(u, mt));
		jm(o, "gb_read", mt, gb_read(u, mt));
		jm(o, "bytes_read_prefill", mt, ok && x->bytes_known ? (double)x->bytes_prefill : NAN);
		jm(o, "bytes_read_decode", mt, ok && x->bytes_known ? (double)x->bytes_decode : NAN);
		jm(o, "bytes_read_load", mt, ok && x->load_bytes_known ? (double)x->load_bytes : NAN);
		jm(o, "io_wait_share", mt, wait_share(u, mt));
		jm(o, "disk_busy_s", mt, disk_busy(u, mt));
		jm(o, "compute_s", mt, compute_s(u, mt));
		jm(o, "overlap", mt, overlap(u, mt));
		jm(o, "daemon_io_busy_s", mt, ok && x->io_busy_known ? x->io_busy_decode_s : NAN);
		jm(o, "speculation", mt, ok && x->spec >= 0 ? x->spec : NAN);
		jm(o, "peak_bytes", mt, peak(u, mt));
		jm(o, "oom_kills", mt, u->cr[mt].peak_known ? (double)u->cr[mt].oom_kills : NAN);
		if (mt != R_LLAMA) {
			jm(o, "resident_bytes", mt, ok ? (double)x->resident_bytes : NAN);
			jm(o, "kv_bytes", mt, ok ? (double)x->kv_bytes : NAN);
		}
		char k[96];
		if (u->n_rep > 1 && ok) {
			/* every run's tok/s; the figures above are their medians */
			snprintf(k, sizeof(k), "prefill_tokps_runs_%s", r_jkey[mt]);
			cJSON *a = cJSON_AddArrayToObject(o, k);
			for (unsigned i = 0; i < u->n_rep; i++)
				cJSON_AddItemToArray(a, cJSON_CreateNumber(u->pre[mt][i]));
			snprintf(k, sizeof(k), "decode_tokps_runs_%s", r_jkey[mt]);
			a = cJSON_AddArrayToObject(o, k);
			for (unsigned i = 0; i < u->n_rep; i++)
				cJSON_AddItemToArray(a, cJSON_CreateNumber(u->dec[mt][i]));
		}
		snprintf(k, sizeof(k), "tokens_%s", r_jkey[mt]);
		if (ok) {
			cJSON *a = cJSON_AddArrayToObject(o, k);
			for (uint32_t i = 0; i < x->n_ids; i++)
				cJSON_AddItemToArray(a, cJSON_CreateNumber(x->ids[i]));
		} else {
			cJSON_AddNullToObject(o, k);
		}
		snprintf(k, sizeof(k), "error_%s", r_jkey[mt]);
		if (u->cr[mt].ran && !ok)
			cJSON_AddStringToObject(o, k, u->cr[mt].err);
		else
			cJSON_AddNullToObject(o, k);
	}
	for (int mt = R_RUN; mt < R_COUNT; mt++) {
		char k[96];
		snprintf(k, sizeof(k), "decode_%s_over_llamacpp", r_jkey[mt]);
		jnum(o, k, ratio(decode_tokps(u, mt), decode_tokps(u, R_LLAMA)));
		snprintf(k, sizeof(k), "prefill_%s_over_llamacpp", r_jkey[mt]);
		jnum(o, k, ratio(prefill_tokps(u, mt), prefill_tokps(u, R_LLAMA)));
		snprintf(k, sizeof(k), "tokens_agree_%s_llamacpp", r_jkey[mt]);
		jnum(o, k, ok_(u, mt) && ok_(u, R_LLAMA)
				   ? ids_agree(c, &u->r[mt], &u->r[R_LLAMA]) : NAN);
	}
}

static void cellf(double v, const char *fmt, int w)
{
	if (isfinite(v))
		printf(fmt, v);
	else
		printf(" %*s |", w, "n/a");
}

static void print_run(const struct rcfg *c, const struct rrun *u,
		      const struct bench_cg_env *cg)
{
	const struct ms_model *m = c->m;
	char b1[32], b2[32], b3[32], b4[32];
	printf("\nlimit      %s for each method = resident %s + %.0f%% of the experts %s "
	       "+ KV %s + 64 MiB%s%s\n",
	       fmt_bytes(u->limit, b1, sizeof(b1)),
	       fmt_bytes(m->resident_bytes, b2, sizeof(b2)),
	       100.0 * (double)u->share_bytes / (double)m->expert_bytes_run,
	       fmt_bytes(u->share_bytes, b3, sizeof(b3)),
	       fmt_bytes(c->kv_bytes, b4, sizeof(b4)),
	       cg->kind == BENCH_CG_NONE ? "" : ", cgroup ", cg->kind == BENCH_CG_NONE
								 ? " (NOT applied: no cgroup)"
								 : bench_cg_name(cg));
	if (u->raised)
		printf("           (raised from the formula's to hold the smallest "
		       "caches the engines take)\n");
	printf("run        cache %s = limit - resident - KV - 64 MiB margin\n",
	       fmt_bytes(u->cache_run, b1, sizeof(b1)));
	printf("run-daemon moestreamd's cache %s = the same - 32 MiB for the daemon\n",
	       fmt_bytes(u->cache_daemon, b1, sizeof(b1)));
	for (int mt = 0; mt < R_COUNT; mt++) {
		if (ok_(u, mt))
			printf("%-10s %s%s%s\n", r_key[mt], u->r[mt].note,
			       *u->r[mt].cache_mode ? "; " : "", u->r[mt].cache_mode);
		if (*u->r[mt].stop_err)
			printf("%-10s moestreamd did not stop cleanly: %s\n", r_key[mt],
			       u->r[mt].stop_err);
	}
	if (u->n_rep > 1)
		printf("repeat     each method %u times, interleaved: prefill and decode "
		       "tok/s are the medians,\n           the other columns the run "
		       "with the median decode's, the peak the highest\n",
		       u->n_rep);
	printf("\n%-27s | %6s | %8s | %8s | %8s | %6s | %7s | %7s | %9s | %9s\n", "method",
	       "load s", "prefill", "decode", "hit rate", "GB", "I/O", "disk", "compute",
	       "peak");
	printf("%-27s | %6s | %8s | %8s | %8s | %6s | %7s | %7s | %9s | %9s\n", "",
	       "", "tok/s", "tok/s", "(decode)", "read", "wait", "busy s", "s", "");
	printf("----------------------------+--------+----------+----------+----------+"
	       "--------+---------+---------+-----------+----------\n");
	for (int mt = 0; mt < R_COUNT; mt++) {
		const struct rres *x = &u->r[mt];
		if (!u->cr[mt].ran)
			continue;
		printf("%-27s |", r_label[mt]);
		if (!ok_(u, mt)) {
			printf(" FAILED: %s", u->cr[mt].err);
			if (u->cr[mt].peak_known)
				printf(" (peak %s, %llu OOM kills)",
				       fmt_bytes(u->cr[mt].peak_bytes, b1, sizeof(b1)),
				       (unsigned long long)u->cr[mt].oom_kills);
			printf("\n");
			continue;
		}
		printf(" %6.1f |", x->load_s);
		cellf(prefill_tokps(u, mt), " %8.2f |", 8);
		cellf(decode_tokps(u, mt), " %8.3f |", 8);
		cellf(hit_rate(u, mt), " %8.3f |", 8);
		cellf(gb_read(u, mt), " %6.2f |", 6);
		double ws = wait_share(u, mt);
		if (isfinite(ws))
			printf(" %6.1f%% |", 100 * ws);
		else
			printf(" %7s |", "n/a");
		cellf(disk_busy(u, mt), " %7.2f |", 7);
		cellf(compute_s(u, mt), " %9.2f |", 9);
		if (u->cr[mt].peak_known)
			printf(" %s", fmt_bytes(u->cr[mt].peak_bytes, b1, sizeof(b1)));
		else
			printf(" %8s", "-");
		if (u->cr[mt].oom_kills)
			printf(" (%llu OOM kills)", (unsigned long long)u->cr[mt].oom_kills);
		printf("\n");
	}
	printf("\n");
	for (int mt = 0; mt < R_COUNT; mt++) {
		const struct rres *x = &u->r[mt];
		if (!ok_(u, mt))
			continue;
		printf("%-10s prompt %u tokens in %.2f s, decode %u steps in %.2f s; read "
		       "%s in load, %s in prefill, %s in decode",
		       r_key[mt], x->prompt_tokens, x->prefill_s, x->gen_steps, x->decode_s,
		       x->load_bytes_known ? fmt_bytes(x->load_bytes, b1, sizeof(b1)) : "-",
		       x->bytes_known ? fmt_bytes(x->bytes_prefill, b2, sizeof(b2)) : "-",
		       x->bytes_known ? fmt_bytes(x->bytes_decode, b3, sizeof(b3)) : "-");
		if (x->spec >= 0)
			printf("; speculation %.1f%%", 100 * x->spec);
		if (x->io_busy_known)
			printf("; the daemon read for %.2f s of decode", x->io_busy_decode_s);
		printf("\n");
	}
	for (int mt = 0; mt < R_COUNT && u->n_rep > 1; mt++) {
		if (!ok_(u, mt))
			continue;
		printf("%-10s runs: prefill", r_key[mt]);
		for (unsigned i = 0; i < u->n_rep; i++)
			printf(" %.2f", u->pre[mt][i]);
		printf(", decode");
		for (unsigned i = 0; i < u->n_rep; i++)
			printf(" %.3f", u->dec[mt][i]);
		printf(" tok/s (medians %.2f, %.3f)\n", u->pre_med[mt], u->dec_med[mt]);
	}
	/* ratios only between methods that ran */
	const char *sep = "\nratios     ";
	for (int mt = R_RUN; mt < R_COUNT; mt++)
		if (ok_(u, mt) && ok_(u, R_LLAMA)) {
			printf("%s%s / llama.cpp: prefill %.2f x, decode %.2f x", sep,
			       r_key[mt],
			       ratio(prefill_tokps(u, mt), prefill_tokps(u, R_LLAMA)),
			       ratio(decode_tokps(u, mt), decode_tokps(u, R_LLAMA)));
			sep = "; ";
		}
	if (*sep == ';')
		printf("\n");
	for (int mt = R_RUN; mt < R_COUNT; mt++)
		if (ok_(u, mt))
			printf("overlap    %s: decode %.2f s; disk busy %.2f s; compute "
			       "(decode - wait) %.2f s: decode / max = %.2f\n",
			       r_key[mt], u->r[mt].decode_s, disk_busy(u, mt),
			       compute_s(u, mt), overlap(u, mt));
	for (int mt = R_RUN; mt < R_COUNT; mt++)
		if (ok_(u, mt) && ok_(u, R_LLAMA))
			printf(c->force ? "tokens     %s and llama.cpp: the same argmax "
					  "at %u of %u steps\n"
					: "tokens     %s and llama.cpp: the first %u of %u "
					  "greedy tokens equal\n", r_key[mt],
			       ids_agree(c, &u->r[mt], &u->r[R_LLAMA]), u->r[mt].n_ids);

	printf("\ntargets (issue 15)\n");
	struct {
		const char *text;
		double v, goal;
		bool higher;
	} t[] = {
		{ "decode tok/s of run >= 3 x llama.cpp's",
		  ratio(decode_tokps(u, R_RUN), decode_tokps(u, R_LLAMA)), T_DECODE, true },
		{ "prefill tok/s of run >= 2 x llama.cpp's",
		  ratio(prefill_tokps(u, R_RUN), prefill_tokps(u, R_LLAMA)), T_PREFILL,
		  true },
		{ "run: decode wall <= 1.25 x max(disk busy, compute)",
		  overlap(u, R_RUN), T_OVERLAP, false },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char v[32];
		if (isfinite(t[i].v))
			snprintf(v, sizeof(v), "%.2f x", t[i].v);
		else
			snprintf(v, sizeof(v), "n/a");
		bool met = isfinite(t[i].v) &&
			   (t[i].higher ? t[i].v >= t[i].goal : t[i].v <= t[i].goal);
		printf("  %-58s %10s  %s\n", t[i].text, v,
		       !isfinite(t[i].v) ? "n/a" : met ? "met" : "MISSED");
	}
	for (int mt = 0; mt < R_COUNT; mt++) {
		if (!u->cr[mt].ran)
			continue;
		double p = peak(u, mt);
		char v[64];
		snprintf(v, sizeof(v), "%s", isfinite(p) ? fmt_bytes((uint64_t)p, b1,
								      sizeof(b1))
							 : "n/a");
		char tx[80];
		snprintf(tx, sizeof(tx), "peak of %s's cgroup <= the limit", r_key[mt]);
		printf("  %-58s %10s  %s\n", tx, v,
		       !isfinite(p) ? "n/a" : p <= (double)u->limit ? "met" : "MISSED");
	}
}

/* ---- the sweep's files --------------------------------------------------------------- */

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

/* PREFIX.dat (whitespace columns, '#' header), PREFIX.gp, and PREFIX.png when
 * gnuplot is on PATH. *drawn says whether the PNG was made. */
static int write_sweep(const struct rcfg *c, const struct rrun *runs, unsigned n,
		       const char *prefix, bool *drawn, struct ms_err *err)
{
	char dat[4200], gp[4200], png[4200], gnuplot[4200];
	snprintf(dat, sizeof(dat), "%s.dat", prefix);
	snprintf(gp, sizeof(gp), "%s.gp", prefix);
	snprintf(png, sizeof(png), "%s.png", prefix);
	*drawn = false;
	FILE *f = fopen(dat, "w");
	if (!f)
		return ms_err_set(err, -errno, "%s: %s", dat, strerror(errno));
	fprintf(f, "# moestream bench e2e --sweep: %s, prompt %u tokens, %u decode "
		"steps, %u threads\n# expert_pct limit_bytes decode_tokps_llamacpp "
		"decode_tokps_run decode_tokps_run_daemon prefill_tokps_llamacpp "
		"prefill_tokps_run prefill_tokps_run_daemon\n",
		c->model_path, c->n_prompt, c->n_gen, c->threads);
	for (unsigned i = 0; i < n; i++) {
		const struct rrun *u = &runs[i];
		fprintf(f, "%.1f %llu", 100.0 * (double)u->share_bytes /
						(double)c->m->expert_bytes_run,
			(unsigned long long)u->limit);
		for (int mt = 0; mt < R_COUNT; mt++) {
			double v = decode_tokps(u, mt);
			if (isfinite(v))
				fprintf(f, " %.4f", v);
			else
				fprintf(f, " NaN");
		}
		for (int mt = 0; mt < R_COUNT; mt++) {
			double v = prefill_tokps(u, mt);
			if (isfinite(v))
				fprintf(f, " %.4f", v);
			else
				fprintf(f, " NaN");
		}
		fputc('\n', f);
	}
	if (fclose(f))
		return ms_err_set(err, -EIO, "writing %s failed", dat);
	f = fopen(gp, "w");
	if (!f)
		return ms_err_set(err, -errno, "%s: %s", gp, strerror(errno));
	const char *base = strrchr(dat, '/') ? strrchr(dat, '/') + 1 : dat;
	const char *pbase = strrchr(png, '/') ? strrchr(png, '/') + 1 : png;
	fprintf(f,
		"# gnuplot %s (from its folder): decode tok/s against the expert "
		"bytes the limit grants\n"
		"if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
		"  set terminal pngcairo size 1000,650 font ',10'\n"
		"} else {\n  set terminal png size 1000,650\n}\n"
		"set output '%s'\n"
		"set key top left\nset grid\n"
		"set title 'moestream bench e2e --sweep: %s, %u decode steps, limit = "
		"resident + share + KV + 64 MiB'\n"
		"set xlabel 'expert bytes in the limit (%% of those of the layers run)'\n"
		"set ylabel 'decode tokens / s'\nset yrange [0:*]\n",
		base, pbase, c->m->arch, c->n_gen);
	/* a line for each method that ran (column 3 + its index) */
	static const char *const title[R_COUNT] = {
		"llama.cpp (mmap)", "moestream run", "moestream run + moestreamd"
	};
	const char *sep = "plot ";
	for (int mt = 0; mt < R_COUNT; mt++) {
		if (!c->want[mt])
			continue;
		fprintf(f, "%s'%s' using 1:%d with linespoints lw 2 title '%s'", sep,
			sep[0] == 'p' ? base : "", 3 + mt, title[mt]);
		sep = ", \\\n     ";
	}
	fputc('\n', f);
	if (fclose(f))
		return ms_err_set(err, -EIO, "writing %s failed", gp);
	if (find_gnuplot(gnuplot, sizeof(gnuplot)))
		return 0;
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s", gp);
	char *sl = strrchr(dir, '/');
	if (sl)
		*sl = '\0';
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		return ms_err_set(err, -errno, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (sl && chdir(dir))
			_exit(126);
		execl(gnuplot, "gnuplot", sl ? sl + 1 : gp, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	struct stat sb;
	if (!WIFEXITED(st) || WEXITSTATUS(st) || stat(png, &sb) || !sb.st_size)
		return ms_err_set(err, -EIO, "gnuplot (%s) failed to draw %s", gnuplot,
				  png);
	*drawn = true;
	return 0;
}

/* ---- the command -------------------------------------------------------------------- */

static const char usage_line[] =
	"usage: moestream bench e2e --model MODEL [--prompt TEXT | --prompt-file F] "
	"[--gen N]\n"
	"         [--cache-size S | --mem-limit S] [--methods LIST] [--threads N] "
	"[--ctx N]\n"
	"         [--batch N] [--repeat N] [--sweep [LIST]] [--sweep-out PREFIX] "
	"[--json]\n"
	"       moestream bench e2e --synthetic --model MODEL ... (the trace "
	"replays: --synthetic --help)";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Runs the real engines on the same prompt and the same number of "
		"greedy tokens,\neach in a fresh memory cgroup with the same limit, "
		"the page cache dropped first:\n"
		"  llamacpp    llama.cpp (libllama of the pinned npm package), CPU, "
		"the model\n"
		"              mapped (its default), no weight repacking "
		"(--no-repack: its repacked\n"
		"              copies do not fit under a limit below the model)\n"
		"  run         moestream's engine, its embedded expert cache sized "
		"to the limit\n"
		"              (limit - resident - KV - 64 MiB)\n"
		"  run-daemon  the same through a private moestreamd, its cache "
		"sized likewise\n"
		"Prints load time, prefill and decode tok/s, the expert hit rate, GB "
		"read, the\nshare of decode spent waiting for experts, the disk's "
		"busy time, the engine's\ncompute time, the cgroup's peak, the "
		"ratios and issue 15's targets: decode\n>= 3 x llama.cpp, prefill >= "
		"2 x, decode <= 1.25 x max(disk busy, compute),\npeak <= limit.\n"
		"\n"
		"  --model MODEL      the GGUF (with a tokenizer)\n"
		"  --prompt TEXT      the prompt (default: a fixed English paragraph, "
		"~64 tokens)\n"
		"  --prompt-file F    the prompt from a file\n"
		"  --gen N            decode steps after the prompt (default 16)\n"
		"  --decode MODE      forced (default): each step is fed the next "
		"token of a fixed\n"
		"                     continuation, as real text routes; greedy: "
		"the argmax\n"
		"  --cache-size S     expert bytes the limit grants: bytes (K/M/G) or "
		"a share of\n"
		"                     the experts of the layers run (default 25%%)\n"
		"  --mem-limit S      the limit itself (default: resident + the "
		"share + KV + 64 MiB)\n"
		"  --methods LIST     of llamacpp,run,run-daemon (default all; with "
		"--sweep\n"
		"                     llamacpp,run)\n"
		"  --threads N        threads for both engines (default: the online "
		"CPUs)\n"
		"  --ctx N            context (KV cache) of both engines (default "
		"4096)\n"
		"  --batch N          prefill batch of both engines (default 64)\n"
		"  --llamacpp-repack  keep llama.cpp's weight repacking (its default; "
		"needs RAM\n"
		"                     for a copy of the repacked weights)\n"
		"  --activations A    run's products: q8 (default; 8-bit "
		"activations as llama.cpp's\n"
		"                     CPU backend) or f32 (exact)\n"
		"  --device D         run's methods on cpu (default) or gpu (GPU 0: "
		"resident tensors,\n"
		"                     KV and a VRAM expert cache there; "
		"--activations picks the\n"
		"                     GPU's matvec too; llama.cpp\n"
		"                     stays on the CPU: the pinned package has CPU "
		"backends only)\n"
		"  --llama-dir D      llama.cpp's libraries (default: "
		"$MS_LLAMA_DIR, else the\n"
		"                     cache tests/fetch-ggml.sh fills)\n"
		"  --repeat N         each method N times (1-9, default 1), "
		"interleaved: the tok/s\n"
		"                     and ratios are the medians, every run's "
		"printed (a shared\n"
		"                     machine's neighbours slow some runs)\n"
		"  --sweep [LIST]     decode tok/s at each share (default "
		"10%%,25%%,50%%,75%%,100%%):\n"
		"                     a table, PREFIX.dat, PREFIX.gp, and PREFIX.png "
		"with gnuplot\n"
		"  --sweep-out PREFIX where the sweep's files go (default "
		"e2e-sweep)\n"
		"  --json             one JSON object: prefill_tokps_*, "
		"decode_tokps_*, peak_bytes_*,\n"
		"                     limit_bytes, decode_run_over_llamacpp, ... "
		"(* = llamacpp, run,\n"
		"                     run_daemon); with --sweep: \"runs\", one per "
		"share\n"
		"  --synthetic        the trace replays of issue 7 instead (mmap, "
		"pread, lru,\n"
		"                     prefetch): see --synthetic --help\n"
		"  -h, --help         this text\n"
		"\n"
		"Needs root for the cgroups and for dropping the page cache; without "
		"root it\nruns unlimited and says so.\n"
		"\nexit: 0 measured (targets met or not); 1 a method failed, no "
		"tokenizer, a bad\nmodel; 2 bad usage\n",
		usage_line);
}

/* The engine's KV formula, from the GGUF (see the top of the file). */
int bench_e2e_kv_of(const struct ms_model *m, uint32_t n_ctx, uint64_t *kv,
		    uint32_t *n_run, struct ms_err *err)
{
	const struct ms_gguf *g = m->shards[0];
	char k[160];
	uint64_t n_block = 0, n_head = 0, n_kv = 0, kl = 0;
	snprintf(k, sizeof(k), "%s.block_count", m->arch);
	if (ms_gguf_get_u64(g, k, &n_block, err))
		return ms_err_set(err, -EINVAL, "%s: no %s", g->path, k);
	snprintf(k, sizeof(k), "%s.attention.head_count", m->arch);
	if (ms_gguf_get_u64(g, k, &n_head, err) || !n_head)
		return ms_err_set(err, -EINVAL, "%s: no %s", g->path, k);
	snprintf(k, sizeof(k), "%s.attention.head_count_kv", m->arch);
	if (ms_gguf_get_u64(g, k, &n_kv, NULL))
		n_kv = n_head;
	snprintf(k, sizeof(k), "%s.attention.key_length", m->arch);
	if (ms_gguf_get_u64(g, k, &kl, NULL))
		kl = m->n_embd / n_head;
	if (n_block <= m->n_nextn)
		return ms_err_set(err, -EINVAL, "%s: %llu blocks, %u NextN", g->path,
				  (unsigned long long)n_block, m->n_nextn);
	*n_run = (uint32_t)(n_block - m->n_nextn);
	*kv = (uint64_t)*n_run * n_ctx * n_kv * kl * 2 * 2;
	return 0;
}

/* The limit granting `share` expert bytes, and the caches that fit it. A
 * small model's limit is raised to hold the smallest caches the engines take
 * (moestreamd's 64 MiB; two layers' experts embedded), which is said. */
static int size_run(const struct rcfg *c, struct rrun *u, uint64_t share,
		    uint64_t mem_limit, struct ms_err *err)
{
	const struct ms_model *m = c->m;
	uint64_t base = m->resident_bytes + c->kv_bytes + RUN_MARGIN;
	uint64_t min_run = 2ull * m->n_expert_used * m->expert_bytes_max + MIB;
	uint64_t floor = base + min_run;
	if (c->want[R_DAEMON] && floor < base + DAEMON_PROC + DAEMON_MIN_CACHE)
		floor = base + DAEMON_PROC + DAEMON_MIN_CACHE;
	u->share_bytes = share;
	u->limit = mem_limit ? mem_limit
			     : m->resident_bytes + share + c->kv_bytes + HEADROOM;
	if (u->limit < floor) {
		if (mem_limit)
			return ms_err_set(err, -EINVAL, "--mem-limit %.1f MB is below "
					  "the %.1f MB the engines need (resident "
					  "%.1f MB, KV %.1f MB, margins and the "
					  "smallest caches)", (double)mem_limit / 1e6,
					  (double)floor / 1e6,
					  (double)m->resident_bytes / 1e6,
					  (double)c->kv_bytes / 1e6);
		u->limit = floor;
		u->raised = true;
	}
	u->cache_run = (u->limit - base) / MIB * MIB;
	u->cache_daemon = u->limit - base > DAEMON_PROC
				  ? (u->limit - base - DAEMON_PROC) / MIB * MIB
				  : 0;
	return 0;
}

int bench_e2e_real_main(int argc, char **argv)
{
	enum { O_MODEL = 1000, O_PROMPT, O_PROMPT_FILE, O_GEN, O_CACHE, O_MEM,
	       O_METHODS, O_THREADS, O_CTX, O_BATCH, O_REPACK, O_ACT, O_LLDIR, O_SWEEP,
	       O_SWEEP_OUT, O_JSON, O_DECODE, O_DEVICE, O_REPEAT };
	static const struct option opts[] = {
		{ "model", required_argument, 0, O_MODEL },
		{ "prompt", required_argument, 0, O_PROMPT },
		{ "prompt-file", required_argument, 0, O_PROMPT_FILE },
		{ "gen", required_argument, 0, O_GEN },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "mem-limit", required_argument, 0, O_MEM },
		{ "methods", required_argument, 0, O_METHODS },
		{ "threads", required_argument, 0, O_THREADS },
		{ "ctx", required_argument, 0, O_CTX },
		{ "batch", required_argument, 0, O_BATCH },
		{ "llamacpp-repack", no_argument, 0, O_REPACK },
		{ "activations", required_argument, 0, O_ACT },
		{ "device", required_argument, 0, O_DEVICE },
		{ "llama-dir", required_argument, 0, O_LLDIR },
		{ "sweep", optional_argument, 0, O_SWEEP },
		{ "sweep-out", required_argument, 0, O_SWEEP_OUT },
		{ "repeat", required_argument, 0, O_REPEAT },
		{ "json", no_argument, 0, O_JSON },
		{ "decode", required_argument, 0, O_DECODE },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct rcfg c = { .n_gen = 16, .n_ctx = 4096, .n_batch = 64 };
	bool greedy = false;
	const char *prompt = NULL, *prompt_file = NULL, *cache_arg = "25%";
	const char *mem_arg = NULL, *methods = NULL, *sweep = NULL;
	const char *sweep_out = "e2e-sweep";
	uint32_t n_repeat = 1;
	bool json = false, sweeping = false;
	uint32_t threads = 0;
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case O_MODEL: c.model_path = optarg; break;
		case O_PROMPT: prompt = optarg; break;
		case O_PROMPT_FILE: prompt_file = optarg; break;
		case O_DECODE:
			if (strcmp(optarg, "forced") && strcmp(optarg, "greedy")) {
				tool_error(CMD, "--decode '%s': forced or greedy", optarg);
				return tool_bad_usage(usage_line);
			}
			greedy = !strcmp(optarg, "greedy");
			break;
		case O_GEN:
			if (tool_parse_u32_in(CMD, "gen", optarg, 1, MAX_GEN, &c.n_gen))
				return tool_bad_usage(usage_line);
			break;
		case O_CACHE: cache_arg = optarg; break;
		case O_MEM: mem_arg = optarg; break;
		case O_METHODS: methods = optarg; break;
		case O_THREADS:
			if (tool_parse_u32_in(CMD, "threads", optarg, 1, MAX_THREADS,
					      &threads))
				return tool_bad_usage(usage_line);
			break;
		case O_CTX:
			if (tool_parse_u32_in(CMD, "ctx", optarg, 16, 1u << 20, &c.n_ctx))
				return tool_bad_usage(usage_line);
			break;
		case O_BATCH:
			if (tool_parse_u32_in(CMD, "batch", optarg, 1, 4096, &c.n_batch))
				return tool_bad_usage(usage_line);
			break;
		case O_REPACK: c.llama_repack = true; break;
		case O_ACT: {
			bool q8;
			if (tool_parse_activations(CMD, optarg, &q8))
				return tool_bad_usage(usage_line);
			c.f32_act = !q8;
			break;
		}
		case O_DEVICE:
			if (tool_parse_device(CMD, optarg, &c.gpu))
				return tool_bad_usage(usage_line);
			if (c.gpu && tool_gpu_usable(CMD))
				return EXIT_UNAVAILABLE;
			break;
		case O_LLDIR: c.llama_dir = optarg; break;
		case O_SWEEP:
			/* --sweep LIST as well as --sweep=LIST: a list is what
			 * follows unless it is an option. */
			sweeping = true;
			sweep = optarg ? optarg : "10%,25%,50%,75%,100%";
			if (!optarg && optind < argc && argv[optind][0] != '-')
				sweep = argv[optind++];
			break;
		case O_SWEEP_OUT: sweep_out = optarg; break;
		case O_REPEAT:
			if (tool_parse_u32_in(CMD, "repeat", optarg, 1, MAX_REPEAT,
					      &n_repeat))
				return tool_bad_usage(usage_line);
			break;
		case O_JSON: json = true; break;
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
	if (prompt && prompt_file) {
		tool_error(CMD, "--prompt and --prompt-file: one or the other");
		return tool_bad_usage(usage_line);
	}
	if (mem_arg && sweeping) {
		tool_error(CMD, "--mem-limit goes without --sweep: each share gets its "
				"own limit");
		return tool_bad_usage(usage_line);
	}
	for (int i = 0; i < R_COUNT; i++)
		c.want[i] = !sweeping || i != R_DAEMON;
	if (methods && tool_parse_methods(CMD, "--methods", methods, r_key, R_COUNT,
					  "llamacpp, run, run-daemon", c.want))
		return tool_bad_usage(usage_line);
	if (c.n_batch > c.n_ctx) {
		tool_error(CMD, "--batch %u is over the context %u", c.n_batch, c.n_ctx);
		return tool_bad_usage(usage_line);
	}
	char *shares[MAX_SWEEP];
	unsigned n_runs = 0;
	char list[1024];
	snprintf(list, sizeof(list), "%s", sweeping ? sweep : cache_arg);
	for (char *save = NULL, *s = strtok_r(list, ",", &save); s;
	     s = strtok_r(NULL, ",", &save)) {
		if (n_runs == MAX_SWEEP) {
			tool_error(CMD, "--sweep: at most %d shares", MAX_SWEEP);
			return tool_bad_usage(usage_line);
		}
		shares[n_runs++] = s;
	}
	if (!n_runs) {
		tool_error(CMD, "--sweep '%s': no share", sweep ? sweep : "");
		return tool_bad_usage(usage_line);
	}
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	c.threads = threads ? threads : (unsigned)(ncpu < 1 ? 1 : ncpu);

	struct ms_err err = { 0 };
	struct ms_gguf *g = NULL;
	struct ms_vocab *v = NULL;
	struct ms_tokens toks = { 0 }, force = { 0 };
	struct rrun *runs = NULL;
	char *text = NULL;
	size_t text_len = 0;
	int rc = 1;
	bool handlers = false;
	if (ms_model_open(&c.m, c.model_path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	const struct ms_model *m = c.m;
	if (!m->n_expert || !m->n_layers_run) {
		tool_error(CMD, "%s is not a Mixture-of-Experts model (no experts in the "
				"layers run)", c.model_path);
		goto out;
	}
	/* The prompt, tokenized once by our tokenizer (the ids llama.cpp's
	 * gives: issue 14); a model without one is told here, in one line. */
	if (prompt_file) {
		if (tool_read_input(CMD, prompt_file, 64u << 20, &text, &text_len))
			goto out;
	} else {
		text = strdup(prompt ? prompt : bench_e2e_default_prompt);
		if (!text) {
			tool_error(CMD, "out of memory");
			goto out;
		}
		text_len = strlen(text);
	}
	if (tool_load_vocab(CMD, c.model_path, &g, &v))
		goto out;
	if (ms_tokenize(v, text, text_len,
			MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL, &toks, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	if (!toks.n) {
		tool_error(CMD, "the prompt is empty");
		goto out;
	}
	if (toks.n + c.n_gen + 1 > c.n_ctx) {
		tool_error(CMD, "the prompt (%zu tokens) and %u decode steps do not fit "
			   "the context of %u (--ctx)", toks.n, c.n_gen, c.n_ctx);
		goto out;
	}
	c.ids = toks.ids;
	c.n_prompt = (uint32_t)toks.n;
	if (!greedy) {
		/* the continuation the decode steps are fed (both engines alike) */
		if (ms_tokenize(v, default_continuation, sizeof(default_continuation) - 1,
				0, &force, &err) || !force.n) {
			tool_error(CMD, "tokenizing the continuation: %s", err.msg);
			goto out;
		}
		c.force = force.ids;
		c.n_force = (uint32_t)force.n;
	}
	if (bench_e2e_kv_of(m, c.n_ctx, &c.kv_bytes, &c.n_run, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	runs = calloc(n_runs, sizeof(*runs));
	if (!runs) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	uint64_t mem_limit = 0;
	if (mem_arg && (ms_parse_size(mem_arg, &mem_limit) || !mem_limit)) {
		tool_error(CMD, "--mem-limit '%s': bytes with K/M/G", mem_arg);
		rc = tool_bad_usage(usage_line);
		goto out;
	}
	for (unsigned i = 0; i < n_runs; i++) {
		uint64_t share;
		if (ms_sim_parse_size(shares[i], m->expert_bytes_run, &share)) {
			tool_error(CMD, "%s '%s': bytes with K/M/G or a share like 25%%",
				   sweeping ? "--sweep" : "--cache-size", shares[i]);
			rc = tool_bad_usage(usage_line);
			goto out;
		}
		if (size_run(&c, &runs[i], share, mem_limit, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
	}

	struct bench_cg_env cg;
	bench_cg_detect(&cg);
	if (cg.kind == BENCH_CG_NONE)
		fprintf(stderr, "bench e2e: no memory limit (%s): peaks will not be "
				"known\n", cg.why);
	bench_cg_signals_install();
	handlers = true;
	bool dropped = true;
	for (unsigned i = 0; i < n_runs; i++)
		if (run_rounds(&c, &runs[i], n_repeat, &cg, &dropped)) {
			tool_error(CMD, "out of memory");
			goto out;
		}

	char b1[32], b2[32], b3[32];
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "model", c.model_path);
		cJSON_AddStringToObject(o, "architecture", m->arch);
		jnum(o, "prompt_tokens", c.n_prompt);
		jnum(o, "decode_steps", c.n_gen);
		jnum(o, "threads", c.threads);
		jnum(o, "n_ctx", c.n_ctx);
		jnum(o, "n_batch", c.n_batch);
		jnum(o, "resident_bytes", (double)m->resident_bytes);
		jnum(o, "expert_bytes", (double)m->expert_bytes_run);
		jnum(o, "kv_bytes", (double)c.kv_bytes);
		cJSON_AddBoolToObject(o, "mem_limited", cg.kind != BENCH_CG_NONE);
		cJSON_AddStringToObject(o, "cgroup", bench_cg_name(&cg));
		cJSON_AddBoolToObject(o, "page_cache_dropped", dropped);
		cJSON_AddBoolToObject(o, "llamacpp_repack", c.llama_repack);
		cJSON_AddStringToObject(o, "activations", c.f32_act ? "f32" : "q8");
		cJSON_AddStringToObject(o, "device", c.gpu ? "gpu" : "cpu");
		if (n_runs == 1) {
			json_run(o, &c, &runs[0]);
		} else {
			cJSON *a = cJSON_AddArrayToObject(o, "runs");
			for (unsigned i = 0; i < n_runs; i++) {
				cJSON *x = cJSON_CreateObject();
				json_run(x, &c, &runs[i]);
				cJSON_AddItemToArray(a, x);
			}
		}
		char *s = cJSON_Print(o);
		cJSON_Delete(o);
		if (!s) {
			tool_error(CMD, "out of memory building JSON");
			goto out;
		}
		puts(s);
		free(s);
	} else {
		printf("bench e2e: %s (%s), %u blocks run (%u MoE x %u experts, %u used), "
		       "resident %s, experts %s\n",
		       c.model_path, m->arch, c.n_run, m->n_layers_run, m->n_expert,
		       m->n_expert_used, fmt_bytes(m->resident_bytes, b1, sizeof(b1)),
		       fmt_bytes(m->expert_bytes_run, b2, sizeof(b2)));
		printf("work       prompt %u tokens (%s), then %u decode steps, %s; "
		       "%u thread%s,\n           ctx %u (KV %s), batch %u; the same ids "
		       "for every method\n",
		       c.n_prompt, prompt_file ? prompt_file : prompt ? "--prompt"
								   : "the default paragraph",
		       c.n_gen, c.force ? "fed a fixed continuation" : "greedy", c.threads, c.threads == 1 ? "" : "s", c.n_ctx,
		       fmt_bytes(c.kv_bytes, b3, sizeof(b3)), c.n_batch);
		if (cg.kind == BENCH_CG_NONE)
			printf("memory     NOT LIMITED (%s): peaks unknown\n", cg.why);
		printf("page cache %s\n", dropped ? "dropped before each method"
						  : "NOT dropped (needs root): figures "
						    "may come from RAM");
		for (unsigned i = 0; i < n_runs; i++)
			print_run(&c, &runs[i], &cg);
		if (n_runs > 1) {
			printf("\nsweep: decode tok/s by the expert bytes the limit "
			       "grants\n%7s %10s %10s %10s %10s %10s %9s\n", "experts",
			       "limit", "llamacpp", "run", "run-daemon", "run/llama",
			       "run peak");
			for (unsigned i = 0; i < n_runs; i++) {
				const struct rrun *u = &runs[i];
				printf("%6.1f%% %10s", 100.0 * (double)u->share_bytes /
							       (double)m->expert_bytes_run,
				       fmt_bytes(u->limit, b1, sizeof(b1)));
				for (int mt = 0; mt < R_COUNT; mt++) {
					double x = decode_tokps(u, mt);
					if (isfinite(x))
						printf(" %10.3f", x);
					else
						printf(" %10s", "-");
				}
				double r = ratio(decode_tokps(u, R_RUN), decode_tokps(u, R_LLAMA));
				if (isfinite(r))
					printf(" %9.2fx", r);
				else
					printf(" %10s", "-");
				double p = peak(u, R_RUN);
				printf(" %9s\n", isfinite(p) ? fmt_bytes((uint64_t)p, b2, sizeof(b2))
							     : "-");
			}
		}
	}
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		goto out;
	}
	if (n_runs > 1) {
		bool drawn = false;
		if (write_sweep(&c, runs, n_runs, sweep_out, &drawn, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		fprintf(stderr, "bench e2e: sweep data in %s.dat, gnuplot script %s.gp%s%s%s\n",
			sweep_out, sweep_out, drawn ? ", plot " : "", drawn ? sweep_out : "",
			drawn ? ".png" : " (gnuplot is not installed: apt-get install "
					 "gnuplot-nox, then gnuplot the .gp in its folder)");
	}
	rc = 0;
	for (unsigned i = 0; i < n_runs; i++)
		for (int mt = 0; mt < R_COUNT; mt++)
			if (runs[i].cr[mt].ran && !runs[i].cr[mt].ok) {
				tool_error(CMD, "%s failed: %s", r_label[mt], runs[i].cr[mt].err);
				rc = 1;
			}
out:
	if (handlers)
		bench_cg_signals_restore();
	free(runs);
	free(text);
	ms_tokens_free(&toks);
	ms_tokens_free(&force);
	ms_vocab_free(v);
	ms_gguf_free(g);
	ms_model_free(c.m);
	return rc;
}
