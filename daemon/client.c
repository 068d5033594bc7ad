/*
 * client.c - libmoestream's client of moestreamd (moestream.h).
 *
 * The daemon's answers are trusted no more than a client's requests are by
 * the daemon: every message is decoded with the same checks, and every
 * (offset, length) it names must lie inside the mapped arena before it
 * becomes a pointer. Answers to asynchronous acquires that arrive while a
 * blocking call waits for something else are kept in a queue for
 * ms_client_next, in order.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "moestream/moestream.h"
#include "moestream/protocol.h"

#define MSG_BUF (MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD)

struct queued {
	uint64_t id;
	struct ms_expert_ent e;
};

struct ms_client {
	int fd;
	uint64_t next_id;
	struct ms_client_model model;
	struct ms_client_layer *layers;
	int32_t *block_layer;
	const uint8_t *arena;
	uint64_t arena_len;
	uint8_t *rbuf, *wbuf;
	struct queued *q;
	size_t q_head, q_len, q_cap;
	char last_error[256];
	uint64_t err_id;           /* id of the last ERROR */
	char *blob;                /* last STATS/PING payload */
	uint32_t blob_len;
	uint16_t blob_type;
	uint64_t blob_id;
	bool have_blob, dead;
	int spin_us;               /* MS_CLIENT_SPIN_US, default 50 */
	struct ms_expert_rep *rep; /* decode scratch */
	struct ms_experts_req *req; /* encode scratch */
	bool got[MS_MSG_MAX_EXPERTS]; /* ms_client_acquire's bookkeeping */
};

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int send_msg(struct ms_client *c, int len)
{
	if (len < 0)
		return len;
	if (c->dead)
		return -ENOTCONN;
	for (;;) {
		ssize_t n = send(c->fd, c->wbuf, (size_t)len, MSG_NOSIGNAL);
		if (n == len)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		c->dead = true;
		return n < 0 ? -errno : -EIO;
	}
}

static int q_push(struct ms_client *c, uint64_t id, const struct ms_expert_ent *e)
{
	if (c->q_len == c->q_cap) {
		size_t cap = c->q_cap ? 2 * c->q_cap : 64;
		struct queued *n = malloc(cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		for (size_t i = 0; i < c->q_len; i++)
			n[i] = c->q[(c->q_head + i) % c->q_cap];
		free(c->q);
		c->q = n;
		c->q_cap = cap;
		c->q_head = 0;
	}
	c->q[(c->q_head + c->q_len) % c->q_cap] = (struct queued){ .id = id, .e = *e };
	c->q_len++;
	return 0;
}

/* Receives one message (waiting up to timeout_ms) and files it: experts
 * into the queue, errors and blobs into their slots. */
static int recv_one(struct ms_client *c, int timeout_ms)
{
	if (c->dead)
		return -ENOTCONN;
	struct iovec iov = { .iov_base = c->rbuf, .iov_len = MSG_BUF + 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	/* A hit is answered in microseconds: spin on a non-blocking receive
	 * for a moment before sleeping, which on a VM costs a wake-up from
	 * idle of tens of microseconds. */
	ssize_t n = -1;
	if (timeout_ms) {
		int64_t until = now_us() + c->spin_us;
		for (;;) {
			n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
			if (n >= 0 || errno != EAGAIN || now_us() >= until)
				break;
			sched_yield(); /* other threads (the daemon too) first */
		}
	}
	if (n < 0) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int r = poll(&pfd, 1, timeout_ms);
		if (r < 0)
			return errno == EINTR ? -ETIMEDOUT : -errno;
		if (r == 0)
			return -ETIMEDOUT;
		mh.msg_controllen = sizeof(u.buf);
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		c->dead = true;
		return -ENOTCONN;
	}
	/* Descriptors come only with HELLO; anything here is closed. */
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			     i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				close(fd);
			}
	struct ms_msg_hdr h;
	char why[128];
	if ((mh.msg_flags & MSG_TRUNC) ||
	    ms_msg_decode_hdr(c->rbuf, (size_t)n, &h, why)) {
		snprintf(c->last_error, sizeof(c->last_error),
			 "bad message from the daemon");
		c->dead = true;
		return -EBADMSG;
	}
	const uint8_t *p = c->rbuf + MS_MSG_HDR_SIZE;
	switch (h.type) {
	case MS_MSG_EXPERT:
		if (ms_msg_decode_expert_rep(p, h.len, c->rep, why)) {
			c->dead = true;
			return -EBADMSG;
		}
		for (uint32_t i = 0; i < c->rep->n; i++)
			if (q_push(c, h.id, &c->rep->e[i]))
				return -ENOMEM;
		return 0;
	case MS_MSG_ERROR: {
		struct ms_error_rep e;
		if (ms_msg_decode_error(p, h.len, &e, why)) {
			c->dead = true;
			return -EBADMSG;
		}
		snprintf(c->last_error, sizeof(c->last_error), "%s", e.msg);
		c->err_id = h.id;
		return 0;
	}
	case MS_MSG_STATS:
	case MS_MSG_PING: {
		char *b = malloc(h.len + 1);
		if (!b)
			return -ENOMEM;
		memcpy(b, p, h.len);
		b[h.len] = '\0';
		free(c->blob);
		c->blob = b;
		c->blob_len = h.len;
		c->blob_type = h.type;
		c->blob_id = h.id;
		c->have_blob = true;
		return 0;
	}
	default:
		c->dead = true;
		return -EBADMSG;
	}
}

