/*
 * hf_tokenizer.c - tokenizer.json import and the built-in vocabulary, for
 * mkmodel (hf_tokenizer.h).
 *
 * What is written follows llama.cpp's converter (convert_hf_to_gguf.py,
 * _set_vocab_gpt2 and gguf-py's SpecialVocab), so that a test model carries
 * the vocabulary as a converted real model does:
 *
 *  - tokens: one per id 0..max id over model.vocab and added_tokens; an id
 *    that neither names is "[PAD<id>]" of type UNUSED (the converter pads to
 *    config.json's vocab_size; we have no config.json, so only holes pad);
 *  - types: NORMAL for the BPE vocabulary; for added tokens CONTROL when
 *    "special" is true or the text looks special (<|...|>, DeepSeek's
 *    <｜...｜>), USER_DEFINED otherwise (Qwen3's <think>: llama.cpp matches
 *    those even with special parsing off);
 *  - merges as "a b" strings in file order (the order is the rank), from
 *    either spelling tokenizer.json uses ("a b", or ["a", "b"]);
 *  - pre: recognised from the pre_tokenizer's Split regexes (the converter
 *    hashes the ids of a check string instead; the regex says the same for
 *    the tokenizers we meet and needs no tokenizer to run);
 *  - bos/eos/pad from tokenizer_config.json's bos_token/eos_token/pad_token
 *    (a string, an {"content": ...} object, or null), add_bos_token /
 *    add_eos_token when they are bools, chat_template when it is a string.
 *
 * Only byte-level BPE is taken (model.type "BPE" without byte_fallback): a
 * SentencePiece-style vocabulary is not "gpt2" and would need its byte tokens
 * and scores, which nothing here needs yet.
 *
 * Hostile files: the size is checked before reading (a sparse 2 GB file costs
 * nothing), cJSON parses with the length given (a truncated file is a parse
 * error at a byte offset), and every field is checked for its type, every id
 * for range, every string for length; duplicate texts or ids, and merges
 * naming a string that is not a token, are errors naming the entry.
 */
#include "hf_tokenizer.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools.h"

/* ---- strings that live as long as the vocabulary ------------------------ */

struct sblock {
	struct sblock *next;
	size_t used, cap;
	char data[];
};

static char *str_alloc(struct tool_vocab *v, size_t n)
{
	struct sblock *b = v->strs ? (struct sblock *)(void *)v->strs : NULL;
	if (!b || b->cap - b->used < n) {
		size_t cap = n > (1u << 20) ? n : (1u << 20);
		struct sblock *nb = malloc(sizeof(*nb) + cap);
		if (!nb)
			return NULL;
		nb->next = b;
		nb->used = 0;
		nb->cap = cap;
		v->strs = (char *)nb;
		b = nb;
	}
	char *p = b->data + b->used;
	b->used += n;
	return p;
}

