/*
 * replay.c - `moestream replay`: a routing trace through moestreamd, as an
 * engine would send it (replay.h says the per-layer steps).
 *
 * The core, replay_run, is shared with the end-to-end benchmark, so it
 * prints nothing: progress goes through a callback and the figures come back
 * in a struct. What it measures on the client side is the latency of each
 * ACQUIRE (request sent to the last of its k experts ready): that is the
 * engine's stall, hits and misses alike. The daemon's side (hits, misses,
 * bytes read) is the difference of two STATS answers around the loop.
 *
 * The compute time is spent by sleeping and then spinning the last 200 us:
 * nanosleep alone overshoots by 50-100 us, which at 89 layers a token would
 * be several ms of fake compute; spinning alone would steal a core from the
 * daemon on a small machine. An engine waiting on its GPU does much the same.
 *
 * --touch sums the bytes (SWAR, 8 at a time): every byte of every expert
 * crosses the memory bus once, as a CPU FFN or a copy to the GPU would make
 * it, and the sum is a cheap check that the bytes are the file's.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "replay.h"
#include "tools.h"

#define CMD "replay"

uint64_t replay_sum_bytes(const void *p, uint64_t len)
{
	const uint8_t *b = p;
	uint64_t sum = 0;
	const uint64_t m = 0x00ff00ff00ff00ffull;
	/* Four 16-bit lanes take 2 x 255 a word: flush before 128 words. */
	while (len >= 8) {
		uint64_t n = len / 8 > 120 ? 120 : len / 8, acc = 0;
		for (uint64_t i = 0; i < n; i++) {
			uint64_t w;
			memcpy(&w, b + 8 * i, 8);
			acc += (w & m) + ((w >> 8) & m);
		}
		sum += (acc & 0xffff) + ((acc >> 16) & 0xffff) +
		       ((acc >> 32) & 0xffff) + (acc >> 48);
		b += 8 * n;
		len -= 8 * n;
	}
	while (len--)
		sum += *b++;
	return sum;
}

/* ---- the daemon's counters ----------------------------------------------- */

static uint64_t jnum(const cJSON *o, const char *k, bool *ok)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0)) {
		*ok = false;
		return 0;
	}
	return (uint64_t)v->valuedouble;
}

int replay_read_counters(struct ms_client *c, struct replay_counters *k,
			 int timeout_ms, struct ms_err *err)
{
	char *json = NULL;
	memset(k, 0, sizeof(*k));
	int rc = ms_client_stats(c, &json, timeout_ms);
	if (rc)
		return ms_err_set(err, rc, "STATS failed: %s", strerror(-rc));
	cJSON *o = cJSON_Parse(json);
	free(json);
	if (!o)
		return ms_err_set(err, -EBADMSG, "the daemon's STATS are not JSON");
	bool ok = true;
	k->hits = jnum(o, "hits", &ok);
	k->misses = jnum(o, "misses", &ok);
	k->bytes_read = jnum(o, "bytes_read", &ok);
	k->evictions = jnum(o, "evictions", &ok);
	k->prefetch_issued = jnum(o, "prefetch_issued", &ok);
	k->prefetch_used = jnum(o, "prefetch_used", &ok);
	k->prefetch_wasted_bytes = jnum(o, "prefetch_wasted_bytes", &ok);
	k->acquires = jnum(o, "acquires", &ok);
	k->io_busy_ns = jnum(o, "io_busy_ns", &ok);
	cJSON_Delete(o);
	if (!ok)
		return ms_err_set(err, -EBADMSG, "the daemon's STATS lack a counter "
						 "(hits, misses, bytes_read, ...)");
	return 0;
}

static uint64_t delta(uint64_t a, uint64_t b)
{
	return b >= a ? b - a : 0;
}

/* ---- the trace against the model --------------------------------------- */

