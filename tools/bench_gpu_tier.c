/*
 * bench_gpu_tier.c - the GPU tier's benchmark (bench_gpu_tier.h says what
 * and why; this says how).
 *
 * Two connections to the daemon: the tier's own (which it uses alone, and
 * whose mapping it registers), and the benchmark's, which warms the
 * daemon's cache, pins the experts whose bytes the host->device figure
 * copies, and reads STATS. An expert's place in the arena is the same in
 * both mappings, so the benchmark's pointers are translated into the
 * tier's mapping (base_tier + (p - base_bench)) to copy from registered
 * memory, while its own mapping, never registered, gives the pageable
 * figure. The three sources are timed in turn within each repetition, so
 * that drift (clocks, other load) hits them alike; the best and the median
 * are reported.
 *
 * The overlap loops walk a sequence of steps s = 0, 1, ...: layer s % L,
 * experts [h * used, (h + 1) * used) with h = (s / L) % 2. With a VRAM
 * budget of two layers' experts every step misses (what a step needs was
 * last resident 2L steps ago, two layers' worth of evictions back).
 *   copy:    acquire(s) (misses: daemon answers + copies queued, the
 *            compute stream waits for them); wait for the compute stream;
 *            release(s).
 *   compute: the FFN of one resident layer; wait.
 *   both:    acquire(s) (prefetched: hits whose copies may still run);
 *            FFN(s); prefetch(s + 1) (its copies start now, under FFN(s));
 *            wait for the compute stream (as a router reading the layer's
 *            output would); release(s).
 * Each is the wall time per step (CLOCK_MONOTONIC) over a loop of at least
 * `seconds` and 2L steps (each loop timed on its own clock), after two
 * untimed steps. The copy loop includes
 * the daemon round trip, as a real miss does.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench_gpu_tier.h"
#include "bench_rpc.h"
#include "moestream/gpu_tier.h"
#include "moestream/moestream.h"
#include "tools.h"

#define CMD "bench gpu-tier"
#define TARGET_RATIO 0.9
#define TARGET_OVERLAP 1.1
#define MAX_USED 64

static void note(const struct bench_gpu_tier_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void note(const struct bench_gpu_tier_opts *o, const char *fmt, ...)
{
	if (o->quiet)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", CMD);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static double stat_num(struct ms_client *c, const char *key)
{
	char *json = NULL;
	if (ms_client_stats(c, &json, 5000))
		return NAN;
	cJSON *o = cJSON_Parse(json);
	free(json);
	const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
	double r = cJSON_IsNumber(v) ? v->valuedouble : NAN;
	cJSON_Delete(o);
	return r;
}

/* `moestream mkmodel ...` in a child whose stdout is our stderr (so that
 * --json output stays clean). 0 or -EIO. */
static int write_model(const struct bench_gpu_tier_opts *o, int layers,
		       int experts, int used, int64_t E, int64_t F,
		       const char *types, const char *path, struct ms_err *err)
{
	char a_layers[16], a_experts[16], a_used[16], a_embd[24], a_ff[24];
	snprintf(a_layers, sizeof(a_layers), "%d", layers);
	snprintf(a_experts, sizeof(a_experts), "%d", experts);
	snprintf(a_used, sizeof(a_used), "%d", used);
	snprintf(a_embd, sizeof(a_embd), "%lld", (long long)E);
	snprintf(a_ff, sizeof(a_ff), "%lld", (long long)F);
	char *argv[] = { "mkmodel", "--layers", a_layers, "--experts", a_experts,
			 "--used", a_used, "--embd", a_embd, "--ff", a_ff,
			 "--vocab", "256", "--types", (char *)types, "-o",
			 (char *)path, "--force", NULL };
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return ms_err_set(err, -errno, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (o->quiet) {
			FILE *nul = freopen("/dev/null", "w", stdout);
			(void)nul;
		} else {
			dup2(2, 1);
		}
		optind = 0; /* getopt starts afresh */
		const int rc = cmd_mkmodel((int)(sizeof(argv) / sizeof(argv[0])) - 1,
					   argv);
		fflush(NULL);
		_exit(rc);
	}
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return ms_err_set(err, -EIO,
				  "writing the model %s (mkmodel --layers %d "
				  "--experts %d --embd %lld --ff %lld --types %s) "
				  "failed",
				  path, layers, experts, (long long)E,
				  (long long)F, types);
	return 0;
}

struct run {
	const struct bench_gpu_tier_opts *o;
	struct bench_gpu_tier_report *r;
	struct ms_client *cb;     /* the benchmark's connection */
	struct ms_gpu_tier *t;
	struct ms_gpu_ctx *ctx;
	uint32_t blocks[64];
	int nl, used;
	double seconds;
};

