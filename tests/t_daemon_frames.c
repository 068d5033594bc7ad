/*
 * t_daemon_frames.c - malformed frames against the real moestreamd.
 *
 * Each case opens a raw SOCK_SEQPACKET connection, says HELLO or not, sends
 * one bad message (a bad header, a bad payload, descriptors it should never
 * get) and waits up to a second for the daemon's verdict: an ERROR reply
 * (then, if the connection stays, a PING on it must still be answered: the
 * stream is in step) or a disconnect. All the while a good client in another
 * thread acquires experts, compares their bytes with the file and pings: it
 * must never notice. Descriptors passed to the daemon are copies of a pipe's
 * write end: once the daemon has closed each copy the read end sees end of
 * file, which proves that none leaked; an eventfd, a socket, a directory and
 * the arena fd itself travel too. At the end /proc/PID/fd of the daemon has
 * the count it had before the first case.
 *
 * The table printed at the end (case, verdict, milliseconds, message) is
 * the record of what the daemon answers to what.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"

#define BUF_CAP (MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD + 8192)

static struct ms_model *model;
static struct dt_daemon dmn;
static uint8_t *msg;       /* the message being built */
static uint8_t *rbuf;
static uint64_t rng;

/* ---- the good client, in parallel ------------------------------------------------ */

static atomic_bool good_run;
static atomic_ulong good_ok, good_fail;
static char good_first_fail[256];

static void *good_main(void *arg)
{
	(void)arg;
	struct ms_err err = { 0 };
	struct ms_client *c = dt_connect(dmn.sock, "good", &err);
	if (!c) {
		snprintf(good_first_fail, sizeof(good_first_fail), "connect: %s",
			 err.msg);
		atomic_fetch_add(&good_fail, 1);
		return NULL;
	}
	uint64_t r = rng ^ 0x600d;
	uint8_t *fbuf = malloc(model->expert_bytes_max);
	while (atomic_load(&good_run)) {
		uint32_t l = (uint32_t)(t_rand(&r) % model->n_layers);
		uint16_t ex[2] = { (uint16_t)(t_rand(&r) % model->n_expert), 0 };
		ex[1] = (uint16_t)((ex[0] + 1) % model->n_expert);
		struct ms_client_expert got[2];
		int rc = ms_client_acquire(c, model->layers[l].block, ex, 2, got, 5000);
		bool ok = !rc;
		for (int i = 0; ok && i < 2; i++) {
			const struct ms_extent *e = ms_model_expert(model, l, ex[i]);
			for (uint32_t j = 0; ok && j < got[i].n_proj; j++)
				ok = got[i].len[j] == e[j].bytes &&
				     pread(model->shards[e[j].shard]->fd, fbuf, e[j].bytes,
					   (off_t)e[j].offset) == (ssize_t)e[j].bytes &&
				     !memcmp(fbuf, got[i].proj[j], e[j].bytes);
		}
		if (!rc)
			ms_client_release(c, model->layers[l].block, ex, 2);
		if (ok)
			ok = !(rc = ms_client_ping(c, 5000));
		if (ok) {
			atomic_fetch_add(&good_ok, 1);
		} else if (!atomic_fetch_add(&good_fail, 1)) {
			snprintf(good_first_fail, sizeof(good_first_fail),
				 "acquire/verify/release/ping: %s (%s)",
				 rc ? strerror(-rc) : "bytes differ",
				 ms_client_last_error(c));
		}
		dt_sleep_ms(1);
	}
	free(fbuf);
	ms_client_close(c);
	return NULL;
}

/* ---- cases ------------------------------------------------------------------------------ */

enum verdict {
	V_ERROR_KEPT,   /* ERROR, and the connection still answers a PING */
	V_ERROR_CLOSED, /* ERROR, then end of stream */
	V_CLOSED,       /* end of stream without a word */
	V_EXPERT_ERR,   /* an EXPERT reply whose entries all failed */
	V_REPLY,        /* some other reply (a valid request) */
	V_SEND_FAILED,  /* the kernel refused to send it */
	V_TIMEOUT,      /* nothing within a second */
	V_BAD_REPLY,    /* something the client library could not parse */
};

static const char *const vname[] = {
	"error, kept", "error, closed", "closed", "expert error", "reply",
	"send refused", "NOTHING (timeout)", "BAD REPLY",
};

