/*
 * t_vanish.c - the model file deleted, truncated, on a full or read-only
 * disk while moestreamd serves it; the socket's directory full or
 * read-only at start.
 *
 * Each part starts the real daemon on its own copy of a small model
 * (4 MoE layers x 32 experts, all of which fit the 64 MiB cache), warms
 * the cache with a set of experts (acquired and released: READY, cached),
 * does something to the file, then checks what clients see:
 *
 * 1. deleted (unlink): the daemon holds the file open, so cached and
 *    uncached experts alike are served with the original bytes.
 * 2. truncated to half: cached experts are still served from the cache
 *    with the right bytes; uncached experts whose bytes lie before the new
 *    end load as before; those past it (or straddling it) are answered
 *    -EIO - promptly, never a hang - with a log line, and the cache counts
 *    the failures; the daemon serves on. Once the file has its bytes back
 *    (rewritten to full length), the same experts load (a failed entry is
 *    retried on the next acquire).
 * 3. on a full disk (a 1 MiB-headroom tmpfs filled to ENOSPC while
 *    serving), then on a read-only one (remounted ro): reads do not care;
 *    everything is served. Needs root (mount); skipped with the reason
 *    otherwise.
 * 4. the socket's directory on a full tmpfs (no inode left) or a read-only
 *    one: the daemon refuses to start, exit 1, with one line naming the
 *    socket path and the error (ENOSPC / EROFS). Needs root.
 *
 * Figures: per part, experts served / failed and what the failures were.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"

#define MODEL_ARGS                                                             \
	"--layers 4 --experts 32 --used 4 --embd 512 --ff 256 --vocab 256 "    \
	"--types q4_K,q4_K,q6_K"

static const char *orig_path;     /* the model as written */
static struct ms_model *model;    /* opened on orig_path: the true bytes */
static uint8_t *fbuf;
static char mnt[512];             /* a tmpfs we mounted, or "" */

static void unmount_all(void)
{
	if (*mnt) {
		umount2(mnt, MNT_DETACH);
		mnt[0] = '\0';
	}
}

static int copy_file(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc = 0;
	static char buf[1 << 20];
	while (in >= 0 && out >= 0) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n <= 0) {
			rc = n < 0 ? -errno : 0;
			break;
		}
		if (write(out, buf, (size_t)n) != n) {
			rc = -errno;
			break;
		}
	}
	if (in < 0 || out < 0)
		rc = -errno;
	if (in >= 0)
		close(in);
	if (out >= 0 && close(out) && !rc)
		rc = -errno;
	return rc;
}

/* The highest file offset an expert's bytes reach. */
static uint64_t expert_end(uint32_t layer, uint32_t expert)
{
	const struct ms_extent *x = ms_model_expert(model, layer, expert);
	uint64_t end = 0;
	for (uint32_t j = 0; j < model->layers[layer].n_proj; j++)
		if (x[j].offset + x[j].bytes > end)
			end = x[j].offset + x[j].bytes;
	return end;
}

static uint64_t expert_start(uint32_t layer, uint32_t expert)
{
	const struct ms_extent *x = ms_model_expert(model, layer, expert);
	uint64_t start = UINT64_MAX;
	for (uint32_t j = 0; j < model->layers[layer].n_proj; j++)
		if (x[j].offset < start)
			start = x[j].offset;
	return start;
}

/* Acquires (layer, expert) with a timeout: 0 with the bytes checked against
 * the original file, or the status; -ETIMEDOUT is a hang. */