static char *str_printf(struct tool_vocab *v, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static char *str_printf(struct tool_vocab *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	char *p = str_alloc(v, (size_t)n + 1);
	if (p) {
		va_start(ap, fmt);
		vsnprintf(p, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	return p;
}

void tool_vocab_free(struct tool_vocab *v)
{
	struct sblock *b = v->strs ? (struct sblock *)(void *)v->strs : NULL;
	while (b) {
		struct sblock *n = b->next;
		free(b);
		b = n;
	}
	cJSON_Delete(v->json);
	cJSON_Delete(v->cfg);
	free(v->tokens);
	free(v->types);
	free(v->merges);
	memset(v, 0, sizeof(*v));
}

/* ---- token text -> id ---------------------------------------------------- */

/* Open addressing over the token table: slot = id + 1, 0 empty. */
struct tmap {
	uint32_t *slot;
	uint32_t mask;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

static int tmap_init(struct tmap *m, uint32_t n)
{
	uint32_t cap = 16;
	while (cap < 2 * (uint64_t)n)
		cap *= 2;
	m->slot = calloc(cap, sizeof(*m->slot));
	m->mask = cap - 1;
	return m->slot ? 0 : -ENOMEM;
}

/* The id of `s`, or -1. */
static int64_t tmap_find(const struct tmap *m, const char *const *tok,
			 const char *s)
{
	for (uint64_t i = hash_str(s) & m->mask;; i = (i + 1) & m->mask) {
		uint32_t e = m->slot[i];
		if (!e)
			return -1;
		if (!strcmp(tok[e - 1], s))
			return e - 1;
	}
}

/* Adds tok[id]; the id already holding the same text, or -1 when added. */
static int64_t tmap_add(struct tmap *m, const char *const *tok, uint32_t id)
{
	for (uint64_t i = hash_str(tok[id]) & m->mask;; i = (i + 1) & m->mask) {
		uint32_t e = m->slot[i];
		if (!e) {
			m->slot[i] = id + 1;
			return -1;
		}
		if (!strcmp(tok[e - 1], tok[id]))
			return e - 1;
	}
}

/* ---- reading the files ----------------------------------------------------- */

/* "..." of at most 60 bytes of s, for messages. */
static const char *quote(const char *s, char *buf, size_t len)
{
	size_t n = strlen(s);
	snprintf(buf, len, "%.60s%s", s, n > 60 ? "..." : "");
	return buf;
}

static const char *json_kind(const cJSON *j)
{
	if (!j)
		return "missing";
	if (cJSON_IsString(j))
		return "a string";
	if (cJSON_IsNumber(j))
		return "a number";
	if (cJSON_IsBool(j))
		return "a bool";
	if (cJSON_IsNull(j))
		return "null";
	if (cJSON_IsArray(j))
		return "an array";
	if (cJSON_IsObject(j))
		return "an object";
	return "invalid";
}

/* The whole file, size-checked before reading, parsed: 0 and *out, or
 * -errno. -ENOENT is left to the caller to word when `optional`. */
static int read_json(const char *path, bool optional, cJSON **out,
		     struct ms_err *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (optional && e == ENOENT)
			return -ENOENT;
		return ms_err_set(err, -e, "%s: %s", path, strerror(e));
	}
	struct stat st;
	char b1[32];
	int rc = 0;
	char *buf = NULL;
	if (fstat(fd, &st)) {
		rc = ms_err_set(err, -errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = ms_err_set(err, -EINVAL, "%s is not a regular file", path);
		goto out;
	}
	if ((uint64_t)st.st_size > TOOL_VOCAB_MAX_FILE) {
		rc = ms_err_set(err, -EFBIG,
				"%s is %s, over the %llu MiB a tokenizer file may "
				"be", path, fmt_bytes((uint64_t)st.st_size, b1, sizeof(b1)),
				TOOL_VOCAB_MAX_FILE >> 20);
		goto out;
	}
	size_t n = (size_t)st.st_size;
	buf = malloc(n + 1);
	if (!buf) {
		rc = ms_err_set(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	if ((rc = tool_pread_full(fd, buf, n, 0))) {
		rc = ms_err_set(err, rc == -ENODATA ? -EIO : rc,
				"%s: reading: %s", path,
				rc == -ENODATA ? "the file shrank" : strerror(-rc));
		goto out;
	}
	buf[n] = '\0';
	const char *end = NULL;
	*out = cJSON_ParseWithLengthOpts(buf, n, &end, false);
	if (!*out) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= buf && at <= buf + n ? (size_t)(at - buf) : n;
		rc = ms_err_set(err, -EINVAL,
				"%s: not valid JSON (truncated or malformed) at "
				"byte %zu of %zu", path, off, n);
		goto out;
	}
	if (!cJSON_IsObject(*out)) {
		rc = ms_err_set(err, -EINVAL, "%s: the top level is %s, not an "
				"object", path, json_kind(*out));
		cJSON_Delete(*out);
		*out = NULL;
	}
out:
	free(buf);
	close(fd);
	return rc;
}

/* A JSON number that is a whole id in 0..TOOL_VOCAB_MAX_TOKENS-1. */
static bool json_id(const cJSON *j, uint32_t *id)
{
	if (!cJSON_IsNumber(j))
		return false;
	double d = j->valuedouble;
	if (!isfinite(d) || d < 0 || d >= TOOL_VOCAB_MAX_TOKENS || d != floor(d))
		return false;
	*id = (uint32_t)d;
	return true;
}

/* ---- the pre-tokenizer --------------------------------------------------- */

/* The Split regexes of each known pre-tokenizer, joined by '\x1f', with CR
 * and LF spelled "\r" and "\n" (tokenizer.json has both spellings). */
static const struct {
	const char *name;
	const char *regex;
} pre_table[] = {
	{ "qwen2",
	  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
	  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
	{ "llama-bpe",
	  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
	  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
	{ "deepseek-v3",
	  "\\p{N}{1,3}\x1f"
	  "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+\x1f"
	  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}"
	  "\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|"
	  "\\s+(?!\\S)|\\s+" },
	{ "gpt-4o",
	  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}"
	  "\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}"
	  "\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}"
	  "\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
	  "[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
};

bool tool_vocab_pre_known(const char *name)
{
	return !strcmp(name, "qwen2") || !strcmp(name, "llama-bpe") ||
	       !strcmp(name, "glm4") || !strcmp(name, "deepseek-v3") ||
	       !strcmp(name, "gpt-4o");
}

/* Appends one Split's regex (CR/LF respelled) to buf[*n]: false when full. */
static bool add_regex(char *buf, size_t cap, size_t *n, const char *re)
{
	if (*n && *n + 1 < cap)
		buf[(*n)++] = '\x1f';
	for (; *re; re++) {
		const char *put = *re == '\r' ? "\\r" : *re == '\n' ? "\\n" : NULL;
		size_t k = put ? 2 : 1;
		if (*n + k >= cap)
			return false;
		if (put)
			memcpy(buf + *n, put, 2);
		else
			buf[*n] = *re;
		*n += k;
	}
	buf[*n] = '\0';
	return true;
}

/* One pre-tokenizer of the sequence: a Split adds its regex; a ByteLevel
 * without its own regex is the byte encoding every one of these has. */
static int pre_one(const cJSON *p, const char *where, char *buf, size_t cap,
		   size_t *n, struct ms_err *err)
{
	const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
	if (!cJSON_IsString(ty))
		return ms_err_set(err, -EINVAL, "%s.type is %s, not a string", where,
				  json_kind(ty));
	if (!strcmp(ty->valuestring, "ByteLevel")) {
		const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
		if (cJSON_IsTrue(ur))
			return ms_err_set(err, -EINVAL,
					  "%s: unknown pre-tokenizer: ByteLevel with "
					  "use_regex (GPT-2's own regex); give "
					  "--tokenizer-pre NAME (one of %s)", where,
					  TOOL_VOCAB_PRE_NAMES);
		return 0;
	}
	if (strcmp(ty->valuestring, "Split")) {
		char q[80];
		return ms_err_set(err, -EINVAL,
				  "%s: unknown pre-tokenizer type '%s'; give "
				  "--tokenizer-pre NAME (one of %s)", where,
				  quote(ty->valuestring, q, sizeof(q)),
				  TOOL_VOCAB_PRE_NAMES);
	}
	const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
	const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
	if (!cJSON_IsString(re))
		return ms_err_set(err, -EINVAL, "%s.pattern.Regex is %s, not a "
				  "string", where, json_kind(re));
	if (!add_regex(buf, cap, n, re->valuestring))
		return ms_err_set(err, -EINVAL, "%s.pattern.Regex: the regexes are "
				  "over %zu bytes", where, cap);
	return 0;
}

static int recognise_pre(const cJSON *root, const char **pre, struct ms_err *err)
{
	const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
	if (!cJSON_IsObject(pt))
		return ms_err_set(err, -EINVAL, "pre_tokenizer is %s, not an object; "
				  "give --tokenizer-pre NAME (one of %s)",
				  json_kind(pt), TOOL_VOCAB_PRE_NAMES);
	char buf[4096], where[64];
	size_t n = 0;
	buf[0] = '\0';
	const cJSON *ty = cJSON_GetObjectItemCaseSensitive(pt, "type");
	int rc;
	if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "Sequence")) {
		const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
		if (!cJSON_IsArray(seq))
			return ms_err_set(err, -EINVAL, "pre_tokenizer.pretokenizers "
					  "is %s, not an array", json_kind(seq));
		int i = 0;
		const cJSON *p;
		cJSON_ArrayForEach(p, seq) {
			snprintf(where, sizeof(where), "pre_tokenizer.pretokenizers[%d]",
				 i++);
			if (!cJSON_IsObject(p))
				return ms_err_set(err, -EINVAL, "%s is %s, not an "
						  "object", where, json_kind(p));
			if ((rc = pre_one(p, where, buf, sizeof(buf), &n, err)))
				return rc;
		}
	} else if ((rc = pre_one(pt, "pre_tokenizer", buf, sizeof(buf), &n, err))) {
		return rc;
	}
	for (size_t i = 0; i < sizeof(pre_table) / sizeof(pre_table[0]); i++)
		if (!strcmp(buf, pre_table[i].regex)) {
			*pre = pre_table[i].name;
			return 0;
		}
	for (char *c = buf; *c; c++)
		if (*c == '\x1f')
			*c = ' ';
	char q[80];
	return ms_err_set(err, -EINVAL,
			  "pre_tokenizer: unknown pre-tokenizer (Split regex "
			  "'%s'); give --tokenizer-pre NAME (one of %s)",
			  buf[0] ? quote(buf, q, sizeof(q)) : "(none)",
			  TOOL_VOCAB_PRE_NAMES);
}

/* ---- tokenizer.json ---------------------------------------------------------- */

static bool looks_special(const char *s)
{
	size_t n = strlen(s);
	if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>"))
		return true;
	/* DeepSeek's fullwidth bars: <｜ ... ｜> (U+FF5C is EF BD 9C). */
	return n >= 8 && !strncmp(s, "<\xef\xbd\x9c", 4) &&
	       !strcmp(s + n - 4, "\xef\xbd\x9c>");
}

static int check_len(const char *s, const char *where, struct ms_err *err)
{
	size_t n = strlen(s);
	if (n == 0)
		return ms_err_set(err, -EINVAL, "%s is an empty string", where);
	if (n > TOOL_VOCAB_MAX_TOKEN_LEN)
		return ms_err_set(err, -EINVAL, "%s is %zu bytes, over %d", where, n,
				  TOOL_VOCAB_MAX_TOKEN_LEN);
	return 0;
}

static int load_vocab(struct tool_vocab *v, const cJSON *root, struct tmap *m,
		      struct ms_err *err)
{
	char where[96], q1[80], q2[80];
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsObject(model))
		return ms_err_set(err, -EINVAL, "model is %s, not an object",
				  json_kind(model));
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(model, "type");
	if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "BPE")))
		return ms_err_set(err, -EINVAL, "model.type is %s%s%s: only BPE "
				  "(byte-level) tokenizers are supported",
				  cJSON_IsString(mt) ? "'" : json_kind(mt),
				  cJSON_IsString(mt) ? quote(mt->valuestring, q1, sizeof(q1)) : "",
				  cJSON_IsString(mt) ? "'" : "");
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
		return ms_err_set(err, -EINVAL, "model.byte_fallback is true: a "
				  "SentencePiece-style vocabulary, not byte-level "
				  "BPE (not supported)");
	const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	if (!cJSON_IsObject(vocab))
		return ms_err_set(err, -EINVAL, "model.vocab is %s, not an object",
				  json_kind(vocab));
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
		return ms_err_set(err, -EINVAL, "added_tokens is %s, not an array",
				  json_kind(added));

	/* Pass 1: types, ids, the size. */
	uint64_t n_entries = 0;
	uint32_t max_id = 0, id;
	const cJSON *e;
	cJSON_ArrayForEach(e, vocab) {
		if (!json_id(e, &id))
			return ms_err_set(err, -EINVAL,
					  "model.vocab['%s'] is %s, not a whole id "
					  "in 0..%u", quote(e->string ? e->string : "",
							    q1, sizeof(q1)),
					  cJSON_IsNumber(e) ? "out of range" : json_kind(e),
					  TOOL_VOCAB_MAX_TOKENS - 1);
		snprintf(where, sizeof(where), "model.vocab entry %llu's text",
			 (unsigned long long)n_entries);
		int rc = check_len(e->string ? e->string : "", where, err);
		if (rc)
			return rc;
		max_id = id > max_id ? id : max_id;
		n_entries++;
	}
	if (n_entries == 0)
		return ms_err_set(err, -EINVAL, "model.vocab is empty");
	int i = 0;
	cJSON_ArrayForEach(e, added) {
		snprintf(where, sizeof(where), "added_tokens[%d]", i++);
		const cJSON *jid = cJSON_GetObjectItemCaseSensitive(e, "id");
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
		const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "special");
		if (!cJSON_IsObject(e))
			return ms_err_set(err, -EINVAL, "%s is %s, not an object",
					  where, json_kind(e));
		if (!json_id(jid, &id))
			return ms_err_set(err, -EINVAL, "%s.id is %s, not a whole id "
					  "in 0..%u", where, cJSON_IsNumber(jid)
					  ? "out of range" : json_kind(jid),
					  TOOL_VOCAB_MAX_TOKENS - 1);
		if (!cJSON_IsString(c))
			return ms_err_set(err, -EINVAL, "%s.content is %s, not a "
					  "string", where, json_kind(c));
		if (sp && !cJSON_IsBool(sp))
			return ms_err_set(err, -EINVAL, "%s.special is %s, not a "
					  "bool", where, json_kind(sp));
		size_t wl = strlen(where);
		snprintf(where + wl, sizeof(where) - wl, ".content");
		int rc = check_len(c->valuestring, where, err);
		if (rc)
			return rc;
		max_id = id > max_id ? id : max_id;
		v->n_added++;
	}

	/* Pass 2: the table. */
	v->n_tokens = max_id + 1;
	v->tokens = calloc(v->n_tokens, sizeof(*v->tokens));
	v->types = calloc(v->n_tokens, sizeof(*v->types));
	if (!v->tokens || !v->types || tmap_init(m, v->n_tokens))
		return ms_err_set(err, -ENOMEM, "out of memory for %u tokens",
				  v->n_tokens);
	cJSON_ArrayForEach(e, vocab) {
		json_id(e, &id);
		if (v->tokens[id])
			return ms_err_set(err, -EINVAL,
					  "model.vocab: id %u is given to both '%s' "
					  "and '%s'", id,
					  quote(v->tokens[id], q1, sizeof(q1)),
					  quote(e->string, q2, sizeof(q2)));
		v->tokens[id] = e->string;
		v->types[id] = TOOL_TOKEN_NORMAL;
		int64_t dup = tmap_add(m, v->tokens, id);
		if (dup >= 0)
			return ms_err_set(err, -EINVAL,
					  "model.vocab: token '%s' appears twice "
					  "(ids %lld and %u)",
					  quote(e->string, q1, sizeof(q1)),
					  (long long)dup, id);
	}
	i = 0;
	cJSON_ArrayForEach(e, added) {
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
		json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id);
		bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
		snprintf(where, sizeof(where), "added_tokens[%d]", i++);
		if (v->tokens[id] && strcmp(v->tokens[id], c->valuestring))
			return ms_err_set(err, -EINVAL,
					  "%s: id %u is '%s' here but '%s' already",
					  where, id,
					  quote(c->valuestring, q1, sizeof(q1)),
					  quote(v->tokens[id], q2, sizeof(q2)));
		if (!v->tokens[id]) {
			v->tokens[id] = c->valuestring;
			int64_t dup = tmap_add(m, v->tokens, id);
			if (dup >= 0)
				return ms_err_set(err, -EINVAL,
						  "%s: token '%s' (id %u) is already "
						  "id %lld", where,
						  quote(c->valuestring, q1, sizeof(q1)),
						  id, (long long)dup);
		}
		v->types[id] = special || looks_special(c->valuestring)
				       ? TOOL_TOKEN_CONTROL
				       : TOOL_TOKEN_USER_DEFINED;
	}
	for (uint32_t k = 0; k < v->n_tokens; k++) {
		if (v->tokens[k])
			continue;
		if (!(v->tokens[k] = str_printf(v, "[PAD%u]", k)))
			return ms_err_set(err, -ENOMEM, "out of memory");
		v->types[k] = TOOL_TOKEN_UNUSED;
		int64_t dup = tmap_add(m, v->tokens, k);
		if (dup >= 0)
			return ms_err_set(err, -EINVAL, "model.vocab: token '%s' "
					  "(id %lld) is the name of the hole at id %u",
					  v->tokens[k], (long long)dup, k);
	}
	return 0;
}

