/*
 * mkmodel.c - `moestream mkmodel`: write test models with real shapes.
 *
 * Nobody here downloads GLM-4.7's 134 GB, yet every benchmark must run on
 * files with its real shapes, type mix and size per expert. The presets carry
 * the real metadata and tensor shapes (glm4moe as llama.cpp names it, qwen3moe
 * for Qwen3-30B-A3B); `--moe-layers N` keeps only N of the MoE layers so that
 * a developer box can hold the file; every parameter can also be given by
 * hand.
 *
 * Weights are random but deterministic per seed. f32 tensors are computed
 * (norms 1, router weights uniform of scale 1/sqrt(n_in), biases small).
 * Quantized tensors are cut, block-aligned, from a pool of random valid
 * blocks per type: random bytes whose scale fields (f16 d/dmin, MXFP4's e8m0)
 * are set to small finite values, so every block decodes to finite numbers of
 * a sensible scale. Cutting from a pool (at a place chosen by a hash of the
 * seed, tensor and chunk) costs a memcpy, so writing runs at disk speed.
 * A model with up to WHOLE_POOL_MAX of such weights (tiny) gets pools as
 * large as its tensors, each tensor its own blocks.
 *
 * Writing: each file is one sequential stream - metadata, then every tensor
 * padded to the alignment - cut into 8 MiB chunks that a producer fills while
 * a writer thread writes them with O_DIRECT (falling back to buffered writes,
 * said once, where the file system refuses it). `--split-size` writes shards
 * as llama-gguf-split does: NAME-0000K-of-0000N.gguf, tensors never split,
 * split.no / split.count / split.tensors.count in every shard and the model's
 * metadata only in the first. `--sparse` writes the metadata only and extends
 * the file as a hole (blocks of zeros), for tests that need the shapes of a
 * 134 GB model but not its bytes.
 *
 * Vocabulary (hf_tokenizer.c): `--tokenizer tokenizer.json` writes a real
 * one as llama.cpp's converter does, and the embedding and output tensors
 * take its size; without it a small built-in byte-level BPE of the preset's
 * size. Either way llama.cpp loads the file (tests/t_llama_ref.c), so every
 * test model can be checked against llama.cpp.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "hf_tokenizer.h"
#include "tools.h"

#define CHUNK (8u << 20)
#define N_BUF 4
#define POOL_BYTES (4u << 20)
#define MAX_TYPES 3
#define MAX_POOLS 32
/* Up to this many bytes of quantized weights in all, each tensor gets its
 * own random blocks (a pool as large as its tensors together); above it,
 * tensors are cut from POOL_BYTES pools, so a 134 GB model writes at disk
 * speed. Cut pieces repeat pool bytes at a shift of whole blocks: rows of
 * the output matrix that are the same blocks one block apart, whose logits
 * then stay within 1e-4 of each other once the hidden state turns
 * periodic, which the tiny preset's random model did (a greedy text that
 * alternated between two such tokens; any rounding decided which). */
#define WHOLE_POOL_MAX (512ull << 20)

struct shape {
	const char *preset;   /* NULL for a hand-made shape */
	const char *arch, *title;
	uint32_t n_block, n_dense, n_nextn, n_expert, n_used, n_shared;
	uint32_t n_embd, n_ff, n_ff_exp, n_vocab, n_head, n_head_kv, head_dim;
	uint32_t t_exp[MAX_TYPES];   /* gate, up, down */
	uint32_t t_attn, t_attn_v, t_embd, t_out, t_dense, t_dense_down;
	uint32_t gating;             /* expert_gating_func, 0 = absent */
	bool norm, attn_bias, qk_norm, probs_bias;
	float scale;                 /* expert_weights_scale, 0 = absent */
	bool big_embd;               /* token embeddings 2^12 x the weights'
					scale: see tensor_extra() */
	uint32_t ctx, rope_dim;
	float rope_base;
};

