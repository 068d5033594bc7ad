/*
 * engine.h - the model runtime (engine/): for now the vocabulary and the
 * tokenizer. The forward pass, KV cache, sampler and expert source follow
 * here (see DESIGN.md, "Rooms").
 *
 * The tokenizer is built from a GGUF's metadata alone (the keys llama.cpp's
 * converter writes: tokenizer.ggml.model/pre/tokens/token_type/merges and the
 * special ids) and produces the ids llama.cpp's llama_tokenize() does for the
 * same file: byte-level BPE ("gpt2") with the pre-tokenizer named by
 * tokenizer.ggml.pre (qwen2, llama-bpe, glm4, deepseek-v3, gpt-4o), special
 * and added tokens matched as whole strings first, merges applied by rank.
 *
 * Everything in the vocabulary is file input: the reader rejects ids out of
 * range, duplicate tokens, merges naming absent tokens and absurd counts or
 * lengths, naming the field (negative errno + one line in struct ms_err).
 */
#ifndef MOESTREAM_ENGINE_H
#define MOESTREAM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/model.h"
#include "moestream/util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Token types as GGUF stores them (tokenizer.ggml.token_type). */
enum ms_tok_type {
	MS_TOK_UNDEFINED = 0,
	MS_TOK_NORMAL = 1,
	MS_TOK_UNKNOWN = 2,
	MS_TOK_CONTROL = 3,
	MS_TOK_USER_DEFINED = 4,
	MS_TOK_UNUSED = 5,
	MS_TOK_BYTE = 6,
};

/* Pre-tokenizers (tokenizer.ggml.pre). */
enum ms_pre {
	MS_PRE_QWEN2,
	MS_PRE_LLAMA3,      /* "llama-bpe" */
	MS_PRE_GLM4,        /* "glm4": llama3's regex */
	MS_PRE_DEEPSEEK3,   /* "deepseek-v3" */
	MS_PRE_GPT4O,       /* "gpt-4o" */
	MS_PRE_COUNT
};

#define MS_VOCAB_MAX_TOKENS (1u << 22)     /* 4M tokens: 20x the largest real */
#define MS_VOCAB_MAX_MERGES (1u << 23)
#define MS_VOCAB_MAX_TOKEN_LEN 4096        /* bytes of one token's text */
#define MS_TOKEN_NULL (-1)

struct ms_vocab;

/* Keys llama.cpp names the special ids by (tokenizer.ggml.<name>_token_id). */
struct ms_vocab_special {
	int32_t bos, eos, eot, eom, unk, sep, pad, mask; /* MS_TOKEN_NULL if none */
	bool add_bos, add_eos;
};

/* Builds the vocabulary and its tokenizer from an open GGUF. -ENOENT with a
 * message naming the missing key when the model has no tokenizer; -EINVAL
 * naming the field for anything malformed; -ENOTSUP for a tokenizer model or
 * pre-tokenizer this engine does not implement (the message lists those it
 * does). */
int ms_vocab_load(struct ms_vocab **out, const struct ms_gguf *g,
		  struct ms_err *err);
void ms_vocab_free(struct ms_vocab *v);

uint32_t ms_vocab_n_tokens(const struct ms_vocab *v);
uint32_t ms_vocab_n_merges(const struct ms_vocab *v);
enum ms_pre ms_vocab_pre(const struct ms_vocab *v);
const char *ms_pre_name(enum ms_pre pre);
const struct ms_vocab_special *ms_vocab_special(const struct ms_vocab *v);
/* The token's text as stored (byte-level encoded for normal tokens). */
const char *ms_vocab_text(const struct ms_vocab *v, int32_t id, size_t *len);
enum ms_tok_type ms_vocab_type(const struct ms_vocab *v, int32_t id);
/* End of generation: eos, eot, eom and the texts llama.cpp treats so
 * (<|im_end|>, <|endoftext|>, <|return|>, ...). */
bool ms_vocab_is_eog(const struct ms_vocab *v, int32_t id);
/* The id of a token text, or MS_TOKEN_NULL. */
int32_t ms_vocab_find(const struct ms_vocab *v, const char *text, size_t len);

/* A growing list of ids; reuse one across calls (it keeps its scratch). */
struct ms_tokens {
	int32_t *ids;
	size_t n, cap;
	void *scratch;  /* the tokenizer's buffers, owned */
};
void ms_tokens_free(struct ms_tokens *t);

#define MS_TOKENIZE_ADD_SPECIAL 1u   /* bos/eos as the model says */
#define MS_TOKENIZE_PARSE_SPECIAL 2u /* match control tokens in the text */

