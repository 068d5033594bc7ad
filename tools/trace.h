/*
 * trace.h - routing traces: for each token, for each MoE layer that runs,
 * the k experts the router chose and their weights.
 *
 * A trace names the model shape it was made for (architecture, expert count,
 * experts per token, the block index of each MoE layer) so that replaying it
 * against a different model is refused, not silently wrong.
 *
 * File format (little-endian), "MSTRACE1":
 *   char magic[8] = "MSTRACE1"
 *   u32 version = 1
 *   u32 header_bytes          total header size, from offset 0
 *   char arch[64]             NUL-padded
 *   u32 n_tokens, n_layers, n_expert, k
 *   u32 blocks[n_layers]      block index (N of blk.N) of each MoE layer
 *   then n_tokens x n_layers records of k x (u16 expert) followed by
 *   k x (f32 weight)
 * Every field is validated on load; experts are < n_expert and distinct
 * within a record; weights are finite.
 */
#ifndef MS_TRACE_H
#define MS_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "moestream/model.h"

#define MS_TRACE_MAGIC "MSTRACE1"
#define MS_TRACE_MAX_K 64
#define MS_TRACE_MAX_EXPERT 65535
#define MS_TRACE_MAX_LAYERS 4096

struct ms_trace {
	char arch[64];
	uint32_t n_tokens;
	uint32_t n_layers;  /* MoE layers run per token, in order */
	uint32_t n_expert;
	uint32_t k;         /* experts chosen per token per layer */
	uint32_t *blocks;   /* [n_layers] */
	uint16_t *expert;   /* [n_tokens][n_layers][k] */
	float *weight;      /* [n_tokens][n_layers][k] */
};

/* A zeroed trace of the given shape; blocks[] left for the caller. */
int ms_trace_alloc(struct ms_trace **out, const char *arch, uint32_t n_tokens,
		   uint32_t n_layers, uint32_t n_expert, uint32_t k,
		   struct ms_err *err);
/* A trace shaped for the layers of `m` that run per token. */
int ms_trace_alloc_for_model(struct ms_trace **out, const struct ms_model *m,
			     uint32_t n_tokens, struct ms_err *err);
void ms_trace_free(struct ms_trace *t);

int ms_trace_save(const struct ms_trace *t, const char *path,
		  struct ms_err *err);
int ms_trace_load(struct ms_trace **out, const char *path, struct ms_err *err);

/* 0 when the trace fits the model (same expert count and k, and its layers
 * are the model's MoE layers that run); -EINVAL naming the mismatch. */
