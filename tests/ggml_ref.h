/*
 * ggml_ref.h - ggml itself as the reference for GGUF and the quant formats.
 *
 * libggml-base.so from the pinned npm package @node-llama-cpp/linux-x64@3.22.1
 * (fetched by tests/fetch-ggml.sh) is opened with dlopen; nothing of ggml is
 * linked into moestream or copied into this tree. The struct below holds the
 * few entry points the tests call, with the signatures of ggml's public
 * headers (ggml/include/ggml.h, ggml/include/gguf.h).
 *
 * A test that needs ggml calls ggml_ref_load_or_fail() first: when the library
 * cannot be had the test FAILS (exit 1) and says why, it never skips.
 *
 * On top of the raw entry points there is a GGUF writer driven by a plain
 * description (tensors, metadata callback, shards), and a builder for small
 * MoE models in the shapes llama.cpp writes (glm4moe, qwen3moe, mixtral-style
 * llama, gpt-oss), so every test model is written by ggml's own writer.
 */
#ifndef MS_GGML_REF_H
#define MS_GGML_REF_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Opaque in ggml too. */
struct ggml_context;
struct ggml_tensor;
struct gguf_context;

/* From ggml.h / gguf.h: passed by value, so the layout must match. */
struct ggml_init_params {
	size_t mem_size;
	void *mem_buffer;
	bool no_alloc;
};

struct gguf_init_params {
	bool no_alloc;
	struct ggml_context **ctx;
};

/* ggml's GGML_TYPE_COUNT in the pinned build: ids 40 nvfp4, 41 q1_0, 42 q2_0
 * exist there but not in moestream. ggml indexes its type table without a
 * bounds check, so ids >= this are never passed to ggml. */
#define GGML_REF_TYPE_COUNT 43

/* gguf_type values are the same numbers as enum ms_gguf_vtype. */

struct ggml_ref {
	void *handle;
	char path[PATH_MAX];

	/* ggml.h */
	struct ggml_context *(*ggml_init)(struct ggml_init_params params);
	void (*ggml_free)(struct ggml_context *ctx);
	size_t (*ggml_tensor_overhead)(void);
	struct ggml_tensor *(*ggml_new_tensor)(struct ggml_context *ctx,
					       int type, int n_dims,
					       const int64_t *ne);
	struct ggml_tensor *(*ggml_set_name)(struct ggml_tensor *t,
					     const char *name);
	struct ggml_tensor *(*ggml_get_tensor)(struct ggml_context *ctx,
					       const char *name);
	void *(*ggml_get_data)(const struct ggml_tensor *t);
	size_t (*ggml_nbytes)(const struct ggml_tensor *t);
	int (*ggml_n_dims)(const struct ggml_tensor *t);
	const char *(*ggml_type_name)(int type);
	int64_t (*ggml_blck_size)(int type);
	size_t (*ggml_type_size)(int type);
	size_t (*ggml_row_size)(int type, int64_t ne);
	bool (*ggml_is_quantized)(int type);
	const char *(*ggml_version)(void);
	const char *(*ggml_commit)(void);

