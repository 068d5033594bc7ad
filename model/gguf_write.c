/*
 * gguf_write.c - a GGUF v3 writer for the metadata of a model.
 *
 * The writer only lays out and serialises the metadata (header, key/values,
 * tensor infos, padding); it hands out each tensor's absolute offset and the
 * caller writes the data however it likes (large sequential writes, a sparse
 * file for metadata-only tests, ...). Tensors are placed in the order they
 * are added, each at an offset padded to the alignment, which is the layout
 * ggml's own writer produces and ggml's reader insists on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moestream/model.h"

struct wtensor {
	char name[MS_GGUF_MAX_NAME + 1];
	uint32_t n_dims;
	int64_t ne[MS_GGUF_MAX_DIMS];
	uint32_t type;
	uint64_t offset; /* relative to the data section */
	uint64_t size;
};

struct ms_gguf_writer {
	uint32_t alignment;
	uint8_t *kv;          /* serialised key/values */
	size_t kv_len, kv_cap;
	uint64_t n_kv;
	char **keys;          /* for the uniqueness check */
	struct wtensor *t;
	uint32_t n_t, cap_t;
	uint64_t data_size;   /* padded end of the last tensor */
};

static int put(struct ms_gguf_writer *w, const void *p, size_t n)
{
	if (w->kv_len + n > w->kv_cap) {
		size_t cap = w->kv_cap ? w->kv_cap : 4096;
		while (cap < w->kv_len + n)
			cap *= 2;
		uint8_t *b = realloc(w->kv, cap);
		if (!b)
			return -ENOMEM;
		w->kv = b;
		w->kv_cap = cap;
	}
	memcpy(w->kv + w->kv_len, p, n);
	w->kv_len += n;
	return 0;
}