int replay_check(const struct ms_client *c, const struct ms_trace *t,
		 struct ms_err *err)
{
	const struct ms_client_model *m = ms_client_model(c);
	if (t->n_expert != m->n_expert || t->k != m->n_expert_used)
		return ms_err_set(err, -EINVAL,
				  "the trace was made for a model with %u experts (%u "
				  "a token), the daemon serves %s with %u (%u a token)",
				  t->n_expert, t->k, m->arch, m->n_expert,
				  m->n_expert_used);
	uint32_t run = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		run += !m->layers[l].nextn;
	if (t->n_layers != run)
		return ms_err_set(err, -EINVAL,
				  "the trace has %u MoE layers a token, the daemon's "
				  "%s model runs %u",
				  t->n_layers, m->arch, run);
	for (uint32_t l = 0, j = 0; l < m->n_layers; l++) {
		if (m->layers[l].nextn)
			continue;
		if (t->blocks[j] != m->layers[l].block)
			return ms_err_set(err, -EINVAL,
					  "the trace's MoE layer %u is blk.%u, the "
					  "daemon's is blk.%u: a trace of another model",
					  j, t->blocks[j], m->layers[l].block);
		j++;
	}
	if (strcmp(t->arch, m->arch))
		return ms_err_set(err, -EINVAL,
				  "the trace was made for architecture '%s', the "
				  "daemon serves '%s'",
				  t->arch, m->arch);
	return 0;
}

/* ---- the replay ---------------------------------------------------------- */

static void fill_stats(struct replay_result *r, const struct replay_counters *a,
		       const struct replay_counters *b)
{
	r->hits = delta(a->hits, b->hits);
	r->misses = delta(a->misses, b->misses);
	r->bytes_read = delta(a->bytes_read, b->bytes_read);
	r->io_busy_s = (double)delta(a->io_busy_ns, b->io_busy_ns) / 1e9;
	r->evictions = delta(a->evictions, b->evictions);
	r->prefetch_issued = delta(a->prefetch_issued, b->prefetch_issued);
	r->prefetch_used = delta(a->prefetch_used, b->prefetch_used);
	r->prefetch_wasted_bytes =
		delta(a->prefetch_wasted_bytes, b->prefetch_wasted_bytes);
	r->hit_rate = r->hits + r->misses
			      ? (double)r->hits / (double)(r->hits + r->misses)
			      : 0.0;
}

