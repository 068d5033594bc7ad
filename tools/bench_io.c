/*
 * bench_io.c - `moestream bench io MODEL`: how fast random whole experts
 * arrive from the disk through the I/O engine, against what the device does
 * for the very same reads and what users have today, all in one run.
 *
 * The workload: N distinct (layer, expert) pairs drawn at random (seeded)
 * from the MoE layers a token runs (NextN blocks are skipped, as inference
 * skips them), each loaded whole: its n_proj extents, which are not adjacent
 * in the file. Every method reads the same list in the same order, the page
 * cache dropped before it starts, timed by the wall clock from its first
 * read to its last byte (setup - rings, buffers, mappings - is outside the
 * clock). Bytes counted are the experts' own bytes, not the widened ones,
 * so GB/s compares across methods.
 *
 *   engine  ms_io, the daemon's engine (one I/O thread), into D
 *           expert-sized buffers reused round-robin: D whole-expert demand
 *           requests in flight, each its extents widened with ms_io_widen;
 *           the engine cuts them into reads of --request-size and keeps D of
 *           those on the device.
 *   cache   the same through the expert cache (ms_cache_acquire, release)
 *           with a cache far smaller than the set: every access is a miss
 *           and, once the slots are full, an eviction. The gap to `engine`
 *           is what slot bookkeeping costs - where the arena has the same
 *           kind of pages as the engine's buffers (see below). Its arena
 *           and reads are made as the daemon's: --hugepages as
 *           cache.hugepages (auto: hugetlbfs pages, else THP, collapsed
 *           where shmem THP is off; off: 4 KiB pages), --staging as [io]
 *           staging (auto, the default: staging buffers where the arena got
 *           no huge pages; off; or a size); the staging bytes are added to
 *           the cache so that its slots are the same either way. The copy's CPU time
 *           is reported as a share of one core, at the cache row's rate
 *           and scaled to raw's (what copying at the device's rate costs).
 *   raw     liburing directly, no engine code: the same widened extents cut
 *           into the same read size, D reads in flight, the same buffers
 *           registered the same way, registered files. The device's limit
 *           for this access pattern, so engine / raw is what the engine
 *           loses.
 *   pread   T threads each pread()ing whole experts through the page cache
 *           into a private buffer.
 *   mmap    the shards mapped PROT_READ, MAP_SHARED, no MAP_POPULATE, with
 *           posix_fadvise(SEQUENTIAL) as llama.cpp's loader sets on Linux;
 *           T threads touch one byte per 4 KiB page of each expert: what
 *           llama.cpp's default costs when experts are cold.
 *
 * Why "same depth" means reads, not experts: the device sees reads. The
 * engine's queue_depth counts reads in flight (chunks of request_size), so
 * raw keeps the same number of reads of the same size in flight; the D
 * whole-expert requests queued in the engine only make sure it never runs
 * dry.
 *
 * Memory matters as much as the loop: engine and raw share one set of
 * buffers in 2 MiB transparent huge pages (--small-pages: 4 KiB), because
 * how scattered the destination is decides how many segments a read costs
 * the device. On a virtio disk without indirect descriptors (Firecracker)
 * 4 KiB pages halve the throughput; the cache's arena gets what its own
 * configuration gives it (hugetlbfs, shmem THP, or 4 KiB pages), shown in
 * its mode line.
 *
 * A check that the figures are of real bytes: every method sums the byte at
 * each 4 KiB step of each extent, and its last byte (exactly the bytes mmap
 * must touch), and the sums must agree. A method that "reads" faster by
 * reading the wrong bytes fails the run.
 *
 * Dropping the page cache needs root; without it the run goes on, says so,
 * and marks its figures as possibly cached.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/cache.h"
#include "moestream/iouring.h"
#include "moestream/model.h"
#include "bench_io.h"
#include "tools.h"

#define CMD "bench io"
#define PAGE 4096u
#define DEFAULT_READ_BYTES 3000000000ull /* ~3 GB: a few seconds per method */
#define DEFAULT_DEPTH 32u
#define MAX_DEPTH 1024u
#define MAX_THREADS 64u
#define MAX_ROUNDS 64u
#define REG_BUF_MAX (1ull << 30) /* the kernel's cap per registered iovec */

static const char usage_line[] =
	"usage: moestream bench io MODEL [--loads N] [--depth D] [--threads T] "
	"[--seed S] [--hugepages auto|on|off] [--staging auto|off|SIZE] [--json]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Random whole-expert loads with the page cache dropped, through "
		"the I/O engine,\ncompared in the same run with a plain io_uring "
		"O_DIRECT loop reading the same\nextents at the same depth (the "
		"device's limit for this pattern), pread through\nthe page cache, "
		"and mmap + touching every page (what llama.cpp does by\n"
		"default). Prints GB/s for each and the ratios; targets: engine >= "
		"0.95 x raw,\nengine >= 2 x mmap. Experts are drawn from the MoE "
		"layers a token runs (NextN\nblocks skipped), distinct, the same "
		"list for every method.\n"
		"\n"
		"  --loads N          experts to load (default: ~3 GB worth, or "
		"every expert of\n"
		"                     the layers run if fewer)\n"
		"  --depth D          reads in flight, and whole-expert requests "
		"queued in the\n"
		"                     engine (default %u, 1..%u)\n"
		"  --threads T        threads for pread and mmap (default: D, at "
		"most %u)\n"
		"  --seed S           which experts (default 1)\n"
		"  --request-size SZ  bytes per read for engine, cache and raw "
		"(default 1M, a\n"
		"                     multiple of 4K up to 64M; K/M suffixes)\n"
		"  --methods LIST     comma-separated subset of engine,cache,raw,"
		"pread,mmap\n"
		"                     (default: all)\n"
		"  --small-pages      engine and raw buffers in 4 KiB pages "
		"(default: 2 MiB\n"
		"                     transparent huge pages where the kernel "
		"allows)\n"
		"  --hugepages H      the cache row's arena pages, as moestreamd's "
		"cache.hugepages:\n"
		"                     auto (default: hugetlbfs pages, else THP, "
		"collapsed with\n"
		"                     MADV_COLLAPSE where shmem THP is off), on, "
		"off (4 KiB)\n"
		"  --staging S        how the cache row's reads reach its arena, "
		"as moestreamd's\n"
		"                     [io] staging: auto (default: through 8 MiB "
		"of huge-page\n"
		"                     staging buffers when the arena has 4 KiB "
		"pages), off\n"
		"                     (straight into the arena), or a size\n"
		"  --rounds R         run every method R times (1..%u, default 1) "
		"and report\n"
		"                     medians: a shared or noisy disk needs 3 or "
		"more\n"
		"  --json             one JSON object: engine_gbps, cache_gbps, "
		"raw_gbps,\n"
		"                     pread_gbps, mmap_gbps, the ratios, n_loads, "
		"bytes, ...\n"
		"  -h, --help         this text\n"
		"\n"
		"Dropping the page cache between methods needs root; without it "
		"the figures\nare marked as possibly cached.\n"
		"\n"
		"example:\n"
		"  sudo moestream bench io ~/models/GLM-4.7-UD-Q2_K_XL-00001-of-"
		"00003.gguf\n"
		"\n"
		"exit: 0 ok; 1 unreadable model, an I/O error, or methods that "
		"disagree on the\nbytes read; 2 bad usage\n",
		usage_line, DEFAULT_DEPTH, MAX_DEPTH, MAX_THREADS, MAX_ROUNDS);
}

/* ---- the plan: which experts, where they land --------------------------------- */

enum method { M_ENGINE, M_CACHE, M_RAW, M_PREAD, M_MMAP, M_COUNT };
static const char *const method_name[M_COUNT] = { "engine", "cache", "raw",
						  "pread", "mmap" };

