/*
 * engine/chat.c - chat templates as C (engine.h): Qwen3's and GLM-4.x's.
 *
 * No Jinja interpreter: each renderer is the model's own template read line
 * by line and written out for what it does with string contents and the
 * roles system, user, assistant and tool, with no tools offered, no
 * tool_calls and enable_thinking left undefined (thinking on, the models'
 * default). The whitespace is that of transformers' apply_chat_template
 * (trim_blocks and lstrip_blocks on), which is what the models were trained
 * with; `.strip()` is Python's, on Unicode whitespace.
 *
 * llama.cpp's llama_chat_apply_template runs no Jinja either: it recognises
 * a template by its markers and renders a fixed pattern, which differs from
 * the real templates in these places (tests/t_chat.c checks each):
 *  - Qwen3 (llama.cpp: "chatml"): the real template writes an assistant turn
 *    that follows the last user turn (the one being completed, or a
 *    conversation that ends with the assistant) as "<think>\n" + reasoning +
 *    "\n</think>\n\n" + content, and cuts any "<think>...</think>" out of
 *    earlier assistant turns; ChatML copies the content as it is. For user
 *    and system turns and the generation prompt they agree.
 *  - GLM-4.5/4.6 (llama.cpp: "chatglm4"): the real generation prompt is
 *    "<|assistant|>" (the model writes the "\n<think>" itself), llama.cpp's
 *    "<|assistant|>\n"; real assistant turns are "<|assistant|>\n<think>
 *    </think>\n" + content.strip() (the reasoning kept only after the last
 *    user turn), llama.cpp's "<|assistant|>\n" + content.
 *  - GLM-4.7 has no built-in in llama.cpp (its [gMASK]<sop> makes it
 *    "chatglm4"): the real template puts no newline after the role tags,
 *    writes "</think>" before earlier assistant contents, and its generation
 *    prompt is "<|assistant|><think>".
 *
 * Which is which comes from the Jinja source: Qwen3's has ChatML markers,
 * <think> and enable_thinking; GLM's starts [gMASK]<sop> and has
 * <|assistant|>, 4.7's writing "<|user|>{{" where 4.5's writes "<|user|>\n".
 * Anything else (Qwen2.5's default system prompt, Qwen3-2507's fixed
 * <think> prompt, ...) is -ENOTSUP rather than a near miss.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/engine.h"

static const char *const tmpl_names[MS_CHAT_COUNT] = {
	[MS_CHAT_NONE] = "none",
	[MS_CHAT_QWEN3] = "qwen3",
	[MS_CHAT_GLM4] = "glm4",
	[MS_CHAT_GLM47] = "glm47",
};

/* Other spellings --chat-template takes. */
static const struct {
	const char *name;
	enum ms_chat_tmpl t;
} aliases[] = {
	{ "glm4.5", MS_CHAT_GLM4 },
	{ "glm4.6", MS_CHAT_GLM4 },
	{ "glm-4.5", MS_CHAT_GLM4 },
	{ "glm-4.6", MS_CHAT_GLM4 },
	{ "glm4.7", MS_CHAT_GLM47 },
	{ "glm-4.7", MS_CHAT_GLM47 },
};

const char *ms_chat_name(enum ms_chat_tmpl t)
{
	return (unsigned)t < MS_CHAT_COUNT ? tmpl_names[t] : "none";
}

enum ms_chat_tmpl ms_chat_from_name(const char *name)
{
	if (!name)
		return MS_CHAT_NONE;
	for (int t = MS_CHAT_NONE + 1; t < MS_CHAT_COUNT; t++)
		if (!strcmp(name, tmpl_names[t]))
			return (enum ms_chat_tmpl)t;
	for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
		if (!strcmp(name, aliases[i].name))
			return aliases[i].t;
	return MS_CHAT_NONE;
}

/* The template's first non-blank line, trimmed, cut to about 60 bytes at a
 * UTF-8 boundary, control bytes as '?': for the message. */
