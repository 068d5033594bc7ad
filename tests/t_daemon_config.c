/*
 * t_daemon_config.c - moestreamd's configuration errors, as a user meets
 * them: the real binary, a bad file, its stderr and its exit code.
 *
 * Each bad file (unknown key or section, values out of range or of the
 * wrong kind, a key twice, a syntax error, no model, a model that is not
 * there or not a GGUF, a socket path too long / abstract / a regular file /
 * a directory / in a folder that cannot be made, an unknown user, a bad
 * --cache-size) must make `moestreamd -c FILE --foreground` exit non-zero
 * (not by a signal, not by hanging: it would serve) with one line on stderr
 * that names what is wrong (the file and line for file errors, the value,
 * and what is allowed). A regular file where the socket should go is left
 * as it was. A socket path of exactly 107 bytes works; 108 does not.
 *
 * `--check-config` succeeds on a good file and fails on a bad one;
 * `--print-config` writes a file that loads back (`-c` it with
 * --check-config), prints the same again (a fixed point), keeps every value
 * that was set, and a daemon started from it serves.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemontest.h"

static const char *model_path;
static char dir[512];
static unsigned n_cases;

/* Runs moestreamd with `conf` (written to NAME.conf when not NULL) and the
 * extra args; returns its exit code and stderr (malloc'ed) in *err_out. */