struct load {
	uint32_t layer, expert; /* layer index into m->layers */
};

struct bench {
	const struct ms_model *m;
	const char **paths;     /* one per shard */
	uint32_t n_paths;
	struct load *loads;
	uint32_t n_loads;
	uint64_t bytes;         /* the experts' own bytes: what GB/s counts */
	uint64_t read_bytes;    /* widened: what O_DIRECT reads */
	uint64_t slot_bytes;    /* the largest widened expert of the list */
	uint64_t max_expert;    /* the largest expert of the list */
	unsigned depth, threads;
	uint32_t request_size;
	uint64_t staging;       /* the cache row's: MS_STAGING_AUTO, 0, bytes */
	enum ms_huge huge;      /* the cache row's arena pages */
};

struct result {
	bool ran, ok;
	double seconds;
	uint64_t sum;           /* touch sum, see the top of the file */
	char note[320];         /* the mode used, or why it failed */
	uint64_t misses, evictions; /* cache */
	struct ms_read_info read;   /* cache: how its reads reached the arena */
	uint64_t bytes_copied;      /* cache: staging -> arena */
	double copy_s;              /* cache: CPU seconds of those copies */
};

/* n distinct experts of the layers run: a partial Fisher-Yates shuffle of
 * all of them, so the list depends only on the model and the seed. n == 0
 * asks for the default (~DEFAULT_READ_BYTES, or all). */
static int pick_loads(struct bench *b, uint32_t n, uint64_t seed)
{
	const struct ms_model *m = b->m;
	uint64_t total = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		total += m->layers[l].nextn ? 0 : m->n_expert;
	if (!total)
		return -ENOENT;
	struct load *all = malloc(total * sizeof(*all));
	if (!all)
		return -ENOMEM;
	uint64_t k = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		for (uint32_t e = 0; !m->layers[l].nextn && e < m->n_expert; e++)
			all[k++] = (struct load){ l, e };
	if (!n) {
		uint64_t avg = m->expert_bytes_run / total;
		uint64_t want = avg ? (DEFAULT_READ_BYTES + avg - 1) / avg : total;
		n = (uint32_t)(want < total ? want : total);
	}
	if (n > total)
		n = (uint32_t)total;
	uint64_t rng = seed;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t j = i + tool_splitmix(&rng) % (total - i);
		struct load t = all[i];
		all[i] = all[j];
		all[j] = t;
	}
	b->loads = all;
	b->n_loads = n;
	for (uint32_t i = 0; i < n; i++) {
		const struct ms_moe_layer *L = &m->layers[all[i].layer];
		const struct ms_extent *x = ms_model_expert(m, all[i].layer,
							    all[i].expert);
		uint64_t w = 0;
		for (uint32_t j = 0; j < L->n_proj; j++) {
			uint64_t aoff, alen, skip;
			ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip);
			w += alen;
		}
		b->bytes += L->expert_bytes;
		b->read_bytes += w;
		if (w > b->slot_bytes)
			b->slot_bytes = w;
		if (L->expert_bytes > b->max_expert)
			b->max_expert = L->expert_bytes;
	}
	return 0;
}

/* Load i's extents widened, back to back from `slot`: ext[j], and where
 * the expert's own bytes start in each (skip[j]). Returns n_proj. */
static uint32_t plan_load(const struct bench *b, uint32_t i, uint8_t *slot,
			  struct ms_io_extent *ext, uint64_t *skip)
{
	const struct load *ld = &b->loads[i];
	const struct ms_moe_layer *L = &b->m->layers[ld->layer];
	const struct ms_extent *x = ms_model_expert(b->m, ld->layer, ld->expert);
	uint64_t at = 0;
	for (uint32_t j = 0; j < L->n_proj; j++) {
		uint64_t aoff, alen;
		ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip[j]);
		ext[j].file = x[j].shard;
		ext[j].offset = aoff;
		ext[j].len = alen;
		ext[j].dst = slot + at;
		at += alen;
	}
	return L->n_proj;
}

/* The byte at every 4 KiB step and the last one: one load per page, the
 * loads mmap needs to fault every page in, summed so none can be dropped. */
static uint64_t touch_sum(const uint8_t *p, uint64_t n)
{
	uint64_t s = 0;
	if (!n)
		return 0;
	for (uint64_t k = 0; k < n; k += PAGE)
		s += p[k];
	return s + p[n - 1];
}

/* The touch sum of load i, read into `slot` as plan_load placed it. */
static uint64_t slot_sum(const struct bench *b, uint32_t i, uint8_t *slot)
{
	struct ms_io_extent ext[MS_MOE_MAX_PROJ];
	uint64_t skip[MS_MOE_MAX_PROJ], s = 0;
	uint32_t n = plan_load(b, i, slot, ext, skip);
	const struct ms_extent *x = ms_model_expert(b->m, b->loads[i].layer,
						    b->loads[i].expert);
	for (uint32_t j = 0; j < n; j++)
		s += touch_sum((const uint8_t *)ext[j].dst + skip[j], x[j].bytes);
	return s;
}

/* The destination of engine and raw: D slots in one anonymous mapping,
 * 2 MiB-aligned and advised for transparent huge pages unless told
 * otherwise, every page touched before any clock starts. Huge pages make
 * each read one physically contiguous segment; with 4 KiB pages a 1 MiB read
 * is up to 256 segments, which on some virtual disks (virtio without
 * indirect descriptors) caps the reads the device sees at one or two. */
struct buffers {
	uint8_t *map, *mem;
	size_t map_len, len;
	bool huge_asked;
	uint64_t huge_bytes;    /* of len, backed by huge pages */
};

/* AnonHugePages of the mappings overlapping [p, p + len), from smaps. */
static uint64_t anon_huge_bytes(const void *p, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	uintptr_t lo = (uintptr_t)p, hi = lo + len;
	bool in = false;
	uint64_t kb = 0, total = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, e;
		if (sscanf(line, "%lx-%lx ", &a, &e) == 2) { /* a mapping's header */
			in = a < hi && e > lo;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			total += (uint64_t)kb << 10;
	}
	fclose(f);
	return total;
}

static int buffers_alloc(struct buffers *bf, size_t len, bool huge)
{
	const size_t align = huge ? (2u << 20) : PAGE;
	bf->huge_asked = huge;
	bf->len = len;
	bf->map_len = len + align;
	bf->map = mmap(NULL, bf->map_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bf->map == MAP_FAILED) {
		bf->map = NULL;
		return -errno;
	}
	bf->mem = (uint8_t *)(((uintptr_t)bf->map + align - 1) &
			      ~(uintptr_t)(align - 1));
	if (huge)
		madvise(bf->mem, len, MADV_HUGEPAGE); /* THP off: 4 KiB pages */
	memset(bf->mem, 0, len);
	bf->huge_bytes = anon_huge_bytes(bf->mem, len);
	return 0;
}

static void buffers_free(struct buffers *bf)
{
	if (bf->map)
		munmap(bf->map, bf->map_len);
}

static void io_mode_str(const struct ms_io_mode *md, char *buf, size_t len)
{
	snprintf(buf, len, "%s, %s%s%s%s%s%s",
		 md->engine == MS_IO_ENGINE_URING ? "io_uring" : "preadv threads",
		 md->direct ? "O_DIRECT" : "buffered",
		 md->fixed_buffers ? ", fixed buffers" : "",
		 md->fixed_files ? ", fixed files" : "",
		 md->sqpoll ? ", SQPOLL" : "", *md->why ? "; " : "", md->why);
}

/* ---- completions, handed from an I/O thread to the submitting one ------------ */

