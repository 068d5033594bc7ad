/*
 * t_memlimit.c - the memory promise: moestreamd under a cgroup memory limit
 * of its cache + 64 MiB, asked for twice the cache's worth of experts, is
 * never OOM-killed, keeps its budget, and answers overload with -EBUSY.
 *
 * The daemon (64 MiB cache over a model of 163 MB of experts) is started
 * inside a fresh memory cgroup limited to 128 MiB: cgroup v1
 * (/sys/fs/cgroup/memory: memory.limit_in_bytes, cgroup.procs,
 * memory.oom_control) or v2 (memory.max, memory.events), as a child of this
 * process's own group. The test moves itself into the group just while the
 * daemon is forked, so that the daemon is inside from its first
 * allocation, and moves itself back. Needs root and a memory controller;
 * skips (77) otherwise, saying which.
 *
 * 1. Holding: 8 clients acquire 496 distinct experts (twice the 248 slots)
 *    in groups of 8 and release none. The first ones fill the cache; once
 *    every slot is pinned the rest must be answered -EBUSY after
 *    cache.acquire_timeout (300 ms here) - the defined answer to overload -
 *    never a timeout, never another error. At most as many experts as
 *    there are slots are ever granted.
 * 2. Streaming: every pin released, the same clients stream 2x the cache
 *    through it (acquire, release), so the cache evicts continuously.
 *
 * All along a sampler reads STATS (held_bytes <= budget_bytes) and the
 * group's usage. The whole is done twice, each daemon in a fresh group:
 * with O_DIRECT (io.direct = auto), and with buffered reads (io.direct =
 * off), where the page cache of the 163 MB model is charged to the group
 * too and must be reclaimed at the limit rather than end in an OOM kill. At the end: the daemon is alive, the group saw no OOM kill
 * (oom_control: oom_kill 0, under_oom 0; v2: memory.events oom_kill 0), the
 * peak usage is printed against the limit, the daemon still serves and
 * stops with exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemontest.h"

#define CACHE_MIB 64
#define LIMIT ((uint64_t)(CACHE_MIB + 64) << 20)
#define N_CLIENTS 8
#define GROUP 8

static struct ms_model *model;
static struct dt_daemon dmn;
static bool v2;
static char cg[512];        /* the group we made */
static char cg_home[512];   /* where this process was */
static uint64_t n_slots;

/* ---- cgroups -------------------------------------------------------------------- */

static int write_str(const char *dir, const char *file, const char *val)
{
	char p[700];
	snprintf(p, sizeof(p), "%s/%s", dir, file);
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, val, strlen(val));
	int e = errno;
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -e;
}

static char *read_str(const char *file)
{
	char p[700];
	snprintf(p, sizeof(p), "%s/%s", cg, file);
	return dt_slurp(p);
}