static int run_daemon(const char *name, const char *conf, const char *const *args,
		      char **out_text, char **err_text)
{
	char conf_path[600], out_path[600], err_path[600];
	snprintf(conf_path, sizeof(conf_path), "%s/%s.conf", dir, name);
	snprintf(out_path, sizeof(out_path), "%s/%s.out", dir, name);
	snprintf(err_path, sizeof(err_path), "%s/%s.err", dir, name);
	if (conf && t_write_file(conf_path, conf, strlen(conf)))
		t_fatal("writing %s", conf_path);
	const char *argv[24];
	int n = 0;
	argv[n++] = t_build_path("moestreamd");
	if (conf) {
		argv[n++] = "-c";
		argv[n++] = conf_path;
	}
	for (int i = 0; args && args[i] && n < 22; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	int rc = dt_exec((char *const *)argv, out_path, err_path, 30000);
	if (out_text)
		*out_text = dt_slurp(out_path);
	if (err_text)
		*err_text = dt_slurp(err_path);
	return rc;
}

/* A bad configuration: non-zero exit, and a stderr line that holds every
 * string of `want` (NULL-terminated). `one_line`: stderr is that one line
 * and nothing else (errors found before anything starts). */
static void bad(const char *name, const char *conf, const char *const *args,
		bool one_line, const char *const *want)
{
	char *err = NULL;
	const char *fg[24];
	int n = 0;
	fg[n++] = "--foreground";
	for (int i = 0; args && args[i] && n < 22; i++)
		fg[n++] = args[i];
	fg[n] = NULL;
	int64_t t0 = dt_now_ms();
	int rc = run_daemon(name, conf, fg, NULL, &err);
	int64_t ms = dt_now_ms() - t0;
	n_cases++;
	/* the line that names the problem */
	const char *line = NULL;
	unsigned matching = 0;
	for (const char *p = err; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		bool all = true;
		for (int i = 0; want[i] && all; i++) {
			const char *f = strstr(p, want[i]);
			all = f && f < p + len;
		}
		if (all) {
			matching++;
			if (!line)
				line = p;
		}
		p += len + (nl ? 1 : 0);
	}
	unsigned lines = dt_count_lines(err);
	const char *crash = dt_crash_in(err);
	T_CHECK(!crash, "%s: moestreamd crashed or its sanitizer spoke:\n%s", name,
		crash);
	const char *nl = line ? strchr(line, '\n') : NULL;
	printf("%-28s exit %-3d %5lld ms  %.*s\n", name, rc, (long long)ms,
	       line ? (int)(nl ? nl - line : (long)strlen(line)) : 20,
	       line ? line : "(no matching line)");
	T_CHECK(rc > 0 && rc < 128, "%s: moestreamd exited %d (non-zero, not a "
		"signal, expected); stderr:\n%s", name, rc, err);
	T_CHECK(matching == 1, "%s: %u stderr line(s) name the problem (want %s%s%s "
		"...), expected 1; stderr:\n%s", name, matching, want[0],
		want[1] ? ", " : "", want[1] ? want[1] : "", err);
	if (one_line)
		T_CHECK(lines == 1, "%s: %u lines on stderr, expected 1:\n%s", name,
			lines, err);
	else
		T_CHECK(lines <= 4, "%s: %u lines on stderr for one error:\n%s",
			name, lines, err);
	free(err);
}

#define W(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* "[model]\npath = M\n[socket]\npath = DIR/NAME.sock\n" + body */
static char *conf_with(const char *name, const char *body)
{
	char *c = malloc(16384);
	if (!c)
		t_fatal("out of memory");
	snprintf(c, 16384,
		 "[model]\npath = %s\n[socket]\npath = %s/%s.sock\n%s", model_path, dir,
		 name, body);
	return c;
}

static void bad_body(const char *name, const char *body, bool one_line,
		     const char *const *want)
{
	char *c = conf_with(name, body);
	bad(name, c, NULL, one_line, want);
	free(c);
}

static void file_errors(void)
{
	bad_body("unknown-key", "[cache]\nsizee = 64M\n", true,
		 W("unknown-key.conf:6", "sizee", "unknown key", "size"));
	bad_body("unknown-section", "[cachee]\nsize = 64M\n", true,
		 W("unknown-section.conf:5", "cachee", "unknown section"));
	bad_body("size-below-min", "[cache]\nsize = 1M\n", true,
		 W("size-below-min.conf:6", "size", "1M", "64M"));
	bad_body("size-above-max", "[cache]\nsize = 99999T\n", true,
		 W("size-above-max.conf:6", "99999T", "16T"));
	bad_body("size-overflow", "[cache]\nsize = 99999999999999999999G\n", true,
		 W("size-overflow.conf:6", "size"));
	bad_body("size-negative", "[cache]\nsize = -5\n", true,
		 W("size-negative.conf:6", "-5"));
	bad_body("size-suffix", "[cache]\nsize = 12Q\n", true,
		 W("size-suffix.conf:6", "12Q"));
	bad_body("size-empty", "[cache]\nsize =\n", true,
		 W("size-empty.conf:6", "size"));
	bad_body("enum-hugepages", "[cache]\nhugepages = maybe\n", true,
		 W("enum-hugepages.conf:6", "hugepages", "maybe", "auto|on|off"));
	bad_body("enum-engine", "[io]\nengine = spdk\n", true,
		 W("enum-engine.conf:6", "engine", "spdk"));
	bad_body("enum-level", "[log]\nlevel = loud\n", true,
		 W("enum-level.conf:6", "level", "loud"));
	bad_body("enum-policy", "[prefetch]\npolicy = psychic\n", true,
		 W("enum-policy.conf:6", "policy", "psychic"));
	bad_body("bool-lock", "[cache]\nlock = perhaps\n", true,
		 W("bool-lock.conf:6", "lock", "perhaps"));
	bad_body("numa-node", "[cache]\nnuma_node = 5000\n", true,
		 W("numa-node.conf:6", "numa_node", "5000"));
	bad_body("mode-digit", "[socket]\nmode = 0999\n", true,
		 W("mode-digit.conf:6", "mode", "0999"));
	bad_body("mode-big", "[socket]\nmode = 01777\n", true,
		 W("mode-big.conf:6", "mode", "01777"));
	bad_body("max-clients-0", "[socket]\nmax_clients = 0\n", true,
		 W("max-clients-0.conf:6", "max_clients", "1..4096"));
	bad_body("max-clients-big", "[socket]\nmax_clients = 5000\n", true,
		 W("max-clients-big.conf:6", "max_clients", "5000"));
	bad_body("timeout-text", "[cache]\nacquire_timeout = soon\n", true,
		 W("timeout-text.conf:6", "acquire_timeout", "soon"));
	bad_body("min-prob", "[prefetch]\nmin_prob = 1.5\n", true,
		 W("min-prob.conf:6", "min_prob", "1.5"));
	bad_body("min-prob-nan", "[prefetch]\nmin_prob = nan\n", true,
		 W("min-prob-nan.conf:6", "min_prob"));
	bad_body("request-size", "[io]\nrequest_size = 5000\n", true,
		 W("request-size.conf:6", "request_size", "5000"));
	bad_body("duplicate-key", "[cache]\nsize = 64M\nsize = 65M\n", true,
		 W("duplicate-key.conf:7", "size", "duplicate"));
	bad_body("syntax", "[cache]\nthis line has no equals sign\n", true,
		 W("syntax.conf:6", "this line has no equals sign"));
	bad_body("unclosed-section", "[cache\nsize = 64M\n", true,
		 W("unclosed-section.conf:5"));
	bad_body("pin-bad", "[cache]\npin = 3-17\n", true,
		 W("pin-bad.conf:6", "pin", "3-17"));
	bad_body("user-name", "[socket]\nallow_users = bad;name\n", true,
		 W("user-name.conf:6", "allow_users"));
	char *longline = malloc(6000);
	memset(longline, 'k', 5000);
	snprintf(longline + 5000, 1000, " = 1\n");
	char *body = malloc(8000);
	snprintf(body, 8000, "[cache]\n%s", longline);
	bad_body("long-line", body, true, W("long-line.conf:6"));
	free(body);
	free(longline);
	/* binary garbage, a NUL byte in a line */
	static const char garbage[] = "[cache]\nsize = 64M\x01\x02\xff\xfe\n";
	bad_body("garbage", garbage, true, W("garbage.conf:6"));
}

static void model_errors(void)
{
	char c[2048];
	snprintf(c, sizeof(c), "[socket]\npath = %s/no-model.sock\n", dir);
	bad("no-model", c, NULL, true, W("model"));
	snprintf(c, sizeof(c), "[model]\npath = %s/absent.gguf\n[socket]\npath = "
		 "%s/x.sock\n", dir, dir);
	bad("model-absent", c, NULL, true, W("absent.gguf"));
	char notgguf[600];
	snprintf(notgguf, sizeof(notgguf), "%s/not-a-model.gguf", dir);
	t_write_file(notgguf, "this is text, not a GGUF\n", 25);
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s/x.sock\n",
		 notgguf, dir);
	bad("model-not-gguf", c, NULL, true, W("not-a-model.gguf", "GGUF"));
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s/x.sock\n",
		 dir, dir);
	bad("model-is-dir", c, NULL, true, W(dir));
}

