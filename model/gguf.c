/*
 * gguf.c - the GGUF reader: header, metadata and tensor infos of one file.
 *
 * Hostile files are the normal case for a parser. The reader tracks the bytes
 * that remain in the file and refuses, with the field's name and value, any
 * count, length, dimension, product, padding or offset that does not fit -
 * the class of bug behind the GGUF CVEs of 2024-2026 (tensor-size integer
 * overflow, GGML_PAD wrap, offset + size past end of file, zero dimensions,
 * huge alignment). Nothing here aborts; nothing reads past what was checked.
 *
 * Only metadata is read: a 134 GB model costs a few MB of reads (the
 * tokenizer arrays are most of it), through a 1 MiB pread buffer. String
 * arrays (the vocabulary) are validated and skipped, not kept: the daemon
 * needs shapes and offsets, not tokens. Numeric arrays up to
 * MS_GGUF_ARRAY_LOAD_MAX bytes are kept as read.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 * n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims,
 * u64 ne[n_dims], u32 type, u64 offset), padding to general.alignment, data.
 * A string is u64 length + bytes (no NUL); an array is u32 element type, u64
 * count, elements. v1 (32-bit counts) predates every model we care about and
 * is refused; v3 only added big-endian files, which we also refuse by name.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moestream/model.h"

/* The reader's buffer. Its first fill takes RD_FIRST bytes, each later one
 * twice the last, up to RD_BUF: a header and KVs are often a few KB (a
 * test model's 7 KB), and reading a whole MiB for them cost ~0.1 ms a file
 * (t_byteflip's 20,000 opens under ASan: 107 s, where every large buffer
 * is faulted in afresh), while a tokenizer's MBs still take a few reads. */
#define RD_BUF (1u << 20)
#define RD_FIRST (64u << 10)

/* ---- a bounds-checked, buffered reader over pread -------------------------- */

struct rd {
	int fd;
	const char *name;
	uint64_t size;      /* file size: the hard limit for every read */
	uint64_t pos;       /* next byte to consume */
	uint8_t *buf;
	uint64_t buf_start; /* file offset of buf[0] */
	size_t buf_len;
	size_t fill;        /* the next fill's size (RD_FIRST .. RD_BUF) */
	uint64_t bytes_read;
	struct ms_err *err;
};

static uint64_t rd_left(const struct rd *r)
{
	return r->size - r->pos;
}

static int rd_need(struct rd *r, uint64_t n, const char *what)
{
	if (n > rd_left(r))
		return ms_err_set(r->err, -EINVAL,
				  "%s: truncated: %s needs %llu bytes at offset "
				  "%llu but the file ends at %llu",
				  r->name, what, (unsigned long long)n,
				  (unsigned long long)r->pos,
				  (unsigned long long)r->size);
	return 0;
}