static int get_one(struct ms_client *c, uint32_t layer, uint32_t expert,
		   int64_t *ms)
{
	uint16_t ex = (uint16_t)expert;
	struct ms_client_expert g;
	int64_t t0 = dt_now_ms();
	int rc = ms_client_acquire(c, model->layers[layer].block, &ex, 1, &g, 10000);
	if (ms)
		*ms = dt_now_ms() - t0;
	if (rc)
		return rc == -ETIMEDOUT ? rc : (g.status ? g.status : rc);
	const struct ms_extent *x = ms_model_expert(model, layer, expert);
	bool ok = g.n_proj == model->layers[layer].n_proj;
	for (uint32_t j = 0; ok && j < g.n_proj; j++)
		ok = g.len[j] == x[j].bytes &&
		     pread(model->shards[0]->fd, fbuf, x[j].bytes, (off_t)x[j].offset) ==
			     (ssize_t)x[j].bytes &&
		     !memcmp(fbuf, g.proj[j], x[j].bytes);
	ms_client_release(c, model->layers[layer].block, &ex, 1);
	return ok ? 0 : -EILSEQ; /* wrong bytes */
}

struct part {
	struct dt_daemon d;
	struct ms_client *c;
	char path[600];
};

static void part_start(struct part *p, const char *name, const char *dir)
{
	snprintf(p->path, sizeof(p->path), "%s/%s.gguf", dir, name);
	int rc = copy_file(orig_path, p->path);
	if (rc)
		t_fatal("copy to %s: %s", p->path, strerror(-rc));
	if (dt_start(&p->d, name, p->path, "[prefetch]\npolicy = none\n"))
		t_fatal("%s: the daemon did not start", name);
	struct ms_err err = { 0 };
	p->c = dt_connect(p->d.sock, name, &err);
	if (!p->c)
		t_fatal("%s: %s", name, err.msg);
}

/* Warms the cache with the experts of layer 0 (the start of the file). */
static void warm(struct part *p, const char *name)
{
	for (uint32_t e = 0; e < model->n_expert; e++) {
		int rc = get_one(p->c, 0, e, NULL);
		T_CHECK(!rc, "%s: warming expert %u: %s", name, e, strerror(-rc));
	}
}

static void part_stop(struct part *p, const char *name)
{
	T_CHECK(p->d.pid == 0 || dt_daemon_alive(&p->d), "%s: the daemon died", name);
	ms_client_close(p->c);
	p->c = NULL;
	T_EQ_U64(dt_stop(&p->d), 0);
}

/* Every expert of every layer served with the right bytes. */
static void all_served(struct part *p, const char *name)
{
	unsigned ok = 0, bad = 0;
	for (uint32_t l = 0; l < model->n_layers; l++)
		for (uint32_t e = 0; e < model->n_expert; e++) {
			int rc = get_one(p->c, l, e, NULL);
			if (rc && bad++ < 3)
				t_fail_at(__FILE__, __LINE__, "%s: layer %u expert %u: %s",
					  name, l, e, strerror(-rc));
			ok += !rc;
		}
	printf("%-10s all %u experts served with the file's bytes (%u failed)\n",
	       name, ok, bad);
}

static void part_deleted(void)
{
	struct part p;
	part_start(&p, "deleted", t_tmpdir());
	warm(&p, "deleted");
	T_CHECK(!unlink(p.path), "unlink: %s", strerror(errno));
	all_served(&p, "deleted");
	part_stop(&p, "deleted");
}

