/*
 * api/server.h - `moestream serve`: an OpenAI-compatible HTTP server on the
 * engine (libmicrohttpd, a thread per connection; one scheduler thread owns
 * the engine and decodes up to `parallel` sequences together).
 */
#ifndef MS_API_SERVER_H
#define MS_API_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "moestream/engine.h"
#include "moestream/util.h"

struct ms_serve_config {
	struct ms_engine_config engine; /* n_seq is set from parallel */
	const char *host;               /* default 127.0.0.1 */
	uint16_t port;                  /* 0: any free port (printed) */
	uint32_t parallel;              /* sequences decoded together (>= 1) */
	const char *api_key;            /* NULL: no key asked */
	enum ms_chat_tmpl chat;         /* MS_CHAT_NONE: the model's own */
	const char *alias;              /* the model's id; NULL: file name */
	uint32_t max_conn;              /* open connections at most */
	uint32_t timeout_s;             /* an idle or half-sent request */
	uint32_t max_queue;             /* requests waiting: 503 above */
	volatile int *stop;             /* set (by a signal) to shut down */
};

/* Opens the engine, listens, serves until *stop; 0 on a clean shutdown,
 * else an error in err (the engine would not open, the address is taken). */
int ms_serve(const struct ms_serve_config *c, struct ms_err *err);

#endif
