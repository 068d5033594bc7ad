/*
 * t_io_integrity - every byte the I/O engine reads is the file's byte, in
 * every configuration it has.
 *
 * Three files are offset-stamped (iotest.h): every 8 bytes hold their own
 * offset (and the file's index in the top bits, so that a read from the
 * wrong file is wrong bytes); two of their sizes are deliberately not a
 * multiple of 4096, so that reads widened past EOF must come back
 * zero-filled. For each combination of the configuration's bits (liburing's
 * test/read-write.c habit: a matrix from flags, not copied tests)
 *
 *   engine io_uring / preadv, threads 1 / 3, queue depth 1 / 8 / 64,
 *   O_DIRECT (auto) / buffered, fixed buffers on / off, fixed files on / off,
 *   SQPOLL on / off, request size 4K / 64K / 1M
 *
 * (SQPOLL and the fixed bits only with io_uring: 324 combinations), the test
 * submits a few hundred random extents at once, grouped 1 to 3 per request,
 * demand and prefetch mixed: lengths from 1 byte to 6 MB, offsets anywhere,
 * widened with ms_io_widen (always under O_DIRECT, half of them in buffered
 * mode where the other half go raw to unaligned destinations), edge cases
 * every time (1 byte, request_size +-1, offset 0, the last byte of each
 * file, extents ending at EOF). Destinations never overlap and are
 * separated by poisoned guard bytes. Every callback must come exactly once,
 * with 0, within a hard timeout (60 s); then every byte of every destination is compared with the stamp
 * (useful range and widened bytes; zeros past EOF), the guards must still
 * hold the poison, and the engine's counters must add up (submitted =
 * completed per class, nothing queued or in flight, bytes_read = the
 * widened bytes that lie inside the file). The mode the engine reports is
 * checked against what was asked: a fallback must say why.
 *
 * Then the 1 GiB mark of an arena registered as fixed buffers (the kernel's
 * cap per registered iovec): extents landing across it, on it, next to it.
 *
 * A table prints one line per combination: its request and extent counts,
 * MB verified, chunks read, the time from the first submit to the last
 * callback (io_ms) and of init + free (set_ms), and its wrong bytes; any
 * wrong byte fails. MS_IO_ONLY=N runs combination N alone, MS_IO_ONLY=mark
 * the 1 GiB mark alone; MS_SEED replays (the extents; thread timing is the
 * machine's). MS_IOT_SABOTAGE=1 flips one destination byte before verifying,
 * MS_IOT_SABOTAGE=2 one guard byte: either must make the test fail.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "iotest.h"
#include "testutil.h"

/* Three files, each stamped with its index as tag (a read from the wrong
 * file is wrong bytes): the big one, a small one, and one that ends on a
 * 4096 boundary (nothing to zero-fill). */
#define N_FILES 3
static const uint64_t file_size[N_FILES] = {
	(192ull << 20) + 3001, (24ull << 20) + 5, 8ull << 20,
};
#define MEM_SIZE (96ull << 20)
#define MAX_EXT 4096
#define MAX_LEN (6ull << 20)

enum {
	F_THREADS3 = 1 << 0,
	F_BUFFERED = 1 << 1,
	F_FIXBUF = 1 << 2,
	F_FIXFILE = 1 << 3,
	F_SQPOLL = 1 << 4,
	F_PREADV = 1 << 5,
	F_ALL = 1 << 6,
};

static const unsigned depths[] = { 1, 8, 64 };
static const uint32_t req_sizes[] = { 4096, 64 << 10, 1 << 20 };

struct ext {
	uint32_t file;
	uint64_t off, len;           /* the useful range */
	uint64_t aoff, alen, skip;   /* what was read (alen = len, skip = 0 raw) */
	uint64_t dst;                /* offset of the read's start in mem */
};

struct req {
	unsigned first, n;
	enum ms_io_class cls;
};

static struct ext exts[MAX_EXT];
static struct req reqs[MAX_EXT];
static unsigned n_ext, n_req;
static uint64_t rng;

static uint64_t rnd(uint64_t n)
{
	return n ? t_rand(&rng) % n : 0;
}

