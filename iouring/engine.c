/*
 * engine.c - the I/O engine: requests of file extents, cut into chunks,
 * read by io_uring rings (or a preadv thread pool) from one shared queue,
 * demand before prefetch.
 *
 * Why one shared queue: a demand read must overtake every prefetch that is
 * not yet on the device, whichever thread would have issued it; a per-ring
 * queue would strand demand behind a busy ring. The queue lock is held only
 * to move chunk pointers; SQE preparation and completion handling happen
 * outside it.
 *
 * A ring thread keeps up to queue_depth reads in flight and sleeps in
 * io_uring_submit_and_wait; a POLL_ADD on its eventfd wakes it when new work
 * or a cancellation arrives, so a demand read never waits for an unrelated
 * completion. Chunk pointers are the user_data; a chunk lives as long as its
 * request, and a request is freed only after its last chunk completed.
 *
 * Completion rules: a short read is resubmitted for the rest (a short read
 * at end of file is the end of the data: the rest of the widened buffer is
 * zeroed); -EAGAIN and -EINTR are retried; any other error fails the request
 * with the first error, its queued chunks are dropped and its in-flight ones
 * drained; the engine carries on. A cancelled prefetch drops its queued
 * chunks, asks the rings to cancel its in-flight ones, and reports
 * -ECANCELED once the last one is back (unless it had already finished).
 *
 * Staging (iouring.h): a chunk takes a free staging buffer as it leaves the
 * queue (none free: it stays queued, so the buffers bound the reads in
 * flight), is read into it, and the thread that reaps the read copies what
 * arrived to the chunk's destination before anything else looks at the
 * result; the buffer goes back under the lock, and whoever may be waiting
 * for one is woken. A short read copies what it got and queues the rest,
 * which takes a buffer of its own. A cancelled or failed request's chunk is
 * still copied: its destination stays the caller's until the callback, and
 * it is rare enough not to be worth a second lock round.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moestream/iouring.h"

#define REG_BUF_MAX (1ull << 30)  /* the kernel's cap per registered iovec */
#define TAG_WAKE 1ull
#define TAG_CANCEL 2ull
#define N_BUCKETS 4096

struct req;

struct chunk {
	struct req *req;
	struct chunk *next;   /* queue link */
	uint64_t off, len;    /* what is still to read */
	uint8_t *dst;
	uint32_t file;
	uint16_t buf_index;   /* registered iovec holding dst */
	int16_t ring;         /* ring reading it, -1 when queued or done */
	int32_t stage;        /* staging buffer it is read into, -1: none */
	bool inflight, done;
};

struct req {
	uint64_t id;
	struct req *hnext;
	enum ms_io_class cls;
	ms_io_done_fn done;
	void *ctx;
	unsigned n_chunks, n_pending;
	int result;
	bool cancelled;
	struct chunk chunks[];
};

struct cancel_ask {
	struct chunk *c;
	struct cancel_ask *next;
};

struct ring {
	struct ms_io *io;
	unsigned idx;
	struct io_uring ring;
	bool ring_ok;
	int efd;
	pthread_t thread;
	bool started;
	struct cancel_ask *cancels;   /* under io->mu */
	uint64_t wake_buf;
	uint64_t rng;                 /* fault injection */
};

struct fifo {
	struct chunk *head, *tail;
};

struct worker_arg {
	struct ms_io *io;
	uint64_t rng;
};

struct ms_io {
	struct ms_io_config cfg;
	struct ms_io_mode mode;
	unsigned n_files;
	int *fds;
	uint64_t *file_size;
	uint32_t *block_size;
	uint8_t *mem;
	size_t mem_len;

	uint8_t *stage;              /* staging buffers; NULL: reads go to mem */
	uint32_t *stage_free;        /* stack of free buffer indexes (mu) */
	uint32_t n_stage_free;

	pthread_mutex_t mu;
	pthread_cond_t cv;           /* preadv workers wait here */
	struct fifo q[MS_IO_N_CLASSES];
	struct req *bucket[N_BUCKETS];
	uint64_t next_id;
	bool stopping;
	struct ms_io_stats st;
	uint64_t busy_since;         /* CLOCK_MONOTONIC ns; 0: nothing in flight */

	unsigned n_rings;
	struct ring *rings;
	unsigned n_workers;          /* preadv */
	pthread_t *workers;
	struct worker_arg *worker_args;
};

void ms_io_config_default(struct ms_io_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->engine = MS_IO_ENGINE_AUTO;
	cfg->direct = MS_IO_DIRECT_AUTO;
	cfg->threads = 1;
	cfg->queue_depth = 32;
	cfg->request_size = 1u << 20;
	cfg->fixed_buffers = true;
	cfg->fixed_files = true;
}

/* ---- queue and request bookkeeping (io->mu held: do_ functions) ------------- */

static void do_push(struct fifo *f, struct chunk *c, bool front)
{
	c->next = NULL;
	if (!f->head) {
		f->head = f->tail = c;
	} else if (front) {
		c->next = f->head;
		f->head = c;
	} else {
		f->tail->next = c;
		f->tail = c;
	}
}

/* The next chunk to read: demand first; then prefetch, unless the reads
 * in flight (demand and prefetch) would pass cfg.prefetch_inflight. The
 * cap keeps the device just busy and the prefetches in the order they were
 * asked for: the nearest layer's reads finish before the next layer's
 * start, and once a reader waits for a layer (its reads promoted to
 * demand) the next layer's stay queued until the awaited ones drain,
 * instead of every hinted layer sharing the device at once and the reader
 * waiting on all of them. With nothing in flight one prefetch read is
 * always allowed, and every thread that completes a read pops again, so a
 * capped chunk is never stranded. */
