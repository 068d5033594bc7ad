/*
 * t_llama_ref - mkmodel's models load in llama.cpp (tools/llama_ref.c), and
 * the reference helper itself works.
 *
 *  - Presets written with the Qwen3 tokenizer: tiny, GLM-4.7 cut to 3 dense
 *    + 1 MoE layer (glm4moe, 3.1 GB) and Qwen3-30B-A3B cut to 1 layer
 *    (qwen3moe, 0.84 GB); tiny with --tokenizer-pre glm4; tiny with the
 *    built-in vocabulary. Each loads in llama.cpp, its vocabulary has the
 *    size written, a sentence tokenizes (pieces give the text back), and
 *    one batch of it decodes to n_tokens x n_vocab finite logits that are
 *    not all equal. The vocab-only load tokenizes to the same ids.
 *  - The DeepSeek-V3 and gpt-oss tokenizers (sparse tiny models): llama.cpp
 *    loads their vocabularies (vocab only) and the pieces give the text back.
 *  - The helper's errors: a missing library folder (-ENOENT, naming it), a
 *    file llama.cpp refuses (-EINVAL, quoting llama.cpp's reason), decode of
 *    ids out of range.
 *
 * Needs $MS_LLAMA_DIR and $MS_TOKENIZERS (tests/fetch-ggml.sh; tests/run.sh
 * sets them): missing is a failure that says why. The models are written
 * under $MS_BUILD (not /tmp, which may be small) and removed as soon as each
 * is checked. About 20 s on 2 cores, most of it the GLM file's 3.1 GB.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../tools/llama_ref.h"
#include "../tools/tools.h"
#include "testutil.h"

static const char *tmp;
static const char *text =
	"The quick brown fox jumps over the lazy dog. Grüße, 世界! 12345";

/* $MS_TOKENIZERS/NAME/tokenizer.json, or exit 1 saying why not. */
static const char *tokenizer(const char *name)
{
	static char p[1024];
	const char *root = getenv("MS_TOKENIZERS");
	if (!root || !*root)
		t_fatal("MS_TOKENIZERS is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	snprintf(p, sizeof(p), "%s/%s/tokenizer.json", root, name);
	if (access(p, R_OK)) {
		char fp[1100];
		snprintf(fp, sizeof(fp), "%s/%s/FETCH_FAILED", root, name);
		char *why = t_read_text(fp);
		t_fatal("%s is missing: %s", p,
			why ? why : "no fetch error recorded; run tests/fetch-ggml.sh");
	}
	return p;
}

/* A sparse tiny model with tokenizer NAME: llama.cpp loads its vocabulary,
 * of the size written, and the pieces of the ids give the text back. */
static void check_vocab(const char *name, int32_t n_vocab)
{
	char path[1100], a[2400];
	snprintf(path, sizeof(path), "%s/v.gguf", tmp);
	snprintf(a, sizeof(a), "--preset tiny --sparse --force --tokenizer %s -o %s",
		 tokenizer(name), path);
	int rc = t_call_main(cmd_mkmodel, "mkmodel", a, tmp, NULL, true, NULL, NULL);
	T_CHECK(rc == 0, "%s: mkmodel exit %d", name, rc);
	struct ms_llref *r = NULL;
	struct ms_err e = { 0 };
	int32_t *ids = NULL;
	size_t n = 0;
	if (rc)
		return;
	if (ms_llref_open_vocab(&r, NULL, path, &e)) {
		T_CHECK(0, "%s: llama.cpp does not load the vocabulary: %s", name,
			e.msg);
		goto out;
	}
	T_CHECK(ms_llref_n_vocab(r) == n_vocab, "%s: n_vocab %d, expected %d",
		name, ms_llref_n_vocab(r), n_vocab);
	/* No special tokens added: DeepSeek's add_bos_token adds a BOS. */
	if (ms_llref_tokenize(r, text, strlen(text), false, true, &ids, &n, &e)) {
		T_CHECK(0, "%s: tokenize: %s", name, e.msg);
		goto out;
	}
	char back[1024];
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int l = ms_llref_piece(r, ids[i], true, back + o, sizeof(back) - 1 - o);
		o += l > 0 ? (size_t)l : 0;
	}
	back[o] = '\0';
	T_CHECK(!strcmp(back, text), "%s: pieces give '%s', not '%s'", name, back,
		text);
	printf("%-40s ok: %d tokens, %zu ids (vocab only)\n", name, n_vocab, n);
out:
	free(ids);
	ms_llref_close(r);
	unlink(path);
}

