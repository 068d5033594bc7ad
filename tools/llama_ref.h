/*
 * llama_ref.h - llama.cpp as a reference, by dlopen (CPU only).
 *
 * For tests and benchmarks: load a GGUF with llama.cpp's own library, tokenize
 * with it, decode a batch and read the logits, so that what moestream does can
 * be compared with what llama.cpp does on the same file. The library is the
 * pinned npm package @node-llama-cpp/linux-x64@3.22.1 that tests/fetch-ggml.sh
 * unpacks (libllama.v0.5.0.so, libggml.v0.5.0.so, libggml-base.so and the CPU
 * backends libggml-cpu-<variant>.so in one folder). It is never a runtime
 * dependency: nothing here is linked against it, and where it is missing every
 * call answers an error that says so.
 *
 * Every function returns 0 or a negative errno and leaves one line in `err`
 * (may be NULL) on failure; llama.cpp's own last error line is quoted there.
 * llama.cpp logs nothing unless MS_LLAMA_LOG=1 is set in the environment.
 *
 * Not thread-safe: one thread uses one struct ms_llref at a time. Several may
 * be open at once (the libraries are loaded once per process, from the first
 * folder given, and stay loaded).
 */
#ifndef MS_LLAMA_REF_H
#define MS_LLAMA_REF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/util.h"

struct ms_llref; /* one loaded model (and, unless vocab-only, a context) */

/* Where llama.cpp's libraries are: dir if not NULL, else $MS_LLAMA_DIR, else
 * ${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/llama-3.22.1. Into
 * buf; returns buf. */
const char *ms_llref_default_dir(const char *dir, char *buf, size_t len);

/* Loads gguf_path with llama.cpp (libraries from `dir`, as above) and makes
 * a context of n_ctx tokens (0 = 512; n_batch = n_ctx so that one
 * ms_llref_decode takes up to n_ctx tokens) run by n_threads threads (0 = the
 * online CPUs). -ENOENT when the libraries are missing (the message quotes
 * tests/fetch-ggml.sh's FETCH_FAILED reason when there is one), -EPROTO when
 * the library's structs are not laid out as this file expects, -EINVAL when
 * llama.cpp refuses the model (its last error line quoted). */
int ms_llref_open(struct ms_llref **out, const char *dir, const char *gguf_path,
		  uint32_t n_ctx, int n_threads, struct ms_err *err);

/* The same with more of llama.cpp's parameters, for benchmarks. */
struct ms_llref_opts {
	uint32_t n_ctx;       /* 0: 512 */
	uint32_t n_batch;     /* the most tokens one decode takes; 0: n_ctx */
	uint32_t n_ubatch;    /* llama.cpp's physical batch; 0: min(n_batch, 512) */
	int n_threads;        /* 0: the online CPUs */
	bool no_extra_bufts;  /* use_extra_bufts = false, as llama-cli's
				 --no-repack: no weights copied into repacked
				 (AMX, CPU_REPACK) buffers, so that every
				 weight stays in the file's mapping */
};
int ms_llref_open_opts(struct ms_llref **out, const char *dir,
		       const char *gguf_path, const struct ms_llref_opts *o,
		       struct ms_err *err);

/* The same with llama.cpp's vocab_only: the vocabulary alone is read (no
 * tensors, no context), which is fast; only n_vocab, tokenize and piece may
 * be called (decode answers -EINVAL). */
int ms_llref_open_vocab(struct ms_llref **out, const char *dir,
			const char *gguf_path, struct ms_err *err);

/* Frees the context and the model; NULL is a no-op. */
void ms_llref_close(struct ms_llref *r);

/* llama_vocab_n_tokens. */
int32_t ms_llref_n_vocab(const struct ms_llref *r);

/* llama_tokenize of text[0..len): *ids malloc'ed (the caller frees; NULL when
 * *n is 0), *n their count. add_special / parse_special as llama_tokenize's
 * (add BOS/EOS as the model says; match control tokens in the text). */
int ms_llref_tokenize(struct ms_llref *r, const char *text, size_t len,
		      bool add_special, bool parse_special, int32_t **ids,
		      size_t *n, struct ms_err *err);

/* llama_token_to_piece of `id` into buf (not NUL-terminated; special tokens
 * shown when `special`, else empty): its length, or -EINVAL for an id out of
 * range, -ENOBUFS when cap is too small. */
int ms_llref_piece(struct ms_llref *r, int32_t id, bool special, char *buf,
		   size_t cap);

/* Clears the KV cache (llama_memory_clear on llama_get_memory, data too). */
void ms_llref_reset(struct ms_llref *r);

/* Decodes ids[0..n) at positions pos0.. of sequence 0 in one llama_decode,
 * logits requested for every token; writes them to logits[n * n_vocab] (row
 * i = token i). n must be 1..n_batch (n_ctx unless opened with opts); -EINVAL
 * otherwise or for a vocab-only ref, -EIO when llama_decode fails (its
 * return value said). */
int ms_llref_decode(struct ms_llref *r, const int32_t *ids, size_t n,
		    int32_t pos0, float *logits, struct ms_err *err);

/* The same with logits requested for the last token only (what a generator
 * asks for, so llama.cpp runs its output head on one row): logits[n_vocab],
 * or NULL for none. */
int ms_llref_decode_last(struct ms_llref *r, const int32_t *ids, size_t n,
			 int32_t pos0, float *logits, struct ms_err *err);

struct ms_chat_msg; /* moestream/engine.h */

/* llama_chat_apply_template of msgs[0..n) (no model needed): tmpl is a
 * built-in name ("chatml", "chatglm4", ...) or a model's Jinja text, which
 * llama.cpp does not run but recognises by its markers and renders with the
 * matching built-in. add_ass ends with the assistant's prompt. *out malloc'ed
 * and NUL-terminated. -ENOTSUP when llama.cpp knows no such template (its
 * first line quoted), -ENOENT when the libraries are missing. */
int ms_llref_chat_apply(const char *dir, const char *tmpl,
			const struct ms_chat_msg *msgs, size_t n, bool add_ass,
			char **out, struct ms_err *err);

#endif
