/*
 * t_daemon_security.c - who may connect to moestreamd, and that nobody who
 * connects can write the cache.
 *
 * 1. The socket file has the configured mode from the moment it exists:
 *    daemons with mode 0600, 0660 (the default) and 0666 are started under
 *    ptrace until their bind() returns, and the socket file's mode then
 *    (before any chmod could fix it), the first mode seen by polling and
 *    the mode once ready must all be the configured one.
 * 2. Peers are checked with SO_PEERCRED (needs root to become another uid:
 *    without root these cases are skipped, with the reason printed):
 *    a child that drops to uid/gid 65534 (nobody) can connect to a daemon
 *    with no allow lists and mode 0666 (the control: the path is
 *    reachable); cannot with mode 0600 (EACCES); is refused with
 *    allow_users = root; is let in with allow_users = 65534, and with
 *    allow_groups = 65534 while its gid is 65534 but not with gid 12345;
 *    SIGHUP applies a changed allow_users at once (a live option).
 * 3. The arena descriptor a client gets is read-only, and stays so: as
 *    root and as nobody, mmap(PROT_WRITE, MAP_SHARED) fails, write() and
 *    pwrite() fail, ftruncate and fallocate fail, mprotect(PROT_WRITE) of
 *    the client library's mapping fails, and reopening /proc/self/fd/N
 *    read-write gives nothing that can write (as nobody; as root this is
 *    reported, root can write any process's memory anyway). A private
 *    copy-on-write mapping may be written and the cache does not change.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/falloc.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define NOBODY 65534

static const char *model_path;
static struct ms_model *model;
static bool is_root;

/* ---- 1. the socket's mode ---------------------------------------------------------- */

static void check_mode(const char *name, const char *mode_line, unsigned want)
{
	struct dt_daemon d;
	char extra[128];
	snprintf(extra, sizeof(extra), "[socket]\n%s\n", mode_line);
	dt_daemon_init(&d, name);
	dt_write_config(d.conf, model_path, d.sock, extra);
	if (dt_daemon_start_traced(&d, NULL, 0))
		return;
	if (d.trace_rc) {
		printf("skip: cannot follow the daemon to its bind() (%s): the mode "
		       "is checked as soon as the file is seen instead\n",
		       strerror(-d.trace_rc));
	} else {
		T_CHECK((d.bind_mode & 07777) == want,
			"%s: when bind() returned the socket had mode 0%o, "
			"configured 0%o (reachable with the wrong mode before any "
			"chmod)", name, d.bind_mode & 07777, want);
	}
	struct stat st;
	T_CHECK(S_ISSOCK(d.first_mode), "%s: the first thing at %s is not a "
		"socket (mode 0%o)", name, d.sock, d.first_mode);
	T_CHECK((d.first_mode & 07777) == want,
		"%s: the socket appeared with mode 0%o, configured 0%o", name,
		d.first_mode & 07777, want);
	T_CHECK(lstat(d.sock, &st) == 0 && (st.st_mode & 07777) == want,
		"%s: the socket has mode 0%o once ready, configured 0%o", name,
		st.st_mode & 07777, want);
	printf("socket mode (%s): at bind() 0%o, first seen 0%o, when ready 0%o, "
	       "configured 0%o\n",
	       mode_line, d.bind_mode & 07777, d.first_mode & 07777,
	       st.st_mode & 07777, want);
	int rc = dt_stop(&d);
	T_CHECK(rc == 0, "%s: exit %d on SIGTERM", name, rc);
}

/* ---- 3. the arena cannot be written ------------------------------------------------- */

/* The checks on a received arena descriptor; each failure is one line in
 * `out` (so that a child can send them back). Returns the number of
 * failures. `hard_reopen`: whether a writable reopen counts as one. */
