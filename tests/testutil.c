/*
 * testutil.c - the shared test helpers (see testutil.h).
 */
#include "testutil.h"

#include "moestream/kernels.h"
#include "moestream/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int t_failures;

void t_fail_at(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	t_failures++;
}

void t_skip(const char *fmt, ...)
{
	va_list ap;
	fprintf(stdout, "skip: ");
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	exit(T_SKIP);
}

void t_fatal(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "FATAL: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(T_FAIL);
}

int t_done(void)
{
	if (t_failures) {
		fprintf(stderr, "%d check(s) failed\n", t_failures);
		return T_FAIL;
	}
	return T_PASS;
}

static char *tmp_path;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(p);
}

static void tmp_cleanup(void)
{
	if (tmp_path && !getenv("MS_KEEP_TMP"))
		nftw(tmp_path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *t_tmpdir(void)
{
	if (tmp_path)
		return tmp_path;
	const char *base = getenv("MS_TMP");
	if (!base || !*base)
		base = getenv("TMPDIR");
	if (!base || !*base)
		base = "/tmp";
	size_t n = strlen(base) + 32;
	tmp_path = malloc(n);
	if (!tmp_path)
		t_fatal("out of memory");
	snprintf(tmp_path, n, "%s/ms-test.XXXXXX", base);
	if (!mkdtemp(tmp_path))
		t_fatal("mkdtemp %s: %s", tmp_path, strerror(errno));
	atexit(tmp_cleanup);
	return tmp_path;
}

/* Paths handed out stay reachable from here (so LeakSanitizer does not count
 * them) and are freed at exit. */
static char *build_paths[64];
static unsigned n_build_paths;

static void build_paths_free(void)
{
	for (unsigned i = 0; i < n_build_paths; i++)
		free(build_paths[i]);
}

const char *t_build_path(const char *rel)
{
	const char *b = getenv("MS_BUILD");
	if (!b || !*b)
		b = "build";
	for (unsigned i = 0; i < n_build_paths; i++) {
		size_t lb = strlen(b);
		if (!strncmp(build_paths[i], b, lb) && build_paths[i][lb] == '/' &&
		    !strcmp(build_paths[i] + lb + 1, rel))
			return build_paths[i];
	}
	if (n_build_paths == sizeof(build_paths) / sizeof(build_paths[0]))
		t_fatal("t_build_path: more than 64 distinct paths");
	size_t n = strlen(b) + strlen(rel) + 2;
	char *p = malloc(n);
	if (!p)
		t_fatal("out of memory");
	snprintf(p, n, "%s/%s", b, rel);
	if (!n_build_paths)
		atexit(build_paths_free);
	build_paths[n_build_paths++] = p;
	return p;
}

int t_run(const char *cmd, char **out, size_t max)
{
	FILE *f = popen(cmd, "r");
	if (!f)
		return -1;
	char *buf = NULL;
	size_t len = 0;
	if (out) {
		buf = malloc(max + 1);
		if (!buf)
			t_fatal("out of memory");
		len = fread(buf, 1, max, f);
		buf[len] = '\0';
		*out = buf;
	}
	char sink[4096];
	while (fread(sink, 1, sizeof(sink), f) > 0)
		;
	int st = pclose(f);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

void t_tiny_qwen3(const char *path)
{
	const char *toks = getenv("MS_TOKENIZERS");
	if (!toks || !*toks)
		t_fatal("MS_TOKENIZERS is not set: run through tests/run.sh (make "
			"test), which fetches the pinned tokenizers");
	char cmd[12800];
	snprintf(cmd, sizeof(cmd), "%s mkmodel --preset tiny --tokenizer "
		 "'%s/qwen3/tokenizer.json' -o '%s' >/dev/null 2>&1",
		 t_build_path("moestream"), toks, path);
	if (t_run(cmd, NULL, 0))
		t_fatal("`%s` failed (run tests/fetch-ggml.sh for the tokenizer)",
			cmd);
}

uint64_t t_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

size_t t_dup_run(uint8_t *p, size_t n, size_t cap, size_t at, uint64_t *state)
{
	size_t len = 1 + (size_t)(t_rand(state) % 64);
	if (at + len > n)
		len = n - at;
	if (n + len <= cap) {
		memmove(p + at + len, p + at, n - at);
		n += len;
	}
	return n;
}

size_t t_mutate(uint8_t *p, size_t n, size_t cap, uint64_t *state,
		const char *const *pieces, size_t n_pieces, size_t max_delete,
		bool truncate)
{
	unsigned k = 1 + (unsigned)(t_rand(state) % 4);
	for (unsigned i = 0; i < k; i++) {
		size_t at = n ? (size_t)(t_rand(state) % n) : 0;
		unsigned c = (unsigned)(t_rand(state) % (truncate ? 6 : 5));
		if (!truncate && c == 4)
			c = 5;
		switch (c) {
		case 0:
			if (n)
				p[at] ^= (uint8_t)(1u << (t_rand(state) % 8));
			break;
		case 1:
			if (n)
				p[at] = (uint8_t)t_rand(state);
			break;
		case 2: { /* insert a piece ("" stands for one NUL byte) */
			const char *b = pieces[t_rand(state) % n_pieces];
			size_t len = *b ? strlen(b) : 1;
			if (n + len <= cap) {
				memmove(p + at + len, p + at, n - at);
				memcpy(p + at, b, len);
				n += len;
			}
			break;
		}
		case 3: { /* delete a run */
			size_t len = 1 + (size_t)(t_rand(state) % max_delete);
			if (at + len > n)
				len = n - at;
			memmove(p + at, p + at + len, n - at - len);
			n -= len;
			break;
		}
		case 4: /* truncate */
			n = at;
			break;
		default:
			n = t_dup_run(p, n, cap, at, state);
			break;
		}
	}
	return n;
}

bool t_part_wanted(const char *name, int argc, char **argv)
{
	bool want = argc < 2;
	for (int a = 1; a < argc; a++)
		want |= !strcmp(argv[a], name);
	return want;
}

uint64_t t_seed(void)
{
	const char *e = getenv("MS_SEED");
	uint64_t seed;
	if (e && *e) {
		seed = strtoull(e, NULL, 0);
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
		       (uint64_t)getpid();
	}
	printf("seed: MS_SEED=%llu\n", (unsigned long long)seed);
	return seed;
}

int t_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;
			close(fd);
			return e;
		}
		p += w;
		len -= (size_t)w;
	}
	return close(fd) ? -errno : 0;
}

