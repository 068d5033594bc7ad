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
