/*
 * simulate.c - `moestream simulate`: replay a routing trace against an
 * expert cache of a given size and policy, or sweep cache sizes.
 *
 * The simulator itself (and the exact model of the cache it replays) is in
 * sim.h / sim.c; this file is the command: options, sizes, the report, the
 * sweep table and JSON. A sweep is a few dozen independent replays of one
 * prepared trace, so it runs them on a small pool of threads (the prepared
 * trace is read-only and shared).
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "sim.h"
#include "tools.h"

#define CMD "simulate"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestream simulate --trace T --model M --cache-size S "
		"[--policy P]\n"
		"                          [--prefetch] [--json]\n"
		"       moestream simulate --trace T --model M --sweep [--sizes "
		"S,S,...] [--json]\n"
		"\n"
		"Replays a routing trace against an expert cache of S bytes and "
		"reports the hit\nrate, the bytes read from disk (per token too), "
		"and evictions. Each expert\n(layer, expert) takes its layer's "
		"expert bytes from the model; token by token,\nlayer by layer, "
		"the k experts of a step are needed together and are pinned\n"
		"for the step (so S must hold k of the largest experts).\n"
		"\n"
		"  -t, --trace T       a routing trace (moestream trace gen / "
		"import)\n"
		"  -m, --model M       the model it was made for (.gguf, any "
		"shard); only its\n"
		"                      metadata is read\n"
		"  -c, --cache-size S  bytes of expert slots: 32G, 512M, 1.5G, "
		"a bare number\n"
		"                      of bytes (K/M/G/T are powers of 1024), or "
		"a share of the\n"
		"                      experts of the layers that run: 25%%\n"
		"  -p, --policy P      lru (default): evict the least recently "
		"used\n"
		"                      lfu: the fewest uses since loaded (ties: "
		"LRU)\n"
		"                      fifo: the earliest loaded\n"
		"                      min: Belady's offline optimum: the expert "
		"used furthest\n"
		"                      in the future. No policy hits more often "
		"when experts are\n"
		"                      the same size; with sizes that differ by "
		"layer it is the\n"
		"                      classic bound but not strictly optimal "
		"(for hits or\n"
		"                      bytes: exact variable-size caching is "
		"NP-hard).\n"
		"      --prefetch      add an oracle next-step prefetch: while a "
		"step computes,\n"
		"                      load the next step's experts (never into "
		"pinned slots).\n"
		"                      Reports demand hits (resident anyway), "
		"prefetch hits\n"
		"                      (read ahead, off the critical path) and "
		"stalls\n"
		"                      separately: the bound for any next-step "
		"prefetcher.\n"
		"                      The computing step stays pinned, so a "
		"cache of k\n"
		"                      experts has no room to prefetch into.\n"
		"      --sweep         a table over cache sizes (5%%..100%% of "
		"the experts) with a\n"
		"                      column per policy (lru, lfu, fifo, min, "
		"min+prefetch)\n"
		"                      and GB read per token: how much RAM buys "
		"how much\n"
		"      --sizes LIST    the sweep's sizes instead: --sizes "
		"16G,32G,48G,64G\n"
		"      --json          the results as JSON (hit_rate is the "
		"demand hit rate)\n"
		"  -h, --help          this text\n"
		"\n"
		"examples:\n"
		"  moestream trace gen --model glm.gguf --tokens 2000 -o glm.trace\n"
		"  moestream simulate -t glm.trace -m GLM-4.7-UD-Q2_K_XL-00001-"
		"of-00003.gguf \\\n"
		"      --cache-size 48G --policy min\n"
		"  moestream simulate -t glm.trace -m glm.gguf --sweep --sizes "
		"16G,32G,48G,64G\n"
		"\n"
		"exit: 0 ok, 1 bad or mismatched trace/model, 2 bad usage "
		"(including a cache\nsize below the minimum)\n");
}

static int bad_usage(void)
{
	fprintf(stderr, "usage: moestream simulate --trace T --model M "
			"--cache-size S [--policy P] [--prefetch] [--json]\n"
			"       moestream simulate --trace T --model M --sweep "
			"[--sizes LIST] [--json]  (see --help)\n");
	return EXIT_USAGE;
}

/* "32.00 GiB", "512.0 MiB": cache sizes are RAM, so binary units. */
static const char *fmt_ram(uint64_t b, char *buf, size_t len)
{
	if (b >= (1ull << 30))
		snprintf(buf, len, "%.2f GiB", (double)b / (1ull << 30));
	else if (b >= (1ull << 20))
		snprintf(buf, len, "%.1f MiB", (double)b / (1ull << 20));
	else
		snprintf(buf, len, "%llu B", (unsigned long long)b);
	return buf;
}

