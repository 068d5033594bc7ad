/*
 * engine/tokenizer.c - byte-level BPE with llama.cpp's pre-tokenizers.
 *
 * The goal is the ids llama.cpp's llama_tokenize() gives for the same GGUF,
 * for every input, valid UTF-8 or not. The steps are llama.cpp's:
 *
 *  1. Special and added tokens (control, user-defined, unknown) are cut out
 *     of the text as whole strings, longest token first, each token's
 *     occurrences left to right in every piece of text still raw. Control
 *     and unknown tokens only with MS_TOKENIZE_PARSE_SPECIAL; user-defined
 *     ones always.
 *  2. Each raw piece is decoded to code points (bad UTF-8: U+FFFD per byte)
 *     and split into words by the pre-tokenizer.
 *  3. Each word's UTF-8 bytes are merged pairwise by rank (lowest first,
 *     leftmost among equals) starting from one symbol per byte; each final
 *     symbol is its token, else its bytes' one-character tokens.
 *
 * Pre-tokenizers. Unicode classes come from Debian's UnicodeData.txt
 * (engine/unicode_ranges.h); the regular expressions run in PCRE2 (JIT).
 * To agree with llama.cpp exactly, we follow its own splitting rules where
 * they differ from what a regex engine over Unicode would do:
 *
 *  - qwen2, llama-bpe and glm4 use llama.cpp's hand-written scanners for
 *    their regexes (split_scan below: the same rule order, a letter run may
 *    take one leading character of any class but \r, \n and digits, a
 *    white-space run before a non-space keeps its last character for the
 *    next word, digits one at a time (qwen2) or in threes).
 *  - deepseek-v3 and gpt-4o run their regexes the way llama.cpp's fallback
 *    does: on a "collapsed" text with one byte per code point (ASCII as is;
 *    others as a class byte: number 0xD1, letter 0xD2, punctuation 0xD3,
 *    mark 0xD4, symbol 0xD5, white space 0x0B, anything else 0xD0), with
 *    each \p{X} of the regex rewritten to that byte plus X's ASCII members.
 *    So \p{Lu} and \p{Ll} cannot be told apart for non-ASCII letters, just
 *    as in llama.cpp. A regex with no \p{..} (deepseek-v3's CJK ranges) runs
 *    on the code points, non-ASCII white space replaced by 0x0B.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"
#include "vocab_internal.h"

const struct ms_merge *ms_vocab_merge(const struct ms_vocab *v, int32_t a,
				      int32_t b);
int ms_pre_compile(struct ms_vocab *v, struct ms_err *err);
void ms_pre_free(struct ms_vocab *v);

/* ---- regexes per pre-tokenizer ------------------------------------------------- */

/* The regexes as llama.cpp holds them for each pre-tokenizer (its tables;
 * these are facts about its behaviour). qwen2, llama3 and glm4 need none:
 * they run through split_scan. */