	/* gguf.h */
	struct gguf_context *(*gguf_init_empty)(void);
	struct gguf_context *(*gguf_init_from_file)(const char *fname,
						    struct gguf_init_params p);
	void (*gguf_free)(struct gguf_context *ctx);
	const char *(*gguf_type_name)(int type);
	uint32_t (*gguf_get_version)(const struct gguf_context *ctx);
	size_t (*gguf_get_alignment)(const struct gguf_context *ctx);
	size_t (*gguf_get_data_offset)(const struct gguf_context *ctx);
	int64_t (*gguf_get_n_kv)(const struct gguf_context *ctx);
	int64_t (*gguf_find_key)(const struct gguf_context *ctx,
				 const char *key);
	const char *(*gguf_get_key)(const struct gguf_context *ctx, int64_t id);
	int (*gguf_get_kv_type)(const struct gguf_context *ctx, int64_t id);
	int (*gguf_get_arr_type)(const struct gguf_context *ctx, int64_t id);
	uint8_t (*gguf_get_val_u8)(const struct gguf_context *ctx, int64_t id);
	int8_t (*gguf_get_val_i8)(const struct gguf_context *ctx, int64_t id);
	uint16_t (*gguf_get_val_u16)(const struct gguf_context *ctx, int64_t id);
	int16_t (*gguf_get_val_i16)(const struct gguf_context *ctx, int64_t id);
	uint32_t (*gguf_get_val_u32)(const struct gguf_context *ctx, int64_t id);
	int32_t (*gguf_get_val_i32)(const struct gguf_context *ctx, int64_t id);
	float (*gguf_get_val_f32)(const struct gguf_context *ctx, int64_t id);
	uint64_t (*gguf_get_val_u64)(const struct gguf_context *ctx, int64_t id);
	int64_t (*gguf_get_val_i64)(const struct gguf_context *ctx, int64_t id);
	double (*gguf_get_val_f64)(const struct gguf_context *ctx, int64_t id);
	bool (*gguf_get_val_bool)(const struct gguf_context *ctx, int64_t id);
	const char *(*gguf_get_val_str)(const struct gguf_context *ctx,
					int64_t id);
	size_t (*gguf_get_arr_n)(const struct gguf_context *ctx, int64_t id);
	const void *(*gguf_get_arr_data)(const struct gguf_context *ctx,
					 int64_t id);
	const char *(*gguf_get_arr_str)(const struct gguf_context *ctx,
					int64_t id, size_t i);
	int64_t (*gguf_get_n_tensors)(const struct gguf_context *ctx);
	int64_t (*gguf_find_tensor)(const struct gguf_context *ctx,
				    const char *name);
	size_t (*gguf_get_tensor_offset)(const struct gguf_context *ctx,
					 int64_t id);
	const char *(*gguf_get_tensor_name)(const struct gguf_context *ctx,
					    int64_t id);
	int (*gguf_get_tensor_type)(const struct gguf_context *ctx, int64_t id);
	size_t (*gguf_get_tensor_size)(const struct gguf_context *ctx,
				       int64_t id);
	const int64_t *(*gguf_get_tensor_ne)(const struct gguf_context *ctx,
					     int64_t id);
	size_t (*gguf_get_meta_size)(const struct gguf_context *ctx);
	void (*gguf_set_val_u8)(struct gguf_context *ctx, const char *key,
				uint8_t v);
	void (*gguf_set_val_i8)(struct gguf_context *ctx, const char *key,
				int8_t v);
	void (*gguf_set_val_u16)(struct gguf_context *ctx, const char *key,
				 uint16_t v);
	void (*gguf_set_val_i16)(struct gguf_context *ctx, const char *key,
				 int16_t v);
	void (*gguf_set_val_u32)(struct gguf_context *ctx, const char *key,
				 uint32_t v);
	void (*gguf_set_val_i32)(struct gguf_context *ctx, const char *key,
				 int32_t v);
	void (*gguf_set_val_f32)(struct gguf_context *ctx, const char *key,
				 float v);
	void (*gguf_set_val_u64)(struct gguf_context *ctx, const char *key,
				 uint64_t v);
	void (*gguf_set_val_i64)(struct gguf_context *ctx, const char *key,
				 int64_t v);
	void (*gguf_set_val_f64)(struct gguf_context *ctx, const char *key,
				 double v);
	void (*gguf_set_val_bool)(struct gguf_context *ctx, const char *key,
				  bool v);
	void (*gguf_set_val_str)(struct gguf_context *ctx, const char *key,
				 const char *v);
	void (*gguf_set_arr_data)(struct gguf_context *ctx, const char *key,
				  int type, const void *data, size_t n);
	void (*gguf_set_arr_str)(struct gguf_context *ctx, const char *key,
				 const char **data, size_t n);
	void (*gguf_add_tensor)(struct gguf_context *ctx,
				const struct ggml_tensor *t);
	bool (*gguf_write_to_file)(const struct gguf_context *ctx,
				   const char *fname, bool only_meta);

	/* ---- quantizers and dequantizers (added for t_dequant, t_dump) ---- */
	/* ggml.h: quantizes nrows rows of n_per_row floats starting at element
	 * `start` of src (a multiple of n_per_row) into dst + the matching
	 * byte offset; returns the bytes written. Aborts on bad input, so the
	 * caller checks n_per_row against the block size first. */
	size_t (*ggml_quantize_chunk)(int type, const float *src, void *dst,
				      int64_t start, int64_t nrows,
				      int64_t n_per_row, const float *imatrix);
	void (*ggml_quantize_init)(int type);
	bool (*ggml_quantize_requires_imatrix)(int type);
	/* ggml_fp16_t and ggml_bf16_t are 16-bit patterns (bf16 is a struct
	 * of one uint16_t), passed by pointer. */
	void (*ggml_fp32_to_fp16_row)(const float *x, uint16_t *y, int64_t n);
	void (*ggml_fp32_to_bf16_row)(const float *x, uint16_t *y, int64_t n);
	void (*ggml_fp16_to_fp32_row)(const uint16_t *x, float *y, int64_t n);
	void (*ggml_bf16_to_fp32_row)(const uint16_t *x, float *y, int64_t n);
	/* dequantize_row_<ggml_type_name> by type id, from ggml-quants.h; NULL
	 * where the library exports none (f32, f16, bf16, i8, ...). */
	void (*dequantize_row[GGML_REF_TYPE_COUNT])(const void *x, float *y,
						     int64_t k);
};

/* Opens the library named by MS_GGML_LIB (else
 * ${MS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moestream}/ggml-3.22.1/
 * libggml-base.so) and resolves every entry point. 0 on success; -1 after
 * printing to stderr why not (including the fetch error that
 * tests/fetch-ggml.sh left in $MS_GGML_FETCH_FAILED, if any). */
int ggml_ref_load(struct ggml_ref *r);