static void socket_errors(void)
{
	char c[2048], path[600];
	/* 117 bytes */
	int n = snprintf(path, sizeof(path), "%s/", dir);
	while (n < 117)
		path[n++] = 'a';
	path[n] = '\0';
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s\n", model_path,
		 path);
	bad("socket-path-117", c, NULL, true, W("path", "107"));
	path[108] = '\0'; /* 108 bytes: one too many for sun_path */
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s\n", model_path,
		 path);
	bad("socket-path-108", c, NULL, true, W("path", "107"));
	const char *const cli[] = { "--socket", path, NULL };
	snprintf(c, sizeof(c), "[model]\npath = %s\n", model_path);
	bad("socket-path-108-flag", c, cli, true, W("--socket", "107"));

	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = @moestream\n",
		 model_path);
	bad("socket-abstract", c, NULL, true, W("@moestream", "abstract"));

	/* A regular file where the socket should be: refused, and untouched. */
	char reg[600];
	snprintf(reg, sizeof(reg), "%s/regular-file", dir);
	t_write_file(reg, "keep me\n", 8);
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s\n[cache]\n"
		 "lock = false\nhugepages = off\nsize = 64M\n", model_path, reg);
	bad("socket-is-file", c, NULL, false, W(reg, "not a socket"));
	char *kept = dt_slurp(reg);
	T_CHECK(!strcmp(kept, "keep me\n"), "the regular file at the socket path was "
		"changed or removed: '%s'", kept);
	free(kept);

	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s\n[cache]\n"
		 "lock = false\nhugepages = off\nsize = 64M\n", model_path, dir);
	bad("socket-is-dir", c, NULL, false, W(dir));

	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s/no/such/dir/"
		 "x.sock\n[cache]\nlock = false\nhugepages = off\nsize = 64M\n", model_path,
		 dir);
	bad("socket-dir-missing", c, NULL, false, W("no/such/dir"));

	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s/users.sock\n"
		 "allow_users = nosuchuser_h11\n[cache]\nlock = false\nhugepages = "
		 "off\nsize = 64M\n", model_path, dir);
	bad("allow-users-unknown", c, NULL, false, W("nosuchuser_h11"));
	snprintf(c, sizeof(c), "[model]\npath = %s\n[socket]\npath = %s/groups.sock\n"
		 "allow_groups = nosuchgroup_h11\n[cache]\nlock = false\nhugepages = "
		 "off\nsize = 64M\n", model_path, dir);
	bad("allow-groups-unknown", c, NULL, false, W("nosuchgroup_h11"));
}