static const struct shape presets[] = {
	{ .preset = "glm4.7-ud-q2_k_xl", .arch = "glm4moe",
	  .title = "GLM-4.7 (UD-Q2_K_XL shape, moestream test model)",
	  .n_block = 93, .n_dense = 3, .n_nextn = 1, .n_expert = 160,
	  .n_used = 8, .n_shared = 1, .n_embd = 5120, .n_ff = 12288,
	  .n_ff_exp = 1536, .n_vocab = 151552, .n_head = 96, .n_head_kv = 8,
	  .head_dim = 128,
	  .t_exp = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K },
	  .t_attn = MS_TYPE_Q4_K, .t_attn_v = MS_TYPE_Q6_K,
	  .t_embd = MS_TYPE_Q4_K, .t_out = MS_TYPE_Q6_K,
	  .t_dense = MS_TYPE_Q4_K, .t_dense_down = MS_TYPE_Q6_K, .gating = 2,
	  .norm = true, .attn_bias = true, .probs_bias = true, .scale = 2.5f,
	  .ctx = 202752, .rope_dim = 64, .rope_base = 1e6f },
	{ .preset = "glm4.7-ud-q4_k_xl", .arch = "glm4moe",
	  .title = "GLM-4.7 (UD-Q4_K_XL shape, moestream test model)",
	  .n_block = 93, .n_dense = 3, .n_nextn = 1, .n_expert = 160,
	  .n_used = 8, .n_shared = 1, .n_embd = 5120, .n_ff = 12288,
	  .n_ff_exp = 1536, .n_vocab = 151552, .n_head = 96, .n_head_kv = 8,
	  .head_dim = 128,
	  .t_exp = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q5_K },
	  .t_attn = MS_TYPE_Q5_K, .t_attn_v = MS_TYPE_Q6_K,
	  .t_embd = MS_TYPE_Q4_K, .t_out = MS_TYPE_Q6_K,
	  .t_dense = MS_TYPE_Q5_K, .t_dense_down = MS_TYPE_Q6_K, .gating = 2,
	  .norm = true, .attn_bias = true, .probs_bias = true, .scale = 2.5f,
	  .ctx = 202752, .rope_dim = 64, .rope_base = 1e6f },
	{ .preset = "qwen3-moe-30b-a3b", .arch = "qwen3moe",
	  .title = "Qwen3-30B-A3B (Q4_K_M shape, moestream test model)",
	  .n_block = 48, .n_dense = 0, .n_nextn = 0, .n_expert = 128,
	  .n_used = 8, .n_shared = 0, .n_embd = 2048, .n_ff = 6144,
	  .n_ff_exp = 768, .n_vocab = 151936, .n_head = 32, .n_head_kv = 4,
	  .head_dim = 128,
	  .t_exp = { MS_TYPE_Q4_K, MS_TYPE_Q4_K, MS_TYPE_Q6_K },
	  .t_attn = MS_TYPE_Q4_K, .t_attn_v = MS_TYPE_Q6_K,
	  .t_embd = MS_TYPE_Q4_K, .t_out = MS_TYPE_Q6_K,
	  .t_dense = MS_TYPE_Q4_K, .t_dense_down = MS_TYPE_Q6_K, .gating = 1,
	  .norm = true, .qk_norm = true, .ctx = 40960, .rope_dim = 128,
	  .rope_base = 1e6f },
	{ .preset = "tiny", .arch = "glm4moe", .title = "moestream tiny demo",
	  .n_block = 6, .n_dense = 1, .n_nextn = 1, .n_expert = 16, .n_used = 4,
	  .n_shared = 1, .n_embd = 512, .n_ff = 1024, .n_ff_exp = 256,
	  .n_vocab = 512, .n_head = 4, .n_head_kv = 1, .head_dim = 128,
	  .t_exp = { MS_TYPE_Q2_K, MS_TYPE_Q2_K, MS_TYPE_Q3_K },
	  .t_attn = MS_TYPE_Q8_0, .t_attn_v = MS_TYPE_Q8_0,
	  .t_embd = MS_TYPE_Q8_0, .t_out = MS_TYPE_Q8_0,
	  .t_dense = MS_TYPE_Q4_K, .t_dense_down = MS_TYPE_Q4_K, .gating = 2,
	  .norm = true, .attn_bias = true, .probs_bias = true, .scale = 2.5f,
	  .big_embd = true,
	  .ctx = 4096, .rope_dim = 64, .rope_base = 1e6f },
};
#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestream mkmodel --preset NAME -o FILE [options]\n"
		"       moestream mkmodel --layers N --experts N --used N --embd N "
		"--ff N\n"
		"                         --types G,U,D -o FILE [options]\n"
		"\n"
		"Writes a valid GGUF test model with real metadata, shapes and quant "
		"types.\nWeights are random valid blocks of sensible scale, "
		"deterministic per seed.\n"
		"\npresets:\n"
		"  glm4.7-ud-q2_k_xl   glm4moe: 93 blocks (3 dense, 89 MoE, 1 NextN), "
		"160 experts,\n"
		"                      8 used + 1 shared, Q2_K/Q2_K/Q3_K: 8,540,160 "
		"B/expert, 133 GB\n"
		"  glm4.7-ud-q4_k_xl   the same with Q4_K/Q4_K/Q5_K experts\n"
		"  qwen3-moe-30b-a3b   qwen3moe: 48 MoE blocks, 128 experts, 8 used, "
		"Q4_K/Q4_K/Q6_K\n"
		"  tiny                glm4moe, 6 blocks, 16 experts (4 used), 18 MB: "
		"for tests\n"
		"\noptions:\n"
		"  -o, --output FILE      where to write (shards: FILE's name with "
		"-0000K-of-0000N)\n"
		"  --moe-layers N         keep N MoE layers of the preset (drops the "
		"NextN block\n"
		"                         unless --nextn is given): 8 GLM-4.7 layers "
		"= 13 GB\n"
		"  --layers N             blocks in all (dense + MoE + NextN)\n"
		"  --dense N              leading dense blocks          --nextn N   "
		"NextN blocks\n"
		"  --experts N            routed experts per layer      --used N    "
		"chosen per token\n"
		"  --shared N             shared experts                --arch NAME "
		"(glm4moe)\n"
		"  --embd N               hidden size                   --ff N      "
		"expert FFN size\n"
		"  --vocab N              vocabulary (hand-made: 32000)\n"
		"  --types G,U,D          expert types, e.g. q2_K,q2_K,q3_K; one of "
		"f32 f16 bf16\n"
		"                         q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K "
		"q5_K q6_K iq4_nl\n"
		"                         iq4_xs mxfp4\n"
		"  --tokenizer PATH       the vocabulary of a Hugging Face "
		"tokenizer.json (and the\n"
		"                         tokenizer_config.json beside it), as "
		"llama.cpp's converter\n"
		"                         writes it; its size is the model's "
		"vocabulary (default: a\n"
		"                         small built-in byte-level BPE of --vocab "
		"ids)\n"
		"  --tokenizer-pre NAME   tokenizer.ggml.pre instead of the one "
		"recognised from the\n"
		"                         pre-tokenizer: qwen2 llama-bpe glm4 "
		"deepseek-v3 gpt-4o\n"
		"  --split-size SIZE      shards of at most SIZE of tensor data (K/M/G), "
		"as\n"
		"                         llama-gguf-split --split-max-size\n"
		"  --sparse               metadata only; the data is a hole (zeros)\n"
		"  --seed N               weights seed (default 1)\n"
		"  --force                overwrite existing files\n"
		"\nexamples:\n"
		"  moestream mkmodel --preset glm4.7-ud-q2_k_xl --moe-layers 8 -o "
		"glm8.gguf\n"
		"  moestream mkmodel --preset tiny -o /tmp/tiny.gguf\n"
		"  moestream mkmodel --layers 4 --experts 32 --used 4 --embd 1024 "
		"--ff 512 \\\n"
		"      --types q4_K,q4_K,q6_K --split-size 20M -o /tmp/m.gguf\n");
}

/* ---- deterministic randomness ----------------------------------------------- */

static uint64_t mix3(uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t s = a * 0x9e3779b97f4a7c15ull ^ b * 0xc2b2ae3d27d4eb4full ^ c;
	return tool_splitmix(&s);
}

/* ---- random valid blocks --------------------------------------------------- */

static bool type_writable(uint32_t t)
{
	if (t == MS_TYPE_F32 || t == MS_TYPE_F16 || t == MS_TYPE_BF16 ||
	    t == MS_TYPE_MXFP4)
		return true;
	return tool_scales_of(t) != NULL;
}

static float small_uniform(uint64_t *s, float scale)
{
	return scale * ((float)(tool_splitmix(s) >> 40) / (float)(1 << 23) - 1.0f);
}

/* Fills `size` bytes of `type` (a multiple of its block) with valid blocks,
 * their scales 2^-extra smaller than tool_fill_blocks'. */
static void fill_blocks(uint8_t *buf, uint64_t size, uint32_t type, uint64_t *s,
			int extra)
{
	if (type == MS_TYPE_F16 || type == MS_TYPE_BF16) {
		for (uint64_t i = 0; i + 2 <= size; i += 2) {
			float f = small_uniform(s, 0.05f);
			uint32_t u;
			memcpy(&u, &f, 4);
			/* bf16: the top half; f16: a small value in range */
			uint16_t h = type == MS_TYPE_BF16
					     ? (uint16_t)(u >> 16)
					     : (uint16_t)(tool_small_f16(tool_splitmix(s), 8) |
							  (tool_splitmix(s) & 1) << 15);
			memcpy(buf + i, &h, 2);
		}
		return;
	}
	if (type == MS_TYPE_F32) {
		for (uint64_t i = 0; i + 4 <= size; i += 4) {
			float f = small_uniform(s, 0.05f);
			memcpy(buf + i, &f, 4);
		}
		return;
	}
	tool_fill_blocks_scaled(buf, size, type, s, extra);
}

/* The scale of a weight matrix's blocks: values up to about 2^-extra with
 * extra = log2(sqrt(n_in)), so that W x of a normalised x has outputs of
 * about unit size (as in a trained model; unscaled random blocks make
 * attention scores in the tens and every comparison of numerics
 * meaningless). */
