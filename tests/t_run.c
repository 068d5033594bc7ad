/*
 * t_run - `moestream run` as a user meets it, on mkmodel's tiny preset with
 * the Qwen3 tokenizer: text and the figures at the end (and as --json, with
 * every key the issue names); the same greedy text embedded and through a
 * moestreamd; one clear line and exit 1 for a prompt longer than --ctx, a
 * model without a tokenizer, an architecture the engine does not run, and a
 * daemon killed mid-run (no hang); Ctrl-C stops cleanly and still prints the
 * figures.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemontest.h"
#include "testutil.h"

static char cmd[16384];

static int run(const char *args, char **out, char **err)
{
	const char *d = t_tmpdir();
	char o[4096], e[4096];
	snprintf(o, sizeof(o), "%s/run.out", d);
	snprintf(e, sizeof(e), "%s/run.err", d);
	snprintf(cmd, sizeof(cmd), "%s run %s >%s 2>%s", t_build_path("moestream"),
		 args, o, e);
	int rc = t_run(cmd, NULL, 0);
	*out = t_read_text(o);
	*err = t_read_text(e);
	printf("$ moestream run %s -> exit %d\n%s%s", args, rc,
	       *err ? *err : "", *err && **err ? "" : "\n");
	return rc;
}

static unsigned lines(const char *s)
{
	unsigned n = 0;
	for (; s && *s; s++)
		n += *s == '\n';
	return n;
}

/* Replaces every occurrence of `a` by `b` (same length) in a copy. */
static int patch_copy(const char *src, const char *dst, const char *a,
		      const char *b, size_t limit)
{
	size_t len;
	uint8_t *buf = t_read_file(src, 1u << 30, &len);
	if (!buf)
		return -1;
	size_t la = strlen(a);
	for (size_t i = 0; i + la <= len && i < limit; i++)
		if (!memcmp(buf + i, a, la))
			memcpy(buf + i, b, la);
	int rc = t_write_file(dst, buf, len);
	free(buf);
	return rc;
}

/* Starts `moestream run ARGS` (stdout and stderr into the test folder);
 * once it has printed its prompt (it has loaded, tokenized and set its
 * Ctrl-C handler: a fixed delay was too short for a sanitizer build on a
 * loaded machine) and 0.5 s more, sends `sig` to `victim` (0: to the run
 * itself); waits up to 30 s: the run's wait status (-1 on timeout) and its
 * stderr in *err_text. */
static int interrupted_run(const char *args, pid_t victim, int sig,
			   char **err_text)
{
	char path[4096], opath[4096];
	snprintf(path, sizeof(path), "%s/interrupted.err", t_tmpdir());
	snprintf(opath, sizeof(opath), "%s/interrupted.out", t_tmpdir());
	unlink(opath);
	snprintf(cmd, sizeof(cmd), "exec %s run %s >%s 2>%s",
		 t_build_path("moestream"), args, opath, path);
	pid_t pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	dt_track(pid);
	struct stat st_out;
	for (int ms = 0; ms < 120000; ms += 50) {
		if (!stat(opath, &st_out) && st_out.st_size > 0)
			break;
		if (waitpid(pid, NULL, WNOHANG) == pid)
			t_fatal("'%s' ended before it printed its prompt", cmd);
		dt_sleep_ms(50);
	}
	dt_sleep_ms(500);
	kill(victim ? victim : pid, sig);
	int st = dt_waitpid(pid, 30000);
	*err_text = t_read_text(path);
	return st;
}