struct result {
	char name[64];
	bool hello;
	enum verdict v;
	int64_t ms;
	int32_t status;
	unsigned extra;        /* more ERRORs that followed the first */
	char text[120];
};

static struct result results[160];
static unsigned n_results;

/* How a case may end: a bit per acceptable verdict. */
#define OK_ERR ((1u << V_ERROR_KEPT) | (1u << V_ERROR_CLOSED) | (1u << V_CLOSED))
#define OK_ACQ (OK_ERR | (1u << V_EXPERT_ERR))
#define OK_ANY (OK_ERR | (1u << V_REPLY))

/* The pipe whose write end travels in SCM_RIGHTS: its read end sees EOF once
 * every copy is closed. */
struct fdset {
	int fds[260];
	int n;
	int pipe_rd;           /* -1 when no pipe is involved */
};

/* Checks, after the case, that the daemon closed every copy of the pipe. */
static void check_pipe_closed(const char *name, bool hello, int rd)
{
	struct pollfd p = { .fd = rd, .events = POLLIN };
	char c;
	int64_t t0 = dt_now_ms();
	int r = poll(&p, 1, 1000);
	ssize_t n = r == 1 ? read(rd, &c, 1) : -1;
	T_CHECK(n == 0,
		"%s (%s HELLO): the pipe end passed to the daemon is still open "
		"%lld ms later: a descriptor leaked in moestreamd",
		name, hello ? "after" : "before", (long long)(dt_now_ms() - t0));
	close(rd);
}

/* Runs one case: `len` bytes of msg (with fds), the verdicts allowed. */
static void run_case(const char *name, bool hello, size_t len, struct fdset *fs,
		     unsigned allowed)
{
	struct result *res = &results[n_results++];
	memset(res, 0, sizeof(*res));
	snprintf(res->name, sizeof(res->name), "%s", name);
	res->hello = hello;
	if (!dt_daemon_alive(&dmn))
		t_fatal("moestreamd died before '%s' (%s HELLO); the cases after "
			"it cannot run", name, hello ? "after" : "before");
	int fd = dt_raw_connect(dmn.sock);
	if (fd < 0) {
		t_fail_at(__FILE__, __LINE__, "%s: connect: %s", name, strerror(-fd));
		return;
	}
	if (hello) {
		int afd;
		int rc = dt_raw_hello(fd, &afd, NULL);
		if (rc) {
			t_fail_at(__FILE__, __LINE__, "%s: HELLO: %s", name,
				  strerror(-rc));
			close(fd);
			return;
		}
		close(afd);
	}
	int64_t t0 = dt_now_ms();
	int rc = dt_raw_send(fd, msg, len, fs ? fs->fds : NULL, fs ? fs->n : 0);
	if (fs) {
		/* our copies go now: only the daemon's may remain */
		for (int i = 0; i < fs->n; i++)
			if (i == 0 || fs->fds[i] != fs->fds[0])
				close(fs->fds[i]);
	}
	if (rc) {
		res->v = V_SEND_FAILED;
		res->status = rc;
		snprintf(res->text, sizeof(res->text), "sendmsg: %s", strerror(-rc));
		goto done;
	}
	int n = dt_raw_recv(fd, rbuf, BUF_CAP, 1000, NULL, 0, NULL);
	res->ms = dt_now_ms() - t0;
	struct ms_msg_hdr h;
	if (n == -ETIMEDOUT) {
		res->v = V_TIMEOUT;
	} else if (n == 0 || n == -ECONNRESET) {
		res->v = V_CLOSED;
	} else if (n < 0) {
		res->v = V_CLOSED;
		snprintf(res->text, sizeof(res->text), "recv: %s", strerror(-n));
	} else if (dt_parse(rbuf, n, &h, &res->status, res->text, sizeof(res->text))) {
		res->v = V_BAD_REPLY;
	} else if (h.type == MS_MSG_ERROR) {
		/* Is the connection still there, and in step? */
		uint8_t ping[MS_MSG_HDR_SIZE];
		dt_put_hdr(ping, MS_MSG_MAGIC, MS_PROTO_VERSION, MS_MSG_PING, 0, 0, 4242);
		int m = dt_raw_send(fd, ping, sizeof(ping), NULL, 0);
		struct ms_msg_hdr h2;
		/* More ERRORs may come first (one per bad expert of a list). */
		for (unsigned more = 0; !m && more < 1024; more++) {
			m = dt_raw_recv(fd, rbuf, BUF_CAP, 1000, NULL, 0, NULL);
			if (m > 0 && !dt_parse(rbuf, m, &h2, NULL, NULL, 0) &&
			    h2.type == MS_MSG_ERROR)
				m = 0, res->extra++;
			else
				break;
		}
		if (m > 0 && !dt_parse(rbuf, m, &h2, NULL, NULL, 0) &&
		    h2.type == MS_MSG_PING && h2.id == 4242)
			res->v = V_ERROR_KEPT;
		else if (m == 0 || m == -ECONNRESET || m == -EPIPE)
			res->v = V_ERROR_CLOSED;
		else
			res->v = V_TIMEOUT; /* neither answered nor closed */
	} else if (h.type == MS_MSG_EXPERT) {
		struct ms_expert_rep *rep = malloc(sizeof(*rep));
		char why[128];
		res->v = V_EXPERT_ERR;
		if (!rep || ms_msg_decode_expert_rep(rbuf + MS_MSG_HDR_SIZE, h.len, rep,
						     why)) {
			res->v = V_BAD_REPLY;
		} else {
			for (uint32_t i = 0; i < rep->n; i++)
				if (rep->e[i].status >= 0)
					res->v = V_REPLY; /* something was pinned */
			res->status = rep->e[0].status;
			snprintf(res->text, sizeof(res->text), "EXPERT: %u entries, "
				 "first status %d", rep->n, rep->e[0].status);
		}
		free(rep);
	} else {
		res->v = V_REPLY;
		snprintf(res->text, sizeof(res->text), "reply type %u, %u bytes",
			 h.type, h.len);
	}
done:
	close(fd);
	T_CHECK(allowed & (1u << res->v), "%s (%s HELLO): %s in %lld ms (%d %s)",
		name, hello ? "after" : "before", vname[res->v], (long long)res->ms,
		res->status, res->text);
	T_CHECK(res->ms <= 1000, "%s: the verdict took %lld ms", name,
		(long long)res->ms);
	if (fs && fs->pipe_rd >= 0)
		check_pipe_closed(name, hello, fs->pipe_rd);
	/* The daemon still serves. */
	int g = atomic_load(&good_fail);
	T_CHECK(g == 0, "after %s: the good client failed: %s", name,
		good_first_fail);
}