static int weight_extra(int64_t n_in)
{
	int e = 0;
	while ((int64_t)1 << (2 * e + 1) < n_in)
		e++;
	return e;
}

/* One pool of random valid blocks per type, shared by every tensor of it. */
struct pool {
	uint32_t type;
	int extra;       /* weight_extra() of the tensors it serves */
	uint32_t blck_bytes;
	uint64_t bytes;  /* whole blocks, <= POOL_BYTES unless job.whole */
	uint8_t *data;
};

/* ---- the tensor list --------------------------------------------------------- */

struct tspec {
	char name[MS_GGUF_MAX_NAME + 1];
	uint32_t n_dims;
	int64_t ne[3];
	uint32_t type;
	enum { FILL_BLOCKS, FILL_ONE, FILL_UNIFORM, FILL_BIAS } fill;
	uint32_t shard;
	uint64_t offset; /* absolute, in its shard */
	uint64_t size;
	uint64_t pool_off; /* job.whole: where its blocks start in its pool */
};

struct tlist {
	struct tspec *t;
	uint32_t n, cap;
};

/* A tensor's scale: weight_extra() of its rows, except, in a preset with
 * big_embd (tiny), the token embeddings: rows looked up, not a product,
 * with values about 2^-EMBD_EXTRA. In the tiny preset with embeddings as
 * small as its weights, the unit-size block outputs summed over the
 * residual stream drowned the current token, and the random model's greedy
 * text was one token repeated whatever the prompt (measured: 1 distinct
 * token in 32, 8 prompts); with these, 32 distinct. The large presets keep
 * the weights' scale (their logits are what the comparisons were tuned
 * on). */
#define EMBD_EXTRA (-12)
static int tensor_extra(const struct shape *p, const struct tspec *t)
{
	return p->big_embd && !strcmp(t->name, "token_embd.weight")
		       ? EMBD_EXTRA
		       : weight_extra(t->ne[0]);
}

static int tadd(struct tlist *l, uint32_t n_dims, int64_t a, int64_t b,
		int64_t c, uint32_t type, int fill, const char *fmt, ...)
	__attribute__((format(printf, 8, 9)));

static int tadd(struct tlist *l, uint32_t n_dims, int64_t a, int64_t b,
		int64_t c, uint32_t type, int fill, const char *fmt, ...)
{
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? 2 * l->cap : 256;
		struct tspec *t = realloc(l->t, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		l->t = t;
		l->cap = cap;
	}
	struct tspec *t = &l->t[l->n++];
	memset(t, 0, sizeof(*t));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	t->n_dims = n_dims;
	t->ne[0] = a;
	t->ne[1] = b;
	t->ne[2] = c;
	t->type = type;
	t->fill = fill;
	return 0;
}

/* The tensors of a glm4moe / qwen3moe-style model, named as llama.cpp does. */
static int build_tensors(const struct shape *p, struct tlist *l)
{
	int64_t E = p->n_embd, Q = (int64_t)p->n_head * p->head_dim,
		KV = (int64_t)p->n_head_kv * p->head_dim;
	/* The norm before the FFN: llama.cpp's qwen3moe loads ffn_norm, its
	 * glm4moe post_attention_norm (the same tensor, named as each HF
	 * model names it). */
	const char *ffn_norm = strcmp(p->arch, "qwen3moe") ? "post_attention_norm"
							   : "ffn_norm";
	int rc = tadd(l, 2, E, p->n_vocab, 1, p->t_embd, FILL_BLOCKS,
		      "token_embd.weight");
	for (uint32_t b = 0; b < p->n_block && !rc; b++) {
		bool nextn = b >= p->n_block - p->n_nextn;
		rc = tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE, "blk.%u.attn_norm.weight", b) ||
		     tadd(l, 2, E, Q, 1, p->t_attn, FILL_BLOCKS, "blk.%u.attn_q.weight", b) ||
		     tadd(l, 2, E, KV, 1, p->t_attn, FILL_BLOCKS, "blk.%u.attn_k.weight", b) ||
		     tadd(l, 2, E, KV, 1, p->t_attn_v, FILL_BLOCKS, "blk.%u.attn_v.weight", b) ||
		     tadd(l, 2, Q, E, 1, p->t_attn, FILL_BLOCKS, "blk.%u.attn_output.weight", b) ||
		     tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE, "blk.%u.%s.weight", b,
			  ffn_norm);
		if (!rc && p->attn_bias)
			rc = tadd(l, 1, Q, 1, 1, MS_TYPE_F32, FILL_BIAS, "blk.%u.attn_q.bias", b) ||
			     tadd(l, 1, KV, 1, 1, MS_TYPE_F32, FILL_BIAS, "blk.%u.attn_k.bias", b) ||
			     tadd(l, 1, KV, 1, 1, MS_TYPE_F32, FILL_BIAS, "blk.%u.attn_v.bias", b);
		if (!rc && p->qk_norm)
			rc = tadd(l, 1, p->head_dim, 1, 1, MS_TYPE_F32, FILL_ONE,
				  "blk.%u.attn_q_norm.weight", b) ||
			     tadd(l, 1, p->head_dim, 1, 1, MS_TYPE_F32, FILL_ONE,
				  "blk.%u.attn_k_norm.weight", b);
		if (rc)
			break;
		if (b < p->n_dense) {
			rc = tadd(l, 2, E, p->n_ff, 1, p->t_dense, FILL_BLOCKS,
				  "blk.%u.ffn_gate.weight", b) ||
			     tadd(l, 2, E, p->n_ff, 1, p->t_dense, FILL_BLOCKS,
				  "blk.%u.ffn_up.weight", b) ||
			     tadd(l, 2, p->n_ff, E, 1, p->t_dense_down, FILL_BLOCKS,
				  "blk.%u.ffn_down.weight", b);
			continue;
		}
		rc = tadd(l, 2, E, p->n_expert, 1, MS_TYPE_F32, FILL_UNIFORM,
			  "blk.%u.ffn_gate_inp.weight", b);
		if (!rc && p->probs_bias)
			rc = tadd(l, 1, p->n_expert, 1, 1, MS_TYPE_F32, FILL_BIAS,
				  "blk.%u.exp_probs_b.bias", b);
		if (!rc)
			rc = tadd(l, 3, E, p->n_ff_exp, p->n_expert, p->t_exp[0],
				  FILL_BLOCKS, "blk.%u.ffn_gate_exps.weight", b) ||
			     tadd(l, 3, E, p->n_ff_exp, p->n_expert, p->t_exp[1],
				  FILL_BLOCKS, "blk.%u.ffn_up_exps.weight", b) ||
			     tadd(l, 3, p->n_ff_exp, E, p->n_expert, p->t_exp[2],
				  FILL_BLOCKS, "blk.%u.ffn_down_exps.weight", b);
		if (!rc && p->n_shared) {
			int64_t S = (int64_t)p->n_ff_exp * p->n_shared;
			rc = tadd(l, 2, E, S, 1, p->t_dense, FILL_BLOCKS,
				  "blk.%u.ffn_gate_shexp.weight", b) ||
			     tadd(l, 2, E, S, 1, p->t_dense, FILL_BLOCKS,
				  "blk.%u.ffn_up_shexp.weight", b) ||
			     tadd(l, 2, S, E, 1, p->t_dense_down, FILL_BLOCKS,
				  "blk.%u.ffn_down_shexp.weight", b);
		}
		if (!rc && nextn)
			rc = tadd(l, 2, 2 * E, E, 1, p->t_attn, FILL_BLOCKS,
				  "blk.%u.nextn.eh_proj.weight", b) ||
			     tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE,
				  "blk.%u.nextn.enorm.weight", b) ||
			     tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE,
				  "blk.%u.nextn.hnorm.weight", b) ||
			     tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE,
				  "blk.%u.nextn.shared_head_norm.weight", b);
	}
	if (!rc)
		rc = tadd(l, 1, E, 1, 1, MS_TYPE_F32, FILL_ONE, "output_norm.weight") ||
		     tadd(l, 2, E, p->n_vocab, 1, p->t_out, FILL_BLOCKS, "output.weight");
	return rc ? -ENOMEM : 0;
}

