/*
 * bench_rpc.h - `moestream bench rpc`, and a private moestreamd for the
 * benchmarks that need a real daemon (this one, and the end-to-end one).
 */
#ifndef MS_BENCH_RPC_H
#define MS_BENCH_RPC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "moestream/util.h"

/* `moestream bench rpc ...` (argv[0] is the command's name). */
int bench_rpc_main(int argc, char **argv);

/* ---- a private daemon ------------------------------------------------------ */

struct bench_daemon_opts {
	const char *model;       /* the GGUF (any shard) */
	uint64_t cache_bytes;    /* [cache] size; raised to the daemon's 64 MiB
				    minimum, rounded up to a MiB */
	uint32_t max_clients;    /* [socket] max_clients; 0: 64 */
	const char *prefetch;    /* [prefetch] policy; NULL: "none" */
	const char *log_level;   /* [log] level; NULL: "notice" */
	const char *extra;       /* more INI text, appended (later keys win);
				    NULL: none */
	const char *dir;         /* the folder for socket, config and log;
				    NULL: a fresh one under $TMPDIR (or /tmp),
				    removed by bench_daemon_stop */
};

struct bench_daemon {
	pid_t pid;
	bool own_dir;            /* made by start, removed by stop */
	bool locked;             /* [cache] lock = true was asked for */
	char dir[200];
	char socket[108];        /* DIR/moestreamd.sock */
	char conf[224];          /* DIR/moestreamd.conf */
	char log[224];           /* DIR/moestreamd.log: its stderr */
	char exe[4096];          /* the moestreamd that runs */
};

/* The moestreamd to run: $MOESTREAMD, else moestreamd next to this
 * program (or one folder up: tests live in build/tests/), else "moestreamd"
 * from $PATH. Into buf; returns buf. */
const char *bench_moestreamd_path(char *buf, size_t len);

/* Writes a private configuration (the socket in `dir`, mode 0600; the cache
 * locked only where that can work: as root, or when RLIMIT_MEMLOCK covers
 * it), starts `moestreamd -f -c CONF` with its stderr in the log, and waits
 * up to 120 s until it answers a HELLO. The daemon gets SIGKILL if this
 * process dies first. On failure the message carries the log's last line.
 * 0 or -errno. */
int bench_daemon_start(struct bench_daemon *d, const struct bench_daemon_opts *o,
		       struct ms_err *err);

/* SIGTERM, then waits (up to 30 s, then SIGKILL); removes the files it
 * made. 0 when the daemon exited 0, else -ECHILD with a message. Safe on a
 * daemon that never started (pid 0). */
int bench_daemon_stop(struct bench_daemon *d, struct ms_err *err);

#endif /* MS_BENCH_RPC_H */