static void flag_errors(void)
{
	char *c = conf_with("flag-size", "[cache]\nlock = false\nsize = 64M\n");
	const char *const a1[] = { "--cache-size", "12X", NULL };
	bad("flag-cache-size", c, a1, true, W("--cache-size", "12X"));
	const char *const a2[] = { "--cache-size", "1K", NULL };
	bad("flag-cache-size-small", c, a2, true, W("--cache-size", "1K"));
	free(c);
	char missing[600];
	snprintf(missing, sizeof(missing), "%s/missing.conf", dir);
	const char *const a3[] = { "-c", missing, NULL };
	bad("config-missing", NULL, a3, true, W("missing.conf"));
	const char *const a4[] = { "--bogus", NULL };
	bad("unknown-flag", NULL, a4, false, W("usage"));
	const char *const a5[] = { "--model", "/nonexistent/h11.gguf", NULL };
	c = conf_with("flag-model", "");
	bad("flag-model-absent", c, a5, true, W("/nonexistent/h11.gguf"));
	free(c);
}

/* A path of exactly 107 bytes is a valid Unix socket path. */
static void socket_path_107(void)
{
	char sub[600], sock[200];
	int n = snprintf(sub, sizeof(sub), "%s/", dir);
	/* dir/DDDD.../s.sock: 107 bytes in all */
	int fill = 107 - n - 7;
	if (fill < 1) {
		printf("skip: the test folder is too deep for a 107-byte socket path\n");
		return;
	}
	memset(sub + n, 'd', (size_t)fill);
	sub[n + fill] = '\0';
	if (mkdir(sub, 0700))
		t_fatal("mkdir %s: %s", sub, strerror(errno));
	snprintf(sock, sizeof(sock), "%s/s.sock", sub);
	T_EQ_U64(strlen(sock), 107);
	struct dt_daemon d;
	dt_daemon_init(&d, "p107");
	snprintf(d.sock, sizeof(d.sock), "%s", sock);
	dt_write_config(d.conf, model_path, d.sock, NULL);
	if (!dt_daemon_start(&d, NULL, 0)) {
		printf("%-28s serves on a socket path of %zu bytes\n", "socket-path-107",
		       strlen(sock));
		T_EQ_U64(dt_stop(&d), 0);
	}
}

