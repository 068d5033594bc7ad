/*
 * t_replay - `moestream replay` and `moestream bench rpc` against a real
 * moestreamd on a fresh socket (tests/daemontest.h: a private config, a
 * watchdog that kills it if the test hangs, killed at exit whatever
 * happens). bench rpc --model starts its own daemon (bench_daemon_start).
 *
 * On the tiny model with a generated trace:
 *  - replay --json: every key there; tokens, acquires = tokens x layers,
 *    experts = acquires x k; the daemon's hits + misses = experts (it has
 *    no other client and prefetch is off);
 *  - --touch: touched bytes = experts x bytes per expert, and the sum of
 *    the bytes equals the sum of the file's bytes at the extents of every
 *    (token, layer, expert) of the trace, computed here from the model;
 *  - --tokens, --prefetch-hint, --compute-ms: the counts and the time;
 *  - the table names tok/s and the hit rate;
 *  - a trace of another model: exit 1 and one line on stderr; bad usage 2;
 *  - replay_run in-process with compute and use callbacks (the end-to-end
 *    benchmark's way in): each called tokens x layers times with the
 *    trace's experts and weights;
 *  - bench rpc --model tiny --seconds 1 --clients 4 --json: runs, its keys
 *    are there, no misses while measuring.
 * Until `replay` and `bench rpc` are wired into the moestream command, the
 * test program runs them itself (it doubles as the command).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../tools/bench_rpc.h"
#include "../tools/replay.h"
#include "../tools/trace.h"
#include "daemontest.h"
#include "moestream/model.h"
#include "testutil.h"

#define TOKENS 30

static struct dt_daemon daemon_;
static char tool_replay[4200], tool_bench[4200];

/* `moestream replay` if the command has it, else this program. */
static void find_tools(void)
{
	char cmd[4400];
	const char *ms = t_build_path("moestream");
	snprintf(cmd, sizeof(cmd), "%s replay --help >/dev/null 2>&1", ms);
	if (t_run(cmd, NULL, 0) == 0)
		snprintf(tool_replay, sizeof(tool_replay), "%s replay", ms);
	else
		snprintf(tool_replay, sizeof(tool_replay), "/proc/%d/exe replay",
			 (int)getpid());
	snprintf(cmd, sizeof(cmd), "%s bench rpc --help >/dev/null 2>&1", ms);
	if (t_run(cmd, NULL, 0) == 0)
		snprintf(tool_bench, sizeof(tool_bench), "%s bench rpc", ms);
	else
		snprintf(tool_bench, sizeof(tool_bench), "/proc/%d/exe bench rpc",
			 (int)getpid());
	printf("replay: %s\nbench rpc: %s\n", tool_replay, tool_bench);
}

static void sh(const char *cmd)
{
	char *out = NULL;
	int rc = t_run(cmd, &out, 1 << 16);
	if (rc)
		t_fatal("`%s` exited %d:\n%s", cmd, rc, out ? out : "");
	free(out);
}

static double jnum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (!cJSON_IsNumber(v)) {
		t_fail_at(__FILE__, __LINE__, "JSON key '%s' missing or not a number", k);
		return NAN;
	}
	return v->valuedouble;
}

/* Runs a replay with --json; returns the parsed object (or NULL). */
static cJSON *replay_json(const char *sock, const char *trace, const char *extra)
{
	char cmd[9000], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s --trace %s --socket %s --json %s", tool_replay,
		 trace, sock, extra);
	int rc = t_run(cmd, &out, 1 << 20);
	T_CHECK(rc == 0, "`%s` exited %d", cmd, rc);
	cJSON *o = out ? cJSON_Parse(out) : NULL;
	T_CHECK(o != NULL, "`%s` printed no JSON: %s", cmd, out ? out : "(nothing)");
	free(out);
	return o;
}

