/*
 * testutil.h - what every test program shares: verdict exit codes, checks
 * that print the exact bad value, a private temporary folder, and running a
 * command to capture its output.
 *
 * A test is a program; its exit code is its verdict (0 pass, 1 fail, 77 skip).
 */
#ifndef MS_TESTUTIL_H
#define MS_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

extern int t_failures;

/* Records a failure with file:line and a formatted message; the test goes on
 * so that one run reports every bad value. */
void t_fail_at(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define T_CHECK(cond, ...)                                                     \
	do {                                                                   \
		if (!(cond))                                                   \
			t_fail_at(__FILE__, __LINE__, __VA_ARGS__);            \
	} while (0)

#define T_EQ_U64(a, b)                                                         \
	do {                                                                   \
		unsigned long long _a = (unsigned long long)(a);               \
		unsigned long long _b = (unsigned long long)(b);               \
		if (_a != _b)                                                  \
			t_fail_at(__FILE__, __LINE__, "%s = %llu, expected "   \
				  "%s = %llu", #a, _a, #b, _b);                \
	} while (0)

/* Prints the reason and exits 77. */
void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Prints the reason and exits 1 at once (for setup that cannot go on). */
void t_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Exit code for the end of main: 0 when no check failed, else 1. */
int t_done(void);

/* A named part of a test, and whether it should run: no part named on the
 * command line (argv[1..]), or this one among them. */
struct t_part {
	const char *name;
	void (*fn)(void);
};

bool t_part_wanted(const char *name, int argc, char **argv);

/* A fresh folder under $MS_TMP, else $TMPDIR, else /tmp, removed at exit
 * (unless MS_KEEP_TMP is set). */
const char *t_tmpdir(void);

/* "$MS_BUILD/<rel>" (MS_BUILD defaults to "build"); the result lives to
 * exit (the same string for the same `rel`). */
const char *t_build_path(const char *rel);

/* Writes mkmodel's tiny preset with the pinned Qwen3 tokenizer
 * ($MS_TOKENIZERS, which tests/run.sh sets) to `path`; fatal, saying why,
 * when the tokenizer or mkmodel fails. */
void t_tiny_qwen3(const char *path);

/* Runs `cmd` through /bin/sh, captures stdout (up to `max` bytes, malloc'ed,
 * NUL-terminated into *out when out != NULL) and returns the exit status
 * (or -1 if it could not run / was killed). stderr is left alone unless the
 * command redirects it. */
int t_run(const char *cmd, char **out, size_t max);

/* A GPU entry point in a build without CUDA: rc must be -ENOTSUP and the
 * message say "built without CUDA" (a failed check names `what`). `err`
 * is a struct ms_err *. */
struct ms_err;
void t_check_no_cuda(int rc, const struct ms_err *err, const char *what);

/* malloc that never returns NULL (n = 0 gives a byte): out of memory is
 * fatal. */
void *t_xmalloc(size_t n);

/* Device memory for the GPU tests, fatal on failure: an allocation (of at
 * least a byte), a copy to it, one allocated and filled from host memory,
 * and a copy back after waiting for the context's stream. */
struct ms_gpu_ctx;
void *t_dev_alloc(size_t bytes);
void t_dev_up(void *dev, const void *host, size_t bytes);
void *t_dev_from(const void *host, size_t bytes);
void t_dev_to(struct ms_gpu_ctx *ctx, void *host, const void *dev,
	      size_t bytes);

/* A 64-bit PRNG (splitmix64) for tests that pick random data. The seed is
 * printed by t_seed() so that a failure can be replayed with MS_SEED=... */
uint64_t t_rand(uint64_t *state);
uint64_t t_seed(void);

/* A fuzz-style mutation shared by the seed tests: duplicates a run of
 * 1..64 bytes starting at `at` (<= n) in place, when the result still fits
 * in `cap`; returns the new length. Draws one number from `state`. */
size_t t_dup_run(uint8_t *p, size_t n, size_t cap, size_t at, uint64_t *state);

/* The seed tests' mutation of p[0..n) (room for cap): 1..4 edits, each a
 * bit flip, a byte set, the insertion of one of pieces[] ("" stands for one
 * NUL byte), the deletion of a run of 1..max_delete bytes, a cut at a
 * random point (only with `truncate`), or t_dup_run; returns the new
 * length. The draws from `state` are a function of the arguments alone, so
 * a seed replays. */
size_t t_mutate(uint8_t *p, size_t n, size_t cap, uint64_t *state,
		const char *const *pieces, size_t n_pieces, size_t max_delete,
		bool truncate);

/* Writes `len` bytes to a new file; returns 0 or -errno. */
int t_write_file(const char *path, const void *buf, size_t len);

/* `rel` as it stands from the current folder, else from the folder of this
 * program or one of its first `levels` parents: the path (the last in a
 * buffer that the next call reuses), or NULL when none has it. */
const char *t_source_path(const char *rel, int levels);

/* A whole file of at most `max` bytes, malloc'ed with a byte to spare, its
 * length (what could be read) in *len: NULL when it cannot be opened or is
 * larger. */
uint8_t *t_read_file(const char *path, size_t max, size_t *len);

/* A whole file as a NUL-terminated string (malloc'ed), NULL when it cannot
 * be read. */
char *t_read_text(const char *path);

/* The seed-replay tests' loop over a fuzz corpus: every file of `dir` (dot
 * files left out, at most max_bytes each) goes through one(ctx, name, p, n,
 * true), then `mutations` mutations of it through one(..., false): each
 * made by mutate(m, n, cap, &state) in a buffer of n + 1024 bytes, the
 * state seeded from `seed` and the file's name (the same whatever order
 * readdir gives), and handed over in an exact-size copy (a read past the
 * input is an ASan report, as under libFuzzer). An unreadable file fails
 * the test; returns the number of files (no folder is fatal). */
unsigned t_corpus_replay(const char *dir, size_t max_bytes, uint64_t seed,
			 unsigned mutations,
			 size_t (*mutate)(uint8_t *p, size_t n, size_t cap,
					  uint64_t *state),
			 void (*one)(void *ctx, const char *name, const uint8_t *p,
				     size_t n, bool seed_file),
			 void *ctx);

/* A growing byte buffer, kept NUL-terminated after its len bytes; running
 * out of memory is fatal. Zero-initialise, free(p) when done. */
struct t_buf {
	char *p;
	size_t len, cap;
};
void t_buf_add(struct t_buf *b, const void *d, size_t n);

/* Runs fn(argc, argv) in a child, argv[0] `name` and the rest `args` split
 * at spaces, with stdout and stderr in DIR/out and DIR/err and PATH set to
 * `path` when not NULL; prints "$ NAME ARGS -> exit N" and then the child's
 * stderr (only when the exit is not 0, with err_if_failed). Returns the exit
 * code and both outputs (malloc'ed, the caller frees; NULL out or err: not
 * wanted). */
int t_call_main(int (*fn)(int, char **), const char *name, const char *args,
		const char *dir, const char *path, bool err_if_failed,
		char **out, char **err);

#endif /* MS_TESTUTIL_H */