int ms_trace_check_model(const struct ms_trace *t, const struct ms_model *m,
			 struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* Synthetic routing (tools/trace_gen.c). The model behind it and the        */
/* calibration of its defaults are described at the top of trace_cmd.c.     */

struct ms_trace_gen_params {
	uint64_t seed;
	double skew_first;      /* Zipf exponent of the first MoE layer's ... */
	double skew_last;       /* ... and the last one's; linear in between */
	double reuse;           /* P(a slot is a member of the context) */
	double corr;            /* P(a slot is a partner of layer l-1's pick) */
				/* fresh (a one-off): 1 - reuse - corr */
	uint32_t partners;      /* partners per (layer, expert) at layer l+1 */
	double working_set;     /* context size, as a share of the experts */
	uint32_t stint;         /* tokens a context member stays */
	uint32_t fresh_gap;     /* new members and one-offs avoid experts used
				   (or in the context) in the last N tokens */
	double weight_scale;    /* router weights sum to this (> 0) */
};

#define MS_TRACE_GEN_MAX_TOKENS 100000000u

/* The calibrated defaults (seed 1, weight_scale 1). */
void ms_trace_gen_defaults(struct ms_trace_gen_params *p);

/* -EINVAL naming the first parameter out of range for a trace with
 * `n_expert` experts and k of them per token. */
int ms_trace_gen_check(const struct ms_trace_gen_params *p, uint32_t n_expert,
		       uint32_t k, struct ms_err *err);

/* Fills every choice and weight of an allocated trace (shape and blocks
 * set). Deterministic: the same parameters give the same bytes, and a trace
 * of N tokens is the first N tokens of a longer one with the same seed. */
int ms_trace_gen(struct ms_trace *t, const struct ms_trace_gen_params *p,
		 struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* Statistics (tools/trace_stats.c).                                        */

/* Reuse distance, in tokens since the same expert was last chosen at the
 * same layer: 1, 2, 3-4, 5-8, ..., 65-128, >128, and never (first use). */
#define MS_TRACE_REUSE_BUCKETS 10
extern const char *const ms_trace_reuse_bucket_name[MS_TRACE_REUSE_BUCKETS];

/* The default coverage window, in tokens (see trace_cmd.c for why 75). */
#define MS_TRACE_COVER_WINDOW 75

struct ms_trace_layer_stats {
	uint32_t block;
	uint32_t distinct;     /* experts chosen at least once */
	double coverage;       /* mean over every window of `window` tokens of
				  (distinct experts in it) / n_expert */
	double entropy_bits;   /* of the popularity (share of all choices) */
	double entropy_ratio;  /* entropy_bits / log2(n_expert) */
	double lru_hit;        /* hit rate of an LRU of lru_capacity experts
				  of this layer, cold start included */
	double predict;        /* |predicted ∩ chosen| / k at the next layer,
				  or -1 (the last layer, or too few tokens) */
	uint64_t reuse[MS_TRACE_REUSE_BUCKETS];
};

struct ms_trace_stats {
	uint32_t n_layers;
	uint32_t window;       /* min(requested window, n_tokens) */
	uint32_t lru_capacity; /* n_expert / 2 (at least 1) */
	struct ms_trace_layer_stats *layer; /* [n_layers] */
	/* Means over layers (predict: over the layers that have one, else -1). */
	double distinct, coverage, entropy_bits, entropy_ratio, lru_hit, predict;
	uint64_t reuse[MS_TRACE_REUSE_BUCKETS]; /* summed over layers */
};

/* Predictability is learnt on the first half of the tokens (a transition
 * table (l, e) -> (l+1, e')) and scored on the second half; it is -1 where
 * the trace has fewer than 2 tokens or more than MS_TRACE_PREDICT_MAX_EXPERT
 * experts (the table is n_expert^2 counters). */
#define MS_TRACE_PREDICT_MAX_EXPERT 4096
int ms_trace_stats_compute(struct ms_trace_stats **out, const struct ms_trace *t,
			   uint32_t window, struct ms_err *err);
void ms_trace_stats_free(struct ms_trace_stats *s);

/* ------------------------------------------------------------------------ */
/* CSV (tools/trace_csv.c): a header line "token,layer,expert,weight", then */
/* one line per choice; layer is the model's block index (blk.N), weights   */
/* are printed with %.9g so that a float survives the round trip exactly.   */

int ms_trace_export_csv(const struct ms_trace *t, FILE *f, struct ms_err *err);

/* Reads CSV from `f` (`name` for messages) for model `m`: rows may come in
 * any order, but each (token, layer) of tokens 0..max must have exactly k
 * distinct experts; within a record, choices keep the order of their rows.
 * Every field is checked; errors name the line. */
int ms_trace_import_csv(struct ms_trace **out, FILE *f, const char *name,
			const struct ms_model *m, struct ms_err *err);

static inline uint16_t *ms_trace_experts(const struct ms_trace *t,
					 uint32_t token, uint32_t layer)
{
	return &t->expert[((size_t)token * t->n_layers + layer) * t->k];
}

static inline float *ms_trace_weights(const struct ms_trace *t,
				      uint32_t token, uint32_t layer)
{
	return &t->weight[((size_t)token * t->n_layers + layer) * t->k];
}

#endif /* MS_TRACE_H */
