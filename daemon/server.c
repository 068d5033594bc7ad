/*
 * server.c - moestreamd's event loop: the SOCK_SEQPACKET listener, clients,
 * the protocol, and the bridge from the cache's callbacks (which arrive on
 * I/O threads) back to the loop (an eventfd and a locked queue).
 *
 * One thread runs the loop: every client's state is touched only here, so
 * nothing in it needs a lock. A cache callback puts its answer on the
 * completion queue and pokes the eventfd; the loop sends it. The queue's
 * node is the callback's context, allocated with the request: queueing an
 * answer never allocates, so no answer (and no pin) is lost when memory runs
 * out. A client that vanished in between is recognised by its generation
 * number, and the pin its answer carried is released at once: a client's
 * pins die with its connection, however it ends.
 *
 * A client counts its pins per expert in 16 bits and may hold at most
 * MS_PROTO_MAX_PINS of one expert; an ACQUIRE past that is answered
 * -EOVERFLOW for that expert (protocol.h). The count cannot wrap, so every
 * pin is released when the connection ends; and all clients together (at
 * most 4096 x 65535 pins of an expert) stay far below the cache's 32-bit
 * reference count.
 *
 * Idle, the daemon sleeps in epoll_wait: no timers fire unless a client has
 * an idle timeout to enforce or the cache has waiters.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon.h"
#include "moestream/protocol.h"

#define MAX_OUTQ_BYTES (8u << 20)  /* a client this far behind is dropped */
#define MAX_ALLOW 64
#define TAG_LISTEN 1
#define TAG_SIGNAL 2
#define TAG_EVENT 3
#define TAG_TIMER 4
#define TAG_CLIENT 16          /* + slot */
#define MSG_BUF (MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD)
/* History decay per observation of a layer: half-life ~140 tokens, so the
 * table follows routing that drifts over a conversation. */
#define MS_PREFETCH_DECAY 0.995f
#define SPIN_NS 50000ull       /* poll this long after a message */

/* ---- latency histograms: 8 buckets per power of two, in ns -------------------- */

#define LAT_BUCKETS (8 * 40)

struct lat {
	uint64_t n;
	uint64_t sum_ns;
	uint64_t b[LAT_BUCKETS];
};

static unsigned lat_bucket(uint64_t ns)
{
	if (ns < 8)
		return (unsigned)ns;
	unsigned lg = 63 - (unsigned)__builtin_clzll(ns);
	unsigned sub = (unsigned)((ns >> (lg - 3)) & 7);
	unsigned b = (lg - 2) * 8 + sub;
	return b < LAT_BUCKETS ? b : LAT_BUCKETS - 1;
}

static uint64_t lat_value(unsigned b)
{
	if (b < 8)
		return b;
	unsigned lg = b / 8 + 2, sub = b % 8;
	return (8ull + sub) << (lg - 3);
}

static void lat_add(struct lat *l, uint64_t ns)
{
	l->b[lat_bucket(ns)]++;
	l->n++;
	l->sum_ns += ns;
}

static double lat_pct(const struct lat *l, double p)
{
	if (!l->n)
		return 0;
	uint64_t want = (uint64_t)(p * (double)l->n), seen = 0;
	for (unsigned b = 0; b < LAT_BUCKETS; b++) {
		seen += l->b[b];
		if (seen > want)
			return (double)lat_value(b) / 1000.0; /* us */
	}
	return (double)lat_value(LAT_BUCKETS - 1) / 1000.0;
}

/* ---- clients ------------------------------------------------------------------------ */

struct outmsg {
	struct outmsg *next;
	uint32_t len;
	int fd;                 /* SCM_RIGHTS to send with it, or -1 */
	uint8_t data[];
};

struct client {
	int fd;
	uint32_t slot, gen;
	bool hello;
	uid_t uid;
	gid_t gid;
	pid_t pid;
	char name[32];
	uint16_t *pins;         /* [layers * experts], allocated at HELLO; each
				   at most MS_PROTO_MAX_PINS */
	uint64_t n_pins;        /* pins held */
	uint32_t n_pending;     /* acquires the cache will still answer */
	bool hints;             /* it sends PREFETCH hints */
	bool pin_limit_said;    /* the pin limit was logged for it */
	uint64_t last_active_ns;
	int32_t last_layer;     /* the layer of its last ACQUIRE, -1 none */
	uint32_t n_last;
	uint16_t last[MS_MSG_MAX_EXPERTS];
	struct outmsg *outq, *outq_tail;
	uint64_t outq_bytes;
	bool want_out;
};

_Static_assert(MS_PROTO_MAX_PINS <= UINT16_MAX,
	       "a client counts its pins of an expert in 16 bits");

/* An acquire the cache answers later: the ctx of its callback, then (the
 * answer filled in) a node of the completion queue. */
struct completion {
	struct completion *next;
	struct ms_server *s;
	uint32_t slot, gen;
	uint64_t req_id;
	uint64_t t0_ns;
	uint32_t layer, expert;  /* the answer, from here on */
	int result;
	struct ms_expert_loc loc;
};

struct ms_server {
	struct ms_config cfg;
	const struct ms_model *m;
	struct ms_cache *cache;
	struct ms_prefetcher *pf;  /* history policy, or NULL */
	int lfd, sfd, efd, tfd, ep;
	char path[108];
	bool bound;
	uint64_t start_ns;

	struct client **clients;   /* [max slots] */
	uint32_t n_slots, n_clients;
	uint32_t *gens;            /* generation per slot */

	pthread_mutex_t cq_mu;     /* completion queue, filled by I/O threads */
	struct completion *cq, *cq_tail;

	uid_t allow_uid[MAX_ALLOW];
	gid_t allow_gid[MAX_ALLOW];
	unsigned n_allow_uid, n_allow_gid;