static void step_experts(const struct run *R, long s, uint32_t *block,
			 uint16_t *ex)
{
	*block = R->blocks[s % R->nl];
	const int h = (int)((s / R->nl) % 2);
	for (int k = 0; k < R->used; k++)
		ex[k] = (uint16_t)(h * R->used + k);
}

static int tier_stats(struct run *R, struct ms_gpu_tier_stats *s,
		      struct ms_err *err)
{
	return ms_gpu_tier_stats(R->t, s, err);
}

/* Host -> device: registered mapping, cudaHostAlloc, unregistered mapping. */
static int measure_h2d(struct run *R, const struct ms_client *ct,
		       struct ms_err *err)
{
	struct bench_gpu_tier_report *r = R->r;
	const int reps = R->o->reps > 0 ? R->o->reps : 20;
	uint16_t ex[MAX_USED];
	struct ms_client_expert ce[MAX_USED];
	for (int k = 0; k < R->used; k++)
		ex[k] = (uint16_t)k;
	int rc = ms_client_acquire(R->cb, R->blocks[0], ex, (unsigned)R->used,
				   ce, 60000);
	if (rc)
		return ms_err_set(err, rc, "acquiring block %u's experts: %s (%s)",
				  R->blocks[0], strerror(-rc),
				  ms_client_last_error(R->cb));
	uint64_t len_b = 0, len_t = 0;
	const uint8_t *base_b = ms_client_arena(R->cb, &len_b);
	const uint8_t *base_t = ms_client_arena(ct, &len_t);
	const int np = 3 * R->used;
	const void **src_map = calloc((size_t)np, sizeof(void *));
	const void **src_host = calloc((size_t)np, sizeof(void *));
	const void **src_page = calloc((size_t)np, sizeof(void *));
	uint64_t *len = calloc((size_t)np, sizeof(uint64_t));
	double *t_map = calloc((size_t)reps, sizeof(double));
	double *t_host = calloc((size_t)reps, sizeof(double));
	double *t_page = calloc((size_t)reps, sizeof(double));
	void *dst = NULL, *hbuf = NULL;
	int n = 0;
	uint64_t total = 0;
	if (!src_map || !src_host || !src_page || !len || !t_map || !t_host ||
	    !t_page) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (int k = 0; k < R->used; k++)
		for (uint32_t j = 0; j < ce[k].n_proj; j++) {
			const uint8_t *p = ce[k].proj[j];
			src_page[n] = p;
			src_map[n] = base_t + (p - base_b);
			len[n] = ce[k].len[j];
			total += len[n++];
		}
	if ((rc = ms_gpu_malloc(&dst, total, err)) ||
	    (rc = ms_gpu_host_alloc(&hbuf, total, err)))
		goto out;
	{
		uint64_t at = 0;
		for (int i = 0; i < n; i++) {
			src_host[i] = (uint8_t *)hbuf + at;
			memcpy((uint8_t *)hbuf + at, src_page[i], len[i]);
			at += len[i];
		}
	}
	r->h2d_bytes = total;
	r->h2d_pieces = n;
	r->reps = reps;
	for (int i = -1; i < reps; i++) { /* i = -1 warms up */
		double a, b, c;
		if ((rc = ms_gpu_h2d_time(dst, src_map, len, n, NULL, &a, err)) ||
		    (rc = ms_gpu_h2d_time(dst, src_host, len, n, NULL, &b, err)) ||
		    (rc = ms_gpu_h2d_time(dst, src_page, len, n, NULL, &c, err)))
			goto out;
		if (i >= 0) {
			t_map[i] = a;
			t_host[i] = b;
			t_page[i] = c;
		}
	}
	{
		const double gb = (double)total / 1e9;
		/* tool_median sorts: the fastest is then [0] */
		r->map_median_gbps = gb / (tool_median(t_map, (size_t)reps) * 1e-3);
		r->host_median_gbps = gb / (tool_median(t_host, (size_t)reps) * 1e-3);
		r->pageable_median_gbps = gb / (tool_median(t_page, (size_t)reps) * 1e-3);
		r->map_gbps = gb / (t_map[0] * 1e-3);
		r->host_gbps = gb / (t_host[0] * 1e-3);
		r->pageable_gbps = gb / (t_page[0] * 1e-3);
		r->ratio = r->map_gbps / r->host_gbps;
		r->ratio_median = r->map_median_gbps / r->host_median_gbps;
	}
out:
	ms_client_release(R->cb, R->blocks[0], ex, (unsigned)R->used);
	ms_gpu_free(dst);
	ms_gpu_host_free(hbuf);
	free(src_map);
	free(src_host);
	free(src_page);
	free(len);
	free(t_map);
	free(t_host);
	free(t_page);
	return rc;
}

/* Whether a timed loop that started at t0 and ran `steps` may stop: at
 * least `seconds` and 2L steps (every layer twice), at most 100000. */
