/*
 * t_gguf_corrupt.c - the GGUF corruption suite.
 *
 * Each case starts from one small valid file (the baseline), plants exactly
 * one defect with the raw builder (tests/gguf_raw.h) and asserts that
 * ms_gguf_open - by path and by descriptor - and ms_model_open return a
 * negative errno, record it in err.code and leave a message. The message is
 * printed, so the log shows what a user would see. It does not matter which
 * check catches a defect, only that one does, cleanly: under `make check`
 * any read out of bounds, overflow or leak on the way fails the test too.
 *
 * The GGUF CVE classes of 2024-2026 are cases by name: integer overflow in
 * tensor sizes, padding wrap, offset (+ size) past the end of the file, zero
 * dimension, huge alignment, negative type. The baseline must parse and must
 * read back exactly what the builder wrote (and ggml must agree, when its
 * library is there): otherwise a broken builder would make every rejection
 * meaningless.
 *
 *   t_gguf_corrupt [CASE...]     run all cases, or the named ones
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moestream/model.h"
#include "gguf_raw.h"
#include "testutil.h"

/* ---- the baseline ---------------------------------------------------------- */

static const uint32_t arr_u32[3] = {1, 2, 0xdeadbeef};
static const char *const arr_str[2] = {"x", "yz"};

/* Everything but gr_init, so a test can set g->be first. */
static void fill_baseline(struct gr_gguf *g)
{
	gr_set_str(g, "general.architecture", "test");
	gr_set_u32(g, "general.alignment", 32);
	gr_set_str(g, "general.name", "baseline");
	gr_set_u32(g, "test.block_count", 1);
	gr_set_u8(g, "t.u8", 200);
	gr_set_i8(g, "t.i8", -5);
	gr_set_u16(g, "t.u16", 60000);
	gr_set_i16(g, "t.i16", -30000);
	gr_set_i32(g, "t.i32", -2000000000);
	gr_set_f32(g, "t.f32", 1.5f);
	gr_set_bool(g, "t.bool", 1);
	gr_set_u64(g, "t.u64", 1ull << 40);
	gr_set_i64(g, "t.i64", -(1ll << 40));
	gr_set_f64(g, "t.f64", -2.25);
	gr_set_arr(g, "t.arr_u32", GR_V_U32, 3, arr_u32);
	gr_set_arr_str(g, "t.arr_str", 2, arr_str);
	/* The last tensor's bytes end on the alignment, so the file has no
	 * trailing padding and every shorter prefix is truly short. */
	gr_add_tensor(g, "blk.0.c", 2, (const uint64_t[]){256, 1}, GR_T_Q2_K);
	gr_add_tensor(g, "blk.0.b", 2, (const uint64_t[]){64, 2}, GR_T_Q8_0);
	gr_add_tensor(g, "blk.0.a", 2, (const uint64_t[]){8, 2}, GR_T_F32);
}

static void baseline(struct gr_gguf *g)
{
	gr_init(g);
	fill_baseline(g);
}

/* Fixes the data size to what the baseline needs, so a case that moves an
 * offset far away does not grow the file. */
static void freeze_data(struct gr_gguf *g)
{
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(g, &b, &lay);
	gr_buf_free(&b);
	g->data_size = lay.file_size - lay.data_offset;
	g->data_size_set = true;
}

static struct gr_tensor *T(struct gr_gguf *g, const char *name)
{
	int i = gr_find_tensor(g, name);
	if (i < 0)
		t_fatal("builder: no tensor %s", name);
	return &g->t[i];
}

/* ---- running one file ---------------------------------------------------------- */

static const char *dir;
static int n_cases, n_rejected, n_without_file;

static char *write_tmp(const char *name, const void *p, size_t n)
{
	static char path[4096];
	snprintf(path, sizeof(path), "%s/%s.gguf", dir, name);
	int rc = t_write_file(path, p, n);
	if (rc)
		t_fatal("write %s: %s", path, strerror(-rc));
	return path;
}

/* One rejection: rc < 0, err.code == rc, a message. `quiet` skips printing
 * (the truncation loop prints only when the message changes). */
static bool check_reject(const char *cname, const char *how, int rc,
			 const struct ms_err *err, void *obj, bool quiet,
			 const char *want)
{
	bool ok = true;
	if (rc >= 0) {
		t_fail_at(__FILE__, __LINE__, "%s: %s ACCEPTED the file (rc %d)",
			  cname, how, rc);
		return false;
	}
	if (obj) {
		t_fail_at(__FILE__, __LINE__, "%s: %s failed (rc %d) but left "
			  "*out non-NULL", cname, how, rc);
		ok = false;
	}
	if (!err->msg[0]) {
		t_fail_at(__FILE__, __LINE__, "%s: %s rc %d (%s) with an EMPTY "
			  "message", cname, how, rc, strerror(-rc));
		ok = false;
	}
	if (err->code != rc) {
		t_fail_at(__FILE__, __LINE__, "%s: %s returned %d but err.code "
			  "is %d", cname, how, rc, err->code);
		ok = false;
	}
	if (want && !strcasestr(err->msg, want)) {
		t_fail_at(__FILE__, __LINE__, "%s: %s message does not say "
			  "\"%s\": %s", cname, how, want, err->msg);
		ok = false;
	}
	if (!quiet)
		printf("  %-30s %-10s rc=%d (%s): %s\n", cname, how, rc,
		       strerror(-rc), err->msg);
	return ok;
}

