/*
 * request.c - OpenAI request bodies decoded into struct ms_api_req.
 *
 * libcjson builds the tree; everything after that is ours. The body comes
 * from the network, so it is treated like a GGUF file: every value is
 * checked for its JSON type and its range before it is used, and what
 * cannot be represented exactly is refused rather than rounded or clamped
 * (a max_tokens of 1.5 is an error, not 1).
 *
 * Three things cJSON does not do for us:
 *
 *  - It parses a length-bounded buffer, but stops after the first value.
 *    We insist the rest of the body be white space, so that "{}{...}" or a
 *    body cut short by a proxy is not half-read.
 *  - Its strings are C strings: a "\u0000" escape (or a raw NUL byte, which
 *    cJSON also copies) silently ends the string early, so "stop":"a\u0000b"
 *    would become "a" and a key "model\u0000x" would become "model". We scan
 *    the raw text for them (a small state machine over the already-validated
 *    JSON) and refuse the whole body.
 *  - With duplicate keys it answers the first. A proxy in front of us may
 *    read the last; to leave no room for that disagreement, a field we read
 *    that is given twice in the same object is an error. Unknown fields are
 *    never looked at, duplicates or not.
 *
 * Each object is walked once against a table of the names we read (so
 * 4096 messages cost 4096 short walks, not 4096 x fields lookups). An
 * optional field whose value is null counts as absent, as OpenAI's own
 * server treats it; a required one (messages, prompt) that is null is a
 * type error.
 *
 * The error path is one label: whatever was copied into the request so far
 * is freed by ms_api_req_free, which also zeroes it.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "request.h"

/* The kinds of JSON value, as an error names them ("got a string"). */
static const char *rq_type(const cJSON *v)
{
	if (!v)
		return "nothing";
	switch (v->type & 0xff) {
	case cJSON_False:
	case cJSON_True:
		return "a boolean";
	case cJSON_NULL:
		return "null";
	case cJSON_Number:
		return "a number";
	case cJSON_String:
		return "a string";
	case cJSON_Array:
		return "an array";
	case cJSON_Object:
		return "an object";
	default:
		return "an unknown value";
	}
}

/* A double as the shortest text that reads back the same ("3.5", "0.1",
 * "1e+300"; integers below 1e21 written out), for error messages. */
static const char *rq_num(double d, char *buf, size_t cap)
{
	if (d == trunc(d) && fabs(d) < 1e21) { /* integers in full */
		snprintf(buf, cap, "%.0f", d);
		return buf;
	}
	snprintf(buf, cap, "%.15g", d);
	if (strtod(buf, NULL) != d)
		snprintf(buf, cap, "%.17g", d);
	return buf;
}

/* A string from the body, made safe to put in a one-line message: at most
 * 32 bytes, anything outside printable ASCII shown as '?'. */
static const char *rq_quote(const char *s, char *buf, size_t cap)
{
	size_t n = 0;
	for (; *s && n + 4 < cap && n < 32; s++)
		buf[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
	if (*s && n + 4 <= cap) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}

/*
 * The first of the raw NUL byte or the "\u0000" escape inside a string of
 * the JSON text p[0..n) (which cJSON has already accepted, so quotes and
 * escapes are balanced): its offset, or -1 when there is none. The four hex
 * digits of any other \u escape are neither '"' nor '\\', so stepping over
 * just the 'u' is enough. Outside strings a NUL byte is not JSON at all and
 * cJSON has refused it already; it is reported here anyway.
 */
static long rq_find_nul(const char *p, size_t n, bool *escaped)
{
	bool in_str = false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '\0') {
			*escaped = false;
			return (long)i;
		}
		if (!in_str) {
			in_str = c == '"';
			continue;
		}
		if (c == '"') {
			in_str = false;
			continue;
		}
		if (c != '\\' || i + 1 >= n)
			continue;
		i++; /* the escaped character */
		if (p[i] == 'u' && i + 4 < n && !memcmp(p + i + 1, "0000", 4)) {
			*escaped = true;
			return (long)(i - 1);
		}
	}
	return -1;
}

