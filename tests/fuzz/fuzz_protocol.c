/*
 * fuzz_protocol.c - libFuzzer target for the wire decoders (protocol.h).
 *
 * Every input goes through every decoder:
 *
 *   - ms_msg_decode_hdr on the whole input; when the header is good, the
 *     payload goes to the decoder(s) of its type (HELLO: both directions);
 *   - every payload decoder on the whole input as a payload (the experts
 *     decoder once per request type), so the fuzzer need not find a valid
 *     header to reach them.
 *
 * The contract checked on each call:
 *
 *   - rejected: a negative errno and a NUL-terminated message in `why`;
 *   - accepted: the fields satisfy what the decoder promises (counts within
 *     their caps, strings terminated, statuses in range, layers ascending);
 *   - round trip: what decodes re-encodes (the encoder must not refuse it),
 *     the encoding decodes again, and the two decoded values are equal;
 *     where the encoding is canonical (everything but the ERROR text after
 *     its NUL) the re-encoded bytes are the input bytes.
 *
 * And the other way: the input's bytes also fill each request/reply struct
 * (counts reduced to their caps), which is encoded and decoded; the decoder
 * may refuse only what breaks a rule the encoder does not check (a
 * non-finite score, a positive status, an unterminated string...), and what
 * it accepts must equal what was encoded.
 *
 * Decoded structs live in heap blocks of exactly their size, so a write past
 * one is an ASan report. A broken promise aborts so that libFuzzer keeps the
 * input.
 *
 * Only protocol.h and model.h (ms_type_get) are used: `make fuzz` links this
 * with daemon/protocol.c and the model/ sources. tests/t_fuzz_seeds_more.c
 * includes this file (with MS_FUZZ_NO_ENTRY defined) to run the committed
 * seeds in tests/fuzz/corpus/protocol as regression tests.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/model.h"
#include "moestream/protocol.h"

#define FP_MSG_CAP (MS_MSG_HDR_SIZE + MS_MSG_MAX_PAYLOAD)

/* What one input did: a bit per decoder that accepted it. */
#define FP_HDR 1
#define FP_HELLO_REQ 2
#define FP_HELLO_REP 4
#define FP_EXPERTS 8
#define FP_EXPERT_REP 16
#define FP_ERROR 32
#define FP_BLOB 64

static void fp_broken(const char *what, long long a, long long b)
{
	fprintf(stderr, "fuzz_protocol: contract broken: %s (%lld, %lld)\n", what,
		a, b);
	abort();
}

