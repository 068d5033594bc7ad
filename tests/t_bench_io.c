/*
 * t_bench_io - `moestream bench io` on a small split model (9 shards, a
 * NextN block, extents that start off any 4 KiB boundary and span several
 * reads), run in this process through bench_io_main with stdout captured.
 *
 * It checks what the command promises, never how fast: speed ratios on a
 * shared machine are noise, so the only figures judged are "a finite
 * positive GB/s for every method that ran".
 *
 *  - --json: every key (engine_gbps, cache_gbps, raw_gbps, pread_gbps,
 *    mmap_gbps, the ratios, n_loads, bytes, depth, threads, model, mode),
 *    bytes = the sum of the chosen experts' own bytes, ratios = the quotients
 *    of the figures, every access of the cache row a miss, the touch sums of
 *    all methods agreeing (the command exits 1 otherwise);
 *  - the list of experts: distinct, only from the layers run (never the
 *    NextN block), the same for the same seed, another for another seed, all
 *    of them by default on a model smaller than the default volume, capped
 *    at all of them when more are asked;
 *  - more slots than loads, a request size of 4 KiB (a read per page), a
 *    subset of methods (the others null);
 *  - the cache row's reads (--staging): 64K forced through staging buffers
 *    (read path "staging", the buffers asked, every byte of the chosen
 *    experts copied, copy CPU time counted and its core shares the
 *    quotients of copy seconds over the cache's and raw's seconds), off
 *    straight into the arena (nothing copied), auto staged exactly where
 *    the arena got no huge pages, and so always with --hugepages off;
 *  - the human table: a row per method and the target lines, and the
 *    cache's read path;
 *  - bad usage exits 2 naming the value, a missing model exits 1.
 *
 * Dropping the page cache needs root: skipped (77) otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../tools/bench_io.h"
#include "../tools/tools.h"
#include "moestream/model.h"
#include "testutil.h"

static const char *dir;
static char model_path[4096];
static struct ms_model *model;

/* Runs fn(argc, argv) in a child with stdout and stderr in files; returns
 * the exit code and both outputs (caller frees). argv[0] is `name`. */
static int call(int (*fn)(int, char **), const char *name, const char *args,
		char **out, char **err)
{
	return t_call_main(fn, name, args, dir, NULL, false, out, err);
}

static int bench(const char *args, char **out, char **err)
{
	char a[8192];
	snprintf(a, sizeof(a), "%s %s", model_path, args);
	return call(bench_io_main, "moestream bench io", a, out, err);
}

/* ---- JSON --------------------------------------------------------------------- */

static double num(const cJSON *o, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
	T_CHECK(x != NULL, "JSON lacks '%s'", k);
	if (!x || cJSON_IsNull(x))
		return NAN;
	T_CHECK(cJSON_IsNumber(x), "'%s' is not a number", k);
	return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static bool is_null(const cJSON *o, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
	return x && cJSON_IsNull(x);
}

static void check_gbps(const cJSON *o, const char *k)
{
	double v = num(o, k);
	T_CHECK(isfinite(v) && v > 0 && v < 1e4, "%s = %g, expected a positive "
		"finite figure", k, v);
}

static void check_ratio(const cJSON *o, const char *k, const char *a,
			const char *b)
{
	double r = num(o, k), x = num(o, a), y = num(o, b);
	T_CHECK(isfinite(r) && fabs(r - x / y) <= 1e-9 * fabs(r),
		"%s = %g, but %s / %s = %g", k, r, a, b, x / y);
}

/* The loads as blocks * 1000 + expert, after checking each is a real
 * expert of a layer that runs and none repeats. */
static uint32_t loads_of(const cJSON *o, uint32_t *keys, uint32_t max)
{
	const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "loads");
	T_CHECK(cJSON_IsArray(l), "no 'loads' array");
	uint32_t n = 0;
	const cJSON *p;
	cJSON_ArrayForEach(p, l)
	{
		const cJSON *b = cJSON_GetArrayItem(p, 0), *e = cJSON_GetArrayItem(p, 1);
		if (!cJSON_IsNumber(b) || !cJSON_IsNumber(e) || n >= max) {
			t_fail_at(__FILE__, __LINE__, "load %u is not [block, expert]", n);
			return n;
		}
		uint32_t blk = (uint32_t)b->valuedouble, ex = (uint32_t)e->valuedouble;
		int32_t layer = blk < model->n_block ? model->block_layer[blk] : -1;
		T_CHECK(layer >= 0, "load %u: block %u is not a MoE layer", n, blk);
		T_CHECK(layer < 0 || !model->layers[layer].nextn,
			"load %u: block %u is the NextN block, which does not run",
			n, blk);
		T_CHECK(ex < model->n_expert, "load %u: expert %u of %u", n, ex,
			model->n_expert);
		keys[n] = blk * 1000 + ex;
		for (uint32_t i = 0; i < n; i++)
			T_CHECK(keys[i] != keys[n], "load %u repeats load %u (block "
				"%u expert %u)", n, i, blk, ex);
		n++;
	}
	return n;
}