static int load_merges(struct tool_vocab *v, const cJSON *root,
		       const struct tmap *m, struct ms_err *err)
{
	char where[64], q[80];
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	const cJSON *mg = cJSON_GetObjectItemCaseSensitive(model, "merges");
	if (!cJSON_IsArray(mg))
		return ms_err_set(err, -EINVAL, "model.merges is %s, not an array",
				  json_kind(mg));
	uint64_t n = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, mg)
		n++;
	if (n > TOOL_VOCAB_MAX_TOKENS)
		return ms_err_set(err, -EINVAL, "model.merges has %llu entries, over "
				  "%u", (unsigned long long)n, TOOL_VOCAB_MAX_TOKENS);
	v->merges = calloc(n ? n : 1, sizeof(*v->merges));
	if (!v->merges)
		return ms_err_set(err, -ENOMEM, "out of memory");
	uint32_t k = 0;
	cJSON_ArrayForEach(e, mg) {
		snprintf(where, sizeof(where), "model.merges[%u]", k);
		const char *a, *b;
		size_t la, lb;
		char *s;
		if (cJSON_IsString(e)) {
			/* llama.cpp splits at the first space after position 0 */
			const char *sp = e->valuestring[0] ? strchr(e->valuestring + 1, ' ')
							   : NULL;
			if (!sp || !sp[1])
				return ms_err_set(err, -EINVAL, "%s '%s' is not two "
						  "tokens separated by a space", where,
						  quote(e->valuestring, q, sizeof(q)));
			a = e->valuestring;
			la = (size_t)(sp - a);
			b = sp + 1;
			lb = strlen(b);
		} else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
			   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
			   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
			a = cJSON_GetArrayItem(e, 0)->valuestring;
			b = cJSON_GetArrayItem(e, 1)->valuestring;
			la = strlen(a);
			lb = strlen(b);
			if (!la || !lb || strchr(a + 1, ' '))
				return ms_err_set(err, -EINVAL, "%s: a part is empty or "
						  "holds a space", where);
		} else {
			return ms_err_set(err, -EINVAL, "%s is %s, not \"a b\" or "
					  "[\"a\", \"b\"]", where, json_kind(e));
		}
		if (la > TOOL_VOCAB_MAX_TOKEN_LEN || lb > TOOL_VOCAB_MAX_TOKEN_LEN)
			return ms_err_set(err, -EINVAL, "%s is over %d bytes", where,
					  TOOL_VOCAB_MAX_TOKEN_LEN);
		if (!(s = str_alloc(v, la + lb + 2)))
			return ms_err_set(err, -ENOMEM, "out of memory");
		memcpy(s, a, la);
		s[la] = '\0';
		if (tmap_find(m, v->tokens, s) < 0)
			return ms_err_set(err, -EINVAL, "%s: '%s' is not a token",
					  where, quote(s, q, sizeof(q)));
		memcpy(s + la + 1, b, lb + 1);
		if (tmap_find(m, v->tokens, s + la + 1) < 0)
			return ms_err_set(err, -EINVAL, "%s: '%s' is not a token",
					  where, quote(s + la + 1, q, sizeof(q)));
		s[la] = ' ';
		v->merges[k++] = s;
	}
	v->n_merges = k;
	return 0;
}