static bool loop_done(const struct run *R, double t0, long steps)
{
	if (steps >= 100000)
		return true;
	return steps >= 2L * R->nl && tool_now_s() - t0 >= R->seconds;
}

static int sync_compute(struct run *R, struct ms_err *err)
{
	return ms_gpu_stream_sync(ms_gpu_ctx_stream(R->ctx), err);
}

static int copy_step(struct run *R, long s, struct ms_gpu_expert *v,
		     struct ms_err *err)
{
	uint32_t b;
	uint16_t ex[MAX_USED];
	step_experts(R, s, &b, ex);
	int rc = ms_gpu_tier_acquire(R->t, b, ex, (unsigned)R->used, v, err);
	if (rc)
		return rc;
	rc = sync_compute(R, err);
	int rr = ms_gpu_tier_release(R->t, b, ex, (unsigned)R->used, NULL);
	return rc ? rc : rr;
}

static int both_step(struct run *R, long s, struct ms_gpu_expert *v,
		     const float *x, float *y, int B, struct ms_err *err)
{
	uint32_t b, nb;
	uint16_t ex[MAX_USED], nx[MAX_USED];
	step_experts(R, s, &b, ex);
	step_experts(R, s + 1, &nb, nx);
	int rc = ms_gpu_tier_acquire(R->t, b, ex, (unsigned)R->used, v, err);
	if (rc)
		return rc;
	if (!(rc = ms_gpu_experts_ffn(R->ctx, v, R->used, x, 0, y, B,
				      MS_GPU_FFN_AUTO, err)) &&
	    !(rc = ms_gpu_tier_prefetch(R->t, nb, nx, (unsigned)R->used, err)))
		rc = sync_compute(R, err);
	int rr = ms_gpu_tier_release(R->t, b, ex, (unsigned)R->used, NULL);
	return rc ? rc : rr;
}

static int measure_overlap(struct run *R, int B,
			   struct bench_gpu_tier_overlap *ov,
			   struct ms_err *err)
{
	const int64_t E = R->r->n_embd;
	struct ms_gpu_expert v[MAX_USED];
	float *xh = malloc(sizeof(float) * (size_t)B * (size_t)E);
	void *x = NULL, *y = NULL;
	struct ms_gpu_tier_stats s0, s1;
	int rc = 0;
	double t0;
	long n;
	memset(ov, 0, sizeof(*ov));
	ov->tokens = B;
	if (!xh)
		return ms_err_set(err, -ENOMEM, "out of memory");
	uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)B;
	for (int64_t i = 0; i < (int64_t)B * E; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		xh[i] = (float)((double)(seed >> 11) / 9007199254740992.0 - 0.5);
	}
	if ((rc = ms_gpu_malloc(&x, sizeof(float) * (size_t)B * (size_t)E, err)) ||
	    (rc = ms_gpu_malloc(&y, sizeof(float) * (size_t)R->used * (size_t)B *
					    (size_t)E,
				err)) ||
	    (rc = ms_gpu_upload(x, xh, sizeof(float) * (size_t)B * (size_t)E, err)))
		goto out;

	/* copy alone */
	if ((rc = ms_gpu_tier_flush(R->t, err)))
		goto out;
	for (long s = 0; s < 2; s++)
		if ((rc = copy_step(R, s, v, err)))
			goto out;
	if ((rc = ms_gpu_tier_sync(R->t, err)) || (rc = tier_stats(R, &s0, err)))
		goto out;
	n = 0;
	t0 = tool_now_s();
	do {
		if ((rc = copy_step(R, 2 + n, v, err)))
			goto out;
	} while (!loop_done(R, t0, ++n));
	ov->copy_ms = (tool_now_s() - t0) * 1e3 / (double)n;
	if ((rc = ms_gpu_tier_sync(R->t, err)) || (rc = tier_stats(R, &s1, err)))
		goto out;
	ov->copy_stream_ms = (s1.copy_ms - s0.copy_ms) / (double)n;
	ov->misses_per_layer = (double)(s1.misses - s0.misses) / (double)n;
	ov->layers = (int)n;

	/* compute alone, on one resident layer */
	{
		uint32_t b;
		uint16_t ex[MAX_USED];
		step_experts(R, 0, &b, ex);
		if ((rc = ms_gpu_tier_acquire(R->t, b, ex, (unsigned)R->used, v,
					      err)))
			goto out;
		for (int i = 0; i < 2 && !rc; i++)
			if (!(rc = ms_gpu_experts_ffn(R->ctx, v, R->used, x, 0, y,
						      B, MS_GPU_FFN_AUTO, err)))
				rc = sync_compute(R, err);
		n = 0;
		t0 = tool_now_s();
		do {
			if (!(rc = ms_gpu_experts_ffn(R->ctx, v, R->used, x, 0, y,
						      B, MS_GPU_FFN_AUTO, err)))
				rc = sync_compute(R, err);
		} while (!rc && !loop_done(R, t0, ++n));
		ov->compute_ms = (tool_now_s() - t0) * 1e3 / (double)n;
		/* which path AUTO took: the matvec's conditions */
		struct ms_err why = { 0 };
		snprintf(ov->path, sizeof(ov->path), "%s",
			 ms_gpu_experts_ffn(R->ctx, v, R->used, x, 0, y, B,
					    MS_GPU_FFN_MATVEC, &why)
				 ? "cublas"
				 : "matvec");
		sync_compute(R, NULL);
		ms_gpu_tier_release(R->t, b, ex, (unsigned)R->used, NULL);
		if (rc)
			goto out;
	}

	/* both: layer s + 1's copies under layer s's compute */
	if ((rc = ms_gpu_tier_flush(R->t, err)))
		goto out;
	{
		uint32_t b;
		uint16_t ex[MAX_USED];
		step_experts(R, 0, &b, ex);
		if ((rc = ms_gpu_tier_prefetch(R->t, b, ex, (unsigned)R->used, err)))
			goto out;
	}
	for (long s = 0; s < 2; s++)
		if ((rc = both_step(R, s, v, x, y, B, err)))
			goto out;
	if ((rc = tier_stats(R, &s0, err)))
		goto out;
	n = 0;
	t0 = tool_now_s();
	do {
		if ((rc = both_step(R, 2 + n, v, x, y, B, err)))
			goto out;
	} while (!loop_done(R, t0, ++n));
	ov->both_ms = (tool_now_s() - t0) * 1e3 / (double)n;
	if ((rc = ms_gpu_tier_sync(R->t, err)) || (rc = tier_stats(R, &s1, err)))
		goto out;
	{
		const double acq = (double)(s1.hits - s0.hits + s1.misses - s0.misses);
		ov->prefetch_hit_rate =
			acq > 0 ? (double)(s1.prefetch_hits - s0.prefetch_hits) / acq
				: 0;
		const double m = ov->copy_ms > ov->compute_ms ? ov->copy_ms
							       : ov->compute_ms;
		ov->ratio = m > 0 ? ov->both_ms / m : 0;
	}
