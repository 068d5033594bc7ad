/*
 * arena.c - the one shared mapping every expert lives in.
 *
 * A memfd (so that clients can map it read-only, zero copy: the fd travels
 * over the socket), backed by hugetlbfs pages where they are reserved and
 * asked for, else by transparent huge pages: advised where shmem THP is on,
 * collapsed into them (MADV_COLLAPSE, Linux 6.1) where it is off, as
 * distributions ship it - O_DIRECT into 4 KiB pages runs at a fraction of
 * the device's rate, and a collapse needs no admin step. Where neither
 * works the cache reads through staging buffers instead (cache.c). Mapped
 * at a 2 MiB-aligned address, so that the huge pages are mapped whole;
 * bound to a NUMA node
 * (the GPU's, where one is named, else the daemon's own) before the first
 * touch; locked, so that the kernel never pages expert bytes out behind the
 * cache's back. Sealed against growing and shrinking: a client's mapping can
 * never lose its pages.
 *
 * Every fallback is recorded in a->mode, one line, for the log and stats.
 */
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "moestream/cache.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010 /* Linux 5.1 */
#endif

#define HUGE_2M MS_HUGE_2M

static void mode_add(struct ms_arena *a, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void mode_add(struct ms_arena *a, const char *fmt, ...)
{
	size_t n = strlen(a->mode);
	if (n + 3 >= sizeof(a->mode))
		return;
	if (n)
		n += (size_t)snprintf(a->mode + n, sizeof(a->mode) - n, ", ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(a->mode + n, sizeof(a->mode) - n, fmt, ap);
	va_end(ap);
}

/* This machine's memory as this process sees it: RAM (MemTotal) and what is
 * left (MemAvailable), each capped by this process's memory cgroup (v2, or
 * v1's memory controller): by its limit, and by its limit less its usage. */
void ms_host_memory(uint64_t *total, uint64_t *avail)
{
	uint64_t tot = 0, av = 0;
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long kb;
		if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
			tot = kb * 1024;
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			av = kb * 1024;
	}
	if (f)
		fclose(f);
	f = fopen("/proc/self/cgroup", "r");
	while (f && fgets(line, sizeof(line), f)) {
		char *path = strrchr(line, ':');
		bool v1 = strstr(line, ":memory:") != NULL;
		bool v2 = !strncmp(line, "0::", 3);
		if (!path || (!v1 && !v2))
			continue;
		path++;
		path[strcspn(path, "\n")] = '\0';
		char p1[512], p2[512];
		snprintf(p1, sizeof(p1), v1 ? "/sys/fs/cgroup/memory%s/memory.limit_in_bytes"
					    : "/sys/fs/cgroup%s/memory.max", path);
		snprintf(p2, sizeof(p2), v1 ? "/sys/fs/cgroup/memory%s/memory.usage_in_bytes"
					    : "/sys/fs/cgroup%s/memory.current", path);
		unsigned long long lim = 0, use = 0;
		FILE *a = fopen(p1, "r"), *b = fopen(p2, "r");
		if (a && fscanf(a, "%llu", &lim) == 1 && lim < (1ull << 60)) {
			if (lim < tot)
				tot = lim;
			if (b && fscanf(b, "%llu", &use) == 1 && lim > use &&
			    lim - use < av)
				av = lim - use;
		}
		if (a)
			fclose(a);
		if (b)
			fclose(b);
	}
	if (f)
		fclose(f);
	if (total)
		*total = tot;
	if (avail)
		*avail = av;
}

/* Free 2 MiB huge pages, from /proc/meminfo. */
static uint64_t huge_free_bytes(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	uint64_t free_pages = 0, rsvd = 0, size_kb = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		sscanf(line, "HugePages_Free: %lu", &free_pages);
		sscanf(line, "HugePages_Rsvd: %lu", &rsvd);
		sscanf(line, "Hugepagesize: %lu kB", &size_kb);
	}
	fclose(f);
	/* Reserved pages are promised to mappings that exist already. */
	free_pages = free_pages > rsvd ? free_pages - rsvd : 0;
	return size_kb == 2048 ? free_pages * HUGE_2M : 0;
}

