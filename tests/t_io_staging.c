/*
 * t_io_staging - reads through the engine's staging buffers ([io] staging,
 * iouring.h "Staging"): O_DIRECT into a few buffers of the engine's own, a
 * copy to the destination. Every byte that arrives must be the file's, in
 * every shape a read can take.
 *
 *  matrix    two offset-stamped files (iotest.h; sizes off any 4 KiB
 *            boundary, so that reads widened past EOF come back zero-filled)
 *            read into memory on 4 KiB pages (MADV_NOHUGEPAGE: the memory
 *            staging is for), for io_uring and preadv, 1 and 3 threads,
 *            fixed buffers on and off, and four (request size, staging)
 *            pairs: one 4 KiB buffer for 4 KiB reads; a 12 KiB buffer for
 *            64 KiB requests (reads are cut to the buffer); four 64 KiB
 *            buffers; eight 1 MiB buffers (the daemon's default). Extents
 *            from 1 byte to 6 MB (most larger than a buffer: one extent,
 *            many buffers, each reused many times), unaligned in the file
 *            and widened, 1 to 3 per request, demand and prefetch mixed,
 *            with the edges each time (the first byte, the last, to EOF,
 *            across EOF's partial block). Then: every callback once with 0,
 *            every byte of every destination the file's, every guard byte
 *            between them untouched, bytes_copied == bytes_read (each byte
 *            read went through a copy), the copies' CPU time counted, the
 *            chunks at least the reads a buffer's size allows, the mode
 *            saying the buffers asked for, and - sampled all along - never
 *            more bytes in flight than the buffers hold.
 *  faults    one 16 KiB buffer shared by two rings, with 5% short reads, 5%
 *            -EAGAIN, 5% -EINTR: byte-exact; then with 3% -EIO as well:
 *            each request answers 0 (byte-exact) or -EIO exactly once, and
 *            nothing hangs, so no failed read kept its buffer.
 *  cancel    prefetches of hundreds of 4 KiB reads through one buffer,
 *            cancelled while they read: each answers once (-ECANCELED, or 0
 *            if it finished), and demand reads after them complete
 *            byte-exact: the cancelled reads gave their buffer back.
 *  buffered  staging asked with O_DIRECT off: no buffers, mode.why says
 *            why, bytes right, nothing copied.
 *  config    a staging size off 4 KiB or above 1 GiB is refused.
 *  cache     the expert cache with staging forced (64 KiB) loads every
 *            expert of the tiny model byte-exact, says so in its read
 *            info, and counts the copies; with staging auto it stages
 *            exactly when its arena got no huge pages, and arena +
 *            staging = the size asked.
 *
 * MS_IOT_SABOTAGE=1 flips one destination byte of the first combination
 * before verifying; =2 one guard byte: either must fail the test. MS_SEED
 * replays the extents. Parts can be named on the command line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cachetest.h"
#include "iotest.h"

#define N_FILES 2
static const uint64_t fsize[N_FILES] = { (40ull << 20) + 3001, (6ull << 20) + 5 };
#define MEM_LEN (64ull << 20)
#define MAX_X 2048

static const char *paths[N_FILES];
static uint8_t *mem;
static uint64_t seed;

/* One extent placed in mem: the file range asked, the widened read, where
 * the read lands. */
struct xt {
	uint32_t file;
	uint64_t aoff, alen;
	uint64_t at;
};

struct plan {
	struct xt x[MAX_X];
	unsigned n;
	unsigned req_first[MAX_X], req_n[MAX_X];
	enum ms_io_class req_cls[MAX_X];
	unsigned n_req;
	uint64_t end;         /* mem bytes used, guards included */
	uint8_t poison;
};

static struct plan plan;

/* The bytes of the widened read that lie in the file (what bytes_read
 * counts: the rest is zero-filled, not read). */
static uint64_t in_file(const struct xt *x)
{
	uint64_t size = fsize[x->file];
	uint64_t in = x->aoff >= size ? 0 : size - x->aoff;
	return in < x->alen ? in : x->alen;
}