static struct chunk *do_pop(struct ms_io *io)
{
	for (int k = 0; k < MS_IO_N_CLASSES; k++) {
		struct fifo *f = &io->q[k];
		struct chunk *c = f->head;
		if (!c)
			continue;
		if (k == MS_IO_PREFETCH && io->cfg.prefetch_inflight) {
			uint64_t in = io->st.inflight_bytes[MS_IO_DEMAND] +
				      io->st.inflight_bytes[MS_IO_PREFETCH];
			if (in && in + c->len > io->cfg.prefetch_inflight)
				continue;
		}
		f->head = c->next;
		if (!f->head)
			f->tail = NULL;
		io->st.queued_bytes[k] -= c->len;
		return c;
	}
	return NULL;
}

static bool do_queues_empty(const struct ms_io *io)
{
	return !io->q[0].head && !io->q[1].head;
}

/* do_pop, with a staging buffer for the chunk when staging is on: none
 * free, nothing leaves the queue. */
static struct chunk *do_take(struct ms_io *io)
{
	if (io->stage && !io->n_stage_free)
		return NULL;
	struct chunk *c = do_pop(io);
	if (c && io->stage)
		c->stage = (int32_t)io->stage_free[--io->n_stage_free];
	return c;
}

/* Gives chunk c's staging buffer back; true when queued work may have been
 * waiting for it: there was none free, and something is queued (the caller
 * wakes the other threads once the lock is dropped). */
static bool do_stage_put(struct ms_io *io, struct chunk *c)
{
	if (c->stage < 0)
		return false;
	bool starved = !io->n_stage_free;
	io->stage_free[io->n_stage_free++] = (uint32_t)c->stage;
	c->stage = -1;
	return starved && !do_queues_empty(io);
}