/* ---- metadata ---------------------------------------------------------------- */

static int set_meta(struct ms_gguf_writer *w, const struct shape *p,
		    const struct tool_vocab *vocab, struct ms_err *err)
{
	char k[128];
	int rc;
#define KEY(s) (snprintf(k, sizeof(k), "%s.%s", p->arch, s), k)
#define U32(s, v) ms_gguf_writer_set_u32(w, KEY(s), (v), err)
	if ((rc = ms_gguf_writer_set_str(w, "general.architecture", p->arch, err)) ||
	    (rc = ms_gguf_writer_set_str(w, "general.name", p->title, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, "general.file_type", 0, err)) ||
	    (rc = U32("block_count", p->n_block)) ||
	    (rc = U32("context_length", p->ctx)) ||
	    (rc = U32("embedding_length", p->n_embd)) ||
	    (rc = U32("feed_forward_length", p->n_ff)) ||
	    (rc = U32("expert_feed_forward_length", p->n_ff_exp)) ||
	    (rc = U32("attention.head_count", p->n_head)) ||
	    (rc = U32("attention.head_count_kv", p->n_head_kv)) ||
	    (rc = U32("attention.key_length", p->head_dim)) ||
	    (rc = U32("attention.value_length", p->head_dim)) ||
	    (rc = ms_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"),
					 1e-5f, err)) ||
	    (rc = U32("rope.dimension_count", p->rope_dim)) ||
	    (rc = ms_gguf_writer_set_f32(w, KEY("rope.freq_base"), p->rope_base, err)) ||
	    (rc = U32("expert_count", p->n_expert)) ||
	    (rc = U32("expert_used_count", p->n_used)))
		return rc;
	if ((p->n_shared && (rc = U32("expert_shared_count", p->n_shared))) ||
	    (p->n_dense && (rc = U32("leading_dense_block_count", p->n_dense))) ||
	    (p->n_nextn && (rc = U32("nextn_predict_layers", p->n_nextn))) ||
	    (p->gating && (rc = U32("expert_gating_func", p->gating))) ||
	    (rc = ms_gguf_writer_set_bool(w, KEY("expert_weights_norm"), p->norm, err)) ||
	    (p->scale && (rc = ms_gguf_writer_set_f32(w, KEY("expert_weights_scale"),
						      p->scale, err))))
		return rc;
#undef U32
#undef KEY
	return tool_vocab_write(vocab, w, err);
}

/* ---- the writer thread ------------------------------------------------------- */

struct wbuf {
	uint8_t *data;
	uint64_t off, len; /* file offset, bytes (len padded for O_DIRECT) */
	bool full;
};

struct out {
	int fd;
	bool direct;
	const char *path;
	struct wbuf buf[N_BUF];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int err;                /* first write error, -errno */
	uint64_t written;       /* bytes, for the progress bar */
	pthread_t thread;
};

static void *writer_main(void *arg)
{
	struct out *o = arg;
	for (unsigned i = 0;; i = (i + 1) % N_BUF) {
		pthread_mutex_lock(&o->mu);
		while (!o->buf[i].full && !o->done)
			pthread_cond_wait(&o->cv, &o->mu);
		if (!o->buf[i].full) {
			pthread_mutex_unlock(&o->mu);
			return NULL;
		}
		struct wbuf b = o->buf[i];
		pthread_mutex_unlock(&o->mu);

		int e = 0;
		for (uint64_t done = 0; done < b.len && !e;) {
			ssize_t n = pwrite(o->fd, b.data + done, b.len - done,
					   (off_t)(b.off + done));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				e = n < 0 ? -errno : -EIO;
			else
				done += (uint64_t)n;
		}
		pthread_mutex_lock(&o->mu);
		if (e && !o->err)
			o->err = e;
		o->written += b.len;
		o->buf[i].full = false;
		pthread_cond_broadcast(&o->cv);
		pthread_mutex_unlock(&o->mu);
	}
}

/* ---- progress ------------------------------------------------------------------ */

struct progress {
	bool tty;
	double t0, last;
	uint64_t total;
	const char *what;
};

static void progress_draw(struct progress *pg, uint64_t done, bool final)
{
	double t = tool_now_s();
	if (!pg->tty || (!final && t - pg->last < 0.2))
		return;
	pg->last = t;
	double frac = pg->total ? (double)done / (double)pg->total : 1.0;
	double rate = t > pg->t0 ? (double)done / (t - pg->t0) : 0.0;
	int bar = 30, fill = (int)(frac * bar);
	char b1[32], b2[32];
	fprintf(stderr, "\r  %-24.24s [%.*s%*s] %3.0f%% %s / %s  %.2f GB/s  ETA %3.0fs ",
		pg->what, fill, "==============================", bar - fill, "",
		frac * 100, fmt_bytes(done, b1, sizeof(b1)),
		fmt_bytes(pg->total, b2, sizeof(b2)), rate / 1e9,
		rate > 0 ? (double)(pg->total - done) / rate : 0.0);
	if (final)
		fputc('\n', stderr);
}

/* ---- one shard ----------------------------------------------------------------- */

struct job {
	const struct shape *p;
	struct tlist *tl;
	struct pool *pools;
	uint32_t n_pools;
	bool whole;      /* every FILL_BLOCKS tensor has its own pool region */
	uint64_t seed;
	bool sparse;
	struct progress *pg;
	uint64_t progress_base;
};

static const struct pool *pool_for(const struct job *j, uint32_t type,
				   int extra)
{
	for (uint32_t i = 0; i < j->n_pools; i++)
		if (j->pools[i].type == type && j->pools[i].extra == extra)
			return &j->pools[i];
	return NULL;
}

/* Produces the bytes of file range [off, off + len) of shard `sh`: metadata,
 * tensor data and padding. */
