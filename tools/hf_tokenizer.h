/*
 * hf_tokenizer.h - a vocabulary for `moestream mkmodel`: imported from a
 * Hugging Face tokenizer.json (and the tokenizer_config.json beside it), or
 * the small built-in one, written as llama.cpp's converter writes it
 * (tokenizer.ggml.* and tokenizer.chat_template).
 *
 * The files are input: every count, id, length and type is checked, and a bad
 * file is one error (-EINVAL, -EFBIG for one over 512 MiB, -ENOENT/-EACCES
 * when it cannot be opened) whose message names the file and the field.
 */
#ifndef MS_HF_TOKENIZER_H
#define MS_HF_TOKENIZER_H

#include <stdbool.h>
#include <stdint.h>

#include "moestream/model.h"
#include "moestream/util.h"

/* Limits on what a tokenizer file may hold. */
#define TOOL_VOCAB_MAX_FILE (512ull << 20) /* bytes of one JSON file */
#define TOOL_VOCAB_MAX_TOKENS (1u << 24)   /* ids 0..2^24-1 */
#define TOOL_VOCAB_MAX_TOKEN_LEN 65536     /* bytes of one token or merge */
#define TOOL_VOCAB_MAX_TEMPLATE (1u << 20) /* bytes of the chat template */

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum tool_token_type {
	TOOL_TOKEN_NORMAL = 1,
	TOOL_TOKEN_UNKNOWN = 2,
	TOOL_TOKEN_CONTROL = 3,
	TOOL_TOKEN_USER_DEFINED = 4,
	TOOL_TOKEN_UNUSED = 5,
	TOOL_TOKEN_BYTE = 6,
};

struct tool_vocab {
	uint32_t n_tokens;         /* max id + 1 */
	const char **tokens;       /* [n_tokens] */
	int32_t *types;            /* [n_tokens], enum tool_token_type */
	uint32_t n_merges;
	const char **merges;       /* [n_merges], "a b", rank = index */
	const char *pre;           /* tokenizer.ggml.pre; NULL: not written */
	int64_t bos, eos, pad;     /* token ids; -1: not written */
	int add_bos, add_eos;      /* 0/1; -1: not written */
	const char *chat_template; /* NULL: not written */
	uint32_t n_added;          /* added_tokens in tokenizer.json */
	/* storage, private */
	void *json, *cfg;
	char *strs;
};

/* The pre-tokenizer names --tokenizer-pre accepts: qwen2, llama-bpe, glm4,
 * deepseek-v3, gpt-4o. */
bool tool_vocab_pre_known(const char *name);
#define TOOL_VOCAB_PRE_NAMES "qwen2, llama-bpe, glm4, deepseek-v3, gpt-4o"

/* Reads a Hugging Face tokenizer.json at `path` (a byte-level BPE; its
 * tokenizer_config.json beside it, when present, gives bos/eos/pad,
 * add_bos_token/add_eos_token and chat_template). tokenizer.ggml.pre is
 * recognised from the pre_tokenizer's regexes unless `pre` names one (then
 * it is written as given, unchecked against the regexes: GLM-4's "glm4" has
 * llama3's regex). 0, or -errno with one line in err; *v is then empty. */
int tool_vocab_from_hf(struct tool_vocab *v, const char *path, const char *pre,
		       struct ms_err *err);

/* The built-in vocabulary of n_tokens ids, deterministic: with n_tokens >=
 * 256, the 256 byte-level characters (ids 0..255), up to 8 merges and the
 * tokens they make (ids 256..), "<tN>" for the rest and, when there is room,
 * "<|endoftext|>" (control, eos) as the last id; pre "qwen2". llama.cpp loads
 * it. Below 256 ids: "<tN>" alone, no merges (llama.cpp refuses that one). */
int tool_vocab_builtin(struct tool_vocab *v, uint32_t n_tokens,
		       struct ms_err *err);

/* Writes tokenizer.ggml.model ("gpt2"), .pre, .tokens, .token_type,
 * .merges, the bos/eos/padding ids, add_bos_token/add_eos_token and
 * tokenizer.chat_template (those that are set). */
int tool_vocab_write(const struct tool_vocab *v, struct ms_gguf_writer *w,
		     struct ms_err *err);

void tool_vocab_free(struct tool_vocab *v);

#endif