static void check_model(const char *what, const char *args, int32_t n_vocab)
{
	char path[1100], a[2400];
	snprintf(path, sizeof(path), "%s/m.gguf", tmp);
	snprintf(a, sizeof(a), "%s --force -o %s", args, path);
	char *err = NULL;
	double t0 = tool_now_s();
	int rc = t_call_main(cmd_mkmodel, "mkmodel", a, tmp, NULL, false, NULL, &err);
	T_CHECK(rc == 0, "%s: mkmodel exit %d: %s", what, rc, err ? err : "");
	free(err);
	if (rc)
		return;
	double t1 = tool_now_s();

	struct ms_llref *r = NULL, *rv = NULL;
	struct ms_err e = { 0 };
	int32_t *ids = NULL, *ids_v = NULL;
	size_t n = 0, n_v = 0;
	float *logits = NULL;
	if ((rc = ms_llref_open(&r, NULL, path, 128, 2, &e))) {
		T_CHECK(0, "%s: llama.cpp does not load it: %s", what, e.msg);
		goto out;
	}
	T_CHECK(ms_llref_n_vocab(r) == n_vocab, "%s: n_vocab %d, expected %d",
		what, ms_llref_n_vocab(r), n_vocab);
	if ((rc = ms_llref_tokenize(r, text, strlen(text), true, true, &ids, &n,
				    &e)) || n == 0) {
		T_CHECK(0, "%s: tokenize: %d %s (%zu ids)", what, rc, e.msg, n);
		goto out;
	}
	/* The pieces give the text back (no BOS for these pre-tokenizers). */
	char back[1024];
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int l = ms_llref_piece(r, ids[i], true, back + o, sizeof(back) - 1 - o);
		T_CHECK(l >= 0, "%s: piece of %d: %d", what, ids[i], l);
		o += l > 0 ? (size_t)l : 0;
	}
	back[o] = '\0';
	T_CHECK(!strcmp(back, text), "%s: pieces give '%s', not '%s'", what, back,
		text);

	logits = malloc(n * (size_t)n_vocab * sizeof(float));
	if (!logits)
		t_fatal("out of memory");
	double t2 = tool_now_s();
	if ((rc = ms_llref_decode(r, ids, n, 0, logits, &e))) {
		T_CHECK(0, "%s: decode of %zu tokens: %s", what, n, e.msg);
		goto out;
	}
	double t3 = tool_now_s();
	size_t bad = 0, same = 0;
	for (size_t i = 0; i < n * (size_t)n_vocab; i++) {
		bad += !isfinite(logits[i]);
		same += logits[i] == logits[0];
	}
	T_CHECK(bad == 0, "%s: %zu of %zu logits are not finite", what, bad,
		n * (size_t)n_vocab);
	T_CHECK(same < n * (size_t)n_vocab, "%s: all %zu logits equal %g", what,
		n * (size_t)n_vocab, logits[0]);
	/* The same decode after a reset gives the same numbers. (The same
	 * batch: llama.cpp computes a batch of 22 and one of 1 with different
	 * kernels - repacked GEMM against GEMV - whose roundings can tip a
	 * random router's near tie, 1% apart on GLM's first token.) */
	ms_llref_reset(r);
	float *again = malloc(n * (size_t)n_vocab * sizeof(float));
	if (again && !ms_llref_decode(r, ids, n, 0, again, &e)) {
		size_t differ = 0;
		for (size_t i = 0; i < n * (size_t)n_vocab; i++)
			differ += again[i] != logits[i];
		T_CHECK(differ == 0, "%s: after a reset, %zu of %zu logits "
			"differ from the first decode's (token 0's logit 0: %g, "
			"was %g)", what, differ, n * (size_t)n_vocab, again[0],
			logits[0]);
	}
	free(again);
	int32_t bad_id = n_vocab;
	T_CHECK(ms_llref_decode(r, &bad_id, 1, 0, logits, &e) == -EINVAL,
		"%s: decode of id %d accepted", what, bad_id);

	/* Vocab-only: the same ids. */
	if ((rc = ms_llref_open_vocab(&rv, NULL, path, &e))) {
		T_CHECK(0, "%s: vocab-only load: %s", what, e.msg);
		goto out;
	}
	if ((rc = ms_llref_tokenize(rv, text, strlen(text), true, true, &ids_v,
				    &n_v, &e)))
		T_CHECK(0, "%s: vocab-only tokenize: %s", what, e.msg);
	else
		T_CHECK(n_v == n && !memcmp(ids, ids_v, n * sizeof(*ids)),
			"%s: vocab-only gives %zu ids, the full load %zu (or other "
			"ids)", what, n_v, n);
	T_CHECK(ms_llref_decode(rv, ids, 1, 0, logits, &e) == -EINVAL,
		"%s: a vocab-only ref decodes", what);
	printf("%-40s ok: %d tokens, %zu ids, write %.1f s, load+decode %.1f s "
	       "(decode %.2f s), logit[0] %g\n", what, n_vocab, n, t1 - t0,
	       tool_now_s() - t1, t3 - t2, logits[0]);
