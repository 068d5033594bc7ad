/*
 * bench_rpc.c - `moestream bench rpc`: the cost of talking to moestreamd
 * when the data is already there, measured against issue 6's figures:
 *
 *   round trip of ACQUIRE+RELEASE on a resident expert: p99 <= 20 us;
 *   64 clients together: >= 200k acquire+release per second on hits.
 *
 * What is measured, and why so:
 *  - PING round trips first, on the same connection: the floor that the
 *    socket, two context switches and the event loop set; an acquire can
 *    only add to it.
 *  - One client, N times: RELEASE of the previous expert, then ACQUIRE of
 *    the next, timed from before the release to the acquire's answer.
 *    RELEASE has no reply, so timing it alone would time a send(); taken
 *    with the next acquire, the daemon has handled both when the answer
 *    comes (one connection is served in order). That is one ACQUIRE+RELEASE
 *    round trip as an engine pays it, once per layer.
 *  - C clients (threads, one connection each) loop acquire(1 random expert)
 *    + release for S seconds; the figure is pairs per second over all.
 * The experts are a fixed set (64 by default, spread over the layers that
 * run) loaded before the clock starts and small enough to stay resident;
 * the daemon's miss counter over the measured phases is reported, so a
 * figure polluted by disk reads says so.
 *
 * With --model the benchmark runs its own moestreamd (bench_daemon_start:
 * a private socket and config in a fresh folder, prefetch off, the cache
 * sized for the set); with --socket it measures a running daemon, whose
 * other clients then share the figures. A benchmark is not a test: the
 * targets are printed as met or missed, and the exit code says only whether
 * the measurement ran.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench_rpc.h"
#include "moestream/moestream.h"
#include "replay.h"
#include "tools.h"

#define CMD "bench rpc"
#define TARGET_RTT_P99_US 20.0
#define TARGET_PAIRS_PER_S 200000.0
#define MAX_CLIENTS 1024
#define SAMPLES_TOTAL (1u << 22) /* acquire latencies kept, all threads */
#define MIN_CACHE (64ull << 20)

/* ---- a private daemon ---------------------------------------------------- */

const char *bench_moestreamd_path(char *buf, size_t len)
{
	const char *env = getenv("MOESTREAMD");
	if (env && *env) {
		snprintf(buf, len, "%s", env);
		return buf;
	}
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			snprintf(buf, len, "%s/moestreamd", self);
			if (!access(buf, X_OK))
				return buf;
			snprintf(buf, len, "%s/../moestreamd", self);
			if (!access(buf, X_OK))
				return buf;
		}
	}
	snprintf(buf, len, "moestreamd");
	return buf;
}

/* The last non-empty line of a file, for messages ("" if none). */
static void last_line(const char *path, char *buf, size_t len)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char line[1024];
	while (fgets(line, sizeof(line), f)) {
		size_t n = strlen(line);
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n)
			snprintf(buf, len, "%s", line);
	}
	fclose(f);
}