/* The NUMA node of a PCI device (from sysfs), or -1. */
static int pci_node(const char *bdf)
{
	char path[256];
	int node = -1;
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/numa_node", bdf);
	FILE *f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%d", &node) != 1)
			node = -1;
		fclose(f);
	}
	return node;
}

static int place(struct ms_arena *a, const struct ms_arena_config *cfg,
		 struct ms_err *err)
{
	a->numa_node = MS_NUMA_NONE;
	if (cfg->numa_node == MS_NUMA_NONE)
		return 0;
	if (numa_available() < 0) {
		if (cfg->numa_node >= 0)
			return ms_err_set(err, -ENOSYS,
					  "cache.numa_node = %d but this kernel has "
					  "no NUMA support (set auto)",
					  cfg->numa_node);
		mode_add(a, "no NUMA support: not bound");
		return 0;
	}
	int max = numa_max_node();
	int node = cfg->numa_node;
	if (node == MS_NUMA_INTERLEAVE) {
		numa_interleave_memory(a->base, a->size, numa_all_nodes_ptr);
		a->numa_node = MS_NUMA_INTERLEAVE;
		mode_add(a, "interleaved over %d NUMA node(s)", max + 1);
		return 0;
	}
	if (node == MS_NUMA_AUTO) {
		if (max == 0) {
			a->numa_node = 0;
			mode_add(a, "one NUMA node");
			return 0;
		}
		if (cfg->gpu_pci && (node = pci_node(cfg->gpu_pci)) >= 0) {
			mode_add(a, "NUMA node %d (of GPU %s)", node, cfg->gpu_pci);
		} else {
			int cpu = sched_getcpu();
			node = cpu >= 0 ? numa_node_of_cpu(cpu) : 0;
			if (node < 0)
				node = 0;
			mode_add(a, "NUMA node %d (of the daemon's CPU%s)", node,
				 cfg->gpu_pci ? "; the GPU's node is unknown" : "");
		}
	} else if (node > max) {
		return ms_err_set(err, -EINVAL,
				  "cache.numa_node = %d but the highest node is %d",
				  node, max);
	} else if (node < 0) {
		return ms_err_set(err, -EINVAL,
				  "cache.numa_node = %d is not a node (0..%d), auto, "
				  "interleave or none",
				  node, max);
	} else {
		mode_add(a, "NUMA node %d", node);
	}
	numa_tonode_memory(a->base, a->size, node);
	a->numa_node = node;
	return 0;
}

/* Locks the arena (cache.lock), or faults every page in on our node. */
static int lock_or_touch(struct ms_arena *a, const struct ms_arena_config *cfg,
			 struct ms_err *err)
{
	if (cfg->lock) {
		int e = -ms_mem_lock(a->base, a->size);
		if (e) {
			struct rlimit rl = { 0 };
			getrlimit(RLIMIT_MEMLOCK, &rl);
			char lim[32];
			if (rl.rlim_cur == RLIM_INFINITY)
				snprintf(lim, sizeof(lim), "unlimited");
			else
				snprintf(lim, sizeof(lim), "%llu MB",
					 (unsigned long long)(rl.rlim_cur >> 20));
			return ms_err_set(err, -e,
					  "cannot lock the %llu MB cache in memory "
					  "(%s): RLIMIT_MEMLOCK is %s; raise it "
					  "(ulimit -l unlimited, or LimitMEMLOCK=infinity "
					  "in the systemd unit) or lower cache.size",
					  (unsigned long long)(a->size >> 20),
					  strerror(e), lim);
		}
		a->locked = true;
		mode_add(a, "locked");
	} else {
		/* Unlocked (tests): still fault every page in, on our node. */
		for (uint64_t o = 0; o < a->size; o += a->page_size)
			((volatile uint8_t *)a->base)[o] = 0;
		mode_add(a, "not locked");
	}
	return 0;
}

/* The embedded cache's arena: private anonymous memory with MADV_HUGEPAGE,
 * which anonymous THP's default ("madvise") honours with no admin step. */