/*
 * Finds the fields named in names[0..n) among obj's members into out[]
 * (NULL: absent). A NULL name is a field this request does not read. A
 * member named twice is an error "<where><name>: given more than once".
 */
static int rq_collect(const cJSON *obj, const char *where,
		      const char *const *names, size_t n, const cJSON **out,
		      struct ms_err *err)
{
	for (size_t i = 0; i < n; i++)
		out[i] = NULL;
	for (const cJSON *c = obj->child; c; c = c->next) {
		if (!c->string)
			continue;
		for (size_t i = 0; i < n; i++) {
			if (!names[i] || strcmp(c->string, names[i]))
				continue;
			if (out[i])
				return ms_err_set(err, -EINVAL,
						  "%s%s: given more than once",
						  where, names[i]);
			out[i] = c;
			break;
		}
	}
	return 0;
}

/* out[i] = NULL where it is JSON null: optional fields, null is absent. */
static void rq_null_absent(const cJSON **out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (out[i] && cJSON_IsNull(out[i]))
			out[i] = NULL;
}

static int rq_strdup(const char *s, char **out, struct ms_err *err)
{
	*out = strdup(s);
	if (!*out)
		return ms_err_set(err, -ENOMEM, "out of memory copying a string");
	return 0;
}

/*
 * A number within [lo, hi] (lo excluded when lo_open), refused when it is
 * not a number at all. The message names the interval as the header does.
 */
static int rq_real(const cJSON *v, const char *name, double lo, bool lo_open,
		   double hi, double *out, struct ms_err *err)
{
	char b[40];
	if (!cJSON_IsNumber(v))
		return ms_err_set(err, -EINVAL, "%s: expected a number, got %s",
				  name, rq_type(v));
	double d = v->valuedouble;
	if (!(lo_open ? d > lo : d >= lo) || !(d <= hi))
		return ms_err_set(err, -EINVAL, "%s: %s is outside %c%g, %g]",
				  name, rq_num(d, b, sizeof(b)),
				  lo_open ? '(' : '[', lo, hi);
	*out = d;
	return 0;
}

/* A float parameter: rq_real, and the float it becomes must still be
 * inside (a tiny positive top_p would round to 0). */
static int rq_float(const cJSON *v, const char *name, double lo, bool lo_open,
		    double hi, float *out, struct ms_err *err)
{
	double d = 0;
	int rc = rq_real(v, name, lo, lo_open, hi, &d, err);
	if (rc)
		return rc;
	float f = (float)d;
	if (lo_open && !(f > lo)) {
		char b[40];
		return ms_err_set(err, -EINVAL, "%s: %s rounds to %g as a float, "
				  "outside (%g, %g]", name,
				  rq_num(d, b, sizeof(b)), (double)f, lo, hi);
	}
	*out = f;
	return 0;
}

/* An integer in [lo, hi]: a JSON number whose value is integral (1e3 and
 * 2.0 are; 1.5 is not). */
static int rq_int(const cJSON *v, const char *name, int64_t lo, int64_t hi,
		  int64_t *out, struct ms_err *err)
{
	char b[40];
	if (!cJSON_IsNumber(v))
		return ms_err_set(err, -EINVAL, "%s: expected an integer, got %s",
				  name, rq_type(v));
	double d = v->valuedouble;
	if (!isfinite(d) || d != trunc(d))
		return ms_err_set(err, -EINVAL, "%s: %s is not an integer", name,
				  rq_num(d, b, sizeof(b)));
	/* Compared as doubles first, so that 1e300 is not cast. lo and hi are
	 * small enough here (int32 range) to be exact doubles. */
	if (d < (double)lo || d > (double)hi)
		return ms_err_set(err, -EINVAL, "%s: %s is outside [%lld, %lld]",
				  name, rq_num(d, b, sizeof(b)), (long long)lo,
				  (long long)hi);
	*out = (int64_t)d;
	return 0;
}

