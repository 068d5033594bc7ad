/*
 * engine/engine_internal.h - the decoder's private structures: the arch
 * description each architecture file gives, the resident tensors, the KV
 * cache and the expert source. Private to engine/.
 */
#ifndef MS_ENGINE_INTERNAL_H
#define MS_ENGINE_INTERNAL_H

#include <pthread.h>

#include "moestream/cache.h"
#include "moestream/engine.h"
#include "moestream/kernels.h"
#include "moestream/moestream.h"

/* A tensor the engine keeps in its own memory. */
struct ms_rt {
	const void *data;   /* NULL: absent (optional tensors) */
	uint32_t type;
	int64_t ne[2];      /* [in, out] (ne[1] = 1 for vectors) */
};

/* What an architecture file says about its forward pass (engine/arch_*.c).
 * The block structure is the same for these: pre-norm attention with
 * optional biases and QK norm, NEOX RoPE, then a dense SwiGLU FFN for the
 * leading blocks and a routed MoE FFN (with an optional shared expert) for
 * the rest. An architecture that needs another attention (deepseek2's MLA)
 * or FFN gets hooks here, not a fork of forward.c. */
struct ms_arch {
	const char *name;            /* general.architecture */
	const char *ffn_norm;        /* pre-FFN norm: "post_attention_norm"
					(GLM) or "ffn_norm" (Qwen3) */
	bool qk_norm_required;       /* Qwen3: attn_q_norm/attn_k_norm */
	bool probs_bias;             /* GLM: exp_probs_b selects experts */
};

extern const struct ms_arch ms_arch_glm4moe;
extern const struct ms_arch ms_arch_qwen3moe;

struct ms_block {
	bool moe;
	int32_t layer;               /* MoE layer index, -1 for dense */
	int32_t next_moe;            /* the next MoE block after this one, -1 */
	struct ms_rt attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm;
	struct ms_rt ffn_norm;
	struct ms_rt gate, up, down;             /* dense */
	struct ms_rt gate_inp, probs_b;          /* MoE router */
	struct ms_rt sh_gate, sh_up, sh_down;    /* shared expert */
};

/* Where experts come from: the embedded cache or a moestreamd connection. */
struct ms_arrival {
	uint32_t layer, expert;
	int result;
	struct ms_expert_loc loc;
};

struct ms_xsrc {
	bool daemon;
	/* embedded */
	struct ms_cache *cache;
	const uint8_t *base;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct ms_arrival *q;
	size_t q_head, q_n, q_cap;
	/* daemon */
	struct ms_client *client;
	/* counts */
	uint64_t hits, misses, wait_ns;
	/* the GPU tier's view (ms_xsrc_describe, ms_xsrc_tier_source) */
	struct ms_client_model desc;
	struct ms_client_layer *desc_layers;
	uint64_t arena_len;
	uint64_t tier_req;
};

/* Batches of up to this many tokens route speculatively (a longer prompt
 * reads every expert anyway). */
#define MS_ENG_SPEC_MAX_T 16

struct ms_engine {
	struct ms_engine_config cfg;
	struct ms_model *model;
	struct ms_vocab *vocab;
	const struct ms_arch *arch;
	struct ms_engine_info info;
	struct ms_router_params router;

	/* hyper-parameters */
	int64_t n_embd, n_head, n_head_kv, head_dim, n_rot, n_vocab;
	int64_t n_ff_exp, n_used;
	uint32_t n_run;              /* blocks run per token */
	float eps, rope_base, freq_scale;

	struct ms_rt tok_embd, out_norm, output;
	struct ms_block *blk;
	void *resident;              /* one mapping for every tensor */
	uint64_t resident_len;       /* its length (2 MiB pieces) */

	/* KV cache: f16 (f32 with cfg.kv_f32), [seq][block][pos][n_head_kv *
	 * head_dim], n_ctx positions per sequence and block */
	void *k_cache, *v_cache;
	uint32_t *seq_pos;           /* [n_seq]: each sequence's next position */

	struct ms_ffn_pool *pool;
	struct ms_ffn_opts opts;
	struct ms_xsrc xs;