int bench_daemon_start(struct bench_daemon *d, const struct bench_daemon_opts *o,
		       struct ms_err *err)
{
	memset(d, 0, sizeof(*d));
	if (o->dir) {
		snprintf(d->dir, sizeof(d->dir), "%s", o->dir);
		if (mkdir(d->dir, 0700) && errno != EEXIST)
			return ms_err_set(err, -errno, "cannot make %s: %s", d->dir,
					  strerror(errno));
	} else {
		const char *tmp = getenv("TMPDIR");
		snprintf(d->dir, sizeof(d->dir), "%s/moestream-bench-XXXXXX",
			 tmp && *tmp && strlen(tmp) < 60 ? tmp : "/tmp");
		if (!mkdtemp(d->dir))
			return ms_err_set(err, -errno, "cannot make a folder %s: %s",
					  d->dir, strerror(errno));
		d->own_dir = true;
	}
	int n = snprintf(d->socket, sizeof(d->socket), "%s/moestreamd.sock", d->dir);
	if (n < 0 || (size_t)n >= sizeof(d->socket)) {
		int rc = ms_err_set(err, -ENAMETOOLONG,
				    "%s/moestreamd.sock is longer than a Unix socket "
				    "path may be (107 bytes)",
				    d->dir);
		bench_daemon_stop(d, NULL);
		return rc;
	}
	snprintf(d->conf, sizeof(d->conf), "%s/moestreamd.conf", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/moestreamd.log", d->dir);
	bench_moestreamd_path(d->exe, sizeof(d->exe));

	uint64_t cache = o->cache_bytes < MIN_CACHE ? MIN_CACHE : o->cache_bytes;
	uint64_t mib = (cache + (1u << 20) - 1) >> 20;
	/* mlock needs CAP_IPC_LOCK or a big enough RLIMIT_MEMLOCK; a benchmark
	 * of hits is no worse for an unlocked cache on an idle machine. */
	struct rlimit rl;
	d->locked = geteuid() == 0 ||
		    (!getrlimit(RLIMIT_MEMLOCK, &rl) &&
		     (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= (mib << 20)));
	FILE *f = fopen(d->conf, "w");
	if (!f) {
		int rc = ms_err_set(err, -errno, "cannot write %s: %s", d->conf,
				    strerror(errno));
		bench_daemon_stop(d, NULL);
		return rc;
	}
	fprintf(f,
		"# written by moestream for a benchmark; removed when it ends\n"
		"[model]\npath = %s\n"
		"[socket]\npath = %s\nmode = 0600\nmax_clients = %u\n"
		"[cache]\nsize = %lluM\nlock = %s\n"
		"[prefetch]\npolicy = %s\n"
		"[log]\nlevel = %s\n%s",
		o->model, d->socket, o->max_clients ? o->max_clients : 64,
		(unsigned long long)mib, d->locked ? "true" : "false",
		o->prefetch ? o->prefetch : "none",
		o->log_level ? o->log_level : "notice", o->extra ? o->extra : "");
	if (fclose(f)) {
		int rc = ms_err_set(err, -EIO, "cannot write %s", d->conf);
		bench_daemon_stop(d, NULL);
		return rc;
	}

	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		int rc = ms_err_set(err, -errno, "fork: %s", strerror(errno));
		bench_daemon_stop(d, NULL);
		return rc;
	}
	if (pid == 0) {
		/* Dies with us: a killed benchmark leaves no daemon behind. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		int lfd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (lfd >= 0) {
			dup2(lfd, 1);
			dup2(lfd, 2);
		}
		if (nul >= 0)
			dup2(nul, 0);
		execlp(d->exe, "moestreamd", "-f", "-c", d->conf, (char *)NULL);
		dprintf(2, "cannot run %s: %s (set MOESTREAMD=PATH)\n", d->exe,
			strerror(errno));
		_exit(127);
	}
	d->pid = pid;
	double t_end = tool_now_s() + 120;
	for (;;) {
		int st;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w == pid) {
			char line[512];
			d->pid = 0;
			last_line(d->log, line, sizeof(line));
			int rc = ms_err_set(err, -ECHILD, "moestreamd (%s) exited during "
							  "start (%s %d): %s",
					    d->exe, WIFEXITED(st) ? "status" : "signal",
					    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
					    *line ? line : "no message");
			bench_daemon_stop(d, NULL);
			return rc;
		}
		struct ms_client *c;
		if (!ms_client_connect(&c, d->socket, "bench-probe", NULL)) {
			ms_client_close(c);
			return 0;
		}
		if (tool_now_s() > t_end) {
			int rc = ms_err_set(err, -ETIMEDOUT,
					    "moestreamd did not answer on %s in 120 s "
					    "(log: %s)",
					    d->socket, d->log);
			bench_daemon_stop(d, NULL);
			return rc;
		}
		tool_sleep_ms(20);
	}
}

int bench_daemon_stop(struct bench_daemon *d, struct ms_err *err)
{
	int rc = 0;
	if (d->pid > 0) {
		int st = 0;
		kill(d->pid, SIGTERM);
		double t_end = tool_now_s() + 30;
		pid_t w;
		while ((w = waitpid(d->pid, &st, WNOHANG)) == 0 && tool_now_s() < t_end)
			tool_sleep_ms(10);
		if (w == 0) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			rc = ms_err_set(err, -ECHILD, "moestreamd (pid %d) did not stop "
						      "in 30 s of SIGTERM; killed",
					(int)d->pid);
		} else if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
			char line[512];
			last_line(d->log, line, sizeof(line));
			rc = ms_err_set(err, -ECHILD, "moestreamd exited with %s %d: %s",
					w > 0 && WIFSIGNALED(st) ? "signal" : "status",
					w > 0 && WIFSIGNALED(st) ? WTERMSIG(st)
								 : WEXITSTATUS(st),
					*line ? line : "no message");
		}
		d->pid = 0;
	}
	if (d->own_dir && *d->dir) {
		unlink(d->socket);
		unlink(d->conf);
		if (!rc)
			unlink(d->log); /* kept to read when something went wrong */
		if (!rmdir(d->dir))
			d->own_dir = false;
	}
	return rc;
}

