/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader and the expert map.
 *
 * The input becomes a file (a memfd, so nothing touches the disk) that is
 * opened twice: with ms_gguf_open_fd, then with ms_model_open on
 * /proc/self/fd/N, which runs the whole model path including the expert-map
 * builder. Beyond "no crash, no sanitizer report", the target checks the
 * contract of model.h on whatever is accepted - every tensor inside the
 * file, dimensions in range, every extent inside its shard - and on whatever
 * is rejected - a negative errno, recorded in err.code, with a message. A
 * broken promise is a crash (abort) so that libFuzzer keeps the input.
 *
 * A GGUF that opens also goes to the vocabulary reader (ms_vocab_load, the
 * tokenizer.ggml.* keys): rejected, the same errno-and-message contract;
 * accepted, every promise of engine.h about the vocabulary (counts within
 * the caps, special ids inside it, every token text non-empty, within
 * MS_VOCAB_MAX_TOKEN_LEN and found again by ms_vocab_find) and a few
 * tokenizations (a fixed text, token texts run together, the input's first
 * bytes) that must succeed with every id inside the vocabulary.
 *
 * model.h, engine.h and util.h are used: `make fuzz` links this with the
 * model/ and engine/ sources. tests/t_fuzz_seeds.c includes this file to run
 * the committed seeds (and any crash found here, once saved to
 * tests/fuzz/corpus/gguf) through the same entry as regression tests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "moestream/engine.h"
#include "moestream/model.h"
#include "moestream/util.h"

/* What one input did: bit 0 the GGUF opened, bit 1 the model opened, bit 2
 * the vocabulary loaded. */
#define FUZZ_GGUF_OK 1
#define FUZZ_MODEL_OK 2
#define FUZZ_VOCAB_OK 4

static void fuzz_broken(const char *what, unsigned long long a,
			unsigned long long b)
{
	fprintf(stderr, "fuzz_gguf: contract broken: %s (%llu, %llu)\n", what,
		a, b);
	abort();
}

#define FUZZ_CHECK(cond, a, b)                                                 \
	do {                                                                   \
		if (!(cond))                                                   \
			fuzz_broken(#cond, (unsigned long long)(a),            \
				    (unsigned long long)(b));                  \
	} while (0)

static void fuzz_check_err(int rc, const struct ms_err *err, const void *obj)
{
	FUZZ_CHECK(rc < 0, rc, 0);
	FUZZ_CHECK(err->code == rc, err->code, rc);
	FUZZ_CHECK(err->msg[0] != '\0', rc, 0);
	FUZZ_CHECK(memchr(err->msg, '\0', sizeof(err->msg)) != NULL, 0, 0);
	FUZZ_CHECK(obj == NULL, rc, 0);
}

