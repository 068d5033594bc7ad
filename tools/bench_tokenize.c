/*
 * bench_tokenize.c - `moestream bench tokenize MODEL [-f FILE]`: our
 * tokenizer's tokens/s against llama.cpp's on the same text, same file, same
 * process, as a ratio.
 *
 * llama.cpp is the pinned npm package's libllama (tools/llama_ref.c, loaded
 * by dlopen with the vocabulary only; tests/fetch-ggml.sh fetches it, or
 * --llama-dir). The text is FILE as one string (a long prompt), or by default
 * the seeded corpus of t_tokenize_ref (tools/tok_corpus.c: prose in many
 * scripts, code, numbers, emoji, invalid UTF-8, ...) one string at a time
 * (many short prompts). Both sides tokenize with special tokens added and
 * parsed. The two are timed in alternation, REPEAT rounds each, and the best
 * round of each counts (the machine is shared; the best is what the code
 * does). The ids are compared too: a benchmark of two tokenizers that
 * disagree would mean nothing, so any difference is reported and fails it.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "llama_ref.h"
#include "moestream/engine.h"
#include "tok_corpus.h"
#include "tools.h"

#define CMD "bench tokenize"

static const char usage_line[] =
	"usage: moestream bench tokenize MODEL [-f FILE] [--strings N] "
	"[--repeat N] [--json] [--llama-dir DIR]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Tokenizes the same text with moestream's tokenizer and with "
		"llama.cpp's\n(libllama from the pinned npm package, loaded by "
		"dlopen: vocabulary only) on\nMODEL, in alternation, and prints "
		"each one's tokens/s and the ratio (ours over\nllama.cpp's; above "
		"1.0 is faster). The ids must agree.\n"
		"\noptions:\n"
		"  -f, --file FILE   tokenize FILE as one text (default: the "
		"seeded test corpus,\n"
		"                    one string at a time)\n"
		"  --strings N       corpus size (default 5000)\n"
		"  --repeat N        rounds of each (default 5; the best counts)\n"
		"  --json            one JSON object\n"
		"  --llama-dir DIR   llama.cpp's libraries (default $MS_LLAMA_DIR, "
		"else the\n"
		"                    cache tests/fetch-ggml.sh fills)\n"
		"example:\n"
		"  moestream mkmodel --preset tiny --sparse --tokenizer "
		"qwen3/tokenizer.json -o q.gguf\n"
		"  moestream bench tokenize q.gguf\n"
		"exit codes: 0 ok, 1 failed (no llama.cpp, no tokenizer, ids "
		"differ), 2 bad usage\n",
		usage_line);
}

struct side {
	double best_s;
	size_t tokens;
};

static int run_ours(const struct ms_vocab *v, const struct tok_corpus *c,
		    struct ms_tokens *t, size_t *tokens)
{
	struct ms_err err = { 0 };
	size_t n = 0;
	for (size_t i = 0; i < c->n; i++) {
		if (ms_tokenize(v, c->s[i], c->len[i],
				MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL, t,
				&err)) {
			tool_error(CMD, "%s", err.msg);
			return -1;
		}
		n += t->n;
	}
	*tokens = n;
	return 0;
}

static int run_llama(struct ms_llref *r, const struct tok_corpus *c,
		     size_t *tokens)
{
	struct ms_err err = { 0 };
	size_t n = 0;
	for (size_t i = 0; i < c->n; i++) {
		int32_t *ids;
		size_t k;
		if (ms_llref_tokenize(r, c->s[i], c->len[i], true, true, &ids, &k,
				      &err)) {
			tool_error(CMD, "llama.cpp: %s", err.msg);
			return -1;
		}
		free(ids);
		n += k;
	}
	*tokens = n;
	return 0;
}

/* Same ids for every string, before anything is timed. */
static size_t differences(const struct ms_vocab *v, struct ms_llref *r,
			  const struct tok_corpus *c, struct ms_tokens *t)
{
	size_t bad = 0;
	struct ms_err err = { 0 };
	for (size_t i = 0; i < c->n; i++) {
		int32_t *ids = NULL;
		size_t k = 0;
		if (ms_llref_tokenize(r, c->s[i], c->len[i], true, true, &ids, &k,
				      &err) ||
		    ms_tokenize(v, c->s[i], c->len[i],
				MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL, t,
				&err) ||
		    k != t->n || (k && memcmp(ids, t->ids, k * sizeof(*ids))))
			bad++;
		free(ids);
	}
	return bad;
}

