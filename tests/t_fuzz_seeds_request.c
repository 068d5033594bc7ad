/*
 * t_fuzz_seeds_request.c - the request decoder's fuzz corpus as regression
 * tests (what t_fuzz_seeds.c is for the GGUF corpus).
 *
 * Every file in tests/fuzz/corpus/request goes through the entry of
 * tests/fuzz/fuzz_request.c (included below, with its contract checks: a
 * refusal zeroes the request and says why, an acceptance keeps every range
 * api/request.h promises; a broken promise aborts, which fails this test),
 * as a chat request and as a completion. The seeds are hand-written bodies,
 * committed as they are, and their names say what they must do:
 *
 *   valid-chat-*        accepted as a chat request
 *   valid-completion-*  accepted as a completion
 *   valid-both-*        accepted as both
 *   bad-*               refused as both
 *   anything else       (a crash `make fuzz` saved) merely survived
 *
 * Then a thousand deterministic mutations of each seed, spliced with JSON
 * pieces (brackets, quotes, escapes, the field names, numbers at the edges
 * of the ranges) - a small fuzz run that needs no clang and under `make
 * check` runs with ASan and UBSan. MS_SEED replays other mutations;
 * MS_FUZZ_CORPUS names another folder.
 */
#include <limits.h>
#include <string.h>

#define MS_FUZZ_NO_ENTRY 1
#include "fuzz/fuzz_request.c"
#include "testutil.h"

#define MUTATIONS 1000

static bool starts(const char *s, const char *prefix)
{
	return !strncmp(s, prefix, strlen(prefix));
}

/* What the seed's name says it must do: FR_* bits that must accept, or -1
 * when nothing is promised. */
static int expected(const char *name)
{
	if (starts(name, "valid-chat-"))
		return FR_CHAT;
	if (starts(name, "valid-completion-"))
		return FR_COMPLETION;
	if (starts(name, "valid-both-"))
		return FR_CHAT | FR_COMPLETION;
	if (starts(name, "bad-"))
		return 0;
	return -1;
}

/* Bytes that move a JSON decoder and this one's field checks. */
static size_t mutate(uint8_t *p, size_t n, size_t cap, uint64_t *rs)
{
	static const char *const bits[] = {
		"{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\u00",
		"\\ud83d", "\\ude00", "\\n", "null", "true", "false", "0", "-1",
		"1.5", "2.5", "1e999", "-0", "2147483648", "18446744073709551616",
		"\"messages\":", "\"prompt\":", "\"role\":", "\"content\":",
		"\"type\":\"text\"", "\"text\":", "\"stop\":", "\"n\":",
		"\"seed\":", "\"max_tokens\":", "\"temperature\":", "\"top_p\":",
		"\"stream_options\":", "\"developer\"", "\"tool\"", "\"assistant\"",
		" ", "\n", "", "\xef\xbb\xbf", "\xff",
	};
	return t_mutate(p, n, cap, rs, bits, sizeof(bits) / sizeof(bits[0]), 16,
			true);
}

struct replay {
	unsigned n_acc[4]; /* mutations accepted as nothing/chat/completion/both */
};

/* A seed file must be accepted as its name promises; a mutation only has to
 * keep the target's promises (fuzz_request_one aborts otherwise). */
static void replay_one(void *ctx, const char *name, const uint8_t *p, size_t n,
		       bool seed_file)
{
	struct replay *r = ctx;
	int got = fuzz_request_one(p, n);
	if (!seed_file) {
		r->n_acc[got]++;
		return;
	}
	int want = expected(name);
	T_CHECK(want < 0 || got == want, "%s: accepted as %s%s%s, its name "
		"promises %s%s%s", name, got & FR_CHAT ? "chat " : "",
		got & FR_COMPLETION ? "completion " : "", got ? "" : "nothing",
		want & FR_CHAT ? "chat " : "",
		want & FR_COMPLETION ? "completion " : "", want ? "" : "nothing");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *dir = getenv("MS_FUZZ_CORPUS");
	if (!dir || !*dir)
		dir = t_source_path("tests/fuzz/corpus/request", 6);
	if (!dir)
		t_fatal("no tests/fuzz/corpus/request (run from the repository "
			"root or set MS_FUZZ_CORPUS)");
	char cdir[PATH_MAX];
	snprintf(cdir, sizeof(cdir), "%s", dir);

	uint64_t seed = getenv("MS_SEED") ? t_seed() : 0x5eed4e9ull;
	printf("corpus %s; mutations: MS_SEED=%llu\n", cdir,
	       (unsigned long long)seed);
	struct replay r = { 0 };
	unsigned n_files = t_corpus_replay(cdir, MS_API_MAX_BODY + 1, seed,
					   MUTATIONS, mutate, replay_one, &r);
	unsigned n_mut = n_files * MUTATIONS;
	unsigned *n_acc = r.n_acc;
	T_CHECK(n_files > 0, "%s: no corpus files", cdir);
	printf("%u corpus files and %u mutations ran clean (mutations accepted: "
	       "%u chat only, %u completion only, %u both, %u neither)\n", n_files,
	       n_mut, n_acc[FR_CHAT], n_acc[FR_COMPLETION],
	       n_acc[FR_CHAT | FR_COMPLETION], n_acc[0]);
	return t_done();
}
