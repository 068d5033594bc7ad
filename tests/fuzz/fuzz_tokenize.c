/*
 * fuzz_tokenize.c - libFuzzer target for the tokenizer (engine/), with the
 * Qwen3 vocabulary: 151,643 tokens, 151,387 merges, the qwen2
 * pre-tokenizer, 26 added tokens.
 *
 * The vocabulary comes from a GGUF named by $MS_FUZZ_VOCAB, loaded once in
 * LLVMFuzzerInitialize (unset or unloadable: it says why and aborts).
 * tests/fuzz/run.sh writes that file once for `make fuzz`:
 *
 *   build/moestream mkmodel --preset tiny --sparse \
 *       --tokenizer ~/.cache/moestream/tokenizers/qwen3/tokenizer.json \
 *       -o build/fuzz/qwen3-vocab.gguf
 *
 * Each input is tokenized twice, without flags and with
 * MS_TOKENIZE_PARSE_SPECIAL | MS_TOKENIZE_ADD_SPECIAL, into one ms_tokens
 * reused across inputs (so stale scratch would show). For each:
 *
 *  - ms_tokenize succeeds and every id is inside the vocabulary; BOS / EOS
 *    stand first / last exactly when the model adds them;
 *  - detokenize(ids, special) gives the input back when the input is valid
 *    UTF-8 (the invariant), and in any case gives the input as
 *    llama.cpp's decoder reads it: each sequence its lead byte announces,
 *    with continuation bytes 10xxxxxx (overlong forms and surrogates pass),
 *    becomes its code point again; any other byte becomes U+FFFD, as does a
 *    4-byte form past U+10FFFF. This normaliser is written here from
 *    llama.cpp's unicode_cpt_from_utf8, not taken from engine/.
 *
 * A broken promise aborts, so libFuzzer keeps the input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/engine.h"
#include "moestream/model.h"
#include "moestream/util.h"

static void fuzz_tok_broken(const char *what, const uint8_t *data, size_t size,
			    unsigned flags)
{
	fprintf(stderr, "fuzz_tokenize: contract broken: %s (flags %u, %zu "
		"bytes:", what, flags, size);
	for (size_t i = 0; i < size && i < 64; i++)
		fprintf(stderr, " %02x", data[i]);
	fprintf(stderr, "%s)\n", size > 64 ? " ..." : "");
	abort();
}

/* Strictly valid UTF-8: shortest forms, no surrogates, at most U+10FFFF. */
static bool fuzz_utf8_valid(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint8_t c = s[i];
		size_t l;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0) {
			l = 2, cp = c & 0x1F, min = 0x80;
		} else if ((c & 0xF0) == 0xE0) {
			l = 3, cp = c & 0x0F, min = 0x800;
		} else if ((c & 0xF8) == 0xF0) {
			l = 4, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (n - i < l)
			return false;
		for (size_t k = 1; k < l; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += l;
	}
	return true;
}

/* The text as llama.cpp's decoder reads it, re-encoded (see the top). out
 * has room for 3 * n bytes; returns the length. */
static size_t fuzz_utf8_normalize(const uint8_t *s, size_t n, uint8_t *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		uint8_t c = s[i];
		size_t l = c < 0x80 ? 1 : !(c & 0x40) ? 0 : !(c & 0x20) ? 2
			 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
		bool ok = l && n - i >= l;
		uint32_t cp = l == 1 ? c : c & (0x7Fu >> l);
		for (size_t k = 1; ok && k < l; k++) {
			ok = (s[i + k] & 0xC0) == 0x80;
			cp = cp << 6 | (s[i + k] & 0x3F);
		}
		if (!ok || cp > 0x10FFFF)
			cp = 0xFFFD;
		i += ok ? l : 1;
		if (cp < 0x80) {
			out[o++] = (uint8_t)cp;
		} else if (cp < 0x800) {
			out[o++] = (uint8_t)(0xC0 | cp >> 6);
			out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
		} else if (cp < 0x10000) {
			out[o++] = (uint8_t)(0xE0 | cp >> 12);
			out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
			out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
		} else {
			out[o++] = (uint8_t)(0xF0 | cp >> 18);
			out[o++] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
			out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
			out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
		}
	}
	return o;
}

