/*
 * client_cmds.c - the commands that talk to a running moestreamd:
 * `moestream status`, `moestream stats [--json|--prometheus]` and
 * `moestream get L:E [--proj P] [-o FILE]`.
 *
 * Every one takes --socket PATH; without it, the socket named in the
 * configuration file (-c FILE, else the default file), else the built-in
 * default path.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../daemon/daemon.h"
#include "moestream/moestream.h"
#include "tools.h"

int tool_socket_path(const char *cmd, const char *opt_socket,
		     const char *opt_config, char *buf, size_t len)
{
	if (opt_socket) {
		snprintf(buf, len, "%s", opt_socket);
		return 0;
	}
	struct ms_config cfg;
	struct ms_err err = { 0 };
	ms_config_defaults(&cfg);
	if (ms_config_load(&cfg, opt_config ? opt_config : MS_DEFAULT_CONFIG,
			   opt_config != NULL, &err)) {
		tool_error(cmd, "%s", err.msg);
		return -1;
	}
	snprintf(buf, len, "%s", cfg.socket_path);
	return 0;
}

int tool_connect(const char *cmd, const char *opt_socket,
		 const char *opt_config, struct ms_client **c)
{
	char path[4096];
	struct ms_err err = { 0 };
	if (tool_socket_path(cmd, opt_socket, opt_config, path, sizeof(path)))
		return -1;
	if (ms_client_connect(c, path, "moestream", &err)) {
		tool_error(cmd, "%s", err.msg);
		return -1;
	}
	return 0;
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

static const char *str(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : "";
}

static bool flag(const cJSON *o, const char *k)
{
	return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, k));
}

enum { FMT_TABLE, FMT_JSON, FMT_PROM };

static void print_status(const cJSON *o)
{
	char b1[32], b2[32];
	printf("moestreamd %s (pid %.0f), up %.0f s, %.0f client(s)\n",
	       str(o, "version"), num(o, "pid"), num(o, "uptime_s"),
	       num(o, "clients"));
	printf("model        %s (%s)\n", str(o, "model"), str(o, "architecture"));
	printf("I/O          %s%s%s%s%s\n", str(o, "io_engine"),
	       flag(o, "io_direct") ? ", O_DIRECT" : ", buffered",
	       flag(o, "io_fixed_buffers") ? ", fixed buffers" : "",
	       flag(o, "io_sqpoll") ? ", SQPOLL" : "",
	       *str(o, "io_fallbacks") ? "" : "");
	if (*str(o, "io_fallbacks"))
		printf("             fallbacks: %s\n", str(o, "io_fallbacks"));
	printf("cache        %s in %.0f slots, %s held, waste %.2f%%\n",
	       fmt_bytes((uint64_t)num(o, "budget_bytes"), b1, sizeof(b1)),
	       num(o, "slots"), fmt_bytes((uint64_t)num(o, "held_bytes"), b2, sizeof(b2)),
	       num(o, "budget_bytes") > 0
		       ? 100.0 * num(o, "waste_bytes") / num(o, "budget_bytes")
		       : 0.0);
	printf("arena        %s\n", str(o, "arena"));
	if (*str(o, "read_path"))
		printf("reads        %s: %s\n", str(o, "read_path"),
		       str(o, "read_path_detail"));
}

static void print_stats_table(const cJSON *o)
{
	char b1[32];
	print_status(o);
	printf("\n%-22s %14s\n", "counter", "value");
	printf("%-22s %14.0f\n", "acquires", num(o, "acquires"));
	printf("%-22s %14.0f\n", "hits", num(o, "hits"));
	printf("%-22s %14.0f\n", "misses", num(o, "misses"));
	printf("%-22s %13.2f%%\n", "hit rate", 100.0 * num(o, "hit_rate"));
	printf("%-22s %14s\n", "bytes read",
	       fmt_bytes((uint64_t)num(o, "bytes_read"), b1, sizeof(b1)));
	printf("%-22s %14.3f\n", "read GB/s (average)", num(o, "read_gbps"));
	const double busy = num(o, "io_busy_ns") / 1e9;
	printf("%-22s %14.2f\n", "disk busy (s)", busy);
	printf("%-22s %14.3f\n", "read GB/s while busy",
	       busy > 0 ? num(o, "bytes_read") / busy / 1e9 : 0.0);
	if (num(o, "staging_bytes") > 0) {
		printf("%-22s %14s\n", "bytes copied (staging)",
		       fmt_bytes((uint64_t)num(o, "bytes_copied"), b1, sizeof(b1)));
		printf("%-22s %14.3f\n", "copy CPU (s)", num(o, "copy_cpu_s"));
	}
	printf("%-22s %14.0f\n", "evictions", num(o, "evictions"));
	printf("%-22s %14.0f\n", "load failures", num(o, "load_failures"));
	printf("%-22s %14.0f\n", "busy (-EBUSY)", num(o, "busy"));
	printf("%-22s %14.0f\n", "prefetch issued", num(o, "prefetch_issued"));
	printf("%-22s %14.0f\n", "prefetch used", num(o, "prefetch_used"));
	printf("%-22s %14s\n", "prefetch wasted",
	       fmt_bytes((uint64_t)num(o, "prefetch_wasted_bytes"), b1, sizeof(b1)));
	printf("%-22s %14.1f\n", "hit p50 (us)", num(o, "hit_p50_us"));
	printf("%-22s %14.1f\n", "hit p99 (us)", num(o, "hit_p99_us"));
	printf("%-22s %14.1f\n", "miss p50 (us)", num(o, "miss_p50_us"));
	printf("%-22s %14.1f\n", "miss p99 (us)", num(o, "miss_p99_us"));
	printf("%-22s %14.0f\n", "pinned entries", num(o, "pinned_entries"));
	printf("%-22s %14.0f\n", "loading entries", num(o, "loading_entries"));
}

/* Prometheus text format: every number as moestream_<key>. */
static void print_prometheus(const cJSON *o)
{
	const cJSON *v;
	cJSON_ArrayForEach(v, o)
	{
		if (cJSON_IsNumber(v))
			printf("# TYPE moestream_%s gauge\nmoestream_%s %.17g\n",
			       v->string, v->string, v->valuedouble);
		else if (cJSON_IsBool(v))
			printf("# TYPE moestream_%s gauge\nmoestream_%s %d\n", v->string,
			       v->string, cJSON_IsTrue(v));
	}
}