static void part_truncated(void)
{
	struct part p;
	part_start(&p, "truncated", t_tmpdir());
	warm(&p, "truncated");
	uint64_t size = model->shards[0]->file_size, cut = size / 2;
	T_CHECK(!truncate(p.path, (off_t)cut), "truncate: %s", strerror(errno));
	unsigned cached_ok = 0, before_ok = 0, past_eio = 0, past_other = 0,
		 straddle = 0, hangs = 0;
	int64_t worst_ms = 0;
	int other_code = 0;
	for (uint32_t l = 0; l < model->n_layers; l++)
		for (uint32_t e = 0; e < model->n_expert; e++) {
			int64_t ms;
			int rc = get_one(p.c, l, e, &ms);
			if (ms > worst_ms)
				worst_ms = ms;
			if (rc == -ETIMEDOUT) {
				hangs++;
				continue;
			}
			if (l == 0) { /* cached before the cut */
				T_CHECK(!rc, "truncated: cached layer 0 expert %u: %s", e,
					strerror(-rc));
				cached_ok += !rc;
			} else if (expert_end(l, e) <= cut) {
				T_CHECK(!rc, "truncated: layer %u expert %u lies before "
					"the new end and failed: %s", l, e, strerror(-rc));
				before_ok += !rc;
			} else {
				if (expert_start(l, e) < cut)
					straddle++;
				T_CHECK(rc != 0 && rc != -EILSEQ, "truncated: layer %u "
					"expert %u lies past the new end and was %s", l, e,
					rc ? "served wrong bytes" : "served");
				if (rc == -EIO)
					past_eio++;
				else if (rc) {
					past_other++;
					other_code = rc;
				}
			}
		}
	T_CHECK(!hangs, "truncated: %u acquires hung (no answer in 10 s)", hangs);
	double fails = dt_stat(p.c, "load_failures");
	char *log = dt_slurp(p.d.log);
	const char *line = strstr(log, "failed");
	while (line && line > log && line[-1] != '\n')
		line--; /* the whole line */
	printf("truncated  to %llu of %llu bytes: %u cached served, %u before the "
	       "cut served, %u past it answered -EIO (%u straddling), %u other "
	       "(%s); slowest answer %lld ms; load_failures %.0f; the log says: "
	       "%.*s\n",
	       (unsigned long long)cut, (unsigned long long)size, cached_ok,
	       before_ok, past_eio, straddle, past_other,
	       past_other ? strerror(-other_code) : "-", (long long)worst_ms, fails,
	       line ? (int)strcspn(line, "\n") : 4, line ? line : "none");
	T_CHECK(past_eio > 0 && !past_other, "truncated: experts past the end: %u "
		"-EIO, %u other answers (%s)", past_eio, past_other,
		past_other ? strerror(-other_code) : "");
	T_CHECK(fails >= past_eio, "truncated: %u failures answered, the cache "
		"counted %.0f", past_eio, fails);
	T_CHECK(line != NULL, "truncated: no log line about the failed loads");
	free(log);
	/* The bytes come back: what failed now loads. */
	int rc = copy_file(orig_path, p.path);
	T_CHECK(!rc, "rewriting %s: %s", p.path, strerror(-rc));
	all_served(&p, "restored");
	part_stop(&p, "truncated");
}

static bool mount_tmpfs(const char *opts)
{
	snprintf(mnt, sizeof(mnt), "%s/mnt", t_tmpdir());
	mkdir(mnt, 0755);
	if (mount("tmpfs", mnt, "tmpfs", 0, opts)) {
		printf("mount tmpfs (%s): %s\n", opts, strerror(errno));
		mnt[0] = '\0';
		return false;
	}
	return true;
}

static void part_full_ro(void)
{
	if (geteuid()) {
		printf("full/ro    skipped: needs root to mount a tmpfs\n");
		return;
	}
	uint64_t size = model->shards[0]->file_size;
	char opts[64];
	snprintf(opts, sizeof(opts), "size=%llu", (unsigned long long)(size + (1 << 20)));
	if (!mount_tmpfs(opts)) {
		printf("full/ro    skipped: cannot mount a tmpfs\n");
		return;
	}
	struct part p;
	part_start(&p, "full", mnt);
	warm(&p, "full");
	/* Fill the disk. */
	char fill[700];
	snprintf(fill, sizeof(fill), "%s/filler", mnt);
	int fd = open(fill, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	static char zero[1 << 16];
	uint64_t filled = 0;
	int e = 0;
	for (;;) {
		ssize_t n = write(fd, zero, sizeof(zero));
		if (n <= 0) {
			e = errno;
			break;
		}
		filled += (uint64_t)n;
	}
	close(fd);
	printf("full       the tmpfs is full: %llu bytes of filler, then %s\n",
	       (unsigned long long)filled, strerror(e));
	T_CHECK(e == ENOSPC, "filling the tmpfs ended with %s", strerror(e));
	all_served(&p, "full");
	/* Read-only. */
	int rc = mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL);
	if (rc) {
		printf("read-only  skipped: remount ro: %s\n", strerror(errno));
	} else {
		int w = open(fill, O_WRONLY | O_CLOEXEC);
		T_CHECK(w < 0 && errno == EROFS, "the remount did not make it read-only");
		if (w >= 0)
			close(w);
		/* a fresh daemon's view of it: evict by restarting */
		part_stop(&p, "full");
		struct ms_err err = { 0 };
		if (dt_start(&p.d, "readonly", p.path, "[prefetch]\npolicy = none\n"))
			t_fail_at(__FILE__, __LINE__, "the daemon does not start on a "
				  "model on a read-only filesystem");
		else {
			p.c = dt_connect(p.d.sock, "readonly", &err);
			all_served(&p, "read-only");
		}
	}
	part_stop(&p, "readonly");
	unmount_all();
}