/* One input with one set of flags: the checks above. */
static void fuzz_tokenize_flags(const struct ms_vocab *v, struct ms_tokens *t,
				const uint8_t *data, size_t size, unsigned flags,
				bool valid, const uint8_t *norm, size_t norm_len)
{
	struct ms_err err;
	memset(&err, 0, sizeof(err));
	int rc = ms_tokenize(v, (const char *)data, size, flags, t, &err);
	if (rc) {
		fprintf(stderr, "ms_tokenize: rc %d: %s\n", rc, err.msg);
		fuzz_tok_broken("ms_tokenize failed", data, size, flags);
	}
	uint32_t n_tok = ms_vocab_n_tokens(v);
	for (size_t i = 0; i < t->n; i++)
		if (t->ids[i] < 0 || (uint32_t)t->ids[i] >= n_tok)
			fuzz_tok_broken("an id outside the vocabulary", data, size,
					flags);

	/* the ids of the text itself: what the model adds is taken off */
	const struct ms_vocab_special *sp = ms_vocab_special(v);
	const int32_t *ids = t->ids;
	size_t n = t->n;
	if ((flags & MS_TOKENIZE_ADD_SPECIAL) && sp->add_bos) {
		if (!n || ids[0] != sp->bos)
			fuzz_tok_broken("BOS is not first", data, size, flags);
		ids++, n--;
	}
	if ((flags & MS_TOKENIZE_ADD_SPECIAL) && sp->add_eos) {
		if (!n || ids[n - 1] != sp->eos)
			fuzz_tok_broken("EOS is not last", data, size, flags);
		n--;
	}
	if (!size && n)
		fuzz_tok_broken("ids for the empty text", data, size, flags);

	char *back = NULL;
	size_t bl = 0;
	rc = ms_detokenize(v, ids, n, true, &back, &bl, &err);
	if (rc) {
		fprintf(stderr, "ms_detokenize: rc %d: %s\n", rc, err.msg);
		fuzz_tok_broken("ms_detokenize failed", data, size, flags);
	}
	if (back[bl] != '\0')
		fuzz_tok_broken("detokenized text not NUL-terminated", data, size,
				flags);
	if (valid && (bl != size || memcmp(back, data, size))) {
		fprintf(stderr, "detokenized (%zu bytes): %.*s\n", bl, (int)bl,
			back);
		fuzz_tok_broken("detokenize(tokenize(s)) != s for valid UTF-8",
				data, size, flags);
	}
	if (bl != norm_len || memcmp(back, norm, norm_len)) {
		fprintf(stderr, "detokenized (%zu bytes) differs from the "
			"normalised input (%zu bytes)\n", bl, norm_len);
		fuzz_tok_broken("detokenize(tokenize(s)) != s as llama.cpp "
				"decodes it", data, size, flags);
	}
	free(back);
}

/* The entry the fuzzer (and a seed replay) uses. */
static void fuzz_tokenize_one(const struct ms_vocab *v, struct ms_tokens *t,
			      const uint8_t *data, size_t size)
{
	uint8_t *norm = malloc(3 * size + 1);
	if (!norm) {
		perror("malloc");
		abort();
	}
	size_t norm_len = fuzz_utf8_normalize(data, size, norm);
	bool valid = fuzz_utf8_valid(data, size);
	if (valid && (norm_len != size || memcmp(norm, data, size)))
		fuzz_tok_broken("the fuzzer's own normaliser changed valid "
				"UTF-8", data, size, 0);
	fuzz_tokenize_flags(v, t, data, size, 0, valid, norm, norm_len);
	fuzz_tokenize_flags(v, t, data, size,
			    MS_TOKENIZE_PARSE_SPECIAL | MS_TOKENIZE_ADD_SPECIAL,
			    valid, norm, norm_len);
	free(norm);
}

/* The vocabulary of the GGUF at path: 0, or -errno with err's message (the
 * fuzzer and t_fuzz_seeds_tokenize load theirs the same way). */
static int fuzz_tokenize_open(const char *path, struct ms_vocab **v,
			      struct ms_err *err)
{
	struct ms_gguf *g = NULL;
	*v = NULL;
	int rc = ms_gguf_open(&g, path, err);
	if (!rc)
		rc = ms_vocab_load(v, g, err);
	ms_gguf_free(g);
	return rc;
}

#ifndef FUZZ_TOKENIZE_NO_MAIN
/* Loads the vocabulary of $MS_FUZZ_VOCAB, or says why not: NULL. */
static struct ms_vocab *fuzz_tokenize_vocab(void)
{
	const char *path = getenv("MS_FUZZ_VOCAB");
	if (!path || !*path) {
		fprintf(stderr, "fuzz_tokenize: MS_FUZZ_VOCAB is not set: it names "
			"a GGUF with the Qwen3 vocabulary (tests/fuzz/run.sh "
			"tokenize writes build/fuzz/qwen3-vocab.gguf with "
			"build/moestream mkmodel --preset tiny --sparse "
			"--tokenizer .../qwen3/tokenizer.json)\n");
		return NULL;
	}
	struct ms_err err;
	memset(&err, 0, sizeof(err));
	struct ms_vocab *v;
	if (fuzz_tokenize_open(path, &v, &err)) {
		fprintf(stderr, "fuzz_tokenize: MS_FUZZ_VOCAB=%s: %s\n", path,
			err.msg);
		return NULL;
	}
	return v;
}

static struct ms_vocab *fuzz_vocab;
static struct ms_tokens fuzz_toks;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	ms_log_threshold = MS_LOG_ERR - 1;
	fuzz_vocab = fuzz_tokenize_vocab();
	if (!fuzz_vocab)
		abort();
	fprintf(stderr, "fuzz_tokenize: %u tokens, %u merges, pre %s\n",
		ms_vocab_n_tokens(fuzz_vocab), ms_vocab_n_merges(fuzz_vocab),
		ms_pre_name(ms_vocab_pre(fuzz_vocab)));
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_tokenize_one(fuzz_vocab, &fuzz_toks, data, size);
	return 0;
}
#endif