/* ---- a single run ------------------------------------------------------------- */

struct ctx {
	const char *trace_path, *model_path;
	const struct ms_sim *s;
	uint64_t bytes_per_token0; /* read per token when nothing is cached */
};

#define JNUM(o, k, v) cJSON_AddNumberToObject((o), (k), (double)(v))

static void json_result(cJSON *o, const struct ms_sim_result *r,
			bool prefetch)
{
	uint64_t bytes = r->bytes_demand + r->bytes_prefetch;
	JNUM(o, "hit_rate", ms_sim_hit_rate(r));
	if (prefetch) {
		JNUM(o, "prefetch_covered", ms_sim_prefetch_rate(r));
		JNUM(o, "miss_rate", ms_sim_miss_rate(r));
	}
	JNUM(o, "hits", r->hits);
	JNUM(o, "prefetch_hits", r->prefetch_hits);
	JNUM(o, "misses", r->misses);
	JNUM(o, "prefetch_loads", r->prefetch_loads);
	JNUM(o, "prefetch_skipped", r->prefetch_skipped);
	JNUM(o, "evictions", r->evictions);
	JNUM(o, "bytes_read", bytes);
	JNUM(o, "bytes_demand", r->bytes_demand);
	JNUM(o, "bytes_prefetch", r->bytes_prefetch);
	JNUM(o, "bytes_per_token", r->tokens ? (double)bytes / r->tokens : 0.0);
	JNUM(o, "peak_bytes", r->peak_bytes);
}

static void json_head(cJSON *o, const struct ctx *c)
{
	cJSON_AddStringToObject(o, "trace", c->trace_path);
	cJSON_AddStringToObject(o, "model", c->model_path);
	JNUM(o, "tokens", c->s->n_tokens);
	JNUM(o, "layers", c->s->n_layers);
	JNUM(o, "k", c->s->k);
	JNUM(o, "accesses", c->s->n_access);
	JNUM(o, "distinct", c->s->distinct);
	JNUM(o, "expert_bytes_run", c->s->all_bytes);
	JNUM(o, "min_cache_bytes", c->s->min_cache);
	JNUM(o, "bytes_per_token_uncached", c->bytes_per_token0);
}

static int print_json(cJSON *o)
{
	char *str = o ? cJSON_Print(o) : NULL;
	int rc = 0;
	if (str)
		puts(str);
	else
		rc = -ENOMEM;
	free(str);
	cJSON_Delete(o);
	return rc;
}