/* Where chunk c's read lands: its staging buffer, or its destination. */
static uint8_t *read_dst(const struct ms_io *io, const struct chunk *c)
{
	return c->stage >= 0 ? io->stage + (size_t)c->stage * io->mode.staging_buf
			     : c->dst;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A chunk goes in flight, or comes back: the byte counts, and the busy
 * clock, which runs while anything is in flight. */
static void do_inflight(struct ms_io *io, struct chunk *c, bool start)
{
	uint64_t *b = io->st.inflight_bytes;
	bool idle = !b[MS_IO_DEMAND] && !b[MS_IO_PREFETCH];
	if (start) {
		b[c->req->cls] += c->len;
		if (idle)
			io->busy_since = mono_ns();
		return;
	}
	b[c->req->cls] -= c->len;
	if (!b[MS_IO_DEMAND] && !b[MS_IO_PREFETCH] && io->busy_since) {
		io->st.busy_ns += mono_ns() - io->busy_since;
		io->busy_since = 0;
	}
}

/* Removes the request's queued chunks from its class queue. */
static void do_unqueue(struct ms_io *io, struct req *r)
{
	struct fifo *f = &io->q[r->cls];
	struct chunk *prev = NULL, *c = f->head;
	while (c) {
		struct chunk *next = c->next;
		if (c->req == r) {
			if (prev)
				prev->next = next;
			else
				f->head = next;
			if (f->tail == c)
				f->tail = prev;
			io->st.queued_bytes[r->cls] -= c->len;
			c->done = true;
			r->n_pending--;
		} else {
			prev = c;
		}
		c = next;
	}
}

static struct req **do_slot(struct ms_io *io, uint64_t id)
{
	struct req **p = &io->bucket[id & (N_BUCKETS - 1)];
	while (*p && (*p)->id != id)
		p = &(*p)->hnext;
	return p;
}

/* Wakes whoever may now have work, but ring `self` (the caller's own,
 * which looks at the queues again anyway; -1: none). */
static void wake_others(struct ms_io *io, int self)
{
	uint64_t one = 1;
	for (unsigned i = 0; i < io->n_rings; i++)
		if ((int)i != self && io->rings[i].efd >= 0 &&
		    write(io->rings[i].efd, &one, sizeof(one)) < 0) {
			/* eventfd overflow cannot happen at 1 per write */
		}
	pthread_cond_broadcast(&io->cv);
}

static void wake_all(struct ms_io *io)
{
	wake_others(io, -1);
}

/* ---- completion --------------------------------------------------------------- */

static uint64_t xrand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Test-only: turn a good completion into a fault, at the configured rates.
 * A short read keeps whole MS_IO_ALIGN blocks so O_DIRECT can resume. */
static int inject(const struct ms_io_faults *f, uint64_t *rng, int res)
{
	if (res <= 0)
		return res;
	uint32_t x = (uint32_t)(xrand(rng) % 1000000);
	if (x < f->eio_ppm)
		return -EIO;
	x -= f->eio_ppm;
	if (x < f->eagain_ppm)
		return -EAGAIN;
	x -= f->eagain_ppm;
	if (x < f->eintr_ppm)
		return -EINTR;
	x -= f->eintr_ppm;
	if (x < f->short_ppm && res > (int)MS_IO_ALIGN) {
		unsigned s = ((unsigned)res / 2) & ~(MS_IO_ALIGN - 1);
		return (int)(s ? s : MS_IO_ALIGN);
	}
	return res;
}

static bool faults_on(const struct ms_io_faults *f)
{
	return f->short_ppm || f->eagain_ppm || f->eintr_ppm || f->eio_ppm;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Copies the `n` bytes a staged read brought to the chunk's destination;
 * returns the CPU time it took this thread. */
static uint64_t stage_copy(const struct ms_io *io, const struct chunk *c, size_t n)
{
	uint64_t t0 = thread_cpu_ns();
	memcpy(c->dst, read_dst(io, c), n);
	return thread_cpu_ns() - t0;
}

/* Called by the thread that read chunk c (ring `self`, -1 for a preadv
 * worker), with the read's result. */
static void complete_chunk(struct ms_io *io, struct chunk *c, int res,
			   uint64_t *rng, int self)
{
	struct req *r = c->req;
	if (faults_on(&io->cfg.faults))
		res = inject(&io->cfg.faults, rng, res);
	uint64_t copy_ns = 0;
	if (c->stage >= 0 && res > 0)
		copy_ns = stage_copy(io, c, (size_t)res);

	pthread_mutex_lock(&io->mu);
	c->inflight = false;
	c->ring = -1;
	do_inflight(io, c, false);
	bool wake = io->stopping; /* leaving threads recheck the queues */
	if (c->stage >= 0) {
		if (res > 0)
			io->st.bytes_copied += (uint64_t)res;
		io->st.copy_ns += copy_ns;
		wake |= do_stage_put(io, c);
	}
	if (!r->cancelled && !r->result) {
		/* -ECANCELED on a request nobody cancelled: a cancel aimed at
		 * a finished chunk whose address this one reuses. Read again. */
		if (res == -EAGAIN || res == -EINTR || res == -ECANCELED) {
			io->st.retries++;
			io->st.queued_bytes[r->cls] += c->len;
			do_push(&io->q[r->cls], c, true);
			pthread_mutex_unlock(&io->mu);
			wake_all(io);
			return;
		}
		if (res >= 0 && (uint64_t)res < c->len) {
			uint64_t end = c->off + (uint64_t)res;
			if (end >= io->file_size[c->file] || res == 0) {
				if (end < io->file_size[c->file]) {
					/* 0 bytes before EOF: the file shrank */
					r->result = -EIO;
				} else {
					memset(c->dst + res, 0, c->len - (uint64_t)res);
					io->st.bytes_read += (uint64_t)res;
					res = (int)c->len;
				}
			} else {
				io->st.short_reads++;
				io->st.bytes_read += (uint64_t)res;
				c->off += (uint64_t)res;
				c->dst += res;
				c->len -= (uint64_t)res;
				io->st.queued_bytes[r->cls] += c->len;
				do_push(&io->q[r->cls], c, true);
				pthread_mutex_unlock(&io->mu);
				wake_all(io);
				return;
			}
		} else if (res < 0) {
			r->result = res;
		} else {
			io->st.bytes_read += (uint64_t)res;
		}
		if (r->result)
			do_unqueue(io, r); /* the rest is pointless */
	}
	c->done = true;
	bool last = --r->n_pending == 0;
	if (last) {
		*do_slot(io, r->id) = r->hnext;
		if (r->cancelled && !r->result)
			r->result = -ECANCELED;
		if (r->cancelled)
			io->st.cancelled++;
		else if (r->result)
			io->st.failed++;
		io->st.completed[r->cls]++;
	}
	pthread_mutex_unlock(&io->mu);
	if (wake)
		wake_others(io, self);
	if (last) {
		r->done(r->ctx, r->id, r->result);
		free(r);
	}
}

/* ---- io_uring rings ------------------------------------------------------------ */

/* Arms the eventfd read that wakes this ring; false when the SQ is full
 * (the caller tries again on its next loop, once the SQ has drained). */
static bool arm_wake(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe)
		return false;
	io_uring_prep_read(sqe, r->efd, &r->wake_buf, sizeof(r->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, TAG_WAKE);
	return true;
}

static bool prep_read(struct ring *r, struct chunk *c)
{
	struct ms_io *io = r->io;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe)
		return false;
	int fd = io->mode.fixed_files ? (int)c->file : io->fds[c->file];
	uint8_t *dst = read_dst(io, c);
	if (io->mode.fixed_buffers)
		io_uring_prep_read_fixed(sqe, fd, dst, (unsigned)c->len, c->off,
					 c->stage >= 0 ? 0 : c->buf_index);
	else
		io_uring_prep_read(sqe, fd, dst, (unsigned)c->len, c->off);
	if (io->mode.fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, c);
	return true;
}

/* Under the lock: the cancellations asked of this ring, then reads from the
 * queues up to the ring's depth (and the free staging buffers). True when
 * the ring may stop: stopping, nothing in flight, nothing queued. */
static bool ring_fill(struct ring *r, unsigned *inflight)
{
	struct ms_io *io = r->io;
	pthread_mutex_lock(&io->mu);
	while (r->cancels) {
		struct cancel_ask *a = r->cancels;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
		if (!sqe)
			break;
		r->cancels = a->next;
		io_uring_prep_cancel(sqe, a->c, 0);
		io_uring_sqe_set_data64(sqe, TAG_CANCEL);
		free(a);
	}
	while (*inflight < io->cfg.queue_depth) {
		struct chunk *c = do_take(io);
		if (!c)
			break;
		if (!prep_read(r, c)) {
			do_stage_put(io, c); /* this thread comes back */
			io->st.queued_bytes[c->req->cls] += c->len;
			do_push(&io->q[c->req->cls], c, true);
			break;
		}
		c->inflight = true;
		c->ring = (int16_t)r->idx;
		do_inflight(io, c, true);
		io->st.chunks++;
		(*inflight)++;
	}
	bool stop = io->stopping && !*inflight && do_queues_empty(io);
	pthread_mutex_unlock(&io->mu);
	return stop;
}

static void *ring_main(void *arg)
{
	struct ring *r = arg;
	struct ms_io *io = r->io;
	unsigned inflight = 0;
	bool wake_armed = false;

	for (;;) {
		if (!wake_armed)
			wake_armed = arm_wake(r);
		if (ring_fill(r, &inflight))
			break;
		int rc = io_uring_submit_and_wait(&r->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			ms_log(MS_LOG_ERR, "io_uring ring %u: submit failed: %s",
			       r->idx, strerror(-rc));
			usleep(1000);
		}
		struct io_uring_cqe *cqe;
		while (!io_uring_peek_cqe(&r->ring, &cqe)) {
			uint64_t tag = io_uring_cqe_get_data64(cqe);
			int res = cqe->res;
			io_uring_cqe_seen(&r->ring, cqe);
			if (tag == TAG_WAKE) {
				wake_armed = false;
				continue;
			}
			if (tag == TAG_CANCEL)
				continue;
			struct chunk *c = (struct chunk *)(uintptr_t)tag;
			bool staged = c->stage >= 0;
			inflight--;
			complete_chunk(io, c, res, &r->rng, (int)r->idx);
			/* A staged read's copy took a while, and freed a
			 * buffer: the next read goes to the device now rather
			 * than after the copies of every completion waiting. */
			if (staged) {
				ring_fill(r, &inflight);
				io_uring_submit(&r->ring);
			}
		}
	}
	return NULL;
}

static int ring_setup(struct ring *r, struct ms_err *err)
{
	struct ms_io *io = r->io;
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	if (io->cfg.sqpoll) {
		p.flags |= IORING_SETUP_SQPOLL;
		p.sq_thread_idle = 50;
	}
	unsigned entries = io->cfg.queue_depth + 16;
	int rc = io_uring_queue_init_params(entries, &r->ring, &p);
	if (rc == -EPERM && io->cfg.sqpoll) {
		/* SQPOLL needs privilege on some kernels: go without, say so */
		io->mode.sqpoll = false;
		snprintf(io->mode.why + strlen(io->mode.why),
			 sizeof(io->mode.why) - strlen(io->mode.why),
			 "%sSQPOLL refused (EPERM)", *io->mode.why ? "; " : "");
		memset(&p, 0, sizeof(p));
		rc = io_uring_queue_init_params(entries, &r->ring, &p);
	}
	if (rc)
		return ms_err_set(err, rc, "io_uring_queue_init: %s", strerror(-rc));
	r->ring_ok = true;
	if (io->mode.fixed_files) {
		rc = io_uring_register_files(&r->ring, io->fds, io->n_files);
		if (rc) {
			io->mode.fixed_files = false;
			snprintf(io->mode.why + strlen(io->mode.why),
				 sizeof(io->mode.why) - strlen(io->mode.why),
				 "%sfixed files refused (%s)",
				 *io->mode.why ? "; " : "", strerror(-rc));
		}
	}
	if (io->mode.fixed_buffers) {
		/* the staging buffers when reads land there, else mem */
		uint8_t *base = io->stage ? io->stage : io->mem;
		size_t len = io->stage ? io->mode.staging : io->mem_len;
		unsigned n = (unsigned)((len + REG_BUF_MAX - 1) / REG_BUF_MAX);
		struct iovec *iov = calloc(n, sizeof(*iov));
		if (!iov)
			return ms_err_set(err, -ENOMEM, "I/O engine: out of memory "
					  "for %u buffer registrations", n);
		for (unsigned i = 0; i < n; i++) {
			iov[i].iov_base = base + (size_t)i * REG_BUF_MAX;
			uint64_t left = len - (size_t)i * REG_BUF_MAX;
			iov[i].iov_len = left < REG_BUF_MAX ? left : REG_BUF_MAX;
		}
		rc = io_uring_register_buffers(&r->ring, iov, n);
		free(iov);
		if (rc) {
			io->mode.fixed_buffers = false;
			snprintf(io->mode.why + strlen(io->mode.why),
				 sizeof(io->mode.why) - strlen(io->mode.why),
				 "%sfixed buffers refused (%s%s)",
				 *io->mode.why ? "; " : "", strerror(-rc),
				 rc == -ENOMEM || rc == -EPERM
					 ? ": raise RLIMIT_MEMLOCK (ulimit -l, "
					   "LimitMEMLOCK=infinity)"
					 : "");
		}
	}
	r->efd = eventfd(0, EFD_CLOEXEC);
	if (r->efd < 0)
		return ms_err_set(err, -errno, "eventfd: %s", strerror(errno));
	return 0;
}

/* ---- preadv workers -------------------------------------------------------------- */

static void *pread_main(void *arg)
{
	struct worker_arg *w = arg;
	struct ms_io *io = w->io;
	for (;;) {
		pthread_mutex_lock(&io->mu);
		struct chunk *c;
		/* Stopping, a worker leaves once nothing is queued: demand
		 * reads still queued (waiting for a staging buffer, say) are
		 * read first. */
		while (!(c = do_take(io)) && !(io->stopping && do_queues_empty(io)))
			pthread_cond_wait(&io->cv, &io->mu);
		if (!c) {
			pthread_mutex_unlock(&io->mu);
			break;
		}
		c->inflight = true;
		do_inflight(io, c, true);
		io->st.chunks++;
		pthread_mutex_unlock(&io->mu);
		ssize_t n = pread(io->fds[c->file], read_dst(io, c), c->len,
				  (off_t)c->off);
		complete_chunk(io, c, n < 0 ? -errno : (int)n, &w->rng, -1);
	}
	return NULL;
}

/* ---- setup ------------------------------------------------------------------------ */

static uint32_t dio_align(int fd)
{
#ifdef STATX_DIOALIGN
	struct statx sx;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align)
		return sx.stx_dio_offset_align;
#else
	(void)fd;
#endif
	return 512;
}