/* Refills the buffer so that it holds file bytes starting at r->pos. */
static int rd_fill(struct rd *r)
{
	uint64_t want = rd_left(r) < r->fill ? rd_left(r) : r->fill;
	size_t got = 0;
	if (r->fill < RD_BUF)
		r->fill *= 2;

	while (got < want) {
		ssize_t n = pread(r->fd, r->buf + got, want - got,
				  (off_t)(r->pos + got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ms_err_set(r->err, -errno,
					  "%s: read at offset %llu: %s", r->name,
					  (unsigned long long)(r->pos + got),
					  strerror(errno));
		}
		if (n == 0)
			return ms_err_set(r->err, -EIO,
					  "%s: file shrank while reading (offset "
					  "%llu of %llu)",
					  r->name,
					  (unsigned long long)(r->pos + got),
					  (unsigned long long)r->size);
		got += (size_t)n;
	}
	r->buf_start = r->pos;
	r->buf_len = got;
	r->bytes_read += got;
	return 0;
}

/* Copies n bytes (already checked by the caller or here) to dst. */
static int rd_bytes(struct rd *r, void *dst, uint64_t n, const char *what)
{
	uint8_t *d = dst;
	int rc = rd_need(r, n, what);
	if (rc)
		return rc;
	while (n) {
		if (r->pos < r->buf_start ||
		    r->pos >= r->buf_start + r->buf_len) {
			if ((rc = rd_fill(r)))
				return rc;
		}
		uint64_t off = r->pos - r->buf_start;
		uint64_t take = r->buf_len - off;
		if (take > n)
			take = n;
		memcpy(d, r->buf + off, take);
		d += take;
		n -= take;
		r->pos += take;
	}
	return 0;
}

static int rd_skip(struct rd *r, uint64_t n, const char *what)
{
	int rc = rd_need(r, n, what);
	if (rc)
		return rc;
	r->pos += n;
	return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what)
{
	uint8_t b[4];
	int rc = rd_bytes(r, b, 4, what);
	if (!rc)
		*v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
		     (uint32_t)b[3] << 24;
	return rc;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what)
{
	uint8_t b[8];
	int rc = rd_bytes(r, b, 8, what);
	if (!rc) {
		uint64_t x = 0;
		for (int i = 7; i >= 0; i--)
			x = x << 8 | b[i];
		*v = x;
	}
	return rc;
}

/* Reads a GGUF string of at most `max` bytes into a fresh NUL-terminated
 * buffer. `what` names the field for messages. */
static int rd_string(struct rd *r, uint64_t max, char **out, uint64_t *len,
		     const char *what)
{
	uint64_t n;
	int rc = rd_u64(r, &n, what);
	if (rc)
		return rc;
	if (n > max)
		return ms_err_set(r->err, -EINVAL,
				  "%s: %s length %llu exceeds the cap of %llu "
				  "bytes (offset %llu)",
				  r->name, what, (unsigned long long)n,
				  (unsigned long long)max,
				  (unsigned long long)(r->pos - 8));
	if ((rc = rd_need(r, n, what)))
		return rc;
	char *s = malloc(n + 1);
	if (!s)
		return ms_err_set(r->err, -ENOMEM, "%s: out of memory for %s",
				  r->name, what);
	if ((rc = rd_bytes(r, s, n, what))) {
		free(s);
		return rc;
	}
	s[n] = '\0';
	*out = s;
	*len = n;
	return 0;
}

/* ---- lookup tables ----------------------------------------------------------- */

/* Open addressing over indices + 1 (0 = empty), FNV-1a over the name. */
struct ms_gguf_index {
	uint64_t *kv_slot;
	uint64_t kv_mask;
	uint64_t *t_slot;
	uint64_t t_mask;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	while (*s)
		h = (h ^ (uint8_t)*s++) * 0x100000001b3ull;
	return h;
}

static int table_alloc(uint64_t n, uint64_t **slot, uint64_t *mask)
{
	uint64_t cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	*slot = calloc(cap, sizeof(**slot));
	if (!*slot)
		return -ENOMEM;
	*mask = cap - 1;
	return 0;
}

static const char *kv_name(const struct ms_gguf *g, uint64_t i)
{
	return g->kv[i].key;
}

static const char *tensor_name(const struct ms_gguf *g, uint64_t i)
{
	return g->tensors[i].name;
}

/* Finds `name`; on a miss with `insert` != UINT64_MAX, stores that index in
 * the empty slot found. Returns the index found or -1. */
static int64_t table_probe(const struct ms_gguf *g, uint64_t *slot,
			   uint64_t mask,
			   const char *(*nm)(const struct ms_gguf *, uint64_t),
			   const char *name, uint64_t insert)
{
	for (uint64_t h = hash_str(name) & mask;; h = (h + 1) & mask) {
		if (!slot[h]) {
			if (insert != UINT64_MAX)
				slot[h] = insert + 1;
			return -1;
		}
		if (!strcmp(nm(g, slot[h] - 1), name))
			return (int64_t)(slot[h] - 1);
	}
}

int64_t ms_gguf_find_key(const struct ms_gguf *g, const char *key)
{
	if (!g || !g->index || !key)
		return -1;
	return table_probe(g, g->index->kv_slot, g->index->kv_mask, kv_name,
			   key, UINT64_MAX);
}

int64_t ms_gguf_find_tensor(const struct ms_gguf *g, const char *name)
{
	if (!g || !g->index || !name)
		return -1;
	return table_probe(g, g->index->t_slot, g->index->t_mask, tensor_name,
			   name, UINT64_MAX);
}

/* ---- value types --------------------------------------------------------------- */

static const struct {
	const char *name;
	uint32_t size; /* bytes of a scalar; 0 for string and array */
} vtypes[MS_GGUF_VTYPE_COUNT] = {
	[MS_GGUF_U8] = { "u8", 1 },       [MS_GGUF_I8] = { "i8", 1 },
	[MS_GGUF_U16] = { "u16", 2 },     [MS_GGUF_I16] = { "i16", 2 },
	[MS_GGUF_U32] = { "u32", 4 },     [MS_GGUF_I32] = { "i32", 4 },
	[MS_GGUF_F32] = { "f32", 4 },     [MS_GGUF_BOOL] = { "bool", 1 },
	[MS_GGUF_STRING] = { "string", 0 }, [MS_GGUF_ARRAY] = { "array", 0 },
	[MS_GGUF_U64] = { "u64", 8 },     [MS_GGUF_I64] = { "i64", 8 },
	[MS_GGUF_F64] = { "f64", 8 },
};

const char *ms_gguf_vtype_name(uint32_t t)
{
	return t < MS_GGUF_VTYPE_COUNT ? vtypes[t].name : "invalid";
}

static uint64_t le_load(const uint8_t *b, uint32_t size)
{
	uint64_t x = 0;
	for (uint32_t i = size; i-- > 0;)
		x = x << 8 | b[i];
	return x;
}

/* Decodes a little-endian scalar of type t into kv->v. */
static void kv_set_scalar(struct ms_gguf_kv *kv, uint32_t t, const uint8_t *b)
{
	uint64_t x = le_load(b, vtypes[t].size);
	switch (t) {
	case MS_GGUF_U8: case MS_GGUF_U16: case MS_GGUF_U32: case MS_GGUF_U64:
		kv->v.u = x;
		break;
	case MS_GGUF_I8: kv->v.i = (int8_t)x; break;
	case MS_GGUF_I16: kv->v.i = (int16_t)x; break;
	case MS_GGUF_I32: kv->v.i = (int32_t)x; break;
	case MS_GGUF_I64: kv->v.i = (int64_t)x; break;
	case MS_GGUF_F32: {
		uint32_t u = (uint32_t)x;
		float f;
		memcpy(&f, &u, 4);
		kv->v.f = f;
		break;
	}
	case MS_GGUF_F64: memcpy(&kv->v.f, &x, 8); break;
	case MS_GGUF_BOOL: kv->v.b = x != 0; break;
	}
}

static int read_array(struct rd *r, struct ms_gguf_kv *kv)
{
	uint32_t et;
	uint64_t n;
	int rc;

	if ((rc = rd_u32(r, &et, "array element type")))
		return rc;
	if (et >= MS_GGUF_VTYPE_COUNT || et == MS_GGUF_ARRAY)
		return ms_err_set(r->err, -EINVAL,
				  "%s: key '%s': array element type %u is %s",
				  r->name, kv->key, et,
				  et == MS_GGUF_ARRAY ? "a nested array (not allowed)"
						      : "not a GGUF value type");
	if ((rc = rd_u64(r, &n, "array count")))
		return rc;
	if (n > MS_GGUF_MAX_ARRAY)
		return ms_err_set(r->err, -EINVAL,
				  "%s: key '%s': array of %llu elements exceeds "
				  "the cap of %llu",
				  r->name, kv->key, (unsigned long long)n,
				  (unsigned long long)MS_GGUF_MAX_ARRAY);
	kv->arr_type = et;
	kv->arr_n = n;
	kv->arr_file_offset = r->pos;

	if (et == MS_GGUF_STRING) {
		/* Each element is at least its 8-byte length. */
		uint64_t min;
		if (ms_mul_overflow_u64(n, 8, &min) || min > rd_left(r))
			return ms_err_set(r->err, -EINVAL,
					  "%s: key '%s': array of %llu strings "
					  "cannot fit in the %llu bytes left",
					  r->name, kv->key, (unsigned long long)n,
					  (unsigned long long)rd_left(r));
		for (uint64_t i = 0; i < n; i++) {
			uint64_t len;
			if ((rc = rd_u64(r, &len, "array string length")))
				return rc;
			if (len > MS_GGUF_MAX_STRING)
				return ms_err_set(r->err, -EINVAL,
						  "%s: key '%s': string %llu of "
						  "the array has length %llu, over "
						  "the cap of %u",
						  r->name, kv->key,
						  (unsigned long long)i,
						  (unsigned long long)len,
						  MS_GGUF_MAX_STRING);
			if ((rc = rd_skip(r, len, "array string")))
				return rc;
		}
		kv->arr_bytes = r->pos - kv->arr_file_offset;
		return 0;
	}

	uint64_t bytes;
	if (ms_mul_overflow_u64(n, vtypes[et].size, &bytes) ||
	    bytes > rd_left(r))
		return ms_err_set(r->err, -EINVAL,
				  "%s: key '%s': array of %llu %s (%s bytes) "
				  "does not fit in the %llu bytes left",
				  r->name, kv->key, (unsigned long long)n,
				  vtypes[et].name, "overflowing or too many",
				  (unsigned long long)rd_left(r));
	kv->arr_bytes = bytes;
	if (bytes > MS_GGUF_ARRAY_LOAD_MAX)
		return rd_skip(r, bytes, "array data");

	uint8_t *data = malloc(bytes ? bytes : 1);
	if (!data)
		return ms_err_set(r->err, -ENOMEM, "%s: out of memory", r->name);
	if ((rc = rd_bytes(r, data, bytes, "array data"))) {
		free(data);
		return rc;
	}
	kv->arr_data = data;
	if (et == MS_GGUF_BOOL)
		for (uint64_t i = 0; i < n; i++)
			if (data[i] > 1)
				return ms_err_set(r->err, -EINVAL,
						  "%s: key '%s': bool element %llu "
						  "is %u, not 0 or 1",
						  r->name, kv->key,
						  (unsigned long long)i, data[i]);
	return 0;
}

static int read_kv(struct ms_gguf *g, struct rd *r, uint64_t i)
{
	struct ms_gguf_kv *kv = &g->kv[i];
	char *key;
	uint64_t key_len;
	uint32_t t;
	int rc;

	if ((rc = rd_string(r, MS_GGUF_MAX_KEY, &key, &key_len, "metadata key")))
		return rc;
	kv->key = key;
	if (key_len == 0)
		return ms_err_set(r->err, -EINVAL, "%s: metadata key %llu is empty",
				  r->name, (unsigned long long)i);
	if (strlen(key) != key_len)
		return ms_err_set(r->err, -EINVAL,
				  "%s: metadata key %llu ('%s...') holds a NUL "
				  "byte",
				  r->name, (unsigned long long)i, key);
	if (table_probe(g, g->index->kv_slot, g->index->kv_mask, kv_name, key,
			i) >= 0)
		return ms_err_set(r->err, -EINVAL,
				  "%s: metadata key '%s' appears twice", r->name,
				  key);
	if ((rc = rd_u32(r, &t, "metadata value type")))
		return rc;
	if (t >= MS_GGUF_VTYPE_COUNT)
		return ms_err_set(r->err, -EINVAL,
				  "%s: key '%s': value type %u is not a GGUF type "
				  "(0..%d)",
				  r->name, key, t, MS_GGUF_VTYPE_COUNT - 1);
	kv->type = t;

	if (t == MS_GGUF_STRING) {
		char *s;
		if ((rc = rd_string(r, MS_GGUF_MAX_STRING, &s, &kv->str_len,
				    "string value")))
			return rc;
		kv->str = s;
		return 0;
	}
	if (t == MS_GGUF_ARRAY)
		return read_array(r, kv);

	uint8_t b[8];
	if ((rc = rd_bytes(r, b, vtypes[t].size, "metadata value")))
		return rc;
	if (t == MS_GGUF_BOOL && b[0] > 1)
		return ms_err_set(r->err, -EINVAL,
				  "%s: key '%s': bool value is %u, not 0 or 1",
				  r->name, key, b[0]);
	kv_set_scalar(kv, t, b);
	return 0;
}

static int read_tensor_info(struct ms_gguf *g, struct rd *r, uint64_t i)
{
	struct ms_gguf_tensor *ti = &g->tensors[i];
	char *name;
	uint64_t len;
	int rc;

	if ((rc = rd_string(r, MS_GGUF_MAX_NAME, &name, &len, "tensor name")))
		return rc;
	memcpy(ti->name, name, len + 1);
	free(name);
	if (len == 0)
		return ms_err_set(r->err, -EINVAL, "%s: tensor %llu has an empty name",
				  r->name, (unsigned long long)i);
	if (strlen(ti->name) != len)
		return ms_err_set(r->err, -EINVAL,
				  "%s: tensor %llu's name ('%s...') holds a NUL "
				  "byte",
				  r->name, (unsigned long long)i, ti->name);
	if (table_probe(g, g->index->t_slot, g->index->t_mask, tensor_name,
			ti->name, i) >= 0)
		return ms_err_set(r->err, -EINVAL, "%s: tensor '%s' appears twice",
				  r->name, ti->name);

	if ((rc = rd_u32(r, &ti->n_dims, "tensor n_dims")))
		return rc;
	if (ti->n_dims < 1 || ti->n_dims > MS_GGUF_MAX_DIMS)
		return ms_err_set(r->err, -EINVAL,
				  "%s: tensor '%s': n_dims %u is not in 1..%d",
				  r->name, ti->name, ti->n_dims,
				  MS_GGUF_MAX_DIMS);
	for (int d = 0; d < MS_GGUF_MAX_DIMS; d++)
		ti->ne[d] = 1;
	for (uint32_t d = 0; d < ti->n_dims; d++) {
		uint64_t ne;
		if ((rc = rd_u64(r, &ne, "tensor dimension")))
			return rc;
		if (ne == 0 || ne > (uint64_t)INT64_MAX)
			return ms_err_set(r->err, -EINVAL,
					  "%s: tensor '%s': ne[%u] = %llu is not "
					  "in 1..INT64_MAX",
					  r->name, ti->name, d,
					  (unsigned long long)ne);
		ti->ne[d] = (int64_t)ne;
	}
	if ((rc = rd_u32(r, &ti->type, "tensor type")))
		return rc;
	if (!ms_type_get(ti->type))
		return ms_err_set(r->err, -EINVAL,
				  "%s: tensor '%s': type id %u is %s", r->name,
				  ti->name, ti->type, ms_type_name(ti->type));
	if ((rc = rd_u64(r, &ti->offset, "tensor offset")))
		return rc;

	/* size = row_size(ne0) * ne1 * ne2 * ne3, every step checked; the
	 * element count itself must fit in int64 as ggml requires. */
	int64_t nel = ti->ne[0];
	uint64_t size;
	for (int d = 1; d < MS_GGUF_MAX_DIMS; d++)
		if (ms_mul_overflow_i64(nel, ti->ne[d], &nel))
			return ms_err_set(r->err, -EOVERFLOW,
					  "%s: tensor '%s': element count "
					  "%lld x %lld x %lld x %lld overflows",
					  r->name, ti->name,
					  (long long)ti->ne[0],
					  (long long)ti->ne[1],
					  (long long)ti->ne[2],
					  (long long)ti->ne[3]);
	struct ms_err sub = { 0 };
	if ((rc = ms_type_row_size(ti->type, ti->ne[0], &size, &sub)))
		return ms_err_set(r->err, rc, "%s: tensor '%s': %s", r->name,
				  ti->name, sub.msg);
	for (int d = 1; d < MS_GGUF_MAX_DIMS; d++)
		if (ms_mul_overflow_u64(size, (uint64_t)ti->ne[d], &size))
			return ms_err_set(r->err, -EOVERFLOW,
					  "%s: tensor '%s': byte size overflows",
					  r->name, ti->name);
	ti->size = size;
	return 0;
}

/* Every tensor's bytes lie inside the file, at an aligned offset, and no two
 * tensors overlap. */
static int cmp_off(const void *a, const void *b, void *arg)
{
	const struct ms_gguf *g = arg;
	uint64_t x = g->tensors[*(const uint64_t *)a].offset;
	uint64_t y = g->tensors[*(const uint64_t *)b].offset;
	return x < y ? -1 : x > y;
}

static int check_layout(struct ms_gguf *g, struct ms_err *err)
{
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		struct ms_gguf_tensor *ti = &g->tensors[i];
		uint64_t end;
		if (ti->offset % g->alignment)
			return ms_err_set(err, -EINVAL,
					  "%s: tensor '%s': offset %llu is not a "
					  "multiple of the alignment %u",
					  g->path, ti->name,
					  (unsigned long long)ti->offset,
					  g->alignment);
		if (ms_add_overflow_u64(g->data_offset, ti->offset,
					&ti->file_offset) ||
		    ms_add_overflow_u64(ti->file_offset, ti->size, &end) ||
		    end > g->file_size)
			return ms_err_set(err, -EINVAL,
					  "%s: tensor '%s': offset %llu + size "
					  "%llu lies past the end of the file "
					  "(data at %llu, file %llu bytes)",
					  g->path, ti->name,
					  (unsigned long long)ti->offset,
					  (unsigned long long)ti->size,
					  (unsigned long long)g->data_offset,
					  (unsigned long long)g->file_size);
	}
	if (g->n_tensors < 2)
		return 0;
	uint64_t *ord = malloc(g->n_tensors * sizeof(*ord));
	if (!ord)
		return ms_err_set(err, -ENOMEM, "%s: out of memory", g->path);
	for (uint64_t i = 0; i < g->n_tensors; i++)
		ord[i] = i;
	qsort_r(ord, g->n_tensors, sizeof(*ord), cmp_off, g);
	int rc = 0;
	for (uint64_t i = 1; i < g->n_tensors && !rc; i++) {
		const struct ms_gguf_tensor *a = &g->tensors[ord[i - 1]];
		const struct ms_gguf_tensor *b = &g->tensors[ord[i]];
		if (a->offset + a->size > b->offset)
			rc = ms_err_set(err, -EINVAL,
					"%s: tensors '%s' (offset %llu, %llu "
					"bytes) and '%s' (offset %llu) overlap",
					g->path, a->name,
					(unsigned long long)a->offset,
					(unsigned long long)a->size, b->name,
					(unsigned long long)b->offset);
	}
	free(ord);
	return rc;
}