/* The sum of the file's bytes of every expert the first n tokens choose. */
static uint64_t expected_sum(const char *model, const struct ms_trace *t,
			     uint32_t n, uint64_t *bytes)
{
	struct ms_model *m = NULL;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, model, &err))
		t_fatal("%s", err.msg);
	uint64_t *per = calloc((size_t)m->n_layers * m->n_expert, sizeof(*per));
	uint64_t *len = calloc((size_t)m->n_layers * m->n_expert, sizeof(*len));
	if (!per || !len)
		t_fatal("out of memory");
	for (uint32_t l = 0; l < m->n_layers; l++)
		for (uint32_t e = 0; e < m->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			for (uint32_t j = 0; j < m->layers[l].n_proj; j++) {
				uint8_t *buf = malloc(x[j].bytes);
				if (!buf ||
				    pread(m->shards[x[j].shard]->fd, buf, x[j].bytes,
					  (off_t)x[j].offset) != (ssize_t)x[j].bytes)
					t_fatal("reading %s at %llu failed", model,
						(unsigned long long)x[j].offset);
				for (uint64_t i = 0; i < x[j].bytes; i++)
					per[l * m->n_expert + e] += buf[i];
				len[l * m->n_expert + e] += x[j].bytes;
				free(buf);
			}
		}
	uint64_t sum = 0;
	*bytes = 0;
	for (uint32_t tok = 0; tok < n; tok++)
		for (uint32_t j = 0; j < t->n_layers; j++) {
			int32_t l = m->block_layer[t->blocks[j]];
			const uint16_t *ex = ms_trace_experts(t, tok, j);
			for (uint32_t i = 0; i < t->k; i++) {
				sum += per[(uint32_t)l * m->n_expert + ex[i]];
				*bytes += len[(uint32_t)l * m->n_expert + ex[i]];
			}
		}
	free(per);
	free(len);
	ms_model_free(m);
	return sum;
}

struct cb_state {
	const struct ms_trace *t;
	uint64_t computes, uses, bad;
};

static int cb_compute(void *ctx, uint32_t token, uint32_t layer)
{
	struct cb_state *s = ctx;
	if (token >= s->t->n_tokens || layer >= s->t->n_layers)
		s->bad++;
	s->computes++;
	return 0;
}

static int cb_use(void *ctx, uint32_t token, uint32_t layer,
		  const struct ms_client_expert *got, const float *w, unsigned k)
{
	struct cb_state *s = ctx;
	const uint16_t *ex = ms_trace_experts(s->t, token, layer);
	if (k != s->t->k || w != ms_trace_weights(s->t, token, layer))
		s->bad++;
	for (unsigned i = 0; i < k; i++)
		if (got[i].status || got[i].expert != ex[i] ||
		    got[i].block != s->t->blocks[layer] || !got[i].n_proj ||
		    !got[i].proj[0])
			s->bad++;
	s->uses++;
	return 0;
}