static void produce(const struct job *j, uint32_t sh, const uint8_t *meta,
		    uint64_t meta_len, uint8_t *dst, uint64_t off, uint64_t len,
		    uint32_t *cursor)
{
	memset(dst, 0, len);
	if (off < meta_len)
		memcpy(dst, meta + off, off + len < meta_len ? len : meta_len - off);
	for (uint32_t i = *cursor; i < j->tl->n; i++) {
		const struct tspec *t = &j->tl->t[i];
		if (t->shard != sh)
			continue;
		if (t->offset >= off + len)
			break;
		uint64_t a = t->offset > off ? t->offset : off;
		uint64_t b = t->offset + t->size < off + len ? t->offset + t->size
							     : off + len;
		if (t->offset + t->size <= off) {
			*cursor = i + 1;
			continue;
		}
		uint8_t *d = dst + (a - off);
		uint64_t in = a - t->offset, n = b - a;
		if (t->fill == FILL_BLOCKS) {
			/* The tensor's own blocks (job.whole), else 64 KiB pieces
			 * cut from the pool at block-aligned places chosen by
			 * (seed, tensor, piece). */
			const struct pool *pl = pool_for(j, t->type, tensor_extra(j->p, t));
			if (j->whole) {
				memcpy(d, pl->data + t->pool_off + in, n);
				continue;
			}
			while (n) {
				uint64_t piece = in >> 16, pin = in & 0xffff;
				uint64_t take = 0x10000 - pin < n ? 0x10000 - pin : n;
				uint64_t nb = (pl->bytes - 0x10000 - pl->blck_bytes) /
					      pl->blck_bytes;
				uint64_t start = (mix3(j->seed, i, piece) % nb) *
						 pl->blck_bytes;
				/* The piece starts at a block boundary of the tensor
				 * only if 64 KiB is a multiple of the block; keep the
				 * phase so blocks stay whole. */
				start += (piece << 16) % pl->blck_bytes;
				memcpy(d, pl->data + start + pin, take);
				d += take;
				in += take;
				n -= take;
			}
			continue;
		}
		/* f32 tensors: values from (seed, tensor, element). */
		for (uint64_t e = in / 4; e < (in + n) / 4; e++, d += 4) {
			float f = 1.0f;
			uint64_t s = mix3(j->seed, i, e);
			if (t->fill == FILL_UNIFORM)
				f = small_uniform(&s, 1.0f / sqrtf((float)t->ne[0]));
			else if (t->fill == FILL_BIAS)
				f = small_uniform(&s, 0.01f);
			memcpy(d, &f, 4);
		}
	}
}

static int write_shard(const struct job *j, uint32_t sh, uint32_t n_sh,
		       struct ms_gguf_writer *w, const char *path, bool force,
		       struct ms_err *err)
{
	uint64_t size = ms_gguf_writer_file_size(w);
	uint64_t meta_len = ms_gguf_writer_data_offset(w);
	struct out o = { .fd = -1, .path = path };
	uint8_t *meta = NULL;
	int rc = 0;

	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL);
	o.fd = open(path, flags | (j->sparse ? 0 : O_DIRECT), 0644);
	if (o.fd < 0 && errno == EINVAL && !j->sparse) {
		static bool said;
		if (!said)
			fprintf(stderr, "moestream mkmodel: %s: the file system refuses "
					"O_DIRECT; writing through the page cache\n",
				path);
		said = true;
		o.fd = open(path, flags, 0644);
	} else {
		o.direct = !j->sparse;
	}
	if (o.fd < 0)
		return ms_err_set(err, -errno, "%s: %s%s", path, strerror(errno),
				  errno == EEXIST ? " (pass --force to overwrite)"
						  : "");
	if (j->sparse) {
		if ((rc = ms_gguf_writer_write_meta(w, o.fd, err)))
			goto out;
		if (ftruncate(o.fd, (off_t)size))
			rc = ms_err_set(err, -errno, "%s: extending to %llu bytes: %s",
					path, (unsigned long long)size,
					strerror(errno));
		goto out;
	}

	/* The metadata bytes, serialised by the writer into a memfd and read
	 * back: the first chunk of the stream carries them. */
	meta = malloc(meta_len ? meta_len : 1);
	int mfd = memfd_create("moestream-meta", MFD_CLOEXEC);
	if (!meta || mfd < 0) {
		rc = ms_err_set(err, -ENOMEM, "out of memory for metadata");
		if (mfd >= 0)
			close(mfd);
		goto out;
	}
	rc = ms_gguf_writer_write_meta(w, mfd, err);
	if (!rc && pread(mfd, meta, meta_len, 0) != (ssize_t)meta_len)
		rc = ms_err_set(err, -EIO, "reading back the metadata");
	close(mfd);
	if (rc)
		goto out;

	pthread_mutex_init(&o.mu, NULL);
	pthread_cond_init(&o.cv, NULL);
	for (int i = 0; i < N_BUF; i++)
		if (posix_memalign((void **)&o.buf[i].data, 4096, CHUNK)) {
			rc = ms_err_set(err, -ENOMEM, "out of memory for buffers");
			for (int k = 0; k < i; k++)
				free(o.buf[k].data);
			goto out;
		}
	if ((rc = -pthread_create(&o.thread, NULL, writer_main, &o))) {
		ms_err_set(err, rc, "cannot start the writer thread");
		goto bufs;
	}
	uint32_t cursor = 0;
	unsigned bi = 0;
	for (uint64_t off = 0; off < size; off += CHUNK, bi = (bi + 1) % N_BUF) {
		pthread_mutex_lock(&o.mu);
		while (o.buf[bi].full && !o.err)
			pthread_cond_wait(&o.cv, &o.mu);
		int e = o.err;
		uint64_t written = o.written;
		pthread_mutex_unlock(&o.mu);
		if (e)
			break;
		uint64_t len = size - off < CHUNK ? size - off : CHUNK;
		produce(j, sh, meta, meta_len, o.buf[bi].data, off, len, &cursor);
		uint64_t wlen = o.direct ? (len + 4095) & ~4095ull : len;
		memset(o.buf[bi].data + len, 0, wlen - len);
		pthread_mutex_lock(&o.mu);
		o.buf[bi].off = off;
		o.buf[bi].len = wlen;
		o.buf[bi].full = true;
		pthread_cond_broadcast(&o.cv);
		pthread_mutex_unlock(&o.mu);
		progress_draw(j->pg, j->progress_base + written, false);
	}
	pthread_mutex_lock(&o.mu);
	o.done = true;
	pthread_cond_broadcast(&o.cv);
	pthread_mutex_unlock(&o.mu);
	pthread_join(o.thread, NULL);
	if (o.err)
		rc = ms_err_set(err, o.err, "writing %s: %s", path, strerror(-o.err));
	else if (ftruncate(o.fd, (off_t)size) || fdatasync(o.fd))
		rc = ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
	(void)n_sh;
bufs:
	for (int i = 0; i < N_BUF; i++)
		free(o.buf[i].data);
	pthread_mutex_destroy(&o.mu);
	pthread_cond_destroy(&o.cv);