static uint64_t bytes_of(const uint32_t *keys, uint32_t n)
{
	uint64_t s = 0;
	for (uint32_t i = 0; i < n; i++) {
		int32_t l = model->block_layer[keys[i] / 1000];
		if (l >= 0)
			s += model->layers[l].expert_bytes;
	}
	return s;
}

static cJSON *bench_json(const char *args)
{
	char *out = NULL, a[4096];
	snprintf(a, sizeof(a), "--json %s", args);
	int rc = bench(a, &out, NULL);
	T_CHECK(rc == 0, "'bench io %s' exited %d", a, rc);
	cJSON *o = out ? cJSON_Parse(out) : NULL;
	T_CHECK(o != NULL, "'bench io %s' printed no JSON: '%.300s'", a,
		out ? out : "");
	free(out);
	return o;
}

/* ---- the checks ------------------------------------------------------------------ */

static void full_run(void)
{
	cJSON *o = bench_json("--loads 6 --depth 4 --threads 2 --seed 7 "
			      "--request-size 256K");
	if (!o)
		return;
	static const char *const g[] = { "engine_gbps", "cache_gbps", "raw_gbps",
					 "pread_gbps", "mmap_gbps" };
	for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
		check_gbps(o, g[i]);
	check_ratio(o, "engine_over_raw", "engine_gbps", "raw_gbps");
	check_ratio(o, "engine_over_mmap", "engine_gbps", "mmap_gbps");
	check_ratio(o, "cache_over_raw", "cache_gbps", "raw_gbps");
	T_EQ_U64(num(o, "n_loads"), 6);
	T_EQ_U64(num(o, "depth"), 4);
	T_EQ_U64(num(o, "threads"), 2);
	T_EQ_U64(num(o, "request_size"), 256 << 10);
	T_EQ_U64(num(o, "cache_misses"), 6);
	uint32_t keys[64];
	uint32_t n = loads_of(o, keys, 64);
	T_EQ_U64(n, 6);
	T_EQ_U64(num(o, "bytes"), bytes_of(keys, n));
	T_CHECK(num(o, "read_bytes") >= num(o, "bytes"),
		"read_bytes %g below bytes %g", num(o, "read_bytes"),
		num(o, "bytes"));
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
	T_CHECK(cJSON_IsString(m) && !strcmp(m->valuestring, model_path),
		"model is '%s', expected '%s'",
		cJSON_IsString(m) ? m->valuestring : "?", model_path);
	const cJSON *md = cJSON_GetObjectItemCaseSensitive(o, "mode");
	T_CHECK(cJSON_IsString(md) && (strstr(md->valuestring, "io_uring") ||
				       strstr(md->valuestring, "preadv")),
		"mode '%s' names no engine",
		cJSON_IsString(md) ? md->valuestring : "?");
	T_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "checksums_agree")),
		"checksums_agree is not true");
	T_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o,
							     "page_cache_dropped")),
		"page_cache_dropped is not true (running as root)");
	T_CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(o, "possibly_cached")),
		"possibly_cached is not false");

	/* The same seed: the same list; another: another. */
	cJSON *o2 = bench_json("--loads 6 --depth 2 --seed 7 --methods raw");
	cJSON *o3 = bench_json("--loads 6 --depth 2 --seed 8 --methods raw");
	uint32_t k2[64], k3[64];
	uint32_t n2 = o2 ? loads_of(o2, k2, 64) : 0;
	uint32_t n3 = o3 ? loads_of(o3, k3, 64) : 0;
	T_CHECK(n2 == n && !memcmp(keys, k2, n * sizeof(*keys)),
		"seed 7 twice gave two lists");
	T_CHECK(n3 == n && memcmp(keys, k3, n * sizeof(*keys)),
		"seeds 7 and 8 gave the same list");
	cJSON_Delete(o);
	cJSON_Delete(o2);
	cJSON_Delete(o3);
}

