/*
 * daemontest.c - the daemon tests' shared helpers (see daemontest.h).
 *
 * Processes: every daemon and every child a test forks is tracked in a
 * fixed array that a signal handler may read, so that the watchdog (SIGALRM)
 * and the atexit handler can SIGKILL them without taking a lock or calling
 * malloc. Only the process that armed the watchdog kills anything: a forked
 * child that ran exit() by mistake must not take the daemon down with it.
 *
 * Starting a daemon: fork + exec of $MS_BUILD/moestreamd with its output
 * appended to a log in the test folder; then the socket is polled, first
 * with lstat (to see the socket file's mode the moment it appears), then
 * with a real client HELLO + PING, which is what "ready" means to a user.
 */
#include "daemontest.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define DT_MAX_TRACKED 256
#define DT_MSG_BUF (MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD)

/* ---- processes ------------------------------------------------------------------ */

static volatile pid_t tracked[DT_MAX_TRACKED];
static volatile sig_atomic_t n_tracked;
static pid_t owner;                 /* the test process */
static char wd_msg[256];
static size_t wd_msg_len;
static bool atexit_done;

static void kill_tracked(void)
{
	for (int i = 0; i < n_tracked; i++)
		if (tracked[i] > 0)
			kill(tracked[i], SIGKILL);
}

static void on_alarm(int sig)
{
	(void)sig;
	if (getpid() != owner)
		_exit(1);
	kill_tracked();
	if (write(2, wd_msg, wd_msg_len) < 0) {
		/* nothing more to do from a signal handler */
	}
	_exit(T_FAIL);
}

/* Every daemon started, for the report at exit: a daemon that crashed or
 * whose sanitizer spoke fails the test and shows its log, even when the
 * test itself went no further than a t_fatal. */
static struct {
	char name[32];
	char log[512];
} started[64];
static unsigned n_started;

static void register_daemon(const struct dt_daemon *d)
{
	for (unsigned i = 0; i < n_started; i++)
		if (!strcmp(started[i].log, d->log))
			return;
	if (n_started == sizeof(started) / sizeof(started[0]))
		return;
	snprintf(started[n_started].name, sizeof(started[n_started].name), "%s",
		 d->name);
	snprintf(started[n_started].log, sizeof(started[n_started].log), "%s",
		 d->log);
	n_started++;
}

static const char *const crash_marks[] = {
	"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
	"double free or corruption", "free(): invalid", "malloc(): ",
	"stack smashing detected",
};

const char *dt_crash_in(const char *text)
{
	const char *hit = NULL;
	for (size_t k = 0; !hit && k < sizeof(crash_marks) / sizeof(crash_marks[0]); k++)
		hit = strstr(text, crash_marks[k]);
	return hit;
}

static int report_crashes(void)
{
	int found = 0;
	for (unsigned i = 0; i < n_started; i++) {
		char *log = dt_slurp(started[i].log);
		const char *hit = dt_crash_in(log);
		if (hit) {
			const char *from = hit;
			for (int back = 0; from > log && back < 3; back++) {
				from--;
				while (from > log && from[-1] != '\n')
					from--;
			}
			fprintf(stderr, "FAIL moestreamd %s: the daemon crashed or its "
				"sanitizer spoke (%s):\n%.6000s\n",
				started[i].name, started[i].log, from);
			t_failures++;
			found++;
		}
		free(log);
	}
	return found;
}

static void at_exit_kill(void)
{
	if (getpid() != owner)
		return;
	alarm(0);
	kill_tracked();
	for (int i = 0; i < n_tracked; i++)
		if (tracked[i] > 0)
			waitpid(tracked[i], NULL, 0);
	n_tracked = 0;
	/* The verdict is already on its way out: a crash found now must
	 * still turn it into a failure. */
	if (report_crashes()) {
		fflush(NULL);
		_exit(T_FAIL);
	}
}

