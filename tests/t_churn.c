/*
 * t_churn.c - 1,000 clients SIGKILLed at random points: the real moestreamd's
 * descriptors and pins are back to their baseline within a second.
 *
 * Children are forked in waves (up to 24 alive at once) and each one, until
 * it is killed, does what an engine does: connect (HELLO, map the arena),
 * then loop over ACQUIRE of 1 to 8 experts (blocking, or asynchronous and
 * not waited for), RELEASE of some, PREFETCH hints, STATS. One child in ten
 * speaks the wire raw and dies before or right after HELLO, or while its
 * ACQUIRE is in flight. Each child is SIGKILLed 0 to 60 ms after the fork:
 * before it connected, in the middle of HELLO, with pins held, with loads in
 * flight - wherever the dice say. The cache (64 MiB) holds under half of the
 * model's experts, so acquires miss, evict and wait.
 *
 * After the last kill the daemon's descriptor count (/proc/PID/fd) must be
 * back to what it was before the first child, pinned_entries must be 0 and
 * clients 1 (the monitor's own connection) - all within a second. The
 * daemon must still serve (an acquire checked against the file) and stop
 * with exit 0.
 *
 * A second part: one client pins the same expert 65,536 times (128 ACQUIREs
 * of 512 copies of it, all hits), then is SIGKILLed. The daemon counts a
 * client's pins per expert; a count that wraps would make the pins outlive
 * their connection (the expert pinned for good). Its pins too must be back
 * to 0 within a second, whatever the daemon answered beyond its limit.
 *
 * Figures: children, how far they got (connected, acquired), the daemon's
 * descriptors and pins at the peak and the time back to baseline.
 * MS_CHURN_CLIENTS sets the number of children (default 1000).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"

#define WAVE 24

static struct ms_model *model;
static struct dt_daemon dmn;

/* How far children got, counted in shared memory (children cannot report
 * after a SIGKILL). */
struct progress {
	atomic_uint connected, acquired, raw;
};
static struct progress *prog;

static void child_engine(uint64_t rs)
{
	struct ms_client *c = NULL;
	struct ms_err err;
	if (ms_client_connect(&c, dmn.sock, "churn", &err))
		_exit(3);
	atomic_fetch_add(&prog->connected, 1);
	for (;;) {
		uint32_t l = (uint32_t)(t_rand(&rs) % model->n_layers);
		uint32_t block = model->layers[l].block;
		unsigned n = 1 + (unsigned)(t_rand(&rs) % 8);
		uint16_t ex[8];
		for (unsigned i = 0; i < n; i++)
			ex[i] = (uint16_t)(t_rand(&rs) % model->n_expert);
		switch (t_rand(&rs) % 5) {
		case 0: { /* asked, never waited for */
			uint64_t id;
			ms_client_acquire_async(c, block, ex, n, &id);
			break;
		}
		case 1:
			ms_client_prefetch(c, block, ex, NULL, n);
			break;
		case 2: {
			char *json = NULL;
			if (!ms_client_stats(c, &json, 1000))
				free(json);
			break;
		}
		default: {
			struct ms_client_expert got[8];
			if (ms_client_acquire(c, block, ex, n, got, 5000) == 0) {
				atomic_fetch_add(&prog->acquired, 1);
				if (t_rand(&rs) % 2) /* else: die holding them */
					ms_client_release(c, block, ex, n);
			}
			break;
		}
		}
	}
}

static void child_raw(uint64_t rs)
{
	atomic_fetch_add(&prog->raw, 1);
	int fd = dt_raw_connect(dmn.sock);
	if (fd < 0)
		_exit(3);
	if (t_rand(&rs) % 3 == 0)
		pause(); /* connected, silent */
	int afd;
	uint64_t size;
	if (dt_raw_hello(fd, &afd, &size))
		_exit(3);
	struct ms_experts_req q = { .block = model->layers[0].block, .n = 8 };
	for (int i = 0; i < 8; i++)
		q.experts[i] = (uint16_t)(t_rand(&rs) % model->n_expert);
	static uint8_t msg[MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD];
	int len = ms_msg_encode_experts(msg, MS_MSG_ACQUIRE, 1, &q);
	if (len > 0)
		dt_raw_send(fd, msg, (size_t)len, NULL, 0);
	pause(); /* the answers are never read */
}

