/*
 * engine/vocab.c - the vocabulary from a GGUF's tokenizer.ggml.* keys.
 *
 * What is read is what llama.cpp reads for a "gpt2" (byte-level BPE) model:
 * the token texts, their types, the merges (rank = index in the array; each
 * string split at the first space after its first byte), the special ids and
 * the add_bos/add_eos flags; tokenizer.ggml.pre chooses the pre-tokenizer.
 *
 * It is all file input, so it is all checked: counts against caps, every id
 * against the vocabulary, texts for duplicates, merges for absent tokens and
 * malformed strings. Each failure names the key and the index.
 *
 * Lookups are open-addressing tables: text -> id (FNV-1a), and (left id,
 * right id) -> (rank, result) for the merges, so BPE never builds strings.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"
#include "vocab_internal.h"

static const char *const pre_names[MS_PRE_COUNT] = {
	[MS_PRE_QWEN2] = "qwen2",
	[MS_PRE_LLAMA3] = "llama-bpe",
	[MS_PRE_GLM4] = "glm4",
	[MS_PRE_DEEPSEEK3] = "deepseek-v3",
	[MS_PRE_GPT4O] = "gpt-4o",
};

/* Other spellings llama.cpp maps to the same pre-tokenizer. */
static const struct {
	const char *name;
	enum ms_pre pre;
} pre_alias[] = {
	{ "qwen2", MS_PRE_QWEN2 },
	{ "deepseek-r1-qwen", MS_PRE_QWEN2 },
	{ "megrez", MS_PRE_QWEN2 },
	{ "llama-bpe", MS_PRE_LLAMA3 },
	{ "llama3", MS_PRE_LLAMA3 },
	{ "glm4", MS_PRE_GLM4 },
	{ "chatglm-bpe", MS_PRE_GLM4 },
	{ "deepseek-v3", MS_PRE_DEEPSEEK3 },
	{ "gpt-4o", MS_PRE_GPT4O },
	{ "llama4", MS_PRE_GPT4O },
};

const char *ms_pre_name(enum ms_pre pre)
{
	return (unsigned)pre < MS_PRE_COUNT ? pre_names[pre] : "?";
}

uint64_t ms_vocab_hash(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h ^ h >> 29;
}

int32_t ms_vocab_find(const struct ms_vocab *v, const char *text, size_t len)
{
	uint64_t i = ms_vocab_hash(text, len) & v->tok_mask;
	for (;; i = (i + 1) & v->tok_mask) {
		uint32_t s = v->tok_slot[i];
		if (!s)
			return MS_TOKEN_NULL;
		uint32_t id = s - 1;
		if (v->tokens.len[id] == len &&
		    !memcmp(v->tokens.str[id], text, len))
			return (int32_t)id;
	}
}

static uint64_t merge_hash(uint64_t key)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return key;
}

static uint64_t table_size(uint64_t n)
{
	uint64_t s = 16;
	while (s < n * 2)
		s <<= 1;
	return s;
}

static int err_key(struct ms_err *err, const struct ms_gguf *g,
		   const char *key, const char *what)
{
	return ms_err_set(err, -EINVAL, "%s: %s: %s", g->path, key, what);
}

