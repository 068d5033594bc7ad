/*
 * config.c - moestreamd's configuration: one option table, one INI file.
 *
 * Every option lives in opts[] below (Redis's static_configs[] habit): its
 * section and key, its type, where it lives in struct ms_config, its default
 * as text, its range, whether SIGHUP may change it, and one line of help. The
 * defaults, the file, the command line (ms_config_set), --print-config and
 * SIGHUP all go through that one table, so a default is parsed by the same
 * code as a user's value, and the sample file and --print-config cannot
 * describe an option the parser does not know.
 *
 * Parsing is libinih's, fed through our own line reader (ini_parse_stream):
 *
 *  - Debian's libinih 55 is built with INI_HANDLER_LINENO 0, so the handler
 *    is not told the line. inih calls the handler right after it reads a
 *    line, so the reader counts lines and the handler reads the count.
 *  - inih reads into a 200-byte buffer and splits a longer line in two (the
 *    tail then parses as a line of its own, and the line count drifts). The
 *    reader reads whole lines with getline, hands inih at most what fits,
 *    and the handler takes the value of an over-long line from the full text
 *    with inih's own rules (first '=' or ':', ';' after a space starts a
 *    comment, both ends trimmed). A 4 KiB model path or pin list works.
 *  - The reader strips leading whitespace. inih would otherwise read an
 *    indented line as the continuation of the previous value, so
 *    "  size = 4G" under "path = x" would silently become part of the path.
 *    Indented keys are fine here; continuation lines are not supported.
 *  - The reader also checks each line's shape (section header, key = value,
 *    comment, blank) so that a syntax error is reported with its text, and
 *    names unknown sections even when they hold no key.
 *
 * A load parses into a copy and commits only when the whole file is good:
 * a bad file on SIGHUP leaves the running configuration untouched. The first
 * error (by line) is the one reported, as one line:
 *   FILE:LINE: [section] key = 'value': why (allowed: RANGE)
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <ini.h>

#include "daemon.h"

/* ---- the table ------------------------------------------------------------ */

enum opt_type {
	OPT_SIZE,    /* bytes with K/M/G/T suffixes: uint32_t or uint64_t */
	OPT_UINT,    /* decimal: uint32_t or uint64_t */
	OPT_BOOL,    /* true/false/yes/no/on/off/1/0: bool */
	OPT_STRING,  /* char[]: free text (a path) */
	OPT_LIST,    /* char[]: comma-separated elements, stored normalized */
	OPT_ENUM,    /* one of names[]: an int-sized enum or int */
	OPT_MODE,    /* octal permission bits: uint32_t */
	OPT_NUMA,    /* auto|interleave|none|N: int (MS_NUMA_* or N) */
	OPT_DOUBLE,  /* a finite decimal number: double */
	OPT_STAGING, /* auto|off|size: uint64_t (MS_STAGING_AUTO, 0, bytes) */
};

struct opt_name {
	const char *name;
	int value;
};

/* Validates (and may normalize in place, within `cap` bytes) one STRING
 * value or one LIST element. NULL when good, else why it is not. */
typedef const char *(*opt_check_fn)(char *v, size_t cap);

struct opt {
	const char *section, *key;
	enum opt_type type;
	size_t off, size;              /* the field in struct ms_config */
	const char *def;               /* the default, as the file would say it */
	uint64_t min, max;             /* SIZE, UINT, MODE, NUMA (node numbers) */
	uint64_t align;                /* SIZE: a multiple of this (0: any) */
	double dmin, dmax;             /* DOUBLE */
	const struct opt_name *names;  /* ENUM, NULL-terminated */
	opt_check_fn check;            /* STRING, LIST (per element) */
	const char *range;             /* STRING, LIST: the allowed values */
	bool live;                     /* SIGHUP may change it */
	const char *help;
};

#define FIELD(f)                                                               \
	.off = offsetof(struct ms_config, f),                                  \
	.size = sizeof(((struct ms_config *)0)->f)

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

/* Enums are stored through an int: they must be int-sized. */
_Static_assert(sizeof(enum ms_huge) == sizeof(int), "enum ms_huge is not int");
_Static_assert(sizeof(enum ms_io_engine) == sizeof(int), "enum size");
_Static_assert(sizeof(enum ms_io_direct) == sizeof(int), "enum size");
_Static_assert(sizeof(enum ms_prefetch_policy) == sizeof(int), "enum size");

static const struct opt_name huge_names[] = {
	{ "auto", MS_HUGE_AUTO }, { "on", MS_HUGE_ON }, { "off", MS_HUGE_OFF },
	{ NULL, 0 },
};
static const struct opt_name engine_names[] = {
	{ "auto", MS_IO_ENGINE_AUTO }, { "io_uring", MS_IO_ENGINE_URING },
	{ "preadv", MS_IO_ENGINE_PREADV }, { NULL, 0 },
};
static const struct opt_name direct_names[] = {
	{ "auto", MS_IO_DIRECT_AUTO }, { "on", MS_IO_DIRECT_ON },
	{ "off", MS_IO_DIRECT_OFF }, { NULL, 0 },
};
static const struct opt_name policy_names[] = {
	{ "none", MS_PREFETCH_NONE }, { "history", MS_PREFETCH_HISTORY },
	{ "hint", MS_PREFETCH_HINT }, { "auto", MS_PREFETCH_AUTO },
	{ NULL, 0 },
};
static const struct opt_name level_names[] = {
	{ "error", MS_LOG_ERR }, { "warning", MS_LOG_WARNING },
	{ "notice", MS_LOG_NOTICE }, { "info", MS_LOG_INFO },
	{ "debug", MS_LOG_DEBUG }, { NULL, 0 },
};

static const char *check_socket_path(char *v, size_t cap);
static const char *check_account(char *v, size_t cap);
static const char *check_pin(char *v, size_t cap);
static const char *check_pci(char *v, size_t cap);

/*
 * The options, grouped by section (--print-config writes them in this
 * order, one [section] header per group). What may change live: what the
 * server reads per connection or per request (who may connect, how many,
 * timeouts, prefetch, logging). What may not: whatever was baked into the
 * socket, the arena, the I/O rings or the opened model at start.
 */