out:
	ms_gpu_free(x);
	ms_gpu_free(y);
	free(xh);
	return rc;
}

int bench_gpu_tier_run(const struct bench_gpu_tier_opts *o,
		       struct bench_gpu_tier_report *r, struct ms_err *err)
{
	memset(r, 0, sizeof(*r));
	if (!ms_gpu_built())
		return ms_err_set(err, -ENOTSUP, "%s", ms_gpu_build_info());
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err why = { 0 };
	int rc = ms_gpu_list(g, MS_GPU_MAX, &why);
	if (rc < 0)
		return ms_err_set(err, rc == -ENOTSUP ? rc : -ENODEV, "no GPU: %s",
				  why.msg);
	if (o->device < 0 || o->device >= rc)
		return ms_err_set(err, -EINVAL, "gpu %d: no such device (there are %d)",
				  o->device, rc);
	snprintf(r->device, sizeof(r->device), "%s", g[o->device].name);

	const int used = o->used > 0 ? o->used : 8;
	const int experts = o->experts > 0 ? o->experts : 2 * used;
	const int layers = o->layers > 0 ? o->layers : 4;
	const int64_t E = o->n_embd > 0 ? o->n_embd : 5120;
	const int64_t F = o->n_ff > 0 ? o->n_ff : 1536;
	const char *types = o->types ? o->types : "q2_K,q2_K,q3_K";
	if (used > MAX_USED || experts < 2 * used || layers < 2 || layers > 64)
		return ms_err_set(err, -EINVAL,
				  "%d layers of %d experts, %d used: expected 2..64 "
				  "layers, 1..%d used and at least 2 x used "
				  "experts",
				  layers, experts, used, MAX_USED);

	struct run R = { .o = o, .r = r, .used = used,
			 .seconds = o->seconds > 0 ? o->seconds : 1.0 };
	struct bench_daemon d = { 0 };
	struct ms_client *ct = NULL;
	char dir[256] = "", model[512] = "";
	bool own_dir = false, own_model = false;
	const char *sock = o->socket;