/* ---- building messages --------------------------------------------------------------- */

static void put_le(uint8_t *p, uint64_t v, unsigned size)
{
	for (unsigned i = 0; i < size; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A valid header for `type` with `len` payload bytes. */
static size_t hdr(uint16_t type, uint32_t len)
{
	dt_put_hdr(msg, MS_MSG_MAGIC, MS_PROTO_VERSION, type, 0, len, 77);
	return MS_MSG_HDR_SIZE + len;
}

/* An expert-list message: block, n (as claimed), flags, the experts given. */
static size_t experts_msg_s(uint16_t type, uint32_t block, uint32_t n_claimed,
			    uint32_t flags, const uint16_t *ex, unsigned n_given,
			    const float *scores, unsigned n_scores)
{
	uint8_t *p = msg + MS_MSG_HDR_SIZE;
	put_le(p, block, 4);
	put_le(p + 4, n_claimed, 4);
	put_le(p + 8, flags, 4);
	uint32_t len = 12;
	for (unsigned i = 0; i < n_given; i++, len += 2)
		put_le(p + len, ex[i], 2);
	for (unsigned i = 0; scores && i < n_scores; i++, len += 4) {
		uint32_t u;
		memcpy(&u, &scores[i], 4);
		put_le(p + len, u, 4);
	}
	return hdr(type, len);
}

/* The same with one score per expert given (scores may be NULL). */
static size_t experts_msg(uint16_t type, uint32_t block, uint32_t n_claimed,
			  uint32_t flags, const uint16_t *ex, unsigned n_given,
			  const float *scores)
{
	return experts_msg_s(type, block, n_claimed, flags, ex, n_given, scores,
			     scores ? n_given : 0);
}

static size_t hello_msg(uint16_t minv, uint16_t maxv, bool terminate, uint32_t len)
{
	uint8_t *p = msg + MS_MSG_HDR_SIZE;
	memset(p, 0, 40);
	put_le(p, minv, 2);
	put_le(p + 2, maxv, 2);
	put_le(p + 4, (uint32_t)getpid(), 4);
	memset(p + 8, terminate ? 0 : 'x', 32);
	memcpy(p + 8, "frames", 6);
	return hdr(MS_MSG_HELLO, len);
}

static size_t ping_msg(void)
{
	return hdr(MS_MSG_PING, 0);
}

/* Header-level cases: the same before and after HELLO. */
static void header_cases(bool hello)
{
	size_t n;
	run_case("empty message (0 bytes)", hello, 0, NULL, OK_ERR);
	n = ping_msg();
	run_case("truncated header (10 bytes)", hello, 10, NULL, OK_ERR);
	run_case("truncated header (23 bytes)", hello, 23, NULL, OK_ERR);

	n = hdr(MS_MSG_PING, 8);
	put_le(msg + 12, 0xffffffffu, 4);
	run_case("huge length field (0xffffffff, 8 sent)", hello, n, NULL, OK_ERR);
	n = hdr(MS_MSG_PING, 50);
	put_le(msg + 12, 100, 4);
	run_case("length 100, 50 sent", hello, n, NULL, OK_ERR);
	n = hdr(MS_MSG_PING, 50);
	put_le(msg + 12, 10, 4);
	run_case("length 10, 50 sent", hello, n, NULL, OK_ERR);
	n = hdr(MS_MSG_PING, 0);
	put_le(msg + 12, MS_MSG_MAX_PAYLOAD + 1, 4);
	run_case("length over the cap, 0 sent", hello, n, NULL, OK_ERR);

	static const uint16_t types[] = { 0, MS_MSG_TYPE_MAX + 1, 0x7fff, 0xffff };
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		char name[64];
		snprintf(name, sizeof(name), "unknown type %u", types[i]);
		n = hdr(types[i], 0);
		run_case(name, hello, n, NULL, OK_ERR);
	}
	static const uint16_t versions[] = { 0, MS_PROTO_VERSION + 1, 0xffff };
	for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
		char name[64];
		snprintf(name, sizeof(name), "wrong version %u", versions[i]);
		n = ping_msg();
		put_le(msg + 4, versions[i], 2);
		run_case(name, hello, n, NULL, OK_ERR);
	}
	n = ping_msg();
	memcpy(msg, "MSM2", 4);
	run_case("wrong magic MSM2", hello, n, NULL, OK_ERR);
	n = ping_msg();
	put_le(msg, __builtin_bswap32(MS_MSG_MAGIC), 4);
	run_case("magic byte-swapped", hello, n, NULL, OK_ERR);
	n = ping_msg();
	put_le(msg + 8, 1, 4);
	run_case("flags 0x1", hello, n, NULL, OK_ERR);
	n = ping_msg();
	put_le(msg + 8, 0x80000000u, 4);
	run_case("flags 0x80000000", hello, n, NULL, OK_ERR);

	static const unsigned garbage[] = { 1, 24, 200, 4096, 65560 };
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		char name[64];
		snprintf(name, sizeof(name), "%u garbage bytes", garbage[i]);
		for (unsigned k = 0; k < garbage[i]; k++)
			msg[k] = (uint8_t)t_rand(&rng);
		run_case(name, hello, garbage[i], NULL, OK_ERR);
	}
	n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD + 1);
	memset(msg + MS_MSG_HDR_SIZE, 'p', MS_MSG_MAX_PAYLOAD + 1);
	run_case("64 KiB + 1 payload (over the cap)", hello, n, NULL, OK_ERR);
	n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD + 4096);
	run_case("64 KiB + 4 KiB payload", hello, n, NULL, OK_ERR);
	n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD + 4096);
	put_le(msg + 12, MS_MSG_MAX_PAYLOAD, 4);
	run_case("over the cap, length field says the cap", hello, n, NULL, OK_ERR);
}