/* log-uniform in [lo, hi] */
static uint64_t rnd_log(uint64_t lo, uint64_t hi)
{
	double u = (double)(t_rand(&rng) >> 11) / 9007199254740992.0;
	double v = (double)lo * exp(u * log((double)hi / (double)lo));
	uint64_t r = (uint64_t)v;
	return r < lo ? lo : r > hi ? hi : r;
}

/* Places the extent [off, off+len) after *cursor in mem; false when mem is
 * full. Under O_DIRECT (or when `widen`) it is widened and lands 4096-aligned;
 * raw, it lands at an arbitrary byte. A guard of poison follows each. */
static bool place(uint32_t file, uint64_t off, uint64_t len, bool widen,
		  uint64_t *cursor)
{
	if (n_ext == MAX_EXT)
		return false;
	struct ext *e = &exts[n_ext];
	e->file = file;
	e->off = off;
	e->len = len;
	uint64_t dst;
	if (widen) {
		ms_io_widen(off, len, &e->aoff, &e->alen, &e->skip);
		dst = (*cursor + MS_IO_ALIGN - 1) & ~(uint64_t)(MS_IO_ALIGN - 1);
	} else {
		e->aoff = off;
		e->alen = len;
		e->skip = 0;
		dst = *cursor + rnd(MS_IO_ALIGN);
	}
	if (dst + e->alen + 1 > MEM_SIZE)
		return false;
	e->dst = dst;
	*cursor = dst + e->alen + 1 + rnd(3 * MS_IO_ALIGN);
	n_ext++;
	return true;
}

/* Mostly small and medium, a few of several MB: a few hundred extents per
 * combination within its byte budget. */
static uint64_t rnd_len(void)
{
	uint64_t r = rnd(100);
	if (r < 15)
		return 1 + rnd(64);
	if (r < 65)
		return rnd_log(64, 64 << 10);
	if (r < 97)
		return rnd_log(64 << 10, 768 << 10);
	return rnd_log(1 << 20, MAX_LEN);
}

/* The extents of one combination: edge cases first, then random ones until
 * the byte budget or the memory runs out; then grouped into requests. */
static void gen(bool direct, uint32_t rs, uint64_t budget)
{
	uint64_t cursor = 0, bytes = 0;
	n_ext = n_req = 0;
	const uint64_t fs = file_size[0], f1 = file_size[1], f2 = file_size[2];
	struct { uint32_t file; uint64_t off, len; } edge[] = {
		{ 0, 1 + rnd(fs - 2), 1 },                    /* one byte */
		{ 0, 0, 1 + rnd(100000) },                    /* offset 0 */
		{ 0, fs - 1, 1 },                             /* the last byte */
		{ 0, fs - 4096, 4096 },                       /* ends at EOF */
		{ 0, fs - 3001, 3001 },                       /* the partial block */
		{ 0, fs - 5000, 1000 },                       /* near EOF */
		{ 0, fs - (2ull << 20) - 17, (2ull << 20) + 17 }, /* MBs to EOF */
		{ 0, rnd(fs - rs), rs },                      /* one request */
		{ 0, rnd(fs - rs), rs - 1 },
		{ 0, rnd(fs - rs - 1), rs + 1 },
		{ 0, rnd(fs / 4096 - 64) * 4096, 64 * 4096 }, /* aligned */
		{ 1, f1 - 1, 1 },
		{ 1, f1 - 70000, 70000 },
		{ 1, rnd(f1 - 100), 99 },
		{ 2, f2 - 4096, 4096 },                       /* aligned EOF */
		{ 2, f2 - 65536 - 11, 65536 + 11 },
		{ 2, 0, 1 },
	};
	for (unsigned i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
		bool widen = direct || rnd(2);
		if (place(edge[i].file, edge[i].off, edge[i].len, widen, &cursor))
			bytes += exts[n_ext - 1].alen;
	}
	while (bytes < budget) {
		uint64_t f = rnd(10), len = rnd_len();
		uint32_t file = f < 7 ? 0 : f < 9 ? 1 : 2;
		uint64_t size = file_size[file];
		if (len > size)
			len = size;
		uint64_t off = rnd(size - len + 1);
		if (rnd(4) == 0) { /* already aligned: nothing to widen */
			off &= ~(uint64_t)(MS_IO_ALIGN - 1);
			len = (len + MS_IO_ALIGN - 1) & ~(uint64_t)(MS_IO_ALIGN - 1);
			if (off + len > size)
				len = size - off;
		}
		bool widen = direct || rnd(2);
		if (!place(file, off, len, widen, &cursor))
			break;
		bytes += exts[n_ext - 1].alen;
	}
	/* Requests of 1 to 3 consecutive extents, about a third demand. */
	for (unsigned i = 0; i < n_ext;) {
		unsigned k = 1 + (unsigned)rnd(3);
		if (k > n_ext - i)
			k = n_ext - i;
		reqs[n_req].first = i;
		reqs[n_req].n = k;
		reqs[n_req].cls = rnd(3) == 0 ? MS_IO_DEMAND : MS_IO_PREFETCH;
		n_req++;
		i += k;
	}
}