static int open_files(struct ms_io *io, const char *const *paths,
		      struct ms_err *err)
{
	bool want_direct = io->cfg.direct != MS_IO_DIRECT_OFF;
	io->mode.direct = want_direct;
	for (unsigned i = 0; i < io->n_files; i++) {
		int fd = -1;
		if (io->mode.direct) {
			fd = open(paths[i], O_RDONLY | O_CLOEXEC | O_DIRECT);
			if (fd < 0 && errno == EINVAL &&
			    io->cfg.direct == MS_IO_DIRECT_AUTO) {
				/* The file system refuses O_DIRECT: every file
				 * goes buffered, said once. */
				io->mode.direct = false;
				snprintf(io->mode.why + strlen(io->mode.why),
					 sizeof(io->mode.why) - strlen(io->mode.why),
					 "%s%s: O_DIRECT refused, reading through "
					 "the page cache",
					 *io->mode.why ? "; " : "", paths[i]);
				for (unsigned k = 0; k < i; k++) {
					close(io->fds[k]);
					io->fds[k] = open(paths[k], O_RDONLY | O_CLOEXEC);
					if (io->fds[k] < 0)
						return ms_err_set(err, -errno, "%s: %s",
								  paths[k],
								  strerror(errno));
				}
			} else if (fd < 0 && errno == EINVAL) {
				return ms_err_set(err, -EINVAL,
						  "%s: O_DIRECT refused by the file "
						  "system (io.direct = on; set auto "
						  "or off)",
						  paths[i]);
			}
		}
		if (fd < 0 && !io->mode.direct)
			fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return ms_err_set(err, -errno, "%s: %s", paths[i],
					  strerror(errno));
		io->fds[i] = fd;
		struct stat st;
		if (fstat(fd, &st))
			return ms_err_set(err, -errno, "%s: %s", paths[i],
					  strerror(errno));
		io->file_size[i] = (uint64_t)st.st_size;
		io->block_size[i] = dio_align(fd);
		if (io->mode.direct && (io->block_size[i] > MS_IO_ALIGN ||
					MS_IO_ALIGN % io->block_size[i]))
			return ms_err_set(err, -EINVAL,
					  "%s: O_DIRECT needs %u-byte alignment, "
					  "which does not divide %u",
					  paths[i], io->block_size[i], MS_IO_ALIGN);
	}
	return 0;
}