static void check_and_print(void)
{
	char *out = NULL, *err = NULL;
	char good[600], p1[600], p2[600];
	/* Every option set away from its default where the test box allows. */
	char *c = conf_with("good",
			    "mode = 0640\n"
			    "allow_users = root, 0\n"
			    "allow_groups = root\n"
			    "max_clients = 7\n"
			    "idle_timeout = 30\n"
			    "[cache]\n"
			    "size = 96M\n"
			    "pin = 1:1, 2:3\n"
			    "pin_top = 4\n"
			    "hugepages = off\n"
			    "numa_node = none\n"
			    "acquire_timeout = 1234\n"
			    "lock = false\n"
			    "[io]\n"
			    "engine = preadv\n"
			    "threads = 3\n"
			    "queue_depth = 16\n"
			    "request_size = 256K\n"
			    "sqpoll = false\n"
			    "direct = off\n"
			    "[prefetch]\n"
			    "policy = hint\n"
			    "depth = 2\n"
			    "width = 4\n"
			    "min_prob = 0.25\n"
			    "max_inflight = 8M\n"
			    "[log]\n"
			    "level = info\n");
	snprintf(good, sizeof(good), "%s/good.conf", dir);
	snprintf(p1, sizeof(p1), "%s/printed1.conf", dir);
	snprintf(p2, sizeof(p2), "%s/printed2.conf", dir);
	t_write_file(good, c, strlen(c));
	free(c);

	const char *const chk[] = { "--check-config", NULL };
	int rc = run_daemon("good", NULL, (const char *const[]){ "-c", good,
					   "--check-config", NULL }, &out, &err);
	printf("%-28s exit %d: %s", "check-config good", rc, out);
	T_CHECK(rc == 0, "--check-config on a good file: exit %d\n%s%s", rc, out, err);
	T_CHECK(strstr(out, "ok") != NULL, "--check-config says: %s", out);
	free(out);
	free(err);
	char *bc = conf_with("bad-check", "[cache]\nsize = 1K\n");
	rc = run_daemon("bad-check", bc, chk, NULL, &err);
	free(bc);
	T_CHECK(rc > 0 && rc < 128, "--check-config on a bad file: exit %d", rc);
	free(err);

	rc = run_daemon("print1", NULL, (const char *const[]){ "-c", good,
					    "--print-config", NULL }, &out, &err);
	T_CHECK(rc == 0, "--print-config: exit %d: %s", rc, err);
	t_write_file(p1, out, strlen(out));
	/* Every value set above is in effect. */
	static const char *const lines[] = {
		"mode = 0640", "max_clients = 7", "idle_timeout = 30",
		"pin_top = 4", "hugepages = off", "numa_node = none",
		"acquire_timeout = 1234", "lock = false", "engine = preadv",
		"threads = 3", "queue_depth = 16", "direct = off", "policy = hint",
		"depth = 2", "width = 4", "level = info", "min_prob = 0.25",
	};
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		char want[128];
		snprintf(want, sizeof(want), "\n%s\n", lines[i]);
		T_CHECK(strstr(out, want) != NULL, "--print-config lacks the line "
			"'%s'", lines[i]);
	}
	free(err);
	char *first = out;
	rc = run_daemon("check-printed", NULL, (const char *const[]){ "-c", p1,
					    "--check-config", NULL }, &out, &err);
	T_CHECK(rc == 0, "--check-config of --print-config's output: exit %d: %s",
		rc, err);
	free(out);
	free(err);
	rc = run_daemon("print2", NULL, (const char *const[]){ "-c", p1,
					    "--print-config", NULL }, &out, &err);
	T_CHECK(rc == 0 && !strcmp(first, out),
		"--print-config of the printed file differs from it (exit %d)", rc);
	t_write_file(p2, out, strlen(out));
	printf("%-28s %u lines, loads back, prints the same again\n",
	       "print-config", dt_count_lines(first));
	free(out);
	free(err);
	/* Command-line overrides show in the printed configuration. */
	rc = run_daemon("print3", NULL, (const char *const[]){ "-c", good,
					    "--cache-size", "128M", "--print-config",
					    NULL }, &out, &err);
	T_CHECK(rc == 0 && (strstr(out, "\nsize = 128M\n") ||
			    strstr(out, "\nsize = 134217728\n")),
		"--cache-size 128M does not show in --print-config");
	free(out);
	free(err);
	free(first);

	/* A daemon started from the printed file serves. */
	struct dt_daemon d;
	dt_daemon_init(&d, "printed");
	snprintf(d.conf, sizeof(d.conf), "%s", p1);
	snprintf(d.sock, sizeof(d.sock), "%s/good.sock", dir);
	if (!dt_daemon_start(&d, NULL, 0)) {
		struct ms_client *cl = dt_connect(d.sock, "cfg", NULL);
		T_CHECK(cl != NULL, "cannot connect to the daemon of the printed file");
		/* the cache's memory: the arena (budget) and the staging
		 * buffers, when reads go through them */
		double budget = dt_stat(cl, "budget_bytes");
		double staging = dt_stat(cl, "staging_bytes");
		T_CHECK(budget + staging == 96.0 * 1024 * 1024, "budget_bytes %.0f + "
			"staging_bytes %.0f, configured 96M", budget, staging);
		struct stat st;
		T_CHECK(stat(d.sock, &st) == 0 && (st.st_mode & 0777) == 0640,
			"socket mode 0%o, configured 0640", st.st_mode & 0777);
		ms_client_close(cl);
		T_EQ_U64(dt_stop(&d), 0);
	}
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(240, "t_daemon_config");
	model_path = dt_model("cfg.gguf", "--preset tiny");
	snprintf(dir, sizeof(dir), "%s", t_tmpdir());
	file_errors();
	model_errors();
	socket_errors();
	flag_errors();
	socket_path_107();
	check_and_print();
	printf("%u bad configurations, each refused with its message\n", n_cases);
	dt_check_crashes();
	return t_done();
}
