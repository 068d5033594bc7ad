/*
 * t_vocab_corrupt.c - the vocabulary corruption suite (issue 14).
 *
 * The tokenizer is built from a GGUF's tokenizer.ggml.* keys, and those are
 * file input. Each case starts from one small valid vocabulary (the
 * hand-made byte-level BPE of tests/gguf_raw.h: 256 byte tokens, five
 * merges, three special tokens), plants exactly one defect, writes a
 * vocabulary-only GGUF (no tensors) and asserts that the file still opens as
 * a GGUF while ms_vocab_load refuses it: the errno the contract in engine.h
 * promises for that class (-EINVAL malformed, -ENOTSUP not implemented,
 * -ENOENT missing), recorded in err.code, *out left NULL, and a message that
 * names the key at fault. The message is printed: the log shows what a user
 * would see. Under `make check` a read out of bounds, an overflow or a leak
 * on the way fails the test too.
 *
 * Classes: ids out of range (each special id at n, 2^32-1, 2^40, negative,
 * of the wrong type), token types outside 0..6 and a type array whose
 * length is not the token count, duplicate tokens, merges naming absent
 * tokens or without a space, a token over MS_VOCAB_MAX_TOKEN_LEN or empty,
 * no tokens at all, more tokens or merges than the caps (sparse files: the
 * millions of empty strings are a hole), keys of the wrong type, an unknown
 * pre-tokenizer or tokenizer model, add_bos/add_eos without the token.
 *
 * The positive controls come first and matter as much: the valid
 * vocabulary loads, reads back, and tokenizes to ids this file works out by
 * hand (merge order by rank, leftmost among equal ranks, special tokens with
 * and without parsing, user-defined tokens always, BOS added when asked,
 * invalid UTF-8 as U+FFFD), detokenizes back to the text, and the edges of
 * every check are accepted (a token of exactly the cap, a special id of
 * n - 1, types 0, 5 and 6, a merge repeated or making no token).
 *
 *   t_vocab_corrupt [CASE...]     run the controls and all cases, or the named
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "moestream/engine.h"
#include "moestream/model.h"
#include "gguf_raw.h"
#include "testutil.h"

static const char *dir;
static int n_cases, n_rejected;

/* ---- files --------------------------------------------------------------------- */

static const char *file_path(const char *name)
{
	static char path[4096];
	snprintf(path, sizeof(path), "%s/%s.gguf", dir, name);
	return path;
}

static void write_vocab(const char *path, const struct gr_vocab *v)
{
	struct gr_gguf g;
	gr_init(&g);
	gr_set_str(&g, "general.architecture", "test");
	gr_vocab_build(&g, v);
	int rc = gr_write(&g, path);
	gr_free(&g);
	if (rc)
		t_fatal("write %s: %s", path, strerror(-rc));
}

/* A vocabulary whose array `key` holds n empty strings, written as a sparse
 * file: the key goes last, its header is written and the n * 8 zero bytes
 * of the strings' lengths are a hole. For counts past the caps without
 * building hundreds of megabytes in memory. */
static void write_huge_strs(const char *path, const struct gr_vocab *v,
			    const char *key, uint64_t n)
{
	struct gr_gguf g;
	gr_init(&g);
	gr_set_str(&g, "general.architecture", "test");
	gr_vocab_build(&g, v);
	gr_del(&g, key);
	struct gr_buf e;
	gr_buf_init(&e);
	gr_str(&e, key);
	gr_u32(&e, GR_V_ARRAY);
	gr_u32(&e, GR_V_STRING);
	gr_u64(&e, n);
	gr_append_raw(&g, key, e.p, e.len);
	gr_buf_free(&e);
	struct gr_buf b;
	struct gr_layout lay;
	gr_build(&g, &b, &lay);
	gr_free(&g);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		t_fatal("open %s: %s", path, strerror(errno));
	if (write(fd, b.p, lay.meta_size) != (ssize_t)lay.meta_size ||
	    ftruncate(fd, (off_t)(lay.meta_size + 8 * n)))
		t_fatal("write %s: %s", path, strerror(errno));
	close(fd);
	gr_buf_free(&b);
}

/* Opens the GGUF (which must parse: the defects here are the vocabulary's)
 * and loads the vocabulary; the GGUF is freed, as the vocabulary must not
 * need it afterwards. */
static int load(const char *path, struct ms_vocab **out, struct ms_err *err)
{
	struct ms_gguf *g = NULL;
	memset(err, 0, sizeof(*err));
	*out = NULL;
	int rc = ms_gguf_open(&g, path, err);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "%s: the GGUF itself was rejected "
			  "(rc %d): %s", path, rc, err->msg);
		return 1; /* not negative: the caller's checks all fail */
	}
	rc = ms_vocab_load(out, g, err);
	ms_gguf_free(g);
	return rc;
}

/* ---- positive controls ------------------------------------------------------------ */

static struct ms_vocab *load_ok(const char *cname, const struct gr_vocab *v)
{
	const char *path = file_path(cname);
	write_vocab(path, v);
	struct ms_vocab *voc;
	struct ms_err err;
	int rc = load(path, &voc, &err);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "%s: a valid vocabulary was rejected "
			  "(rc %d): %s", cname, rc, err.msg);
		ms_vocab_free(voc);
		return NULL;
	}
	return voc;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
	fprintf(stderr, "    %s (%zu):", what, n);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, " %d", ids[i]);
	fprintf(stderr, "\n");
}

