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
#include <dirent.h>
#include <errno.h>
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
	DIR *d = opendir(cdir);
	if (!d)
		t_fatal("opendir %s: %s", cdir, strerror(errno));
	struct dirent *de;
	unsigned n_files = 0, n_mut = 0, n_acc[4] = { 0 };
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", cdir, de->d_name);
		size_t n = 0;
		uint8_t *p = t_read_file(path, MS_API_MAX_BODY + 1, &n);
		if (!p) {
			t_fail_at(__FILE__, __LINE__, "cannot read %s", path);
			continue;
		}
		int got = fuzz_request_one(p, n);
		int want = expected(de->d_name);
		T_CHECK(want < 0 || got == want, "%s: accepted as %s%s%s, its name "
			"promises %s%s%s", de->d_name, got & FR_CHAT ? "chat " : "",
			got & FR_COMPLETION ? "completion " : "", got ? "" : "nothing",
			want & FR_CHAT ? "chat " : "",
			want & FR_COMPLETION ? "completion " : "",
			want ? "" : "nothing");
		n_files++;

		size_t cap = n + 1024;
		uint8_t *m = malloc(cap);
		if (!m)
			t_fatal("out of memory");
		/* per file, whatever order readdir gives */
		uint64_t rs = seed;
		for (const char *c = de->d_name; *c; c++)
			rs = (rs ^ (uint8_t)*c) * 0x100000001b3ull;
		for (unsigned it = 0; it < MUTATIONS; it++) {
			memcpy(m, p, n);
			size_t len = mutate(m, n, cap, &rs);
			/* an exact-size copy: a read past the body is an ASan
			 * report, as under libFuzzer */
			uint8_t *exact = malloc(len ? len : 1);
			if (!exact)
				t_fatal("out of memory");
			memcpy(exact, m, len);
			n_acc[fuzz_request_one(exact, len)]++;
			free(exact);
			n_mut++;
		}
		free(m);
		free(p);
	}
	closedir(d);
	T_CHECK(n_files > 0, "%s: no corpus files", cdir);
	printf("%u corpus files and %u mutations ran clean (mutations accepted: "
	       "%u chat only, %u completion only, %u both, %u neither)\n", n_files,
	       n_mut, n_acc[FR_CHAT], n_acc[FR_COMPLETION],
	       n_acc[FR_CHAT | FR_COMPLETION], n_acc[0]);
	return t_done();
}
