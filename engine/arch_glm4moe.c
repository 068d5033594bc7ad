/*
 * engine/arch_glm4moe.c - GLM-4.5 / 4.6 / 4.7 (llama.cpp's glm4moe).
 *
 * As llama.cpp runs it (src/models/glm4-moe.cpp): attention with q/k/v
 * biases, QK norm when the file has attn_q_norm/attn_k_norm (the 355B models
 * do, GLM-4.5-Air does not), NEOX RoPE on the first rope.dimension_count
 * dims of each head; the pre-FFN norm is the tensor named
 * post_attention_norm; the first leading_dense_block_count blocks are dense
 * SwiGLU; the others route with sigmoid scores, exp_probs_b added for the
 * choice only, weights normalised and scaled by expert_weights_scale, plus
 * one shared expert on the same input. NextN blocks are in the file, not
 * run.
 */
#include "engine_internal.h"

const struct ms_arch ms_arch_glm4moe = {
	.name = "glm4moe",
	.ffn_norm = "post_attention_norm",
	.qk_norm_required = false,
	.probs_bias = true,
};
