/*
 * engine/arch_qwen3moe.c - Qwen3-30B-A3B, Qwen3-235B-A22B (llama.cpp's
 * qwen3moe).
 *
 * As llama.cpp runs it (src/models/qwen3moe.cpp): no attention biases, QK
 * norm always (attn_q_norm/attn_k_norm required), NEOX RoPE over the whole
 * head; the pre-FFN norm is ffn_norm; every block routes: softmax over all
 * experts, the top k renormalised, no scale, no shared expert.
 */
#include "engine_internal.h"

const struct ms_arch ms_arch_qwen3moe = {
	.name = "qwen3moe",
	.ffn_norm = "ffn_norm",
	.qk_norm_required = true,
	.probs_bias = false,
};