static int put_le(struct ms_gguf_writer *w, uint64_t v, unsigned size)
{
	uint8_t b[8];
	for (unsigned i = 0; i < size; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	return put(w, b, size);
}

static int put_str(struct ms_gguf_writer *w, const char *s)
{
	size_t n = strlen(s);
	int rc = put_le(w, n, 8);
	return rc ? rc : put(w, s, n);
}

static unsigned scalar_size(uint32_t t)
{
	switch (t) {
	case MS_GGUF_U8: case MS_GGUF_I8: case MS_GGUF_BOOL: return 1;
	case MS_GGUF_U16: case MS_GGUF_I16: return 2;
	case MS_GGUF_U32: case MS_GGUF_I32: case MS_GGUF_F32: return 4;
	case MS_GGUF_U64: case MS_GGUF_I64: case MS_GGUF_F64: return 8;
	default: return 0;
	}
}

int ms_gguf_writer_init(struct ms_gguf_writer **out, uint32_t alignment,
			struct ms_err *err)
{
	*out = NULL;
	if (!alignment)
		alignment = MS_GGUF_DEFAULT_ALIGNMENT;
	if (!ms_is_pow2_u64(alignment) || alignment > MS_GGUF_MAX_ALIGNMENT)
		return ms_err_set(err, -EINVAL,
				  "alignment %u is not a power of two up to %u",
				  alignment, MS_GGUF_MAX_ALIGNMENT);
	struct ms_gguf_writer *w = calloc(1, sizeof(*w));
	if (!w)
		return ms_err_set(err, -ENOMEM, "out of memory");
	w->alignment = alignment;
	if (alignment != MS_GGUF_DEFAULT_ALIGNMENT) {
		int rc = ms_gguf_writer_set_u32(w, "general.alignment",
						alignment, err);
		if (rc) {
			ms_gguf_writer_free(w);
			return rc;
		}
	}
	*out = w;
	return 0;
}

void ms_gguf_writer_free(struct ms_gguf_writer *w)
{
	if (!w)
		return;
	for (uint64_t i = 0; i < w->n_kv; i++)
		free(w->keys[i]);
	free(w->keys);
	free(w->kv);
	free(w->t);
	free(w);
}

/* Checks the key and records it; the caller then serialises type + value. */
static int add_key(struct ms_gguf_writer *w, const char *key, uint32_t type,
		   struct ms_err *err)
{
	size_t n = key ? strlen(key) : 0;
	if (n == 0 || n > MS_GGUF_MAX_KEY)
		return ms_err_set(err, -EINVAL, "metadata key of %zu bytes", n);
	for (uint64_t i = 0; i < w->n_kv; i++)
		if (!strcmp(w->keys[i], key))
			return ms_err_set(err, -EEXIST,
					  "metadata key '%s' set twice", key);
	char **keys = realloc(w->keys, (w->n_kv + 1) * sizeof(*keys));
	if (!keys)
		return ms_err_set(err, -ENOMEM, "out of memory");
	w->keys = keys;
	if (!(keys[w->n_kv] = strdup(key)))
		return ms_err_set(err, -ENOMEM, "out of memory");
	w->n_kv++;
	if (put_str(w, key) || put_le(w, type, 4))
		return ms_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

int ms_gguf_writer_set(struct ms_gguf_writer *w, const char *key,
		       uint32_t type, const void *val, struct ms_err *err)
{
	unsigned sz = scalar_size(type);
	if (!sz)
		return ms_err_set(err, -EINVAL, "key '%s': %s is not a scalar type",
				  key, ms_gguf_vtype_name(type));
	int rc = add_key(w, key, type, err);
	if (rc)
		return rc;
	uint64_t v = 0;
	memcpy(&v, val, sz); /* little-endian host: low bytes first */
	return put_le(w, v, sz) ? ms_err_set(err, -ENOMEM, "out of memory") : 0;
}

int ms_gguf_writer_set_u32(struct ms_gguf_writer *w, const char *key,
			   uint32_t v, struct ms_err *err)
{
	return ms_gguf_writer_set(w, key, MS_GGUF_U32, &v, err);
}

int ms_gguf_writer_set_f32(struct ms_gguf_writer *w, const char *key, float v,
			   struct ms_err *err)
{
	return ms_gguf_writer_set(w, key, MS_GGUF_F32, &v, err);
}

int ms_gguf_writer_set_bool(struct ms_gguf_writer *w, const char *key, bool v,
			    struct ms_err *err)
{
	uint8_t b = v;
	return ms_gguf_writer_set(w, key, MS_GGUF_BOOL, &b, err);
}

int ms_gguf_writer_set_str(struct ms_gguf_writer *w, const char *key,
			   const char *v, struct ms_err *err)
{
	int rc = add_key(w, key, MS_GGUF_STRING, err);
	if (rc)
		return rc;
	return put_str(w, v) ? ms_err_set(err, -ENOMEM, "out of memory") : 0;
}

int ms_gguf_writer_set_arr(struct ms_gguf_writer *w, const char *key,
			   uint32_t elem, uint64_t n, const void *data,
			   struct ms_err *err)
{
	unsigned sz = scalar_size(elem);
	if (!sz && elem != MS_GGUF_STRING)
		return ms_err_set(err, -EINVAL,
				  "key '%s': arrays of %s are not supported", key,
				  ms_gguf_vtype_name(elem));
	int rc = add_key(w, key, MS_GGUF_ARRAY, err);
	if (rc)
		return rc;
	if (put_le(w, elem, 4) || put_le(w, n, 8))
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (uint64_t i = 0; i < n; i++) {
		if (elem == MS_GGUF_STRING)
			rc = put_str(w, ((const char *const *)data)[i]);
		else
			rc = put(w, (const uint8_t *)data + i * sz, sz);
		if (rc)
			return ms_err_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

int ms_gguf_writer_add_tensor(struct ms_gguf_writer *w, const char *name,
			      uint32_t n_dims, const int64_t *ne, uint32_t type,
			      struct ms_err *err)
{
	size_t len = name ? strlen(name) : 0;
	if (len == 0 || len > MS_GGUF_MAX_NAME)
		return ms_err_set(err, -EINVAL,
				  "tensor name '%s' must have 1..%d bytes",
				  name ? name : "", MS_GGUF_MAX_NAME);
	if (n_dims < 1 || n_dims > MS_GGUF_MAX_DIMS)
		return ms_err_set(err, -EINVAL, "tensor '%s': n_dims %u", name,
				  n_dims);
	for (uint32_t i = 0; i < w->n_t; i++)
		if (!strcmp(w->t[i].name, name))
			return ms_err_set(err, -EEXIST, "tensor '%s' added twice",
					  name);
	struct wtensor t = { .n_dims = n_dims, .type = type };
	memcpy(t.name, name, len + 1);
	for (int d = 0; d < MS_GGUF_MAX_DIMS; d++)
		t.ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
	for (uint32_t d = 0; d < n_dims; d++)
		if (ne[d] < 1)
			return ms_err_set(err, -EINVAL, "tensor '%s': ne[%u] = %lld",
					  name, d, (long long)ne[d]);
	struct ms_err sub = { 0 };
	int rc = ms_type_row_size(type, t.ne[0], &t.size, &sub);
	if (rc)
		return ms_err_set(err, rc, "tensor '%s': %s", name, sub.msg);
	for (int d = 1; d < MS_GGUF_MAX_DIMS; d++)
		if (ms_mul_overflow_u64(t.size, (uint64_t)t.ne[d], &t.size))
			return ms_err_set(err, -EOVERFLOW,
					  "tensor '%s': size overflows", name);
	uint64_t end;
	t.offset = w->data_size;
	if (ms_add_overflow_u64(t.offset, t.size, &end) ||
	    ms_pad_overflow_u64(end, w->alignment, &end))
		return ms_err_set(err, -EOVERFLOW, "tensor '%s': offset overflows",
				  name);
	if (w->n_t == w->cap_t) {
		uint32_t cap = w->cap_t ? 2 * w->cap_t : 64;
		struct wtensor *nt = realloc(w->t, cap * sizeof(*nt));
		if (!nt)
			return ms_err_set(err, -ENOMEM, "out of memory");
		w->t = nt;
		w->cap_t = cap;
	}
	w->t[w->n_t] = t;
	w->data_size = end;
	return (int)w->n_t++;
}

static uint64_t meta_size(const struct ms_gguf_writer *w)
{
	uint64_t n = 4 + 4 + 8 + 8 + w->kv_len;
	for (uint32_t i = 0; i < w->n_t; i++)
		n += 8 + strlen(w->t[i].name) + 4 + 8ull * w->t[i].n_dims + 4 + 8;
	return n;
}

uint64_t ms_gguf_writer_data_offset(const struct ms_gguf_writer *w)
{
	uint64_t m = meta_size(w);
	return (m + w->alignment - 1) & ~(uint64_t)(w->alignment - 1);
}

uint64_t ms_gguf_writer_tensor_offset(const struct ms_gguf_writer *w,
				      uint32_t i)
{
	return i < w->n_t ? ms_gguf_writer_data_offset(w) + w->t[i].offset : 0;
}

uint64_t ms_gguf_writer_tensor_size(const struct ms_gguf_writer *w, uint32_t i)
{
	return i < w->n_t ? w->t[i].size : 0;
}

uint64_t ms_gguf_writer_file_size(const struct ms_gguf_writer *w)
{
	return ms_gguf_writer_data_offset(w) + w->data_size;
}

int ms_gguf_writer_write_meta(struct ms_gguf_writer *w, int fd,
			      struct ms_err *err)
{
	uint64_t total = ms_gguf_writer_data_offset(w);
	uint8_t *buf = calloc(1, total);
	if (!buf)
		return ms_err_set(err, -ENOMEM, "out of memory for %llu bytes",
				  (unsigned long long)total);
	uint8_t *p = buf;
#define LE(v, n)                                                               \
	do {                                                                   \
		uint64_t _v = (v);                                             \
		for (unsigned _i = 0; _i < (n); _i++)                          \
			*p++ = (uint8_t)(_v >> (8 * _i));                      \
	} while (0)
	memcpy(p, MS_GGUF_MAGIC, 4);
	p += 4;
	LE(3, 4);
	LE(w->n_t, 8);
	LE(w->n_kv, 8);
	memcpy(p, w->kv, w->kv_len);
	p += w->kv_len;
	for (uint32_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];
		size_t n = strlen(t->name);
		LE(n, 8);
		memcpy(p, t->name, n);
		p += n;
		LE(t->n_dims, 4);
		for (uint32_t d = 0; d < t->n_dims; d++)
			LE((uint64_t)t->ne[d], 8);
		LE(t->type, 4);
		LE(t->offset, 8);
	}
#undef LE
	int rc = 0;
	uint64_t off = 0;
	while (off < total) {
		ssize_t n = pwrite(fd, buf + off, total - off, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = ms_err_set(err, -errno, "writing metadata: %s",
					strerror(errno));
			break;
		}
		off += (uint64_t)n;
	}
	free(buf);
	return rc;
}