struct row {
	unsigned flags, depth;
	uint32_t rs;
	bool skipped;
	unsigned reqs, exts;
	uint64_t bytes, chunks, wrong, guard;
	double ms, setup_ms;  /* first submit to last callback; init + free */
	char mode[24];
};

static struct row rows[F_ALL * 9];

static bool bad_combo(unsigned f)
{
	return (f & F_PREADV) && (f & (F_FIXBUF | F_FIXFILE | F_SQPOLL));
}

static void mode_str(const struct ms_io_mode *m, char *out, size_t n)
{
	snprintf(out, n, "%s%s%s%s%s", iot_engine_name(m->engine),
		 m->direct ? ",D" : ",b", m->fixed_buffers ? ",FB" : "",
		 m->fixed_files ? ",FF" : "", m->sqpoll ? ",SQ" : "");
}

static void check_mode(const struct ms_io_config *cfg,
		       const struct ms_io_mode *m, const char *tag)
{
	bool uring = cfg->engine == MS_IO_ENGINE_URING;
	T_CHECK(m->engine == cfg->engine, "%s: mode.engine %d, asked %d", tag,
		m->engine, cfg->engine);
	if (cfg->direct == MS_IO_DIRECT_OFF)
		T_CHECK(!m->direct, "%s: O_DIRECT in use though off", tag);
	else if (!m->direct)
		T_CHECK(strstr(m->why, "O_DIRECT"), "%s: no O_DIRECT and "
			"mode.why does not say so: '%s'", tag, m->why);
	if (!uring) {
		T_CHECK(!m->sqpoll && !m->fixed_buffers && !m->fixed_files,
			"%s: preadv reports io_uring features", tag);
		return;
	}
	if (m->sqpoll != cfg->sqpoll)
		T_CHECK(cfg->sqpoll && strstr(m->why, "SQPOLL"),
			"%s: sqpoll %d asked %d, why '%s'", tag, m->sqpoll,
			cfg->sqpoll, m->why);
	if (m->fixed_buffers != cfg->fixed_buffers)
		T_CHECK(cfg->fixed_buffers && strstr(m->why, "fixed buffers"),
			"%s: fixed_buffers %d asked %d, why '%s'", tag,
			m->fixed_buffers, cfg->fixed_buffers, m->why);
	if (m->fixed_files != cfg->fixed_files)
		T_CHECK(cfg->fixed_files && strstr(m->why, "fixed files"),
			"%s: fixed_files %d asked %d, why '%s'", tag,
			m->fixed_files, cfg->fixed_files, m->why);
}