#define FP_CHECK(cond, a, b)                                                   \
	do {                                                                   \
		if (!(cond))                                                   \
			fp_broken(#cond, (long long)(a), (long long)(b));      \
	} while (0)

static void *fp_alloc(size_t n)
{
	void *p = malloc(n);
	if (!p) {
		fprintf(stderr, "fuzz_protocol: out of memory\n");
		abort();
	}
	memset(p, 0xa5, n); /* garbage: the decoder must set what it reports */
	return p;
}

/* A decoder's verdict: 0, or -errno with a terminated message. */
static void fp_check_rc(int rc, const char *why)
{
	FP_CHECK(rc <= 0, rc, 0);
	if (rc) {
		FP_CHECK(rc == -EBADMSG || rc == -EPROTONOSUPPORT, rc, 0);
		FP_CHECK(memchr(why, '\0', 128) != NULL, rc, 0);
		FP_CHECK(why[0] != '\0', rc, 0);
	}
}

/* ---- equality of decoded values ---------------------------------------------------- */

static bool fp_eq_hello_req(const struct ms_hello_req *a,
			    const struct ms_hello_req *b)
{
	return a->min_version == b->min_version &&
	       a->max_version == b->max_version && a->pid == b->pid &&
	       !memcmp(a->name, b->name, sizeof(a->name));
}

static bool fp_eq_layer(const struct ms_proto_layer *a,
			const struct ms_proto_layer *b)
{
	return a->block == b->block && a->n_proj == b->n_proj &&
	       !memcmp(a->proj, b->proj, sizeof(a->proj)) &&
	       !memcmp(a->type, b->type, sizeof(a->type)) &&
	       !memcmp(a->ne, b->ne, sizeof(a->ne)) &&
	       a->expert_bytes == b->expert_bytes && a->nextn == b->nextn;
}

static bool fp_eq_hello_rep(const struct ms_hello_rep *a,
			    const struct ms_hello_rep *b)
{
	if (a->status != b->status || a->version != b->version ||
	    memcmp(a->arch, b->arch, sizeof(a->arch)) || a->n_block != b->n_block ||
	    a->n_expert != b->n_expert || a->n_expert_used != b->n_expert_used ||
	    a->n_layers != b->n_layers || a->arena_size != b->arena_size)
		return false;
	for (uint32_t l = 0; l < a->n_layers; l++)
		if (!fp_eq_layer(&a->layers[l], &b->layers[l]))
			return false;
	return true;
}

static bool fp_eq_experts(const struct ms_experts_req *a,
			  const struct ms_experts_req *b)
{
	if (a->block != b->block || a->n != b->n || a->has_scores != b->has_scores)
		return false;
	if (memcmp(a->experts, b->experts, a->n * sizeof(a->experts[0])))
		return false;
	/* bit for bit: -0.0 stays -0.0 */
	return !a->has_scores ||
	       !memcmp(a->scores, b->scores, a->n * sizeof(a->scores[0]));
}

static bool fp_eq_expert_rep(const struct ms_expert_rep *a,
			     const struct ms_expert_rep *b)
{
	if (a->n != b->n)
		return false;
	for (uint32_t i = 0; i < a->n; i++) {
		const struct ms_expert_ent *x = &a->e[i], *y = &b->e[i];
		if (x->status != y->status || x->block != y->block ||
		    x->expert != y->expert || x->n_proj != y->n_proj ||
		    memcmp(x->off, y->off, sizeof(x->off)) ||
		    memcmp(x->len, y->len, sizeof(x->len)))
			return false;
	}
	return true;
}

static bool fp_eq_error(const struct ms_error_rep *a, const struct ms_error_rep *b)
{
	return a->status == b->status && !strcmp(a->msg, b->msg);
}

/* ---- what an accepted value promises ----------------------------------------------- */

static void fp_promise_hello_req(const struct ms_hello_req *r)
{
	FP_CHECK(memchr(r->name, '\0', sizeof(r->name)) != NULL, 0, 0);
	FP_CHECK(r->min_version <= r->max_version, r->min_version, r->max_version);
}

static void fp_promise_hello_rep(const struct ms_hello_rep *r)
{
	FP_CHECK(memchr(r->arch, '\0', sizeof(r->arch)) != NULL, 0, 0);
	FP_CHECK(r->n_layers <= MS_PROTO_MAX_LAYERS, r->n_layers, 0);
	FP_CHECK(r->n_expert >= 1 && r->n_expert <= 65535, r->n_expert, 0);
	FP_CHECK(r->n_expert_used <= r->n_expert, r->n_expert_used, r->n_expert);
	for (uint32_t l = 0; l < r->n_layers; l++) {
		const struct ms_proto_layer *L = &r->layers[l];
		FP_CHECK(L->n_proj == 2 || L->n_proj == 3, l, L->n_proj);
		FP_CHECK(L->block < r->n_block, L->block, r->n_block);
		FP_CHECK(!l || L->block > r->layers[l - 1].block, l, L->block);
		for (uint32_t j = 0; j < L->n_proj; j++) {
			FP_CHECK(L->proj[j] < MS_PROJ_COUNT, l, L->proj[j]);
			FP_CHECK(ms_type_get(L->type[j]) != NULL, l, L->type[j]);
		}
	}
}

static void fp_promise_experts(const struct ms_experts_req *r, uint16_t type)
{
	FP_CHECK(r->n >= 1 && r->n <= MS_MSG_MAX_EXPERTS, r->n, 0);
	FP_CHECK(!r->has_scores || type == MS_MSG_PREFETCH, type, r->has_scores);
	for (uint32_t i = 0; r->has_scores && i < r->n; i++)
		FP_CHECK(isfinite(r->scores[i]), i, 0);
}

static void fp_promise_expert_rep(const struct ms_expert_rep *r)
{
	FP_CHECK(r->n >= 1 && r->n <= MS_MSG_MAX_EXPERTS, r->n, 0);
	for (uint32_t i = 0; i < r->n; i++) {
		FP_CHECK(r->e[i].status <= 0, i, r->e[i].status);
		FP_CHECK(r->e[i].status || r->e[i].n_proj == 2 || r->e[i].n_proj == 3,
			 i, r->e[i].n_proj);
	}
}

static void fp_promise_error(const struct ms_error_rep *r)
{
	FP_CHECK(r->status < 0, r->status, 0);
	FP_CHECK(memchr(r->msg, '\0', sizeof(r->msg)) != NULL, 0, 0);
}

/* ---- round trips ------------------------------------------------------------------- */

/* Checks an encoder's result and the header it wrote; returns the payload
 * length. `want_type`, `want_id`: what the header must say. */
static uint32_t fp_check_encoded(const uint8_t *buf, int n, uint16_t want_type,
				 uint64_t want_id)
{
	FP_CHECK(n >= MS_MSG_HDR_SIZE && n <= FP_MSG_CAP, n, want_type);
	struct ms_msg_hdr h;
	char why[128];
	int rc = ms_msg_decode_hdr(buf, (size_t)n, &h, why);
	FP_CHECK(rc == 0, rc, want_type);
	FP_CHECK(h.type == want_type && h.id == want_id, h.type, want_type);
	FP_CHECK(h.len == (uint32_t)n - MS_MSG_HDR_SIZE, h.len, n);
	return h.len;
}

/* Decoded `r` from payload p[len] (id, type from its header or invented):
 * encode, decode again, compare; `canonical`: the bytes must be the same. */
static void fp_rt_hello_req(const struct ms_hello_req *r, const uint8_t *p,
			    uint32_t len, uint64_t id, uint8_t *buf)
{
	int n = ms_msg_encode_hello_req(buf, id, r);
	uint32_t plen = fp_check_encoded(buf, n, MS_MSG_HELLO, id);
	FP_CHECK(plen == len && !memcmp(buf + MS_MSG_HDR_SIZE, p, len), plen, len);
	struct ms_hello_req *b = fp_alloc(sizeof(*b));
	char why[128];
	int rc = ms_msg_decode_hello_req(buf + MS_MSG_HDR_SIZE, plen, b, why);
	FP_CHECK(rc == 0, rc, 0);
	FP_CHECK(fp_eq_hello_req(r, b), 0, 0);
	free(b);
}

static void fp_rt_hello_rep(const struct ms_hello_rep *r, const uint8_t *p,
			    uint32_t len, uint64_t id, uint8_t *buf)
{
	int n = ms_msg_encode_hello_rep(buf, id, r);
	uint32_t plen = fp_check_encoded(buf, n, MS_MSG_HELLO, id);
	FP_CHECK(plen == len && !memcmp(buf + MS_MSG_HDR_SIZE, p, len), plen, len);
	struct ms_hello_rep *b = fp_alloc(sizeof(*b));
	char why[128];
	int rc = ms_msg_decode_hello_rep(buf + MS_MSG_HDR_SIZE, plen, b, why);
	FP_CHECK(rc == 0, rc, 0);
	FP_CHECK(fp_eq_hello_rep(r, b), 0, 0);
	free(b);
}

static void fp_rt_experts(const struct ms_experts_req *r, uint16_t type,
			  const uint8_t *p, uint32_t len, uint64_t id, uint8_t *buf)
{
	int n = ms_msg_encode_experts(buf, type, id, r);
	uint32_t plen = fp_check_encoded(buf, n, type, id);
	FP_CHECK(plen == len && !memcmp(buf + MS_MSG_HDR_SIZE, p, len), plen, len);
	struct ms_experts_req *b = fp_alloc(sizeof(*b));
	char why[128];
	int rc = ms_msg_decode_experts(buf + MS_MSG_HDR_SIZE, plen, type, b, why);
	FP_CHECK(rc == 0, rc, type);
	FP_CHECK(fp_eq_experts(r, b), type, 0);
	free(b);
}

static void fp_rt_expert_rep(const struct ms_expert_rep *r, const uint8_t *p,
			     uint32_t len, uint64_t id, uint8_t *buf)
{
	int n = ms_msg_encode_expert_rep(buf, id, r);
	uint32_t plen = fp_check_encoded(buf, n, MS_MSG_EXPERT, id);
	FP_CHECK(plen == len && !memcmp(buf + MS_MSG_HDR_SIZE, p, len), plen, len);
	struct ms_expert_rep *b = fp_alloc(sizeof(*b));
	char why[128];
	int rc = ms_msg_decode_expert_rep(buf + MS_MSG_HDR_SIZE, plen, b, why);
	FP_CHECK(rc == 0, rc, 0);
	FP_CHECK(fp_eq_expert_rep(r, b), 0, 0);
	free(b);
}

static void fp_rt_error(const struct ms_error_rep *r, uint32_t len, uint64_t id,
			uint8_t *buf)
{
	int n = ms_msg_encode_error(buf, id, r->status, r->msg);
	uint32_t plen = fp_check_encoded(buf, n, MS_MSG_ERROR, id);
	/* Not canonical: the bytes after the message's NUL are not kept. */
	FP_CHECK(plen == len, plen, len);
	struct ms_error_rep *b = fp_alloc(sizeof(*b));
	char why[128];
	int rc = ms_msg_decode_error(buf + MS_MSG_HDR_SIZE, plen, b, why);
	FP_CHECK(rc == 0, rc, 0);
	FP_CHECK(fp_eq_error(r, b), r->status, b->status);
	free(b);
}

/* ---- the decoders on a payload ---------------------------------------------------------- */

/* Runs the decoder(s) for `type` (0: all) on payload p[len]; returns the
 * FP_* bits of those that accepted. */
static int fp_payload(const uint8_t *p, uint32_t len, uint16_t type, uint64_t id,
		      uint8_t *buf)
{
	int ret = 0, rc;
	char why[128];

	if (!type || type == MS_MSG_HELLO) {
		struct ms_hello_req *q = fp_alloc(sizeof(*q));
		memset(why, 0x5a, sizeof(why));
		rc = ms_msg_decode_hello_req(p, len, q, why);
		fp_check_rc(rc, why);
		if (!rc) {
			fp_promise_hello_req(q);
			fp_rt_hello_req(q, p, len, id, buf);
			ret |= FP_HELLO_REQ;
		}
		free(q);

		struct ms_hello_rep *r = fp_alloc(sizeof(*r));
		memset(why, 0x5a, sizeof(why));
		rc = ms_msg_decode_hello_rep(p, len, r, why);
		fp_check_rc(rc, why);
		if (!rc) {
			fp_promise_hello_rep(r);
			fp_rt_hello_rep(r, p, len, id, buf);
			ret |= FP_HELLO_REP;
		}
		free(r);
	}
	static const uint16_t req_types[] = { MS_MSG_ACQUIRE, MS_MSG_RELEASE,
					      MS_MSG_PREFETCH };
	for (size_t t = 0; t < 3; t++) {
		if (type && type != req_types[t])
			continue;
		struct ms_experts_req *q = fp_alloc(sizeof(*q));
		memset(why, 0x5a, sizeof(why));
		rc = ms_msg_decode_experts(p, len, req_types[t], q, why);
		fp_check_rc(rc, why);
		if (!rc) {
			fp_promise_experts(q, req_types[t]);
			fp_rt_experts(q, req_types[t], p, len, id, buf);
			ret |= FP_EXPERTS;
		}
		free(q);
	}
	if (!type || type == MS_MSG_EXPERT) {
		struct ms_expert_rep *r = fp_alloc(sizeof(*r));
		memset(why, 0x5a, sizeof(why));
		rc = ms_msg_decode_expert_rep(p, len, r, why);
		fp_check_rc(rc, why);
		if (!rc) {
			fp_promise_expert_rep(r);
			fp_rt_expert_rep(r, p, len, id, buf);
			ret |= FP_EXPERT_REP;
		}
		free(r);
	}
	if (!type || type == MS_MSG_ERROR) {
		struct ms_error_rep *r = fp_alloc(sizeof(*r));
		memset(why, 0x5a, sizeof(why));
		rc = ms_msg_decode_error(p, len, r, why);
		fp_check_rc(rc, why);
		if (!rc) {
			fp_promise_error(r);
			fp_rt_error(r, len, id, buf);
			ret |= FP_ERROR;
		}
		free(r);
	}
	if (type == MS_MSG_STATS || type == MS_MSG_PING) {
		/* Opaque payloads: the blob encoder copies them verbatim. */
		int n = ms_msg_encode_blob(buf, type, id, p, len);
		uint32_t plen = fp_check_encoded(buf, n, type, id);
		FP_CHECK(plen == len && !memcmp(buf + MS_MSG_HDR_SIZE, p, len), plen,
			 len);
		ret |= FP_BLOB;
	}
	return ret;
}

/* ---- encode first: structs filled from the input --------------------------------------- */

/* A cursor over the input that yields zeros once it runs out. */
struct fp_src {
	const uint8_t *p;
	size_t n, at;
};

static void fp_take(struct fp_src *s, void *dst, size_t n)
{
	uint8_t *d = dst;
	for (size_t i = 0; i < n; i++)
		d[i] = s->at < s->n ? s->p[s->at++] : 0;
}

static uint32_t fp_take_u32(struct fp_src *s)
{
	uint32_t v;
	fp_take(s, &v, sizeof(v));
	return v;
}

/* Encodes a struct built from the input; the decoder may refuse only what
 * `ok` says is against its rules, and must give back what was encoded. */
static void fp_encode_first(const uint8_t *data, size_t size, uint8_t *buf)
{
	struct fp_src s = { .p = data, .n = size };
	char why[128];
	int rc, n;
	uint64_t id;
	fp_take(&s, &id, sizeof(id));

	/* ACQUIRE / RELEASE / PREFETCH */
	struct ms_experts_req *q = fp_alloc(sizeof(*q)), *qb = fp_alloc(sizeof(*qb));
	static const uint16_t req_types[] = { MS_MSG_ACQUIRE, MS_MSG_RELEASE,
					      MS_MSG_PREFETCH };
	uint16_t type = req_types[fp_take_u32(&s) % 3];
	q->block = fp_take_u32(&s);
	q->n = 1 + fp_take_u32(&s) % MS_MSG_MAX_EXPERTS;
	q->has_scores = fp_take_u32(&s) & 1;
	fp_take(&s, q->experts, q->n * sizeof(q->experts[0]));
	bool finite = true;
	if (q->has_scores) {
		fp_take(&s, q->scores, q->n * sizeof(q->scores[0]));
		for (uint32_t i = 0; i < q->n; i++)
			finite = finite && isfinite(q->scores[i]);
	}
	n = ms_msg_encode_experts(buf, type, id, q);
	uint32_t plen = fp_check_encoded(buf, n, type, id);
	rc = ms_msg_decode_experts(buf + MS_MSG_HDR_SIZE, plen, type, qb, why);
	fp_check_rc(rc, why);
	bool sent_scores = type == MS_MSG_PREFETCH && q->has_scores;
	FP_CHECK(!rc || (sent_scores && !finite), rc, type);
	if (!rc) {
		if (!sent_scores)
			q->has_scores = false; /* not on the wire */
		FP_CHECK(fp_eq_experts(q, qb), type, 0);
	}
	free(q);
	free(qb);

	/* EXPERT */
	struct ms_expert_rep *r = fp_alloc(sizeof(*r)), *rb = fp_alloc(sizeof(*rb));
	r->n = 1 + fp_take_u32(&s) % 8;
	bool valid = true;
	for (uint32_t i = 0; i < r->n; i++) {
		struct ms_expert_ent *e = &r->e[i];
		e->status = (int32_t)fp_take_u32(&s);
		e->block = fp_take_u32(&s);
		e->expert = fp_take_u32(&s);
		e->n_proj = fp_take_u32(&s);
		fp_take(&s, e->off, sizeof(e->off));
		fp_take(&s, e->len, sizeof(e->len));
		valid = valid && e->status <= 0 &&
			(e->status || e->n_proj == 2 || e->n_proj == 3);
	}
	n = ms_msg_encode_expert_rep(buf, id, r);
	plen = fp_check_encoded(buf, n, MS_MSG_EXPERT, id);
	rc = ms_msg_decode_expert_rep(buf + MS_MSG_HDR_SIZE, plen, rb, why);
	fp_check_rc(rc, why);
	FP_CHECK(!rc == valid, rc, valid);
	if (!rc)
		FP_CHECK(fp_eq_expert_rep(r, rb), 0, 0);
	free(r);
	free(rb);

	/* ERROR: any status, any text (truncated to 255 bytes by the encoder) */
	struct ms_error_rep *er = fp_alloc(sizeof(*er));
	int32_t status = (int32_t)fp_take_u32(&s);
	char text[300];
	fp_take(&s, text, sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	n = ms_msg_encode_error(buf, id, status, text);
	plen = fp_check_encoded(buf, n, MS_MSG_ERROR, id);
	rc = ms_msg_decode_error(buf + MS_MSG_HDR_SIZE, plen, er, why);
	fp_check_rc(rc, why);
	FP_CHECK(!rc == (status < 0), rc, status);
	if (!rc)
		FP_CHECK(!strncmp(er->msg, text, sizeof(er->msg) - 1) &&
			 strlen(er->msg) < sizeof(er->msg), 0, 0);
	free(er);

	/* HELLO request */
	struct ms_hello_req *hq = fp_alloc(sizeof(*hq)), *hqb = fp_alloc(sizeof(*hqb));
	fp_take(&s, hq, sizeof(*hq));
	n = ms_msg_encode_hello_req(buf, id, hq);
	plen = fp_check_encoded(buf, n, MS_MSG_HELLO, id);
	rc = ms_msg_decode_hello_req(buf + MS_MSG_HDR_SIZE, plen, hqb, why);
	fp_check_rc(rc, why);
	valid = memchr(hq->name, '\0', sizeof(hq->name)) &&
		hq->min_version <= hq->max_version;
	FP_CHECK(!rc == valid, rc, valid);
	if (!rc)
		FP_CHECK(fp_eq_hello_req(hq, hqb), 0, 0);
	free(hq);
	free(hqb);

	/* HELLO reply: a few layers with fields from the input */
	struct ms_hello_rep *hr = fp_alloc(sizeof(*hr)), *hrb = fp_alloc(sizeof(*hrb));
	hr->status = (int32_t)fp_take_u32(&s);
	hr->version = (uint16_t)fp_take_u32(&s);
	fp_take(&s, hr->arch, sizeof(hr->arch));
	hr->n_block = fp_take_u32(&s) % 100000;
	hr->n_expert = fp_take_u32(&s) % 70000;
	hr->n_expert_used = fp_take_u32(&s) % 70000;
	hr->n_layers = fp_take_u32(&s) % 6;
	hr->arena_size = (uint64_t)fp_take_u32(&s) << 20;
	valid = memchr(hr->arch, '\0', sizeof(hr->arch)) && hr->n_expert >= 1 &&
		hr->n_expert <= 65535 && hr->n_expert_used <= hr->n_expert;
	for (uint32_t l = 0; l < hr->n_layers; l++) {
		struct ms_proto_layer *L = &hr->layers[l];
		L->block = fp_take_u32(&s) % 200;
		L->n_proj = 2 + fp_take_u32(&s) % 3; /* 2, 3, or 4 (bad) */
		for (int j = 0; j < 3; j++) {
			L->proj[j] = fp_take_u32(&s) % 6;
			L->type[j] = fp_take_u32(&s) % 48;
		}
		fp_take(&s, L->ne, sizeof(L->ne));
		L->expert_bytes = fp_take_u32(&s);
		L->nextn = (uint8_t)fp_take_u32(&s);
		valid = valid && (L->n_proj == 2 || L->n_proj == 3) &&
			L->block < hr->n_block &&
			(!l || L->block > hr->layers[l - 1].block);
		for (uint32_t j = 0; j < L->n_proj && j < 3; j++)
			valid = valid && L->proj[j] < MS_PROJ_COUNT &&
				ms_type_get(L->type[j]) != NULL;
	}
	n = ms_msg_encode_hello_rep(buf, id, hr);
	plen = fp_check_encoded(buf, n, MS_MSG_HELLO, id);
	rc = ms_msg_decode_hello_rep(buf + MS_MSG_HDR_SIZE, plen, hrb, why);
	fp_check_rc(rc, why);
	FP_CHECK(!rc == valid, rc, valid);
	if (!rc)
		FP_CHECK(fp_eq_hello_rep(hr, hrb), 0, 0);
	free(hr);
	free(hrb);
}

/* ---- the entry ---------------------------------------------------------------------------- */

/* The entry both the fuzzer and t_fuzz_seeds_more use: the FP_* bits of the
 * decoders that accepted the input (as a whole message, and as a payload). */
static int fuzz_protocol_one(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	int ret = 0;
	if (!buf)
		buf = fp_alloc(FP_MSG_CAP);

	/* 1. As a whole message. */
	struct ms_msg_hdr h;
	char why[128];
	memset(why, 0x5a, sizeof(why));
	int rc = ms_msg_decode_hdr(data, size, &h, why);
	fp_check_rc(rc, why);
	if (!rc) {
		FP_CHECK(h.magic == MS_MSG_MAGIC && h.version == MS_PROTO_VERSION,
			 h.magic, h.version);
		FP_CHECK(h.type >= 1 && h.type <= MS_MSG_TYPE_MAX, h.type, 0);
		FP_CHECK(h.flags == 0, h.flags, 0);
		FP_CHECK(h.len <= MS_MSG_MAX_PAYLOAD &&
			 (size_t)h.len + MS_MSG_HDR_SIZE == size, h.len, size);
		ret |= FP_HDR;
		int got = fp_payload(data + MS_MSG_HDR_SIZE, h.len, h.type, h.id, buf);
		/* The header re-encodes to the same 24 bytes. */
		if (got)
			FP_CHECK(!memcmp(buf, data, MS_MSG_HDR_SIZE), h.type, 0);
		ret |= got;
	}

	/* 2. As a bare payload, through every decoder. */
	if (size <= MS_MSG_MAX_PAYLOAD)
		ret |= fp_payload(data, (uint32_t)size, 0, 42, buf);

	/* 3. Structs built from the input, encoded then decoded. */
	fp_encode_first(data, size, buf);
	return ret;
}

#ifndef MS_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_protocol_one(data, size);
	return 0;
}
#endif