/* Runs the three entry points on one file that must be rejected. */
static bool expect_reject_bytes(const char *cname, const void *p, size_t n,
				bool quiet, const char *want, char *msg_out,
				size_t msg_len)
{
	char *path = write_tmp(cname, p, n);
	struct ms_err err;
	bool ok = true;

	/* 1: by path. The message should name the file too (contract). */
	struct ms_gguf *g = NULL;
	memset(&err, 0, sizeof(err));
	int rc = ms_gguf_open(&g, path, &err);
	ok &= check_reject(cname, "gguf_open", rc, &err, g, quiet, want);
	if (rc < 0 && err.msg[0] && !strstr(err.msg, cname))
		n_without_file++;
	if (msg_out)
		snprintf(msg_out, msg_len, "%s", err.msg);
	ms_gguf_free(g);

	/* 2: by descriptor; the caller keeps the fd. */
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		t_fatal("open %s: %s", path, strerror(errno));
	g = NULL;
	memset(&err, 0, sizeof(err));
	rc = ms_gguf_open_fd(&g, fd, cname, &err);
	ok &= check_reject(cname, "gguf_fd", rc, &err, g, true, want);
	ms_gguf_free(g);
	if (fcntl(fd, F_GETFD) < 0) {
		t_fail_at(__FILE__, __LINE__, "%s: ms_gguf_open_fd closed the "
			  "caller's fd", cname);
		ok = false;
	} else {
		close(fd);
	}

	/* 3: as a model. */
	struct ms_model *m = NULL;
	memset(&err, 0, sizeof(err));
	rc = ms_model_open(&m, path, &err);
	ok &= check_reject(cname, "model_open", rc, &err, m, true, NULL);
	ms_model_free(m);
	unlink(path);
	return ok;
}

static void expect_reject(const char *cname, const struct gr_gguf *g,
			  const char *want)
{
	struct gr_buf b;
	gr_build(g, &b, NULL);
	n_cases++;
	if (expect_reject_bytes(cname, b.p, b.len, false, want, NULL, 0))
		n_rejected++;
	gr_buf_free(&b);
}

/* ---- the baseline parses and reads back what was written ------------------------ */