int replay_run(struct ms_client *c, const struct ms_trace *t,
	       const struct replay_opts *o, struct replay_result *r,
	       struct ms_err *err)
{
	memset(r, 0, sizeof(*r));
	int rc = replay_check(c, t, err);
	if (rc)
		return rc;
	if (!(o->compute_ms >= 0) || !isfinite(o->compute_ms))
		return ms_err_set(err, -EINVAL, "compute time %g ms is not >= 0",
				  o->compute_ms);
	uint32_t n_tok = o->tokens && o->tokens < t->n_tokens ? o->tokens
							      : t->n_tokens;
	uint32_t L = t->n_layers, k = t->k;
	uint64_t n_acq = (uint64_t)n_tok * L;
	int timeout = o->acquire_timeout_ms ? o->acquire_timeout_ms : 60000;
	double prog_every = o->progress_every_s > 0 ? o->progress_every_s : 0.2;
	r->layers = L;
	r->k = k;
	double *lat = malloc((n_acq ? n_acq : 1) * sizeof(*lat));
	struct ms_client_expert *got = calloc(k ? k : 1, sizeof(*got));
	uint16_t *ready = calloc(k ? k : 1, sizeof(*ready));
	if (!lat || !got || !ready) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for %llu latencies",
				(unsigned long long)n_acq);
		goto out;
	}
	struct replay_counters k0, k1;
	struct ms_err serr = { 0 };
	bool have0 = !replay_read_counters(c, &k0, 10000, &serr);
	struct replay_progress pg = { .tokens_total = n_tok };
	double t0 = tool_now_s(), last_prog = t0, last_stats = t0;
	for (uint32_t tok = 0; tok < n_tok; tok++) {
		for (uint32_t l = 0; l < L; l++) {
			const uint16_t *ex = ms_trace_experts(t, tok, l);
			uint32_t block = t->blocks[l];
			if (o->prefetch_hint && (l + 1 < L || tok + 1 < n_tok)) {
				uint32_t nt = l + 1 < L ? tok : tok + 1;
				uint32_t nl = l + 1 < L ? l + 1 : 0;
				rc = ms_client_prefetch(c, t->blocks[nl],
							ms_trace_experts(t, nt, nl), NULL, k);
				if (rc) {
					ms_err_set(err, rc, "PREFETCH failed: %s",
						   strerror(-rc));
					goto done;
				}
				r->prefetch_hints++;
			}
			if (o->compute) {
				double c0 = tool_now_s();
				rc = o->compute(o->ctx, tok, l);
				r->compute_s += tool_now_s() - c0;
				if (rc) {
					ms_err_set(err, rc, "compute of token %u layer "
							    "%u failed: %s",
						   tok, l, strerror(-rc));
					goto done;
				}
			} else if (o->compute_ms > 0) {
				double c0 = tool_now_s();
				tool_wait_s(o->compute_ms * 1e-3);
				r->compute_s += tool_now_s() - c0;
			}
			double a0 = tool_now_s();
			rc = ms_client_acquire(c, block, ex, k, got, timeout);
			double dt = tool_now_s() - a0;
			lat[r->acquires++] = dt;
			r->stall_s += dt;
			if (rc) {
				unsigned n_ready = 0;
				for (unsigned i = 0; i < k; i++)
					if (!got[i].status)
						ready[n_ready++] = ex[i];
				if (n_ready && rc != -ETIMEDOUT)
					ms_client_release(c, block, ready, n_ready);
				const char *le = ms_client_last_error(c);
				ms_err_set(err, rc, "acquiring %u experts of blk.%u (token "
						    "%u) failed: %s%s%s",
					   k, block, tok, strerror(-rc), *le ? ": " : "", le);
				goto done;
			}
			r->experts += k;
			if (o->touch)
				for (unsigned i = 0; i < k; i++)
					for (uint32_t j = 0; j < got[i].n_proj; j++) {
						r->touch_sum += replay_sum_bytes(got[i].proj[j],
										 got[i].len[j]);
						r->touched_bytes += got[i].len[j];
					}
			if (o->use) {
				rc = o->use(o->ctx, tok, l, got, ms_trace_weights(t, tok, l),
					    k);
				if (rc) {
					ms_client_release(c, block, ex, k);
					ms_err_set(err, rc, "using the experts of token %u "
							    "blk.%u failed: %s",
						   tok, block, strerror(-rc));
					goto done;
				}
			}
			rc = ms_client_release(c, block, ex, k);
			if (rc) {
				ms_err_set(err, rc, "RELEASE failed: %s", strerror(-rc));
				goto done;
			}
		}
		r->tokens = tok + 1;
		double t1 = tool_now_s();
		if (o->stats_every_s > 0 && have0 && t1 - last_stats >= o->stats_every_s) {
			last_stats = t1;
			if (!replay_read_counters(c, &k1, 10000, &serr)) {
				struct replay_result tmp = { 0 };
				fill_stats(&tmp, &k0, &k1);
				pg.have_hit_rate = tmp.hits + tmp.misses > 0;
				pg.hit_rate = tmp.hit_rate;
			}
		}
		if (o->progress && (t1 - last_prog >= prog_every || tok + 1 == n_tok)) {
			last_prog = t1;
			pg.tokens_done = tok + 1;
			pg.seconds = t1 - t0;
			pg.tokps = pg.seconds > 0 ? pg.tokens_done / pg.seconds : 0;
			if (tok + 1 == n_tok && have0 &&
			    !replay_read_counters(c, &k1, 10000, &serr)) {
				struct replay_result tmp = { 0 };
				fill_stats(&tmp, &k0, &k1);
				pg.have_hit_rate = tmp.hits + tmp.misses > 0;
				pg.hit_rate = tmp.hit_rate;
			}
			o->progress(o->ctx, &pg);
		}
	}
	rc = 0;
