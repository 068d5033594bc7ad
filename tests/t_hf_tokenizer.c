/*
 * t_hf_tokenizer - `moestream mkmodel --tokenizer tokenizer.json` writes the
 * vocabulary as llama.cpp's converter does, and refuses hostile files with
 * one clear error.
 *
 *  - The three real tokenizers ($MS_TOKENIZERS/{qwen3,deepseek_v3,gptoss},
 *    fetched by tests/fetch-ggml.sh; missing is a failure that says why):
 *    pre recognised (qwen2, deepseek-v3, gpt-4o), the token count (max id +
 *    1), the merge count, the types of the added tokens, bos/eos/pad ids,
 *    add_bos_token/add_eos_token, the chat template, and the embedding and
 *    output tensors of the tokenizer's size. Metadata only (--sparse).
 *  - --tokenizer-pre overrides (glm4), merges as ["a","b"] pairs.
 *  - Hostile tokenizer.json / tokenizer_config.json, one class each:
 *    truncated, empty, not an object, wrong types, merges naming unknown
 *    tokens, duplicate tokens, duplicate ids, ids out of range (negative,
 *    fractional, 1e12), a token over 64 KiB, an unknown pre-tokenizer, a
 *    bos/eos that is not a token, and a sparse 2 GB file: exit 1 with one
 *    line on stderr naming the field, never a crash.
 *  - Without --tokenizer: the built-in byte-level vocabulary, with merges.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../tools/tools.h"
#include "moestream/model.h"
#include "testutil.h"

static const char *tmp;

static int mk(const char *args, char **err)
{
	char *out = NULL;
	int rc = t_call_main(cmd_mkmodel, "mkmodel", args, tmp, NULL, false, &out,
			     err);
	free(out);
	return rc;
}

/* The tokenizer NAME fetched by tests/fetch-ggml.sh, or exit 1 saying why. */
static const char *tokenizer(const char *name)
{
	static char p[3][1024];
	static int k;
	const char *root = getenv("MS_TOKENIZERS");
	if (!root || !*root)
		t_fatal("MS_TOKENIZERS is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	char *s = p[k++ % 3];
	snprintf(s, 1024, "%s/%s/tokenizer.json", root, name);
	if (access(s, R_OK)) {
		char fp[1100];
		snprintf(fp, sizeof(fp), "%s/%s/FETCH_FAILED", root, name);
		char *why = t_read_text(fp);
		t_fatal("%s is missing: %s", s,
			why ? why : "no fetch error recorded; run tests/fetch-ggml.sh");
	}
	return s;
}

struct want {
	const char *name, *pre;
	uint64_t n_tokens, n_merges, n_control, n_user;
	int64_t bos, eos, pad;
	int add_bos, add_eos;
	bool chat_template;
	uint32_t probe_id;
	const char *probe_text;
	int32_t probe_type;
};

static int64_t get_id(struct ms_gguf *g, const char *key)
{
	uint64_t v;
	return ms_gguf_get_u64(g, key, &v, NULL) ? -1 : (int64_t)v;
}

static int get_flag(struct ms_gguf *g, const char *key)
{
	bool b;
	return ms_gguf_get_bool(g, key, &b, NULL) ? -1 : b;
}

static void check_real(const struct want *w)
{
	char args[2048], out[1100];
	char *err = NULL;
	snprintf(out, sizeof(out), "%s/%s.gguf", tmp, w->name);
	snprintf(args, sizeof(args), "--preset tiny --sparse --tokenizer %s -o %s",
		 tokenizer(w->name), out);
	int rc = mk(args, &err);
	T_CHECK(rc == 0, "%s: mkmodel exit %d: %s", w->name, rc, err ? err : "");
	free(err);
	if (rc)
		return;
	struct ms_gguf *g;
	struct ms_err e = { 0 };
	if (ms_gguf_open(&g, out, &e)) {
		T_CHECK(0, "%s: our reader refuses it: %s", w->name, e.msg);
		return;
	}
	const char *s = NULL;
	T_CHECK(!ms_gguf_get_str(g, "tokenizer.ggml.model", &s, NULL) &&
		!strcmp(s, "gpt2"), "%s: model '%s'", w->name, s ? s : "(none)");
	s = NULL;
	T_CHECK(!ms_gguf_get_str(g, "tokenizer.ggml.pre", &s, NULL) &&
		!strcmp(s, w->pre), "%s: pre '%s', expected '%s'", w->name,
		s ? s : "(none)", w->pre);
	struct ms_gguf_strs tok = { 0 }, mg = { 0 };
	T_CHECK(!ms_gguf_get_strs(g, "tokenizer.ggml.tokens", &tok, &e),
		"%s: tokens: %s", w->name, e.msg);
	T_CHECK(!ms_gguf_get_strs(g, "tokenizer.ggml.merges", &mg, &e),
		"%s: merges: %s", w->name, e.msg);
	T_EQ_U64(tok.n, w->n_tokens);
	T_EQ_U64(mg.n, w->n_merges);
	int64_t ti = ms_gguf_find_key(g, "tokenizer.ggml.token_type");
	T_CHECK(ti >= 0 && g->kv[ti].arr_type == MS_GGUF_I32 &&
		g->kv[ti].arr_n == w->n_tokens && g->kv[ti].arr_data,
		"%s: token_type missing or not i32[%llu]", w->name,
		(unsigned long long)w->n_tokens);
	if (ti >= 0 && g->kv[ti].arr_data && g->kv[ti].arr_n == w->n_tokens) {
		const int32_t *ty = g->kv[ti].arr_data;
		uint64_t n[7] = { 0 };
		for (uint64_t i = 0; i < w->n_tokens; i++)
			n[ty[i] >= 0 && ty[i] < 7 ? ty[i] : 0]++;
		T_EQ_U64(n[3], w->n_control);
		T_EQ_U64(n[4], w->n_user);
		T_EQ_U64(n[1], w->n_tokens - w->n_control - w->n_user);
		if (w->probe_id < tok.n) {
			T_CHECK(!strcmp(tok.str[w->probe_id], w->probe_text) &&
				ty[w->probe_id] == w->probe_type,
				"%s: token %u is '%s' type %d, expected '%s' type %d",
				w->name, w->probe_id, tok.str[w->probe_id],
				ty[w->probe_id], w->probe_text, w->probe_type);
		}
	}
	if (mg.n)
		T_CHECK(strchr(mg.str[0] + 1, ' ') != NULL, "%s: merge 0 '%s'",
			w->name, mg.str[0]);
	T_CHECK(get_id(g, "tokenizer.ggml.bos_token_id") == w->bos,
		"%s: bos %lld, expected %lld", w->name,
		(long long)get_id(g, "tokenizer.ggml.bos_token_id"), (long long)w->bos);
	T_CHECK(get_id(g, "tokenizer.ggml.eos_token_id") == w->eos,
		"%s: eos %lld, expected %lld", w->name,
		(long long)get_id(g, "tokenizer.ggml.eos_token_id"), (long long)w->eos);
	T_CHECK(get_id(g, "tokenizer.ggml.padding_token_id") == w->pad,
		"%s: pad %lld, expected %lld", w->name,
		(long long)get_id(g, "tokenizer.ggml.padding_token_id"),
		(long long)w->pad);
	T_CHECK(get_flag(g, "tokenizer.ggml.add_bos_token") == w->add_bos,
		"%s: add_bos_token %d, expected %d", w->name,
		get_flag(g, "tokenizer.ggml.add_bos_token"), w->add_bos);
	T_CHECK(get_flag(g, "tokenizer.ggml.add_eos_token") == w->add_eos,
		"%s: add_eos_token %d, expected %d", w->name,
		get_flag(g, "tokenizer.ggml.add_eos_token"), w->add_eos);
	T_CHECK((ms_gguf_find_key(g, "tokenizer.chat_template") >= 0) ==
			w->chat_template,
		"%s: chat_template %s", w->name,
		w->chat_template ? "missing" : "written but there is none");
	static const char *const vt[] = { "token_embd.weight", "output.weight" };
	for (int i = 0; i < 2; i++) {
		int64_t t = ms_gguf_find_tensor(g, vt[i]);
		T_CHECK(t >= 0 && (uint64_t)g->tensors[t].ne[1] == w->n_tokens,
			"%s: %s has %lld rows, expected %llu", w->name, vt[i],
			t >= 0 ? (long long)g->tensors[t].ne[1] : -1LL,
			(unsigned long long)w->n_tokens);
	}
	ms_gguf_strs_free(&tok);
	ms_gguf_strs_free(&mg);
	ms_gguf_free(g);
	unlink(out);
}

/* ---- hostile files -------------------------------------------------------- */

#define QWEN2_RE                                                               \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"    \
	"\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|"     \
	"\\\\s+(?!\\\\S)|\\\\s+"
#define PRE_OK                                                                 \
	"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","          \
	"\"pattern\":{\"Regex\":\"" QWEN2_RE "\"},\"behavior\":\"Isolated\"},"   \
	"{\"type\":\"ByteLevel\",\"use_regex\":false}]}"
#define VOCAB_OK "{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3}"
#define ADDED_OK "[{\"id\":4,\"content\":\"<|end|>\",\"special\":true}]"

/* A tokenizer.json of the parts given (NULL: the valid default). */
static char *doc(const char *vocab, const char *merges, const char *added,
		 const char *pre)
{
	char *s;
	if (asprintf(&s,
		     "{\"added_tokens\":%s,\"pre_tokenizer\":%s,\"model\":{\"type\":"
		     "\"BPE\",\"vocab\":%s,\"merges\":%s}}",
		     added ? added : ADDED_OK, pre ? pre : PRE_OK,
		     vocab ? vocab : VOCAB_OK, merges ? merges : "[\"a b\"]") < 0)
		t_fatal("out of memory");
	return s;
}

/* Writes DIR/case-N/tokenizer.json (and tokenizer_config.json when cfg) and
 * runs mkmodel on it: expects exit 0 (want NULL) or exit 1 with one stderr
 * line holding `want`. */
static void hostile(const char *what, const char *json, size_t len,
		    const char *cfg, const char *want, const char *extra)
{
	static int n;
	char dir[1024], p[1100], args[2400];
	snprintf(dir, sizeof(dir), "%s/case-%d", tmp, n++);
	if (mkdir(dir, 0755))
		t_fatal("mkdir %s: %s", dir, strerror(errno));
	snprintf(p, sizeof(p), "%s/tokenizer.json", dir);
	if (json && t_write_file(p, json, len))
		t_fatal("writing %s", p);
	if (cfg) {
		char c[1100];
		snprintf(c, sizeof(c), "%s/tokenizer_config.json", dir);
		if (t_write_file(c, cfg, strlen(cfg)))
			t_fatal("writing %s", c);
	}
	snprintf(args, sizeof(args), "--preset tiny --sparse --force %s "
		 "--tokenizer %s -o %s/m.gguf", extra ? extra : "", p, dir);
	char *err = NULL;
	int rc = mk(args, &err);
	const char *e = err ? err : "";
	size_t lines = 0;
	for (const char *c = e; *c; c++)
		lines += *c == '\n';
	if (!want) {
		T_CHECK(rc == 0, "%s: exit %d, expected 0: %s", what, rc, e);
	} else {
		T_CHECK(rc == 1 && lines == 1 && strstr(e, want),
			"%s: exit %d with %zu stderr lines '%s', expected exit 1 and "
			"one line with '%s'", what, rc, lines, e, want);
		printf("  %-34s -> %s", what, e);
	}
	free(err);
}

static void hostile_all(void)
{
	char *ok = doc(NULL, NULL, NULL, NULL);
	hostile("valid", ok, strlen(ok), NULL, NULL, NULL);
	hostile("valid, --tokenizer-pre glm4", ok, strlen(ok), NULL, NULL,
		"--tokenizer-pre glm4");
	hostile("truncated", ok, strlen(ok) / 2, NULL, "not valid JSON", NULL);
	hostile("empty file", ok, 0, NULL, "not valid JSON", NULL);
	hostile("top level an array", "[1,2]", 5, NULL, "top level is an array",
		NULL);
	free(ok);

	static const struct {
		const char *what, *vocab, *merges, *added, *pre, *want;
	} c[] = {
		{ "model.vocab an array", "[\"a\",\"b\"]", 0, 0, 0,
		  "model.vocab is an array" },
		{ "model.vocab id a string", "{\"a\":\"0\"}", 0, 0, 0,
		  "model.vocab['a'] is a string" },
		{ "id negative", "{\"a\":-1,\"b\":1}", 0, 0, 0,
		  "model.vocab['a'] is out of range" },
		{ "id fractional", "{\"a\":0.5,\"b\":1}", 0, 0, 0,
		  "model.vocab['a'] is out of range" },
		{ "id absurd", "{\"a\":0,\"b\":1e12}", 0, 0, 0,
		  "model.vocab['b'] is out of range" },
		{ "duplicate token", "{\"a\":0,\"b\":1,\"ab\":2,\"a\":3}", 0, 0, 0,
		  "token 'a' appears twice" },
		{ "duplicate id", "{\"a\":0,\"b\":1,\"ab\":1}", 0, 0, 0,
		  "id 1 is given to both" },
		{ "merges naming unknown token", 0, "[\"a b\",\"a zz\"]", 0, 0,
		  "model.merges[1]: 'zz' is not a token" },
		{ "merge a number", 0, "[\"a b\",7]", 0, 0,
		  "model.merges[1] is a number" },
		{ "merge without space", 0, "[\"ab\"]", 0, 0,
		  "model.merges[0] 'ab' is not two tokens" },
		{ "merges as pairs", 0, "[[\"a\",\"b\"]]", 0, 0, NULL },
		{ "merge pair of unknown", 0, "[[\"a\",\"q\"]]", 0, 0,
		  "model.merges[0]: 'q' is not a token" },
		{ "merges missing", 0, "null", 0, 0, "model.merges is null" },
		{ "added content a number", 0, 0, "[{\"id\":4,\"content\":5}]", 0,
		  "added_tokens[0].content is a number" },
		{ "added id absurd", 0, 0,
		  "[{\"id\":4e9,\"content\":\"<x>\"}]", 0,
		  "added_tokens[0].id is out of range" },
		{ "added id clashes", 0, 0,
		  "[{\"id\":0,\"content\":\"<x>\"}]", 0,
		  "added_tokens[0]: id 0 is '<x>' here but 'a' already" },
		{ "added duplicate text", 0, 0,
		  "[{\"id\":9,\"content\":\"ab\"}]", 0,
		  "token 'ab' (id 9) is already id 2" },
		{ "unknown pre-tokenizer type", 0, 0, 0,
		  "{\"type\":\"Metaspace\"}", "unknown pre-tokenizer type 'Metaspace'" },
		{ "unknown Split regex", 0, 0, 0,
		  "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+\"}}",
		  "unknown pre-tokenizer (Split regex" },
		{ "pre_tokenizer missing", 0, 0, 0, "null",
		  "pre_tokenizer is null" },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		char *d = doc(c[i].vocab, c[i].merges, c[i].added, c[i].pre);
		hostile(c[i].what, d, strlen(d), NULL, c[i].want, NULL);
		free(d);
	}
	const char *m = "{\"model\":\"BPE\"}";
	hostile("model a string", m, strlen(m), NULL, "model is a string", NULL);
	m = "{\"model\":{\"type\":\"Unigram\",\"vocab\":{}}}";
	hostile("model.type Unigram", m, strlen(m), NULL, "model.type is 'Unigram'",
		NULL);

	/* A token of 70,000 bytes. */
	size_t big = 70000;
	char *t = malloc(big + 64);
	if (!t)
		t_fatal("out of memory");
	strcpy(t, "{\"a\":0,\"b\":1,\"ab\":2,\"");
	size_t o = strlen(t);
	memset(t + o, 'x', big);
	strcpy(t + o + big, "\":3}");
	char *d = doc(t, NULL, NULL, NULL);
	hostile("token of 70,000 bytes", d, strlen(d), NULL, "is 70000 bytes, over",
		NULL);
	free(d);
	free(t);

	/* tokenizer_config.json */
	d = doc(NULL, NULL, NULL, NULL);
	hostile("config: bos/eos/pad as in the wild", d, strlen(d),
		"{\"bos_token\":null,\"eos_token\":{\"content\":\"<|end|>\"},"
		"\"pad_token\":\"a\",\"add_bos_token\":false,\"chat_template\":\"x\"}",
		NULL, NULL);
	hostile("config: eos not a token", d, strlen(d),
		"{\"eos_token\":\"<|nope|>\"}", "eos_token '<|nope|>' is not a token",
		NULL);
	hostile("config: bos a number", d, strlen(d), "{\"bos_token\":5}",
		"bos_token is a number", NULL);
	hostile("config: add_bos_token a string", d, strlen(d),
		"{\"add_bos_token\":\"yes\"}", "add_bos_token is a string", NULL);
	hostile("config: truncated", d, strlen(d), "{\"eos_token\":",
		"tokenizer_config.json: not valid JSON", NULL);
	hostile("config: add_bos without bos", d, strlen(d),
		"{\"add_bos_token\":true}", "no bos_token", NULL);
	free(d);

	/* A sparse 2 GB tokenizer.json: refused by its size, never read. */
	char dir[1024], p[1100], args[2400];
	snprintf(dir, sizeof(dir), "%s/sparse", tmp);
	mkdir(dir, 0755);
	snprintf(p, sizeof(p), "%s/tokenizer.json", dir);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, 2ll << 30))
		t_fatal("cannot make a sparse 2 GB file %s: %s", p, strerror(errno));
	close(fd);
	snprintf(args, sizeof(args), "--preset tiny --sparse --tokenizer %s -o "
		 "%s/m.gguf", p, dir);
	char *err = NULL;
	int rc = mk(args, &err);
	T_CHECK(rc == 1 && err && strstr(err, "over the 512 MiB"),
		"sparse 2 GB file: exit %d, '%s'", rc, err ? err : "");
	printf("  %-34s -> %s", "sparse 2 GB file", err ? err : "\n");
	free(err);
	unlink(p);

	/* Usage errors. */
	rc = mk("--preset tiny -o x.gguf --tokenizer-pre nope --tokenizer x", NULL);
	T_CHECK(rc == EXIT_USAGE, "--tokenizer-pre nope: exit %d, expected 2", rc);
	rc = mk("--preset tiny -o x.gguf --tokenizer-pre qwen2", NULL);
	T_CHECK(rc == EXIT_USAGE, "--tokenizer-pre alone: exit %d, expected 2", rc);
	rc = mk("--preset tiny -o x.gguf --vocab 300 --tokenizer x", NULL);
	T_CHECK(rc == EXIT_USAGE, "--vocab with --tokenizer: exit %d, expected 2",
		rc);
}