static void check_baseline_reads_back(const char *cname, const struct gr_gguf *bg)
{
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(bg, &b, &lay);
	char *path = write_tmp(cname, b.p, b.len);
	struct ms_err err = {0};
	struct ms_gguf *g = NULL;
	int rc = ms_gguf_open(&g, path, &err);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "%s: the VALID baseline was "
			  "rejected: rc %d: %s (the builder or the reader is "
			  "broken; nothing below means anything)", cname, rc,
			  err.msg);
		gr_buf_free(&b);
		return;
	}
	T_EQ_U64(g->version, bg->version);
	T_EQ_U64(g->alignment, 32);
	T_EQ_U64(g->n_kv, bg->n_kvs);
	T_EQ_U64(g->n_tensors, bg->nt);
	T_EQ_U64(g->file_size, lay.file_size);
	T_EQ_U64(g->meta_size, lay.meta_size);
	T_EQ_U64(g->data_offset, lay.data_offset);
	for (size_t i = 0; i < bg->nt && i < g->n_tensors; i++) {
		const struct gr_tensor *bt = &bg->t[i];
		const struct ms_gguf_tensor *t = &g->tensors[i];
		uint64_t sz = 0;
		gr_tensor_bytes(bt->type, bt->n_dims, bt->ne, &sz);
		T_CHECK(strlen(t->name) == bt->name_len &&
				!memcmp(t->name, bt->name, bt->name_len),
			"%s: tensor %zu name %s", cname, i, t->name);
		T_EQ_U64(t->n_dims, bt->n_dims);
		T_EQ_U64(t->type, bt->type);
		for (uint32_t d = 0; d < MS_GGUF_MAX_DIMS; d++)
			T_EQ_U64(t->ne[d], d < bt->n_dims ? bt->ne[d] : 1);
		T_EQ_U64(t->offset, bt->offset);
		T_EQ_U64(t->size, sz);
		T_EQ_U64(t->file_offset, lay.data_offset + bt->offset);
		T_EQ_U64(ms_gguf_find_tensor(g, t->name), i);
	}
	T_CHECK(ms_gguf_find_tensor(g, "nope") == -1, "find_tensor(nope)");

	uint64_t u = 0;
	int64_t i64 = 0;
	double f = 0;
	bool bv = false;
	const char *s = NULL;
	T_CHECK(ms_gguf_get_u64(g, "t.u8", &u, &err) == 0 && u == 200, "u8 %llu",
		(unsigned long long)u);
	T_CHECK(ms_gguf_get_i64(g, "t.i8", &i64, &err) == 0 && i64 == -5,
		"i8 %lld", (long long)i64);
	T_CHECK(ms_gguf_get_u64(g, "t.u16", &u, &err) == 0 && u == 60000,
		"u16 %llu", (unsigned long long)u);
	T_CHECK(ms_gguf_get_i64(g, "t.i16", &i64, &err) == 0 && i64 == -30000,
		"i16 %lld", (long long)i64);
	T_CHECK(ms_gguf_get_i64(g, "t.i32", &i64, &err) == 0 &&
			i64 == -2000000000, "i32 %lld", (long long)i64);
	T_CHECK(ms_gguf_get_f64(g, "t.f32", &f, &err) == 0 && f == 1.5, "f32 %g",
		f);
	T_CHECK(ms_gguf_get_bool(g, "t.bool", &bv, &err) == 0 && bv, "bool");
	T_CHECK(ms_gguf_get_u64(g, "t.u64", &u, &err) == 0 && u == 1ull << 40,
		"u64 %llu", (unsigned long long)u);
	T_CHECK(ms_gguf_get_i64(g, "t.i64", &i64, &err) == 0 &&
			i64 == -(1ll << 40), "i64 %lld", (long long)i64);
	T_CHECK(ms_gguf_get_f64(g, "t.f64", &f, &err) == 0 && f == -2.25,
		"f64 %g", f);
	T_CHECK(ms_gguf_get_str(g, "general.name", &s, &err) == 0 && s &&
			!strcmp(s, "baseline"), "general.name %s", s ? s : "(null)");
	T_CHECK(ms_gguf_get_u64(g, "t.i8", &u, &err) == -EINVAL,
		"get_u64 of a negative i8 must be -EINVAL");
	T_CHECK(ms_gguf_get_u64(g, "general.name", &u, &err) == -EINVAL,
		"get_u64 of a string must be -EINVAL");
	T_CHECK(ms_gguf_get_u64(g, "no.such.key", &u, &err) == -ENOENT,
		"get_u64 of a missing key must be -ENOENT");
	int64_t k = ms_gguf_find_key(g, "t.arr_u32");
	T_CHECK(k >= 0, "find_key t.arr_u32");
	if (k >= 0) {
		const struct ms_gguf_kv *kv = &g->kv[k];
		T_EQ_U64(kv->type, MS_GGUF_ARRAY);
		T_EQ_U64(kv->arr_type, MS_GGUF_U32);
		T_EQ_U64(kv->arr_n, 3);
		T_CHECK(kv->arr_data && !memcmp(kv->arr_data, arr_u32, 12),
			"t.arr_u32 data");
	}
	k = ms_gguf_find_key(g, "t.arr_str");
	T_CHECK(k >= 0 && g->kv[k].arr_type == MS_GGUF_STRING &&
			g->kv[k].arr_n == 2, "t.arr_str");
	printf("  %-30s parses: %llu kv, %llu tensors, data at %llu, %llu "
	       "bytes\n", cname, (unsigned long long)g->n_kv,
	       (unsigned long long)g->n_tensors,
	       (unsigned long long)g->data_offset,
	       (unsigned long long)g->file_size);
	ms_gguf_free(g);

	char why[512];
	int r = gr_ggml_check(path, bg, why, sizeof(why));
	if (r == 1)
		printf("  %-30s ggml agrees with the builder\n", cname);
	else if (r == 0)
		t_fail_at(__FILE__, __LINE__, "%s: ggml disagrees with the raw "
			  "builder: %s", cname, why);
	else
		printf("  %-30s (ggml not consulted: %s)\n", cname, why);
	gr_buf_free(&b);
}

/* ---- the cases -------------------------------------------------------------------- */

/* Each case gets a fresh baseline, plants one defect, and may set `want` to
 * a word the message must contain. */
typedef void case_fn(struct gr_gguf *g, const char **want);

#define CASE(name) static void c_##name(struct gr_gguf *g, const char **want)
#define UNUSED_WANT (void)want

/* -- header ---------------------------------------------------------------- */
CASE(bad_magic) { UNUSED_WANT; memcpy(g->magic, "GGUX", 4); }
CASE(magic_lowercase) { UNUSED_WANT; memcpy(g->magic, "gguf", 4); }
CASE(magic_ggml_legacy) { UNUSED_WANT; memcpy(g->magic, "lmgg", 4); }
CASE(version_0) { UNUSED_WANT; g->version = 0; }
CASE(version_1) { UNUSED_WANT; g->version = 1; }
CASE(version_4) { UNUSED_WANT; g->version = 4; }
CASE(version_ffffffff) { UNUSED_WANT; g->version = 0xffffffffu; }
CASE(big_endian_v3)
{
	/* A whole file written big-endian, as a big-endian host's ggml would:
	 * version 3 reads as 0x03000000 here. */
	gr_free(g);
	gr_init(g);
	g->be = true;
	fill_baseline(g);
	*want = "endian";
}
CASE(big_endian_v2)
{
	gr_free(g);
	gr_init(g);
	g->be = true;
	g->version = 2;
	fill_baseline(g);
	*want = "endian";
}
CASE(n_tensors_2pow63) { UNUSED_WANT; g->n_tensors_set = true; g->n_tensors = 1ull << 63; }
CASE(n_tensors_u64max) { UNUSED_WANT; g->n_tensors_set = true; g->n_tensors = UINT64_MAX; }
CASE(n_tensors_over_cap) { UNUSED_WANT; g->n_tensors_set = true; g->n_tensors = MS_GGUF_MAX_TENSORS + 1ull; }
CASE(n_tensors_past_eof)
{
	/* Under the cap, but the file cannot hold that many tensor infos. */
	UNUSED_WANT;
	g->n_tensors_set = true;
	g->n_tensors = 1000;
}
CASE(n_kv_2pow63) { UNUSED_WANT; g->n_kv_set = true; g->n_kv = 1ull << 63; }
CASE(n_kv_over_cap) { UNUSED_WANT; g->n_kv_set = true; g->n_kv = MS_GGUF_MAX_KV + 1ull; }
CASE(n_kv_past_eof) { UNUSED_WANT; g->n_kv_set = true; g->n_kv = 5000; }
CASE(n_kv_too_small)
{
	/* The kv bytes are then read as tensor infos. */
	UNUSED_WANT;
	g->n_kv_set = true;
	g->n_kv = 0;
}