/* Everything a reader promises about a file it accepted. */
static void fuzz_check_gguf(const struct ms_gguf *g)
{
	FUZZ_CHECK(g->version == 2 || g->version == 3, g->version, 0);
	FUZZ_CHECK(ms_is_pow2_u64(g->alignment), g->alignment, 0);
	FUZZ_CHECK(g->alignment <= MS_GGUF_MAX_ALIGNMENT, g->alignment, 0);
	FUZZ_CHECK(g->meta_size <= g->data_offset, g->meta_size, g->data_offset);
	FUZZ_CHECK(g->data_offset % g->alignment == 0, g->data_offset,
		   g->alignment);
	FUZZ_CHECK(g->n_kv <= MS_GGUF_MAX_KV, g->n_kv, 0);
	FUZZ_CHECK(g->n_tensors <= MS_GGUF_MAX_TENSORS, g->n_tensors, 0);
	if (g->n_tensors)
		FUZZ_CHECK(g->data_offset <= g->file_size, g->data_offset,
			   g->file_size);

	for (uint64_t i = 0; i < g->n_kv; i++) {
		const struct ms_gguf_kv *kv = &g->kv[i];
		FUZZ_CHECK(kv->key != NULL, i, 0);
		size_t klen = strlen(kv->key);
		FUZZ_CHECK(klen <= MS_GGUF_MAX_KEY, klen, i);
		FUZZ_CHECK(kv->type < MS_GGUF_VTYPE_COUNT, kv->type, i);
		/* Keys are unique, and find_key finds each one. */
		FUZZ_CHECK(ms_gguf_find_key(g, kv->key) == (int64_t)i, i, 0);
		if (kv->type == MS_GGUF_STRING) {
			FUZZ_CHECK(kv->str != NULL, i, 0);
			FUZZ_CHECK(kv->str_len <= MS_GGUF_MAX_STRING, kv->str_len, i);
			FUZZ_CHECK(kv->str[kv->str_len] == '\0', i, kv->str_len);
		} else if (kv->type == MS_GGUF_ARRAY) {
			FUZZ_CHECK(kv->arr_type < MS_GGUF_VTYPE_COUNT &&
					   kv->arr_type != MS_GGUF_ARRAY,
				   kv->arr_type, i);
			FUZZ_CHECK(kv->arr_n <= MS_GGUF_MAX_ARRAY, kv->arr_n, i);
			FUZZ_CHECK(kv->arr_file_offset <= g->file_size,
				   kv->arr_file_offset, g->file_size);
			if (kv->arr_data && kv->arr_n) {
				/* Touch the first and last byte: ASan knows
				 * whether they are ours. */
				const volatile uint8_t *p = kv->arr_data;
				size_t es = kv->arr_type == MS_GGUF_U8 ||
							    kv->arr_type == MS_GGUF_I8 ||
							    kv->arr_type == MS_GGUF_BOOL
						    ? 1
					    : kv->arr_type == MS_GGUF_U16 ||
							    kv->arr_type == MS_GGUF_I16
						    ? 2
					    : kv->arr_type == MS_GGUF_U32 ||
							    kv->arr_type == MS_GGUF_I32 ||
							    kv->arr_type == MS_GGUF_F32
						    ? 4
						    : 8;
				(void)p[0];
				(void)p[kv->arr_n * es - 1];
			}
		}
		/* The getters never crash, whatever the type. */
		uint64_t u;
		int64_t s;
		double f;
		bool b;
		const char *str;
		struct ms_err e;
		ms_gguf_get_u64(g, kv->key, &u, &e);
		ms_gguf_get_i64(g, kv->key, &s, &e);
		ms_gguf_get_f64(g, kv->key, &f, &e);
		ms_gguf_get_bool(g, kv->key, &b, &e);
		if (ms_gguf_get_str(g, kv->key, &str, &e) == 0)
			FUZZ_CHECK(str != NULL, i, 0);
		(void)ms_gguf_vtype_name(kv->type);
	}

	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct ms_gguf_tensor *t = &g->tensors[i];
		size_t nlen = strnlen(t->name, sizeof(t->name));
		FUZZ_CHECK(nlen >= 1 && nlen <= MS_GGUF_MAX_NAME, nlen, i);
		FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= MS_GGUF_MAX_DIMS,
			   t->n_dims, i);
		const struct ms_type_info *ti = ms_type_get(t->type);
		FUZZ_CHECK(ti != NULL, t->type, i);
		uint64_t n = 1;
		for (int d = 0; d < MS_GGUF_MAX_DIMS; d++) {
			FUZZ_CHECK(t->ne[d] >= 1, t->ne[d], d);
			if ((uint32_t)d >= t->n_dims)
				FUZZ_CHECK(t->ne[d] == 1, t->ne[d], d);
			FUZZ_CHECK(!ms_mul_overflow_u64(n, (uint64_t)t->ne[d], &n),
				   n, t->ne[d]);
		}
		FUZZ_CHECK(n <= (uint64_t)INT64_MAX, n, i);
		FUZZ_CHECK(t->ne[0] % ti->blck == 0, t->ne[0], ti->blck);
		FUZZ_CHECK(n / ti->blck * ti->type_size == t->size, t->size, n);
		FUZZ_CHECK(t->offset % g->alignment == 0, t->offset, g->alignment);
		FUZZ_CHECK(t->file_offset == g->data_offset + t->offset,
			   t->file_offset, t->offset);
		uint64_t end;
		FUZZ_CHECK(!ms_add_overflow_u64(t->file_offset, t->size, &end),
			   t->file_offset, t->size);
		FUZZ_CHECK(end <= g->file_size, end, g->file_size);
		FUZZ_CHECK(ms_gguf_find_tensor(g, t->name) == (int64_t)i, i, 0);
		(void)ms_type_name(t->type);
	}
}