static void print_head(const struct ctx *c)
{
	char b1[32], b2[32], b3[32], b4[32];
	const struct ms_sim *s = c->s;
	uint64_t lo = UINT64_MAX, hi = 0;
	for (uint32_t l = 0; l < s->n_layers; l++) {
		lo = s->layer_bytes[l] < lo ? s->layer_bytes[l] : lo;
		hi = s->layer_bytes[l] > hi ? s->layer_bytes[l] : hi;
	}
	printf("trace          %s: %s tokens x %u MoE layers x %u experts = "
	       "%s accesses\n",
	       c->trace_path, fmt_count(s->n_tokens, b1, sizeof(b1)),
	       s->n_layers, s->k, fmt_count(s->n_access, b2, sizeof(b2)));
	printf("               %s distinct experts used of %s\n",
	       fmt_count(s->distinct, b1, sizeof(b1)),
	       fmt_count(s->n_keys, b2, sizeof(b2)));
	printf("model          %s: %s", c->model_path,
	       fmt_count(lo, b1, sizeof(b1)));
	if (hi != lo)
		printf("..%s", fmt_count(hi, b2, sizeof(b2)));
	printf(" bytes per expert, %s (%s) in the layers run\n",
	       fmt_bytes(s->all_bytes, b3, sizeof(b3)),
	       fmt_ram(s->all_bytes, b4, sizeof(b4)));
	printf("uncached       %s read per token\n",
	       fmt_bytes(c->bytes_per_token0, b1, sizeof(b1)));
}

static void print_tok_s(uint64_t bytes, uint64_t tokens)
{
	static const double gbps[] = { 7.0, 14.0 };
	double per = tokens ? (double)bytes / tokens : 0;
	printf("tok/s bound    ");
	for (int i = 0; i < 2; i++)
		if (per > 0)
			printf("%s%.2f at %g GB/s", i ? ", " : "",
			       gbps[i] * 1e9 / per, gbps[i]);
		else
			printf("%sunbounded at %g GB/s", i ? ", " : "", gbps[i]);
	printf(" (disk reads alone)\n");
}

static void print_result(const struct ctx *c, const struct ms_sim_opts *o,
			 const struct ms_sim_result *r)
{
	char b1[32], b2[32], b3[32];
	const struct ms_sim *s = c->s;
	uint64_t bytes = r->bytes_demand + r->bytes_prefetch;

	print_head(c);
	printf("cache          %s (%s), %.1f%% of the experts; policy %s%s\n",
	       fmt_ram(o->cache_bytes, b1, sizeof(b1)),
	       fmt_bytes(o->cache_bytes, b2, sizeof(b2)),
	       100.0 * (double)o->cache_bytes / (double)s->all_bytes,
	       ms_sim_policy_name(o->policy),
	       o->prefetch ? " + oracle next-step prefetch" : "");
	if (!o->prefetch) {
		printf("hit rate       %.2f%% (%s of %s accesses)\n",
		       100 * ms_sim_hit_rate(r), fmt_count(r->hits, b1, sizeof(b1)),
		       fmt_count(r->accesses, b2, sizeof(b2)));
	} else {
		printf("hit rate       %.2f%% resident when needed (%s of %s "
		       "accesses)\n",
		       100 * ms_sim_hit_rate(r), fmt_count(r->hits, b1, sizeof(b1)),
		       fmt_count(r->accesses, b2, sizeof(b2)));
		printf("prefetched     %.2f%% read ahead while the step before "
		       "computed (%s)\n",
		       100 * ms_sim_prefetch_rate(r),
		       fmt_count(r->prefetch_hits, b1, sizeof(b1)));
		printf("stalls         %.2f%% demand misses (%s; %s prefetches "
		       "found no unpinned room)\n",
		       100 * ms_sim_miss_rate(r), fmt_count(r->misses, b1, sizeof(b1)),
		       fmt_count(r->prefetch_skipped, b2, sizeof(b2)));
	}
	printf("read           %s experts, %s; %s per token\n",
	       fmt_count(r->misses + r->prefetch_loads, b1, sizeof(b1)),
	       fmt_bytes(bytes, b2, sizeof(b2)),
	       fmt_bytes(r->tokens ? bytes / r->tokens : 0, b3, sizeof(b3)));
	printf("evictions      %s\n", fmt_count(r->evictions, b1, sizeof(b1)));
	print_tok_s(bytes, r->tokens);
}

/* ---- the sweep -------------------------------------------------------------------- */

/* The columns of a sweep: four policies, then MIN with prefetch. */
#define N_VARIANTS 5
static const char *const variant_name[N_VARIANTS] = {
	"lru", "lfu", "fifo", "min", "min+prefetch"
};

