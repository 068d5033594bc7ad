/*
 * trace.c - the routing trace format (see trace.h): allocation, save, load
 * with every field validated, and the check that a trace fits a model.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trace.h"

#define HDR_FIXED (8 + 4 + 4 + 64 + 4 * 4)

int ms_trace_alloc(struct ms_trace **out, const char *arch, uint32_t n_tokens,
		   uint32_t n_layers, uint32_t n_expert, uint32_t k,
		   struct ms_err *err)
{
	*out = NULL;
	if (!n_layers || n_layers > MS_TRACE_MAX_LAYERS || !n_expert ||
	    n_expert > MS_TRACE_MAX_EXPERT || !k || k > MS_TRACE_MAX_K ||
	    k > n_expert)
		return ms_err_set(err, -EINVAL,
				  "trace shape %u layers x %u experts, k = %u is "
				  "out of range (layers 1..%d, experts 1..%d, k "
				  "1..%d and <= experts)",
				  n_layers, n_expert, k, MS_TRACE_MAX_LAYERS,
				  MS_TRACE_MAX_EXPERT, MS_TRACE_MAX_K);
	uint64_t n = (uint64_t)n_tokens * n_layers * k;
	if (n > (1ull << 34))
		return ms_err_set(err, -E2BIG, "trace of %llu choices is too big",
				  (unsigned long long)n);
	struct ms_trace *t = calloc(1, sizeof(*t));
	if (!t)
		return ms_err_set(err, -ENOMEM, "out of memory");
	snprintf(t->arch, sizeof(t->arch), "%s", arch ? arch : "");
	t->n_tokens = n_tokens;
	t->n_layers = n_layers;
	t->n_expert = n_expert;
	t->k = k;
	t->blocks = calloc(n_layers, sizeof(*t->blocks));
	t->expert = calloc(n ? n : 1, sizeof(*t->expert));
	t->weight = calloc(n ? n : 1, sizeof(*t->weight));
	if (!t->blocks || !t->expert || !t->weight) {
		ms_trace_free(t);
		return ms_err_set(err, -ENOMEM,
				  "out of memory for a trace of %llu choices",
				  (unsigned long long)n);
	}
	*out = t;
	return 0;
}

int ms_trace_alloc_for_model(struct ms_trace **out, const struct ms_model *m,
			     uint32_t n_tokens, struct ms_err *err)
{
	if (!m->n_expert || !m->n_layers_run)
		return ms_err_set(err, -EINVAL,
				  "%s is not a Mixture-of-Experts model: no "
				  "routing to trace",
				  m->shards[0]->path);
	int rc = ms_trace_alloc(out, m->arch, n_tokens, m->n_layers_run,
				m->n_expert, m->n_expert_used, err);
	if (rc)
		return rc;
	uint32_t j = 0;
	for (uint32_t l = 0; l < m->n_layers; l++)
		if (!m->layers[l].nextn)
			(*out)->blocks[j++] = m->layers[l].block;
	return 0;
}

void ms_trace_free(struct ms_trace *t)
{
	if (!t)
		return;
	free(t->blocks);
	free(t->expert);
	free(t->weight);
	free(t);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EINVAL;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int ms_trace_save(const struct ms_trace *t, const char *path,
		  struct ms_err *err)
{
	size_t hdr = HDR_FIXED + 4ull * t->n_layers;
	uint8_t *h = calloc(1, hdr);
	size_t rec = (size_t)t->k * 6;
	uint8_t *r = malloc(rec * 4096);
	int rc = 0, fd = -1;
	if (!h || !r) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	memcpy(h, MS_TRACE_MAGIC, 8);
	put32(h + 8, 1);
	put32(h + 12, (uint32_t)hdr);
	memcpy(h + 16, t->arch, strnlen(t->arch, 63));
	put32(h + 80, t->n_tokens);
	put32(h + 84, t->n_layers);
	put32(h + 88, t->n_expert);
	put32(h + 92, t->k);
	for (uint32_t l = 0; l < t->n_layers; l++)
		put32(h + HDR_FIXED + 4 * l, t->blocks[l]);

	char tmp[4200];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		rc = ms_err_set(err, -ENAMETOOLONG, "%.64s...: path too long", path);
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = ms_err_set(err, -errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if ((rc = write_all(fd, h, hdr)))
		goto werr;
	uint64_t n_rec = (uint64_t)t->n_tokens * t->n_layers, done = 0;
	while (done < n_rec) {
		size_t batch = n_rec - done < 4096 ? (size_t)(n_rec - done) : 4096;
		for (size_t i = 0; i < batch; i++) {
			const uint16_t *e = &t->expert[(done + i) * t->k];
			const float *w = &t->weight[(done + i) * t->k];
			uint8_t *p = r + i * rec;
			for (uint32_t j = 0; j < t->k; j++) {
				p[2 * j] = (uint8_t)e[j];
				p[2 * j + 1] = (uint8_t)(e[j] >> 8);
				uint32_t u;
				memcpy(&u, &w[j], 4);
				put32(p + 2 * t->k + 4 * j, u);
			}
		}
		if ((rc = write_all(fd, r, batch * rec)))
			goto werr;
		done += batch;
	}
	if (fsync(fd)) {
		rc = -errno;
		goto werr;
	}
	close(fd);
	fd = -1;
	if (rename(tmp, path)) {
		rc = ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
		unlink(tmp);
	}
	goto out;
werr:
	ms_err_set(err, rc, "writing %s: %s", tmp, strerror(-rc));
	close(fd);
	fd = -1;
	unlink(tmp);
out:
	if (fd >= 0)
		close(fd);
	free(h);
	free(r);
	return rc;
}

int ms_trace_load(struct ms_trace **out, const char *path, struct ms_err *err)
{
	uint8_t h[HDR_FIXED];
	struct stat st;
	struct ms_trace *t = NULL;
	uint8_t *r = NULL;
	int rc;

	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		rc = ms_err_set(err, -EINVAL, "%s: not a regular file", path);
		goto out;
	}
	ssize_t got = pread(fd, h, sizeof(h), 0);
	if (got < 8 || memcmp(h, MS_TRACE_MAGIC, 8)) {
		rc = ms_err_set(err, -EINVAL,
				"%s: not a moestream trace (no MSTRACE1 header)",
				path);
		goto out;
	}
	if ((size_t)got < sizeof(h)) {
		rc = ms_err_set(err, -EINVAL,
				"%s: truncated: %lld bytes, less than the %u-byte "
				"header",
				path, (long long)st.st_size, (unsigned)sizeof(h));
		goto out;
	}
	if (lseek(fd, sizeof(h), SEEK_SET) < 0) {
		rc = ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	uint32_t ver = get32(h + 8), hdr = get32(h + 12);
	uint32_t n_tokens = get32(h + 80), n_layers = get32(h + 84);
	uint32_t n_expert = get32(h + 88), k = get32(h + 92);
	char arch[64];
	memcpy(arch, h + 16, 64);
	arch[63] = '\0';
	if (ver != 1) {
		rc = ms_err_set(err, -EPROTONOSUPPORT,
				"%s: trace version %u (this build reads 1)", path, ver);
		goto out;
	}
	/* The shape first (alloc checks it again), then the size the header
	 * implies against the file's: only then allocate, so that a corrupt
	 * count cannot make us allocate gigabytes. With the shape in range
	 * (layers <= 4096, k <= 64) the products below fit in 64 bits. */
	if (!n_layers || n_layers > MS_TRACE_MAX_LAYERS || !n_expert ||
	    n_expert > MS_TRACE_MAX_EXPERT || !k || k > MS_TRACE_MAX_K ||
	    k > n_expert) {
		rc = ms_err_set(err, -EINVAL,
				"%s: trace shape %u layers x %u experts, k = %u is "
				"out of range (layers 1..%d, experts 1..%d, k 1..%d "
				"and <= experts)",
				path, n_layers, n_expert, k, MS_TRACE_MAX_LAYERS,
				MS_TRACE_MAX_EXPERT, MS_TRACE_MAX_K);
		goto out;
	}
	uint64_t rec = (uint64_t)k * 6;
	uint64_t want = HDR_FIXED + 4ull * n_layers + rec * n_tokens * n_layers;
	if (hdr != HDR_FIXED + 4ull * n_layers || (uint64_t)st.st_size != want) {
		rc = ms_err_set(err, -EINVAL,
				"%s: %llu bytes, but its header (%u tokens x %u "
				"layers x k %u, header %u bytes) means %llu%s",
				path, (unsigned long long)st.st_size, n_tokens,
				n_layers, k, hdr, (unsigned long long)want,
				(uint64_t)st.st_size < want ? " (truncated?)" : "");
		goto out;
	}
	if ((rc = ms_trace_alloc(&t, arch, n_tokens, n_layers, n_expert, k, err))) {
		ms_err_prefix(err, "%s", path);
		goto out;
	}
	uint8_t *b = malloc(4ull * n_layers);
	if (!b) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	rc = read_all(fd, b, 4ull * n_layers);
	for (uint32_t l = 0; !rc && l < n_layers; l++)
		t->blocks[l] = get32(b + 4 * l);
	free(b);
	if (rc)
		goto rerr;
	for (uint32_t l = 1; l < n_layers; l++)
		if (t->blocks[l] <= t->blocks[l - 1]) {
			rc = ms_err_set(err, -EINVAL,
					"%s: layer %u has block %u, not after %u",
					path, l, t->blocks[l], t->blocks[l - 1]);
			goto out;
		}

	uint64_t n_rec = (uint64_t)n_tokens * n_layers, done = 0;
	r = malloc(rec * 4096);
	if (!r) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	while (done < n_rec) {
		size_t batch = n_rec - done < 4096 ? (size_t)(n_rec - done) : 4096;
		if ((rc = read_all(fd, r, batch * rec)))
			goto rerr;
		for (size_t i = 0; i < batch; i++) {
			uint64_t at = done + i;
			uint16_t *e = &t->expert[at * k];
			float *w = &t->weight[at * k];
			const uint8_t *p = r + i * rec;
			for (uint32_t j = 0; j < k; j++) {
				e[j] = (uint16_t)(p[2 * j] | p[2 * j + 1] << 8);
				uint32_t u = get32(p + 2 * k + 4 * j);
				memcpy(&w[j], &u, 4);
				bool dup = false;
				for (uint32_t q = 0; q < j; q++)
					dup |= e[q] == e[j];
				if (e[j] >= n_expert || dup || !isfinite(w[j])) {
					rc = ms_err_set(
						err, -EINVAL,
						"%s: token %llu layer %llu choice "
						"%u: expert %u%s, weight %g",
						path,
						(unsigned long long)(at / n_layers),
						(unsigned long long)(at % n_layers),
						j, e[j],
						e[j] >= n_expert ? " (out of range)"
						: dup		 ? " (chosen twice)"
								 : "",
						(double)w[j]);
					goto out;
				}
			}
		}
		done += batch;
	}
	*out = t;
	t = NULL;
	rc = 0;
	goto out;
rerr:
	rc = ms_err_set(err, rc ? rc : -EIO, "%s: read failed or file shrank",
			path);
out:
	free(r);
	ms_trace_free(t);
	close(fd);
	return rc;
}

int ms_trace_check_model(const struct ms_trace *t, const struct ms_model *m,
			 struct ms_err *err)
{
	const char *p = m->shards[0]->path;
	if (t->n_expert != m->n_expert || t->k != m->n_expert_used)
		return ms_err_set(err, -EINVAL,
				  "trace is for %u experts, %u per token; %s has "
				  "%u and %u",
				  t->n_expert, t->k, p, m->n_expert,
				  m->n_expert_used);
	if (t->n_layers != m->n_layers_run)
		return ms_err_set(err, -EINVAL,
				  "trace has %u MoE layers; %s runs %u", t->n_layers,
				  p, m->n_layers_run);
	uint32_t j = 0;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		if (m->layers[l].nextn)
			continue;
		if (t->blocks[j] != m->layers[l].block)
			return ms_err_set(err, -EINVAL,
					  "trace layer %u is block %u; in %s it is "
					  "block %u",
					  j, t->blocks[j], p, m->layers[l].block);
		j++;
	}
	return 0;
}
