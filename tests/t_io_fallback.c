/*
 * t_io_fallback - the engine's fallbacks, each taken, said and still right.
 *
 *  - io_uring refused by a seccomp filter (io_uring_setup -> ENOSYS, and ->
 *    EPERM, as container runtimes do): engine = auto falls back to the
 *    preadv pool, says so in mode.why, and reads correct bytes; engine =
 *    io_uring fails with a message instead.
 *  - O_DIRECT refused by the file system (ramfs; root only, to mount it):
 *    direct = auto reads through the page cache, says so and reads correct
 *    bytes; direct = on fails naming the file and the setting.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moestream/iouring.h"
#include "testutil.h"

#define FILE_BYTES (1u << 20)

static int make_file(const char *path)
{
	uint8_t *b = malloc(FILE_BYTES);
	if (!b)
		return -ENOMEM;
	for (uint32_t i = 0; i < FILE_BYTES; i++)
		b[i] = (uint8_t)(i * 131 + (i >> 9));
	int rc = t_write_file(path, b, FILE_BYTES);
	free(b);
	return rc;
}

struct done {
	int calls, result;
};

static void on_done(void *ctx, uint64_t id, int result)
{
	struct done *d = ctx;
	(void)id;
	__atomic_store_n(&d->result, result, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&d->calls, 1, __ATOMIC_SEQ_CST);
}

/* Reads 64 KiB at 8 KiB through an engine of the given config and checks
 * the bytes. Returns 0 when right; fills mode. */
static int read_check(const char *path, enum ms_io_engine eng,
		      enum ms_io_direct dir, struct ms_io_mode *mode, char *msg,
		      size_t msg_len)
{
	struct ms_io_config cfg;
	ms_io_config_default(&cfg);
	cfg.engine = eng;
	cfg.direct = dir;
	size_t len = 1 << 20;
	uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	struct ms_io *io;
	struct ms_err err = { 0 };
	const char *paths[1] = { path };
	int rc = ms_io_init(&io, &cfg, paths, 1, mem, len, &err);
	if (rc) {
		snprintf(msg, msg_len, "%s", err.msg);
		munmap(mem, len);
		return rc;
	}
	ms_io_get_mode(io, mode);
	struct done d = { 0 };
	struct ms_io_extent x = { .file = 0, .offset = 8192, .len = 65536,
				  .dst = mem };
	rc = ms_io_submit(io, &x, 1, MS_IO_DEMAND, on_done, &d, NULL);
	for (int i = 0; !rc && i < 5000 && !__atomic_load_n(&d.calls, __ATOMIC_SEQ_CST);
	     i++)
		usleep(1000);
	ms_io_free(io);
	if (!rc && d.calls != 1)
		rc = -ETIMEDOUT;
	if (!rc)
		rc = d.result;
	for (uint32_t i = 0; !rc && i < 65536; i++)
		if (mem[i] != (uint8_t)((8192 + i) * 131 + ((8192 + i) >> 9)))
			rc = -EILSEQ;
	munmap(mem, len);
	return rc;
}

/* In a child: io_uring_setup fails with `errno_val`, everything else runs. */
static int deny_io_uring(int errno_val)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K,
			 SECCOMP_RET_ERRNO | ((unsigned)errno_val & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		return -errno;
	return 0;
}

static void seccomp_case(const char *path, int errno_val)
{
	fflush(stdout); /* or the child prints our buffer again */
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		struct ms_io_mode mode;
		char msg[512] = "";
		if (deny_io_uring(errno_val)) {
			printf("  (seccomp unavailable here: %s)\n", strerror(errno));
			fflush(stdout);
			_exit(77);
		}
		int rc = read_check(path, MS_IO_ENGINE_AUTO, MS_IO_DIRECT_AUTO, &mode,
				    msg, sizeof(msg));
		printf("  io_uring_setup -> %s, engine auto: rc %d, engine %s, "
		       "why '%s'\n",
		       strerror(errno_val), rc,
		       mode.engine == MS_IO_ENGINE_PREADV ? "preadv" : "io_uring",
		       mode.why);
		fflush(stdout);
		if (rc || mode.engine != MS_IO_ENGINE_PREADV ||
		    !strstr(mode.why, "io_uring unavailable"))
			_exit(1);
		rc = read_check(path, MS_IO_ENGINE_URING, MS_IO_DIRECT_AUTO, &mode, msg,
				sizeof(msg));
		printf("  engine io_uring (no fallback asked): rc %d '%s'\n", rc, msg);
		fflush(stdout);
		if (!rc || !strstr(msg, "io_uring"))
			_exit(1);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
		t_skip("seccomp filters cannot be installed here");
	T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		"the io_uring fallback with io_uring_setup -> %s failed (status %d)",
		strerror(errno_val), st);
}

int main(void)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/data.bin", t_tmpdir());
	if (make_file(path))
		t_fatal("cannot write %s", path);

	/* The normal case first, so a failure below means the fallback. */
	struct ms_io_mode mode;
	char msg[512] = "";
	int rc = read_check(path, MS_IO_ENGINE_AUTO, MS_IO_DIRECT_AUTO, &mode, msg,
			    sizeof(msg));
	printf("normal: rc %d, engine %s, direct %d, why '%s'\n", rc,
	       mode.engine == MS_IO_ENGINE_URING ? "io_uring" : "preadv",
	       mode.direct, mode.why);
	T_CHECK(rc == 0, "the plain read failed: %d %s", rc, msg);

	seccomp_case(path, ENOSYS);
	seccomp_case(path, EPERM);

	/* O_DIRECT refused: ramfs has no direct I/O. */
	if (geteuid() != 0) {
		printf("not root: cannot mount ramfs; the O_DIRECT fallback is not "
		       "checked here\n");
		return t_done();
	}
	char dir[4096], rpath[4200];
	snprintf(dir, sizeof(dir), "%s/ramfs", t_tmpdir());
	mkdir(dir, 0755);
	if (mount("ramfs", dir, "ramfs", 0, NULL)) {
		printf("cannot mount ramfs (%s): the O_DIRECT fallback is not checked\n",
		       strerror(errno));
		return t_done();
	}
	snprintf(rpath, sizeof(rpath), "%s/data.bin", dir);
	if (make_file(rpath))
		t_fatal("cannot write %s", rpath);
	rc = read_check(rpath, MS_IO_ENGINE_AUTO, MS_IO_DIRECT_AUTO, &mode, msg,
			sizeof(msg));
	printf("ramfs, direct auto: rc %d, direct %d, why '%s'\n", rc, mode.direct,
	       mode.why);
	T_CHECK(rc == 0 && !mode.direct && strstr(mode.why, "O_DIRECT refused"),
		"ramfs with direct = auto: rc %d direct %d why '%s'", rc, mode.direct,
		mode.why);
	rc = read_check(rpath, MS_IO_ENGINE_AUTO, MS_IO_DIRECT_ON, &mode, msg,
			sizeof(msg));
	printf("ramfs, direct on: rc %d '%s'\n", rc, msg);
	T_CHECK(rc == -EINVAL && strstr(msg, rpath) && strstr(msg, "io.direct"),
		"ramfs with direct = on: rc %d '%s'", rc, msg);
	umount(dir);
	return t_done();
}