/* Payload cases after HELLO: the header is right, what follows is not. */
static void payload_cases(void)
{
	size_t n;
	uint16_t ex[600];
	for (unsigned i = 0; i < 600; i++)
		ex[i] = (uint16_t)(i % model->n_expert);
	uint32_t blk = model->layers[0].block;

	n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD);
	memset(msg + MS_MSG_HDR_SIZE, 'q', MS_MSG_MAX_PAYLOAD);
	run_case("PING of exactly 64 KiB (valid)", true, n, NULL, 1u << V_REPLY);

	n = hdr(MS_MSG_EXPERT, 0);
	run_case("EXPERT from a client", true, n, NULL, OK_ERR);
	n = hdr(MS_MSG_ERROR, 0);
	run_case("ERROR from a client", true, n, NULL, OK_ERR);
	n = hello_msg(1, 1, true, 40);
	run_case("HELLO twice", true, n, NULL, OK_ERR);

	n = experts_msg(MS_MSG_ACQUIRE, blk, 0, 0, ex, 0, NULL);
	run_case("ACQUIRE n=0", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, MS_MSG_MAX_EXPERTS + 1, 0, ex,
			MS_MSG_MAX_EXPERTS + 1, NULL);
	run_case("ACQUIRE n=513 (over the cap)", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 0xffffffffu, 0, ex, 4, NULL);
	run_case("ACQUIRE n=0xffffffff, 4 given", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 4, 0, ex, 2, NULL);
	run_case("ACQUIRE n=4, 2 given", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 2, 0, ex, 4, NULL);
	run_case("ACQUIRE n=2, 4 given", true, n, NULL, OK_ACQ);
	n = hdr(MS_MSG_ACQUIRE, 6);
	run_case("ACQUIRE payload of 6 bytes", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 1, 1, ex, 1, (const float[]){ 0.5f });
	run_case("ACQUIRE with the scores flag", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 1, 7, ex, 1, NULL);
	run_case("ACQUIRE flags 7", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, model->n_block, 1, 0, ex, 1, NULL);
	run_case("ACQUIRE block n_block (out of range)", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, 0xffffffffu, 1, 0, ex, 1, NULL);
	run_case("ACQUIRE block 0xffffffff", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 1, 0, (const uint16_t[]){ (uint16_t)model->n_expert },
			1, NULL);
	run_case("ACQUIRE expert n_expert (out of range)", true, n, NULL, OK_ACQ);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 2, 0, (const uint16_t[]){ 65535, 65534 },
			2, NULL);
	run_case("ACQUIRE experts 65535, 65534", true, n, NULL, OK_ACQ);

	n = experts_msg(MS_MSG_RELEASE, blk, 1, 0, (const uint16_t[]){ 3 }, 1, NULL);
	run_case("RELEASE of an expert not held", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_RELEASE, blk, 1, 0, (const uint16_t[]){ 65535 }, 1, NULL);
	run_case("RELEASE expert 65535", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_RELEASE, model->n_block + 5, 1, 0, ex, 1, NULL);
	run_case("RELEASE block out of range", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_RELEASE, blk, 0, 0, ex, 0, NULL);
	run_case("RELEASE n=0", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_RELEASE, blk, MS_MSG_MAX_EXPERTS, 0, ex,
			MS_MSG_MAX_EXPERTS, NULL);
	run_case("RELEASE of 512 experts not held", true, n, NULL, OK_ERR);

	n = experts_msg(MS_MSG_PREFETCH, blk, 1, 1, ex, 1, (const float[]){ NAN });
	run_case("PREFETCH score NaN", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_PREFETCH, blk, 1, 1, ex, 1, (const float[]){ INFINITY });
	run_case("PREFETCH score inf", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_PREFETCH, blk, 1, 2, ex, 1, NULL);
	run_case("PREFETCH flags 2", true, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_PREFETCH, 0xfffffff0u, 1, 0, ex, 1, NULL);
	run_case("PREFETCH block out of range", true, n, NULL, OK_ERR);
	n = experts_msg_s(MS_MSG_PREFETCH, blk, 2, 1, ex, 2, (const float[]){ 0.5f }, 1);
	run_case("PREFETCH 2 experts, 1 score", true, n, NULL, OK_ERR);
}