/* ---- measuring ------------------------------------------------------------ */

struct pick {
	uint32_t block;
	uint16_t expert;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

struct dist {
	uint64_t n;
	double p50, p90, p99, p999, mean, max;
};

/* Sorts v[n] (us) and takes nearest-rank percentiles. */
static void dist_of(float *v, uint64_t n, struct dist *d)
{
	memset(d, 0, sizeof(*d));
	d->n = n;
	if (!n)
		return;
	qsort(v, n, sizeof(*v), cmp_float);
	double sum = 0;
	for (uint64_t i = 0; i < n; i++)
		sum += v[i];
	const double p[4] = { 0.50, 0.90, 0.99, 0.999 };
	double *out[4] = { &d->p50, &d->p90, &d->p99, &d->p999 };
	for (int i = 0; i < 4; i++) {
		double r = ceil(p[i] * (double)n);
		uint64_t k = r < 1 ? 0 : (uint64_t)r - 1;
		*out[i] = v[k < n ? k : n - 1];
	}
	d->mean = sum / (double)n;
	d->max = v[n - 1];
}

/* The start line: every client connected before the clock starts. */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t ready;
	bool go;
};

struct worker {
	pthread_t th;
	bool ping_only;          /* the baseline: PING round trips only */
	const char *socket;
	const struct pick *set;
	uint32_t n_set;
	uint64_t seed;
	struct gate *start;
	double seconds;
	atomic_int *failed;
	/* out */
	int rc;
	char msg[256];
	uint64_t pairs;
	double t_begin, t_end;
	float *lat;              /* the first `cap` acquire latencies (us) */
	uint64_t n_lat, cap;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ms_client *c = NULL;
	struct ms_err err = { 0 };
	int rc = ms_client_connect(&c, w->socket, "bench-rpc", &err);
	if (rc) {
		w->rc = rc;
		snprintf(w->msg, sizeof(w->msg), "%s", err.msg);
		atomic_store(w->failed, 1);
	}
	pthread_mutex_lock(&w->start->mu);
	w->start->ready++;
	pthread_cond_broadcast(&w->start->cv);
	while (!w->start->go)
		pthread_cond_wait(&w->start->cv, &w->start->mu);
	pthread_mutex_unlock(&w->start->mu);
	if (rc || atomic_load(w->failed))
		goto out;
	uint64_t s = w->seed | 1;
	w->t_begin = tool_now_s();
	double end = w->t_begin + w->seconds, t = w->t_begin;
	struct ms_client_expert got;
	while (t < end) {
		const struct pick *p = &w->set[xorshift(&s) % w->n_set];
		if (w->ping_only) {
			if ((rc = ms_client_ping(c, 60000))) {
				w->rc = rc;
				snprintf(w->msg, sizeof(w->msg), "ping failed: %s",
					 strerror(-rc));
				break;
			}
			w->pairs++;
			t = tool_now_s();
			continue;
		}
		rc = ms_client_acquire(c, p->block, &p->expert, 1, &got, 60000);
		double t1 = tool_now_s();
		if (rc) {
			w->rc = rc;
			snprintf(w->msg, sizeof(w->msg), "acquire of %u:%u failed: %s%s%s",
				 p->block, p->expert, strerror(-rc),
				 *ms_client_last_error(c) ? ": " : "",
				 ms_client_last_error(c));
			break;
		}
		if ((rc = ms_client_release(c, p->block, &p->expert, 1))) {
			w->rc = rc;
			snprintf(w->msg, sizeof(w->msg), "release failed: %s",
				 strerror(-rc));
			break;
		}
		if (w->n_lat < w->cap)
			w->lat[w->n_lat++] = (float)((t1 - t) * 1e6);
		w->pairs++;
		t = t1;
	}
	w->t_end = tool_now_s();
out:
	ms_client_close(c);
	return NULL;
}

struct rpc_result {
	uint32_t n_set;
	uint64_t expert_bytes;
	struct dist ping, rtt, load;
	uint32_t clients;
	double seconds;
	uint64_t pairs;
	double pairs_per_s;
	double pings_per_s;      /* the same clients doing PINGs only */
	bool have_misses;
	uint64_t misses_during;
};