static int anon_init(struct ms_arena *a, const struct ms_arena_config *cfg,
		     struct ms_err *err)
{
	a->size = (cfg->size + HUGE_2M - 1) & ~(HUGE_2M - 1);
	/* 2 MiB-aligned, so that every 2 MiB of it can be one huge page */
	void *p;
	int rc = ms_mem_map_anon(a->size, HUGE_2M, &p);
	if (rc)
		return ms_err_set(err, rc, "mapping a %llu-byte cache: %s",
				  (unsigned long long)a->size, strerror(-rc));
	a->base = p;
	a->anon = true;
	bool thp = cfg->huge != MS_HUGE_OFF && ms_mem_thp_on(false) &&
		   !madvise(a->base, a->size, MADV_HUGEPAGE);
	if ((rc = place(a, cfg, err)))
		return rc;
	if ((rc = lock_or_touch(a, cfg, err)))
		return rc;
	a->huge_bytes = ms_mem_huge_bytes(a->base);
	a->thp = a->huge_bytes > 0;
	if (a->huge_bytes)
		a->page_size = HUGE_2M;
	mode_add(a, "private anonymous memory, %s: %.0f%% of it on 2 MiB pages",
		 thp ? "transparent huge pages asked (MADV_HUGEPAGE)"
		     : cfg->huge == MS_HUGE_OFF ? "huge pages off"
						: "4 KiB pages (THP for anonymous "
						  "memory is off in /sys/kernel/mm/"
						  "transparent_hugepage/enabled)",
		 100.0 * (double)a->huge_bytes / (double)a->size);
	return 0;
}

int ms_arena_init(struct ms_arena *a, const struct ms_arena_config *cfg,
		  struct ms_err *err)
{
	memset(a, 0, sizeof(*a));
	a->memfd = -1;
	a->page_size = 4096;
	if (!cfg->size)
		return ms_err_set(err, -EINVAL, "cache.size is 0");
	if (cfg->private_anon) {
		int rc = anon_init(a, cfg, err);
		if (rc)
			ms_arena_free(a);
		return rc;
	}