struct tcase {
	const char *text;
	size_t len;           /* 0: strlen(text) */
	unsigned flags;
	int32_t ids[32];
	size_t n;
	const char *back;     /* detokenize(special): NULL = text itself */
	bool no_roundtrip;    /* invalid UTF-8: nothing to compare */
};

#define IDS(...) { __VA_ARGS__ }, sizeof((int32_t[]){ __VA_ARGS__ }) / sizeof(int32_t)
#define PS MS_TOKENIZE_PARSE_SPECIAL
#define AS MS_TOKENIZE_ADD_SPECIAL

static const struct tcase tcases[] = {
	/* rank beats position: (b c) rank 0 before (a b) rank 1 */
	{ "abc", 0, 0, IDS('a', GR_VOCAB_BC), NULL, false },
	{ "ab", 0, 0, IDS(GR_VOCAB_AB), NULL, false },
	{ "bc", 0, 0, IDS(GR_VOCAB_BC), NULL, false },
	/* equal ranks: leftmost first */
	{ "aaa", 0, 0, IDS(GR_VOCAB_AA, 'a'), NULL, false },
	{ "aaaa", 0, 0, IDS(GR_VOCAB_AA, GR_VOCAB_AA), NULL, false },
	/* a chain: (b c), then (Ġ a), then (Ġa bc); (a b) went stale */
	{ " abc", 0, 0, IDS(GR_VOCAB_SP_ABC), NULL, false },
	{ "abc abc", 0, 0, IDS('a', GR_VOCAB_BC, GR_VOCAB_SP_ABC), NULL, false },
	/* (a b) rank 1 before (Ġ a) rank 3, and (Ġ ab) is no merge */
	{ " ab", 0, 0, IDS(' ', GR_VOCAB_AB), NULL, false },
	{ " a", 0, 0, IDS(GR_VOCAB_SP_A), NULL, false },
	{ " aa", 0, 0, IDS(' ', GR_VOCAB_AA), NULL, false },
	{ "cab", 0, 0, IDS('c', GR_VOCAB_AB), NULL, false },
	/* special tokens: matched only with PARSE_SPECIAL */
	{ "<|im_start|>ab", 0, PS, IDS(GR_VOCAB_IM_START, GR_VOCAB_AB), NULL, false },
	{ "<|im_start|>ab", 0, 0,
	  IDS('<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>',
	      GR_VOCAB_AB), NULL, false },
	{ "ab<|endoftext|><|endoftext|>", 0, PS,
	  IDS(GR_VOCAB_AB, GR_VOCAB_EOT, GR_VOCAB_EOT), NULL, false },
	/* user-defined: always */
	{ "<tool>abc", 0, 0, IDS(GR_VOCAB_TOOL, 'a', GR_VOCAB_BC), NULL, false },
	/* ADD_SPECIAL with add_bos_token false adds nothing */
	{ "ab", 0, AS | PS, IDS(GR_VOCAB_AB), NULL, false },
	/* bytes: white space, a 2-byte character (Ġ is U+0120 -> c4 a0) */
	{ "\n\n", 0, 0, IDS('\n', '\n'), NULL, false },
	{ "\xc4\xa0", 0, 0, IDS(0xc4, 0xa0), NULL, false },
	/* invalid UTF-8: each bad byte is U+FFFD (ef bf bd) */
	{ "\xff", 0, 0, IDS(0xef, 0xbf, 0xbd), NULL, true },
	{ "a\x80" "b", 0, 0, IDS('a', 0xef, 0xbf, 0xbd, 'b'), NULL, true },
	/* an embedded NUL is a byte like any other */
	{ "a\0b", 3, 0, IDS('a', 0, 'b'), NULL, false },
};