/* Tokenizes len bytes of text (any bytes: invalid UTF-8 becomes U+FFFD as
 * in llama.cpp) into out (out->n reset first). 0 or -ENOMEM / -EOVERFLOW. */
int ms_tokenize(const struct ms_vocab *v, const char *text, size_t len,
		unsigned flags, struct ms_tokens *out, struct ms_err *err);

/* The bytes of one token: byte-level decoded for normal tokens, the text of
 * user-defined ones, control tokens only when `special` (else nothing).
 * Returns the length (which may exceed cap: nothing past cap is written) or
 * -EINVAL for an id out of range. */
int ms_token_piece(const struct ms_vocab *v, int32_t id, bool special,
		   char *buf, size_t cap);

/* All pieces concatenated into a fresh NUL-terminated buffer (*out, *len). */
int ms_detokenize(const struct ms_vocab *v, const int32_t *ids, size_t n,
		  bool special, char **out, size_t *len, struct ms_err *err);


/* ------------------------------------------------------------------------ */
/* Sampling (engine/sampler.c).                                             */

struct ms_sampler_params {
	float temp;            /* <= 0: greedy (argmax, lowest id on ties) */
	int32_t top_k;         /* <= 0: off */
	float top_p;           /* >= 1: off */
	float min_p;           /* <= 0: off */
	float repeat_penalty;  /* 1: off */
	int32_t repeat_last_n; /* tokens of history the penalty looks at */
	uint64_t seed;
};

/* llama.cpp's defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1.0, repeat_last_n 64; seed from the clock. */
void ms_sampler_params_default(struct ms_sampler_params *p);

struct ms_sampler;
int ms_sampler_init(struct ms_sampler **out, const struct ms_sampler_params *p,
		    uint32_t n_vocab, struct ms_err *err);
void ms_sampler_free(struct ms_sampler *s);
/* Adds a token to the history the repetition penalty sees (prompt tokens
 * and sampled ones). */
void ms_sampler_accept(struct ms_sampler *s, int32_t token);
/* Picks the next token from n_vocab logits (not modified): penalty, then
 * top-k, top-p, min-p, temperature, a draw from the seeded generator. */
int32_t ms_sampler_sample(struct ms_sampler *s, const float *logits);

/* ------------------------------------------------------------------------ */
/* Chat templates (engine/chat.c): built-in renderers, chosen from the      */
/* model's tokenizer.chat_template.                                         */

enum ms_chat_tmpl {
	MS_CHAT_NONE = 0,
	MS_CHAT_QWEN3,  /* ChatML with Qwen3's thinking markers */
	MS_CHAT_GLM4,   /* GLM-4.5 / 4.6: [gMASK]<sop><|user|>\n... */
	MS_CHAT_GLM47,  /* GLM-4.7: no newline after the role tags, and the
			   assistant's prompt opens <think> */
	MS_CHAT_COUNT
};

struct ms_chat_msg {
	const char *role;    /* "system", "user", "assistant" */
	const char *content;
};

/* "qwen3", "glm4", "glm47", "none". */
const char *ms_chat_name(enum ms_chat_tmpl t);
/* By name (as --chat-template takes it): the template, or MS_CHAT_NONE. */
enum ms_chat_tmpl ms_chat_from_name(const char *name);
/* Recognises the model's Jinja template; -ENOTSUP with a message that says
 * what was found (its first line) when none of ours matches, -ENOENT when
 * the model has none. */
int ms_chat_detect(const char *jinja, enum ms_chat_tmpl *out,
		   struct ms_err *err);
/* Renders messages as the model's template would, ending with the
 * assistant's prompt when add_generation_prompt: *out malloc'ed. */
