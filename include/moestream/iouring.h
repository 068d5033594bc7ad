/*
 * iouring.h - the I/O engine's contract: reads of file extents into memory,
 * demand before prefetch, with io_uring (O_DIRECT, fixed files, fixed
 * buffers, optional SQPOLL) or a preadv thread pool behind the same calls.
 *
 * The engine knows nothing of models or caches: it reads (file, offset,
 * length) into a destination and calls back once per request. Knows no
 * sockets, allocates nothing per byte read.
 *
 * Alignment: with O_DIRECT every read must start and end on the device's
 * logical block (MS_IO_ALIGN is used, a multiple of it) and land in memory
 * aligned the same way. ms_io_widen() computes the widened range; the caller
 * reserves room for it and remembers where its data starts (`skip`).
 *
 * Staging (cfg.staging): O_DIRECT reads into memory on 4 KiB pages cost the
 * device more segments per read and run slower (a shmem arena where shmem
 * THP is off, as distributions ship it). With staging on, reads land in a
 * small ring of buffers the engine owns - anonymous memory, 2 MiB-aligned,
 * MADV_HUGEPAGE (anonymous THP is on by default), registered in place of
 * `mem` - and the I/O thread copies each completed read to its destination
 * before the chunk counts as done. A read waits for a free buffer, so the
 * buffers bound the reads in flight (all threads together). The copy's CPU
 * time is counted (ms_io_stats.copy_ns).
 *
 * Threads: `threads` I/O threads, one ring (or one preadv worker group) each,
 * pull chunks of at most `request_size` bytes from one shared queue, demand
 * first, keeping up to `queue_depth` reads in flight each. Completion
 * callbacks run on an I/O thread: keep them short and never call back into
 * the engine's submit from them with a lock the engine might need (submit is
 * safe; it only takes the queue lock).
 */
#ifndef MOESTREAM_IOURING_H
#define MOESTREAM_IOURING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MS_IO_ALIGN 4096u       /* widening unit: >= any logical block */
#define MS_IO_MAX_FILES 1024
#define MS_IO_MAX_THREADS 64
#define MS_IO_MAX_DEPTH 4096
#define MS_IO_MAX_STAGING (1ull << 30) /* one registered iovec */

enum ms_io_engine {
	MS_IO_ENGINE_AUTO = 0,   /* io_uring, else preadv (said once) */
	MS_IO_ENGINE_URING = 1,
	MS_IO_ENGINE_PREADV = 2,
};

enum ms_io_direct {
	MS_IO_DIRECT_AUTO = 0,   /* O_DIRECT, else buffered (said once) */
	MS_IO_DIRECT_ON = 1,     /* O_DIRECT or fail */
	MS_IO_DIRECT_OFF = 2,
};

enum ms_io_class {
	MS_IO_DEMAND = 0,        /* a reader waits: goes first */
	MS_IO_PREFETCH = 1,      /* a guess: after demand, cancellable */
	MS_IO_N_CLASSES = 2,
};

/* Test-only fault injection: each completed chunk is, with probability
 * rate/1e6 each, made a short read, -EAGAIN, -EINTR, -EIO. Deterministic
 * for a seed (per thread). All zero: off. */
struct ms_io_faults {
	uint32_t short_ppm, eagain_ppm, eintr_ppm, eio_ppm;
	uint64_t seed;
};

struct ms_io_config {
	enum ms_io_engine engine;
	enum ms_io_direct direct;
	unsigned threads;        /* 1..MS_IO_MAX_THREADS */
	unsigned queue_depth;    /* reads in flight per thread, 1..MAX_DEPTH */
	uint32_t request_size;   /* bytes per read, a multiple of MS_IO_ALIGN */
	uint64_t prefetch_inflight; /* an MS_IO_PREFETCH read starts only while
				       fewer bytes than this are in flight
				       (both classes, all threads; with none
				       in flight, one always may); 0 = no cap.
				       Demand reads are never capped. */
	bool sqpoll;             /* io_uring: a kernel thread polls the SQ */
	bool fixed_buffers;      /* io_uring: register `mem` (READ_FIXED) */
	bool fixed_files;        /* io_uring: register the files */
	uint64_t staging;        /* bytes of staging buffers (see the top), a
				    multiple of MS_IO_ALIGN up to
				    MS_IO_MAX_STAGING; 0 = off: reads land in
				    `mem` itself. Each buffer holds one read:
				    min(request_size, staging) bytes. Used only
				    with O_DIRECT (buffered reads are a copy
				    from the page cache already: dropped and
				    said in mode.why) */
	bool staging_lock;       /* mlock the staging buffers (as the cache
				    locks its arena) */
	struct ms_io_faults faults;
};

/* Defaults: auto engine, auto direct, 1 thread, depth 32, 1 MiB requests,
 * no SQPOLL, fixed buffers and files on, no staging. */
void ms_io_config_default(struct ms_io_config *cfg);