/* Adds [off, off + len) of `file`, widened, after plan.end with a guard of
 * at least one page; false when mem is full. */
static bool add(uint32_t file, uint64_t off, uint64_t len, uint64_t *rng)
{
	struct plan *p = &plan;
	if (p->n == MAX_X)
		return false;
	uint64_t skip, at = (p->end + MS_IO_ALIGN - 1) & ~(uint64_t)(MS_IO_ALIGN - 1);
	struct xt *x = &p->x[p->n];
	ms_io_widen(off, len, &x->aoff, &x->alen, &skip);
	if (at + x->alen + MS_IO_ALIGN > MEM_LEN)
		return false;
	x->file = file;
	x->at = at;
	p->end = at + x->alen + MS_IO_ALIGN * (1 + t_rand(rng) % 3);
	p->n++;
	return true;
}

/* The edges of both files, then random extents (most longer than a
 * staging buffer; none over `max_len`) up to `budget` bytes; then requests
 * of 1 to 3. */
static void make_plan(uint64_t budget, uint64_t max_len, uint64_t *rng)
{
	struct plan *p = &plan;
	p->n = p->n_req = 0;
	p->end = 0;
	for (uint32_t f = 0; f < N_FILES; f++) {
		uint64_t s = fsize[f];
		add(f, 0, 1, rng);                       /* the first byte */
		add(f, s - 1, 1, rng);                   /* the last */
		add(f, s - 9000, 9000, rng);             /* across EOF's block */
		add(f, s - (1ull << 20) - 7, (1ull << 20) + 7, rng); /* to EOF */
	}
	uint64_t bytes = 0;
	for (unsigned i = 0; i < p->n; i++)
		bytes += p->x[i].alen;
	while (bytes < budget) {
		uint32_t f = t_rand(rng) % 4 ? 0 : 1;
		uint64_t r = t_rand(rng) % 100, len;
		if (r < 10)
			len = 1 + t_rand(rng) % 4096;
		else if (r < 80)
			len = 4096 + t_rand(rng) % (1ull << 20);
		else
			len = (1ull << 20) + t_rand(rng) % (5ull << 20);
		if (len > max_len)
			len = 1 + len % max_len;
		if (len > fsize[f])
			len = fsize[f];
		uint64_t off = t_rand(rng) % (fsize[f] - len + 1);
		if (!add(f, off, len, rng))
			break;
		bytes += p->x[p->n - 1].alen;
	}
	for (unsigned i = 0; i < p->n; p->n_req++) {
		unsigned k = 1 + (unsigned)(t_rand(rng) % 3);
		if (k > p->n - i)
			k = p->n - i;
		p->req_first[p->n_req] = i;
		p->req_n[p->n_req] = k;
		p->req_cls[p->n_req] = t_rand(rng) % 2 ? MS_IO_DEMAND : MS_IO_PREFETCH;
		i += k;
	}
	p->poison = (uint8_t)(0x5a ^ t_rand(rng));
	memset(mem, p->poison, p->end);
}

static int submit_req(struct ms_io *io, unsigned r, struct iot_track *tr,
		      uint64_t *id)
{
	struct ms_io_extent e[3];
	for (unsigned k = 0; k < plan.req_n[r]; k++) {
		const struct xt *x = &plan.x[plan.req_first[r] + k];
		e[k] = (struct ms_io_extent){ .file = x->file, .offset = x->aoff,
					      .len = x->alen, .dst = mem + x->at };
	}
	return ms_io_submit(io, e, plan.req_n[r], plan.req_cls[r], iot_track_cb,
			    &tr->slot[r], id);
}

/* Every byte of the extents of the requests that answered 0 (all when
 * `only_ok` is false), and every guard: the wrong bytes. */