/* A number after `key` in a "key value" file, or -1. */
static long long keyed(const char *file, const char *key)
{
	char *t = read_str(file);
	long long v = -1;
	const char *p = t;
	size_t kl = strlen(key);
	while (p && *p) {
		if (!strncmp(p, key, kl) && p[kl] == ' ') {
			v = atoll(p + kl + 1);
			break;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	free(t);
	return v;
}

static long long number(const char *file)
{
	char *t = read_str(file);
	long long v = *t ? atoll(t) : -1;
	free(t);
	return v;
}

/* This process's group in the memory hierarchy (v1) or the unified one. */
static bool find_home(void)
{
	char *t = dt_slurp("/proc/self/cgroup");
	bool ok = false;
	struct stat st;
	const char *line = t;
	v2 = stat("/sys/fs/cgroup/memory/memory.limit_in_bytes", &st) != 0;
	while (line && *line) {
		const char *nl = strchr(line, '\n');
		size_t n = nl ? (size_t)(nl - line) : strlen(line);
		char buf[512];
		snprintf(buf, sizeof(buf), "%.*s", (int)n, line);
		char *c1 = strchr(buf, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (c1 && c2) {
			*c2 = '\0';
			const char *ctl = c1 + 1, *path = c2 + 1;
			if (!v2 && !strcmp(ctl, "memory")) {
				snprintf(cg_home, sizeof(cg_home),
					 "/sys/fs/cgroup/memory%s", path);
				ok = true;
			} else if (v2 && !*ctl && !strncmp(buf, "0", 1)) {
				snprintf(cg_home, sizeof(cg_home), "/sys/fs/cgroup%s",
					 path);
				ok = true;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	free(t);
	return ok;
}

static void cg_cleanup(void)
{
	if (!*cg)
		return;
	char me[32];
	snprintf(me, sizeof(me), "%d", (int)getpid());
	write_str(cg_home, "cgroup.procs", me);
	for (int i = 0; i < 50 && rmdir(cg) && errno == EBUSY; i++)
		dt_sleep_ms(20); /* the daemon is still leaving */
	cg[0] = '\0';
}

static void cg_make(void)
{
	if (geteuid() != 0)
		t_skip("needs root to make a memory cgroup");
	if (!find_home())
		t_skip("no memory cgroup controller for this process");
	snprintf(cg, sizeof(cg), "%s/ms-memlimit-%d", cg_home, (int)getpid());
	if (mkdir(cg, 0755)) {
		int e = errno;
		cg[0] = '\0';
		t_skip("cannot make a cgroup under %s: %s", cg_home, strerror(e));
	}
	char lim[32];
	snprintf(lim, sizeof(lim), "%llu", (unsigned long long)LIMIT);
	int rc = write_str(cg, v2 ? "memory.max" : "memory.limit_in_bytes", lim);
	if (rc)
		t_skip("cannot set the limit in %s: %s", cg, strerror(-rc));
	if (v2)
		write_str(cg, "memory.swap.max", "0");
	printf("cgroup %s (%s), limit %llu bytes (cache %d MiB + 64 MiB)\n", cg,
	       v2 ? "v2" : "v1", (unsigned long long)LIMIT, CACHE_MIB);
}

static long long usage(void)
{
	return number(v2 ? "memory.current" : "memory.usage_in_bytes");
}

static long long oom_kills(void)
{
	return v2 ? keyed("memory.events", "oom_kill")
		  : keyed("memory.oom_control", "oom_kill");
}

/* ---- load ----------------------------------------------------------------------- */

static atomic_ulong granted, busy, other, timeouts;
static atomic_bool sampling;
static atomic_llong peak_usage;
static atomic_ulong over_budget, samples;
static char first_other[256];

static void *sampler(void *arg)
{
	(void)arg;
	struct ms_err err = { 0 };
	struct ms_client *c = dt_connect(dmn.sock, "sampler", &err);
	while (c && atomic_load(&sampling)) {
		double held = dt_stat(c, "held_bytes"), budget = dt_stat(c, "budget_bytes");
		if (held > budget)
			atomic_fetch_add(&over_budget, 1);
		long long u = usage();
		if (u > atomic_load(&peak_usage))
			atomic_store(&peak_usage, u);
		atomic_fetch_add(&samples, 1);
		dt_sleep_ms(20);
	}
	ms_client_close(c);
	return NULL;
}

struct job {
	unsigned id;
	bool hold;              /* part 1: keep every pin */
	struct ms_client *c;
};

/* Client `id` asks for its share of 2 x slots distinct experts. */
static void *client_main(void *arg)
{
	struct job *j = arg;
	uint64_t total = 2 * n_slots, share = total / N_CLIENTS;
	uint64_t first = j->id * share, n_all = (uint64_t)model->n_layers * model->n_expert;
	uint64_t base = j->hold ? 0 : n_all / 2; /* streaming: other experts */
	for (uint64_t k = 0; k < share;) {
		/* up to GROUP experts of one layer, distinct across clients */
		uint16_t ex[GROUP];
		uint64_t idx = (base + first + k) % n_all;
		uint32_t layer = (uint32_t)(idx / model->n_expert);
		unsigned n = 0;
		while (n < GROUP && k < share &&
		       (idx = (base + first + k) % n_all) / model->n_expert == layer) {
			ex[n++] = (uint16_t)(idx % model->n_expert);
			k++;
		}
		struct ms_client_expert got[GROUP];
		uint32_t block = model->layers[layer].block;
		int rc = ms_client_acquire(j->c, block, ex, n, got, 20000);
		if (rc == -ETIMEDOUT) {
			atomic_fetch_add(&timeouts, 1);
			continue;
		}
		uint16_t held[GROUP];
		unsigned nh = 0;
		for (unsigned i = 0; i < n; i++) {
			if (!got[i].status) {
				atomic_fetch_add(&granted, 1);
				held[nh++] = ex[i];
			} else if (got[i].status == -EBUSY) {
				atomic_fetch_add(&busy, 1);
			} else {
				atomic_fetch_add(&other, 1);
				snprintf(first_other, sizeof(first_other),
					 "block %u expert %u: %s", block, ex[i],
					 strerror(-got[i].status));
			}
		}
		if (!j->hold && nh)
			ms_client_release(j->c, block, held, nh);
	}
	return NULL;
}

static void run_part(struct job *jobs, bool hold)
{
	atomic_store(&granted, 0);
	atomic_store(&busy, 0);
	atomic_store(&other, 0);
	atomic_store(&timeouts, 0);
	pthread_t th[N_CLIENTS];
	int64_t t0 = dt_now_ms();
	for (unsigned i = 0; i < N_CLIENTS; i++) {
		jobs[i].hold = hold;
		if (pthread_create(&th[i], NULL, client_main, &jobs[i]))
			t_fatal("pthread_create");
	}
	for (unsigned i = 0; i < N_CLIENTS; i++)
		pthread_join(th[i], NULL);
	/* each client asks for its whole share of 2 x slots (client_main) */
	uint64_t asked = 2 * n_slots / N_CLIENTS * N_CLIENTS;
	printf("%s: %llu experts asked in %.1f s: %lu granted, %lu -EBUSY, %lu "
	       "other errors, %lu timed out\n",
	       hold ? "holding (nothing released)" : "streaming (acquire, release)",
	       (unsigned long long)asked,
	       (double)(dt_now_ms() - t0) / 1000.0, atomic_load(&granted),
	       atomic_load(&busy), atomic_load(&other), atomic_load(&timeouts));
	T_CHECK(!atomic_load(&other), "an answer other than ready or -EBUSY: %s",
		first_other);
	T_CHECK(!atomic_load(&timeouts), "%lu acquires got no answer in 20 s",
		atomic_load(&timeouts));
	if (hold) {
		T_CHECK(atomic_load(&granted) <= n_slots, "%lu experts granted and "
			"held with %llu slots", atomic_load(&granted),
			(unsigned long long)n_slots);
		T_CHECK(atomic_load(&busy) >= n_slots - (n_slots / 8),
			"twice the cache asked and held, but only %lu -EBUSY answers",
			atomic_load(&busy));
	} else {
		T_CHECK(atomic_load(&granted) == asked && !atomic_load(&busy),
			"streaming with nothing held: %lu granted, %lu -EBUSY of %llu",
			atomic_load(&granted), atomic_load(&busy),
			(unsigned long long)asked);
	}
}

/* One daemon in the group, both parts, the verdict. `direct`: [io] direct. */
static void one_daemon(const char *path, const char *direct)
{
	struct ms_err err = { 0 };
	/* A fresh group per daemon: the kernel's peak and counters are its. */
	cg_make();
	/* The daemon starts inside the group: this process joins it for the
	 * fork and leaves again. */
	char me[32];
	snprintf(me, sizeof(me), "%d", (int)getpid());
	int rc = write_str(cg, "cgroup.procs", me);
	if (rc)
		t_skip("cannot join %s: %s", cg, strerror(-rc));
	char extra[256];
	snprintf(extra, sizeof(extra), "[cache]\nacquire_timeout = 300\n"
		 "[io]\ndirect = %s\n[prefetch]\npolicy = none\n", direct);
	char name[32];
	snprintf(name, sizeof(name), "memlimit-%s", direct);
	dt_daemon_init(&dmn, name);
	if (dt_write_config(dmn.conf, path, dmn.sock, extra))
		t_fatal("cannot write the configuration");
	rc = dt_daemon_start(&dmn, NULL, 0);
	write_str(cg_home, "cgroup.procs", me);
	if (rc)
		t_fatal("the daemon did not start inside the cgroup");

	struct ms_client *mon = dt_connect(dmn.sock, "monitor", &err);
	if (!mon)
		t_fatal("%s", err.msg);
	n_slots = (uint64_t)dt_stat(mon, "slots");
	printf("[io] direct = %s: daemon pid %d in the group; %llu slots, budget "
	       "%.0f bytes, O_DIRECT %s; usage after start %lld bytes\n", direct,
	       (int)dmn.pid, (unsigned long long)n_slots,
	       dt_stat(mon, "budget_bytes"),
	       dt_stat(mon, "io_direct") ? "on" : "off", usage());

	struct job jobs[N_CLIENTS];
	for (unsigned i = 0; i < N_CLIENTS; i++) {
		jobs[i].id = i;
		jobs[i].c = dt_connect(dmn.sock, "load", &err);
		if (!jobs[i].c)
			t_fatal("client %u: %s", i, err.msg);
	}
	atomic_store(&peak_usage, 0);
	atomic_store(&samples, 0);
	atomic_store(&over_budget, 0);
	atomic_store(&sampling, true);
	pthread_t sth;
	pthread_create(&sth, NULL, sampler, NULL);

	run_part(jobs, true);
	for (unsigned i = 0; i < N_CLIENTS; i++) { /* drop every pin */
		ms_client_close(jobs[i].c);
		jobs[i].c = dt_connect(dmn.sock, "load", &err);
		if (!jobs[i].c)
			t_fatal("client %u: %s", i, err.msg);
	}
	double last = NAN;
	T_CHECK(dt_stat_wait(mon, "pinned_entries", dt_eq, 0, 1000, &last) >= 0,
		"%g entries pinned after the holders left", last);
	run_part(jobs, false);

	atomic_store(&sampling, false);
	pthread_join(sth, NULL);
	for (unsigned i = 0; i < N_CLIENTS; i++)
		ms_client_close(jobs[i].c);

	long long kills = oom_kills(), peak = atomic_load(&peak_usage);
	long long maxu = v2 ? number("memory.peak") : number("memory.max_usage_in_bytes");
	long long under = v2 ? 0 : keyed("memory.oom_control", "under_oom");
	long long fail = v2 ? keyed("memory.events", "max") : number("memory.failcnt");
	printf("group: peak usage %lld bytes sampled, %lld recorded by the kernel, "
	       "limit %llu (%.0f%%); limit hit %lld times (reclaim); OOM kills %lld, "
	       "under_oom %lld; %lu samples, held_bytes over budget in %lu\n",
	       peak, maxu, (unsigned long long)LIMIT,
	       100.0 * (double)(maxu > 0 ? maxu : peak) / (double)LIMIT, fail, kills,
	       under, atomic_load(&samples), atomic_load(&over_budget));
	T_CHECK(dt_daemon_alive(&dmn), "the daemon died under the limit");
	T_CHECK(kills == 0 && under <= 0, "the group saw OOM: oom_kill %lld, "
		"under_oom %lld", kills, under);
	T_CHECK(!atomic_load(&over_budget), "held_bytes exceeded budget_bytes in %lu "
		"samples", atomic_load(&over_budget));
	uint16_t ex[2] = { 3, 4 };
	struct ms_client_expert got[2];
	rc = ms_client_acquire(mon, model->layers[1].block, ex, 2, got, 5000);
	T_CHECK(!rc, "after the load, ACQUIRE: %s", strerror(-rc));
	if (!rc)
		ms_client_release(mon, model->layers[1].block, ex, 2);
	ms_client_close(mon);
	T_EQ_U64(dt_stop(&dmn), 0);
	cg_cleanup();
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	atexit(cg_cleanup); /* runs after daemontest's: the daemon is gone */
	dt_watchdog(150, "t_memlimit");
	const char *path = dt_model("memlimit.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, path, &err))
		t_fatal("%s", err.msg);
	one_daemon(path, "auto");
	/* Buffered reads: the page cache is charged to the group too and
	 * must be reclaimed, not answered with the OOM killer. */
	one_daemon(path, "off");
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
