/*
 * common.c - what every subcommand shares: number formatting and the one
 * way errors are printed. In libms_tools.a so tests can call subcommands.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moestream/kernels.h"
#include "tools.h"

const char *fmt_bytes(uint64_t b, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "kB", "MB", "GB", "TB", "PB" };
	double v = (double)b;
	int u = 0;
	while (v >= 1000.0 && u < 5) {
		v /= 1000.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)b);
	else
		snprintf(buf, len, "%.*f %s", v < 10 ? 2 : 1, v, unit[u]);
	return buf;
}

const char *fmt_count(uint64_t v, char *buf, size_t len)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
	size_t o = 0;
	for (int i = 0; i < n && o + 1 < len; i++) {
		if (i && (n - i) % 3 == 0 && o + 2 < len)
			buf[o++] = ',';
		buf[o++] = tmp[i];
	}
	buf[o] = '\0';
	return buf;
}

int tool_bad_usage(const char *usage_line)
{
	fprintf(stderr, "%s  (see --help)\n", usage_line);
	return EXIT_USAGE;
}

void tool_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "moestream %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}


int tool_parse_u32(const char *cmd, const char *opt, const char *s,
		   uint32_t *out)
{
	while (*opt == '-') /* "ctx" and "--ctx" both name --ctx */
		opt++;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || !*s || *end || *s == '-' || *s == '+' || *s == ' ' ||
	    v > UINT32_MAX) {
		tool_error(cmd, "--%s '%s' is not a whole number", opt, s);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

int tool_parse_u32_in(const char *cmd, const char *opt, const char *s,
		      uint32_t lo, uint32_t hi, uint32_t *out)
{
	if (tool_parse_u32(cmd, opt, s, out))
		return -1;
	while (*opt == '-')
		opt++;
	if (*out < lo || *out > hi) {
		tool_error(cmd, "--%s '%s': from %u to %u", opt, s, lo, hi);
		return -1;
	}
	return 0;
}

const char *tool_moe_blocks(const struct ms_model *m, char *buf, size_t len)
{
	size_t o = 0;
	buf[0] = '\0';
	for (uint32_t l = 0; l < m->n_layers && o + 1 < len; l++) {
		uint32_t e = l;
		while (e + 1 < m->n_layers &&
		       m->layers[e + 1].block == m->layers[e].block + 1)
			e++;
		int w = snprintf(buf + o, len - o, "%sblk.%u", l ? ", " : "",
				 m->layers[l].block);
		if (w > 0 && e > l)
			w += snprintf(buf + o + (size_t)w, len - o - (size_t)w,
				      "-%u", m->layers[e].block);
		if (w < 0 || (size_t)w >= len - o)
			break;
		o += (size_t)w;
		l = e;
	}
	return buf;
}

int tool_pread_full(int fd, void *buf, uint64_t n, uint64_t off)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENODATA;
		p += r;
		off += (uint64_t)r;
		n -= (uint64_t)r;
	}
	return 0;
}

int tool_write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

double tool_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void tool_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

#define SPIN_S 200e-6 /* the tail of a wait that is spun */

void tool_wait_s(double secs)
{
	double end = tool_now_s() + secs;
	if (secs > SPIN_S) {
		double s = secs - SPIN_S;
		struct timespec ts = { .tv_sec = (time_t)s,
				       .tv_nsec = (long)((s - (double)(time_t)s) * 1e9) };
		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
	while (tool_now_s() < end)
		;
}

int tool_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	if (isnan(x) || isnan(y)) /* a total order: NaN last */
		return isnan(x) - isnan(y);
	return x < y ? -1 : x > y;
}

double tool_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), tool_cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double tool_median_of(const double *v, size_t n, size_t *near)
{
	double buf[16], *s = n <= 16 ? buf : malloc(n * sizeof(*s));
	if (!s)
		return NAN;
	memcpy(s, v, n * sizeof(*s));
	double m = tool_median(s, n);
	if (s != buf)
		free(s);
	if (near) {
		size_t k = 0;
		for (size_t i = 1; i < n; i++)
			if (fabs(v[i] - m) < fabs(v[k] - m))
				k = i;
		*near = k;
	}
	return m;
}

double tool_pct(const double *v, uint64_t n, double p)
{
	if (!n)
		return 0;
	double r = ceil(p * (double)n);
	uint64_t i = r < 1 ? 0 : (uint64_t)r - 1;
	return v[i < n ? i : n - 1];
}

