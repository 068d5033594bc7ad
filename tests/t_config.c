/*
 * t_config - moestreamd's configuration (daemon/config.c): the defaults, the
 * shipped sample etc/moestream.conf (loads, equals the defaults, documents
 * every option exactly as --print-config does), the print -> load round trip
 * (plain, non-default and 4 KiB values), each kind of bad file with the
 * message it must give (file, line, key, allowed range; -EINVAL; nothing
 * changed), a missing file, command-line origins, SIGHUP's apply_live, and
 * the cache config it hands on.
 *
 * Run from the repository root (tests/run.sh does), or set MS_SRC to it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/daemon.h"
#include "testutil.h"

static const char *dir;

/* The first field that differs, or NULL. Field by field (not memcmp), so a
 * failure names the option. */
static const char *cfg_diff(const struct ms_config *a, const struct ms_config *b)
{
#define SAME_STR(f) if (strcmp(a->f, b->f)) return #f
#define SAME(f) if (a->f != b->f) return #f
	SAME_STR(model_path);
	SAME_STR(socket_path);
	SAME(socket_mode);
	SAME_STR(allow_users);
	SAME_STR(allow_groups);
	SAME(max_clients);
	SAME(idle_timeout_s);
	SAME(cache_size);
	SAME_STR(pin);
	SAME(pin_top);
	SAME(hugepages);
	SAME(numa_node);
	SAME_STR(gpu_pci);
	SAME(acquire_timeout_ms);
	SAME(lock);
	SAME(io_engine);
	SAME(io_threads);
	SAME(io_queue_depth);
	SAME(io_request_size);
	SAME(io_prefetch_inflight);
	SAME(io_sqpoll);
	SAME(io_direct);
	SAME(io_staging);
	SAME(prefetch_policy);
	SAME(prefetch_depth);
	SAME(prefetch_width);
	SAME(prefetch_min_prob);
	SAME(prefetch_max_inflight);
	SAME(log_level);
	return NULL;
#undef SAME
#undef SAME_STR
}

static const char *write_conf(const char *name, const char *text)
{
	static char path[8][4096];
	static unsigned next;
	char *p = path[next++ % 8];
	snprintf(p, sizeof(path[0]), "%s/%s", dir, name);
	if (t_write_file(p, text, strlen(text)))
		t_fatal("cannot write %s", p);
	return p;
}

static char *print_to_string(const struct ms_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		t_fatal("open_memstream: %s", strerror(errno));
	ms_config_print(c, f);
	fclose(f);
	return buf;
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void)
{
	struct ms_config c;
	ms_config_defaults(&c);
	T_CHECK(!strcmp(c.model_path, ""), "model_path '%s'", c.model_path);
	T_CHECK(!strcmp(c.socket_path, MS_DEFAULT_SOCKET), "socket_path '%s'",
		c.socket_path);
	T_EQ_U64(c.socket_mode, 0660);
	T_CHECK(!strcmp(c.allow_users, "") && !strcmp(c.allow_groups, ""),
		"allow lists '%s' '%s'", c.allow_users, c.allow_groups);
	T_EQ_U64(c.max_clients, 64);
	T_EQ_U64(c.idle_timeout_s, 0);
	T_EQ_U64(c.cache_size, 4ull << 30);
	T_CHECK(!strcmp(c.pin, ""), "pin '%s'", c.pin);
	T_EQ_U64(c.pin_top, 0);
	T_EQ_U64(c.hugepages, MS_HUGE_AUTO);
	T_CHECK(c.numa_node == MS_NUMA_AUTO, "numa_node %d", c.numa_node);
	T_CHECK(!strcmp(c.gpu_pci, ""), "gpu '%s'", c.gpu_pci);
	T_EQ_U64(c.acquire_timeout_ms, 5000);
	T_EQ_U64(c.lock, true);
	T_EQ_U64(c.io_engine, MS_IO_ENGINE_AUTO);
	T_EQ_U64(c.io_threads, 2);
	T_EQ_U64(c.io_queue_depth, 64);
	T_EQ_U64(c.io_request_size, 1u << 20);
	T_EQ_U64(c.io_sqpoll, false);
	T_EQ_U64(c.io_direct, MS_IO_DIRECT_AUTO);
	T_EQ_U64(c.io_staging, MS_STAGING_AUTO);
	T_EQ_U64(c.prefetch_policy, MS_PREFETCH_AUTO);
	T_EQ_U64(c.prefetch_depth, 1);
	T_EQ_U64(c.prefetch_width, 8);
	T_CHECK(c.prefetch_min_prob == 0.1, "min_prob %g", c.prefetch_min_prob);
	T_EQ_U64(c.prefetch_max_inflight, 0);
	T_EQ_U64(c.log_level, MS_LOG_NOTICE);

	/* Defaults are reproducible byte for byte. */
	struct ms_config d;
	memset(&d, 0xa5, sizeof(d));
	ms_config_defaults(&d);
	T_CHECK(!memcmp(&c, &d, sizeof(c)), "two ms_config_defaults differ");
}

