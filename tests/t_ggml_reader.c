/*
 * t_ggml_reader.c - ms_gguf_open against ggml's own GGUF reader, on files
 * written by ggml's own writer.
 *
 * One file holds a KV of every value type (u8..f64, bool, strings: empty,
 * UTF-8, 100 000 bytes long), arrays of every numeric type (one empty, one of
 * 100 000 f32), arrays of strings (with empty strings, and an empty array),
 * and tensors of random known types with 1 to 4 dims (one whose trailing dims
 * are 1, which ggml stores with fewer dims; one with a 63-byte name), random
 * data. Values and shapes are random, a fresh seed every run (MS_SEED=...
 * replays one). Four files: general.alignment 64 or 128; the key absent or
 * 32; the first again with the version field patched to 2 (v2 and v3 share
 * the little-endian layout); and a model with no KVs but alignment.
 *
 * Each file: every KV (key, type, value; array element type, count, bytes,
 * and the bytes at arr_file_offset, strings element by element from the
 * file), every tensor (name, n_dims, ne, type, offset, size, file_offset and
 * the data bytes there against the data ggml loads), version, alignment,
 * data_offset, lookups, typed getters, and ms_gguf_open_fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

static uint64_t rng;

static uint32_t rnd(uint32_t n)
{
	return (uint32_t)(t_rand(&rng) % n);
}

static float rnd_f32(void)
{
	uint32_t b = (uint32_t)t_rand(&rng);
	if (((b >> 23) & 0xff) == 0xff)
		b &= ~(1u << 23); /* no inf/NaN: NaN != NaN */
	float f;
	memcpy(&f, &b, sizeof(f));
	return f;
}

static double rnd_f64(void)
{
	uint64_t b = t_rand(&rng);
	if (((b >> 52) & 0x7ff) == 0x7ff)
		b &= ~(1ull << 52);
	double d;
	memcpy(&d, &b, sizeof(d));
	return d;
}

static char *rnd_str(size_t len)
{
	char *s = malloc(len + 1);
	if (!s)
		t_fatal("out of memory");
	for (size_t i = 0; i < len; i++)
		s[i] = (char)(0x20 + rnd(0x7f - 0x20));
	s[len] = '\0';
	return s;
}

static const size_t vsize[MS_GGUF_VTYPE_COUNT] = {
	[MS_GGUF_U8] = 1, [MS_GGUF_I8] = 1, [MS_GGUF_U16] = 2,
	[MS_GGUF_I16] = 2, [MS_GGUF_U32] = 4, [MS_GGUF_I32] = 4,
	[MS_GGUF_F32] = 4, [MS_GGUF_BOOL] = 1, [MS_GGUF_U64] = 8,
	[MS_GGUF_I64] = 8, [MS_GGUF_F64] = 8,
};

/* What the metadata callback writes; kept for a few direct checks that prove
 * the harness itself (ggml's reader must return what ggml's writer got). */
struct vals {
	bool empty;          /* write no KVs at all */
	uint8_t u8;
	int8_t i8;
	uint16_t u16;
	int16_t i16;
	uint32_t u32;
	int32_t i32;
	float f32;
	bool b;
	uint64_t u64;
	int64_t i64;
	double f64;
	char *str;
	char *longstr;
	uint32_t arr_n[MS_GGUF_VTYPE_COUNT];
	uint8_t *arr[MS_GGUF_VTYPE_COUNT];
	uint32_t n_strs;
	char **strs;
	float *big;
	uint32_t n_big;
};

static const char *const vname[MS_GGUF_VTYPE_COUNT] = {
	"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr",
	"u64", "i64", "f64",
};