/* The built-in vocabulary: byte tokens, merges, an eos. */
static void builtin(void)
{
	char args[1200], out[1100];
	snprintf(out, sizeof(out), "%s/builtin.gguf", tmp);
	snprintf(args, sizeof(args), "--preset tiny --sparse -o %s", out);
	char *err = NULL;
	int rc = mk(args, &err);
	T_CHECK(rc == 0, "built-in: exit %d: %s", rc, err ? err : "");
	free(err);
	struct ms_gguf *g;
	struct ms_err e = { 0 };
	if (rc || ms_gguf_open(&g, out, &e)) {
		T_CHECK(0, "built-in: %s", e.msg);
		return;
	}
	struct ms_gguf_strs tok = { 0 }, mg = { 0 };
	const char *pre = NULL;
	T_CHECK(!ms_gguf_get_strs(g, "tokenizer.ggml.tokens", &tok, NULL) &&
		tok.n == 512, "built-in: %llu tokens, expected 512",
		(unsigned long long)tok.n);
	T_CHECK(!ms_gguf_get_strs(g, "tokenizer.ggml.merges", &mg, NULL) &&
		mg.n == 8, "built-in: %llu merges, expected 8",
		(unsigned long long)mg.n);
	T_CHECK(!ms_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL) &&
		!strcmp(pre, "qwen2"), "built-in: pre '%s'", pre ? pre : "(none)");
	if (tok.n == 512) {
		T_CHECK(!strcmp(tok.str[32], "\xc4\xa0") && !strcmp(tok.str[65], "A") &&
			!strcmp(tok.str[10], "\xc4\x8a") &&
			!strcmp(tok.str[511], "<|endoftext|>") &&
			!strcmp(tok.str[300], "<t300>"),
			"built-in: tokens 32 '%s' 65 '%s' 10 '%s' 511 '%s' 300 '%s'",
			tok.str[32], tok.str[65], tok.str[10], tok.str[511],
			tok.str[300]);
	}
	T_CHECK(get_id(g, "tokenizer.ggml.eos_token_id") == 511,
		"built-in: eos %lld", (long long)get_id(g, "tokenizer.ggml.eos_token_id"));
	ms_gguf_strs_free(&tok);
	ms_gguf_strs_free(&mg);
	ms_gguf_free(g);
	unlink(out);
}

int main(void)
{
	tmp = t_tmpdir();
	static const struct want w[] = {
		{ "qwen3", "qwen2", 151669, 151387, 20, 6, -1, 151645, 151643, 0, -1,
		  true, 151667, "<think>", 4 },
		{ "deepseek_v3", "deepseek-v3", 128815, 127741, 818, 0, 0, 1, 1, 1, 0,
		  true, 0, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence"
		  "\xef\xbd\x9c>", 3 },
		{ "gptoss", "gpt-4o", 200019, 446189, 21, 0, 199998, 200002, 199999,
		  -1, -1, false, 199999, "<|endoftext|>", 3 },
	};
	for (size_t i = 0; i < 3; i++)
		check_real(&w[i]);
	builtin();
	hostile_all();
	return t_done();
}
