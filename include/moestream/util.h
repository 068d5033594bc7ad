/*
 * util.h - small helpers every room may use: error messages that travel with
 * a negative errno, overflow-checked arithmetic, a logger, and the few
 * memory calls that the arena (cache/) and the I/O engine's staging buffers
 * (iouring/) share.
 *
 * Header-only on purpose where it can be: the rooms at the bottom of the
 * dependency graph (model/, iouring/) may use nothing else, and these are a
 * few lines each. The logger (model/log.c) and the memory calls
 * (model/mem.c) live in model/, which every program links.
 */
#ifndef MOESTREAM_UTIL_H
#define MOESTREAM_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Error convention (see STYLE.md): functions return 0 or a negative errno and,
 * when the caller passes a struct ms_err, leave one human line in it that names
 * the field and the offending value. `err` may be NULL everywhere.
 */
#define MS_ERR_MSG_MAX 512

struct ms_err {
	int code;                  /* the negative errno last returned */
	char msg[MS_ERR_MSG_MAX];  /* "" when no message was left */
};

#if defined(__GNUC__)
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS_PRINTF(a, b)
#endif

/* Records `code` and a message in `err` (if any) and returns `code`, so a
 * failure is one line: `return ms_err_set(err, -EINVAL, "...", ...);` */