	if (!sock) {
		if (o->model) {
			snprintf(model, sizeof(model), "%s", o->model);
		} else {
			if (o->dir) {
				snprintf(dir, sizeof(dir), "%s", o->dir);
				if (mkdir(dir, 0755) && errno != EEXIST)
					return ms_err_set(err, -errno, "mkdir %s: %s",
							  dir, strerror(errno));
			} else {
				const char *tmp = getenv("TMPDIR");
				snprintf(dir, sizeof(dir), "%s/moestream-gpu-tier.XXXXXX",
					 tmp && *tmp ? tmp : "/tmp");
				if (!mkdtemp(dir))
					return ms_err_set(err, -errno, "mkdtemp %s: %s",
							  dir, strerror(errno));
				own_dir = true;
			}
			snprintf(model, sizeof(model), "%s/glm-shape.gguf", dir);
			note(o, "writing %s: %d MoE layers x %d experts of %lldx%lld "
				"(%s) ...",
			     model, layers, experts, (long long)E, (long long)F, types);
			if ((rc = write_model(o, layers, experts, used, E, F, types,
					      model, err)))
				goto out;
			own_model = !o->dir;
		}
		struct ms_model *m = NULL;
		if ((rc = ms_model_open(&m, model, err)))
			goto out;
		uint64_t need = 0;
		int nl = 0;
		for (uint32_t l = 0; l < m->n_layers && nl < layers; l++)
			if (!m->layers[l].nextn && m->n_expert >= (uint32_t)(2 * used)) {
				need += 2ull * (uint64_t)used * m->layers[l].expert_bytes;
				nl++;
			}
		ms_model_free(m);
		struct bench_daemon_opts dopts = {
			.model = model,
			.cache_bytes = need + need / 4 + (64ull << 20),
			.max_clients = 8,
		};
		note(o, "starting a private moestreamd on %s ...", model);
		if ((rc = bench_daemon_start(&d, &dopts, err)))
			goto out;
		sock = d.socket;
		snprintf(r->daemon, sizeof(r->daemon), "private moestreamd (pid %d)",
			 (int)d.pid);
	} else {
		snprintf(r->daemon, sizeof(r->daemon), "moestreamd at %s", sock);
	}

	if ((rc = ms_client_connect(&R.cb, sock, "bench-gpu-tier", err)) ||
	    (rc = ms_client_connect(&ct, sock, "bench-gpu-tier-vram", err)))
		goto out;
	{
		const struct ms_client_model *cm = ms_client_model(R.cb);
		snprintf(r->model, sizeof(r->model), "%s", sock == o->socket ? cm->arch
									   : model);
		for (uint32_t l = 0; l < cm->n_layers && R.nl < layers; l++)
			if (!cm->layers[l].nextn && cm->n_expert >= (uint32_t)(2 * used))
				R.blocks[R.nl++] = cm->layers[l].block;
		if (R.nl < 2) {
			rc = ms_err_set(err, -EINVAL,
					"the daemon's model has %d MoE layers with at "
					"least %d experts: 2 are needed",
					R.nl, 2 * used);
			goto out;
		}
		const struct ms_client_layer *L = ms_client_layer(R.cb, R.blocks[0]);
		r->expert_bytes = L->expert_bytes;
		r->n_embd = L->n_proj == 2 || L->proj[0] != MS_PROJ_DOWN ? L->ne[0][0]
									: L->ne[0][1];
		r->n_ff = 0;
		for (uint32_t j = 0; j < L->n_proj; j++)
			if (L->proj[j] == MS_PROJ_DOWN)
				r->n_ff = L->ne[j][0];
		r->used = used;
		r->layers = R.nl;
	}

	/* everything used into the daemon's RAM */
	note(o, "warming the daemon's cache: %d layers x %d experts ...", R.nl,
	     2 * used);
	for (int l = 0; l < R.nl; l++) {
		uint16_t ex[2 * MAX_USED];
		struct ms_client_expert ce[2 * MAX_USED];
		for (int k = 0; k < 2 * used; k++)
			ex[k] = (uint16_t)k;
		rc = ms_client_acquire(R.cb, R.blocks[l], ex, (unsigned)(2 * used),
				       ce, 120000);
		ms_client_release(R.cb, R.blocks[l], ex, (unsigned)(2 * used));
		if (rc) {
			rc = ms_err_set(err, rc, "warming block %u: %s (%s)",
					R.blocks[l], strerror(-rc),
					ms_client_last_error(R.cb));
			goto out;
		}
	}

	if ((rc = ms_gpu_ctx_init(&R.ctx, o->device, NULL, err)))
		goto out;
	{
		struct ms_gpu_tier_opts to = {
			.device = o->device,
			.vram_bytes = 2ull * (uint64_t)used * (r->expert_bytes + 768),
			.stream = ms_gpu_ctx_stream(R.ctx),
		};
		if ((rc = ms_gpu_tier_init(&R.t, ct, &to, err)))
			goto out;
		struct ms_gpu_tier_stats s;
		if ((rc = ms_gpu_tier_stats(R.t, &s, err)))
			goto out;
		snprintf(r->host_mode, sizeof(r->host_mode), "%s", s.host_mode);
		r->registered = s.host_registered;
		r->vram_bytes = s.vram_bytes;
	}
	const double miss0 = stat_num(R.cb, "misses");