/* Before HELLO: requests, and HELLOs that are wrong. */
static void prehello_cases(void)
{
	size_t n;
	uint32_t blk = model->layers[0].block;
	n = ping_msg();
	run_case("PING before HELLO", false, n, NULL, OK_ERR);
	n = hdr(MS_MSG_STATS, 0);
	run_case("STATS before HELLO", false, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_ACQUIRE, blk, 1, 0, (const uint16_t[]){ 1 }, 1, NULL);
	run_case("ACQUIRE before HELLO", false, n, NULL, OK_ERR);
	n = experts_msg(MS_MSG_RELEASE, blk, 1, 0, (const uint16_t[]){ 1 }, 1, NULL);
	run_case("RELEASE before HELLO", false, n, NULL, OK_ERR);
	n = hello_msg(1, 1, false, 40);
	run_case("HELLO name not NUL-terminated", false, n, NULL, OK_ERR);
	n = hello_msg(2, 9, true, 40);
	run_case("HELLO versions 2..9", false, n, NULL, OK_ERR);
	n = hello_msg(0, 0, true, 40);
	run_case("HELLO versions 0..0", false, n, NULL, OK_ERR);
	n = hello_msg(1, 0, true, 40);
	run_case("HELLO versions 1..0 (empty)", false, n, NULL, OK_ERR);
	n = hello_msg(1, 1, true, 20);
	run_case("HELLO payload of 20 bytes", false, n, NULL, OK_ERR);
	n = hello_msg(1, 1, true, 41);
	run_case("HELLO payload of 41 bytes", false, n, NULL, OK_ERR);
}