/* What the engine ended up using (after fallbacks). */
struct ms_io_mode {
	enum ms_io_engine engine;  /* URING or PREADV */
	bool direct;               /* O_DIRECT in use */
	bool sqpoll, fixed_buffers, fixed_files;
	uint64_t staging;          /* staging bytes in use, 0 = reads land in
				      mem directly */
	uint64_t staging_huge;     /* of them on 2 MiB pages (smaps) */
	uint32_t staging_buf;      /* bytes per staging buffer */
	uint32_t staging_bufs;     /* how many */
	char why[256];             /* "" or the fallbacks taken, one line */
};

struct ms_io_stats {
	uint64_t submitted[MS_IO_N_CLASSES];   /* requests */
	uint64_t completed[MS_IO_N_CLASSES];
	uint64_t failed, cancelled;
	uint64_t bytes_read;                   /* widened bytes */
	uint64_t chunks, short_reads, retries; /* retries: -EAGAIN/-EINTR */
	uint64_t queued_bytes[MS_IO_N_CLASSES];/* waiting, not yet in flight */
	uint64_t inflight_bytes[MS_IO_N_CLASSES];
	uint64_t busy_ns;                      /* time with a read in flight
						  (any class, any thread): the
						  device's working time, so
						  bytes_read / busy_ns is the
						  rate while reading */
	uint64_t bytes_copied;                 /* staging -> destination */
	uint64_t copy_ns;                      /* CPU time of those copies
						  (the copying threads' own
						  clocks) */
};

/* One piece of a request: read file[file] bytes [offset, offset + len) into
 * dst. With O_DIRECT, offset, len and dst must be MS_IO_ALIGN-aligned
 * (-EINVAL otherwise); use ms_io_widen. */
struct ms_io_extent {
	uint32_t file;
	uint64_t offset;
	uint64_t len;
	void *dst;
};

/* Called once per request when every byte arrived (result 0) or the request
 * failed (the first error, negative errno) or was cancelled (-ECANCELED). */
typedef void (*ms_io_done_fn)(void *ctx, uint64_t id, int result);

struct ms_io;

/* Opens `paths` (O_DIRECT as configured) and starts the threads. `mem` and
 * `mem_len` name the memory reads land in (the arena); it is registered as
 * fixed buffers when configured (the staging buffers are, instead, when
 * staging is on), and every dst must lie inside it. The fallbacks taken are
 * logged once and reported by ms_io_get_mode. */
int ms_io_init(struct ms_io **out, const struct ms_io_config *cfg,
	       const char *const *paths, unsigned n_paths, void *mem,
	       size_t mem_len, struct ms_err *err);

/* Stops accepting work, cancels queued prefetches, waits for what is in
 * flight, joins the threads, closes the files. NULL is fine. */
void ms_io_free(struct ms_io *io);

/* Queues a request of `n` extents at class `cls`; `done` is called exactly
 * once (possibly before this returns, from another thread). *id identifies
 * it for ms_io_cancel. 0, or -EINVAL (a bad extent: outside the memory,
 * misaligned under O_DIRECT, past the end of the file), -E2BIG (over 2^24
 * chunks), -ENOMEM, -ESHUTDOWN (the engine is stopping). */
int ms_io_submit(struct ms_io *io, const struct ms_io_extent *ext, unsigned n,
		 enum ms_io_class cls, ms_io_done_fn done, void *ctx,
		 uint64_t *id);

/* Cancels a prefetch request, queued or in flight: 0 if it was found (its
 * callback will report -ECANCELED, or its real result if it finished
 * first), -ENOENT if it already completed or is not a prefetch. */
int ms_io_cancel(struct ms_io *io, uint64_t id);

/* Raises a queued prefetch to demand (a reader now waits for it). */
int ms_io_promote(struct ms_io *io, uint64_t id);

void ms_io_get_mode(const struct ms_io *io, struct ms_io_mode *mode);
void ms_io_get_stats(struct ms_io *io, struct ms_io_stats *st);

/* The logical block size of the device holding file `file` (512 or 4096
 * usually); reads are widened to MS_IO_ALIGN, a multiple of it. */
uint32_t ms_io_block_size(const struct ms_io *io, uint32_t file);

/* [offset, offset+len) widened to MS_IO_ALIGN: *aoff, *alen, and *skip =
 * offset - *aoff (where the data starts in the widened buffer). */
static inline void ms_io_widen(uint64_t offset, uint64_t len, uint64_t *aoff,
			       uint64_t *alen, uint64_t *skip)
{
	uint64_t a = offset & ~(uint64_t)(MS_IO_ALIGN - 1);
	uint64_t e = (offset + len + MS_IO_ALIGN - 1) & ~(uint64_t)(MS_IO_ALIGN - 1);
	*aoff = a;
	*alen = e - a;
	*skip = offset - a;
}

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_IOURING_H */