static const struct opt opts[] = {
	/* [model] */
	{ .section = "model", .key = "path", .type = OPT_STRING, FIELD(model_path),
	  .def = "", .range = "a path to a .gguf, empty: --model must name one",
	  .help = "The GGUF model to serve (any shard of a split model); "
		  "--model overrides it" },

	/* [socket] */
	{ .section = "socket", .key = "path", .type = OPT_STRING,
	  FIELD(socket_path), .def = MS_DEFAULT_SOCKET,
	  .check = check_socket_path,
	  .range = "a filesystem path of at most 107 bytes, no abstract '@' name",
	  .help = "The Unix socket clients connect to; the daemon must own its "
		  "directory (systemd: RuntimeDirectory); --socket overrides it" },
	{ .section = "socket", .key = "mode", .type = OPT_MODE, FIELD(socket_mode),
	  .def = "0660", .min = 0, .max = 0777,
	  .help = "Permissions of the socket file from the moment it exists; a "
		  "client needs write permission to connect" },
	{ .section = "socket", .key = "allow_users", .type = OPT_LIST,
	  FIELD(allow_users), .def = "", .check = check_account,
	  .range = "comma-separated user names or uids", .live = true,
	  .help = "Users allowed to connect (checked with SO_PEERCRED); a peer "
		  "passes if it is root, the daemon's own user, listed here or "
		  "in allow_groups; both empty: anyone the socket's mode lets in" },
	{ .section = "socket", .key = "allow_groups", .type = OPT_LIST,
	  FIELD(allow_groups), .def = "", .check = check_account,
	  .range = "comma-separated group names or gids", .live = true,
	  .help = "Groups whose members may connect (see allow_users)" },
	{ .section = "socket", .key = "max_clients", .type = OPT_UINT,
	  FIELD(max_clients), .def = "64", .min = 1, .max = 4096, .live = true,
	  .help = "Connections served at once; one more is refused" },
	{ .section = "socket", .key = "idle_timeout", .type = OPT_UINT,
	  FIELD(idle_timeout_s), .def = "0", .min = 0, .max = 2592000,
	  .live = true,
	  .help = "Seconds a client may stay silent before it is disconnected "
		  "(its pins released); 0 = never" },

	/* [cache] */
	{ .section = "cache", .key = "size", .type = OPT_SIZE, FIELD(cache_size),
	  .def = "4G", .min = 64 * MiB, .max = 16 * TiB,
	  .help = "RAM for the expert cache, one shared locked arena (K/M/G/T "
		  "suffixes); --cache-size overrides it" },
	{ .section = "cache", .key = "pin", .type = OPT_LIST, FIELD(pin),
	  .def = "", .check = check_pin,
	  .range = "comma-separated block:expert pairs, e.g. 3:17,3:42",
	  .help = "Experts loaded at start and never evicted" },
	{ .section = "cache", .key = "pin_top", .type = OPT_UINT, FIELD(pin_top),
	  .def = "0", .min = 0, .max = 65535, .live = true,
	  .help = "Keep the N most used experts pinned; 0 = off" },
	{ .section = "cache", .key = "hugepages", .type = OPT_ENUM,
	  FIELD(hugepages), .def = "auto", .names = huge_names,
	  .help = "Arena pages: auto = hugetlbfs pages if reserved, else "
		  "transparent huge pages (where shmem THP is off, collapsed "
		  "into them at start with MADV_COLLAPSE, Linux 6.1); on = "
		  "hugetlbfs or fail; off = 4K pages" },
	{ .section = "cache", .key = "numa_node", .type = OPT_NUMA,
	  FIELD(numa_node), .def = "auto", .min = 0, .max = 1023,
	  .help = "NUMA node of the arena: auto = the GPU's node when gpu is "
		  "set, else the daemon's; interleave; none = no binding; or a "
		  "node number" },
	{ .section = "cache", .key = "gpu", .type = OPT_STRING, FIELD(gpu_pci),
	  .def = "", .check = check_pci,
	  .range = "a PCI address like 0000:65:00.0, or empty",
	  .help = "PCI address of the GPU the experts feed, for numa_node = auto "
		  "(lspci -D shows it)" },
	{ .section = "cache", .key = "acquire_timeout", .type = OPT_UINT,
	  FIELD(acquire_timeout_ms), .def = "5000", .min = 1, .max = 600000,
	  .live = true,
	  .help = "Milliseconds an acquire waits for a slot when every slot is "
		  "pinned, then fails with EBUSY" },
	{ .section = "cache", .key = "lock", .type = OPT_BOOL, FIELD(lock),
	  .def = "true",
	  .help = "mlock the arena so it never swaps (needs LimitMEMLOCK or "
		  "CAP_IPC_LOCK); false is for tests" },

	/* [io] */
	{ .section = "io", .key = "engine", .type = OPT_ENUM, FIELD(io_engine),
	  .def = "auto", .names = engine_names,
	  .help = "auto = io_uring, else a preadv thread pool (said once in the "
		  "log); io_uring or preadv to insist on one" },
	{ .section = "io", .key = "threads", .type = OPT_UINT, FIELD(io_threads),
	  .def = "2", .min = 1, .max = MS_IO_MAX_THREADS,
	  .help = "I/O threads, one ring (or preadv worker group) each" },
	{ .section = "io", .key = "queue_depth", .type = OPT_UINT,
	  FIELD(io_queue_depth), .def = "64", .min = 1, .max = MS_IO_MAX_DEPTH,
	  .help = "Reads in flight per I/O thread" },
	{ .section = "io", .key = "request_size", .type = OPT_SIZE,
	  FIELD(io_request_size), .def = "1M", .min = 4 * KiB, .max = 64 * MiB,
	  .align = MS_IO_ALIGN,
	  .help = "Bytes per read: an expert is read in chunks of this size" },
	{ .section = "io", .key = "prefetch_inflight", .type = OPT_SIZE,
	  FIELD(io_prefetch_inflight), .def = "32M", .min = 0, .max = 16 * GiB,
	  .help = "A prefetch read starts only while fewer bytes than this "
		  "are being read (all reads, all threads; 0 = no cap). The "
		  "rest waits in the order asked for, so the layer a reader "
		  "waits for comes first and the next one's reads fill the "
		  "time after; demand reads are never capped. Set it to what "
		  "keeps the device at its top rate: `moestream bench io "
		  "--depth D` shows where that levels off (D x request_size)" },
	{ .section = "io", .key = "sqpoll", .type = OPT_BOOL, FIELD(io_sqpoll),
	  .def = "false",
	  .help = "io_uring SQPOLL: a kernel thread polls the submission queue "
		  "(lower latency, one busy core)" },
	{ .section = "io", .key = "direct", .type = OPT_ENUM, FIELD(io_direct),
	  .def = "auto", .names = direct_names,
	  .help = "O_DIRECT reads that bypass the page cache: auto = where the "
		  "filesystem allows it; on = or fail; off = buffered" },
	{ .section = "io", .key = "staging", .type = OPT_STAGING,
	  FIELD(io_staging), .def = "auto", .min = MS_IO_ALIGN,
	  .max = MS_IO_MAX_STAGING, .align = MS_IO_ALIGN,
	  .help = "O_DIRECT reads into a few anonymous huge-page buffers, then "
		  "a copy into the cache: for a cache on 4 KiB pages, where "
		  "reads straight into it are slow. auto = 8M (at most a "
		  "quarter of the cache) when the cache got no huge pages "
		  "(hugepages = off, or none to be had: a kernel before 6.1, "
		  "shmem_enabled = deny, fragmented memory), else off; a "
		  "size = always, that many bytes. The buffers are part of "
		  "cache.size (the cache gets the rest); the log and stats "
		  "say which path is in use and what the copy costs" },

	/* [prefetch] */
	{ .section = "prefetch", .key = "policy", .type = OPT_ENUM,
	  FIELD(prefetch_policy), .def = "auto", .names = policy_names,
	  .live = true,
	  .help = "What to prefetch: none; history = experts that followed "
		  "before; hint = what clients' PREFETCH messages name; auto = "
		  "hints when clients send them, else history" },
	{ .section = "prefetch", .key = "depth", .type = OPT_UINT,
	  FIELD(prefetch_depth), .def = "1", .min = 0, .max = 16, .live = true,
	  .help = "Layers ahead to prefetch; 0 = off" },
	{ .section = "prefetch", .key = "width", .type = OPT_UINT,
	  FIELD(prefetch_width), .def = "8", .min = 0, .max = 64, .live = true,
	  .help = "Experts per layer to prefetch at most" },
	{ .section = "prefetch", .key = "min_prob", .type = OPT_DOUBLE,
	  FIELD(prefetch_min_prob), .def = "0.1", .dmin = 0.0, .dmax = 1.0,
	  .live = true,
	  .help = "Prefetch an expert only when its predicted probability is at "
		  "least this" },
	{ .section = "prefetch", .key = "max_inflight", .type = OPT_SIZE,
	  FIELD(prefetch_max_inflight), .def = "0", .min = 0, .max = 16 * TiB,
	  .live = true,
	  .help = "Bytes of prefetch reads in flight at once; 0 = cache.size/8" },

	/* [log] */
	{ .section = "log", .key = "level", .type = OPT_ENUM, FIELD(log_level),
	  .def = "notice", .names = level_names, .live = true,
	  .help = "The least severe message logged" },
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

static const char *const sections[] = {
	"model", "socket", "cache", "io", "prefetch", "log",
};
#define SECTIONS_TEXT "model, socket, cache, io, prefetch, log"

/* ---- checks for text options ---------------------------------------------- */

static const char *check_socket_path(char *v, size_t cap)
{
	(void)cap;
	if (!*v)
		return "empty";
	if (*v == '@')
		return "abstract sockets are not used (anyone could bind the name)";
	return NULL; /* the length is checked against the field (108) */
}

/* A user or group: a number, or a name as useradd(8) accepts one. */
static const char *check_account(char *v, size_t cap)
{
	(void)cap;
	size_t n = strlen(v);
	if (n > 32)
		return "a name longer than 32 characters";
	if (*v == '-')
		return "a name starting with '-'";
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)v[i];
		if (!(isalnum(ch) || ch == '_' || ch == '.' || ch == '-' ||
		      (ch == '$' && i == n - 1)))
			return "not a user/group name or number";
	}
	return NULL;
}