/* Descriptors: copies of a pipe's write end, and kinds the daemon never
 * expects. */
static void fd_case(const char *name, bool hello, size_t len, int n_pipe,
		    int extra_fd, unsigned allowed)
{
	struct fdset fs = { .n = 0, .pipe_rd = -1 };
	int p[2];
	if (n_pipe) {
		if (pipe2(p, O_CLOEXEC))
			t_fatal("pipe");
		fs.pipe_rd = p[0];
		for (int i = 0; i < n_pipe; i++)
			fs.fds[fs.n++] = p[1];
	}
	if (extra_fd >= 0)
		fs.fds[fs.n++] = extra_fd;
	run_case(name, hello, len, &fs, allowed);
}

static void fd_cases(bool hello, int arena_fd)
{
	size_t n = ping_msg();
	fd_case("SCM_RIGHTS: 1 fd (a pipe) with a PING", hello, n, 1, -1, OK_ERR);
	fd_case("SCM_RIGHTS: 2 fds (a pipe, an eventfd)", hello, n, 1,
		eventfd(0, EFD_CLOEXEC), OK_ERR);
	fd_case("SCM_RIGHTS: 8 fds (fills the daemon's buffer)", hello, n, 8, -1,
		OK_ERR);
	fd_case("SCM_RIGHTS: 9 fds (truncated control data)", hello, n, 9, -1,
		OK_ERR);
	fd_case("SCM_RIGHTS: 253 fds (SCM_MAX_FD)", hello, n, 253, -1, OK_ERR);
	fd_case("SCM_RIGHTS: an eventfd", hello, n, 0, eventfd(0, EFD_CLOEXEC),
		OK_ERR);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		t_fatal("socketpair");
	close(sv[1]);
	fd_case("SCM_RIGHTS: a socket", hello, n, 0, sv[0], OK_ERR);
	fd_case("SCM_RIGHTS: a directory", hello, n, 0,
		open(t_tmpdir(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), OK_ERR);
	if (arena_fd >= 0)
		fd_case("SCM_RIGHTS: the arena fd sent back", hello, n, 0,
			dup(arena_fd), OK_ERR);
	n = hdr(MS_MSG_PING, 0);
	memcpy(msg, "JUNK", 4);
	fd_case("SCM_RIGHTS: 1 fd with a bad header", hello, n, 1, -1, OK_ERR);
	fd_case("SCM_RIGHTS: 1 fd with a 3-byte message", hello, 3, 1, -1, OK_ERR);
	fd_case("SCM_RIGHTS: 1 fd with an empty message", hello, 0, 1, -1, OK_ERR);
	n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD + 1);
	fd_case("SCM_RIGHTS: 4 fds with an oversized message", hello, n, 4, -1,
		OK_ERR);
}

/* Control data the kernel itself refuses, or that the daemon does not ask
 * for (SCM_CREDENTIALS without SO_PASSCRED: dropped by the kernel). */
