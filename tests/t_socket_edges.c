/*
 * t_socket_edges.c - the corners of socket security that t_daemon_frames and
 * t_daemon_security leave open.
 *
 * Covered there: the socket's mode from the moment of bind (ptrace), the
 * SO_PEERCRED allow lists, a read-only arena, SCM_RIGHTS with 1, 2, 8, 9
 * (control data truncated) and 253 descriptors and with wrong kinds (an
 * eventfd, a socket, a directory, the arena fd itself), a cmsg_len past its
 * buffer, SCM_CREDENTIALS; an abstract or 108-byte socket.path refused by
 * the configuration (t_config, t_daemon_config). Here:
 *
 * 1. Over-long paths on the client side: ms_client_connect with a 200-byte
 *    and a 108-byte path is refused with -ENAMETOOLONG and a message that
 *    says so, before any socket is made (no descriptor left open); a
 *    107-byte path that does not exist is -ENOENT, not a length error.
 * 2. No abstract socket: the daemon's listening socket is a path in the
 *    filesystem (/proc/net/unix shows the path, no '@' name), and the
 *    abstract name "@<socket path>" reaches nobody (ECONNREFUSED).
 * 3. SCM_RIGHTS with 0 descriptors (a header with no payload): the daemon
 *    answers or closes, and lives. 254 descriptors: the kernel caps one
 *    message at SCM_MAX_FD = 253 and refuses the sendmsg itself (EINVAL) -
 *    nothing reaches the daemon, the connection stays in step; this is
 *    what "254 fds" means on Linux. Two SCM_RIGHTS headers of 127 each in
 *    one message: whatever the kernel does with it, no copy of the pipe
 *    leaks in the daemon. 253 descriptors sent before HELLO and after:
 *    none leaks.
 * 4. The daemon's descriptor count (/proc/PID/fd) is where it started, and
 *    a normal client is served all along.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemontest.h"

static struct dt_daemon dmn;
static uint8_t rbuf[MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD + 64];

static int self_fds(void)
{
	return dt_fd_count(getpid());
}

/* ---- 1. client-side paths --------------------------------------------------------- */

static void client_paths(void)
{
	char path[256];
	static const size_t lens[] = { 200, 108 };
	for (size_t k = 0; k < 2; k++) {
		int n = snprintf(path, sizeof(path), "%s/", t_tmpdir());
		while ((size_t)n < lens[k])
			path[n++] = 'p';
		path[n] = '\0';
		int before = self_fds();
		struct ms_client *c = NULL;
		struct ms_err err = { 0 };
		int rc = ms_client_connect(&c, path, "long", &err);
		printf("  ms_client_connect, %zu-byte path: %s (%s)\n", strlen(path),
		       strerror(-rc), err.msg);
		T_CHECK(rc == -ENAMETOOLONG && err.code == rc && !c,
			"a %zu-byte socket path: rc %d (%s), expected -ENAMETOOLONG",
			strlen(path), rc, err.msg);
		T_CHECK(strstr(err.msg, "longer than") || strstr(err.msg, "107"),
			"the message does not say the path is too long: %s", err.msg);
		T_CHECK(self_fds() == before, "a refused connect left %d descriptors "
			"open", self_fds() - before);
	}
	/* 107 bytes: a valid length, nothing there. */
	int n = snprintf(path, sizeof(path), "%s/", t_tmpdir());
	while (n < 107)
		path[n++] = 'q';
	path[n] = '\0';
	struct ms_client *c = NULL;
	struct ms_err err = { 0 };
	int rc = ms_client_connect(&c, path, "107", &err);
	printf("  ms_client_connect, 107-byte path to nothing: %s\n", strerror(-rc));
	T_CHECK(rc == -ENOENT, "a 107-byte path to nothing: %s, expected ENOENT",
		strerror(-rc));
}

/* ---- 2. no abstract name ------------------------------------------------------------ */