static uint64_t verify_plan(const struct iot_track *tr, bool only_ok,
			    const char *tag)
{
	uint64_t wrong = 0, prev = 0, first;
	for (unsigned r = 0; r < plan.n_req; r++) {
		bool ok = !only_ok || tr->slot[r].result == 0;
		for (unsigned k = 0; k < plan.req_n[r]; k++) {
			const struct xt *x = &plan.x[plan.req_first[r] + k];
			uint64_t b = iot_verify_poison(mem + prev, x->at - prev,
						       plan.poison, &first);
			T_CHECK(!b, "%s: %llu guard bytes written before mem+%llu, "
				"first at +%llu", tag, (unsigned long long)b,
				(unsigned long long)x->at, (unsigned long long)first);
			wrong += b;
			prev = x->at + x->alen;
			if (!ok)
				continue;
			b = iot_verify(mem + x->at, x->aoff, x->alen, fsize[x->file],
				       (uint16_t)x->file, &first);
			T_CHECK(!b, "%s: extent file %u [%llu, +%llu) at mem+%llu: "
				"%llu wrong bytes, first at +%llu", tag, x->file,
				(unsigned long long)x->aoff, (unsigned long long)x->alen,
				(unsigned long long)x->at, (unsigned long long)b,
				(unsigned long long)first);
			wrong += b;
		}
	}
	uint64_t b = iot_verify_poison(mem + prev, plan.end - prev, plan.poison,
				       &first);
	T_CHECK(!b, "%s: %llu guard bytes written after the last extent", tag,
		(unsigned long long)b);
	return wrong + b;
}

static struct ms_io *open_io(const struct ms_io_config *cfg, const char *tag)
{
	struct ms_io *io = NULL;
	struct ms_err err = { 0 };
	int rc = ms_io_init(&io, cfg, paths, N_FILES, mem, MEM_LEN, &err);
	if (rc)
		t_fatal("%s: ms_io_init: %d %s", tag, rc, err.msg);
	return io;
}

/* Submits the whole plan, waits for every answer (sampling the bytes in
 * flight: their maximum goes to *peak), returns the tracker. */
static struct iot_track *run_plan(struct ms_io *io, uint64_t *peak,
				  const char *tag)
{
	struct iot_track *tr = iot_track_new(plan.n_req);
	for (unsigned r = 0; r < plan.n_req; r++) {
		int rc = submit_req(io, r, tr, NULL);
		T_CHECK(rc == 0, "%s: submit %u: %d", tag, r, rc);
		if (rc)
			iot_track_cb(&tr->slot[r], 0, rc);
	}
	*peak = 0;
	double t_end = iot_now() + 60;
	while (!iot_track_wait(tr, plan.n_req, 0.001)) {
		struct ms_io_stats st;
		ms_io_get_stats(io, &st);
		uint64_t in = st.inflight_bytes[0] + st.inflight_bytes[1];
		if (in > *peak)
			*peak = in;
		if (iot_now() > t_end)
			t_fatal("%s: %u of %u requests hung", tag, plan.n_req - tr->done,
				plan.n_req);
	}
	return tr;
}

/* One engine's run: opened on *cfg, a plan of `budget` bytes in extents of
 * at most `max_len` (from `rng`) read, the engine freed; the tracker, the
 * engine's mode and final stats, the most bytes seen in flight. */
struct run {
	struct iot_track *tr;
	struct ms_io_mode md;
	struct ms_io_stats st;
	uint64_t peak;
};

static struct run io_run(const struct ms_io_config *cfg, uint64_t budget,
			 uint64_t max_len, uint64_t rng, const char *tag)
{
	struct run r;
	struct ms_io *io = open_io(cfg, tag);
	ms_io_get_mode(io, &r.md);
	make_plan(budget, max_len, &rng);
	r.tr = run_plan(io, &r.peak, tag);
	ms_io_get_stats(io, &r.st);
	ms_io_free(io);
	return r;
}

/* ---- matrix -------------------------------------------------------------- */

