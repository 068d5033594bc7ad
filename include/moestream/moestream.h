/*
 * moestream.h - the public API of libmoestream: the client of moestreamd,
 * plus the GGUF reader and expert map (model.h) and GPU discovery
 * (kernels.h).
 *
 * A client connects to the daemon's Unix socket, learns the model, and maps
 * the daemon's expert cache read-only, once: an acquired expert is a pointer
 * into that mapping, valid until released (zero copy). Link with
 * `pkg-config --libs moestream`.
 *
 *   struct ms_client *c;
 *   struct ms_err err;
 *   if (ms_client_connect(&c, "/run/moestream/moestream.sock", "myengine",
 *                         &err) < 0) { fprintf(stderr, "%s\n", err.msg); ... }
 *   uint16_t ex[2] = { 17, 42 };
 *   struct ms_client_expert got[2];
 *   ms_client_acquire(c, 3, ex, 2, got, -1);   // block 3: blk.3
 *   ... read got[i].proj[j] (got[i].len[j] bytes) ...
 *   ms_client_release(c, 3, ex, 2);
 *   ms_client_close(c);
 *
 * Errors are negative errno values; with a struct ms_err the message names
 * what went wrong. Thread safety: a client handle is used by one thread at a
 * time (give each thread its own connection; they are cheap and share the
 * daemon's cache); different handles need no locking.
 *
 * A client's pins die with its connection, however the process ends.
 */
#ifndef MOESTREAM_H
#define MOESTREAM_H

#define MOESTREAM_VERSION_MAJOR 0
#define MOESTREAM_VERSION_MINOR 1
#define MOESTREAM_VERSION_PATCH 0

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "model.h"
#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ms_client;

/* One MoE layer, as the daemon describes it. */
struct ms_client_layer {
	uint32_t block;           /* N of blk.N: how layers are named here */
	uint32_t n_proj;          /* 3 (gate, up, down) or 2 (gate_up, down) */
	enum ms_proj proj[3];
	uint32_t type[3];         /* enum ms_type */
	int64_t ne[3][2];         /* [in, out] */
	uint64_t expert_bytes;
	bool nextn;               /* NextN/MTP: present, not run by default */
};

struct ms_client_model {
	char arch[64];
	uint32_t n_block, n_expert, n_expert_used, n_layers;
	uint64_t arena_size;
	const struct ms_client_layer *layers; /* [n_layers], ascending block */
};

/* An acquired expert: pointers into the read-only mapping of the cache. */
struct ms_client_expert {
	int status;               /* 0, or why this one failed (-EIO, -EBUSY;
				     -EOVERFLOW: this connection holds
				     MS_PROTO_MAX_PINS pins of it) */
	uint32_t block, expert;
	uint32_t n_proj;
	const void *proj[3];
	uint64_t len[3];
};

/* Connects (HELLO), maps the arena read-only. `name` is informational. */
int ms_client_connect(struct ms_client **out, const char *socket_path,
		      const char *name, struct ms_err *err);

/* Closes the connection (the daemon drops every pin it still holds) and
 * unmaps the arena. NULL is fine. */
void ms_client_close(struct ms_client *c);

const struct ms_client_model *ms_client_model(const struct ms_client *c);

/* The layer description of a block, or NULL if it is not a MoE layer. */
const struct ms_client_layer *ms_client_layer(const struct ms_client *c,
					      uint32_t block);

/* The read-only mapping of the daemon's cache that acquired experts point
 * into: its base, and its length in *len (may be NULL). Valid until
 * ms_client_close. An expert's place in the cache is got.proj[j] - base.
 * For registering the mapping with a GPU (gpu_tier.h). */
const void *ms_client_arena(const struct ms_client *c, uint64_t *len);

/* Pins n experts of `block` and waits until each is ready or failed, up to
 * timeout_ms (-1: forever). Returns 0 when all are ready, else the first
 * failure (every entry of out[] has its own status; the ready ones are
 * pinned and must be released). -ETIMEDOUT leaves the rest to arrive later
 * through ms_client_next (or to be dropped when the client closes). */
int ms_client_acquire(struct ms_client *c, uint32_t block,
		      const uint16_t *experts, unsigned n,
		      struct ms_client_expert *out, int timeout_ms);

/* Asynchronous acquire: sends the request and returns its id; each expert
 * arrives through ms_client_next as it becomes ready, so an engine can
 * compute with the first while the others stream. */
int ms_client_acquire_async(struct ms_client *c, uint32_t block,
			    const uint16_t *experts, unsigned n, uint64_t *id);

/* The next expert answered (of any async acquire): 0 with *out and *id, or
 * -ETIMEDOUT after timeout_ms (0 = poll, -1 = forever), -ENOTCONN when the
 * daemon went away. */
int ms_client_next(struct ms_client *c, struct ms_client_expert *out,
		   uint64_t *id, int timeout_ms);

/* Unpins. No reply: a release of something not held is reported later by
 * the daemon as an error on the connection (see ms_client_last_error). */
int ms_client_release(struct ms_client *c, uint32_t block,
		      const uint16_t *experts, unsigned n);

/* A hint: the experts of `block` likely needed soon; scores may be NULL. */
int ms_client_prefetch(struct ms_client *c, uint32_t block,
		       const uint16_t *experts, const float *scores, unsigned n);

/* The daemon's counters as a JSON object (malloc'ed; free it). */
int ms_client_stats(struct ms_client *c, char **json, int timeout_ms);

/* A round trip: 0 or -errno. */
int ms_client_ping(struct ms_client *c, int timeout_ms);

/* The descriptor to poll for readiness (POLLIN: ms_client_next has work). */
int ms_client_fd(const struct ms_client *c);

/* The last ERROR the daemon sent on this connection ("" if none). */
const char *ms_client_last_error(const struct ms_client *c);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_H */