	note(o, "host -> device copies ...");
	if ((rc = measure_h2d(&R, ct, err)))
		goto out;
	{
		static const int def_tokens[] = { 1, 512, 0 };
		const int *tk = o->tokens[0] ? o->tokens : def_tokens;
		for (int i = 0; i < BENCH_GPU_TIER_MAX_TOKENS && tk[i] > 0; i++) {
			note(o, "overlap at %d token(s) ...", tk[i]);
			if ((rc = measure_overlap(&R, tk[i], &r->overlap[r->n_overlap],
						  err)))
				goto out;
			r->n_overlap++;
		}
	}
	r->daemon_misses = stat_num(R.cb, "misses") - miss0;
out:
	ms_gpu_tier_free(R.t);
	ms_gpu_ctx_free(R.ctx);
	ms_client_close(ct);
	ms_client_close(R.cb);
	if (d.pid) {
		struct ms_err e2 = { 0 };
		int sr = bench_daemon_stop(&d, &e2);
		if (sr && !rc)
			rc = ms_err_set(err, sr, "%s", e2.msg);
	}
	if (own_model)
		unlink(model);
	if (own_dir)
		rmdir(dir);
	return rc;
}

void bench_gpu_tier_print(const struct bench_gpu_tier_report *r, FILE *f)
{
	char b1[32], b2[32];
	fprintf(f, "GPU tier: %s; experts of %lldx%lld, %s each, %d per layer; "
		   "%s\n",
		r->device, (long long)r->n_embd, (long long)r->n_ff,
		fmt_bytes(r->expert_bytes, b1, sizeof(b1)), r->used, r->daemon);
	fprintf(f, "host memory: %s\n", r->host_mode);
	fprintf(f, "\nhost -> device, %d copies of %s (one layer's experts), "
		   "best / median of %d:\n",
		r->h2d_pieces, fmt_bytes(r->h2d_bytes, b2, sizeof(b2)), r->reps);
	fprintf(f, "  %-38s %7.2f / %7.2f GB/s\n",
		r->registered ? "shared mapping (registered read-only)"
			      : "shared mapping (NOT registered)",
		r->map_gbps, r->map_median_gbps);
	fprintf(f, "  %-38s %7.2f / %7.2f GB/s\n", "cudaHostAlloc buffer",
		r->host_gbps, r->host_median_gbps);
	fprintf(f, "  %-38s %7.2f / %7.2f GB/s\n", "unregistered mapping (pageable)",
		r->pageable_gbps, r->pageable_median_gbps);
	fprintf(f, "  ratio mapping / cudaHostAlloc        %7.3f / %7.3f   "
		   "(target >= %.1f: %s)\n",
		r->ratio, r->ratio_median, TARGET_RATIO,
		r->ratio >= TARGET_RATIO ? "met" : "MISSED");
	fprintf(f, "\noverlap, per layer (%d layers cycled, VRAM budget %s: two "
		   "layers, every layer a miss):\n",
		r->layers, fmt_bytes(r->vram_bytes, b1, sizeof(b1)));
	fprintf(f, "  %6s %-7s %9s %10s %9s %7s %11s %9s %9s\n", "tokens", "path",
		"copy ms", "compute ms", "both ms", "ratio", "copy GB/s",
		"misses/l", "pf hits");
	for (int i = 0; i < r->n_overlap; i++) {
		const struct bench_gpu_tier_overlap *v = &r->overlap[i];
		fprintf(f, "  %6d %-7s %9.3f %10.3f %9.3f %7.3f %11.2f %9.2f %8.0f%%"
			   "   (target <= %.1f: %s)\n",
			v->tokens, v->path, v->copy_ms, v->compute_ms, v->both_ms,
			v->ratio,
			v->copy_ms > 0 ? (double)r->expert_bytes * r->used /
						 (v->copy_ms * 1e6)
				       : 0.0,
			v->misses_per_layer, 100.0 * v->prefetch_hit_rate,
			TARGET_OVERLAP, v->ratio <= TARGET_OVERLAP ? "met" : "MISSED");
	}
	fprintf(f, "  (copy: acquire of %d misses + wait, daemon round trip "
		   "included; compute: the layer's FFN + wait; both: FFN with the "
		   "next layer's prefetch under it + wait)\n",
		r->used);
	if (r->daemon_misses > 0)
		fprintf(f, "note: the daemon missed %.0f times while timing: its "
			   "cache does not hold the experts used, and NVMe reads "
			   "are in the copy figures\n",
			r->daemon_misses);
}

static void jnum(cJSON *o, const char *k, double v)
{
	cJSON_AddNumberToObject(o, k, isfinite(v) ? v : 0.0);
}

