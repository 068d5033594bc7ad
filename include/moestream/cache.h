/*
 * cache.h - the cache room's contract: the arena (one shareable, NUMA-local,
 * locked mapping of cache.size bytes), slots for experts, and the expert
 * cache (EMPTY -> LOADING -> READY | FAILED, pins, LRU, budget).
 *
 * The budget is strict: expert bytes held never exceed the arena; a pinned
 * or loading entry is never evicted. Knows no sockets: the daemon drives it
 * through callbacks.
 *
 * Threads: every call may come from any thread. Callbacks (ms_cache_cb) run
 * on an I/O thread or inside the calling thread, never with a cache lock
 * held; they may call ms_cache_* again.
 */
#ifndef MOESTREAM_CACHE_H
#define MOESTREAM_CACHE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <strings.h>

#include "iouring.h"
#include "model.h"
#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the arena ------------------------------------------------------------ */

enum ms_huge {
	MS_HUGE_AUTO = 0,  /* hugetlbfs pages if reserved, else THP (advised) */
	MS_HUGE_ON = 1,    /* hugetlbfs pages or fail */
	MS_HUGE_OFF = 2,
};

#define MS_NUMA_AUTO (-1)        /* the GPU's node if one is named, else ours */
#define MS_NUMA_INTERLEAVE (-2)
#define MS_NUMA_NONE (-3)        /* no binding */

struct ms_arena_config {
	uint64_t size;           /* bytes; rounded up to the page size */
	enum ms_huge huge;
	int numa_node;           /* >= 0, or MS_NUMA_* */
	const char *gpu_pci;     /* "0000:65:00.0" for auto placement, or NULL */
	bool lock;               /* mlock: required unless false (tests) */
	bool private_anon;       /* anonymous memory, private to this process
				    (an engine's embedded cache): no memfd to
				    share, and THP comes from anonymous
				    memory's setting (on, "madvise", as
				    distributions ship) rather than
				    shmem's (off by default) */
};

struct ms_arena {
	uint8_t *base;           /* read-write mapping, shared */
	uint64_t size;
	int memfd;               /* the memfd behind it (clients map it RO) */
	uint64_t page_size;      /* 4 KiB, or the huge page size */
	bool hugetlb, thp, locked;
	int numa_node;           /* node bound to, or MS_NUMA_* */
	bool anon;               /* private anonymous memory (memfd = -1) */
	uint64_t huge_bytes;     /* of it backed by huge pages, as measured
				    (/proc/self/smaps) once every page is in */
	char mode[256];          /* one line: how it was made and why */
};

int ms_arena_init(struct ms_arena *a, const struct ms_arena_config *cfg,
		  struct ms_err *err);
void ms_arena_free(struct ms_arena *a);

/* Whether an arena made from *cfg now is likely to get huge pages: 2 MiB
 * hugetlbfs pages free for it, THP on for the kind of memory it will be
 * (shmem_enabled for the shared memfd, enabled for private_anon), or, for
 * the memfd, a kernel that collapses shared memory into huge pages
 * (MADV_COLLAPSE, tried on 2 MiB). A guess made before the arena exists
 * (memory may be too fragmented for all of it); ms_arena_huge says what
 * it got. */
bool ms_arena_huge_expected(const struct ms_arena_config *cfg);

/* Whether the arena got huge pages: hugetlbfs, or at least half of it on
 * transparent huge pages as measured. */
bool ms_arena_huge(const struct ms_arena *a);

/* A new read-only descriptor of the arena for a client (O_RDONLY reopen of
 * the memfd: the client cannot write the cache), or -errno. */
int ms_arena_ro_fd(const struct ms_arena *a);

/* This machine's memory as this process sees it: RAM (MemTotal) and what is
 * left (MemAvailable), each capped by this process's memory cgroup: by its
 * limit, and by its limit less its usage. Either pointer may be NULL. */
void ms_host_memory(uint64_t *total, uint64_t *avail);

/* ---- the expert cache --------------------------------------------------------- */

/* [io] staging: how reads reach an arena on 4 KiB pages (iouring.h,
 * "Staging"). The staging buffers come out of the cache's memory: the arena
 * is arena.size less the staging bytes, so that arena + staging still fit
 * cache.size. */
#define MS_STAGING_AUTO UINT64_MAX         /* on where the arena got no huge
					      pages (and reads are O_DIRECT) */
#define MS_STAGING_DEFAULT (8ull << 20)    /* auto's size, at most a quarter
					      of the cache */

/* "auto", "off" (any case), or a size (K/M/G suffixes) that is a multiple of
 * MS_IO_ALIGN from MS_IO_ALIGN up to MS_IO_MAX_STAGING: 0 and *out
 * (MS_STAGING_AUTO, 0 for off, or bytes), or -EINVAL. */