/* -- keys -------------------------------------------------------------------- */
static void raw_key_entry(struct gr_gguf *g, uint64_t len_field,
			  const void *key, size_t n)
{
	struct gr_buf b;
	gr_buf_init(&b);
	gr_strn(&b, len_field, key, n);
	gr_u32(&b, GR_V_U32);
	gr_u32(&b, 7);
	gr_append_raw(g, "raw", b.p, b.len);
	gr_buf_free(&b);
}

CASE(key_len_u64max) { UNUSED_WANT; raw_key_entry(g, UINT64_MAX, "abc", 3); }
CASE(key_len_2pow63) { UNUSED_WANT; raw_key_entry(g, 1ull << 63, "abc", 3); }
CASE(key_len_past_eof) { UNUSED_WANT; raw_key_entry(g, 60000, "abc", 3); }
CASE(key_len_over_cap)
{
	/* MS_GGUF_MAX_KEY + 1 real bytes: in the file, but over the cap. */
	UNUSED_WANT;
	size_t n = MS_GGUF_MAX_KEY + 1;
	char *k = malloc(n);
	memset(k, 'k', n);
	raw_key_entry(g, n, k, n);
	free(k);
}
CASE(key_embedded_nul) { UNUSED_WANT; raw_key_entry(g, 9, "gen\0ral.x", 9); }
CASE(duplicate_key)
{
	UNUSED_WANT;
	struct gr_buf b;
	gr_buf_init(&b);
	gr_str(&b, "general.name");
	gr_u32(&b, GR_V_STRING);
	gr_str(&b, "second");
	gr_append_raw(g, "dup", b.p, b.len);
	gr_buf_free(&b);
}

/* -- values ------------------------------------------------------------------ */
CASE(value_type_13) { UNUSED_WANT; gr_set_raw_val(g, "t.u8", (const uint8_t[]){13, 0, 0, 0, 1}, 5); }
CASE(value_type_ffffffff) { UNUSED_WANT; gr_set_raw_val(g, "t.u8", (const uint8_t[]){0xff, 0xff, 0xff, 0xff, 1}, 5); }
CASE(bool_value_2) { UNUSED_WANT; gr_set_bool(g, "t.bool", 2); }
CASE(bool_value_ff) { UNUSED_WANT; gr_set_bool(g, "t.bool", 0xff); }

static void str_val(struct gr_gguf *g, const char *key, uint64_t len_field,
		    const char *s)
{
	struct gr_buf b;
	gr_buf_init(&b);
	gr_u32(&b, GR_V_STRING);
	gr_strn(&b, len_field, s, strlen(s));
	gr_set_raw_val(g, key, b.p, b.len);
	gr_buf_free(&b);
}

CASE(string_len_past_eof) { UNUSED_WANT; str_val(g, "general.name", 100000, "baseline"); }
CASE(string_len_u64max) { UNUSED_WANT; str_val(g, "general.name", UINT64_MAX, "baseline"); }
CASE(string_len_over_cap) { UNUSED_WANT; str_val(g, "general.name", MS_GGUF_MAX_STRING + 1ull, "baseline"); }

static void arr_hdr(struct gr_gguf *g, const char *key, uint32_t elem,
		    uint64_t n, const void *tail, size_t tail_n)
{
	struct gr_buf b;
	gr_buf_init(&b);
	gr_u32(&b, GR_V_ARRAY);
	gr_u32(&b, elem);
	gr_u64(&b, n);
	gr_put(&b, tail, tail_n);
	gr_set_raw_val(g, key, b.p, b.len);
	gr_buf_free(&b);
}

static const uint8_t some[16] = {1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8};