/* ---- the shipped sample --------------------------------------------------- */

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t cap = 0, len = 0;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 65536;
			char *nb = realloc(buf, cap);
			if (!nb)
				t_fatal("out of memory");
			buf = nb;
		}
		size_t n = fread(buf + len, 1, 4096, f);
		len += n;
		if (!n)
			break;
	}
	fclose(f);
	buf[len] = '\0';
	return buf;
}

/* Is `key = value` line? (what print writes for an option) */
static bool is_key_line(const char *l)
{
	size_t n = strspn(l, "abcdefghijklmnopqrstuvwxyz_");
	return n && !strncmp(l + n, " =", 2);
}

static void test_sample(void)
{
	const char *src = getenv("MS_SRC");
	char path[4096];
	snprintf(path, sizeof(path), "%s/etc/moestream.conf",
		 src && *src ? src : ".");

	struct ms_config c, d;
	struct ms_err err = { 0 };
	ms_config_defaults(&c);
	ms_config_defaults(&d);
	int rc = ms_config_load(&c, path, true, &err);
	T_CHECK(rc == 0, "%s: load returned %d: %s", path, rc, err.msg);
	const char *f = cfg_diff(&c, &d);
	T_CHECK(!f, "%s: %s differs from the default (the sample should only "
		"comment defaults out)", path, f);

	/* The sample documents every option as --print-config does: each
	 * line of print(defaults) from [model] on appears in the sample in
	 * order, option lines commented out ("# key = default"). */
	char *sample = read_all(path);
	char *printed = print_to_string(&d);
	if (!sample) {
		T_CHECK(0, "cannot read %s", path);
		free(printed);
		return;
	}
	char *pos = sample, *save = NULL;
	unsigned lines = 0, options = 0;
	bool started = false;
	for (char *l = strtok_r(printed, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		if (!started && strcmp(l, "[model]"))
			continue;
		started = true;
		char want[8192];
		if (is_key_line(l)) {
			snprintf(want, sizeof(want), "# %s\n", l);
			options++;
		} else {
			snprintf(want, sizeof(want), "%s\n", l);
		}
		/* Whole lines only: the match must start a line. */
		char *hit = pos;
		while ((hit = strstr(hit, want)) && hit != sample &&
		       hit[-1] != '\n')
			hit++;
		if (!hit) {
			T_CHECK(0, "%s lacks (after its previous match) the "
				"line '%.*s' that --print-config writes for the "
				"defaults", path, (int)strlen(want) - 1, want);
			break;
		}
		pos = hit + strlen(want);
		lines++;
	}
	printf("sample: %s loads, equals the defaults, holds all %u lines "
	       "(%u options) of print(defaults)\n", path, lines, options);
	T_CHECK(options >= 27, "only %u options printed", options);
	free(sample);
	free(printed);
}

/* ---- print -> load ---------------------------------------------------------- */

static void set_ok(struct ms_config *c, const char *s, const char *k,
		   const char *v)
{
	struct ms_err err = { 0 };
	int rc = ms_config_set(c, s, k, v, "test", &err);
	T_CHECK(rc == 0, "set [%s] %s = '%s' returned %d: %s", s, k, v, rc,
		err.msg);
}

static void round_trip(const char *name, const struct ms_config *c)
{
	char *text = print_to_string(c);
	const char *p = write_conf(name, text);
	struct ms_config back;
	struct ms_err err = { 0 };
	ms_config_defaults(&back);
	int rc = ms_config_load(&back, p, true, &err);
	T_CHECK(rc == 0, "%s: reloading the printed config: %d: %s", name, rc,
		err.msg);
	const char *f = cfg_diff(c, &back);
	T_CHECK(!f, "%s: %s differs after print -> load", name, f);
	/* And printing again gives the same text. */
	char *again = print_to_string(&back);
	T_CHECK(!strcmp(text, again), "%s: print differs after a round trip",
		name);
	free(text);
	free(again);
}

static void test_round_trip(void)
{
	struct ms_config c;
	ms_config_defaults(&c);
	round_trip("defaults.conf", &c);

	/* Every option away from its default. */
	set_ok(&c, "model", "path", "/srv/models/x y/GLM-00001-of-00005.gguf");
	set_ok(&c, "socket", "path", "/tmp/ms test.sock");
	set_ok(&c, "socket", "mode", "600");
	set_ok(&c, "socket", "allow_users", " alice , 1001,bob$ ");
	set_ok(&c, "socket", "allow_groups", "video");
	set_ok(&c, "socket", "max_clients", "4096");
	set_ok(&c, "socket", "idle_timeout", "30");
	set_ok(&c, "cache", "size", "1.5G");
	set_ok(&c, "cache", "pin", "3:17,3:42");
	set_ok(&c, "cache", "pin_top", "100");
	set_ok(&c, "cache", "hugepages", "ON");
	set_ok(&c, "cache", "numa_node", "1");
	set_ok(&c, "cache", "gpu", "65:00.0");
	set_ok(&c, "cache", "acquire_timeout", "250");
	set_ok(&c, "cache", "lock", "no");
	set_ok(&c, "io", "engine", "preadv");
	set_ok(&c, "io", "threads", "8");
	set_ok(&c, "io", "queue_depth", "128");
	set_ok(&c, "io", "request_size", "256K");
	set_ok(&c, "io", "sqpoll", "yes");
	set_ok(&c, "io", "direct", "off");
	set_ok(&c, "io", "staging", "24M");
	set_ok(&c, "prefetch", "policy", "history");
	set_ok(&c, "prefetch", "depth", "4");
	set_ok(&c, "prefetch", "width", "16");
	set_ok(&c, "prefetch", "min_prob", "0.35");
	set_ok(&c, "prefetch", "max_inflight", "123456789");
	set_ok(&c, "log", "level", "debug");
	T_EQ_U64(c.socket_mode, 0600);
	T_CHECK(!strcmp(c.allow_users, "alice,1001,bob$"), "allow_users "
		"normalized to '%s'", c.allow_users);
	T_EQ_U64(c.cache_size, 1536ull << 20);
	T_CHECK(!strcmp(c.gpu_pci, "0000:65:00.0"), "gpu normalized to '%s'",
		c.gpu_pci);
	T_EQ_U64(c.hugepages, MS_HUGE_ON);
	T_EQ_U64(c.lock, false);
	T_EQ_U64(c.io_sqpoll, true);
	T_EQ_U64(c.io_staging, 24ull << 20);
	T_EQ_U64(c.log_level, MS_LOG_DEBUG);
	struct ms_config d;
	ms_config_defaults(&d);
	const char *f = cfg_diff(&c, &d);
	T_CHECK(f, "setting every option changed nothing");
	round_trip("changed.conf", &c);
	set_ok(&c, "cache", "numa_node", "interleave");
	set_ok(&c, "prefetch", "min_prob", "1");
	set_ok(&c, "io", "staging", "OFF");
	T_EQ_U64(c.io_staging, 0);
	round_trip("changed2.conf", &c);
	set_ok(&c, "cache", "numa_node", "none");
	set_ok(&c, "prefetch", "min_prob", "0");
	set_ok(&c, "io", "staging", "4100K");
	round_trip("changed3.conf", &c);

	/* Values far longer than inih's 200-byte line: a 4 KiB pin list and
	 * model path survive, and line numbers after them stay right. */
	char pin[4096], path[4096];
	size_t n = 0;
	for (unsigned i = 0; n + 16 < sizeof(pin); i++)
		n += (size_t)snprintf(pin + n, sizeof(pin) - n, "%s%u:%u",
				      i ? "," : "", i / 8, i % 256);
	memset(path, 'p', sizeof(path) - 1);
	path[0] = '/';
	path[sizeof(path) - 1] = '\0';
	set_ok(&c, "cache", "pin", pin);
	set_ok(&c, "model", "path", path);
	T_EQ_U64(strlen(c.pin), n);
	T_EQ_U64(strlen(c.model_path), sizeof(path) - 1);
	round_trip("long.conf", &c);
}

/* ---- good files ------------------------------------------------------------ */

static void test_good_files(void)
{
	struct ms_config c;
	struct ms_err err = { 0 };

	/* Indented keys, CRLF, ':' as separator, inline comments, case. */
	const char *p = write_conf("good.conf",
		"\xEF\xBB\xBF# a BOM, then comments\r\n"
		"; another comment\r\n"
		"[cache]\r\n"
		"   size = 8G   ; inline comment\r\n"
		"\tLock: off\r\n"
		"[IO]\r\n"
		"  request_size = 64K\r\n"
		"[socket]\n"
		"allow_users =\n");
	ms_config_defaults(&c);
	int rc = ms_config_load(&c, p, true, &err);
	T_CHECK(rc == 0, "good.conf: %d: %s", rc, err.msg);
	T_EQ_U64(c.cache_size, 8ull << 30);
	T_EQ_U64(c.lock, false);
	T_EQ_U64(c.io_request_size, 64u << 10);

	/* A missing file that need not exist: 0, nothing changed. */
	struct ms_config d;
	ms_config_defaults(&c);
	ms_config_defaults(&d);
	char missing[4200];
	snprintf(missing, sizeof(missing), "%s/nope/moestream.conf", dir);
	rc = ms_config_load(&c, missing, false, &err);
	T_CHECK(rc == 0, "missing optional file: %d", rc);
	T_CHECK(!cfg_diff(&c, &d), "missing optional file changed %s",
		cfg_diff(&c, &d));

	/* ... and one that must: -ENOENT naming the path. */
	ms_err_clear(&err);
	rc = ms_config_load(&c, missing, true, &err);
	printf("missing: %d: %s\n", rc, err.msg);
	T_CHECK(rc == -ENOENT, "missing file: %d, expected -ENOENT", rc);
	T_CHECK(strstr(err.msg, missing), "missing file: '%s' does not name "
		"'%s'", err.msg, missing);

	/* A directory. */
	ms_err_clear(&err);
	rc = ms_config_load(&c, dir, true, &err);
	T_CHECK(rc == -EISDIR && strstr(err.msg, dir),
		"a directory: %d '%s'", rc, err.msg);
}

/* ---- bad files --------------------------------------------------------------- */

/* Loads `text` as a file: expects -EINVAL, a one-line message naming the
 * file, "FILE:LINE:", and each of the `want` strings (NULL-terminated), and
 * the configuration left as it was. */
static void expect_bad(const char *name, const char *text, int line, ...)
{
	const char *p = write_conf(name, text);
	struct ms_config c, d;
	struct ms_err err = { 0 };
	ms_config_defaults(&c);
	ms_config_defaults(&d);
	int rc = ms_config_load(&c, p, true, &err);
	printf("%-18s -> %d: %s\n", name, rc, err.msg);
	T_CHECK(rc == -EINVAL, "%s: returned %d, expected -EINVAL", name, rc);
	T_CHECK(err.code == -EINVAL, "%s: err.code %d", name, err.code);
	char where[4200];
	snprintf(where, sizeof(where), "%s:%d: ", p, line);
	T_CHECK(!strncmp(err.msg, where, strlen(where)),
		"%s: message '%s' does not start with '%s'", name, err.msg,
		where);
	T_CHECK(!strchr(err.msg, '\n'), "%s: message is not one line", name);
	va_list ap;
	va_start(ap, line);
	for (const char *w; (w = va_arg(ap, const char *));)
		T_CHECK(strstr(err.msg, w), "%s: message '%s' lacks '%s'", name,
			err.msg, w);
	va_end(ap);
	const char *f = cfg_diff(&c, &d);
	T_CHECK(!f, "%s: a failed load changed %s", name, f);
}

static void test_bad_files(void)
{
	expect_bad("unknown-key.conf", "[cache]\nsize = 8G\nsise = 4G\n", 3,
		   "[cache] sise = '4G'", "unknown key",
		   "allowed in [cache]: size, pin, pin_top", NULL);
	expect_bad("unknown-section.conf",
		   "[cache]\nsize = 8G\n\n[cash]\nsize = 4G\n", 4, "[cash]",
		   "unknown section",
		   "allowed: model, socket, cache, io, prefetch, log", NULL);
	expect_bad("empty-section.conf", "[model]\n[extra]\n", 2, "[extra]",
		   "unknown section", NULL);
	expect_bad("size-min.conf", "[cache]\nsize = 1M\n", 2,
		   "[cache] size = '1M'", "below the minimum",
		   "(allowed: 64M..16T)", NULL);
	expect_bad("size-max.conf", "[cache]\nsize = 17T\n", 2,
		   "[cache] size = '17T'", "above the maximum",
		   "(allowed: 64M..16T)", NULL);
	expect_bad("size-suffix.conf", "[cache]\nsize = 4X\n", 2,
		   "[cache] size = '4X'", "not a size", "(allowed: 64M..16T)",
		   NULL);
	expect_bad("size-huge.conf", "[cache]\nsize = 99999999999T\n", 2,
		   "[cache] size", "too large", "64M..16T", NULL);
	expect_bad("enum.conf", "[cache]\nhugepages = maybe\n", 2,
		   "[cache] hugepages = 'maybe'", "unknown value",
		   "(allowed: auto|on|off)", NULL);
	expect_bad("enum-io.conf", "[io]\nengine = aio\n", 2,
		   "[io] engine = 'aio'", "(allowed: auto|io_uring|preadv)",
		   NULL);
	expect_bad("level.conf", "[log]\nlevel = verbose\n", 2,
		   "[log] level = 'verbose'",
		   "(allowed: error|warning|notice|info|debug)", NULL);
	expect_bad("bool.conf", "[cache]\nlock = perhaps\n", 2,
		   "[cache] lock = 'perhaps'", "not a boolean",
		   "(allowed: true|false|yes|no|on|off|1|0)", NULL);
	expect_bad("octal.conf", "[socket]\nmode = 0689\n", 2,
		   "[socket] mode = '0689'", "not an octal mode",
		   "(allowed: octal 0000..0777)", NULL);
	expect_bad("octal-big.conf", "[socket]\nmode = 4777\n", 2,
		   "[socket] mode = '4777'", "0000..0777", NULL);
	expect_bad("uint-range.conf", "[socket]\nmax_clients = 5000\n", 2,
		   "[socket] max_clients = '5000'", "out of range",
		   "(allowed: 1..4096)", NULL);
	expect_bad("uint-zero.conf", "[io]\nthreads = 0\n", 2,
		   "[io] threads = '0'", "(allowed: 1..64)", NULL);
	expect_bad("uint-neg.conf", "[io]\nqueue_depth = -1\n", 2,
		   "[io] queue_depth = '-1'", "not a whole number",
		   "(allowed: 1..4096)", NULL);
	expect_bad("pin-top.conf", "[cache]\npin_top = 65536\n", 2,
		   "[cache] pin_top", "(allowed: 0..65535)", NULL);
	expect_bad("numa.conf", "[cache]\nnuma_node = 5000\n", 2,
		   "[cache] numa_node = '5000'",
		   "(allowed: auto|interleave|none|0..1023)", NULL);
	expect_bad("numa-word.conf", "[cache]\nnuma_node = local\n", 2,
		   "[cache] numa_node = 'local'", "auto|interleave|none", NULL);
	expect_bad("duplicate.conf",
		   "[cache]\nsize = 8G\n[io]\nthreads = 4\n[cache]\nsize = 8G\n",
		   6, "[cache] size = '8G'", "duplicate key",
		   "first set on line 2", NULL);
	expect_bad("syntax.conf", "[cache]\nsize = 8G\nlock\n", 3,
		   "syntax error", "'lock'", NULL);
	expect_bad("syntax-section.conf", "[cache\nsize = 8G\n", 1,
		   "syntax error", "'[cache'", NULL);
	expect_bad("request-size.conf", "[io]\nrequest_size = 6K\n", 2,
		   "[io] request_size = '6K'", "not a multiple of 4096",
		   "(allowed: 4K..64M, a multiple of 4K)", NULL);
	expect_bad("request-min.conf", "[io]\nrequest_size = 512\n", 2,
		   "[io] request_size = '512'", "4K..64M", NULL);
	/* [io] staging: auto, off, or a size as request_size's */
	static const char *const staging_bad[][2] = {
		{ "6K", "not a multiple of 4096" }, { "2G", "above the maximum" },
		{ "0", "below the minimum" },       { "on", "not a size" },
	};
	for (size_t i = 0; i < sizeof(staging_bad) / sizeof(staging_bad[0]); i++) {
		char text[64], name[64], what[64];
		snprintf(text, sizeof(text), "[io]\nstaging = %s\n", staging_bad[i][0]);
		snprintf(name, sizeof(name), "staging-%zu.conf", i);
		snprintf(what, sizeof(what), "[io] staging = '%s'", staging_bad[i][0]);
		expect_bad(name, text, 2, what, staging_bad[i][1],
			   "(allowed: auto|off|4K..1G, a multiple of 4K)", NULL);
	}
	expect_bad("min-prob.conf", "[prefetch]\nmin_prob = 1.5\n", 2,
		   "[prefetch] min_prob = '1.5'", "(allowed: 0..1)", NULL);
	expect_bad("min-prob-nan.conf", "[prefetch]\nmin_prob = nan\n", 2,
		   "[prefetch] min_prob = 'nan'", "not a number", NULL);
	expect_bad("depth.conf", "[prefetch]\ndepth = 17\n", 2,
		   "[prefetch] depth = '17'", "(allowed: 0..16)", NULL);
	expect_bad("gpu.conf", "[cache]\ngpu = 65:00\n", 2,
		   "[cache] gpu = '65:00'", "not a PCI address",
		   "0000:65:00.0", NULL);
	expect_bad("gpu-dev.conf", "[cache]\ngpu = 0000:65:20.0\n", 2,
		   "[cache] gpu", "function above 7", NULL);
	expect_bad("pin.conf", "[cache]\npin = 3:17,3-42\n", 2,
		   "[cache] pin = '3:17,3-42'", "'3-42'",
		   "block:expert pairs", NULL);
	expect_bad("pin-empty.conf", "[cache]\npin = 3:17,,3:42\n", 2,
		   "[cache] pin", "an empty element", NULL);
	expect_bad("users.conf", "[socket]\nallow_users = alice,b ob\n", 2,
		   "[socket] allow_users", "'b ob'", "user names or uids", NULL);
	expect_bad("socket-abstract.conf", "[socket]\npath = @moestream\n", 2,
		   "[socket] path = '@moestream'", "abstract", NULL);
	expect_bad("before-section.conf", "size = 4G\n", 1, "size = '4G'",
		   "before any [section]", NULL);

	/* Line numbers stay right after an over-long comment and value. */
	char text[2048];
	char longc[400];
	memset(longc, 'x', sizeof(longc) - 1);
	longc[sizeof(longc) - 1] = '\0';
	snprintf(text, sizeof(text),
		 "# %s\n[model]\npath = /%s\n[cache]\n  lock = true\n"
		 "  size = 1K\n", longc, longc);
	expect_bad("long-lines.conf", text, 6, "[cache] size = '1K'",
		   "64M..16T", NULL);

	/* A socket path longer than sun_path. */
	snprintf(text, sizeof(text), "[socket]\npath = /%.*s\n", 120, longc);
	expect_bad("socket-long.conf", text, 2, "[socket] path", "too long",
		   "at most 107", NULL);

	/* A key so long that inih's 200-byte copy of the line has no '=':
	 * inih refuses the line, and that is reported too. */
	snprintf(text, sizeof(text), "[cache]\nlock = true\n%.300s = 1\n",
		 longc);
	expect_bad("long-key.conf", text, 3, "syntax error", NULL);

	/* The first error is the one reported, even when a later line has
	 * another kind. */
	expect_bad("first-error.conf",
		   "[io]\nthreads = 99\n[nope]\nbogus line\n", 2,
		   "[io] threads = '99'", "1..64", NULL);
	expect_bad("first-error2.conf",
		   "[io]\nbogus line\nthreads = 99\n", 2, "syntax error",
		   NULL);
}

/* ---- ms_config_set --------------------------------------------------------- */

static void test_set(void)
{
	struct ms_config c, d;
	struct ms_err err = { 0 };
	ms_config_defaults(&c);
	ms_config_defaults(&d);

	int rc = ms_config_set(&c, "cache", "size", "1K", "--cache-size", &err);
	printf("set: %d: %s\n", rc, err.msg);
	T_CHECK(rc == -EINVAL, "--cache-size 1K: %d", rc);
	T_CHECK(!strncmp(err.msg, "--cache-size: ", 14), "origin missing: "
		"'%s'", err.msg);
	T_CHECK(strstr(err.msg, "[cache] size = '1K'") &&
		strstr(err.msg, "64M..16T"), "message '%s'", err.msg);
	T_CHECK(!cfg_diff(&c, &d), "a refused set changed %s", cfg_diff(&c, &d));

	ms_err_clear(&err);
	rc = ms_config_set(&c, "cache", "size", "48G", "--cache-size", &err);
	T_CHECK(rc == 0 && c.cache_size == 48ull << 30, "--cache-size 48G: %d "
		"%llu %s", rc, (unsigned long long)c.cache_size, err.msg);

	ms_err_clear(&err);
	rc = ms_config_set(&c, "socket", "path", "/tmp/a\nb", "--socket", &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "--socket: ") &&
		strstr(err.msg, "control character"), "newline in a path: %d "
		"'%s'", rc, err.msg);
	ms_err_clear(&err);
	rc = ms_config_set(&c, "model", "path", "/m/a ;b.gguf", "--model", &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "--model: "), "' ;' in a "
		"path: %d '%s'", rc, err.msg);
	ms_err_clear(&err);
	rc = ms_config_set(&c, "cache", "bogus", "1", "--bogus", &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "--bogus: ") &&
		strstr(err.msg, "unknown key"), "unknown key: %d '%s'", rc,
		err.msg);
	ms_err_clear(&err);
	rc = ms_config_set(&c, "nope", "size", "1", NULL, &err);
	T_CHECK(rc == -EINVAL && !strncmp(err.msg, "[nope]", 6),
		"unknown section without origin: %d '%s'", rc, err.msg);
	rc = ms_config_set(&c, "log", "level", "info", NULL, NULL);
	T_CHECK(rc == 0 && c.log_level == MS_LOG_INFO, "NULL err: %d", rc);
}