static double jnum(const cJSON *j, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
	return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

int main(void)
{
	dt_watchdog(600, "t_run");
	const char *d = t_tmpdir();
	char model[4096], args[8192];
	snprintf(model, sizeof(model), "%s/tiny.gguf", d);
	t_tiny_qwen3(model);
	char *out, *err;

	/* text, then the figures */
	snprintf(args, sizeof(args), "%s -p 'The capital of France is' -n 12 "
		 "--temp 0", model);
	int rc = run(args, &out, &err);
	T_CHECK(rc == 0, "run exited %d", rc);
	T_CHECK(out && !strncmp(out, "The capital of France is", 24) &&
		strlen(out) > 26, "the output does not continue the prompt: '%s'",
		out ? out : "");
	static const char *const rows[] = { "prompt", "decode", "experts",
					    "waiting", "speculate", "peak RSS",
					    "expert cache" };
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		T_CHECK(err && strstr(err, rows[i]), "stderr lacks '%s'", rows[i]);
	char *embedded = out ? strdup(out) : NULL;
	free(out);
	free(err);

	/* --json; a cache smaller than the experts (9.1 MB), so that it fills */
	snprintf(args, sizeof(args), "%s -p 'Hello there' -n 6 --temp 0 --json "
		 "--cache-size 6M", model);
	rc = run(args, &out, &err);
	cJSON *j = out ? cJSON_Parse(out) : NULL;
	T_CHECK(rc == 0 && j, "--json: exit %d, output '%s'", rc, out ? out : "");
	static const char *const keys[] = {
		"prompt_tokens", "prefill_tokps", "generated_tokens", "decode_tokps",
		"expert_hit_rate", "expert_gb_read", "decode_wait_share",
		"speculation_accuracy", "peak_rss_bytes",
	};
	for (size_t i = 0; j && i < sizeof(keys) / sizeof(keys[0]); i++) {
		cJSON *x = cJSON_GetObjectItem(j, keys[i]);
		T_CHECK(cJSON_IsNumber(x), "--json lacks the number %s", keys[i]);
	}
	if (j) {
		cJSON *g = cJSON_GetObjectItem(j, "generated_tokens");
		T_CHECK(cJSON_IsNumber(g) && g->valuedouble >= 1 &&
			g->valuedouble <= 6, "generated_tokens %g not in 1..6",
			cJSON_IsNumber(g) ? g->valuedouble : -1);
		cJSON *h = cJSON_GetObjectItem(j, "expert_hit_rate");
		T_CHECK(cJSON_IsNumber(h) && h->valuedouble >= 0 &&
			h->valuedouble <= 1, "expert_hit_rate out of [0, 1]");
		/* issue 15: RSS <= resident tensors + KV + cache + 128 MiB, on
		 * the models it is about (the GLM-4.7 8-layer preset: 8 MiB over
		 * the three, in the stop's note). The tiny preset's own costs are
		 * a larger share of it: with a 151k vocabulary its batch logits
		 * are 39 MB, and a CUDA build maps ~57 MB of cuBLAS pages; 170
		 * MB were measured here. So 256 MiB: a second copy of the
		 * resident tensors (170 MB), or a cache over its size, still
		 * fails it. */
		double rss = jnum(j, "peak_rss_bytes"), res = jnum(j, "resident_bytes"),
		       kv = jnum(j, "kv_bytes"), cache = jnum(j, "cache_bytes");
		printf("peak RSS %.0f = resident %.0f + KV %.0f + cache %.0f + %.0f\n",
		       rss, res, kv, cache, rss - res - kv - cache);
		T_CHECK(res > 0 && kv > 0 && cache > 0, "resident %g, KV %g, cache %g",
			res, kv, cache);
		T_CHECK(rss <= res + kv + cache + 256.0 * (1 << 20),
			"peak RSS %g > resident %g + KV %g + cache %g + 256 MiB", rss,
			res, kv, cache);
	}
	cJSON_Delete(j);
	free(out);
	free(err);

	/* through a daemon: the same greedy text */
	struct dt_daemon dm;
	if (!dt_start(&dm, "runtest", model, NULL)) {
		snprintf(args, sizeof(args), "%s -p 'The capital of France is' -n 12 "
			 "--temp 0 --socket %s", model, dm.sock);
		rc = run(args, &out, &err);
		T_CHECK(rc == 0 && out && embedded && !strcmp(out, embedded),
			"through moestreamd: exit %d, text '%s' vs embedded '%s'", rc,
			out ? out : "", embedded ? embedded : "");
		free(out);
		free(err);

		/* the daemon killed mid-run: one line, exit 1, no hang */
		snprintf(args, sizeof(args), "%s -p 'Once upon a time' -n 100000 "
			 "--ctx 4000 --temp 0 --socket %s", model, dm.sock);
		char *ke;
		int st = interrupted_run(args, dm.pid, SIGKILL, &ke);
		printf("$ (daemon killed mid-run) -> status %d\n%s", st, ke ? ke : "");
		T_CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 1,
			"run with its daemon killed: wait status %d (want exit 1 "
			"within 30 s)", st);
		T_CHECK(ke && strstr(ke, "daemon"), "no line about the daemon: '%s'",
			ke ? ke : "");
		free(ke);
		dt_stop(&dm);
	}
	free(embedded);

	/* Ctrl-C: a clean stop that still prints the figures */
	snprintf(args, sizeof(args), "%s -p 'Once upon a time' -n 100000 --ctx 4000",
		 model);
	char *ie;
	int st = interrupted_run(args, 0, SIGINT, &ie);
	printf("$ (Ctrl-C) -> status %d\n%s", st, ie ? ie : "");
	T_CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		"run after SIGINT: wait status %d (want exit 0)", st);
	T_CHECK(ie && strstr(ie, "interrupted") && strstr(ie, "decode"),
		"after SIGINT the figures are missing: '%s'", ie ? ie : "");
	free(ie);

	/* a prompt longer than the context */
	snprintf(args, sizeof(args), "%s -p 'one two three four five six seven "
		 "eight nine ten' --ctx 4", model);
	rc = run(args, &out, &err);
	T_CHECK(rc == 1 && err && strstr(err, "--ctx") && lines(err) <= 3,
		"a prompt over --ctx: exit %d, '%s'", rc, err ? err : "");
	free(out);
	free(err);

	/* no tokenizer: the key renamed in a copy */
	char notok[4096];
	snprintf(notok, sizeof(notok), "%s/notok.gguf", d);
	if (patch_copy(model, notok, "tokenizer.ggml.model", "tokenizer.ggml.modeX",
		       64u << 20))
		t_fatal("cannot write %s", notok);
	snprintf(args, sizeof(args), "%s -p hi", notok);
	rc = run(args, &out, &err);
	T_CHECK(rc == 1 && err && strstr(err, "tokenizer.ggml.model") &&
		lines(err) == 1, "no tokenizer: exit %d, '%s'", rc, err ? err : "");
	free(out);
	free(err);
	unlink(notok);

	/* an architecture the engine does not run */
	char other[4096];
	snprintf(other, sizeof(other), "%s/other.gguf", d);
	if (patch_copy(model, other, "glm4moe", "glm9xyz", 64u << 20))
		t_fatal("cannot write %s", other);
	snprintf(args, sizeof(args), "%s -p hi", other);
	rc = run(args, &out, &err);
	T_CHECK(rc == 1 && err && strstr(err, "glm9xyz") && strstr(err, "qwen3moe") &&
		lines(err) == 1, "other arch: exit %d, '%s'", rc, err ? err : "");
	free(out);
	free(err);
	unlink(other);

	/* usage */
	rc = run("", &out, &err);
	T_CHECK(rc == 2, "no arguments: exit %d", rc);
	free(out);
	free(err);
	snprintf(args, sizeof(args), "%s", model);
	rc = run(args, &out, &err);
	T_CHECK(rc == 2 && err && strstr(err, "-p TEXT"), "no prompt: exit %d", rc);
	free(out);
	free(err);
	/* the option named once, as typed (it printed "----ctx") */
	snprintf(args, sizeof(args), "%s -p x --ctx abc", model);
	rc = run(args, &out, &err);
	T_CHECK(rc == 2 && err && strstr(err, ": --ctx 'abc' is not a whole number"),
		"--ctx abc: exit %d, '%s'", rc, err ? err : "");
	free(out);
	free(err);
	return t_done();
}