static bool parse_u32_dec(const char *s, const char **end, uint32_t *out)
{
	uint64_t v = 0;
	const char *p = s;
	if (*p < '0' || *p > '9')
		return false;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return false;
	}
	*out = (uint32_t)v;
	*end = p;
	return true;
}

/* "block:expert": both decimal; the cache checks them against the model. */
static const char *check_pin(char *v, size_t cap)
{
	(void)cap;
	const char *p;
	uint32_t blk, exp;
	if (!parse_u32_dec(v, &p, &blk) || *p != ':' ||
	    !parse_u32_dec(p + 1, &p, &exp) || *p)
		return "not a block:expert pair";
	return NULL;
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* Reads exactly `n` hex digits. */
static bool hexn(const char **p, unsigned n, unsigned *out)
{
	unsigned v = 0;
	for (unsigned i = 0; i < n; i++) {
		int h = hexval((unsigned char)(*p)[i]);
		if (h < 0)
			return false;
		v = v * 16 + (unsigned)h;
	}
	*p += n;
	*out = v;
	return true;
}

/* [DDDD:]BB:DD.F (domain, bus, device 0..1f, function 0..7), stored as the
 * full lowercase form sysfs uses (/sys/bus/pci/devices/0000:65:00.0). */
static const char *check_pci(char *v, size_t cap)
{
	unsigned dom = 0, bus, dev, fn;
	const char *p = v;
	if (!*v)
		return NULL; /* no GPU */
	if (strlen(v) == 12) {
		if (!hexn(&p, 4, &dom) || *p++ != ':')
			return "not a PCI address";
	}
	if (!hexn(&p, 2, &bus) || *p++ != ':' || !hexn(&p, 2, &dev) ||
	    *p++ != '.' || !hexn(&p, 1, &fn) || *p)
		return "not a PCI address";
	if (dev > 0x1f || fn > 7)
		return "PCI device above 1f or function above 7";
	snprintf(v, cap, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
	return NULL;
}

/* ---- values: text -> field ------------------------------------------------- */

static bool is_blank(int ch)
{
	return ch == ' ' || ch == '\t';
}

/* Can `v` be written as "key = v" and read back by inih unchanged? (A
 * list is trimmed anyway: `edges` false lets blanks at its ends pass.) */
static const char *unwritable(const char *v, bool edges)
{
	const char *s = v;
	while (!edges && is_blank(*s))
		s++;
	if (*s == ';')
		return "a value cannot start with ';' (it would read as a comment)";
	if (edges && *v && (is_blank(*v) || is_blank(v[strlen(v) - 1])))
		return "a value cannot start or end with a blank";
	for (const char *p = v; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return "a control character";
		if (p > v && *p == ';' && isspace((unsigned char)p[-1]))
			return "' ;' (it would start a comment)";
	}
	return NULL;
}

static void store_uint(void *field, size_t size, uint64_t v)
{
	if (size == sizeof(uint32_t)) {
		uint32_t x = (uint32_t)v;
		memcpy(field, &x, sizeof(x));
	} else {
		memcpy(field, &v, sizeof(v));
	}
}

static uint64_t load_uint(const void *field, size_t size)
{
	if (size == sizeof(uint32_t)) {
		uint32_t x;
		memcpy(&x, field, sizeof(x));
		return x;
	}
	uint64_t v;
	memcpy(&v, field, sizeof(v));
	return v;
}

static int load_int(const void *field)
{
	int v;
	memcpy(&v, field, sizeof(v));
	return v;
}

static const char *const bool_true[] = { "true", "yes", "on", "1" };
static const char *const bool_false[] = { "false", "no", "off", "0" };

/* Decimal digits only: no sign, no blanks, no hex. */
static bool parse_u64_dec(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*out = v;
	return true;
}

/* Copies `v` into a char[] field, zero-filling the rest (so that two
 * configurations holding the same text hold the same bytes). */
static int store_text(const struct opt *o, void *field, const char *v,
		      char *why, size_t why_len)
{
	size_t n = strlen(v);
	if (n >= o->size) {
		snprintf(why, why_len, "too long (%zu bytes, at most %zu)", n,
			 o->size - 1);
		return -EINVAL;
	}
	memset(field, 0, o->size);
	memcpy(field, v, n);
	return 0;
}

/* A list, normalized: elements trimmed, joined by ',' without blanks. */
static int set_list(const struct opt *o, void *field, const char *text,
		    char *why, size_t why_len)
{
	char out[4096], el[256];
	size_t used = 0;
	const char *p = text;
	while (is_blank(*p))
		p++;
	if (!*p)
		return store_text(o, field, "", why, why_len);
	out[0] = '\0';
	for (;;) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		while (n && is_blank(*p))
			p++, n--;
		while (n && is_blank(p[n - 1]))
			n--;
		if (!n) {
			snprintf(why, why_len, "an empty element");
			return -EINVAL;
		}
		if (n >= sizeof(el)) {
			snprintf(why, why_len, "an element of %zu bytes", n);
			return -EINVAL;
		}
		memcpy(el, p, n);
		el[n] = '\0';
		const char *bad = o->check ? o->check(el, sizeof(el)) : NULL;
		if (bad) {
			snprintf(why, why_len, "'%.64s': %s", el, bad);
			return -EINVAL;
		}
		size_t len = strlen(el);
		if (used + len + 2 > sizeof(out)) {
			snprintf(why, why_len, "too long (at most %zu bytes)",
				 o->size - 1);
			return -EINVAL;
		}
		if (used)
			out[used++] = ',';
		memcpy(out + used, el, len + 1);
		used += len;
		if (!e)
			break;
		p = e + 1;
	}
	return store_text(o, field, out, why, why_len);
}

/* A size within the option's range and alignment: 0 and *u, or -EINVAL
 * with the reason in `why`. */
static int parse_size_opt(const struct opt *o, const char *text, uint64_t *u,
			  char *why, size_t why_len)
{
	int rc = ms_parse_size(text, u);
	if (rc == -ERANGE) {
		snprintf(why, why_len, "too large");
		return -EINVAL;
	}
	if (rc) {
		snprintf(why, why_len, "not a size (a number with an "
			 "optional K, M, G or T suffix)");
		return -EINVAL;
	}
	if (*u < o->min || *u > o->max) {
		snprintf(why, why_len, "%s the %s", *u < o->min ?
			 "below" : "above", *u < o->min ? "minimum" :
			 "maximum");
		return -EINVAL;
	}
	if (o->align && *u % o->align) {
		snprintf(why, why_len, "not a multiple of %llu",
			 (unsigned long long)o->align);
		return -EINVAL;
	}
	return 0;
}

/* Parses `text` as option `o` into `c`. 0, or -EINVAL with the reason (the
 * caller adds where, and the allowed range) in `why`. Nothing is written on
 * failure. */
static int opt_parse(const struct opt *o, struct ms_config *c,
		     const char *text, char *why, size_t why_len)
{
	void *field = (char *)c + o->off;
	uint64_t u;
	const char *bad;

	switch (o->type) {
	case OPT_SIZE:
		if (parse_size_opt(o, text, &u, why, why_len))
			return -EINVAL;
		store_uint(field, o->size, u);
		return 0;
	case OPT_UINT:
		if (!parse_u64_dec(text, &u)) {
			snprintf(why, why_len, "not a whole number");
			return -EINVAL;
		}
		if (u < o->min || u > o->max) {
			snprintf(why, why_len, "out of range");
			return -EINVAL;
		}
		store_uint(field, o->size, u);
		return 0;
	case OPT_BOOL:
		for (size_t i = 0; i < 4; i++) {
			bool t = !strcasecmp(text, bool_true[i]);
			if (t || !strcasecmp(text, bool_false[i])) {
				memcpy(field, &t, sizeof(t));
				return 0;
			}
		}
		snprintf(why, why_len, "not a boolean");
		return -EINVAL;
	case OPT_ENUM:
		for (const struct opt_name *n = o->names; n->name; n++)
			if (!strcasecmp(text, n->name)) {
				memcpy(field, &n->value, sizeof(int));
				return 0;
			}
		snprintf(why, why_len, "unknown value");
		return -EINVAL;
	case OPT_MODE: {
		uint64_t v = 0;
		const char *p = text;
		if (!*p)
			goto bad_mode;
		for (; *p; p++) {
			if (*p < '0' || *p > '7' || v > 07777)
				goto bad_mode;
			v = v * 8 + (uint64_t)(*p - '0');
		}
		if (v < o->min || v > o->max) {
			snprintf(why, why_len, "out of range");
			return -EINVAL;
		}
		store_uint(field, o->size, v);
		return 0;
bad_mode:
		snprintf(why, why_len, "not an octal mode");
		return -EINVAL;
	}
	case OPT_NUMA: {
		int v;
		if (!strcasecmp(text, "auto"))
			v = MS_NUMA_AUTO;
		else if (!strcasecmp(text, "interleave"))
			v = MS_NUMA_INTERLEAVE;
		else if (!strcasecmp(text, "none"))
			v = MS_NUMA_NONE;
		else if (!parse_u64_dec(text, &u)) {
			snprintf(why, why_len, "not a node number or mode");
			return -EINVAL;
		} else if (u < o->min || u > o->max) {
			snprintf(why, why_len, "node out of range");
			return -EINVAL;
		} else {
			v = (int)u;
		}
		memcpy(field, &v, sizeof(v));
		return 0;
	}
	case OPT_STAGING:
		/* auto and off by name, a size as OPT_SIZE checks one; what
		 * passes here passes ms_cache_parse_staging too */
		if (!strcasecmp(text, "auto"))
			u = MS_STAGING_AUTO;
		else if (!strcasecmp(text, "off"))
			u = 0;
		else if (parse_size_opt(o, text, &u, why, why_len))
			return -EINVAL;
		memcpy(field, &u, sizeof(u));
		return 0;
	case OPT_DOUBLE: {
		char *end;
		errno = 0;
		double d = strtod(text, &end);
		if (!*text || *end || errno || !isfinite(d) ||
		    isspace((unsigned char)*text)) {
			snprintf(why, why_len, "not a number");
			return -EINVAL;
		}
		if (d < o->dmin || d > o->dmax) {
			snprintf(why, why_len, "out of range");
			return -EINVAL;
		}
		memcpy(field, &d, sizeof(d));
		return 0;
	}
	case OPT_STRING: {
		char tmp[4096];
		if ((bad = unwritable(text, true))) {
			snprintf(why, why_len, "%s", bad);
			return -EINVAL;
		}
		if (strlen(text) >= sizeof(tmp) || strlen(text) >= o->size) {
			snprintf(why, why_len, "too long (%zu bytes, at most "
				 "%zu)", strlen(text), o->size - 1);
			return -EINVAL;
		}
		snprintf(tmp, sizeof(tmp), "%s", text);
		if (o->check && (bad = o->check(tmp, o->size))) {
			snprintf(why, why_len, "%s", bad);
			return -EINVAL;
		}
		return store_text(o, field, tmp, why, why_len);
	}
	case OPT_LIST:
		if ((bad = unwritable(text, false))) {
			snprintf(why, why_len, "%s", bad);
			return -EINVAL;
		}
		return set_list(o, field, text, why, why_len);
	}
	snprintf(why, why_len, "unknown option type");
	return -EINVAL;
}

/* ---- values: field -> text ------------------------------------------------- */

/* The largest unit that divides exactly, so that the text reads back to the
 * same number of bytes. */
static void fmt_size(uint64_t v, char *out, size_t len)
{
	static const char suffix[] = "KMGT";
	int unit = -1;
	for (int i = 3; i >= 0; i--)
		if (v && !(v % (1ull << (10 * (i + 1))))) {
			unit = i;
			break;
		}
	if (unit < 0)
		snprintf(out, len, "%llu", (unsigned long long)v);
	else
		snprintf(out, len, "%llu%c",
			 (unsigned long long)(v >> (10 * (unit + 1))),
			 suffix[unit]);
}

/* The shortest decimal that reads back to the same double. */
static void fmt_double(double d, char *out, size_t len)
{
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(out, len, "%.*g", prec, d);
		if (strtod(out, NULL) == d)
			return;
	}
}

