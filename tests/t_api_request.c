/*
 * t_api_request.c - the OpenAI request decoder (api/request.c): a full chat
 * request and a full completion with every field, the defaults when fields
 * are absent or null, content as text parts, "developer" as "system", and
 * every refusal - each with the field named in the message, -EINVAL in the
 * return and in err.code, and the request given back all zeroes.
 *
 * Every body is copied into a heap block of exactly its length (no NUL
 * after it), so that under ASan a read past the body is a report.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../api/request.h"
#include "testutil.h"

static bool zeroed(const struct ms_api_req *r)
{
	static const struct ms_api_req zero;
	return !memcmp(r, &zero, sizeof(zero));
}

/* Parses body[0..len) from an exact-size copy into r (garbage first). */
static int parse_n(struct ms_api_req *r, enum ms_api_kind kind,
		   const char *body, size_t len, struct ms_err *err)
{
	char *copy = malloc(len ? len : 1);
	if (!copy)
		t_fatal("out of memory");
	memcpy(copy, body, len);
	memset(r, 0xa5, sizeof(*r));
	memset(err, 0x5a, sizeof(*err));
	int rc = ms_api_req_parse(r, kind, copy, len, err);
	free(copy);
	return rc;
}

/* A body that must decode; the caller checks fields, then frees. */
#define OK(r, kind, body) ok_at(__LINE__, r, kind, body, strlen(body))
static void ok_at(int line, struct ms_api_req *r, enum ms_api_kind kind,
		  const char *body, size_t len)
{
	struct ms_err err;
	int rc = parse_n(r, kind, body, len, &err);
	if (rc)
		t_fail_at(__FILE__, line, "refused (%d: %s): %.200s", rc, err.msg,
			  body);
	else if (err.msg[0] || err.code)
		t_fail_at(__FILE__, line, "accepted but err = %d '%s'", err.code,
			  err.msg);
}

/* A body that must be refused with `want` in the message. */
#define BAD(kind, body, want) bad_at(__LINE__, kind, body, strlen(body), want)
#define BAD_N(kind, body, len, want) bad_at(__LINE__, kind, body, len, want)
static void bad_at(int line, enum ms_api_kind kind, const char *body,
		   size_t len, const char *want)
{
	struct ms_api_req r;
	struct ms_err err;
	int rc = parse_n(&r, kind, body, len, &err);
	if (rc != -EINVAL) {
		t_fail_at(__FILE__, line, "rc %d (%s), expected -EINVAL for "
			  "%.200s", rc, rc ? err.msg : "accepted", body);
		if (!rc)
			ms_api_req_free(&r);
		return;
	}
	if (err.code != -EINVAL)
		t_fail_at(__FILE__, line, "err.code %d", err.code);
	if (!strstr(err.msg, want))
		t_fail_at(__FILE__, line, "message '%s' lacks '%s'", err.msg, want);
	if (strchr(err.msg, '\n'))
		t_fail_at(__FILE__, line, "message '%s' is not one line", err.msg);
	if (!zeroed(&r))
		t_fail_at(__FILE__, line, "refused, but the request is not zeroed");
	ms_api_req_free(&r); /* a zeroed request frees as nothing */
}

#define CHAT MS_API_CHAT
#define COMP MS_API_COMPLETION
#define U1 "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static void check_msg(const struct ms_api_req *r, size_t i, const char *role,
		      const char *content)
{
	if (i >= r->n_msgs) {
		t_fail_at(__FILE__, __LINE__, "no message %zu (of %zu)", i, r->n_msgs);
		return;
	}
	T_CHECK(!strcmp(r->msgs[i].role, role), "msgs[%zu].role '%s', expected "
		"'%s'", i, r->msgs[i].role, role);
	T_CHECK(!strcmp(r->msgs[i].content, content), "msgs[%zu].content '%s', "
		"expected '%s'", i, r->msgs[i].content, content);
}

