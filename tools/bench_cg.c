/*
 * bench_cg.c - a benchmark method in a child in its own memory cgroup
 * (bench_cg.h). Moved out of bench_e2e.c when the real engines joined the
 * trace replays, so that both run through the one copy.
 *
 * Why a group per method and not one for the run: the peak is per method,
 * and a method's page cache must not be charged to (or reclaimed for) the
 * next. Why under our own group on v1 and under the root on v2: on v2 a
 * group that holds processes gives its children no controllers, and our own
 * group may hold processes.
 */
#include "bench_cg.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

/* ---- small helpers ---------------------------------------------------------------- */

int bench_write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t n = strlen(s);
	ssize_t w = write(fd, s, n);
	int rc = w == (ssize_t)n ? 0 : w < 0 ? -errno : -EIO;
	close(fd);
	return rc;
}

int bench_read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	int rc = n < 0 ? -errno : 0;
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return rc;
}

bool bench_read_u64(const char *path, uint64_t *out)
{
	char buf[64];
	if (bench_read_text(path, buf, sizeof(buf)))
		return false;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf)
		return false;
	*out = v;
	return true;
}

bool bench_read_keyed(const char *path, const char *key, uint64_t *out)
{
	char buf[4096];
	if (bench_read_text(path, buf, sizeof(buf)))
		return false;
	size_t kl = strlen(key);
	for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, key, kl) || (p[kl] != ' ' && p[kl] != ':'))
			continue;
		*out = strtoull(p + kl + 1 + (p[kl] == ':'), NULL, 10);
		return true;
	}
	return false;
}

uint64_t bench_io_read_bytes(bool *ok)
{
	uint64_t v = 0;
	if (!bench_read_keyed("/proc/self/io", "read_bytes", &v))
		*ok = false;
	return v;
}

