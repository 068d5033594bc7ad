/*
 * t_daemon.c - moestreamd's life: start, a rival, a crash, a restart, the
 * commands that talk to it, limits, reload, and stop.
 *
 * 1. `moestream get L:E` (all projections, --proj, to a pipe) gives exactly
 *    the file's bytes at the expert's extents; `moestream status`, `stats
 *    --json` (the daemon's pid) and `stats --prometheus` answer.
 * 2. A second daemon on the same socket path refuses to start (exit != 0,
 *    "another moestreamd answers"), and leaves the first one's socket and
 *    clients alone.
 * 3. max_clients: one connection more is refused; idle_timeout: a silent
 *    client without pins is disconnected.
 * 4. SIGHUP with a broken file keeps the running configuration; SIGHUP
 *    with a changed restart-only option names it in the log.
 * 5. A daemon killed with SIGKILL leaves its socket file behind: the next
 *    daemon replaces it (nothing answers on it) and serves.
 * 6. SIGTERM with clients connected (holding pins, with acquires in flight,
 *    and one that never said HELLO): the socket file disappears and the
 *    daemon exits 0 within a few seconds; the clients see the end. SIGINT
 *    does the same.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemontest.h"

static const char *model_path;
static struct ms_model *model;
static uint64_t rng;

/* The file's bytes of an expert: all projections, or projection j. */
static uint8_t *file_bytes(uint32_t layer, uint32_t expert, int j, size_t *len)
{
	const struct ms_extent *e = ms_model_expert(model, layer, expert);
	const struct ms_moe_layer *L = &model->layers[layer];
	size_t total = 0;
	for (uint32_t k = 0; k < L->n_proj; k++)
		if (j < 0 || (int)k == j)
			total += e[k].bytes;
	uint8_t *buf = malloc(total ? total : 1);
	size_t at = 0;
	for (uint32_t k = 0; k < L->n_proj; k++) {
		if (j >= 0 && (int)k != j)
			continue;
		if (pread(model->shards[e[k].shard]->fd, buf + at, e[k].bytes,
			  (off_t)e[k].offset) != (ssize_t)e[k].bytes)
			t_fatal("pread of the model");
		at += e[k].bytes;
	}
	*len = total;
	return buf;
}