/* The fixed set: n experts spread evenly over the layers that run. */
static int pick_set(const struct ms_client_model *m, uint32_t want,
		    struct pick **out, uint32_t *n_out, uint64_t *bytes)
{
	uint32_t run = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		run += !m->layers[l].nextn;
	if (!run || !m->n_expert)
		return -EINVAL;
	uint64_t total = (uint64_t)run * m->n_expert;
	uint32_t n = want < total ? want : (uint32_t)total;
	uint32_t per_layer = (n + run - 1) / run;
	uint32_t stride = m->n_expert / per_layer ? m->n_expert / per_layer : 1;
	struct pick *p = calloc(n, sizeof(*p));
	if (!p)
		return -ENOMEM;
	*bytes = 0;
	for (uint32_t i = 0, r = 0; i < n; i++) {
		uint32_t li = i % run, slot = i / run;
		/* the li-th layer that runs */
		uint32_t l = 0;
		for (r = 0;; l++)
			if (!m->layers[l].nextn && r++ == li)
				break;
		p[i].block = m->layers[l].block;
		p[i].expert = (uint16_t)((slot * stride) % m->n_expert);
		if (m->layers[l].expert_bytes > *bytes)
			*bytes = m->layers[l].expert_bytes;
	}
	*out = p;
	*n_out = n;
	return 0;
}

static int run_bench(const char *socket, uint32_t n_clients, double seconds,
		     uint64_t rounds, uint32_t want_set, struct rpc_result *res,
		     struct ms_err *err)
{
	memset(res, 0, sizeof(*res));
	struct ms_client *c = NULL;
	struct pick *set = NULL;
	float *ping = NULL, *rtt = NULL, *all = NULL;
	struct worker *w = NULL;
	int rc = ms_client_connect(&c, socket, "bench-rpc", err);
	if (rc)
		return rc;
	const struct ms_client_model *m = ms_client_model(c);
	if ((rc = pick_set(m, want_set, &set, &res->n_set, &res->expert_bytes))) {
		ms_err_set(err, rc, "the daemon's model has no MoE layer that runs");
		goto out;
	}
	/* Load the set, and see it stays: a second pass must not miss. */
	for (int pass = 0; pass < 2; pass++)
		for (uint32_t i = 0; i < res->n_set; i++) {
			struct ms_client_expert got;
			rc = ms_client_acquire(c, set[i].block, &set[i].expert, 1, &got,
					       120000);
			if (rc) {
				ms_err_set(err, rc, "warming %u:%u failed: %s%s%s",
					   set[i].block, set[i].expert, strerror(-rc),
					   *ms_client_last_error(c) ? ": " : "",
					   ms_client_last_error(c));
				goto out;
			}
			ms_client_release(c, set[i].block, &set[i].expert, 1);
		}
	struct replay_counters k0, k1;
	res->have_misses = !replay_read_counters(c, &k0, 10000, NULL);

	/* The floor: PING. */
	uint64_t n_ping = 20000;
	ping = malloc(n_ping * sizeof(*ping));
	rtt = malloc((rounds ? rounds : 1) * sizeof(*rtt));
	if (!ping || !rtt) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	/* Unmeasured first: wake the loop, fault in both ends' buffers. */
	for (int i = 0; i < 200; i++)
		if ((rc = ms_client_ping(c, 10000))) {
			ms_err_set(err, rc, "PING failed: %s", strerror(-rc));
			goto out;
		}
	double t_end = tool_now_s() + seconds / 4;
	uint64_t np = 0;
	for (; np < n_ping && (np < 100 || tool_now_s() < t_end); np++) {
		double t0 = tool_now_s();
		if ((rc = ms_client_ping(c, 10000))) {
			ms_err_set(err, rc, "PING failed: %s", strerror(-rc));
			goto out;
		}
		ping[np] = (float)((tool_now_s() - t0) * 1e6);
	}
	dist_of(ping, np, &res->ping);

