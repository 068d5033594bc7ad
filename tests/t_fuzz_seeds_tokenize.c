/*
 * t_fuzz_seeds_tokenize.c - the tokenizer's fuzz corpus as regression tests
 * (what t_fuzz_seeds.c is for the GGUF corpus).
 *
 * Every file in tests/fuzz/corpus/tokenize goes through the entry of
 * tests/fuzz/fuzz_tokenize.c (included below, with its checks: ids inside
 * the vocabulary, detokenize(tokenize(s)) == s for valid UTF-8 and == s as
 * llama.cpp decodes it otherwise; a broken promise aborts, which fails this
 * test), then a few hundred deterministic mutations of each - a small fuzz
 * run that needs no clang and under `make check` runs with ASan and UBSan.
 * The seeds are hand-written texts, committed as they are; a crash that
 * `make fuzz` saves there stays a test for good.
 *
 * Two vocabularies: the hand-made one of tests/gguf_raw.h (always there),
 * and Qwen3's, which the fuzzer uses: written like tests/fuzz/run.sh does
 * (build/moestream mkmodel --preset tiny --sparse --tokenizer
 * $MS_TOKENIZERS/qwen3/tokenizer.json, MS_TOKENIZERS from tests/run.sh) or
 * taken from $MS_FUZZ_VOCAB. Without it the test fails and says why.
 * MS_SEED replays other mutations; MS_FUZZ_CORPUS names another folder.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_TOKENIZE_NO_MAIN 1
#include "fuzz/fuzz_tokenize.c"
#include "gguf_raw.h"
#include "testutil.h"

static struct ms_vocab *load_path(const char *path)
{
	struct ms_err err = { 0 };
	struct ms_vocab *v;
	if (fuzz_tokenize_open(path, &v, &err))
		t_fatal("%s: %s", path, err.msg);
	return v;
}

static struct ms_vocab *handmade(const char *dir)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/handmade.gguf", dir);
	struct gr_gguf g;
	struct gr_vocab v;
	gr_init(&g);
	gr_vocab_default(&v);
	gr_set_str(&g, "general.architecture", "test");
	gr_vocab_build(&g, &v);
	int rc = gr_write(&g, path);
	gr_free(&g);
	if (rc)
		t_fatal("write %s: %s", path, strerror(-rc));
	return load_path(path);
}

static struct ms_vocab *qwen3(const char *dir)
{
	const char *env = getenv("MS_FUZZ_VOCAB");
	if (env && *env)
		return load_path(env);
	const char *toks = getenv("MS_TOKENIZERS");
	if (!toks || !*toks)
		t_fatal("MS_TOKENIZERS is not set: run through tests/run.sh (make "
			"test), which fetches the pinned tokenizers, or set "
			"MS_FUZZ_VOCAB");
	char json[PATH_MAX], model[PATH_MAX], cmd[3 * PATH_MAX];
	snprintf(json, sizeof(json), "%s/qwen3/tokenizer.json", toks);
	struct stat st;
	if (stat(json, &st)) {
		char failed[PATH_MAX];
		snprintf(failed, sizeof(failed), "%s/qwen3/FETCH_FAILED", toks);
		char *why = t_read_text(failed);
		t_fatal("no %s (%s)", json, why ? why : "run tests/fetch-ggml.sh");
	}
	snprintf(model, sizeof(model), "%s/qwen3-vocab.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s mkmodel --preset tiny --sparse "
		 "--tokenizer '%s' -o '%s' >/dev/null", t_build_path("moestream"),
		 json, model);
	if (system(cmd) != 0)
		t_fatal("'%s' failed", cmd);
	struct ms_vocab *v = load_path(model);
	unlink(model);
	return v;
}

/* Bytes that move a tokenizer: special-token pieces, UTF-8 leads and
 * continuations, white space, digits. */
static size_t mutate(uint8_t *p, size_t n, size_t cap, uint64_t *rs)
{
	static const char *const bits[] = {
		"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "<|",
		"|>", "\xe2\x80\x8d", "\xf0\x9f", "\xc3", "\x80", "\xff", "\xed\xa0\x80",
		" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123", "\xe4\xb8\xad",
	};
	return t_mutate(p, n, cap, rs, bits, sizeof(bits) / sizeof(bits[0]), 8,
			false);
}

struct replay {
	struct ms_vocab *v;
	struct ms_tokens *t;
};

static void replay_one(void *ctx, const char *name, const uint8_t *p, size_t n,
		       bool seed_file)
{
	(void)name, (void)seed_file;
	struct replay *r = ctx;
	fuzz_tokenize_one(r->v, r->t, p, n);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	ms_log_threshold = MS_LOG_ERR - 1;
	const char *dir = getenv("MS_FUZZ_CORPUS");
	if (!dir || !*dir)
		dir = t_source_path("tests/fuzz/corpus/tokenize", 6);
	if (!dir)
		t_fatal("no tests/fuzz/corpus/tokenize (run from the repository "
			"root or set MS_FUZZ_CORPUS)");
	char cdir[PATH_MAX];
	snprintf(cdir, sizeof(cdir), "%s", dir);

	const char *tmp = t_tmpdir();
	struct {
		const char *name;
		struct ms_vocab *v;
	} vocabs[2] = { { "hand-made", handmade(tmp) }, { "qwen3", qwen3(tmp) } };

	uint64_t seed = getenv("MS_SEED") ? t_seed() : 0x70c5eedull;
	printf("corpus %s; mutations: MS_SEED=%llu\n", cdir,
	       (unsigned long long)seed);
	struct ms_tokens t = { 0 };
	for (int k = 0; k < 2; k++) {
		struct ms_vocab *v = vocabs[k].v;
		printf("%s: %u tokens, %u merges, pre %s\n", vocabs[k].name,
		       ms_vocab_n_tokens(v), ms_vocab_n_merges(v),
		       ms_pre_name(ms_vocab_pre(v)));
		struct replay r = { v, &t };
		unsigned n_files = t_corpus_replay(cdir, 1 << 20, seed, 200, mutate,
						   replay_one, &r);
		unsigned n_mut = n_files * 200;
		T_CHECK(n_files > 0, "%s: no corpus files", cdir);
		printf("%s: %u corpus files and %u mutations ran clean\n",
		       vocabs[k].name, n_files, n_mut);
		ms_vocab_free(v);
	}
	ms_tokens_free(&t);
	return t_done();
}