out:
	free(meta);
	if (o.fd >= 0)
		close(o.fd);
	if (rc)
		unlink(path);
	return rc;
}

/* ---- the whole model ------------------------------------------------------------- */

static int shard_path(char *buf, size_t len, const char *out, uint32_t k,
		      uint32_t n)
{
	if (n == 1) {
		snprintf(buf, len, "%s", out);
		return 0;
	}
	size_t l = strlen(out);
	if (l > 5 && !strcmp(out + l - 5, ".gguf"))
		l -= 5;
	if (snprintf(buf, len, "%.*s-%05u-of-%05u.gguf", (int)l, out, k + 1, n) >=
	    (int)len)
		return -ENAMETOOLONG;
	return 0;
}

static int make_model(const struct shape *p, const struct tool_vocab *vocab,
		      const char *out, uint64_t split, bool sparse, bool force,
		      uint64_t seed)
{
	struct ms_err err = { 0 };
	struct tlist tl = { 0 };
	struct ms_gguf_writer **w = NULL;
	struct pool pools[MAX_POOLS] = { 0 };
	uint32_t n_sh = 1, n_pools = 0;
	char path[4200], b1[32], b2[32];
	int rc;

	if ((rc = build_tensors(p, &tl))) {
		ms_err_set(&err, rc, "out of memory");
		goto fail;
	}
	/* Shards: a new one when the next tensor would pass split bytes. */
	uint64_t in_shard = 0;
	for (uint32_t i = 0; i < tl.n; i++) {
		uint64_t sz;
		struct ms_err sub = { 0 };
		if ((rc = ms_type_row_size(tl.t[i].type, tl.t[i].ne[0], &sz, &sub))) {
			ms_err_set(&err, rc, "tensor %s: %s", tl.t[i].name, sub.msg);
			goto fail;
		}
		sz *= (uint64_t)tl.t[i].ne[1] * (uint64_t)tl.t[i].ne[2];
		if (split && in_shard && in_shard + sz > split) {
			n_sh++;
			in_shard = 0;
		}
		tl.t[i].shard = n_sh - 1;
		in_shard += sz;
	}
	if (n_sh > MS_MODEL_MAX_SHARDS) {
		rc = ms_err_set(&err, -EINVAL, "--split-size gives %u shards, over %d",
				n_sh, MS_MODEL_MAX_SHARDS);
		goto fail;
	}

	w = calloc(n_sh, sizeof(*w));
	if (!w) {
		rc = ms_err_set(&err, -ENOMEM, "out of memory");
		goto fail;
	}
	uint64_t total = 0;
	for (uint32_t s = 0; s < n_sh; s++) {
		if ((rc = ms_gguf_writer_init(&w[s], 32, &err)))
			goto fail;
		if (s == 0 && (rc = set_meta(w[s], p, vocab, &err)))
			goto fail;
		if (n_sh > 1) {
			uint16_t no = (uint16_t)s, cnt = (uint16_t)n_sh;
			int32_t nt = (int32_t)tl.n;
			if ((rc = ms_gguf_writer_set(w[s], "split.no", MS_GGUF_U16, &no, &err)) ||
			    (rc = ms_gguf_writer_set(w[s], "split.count", MS_GGUF_U16, &cnt, &err)) ||
			    (rc = ms_gguf_writer_set(w[s], "split.tensors.count", MS_GGUF_I32,
						     &nt, &err)))
				goto fail;
		}
		for (uint32_t i = 0; i < tl.n; i++) {
			if (tl.t[i].shard != s)
				continue;
			int idx = ms_gguf_writer_add_tensor(w[s], tl.t[i].name,
							    tl.t[i].n_dims, tl.t[i].ne,
							    tl.t[i].type, &err);
			if (idx < 0) {
				rc = idx;
				goto fail;
			}
			tl.t[i].offset = (uint64_t)idx; /* index until all are in */
		}
		/* Offsets are final only once the metadata is complete. */
		for (uint32_t i = 0; i < tl.n; i++) {
			if (tl.t[i].shard != s)
				continue;
			uint32_t idx = (uint32_t)tl.t[i].offset;
			tl.t[i].offset = ms_gguf_writer_tensor_offset(w[s], idx);
			tl.t[i].size = ms_gguf_writer_tensor_size(w[s], idx);
		}
		total += ms_gguf_writer_file_size(w[s]);
	}

	/* Room on the disk (a sparse file needs only its metadata). */
	snprintf(path, sizeof(path), "%s", out);
	char *slash = strrchr(path, '/');
	if (slash)
		*(slash == path ? slash + 1 : slash) = '\0';
	else
		snprintf(path, sizeof(path), ".");
	struct statvfs sv;
	uint64_t need = sparse ? ms_gguf_writer_data_offset(w[0]) : total;
	if (statvfs(path, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < need) {
		rc = ms_err_set(&err, -ENOSPC, "%s needs %s but %s has %s free", out,
				fmt_bytes(need, b1, sizeof(b1)), path,
				fmt_bytes((uint64_t)sv.f_bavail * sv.f_frsize, b2,
					  sizeof(b2)));
		goto fail;
	}
	/* Refuse before writing anything when a shard exists. */
	for (uint32_t s = 0; s < n_sh && !force; s++) {
		if ((rc = shard_path(path, sizeof(path), out, s, n_sh))) {
			ms_err_set(&err, rc, "output name too long");
			goto fail;
		}
		if (access(path, F_OK) == 0) {
			rc = ms_err_set(&err, -EEXIST,
					"%s exists; pass --force to overwrite it", path);
			goto fail;
		}
	}

	/* A pool of random valid blocks per quantized type (and row length). */
	uint64_t blocks_total = 0;
	for (uint32_t i = 0; i < tl.n; i++)
		if (tl.t[i].fill == FILL_BLOCKS)
			blocks_total += tl.t[i].size;
	bool whole = blocks_total <= WHOLE_POOL_MAX;
	for (uint32_t i = 0; i < tl.n && !sparse; i++) {
		if (tl.t[i].fill != FILL_BLOCKS)
			continue;
		bool have = false;
		int extra = tensor_extra(p, &tl.t[i]);
		for (uint32_t k = 0; k < n_pools; k++)
			have |= pools[k].type == tl.t[i].type &&
				pools[k].extra == extra;
		if (have)
			continue;
		if (n_pools == MAX_POOLS) {
			rc = ms_err_set(&err, -E2BIG, "more than %d kinds of weight "
					"(type and row length)", MAX_POOLS);
			goto fail;
		}
		struct pool *pl = &pools[n_pools++];
		pl->extra = extra;
		const struct ms_type_info *ti = ms_type_get(tl.t[i].type);
		pl->type = tl.t[i].type;
		pl->blck_bytes = ti->type_size;
		if (!whole)
			pl->bytes = POOL_BYTES / ti->type_size * ti->type_size;
		else /* pl->bytes is 0 here */
			for (uint32_t k = i; k < tl.n; k++)
				if (tl.t[k].fill == FILL_BLOCKS &&
				    tl.t[k].type == pl->type &&
				    tensor_extra(p, &tl.t[k]) == extra) {
					tl.t[k].pool_off = pl->bytes;
					pl->bytes += tl.t[k].size;
				}
		pl->data = malloc(pl->bytes);
		if (!pl->data) {
			rc = ms_err_set(&err, -ENOMEM, "out of memory");
			goto fail;
		}
		uint64_t s = seed * 0x2545f4914f6cdd1dull + pl->type +
			     ((uint64_t)extra << 32);
		fill_blocks(pl->data, pl->bytes, pl->type, &s, extra);
	}

	struct progress pg = { .tty = isatty(2) && !sparse, .t0 = tool_now_s(),
			       .total = total };
	struct job j = { .p = p, .tl = &tl, .pools = pools, .n_pools = n_pools,
			 .whole = whole, .seed = seed, .sparse = sparse, .pg = &pg };
	for (uint32_t s = 0; s < n_sh; s++) {
		shard_path(path, sizeof(path), out, s, n_sh);
		const char *base = strrchr(path, '/');
		pg.what = base ? base + 1 : path;
		if ((rc = write_shard(&j, s, n_sh, w[s], path, force, &err)))
			goto fail;
		j.progress_base += ms_gguf_writer_file_size(w[s]);
	}
	progress_draw(&pg, total, true);
	double dt = tool_now_s() - pg.t0;
	printf("wrote %s: %s, %u shard(s), %u tensors, %s", out,
	       p->preset ? p->preset : "hand-made", n_sh, tl.n,
	       fmt_bytes(total, b1, sizeof(b1)));
	if (sparse)
		printf(" (sparse: metadata only, the data reads as zeros)\n");
	else
		printf(" in %.1f s (%.2f GB/s)\n", dt,
		       dt > 0 ? (double)total / dt / 1e9 : 0.0);
	goto out;
fail:
	tool_error("mkmodel", "%s", err.msg);
out:
	for (uint32_t s = 0; w && s < n_sh; s++)
		ms_gguf_writer_free(w[s]);
	free(w);
	for (uint32_t k = 0; k < n_pools; k++)
		free(pools[k].data);
	free(tl.t);
	return rc ? 1 : 0;
}

/* ---- options ---------------------------------------------------------------------- */

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max,
		     uint32_t *out)
{
	/* opt is a long option's name, without the dashes */
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || !*s || v < min || v > max || *s == '-') {
		tool_error("mkmodel", "--%s '%s' is not a whole number in %u..%u",
			   opt, s, min, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

static int parse_types(const char *s, uint32_t t[MAX_TYPES])
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", s);
	char *save, *tok = strtok_r(buf, ",", &save);
	for (int i = 0; i < MAX_TYPES; i++, tok = strtok_r(NULL, ",", &save)) {
		int id = tok ? ms_type_from_name(tok) : -EINVAL;
		if (id < 0 || !type_writable((uint32_t)id)) {
			tool_error("mkmodel",
				   "--types '%s': '%s' is not a type mkmodel writes "
				   "(f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K "
				   "q4_K q5_K q6_K iq4_nl iq4_xs mxfp4); give three, "
				   "gate,up,down",
				   s, tok ? tok : "(missing)");
			return -1;
		}
		t[i] = (uint32_t)id;
	}
	if (tok) {
		tool_error("mkmodel", "--types '%s': three types, gate,up,down", s);
		return -1;
	}
	return 0;
}

/* Shapes that ggml and the quant blocks can hold. */
static int check_shape(const struct shape *p)
{
	if (p->n_used > p->n_expert || p->n_dense + p->n_nextn >= p->n_block) {
		tool_error("mkmodel",
			   "%u blocks with %u dense and %u NextN leave no MoE layer, "
			   "or --used %u > --experts %u",
			   p->n_block, p->n_dense, p->n_nextn, p->n_used, p->n_expert);
		return -1;
	}
	const uint32_t all[] = { p->t_exp[0], p->t_exp[1], p->t_exp[2], p->t_attn,
				 p->t_attn_v, p->t_embd, p->t_out, p->t_dense,
				 p->t_dense_down };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		uint32_t blk = ms_type_get(all[i])->blck;
		uint32_t dims[] = { p->n_embd, p->n_ff_exp, p->n_ff,
				    p->n_head * p->head_dim };
		for (size_t d = 0; d < 4; d++)
			if (dims[d] % blk) {
				tool_error("mkmodel",
					   "a row of %u elements does not hold whole "
					   "%s blocks of %u: choose --embd/--ff as "
					   "multiples of %u",
					   dims[d], ms_type_name(all[i]), blk, blk);
				return -1;
			}
	}
	return 0;
}