	struct lat lat_hit, lat_miss;
	uint64_t n_accepted, n_refused, n_bad_msgs, n_acquire, n_release;
	uint64_t n_prefetch_hints;
	uint8_t *rbuf, *wbuf;
	struct ms_hello_rep *hello;
	struct ms_expert_rep *rep;
	struct ms_experts_req *req;
	bool stop;
	bool stopped;              /* ms_server_stop ran: the cache is going */
	uint64_t last_msg_ns;      /* the last client message, for spinning */
	bool timer_armed;          /* the idle timer ticks */
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- allow lists ------------------------------------------------------------------- */

static int parse_allow(struct ms_server *s, struct ms_err *err)
{
	char buf[1024], *save, *tok;
	s->n_allow_uid = s->n_allow_gid = 0;
	snprintf(buf, sizeof(buf), "%s", s->cfg.allow_users);
	for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		struct passwd *pw = getpwnam(tok);
		char *end;
		unsigned long id = strtoul(tok, &end, 10);
		if (!pw && (*end || end == tok))
			return ms_err_set(err, -EINVAL,
					  "socket.allow_users: no user '%s'", tok);
		if (s->n_allow_uid == MAX_ALLOW)
			return ms_err_set(err, -E2BIG,
					  "socket.allow_users: more than %d users",
					  MAX_ALLOW);
		s->allow_uid[s->n_allow_uid++] = pw ? pw->pw_uid : (uid_t)id;
	}
	snprintf(buf, sizeof(buf), "%s", s->cfg.allow_groups);
	for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		struct group *gr = getgrnam(tok);
		char *end;
		unsigned long id = strtoul(tok, &end, 10);
		if (!gr && (*end || end == tok))
			return ms_err_set(err, -EINVAL,
					  "socket.allow_groups: no group '%s'", tok);
		if (s->n_allow_gid == MAX_ALLOW)
			return ms_err_set(err, -E2BIG,
					  "socket.allow_groups: more than %d groups",
					  MAX_ALLOW);
		s->allow_gid[s->n_allow_gid++] = gr ? gr->gr_gid : (gid_t)id;
	}
	return 0;
}

/* No lists: whoever the socket's mode lets in. Lists: root, our own uid,
 * a listed user, or a member (primary or supplementary) of a listed group. */
static bool peer_allowed(const struct ms_server *s, uid_t uid, gid_t gid)
{
	if (!s->n_allow_uid && !s->n_allow_gid)
		return true;
	if (uid == 0 || uid == geteuid())
		return true;
	for (unsigned i = 0; i < s->n_allow_uid; i++)
		if (s->allow_uid[i] == uid)
			return true;
	for (unsigned i = 0; i < s->n_allow_gid; i++)
		if (s->allow_gid[i] == gid)
			return true;
	if (s->n_allow_gid) {
		struct passwd *pw = getpwuid(uid);
		gid_t groups[256];
		int n = 256;
		if (pw && getgrouplist(pw->pw_name, gid, groups, &n) >= 0)
			for (int g = 0; g < n; g++)
				for (unsigned i = 0; i < s->n_allow_gid; i++)
					if (groups[g] == s->allow_gid[i])
						return true;
	}
	return false;
}

/* ---- sending ------------------------------------------------------------------------ */

static void client_close(struct ms_server *s, struct client *c, const char *why);

static int send_now(int fd, const uint8_t *buf, uint32_t len, int pass_fd)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	if (pass_fd >= 0) {
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	return 0;
}

static void want_out(struct ms_server *s, struct client *c, bool on)
{
	if (c->want_out == on)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0),
				  .data.u64 = TAG_CLIENT + c->slot };
	epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->want_out = on;
}

/* Sends a message, or queues it behind what is already queued. Takes the
 * ownership of pass_fd (closed once sent or dropped). Returns false when the
 * client had to be closed. */
static bool client_send(struct ms_server *s, struct client *c,
			const uint8_t *buf, int len, int pass_fd)
{
	if (len < 0) {
		ms_log(MS_LOG_ERR, "encoding a reply failed: %s", strerror(-len));
		if (pass_fd >= 0)
			close(pass_fd);
		return true;
	}
	if (!c->outq) {
		int rc = send_now(c->fd, buf, (uint32_t)len, pass_fd);
		if (!rc) {
			if (pass_fd >= 0)
				close(pass_fd);
			return true;
		}
		if (rc != -EAGAIN) {
			if (pass_fd >= 0)
				close(pass_fd);
			client_close(s, c, strerror(-rc));
			return false;
		}
	}
	if (c->outq_bytes + (uint64_t)len > MAX_OUTQ_BYTES) {
		if (pass_fd >= 0)
			close(pass_fd);
		client_close(s, c, "too far behind in reading its replies");
		return false;
	}
	struct outmsg *o = malloc(sizeof(*o) + (size_t)len);
	if (!o) {
		if (pass_fd >= 0)
			close(pass_fd);
		client_close(s, c, "out of memory for its replies");
		return false;
	}
	o->next = NULL;
	o->len = (uint32_t)len;
	o->fd = pass_fd;
	memcpy(o->data, buf, (size_t)len);
	if (c->outq_tail)
		c->outq_tail->next = o;
	else
		c->outq = o;
	c->outq_tail = o;
	c->outq_bytes += (uint64_t)len;
	want_out(s, c, true);
	return true;
}

static void client_flush(struct ms_server *s, struct client *c)
{
	while (c->outq) {
		struct outmsg *o = c->outq;
		int rc = send_now(c->fd, o->data, o->len, o->fd);
		if (rc == -EAGAIN)
			return;
		if (rc) {
			client_close(s, c, strerror(-rc));
			return;
		}
		c->outq = o->next;
		if (!c->outq)
			c->outq_tail = NULL;
		c->outq_bytes -= o->len;
		if (o->fd >= 0)
			close(o->fd);
		free(o);
	}
	want_out(s, c, false);
}

static bool send_error(struct ms_server *s, struct client *c, uint64_t id,
		       int status, const char *msg)
{
	return client_send(s, c, s->wbuf,
			   ms_msg_encode_error(s->wbuf, id, status, msg), -1);
}

/* ---- clients come and go ------------------------------------------------------------ */

static void client_close(struct ms_server *s, struct client *c, const char *why)
{
	if (!c || c->fd < 0)
		return;
	if (why)
		ms_log(MS_LOG_INFO, "client %u (pid %d, %s) closed: %s", c->slot,
		       (int)c->pid, *c->name ? c->name : "?", why);
	/* Its pins die with it. */
	if (c->pins) {
		uint32_t n = s->m->n_layers * s->m->n_expert;
		for (uint32_t i = 0; i < n && c->n_pins; i++)
			while (c->pins[i]) {
				ms_cache_release(s->cache, i / s->m->n_expert,
						 i % s->m->n_expert);
				c->pins[i]--;
				c->n_pins--;
			}
	}
	epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	while (c->outq) {
		struct outmsg *o = c->outq;
		c->outq = o->next;
		if (o->fd >= 0)
			close(o->fd);
		free(o);
	}
	s->clients[c->slot] = NULL;
	s->gens[c->slot]++; /* answers still in flight find nobody */
	s->n_clients--;
	free(c->pins);
	free(c);
}

/* Tells a refused peer why (best effort: it may not read), then closes. */
static void refuse(struct ms_server *s, int fd, int status, const char *why)
{
	int len = ms_msg_encode_error(s->wbuf, 0, status, why);
	if (len > 0 && send(fd, s->wbuf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL)) {
		/* it hung up already */
	}
	close(fd);
}

