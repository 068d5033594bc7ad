/*
 * protocol.c - encoding and decoding of the wire messages (protocol.h).
 *
 * Both ends use these, so there is one place where the byte layout lives.
 * Decoders trust nothing: every length is checked against what arrived,
 * every count against its cap, every enum against its range, and a string
 * must be NUL-terminated inside its field.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moestream/model.h"
#include "moestream/protocol.h"

/* ---- a bounded little-endian writer and reader -------------------------------- */

struct wr {
	uint8_t *p;
	uint32_t n, cap;
	bool over;
};

static void w_bytes(struct wr *w, const void *s, uint32_t n)
{
	if (w->over || n > w->cap - w->n) {
		w->over = true;
		return;
	}
	memcpy(w->p + w->n, s, n);
	w->n += n;
}

static void w_le(struct wr *w, uint64_t v, unsigned size)
{
	uint8_t b[8];
	for (unsigned i = 0; i < size; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	w_bytes(w, b, size);
}

struct rd {
	const uint8_t *p;
	uint32_t n, at;
	bool short_;
};

static uint64_t r_le(struct rd *r, unsigned size)
{
	if (r->short_ || size > r->n - r->at) {
		r->short_ = true;
		return 0;
	}
	uint64_t v = 0;
	for (unsigned i = size; i-- > 0;)
		v = v << 8 | r->p[r->at + i];
	r->at += size;
	return v;
}

static void r_bytes(struct rd *r, void *d, uint32_t n)
{
	if (r->short_ || n > r->n - r->at) {
		r->short_ = true;
		memset(d, 0, n);
		return;
	}
	memcpy(d, r->p + r->at, n);
	r->at += n;
}

/* Ends a decode: the payload must have been consumed exactly. */
static int r_end(const struct rd *r, const char *what, char *why)
{
	if (r->short_) {
		snprintf(why, 128, "%s: payload of %u bytes is too short", what, r->n);
		return -EBADMSG;
	}
	if (r->at != r->n) {
		snprintf(why, 128, "%s: %u bytes of payload, %u expected", what, r->n,
			 r->at);
		return -EBADMSG;
	}
	return 0;
}

static int finish(uint8_t *buf, uint16_t type, uint64_t id, struct wr *w)
{
	if (w->over)
		return -E2BIG;
	struct wr h = { .p = buf, .cap = MS_MSG_HDR_SIZE };
	w_le(&h, MS_MSG_MAGIC, 4);
	w_le(&h, MS_PROTO_VERSION, 2);
	w_le(&h, type, 2);
	w_le(&h, 0, 4);
	w_le(&h, w->n, 4);
	w_le(&h, id, 8);
	return (int)(MS_MSG_HDR_SIZE + w->n);
}

#define PAYLOAD(buf) { .p = (buf) + MS_MSG_HDR_SIZE, .cap = MS_MSG_MAX_PAYLOAD }

/* ---- header ------------------------------------------------------------------------ */

int ms_msg_decode_hdr(const uint8_t *buf, size_t n, struct ms_msg_hdr *h,
		      char *why)
{
	if (n < MS_MSG_HDR_SIZE) {
		snprintf(why, 128, "message of %zu bytes is shorter than the %d-byte "
				   "header", n, MS_MSG_HDR_SIZE);
		return -EBADMSG;
	}
	struct rd r = { .p = buf, .n = MS_MSG_HDR_SIZE };
	h->magic = (uint32_t)r_le(&r, 4);
	h->version = (uint16_t)r_le(&r, 2);
	h->type = (uint16_t)r_le(&r, 2);
	h->flags = (uint32_t)r_le(&r, 4);
	h->len = (uint32_t)r_le(&r, 4);
	h->id = r_le(&r, 8);
	if (h->magic != MS_MSG_MAGIC) {
		snprintf(why, 128, "bad magic 0x%08x (not a moestream client?)",
			 h->magic);
		return -EBADMSG;
	}
	if (h->version != MS_PROTO_VERSION) {
		snprintf(why, 128, "protocol version %u (this daemon speaks %d)",
			 h->version, MS_PROTO_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (!h->type || h->type > MS_MSG_TYPE_MAX) {
		snprintf(why, 128, "unknown message type %u", h->type);
		return -EBADMSG;
	}
	if (h->flags) {
		snprintf(why, 128, "flags 0x%x set (reserved, must be 0)", h->flags);
		return -EBADMSG;
	}
	if (h->len > MS_MSG_MAX_PAYLOAD || h->len != n - MS_MSG_HDR_SIZE) {
		snprintf(why, 128, "header says %u payload bytes, %zu arrived (cap %d)",
			 h->len, n - MS_MSG_HDR_SIZE, MS_MSG_MAX_PAYLOAD);
		return -EBADMSG;
	}
	return 0;
}

/* ---- HELLO ----------------------------------------------------------------------- */

int ms_msg_encode_hello_req(uint8_t *buf, uint64_t id,
			    const struct ms_hello_req *r)
{
	struct wr w = PAYLOAD(buf);
	w_le(&w, r->min_version, 2);
	w_le(&w, r->max_version, 2);
	w_le(&w, r->pid, 4);
	w_bytes(&w, r->name, sizeof(r->name));
	return finish(buf, MS_MSG_HELLO, id, &w);
}

int ms_msg_decode_hello_req(const uint8_t *p, uint32_t len,
			    struct ms_hello_req *r, char *why)
{
	struct rd d = { .p = p, .n = len };
	r->min_version = (uint16_t)r_le(&d, 2);
	r->max_version = (uint16_t)r_le(&d, 2);
	r->pid = (uint32_t)r_le(&d, 4);
	r_bytes(&d, r->name, sizeof(r->name));
	int rc = r_end(&d, "HELLO", why);
	if (rc)
		return rc;
	if (!memchr(r->name, 0, sizeof(r->name))) {
		snprintf(why, 128, "HELLO: client name is not NUL-terminated");
		return -EBADMSG;
	}
	if (r->min_version > r->max_version) {
		snprintf(why, 128, "HELLO: versions %u..%u are empty",
			 r->min_version, r->max_version);
		return -EBADMSG;
	}
	return 0;
}

int ms_msg_encode_hello_rep(uint8_t *buf, uint64_t id,
			    const struct ms_hello_rep *r)
{
	struct wr w = PAYLOAD(buf);
	if (r->n_layers > MS_PROTO_MAX_LAYERS)
		return -E2BIG;
	w_le(&w, (uint32_t)r->status, 4);
	w_le(&w, r->version, 2);
	w_bytes(&w, r->arch, sizeof(r->arch));
	w_le(&w, r->n_block, 4);
	w_le(&w, r->n_expert, 4);
	w_le(&w, r->n_expert_used, 4);
	w_le(&w, r->n_layers, 4);
	w_le(&w, r->arena_size, 8);
	for (uint32_t l = 0; l < r->n_layers; l++) {
		const struct ms_proto_layer *L = &r->layers[l];
		w_le(&w, L->block, 4);
		w_le(&w, L->n_proj, 4);
		for (int j = 0; j < 3; j++)
			w_le(&w, L->proj[j], 4);
		for (int j = 0; j < 3; j++)
			w_le(&w, L->type[j], 4);
		for (int j = 0; j < 3; j++)
			for (int d = 0; d < 2; d++)
				w_le(&w, (uint64_t)L->ne[j][d], 8);
		w_le(&w, L->expert_bytes, 8);
		w_le(&w, L->nextn, 1);
	}
	return finish(buf, MS_MSG_HELLO, id, &w);
}

int ms_msg_decode_hello_rep(const uint8_t *p, uint32_t len,
			    struct ms_hello_rep *r, char *why)
{
	struct rd d = { .p = p, .n = len };
	r->status = (int32_t)r_le(&d, 4);
	r->version = (uint16_t)r_le(&d, 2);
	r_bytes(&d, r->arch, sizeof(r->arch));
	r->n_block = (uint32_t)r_le(&d, 4);
	r->n_expert = (uint32_t)r_le(&d, 4);
	r->n_expert_used = (uint32_t)r_le(&d, 4);
	r->n_layers = (uint32_t)r_le(&d, 4);
	r->arena_size = r_le(&d, 8);
	if (r->n_layers > MS_PROTO_MAX_LAYERS) {
		snprintf(why, 128, "HELLO reply: %u layers (cap %d)", r->n_layers,
			 MS_PROTO_MAX_LAYERS);
		return -EBADMSG;
	}
	for (uint32_t l = 0; l < r->n_layers; l++) {
		struct ms_proto_layer *L = &r->layers[l];
		L->block = (uint32_t)r_le(&d, 4);
		L->n_proj = (uint32_t)r_le(&d, 4);
		for (int j = 0; j < 3; j++)
			L->proj[j] = (uint32_t)r_le(&d, 4);
		for (int j = 0; j < 3; j++)
			L->type[j] = (uint32_t)r_le(&d, 4);
		for (int j = 0; j < 3; j++)
			for (int k = 0; k < 2; k++)
				L->ne[j][k] = (int64_t)r_le(&d, 8);
		L->expert_bytes = r_le(&d, 8);
		L->nextn = (uint8_t)r_le(&d, 1);
		if (d.short_)
			break;
		if ((L->n_proj != 2 && L->n_proj != 3) || L->block >= r->n_block ||
		    (l && L->block <= r->layers[l - 1].block)) {
			snprintf(why, 128, "HELLO reply: layer %u (block %u, %u "
					   "projections) is invalid",
				 l, L->block, L->n_proj);
			return -EBADMSG;
		}
		for (uint32_t j = 0; j < L->n_proj; j++)
			if (L->proj[j] >= MS_PROJ_COUNT || !ms_type_get(L->type[j])) {
				snprintf(why, 128, "HELLO reply: layer %u has an "
						   "invalid projection or type", l);
				return -EBADMSG;
			}
	}
	int rc = r_end(&d, "HELLO reply", why);
	if (rc)
		return rc;
	if (!memchr(r->arch, 0, sizeof(r->arch)) || r->n_expert == 0 ||
	    r->n_expert > 65535 || r->n_expert_used > r->n_expert) {
		snprintf(why, 128, "HELLO reply: model description is invalid");
		return -EBADMSG;
	}
	return 0;
}

/* ---- ACQUIRE / RELEASE / PREFETCH ------------------------------------------------------ */

int ms_msg_encode_experts(uint8_t *buf, uint16_t type, uint64_t id,
			  const struct ms_experts_req *r)
{
	if (r->n == 0 || r->n > MS_MSG_MAX_EXPERTS)
		return -EINVAL;
	struct wr w = PAYLOAD(buf);
	bool scores = type == MS_MSG_PREFETCH && r->has_scores;
	w_le(&w, r->block, 4);
	w_le(&w, r->n, 4);
	w_le(&w, scores, 4);
	for (uint32_t i = 0; i < r->n; i++)
		w_le(&w, r->experts[i], 2);
	for (uint32_t i = 0; scores && i < r->n; i++) {
		uint32_t u;
		memcpy(&u, &r->scores[i], 4);
		w_le(&w, u, 4);
	}
	return finish(buf, type, id, &w);
}

int ms_msg_decode_experts(const uint8_t *p, uint32_t len, uint16_t type,
			  struct ms_experts_req *r, char *why)
{
	struct rd d = { .p = p, .n = len };
	r->block = (uint32_t)r_le(&d, 4);
	r->n = (uint32_t)r_le(&d, 4);
	uint32_t flags = (uint32_t)r_le(&d, 4);
	if (d.short_ || r->n == 0 || r->n > MS_MSG_MAX_EXPERTS || flags > 1 ||
	    (flags && type != MS_MSG_PREFETCH)) {
		snprintf(why, 128, "expert list: %u experts, flags %u (1..%d experts; "
				   "scores only on PREFETCH)",
			 r->n, flags, MS_MSG_MAX_EXPERTS);
		return -EBADMSG;
	}
	r->has_scores = flags;
	for (uint32_t i = 0; i < r->n; i++)
		r->experts[i] = (uint16_t)r_le(&d, 2);
	for (uint32_t i = 0; r->has_scores && i < r->n; i++) {
		uint32_t u = (uint32_t)r_le(&d, 4);
		memcpy(&r->scores[i], &u, 4);
		if (!d.short_ && !isfinite(r->scores[i])) {
			snprintf(why, 128, "PREFETCH: score %u is not finite", i);
			return -EBADMSG;
		}
	}
	return r_end(&d, "expert list", why);
}

int ms_msg_encode_expert_rep(uint8_t *buf, uint64_t id,
			     const struct ms_expert_rep *r)
{
	if (r->n == 0 || r->n > MS_MSG_MAX_EXPERTS)
		return -EINVAL;
	struct wr w = PAYLOAD(buf);
	w_le(&w, r->n, 4);
	for (uint32_t i = 0; i < r->n; i++) {
		const struct ms_expert_ent *e = &r->e[i];
		w_le(&w, (uint32_t)e->status, 4);
		w_le(&w, e->block, 4);
		w_le(&w, e->expert, 4);
		w_le(&w, e->n_proj, 4);
		for (int j = 0; j < 3; j++) {
			w_le(&w, e->off[j], 8);
			w_le(&w, e->len[j], 8);
		}
	}
	return finish(buf, MS_MSG_EXPERT, id, &w);
}

int ms_msg_decode_expert_rep(const uint8_t *p, uint32_t len,
			     struct ms_expert_rep *r, char *why)
{
	struct rd d = { .p = p, .n = len };
	r->n = (uint32_t)r_le(&d, 4);
	if (d.short_ || r->n == 0 || r->n > MS_MSG_MAX_EXPERTS) {
		snprintf(why, 128, "EXPERT: %u entries (1..%d)", r->n,
			 MS_MSG_MAX_EXPERTS);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < r->n; i++) {
		struct ms_expert_ent *e = &r->e[i];
		e->status = (int32_t)r_le(&d, 4);
		e->block = (uint32_t)r_le(&d, 4);
		e->expert = (uint32_t)r_le(&d, 4);
		e->n_proj = (uint32_t)r_le(&d, 4);
		for (int j = 0; j < 3; j++) {
			e->off[j] = r_le(&d, 8);
			e->len[j] = r_le(&d, 8);
		}
		if (!d.short_ && (e->status > 0 ||
				  (!e->status && e->n_proj != 2 && e->n_proj != 3))) {
			snprintf(why, 128, "EXPERT: entry %u has status %d with %u "
					   "projections", i, e->status, e->n_proj);
			return -EBADMSG;
		}
	}
	return r_end(&d, "EXPERT", why);
}

/* ---- ERROR and blobs ------------------------------------------------------------------------ */

int ms_msg_encode_error(uint8_t *buf, uint64_t id, int32_t status,
			const char *msg)
{
	struct wr w = PAYLOAD(buf);
	char m[256];
	memset(m, 0, sizeof(m));
	snprintf(m, sizeof(m), "%s", msg ? msg : "");
	w_le(&w, (uint32_t)status, 4);
	w_bytes(&w, m, sizeof(m));
	return finish(buf, MS_MSG_ERROR, id, &w);
}

int ms_msg_decode_error(const uint8_t *p, uint32_t len, struct ms_error_rep *r,
			char *why)
{
	struct rd d = { .p = p, .n = len };
	r->status = (int32_t)r_le(&d, 4);
	r_bytes(&d, r->msg, sizeof(r->msg));
	int rc = r_end(&d, "ERROR", why);
	if (rc)
		return rc;
	if (!memchr(r->msg, 0, sizeof(r->msg)) || r->status >= 0) {
		snprintf(why, 128, "ERROR: status %d or message unterminated",
			 r->status);
		return -EBADMSG;
	}
	return 0;
}

int ms_msg_encode_blob(uint8_t *buf, uint16_t type, uint64_t id,
		       const void *data, uint32_t len)
{
	struct wr w = PAYLOAD(buf);
	if (len)
		w_bytes(&w, data, len);
	return finish(buf, type, id, &w);
}