/* Turns a wire entry into an expert, checking it against the mapping. */
static void to_expert(const struct ms_client *c, const struct ms_expert_ent *e,
		      struct ms_client_expert *out)
{
	memset(out, 0, sizeof(*out));
	out->status = e->status;
	out->block = e->block;
	out->expert = e->expert;
	if (e->status)
		return;
	out->n_proj = e->n_proj;
	for (uint32_t j = 0; j < e->n_proj; j++) {
		if (e->off[j] > c->arena_len || e->len[j] > c->arena_len - e->off[j]) {
			out->status = -EBADMSG;
			out->n_proj = 0;
			return;
		}
		out->proj[j] = c->arena + e->off[j];
		out->len[j] = e->len[j];
	}
}

int ms_client_connect(struct ms_client **out, const char *socket_path,
		      const char *name, struct ms_err *err)
{
	*out = NULL;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!socket_path || strlen(socket_path) >= sizeof(sa.sun_path))
		return ms_err_set(err, -ENAMETOOLONG,
				  "socket path '%s' is longer than %zu bytes",
				  socket_path ? socket_path : "",
				  sizeof(sa.sun_path) - 1);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", socket_path);
	struct ms_client *c = calloc(1, sizeof(*c));
	struct ms_hello_rep *hr = calloc(1, sizeof(*hr));
	int rc, afd = -1;
	if (!c || !hr) {
		free(c);
		free(hr);
		return ms_err_set(err, -ENOMEM, "out of memory");
	}
	c->fd = -1;
	c->next_id = 1;
	c->spin_us = 50;
	const char *sp = getenv("MS_CLIENT_SPIN_US");
	if (sp && *sp) {
		long v = strtol(sp, NULL, 10);
		c->spin_us = v < 0 ? 0 : v > 100000 ? 100000 : (int)v;
	}
	c->rbuf = malloc(MSG_BUF + 1);
	c->wbuf = malloc(MSG_BUF);
	c->rep = malloc(sizeof(*c->rep));
	c->req = malloc(sizeof(*c->req));
	if (!c->rbuf || !c->wbuf || !c->rep || !c->req) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa))) {
		rc = ms_err_set(err, -errno, "cannot connect to moestreamd at %s: %s%s",
				socket_path, strerror(errno),
				errno == ENOENT || errno == ECONNREFUSED
					? " (is moestreamd running? see --socket)"
				: errno == EACCES ? " (not allowed by the socket's mode)"
						  : "");
		goto fail;
	}
	struct ms_hello_req q = { .min_version = MS_PROTO_VERSION,
				  .max_version = MS_PROTO_VERSION,
				  .pid = (uint32_t)getpid() };
	snprintf(q.name, sizeof(q.name), "%s", name ? name : "");
	if ((rc = send_msg(c, ms_msg_encode_hello_req(c->wbuf, 0, &q)))) {
		ms_err_set(err, rc, "sending HELLO to %s: %s", socket_path,
			   strerror(-rc));
		goto fail;
	}
	/* The reply carries the arena's descriptor. */
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
	if (poll(&pfd, 1, 10000) != 1) {
		rc = ms_err_set(err, -ETIMEDOUT,
				"moestreamd at %s did not answer HELLO in 10 s",
				socket_path);
		goto fail;
	}
	struct iovec iov = { .iov_base = c->rbuf, .iov_len = MSG_BUF + 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n > 0 && cm;
	     cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			     i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (afd < 0)
					afd = fd;
				else
					close(fd);
			}
	struct ms_msg_hdr h;
	char why[128];
	if (n <= 0) {
		rc = ms_err_set(err, -ECONNRESET,
				"moestreamd at %s closed the connection (not "
				"allowed? see socket.allow_users)",
				socket_path);
		goto fail;
	}
	if ((rc = ms_msg_decode_hdr(c->rbuf, (size_t)n, &h, why))) {
		ms_err_set(err, rc, "HELLO reply: %s", why);
		goto fail;
	}
	if (h.type == MS_MSG_ERROR) {
		struct ms_error_rep e;
		rc = ms_msg_decode_error(c->rbuf + MS_MSG_HDR_SIZE, h.len, &e, why)
			     ? -EBADMSG
			     : e.status;
		ms_err_set(err, rc, "moestreamd refused HELLO: %s", rc == -EBADMSG ? why : e.msg);
		goto fail;
	}
	if (h.type != MS_MSG_HELLO ||
	    (rc = ms_msg_decode_hello_rep(c->rbuf + MS_MSG_HDR_SIZE, h.len, hr, why))) {
		rc = ms_err_set(err, -EBADMSG, "HELLO reply: %s",
				h.type != MS_MSG_HELLO ? "not a HELLO" : why);
		goto fail;
	}
	if (hr->status) {
		rc = ms_err_set(err, hr->status, "moestreamd refused HELLO: %s",
				strerror(-hr->status));
		goto fail;
	}
	struct stat st;
	if (afd < 0 || fstat(afd, &st) || (uint64_t)st.st_size < hr->arena_size ||
	    !hr->arena_size) {
		rc = ms_err_set(err, -EBADMSG,
				"HELLO reply: no usable arena descriptor came with it");
		goto fail;
	}
	/* 2 MiB-aligned: the daemon's arena is on 2 MiB pages where it could
	 * get them, and a fault here maps such a page with one entry only at an
	 * address aligned as its offset is; elsewhere it takes 512 entries,
	 * and streaming experts through 4 KiB entries computed at a third of
	 * the speed (bench e2e's run-daemon, GLM-4.7 8-layer preset). */
	void *m;
	rc = ms_mem_map_shared(afd, hr->arena_size, MS_HUGE_2M, false, &m);
	if (rc) {
		rc = ms_err_set(err, rc, "mapping the cache (%llu bytes): %s",
				(unsigned long long)hr->arena_size, strerror(-rc));
		goto fail;
	}
	close(afd);
	afd = -1;
	c->arena = m;
	c->arena_len = hr->arena_size;

	struct ms_client_model *md = &c->model;
	snprintf(md->arch, sizeof(md->arch), "%s", hr->arch);
	md->n_block = hr->n_block;
	md->n_expert = hr->n_expert;
	md->n_expert_used = hr->n_expert_used;
	md->n_layers = hr->n_layers;
	md->arena_size = hr->arena_size;
	c->layers = calloc(hr->n_layers ? hr->n_layers : 1, sizeof(*c->layers));
	c->block_layer = malloc((hr->n_block ? hr->n_block : 1) * sizeof(int32_t));
	if (!c->layers || !c->block_layer) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t b = 0; b < hr->n_block; b++)
		c->block_layer[b] = -1;
	for (uint32_t l = 0; l < hr->n_layers; l++) {
		const struct ms_proto_layer *P = &hr->layers[l];
		struct ms_client_layer *L = &c->layers[l];
		L->block = P->block;
		L->n_proj = P->n_proj;
		for (int j = 0; j < 3; j++) {
			L->proj[j] = (enum ms_proj)P->proj[j];
			L->type[j] = P->type[j];
			L->ne[j][0] = P->ne[j][0];
			L->ne[j][1] = P->ne[j][1];
		}
		L->expert_bytes = P->expert_bytes;
		L->nextn = P->nextn;
		c->block_layer[P->block] = (int32_t)l;
	}
	md->layers = c->layers;
	free(hr);
	*out = c;
	return 0;