int dt_check_crashes(void)
{
	int found = report_crashes();
	n_started = 0; /* reported once */
	return found;
}

bool dt_daemon_alive(struct dt_daemon *d)
{
	if (!d->pid)
		return false;
	int st;
	if (waitpid(d->pid, &st, WNOHANG) != d->pid)
		return true;
	dt_untrack(d->pid);
	d->status = st;
	d->pid = 0;
	t_fail_at(__FILE__, __LINE__, "moestreamd %s died: %s %d", d->name,
		  WIFSIGNALED(st) ? "signal" : "exit",
		  WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	dt_daemon_dump_log(d, 40);
	return false;
}

static void setup_owner(void)
{
	if (!owner)
		owner = getpid();
	if (!atexit_done) {
		/* the folder first: its cleanup then runs after ours, which
		 * still reads the daemons' logs there */
		t_tmpdir();
		atexit(at_exit_kill);
		atexit_done = true;
	}
}

void dt_watchdog(unsigned seconds, const char *what)
{
	setup_owner();
	const char *env = getenv("MS_WATCHDOG");
	if (seconds && env && *env)
		seconds = (unsigned)strtoul(env, NULL, 10);
	wd_msg_len = (size_t)snprintf(wd_msg, sizeof(wd_msg),
				      "FAIL watchdog: %s did not finish in %u s "
				      "(a deadlock or a hung daemon); killed "
				      "every process it started\n",
				      what ? what : "the test", seconds);
	if (wd_msg_len >= sizeof(wd_msg))
		wd_msg_len = sizeof(wd_msg) - 1;
	struct sigaction sa = { .sa_handler = on_alarm };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	alarm(seconds);
}

void dt_track(pid_t pid)
{
	setup_owner();
	for (int i = 0; i < n_tracked; i++)
		if (tracked[i] <= 0) {
			tracked[i] = pid;
			return;
		}
	if (n_tracked == DT_MAX_TRACKED)
		t_fatal("dt_track: more than %d processes", DT_MAX_TRACKED);
	tracked[n_tracked] = pid;
	n_tracked = n_tracked + 1;
}

void dt_untrack(pid_t pid)
{
	for (int i = 0; i < n_tracked; i++)
		if (tracked[i] == pid)
			tracked[i] = 0;
}

int64_t dt_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void dt_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int dt_waitpid(pid_t pid, int timeout_ms)
{
	int64_t end = dt_now_ms() + timeout_ms;
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			dt_untrack(pid);
			return st;
		}
		if (r < 0 && errno != EINTR)
			return -1;
		if (dt_now_ms() >= end)
			return -1;
		dt_sleep_ms(2);
	}
}

static int exit_code(int st)
{
	if (st < 0)
		return -1;
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return -1;
}

/* In the child between fork and exec: async-signal-safe calls only. */
static void child_redirect(const char *out_path, const char *err_path, bool append)
{
	int flags = O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC);
	int o = out_path ? open(out_path, flags, 0644) : open("/dev/null", O_WRONLY);
	int e = err_path ? (out_path && !strcmp(out_path, err_path) ? dup(o)
					: open(err_path, flags, 0644))
			 : open("/dev/null", O_WRONLY);
	int n = open("/dev/null", O_RDONLY);
	if (o < 0 || e < 0 || n < 0)
		_exit(126);
	dup2(n, 0);
	dup2(o, 1);
	dup2(e, 2);
	signal(SIGPIPE, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

int dt_exec(char *const argv[], const char *out_path, const char *err_path,
	    int timeout_ms)
{
	setup_owner();
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		child_redirect(out_path, err_path, false);
		execv(argv[0], argv);
		_exit(127);
	}
	dt_track(pid);
	int st = dt_waitpid(pid, timeout_ms);
	if (st < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		dt_untrack(pid);
		return -1;
	}
	return exit_code(st);
}

