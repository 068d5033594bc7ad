/*
 * inproc.c - moestreamd's server inside the test process (see inproc.h).
 *
 * The teardown order is main()'s in daemon/moestreamd.c: the server stops
 * (clients closed, their pins released), the cache goes (prefetches
 * cancelled, demand reads finished, late callbacks land harmlessly in the
 * stopped server), then the server and the model are freed.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemontest.h"
#include "inproc.h"
#include "testutil.h"

static atomic_bool ip_loop_done;

int ip_init(struct ip_server *s, const char *name, const char *model_path,
	    const char *extra, const struct ms_io_faults *faults,
	    struct ms_err *err)
{
	memset(s, 0, sizeof(*s));
	ms_server_block_signals(NULL);
	if ((size_t)snprintf(s->sock, sizeof(s->sock), "%s/%s.sock", t_tmpdir(),
			     name) >= sizeof(s->sock))
		return ms_err_set(err, -ENAMETOOLONG, "socket path too long");
	snprintf(s->conf, sizeof(s->conf), "%s/%s.conf", t_tmpdir(), name);
	int rc = dt_write_config(s->conf, model_path, s->sock, extra);
	if (rc)
		return ms_err_set(err, rc, "writing %s: %s", s->conf, strerror(-rc));
	ms_config_defaults(&s->cfg);
	if ((rc = ms_config_load(&s->cfg, s->conf, true, err)))
		return rc;
	if ((rc = ms_model_open(&s->m, s->cfg.model_path, err)))
		return rc;
	struct ms_cache_config cc;
	ms_config_to_cache(&s->cfg, &cc);
	if (faults)
		cc.io.faults = *faults;
	if ((rc = ms_cache_init(&s->cache, s->m, &cc, err)) ||
	    (rc = ms_server_init(&s->srv, &s->cfg, s->m, s->cache, err))) {
		ms_cache_free(s->cache);
		ms_model_free(s->m);
		s->cache = NULL;
		s->m = NULL;
		return rc;
	}
	return 0;
}

static void *ip_main(void *arg)
{
	struct ip_server *s = arg;
	s->run_rc = ms_server_run(s->srv, NULL, NULL);
	atomic_store(&ip_loop_done, true);
	return NULL;
}

int ip_run(struct ip_server *s)
{
	atomic_store(&ip_loop_done, false);
	int rc = -pthread_create(&s->th, NULL, ip_main, s);
	if (!rc)
		s->running = true;
	return rc;
}

int ip_start(struct ip_server *s, const char *name, const char *model_path,
	     const char *extra, const struct ms_io_faults *faults,
	     struct ms_err *err)
{
	int rc = ip_init(s, name, model_path, extra, faults, err);
	if (rc)
		return rc;
	if ((rc = ip_run(s))) {
		ip_stop(s, 0);
		return ms_err_set(err, rc, "pthread_create: %s", strerror(-rc));
	}
	return 0;
}

bool ip_alive(struct ip_server *s)
{
	return s->running && !atomic_load(&ip_loop_done);
}

int ip_stop(struct ip_server *s, int timeout_ms)
{
	if (s->running) {
		kill(getpid(), SIGTERM);
		int64_t t0 = dt_now_ms();
		while (!atomic_load(&ip_loop_done)) {
			if (dt_now_ms() - t0 > (timeout_ms ? timeout_ms : 10000))
				t_fatal("the in-process server did not stop on SIGTERM");
			dt_sleep_ms(1);
		}
		pthread_join(s->th, NULL);
		s->running = false;
		/* A SIGTERM the loop did not read (it had stopped already) must
		 * not stop the next server at once. */
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		struct timespec zero = { 0, 0 };
		while (sigtimedwait(&set, NULL, &zero) > 0) {
		}
	}
	if (s->srv)
		ms_server_stop(s->srv);
	ms_cache_free(s->cache);
	ms_server_free(s->srv);
	ms_model_free(s->m);
	s->srv = NULL;
	s->cache = NULL;
	s->m = NULL;
	return s->run_rc;
}