static void churn(unsigned n_children, uint64_t seed)
{
	struct ms_err err = { 0 };
	struct ms_client *mon = dt_connect(dmn.sock, "monitor", &err);
	if (!mon)
		t_fatal("monitor: %s", err.msg);
	dt_sleep_ms(50);
	int base_fds = dt_fd_count(dmn.pid);
	printf("daemon pid %d: %d descriptors with the monitor connected\n",
	       (int)dmn.pid, base_fds);

	pid_t alive[WAVE];
	int64_t kill_at[WAVE];
	unsigned n_alive = 0, forked = 0, killed_by_sigkill = 0;
	int max_fds = base_fds;
	double max_pinned = 0;
	uint64_t rs = seed;
	int64_t t0 = dt_now_ms();
	while (forked < n_children || n_alive) {
		while (forked < n_children && n_alive < WAVE) {
			uint64_t cs = t_rand(&rs);
			bool raw = t_rand(&rs) % 10 == 0;
			pid_t pid = fork();
			if (pid < 0)
				t_fatal("fork: %s", strerror(errno));
			if (pid == 0) {
				if (raw)
					child_raw(cs);
				else
					child_engine(cs);
				_exit(0);
			}
			dt_track(pid);
			alive[n_alive] = pid;
			kill_at[n_alive] = dt_now_ms() + (int64_t)(t_rand(&rs) % 61);
			n_alive++;
			forked++;
		}
		int64_t now = dt_now_ms();
		for (unsigned i = 0; i < n_alive;) {
			if (now < kill_at[i]) {
				i++;
				continue;
			}
			kill(alive[i], SIGKILL);
			int st = dt_waitpid(alive[i], 5000);
			if (st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
				killed_by_sigkill++;
			dt_untrack(alive[i]);
			alive[i] = alive[--n_alive];
			kill_at[i] = kill_at[n_alive];
		}
		if (forked % 50 == 0) {
			int f = dt_fd_count(dmn.pid);
			if (f > max_fds)
				max_fds = f;
			double p = dt_stat(mon, "pinned_entries");
			if (p > max_pinned)
				max_pinned = p;
		}
		dt_sleep_ms(1);
	}
	int64_t t_last = dt_now_ms();
	/* Back to baseline: descriptors, pins, clients. */
	int fds = -1;
	double pinned = NAN, clients = NAN;
	int64_t back_ms = -1;
	while (dt_now_ms() - t_last < 3000) {
		fds = dt_fd_count(dmn.pid);
		pinned = dt_stat(mon, "pinned_entries");
		clients = dt_stat(mon, "clients");
		if (fds == base_fds && pinned == 0 && clients == 1) {
			back_ms = dt_now_ms() - t_last;
			break;
		}
		dt_sleep_ms(2);
	}
	printf("churn: %u children in %.1f s (%u died of SIGKILL; %u connected, "
	       "%u acquires completed, %u raw), daemon peak %d descriptors, %.0f "
	       "pinned entries; back to %d descriptors, 0 pins, 1 client after "
	       "%lld ms\n",
	       forked, (double)(t_last - t0) / 1000.0, killed_by_sigkill,
	       atomic_load(&prog->connected), atomic_load(&prog->acquired),
	       atomic_load(&prog->raw), max_fds, max_pinned, base_fds,
	       (long long)back_ms);
	T_CHECK(back_ms >= 0 && back_ms <= 1000,
		"1 s after the last kill: %d descriptors (baseline %d), %.0f pinned "
		"entries, %.0f clients (took %lld ms)", fds, base_fds, pinned,
		clients, (long long)back_ms);
	/* Loose on purpose: on a loaded machine a child may die before its
	 * first instruction; what matters is that the churn reached the
	 * daemon at all points, which the peak pins show too. */
	T_CHECK(atomic_load(&prog->connected) >= n_children / 10 && max_pinned > 0,
		"only %u of %u children got as far as HELLO (peak pins %.0f): the "
		"churn did not reach the daemon", atomic_load(&prog->connected),
		n_children, max_pinned);
	T_CHECK(atomic_load(&prog->acquired) > 0, "no child completed an acquire");

	/* Still serving, with the right bytes. */
	uint16_t ex[2] = { 1, 2 };
	struct ms_client_expert got[2];
	int rc = ms_client_acquire(mon, model->layers[0].block, ex, 2, got, 5000);
	T_CHECK(!rc, "after the churn, ACQUIRE: %s", strerror(-rc));
	if (!rc) {
		uint8_t *buf = malloc(model->expert_bytes_max);
		for (int i = 0; i < 2; i++) {
			const struct ms_extent *x = ms_model_expert(model, 0, ex[i]);
			for (uint32_t j = 0; j < got[i].n_proj; j++)
				T_CHECK(pread(model->shards[0]->fd, buf, x[j].bytes,
					      (off_t)x[j].offset) == (ssize_t)x[j].bytes &&
					!memcmp(buf, got[i].proj[j], x[j].bytes),
					"after the churn, expert %u: wrong bytes", ex[i]);
		}
		free(buf);
		ms_client_release(mon, model->layers[0].block, ex, 2);
	}
	ms_client_close(mon);
}

/* One client takes 65,536 pins of one expert, then dies. */
static void pin_wrap(void)
{
	struct ms_err err = { 0 };
	struct ms_client *mon = dt_connect(dmn.sock, "monitor", &err);
	if (!mon)
		t_fatal("monitor: %s", err.msg);
	int pfd[2];
	if (pipe(pfd))
		t_fatal("pipe");
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork");
	if (pid == 0) {
		close(pfd[0]);
		struct ms_client *c = NULL;
		if (ms_client_connect(&c, dmn.sock, "wrap", &err))
			_exit(3);
		uint16_t ex[MS_MSG_MAX_EXPERTS];
		for (int i = 0; i < MS_MSG_MAX_EXPERTS; i++)
			ex[i] = 5;
		static struct ms_client_expert got[MS_MSG_MAX_EXPERTS];
		unsigned ok = 0, refused = 0;
		for (int k = 0; k < 128; k++) {
			ms_client_acquire(c, model->layers[0].block, ex,
					  MS_MSG_MAX_EXPERTS, got, 10000);
			for (int i = 0; i < MS_MSG_MAX_EXPERTS; i++) {
				if (got[i].status)
					refused++;
				else
					ok++;
			}
		}
		unsigned r[2] = { ok, refused };
		if (write(pfd[1], r, sizeof(r)) != sizeof(r))
			_exit(4);
		pause();
		_exit(0);
	}
	dt_track(pid);
	close(pfd[1]);
	unsigned r[2] = { 0, 0 };
	ssize_t n = read(pfd[0], r, sizeof(r));
	close(pfd[0]);
	double held = dt_stat(mon, "pinned_entries");
	kill(pid, SIGKILL);
	dt_waitpid(pid, 5000);
	dt_untrack(pid);
	double last = NAN;
	int64_t ms = dt_stat_wait(mon, "pinned_entries", dt_eq, 0, 1000, &last);
	printf("pin wrap: one client asked for 65536 pins of one expert: %u granted, "
	       "%u refused (%zd), %.0f entries pinned; SIGKILLed: pinned_entries "
	       "%.0f after %lld ms\n",
	       r[0], r[1], n, held, last, (long long)ms);
	T_CHECK(n == (ssize_t)sizeof(r), "the pinning child did not report");
	T_CHECK(ms >= 0, "a client that took 65536 pins of one expert and died "
		"left %.0f entries pinned for good (the daemon's per-client pin "
		"count wrapped?)", last);
	ms_client_close(mon);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	dt_watchdog(170, "t_churn");
	uint64_t seed = t_seed();
	unsigned n = 1000;
	const char *e = getenv("MS_CHURN_CLIENTS");
	if (e && atoi(e) > 0)
		n = (unsigned)atoi(e);
	prog = mmap(NULL, sizeof(*prog), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (prog == MAP_FAILED)
		t_fatal("mmap");
	const char *path = dt_model("churn.gguf", DT_MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, path, &err))
		t_fatal("%s", err.msg);
	if (dt_start(&dmn, "churn", path, "[socket]\nmax_clients = 64\n"))
		t_fatal("the daemon did not start");
	churn(n, seed);
	pin_wrap();
	T_CHECK(dt_daemon_alive(&dmn), "the daemon died");
	T_EQ_U64(dt_stop(&dmn), 0);
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
