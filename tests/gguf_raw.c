/*
 * gguf_raw.c - the raw GGUF byte builder (see gguf_raw.h).
 *
 * Written from the GGUF spec and ggml's type table, on purpose without
 * moestream's headers: when reader and builder disagree, one of them is wrong
 * and ggml (gr_ggml_check) says which. Every field is written exactly as the
 * test set it; only the layout helpers (offsets, data size) compute anything,
 * and they do so with overflow checks so that a hostile description still
 * builds a small file.
 */
#include "gguf_raw.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, "gguf_raw: out of memory (%zu bytes)\n", n);
		abort();
	}
	return q;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = xrealloc(NULL, n);
	memcpy(p, s, n);
	return p;
}

/* ---- buffer ---------------------------------------------------------------- */

void gr_buf_init(struct gr_buf *b)
{
	memset(b, 0, sizeof(*b));
}

void gr_buf_free(struct gr_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void reserve(struct gr_buf *b, size_t n)
{
	if (b->len + n <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

void gr_put(struct gr_buf *b, const void *p, size_t n)
{
	if (!n)
		return;
	reserve(b, n);
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

void gr_zeros(struct gr_buf *b, size_t n)
{
	if (!n)
		return;
	reserve(b, n);
	memset(b->p + b->len, 0, n);
	b->len += n;
}

/* Integers go out byte by byte so the result never depends on the host. */
static void put_int(struct gr_buf *b, uint64_t v, unsigned n)
{
	uint8_t tmp[8];
	for (unsigned i = 0; i < n; i++) {
		unsigned sh = b->be ? 8 * (n - 1 - i) : 8 * i;
		tmp[i] = (uint8_t)(v >> sh);
	}
	gr_put(b, tmp, n);
}

void gr_u8(struct gr_buf *b, uint8_t v) { put_int(b, v, 1); }
void gr_u16(struct gr_buf *b, uint16_t v) { put_int(b, v, 2); }
void gr_u32(struct gr_buf *b, uint32_t v) { put_int(b, v, 4); }
void gr_u64(struct gr_buf *b, uint64_t v) { put_int(b, v, 8); }

void gr_f32(struct gr_buf *b, float v)
{
	uint32_t u;
	memcpy(&u, &v, 4);
	put_int(b, u, 4);
}

void gr_f64(struct gr_buf *b, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	put_int(b, u, 8);
}

void gr_str(struct gr_buf *b, const char *s)
{
	size_t n = strlen(s);
	gr_strn(b, n, s, n);
}

void gr_strn(struct gr_buf *b, uint64_t len_field, const void *bytes, size_t n)
{
	gr_u64(b, len_field);
	gr_put(b, bytes, n);
}

/* ---- types ------------------------------------------------------------------ */

size_t gr_vtype_size(uint32_t t)
{
	switch (t) {
	case GR_V_U8: case GR_V_I8: case GR_V_BOOL: return 1;
	case GR_V_U16: case GR_V_I16: return 2;
	case GR_V_U32: case GR_V_I32: case GR_V_F32: return 4;
	case GR_V_U64: case GR_V_I64: case GR_V_F64: return 8;
	default: return 0;
	}
}

/* ggml's type_traits (ggml.c), block size and bytes per block, by hand. */
static const struct {
	const char *name;
	uint32_t blck, size;
} types[GR_T_COUNT] = {
	[0] = {"f32", 1, 4},        [1] = {"f16", 1, 2},
	[2] = {"q4_0", 32, 18},     [3] = {"q4_1", 32, 20},
	[6] = {"q5_0", 32, 22},     [7] = {"q5_1", 32, 24},
	[8] = {"q8_0", 32, 34},     [9] = {"q8_1", 32, 36},
	[10] = {"q2_K", 256, 84},   [11] = {"q3_K", 256, 110},
	[12] = {"q4_K", 256, 144},  [13] = {"q5_K", 256, 176},
	[14] = {"q6_K", 256, 210},  [15] = {"q8_K", 256, 292},
	[16] = {"iq2_xxs", 256, 66}, [17] = {"iq2_xs", 256, 74},
	[18] = {"iq3_xxs", 256, 98}, [19] = {"iq1_s", 256, 50},
	[20] = {"iq4_nl", 32, 18},  [21] = {"iq3_s", 256, 110},
	[22] = {"iq2_s", 256, 82},  [23] = {"iq4_xs", 256, 136},
	[24] = {"i8", 1, 1},        [25] = {"i16", 1, 2},
	[26] = {"i32", 1, 4},       [27] = {"i64", 1, 8},
	[28] = {"f64", 1, 8},       [29] = {"iq1_m", 256, 56},
	[30] = {"bf16", 1, 2},      [34] = {"tq1_0", 256, 54},
	[35] = {"tq2_0", 256, 66},  [39] = {"mxfp4", 32, 17},
};

bool gr_type_traits(uint32_t type, uint32_t *blck, uint32_t *size,
		    const char **name)
{
	if (type >= GR_T_COUNT || !types[type].name)
		return false;
	if (blck)
		*blck = types[type].blck;
	if (size)
		*size = types[type].size;
	if (name)
		*name = types[type].name;
	return true;
}

bool gr_tensor_bytes(uint32_t type, uint32_t n_dims, const uint64_t *ne,
		     uint64_t *out)
{
	uint32_t blck, size;
	if (!gr_type_traits(type, &blck, &size, NULL))
		return false;
	if (n_dims < 1 || n_dims > GR_MAX_NE)
		return false;
	uint64_t rows = 1;
	for (uint32_t i = 0; i < n_dims; i++) {
		if (ne[i] < 1 || ne[i] > (uint64_t)INT64_MAX)
			return false;
		if (i && __builtin_mul_overflow(rows, ne[i], &rows))
			return false;
	}
	if (ne[0] % blck)
		return false;
	uint64_t row, total;
	if (__builtin_mul_overflow(ne[0] / blck, (uint64_t)size, &row) ||
	    __builtin_mul_overflow(row, rows, &total) || total > (uint64_t)INT64_MAX)
		return false;
	*out = total;
	return true;
}

/* ---- file description -------------------------------------------------------- */

void gr_init(struct gr_gguf *g)
{
	memset(g, 0, sizeof(*g));
	memcpy(g->magic, "GGUF", 4);
	g->version = 3;
	g->align = 32;
}

void gr_free(struct gr_gguf *g)
{
	for (size_t i = 0; i < g->n_kvs; i++) {
		free(g->kv[i].key);
		free(g->kv[i].bytes);
	}
	free(g->kv);
	free(g->t);
	memset(g, 0, sizeof(*g));
}

void gr_clone(struct gr_gguf *dst, const struct gr_gguf *src)
{
	*dst = *src;
	dst->kv = xrealloc(NULL, src->cap_kvs * sizeof(*src->kv));
	for (size_t i = 0; i < src->n_kvs; i++) {
		dst->kv[i].key = xstrdup(src->kv[i].key);
		dst->kv[i].len = src->kv[i].len;
		dst->kv[i].bytes = xrealloc(NULL, src->kv[i].len);
		memcpy(dst->kv[i].bytes, src->kv[i].bytes, src->kv[i].len);
	}
	dst->t = xrealloc(NULL, src->cap_t * sizeof(*src->t));
	if (src->nt)
		memcpy(dst->t, src->t, src->nt * sizeof(*src->t));
}

int gr_find_kv(const struct gr_gguf *g, const char *key)
{
	for (size_t i = 0; i < g->n_kvs; i++)
		if (!strcmp(g->kv[i].key, key))
			return (int)i;
	return -1;
}

bool gr_del(struct gr_gguf *g, const char *key)
{
	int i = gr_find_kv(g, key);
	if (i < 0)
		return false;
	free(g->kv[i].key);
	free(g->kv[i].bytes);
	memmove(&g->kv[i], &g->kv[i + 1], (g->n_kvs - (size_t)i - 1) * sizeof(*g->kv));
	g->n_kvs--;
	return true;
}

static void append_entry(struct gr_gguf *g, const char *label, struct gr_buf *b)
{
	if (g->n_kvs == g->cap_kvs) {
		g->cap_kvs = g->cap_kvs ? 2 * g->cap_kvs : 16;
		g->kv = xrealloc(g->kv, g->cap_kvs * sizeof(*g->kv));
	}
	g->kv[g->n_kvs].key = xstrdup(label);
	g->kv[g->n_kvs].bytes = b->p;
	g->kv[g->n_kvs].len = b->len;
	g->n_kvs++;
}

/* Replaces the entry for `key` in place, else appends; takes b's bytes. */
static void set_entry(struct gr_gguf *g, const char *key, struct gr_buf *b)
{
	int i = gr_find_kv(g, key);
	if (i < 0) {
		append_entry(g, key, b);
		return;
	}
	free(g->kv[i].bytes);
	g->kv[i].bytes = b->p;
	g->kv[i].len = b->len;
}

static void begin_entry(const struct gr_gguf *g, struct gr_buf *b,
			const char *key, uint32_t type)
{
	gr_buf_init(b);
	b->be = g->be;
	gr_str(b, key);
	gr_u32(b, type);
}

static void set_scalar(struct gr_gguf *g, const char *key, uint32_t type,
		       uint64_t bits)
{
	struct gr_buf b;
	begin_entry(g, &b, key, type);
	put_int(&b, bits, (unsigned)gr_vtype_size(type));
	set_entry(g, key, &b);
}

void gr_set_u8(struct gr_gguf *g, const char *k, uint8_t v) { set_scalar(g, k, GR_V_U8, v); }
void gr_set_i8(struct gr_gguf *g, const char *k, int8_t v) { set_scalar(g, k, GR_V_I8, (uint8_t)v); }
void gr_set_u16(struct gr_gguf *g, const char *k, uint16_t v) { set_scalar(g, k, GR_V_U16, v); }
void gr_set_i16(struct gr_gguf *g, const char *k, int16_t v) { set_scalar(g, k, GR_V_I16, (uint16_t)v); }
void gr_set_u32(struct gr_gguf *g, const char *k, uint32_t v) { set_scalar(g, k, GR_V_U32, v); }
void gr_set_i32(struct gr_gguf *g, const char *k, int32_t v) { set_scalar(g, k, GR_V_I32, (uint32_t)v); }
void gr_set_u64(struct gr_gguf *g, const char *k, uint64_t v) { set_scalar(g, k, GR_V_U64, v); }
void gr_set_i64(struct gr_gguf *g, const char *k, int64_t v) { set_scalar(g, k, GR_V_I64, (uint64_t)v); }
void gr_set_bool(struct gr_gguf *g, const char *k, uint8_t v) { set_scalar(g, k, GR_V_BOOL, v); }

void gr_set_f32(struct gr_gguf *g, const char *key, float v)
{
	uint32_t u;
	memcpy(&u, &v, 4);
	set_scalar(g, key, GR_V_F32, u);
}

void gr_set_f64(struct gr_gguf *g, const char *key, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	set_scalar(g, key, GR_V_F64, u);
}

void gr_set_str(struct gr_gguf *g, const char *key, const char *v)
{
	struct gr_buf b;
	begin_entry(g, &b, key, GR_V_STRING);
	gr_str(&b, v);
	set_entry(g, key, &b);
}

void gr_set_arr(struct gr_gguf *g, const char *key, uint32_t elem, uint64_t n,
		const void *data)
{
	struct gr_buf b;
	size_t es = gr_vtype_size(elem);
	begin_entry(g, &b, key, GR_V_ARRAY);
	gr_u32(&b, elem);
	gr_u64(&b, n);
	const uint8_t *p = data;
	for (uint64_t i = 0; es && i < n; i++) {
		uint64_t v = 0;
		for (size_t k = 0; k < es; k++)
			v |= (uint64_t)p[i * es + k] << (8 * k);
		put_int(&b, v, (unsigned)es);
	}
	set_entry(g, key, &b);
}

void gr_set_arr_str(struct gr_gguf *g, const char *key, uint64_t n,
		    const char *const *v)
{
	struct gr_buf b;
	begin_entry(g, &b, key, GR_V_ARRAY);
	gr_u32(&b, GR_V_STRING);
	gr_u64(&b, n);
	for (uint64_t i = 0; i < n; i++)
		gr_str(&b, v[i]);
	set_entry(g, key, &b);
}

void gr_set_raw_val(struct gr_gguf *g, const char *key, const void *val,
		    size_t n)
{
	struct gr_buf b;
	gr_buf_init(&b);
	b.be = g->be;
	gr_str(&b, key);
	gr_put(&b, val, n);
	set_entry(g, key, &b);
}

void gr_append_raw(struct gr_gguf *g, const char *label, const void *bytes,
		   size_t n)
{
	struct gr_buf b;
	gr_buf_init(&b);
	gr_put(&b, bytes, n);
	if (!b.p)
		b.p = xrealloc(NULL, 1);
	append_entry(g, label, &b);
}

/* ---- tensors ------------------------------------------------------------------ */

static uint64_t tensor_bytes_or0(const struct gr_tensor *t)
{
	uint64_t n;
	uint32_t nd = t->n_ne < t->n_dims ? t->n_ne : t->n_dims;
	if (nd != t->n_dims || !gr_tensor_bytes(t->type, nd, t->ne, &n))
		return 0;
	return n;
}

static uint64_t pad_up(uint64_t v, uint64_t a)
{
	if (a == 0)
		return v;
	uint64_t r = v % a;
	return r ? v + (a - r) : v;
}

/* Where the next tensor goes: after the furthest end so far, padded. */
static uint64_t next_offset(const struct gr_gguf *g, size_t upto)
{
	uint64_t end = 0;
	for (size_t i = 0; i < upto; i++) {
		uint64_t sz = tensor_bytes_or0(&g->t[i]), e;
		if (!sz || __builtin_add_overflow(g->t[i].offset, sz, &e) ||
		    e > (1ull << 28))
			continue;
		if (e > end)
			end = e;
	}
	return pad_up(end, g->align);
}

void gr_tensor_name(struct gr_tensor *t, const void *name, size_t n)
{
	if (n > sizeof(t->name))
		n = sizeof(t->name);
	memcpy(t->name, name, n);
	t->name_len = n;
	t->name_len_set = false;
}

int gr_add_tensor(struct gr_gguf *g, const char *name, uint32_t n_dims,
		  const uint64_t *ne, uint32_t type)
{
	if (g->nt == g->cap_t) {
		g->cap_t = g->cap_t ? 2 * g->cap_t : 16;
		g->t = xrealloc(g->t, g->cap_t * sizeof(*g->t));
	}
	struct gr_tensor *t = &g->t[g->nt];
	memset(t, 0, sizeof(*t));
	gr_tensor_name(t, name, strlen(name));
	t->n_dims = n_dims;
	t->n_ne = n_dims > GR_MAX_NE ? GR_MAX_NE : n_dims;
	for (uint32_t i = 0; i < t->n_ne; i++)
		t->ne[i] = ne[i];
	t->type = type;
	t->offset = next_offset(g, g->nt);
	return (int)g->nt++;
}

int gr_find_tensor(const struct gr_gguf *g, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < g->nt; i++)
		if (g->t[i].name_len == n && !memcmp(g->t[i].name, name, n))
			return (int)i;
	return -1;
}

bool gr_del_tensor(struct gr_gguf *g, const char *name)
{
	int i = gr_find_tensor(g, name);
	if (i < 0)
		return false;
	memmove(&g->t[i], &g->t[i + 1], (g->nt - (size_t)i - 1) * sizeof(*g->t));
	g->nt--;
	return true;
}

void gr_relayout(struct gr_gguf *g)
{
	for (size_t i = 0; i < g->nt; i++)
		g->t[i].offset = next_offset(g, i);
}

/* ---- serialization -------------------------------------------------------------- */

void gr_build(const struct gr_gguf *g, struct gr_buf *out,
	      struct gr_layout *lay)
{
	gr_buf_init(out);
	out->be = g->be;
	gr_put(out, g->magic, 4);
	gr_u32(out, g->version);
	gr_u64(out, g->n_tensors_set ? g->n_tensors : g->nt);
	gr_u64(out, g->n_kv_set ? g->n_kv : g->n_kvs);
	for (size_t i = 0; i < g->n_kvs; i++)
		gr_put(out, g->kv[i].bytes, g->kv[i].len);
	for (size_t i = 0; i < g->nt; i++) {
		const struct gr_tensor *t = &g->t[i];
		gr_strn(out, t->name_len_set ? t->name_len_field : t->name_len,
			t->name, t->name_len);
		gr_u32(out, t->n_dims);
		for (uint32_t d = 0; d < t->n_ne; d++)
			gr_u64(out, t->ne[d]);
		gr_u32(out, t->type);
		gr_u64(out, t->offset);
	}
	uint64_t meta = out->len;
	uint64_t data_off = g->no_data_pad ? meta : pad_up(meta, g->align);
	uint64_t data = g->data_size_set ? g->data_size : next_offset(g, g->nt);
	if (data > (1ull << 32)) {
		fprintf(stderr, "gguf_raw: data section of %llu bytes is too big "
			"for a test file\n", (unsigned long long)data);
		abort();
	}
	gr_zeros(out, data_off - meta);
	reserve(out, data);
	memset(out->p + out->len, g->fill, data);
	out->len += data;
	if (lay) {
		lay->meta_size = meta;
		lay->data_offset = data_off;
		lay->file_size = out->len;
	}
}

int gr_write(const struct gr_gguf *g, const char *path)
{
	struct gr_buf b;
	gr_build(g, &b, NULL);
	int rc = 0;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	for (size_t done = 0; done < b.len;) {
		ssize_t w = write(fd, b.p + done, b.len - done);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		done += (size_t)w;
	}
	if (close(fd) && !rc)
		rc = -errno;
out:
	gr_buf_free(&b);
	return rc;
}

/* ---- a small byte-level BPE vocabulary ------------------------------------------- */

/* GPT-2's bytes_to_unicode: the printable bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF stand for themselves, the other 68 in increasing order for
 * U+0100, U+0101, ... (space is U+0120 'Ġ'). Written out from the scheme. */
static char bl_text[256][3];

const char *gr_bytelevel(uint8_t b)
{
	if (!bl_text[0x21][0]) {
		unsigned next = 0x100;
		for (unsigned i = 0; i < 256; i++) {
			bool self = (i >= 0x21 && i <= 0x7E) ||
				    (i >= 0xA1 && i <= 0xAC) || i >= 0xAE;
			unsigned cp = self ? i : next++;
			if (cp < 0x80) {
				bl_text[i][0] = (char)cp;
				bl_text[i][1] = 0;
			} else {
				bl_text[i][0] = (char)(0xC0 | cp >> 6);
				bl_text[i][1] = (char)(0x80 | (cp & 0x3F));
				bl_text[i][2] = 0;
			}
		}
	}
	return bl_text[b];
}

void gr_vocab_default(struct gr_vocab *v)
{
	static const char *const extra[GR_VOCAB_N - 256] = {
		"bc", "ab", "aa", "\xc4\xa0" "a", "\xc4\xa0" "abc",
		"<|im_start|>", "<|endoftext|>", "<tool>",
	};
	static const int32_t extra_type[GR_VOCAB_N - 256] = {
		1, 1, 1, 1, 1, 3, 3, 4,
	};
	static const char *const merges[] = {
		"b c", "a b", "a a", "\xc4\xa0 a", "\xc4\xa0" "a bc",
	};
	memset(v, 0, sizeof(*v));
	v->model = "gpt2";
	v->pre = "qwen2";
	v->n = GR_VOCAB_N;
	for (unsigned b = 0; b < 256; b++) {
		v->tok[b] = gr_bytelevel((uint8_t)b);
		v->type[b] = 1;
	}
	for (unsigned i = 256; i < GR_VOCAB_N; i++) {
		v->tok[i] = extra[i - 256];
		v->type[i] = extra_type[i - 256];
	}
	v->write_types = true;
	v->n_merges = sizeof(merges) / sizeof(merges[0]);
	for (uint32_t i = 0; i < v->n_merges; i++)
		v->merge[i] = merges[i];
	v->write_merges = true;
	v->bos = v->eos = v->pad = GR_VOCAB_EOT;
	v->add_bos = 0;
}

void gr_vocab_build(struct gr_gguf *g, const struct gr_vocab *v)
{
	if (v->model)
		gr_set_str(g, "tokenizer.ggml.model", v->model);
	if (v->pre)
		gr_set_str(g, "tokenizer.ggml.pre", v->pre);
	gr_set_arr_str(g, "tokenizer.ggml.tokens", v->n, v->tok);
	if (v->write_types)
		gr_set_arr(g, "tokenizer.ggml.token_type", GR_V_I32, v->n, v->type);
	if (v->write_merges)
		gr_set_arr_str(g, "tokenizer.ggml.merges", v->n_merges, v->merge);
	if (v->bos >= 0)
		gr_set_u32(g, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
	if (v->eos >= 0)
		gr_set_u32(g, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
	if (v->pad >= 0)
		gr_set_u32(g, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
	if (v->add_bos >= 0)
		gr_set_bool(g, "tokenizer.ggml.add_bos_token", (uint8_t)v->add_bos);
}

/* ---- MoE models ------------------------------------------------------------------- */

void gr_moe_default(struct gr_moe *o)
{
	memset(o, 0, sizeof(*o));
	o->arch = "qwen3moe";
	o->name = "tiny-moe";
	o->version = 3;
	o->n_block = 2;
	o->n_expert = 4;
	o->n_expert_used = 2;
	o->n_embd = 32;
	o->n_ff = 4;
	o->n_ff_dense = 32;
	o->n_vocab = 8;
	o->type[0] = GR_T_Q4_0;
	o->type[1] = GR_T_Q4_0;
	o->type[2] = GR_T_F16;
	o->align = 32;
}

const char *gr_exps_name(uint32_t blk, const char *proj)
{
	static char buf[96];
	snprintf(buf, sizeof(buf), "blk.%u.ffn_%s_exps.weight", blk, proj);
	return buf;
}

const char *gr_legacy_name(uint32_t blk, const char *proj, uint32_t e)
{
	static char buf[96];
	snprintf(buf, sizeof(buf), "blk.%u.ffn_%s.%u.weight", blk, proj, e);
	return buf;
}

static void add2(struct gr_gguf *g, const char *name, uint64_t a, uint64_t b,
		 uint32_t type)
{
	uint64_t ne[2] = {a, b};
	gr_add_tensor(g, name, b ? 2 : 1, ne, type);
}

static void add3(struct gr_gguf *g, const char *name, uint64_t a, uint64_t b,
		 uint64_t c, uint32_t type)
{
	uint64_t ne[3] = {a, b, c};
	gr_add_tensor(g, name, 3, ne, type);
}

void gr_moe_build(struct gr_gguf *g, const struct gr_moe *o)
{
	char k[160];
	const char *a = o->arch;

	g->version = o->version;
	if (o->align && o->align != g->align) {
		g->align = o->align;
		gr_set_u32(g, "general.alignment", o->align);
	}
	gr_set_str(g, "general.architecture", a);
	if (o->name)
		gr_set_str(g, "general.name", o->name);
#define KEY(suffix) (snprintf(k, sizeof(k), "%s.%s", a, suffix), k)
	gr_set_u32(g, KEY("block_count"), o->n_block);
	gr_set_u32(g, KEY("context_length"), 4096);
	gr_set_u32(g, KEY("embedding_length"), (uint32_t)o->n_embd);
	gr_set_u32(g, KEY("feed_forward_length"), (uint32_t)o->n_ff_dense);
	gr_set_u32(g, KEY("attention.head_count"), 4);
	gr_set_f32(g, KEY("attention.layer_norm_rms_epsilon"), 1e-6f);
	if (o->n_expert) {
		gr_set_u32(g, KEY("expert_count"), o->n_expert);
		gr_set_u32(g, KEY("expert_used_count"), o->n_expert_used);
		gr_set_u32(g, KEY("expert_feed_forward_length"), (uint32_t)o->n_ff);
		if (o->n_shared)
			gr_set_u32(g, KEY("expert_shared_count"), o->n_shared);
		if (o->n_leading_dense)
			gr_set_u32(g, KEY("leading_dense_block_count"),
				   o->n_leading_dense);
		if (o->n_nextn)
			gr_set_u32(g, KEY("nextn_predict_layers"), o->n_nextn);
	}
#undef KEY
	gr_set_str(g, "tokenizer.ggml.model", "gpt2");
	const char *toks[8] = {"<s>", "</s>", "a", "b", "c", "ab", "bc", "abc"};
	uint64_t nv = o->n_vocab < 8 ? o->n_vocab : 8;
	gr_set_arr_str(g, "tokenizer.ggml.tokens", nv, toks);
	int32_t tt[8] = {3, 3, 1, 1, 1, 1, 1, 1};
	gr_set_arr(g, "tokenizer.ggml.token_type", GR_V_I32, nv, tt);
	gr_set_u32(g, "tokenizer.ggml.bos_token_id", 0);

	add2(g, "token_embd.weight", o->n_embd, o->n_vocab, GR_T_Q4_0);
	add2(g, "output_norm.weight", o->n_embd, 0, GR_T_F32);
	add2(g, "output.weight", o->n_embd, o->n_vocab, GR_T_Q4_0);
	for (uint32_t b = 0; b < o->n_block; b++) {
		snprintf(k, sizeof(k), "blk.%u.attn_norm.weight", b);
		add2(g, k, o->n_embd, 0, GR_T_F32);
		bool moe = o->n_expert && b >= o->n_leading_dense;
		if (!moe) {
			snprintf(k, sizeof(k), "blk.%u.ffn_gate.weight", b);
			add2(g, k, o->n_embd, o->n_ff_dense, GR_T_Q4_0);
			snprintf(k, sizeof(k), "blk.%u.ffn_up.weight", b);
			add2(g, k, o->n_embd, o->n_ff_dense, GR_T_Q4_0);
			snprintf(k, sizeof(k), "blk.%u.ffn_down.weight", b);
			add2(g, k, o->n_ff_dense, o->n_embd, GR_T_F16);
			continue;
		}
		const uint32_t *ty = (o->type_alt[0] && (b & 1)) ? o->type_alt
								 : o->type;
		snprintf(k, sizeof(k), "blk.%u.ffn_gate_inp.weight", b);
		add2(g, k, o->n_embd, o->n_expert, GR_T_F16);
		if (o->legacy) {
			for (uint32_t e = 0; e < o->n_expert; e++) {
				add2(g, gr_legacy_name(b, "gate", e), o->n_embd,
				     o->n_ff, ty[0]);
				add2(g, gr_legacy_name(b, "up", e), o->n_embd,
				     o->n_ff, ty[1]);
				add2(g, gr_legacy_name(b, "down", e), o->n_ff,
				     o->n_embd, ty[2]);
			}
		} else if (o->fused) {
			add3(g, gr_exps_name(b, "gate_up"), o->n_embd, 2 * o->n_ff,
			     o->n_expert, ty[0]);
		} else {
			add3(g, gr_exps_name(b, "gate"), o->n_embd, o->n_ff,
			     o->n_expert, ty[0]);
			add3(g, gr_exps_name(b, "up"), o->n_embd, o->n_ff,
			     o->n_expert, ty[1]);
		}
		if (!o->legacy)
			add3(g, gr_exps_name(b, "down"), o->n_ff, o->n_embd,
			     o->n_expert, ty[2]);
		if (o->n_shared) {
			snprintf(k, sizeof(k), "blk.%u.ffn_gate_shexp.weight", b);
			add2(g, k, o->n_embd, o->n_ff, ty[0]);
			snprintf(k, sizeof(k), "blk.%u.ffn_up_shexp.weight", b);
			add2(g, k, o->n_embd, o->n_ff, ty[1]);
			snprintf(k, sizeof(k), "blk.%u.ffn_down_shexp.weight", b);
			add2(g, k, o->n_ff, o->n_embd, ty[2]);
		}
		if (o->n_nextn) {
			snprintf(k, sizeof(k), "blk.%u.exp_probs_b.bias", b);
			add2(g, k, o->n_expert, 0, GR_T_F32);
		}
	}
}

void gr_split(const struct gr_gguf *g, uint32_t n, struct gr_gguf *shards)
{
	size_t start = 0;
	for (uint32_t s = 0; s < n; s++) {
		struct gr_gguf *sh = &shards[s];
		gr_init(sh);
		sh->version = g->version;
		sh->align = g->align;
		sh->be = g->be;
		memcpy(sh->magic, g->magic, 4);
		if (s == 0) {
			for (size_t i = 0; i < g->n_kvs; i++)
				gr_append_raw(sh, g->kv[i].key, g->kv[i].bytes,
					      g->kv[i].len);
		} else if (gr_find_kv(g, "general.alignment") >= 0) {
			int i = gr_find_kv(g, "general.alignment");
			gr_append_raw(sh, g->kv[i].key, g->kv[i].bytes,
				      g->kv[i].len);
		}
		gr_set_u16(sh, "split.no", (uint16_t)s);
		gr_set_u16(sh, "split.count", (uint16_t)n);
		gr_set_i32(sh, "split.tensors.count", (int32_t)g->nt);
		size_t end = g->nt * (s + 1) / n;
		for (size_t i = start; i < end; i++) {
			struct gr_tensor t = g->t[i];
			uint64_t ne[GR_MAX_NE];
			memcpy(ne, t.ne, sizeof(ne));
			int j = gr_add_tensor(sh, "x", t.n_dims, ne, t.type);
			sh->t[j] = t;
			sh->t[j].offset = next_offset(sh, (size_t)j);
		}
		start = end;
	}
}

char *gr_split_path(const char *dir, const char *prefix, uint32_t k,
		    uint32_t n)
{
	size_t len = strlen(dir) + strlen(prefix) + 40;
	char *p = xrealloc(NULL, len);
	snprintf(p, len, "%s/%s-%05u-of-%05u.gguf", dir, prefix, k, n);
	return p;
}

/* ---- ggml as the referee ------------------------------------------------------------ */

struct ggml_gguf_init_params {
	bool no_alloc;
	void **ctx;
};

int gr_ggml_check(const char *path, const struct gr_gguf *g, char *why,
		  size_t why_len)
{
	static void *h;
	const char *lib = getenv("MS_GGML_LIB");
	if (!h) {
		if (!lib || !*lib) {
			snprintf(why, why_len, "MS_GGML_LIB is not set (run under "
				 "tests/run.sh)");
			return -1;
		}
		h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
		if (!h) {
			snprintf(why, why_len, "dlopen %s: %s", lib, dlerror());
			return -1;
		}
	}
	void *(*init)(const char *, struct ggml_gguf_init_params) =
		(void *(*)(const char *, struct ggml_gguf_init_params))
			dlsym(h, "gguf_init_from_file");
	void (*gfree)(void *) = (void (*)(void *))dlsym(h, "gguf_free");
	int64_t (*n_tensors)(const void *) =
		(int64_t(*)(const void *))dlsym(h, "gguf_get_n_tensors");
	int64_t (*n_kv)(const void *) =
		(int64_t(*)(const void *))dlsym(h, "gguf_get_n_kv");
	size_t (*data_off)(const void *) =
		(size_t(*)(const void *))dlsym(h, "gguf_get_data_offset");
	size_t (*t_off)(const void *, int64_t) =
		(size_t(*)(const void *, int64_t))dlsym(h, "gguf_get_tensor_offset");
	const char *(*t_name)(const void *, int64_t) =
		(const char *(*)(const void *, int64_t))dlsym(h, "gguf_get_tensor_name");
	int (*t_type)(const void *, int64_t) =
		(int (*)(const void *, int64_t))dlsym(h, "gguf_get_tensor_type");
	size_t (*t_size)(const void *, int64_t) =
		(size_t(*)(const void *, int64_t))dlsym(h, "gguf_get_tensor_size");
	if (!init || !gfree || !n_tensors || !n_kv || !data_off || !t_off ||
	    !t_name || !t_type || !t_size) {
		snprintf(why, why_len, "%s lacks a gguf_* symbol", lib);
		return -1;
	}
	struct ggml_gguf_init_params params = {true, NULL};
	void *ctx = init(path, params);
	if (!ctx) {
		snprintf(why, why_len, "ggml's gguf_init_from_file rejected %s",
			 path);
		return 0;
	}
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(g, &b, &lay);
	gr_buf_free(&b);
	int ok = 1;
	why[0] = '\0';
	if ((uint64_t)n_tensors(ctx) != g->nt) {
		snprintf(why, why_len, "ggml: %lld tensors, builder %zu",
			 (long long)n_tensors(ctx), g->nt);
		ok = 0;
	} else if ((uint64_t)n_kv(ctx) != g->n_kvs) {
		snprintf(why, why_len, "ggml: %lld kv, builder %zu",
			 (long long)n_kv(ctx), g->n_kvs);
		ok = 0;
	} else if (data_off(ctx) != lay.data_offset) {
		snprintf(why, why_len, "ggml: data offset %zu, builder %llu",
			 data_off(ctx), (unsigned long long)lay.data_offset);
		ok = 0;
	}
	for (size_t i = 0; ok && i < g->nt; i++) {
		const struct gr_tensor *t = &g->t[i];
		uint64_t sz = tensor_bytes_or0(t);
		const char *nm = t_name(ctx, (int64_t)i);
		if (strlen(nm) != t->name_len || memcmp(nm, t->name, t->name_len) ||
		    (uint32_t)t_type(ctx, (int64_t)i) != t->type ||
		    t_off(ctx, (int64_t)i) != t->offset ||
		    t_size(ctx, (int64_t)i) != sz) {
			snprintf(why, why_len, "ggml: tensor %zu is %s type %d "
				 "offset %zu size %zu; builder %.*s type %u offset "
				 "%llu size %llu", i, nm, t_type(ctx, (int64_t)i),
				 t_off(ctx, (int64_t)i), t_size(ctx, (int64_t)i),
				 (int)t->name_len, (const char *)t->name, t->type,
				 (unsigned long long)t->offset,
				 (unsigned long long)sz);
			ok = 0;
		}
	}
	gfree(ctx);
	return ok;
}