static inline MS_PRINTF(3, 4) int ms_err_set(struct ms_err *err, int code,
					     const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

static inline void ms_err_clear(struct ms_err *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
}

/* Prefixes the existing message with more context ("shard 2: ..."). */
static inline MS_PRINTF(2, 3) void ms_err_prefix(struct ms_err *err,
						 const char *fmt, ...)
{
	if (!err)
		return;
	char pre[MS_ERR_MSG_MAX], old[MS_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	snprintf(old, sizeof(old), "%s", err->msg);
	snprintf(err->msg, sizeof(err->msg), "%s: %s", pre, old);
}

/* Overflow-checked arithmetic: true when the result does not fit. */
static inline bool ms_add_overflow_u64(uint64_t a, uint64_t b, uint64_t *r)
{
	return __builtin_add_overflow(a, b, r);
}

static inline bool ms_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *r)
{
	return __builtin_mul_overflow(a, b, r);
}

static inline bool ms_mul_overflow_i64(int64_t a, int64_t b, int64_t *r)
{
	return __builtin_mul_overflow(a, b, r);
}

/* Rounds `v` up to a multiple of `align` (a power of two); true on overflow.
 * This is the GGML_PAD of the 2024 padding-wrap CVEs, done safely. */
static inline bool ms_pad_overflow_u64(uint64_t v, uint64_t align, uint64_t *r)
{
	uint64_t t;
	if (align == 0 || (align & (align - 1)))
		return true;
	if (__builtin_add_overflow(v, align - 1, &t))
		return true;
	*r = t & ~(align - 1);
	return false;
}

static inline bool ms_is_pow2_u64(uint64_t v)
{
	return v && !(v & (v - 1));
}

/* Parses a size: a number of bytes with an optional K, M, G or T suffix
 * (powers of 1024; "KiB"/"KB"/"k" spellings accepted, fractions like "1.5G"
 * too). 0 and *out, -EINVAL for anything else, -ERANGE when it overflows. */
static inline int ms_parse_size(const char *s, uint64_t *out)
{
	uint64_t whole = 0, frac = 0, frac_div = 1;
	const char *p = s;
	if (!p || *p < '0' || *p > '9')
		return -22; /* EINVAL, without pulling errno.h into every user */
	for (; *p >= '0' && *p <= '9'; p++) {
		if (whole > (UINT64_MAX - 9) / 10)
			return -34; /* ERANGE */
		whole = whole * 10 + (uint64_t)(*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++)
			if (frac_div < 1000000ull) {
				frac = frac * 10 + (uint64_t)(*p - '0');
				frac_div *= 10;
			}
	}
	unsigned shift = 0;
	switch (*p) {
	case 'k': case 'K': shift = 10; p++; break;
	case 'm': case 'M': shift = 20; p++; break;
	case 'g': case 'G': shift = 30; p++; break;
	case 't': case 'T': shift = 40; p++; break;
	default: break;
	}
	if (shift && *p == 'i')
		p++;
	if (*p == 'B' || (*p == 'b' && !shift))
		p++;
	if (*p)
		return -22;
	if (frac && !shift)
		return -22; /* a fraction of a byte */
	uint64_t v;
	if (__builtin_mul_overflow(whole, 1ull << shift, &v) ||
	    __builtin_add_overflow(v, (frac << shift) / frac_div, &v))
		return -34;
	*out = v;
	return 0;
}

/* Logging. Levels follow syslog so that, under systemd, lines can carry the
 * "<N>" priority prefix. ms_log returns before formatting anything when the
 * level is above the threshold (Redis's serverLog habit). */
enum ms_log_level {
	MS_LOG_ERR = 3,
	MS_LOG_WARNING = 4,
	MS_LOG_NOTICE = 5,
	MS_LOG_INFO = 6,
	MS_LOG_DEBUG = 7,
};

extern int ms_log_threshold;  /* default MS_LOG_NOTICE; defined in model/log.c */
extern bool ms_log_syslog_prefix;  /* prefix "<N>" (set under systemd) */
extern const char *ms_log_prog;    /* "moestream" unless a program says */

void ms_log_write(int level, const char *func, const char *fmt, ...)
	MS_PRINTF(3, 4);

#define ms_log(level, ...)                                                     \
	do {                                                                   \
		if ((level) <= ms_log_threshold)                               \
			ms_log_write((level), __func__, __VA_ARGS__);          \
	} while (0)

/* ---- memory (model/mem.c) -------------------------------------------------- */

#define MS_HUGE_2M (2ull << 20)

/* mlock(2) through the system call itself, 0 or -errno. Sanitizer runtimes
 * (ASan, TSan) replace mlock() with a no-op that returns 0; memory the
 * program promises to hold resident and locked must be locked in those
 * builds too (the tests measure it). */
int ms_mem_lock(void *p, size_t len);

/* `len` bytes of private anonymous memory (MAP_NORESERVE, not yet touched)
 * starting on a multiple of `align` (a power of two, at least the page
 * size), so that every aligned 2 MiB of it can be one huge page. 0 and *out,
 * or -errno. Free with munmap(*out, len). */
int ms_mem_map_anon(size_t len, size_t align, void **out);

/* `len` bytes of `fd` (from offset 0) mapped shared, read-write or
 * read-only, at an address that is a multiple of `align` (a power of two),
 * so that its aligned 2 MiB pieces can be mapped as huge pages: a fault maps
 * a 2 MiB page of shared memory with one entry only where the address and
 * the file offset agree modulo 2 MiB. 0 and *out, or -errno. Free with
 * munmap(*out, len). */
int ms_mem_map_shared(int fd, size_t len, size_t align, bool writable, void **out);

/* Makes the whole 2 MiB pieces of [p, p + len) (p 2 MiB-aligned) huge
 * pages now, with MADV_COLLAPSE (Linux 6.1; shared memory included), which
 * - unlike a fault - ignores the THP settings in sysfs but "deny": one
 * byte of each piece is written first (a piece needs a page to collapse;
 * the rest comes zeroed). 0, or -errno: -EINVAL where the kernel cannot
 * (older, or shmem_enabled = deny), -EAGAIN or -ENOMEM where some pieces
 * got no huge page (the measure says how many did). */
int ms_mem_collapse(void *p, size_t len);

/* Is transparent huge page memory on for regions that ask for it
 * (MADV_HUGEPAGE)? Anonymous memory: "always" or "madvise" in
 * /sys/kernel/mm/transparent_hugepage/enabled (distributions ship
 * "madvise"); shared memory (`shared`): "advise", "always", "within_size"
 * or "force" in .../shmem_enabled (distributions ship "never"). */
bool ms_mem_thp_on(bool shared);

/* Bytes of the mapping that starts at `base` that are backed by huge pages,
 * as /proc/self/smaps says (AnonHugePages + ShmemPmdMapped + FilePmdMapped +
 * Shared_Hugetlb + Private_Hugetlb): what the kernel gave, not what was
 * asked. Only pages already faulted in count. 0 when unreadable. */
uint64_t ms_mem_huge_bytes(const void *base);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_UTIL_H */