/* The special ids: absent is fine, out of range is not. */
static int load_special(struct ms_vocab *v, const struct ms_gguf *g,
			struct ms_err *err)
{
	static const struct {
		const char *key;
		size_t off;
	} ids[] = {
		{ "tokenizer.ggml.bos_token_id", offsetof(struct ms_vocab_special, bos) },
		{ "tokenizer.ggml.eos_token_id", offsetof(struct ms_vocab_special, eos) },
		{ "tokenizer.ggml.eot_token_id", offsetof(struct ms_vocab_special, eot) },
		{ "tokenizer.ggml.eom_token_id", offsetof(struct ms_vocab_special, eom) },
		{ "tokenizer.ggml.unknown_token_id", offsetof(struct ms_vocab_special, unk) },
		{ "tokenizer.ggml.seperator_token_id", offsetof(struct ms_vocab_special, sep) },
		{ "tokenizer.ggml.padding_token_id", offsetof(struct ms_vocab_special, pad) },
		{ "tokenizer.ggml.mask_token_id", offsetof(struct ms_vocab_special, mask) },
	};
	struct ms_vocab_special *sp = &v->sp;
	sp->bos = sp->eos = 11; /* llama.cpp's BPE defaults, before the keys */
	sp->eot = sp->eom = sp->unk = sp->sep = sp->pad = sp->mask = MS_TOKEN_NULL;
	if (v->n <= 11)
		sp->bos = sp->eos = MS_TOKEN_NULL;
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		uint64_t id;
		int rc = ms_gguf_get_u64(g, ids[i].key, &id, err);
		if (rc == -ENOENT)
			continue;
		if (rc)
			return rc;
		if (id >= v->n)
			return ms_err_set(err, -EINVAL, "%s: %s is %llu, outside "
					  "the vocabulary of %u tokens", g->path,
					  ids[i].key, (unsigned long long)id, v->n);
		*(int32_t *)((char *)sp + ids[i].off) = (int32_t)id;
	}
	if (v->pre == MS_PRE_GLM4)
		sp->bos = MS_TOKEN_NULL; /* llama.cpp: glm4 has no BOS */
	sp->add_bos = v->pre == MS_PRE_LLAMA3;
	sp->add_eos = false;
	bool b;
	int rc = ms_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, err);
	if (!rc)
		sp->add_bos = b;
	else if (rc != -ENOENT)
		return rc;
	rc = ms_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b, err);
	if (!rc)
		sp->add_eos = b;
	else if (rc != -ENOENT)
		return rc;
	if (sp->add_bos && sp->bos == MS_TOKEN_NULL)
		return err_key(err, g, "tokenizer.ggml.add_bos_token",
			       "is true but the model has no BOS token");
	if (sp->add_eos && sp->eos == MS_TOKEN_NULL)
		return err_key(err, g, "tokenizer.ggml.add_eos_token",
			       "is true but the model has no EOS token");
	return 0;
}

/* End-of-generation texts llama.cpp recognises besides the eos/eot ids. */
static const char *const eog_texts[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
	"<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
	"<|end_of_text|>", "<end_of_utterance>", "<｜end▁of▁sentence｜>",
	"<|user|>", "<|observation|>",
};

