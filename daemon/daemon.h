/*
 * daemon.h - moestreamd's private contracts: the configuration (one option
 * table, daemon/config.c) and the server (daemon/server.c).
 */
#ifndef MS_DAEMON_H
#define MS_DAEMON_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "moestream/cache.h"
#include "moestream/util.h"

#define MS_DEFAULT_CONFIG "/etc/moestream/moestream.conf"
#define MS_DEFAULT_SOCKET "/run/moestream/moestream.sock"

enum ms_prefetch_policy {
	MS_PREFETCH_NONE = 0,
	MS_PREFETCH_HISTORY = 1,
	MS_PREFETCH_HINT = 2,
	MS_PREFETCH_AUTO = 3,
};

/* Every option, effective values. Names in comments are the INI keys. */
struct ms_config {
	/* [model] */
	char model_path[4096];        /* path */
	/* [socket] */
	char socket_path[108];        /* path (sun_path's size) */
	uint32_t socket_mode;         /* mode, octal, default 0660 */
	char allow_users[1024];       /* allow_users: names or uids, commas */
	char allow_groups[1024];      /* allow_groups */
	uint32_t max_clients;         /* max_clients */
	uint32_t idle_timeout_s;      /* idle_timeout: seconds, 0 = never */
	/* [cache] */
	uint64_t cache_size;          /* size: bytes (K/M/G) */
	char pin[4096];               /* pin: "block:expert,..." */
	uint32_t pin_top;             /* pin_top */
	enum ms_huge hugepages;       /* hugepages: auto|on|off */
	int numa_node;                /* numa_node: auto|interleave|none|N */
	char gpu_pci[32];             /* gpu: PCI address for numa auto */
	uint32_t acquire_timeout_ms;  /* acquire_timeout: ms */
	bool lock;                    /* lock: mlock the arena */
	/* [io] */
	enum ms_io_engine io_engine;  /* engine: auto|io_uring|preadv */
	uint32_t io_threads;          /* threads */
	uint32_t io_queue_depth;      /* queue_depth */
	uint32_t io_request_size;     /* request_size: bytes (K/M) */
	uint64_t io_prefetch_inflight; /* prefetch_inflight: bytes, 0 = no cap */
	bool io_sqpoll;               /* sqpoll */
	enum ms_io_direct io_direct;  /* direct: auto|on|off */
	uint64_t io_staging;          /* staging: auto|off|size:
					 MS_STAGING_AUTO, 0, or bytes */
	/* [prefetch] */
	enum ms_prefetch_policy prefetch_policy; /* policy: none|history|hint|auto */
	uint32_t prefetch_depth;      /* depth: layers ahead */
	uint32_t prefetch_width;      /* width: experts per layer */
	double prefetch_min_prob;     /* min_prob: 0..1 */
	uint64_t prefetch_max_inflight; /* max_inflight: bytes, 0 = cache/8 */
	/* [log] */
	int log_level;                /* level: error|warning|notice|info|debug */
};

/* Built-in defaults. */
void ms_config_defaults(struct ms_config *c);

/* Reads an INI file over *c. `must_exist` false: a missing file is fine
 * (the default path). Errors name the file, line, key, value and the allowed
 * range: -EINVAL, or -errno for an unreadable file. */
int ms_config_load(struct ms_config *c, const char *path, bool must_exist,
		   struct ms_err *err);

/* Sets one option from text, as the file would ("cache", "size", "48G");
 * `origin` names where it came from for messages ("--cache-size"). */
int ms_config_set(struct ms_config *c, const char *section, const char *key,
		  const char *value, const char *origin, struct ms_err *err);

/* Writes the effective configuration as a valid INI file, each option with
 * its help line, range and whether it can change live. */
void ms_config_print(const struct ms_config *c, FILE *f);

/* For SIGHUP: applies to *live the options of *fresh that may change while
 * running; for each option that changed but cannot change live, leaves the
 * old value and appends "section.key" to `refused` (comma-separated).
 * Returns the number of options applied. */
int ms_config_apply_live(struct ms_config *live, const struct ms_config *fresh,
			 char *refused, size_t refused_len);

/* Converts the config's [cache]/[io] sections into a cache config. The
 * strings (pin, gpu) point into *c: keep *c alive as long as *cc. */
void ms_config_to_cache(const struct ms_config *c, struct ms_cache_config *cc);

/* ---- the server ---------------------------------------------------------------------------- */

struct ms_model;
struct ms_server;

/* The checks of ms_server_init that need no cache (socket path, another
 * daemon answering, allow lists), so that a bad socket is reported at once
 * rather than after the cache was built. */
int ms_server_precheck(const struct ms_config *cfg, bool probe,
		       struct ms_err *err);  /* probe false: look, touch nothing */

/* Binds the socket (mode from the start, stale socket replaced only if
 * nothing answers) and prepares the event loop. */
int ms_server_init(struct ms_server **out, const struct ms_config *cfg,
		   const struct ms_model *m, struct ms_cache *cache,
		   struct ms_err *err);

/* Builds a fresh configuration the way the daemon started (file, then the
 * command line's overrides): 0, or -errno with a message. */
typedef int (*ms_config_reload_fn)(struct ms_config *out, void *ctx,
				   struct ms_err *err);

/* Fills `set` (when not NULL) with the signals the server's loop takes
 * through its signalfd (SIGTERM, SIGINT, SIGHUP) and blocks them in the
 * calling thread. Call before any other thread exists, so that none of
 * them gets these signals; ms_server_init calls it too. */
void ms_server_block_signals(sigset_t *set);

/* Runs until SIGTERM/SIGINT (0) or a fatal error (negative errno). On SIGHUP
 * it calls `reload` (NULL: nothing to re-read) and applies the options that
 * may change live, naming the others in the log. */
int ms_server_run(struct ms_server *s, ms_config_reload_fn reload, void *ctx);

/* Closes every client (their pins die) and unlinks the socket; answers the
 * cache sends afterwards are dropped. Call before ms_cache_free. */
void ms_server_stop(struct ms_server *s);

/* Frees the server (after ms_cache_free: late cache callbacks still land in
 * it, harmlessly, until the cache is gone). Stops it first if needed. */
void ms_server_free(struct ms_server *s);

#endif /* MS_DAEMON_H */