static void first_line(const char *j, char *buf, size_t cap)
{
	while (*j == ' ' || *j == '\t' || *j == '\n' || *j == '\r')
		j++;
	size_t n = strcspn(j, "\r\n");
	while (n && (j[n - 1] == ' ' || j[n - 1] == '\t'))
		n--;
	bool cut = false;
	size_t max = cap > 64 ? 60 : cap - 4;
	if (n > max) {
		n = max;
		while (n && ((unsigned char)j[n] & 0xc0) == 0x80)
			n--;
		cut = true;
	}
	size_t o = 0;
	for (size_t i = 0; i < n; i++)
		buf[o++] = (unsigned char)j[i] < 0x20 ? '?' : j[i];
	if (cut) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
}

int ms_chat_detect(const char *jinja, enum ms_chat_tmpl *out,
		   struct ms_err *err)
{
	*out = MS_CHAT_NONE;
	if (!jinja || !*jinja)
		return ms_err_set(err, -ENOENT, "the model has no chat template");
	if (strstr(jinja, "[gMASK]<sop>") && strstr(jinja, "<|assistant|>")) {
		*out = strstr(jinja, "<|user|>{{") ? MS_CHAT_GLM47 : MS_CHAT_GLM4;
		return 0;
	}
	if (strstr(jinja, "<|im_start|>") && strstr(jinja, "<think>") &&
	    strstr(jinja, "enable_thinking")) {
		*out = MS_CHAT_QWEN3;
		return 0;
	}
	char fl[80];
	first_line(jinja, fl, sizeof(fl));
	return ms_err_set(err, -ENOTSUP, "the model's chat template is none of "
			  "those built in (qwen3, glm4, glm47); it begins \"%s\"",
			  fl);
}

/* ---- strings as (pointer, length) slices, with Python's semantics ---- */

struct str {
	const char *p;
	size_t n;
};

static struct str str_of(const char *s)
{
	return (struct str){ s, strlen(s) };
}

static bool str_has(struct str s, const char *needle)
{
	return memmem(s.p, s.n, needle, strlen(needle)) != NULL;
}

/* s.split(sep)[0]: before the first sep (all of s when none). */
static struct str split_first(struct str s, const char *sep)
{
	const char *f = memmem(s.p, s.n, sep, strlen(sep));
	return f ? (struct str){ s.p, (size_t)(f - s.p) } : s;
}

/* s.split(sep)[-1]: after the last sep (all of s when none). */
static struct str split_last(struct str s, const char *sep)
{
	size_t l = strlen(sep);
	struct str r = s;
	const char *f;
	while ((f = memmem(r.p, r.n, sep, l))) {
		r.n -= (size_t)(f - r.p) + l;
		r.p = f + l;
	}
	return r;
}

static struct str lstrip_nl(struct str s)
{
	while (s.n && *s.p == '\n')
		s.p++, s.n--;
	return s;
}

static struct str rstrip_nl(struct str s)
{
	while (s.n && s.p[s.n - 1] == '\n')
		s.n--;
	return s;
}

/* Python's str.isspace: bidi WS, B, S or category Zs. */
static bool py_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) ||
	       c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

/* The code point at p (n bytes left) and its length; invalid bytes are one
 * byte of U+FFFD (never whitespace, so they are never stripped). */
static uint32_t utf8_at(const unsigned char *p, size_t n, size_t *len)
{
	*len = 1;
	if (p[0] < 0x80)
		return p[0];
	size_t l = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc0 ? 2 : 0;
	if (!l || l > n)
		return 0xfffd;
	uint32_t c = p[0] & (0x7f >> l);
	for (size_t i = 1; i < l; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0xfffd;
		c = c << 6 | (p[i] & 0x3f);
	}
	*len = l;
	return c;
}