/* ---- SIGHUP ------------------------------------------------------------------ */

static void test_apply_live(void)
{
	struct ms_config live, fresh;
	char refused[256];
	ms_config_defaults(&live);
	ms_config_defaults(&fresh);

	T_EQ_U64(ms_config_apply_live(&live, &fresh, refused, sizeof(refused)),
		 0);
	T_CHECK(!strcmp(refused, ""), "nothing changed, refused '%s'", refused);

	set_ok(&fresh, "cache", "size", "8G");
	set_ok(&fresh, "socket", "path", "/tmp/other.sock");
	set_ok(&fresh, "io", "threads", "4");
	set_ok(&fresh, "prefetch", "depth", "3");
	set_ok(&fresh, "prefetch", "min_prob", "0.5");
	set_ok(&fresh, "log", "level", "debug");
	set_ok(&fresh, "socket", "max_clients", "10");
	set_ok(&fresh, "socket", "allow_users", "alice");
	set_ok(&fresh, "cache", "acquire_timeout", "100");
	set_ok(&fresh, "cache", "pin_top", "5");
	int n = ms_config_apply_live(&live, &fresh, refused, sizeof(refused));
	printf("apply_live: %d applied, refused '%s'\n", n, refused);
	T_EQ_U64(n, 7);
	T_CHECK(!strcmp(refused, "socket.path,cache.size,io.threads"),
		"refused '%s'", refused);
	T_EQ_U64(live.cache_size, 4ull << 30);
	T_CHECK(!strcmp(live.socket_path, MS_DEFAULT_SOCKET), "socket path "
		"changed live to '%s'", live.socket_path);
	T_EQ_U64(live.io_threads, 2);
	T_EQ_U64(live.prefetch_depth, 3);
	T_CHECK(live.prefetch_min_prob == 0.5, "min_prob %g",
		live.prefetch_min_prob);
	T_EQ_U64(live.log_level, MS_LOG_DEBUG);
	T_EQ_U64(live.max_clients, 10);
	T_CHECK(!strcmp(live.allow_users, "alice"), "allow_users '%s'",
		live.allow_users);
	T_EQ_U64(live.acquire_timeout_ms, 100);
	T_EQ_U64(live.pin_top, 5);

	/* Again: the live ones are now equal; the refused still are. */
	n = ms_config_apply_live(&live, &fresh, refused, sizeof(refused));
	T_EQ_U64(n, 0);
	T_CHECK(!strcmp(refused, "socket.path,cache.size,io.threads"),
		"refused again '%s'", refused);

	/* A small buffer holds whole names only; NULL is fine. */
	char small[16];
	ms_config_apply_live(&live, &fresh, small, sizeof(small));
	T_CHECK(!strcmp(small, "socket.path"), "small buffer '%s'", small);
	ms_config_apply_live(&live, &fresh, NULL, 0);

	/* Every restart-only option is refused, named section.key. */
	struct ms_config a, b;
	ms_config_defaults(&a);
	ms_config_defaults(&b);
	set_ok(&b, "model", "path", "/m.gguf");
	set_ok(&b, "socket", "mode", "0600");
	set_ok(&b, "cache", "pin", "1:1");
	set_ok(&b, "cache", "hugepages", "off");
	set_ok(&b, "cache", "numa_node", "0");
	set_ok(&b, "cache", "gpu", "0000:01:00.0");
	set_ok(&b, "cache", "lock", "false");
	set_ok(&b, "io", "engine", "preadv");
	set_ok(&b, "io", "queue_depth", "8");
	set_ok(&b, "io", "request_size", "64K");
	set_ok(&b, "io", "prefetch_inflight", "8M");
	set_ok(&b, "io", "sqpoll", "true");
	set_ok(&b, "io", "direct", "on");
	set_ok(&b, "io", "staging", "off");
	char all[1024];
	n = ms_config_apply_live(&a, &b, all, sizeof(all));
	T_EQ_U64(n, 0);
	T_CHECK(!strcmp(all, "model.path,socket.mode,cache.pin,cache.hugepages,"
			"cache.numa_node,cache.gpu,cache.lock,io.engine,"
			"io.queue_depth,io.request_size,io.prefetch_inflight,"
			"io.sqpoll,io.direct,io.staging"),
		"restart-only refused '%s'", all);
}