static void odd_control_cases(void)
{
	int fd = dt_raw_connect(dmn.sock);
	if (fd < 0)
		t_fatal("connect: %s", strerror(-fd));
	int afd;
	if (dt_raw_hello(fd, &afd, NULL))
		t_fatal("HELLO failed");
	close(afd);
	size_t n = ping_msg();
	int p[2];
	if (pipe2(p, O_CLOEXEC))
		t_fatal("pipe");
	/* cmsg_len claims 2 fds; the control buffer holds 1 */
	union {
		char b[CMSG_SPACE(sizeof(int) * 2)];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	struct iovec iov = { .iov_base = msg, .iov_len = n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
			     .msg_controllen = CMSG_LEN(sizeof(int)) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int) * 2);
	memcpy(CMSG_DATA(cm), (int[]){ p[1], p[1] }, sizeof(int) * 2);
	ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
	int e = errno;
	T_CHECK(r < 0, "a cmsg longer than its control buffer was sent (%zd)", r);
	printf("  %-52s %s\n", "cmsg_len past the control buffer (sender)",
	       r < 0 ? strerror(e) : "sent?");
	/* nothing reached the daemon: the connection still answers */
	int m = dt_raw_send(fd, msg, n, NULL, 0);
	if (!m)
		m = dt_raw_recv(fd, rbuf, BUF_CAP, 1000, NULL, 0, NULL);
	T_CHECK(m > 0, "after a refused sendmsg the connection does not answer a "
		"PING (%d)", m);
	close(fd);
	/* SCM_CREDENTIALS the daemon did not ask for: the PING is answered or
	 * the connection dropped, either is fine; the daemon must live on. */
	fd = dt_raw_connect(dmn.sock);
	if (fd < 0 || dt_raw_hello(fd, &afd, NULL))
		t_fatal("raw HELLO failed");
	close(afd);
	struct ucred cr = { .pid = getpid(), .uid = getuid(), .gid = getgid() };
	union {
		char b[CMSG_SPACE(sizeof(cr))];
		struct cmsghdr align;
	} u2;
	memset(&u2, 0, sizeof(u2));
	mh.msg_control = u2.b;
	mh.msg_controllen = sizeof(u2.b);
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_CREDENTIALS;
	cm->cmsg_len = CMSG_LEN(sizeof(cr));
	memcpy(CMSG_DATA(cm), &cr, sizeof(cr));
	r = sendmsg(fd, &mh, MSG_NOSIGNAL);
	m = r < 0 ? -errno : dt_raw_recv(fd, rbuf, BUF_CAP, 1000, NULL, 0, NULL);
	printf("  %-52s %s\n", "SCM_CREDENTIALS with a PING",
	       m > 0 ? "answered" : m == 0 ? "closed" : strerror(-m));
	T_CHECK(m >= 0, "SCM_CREDENTIALS + PING: neither an answer nor a close: %s",
		strerror(-m));
	close(fd);
	close(p[0]);
	close(p[1]);
}

/* A client that sends and never reads: the daemon queues its replies up to
 * a cap and then drops it; the others never notice. */
static void slow_reader_case(void)
{
	int fd = dt_raw_connect(dmn.sock);
	if (fd < 0)
		t_fatal("connect: %s", strerror(-fd));
	int afd;
	if (dt_raw_hello(fd, &afd, NULL))
		t_fatal("HELLO failed");
	close(afd);
	int rcv = 4096;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	size_t n = hdr(MS_MSG_PING, MS_MSG_MAX_PAYLOAD);
	memset(msg + MS_MSG_HDR_SIZE, 's', MS_MSG_MAX_PAYLOAD);
	int64_t t0 = dt_now_ms();
	unsigned sent = 0;
	int rc = 0;
	while (dt_now_ms() - t0 < 10000) {
		rc = dt_raw_send(fd, msg, n, NULL, 0);
		if (rc == -EAGAIN || rc == -EWOULDBLOCK)
			continue;
		if (rc)
			break;
		sent++;
	}
	int64_t ms = dt_now_ms() - t0;
	printf("  %-52s dropped after %u PINGs of 64 KiB, %lld ms (%s)\n",
	       "a client that never reads", sent, (long long)ms,
	       rc ? strerror(-rc) : "still connected");
	T_CHECK(rc == -EPIPE || rc == -ECONNRESET,
		"a client that never reads its replies was not dropped in 10 s "
		"(%u PINGs of 64 KiB sent; %s)",
		sent, rc ? strerror(-rc) : "still connected");
	close(fd);
	T_CHECK(atomic_load(&good_fail) == 0, "the good client failed: %s",
		good_first_fail);
}