static void why_add(struct ms_io *io, const char *what)
{
	size_t n = strlen(io->mode.why);
	snprintf(io->mode.why + n, sizeof(io->mode.why) - n, "%s%s", n ? "; " : "",
		 what);
}

/* The staging buffers: one mapping, 2 MiB-aligned, its whole 2 MiB pieces
 * advised for transparent huge pages (a piece that is not whole would make
 * the kernel hand out a huge page for a few KiB of it: the tail stays on
 * 4 KiB pages, so the memory held is the size asked), every page touched
 * now (a read never waits for a fault, and the bytes are charged from the
 * start), locked when asked. */
static int stage_init(struct ms_io *io, struct ms_err *err)
{
	const struct ms_io_config *cfg = &io->cfg;
	uint64_t buf = cfg->request_size < cfg->staging ? cfg->request_size
							: cfg->staging;
	uint64_t n = cfg->staging / buf, len = n * buf;
	void *p;
	int rc = ms_mem_map_anon(len, MS_HUGE_2M, &p);
	if (rc)
		return ms_err_set(err, rc, "I/O engine: mapping %llu bytes of staging "
				  "buffers: %s", (unsigned long long)len, strerror(-rc));
	io->stage = p;
	io->mode.staging = len;
	io->mode.staging_buf = (uint32_t)buf;
	io->mode.staging_bufs = (uint32_t)n;
	uint64_t whole = len & ~(MS_HUGE_2M - 1);
	if (whole && ms_mem_thp_on(false))
		madvise(p, whole, MADV_HUGEPAGE); /* a refusal shows in the count */
	memset(p, 0, len);
	if (cfg->staging_lock && (rc = ms_mem_lock(p, len)))
		return ms_err_set(err, rc, "cannot lock the %llu bytes of staging "
				  "buffers in memory (%s): raise RLIMIT_MEMLOCK "
				  "(ulimit -l, LimitMEMLOCK=infinity)",
				  (unsigned long long)len, strerror(-rc));
	io->mode.staging_huge = ms_mem_huge_bytes(p);
	if (io->mode.staging_huge > len)
		io->mode.staging_huge = len;
	io->stage_free = malloc(n * sizeof(*io->stage_free));
	if (!io->stage_free)
		return ms_err_set(err, -ENOMEM, "I/O engine: out of memory for %llu "
				  "staging buffers", (unsigned long long)n);
	for (uint32_t i = 0; i < n; i++)
		io->stage_free[i] = (uint32_t)(n - 1 - i);
	io->n_stage_free = (uint32_t)n;
	return 0;
}