static void cmp_file(const char *what, const char *path, const uint8_t *want,
		     size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		t_fail_at(__FILE__, __LINE__, "%s: %s: %s", what, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	uint8_t *got = malloc(len + 1);
	ssize_t n = read(fd, got, len + 1);
	close(fd);
	if (n != (ssize_t)len || (size_t)st.st_size != len) {
		t_fail_at(__FILE__, __LINE__, "%s: %lld bytes, the file's extents %zu",
			  what, (long long)st.st_size, len);
	} else if (memcmp(got, want, len)) {
		size_t k = 0;
		while (got[k] == want[k])
			k++;
		t_fail_at(__FILE__, __LINE__, "%s: differs from the model file at byte "
			  "%zu of %zu", what, k, len);
	}
	free(got);
}

static void test_commands(const struct dt_daemon *d)
{
	char cmd[2048], out[600];
	uint64_t bytes = 0;
	for (int i = 0; i < 6; i++) {
		uint32_t l = (uint32_t)(t_rand(&rng) % model->n_layers);
		uint32_t e = (uint32_t)(t_rand(&rng) % model->n_expert);
		uint32_t b = model->layers[l].block;
		int j = i % 3 == 2 ? (int)(t_rand(&rng) % model->layers[l].n_proj) : -1;
		snprintf(out, sizeof(out), "%s/get-%u-%u.bin", t_tmpdir(), b, e);
		if (i % 3 == 1) /* to a pipe */
			snprintf(cmd, sizeof(cmd), "%s get %u:%u --socket %s | cat > %s",
				 t_build_path("moestream"), b, e, d->sock, out);
		else
			snprintf(cmd, sizeof(cmd), "%s get %u:%u --socket %s%s%s -o %s",
				 t_build_path("moestream"), b, e, d->sock,
				 j >= 0 ? " --proj " : "",
				 j >= 0 ? ms_proj_name(model->layers[l].proj[j]) : "", out);
		int rc = t_run(cmd, NULL, 0);
		T_CHECK(rc == 0, "'%s' exited %d", cmd, rc);
		size_t len;
		uint8_t *want = file_bytes(l, e, j, &len);
		char what[128];
		snprintf(what, sizeof(what), "moestream get %u:%u%s%s%s", b, e,
			 j >= 0 ? " --proj " : "",
			 j >= 0 ? ms_proj_name(model->layers[l].proj[j]) : "",
			 i % 3 == 1 ? " | cat" : "");
		cmp_file(what, out, want, len);
		printf("%-40s %zu bytes equal to the file\n", what, len);
		bytes += len;
		free(want);
	}
	printf("moestream get: %llu bytes compared\n", (unsigned long long)bytes);
	snprintf(cmd, sizeof(cmd), "%s get %u:0 --socket %s -o /dev/null 2>/dev/null",
		 t_build_path("moestream"), model->n_block + 3, d->sock);
	T_CHECK(t_run(cmd, NULL, 0) == 1, "moestream get of a block past the model "
		"did not exit 1");
	snprintf(cmd, sizeof(cmd), "%s get %u:%u --socket %s -o /dev/null 2>/dev/null",
		 t_build_path("moestream"), model->layers[0].block, model->n_expert,
		 d->sock);
	T_CHECK(t_run(cmd, NULL, 0) == 1, "moestream get of expert n_expert did not "
		"exit 1");

	char *text = NULL;
	snprintf(cmd, sizeof(cmd), "%s status --socket %s", t_build_path("moestream"),
		 d->sock);
	int rc = t_run(cmd, &text, 65536);
	T_CHECK(rc == 0 && strstr(text, "moestreamd"), "moestream status: exit %d:\n%s",
		rc, text);
	free(text);
	snprintf(cmd, sizeof(cmd), "%s stats --json --socket %s",
		 t_build_path("moestream"), d->sock);
	rc = t_run(cmd, &text, 65536);
	cJSON *o = cJSON_Parse(text);
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(o, "pid");
	T_CHECK(rc == 0 && cJSON_IsNumber(pid) && pid->valuedouble == (double)d->pid,
		"moestream stats --json: exit %d, pid %s (daemon %d)", rc,
		cJSON_IsNumber(pid) ? "a number" : "missing", (int)d->pid);
	/* experts were read above: the engine was busy for a while, and not
	 * longer than the daemon has been up */
	const cJSON *busy = cJSON_GetObjectItemCaseSensitive(o, "io_busy_ns");
	const cJSON *up = cJSON_GetObjectItemCaseSensitive(o, "uptime_s");
	T_CHECK(cJSON_IsNumber(busy) && cJSON_IsNumber(up) && busy->valuedouble > 0 &&
			busy->valuedouble <= up->valuedouble * 1e9,
		"stats io_busy_ns %g not in (0, uptime %g s]",
		cJSON_IsNumber(busy) ? busy->valuedouble : -1.0,
		cJSON_IsNumber(up) ? up->valuedouble : -1.0);
	cJSON_Delete(o);
	free(text);
	snprintf(cmd, sizeof(cmd), "%s stats --socket %s", t_build_path("moestream"),
		 d->sock);
	rc = t_run(cmd, &text, 65536);
	T_CHECK(rc == 0 && strstr(text, "disk busy (s)") &&
			strstr(text, "read GB/s while busy"),
		"moestream stats: exit %d, no disk busy lines:\n%s", rc, text);
	free(text);
	snprintf(cmd, sizeof(cmd), "%s stats --prometheus --socket %s",
		 t_build_path("moestream"), d->sock);
	rc = t_run(cmd, &text, 65536);
	T_CHECK(rc == 0 && strstr(text, "\nmoestream_hits "),
		"moestream stats --prometheus: exit %d", rc);
	free(text);
}

static void test_rival(struct dt_daemon *a)
{
	struct ms_client *c = dt_connect(a->sock, "before-rival", NULL);
	T_CHECK(c != NULL, "cannot connect to the first daemon");
	struct stat st0, st1;
	lstat(a->sock, &st0);
	struct dt_daemon b;
	dt_daemon_init(&b, "rival");
	snprintf(b.conf, sizeof(b.conf), "%s", a->conf); /* same socket path */
	const char *argv[] = { t_build_path("moestreamd"), "-c", b.conf, "--foreground",
			       NULL };
	int64_t t0 = dt_now_ms();
	int rc = dt_exec((char *const *)argv, b.log, b.log, 30000);
	int64_t ms = dt_now_ms() - t0;
	char *log = dt_slurp(b.log);
	const char *line = strstr(log, "another moestreamd answers");
	printf("second daemon on the same socket: exit %d after %lld ms: %.*s\n", rc,
	       (long long)ms, line ? (int)strcspn(line, "\n") : 0, line ? line : "");
	T_CHECK(rc > 0 && rc < 128, "a second daemon on %s exited %d", a->sock, rc);
	T_CHECK(line != NULL, "the second daemon did not say another one answers:\n%s",
		log);
	T_CHECK(!dt_crash_in(log), "the second daemon crashed:\n%s", log);
	free(log);
	T_CHECK(lstat(a->sock, &st1) == 0 && st1.st_ino == st0.st_ino,
		"the second daemon replaced or removed the first one's socket");
	T_CHECK(c && ms_client_ping(c, 2000) == 0, "the first daemon's client lost it");
	struct ms_client *c2 = dt_connect(a->sock, "after-rival", NULL);
	T_CHECK(c2 != NULL, "cannot connect to the first daemon after the rival");
	if (c2)
		T_CHECK(dt_stat(c2, "pid") == (double)a->pid,
			"someone else answers on the socket");
	ms_client_close(c2);
	ms_client_close(c);
}

static void test_limits(void)
{
	struct dt_daemon d;
	if (dt_start(&d, "limits", model_path,
		     "[socket]\nmax_clients = 3\nidle_timeout = 1\n"))
		return;
	struct ms_client *c[4];
	struct ms_err err = { 0 };
	for (int i = 0; i < 3; i++) {
		c[i] = dt_connect(d.sock, "limit", &err);
		T_CHECK(c[i] != NULL, "client %d of max_clients = 3: %s", i + 1, err.msg);
	}
	c[3] = dt_connect(d.sock, "one-too-many", &err);
	printf("max_clients = 3: a 4th connection: %s\n",
	       c[3] ? "ACCEPTED" : err.msg);
	T_CHECK(c[3] == NULL, "a 4th client was served with max_clients = 3");
	ms_client_close(c[3]);
	/* c[0] holds a pin, c[1] says nothing, c[2] pings every 300 ms. */
	uint16_t e = 1;
	struct ms_client_expert got;
	T_CHECK(c[0] && ms_client_acquire(c[0], model->layers[0].block, &e, 1, &got,
					  5000) == 0, "acquire failed");
	int64_t t0 = dt_now_ms();
	while (dt_now_ms() - t0 < 3000) {
		T_CHECK(c[2] && ms_client_ping(c[2], 1000) == 0,
			"an active client was dropped by idle_timeout = 1");
		dt_sleep_ms(300);
	}
	int r1 = c[1] ? ms_client_ping(c[1], 1000) : 0;
	printf("idle_timeout = 1: a client silent for 3 s: %s\n",
	       r1 ? strerror(-r1) : "STILL CONNECTED");
	T_CHECK(r1 != 0, "a client silent for 3 s survived idle_timeout = 1");
	for (int i = 0; i < 3; i++)
		ms_client_close(c[i]);
	/* now that they are gone, a new one is served again */
	struct ms_client *again = NULL;
	for (t0 = dt_now_ms(); !again && dt_now_ms() - t0 < 2000; dt_sleep_ms(20))
		again = dt_connect(d.sock, "again", NULL);
	T_CHECK(again != NULL, "no client served after the others left");
	ms_client_close(again);
	T_EQ_U64(dt_stop(&d), 0);
}

static void test_reload(struct dt_daemon *a)
{
	char *good = dt_slurp(a->conf);
	/* a broken file: nothing changes */
	t_write_file(a->conf, "[cache]\nsize = banana\n", 22);
	kill(a->pid, SIGHUP);
	bool said = false;
	for (int64_t t0 = dt_now_ms(); !said && dt_now_ms() - t0 < 3000; dt_sleep_ms(20)) {
		char *log = dt_slurp(a->log);
		said = strstr(log, "keeping the running configuration") != NULL;
		free(log);
	}
	T_CHECK(said, "SIGHUP with a broken file: no 'keeping the running "
		"configuration' in the log");
	struct ms_client *c = dt_connect(a->sock, "after-hup", NULL);
	T_CHECK(c && ms_client_ping(c, 2000) == 0,
		"the daemon does not serve after SIGHUP with a broken file");
	ms_client_close(c);
	/* a restart-only option changed: named, not applied */
	size_t n = strlen(good);
	char *changed = malloc(n + 64);
	snprintf(changed, n + 64, "%s[io]\nqueue_depth = 8\n", good);
	t_write_file(a->conf, changed, strlen(changed));
	kill(a->pid, SIGHUP);
	said = false;
	for (int64_t t0 = dt_now_ms(); !said && dt_now_ms() - t0 < 3000; dt_sleep_ms(20)) {
		char *log = dt_slurp(a->log);
		said = strstr(log, "io.queue_depth") != NULL;
		free(log);
	}
	T_CHECK(said, "SIGHUP with a changed io.queue_depth: the log does not name it");
	t_write_file(a->conf, good, n);
	free(changed);
	free(good);
}

static void test_stale(struct dt_daemon *a)
{
	kill(a->pid, SIGKILL);
	int st = dt_waitpid(a->pid, 5000);
	T_CHECK(st >= 0 && WIFSIGNALED(st), "SIGKILL did not end the daemon");
	a->pid = 0;
	a->status = st;
	struct stat sb;
	T_CHECK(lstat(a->sock, &sb) == 0 && S_ISSOCK(sb.st_mode),
		"no stale socket file after SIGKILL (the test would prove nothing)");
	struct dt_daemon c;
	dt_daemon_init(&c, "after-crash");
	snprintf(c.conf, sizeof(c.conf), "%s", a->conf);
	snprintf(c.sock, sizeof(c.sock), "%s", a->sock);
	if (dt_daemon_start(&c, NULL, 0))
		return;
	struct ms_client *cl = dt_connect(c.sock, "after-crash", NULL);
	double pid = dt_stat(cl, "pid");
	printf("stale socket of a SIGKILLed daemon: replaced; the new daemon (pid "
	       "%d) serves after %lld ms\n",
	       (int)c.pid, (long long)c.ready_ms);
	T_CHECK(pid == (double)c.pid, "stats pid %.0f, the new daemon is %d", pid,
		(int)c.pid);
	ms_client_close(cl);
	*a = c;
}

/* SIGTERM (or SIGINT) with clients in every state. */
static void test_stop(struct dt_daemon *d, int sig)
{
	struct ms_err err = { 0 };
	struct ms_client *holder = dt_connect(d->sock, "holder", &err);
	struct ms_client *loader = dt_connect(d->sock, "loader", &err);
	int silent = dt_raw_connect(d->sock);
	if (!holder || !loader || silent < 0)
		t_fatal("clients for the stop test: %s", err.msg);
	uint32_t b = model->layers[model->n_layers - 1].block;
	uint16_t ex[4] = { 0, 1, 2, 3 };
	struct ms_client_expert got[4];
	T_CHECK(ms_client_acquire(holder, b, ex, 4, got, 10000) == 0, "acquire");
	uint16_t cold[32];
	for (int i = 0; i < 32; i++)
		cold[i] = (uint16_t)(16 + i);
	uint64_t id;
	T_CHECK(ms_client_acquire_async(loader, model->layers[2].block, cold, 32, &id) ==
			0, "async acquire");
	int64_t t0 = dt_now_ms();
	kill(d->pid, sig);
	int64_t gone = -1;
	struct stat sb;
	while (dt_now_ms() - t0 < 10000) {
		if (gone < 0 && lstat(d->sock, &sb) && errno == ENOENT)
			gone = dt_now_ms() - t0;
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			dt_untrack(d->pid);
			d->status = st;
			d->pid = 0;
			break;
		}
		dt_sleep_ms(1);
	}
	int64_t exited = dt_now_ms() - t0;
	if (gone < 0 && lstat(d->sock, &sb) && errno == ENOENT)
		gone = exited;
	int code = d->pid ? -1 : WIFEXITED(d->status) ? WEXITSTATUS(d->status)
						      : 128 + WTERMSIG(d->status);
	printf("%s with 3 clients (4 pins held, 32 acquires in flight, one without "
	       "HELLO): socket gone after %lld ms, exit %d after %lld ms\n",
	       strsignal(sig), (long long)gone, code, (long long)exited);
	T_CHECK(gone >= 0, "%s: the socket file is still there", strsignal(sig));
	T_CHECK(code == 0, "%s: the daemon %s %d", strsignal(sig),
		d->pid ? "did not exit in 10 s; status" : "exited", code);
	T_CHECK(exited <= 5000, "%s: the daemon took %lld ms to stop", strsignal(sig),
		(long long)exited);
	if (d->pid) {
		kill(d->pid, SIGKILL);
		dt_waitpid(d->pid, 5000);
		d->pid = 0;
	}
	T_CHECK(ms_client_ping(holder, 2000) != 0, "a client still pings a stopped "
		"daemon");
	uint8_t buf[64];
	int n = dt_raw_recv(silent, buf, sizeof(buf), 2000, NULL, 0, NULL);
	T_CHECK(n == 0 || n == -ECONNRESET, "the client without HELLO did not see "
		"the end (%d)", n);
	T_CHECK(dt_connect(d->sock, "late", NULL) == NULL, "a client connected "
		"after the stop");
	ms_client_close(holder);
	ms_client_close(loader);
	close(silent);
	if (code != 0)
		dt_daemon_dump_log(d, 30);
}

int main(void)
{
	rng = t_seed();
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(240, "t_daemon");
	model_path = dt_model("life.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, model_path, &err))
		t_fatal("%s", err.msg);
	struct dt_daemon a;
	if (dt_start(&a, "life", model_path, NULL))
		return t_done();
	printf("moestreamd ready in %lld ms\n", (long long)a.ready_ms);
	int64_t t0 = dt_now_ms();
#define STEP(call)                                                             \
	do {                                                                   \
		call;                                                          \
		printf("  (%s: %lld ms)\n", #call, (long long)(dt_now_ms() - t0)); \
		t0 = dt_now_ms();                                              \
	} while (0)
	STEP(test_commands(&a));
	STEP(test_rival(&a));
	STEP(test_reload(&a));
	STEP(test_limits());
	STEP(test_stale(&a));
	if (a.pid)
		STEP(test_stop(&a, SIGTERM));
	struct dt_daemon i;
	if (!dt_start(&i, "sigint", model_path, NULL))
		STEP(test_stop(&i, SIGINT));
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