static inline int ms_cache_parse_staging(const char *s, uint64_t *out)
{
	uint64_t v;
	if (!strcasecmp(s, "auto") || !strcasecmp(s, "off")) {
		*out = !strcasecmp(s, "auto") ? MS_STAGING_AUTO : 0;
		return 0;
	}
	if (ms_parse_size(s, &v) || v < MS_IO_ALIGN || v > MS_IO_MAX_STAGING ||
	    v % MS_IO_ALIGN)
		return -EINVAL;
	*out = v;
	return 0;
}

enum ms_entry_state {
	MS_ENTRY_EMPTY = 0,
	MS_ENTRY_LOADING = 1,
	MS_ENTRY_READY = 2,
	MS_ENTRY_FAILED = 3,
};

struct ms_cache_config {
	struct ms_arena_config arena;
	struct ms_io_config io;
	uint32_t acquire_timeout_ms; /* wait for a slot when all are pinned */
	uint64_t max_prefetch_bytes; /* in flight at prefetch class; 0 = 1/8
					of the arena */
	const char *pin;             /* "L:E,L:E" (block:expert), or NULL */
	uint32_t pin_top;            /* keep the N most used pinned, 0 = off */
	uint64_t staging;            /* MS_STAGING_AUTO (the default), 0 =
					off, or bytes (at most half of
					arena.size); io.staging is set from
					it */
};

void ms_cache_config_default(struct ms_cache_config *cfg);

/* Where an expert's bytes are: one range per projection, inside the arena
 * (offsets from arena base), in the layer's projection order. */
struct ms_expert_loc {
	uint32_t n_proj;
	uint64_t off[MS_MOE_MAX_PROJ];
	uint64_t len[MS_MOE_MAX_PROJ];
};

/* result: 0 (READY, *loc valid) or a negative errno (-EIO and the like from
 * the load, -EBUSY when no slot came free in time, -ECANCELED). */
typedef void (*ms_cache_cb)(void *ctx, uint32_t layer, uint32_t expert,
			    int result, const struct ms_expert_loc *loc);

struct ms_cache_stats {
	uint64_t hits, misses, evictions, bytes_read;
	uint64_t loads, load_failures, busy;       /* busy: -EBUSY answers */
	uint64_t prefetch_issued, prefetch_used, prefetch_wasted_bytes;
	uint64_t prefetch_cancelled;
	uint64_t pinned_entries, loading_entries, ready_entries;
	uint64_t held_bytes;        /* slot bytes of LOADING + READY entries */
	uint64_t budget_bytes;      /* the arena */
	uint64_t waste_bytes;       /* arena bytes no expert can use: padding
				       in slots, region tails */
	uint64_t surplus_bytes;     /* arena beyond every expert of the model */
	uint64_t slots, slot_classes;
	uint64_t lat_us_hist[24];   /* load latency: bucket i = [2^i, 2^(i+1)) us */
	uint64_t io_busy_ns;        /* the engine's time with a read in flight */
	uint64_t bytes_copied;      /* staging -> arena */
	uint64_t copy_ns;           /* CPU time of those copies */
};

/* How reads reach the arena, as built (the daemon logs `line` at start and
 * STATS carries it all). */
enum ms_read_path {
	MS_READ_DIRECT = 0,   /* O_DIRECT straight into the arena */
	MS_READ_STAGING = 1,  /* O_DIRECT into staging buffers, then a copy */
	MS_READ_BUFFERED = 2, /* through the page cache */
};

struct ms_read_info {
	enum ms_read_path path;
	uint64_t arena_bytes, arena_huge_bytes;     /* huge: as measured */
	uint64_t staging_bytes, staging_huge_bytes;
	uint32_t staging_buf, staging_bufs;         /* bytes each, how many */
	char line[400];       /* "O_DIRECT into 8 MiB of staging buffers ..." */
};

/* "direct", "staging", "buffered". */
const char *ms_read_path_name(enum ms_read_path p);

struct ms_cache;

/* Makes the arena (arena.size less the staging bytes, when staging is on),
 * opens the model's shards through the engine, carves slots (one class per
 * distinct slot size, each class a region in proportion to the bytes of
 * the experts it holds), applies cache.pin. Staging auto is decided by what
 * the arena got (ms_arena_huge): where the guess made before it existed
 * (ms_arena_huge_expected) was wrong, the arena is made once more at the
 * other size. */
int ms_cache_init(struct ms_cache **out, const struct ms_model *m,
		  const struct ms_cache_config *cfg, struct ms_err *err);
void ms_cache_free(struct ms_cache *c);

