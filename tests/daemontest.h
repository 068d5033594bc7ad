/*
 * daemontest.h - what the daemon's integration tests share (t_daemon*.c):
 * the real build/moestreamd started on a fresh socket in the test's private
 * folder, with a configuration file written there, under a watchdog that
 * kills it (and every child the test forked) when the test hangs, and at
 * exit whatever happens; raw SOCK_SEQPACKET helpers for speaking the wire
 * without the client library; the daemon's stats; its descriptor count.
 *
 * The pattern is memcached's new_memcached(): each test owns its daemons,
 * nothing is shared between test programs, and a hung daemon fails the test
 * instead of hanging CI.
 *
 * Every name here starts with dt_ (DT_ for macros): this file is linked into
 * every test. Children a test forks must leave with _exit(), never exit():
 * the atexit handlers here (and t_tmpdir's) belong to the test process.
 */
#ifndef MS_DAEMONTEST_H
#define MS_DAEMONTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "moestream/moestream.h"
#include "moestream/protocol.h"
#include "testutil.h"

/* ---- processes ------------------------------------------------------------------ */

/* Arms (or re-arms) the watchdog: after `seconds` (MS_WATCHDOG=N in the
 * environment overrides it) every tracked process is SIGKILLed and the test
 * exits 1 with a line naming `what`. 0 disarms it. Also installs the atexit
 * handler that kills tracked processes. */
void dt_watchdog(unsigned seconds, const char *what);

/* Processes to kill at exit or when the watchdog fires (at most 256). */
void dt_track(pid_t pid);
void dt_untrack(pid_t pid);

/* Waits up to timeout_ms for `pid` to exit: its wait status (>= 0), or -1
 * on timeout (the process is left running) / when it cannot be waited for. */
int dt_waitpid(pid_t pid, int timeout_ms);

/* Runs argv[0] with argv (a NULL-terminated list), stdout into `out_path`
 * and stderr into `err_path` (either may be NULL: /dev/null), up to
 * timeout_ms: its exit code, 128+N when killed by signal N, or -1 when it
 * outlived the timeout (it is then killed). */
int dt_exec(char *const argv[], const char *out_path, const char *err_path,
	    int timeout_ms);

/* The whole of a file, NUL-terminated (malloc'ed; "" if unreadable). */
char *dt_slurp(const char *path);

/* Lines in `text` (a last line without '\n' counts). */
unsigned dt_count_lines(const char *text);

/* Monotonic milliseconds. */
int64_t dt_now_ms(void);
void dt_sleep_ms(int ms);

/* Open descriptors of a process (/proc/PID/fd), or -1. */
int dt_fd_count(pid_t pid);

/* ---- models ---------------------------------------------------------------------- */

/* Writes a model with `$MS_BUILD/moestream mkmodel ARGS -o DIR/NAME --force`
 * once per process (a second call with the same name returns the same
 * path); fatal on failure. */
const char *dt_model(const char *name, const char *args);

/* The model most daemon tests use: 10 MoE blocks x 64 experts of 254,976
 * bytes (q4_K, q4_K, q6_K; 163 MB of experts), so that a 64 MiB cache
 * (248 slots) must evict. */
#define DT_MODEL_ARGS                                                          \
	"--layers 10 --experts 64 --used 8 --embd 512 --ff 256 --vocab 256 "   \
	"--types q4_K,q4_K,q6_K"

/* ---- daemons ----------------------------------------------------------------------- */

struct dt_daemon {
	pid_t pid;               /* 0: not running */
	int status;              /* wait status once reaped, else -1 */
	char name[32];
	char sock[108];
	char conf[512];
	char log[512];           /* its stdout and stderr */
	uint32_t first_mode;     /* st_mode of the socket the first time it
				    was seen during start, 0 if never */
	uint32_t bind_mode;      /* st_mode of the socket when bind()
				    returned (dt_daemon_start_traced), or 0 */
	int trace_rc;            /* how that tracing went: 0 or -errno */
	int64_t ready_ms;        /* how long the start took */
};

/* Writes a configuration: [model] path, [socket] path, the test defaults
 * (cache size 64M, lock false, hugepages off, 2 I/O threads, log level
 * info) and then `extra` (INI text, may be NULL; a section given again in
 * `extra` is fine as long as no key repeats). 0 or -errno. */
int dt_write_config(const char *path, const char *model, const char *sock,
		    const char *extra);

/* Fills *d for a daemon called `name` (its socket, config and log live in
 * the test folder as NAME.sock, NAME.conf, NAME.log) without starting it. */