char *dt_slurp(const char *path)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		t_fatal("out of memory");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		for (;;) {
			if (len + 1 == cap) {
				char *nb = realloc(buf, cap *= 2);
				if (!nb)
					t_fatal("out of memory");
				buf = nb;
			}
			ssize_t n = read(fd, buf + len, cap - 1 - len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			len += (size_t)n;
		}
		close(fd);
	}
	buf[len] = '\0';
	return buf;
}

unsigned dt_count_lines(const char *text)
{
	unsigned n = 0;
	const char *p = text;
	while (*p) {
		const char *nl = strchr(p, '\n');
		n++;
		if (!nl)
			break;
		p = nl + 1;
	}
	return n;
}

int dt_fd_count(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* ---- models ---------------------------------------------------------------------- */

static struct {
	char name[64];
	char path[512];
} models[8];
static unsigned n_models;

const char *dt_model(const char *name, const char *args)
{
	for (unsigned i = 0; i < n_models; i++)
		if (!strcmp(models[i].name, name))
			return models[i].path;
	if (n_models == sizeof(models) / sizeof(models[0]))
		t_fatal("dt_model: too many models");
	snprintf(models[n_models].name, sizeof(models[n_models].name), "%s", name);
	snprintf(models[n_models].path, sizeof(models[n_models].path), "%s/%s",
		 t_tmpdir(), name);
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s -o %s --force >/dev/null",
		 t_build_path("moestream"), args, models[n_models].path);
	if (t_run(cmd, NULL, 0) != 0)
		t_fatal("could not make the test model: %s", cmd);
	return models[n_models++].path;
}

/* ---- daemons ----------------------------------------------------------------------- */

int dt_write_config(const char *path, const char *model, const char *sock,
		    const char *extra)
{
	char *buf = malloc(16384);
	if (!buf)
		return -ENOMEM;
	int n = snprintf(buf, 16384,
			 "# written by a daemon test (tests/daemontest.c)\n"
			 "[model]\n"
			 "path = %s\n"
			 "[socket]\n"
			 "path = %s\n"
			 "[cache]\n"
			 "size = 64M\n"
			 "lock = false\n"
			 "hugepages = off\n"
			 "[io]\n"
			 "threads = 2\n"
			 "[log]\n"
			 "level = info\n"
			 "%s%s",
			 model, sock, extra ? extra : "",
			 extra && *extra && extra[strlen(extra) - 1] != '\n' ? "\n" : "");
	int rc = n < 0 || n >= 16384 ? -E2BIG : t_write_file(path, buf, (size_t)n);
	free(buf);
	return rc;
}

void dt_daemon_init(struct dt_daemon *d, const char *name)
{
	memset(d, 0, sizeof(*d));
	d->status = -1;
	snprintf(d->name, sizeof(d->name), "%s", name);
	if ((size_t)snprintf(d->sock, sizeof(d->sock), "%s/%s.sock", t_tmpdir(),
			     name) >= sizeof(d->sock))
		t_fatal("socket path for %s is too long (MS_TMP is deep?)", name);
	snprintf(d->conf, sizeof(d->conf), "%s/%s.conf", t_tmpdir(), name);
	snprintf(d->log, sizeof(d->log), "%s/%s.log", t_tmpdir(), name);
}

