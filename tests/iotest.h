/*
 * iotest.h - what the I/O engine tests share (t_io_integrity, t_io_faults,
 * t_io_sched): an offset-stamped file whose every byte is known, memory for
 * reads to land in, a byte-exact verifier, a completion tracker that counts
 * callbacks per request, and a watchdog that turns a hung load into a
 * failure instead of a runner timeout.
 *
 * The stamp: the 8 bytes at file offset 8k hold the 64-bit little-endian
 * value 8k, so the byte at offset o is byte (o & 7) of (o & ~7). Any byte
 * read from anywhere can be checked without a second copy of the file, and
 * a byte that landed at the wrong place (an off-by-one chunk, a resubmitted
 * short read at the wrong offset) reads as wrong. Tests with several files
 * give each a `tag` (0..65535) that goes into the top 16 bits of every word
 * (tag 0: the plain offset), so that a read from the wrong file is wrong too.
 *
 * Every name here starts with iot_: this file is linked into every test.
 */
#ifndef MS_IOTEST_H
#define MS_IOTEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/iouring.h"

/* The 8-byte word at file offset `o` (a multiple of 8). */
static inline uint64_t iot_word(uint64_t o, uint16_t tag)
{
	return o | (uint64_t)tag << 48;
}

/* The stamped byte at file offset `o` of a file of `size` bytes; 0 past EOF
 * (what the engine zero-fills a widened read with). */
static inline uint8_t iot_tbyte(uint64_t o, uint64_t size, uint16_t tag)
{
	if (o >= size)
		return 0;
	return (uint8_t)(iot_word(o & ~(uint64_t)7, tag) >> (8 * (o & 7)));
}

static inline uint8_t iot_byte(uint64_t o, uint64_t size)
{
	return iot_tbyte(o, size, 0);
}

/* Writes a stamped file of `size` bytes (fsync'ed, so that O_DIRECT reads
 * see it on the device). 0 or -errno. */
int iot_make_stamped(const char *path, uint64_t size, uint16_t tag);

/* Page-aligned anonymous memory (mmap), filled with `poison`; fatal when it
 * cannot be had. */
void *iot_mem_alloc(size_t len, uint8_t poison);
void iot_mem_free(void *p, size_t len);

/* Compares buf[0, len) with the bytes [off, off + len) of a stamped file of
 * `size` bytes and `tag` (zeros past EOF). Returns the number of wrong bytes
 * and, when there is one, the index of the first in *first (else
 * UINT64_MAX). */
uint64_t iot_verify(const uint8_t *buf, uint64_t off, uint64_t len,
		    uint64_t size, uint16_t tag, uint64_t *first);

/* Bytes of buf[0, len) that are not `poison` (guards between destinations
 * must stay untouched); *first as above. */
uint64_t iot_verify_poison(const uint8_t *buf, uint64_t len, uint8_t poison,
			   uint64_t *first);

/* ---- completion tracker -------------------------------------------------------
 *
 * One slot per request the test submits: the slot's address is the callback's
 * ctx, so a callback that runs before ms_io_submit returns (allowed) still
 * finds its request. Each callback bumps calls, records result and a global
 * completion sequence number, and pushes the slot index on a FIFO the test
 * can pop (the first callback only: a second one is counted in `doubles`). */
struct iot_slot {
	struct iot_track *t;
	unsigned idx;
	unsigned calls;       /* callbacks seen: must end at exactly 1 */
	int result;
	uint64_t id;          /* the engine's id, as the callback saw it */
	uint64_t seq;         /* 1-based completion order */
};

struct iot_track {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned n;
	struct iot_slot *slot;
	unsigned *fifo;       /* completed slot indexes, in order */
	unsigned head, tail;  /* fifo[head..tail) not yet popped */
	unsigned done;        /* first callbacks */
	unsigned doubles;     /* callbacks after the first */
	uint64_t seq;
};

struct iot_track *iot_track_new(unsigned n);
void iot_track_free(struct iot_track *t);

/* Re-arms slot `idx` for a new request (calls = 0). The caller makes sure no
 * callback for the slot's previous request can still come. */
void iot_track_reset(struct iot_track *t, unsigned idx);

/* The engine callback; ctx = &t->slot[idx]. */
void iot_track_cb(void *ctx, uint64_t id, int result);

/* Waits until `count` first callbacks have been seen in all, or `timeout_s`
 * passes: true when they have. */
bool iot_track_wait(struct iot_track *t, unsigned count, double timeout_s);

/* Pops the next completed slot index, waiting up to `timeout_s`; -1 on
 * timeout. */
int iot_track_pop(struct iot_track *t, double timeout_s);

/* ---- watchdog --------------------------------------------------------------------
 *
 * iot_watchdog(s, what) arms a deadline `s` seconds from now; when it passes,
 * "hung: <what>" is printed and the process exits 1 (through exit(), so the
 * temporary folder is still removed). iot_watchdog(0, NULL) disarms. A hung
 * ms_io_free can then not hang the test past the runner's timeout. */
void iot_watchdog(double seconds, const char *what);

/* Seconds on CLOCK_MONOTONIC. */
double iot_now(void);

/* MS_IOT_SABOTAGE from the environment (0 when unset): each test uses it to
 * prove that it can fail (see each test's header). */
int iot_sabotage(void);

/* Short names for the report tables. */
const char *iot_engine_name(enum ms_io_engine e);

/* The engine's defaults with these set. */
struct ms_io_config iot_config(enum ms_io_engine engine, enum ms_io_direct direct,
			       unsigned threads, unsigned depth, uint32_t request_size);

/* Writes the stamped file number `i` (tag i) of `size` bytes into the
 * test's folder and returns its path (static storage, one per i < 8);
 * fatal on failure. */
const char *iot_stamped(unsigned i, uint64_t size);

#endif /* MS_IOTEST_H */