fail:
	if (afd >= 0)
		close(afd);
	free(hr);
	ms_client_close(c);
	return rc;
}

void ms_client_close(struct ms_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	if (c->arena)
		munmap((void *)c->arena, c->arena_len);
	free(c->layers);
	free(c->block_layer);
	free(c->rbuf);
	free(c->wbuf);
	free(c->rep);
	free(c->req);
	free(c->q);
	free(c->blob);
	free(c);
}

const struct ms_client_model *ms_client_model(const struct ms_client *c)
{
	return &c->model;
}

const struct ms_client_layer *ms_client_layer(const struct ms_client *c,
					      uint32_t block)
{
	if (block >= c->model.n_block || c->block_layer[block] < 0)
		return NULL;
	return &c->layers[c->block_layer[block]];
}

const void *ms_client_arena(const struct ms_client *c, uint64_t *len)
{
	if (len)
		*len = c->arena_len;
	return c->arena;
}

static int send_experts(struct ms_client *c, uint16_t type, uint32_t block,
			const uint16_t *experts, const float *scores, unsigned n,
			uint64_t *id)
{
	if (!n || n > MS_MSG_MAX_EXPERTS || !experts)
		return -EINVAL;
	struct ms_experts_req *q = c->req;
	q->block = block;
	q->n = n;
	memcpy(q->experts, experts, n * sizeof(*experts));
	q->has_scores = scores != NULL;
	if (scores)
		memcpy(q->scores, scores, n * sizeof(*scores));
	uint64_t my = c->next_id++;
	int rc = send_msg(c, ms_msg_encode_experts(c->wbuf, type, my, q));
	if (!rc && id)
		*id = my;
	return rc;
}