struct done_q {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned head, len, cap;
	uint32_t *slot;
	int *result;
	struct ms_expert_loc *loc;
};

struct slot_ref {
	struct done_q *q;
	uint32_t slot;
};

static int q_init(struct done_q *q, unsigned cap)
{
	memset(q, 0, sizeof(*q));
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	q->cap = cap;
	q->slot = calloc(cap, sizeof(*q->slot));
	q->result = calloc(cap, sizeof(*q->result));
	q->loc = calloc(cap, sizeof(*q->loc));
	return q->slot && q->result && q->loc ? 0 : -ENOMEM;
}

static void q_free(struct done_q *q)
{
	free(q->slot);
	free(q->result);
	free(q->loc);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->cv);
}

/* Never full: one entry per request in flight, at most cap of them. */
static void q_push(struct done_q *q, uint32_t slot, int result,
		   const struct ms_expert_loc *loc)
{
	pthread_mutex_lock(&q->mu);
	unsigned at = (q->head + q->len) % q->cap;
	q->slot[at] = slot;
	q->result[at] = result;
	if (loc)
		q->loc[at] = *loc;
	q->len++;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

static void q_pop(struct done_q *q, uint32_t *slot, int *result,
		  struct ms_expert_loc *loc)
{
	pthread_mutex_lock(&q->mu);
	while (!q->len)
		pthread_cond_wait(&q->cv, &q->mu);
	*slot = q->slot[q->head];
	*result = q->result[q->head];
	*loc = q->loc[q->head];
	q->head = (q->head + 1) % q->cap;
	q->len--;
	pthread_mutex_unlock(&q->mu);
}

/* ---- engine: ms_io straight into expert-sized buffers ------------------------- */

static void engine_done(void *ctx, uint64_t id, int result)
{
	struct slot_ref *r = ctx;
	(void)id;
	q_push(r->q, r->slot, result, NULL);
}

static struct ms_io_config io_config(const struct bench *b)
{
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.queue_depth = b->depth;
	cfg.request_size = b->request_size;
	return cfg;
}

static int run_engine(const struct bench *b, uint8_t *mem, size_t mem_len,
		      struct result *res, struct ms_err *err)
{
	struct ms_io_config cfg = io_config(b);
	struct ms_io *io = NULL;
	struct done_q q;
	struct slot_ref *refs = calloc(b->depth, sizeof(*refs));
	uint32_t *slot_load = calloc(b->depth, sizeof(*slot_load));
	int rc = q_init(&q, b->depth);
	if (rc || !refs || !slot_load) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = ms_io_init(&io, &cfg, b->paths, b->n_paths, mem, mem_len, err)))
		goto out;
	struct ms_io_mode md;
	ms_io_get_mode(io, &md);
	io_mode_str(&md, res->note, sizeof(res->note));

	uint32_t next = 0;
	unsigned inflight = 0;
	int first_err = 0;
	double t0 = tool_now_s();
	for (uint32_t s = 0; s < b->depth; s++)
		refs[s] = (struct slot_ref){ &q, s };
	/* Fill every slot, then refill each as it completes (the sum happens
	 * here, on this thread, while the engine's keeps the device busy). */
	for (uint32_t s = 0; s < b->depth && next < b->n_loads; s++) {
		struct ms_io_extent ext[MS_MOE_MAX_PROJ];
		uint64_t skip[MS_MOE_MAX_PROJ];
		uint32_t n = plan_load(b, next, mem + s * b->slot_bytes, ext, skip);
		slot_load[s] = next++;
		if ((rc = ms_io_submit(io, ext, n, MS_IO_DEMAND, engine_done,
				       &refs[s], NULL))) {
			first_err = rc;
			break;
		}
		inflight++;
	}
	while (inflight) {
		uint32_t s;
		int r;
		struct ms_expert_loc unused;
		q_pop(&q, &s, &r, &unused);
		inflight--;
		if (r) {
			if (!first_err)
				first_err = r;
			continue;
		}
		res->sum += slot_sum(b, slot_load[s], mem + s * b->slot_bytes);
		if (first_err || next >= b->n_loads)
			continue;
		struct ms_io_extent ext[MS_MOE_MAX_PROJ];
		uint64_t skip[MS_MOE_MAX_PROJ];
		uint32_t n = plan_load(b, next, mem + s * b->slot_bytes, ext, skip);
		slot_load[s] = next++;
		if ((rc = ms_io_submit(io, ext, n, MS_IO_DEMAND, engine_done,
				       &refs[s], NULL)))
			first_err = rc;
		else
			inflight++;
	}
	res->seconds = tool_now_s() - t0;
	if ((rc = first_err))
		ms_err_set(err, rc, "engine: a load failed: %s", strerror(-rc));
out:
	ms_io_free(io);
	q_free(&q);
	free(refs);
	free(slot_load);
	return rc;
}

/* ---- cache: the same through ms_cache_acquire / release ----------------------- */

static void cache_done(void *ctx, uint32_t layer, uint32_t expert, int result,
		       const struct ms_expert_loc *loc)
{
	struct slot_ref *r = ctx;
	(void)layer;
	(void)expert;
	q_push(r->q, r->slot, result, loc);
}

static uint64_t loc_sum(const struct ms_arena *a,
			const struct ms_expert_loc *loc)
{
	uint64_t s = 0;
	for (uint32_t j = 0; j < loc->n_proj; j++)
		s += touch_sum(a->base + loc->off[j], loc->len[j]);
	return s;
}

/* A cache with room for the D experts in flight plus one token's worth per
 * slot size, per distinct expert size in the model (the cache carves one
 * region per size): far below the list on any real model. The list is
 * distinct, so every acquire is a miss whatever the size; once the slots are
 * full, every miss also evicts. */
static uint64_t cache_size(const struct bench *b)
{
	const struct ms_model *m = b->m;
	uint64_t slot = 0, n_sizes = 0;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		bool seen = false;
		for (uint32_t k = 0; k < l; k++)
			seen |= m->layers[k].expert_bytes == m->layers[l].expert_bytes;
		n_sizes += !seen;
		for (uint32_t e = 0; e < m->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			uint64_t w = 0;
			for (uint32_t j = 0; j < m->layers[l].n_proj; j++) {
				uint64_t aoff, alen, skip;
				ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen,
					    &skip);
				w += alen;
			}
			if (w > slot)
				slot = w;
		}
	}
	slot = (slot + 65535) & ~65535ull;
	return n_sizes * (b->depth + m->n_expert_used + 2) * slot;
}