const char *t_source_path(const char *rel, int levels)
{
	struct stat st;
	if (!stat(rel, &st))
		return rel;
	static char path[PATH_MAX];
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		for (int up = 0; up < levels; up++) {
			char *slash = strrchr(exe, '/');
			if (!slash)
				break;
			*slash = '\0';
			snprintf(path, sizeof(path), "%s/%s", exe, rel);
			if (!stat(path, &st))
				return path;
		}
	}
	return NULL;
}

uint8_t *t_read_file(const char *path, size_t max, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) || (uint64_t)st.st_size > max) {
		close(fd);
		return NULL;
	}
	uint8_t *p = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (p && got < (size_t)st.st_size) {
		ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	*len = got;
	return p;
}

unsigned t_corpus_replay(const char *dir, size_t max_bytes, uint64_t seed,
			 unsigned mutations,
			 size_t (*mutate)(uint8_t *p, size_t n, size_t cap,
					  uint64_t *state),
			 void (*one)(void *ctx, const char *name, const uint8_t *p,
				     size_t n, bool seed_file),
			 void *ctx)
{
	DIR *d = opendir(dir);
	if (!d)
		t_fatal("opendir %s: %s", dir, strerror(errno));
	struct dirent *de;
	unsigned n_files = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		size_t n = 0;
		uint8_t *p = t_read_file(path, max_bytes, &n);
		if (!p) {
			t_fail_at(__FILE__, __LINE__, "cannot read %s", path);
			continue;
		}
		one(ctx, de->d_name, p, n, true);
		n_files++;
		size_t cap = n + 1024;
		uint8_t *m = malloc(cap);
		if (!m)
			t_fatal("out of memory");
		uint64_t rs = seed;
		for (const char *c = de->d_name; *c; c++)
			rs = (rs ^ (uint8_t)*c) * 0x100000001b3ull;
		for (unsigned it = 0; it < mutations; it++) {
			memcpy(m, p, n);
			size_t len = mutate(m, n, cap, &rs);
			uint8_t *exact = malloc(len ? len : 1);
			if (!exact)
				t_fatal("out of memory");
			memcpy(exact, m, len);
			one(ctx, de->d_name, exact, len, false);
			free(exact);
		}
		free(m);
		free(p);
	}
	closedir(d);
	return n_files;
}

