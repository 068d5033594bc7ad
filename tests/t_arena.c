/*
 * t_arena - the arena: one shared memfd of cache.size bytes, sealed, handed
 * to clients read-only; hugepages, NUMA and mlock refused with messages that
 * say what to do.
 *
 *  shared     size rounded up to the page; the memfd has that size and is
 *             close-on-exec; bytes written through a->base are seen through
 *             a second mapping of the memfd and by a forked child (and the
 *             child's writes by us); sealed: F_SEAL_SHRINK | F_SEAL_GROW |
 *             F_SEAL_SEAL, ftruncate fails; size 0 refused; free twice is
 *             harmless and closes the memfd.
 *  readonly   ms_arena_ro_fd: O_RDONLY, close-on-exec; maps PROT_READ and
 *             sees the arena's bytes, live; PROT_WRITE + MAP_SHARED fails,
 *             mprotect to PROT_WRITE fails, write/pwrite/ftruncate fail;
 *             MAP_PRIVATE writes stay private. And a client (a child as
 *             uid 65534 when run as root, like a peer of another user) that
 *             reopens the fd through /proc/self/fd read-write must still
 *             not be able to write the cache.
 *  huge       hugepages = on without enough free 2 MiB pages fails with
 *             -ENOMEM and a message naming nr_hugepages and the page count
 *             (with enough reserved: it must work, 2 MiB pages, size rounded
 *             to 2 MiB); hugepages = auto falls back and says why.
 *  numa       a node above the highest is refused naming the highest; a
 *             value that is neither a node nor MS_NUMA_* (-4) is refused;
 *             auto / interleave / node 0 / none work and say so in the mode.
 *  mlock      locked as root (VmLck grows); a child with RLIMIT_MEMLOCK =
 *             1 MB (as uid 65534 when we are root: root's CAP_IPC_LOCK
 *             ignores the limit) asking for a 64 MB locked arena gets the
 *             message naming RLIMIT_MEMLOCK, its value, ulimit -l and
 *             LimitMEMLOCK=infinity, and leaks no descriptor. In sanitizer
 *             builds too: their mlock() is a no-op that succeeds, and the
 *             arena locks through the system call (ms_mem_lock) so that a
 *             "locked" arena is locked (and resident) in every build.
 *
 * Every arena's mode line is printed. MS_CT_SABOTAGE=6 expects the memfd to
 * be one page larger than it is.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <numa.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cachetest.h"

#define NOBODY 65534

static int arena_new(struct ms_arena *a, uint64_t size, enum ms_huge huge,
		     int node, bool lock, struct ms_err *err)
{
	struct ms_arena_config cfg = { .size = size, .huge = huge, .numa_node = node,
				       .lock = lock };
	ms_err_clear(err);
	int rc = ms_arena_init(a, &cfg, err);
	printf("arena %llu B, huge %d, node %d, lock %d: %d%s%s%s%s\n",
	       (unsigned long long)size, huge, node, lock, rc, rc ? " " : "",
	       rc ? err->msg : "", rc ? "" : "; mode: ", rc ? "" : a->mode);
	return rc;
}

/* ---- shared, sized, sealed --------------------------------------------------------- */