static int run_cache(const struct bench *b, struct result *res,
		     struct ms_err *err)
{
	struct ms_cache_config cfg;
	ms_cache_config_default(&cfg);
	/* the staging bytes come out of the cache: add them, so that the
	 * arena has the same slots with and without */
	cfg.staging = b->staging;
	cfg.arena.huge = b->huge;
	cfg.arena.size = cache_size(b) + (b->staging == MS_STAGING_AUTO
						  ? MS_STAGING_DEFAULT
						  : b->staging);
	cfg.arena.lock = false;
	cfg.io = io_config(b);
	cfg.acquire_timeout_ms = 60000; /* a slow disk is not a busy cache */
	struct ms_cache *c = NULL;
	struct done_q q;
	struct slot_ref *refs = calloc(b->depth, sizeof(*refs));
	uint32_t *slot_load = calloc(b->depth, sizeof(*slot_load));
	uint32_t *free_s = calloc(b->depth, sizeof(*free_s));
	int rc = q_init(&q, b->depth);
	if (rc || !refs || !slot_load || !free_s) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = ms_cache_init(&c, b->m, &cfg, err))) {
		ms_err_prefix(err, "cache");
		goto out;
	}
	struct ms_io_mode md;
	ms_cache_get_io_mode(c, &md);
	io_mode_str(&md, res->note, sizeof(res->note));
	const struct ms_arena *a = ms_cache_arena(c);
	size_t len = strlen(res->note);
	snprintf(res->note + len, sizeof(res->note) - len, "; arena %.0f MB (%s)",
		 (double)a->size / 1e6, a->mode);
	ms_cache_get_read_info(c, &res->read);

	uint32_t next = 0, n_free = 0;
	unsigned inflight = 0;
	int first_err = 0;
	for (uint32_t s = 0; s < b->depth; s++) {
		refs[s] = (struct slot_ref){ &q, s };
		free_s[n_free++] = b->depth - 1 - s;
	}
	/* D acquires outstanding; each answer is summed and released, and its
	 * ref carries the next expert. */
	double t0 = tool_now_s();
	for (;;) {
		while (!first_err && next < b->n_loads && n_free) {
			uint32_t s = free_s[--n_free], i = next++;
			const struct load *ld = &b->loads[i];
			struct ms_expert_loc loc;
			slot_load[s] = i;
			rc = ms_cache_acquire(c, ld->layer, ld->expert, cache_done,
					      &refs[s], &loc);
			if (rc == -EINPROGRESS) {
				inflight++;
				continue;
			}
			if (rc == 0) { /* a hit: the list is distinct, but fine */
				res->sum += loc_sum(a, &loc);
				ms_cache_release(c, ld->layer, ld->expert);
			} else {
				first_err = rc;
			}
			free_s[n_free++] = s;
		}
		if (!inflight)
			break;
		uint32_t s;
		int r;
		struct ms_expert_loc loc;
		q_pop(&q, &s, &r, &loc);
		inflight--;
		const struct load *ld = &b->loads[slot_load[s]];
		if (r) {
			if (!first_err)
				first_err = r;
		} else {
			res->sum += loc_sum(a, &loc);
			ms_cache_release(c, ld->layer, ld->expert);
		}
		free_s[n_free++] = s;
	}
	res->seconds = tool_now_s() - t0;
	if ((rc = first_err))
		ms_err_set(err, rc, "cache: a load failed: %s", strerror(-rc));
out:
	if (c) {
		struct ms_cache_stats st;
		ms_cache_get_stats(c, &st);
		res->misses = st.misses;
		res->evictions = st.evictions;
		res->bytes_copied = st.bytes_copied;
		res->copy_s = (double)st.copy_ns / 1e9;
	}
	ms_cache_free(c);
	q_free(&q);
	free(refs);
	free(slot_load);
	free(free_s);
	return rc;
}

/* ---- raw: liburing and nothing else ------------------------------------------- */

struct raw_chunk {
	uint64_t off, len;        /* what is still to read */
	uint8_t *dst;
	uint32_t file, slot;
	struct raw_chunk *next;   /* free list */
};

struct raw {
	struct io_uring ring;
	bool ring_ok, fixed_files, fixed_bufs, direct;
	int *fds;
	uint64_t *fsize;
	uint32_t n_files;
	uint8_t *mem;
	size_t mem_len;
};

static void raw_queue(struct raw *w, struct raw_chunk *c)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	if (!sqe) { /* cannot be: the SQ holds depth entries */
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	int fd = w->fixed_files ? (int)c->file : w->fds[c->file];
	if (w->fixed_bufs)
		io_uring_prep_read_fixed(sqe, fd, c->dst, (unsigned)c->len, c->off,
					 (int)((uint64_t)(c->dst - w->mem) / REG_BUF_MAX));
	else
		io_uring_prep_read(sqe, fd, c->dst, (unsigned)c->len, c->off);
	if (w->fixed_files)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, c);
}

/* Opens the shards O_DIRECT (buffered where the file system refuses it,
 * said in the note), makes the ring, registers files and one buffer per
 * slot. */
static int raw_setup(struct raw *w, const struct bench *b, struct result *res,
		     struct ms_err *err)
{
	w->n_files = b->n_paths;
	w->fds = malloc(b->n_paths * sizeof(*w->fds));
	w->fsize = calloc(b->n_paths, sizeof(*w->fsize));
	if (!w->fds || !w->fsize)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < b->n_paths; i++)
		w->fds[i] = -1;
	w->direct = true;
	for (uint32_t i = 0; i < b->n_paths; i++) {
		int fd = open(b->paths[i], O_RDONLY | O_CLOEXEC |
					   (w->direct ? O_DIRECT : 0));
		if (fd < 0 && errno == EINVAL && w->direct) {
			w->direct = false;
			for (uint32_t k = 0; k < i; k++)
				close(w->fds[k]);
			i = (uint32_t)-1; /* again from the first, buffered */
			continue;
		}
		if (fd < 0)
			return ms_err_set(err, -errno, "raw: %s: %s", b->paths[i],
					  strerror(errno));
		w->fds[i] = fd;
		struct stat st;
		if (fstat(fd, &st))
			return ms_err_set(err, -errno, "raw: %s: %s", b->paths[i],
					  strerror(errno));
		w->fsize[i] = (uint64_t)st.st_size;
	}
	int rc = io_uring_queue_init(b->depth, &w->ring, 0);
	if (rc)
		return ms_err_set(err, rc, "raw: io_uring_queue_init: %s",
				  strerror(-rc));
	w->ring_ok = true;
	w->fixed_files = !io_uring_register_files(&w->ring, w->fds, b->n_paths);
	/* The buffers registered as the engine registers its memory: pieces
	 * of the kernel's 1 GiB maximum (a read never crosses one). One
	 * iovec per slot looks as natural but is not the same: slots do not
	 * start on huge page boundaries, and a registration of partial huge
	 * pages can cost a segment per 4 KiB page of every read. */
	unsigned n = (unsigned)((w->mem_len + REG_BUF_MAX - 1) / REG_BUF_MAX);
	struct iovec *iov = calloc(n, sizeof(*iov));
	if (!iov)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (unsigned i = 0; i < n; i++) {
		uint64_t left = w->mem_len - (uint64_t)i * REG_BUF_MAX;
		iov[i].iov_base = w->mem + (uint64_t)i * REG_BUF_MAX;
		iov[i].iov_len = left < REG_BUF_MAX ? left : REG_BUF_MAX;
	}
	rc = io_uring_register_buffers(&w->ring, iov, n);
	w->fixed_bufs = !rc;
	free(iov);
	snprintf(res->note, sizeof(res->note), "io_uring, %s%s%s%s%s",
		 w->direct ? "O_DIRECT" : "buffered (O_DIRECT refused)",
		 w->fixed_bufs ? ", fixed buffers" : "",
		 w->fixed_files ? ", fixed files" : "",
		 w->fixed_bufs ? "" : "; fixed buffers refused: ",
		 w->fixed_bufs ? "" : strerror(-rc));
	return 0;
}

static void raw_free(struct raw *w)
{
	if (w->ring_ok)
		io_uring_queue_exit(&w->ring); /* waits for what is in flight */
	for (uint32_t i = 0; w->fds && i < w->n_files; i++)
		if (w->fds[i] >= 0)
			close(w->fds[i]);
	free(w->fds);
	free(w->fsize);
}

/* Slot states: the generator cuts the current load's widened extents into
 * request_size reads; a slot is summed and freed when all its reads are
 * issued and back. Free slots are taken in FIFO order, round-robin over all
 * D as the engine row does: with 4 KiB pages, how physically scattered a
 * buffer is decides how many segments (and, on a virtio disk without
 * indirect descriptors, ring slots) a read costs, so both rows must spread
 * over the same memory alike. A short read is resubmitted for the rest (at
 * end of file it is the end of the data); -EAGAIN and -EINTR are retried;
 * anything else ends the run with that error. */