void dt_daemon_init(struct dt_daemon *d, const char *name);

/* Starts `moestreamd -c d->conf --foreground [args...]` (args NULL-
 * terminated, may be NULL), tracked, and waits up to timeout_ms (0: 30 s)
 * until a client can connect and PING. 0, or -1 after a failed check that
 * prints the daemon's log (the daemon is killed). */
int dt_daemon_start(struct dt_daemon *d, const char *const *args, int timeout_ms);

/* The same, following the daemon with ptrace until its bind() returns,
 * to see the socket file at the first moment it exists (d->bind_mode);
 * d->trace_rc says why not when it could not (-ENOSYS, -EPERM). */
int dt_daemon_start_traced(struct dt_daemon *d, const char *const *args,
			   int timeout_ms);

/* dt_write_config + dt_daemon_init + dt_daemon_start. */
int dt_start(struct dt_daemon *d, const char *name, const char *model,
	     const char *extra);

/* Sends `sig` and waits up to timeout_ms for the exit: the wait status, or
 * -1 on timeout (the daemon is then SIGKILLed and reaped). */
int dt_daemon_signal_wait(struct dt_daemon *d, int sig, int timeout_ms);

/* SIGTERM, 10 s, SIGKILL: the exit code (0 for a clean stop), 128+N when a
 * signal ended it, -1 on timeout. Fine on a daemon already reaped. */
int dt_stop(struct dt_daemon *d);

/* Whether the daemon still runs; when it died, a failed check that says
 * how, with the end of its log. */
bool dt_daemon_alive(struct dt_daemon *d);

/* Scans the logs of every daemon started so far for a crash or a
 * sanitizer report: each one found is a failed check with the log around
 * it. Also runs at exit. Returns the number found. */
int dt_check_crashes(void);

/* Where `text` (a log, a stderr) shows a crash or a sanitizer report, or
 * NULL. */
const char *dt_crash_in(const char *text);

/* Prints the last `lines` lines of the daemon's log to stderr. */
void dt_daemon_dump_log(const struct dt_daemon *d, unsigned lines);

/* ---- talking to it ---------------------------------------------------------------------- */

/* ms_client_connect with a fatal-free error path: NULL on failure (the
 * reason in *err when err != NULL). */
struct ms_client *dt_connect(const char *sock, const char *name,
			     struct ms_err *err);

/* One number from the daemon's STATS (over client `c`): NaN on failure. */
double dt_stat(struct ms_client *c, const char *key);

/* Polls `key` every 2 ms until `pred(value, arg)` holds or timeout_ms
 * passes: the milliseconds it took, or -1 (the last value in *last). */
int64_t dt_stat_wait(struct ms_client *c, const char *key,
		     bool (*pred)(double v, double arg), double arg,
		     int timeout_ms, double *last);
bool dt_eq(double v, double arg);
bool dt_le(double v, double arg);

/* ---- raw wire ---------------------------------------------------------------------------- */

/* A connected SOCK_SEQPACKET socket (blocking, CLOEXEC), or -errno. */
int dt_raw_connect(const char *sock);

/* Writes a header (any values: tests forge bad ones) at buf. */
void dt_put_hdr(uint8_t *buf, uint32_t magic, uint16_t version, uint16_t type,
		uint32_t flags, uint32_t len, uint64_t id);

/* Sends `len` bytes as one message, with `nfds` descriptors (SCM_RIGHTS)
 * when nfds > 0: 0 or -errno. */
int dt_raw_send(int fd, const void *buf, size_t len, const int *fds, int nfds);

/* Receives one message (waits up to timeout_ms): the bytes received (> 0),
 * 0 at end of stream, -ETIMEDOUT, or -errno. Descriptors that came with it
 * are stored in fds[] (up to max_fds; others closed), their count in
 * *nfds (both may be NULL/0: then they are closed). */
int dt_raw_recv(int fd, uint8_t *buf, size_t cap, int timeout_ms, int *fds,
		int max_fds, int *nfds);

/* HELLO on a raw socket: 0 with the arena descriptor (read-only, to close)
 * and the arena size, or -errno. */
int dt_raw_hello(int fd, int *arena_fd, uint64_t *arena_size);

/* A received message as a header and, for ERROR, its status and text:
 * 0 or -EBADMSG. */
int dt_parse(const uint8_t *buf, int n, struct ms_msg_hdr *h, int32_t *err_status,
	     char *err_msg, size_t err_len);

#endif /* MS_DAEMONTEST_H */