static void tokenize_controls(const struct ms_vocab *voc)
{
	struct ms_tokens t = { 0 };
	struct ms_err err;
	for (size_t i = 0; i < sizeof(tcases) / sizeof(tcases[0]); i++) {
		const struct tcase *c = &tcases[i];
		size_t len = c->len ? c->len : strlen(c->text);
		int rc = ms_tokenize(voc, c->text, len, c->flags, &t, &err);
		if (rc) {
			t_fail_at(__FILE__, __LINE__, "tokenize case %zu '%s': rc "
				  "%d: %s", i, c->text, rc, err.msg);
			continue;
		}
		bool same = t.n == c->n;
		for (size_t k = 0; same && k < t.n; k++)
			same = t.ids[k] == c->ids[k];
		if (!same) {
			t_fail_at(__FILE__, __LINE__, "tokenize case %zu '%s' "
				  "(flags %u): wrong ids", i, c->text, c->flags);
			print_ids("got     ", t.ids, t.n);
			print_ids("expected", c->ids, c->n);
			continue;
		}
		if (c->no_roundtrip)
			continue;
		char *back = NULL;
		size_t bl = 0;
		rc = ms_detokenize(voc, t.ids, t.n, true, &back, &bl, &err);
		const char *want = c->back ? c->back : c->text;
		size_t wl = c->back ? strlen(c->back) : len;
		T_CHECK(rc == 0 && bl == wl && !memcmp(back, want, wl),
			"detokenize case %zu '%s': rc %d, got %zu bytes '%.*s'",
			i, c->text, rc, bl, (int)bl, back ? back : "");
		free(back);
	}

	/* the empty text: no ids, and the list is reset */
	int rc = ms_tokenize(voc, "", 0, PS | AS, &t, &err);
	T_CHECK(rc == 0 && t.n == 0, "empty text: rc %d, %zu ids", rc, t.n);

	/* without `special`, control tokens print nothing */
	int32_t ids[] = { GR_VOCAB_IM_START, 'a', GR_VOCAB_TOOL, GR_VOCAB_EOT };
	char *s = NULL;
	size_t sl = 0;
	rc = ms_detokenize(voc, ids, 4, false, &s, &sl, &err);
	T_CHECK(rc == 0 && sl == 7 && !strcmp(s, "a<tool>"),
		"detokenize without special: rc %d, '%s'", rc, s ? s : "");
	free(s);
	s = NULL;
	rc = ms_detokenize(voc, ids, 4, true, &s, &sl, &err);
	T_CHECK(rc == 0 && !strcmp(s, "<|im_start|>a<tool><|endoftext|>"),
		"detokenize with special: rc %d, '%s'", rc, s ? s : "");
	free(s);

	/* ids out of range: refused, never read */
	int32_t bad[] = { -1, GR_VOCAB_N, INT32_MAX, INT32_MIN };
	char buf[16];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		rc = ms_token_piece(voc, bad[i], true, buf, sizeof(buf));
		T_CHECK(rc == -EINVAL, "ms_token_piece(%d) = %d, expected "
			"-EINVAL", bad[i], rc);
		s = NULL;
		memset(&err, 0, sizeof(err));
		rc = ms_detokenize(voc, &bad[i], 1, true, &s, &sl, &err);
		T_CHECK(rc == -EINVAL && err.code == rc && err.msg[0] && !s,
			"ms_detokenize([%d]) = %d (msg '%s')", bad[i], rc, err.msg);
	}

	/* a piece longer than the buffer: the length, and nothing past cap */
	memset(buf, 0x5a, sizeof(buf));
	rc = ms_token_piece(voc, GR_VOCAB_EOT, true, buf, 4);
	T_CHECK(rc == 13 && !memcmp(buf, "<|en", 4) && buf[4] == 0x5a,
		"ms_token_piece(<|endoftext|>, cap 4) = %d, buf '%.8s'", rc, buf);
	rc = ms_token_piece(voc, 'a', true, NULL, 0);
	T_CHECK(rc == 1, "ms_token_piece('a', cap 0) = %d", rc);
	ms_tokens_free(&t);
}

static void check_readback(const struct ms_vocab *voc, const struct gr_vocab *v)
{
	T_EQ_U64(ms_vocab_n_tokens(voc), v->n);
	T_EQ_U64(ms_vocab_n_merges(voc), v->n_merges);
	T_CHECK(ms_vocab_pre(voc) == MS_PRE_QWEN2, "pre %d (%s)",
		ms_vocab_pre(voc), ms_pre_name(ms_vocab_pre(voc)));
	const struct ms_vocab_special *sp = ms_vocab_special(voc);
	T_EQ_U64(sp->bos, GR_VOCAB_EOT);
	T_EQ_U64(sp->eos, GR_VOCAB_EOT);
	T_EQ_U64(sp->pad, GR_VOCAB_EOT);
	T_CHECK(!sp->add_bos && !sp->add_eos, "add_bos %d add_eos %d",
		sp->add_bos, sp->add_eos);
	T_CHECK(ms_vocab_is_eog(voc, GR_VOCAB_EOT), "<|endoftext|> is no EOG");
	T_CHECK(!ms_vocab_is_eog(voc, 'a'), "'a' is EOG");
	for (uint32_t i = 0; i < v->n; i++) {
		size_t l;
		const char *t = ms_vocab_text(voc, (int32_t)i, &l);
		T_CHECK(t && l == strlen(v->tok[i]) && !memcmp(t, v->tok[i], l),
			"text of id %u: '%s', expected '%s'", i, t ? t : "(null)",
			v->tok[i]);
		T_CHECK(ms_vocab_find(voc, v->tok[i], strlen(v->tok[i])) ==
				(int32_t)i, "find('%s') = %d, expected %u", v->tok[i],
			ms_vocab_find(voc, v->tok[i], strlen(v->tok[i])), i);
		T_CHECK((int32_t)ms_vocab_type(voc, (int32_t)i) == v->type[i],
			"type of id %u: %d, expected %d", i,
			ms_vocab_type(voc, (int32_t)i), v->type[i]);
	}
	T_CHECK(ms_vocab_find(voc, "abc", 3) == MS_TOKEN_NULL, "find('abc')");
	T_CHECK(ms_vocab_text(voc, GR_VOCAB_N, NULL) == NULL, "text(n)");
	T_CHECK(ms_vocab_text(voc, -1, NULL) == NULL, "text(-1)");
	T_CHECK(ms_vocab_type(voc, -1) == MS_TOK_UNDEFINED, "type(-1)");
}

/* Valid variants at the edges of each check. */
static char long_a[MS_VOCAB_MAX_TOKEN_LEN + 2], long_b[MS_VOCAB_MAX_TOKEN_LEN + 2];
static char long_merge[2 * MS_VOCAB_MAX_TOKEN_LEN + 2];