static const char *const re_deepseek3[] = {
	"\\p{N}{1,3}",
	"[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
	("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
	 "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
};
static const char *const re_gpt4o[] = {
	("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"
	 "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
	 "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*"
	 "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"
	 "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
};

/* \p{X} -> the class byte and X's ASCII members (as llama.cpp rewrites) */
static const struct {
	char name;
	uint16_t cls;
	const char *bytes;
} ucat[] = {
	{ 'N', MS_UCD_NUMBER, "\xD1" "0-9" },
	{ 'L', MS_UCD_LETTER, "\xD2" "A-Za-z" },
	{ 'P', MS_UCD_PUNCT, "\xD3" "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}" },
	{ 'M', MS_UCD_MARK, "\xD4" },
	{ 'S', MS_UCD_SYMBOL, "\xD5" "\\$\\+<->^`\\|~" },
};

static int rewrite_collapsed(const char *re, char *out, size_t cap)
{
	size_t o = 0, n = strlen(re);
	bool inside = false;
	for (size_t i = 0; i < n; i++) {
		const char *add = NULL;
		char one[2] = { re[i], 0 };
		if (re[i] == '[' && (i == 0 || re[i - 1] != '\\')) {
			inside = true;
		} else if (inside && re[i] == ']' && re[i - 1] != '\\') {
			inside = false;
		} else if (re[i] == '\\' && i + 4 < n && re[i + 1] == 'p' &&
			   re[i + 2] == '{' && re[i + 4] == '}') {
			for (size_t k = 0; k < sizeof(ucat) / sizeof(ucat[0]); k++)
				if (ucat[k].name == re[i + 3])
					add = ucat[k].bytes;
		}
		char buf[64];
		if (add) {
			snprintf(buf, sizeof(buf), "%s%s%s", inside ? "" : "[", add,
				 inside ? "" : "]");
			i += 4;
		} else {
			snprintf(buf, sizeof(buf), "%s", one);
		}
		size_t l = strlen(buf);
		if (o + l + 1 > cap)
			return -ENOSPC;
		memcpy(out + o, buf, l);
		o += l;
	}
	out[o] = '\0';
	return (int)o;
}

static int compile_one(struct ms_pre_regex *r, const char *re,
		       struct ms_err *err)
{
	int ec;
	PCRE2_SIZE eo;
	r->collapsed = strstr(re, "\\p{") != NULL;
	if (r->collapsed) {
		char buf[1024];
		int n = rewrite_collapsed(re, buf, sizeof(buf));
		if (n < 0)
			return ms_err_set(err, -EINVAL, "pre-tokenizer regex too long");
		r->re8 = pcre2_compile_8((PCRE2_SPTR8)buf, (size_t)n,
					 PCRE2_NO_UTF_CHECK, &ec, &eo, NULL);
		if (!r->re8)
			return ms_err_set(err, -EINVAL, "PCRE2 rejects pre-tokenizer "
					  "regex at %zu (error %d)", (size_t)eo, ec);
		pcre2_jit_compile_8(r->re8, PCRE2_JIT_COMPLETE);
		return 0;
	}
	/* code points: the regex's own UTF-8 decoded to 32-bit units */
	size_t n = strlen(re);
	uint32_t *u = malloc((n + 1) * sizeof(*u));
	if (!u)
		return ms_err_set(err, -ENOMEM, "out of memory");
	size_t nu = ms_utf8_decode(re, n, u, NULL);
	r->re32 = pcre2_compile_32((PCRE2_SPTR32)u, nu, 0, &ec, &eo, NULL);
	free(u);
	if (!r->re32)
		return ms_err_set(err, -EINVAL, "PCRE2 rejects pre-tokenizer regex "
				  "at %zu (error %d)", (size_t)eo, ec);
	pcre2_jit_compile_32(r->re32, PCRE2_JIT_COMPLETE);
	return 0;
}

int ms_pre_compile(struct ms_vocab *v, struct ms_err *err)
{
	const char *const *res = NULL;
	int n = 0;
	if (v->pre == MS_PRE_DEEPSEEK3) {
		res = re_deepseek3;
		n = 3;
	} else if (v->pre == MS_PRE_GPT4O) {
		res = re_gpt4o;
		n = 1;
	}
	for (int i = 0; i < n; i++) {
		int rc = compile_one(&v->regex[i], res[i], err);
		if (rc)
			return rc;
		v->n_regex = i + 1;
	}
	return 0;
}

void ms_pre_free(struct ms_vocab *v)
{
	for (int i = 0; i < v->n_regex; i++) {
		pcre2_code_free_8(v->regex[i].re8);
		pcre2_code_free_32(v->regex[i].re32);
	}
	v->n_regex = 0;
}

/* ---- scratch ------------------------------------------------------------------ */

struct sym {
	uint32_t start, n;
	int32_t prev, next, id;
};

struct bigram {
	uint32_t rank;
	int32_t left, right, result;
	uint32_t ln, rn;
};

struct frag {
	int32_t id;     /* MS_TOKEN_NULL: raw text [off, off+len) */
	size_t off, len;
};

struct scratch {
	uint32_t *cps, *wide;
	uint8_t *col;
	size_t cps_cap;
	uint32_t *seg, *seg2;
	size_t seg_cap;
	uint8_t *word;
	size_t word_cap;
	struct sym *sym;
	size_t sym_cap;
	struct bigram *heap;
	size_t heap_n, heap_cap;
	struct frag *frag, *frag2;
	size_t frag_cap, frag2_cap;
	pcre2_match_data_8 *md8;
	pcre2_match_data_32 *md32;
};

static void scratch_free(struct scratch *s)
{
	if (!s)
		return;
	free(s->cps);
	free(s->wide);
	free(s->col);
	free(s->seg);
	free(s->seg2);
	free(s->word);
	free(s->sym);
	free(s->heap);
	free(s->frag);
	free(s->frag2);
	pcre2_match_data_free_8(s->md8);
	pcre2_match_data_free_32(s->md32);
	free(s);
}

void ms_tokens_free(struct ms_tokens *t)
{
	if (!t)
		return;
	free(t->ids);
	scratch_free(t->scratch);
	memset(t, 0, sizeof(*t));
}

/* Grows *p to hold n elements of size sz. */
static int grow(void *pp, size_t *cap, size_t n, size_t sz)
{
	void **p = pp;
	if (n <= *cap)
		return 0;
	size_t c = *cap ? *cap : 64;
	while (c < n)
		c *= 2;
	void *q = realloc(*p, c * sz);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static int push_id(struct ms_tokens *t, int32_t id)
{
	if (grow(&t->ids, &t->cap, t->n + 1, sizeof(*t->ids)))
		return -ENOMEM;
	t->ids[t->n++] = id;
	return 0;
}

/* ---- step 2: words ------------------------------------------------------------- */

#define OUT_OF_RANGE 0xFFFFFFFFu

/* llama.cpp's scanner for the qwen2 / llama3 regexes over cps[s, e):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,D} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * with D = 1 for qwen2, 3 for llama3. Appends word lengths to out. */
static size_t split_scan(const uint32_t *cp, const uint16_t *tab, size_t s,
			 size_t e, unsigned max_digits, uint32_t *out)
{
	size_t n = 0, pos = s, prev = s;
#define CLS(p) ((p) < e ? (cp[p] < MS_UCD_MAX_CP ? tab[cp[p]] : 0) : 0)
#define CPT(p) ((p) < e ? cp[p] : OUT_OF_RANGE)
#define ADD(end)                                            \
	do {                                                \
		if ((end) > prev)                           \
			out[n++] = (uint32_t)((end) - prev); \
		prev = (end);                               \
	} while (0)
	while (pos < e) {
		uint32_t c = cp[pos];
		uint16_t f = CLS(pos);
		if (c == '\'' && pos + 1 < e) {
			uint32_t c1 = CPT(pos + 1);
			c1 = c1 >= 'A' && c1 <= 'Z' ? c1 + 32 : c1;
			if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
				pos += 2;
				ADD(pos);
				continue;
			}
			if (pos + 2 < e) {
				uint32_t c2 = CPT(pos + 2);
				c2 = c2 >= 'A' && c2 <= 'Z' ? c2 + 32 : c2;
				if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
				    (c1 == 'l' && c2 == 'l')) {
					pos += 3;
					ADD(pos);
					continue;
				}
			}
		}
		if (!(c == '\r' || c == '\n' || (f & MS_UCD_NUMBER)) &&
		    ((f & MS_UCD_LETTER) || (CLS(pos + 1) & MS_UCD_LETTER))) {
			pos++;
			while (CLS(pos) & MS_UCD_LETTER)
				pos++;
			ADD(pos);
			continue;
		}
		if (f & MS_UCD_NUMBER) {
			size_t ini = pos;
			while (CLS(pos) & MS_UCD_NUMBER) {
				if (++pos - ini >= max_digits) {
					ADD(pos);
					ini = pos;
				}
			}
			ADD(pos);
			continue;
		}
		uint16_t f2 = c == ' ' ? CLS(pos + 1) : f;
		if (!(f2 & (MS_UCD_SPACE | MS_UCD_LETTER | MS_UCD_NUMBER)) && f) {
			pos += c == ' ';
			while (!(f2 & (MS_UCD_SPACE | MS_UCD_LETTER | MS_UCD_NUMBER)) && f2) {
				pos++;
				f2 = CLS(pos);
			}
			while (CPT(pos) == '\r' || CPT(pos) == '\n')
				pos++;
			ADD(pos);
			continue;
		}
		size_t nws = 0, last_rn = 0;
		while (CLS(pos + nws) & MS_UCD_SPACE) {
			uint32_t c2 = CPT(pos + nws);
			if (c2 == '\r' || c2 == '\n')
				last_rn = pos + nws + 1;
			nws++;
		}
		if (last_rn) {
			pos = last_rn;
			ADD(pos);
			continue;
		}
		if (nws > 1 && pos + nws < e) {
			pos += nws - 1;
			ADD(pos);
			continue;
		}
		if (nws) {
			pos += nws;
			ADD(pos);
			continue;
		}
		pos++;
		ADD(pos);
	}
#undef CLS
#undef CPT
#undef ADD
	return n;
}

/* One regex over every segment: matches and the text between them become
 * segments (llama.cpp's std::regex_iterator loop). */
static int split_regex(const struct ms_pre_regex *r, struct scratch *s,
		       size_t n_cp, size_t n_seg, size_t *n_out)
{
	size_t start = 0, o = 0;
	for (size_t k = 0; k < n_seg; k++) {
		size_t len = s->seg[k], p = 0;
		while (p < len) {
			int rc;
			PCRE2_SIZE *ov;
			if (r->collapsed) {
				rc = pcre2_match_8(r->re8, s->col + start, len, p, 0,
						   s->md8, NULL);
				ov = pcre2_get_ovector_pointer_8(s->md8);
			} else {
				rc = pcre2_match_32(r->re32, s->wide + start, len, p,
						    0, s->md32, NULL);
				ov = pcre2_get_ovector_pointer_32(s->md32);
			}
			if (rc == PCRE2_ERROR_NOMATCH)
				break;
			if (rc < 0)
				return -EINVAL;
			size_t ms = ov[0], me = ov[1];
			if (me <= ms) /* none of these regexes matches empty */
				return -EINVAL;
			if (ms > p)
				s->seg2[o++] = (uint32_t)(ms - p);
			s->seg2[o++] = (uint32_t)(me - ms);
			p = me;
		}
		if (p < len)
			s->seg2[o++] = (uint32_t)(len - p);
		start += len;
	}
	(void)n_cp;
	uint32_t *t = s->seg;
	s->seg = s->seg2;
	s->seg2 = t;
	*n_out = o;
	return 0;
}

/* ---- step 3: BPE over one word --------------------------------------------------- */

static bool heap_less(const struct bigram *a, const struct bigram *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(struct scratch *s, struct bigram b)
{
	if (grow(&s->heap, &s->heap_cap, s->heap_n + 1, sizeof(*s->heap)))
		return -ENOMEM;
	size_t i = s->heap_n++;
	while (i) {
		size_t p = (i - 1) / 2;
		if (!heap_less(&b, &s->heap[p]))
			break;
		s->heap[i] = s->heap[p];
		i = p;
	}
	s->heap[i] = b;
	return 0;
}

static struct bigram heap_pop(struct scratch *s)
{
	struct bigram top = s->heap[0], last = s->heap[--s->heap_n];
	size_t i = 0, n = s->heap_n;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && heap_less(&s->heap[c + 1], &s->heap[c]))
			c++;
		if (!heap_less(&s->heap[c], &last))
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	if (n)
		s->heap[i] = last;
	return top;
}

static int try_pair(const struct ms_vocab *v, struct scratch *s, int32_t l,
		    int32_t r)
{
	if (l < 0 || r < 0)
		return 0;
	int32_t a = s->sym[l].id, b = s->sym[r].id;
	if (a < 0 || b < 0)
		return 0;
	const struct ms_merge *m = ms_vocab_merge(v, a, b);
	if (!m)
		return 0;
	return heap_push(s, (struct bigram){ .rank = m->rank, .left = l,
					     .right = r, .result = m->result,
					     .ln = s->sym[l].n,
					     .rn = s->sym[r].n });
}

static int emit_bytes(const struct ms_vocab *v, const uint8_t *w, size_t n,
		      struct ms_tokens *out)
{
	for (size_t i = 0; i < n; i++)
		for (int k = 0; k < 2; k++)
			if (v->byte_fallback[w[i]][k] != MS_TOKEN_NULL &&
			    push_id(out, v->byte_fallback[w[i]][k]))
				return -ENOMEM;
	return 0;
}

static int bpe_word(const struct ms_vocab *v, struct scratch *s,
		    const uint8_t *w, size_t n, struct ms_tokens *out)
{
	if (!n)
		return 0;
	if (v->ignore_merges) {
		/* llama3: a word that is a token as a whole is that token */
		uint8_t enc[2 * 256];
		if (n <= 256) {
			size_t el = 0;
			for (size_t i = 0; i < n; i++) {
				size_t l;
				const char *u = ms_bytelevel_encode(w[i], &l);
				memcpy(enc + el, u, l);
				el += l;
			}
			int32_t id = ms_vocab_find(v, (const char *)enc, el);
			if (id != MS_TOKEN_NULL)
				return push_id(out, id);
		}
	}
	if (n == 1) {
		if (v->byte_tok[w[0]] != MS_TOKEN_NULL)
			return push_id(out, v->byte_tok[w[0]]);
		return emit_bytes(v, w, 1, out);
	}
	if (grow(&s->sym, &s->sym_cap, n, sizeof(*s->sym)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		s->sym[i] = (struct sym){ .start = (uint32_t)i, .n = 1,
					  .prev = (int32_t)i - 1,
					  .next = i + 1 < n ? (int32_t)i + 1 : -1,
					  .id = v->byte_tok[w[i]] };
	s->heap_n = 0;
	for (size_t i = 1; i < n; i++)
		if (try_pair(v, s, (int32_t)i - 1, (int32_t)i))
			return -ENOMEM;
	while (s->heap_n) {
		struct bigram b = heap_pop(s);
		struct sym *L = &s->sym[b.left], *R = &s->sym[b.right];
		if (!L->n || !R->n || L->n != b.ln || R->n != b.rn)
			continue; /* stale */
		L->n += R->n;
		L->id = b.result;
		R->n = 0;
		L->next = R->next;
		if (R->next >= 0)
			s->sym[R->next].prev = b.left;
		if (try_pair(v, s, L->prev, b.left) ||
		    try_pair(v, s, b.left, L->next))
			return -ENOMEM;
	}
	for (int32_t i = 0; i != -1; i = s->sym[i].next) {
		const struct sym *y = &s->sym[i];
		if (!y->n)
			continue;
		int rc = y->id != MS_TOKEN_NULL ? push_id(out, y->id)
						: emit_bytes(v, w + y->start, y->n, out);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- one raw piece of text --------------------------------------------------------- */

static int tokenize_raw(const struct ms_vocab *v, struct scratch *s,
			const char *text, size_t len, struct ms_tokens *out)
{
	if (!len)
		return 0;
	if (grow(&s->cps, &s->cps_cap, len + 1, sizeof(*s->cps)) ||
	    grow(&s->seg, &s->seg_cap, len + 1, sizeof(*s->seg)))
		return -ENOMEM;
	/* seg and seg2 grow together */
	size_t cap2 = s->seg_cap;
	uint32_t *q = realloc(s->seg2, cap2 * sizeof(*q));
	if (!q)
		return -ENOMEM;
	s->seg2 = q;
	size_t n = ms_utf8_decode(text, len, s->cps, NULL);
	const uint16_t *tab = ms_ucd_table();
	size_t n_seg;

	switch (v->pre) {
	case MS_PRE_QWEN2:
		n_seg = split_scan(s->cps, tab, 0, n, 1, s->seg);
		break;
	case MS_PRE_LLAMA3:
	case MS_PRE_GLM4:
		n_seg = split_scan(s->cps, tab, 0, n, 3, s->seg);
		break;
	default: {
		uint8_t *col = realloc(s->col, s->cps_cap);
		uint32_t *wide = realloc(s->wide, s->cps_cap * sizeof(*wide));
		if (col)
			s->col = col;
		if (wide)
			s->wide = wide;
		if (!col || !wide)
			return -ENOMEM;
		if (!s->md8)
			s->md8 = pcre2_match_data_create_8(4, NULL);
		if (!s->md32)
			s->md32 = pcre2_match_data_create_32(4, NULL);
		if (!s->md8 || !s->md32)
			return -ENOMEM;
		for (size_t i = 0; i < n; i++) {
			uint32_t c = s->cps[i];
			uint16_t f = c < MS_UCD_MAX_CP ? tab[c] : 0;
			s->wide[i] = c > 0x7F && (f & MS_UCD_SPACE) ? 0x0B : c;
			if (c < 128) {
				s->col[i] = (uint8_t)c;
				continue;
			}
			uint16_t k = f & 0xFF;
			s->col[i] = f & MS_UCD_SPACE ? 0x0B
				  : k == MS_UCD_NUMBER ? 0xD1
				  : k == MS_UCD_LETTER ? 0xD2
				  : k == MS_UCD_PUNCT ? 0xD3
				  : k == MS_UCD_MARK ? 0xD4
				  : k == MS_UCD_SYMBOL ? 0xD5 : 0xD0;
		}
		s->seg[0] = (uint32_t)n;
		n_seg = 1;
		for (int r = 0; r < v->n_regex; r++) {
			int rc = split_regex(&v->regex[r], s, n, n_seg, &n_seg);
			if (rc)
				return rc;
		}
	}
	}

	/* each word: code points back to UTF-8, then BPE on its bytes */
	size_t at = 0;
	for (size_t k = 0; k < n_seg; k++) {
		size_t wl = s->seg[k];
		if (grow(&s->word, &s->word_cap, 4 * wl + 4, 1))
			return -ENOMEM;
		size_t bl = 0;
		for (size_t i = 0; i < wl; i++) {
			/* past U+10FFFF (F4 90.. to F7 BF BF BF): llama.cpp throws
			 * here and aborts the process; we take it as U+FFFD */
			size_t l = ms_utf8_encode(s->cps[at + i], (char *)s->word + bl);
			bl += l ? l : ms_utf8_encode(0xFFFD, (char *)s->word + bl);
		}
		at += wl;
		int rc = bpe_word(v, s, s->word, bl, out);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- step 1: special tokens ----------------------------------------------------------- */

static int partition(const struct ms_vocab *v, struct scratch *s,
		     const char *text, size_t len, bool parse_special,
		     size_t *n_frag)
{
	if (grow(&s->frag, &s->frag_cap, 1, sizeof(*s->frag)))
		return -ENOMEM;
	size_t n = 0;
	if (len)
		s->frag[n++] = (struct frag){ MS_TOKEN_NULL, 0, len };
	for (uint32_t k = 0; k < v->n_special && n; k++) {
		int32_t id = v->special[k];
		uint8_t ty = v->type[id];
		if (!parse_special && (ty == MS_TOK_CONTROL || ty == MS_TOK_UNKNOWN))
			continue;
		const char *t = v->tokens.str[id];
		size_t tl = v->tokens.len[id];
		if (tl > len || !memmem(text, len, t, tl))
			continue;
		/* each raw fragment cut at every occurrence, left to right */
		size_t need = 0;
		for (size_t i = 0; i < n; i++) {
			if (s->frag[i].id != MS_TOKEN_NULL) {
				need++;
				continue;
			}
			const char *p = text + s->frag[i].off;
			size_t left = s->frag[i].len, cnt = 0;
			const char *m;
			while (left >= tl && (m = memmem(p, left, t, tl))) {
				cnt++;
				left -= (size_t)(m - p) + tl;
				p = m + tl;
			}
			need += 2 * cnt + 1;
		}
		if (grow(&s->frag2, &s->frag2_cap, need, sizeof(*s->frag2)))
			return -ENOMEM;
		size_t o = 0;
		for (size_t i = 0; i < n; i++) {
			struct frag f = s->frag[i];
			if (f.id != MS_TOKEN_NULL) {
				s->frag2[o++] = f;
				continue;
			}
			const char *p = text + f.off, *end = text + f.off + f.len;
			const char *m;
			while ((size_t)(end - p) >= tl &&
			       (m = memmem(p, (size_t)(end - p), t, tl))) {
				if (m > p)
					s->frag2[o++] = (struct frag){
						MS_TOKEN_NULL, (size_t)(p - text),
						(size_t)(m - p) };
				s->frag2[o++] = (struct frag){ id, 0, 0 };
				p = m + tl;
			}
			if (p < end)
				s->frag2[o++] = (struct frag){ MS_TOKEN_NULL,
							       (size_t)(p - text),
							       (size_t)(end - p) };
		}
		struct frag *tmp = s->frag;
		size_t tc = s->frag_cap;
		s->frag = s->frag2;
		s->frag_cap = s->frag2_cap;
		s->frag2 = tmp;
		s->frag2_cap = tc;
		n = o;
	}
	*n_frag = n;
	return 0;
}

int ms_tokenize(const struct ms_vocab *v, const char *text, size_t len,
		unsigned flags, struct ms_tokens *out, struct ms_err *err)
{
	out->n = 0;
	if (len > UINT32_MAX / 4)
		return ms_err_set(err, -EOVERFLOW, "text of %zu bytes is over the "
				  "tokenizer's limit of %u", len, UINT32_MAX / 4);
	struct scratch *s = out->scratch;
	if (!s) {
		s = out->scratch = calloc(1, sizeof(*s));
		if (!s)
			return ms_err_set(err, -ENOMEM, "out of memory");
	}
	size_t n_frag;
	int rc = partition(v, s, text, len, flags & MS_TOKENIZE_PARSE_SPECIAL,
			   &n_frag);
	bool add = flags & MS_TOKENIZE_ADD_SPECIAL;
	if (!rc && add && v->sp.add_bos)
		rc = push_id(out, v->sp.bos);
	for (size_t i = 0; i < n_frag && !rc; i++) {
		const struct frag *f = &s->frag[i];
		rc = f->id != MS_TOKEN_NULL ? push_id(out, f->id)
					    : tokenize_raw(v, s, text + f->off,
							   f->len, out);
	}
	if (!rc && add && v->sp.add_eos)
		rc = push_id(out, v->sp.eos);
	if (rc == -ENOMEM)
		return ms_err_set(err, rc, "out of memory tokenizing %zu bytes",
				  len);
	if (rc)
		return ms_err_set(err, rc, "the pre-tokenizer failed on %zu bytes "
				  "of text", len);
	return 0;
}

/* ---- back to bytes ----------------------------------------------------------------- */

static size_t put(char *buf, size_t cap, size_t at, const void *src, size_t n)
{
	if (at < cap)
		memcpy(buf + at, src, at + n <= cap ? n : cap - at);
	return at + n;
}

int ms_token_piece(const struct ms_vocab *v, int32_t id, bool special,
		   char *buf, size_t cap)
{
	if (id < 0 || (uint32_t)id >= v->n)
		return -EINVAL;
	const char *t = v->tokens.str[id];
	size_t tl = v->tokens.len[id], o = 0;
	switch (v->type[id]) {
	case MS_TOK_CONTROL:
	case MS_TOK_UNKNOWN:
		return special ? (int)put(buf, cap, 0, t, tl) : 0;
	case MS_TOK_USER_DEFINED:
		return (int)put(buf, cap, 0, t, tl);
	case MS_TOK_NORMAL:
		break;
	default:
		return 0; /* unused, byte, undefined: nothing, as llama.cpp */
	}
	uint32_t cps[MS_VOCAB_MAX_TOKEN_LEN];
	uint32_t off[MS_VOCAB_MAX_TOKEN_LEN + 1];
	size_t n = ms_utf8_decode(t, tl, cps, off);
	for (size_t i = 0; i < n; i++) {
		int b = ms_bytelevel_decode(cps[i]);
		if (b >= 0) {
			uint8_t c = (uint8_t)b;
			o = put(buf, cap, o, &c, 1);
			continue;
		}
		/* not a byte-level character: llama.cpp writes it out so */
		char tmp[64];
		int l = snprintf(tmp, sizeof(tmp), "[UNK_BYTE_0x");
		o = put(buf, cap, o, tmp, (size_t)l);
		for (uint32_t j = off[i]; j < off[i + 1]; j++) {
			l = snprintf(tmp, sizeof(tmp), "%02x", (uint8_t)t[j]);
			o = put(buf, cap, o, tmp, (size_t)l);
		}
		o = put(buf, cap, o, t, tl);
		o = put(buf, cap, o, "]", 1);
	}
	return (int)o;
}

int ms_detokenize(const struct ms_vocab *v, const int32_t *ids, size_t n,
		  bool special, char **out, size_t *len, struct ms_err *err)
{
	size_t cap = 256, o = 0;
	char *buf = malloc(cap);
	if (!buf)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		int l = ms_token_piece(v, ids[i], special, buf + o, cap - o - 1);
		if (l < 0) {
			free(buf);
			return ms_err_set(err, -EINVAL, "token id %d is outside the "
					  "vocabulary of %u", ids[i], v->n);
		}
		if ((size_t)l >= cap - o - 1) {
			while ((size_t)l >= cap - o - 1)
				cap *= 2;
			char *q = realloc(buf, cap);
			if (!q) {
				free(buf);
				return ms_err_set(err, -ENOMEM, "out of memory");
			}
			buf = q;
			l = ms_token_piece(v, ids[i], special, buf + o, cap - o - 1);
		}
		o += (size_t)l;
	}
	buf[o] = '\0';
	*out = buf;
	*len = o;
	return 0;
}
