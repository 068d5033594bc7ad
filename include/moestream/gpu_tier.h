/*
 * gpu_tier.h - the GPU expert tier: a VRAM expert cache with its own byte
 * budget and LRU in front of moestreamd's RAM cache, in the process that
 * owns the CUDA context (kernels/gpu_tier.cu).
 *
 * The daemon owns NVMe and host RAM; this process owns VRAM. A tier is
 * built on a client connection (moestream.h) that it uses alone, or on
 * any other source of experts in host memory (ms_gpu_tier_init_source:
 * an engine's embedded expert cache):
 *
 *   struct ms_client *c;          // a connection for the tier only
 *   ms_client_connect(&c, sock, "engine-gpu", &err);
 *   struct ms_gpu_ctx *ctx;       // kernels.h: device, stream, cuBLAS
 *   ms_gpu_ctx_init(&ctx, 0, NULL, &err);
 *   struct ms_gpu_tier_opts o = { .vram_bytes = 8ull << 30,
 *                                 .stream = ms_gpu_ctx_stream(ctx) };
 *   struct ms_gpu_tier *t;
 *   ms_gpu_tier_init(&t, c, &o, &err);
 *   for each MoE layer l (block b, routed experts ex[0..n)):
 *     struct ms_gpu_expert v[8];
 *     ms_gpu_tier_acquire(t, b, ex, n, v, &err);     // device views
 *     ms_gpu_experts_ffn(ctx, v, n, x, 0, y, 1, MS_GPU_FFN_AUTO, &err);
 *     ms_gpu_tier_prefetch(t, b_next, guess, k, &err); // copies run now
 *     ... wait for y, route the next layer ...
 *     ms_gpu_tier_release(t, b, ex, n, &err);
 *   ms_gpu_tier_free(t);          // before ms_client_close(c)
 *   ms_client_close(c);
 *
 * How it works (the reasons are in gpu_tier.cu; "the daemon" below, and in
 * the stats' names, is whichever source the tier was built on):
 *  - The client's read-only mapping of the daemon's arena is registered
 *    with cudaHostRegister(cudaHostRegisterReadOnly), so copies from it run
 *    at pinned speed with no staging copy. Where the device or driver
 *    refuses, the tier logs why (one warning) and copies from pageable
 *    memory; ms_gpu_tier_stats says which mode is in use.
 *  - VRAM is one allocation of `vram_bytes` cut into equal slots, each the
 *    size of the model's largest expert (every projection 256-byte
 *    aligned). An expert in VRAM is LOADING (its copy in flight) or READY.
 *  - A miss pins the expert in the daemon (asynchronous ACQUIRE; each
 *    expert is copied as soon as the daemon answers it), copies it
 *    host->device with cudaMemcpyAsync on the tier's own copy stream,
 *    records an event that the compute stream waits on
 *    (cudaStreamWaitEvent: the host never waits for a copy), and releases
 *    the daemon pin from a host function queued behind the copy
 *    (cudaLaunchHostFunc): no pin is held longer than the copy.
 *  - A slot is reused only after the compute stream has passed the point
 *    where its expert was released (an event recorded at release, waited
 *    on by the copy stream), so an eviction never overwrites weights a
 *    queued kernel still reads.
 *
 * Streams: the tier makes ONE compute stream (opts.stream) wait for its
 * copies; use the views on that stream (ms_gpu_ctx_init with that stream,
 * or ms_gpu_ctx_stream of the context passed as opts.stream), or make
 * another stream wait on it yourself.
 *
 * Threads: a tier is used by one thread at a time, like a client handle.
 * Its client must not be used by anyone else while the tier lives (the
 * tier's host functions use it from CUDA's callback thread, under the
 * tier's lock).
 *
 * Errors: 0 or a negative errno with one line in *err naming the value:
 * -EINVAL (arguments: a block that is not a MoE layer, an expert out of
 * range, n out of range, a release of something not acquired), -ENOSPC
 * (more experts pinned at once than the budget has slots), -EBADMSG (the
 * daemon's description does not match the expert it sent), the daemon's
 * own status for an expert it could not load (-EIO ...), -ETIMEDOUT,
 * -ENOTCONN (the daemon went away), -ENOMEM / -EIO / -ENODEV from CUDA
 * with the runtime's message. Every entry point answers -ENOTSUP "built
 * without CUDA" in a build without CUDA (kernels/gpu_nocuda.c).
 */
#ifndef MOESTREAM_GPU_TIER_H
#define MOESTREAM_GPU_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "moestream.h"
#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ms_gpu_tier;

