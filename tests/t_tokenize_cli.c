/*
 * t_tokenize_cli - `moestream tokenize` and `detokenize` as a user meets
 * them: pieces by default, bare ids with --ids, the ids back to the same
 * bytes, --no-special, -f FILE; exit 1 with one line naming the missing key
 * for a model without a tokenizer, 1 for an id outside the vocabulary, 2 for
 * bad usage. Runs on mkmodel's tiny preset with its built-in vocabulary (no
 * downloads needed).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "moestream/model.h"
#include "testutil.h"

static char cmd[16384];

static char *run(const char *args, int want_rc, const char *want,
		 bool one_line)
{
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path("moestream"), args);
	int rc = t_run(cmd, &out, 1 << 20);
	printf("$ %s -> exit %d\n%.400s%s", cmd, rc, out ? out : "",
	       out && strlen(out) > 400 ? "...\n" : "");
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", cmd, rc, want_rc);
	if (want)
		T_CHECK(out && strstr(out, want), "'%s' output lacks '%s'", cmd, want);
	if (one_line) {
		size_t nl = 0;
		for (const char *p = out; p && *p; p++)
			nl += *p == '\n';
		T_CHECK(nl == 1, "'%s' printed %zu lines, expected one", cmd, nl);
	}
	return out;
}

int main(void)
{
	const char *d = t_tmpdir();
	char model[4096], bare[4096], txt[4096], args[16384];
	snprintf(model, sizeof(model), "%s/tiny.gguf", d);
	snprintf(bare, sizeof(bare), "%s/bare.gguf", d);
	snprintf(txt, sizeof(txt), "%s/in.txt", d);

	snprintf(args, sizeof(args), "mkmodel --preset tiny --sparse -o %s", model);
	free(run(args, 0, "wrote", false));

	/* a GGUF with no tokenizer keys at all */
	struct ms_err err = { 0 };
	struct ms_gguf_writer *w;
	int fd = open(bare, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ms_gguf_writer_init(&w, 32, &err) ||
	    ms_gguf_writer_set_str(w, "general.architecture", "glm4moe", &err) ||
	    ms_gguf_writer_write_meta(w, fd, &err))
		t_fatal("cannot write %s: %s", bare, err.msg);
	ms_gguf_writer_free(w);
	close(fd);

	/* pieces, then ids, then the ids back to the bytes */
	snprintf(args, sizeof(args), "tokenize %s 'Hello, world'", model);
	free(run(args, 0, "\t'", false));
	snprintf(args, sizeof(args), "tokenize %s 'Hello, world  123\tok' --ids",
		 model);
	char *ids = run(args, 0, NULL, true);
	if (ids) {
		ids[strcspn(ids, "\n")] = '\0';
		T_CHECK(*ids && strspn(ids, "0123456789 ") == strlen(ids),
			"--ids printed '%s', not bare ids", ids);
		snprintf(args, sizeof(args), "detokenize %s %s", model, ids);
		char *back = run(args, 0, NULL, false);
		T_CHECK(back && !strcmp(back, "Hello, world  123\tok"),
			"detokenize gave '%s'", back ? back : "(nothing)");
		free(back);
	}
	free(ids);

	/* -f FILE (with bytes a shell argument cannot hold) and stdin */
	static const char text[] = "line one\r\nline\x00two \xff\xfe end\n";
	if (t_write_file(txt, text, sizeof(text) - 1))
		t_fatal("cannot write %s", txt);
	snprintf(args, sizeof(args), "tokenize %s -f %s --ids", model, txt);
	char *a = run(args, 0, NULL, true);
	snprintf(args, sizeof(args), "tokenize %s -f - --ids < %s", model, txt);
	char *b = run(args, 0, NULL, true);
	T_CHECK(a && b && !strcmp(a, b), "-f FILE and -f - differ: '%s' / '%s'",
		a ? a : "", b ? b : "");
	free(a);
	free(b);

	/* the special token of the built-in vocabulary, parsed or not */
	snprintf(args, sizeof(args), "tokenize %s '<|endoftext|>' --ids", model);
	char *sp = run(args, 0, NULL, true);
	snprintf(args, sizeof(args), "tokenize %s '<|endoftext|>' --ids "
		 "--no-special", model);
	char *nsp = run(args, 0, NULL, true);
	T_CHECK(sp && nsp && !strchr(sp, ' ') && strchr(nsp, ' '),
		"'<|endoftext|>' should be one token parsed ('%s') and several "
		"not ('%s')", sp ? sp : "", nsp ? nsp : "");
	free(sp);
	free(nsp);

	/* errors: one line each, the right exit code */
	snprintf(args, sizeof(args), "tokenize %s hello", bare);
	free(run(args, 1, "tokenizer.ggml.model", true));
	snprintf(args, sizeof(args), "detokenize %s 1 2", bare);
	free(run(args, 1, "tokenizer.ggml.model", true));
	snprintf(args, sizeof(args), "detokenize %s 99999999", model);
	free(run(args, 1, "99999999", true));
	snprintf(args, sizeof(args), "detokenize %s abc", model);
	free(run(args, 2, "'abc' is not a token id", false));
	free(run("tokenize", 2, "no MODEL", false));
	snprintf(args, sizeof(args), "tokenize %s", model);
	free(run(args, 2, "TEXT", false));
	snprintf(args, sizeof(args), "tokenize %s a b", model);
	free(run(args, 2, "TEXT", false));
	snprintf(args, sizeof(args), "tokenize %s -f %s/missing.txt", model, d);
	free(run(args, 1, "missing.txt", true));
	free(run("tokenize --help", 0, "usage: moestream tokenize", false));
	free(run("detokenize --help", 0, "usage: moestream detokenize", false));
	return t_done();
}