static void test_shared(void)
{
	printf("-- shared\n");
	struct ms_arena a;
	struct ms_err err = { 0 };
	int fds = ct_fd_count();
	T_EQ_U64(arena_new(&a, 0, MS_HUGE_OFF, MS_NUMA_NONE, false, &err),
		 (uint64_t)-EINVAL);
	T_CHECK(strstr(err.msg, "cache.size"), "size 0: '%s'", err.msg);
	T_EQ_U64(a.memfd, (uint64_t)-1);
	if (arena_new(&a, 5000, MS_HUGE_OFF, MS_NUMA_NONE, false, &err))
		t_fatal("ms_arena_init: %s", err.msg);
	T_EQ_U64(a.size, 8192);
	T_EQ_U64(a.page_size, 4096);
	T_CHECK(!a.hugetlb && !a.thp && !a.locked, "flags: hugetlb %d thp %d locked %d",
		a.hugetlb, a.thp, a.locked);
	T_EQ_U64(a.numa_node, (uint64_t)MS_NUMA_NONE);
	T_CHECK(strstr(a.mode, "hugepages = off") && strstr(a.mode, "not locked"),
		"mode '%s'", a.mode);
	struct stat st;
	T_CHECK(fstat(a.memfd, &st) == 0, "fstat: %s", strerror(errno));
	T_EQ_U64(st.st_size, a.size + (ct_sabotage() == 6 ? 4096 : 0));
	T_CHECK(fcntl(a.memfd, F_GETFD) & FD_CLOEXEC, "the memfd is not close-on-exec");
	T_CHECK((fcntl(a.memfd, F_GETFL) & O_ACCMODE) == O_RDWR, "the memfd is not O_RDWR");
	int seals = fcntl(a.memfd, F_GET_SEALS);
	printf("seals: 0x%x\n", seals);
	T_CHECK(seals >= 0 && (seals & F_SEAL_SHRINK) && (seals & F_SEAL_GROW) &&
			(seals & F_SEAL_SEAL),
		"seals 0x%x: expected SHRINK | GROW | SEAL", seals);
	errno = 0;
	T_CHECK(ftruncate(a.memfd, (off_t)a.size * 2) == -1 && errno == EPERM,
		"growing the sealed memfd: errno %d", errno);
	errno = 0;
	T_CHECK(ftruncate(a.memfd, 4096) == -1 && errno == EPERM,
		"shrinking the sealed memfd: errno %d", errno);
	errno = 0;
	T_CHECK(fcntl(a.memfd, F_ADD_SEALS, F_SEAL_WRITE) == -1 && errno == EPERM,
		"more seals could be added: errno %d", errno);
	T_CHECK(fstat(a.memfd, &st) == 0 && (uint64_t)st.st_size == a.size,
		"the size changed");

	/* shared: a second mapping, a child */
	for (uint64_t i = 0; i < a.size; i++)
		a.base[i] = (uint8_t)(i * 7 + 1);
	uint8_t *m2 = mmap(NULL, a.size, PROT_READ, MAP_SHARED, a.memfd, 0);
	T_CHECK(m2 != MAP_FAILED, "mmap of the memfd: %s", strerror(errno));
	if (m2 != MAP_FAILED) {
		T_CHECK(!memcmp(m2, a.base, a.size), "a second mapping differs");
		a.base[100] = 0xab;
		T_EQ_U64(m2[100], 0xab);
		munmap(m2, a.size);
	}
	pid_t pid = fork();
	if (pid == 0) {
		int ok = a.base[100] == 0xab && a.base[101] == (uint8_t)(101 * 7 + 1);
		a.base[200] = 0xcd; /* the inherited MAP_SHARED mapping */
		_exit(ok ? 0 : 3);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		"the child did not see the arena's bytes (status 0x%x)", status);
	T_EQ_U64(a.base[200], 0xcd);
	int memfd = a.memfd;
	ms_arena_free(&a);
	T_CHECK(fcntl(memfd, F_GETFD) == -1 && errno == EBADF, "the memfd stayed open");
	T_CHECK(a.base == NULL && a.memfd == -1, "ms_arena_free left base/memfd set");
	ms_arena_free(&a); /* twice: harmless */
	T_EQ_U64(ct_fd_count(), fds);
}

/* ---- read-only descriptor ------------------------------------------------------------ */

/* In a child of another uid (a client): reopens the read-only fd through
 * /proc read-write and tries to write the cache. Exit 0 = could not; 2 = it
 * wrote; 3 = setup failed. */
static int reopen_attack(int ro, size_t size, bool drop)
{
	if (drop) {
		if (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY))
			return 3;
		prctl(PR_SET_DUMPABLE, 1); /* as any client that never was root */
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", ro);
	int rw = open(path, O_RDWR | O_CLOEXEC);
	if (rw < 0) {
		printf("  uid %u: reopening read-write: %s (refused: good)\n",
		       (unsigned)geteuid(), strerror(errno));
		return 0;
	}
	int wrote = 0;
	uint8_t x = 0x5a;
	if (pwrite(rw, &x, 1, 300) == 1)
		wrote |= 1;
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
	if (p != MAP_FAILED) {
		((uint8_t *)p)[301] = 0x5b;
		munmap(p, size);
		wrote |= 2;
	}
	printf("  uid %u: reopened the read-only fd read-write through %s; write(): "
	       "%s, mmap(PROT_WRITE, MAP_SHARED): %s\n",
	       (unsigned)geteuid(), path, wrote & 1 ? "wrote" : "refused",
	       wrote & 2 ? "wrote" : "refused");
	close(rw);
	return wrote ? 2 : 0;
}