static struct ms_sim_opts variant_opts(int v, uint64_t size)
{
	static const enum ms_sim_policy pol[N_VARIANTS] = {
		MS_SIM_LRU, MS_SIM_LFU, MS_SIM_FIFO, MS_SIM_MIN, MS_SIM_MIN
	};
	return (struct ms_sim_opts){ .policy = pol[v], .cache_bytes = size,
				     .prefetch = v == 4 };
}

struct job {
	struct ms_sim_opts o;
	struct ms_sim_result r;
	int rc;
	struct ms_err err;
};

struct pool {
	const struct ms_sim *s;
	struct job *jobs;
	size_t n;
	atomic_size_t next;
};

static void *worker(void *arg)
{
	struct pool *p = arg;
	for (;;) {
		size_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->n)
			return NULL;
		struct job *j = &p->jobs[i];
		j->rc = ms_sim_run(p->s, &j->o, &j->r, &j->err);
	}
}

/* Runs every job; on a thread that fails to start, the rest still run
 * here. */
static void run_jobs(const struct ms_sim *s, struct job *jobs, size_t n)
{
	struct pool p = { .s = s, .jobs = jobs, .n = n };
	atomic_init(&p.next, 0);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t nt = cpus > 1 ? (size_t)cpus : 1;
	nt = nt > 16 ? 16 : nt;
	nt = nt > n ? n : nt;
	pthread_t th[16];
	size_t started = 0;
	for (size_t i = 1; i < nt; i++) {
		if (pthread_create(&th[started], NULL, worker, &p))
			break;
		started++;
	}
	worker(&p);
	for (size_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
}

static const double default_pct[] = { 5,  10, 15, 20, 25, 30, 40,
				      50, 60, 70, 80, 90, 100 };
#define N_DEFAULT (sizeof(default_pct) / sizeof(default_pct[0]))

static int sweep(const struct ctx *c, const uint64_t *sizes,
		 char *const *labels, size_t n_sizes, bool json)
{
	const struct ms_sim *s = c->s;
	size_t n_rows = 0;
	uint64_t *rows = malloc(n_sizes * sizeof(*rows));
	struct job *jobs = calloc(n_sizes * N_VARIANTS, sizeof(*jobs));
	int rc = 0;
	if (!rows || !jobs) {
		tool_error(CMD, "out of memory");
		rc = 1;
		goto out;
	}
	for (size_t i = 0; i < n_sizes; i++)
		if (sizes[i] >= s->min_cache)
			rows[n_rows++] = sizes[i];
	if (!n_rows) {
		char b1[32];
		tool_error(CMD,
			   "every size of the sweep is below the minimum cache "
			   "of %s (%u x the largest expert); pass --sizes with "
			   "larger ones",
			   fmt_ram(s->min_cache, b1, sizeof(b1)), s->k);
		rc = EXIT_USAGE;
		goto out;
	}
	for (size_t i = 0; i < n_rows; i++)
		for (int v = 0; v < N_VARIANTS; v++)
			jobs[i * N_VARIANTS + v].o = variant_opts(v, rows[i]);
	run_jobs(s, jobs, n_rows * N_VARIANTS);
	for (size_t i = 0; i < n_rows * N_VARIANTS; i++)
		if (jobs[i].rc) {
			tool_error(CMD, "%s", jobs[i].err.msg);
			rc = 1;
			goto out;
		}

	if (json) {
		cJSON *o = cJSON_CreateObject();
		json_head(o, c);
		cJSON *sk = cJSON_AddArrayToObject(o, "skipped_sizes");
		for (size_t i = 0; i < n_sizes; i++)
			if (sizes[i] < s->min_cache)
				cJSON_AddItemToArray(sk, cJSON_CreateNumber(
								 (double)sizes[i]));
		cJSON *arr = cJSON_AddArrayToObject(o, "rows");
		for (size_t i = 0; i < n_rows; i++) {
			cJSON *row = cJSON_CreateObject();
			JNUM(row, "cache_bytes", rows[i]);
			JNUM(row, "cache_fraction",
			     (double)rows[i] / (double)s->all_bytes);
			for (int v = 0; v < N_VARIANTS; v++) {
				cJSON *x = cJSON_AddObjectToObject(
					row, variant_name[v]);
				json_result(x, &jobs[i * N_VARIANTS + v].r,
					    v == 4);
			}
			cJSON_AddItemToArray(arr, row);
		}
		if (print_json(o)) {
			tool_error(CMD, "out of memory building JSON");
			rc = 1;
		}
		goto out;
	}

	char b1[32];
	print_head(c);
	for (size_t i = 0; i < n_sizes; i++)
		if (sizes[i] < s->min_cache)
			printf("skipped        %s: below the minimum cache of %s "
			       "(%u x the largest expert)\n",
			       labels[i], fmt_ram(s->min_cache, b1, sizeof(b1)),
			       s->k);
	printf("\n%-22s %-27s %-14s %-13s %s\n", "", "hit rate", "min+prefetch",
	       "GB/token", "tok/s, min");
	printf("%10s %10s  %6s %6s %6s %6s  %6s %6s  %6s %6s  %5s %5s\n",
	       "cache", "experts", "lru", "lfu", "fifo", "min", "hit", "ahead",
	       "lru", "min", "7GB/s", "14GB/s");
	for (size_t i = 0; i < n_rows; i++) {
		const struct ms_sim_result *r[N_VARIANTS];
		for (int v = 0; v < N_VARIANTS; v++)
			r[v] = &jobs[i * N_VARIANTS + v].r;
		char sz[32];
		if (rows[i] >= (1ull << 30))
			snprintf(sz, sizeof(sz), "%.2fG", (double)rows[i] / (1ull << 30));
		else
			snprintf(sz, sizeof(sz), "%.2fM", (double)rows[i] / (1ull << 20));
		printf("%10s %9.1f%% ", sz,
		       100.0 * (double)rows[i] / (double)s->all_bytes);
		for (int v = 0; v < 4; v++)
			printf(" %5.1f%%", 100 * ms_sim_hit_rate(r[v]));
		printf("  %5.1f%% %5.1f%%", 100 * ms_sim_hit_rate(r[4]),
		       100 * ms_sim_prefetch_rate(r[4]));
		double t = r[0]->tokens ? (double)r[0]->tokens : 1;
		double lru = (double)(r[0]->bytes_demand + r[0]->bytes_prefetch) / t;
		double min = (double)(r[3]->bytes_demand + r[3]->bytes_prefetch) / t;
		printf("  %6.3f %6.3f", lru / 1e9, min / 1e9);
		if (min > 0)
			printf("  %5.1f %6.1f\n", 7e9 / min, 14e9 / min);
		else
			printf("  %5s %6s\n", "inf", "inf");
	}
	printf("\nhit rate: accesses that found the expert resident; "
	       "min+prefetch: hit = resident\nanyway, ahead = read by the "
	       "oracle next-step prefetch off the critical path.\n"
	       "GB/token: disk reads per token (GB = 1e9 bytes); tok/s: "
	       "the bound those reads set.\n");
out:
	free(rows);
	free(jobs);
	return rc;
}

/* ---- the command -------------------------------------------------------------- */

static int split_sizes(char *list, char ***out, size_t *n)
{
	size_t cap = 1;
	for (const char *p = list; *p; p++)
		cap += *p == ',';
	char **v = calloc(cap, sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t i = 0;
	for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save))
		v[i++] = tok;
	*out = v;
	*n = i;
	return 0;
}

