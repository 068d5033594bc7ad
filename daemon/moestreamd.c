/*
 * moestreamd - the expert-streaming daemon.
 *
 * Opens the model, makes the expert cache (arena + I/O engine), binds the
 * socket and serves until SIGTERM; SIGHUP re-reads the live options. Under
 * systemd (Type=notify) it says READY=1 once the socket answers and
 * STOPPING=1 when it goes. Without --foreground it detaches, and the parent
 * exits only once the child serves (or with the child's error).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon.h"
#include "moestream/model.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestreamd [-c FILE] [--model PATH] [--socket PATH] "
		"[--cache-size SIZE]\n"
		"                  [--foreground] [--print-config] [--check-config]\n"
		"                  [--version] [--help]\n"
		"\n"
		"moestreamd streams the cold expert weights of a Mixture-of-Experts "
		"GGUF from\nNVMe (io_uring, O_DIRECT) into a pinned expert cache "
		"that inference processes\nmap read-only over a Unix socket.\n"
		"\n"
		"  -c, --config FILE    the configuration (default %s;\n"
		"                       a missing default file is fine, a missing "
		"-c FILE is not)\n"
		"  -m, --model PATH     [model] path: the GGUF, any shard of a split "
		"model\n"
		"  -s, --socket PATH    [socket] path (default %s)\n"
		"      --cache-size S   [cache] size: RAM for experts, e.g. 24G\n"
		"  -f, --foreground     do not detach (systemd runs it this way)\n"
		"      --print-config   print the effective configuration (an INI "
		"file) and exit\n"
		"      --check-config   check the configuration and the model, then "
		"exit\n"
		"  -V, --version        print the version\n"
		"  -h, --help           this text\n"
		"\n"
		"Flags override the file; every option is documented in "
		"etc/moestream.conf.\nSIGHUP re-reads the file (options that cannot "
		"change live are named in the log);\nSIGTERM stops accepting, cancels "
		"prefetches, lets demand reads finish, exits 0.\n"
		"\nexample:\n"
		"  moestreamd -f --model ~/models/GLM-4.7-UD-Q2_K_XL-00001-of-00003.gguf "
		"\\\n      --cache-size 24G --socket /tmp/ms.sock\n",
		MS_DEFAULT_CONFIG, MS_DEFAULT_SOCKET);
}

/* sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path)
		return;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = strlen(path);
	if (n >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, n);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract namespace, systemd's choice */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
		ms_log(MS_LOG_WARNING, "sd_notify %s: %s", state, strerror(errno));
	close(fd);
}

/* Detaches; the parent waits on a pipe for "ok" or the child's error line. */
static int daemonize(int *ready_fd)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC))
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(p[1]);
		char buf[600];
		ssize_t n = read(p[0], buf, sizeof(buf) - 1);
		if (n > 0 && !strncmp(buf, "ok", 2))
			_exit(0);
		if (n > 0) {
			buf[n] = '\0';
			fprintf(stderr, "moestreamd: %s\n", buf);
		} else {
			fprintf(stderr, "moestreamd: the daemon exited during start "
					"(see the system log)\n");
		}
		_exit(1);
	}
	close(p[0]);
	setsid();
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
	}
	*ready_fd = p[1];
	return 0;
}

static void report(int ready_fd, const char *msg)
{
	if (ready_fd >= 0) {
		if (write(ready_fd, msg, strlen(msg)) < 0) {
			/* the parent is gone: nothing to tell */
		}
		close(ready_fd);
	}
}

struct override {
	const char *sec, *key, *val, *origin;
};

struct startup {
	const char *config_path; /* -c FILE, or NULL for the default */
	struct override over[8];
	int n_over;
};

/* The configuration as the daemon starts, and as SIGHUP rebuilds it: the
 * defaults, the file, then the command line. */