static void edge_controls(void)
{
	struct gr_vocab v;
	struct ms_vocab *voc;
	struct ms_tokens t = { 0 };
	struct ms_err err;

	/* each special id at n - 1 */
	gr_vocab_default(&v);
	v.bos = v.eos = v.pad = GR_VOCAB_N - 1;
	if ((voc = load_ok("edge_ids_n_minus_1", &v))) {
		T_EQ_U64(ms_vocab_special(voc)->bos, GR_VOCAB_N - 1);
		ms_vocab_free(voc);
	}

	/* add_bos_token true with a BOS: ADD_SPECIAL puts it first */
	gr_vocab_default(&v);
	v.add_bos = 1;
	if ((voc = load_ok("edge_add_bos", &v))) {
		int rc = ms_tokenize(voc, "ab", 2, AS, &t, &err);
		T_CHECK(rc == 0 && t.n == 2 && t.ids[0] == GR_VOCAB_EOT &&
				t.ids[1] == GR_VOCAB_AB,
			"add_bos: rc %d, %zu ids, first %d", rc, t.n,
			t.n ? t.ids[0] : -1);
		rc = ms_tokenize(voc, "ab", 2, 0, &t, &err);
		T_CHECK(rc == 0 && t.n == 1, "add_bos without ADD_SPECIAL: %zu ids",
			t.n);
		ms_vocab_free(voc);
	}

	/* no bos key, a vocabulary over 11 tokens: llama.cpp's BPE default
	 * (id 11) stands, so add_bos_token true is fine */
	gr_vocab_default(&v);
	v.bos = -1;
	v.add_bos = 1;
	if ((voc = load_ok("edge_add_bos_default_id", &v))) {
		printf("  %-34s accepted, bos = %d (the default)\n",
		       "edge_add_bos_default_id", ms_vocab_special(voc)->bos);
		ms_vocab_free(voc);
	}

	/* types 0 (undefined), 5 (unused), 6 (byte) are types: accepted, and
	 * such tokens print nothing (as llama.cpp) */
	gr_vocab_default(&v);
	v.type['x'] = 0;
	v.type['y'] = 5;
	v.type['z'] = 6;
	if ((voc = load_ok("edge_types_0_5_6", &v))) {
		char buf[8];
		for (int c = 'x'; c <= 'z'; c++)
			T_CHECK(ms_token_piece(voc, c, true, buf, sizeof(buf)) == 0,
				"piece of a type-%d token is not empty",
				ms_vocab_type(voc, c));
		ms_vocab_free(voc);
	}

	/* no token_type key: all normal */
	gr_vocab_default(&v);
	v.write_types = false;
	if ((voc = load_ok("edge_no_token_type", &v))) {
		T_CHECK(ms_vocab_type(voc, GR_VOCAB_IM_START) == MS_TOK_NORMAL,
			"type without the key: %d",
			ms_vocab_type(voc, GR_VOCAB_IM_START));
		ms_vocab_free(voc);
	}

	/* no merges at all (an empty array), a repeated merge (the first rank
	 * stays) and a merge whose concatenation is no token */
	gr_vocab_default(&v);
	v.n_merges = 0;
	if ((voc = load_ok("edge_zero_merges", &v))) {
		int rc = ms_tokenize(voc, "abc", 3, 0, &t, &err);
		T_CHECK(rc == 0 && t.n == 3, "no merges: 'abc' is %zu ids", t.n);
		ms_vocab_free(voc);
	}
	gr_vocab_default(&v);
	v.merge[v.n_merges++] = "a b";  /* again, rank 5: rank 1 stays */
	v.merge[v.n_merges++] = "c a";  /* "ca" is no token */
	if ((voc = load_ok("edge_merge_repeat_and_no_result", &v))) {
		int rc = ms_tokenize(voc, "abc", 3, 0, &t, &err);
		T_CHECK(rc == 0 && t.n == 2 && t.ids[0] == 'a' &&
				t.ids[1] == GR_VOCAB_BC,
			"'abc' with a repeated merge: %zu ids", t.n);
		rc = ms_tokenize(voc, "ca", 2, 0, &t, &err);
		T_CHECK(rc == 0 && t.n == 2 && t.ids[0] == 'c' && t.ids[1] == 'a',
			"'ca' (merge without a token): %zu ids", t.n);
		ms_vocab_free(voc);
	}

	/* two tokens of exactly the cap, and a merge of them (8 KiB) */
	memset(long_a, 'a', MS_VOCAB_MAX_TOKEN_LEN);
	long_a[MS_VOCAB_MAX_TOKEN_LEN] = 0;
	memset(long_b, 'b', MS_VOCAB_MAX_TOKEN_LEN);
	long_b[MS_VOCAB_MAX_TOKEN_LEN] = 0;
	snprintf(long_merge, sizeof(long_merge), "%s %s", long_a, long_b);
	gr_vocab_default(&v);
	v.tok[v.n] = long_a;
	v.type[v.n++] = 1;
	v.tok[v.n] = long_b;
	v.type[v.n++] = 4; /* user-defined: tokenizes as a whole */
	v.merge[v.n_merges++] = long_merge;
	if ((voc = load_ok("edge_token_len_at_cap", &v))) {
		int rc = ms_tokenize(voc, long_b, MS_VOCAB_MAX_TOKEN_LEN, 0, &t,
				     &err);
		T_CHECK(rc == 0 && t.n == 1 && t.ids[0] == GR_VOCAB_N + 1,
			"a 4096-byte user-defined token: rc %d, %zu ids", rc, t.n);
		char *s = NULL;
		size_t sl = 0;
		rc = ms_detokenize(voc, (int32_t[]){ GR_VOCAB_N }, 1, true, &s,
				   &sl, &err);
		T_CHECK(rc == 0 && sl == MS_VOCAB_MAX_TOKEN_LEN,
			"detokenize the 4096-byte token: rc %d, %zu bytes", rc, sl);
		free(s);
		ms_vocab_free(voc);
	}

	/* a normal token of code points that are no byte-level characters:
	 * llama.cpp's [UNK_BYTE_0x..] pieces, long ones; the buffer bound holds */
	static char cjk[MS_VOCAB_MAX_TOKEN_LEN + 1];
	size_t cl = 0;
	while (cl + 3 <= MS_VOCAB_MAX_TOKEN_LEN) {
		memcpy(cjk + cl, "\xe4\xb8\xad", 3);
		cl += 3;
	}
	cjk[cl] = 0;
	gr_vocab_default(&v);
	v.tok[v.n] = cjk;
	v.type[v.n++] = 1;
	if ((voc = load_ok("edge_token_not_bytelevel", &v))) {
		char buf[32];
		memset(buf, 0x5a, sizeof(buf));
		int rc = ms_token_piece(voc, GR_VOCAB_N, true, buf, 16);
		T_CHECK(rc > 16 && buf[16] == 0x5a, "piece of a non-byte-level "
			"token: %d, byte past cap %#x", rc, (unsigned)(uint8_t)buf[16]);
		char *s = NULL;
		size_t sl = 0;
		rc = ms_detokenize(voc, (int32_t[]){ GR_VOCAB_N }, 1, true, &s,
				   &sl, &err);
		T_CHECK(rc == 0 && s && strlen(s) == sl, "detokenize it: rc %d", rc);
		free(s);
		ms_vocab_free(voc);
	}
	ms_tokens_free(&t);
}