static void no_abstract(void)
{
	struct stat st;
	T_CHECK(!lstat(dmn.sock, &st) && S_ISSOCK(st.st_mode), "%s is not a socket "
		"file", dmn.sock);
	char *t = dt_slurp("/proc/net/unix");
	bool path_seen = strstr(t, dmn.sock) != NULL;
	char at[120];
	snprintf(at, sizeof(at), "@%s", dmn.sock);
	bool abstract_seen = strstr(t, at) != NULL;
	free(t);
	T_CHECK(path_seen, "/proc/net/unix does not list %s", dmn.sock);
	T_CHECK(!abstract_seen, "an abstract socket %s exists", at);
	/* Connect to the abstract twin of the path: nobody answers. */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(dmn.sock);
	memcpy(sa.sun_path + 1, dmn.sock, len); /* sun_path[0] = 0: abstract */
	int rc = connect(fd, (struct sockaddr *)&sa,
			 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len));
	int e = errno;
	close(fd);
	printf("  listening socket: a path (/proc/net/unix), abstract twin: %s\n",
	       rc ? strerror(e) : "CONNECTED");
	T_CHECK(rc && e == ECONNREFUSED, "the abstract name @%s answers", dmn.sock);
}

/* ---- 3. descriptors --------------------------------------------------------------- */

static int hello_conn(bool hello)
{
	int fd = dt_raw_connect(dmn.sock);
	if (fd < 0)
		t_fatal("connect: %s", strerror(-fd));
	if (hello) {
		int afd;
		if (dt_raw_hello(fd, &afd, NULL))
			t_fatal("HELLO failed");
		close(afd);
	}
	return fd;
}

/* After a case: the pipe's read end sees EOF once the daemon closed every
 * copy of the write end it received. */
static bool pipe_closed(int rd)
{
	struct pollfd p = { .fd = rd, .events = POLLIN };
	char c;
	return poll(&p, 1, 1000) == 1 && read(rd, &c, 1) == 0;
}

/* Sends a PING with `ctl` control bytes; what came back: "answered",
 * "closed", "sendmsg: ...". Our pipe copies are closed before returning. */
static const char *send_ctl(int fd, void *ctl, size_t ctl_len, int *rc_out)
{
	static char text[128];
	uint8_t ping[MS_MSG_HDR_SIZE];
	dt_put_hdr(ping, MS_MSG_MAGIC, MS_PROTO_VERSION, MS_MSG_PING, 0, 0, 77);
	struct iovec iov = { .iov_base = ping, .iov_len = sizeof(ping) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = ctl_len };
	ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	if (n < 0) {
		*rc_out = -errno;
		snprintf(text, sizeof(text), "sendmsg: %s", strerror(errno));
		return text;
	}
	int m = dt_raw_recv(fd, rbuf, sizeof(rbuf), 1000, NULL, 0, NULL);
	*rc_out = m;
	if (m > 0) {
		struct ms_msg_hdr h;
		int32_t st = 0;
		char msg[128] = "";
		if (!dt_parse(rbuf, m, &h, &st, msg, sizeof(msg)) &&
		    h.type == MS_MSG_ERROR)
			snprintf(text, sizeof(text), "ERROR %d (%s)", st, msg);
		else
			snprintf(text, sizeof(text), "answered (type %u)",
				 m >= 8 ? rbuf[6] : 0);
	} else {
		snprintf(text, sizeof(text), "%s", m == 0 || m == -ECONNRESET
			 ? "closed" : strerror(-m));
	}
	return text;
}

/* A control buffer with `k` SCM_RIGHTS headers of `each` copies of wfd. */
static size_t build_rights(char *ctl, size_t cap, int wfd, unsigned k,
			   unsigned each)
{
	struct msghdr mh = { .msg_control = ctl, .msg_controllen = cap };
	memset(ctl, 0, cap);
	size_t used = 0;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	for (unsigned i = 0; i < k && cm; i++) {
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * each);
		for (unsigned j = 0; j < each; j++)
			memcpy(CMSG_DATA(cm) + j * sizeof(int), &wfd, sizeof(int));
		used += CMSG_SPACE(sizeof(int) * each);
		mh.msg_controllen = used + (i + 1 < k ? CMSG_SPACE(sizeof(int) * each) : 0);
		cm = i + 1 < k ? CMSG_NXTHDR(&mh, cm) : NULL;
	}
	return used;
}

