/*
 * t_arena_thp - the cache on transparent huge pages: O_DIRECT straight into
 * an arena the kernel backed with 2 MiB pages (staging auto then stays
 * off), and the staging buffers on them, every expert of the tiny model
 * byte-exact.
 *
 *  anon     the private anonymous arena (the embedded cache's), where THP
 *           for anonymous memory is on for regions that ask (madvise, as
 *           distributions ship, or always): at least half of it measured on
 *           huge pages, reads direct, no staging.
 *  shmem    the daemon's shared memfd arena: where THP for shared memory is
 *           on (advise, always, within_size, force in shmem_enabled) from
 *           its faults, else collapsed into huge pages (MADV_COLLAPSE,
 *           Linux 6.1, whatever shmem_enabled says but deny); the same
 *           checks. Where neither can be had it is not tested, and says so.
 *  staging  8 MiB of staging buffers forced on over a 4 KiB-page arena
 *           (hugepages = off): the buffers at least half on huge pages,
 *           reads staged.
 *
 * Where neither kind of memory can get THP there is nothing to test: exit
 * 77 with the reason. THP can be short of pages on a fragmented
 * machine; the checks ask for half, and print what was measured.
 */
#include <stdio.h>

#include "cachetest.h"

/* A cache over the tiny model of `size` bytes, read O_DIRECT: the arena
 * private anonymous memory or the shared memfd, hugepages as given, the
 * staging given; its read path must be `want`. */
static struct ms_read_info run(const struct ct_model *cm, uint64_t size, bool anon,
			       enum ms_huge huge, uint64_t staging,
			       enum ms_read_path want, const char *what)
{
	struct ms_cache_config cfg;
	ct_config(&cfg, size, 30000);
	cfg.arena.private_anon = anon;
	cfg.arena.huge = huge;
	cfg.staging = staging;
	cfg.io.direct = MS_IO_DIRECT_ON;
	struct ms_read_info ri;
	ct_read_path_run(cm, &cfg, want, what, &ri);
	return ri;
}

/* A THP arena, read straight into: at least half of it on huge pages. */
static void huge_arena(const struct ct_model *cm, uint64_t size, bool anon,
		       const char *what)
{
	struct ms_read_info ri = run(cm, size, anon, MS_HUGE_AUTO, MS_STAGING_AUTO,
				     MS_READ_DIRECT, what);
	T_CHECK(ri.arena_huge_bytes * 2 >= ri.arena_bytes && !ri.staging_bytes,
		"%s: %llu of %llu arena bytes on huge pages, %llu staging bytes", what,
		(unsigned long long)ri.arena_huge_bytes,
		(unsigned long long)ri.arena_bytes, (unsigned long long)ri.staging_bytes);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct ct_model cm;
	uint64_t size = ct_tiny_model(&cm);
	struct ms_arena_config shared = { .size = size, .huge = MS_HUGE_AUTO };
	bool anon = ms_mem_thp_on(false), shmem = ms_arena_huge_expected(&shared);
	printf("THP: anonymous memory %s; shared memory %s, huge pages for it %s\n",
	       anon ? "on" : "off", ms_mem_thp_on(true) ? "on" : "off",
	       shmem ? "to be had" : "not to be had");
	if (!anon && !shmem) {
		ct_model_close(&cm);
		t_skip("transparent huge pages are off for anonymous memory, and "
		       "shared memory gets none (shmem_enabled off, no MADV_COLLAPSE): "
		       "nothing to test");
	}
	if (anon) {
		huge_arena(&cm, size, true, "anon");
		/* staging forced over a 4 KiB-page arena */
		struct ms_read_info ri = run(&cm, size, false, MS_HUGE_OFF,
					     MS_STAGING_DEFAULT, MS_READ_STAGING,
					     "staging");
		T_CHECK(ri.staging_bytes == MS_STAGING_DEFAULT &&
				ri.staging_huge_bytes * 2 >= ri.staging_bytes,
			"staging: %llu of %llu bytes on huge pages",
			(unsigned long long)ri.staging_huge_bytes,
			(unsigned long long)ri.staging_bytes);
	} else {
		printf("anon, staging: not tested (THP for anonymous memory is off)\n");
	}
	if (shmem)
		huge_arena(&cm, size, false, "shmem");
	else
		printf("shmem: not tested: THP for shared memory is off "
		       "(/sys/kernel/mm/transparent_hugepage/shmem_enabled) and "
		       "MADV_COLLAPSE refused\n");
	ct_model_close(&cm);
	return t_done();
}