static int arena_checks(int afd, uint64_t size, bool hard_reopen, char *out,
			size_t out_len, char *info, size_t info_len)
{
	int fails = 0;
	size_t used = 0;
#define BAD(...)                                                               \
	do {                                                                   \
		fails++;                                                       \
		used += (size_t)snprintf(out + used, used < out_len ? out_len - used : 0, \
					 __VA_ARGS__);                          \
		if (used >= out_len)                                           \
			used = out_len - 1;                                    \
	} while (0)
	int fl = fcntl(afd, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) != O_RDONLY)
		BAD("the arena fd is opened with flags 0x%x, not O_RDONLY\n", fl);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, afd, 0);
	if (p != MAP_FAILED) {
		BAD("mmap(PROT_READ|PROT_WRITE, MAP_SHARED) of the arena fd "
		    "succeeded\n");
		munmap(p, size);
	}
	if (write(afd, "x", 1) >= 0)
		BAD("write() on the arena fd succeeded\n");
	if (pwrite(afd, "x", 1, 0) >= 0)
		BAD("pwrite() on the arena fd succeeded\n");
	if (ftruncate(afd, 0) == 0 || ftruncate(afd, (off_t)size * 2) == 0)
		BAD("ftruncate() of the arena fd succeeded\n");
	if (fallocate(afd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0)
		BAD("fallocate(PUNCH_HOLE) on the arena fd succeeded\n");
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, afd, 0);
	if (p == MAP_FAILED) {
		BAD("mmap(PROT_READ, MAP_SHARED) failed: %s\n", strerror(errno));
	} else {
		if (mprotect(p, 4096, PROT_READ | PROT_WRITE) == 0)
			BAD("mprotect(PROT_WRITE) of a read-only shared mapping "
			    "succeeded\n");
		/* A private mapping may be written: copy on write. */
		uint8_t *q = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, afd, 0);
		if (q != MAP_FAILED) {
			uint8_t before = ((volatile uint8_t *)p)[0];
			q[0] = (uint8_t)~before;
			if (((volatile uint8_t *)p)[0] != before)
				BAD("writing a MAP_PRIVATE copy changed the shared "
				    "arena\n");
			munmap(q, 4096);
		}
		munmap(p, size);
	}
	/* A memfd can be reopened through /proc: with what access? */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", afd);
	int rw = open(path, O_RDWR | O_CLOEXEC);
	struct stat st;
	int seals = fcntl(afd, F_GET_SEALS);
	fstat(afd, &st);
	size_t iu = (size_t)snprintf(info, info_len,
				     "arena inode mode 0%o, seals 0x%x; reopen of "
				     "/proc/self/fd/%d O_RDWR: %s",
				     st.st_mode & 07777, seals, afd,
				     rw < 0 ? strerror(errno) : "opened");
	if (rw >= 0) {
		uint8_t b;
		bool wrote = false, mapped = false;
		/* the same byte back: nothing changes if it works */
		if (pread(rw, &b, 1, (off_t)size - 1) == 1 &&
		    pwrite(rw, &b, 1, (off_t)size - 1) == 1)
			wrote = true;
		void *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
		if (w != MAP_FAILED) {
			mapped = true;
			munmap(w, 4096);
		}
		if (iu < info_len)
			snprintf(info + iu, info_len - iu, "; pwrite %s, writable "
				 "shared mmap %s",
				 wrote ? "SUCCEEDED" : "failed",
				 mapped ? "SUCCEEDED" : "failed");
		if (hard_reopen && (wrote || mapped))
			BAD("a client reopened its arena fd through %s read-write and "
			    "%s the cache: nothing stops it (no F_SEAL_FUTURE_WRITE "
			    "on the memfd; seals 0x%x, inode mode 0%o)\n",
			    path, wrote ? "wrote" : "mapped writable", seals,
			    st.st_mode & 07777);
		close(rw);
	}
#undef BAD
	return fails;
}

static void arena_as_root(const struct dt_daemon *d)
{
	int fd = dt_raw_connect(d->sock), afd = -1;
	uint64_t size = 0;
	if (fd < 0 || dt_raw_hello(fd, &afd, &size)) {
		t_fail_at(__FILE__, __LINE__, "raw HELLO on %s failed", d->sock);
		if (fd >= 0)
			close(fd);
		return;
	}
	char out[2048] = "", info[512] = "";
	int fails = arena_checks(afd, size, true, out, sizeof(out), info,
				 sizeof(info));
	T_CHECK(fails == 0, "as uid %u:\n%s", (unsigned)getuid(), out);
	printf("arena as uid %u: %d problem(s); %s\n", (unsigned)getuid(), fails,
	       info);
	close(afd);
	close(fd);

	/* The client library's own mapping. */
	struct ms_err err = { 0 };
	struct ms_client *c = dt_connect(d->sock, "writer", &err);
	if (!c) {
		t_fail_at(__FILE__, __LINE__, "connect: %s", err.msg);
		return;
	}
	uint16_t e = 5;
	struct ms_client_expert got;
	uint32_t block = model->layers[1].block;
	int rc = ms_client_acquire(c, block, &e, 1, &got, 10000);
	T_CHECK(rc == 0, "acquire %u:5: %s", block, strerror(-rc));
	if (!rc) {
		uintptr_t pg = (uintptr_t)got.proj[0] & ~(uintptr_t)4095;
		int mp = mprotect((void *)pg, 4096, PROT_READ | PROT_WRITE);
		T_CHECK(mp != 0, "mprotect(PROT_WRITE) of the client's arena mapping "
			"succeeded");
		printf("mprotect(PROT_WRITE) of the mapping of %u:5 at %p: %s\n",
		       block, (void *)pg, mp ? strerror(errno) : "SUCCEEDED");
		ms_client_release(c, block, &e, 1);
	}
	ms_client_close(c);
}