static int build_config(struct ms_config *cfg, void *ctx, struct ms_err *err)
{
	const struct startup *su = ctx;
	ms_config_defaults(cfg);
	int rc = ms_config_load(cfg, su->config_path ? su->config_path
						     : MS_DEFAULT_CONFIG,
				su->config_path != NULL, err);
	for (int i = 0; !rc && i < su->n_over; i++)
		rc = ms_config_set(cfg, su->over[i].sec, su->over[i].key,
				   su->over[i].val, su->over[i].origin, err);
	return rc;
}

int main(int argc, char **argv)
{
	enum { O_CACHE = 1000, O_PRINT, O_CHECK, O_CHECK_MODEL };
	static const struct option opts[] = {
		{ "config", required_argument, 0, 'c' },
		{ "model", required_argument, 0, 'm' },
		{ "socket", required_argument, 0, 's' },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "foreground", no_argument, 0, 'f' },
		{ "print-config", no_argument, 0, O_PRINT },
		{ "check-config", no_argument, 0, O_CHECK },
		{ "check-model", no_argument, 0, O_CHECK_MODEL },
		{ "version", no_argument, 0, 'V' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	static struct startup su;
	ms_log_prog = "moestreamd";
	struct override *over = su.over;
	int c;
	bool fg = false, print = false, check = false;

	while ((c = getopt_long(argc, argv, "c:m:s:fVh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': su.config_path = optarg; break;
		case 'm':
			over[su.n_over++] = (struct override){ "model", "path", optarg,
							       "--model" };
			break;
		case 's':
			over[su.n_over++] = (struct override){ "socket", "path", optarg,
							       "--socket" };
			break;
		case O_CACHE:
			over[su.n_over++] = (struct override){ "cache", "size", optarg,
							       "--cache-size" };
			break;
		case 'f': fg = true; break;
		case O_PRINT: print = true; break;
		case O_CHECK: case O_CHECK_MODEL: check = true; break;
		case 'V': printf("moestreamd %s\n", MS_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "usage: moestreamd [-c FILE] [--model PATH] ... "
					"(see --help)\n");
			return 2;
		}
		if (su.n_over == 8)
			su.n_over = 7; /* the last of a repeated flag wins */
	}
	if (optind < argc) {
		fprintf(stderr, "moestreamd: unexpected argument '%s' (see --help)\n",
			argv[optind]);
		return 2;
	}
	if (getenv("INVOCATION_ID") || getenv("JOURNAL_STREAM"))
		ms_log_syslog_prefix = true; /* under systemd: "<N>" priorities */

	struct ms_config cfg;
	struct ms_err err = { 0 };
	if (build_config(&cfg, &su, &err)) {
		fprintf(stderr, "moestreamd: %s\n", err.msg);
		return 1;
	}
	if (print) {
		ms_config_print(&cfg, stdout);
		return 0;
	}
	ms_log_threshold = cfg.log_level;
	if (!*cfg.model_path) {
		fprintf(stderr, "moestreamd: no model: set [model] path in the "
				"configuration or pass --model PATH\n");
		return 2;
	}

	/* Before any thread exists: signals go to the loop's signalfd. */
	ms_server_block_signals(NULL);
	signal(SIGPIPE, SIG_IGN);

	struct ms_model *m = NULL;
	if (ms_model_open(&m, cfg.model_path, &err)) {
		fprintf(stderr, "moestreamd: %s\n", err.msg);
		return 1;
	}
	if (!m->n_expert) {
		fprintf(stderr, "moestreamd: %s is not a Mixture-of-Experts model "
				"(no %s.expert_count): nothing to stream\n",
			cfg.model_path, m->arch);
		ms_model_free(m);
		return 1;
	}
	if (ms_server_precheck(&cfg, !check, &err)) {
		fprintf(stderr, "moestreamd: %s\n", err.msg);
		ms_model_free(m);
		return 1;
	}
	if (check) {
		printf("moestreamd: configuration ok; %s: %s, %u shard(s), %u MoE "
		       "layers (%u run) x %u experts, %llu bytes per token "
		       "uncached\n",
		       cfg.model_path, m->arch, m->n_shards, m->n_layers,
		       m->n_layers_run, m->n_expert,
		       (unsigned long long)m->bytes_per_token);
		ms_model_free(m);
		return 0;
	}

	int ready_fd = -1, rc;
	if (!fg && (rc = daemonize(&ready_fd))) {
		fprintf(stderr, "moestreamd: cannot detach: %s\n", strerror(-rc));
		ms_model_free(m);
		return 1;
	}

	struct ms_cache_config cc;
	struct ms_cache *cache = NULL;
	struct ms_server *srv = NULL;
	ms_config_to_cache(&cfg, &cc);
	if ((rc = ms_cache_init(&cache, m, &cc, &err)) ||
	    (rc = ms_server_init(&srv, &cfg, m, cache, &err))) {
		ms_log(MS_LOG_ERR, "%s", err.msg);
		report(ready_fd, err.msg);
		ms_cache_free(cache);
		ms_model_free(m);
		return 1;
	}
	struct ms_io_mode io;
	struct ms_cache_stats st;
	ms_cache_get_io_mode(cache, &io);
	ms_cache_get_stats(cache, &st);
	ms_log(MS_LOG_NOTICE,
	       "moestreamd %s: %s (%s, %u MoE layers x %u experts); cache %llu MB "
	       "in %llu slots (%llu size classes, %.2f%% waste), %s; I/O %s%s%s, "
	       "%u thread(s) x depth %u",
	       MS_VERSION, cfg.model_path, m->arch, m->n_layers, m->n_expert,
	       (unsigned long long)(st.budget_bytes >> 20),
	       (unsigned long long)st.slots, (unsigned long long)st.slot_classes,
	       st.budget_bytes ? 100.0 * (double)st.waste_bytes / (double)st.budget_bytes
			       : 0.0,
	       ms_cache_arena(cache)->mode,
	       io.engine == MS_IO_ENGINE_URING ? "io_uring" : "preadv",
	       io.direct ? " O_DIRECT" : " buffered",
	       io.fixed_buffers ? " fixed-buffers" : "", cfg.io_threads,
	       cfg.io_queue_depth);
	/* Which way reads reach the cache, and what its pages are. */
	struct ms_read_info ri;
	ms_cache_get_read_info(cache, &ri);
	ms_log(MS_LOG_NOTICE, "reads: %s", ri.line);
	const struct ms_arena *ar = ms_cache_arena(cache);
	if (ri.path == MS_READ_DIRECT && !ms_arena_huge(ar))
		ms_log(MS_LOG_WARNING,
		       "the cache is on 4 KiB pages and reads land in it directly: "
		       "O_DIRECT reads into it cost more (more segments per request); "
		       "set [io] staging = auto, reserve huge pages (sysctl "
		       "vm.nr_hugepages=%llu) or allow THP for shared memory (echo "
		       "advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled)",
		       (unsigned long long)((ar->size + (2u << 20) - 1) >> 21));
	if (ri.path == MS_READ_STAGING && ri.staging_huge_bytes * 2 < ri.staging_bytes)
		ms_log(MS_LOG_WARNING,
		       "the staging buffers got few huge pages (%llu of %llu bytes): "
		       "transparent huge pages for anonymous memory are off or "
		       "short (/sys/kernel/mm/transparent_hugepage/enabled)",
		       (unsigned long long)ri.staging_huge_bytes,
		       (unsigned long long)ri.staging_bytes);
	notify("READY=1\nSTATUS=serving");
	report(ready_fd, "ok");

	rc = ms_server_run(srv, build_config, &su);
	notify("STOPPING=1");
	ms_server_stop(srv);
	ms_cache_free(cache);  /* cancels prefetches, lets demand reads finish */
	ms_server_free(srv);
	ms_model_free(m);
	if (rc) {
		ms_log(MS_LOG_ERR, "event loop failed: %s", strerror(-rc));
		return 1;
	}
	ms_log(MS_LOG_NOTICE, "stopped");
	return 0;
}