CASE(array_count_mul_overflow)
{
	/* 2^61 u64 elements: n * 8 wraps to 0 in 64 bits. */
	UNUSED_WANT;
	arr_hdr(g, "t.arr_u32", GR_V_U64, 1ull << 61, some, 16);
}
CASE(array_count_u64max) { UNUSED_WANT; arr_hdr(g, "t.arr_u32", GR_V_U32, UINT64_MAX, some, 16); }
CASE(array_count_over_cap) { UNUSED_WANT; arr_hdr(g, "t.arr_u32", GR_V_U8, MS_GGUF_MAX_ARRAY + 1ull, some, 16); }
CASE(array_count_past_eof) { UNUSED_WANT; arr_hdr(g, "t.arr_u32", GR_V_U32, 1u << 20, some, 16); }
CASE(array_of_strings_huge_count)
{
	/* Each string takes at least its 8-byte length. */
	UNUSED_WANT;
	arr_hdr(g, "t.arr_str", GR_V_STRING, 1ull << 62, some, 16);
}
CASE(array_string_len_u64max)
{
	UNUSED_WANT;
	struct gr_buf s;
	gr_buf_init(&s);
	gr_str(&s, "ok");
	gr_strn(&s, UINT64_MAX, "bad", 3);
	arr_hdr(g, "t.arr_str", GR_V_STRING, 2, s.p, s.len);
	gr_buf_free(&s);
}
CASE(nested_array)
{
	UNUSED_WANT;
	struct gr_buf s;
	gr_buf_init(&s);
	gr_u32(&s, GR_V_U32);
	gr_u64(&s, 1);
	gr_u32(&s, 5);
	arr_hdr(g, "t.arr_u32", GR_V_ARRAY, 1, s.p, s.len);
	gr_buf_free(&s);
}
CASE(array_elem_type_13) { UNUSED_WANT; arr_hdr(g, "t.arr_u32", 13, 2, some, 8); }
CASE(array_elem_type_ffffffff) { UNUSED_WANT; arr_hdr(g, "t.arr_u32", 0xffffffffu, 2, some, 8); }

/* -- general.alignment --------------------------------------------------------- */
CASE(alignment_0) { UNUSED_WANT; gr_set_u32(g, "general.alignment", 0); }
CASE(alignment_not_pow2_48) { UNUSED_WANT; gr_set_u32(g, "general.alignment", 48); }
CASE(alignment_not_pow2_3) { UNUSED_WANT; gr_set_u32(g, "general.alignment", 3); }
CASE(alignment_huge_2pow31) { UNUSED_WANT; gr_set_u32(g, "general.alignment", 1u << 31); }
CASE(alignment_over_cap) { UNUSED_WANT; gr_set_u32(g, "general.alignment", MS_GGUF_MAX_ALIGNMENT * 2); }
CASE(alignment_u64_2pow63) { UNUSED_WANT; gr_set_u64(g, "general.alignment", 1ull << 63); }
CASE(alignment_i32_negative) { UNUSED_WANT; gr_set_i32(g, "general.alignment", -32); }
CASE(alignment_wrong_type_string) { UNUSED_WANT; gr_set_str(g, "general.alignment", "32"); }

