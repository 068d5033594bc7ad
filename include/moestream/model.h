/*
 * model.h - the model room's contract: the quant type table, the GGUF reader
 * (v2, v3, split shards), a GGUF writer, and the expert map
 * (layer, expert) -> extents.
 *
 * Ownership: every object returned by an *_open / *_init belongs to the caller
 * and is released with the matching *_free (NULL is accepted). Pointers into
 * an object (names, strings, arrays, extents) live as long as the object.
 *
 * Errors: 0 or a negative errno; with a non-NULL struct ms_err the message
 * names the file, the field and the offending value. Nothing here aborts and
 * nothing reads past the bytes the file has: every count, length, dimension,
 * product, padding and offset is checked before use.
 */
#ifndef MOESTREAM_MODEL_H
#define MOESTREAM_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Quant types: ggml's type ids, one table (model/types.c).                  */

enum ms_type {
	MS_TYPE_F32 = 0,
	MS_TYPE_F16 = 1,
	MS_TYPE_Q4_0 = 2,
	MS_TYPE_Q4_1 = 3,
	/* 4, 5: Q4_2, Q4_3, retired */
	MS_TYPE_Q5_0 = 6,
	MS_TYPE_Q5_1 = 7,
	MS_TYPE_Q8_0 = 8,
	MS_TYPE_Q8_1 = 9,
	MS_TYPE_Q2_K = 10,
	MS_TYPE_Q3_K = 11,
	MS_TYPE_Q4_K = 12,
	MS_TYPE_Q5_K = 13,
	MS_TYPE_Q6_K = 14,
	MS_TYPE_Q8_K = 15,
	MS_TYPE_IQ2_XXS = 16,
	MS_TYPE_IQ2_XS = 17,
	MS_TYPE_IQ3_XXS = 18,
	MS_TYPE_IQ1_S = 19,
	MS_TYPE_IQ4_NL = 20,
	MS_TYPE_IQ3_S = 21,
	MS_TYPE_IQ2_S = 22,
	MS_TYPE_IQ4_XS = 23,
	MS_TYPE_I8 = 24,
	MS_TYPE_I16 = 25,
	MS_TYPE_I32 = 26,
	MS_TYPE_I64 = 27,
	MS_TYPE_F64 = 28,
	MS_TYPE_IQ1_M = 29,
	MS_TYPE_BF16 = 30,
	/* 31-33: Q4_0_4_4, Q4_0_4_8, Q4_0_8_8, retired */
	MS_TYPE_TQ1_0 = 34,
	MS_TYPE_TQ2_0 = 35,
	/* 36-38: IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8, retired */
	MS_TYPE_MXFP4 = 39,
	MS_TYPE_COUNT = 40, /* ids >= this are unknown to us and rejected */
};

struct ms_type_info {
	const char *name;    /* ggml's lower-case name: "q2_K", "mxfp4" */
	uint32_t blck;       /* elements per block */
	uint32_t type_size;  /* bytes per block */
	bool quantized;
};

/* The entry for `type`, or NULL when the id is retired or unknown. */
const struct ms_type_info *ms_type_get(uint32_t type);

/* Name for messages: the type's name, "retired(4)" or "unknown(77)". Uses a
 * static buffer for the last two cases; fine for one message at a time. */
const char *ms_type_name(uint32_t type);

/* The id for a ggml name (case-sensitive as ggml prints it, "Q2_K" accepted
 * too), or -EINVAL. */
int ms_type_from_name(const char *name);

/* Bytes of one row of `ne0` elements: -EINVAL if the type is unknown, ne0 < 1
 * or not a multiple of the block size; -EOVERFLOW if it does not fit. */