/* ---- tokenizer_config.json ----------------------------------------------------- */

static int cfg_token(struct tool_vocab *v, const cJSON *cfg, const char *key,
		     const struct tmap *m, int64_t *id, struct ms_err *err)
{
	char q[80];
	*id = -1;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, key);
	if (!t || cJSON_IsNull(t))
		return 0;
	if (cJSON_IsObject(t)) {
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(t, "content");
		if (!cJSON_IsString(c))
			return ms_err_set(err, -EINVAL,
					  "%s.content is %s, not a string", key,
					  json_kind(c));
		t = c;
	} else if (!cJSON_IsString(t)) {
		return ms_err_set(err, -EINVAL, "%s is %s, "
				  "not a string, an object or null", key,
				  json_kind(t));
	}
	if ((*id = tmap_find(m, v->tokens, t->valuestring)) < 0)
		return ms_err_set(err, -EINVAL, "%s '%s' is "
				  "not a token of tokenizer.json", key,
				  quote(t->valuestring, q, sizeof(q)));
	return 0;
}

static int cfg_bool(const cJSON *cfg, const char *key, int *out,
		    struct ms_err *err)
{
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, key);
	*out = -1;
	if (!b || cJSON_IsNull(b))
		return 0;
	if (!cJSON_IsBool(b))
		return ms_err_set(err, -EINVAL, "%s is %s, "
				  "not a bool", key, json_kind(b));
	*out = cJSON_IsTrue(b);
	return 0;
}

