/*
 * fuzz_request.c - libFuzzer target for the OpenAI request decoder
 * (api/request.c: libcjson behind our own field checks).
 *
 * Every input is one request body, decoded twice: as a chat request
 * (/v1/chat/completions) and as a completion (/v1/completions), each into a
 * struct that starts as garbage (so a field the decoder forgot to set
 * shows). The bytes are libFuzzer's own buffer of exactly `size` bytes, not
 * NUL-terminated, so a read past the body is an ASan report. The contract
 * checked on each call:
 *
 *   - refused: -EINVAL (or -ENOMEM), the same code in err.code, a
 *     non-empty one-line message, and the request all zeroes;
 *   - accepted: 0, err.msg empty, the kind asked for, and every promise of
 *     api/request.h: chat has 1..MS_API_MAX_MESSAGES messages, each role
 *     "system", "user" or "assistant" and each content a string; a
 *     completion has a prompt; temperature in [0, 2], top_p in (0, 1],
 *     min_p in [0, 1], top_k >= 0, max_tokens -1 or >= 1; at most 4 stop
 *     strings, each non-empty and at most MS_API_MAX_STOP_LEN bytes, the
 *     unused slots NULL; no string longer than the body;
 *   - then ms_api_req_free leaves the struct zeroed, and a second free is
 *     harmless.
 *
 * A broken promise aborts so that libFuzzer keeps the input. `make fuzz`
 * links this with api/request.c and libcjson. tests/t_fuzz_seeds_request.c
 * includes this file (with MS_FUZZ_NO_ENTRY defined) to run the committed
 * seeds in tests/fuzz/corpus/request, and mutations of them, as regression
 * tests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../api/request.h"

/* What one input did: a bit per kind that accepted it. */
#define FR_CHAT 1
#define FR_COMPLETION 2

static void fr_broken(const char *what, const uint8_t *data, size_t size,
		      int kind)
{
	fprintf(stderr, "fuzz_request: contract broken: %s (kind %d, %zu bytes:",
		what, kind, size);
	for (size_t i = 0; i < size && i < 64; i++)
		fprintf(stderr, " %02x", data[i]);
	fprintf(stderr, "%s)\n", size > 64 ? " ..." : "");
	abort();
}

#define FR_CHECK(cond)                                                         \
	do {                                                                   \
		if (!(cond))                                                   \
			fr_broken(#cond, data, size, (int)kind);               \
	} while (0)

static bool fr_zeroed(const struct ms_api_req *r)
{
	static const struct ms_api_req zero;
	return !memcmp(r, &zero, sizeof(zero));
}

/* A decoded string: there, and not longer than the body it came from. */
static bool fr_str(const char *s, size_t size)
{
	return s && strnlen(s, size + 1) <= size;
}

/* One kind: 1 when accepted. */
static int fr_one(enum ms_api_kind kind, const uint8_t *data, size_t size)
{
	struct ms_api_req *r = malloc(sizeof(*r));
	struct ms_err err;
	if (!r) {
		fprintf(stderr, "fuzz_request: out of memory\n");
		abort();
	}
	memset(r, 0xa5, sizeof(*r)); /* the decoder must set what it reports */
	memset(&err, 0x5a, sizeof(err));
	int rc = ms_api_req_parse(r, kind, (const char *)data, size, &err);

	FR_CHECK(memchr(err.msg, '\0', sizeof(err.msg)) != NULL);
	if (rc) {
		FR_CHECK(rc == -EINVAL || rc == -ENOMEM);
		FR_CHECK(err.code == rc);
		FR_CHECK(err.msg[0] != '\0');
		FR_CHECK(strchr(err.msg, '\n') == NULL);
		FR_CHECK(fr_zeroed(r));
		ms_api_req_free(r);
		FR_CHECK(fr_zeroed(r));
		free(r);
		return 0;
	}

	FR_CHECK(err.msg[0] == '\0');
	FR_CHECK(r->kind == kind);
	if (kind == MS_API_CHAT) {
		FR_CHECK(r->n_msgs >= 1 && r->n_msgs <= MS_API_MAX_MESSAGES);
		FR_CHECK(r->msgs != NULL);
		FR_CHECK(r->prompt == NULL);
		for (size_t i = 0; i < r->n_msgs; i++) {
			const struct ms_api_msg *m = &r->msgs[i];
			FR_CHECK(m->role != NULL);
			FR_CHECK(!strcmp(m->role, "system") ||
				 !strcmp(m->role, "user") ||
				 !strcmp(m->role, "assistant"));
			FR_CHECK(fr_str(m->content, size));
		}
	} else {
		FR_CHECK(fr_str(r->prompt, size));
		FR_CHECK(r->msgs == NULL && r->n_msgs == 0);
	}
	FR_CHECK(!r->model || fr_str(r->model, size));
	FR_CHECK(r->temperature >= 0.0f && r->temperature <= 2.0f);
	FR_CHECK(r->top_p > 0.0f && r->top_p <= 1.0f);
	FR_CHECK(r->min_p >= 0.0f && r->min_p <= 1.0f);
	FR_CHECK(r->top_k >= 0);
	FR_CHECK(r->max_tokens == -1 || r->max_tokens >= 1);
	FR_CHECK(r->has_seed || r->seed == 0);
	FR_CHECK(r->n_stop <= MS_API_MAX_STOP);
	for (size_t i = 0; i < MS_API_MAX_STOP; i++) {
		if (i >= r->n_stop) {
			FR_CHECK(r->stop[i] == NULL);
			continue;
		}
		FR_CHECK(r->stop[i] != NULL);
		size_t n = strlen(r->stop[i]);
		FR_CHECK(n >= 1 && n <= MS_API_MAX_STOP_LEN);
	}
	ms_api_req_free(r);
	FR_CHECK(fr_zeroed(r));
	ms_api_req_free(r); /* a zeroed struct frees as nothing */
	FR_CHECK(fr_zeroed(r));
	free(r);
	return 1;
}

/* The entry both the fuzzer and t_fuzz_seeds_request use: FR_* bits of
 * the kinds that accepted the input. */
static int fuzz_request_one(const uint8_t *data, size_t size)
{
	int ret = 0;
	if (fr_one(MS_API_CHAT, data, size))
		ret |= FR_CHAT;
	if (fr_one(MS_API_COMPLETION, data, size))
		ret |= FR_COMPLETION;
	return ret;
}

#ifndef MS_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_request_one(data, size);
	return 0;
}
#endif