static void test_full_chat(void)
{
	struct ms_api_req r;
	OK(&r, CHAT,
	   "{\"model\":\"glm-4.7\",\"messages\":["
	   "{\"role\":\"system\",\"content\":\"Be brief.\"},"
	   "{\"role\":\"user\",\"content\":\"Hi \\\"there\\\"\\n\"},"
	   "{\"role\":\"assistant\",\"content\":\"Hello!\",\"name\":\"bot\"},"
	   "{\"role\":\"user\",\"content\":\"caf\\u00e9 \\ud83d\\ude00\"}],"
	   "\"max_tokens\":100,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,"
	   "\"min_p\":0.05,\"seed\":1234,\"n\":1,\"stop\":[\"\\n\\n\",\"END\"],"
	   "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
	   "\"prompt\":\"ignored for chat\",\"frequency_penalty\":0,"
	   "\"tools\":[],\"user\":\"u\"}");
	T_CHECK(r.kind == MS_API_CHAT, "kind %d", (int)r.kind);
	T_CHECK(r.model && !strcmp(r.model, "glm-4.7"), "model %s", r.model);
	T_EQ_U64(r.n_msgs, 4);
	check_msg(&r, 0, "system", "Be brief.");
	check_msg(&r, 1, "user", "Hi \"there\"\n");
	check_msg(&r, 2, "assistant", "Hello!");
	check_msg(&r, 3, "user", "caf\xc3\xa9 \xf0\x9f\x98\x80");
	T_CHECK(r.prompt == NULL, "prompt %s for chat", r.prompt);
	T_EQ_U64(r.max_tokens, 100);
	T_CHECK(r.temperature == 0.5f, "temperature %g", (double)r.temperature);
	T_CHECK(r.top_p == 0.9f, "top_p %g", (double)r.top_p);
	T_EQ_U64(r.top_k, 40);
	T_CHECK(r.min_p == 0.05f, "min_p %g", (double)r.min_p);
	T_CHECK(r.has_seed && r.seed == 1234, "seed %d %llu", r.has_seed,
		(unsigned long long)r.seed);
	T_EQ_U64(r.n_stop, 2);
	T_CHECK(r.stop[0] && !strcmp(r.stop[0], "\n\n"), "stop[0]");
	T_CHECK(r.stop[1] && !strcmp(r.stop[1], "END"), "stop[1]");
	T_CHECK(!r.stop[2] && !r.stop[3], "stop[2..3] set");
	T_CHECK(r.stream && r.include_usage, "stream %d include_usage %d",
		r.stream, r.include_usage);
	ms_api_req_free(&r);
	T_CHECK(zeroed(&r), "ms_api_req_free left the request unzeroed");
	ms_api_req_free(&r); /* twice: harmless */
}

static void test_completion(void)
{
	struct ms_api_req r;
	OK(&r, COMP,
	   "{\"model\":\"m\",\"prompt\":\"Once upon a time\",\"max_tokens\":16,"
	   "\"temperature\":1.2,\"seed\":42,\"stop\":\".\",\"stream\":false,"
	   "\"messages\":5}");
	T_CHECK(r.kind == MS_API_COMPLETION, "kind %d", (int)r.kind);
	T_CHECK(r.prompt && !strcmp(r.prompt, "Once upon a time"), "prompt %s",
		r.prompt);
	T_CHECK(r.msgs == NULL && r.n_msgs == 0, "messages for a completion");
	T_EQ_U64(r.max_tokens, 16);
	T_CHECK(r.temperature == 1.2f, "temperature %g", (double)r.temperature);
	T_CHECK(r.has_seed && r.seed == 42, "seed");
	T_EQ_U64(r.n_stop, 1);
	T_CHECK(r.stop[0] && !strcmp(r.stop[0], "."), "stop[0]");
	T_CHECK(!r.stream, "stream");
	ms_api_req_free(&r);

	OK(&r, COMP, "{\"prompt\":[\"only one\"]}");
	T_CHECK(r.prompt && !strcmp(r.prompt, "only one"), "prompt %s", r.prompt);
	ms_api_req_free(&r);

	OK(&r, COMP, "{\"prompt\":\"\"}");
	T_CHECK(r.prompt && !r.prompt[0], "empty prompt");
	ms_api_req_free(&r);
}

