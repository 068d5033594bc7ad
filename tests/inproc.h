/*
 * inproc.h - moestreamd's server inside the test process (t_oom.c,
 * t_daemon_faults.c).
 *
 * The same library code moestreamd's main() runs - ms_model_open,
 * ms_cache_init, ms_server_init, ms_server_run on a thread of its own, then
 * ms_server_stop, ms_cache_free, ms_server_free, ms_model_free - with two
 * things a separate process cannot give a test: the cache configuration can
 * carry the engine's fault injector (struct ms_io_faults: moestreamd has no
 * option for it), and every allocation the server makes goes through the
 * test's own allocator (t_oom). Clients connect over the real socket with
 * the client library.
 *
 * The loop stops on SIGTERM, read through its signalfd: ip_start blocks
 * SIGTERM, SIGINT and SIGHUP in the calling thread, so call it from the main
 * thread before any other thread exists (threads inherit the mask), and
 * ip_stop sends SIGTERM to the process. One server at a time.
 *
 * Every name here starts with ip_ (this file is linked into every test).
 */
#ifndef MS_INPROC_H
#define MS_INPROC_H

#include <pthread.h>
#include <stdbool.h>

#include "../daemon/daemon.h"
#include "moestream/model.h"

struct ip_server {
	char sock[108];
	char conf[512];
	struct ms_config cfg;
	struct ms_model *m;
	struct ms_cache *cache;
	struct ms_server *srv;
	pthread_t th;
	bool running;
	int run_rc;              /* what ms_server_run returned, once stopped */
};

/* ip_start blocks the server's signals (ms_server_block_signals, daemon.h)
 * in the calling thread; call that first when threads are created before
 * the first ip_start. */

/* Writes NAME.conf in the test folder (dt_write_config's defaults, then
 * `extra`), loads it, and builds the server: model, cache (with `faults`
 * when not NULL), socket NAME.sock. 0, or -errno with the reason in *err
 * (everything built so far freed). Does not start the loop. */
int ip_init(struct ip_server *s, const char *name, const char *model_path,
	    const char *extra, const struct ms_io_faults *faults,
	    struct ms_err *err);

/* Runs the loop on a thread. */
int ip_run(struct ip_server *s);

/* ip_init + ip_run. */
int ip_start(struct ip_server *s, const char *name, const char *model_path,
	     const char *extra, const struct ms_io_faults *faults,
	     struct ms_err *err);

/* Whether the loop still runs (false once ms_server_run returned). */
bool ip_alive(struct ip_server *s);

/* SIGTERM, join the loop (up to timeout_ms, 0: 10 s; fatal when it does not
 * stop), then tear down in moestreamd's order. Fine on a server that was
 * only initialised, or not at all. Returns the loop's result. */
int ip_stop(struct ip_server *s, int timeout_ms);

#endif /* MS_INPROC_H */