int ms_io_init(struct ms_io **out, const struct ms_io_config *cfg,
	       const char *const *paths, unsigned n_paths, void *mem,
	       size_t mem_len, struct ms_err *err)
{
	*out = NULL;
	if (!n_paths || n_paths > MS_IO_MAX_FILES)
		return ms_err_set(err, -EINVAL, "%u files (1..%d)", n_paths,
				  MS_IO_MAX_FILES);
	if (!cfg->threads || cfg->threads > MS_IO_MAX_THREADS)
		return ms_err_set(err, -EINVAL, "io.threads = %u is not in 1..%d",
				  cfg->threads, MS_IO_MAX_THREADS);
	if (!cfg->queue_depth || cfg->queue_depth > MS_IO_MAX_DEPTH)
		return ms_err_set(err, -EINVAL,
				  "io.queue_depth = %u is not in 1..%d",
				  cfg->queue_depth, MS_IO_MAX_DEPTH);
	if (!cfg->request_size || cfg->request_size % MS_IO_ALIGN ||
	    cfg->request_size > (64u << 20))
		return ms_err_set(err, -EINVAL,
				  "io.request_size = %u is not a multiple of %u up "
				  "to 64M",
				  cfg->request_size, MS_IO_ALIGN);
	if (!mem || !mem_len)
		return ms_err_set(err, -EINVAL, "no destination memory");
	if (cfg->staging % MS_IO_ALIGN || cfg->staging > MS_IO_MAX_STAGING)
		return ms_err_set(err, -EINVAL,
				  "io.staging = %llu is not a multiple of %u up to 1G",
				  (unsigned long long)cfg->staging, MS_IO_ALIGN);

	struct ms_io *io = calloc(1, sizeof(*io));
	if (!io)
		return ms_err_set(err, -ENOMEM, "I/O engine: out of memory (%zu "
				  "bytes)", sizeof(*io));
	io->cfg = *cfg;
	io->n_files = n_paths;
	io->mem = mem;
	io->mem_len = mem_len;
	io->next_id = 1;
	pthread_mutex_init(&io->mu, NULL);
	pthread_cond_init(&io->cv, NULL);
	io->fds = malloc(n_paths * sizeof(*io->fds));
	io->file_size = calloc(n_paths, sizeof(*io->file_size));
	io->block_size = calloc(n_paths, sizeof(*io->block_size));
	int rc;
	if (!io->fds || !io->file_size || !io->block_size) {
		rc = ms_err_set(err, -ENOMEM, "I/O engine: out of memory for "
				"the table of %u files", n_paths);
		goto fail;
	}
	for (unsigned i = 0; i < n_paths; i++)
		io->fds[i] = -1;
	if ((rc = open_files(io, paths, err)))
		goto fail;
	if (cfg->staging && !io->mode.direct)
		why_add(io, "staging off: reads go through the page cache (no "
			    "O_DIRECT), a copy already");
	else if (cfg->staging && (rc = stage_init(io, err)))
		goto fail;

	/* io_uring, unless told otherwise or it cannot be had. */
	bool uring = cfg->engine != MS_IO_ENGINE_PREADV;
	if (uring) {
		io->mode.engine = MS_IO_ENGINE_URING;
		io->mode.sqpoll = cfg->sqpoll;
		io->mode.fixed_buffers = cfg->fixed_buffers;
		io->mode.fixed_files = cfg->fixed_files;
		/* n_rings only once the array exists: ms_io_free walks it. */
		io->rings = calloc(cfg->threads, sizeof(*io->rings));
		if (!io->rings) {
			rc = ms_err_set(err, -ENOMEM, "I/O engine: out of memory for "
					"%u rings", cfg->threads);
			goto fail;
		}
		io->n_rings = cfg->threads;
		for (unsigned i = 0; i < io->n_rings; i++) {
			io->rings[i].io = io;
			io->rings[i].idx = i;
			io->rings[i].efd = -1;
			io->rings[i].rng = cfg->faults.seed * 1000003u + i;
		}
		for (unsigned i = 0; i < io->n_rings && !rc; i++)
			rc = ring_setup(&io->rings[i], err);
		if (rc && cfg->engine == MS_IO_ENGINE_AUTO &&
		    (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)) {
			/* seccomp, kernel.io_uring_disabled, or no io_uring */
			snprintf(io->mode.why + strlen(io->mode.why),
				 sizeof(io->mode.why) - strlen(io->mode.why),
				 "%sio_uring unavailable (%s): preadv thread pool",
				 *io->mode.why ? "; " : "", strerror(-rc));
			for (unsigned i = 0; i < io->n_rings; i++) {
				if (io->rings[i].ring_ok)
					io_uring_queue_exit(&io->rings[i].ring);
				if (io->rings[i].efd >= 0)
					close(io->rings[i].efd);
			}
			free(io->rings);
			io->rings = NULL;
			io->n_rings = 0;
			uring = false;
			rc = 0;
			ms_err_clear(err);
		} else if (rc) {
			goto fail;
		}
	}
	if (!uring) {
		io->mode.engine = MS_IO_ENGINE_PREADV;
		io->mode.sqpoll = io->mode.fixed_buffers = io->mode.fixed_files = false;
		unsigned n = cfg->threads * cfg->queue_depth;
		if (n > 64)
			n = 64;
		/* n_workers counts the threads started: ms_io_free joins
		 * exactly those. */
		io->workers = calloc(n, sizeof(*io->workers));
		struct worker_arg *wa = calloc(n, sizeof(*wa));
		io->worker_args = wa;
		if (!io->workers || !wa) {
			rc = ms_err_set(err, -ENOMEM, "I/O engine: out of memory "
					"for %u threads", n);
			goto fail;
		}
		for (unsigned i = 0; i < n; i++) {
			wa[i].io = io;
			wa[i].rng = cfg->faults.seed * 1000003u + i;
			if ((rc = -pthread_create(&io->workers[i], NULL, pread_main,
						  &wa[i]))) {
				ms_err_set(err, rc, "cannot start I/O thread %u of "
					   "%u: %s", i + 1, n, strerror(-rc));
				goto fail;
			}
			io->n_workers = i + 1;
		}
	} else {
		for (unsigned i = 0; i < io->n_rings; i++) {
			if ((rc = -pthread_create(&io->rings[i].thread, NULL, ring_main,
						  &io->rings[i]))) {
				ms_err_set(err, rc, "cannot start I/O thread %u of "
					   "%u: %s", i + 1, io->n_rings, strerror(-rc));
				goto fail;
			}
			io->rings[i].started = true;
		}
	}
	if (*io->mode.why)
		ms_log(MS_LOG_WARNING, "I/O engine: %s", io->mode.why);
	*out = io;
	return 0;
fail:
	ms_io_free(io);
	return rc;
}