static void accept_clients(struct ms_server *s)
{
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR)
				ms_log(MS_LOG_WARNING, "accept: %s", strerror(errno));
			return;
		}
		struct ucred cr;
		socklen_t crl = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl)) {
			close(fd);
			continue;
		}
		if (!peer_allowed(s, cr.uid, cr.gid)) {
			s->n_refused++;
			ms_log(MS_LOG_WARNING,
			       "refused pid %d uid %u gid %u: not in socket.allow_users "
			       "/ socket.allow_groups",
			       (int)cr.pid, (unsigned)cr.uid, (unsigned)cr.gid);
			refuse(s, fd, -EPERM,
			       "not allowed: uid/gid not in socket.allow_users / "
			       "socket.allow_groups");
			continue;
		}
		if (s->n_clients >= s->cfg.max_clients || s->n_clients >= s->n_slots) {
			s->n_refused++;
			ms_log(MS_LOG_WARNING,
			       "refused pid %d: %u clients already (socket.max_clients)",
			       (int)cr.pid, s->n_clients);
			refuse(s, fd, -EUSERS,
			       "too many clients (socket.max_clients); try again later");
			continue;
		}
		uint32_t slot = 0;
		while (s->clients[slot])
			slot++;
		struct client *c = calloc(1, sizeof(*c));
		if (!c) {
			s->n_refused++;
			ms_log(MS_LOG_WARNING, "refused pid %d: out of memory",
			       (int)cr.pid);
			refuse(s, fd, -ENOMEM, "the daemon is out of memory; try again");
			continue;
		}
		c->fd = fd;
		c->slot = slot;
		c->gen = s->gens[slot];
		c->uid = cr.uid;
		c->gid = cr.gid;
		c->pid = cr.pid;
		c->last_active_ns = now_ns();
		c->last_layer = -1;
		struct epoll_event ev = { .events = EPOLLIN,
					  .data.u64 = TAG_CLIENT + slot };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev)) {
			close(fd);
			free(c);
			continue;
		}
		s->clients[slot] = c;
		s->n_clients++;
		s->n_accepted++;
	}
}

/* ---- requests ------------------------------------------------------------------------ */

static void on_hello(struct ms_server *s, struct client *c,
		     const struct ms_msg_hdr *h, const uint8_t *p)
{
	struct ms_hello_req q;
	char why[128];
	int rc = ms_msg_decode_hello_req(p, h->len, &q, why);
	if (rc) {
		if (send_error(s, c, h->id, rc, why))
			client_close(s, c, why);
		return;
	}
	if (c->hello) {
		send_error(s, c, h->id, -EPROTO, "HELLO sent twice");
		return;
	}
	if (q.min_version > MS_PROTO_VERSION || q.max_version < MS_PROTO_VERSION) {
		snprintf(why, sizeof(why),
			 "client speaks versions %u..%u, this daemon %d", q.min_version,
			 q.max_version, MS_PROTO_VERSION);
		if (send_error(s, c, h->id, -EPROTONOSUPPORT, why))
			client_close(s, c, why);
		return;
	}
	memcpy(c->name, q.name, sizeof(c->name));
	c->name[sizeof(c->name) - 1] = '\0';
	size_t n_ent = (size_t)s->m->n_layers * s->m->n_expert;
	c->pins = calloc(n_ent, sizeof(*c->pins));
	if (!c->pins) {
		snprintf(why, sizeof(why), "HELLO: the daemon is out of memory for "
			 "this client's pin table (%zu bytes); try again",
			 n_ent * sizeof(*c->pins));
		if (send_error(s, c, h->id, -ENOMEM, why))
			client_close(s, c, why);
		return;
	}
	int fd = ms_arena_ro_fd(ms_cache_arena(s->cache));
	if (fd < 0) {
		snprintf(why, sizeof(why), "HELLO: the daemon cannot open the cache "
			 "arena for this client: %s", strerror(-fd));
		if (send_error(s, c, h->id, fd, why))
			client_close(s, c, why);
		return;
	}
	c->hello = true;
	s->hello->status = 0;
	client_send(s, c, s->wbuf, ms_msg_encode_hello_rep(s->wbuf, h->id, s->hello),
		    fd);
}

/* The layer index of a block on the wire, or -1. */
static int32_t layer_of(const struct ms_server *s, uint32_t block)
{
	return block < s->m->n_block ? s->m->block_layer[block] : -1;
}

/* Decodes an ACQUIRE, RELEASE or PREFETCH into s->req and returns the
 * layer its block names, or -1 after answering the client with the error
 * (a malformed message, or a block that is not a MoE layer). */
static int32_t decode_experts_req(struct ms_server *s, struct client *c,
				  const struct ms_msg_hdr *h, const uint8_t *p,
				  uint16_t type, const char *name)
{
	char why[128];
	int rc = ms_msg_decode_experts(p, h->len, type, s->req, why);
	if (rc) {
		s->n_bad_msgs++;
		send_error(s, c, h->id, rc, why);
		return -1;
	}
	int32_t layer = layer_of(s, s->req->block);
	if (layer < 0) {
		snprintf(why, sizeof(why),
			 "%s: block %u is not a MoE layer of this model", name,
			 s->req->block);
		send_error(s, c, h->id, -EINVAL, why);
	}
	return layer;
}

static void cache_cb(void *ctx, uint32_t layer, uint32_t expert, int result,
		     const struct ms_expert_loc *loc)
{
	struct completion *co = ctx;
	struct ms_server *s = co->s;
	co->next = NULL;
	co->layer = layer;
	co->expert = expert;
	co->result = result;
	if (loc)
		co->loc = *loc;
	pthread_mutex_lock(&s->cq_mu);
	if (s->stopped) { /* the cache is being freed: nobody to tell */
		pthread_mutex_unlock(&s->cq_mu);
		free(co);
		return;
	}
	if (s->cq_tail)
		s->cq_tail->next = co;
	else
		s->cq = co;
	s->cq_tail = co;
	pthread_mutex_unlock(&s->cq_mu);
	uint64_t one = 1;
	if (write(s->efd, &one, sizeof(one)) < 0) {
		/* the loop drains the queue on any wakeup anyway */
	}
}

static void fill_ent(const struct ms_server *s, struct ms_expert_ent *e,
		     uint32_t layer, uint32_t expert, int status,
		     const struct ms_expert_loc *loc)
{
	memset(e, 0, sizeof(*e));
	e->status = status;
	e->block = s->m->layers[layer].block;
	e->expert = expert;
	if (!status && loc) {
		e->n_proj = loc->n_proj;
		for (uint32_t j = 0; j < loc->n_proj; j++) {
			e->off[j] = loc->off[j];
			e->len[j] = loc->len[j];
		}
	}
}