/* -- tensor infos ---------------------------------------------------------------- */
CASE(tensor_n_dims_0) { UNUSED_WANT; T(g, "blk.0.b")->n_dims = 0; T(g, "blk.0.b")->n_ne = 0; }
CASE(tensor_n_dims_5)
{
	UNUSED_WANT;
	struct gr_tensor *t = T(g, "blk.0.b");
	t->n_dims = t->n_ne = 5;
	t->ne[2] = t->ne[3] = t->ne[4] = 1;
}
CASE(tensor_n_dims_ffffffff) { UNUSED_WANT; T(g, "blk.0.b")->n_dims = 0xffffffffu; }
CASE(tensor_zero_dimension) { UNUSED_WANT; T(g, "blk.0.b")->ne[1] = 0; }
CASE(tensor_zero_ne0) { UNUSED_WANT; T(g, "blk.0.a")->ne[0] = 0; }
CASE(tensor_negative_dimension) { UNUSED_WANT; T(g, "blk.0.b")->ne[1] = (uint64_t)-1; }
CASE(tensor_dimension_2pow63) { UNUSED_WANT; T(g, "blk.0.b")->ne[1] = 1ull << 63; }
CASE(tensor_ne_product_overflow)
{
	/* CVE class: the element count wraps. [2^32, 2^32, 2^32] f32. */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.a");
	t->n_dims = t->n_ne = 3;
	t->ne[0] = t->ne[1] = t->ne[2] = 1ull << 32;
}
CASE(tensor_ne_product_int64_overflow)
{
	/* 2^32 * 2^31 = 2^63: fits a u64, not an int64 (ggml's nelements). */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.a");
	t->ne[0] = 1ull << 32;
	t->ne[1] = 1ull << 31;
}
CASE(tensor_ne_product_wraps_to_small)
{
	/* [2^16, 2^16, 2^16, 2^16]: the product wraps to exactly 0, the
	 * shape a check done after the multiplication would pass. */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.a");
	t->n_dims = t->n_ne = 4;
	t->ne[0] = 1ull << 16;
	t->ne[1] = t->ne[2] = 1ull << 16;
	t->ne[3] = 1ull << 16;
}
CASE(tensor_nbytes_overflow_f32)
{
	/* CVE class: nelements fits, nelements * type_size (2^61 * 4) does
	 * not fit an int64. */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.a");
	t->n_dims = t->n_ne = 1;
	t->ne[0] = 1ull << 61;
}
CASE(tensor_nbytes_overflow_f64)
{
	/* 2^62 * 8 wraps a u64. */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.a");
	t->type = GR_T_F64;
	t->n_dims = t->n_ne = 1;
	t->ne[0] = 1ull << 62;
}
CASE(tensor_nbytes_overflow_q8_0)
{
	/* Blocks * 34 bytes wraps: 32 * 2^57 elements. */
	UNUSED_WANT;
	freeze_data(g);
	struct gr_tensor *t = T(g, "blk.0.b");
	t->ne[0] = 32ull << 57;
	t->ne[1] = 1;
}
CASE(tensor_type_ffffffff) { UNUSED_WANT; T(g, "blk.0.a")->type = 0xffffffffu; }
CASE(tensor_type_negative_int32) { UNUSED_WANT; T(g, "blk.0.a")->type = 0x80000000u; }
CASE(tensor_type_40_unknown) { UNUSED_WANT; T(g, "blk.0.a")->type = 40; }
CASE(tensor_type_retired_4) { UNUSED_WANT; T(g, "blk.0.a")->type = 4; }
CASE(tensor_type_retired_5) { UNUSED_WANT; T(g, "blk.0.a")->type = 5; }
CASE(tensor_type_retired_31) { UNUSED_WANT; T(g, "blk.0.a")->type = 31; }
CASE(tensor_type_retired_32) { UNUSED_WANT; T(g, "blk.0.a")->type = 32; }
CASE(tensor_type_retired_33) { UNUSED_WANT; T(g, "blk.0.a")->type = 33; }
CASE(tensor_type_retired_36) { UNUSED_WANT; T(g, "blk.0.a")->type = 36; }
CASE(tensor_type_retired_37) { UNUSED_WANT; T(g, "blk.0.a")->type = 37; }
CASE(tensor_type_retired_38) { UNUSED_WANT; T(g, "blk.0.a")->type = 38; }
CASE(tensor_ne0_not_block_multiple) { UNUSED_WANT; T(g, "blk.0.b")->ne[0] = 33; }
CASE(tensor_ne0_not_block_multiple_k) { UNUSED_WANT; T(g, "blk.0.c")->ne[0] = 128; }
CASE(tensor_offset_misaligned) { UNUSED_WANT; T(g, "blk.0.a")->offset += 16; }
CASE(tensor_offset_past_eof)
{
	/* CVE class: the data starts after the end of the file. */
	UNUSED_WANT;
	freeze_data(g);
	T(g, "blk.0.a")->offset = 1u << 20;
}
CASE(tensor_offset_plus_size_past_eof)
{
	/* CVE class: starts inside the file, ends 32 bytes after it. */
	UNUSED_WANT;
	freeze_data(g);
	T(g, "blk.0.a")->offset += 32;
}
CASE(tensor_data_missing)
{
	/* Tensor infos fine, but the file ends where the data should start. */
	UNUSED_WANT;
	g->data_size_set = true;
	g->data_size = 0;
}
CASE(tensor_offset_padding_wrap)
{
	/* CVE class (GGML_PAD wrap): an aligned offset next to UINT64_MAX, so
	 * offset + size, or its padding, wraps around to a small number. */
	UNUSED_WANT;
	freeze_data(g);
	T(g, "blk.0.b")->offset = UINT64_MAX & ~31ull;
}
CASE(tensor_offset_plus_size_wraps_small)
{
	/* offset + size wraps to 72: "in bounds" to an unchecked add. */
	UNUSED_WANT;
	freeze_data(g);
	T(g, "blk.0.b")->offset = (uint64_t)0 - 64;
}
CASE(tensor_file_offset_wraps_to_0)
{
	/* data_offset + offset == 2^64: the absolute offset wraps to 0. The
	 * data offset is a multiple of 32, so the offset is aligned. */
	UNUSED_WANT;
	struct gr_buf b;
	struct gr_layout lay;
	freeze_data(g);
	gr_build(g, &b, &lay);
	gr_buf_free(&b);
	T(g, "blk.0.a")->offset = (uint64_t)0 - lay.data_offset;
}
CASE(tensors_overlap)
{
	UNUSED_WANT;
	T(g, "blk.0.a")->offset = T(g, "blk.0.b")->offset;
}
CASE(tensors_overlap_partial)
{
	UNUSED_WANT;
	/* b is 136 bytes at its offset; a starts 128 bytes in (aligned). */
	T(g, "blk.0.a")->offset = T(g, "blk.0.b")->offset + 128;
	freeze_data(g);
}
CASE(tensor_duplicate_name)
{
	UNUSED_WANT;
	struct gr_tensor *t = T(g, "blk.0.a");
	gr_tensor_name(t, "blk.0.b", 7);
}
CASE(tensor_empty_name) { UNUSED_WANT; gr_tensor_name(T(g, "blk.0.a"), "", 0); }
CASE(tensor_name_64_bytes)
{
	UNUSED_WANT;
	char n[64];
	memset(n, 'n', sizeof(n));
	gr_tensor_name(T(g, "blk.0.a"), n, sizeof(n));
}
CASE(tensor_name_len_u64max)
{
	UNUSED_WANT;
	struct gr_tensor *t = T(g, "blk.0.b");
	t->name_len_set = true;
	t->name_len_field = UINT64_MAX;
}
CASE(tensor_name_len_past_eof)
{
	UNUSED_WANT;
	struct gr_tensor *t = T(g, "blk.0.a");
	t->name_len_set = true;
	t->name_len_field = 1u << 30;
}

struct ccase {
	const char *name;
	case_fn *fn;
};