done:
	r->seconds = tool_now_s() - t0;
	r->tokps = r->seconds > 0 ? r->tokens / r->seconds : 0;
	/* The releases are on the socket before this STATS: it counts them. */
	if (have0 && !replay_read_counters(c, &k1, 10000, &serr)) {
		r->have_stats = true;
		fill_stats(r, &k0, &k1);
		r->read_gbps = r->seconds > 0 ? (double)r->bytes_read / r->seconds / 1e9
					      : 0;
	}
	if (r->acquires) {
		qsort(lat, r->acquires, sizeof(*lat), tool_cmp_double);
		r->lat_mean_us = r->stall_s / (double)r->acquires * 1e6;
		r->lat_p50_us = tool_pct(lat, r->acquires, 0.50) * 1e6;
		r->lat_p90_us = tool_pct(lat, r->acquires, 0.90) * 1e6;
		r->lat_p99_us = tool_pct(lat, r->acquires, 0.99) * 1e6;
		r->lat_max_us = lat[r->acquires - 1] * 1e6;
	}
out:
	free(lat);
	free(got);
	free(ready);
	return rc;
}

/* ---- the command ----------------------------------------------------------- */

static const char usage_line[] =
	"usage: moestream replay --trace TRACE [--socket PATH] [-c FILE] "
	"[--tokens N]\n"
	"         [--compute-ms X] [--touch] [--prefetch-hint] [--json]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Replays a routing trace through a running moestreamd as an "
		"inference engine\nwould: per token, per MoE layer, optionally "
		"send a PREFETCH hint for the\nexperts the trace chooses at the "
		"next layer (an oracle hint), spend the\nhot-layer compute "
		"time, acquire the layer's k experts, optionally read every\n"
		"byte, release. Prints tokens/s, the acquire latency the client "
		"saw (mean,\np50, p99) and what the daemon did meanwhile (hits, "
		"misses, hit rate, bytes\nread, GB/s). The trace must be of the "
		"model the daemon serves.\n"
		"\n"
		"  --trace TRACE      the routing trace (`moestream trace gen`)\n"
		"  --socket PATH      the daemon's socket (default: the "
		"configuration's)\n"
		"  -c, --config FILE  the configuration to take the socket from "
		"(default\n"
		"                     /etc/moestream/moestream.conf)\n"
		"  --tokens N         replay the first N tokens (default: all)\n"
		"  --compute-ms X     hot-layer time per MoE layer, before its "
		"acquire\n"
		"                     (default 0; sleeps, then spins the last "
		"0.2 ms)\n"
		"  --touch            read every byte of every acquired expert\n"
		"  --prefetch-hint    PREFETCH the next layer's experts first "
		"(the daemon acts\n"
		"                     on it with [prefetch] policy = hint or "
		"auto)\n"
		"  --json             the results as JSON\n"
		"  -h, --help         this text\n"
		"\n"
		"A progress bar (tokens, tok/s, hit rate) is drawn on stderr when "
		"it is a\nterminal. The daemon's figures are the change of its "
		"counters over the\nreplay: other clients' work in that window "
		"counts too.\n"
		"\n"
		"example:\n"
		"  moestream trace gen --model glm.gguf --tokens 200 -o glm.trace\n"
		"  moestream replay --trace glm.trace --socket /tmp/ms.sock "
		"--touch\n"
		"\n"
		"exit: 0 ok; 1 no daemon, a trace of another model, or an acquire "
		"failed;\n2 bad usage\n",
		usage_line);
}

struct bar {
	bool drawn;
};

static void bar_draw(void *ctx, const struct replay_progress *p)
{
	struct bar *b = ctx;
	int w = 30;
	double frac = p->tokens_total ? (double)p->tokens_done / p->tokens_total : 1;
	int fill = (int)(frac * w);
	double eta = p->tokps > 0 ? (p->tokens_total - p->tokens_done) / p->tokps : 0;
	char hit[32] = "hit   --  ";
	if (p->have_hit_rate)
		snprintf(hit, sizeof(hit), "hit %5.1f%%", 100.0 * p->hit_rate);
	fprintf(stderr, "\r  replay [%.*s%*s] %u/%u tokens  %.1f tok/s  %s  ETA %3.0fs ",
		fill, "==============================", w - fill, "",
		p->tokens_done, p->tokens_total, p->tokps, hit, eta);
	if (p->tokens_done == p->tokens_total)
		fputc('\n', stderr);
	b->drawn = true;
}