static int stats_common(int argc, char **argv, const char *cmd, bool status)
{
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' },
		{ "config", required_argument, 0, 'c' },
		{ "json", no_argument, 0, 'j' },
		{ "prometheus", no_argument, 0, 'p' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *sock = NULL, *conf = NULL;
	int fmt = FMT_TABLE, c;
	while ((c = getopt_long(argc, argv, "s:c:jph", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock = optarg; break;
		case 'c': conf = optarg; break;
		case 'j': fmt = FMT_JSON; break;
		case 'p':
			if (status)
				goto bad;
			fmt = FMT_PROM;
			break;
		case 'h':
			printf("usage: moestream %s [--socket PATH] [-c FILE]%s\n\n"
			       "%s\n\n  --socket PATH  the daemon's socket (default: "
			       "the configuration's [socket] path)\n"
			       "  -c FILE        the configuration to take the socket "
			       "from (default %s)\n"
			       "  --json         the daemon's counters as JSON\n%s",
			       cmd, status ? " [--json]" : " [--json|--prometheus]",
			       status ? "What moestreamd serves and how: model, I/O "
					"engine mode, uptime, clients, cache size."
				      : "moestreamd's counters: hits, misses, hit "
					"rate, bytes read and GB/s, evictions,\n"
					"prefetch issued/used/wasted, acquire latency "
					"p50/p99 for hits and misses,\narena waste.",
			       MS_DEFAULT_CONFIG,
			       status ? "" : "  --prometheus   the Prometheus text "
					     "format\n");
			return 0;
		default:
		bad:
			fprintf(stderr, "usage: moestream %s [--socket PATH] (see "
					"--help)\n", cmd);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		tool_error(cmd, "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	struct ms_client *cl;
	if (tool_connect(cmd, sock, conf, &cl))
		return 1;
	char *json = NULL;
	int rc = ms_client_stats(cl, &json, 10000);
	ms_client_close(cl);
	if (rc) {
		tool_error(cmd, "STATS failed: %s", strerror(-rc));
		return 1;
	}
	cJSON *o = cJSON_Parse(json);
	if (!o) {
		tool_error(cmd, "the daemon's stats are not JSON");
		free(json);
		return 1;
	}
	if (fmt == FMT_JSON) {
		char *pretty = cJSON_Print(o);
		puts(pretty ? pretty : json);
		free(pretty);
	} else if (fmt == FMT_PROM) {
		print_prometheus(o);
	} else if (status) {
		print_status(o);
	} else {
		print_stats_table(o);
	}
	cJSON_Delete(o);
	free(json);
	return 0;
}

int cmd_status(int argc, char **argv)
{
	return stats_common(argc, argv, "status", true);
}

int cmd_stats(int argc, char **argv)
{
	return stats_common(argc, argv, "stats", false);
}

int cmd_get(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, 0, 's' },
		{ "config", required_argument, 0, 'c' },
		{ "proj", required_argument, 0, 'p' },
		{ "output", required_argument, 0, 'o' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *sock = NULL, *conf = NULL, *proj = NULL, *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "s:c:p:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock = optarg; break;
		case 'c': conf = optarg; break;
		case 'p': proj = optarg; break;
		case 'o': out = optarg; break;
		case 'h':
			printf("usage: moestream get L:E [--proj gate|up|down|gate_up] "
			       "[-o FILE] [--socket PATH]\n\n"
			       "Acquires expert E of block L (blk.L) from moestreamd and "
			       "writes its raw bytes\nas the daemon serves them (all "
			       "projections in order, or one with --proj):\nthey must "
			       "equal the file's bytes at `moestream inspect --extents`.\n"
			       "\nexample: moestream get 3:17 --proj down -o down.bin\n");
			return 0;
		default:
			fprintf(stderr, "usage: moestream get L:E [--proj P] [-o FILE] "
					"(see --help)\n");
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1) {
		tool_error("get", "give one L:E (block:expert), e.g. 3:17");
		return EXIT_USAGE;
	}
	char *end;
	unsigned long blk = strtoul(argv[optind], &end, 10);
	unsigned long ex = *end == ':' ? strtoul(end + 1, &end, 10) : 0;
	if (end == argv[optind] || *end || !strchr(argv[optind], ':') ||
	    ex > 65535 || blk > 1000000) {
		tool_error("get", "'%s' is not L:E (block:expert), e.g. 3:17",
			   argv[optind]);
		return EXIT_USAGE;
	}
	if (!out && isatty(1)) {
		tool_error("get", "refusing to write binary to a terminal; use -o FILE "
				  "or a pipe");
		return EXIT_USAGE;
	}
	struct ms_client *cl;
	if (tool_connect("get", sock, conf, &cl))
		return 1;
	const struct ms_client_layer *L = ms_client_layer(cl, (uint32_t)blk);
	int want = -1;
	if (!L) {
		tool_error("get", "block %lu is not a MoE layer of this model", blk);
		ms_client_close(cl);
		return 1;
	}
	if (ex >= ms_client_model(cl)->n_expert) {
		tool_error("get", "expert %lu: the model has %u experts", ex,
			   ms_client_model(cl)->n_expert);
		ms_client_close(cl);
		return 1;
	}
	if (proj) {
		for (uint32_t j = 0; j < L->n_proj; j++)
			if (!strcmp(ms_proj_name(L->proj[j]), proj))
				want = (int)j;
		if (want < 0) {
			tool_error("get", "block %lu has no '%s' projection (it has %s%s%s%s%s)",
				   blk, proj, ms_proj_name(L->proj[0]), ", ",
				   ms_proj_name(L->proj[1]), L->n_proj > 2 ? ", " : "",
				   L->n_proj > 2 ? ms_proj_name(L->proj[2]) : "");
			ms_client_close(cl);
			return 1;
		}
	}
	uint16_t e16 = (uint16_t)ex;
	struct ms_client_expert got;
	int rc = ms_client_acquire(cl, (uint32_t)blk, &e16, 1, &got, 60000);
	if (rc) {
		tool_error("get", "acquiring %lu:%lu failed: %s%s%s", blk, ex,
			   strerror(-rc), *ms_client_last_error(cl) ? ": " : "",
			   ms_client_last_error(cl));
		ms_client_close(cl);
		return 1;
	}
	int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : 1;
	if (fd < 0) {
		tool_error("get", "%s: %s", out, strerror(errno));
		rc = -1;
	}
	for (uint32_t j = 0; fd >= 0 && !rc && j < got.n_proj; j++) {
		if (want >= 0 && (int)j != want)
			continue;
		const uint8_t *p = got.proj[j];
		uint64_t left = got.len[j];
		while (left) {
			ssize_t w = write(fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				tool_error("get", "writing: %s", strerror(errno));
				rc = -1;
				break;
			}
			p += w;
			left -= (uint64_t)w;
		}
	}
	if (out && fd >= 0)
		close(fd);
	ms_client_release(cl, (uint32_t)blk, &e16, 1);
	ms_client_ping(cl, 5000); /* the release is in before we go */
	ms_client_close(cl);
	return rc ? 1 : 0;
}