#define C(name) {#name, c_##name}
static const struct ccase cases[] = {
	C(bad_magic), C(magic_lowercase), C(magic_ggml_legacy),
	C(version_0), C(version_1), C(version_4), C(version_ffffffff),
	C(big_endian_v3), C(big_endian_v2),
	C(n_tensors_2pow63), C(n_tensors_u64max), C(n_tensors_over_cap),
	C(n_tensors_past_eof), C(n_kv_2pow63), C(n_kv_over_cap),
	C(n_kv_past_eof), C(n_kv_too_small),
	C(key_len_u64max), C(key_len_2pow63), C(key_len_past_eof),
	C(key_len_over_cap), C(key_embedded_nul), C(duplicate_key),
	C(value_type_13), C(value_type_ffffffff), C(bool_value_2),
	C(bool_value_ff), C(string_len_past_eof), C(string_len_u64max),
	C(string_len_over_cap), C(array_count_mul_overflow),
	C(array_count_u64max), C(array_count_over_cap),
	C(array_count_past_eof), C(array_of_strings_huge_count),
	C(array_string_len_u64max), C(nested_array), C(array_elem_type_13),
	C(array_elem_type_ffffffff),
	C(alignment_0), C(alignment_not_pow2_48), C(alignment_not_pow2_3),
	C(alignment_huge_2pow31), C(alignment_over_cap),
	C(alignment_u64_2pow63), C(alignment_i32_negative),
	C(alignment_wrong_type_string),
	C(tensor_n_dims_0), C(tensor_n_dims_5), C(tensor_n_dims_ffffffff),
	C(tensor_zero_dimension), C(tensor_zero_ne0),
	C(tensor_negative_dimension), C(tensor_dimension_2pow63),
	C(tensor_ne_product_overflow), C(tensor_ne_product_int64_overflow),
	C(tensor_ne_product_wraps_to_small),
	C(tensor_nbytes_overflow_f32), C(tensor_nbytes_overflow_f64),
	C(tensor_nbytes_overflow_q8_0),
	C(tensor_type_ffffffff), C(tensor_type_negative_int32),
	C(tensor_type_40_unknown), C(tensor_type_retired_4),
	C(tensor_type_retired_5), C(tensor_type_retired_31),
	C(tensor_type_retired_32), C(tensor_type_retired_33),
	C(tensor_type_retired_36), C(tensor_type_retired_37),
	C(tensor_type_retired_38),
	C(tensor_ne0_not_block_multiple), C(tensor_ne0_not_block_multiple_k),
	C(tensor_offset_misaligned), C(tensor_offset_past_eof),
	C(tensor_offset_plus_size_past_eof), C(tensor_data_missing),
	C(tensor_offset_padding_wrap), C(tensor_offset_plus_size_wraps_small),
	C(tensor_file_offset_wraps_to_0), C(tensors_overlap),
	C(tensors_overlap_partial), C(tensor_duplicate_name),
	C(tensor_empty_name), C(tensor_name_64_bytes),
	C(tensor_name_len_u64max), C(tensor_name_len_past_eof),
};

/* ---- every prefix of the baseline ---------------------------------------------- */

static void truncation_case(void)
{
	struct gr_gguf g;
	struct gr_buf b;
	struct gr_layout lay;
	baseline(&g);
	gr_build(&g, &b, &lay);
	printf("  truncated_every_prefix: %zu prefixes (meta ends at %llu, "
	       "data at %llu)\n", b.len, (unsigned long long)lay.meta_size,
	       (unsigned long long)lay.data_offset);
	char prev[MS_ERR_MSG_MAX] = "", cur[MS_ERR_MSG_MAX], name[64];
	size_t from = 0, bad = 0;
	for (size_t len = 0; len < b.len; len++) {
		snprintf(name, sizeof(name), "truncated_at_%zu", len);
		cur[0] = '\0';
		if (!expect_reject_bytes(name, b.p, len, true, NULL, cur,
					 sizeof(cur)))
			bad++;
		/* Print one line per run of lengths that give the same message
		 * (with the length in it masked, it would be one per length). */
		char a[MS_ERR_MSG_MAX], c[MS_ERR_MSG_MAX];
		const char *pa = strstr(prev, ": "), *pc = strstr(cur, ": ");
		snprintf(a, sizeof(a), "%.40s", pa ? pa : prev);
		snprintf(c, sizeof(c), "%.40s", pc ? pc : cur);
		if (len == 0 || strcmp(a, c)) {
			if (len)
				printf("    lengths %zu..%zu: %s\n", from, len - 1, prev);
			from = len;
		}
		snprintf(prev, sizeof(prev), "%s", cur);
	}
	printf("    lengths %zu..%zu: %s\n", from, b.len - 1, prev);
	n_cases++;
	if (!bad)
		n_rejected++;
	else
		t_fail_at(__FILE__, __LINE__, "truncated_every_prefix: %zu of "
			  "%zu prefixes not cleanly rejected", bad, b.len);
	gr_buf_free(&b);
	gr_free(&g);
}

/* ---- paths that are not GGUF files at all ------------------------------------------ */

/* Runs both openers on `path` in a child under an alarm, so that a reader
 * that blocks (open(2) of a FIFO waits for a writer) fails the case instead
 * of hanging the test. */
