/*
 * gguf_raw.h - a raw byte builder for GGUF files, for tests.
 *
 * moestream has its own GGUF writer (model/gguf_write.c), but a test that
 * checks the reader against files made by the reader's own team proves
 * little, and a writer that refuses bad values cannot make the hostile files
 * a parser must survive. This builder knows the format from the spec (and
 * ggml's type table, copied here by hand), not from moestream, and lets a
 * test put ANY value in ANY field: a magic of its choosing, a version of 1,
 * n_tensors = 2^63, a key length of UINT64_MAX, a tensor with n_dims 5, an
 * offset near UINT64_MAX, the whole file big-endian.
 *
 * A file is described by a struct gr_gguf: header fields, an ordered list of
 * metadata entries (each kept as its encoded bytes, so a test can replace one
 * with anything), an ordered list of tensor infos (each field free), the
 * alignment used to lay out the data, and the data size. gr_build() turns it
 * into bytes; gr_write() into a file. Out of memory aborts: this is test code.
 */
#ifndef MS_GGUF_RAW_H
#define MS_GGUF_RAW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- a growable byte buffer with little- (or big-) endian writers -------- */

struct gr_buf {
	uint8_t *p;
	size_t len, cap;
	bool be; /* write integers big-endian (for the big-endian file case) */
};

void gr_buf_init(struct gr_buf *b);
void gr_buf_free(struct gr_buf *b);
void gr_put(struct gr_buf *b, const void *p, size_t n);
void gr_zeros(struct gr_buf *b, size_t n);
void gr_u8(struct gr_buf *b, uint8_t v);
void gr_u16(struct gr_buf *b, uint16_t v);
void gr_u32(struct gr_buf *b, uint32_t v);
void gr_u64(struct gr_buf *b, uint64_t v);
void gr_f32(struct gr_buf *b, float v);
void gr_f64(struct gr_buf *b, double v);
/* A GGUF string: u64 length, then the bytes (no NUL). */
void gr_str(struct gr_buf *b, const char *s);
/* A GGUF string whose length FIELD says `len_field` while `n` bytes follow. */
void gr_strn(struct gr_buf *b, uint64_t len_field, const void *bytes, size_t n);

/* ---- the spec's value types and ggml's tensor types ---------------------- */

enum gr_vtype {
	GR_V_U8 = 0,
	GR_V_I8 = 1,
	GR_V_U16 = 2,
	GR_V_I16 = 3,
	GR_V_U32 = 4,
	GR_V_I32 = 5,
	GR_V_F32 = 6,
	GR_V_BOOL = 7,
	GR_V_STRING = 8,
	GR_V_ARRAY = 9,
	GR_V_U64 = 10,
	GR_V_I64 = 11,
	GR_V_F64 = 12,
};

/* Bytes of one scalar of value type `t`, 0 for string/array/invalid. */
size_t gr_vtype_size(uint32_t t);

enum gr_ttype {
	GR_T_F32 = 0,
	GR_T_F16 = 1,
	GR_T_Q4_0 = 2,
	GR_T_Q4_1 = 3,
	GR_T_Q5_0 = 6,
	GR_T_Q5_1 = 7,
	GR_T_Q8_0 = 8,
	GR_T_Q8_1 = 9,
	GR_T_Q2_K = 10,
	GR_T_Q3_K = 11,
	GR_T_Q4_K = 12,
	GR_T_Q5_K = 13,
	GR_T_Q6_K = 14,
	GR_T_Q8_K = 15,
	GR_T_IQ2_XXS = 16,
	GR_T_IQ4_NL = 20,
	GR_T_IQ4_XS = 23,
	GR_T_I8 = 24,
	GR_T_I16 = 25,
	GR_T_I32 = 26,
	GR_T_I64 = 27,
	GR_T_F64 = 28,
	GR_T_BF16 = 30,
	GR_T_TQ2_0 = 35,
	GR_T_MXFP4 = 39,
	GR_T_COUNT = 40,
};

/* ggml's block size and bytes per block for `type`; false if retired or
 * unknown. `name` (may be NULL) gets ggml's lower-case name. */
bool gr_type_traits(uint32_t type, uint32_t *blck, uint32_t *size,
		    const char **name);

/* Bytes of a tensor, computed the plain way with overflow checks; false when
 * the type is unknown, a dimension is < 1, ne0 is not a multiple of the
 * block size, or anything overflows. */
bool gr_tensor_bytes(uint32_t type, uint32_t n_dims, const uint64_t *ne,
		     uint64_t *out);

/* ---- a whole file -------------------------------------------------------- */

#define GR_MAX_NE 8

struct gr_kv {
	char *key;       /* for lookup only (may differ from the bytes) */
	uint8_t *bytes;  /* the whole entry as written: key, type, value */
	size_t len;
};