int ms_chat_render(enum ms_chat_tmpl t, const struct ms_chat_msg *msgs,
		   size_t n, bool add_generation_prompt, char **out,
		   struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* The decoder (engine/engine.c, engine/forward.c, engine/arch_*.c): the    */
/* forward pass of glm4moe and qwen3moe on the CPU, resident tensors in the */
/* engine's memory, routed experts only through an expert source.          */

struct ms_engine_config {
	const char *model;      /* a GGUF (any shard of a split model) */
	const char *socket;     /* moestreamd's socket; NULL: embedded cache */
	uint64_t cache_size;    /* embedded cache bytes; 0: what RAM allows */
	uint32_t n_ctx;         /* KV cache tokens; 0: 4096 */
	uint32_t n_batch;       /* prefill tokens per pass; 0: 64 */
	int n_threads;          /* 0: all online CPUs */
	bool no_speculate;      /* no speculative-routing hints */
	bool quiet;             /* no lines on stderr at open */
	bool kv_f32;            /* an f32 KV cache (default f16, as
				   llama.cpp's) */
	uint32_t n_seq;         /* sequences with a KV cache each (0: 1);
				   ms_engine_eval_seqs runs tokens of
				   several in one batch */
	bool gpu;               /* --device gpu: the forward pass on GPU
				   gpu_device (engine/forward_gpu.c): the
				   resident tensors and the KV cache in VRAM,
				   routed experts copied into a VRAM expert
				   cache of vram_experts bytes (0: what VRAM
				   allows) from the expert source */
	int gpu_device;
	uint64_t vram_experts;
	bool gpu_no_graph;      /* with every expert in VRAM, one-token steps
				   are replayed from a CUDA graph (captured on
				   the second); true: launched one by one */
	bool gpu_no_pdl;        /* on a device that has it (Hopper on), each
				   kernel of a step may start while the one
				   before ends (programmatic dependent
				   launch: ms_gpu_ctx_set_pdl); true: each
				   waits for the one before, as plain
				   launches do */
	bool gpu_router_cublas; /* with every expert in VRAM, a one-token
				   step's f32 router is one launch, its
				   product and top-k (ms_gpu_route_gemv_topk);
				   true: the product through cuBLAS, then the
				   top-k (a baseline for bench gpu-decode) */
	bool gpu_profile;       /* one-token steps launched one by one (no
				   graph) with a GPU event between the parts
				   of each block: ms_engine_gpu_profile */
	bool q8_activations;    /* compute as llama.cpp's CPU backend does:
				   activations rounded to 8 bits before each
				   quantised product, and (with the f16 KV
				   cache) attention in batches of under 64
				   tokens with its flash attention's f16
				   rounding (ms_attn_f16) */
};

struct ms_engine_info {
	char arch[64];
	uint32_t n_block_run, n_moe_run, n_vocab, n_ctx, n_batch, n_seq;
	uint32_t n_expert;          /* routed experts per MoE layer */
	uint32_t n_expert_used;     /* routed experts per token */
	uint64_t resident_bytes;   /* tensors loaded into the engine */
	uint64_t resident_huge_bytes; /* of their memory, on 2 MiB pages */
	uint64_t resident_token_bytes; /* of them, what a token reads: all but
					  the embedding (a row of it) */
	uint64_t kv_bytes;
	uint64_t cache_bytes;      /* the embedded cache (0 through a daemon) */
	uint64_t expert_bytes;     /* routed experts of the layers run */
	char cache_mode[256];      /* how the cache's memory was made */
	char gpu_name[256];        /* --device gpu: the device */
	uint64_t vram_resident_bytes; /* resident tensors in VRAM */
	uint64_t resident_host_bytes; /* --device gpu: of the resident
					tensors' memory, what the host keeps
					(the embedding, the routers' biases) */
	uint64_t vram_kv_bytes;
	uint64_t vram_expert_bytes;   /* the VRAM expert cache */
	uint32_t vram_expert_slots;   /* experts it holds */
	bool vram_all_experts;        /* every expert of the layers run is in
					 VRAM (loaded at open): one-token
					 steps route on the GPU, with no copy
					 back per layer */
	bool gpu_graph;               /* and are replayed from a CUDA graph
					 (set once one has been made) */
	uint32_t gpu_graph_nodes;     /* that graph's nodes (kernels, copies) */
	bool gpu_pdl;                 /* kernels launched with programmatic
					 dependent launch (gpu_no_pdl) */
	char gpu_pdl_note[192];       /* why not, when not ("" when on) */
	bool gpu_router_fused;        /* a step has routed with the router's
					 product and top-k in one launch
					 (gpu_router_cublas) */
	char vram_copy_mode[256];     /* where copies into VRAM read from: the
					 GPU tier's host_mode ("registered
					 ..." or "pageable: <why>") */
};

struct ms_engine_stats {
	uint64_t tokens;           /* evaluated */
	uint64_t expert_hits, expert_misses;
	uint64_t expert_bytes_read;  /* what the cache read from disk */
	uint64_t io_busy_ns;       /* the cache's disk time with a read in
				      flight (through a daemon: the daemon's,
				      over all its clients) */
	uint64_t wait_ns;          /* blocked waiting for experts */
	uint64_t spec_routed;      /* experts routed in layers that had a hint */
	uint64_t spec_hit;         /* of which the hint named */
	uint64_t vram_hits, vram_misses; /* --device gpu: experts found in
					    VRAM, and copied in */
	uint64_t vram_copied_bytes;
	uint64_t vram_copy_ns;      /* the GPU tier's copy stream busy (CUDA
				       events), through moestreamd only */
};

struct ms_engine;

/* Opens the model, loads its resident tensors and vocabulary, sizes the KV
 * cache and starts the expert source. -ENOTSUP naming the architecture and
 * the supported ones for any other; -ENOENT when the model has no
 * tokenizer. */
int ms_engine_open(struct ms_engine **out, const struct ms_engine_config *cfg,
		   struct ms_err *err);
void ms_engine_close(struct ms_engine *e);
const struct ms_vocab *ms_engine_vocab(const struct ms_engine *e);
const struct ms_engine_info *ms_engine_info(const struct ms_engine *e);
/* The model's metadata (its first shard), e.g. tokenizer.chat_template. */
const struct ms_gguf *ms_engine_gguf(const struct ms_engine *e);
/* The chat template the model's tokenizer.chat_template is (ms_chat_detect);
 * -ENOENT when it has none (the message says to name one), or
 * ms_chat_detect's error for one not known. */
int ms_engine_chat_template(const struct ms_engine *e, enum ms_chat_tmpl *out,
			    struct ms_err *err);
void ms_engine_get_stats(const struct ms_engine *e, struct ms_engine_stats *st);

/* The parts of a one-token GPU step that gpu_profile times: the copies in
 * and out (io), an attention's norm, q/k/v, biases, RoPE and KV store
 * (attn_in), the attention itself, its output product with the residual
 * and the FFN's norm (attn_out), a MoE block's router and top-k (with the
 * host's routing where VRAM does not hold every expert), shared expert,
 * routed experts (their copies' waits included), a dense block's FFN, an
 * FFN's output into the residual with the next norm (ffn_out), and the
 * output head. */
enum ms_gpu_part {
	MS_GPU_PART_IO,
	MS_GPU_PART_ATTN_IN,
	MS_GPU_PART_ATTN,
	MS_GPU_PART_ATTN_OUT,
	MS_GPU_PART_ROUTER,
	MS_GPU_PART_SHARED,
	MS_GPU_PART_EXPERTS,
	MS_GPU_PART_DENSE,
	MS_GPU_PART_FFN_OUT,
	MS_GPU_PART_HEAD,
	MS_GPU_PART_COUNT
};
const char *ms_gpu_part_name(enum ms_gpu_part p);

/* Over the one-token steps since the engine opened (gpu_profile): the
 * device's milliseconds in each part (GPU events around it on the stream:
 * what the kernels took plus any wait for the host between them) and the
 * weight bytes the part read (its tensors; the routed experts' as they
 * are in the file). -EINVAL when the engine is not a profiling GPU one. */
struct ms_gpu_profile {
	uint64_t steps;
	double ms[MS_GPU_PART_COUNT];
	uint64_t bytes[MS_GPU_PART_COUNT];
};
int ms_engine_gpu_profile(const struct ms_engine *e, struct ms_gpu_profile *out,
			  struct ms_err *err);
/* Forgets the context (the KV cache) of every sequence; the next token of
 * each is at position 0. */
void ms_engine_reset(struct ms_engine *e);
/* Sequence 0's next position. */
uint32_t ms_engine_pos(const struct ms_engine *e);
/* Evaluates ids[0..n) at sequence 0's next positions, in batches of n_batch.
 * logits gets n_vocab floats per token when all_logits, else those of the
 * last token only (NULL: none). -ENOSPC when the context would overflow
 * (nothing evaluated). */
int ms_engine_eval(struct ms_engine *e, const int32_t *ids, size_t n,
		   float *logits, bool all_logits, struct ms_err *err);

#define MS_ENGINE_MAX_SEQ 256
/* Tokens of several sequences in one pass (continuous batching): token i
 * goes to sequence seq[i] (< n_seq) at that sequence's next position, the
 * tokens of one sequence in the order given. Every weight and every routed
 * expert is read once per batch of n_batch tokens for all of them. logits
 * gets n_vocab floats for each token whose want[i] is set, in order (want
 * NULL: every token). -ENOSPC when a sequence would pass n_ctx, -EINVAL for
 * a sequence out of range; nothing is evaluated then. On a failure part way
 * (-EINTR, an expert that cannot be read) the sequences' positions are
 * unspecified: clear them. */
int ms_engine_eval_seqs(struct ms_engine *e, const int32_t *ids,
			const uint32_t *seq, size_t n, const bool *want,
			float *logits, struct ms_err *err);
/* Forgets one sequence's context; its next token is at position 0. */
void ms_engine_seq_clear(struct ms_engine *e, uint32_t seq);
uint32_t ms_engine_seq_pos(const struct ms_engine *e, uint32_t seq);
/* A flag the engine polls between layers: set to stop an eval (-EINTR). */
void ms_engine_set_stop_flag(struct ms_engine *e, volatile int *flag);

#ifdef __cplusplus
}
#endif
#endif