	/* One client: RELEASE(previous) + ACQUIRE(next), timed together. */
	uint64_t s = 0x9e3779b97f4a7c15ull;
	struct ms_client_expert got;
	const struct pick *prev = &set[0];
	if ((rc = ms_client_acquire(c, prev->block, &prev->expert, 1, &got, 60000))) {
		ms_err_set(err, rc, "acquire failed: %s", strerror(-rc));
		goto out;
	}
	t_end = tool_now_s() + seconds;
	uint64_t nr = 0;
	for (; nr < rounds && (nr < 1000 || tool_now_s() < t_end); nr++) {
		const struct pick *p = &set[xorshift(&s) % res->n_set];
		double t0 = tool_now_s();
		ms_client_release(c, prev->block, &prev->expert, 1);
		rc = ms_client_acquire(c, p->block, &p->expert, 1, &got, 60000);
		double t1 = tool_now_s();
		if (rc) {
			ms_err_set(err, rc, "acquire of %u:%u failed: %s%s%s", p->block,
				   p->expert, strerror(-rc),
				   *ms_client_last_error(c) ? ": " : "",
				   ms_client_last_error(c));
			goto out;
		}
		rtt[nr] = (float)((t1 - t0) * 1e6);
		prev = p;
	}
	ms_client_release(c, prev->block, &prev->expert, 1);
	ms_client_ping(c, 10000); /* the release is in */
	dist_of(rtt, nr, &res->rtt);
	/* The daemon may allow just max_clients connections: ours goes. */
	ms_client_close(c);
	c = NULL;

	/* C clients at once. */
	uint64_t cap = SAMPLES_TOTAL / n_clients;
	w = calloc(n_clients, sizeof(*w));
	all = malloc((size_t)n_clients * cap * sizeof(*all));
	if (!w || !all) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for %u clients", n_clients);
		goto out;
	}
	/* Phase 0: the same clients doing PINGs only, the socket's own rate on
	 * this machine; phase 1: acquire + release. */
	for (int phase = 0; phase < 2; phase++) {
	memset(w, 0, n_clients * sizeof(*w));
	res->pairs = 0;
	struct gate gate = { .mu = PTHREAD_MUTEX_INITIALIZER,
			     .cv = PTHREAD_COND_INITIALIZER };
	atomic_int failed = 0;
	uint32_t started = 0;
	for (; started < n_clients; started++) {
		struct worker *x = &w[started];
		*x = (struct worker){ .socket = socket, .set = set, .n_set = res->n_set,
				      .ping_only = phase == 0,
				      .seed = 0x2545f4914f6cdd1dull * (started + 1),
				      .start = &gate, .seconds = seconds,
				      .failed = &failed, .cap = cap,
				      .lat = all + (size_t)started * cap };
		if ((rc = pthread_create(&x->th, NULL, worker_main, x))) {
			rc = -rc;
			break;
		}
	}
	if (started < n_clients)
		atomic_store(&failed, 1); /* the started ones go home at once */
	pthread_mutex_lock(&gate.mu);
	while (gate.ready < started)
		pthread_cond_wait(&gate.cv, &gate.mu);
	gate.go = true;
	pthread_cond_broadcast(&gate.cv);
	pthread_mutex_unlock(&gate.mu);
	double t_first = 1e300, t_last = 0;
	uint64_t n_lat = 0;
	int wrc = 0;
	const char *wmsg = NULL;
	for (uint32_t i = 0; i < started; i++) {
		pthread_join(w[i].th, NULL);
		if (w[i].rc && !wrc) {
			wrc = w[i].rc;
			wmsg = w[i].msg;
		}
		res->pairs += w[i].pairs;
		if (w[i].t_begin > 0 && w[i].t_begin < t_first)
			t_first = w[i].t_begin;
		if (w[i].t_end > t_last)
			t_last = w[i].t_end;
		memmove(all + n_lat, w[i].lat, w[i].n_lat * sizeof(*all));
		n_lat += w[i].n_lat;
	}
	if (started < n_clients) {
		ms_err_set(err, rc, "cannot start thread %u of %u: %s", started + 1,
			   n_clients, strerror(-rc));
		goto out;
	}
	if (wrc) {
		rc = ms_err_set(err, wrc, "a client failed: %s%s", wmsg,
				wrc == -ECONNRESET || wrc == -ENOTCONN
					? " (more clients than the daemon's "
					  "socket.max_clients?)"
					: "");
		goto out;
	}
	res->clients = n_clients;
	res->seconds = t_last > t_first ? t_last - t_first : 0;
	double rate = res->seconds > 0 ? (double)res->pairs / res->seconds : 0;
	if (phase == 0) {
		res->pings_per_s = rate;
		continue;
	}
	res->pairs_per_s = rate;
	dist_of(all, n_lat, &res->load);
	}

	if ((rc = ms_client_connect(&c, socket, "bench-rpc", err)))
		goto out;
	if (res->have_misses && !replay_read_counters(c, &k1, 10000, NULL))
		res->misses_during = k1.misses >= k0.misses ? k1.misses - k0.misses : 0;
	else
		res->have_misses = false;
	rc = 0;