uint64_t tool_splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void tool_fill_blocks(uint8_t *buf, uint64_t size, uint32_t type, uint64_t *s)
{
	tool_fill_blocks_scaled(buf, size, type, s, 0);
}

void tool_fill_blocks_scaled(uint8_t *buf, uint64_t size, uint32_t type,
			     uint64_t *s, int extra)
{
	for (uint64_t i = 0; i < size; i += 8) {
		uint64_t r = tool_splitmix(s);
		memcpy(buf + i, &r, size - i < 8 ? size - i : 8);
	}
	const struct ms_type_info *ti = ms_type_get(type);
	if (type == MS_TYPE_MXFP4) {
		for (uint64_t b = 0; b < size; b += ti->type_size)
			buf[b] = (uint8_t)(127 - 6 - extra - (int)(tool_splitmix(s) % 2));
		return;
	}
	const struct tool_scales *sf = tool_scales_of(type);
	if (!sf)
		return;
	for (uint64_t b = 0; b < size; b += ti->type_size)
		for (int j = 0; j < 2; j++) {
			if (sf->f16[j] < 0)
				continue;
			uint16_t h = tool_small_f16(tool_splitmix(s),
						    sf->exp + extra);
			memcpy(buf + b + sf->f16[j], &h, 2);
		}
}

bool tool_drop_caches(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = write(fd, "3", 1) == 1;
	close(fd);
	return ok;
}

int tool_parse_activations(const char *cmd, const char *s, bool *q8)
{
	if (!strcmp(s, "q8") || !strcmp(s, "f32")) {
		*q8 = !strcmp(s, "q8");
		return 0;
	}
	tool_error(cmd, "--activations '%s': expected q8 (8-bit, as llama.cpp's "
		   "CPU backend) or f32 (exact)", s);
	return -1;
}

int tool_parse_size(const char *cmd, const char *opt, const char *s,
		    uint64_t *out)
{
	if (!ms_parse_size(s, out) && *out)
		return 0;
	tool_error(cmd, "%s '%s': expected a size such as 8G or 512M", opt, s);
	return -1;
}

int tool_parse_device(const char *cmd, const char *s, bool *gpu)
{
	if (!strcmp(s, "cpu") || !strcmp(s, "gpu")) {
		*gpu = !strcmp(s, "gpu");
		return 0;
	}
	tool_error(cmd, "--device '%s': cpu or gpu", s);
	return -1;
}

int tool_gpu_usable(const char *cmd)
{
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	if (ms_gpu_list(g, MS_GPU_MAX, &err) >= 0)
		return 0;
	tool_error(cmd, "--device gpu: %s", err.msg);
	return -1;
}

int tool_parse_methods(const char *cmd, const char *opt, const char *s,
		       const char *const *names, int n, const char *choices,
		       bool *want)
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", s);
	memset(want, 0, (size_t)n * sizeof(*want));
	bool any = false;
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		int k = 0;
		while (k < n && strcmp(tok, names[k]))
			k++;
		if (k == n) {
			tool_error(cmd, "%s: '%s' is not one of %s", opt, tok, choices);
			return -EINVAL;
		}
		want[k] = any = true;
	}
	if (!any) {
		tool_error(cmd, "%s '%s': no method named", opt, s);
		return -EINVAL;
	}
	return 0;
}

int tool_parse_types(const char *cmd, const char *s, bool (*supported)(uint32_t),
		     uint32_t *out, int max, int *n)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", s);
	*n = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		int id = ms_type_from_name(t);
		if (id < 0 || !supported((uint32_t)id)) {
			tool_error(cmd, "--types: '%s' is not a type the FFN "
					"computes", t);
			return -1;
		}
		if (*n == max) {
			tool_error(cmd, "--types: too many");
			return -1;
		}
		out[(*n)++] = (uint32_t)id;
	}
	if (!*n) {
		tool_error(cmd, "--types: empty list");
		return -1;
	}
	return 0;
}

int tool_parse_seconds(const char *cmd, const char *s, double max, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || !*s || !(v > 0) || v > max) {
		tool_error(cmd, "--time '%s': expected seconds in (0, %g]", s, max);
		return -1;
	}
	*out = v;
	return 0;
}

