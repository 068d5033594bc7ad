/*
 * protocol.h - the wire between moestreamd and its clients.
 *
 * AF_UNIX, SOCK_SEQPACKET: one message per packet, never split or merged.
 * A message is a fixed 24-byte little-endian header and a payload of at most
 * MS_MSG_MAX_PAYLOAD bytes. Every field is checked on receipt by
 * ms_msg_decode_*; a malformed message gets an ERROR reply or, when the
 * header itself is bad, a disconnect.
 *
 *   HELLO     c->s  versions the client speaks, its pid and name
 *   HELLO     s->c  status, the version chosen, the model description, and
 *                   (SCM_RIGHTS) a read-only fd of the cache arena
 *   ACQUIRE   c->s  block, n experts: pin them (an expert may be named
 *                   more than once: each is a pin, released one by one)
 *   EXPERT    s->c  experts of an ACQUIRE as they become ready (or fail),
 *                   those ready together in one message: status and where
 *                   their projections lie in the arena. Status -EOVERFLOW:
 *                   this connection already holds MS_PROTO_MAX_PINS pins of
 *                   that expert (nothing was pinned; release some first)
 *   RELEASE   c->s  block, n experts: unpin (no reply; a bad release is
 *                   answered with ERROR)
 *   PREFETCH  c->s  block, n experts, optional scores (no reply)
 *   STATS     c->s  -> STATS s->c with a JSON object
 *   PING      c->s  -> PING s->c (same id)
 *   ERROR     s->c  status and a one-line message, for request `id`
 *
 * Layers on the wire are block indices (N of blk.N), as everywhere a user
 * sees them. Replies carry the request id they answer.
 */
#ifndef MOESTREAM_PROTOCOL_H
#define MOESTREAM_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MS_MSG_MAGIC 0x314d534du /* "MSM1" little-endian */
#define MS_PROTO_VERSION 1
#define MS_MSG_HDR_SIZE 24
#define MS_MSG_MAX_PAYLOAD 65536
#define MS_MSG_MAX_EXPERTS 512   /* per ACQUIRE/RELEASE/PREFETCH/EXPERT */
#define MS_PROTO_MAX_LAYERS 512   /* 89 bytes each: fits the payload cap */
#define MS_PROTO_MAX_PINS 65535   /* pins of one expert one connection may
				     hold; beyond: status -EOVERFLOW */

enum ms_msg_type {
	MS_MSG_HELLO = 1,
	MS_MSG_ACQUIRE = 2,
	MS_MSG_EXPERT = 3,
	MS_MSG_RELEASE = 4,
	MS_MSG_PREFETCH = 5,
	MS_MSG_STATS = 6,
	MS_MSG_PING = 7,
	MS_MSG_ERROR = 8,
	MS_MSG_TYPE_MAX = 8,
};

struct ms_msg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t flags;    /* 0; reserved */
	uint32_t len;      /* payload bytes */
	uint64_t id;       /* request id (client's), echoed in replies */
};

/* HELLO from the client. */
struct ms_hello_req {
	uint16_t min_version, max_version;
	uint32_t pid;
	char name[32];     /* NUL-padded, informational */
};

/* One MoE layer as the client needs to know it. */
struct ms_proto_layer {
	uint32_t block;
	uint32_t n_proj;             /* 3, or 2 when fused */
	uint32_t proj[3];            /* enum ms_proj */
	uint32_t type[3];            /* enum ms_type */
	int64_t ne[3][2];            /* [in, out] per projection */
	uint64_t expert_bytes;
	uint8_t nextn;
};

/* HELLO reply. */
struct ms_hello_rep {
	int32_t status;
	uint16_t version;
	char arch[64];
	uint32_t n_block, n_expert, n_expert_used, n_layers;
	uint64_t arena_size;
	struct ms_proto_layer layers[MS_PROTO_MAX_LAYERS];
};

/* ACQUIRE, RELEASE, PREFETCH. */
struct ms_experts_req {
	uint32_t block;
	uint32_t n;
	uint16_t experts[MS_MSG_MAX_EXPERTS];
	bool has_scores;             /* PREFETCH only */
	float scores[MS_MSG_MAX_EXPERTS];
};

/* EXPERT: experts of an ACQUIRE that became ready (or failed) together. */
struct ms_expert_ent {
	int32_t status;              /* 0 or -errno */
	uint32_t block, expert;
	uint32_t n_proj;
	uint64_t off[3], len[3];     /* in the arena */
};

struct ms_expert_rep {
	uint32_t n;
	struct ms_expert_ent e[MS_MSG_MAX_EXPERTS];
};

/* ERROR. */
struct ms_error_rep {
	int32_t status;
	char msg[256];
};

/* Encoders write header + payload into buf (capacity >= MS_MSG_HDR_SIZE +
 * MS_MSG_MAX_PAYLOAD) and return the message length, or -EINVAL/-E2BIG. */
int ms_msg_encode_hello_req(uint8_t *buf, uint64_t id,
			    const struct ms_hello_req *r);
int ms_msg_encode_hello_rep(uint8_t *buf, uint64_t id,
			    const struct ms_hello_rep *r);
int ms_msg_encode_experts(uint8_t *buf, uint16_t type, uint64_t id,
			  const struct ms_experts_req *r);
int ms_msg_encode_expert_rep(uint8_t *buf, uint64_t id,
			     const struct ms_expert_rep *r);
int ms_msg_encode_error(uint8_t *buf, uint64_t id, int32_t status,
			const char *msg);
/* STATS (reply: `text` is JSON) and PING: a payload of `len` bytes. */
int ms_msg_encode_blob(uint8_t *buf, uint16_t type, uint64_t id,
		       const void *data, uint32_t len);

/* Decoders validate everything against `n` received bytes: 0, or a negative
 * errno with a message in `why` (>= 128 bytes). decode_hdr checks magic,
 * version, type and that the payload length matches what arrived. */
int ms_msg_decode_hdr(const uint8_t *buf, size_t n, struct ms_msg_hdr *h,
		      char *why);
int ms_msg_decode_hello_req(const uint8_t *p, uint32_t len,
			    struct ms_hello_req *r, char *why);
int ms_msg_decode_hello_rep(const uint8_t *p, uint32_t len,
			    struct ms_hello_rep *r, char *why);
int ms_msg_decode_experts(const uint8_t *p, uint32_t len, uint16_t type,
			  struct ms_experts_req *r, char *why);
int ms_msg_decode_expert_rep(const uint8_t *p, uint32_t len,
			     struct ms_expert_rep *r, char *why);
int ms_msg_decode_error(const uint8_t *p, uint32_t len, struct ms_error_rep *r,
			char *why);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_PROTOCOL_H */
