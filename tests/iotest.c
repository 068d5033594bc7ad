/*
 * iotest.c - the I/O engine tests' shared helpers (see iotest.h).
 */
#include "iotest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

int iot_make_stamped(const char *path, uint64_t size, uint16_t tag)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const size_t blk = 4u << 20;
	uint64_t *buf = malloc(blk);
	int rc = 0;
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t at = 0; at < size;) {
		size_t n = size - at < blk ? (size_t)(size - at) : blk;
		for (size_t i = 0; i < (n + 7) / 8; i++)
			buf[i] = iot_word(at + 8 * i, tag); /* little-endian */
		const char *p = (const char *)buf;
		size_t left = n;
		while (left) {
			ssize_t w = pwrite(fd, p, left, (off_t)at);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				rc = -errno;
				goto out;
			}
			p += w;
			at += (uint64_t)w;
			left -= (size_t)w;
		}
	}
	if (fsync(fd))
		rc = -errno;
out:
	free(buf);
	if (close(fd) && !rc)
		rc = -errno;
	return rc;
}

void *iot_mem_alloc(size_t len, uint8_t poison)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		t_fatal("mmap %zu bytes: %s", len, strerror(errno));
	memset(p, poison, len);
	return p;
}

void iot_mem_free(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

/* The word-at-a-time loop covers the bulk: with hundreds of MB to check per
 * run, a byte loop would cost more than the reads. A mismatching word falls
 * back to counting bytes. */
uint64_t iot_verify(const uint8_t *buf, uint64_t off, uint64_t len,
		    uint64_t size, uint16_t tag, uint64_t *first)
{
	uint64_t bad = 0, i = 0;
	*first = UINT64_MAX;
#define IOT_BYTE_AT(k)                                                         \
	do {                                                                   \
		if (buf[k] != iot_tbyte(off + (k), size, tag)) {                     \
			if (!bad)                                              \
				*first = (k);                                  \
			bad++;                                                 \
		}                                                              \
	} while (0)
	for (; i < len && ((off + i) & 7); i++)
		IOT_BYTE_AT(i);
	for (; i + 8 <= len; i += 8) {
		uint64_t o = off + i, got;
		bool whole = o < size && size - o >= 8;
		memcpy(&got, buf + i, 8);
		if (whole ? got == iot_word(o, tag) : o >= size && got == 0)
			continue;
		for (uint64_t k = i; k < i + 8; k++)
			IOT_BYTE_AT(k);
	}
	for (; i < len; i++)
		IOT_BYTE_AT(i);
#undef IOT_BYTE_AT
	return bad;
}

uint64_t iot_verify_poison(const uint8_t *buf, uint64_t len, uint8_t poison,
			   uint64_t *first)
{
	uint64_t bad = 0;
	*first = UINT64_MAX;
	for (uint64_t i = 0; i < len; i++)
		if (buf[i] != poison) {
			if (!bad)
				*first = i;
			bad++;
		}
	return bad;
}

/* ---- completion tracker -------------------------------------------------- */

struct iot_track *iot_track_new(unsigned n)
{
	struct iot_track *t = calloc(1, sizeof(*t));
	if (!t)
		t_fatal("out of memory");
	t->n = n;
	t->slot = calloc(n ? n : 1, sizeof(*t->slot));
	t->fifo = calloc(n ? n : 1, sizeof(*t->fifo));
	if (!t->slot || !t->fifo)
		t_fatal("out of memory");
	for (unsigned i = 0; i < n; i++) {
		t->slot[i].t = t;
		t->slot[i].idx = i;
	}
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	return t;
}

void iot_track_free(struct iot_track *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cv);
	free(t->slot);
	free(t->fifo);
	free(t);
}

void iot_track_reset(struct iot_track *t, unsigned idx)
{
	pthread_mutex_lock(&t->mu);
	t->slot[idx].calls = 0;
	t->slot[idx].result = 0;
	t->slot[idx].id = 0;
	t->slot[idx].seq = 0;
	pthread_mutex_unlock(&t->mu);
}

void iot_track_cb(void *ctx, uint64_t id, int result)
{
	struct iot_slot *s = ctx;
	struct iot_track *t = s->t;
	pthread_mutex_lock(&t->mu);
	if (s->calls++) {
		t->doubles++;
		fprintf(stderr, "slot %u (id %llu): callback #%u, result %d "
			"(first said %d)\n", s->idx, (unsigned long long)id,
			s->calls, result, s->result);
	} else {
		s->result = result;
		s->id = id;
		s->seq = ++t->seq;
		/* The fifo holds at most n entries: each slot is pushed once
		 * per reset and popped before its reset. */
		t->fifo[t->tail++ % t->n] = s->idx;
		t->done++;
	}
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
}