/* The seed: any integer in [-2^63, 2^64), a negative one taken as its
 * 64-bit two's-complement pattern. A double holds such integers exactly
 * only up to 2^53; above that, the value is what the JSON text rounded to
 * (cJSON keeps no text), which is still a fixed, reproducible seed. */
static int rq_seed(const cJSON *v, uint64_t *out, struct ms_err *err)
{
	char b[40];
	if (!cJSON_IsNumber(v))
		return ms_err_set(err, -EINVAL, "seed: expected an integer, got %s",
				  rq_type(v));
	double d = v->valuedouble;
	if (!isfinite(d) || d != trunc(d))
		return ms_err_set(err, -EINVAL, "seed: %s is not an integer",
				  rq_num(d, b, sizeof(b)));
	if (d < -9223372036854775808.0 || d >= 18446744073709551616.0)
		return ms_err_set(err, -EINVAL, "seed: %s is outside [-2^63, 2^64)",
				  rq_num(d, b, sizeof(b)));
	*out = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
	return 0;
}

static int rq_bool(const cJSON *v, const char *name, bool *out,
		   struct ms_err *err)
{
	if (!cJSON_IsBool(v))
		return ms_err_set(err, -EINVAL, "%s: expected a boolean, got %s",
				  name, rq_type(v));
	*out = cJSON_IsTrue(v);
	return 0;
}

/* ---- chat messages ----------------------------------------------------------------- */

enum { MF_ROLE, MF_CONTENT, MF_COUNT };
static const char *const rq_msg_fields[MF_COUNT] = {
	[MF_ROLE] = "role",
	[MF_CONTENT] = "content",
};

enum { PF_TYPE, PF_TEXT, PF_COUNT };
static const char *const rq_part_fields[PF_COUNT] = {
	[PF_TYPE] = "type",
	[PF_TEXT] = "text",
};

/* The roles accepted, and what each is stored as. */
static const struct {
	const char *name, *as;
} rq_roles[] = {
	{ "system", "system" },
	{ "user", "user" },
	{ "assistant", "assistant" },
	{ "developer", "system" }, /* OpenAI's newer name for system */
};

/* Content as an array of parts: every part {"type":"text","text":"..."},
 * joined with nothing between them into a new string. `at`: "messages[i]". */
static int rq_parts(const cJSON *arr, const char *at, char **out,
		    struct ms_err *err)
{
	char w[96], q[48];
	const cJSON *f[PF_COUNT];
	size_t total = 0, i = 0;
	int rc;

	/* Pass 1: check every part, add up the lengths. */
	for (const cJSON *p = arr->child; p; p = p->next, i++) {
		snprintf(w, sizeof(w), "%s.content[%zu].", at, i);
		if (!cJSON_IsObject(p))
			return ms_err_set(err, -EINVAL, "%s.content[%zu]: expected "
					  "an object, got %s", at, i, rq_type(p));
		rc = rq_collect(p, w, rq_part_fields, PF_COUNT, f, err);
		if (rc)
			return rc;
		if (!cJSON_IsString(f[PF_TYPE]))
			return ms_err_set(err, -EINVAL, "%stype: expected a string, "
					  "got %s", w, rq_type(f[PF_TYPE]));
		if (strcmp(f[PF_TYPE]->valuestring, "text"))
			return ms_err_set(err, -EINVAL, "%stype: \"%s\" parts are not "
					  "supported (only \"text\")", w,
					  rq_quote(f[PF_TYPE]->valuestring, q,
						   sizeof(q)));
		if (!cJSON_IsString(f[PF_TEXT]))
			return ms_err_set(err, -EINVAL, "%stext: expected a string, "
					  "got %s", w, rq_type(f[PF_TEXT]));
		/* Cannot overflow (the body is at most 1 MiB); checked anyway. */
		if (__builtin_add_overflow(total, strlen(f[PF_TEXT]->valuestring),
					   &total))
			return ms_err_set(err, -EINVAL, "%s.content: too long", at);
	}