/* The history policy: learn the step from this client's previous layer to
 * this one, then prefetch the likeliest experts of the next `depth` layers.
 * Stale prefetches (their layer read and left without them) are cancelled. */
static void history_prefetch(struct ms_server *s, struct client *c,
			     uint32_t layer, const struct ms_experts_req *q)
{
	enum ms_prefetch_policy pol = s->cfg.prefetch_policy;
	if (pol == MS_PREFETCH_NONE)
		return;
	/* Only the prefetches the reader came past and left: not "every layer
	 * before this one", which would cancel the next token's first layers
	 * hinted at the end of this one. */
	ms_cache_cancel_stale(s->cache, 0);
	if (!s->pf || (pol != MS_PREFETCH_HISTORY && pol != MS_PREFETCH_AUTO))
		return;
	if (c->last_layer >= 0 && (uint32_t)c->last_layer + 1 == layer)
		ms_prefetcher_observe(s->pf, layer, c->last, c->n_last, q->experts,
				      q->n);
	c->last_layer = (int32_t)layer;
	c->n_last = q->n;
	memcpy(c->last, q->experts, q->n * sizeof(q->experts[0]));
	/* auto: a client that sends hints knows its next layer better than
	 * the table guesses it; guesses would only take disk time from the
	 * hinted reads. The table still learns from it. */
	if (pol == MS_PREFETCH_AUTO && c->hints)
		return;

	uint16_t cur[64], next[64];
	float cur_s[64], next_s[64];
	unsigned n = q->n < 64 ? q->n : 64, width = s->cfg.prefetch_width;
	if (width > 64)
		width = 64;
	memcpy(cur, q->experts, n * sizeof(cur[0]));
	for (unsigned i = 0; i < n; i++)
		cur_s[i] = 1.0f;
	for (uint32_t d = 1; d <= s->cfg.prefetch_depth; d++) {
		uint32_t l = layer + d - 1;
		if (l + 1 >= s->m->n_layers || s->m->layers[l + 1].nextn)
			break;
		unsigned k = ms_prefetcher_predict(s->pf, l, cur, cur_s, n, width,
						   (float)s->cfg.prefetch_min_prob,
						   next, next_s);
		for (unsigned i = 0; i < k; i++)
			if (ms_cache_prefetch(s->cache, l + 1, next[i]) == -E2BIG)
				break; /* the in-flight cap: further guesses wait */
		memcpy(cur, next, k * sizeof(cur[0]));
		memcpy(cur_s, next_s, k * sizeof(cur_s[0]));
		n = k;
		if (!n)
			break;
	}
}

/* Whether c may take one more pin of (layer, expert); logs the refusal
 * once per client. */
static bool pin_room(struct ms_server *s, struct client *c, uint32_t layer,
		     uint32_t expert)
{
	if (c->pins[layer * s->m->n_expert + expert] < MS_PROTO_MAX_PINS)
		return true;
	if (!c->pin_limit_said) {
		c->pin_limit_said = true;
		ms_log(MS_LOG_WARNING,
		       "client %u (pid %d, %s) holds %u pins of block %u expert "
		       "%u, the most one connection may hold: further ACQUIREs "
		       "of it are answered EOVERFLOW until it releases some",
		       c->slot, (int)c->pid, *c->name ? c->name : "?",
		       (unsigned)MS_PROTO_MAX_PINS, s->m->layers[layer].block,
		       expert);
	}
	return false;
}

/* Books a pin the cache granted to c: 0, or -EOVERFLOW when c holds the
 * most it may of that expert (the pin then goes back to the cache). */
static int pin_take(struct ms_server *s, struct client *c, uint32_t layer,
		    uint32_t expert)
{
	if (!pin_room(s, c, layer, expert)) {
		ms_cache_release(s->cache, layer, expert);
		return -EOVERFLOW;
	}
	c->pins[layer * s->m->n_expert + expert]++;
	c->n_pins++;
	return 0;
}

static void on_acquire(struct ms_server *s, struct client *c,
		       const struct ms_msg_hdr *h, const uint8_t *p,
		       uint64_t t0)
{
	const struct ms_experts_req *q = s->req;
	int32_t layer = decode_experts_req(s, c, h, p, MS_MSG_ACQUIRE, "ACQUIRE");
	if (layer < 0)
		return;
	int rc;
	struct ms_expert_rep *rep = s->rep;
	rep->n = 0;
	s->n_acquire++;
	for (uint32_t i = 0; i < q->n; i++) {
		uint32_t e = q->experts[i];
		struct ms_expert_loc loc;
		if (e >= s->m->n_expert) {
			fill_ent(s, &rep->e[rep->n++], (uint32_t)layer, e, -EINVAL,
				 NULL);
			continue;
		}
		/* At its limit already: refused before the cache is asked (an
		 * answer still loading is checked again when it lands). */
		if (!pin_room(s, c, (uint32_t)layer, e)) {
			fill_ent(s, &rep->e[rep->n++], (uint32_t)layer, e,
				 -EOVERFLOW, NULL);
			continue;
		}
		rc = ms_cache_try_acquire(s->cache, (uint32_t)layer, e, &loc);
		if (!rc) { /* a hit: no callback context needed */
			rc = pin_take(s, c, (uint32_t)layer, e);
			if (!rc)
				lat_add(&s->lat_hit, now_ns() - t0);
			fill_ent(s, &rep->e[rep->n++], (uint32_t)layer, e, rc,
				 rc ? NULL : &loc);
			continue;
		}
		struct completion *pc = malloc(sizeof(*pc));
		if (!pc) {
			fill_ent(s, &rep->e[rep->n++], (uint32_t)layer, e, -ENOMEM,
				 NULL);
			continue;
		}
		*pc = (struct completion){ .s = s, .slot = c->slot, .gen = c->gen,
					   .req_id = h->id, .t0_ns = t0 };
		rc = ms_cache_acquire(s->cache, (uint32_t)layer, e, cache_cb, pc, &loc);
		if (rc == -EINPROGRESS) {
			c->n_pending++;
			continue;
		}
		free(pc);
		if (!rc && !(rc = pin_take(s, c, (uint32_t)layer, e)))
			lat_add(&s->lat_hit, now_ns() - t0);
		fill_ent(s, &rep->e[rep->n++], (uint32_t)layer, e, rc, rc ? NULL : &loc);
	}
	/* A send that fails closes (and frees) c: no guesses for a client
	 * that is gone. */
	if (rep->n && !client_send(s, c, s->wbuf,
				   ms_msg_encode_expert_rep(s->wbuf, h->id, rep), -1))
		return;
	history_prefetch(s, c, (uint32_t)layer, q);
}