static void print_json(const struct replay_result *r, const char *trace,
		       const struct replay_opts *o)
{
	cJSON *j = cJSON_CreateObject();
#define N(k, v) cJSON_AddNumberToObject(j, k, (double)(v))
	cJSON_AddStringToObject(j, "trace", trace);
	N("tokens", r->tokens);
	N("layers", r->layers);
	N("k", r->k);
	N("compute_ms", o->compute_ms);
	cJSON_AddBoolToObject(j, "touch", o->touch);
	cJSON_AddBoolToObject(j, "prefetch_hint", o->prefetch_hint);
	N("seconds", r->seconds);
	N("tokps", r->tokps);
	N("acquires", r->acquires);
	N("experts", r->experts);
	N("lat_mean_us", r->lat_mean_us);
	N("lat_p50_us", r->lat_p50_us);
	N("lat_p90_us", r->lat_p90_us);
	N("lat_p99_us", r->lat_p99_us);
	N("lat_max_us", r->lat_max_us);
	N("stall_s", r->stall_s);
	N("compute_s", r->compute_s);
	N("touched_bytes", r->touched_bytes);
	N("touch_sum", r->touch_sum);
	N("prefetch_hints", r->prefetch_hints);
	cJSON_AddBoolToObject(j, "have_daemon_stats", r->have_stats);
	N("hits", r->hits);
	N("misses", r->misses);
	N("hit_rate", r->hit_rate);
	N("bytes_read", r->bytes_read);
	N("read_gbps", r->read_gbps);
	N("evictions", r->evictions);
	N("prefetch_issued", r->prefetch_issued);
	N("prefetch_used", r->prefetch_used);
	N("prefetch_wasted_bytes", r->prefetch_wasted_bytes);
#undef N
	char *s = cJSON_Print(j);
	if (s)
		puts(s);
	free(s);
	cJSON_Delete(j);
}

static void print_table(const struct replay_result *r, const struct replay_opts *o)
{
	char b1[32], b2[32];
	printf("%-22s %14u\n", "tokens", r->tokens);
	printf("%-22s %14.2f\n", "tok/s", r->tokps);
	printf("%-22s %14.2f\n", "seconds", r->seconds);
	printf("%-22s %14s  (%s experts)\n", "acquires",
	       fmt_count(r->acquires, b1, sizeof(b1)),
	       fmt_count(r->experts, b2, sizeof(b2)));
	printf("%-22s %14.1f\n", "acquire mean (us)", r->lat_mean_us);
	printf("%-22s %14.1f\n", "acquire p50 (us)", r->lat_p50_us);
	printf("%-22s %14.1f\n", "acquire p99 (us)", r->lat_p99_us);
	printf("%-22s %14.1f\n", "acquire max (us)", r->lat_max_us);
	printf("%-22s %14.3f\n", "stall (s)", r->stall_s);
	if (o->compute_ms > 0)
		printf("%-22s %14.3f\n", "compute (s)", r->compute_s);
	if (o->touch)
		printf("%-22s %14s  (sum %llu)\n", "touched",
		       fmt_bytes(r->touched_bytes, b1, sizeof(b1)),
		       (unsigned long long)r->touch_sum);
	if (o->prefetch_hint)
		printf("%-22s %14llu\n", "prefetch hints sent",
		       (unsigned long long)r->prefetch_hints);
	if (!r->have_stats) {
		printf("daemon                 (no STATS answer)\n");
		return;
	}
	printf("daemon, over the replay:\n");
	printf("%-22s %14s\n", "  hits", fmt_count(r->hits, b1, sizeof(b1)));
	printf("%-22s %14s\n", "  misses", fmt_count(r->misses, b1, sizeof(b1)));
	printf("%-22s %13.2f%%\n", "  hit rate", 100.0 * r->hit_rate);
	printf("%-22s %14s\n", "  bytes read", fmt_bytes(r->bytes_read, b1, sizeof(b1)));
	printf("%-22s %14.3f\n", "  read GB/s", r->read_gbps);
	printf("%-22s %14s\n", "  evictions", fmt_count(r->evictions, b1, sizeof(b1)));
	if (o->prefetch_hint || r->prefetch_issued)
		printf("%-22s %14s used %s\n", "  prefetch issued",
		       fmt_count(r->prefetch_issued, b1, sizeof(b1)),
		       fmt_count(r->prefetch_used, b2, sizeof(b2)));
}