static int run_raw(const struct bench *b, uint8_t *mem, size_t mem_len,
		   struct result *res, struct ms_err *err)
{
	struct raw w = { .mem = mem, .mem_len = mem_len };
	unsigned D = b->depth;
	struct raw_chunk *chunks = calloc(D, sizeof(*chunks)), *free_c = NULL;
	uint32_t *slot_load = calloc(D, sizeof(*slot_load));
	unsigned *pending = calloc(D, sizeof(*pending));
	bool *issued = calloc(D, sizeof(*issued));
	uint32_t *free_s = calloc(D, sizeof(*free_s)), free_head = 0, n_free = 0;
	uint32_t *done_s = calloc(D, sizeof(*done_s)), n_done = 0;
	int rc;
	if (!chunks || !slot_load || !pending || !issued || !free_s || !done_s) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = raw_setup(&w, b, res, err)))
		goto out;
	for (unsigned i = 0; i < D; i++) {
		chunks[i].next = free_c;
		free_c = &chunks[i];
		free_s[n_free++] = i;
	}

	struct ms_io_extent ext[MS_MOE_MAX_PROJ];
	uint64_t skip[MS_MOE_MAX_PROJ], gen_at = 0;
	uint32_t gen_n = 0, gen_j = 0, gen_slot = UINT32_MAX, next = 0;
	unsigned inflight = 0;
	int first_err = 0;
	double t0 = tool_now_s();
	for (;;) {
		while (!first_err && free_c) {
			if (gen_slot == UINT32_MAX) {
				if (next >= b->n_loads || !n_free)
					break;
				gen_slot = free_s[free_head];
				free_head = (free_head + 1) % D;
				n_free--;
				slot_load[gen_slot] = next;
				pending[gen_slot] = 0;
				issued[gen_slot] = false;
				gen_n = plan_load(b, next++, mem + gen_slot * b->slot_bytes,
						  ext, skip);
				gen_j = 0;
				gen_at = 0;
			}
			struct raw_chunk *c = free_c;
			free_c = c->next;
			uint64_t left = ext[gen_j].len - gen_at;
			c->file = ext[gen_j].file;
			c->off = ext[gen_j].offset + gen_at;
			c->len = left < b->request_size ? left : b->request_size;
			c->dst = (uint8_t *)ext[gen_j].dst + gen_at;
			uint64_t room = REG_BUF_MAX - (uint64_t)(c->dst - mem) % REG_BUF_MAX;
			if (c->len > room)
				c->len = room; /* never across a registered buffer */
			c->slot = gen_slot;
			raw_queue(&w, c);
			pending[gen_slot]++;
			inflight++;
			gen_at += c->len;
			if (gen_at == ext[gen_j].len) {
				gen_at = 0;
				if (++gen_j == gen_n) {
					issued[gen_slot] = true;
					gen_slot = UINT32_MAX;
				}
			}
		}
		/* The refills go to the device before the finished slots are
		 * summed, so the sums cost the device nothing (the engine row
		 * sums on another thread); then the freed slots refill. */
		if (inflight)
			io_uring_submit(&w.ring);
		if (n_done) {
			for (uint32_t i = 0; i < n_done; i++) {
				uint32_t s = done_s[i];
				if (!first_err)
					res->sum += slot_sum(b, slot_load[s],
							     mem + s * b->slot_bytes);
				free_s[(free_head + n_free++) % D] = s;
			}
			n_done = 0;
			continue;
		}
		if (!inflight)
			break;
		int r = io_uring_submit_and_wait(&w.ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
			first_err = r;
			break; /* queue_exit below reaps what is in flight */
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w.ring, head, cqe) {
			struct raw_chunk *c = io_uring_cqe_get_data(cqe);
			int n = cqe->res;
			seen++;
			if (n == -EAGAIN || n == -EINTR) {
				raw_queue(&w, c);
				continue;
			}
			if (n >= 0 && (uint64_t)n < c->len) {
				if (c->off + (uint64_t)n < w.fsize[c->file] && n > 0) {
					c->off += (uint64_t)n;
					c->dst += n;
					c->len -= (uint64_t)n;
					raw_queue(&w, c);
					continue;
				}
				if (c->off + (uint64_t)n < w.fsize[c->file])
					n = -EIO; /* nothing before the end: shrank */
			}
			if (n < 0 && !first_err)
				first_err = n;
			inflight--;
			c->next = free_c;
			free_c = c;
			uint32_t s = c->slot;
			if (--pending[s] == 0 && issued[s])
				done_s[n_done++] = s;
		}
		io_uring_cq_advance(&w.ring, seen);
	}
	res->seconds = tool_now_s() - t0;
	if ((rc = first_err))
		ms_err_set(err, rc, "raw: a read failed: %s", strerror(-rc));
out:
	raw_free(&w);
	free(chunks);
	free(slot_load);
	free(pending);
	free(issued);
	free(free_s);
	free(done_s);
	return rc;
}

/* ---- pread and mmap: T threads through the page cache --------------------------- */

struct worker {
	const struct bench *b;
	enum method method;
	atomic_uint *next;
	atomic_int *stop;
	const int *fds;
	uint8_t *const *maps;
	uint8_t *buf;             /* pread: one expert */
	uint64_t sum;
	int err;
	pthread_t th;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct bench *b = w->b;
	while (!atomic_load(w->stop)) {
		uint32_t i = atomic_fetch_add(w->next, 1);
		if (i >= b->n_loads)
			break;
		const struct load *ld = &b->loads[i];
		const struct ms_moe_layer *L = &b->m->layers[ld->layer];
		const struct ms_extent *x = ms_model_expert(b->m, ld->layer,
							    ld->expert);
		uint64_t at = 0;
		for (uint32_t j = 0; j < L->n_proj; j++) {
			if (w->method == M_MMAP) {
				w->sum += touch_sum(w->maps[x[j].shard] + x[j].offset,
						    x[j].bytes);
				continue;
			}
			int rc = tool_pread_full(w->fds[x[j].shard], w->buf + at,
					    x[j].bytes, x[j].offset);
			if (rc) {
				w->err = rc;
				atomic_store(w->stop, 1);
				return NULL;
			}
			w->sum += touch_sum(w->buf + at, x[j].bytes);
			at += x[j].bytes;
		}
	}
	return NULL;
}