static void check_defaults(const struct ms_api_req *r)
{
	T_CHECK(r->model == NULL, "model %s", r->model);
	T_CHECK(r->max_tokens == -1, "max_tokens %d", r->max_tokens);
	T_CHECK(r->temperature == 1.0f, "temperature %g", (double)r->temperature);
	T_CHECK(r->top_p == 1.0f, "top_p %g", (double)r->top_p);
	T_CHECK(r->top_k == 0, "top_k %d", r->top_k);
	T_CHECK(r->min_p == 0.0f, "min_p %g", (double)r->min_p);
	T_CHECK(!r->has_seed && !r->seed, "seed");
	T_CHECK(r->n_stop == 0 && !r->stop[0], "stop");
	T_CHECK(!r->stream && !r->include_usage, "stream");
}

static void test_defaults(void)
{
	struct ms_api_req r;
	OK(&r, CHAT, "{" U1 "}");
	check_defaults(&r);
	T_EQ_U64(r.n_msgs, 1);
	check_msg(&r, 0, "user", "hi");
	ms_api_req_free(&r);

	/* null is absent for every optional field */
	OK(&r, CHAT, "{" U1 ",\"model\":null,\"max_tokens\":null,"
	   "\"max_completion_tokens\":null,\"temperature\":null,\"top_p\":null,"
	   "\"top_k\":null,\"min_p\":null,\"seed\":null,\"n\":null,\"stop\":null,"
	   "\"stream\":null,\"stream_options\":null}");
	check_defaults(&r);
	ms_api_req_free(&r);

	OK(&r, COMP, " \r\n\t{\"prompt\":\"p\",\"stream_options\":{}} \n\r\t ");
	check_defaults(&r);
	ms_api_req_free(&r);

	OK(&r, COMP, "{\"prompt\":\"p\",\"stream_options\":"
	   "{\"include_usage\":null,\"other\":1}}");
	T_CHECK(!r.include_usage, "include_usage");
	ms_api_req_free(&r);
}

static void test_content(void)
{
	struct ms_api_req r;
	OK(&r, CHAT, "{\"messages\":[{\"role\":\"developer\",\"content\":"
	   "[{\"type\":\"text\",\"text\":\"You are \"},{\"type\":\"text\","
	   "\"text\":\"\"},{\"text\":\"helpful.\",\"type\":\"text\","
	   "\"cache_control\":{}}]},{\"role\":\"user\",\"content\":[]},"
	   "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
	   "{\"role\":\"assistant\"}]}");
	T_EQ_U64(r.n_msgs, 4);
	check_msg(&r, 0, "system", "You are helpful.");
	check_msg(&r, 1, "user", "");
	check_msg(&r, 2, "assistant", "");
	check_msg(&r, 3, "assistant", "");
	ms_api_req_free(&r);

	/* an escaped backslash before "u0000" is not a NUL */
	OK(&r, CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	   "\"a\\\\u0000b\"}]}");
	check_msg(&r, 0, "user", "a\\u0000b");
	ms_api_req_free(&r);

	/* any other \u escape is fine */
	OK(&r, CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	   "\"\\u0001\\u0100\\u1000\"}]}");
	check_msg(&r, 0, "user", "\x01\xc4\x80\xe1\x80\x80");
	ms_api_req_free(&r);
}

