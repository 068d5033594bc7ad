/*
 * t_cli - the commands as a user meets them: exit codes (0 ok, 1 bad model,
 * 2 bad usage, 3 unavailable), one clear line for a path that does not
 * exist, is a directory or is not GGUF, --help that exits 0, mkmodel's
 * refusal to overwrite, and moestreamd --check-model.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "moestream/kernels.h"
#include "testutil.h"

static char cmd[8192];

/* Runs "BIN ARGS 2>&1", checks the exit code, and that the output holds
 * `want` (when not NULL) and, for errors, is one line. */
static void expect(const char *bin, const char *args, int want_rc,
		   const char *want, bool one_line)
{
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", t_build_path(bin), args);
	int rc = t_run(cmd, &out, 1 << 20);
	printf("$ %s%s-> exit %d\n", cmd, out && *out ? "\n" : " ", rc);
	if (out && *out)
		printf("%.600s%s", out, strlen(out) > 600 ? "...\n" : "");
	T_CHECK(rc == want_rc, "'%s' exited %d, expected %d", cmd, rc, want_rc);
	if (want)
		T_CHECK(out && strstr(out, want), "'%s' output lacks '%s'", cmd,
			want);
	if (one_line) {
		size_t nl = 0;
		for (const char *p = out; p && *p; p++)
			nl += *p == '\n';
		T_CHECK(nl == 1, "'%s' printed %zu lines, expected one", cmd, nl);
	}
	free(out);
}

int main(void)
{
	const char *d = t_tmpdir();
	char model[4096], notgguf[4096], args[8192];
	snprintf(model, sizeof(model), "%s/tiny.gguf", d);
	snprintf(notgguf, sizeof(notgguf), "%s/notes.txt", d);
	if (t_write_file(notgguf, "hello, not a model\n", 19))
		t_fatal("cannot write %s", notgguf);

	/* mkmodel: writes, refuses to overwrite, overwrites with --force. */
	snprintf(args, sizeof(args), "mkmodel --preset tiny -o %s", model);
	expect("moestream", args, 0, "wrote", false);
	expect("moestream", args, 1, "--force", true);
	snprintf(args, sizeof(args), "mkmodel --preset tiny --force -o %s", model);
	expect("moestream", args, 0, "wrote", false);
	snprintf(args, sizeof(args), "mkmodel --preset huge -o %s/x.gguf", d);
	expect("moestream", args, 2, "unknown preset 'huge'", true);

	/* inspect: a good model, and each kind of bad path. */
	snprintf(args, sizeof(args), "inspect %s", model);
	expect("moestream", args, 0, "16 routed per MoE layer, 4 used", false);
	snprintf(args, sizeof(args), "inspect --json %s", model);
	expect("moestream", args, 0, "\"bytes_per_token\"", false);
	snprintf(args, sizeof(args), "inspect %s/missing.gguf", d);
	expect("moestream", args, 1, "No such file", true);
	snprintf(args, sizeof(args), "inspect %s", d);
	expect("moestream", args, 1, "is a directory", true);
	snprintf(args, sizeof(args), "inspect %s", notgguf);
	expect("moestream", args, 1, "not a GGUF file", true);
	snprintf(args, sizeof(args), "inspect /dev/null");
	expect("moestream", args, 1, "/dev/null", true);
	expect("moestream", "inspect", 2, "no MODEL", false);
	snprintf(args, sizeof(args), "inspect %s %s", model, model);
	expect("moestream", args, 2, "one MODEL at a time", false);
	expect("moestream", "inspect --bogus x", 2, NULL, false);
	expect("moestream", "inspect --help", 0, "--extents", false);
	expect("moestream", "--help", 0, "inspect", false);
	expect("moestream", "frobnicate", 2, "not a command", true);
	expect("moestream", "", 2, "usage", false);

	/* A split-shard name whose siblings are missing. */
	snprintf(args, sizeof(args), "inspect %s/m-00002-of-00003.gguf", d);
	expect("moestream", args, 1, "shard 1 of 3", true);

	/* gpu: 3 without CUDA or without a device. */
	if (!ms_gpu_built())
		expect("moestream", "gpu", 3, "built without CUDA", true);

	/* The daemon validates a model and says it does not serve yet. */
	snprintf(args, sizeof(args), "--model %s --check-model", model);
	expect("moestreamd", args, 0, "4 run", false);
	snprintf(args, sizeof(args), "--model %s --check-model", notgguf);
	expect("moestreamd", args, 1, "not a GGUF file", true);
	expect("moestreamd", "--help", 0, "--model", false);
	expect("moestreamd", "--version", 0, "moestreamd", true);
	return t_done();
}