/* Where a tensor with the canonical name (as ggml writes it) exists, the
 * extent is in it: blk.N.ffn_P_exps.weight slice e, or the legacy
 * blk.N.ffn_P.E.weight whole. A second spelling of the same block
 * ("blk.01") must never take its place. */
static void fuzz_check_names(const struct ms_model *m,
			     const struct ms_moe_layer *L, uint32_t e,
			     const struct ms_extent *x)
{
	for (uint32_t p = 0; p < L->n_proj; p++) {
		char name[96];
		uint32_t s;
		uint64_t i;
		snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.weight",
			 L->block, ms_proj_name(L->proj[p]));
		if (ms_model_find_tensor(m, name, &s, &i) == 0) {
			const struct ms_gguf_tensor *t = &m->shards[s]->tensors[i];
			FUZZ_CHECK(x[p].shard == s, x[p].shard, s);
			FUZZ_CHECK(x[p].offset == t->file_offset +
					   (uint64_t)e * x[p].bytes,
				   x[p].offset, t->file_offset);
			continue;
		}
		snprintf(name, sizeof(name), "blk.%u.ffn_%s.%u.weight", L->block,
			 ms_proj_name(L->proj[p]), e);
		if (ms_model_find_tensor(m, name, &s, &i) == 0) {
			const struct ms_gguf_tensor *t = &m->shards[s]->tensors[i];
			FUZZ_CHECK(x[p].shard == s, x[p].shard, s);
			FUZZ_CHECK(x[p].offset == t->file_offset, x[p].offset,
				   t->file_offset);
		}
	}
}

/* Everything the expert map promises. */
static void fuzz_check_model(const struct ms_model *m)
{
	FUZZ_CHECK(m->n_shards >= 1 && m->shards && m->shards[0], m->n_shards, 0);
	FUZZ_CHECK(memchr(m->arch, '\0', sizeof(m->arch)) != NULL, 0, 0);
	FUZZ_CHECK(memchr(m->name, '\0', sizeof(m->name)) != NULL, 0, 0);
	FUZZ_CHECK(m->n_layers_run <= m->n_layers, m->n_layers_run, m->n_layers);
	FUZZ_CHECK(m->n_layers <= m->n_block, m->n_layers, m->n_block);
	FUZZ_CHECK(m->expert_bytes_min <= m->expert_bytes_max || !m->n_layers,
		   m->expert_bytes_min, m->expert_bytes_max);
	if (m->n_expert == 0)
		FUZZ_CHECK(m->n_layers == 0, m->n_layers, 0);
	for (uint32_t b = 0; b < m->n_block && m->block_layer; b++) {
		int32_t l = m->block_layer[b];
		FUZZ_CHECK(l >= -1 && l < (int64_t)m->n_layers, l, b);
		if (l >= 0)
			FUZZ_CHECK(m->layers[l].block == b, m->layers[l].block, b);
	}
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		FUZZ_CHECK(L->block < m->n_block, L->block, m->n_block);
		if (l)
			FUZZ_CHECK(L->block > m->layers[l - 1].block, L->block, l);
		FUZZ_CHECK(L->n_proj == (L->fused ? 2u : 3u), L->n_proj, L->fused);
		for (uint32_t p = 0; p < L->n_proj; p++) {
			FUZZ_CHECK(ms_type_get(L->type[p]) != NULL, L->type[p], p);
			FUZZ_CHECK(L->ne[p][2] == (int64_t)m->n_expert, L->ne[p][2],
				   m->n_expert);
		}
		for (uint32_t e = 0; e < m->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			FUZZ_CHECK(x != NULL, l, e);
			uint64_t es = 0;
			for (uint32_t p = 0; p < L->n_proj; p++) {
				FUZZ_CHECK(x[p].shard < m->n_shards, x[p].shard,
					   m->n_shards);
				FUZZ_CHECK(x[p].type == L->type[p], x[p].type, p);
				uint64_t end;
				FUZZ_CHECK(!ms_add_overflow_u64(x[p].offset,
								x[p].bytes, &end),
					   x[p].offset, x[p].bytes);
				FUZZ_CHECK(end <= m->shards[x[p].shard]->file_size,
					   end, m->shards[x[p].shard]->file_size);
				FUZZ_CHECK(x[p].bytes > 0, l, e);
				es += x[p].bytes;
			}
			FUZZ_CHECK(es == L->expert_bytes, es, L->expert_bytes);
			fuzz_check_names(m, L, e, x);
		}
		FUZZ_CHECK(ms_model_expert(m, l, m->n_expert) == NULL, l, 0);
	}
	FUZZ_CHECK(ms_model_expert(m, m->n_layers, 0) == NULL, m->n_layers, 0);
	uint32_t s;
	uint64_t idx;
	for (uint64_t i = 0; i < m->shards[0]->n_tensors; i++) {
		FUZZ_CHECK(ms_model_find_tensor(m, m->shards[0]->tensors[i].name,
						&s, &idx) == 0 && s == 0 && idx == i,
			   i, s);
	}
}