static const char *enum_name(const struct opt_name *n, int v)
{
	for (; n->name; n++)
		if (n->value == v)
			return n->name;
	return "?";
}

static void opt_format(const struct opt *o, const struct ms_config *c,
		       char *out, size_t len)
{
	const void *field = (const char *)c + o->off;
	bool b;
	double d;
	int v;

	switch (o->type) {
	case OPT_SIZE:
		fmt_size(load_uint(field, o->size), out, len);
		return;
	case OPT_UINT:
		snprintf(out, len, "%llu",
			 (unsigned long long)load_uint(field, o->size));
		return;
	case OPT_BOOL:
		memcpy(&b, field, sizeof(b));
		snprintf(out, len, "%s", b ? "true" : "false");
		return;
	case OPT_ENUM:
		snprintf(out, len, "%s", enum_name(o->names, load_int(field)));
		return;
	case OPT_MODE:
		snprintf(out, len, "%04llo",
			 (unsigned long long)load_uint(field, o->size));
		return;
	case OPT_NUMA:
		v = load_int(field);
		if (v == MS_NUMA_AUTO)
			snprintf(out, len, "auto");
		else if (v == MS_NUMA_INTERLEAVE)
			snprintf(out, len, "interleave");
		else if (v == MS_NUMA_NONE)
			snprintf(out, len, "none");
		else
			snprintf(out, len, "%d", v);
		return;
	case OPT_DOUBLE:
		memcpy(&d, field, sizeof(d));
		fmt_double(d, out, len);
		return;
	case OPT_STAGING: {
		uint64_t u = load_uint(field, o->size);
		if (u == MS_STAGING_AUTO)
			snprintf(out, len, "auto");
		else if (!u)
			snprintf(out, len, "off");
		else
			fmt_size(u, out, len);
		return;
	}
	case OPT_STRING:
	case OPT_LIST:
		snprintf(out, len, "%.*s", (int)o->size, (const char *)field);
		return;
	}
	snprintf(out, len, "?");
}