void dt_daemon_dump_log(const struct dt_daemon *d, unsigned lines)
{
	char *txt = dt_slurp(d->log);
	unsigned total = dt_count_lines(txt), skip = total > lines ? total - lines : 0;
	const char *p = txt;
	for (unsigned i = 0; i < skip && p; i++) {
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	fprintf(stderr, "---- %s: last %u line(s) of %s ----\n%s%s---- end ----\n",
		d->name, total - skip, d->log, p ? p : "",
		p && *p && p[strlen(p) - 1] != '\n' ? "\n" : "");
	free(txt);
}

struct ms_client *dt_connect(const char *sock, const char *name,
			     struct ms_err *err)
{
	struct ms_client *c = NULL;
	struct ms_err e = { 0 };
	if (ms_client_connect(&c, sock, name, &e)) {
		if (err)
			*err = e;
		return NULL;
	}
	return c;
}

/* Follows the daemon's main thread from exec to the return of its bind()
 * (PTRACE_SYSCALL), looks at the socket file then, and lets it go. Returns
 * 0 with d->bind_mode set, or -errno (-ENOSYS: this kernel or libc cannot
 * say which syscall stopped). The daemon is detached on every path. */
static int trace_to_bind(struct dt_daemon *d, pid_t pid)
{
#ifdef PTRACE_GET_SYSCALL_INFO
	int st, sig = 0, rc = -ESRCH;
	unsigned long long last_nr = ~0ull;
	if (waitpid(pid, &st, __WALL) != pid || !WIFSTOPPED(st))
		return -ECHILD; /* the stop after exec */
	ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL);
	for (;;) {
		if (ptrace(PTRACE_SYSCALL, pid, 0, sig))
			return -errno;
		sig = 0;
		if (waitpid(pid, &st, __WALL) != pid)
			return -ECHILD;
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			d->status = st;
			return -ESRCH;
		}
		if (!WIFSTOPPED(st))
			continue;
		if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
			sig = WSTOPSIG(st); /* a real signal: deliver it */
			continue;
		}
		struct __ptrace_syscall_info info;
		memset(&info, 0, sizeof(info));
		if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof(info), &info) <= 0) {
			rc = -ENOSYS;
			break;
		}
		if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
			last_nr = info.entry.nr;
		} else if (info.op == PTRACE_SYSCALL_INFO_EXIT && last_nr == SYS_bind) {
			struct stat sb;
			if (lstat(d->sock, &sb) == 0) {
				d->bind_mode = sb.st_mode;
				rc = 0;
				break;
			}
		}
	}
	ptrace(PTRACE_DETACH, pid, 0, 0);
	return rc;
#else
	(void)d;
	(void)pid;
	return -ENOSYS;
#endif
}

static int daemon_start(struct dt_daemon *d, const char *const *args,
			int timeout_ms, bool traced)
{
	setup_owner();
	const char *argv[32];
	int n = 0;
	argv[n++] = t_build_path("moestreamd");
	argv[n++] = "-c";
	argv[n++] = d->conf;
	argv[n++] = "--foreground";
	for (int i = 0; args && args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	if (!timeout_ms)
		timeout_ms = 30000;
	d->first_mode = d->bind_mode = 0;
	d->status = -1;
	d->trace_rc = 0;
	int64_t t0 = dt_now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		t_fail_at(__FILE__, __LINE__, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		child_redirect(d->log, d->log, true);
		if (traced && ptrace(PTRACE_TRACEME, 0, 0, 0))
			_exit(126);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	d->pid = pid;
	dt_track(pid);
	register_daemon(d);
	if (traced)
		d->trace_rc = trace_to_bind(d, pid);
	struct ms_err err = { 0 };
	for (;;) {
		struct stat st;
		if (!d->first_mode && lstat(d->sock, &st) == 0)
			d->first_mode = st.st_mode;
		int ws;
		if (waitpid(pid, &ws, WNOHANG) == pid) {
			dt_untrack(pid);
			d->pid = 0;
			d->status = ws;
			t_fail_at(__FILE__, __LINE__,
				  "moestreamd %s exited during start (status %d)",
				  d->name, exit_code(ws));
			dt_daemon_dump_log(d, 30);
			return -1;
		}
		if (d->first_mode) {
			struct ms_client *c = dt_connect(d->sock, "dt-ready", &err);
			if (c) {
				int rc = ms_client_ping(c, 5000);
				ms_client_close(c);
				if (!rc)
					break;
			}
		}
		if (dt_now_ms() - t0 > timeout_ms) {
			t_fail_at(__FILE__, __LINE__,
				  "moestreamd %s did not answer on %s in %d ms "
				  "(last: %s)",
				  d->name, d->sock, timeout_ms, err.msg);
			dt_daemon_dump_log(d, 30);
			kill(pid, SIGKILL);
			dt_waitpid(pid, 10000);
			d->pid = 0;
			return -1;
		}
		dt_sleep_ms(d->first_mode ? 10 : 1);
	}
	d->ready_ms = dt_now_ms() - t0;
	return 0;
}

int dt_daemon_start(struct dt_daemon *d, const char *const *args, int timeout_ms)
{
	return daemon_start(d, args, timeout_ms, false);
}

int dt_daemon_start_traced(struct dt_daemon *d, const char *const *args,
			   int timeout_ms)
{
	return daemon_start(d, args, timeout_ms, true);
}

int dt_start(struct dt_daemon *d, const char *name, const char *model,
	     const char *extra)
{
	dt_daemon_init(d, name);
	int rc = dt_write_config(d->conf, model, d->sock, extra);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "writing %s: %s", d->conf, strerror(-rc));
		return -1;
	}
	return dt_daemon_start(d, NULL, 0);
}