/* ---- to the cache ------------------------------------------------------------ */

static void test_to_cache(void)
{
	struct ms_config c;
	struct ms_cache_config cc;
	ms_config_defaults(&c);
	ms_config_to_cache(&c, &cc);
	T_EQ_U64(cc.arena.size, 4ull << 30);
	T_CHECK(cc.arena.gpu_pci == NULL && cc.pin == NULL,
		"empty gpu/pin should be NULL");
	T_EQ_U64(cc.arena.lock, true);
	T_EQ_U64(cc.io.threads, 2);
	T_EQ_U64(cc.io.queue_depth, 64);
	T_EQ_U64(cc.io.request_size, 1u << 20);
	T_EQ_U64(cc.io.prefetch_inflight, 32u << 20);
	T_EQ_U64(cc.io.fixed_buffers, true); /* the engine's default kept */
	T_EQ_U64(cc.max_prefetch_bytes, 0);
	T_EQ_U64(cc.staging, MS_STAGING_AUTO);

	set_ok(&c, "cache", "size", "96G");
	set_ok(&c, "cache", "hugepages", "on");
	set_ok(&c, "cache", "numa_node", "interleave");
	set_ok(&c, "cache", "gpu", "0000:65:00.0");
	set_ok(&c, "cache", "lock", "off");
	set_ok(&c, "cache", "pin", "1:2");
	set_ok(&c, "cache", "pin_top", "7");
	set_ok(&c, "cache", "acquire_timeout", "123");
	set_ok(&c, "io", "engine", "io_uring");
	set_ok(&c, "io", "direct", "on");
	set_ok(&c, "io", "threads", "3");
	set_ok(&c, "io", "queue_depth", "17");
	set_ok(&c, "io", "request_size", "2M");
	set_ok(&c, "io", "prefetch_inflight", "0");
	set_ok(&c, "io", "sqpoll", "on");
	set_ok(&c, "io", "staging", "32M");
	set_ok(&c, "prefetch", "max_inflight", "1G");
	ms_config_to_cache(&c, &cc);
	T_EQ_U64(cc.arena.size, 96ull << 30);
	T_EQ_U64(cc.arena.huge, MS_HUGE_ON);
	T_CHECK(cc.arena.numa_node == MS_NUMA_INTERLEAVE, "numa %d",
		cc.arena.numa_node);
	T_CHECK(cc.arena.gpu_pci && !strcmp(cc.arena.gpu_pci, "0000:65:00.0"),
		"gpu_pci");
	T_EQ_U64(cc.arena.lock, false);
	T_CHECK(cc.pin && !strcmp(cc.pin, "1:2"), "pin");
	T_EQ_U64(cc.pin_top, 7);
	T_EQ_U64(cc.acquire_timeout_ms, 123);
	T_EQ_U64(cc.io.engine, MS_IO_ENGINE_URING);
	T_EQ_U64(cc.io.direct, MS_IO_DIRECT_ON);
	T_EQ_U64(cc.io.threads, 3);
	T_EQ_U64(cc.io.queue_depth, 17);
	T_EQ_U64(cc.io.request_size, 2u << 20);
	T_EQ_U64(cc.io.prefetch_inflight, 0);
	T_EQ_U64(cc.io.sqpoll, true);
	T_EQ_U64(cc.staging, 32ull << 20);
	T_EQ_U64(cc.max_prefetch_bytes, 1ull << 30);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* logs interleave by line */
	dir = t_tmpdir();
	test_defaults();
	test_sample();
	test_round_trip();
	test_good_files();
	test_bad_files();
	test_set();
	test_apply_live();
	test_to_cache();
	return t_done();
}