void t_buf_add(struct t_buf *b, const void *d, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *q = realloc(b->p, cap);
		if (!q)
			t_fatal("out of memory");
		b->p = q;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
	b->p[b->len] = 0;
}

char *t_read_text(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, len = 0, n;
	char *buf = malloc(cap);
	while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 2) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb)
				free(buf);
			buf = nb;
		}
	}
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

int t_call_main(int (*fn)(int, char **), const char *name, const char *args,
		const char *dir, const char *path, bool err_if_failed,
		char **out, char **err)
{
	char line[8192], *argv[64];
	int argc = 0;
	snprintf(line, sizeof(line), "%s", args);
	argv[argc++] = (char *)name;
	for (char *save = NULL, *t = strtok_r(line, " ", &save); t && argc < 63;
	     t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	argv[argc] = NULL;
	char po[4200], pe[4200];
	snprintf(po, sizeof(po), "%s/out", dir);
	snprintf(pe, sizeof(pe), "%s/err", dir);
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		int o = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		if (path)
			setenv("PATH", path, 1);
		int rc = fn(argc, argv);
		fflush(stdout);
		fflush(stderr);
		_exit(rc);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	char *o = t_read_text(po), *e = t_read_text(pe);
	printf("$ %s %s -> exit %d\n", name, args, rc);
	if (e && *e && (rc || !err_if_failed))
		printf("%s", e);
	if (out)
		*out = o;
	else
		free(o);
	if (err)
		*err = e;
	else
		free(e);
	return rc;
}

void t_check_no_cuda(int rc, const struct ms_err *err, const char *what)
{
	T_CHECK(rc == -ENOTSUP, "%s = %d, expected -ENOTSUP", what, rc);
	T_CHECK(strstr(err->msg, "built without CUDA") != NULL,
		"%s: message '%s'", what, err->msg);
}

void *t_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		t_fatal("out of memory (%zu bytes)", n);
	return p;
}

void *t_dev_alloc(size_t bytes)
{
	struct ms_err err = { 0 };
	void *p = NULL;
	if (ms_gpu_malloc(&p, bytes ? bytes : 1, &err))
		t_fatal("ms_gpu_malloc(%zu): %s", bytes, err.msg);
	return p;
}

void t_dev_up(void *dev, const void *host, size_t bytes)
{
	struct ms_err err = { 0 };
	if (ms_gpu_upload(dev, host, bytes, &err))
		t_fatal("ms_gpu_upload(%zu): %s", bytes, err.msg);
}

void *t_dev_from(const void *host, size_t bytes)
{
	void *p = t_dev_alloc(bytes);
	t_dev_up(p, host, bytes);
	return p;
}

void t_dev_to(struct ms_gpu_ctx *ctx, void *host, const void *dev,
	      size_t bytes)
{
	struct ms_err err = { 0 };
	if (ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &err))
		t_fatal("ms_gpu_stream_sync: %s", err.msg);
	if (ms_gpu_download(host, dev, bytes, &err))
		t_fatal("ms_gpu_download(%zu): %s", bytes, err.msg);
}