/* ---- corruption cases ----------------------------------------------------------- */

/* What a case plants and what it expects back. */
struct want {
	int rc;               /* the errno engine.h promises */
	const char *key;      /* the message must contain it */
	const char *value;    /* and this, when not NULL (the bad value) */
	const char *huge_key; /* write this array as `huge_n` empty strings */
	uint64_t huge_n;
	/* raw value bytes for `raw_key` (replacing it), for wrong types */
	const char *raw_key;
	struct gr_buf raw;
};

typedef void case_fn(struct gr_vocab *v, struct want *w);
#define CASE(name) static void c_##name(struct gr_vocab *v, struct want *w)
#define K(s) "tokenizer.ggml." s

/* ids out of range */
CASE(bos_id_eq_n) { v->bos = GR_VOCAB_N; w->rc = -EINVAL; w->key = K("bos_token_id"); }
CASE(eos_id_eq_n) { v->eos = GR_VOCAB_N; w->rc = -EINVAL; w->key = K("eos_token_id"); }
CASE(pad_id_eq_n) { v->pad = GR_VOCAB_N; w->rc = -EINVAL; w->key = K("padding_token_id"); }
CASE(bos_id_u32max) { v->bos = UINT32_MAX; w->rc = -EINVAL; w->key = K("bos_token_id"); }
CASE(eos_id_2pow31) { v->eos = 1ll << 31; w->rc = -EINVAL; w->key = K("eos_token_id"); }

static void raw_u64(struct want *w, const char *key, uint64_t val)
{
	w->raw_key = key;
	gr_u32(&w->raw, GR_V_U64);
	gr_u64(&w->raw, val);
}

static void raw_i32(struct want *w, const char *key, int32_t val)
{
	w->raw_key = key;
	gr_u32(&w->raw, GR_V_I32);
	gr_u32(&w->raw, (uint32_t)val);
}

CASE(pad_id_u64_2pow40)
{
	(void)v;
	raw_u64(w, K("padding_token_id"), 1ull << 40);
	w->rc = -EINVAL;
	w->key = K("padding_token_id");
}
CASE(bos_id_u64max)
{
	(void)v;
	raw_u64(w, K("bos_token_id"), UINT64_MAX);
	w->rc = -EINVAL;
	w->key = K("bos_token_id");
}
CASE(bos_id_i32_negative)
{
	(void)v;
	raw_i32(w, K("bos_token_id"), -1);
	w->rc = -EINVAL;
	w->key = K("bos_token_id");
}
CASE(eot_id_eq_n)
{
	(void)v;
	raw_i32(w, K("eot_token_id"), GR_VOCAB_N);
	w->rc = -EINVAL;
	w->key = K("eot_token_id");
}
CASE(unknown_id_eq_n)
{
	(void)v;
	raw_i32(w, K("unknown_token_id"), GR_VOCAB_N);
	w->rc = -EINVAL;
	w->key = K("unknown_token_id");
}
CASE(bos_id_string)
{
	(void)v;
	w->raw_key = K("bos_token_id");
	gr_u32(&w->raw, GR_V_STRING);
	gr_str(&w->raw, "1");
	w->rc = -EINVAL;
	w->key = K("bos_token_id");
}
CASE(eos_id_f32)
{
	(void)v;
	w->raw_key = K("eos_token_id");
	gr_u32(&w->raw, GR_V_F32);
	gr_f32(&w->raw, 1.0f);
	w->rc = -EINVAL;
	w->key = K("eos_token_id");
}