int main(void)
{
	uint64_t seed = t_seed();
	rng = seed;
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(240, "t_daemon_frames");
	msg = calloc(1, BUF_CAP);
	rbuf = malloc(BUF_CAP);
	if (!msg || !rbuf)
		t_fatal("out of memory");
	const char *path = dt_model("frames.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, path, &err))
		t_fatal("%s", err.msg);
	if (dt_start(&dmn, "frames", path, "[socket]\nmax_clients = 16\n"))
		return t_done();
	struct ms_client *ctl = dt_connect(dmn.sock, "control", &err);
	if (!ctl)
		t_fatal("control client: %s", err.msg);
	atomic_store(&good_run, true);
	pthread_t good;
	if (pthread_create(&good, NULL, good_main, NULL))
		t_fatal("pthread_create");
	double last;
	if (dt_stat_wait(ctl, "clients", dt_eq, 2, 5000, &last) < 0)
		t_fatal("the good client did not connect (%.0f clients)", last);
	dt_sleep_ms(50);
	int fds0 = dt_fd_count(dmn.pid);
	double bad0 = dt_stat(ctl, "bad_messages");
	printf("daemon pid %d: %d descriptors open with 2 clients\n", (int)dmn.pid,
	       fds0);

	/* An arena fd to send back. */
	int rfd = dt_raw_connect(dmn.sock), arena_fd = -1;
	if (rfd < 0 || dt_raw_hello(rfd, &arena_fd, NULL))
		t_fatal("raw HELLO failed");
	close(rfd);

	header_cases(false);
	header_cases(true);
	prehello_cases();
	payload_cases();
	fd_cases(false, arena_fd);
	fd_cases(true, arena_fd);
	close(arena_fd);

	printf("%-52s %-6s %-14s %6s  %s\n", "case", "HELLO", "verdict", "ms",
	       "status / message");
	for (unsigned i = 0; i < n_results; i++) {
		struct result *r = &results[i];
		printf("  %-50s %-6s %-14s %6lld  %d %s", r->name,
		       r->hello ? "after" : "before", vname[r->v], (long long)r->ms,
		       r->status, r->text);
		if (r->extra)
			printf(" (+%u more ERRORs)", r->extra);
		putchar('\n');
	}
	odd_control_cases();
	slow_reader_case();

	/* Every raw connection is gone: the daemon is back where it was. */
	int64_t ms = dt_stat_wait(ctl, "clients", dt_eq, 2, 2000, &last);
	T_CHECK(ms >= 0, "%.0f clients connected, 2 expected", last);
	int fds1 = -1;
	for (int64_t t0 = dt_now_ms(); dt_now_ms() - t0 < 1000; dt_sleep_ms(10))
		if ((fds1 = dt_fd_count(dmn.pid)) == fds0)
			break;
	printf("daemon descriptors: %d before the cases, %d after\n", fds0, fds1);
	T_CHECK(fds1 == fds0, "moestreamd has %d descriptors open, %d before the "
		"malformed frames: %d leaked", fds1, fds0, fds1 - fds0);
	double bad1 = dt_stat(ctl, "bad_messages");
	printf("bad_messages: %.0f -> %.0f\n", bad0, bad1);
	T_CHECK(bad1 > bad0, "bad_messages did not move (%.0f)", bad1);

	/* The good client still makes progress after all that. */
	unsigned long ok0 = atomic_load(&good_ok);
	for (int64_t t0 = dt_now_ms();
	     atomic_load(&good_ok) < ok0 + 3 && dt_now_ms() - t0 < 10000;)
		dt_sleep_ms(5);
	T_CHECK(atomic_load(&good_ok) >= ok0 + 3, "the good client made %lu rounds "
		"in 10 s after the cases", atomic_load(&good_ok) - ok0);
	atomic_store(&good_run, false);
	pthread_join(good, NULL);
	printf("the good client: %lu rounds (acquire 2, compare, release, ping), "
	       "%lu failed\n",
	       (unsigned long)atomic_load(&good_ok), (unsigned long)atomic_load(&good_fail));
	T_CHECK(atomic_load(&good_fail) == 0, "the good client failed: %s",
		good_first_fail);
	T_CHECK(ms_client_ping(ctl, 2000) == 0, "the control client lost the daemon");
	double pinned = dt_stat(ctl, "pinned_entries");
	T_CHECK(pinned == 0, "pinned_entries %.0f after every client let go", pinned);
	ms_client_close(ctl);
	int rc = dt_stop(&dmn);
	T_CHECK(rc == 0, "moestreamd exited %d on SIGTERM (0 expected)", rc);
	if (rc != 0 || t_failures)
		dt_daemon_dump_log(&dmn, 60);
	ms_model_free(model);
	free(msg);
	free(rbuf);
	dt_check_crashes();
	return t_done();
}