/* What the option accepts, for messages and comments. */
static void opt_range(const struct opt *o, char *out, size_t len)
{
	char a[32], b[32];
	size_t n;

	switch (o->type) {
	case OPT_SIZE:
		fmt_size(o->min, a, sizeof(a));
		fmt_size(o->max, b, sizeof(b));
		if (o->align) {
			char al[32];
			fmt_size(o->align, al, sizeof(al));
			snprintf(out, len, "%s..%s, a multiple of %s", a, b, al);
		} else {
			snprintf(out, len, "%s..%s", a, b);
		}
		return;
	case OPT_UINT:
		snprintf(out, len, "%llu..%llu", (unsigned long long)o->min,
			 (unsigned long long)o->max);
		return;
	case OPT_BOOL:
		snprintf(out, len, "true|false|yes|no|on|off|1|0");
		return;
	case OPT_ENUM:
		out[0] = '\0';
		n = 0;
		for (const struct opt_name *e = o->names; e->name && n < len;
		     e++)
			n += (size_t)snprintf(out + n, len - n, "%s%s",
					      e == o->names ? "" : "|", e->name);
		return;
	case OPT_MODE:
		snprintf(out, len, "octal %04llo..%04llo",
			 (unsigned long long)o->min, (unsigned long long)o->max);
		return;
	case OPT_NUMA:
		snprintf(out, len, "auto|interleave|none|%llu..%llu",
			 (unsigned long long)o->min, (unsigned long long)o->max);
		return;
	case OPT_DOUBLE:
		fmt_double(o->dmin, a, sizeof(a));
		fmt_double(o->dmax, b, sizeof(b));
		snprintf(out, len, "%s..%s", a, b);
		return;
	case OPT_STAGING:
		fmt_size(o->min, a, sizeof(a));
		fmt_size(o->max, b, sizeof(b));
		snprintf(out, len, "auto|off|%s..%s, a multiple of %s", a, b, a);
		return;
	case OPT_STRING:
	case OPT_LIST:
		snprintf(out, len, "%s", o->range ? o->range : "text");
		return;
	}
	snprintf(out, len, "?");
}