int cmd_mkmodel(int argc, char **argv)
{
	enum { O_LAYERS = 1000, O_DENSE, O_NEXTN, O_EXPERTS, O_USED, O_SHARED,
	       O_EMBD, O_FF, O_VOCAB, O_TYPES, O_SPLIT, O_SPARSE, O_MOE, O_ARCH,
	       O_TOK, O_TOK_PRE };
	static const struct option opts[] = {
		{ "preset", required_argument, 0, 'p' },
		{ "output", required_argument, 0, 'o' },
		{ "seed", required_argument, 0, 's' },
		{ "force", no_argument, 0, 'f' },
		{ "help", no_argument, 0, 'h' },
		{ "layers", required_argument, 0, O_LAYERS },
		{ "dense", required_argument, 0, O_DENSE },
		{ "nextn", required_argument, 0, O_NEXTN },
		{ "experts", required_argument, 0, O_EXPERTS },
		{ "used", required_argument, 0, O_USED },
		{ "shared", required_argument, 0, O_SHARED },
		{ "embd", required_argument, 0, O_EMBD },
		{ "ff", required_argument, 0, O_FF },
		{ "vocab", required_argument, 0, O_VOCAB },
		{ "types", required_argument, 0, O_TYPES },
		{ "split-size", required_argument, 0, O_SPLIT },
		{ "sparse", no_argument, 0, O_SPARSE },
		{ "moe-layers", required_argument, 0, O_MOE },
		{ "arch", required_argument, 0, O_ARCH },
		{ "tokenizer", required_argument, 0, O_TOK },
		{ "tokenizer-pre", required_argument, 0, O_TOK_PRE },
		{ 0, 0, 0, 0 },
	};
	struct shape sh = {
		.arch = "glm4moe", .title = "moestream test model", .n_block = 0,
		.n_vocab = 32000, .head_dim = 128, .n_ff = 0,
		.t_attn = MS_TYPE_Q8_0, .t_attn_v = MS_TYPE_Q8_0,
		.t_embd = MS_TYPE_Q8_0, .t_out = MS_TYPE_Q8_0,
		.t_dense = MS_TYPE_Q8_0, .t_dense_down = MS_TYPE_Q8_0, .gating = 2,
		.norm = true, .probs_bias = true, .ctx = 4096, .rope_dim = 64,
		.rope_base = 1e6f,
	};
	const char *preset = NULL, *out = NULL, *arch = NULL, *tok = NULL,
		   *tok_pre = NULL;
	uint64_t seed = 1, split = 0;
	bool force = false, sparse = false, set[O_ARCH - O_LAYERS + 1] = { 0 };
	uint32_t v[O_ARCH - O_LAYERS + 1] = { 0 }, types[MAX_TYPES];
	uint32_t maxv[] = { 65536, 65536, 65536, 65535, 64, 64, 1u << 20, 1u << 20,
			    1u << 22 };
	int c;

	while ((c = getopt_long(argc, argv, "p:o:s:fh", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'p': preset = optarg; break;
		case 'o': out = optarg; break;
		case 'f': force = true; break;
		case 's':
			errno = 0;
			seed = strtoull(optarg, &end, 0);
			if (errno || *end || !*optarg) {
				tool_error("mkmodel", "--seed '%s' is not a number",
					   optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h': usage(stdout); return 0;
		case O_LAYERS: case O_DENSE: case O_NEXTN: case O_EXPERTS:
		case O_USED: case O_SHARED: case O_EMBD: case O_FF: case O_VOCAB:
			if (parse_u32(opts[c - O_LAYERS + 5].name, optarg,
				      c == O_DENSE || c == O_NEXTN || c == O_SHARED
					      ? 0
					      : 1,
				      maxv[c - O_LAYERS], &v[c - O_LAYERS]))
				return EXIT_USAGE;
			set[c - O_LAYERS] = true;
			break;
		case O_MOE:
			if (parse_u32("moe-layers", optarg, 1, 65536, &v[c - O_LAYERS]))
				return EXIT_USAGE;
			set[c - O_LAYERS] = true;
			break;
		case O_TYPES:
			if (parse_types(optarg, types))
				return EXIT_USAGE;
			set[c - O_LAYERS] = true;
			break;
		case O_SPLIT:
			if (ms_parse_size(optarg, &split) || !split) {
				tool_error("mkmodel", "--split-size '%s' is not a size "
						      "(e.g. 4G, 500M)", optarg);
				return EXIT_USAGE;
			}
			break;
		case O_SPARSE: sparse = true; break;
		case O_ARCH: arch = optarg; break;
		case O_TOK: tok = optarg; break;
		case O_TOK_PRE:
			if (!tool_vocab_pre_known(optarg)) {
				tool_error("mkmodel", "--tokenizer-pre '%s' is not one "
					   "of %s", optarg, TOOL_VOCAB_PRE_NAMES);
				return EXIT_USAGE;
			}
			tok_pre = optarg;
			break;
		default:
			fprintf(stderr, "usage: moestream mkmodel --preset NAME -o FILE "
					"[options]  (see --help)\n");
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		tool_error("mkmodel", "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	if (!out) {
		tool_error("mkmodel", "-o FILE is required (try: moestream mkmodel "
				      "--preset tiny -o tiny.gguf)");
		return EXIT_USAGE;
	}
#define V(o) v[(o) - O_LAYERS]
#define SET(o) set[(o) - O_LAYERS]
	if (preset) {
		size_t i;
		for (i = 0; i < N_PRESETS; i++)
			if (!strcmp(presets[i].preset, preset))
				break;
		if (i == N_PRESETS) {
			tool_error("mkmodel", "unknown preset '%s' (known: "
					      "glm4.7-ud-q2_k_xl, glm4.7-ud-q4_k_xl, "
					      "qwen3-moe-30b-a3b, tiny)", preset);
			return EXIT_USAGE;
		}
		sh = presets[i];
		if (SET(O_MOE)) {
			sh.n_nextn = SET(O_NEXTN) ? V(O_NEXTN) : 0;
			sh.n_block = sh.n_dense + V(O_MOE) + sh.n_nextn;
		}
	} else {
		static const int need[] = { O_LAYERS, O_EXPERTS, O_USED, O_EMBD, O_FF,
					    O_TYPES };
		for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
			if (!SET(need[i])) {
				tool_error("mkmodel",
					   "give --preset NAME, or every one of --layers "
					   "--experts --used --embd --ff --types (--%s is "
					   "missing)",
					   opts[need[i] - O_LAYERS + 5].name);
				return EXIT_USAGE;
			}
		if (SET(O_MOE)) {
			tool_error("mkmodel", "--moe-layers goes with --preset; by "
					      "hand, use --layers and --dense");
			return EXIT_USAGE;
		}
		sh.n_block = V(O_LAYERS);
		sh.n_embd = V(O_EMBD);
		sh.n_ff_exp = V(O_FF);
		sh.n_ff = 2 * V(O_FF);
		sh.n_head = sh.n_embd / 128 ? sh.n_embd / 128 : 1;
		sh.n_head_kv = sh.n_head / 8 ? sh.n_head / 8 : 1;
	}
	if (SET(O_LAYERS) && preset)
		sh.n_block = V(O_LAYERS);
	if (SET(O_DENSE)) sh.n_dense = V(O_DENSE);
	if (SET(O_NEXTN)) sh.n_nextn = V(O_NEXTN);
	if (SET(O_EXPERTS)) sh.n_expert = V(O_EXPERTS);
	if (SET(O_USED)) sh.n_used = V(O_USED);
	if (SET(O_SHARED)) sh.n_shared = V(O_SHARED);
	if (SET(O_EMBD)) sh.n_embd = V(O_EMBD);
	if (SET(O_FF)) sh.n_ff_exp = V(O_FF);
	if (SET(O_VOCAB)) sh.n_vocab = V(O_VOCAB);
	if (SET(O_TYPES))
		memcpy(sh.t_exp, types, sizeof(types));
	if (arch)
		sh.arch = arch;
#undef V
#undef SET
	if (strlen(sh.arch) == 0 || strlen(sh.arch) > 63 || strchr(sh.arch, '%')) {
		tool_error("mkmodel", "--arch '%s' is not a valid name", sh.arch);
		return EXIT_USAGE;
	}
	if (tok_pre && !tok) {
		tool_error("mkmodel", "--tokenizer-pre goes with --tokenizer PATH");
		return EXIT_USAGE;
	}
	if (tok && set[O_VOCAB - O_LAYERS]) {
		tool_error("mkmodel", "--vocab and --tokenizer: the tokenizer sets "
				      "the vocabulary size");
		return EXIT_USAGE;
	}
	if (check_shape(&sh))
		return EXIT_USAGE;
	/* The vocabulary: the tokenizer's (its size becomes the model's), or
	 * the built-in one of the shape's size. */
	struct tool_vocab vocab;
	struct ms_err err = { 0 };
	int rc = tok ? tool_vocab_from_hf(&vocab, tok, tok_pre, &err)
		     : tool_vocab_builtin(&vocab, sh.n_vocab, &err);
	if (rc) {
		tool_error("mkmodel", "%s", err.msg);
		return 1;
	}
	sh.n_vocab = vocab.n_tokens;
	rc = make_model(&sh, &vocab, out, split, sparse, force, seed);
	tool_vocab_free(&vocab);
	return rc;
}
