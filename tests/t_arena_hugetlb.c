/*
 * t_arena_hugetlb - the cache on hugetlbfs pages (cache.hugepages = on):
 * O_DIRECT straight into an arena of reserved 2 MiB pages, staging auto
 * off, every expert of the tiny model byte-exact, the whole arena counted
 * as huge pages.
 *
 * It needs 2 MiB pages reserved and free (vm.nr_hugepages), which a stock
 * system has none of: exit 77 saying how many it needs. MS_TEST_HUGEPAGES=
 * reserve, as root, lets the test reserve what it needs for its run and
 * put vm.nr_hugepages back as it was when it ends (the pages exist only
 * while it runs; nothing is left reserved): the checks then run in a child,
 * so that the value is put back whatever becomes of them (a failure, a
 * crash, the watchdog's _exit).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cachetest.h"

#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

static long long nr_before = -1;

static long long read_nr(void)
{
	char *t = t_read_text(NR_HUGEPAGES), *end = NULL;
	long long v = t ? strtoll(t, &end, 10) : -1;
	if (!t || end == t)
		v = -1;
	free(t);
	return v;
}

static int write_nr(long long v)
{
	FILE *f = fopen(NR_HUGEPAGES, "w");
	if (!f)
		return -errno;
	int rc = fprintf(f, "%lld\n", v) < 0 ? -EIO : 0;
	if (fclose(f) && !rc)
		rc = -errno;
	return rc;
}

static void give_back(void)
{
	if (nr_before < 0)
		return;
	int rc = write_nr(nr_before);
	printf("vm.nr_hugepages put back to %lld (now %lld): %s\n", nr_before,
	       read_nr(), rc ? strerror(-rc) : "ok");
	if (rc || read_nr() != nr_before)
		t_fail_at(__FILE__, __LINE__, "vm.nr_hugepages not put back to %lld",
			  nr_before);
	nr_before = -1;
}

/* 2 MiB pages free for a new mapping (free less those promised). */
static uint64_t free_pages(void)
{
	uint64_t f = ct_meminfo_kb("/proc/meminfo", "HugePages_Free");
	uint64_t r = ct_meminfo_kb("/proc/meminfo", "HugePages_Rsvd");
	if (ct_meminfo_kb("/proc/meminfo", "Hugepagesize") != 2048)
		return 0;
	return f > r ? f - r : 0;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct ct_model cm;
	uint64_t size = ct_tiny_model(&cm);
	uint64_t need = size / MS_HUGE_2M, have = free_pages();
	printf("2 MiB pages: %llu free, %llu needed\n", (unsigned long long)have,
	       (unsigned long long)need);
	if (have < need) {
		const char *env = getenv("MS_TEST_HUGEPAGES");
		if (!env || strcmp(env, "reserve") || geteuid() != 0) {
			ct_model_close(&cm);
			t_skip("no hugetlbfs pages to test with (%llu free, %llu needed): "
			       "reserve them (sysctl vm.nr_hugepages), or run as root "
			       "with MS_TEST_HUGEPAGES=reserve for this run only",
			       (unsigned long long)have, (unsigned long long)need);
		}
		nr_before = read_nr();
		if (nr_before < 0)
			t_fatal("cannot read %s", NR_HUGEPAGES);
		int rc = write_nr(nr_before + (long long)(need - have));
		have = free_pages();
		printf("vm.nr_hugepages %lld -> %lld for this run: %s; %llu free\n",
		       nr_before, read_nr(), rc ? strerror(-rc) : "ok",
		       (unsigned long long)have);
		if (have < need) {
			give_back();
			ct_model_close(&cm);
			t_skip("the kernel could not reserve %llu 2 MiB pages (%llu free): "
			       "memory too fragmented", (unsigned long long)need,
			       (unsigned long long)have);
		}
		fflush(stdout);
		pid_t pid = fork();
		if (pid < 0) {
			give_back();
			t_fatal("fork: %s", strerror(errno));
		}
		if (pid > 0) {
			int st = 0;
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			give_back();
			ct_model_close(&cm);
			T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
				"the checks %s %d", WIFEXITED(st) ? "exited" : "died of signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			return t_done();
		}
		nr_before = -1; /* the parent puts it back */
	}
	struct ms_cache_config cfg;
	ct_config(&cfg, size, 30000);
	cfg.arena.huge = MS_HUGE_ON;
	cfg.staging = MS_STAGING_AUTO;
	cfg.io.direct = MS_IO_DIRECT_ON;
	struct ms_read_info ri;
	ct_read_path_run(&cm, &cfg, MS_READ_DIRECT, "hugetlb", &ri);
	T_CHECK(ri.arena_bytes == size && ri.arena_huge_bytes == size &&
			!ri.staging_bytes,
		"hugetlb: arena %llu bytes, %llu of them huge, %llu staging bytes "
		"(asked %llu)", (unsigned long long)ri.arena_bytes,
		(unsigned long long)ri.arena_huge_bytes,
		(unsigned long long)ri.staging_bytes, (unsigned long long)size);
	ct_model_close(&cm);
	return t_done();
}
