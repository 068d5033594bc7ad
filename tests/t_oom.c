/*
 * t_oom.c - out of memory at every allocation: model loading, cache and
 * server setup, and request handling.
 *
 * The allocator. This program defines malloc, calloc, realloc, free, strdup
 * and strndup itself: the executable's definitions interpose on libc's for
 * the whole process (libc's own internals, cJSON, inih included), with no
 * LD_PRELOAD, no link flags and no hook in the library. Each forwards to the
 * next definition (dlsym RTLD_NEXT: libc's, or ASan's in the check build, so
 * LeakSanitizer still sees everything) unless the injector says fail. The
 * injector counts allocations made while it is armed by threads that are not
 * exempt (the test's own client threads are), and fails allocation N - once,
 * or N and every one after it (persistent) - returning NULL with ENOMEM.
 * While armed it also records every live allocation of those threads (the
 * pointer, the phase's iteration, the caller's address), so a leak is named
 * in every build, not only under ASan.
 *
 * For each phase a dry run counts K, the allocations the phase makes; then
 * N runs 1..K+2, once and persistent:
 *
 *   A. ms_model_open of a GLM-shaped model: 0 with a sound model (N past
 *      the end), or a negative errno with a message and no object; after
 *      ms_model_free (or the failure) no allocation of the iteration lives
 *      and no descriptor is left open.
 *   B. startup: ms_cache_init + ms_server_init (socket, event loop), then
 *      stop and free: the same promises; when both succeed, a blocking
 *      acquire of two experts is checked against the file first.
 *   C. requests: one server (in this process: inproc.h) serves the whole
 *      phase. Each iteration arms the injector, runs a client's script -
 *      HELLO, ACQUIRE of 4 experts (misses: the cache is smaller than the
 *      model), RELEASE, PREFETCH, STATS, PING, close - and disarms. Every
 *      request must get an answer (a result, an error, or the connection
 *      closed: never a timeout, never a hang), and afterwards the server
 *      must still serve a fresh client (4 experts, bytes equal to the
 *      file's, released), hold no pins once its clients are gone, and pass
 *      ms_cache_check. After the phase the server is torn down and no
 *      allocation made during the phase lives.
 *
 * The sanitizers' own thread start-up allocates through pthread_getattr_np;
 * that is interposed as well and exempt (failing it aborts the sanitizer,
 * which is no finding about our code).
 *
 * Figures: K per phase, the outcomes per phase (succeeded / failed with
 * which codes), the answers the clients saw in phase C.
 * MS_OOM_ONLY=A|B|C runs one phase; MS_OOM_STEP=n tries every n-th N;
 * MS_OOM_N=12 (or 12p: persistent) runs one N; MS_OOM_DEBUG=1 names the
 * caller of each allocation failed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemontest.h"
#include "inproc.h"
#include "moestream/moestream.h"
#include "testutil.h"

/* ---- the allocator ---------------------------------------------------------------- */

/* The shims run inside the sanitizers' own start-up (before their shadow
 * memory exists): they must not be instrumented. */
#define SHIM __attribute__((no_sanitize("address", "undefined")))

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);

/* What dlsym itself allocates while we look the real ones up. */
static _Alignas(16) char boot[1 << 16];
static size_t boot_used;
static atomic_int resolving;

struct boot_hdr {
	size_t n;
	size_t pad;
};

SHIM static void *boot_alloc(size_t n)
{
	size_t need = (sizeof(struct boot_hdr) + n + 15) & ~(size_t)15;
	if (boot_used + need > sizeof(boot))
		return NULL;
	struct boot_hdr *h = (struct boot_hdr *)(boot + boot_used);
	boot_used += need;
	h->n = n;
	memset(h + 1, 0, n);
	return h + 1;
}

SHIM static bool in_boot(const void *p)
{
	return (const char *)p >= boot && (const char *)p < boot + sizeof(boot);
}