/* token types */
CASE(token_type_7) { v->type['q'] = 7; w->rc = -EINVAL; w->key = K("token_type"); }
CASE(token_type_negative) { v->type[GR_VOCAB_TOOL] = -1; w->rc = -EINVAL; w->key = K("token_type"); }
CASE(token_type_int32_max) { v->type[0] = INT32_MAX; w->rc = -EINVAL; w->key = K("token_type"); }
CASE(token_type_int32_min) { v->type[GR_VOCAB_N - 1] = INT32_MIN; w->rc = -EINVAL; w->key = K("token_type"); }

static void types_n(struct want *w, uint64_t n)
{
	static int32_t t[GR_VOCAB_CAP];
	for (size_t i = 0; i < GR_VOCAB_CAP; i++)
		t[i] = 1;
	w->raw_key = K("token_type");
	gr_u32(&w->raw, GR_V_ARRAY);
	gr_u32(&w->raw, GR_V_I32);
	gr_u64(&w->raw, n);
	gr_put(&w->raw, t, n * 4);
	w->rc = -EINVAL;
	w->key = K("token_type");
}
CASE(token_type_count_short) { (void)v; types_n(w, GR_VOCAB_N - 1); }
CASE(token_type_count_long) { (void)v; types_n(w, GR_VOCAB_N + 1); }
CASE(token_type_count_0) { (void)v; types_n(w, 0); }
CASE(token_type_u8_array)
{
	(void)v;
	static uint8_t t[GR_VOCAB_N];
	memset(t, 1, sizeof(t));
	w->raw_key = K("token_type");
	gr_u32(&w->raw, GR_V_ARRAY);
	gr_u32(&w->raw, GR_V_U8);
	gr_u64(&w->raw, GR_VOCAB_N);
	gr_put(&w->raw, t, sizeof(t));
	w->rc = -EINVAL;
	w->key = K("token_type");
}
CASE(token_type_scalar)
{
	(void)v;
	raw_i32(w, K("token_type"), 1);
	w->rc = -EINVAL;
	w->key = K("token_type");
}