static void defaults_and_caps(void)
{
	uint32_t all = 0;
	for (uint32_t l = 0; l < model->n_layers; l++)
		all += model->layers[l].nextn ? 0 : model->n_expert;
	uint32_t keys[256];

	/* Smaller than the default volume: every expert of the layers run,
	 * more slots than loads for no harm. */
	cJSON *o = bench_json("--depth 32 --methods engine,raw,cache");
	if (o) {
		T_EQ_U64(num(o, "n_loads"), all);
		T_EQ_U64(loads_of(o, keys, 256), all);
		T_EQ_U64(num(o, "threads"), 32); /* T = D */
		check_gbps(o, "engine_gbps");
		check_gbps(o, "raw_gbps");
		check_gbps(o, "cache_gbps");
		T_CHECK(is_null(o, "pread_gbps") && is_null(o, "mmap_gbps") &&
				is_null(o, "engine_over_mmap"),
			"methods not run are not null");
		check_ratio(o, "engine_over_raw", "engine_gbps", "raw_gbps");
		cJSON_Delete(o);
	}
	o = bench_json("--loads 100000 --depth 3 --methods raw,mmap");
	if (o) {
		T_EQ_U64(num(o, "n_loads"), all);
		T_CHECK(is_null(o, "engine_gbps") && is_null(o, "engine_over_raw"),
			"engine not run but engine_gbps is not null");
		check_gbps(o, "mmap_gbps");
		cJSON_Delete(o);
	}
	/* A read per 4 KiB page, odd depths. */
	o = bench_json("--loads 3 --depth 5 --threads 3 --request-size 4K "
		       "--methods engine,raw,cache,pread --rounds 2");
	if (o) {
		T_EQ_U64(num(o, "n_loads"), 3);
		T_EQ_U64(num(o, "rounds"), 2);
		check_gbps(o, "engine_gbps");
		check_gbps(o, "pread_gbps");
		const cJSON *r = cJSON_GetObjectItemCaseSensitive(o,
								  "raw_gbps_rounds");
		T_CHECK(cJSON_GetArraySize(r) == 2, "raw_gbps_rounds has %d "
			"entries, expected 2", cJSON_GetArraySize(r));
		T_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
				o, "checksums_agree")),
			"checksums_agree is not true");
		cJSON_Delete(o);
	}
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
	T_CHECK(cJSON_IsString(x), "'%s' is not a string", k);
	return cJSON_IsString(x) ? x->valuestring : "";
}

static void staging(void)
{
	static const char *const args[] = { "--staging 64K", "--staging off",
					    "--staging auto",
					    "--hugepages off --staging auto" };
	for (int i = 0; i < 4; i++) {
		char a[256];
		snprintf(a, sizeof(a), "%s --loads 6 --depth 4 --seed 3 --request-size 16K "
			 "--methods cache,raw", args[i]);
		cJSON *o = bench_json(a);
		if (!o)
			continue;
		const char *path = str(o, "cache_read_path");
		double arena = num(o, "cache_arena_bytes");
		double huge = num(o, "cache_arena_huge_bytes");
		double sb = num(o, "cache_staging_bytes");
		double copied = num(o, "cache_copy_bytes");
		printf("%s: %s: %s\n", args[i], path, str(o, "cache_read_path_detail"));
		bool staged = i == 0 || (i >= 2 && huge * 2 < arena);
		if (i == 3) /* 4 KiB pages asked: auto must stage */
			T_CHECK(huge == 0 && !strcmp(str(o, "hugepages"), "off"),
				"%s: %g huge bytes, hugepages '%s'", args[i], huge,
				str(o, "hugepages"));
		T_CHECK(!strcmp(path, staged ? "staging" : "direct"),
			"%s: read path %s (arena %g bytes, %g huge)", args[i], path, arena,
			huge);
		if (i == 0)
			T_CHECK(num(o, "staging") == 65536 && sb == 65536,
				"%s: staging %g, %g staging bytes", args[i], num(o, "staging"),
				sb);
		else
			T_CHECK(!strcmp(str(o, "staging"), i == 1 ? "off" : "auto"),
				"%s: staging '%s'", args[i], str(o, "staging"));
		if (i == 2 && strcmp(path, "staging"))
			printf("%s: the arena got huge pages (%g of %g bytes): reads "
			       "land in it directly\n", args[i], huge, arena);
		if (staged) {
			T_CHECK(copied >= num(o, "bytes") && num(o, "cache_copy_cpu_s") > 0,
				"%s: %g bytes copied in %g s, the experts are %g bytes",
				args[i], copied, num(o, "cache_copy_cpu_s"), num(o, "bytes"));
			check_ratio(o, "cache_copy_core_share", "cache_copy_cpu_s",
				    "cache_seconds");
			check_ratio(o, "cache_copy_core_share_at_raw", "cache_copy_cpu_s",
				    "raw_seconds");
		} else {
			T_CHECK(copied == 0 && sb == 0, "%s: %g bytes copied, %g staging "
				"bytes", args[i], copied, sb);
		}
		cJSON_Delete(o);
	}
}

