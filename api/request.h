/*
 * api/request.h - the OpenAI request bodies `moestream serve` accepts,
 * decoded from JSON (libcjson) into plain C, every field checked.
 *
 * POST /v1/chat/completions and POST /v1/completions. What the server does
 * not know is ignored (clients send many optional fields); what it knows
 * and cannot use is an error naming the field, with the type OpenAI's
 * errors give ("invalid_request_error").
 */
#ifndef MS_API_REQUEST_H
#define MS_API_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moestream/util.h"

#define MS_API_MAX_BODY (1u << 20)    /* bytes of a request body: 413 above */
#define MS_API_MAX_MESSAGES 4096
#define MS_API_MAX_STOP 4             /* as OpenAI */
#define MS_API_MAX_STOP_LEN 256       /* bytes of one stop string */

enum ms_api_kind {
	MS_API_CHAT,        /* /v1/chat/completions */
	MS_API_COMPLETION,  /* /v1/completions */
};

struct ms_api_msg {
	char *role;     /* "system", "user", "assistant" (others refused) */
	char *content;  /* a string, or the text parts of an array joined */
};

struct ms_api_req {
	enum ms_api_kind kind;
	char *model;                 /* NULL when absent */
	struct ms_api_msg *msgs;     /* chat: at least one */
	size_t n_msgs;
	char *prompt;                /* completion: a string (or an array of
					exactly one string) */
	int32_t max_tokens;          /* max_tokens or max_completion_tokens;
					-1 when absent: until an end token or
					the context's end */
	float temperature;           /* default 1 (OpenAI's); 0: greedy */
	float top_p;                 /* default 1 */
	int32_t top_k;               /* default 0 (off); llama-server's */
	float min_p;                 /* default 0 (off); llama-server's */
	bool has_seed;
	uint64_t seed;
	char *stop[MS_API_MAX_STOP]; /* a string or an array of up to 4 */
	size_t n_stop;
	bool stream;
	bool include_usage;          /* stream_options.include_usage */
};

/*
 * Decodes a request body of `len` bytes (not NUL-terminated) for `kind`.
 * 0 on success (free with ms_api_req_free); -EINVAL with err->msg naming the
 * field and what was wrong ("messages[1].content: expected a string or an
 * array of text parts"; "temperature: 3.5 is outside [0, 2]"), the request
 * zeroed. Limits: temperature [0, 2], top_p (0, 1], min_p [0, 1], top_k >= 0,
 * max_tokens >= 1 (0 is refused as OpenAI does), n (if given) must be 1,
 * seed an integer (negative values taken as their 64-bit pattern), stop
 * strings non-empty and at most MS_API_MAX_STOP_LEN bytes, no NUL byte in any
 * string. The body must be one JSON object.
 *
 * Also (api/request.c says why): the body is at most MS_API_MAX_BODY bytes
 * and nothing but white space may follow the object; a "\u0000" escape or a
 * raw NUL byte anywhere in a string refuses the whole body; an optional
 * field that is null counts as absent (messages and prompt are required, so
 * null there is an error); a field this decoder reads, given twice in one
 * object, is an error; integers may be written 2.0 or 1e3 but not 1.5; the
 * seed may be any integer in [-2^63, 2^64) (above 2^53 it is what the JSON
 * number rounded to as a double). Chat: role "developer" is stored as
 * "system"; content may be a string, an array of {"type":"text","text":...}
 * parts (joined with nothing between), or null/missing for an assistant
 * only (stored as ""). Completion: prompt is a string or an array of one
 * string. -ENOMEM (with a message) when an allocation fails; -EINVAL for
 * everything else, a bad `kind` included.
 */
int ms_api_req_parse(struct ms_api_req *r, enum ms_api_kind kind,
		     const char *body, size_t len, struct ms_err *err);
void ms_api_req_free(struct ms_api_req *r);

#endif