static void fuzz_check_ids(const struct ms_vocab *v, const struct ms_tokens *t)
{
	uint32_t n = ms_vocab_n_tokens(v);
	for (size_t i = 0; i < t->n; i++)
		FUZZ_CHECK(t->ids[i] >= 0 && (uint32_t)t->ids[i] < n, t->ids[i], n);
}

/* Tokenizes len bytes both ways and detokenizes the result. */
static void fuzz_vocab_text(const struct ms_vocab *v, struct ms_tokens *t,
			    const char *text, size_t len)
{
	static const unsigned flags[2] = {
		0, MS_TOKENIZE_PARSE_SPECIAL | MS_TOKENIZE_ADD_SPECIAL
	};
	for (int f = 0; f < 2; f++) {
		struct ms_err err;
		memset(&err, 0, sizeof(err));
		int rc = ms_tokenize(v, text, len, flags[f], t, &err);
		FUZZ_CHECK(rc == 0, rc, len);
		fuzz_check_ids(v, t);
		char *back = NULL;
		size_t bl = 0;
		rc = ms_detokenize(v, t->ids, t->n, f == 1, &back, &bl, &err);
		FUZZ_CHECK(rc == 0 && back && back[bl] == '\0', rc, bl);
		free(back);
	}
}

/* The vocabulary of an open GGUF: rejected cleanly, or all that engine.h
 * promises. */