static void make_vals(struct vals *v)
{
	memset(v, 0, sizeof(*v));
	v->u8 = (uint8_t)t_rand(&rng);
	v->i8 = (int8_t)t_rand(&rng);
	v->u16 = (uint16_t)t_rand(&rng);
	v->i16 = (int16_t)t_rand(&rng);
	v->u32 = (uint32_t)t_rand(&rng);
	v->i32 = (int32_t)t_rand(&rng);
	v->f32 = rnd_f32();
	v->b = t_rand(&rng) & 1;
	v->u64 = t_rand(&rng) | (1ull << 63); /* beyond INT64_MAX */
	v->i64 = -(int64_t)(t_rand(&rng) >> 1) - 1;
	v->f64 = rnd_f64();
	v->str = rnd_str(1 + rnd(200));
	v->longstr = rnd_str(100000 + rnd(1000));
	for (int t = 0; t < MS_GGUF_VTYPE_COUNT; t++) {
		if (!vsize[t])
			continue;
		v->arr_n[t] = 1 + rnd(50);
		v->arr[t] = malloc(v->arr_n[t] * vsize[t]);
		if (!v->arr[t])
			t_fatal("out of memory");
		for (uint32_t i = 0; i < v->arr_n[t]; i++) {
			uint8_t *p = v->arr[t] + i * vsize[t];
			if (t == MS_GGUF_F32) {
				float f = rnd_f32();
				memcpy(p, &f, 4);
			} else if (t == MS_GGUF_F64) {
				double d = rnd_f64();
				memcpy(p, &d, 8);
			} else if (t == MS_GGUF_BOOL) {
				*p = t_rand(&rng) & 1;
			} else {
				uint64_t x = t_rand(&rng);
				memcpy(p, &x, vsize[t]);
			}
		}
	}
	v->n_strs = 1 + rnd(20);
	v->strs = calloc(v->n_strs, sizeof(*v->strs));
	if (!v->strs)
		t_fatal("out of memory");
	for (uint32_t i = 0; i < v->n_strs; i++)
		v->strs[i] = rnd_str(i == 0 ? 0 : rnd(3) == 0 ? 0 : rnd(80));
	v->n_big = 100000;
	v->big = malloc(v->n_big * sizeof(float));
	if (!v->big)
		t_fatal("out of memory");
	for (uint32_t i = 0; i < v->n_big; i++)
		v->big[i] = rnd_f32();
}

static void free_vals(struct vals *v)
{
	free(v->str);
	free(v->longstr);
	for (int t = 0; t < MS_GGUF_VTYPE_COUNT; t++)
		free(v->arr[t]);
	for (uint32_t i = 0; i < v->n_strs; i++)
		free(v->strs[i]);
	free(v->strs);
	free(v->big);
}