void ms_io_free(struct ms_io *io)
{
	if (!io)
		return;
	/* Cancel queued prefetches; let demand finish. */
	pthread_mutex_lock(&io->mu);
	io->stopping = true;
	struct req *dead = NULL;
	struct chunk *c;
	while ((c = io->q[MS_IO_PREFETCH].head)) {
		struct req *r = c->req;
		r->cancelled = true;
		do_unqueue(io, r);
		if (!r->n_pending) {
			*do_slot(io, r->id) = r->hnext;
			r->hnext = dead;
			dead = r;
			io->st.cancelled++;
			io->st.completed[MS_IO_PREFETCH]++;
		}
	}
	pthread_mutex_unlock(&io->mu);
	while (dead) {
		struct req *r = dead;
		dead = r->hnext;
		r->done(r->ctx, r->id, -ECANCELED);
		free(r);
	}
	wake_all(io);
	/* Every thread first: a ring or worker finishing a chunk writes to the
	 * other rings' eventfds, so none is closed while any thread runs. */
	for (unsigned i = 0; i < io->n_rings; i++)
		if (io->rings[i].started)
			pthread_join(io->rings[i].thread, NULL);
	for (unsigned i = 0; i < io->n_workers; i++)
		pthread_join(io->workers[i], NULL);
	for (unsigned i = 0; i < io->n_rings; i++) {
		struct ring *r = &io->rings[i];
		while (r->cancels) {
			struct cancel_ask *a = r->cancels;
			r->cancels = a->next;
			free(a);
		}
		if (r->ring_ok)
			io_uring_queue_exit(&r->ring);
		if (r->efd >= 0)
			close(r->efd);
	}
	for (unsigned i = 0; io->fds && i < io->n_files; i++)
		if (io->fds[i] >= 0)
			close(io->fds[i]);
	if (io->stage)
		munmap(io->stage, io->mode.staging);
	free(io->stage_free);
	free(io->rings);
	free(io->workers);
	free(io->worker_args);
	free(io->fds);
	free(io->file_size);
	free(io->block_size);
	pthread_mutex_destroy(&io->mu);
	pthread_cond_destroy(&io->cv);
	free(io);
}

/* ---- submit, cancel, promote -------------------------------------------------------- */

