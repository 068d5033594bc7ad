/*
 * tok_corpus.h - a seeded corpus of strings for tokenizer tests and
 * benchmarks (tools/tok_corpus.c says what is in it and where it comes from).
 */
#ifndef MS_TOK_CORPUS_H
#define MS_TOK_CORPUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOK_CORPUS_KINDS 12

struct tok_corpus {
	char **s;       /* NUL-terminated, but may hold NULs: use len */
	size_t *len;
	uint8_t *kind;  /* index into tok_corpus_kinds */
	size_t n;
};

extern const char *const tok_corpus_kinds[TOK_CORPUS_KINDS];

/* n strings for the seed: 0 or -ENOMEM. The same seed gives the same
 * strings on the same system. */
int tok_corpus_make(struct tok_corpus *c, size_t n, uint64_t seed);
void tok_corpus_free(struct tok_corpus *c);

/* Strict UTF-8 (no overlong forms, surrogates or values past U+10FFFF). */
bool tok_corpus_valid_utf8(const char *s, size_t n);

/* llama.cpp's UTF-8 decoder takes F0..F7 with three continuation bytes as
 * a code point even past U+10FFFF, then throws while re-encoding it, which
 * ends the process (std::terminate through its C API): true for a string
 * that holds such a sequence (llama.cpp cannot be asked about it). */
bool tok_corpus_llama_aborts(const char *s, size_t n);

#endif