static void human(void)
{
	char *out = NULL;
	int rc = bench("--loads 4 --depth 3 --threads 2", &out, NULL);
	printf("%s", out ? out : "");
	T_CHECK(rc == 0, "the human run exited %d", rc);
	static const char *const want[] = {
		"method |", "engine |", "cache  |", "raw    |", "pread  |",
		"mmap   |", "engine / raw = ", "(target >= 0.95)",
		"engine / mmap = ", "(target >= 2)", "touch sums agree",
		"page cache dropped before each method", "cache / raw = ",
		"(target >= 0.9)", "cache reads (--staging auto): ",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		T_CHECK(out && strstr(out, want[i]), "the table lacks '%s'",
			want[i]);
	free(out);
}

static void expect(const char *args, int want_rc, const char *want)
{
	char *err = NULL;
	int rc = call(bench_io_main, "moestream bench io", args, NULL, &err);
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", args, rc, want_rc);
	T_CHECK(err && strstr(err, want), "'%s': stderr lacks '%s': '%s'", args,
		want, err ? err : "");
	free(err);
}

static void usage_errors(void)
{
	char a[8192];
	expect("", 2, "no MODEL");
	snprintf(a, sizeof(a), "%s --depth 0", model_path);
	expect(a, 2, "--depth '0'");
	snprintf(a, sizeof(a), "%s --depth 5000", model_path);
	expect(a, 2, "--depth '5000'");
	snprintf(a, sizeof(a), "%s --threads 65", model_path);
	expect(a, 2, "--threads '65'");
	snprintf(a, sizeof(a), "%s --loads x", model_path);
	expect(a, 2, "--loads 'x'");
	snprintf(a, sizeof(a), "%s --request-size 1000", model_path);
	expect(a, 2, "--request-size '1000'");
	/* the cache row's arena and reads: each value named back */
	static const char *const bad[][2] = {
		{ "--staging", "1000" }, { "--staging", "on" },
		{ "--hugepages", "maybe" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char want[64];
		snprintf(a, sizeof(a), "%s %s %s", model_path, bad[i][0], bad[i][1]);
		snprintf(want, sizeof(want), "%s '%s'", bad[i][0], bad[i][1]);
		expect(a, 2, want);
	}
	snprintf(a, sizeof(a), "%s --methods engine,floppy", model_path);
	expect(a, 2, "'floppy'");
	snprintf(a, sizeof(a), "%s %s", model_path, model_path);
	expect(a, 2, "is extra");
	snprintf(a, sizeof(a), "%s/nope.gguf", dir);
	expect(a, 1, "nope.gguf");
	char *out = NULL;
	int rc = call(bench_io_main, "moestream bench io", "--help", &out, NULL);
	T_CHECK(rc == 0 && out && strstr(out, "engine >= 0.95 x raw"),
		"--help exited %d or lacks the targets", rc);
	free(out);
}

int main(void)
{
	if (geteuid() != 0)
		t_skip("not root: dropping the page cache (which this benchmark "
		       "does between methods) needs root");
	dir = t_tmpdir();
	char a[8192];
	snprintf(a, sizeof(a),
		 "--layers 4 --dense 1 --nextn 1 --experts 8 --used 2 --embd 2048 "
		 "--ff 512 --vocab 1000 --types q8_0,q4_K,q6_K --split-size 16M "
		 "-o %s/m.gguf",
		 dir);
	if (call(cmd_mkmodel, "moestream mkmodel", a, NULL, NULL))
		t_fatal("could not write the test model");
	char pat[4200];
	glob_t gl;
	snprintf(pat, sizeof(pat), "%s/m-00001-of-*.gguf", dir);
	if (glob(pat, 0, NULL, &gl) || gl.gl_pathc != 1)
		t_fatal("no first shard matching %s", pat);
	snprintf(model_path, sizeof(model_path), "%s", gl.gl_pathv[0]);
	globfree(&gl);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, model_path, &err))
		t_fatal("%s", err.msg);
	if (model->n_shards < 2 || model->n_layers <= model->n_layers_run)
		t_fatal("the test model has %u shards and %u/%u layers run: "
			"expected a split model with a NextN block",
			model->n_shards, model->n_layers_run, model->n_layers);

	full_run();
	defaults_and_caps();
	staging();
	human();
	usage_errors();
	ms_model_free(model);
	return t_done();
}