static void test_readonly(void)
{
	printf("-- readonly\n");
	struct ms_arena a;
	struct ms_err err = { 0 };
	if (arena_new(&a, 1 << 20, MS_HUGE_AUTO, MS_NUMA_NONE, false, &err))
		t_fatal("ms_arena_init: %s", err.msg);
	for (uint64_t i = 0; i < a.size; i++)
		a.base[i] = (uint8_t)(i * 13 + 5);
	int fds = ct_fd_count();
	int ro = ms_arena_ro_fd(&a);
	T_CHECK(ro >= 0, "ms_arena_ro_fd: %d", ro);
	if (ro < 0) {
		ms_arena_free(&a);
		return;
	}
	T_CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "the fd is not O_RDONLY");
	T_CHECK(fcntl(ro, F_GETFD) & FD_CLOEXEC, "the fd is not close-on-exec");
	struct stat s1, s2;
	T_CHECK(!fstat(ro, &s1) && !fstat(a.memfd, &s2) && s1.st_ino == s2.st_ino &&
			s1.st_dev == s2.st_dev && (uint64_t)s1.st_size == a.size,
		"the read-only fd is not the arena");
	uint8_t *r = mmap(NULL, a.size, PROT_READ, MAP_SHARED, ro, 0);
	T_CHECK(r != MAP_FAILED, "mmap PROT_READ of the read-only fd: %s",
		strerror(errno));
	if (r != MAP_FAILED) {
		T_CHECK(!memcmp(r, a.base, a.size), "the read-only mapping differs");
		a.base[4097] = 0x77; /* live: the daemon's writes show */
		T_EQ_U64(r[4097], 0x77);
		errno = 0;
		T_CHECK(mprotect(r, a.size, PROT_READ | PROT_WRITE) == -1 &&
				errno == EACCES,
			"mprotect(PROT_WRITE) on the read-only mapping: errno %d", errno);
		munmap(r, a.size);
	}
	errno = 0;
	void *w = mmap(NULL, a.size, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0);
	T_CHECK(w == MAP_FAILED && errno == EACCES,
		"mmap(PROT_WRITE, MAP_SHARED) of the read-only fd: %s",
		w == MAP_FAILED ? strerror(errno) : "it worked");
	if (w != MAP_FAILED)
		munmap(w, a.size);
	uint8_t x = 1;
	errno = 0;
	T_CHECK(write(ro, &x, 1) == -1 && errno == EBADF, "write: errno %d", errno);
	errno = 0;
	T_CHECK(pwrite(ro, &x, 1, 10) == -1 && errno == EBADF, "pwrite: errno %d", errno);
	errno = 0;
	T_CHECK(ftruncate(ro, 0) == -1, "ftruncate on the read-only fd worked");
	/* a private mapping may be written: copy on write, never the cache */
	uint8_t *pv = mmap(NULL, a.size, PROT_READ | PROT_WRITE, MAP_PRIVATE, ro, 0);
	if (pv != MAP_FAILED) {
		pv[8] = (uint8_t)~pv[8];
		T_EQ_U64(a.base[8], (uint8_t)(8 * 13 + 5));
		munmap(pv, a.size);
	}

	/* the reopen through /proc: as root (who may do anything, shown for
	 * the record) and as a client without privileges (must not write):
	 * uid 65534 when we are root, else ourselves */
	uint8_t b300 = a.base[300], b301 = a.base[301];
	bool root = geteuid() == 0;
	for (int client = !root; client < 2; client++) {
		bool drop = client && root;
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			int rc = reopen_attack(ro, a.size, drop);
			fflush(stdout);
			_exit(rc);
		}
		int status = 0;
		waitpid(pid, &status, 0);
		int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		bool changed = a.base[300] != b300 || a.base[301] != b301;
		if (client) {
			T_CHECK(code == 0 || code == 2, "the client child: status 0x%x",
				status);
			T_CHECK(!changed && code == 0,
				"a client of another uid reopened the read-only arena fd "
				"read-write through /proc/self/fd and wrote the cache "
				"(bytes 300/301: 0x%02x 0x%02x)",
				a.base[300], a.base[301]);
		}
		a.base[300] = b300;
		a.base[301] = b301;
	}
	close(ro);
	T_EQ_U64(ct_fd_count(), fds);
	ms_arena_free(&a);
}

/* ---- huge pages -------------------------------------------------------------------------- */

/* What a client does with the read-only fd (daemon/client.c): a 2 MiB-
 * aligned read-only mapping, whose faults then map the arena's 2 MiB pages
 * with one entry each. Streaming experts through 4 KiB entries of the same
 * pages (a mapping at any address) computed at a third of the speed in
 * bench e2e's run-daemon. The unaligned mapping's figure is printed only:
 * that is the kernel's business. */