static int parse(struct ms_gguf *g, struct rd *r)
{
	char magic[4];
	uint32_t ver;
	int rc;

	if (r->size < 4 || (rc = rd_bytes(r, magic, 4, "magic")))
		return ms_err_set(r->err, -EINVAL,
				  "%s: not a GGUF file (%llu bytes, too short "
				  "for a header)",
				  r->name, (unsigned long long)r->size);
	if (memcmp(magic, MS_GGUF_MAGIC, 4))
		return ms_err_set(r->err, -EINVAL,
				  "%s: not a GGUF file (magic %02x %02x %02x %02x, "
				  "expected \"GGUF\")",
				  r->name, (uint8_t)magic[0], (uint8_t)magic[1],
				  (uint8_t)magic[2], (uint8_t)magic[3]);
	if ((rc = rd_u32(r, &ver, "version")))
		return rc;
	if (ver == 0x02000000 || ver == 0x03000000)
		return ms_err_set(r->err, -EPROTONOSUPPORT,
				  "%s: a big-endian GGUF (version %u read "
				  "byte-swapped); only little-endian files are "
				  "supported",
				  r->name, __builtin_bswap32(ver));
	if (ver != 2 && ver != 3)
		return ms_err_set(r->err, -EPROTONOSUPPORT,
				  "%s: GGUF version %u is not supported (v2 and v3 "
				  "are%s)",
				  r->name, ver,
				  ver == 1 ? "; re-convert this old file" : "");
	g->version = ver;

	uint64_t n_tensors, n_kv;
	if ((rc = rd_u64(r, &n_tensors, "n_tensors")) ||
	    (rc = rd_u64(r, &n_kv, "n_kv")))
		return rc;
	/* Smallest KV: 8-byte length, 1-byte key, 4-byte type, 1-byte value.
	 * Smallest tensor info: 8 + 1 + 4 + 8 + 4 + 8. */
	if (n_kv > MS_GGUF_MAX_KV || n_kv * 14 > rd_left(r))
		return ms_err_set(r->err, -EINVAL,
				  "%s: n_kv = %llu is more than the file can hold "
				  "(cap %u)",
				  r->name, (unsigned long long)n_kv,
				  MS_GGUF_MAX_KV);
	if (n_tensors > MS_GGUF_MAX_TENSORS || n_tensors * 33 > rd_left(r))
		return ms_err_set(r->err, -EINVAL,
				  "%s: n_tensors = %llu is more than the file can "
				  "hold (cap %u)",
				  r->name, (unsigned long long)n_tensors,
				  MS_GGUF_MAX_TENSORS);

	g->kv = calloc(n_kv ? n_kv : 1, sizeof(*g->kv));
	g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
	g->index = calloc(1, sizeof(*g->index));
	if (!g->kv || !g->tensors || !g->index ||
	    table_alloc(n_kv, &g->index->kv_slot, &g->index->kv_mask) ||
	    table_alloc(n_tensors, &g->index->t_slot, &g->index->t_mask))
		return ms_err_set(r->err, -ENOMEM, "%s: out of memory", r->name);

	for (uint64_t i = 0; i < n_kv; i++) {
		g->n_kv = i + 1; /* so that free() sees what was allocated */
		if ((rc = read_kv(g, r, i)))
			return rc;
	}

	g->alignment = MS_GGUF_DEFAULT_ALIGNMENT;
	int64_t ai = ms_gguf_find_key(g, "general.alignment");
	if (ai >= 0) {
		const struct ms_gguf_kv *kv = &g->kv[ai];
		if (kv->type != MS_GGUF_U32)
			return ms_err_set(r->err, -EINVAL,
					  "%s: general.alignment has type %s, "
					  "expected u32",
					  r->name, ms_gguf_vtype_name(kv->type));
		if (!ms_is_pow2_u64(kv->v.u) || kv->v.u > MS_GGUF_MAX_ALIGNMENT)
			return ms_err_set(r->err, -EINVAL,
					  "%s: general.alignment = %llu is not a "
					  "power of two up to %u",
					  r->name, (unsigned long long)kv->v.u,
					  MS_GGUF_MAX_ALIGNMENT);
		g->alignment = (uint32_t)kv->v.u;
	}

	for (uint64_t i = 0; i < n_tensors; i++) {
		g->n_tensors = i + 1;
		if ((rc = read_tensor_info(g, r, i)))
			return rc;
	}

	g->meta_size = r->pos;
	if (ms_pad_overflow_u64(r->pos, g->alignment, &g->data_offset))
		return ms_err_set(r->err, -EOVERFLOW,
				  "%s: data offset overflows", r->name);
	if (g->n_tensors && g->data_offset > g->file_size)
		return ms_err_set(r->err, -EINVAL,
				  "%s: truncated: the data section starts at %llu "
				  "but the file ends at %llu",
				  r->name, (unsigned long long)g->data_offset,
				  (unsigned long long)g->file_size);
	return check_layout(g, r->err);
}