struct gr_tensor {
	uint8_t name[256];
	size_t name_len;         /* name bytes written */
	bool name_len_set;       /* write name_len_field instead of name_len */
	uint64_t name_len_field;
	uint32_t n_dims;         /* the field as written */
	uint32_t n_ne;           /* how many ne[] values are written */
	uint64_t ne[GR_MAX_NE];
	uint32_t type;
	uint64_t offset;         /* relative to the data section */
};

struct gr_gguf {
	char magic[4];
	uint32_t version;
	bool n_tensors_set, n_kv_set; /* else the list lengths are written */
	uint64_t n_tensors, n_kv;
	bool be;                 /* integers of header/kv/tensor infos BE */
	struct gr_kv *kv;
	size_t n_kvs, cap_kvs;
	struct gr_tensor *t;
	size_t nt, cap_t;
	uint64_t align;          /* layout and data-offset padding; 32 */
	bool data_size_set;      /* else: the end of the furthest tensor whose
				    size computes, padded to align */
	uint64_t data_size;
	uint8_t fill;            /* byte the data section is filled with */
	bool no_data_pad;        /* no padding between meta and data */
};

struct gr_layout {
	uint64_t meta_size;   /* bytes up to the end of the tensor infos */
	uint64_t data_offset; /* meta_size padded to align */
	uint64_t file_size;
};

void gr_init(struct gr_gguf *g);
void gr_free(struct gr_gguf *g);
/* Deep copy into an uninitialized `dst`. */
void gr_clone(struct gr_gguf *dst, const struct gr_gguf *src);

/* Metadata. The gr_set_* calls replace an entry with the same key (keeping
 * its place) or append one. */
void gr_set_u8(struct gr_gguf *g, const char *key, uint8_t v);
void gr_set_i8(struct gr_gguf *g, const char *key, int8_t v);
void gr_set_u16(struct gr_gguf *g, const char *key, uint16_t v);
void gr_set_i16(struct gr_gguf *g, const char *key, int16_t v);
void gr_set_u32(struct gr_gguf *g, const char *key, uint32_t v);
void gr_set_i32(struct gr_gguf *g, const char *key, int32_t v);
void gr_set_u64(struct gr_gguf *g, const char *key, uint64_t v);
void gr_set_i64(struct gr_gguf *g, const char *key, int64_t v);
void gr_set_f32(struct gr_gguf *g, const char *key, float v);
void gr_set_f64(struct gr_gguf *g, const char *key, double v);
void gr_set_bool(struct gr_gguf *g, const char *key, uint8_t v); /* any byte */
void gr_set_str(struct gr_gguf *g, const char *key, const char *v);
/* Array of numbers: `data` holds n * gr_vtype_size(elem) little-endian bytes
 * (written as given; with g->be they are byte-swapped per element). */
void gr_set_arr(struct gr_gguf *g, const char *key, uint32_t elem, uint64_t n,
		const void *data);
void gr_set_arr_str(struct gr_gguf *g, const char *key, uint64_t n,
		    const char *const *v);
/* Value bytes of any shape: `val` is written after the key as given (it
 * starts with the u32 value type). */
void gr_set_raw_val(struct gr_gguf *g, const char *key, const void *val,
		    size_t n);
/* Appends an entry whose bytes are entirely the caller's (key included);
 * `label` is only for lookup. Never replaces. */
void gr_append_raw(struct gr_gguf *g, const char *label, const void *bytes,
		   size_t n);
int gr_find_kv(const struct gr_gguf *g, const char *key);
bool gr_del(struct gr_gguf *g, const char *key);

/* Tensors: appended after the previous one, offset padded to g->align (a
 * tensor whose size does not compute takes no room). ne[] has n_dims
 * entries (n_dims <= GR_MAX_NE). Returns the index. */
int gr_add_tensor(struct gr_gguf *g, const char *name, uint32_t n_dims,
		  const uint64_t *ne, uint32_t type);
int gr_find_tensor(const struct gr_gguf *g, const char *name);
bool gr_del_tensor(struct gr_gguf *g, const char *name);
/* Recomputes every offset in list order (after a change of g->align, a
 * deletion or a change of shape). */
void gr_relayout(struct gr_gguf *g);
/* Sets tensor i's name to `n` raw bytes (may hold NULs, may be long). */
void gr_tensor_name(struct gr_tensor *t, const void *name, size_t n);

/* Serializes `g` into `out` (initialized by the call). */
void gr_build(const struct gr_gguf *g, struct gr_buf *out,
	      struct gr_layout *lay);
/* Builds and writes to `path`: 0 or -errno. */
int gr_write(const struct gr_gguf *g, const char *path);

/* ---- a small byte-level BPE vocabulary ------------------------------------
 * The tokenizer keys of a "gpt2" model (tokenizer.ggml.*), hand-made so that
 * a test knows every id: ids 0..255 are the GPT-2 byte-level characters of
 * the bytes 0..255 (id == byte, the map written out here from the GPT-2
 * scheme, not taken from engine/), then the merges' tokens and three
 * special ones. Merges, by rank: "b c", "a b", "a a", "Ġ a", "Ġa bc" - so
 * "abc" is [a, bc] (rank beats position), "aaa" is [aa, a] (leftmost among
 * equal ranks) and " abc" is [Ġabc]. bos = eos = pad = <|endoftext|>,
 * add_bos_token false, pre "qwen2". A test edits the struct, then builds. */