static int run_threads(const struct bench *b, enum method method,
		       struct result *res, struct ms_err *err)
{
	unsigned T = b->threads;
	int *fds = malloc(b->n_paths * sizeof(*fds));
	uint8_t **maps = calloc(b->n_paths, sizeof(*maps));
	uint64_t *sizes = calloc(b->n_paths, sizeof(*sizes));
	struct worker *w = calloc(T, sizeof(*w));
	atomic_uint next = 0;
	atomic_int stop = 0;
	unsigned started = 0;
	int rc = 0;
	if (!fds || !maps || !sizes || !w) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < b->n_paths; i++)
		fds[i] = -1;
	for (uint32_t i = 0; i < b->n_paths; i++) {
		const char *p = b->paths[i];
		struct stat st;
		if ((fds[i] = open(p, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fds[i], &st)) {
			rc = ms_err_set(err, -errno, "%s: %s: %s", method_name[method],
					p, strerror(errno));
			goto out;
		}
		sizes[i] = (uint64_t)st.st_size;
		if (method != M_MMAP)
			continue;
		/* As llama.cpp's llama_mmap on Linux: SEQUENTIAL (a larger
		 * readahead window), MAP_SHARED, and here no MAP_POPULATE. */
		posix_fadvise(fds[i], 0, 0, POSIX_FADV_SEQUENTIAL);
		void *a = mmap(NULL, sizes[i], PROT_READ, MAP_SHARED, fds[i], 0);
		if (a == MAP_FAILED) {
			rc = ms_err_set(err, -errno, "mmap: %s: %s", p, strerror(errno));
			goto out;
		}
		maps[i] = a;
	}
	for (unsigned t = 0; t < T; t++) {
		w[t] = (struct worker){ .b = b, .method = method, .next = &next,
					.stop = &stop, .fds = fds, .maps = maps };
		if (method == M_PREAD) {
			if (!(w[t].buf = malloc(b->max_expert))) {
				rc = ms_err_set(err, -ENOMEM, "out of memory");
				goto out;
			}
			memset(w[t].buf, 0, b->max_expert); /* fault it in now */
		}
	}
	snprintf(res->note, sizeof(res->note), "%u threads, %s", T,
		 method == M_MMAP ? "mmap MAP_SHARED, FADV_SEQUENTIAL, 1 byte per "
				    "4 KiB page"
				  : "pread through the page cache");
	double t0 = tool_now_s();
	for (; started < T; started++)
		if ((rc = -pthread_create(&w[started].th, NULL, worker_main,
					  &w[started]))) {
			atomic_store(&stop, 1);
			ms_err_set(err, rc, "cannot start %u threads", T);
			break;
		}
	for (unsigned t = 0; t < started; t++) {
		pthread_join(w[t].th, NULL);
		res->sum += w[t].sum;
		if (w[t].err && !rc) {
			rc = w[t].err;
			ms_err_set(err, rc, "%s: a read failed: %s",
				   method_name[method], strerror(-rc));
		}
	}
	res->seconds = tool_now_s() - t0;
out:
	for (unsigned t = 0; w && t < T; t++)
		free(w[t].buf);
	for (uint32_t i = 0; maps && i < b->n_paths; i++)
		if (maps[i])
			munmap(maps[i], sizes[i]);
	for (uint32_t i = 0; fds && i < b->n_paths; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	free(maps);
	free(sizes);
	free(w);
	return rc;
}

/* ---- the report ------------------------------------------------------------------ */

/* Every round runs every method; a figure is the median over rounds, and a
 * ratio the median of the ratios within each round (paired: drift of a
 * shared disk between rounds cancels). */
struct runs {
	const struct bench *b;
	const char *path;
	uint64_t seed;
	unsigned rounds;
	struct result (*res)[M_COUNT];
	bool dropped, agree;
	const struct buffers *buf;
};

static double gbps(const struct bench *b, const struct result *r)
{
	return r->ok && r->seconds > 0 ? (double)b->bytes / r->seconds / 1e9 : NAN;
}

/* The median of the finite values, NAN when there are none. */
static double median(double *v, unsigned n)
{
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++)
		if (isfinite(v[i]))
			v[k++] = v[i];
	return k ? tool_median(v, k) : NAN;
}

/* Median GB/s of method k (ref < 0), or of k / ref within each round. */
static double med(const struct runs *r, int k, int ref)
{
	double v[64];
	unsigned n = 0;
	for (unsigned i = 0; i < r->rounds && n < 64; i++) {
		double g = gbps(r->b, &r->res[i][k]);
		if (ref >= 0) {
			double d = gbps(r->b, &r->res[i][ref]);
			g = isfinite(g) && isfinite(d) && d > 0 ? g / d : NAN;
		}
		v[n++] = g;
	}
	return median(v, n);
}

static double seconds(const struct runs *r, int k)
{
	double v[64];
	unsigned n = 0;
	for (unsigned i = 0; i < r->rounds && n < 64; i++)
		v[n++] = r->res[i][k].ok ? r->res[i][k].seconds : NAN;
	return median(v, n);
}

/* The staging copy's cost as a share of one core, median over the rounds:
 * its CPU seconds over the cache row's wall seconds (at the rate it ran), or
 * (at_raw) over raw's - what copying at the device's rate takes, since the
 * copy's CPU time per byte is the same whatever the rate. */
static double copy_share(const struct runs *r, bool at_raw)
{
	double v[64];
	unsigned n = 0;
	for (unsigned i = 0; i < r->rounds && n < 64; i++) {
		const struct result *c = &r->res[i][M_CACHE];
		const struct result *d = &r->res[i][at_raw ? M_RAW : M_CACHE];
		v[n++] = c->ok && d->ok && d->seconds > 0 ? c->copy_s / d->seconds
							  : NAN;
	}
	return median(v, n);
}

static double copy_seconds(const struct runs *r)
{
	double v[64];
	unsigned n = 0;
	for (unsigned i = 0; i < r->rounds && n < 64; i++)
		v[n++] = r->res[i][M_CACHE].ok ? r->res[i][M_CACHE].copy_s : NAN;
	return median(v, n);
}

static void cell(double v, const char *fmt, int width)
{
	if (isfinite(v))
		printf(fmt, v);
	else
		printf(" %*s |", width, "-");
}

static const char *staging_text(uint64_t v, char *buf, size_t len)
{
	if (v == MS_STAGING_AUTO)
		return "auto";
	if (!v)
		return "off";
	return fmt_bytes(v, buf, len);
}

static void print_human(const struct runs *r)
{
	const struct bench *b = r->b;
	const struct result *r0 = r->res[0];
	char b1[32], b2[32];
	uint32_t layers = 0;
	for (uint32_t l = 0; l < b->m->n_layers; l++)
		layers += !b->m->layers[l].nextn;
	printf("model      %s\n", r->path);
	printf("loads      %u distinct experts (seed %llu) of the %u MoE layers "
	       "run: %s\n           (%s read when widened to 4 KiB)\n",
	       b->n_loads, (unsigned long long)r->seed, layers,
	       fmt_bytes(b->bytes, b1, sizeof(b1)),
	       fmt_bytes(b->read_bytes, b2, sizeof(b2)));
	printf("depth      %u reads of %u KiB in flight (engine: %u whole-expert "
	       "requests queued);\n           pread and mmap: %u threads\n",
	       b->depth, b->request_size >> 10, b->depth, b->threads);
	if (r->buf->len)
		printf("buffers    %u x %s for engine and raw, %s\n", b->depth,
		       fmt_bytes(b->slot_bytes, b1, sizeof(b1)),
		       r->buf->huge_bytes + (2u << 20) > r->buf->len
			       ? "2 MiB pages (THP)"
		       : r->buf->huge_bytes ? "partly 2 MiB pages (THP)"
		       : r->buf->huge_asked ? "4 KiB pages (THP unavailable)"
					    : "4 KiB pages (--small-pages)");
	for (int k = 0; k < M_COUNT; k++)
		if (r0[k].ran && *r0[k].note)
			printf("%-10s %s\n", method_name[k], r0[k].note);
	if (r0[M_CACHE].ran) {
		printf("           cache: %llu misses, %llu evictions (of %u "
		       "loads)\n",
		       (unsigned long long)r0[M_CACHE].misses,
		       (unsigned long long)r0[M_CACHE].evictions, b->n_loads);
		printf("           cache reads (--staging %s): %s: %s\n",
		       staging_text(b->staging, b1, sizeof(b1)),
		       ms_read_path_name(r0[M_CACHE].read.path),
		       r0[M_CACHE].read.line);
	}
	if (r->dropped)
		printf("page cache dropped before each method\n");
	else
		printf("page cache NOT dropped (needs root): figures may come from "
		       "RAM, not the disk\n");
	if (r->rounds > 1)
		printf("%u rounds: medians; ratios are medians of each round's "
		       "ratio\n", r->rounds);

	printf("\nmethod |   GB/s |  / raw | / mmap | seconds%s\n",
	       r->rounds > 1 ? " | GB/s range" : "");
	printf("-------+--------+--------+--------+--------%s\n",
	       r->rounds > 1 ? "-+-----------" : "");
	for (int k = 0; k < M_COUNT; k++) {
		if (!r0[k].ran)
			continue;
		printf("%-6s |", method_name[k]);
		cell(med(r, k, -1), " %6.2f |", 6);
		cell(med(r, k, M_RAW), " %6.2f |", 6);
		cell(med(r, k, M_MMAP), " %6.2f |", 6);
		double sec = seconds(r, k);
		if (isfinite(sec))
			printf(" %7.2f", sec);
		else
			printf(" %7s", "-");
		if (r->rounds > 1) {
			double lo = INFINITY, hi = -INFINITY;
			for (unsigned i = 0; i < r->rounds; i++) {
				double g = gbps(b, &r->res[i][k]);
				lo = g < lo ? g : lo;
				hi = g > hi ? g : hi;
			}
			printf(" | %.2f..%.2f", lo, hi);
		}
		printf("\n");
	}
	double er = med(r, M_ENGINE, M_RAW), em = med(r, M_ENGINE, M_MMAP);
	printf("\n");
	if (isfinite(er))
		printf("engine / raw = %.2f (target >= 0.95)\n", er);
	if (isfinite(em))
		printf("engine / mmap = %.2f (target >= 2)\n", em);
	double cr = med(r, M_CACHE, M_RAW);
	if (isfinite(cr))
		printf("cache / raw = %.2f (target >= 0.9)\n", cr);
	if (r0[M_CACHE].ok && r0[M_CACHE].read.path == MS_READ_STAGING)
		printf("staging copy: %s copied, %.3f s of CPU: %.2f of a core at "
		       "the cache's rate, %.2f at raw's\n",
		       fmt_bytes(r0[M_CACHE].bytes_copied, b1, sizeof(b1)),
		       copy_seconds(r), copy_share(r, false), copy_share(r, true));
	printf("%s\n", r->agree
			       ? "every method read the same bytes (touch sums agree)"
			       : "METHODS DISAGREE on the bytes read (touch sums "
				 "differ)");
}