	/* Pass 2: join. */
	char *s = malloc(total + 1), *d = s;
	if (!s)
		return ms_err_set(err, -ENOMEM, "out of memory joining %s.content",
				  at);
	for (const cJSON *p = arr->child; p; p = p->next) {
		const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
		size_t n = strlen(t);
		memcpy(d, t, n);
		d += n;
	}
	*d = '\0';
	*out = s;
	return 0;
}

static int rq_message(const cJSON *m, size_t i, struct ms_api_msg *out,
		      struct ms_err *err)
{
	char at[40], w[48], q[48];
	const cJSON *f[MF_COUNT];
	int rc;

	snprintf(at, sizeof(at), "messages[%zu]", i);
	snprintf(w, sizeof(w), "%s.", at);
	if (!cJSON_IsObject(m))
		return ms_err_set(err, -EINVAL, "%s: expected an object, got %s",
				  at, rq_type(m));
	rc = rq_collect(m, w, rq_msg_fields, MF_COUNT, f, err);
	if (rc)
		return rc;

	const cJSON *role = f[MF_ROLE];
	if (!role)
		return ms_err_set(err, -EINVAL, "%s.role: missing", at);
	if (!cJSON_IsString(role))
		return ms_err_set(err, -EINVAL, "%s.role: expected a string, got %s",
				  at, rq_type(role));
	const char *as = NULL;
	for (size_t k = 0; k < sizeof(rq_roles) / sizeof(rq_roles[0]); k++)
		if (!strcmp(role->valuestring, rq_roles[k].name))
			as = rq_roles[k].as;
	if (!as)
		return ms_err_set(err, -EINVAL, "%s.role: \"%s\" is not supported "
				  "(system, user, assistant, developer)", at,
				  rq_quote(role->valuestring, q, sizeof(q)));
	bool assistant = !strcmp(as, "assistant");

	const cJSON *c = f[MF_CONTENT];
	if (!c || cJSON_IsNull(c)) {
		/* An assistant turn that only called tools has no content. */
		if (!assistant)
			return ms_err_set(err, -EINVAL, "%s.content: %s for a %s "
					  "message (only an assistant's may be)",
					  at, c ? "null" : "missing", as);
		rc = rq_strdup("", &out->content, err);
	} else if (cJSON_IsString(c)) {
		rc = rq_strdup(c->valuestring, &out->content, err);
	} else if (cJSON_IsArray(c)) {
		rc = rq_parts(c, at, &out->content, err);
	} else {
		return ms_err_set(err, -EINVAL, "%s.content: expected a string or "
				  "an array of text parts, got %s", at, rq_type(c));
	}
	if (rc)
		return rc;
	return rq_strdup(as, &out->role, err);
}