static void test_numbers(void)
{
	struct ms_api_req r;

	/* max_completion_tokens wins, wherever it stands */
	OK(&r, CHAT, "{" U1 ",\"max_completion_tokens\":7,\"max_tokens\":9}");
	T_EQ_U64(r.max_tokens, 7);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"max_tokens\":9,\"max_completion_tokens\":null}");
	T_EQ_U64(r.max_tokens, 9);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"max_tokens\":2147483647}");
	T_EQ_U64(r.max_tokens, 2147483647);
	ms_api_req_free(&r);
	/* integral values in other spellings */
	OK(&r, CHAT, "{" U1 ",\"max_tokens\":1e3,\"top_k\":2.0,\"n\":1.0}");
	T_EQ_U64(r.max_tokens, 1000);
	T_EQ_U64(r.top_k, 2);
	ms_api_req_free(&r);

	/* the ends of the ranges */
	OK(&r, CHAT, "{" U1 ",\"temperature\":0,\"top_p\":1,\"min_p\":1}");
	T_CHECK(r.temperature == 0.0f && r.top_p == 1.0f && r.min_p == 1.0f,
		"ends: %g %g %g", (double)r.temperature, (double)r.top_p,
		(double)r.min_p);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"temperature\":2,\"top_p\":1e-30,\"min_p\":0}");
	T_CHECK(r.temperature == 2.0f && r.top_p > 0.0f, "ends: %g %g",
		(double)r.temperature, (double)r.top_p);
	ms_api_req_free(&r);

	/* seeds: negative as their pattern, the extremes */
	OK(&r, CHAT, "{" U1 ",\"seed\":-1}");
	T_CHECK(r.has_seed && r.seed == UINT64_MAX, "seed -1 -> %llu",
		(unsigned long long)r.seed);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"seed\":-9223372036854775808}");
	T_CHECK(r.seed == (uint64_t)1 << 63, "seed -2^63 -> %llu",
		(unsigned long long)r.seed);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"seed\":9223372036854775808}");
	T_CHECK(r.seed == (uint64_t)1 << 63, "seed 2^63 -> %llu",
		(unsigned long long)r.seed);
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"seed\":0}");
	T_CHECK(r.has_seed && r.seed == 0, "seed 0");
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"seed\":9007199254740992}");
	T_CHECK(r.seed == (uint64_t)1 << 53, "seed 2^53 -> %llu",
		(unsigned long long)r.seed);
	ms_api_req_free(&r);

	/* refused */
	BAD(CHAT, "{" U1 ",\"max_tokens\":0}", "max_tokens: 0 is outside [1, ");
	BAD(CHAT, "{" U1 ",\"max_tokens\":-1}", "max_tokens: -1 is outside");
	BAD(CHAT, "{" U1 ",\"max_tokens\":1.5}", "max_tokens: 1.5 is not an integer");
	BAD(CHAT, "{" U1 ",\"max_tokens\":\"10\"}",
	    "max_tokens: expected an integer, got a string");
	BAD(CHAT, "{" U1 ",\"max_tokens\":2147483648}", "max_tokens: 2147483648 is "
	    "outside");
	BAD(CHAT, "{" U1 ",\"max_tokens\":1e999}", "max_tokens: inf is not an "
	    "integer");
	BAD(CHAT, "{" U1 ",\"max_tokens\":true}", "max_tokens: expected an "
	    "integer, got a boolean");
	/* both given: both checked */
	BAD(CHAT, "{" U1 ",\"max_tokens\":0,\"max_completion_tokens\":5}",
	    "max_tokens: 0");
	BAD(CHAT, "{" U1 ",\"max_tokens\":5,\"max_completion_tokens\":0}",
	    "max_completion_tokens: 0 is outside");
	BAD(CHAT, "{" U1 ",\"max_completion_tokens\":[]}",
	    "max_completion_tokens: expected an integer, got an array");

	BAD(CHAT, "{" U1 ",\"temperature\":2.5}", "temperature: 2.5 is outside "
	    "[0, 2]");
	BAD(CHAT, "{" U1 ",\"temperature\":3.5}", "temperature: 3.5 is outside "
	    "[0, 2]");
	BAD(CHAT, "{" U1 ",\"temperature\":-0.1}", "temperature: -0.1 is outside");
	BAD(CHAT, "{" U1 ",\"temperature\":2.0000000001}", "temperature: "
	    "2.0000000001 is outside");
	BAD(CHAT, "{" U1 ",\"temperature\":\"1\"}", "temperature: expected a "
	    "number, got a string");
	BAD(CHAT, "{" U1 ",\"top_p\":0}", "top_p: 0 is outside (0, 1]");
	BAD(CHAT, "{" U1 ",\"top_p\":1.01}", "top_p: 1.01 is outside (0, 1]");
	BAD(CHAT, "{" U1 ",\"top_p\":-1}", "top_p: -1 is outside");
	BAD(CHAT, "{" U1 ",\"top_p\":1e-300}", "top_p: 1e-300 rounds to 0");
	BAD(CHAT, "{" U1 ",\"top_p\":{}}", "top_p: expected a number, got an "
	    "object");
	BAD(CHAT, "{" U1 ",\"min_p\":1.5}", "min_p: 1.5 is outside [0, 1]");
	BAD(CHAT, "{" U1 ",\"min_p\":-0.5}", "min_p: -0.5 is outside [0, 1]");
	BAD(CHAT, "{" U1 ",\"min_p\":false}", "min_p: expected a number");
	BAD(CHAT, "{" U1 ",\"top_k\":-1}", "top_k: -1 is outside [0, ");
	BAD(CHAT, "{" U1 ",\"top_k\":1.5}", "top_k: 1.5 is not an integer");
	BAD(CHAT, "{" U1 ",\"top_k\":\"40\"}", "top_k: expected an integer");
	BAD(CHAT, "{" U1 ",\"seed\":1.5}", "seed: 1.5 is not an integer");
	BAD(CHAT, "{" U1 ",\"seed\":18446744073709551616}", "seed: "
	    "18446744073709551616 is outside");
	BAD(CHAT, "{" U1 ",\"seed\":-9223372036854777856}", "seed: ");
	BAD(CHAT, "{" U1 ",\"seed\":1e400}", "seed: inf is not an integer");
	BAD(CHAT, "{" U1 ",\"seed\":\"7\"}", "seed: expected an integer, got a "
	    "string");
	BAD(CHAT, "{" U1 ",\"n\":2}", "n: 2 is not supported");
	BAD(CHAT, "{" U1 ",\"n\":0}", "n: 0 is not supported");
	BAD(CHAT, "{" U1 ",\"n\":1.5}", "n: 1.5 is not supported");
	BAD(CHAT, "{" U1 ",\"n\":\"1\"}", "n: expected an integer, got a string");
}

