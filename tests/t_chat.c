/*
 * t_chat.c - the chat templates (engine/chat.c).
 *
 *  - Names and detection: Qwen3's real template ($MS_TOKENIZERS/qwen3/
 *    tokenizer_config.json), GLM-4.5- and 4.7-shaped ones, and what is
 *    refused (-ENOTSUP quoting the first line, -ENOENT for none).
 *  - Golden renderings: what transformers' apply_chat_template makes of the
 *    real templates (Jinja2, trim_blocks and lstrip_blocks) for the cases
 *    where llama.cpp's built-ins differ: assistant turns with and without
 *    <think>, after and before the last user turn, Unicode whitespace.
 *  - Against llama.cpp's llama_chat_apply_template (tools/llama_ref.c, the
 *    pinned libllama in $MS_LLAMA_DIR): system+user, user alone,
 *    user/assistant/user and a conversation ending with the assistant, each
 *    with and without the generation prompt, contents with newlines and
 *    Unicode. Qwen3 goes through the real template text, GLM through
 *    "chatglm4" and through a GLM-shaped template (llama.cpp's detection
 *    path). Where llama.cpp differs from the real template (engine/chat.c
 *    lists how), the expected string is llama.cpp's with that difference
 *    applied, so every other byte is still compared.
 *
 * Exit 1 (never skip) when llama.cpp's library or the Qwen3 tokenizer
 * cannot be had, saying why.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../tools/llama_ref.h"
#include "moestream/engine.h"
#include "testutil.h"

/* GLM-shaped templates written for this test (the markers detection and
 * llama.cpp look at, in the two spellings of the user turn). */
static const char glm45_like[] =
	"[gMASK]<sop>\n"
	"{%- for m in messages -%}\n"
	"{%- if m.role == 'user' -%}<|user|>\n{{ m.content }}\n"
	"{%- elif m.role == 'assistant' -%}<|assistant|>\n{{ m.content }}\n"
	"{%- endif -%}{%- endfor -%}\n"
	"{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}\n";
static const char glm47_like[] =
	"[gMASK]<sop>\n"
	"{%- for m in messages -%}\n"
	"{%- if m.role == 'user' -%}<|user|>{{ m.content }}\n"
	"{%- elif m.role == 'assistant' -%}<|assistant|>{{ m.content }}\n"
	"{%- endif -%}{%- endfor -%}\n"
	"{%- if add_generation_prompt -%}<|assistant|><think>{%- endif -%}\n";