static void client_view_huge(const struct ms_arena *a)
{
	int fd = ms_arena_ro_fd(a);
	T_CHECK(fd >= 0, "ms_arena_ro_fd: %d", fd);
	if (fd < 0)
		return;
	void *p = NULL;
	int rc = ms_mem_map_shared(fd, a->size, MS_HUGE_2M, false, &p);
	T_CHECK(rc == 0, "ms_mem_map_shared read-only: %s", strerror(-rc));
	if (!rc) {
		T_CHECK(((uintptr_t)p & (MS_HUGE_2M - 1)) == 0, "%p is not 2 MiB-aligned",
			p);
		uint64_t sum = 0;
		for (uint64_t o = 0; o < a->size; o += 4096)
			sum += ((const volatile uint8_t *)p)[o];
		uint64_t huge = ms_mem_huge_bytes(p);
		printf("client view, 2 MiB-aligned: %llu of %llu bytes on 2 MiB entries, "
		       "the arena's own %llu (sum %llu)\n", (unsigned long long)huge,
		       (unsigned long long)a->size, (unsigned long long)a->huge_bytes,
		       (unsigned long long)sum);
		/* every huge page the arena got (a collapse may leave some out) */
		T_CHECK(a->huge_bytes > 0 && huge == a->huge_bytes,
			"the client's view has %llu bytes on 2 MiB entries, the arena "
			"%llu", (unsigned long long)huge,
			(unsigned long long)a->huge_bytes);
		/* PROT_READ: writing must fault, not write the cache */
		T_CHECK(mprotect(p, 4096, PROT_READ | PROT_WRITE) == -1,
			"the read-only view became writable");
		munmap(p, a->size);
	}
	/* a mapping one page off the 2 MiB grid, for the record */
	uint8_t *q = mmap(NULL, a->size + MS_HUGE_2M, PROT_READ, MAP_SHARED, fd, 0);
	if (q != MAP_FAILED) {
		uint8_t *r = (uint8_t *)(((uintptr_t)q + MS_HUGE_2M) & ~(uintptr_t)(MS_HUGE_2M - 1)) + 4096;
		munmap(q, a->size + MS_HUGE_2M);
		q = mmap(r, a->size - 4096, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE,
			 fd, 0);
		if (q != MAP_FAILED) {
			uint64_t sum = 0;
			for (uint64_t o = 0; o < a->size - 4096; o += 4096)
				sum += ((const volatile uint8_t *)q)[o];
			printf("client view one page off the grid: %llu bytes on 2 MiB "
			       "entries (sum %llu)\n",
			       (unsigned long long)ms_mem_huge_bytes(q),
			       (unsigned long long)sum);
			munmap(q, a->size - 4096);
		}
	}
	close(fd);
}

static void test_huge(void)
{
	printf("-- huge\n");
	const uint64_t size = 64ull << 20;
	uint64_t free_pages = ct_meminfo_kb("/proc/meminfo", "HugePages_Free");
	uint64_t page_kb = ct_meminfo_kb("/proc/meminfo", "Hugepagesize");
	printf("huge pages: %llu free of %llu kB\n", (unsigned long long)free_pages,
	       (unsigned long long)page_kb);
	struct ms_arena a;
	struct ms_err err = { 0 };
	int fds = ct_fd_count();
	int rc = arena_new(&a, size, MS_HUGE_ON, MS_NUMA_NONE, false, &err);
	if (page_kb == 2048 && free_pages * 2048 * 1024 >= size) {
		printf("enough 2 MiB pages are reserved here: hugepages = on must work\n");
		T_CHECK(rc == 0, "hugepages = on with %llu free pages: %s",
			(unsigned long long)free_pages, err.msg);
		if (!rc) {
			T_CHECK(a.hugetlb && a.page_size == 2u << 20 &&
					a.size % (2u << 20) == 0 && strstr(a.mode, "huge"),
				"hugetlb %d page %llu size %llu mode '%s'", a.hugetlb,
				(unsigned long long)a.page_size,
				(unsigned long long)a.size, a.mode);
			ms_arena_free(&a);
		}
	} else {
		T_EQ_U64(rc, (uint64_t)-ENOMEM);
		T_CHECK(strstr(err.msg, "hugepages = on") &&
				strstr(err.msg, "/proc/sys/vm/nr_hugepages") &&
				strstr(err.msg, "echo 32 ") && strstr(err.msg, "hugepages = auto"),
			"the message does not say how to reserve 32 pages: '%s'", err.msg);
	}
	T_EQ_U64(ct_fd_count(), fds);
	rc = arena_new(&a, size, MS_HUGE_AUTO, MS_NUMA_NONE, false, &err);
	T_CHECK(rc == 0, "hugepages = auto: %s", err.msg);
	if (!rc) {
		T_CHECK(a.hugetlb || strstr(a.mode, "no hugetlbfs pages reserved"),
			"auto fell back without saying why: '%s'", a.mode);
		T_CHECK(a.hugetlb || a.thp || strstr(a.mode, "shmem_enabled"),
			"4 KiB pages without the reason: '%s'", a.mode);
		if (a.hugetlb || a.thp)
			client_view_huge(&a);
		ms_arena_free(&a);
	}
}

