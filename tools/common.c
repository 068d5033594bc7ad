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
#include <unistd.h>

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