/* ---- lookup and the shared setter ------------------------------------------ */

static bool section_known(const char *s)
{
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
		if (!strcasecmp(s, sections[i]))
			return true;
	return false;
}

static const struct opt *opt_find(const char *section, const char *key)
{
	for (size_t i = 0; i < N_OPTS; i++)
		if (!strcasecmp(opts[i].section, section) &&
		    !strcasecmp(opts[i].key, key))
			return &opts[i];
	return NULL;
}

/* "size, pin, pin_top, ..." of one section. */
static void section_keys(const char *section, char *out, size_t len)
{
	size_t n = 0;
	out[0] = '\0';
	for (size_t i = 0; i < N_OPTS && n < len; i++)
		if (!strcasecmp(opts[i].section, section))
			n += (size_t)snprintf(out + n, len - n, "%s%s",
					      n ? ", " : "", opts[i].key);
}

/* "ORIGIN: " or "" */
#define ORIGIN_FMT "%s%s"
#define ORIGIN_ARG(o) ((o) && *(o) ? (o) : ""), ((o) && *(o) ? ": " : "")

/* Text from a file or the command line is quoted in messages up to this
 * many bytes; QUOTE_BUF holds the quote (every byte escaped, "...", NUL). */
#define QUOTE_MAX 80
#define QUOTE_BUF (4 * QUOTE_MAX + 4)

/*
 * The first `n` bytes of `s` (at most QUOTE_MAX of them) as message text
 * in out[QUOTE_BUF]: control bytes and DEL written \n, \r, \t or \xNN,
 * "..." when cut. A message is one line (a log line, a reply to a client)
 * whatever a section name, key or value holds.
 */
static const char *quote_n(char out[QUOTE_BUF], const char *s, size_t n)
{
	size_t o = 0, i;
	for (i = 0; i < n && i < QUOTE_MAX; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch >= 0x20 && ch != 0x7f && ch != '\\') {
			out[o++] = (char)ch;
			continue;
		}
		out[o++] = '\\';
		switch (ch) {
		case '\\': out[o++] = '\\'; break;
		case '\n': out[o++] = 'n'; break;
		case '\r': out[o++] = 'r'; break;
		case '\t': out[o++] = 't'; break;
		default:
			snprintf(out + o, 4, "x%02x", ch);
			o += 3;
		}
	}
	if (i < n) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

static const char *quote(char out[QUOTE_BUF], const char *s)
{
	return quote_n(out, s, strlen(s));
}

static int set_one(struct ms_config *c, const char *section, const char *key,
		   const char *value, const char *origin, struct ms_err *err)
{
	char why[256], range[256];
	char qs[QUOTE_BUF], qk[QUOTE_BUF], qv[QUOTE_BUF];
	if (!section || !*section)
		return ms_err_set(err, -EINVAL,
				  ORIGIN_FMT "%s = '%s': key before any "
				  "[section] (allowed: " SECTIONS_TEXT ")",
				  ORIGIN_ARG(origin), quote(qk, key),
				  quote(qv, value));
	if (!section_known(section))
		return ms_err_set(err, -EINVAL,
				  ORIGIN_FMT "[%s] %s = '%s': unknown section "
				  "(allowed: " SECTIONS_TEXT ")",
				  ORIGIN_ARG(origin), quote(qs, section),
				  quote(qk, key), quote(qv, value));
	const struct opt *o = opt_find(section, key);
	if (!o) {
		section_keys(section, range, sizeof(range));
		return ms_err_set(err, -EINVAL,
				  ORIGIN_FMT "[%s] %s = '%s': unknown key "
				  "(allowed in [%s]: %s)",
				  ORIGIN_ARG(origin), quote(qs, section),
				  quote(qk, key), quote(qv, value),
				  quote(qs, section), range);
	}
	if (opt_parse(o, c, value, why, sizeof(why))) {
		opt_range(o, range, sizeof(range));
		return ms_err_set(err, -EINVAL,
				  ORIGIN_FMT "[%s] %s = '%s': %s (allowed: "
				  "%s)", ORIGIN_ARG(origin), o->section, o->key,
				  quote(qv, value), why, range);
	}
	return 0;
}