static void on_release(struct ms_server *s, struct client *c,
		       const struct ms_msg_hdr *h, const uint8_t *p)
{
	const struct ms_experts_req *q = s->req;
	int32_t layer = decode_experts_req(s, c, h, p, MS_MSG_RELEASE, "RELEASE");
	if (layer < 0)
		return;
	char why[128];
	s->n_release++;
	uint32_t bad = 0, first_bad = 0;
	for (uint32_t i = 0; i < q->n; i++) {
		uint32_t e = q->experts[i];
		uint32_t idx = (uint32_t)layer * s->m->n_expert + e;
		if (e >= s->m->n_expert || !c->pins[idx]) {
			if (!bad++)
				first_bad = e;
			continue;
		}
		c->pins[idx]--;
		c->n_pins--;
		ms_cache_release(s->cache, (uint32_t)layer, e);
	}
	if (bad) { /* one answer per message, however many were wrong */
		snprintf(why, sizeof(why),
			 "RELEASE of %u expert(s) this client does not hold (first: "
			 "block %u expert %u)",
			 bad, q->block, first_bad);
		send_error(s, c, h->id, -ENOENT, why);
	}
}

static void on_prefetch(struct ms_server *s, struct client *c,
			const struct ms_msg_hdr *h, const uint8_t *p)
{
	const struct ms_experts_req *q = s->req;
	int32_t layer = decode_experts_req(s, c, h, p, MS_MSG_PREFETCH, "PREFETCH");
	if (layer < 0)
		return;
	s->n_prefetch_hints++;
	if (s->cfg.prefetch_policy != MS_PREFETCH_HINT &&
	    s->cfg.prefetch_policy != MS_PREFETCH_AUTO)
		return;
	c->hints = true;
	for (uint32_t i = 0; i < q->n; i++) {
		if (q->experts[i] >= s->m->n_expert)
			continue;
		if (q->has_scores && q->scores[i] < s->cfg.prefetch_min_prob)
			continue;
		ms_cache_prefetch(s->cache, (uint32_t)layer, q->experts[i]);
	}
}

/* The STATS object as JSON (malloc'ed), or NULL when memory ran out: an
 * answer is whole or not given, never an object with keys missing. */
static char *stats_json(struct ms_server *s)
{
	struct ms_cache_stats st;
	struct ms_io_mode io;
	struct ms_read_info ri;
	ms_cache_get_stats(s->cache, &st);
	ms_cache_get_io_mode(s->cache, &io);
	ms_cache_get_read_info(s->cache, &ri);
	const struct ms_arena *a = ms_cache_arena(s->cache);
	double up = (double)(now_ns() - s->start_ns) / 1e9;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	bool ok = true; /* every item made it in */
#define N(k, v) (ok &= cJSON_AddNumberToObject(o, k, (double)(v)) != NULL)
#define S(k, v) (ok &= cJSON_AddStringToObject(o, k, v) != NULL)
#define B(k, v) (ok &= cJSON_AddBoolToObject(o, k, v) != NULL)
	S("version", MS_VERSION);
	S("model", s->m->shards[0]->path);
	S("architecture", s->m->arch);
	N("pid", getpid());
	N("uptime_s", up);
	N("clients", s->n_clients);
	N("clients_accepted", s->n_accepted);
	N("clients_refused", s->n_refused);
	S("io_engine", io.engine == MS_IO_ENGINE_URING ? "io_uring" : "preadv");
	B("io_direct", io.direct);
	B("io_fixed_buffers", io.fixed_buffers);
	B("io_fixed_files", io.fixed_files);
	B("io_sqpoll", io.sqpoll);
	S("io_fallbacks", io.why);
	S("arena", a->mode);
	B("arena_hugetlb", a->hugetlb);
	N("arena_bytes", ri.arena_bytes);
	N("arena_huge_bytes", ri.arena_huge_bytes);
	S("read_path", ms_read_path_name(ri.path));
	S("read_path_detail", ri.line);
	N("staging_bytes", ri.staging_bytes);
	N("staging_huge_bytes", ri.staging_huge_bytes);
	N("bytes_copied", st.bytes_copied);
	N("copy_cpu_s", (double)st.copy_ns / 1e9);
	N("arena_numa_node", a->numa_node);
	N("hits", st.hits);
	N("misses", st.misses);
	N("hit_rate", st.hits + st.misses ? (double)st.hits / (double)(st.hits + st.misses)
					  : 0.0);
	N("bytes_read", st.bytes_read);
	N("read_gbps", up > 0 ? (double)st.bytes_read / up / 1e9 : 0.0);
	N("io_busy_ns", st.io_busy_ns);
	N("evictions", st.evictions);
	N("loads", st.loads);
	N("load_failures", st.load_failures);
	N("busy", st.busy);
	N("prefetch_issued", st.prefetch_issued);
	N("prefetch_used", st.prefetch_used);
	N("prefetch_wasted_bytes", st.prefetch_wasted_bytes);
	N("prefetch_cancelled", st.prefetch_cancelled);
	N("prefetch_hints", s->n_prefetch_hints);
	N("pinned_entries", st.pinned_entries);
	N("loading_entries", st.loading_entries);
	N("ready_entries", st.ready_entries);
	N("held_bytes", st.held_bytes);
	N("budget_bytes", st.budget_bytes);
	N("waste_bytes", st.waste_bytes);
	N("surplus_bytes", st.surplus_bytes);
	N("slots", st.slots);
	N("slot_classes", st.slot_classes);
	N("acquires", s->n_acquire);
	N("releases", s->n_release);
	N("bad_messages", s->n_bad_msgs);
	N("hit_p50_us", lat_pct(&s->lat_hit, 0.50));
	N("hit_p99_us", lat_pct(&s->lat_hit, 0.99));
	N("miss_p50_us", lat_pct(&s->lat_miss, 0.50));
	N("miss_p99_us", lat_pct(&s->lat_miss, 0.99));
	N("demand_stall_s", (double)s->lat_miss.sum_ns / 1e9);
	N("prefetch_history_observed", ms_prefetcher_observed(s->pf));
	cJSON *h = cJSON_AddArrayToObject(o, "load_latency_us_log2");
	ok &= h != NULL;
	for (int i = 0; h && i < 24; i++) {
		cJSON *v = cJSON_CreateNumber((double)st.lat_us_hist[i]);
		if (!cJSON_AddItemToArray(h, v)) {
			cJSON_Delete(v);
			ok = false;
		}
	}
#undef N
#undef S
#undef B
	char *txt = ok ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return txt;
}