/* ---- 2. other users ------------------------------------------------------------------- */

enum child_what { CH_CONNECT, CH_ARENA };

enum child_result {
	R_CONNECTED = 0,
	R_REFUSED = 1,      /* the daemon closed the connection */
	R_EACCES = 2,       /* the socket's mode kept it out */
	R_OTHER = 3,
	R_ARENA_BAD = 4,    /* connected, and could write the arena */
	R_SETUID = 5,
};

/* Forks a child that becomes uid:gid (no supplementary groups) and
 * connects; the child's message (if any) lands in msg. */
static int as_user(const char *sock, uid_t uid, gid_t gid, enum child_what what,
		   char *msg, size_t msg_len)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC))
		t_fatal("pipe");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork");
	if (pid == 0) {
		close(p[0]);
		char out[2048] = "", info[512] = "";
		int r = R_OTHER;
		if (setgroups(0, NULL) || setgid(gid) || setuid(uid)) {
			r = R_SETUID;
			snprintf(out, sizeof(out), "setuid: %s", strerror(errno));
			goto done;
		}
		if (what == CH_CONNECT) {
			struct ms_err err = { 0 };
			struct ms_client *c = dt_connect(sock, "other-user", &err);
			if (c && ms_client_ping(c, 5000) == 0)
				r = R_CONNECTED;
			else if (c)
				r = R_REFUSED;
			else if (err.code == -EACCES)
				r = R_EACCES;
			else if (err.code == -EPERM || err.code == -ECONNRESET ||
				 err.code == -EPIPE || err.code == -ENOTCONN)
				r = R_REFUSED; /* -EPERM: the daemon's ERROR said why */
			snprintf(out, sizeof(out), "%s", c ? "connected" : err.msg);
			ms_client_close(c);
		} else {
			int fd = dt_raw_connect(sock), afd = -1;
			uint64_t size = 0;
			if (fd == -EACCES) {
				r = R_EACCES;
				snprintf(out, sizeof(out), "EACCES");
			} else if (fd < 0 || dt_raw_hello(fd, &afd, &size)) {
				r = R_REFUSED;
				snprintf(out, sizeof(out), "HELLO failed");
			} else {
				int f = arena_checks(afd, size, true, out, sizeof(out),
						     info, sizeof(info));
				r = f ? R_ARENA_BAD : R_CONNECTED;
				size_t n = strlen(out);
				snprintf(out + n, sizeof(out) - n, "%s", info);
			}
		}
	done:
		if (write(p[1], out, strlen(out)) < 0) {
			/* the parent sees an empty message */
		}
		_exit(r);
	}
	dt_track(pid);
	close(p[1]);
	size_t got = 0;
	msg[0] = '\0';
	for (;;) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		if (poll(&pfd, 1, 20000) != 1)
			break;
		ssize_t n = read(p[0], msg + got, msg_len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		msg[got] = '\0';
	}
	close(p[0]);
	int st = dt_waitpid(pid, 20000);
	if (st < 0) {
		kill(pid, SIGKILL);
		dt_waitpid(pid, 5000);
		return R_OTHER;
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : R_OTHER;
}

static const char *rname(int r)
{
	static const char *const n[] = { "connected", "refused by the daemon",
					 "EACCES (socket mode)", "other failure",
					 "connected, and could WRITE the arena",
					 "could not setuid" };
	return r >= 0 && r <= R_SETUID ? n[r] : "?";
}

static void expect_user(const struct dt_daemon *d, uid_t uid, gid_t gid,
			int want, const char *why)
{
	char msg[4096];
	int r = as_user(d->sock, uid, gid, CH_CONNECT, msg, sizeof(msg));
	printf("uid %u gid %u on %s (%s): %s\n", (unsigned)uid, (unsigned)gid,
	       d->name, why, rname(r));
	T_CHECK(r == want, "uid %u gid %u on %s (%s): %s, expected %s (%s)",
		(unsigned)uid, (unsigned)gid, d->name, why, rname(r), rname(want),
		msg);
}