/* ---- NUMA ------------------------------------------------------------------------------------ */

static void test_numa(void)
{
	printf("-- numa\n");
	struct ms_arena a;
	struct ms_err err = { 0 };
	const uint64_t size = 4 << 20;
	int fds = ct_fd_count();
	if (numa_available() < 0) {
		printf("no NUMA support here: a node number must be refused\n");
		T_EQ_U64(arena_new(&a, size, MS_HUGE_OFF, 0, false, &err),
			 (uint64_t)-ENOSYS);
		T_CHECK(strstr(err.msg, "NUMA"), "'%s'", err.msg);
		T_CHECK(arena_new(&a, size, MS_HUGE_OFF, MS_NUMA_AUTO, false, &err) == 0,
			"auto: %s", err.msg);
		ms_arena_free(&a);
		T_EQ_U64(ct_fd_count(), fds);
		return;
	}
	int max = numa_max_node();
	char want[64];
	snprintf(want, sizeof(want), "highest node is %d", max);
	T_EQ_U64(arena_new(&a, size, MS_HUGE_OFF, max + 1, false, &err),
		 (uint64_t)-EINVAL);
	T_CHECK(strstr(err.msg, want) && strstr(err.msg, "cache.numa_node"),
		"node %d: the message '%s' does not say '%s'", max + 1, err.msg, want);
	T_EQ_U64(arena_new(&a, size, MS_HUGE_OFF, 1000, false, &err), (uint64_t)-EINVAL);
	T_EQ_U64(ct_fd_count(), fds);
	int rc = arena_new(&a, size, MS_HUGE_OFF, -4, false, &err);
	T_CHECK(rc == -EINVAL,
		"numa_node -4 (neither a node nor MS_NUMA_*) was accepted: %d, mode '%s'",
		rc, rc ? "" : a.mode);
	if (!rc)
		ms_arena_free(&a);
	static const struct {
		int node;
		const char *mode;
	} ok[] = {
		{ MS_NUMA_AUTO, "NUMA node" },
		{ MS_NUMA_INTERLEAVE, "interleaved" },
		{ 0, "NUMA node 0" },
		{ MS_NUMA_NONE, "" },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		rc = arena_new(&a, size, MS_HUGE_OFF, ok[i].node, false, &err);
		T_CHECK(rc == 0, "numa_node %d: %s", ok[i].node, err.msg);
		if (rc)
			continue;
		bool mode_ok = strstr(a.mode, ok[i].mode) != NULL ||
			       (ok[i].node == MS_NUMA_AUTO && strstr(a.mode, "one NUMA node"));
		T_CHECK(mode_ok, "numa_node %d: mode '%s'", ok[i].node, a.mode);
		if (ok[i].node >= 0 || ok[i].node == MS_NUMA_NONE ||
		    ok[i].node == MS_NUMA_INTERLEAVE)
			T_EQ_U64(a.numa_node, (uint64_t)ok[i].node);
		else
			T_CHECK(a.numa_node >= 0 && a.numa_node <= max,
				"auto bound to node %d", a.numa_node);
		ms_arena_free(&a);
	}
	/* auto with a GPU that does not exist: its node is unknown, ours is used */
	struct ms_arena_config cfg = { .size = size, .huge = MS_HUGE_OFF,
				       .numa_node = MS_NUMA_AUTO,
				       .gpu_pci = "0000:ff:1f.7", .lock = false };
	rc = ms_arena_init(&a, &cfg, &err);
	T_CHECK(rc == 0, "auto with an unknown GPU: %s", err.msg);
	if (!rc) {
		printf("auto, GPU 0000:ff:1f.7: %s\n", a.mode);
		ms_arena_free(&a);
	}
	T_EQ_U64(ct_fd_count(), fds);
}