out:
	ms_client_close(c);
	free(set);
	free(ping);
	free(rtt);
	free(all);
	free(w);
	return rc;
}

/* ---- the command ----------------------------------------------------------- */

static const char usage_line[] =
	"usage: moestream bench rpc [--socket PATH | --model MODEL] [--clients N]\n"
	"         [--seconds S] [--rounds N] [--experts N] [--json]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Measures moestreamd's protocol on experts already in its cache, "
		"against\nissue 6's targets: an ACQUIRE+RELEASE round trip p99 <= "
		"20 us, and >= 200k\nacquire+release pairs a second from 64 "
		"clients together. In order:\n"
		"  ping        PING round trips on one connection: the socket's "
		"own floor\n"
		"  rtt         one client: RELEASE of the last expert + ACQUIRE of "
		"the next,\n"
		"              timed together (RELEASE has no reply)\n"
		"  N clients   threads with a connection each loop acquire(1 "
		"random expert) +\n"
		"              release for S seconds: pairs per second, and the "
		"acquire\n"
		"              latency under that load\n"
		"The experts are a fixed set spread over the MoE layers, loaded "
		"(twice) before\nthe clock starts; the daemon's misses during the "
		"measurement are reported.\n"
		"\n"
		"  --model MODEL      start a private moestreamd on MODEL (a fresh "
		"socket in\n"
		"                     $TMPDIR, prefetch off, a cache that holds the "
		"set;\n"
		"                     $MOESTREAMD, else the moestreamd next to this "
		"program)\n"
		"  --socket PATH      measure a running daemon instead (its other "
		"clients count)\n"
		"  -c, --config FILE  the configuration to take the socket from\n"
		"  --clients N        concurrent clients (default 64; a daemon of "
		"yours needs\n"
		"                     socket.max_clients >= N)\n"
		"  --seconds S        length of the rtt and the N-clients phases "
		"(default 5)\n"
		"  --rounds N         rtt round trips at most (default 200000)\n"
		"  --experts N        the resident set (default 64)\n"
		"  --json             the results as JSON (keys rtt_p50_us, "
		"rtt_p99_us,\n"
		"                     ping_p99_us, pairs_per_s, ...)\n"
		"  -h, --help         this text\n"
		"\n"
		"example:\n"
		"  moestream bench rpc --model glm4.7-2l.gguf\n"
		"\n"
		"exit: 0 measured (targets met or not); 1 the daemon or a client "
		"failed; 2 bad\nusage\n",
		usage_line);
}

static void json_dist(cJSON *j, const char *pre, const struct dist *d)
{
	char k[64];
#define D(suf, v)                                                              \
	do {                                                                   \
		snprintf(k, sizeof(k), "%s_%s", pre, suf);                      \
		cJSON_AddNumberToObject(j, k, v);                              \
	} while (0)
	D("n", (double)d->n);
	D("p50_us", d->p50);
	D("p90_us", d->p90);
	D("p99_us", d->p99);
	D("p999_us", d->p999);
	D("mean_us", d->mean);
	D("max_us", d->max);
#undef D
}

static void print_json(const struct rpc_result *r, const char *arch)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "architecture", arch);
	cJSON_AddNumberToObject(j, "experts_resident", r->n_set);
	cJSON_AddNumberToObject(j, "expert_bytes", (double)r->expert_bytes);
	cJSON_AddNumberToObject(j, "cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
	json_dist(j, "ping", &r->ping);
	json_dist(j, "rtt", &r->rtt);
	json_dist(j, "load", &r->load);
	cJSON_AddNumberToObject(j, "clients", r->clients);
	cJSON_AddNumberToObject(j, "seconds", r->seconds);
	cJSON_AddNumberToObject(j, "pairs", (double)r->pairs);
	cJSON_AddNumberToObject(j, "pairs_per_s", r->pairs_per_s);
	cJSON_AddNumberToObject(j, "pings_per_s", r->pings_per_s);
	if (r->have_misses)
		cJSON_AddNumberToObject(j, "misses_during", (double)r->misses_during);
	else
		cJSON_AddNullToObject(j, "misses_during");
	cJSON_AddNumberToObject(j, "target_rtt_p99_us", TARGET_RTT_P99_US);
	cJSON_AddNumberToObject(j, "target_pairs_per_s", TARGET_PAIRS_PER_S);
	cJSON_AddBoolToObject(j, "rtt_target_met", r->rtt.p99 <= TARGET_RTT_P99_US);
	cJSON_AddBoolToObject(j, "pairs_target_met",
			      r->pairs_per_s >= TARGET_PAIRS_PER_S);
	char *s = cJSON_Print(j);
	if (s)
		puts(s);
	free(s);
	cJSON_Delete(j);
}