static int load_config(struct tool_vocab *v, const char *path,
		       const struct tmap *m, struct ms_err *err)
{
	v->bos = v->eos = v->pad = -1;
	v->add_bos = v->add_eos = -1;
	char cp[4200];
	const char *slash = strrchr(path, '/');
	int dl = slash ? (int)(slash - path) : 1;
	if (snprintf(cp, sizeof(cp), "%.*s/tokenizer_config.json", dl,
		     slash ? path : ".") >= (int)sizeof(cp))
		return ms_err_set(err, -ENAMETOOLONG, "%s: path too long", path);
	cJSON *cfg;
	int rc = read_json(cp, true, &cfg, err);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	v->cfg = cfg;
	if ((rc = cfg_token(v, cfg, "bos_token", m, &v->bos, err)) ||
	    (rc = cfg_token(v, cfg, "eos_token", m, &v->eos, err)) ||
	    (rc = cfg_token(v, cfg, "pad_token", m, &v->pad, err)) ||
	    (rc = cfg_bool(cfg, "add_bos_token", &v->add_bos, err)) ||
	    (rc = cfg_bool(cfg, "add_eos_token", &v->add_eos, err)))
		goto fail;
	if (v->add_bos == 1 && v->bos < 0) {
		rc = ms_err_set(err, -EINVAL, "add_bos_token "
				"is true but there is no bos_token");
		goto fail;
	}
	if (v->add_eos == 1 && v->eos < 0) {
		rc = ms_err_set(err, -EINVAL, "add_eos_token "
				"is true but there is no eos_token");
		goto fail;
	}
	/* A list of named templates (some models) is not taken. */
	const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
	if (cJSON_IsString(ct)) {
		if (strlen(ct->valuestring) > TOOL_VOCAB_MAX_TEMPLATE) {
			rc = ms_err_set(err, -EINVAL, ""
					"chat_template is %zu bytes, over %u",
					strlen(ct->valuestring), TOOL_VOCAB_MAX_TEMPLATE);
			goto fail;
		}
		v->chat_template = ct->valuestring;
	}
	return 0;
fail:
	ms_err_prefix(err, "%s", cp);
	return rc;
}