int ms_type_row_size(uint32_t type, int64_t ne0, uint64_t *out,
		     struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* GGUF reader (model/gguf.c).                                               */

enum ms_gguf_vtype {
	MS_GGUF_U8 = 0,
	MS_GGUF_I8 = 1,
	MS_GGUF_U16 = 2,
	MS_GGUF_I16 = 3,
	MS_GGUF_U32 = 4,
	MS_GGUF_I32 = 5,
	MS_GGUF_F32 = 6,
	MS_GGUF_BOOL = 7,
	MS_GGUF_STRING = 8,
	MS_GGUF_ARRAY = 9,
	MS_GGUF_U64 = 10,
	MS_GGUF_I64 = 11,
	MS_GGUF_F64 = 12,
	MS_GGUF_VTYPE_COUNT = 13,
};

const char *ms_gguf_vtype_name(uint32_t vtype); /* "u32", ..., "invalid" */

/* Caps on what a file may ask of us. Anything beyond is rejected. */
#define MS_GGUF_MAGIC "GGUF"
#define MS_GGUF_MAX_DIMS 4
#define MS_GGUF_MAX_NAME 63           /* tensor name bytes, as ggml (64 - NUL) */
#define MS_GGUF_MAX_KEY 65535         /* metadata key bytes */
#define MS_GGUF_MAX_STRING (64u << 20) /* one string value */
#define MS_GGUF_MAX_ARRAY (1ull << 32)  /* elements in one array */
#define MS_GGUF_MAX_KV (1u << 20)
#define MS_GGUF_MAX_TENSORS (1u << 20)
#define MS_GGUF_MAX_ALIGNMENT (16u << 20)
#define MS_GGUF_DEFAULT_ALIGNMENT 32
#define MS_GGUF_ARRAY_LOAD_MAX (64u << 20) /* numeric arrays up to this many
					      bytes are loaded; larger ones
					      keep only their file offset */

struct ms_gguf_kv {
	const char *key;        /* NUL-terminated, no embedded NUL */
	uint32_t type;          /* enum ms_gguf_vtype */
	union {
		uint64_t u;     /* U8..U64 */
		int64_t i;      /* I8..I64 */
		double f;       /* F32, F64 */
		bool b;         /* BOOL */
	} v;
	const char *str;        /* STRING: NUL-terminated copy ... */
	uint64_t str_len;       /* ... and its length (may hold NULs) */
	uint32_t arr_type;      /* ARRAY: element type (never ARRAY) */
	uint64_t arr_n;         /* ARRAY: element count */
	uint64_t arr_file_offset; /* ARRAY: offset of the first element */
	uint64_t arr_bytes;     /* ARRAY: bytes the elements take in the file */
	const void *arr_data;   /* ARRAY of numbers/bools, little-endian as in
				   the file, when <= MS_GGUF_ARRAY_LOAD_MAX
				   bytes; NULL for strings and larger arrays */
};

struct ms_gguf_tensor {
	char name[MS_GGUF_MAX_NAME + 1];
	uint32_t n_dims;              /* 1..4 */
	uint32_t type;                /* a valid enum ms_type */
	int64_t ne[MS_GGUF_MAX_DIMS]; /* each >= 1; unused dims are 1 */
	uint64_t offset;              /* relative to the data section */
	uint64_t size;                /* bytes */
	uint64_t file_offset;         /* data_offset + offset: absolute */
};

struct ms_gguf_index; /* private lookup tables */

struct ms_gguf {
	char *path;
	int fd;                 /* O_RDONLY|O_CLOEXEC, owned */
	uint64_t file_size;
	uint32_t version;       /* 2 or 3 */
	uint32_t alignment;
	uint64_t meta_size;     /* bytes up to the end of the tensor infos */
	uint64_t data_offset;   /* meta_size padded to alignment */
	uint64_t n_kv;
	struct ms_gguf_kv *kv;
	uint64_t n_tensors;
	struct ms_gguf_tensor *tensors;
	uint64_t bytes_read;    /* how much of the file the parse read */
	struct ms_gguf_index *index;
};

/* Parses the header, metadata and tensor infos of one GGUF file (only those:
 * tensor data is never read). */
int ms_gguf_open(struct ms_gguf **out, const char *path, struct ms_err *err);

/* The same from an open descriptor (dup'ed; the caller keeps `fd`). `name`
 * is used in messages. Reads with pread, never seeks `fd`. */
int ms_gguf_open_fd(struct ms_gguf **out, int fd, const char *name,
		    struct ms_err *err);

void ms_gguf_free(struct ms_gguf *g);

/* Index of a key / tensor, or -1. */
int64_t ms_gguf_find_key(const struct ms_gguf *g, const char *key);
int64_t ms_gguf_find_tensor(const struct ms_gguf *g, const char *name);

/* Typed getters: -ENOENT when absent, -EINVAL (with message) when the stored
 * type cannot represent the request (a negative value for get_u64, a string
 * for a number, ...), -EOVERFLOW for a u64 above INT64_MAX asked as i64. Any
 * integer width is accepted for the integer getters. */
int ms_gguf_get_u64(const struct ms_gguf *g, const char *key, uint64_t *out,
		    struct ms_err *err);
int ms_gguf_get_i64(const struct ms_gguf *g, const char *key, int64_t *out,
		    struct ms_err *err);
int ms_gguf_get_f64(const struct ms_gguf *g, const char *key, double *out,
		    struct ms_err *err);
int ms_gguf_get_bool(const struct ms_gguf *g, const char *key, bool *out,
		     struct ms_err *err);
int ms_gguf_get_str(const struct ms_gguf *g, const char *key,
		    const char **out, struct ms_err *err);

/* An array of strings, read from the file in one go (the parse keeps only
 * where it lies). str[i] points at len[i] bytes, NUL-terminated, inside one
 * allocation; ms_gguf_strs_free releases it. -ENOENT when absent, -EINVAL
 * naming the key when it is not an array of strings or the file changed. */
struct ms_gguf_strs {
	uint64_t n;
	const char **str;
	uint32_t *len;
	void *blob;
};
int ms_gguf_get_strs(const struct ms_gguf *g, const char *key,
		     struct ms_gguf_strs *out, struct ms_err *err);
void ms_gguf_strs_free(struct ms_gguf_strs *s);

/* ------------------------------------------------------------------------ */
/* GGUF writer (model/gguf_write.c): builds the metadata of a v3 file in     */
/* memory; the caller writes tensor data at the offsets it hands out.        */

struct ms_gguf_writer;

int ms_gguf_writer_init(struct ms_gguf_writer **out, uint32_t alignment,
			struct ms_err *err);
void ms_gguf_writer_free(struct ms_gguf_writer *w);

/* Scalars: `type` is a numeric/bool enum ms_gguf_vtype, `val` points at a
 * value of that width. Keys must be unique (-EEXIST). */
int ms_gguf_writer_set(struct ms_gguf_writer *w, const char *key,
		       uint32_t type, const void *val, struct ms_err *err);
int ms_gguf_writer_set_u32(struct ms_gguf_writer *w, const char *key,
			   uint32_t v, struct ms_err *err);
int ms_gguf_writer_set_f32(struct ms_gguf_writer *w, const char *key, float v,
			   struct ms_err *err);
int ms_gguf_writer_set_bool(struct ms_gguf_writer *w, const char *key, bool v,
			    struct ms_err *err);
int ms_gguf_writer_set_str(struct ms_gguf_writer *w, const char *key,
			   const char *v, struct ms_err *err);
/* Arrays of numbers (`elem` numeric/bool) or of strings (`elem` STRING,
 * `data` is const char *const[n]). */
int ms_gguf_writer_set_arr(struct ms_gguf_writer *w, const char *key,
			   uint32_t elem, uint64_t n, const void *data,
			   struct ms_err *err);

/* Adds a tensor after the previous one (offsets padded to the alignment) and
 * returns its index. ne[] has n_dims entries. */
int ms_gguf_writer_add_tensor(struct ms_gguf_writer *w, const char *name,
			      uint32_t n_dims, const int64_t *ne, uint32_t type,
			      struct ms_err *err);

uint64_t ms_gguf_writer_data_offset(const struct ms_gguf_writer *w);
/* Absolute file offset and size of tensor `i`. */
uint64_t ms_gguf_writer_tensor_offset(const struct ms_gguf_writer *w,
				      uint32_t i);
uint64_t ms_gguf_writer_tensor_size(const struct ms_gguf_writer *w, uint32_t i);
/* data_offset + the padded size of all tensors: the file's length. */
uint64_t ms_gguf_writer_file_size(const struct ms_gguf_writer *w);

/* Writes header, metadata, tensor infos and padding at offset 0 of `fd`. */
int ms_gguf_writer_write_meta(struct ms_gguf_writer *w, int fd,
			      struct ms_err *err);

/* ------------------------------------------------------------------------ */
/* Model: one GGUF or a split set, and its expert map (model/model.c).       */

#define MS_MODEL_MAX_SHARDS 9999 /* NAME-%05d-of-%05d.gguf */
/* layers x experts x projections: GLM-4.7 has 44,640; a file asking for more
 * than this is refused rather than allowed to make us allocate gigabytes. */
#define MS_MODEL_MAX_EXTENTS (1u << 22)

enum ms_proj {
	MS_PROJ_GATE = 0,
	MS_PROJ_UP = 1,
	MS_PROJ_DOWN = 2,
	MS_PROJ_GATE_UP = 3, /* fused: ne = [in, 2*out, n_expert], gate first */
	MS_PROJ_COUNT = 4,
};

const char *ms_proj_name(enum ms_proj p); /* "gate", "up", "down", "gate_up" */

/* One contiguous run of bytes in one shard. */
struct ms_extent {
	uint64_t offset;  /* absolute offset in the shard's file */
	uint64_t bytes;
	uint32_t shard;   /* 0-based */
	uint32_t type;    /* enum ms_type */
};

#define MS_MOE_MAX_PROJ 3

struct ms_moe_layer {
	uint32_t block;     /* N in blk.N */
	bool nextn;         /* a NextN/MTP block: in the file, not run */
	bool fused;         /* gate_up fused */
	uint32_t n_proj;    /* 3, or 2 when fused */
	enum ms_proj proj[MS_MOE_MAX_PROJ];   /* extent order within an expert */
	uint32_t type[MS_MOE_MAX_PROJ];
	int64_t ne[MS_MOE_MAX_PROJ][3];       /* [in, out, n_expert] */
	uint64_t expert_bytes;                /* sum over projections */
	struct ms_extent *ext;                /* [n_expert][n_proj] */
};

struct ms_model {
	uint32_t n_shards;
	struct ms_gguf **shards;     /* shards[0] carries the metadata */

	char arch[64];               /* general.architecture */
	char name[128];              /* general.name, or "" */
	uint32_t n_block;            /* {arch}.block_count */
	uint32_t n_expert;           /* {arch}.expert_count, 0 = dense model */
	uint32_t n_expert_used;      /* {arch}.expert_used_count */
	uint32_t n_expert_shared;    /* {arch}.expert_shared_count, or 0 */
	uint32_t n_leading_dense;    /* {arch}.leading_dense_block_count, or 0 */
	uint32_t n_nextn;            /* {arch}.nextn_predict_layers, or 0 */
	uint64_t n_embd;             /* {arch}.embedding_length, or 0 */
	uint64_t n_ff_exp;           /* {arch}.expert_feed_forward_length, or 0 */

	uint32_t n_layers;           /* MoE layers in the file */
	uint32_t n_layers_run;       /* of which run per token (not NextN) */
	struct ms_moe_layer *layers; /* by ascending block */
	int32_t *block_layer;        /* [n_block]: layer index or -1 (dense) */

	uint64_t n_tensors;          /* over all shards */
	uint64_t expert_bytes;       /* all routed experts in the file */
	uint64_t expert_bytes_run;   /* those of the layers run per token */
	uint64_t expert_bytes_min;   /* smallest / largest single expert */
	uint64_t expert_bytes_max;
	uint64_t resident_bytes;     /* every tensor that is not a routed expert */
	uint64_t n_resident_tensors;
	uint64_t bytes_per_token;    /* n_expert_used x sum over run layers of
					expert_bytes: what a token reads when
					nothing is cached */
};

/* Opens `path`; for NAME-0000K-of-0000N.gguf opens all N siblings, checks
 * split.count / split.no, that no tensor name repeats across shards, and
 * builds the expert map. A model without {arch}.expert_count opens as a
 * dense model (n_expert = 0, no layers). */
int ms_model_open(struct ms_model **out, const char *path, struct ms_err *err);
void ms_model_free(struct ms_model *m);

/* Extents of (layer index, expert): n_proj of them. NULL if out of range. */
const struct ms_extent *ms_model_expert(const struct ms_model *m,
					uint32_t layer, uint32_t expert);

/* Finds a tensor over all shards: 0 and *shard / *idx, or -ENOENT. */
int ms_model_find_tensor(const struct ms_model *m, const char *name,
			 uint32_t *shard, uint64_t *idx);

/* Splits "dir/NAME-00002-of-00003.gguf" into its parts: 0, or -EINVAL when
 * the name does not follow the pattern. `prefix` gets "dir/NAME"; `no` is
 * 1-based as in the name (2 here), `count` is 3. */
int ms_split_parse(const char *path, char *prefix, size_t prefix_len,
		   uint32_t *no, uint32_t *count);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_MODEL_H */