int ms_config_set(struct ms_config *c, const char *section, const char *key,
		  const char *value, const char *origin, struct ms_err *err)
{
	/* Parse into a copy: a refused value leaves *c as it was. */
	struct ms_config tmp;
	memcpy(&tmp, c, sizeof(tmp));
	int rc = set_one(&tmp, section, key ? key : "", value ? value : "",
			 origin, err);
	if (!rc)
		memcpy(c, &tmp, sizeof(tmp));
	return rc;
}

void ms_config_defaults(struct ms_config *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < N_OPTS; i++) {
		struct ms_err err = { 0 };
		/* A default the parser refuses is a bug in the table; t_config
		 * checks every default, so this line is for whoever edits it. */
		if (set_one(c, opts[i].section, opts[i].key, opts[i].def,
			    "built-in default", &err))
			fprintf(stderr, "moestream: BUG: %s\n", err.msg);
	}
}

/* ---- reading a file ----------------------------------------------------- */

struct load_ctx {
	const char *path;
	FILE *f;
	char *buf;              /* the current physical line (getline) */
	size_t cap;
	const char *cur;        /* it, without leading blanks and newline */
	bool cur_long;          /* inih got a truncated copy */
	int line;               /* its number, from 1 */
	int read_errno;
	struct ms_config tmp;   /* the configuration being built */
	int seen[N_OPTS];       /* line where each option was set, 0: not */
	int err_line;           /* first error's line, 0: none */
	struct ms_err *err;
	int err_code;
};