int tool_vocab_from_hf(struct tool_vocab *v, const char *path, const char *pre,
		       struct ms_err *err)
{
	struct tmap m = { 0 };
	cJSON *root;
	memset(v, 0, sizeof(*v));
	int rc = read_json(path, false, &root, err);
	if (rc)
		return rc;
	v->json = root;
	if (pre && !tool_vocab_pre_known(pre)) {
		rc = ms_err_set(err, -EINVAL, "--tokenizer-pre '%s' is not one of %s",
				pre, TOOL_VOCAB_PRE_NAMES);
		goto fail;
	}
	if ((rc = load_vocab(v, root, &m, err)) ||
	    (rc = load_merges(v, root, &m, err)) ||
	    (!pre && (rc = recognise_pre(root, &pre, err))))
		goto fail_prefix;
	v->pre = pre;
	if ((rc = load_config(v, path, &m, err)))
		goto fail;
	free(m.slot);
	return 0;
fail_prefix:
	ms_err_prefix(err, "%s", path);
fail:
	free(m.slot);
	tool_vocab_free(v);
	return rc;
}

/* ---- the built-in vocabulary ----------------------------------------------------- */

/* GPT-2's byte -> code point map (bytes that print map to themselves). */
static uint32_t byte_cpt(uint32_t b)
{
	if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
		return b;
	uint32_t n = 0;
	for (uint32_t c = 0; c < b; c++)
		if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) ||
		      c >= 0xae))
			n++;
	return 0x100 + n;
}