static void test_stop_stream(void)
{
	struct ms_api_req r;
	char body[1024], s256[257], s257[258];
	memset(s256, 'x', 256);
	s256[256] = '\0';
	memset(s257, 'y', 257);
	s257[257] = '\0';

	OK(&r, CHAT, "{" U1 ",\"stop\":[\"a\",\"b\",\"c\",\"d\"]}");
	T_EQ_U64(r.n_stop, 4);
	T_CHECK(r.stop[3] && !strcmp(r.stop[3], "d"), "stop[3]");
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 ",\"stop\":[]}");
	T_EQ_U64(r.n_stop, 0);
	ms_api_req_free(&r);
	snprintf(body, sizeof(body), "{" U1 ",\"stop\":[\"%s\"]}", s256);
	OK(&r, CHAT, body);
	T_CHECK(r.n_stop == 1 && strlen(r.stop[0]) == 256, "256-byte stop");
	ms_api_req_free(&r);

	BAD(CHAT, "{" U1 ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}",
	    "stop: more than 4 strings");
	BAD(CHAT, "{" U1 ",\"stop\":\"\"}", "stop: an empty string");
	BAD(CHAT, "{" U1 ",\"stop\":[\"a\",\"\"]}", "stop[1]: an empty string");
	BAD(CHAT, "{" U1 ",\"stop\":[\"a\",5]}", "stop[1]: expected a string, got "
	    "a number");
	BAD(CHAT, "{" U1 ",\"stop\":[null]}", "stop[0]: expected a string, got "
	    "null");
	BAD(CHAT, "{" U1 ",\"stop\":7}", "stop: expected a string or an array of "
	    "strings, got a number");
	snprintf(body, sizeof(body), "{" U1 ",\"stop\":\"%s\"}", s257);
	BAD(CHAT, body, "stop: 257 bytes, at most 256");
	snprintf(body, sizeof(body), "{" U1 ",\"stop\":[\"a\",\"%s\"]}", s257);
	BAD(CHAT, body, "stop[1]: 257 bytes, at most 256");

	OK(&r, COMP, "{\"prompt\":\"p\",\"stream\":true,\"stream_options\":"
	   "{\"include_usage\":false}}");
	T_CHECK(r.stream && !r.include_usage, "stream %d usage %d", r.stream,
		r.include_usage);
	ms_api_req_free(&r);
	BAD(COMP, "{\"prompt\":\"p\",\"stream\":\"yes\"}", "stream: expected a "
	    "boolean, got a string");
	BAD(COMP, "{\"prompt\":\"p\",\"stream\":1}", "stream: expected a boolean, "
	    "got a number");
	BAD(COMP, "{\"prompt\":\"p\",\"stream_options\":true}", "stream_options: "
	    "expected an object, got a boolean");
	BAD(COMP, "{\"prompt\":\"p\",\"stream_options\":{\"include_usage\":1}}",
	    "stream_options.include_usage: expected a boolean, got a number");
	BAD(COMP, "{\"prompt\":\"p\",\"stream_options\":{\"include_usage\":true,"
	    "\"include_usage\":false}}", "stream_options.include_usage: given "
	    "more than once");
	BAD(COMP, "{\"prompt\":\"p\",\"model\":5}", "model: expected a string, "
	    "got a number");
}