struct ms_gpu_tier_opts {
	int device;            /* CUDA device */
	uint64_t vram_bytes;   /* budget for expert copies; must hold at
				  least one expert (a slot) */
	void *stream;          /* the compute stream (cudaStream_t) that
				  waits for the copies; NULL: the legacy
				  default stream */
	int timeout_ms;        /* how long a miss waits for the daemon;
				  0: 60000, -1: forever */
	bool no_register;      /* do not register the arena mapping (copies
				  from pageable memory; for comparisons) */
};

/* Builds a tier on client `c` (which it then uses alone; it does not close
 * it): registers the client's arena mapping, allocates the slots, creates
 * the copy stream. 0, -EINVAL (a budget below one slot, a model without
 * MoE layers), -ENOMEM (VRAM), -ENODEV. */
int ms_gpu_tier_init(struct ms_gpu_tier **out, struct ms_client *c,
		     const struct ms_gpu_tier_opts *opts, struct ms_err *err);

/* Where a tier's experts come from, when that is not a moestreamd client:
 * the same four calls as the client's (moestream.h), on `ctx`. An engine's
 * embedded expert cache is one (engine/engine.c). */
struct ms_gpu_tier_source {
	const char *name;      /* for messages: "moestreamd", "the expert
				  cache" */
	void *ctx;
	/* its MoE layers, described as the daemon describes them; valid
	 * while the tier lives */
	const struct ms_client_model *model;
	/* the host memory every expert is read from (registered with the
	 * device for pinned-speed copies); writable: the source writes it
	 * (registered without cudaHostRegisterReadOnly where that is not
	 * supported) */
	const void *arena;
	uint64_t arena_len;
	bool writable;
	/* as ms_client_acquire_async, ms_client_next (each answer names its
	 * block; *id that of the request answered) and ms_client_release */
	int (*acquire)(void *ctx, uint32_t block, const uint16_t *experts,
		       unsigned n, uint64_t *id);
	int (*next)(void *ctx, struct ms_client_expert *out, uint64_t *id,
		    int timeout_ms);
	int (*release)(void *ctx, uint32_t block, const uint16_t *experts,
		       unsigned n);
	/* the source's last refusal, "" if none; may be NULL */
	const char *(*last_error)(void *ctx);
	/* release may be called from any thread at any time (the copy's
	 * host function then hands the pin back itself); else it is called
	 * under the tier's lock, as a client handle needs */
	bool release_any_thread;
};

/* The same on `src` (copied; its ctx and model must outlive the tier). */
int ms_gpu_tier_init_source(struct ms_gpu_tier **out,
			    const struct ms_gpu_tier_source *src,
			    const struct ms_gpu_tier_opts *opts,
			    struct ms_err *err);

/* The bytes of one slot for model `m`: its largest expert that the tier can
 * hold, every projection 256-byte aligned. 0, or -ENOTSUP when no MoE
 * layer is one the tier can hold (the reason in *err). */
int ms_gpu_tier_slot_bytes(const struct ms_client_model *m, uint64_t *bytes,
			   struct ms_err *err);

/* Waits for the copies in flight, releases every daemon pin the tier
 * holds, unregisters the mapping and frees the VRAM. Call it before
 * ms_client_close of its client. VRAM pins still held are dropped (the
 * views die with the tier). NULL is fine. */
void ms_gpu_tier_free(struct ms_gpu_tier *t);

/* Device views of n experts of `block` (n <= the slots; duplicates are
 * fine and pin twice), pinned in VRAM until ms_gpu_tier_release. Experts
 * not in VRAM are fetched from the daemon (misses); the compute stream is
 * made to wait for every copy still in flight, so work queued on it after
 * this call sees the weights. Returns when every copy is queued, not
 * when it is done. On failure nothing stays pinned by this call (experts
 * already copied stay cached). out[i] is laid out as kernels.h's struct
 * ms_gpu_expert (gate, up, down; or fused gate_up, down). */
int ms_gpu_tier_acquire(struct ms_gpu_tier *t, uint32_t block,
			const uint16_t *experts, unsigned n,
			struct ms_gpu_expert *out, struct ms_err *err);

/* Starts the copies of those of n experts of `block` that are not in VRAM
 * (layer l+1's, while layer l computes), without pinning them; returns
 * once the copies are queued (after the daemon answered). A hint: an
 * expert for which no slot can be freed is skipped (counted in
 * prefetch_dropped). 0, or the first error (the other experts still
 * come in). */