bool bench_disk_busy_ms(const char *path, uint64_t *ms)
{
	struct stat st;
	if (stat(path, &st))
		return false;
	FILE *f = fopen("/proc/diskstats", "r");
	if (!f)
		return false;
	/* major minor name reads merged sectors ms writes merged sectors ms
	 * in_flight io_ticks ...: io_ticks is the 10th figure after the
	 * name. A partition's line counts its own I/O, which is the file's. */
	char line[512];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned maj, min;
		char name[64];
		unsigned long long v[10];
		if (sscanf(line, " %u %u %63s %llu %llu %llu %llu %llu %llu %llu %llu "
			   "%llu %llu", &maj, &min, name, &v[0], &v[1], &v[2], &v[3],
			   &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) != 13)
			continue;
		if (maj == major(st.st_dev) && min == minor(st.st_dev)) {
			*ms = v[9];
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* ---- the groups ------------------------------------------------------------------------ */

void bench_cg_detect(struct bench_cg_env *e)
{
	memset(e, 0, sizeof(*e));
	if (geteuid() != 0) {
		snprintf(e->why, sizeof(e->why), "not root: no cgroup can be made");
		return;
	}
	char ctrl[512] = "", self[8192] = "";
	bool v2 = !bench_read_text("/sys/fs/cgroup/cgroup.controllers", ctrl,
				   sizeof(ctrl));
	if (bench_read_text("/proc/self/cgroup", self, sizeof(self))) {
		snprintf(e->why, sizeof(e->why), "cannot read /proc/self/cgroup");
		return;
	}
	for (char *save = NULL, *ln = strtok_r(self, "\n", &save); ln;
	     ln = strtok_r(NULL, "\n", &save)) {
		char *c1 = strchr(ln, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		const char *ctrls = c1 + 1, *path = c2 + 1;
		if (v2 && !strncmp(ln, "0:", 2) && !*ctrls) {
			/* Under the root of the hierarchy (of the namespace):
			 * our own group may hold processes, and v2 gives no
			 * controllers to the children of a group that does. */
			char sub[512] = "", p[1024];
			(void)path;
			if (!strstr(ctrl, "memory")) {
				snprintf(e->why, sizeof(e->why), "cgroup v2 without the "
					 "memory controller");
				return;
			}
			snprintf(e->root, sizeof(e->root), "/sys/fs/cgroup");
			snprintf(p, sizeof(p), "%s/cgroup.subtree_control", e->root);
			bench_read_text(p, sub, sizeof(sub));
			if (!strstr(sub, "memory") && bench_write_str(p, "+memory")) {
				snprintf(e->why, sizeof(e->why), "cannot enable the memory "
					 "controller in %.200s (cgroup v2)", e->root);
				return;
			}
			e->kind = BENCH_CG_V2;
			return;
		}
		bool mem = false;
		char cl[256];
		snprintf(cl, sizeof(cl), "%s", ctrls);
		for (char *s2 = NULL, *x = strtok_r(cl, ",", &s2); x;
		     x = strtok_r(NULL, ",", &s2))
			mem |= !strcmp(x, "memory");
		if (!mem)
			continue;
		char p[1024];
		snprintf(e->root, sizeof(e->root), "/sys/fs/cgroup/memory%s",
			 strcmp(path, "/") ? path : "");
		snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", e->root);
		if (access(p, W_OK)) {
			snprintf(e->why, sizeof(e->why), "%.200s is not writable (cgroup "
				 "v1)", p);
			return;
		}
		e->kind = BENCH_CG_V1;
		return;
	}
	snprintf(e->why, sizeof(e->why), "no memory cgroup found (neither v2's "
		 "memory.max nor v1's /sys/fs/cgroup/memory)");
}

const char *bench_cg_name(const struct bench_cg_env *e)
{
	return e->kind == BENCH_CG_V2 ? "v2" : e->kind == BENCH_CG_V1 ? "v1" : "none";
}

static int cg_file(const char *dir, const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static int cg_make(const struct bench_cg_env *e, const char *name, uint64_t limit,
		   char *dir, size_t len, struct ms_err *err)
{
	char p[1100], v[32];
	int n = snprintf(dir, len, "%s/%s", e->root, name);
	if (n < 0 || (size_t)n >= len)
		return ms_err_set(err, -ENAMETOOLONG, "cgroup path too long");
	rmdir(dir); /* a leftover of a killed run */
	if (mkdir(dir, 0755))
		return ms_err_set(err, -errno, "cannot make the cgroup %s: %s", dir,
				  strerror(errno));
	snprintf(v, sizeof(v), "%llu", (unsigned long long)limit);
	int rc;
	if (e->kind == BENCH_CG_V2) {
		cg_file(dir, "memory.max", p, sizeof(p));
		rc = bench_write_str(p, v);
		cg_file(dir, "memory.swap.max", p, sizeof(p));
		bench_write_str(p, "0"); /* no swap: the limit is RAM */
	} else {
		cg_file(dir, "memory.limit_in_bytes", p, sizeof(p));
		rc = bench_write_str(p, v);
		cg_file(dir, "memory.memsw.limit_in_bytes", p, sizeof(p));
		bench_write_str(p, v); /* where swap is accounted: none either */
	}
	if (rc) {
		rmdir(dir);
		return ms_err_set(err, rc, "cannot set the limit of %s to %s: %s", dir,
				  v, strerror(-rc));
	}
	return 0;
}

static int cg_join(const char *dir)
{
	char p[1100], v[32];
	cg_file(dir, "cgroup.procs", p, sizeof(p));
	snprintf(v, sizeof(v), "%d", (int)getpid());
	return bench_write_str(p, v);
}

static void cg_collect(const struct bench_cg_env *e, const char *dir,
		       struct bench_child_res *r)
{
	char p[1100];
	if (e->kind == BENCH_CG_V2) {
		cg_file(dir, "memory.peak", p, sizeof(p));
		r->peak_known = bench_read_u64(p, &r->peak_bytes);
		cg_file(dir, "memory.events", p, sizeof(p));
		bench_read_keyed(p, "max", &r->failcnt);
		bench_read_keyed(p, "oom_kill", &r->oom_kills);
	} else {
		cg_file(dir, "memory.max_usage_in_bytes", p, sizeof(p));
		r->peak_known = bench_read_u64(p, &r->peak_bytes);
		cg_file(dir, "memory.failcnt", p, sizeof(p));
		bench_read_u64(p, &r->failcnt);
		cg_file(dir, "memory.oom_control", p, sizeof(p));
		bench_read_keyed(p, "oom_kill", &r->oom_kills);
	}
}

/* Removes a group once its processes are gone (a daemon killed with its
 * parent takes a moment to leave). */
static void cg_remove(const char *dir)
{
	for (int i = 0; i < 200 && rmdir(dir) && errno == EBUSY; i++)
		tool_sleep_ms(25);
}

/* ---- signals: what must be cleaned up is the child and its group --------------------- */

static volatile pid_t g_child;
static char g_cgdir[600];
static struct sigaction g_old_int, g_old_term;
static bool g_installed;

static void on_signal(int sig)
{
	pid_t p = g_child;
	if (p > 0) {
		kill(p, SIGKILL);
		waitpid(p, NULL, 0);
	}
	if (*g_cgdir)
		for (int i = 0; i < 100 && rmdir(g_cgdir) && errno == EBUSY; i++) {
			struct timespec ts = { 0, 20000000L };
			nanosleep(&ts, NULL);
		}
	signal(sig, SIG_DFL);
	raise(sig);
}

void bench_cg_signals_install(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &g_old_int);
	sigaction(SIGTERM, &sa, &g_old_term);
	g_installed = true;
}

void bench_cg_signals_restore(void)
{
	if (!g_installed)
		return;
	sigaction(SIGINT, &g_old_int, NULL);
	sigaction(SIGTERM, &g_old_term, NULL);
	g_installed = false;
}

static size_t read_full(int fd, void *p, size_t n)
{
	char *b = p;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, b + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return got;
}

/* ---- one method in a child in its group ------------------------------------------------ */

/* What comes back through the pipe ahead of the method's own figures. */
struct child_head {
	int rc;
	char err[480];
};

void bench_cg_run(const struct bench_cg_env *e, const char *name, uint64_t limit,
		  bench_child_fn fn, void *ctx, void *out, size_t out_len,
		  struct bench_child_res *res)
{
	memset(res, 0, sizeof(*res));
	res->ran = true;
	struct ms_err err = { 0 };
	char dir[600] = "";
	if (e->kind != BENCH_CG_NONE) {
		char gname[160];
		snprintf(gname, sizeof(gname), "moestream-e2e-%d-%s", (int)getpid(), name);
		if (cg_make(e, gname, limit, dir, sizeof(dir), &err)) {
			snprintf(res->err, sizeof(res->err), "%s", err.msg);
			return;
		}
		snprintf(g_cgdir, sizeof(g_cgdir), "%s", dir);
	}
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC)) {
		snprintf(res->err, sizeof(res->err), "pipe: %s", strerror(errno));
		goto out;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(res->err, sizeof(res->err), "fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		goto out;
	}
	if (pid == 0) {
		close(pfd[0]);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		struct child_head h = { 0 };
		int rc = 0;
		if (getppid() != parent)
			_exit(1);
		if (*dir && (rc = cg_join(dir)))
			ms_err_set(&err, rc, "cannot join the cgroup %s: %s", dir,
				   strerror(-rc));
		else
			rc = fn(ctx, out, &err);
		h.rc = rc;
		if (rc)
			snprintf(h.err, sizeof(h.err), "%s",
				 *err.msg ? err.msg : strerror(-rc));
		tool_write_full(pfd[1], &h, sizeof(h));
		tool_write_full(pfd[1], out, out_len);
		_exit(0); /* no atexit handlers of the parent's */
	}
	g_child = pid;
	close(pfd[1]);
	struct child_head h;
	size_t got = read_full(pfd[0], &h, sizeof(h));
	if (got == sizeof(h))
		got += read_full(pfd[0], out, out_len);
	close(pfd[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	g_child = 0;
	if (got != sizeof(h) + out_len) {
		memset(out, 0, out_len);
		snprintf(res->err, sizeof(res->err), "the child died (%s %d)%s",
			 WIFSIGNALED(st) ? "signal" : "status",
			 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
			 WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && *dir
				 ? ": killed under the memory limit?"
				 : "");
	} else {
		res->rc = h.rc;
		res->ok = h.rc == 0;
		snprintf(res->err, sizeof(res->err), "%s", h.err);
	}
out:
	if (*dir) {
		cg_collect(e, dir, res);
		cg_remove(dir);
		g_cgdir[0] = '\0';
	}
}