static void deadline_in(struct timespec *ts, double s)
{
	clock_gettime(CLOCK_REALTIME, ts);
	double ns = (double)ts->tv_nsec + s * 1e9;
	ts->tv_sec += (time_t)(ns / 1e9);
	ts->tv_nsec = (long)(ns - (double)(time_t)(ns / 1e9) * 1e9);
}

bool iot_track_wait(struct iot_track *t, unsigned count, double timeout_s)
{
	struct timespec ts;
	deadline_in(&ts, timeout_s);
	pthread_mutex_lock(&t->mu);
	int rc = 0;
	while (t->done < count && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&t->cv, &t->mu, &ts);
	bool ok = t->done >= count;
	pthread_mutex_unlock(&t->mu);
	return ok;
}

int iot_track_pop(struct iot_track *t, double timeout_s)
{
	struct timespec ts;
	deadline_in(&ts, timeout_s);
	pthread_mutex_lock(&t->mu);
	int rc = 0;
	while (t->head == t->tail && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&t->cv, &t->mu, &ts);
	int idx = -1;
	if (t->head != t->tail)
		idx = (int)t->fifo[t->head++ % t->n];
	pthread_mutex_unlock(&t->mu);
	return idx;
}

/* ---- watchdog ------------------------------------------------------------ */

static pthread_mutex_t wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cv = PTHREAD_COND_INITIALIZER;
static bool wd_started, wd_armed;
static struct timespec wd_deadline;
static char wd_what[256];

static void *wd_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&wd_mu);
	for (;;) {
		if (!wd_armed) {
			pthread_cond_wait(&wd_cv, &wd_mu);
			continue;
		}
		int rc = pthread_cond_timedwait(&wd_cv, &wd_mu, &wd_deadline);
		if (rc == ETIMEDOUT && wd_armed) {
			struct timespec now;
			clock_gettime(CLOCK_REALTIME, &now);
			if (now.tv_sec > wd_deadline.tv_sec ||
			    (now.tv_sec == wd_deadline.tv_sec &&
			     now.tv_nsec >= wd_deadline.tv_nsec)) {
				fprintf(stderr, "FAIL hung: %s\n", wd_what);
				fflush(NULL);
				exit(T_FAIL);
			}
		}
	}
	return NULL;
}

void iot_watchdog(double seconds, const char *what)
{
	pthread_mutex_lock(&wd_mu);
	if (!wd_started) {
		pthread_t th;
		if (pthread_create(&th, NULL, wd_main, NULL))
			t_fatal("cannot start the watchdog thread");
		pthread_detach(th);
		wd_started = true;
	}
	wd_armed = seconds > 0;
	if (wd_armed) {
		deadline_in(&wd_deadline, seconds);
		snprintf(wd_what, sizeof(wd_what), "%s (no progress in %.0f s)",
			 what ? what : "?", seconds);
	}
	pthread_cond_broadcast(&wd_cv);
	pthread_mutex_unlock(&wd_mu);
}

double iot_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int iot_sabotage(void)
{
	const char *e = getenv("MS_IOT_SABOTAGE");
	return e && *e ? atoi(e) : 0;
}

struct ms_io_config iot_config(enum ms_io_engine engine, enum ms_io_direct direct,
			       unsigned threads, unsigned depth, uint32_t request_size)
{
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = engine;
	cfg.direct = direct;
	cfg.threads = threads;
	cfg.queue_depth = depth;
	cfg.request_size = request_size;
	return cfg;
}

const char *iot_stamped(unsigned i, uint64_t size)
{
	static char path[8][512];
	if (i >= 8)
		t_fatal("iot_stamped: file %u of at most 8", i);
	snprintf(path[i], sizeof(path[i]), "%s/stamped%u.bin", t_tmpdir(), i);
	int rc = iot_make_stamped(path[i], size, (uint16_t)i);
	if (rc)
		t_fatal("writing %s: %s", path[i], strerror(-rc));
	return path[i];
}

const char *iot_engine_name(enum ms_io_engine e)
{
	switch (e) {
	case MS_IO_ENGINE_URING: return "uring";
	case MS_IO_ENGINE_PREADV: return "preadv";
	default: return "auto";
	}
}