const struct ms_arena *ms_cache_arena(const struct ms_cache *c);
void ms_cache_get_stats(struct ms_cache *c, struct ms_cache_stats *st);
void ms_cache_get_io_mode(const struct ms_cache *c, struct ms_io_mode *mode);
void ms_cache_get_read_info(const struct ms_cache *c, struct ms_read_info *ri);

/* Pins (layer index, expert) and makes it READY. If it is READY now: returns
 * 0 and fills *loc (cb not called). Otherwise returns -EINPROGRESS and calls
 * cb exactly once later (from another thread, or from this one before
 * returning when the answer is immediate, e.g. a failure). When cb reports
 * failure the pin is already dropped. On 0 or a successful cb the caller
 * owns one pin: call ms_cache_release once. */
int ms_cache_acquire(struct ms_cache *c, uint32_t layer, uint32_t expert,
		     ms_cache_cb cb, void *ctx, struct ms_expert_loc *loc);

/* The hit path alone: 0 and *loc when (layer, expert) is READY (pinned as
 * by ms_cache_acquire), -EAGAIN otherwise (nothing changed: call
 * ms_cache_acquire). Spares a caller the callback context on hits. */
int ms_cache_try_acquire(struct ms_cache *c, uint32_t layer, uint32_t expert,
			 struct ms_expert_loc *loc);

/* The same, blocking: 0 (pinned, *loc valid), the load's error, -EBUSY when
 * no slot came free within the configured acquire_timeout, or -ETIMEDOUT
 * after timeout_ms (0 = no limit of its own); a pin that arrives after
 * -ETIMEDOUT is dropped by the cache. */
int ms_cache_acquire_wait(struct ms_cache *c, uint32_t layer, uint32_t expert,
			  uint32_t timeout_ms, struct ms_expert_loc *loc);

/* Drops one pin. */
void ms_cache_release(struct ms_cache *c, uint32_t layer, uint32_t expert);

/* A hint: load (layer, expert) at prefetch priority if it is absent and a
 * slot is free or evictable without touching pinned or loading entries;
 * never waits. 0 (issued or already there) or -EBUSY / -E2BIG (over the
 * in-flight prefetch cap). */
int ms_cache_prefetch(struct ms_cache *c, uint32_t layer, uint32_t expert);

/* Cancels prefetches still loading that are stale: their layer was acquired
 * since they started (the reader came and went), or their layer is before
 * `layer` (0: only the first rule). Returns how many were cancelled. */
unsigned ms_cache_cancel_stale(struct ms_cache *c, uint32_t layer);

/* The options that may change while running (SIGHUP): the slot-wait
 * timeout, the in-flight prefetch cap (0 = 1/8 of the arena) and pin_top. */
void ms_cache_set_tunables(struct ms_cache *c, uint32_t acquire_timeout_ms,
			   uint64_t max_prefetch_bytes, uint32_t pin_top);

/* Fails slot waiters whose deadline passed with -EBUSY; the daemon calls it
 * from its timer (blocking acquires handle their own deadline). */
void ms_cache_tick(struct ms_cache *c);

/* State of one entry (for tests and stats). */
enum ms_entry_state ms_cache_state(struct ms_cache *c, uint32_t layer,
				   uint32_t expert, uint32_t *pins);

/* Checks every invariant (budget, pins, lists, counters) under the lock:
 * 0, or -EFAULT with a message. For tests. */
int ms_cache_check(struct ms_cache *c, struct ms_err *err);

/* ---- the history prefetch policy (cache/prefetch.c) ---------------------------- */

struct ms_prefetcher;

/* A transition table for n_layers x n_expert, older observations weighing
 * `decay` (0 < decay <= 1) less per observation of their layer. */
int ms_prefetcher_init(struct ms_prefetcher **out, uint32_t n_layers,
		       uint32_t n_expert, float decay, struct ms_err *err);
void ms_prefetcher_free(struct ms_prefetcher *p);

/* After experts `prev` at layer index layer-1, `cur` were chosen at layer. */
void ms_prefetcher_observe(struct ms_prefetcher *p, uint32_t layer,
			   const uint16_t *prev, unsigned n_prev,
			   const uint16_t *cur, unsigned n_cur);

/* The likeliest experts of layer+1 given `cur` at layer (weighted by
 * cur_score, NULL = 1 each): up to `width`, best first, each with a score in
 * [0, 1] >= min_prob. Returns how many. Thread-safe. */
unsigned ms_prefetcher_predict(struct ms_prefetcher *p, uint32_t layer,
			       const uint16_t *cur, const float *cur_score,
			       unsigned n_cur, unsigned width, float min_prob,
			       uint16_t *out, float *out_score);

uint64_t ms_prefetcher_observed(const struct ms_prefetcher *p);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_CACHE_H */