int ms_client_acquire_async(struct ms_client *c, uint32_t block,
			    const uint16_t *experts, unsigned n, uint64_t *id)
{
	return send_experts(c, MS_MSG_ACQUIRE, block, experts, NULL, n, id);
}

int ms_client_next(struct ms_client *c, struct ms_client_expert *out,
		   uint64_t *id, int timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
	while (!c->q_len) {
		int64_t left = deadline == INT64_MAX ? -1 : deadline - now_ms();
		if (left < 0 && deadline != INT64_MAX)
			left = 0;
		int rc = recv_one(c, (int)(left > 2000000000 ? 2000000000 : left));
		if (rc == -ETIMEDOUT && (deadline == INT64_MAX || now_ms() < deadline))
			continue;
		if (rc)
			return rc;
	}
	struct queued *qe = &c->q[c->q_head];
	c->q_head = (c->q_head + 1) % c->q_cap;
	c->q_len--;
	if (id)
		*id = qe->id;
	to_expert(c, &qe->e, out);
	return 0;
}

int ms_client_acquire(struct ms_client *c, uint32_t block,
		      const uint16_t *experts, unsigned n,
		      struct ms_client_expert *out, int timeout_ms)
{
	uint64_t id;
	int rc = ms_client_acquire_async(c, block, experts, n, &id);
	if (rc)
		return rc;
	bool *got = c->got; /* n <= MS_MSG_MAX_EXPERTS: the send checked */
	memset(got, 0, n * sizeof(*got));
	for (unsigned i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof(out[i]));
		out[i].status = -ETIMEDOUT;
		out[i].block = block;
		out[i].expert = experts[i];
	}
	unsigned left = n;
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
	int first = 0;
	while (left) {
		/* Take this request's answers from the queue; keep others. */
		size_t keep = 0;
		for (size_t k = 0; k < c->q_len; k++) {
			struct queued *qe = &c->q[(c->q_head + k) % c->q_cap];
			unsigned i = n;
			if (qe->id == id)
				for (i = 0; i < n; i++)
					if (!got[i] && experts[i] == qe->e.expert)
						break;
			if (i < n) {
				got[i] = true;
				left--;
				to_expert(c, &qe->e, &out[i]);
			} else {
				c->q[(c->q_head + keep) % c->q_cap] = *qe;
				keep++;
			}
		}
		c->q_len = keep;
		if (!left)
			break;
		if (c->err_id == id && *c->last_error) {
			rc = -EINVAL; /* the whole request was refused */
			break;
		}
		int64_t wait = deadline == INT64_MAX ? 1000 : deadline - now_ms();
		if (wait <= 0) {
			rc = -ETIMEDOUT;
			break;
		}
		rc = recv_one(c, (int)(wait > 1000 ? 1000 : wait));
		if (rc && rc != -ETIMEDOUT)
			break;
		rc = 0;
	}
	for (unsigned i = 0; !rc && i < n; i++)
		if (out[i].status && !first)
			first = out[i].status;
	return rc ? rc : first;
}