int bench_tokenize_main(int argc, char **argv)
{
	enum { O_STRINGS = 256, O_REPEAT, O_JSON, O_LLAMA };
	static const struct option opts[] = {
		{ "file", required_argument, 0, 'f' },
		{ "strings", required_argument, 0, O_STRINGS },
		{ "repeat", required_argument, 0, O_REPEAT },
		{ "json", no_argument, 0, O_JSON },
		{ "llama-dir", required_argument, 0, O_LLAMA },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *file = NULL, *llama_dir = NULL;
	uint32_t n_strings = 5000, repeat = 5;
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case O_STRINGS:
			if (tool_parse_u32(CMD, "--strings", optarg, &n_strings))
				return EXIT_USAGE;
			break;
		case O_REPEAT:
			if (tool_parse_u32(CMD, "--repeat", optarg, &repeat))
				return EXIT_USAGE;
			break;
		case O_JSON: json = true; break;
		case O_LLAMA: llama_dir = optarg; break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	const char *model = tool_one_model(CMD, argc, argv, optind);
	if (!model)
		return tool_bad_usage(usage_line);
	if (!repeat || !n_strings) {
		tool_error(CMD, "--repeat and --strings must be at least 1");
		return EXIT_USAGE;
	}

	struct tok_corpus corpus = { 0 };
	const char *what;
	char whatbuf[256];
	if (file) {
		char *buf;
		size_t n;
		if (tool_read_input(CMD, file, 256u << 20, &buf, &n))
			return 1;
		corpus.s = malloc(sizeof(*corpus.s));
		corpus.len = malloc(sizeof(*corpus.len));
		corpus.kind = calloc(1, 1);
		corpus.s[0] = buf;
		corpus.len[0] = n;
		corpus.n = 1;
		snprintf(whatbuf, sizeof(whatbuf), "%s (%zu bytes, one text)", file, n);
		what = whatbuf;
		if (tok_corpus_llama_aborts(buf, n)) {
			tool_error(CMD, "%s holds a 4-byte UTF-8 form past U+10FFFF, "
				   "on which llama.cpp aborts the process: it cannot "
				   "be the baseline for this text", file);
			tok_corpus_free(&corpus);
			return 1;
		}
	} else {
		if (tok_corpus_make(&corpus, n_strings, 1)) {
			tool_error(CMD, "out of memory for the corpus");
			return 1;
		}
		/* strings llama.cpp would abort on are left out of both sides */
		size_t k = 0, bytes = 0;
		for (size_t i = 0; i < corpus.n; i++) {
			if (tok_corpus_llama_aborts(corpus.s[i], corpus.len[i])) {
				free(corpus.s[i]);
				continue;
			}
			corpus.s[k] = corpus.s[i];
			corpus.len[k] = corpus.len[i];
			bytes += corpus.len[k++];
		}
		snprintf(whatbuf, sizeof(whatbuf), "the test corpus (%zu of %zu "
			 "strings, %zu bytes; seed 1)", k, corpus.n, bytes);
		corpus.n = k;
		what = whatbuf;
	}

	struct ms_gguf *g;
	struct ms_vocab *v;
	if (tool_load_vocab(CMD, model, &g, &v)) {
		tok_corpus_free(&corpus);
		return 1;
	}
	struct ms_err err = { 0 };
	struct ms_llref *ref;
	if (ms_llref_open_vocab(&ref, llama_dir, model, &err)) {
		tool_error(CMD, "llama.cpp: %s", err.msg);
		ms_vocab_free(v);
		ms_gguf_free(g);
		tok_corpus_free(&corpus);
		return 1;
	}
	struct ms_tokens t = { 0 };
	int rc = 0;
	size_t diff = differences(v, ref, &corpus, &t);
	struct side ours = { .best_s = 1e30 }, llama = { .best_s = 1e30 };
	for (uint32_t r = 0; r < repeat && !rc && !diff; r++) {
		double t0 = tool_now_s();
		rc = run_ours(v, &corpus, &t, &ours.tokens);
		double t1 = tool_now_s();
		if (!rc)
			rc = run_llama(ref, &corpus, &llama.tokens);
		double t2 = tool_now_s();
		if (t1 - t0 < ours.best_s)
			ours.best_s = t1 - t0;
		if (t2 - t1 < llama.best_s)
			llama.best_s = t2 - t1;
	}
	if (!rc && diff) {
		tool_error(CMD, "the ids differ from llama.cpp's on %zu of %zu "
			   "strings; nothing was timed (t_tokenize_ref shows the "
			   "strings)", diff, corpus.n);
		rc = -1;
	}
	if (!rc) {
		double o = (double)ours.tokens / ours.best_s;
		double l = (double)llama.tokens / llama.best_s;
		if (json) {
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "model", model);
			cJSON_AddStringToObject(j, "text", what);
			cJSON_AddStringToObject(j, "pre", ms_pre_name(ms_vocab_pre(v)));
			cJSON_AddNumberToObject(j, "tokens", (double)ours.tokens);
			cJSON_AddNumberToObject(j, "repeat", repeat);
			cJSON_AddNumberToObject(j, "tokps_ours", o);
			cJSON_AddNumberToObject(j, "tokps_llamacpp", l);
			cJSON_AddNumberToObject(j, "ratio", o / l);
			char *s = cJSON_Print(j);
			printf("%s\n", s);
			free(s);
			cJSON_Delete(j);
		} else {
			char a[32];
			printf("text        %s\n", what);
			printf("tokenizer   %s, %u tokens, %u merges; ids equal to "
			       "llama.cpp's on every string\n",
			       ms_pre_name(ms_vocab_pre(v)), ms_vocab_n_tokens(v),
			       ms_vocab_n_merges(v));
			printf("tokens      %s per round, best of %u rounds each\n",
			       fmt_count(ours.tokens, a, sizeof(a)), repeat);
			printf("moestream   %12.0f tok/s  (%.3f s)\n", o, ours.best_s);
			printf("llama.cpp   %12.0f tok/s  (%.3f s)\n", l, llama.best_s);
			printf("ratio       %.2f x llama.cpp\n", o / l);
		}
	}
	ms_tokens_free(&t);
	ms_llref_close(ref);
	ms_vocab_free(v);
	ms_gguf_free(g);
	tok_corpus_free(&corpus);
	return rc ? 1 : 0;
}