void bench_gpu_tier_json(const struct bench_gpu_tier_report *r, struct cJSON *o)
{
	cJSON *g = cJSON_AddObjectToObject(o, "gpu_tier");
	if (!g)
		return;
	cJSON_AddStringToObject(g, "device", r->device);
	cJSON_AddStringToObject(g, "host_mode", r->host_mode);
	cJSON_AddBoolToObject(g, "registered", r->registered);
	cJSON_AddStringToObject(g, "model", r->model);
	cJSON_AddStringToObject(g, "daemon", r->daemon);
	jnum(g, "n_embd", (double)r->n_embd);
	jnum(g, "n_ff", (double)r->n_ff);
	jnum(g, "expert_bytes", (double)r->expert_bytes);
	jnum(g, "experts_per_layer", r->used);
	jnum(g, "layers", r->layers);
	jnum(g, "vram_bytes", (double)r->vram_bytes);
	cJSON *h = cJSON_AddObjectToObject(g, "h2d");
	if (h) {
		jnum(h, "bytes", (double)r->h2d_bytes);
		jnum(h, "copies", r->h2d_pieces);
		jnum(h, "reps", r->reps);
		jnum(h, "mapping_gbps", r->map_gbps);
		jnum(h, "mapping_median_gbps", r->map_median_gbps);
		jnum(h, "hostalloc_gbps", r->host_gbps);
		jnum(h, "hostalloc_median_gbps", r->host_median_gbps);
		jnum(h, "pageable_gbps", r->pageable_gbps);
		jnum(h, "pageable_median_gbps", r->pageable_median_gbps);
		jnum(h, "ratio", r->ratio);
		jnum(h, "ratio_median", r->ratio_median);
		jnum(h, "target", TARGET_RATIO);
		cJSON_AddBoolToObject(h, "met", r->ratio >= TARGET_RATIO);
	}
	cJSON *a = cJSON_AddArrayToObject(g, "overlap");
	for (int i = 0; a && i < r->n_overlap; i++) {
		const struct bench_gpu_tier_overlap *v = &r->overlap[i];
		cJSON *x = cJSON_CreateObject();
		if (!x)
			break;
		jnum(x, "tokens", v->tokens);
		cJSON_AddStringToObject(x, "path", v->path);
		jnum(x, "layers_timed", v->layers);
		jnum(x, "copy_ms", v->copy_ms);
		jnum(x, "compute_ms", v->compute_ms);
		jnum(x, "both_ms", v->both_ms);
		jnum(x, "ratio", v->ratio);
		jnum(x, "target", TARGET_OVERLAP);
		cJSON_AddBoolToObject(x, "met", v->ratio <= TARGET_OVERLAP);
		jnum(x, "copy_stream_ms", v->copy_stream_ms);
		jnum(x, "misses_per_layer", v->misses_per_layer);
		jnum(x, "prefetch_hit_rate", v->prefetch_hit_rate);
		cJSON_AddItemToArray(a, x);
	}
	jnum(g, "daemon_misses_while_timing", r->daemon_misses);
}

static void usage(FILE *f, const char *name)
{
	fprintf(f,
		"usage: %s [--json] [--json-out FILE] [--device N]\n"
		"       [--socket PATH | --model FILE] [--dir DIR] [--layers N] "
		"[--experts N]\n"
		"       [--used N] [--shape E,F] [--types G,U,D] [--tokens LIST] "
		"[--time S]\n"
		"       [--reps N] [--quiet]\n"
		"\n"
		"The GPU tier: host->device GB/s from moestreamd's shared cache "
		"(the mapping\nthe tier registers read-only) against a "
		"cudaHostAlloc buffer in the same run\n(target >= 0.9), and the "
		"time of a layer whose copies run under the previous\nlayer's "
		"compute against max(copy, compute) (target <= 1.1).\n"
		"\n"
		"By default it writes a model with GLM-4.7's expert shape (5120, "
		"1536,\nq2_K,q2_K,q3_K; 4 MoE layers x 16 experts, 0.8 GB) in a "
		"fresh folder and runs a\nprivate moestreamd on it.\n"
		"\n"
		"  --socket PATH   use a running moestreamd (its first MoE layers)\n"
		"  --model FILE    run the private moestreamd on FILE\n"
		"  --dir DIR       write the model into DIR and keep it\n"
		"  --layers N      MoE layers cycled over (4)\n"
		"  --experts N     experts per layer written (16: 2 x used)\n"
		"  --used N        experts per layer (8, GLM-4.7's)\n"
		"  --shape E,F     n_embd,n_ff written (5120,1536)\n"
		"  --types G,U,D   expert types written (q2_K,q2_K,q3_K)\n"
		"  --tokens LIST   tokens per layer, e.g. 1,512 (the default: "
		"decode, prefill)\n"
		"  --time S        seconds per timed loop (1)\n"
		"  --reps N        host->device repetitions (20)\n"
		"  --json          the report as JSON\n"
		"  --json-out FILE the JSON to FILE as well as the table\n"
		"\nExit: 0 ran, 1 failed, 2 usage, 3 no GPU or built without "
		"CUDA.\n",
		name);
}