int ms_gguf_open_fd(struct ms_gguf **out, int fd, const char *name,
		    struct ms_err *err)
{
	struct ms_gguf *g;
	struct stat st;
	struct rd r = { 0 };
	int rc;

	*out = NULL;
	if (fstat(fd, &st))
		return ms_err_set(err, -errno, "%s: %s", name, strerror(errno));
	if (S_ISDIR(st.st_mode))
		return ms_err_set(err, -EISDIR,
				  "%s: is a directory, not a GGUF file", name);
	if (!S_ISREG(st.st_mode))
		return ms_err_set(err, -EINVAL,
				  "%s: not a regular file, cannot be a model", name);

	g = calloc(1, sizeof(*g));
	if (!g)
		return ms_err_set(err, -ENOMEM, "%s: out of memory", name);
	g->fd = -1;
	g->path = strdup(name);
	g->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (!g->path || g->fd < 0) {
		rc = ms_err_set(err, g->path ? -errno : -ENOMEM, "%s: %s", name,
				g->path ? strerror(errno) : "out of memory");
		goto err;
	}
	g->file_size = (uint64_t)st.st_size;

	r.fd = g->fd;
	r.name = g->path;
	r.size = g->file_size;
	r.err = err;
	r.buf = malloc(RD_BUF);
	r.fill = RD_FIRST;
	if (!r.buf) {
		rc = ms_err_set(err, -ENOMEM, "%s: out of memory", name);
		goto err;
	}
	rc = parse(g, &r);
	g->bytes_read = r.bytes_read;
	free(r.buf);
	if (rc)
		goto err;
	*out = g;
	return 0;
err:
	ms_gguf_free(g);
	return rc;
}