int cmd_simulate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "trace", required_argument, 0, 't' },
		{ "model", required_argument, 0, 'm' },
		{ "cache-size", required_argument, 0, 'c' },
		{ "policy", required_argument, 0, 'p' },
		{ "prefetch", no_argument, 0, 'P' },
		{ "sweep", no_argument, 0, 'S' },
		{ "sizes", required_argument, 0, 'z' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *trace_path = NULL, *model_path = NULL, *size_arg = NULL;
	const char *policy_arg = NULL;
	char *sizes_arg = NULL;
	bool prefetch = false, do_sweep = false, json = false;
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "t:m:c:p:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': trace_path = optarg; break;
		case 'm': model_path = optarg; break;
		case 'c': size_arg = optarg; break;
		case 'p': policy_arg = optarg; break;
		case 'P': prefetch = true; break;
		case 'S': do_sweep = true; break;
		case 'z': sizes_arg = optarg; do_sweep = true; break;
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default: return bad_usage();
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s' (the trace and model "
				"go with --trace and --model)",
			   argv[optind]);
		return bad_usage();
	}
	if (!trace_path || !model_path) {
		tool_error(CMD, "%s", !trace_path ? "no --trace T given"
						  : "no --model M given");
		return bad_usage();
	}
	int policy = MS_SIM_LRU;
	if (policy_arg && (policy = ms_sim_policy_from_name(policy_arg)) < 0) {
		tool_error(CMD, "unknown policy '%s': use lru, lfu, fifo or min",
			   policy_arg);
		return EXIT_USAGE;
	}
	if (do_sweep && (size_arg || policy_arg || prefetch)) {
		tool_error(CMD, "--sweep runs every policy (and min+prefetch) at "
				"every size: drop %s (use --sizes for sizes)",
			   size_arg ? "--cache-size" : policy_arg ? "--policy"
								  : "--prefetch");
		return EXIT_USAGE;
	}
	if (!do_sweep && !size_arg) {
		tool_error(CMD, "no --cache-size S given (e.g. 32G or 25%%), "
				"or --sweep for a table of sizes");
		return bad_usage();
	}

	/* Sizes: checked for form now (exit 2 before any file is read), and
	 * resolved once the model says what 100% is. */
	char **size_strs = NULL;
	size_t n_sizes = 0;
	if (sizes_arg) {
		if (split_sizes(sizes_arg, &size_strs, &n_sizes)) {
			tool_error(CMD, "out of memory");
			return 1;
		}
		if (!n_sizes) {
			tool_error(CMD, "--sizes '%s' lists no size", sizes_arg);
			free(size_strs);
			return EXIT_USAGE;
		}
	} else if (size_arg) {
		size_strs = calloc(1, sizeof(*size_strs));
		if (size_strs)
			size_strs[n_sizes++] = (char *)size_arg;
	} else {
		size_strs = calloc(N_DEFAULT, sizeof(*size_strs));
		for (size_t i = 0; size_strs && i < N_DEFAULT; i++) {
			char buf[16];
			snprintf(buf, sizeof(buf), "%g%%", default_pct[i]);
			size_strs[n_sizes++] = strdup(buf);
		}
	}
	if (!size_strs) {
		tool_error(CMD, "out of memory");
		return 1;
	}
	const bool own_strs = !sizes_arg && !size_arg;
	uint64_t *sizes = calloc(n_sizes, sizeof(*sizes));
	struct ms_model *m = NULL;
	struct ms_trace *t = NULL;
	struct ms_sim *s = NULL;
	uint64_t *lb = NULL;
	struct ms_err err = { 0 };
	int rc = 0;
	if (!sizes) {
		tool_error(CMD, "out of memory");
		rc = 1;
		goto out;
	}
	for (size_t i = 0; i < n_sizes; i++) {
		uint64_t v;
		if (!size_strs[i]) {
			tool_error(CMD, "out of memory");
			rc = 1;
			goto out;
		}
		int e = ms_sim_parse_size(size_strs[i], 1ull << 50, &v);
		if (e) {
			tool_error(CMD,
				   "cache size '%s' %s: use bytes with K/M/G/T "
				   "(32G, 1.5G, 512M) or a share of the experts "
				   "(25%%)",
				   size_strs[i],
				   e == -ERANGE ? "is too large" : "is not a size");
			rc = EXIT_USAGE;
			goto out;
		}
	}

	if (ms_model_open(&m, model_path, &err)) {
		tool_error(CMD, "%s", err.msg);
		rc = 1;
		goto out;
	}
	if (!m->n_expert || !m->n_layers_run) {
		tool_error(CMD, "%s is not a Mixture-of-Experts model: no experts "
				"to cache",
			   model_path);
		rc = 1;
		goto out;
	}
	if (ms_trace_load(&t, trace_path, &err)) {
		tool_error(CMD, "%s", err.msg);
		rc = 1;
		goto out;
	}
	if (ms_sim_layer_bytes(t, m, &lb, &err)) {
		tool_error(CMD, "%s does not fit %s: %s", trace_path, model_path,
			   err.msg);
		rc = 1;
		goto out;
	}
	if (ms_sim_init(&s, t, lb, &err)) {
		tool_error(CMD, "%s: %s", trace_path, err.msg);
		rc = 1;
		goto out;
	}
	ms_trace_free(t);
	t = NULL;
	for (size_t i = 0; i < n_sizes; i++)
		if (ms_sim_parse_size(size_strs[i], s->all_bytes, &sizes[i])) {
			tool_error(CMD, "cache size '%s' does not fit in 64 bits "
					"(or is 0) for this model",
				   size_strs[i]);
			rc = EXIT_USAGE;
			goto out;
		}

	struct ctx cx = {
		.trace_path = trace_path,
		.model_path = model_path,
		.s = s,
		.bytes_per_token0 = (uint64_t)s->k * (s->all_bytes / s->n_expert),
	};
	if (do_sweep) {
		rc = sweep(&cx, sizes, size_strs, n_sizes, json);
		goto out;
	}

	char b1[32];
	struct ms_sim_opts o = { .policy = (enum ms_sim_policy)policy,
				 .cache_bytes = sizes[0],
				 .prefetch = prefetch };
	if (o.cache_bytes < s->min_cache) {
		tool_error(CMD,
			   "--cache-size %s (%llu bytes) is below the minimum of "
			   "%llu bytes (%s): a step pins %u experts of up to "
			   "%llu bytes",
			   size_arg, (unsigned long long)o.cache_bytes,
			   (unsigned long long)s->min_cache,
			   fmt_ram(s->min_cache, b1, sizeof(b1)), s->k,
			   (unsigned long long)(s->min_cache / s->k));
		rc = EXIT_USAGE;
		goto out;
	}
	struct ms_sim_result r;
	if (ms_sim_run(s, &o, &r, &err)) {
		tool_error(CMD, "%s", err.msg);
		rc = 1;
		goto out;
	}
	if (json) {
		cJSON *jo = cJSON_CreateObject();
		json_head(jo, &cx);
		cJSON_AddStringToObject(jo, "policy", ms_sim_policy_name(o.policy));
		cJSON_AddBoolToObject(jo, "prefetch", o.prefetch);
		JNUM(jo, "cache_bytes", o.cache_bytes);
		JNUM(jo, "cache_fraction",
		     (double)o.cache_bytes / (double)s->all_bytes);
		json_result(jo, &r, o.prefetch);
		if (print_json(jo)) {
			tool_error(CMD, "out of memory building JSON");
			rc = 1;
		}
	} else {
		print_result(&cx, &o, &r);
	}
out:
	if (!rc && (fflush(stdout) || ferror(stdout))) {
		tool_error(CMD, "writing the output failed");
		rc = 1;
	}
	if (own_strs)
		for (size_t i = 0; i < n_sizes; i++)
			free(size_strs[i]);
	free(size_strs);
	free(sizes);
	free(lb);
	ms_sim_free(s);
	ms_trace_free(t);
	ms_model_free(m);
	return rc;
}