/* A daemon whose socket directory is on a full or read-only tmpfs. */
static void socket_dir_case(const char *what, const char *opts, bool ro,
			    const char *want)
{
	if (!mount_tmpfs(opts)) {
		printf("%-10s skipped: cannot mount a tmpfs\n", what);
		return;
	}
	char sock[700];
	snprintf(sock, sizeof(sock), "%s/s.sock", mnt);
	if (ro) {
		if (mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL)) {
			printf("%-10s skipped: remount ro: %s\n", what, strerror(errno));
			unmount_all();
			return;
		}
	} else {
		/* use up the inodes */
		for (int i = 0; i < 100000; i++) {
			char f[760];
			snprintf(f, sizeof(f), "%s/f%d", mnt, i);
			int fd = open(f, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (fd < 0)
				break;
			close(fd);
		}
	}
	char conf[700], out[700], errp[700];
	snprintf(conf, sizeof(conf), "%s/%s.conf", t_tmpdir(), what);
	snprintf(out, sizeof(out), "%s/%s.out", t_tmpdir(), what);
	snprintf(errp, sizeof(errp), "%s/%s.err", t_tmpdir(), what);
	dt_write_config(conf, orig_path, sock, NULL);
	char *const argv[] = { (char *)t_build_path("moestreamd"), "-c", conf,
			       "--foreground", NULL };
	int rc = dt_exec(argv, out, errp, 30000);
	char *msg = dt_slurp(errp);
	printf("%-10s socket %s: exit %d: %.*s\n", what, sock, rc,
	       (int)strcspn(msg, "\n"), msg);
	T_CHECK(rc == 1, "%s: moestreamd exit %d, expected 1", what, rc);
	T_CHECK(strstr(msg, sock) && strstr(msg, want), "%s: the message does not "
		"name the socket and '%s': %s", what, want, msg);
	T_CHECK(!dt_crash_in(msg), "%s: a crash: %s", what, msg);
	free(msg);
	unmount_all();
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	atexit(unmount_all);
	dt_watchdog(170, "t_vanish");
	orig_path = dt_model("vanish.gguf", MODEL_ARGS);
	struct ms_err err = { 0 };
	if (ms_model_open(&model, orig_path, &err))
		t_fatal("%s", err.msg);
	fbuf = malloc(model->expert_bytes_max);
	printf("model: %u MoE layers x %u experts, %llu bytes\n", model->n_layers,
	       model->n_expert, (unsigned long long)model->shards[0]->file_size);
	part_deleted();
	part_truncated();
	part_full_ro();
	if (geteuid()) {
		printf("socket dir skipped: needs root to mount a tmpfs\n");
	} else {
		socket_dir_case("sock-full", "size=1m,nr_inodes=4", false,
				strerror(ENOSPC));
		socket_dir_case("sock-ro", "size=1m", true, strerror(EROFS));
	}
	free(fbuf);
	ms_model_free(model);
	dt_check_crashes();
	return t_done();
}
