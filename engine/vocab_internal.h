/*
 * engine/vocab_internal.h - the vocabulary as the tokenizer sees it. Private
 * to engine/ (vocab.c builds it, tokenizer.c reads it).
 */
#ifndef MS_ENGINE_VOCAB_INTERNAL_H
#define MS_ENGINE_VOCAB_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 0
#include <pcre2.h>

#include "moestream/engine.h"

/* One merge: the pair of token ids, its rank, the token it makes (or
 * MS_TOKEN_NULL when the concatenation is no token). */
struct ms_merge {
	uint64_t key;   /* (left id << 32 | right id) + 1; 0 = empty slot */
	uint32_t rank;
	int32_t result;
};

/* A pre-tokenizer step that runs through PCRE2: on the "collapsed" text
 * (one byte per code point, see tokenizer.c) or on the code points. */
struct ms_pre_regex {
	bool collapsed;
	pcre2_code_8 *re8;   /* collapsed */
	pcre2_code_32 *re32; /* code points */
};

#define MS_PRE_MAX_REGEX 3

struct ms_vocab {
	uint32_t n;
	struct ms_gguf_strs tokens;  /* text of each id */
	uint8_t *type;               /* enum ms_tok_type per id */
	bool *eog;

	/* text -> id: open addressing over id + 1 */
	uint32_t *tok_slot;
	uint64_t tok_mask;

	struct ms_merge *merge;      /* open addressing on key */
	uint64_t merge_mask;
	uint32_t n_merges;

	/* the token of each byte's byte-level character, and what a byte that
	 * has none falls back to (llama.cpp looks up the character's UTF-8
	 * bytes one by one and drops those that are no token) */
	int32_t byte_tok[256];
	int32_t byte_fallback[256][2];

	/* control, user-defined and unknown tokens, longest text first */
	int32_t *special;
	uint32_t n_special;

	enum ms_pre pre;
	bool ignore_merges;
	int n_regex;
	struct ms_pre_regex regex[MS_PRE_MAX_REGEX];
	struct ms_vocab_special sp;
};

uint64_t ms_vocab_hash(const char *s, size_t len);

#endif