static void expect_reject_path(const char *cname, const char *path)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		alarm(5);
		struct ms_err err = {0};
		struct ms_gguf *g = NULL;
		int rc = ms_gguf_open(&g, path, &err);
		bool ok = check_reject(cname, "gguf_open", rc, &err, g, false, NULL);
		ms_gguf_free(g);
		struct ms_model *m = NULL;
		memset(&err, 0, sizeof(err));
		rc = ms_model_open(&m, path, &err);
		ok &= check_reject(cname, "model_open", rc, &err, m, true, NULL);
		ms_model_free(m);
		fflush(stdout);
		_exit(ok ? 0 : 1);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	n_cases++;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		n_rejected++;
	else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
		t_fail_at(__FILE__, __LINE__, "%s: opening %s HANGS (killed after "
			  "5 s)", cname, path);
	else
		t_fail_at(__FILE__, __LINE__, "%s: not cleanly rejected (status "
			  "0x%x)", cname, st);
}

static void path_cases(void)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/does-not-exist.gguf", dir);
	expect_reject_path("path_missing", p);
	snprintf(p, sizeof(p), "%s/a-directory.gguf", dir);
	if (mkdir(p, 0755))
		t_fatal("mkdir %s: %s", p, strerror(errno));
	expect_reject_path("path_directory", p);
	expect_reject_path("path_dev_null", "/dev/null");
	snprintf(p, sizeof(p), "%s/a-fifo.gguf", dir);
	if (mkfifo(p, 0644))
		t_fatal("mkfifo %s: %s", p, strerror(errno));
	expect_reject_path("path_fifo", p);
}

/* ---- positive boundaries: the checks must not reject valid files --------------- */

static void expect_accept(const char *cname, const struct gr_gguf *g)
{
	struct gr_buf b;
	gr_build(g, &b, NULL);
	char *path = write_tmp(cname, b.p, b.len);
	struct ms_err err = {0};
	struct ms_gguf *gg = NULL;
	int rc = ms_gguf_open(&gg, path, &err);
	T_CHECK(rc == 0, "%s: a VALID file was rejected: rc %d: %s", cname, rc,
		err.msg);
	printf("  %-30s %s\n", cname, rc == 0 ? "accepted (valid)" : err.msg);
	ms_gguf_free(gg);
	gr_buf_free(&b);
}

static void positive_cases(void)
{
	struct gr_gguf g;

	baseline(&g);
	g.version = 2;
	expect_accept("valid_version_2", &g);
	gr_free(&g);

	baseline(&g);
	char n[63];
	memset(n, 'n', sizeof(n));
	gr_tensor_name(T(&g, "blk.0.a"), n, sizeof(n));
	expect_accept("valid_name_63_bytes", &g);
	gr_free(&g);

	baseline(&g);
	gr_set_u32(&g, "general.alignment", 64);
	g.align = 64;
	gr_relayout(&g);
	expect_accept("valid_alignment_64", &g);
	gr_free(&g);

	baseline(&g);
	gr_del(&g, "general.alignment");
	expect_accept("valid_alignment_default", &g);
	gr_free(&g);

	baseline(&g);
	gr_set_bool(&g, "t.bool", 0);
	gr_set_str(&g, "general.name", "");
	uint8_t none[1] = {0};
	gr_set_arr(&g, "t.empty", GR_V_U8, 0, none);
	expect_accept("valid_bool_0_empty_string_array", &g);
	gr_free(&g);

	/* The four-dimensional maximum, and every element type in arrays. */
	baseline(&g);
	gr_add_tensor(&g, "four_d", 4, (const uint64_t[]){2, 1, 3, 2}, GR_T_F32);
	uint8_t buf[64] = {0};
	for (uint32_t t = 0; t <= GR_V_F64; t++) {
		if (t == GR_V_STRING || t == GR_V_ARRAY)
			continue;
		char key[32];
		snprintf(key, sizeof(key), "t.arr_of_%u", t);
		gr_set_arr(&g, key, t, 3, buf);
	}
	expect_accept("valid_4d_and_all_array_types", &g);
	gr_free(&g);

	/* No tensors at all. */
	gr_init(&g);
	gr_set_str(&g, "general.architecture", "test");
	expect_accept("valid_no_tensors", &g);
	gr_free(&g);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* keep the log in order */
	dir = t_tmpdir();
	struct gr_gguf g;

	printf("baseline:\n");
	baseline(&g);
	check_baseline_reads_back("baseline", &g);
	gr_free(&g);
	baseline(&g);
	g.version = 2;
	check_baseline_reads_back("baseline_v2", &g);
	gr_free(&g);
	positive_cases();
	if (t_failures)
		t_fatal("the valid baseline does not read back; the cases below "
			"would prove nothing");

	printf("corruption cases (each: one defect in the valid baseline):\n");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (argc > 1) {
			bool sel = false;
			for (int a = 1; a < argc; a++)
				sel |= !strcmp(argv[a], cases[i].name);
			if (!sel)
				continue;
		}
		const char *want = NULL;
		baseline(&g);
		cases[i].fn(&g, &want);
		expect_reject(cases[i].name, &g, want);
		gr_free(&g);
	}
	if (argc == 1 || !strcmp(argv[1], "truncated_every_prefix"))
		truncation_case();
	if (argc == 1 || !strcmp(argv[1], "paths"))
		path_cases();

	printf("%d of %d corruption classes rejected cleanly\n", n_rejected,
	       n_cases);
	if (n_without_file)
		printf("note: %d rejection message(s) did not name the file\n",
		       n_without_file);
	return t_done();
}