static void on_message(struct ms_server *s, struct client *c, uint32_t n,
		       uint64_t t0)
{
	struct ms_msg_hdr h;
	char why[128];
	int rc = ms_msg_decode_hdr(s->rbuf, n, &h, why);
	if (rc) {
		/* A bad header: we cannot trust the stream any more. */
		s->n_bad_msgs++;
		if (send_error(s, c, 0, rc, why))
			client_close(s, c, why);
		return;
	}
	const uint8_t *p = s->rbuf + MS_MSG_HDR_SIZE;
	if (!c->hello && h.type != MS_MSG_HELLO) {
		s->n_bad_msgs++;
		if (send_error(s, c, h.id, -EPROTO, "HELLO first"))
			client_close(s, c, "spoke before HELLO");
		return;
	}
	switch (h.type) {
	case MS_MSG_HELLO: on_hello(s, c, &h, p); break;
	case MS_MSG_ACQUIRE: on_acquire(s, c, &h, p, t0); break;
	case MS_MSG_RELEASE: on_release(s, c, &h, p); break;
	case MS_MSG_PREFETCH: on_prefetch(s, c, &h, p); break;
	case MS_MSG_PING:
		client_send(s, c, s->wbuf,
			    ms_msg_encode_blob(s->wbuf, MS_MSG_PING, h.id, p, h.len), -1);
		break;
	case MS_MSG_STATS: {
		char *txt = stats_json(s);
		size_t len = txt ? strlen(txt) : 0;
		if (!txt) {
			send_error(s, c, h.id, -ENOMEM,
				   "STATS: the daemon is out of memory; try again");
		} else if (len > MS_MSG_MAX_PAYLOAD) {
			snprintf(why, sizeof(why),
				 "STATS: %zu bytes of JSON exceed the %d-byte "
				 "payload cap", len, MS_MSG_MAX_PAYLOAD);
			send_error(s, c, h.id, -EMSGSIZE, why);
		} else
			client_send(s, c, s->wbuf,
				    ms_msg_encode_blob(s->wbuf, MS_MSG_STATS, h.id,
						       txt, (uint32_t)len),
				    -1);
		free(txt);
		break;
	}
	default:
		s->n_bad_msgs++;
		snprintf(why, sizeof(why), "message type %u is not a request", h.type);
		send_error(s, c, h.id, -EBADMSG, why);
		break;
	}
}

static void client_readable(struct ms_server *s, struct client *c)
{
	/* A few messages per wakeup, so that one busy client cannot starve
	 * the others. */
	/* on_message may close (and free) c: the slot says whether it lives */
	uint32_t slot = c->slot;
	for (int k = 0; k < 16 && s->clients[slot] == c; k++) {
		union {
			char buf[CMSG_SPACE(sizeof(int) * 8)];
			struct cmsghdr align;
		} u;
		struct iovec iov = { .iov_base = s->rbuf, .iov_len = MSG_BUF + 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			client_close(s, c, strerror(errno));
			return;
		}
		uint64_t t0 = now_ns();
		c->last_active_ns = t0;
		s->last_msg_ns = t0;
		/* Clients never send descriptors: close any that came, and
		 * drop the client (it is not one of ours). */
		bool fds = false;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm;
		     cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
				size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t i = 0; i < nfd; i++) {
					int fd;
					memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int),
					       sizeof(int));
					close(fd);
				}
				fds = true;
			}
		}
		if (fds || (mh.msg_flags & MSG_CTRUNC)) {
			s->n_bad_msgs++;
			client_close(s, c, "sent file descriptors");
			return;
		}
		/* After the descriptors: an empty message can carry some, and
		 * they are installed in our table even then. */
		if (n == 0) {
			client_close(s, c, "hung up");
			return;
		}
		if ((mh.msg_flags & MSG_TRUNC) || n > MSG_BUF) {
			s->n_bad_msgs++;
			if (send_error(s, c, 0, -EMSGSIZE, "message over the size cap"))
				client_close(s, c, "message over the size cap");
			return;
		}
		on_message(s, c, (uint32_t)n, t0);
	}
}

/* ---- completions from the cache ----------------------------------------------------- */

static void drain_completions(struct ms_server *s)
{
	uint64_t v;
	if (read(s->efd, &v, sizeof(v)) < 0) {
		/* nothing: another wakeup already took the count */
	}
	pthread_mutex_lock(&s->cq_mu);
	struct completion *co = s->cq;
	s->cq = s->cq_tail = NULL;
	pthread_mutex_unlock(&s->cq_mu);

	while (co) {
		uint32_t slot = co->slot, gen = co->gen;
		uint64_t req_id = co->req_id;
		struct client *c = s->clients[slot];
		struct completion *next;
		if (!c || c->gen != gen) {
			/* Its client is gone: the pin dies here. */
			if (!co->result)
				ms_cache_release(s->cache, co->layer, co->expert);
			next = co->next;
			free(co);
			co = next;
			continue;
		}
		/* Answers of one request that arrived together go out together. */
		struct ms_expert_rep *rep = s->rep;
		rep->n = 0;
		do {
			int st = co->result;
			c->n_pending--;
			if (!st && !(st = pin_take(s, c, co->layer, co->expert)))
				lat_add(&s->lat_miss, now_ns() - co->t0_ns);
			fill_ent(s, &rep->e[rep->n++], co->layer, co->expert, st,
				 st ? NULL : &co->loc);
			next = co->next;
			free(co);
			co = next;
		} while (co && co->slot == slot && co->gen == gen &&
			 co->req_id == req_id && rep->n < MS_MSG_MAX_EXPERTS);
		client_send(s, c, s->wbuf,
			    ms_msg_encode_expert_rep(s->wbuf, req_id, rep), -1);
	}
}

/* ---- the socket ------------------------------------------------------------------------ */

/* Everything about the socket path that can be checked before the cache
 * is built (which can take seconds): its length, what is there now, whether
 * another daemon answers on it. A stale socket is removed. */