	uint64_t want = cfg->size;
	bool huge = false;
	if (cfg->huge != MS_HUGE_OFF) {
		uint64_t rounded = (want + HUGE_2M - 1) & ~(HUGE_2M - 1);
		if (huge_free_bytes() >= rounded) {
			a->memfd = memfd_create("moestream-arena",
						MFD_CLOEXEC | MFD_ALLOW_SEALING |
							MFD_HUGETLB);
			if (a->memfd >= 0) {
				huge = true;
				want = rounded;
				a->page_size = HUGE_2M;
			}
		}
		if (!huge && cfg->huge == MS_HUGE_ON)
			return ms_err_set(err, -ENOMEM,
					  "cache.hugepages = on but %llu MB of 2 MiB "
					  "huge pages are not free (reserve them: "
					  "echo %llu > /proc/sys/vm/nr_hugepages, or "
					  "set hugepages = auto)",
					  (unsigned long long)(rounded >> 20),
					  (unsigned long long)(rounded / HUGE_2M));
	}
	if (!huge) {
		want = (want + 4095) & ~4095ull;
		a->memfd = memfd_create("moestream-arena",
					MFD_CLOEXEC | MFD_ALLOW_SEALING);
	}
	if (a->memfd < 0)
		return ms_err_set(err, -errno, "memfd_create: %s", strerror(errno));
	a->size = want;
	int rc;
	if (ftruncate(a->memfd, (off_t)a->size)) {
		rc = ms_err_set(err, -errno, "sizing the arena to %llu bytes: %s",
				(unsigned long long)a->size, strerror(errno));
		goto fail;
	}
	fcntl(a->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
	void *p;
	if ((rc = ms_mem_map_shared(a->memfd, a->size, HUGE_2M, true, &p))) {
		ms_err_set(err, rc, "mapping the %llu-byte arena: %s",
			   (unsigned long long)a->size, strerror(-rc));
		goto fail;
	}
	/* Our mapping is the only writable one there will ever be: a client
	 * can reopen its read-only fd through /proc/self/fd/N read-write (a
	 * memfd's inode is mode 0777), and only this seal makes that reopen
	 * useless (write() and writable shared mmaps fail with EPERM). */
	if (fcntl(a->memfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)) {
		rc = ms_err_set(err, -errno, "sealing the arena against writes by "
				"clients (F_SEAL_FUTURE_WRITE, Linux 5.1): %s",
				strerror(errno));
		munmap(p, a->size);
		goto fail;
	}
	a->base = p;
	bool collapse = false;
	if (huge) {
		a->hugetlb = true;
		mode_add(a, "2 MiB huge pages");
	} else if (cfg->huge != MS_HUGE_OFF) {
		if (ms_mem_thp_on(true) && !madvise(a->base, a->size, MADV_HUGEPAGE))
			a->thp = true;
		else
			collapse = true;
	} else {
		mode_add(a, "4 KiB pages (hugepages = off)");
	}

	/* Bind before the first touch: pages are placed when faulted in. */
	if ((rc = place(a, cfg, err)))
		goto fail;
	if (a->thp) {
		mode_add(a, "transparent huge pages (no hugetlbfs pages reserved)");
	} else if (collapse && a->size < HUGE_2M) {
		mode_add(a, "4 KiB pages (smaller than a 2 MiB page)");
	} else if (collapse) {
		int crc = ms_mem_collapse(a->base, a->size);
		a->thp = crc != -EINVAL;
		if (a->thp)
			mode_add(a, "transparent huge pages by MADV_COLLAPSE (no "
				    "hugetlbfs pages reserved; THP for shared memory "
				    "is off in /sys/kernel/mm/transparent_hugepage/"
				    "shmem_enabled)%s%s",
				 crc ? ", some refused: " : "", crc ? strerror(-crc) : "");
		else
			mode_add(a, "4 KiB pages (no hugetlbfs pages reserved; THP "
				    "for shared memory is off in "
				    "/sys/kernel/mm/transparent_hugepage/"
				    "shmem_enabled; MADV_COLLAPSE: %s)",
				 strerror(-crc));
	}

	if ((rc = lock_or_touch(a, cfg, err)))
		goto fail;
	/* Every page is in now (locked or touched): what it is made of. */
	a->huge_bytes = ms_mem_huge_bytes(a->base);
	if (a->huge_bytes > a->size)
		a->huge_bytes = a->size;
	if (a->thp)
		mode_add(a, "%.0f%% of it on 2 MiB pages",
			 100.0 * (double)a->huge_bytes / (double)a->size);
	return 0;
fail:
	ms_arena_free(a);
	return rc;
}

/* Whether this kernel collapses shared memory into huge pages: one 2 MiB
 * memfd, tried. */
static bool shmem_collapse_works(void)
{
	int fd = memfd_create("moestream-probe", MFD_CLOEXEC);
	bool ok = false;
	void *p;
	if (fd < 0)
		return false;
	if (!ftruncate(fd, (off_t)HUGE_2M) && !ms_mem_map_shared(fd, HUGE_2M, HUGE_2M, true, &p)) {
		ok = !ms_mem_collapse(p, HUGE_2M);
		munmap(p, HUGE_2M);
	}
	close(fd);
	return ok;
}

bool ms_arena_huge_expected(const struct ms_arena_config *cfg)
{
	if (cfg->huge == MS_HUGE_OFF || !cfg->size)
		return false;
	if (cfg->private_anon)
		return ms_mem_thp_on(false);
	uint64_t rounded = (cfg->size + HUGE_2M - 1) & ~(HUGE_2M - 1);
	return huge_free_bytes() >= rounded || ms_mem_thp_on(true) ||
	       shmem_collapse_works();
}

bool ms_arena_huge(const struct ms_arena *a)
{
	return a->hugetlb || (a->size && a->huge_bytes >= a->size / 2);
}

void ms_arena_free(struct ms_arena *a)
{
	if (a->base)
		munmap(a->base, a->size);
	if (a->memfd >= 0)
		close(a->memfd);
	a->base = NULL;
	a->memfd = -1;
}

int ms_arena_ro_fd(const struct ms_arena *a)
{
	if (a->memfd < 0)
		return -EBADF; /* private anonymous memory: nothing to share */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", a->memfd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}
