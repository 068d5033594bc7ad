/*
 * mem.c - the memory calls util.h declares, shared by the arena (cache/) and
 * the I/O engine's staging buffers (iouring/): locking that a sanitizer
 * cannot turn into a no-op, aligned mappings, huge pages asked for now, and
 * what the kernel really backed a mapping with.
 *
 * Why ms_mem_collapse: a shared memfd gets huge pages from faults only where
 * shmem THP is on (shmem_enabled, "never" as distributions ship it), but
 * MADV_COLLAPSE (Linux 6.1) collapses shared memory into huge pages
 * whatever that setting says, except "deny": no admin step between an
 * install and a cache that O_DIRECT reads fill at the device's rate.
 *
 * Why ms_mem_lock goes around mlock(): AddressSanitizer and ThreadSanitizer
 * intercept mlock() and return 0 without calling the kernel (their runtimes
 * guard against locking their own terabytes of shadow). A cache that says
 * "locked" is then neither locked nor even resident, and in a sanitizer
 * build a memory check of the daemon measures something else than in the
 * plain build. Locking one named range through syscall(2) is exactly what
 * the plain build does.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "moestream/util.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1 */
#endif

int ms_mem_lock(void *p, size_t len)
{
	return syscall(SYS_mlock, p, len) ? -errno : 0;
}

int ms_mem_map_anon(size_t len, size_t align, void **out)
{
	*out = NULL;
	if (!len || !align || (align & (align - 1)) || len > SIZE_MAX - align)
		return -EINVAL;
	uint8_t *p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	uint8_t *al = (uint8_t *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
	/* give back the slack on both sides */
	if (al > p)
		munmap(p, (size_t)(al - p));
	if (p + align > al)
		munmap(al + len, (size_t)(p + align - al));
	*out = al;
	return 0;
}

int ms_mem_map_shared(int fd, size_t len, size_t align, bool writable, void **out)
{
	void *r;
	int rc = ms_mem_map_anon(len, align, &r);
	if (rc)
		return rc;
	/* the file replaces the reservation at the aligned address */
	void *p = mmap(r, len, PROT_READ | (writable ? PROT_WRITE : 0),
		       MAP_SHARED | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		munmap(r, len);
		return rc;
	}
	*out = p;
	return 0;
}

int ms_mem_collapse(void *p, size_t len)
{
	size_t whole = len & ~(size_t)(MS_HUGE_2M - 1);
	if (!whole || ((uintptr_t)p & (MS_HUGE_2M - 1)))
		return -EINVAL;
	for (size_t o = 0; o < whole; o += MS_HUGE_2M)
		((volatile uint8_t *)p)[o] = 0;
	return madvise(p, whole, MADV_COLLAPSE) ? -errno : 0;
}

bool ms_mem_thp_on(bool shared)
{
	static const char *const on[2][5] = {
		{ "[madvise]", "[always]", NULL },
		{ "[advise]", "[always]", "[within_size]", "[force]", NULL },
	};
	char buf[256] = "";
	FILE *f = fopen(shared ? "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
			       : "/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (!f)
		return false;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	for (const char *const *w = on[shared]; *w; w++)
		if (strstr(buf, *w))
			return true;
	return false;
}

uint64_t ms_mem_huge_bytes(const void *base)
{
	static const char *const keys[] = { "AnonHugePages:", "ShmemPmdMapped:",
					    "FilePmdMapped:", "Shared_Hugetlb:",
					    "Private_Hugetlb:" };
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	uint64_t kb = 0;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi, v;
		char perms[8];
		if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) == 3) {
			in = lo == (unsigned long long)(uintptr_t)base;
			continue;
		}
		if (!in)
			continue;
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			size_t n = strlen(keys[i]);
			if (!strncmp(line, keys[i], n) &&
			    sscanf(line + n, " %llu kB", &v) == 1)
				kb += v;
		}
	}
	if (f)
		fclose(f);
	return kb * 1024;
}