int cmd_replay(int argc, char **argv)
{
	enum { O_TOKENS = 1000, O_COMPUTE, O_TOUCH, O_HINT, O_JSON };
	static const struct option opts[] = {
		{ "trace", required_argument, 0, 't' },
		{ "socket", required_argument, 0, 's' },
		{ "config", required_argument, 0, 'c' },
		{ "tokens", required_argument, 0, O_TOKENS },
		{ "compute-ms", required_argument, 0, O_COMPUTE },
		{ "touch", no_argument, 0, O_TOUCH },
		{ "prefetch-hint", no_argument, 0, O_HINT },
		{ "json", no_argument, 0, O_JSON },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *trace_path = NULL, *sock = NULL, *conf = NULL;
	struct replay_opts o = { 0 };
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "t:s:c:h", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 't': trace_path = optarg; break;
		case 's': sock = optarg; break;
		case 'c': conf = optarg; break;
		case O_TOKENS: {
			errno = 0;
			unsigned long long v = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || !v || v > UINT32_MAX ||
			    *optarg == '-') {
				tool_error(CMD, "--tokens '%s': a count from 1 to %u",
					   optarg, UINT32_MAX);
				return EXIT_USAGE;
			}
			o.tokens = (uint32_t)v;
			break;
		}
		case O_COMPUTE:
			errno = 0;
			o.compute_ms = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(o.compute_ms >= 0) ||
			    o.compute_ms > 60000) {
				tool_error(CMD, "--compute-ms '%s': milliseconds from 0 "
						"to 60000",
					   optarg);
				return EXIT_USAGE;
			}
			break;
		case O_TOUCH: o.touch = true; break;
		case O_HINT: o.prefetch_hint = true; break;
		case O_JSON: json = true; break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s'", argv[optind]);
		return tool_bad_usage(usage_line);
	}
	if (!trace_path) {
		tool_error(CMD, "give the trace to replay: --trace TRACE");
		return tool_bad_usage(usage_line);
	}
	struct ms_err err = { 0 };
	struct ms_trace *t = NULL;
	if (ms_trace_load(&t, trace_path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	struct ms_client *cl = NULL;
	if (tool_connect(CMD, sock, conf, &cl)) {
		ms_trace_free(t);
		return 1;
	}
	if (replay_check(cl, t, &err)) {
		tool_error(CMD, "%s: %s", trace_path, err.msg);
		ms_client_close(cl);
		ms_trace_free(t);
		return 1;
	}
	struct bar bar = { 0 };
	if (!json && isatty(2)) {
		o.progress = bar_draw;
		o.ctx = &bar;
		o.stats_every_s = 1.0;
	}
	const struct ms_client_model *m = ms_client_model(cl);
	uint32_t n_tok = o.tokens && o.tokens < t->n_tokens ? o.tokens : t->n_tokens;
	if (!json)
		printf("replay: %u tokens x %u MoE layers x %u of %u experts (%s); "
		       "compute %g ms/layer%s%s\n",
		       n_tok, t->n_layers, t->k, t->n_expert, m->arch, o.compute_ms,
		       o.touch ? ", touch" : "", o.prefetch_hint ? ", oracle hints" : "");
	fflush(stdout);
	struct replay_result r;
	int rc = replay_run(cl, t, &o, &r, &err);
	if (rc && bar.drawn)
		fputc('\n', stderr);
	ms_client_close(cl);
	if (rc) {
		tool_error(CMD, "%s", err.msg);
		ms_trace_free(t);
		return 1;
	}
	if (json)
		print_json(&r, trace_path, &o);
	else
		print_table(&r, &o);
	ms_trace_free(t);
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		return 1;
	}
	return 0;
}