/* Records an error on the current line unless one came first. */
static MS_PRINTF(2, 3) void load_fail(struct load_ctx *x, const char *fmt, ...)
{
	if (x->err_line)
		return;
	char msg[MS_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	x->err_line = x->line;
	x->err_code = -EINVAL;
	ms_err_set(x->err, -EINVAL, "%s:%d: %s", x->path, x->line, msg);
}

/* inih's rule for where a name or value ends: at one of `chars`, or at ';'
 * after a blank (an inline comment), or at the end. */
static const char *ini_end(const char *s, const char *chars)
{
	bool was_space = false;
	while (*s && (!chars || !strchr(chars, *s)) &&
	       !(was_space && *s == ';')) {
		was_space = isspace((unsigned char)*s);
		s++;
	}
	return s;
}

/* The reader's own look at a line: unknown sections and lines inih will
 * refuse are reported here, with their text. */
static void check_line(struct load_ctx *x)
{
	const char *s = x->cur;
	char q[QUOTE_BUF];
	if (!*s || *s == ';' || *s == '#')
		return;
	if (*s == '[') {
		const char *e = ini_end(s + 1, "]");
		if (*e != ']') {
			load_fail(x, "syntax error: '%s': a section header "
				  "without ']'", quote(q, s));
			return;
		}
		char name[64];
		size_t n = (size_t)(e - s - 1);
		snprintf(name, sizeof(name), "%.*s", (int)n, s + 1);
		if (n >= sizeof(name) || !section_known(name))
			load_fail(x, "[%s]: unknown section (allowed: "
				  SECTIONS_TEXT ")", quote_n(q, s + 1, n));
		return;
	}
	const char *e = ini_end(s, "=:");
	if (*e != '=' && *e != ':')
		load_fail(x, "syntax error: '%s' (expected [section], "
			  "key = value, or a # comment)", quote(q, s));
}

/* ini_reader: one whole physical line per call, counted. */
static char *load_reader(char *str, int num, void *stream)
{
	struct load_ctx *x = stream;
	errno = 0;
	ssize_t n = getline(&x->buf, &x->cap, x->f);
	if (n < 0) {
		if (ferror(x->f))
			x->read_errno = errno ? errno : EIO;
		return NULL;
	}
	x->line++;
	while (n > 0 && (x->buf[n - 1] == '\n' || x->buf[n - 1] == '\r'))
		x->buf[--n] = '\0';
	const char *s = x->buf;
	if (x->line == 1 && !strncmp(s, "\xEF\xBB\xBF", 3))
		s += 3; /* a UTF-8 byte order mark */
	while (is_blank(*s))
		s++;
	x->cur = s;
	if (strlen(x->buf) != (size_t)n) {
		load_fail(x, "a NUL byte in the line");
		s = "";
		x->cur = s;
	}
	check_line(x);
	size_t len = strlen(s);
	x->cur_long = num > 0 && len > (size_t)num - 1;
	snprintf(str, (size_t)num, "%s", s);
	return str;
}

static int load_handler(void *user, const char *section, const char *name,
			const char *value)
{
	struct load_ctx *x = user;
	char full[8192], qs[QUOTE_BUF], qk[QUOTE_BUF];

	if (x->err_line)
		return 1; /* the first error is the one reported */
	if (x->cur_long) {
		/* inih saw a truncated copy: take the value from the line. */
		const char *e = ini_end(x->cur, "=:");
		if (*e != '=' && *e != ':')
			return 1; /* check_line reported it */
		const char *v = e + 1;
		while (isspace((unsigned char)*v))
			v++;
		const char *ve = ini_end(v, NULL);
		while (ve > v && isspace((unsigned char)ve[-1]))
			ve--;
		if ((size_t)(ve - v) >= sizeof(full)) {
			load_fail(x, "[%s] %s: a value of %zu bytes (at most "
				  "%zu)", quote(qs, section), quote(qk, name),
				  (size_t)(ve - v),
				  sizeof(full) - 1);
			return 1;
		}
		memcpy(full, v, (size_t)(ve - v));
		full[ve - v] = '\0';
		value = full;
	}
	const struct opt *o = opt_find(section, name);
	if (o) {
		size_t i = (size_t)(o - opts);
		if (x->seen[i]) {
			load_fail(x, "[%s] %s = '%s': duplicate key (first "
				  "set on line %d)", o->section, o->key,
				  quote(qk, value), x->seen[i]);
			return 1;
		}
		x->seen[i] = x->line;
	}
	struct ms_err e = { 0 };
	if (set_one(&x->tmp, section, name, value, NULL, &e))
		load_fail(x, "%s", e.msg);
	return 1;
}

int ms_config_load(struct ms_config *c, const char *path, bool must_exist,
		   struct ms_err *err)
{
	struct load_ctx *x = calloc(1, sizeof(*x));
	struct stat st;
	int rc;

	if (!x)
		return ms_err_set(err, -ENOMEM, "%s: out of memory", path);
	x->path = path;
	x->err = err;
	memcpy(&x->tmp, c, sizeof(x->tmp));
	x->f = fopen(path, "re");
	if (!x->f) {
		rc = -errno;
		if (rc == -ENOENT && !must_exist) {
			rc = 0;
			goto out;
		}
		ms_err_set(err, rc, "%s: cannot open: %s", path, strerror(-rc));
		goto out;
	}
	if (fstat(fileno(x->f), &st) == 0 && S_ISDIR(st.st_mode)) {
		rc = ms_err_set(err, -EISDIR, "%s: is a directory", path);
		goto out;
	}

	rc = ini_parse_stream(load_reader, x, load_handler, x);
	if (x->read_errno) {
		rc = ms_err_set(err, -x->read_errno, "%s: read error: %s", path,
				strerror(x->read_errno));
		goto out;
	}
	if (rc == -2) {
		rc = ms_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	if (rc > 0 && (!x->err_line || rc < x->err_line)) {
		/* inih refused a line the reader's check let through. */
		rc = ms_err_set(err, -EINVAL, "%s:%d: syntax error (expected "
				"[section], key = value, or a # comment)", path,
				rc);
		goto out;
	}
	if (x->err_line) {
		rc = x->err_code; /* the message is already in err */
		goto out;
	}
	rc = 0;
	memcpy(c, &x->tmp, sizeof(*c));
out:
	if (x->f)
		fclose(x->f);
	free(x->buf);
	free(x);
	return rc;
}

/* ---- printing ------------------------------------------------------------ */

/* Writes `text` as "# " comment lines of at most 79 columns, broken at
 * blanks (a word longer than a line gets a line of its own). */
static void print_comment(FILE *f, const char *text)
{
	const size_t width = 79 - 2;
	const char *p = text;
	while (*p) {
		size_t n = strlen(p), cut = n;
		if (n > width) {
			cut = width;
			while (cut && p[cut] != ' ')
				cut--;
			if (!cut) /* one long word */
				cut = strcspn(p, " ");
		}
		fprintf(f, "# %.*s\n", (int)cut, p);
		p += cut;
		while (*p == ' ')
			p++;
	}
}

void ms_config_print(const struct ms_config *c, FILE *f)
{
	const char *section = NULL;
	char val[4200], range[256], def[64], text[1024];
	struct ms_config dflt;

	ms_config_defaults(&dflt);
	fprintf(f, "# moestream configuration: the values in effect "
		"(moestreamd --print-config).\n"
		"# Each option: what it does (allowed values, default; live = "
		"SIGHUP applies it,\n"
		"# restart = read at start only). Load with moestreamd -c FILE.\n");
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		if (!section || strcmp(section, o->section)) {
			section = o->section;
			fprintf(f, "\n[%s]\n", section);
		}
		opt_range(o, range, sizeof(range));
		opt_format(o, &dflt, def, sizeof(def));
		opt_format(o, c, val, sizeof(val));
		snprintf(text, sizeof(text), "%s (%s; default %s; %s)",
			 o->help, range, *def ? def : "empty",
			 o->live ? "live" : "restart");
		print_comment(f, text);
		if (*val)
			fprintf(f, "%s = %s\n", o->key, val);
		else
			fprintf(f, "%s =\n", o->key);
	}
}

/* ---- SIGHUP ------------------------------------------------------------- */

static bool opt_equal(const struct opt *o, const struct ms_config *a,
		      const struct ms_config *b)
{
	const char *fa = (const char *)a + o->off, *fb = (const char *)b + o->off;
	if (o->type == OPT_STRING || o->type == OPT_LIST)
		return strncmp(fa, fb, o->size) == 0;
	return memcmp(fa, fb, o->size) == 0;
}

int ms_config_apply_live(struct ms_config *live, const struct ms_config *fresh,
			 char *refused, size_t refused_len)
{
	size_t used = 0;
	int applied = 0;
	bool full = !refused || !refused_len;

	if (!full)
		refused[0] = '\0';
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		if (opt_equal(o, live, fresh))
			continue;
		if (o->live) {
			memcpy((char *)live + o->off,
			       (const char *)fresh + o->off, o->size);
			applied++;
			continue;
		}
		if (full)
			continue;
		int n = snprintf(refused + used, refused_len - used, "%s%s.%s",
				 used ? "," : "", o->section, o->key);
		if (n < 0 || (size_t)n >= refused_len - used) {
			refused[used] = '\0'; /* no room: whole names only */
			full = true;
			continue;
		}
		used += (size_t)n;
	}
	return applied;
}

/* ---- the cache's view --------------------------------------------------------- */

void ms_config_to_cache(const struct ms_config *c, struct ms_cache_config *cc)
{
	ms_cache_config_default(cc);
	cc->arena.size = c->cache_size;
	cc->arena.huge = c->hugepages;
	cc->arena.numa_node = c->numa_node;
	cc->arena.gpu_pci = c->gpu_pci[0] ? c->gpu_pci : NULL;
	cc->arena.lock = c->lock;
	cc->io.engine = c->io_engine;
	cc->io.direct = c->io_direct;
	cc->io.threads = c->io_threads;
	cc->io.queue_depth = c->io_queue_depth;
	cc->io.request_size = c->io_request_size;
	cc->io.prefetch_inflight = c->io_prefetch_inflight;
	cc->io.sqpoll = c->io_sqpoll;
	cc->staging = c->io_staging;
	cc->acquire_timeout_ms = c->acquire_timeout_ms;
	cc->max_prefetch_bytes = c->prefetch_max_inflight;
	cc->pin = c->pin[0] ? c->pin : NULL;
	cc->pin_top = c->pin_top;
}