int tool_write_text(const char *cmd, const char *path, const char *s)
{
	FILE *f = fopen(path, "w");
	bool ok = f && fprintf(f, "%s\n", s) >= 0;
	if (f && fclose(f))
		ok = false;
	if (!ok) {
		tool_error(cmd, "writing %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

static const struct tool_scales scales[] = {
	{ MS_TYPE_Q4_0, { 0, -1 }, 8 },   { MS_TYPE_Q4_1, { 0, 2 }, 8 },
	{ MS_TYPE_Q5_0, { 0, -1 }, 8 },   { MS_TYPE_Q5_1, { 0, 2 }, 8 },
	{ MS_TYPE_Q8_0, { 0, -1 }, 8 },   { MS_TYPE_Q2_K, { 80, 82 }, 8 },
	{ MS_TYPE_Q3_K, { 108, -1 }, 8 }, { MS_TYPE_Q4_K, { 0, 2 }, 10 },
	{ MS_TYPE_Q5_K, { 0, 2 }, 11 },   { MS_TYPE_Q6_K, { 208, -1 }, 12 },
	{ MS_TYPE_IQ4_NL, { 0, -1 }, 8 }, { MS_TYPE_IQ4_XS, { 0, -1 }, 12 },
};

const struct tool_scales *tool_scales_of(uint32_t type)
{
	for (size_t k = 0; k < sizeof(scales) / sizeof(scales[0]); k++)
		if (scales[k].type == type)
			return &scales[k];
	return NULL;
}

uint16_t tool_small_f16(uint64_t r, int e)
{
	int x = 15 - e - (int)(r % 3);
	uint16_t exp = (uint16_t)(x < 1 ? 1 : x); /* stay a normal f16 */
	return (uint16_t)(exp << 10 | ((r >> 8) & 0x3ff));
}

void tool_swap_f32(float *f, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &f[i], 4);
		u = __builtin_bswap32(u);
		memcpy(&f[i], &u, 4);
	}
#else
	(void)f, (void)n;
#endif
}

int tool_read_f32(const char *cmd, const char *path, uint64_t max_bytes,
		  float **out, size_t *bytes_out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		tool_error(cmd, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max_bytes ||
	    st.st_size % 4) {
		tool_error(cmd, "%s: %s", path,
			   !S_ISREG(st.st_mode) ? "not a regular file"
			   : st.st_size % 4 ? "its size is not a whole number "
					      "of f32 values"
					    : "too large");
		close(fd);
		return 1;
	}
	size_t bytes = (size_t)st.st_size;
	float *f = malloc(bytes ? bytes : 1);
	int rc = f ? tool_pread_full(fd, f, bytes, 0) : -ENOMEM;
	close(fd);
	if (rc) {
		tool_error(cmd, "%s: %s", path,
			   rc == -ENODATA ? "the file shrank while being read"
					  : strerror(-rc));
		free(f);
		return 1;
	}
	tool_swap_f32(f, bytes / 4);
	for (size_t i = 0; i < bytes / 4; i++)
		if (!isfinite(f[i])) {
			tool_error(cmd, "%s: value %zu is %g", path, i, (double)f[i]);
			free(f);
			return 1;
		}
	*out = f;
	*bytes_out = bytes;
	return 0;
}

const char *tool_one_model(const char *cmd, int argc, char **argv,
			   int optind)
{
	if (argc - optind == 1)
		return argv[optind];
	if (argc == optind)
		tool_error(cmd, "no MODEL given");
	else
		tool_error(cmd, "one MODEL at a time ('%s' is extra)",
			   argv[optind + 1]);
	return NULL;
}

int tool_read_input(const char *cmd, const char *path, size_t max, char **out,
		    size_t *len)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
	if (!f) {
		tool_error(cmd, "%s: %s", path, strerror(errno));
		return -1;
	}
	size_t cap = 1 << 16, n = 0, r;
	char *b = malloc(cap + 1);
	int rc = b ? 0 : -1;
	while (!rc && (r = fread(b + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n < cap)
			continue;
		if (cap >= max) {
			tool_error(cmd, "%s: more than %zu MiB", path, max >> 20);
			rc = -1;
			break;
		}
		char *q = realloc(b, 2 * cap + 1);
		if (!q) {
			rc = -1;
			break;
		}
		b = q;
		cap *= 2;
	}
	if (!rc && ferror(f)) {
		tool_error(cmd, "%s: read error", path);
		rc = -1;
	}
	if (f != stdin)
		fclose(f);
	if (rc) {
		if (!b)
			tool_error(cmd, "out of memory reading %s", path);
		free(b);
		return -1;
	}
	b[n] = '\0';
	*out = b;
	*len = n;
	return 0;
}