/* ---- mlock ----------------------------------------------------------------------------------- */

static void test_mlock(void)
{
	printf("-- mlock\n");
	struct ms_arena a;
	struct ms_err err = { 0 };
	bool root = geteuid() == 0;
	uint64_t lck0 = ct_meminfo_kb("/proc/self/status", "VmLck");
	int rc = root ? arena_new(&a, 8 << 20, MS_HUGE_AUTO, MS_NUMA_NONE, true, &err)
		      : -1;
	if (!root)
		printf("not root: the locked 8 MB arena is not tried (RLIMIT_MEMLOCK "
		       "may be lower)\n");
	T_CHECK(rc == 0 || !root, "a locked 8 MB arena as root: %s", err.msg);
	if (!rc) {
		uint64_t lck = ct_meminfo_kb("/proc/self/status", "VmLck");
		printf("VmLck: %llu kB -> %llu kB\n", (unsigned long long)lck0,
		       (unsigned long long)lck);
		T_CHECK(a.locked && strstr(a.mode, "locked") && !strstr(a.mode, "not locked"),
			"locked %d, mode '%s'", a.locked, a.mode);
		T_CHECK(lck >= lck0 + 8 * 1024, "VmLck grew from %llu to %llu kB",
			(unsigned long long)lck0, (unsigned long long)lck);
		ms_arena_free(&a);
	}

	int pfd[2];
	if (pipe(pfd))
		t_fatal("pipe: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		/* root has CAP_IPC_LOCK, which ignores the limit: drop it */
		struct rlimit rl = { 1 << 20, 1 << 20 };
		if (setrlimit(RLIMIT_MEMLOCK, &rl) ||
		    (root && (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY))))
			_exit(3);
		int fds = ct_fd_count();
		struct ms_err e2 = { 0 };
		struct ms_arena_config cfg = { .size = 64 << 20, .huge = MS_HUGE_AUTO,
					       .numa_node = MS_NUMA_NONE, .lock = true };
		struct ms_arena b;
		int r2 = ms_arena_init(&b, &cfg, &e2);
		char out[MS_ERR_MSG_MAX + 64];
		int n = snprintf(out, sizeof(out), "%d %d %s", r2, ct_fd_count() - fds,
				 e2.msg);
		if (write(pfd[1], out, (size_t)n) != n)
			_exit(4);
		if (!r2)
			ms_arena_free(&b);
		_exit(0);
	}
	close(pfd[1]);
	char buf[MS_ERR_MSG_MAX + 64] = "";
	ssize_t got = 0, r;
	while ((r = read(pfd[0], buf + got, sizeof(buf) - 1 - (size_t)got)) > 0)
		got += r;
	buf[got > 0 ? got : 0] = '\0';
	close(pfd[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	T_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x",
		status);
	int crc = 0, leaked = 0, off = 0;
	if (sscanf(buf, "%d %d %n", &crc, &leaked, &off) < 2)
		t_fail_at(__FILE__, __LINE__, "the child said '%s'", buf);
	const char *msg = buf + off;
	printf("uid %u, RLIMIT_MEMLOCK 1 MB, 64 MB locked: %d %s\n",
	       root ? NOBODY : (unsigned)geteuid(), crc, msg);
	T_CHECK(crc == -ENOMEM || crc == -EPERM || crc == -EAGAIN,
		"a 64 MB locked arena under a 1 MB RLIMIT_MEMLOCK: %d", crc);
	T_CHECK(strstr(msg, "RLIMIT_MEMLOCK is 1 MB") && strstr(msg, "ulimit -l") &&
			strstr(msg, "LimitMEMLOCK=infinity") && strstr(msg, "64 MB"),
		"the message does not name the limit and the fix: '%s'", msg);
	T_EQ_U64(leaked, 0);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	static const struct {
		const char *name;
		void (*fn)(void);
	} parts[] = {
		{ "shared", test_shared }, { "readonly", test_readonly },
		{ "huge", test_huge },     { "numa", test_numa },
		{ "mlock", test_mlock },
	};
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		if (!t_part_wanted(parts[i].name, argc, argv))
			continue;
		int before = t_failures;
		parts[i].fn();
		printf("%s: %s\n", parts[i].name, t_failures == before ? "ok" : "FAILED");
	}
	return t_done();
}