/* duplicates */
CASE(duplicate_token_merged) { v->tok[GR_VOCAB_AA] = "ab"; w->rc = -EINVAL; w->key = K("tokens"); }
CASE(duplicate_token_byte) { v->tok[GR_VOCAB_TOOL] = "a"; w->rc = -EINVAL; w->key = K("tokens"); }
CASE(duplicate_token_special)
{
	v->tok[GR_VOCAB_TOOL] = "<|im_start|>";
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(duplicate_token_last_first)
{
	v->tok[v->n] = gr_bytelevel(0);
	v->type[v->n++] = 1;
	w->rc = -EINVAL;
	w->key = K("tokens");
}

/* merges */
CASE(merge_absent_left) { v->merge[2] = "zz bc"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_absent_right) { v->merge[0] = "b cc"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_absent_both) { v->merge[v->n_merges++] = "xyz xyz"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_no_space) { v->merge[1] = "ab"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_empty) { v->merge[4] = ""; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_only_space) { v->merge[0] = " "; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_leading_space_only) { v->merge[0] = " a"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_trailing_space) { v->merge[0] = "a "; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_two_spaces) { v->merge[0] = "a  b"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_three_parts) { v->merge[0] = "a b c"; w->rc = -EINVAL; w->key = K("merges"); }
CASE(merge_special_token)
{
	/* split at the first space: the right side "<tool> a" is no token
	 * (both halves of it are) */
	v->merge[0] = "<|im_start|> <tool> a";
	w->rc = -EINVAL;
	w->key = K("merges");
}
CASE(merges_not_strings)
{
	(void)v;
	w->raw_key = K("merges");
	gr_u32(&w->raw, GR_V_ARRAY);
	gr_u32(&w->raw, GR_V_U32);
	gr_u64(&w->raw, 1);
	gr_u32(&w->raw, 7);
	w->rc = -EINVAL;
	w->key = K("merges");
}
CASE(merges_string)
{
	(void)v;
	w->raw_key = K("merges");
	gr_u32(&w->raw, GR_V_STRING);
	gr_str(&w->raw, "a b");
	w->rc = -EINVAL;
	w->key = K("merges");
}
CASE(merges_missing) { v->write_merges = false; w->rc = -ENOENT; w->key = K("merges"); }
CASE(merges_over_cap)
{
	(void)v;
	w->huge_key = K("merges");
	w->huge_n = (uint64_t)MS_VOCAB_MAX_MERGES + 1;
	w->value = "8388609";
	w->rc = -EINVAL;
	w->key = K("merges");
}

/* counts and lengths of tokens */
static char too_long[MS_VOCAB_MAX_TOKEN_LEN + 2];
CASE(token_over_4096_bytes)
{
	memset(too_long, 'q', MS_VOCAB_MAX_TOKEN_LEN + 1);
	too_long[MS_VOCAB_MAX_TOKEN_LEN + 1] = 0;
	v->tok[v->n] = too_long;
	v->type[v->n++] = 1;
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(token_empty) { v->tok[GR_VOCAB_TOOL] = ""; w->rc = -EINVAL; w->key = K("tokens"); }
CASE(token_empty_first) { v->tok[0] = ""; w->rc = -EINVAL; w->key = K("tokens"); }
CASE(tokens_0_entries)
{
	v->n = 0;
	v->write_types = false;
	v->n_merges = 0;
	v->bos = v->eos = v->pad = -1;
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(tokens_over_cap)
{
	(void)v;
	w->huge_key = K("tokens");
	w->huge_n = (uint64_t)MS_VOCAB_MAX_TOKENS + 1;
	w->value = "4194305";
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(tokens_missing)
{
	(void)v;
	w->raw_key = K("tokens"); /* replaced by an unrelated key below */
	w->rc = -ENOENT;
	w->key = K("tokens");
}

/* wrong key types */
CASE(tokens_array_of_i32)
{
	(void)v;
	w->raw_key = K("tokens");
	gr_u32(&w->raw, GR_V_ARRAY);
	gr_u32(&w->raw, GR_V_I32);
	gr_u64(&w->raw, 2);
	gr_u32(&w->raw, 1);
	gr_u32(&w->raw, 2);
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(tokens_string)
{
	(void)v;
	w->raw_key = K("tokens");
	gr_u32(&w->raw, GR_V_STRING);
	gr_str(&w->raw, "a");
	w->rc = -EINVAL;
	w->key = K("tokens");
}
CASE(pre_not_string)
{
	(void)v;
	raw_i32(w, K("pre"), 2);
	w->rc = -EINVAL;
	w->key = K("pre");
}
CASE(pre_array)
{
	(void)v;
	w->raw_key = K("pre");
	gr_u32(&w->raw, GR_V_ARRAY);
	gr_u32(&w->raw, GR_V_STRING);
	gr_u64(&w->raw, 1);
	gr_str(&w->raw, "qwen2");
	w->rc = -EINVAL;
	w->key = K("pre");
}
CASE(pre_unknown_foo) { v->pre = "foo"; w->rc = -ENOTSUP; w->key = K("pre"); }
CASE(pre_empty) { v->pre = ""; w->rc = -ENOTSUP; w->key = K("pre"); }
CASE(pre_prefix_of_known) { v->pre = "qwen"; w->rc = -ENOTSUP; w->key = K("pre"); }
CASE(pre_missing) { v->pre = NULL; w->rc = -ENOTSUP; w->key = K("pre"); }
CASE(model_llama) { v->model = "llama"; w->rc = -ENOTSUP; w->key = K("model"); }
CASE(model_empty) { v->model = ""; w->rc = -ENOTSUP; w->key = K("model"); }
CASE(model_gpt2_suffix) { v->model = "gpt2x"; w->rc = -ENOTSUP; w->key = K("model"); }
CASE(model_not_string)
{
	(void)v;
	raw_i32(w, K("model"), 2);
	w->rc = -EINVAL;
	w->key = K("model");
}
CASE(model_missing) { v->model = NULL; w->rc = -ENOENT; w->key = K("model"); }

/* add_bos / add_eos without the token */
CASE(add_bos_without_bos_small_vocab)
{
	/* 8 tokens: llama.cpp's default BOS (id 11) does not exist */
	v->n = 8;
	for (uint32_t i = 0; i < 8; i++)
		v->tok[i] = gr_bytelevel((uint8_t)('a' + i));
	v->n_merges = 1;
	v->merge[0] = "a b";
	v->bos = -1;
	v->eos = v->pad = 0;
	v->add_bos = 1;
	w->rc = -EINVAL;
	w->key = K("add_bos_token");
}
CASE(add_eos_without_eos_small_vocab)
{
	c_add_bos_without_bos_small_vocab(v, w);
	v->add_bos = 0;
	v->bos = 0;
	v->eos = -1;
	w->raw_key = K("add_eos_token");
	gr_u32(&w->raw, GR_V_BOOL);
	gr_u8(&w->raw, 1);
	w->key = K("add_eos_token");
}
CASE(add_bos_glm4)
{
	/* glm4 has no BOS whatever the key says */
	v->pre = "glm4";
	v->add_bos = 1;
	w->rc = -EINVAL;
	w->key = K("add_bos_token");
}
CASE(add_bos_u8)
{
	(void)v;
	w->raw_key = K("add_bos_token");
	gr_u32(&w->raw, GR_V_U8);
	gr_u8(&w->raw, 1);
	w->rc = -EINVAL;
	w->key = K("add_bos_token");
}
CASE(add_bos_string)
{
	(void)v;
	w->raw_key = K("add_bos_token");
	gr_u32(&w->raw, GR_V_STRING);
	gr_str(&w->raw, "true");
	w->rc = -EINVAL;
	w->key = K("add_bos_token");
}

struct vcase {
	const char *name;
	case_fn *fn;
};

#define C(name) { #name, c_##name }
static const struct vcase cases[] = {
	C(bos_id_eq_n), C(eos_id_eq_n), C(pad_id_eq_n), C(bos_id_u32max),
	C(eos_id_2pow31), C(pad_id_u64_2pow40), C(bos_id_u64max),
	C(bos_id_i32_negative), C(eot_id_eq_n), C(unknown_id_eq_n),
	C(bos_id_string), C(eos_id_f32),
	C(token_type_7), C(token_type_negative), C(token_type_int32_max),
	C(token_type_int32_min), C(token_type_count_short),
	C(token_type_count_long), C(token_type_count_0), C(token_type_u8_array),
	C(token_type_scalar),
	C(duplicate_token_merged), C(duplicate_token_byte),
	C(duplicate_token_special), C(duplicate_token_last_first),
	C(merge_absent_left), C(merge_absent_right), C(merge_absent_both),
	C(merge_no_space), C(merge_empty), C(merge_only_space),
	C(merge_leading_space_only), C(merge_trailing_space),
	C(merge_two_spaces), C(merge_three_parts), C(merge_special_token),
	C(merges_not_strings), C(merges_string), C(merges_missing),
	C(merges_over_cap),
	C(token_over_4096_bytes), C(token_empty), C(token_empty_first),
	C(tokens_0_entries), C(tokens_over_cap), C(tokens_missing),
	C(tokens_array_of_i32), C(tokens_string),
	C(pre_not_string), C(pre_array), C(pre_unknown_foo), C(pre_empty),
	C(pre_prefix_of_known), C(pre_missing),
	C(model_llama), C(model_empty), C(model_gpt2_suffix),
	C(model_not_string), C(model_missing),
	C(add_bos_without_bos_small_vocab), C(add_eos_without_eos_small_vocab),
	C(add_bos_glm4), C(add_bos_u8), C(add_bos_string),
};

static void run_case(const struct vcase *c)
{
	struct gr_vocab v;
	struct want w;
	gr_vocab_default(&v);
	memset(&w, 0, sizeof(w));
	gr_buf_init(&w.raw);
	c->fn(&v, &w);

	const char *path = file_path(c->name);
	if (w.huge_key) {
		write_huge_strs(path, &v, w.huge_key, w.huge_n);
	} else {
		struct gr_gguf g;
		gr_init(&g);
		gr_set_str(&g, "general.architecture", "test");
		gr_vocab_build(&g, &v);
		if (w.raw_key && w.raw.len)
			gr_set_raw_val(&g, w.raw_key, w.raw.p, w.raw.len);
		else if (w.raw_key) /* no value: the key goes */
			gr_del(&g, w.raw_key);
		int rc = gr_write(&g, path);
		gr_free(&g);
		if (rc)
			t_fatal("write %s: %s", path, strerror(-rc));
	}
	gr_buf_free(&w.raw);

	n_cases++;
	struct ms_vocab *voc = NULL;
	struct ms_err err;
	int rc = load(path, &voc, &err);
	bool ok = true;
	if (rc >= 0) {
		if (rc == 0)
			t_fail_at(__FILE__, __LINE__, "%s: ms_vocab_load ACCEPTED "
				  "the vocabulary", c->name);
		ms_vocab_free(voc);
		unlink(path);
		return;
	}
	if (voc) {
		t_fail_at(__FILE__, __LINE__, "%s: rc %d but *out is not NULL",
			  c->name, rc);
		ok = false;
	}
	if (rc != w.rc) {
		t_fail_at(__FILE__, __LINE__, "%s: rc %d (%s), expected %d (%s): "
			  "%s", c->name, rc, strerror(-rc), w.rc, strerror(-w.rc),
			  err.msg);
		ok = false;
	}
	if (err.code != rc) {
		t_fail_at(__FILE__, __LINE__, "%s: rc %d but err.code %d",
			  c->name, rc, err.code);
		ok = false;
	}
	if (!strstr(err.msg, w.key)) {
		t_fail_at(__FILE__, __LINE__, "%s: the message does not name %s: "
			  "'%s'", c->name, w.key, err.msg);
		ok = false;
	}
	if (w.value && !strstr(err.msg, w.value)) {
		t_fail_at(__FILE__, __LINE__, "%s: the message does not give the "
			  "bad value %s: '%s'", c->name, w.value, err.msg);
		ok = false;
	}
	printf("  %-34s rc=%d (%s): %s\n", c->name, rc, strerror(-rc), err.msg);
	n_rejected += ok;
	unlink(path);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* keep the log in order */
	ms_log_threshold = MS_LOG_ERR - 1;  /* messages are checked, not logged */
	dir = t_tmpdir();

	printf("positive controls:\n");
	struct gr_vocab v;
	gr_vocab_default(&v);
	struct ms_vocab *voc = load_ok("valid", &v);
	if (!voc)
		t_fatal("the valid vocabulary does not load; the cases below "
			"would prove nothing");
	check_readback(voc, &v);
	tokenize_controls(voc);
	ms_vocab_free(voc);
	edge_controls();
	if (t_failures)
		t_fatal("the positive controls failed; the cases below would "
			"prove nothing");
	printf("  the valid vocabulary loads, reads back and tokenizes %zu "
	       "strings to the expected ids; the edge variants load\n",
	       sizeof(tcases) / sizeof(tcases[0]));

	printf("corruption cases (each: one defect in the valid vocabulary):\n");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (argc > 1) {
			bool sel = false;
			for (int a = 1; a < argc; a++)
				sel |= !strcmp(argv[a], cases[i].name);
			if (!sel)
				continue;
		}
		run_case(&cases[i]);
	}
	printf("%d of %d vocabulary corruption classes rejected cleanly\n",
	       n_rejected, n_cases);
	return t_done();
}