static void test_replay(const char *dir, const char *model, const char *trace,
			const char *other_trace)
{
	const char *sock = daemon_.sock;
	struct ms_err err = { 0 };
	struct ms_trace *t = NULL;
	if (ms_trace_load(&t, trace, &err))
		t_fatal("%s", err.msg);
	uint64_t acq = (uint64_t)TOKENS * t->n_layers;

	/* Plain. */
	cJSON *o = replay_json(sock, trace, "");
	static const char *const keys[] = {
		"tokens", "layers", "k", "seconds", "tokps", "acquires", "experts",
		"lat_mean_us", "lat_p50_us", "lat_p90_us", "lat_p99_us", "lat_max_us",
		"stall_s", "hits", "misses", "hit_rate", "bytes_read", "read_gbps",
		"evictions", "touched_bytes", "touch_sum", "prefetch_hints",
	};
	if (o) {
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			jnum(o, keys[i]);
		T_EQ_U64(jnum(o, "tokens"), TOKENS);
		T_EQ_U64(jnum(o, "layers"), t->n_layers);
		T_EQ_U64(jnum(o, "acquires"), acq);
		T_EQ_U64(jnum(o, "experts"), acq * t->k);
		T_EQ_U64(jnum(o, "hits") + jnum(o, "misses"), acq * t->k);
		T_CHECK(cJSON_IsTrue(cJSON_GetObjectItem(o, "have_daemon_stats")),
			"have_daemon_stats is not true");
		T_CHECK(jnum(o, "tokps") > 0, "tokps %g", jnum(o, "tokps"));
		T_CHECK(jnum(o, "lat_p50_us") > 0 &&
				jnum(o, "lat_p50_us") <= jnum(o, "lat_p99_us") &&
				jnum(o, "lat_p99_us") <= jnum(o, "lat_max_us"),
			"latencies out of order: p50 %g p99 %g max %g",
			jnum(o, "lat_p50_us"), jnum(o, "lat_p99_us"),
			jnum(o, "lat_max_us"));
		T_EQ_U64(jnum(o, "touched_bytes"), 0);
		printf("replay: %.0f tok/s, hit rate %.3f, p50 %.1f us\n",
		       jnum(o, "tokps"), jnum(o, "hit_rate"), jnum(o, "lat_p50_us"));
		cJSON_Delete(o);
	}

	/* --touch: the bytes are the file's. */
	o = replay_json(sock, trace, "--touch");
	if (o) {
		uint64_t bytes, sum = expected_sum(model, t, TOKENS, &bytes);
		T_EQ_U64(jnum(o, "acquires"), acq);
		T_EQ_U64(jnum(o, "touched_bytes"), bytes);
		T_EQ_U64(jnum(o, "touch_sum"), sum);
		/* Everything was loaded by the first replay: all hits now. */
		T_EQ_U64(jnum(o, "misses"), 0);
		T_EQ_U64(jnum(o, "hits"), acq * t->k);
		cJSON_Delete(o);
	}

	/* --tokens, --prefetch-hint, --compute-ms. */
	o = replay_json(sock, trace, "--tokens 10 --prefetch-hint --compute-ms 1");
	if (o) {
		T_EQ_U64(jnum(o, "tokens"), 10);
		T_EQ_U64(jnum(o, "acquires"), 10ull * t->n_layers);
		T_EQ_U64(jnum(o, "prefetch_hints"), 10ull * t->n_layers - 1);
		T_CHECK(jnum(o, "compute_s") >= 0.001 * 10 * t->n_layers * 0.99,
			"compute_s %g < %u layers x 1 ms", jnum(o, "compute_s"),
			10 * t->n_layers);
		T_CHECK(jnum(o, "seconds") >= jnum(o, "compute_s"),
			"seconds %g < compute_s %g", jnum(o, "seconds"),
			jnum(o, "compute_s"));
		cJSON_Delete(o);
	}

	/* The table. */
	char cmd[9000], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s --trace %s --socket %s --tokens 5", tool_replay,
		 trace, sock);
	int rc = t_run(cmd, &out, 1 << 16);
	T_CHECK(rc == 0, "`%s` exited %d", cmd, rc);
	T_CHECK(out && strstr(out, "tok/s") && strstr(out, "hit rate") &&
			strstr(out, "acquire p99"),
		"the table lacks tok/s, hit rate or acquire p99:\n%s", out ? out : "");
	free(out);

	/* A trace of another model: exit 1, one line. */
	snprintf(cmd, sizeof(cmd), "%s --trace %s --socket %s 2>&1 >/dev/null",
		 tool_replay, other_trace, sock);
	out = NULL;
	rc = t_run(cmd, &out, 1 << 16);
	T_CHECK(rc == 1, "a trace of another model: exit %d, expected 1", rc);
	size_t nl = 0;
	for (const char *p = out ? out : ""; *p; p++)
		nl += *p == '\n';
	T_CHECK(out && nl == 1 && strstr(out, "experts"),
		"a trace of another model: expected one line naming the experts, "
		"got:\n%s", out ? out : "");
	free(out);

	/* Bad usage. */
	snprintf(cmd, sizeof(cmd), "%s --socket %s 2>/dev/null", tool_replay, sock);
	T_CHECK((rc = t_run(cmd, NULL, 0)) == 2, "no --trace: exit %d, expected 2", rc);
	snprintf(cmd, sizeof(cmd), "%s --trace %s --socket %s --compute-ms -1 "
				   "2>/dev/null", tool_replay, trace, sock);
	T_CHECK((rc = t_run(cmd, NULL, 0)) == 2, "--compute-ms -1: exit %d, expected 2",
		rc);
	snprintf(cmd, sizeof(cmd), "%s --trace %s/nonexistent.trace --socket %s "
				   "2>/dev/null", tool_replay, dir, sock);
	T_CHECK((rc = t_run(cmd, NULL, 0)) == 1, "a missing trace: exit %d, expected 1",
		rc);

	/* In-process, with the callbacks. */
	struct ms_client *c = NULL;
	if (ms_client_connect(&c, sock, "t_replay", &err))
		t_fatal("%s", err.msg);
	/* the arena mapped on the 2 MiB grid (its huge pages one entry each:
	 * t_arena) */
	uint64_t alen = 0;
	const void *abase = ms_client_arena(c, &alen);
	T_CHECK(abase && alen && ((uintptr_t)abase & (MS_HUGE_2M - 1)) == 0,
		"the client's arena view %p (%llu bytes) is not 2 MiB-aligned", abase,
		(unsigned long long)alen);
	struct cb_state st = { .t = t };
	struct replay_opts ro = { .tokens = 7, .compute = cb_compute, .use = cb_use,
				  .ctx = &st };
	struct replay_result r;
	rc = replay_run(c, t, &ro, &r, &err);
	T_CHECK(rc == 0, "replay_run: %d %s", rc, err.msg);
	T_EQ_U64(r.tokens, 7);
	T_EQ_U64(r.acquires, 7ull * t->n_layers);
	T_EQ_U64(st.computes, 7ull * t->n_layers);
	T_EQ_U64(st.uses, 7ull * t->n_layers);
	T_EQ_U64(st.bad, 0);
	T_CHECK(r.have_stats, "replay_run: no daemon stats");

	/* replay_check refuses the other trace through the API too. */
	struct ms_trace *ot = NULL;
	if (ms_trace_load(&ot, other_trace, &err))
		t_fatal("%s", err.msg);
	rc = replay_run(c, ot, &ro, &r, &err);
	T_CHECK(rc == -EINVAL && *err.msg, "replay_run of another model's trace: %d",
		rc);
	ms_trace_free(ot);
	ms_client_close(c);
	ms_trace_free(t);
}