static void other_users(void)
{
	if (!is_root) {
		printf("skip: the uid/gid cases need root to become uid %d "
		       "(running as uid %u)\n",
		       NOBODY, (unsigned)getuid());
		return;
	}
	/* The test folder must be reachable by nobody for the socket's mode
	 * and the allow lists to be what decides. */
	if (chmod(t_tmpdir(), 0711))
		t_fatal("chmod %s: %s", t_tmpdir(), strerror(errno));
	struct dt_daemon open_d, users_d, groups_d, strict_d;

	if (dt_start(&open_d, "open", model_path, "[socket]\nmode = 0666\n"))
		return;
	char msg[4096];
	int r = as_user(open_d.sock, NOBODY, NOBODY, CH_CONNECT, msg, sizeof(msg));
	if (r == R_EACCES) {
		printf("skip: uid %d cannot reach %s (a parent folder is closed to "
		       "it: set MS_TMP to a world-traversable folder)\n",
		       NOBODY, open_d.sock);
		dt_stop(&open_d);
		return;
	}
	T_CHECK(r == R_CONNECTED, "control: uid %d on a daemon with mode 0666 and "
		"no allow lists: %s (%s)", NOBODY, rname(r), msg);
	printf("uid %d gid %d on open (mode 0666, no lists): %s\n", NOBODY, NOBODY,
	       rname(r));
	r = as_user(open_d.sock, NOBODY, NOBODY, CH_ARENA, msg, sizeof(msg));
	printf("arena as uid %d: %s; %s\n", NOBODY, rname(r), msg);
	T_CHECK(r == R_CONNECTED, "arena as uid %d: %s:\n%s", NOBODY, rname(r), msg);
	T_EQ_U64(dt_stop(&open_d), 0);

	if (!dt_start(&strict_d, "strict", model_path, "[socket]\nmode = 0600\n")) {
		expect_user(&strict_d, NOBODY, NOBODY, R_EACCES, "mode 0600");
		T_EQ_U64(dt_stop(&strict_d), 0);
	}

	if (!dt_start(&users_d, "users", model_path,
		      "[socket]\nmode = 0666\nallow_users = root\n")) {
		struct ms_client *c = dt_connect(users_d.sock, "root", NULL);
		T_CHECK(c != NULL, "root refused by allow_users = root");
		expect_user(&users_d, NOBODY, NOBODY, R_REFUSED, "allow_users = root");
		double refused = dt_stat(c, "clients_refused");
		T_CHECK(refused >= 1, "clients_refused %.0f after a refusal", refused);
		char *log = dt_slurp(users_d.log);
		T_CHECK(strstr(log, "refused pid") && strstr(log, "uid 65534"),
			"no log line names the refused uid 65534");
		free(log);

		/* SIGHUP: allow_users is live. */
		dt_write_config(users_d.conf, model_path, users_d.sock,
				"[socket]\nmode = 0666\nallow_users = root, 65534\n");
		kill(users_d.pid, SIGHUP);
		int64_t t0 = dt_now_ms();
		do
			r = as_user(users_d.sock, NOBODY, NOBODY, CH_CONNECT, msg,
				    sizeof(msg));
		while (r != R_CONNECTED && dt_now_ms() - t0 < 3000);
		printf("uid %d after SIGHUP with allow_users = root, 65534: %s (%lld "
		       "ms)\n",
		       NOBODY, rname(r), (long long)(dt_now_ms() - t0));
		T_CHECK(r == R_CONNECTED, "SIGHUP did not let uid %d in: %s (%s)",
			NOBODY, rname(r), msg);
		dt_write_config(users_d.conf, model_path, users_d.sock,
				"[socket]\nmode = 0666\nallow_users = root\n");
		kill(users_d.pid, SIGHUP);
		t0 = dt_now_ms();
		do
			r = as_user(users_d.sock, NOBODY, NOBODY, CH_CONNECT, msg,
				    sizeof(msg));
		while (r != R_REFUSED && dt_now_ms() - t0 < 3000);
		T_CHECK(r == R_REFUSED, "SIGHUP did not take uid %d out again: %s",
			NOBODY, rname(r));
		ms_client_close(c);
		T_EQ_U64(dt_stop(&users_d), 0);
	}

	if (!dt_start(&groups_d, "groups", model_path,
		      "[socket]\nmode = 0666\nallow_groups = 65534\n")) {
		expect_user(&groups_d, NOBODY, NOBODY, R_CONNECTED,
			    "allow_groups = 65534, gid 65534");
		expect_user(&groups_d, NOBODY, 12345, R_REFUSED,
			    "allow_groups = 65534, gid 12345");
		T_EQ_U64(dt_stop(&groups_d), 0);
	}
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(180, "t_daemon_security");
	is_root = geteuid() == 0;
	model_path = dt_model("sec.gguf", "--preset tiny");
	struct ms_err err = { 0 };
	if (ms_model_open(&model, model_path, &err))
		t_fatal("%s", err.msg);

	check_mode("mode600", "mode = 0600", 0600);
	check_mode("mode660", "# mode: the default", 0660);
	check_mode("mode666", "mode = 0666", 0666);

	struct dt_daemon d;
	if (!dt_start(&d, "arena", model_path, NULL)) {
		arena_as_root(&d);
		T_EQ_U64(dt_stop(&d), 0);
	}
	other_users();
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