int tool_vocab_builtin(struct tool_vocab *v, uint32_t n_tokens,
		       struct ms_err *err)
{
	/* Merges of byte tokens into tokens that exist ("Ġ" is the space). */
	static const char *const merges[][2] = {
		{ "\xc4\xa0", "t" }, { "h", "e" }, { "i", "n" },
		{ "\xc4\xa0t", "he" }, { "e", "r" }, { "a", "n" },
		{ "o", "n" }, { "\xc4\xa0", "a" },
	};
	memset(v, 0, sizeof(*v));
	v->bos = v->eos = v->pad = -1;
	v->add_bos = v->add_eos = -1;
	if (n_tokens == 0 || n_tokens > TOOL_VOCAB_MAX_TOKENS)
		return ms_err_set(err, -EINVAL, "a vocabulary of %u tokens",
				  n_tokens);
	v->n_tokens = n_tokens;
	v->tokens = calloc(n_tokens, sizeof(*v->tokens));
	v->types = calloc(n_tokens, sizeof(*v->types));
	v->merges = calloc(8, sizeof(*v->merges));
	if (!v->tokens || !v->types || !v->merges)
		goto oom;
	uint32_t id = 0;
	if (n_tokens >= 256) {
		v->pre = "qwen2";
		for (; id < 256; id++) {
			uint32_t c = byte_cpt(id);
			char u[3] = { (char)c, 0, 0 };
			if (c >= 0x80) {
				u[0] = (char)(0xc0 | c >> 6);
				u[1] = (char)(0x80 | (c & 0x3f));
			}
			if (!(v->tokens[id] = str_printf(v, "%s", u)))
				goto oom;
			v->types[id] = TOOL_TOKEN_NORMAL;
		}
		for (size_t k = 0; k < 8 && id < n_tokens; k++, id++) {
			v->tokens[id] = str_printf(v, "%s%s", merges[k][0], merges[k][1]);
			v->merges[k] = str_printf(v, "%s %s", merges[k][0], merges[k][1]);
			if (!v->tokens[id] || !v->merges[k])
				goto oom;
			v->types[id] = TOOL_TOKEN_NORMAL;
			v->n_merges++;
		}
	}
	for (; id < n_tokens; id++) {
		bool eos = n_tokens > 256 + 8 && id == n_tokens - 1;
		v->tokens[id] = eos ? "<|endoftext|>" : str_printf(v, "<t%u>", id);
		if (!v->tokens[id])
			goto oom;
		v->types[id] = eos ? TOOL_TOKEN_CONTROL : TOOL_TOKEN_NORMAL;
		if (eos)
			v->eos = id;
	}
	return 0;
oom:
	tool_vocab_free(v);
	return ms_err_set(err, -ENOMEM, "out of memory");
}