int ms_client_release(struct ms_client *c, uint32_t block,
		      const uint16_t *experts, unsigned n)
{
	return send_experts(c, MS_MSG_RELEASE, block, experts, NULL, n, NULL);
}

int ms_client_prefetch(struct ms_client *c, uint32_t block,
		       const uint16_t *experts, const float *scores, unsigned n)
{
	return send_experts(c, MS_MSG_PREFETCH, block, experts, scores, n, NULL);
}

static int blob_call(struct ms_client *c, uint16_t type, int timeout_ms)
{
	uint64_t id = c->next_id++;
	int rc = send_msg(c, ms_msg_encode_blob(c->wbuf, type, id, NULL, 0));
	if (rc)
		return rc;
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
	for (;;) {
		if (c->have_blob && c->blob_id == id && c->blob_type == type) {
			c->have_blob = false;
			return 0;
		}
		if (c->err_id == id && *c->last_error)
			return -EIO;
		int64_t wait = deadline == INT64_MAX ? 1000 : deadline - now_ms();
		if (wait <= 0)
			return -ETIMEDOUT;
		rc = recv_one(c, (int)(wait > 1000 ? 1000 : wait));
		if (rc && rc != -ETIMEDOUT)
			return rc;
	}
}

int ms_client_stats(struct ms_client *c, char **json, int timeout_ms)
{
	int rc = blob_call(c, MS_MSG_STATS, timeout_ms);
	if (rc)
		return rc;
	*json = c->blob;
	c->blob = NULL;
	return 0;
}

int ms_client_ping(struct ms_client *c, int timeout_ms)
{
	return blob_call(c, MS_MSG_PING, timeout_ms);
}

int ms_client_fd(const struct ms_client *c)
{
	return c->fd;
}

const char *ms_client_last_error(const struct ms_client *c)
{
	return c->last_error;
}