int ms_gpu_tier_prefetch(struct ms_gpu_tier *t, uint32_t block,
			 const uint16_t *experts, unsigned n,
			 struct ms_err *err);

/* Unpins n experts acquired before (once per acquired occurrence). The
 * compute stream's position is recorded: the slots are reused only after
 * the work queued on it so far. -EINVAL (naming block:expert) for an
 * expert not pinned; the others are still released. */
int ms_gpu_tier_release(struct ms_gpu_tier *t, uint32_t block,
			const uint16_t *experts, unsigned n,
			struct ms_err *err);

/* acquire + ms_gpu_experts_ffn on the views + release: the routed experts
 * of one layer on `ctx`, whose stream must be the tier's compute stream.
 * Arguments as ms_gpu_experts_ffn's. Asynchronous. */
int ms_gpu_tier_ffn(struct ms_gpu_tier *t, struct ms_gpu_ctx *ctx,
		    uint32_t block, const uint16_t *experts, unsigned n,
		    const float *x_dev, int64_t x_stride, float *y_dev,
		    int64_t n_tokens, enum ms_gpu_ffn_path path,
		    struct ms_err *err);

/* Waits for every copy in flight and hands their daemon pins back (the
 * host functions normally do that by themselves). 0 or -EIO. */
int ms_gpu_tier_sync(struct ms_gpu_tier *t, struct ms_err *err);

/* Drops every unpinned expert from VRAM (the next acquires miss). Waits for
 * copies in flight. 0, or -EBUSY when experts are still pinned (those
 * stay). */
int ms_gpu_tier_flush(struct ms_gpu_tier *t, struct ms_err *err);

struct ms_gpu_tier_stats {
	uint64_t hits;             /* acquired experts already in VRAM (READY
				      or LOADING) */
	uint64_t misses;           /* acquired experts the acquire fetched */
	uint64_t prefetch_hits;    /* hits on an expert a prefetch brought in,
				      first use */
	uint64_t prefetched;       /* copies started by ms_gpu_tier_prefetch */
	uint64_t prefetch_dropped; /* prefetches skipped: no slot free */
	uint64_t evictions;
	uint64_t evict_waits;      /* evictions that waited for a copy */
	uint64_t copies;           /* experts copied host -> device */
	uint64_t bytes_copied;
	double copy_ms;            /* time the copy stream spent on completed
				      copies (CUDA events) */
	uint64_t daemon_pins;      /* daemon pins held now (copies in flight) */
	uint64_t daemon_released;  /* experts handed back to the daemon */
	uint64_t daemon_errors;    /* experts the daemon failed, and releases
				      that could not be sent */
	uint32_t slots, resident, pinned, loading;
	uint64_t slot_bytes;       /* bytes per slot */
	uint64_t vram_bytes;       /* slots x slot_bytes: what is allocated */
	bool host_registered;      /* copies from a registered mapping */
	char host_mode[256];       /* "registered read-only, N bytes" or
				      "pageable: <why>" */
};

/* The counters and the current state. Reaps finished copies first. */
int ms_gpu_tier_stats(struct ms_gpu_tier *t, struct ms_gpu_tier_stats *s,
		      struct ms_err *err);

/* The compute stream and the copy stream (cudaStream_t). */
void *ms_gpu_tier_stream(const struct ms_gpu_tier *t);
void *ms_gpu_tier_copy_stream(const struct ms_gpu_tier *t);

/* ---- for benchmarks and tests ---------------------------------------- */

/* Page-locked host memory (cudaHostAlloc, default flags): 0, -ENOMEM,
 * -ENODEV. ms_gpu_host_free(NULL) is fine. */
int ms_gpu_host_alloc(void **p, size_t bytes, struct ms_err *err);
void ms_gpu_host_free(void *p);

/* Copies n host pieces src[i] (len[i] bytes each) back to back to dst_dev
 * on `stream` (NULL: a stream of its own) with cudaMemcpyAsync, and gives
 * the milliseconds between CUDA events recorded before and after.
 * Synchronous. 0, -EINVAL, -EIO. */
int ms_gpu_h2d_time(void *dst_dev, const void *const *src,
		    const uint64_t *len, int n, void *stream, double *ms,
		    struct ms_err *err);

/* Whether host memory at p is page-locked or registered for this
 * device (cudaPointerGetAttributes): 1 yes, 0 no, or -errno. */
int ms_gpu_host_is_pinned(const void *p, struct ms_err *err);

#ifdef __cplusplus
}
#endif

#endif /* MOESTREAM_GPU_TIER_H */