/* s.strip(): Unicode whitespace at both ends. */
static struct str strip_ws(struct str s)
{
	size_t l;
	while (s.n && py_space(utf8_at((const unsigned char *)s.p, s.n, &l)))
		s.p += l, s.n -= l;
	/* From the end: back to the start of the last code point. */
	while (s.n) {
		size_t b = s.n - 1;
		while (b && ((unsigned char)s.p[b] & 0xc0) == 0x80 && s.n - b < 4)
			b--;
		uint32_t c = utf8_at((const unsigned char *)s.p + b, s.n - b, &l);
		if (b + l != s.n) /* not one whole code point: a stray byte */
			c = utf8_at((const unsigned char *)s.p + s.n - 1, 1, &l);
		if (!py_space(c))
			break;
		s.n -= l;
	}
	return s;
}

/* ---- the output ---- */

struct buf {
	char *p;
	size_t n, cap;
	bool oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 256;
		while (c < b->n + n + 1)
			c *= 2;
		char *p = realloc(b->p, c);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = c;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void put_str(struct buf *b, struct str s)
{
	put(b, s.p, s.n);
}

enum role { R_SYSTEM, R_USER, R_ASSISTANT, R_TOOL };

static bool is(const struct ms_chat_msg *m, enum role r)
{
	static const char *const names[] = { "system", "user", "assistant",
					     "tool" };
	return !strcmp(m->role, names[r]);
}

/* An assistant's content split as both templates do when it holds
 * "</think>": reasoning = before the first </think>, rstrip('\n'), after
 * the last <think>, lstrip('\n'); content = after the last </think>,
 * lstrip('\n'). Without one the reasoning is empty. */
static void split_think(struct str all, struct str *reasoning,
			struct str *content)
{
	*reasoning = (struct str){ "", 0 };
	*content = all;
	if (!str_has(all, "</think>"))
		return;
	*content = lstrip_nl(split_last(all, "</think>"));
	*reasoning = lstrip_nl(
		split_last(rstrip_nl(split_first(all, "</think>")), "<think>"));
}

/* Qwen3 (Qwen3-30B-A3B, 235B-A22B tokenizer_config.json). */
static void render_qwen3(struct buf *b, const struct ms_chat_msg *m, size_t n,
			 bool add_gen)
{
	if (is(&m[0], R_SYSTEM)) {
		puts_(b, "<|im_start|>system\n");
		puts_(b, m[0].content);
		puts_(b, "<|im_end|>\n");
	}
	/* The last user turn that is not a wrapped tool response. */
	size_t last_query = n - 1;
	for (size_t k = n; k-- > 0;) {
		struct str c = str_of(m[k].content);
		bool wrapped = c.n >= 15 + 16 &&
			       !memcmp(c.p, "<tool_response>", 15) &&
			       !memcmp(c.p + c.n - 16, "</tool_response>", 16);
		if (is(&m[k], R_USER) && !wrapped) {
			last_query = k;
			break;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (is(&m[i], R_USER) || (is(&m[i], R_SYSTEM) && i > 0)) {
			puts_(b, "<|im_start|>");
			puts_(b, m[i].role);
			puts_(b, "\n");
			puts_(b, m[i].content);
			puts_(b, "<|im_end|>\n");
		} else if (is(&m[i], R_ASSISTANT)) {
			struct str r, c;
			split_think(str_of(m[i].content), &r, &c);
			puts_(b, "<|im_start|>assistant\n");
			if (i > last_query && (i == n - 1 || r.n)) {
				puts_(b, "<think>\n");
				put_str(b, lstrip_nl(rstrip_nl(r)));
				puts_(b, "\n</think>\n\n");
				c = lstrip_nl(c);
			}
			put_str(b, c);
			puts_(b, "<|im_end|>\n");
		} else if (is(&m[i], R_TOOL)) {
			if (i == 0 || !is(&m[i - 1], R_TOOL))
				puts_(b, "<|im_start|>user");
			puts_(b, "\n<tool_response>\n");
			puts_(b, m[i].content);
			puts_(b, "\n</tool_response>");
			if (i == n - 1 || !is(&m[i + 1], R_TOOL))
				puts_(b, "<|im_end|>\n");
		}
	}
	if (add_gen)
		puts_(b, "<|im_start|>assistant\n");
}

/* GLM-4.5 and 4.6 (glm47 false), GLM-4.7 (true): the same structure, 4.7
 * without the newlines after the role tags and around <think>. */
static void render_glm(struct buf *b, const struct ms_chat_msg *m, size_t n,
		       bool add_gen, bool glm47)
{
	const char *nl = glm47 ? "" : "\n";
	puts_(b, "[gMASK]<sop>");
	size_t last_user = SIZE_MAX; /* -1: none */
	for (size_t k = 0; k < n; k++)
		if (is(&m[k], R_USER))
			last_user = k;
	for (size_t i = 0; i < n; i++) {
		if (is(&m[i], R_USER) || is(&m[i], R_SYSTEM)) {
			puts_(b, is(&m[i], R_USER) ? "<|user|>" : "<|system|>");
			puts_(b, nl);
			puts_(b, m[i].content);
		} else if (is(&m[i], R_ASSISTANT)) {
			struct str r, c;
			split_think(str_of(m[i].content), &r, &c);
			r = strip_ws(r);
			c = strip_ws(c);
			puts_(b, "<|assistant|>");
			puts_(b, nl);
			if ((last_user == SIZE_MAX || i > last_user) && r.n) {
				puts_(b, "<think>");
				put_str(b, r);
				puts_(b, "</think>");
			} else {
				puts_(b, glm47 ? "</think>" : "<think></think>");
			}
			if (c.n) {
				puts_(b, nl);
				put_str(b, c);
			}
		} else if (is(&m[i], R_TOOL)) {
			if (i == 0 || !is(&m[i - 1], R_TOOL))
				puts_(b, "<|observation|>");
			puts_(b, nl);
			puts_(b, "<tool_response>");
			puts_(b, nl);
			puts_(b, m[i].content);
			puts_(b, nl);
			puts_(b, "</tool_response>");
		}
	}
	if (add_gen)
		puts_(b, glm47 ? "<|assistant|><think>" : "<|assistant|>");
}

int ms_chat_render(enum ms_chat_tmpl t, const struct ms_chat_msg *msgs,
		   size_t n, bool add_generation_prompt, char **out,
		   struct ms_err *err)
{
	*out = NULL;
	if (t <= MS_CHAT_NONE || t >= MS_CHAT_COUNT)
		return ms_err_set(err, -EINVAL, "chat template %d is not one of "
				  "the built-in ones", (int)t);
	if (n == 0 || !msgs)
		return ms_err_set(err, -EINVAL, "%s chat: no messages",
				  ms_chat_name(t));
	for (size_t i = 0; i < n; i++) {
		if (!msgs[i].role || !msgs[i].content)
			return ms_err_set(err, -EINVAL, "%s chat: message %zu has "
					  "no %s", ms_chat_name(t), i,
					  msgs[i].role ? "content" : "role");
		if (!is(&msgs[i], R_SYSTEM) && !is(&msgs[i], R_USER) &&
		    !is(&msgs[i], R_ASSISTANT) && !is(&msgs[i], R_TOOL))
			return ms_err_set(err, -EINVAL, "%s chat: message %zu has "
					  "role \"%.40s\"; known are system, "
					  "user, assistant, tool",
					  ms_chat_name(t), i, msgs[i].role);
	}
	struct buf b = { 0 };
	if (t == MS_CHAT_QWEN3)
		render_qwen3(&b, msgs, n, add_generation_prompt);
	else
		render_glm(&b, msgs, n, add_generation_prompt,
			   t == MS_CHAT_GLM47);
	if (b.oom) {
		free(b.p);
		return ms_err_set(err, -ENOMEM, "%s chat: out of memory",
				  ms_chat_name(t));
	}
	*out = b.p;
	return 0;
}