out:
	free(ids);
	free(ids_v);
	free(logits);
	ms_llref_close(r);
	ms_llref_close(rv);
	unlink(path);
}

int main(void)
{
	const char *env = getenv("MS_LLAMA_DIR");
	if (!env || !*env)
		t_fatal("MS_LLAMA_DIR is not set: run under tests/run.sh, after "
			"tests/fetch-ggml.sh");
	const char *tok = tokenizer("qwen3");
	/* Models go under the build folder, not /tmp. */
	if (!getenv("MS_TMP"))
		setenv("MS_TMP", t_build_path("."), 1);
	tmp = t_tmpdir();

	/* Errors first, before the libraries are loaded from the right place. */
	struct ms_llref *r = NULL;
	struct ms_err e = { 0 };
	int rc = ms_llref_open(&r, "/nonexistent-llama", "x.gguf", 0, 1, &e);
	T_CHECK(rc == -ENOENT && strstr(e.msg, "/nonexistent-llama"),
		"a missing folder: %d '%s'", rc, e.msg);
	printf("missing folder: %s\n", e.msg);
	char junk[1100];
	snprintf(junk, sizeof(junk), "%s/junk.gguf", tmp);
	if (t_write_file(junk, "GGUF\3\0\0\0", 8))
		t_fatal("writing %s", junk);
	rc = ms_llref_open(&r, NULL, junk, 0, 1, &e);
	if (rc == -ENOENT || rc == -EPROTO)
		t_fatal("%s", e.msg);
	T_CHECK(rc == -EINVAL && strstr(e.msg, "llama.cpp cannot load"),
		"a junk file: %d '%s'", rc, e.msg);
	printf("junk file: %s\n", e.msg);

	check_vocab("deepseek_v3", 128815);
	check_vocab("gptoss", 200019);
	tok = tokenizer("qwen3");

	char a[2048];
	snprintf(a, sizeof(a), "--preset tiny");
	check_model("tiny, built-in vocabulary", a, 512);
	snprintf(a, sizeof(a), "--preset tiny --tokenizer %s", tok);
	check_model("tiny, Qwen3 tokenizer", a, 151669);
	snprintf(a, sizeof(a), "--preset tiny --tokenizer %s --tokenizer-pre glm4",
		 tok);
	check_model("tiny, Qwen3 tokenizer as glm4", a, 151669);
	snprintf(a, sizeof(a), "--preset qwen3-moe-30b-a3b --moe-layers 1 "
		 "--tokenizer %s", tok);
	check_model("qwen3-moe-30b-a3b 1 layer, Qwen3", a, 151669);
	snprintf(a, sizeof(a), "--preset glm4.7-ud-q2_k_xl --moe-layers 1 "
		 "--tokenizer %s", tok);
	check_model("glm4.7-ud-q2_k_xl 1 MoE layer, Qwen3", a, 151669);
	return t_done();
}
