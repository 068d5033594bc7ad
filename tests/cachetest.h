/*
 * cachetest.h - what the cache tests share (t_cache, t_cache_stress,
 * t_arena): a test model and an in-memory copy of its bytes (the truth the
 * arena is compared with), the slot size the cache should give a layer, a
 * byte-exact verifier of an expert's location, a tracker for one
 * asynchronous acquire's callback, a watchdog, stderr capture (to check that
 * something was logged) and a descriptor count (to catch leaks).
 *
 * Every name here starts with ct_ (CT_ for macros): this file is linked into
 * every test.
 */
#ifndef MS_CACHETEST_H
#define MS_CACHETEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/cache.h"
#include "testutil.h"

/* ---- models -------------------------------------------------------------------- */

/* Runs `$MS_BUILD/moestream mkmodel ARGS -o PATH --force`; fatal on failure. */
void ct_mkmodel(const char *args, const char *path);

/* A model and the bytes of each of its shard files, read whole (test models
 * are a few MB). */
struct ct_model {
	struct ms_model *m;
	uint32_t n_shards;
	uint8_t **bytes;
	uint64_t *size;
};

/* Opens `path` with ms_model_open and reads its shards; fatal on failure. */
void ct_model_open(struct ct_model *cm, const char *path);
void ct_model_close(struct ct_model *cm);

/* Overwrites [from, end of file) of `path` with bytes that depend on their
 * offset and `seed` (so that a byte in the wrong place reads as wrong);
 * fatal on failure. For files built with gguf_raw, whose data is one fill
 * byte. */
void ct_scramble(const char *path, uint64_t from, uint64_t seed);

/* What cache.c promises a slot of `layer` to be: the largest over its
 * experts of the projections, each widened to MS_IO_ALIGN, back to back. */
uint64_t ct_slot_bytes(const struct ms_model *m, uint32_t layer);

/* Compares the arena bytes at `loc` with the file bytes of (layer, expert):
 * returns the number of wrong bytes, UINT64_MAX when the location itself is
 * wrong (projection count, a length, a range outside the arena); `why` (may
 * be NULL) gets one line about the first problem. */
uint64_t ct_verify(const struct ct_model *cm, const struct ms_arena *a,
		   uint32_t layer, uint32_t expert,
		   const struct ms_expert_loc *loc, char *why, size_t why_len);

/* Loads every expert of the model through `c` (acquire_wait, in a
 * shuffled order from `seed`, each released once checked) and compares each
 * with the file; a failed acquire or a wrong byte is a test failure naming
 * `what`. The cache must hold at least one layer's experts. Returns the
 * experts that were wrong or failed. */
uint64_t ct_load_all(struct ms_cache *c, const struct ct_model *cm, uint64_t seed,
		     const char *what);

/* The slot bytes of every expert of the model: a cache of this size (plus
 * some rounding) holds them all. */
uint64_t ct_model_slots_bytes(const struct ms_model *m);

/* Writes the tiny preset into the test's folder and opens it; returns a
 * cache size that holds every expert of it with the default staging taken
 * out, in whole 2 MiB pages. */
uint64_t ct_tiny_model(struct ct_model *cm);

/* A read path end to end: makes a cache of *cfg over the model, prints its
 * read path, checks that it is `want` and that arena + staging bytes are
 * the size asked (the arena rounded up to its page at most), loads every
 * expert byte-exact (ct_load_all), checks that copies were counted where
 * reads are staged and none otherwise, and the cache's invariants; frees
 * it. *ri (may be NULL) gets the read info; the arena's huge-page bytes
 * are in it. */
void ct_read_path_run(const struct ct_model *cm, const struct ms_cache_config *cfg,
		      enum ms_read_path want, const char *what, struct ms_read_info *ri);

/* The number after `key:` in a /proc file such as /proc/meminfo, 0 when
 * absent. */
uint64_t ct_meminfo_kb(const char *file, const char *key);

/* Cache defaults for tests: `size` bytes, not locked, hugepages auto, no
 * NUMA binding, 1 I/O thread, the given acquire timeout, no prefetch cap
 * to speak of (max_prefetch_bytes = size), no staging (the arena is
 * `size`). */
void ct_config(struct ms_cache_config *cfg, uint64_t size, uint32_t timeout_ms);

/* ms_cache_check() as a test check: a failure prints its message with
 * `what` and the caller's line. */
#define CT_CACHE_OK(c, what)                                                   \
	do {                                                                   \
		struct ms_err _e = { 0 };                                      \
		if (ms_cache_check((c), &_e))                                  \
			t_fail_at(__FILE__, __LINE__, "ms_cache_check (%s): %s", \
				  (what), _e.msg);                             \
	} while (0)

/* ---- one asynchronous acquire ----------------------------------------------------- */

struct ct_answer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned calls;        /* callbacks seen: exactly 1 is right */
	int result;
	bool has_loc;
	struct ms_expert_loc loc;
	uint32_t layer, expert; /* as the callback reported them */
	double t_done;          /* ct_now() at the first callback */
	/* When set, the callback releases a successful pin itself (callbacks
	 * may call back into the cache). */
	struct ms_cache *release_in_cb;
};

void ct_answer_init(struct ct_answer *w);
void ct_answer_destroy(struct ct_answer *w);
/* The ms_cache_cb; ctx = the struct ct_answer. */
void ct_answer_cb(void *ctx, uint32_t layer, uint32_t expert, int result,
		  const struct ms_expert_loc *loc);
/* Waits for the first callback up to `timeout_s`: true when it came. */
bool ct_answer_wait(struct ct_answer *w, double timeout_s);
unsigned ct_answer_calls(struct ct_answer *w);

/* ---- odds and ends ------------------------------------------------------------------ */

/* Seconds on CLOCK_MONOTONIC. */
double ct_now(void);
void ct_sleep_ms(unsigned ms);

/* Polls (layer, expert) until it is not LOADING (or `timeout_s` passes);
 * returns the last state seen. */
enum ms_entry_state ct_wait_settled(struct ms_cache *c, uint32_t layer,
				    uint32_t expert, double timeout_s);

/* Polls the stats until no entry is LOADING (or `timeout_s`): true if so. */
bool ct_wait_quiet(struct ms_cache *c, double timeout_s);

/* ct_watchdog(s, what): when `s` seconds pass before the next call,
 * "hung: <what>" is printed and the process exits 1 (through _exit after
 * flushing: a hung cache cannot be freed). ct_watchdog(0, NULL) disarms. */
void ct_watchdog(double seconds, const char *what);

/* Captures what is written to stderr (fd 2) between begin and end into a
 * malloc'ed NUL-terminated string (the caller frees it). Not nestable. */
void ct_stderr_begin(void);
char *ct_stderr_end(void);

/* Open descriptors of this process. */
int ct_fd_count(void);

/* Environment switch MS_CT_SABOTAGE (0 when unset): each test flips one
 * expectation when it matches, to prove that it can fail. */
int ct_sabotage(void);

#endif /* MS_CACHETEST_H */