	/* work buffers for a batch of n_batch tokens */
	float *x, *h, *q, *k, *v, *att, *o, *moe, *sh, *ylist, *xg, *yg;
	float *rlog, *rw, *scores, *hint_x;
	uint32_t *tseq, *tpos;       /* [n_batch]: each token's sequence and
					position in the batch running */
	int64_t *out_rows;           /* [n_batch]: the tokens whose logits a
					batch returns */
	uint32_t *seq_room;          /* [n_seq]: tokens a call gives each */
	uint32_t *xlist;             /* [n_expert]: experts asked or hinted */
	uint32_t *rsel;
	bool *need;                  /* [n_expert]: some token routes to it */
	uint8_t *hinted;             /* [n_layers][n_expert]: hinted, not yet run */
	bool *has_hint;              /* [n_layers] */
	int32_t first_moe;           /* the first MoE block, -1 */
	uint32_t first_used[MS_ROUTER_MAX_USED];
	uint32_t n_first_used;

	struct ms_engine_stats st;
	bool q8;                     /* cfg.q8_activations */
	bool fa16;              /* this batch's attention as llama.cpp's
				   flash attention computes a ubatch of
				   under 64 tokens (ms_attn_f16) */
	volatile int *stop;
	struct ms_gpu_eng *gpu;      /* cfg.gpu: engine/forward_gpu.c */
};

int ms_engine_load_weights(struct ms_engine *e, struct ms_err *err);
int ms_xsrc_open(struct ms_engine *e, struct ms_err *err);
void ms_xsrc_close(struct ms_xsrc *xs);
/* Asks for experts[0..n) of MoE layer `layer` (block `block`); each comes
 * back through ms_xsrc_next, in any order. */
int ms_xsrc_acquire(struct ms_engine *e, uint32_t layer, const uint32_t *experts,
		    uint32_t n, struct ms_err *err);
/* The next expert that arrived: 0 with *expert and *view, or -errno. */
int ms_xsrc_next(struct ms_engine *e, uint32_t layer, uint32_t *expert,
		 struct ms_expert_view *view, struct ms_err *err);
void ms_xsrc_release(struct ms_engine *e, uint32_t layer, uint32_t expert);
void ms_xsrc_prefetch(struct ms_engine *e, uint32_t layer,
		      const uint32_t *experts, uint32_t n);
/* The model's MoE layers as moestreamd describes them (the GPU tier's
 * terms; what a slot must hold): made once, kept in e->xs. NULL only
 * when out of memory. */
const struct ms_client_model *ms_xsrc_describe(struct ms_engine *e);
/* The embedded cache as a source for the GPU tier (gpu_tier.h): its
 * acquires, arrivals and releases, ms_xsrc_describe's layers, the arena. */
struct ms_gpu_tier_source;
int ms_xsrc_tier_source(struct ms_engine *e, struct ms_gpu_tier_source *src,
			struct ms_err *err);

/* engine/forward.c's steps that the GPU path shares. */
int ms_eng_embed(struct ms_engine *e, const int32_t *ids, int64_t T,
		 struct ms_err *err);
void ms_eng_hint_first(struct ms_engine *e);
void ms_eng_hint_mark(struct ms_engine *e, uint32_t layer, const uint32_t *x,
		      uint32_t n);
void ms_eng_spec_score(struct ms_engine *e, uint32_t layer, int64_t T);
int ms_eng_route(struct ms_engine *e, uint32_t b, const float *logits,
		 int64_t T, struct ms_err *err);
uint32_t ms_eng_needed(struct ms_engine *e, uint32_t b, int64_t T);
uint32_t ms_eng_hint(struct ms_engine *e, uint32_t nb, const float *logits,
		     int64_t T);
/* Where sequence seq's K (or V) row for block b at position pos starts in
 * the KV cache, in values (forward.c's layout, on the GPU too). */
size_t ms_eng_kv_at(const struct ms_engine *e, uint32_t seq, uint32_t b,
		    uint32_t pos);

/* engine/forward_gpu.c: the forward pass on a GPU. open: after the
 * weights, buffers and expert source (copies the resident tensors to VRAM,
 * makes the KV cache there and the VRAM expert cache); -ENOTSUP / -ENODEV
 * without a GPU. */
int ms_gpu_eng_open(struct ms_engine *e, struct ms_err *err);
void ms_gpu_eng_close(struct ms_engine *e);
int ms_gpu_eval_batch(struct ms_engine *e, const int32_t *ids, int64_t T,
		      float *logits, const int64_t *out_rows, int64_t n_out,
		      struct ms_err *err);
void ms_gpu_eng_stats(const struct ms_engine *e, struct ms_engine_stats *st);

#endif