static void set_kv(const struct ggml_ref *r, struct gguf_context *g, void *user)
{
	const struct vals *v = user;
	if (v->empty)
		return;
	r->gguf_set_val_str(g, "general.architecture", "testarch");
	r->gguf_set_val_u8(g, "test.u8", v->u8);
	r->gguf_set_val_i8(g, "test.i8", v->i8);
	r->gguf_set_val_u16(g, "test.u16", v->u16);
	r->gguf_set_val_i16(g, "test.i16", v->i16);
	r->gguf_set_val_u32(g, "test.u32", v->u32);
	r->gguf_set_val_i32(g, "test.i32", v->i32);
	r->gguf_set_val_f32(g, "test.f32", v->f32);
	r->gguf_set_val_bool(g, "test.bool", v->b);
	r->gguf_set_val_str(g, "test.string", v->str);
	r->gguf_set_val_u64(g, "test.u64", v->u64);
	r->gguf_set_val_i64(g, "test.i64", v->i64);
	r->gguf_set_val_f64(g, "test.f64", v->f64);
	r->gguf_set_val_str(g, "test.empty", "");
	r->gguf_set_val_str(g, "test.long", v->longstr);
	r->gguf_set_val_str(g, "test.utf8", "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
	r->gguf_set_val_i8(g, "test.i8.min", INT8_MIN);
	r->gguf_set_val_i64(g, "test.i64.min", INT64_MIN);
	r->gguf_set_val_u64(g, "test.u64.max", UINT64_MAX);
	for (int t = 0; t < MS_GGUF_VTYPE_COUNT; t++) {
		if (!vsize[t])
			continue;
		char k[64];
		snprintf(k, sizeof(k), "test.arr.%s", vname[t]);
		r->gguf_set_arr_data(g, k, t, v->arr[t], v->arr_n[t]);
	}
	r->gguf_set_arr_data(g, "test.arr.empty", MS_GGUF_I32, v->arr[0], 0);
	r->gguf_set_arr_str(g, "test.arr.strings", (const char **)v->strs,
			    v->n_strs);
	r->gguf_set_arr_str(g, "test.arr.strings_empty", (const char **)v->strs,
			    0);
	r->gguf_set_arr_data(g, "test.arr.big", MS_GGUF_F32, v->big, v->n_big);
	r->gguf_set_val_str(g, "test.last", "end");
}

/* Random tensors of every kind of shape, of types both know. */
static struct ggml_ref_tensor *make_tensors(const struct ggml_ref *r,
					    size_t *n_out)
{
	size_t n = 10 + rnd(8);
	struct ggml_ref_tensor *t = calloc(n, sizeof(*t));
	if (!t)
		t_fatal("out of memory");
	for (size_t i = 0; i < n; i++) {
		int type;
		do {
			type = (int)rnd(MS_TYPE_COUNT);
		} while (!ms_type_get((uint32_t)type) ||
			 !ggml_ref_type_ok(r, type));
		t[i].type = type;
		t[i].n_dims = 1 + (int)(i % 4);
		int64_t blck = r->ggml_blck_size(type);
		t[i].ne[0] = blck * (1 + rnd(blck > 1 ? 3 : 300));
		for (int d = 1; d < 4; d++)
			t[i].ne[d] = d < t[i].n_dims ? 2 + rnd(4) : 1;
		snprintf(t[i].name, sizeof(t[i].name), "t%zu.%s.%dd", i,
			 r->ggml_type_name(type), t[i].n_dims);
	}
	/* Declared 4-D, trailing dims 1: ggml writes it with n_dims 2. */
	t[0].n_dims = 4;
	t[0].ne[1] = 3;
	t[0].ne[2] = 1;
	t[0].ne[3] = 1;
	snprintf(t[0].name, sizeof(t[0].name), "t0.trailing_ones");
	/* The longest name ggml allows: 63 bytes. */
	memset(t[1].name, 'n', 63);
	t[1].name[63] = '\0';
	/* An f32 vector of odd length: its size is not a multiple of 32. */
	t[2].type = 0;
	t[2].n_dims = 1;
	t[2].ne[0] = 7;
	t[2].ne[1] = t[2].ne[2] = t[2].ne[3] = 1;
	snprintf(t[2].name, sizeof(t[2].name), "t2.odd");
	*n_out = n;
	return t;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t k = pread(fd, p, n, (off_t)off);
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

static void compare_kv(const struct ggml_ref *r, const struct gguf_context *gg,
		       const struct ms_gguf *g, int fd, int64_t i)
{
	const struct ms_gguf_kv *kv = &g->kv[i];
	const char *key = r->gguf_get_key(gg, i);
	int type = r->gguf_get_kv_type(gg, i);

	T_CHECK(kv->key && !strcmp(kv->key, key), "kv %lld: key '%s', ggml "
		"'%s'", (long long)i, kv->key ? kv->key : "(null)", key);
	T_CHECK(kv->type == (uint32_t)type, "%s: type %u, ggml %d", key,
		kv->type, type);
	T_CHECK(ms_gguf_find_key(g, key) == i, "ms_gguf_find_key(%s) = %lld, "
		"want %lld", key, (long long)ms_gguf_find_key(g, key),
		(long long)i);
	if (kv->type != (uint32_t)type)
		return;

	switch (type) {
	case MS_GGUF_U8:
		T_EQ_U64(kv->v.u, r->gguf_get_val_u8(gg, i));
		break;
	case MS_GGUF_U16:
		T_EQ_U64(kv->v.u, r->gguf_get_val_u16(gg, i));
		break;
	case MS_GGUF_U32:
		T_EQ_U64(kv->v.u, r->gguf_get_val_u32(gg, i));
		break;
	case MS_GGUF_U64:
		T_EQ_U64(kv->v.u, r->gguf_get_val_u64(gg, i));
		break;
	case MS_GGUF_I8:
		T_CHECK(kv->v.i == r->gguf_get_val_i8(gg, i), "%s: %lld, ggml "
			"%d", key, (long long)kv->v.i, r->gguf_get_val_i8(gg, i));
		break;
	case MS_GGUF_I16:
		T_CHECK(kv->v.i == r->gguf_get_val_i16(gg, i), "%s: %lld, ggml "
			"%d", key, (long long)kv->v.i,
			r->gguf_get_val_i16(gg, i));
		break;
	case MS_GGUF_I32:
		T_CHECK(kv->v.i == r->gguf_get_val_i32(gg, i), "%s: %lld, ggml "
			"%d", key, (long long)kv->v.i,
			r->gguf_get_val_i32(gg, i));
		break;
	case MS_GGUF_I64:
		T_CHECK(kv->v.i == r->gguf_get_val_i64(gg, i), "%s: %lld, ggml "
			"%lld", key, (long long)kv->v.i,
			(long long)r->gguf_get_val_i64(gg, i));
		break;
	case MS_GGUF_F32:
		T_CHECK(kv->v.f == (double)r->gguf_get_val_f32(gg, i),
			"%s: %.9g, ggml %.9g", key, kv->v.f,
			(double)r->gguf_get_val_f32(gg, i));
		break;
	case MS_GGUF_F64:
		T_CHECK(kv->v.f == r->gguf_get_val_f64(gg, i),
			"%s: %.17g, ggml %.17g", key, kv->v.f,
			r->gguf_get_val_f64(gg, i));
		break;
	case MS_GGUF_BOOL:
		T_CHECK(kv->v.b == r->gguf_get_val_bool(gg, i),
			"%s: %d, ggml %d", key, kv->v.b,
			r->gguf_get_val_bool(gg, i));
		break;
	case MS_GGUF_STRING: {
		const char *s = r->gguf_get_val_str(gg, i);
		T_CHECK(kv->str && !strcmp(kv->str, s),
			"%s: string differs (%.40s... vs ggml %.40s...)", key,
			kv->str ? kv->str : "(null)", s);
		T_EQ_U64(kv->str_len, strlen(s));
		break;
	}
	case MS_GGUF_ARRAY: {
		int at = r->gguf_get_arr_type(gg, i);
		size_t n = r->gguf_get_arr_n(gg, i);
		T_CHECK(kv->arr_type == (uint32_t)at, "%s: array of %u, ggml "
			"%d", key, kv->arr_type, at);
		T_CHECK(kv->arr_n == n, "%s: %llu elements, ggml %zu", key,
			(unsigned long long)kv->arr_n, n);
		if (kv->arr_type != (uint32_t)at || kv->arr_n != n)
			break;
		if (at == MS_GGUF_STRING) {
			T_CHECK(kv->arr_data == NULL, "%s: arr_data for "
				"strings", key);
			/* Walk the strings in the file from arr_file_offset. */
			uint64_t off = kv->arr_file_offset;
			for (size_t e = 0; e < n; e++) {
				const char *want = r->gguf_get_arr_str(gg, i, e);
				uint64_t len = 0;
				if (pread_all(fd, &len, 8, off) != 0 ||
				    len != strlen(want)) {
					T_CHECK(0, "%s[%zu]: length %llu at "
						"file offset %llu, ggml %zu",
						key, e, (unsigned long long)len,
						(unsigned long long)off,
						strlen(want));
					break;
				}
				char *s = malloc(len + 1);
				if (!s)
					t_fatal("out of memory");
				T_CHECK(pread_all(fd, s, len, off + 8) == 0 &&
					!memcmp(s, want, len),
					"%s[%zu]: bytes at %llu differ", key, e,
					(unsigned long long)off + 8);
				free(s);
				off += 8 + len;
			}
			break;
		}
		if (at < 0 || at >= MS_GGUF_VTYPE_COUNT || !vsize[at]) {
			T_CHECK(0, "%s: element type %d", key, at);
			break;
		}
		size_t bytes = n * vsize[at];
		if (n == 0)
			break;
		const void *want = r->gguf_get_arr_data(gg, i);
		T_CHECK(kv->arr_data && !memcmp(kv->arr_data, want, bytes),
			"%s: arr_data %s ggml's (%zu x %s)", key,
			kv->arr_data ? "differs from" : "NULL, unlike", n,
			vname[at]);
		uint8_t *file = malloc(bytes);
		if (!file)
			t_fatal("out of memory");
		T_CHECK(pread_all(fd, file, bytes, kv->arr_file_offset) == 0 &&
			!memcmp(file, want, bytes),
			"%s: the file's bytes at arr_file_offset %llu are not "
			"the array", key,
			(unsigned long long)kv->arr_file_offset);
		free(file);
		break;
	}
	default:
		T_CHECK(0, "%s: ggml type %d", key, type);
	}
}

static void compare_tensor(const struct ggml_ref *r,
			   const struct gguf_context *gg,
			   struct ggml_context *gc, const struct ms_gguf *g,
			   int fd, int64_t i)
{
	const struct ms_gguf_tensor *t = &g->tensors[i];
	const char *name = r->gguf_get_tensor_name(gg, i);
	const int64_t *ne = r->gguf_get_tensor_ne(gg, i);
	int type = r->gguf_get_tensor_type(gg, i);
	uint64_t off = r->gguf_get_tensor_offset(gg, i);
	uint64_t size = r->gguf_get_tensor_size(gg, i);
	uint64_t doff = r->gguf_get_data_offset(gg);
	struct ggml_tensor *gt = r->ggml_get_tensor(gc, name);

	T_CHECK(!strcmp(t->name, name), "tensor %lld: name '%s', ggml '%s'",
		(long long)i, t->name, name);
	T_CHECK(ms_gguf_find_tensor(g, name) == i, "ms_gguf_find_tensor(%s) "
		"= %lld, want %lld", name,
		(long long)ms_gguf_find_tensor(g, name), (long long)i);
	T_CHECK(t->type == (uint32_t)type, "%s: type %u, ggml %d", name,
		t->type, type);
	if (!gt) {
		T_CHECK(0, "%s: ggml_get_tensor found nothing", name);
		return;
	}
	T_CHECK(t->n_dims == (uint32_t)r->ggml_n_dims(gt) &&
		t->n_dims == (uint32_t)ggml_ref_n_dims(ne),
		"%s: n_dims %u, ggml %d", name, t->n_dims, r->ggml_n_dims(gt));
	for (int d = 0; d < 4; d++)
		T_CHECK(t->ne[d] == ne[d], "%s: ne[%d] = %lld, ggml %lld", name,
			d, (long long)t->ne[d], (long long)ne[d]);
	T_EQ_U64(t->offset, off);
	T_EQ_U64(t->size, size);
	T_EQ_U64(t->size, r->ggml_nbytes(gt));
	T_EQ_U64(t->file_offset, doff + off);

	/* The data at file_offset is what ggml loaded for this tensor. */
	const void *want = r->ggml_get_data(gt);
	uint8_t *got = malloc(size ? size : 1);
	if (!got)
		t_fatal("out of memory");
	T_CHECK(want && pread_all(fd, got, size, t->file_offset) == 0 &&
		!memcmp(got, want, size),
		"%s: %llu bytes at file_offset %llu differ from ggml's data",
		name, (unsigned long long)size,
		(unsigned long long)t->file_offset);
	free(got);
}

/* Every field of `path` as ms_gguf_open and ggml see it. */
static void compare_file(const struct ggml_ref *r, const char *path,
			 const struct vals *v)
{
	printf("file %s\n", path);
	struct ggml_context *gc = NULL;
	struct gguf_init_params p = { .no_alloc = false, .ctx = &gc };
	struct gguf_context *gg = r->gguf_init_from_file(path, p);
	if (!gg || !gc) {
		T_CHECK(0, "%s: ggml cannot read the file it wrote", path);
		return;
	}
	struct ms_gguf *g = NULL;
	struct ms_err err = { 0 };
	int rc = ms_gguf_open(&g, path, &err);
	if (rc != 0 || !g) {
		T_CHECK(0, "ms_gguf_open(%s) = %d: %s", path, rc, err.msg);
		goto out;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		t_fatal("open %s: %s", path, strerror(errno));

	T_EQ_U64(g->version, r->gguf_get_version(gg));
	T_EQ_U64(g->alignment, r->gguf_get_alignment(gg));
	T_EQ_U64(g->data_offset, r->gguf_get_data_offset(gg));
	T_CHECK(g->meta_size <= g->data_offset &&
		g->data_offset - g->meta_size < g->alignment,
		"meta_size %llu, data_offset %llu, alignment %u",
		(unsigned long long)g->meta_size,
		(unsigned long long)g->data_offset, g->alignment);
	T_EQ_U64(g->n_kv, r->gguf_get_n_kv(gg));
	T_EQ_U64(g->n_tensors, r->gguf_get_n_tensors(gg));
	off_t fsize = lseek(fd, 0, SEEK_END);
	T_EQ_U64(g->file_size, fsize);
	printf("  version %u, alignment %u, data_offset %llu, %llu KVs, %llu "
	       "tensors, %llu bytes read of %llu\n", g->version, g->alignment,
	       (unsigned long long)g->data_offset,
	       (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors,
	       (unsigned long long)g->bytes_read,
	       (unsigned long long)g->file_size);

	if (g->n_kv == (uint64_t)r->gguf_get_n_kv(gg))
		for (int64_t i = 0; i < (int64_t)g->n_kv; i++)
			compare_kv(r, gg, g, fd, i);
	if (g->n_tensors == (uint64_t)r->gguf_get_n_tensors(gg))
		for (int64_t i = 0; i < (int64_t)g->n_tensors; i++)
			compare_tensor(r, gg, gc, g, fd, i);
	T_CHECK(ms_gguf_find_key(g, "test.no.such.key") == -1, "missing key "
		"found");
	T_CHECK(ms_gguf_find_tensor(g, "no.such.tensor") == -1, "missing "
		"tensor found");

	/* The typed getters, on values we know (and ggml agreed with). */
	if (!v->empty) {
		uint64_t u;
		int64_t s;
		double f;
		bool b;
		const char *str;
		T_CHECK(ms_gguf_get_u64(g, "test.u8", &u, NULL) == 0 &&
			u == v->u8, "get_u64(test.u8)");
		T_CHECK(ms_gguf_get_u64(g, "test.u16", &u, NULL) == 0 &&
			u == v->u16, "get_u64(test.u16)");
		T_CHECK(ms_gguf_get_u64(g, "test.u32", &u, NULL) == 0 &&
			u == v->u32, "get_u64(test.u32)");
		T_CHECK(ms_gguf_get_u64(g, "test.u64", &u, NULL) == 0 &&
			u == v->u64, "get_u64(test.u64)");
		T_CHECK(ms_gguf_get_u64(g, "test.u64.max", &u, NULL) == 0 &&
			u == UINT64_MAX, "get_u64(test.u64.max)");
		T_CHECK(ms_gguf_get_i64(g, "test.i8", &s, NULL) == 0 &&
			s == v->i8, "get_i64(test.i8)");
		T_CHECK(ms_gguf_get_i64(g, "test.i16", &s, NULL) == 0 &&
			s == v->i16, "get_i64(test.i16)");
		T_CHECK(ms_gguf_get_i64(g, "test.i32", &s, NULL) == 0 &&
			s == v->i32, "get_i64(test.i32)");
		T_CHECK(ms_gguf_get_i64(g, "test.i64", &s, NULL) == 0 &&
			s == v->i64, "get_i64(test.i64)");
		T_CHECK(ms_gguf_get_i64(g, "test.i64.min", &s, NULL) == 0 &&
			s == INT64_MIN, "get_i64(test.i64.min)");
		T_CHECK(ms_gguf_get_i64(g, "test.u32", &s, NULL) == 0 &&
			s == v->u32, "get_i64(test.u32)");
		struct ms_err e2 = { 0 };
		rc = ms_gguf_get_u64(g, "test.i8.min", &u, &e2);
		T_CHECK(rc == -EINVAL, "get_u64 of a negative i8 = %d", rc);
		T_CHECK(e2.msg[0] != '\0', "get_u64 of a negative i8: no "
			"message");
		/* The header promises -EINVAL for values the request cannot
		 * represent; -EOVERFLOW says the same more precisely. */
		rc = ms_gguf_get_i64(g, "test.u64.max", &s, NULL);
		T_CHECK(rc == -EINVAL || rc == -EOVERFLOW,
			"get_i64 of UINT64_MAX = %d", rc);
		rc = ms_gguf_get_u64(g, "test.string", &u, NULL);
		T_CHECK(rc == -EINVAL, "get_u64 of a string = %d", rc);
		rc = ms_gguf_get_u64(g, "test.no.such.key", &u, NULL);
		T_CHECK(rc == -ENOENT, "get_u64 of a missing key = %d", rc);
		T_CHECK(ms_gguf_get_f64(g, "test.f32", &f, NULL) == 0 &&
			f == (double)v->f32, "get_f64(test.f32)");
		T_CHECK(ms_gguf_get_f64(g, "test.f64", &f, NULL) == 0 &&
			f == v->f64, "get_f64(test.f64)");
		T_CHECK(ms_gguf_get_bool(g, "test.bool", &b, NULL) == 0 &&
			b == v->b, "get_bool(test.bool)");
		T_CHECK(ms_gguf_get_str(g, "test.string", &str, NULL) == 0 &&
			!strcmp(str, v->str), "get_str(test.string)");
		T_CHECK(ms_gguf_get_str(g, "test.empty", &str, NULL) == 0 &&
			!strcmp(str, ""), "get_str(test.empty)");
		T_CHECK(ms_gguf_get_str(g, "test.long", &str, NULL) == 0 &&
			!strcmp(str, v->longstr), "get_str(test.long)");
		rc = ms_gguf_get_str(g, "test.u32", &str, NULL);
		T_CHECK(rc == -EINVAL, "get_str of a u32 = %d", rc);
		/* And ggml read back what ggml wrote: the harness is sound. */
		int64_t k = r->gguf_find_key(gg, "test.u64");
		T_CHECK(k >= 0 && r->gguf_get_val_u64(gg, k) == v->u64,
			"ggml lost test.u64");
	}

	/* The same through a descriptor that the caller keeps. */
	struct ms_gguf *g2 = NULL;
	rc = ms_gguf_open_fd(&g2, fd, path, &err);
	T_CHECK(rc == 0 && g2, "ms_gguf_open_fd = %d: %s", rc, err.msg);
	if (rc == 0 && g2) {
		T_EQ_U64(g2->n_kv, g->n_kv);
		T_EQ_U64(g2->n_tensors, g->n_tensors);
		T_EQ_U64(g2->data_offset, g->data_offset);
		for (uint64_t i = 0; i < g->n_tensors && i < g2->n_tensors; i++)
			T_EQ_U64(g2->tensors[i].file_offset,
				 g->tensors[i].file_offset);
	}
	ms_gguf_free(g2);
	T_CHECK(lseek(fd, 0, SEEK_CUR) == fsize, "ms_gguf_open_fd moved the "
		"caller's file position");
	close(fd);
out:
	ms_gguf_free(g);
	r->gguf_free(gg);
	r->ggml_free(gc);
}

static void copy_as_v2(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (in < 0 || out < 0)
		t_fatal("copy %s -> %s: %s", from, to, strerror(errno));
	char buf[1 << 16];
	ssize_t n;
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			t_fatal("write %s: %s", to, strerror(errno));
	uint32_t v = 2, was = 0;
	if (pread(in, &was, 4, 4) != 4 || was != 3)
		t_fatal("%s: version field %u, expected 3", from, was);
	if (pwrite(out, &v, 4, 4) != 4)
		t_fatal("pwrite %s: %s", to, strerror(errno));
	close(in);
	close(out);
}

int main(void)
{
	struct ggml_ref r;
	ggml_ref_load_or_fail(&r);
	rng = t_seed();
	const char *dir = t_tmpdir();
	char path[4][PATH_MAX];

	struct vals v;
	make_vals(&v);
	size_t n_t;
	struct ggml_ref_tensor *t = make_tensors(&r, &n_t);

	/* 1: a non-default alignment. */
	snprintf(path[0], sizeof(path[0]), "%s/align.gguf", dir);
	struct ggml_ref_file f = {
		.path = path[0],
		.alignment = rnd(2) ? 64 : 128,
		.set_kv = set_kv,
		.user = &v,
		.tensors = t,
		.n_tensors = n_t,
		.rng = &rng,
	};
	if (ggml_ref_write(&r, &f) != 0)
		t_fatal("ggml could not write %s", path[0]);

	/* 2: the default alignment, the key absent or 32. */
	snprintf(path[1], sizeof(path[1]), "%s/default.gguf", dir);
	f.path = path[1];
	f.alignment = rnd(2) ? 0 : 32;
	if (ggml_ref_write(&r, &f) != 0)
		t_fatal("ggml could not write %s", path[1]);

	/* 3: file 1 as GGUF v2. */
	snprintf(path[2], sizeof(path[2]), "%s/v2.gguf", dir);
	copy_as_v2(path[0], path[2]);

	/* 4: no metadata but the alignment, tensors only. */
	struct vals none = { .empty = true };
	snprintf(path[3], sizeof(path[3]), "%s/bare.gguf", dir);
	f.path = path[3];
	f.alignment = 256;
	f.user = &none;
	if (ggml_ref_write(&r, &f) != 0)
		t_fatal("ggml could not write %s", path[3]);

	compare_file(&r, path[0], &v);
	compare_file(&r, path[1], &v);
	compare_file(&r, path[2], &v);
	compare_file(&r, path[3], &none);

	free(t);
	free_vals(&v);
	return t_done();
}