static void print_table(const struct rpc_result *r, const char *where,
			const char *arch)
{
	char b1[32], b2[32];
	printf("bench rpc: %s (%s), %u resident experts of up to %s, %ld CPUs\n\n",
	       where, arch, r->n_set, fmt_bytes(r->expert_bytes, b1, sizeof(b1)),
	       sysconf(_SC_NPROCESSORS_ONLN));
	printf("%-30s %9s %8s %8s %8s %8s %8s\n", "latency (us)", "n", "p50", "p90",
	       "p99", "p99.9", "mean");
	const struct {
		const char *name;
		const struct dist *d;
	} rows[] = {
		{ "ping (socket floor)", &r->ping },
		{ "release+acquire, 1 client", &r->rtt },
	};
	for (size_t i = 0; i < 2; i++)
		printf("%-30s %9llu %8.1f %8.1f %8.1f %8.1f %8.1f\n", rows[i].name,
		       (unsigned long long)rows[i].d->n, rows[i].d->p50, rows[i].d->p90,
		       rows[i].d->p99, rows[i].d->p999, rows[i].d->mean);
	char name[40];
	snprintf(name, sizeof(name), "acquire, %u clients", r->clients);
	printf("%-30s %9llu %8.1f %8.1f %8.1f %8.1f %8.1f\n", name,
	       (unsigned long long)r->load.n, r->load.p50, r->load.p90, r->load.p99,
	       r->load.p999, r->load.mean);
	printf("\n%u clients: %s acquire+release pairs in %.2f s = %s /s\n", r->clients,
	       fmt_count(r->pairs, b1, sizeof(b1)), r->seconds,
	       fmt_count((uint64_t)llround(r->pairs_per_s), b2, sizeof(b2)));
	printf("%u clients, PINGs only (the socket's own rate here): %s /s; "
	       "pairs / pings = %.2f\n",
	       r->clients, fmt_count((uint64_t)llround(r->pings_per_s), b1, sizeof(b1)),
	       r->pings_per_s > 0 ? r->pairs_per_s / r->pings_per_s : 0.0);
	if (r->have_misses)
		printf("daemon misses while measuring: %llu%s\n",
		       (unsigned long long)r->misses_during,
		       r->misses_during ? " (the set did not stay resident: the "
					  "figures include disk reads)"
					: "");
	char tgt[64];
	printf("\n%-48s %10.1f us   %s\n",
	       "target: ACQUIRE+RELEASE round trip p99 <= 20 us", r->rtt.p99,
	       r->rtt.p99 <= TARGET_RTT_P99_US ? "met" : "MISSED");
	snprintf(tgt, sizeof(tgt), "target: %u clients >= 200k pairs/s on hits",
		 r->clients);
	printf("%-48s %10s /s   %s%s\n", tgt,
	       fmt_count((uint64_t)llround(r->pairs_per_s), b1, sizeof(b1)),
	       r->pairs_per_s >= TARGET_PAIRS_PER_S ? "met" : "MISSED",
	       r->clients != 64 ? " (the target is for 64 clients)" : "");
}