/* ggml_ref_load, or exit 1 (a failure, never a skip) saying why. */
void ggml_ref_load_or_fail(struct ggml_ref *r);

/* True when ggml knows `type` (0 <= type < GGML_REF_TYPE_COUNT and not
 * retired, i.e. a block size > 0): only then may ggml be asked about it. */
bool ggml_ref_type_ok(const struct ggml_ref *r, int type);

/* Same as ggml's ggml_n_dims() on a plain ne[4]: trailing 1s do not count
 * (this is what ggml's writer stores as n_dims). */
int ggml_ref_n_dims(const int64_t ne[4]);

/* ggml's own dequantisation of `n` elements of `type` (a multiple of its
 * block size): dequantize_row_* for quantized types, ggml_fp16_to_fp32_row /
 * ggml_bf16_to_fp32_row for f16 / bf16, a copy for f32. 0, or -1 (nothing
 * written) when ggml has no dequantizer for the type or n is not a multiple
 * of the block. */
int ggml_ref_dequantize(const struct ggml_ref *r, int type, const void *src,
			float *dst, int64_t n);

/* "PREFIX-%05u-of-%05u.gguf" (no is 0-based, the name 1-based). */
void ggml_ref_shard_path(char *buf, size_t len, const char *prefix,
			 uint32_t no, uint32_t count);

/* ---- writing GGUF files with ggml's writer ------------------------------ */

struct ggml_ref_tensor {
	char name[64];
	int type;         /* ggml type id */
	int n_dims;       /* 1..4 (what is passed to ggml_new_tensor) */
	int64_t ne[4];    /* unused dims 1 */
	uint32_t shard;   /* 0-based; ignored for a single file */
};

/* Sets the metadata of the first (or only) file; split.* and
 * general.alignment are added by the writer. */
typedef void (*ggml_ref_kv_fn)(const struct ggml_ref *r,
			       struct gguf_context *ctx, void *user);

struct ggml_ref_file {
	const char *path;     /* n_shards <= 1: the file; else "dir/NAME" and
				 the shards are NAME-0000K-of-0000N.gguf */
	uint32_t n_shards;
	uint32_t alignment;   /* 0: ggml's default; else general.alignment in
				 every shard (a power of two) */
	ggml_ref_kv_fn set_kv;
	void *user;
	const struct ggml_ref_tensor *tensors;
	size_t n_tensors;
	uint64_t *rng;        /* non-NULL: tensor data is random bytes from
				 t_rand(rng); NULL: zeros (a sparse file) */
};

/* Writes the file (or every shard) with gguf_write_to_file, then the tensor
 * data at the offsets ggml chose. Shards like llama-gguf-split: each carries
 * split.no (u16, 0-based), split.count (u16) and split.tensors.count (i32,
 * over all shards); all other metadata only in the first. Validates the
 * description first (ggml would abort): 0, or -1 after printing why. */
int ggml_ref_write(const struct ggml_ref *r, const struct ggml_ref_file *f);

/* ---- small MoE models in llama.cpp's tensor layout ----------------------- */

struct ggml_ref_moe {
	const char *arch;          /* "glm4moe", "qwen3moe", "llama", "gpt-oss" */
	uint32_t n_block;          /* {arch}.block_count, NextN blocks included */
	uint32_t n_expert;
	uint32_t n_expert_used;
	uint32_t n_embd;
	uint32_t n_ff;             /* expert_feed_forward_length */
	uint32_t n_ff_dense;       /* dense blocks' feed_forward_length */
	uint32_t n_vocab;
	uint32_t n_leading_dense;  /* 0: key absent */
	uint32_t n_nextn;          /* 0: key absent; the last blocks */
	uint32_t n_shared;         /* 0: key absent, no *_shexp tensors */
	bool fused;                /* ffn_gate_up_exps instead of gate + up */
	bool expert_bias;          /* gpt-oss: ffn_{gate,up,down}_exps.bias */
	bool probs_bias;           /* glm4moe/deepseek: exp_probs_b.bias */
	int type[3];               /* gate (or gate_up), up, down */
	const int (*block_type)[3];/* per block override, NULL = type[] */
	int resident_type;         /* 2-D attention/dense/embedding weights */
	uint32_t n_shards;         /* 0/1: one file */
	uint32_t split_max_tensors;/* tensors per shard, as gguf-split's
				      --split-max-tensors (0: even split) */
	uint32_t alignment;        /* 0: default */
	uint64_t *rng;             /* random tensor data; NULL: zeros */
};

/* Builds the tensor list of `m` (malloc'ed into *out / *n; free()). */
int ggml_ref_moe_tensors(const struct ggml_ref *r, const struct ggml_ref_moe *m,
			 struct ggml_ref_tensor **out, size_t *n);

/* Writes `m` to `path` (a file, or the split prefix "dir/NAME"). */
int ggml_ref_write_moe(const struct ggml_ref *r, const struct ggml_ref_moe *m,
		       const char *path);

#endif /* MS_GGML_REF_H */