int bench_gpu_tier_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "json-out", required_argument, 0, 'J' },
		{ "device", required_argument, 0, 'd' },
		{ "socket", required_argument, 0, 's' },
		{ "model", required_argument, 0, 'm' },
		{ "dir", required_argument, 0, 'D' },
		{ "layers", required_argument, 0, 'l' },
		{ "experts", required_argument, 0, 'e' },
		{ "used", required_argument, 0, 'u' },
		{ "shape", required_argument, 0, 'S' },
		{ "types", required_argument, 0, 'T' },
		{ "tokens", required_argument, 0, 'k' },
		{ "time", required_argument, 0, 't' },
		{ "reps", required_argument, 0, 'r' },
		{ "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *name = argc > 0 ? argv[0] : CMD;
	struct bench_gpu_tier_opts o = { 0 };
	bool json = false;
	const char *json_out = NULL;
	int c;
	uint32_t u;
	optind = 1;
	opterr = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'J': json_out = optarg; break;
		case 's': o.socket = optarg; break;
		case 'm': o.model = optarg; break;
		case 'D': o.dir = optarg; break;
		case 'T': o.types = optarg; break;
		case 'q': o.quiet = true; break;
		case 'd':
		case 'l':
		case 'e':
		case 'u':
		case 'r': {
			const char *on = c == 'd' ? "--device" : c == 'l' ? "--layers"
				       : c == 'e' ? "--experts" : c == 'u' ? "--used"
									: "--reps";
			if (tool_parse_u32(CMD, on, optarg, &u) || u > 100000)
				goto usage_err;
			if (c == 'd') o.device = (int)u;
			if (c == 'l') o.layers = (int)u;
			if (c == 'e') o.experts = (int)u;
			if (c == 'u') o.used = (int)u;
			if (c == 'r') o.reps = (int)u;
			break;
		}
		case 'S': {
			long long e, f;
			char tail;
			if (sscanf(optarg, "%lld,%lld%c", &e, &f, &tail) != 2 ||
			    e < 32 || f < 32 || e > (1 << 20) || f > (1 << 20)) {
				tool_error(CMD, "--shape '%s': expected E,F (n_embd,n_ff)",
					   optarg);
				goto usage_err;
			}
			o.n_embd = e;
			o.n_ff = f;
			break;
		}
		case 'k': {
			int n = 0;
			char *s = optarg, *end;
			while (*s) {
				long v = strtol(s, &end, 10);
				if (end == s || v < 1 || v > 4096 ||
				    n == BENCH_GPU_TIER_MAX_TOKENS - 1 ||
				    (*end && *end != ',')) {
					tool_error(CMD, "--tokens '%s': expected up "
							"to %d counts 1..4096, "
							"comma-separated",
						   optarg, BENCH_GPU_TIER_MAX_TOKENS - 1);
					goto usage_err;
				}
				o.tokens[n++] = (int)v;
				s = *end ? end + 1 : end;
			}
			o.tokens[n] = 0;
			break;
		}
		case 't': {
			char *end;
			o.seconds = strtod(optarg, &end);
			if (*end || !(o.seconds > 0) || o.seconds > 600) {
				tool_error(CMD, "--time '%s': seconds, 0..600", optarg);
				goto usage_err;
			}
			break;
		}
		case 'h':
			usage(stdout, name);
			return 0;
		default:
			goto usage_err;
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s'", argv[optind]);
		goto usage_err;
	}
	if (o.socket && (o.model || o.dir)) {
		tool_error(CMD, "--socket uses a running daemon's model: no --model "
				"or --dir with it");
		goto usage_err;
	}
	{
		struct bench_gpu_tier_report *r = malloc(sizeof(*r));
		if (!r) {
			tool_error(CMD, "out of memory");
			return 1;
		}
		struct ms_err err = { 0 };
		int rc = bench_gpu_tier_run(&o, r, &err);
		if (rc) {
			tool_error(CMD, "%s", err.msg);
			free(r);
			return rc == -ENOTSUP || rc == -ENODEV ? EXIT_UNAVAILABLE : 1;
		}
		int out = 0;
		if (json || json_out) {
			cJSON *jo = cJSON_CreateObject();
			bench_gpu_tier_json(r, jo);
			char *s = cJSON_Print(jo);
			cJSON_Delete(jo);
			if (!s) {
				tool_error(CMD, "out of memory");
				free(r);
				return 1;
			}
			if (json_out && tool_write_text(CMD, json_out, s))
				out = 1;
			if (json)
				puts(s);
			free(s);
		}
		if (!json)
			bench_gpu_tier_print(r, stdout);
		free(r);
		if (fflush(stdout) || ferror(stdout)) {
			tool_error(CMD, "writing the output failed");
			return 1;
		}
		return out;
	}
usage_err:
	usage(stderr, name);
	return EXIT_USAGE;
}