SHIM static void resolve(void)
{
	atomic_store(&resolving, 1);
	real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
	real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
	real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
	void *m = dlsym(RTLD_NEXT, "malloc");
	atomic_store(&resolving, 0);
	if (!m || !real_calloc || !real_realloc || !real_free) {
		static const char msg[] = "t_oom: cannot find the real allocator\n";
		if (write(2, msg, sizeof(msg) - 1) < 0) {
		}
		_exit(1);
	}
	real_malloc = (void *(*)(size_t))m;
}

/* The injector. */
static atomic_bool armed;
static atomic_long counter;        /* allocations counted while armed */
static atomic_long n_failed;       /* of which failed */
static long fail_at;               /* N (0: count only) */
static bool persistent;
static __thread bool tl_exempt;    /* the test's own threads */

/* The sanitizers' own thread start-up calls pthread_getattr_np, which
 * allocates (a cpuset, an attribute extension); failing that aborts the
 * sanitizer (a CHECK), not our code. It is interposed too, so that what it
 * allocates is neither counted nor failed. */
static __thread int tl_in_getattr;
static int (*real_getattr)(pthread_t, pthread_attr_t *);

int pthread_getattr_np(pthread_t th, pthread_attr_t *attr);

SHIM int pthread_getattr_np(pthread_t th, pthread_attr_t *attr)
{
	if (!real_getattr)
		real_getattr = (int (*)(pthread_t, pthread_attr_t *))dlsym(
			RTLD_NEXT, "pthread_getattr_np");
	tl_in_getattr++;
	int rc = real_getattr(th, attr);
	tl_in_getattr--;
	return rc;
}

static bool debug; /* MS_OOM_DEBUG: say which allocations fail */

static __attribute__((noinline)) void say_failing(long k, void *ra)
{
	char b[160];
	int n = snprintf(b, sizeof(b), "t_oom: failing allocation %ld from %p\n",
			 k, ra);
	if (write(2, b, (size_t)n) < 0) {
	}
}

static SHIM bool should_fail(void *ra)
{
	/* Not armed: nothing else is looked at (this runs before main too,
	 * when the sanitizers start, and TLS is not to be touched then). */
	if (!atomic_load_explicit(&armed, memory_order_acquire))
		return false;
	if (tl_exempt || tl_in_getattr)
		return false;
	long k = atomic_fetch_add(&counter, 1) + 1;
	if (fail_at && (persistent ? k >= fail_at : k == fail_at)) {
		atomic_fetch_add(&n_failed, 1);
		if (debug)
			say_failing(k, ra);
		return true;
	}
	return false;
}

/* Live allocations of counted threads while armed: an open-addressed table
 * under a spinlock (nothing here allocates). */
#define TRACK_SLOTS (1u << 16)
struct track {
	void *p;
	void *ra;
	uint32_t iter;
};
static struct track *tracks; /* mmap'ed at start */
static atomic_flag track_lock = ATOMIC_FLAG_INIT;
static atomic_bool tracking;
static uint32_t track_iter;
static unsigned long track_live, track_overflow;
#define TOMB ((void *)1)

SHIM static size_t track_hash(const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (size_t)x & (TRACK_SLOTS - 1);
}

SHIM static void track_add(void *p, void *ra)
{
	if (!p || !atomic_load(&tracking))
		return;
	if (tl_exempt)
		return;
	while (atomic_flag_test_and_set_explicit(&track_lock, memory_order_acquire)) {
	}
	size_t h = track_hash(p);
	for (size_t i = 0; i < TRACK_SLOTS; i++, h = (h + 1) & (TRACK_SLOTS - 1))
		if (!tracks[h].p || tracks[h].p == TOMB) {
			tracks[h] = (struct track){ .p = p, .ra = ra, .iter = track_iter };
			track_live++;
			goto out;
		}
	track_overflow++;
out:
	atomic_flag_clear_explicit(&track_lock, memory_order_release);
}

