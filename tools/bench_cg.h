/*
 * bench_cg.h - one benchmark method in a child process in a fresh memory
 * cgroup: the machinery `moestream bench e2e` runs every method through,
 * trace replays (bench_e2e.c) and real engines (bench_e2e_real.c) alike.
 *
 * The group is v2 memory.max where the unified hierarchy has the memory
 * controller (a group under its root), else v1 memory.limit_in_bytes in a
 * group under this process's own in /sys/fs/cgroup/memory; swap is limited
 * to nothing where it is accounted. The child joins the group before anything
 * else, so whatever it starts (a private moestreamd) is in it too. The peak
 * is the group's memory.peak (v2) or memory.max_usage_in_bytes (v1):
 * anonymous memory, page cache and shmem of every process in it. Without root
 * there is no group (the kind says why) and the child runs unlimited.
 *
 * Functions return 0 or a negative errno; messages go to struct ms_err.
 */
#ifndef MS_BENCH_CG_H
#define MS_BENCH_CG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/util.h"

enum bench_cg_kind { BENCH_CG_NONE, BENCH_CG_V1, BENCH_CG_V2 };

struct bench_cg_env {
	enum bench_cg_kind kind;
	char root[512];          /* where the groups are made */
	char why[256];           /* BENCH_CG_NONE: why */
};

/* This process's group in the hierarchy that has the memory controller
 * (enabling it in the v2 root's subtree_control if need be). */
void bench_cg_detect(struct bench_cg_env *e);

/* "v1", "v2" or "none". */
const char *bench_cg_name(const struct bench_cg_env *e);

/* What a child run came to: its verdict, its message, and the group's
 * figures (read by the parent once the child is gone). */
struct bench_child_res {
	bool ran, ok;
	int rc;
	char err[480];
	bool peak_known;
	uint64_t peak_bytes, failcnt, oom_kills;
};

/* The work of the child: fills out (out_len bytes, plain data: it is copied
 * back through a pipe) and returns 0 or -errno with a message in err. */
typedef int (*bench_child_fn)(void *ctx, void *out, struct ms_err *err);

/* Makes the group "moestream-e2e-<pid>-<name>" limited to `limit` bytes
 * (none when e->kind is BENCH_CG_NONE), forks a child that joins it and runs
 * fn(ctx, out, err), reads `out` back, collects the group's figures and
 * removes it. The child dies with the parent (PR_SET_PDEATHSIG) and exits
 * without the parent's atexit handlers. A child that dies before answering
 * (the OOM killer under the limit, a crash) leaves res->ok false and says
 * which signal or status. The page cache is not dropped here (the caller
 * does, before). */
void bench_cg_run(const struct bench_cg_env *e, const char *name, uint64_t limit,
		  bench_child_fn fn, void *ctx, void *out, size_t out_len,
		  struct bench_child_res *res);

/* SIGINT/SIGTERM while a child runs: kills it, removes its group, then dies
 * of the signal. bench_cg_signals_restore puts the old handlers back. */
void bench_cg_signals_install(void);
void bench_cg_signals_restore(void);

/* ---- small readers of /proc and /sys files ------------------------------- */

int bench_write_str(const char *path, const char *s);
/* A whole (small) file, NUL-terminated: 0 or -errno. */
int bench_read_text(const char *path, char *buf, size_t len);
/* The first number of a file ("max" reads as not known). */
bool bench_read_u64(const char *path, uint64_t *out);
/* "key N" in a flat keyed file (memory.events, memory.oom_control,
 * /proc/self/io with its colon). */
bool bench_read_keyed(const char *path, const char *key, uint64_t *out);
/* Bytes this process (all its threads) made the block layer read
 * (/proc/self/io read_bytes); *ok false when that cannot be read. */
uint64_t bench_io_read_bytes(bool *ok);
/* The milliseconds the block device holding `path` has been busy (the
 * io_ticks of /proc/diskstats, its 10th figure): a disk's working time,
 * whoever asked. false when unknown (no such line: a file system not on a
 * block device). */
bool bench_disk_busy_ms(const char *path, uint64_t *ms);

#endif /* MS_BENCH_CG_H */