int bench_rpc_main(int argc, char **argv)
{
	enum { O_MODEL = 1000, O_CLIENTS, O_SECONDS, O_ROUNDS, O_EXPERTS, O_JSON };
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' },
		{ "config", required_argument, 0, 'c' },
		{ "model", required_argument, 0, O_MODEL },
		{ "clients", required_argument, 0, O_CLIENTS },
		{ "seconds", required_argument, 0, O_SECONDS },
		{ "rounds", required_argument, 0, O_ROUNDS },
		{ "experts", required_argument, 0, O_EXPERTS },
		{ "json", no_argument, 0, O_JSON },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *sock = NULL, *conf = NULL, *model = NULL;
	unsigned long long clients = 64, rounds = 200000, experts = 64;
	double seconds = 5;
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "s:c:h", opts, NULL)) != -1) {
		char *end;
		unsigned long long *u = NULL, lo = 1, hi = 0;
		const char *what = NULL;
		switch (c) {
		case 's': sock = optarg; break;
		case 'c': conf = optarg; break;
		case O_MODEL: model = optarg; break;
		case O_CLIENTS: u = &clients; hi = MAX_CLIENTS; what = "--clients"; break;
		case O_ROUNDS: u = &rounds; hi = 100000000; what = "--rounds"; break;
		case O_EXPERTS: u = &experts; hi = 65536; what = "--experts"; break;
		case O_SECONDS:
			errno = 0;
			seconds = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(seconds >= 0.1) ||
			    seconds > 3600) {
				tool_error(CMD, "--seconds '%s': from 0.1 to 3600", optarg);
				return EXIT_USAGE;
			}
			break;
		case O_JSON: json = true; break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
		if (u) {
			errno = 0;
			*u = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || *optarg == '-' || *u < lo ||
			    *u > hi) {
				tool_error(CMD, "%s '%s': from %llu to %llu", what, optarg,
					   lo, hi);
				return EXIT_USAGE;
			}
		}
	}
	if (optind < argc) {
		tool_error(CMD, "unexpected argument '%s'", argv[optind]);
		return tool_bad_usage(usage_line);
	}
	if (model && (sock || conf)) {
		tool_error(CMD, "--model starts a daemon of its own: it goes without "
				"--socket and -c");
		return tool_bad_usage(usage_line);
	}

	struct ms_err err = { 0 };
	struct bench_daemon d = { 0 };
	char path[4096];
	char arch[64] = "";
	if (model) {
		struct ms_model *m = NULL;
		if (ms_model_open(&m, model, &err)) {
			tool_error(CMD, "%s", err.msg);
			return 1;
		}
		if (!m->n_expert || !m->n_layers_run) {
			tool_error(CMD, "%s is not a Mixture-of-Experts model", model);
			ms_model_free(m);
			return 1;
		}
		/* Each size class of the cache gets a share in proportion to its
		 * experts' bytes (cache.c), so the set's layers get theirs of the
		 * whole; half as much again covers slot padding and classes. */
		uint64_t run = (uint64_t)m->n_layers_run * m->n_expert;
		uint64_t set = experts < run ? experts : run;
		double share = m->expert_bytes_run
				       ? (double)m->expert_bytes / (double)m->expert_bytes_run
				       : 1.0;
		uint64_t cache = (uint64_t)((double)set * (double)m->expert_bytes_max *
					    share * 1.5) +
				 (uint64_t)m->n_layers * m->n_expert_used *
					 m->expert_bytes_max +
				 (32ull << 20);
		ms_model_free(m);
		struct bench_daemon_opts o = { .model = model, .cache_bytes = cache,
					       .max_clients = (uint32_t)clients + 4,
					       .prefetch = "none",
					       .log_level = "warning" };
		if (!json)
			fprintf(stderr, "bench rpc: starting moestreamd on %s ...\n", model);
		if (bench_daemon_start(&d, &o, &err)) {
			tool_error(CMD, "%s", err.msg);
			return 1;
		}
		snprintf(path, sizeof(path), "%s", d.socket);
	} else if (tool_socket_path(CMD, sock, conf, path, sizeof(path))) {
		return 1;
	}

	struct rpc_result r;
	if (!json)
		fprintf(stderr, "bench rpc: measuring (%.1f s per phase, %llu clients)"
				" ...\n",
			seconds, clients);
	int rc = run_bench(path, (uint32_t)clients, seconds, rounds,
			   (uint32_t)experts, &r, &err);
	{
		/* The architecture, for the report (the connection is cheap). */
		struct ms_client *cl;
		if (!rc && !ms_client_connect(&cl, path, "bench-rpc", NULL)) {
			snprintf(arch, sizeof(arch), "%s", ms_client_model(cl)->arch);
			ms_client_close(cl);
		}
	}
	struct ms_err serr = { 0 };
	int src = model ? bench_daemon_stop(&d, &serr) : 0;
	if (rc) {
		tool_error(CMD, "%s", err.msg);
		if (src)
			tool_error(CMD, "%s (log kept: %s)", serr.msg, d.log);
		return 1;
	}
	if (src) {
		tool_error(CMD, "%s (log kept: %s)", serr.msg, d.log);
		return 1;
	}
	if (json) {
		print_json(&r, arch);
	} else {
		char where[4200];
		snprintf(where, sizeof(where), "%s %s", model ? "a private moestreamd on"
							      : "moestreamd at",
			 model ? model : path);
		print_table(&r, where, arch);
	}
	if (fflush(stdout) || ferror(stdout)) {
		tool_error(CMD, "writing the output failed");
		return 1;
	}
	return 0;
}