static const struct {
	uint32_t rs;
	uint64_t staging;
} pairs[] = {
	{ 4096, 4096 },
	{ 64 << 10, 12 << 10 },
	{ 64 << 10, 256 << 10 },
	{ 1 << 20, 8 << 20 },
};

static void one_combo(unsigned idx, enum ms_io_engine eng, unsigned threads,
		      bool fixbuf, unsigned pair)
{
	struct ms_io_config cfg = iot_config(eng, MS_IO_DIRECT_ON, threads, 16,
					     pairs[pair].rs);
	cfg.staging = pairs[pair].staging;
	cfg.fixed_buffers = fixbuf;
	char tag[128];
	snprintf(tag, sizeof(tag), "#%u %s x%u%s rs %u staging %llu", idx,
		 iot_engine_name(eng), threads, fixbuf ? " fixbuf" : "",
		 cfg.request_size, (unsigned long long)cfg.staging);
	iot_watchdog(120, tag);
	uint64_t buf = cfg.request_size < cfg.staging ? cfg.request_size : cfg.staging;
	/* 4 KiB reads one at a time cost a device round trip each */
	struct run run = io_run(&cfg, buf <= 4096 ? 3ull << 20 : 12ull << 20,
				UINT64_MAX, seed ^ (0x9e3779b97f4a7c15ull * (idx + 1)),
				tag);
	struct iot_track *tr = run.tr;
	const struct ms_io_mode md = run.md;
	const struct ms_io_stats st = run.st;
	uint64_t peak = run.peak;
	T_CHECK(md.direct && md.staging == cfg.staging / buf * buf &&
			md.staging_buf == buf && md.staging_bufs == cfg.staging / buf,
		"%s: mode: direct %d, staging %llu in %u x %u (why '%s')", tag,
		md.direct, (unsigned long long)md.staging, md.staging_bufs,
		md.staging_buf, md.why);

	uint64_t want = 0, min_chunks = 0;
	for (unsigned i = 0; i < plan.n; i++) {
		want += in_file(&plan.x[i]);
		min_chunks += (plan.x[i].alen + buf - 1) / buf;
	}
	for (unsigned r = 0; r < plan.n_req; r++)
		T_CHECK(tr->slot[r].calls == 1 && tr->slot[r].result == 0,
			"%s: request %u: %u callbacks, result %d", tag, r,
			tr->slot[r].calls, tr->slot[r].result);
	T_CHECK(st.bytes_read == want && st.bytes_copied == want,
		"%s: read %llu, copied %llu, the extents hold %llu bytes of the files",
		tag, (unsigned long long)st.bytes_read,
		(unsigned long long)st.bytes_copied, (unsigned long long)want);
	T_CHECK(st.copy_ns > 0, "%s: no copy time counted", tag);
	T_CHECK(st.chunks >= min_chunks, "%s: %llu reads, at least %llu needed", tag,
		(unsigned long long)st.chunks, (unsigned long long)min_chunks);
	T_CHECK(peak <= md.staging, "%s: %llu bytes in flight, the buffers hold %llu",
		tag, (unsigned long long)peak, (unsigned long long)md.staging);
	int sab = iot_sabotage();
	if (idx == 0 && sab == 1)
		mem[plan.x[plan.n / 2].at + 1] ^= 0x10;
	if (idx == 0 && sab == 2)
		mem[plan.x[0].at + plan.x[0].alen] ^= 0x01;
	uint64_t wrong = verify_plan(tr, false, tag);
	printf("%-40s %4u extents %7.1f MB  %6llu reads  peak in flight %6llu KiB  "
	       "copy %.1f ms  %s\n",
	       tag, plan.n, (double)want / 1e6, (unsigned long long)st.chunks,
	       (unsigned long long)(peak >> 10), (double)st.copy_ns / 1e6,
	       wrong ? "WRONG" : "ok");
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

static void test_matrix(void)
{
	unsigned idx = 0;
	for (int e = 0; e < 2; e++)
		for (unsigned t = 1; t <= 3; t += 2)
			for (int fb = 0; fb < 2; fb++) {
				if (e && fb) /* preadv has no fixed buffers */
					continue;
				for (unsigned p = 0; p < sizeof(pairs) / sizeof(pairs[0]); p++)
					one_combo(idx++, e ? MS_IO_ENGINE_PREADV
							   : MS_IO_ENGINE_URING,
						  t, fb, p);
			}
}

/* ---- faults ---------------------------------------------------------------- */

static void faults_run(const struct ms_io_faults *f, const char *tag)
{
	struct ms_io_config cfg = iot_config(MS_IO_ENGINE_AUTO, MS_IO_DIRECT_ON, 2,
					     8, 16 << 10);
	cfg.staging = 16 << 10; /* one buffer for both rings */
	cfg.faults = *f;
	iot_watchdog(120, tag);
	/* short extents: many requests, each with a fair chance to pass */
	struct run run = io_run(&cfg, 6ull << 20, 96 << 10, seed ^ f->seed, tag);
	struct iot_track *tr = run.tr;
	const struct ms_io_stats st = run.st;
	uint64_t peak = run.peak;
	unsigned ok = 0, eio = 0;
	for (unsigned r = 0; r < plan.n_req; r++) {
		const struct iot_slot *s = &tr->slot[r];
		T_CHECK(s->calls == 1, "%s: request %u: %u callbacks", tag, r, s->calls);
		T_CHECK(s->result == 0 || (f->eio_ppm && s->result == -EIO),
			"%s: request %u answered %d", tag, r, s->result);
		ok += s->result == 0;
		eio += s->result == -EIO;
	}
	uint64_t wrong = verify_plan(tr, true, tag);
	T_CHECK(peak <= cfg.staging, "%s: %llu bytes in flight through one buffer "
		"of %llu", tag, (unsigned long long)peak, (unsigned long long)cfg.staging);
	T_CHECK(st.short_reads > 0 && st.retries > 0, "%s: %llu short reads, %llu "
		"retries: faults not injected", tag, (unsigned long long)st.short_reads,
		(unsigned long long)st.retries);
	if (f->eio_ppm)
		T_CHECK(eio > 0, "%s: no request failed", tag);
	printf("%s: %u requests: %u ok, %u -EIO; %llu short reads, %llu retries; "
	       "%llu wrong bytes\n",
	       tag, plan.n_req, ok, eio, (unsigned long long)st.short_reads,
	       (unsigned long long)st.retries, (unsigned long long)wrong);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

static void test_faults(void)
{
	struct ms_io_faults f = { .short_ppm = 50000, .eagain_ppm = 50000,
				  .eintr_ppm = 50000, .seed = seed | 1 };
	faults_run(&f, "short, EAGAIN, EINTR");
	f.eio_ppm = 30000;
	f.seed = seed | 2;
	faults_run(&f, "and EIO");
}

/* ---- cancel -------------------------------------------------------------------- */

static void test_cancel(void)
{
	struct ms_io_config cfg = iot_config(MS_IO_ENGINE_AUTO, MS_IO_DIRECT_ON, 2,
					     32, 4096);
	cfg.staging = 4096;
	iot_watchdog(120, "cancel");
	struct ms_io *io = open_io(&cfg, "cancel");
	/* 8 prefetches of 2 MiB (512 reads each), then 4 demand reads */
	enum { N_PF = 8, N_DEM = 4 };
	plan.n = plan.n_req = 0;
	plan.end = 0;
	uint64_t rng = seed ^ 77;
	for (unsigned i = 0; i < N_PF + N_DEM; i++) {
		add(0, (uint64_t)i * (3ull << 20) + 11, (2ull << 20) - 22, &rng);
		plan.req_first[i] = i;
		plan.req_n[i] = 1;
		plan.req_cls[i] = i < N_PF ? MS_IO_PREFETCH : MS_IO_DEMAND;
		plan.n_req++;
	}
	plan.poison = 0xc3;
	memset(mem, plan.poison, plan.end);
	struct iot_track *tr = iot_track_new(plan.n_req);
	uint64_t id[N_PF];
	for (unsigned r = 0; r < N_PF; r++)
		T_CHECK(submit_req(io, r, tr, &id[r]) == 0, "cancel: submit %u", r);
	/* let some reads go through the buffer, then cancel them all */
	while (1) {
		struct ms_io_stats st;
		ms_io_get_stats(io, &st);
		if (st.chunks >= 16)
			break;
		usleep(200);
	}
	unsigned found = 0;
	for (unsigned r = 0; r < N_PF; r++)
		found += ms_io_cancel(io, id[r]) == 0;
	for (unsigned r = N_PF; r < plan.n_req; r++)
		T_CHECK(submit_req(io, r, tr, NULL) == 0, "cancel: submit %u", r);
	if (!iot_track_wait(tr, plan.n_req, 60))
		t_fatal("cancel: %u of %u requests hung after cancelling prefetches "
			"(a buffer not given back?)", plan.n_req - tr->done, plan.n_req);
	ms_io_free(io);
	unsigned cancelled = 0;
	for (unsigned r = 0; r < plan.n_req; r++) {
		const struct iot_slot *s = &tr->slot[r];
		T_CHECK(s->calls == 1, "cancel: request %u: %u callbacks", r, s->calls);
		if (r < N_PF) {
			T_CHECK(s->result == 0 || s->result == -ECANCELED,
				"cancel: prefetch %u answered %d", r, s->result);
			cancelled += s->result == -ECANCELED;
		} else {
			T_CHECK(s->result == 0, "cancel: demand %u answered %d", r,
				s->result);
		}
	}
	T_CHECK(cancelled > 0, "cancel: none of %u prefetches was cancelled "
		"(%u found)", N_PF, found);
	uint64_t wrong = verify_plan(tr, true, "cancel");
	printf("cancel: %u of %u prefetches cancelled, %u demand reads after them: "
	       "%llu wrong bytes\n", cancelled, N_PF, N_DEM, (unsigned long long)wrong);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

/* ---- buffered, config --------------------------------------------------------- */

static void test_buffered(void)
{
	struct ms_io_config cfg = iot_config(MS_IO_ENGINE_AUTO, MS_IO_DIRECT_OFF, 1,
					     32, 1 << 20);
	cfg.staging = 64 << 10;
	iot_watchdog(120, "buffered");
	struct run run = io_run(&cfg, 8ull << 20, UINT64_MAX, seed ^ 99, "buffered");
	struct iot_track *tr = run.tr;
	const struct ms_io_mode md = run.md;
	const struct ms_io_stats st = run.st;
	T_CHECK(!md.direct && !md.staging && strstr(md.why, "staging off"),
		"buffered: direct %d, staging %llu, why '%s'", md.direct,
		(unsigned long long)md.staging, md.why);
	for (unsigned r = 0; r < plan.n_req; r++)
		T_CHECK(tr->slot[r].calls == 1 && tr->slot[r].result == 0,
			"buffered: request %u: %u callbacks, %d", r, tr->slot[r].calls,
			tr->slot[r].result);
	T_EQ_U64(st.bytes_copied, 0);
	uint64_t wrong = verify_plan(tr, false, "buffered");
	printf("buffered: staging dropped (%s); %u extents, %llu wrong bytes\n", md.why,
	       plan.n, (unsigned long long)wrong);
	iot_track_free(tr);
	iot_watchdog(0, NULL);
}

static void test_config(void)
{
	static const uint64_t bad[] = { 4097, 100, (1ull << 30) + 4096, 2ull << 30 };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct ms_io_config cfg;
		ms_io_config_default(&cfg);
		cfg.staging = bad[i];
		struct ms_io *io = NULL;
		struct ms_err err = { 0 };
		int rc = ms_io_init(&io, &cfg, paths, N_FILES, mem, MEM_LEN, &err);
		T_CHECK(rc == -EINVAL && strstr(err.msg, "io.staging"),
			"staging %llu: %d '%s'", (unsigned long long)bad[i], rc, err.msg);
		printf("staging %llu: %s\n", (unsigned long long)bad[i], err.msg);
		ms_io_free(io);
	}
}

/* ---- the cache --------------------------------------------------------------------- */

static void test_cache(void)
{
	struct ct_model cm;
	/* every expert fits, with room for the slots' rounding and the staging */
	uint64_t all = ct_tiny_model(&cm);
	struct ms_cache_config cfg;
	ct_config(&cfg, all, 30000);
	cfg.staging = 64 << 10;
	cfg.io.direct = MS_IO_DIRECT_ON;
	cfg.io.request_size = 16 << 10;
	struct ms_read_info ri;
	ct_read_path_run(&cm, &cfg, MS_READ_STAGING, "cache, staging 64K", &ri);
	T_CHECK(ri.staging_bytes == 64 << 10 && ri.staging_bufs == 4 &&
			ri.staging_buf == 16 << 10,
		"staging 64K: %llu bytes in %u x %u", (unsigned long long)ri.staging_bytes,
		ri.staging_bufs, ri.staging_buf);
	/* auto: staged exactly when the arena gets no huge pages */
	ct_config(&cfg, all, 30000);
	cfg.io.direct = MS_IO_DIRECT_ON;
	cfg.staging = MS_STAGING_AUTO;
	bool huge = ms_arena_huge_expected(&cfg.arena);
	printf("staging auto: the arena is %sexpected to get huge pages\n",
	       huge ? "" : "not ");
	ct_read_path_run(&cm, &cfg, huge ? MS_READ_DIRECT : MS_READ_STAGING,
			 "cache, staging auto", &ri);
	T_CHECK(huge || ri.arena_huge_bytes * 2 < ri.arena_bytes,
		"staging auto: the arena got %llu of %llu bytes on huge pages, yet "
		"reads are staged", (unsigned long long)ri.arena_huge_bytes,
		(unsigned long long)ri.arena_bytes);
	ct_model_close(&cm);
}

int main(int argc, char **argv)
{
	static const struct t_part parts[] = {
		{ "matrix", test_matrix }, { "faults", test_faults },
		{ "cancel", test_cancel }, { "buffered", test_buffered },
		{ "config", test_config }, { "cache", test_cache },
	};
	setvbuf(stdout, NULL, _IOLBF, 0);
	seed = t_seed();
	for (uint32_t f = 0; f < N_FILES; f++)
		paths[f] = iot_stamped(f, fsize[f]);
	/* the destination on 4 KiB pages: what staging is for */
	mem = iot_mem_alloc(MEM_LEN, 0);
	madvise(mem, MEM_LEN, MADV_NOHUGEPAGE);
	/* O_DIRECT must work where the files are, or nothing here is tested */
	struct ms_io_config probe = iot_config(MS_IO_ENGINE_AUTO, MS_IO_DIRECT_ON, 1,
					       32, 1 << 20);
	struct ms_io *io = NULL;
	struct ms_err err = { 0 };
	if (ms_io_init(&io, &probe, paths, N_FILES, mem, MEM_LEN, &err))
		t_skip("O_DIRECT reads of %s: %s (set MS_TMP to a folder on a disk)",
		       t_tmpdir(), err.msg);
	ms_io_free(io);
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		if (!t_part_wanted(parts[i].name, argc, argv))
			continue;
		int before = t_failures;
		double t0 = iot_now();
		printf("-- %s\n", parts[i].name);
		parts[i].fn();
		printf("%s: %s (%.1f s)\n", parts[i].name,
		       t_failures == before ? "ok" : "FAILED", iot_now() - t0);
	}
	iot_mem_free(mem, MEM_LEN);
	return t_done();
}