static int socket_precheck(const char *path, bool probe, struct ms_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!*path || *path == '@')
		return ms_err_set(err, -EINVAL,
				  "socket.path '%s': a file path is required "
				  "(abstract sockets are not used: they have no "
				  "permissions)",
				  path);
	if (strlen(path) >= sizeof(sa.sun_path))
		return ms_err_set(err, -ENAMETOOLONG,
				  "socket.path '%s' is %zu bytes; a Unix socket path "
				  "has at most %zu",
				  path, strlen(path), sizeof(sa.sun_path) - 1);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);

	if (!probe) { /* --check-config: look, change nothing */
		struct stat st;
		if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
			return ms_err_set(err, -EEXIST,
					  "socket.path %s exists and is not a socket; "
					  "move it or choose another path",
					  path);
		return 0;
	}
	/* The directory: ours to create if missing. */
	char dir[sizeof(sa.sun_path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (mkdir(dir, 0755) && errno != EEXIST)
			return ms_err_set(err, -errno, "socket directory %s: %s", dir,
					  strerror(errno));
	}
	/* A stale socket is replaced only if nothing answers on it. */
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return ms_err_set(err, -EEXIST,
					  "socket.path %s exists and is not a socket; "
					  "move it or choose another path",
					  path);
		int t = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (t >= 0 && connect(t, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(t);
			return ms_err_set(err, -EADDRINUSE,
					  "another moestreamd answers on %s; stop it "
					  "or choose another socket.path",
					  path);
		}
		if (t >= 0)
			close(t);
		unlink(path);
	}
	return 0;
}

int ms_server_precheck(const struct ms_config *cfg, bool probe,
		       struct ms_err *err)
{
	struct ms_server *tmp = calloc(1, sizeof(*tmp));
	if (!tmp)
		return ms_err_set(err, -ENOMEM, "server: out of memory (%zu bytes)",
				  sizeof(*tmp));
	tmp->cfg = *cfg;
	int rc = parse_allow(tmp, err);
	free(tmp);
	return rc ? rc : socket_precheck(cfg->socket_path, probe, err);
}

static int bind_socket(struct ms_server *s, struct ms_err *err)
{
	const char *path = s->cfg.socket_path;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int rc = socket_precheck(path, true, err);
	if (rc)
		return rc;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	s->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->lfd < 0)
		return ms_err_set(err, -errno, "socket: %s", strerror(errno));
	/* The mode from the moment the file exists: bind under a umask. */
	mode_t old = umask(0777 & ~(mode_t)s->cfg.socket_mode);
	rc = bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa));
	int e = errno;
	umask(old);
	if (rc)
		return ms_err_set(err, -e, "bind %s: %s", path, strerror(e));
	s->bound = true;
	snprintf(s->path, sizeof(s->path), "%s", path);
	if (chmod(path, (mode_t)s->cfg.socket_mode))
		return ms_err_set(err, -errno, "chmod %s: %s", path, strerror(errno));
	if (listen(s->lfd, 128))
		return ms_err_set(err, -errno, "listen %s: %s", path, strerror(errno));
	return 0;
}

void ms_server_block_signals(sigset_t *set)
{
	sigset_t own;
	if (!set)
		set = &own;
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, set, NULL);
}

int ms_server_init(struct ms_server **out, const struct ms_config *cfg,
		   const struct ms_model *m, struct ms_cache *cache,
		   struct ms_err *err)
{
	*out = NULL;
	struct ms_server *s = calloc(1, sizeof(*s));
	if (!s)
		return ms_err_set(err, -ENOMEM, "server: out of memory (%zu bytes)",
				  sizeof(*s));
	s->cfg = *cfg;
	s->m = m;
	s->cache = cache;
	s->lfd = s->sfd = s->efd = s->tfd = s->ep = -1;
	s->start_ns = now_ns();
	pthread_mutex_init(&s->cq_mu, NULL);
	int rc;
	s->n_slots = cfg->max_clients > 4096 ? 4096 : cfg->max_clients;
	if (s->n_slots < 4096)
		s->n_slots = 4096; /* room for a live raise of max_clients */
	s->clients = calloc(s->n_slots, sizeof(*s->clients));
	s->gens = calloc(s->n_slots, sizeof(*s->gens));
	s->rbuf = malloc(MSG_BUF + 1);
	s->wbuf = malloc(MSG_BUF);
	s->hello = calloc(1, sizeof(*s->hello));
	s->rep = calloc(1, sizeof(*s->rep));
	s->req = calloc(1, sizeof(*s->req));
	if (!s->clients || !s->gens || !s->rbuf || !s->wbuf || !s->hello || !s->rep ||
	    !s->req) {
		rc = ms_err_set(err, -ENOMEM, "server: out of memory for the "
				"client table (%u slots) and message buffers",
				s->n_slots);
		goto fail;
	}
	if (m->n_layers > MS_PROTO_MAX_LAYERS) {
		rc = ms_err_set(err, -E2BIG, "%u MoE layers: the protocol carries %d",
				m->n_layers, MS_PROTO_MAX_LAYERS);
		goto fail;
	}
	/* The model description every HELLO carries. */
	struct ms_hello_rep *hr = s->hello;
	hr->version = MS_PROTO_VERSION;
	snprintf(hr->arch, sizeof(hr->arch), "%s", m->arch);
	hr->n_block = m->n_block;
	hr->n_expert = m->n_expert;
	hr->n_expert_used = m->n_expert_used;
	hr->n_layers = m->n_layers;
	hr->arena_size = ms_cache_arena(cache)->size;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		struct ms_proto_layer *P = &hr->layers[l];
		P->block = L->block;
		P->n_proj = L->n_proj;
		for (uint32_t j = 0; j < L->n_proj; j++) {
			P->proj[j] = L->proj[j];
			P->type[j] = L->type[j];
			P->ne[j][0] = L->ne[j][0];
			P->ne[j][1] = L->ne[j][1];
		}
		P->expert_bytes = L->expert_bytes;
		P->nextn = L->nextn;
	}
	if ((rc = parse_allow(s, err)) ||
	    (rc = ms_prefetcher_init(&s->pf, m->n_layers, m->n_expert,
				     MS_PREFETCH_DECAY, err)) ||
	    (rc = bind_socket(s, err)))
		goto fail;

	sigset_t set;
	ms_server_block_signals(&set);
	s->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	s->ep = epoll_create1(EPOLL_CLOEXEC);
	if (s->sfd < 0 || s->efd < 0 || s->tfd < 0 || s->ep < 0) {
		rc = ms_err_set(err, -errno, "event loop setup: %s", strerror(errno));
		goto fail;
	}
	struct {
		int fd;
		uint64_t tag;
	} fds[] = { { s->lfd, TAG_LISTEN }, { s->sfd, TAG_SIGNAL },
		    { s->efd, TAG_EVENT }, { s->tfd, TAG_TIMER } };
	for (size_t i = 0; i < 4; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = fds[i].tag };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fds[i].fd, &ev)) {
			rc = ms_err_set(err, -errno, "epoll: %s", strerror(errno));
			goto fail;
		}
	}
	*out = s;
	return 0;
fail:
	ms_server_free(s);
	return rc;
}

/* Arms the 1 s timer only while some client has an idle timeout to run.
 * Only a change arms or disarms it: re-arming on every loop iteration
 * would push the first tick back for as long as any client is busy. */