enum {
	GR_VOCAB_BC = 256,     /* "bc" */
	GR_VOCAB_AB,           /* "ab" */
	GR_VOCAB_AA,           /* "aa" */
	GR_VOCAB_SP_A,         /* "Ġa" */
	GR_VOCAB_SP_ABC,       /* "Ġabc" */
	GR_VOCAB_IM_START,     /* "<|im_start|>", control */
	GR_VOCAB_EOT,          /* "<|endoftext|>", control */
	GR_VOCAB_TOOL,         /* "<tool>", user-defined */
	GR_VOCAB_N,
	GR_VOCAB_CAP = GR_VOCAB_N + 16,
};

struct gr_vocab {
	const char *model, *pre;         /* NULL: key not written */
	uint32_t n;                      /* tokens written */
	const char *tok[GR_VOCAB_CAP];
	int32_t type[GR_VOCAB_CAP];
	bool write_types;
	uint32_t n_merges;
	const char *merge[16];
	bool write_merges;
	int64_t bos, eos, pad;           /* < 0: key not written (u32 else) */
	int add_bos;                     /* -1: key not written */
};

/* The vocabulary above; the byte texts live in static storage. */
void gr_vocab_default(struct gr_vocab *v);
/* The GPT-2 byte-level character of byte b, NUL-terminated (static). */
const char *gr_bytelevel(uint8_t b);
/* Writes v's keys into g (replacing keys of the same name). */
void gr_vocab_build(struct gr_gguf *g, const struct gr_vocab *v);

/* ---- MoE models ---------------------------------------------------------- */

struct gr_moe {
	const char *arch;         /* general.architecture */
	const char *name;         /* general.name or NULL */
	uint32_t version;         /* GGUF version, 3 */
	uint32_t n_block;
	uint32_t n_expert;        /* 0: a dense model, no expert keys */
	uint32_t n_expert_used;
	uint32_t n_leading_dense; /* first blocks with a dense FFN */
	uint32_t n_nextn;         /* last blocks marked NextN (still MoE) */
	uint32_t n_shared;        /* shared experts (ffn_*_shexp tensors) */
	uint64_t n_embd, n_ff, n_ff_dense, n_vocab;
	bool fused;               /* ffn_gate_up_exps instead of gate + up */
	bool legacy;              /* old Mixtral layout: one 2-D tensor per
				     expert, blk.N.ffn_gate.E.weight */
	uint32_t type[3];         /* gate (or gate_up), up, down */
	uint32_t type_alt[3];     /* used on odd blocks when type_alt[0] != 0 */
	uint32_t align;           /* general.alignment written when != 32 */
};

/* A small MoE: qwen3moe, 2 blocks, 4 experts (2 used), n_embd 32, n_ff 4,
 * gate/up q4_0, down f16 - about 5 KB. */
void gr_moe_default(struct gr_moe *o);
/* Fills an initialized `g` with the metadata and tensors of `o`. */
void gr_moe_build(struct gr_gguf *g, const struct gr_moe *o);
/* Name of the expert tensor of block `blk`: proj "gate", "up", "down",
 * "gate_up" -> "blk.N.ffn_gate_exps.weight". Static buffer. */
const char *gr_exps_name(uint32_t blk, const char *proj);
/* The legacy per-expert name "blk.N.ffn_gate.E.weight". Static buffer. */
const char *gr_legacy_name(uint32_t blk, const char *proj, uint32_t e);

/* Splits `g` into `n` shards (each initialized by the call): tensors in
 * order, in runs as even as possible; shard 0 gets all of g's metadata,
 * every shard gets split.no (u16), split.count (u16) and
 * split.tensors.count (i32, the total). */
void gr_split(const struct gr_gguf *g, uint32_t n, struct gr_gguf *shards);
/* "dir/prefix-0000K-of-0000N.gguf" (K 1-based), malloc'ed. */
char *gr_split_path(const char *dir, const char *prefix, uint32_t k,
		    uint32_t n);

/* ---- ggml as the referee --------------------------------------------------
 * Opens `path` with ggml's own gguf_init_from_file (libggml-base.so from
 * $MS_GGML_LIB) and compares what it read with `g` and its layout: tensor
 * count, names, types, offsets, data offset, kv count. Returns 1 when ggml
 * agrees, 0 when it disagrees or rejects (with the reason in `why`), -1 when
 * the library cannot be loaded (reason in `why`). */
int gr_ggml_check(const char *path, const struct gr_gguf *g, char *why,
		  size_t why_len);

#endif /* MS_GGUF_RAW_H */