static int rq_messages(struct ms_api_req *r, const cJSON *v, struct ms_err *err)
{
	if (!v)
		return ms_err_set(err, -EINVAL, "messages: missing (a chat request "
				  "needs an array of messages)");
	if (!cJSON_IsArray(v))
		return ms_err_set(err, -EINVAL, "messages: expected an array, got %s",
				  rq_type(v));
	size_t n = 0;
	for (const cJSON *m = v->child; m; m = m->next)
		if (++n > MS_API_MAX_MESSAGES)
			return ms_err_set(err, -EINVAL, "messages: more than %d",
					  MS_API_MAX_MESSAGES);
	if (!n)
		return ms_err_set(err, -EINVAL, "messages: empty (at least one "
				  "message is needed)");
	r->msgs = calloc(n, sizeof(*r->msgs));
	if (!r->msgs)
		return ms_err_set(err, -ENOMEM, "out of memory for %zu messages", n);
	size_t i = 0;
	for (const cJSON *m = v->child; m; m = m->next, i++) {
		/* Counted as it goes, so ms_api_req_free frees what was made. */
		r->n_msgs = i + 1;
		int rc = rq_message(m, i, &r->msgs[i], err);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- completion prompt ------------------------------------------------------------- */

static int rq_prompt(struct ms_api_req *r, const cJSON *v, struct ms_err *err)
{
	if (!v)
		return ms_err_set(err, -EINVAL, "prompt: missing (a completion "
				  "request needs a prompt)");
	if (cJSON_IsString(v))
		return rq_strdup(v->valuestring, &r->prompt, err);
	if (!cJSON_IsArray(v))
		return ms_err_set(err, -EINVAL, "prompt: expected a string, got %s",
				  rq_type(v));
	size_t n = 0;
	for (const cJSON *p = v->child; p; p = p->next)
		n++;
	const cJSON *first = v->child;
	if (first && (cJSON_IsNumber(first) || cJSON_IsArray(first)))
		return ms_err_set(err, -EINVAL, "prompt: token ids are not supported "
				  "(give the prompt as a string)");
	if (n != 1)
		return ms_err_set(err, -EINVAL, "prompt: an array of %zu prompts "
				  "(only one prompt per request is supported)", n);
	if (!cJSON_IsString(first))
		return ms_err_set(err, -EINVAL, "prompt[0]: expected a string, "
				  "got %s", rq_type(first));
	return rq_strdup(first->valuestring, &r->prompt, err);
}

/* ---- common fields ----------------------------------------------------------------- */

static int rq_stop(struct ms_api_req *r, const cJSON *v, struct ms_err *err)
{
	char name[16];
	const cJSON *one[MS_API_MAX_STOP];
	size_t n = 0;

	if (cJSON_IsString(v)) {
		one[n++] = v;
	} else if (cJSON_IsArray(v)) {
		for (const cJSON *s = v->child; s; s = s->next) {
			if (n == MS_API_MAX_STOP)
				return ms_err_set(err, -EINVAL, "stop: more than %d "
						  "strings", MS_API_MAX_STOP);
			one[n++] = s;
		}
	} else {
		return ms_err_set(err, -EINVAL, "stop: expected a string or an "
				  "array of strings, got %s", rq_type(v));
	}
	for (size_t i = 0; i < n; i++) {
		if (cJSON_IsArray(v))
			snprintf(name, sizeof(name), "stop[%zu]", i);
		else
			snprintf(name, sizeof(name), "stop");
		if (!cJSON_IsString(one[i]))
			return ms_err_set(err, -EINVAL, "%s: expected a string, got %s",
					  name, rq_type(one[i]));
		size_t len = strlen(one[i]->valuestring);
		if (!len)
			return ms_err_set(err, -EINVAL, "%s: an empty string", name);
		if (len > MS_API_MAX_STOP_LEN)
			return ms_err_set(err, -EINVAL, "%s: %zu bytes, at most %d",
					  name, len, MS_API_MAX_STOP_LEN);
	}
	for (size_t i = 0; i < n; i++) {
		int rc = rq_strdup(one[i]->valuestring, &r->stop[i], err);
		if (rc)
			return rc;
		r->n_stop = i + 1;
	}
	return 0;
}

enum { SO_INCLUDE_USAGE, SO_COUNT };
static const char *const rq_stream_opt_fields[SO_COUNT] = {
	[SO_INCLUDE_USAGE] = "include_usage",
};

static int rq_stream_options(struct ms_api_req *r, const cJSON *v,
			     struct ms_err *err)
{
	const cJSON *f[SO_COUNT];
	if (!cJSON_IsObject(v))
		return ms_err_set(err, -EINVAL, "stream_options: expected an object, "
				  "got %s", rq_type(v));
	int rc = rq_collect(v, "stream_options.", rq_stream_opt_fields, SO_COUNT,
			    f, err);
	if (rc)
		return rc;
	rq_null_absent(f, SO_COUNT);
	if (f[SO_INCLUDE_USAGE])
		return rq_bool(f[SO_INCLUDE_USAGE], "stream_options.include_usage",
			       &r->include_usage, err);
	return 0;
}

/* The members of the body this decoder reads. */
enum {
	F_MODEL,
	F_MESSAGES,
	F_PROMPT,
	F_MAX_TOKENS,
	F_MAX_COMPLETION_TOKENS,
	F_TEMPERATURE,
	F_TOP_P,
	F_TOP_K,
	F_MIN_P,
	F_SEED,
	F_N,
	F_STOP,
	F_STREAM,
	F_STREAM_OPTIONS,
	F_COUNT
};
static const char *const rq_fields[F_COUNT] = {
	[F_MODEL] = "model",
	[F_MESSAGES] = "messages",
	[F_PROMPT] = "prompt",
	[F_MAX_TOKENS] = "max_tokens",
	[F_MAX_COMPLETION_TOKENS] = "max_completion_tokens",
	[F_TEMPERATURE] = "temperature",
	[F_TOP_P] = "top_p",
	[F_TOP_K] = "top_k",
	[F_MIN_P] = "min_p",
	[F_SEED] = "seed",
	[F_N] = "n",
	[F_STOP] = "stop",
	[F_STREAM] = "stream",
	[F_STREAM_OPTIONS] = "stream_options",
};

/* Every field of the (object) body into r, which starts zeroed. */
static int rq_decode(struct ms_api_req *r, const cJSON *root, struct ms_err *err)
{
	const char *names[F_COUNT];
	const cJSON *f[F_COUNT];
	int64_t i64;
	int rc;

	/* The other kind's main field is not read: not even for duplicates. */
	memcpy(names, rq_fields, sizeof(names));
	names[r->kind == MS_API_CHAT ? F_PROMPT : F_MESSAGES] = NULL;
	rc = rq_collect(root, "", names, F_COUNT, f, err);
	if (rc)
		return rc;

	/* Required: null is a type error there, so read before nulls go. */
	if (r->kind == MS_API_CHAT)
		rc = rq_messages(r, f[F_MESSAGES], err);
	else
		rc = rq_prompt(r, f[F_PROMPT], err);
	if (rc)
		return rc;
	rq_null_absent(f, F_COUNT);

	if (f[F_MODEL]) {
		if (!cJSON_IsString(f[F_MODEL]))
			return ms_err_set(err, -EINVAL, "model: expected a string, "
					  "got %s", rq_type(f[F_MODEL]));
		rc = rq_strdup(f[F_MODEL]->valuestring, &r->model, err);
		if (rc)
			return rc;
	}

	/* Both checked; the newer name wins when both are given. */
	static const int max_fields[] = { F_MAX_TOKENS, F_MAX_COMPLETION_TOKENS };
	for (size_t k = 0; k < 2; k++) {
		int fi = max_fields[k];
		if (!f[fi])
			continue;
		rc = rq_int(f[fi], rq_fields[fi], 1, INT32_MAX, &i64, err);
		if (rc)
			return rc;
		r->max_tokens = (int32_t)i64;
	}

	if (f[F_TEMPERATURE]) {
		rc = rq_float(f[F_TEMPERATURE], "temperature", 0, false, 2,
			      &r->temperature, err);
		if (rc)
			return rc;
	}
	if (f[F_TOP_P]) {
		rc = rq_float(f[F_TOP_P], "top_p", 0, true, 1, &r->top_p, err);
		if (rc)
			return rc;
	}
	if (f[F_MIN_P]) {
		rc = rq_float(f[F_MIN_P], "min_p", 0, false, 1, &r->min_p, err);
		if (rc)
			return rc;
	}
	if (f[F_TOP_K]) {
		rc = rq_int(f[F_TOP_K], "top_k", 0, INT32_MAX, &i64, err);
		if (rc)
			return rc;
		r->top_k = (int32_t)i64;
	}
	if (f[F_SEED]) {
		rc = rq_seed(f[F_SEED], &r->seed, err);
		if (rc)
			return rc;
		r->has_seed = true;
	}
	if (f[F_N]) {
		char b[40];
		if (!cJSON_IsNumber(f[F_N]))
			return ms_err_set(err, -EINVAL, "n: expected an integer, "
					  "got %s", rq_type(f[F_N]));
		if (f[F_N]->valuedouble != 1)
			return ms_err_set(err, -EINVAL, "n: %s is not supported "
					  "(only n = 1, one choice per request)",
					  rq_num(f[F_N]->valuedouble, b, sizeof(b)));
	}
	if (f[F_STOP]) {
		rc = rq_stop(r, f[F_STOP], err);
		if (rc)
			return rc;
	}
	if (f[F_STREAM]) {
		rc = rq_bool(f[F_STREAM], "stream", &r->stream, err);
		if (rc)
			return rc;
	}
	if (f[F_STREAM_OPTIONS]) {
		rc = rq_stream_options(r, f[F_STREAM_OPTIONS], err);
		if (rc)
			return rc;
	}
	return 0;
}

int ms_api_req_parse(struct ms_api_req *r, enum ms_api_kind kind,
		     const char *body, size_t len, struct ms_err *err)
{
	cJSON *root = NULL;
	const char *end = NULL;
	int rc;

	ms_err_clear(err);
	memset(r, 0, sizeof(*r));
	if (kind != MS_API_CHAT && kind != MS_API_COMPLETION)
		return ms_err_set(err, -EINVAL, "kind: %d is not a request kind",
				  (int)kind);
	if (len > MS_API_MAX_BODY)
		return ms_err_set(err, -EINVAL, "body: %zu bytes, at most %u",
				  len, MS_API_MAX_BODY);
	if (!len || !body)
		return ms_err_set(err, -EINVAL, "body: empty (expected a JSON "
				  "object)");

	root = cJSON_ParseWithLengthOpts(body, len, &end, false);
	if (!root) {
		size_t at = end && end >= body && end <= body + len ?
				    (size_t)(end - body) : 0;
		return ms_err_set(err, -EINVAL, "body: malformed JSON near byte %zu",
				  at);
	}
	/* One value, then white space only. */
	size_t at = end ? (size_t)(end - body) : len;
	while (at < len && (body[at] == ' ' || body[at] == '\t' ||
			    body[at] == '\n' || body[at] == '\r'))
		at++;
	if (at < len) {
		rc = ms_err_set(err, -EINVAL, "body: unexpected bytes after the JSON "
				"value, at byte %zu", at);
		goto out;
	}
	bool escaped = false;
	long nul = rq_find_nul(body, len, &escaped);
	if (nul >= 0) {
		rc = ms_err_set(err, -EINVAL, "body: a string holds a NUL (%s at "
				"byte %ld), which the server does not accept",
				escaped ? "\\u0000" : "a raw 0 byte", nul);
		goto out;
	}
	if (!cJSON_IsObject(root)) {
		rc = ms_err_set(err, -EINVAL, "body: not a JSON object (got %s)",
				rq_type(root));
		goto out;
	}

	r->kind = kind;
	r->max_tokens = -1;
	r->temperature = 1.0f;
	r->top_p = 1.0f;
	r->top_k = 0;
	r->min_p = 0.0f;
	rc = rq_decode(r, root, err);
out:
	cJSON_Delete(root);
	if (rc)
		ms_api_req_free(r);
	return rc;
}

void ms_api_req_free(struct ms_api_req *r)
{
	if (!r)
		return;
	free(r->model);
	for (size_t i = 0; r->msgs && i < r->n_msgs; i++) {
		free(r->msgs[i].role);
		free(r->msgs[i].content);
	}
	free(r->msgs);
	free(r->prompt);
	for (size_t i = 0; i < MS_API_MAX_STOP; i++)
		free(r->stop[i]);
	memset(r, 0, sizeof(*r));
}