int dt_daemon_signal_wait(struct dt_daemon *d, int sig, int timeout_ms)
{
	if (!d->pid)
		return d->status;
	kill(d->pid, sig);
	int st = dt_waitpid(d->pid, timeout_ms);
	if (st < 0) {
		kill(d->pid, SIGKILL);
		dt_waitpid(d->pid, 10000);
		d->pid = 0;
		d->status = -1;
		return -1;
	}
	d->pid = 0;
	d->status = st;
	return st;
}

int dt_stop(struct dt_daemon *d)
{
	if (!d->pid)
		return exit_code(d->status);
	return exit_code(dt_daemon_signal_wait(d, SIGTERM, 10000));
}

/* ---- stats ------------------------------------------------------------------------------ */

double dt_stat(struct ms_client *c, const char *key)
{
	char *json = NULL;
	if (!c || ms_client_stats(c, &json, 5000))
		return NAN;
	cJSON *o = cJSON_Parse(json);
	free(json);
	if (!o)
		return NAN;
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double r = cJSON_IsNumber(v) ? v->valuedouble
		   : cJSON_IsBool(v) ? (cJSON_IsTrue(v) ? 1.0 : 0.0)
				     : NAN;
	cJSON_Delete(o);
	return r;
}

bool dt_eq(double v, double arg)
{
	return v == arg;
}

bool dt_le(double v, double arg)
{
	return v <= arg;
}

int64_t dt_stat_wait(struct ms_client *c, const char *key,
		     bool (*pred)(double v, double arg), double arg,
		     int timeout_ms, double *last)
{
	int64_t t0 = dt_now_ms();
	for (;;) {
		double v = dt_stat(c, key);
		if (last)
			*last = v;
		if (!isnan(v) && pred(v, arg))
			return dt_now_ms() - t0;
		if (dt_now_ms() - t0 > timeout_ms)
			return -1;
		dt_sleep_ms(2);
	}
}

/* ---- raw wire ---------------------------------------------------------------------------- */