static void test_bench(const char *model)
{
	char cmd[9000], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s --model %s --seconds 1 --clients 4 --json",
		 tool_bench, model);
	int rc = t_run(cmd, &out, 1 << 20);
	T_CHECK(rc == 0, "`%s` exited %d", cmd, rc);
	cJSON *o = out ? cJSON_Parse(out) : NULL;
	T_CHECK(o != NULL, "bench rpc printed no JSON: %s", out ? out : "(nothing)");
	if (o) {
		static const char *const keys[] = {
			"rtt_p50_us", "rtt_p90_us", "rtt_p99_us", "rtt_p999_us",
			"ping_p50_us", "ping_p99_us", "pairs_per_s", "pairs", "clients",
			"load_p99_us", "misses_during",
		};
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			jnum(o, keys[i]);
		T_EQ_U64(jnum(o, "clients"), 4);
		T_CHECK(jnum(o, "pairs_per_s") > 0 && jnum(o, "rtt_p50_us") > 0 &&
				jnum(o, "ping_p99_us") > 0,
			"zero figures: pairs/s %g rtt p50 %g ping p99 %g",
			jnum(o, "pairs_per_s"), jnum(o, "rtt_p50_us"),
			jnum(o, "ping_p99_us"));
		T_EQ_U64(jnum(o, "misses_during"), 0);
		printf("bench rpc: rtt p50 %.1f p99 %.1f us, ping p99 %.1f us, %.0f "
		       "pairs/s (4 clients)\n",
		       jnum(o, "rtt_p50_us"), jnum(o, "rtt_p99_us"),
		       jnum(o, "ping_p99_us"), jnum(o, "pairs_per_s"));
		cJSON_Delete(o);
	}
	free(out);
	/* Bad usage. */
	snprintf(cmd, sizeof(cmd), "%s --model %s --clients 0 2>/dev/null", tool_bench,
		 model);
	T_CHECK((rc = t_run(cmd, NULL, 0)) == 2, "--clients 0: exit %d, expected 2", rc);
}

int main(int argc, char **argv)
{
	/* The test doubles as the command until moestream has it. */
	if (argc >= 2 && !strcmp(argv[1], "replay"))
		return cmd_replay(argc - 1, argv + 1);
	if (argc >= 3 && !strcmp(argv[1], "bench") && !strcmp(argv[2], "rpc"))
		return bench_rpc_main(argc - 2, argv + 2);

	dt_watchdog(240, "t_replay");
	const char *dir = t_tmpdir();
	const char *ms = t_build_path("moestream");
	const char *model = dt_model("tiny.gguf", "--preset tiny");
	const char *other = dt_model("other.gguf", "--layers 4 --experts 8 --used 2 "
				     "--embd 256 --ff 256 --types q4_0,q4_0,q4_0");
	char trace[600], other_trace[600], cmd[4000];
	snprintf(trace, sizeof(trace), "%s/tiny.trace", dir);
	snprintf(other_trace, sizeof(other_trace), "%s/other.trace", dir);
	snprintf(cmd, sizeof(cmd), "%s trace gen --model %s --tokens %d -o %s >/dev/null",
		 ms, model, TOKENS, trace);
	sh(cmd);
	snprintf(cmd, sizeof(cmd), "%s trace gen --model %s --tokens 5 -o %s >/dev/null",
		 ms, other, other_trace);
	sh(cmd);
	find_tools();

	/* Prefetch off: the daemon's hits + misses are then our acquires. */
	if (dt_start(&daemon_, "replay", model, "[prefetch]\npolicy = none\n"))
		t_fatal("starting moestreamd failed (its log is above)");
	printf("moestreamd pid %d on %s\n", (int)daemon_.pid, daemon_.sock);

	test_replay(dir, model, trace, other_trace);

	int rc = dt_stop(&daemon_);
	T_CHECK(rc == 0, "stopping moestreamd: exit %d, expected 0", rc);
	if (rc)
		dt_daemon_dump_log(&daemon_, 20);

	dt_watchdog(120, "t_replay: bench rpc");
	setenv("MOESTREAMD", t_build_path("moestreamd"), 1);
	test_bench(model);
	return t_done();
}