int ms_io_submit(struct ms_io *io, const struct ms_io_extent *ext, unsigned n,
		 enum ms_io_class cls, ms_io_done_fn done, void *ctx, uint64_t *id)
{
	if (!n || (unsigned)cls >= MS_IO_N_CLASSES || !done)
		return -EINVAL;
	uint64_t n_chunks = 0;
	/* a read fits one staging buffer */
	uint64_t rs = io->stage ? io->mode.staging_buf : io->cfg.request_size;
	for (unsigned i = 0; i < n; i++) {
		const struct ms_io_extent *e = &ext[i];
		uint8_t *d = e->dst;
		uint64_t end, limit;
		if (e->file >= io->n_files || !e->len || e->len > io->mem_len ||
		    d < io->mem || (size_t)(d - io->mem) > io->mem_len - e->len)
			return -EINVAL;
		/* Nothing past the file: a widened read may reach the next
		 * MS_IO_ALIGN boundary after EOF, no further (this also refuses
		 * wrapping offsets and -1, which io_uring reads as "the file
		 * position"). */
		if (ms_pad_overflow_u64(io->file_size[e->file], MS_IO_ALIGN, &limit) ||
		    ms_add_overflow_u64(e->offset, e->len, &end) || end > limit)
			return -EINVAL;
		if (io->mode.direct &&
		    ((e->offset | e->len | (uintptr_t)d) & (MS_IO_ALIGN - 1)))
			return -EINVAL;
		/* chunks: <= request_size, never across a registered iovec */
		uint64_t at = (uint64_t)(d - io->mem), left = e->len;
		while (left) {
			uint64_t room = REG_BUF_MAX - at % REG_BUF_MAX;
			uint64_t take = left < rs ? left : rs;
			if (take > room)
				take = room;
			at += take;
			left -= take;
			n_chunks++;
		}
	}
	if (n_chunks > (1u << 24))
		return -E2BIG;
	struct req *r = calloc(1, sizeof(*r) + n_chunks * sizeof(struct chunk));
	if (!r)
		return -ENOMEM;
	r->cls = cls;
	r->done = done;
	r->ctx = ctx;
	r->n_chunks = r->n_pending = (unsigned)n_chunks;
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++) {
		const struct ms_io_extent *e = &ext[i];
		uint64_t at = (uint64_t)((uint8_t *)e->dst - io->mem), left = e->len;
		uint64_t off = e->offset;
		while (left) {
			uint64_t room = REG_BUF_MAX - at % REG_BUF_MAX;
			uint64_t take = left < rs ? left : rs;
			if (take > room)
				take = room;
			struct chunk *c = &r->chunks[k++];
			c->req = r;
			c->file = e->file;
			c->off = off;
			c->len = take;
			c->dst = io->mem + at;
			c->buf_index = (uint16_t)(at / REG_BUF_MAX);
			c->ring = -1;
			c->stage = -1;
			at += take;
			off += take;
			left -= take;
		}
	}
	pthread_mutex_lock(&io->mu);
	if (io->stopping) {
		pthread_mutex_unlock(&io->mu);
		free(r);
		return -ESHUTDOWN;
	}
	r->id = io->next_id++;
	struct req **slot = do_slot(io, r->id);
	*slot = r;
	for (unsigned i = 0; i < r->n_chunks; i++) {
		io->st.queued_bytes[cls] += r->chunks[i].len;
		do_push(&io->q[cls], &r->chunks[i], false);
	}
	io->st.submitted[cls]++;
	if (id)
		*id = r->id;
	pthread_mutex_unlock(&io->mu);
	wake_all(io);
	return 0;
}

int ms_io_cancel(struct ms_io *io, uint64_t id)
{
	pthread_mutex_lock(&io->mu);
	struct req *r = *do_slot(io, id);
	if (!r || r->cls != MS_IO_PREFETCH || r->cancelled) {
		pthread_mutex_unlock(&io->mu);
		return -ENOENT;
	}
	r->cancelled = true;
	do_unqueue(io, r);
	bool wake = false;
	for (unsigned i = 0; i < r->n_chunks; i++) {
		struct chunk *c = &r->chunks[i];
		if (!c->inflight || c->ring < 0)
			continue;
		struct cancel_ask *a = malloc(sizeof(*a));
		if (!a)
			continue; /* it will finish on its own */
		struct ring *rg = &io->rings[c->ring];
		a->c = c;
		a->next = rg->cancels;
		rg->cancels = a;
		wake = true;
	}
	struct req *finished = NULL;
	if (!r->n_pending) {
		*do_slot(io, r->id) = r->hnext;
		io->st.cancelled++;
		io->st.completed[r->cls]++;
		finished = r;
	}
	pthread_mutex_unlock(&io->mu);
	if (wake)
		wake_all(io);
	if (finished) {
		finished->done(finished->ctx, finished->id, -ECANCELED);
		free(finished);
	}
	return 0;
}

int ms_io_promote(struct ms_io *io, uint64_t id)
{
	pthread_mutex_lock(&io->mu);
	struct req *r = *do_slot(io, id);
	if (!r || r->cls != MS_IO_PREFETCH || r->cancelled) {
		pthread_mutex_unlock(&io->mu);
		return -ENOENT;
	}
	/* Move its queued chunks to the demand queue, in order. */
	struct fifo *f = &io->q[MS_IO_PREFETCH];
	struct chunk *prev = NULL, *c = f->head;
	while (c) {
		struct chunk *next = c->next;
		if (c->req == r) {
			if (prev)
				prev->next = next;
			else
				f->head = next;
			if (f->tail == c)
				f->tail = prev;
			io->st.queued_bytes[MS_IO_PREFETCH] -= c->len;
			io->st.queued_bytes[MS_IO_DEMAND] += c->len;
			do_push(&io->q[MS_IO_DEMAND], c, false);
		} else {
			prev = c;
		}
		c = next;
	}
	for (unsigned i = 0; i < r->n_chunks; i++)
		if (r->chunks[i].inflight) {
			io->st.inflight_bytes[MS_IO_PREFETCH] -= r->chunks[i].len;
			io->st.inflight_bytes[MS_IO_DEMAND] += r->chunks[i].len;
		}
	r->cls = MS_IO_DEMAND;
	io->st.submitted[MS_IO_PREFETCH]--;
	io->st.submitted[MS_IO_DEMAND]++;
	pthread_mutex_unlock(&io->mu);
	wake_all(io);
	return 0;
}

void ms_io_get_mode(const struct ms_io *io, struct ms_io_mode *mode)
{
	*mode = io->mode;
}

void ms_io_get_stats(struct ms_io *io, struct ms_io_stats *st)
{
	pthread_mutex_lock(&io->mu);
	*st = io->st;
	if (io->busy_since)
		st->busy_ns += mono_ns() - io->busy_since;
	pthread_mutex_unlock(&io->mu);
}

uint32_t ms_io_block_size(const struct ms_io *io, uint32_t file)
{
	return file < io->n_files ? io->block_size[file] : 0;
}