static void test_messages(void)
{
	BAD(CHAT, "{}", "messages: missing");
	BAD(CHAT, "{\"prompt\":\"p\"}", "messages: missing");
	BAD(CHAT, "{\"messages\":null}", "messages: expected an array, got null");
	BAD(CHAT, "{\"messages\":\"hi\"}", "messages: expected an array, got a "
	    "string");
	BAD(CHAT, "{\"messages\":[]}", "messages: empty");
	BAD(CHAT, "{\"messages\":[\"hi\"]}", "messages[0]: expected an object, "
	    "got a string");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
	    "{\"role\":\"user\",\"content\":5}]}",
	    "messages[1].content: expected a string or an array of text parts");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":{}}]}",
	    "messages[0].content: expected a string or an array of text parts");
	BAD(CHAT, "{\"messages\":[{\"content\":\"a\"}]}", "messages[0].role: "
	    "missing");
	BAD(CHAT, "{\"messages\":[{\"role\":1,\"content\":\"a\"}]}",
	    "messages[0].role: expected a string, got a number");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
	    "{\"role\":\"tool\",\"content\":\"42\"}]}",
	    "messages[1].role: \"tool\" is not supported");
	BAD(CHAT, "{\"messages\":[{\"role\":\"function\",\"content\":\"a\"}]}",
	    "messages[0].role: \"function\" is not supported");
	BAD(CHAT, "{\"messages\":[{\"role\":\"User\",\"content\":\"a\"}]}",
	    "messages[0].role: \"User\" is not supported");
	/* a role that would break the line is shown tamed */
	BAD(CHAT, "{\"messages\":[{\"role\":\"a\\nb\",\"content\":\"a\"}]}",
	    "messages[0].role: \"a?b\" is not supported");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}",
	    "messages[0].content: null for a user message");
	BAD(CHAT, "{\"messages\":[{\"role\":\"system\"}]}",
	    "messages[0].content: missing for a system message");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
	    "messages[0].content[0].type: \"image_url\" parts are not supported");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"text\",\"text\":\"a\"},{\"text\":\"b\"}]}]}",
	    "messages[0].content[1].type: expected a string, got nothing");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"text\"}]}]}",
	    "messages[0].content[0].text: expected a string, got nothing");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"text\",\"text\":3}]}]}",
	    "messages[0].content[0].text: expected a string, got a number");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}",
	    "messages[0].content[0]: expected an object, got a string");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"role\":\"system\","
	    "\"content\":\"a\"}]}", "messages[0].role: given more than once");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"text\",\"text\":\"a\",\"text\":\"b\"}]}]}",
	    "messages[0].content[0].text: given more than once");

	/* the most messages, and one more */
	static const char one[] = "{\"role\":\"user\",\"content\":\"x\"},";
	size_t cap = 64 + (MS_API_MAX_MESSAGES + 1) * (sizeof(one) - 1);
	char *b = malloc(cap);
	if (!b)
		t_fatal("out of memory");
	for (int extra = 0; extra < 2; extra++) {
		size_t n = 0;
		n += (size_t)sprintf(b + n, "{\"messages\":[");
		for (int i = 0; i < MS_API_MAX_MESSAGES + extra; i++)
			n += (size_t)sprintf(b + n, "%s", one);
		b[n - 1] = ']';
		n += (size_t)sprintf(b + n, "}");
		if (!extra) {
			struct ms_api_req r;
			ok_at(__LINE__, &r, CHAT, b, n);
			T_EQ_U64(r.n_msgs, MS_API_MAX_MESSAGES);
			check_msg(&r, MS_API_MAX_MESSAGES - 1, "user", "x");
			ms_api_req_free(&r);
		} else {
			BAD_N(CHAT, b, n, "messages: more than 4096");
		}
	}
	free(b);
}