static int fuzz_check_vocab(const struct ms_gguf *g, const uint8_t *data,
			    size_t size)
{
	struct ms_err err;
	memset(&err, 0, sizeof(err));
	struct ms_vocab *v = NULL;
	int rc = ms_vocab_load(&v, g, &err);
	if (rc) {
		fuzz_check_err(rc, &err, v);
		return 0;
	}
	FUZZ_CHECK(v != NULL, 0, 0);
	uint32_t n = ms_vocab_n_tokens(v);
	FUZZ_CHECK(n >= 1 && n <= MS_VOCAB_MAX_TOKENS, n, 0);
	FUZZ_CHECK(ms_vocab_n_merges(v) <= MS_VOCAB_MAX_MERGES,
		   ms_vocab_n_merges(v), 0);
	FUZZ_CHECK((unsigned)ms_vocab_pre(v) < MS_PRE_COUNT, ms_vocab_pre(v), 0);
	const struct ms_vocab_special *sp = ms_vocab_special(v);
	const int32_t sids[] = { sp->bos, sp->eos, sp->eot, sp->eom, sp->unk,
				 sp->sep, sp->pad, sp->mask };
	for (size_t i = 0; i < sizeof(sids) / sizeof(sids[0]); i++)
		FUZZ_CHECK(sids[i] == MS_TOKEN_NULL ||
				   (sids[i] >= 0 && (uint32_t)sids[i] < n),
			   sids[i], i);
	FUZZ_CHECK(!sp->add_bos || sp->bos != MS_TOKEN_NULL, sp->bos, 0);
	FUZZ_CHECK(!sp->add_eos || sp->eos != MS_TOKEN_NULL, sp->eos, 0);

	/* every token: its text, found again; its piece, bounded */
	char piece[64];
	for (uint32_t id = 0; id < n; id++) {
		size_t len = 0;
		const char *t = ms_vocab_text(v, (int32_t)id, &len);
		FUZZ_CHECK(t != NULL && len >= 1 && len <= MS_VOCAB_MAX_TOKEN_LEN,
			   id, len);
		FUZZ_CHECK(ms_vocab_find(v, t, len) == (int32_t)id, id, len);
		FUZZ_CHECK((unsigned)ms_vocab_type(v, (int32_t)id) <= MS_TOK_BYTE,
			   id, ms_vocab_type(v, (int32_t)id));
		FUZZ_CHECK(ms_token_piece(v, (int32_t)id, true, piece,
					  sizeof(piece)) >= 0, id, 0);
		(void)ms_vocab_is_eog(v, (int32_t)id);
	}
	FUZZ_CHECK(ms_vocab_text(v, (int32_t)n, NULL) == NULL, n, 0);
	FUZZ_CHECK(ms_token_piece(v, (int32_t)n, true, piece, sizeof(piece)) ==
			   -EINVAL, n, 0);

	/* a few texts: fixed, token texts run together, the input's head */
	struct ms_tokens t = { 0 };
	static const char fixed[] = "Hello <|im_start|>user\n a  b\tc 12345 "
				    "\xc4\xa0x \xff\xe4\xb8\xad\xe6\x96\x87";
	fuzz_vocab_text(v, &t, fixed, sizeof(fixed) - 1);
	char cat[1024];
	size_t cl = 0;
	for (uint32_t k = 0; k < 16; k++) {
		size_t len = 0;
		const char *s = ms_vocab_text(v, (int32_t)((k * 2654435761u) % n),
					      &len);
		if (cl + len > sizeof(cat))
			break;
		memcpy(cat + cl, s, len);
		cl += len;
	}
	fuzz_vocab_text(v, &t, cat, cl);
	fuzz_vocab_text(v, &t, (const char *)data, size < 512 ? size : 512);
	ms_tokens_free(&t);
	ms_vocab_free(v);
	return FUZZ_VOCAB_OK;
}

/* The entry both the fuzzer and t_fuzz_seeds use. */
static int fuzz_gguf_one(const uint8_t *data, size_t size)
{
	int ret = 0;
	int fd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
	if (fd < 0) {
		perror("memfd_create");
		abort();
	}
	for (size_t done = 0; done < size;) {
		ssize_t w = write(fd, data + done, size - done);
		if (w <= 0) {
			perror("write memfd");
			abort();
		}
		done += (size_t)w;
	}

	struct ms_err err;
	memset(&err, 0, sizeof(err));
	struct ms_gguf *g = NULL;
	int rc = ms_gguf_open_fd(&g, fd, "fuzz", &err);
	if (rc == 0) {
		FUZZ_CHECK(g != NULL, 0, 0);
		FUZZ_CHECK(g->file_size == size, g->file_size, size);
		fuzz_check_gguf(g);
		ret |= FUZZ_GGUF_OK;
		ret |= fuzz_check_vocab(g, data, size);
	} else {
		fuzz_check_err(rc, &err, g);
	}
	ms_gguf_free(g);

	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	struct ms_model *m = NULL;
	memset(&err, 0, sizeof(err));
	rc = ms_model_open(&m, path, &err);
	if (rc == 0) {
		FUZZ_CHECK(m != NULL, 0, 0);
		/* A model needs a file that parses as GGUF. */
		FUZZ_CHECK(ret & FUZZ_GGUF_OK, 0, 0);
		fuzz_check_gguf(m->shards[0]);
		fuzz_check_model(m);
		ret |= FUZZ_MODEL_OK;
	} else {
		fuzz_check_err(rc, &err, m);
	}
	ms_model_free(m);
	close(fd);
	return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ms_log_threshold = MS_LOG_ERR - 1; /* quiet: messages are checked */
	fuzz_gguf_one(data, size);
	return 0;
}