int ms_gguf_open(struct ms_gguf **out, const char *path, struct ms_err *err)
{
	*out = NULL;
	/* O_NONBLOCK: opening a FIFO (or a device) must not hang; anything but
	 * a regular file is refused after fstat, and regular files ignore it. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
	int rc = ms_gguf_open_fd(out, fd, path, err);
	close(fd);
	return rc;
}

void ms_gguf_free(struct ms_gguf *g)
{
	if (!g)
		return;
	for (uint64_t i = 0; g->kv && i < g->n_kv; i++) {
		free((void *)g->kv[i].key);
		free((void *)g->kv[i].str);
		free((void *)g->kv[i].arr_data);
	}
	free(g->kv);
	free(g->tensors);
	if (g->index) {
		free(g->index->kv_slot);
		free(g->index->t_slot);
		free(g->index);
	}
	if (g->fd >= 0)
		close(g->fd);
	free(g->path);
	free(g);
}

/* ---- typed getters --------------------------------------------------------------- */

static int find_typed(const struct ms_gguf *g, const char *key,
		      const struct ms_gguf_kv **kv)
{
	int64_t i = ms_gguf_find_key(g, key);
	if (i < 0)
		return -ENOENT;
	*kv = &g->kv[i];
	return 0;
}

static bool is_uint(uint32_t t)
{
	return t == MS_GGUF_U8 || t == MS_GGUF_U16 || t == MS_GGUF_U32 ||
	       t == MS_GGUF_U64;
}

static bool is_sint(uint32_t t)
{
	return t == MS_GGUF_I8 || t == MS_GGUF_I16 || t == MS_GGUF_I32 ||
	       t == MS_GGUF_I64;
}

static int wrong_type(const struct ms_gguf *g, const struct ms_gguf_kv *kv,
		      const char *want, struct ms_err *err)
{
	return ms_err_set(err, -EINVAL, "%s: key '%s' has type %s, expected %s",
			  g->path, kv->key, ms_gguf_vtype_name(kv->type), want);
}

int ms_gguf_get_u64(const struct ms_gguf *g, const char *key, uint64_t *out,
		    struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (is_uint(kv->type)) {
		*out = kv->v.u;
		return 0;
	}
	if (is_sint(kv->type)) {
		if (kv->v.i < 0)
			return ms_err_set(err, -EINVAL,
					  "%s: key '%s' = %lld, expected a "
					  "non-negative count",
					  g->path, key, (long long)kv->v.i);
		*out = (uint64_t)kv->v.i;
		return 0;
	}
	return wrong_type(g, kv, "an integer", err);
}

int ms_gguf_get_i64(const struct ms_gguf *g, const char *key, int64_t *out,
		    struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (is_sint(kv->type)) {
		*out = kv->v.i;
		return 0;
	}
	if (is_uint(kv->type)) {
		if (kv->v.u > (uint64_t)INT64_MAX)
			return ms_err_set(err, -EOVERFLOW,
					  "%s: key '%s' = %llu does not fit in "
					  "int64",
					  g->path, key,
					  (unsigned long long)kv->v.u);
		*out = (int64_t)kv->v.u;
		return 0;
	}
	return wrong_type(g, kv, "an integer", err);
}

int ms_gguf_get_f64(const struct ms_gguf *g, const char *key, double *out,
		    struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (kv->type == MS_GGUF_F32 || kv->type == MS_GGUF_F64)
		*out = kv->v.f;
	else if (is_uint(kv->type))
		*out = (double)kv->v.u;
	else if (is_sint(kv->type))
		*out = (double)kv->v.i;
	else
		return wrong_type(g, kv, "a number", err);
	return 0;
}

int ms_gguf_get_bool(const struct ms_gguf *g, const char *key, bool *out,
		     struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (kv->type != MS_GGUF_BOOL)
		return wrong_type(g, kv, "bool", err);
	*out = kv->v.b;
	return 0;
}

int ms_gguf_get_str(const struct ms_gguf *g, const char *key,
		    const char **out, struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (kv->type != MS_GGUF_STRING)
		return wrong_type(g, kv, "string", err);
	*out = kv->str;
	return 0;
}

/* Reads the array's bytes with one pread loop and indexes them in place:
 * each u64 length is checked against what is left, the string is moved one
 * byte left over its length field so it can be NUL-terminated. */
int ms_gguf_get_strs(const struct ms_gguf *g, const char *key,
		     struct ms_gguf_strs *out, struct ms_err *err)
{
	const struct ms_gguf_kv *kv;
	memset(out, 0, sizeof(*out));
	if (find_typed(g, key, &kv))
		return -ENOENT;
	if (kv->type != MS_GGUF_ARRAY || kv->arr_type != MS_GGUF_STRING)
		return wrong_type(g, kv, "array of strings", err);
	uint64_t n = kv->arr_n, bytes = kv->arr_bytes;
	if (bytes > g->file_size || kv->arr_file_offset > g->file_size - bytes ||
	    bytes / 8 < n)
		return ms_err_set(err, -EINVAL, "%s: key '%s': array extent is "
				  "outside the file", g->path, key);
	uint8_t *blob = malloc(bytes + 1);
	const char **str = calloc(n ? n : 1, sizeof(*str));
	uint32_t *len = calloc(n ? n : 1, sizeof(*len));
	if (!blob || !str || !len) {
		free(blob);
		free(str);
		free(len);
		return ms_err_set(err, -ENOMEM, "%s: key '%s': out of memory "
				  "for %llu bytes of strings", g->path, key,
				  (unsigned long long)bytes);
	}
	uint64_t got = 0;
	while (got < bytes) {
		ssize_t r = pread(g->fd, blob + got, bytes - got,
				  (off_t)(kv->arr_file_offset + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? -errno : -EIO;
			free(blob);
			free(str);
			free(len);
			return ms_err_set(err, e, "%s: key '%s': reading %llu "
					  "bytes at offset %llu: %s", g->path,
					  key, (unsigned long long)bytes,
					  (unsigned long long)kv->arr_file_offset,
					  r < 0 ? strerror(-e) : "file shrank");
		}
		got += (uint64_t)r;
	}
	uint64_t pos = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t l = 0;
		if (bytes - pos < 8)
			goto changed;
		for (int b = 7; b >= 0; b--)
			l = l << 8 | blob[pos + (uint64_t)b];
		if (l > MS_GGUF_MAX_STRING || l > bytes - pos - 8)
			goto changed;
		/* the string moves over the last byte of its length field */
		memmove(blob + pos + 7, blob + pos + 8, l);
		blob[pos + 7 + l] = '\0';
		str[i] = (const char *)blob + pos + 7;
		len[i] = (uint32_t)l;
		pos += 8 + l;
	}
	if (pos != bytes)
		goto changed;
	out->n = n;
	out->str = str;
	out->len = len;
	out->blob = blob;
	return 0;
changed:
	free(blob);
	free(str);
	free(len);
	return ms_err_set(err, -EINVAL, "%s: key '%s': the strings no longer "
			  "match what the header parse found (file changed?)",
			  g->path, key);
}

void ms_gguf_strs_free(struct ms_gguf_strs *s)
{
	if (!s)
		return;
	free(s->blob);
	free(s->str);
	free(s->len);
	memset(s, 0, sizeof(*s));
}