static void test_prompt(void)
{
	BAD(COMP, "{}", "prompt: missing");
	BAD(COMP, "{" U1 "}", "prompt: missing");
	BAD(COMP, "{\"prompt\":null}", "prompt: expected a string, got null");
	BAD(COMP, "{\"prompt\":5}", "prompt: expected a string, got a number");
	BAD(COMP, "{\"prompt\":[1,2,3]}", "prompt: token ids are not supported");
	BAD(COMP, "{\"prompt\":[[1,2],[3]]}", "prompt: token ids are not "
	    "supported");
	BAD(COMP, "{\"prompt\":[\"a\",\"b\"]}", "prompt: an array of 2 prompts "
	    "(only one prompt per request is supported)");
	BAD(COMP, "{\"prompt\":[]}", "prompt: an array of 0 prompts");
	BAD(COMP, "{\"prompt\":[true]}", "prompt[0]: expected a string, got a "
	    "boolean");
	BAD(COMP, "{\"prompt\":\"a\",\"prompt\":\"b\"}", "prompt: given more "
	    "than once");
}

static void test_body(void)
{
	struct ms_api_req r;
	BAD(CHAT, "", "body: empty");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",", "body: malformed JSON "
	    "near byte");
	BAD(CHAT, "{\"a\":", "body: malformed JSON near byte 4");
	BAD(CHAT, "{\"messages\" 1}", "body: malformed JSON near byte");
	BAD(CHAT, "{" U1 "}x", "body: unexpected bytes after the JSON value, at "
	    "byte 45");
	BAD(CHAT, "{" U1 "} {}", "body: unexpected bytes after the JSON value");
	BAD_N(CHAT, "{" U1 "}\0", sizeof("{" U1 "}"), "body: unexpected bytes");
	BAD(CHAT, "[]", "body: not a JSON object (got an array)");
	BAD(CHAT, "5", "body: not a JSON object (got a number)");
	BAD(CHAT, "\"hi\"", "body: not a JSON object (got a string)");
	BAD(CHAT, "null", "body: not a JSON object (got null)");
	BAD(COMP, "true", "body: not a JSON object (got a boolean)");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}",
	    "body: a string holds a NUL (\\u0000 at byte");
	BAD(COMP, "{\"prompt\":\"p\",\"model\":\"m\\u0000x\"}", "holds a NUL");
	/* in a key: "temperature\u0000x" would read as "temperature" */
	BAD(COMP, "{\"prompt\":\"p\",\"temperature\\u0000x\":9}", "holds a NUL");
	BAD(COMP, "{\"prompt\":\"p\",\"x\":[\"\\u0000\"]}", "holds a NUL");
	BAD_N(COMP, "{\"prompt\":\"a\0b\"}", 16, "body: a string holds a NUL (a "
	      "raw 0 byte at byte 12)");
	BAD(CHAT, "{" U1 ",\"temperature\":1,\"temperature\":0}",
	    "temperature: given more than once");
	BAD(CHAT, "{" U1 "," U1 "}", "messages: given more than once");

	/* depth: cJSON stops at 1000 levels, refused, not a crash */
	size_t deep = 5000;
	char *b = malloc(2 * deep + 64);
	if (!b)
		t_fatal("out of memory");
	size_t n = (size_t)sprintf(b, "{\"x\":");
	memset(b + n, '[', deep);
	n += deep;
	memset(b + n, ']', deep);
	n += deep;
	b[n++] = '}';
	BAD_N(CHAT, b, n, "body: malformed JSON");
	free(b);

	/* size: exactly 1 MiB decodes (white space to fill), one more byte
	 * does not, whatever it is */
	b = malloc(MS_API_MAX_BODY + 1);
	if (!b)
		t_fatal("out of memory");
	n = (size_t)sprintf(b, "{\"prompt\":\"p\"}");
	memset(b + n, ' ', MS_API_MAX_BODY + 1 - n);
	ok_at(__LINE__, &r, COMP, b, MS_API_MAX_BODY);
	ms_api_req_free(&r);
	BAD_N(COMP, b, MS_API_MAX_BODY + 1, "body: 1048577 bytes, at most 1048576");
	/* and a 1 MiB string */
	n = (size_t)sprintf(b, "{\"prompt\":\"");
	memset(b + n, 'a', MS_API_MAX_BODY - n - 2);
	memcpy(b + MS_API_MAX_BODY - 2, "\"}", 2);
	ok_at(__LINE__, &r, COMP, b, MS_API_MAX_BODY);
	T_CHECK(r.prompt && strlen(r.prompt) == MS_API_MAX_BODY - 13,
		"1 MiB prompt: %zu", r.prompt ? strlen(r.prompt) : 0);
	ms_api_req_free(&r);
	free(b);

	/* a UTF-8 byte-order mark is skipped */
	ok_at(__LINE__, &r, COMP, "\xef\xbb\xbf{\"prompt\":\"p\"}", 17);
	ms_api_req_free(&r);
}