int dt_raw_connect(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(sock) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, sock, strlen(sock));
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static void put_le(uint8_t *p, uint64_t v, unsigned size)
{
	for (unsigned i = 0; i < size; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void dt_put_hdr(uint8_t *buf, uint32_t magic, uint16_t version, uint16_t type,
		uint32_t flags, uint32_t len, uint64_t id)
{
	put_le(buf, magic, 4);
	put_le(buf + 4, version, 2);
	put_le(buf + 6, type, 2);
	put_le(buf + 8, flags, 4);
	put_le(buf + 12, len, 4);
	put_le(buf + 16, id, 8);
}

int dt_raw_send(int fd, const void *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	char *ctl = NULL;
	if (nfds > 0) {
		size_t cl = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		ctl = calloc(1, cl);
		if (!ctl)
			return -ENOMEM;
		mh.msg_control = ctl;
		mh.msg_controllen = cl;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	ssize_t n;
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	int e = n < 0 ? -errno : 0;
	free(ctl);
	if (!e && (size_t)n != len)
		e = -EIO;
	return e;
}

int dt_raw_recv(int fd, uint8_t *buf, size_t cap, int timeout_ms, int *fds,
		int max_fds, int *nfds)
{
	if (nfds)
		*nfds = 0;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int64_t end = dt_now_ms() + timeout_ms;
	for (;;) {
		int left = (int)(end - dt_now_ms());
		int r = poll(&pfd, 1, left < 0 ? 0 : left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		break;
	}
	union {
		char b[CMSG_SPACE(sizeof(int) * 256)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
			     .msg_controllen = sizeof(u.b) };
	ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int f;
			memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (fds && nfds && *nfds < max_fds)
				fds[(*nfds)++] = f;
			else
				close(f);
		}
	}
	return (int)n;
}

int dt_raw_hello(int fd, int *arena_fd, uint64_t *arena_size)
{
	*arena_fd = -1;
	uint8_t *buf = malloc(DT_MSG_BUF + 1);
	struct ms_hello_rep *hr = malloc(sizeof(*hr));
	int rc;
	if (!buf || !hr) {
		rc = -ENOMEM;
		goto out;
	}
	struct ms_hello_req q = { .min_version = MS_PROTO_VERSION,
				  .max_version = MS_PROTO_VERSION,
				  .pid = (uint32_t)getpid() };
	snprintf(q.name, sizeof(q.name), "dt-raw");
	int len = ms_msg_encode_hello_req(buf, 1, &q);
	if (len < 0) {
		rc = len;
		goto out;
	}
	if ((rc = dt_raw_send(fd, buf, (size_t)len, NULL, 0)))
		goto out;
	int fds[4], nfds = 0;
	int n = dt_raw_recv(fd, buf, DT_MSG_BUF + 1, 10000, fds, 4, &nfds);
	for (int i = 1; i < nfds; i++)
		close(fds[i]);
	if (nfds)
		*arena_fd = fds[0];
	struct ms_msg_hdr h;
	char why[128];
	if (n <= 0) {
		rc = n ? n : -ECONNRESET;
		goto out;
	}
	if ((rc = ms_msg_decode_hdr(buf, (size_t)n, &h, why)))
		goto out;
	if (h.type != MS_MSG_HELLO) {
		rc = -EPROTO;
		goto out;
	}
	if ((rc = ms_msg_decode_hello_rep(buf + MS_MSG_HDR_SIZE, h.len, hr, why)))
		goto out;
	if (hr->status) {
		rc = hr->status;
		goto out;
	}
	if (*arena_fd < 0) {
		rc = -EBADMSG;
		goto out;
	}
	if (arena_size)
		*arena_size = hr->arena_size;
	rc = 0;
out:
	if (rc && *arena_fd >= 0) {
		close(*arena_fd);
		*arena_fd = -1;
	}
	free(buf);
	free(hr);
	return rc;
}

int dt_parse(const uint8_t *buf, int n, struct ms_msg_hdr *h, int32_t *err_status,
	     char *err_msg, size_t err_len)
{
	char why[128];
	if (n <= 0 || ms_msg_decode_hdr(buf, (size_t)n, h, why))
		return -EBADMSG;
	if (h->type == MS_MSG_ERROR) {
		struct ms_error_rep e;
		if (ms_msg_decode_error(buf + MS_MSG_HDR_SIZE, h->len, &e, why))
			return -EBADMSG;
		if (err_status)
			*err_status = e.status;
		if (err_msg)
			snprintf(err_msg, err_len, "%s", e.msg);
	}
	return 0;
}