static void jnum(cJSON *o, const char *k, double v)
{
	if (isfinite(v))
		cJSON_AddNumberToObject(o, k, v);
	else
		cJSON_AddNullToObject(o, k);
}

static cJSON *json_report(const struct runs *r)
{
	const struct bench *b = r->b;
	const struct result *r0 = r->res[0];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "model", r->path);
	jnum(o, "n_loads", b->n_loads);
	jnum(o, "bytes", (double)b->bytes);
	jnum(o, "read_bytes", (double)b->read_bytes);
	jnum(o, "depth", b->depth);
	jnum(o, "threads", b->threads);
	jnum(o, "request_size", b->request_size);
	jnum(o, "seed", (double)r->seed);
	jnum(o, "rounds", r->rounds);
	const struct result *mr = r0[M_ENGINE].ran ? &r0[M_ENGINE] : &r0[M_CACHE];
	cJSON_AddStringToObject(o, "mode", mr->ran ? mr->note : "");
	cJSON_AddStringToObject(o, "raw_mode", r0[M_RAW].ran ? r0[M_RAW].note : "");
	jnum(o, "buffer_bytes", (double)r->buf->len);
	jnum(o, "buffer_huge_bytes", (double)r->buf->huge_bytes);
	cJSON_AddBoolToObject(o, "page_cache_dropped", r->dropped);
	cJSON_AddBoolToObject(o, "possibly_cached", !r->dropped);
	for (int k = 0; k < M_COUNT; k++) {
		char key[32];
		snprintf(key, sizeof(key), "%s_gbps", method_name[k]);
		jnum(o, key, med(r, k, -1));
		snprintf(key, sizeof(key), "%s_seconds", method_name[k]);
		jnum(o, key, seconds(r, k));
		if (!r0[k].ran)
			continue;
		snprintf(key, sizeof(key), "%s_gbps_rounds", method_name[k]);
		cJSON *a = cJSON_AddArrayToObject(o, key);
		for (unsigned i = 0; i < r->rounds; i++) {
			double g = gbps(b, &r->res[i][k]);
			cJSON_AddItemToArray(a, isfinite(g) ? cJSON_CreateNumber(g)
							    : cJSON_CreateNull());
		}
	}
	jnum(o, "engine_over_raw", med(r, M_ENGINE, M_RAW));
	jnum(o, "engine_over_mmap", med(r, M_ENGINE, M_MMAP));
	jnum(o, "cache_over_raw", med(r, M_CACHE, M_RAW));
	jnum(o, "cache_over_engine", med(r, M_CACHE, M_ENGINE));
	jnum(o, "pread_over_raw", med(r, M_PREAD, M_RAW));
	jnum(o, "mmap_over_raw", med(r, M_MMAP, M_RAW));
	cJSON *t = cJSON_AddObjectToObject(o, "targets");
	jnum(t, "engine_over_raw", 0.95);
	jnum(t, "engine_over_mmap", 2.0);
	jnum(t, "cache_over_raw", 0.9);
	cJSON_AddStringToObject(o, "hugepages", b->huge == MS_HUGE_AUTO ? "auto"
						: b->huge == MS_HUGE_ON ? "on"
									: "off");
	char st[32];
	if (b->staging == MS_STAGING_AUTO || !b->staging)
		cJSON_AddStringToObject(o, "staging",
					staging_text(b->staging, st, sizeof(st)));
	else
		jnum(o, "staging", (double)b->staging);
	if (r0[M_CACHE].ran) {
		const struct ms_read_info *ri = &r0[M_CACHE].read;
		jnum(o, "cache_misses", (double)r0[M_CACHE].misses);
		jnum(o, "cache_evictions", (double)r0[M_CACHE].evictions);
		cJSON_AddStringToObject(o, "cache_read_path", ms_read_path_name(ri->path));
		cJSON_AddStringToObject(o, "cache_read_path_detail", ri->line);
		jnum(o, "cache_arena_bytes", (double)ri->arena_bytes);
		jnum(o, "cache_arena_huge_bytes", (double)ri->arena_huge_bytes);
		jnum(o, "cache_staging_bytes", (double)ri->staging_bytes);
		jnum(o, "cache_staging_huge_bytes", (double)ri->staging_huge_bytes);
		jnum(o, "cache_copy_bytes", (double)r0[M_CACHE].bytes_copied);
		jnum(o, "cache_copy_cpu_s", copy_seconds(r));
		jnum(o, "cache_copy_core_share", copy_share(r, false));
		jnum(o, "cache_copy_core_share_at_raw", copy_share(r, true));
	}
	cJSON_AddBoolToObject(o, "checksums_agree", r->agree);
	cJSON *l = cJSON_AddArrayToObject(o, "loads");
	for (uint32_t i = 0; i < b->n_loads; i++) {
		cJSON *p = cJSON_CreateArray();
		cJSON_AddItemToArray(p, cJSON_CreateNumber(
					   b->m->layers[b->loads[i].layer].block));
		cJSON_AddItemToArray(p, cJSON_CreateNumber(b->loads[i].expert));
		cJSON_AddItemToArray(l, p);
	}
	return o;
}

/* ---- the command ------------------------------------------------------------------ */