/* ---- writing ------------------------------------------------------------------------ */

int tool_vocab_write(const struct tool_vocab *v, struct ms_gguf_writer *w,
		     struct ms_err *err)
{
	int rc;
	if ((rc = ms_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", err)) ||
	    (v->pre && (rc = ms_gguf_writer_set_str(w, "tokenizer.ggml.pre", v->pre,
						    err))) ||
	    (rc = ms_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_STRING,
					 v->n_tokens, v->tokens, err)) ||
	    (rc = ms_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MS_GGUF_I32,
					 v->n_tokens, v->types, err)))
		return rc;
	if (v->pre && (rc = ms_gguf_writer_set_arr(w, "tokenizer.ggml.merges",
						   MS_GGUF_STRING, v->n_merges,
						   v->merges, err)))
		return rc;
	static const char *const idk[] = { "tokenizer.ggml.bos_token_id",
					   "tokenizer.ggml.eos_token_id",
					   "tokenizer.ggml.padding_token_id" };
	const int64_t ids[] = { v->bos, v->eos, v->pad };
	for (int i = 0; i < 3; i++)
		if (ids[i] >= 0 &&
		    (rc = ms_gguf_writer_set_u32(w, idk[i], (uint32_t)ids[i], err)))
			return rc;
	if ((v->add_bos >= 0 &&
	     (rc = ms_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token",
					   v->add_bos, err))) ||
	    (v->add_eos >= 0 &&
	     (rc = ms_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token",
					   v->add_eos, err))) ||
	    (v->chat_template &&
	     (rc = ms_gguf_writer_set_str(w, "tokenizer.chat_template",
					  v->chat_template, err))))
		return rc;
	return 0;
}