static void test_misc(void)
{
	struct ms_api_req r;
	/* err may be NULL */
	memset(&r, 0xa5, sizeof(r));
	int rc = ms_api_req_parse(&r, CHAT, "{}", 2, NULL);
	T_CHECK(rc == -EINVAL && zeroed(&r), "NULL err: rc %d", rc);
	rc = ms_api_req_parse(&r, COMP, "{\"prompt\":\"p\"}", 14, NULL);
	T_CHECK(rc == 0, "NULL err, good body: rc %d", rc);
	ms_api_req_free(&r);

	/* a kind that is neither */
	struct ms_err err;
	memset(&r, 0xa5, sizeof(r));
	rc = ms_api_req_parse(&r, (enum ms_api_kind)7, "{\"prompt\":\"p\"}", 14,
			      &err);
	T_CHECK(rc == -EINVAL && zeroed(&r) && strstr(err.msg, "kind"),
		"kind 7: rc %d '%s'", rc, err.msg);

	/* free on a zeroed struct, and on NULL */
	memset(&r, 0, sizeof(r));
	ms_api_req_free(&r);
	T_CHECK(zeroed(&r), "free of a zeroed request");
	ms_api_req_free(NULL);

	/* the same struct reused: the second parse starts afresh */
	OK(&r, CHAT, "{" U1 ",\"stop\":[\"a\",\"b\"],\"model\":\"m\"}");
	ms_api_req_free(&r);
	OK(&r, CHAT, "{" U1 "}");
	T_CHECK(!r.model && !r.n_stop && !r.stop[0], "leftovers");
	ms_api_req_free(&r);

	/* a late error frees everything made before it (ASan's leak check) */
	BAD(CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
	    "[{\"type\":\"text\",\"text\":\"a\"}]},{\"role\":\"user\",\"content\":"
	    "\"b\"}],\"stop\":[\"x\",\"y\"],\"stream_options\":{\"include_usage\":"
	    "\"no\"}}", "stream_options.include_usage: expected a boolean");
	BAD(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
	    "{\"role\":\"user\",\"content\":\"b\"},{\"role\":\"x\"}]}",
	    "messages[2].role");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	test_full_chat();
	test_completion();
	test_defaults();
	test_content();
	test_numbers();
	test_stop_stream();
	test_messages();
	test_prompt();
	test_body();
	test_misc();
	if (!t_failures)
		printf("t_api_request: every check passed\n");
	return t_done();
}