static void fd_case(const char *name, bool hello, unsigned k, unsigned each,
		    bool expect_refused)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC))
		t_fatal("pipe");
	int fd = hello_conn(hello);
	static char ctl[CMSG_SPACE(sizeof(int) * 300) * 2];
	size_t len = build_rights(ctl, sizeof(ctl), p[1], k, each);
	int rc;
	const char *what = send_ctl(fd, ctl, len, &rc);
	close(p[1]);
	bool closed = pipe_closed(p[0]);
	close(p[0]);
	printf("  %-46s %s HELLO: %s; daemon's copies %s\n", name,
	       hello ? "after" : "before", what, closed ? "all closed" : "LEAKED");
	T_CHECK(closed, "%s (%s HELLO): a descriptor leaked in the daemon", name,
		hello ? "after" : "before");
	if (expect_refused)
		T_CHECK(rc == -EINVAL, "%s: the kernel let it through (%s)", name, what);
	if (rc == -EINVAL || rc == -ETOOMANYREFS) {
		/* Nothing was sent: the connection is in step. */
		int r2;
		const char *w2 = send_ctl(fd, NULL, 0, &r2);
		T_CHECK(r2 > 0, "%s: after the refused sendmsg the connection does "
			"not answer a PING (%s)", name, w2);
	}
	T_CHECK(rc != -ETIMEDOUT, "%s: neither an answer nor a close in 1 s", name);
	close(fd);
	T_CHECK(dt_daemon_alive(&dmn), "%s: the daemon died", name);
}

static void fd_zero_case(bool hello)
{
	int fd = hello_conn(hello);
	char ctl[CMSG_SPACE(0) + 16];
	memset(ctl, 0, sizeof(ctl));
	struct cmsghdr *cm = (struct cmsghdr *)ctl;
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(0);
	int rc;
	const char *what = send_ctl(fd, ctl, CMSG_SPACE(0), &rc);
	printf("  %-46s %s HELLO: %s\n", "SCM_RIGHTS with 0 fds", hello ? "after" :
	       "before", what);
	T_CHECK(rc != -ETIMEDOUT, "SCM_RIGHTS with 0 fds: no verdict in 1 s");
	close(fd);
	T_CHECK(dt_daemon_alive(&dmn), "0 fds: the daemon died");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(120, "t_socket_edges");
	printf("1. client-side paths\n");
	client_paths();

	const char *path = dt_model("edges.gguf", "--preset tiny");
	if (dt_start(&dmn, "edges", path, NULL))
		t_fatal("the daemon did not start");
	struct ms_err err = { 0 };
	struct ms_client *good = dt_connect(dmn.sock, "good", &err);
	if (!good)
		t_fatal("%s", err.msg);
	dt_sleep_ms(20);
	int base = dt_fd_count(dmn.pid);

	printf("2. no abstract socket\n");
	no_abstract();

	printf("3. descriptors (the daemon: %d open)\n", base);
	for (int h = 0; h < 2; h++) {
		fd_zero_case(h);
		fd_case("SCM_RIGHTS: 253 fds (SCM_MAX_FD)", h, 1, 253, false);
		fd_case("SCM_RIGHTS: 254 fds (one over SCM_MAX_FD)", h, 1, 254, true);
		fd_case("SCM_RIGHTS: 2 headers x 127 fds (254 in all)", h, 2, 127,
			false);
		fd_case("SCM_RIGHTS: 2 headers x 100 fds", h, 2, 100, false);
	}

	dt_sleep_ms(50);
	int end = dt_fd_count(dmn.pid);
	printf("4. the daemon: %d descriptors open (%d before the cases)\n", end, base);
	T_CHECK(end == base, "the daemon has %d descriptors, %d before", end, base);
	T_CHECK(!ms_client_ping(good, 2000), "the good client is no longer served");
	ms_client_close(good);
	T_EQ_U64(dt_stop(&dmn), 0);
	dt_check_crashes();
	return t_done();
}