static int cmp_special(const void *a, const void *b, void *arg)
{
	const struct ms_vocab *v = arg;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	if (v->tokens.len[x] != v->tokens.len[y])
		return v->tokens.len[x] > v->tokens.len[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int load_types(struct ms_vocab *v, const struct ms_gguf *g,
		      struct ms_err *err)
{
	const char *key = "tokenizer.ggml.token_type";
	int64_t k = ms_gguf_find_key(g, key);
	for (uint32_t i = 0; i < v->n; i++)
		v->type[i] = MS_TOK_NORMAL;
	if (k < 0)
		return 0;
	const struct ms_gguf_kv *kv = &g->kv[k];
	if (kv->type != MS_GGUF_ARRAY || kv->arr_type != MS_GGUF_I32)
		return err_key(err, g, key, "is not an array of int32");
	if (kv->arr_n != v->n)
		return ms_err_set(err, -EINVAL, "%s: %s has %llu entries for "
				  "%u tokens", g->path, key,
				  (unsigned long long)kv->arr_n, v->n);
	if (!kv->arr_data)
		return err_key(err, g, key, "is too large to load");
	const uint8_t *d = kv->arr_data;
	for (uint32_t i = 0; i < v->n; i++) {
		int32_t t = (int32_t)((uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 |
				      (uint32_t)d[4 * i + 2] << 16 |
				      (uint32_t)d[4 * i + 3] << 24);
		if (t < MS_TOK_UNDEFINED || t > MS_TOK_BYTE)
			return ms_err_set(err, -EINVAL, "%s: %s[%u] is %d, not a "
					  "token type (0..6)", g->path, key, i, t);
		v->type[i] = (uint8_t)t;
	}
	return 0;
}

static int load_tokens(struct ms_vocab *v, const struct ms_gguf *g,
		       struct ms_err *err)
{
	const char *key = "tokenizer.ggml.tokens";
	int rc = ms_gguf_get_strs(g, key, &v->tokens, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -ENOENT, "%s: the model has no tokenizer "
				  "(no %s key)", g->path, key);
	if (rc)
		return rc;
	if (v->tokens.n == 0 || v->tokens.n > MS_VOCAB_MAX_TOKENS)
		return ms_err_set(err, -EINVAL, "%s: %s has %llu tokens "
				  "(1..%u allowed)", g->path, key,
				  (unsigned long long)v->tokens.n,
				  MS_VOCAB_MAX_TOKENS);
	v->n = (uint32_t)v->tokens.n;
	uint64_t size = table_size(v->n);
	v->tok_slot = calloc(size, sizeof(*v->tok_slot));
	v->type = calloc(v->n, 1);
	v->eog = calloc(v->n, sizeof(*v->eog));
	if (!v->tok_slot || !v->type || !v->eog)
		return ms_err_set(err, -ENOMEM, "out of memory for %u tokens", v->n);
	v->tok_mask = size - 1;
	for (uint32_t id = 0; id < v->n; id++) {
		const char *t = v->tokens.str[id];
		size_t len = v->tokens.len[id];
		if (len == 0)
			return ms_err_set(err, -EINVAL, "%s: %s[%u] is empty",
					  g->path, key, id);
		if (len > MS_VOCAB_MAX_TOKEN_LEN)
			return ms_err_set(err, -EINVAL, "%s: %s[%u] is %zu bytes "
					  "long (the cap is %u)", g->path, key,
					  id, len, MS_VOCAB_MAX_TOKEN_LEN);
		uint64_t i = ms_vocab_hash(t, len) & v->tok_mask;
		for (; v->tok_slot[i]; i = (i + 1) & v->tok_mask) {
			uint32_t o = v->tok_slot[i] - 1;
			if (v->tokens.len[o] == len && !memcmp(v->tokens.str[o], t, len))
				return ms_err_set(err, -EINVAL, "%s: %s[%u] repeats "
						  "%s[%u] ('%.40s')", g->path, key,
						  id, key, o, t);
		}
		v->tok_slot[i] = id + 1;
	}
	return 0;
}

static int merge_put(struct ms_vocab *v, uint64_t key, uint32_t rank,
		     int32_t result)
{
	uint64_t i = merge_hash(key) & v->merge_mask;
	for (; v->merge[i].key; i = (i + 1) & v->merge_mask)
		if (v->merge[i].key == key)
			return 0; /* the first (best) rank stays, as llama.cpp's map */
	v->merge[i] = (struct ms_merge){ .key = key, .rank = rank,
					 .result = result };
	return 0;
}

static int load_merges(struct ms_vocab *v, const struct ms_gguf *g,
		       struct ms_err *err)
{
	const char *key = "tokenizer.ggml.merges";
	struct ms_gguf_strs m;
	int rc = ms_gguf_get_strs(g, key, &m, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -ENOENT, "%s: the BPE tokenizer has no "
				  "merges (no %s key)", g->path, key);
	if (rc)
		return rc;
	if (m.n > MS_VOCAB_MAX_MERGES) {
		rc = ms_err_set(err, -EINVAL, "%s: %s has %llu entries (the cap "
				"is %u)", g->path, key, (unsigned long long)m.n,
				MS_VOCAB_MAX_MERGES);
		ms_gguf_strs_free(&m);
		return rc;
	}
	uint64_t size = table_size(m.n);
	v->merge = calloc(size, sizeof(*v->merge));
	if (!v->merge) {
		ms_gguf_strs_free(&m);
		return ms_err_set(err, -ENOMEM, "out of memory for %llu merges",
				  (unsigned long long)m.n);
	}
	v->merge_mask = size - 1;
	v->n_merges = (uint32_t)m.n;
	char *cat = malloc(2 * MS_VOCAB_MAX_TOKEN_LEN);
	if (!cat) {
		ms_gguf_strs_free(&m);
		return ms_err_set(err, -ENOMEM, "out of memory");
	}
	for (uint32_t r = 0; r < m.n && !rc; r++) {
		const char *s = m.str[r];
		size_t len = m.len[r];
		/* llama.cpp: the first space after position 0 */
		const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
		if (!sp) {
			rc = ms_err_set(err, -EINVAL, "%s: %s[%u] ('%.40s') is not "
					"two tokens separated by a space",
					g->path, key, r, s);
			break;
		}
		size_t l1 = (size_t)(sp - s), l2 = len - l1 - 1;
		int32_t a = ms_vocab_find(v, s, l1);
		int32_t b = l2 ? ms_vocab_find(v, sp + 1, l2) : MS_TOKEN_NULL;
		if (a == MS_TOKEN_NULL || b == MS_TOKEN_NULL) {
			rc = ms_err_set(err, -EINVAL, "%s: %s[%u] ('%.40s') names "
					"'%.*s', which is no token", g->path, key,
					r, s, a == MS_TOKEN_NULL ? (int)l1 : (int)l2,
					a == MS_TOKEN_NULL ? s : sp + 1);
			break;
		}
		int32_t res = MS_TOKEN_NULL;
		if (l1 + l2 <= 2 * MS_VOCAB_MAX_TOKEN_LEN) {
			memcpy(cat, s, l1);
			memcpy(cat + l1, sp + 1, l2);
			res = ms_vocab_find(v, cat, l1 + l2);
		}
		rc = merge_put(v, ((uint64_t)a << 32 | (uint32_t)b) + 1, r, res);
	}
	free(cat);
	ms_gguf_strs_free(&m);
	return rc;
}

const struct ms_merge *ms_vocab_merge(const struct ms_vocab *v, int32_t a,
				      int32_t b);
const struct ms_merge *ms_vocab_merge(const struct ms_vocab *v, int32_t a,
				      int32_t b)
{
	uint64_t key = ((uint64_t)a << 32 | (uint32_t)b) + 1;
	uint64_t i = merge_hash(key) & v->merge_mask;
	for (;; i = (i + 1) & v->merge_mask) {
		if (v->merge[i].key == key)
			return &v->merge[i];
		if (!v->merge[i].key)
			return NULL;
	}
}

int ms_pre_compile(struct ms_vocab *v, struct ms_err *err); /* tokenizer.c */
void ms_pre_free(struct ms_vocab *v);                       /* tokenizer.c */

int ms_vocab_load(struct ms_vocab **out, const struct ms_gguf *g,
		  struct ms_err *err)
{
	*out = NULL;
	const char *model, *pre;
	int rc = ms_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -ENOENT, "%s: the model has no tokenizer "
				  "(no tokenizer.ggml.model key)", g->path);
	if (rc)
		return rc;
	if (strcmp(model, "gpt2"))
		return ms_err_set(err, -ENOTSUP, "%s: tokenizer.ggml.model is "
				  "'%.40s'; this engine implements 'gpt2' "
				  "(byte-level BPE)", g->path, model);
	rc = ms_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err);
	if (rc == -ENOENT)
		return ms_err_set(err, -ENOTSUP, "%s: no tokenizer.ggml.pre key: "
				  "the pre-tokenizer is unknown (supported: "
				  "qwen2, llama-bpe, glm4, deepseek-v3, gpt-4o)",
				  g->path);
	if (rc)
		return rc;

	struct ms_vocab *v = calloc(1, sizeof(*v));
	if (!v)
		return ms_err_set(err, -ENOMEM, "out of memory");
	v->pre = MS_PRE_COUNT;
	for (size_t i = 0; i < sizeof(pre_alias) / sizeof(pre_alias[0]); i++)
		if (!strcmp(pre, pre_alias[i].name))
			v->pre = pre_alias[i].pre;
	if (v->pre == MS_PRE_COUNT) {
		rc = ms_err_set(err, -ENOTSUP, "%s: tokenizer.ggml.pre is "
				"'%.40s'; supported: qwen2, llama-bpe, glm4, "
				"deepseek-v3, gpt-4o", g->path, pre);
		goto fail;
	}
	/* llama.cpp sets ignore_merges for llama3 only */
	v->ignore_merges = v->pre == MS_PRE_LLAMA3;

	if ((rc = load_tokens(v, g, err)) || (rc = load_types(v, g, err)) ||
	    (rc = load_merges(v, g, err)) || (rc = load_special(v, g, err)))
		goto fail;

	for (unsigned b = 0; b < 256; b++) {
		size_t l;
		const char *u = ms_bytelevel_encode((uint8_t)b, &l);
		v->byte_tok[b] = ms_vocab_find(v, u, l);
		v->byte_fallback[b][0] = ms_vocab_find(v, u, 1);
		v->byte_fallback[b][1] = l > 1 ? ms_vocab_find(v, u + 1, 1)
					       : MS_TOKEN_NULL;
	}

	/* llama.cpp changes some types by text, and what it matches follows:
	 * gpt-oss's harmony tokens are always rendered (user-defined), and
	 * where <|return|> and <|call|> exist, <|end|> ends no generation and
	 * is user-defined too. */
	static const char *const always_user[] = { "<|channel|>", "<|message|>",
						   "<|start|>", "<|constrain|>" };
	for (size_t i = 0; i < sizeof(always_user) / sizeof(always_user[0]); i++) {
		int32_t id = ms_vocab_find(v, always_user[i], strlen(always_user[i]));
		if (id != MS_TOKEN_NULL)
			v->type[id] = MS_TOK_USER_DEFINED;
	}
	int32_t end_id = ms_vocab_find(v, "<|end|>", 7);
	bool harmony = end_id != MS_TOKEN_NULL &&
		       ms_vocab_find(v, "<|return|>", 10) != MS_TOKEN_NULL &&
		       ms_vocab_find(v, "<|call|>", 8) != MS_TOKEN_NULL;
	if (harmony)
		v->type[end_id] = MS_TOK_USER_DEFINED;

	/* control, user-defined and unknown tokens are matched as whole
	 * strings before pre-tokenization, longest first */
	v->special = calloc(v->n, sizeof(*v->special));
	if (!v->special) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (uint32_t id = 0; id < v->n; id++) {
		uint8_t t = v->type[id];
		if (t == MS_TOK_CONTROL || t == MS_TOK_USER_DEFINED ||
		    t == MS_TOK_UNKNOWN)
			v->special[v->n_special++] = (int32_t)id;
	}
	qsort_r(v->special, v->n_special, sizeof(*v->special), cmp_special, v);

	int32_t sids[] = { v->sp.eos, v->sp.eot, v->sp.eom };
	for (size_t i = 0; i < 3; i++)
		if (sids[i] != MS_TOKEN_NULL)
			v->eog[sids[i]] = true;
	for (size_t i = 0; i < sizeof(eog_texts) / sizeof(eog_texts[0]); i++) {
		int32_t id = ms_vocab_find(v, eog_texts[i], strlen(eog_texts[i]));
		/* "<|user|>" ends a turn for GLM only when it is a control token */
		if (id != MS_TOKEN_NULL && v->type[id] == MS_TOK_CONTROL)
			v->eog[id] = true;
	}

	if (harmony)
		v->eog[end_id] = false;

	if ((rc = ms_pre_compile(v, err)))
		goto fail;
	*out = v;
	return 0;
fail:
	ms_vocab_free(v);
	return rc;
}

void ms_vocab_free(struct ms_vocab *v)
{
	if (!v)
		return;
	ms_pre_free(v);
	ms_gguf_strs_free(&v->tokens);
	free(v->type);
	free(v->eog);
	free(v->tok_slot);
	free(v->merge);
	free(v->special);
	free(v);
}

uint32_t ms_vocab_n_tokens(const struct ms_vocab *v)
{
	return v->n;
}

uint32_t ms_vocab_n_merges(const struct ms_vocab *v)
{
	return v->n_merges;
}

enum ms_pre ms_vocab_pre(const struct ms_vocab *v)
{
	return v->pre;
}

const struct ms_vocab_special *ms_vocab_special(const struct ms_vocab *v)
{
	return &v->sp;
}

const char *ms_vocab_text(const struct ms_vocab *v, int32_t id, size_t *len)
{
	if (id < 0 || (uint32_t)id >= v->n) {
		if (len)
			*len = 0;
		return NULL;
	}
	if (len)
		*len = v->tokens.len[id];
	return v->tokens.str[id];
}

enum ms_tok_type ms_vocab_type(const struct ms_vocab *v, int32_t id)
{
	return id >= 0 && (uint32_t)id < v->n ? (enum ms_tok_type)v->type[id]
					       : MS_TOK_UNDEFINED;
}

bool ms_vocab_is_eog(const struct ms_vocab *v, int32_t id)
{
	return id >= 0 && (uint32_t)id < v->n && v->eog[id];
}