SHIM static void track_del(void *p)
{
	if (!p || !tracks)
		return;
	while (atomic_flag_test_and_set_explicit(&track_lock, memory_order_acquire)) {
	}
	if (track_live) {
		size_t h = track_hash(p);
		for (size_t i = 0; i < TRACK_SLOTS && tracks[h].p;
		     i++, h = (h + 1) & (TRACK_SLOTS - 1))
			if (tracks[h].p == p) {
				tracks[h].p = TOMB;
				track_live--;
				break;
			}
	}
	atomic_flag_clear_explicit(&track_lock, memory_order_release);
}

void *malloc(size_t n);
void *calloc(size_t a, size_t b);
void *realloc(void *p, size_t n);
void free(void *p);
char *strdup(const char *s);
char *strndup(const char *s, size_t n);

SHIM void *malloc(size_t n)
{
	if (!real_malloc) {
		if (atomic_load(&resolving))
			return boot_alloc(n);
		resolve();
	}
	if (should_fail(__builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	void *p = real_malloc(n);
	track_add(p, __builtin_return_address(0));
	return p;
}

SHIM void *calloc(size_t a, size_t b)
{
	if (!real_calloc) {
		if (atomic_load(&resolving)) {
			size_t n;
			return __builtin_mul_overflow(a, b, &n) ? NULL : boot_alloc(n);
		}
		resolve();
	}
	if (should_fail(__builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	void *p = real_calloc(a, b);
	track_add(p, __builtin_return_address(0));
	return p;
}

SHIM void *realloc(void *p, size_t n)
{
	if (!real_realloc) {
		if (atomic_load(&resolving))
			return boot_alloc(n);
		resolve();
	}
	if (in_boot(p)) {
		void *q = malloc(n);
		if (q) {
			size_t old = ((struct boot_hdr *)p - 1)->n;
			memcpy(q, p, old < n ? old : n);
		}
		return q;
	}
	if (should_fail(__builtin_return_address(0))) {
		errno = ENOMEM;
		return NULL;
	}
	void *q = real_realloc(p, n);
	if (q || !n) {
		track_del(p);
		track_add(q, __builtin_return_address(0));
	}
	return q;
}

SHIM void free(void *p)
{
	if (!p || in_boot(p))
		return;
	if (!real_free)
		resolve();
	track_del(p);
	real_free(p);
}

SHIM char *strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);
	if (d)
		memcpy(d, s, n);
	return d;
}

SHIM char *strndup(const char *s, size_t n)
{
	size_t l = strnlen(s, n);
	char *d = malloc(l + 1);
	if (d) {
		memcpy(d, s, l);
		d[l] = '\0';
	}
	return d;
}

/* Arms the injector: fail allocation `at` (0: none) once or from then on. */
static void arm(long at, bool persist)
{
	atomic_store(&counter, 0);
	atomic_store(&n_failed, 0);
	fail_at = at;
	persistent = persist;
	atomic_store_explicit(&armed, true, memory_order_release);
}

static long disarm(void)
{
	atomic_store_explicit(&armed, false, memory_order_release);
	return atomic_load(&counter);
}

/* Starts recording live allocations (clearing the table). */
static void track_start(uint32_t iter)
{
	while (atomic_flag_test_and_set(&track_lock)) {
	}
	memset(tracks, 0, TRACK_SLOTS * sizeof(*tracks));
	track_live = track_overflow = 0;
	track_iter = iter;
	atomic_flag_clear(&track_lock);
	atomic_store(&tracking, true);
}

static void track_set_iter(uint32_t iter)
{
	while (atomic_flag_test_and_set(&track_lock)) {
	}
	track_iter = iter;
	atomic_flag_clear(&track_lock);
}

/* Stops recording; fails the test for each allocation still live. */
static unsigned long track_stop(const char *phase, long at, bool persist)
{
	atomic_store(&tracking, false);
	unsigned long live = 0, shown = 0;
	while (atomic_flag_test_and_set(&track_lock)) {
	}
	for (size_t i = 0; i < TRACK_SLOTS; i++) {
		struct track *t = &tracks[i];
		if (!t->p || t->p == TOMB)
			continue;
		live++;
		if (shown++ < 8) {
			/* addr2line -e FILE OFFSET names the caller */
			Dl_info di;
			const char *fn = "?", *file = "?";
			uintptr_t off = 0;
			if (dladdr(t->ra, &di)) {
				fn = di.dli_sname ? di.dli_sname : "a static function";
				file = di.dli_fname;
				off = (uintptr_t)t->ra - (uintptr_t)di.dli_fbase;
			}
			t_fail_at(__FILE__, __LINE__, "%s (N=%ld %s): a leak: %p allocated "
				  "in %s (%s+0x%lx) during iteration %u is still live",
				  phase, at, persist ? "persistent" : "once", t->p, fn,
				  file, (unsigned long)off, t->iter);
		}
	}
	if (track_overflow)
		t_fail_at(__FILE__, __LINE__, "%s: the leak table overflowed", phase);
	atomic_flag_clear(&track_lock);
	return live;
}

/* ---- outcomes ------------------------------------------------------------------- */

struct tally {
	unsigned ok, failed;
	int codes[8];
	unsigned count[8];
	char sample[8][160];
};

static void tally_add(struct tally *t, int rc, const char *msg)
{
	if (!rc) {
		t->ok++;
		return;
	}
	t->failed++;
	for (int i = 0; i < 8; i++) {
		if (t->count[i] && t->codes[i] != rc)
			continue;
		if (!t->count[i]) {
			t->codes[i] = rc;
			snprintf(t->sample[i], sizeof(t->sample[i]), "%s", msg);
		}
		t->count[i]++;
		return;
	}
}

static void tally_print(const char *what, const struct tally *t)
{
	printf("%s: %u succeeded, %u failed cleanly\n", what, t->ok, t->failed);
	for (int i = 0; i < 8 && t->count[i]; i++)
		printf("    %4u x %-10s e.g. \"%s\"\n", t->count[i],
		       strerror(-t->codes[i]), t->sample[i]);
}

/* A failure's promises: a negative errno, in err->code, with a message, and
 * no object. ENOMEM, or EAGAIN from pthread_create, are the honest codes; a
 * bad-file code (EINVAL, EBADMSG...) for a failed allocation would send the
 * user after a file that is fine. */
static void check_failure(const char *phase, long at, bool persist, int rc,
			  const struct ms_err *err, const void *obj)
{
	const char *mode = persist ? "persistent" : "once";
	T_CHECK(rc < 0, "%s (N=%ld %s): rc %d", phase, at, mode, rc);
	T_CHECK(err->code == rc, "%s (N=%ld %s): err.code %d, rc %d", phase, at,
		mode, err->code, rc);
	T_CHECK(err->msg[0], "%s (N=%ld %s): rc %d without a message", phase, at,
		mode, rc);
	T_CHECK(!obj, "%s (N=%ld %s): an object left after a failure", phase, at,
		mode);
	T_CHECK(rc == -ENOMEM || rc == -EAGAIN,
		"%s (N=%ld %s): out of memory reported as %s: '%s'", phase, at, mode,
		strerror(-rc), err->msg);
}

static long only_at;       /* MS_OOM_N: just this N */
static bool only_persist;

/* Whether this (N, mode) is to run (MS_OOM_N). */
static bool want(long at, int p)
{
	return !only_at || (at == only_at && p == only_persist);
}

static int fd_count(void)
{
	return dt_fd_count(getpid());
}

static long step = 1;
static const char *model_path;
static struct ms_model *ref_model; /* opened without injection */

/* ---- A: model loading -------------------------------------------------------------- */

static void phase_model(void)
{
	struct ms_err err = { 0 };
	struct ms_model *m = NULL;
	arm(0, false);
	int rc = ms_model_open(&m, model_path, &err);
	long K = disarm();
	if (rc)
		t_fatal("model: %s", err.msg);
	ms_model_free(m);
	printf("A. ms_model_open: K = %ld allocations\n", K);

	struct tally tl[2] = { { 0 } };
	for (int p = 0; p < 2; p++)
		for (long at = 1; at <= K + 2; at += step) {
			if (!want(at, p))
				continue;
			int fds = fd_count();
			m = NULL;
			memset(&err, 0, sizeof(err));
			track_start((uint32_t)at);
			arm(at, p);
			rc = ms_model_open(&m, model_path, &err);
			disarm();
			if (rc) {
				check_failure("model", at, p, rc, &err, m);
			} else {
				T_CHECK(at > K || !p, "model (N=%ld persistent): opened "
					"with every allocation from %ld on failing", at, at);
				T_CHECK(m->n_layers == ref_model->n_layers &&
					m->expert_bytes == ref_model->expert_bytes,
					"model (N=%ld): opened with %u layers, %llu expert "
					"bytes", at, m->n_layers,
					(unsigned long long)m->expert_bytes);
				ms_model_free(m);
			}
			tally_add(&tl[p], rc, err.msg);
			track_stop("model", at, p);
			T_CHECK(fd_count() == fds, "model (N=%ld %s): %d descriptors, "
				"%d before", at, p ? "persistent" : "once", fd_count(), fds);
		}
	tally_print("   once", &tl[0]);
	tally_print("   persistent", &tl[1]);
}

/* ---- B: cache and server setup ---------------------------------------------------------- */

/* One startup as moestreamd makes it (cache, then server), then a blocking
 * acquire checked against the file, then the teardown. */
static int start_once(const struct ms_config *cfg, struct ms_err *err,
		      void **leftover)
{
	struct ms_cache_config cc;
	struct ms_cache *cache = NULL;
	struct ms_server *srv = NULL;
	ms_config_to_cache(cfg, &cc);
	int rc = ms_cache_init(&cache, ref_model, &cc, err);
	if (rc) {
		*leftover = cache;
		return rc;
	}
	rc = ms_server_init(&srv, cfg, ref_model, cache, err);
	if (rc) {
		*leftover = srv;
		ms_cache_free(cache);
		return rc;
	}
	*leftover = NULL;
	/* The engine under the same injector: a load may fail, cleanly. */
	for (uint32_t e = 0; e < 2; e++) {
		struct ms_expert_loc loc;
		int r = ms_cache_acquire_wait(cache, 0, e, 5000, &loc);
		T_CHECK(r != -ETIMEDOUT, "startup: an acquire hung");
		if (!r)
			ms_cache_release(cache, 0, e);
	}
	struct ms_err e2 = { 0 };
	tl_exempt = true; /* the check allocates; it is not under test */
	T_CHECK(!ms_cache_check(cache, &e2), "startup: %s", e2.msg);
	tl_exempt = false;
	ms_server_stop(srv);
	ms_cache_free(cache);
	ms_server_free(srv);
	return 0;
}

static void phase_startup(void)
{
	struct ms_config cfg;
	ms_config_defaults(&cfg);
	char conf[512], sock[108];
	snprintf(conf, sizeof(conf), "%s/startup.conf", t_tmpdir());
	snprintf(sock, sizeof(sock), "%s/startup.sock", t_tmpdir());
	if (dt_write_config(conf, model_path, sock, NULL))
		t_fatal("cannot write %s", conf);
	struct ms_err err = { 0 };
	if (ms_config_load(&cfg, conf, true, &err))
		t_fatal("%s", err.msg);
	void *left;
	arm(0, false);
	int rc = start_once(&cfg, &err, &left);
	long K = disarm();
	if (rc)
		t_fatal("startup: %s", err.msg);
	printf("B. ms_cache_init + ms_server_init (+ 2 acquires): K = %ld "
	       "allocations\n", K);

	struct tally tl[2] = { { 0 } };
	for (int p = 0; p < 2; p++)
		for (long at = 1; at <= K + 2; at += step) {
			if (!want(at, p))
				continue;
			int fds = fd_count();
			memset(&err, 0, sizeof(err));
			track_start((uint32_t)at);
			arm(at, p);
			rc = start_once(&cfg, &err, &left);
			disarm();
			if (rc)
				check_failure("startup", at, p, rc, &err, left);
			tally_add(&tl[p], rc, err.msg);
			track_stop("startup", at, p);
			T_CHECK(fd_count() == fds, "startup (N=%ld %s): %d descriptors, "
				"%d before", at, p ? "persistent" : "once", fd_count(), fds);
			struct stat st;
			T_CHECK(stat(sock, &st) != 0, "startup (N=%ld): the socket file "
				"is left behind", at);
		}
	tally_print("   once", &tl[0]);
	tally_print("   persistent", &tl[1]);
}

/* ---- C: request handling ----------------------------------------------------------------- */

static struct ip_server srv;
static uint8_t *fbuf;

/* What a client saw, per step. */
enum { S_CONNECT, S_ACQUIRE, S_RELEASE, S_PREFETCH, S_STATS, S_PING, N_STEPS };
static const char *const step_name[] = { "HELLO", "ACQUIRE", "RELEASE",
					 "PREFETCH", "STATS", "PING" };
static unsigned seen_ok[N_STEPS], seen_err[N_STEPS], seen_closed[N_STEPS];
static int seen_code[N_STEPS];

static bool is_closed(int rc)
{
	return rc == -ENOTCONN || rc == -ECONNRESET || rc == -EPIPE;
}

static void record(int st, int rc, struct ms_client *c, long at, bool persist)
{
	if (!rc) {
		seen_ok[st]++;
	} else if (is_closed(rc)) {
		seen_closed[st]++;
	} else {
		seen_err[st]++;
		seen_code[st] = rc;
		/* an error the user can read, not a bare code */
		T_CHECK(!c || (st != S_STATS && st != S_PING) ||
			*ms_client_last_error(c),
			"requests (N=%ld %s): %s failed (%s) without a message",
			at, persist ? "persistent" : "once", step_name[st],
			strerror(-rc));
	}
}

/* A STATS answer is whole or an error: never an object with keys missing. */
static void check_stats(const char *json, long at, bool persist)
{
	cJSON *o = cJSON_Parse(json);
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pinned_entries");
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "load_latency_us_log2");
	T_CHECK(o && cJSON_IsNumber(p) && cJSON_IsArray(h) &&
		cJSON_GetArraySize(h) == 24,
		"requests (N=%ld %s): STATS answered with a partial object: %.200s",
		at, persist ? "persistent" : "once", json);
	cJSON_Delete(o);
}

/* The bytes of (layer, expert) as the client sees them equal the file's. */
static bool expert_ok(const struct ms_client_expert *g, uint32_t layer,
		      uint32_t expert)
{
	const struct ms_extent *x = ms_model_expert(ref_model, layer, expert);
	if (!x || g->n_proj != ref_model->layers[layer].n_proj)
		return false;
	for (uint32_t j = 0; j < g->n_proj; j++)
		if (g->len[j] != x[j].bytes ||
		    pread(ref_model->shards[x[j].shard]->fd, fbuf, x[j].bytes,
			  (off_t)x[j].offset) != (ssize_t)x[j].bytes ||
		    memcmp(fbuf, g->proj[j], x[j].bytes))
			return false;
	return true;
}

/* The script, under the injector: every step answered, never a timeout. */
static void script(long at, bool persist, uint32_t it)
{
	const char *mode = persist ? "persistent" : "once";
	struct ms_err err = { 0 };
	struct ms_client *c = NULL;
	int rc = ms_client_connect(&c, srv.sock, "oom", &err);
	record(S_CONNECT, rc, NULL, at, persist);
	T_CHECK(rc != -ETIMEDOUT, "requests (N=%ld %s): HELLO timed out", at, mode);
	if (rc)
		return;
	uint32_t layer = it % ref_model->n_layers, block = ref_model->layers[layer].block;
	uint16_t ex[4];
	for (int i = 0; i < 4; i++)
		ex[i] = (uint16_t)((it * 4 + (uint32_t)i) % ref_model->n_expert);
	struct ms_client_expert got[4];
	memset(got, 0, sizeof(got));
	rc = ms_client_acquire(c, block, ex, 4, got, 5000);
	record(S_ACQUIRE, rc, c, at, persist);
	T_CHECK(rc != -ETIMEDOUT, "requests (N=%ld %s): ACQUIRE got no answer in 5 "
		"s (a hung request)", at, mode);
	uint16_t held[4];
	unsigned nh = 0;
	for (int i = 0; i < 4; i++) {
		if (got[i].status || is_closed(rc) || rc == -ETIMEDOUT)
			continue;
		T_CHECK(expert_ok(&got[i], layer, ex[i]), "requests (N=%ld %s): "
			"block %u expert %u: wrong bytes", at, mode, block, ex[i]);
		held[nh++] = ex[i];
	}
	if (nh) {
		rc = ms_client_release(c, block, held, nh);
		record(S_RELEASE, rc, c, at, persist);
	}
	uint32_t next = ref_model->layers[(layer + 1) % ref_model->n_layers].block;
	rc = ms_client_prefetch(c, next, ex, NULL, 4);
	record(S_PREFETCH, rc, c, at, persist);
	char *json = NULL;
	rc = ms_client_stats(c, &json, 5000);
	record(S_STATS, rc, c, at, persist);
	T_CHECK(rc != -ETIMEDOUT, "requests (N=%ld %s): STATS got no answer in 5 s",
		at, mode);
	if (!rc)
		check_stats(json, at, persist);
	free(json);
	rc = ms_client_ping(c, 5000);
	record(S_PING, rc, c, at, persist);
	T_CHECK(rc != -ETIMEDOUT, "requests (N=%ld %s): PING got no answer in 5 s",
		at, mode);
	ms_client_close(c);
}

/* After the injector: a fresh client is served in full, and the pins of
 * the clients that left come back. */
static void health(long at, bool persist, uint32_t it)
{
	const char *mode = persist ? "persistent" : "once";
	T_CHECK(ip_alive(&srv), "requests (N=%ld %s): the server's loop ended", at,
		mode);
	struct ms_err err = { 0 };
	struct ms_client *c = NULL;
	int rc = ms_client_connect(&c, srv.sock, "health", &err);
	T_CHECK(!rc, "requests (N=%ld %s): the server no longer accepts: %s", at,
		mode, err.msg);
	if (rc)
		return;
	uint32_t layer = (it + 1) % ref_model->n_layers;
	uint16_t ex[4];
	for (int i = 0; i < 4; i++)
		ex[i] = (uint16_t)((it * 4 + 7 + (uint32_t)i) % ref_model->n_expert);
	struct ms_client_expert got[4];
	rc = ms_client_acquire(c, ref_model->layers[layer].block, ex, 4, got, 5000);
	T_CHECK(!rc, "requests (N=%ld %s): after the injector, ACQUIRE: %s", at,
		mode, strerror(-rc));
	if (!rc) {
		for (int i = 0; i < 4; i++)
			T_CHECK(expert_ok(&got[i], layer, ex[i]), "requests (N=%ld %s): "
				"after the injector, expert %u: wrong bytes", at, mode,
				ex[i]);
		ms_client_release(c, ref_model->layers[layer].block, ex, 4);
	}
	rc = ms_client_ping(c, 5000);
	T_CHECK(!rc, "requests (N=%ld %s): after the injector, PING: %s", at, mode,
		strerror(-rc));
	double last = NAN;
	int64_t ms = dt_stat_wait(c, "pinned_entries", dt_eq, 0, 2000, &last);
	T_CHECK(ms >= 0, "requests (N=%ld %s): %g entries still pinned 2 s after "
		"every client released or left", at, mode, last);
	ms_client_close(c);
	struct ms_err e2 = { 0 };
	T_CHECK(!ms_cache_check(srv.cache, &e2), "requests (N=%ld %s): %s", at, mode,
		e2.msg);
}

static void phase_requests(void)
{
	struct ms_err err = { 0 };
	tl_exempt = true; /* from now on this thread is a client */
	fbuf = malloc(ref_model->expert_bytes_max);
	int fds = fd_count();
	/* 64 MiB of cache for 163 MB of experts: acquires miss and evict. */
	if (ip_start(&srv, "oom", model_path, "[prefetch]\npolicy = auto\n", NULL,
		     &err))
		t_fatal("server: %s", err.msg);
	/* Warm up: whatever libc sets up once (stdio, time zone) is not ours. */
	script(0, false, 0);
	health(0, false, 0);
	memset(seen_ok, 0, sizeof(seen_ok));
	memset(seen_err, 0, sizeof(seen_err));
	memset(seen_closed, 0, sizeof(seen_closed));

	track_start(0);
	arm(0, false);
	script(0, false, 1);
	long K = disarm();
	health(0, false, 1);
	printf("C. requests (HELLO, ACQUIRE x4, RELEASE, PREFETCH, STATS, PING, "
	       "close): K = %ld allocations in the server\n", K);

	uint32_t it = 2;
	unsigned runs = 0;
	for (int p = 0; p < 2; p++)
		for (long at = 1; at <= K + 2; at += step, it++) {
			if (!want(at, p))
				continue;
			track_set_iter(it);
			arm(at, p);
			script(at, p, it);
			disarm();
			health(at, p, it);
			runs++;
			if (t_failures > 20)
				t_fatal("too many failures; stopping");
		}
	printf("   %u scripts under the injector; what the clients saw (ok / "
	       "error / connection closed):\n", runs);
	for (int s = 0; s < N_STEPS; s++)
		printf("    %-8s %5u / %5u / %5u%s%s\n", step_name[s], seen_ok[s],
		       seen_err[s], seen_closed[s], seen_err[s] ? "  e.g. " : "",
		       seen_err[s] ? strerror(-seen_code[s]) : "");
	ip_stop(&srv, 0);
	unsigned long live = track_stop("requests", 0, false);
	printf("   after the teardown: %lu allocations of the phase still live, "
	       "%d descriptors (%d before the server)\n", live, fd_count(), fds);
	T_CHECK(fd_count() == fds, "requests: %d descriptors after the teardown, "
		"%d before the server", fd_count(), fds);
	free(fbuf);
	tl_exempt = false;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	ms_server_block_signals(NULL);
	debug = getenv("MS_OOM_DEBUG") != NULL;
	dt_watchdog(240, "t_oom");
	tracks = calloc(TRACK_SLOTS, sizeof(*tracks));
	if (!tracks)
		t_fatal("out of memory");
	const char *s = getenv("MS_OOM_STEP");
	if (s && atol(s) > 0)
		step = atol(s);
	const char *only = getenv("MS_OOM_ONLY");
	const char *one = getenv("MS_OOM_N"); /* one N: "12" or "12p" */
	if (one && *one) {
		only_at = atol(one);
		only_persist = strchr(one, 'p') != NULL;
	}
	ms_log_threshold = MS_LOG_ERR; /* the failures' messages are checked */

	model_path = dt_model("oom.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&ref_model, model_path, &err))
		t_fatal("%s", err.msg);
	printf("model %s: %u MoE layers x %u experts, %llu bytes of experts\n",
	       model_path, ref_model->n_layers, ref_model->n_expert,
	       (unsigned long long)ref_model->expert_bytes);
	int64_t t0 = dt_now_ms();
	if (!only || strchr(only, 'A'))
		phase_model();
	if (!only || strchr(only, 'B'))
		phase_startup();
	if (!only || strchr(only, 'C'))
		phase_requests();
	ms_model_free(ref_model);
	printf("t_oom: %.1f s\n", (double)(dt_now_ms() - t0) / 1000.0);
	return t_done();
}