static char *qwen3_jinja(void)
{
	const char *root = getenv("MS_TOKENIZERS");
	if (!root || !*root)
		t_fatal("MS_TOKENIZERS is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	char p[1024];
	snprintf(p, sizeof(p), "%s/qwen3/tokenizer_config.json", root);
	char *txt = t_read_text(p);
	if (!txt) {
		char fp[1100];
		snprintf(fp, sizeof(fp), "%s/qwen3/FETCH_FAILED", root);
		char *why = t_read_text(fp);
		t_fatal("%s is missing: %s", p,
			why ? why : "no fetch error recorded; run tests/fetch-ggml.sh");
	}
	cJSON *j = cJSON_Parse(txt);
	free(txt);
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
	if (!cJSON_IsString(t))
		t_fatal("%s has no chat_template string", p);
	char *s = strdup(t->valuestring);
	cJSON_Delete(j);
	if (!s)
		t_fatal("out of memory");
	return s;
}

static char *render(enum ms_chat_tmpl t, const struct ms_chat_msg *m, size_t n,
		    bool gen)
{
	char *o = NULL;
	struct ms_err err = { 0 };
	int rc = ms_chat_render(t, m, n, gen, &o, &err);
	if (rc) {
		t_fail_at(__FILE__, __LINE__, "ms_chat_render(%s, %zu messages): "
			  "%d %s", ms_chat_name(t), n, rc, err.msg);
		return strdup("");
	}
	return o;
}

static char *llama(const char *tmpl, const struct ms_chat_msg *m, size_t n,
		   bool gen)
{
	char *o = NULL;
	struct ms_err err = { 0 };
	int rc = ms_llref_chat_apply(NULL, tmpl, m, n, gen, &o, &err);
	if (rc)
		t_fatal("llama.cpp's chat template \"%.*s\": %s",
			(int)(strcspn(tmpl, "\n") < 30 ? strcspn(tmpl, "\n") : 30),
			tmpl, err.msg);
	return o;
}

static void eq(const char *what, const char *got, const char *want)
{
	if (!strcmp(got, want))
		return;
	size_t i = 0;
	while (got[i] && got[i] == want[i])
		i++;
	size_t from = i > 20 ? i - 20 : 0;
	t_fail_at(__FILE__, __LINE__, "%s: differs at byte %zu:\n  got  "
		  "...%.60s\n  want ...%.60s\n  (whole got: \"%s\")", what, i,
		  got + from, want + from, got);
}

/* s with every `from` replaced by `to` (malloc'ed). */
static char *replace(const char *s, const char *from, const char *to)
{
	size_t fl = strlen(from), tl = strlen(to), n = 0;
	for (const char *p = s; (p = strstr(p, from)); p += fl)
		n++;
	char *o = malloc(strlen(s) + n * tl + 1), *w = o;
	if (!o)
		t_fatal("out of memory");
	for (const char *p = s, *f; ; p = f + fl) {
		f = strstr(p, from);
		size_t l = f ? (size_t)(f - p) : strlen(p);
		memcpy(w, p, l);
		w += l;
		if (!f)
			break;
		memcpy(w, to, tl);
		w += tl;
	}
	*w = '\0';
	return o;
}

static char *cat(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *o = malloc(la + lb + 1);
	if (!o)
		t_fatal("out of memory");
	memcpy(o, a, la);
	memcpy(o + la, b, lb + 1);
	return o;
}

static void test_names(void)
{
	static const struct {
		const char *name;
		enum ms_chat_tmpl t;
	} c[] = {
		{ "qwen3", MS_CHAT_QWEN3 }, { "glm4", MS_CHAT_GLM4 },
		{ "glm47", MS_CHAT_GLM47 }, { "glm4.5", MS_CHAT_GLM4 },
		{ "glm-4.6", MS_CHAT_GLM4 }, { "glm4.7", MS_CHAT_GLM47 },
		{ "chatml", MS_CHAT_NONE }, { "", MS_CHAT_NONE },
		{ "none", MS_CHAT_NONE }, { "QWEN3", MS_CHAT_NONE },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		T_CHECK(ms_chat_from_name(c[i].name) == c[i].t,
			"ms_chat_from_name(\"%s\") = %d, expected %d", c[i].name,
			(int)ms_chat_from_name(c[i].name), (int)c[i].t);
	T_CHECK(ms_chat_from_name(NULL) == MS_CHAT_NONE, "NULL name");
	for (int t = MS_CHAT_NONE + 1; t < MS_CHAT_COUNT; t++)
		T_CHECK((int)ms_chat_from_name(ms_chat_name((enum ms_chat_tmpl)t)) == t,
			"template %d: name \"%s\" does not map back", t,
			ms_chat_name((enum ms_chat_tmpl)t));
	T_CHECK(!strcmp(ms_chat_name(MS_CHAT_NONE), "none") &&
		!strcmp(ms_chat_name(MS_CHAT_COUNT), "none"), "names of none");
}

static void detect(const char *what, const char *jinja, int want_rc,
		   enum ms_chat_tmpl want, const char *in_msg)
{
	enum ms_chat_tmpl t = MS_CHAT_COUNT;
	struct ms_err err = { 0 };
	int rc = ms_chat_detect(jinja, &t, &err);
	T_CHECK(rc == want_rc && t == want, "detect %s: rc %d template %s, "
		"expected %d %s (%s)", what, rc, ms_chat_name(t), want_rc,
		ms_chat_name(want), err.msg);
	if (in_msg)
		T_CHECK(strstr(err.msg, in_msg) != NULL, "detect %s: message "
			"\"%s\" lacks \"%s\"", what, err.msg, in_msg);
}

static void test_detect(const char *qwen3)
{
	detect("Qwen3's template", qwen3, 0, MS_CHAT_QWEN3, NULL);
	detect("GLM-4.5-like", glm45_like, 0, MS_CHAT_GLM4, NULL);
	detect("GLM-4.7-like", glm47_like, 0, MS_CHAT_GLM47, NULL);
	detect("NULL", NULL, -ENOENT, MS_CHAT_NONE, "no chat template");
	detect("empty", "", -ENOENT, MS_CHAT_NONE, "no chat template");
	/* ChatML without Qwen3's thinking (Qwen2.5's shape): not ours. */
	detect("Qwen2.5-like",
	       "{%- if messages[0]['role'] == 'system' %}\n"
	       "    {{- '<|im_start|>system\\n' + messages[0]['content'] }}\n"
	       "{%- else %}{{- '<|im_start|>system\\nYou are Qwen.' }}",
	       -ENOTSUP, MS_CHAT_NONE,
	       "\"{%- if messages[0]['role'] == 'system' %}\"");
	/* The first non-blank line, trimmed and cut near 60 bytes. */
	detect("Llama-3-like",
	       "\n   {{- bos_token }}{%- if custom_tools is defined %}{%- set "
	       "tools = custom_tools %}{%- endif %}{%- if not tools_in_user_"
	       "message is defined %}\n{%- endif %}",
	       -ENOTSUP, MS_CHAT_NONE,
	       "\"{{- bos_token }}{%- if custom_tools is defined %}{%- set "
	       "too...\"");
	/* [gMASK]<sop> alone (no <|assistant|>) is not enough. */
	detect("[gMASK]<sop> only", "[gMASK]<sop>{{ prompt }}", -ENOTSUP,
	       MS_CHAT_NONE, "[gMASK]<sop>{{ prompt }}");
}

/* What the real templates render (transformers, Jinja2 with trim_blocks and
 * lstrip_blocks), where llama.cpp's built-ins differ. */
static void test_golden(void)
{
	const struct ms_chat_msg uau[] = {
		{ "user", "Hello\nthere é ✓ 日本" },
		{ "assistant", "Hi!" },
		{ "user", "Bye\n" },
	};
	const struct ms_chat_msg think_last[] = {
		{ "user", "q" },
		{ "assistant", "<think>\nhmm\n</think>\n\n  answer \n" },
	};
	const struct ms_chat_msg think_both[] = {
		{ "user", "q" },
		{ "assistant", "<think>r1</think>a1" },
		{ "user", "q2" },
		{ "assistant", "\n\n<think>\n\nr2\n\n</think>\n\na2\u3000" },
	};
	static const struct {
		enum ms_chat_tmpl t;
		int conv;
		bool gen;
		const char *want;
	} g[] = {
		{ MS_CHAT_QWEN3, 0, true,
		  "<|im_start|>user\nHello\nthere é ✓ 日本<|im_end|>\n"
		  "<|im_start|>assistant\nHi!<|im_end|>\n"
		  "<|im_start|>user\nBye\n<|im_end|>\n<|im_start|>assistant\n" },
		{ MS_CHAT_QWEN3, 1, false,
		  "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
		  "<think>\nhmm\n</think>\n\n  answer \n<|im_end|>\n" },
		{ MS_CHAT_QWEN3, 2, false,
		  "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
		  "a1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
		  "<|im_start|>assistant\n<think>\nr2\n</think>\n\n"
		  "a2\u3000<|im_end|>\n" },
		{ MS_CHAT_GLM4, 0, true,
		  "[gMASK]<sop><|user|>\nHello\nthere é ✓ 日本<|assistant|>\n"
		  "<think></think>\nHi!<|user|>\nBye\n<|assistant|>" },
		{ MS_CHAT_GLM4, 1, false,
		  "[gMASK]<sop><|user|>\nq<|assistant|>\n<think>hmm</think>\n"
		  "answer" },
		{ MS_CHAT_GLM4, 2, false,
		  "[gMASK]<sop><|user|>\nq<|assistant|>\n<think></think>\na1"
		  "<|user|>\nq2<|assistant|>\n<think>r2</think>\na2" },
		{ MS_CHAT_GLM47, 0, true,
		  "[gMASK]<sop><|user|>Hello\nthere é ✓ 日本<|assistant|>"
		  "</think>Hi!<|user|>Bye\n<|assistant|><think>" },
		{ MS_CHAT_GLM47, 1, false,
		  "[gMASK]<sop><|user|>q<|assistant|><think>hmm</think>answer" },
		{ MS_CHAT_GLM47, 2, false,
		  "[gMASK]<sop><|user|>q<|assistant|></think>a1<|user|>q2"
		  "<|assistant|><think>r2</think>a2" },
	};
	const struct ms_chat_msg *convs[] = { uau, think_last, think_both };
	const size_t lens[] = { 3, 2, 4 };
	for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
		char *o = render(g[i].t, convs[g[i].conv], lens[g[i].conv],
				 g[i].gen);
		char what[64];
		snprintf(what, sizeof(what), "%s golden %zu", ms_chat_name(g[i].t),
			 i);
		eq(what, o, g[i].want);
		free(o);
	}

	/* Tool turns and a second system turn (Qwen3), tool responses (GLM). */
	const struct ms_chat_msg tools[] = {
		{ "system", "s" }, { "user", "u" }, { "system", "s2" },
		{ "assistant", "plain" }, { "tool", "out1" }, { "tool", "out2" },
		{ "user", "<tool_response>x</tool_response>" },
		{ "assistant", "a" },
	};
	char *o = render(MS_CHAT_QWEN3, tools, 8, false);
	eq("qwen3 tools", o,
	   "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
	   "<|im_start|>system\ns2<|im_end|>\n<|im_start|>assistant\nplain"
	   "<|im_end|>\n<|im_start|>user\n<tool_response>\nout1\n"
	   "</tool_response>\n<tool_response>\nout2\n</tool_response>"
	   "<|im_end|>\n<|im_start|>user\n<tool_response>x</tool_response>"
	   "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\na"
	   "<|im_end|>\n");
	free(o);
	o = render(MS_CHAT_GLM4, tools, 8, true);
	eq("glm4 tools", o,
	   "[gMASK]<sop><|system|>\ns<|user|>\nu<|system|>\ns2<|assistant|>\n"
	   "<think></think>\nplain<|observation|>\n<tool_response>\nout1\n"
	   "</tool_response>\n<tool_response>\nout2\n</tool_response><|user|>\n"
	   "<tool_response>x</tool_response><|assistant|>\n<think></think>\na"
	   "<|assistant|>");
	free(o);
	o = render(MS_CHAT_GLM47, tools, 8, true);
	eq("glm47 tools", o,
	   "[gMASK]<sop><|system|>s<|user|>u<|system|>s2<|assistant|></think>"
	   "plain<|observation|><tool_response>out1</tool_response>"
	   "<tool_response>out2</tool_response><|user|><tool_response>x"
	   "</tool_response><|assistant|></think>a<|assistant|><think>");
	free(o);
}

static void test_errors(void)
{
	const struct ms_chat_msg ok = { "user", "x" };
	const struct ms_chat_msg bad_role = { "developer", "x" };
	const struct ms_chat_msg no_content = { "user", NULL };
	static const struct {
		enum ms_chat_tmpl t;
		int which; /* 0 ok, 1 bad role, 2 no content, 3 none */
		const char *in_msg;
	} c[] = {
		{ MS_CHAT_NONE, 0, "not one of" },
		{ MS_CHAT_COUNT, 0, "not one of" },
		{ MS_CHAT_QWEN3, 1, "role \"developer\"" },
		{ MS_CHAT_GLM4, 2, "message 0 has no content" },
		{ MS_CHAT_GLM47, 3, "no messages" },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		const struct ms_chat_msg *m = c[i].which == 1 ? &bad_role :
					      c[i].which == 2 ? &no_content : &ok;
		char *o = (char *)1;
		struct ms_err err = { 0 };
		int rc = ms_chat_render(c[i].t, m, c[i].which == 3 ? 0 : 1, true,
					&o, &err);
		T_CHECK(rc == -EINVAL && o == NULL, "error case %zu: rc %d, out "
			"%p", i, rc, (void *)o);
		T_CHECK(strstr(err.msg, c[i].in_msg) != NULL, "error case %zu: "
			"message \"%s\" lacks \"%s\"", i, err.msg, c[i].in_msg);
	}
}

/* The conversations compared with llama.cpp: plain contents (nothing for
 * the templates to strip), newlines and Unicode. */
static const struct ms_chat_msg conv_su[] = {
	{ "system", "You are a helpful assistant.\nBe brief." },
	{ "user", "Hello! ¿Qué tal? 你好 🙂" },
};
static const struct ms_chat_msg conv_u[] = { { "user", "2+2=?" } };
static const struct ms_chat_msg conv_uau[] = {
	{ "user", "Line one\nline two\n\nline four" },
	{ "assistant", "Noted: four lines.\nÜberhaupt." },
	{ "user", "And then?" },
};
static const struct ms_chat_msg conv_ua[] = {
	{ "user", "Say hi" },
	{ "assistant", "Hi — there." },
};
static const struct {
	const char *name;
	const struct ms_chat_msg *m;
	size_t n;
} convs[] = {
	{ "system+user", conv_su, 2 },
	{ "user", conv_u, 1 },
	{ "user/assistant/user", conv_uau, 3 },
	{ "user/assistant", conv_ua, 2 },
};

static void test_vs_llama_qwen3(const char *qwen3)
{
	/* llama.cpp takes Qwen3's template for ChatML. */
	char *a = llama(qwen3, conv_su, 2, true), *b = llama("chatml", conv_su, 2,
							       true);
	eq("llama.cpp: Qwen3's template is chatml", a, b);
	free(a);
	free(b);
	for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
		for (int gen = 0; gen < 2; gen++) {
			const struct ms_chat_msg *m = convs[i].m;
			size_t n = convs[i].n;
			char *ours = render(MS_CHAT_QWEN3, m, n, gen), *want;
			if (!strcmp(m[n - 1].role, "assistant")) {
				/* The real template: the assistant turn after
				 * the last user turn gets an empty think block;
				 * llama.cpp's ChatML copies the content. */
				char *head = llama(qwen3, m, n - 1, true);
				char *t = cat(head, "<think>\n\n</think>\n\n");
				char *t2 = cat(t, m[n - 1].content);
				want = cat(t2, gen ? "<|im_end|>\n<|im_start|>"
						     "assistant\n"
						   : "<|im_end|>\n");
				free(head);
				free(t);
				free(t2);
			} else {
				want = llama(qwen3, m, n, gen);
			}
			char what[96];
			snprintf(what, sizeof(what), "qwen3 vs llama.cpp, %s, %s",
				 convs[i].name, gen ? "generation prompt" : "none");
			eq(what, ours, want);
			free(ours);
			free(want);
		}
}

/* From llama.cpp's chatglm4 rendering to the real GLM-4.5 one: assistant
 * turns gain "<think></think>\n", the generation prompt loses its "\n". */
static char *glm4_from_llama(const char *l, bool gen)
{
	size_t n = strlen(l);
	char *o;
	if (gen && n >= 14 && !strcmp(l + n - 14, "<|assistant|>\n")) {
		char *head = strndup(l, n - 1);
		if (!head)
			t_fatal("out of memory");
		/* The prompt (now without its "\n") is left alone. */
		o = replace(head, "<|assistant|>\n", "<|assistant|>\n<think></think>\n");
		free(head);
	} else {
		T_CHECK(!gen, "llama.cpp's chatglm4 prompt lacks the generation "
			"prompt: %s", l);
		o = replace(l, "<|assistant|>\n", "<|assistant|>\n<think></think>\n");
	}
	return o;
}

/* From the real GLM-4.5 rendering to GLM-4.7's: no newline after the role
 * tags, "</think>" for the empty think block, and "<think>" opened in the
 * generation prompt. For contents that hold no role tag. */
static char *glm47_from_glm4(const char *g, bool gen)
{
	char *a = replace(g, "<|user|>\n", "<|user|>");
	char *b = replace(a, "<|system|>\n", "<|system|>");
	char *c = replace(b, "<|assistant|>\n<think></think>\n",
			  "<|assistant|></think>");
	char *o = gen ? cat(c, "<think>") : strdup(c);
	free(a);
	free(b);
	free(c);
	return o;
}

static void test_vs_llama_glm(void)
{
	/* llama.cpp takes a GLM-shaped template for chatglm4. */
	for (int k = 0; k < 2; k++) {
		const char *j = k ? glm47_like : glm45_like;
		char *a = llama(j, conv_uau, 3, true),
		     *b = llama("chatglm4", conv_uau, 3, true);
		eq(k ? "llama.cpp: the GLM-4.7-like template is chatglm4"
		     : "llama.cpp: the GLM-4.5-like template is chatglm4", a, b);
		free(a);
		free(b);
	}
	for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
		for (int gen = 0; gen < 2; gen++) {
			const struct ms_chat_msg *m = convs[i].m;
			size_t n = convs[i].n;
			char *l = llama(glm45_like, m, n, gen);
			char *want = glm4_from_llama(l, gen);
			char *want47 = glm47_from_glm4(want, gen);
			char *ours = render(MS_CHAT_GLM4, m, n, gen);
			char *ours47 = render(MS_CHAT_GLM47, m, n, gen);
			char what[96];
			snprintf(what, sizeof(what), "glm4 vs llama.cpp, %s, %s",
				 convs[i].name, gen ? "generation prompt" : "none");
			eq(what, ours, want);
			snprintf(what, sizeof(what), "glm47 vs llama.cpp, %s, %s",
				 convs[i].name, gen ? "generation prompt" : "none");
			eq(what, ours47, want47);
			free(l);
			free(want);
			free(want47);
			free(ours);
			free(ours47);
		}
}

int main(void)
{
	char *qwen3 = qwen3_jinja();
	if (!getenv("MS_LLAMA_DIR"))
		t_fatal("MS_LLAMA_DIR is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	test_names();
	test_detect(qwen3);
	test_golden();
	test_errors();
	test_vs_llama_qwen3(qwen3);
	test_vs_llama_glm();
	free(qwen3);
	return t_done();
}