static int parse_u(const char *opt, const char *s, unsigned long long lo,
		   unsigned long long hi, unsigned long long *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || !*s || *end || *s == '-' || v < lo || v > hi) {
		tool_error(CMD, "%s '%s': expected %llu..%llu", opt, s, lo, hi);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* One round: every wanted method, the page cache dropped before each; raw
 * and engine side by side (their order alternating by round) so that the
 * ratio that matters most is measured on the same state of the disk. */
static int run_round(const struct bench *b, unsigned round, const bool *want,
		     uint8_t *mem, size_t mem_len, struct result *res,
		     bool *dropped, bool progress, struct ms_err *err)
{
	enum method order[M_COUNT] = { M_RAW, M_ENGINE, M_CACHE, M_PREAD, M_MMAP };
	if (round % 2) {
		order[0] = M_ENGINE;
		order[1] = M_RAW;
	}
	for (int k = 0; k < M_COUNT; k++) {
		enum method mt = order[k];
		if (!want[mt])
			continue;
		*dropped &= tool_drop_caches();
		if (progress)
			fprintf(stderr, "bench io: round %u: %s ...\n", round + 1,
				method_name[mt]);
		struct result *r = &res[mt];
		r->ran = true;
		int rc;
		ms_err_clear(err);
		switch (mt) {
		case M_ENGINE: rc = run_engine(b, mem, mem_len, r, err); break;
		case M_CACHE: rc = run_cache(b, r, err); break;
		case M_RAW: rc = run_raw(b, mem, mem_len, r, err); break;
		default: rc = run_threads(b, mt, r, err); break;
		}
		if (rc) {
			if (!*err->msg)
				ms_err_set(err, rc, "%s: %s", method_name[mt],
					   strerror(-rc));
			return rc;
		}
		r->ok = true;
	}
	return 0;
}

int bench_io_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "loads", required_argument, 0, 'n' },
		{ "depth", required_argument, 0, 'd' },
		{ "threads", required_argument, 0, 't' },
		{ "seed", required_argument, 0, 's' },
		{ "request-size", required_argument, 0, 'r' },
		{ "rounds", required_argument, 0, 'R' },
		{ "methods", required_argument, 0, 'm' },
		{ "small-pages", no_argument, 0, 'P' },
		{ "staging", required_argument, 0, 'S' },
		{ "hugepages", required_argument, 0, 'H' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	unsigned long long n_loads = 0, depth = DEFAULT_DEPTH, threads = 0, seed = 1;
	unsigned long long rounds = 1;
	uint64_t rsize = 1u << 20, staging = MS_STAGING_AUTO;
	enum ms_huge huge = MS_HUGE_AUTO;
	bool json = false, small = false;
	bool want[M_COUNT] = { true, true, true, true, true };
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "n:d:t:s:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			if (parse_u("--loads", optarg, 1, UINT32_MAX, &n_loads))
				return tool_bad_usage(usage_line);
			break;
		case 'd':
			if (parse_u("--depth", optarg, 1, MAX_DEPTH, &depth))
				return tool_bad_usage(usage_line);
			break;
		case 't':
			if (parse_u("--threads", optarg, 1, MAX_THREADS, &threads))
				return tool_bad_usage(usage_line);
			break;
		case 's':
			if (parse_u("--seed", optarg, 0, UINT64_MAX, &seed))
				return tool_bad_usage(usage_line);
			break;
		case 'R':
			if (parse_u("--rounds", optarg, 1, MAX_ROUNDS, &rounds))
				return tool_bad_usage(usage_line);
			break;
		case 'r':
			if (ms_parse_size(optarg, &rsize) || !rsize ||
			    rsize % MS_IO_ALIGN || rsize > (64u << 20)) {
				tool_error(CMD, "--request-size '%s': expected a "
						"multiple of 4K up to 64M", optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case 'm':
			if (tool_parse_methods(CMD, "--methods", optarg, method_name,
					       M_COUNT, "engine, cache, raw, pread, mmap",
					       want))
				return tool_bad_usage(usage_line);
			break;
		case 'P':
			small = true;
			break;
		case 'H':
			if (!strcmp(optarg, "auto") || !strcmp(optarg, "on") ||
			    !strcmp(optarg, "off")) {
				huge = optarg[0] == 'a' ? MS_HUGE_AUTO
				       : optarg[1] == 'n' ? MS_HUGE_ON
							  : MS_HUGE_OFF;
				break;
			}
			tool_error(CMD, "--hugepages '%s': expected auto, on or off",
				   optarg);
			return tool_bad_usage(usage_line);
		case 'S':
			if (ms_cache_parse_staging(optarg, &staging)) {
				tool_error(CMD, "--staging '%s': expected auto, off or "
						"a multiple of 4K up to 1G", optarg);
				return tool_bad_usage(usage_line);
			}
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return tool_bad_usage(usage_line);
		}
	}
	const char *path = tool_one_model(CMD, argc, argv, optind);
	if (!path)
		return tool_bad_usage(usage_line);
	struct bench b = { .depth = (unsigned)depth, .request_size = (uint32_t)rsize,
			   .staging = staging, .huge = huge };
	b.threads = threads ? (unsigned)threads
			    : (unsigned)(depth < MAX_THREADS ? depth : MAX_THREADS);
	struct buffers buf = { 0 };
	struct runs r = { .b = &b, .path = path, .seed = seed,
			  .rounds = (unsigned)rounds, .dropped = true, .agree = true,
			  .buf = &buf };
	struct ms_model *m = NULL;
	struct ms_err err = { 0 };
	int rc = 1;
	if (ms_model_open(&m, path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	b.m = m;
	if (!m->n_expert || !m->n_layers_run) {
		tool_error(CMD, "%s: not a Mixture-of-Experts model (no experts in "
				"the layers run): nothing to load", path);
		goto out;
	}
	int prc = pick_loads(&b, (uint32_t)n_loads, seed);
	b.paths = calloc(m->n_shards, sizeof(*b.paths));
	r.res = calloc(r.rounds, sizeof(*r.res));
	if (prc || !b.paths || !r.res) {
		tool_error(CMD, "choosing experts: %s",
			   strerror(prc ? -prc : ENOMEM));
		goto out;
	}
	b.n_paths = m->n_shards;
	for (uint32_t s = 0; s < m->n_shards; s++)
		b.paths[s] = m->shards[s]->path;

	/* Engine and raw read into the same D slots. */
	if (want[M_ENGINE] || want[M_RAW]) {
		int brc = buffers_alloc(&buf, b.depth * b.slot_bytes, !small);
		if (brc) {
			tool_error(CMD, "%u buffers of %llu bytes: %s", b.depth,
				   (unsigned long long)b.slot_bytes, strerror(-brc));
			goto out;
		}
	}

	bool progress = isatty(2) && !json;
	for (unsigned i = 0; i < r.rounds; i++)
		if (run_round(&b, i, want, buf.mem, buf.len, r.res[i], &r.dropped,
			      progress, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
	/* The touch sums of every method in every round must agree. */
	const struct result *ref = NULL;
	char sums[512] = "";
	size_t n = 0;
	for (unsigned i = 0; i < r.rounds; i++)
		for (int k = 0; k < M_COUNT; k++) {
			const struct result *x = &r.res[i][k];
			if (!x->ok)
				continue;
			if (!ref)
				ref = x;
			r.agree &= x->sum == ref->sum;
			if (i == 0 && n < sizeof(sums))
				n += (size_t)snprintf(sums + n, sizeof(sums) - n,
						      "%s%s %llu", n ? ", " : "",
						      method_name[k],
						      (unsigned long long)x->sum);
		}

	if (json) {
		cJSON *o = json_report(&r);
		char *s = o ? cJSON_Print(o) : NULL;
		if (s)
			puts(s);
		free(s);
		cJSON_Delete(o);
		if (!s) {
			tool_error(CMD, "out of memory building JSON");
			goto out;
		}
	} else {
		print_human(&r);
	}
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		goto out;
	}
	if (!r.agree) {
		tool_error(CMD, "the methods read different bytes (touch sums of "
				"round 1: %s)", sums);
		goto out;
	}
	rc = 0;
out:
	buffers_free(&buf);
	free(r.res);
	free(b.loads);
	free(b.paths);
	ms_model_free(m);
	return rc;
}