static void run_one(struct row *row, const char *const *paths, uint8_t *mem,
		    uint64_t seed, unsigned idx)
{
	unsigned f = row->flags;
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = f & F_PREADV ? MS_IO_ENGINE_PREADV : MS_IO_ENGINE_URING;
	cfg.direct = f & F_BUFFERED ? MS_IO_DIRECT_OFF : MS_IO_DIRECT_AUTO;
	cfg.threads = f & F_THREADS3 ? 3 : 1;
	cfg.queue_depth = row->depth;
	cfg.request_size = row->rs;
	cfg.sqpoll = f & F_SQPOLL;
	cfg.fixed_buffers = f & F_FIXBUF;
	cfg.fixed_files = f & F_FIXFILE;

	char tag[96];
	snprintf(tag, sizeof(tag), "#%u %s thr %u qd %u rs %u %s%s%s%s", idx,
		 iot_engine_name(cfg.engine), cfg.threads, cfg.queue_depth,
		 cfg.request_size, f & F_BUFFERED ? "buffered" : "direct",
		 f & F_FIXBUF ? " fixbuf" : "", f & F_FIXFILE ? " fixfile" : "",
		 f & F_SQPOLL ? " sqpoll" : "");
	iot_watchdog(120, tag);
	double t0 = iot_now();

	struct ms_io *io;
	struct ms_err err = { 0 };
	int rc = ms_io_init(&io, &cfg, paths, N_FILES, mem, MEM_SIZE, &err);
	if (rc && cfg.engine == MS_IO_ENGINE_URING &&
	    (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)) {
		printf("%s: io_uring unavailable (%s): skipped\n", tag, err.msg);
		row->skipped = true;
		return;
	}
	if (rc) {
		T_CHECK(0, "%s: ms_io_init: %d %s", tag, rc, err.msg);
		row->skipped = true;
		return;
	}
	double t_init = iot_now() - t0;
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	check_mode(&cfg, &mode, tag);
	mode_str(&mode, row->mode, sizeof(row->mode));

	/* Budget: ~1000 reads at 4K under O_DIRECT at depth 1 (a device read
	 * each), 4096 buffered; else 24 MB direct, 32 MB buffered (the page
	 * cache makes those cheap). */
	uint64_t budget = mode.direct ? 24ull << 20 : 32ull << 20;
	if (cfg.request_size == 4096)
		budget = !mode.direct ? 16ull << 20
			 : cfg.queue_depth == 1 ? 4ull << 20 : 8ull << 20;
	rng = seed ^ (0x9e3779b97f4a7c15ull * (idx + 1));
	gen(mode.direct, cfg.request_size, budget);

	uint8_t poison = (uint8_t)(0xA5 ^ idx);
	/* the last extent's guard: up to a page after it */
	uint64_t used = exts[n_ext - 1].dst + exts[n_ext - 1].alen + MS_IO_ALIGN;
	if (used > MEM_SIZE)
		used = MEM_SIZE;
	memset(mem, poison, used);

	struct iot_track *tr = iot_track_new(n_req);
	uint64_t want_bytes = 0, min_chunks = 0, n_cls[2] = { 0, 0 };
	for (unsigned i = 0; i < n_ext; i++) {
		const struct ext *e = &exts[i];
		uint64_t size = file_size[e->file];
		uint64_t in = e->aoff >= size ? 0 : size - e->aoff;
		want_bytes += in < e->alen ? in : e->alen;
		min_chunks += (e->alen + cfg.request_size - 1) / cfg.request_size;
	}
	double t_sub = iot_now();
	for (unsigned r = 0; r < n_req; r++) {
		struct ms_io_extent x[3];
		for (unsigned k = 0; k < reqs[r].n; k++) {
			const struct ext *e = &exts[reqs[r].first + k];
			x[k].file = e->file;
			x[k].offset = e->aoff;
			x[k].len = e->alen;
			x[k].dst = mem + e->dst;
		}
		uint64_t id = 0;
		rc = ms_io_submit(io, x, reqs[r].n, reqs[r].cls, iot_track_cb,
				  &tr->slot[r], &id);
		if (rc) {
			T_CHECK(0, "%s: submit request %u: %d", tag, r, rc);
			/* count it as done so the wait below does not hang */
			iot_track_cb(&tr->slot[r], 0, rc);
		} else {
			n_cls[reqs[r].cls]++;
		}
	}
	if (!iot_track_wait(tr, n_req, 60)) {
		for (unsigned r = 0; r < n_req; r++)
			if (!tr->slot[r].calls)
				fprintf(stderr, "%s: request %u (%s, %u extents) "
					"never completed\n", tag, r,
					reqs[r].cls ? "prefetch" : "demand",
					reqs[r].n);
		t_fatal("%s: %u of %u requests hung", tag, n_req - tr->done,
			n_req);
	}
	row->ms = (iot_now() - t_sub) * 1e3;
	struct ms_io_stats st;
	ms_io_get_stats(io, &st);
	double t_free = iot_now();
	ms_io_free(io);
	row->setup_ms = (t_init + iot_now() - t_free) * 1e3;

	for (unsigned r = 0; r < n_req; r++) {
		T_CHECK(tr->slot[r].calls == 1, "%s: request %u: %u callbacks",
			tag, r, tr->slot[r].calls);
		T_CHECK(tr->slot[r].result == 0, "%s: request %u: result %d",
			tag, r, tr->slot[r].result);
	}
	for (int c = 0; c < MS_IO_N_CLASSES; c++) {
		T_EQ_U64(st.submitted[c], n_cls[c]);
		T_EQ_U64(st.completed[c], n_cls[c]);
		T_EQ_U64(st.queued_bytes[c], 0);
		T_EQ_U64(st.inflight_bytes[c], 0);
	}
	T_EQ_U64(st.failed, 0);
	T_EQ_U64(st.cancelled, 0);
	T_CHECK(st.bytes_read == want_bytes, "%s: bytes_read %llu, the extents "
		"hold %llu bytes of the file", tag,
		(unsigned long long)st.bytes_read,
		(unsigned long long)want_bytes);
	T_CHECK(st.chunks >= min_chunks, "%s: %llu chunks < %llu needed", tag,
		(unsigned long long)st.chunks, (unsigned long long)min_chunks);

	int sab = iot_sabotage();
	if (sab == 1 && idx == 0) {
		const struct ext *e = &exts[n_ext / 2];
		mem[e->dst + e->skip + e->len / 2] ^= 0x40;
	}
	if (sab == 2 && idx == 0)
		mem[exts[0].dst + exts[0].alen] ^= 0x01;

	/* Every byte of every destination, then every guard. */
	uint64_t prev_end = 0;
	for (unsigned i = 0; i <= n_ext; i++) {
		uint64_t first, bad;
		if (i == n_ext) { /* after the last one */
			bad = iot_verify_poison(mem + prev_end, used - prev_end,
						poison, &first);
			T_CHECK(!bad, "%s: %llu guard bytes written after the last "
				"extent, first at mem+%llu", tag,
				(unsigned long long)bad,
				(unsigned long long)(prev_end + first));
			row->guard += bad;
			break;
		}
		const struct ext *e = &exts[i];
		bad = iot_verify(mem + e->dst, e->aoff, e->alen,
				 file_size[e->file], (uint16_t)e->file, &first);
		if (bad) {
			uint64_t o = e->aoff + first;
			T_CHECK(0, "%s: extent %u, file %u [%llu +%llu) read as "
				"[%llu +%llu) at mem+%llu: %llu wrong bytes, first at "
				"file offset %llu (%s range): 0x%02x, expected 0x%02x",
				tag, i, e->file,
				(unsigned long long)e->off, (unsigned long long)e->len,
				(unsigned long long)e->aoff, (unsigned long long)e->alen,
				(unsigned long long)e->dst, (unsigned long long)bad,
				(unsigned long long)o,
				first >= e->skip && first < e->skip + e->len
					? "useful" : "widened",
				mem[e->dst + first],
				iot_tbyte(o, file_size[e->file], (uint16_t)e->file));
			row->wrong += bad;
		}
		bad = iot_verify_poison(mem + prev_end, e->dst - prev_end, poison,
					&first);
		if (bad) {
			T_CHECK(0, "%s: %llu guard bytes written before extent %u, "
				"first at mem+%llu", tag, (unsigned long long)bad, i,
				(unsigned long long)(prev_end + first));
			row->guard += bad;
		}
		prev_end = e->dst + e->alen;
	}
	row->reqs = n_req;
	row->exts = n_ext;
	row->bytes = want_bytes;
	row->chunks = st.chunks;
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- the registered-buffer boundary ------------------------------------------------
 *
 * The kernel caps a registered buffer at 1 GiB, so the engine registers a
 * bigger arena as several iovecs and must cut chunks at each 1 GiB mark (a
 * READ_FIXED may not cross from one iovec into the next). Only an arena
 * over 1 GiB shows it: 1 GiB + 16 MiB of address space, of which only the
 * 16 MiB around the mark are touched here (registration pins the rest). */

#define BIG_MEM ((1ull << 30) + (16ull << 20))
#define MARK (1ull << 30)

static void run_boundary(const char *const *paths, uint64_t seed, bool direct)
{
	char tag[64];
	snprintf(tag, sizeof(tag), "1 GiB mark, fixed buffers, %s",
		 direct ? "direct" : "buffered");
	iot_watchdog(120, tag);
	uint8_t *big = mmap(NULL, BIG_MEM, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (big == MAP_FAILED) {
		printf("%s: cannot map %llu bytes (%s): skipped\n", tag,
		       (unsigned long long)BIG_MEM, strerror(errno));
		return;
	}
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = MS_IO_ENGINE_URING;
	cfg.direct = direct ? MS_IO_DIRECT_AUTO : MS_IO_DIRECT_OFF;
	cfg.threads = 1;
	cfg.queue_depth = 8;
	cfg.request_size = 1 << 20;
	cfg.fixed_buffers = true;
	struct ms_io *io;
	struct ms_err err = { 0 };
	double t0 = iot_now();
	int rc = ms_io_init(&io, &cfg, paths, N_FILES, big, BIG_MEM, &err);
	if (rc) {
		T_CHECK(rc == -ENOSYS || rc == -EPERM || rc == -EACCES,
			"%s: ms_io_init: %d %s", tag, rc, err.msg);
		printf("%s: io_uring unavailable: skipped\n", tag);
		munmap(big, BIG_MEM);
		return;
	}
	struct ms_io_mode mode;
	ms_io_get_mode(io, &mode);
	check_mode(&cfg, &mode, tag);
	const uint64_t win = MARK - (8ull << 20), win_len = 16ull << 20;
	const uint8_t poison = 0x6B;
	memset(big + win, poison, win_len);
	/* (dst relative to the mark, file offset, length) */
	rng = seed ^ 0xb16;
	struct { int64_t at; uint64_t off, len; bool raw; } c[] = {
		{ -4096, 0, 8192, false },                   /* a page each side */
		{ -65536, 4096 * 7, 65536, false },          /* ends on the mark */
		{ 0, 4096 * 9, 4096, false },                /* starts on it */
		{ -(1 << 20) + 12288, 1 << 20, 2 << 20, false }, /* chunks straddle */
		{ -12288, 12345 * 4096ull, (3 << 20) + 4096, false },
		{ 2 << 20, (file_size[0] & ~4095ull) - 4096, 8192, false }, /* EOF */
		{ -(4 << 20), 77 * 4096, 4096, false },      /* before it */
		{ -1000, 4096 + 5, 5000, true },             /* raw, unaligned */
		{ -(2 << 20) - 3, 333333, (3 << 20) + 7, true },
	};
	const unsigned n = sizeof(c) / sizeof(c[0]);
	struct iot_track *tr = iot_track_new(n);
	unsigned sent = 0;
	for (unsigned i = 0; i < n; i++) {
		if (c[i].raw && mode.direct)
			continue;
		struct ms_io_extent x = { 0, c[i].off, c[i].len,
					  big + MARK + c[i].at };
		uint64_t id;
		rc = ms_io_submit(io, &x, 1, i & 1 ? MS_IO_PREFETCH : MS_IO_DEMAND,
				  iot_track_cb, &tr->slot[i], &id);
		T_CHECK(rc == 0, "%s: case %u: submit %d", tag, i, rc);
		if (rc)
			continue;
		sent++;
		/* one at a time: the destinations overlap between cases */
		if (!iot_track_wait(tr, sent, 60))
			t_fatal("%s: case %u hung", tag, i);
		T_CHECK(tr->slot[i].result == 0, "%s: case %u [%llu +%llu) at "
			"mark%+lld: result %d (%s)", tag, i,
			(unsigned long long)c[i].off, (unsigned long long)c[i].len,
			(long long)c[i].at, tr->slot[i].result,
			strerror(-tr->slot[i].result));
		uint64_t first, bad = iot_verify(x.dst, c[i].off, c[i].len,
						 file_size[0], 0, &first);
		T_CHECK(!bad, "%s: case %u [%llu +%llu) at mark%+lld: %llu wrong "
			"bytes, first at mark%+lld", tag, i,
			(unsigned long long)c[i].off, (unsigned long long)c[i].len,
			(long long)c[i].at, (unsigned long long)bad,
			(long long)(c[i].at + (int64_t)first));
		uint64_t at = MARK + (uint64_t)c[i].at;  /* dst - big */
		uint64_t gb = iot_verify_poison(big + win, at - win, poison, &first);
		gb += iot_verify_poison(big + at + c[i].len,
					win + win_len - (at + c[i].len), poison,
					&first);
		T_CHECK(!gb, "%s: case %u: %llu bytes written outside it", tag, i,
			(unsigned long long)gb);
		memset(big + win, poison, win_len);
	}
	struct ms_io_stats st;
	ms_io_get_stats(io, &st);
	ms_io_free(io);
	printf("%s (%s%s%s): %u extents across the mark, %llu chunks, %.0f ms "
	       "with registration\n", tag, mode.fixed_buffers ? "registered" :
	       "NOT registered", *mode.why ? ": " : "", mode.why, sent,
	       (unsigned long long)st.chunks, (iot_now() - t0) * 1e3);
	iot_track_free(tr);
	munmap(big, BIG_MEM);
	iot_watchdog(0, NULL);
}

int main(void)
{
	uint64_t seed = t_seed();
	const char *only = getenv("MS_IO_ONLY");
	const char *paths[N_FILES];
	double t0 = iot_now();
	for (unsigned i = 0; i < N_FILES; i++)
		paths[i] = iot_stamped(i, file_size[i]);
	printf("stamped files: %llu, %llu, %llu bytes in %.2f s\n",
	       (unsigned long long)file_size[0], (unsigned long long)file_size[1],
	       (unsigned long long)file_size[2], iot_now() - t0);
	uint8_t *mem = iot_mem_alloc(MEM_SIZE, 0);

	unsigned n_rows = 0;
	for (unsigned f = 0; f < F_ALL; f++) {
		if (bad_combo(f))
			continue;
		for (unsigned d = 0; d < 3; d++)
			for (unsigned s = 0; s < 3; s++) {
				struct row *r = &rows[n_rows++];
				r->flags = f;
				r->depth = depths[d];
				r->rs = req_sizes[s];
			}
	}
	printf("%4s %-6s %3s %3s %5s %-4s %-4s %-4s %-4s %-17s %5s %5s %6s %6s "
	       "%6s %6s %6s\n", "#", "engine", "thr", "qd", "rs", "dio", "fbuf",
	       "ffil", "sqp", "mode", "reqs", "exts", "MB", "chunks", "io_ms",
	       "set_ms", "wrong");
	uint64_t tot_wrong = 0, tot_bytes = 0;
	unsigned ran = 0, skipped = 0;
	for (unsigned i = 0; i < n_rows; i++) {
		if (only && *only && (strcmp(only, "mark") == 0 ||
				      (unsigned)atoi(only) != i))
			continue;
		struct row *r = &rows[i];
		run_one(r, paths, mem, seed, i);
		unsigned f = r->flags;
		if (r->skipped) {
			skipped++;
			continue;
		}
		ran++;
		tot_wrong += r->wrong + r->guard;
		tot_bytes += r->bytes;
		printf("%4u %-6s %3u %3u %4uK %-4s %-4s %-4s %-4s %-17s %5u %5u "
		       "%6.1f %6llu %6.0f %6.0f %6llu%s\n", i,
		       f & F_PREADV ? "preadv" : "uring", f & F_THREADS3 ? 3 : 1,
		       r->depth, r->rs >> 10, f & F_BUFFERED ? "off" : "auto",
		       f & F_FIXBUF ? "on" : "-", f & F_FIXFILE ? "on" : "-",
		       f & F_SQPOLL ? "on" : "-", r->mode, r->reqs, r->exts,
		       (double)r->bytes / 1048576.0, (unsigned long long)r->chunks,
		       r->ms, r->setup_ms, (unsigned long long)(r->wrong + r->guard),
		       r->guard ? " (guard)" : "");
		fflush(stdout);
	}
	printf("%u combinations run, %u skipped; %.1f MB verified; %llu wrong "
	       "bytes; %.1f s in all\n", ran, skipped, (double)tot_bytes / 1048576.0,
	       (unsigned long long)tot_wrong, iot_now() - t0);
	bool just_mark = only && !strcmp(only, "mark");
	T_CHECK(ran > 0 || just_mark, "no combination ran");
	if (!only || !*only || just_mark) {
		run_boundary(paths, seed, true);
		run_boundary(paths, seed, false);
	}
	iot_mem_free(mem, MEM_SIZE);
	return t_done();
}