static void arm_timer(struct ms_server *s)
{
	bool want = s->cfg.idle_timeout_s && s->n_clients;
	if (want == s->timer_armed)
		return;
	struct itimerspec it = { 0 };
	if (want)
		it.it_value.tv_sec = it.it_interval.tv_sec = 1;
	timerfd_settime(s->tfd, 0, &it, NULL);
	s->timer_armed = want;
}

static void on_timer(struct ms_server *s)
{
	uint64_t v;
	if (read(s->tfd, &v, sizeof(v)) < 0) {
		/* spurious */
	}
	if (!s->cfg.idle_timeout_s)
		return;
	uint64_t limit = (uint64_t)s->cfg.idle_timeout_s * 1000000000ull, now = now_ns();
	for (uint32_t i = 0; i < s->n_slots; i++) {
		struct client *c = s->clients[i];
		/* Pins do not keep a silent client: a stopped or wedged process
		 * would hold its experts forever. Loads still on their way do. */
		if (c && !c->n_pending && now - c->last_active_ns > limit)
			client_close(s, c, "idle (socket.idle_timeout); its pins released");
	}
}

static void on_hup(struct ms_server *s, ms_config_reload_fn reload, void *ctx)
{
	if (!reload) {
		ms_log(MS_LOG_NOTICE, "SIGHUP: no configuration to re-read");
		return;
	}
	struct ms_config fresh;
	struct ms_err err = { 0 };
	if (reload(&fresh, ctx, &err)) {
		ms_log(MS_LOG_ERR, "SIGHUP: %s; keeping the running configuration",
		       err.msg);
		return;
	}
	struct ms_config next = s->cfg;
	char refused[1024] = "";
	int n = ms_config_apply_live(&next, &fresh, refused, sizeof(refused));
	/* The allow lists must resolve before anything changes. */
	struct ms_server *tmp = malloc(sizeof(*tmp));
	if (!tmp)
		return;
	*tmp = *s;
	tmp->cfg = next;
	if (parse_allow(tmp, &err)) {
		ms_log(MS_LOG_ERR, "SIGHUP: %s; keeping the running configuration",
		       err.msg);
		free(tmp);
		return;
	}
	s->cfg = next;
	memcpy(s->allow_uid, tmp->allow_uid, sizeof(s->allow_uid));
	memcpy(s->allow_gid, tmp->allow_gid, sizeof(s->allow_gid));
	s->n_allow_uid = tmp->n_allow_uid;
	s->n_allow_gid = tmp->n_allow_gid;
	free(tmp);
	ms_log_threshold = s->cfg.log_level;
	ms_cache_set_tunables(s->cache, s->cfg.acquire_timeout_ms,
			      s->cfg.prefetch_max_inflight, s->cfg.pin_top);
	ms_log(MS_LOG_NOTICE, "SIGHUP: configuration re-read: %d option(s) applied%s%s",
	       n, *refused ? "; these cannot change while running (restart to "
			     "apply): " : "",
	       refused);
}

int ms_server_run(struct ms_server *s, ms_config_reload_fn reload, void *ctx)
{
	struct epoll_event evs[64];
	ms_log(MS_LOG_NOTICE, "serving %s on %s", s->m->shards[0]->path, s->path);
	while (!s->stop) {
		arm_timer(s);
		/* Right after traffic, poll instead of sleeping for a moment:
		 * the next request of an engine's token loop comes within
		 * microseconds, and a wake-up from idle costs tens of them.
		 * An idle daemon still sleeps (and uses no CPU). */
		int timeout = now_ns() - s->last_msg_ns < SPIN_NS ? 0 : -1;
		int n = epoll_wait(s->ep, evs, 64, timeout);
		if (n == 0)
			continue;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n && !s->stop; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == TAG_LISTEN) {
				accept_clients(s);
			} else if (tag == TAG_EVENT) {
				drain_completions(s);
			} else if (tag == TAG_TIMER) {
				on_timer(s);
			} else if (tag == TAG_SIGNAL) {
				struct signalfd_siginfo si;
				while (read(s->sfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo == SIGHUP) {
						on_hup(s, reload, ctx);
					} else {
						ms_log(MS_LOG_NOTICE,
						       "signal %u: stopping (no new "
						       "clients; demand reads finish)",
						       si.ssi_signo);
						s->stop = true;
					}
				}
			} else if (tag >= TAG_CLIENT) {
				struct client *c = s->clients[tag - TAG_CLIENT];
				if (!c)
					continue;
				if (evs[i].events & EPOLLOUT)
					client_flush(s, c);
				if (s->clients[tag - TAG_CLIENT] == c &&
				    (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					client_readable(s, c);
			}
		}
	}
	/* Stop accepting at once: the socket goes away before we drain. */
	if (s->lfd >= 0) {
		epoll_ctl(s->ep, EPOLL_CTL_DEL, s->lfd, NULL);
		close(s->lfd);
		s->lfd = -1;
	}
	if (s->bound) {
		unlink(s->path);
		s->bound = false;
	}
	return 0;
}

void ms_server_stop(struct ms_server *s)
{
	if (!s || s->stopped)
		return;
	for (uint32_t i = 0; s->clients && i < s->n_slots; i++)
		if (s->clients[i])
			client_close(s, s->clients[i], NULL);
	/* Answers that raced with the end: their pins go back. Released
	 * without cq_mu held (a release can start a waiter's load, whose
	 * failure calls cache_cb at once); such answers are taken on the next
	 * round. */
	for (;;) {
		pthread_mutex_lock(&s->cq_mu);
		struct completion *co = s->cq;
		s->cq = s->cq_tail = NULL;
		if (!co)
			s->stopped = true;
		pthread_mutex_unlock(&s->cq_mu);
		if (!co)
			break;
		while (co) {
			struct completion *next = co->next;
			if (!co->result)
				ms_cache_release(s->cache, co->layer, co->expert);
			free(co);
			co = next;
		}
	}
	if (s->lfd >= 0) {
		close(s->lfd);
		s->lfd = -1;
	}
	if (s->bound) {
		unlink(s->path);
		s->bound = false;
	}
}

void ms_server_free(struct ms_server *s)
{
	if (!s)
		return;
	/* Without a stop first the cache is still ours to call. */
	ms_server_stop(s);
	int fds[] = { s->sfd, s->efd, s->tfd, s->ep };
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(s->clients);
	free(s->gens);
	free(s->rbuf);
	free(s->wbuf);
	free(s->hello);
	free(s->rep);
	free(s->req);
	ms_prefetcher_free(s->pf);
	pthread_mutex_destroy(&s->cq_mu);
	free(s);
}
