/*
 * gpu_tier.cu - the GPU expert tier (gpu_tier.h): a VRAM expert cache in
 * front of moestreamd (or an engine's embedded expert cache: a source,
 * gpu_tier.h), with host->device copies overlapped with compute.
 *
 * Memory. VRAM is one cudaMalloc of the budget, cut into equal slots the
 * size of the model's largest expert, each projection at a 256-byte
 * aligned offset (what the fused matvec needs, and what cudaMemcpy likes).
 * Equal slots waste a little where per-layer types differ (Unsloth's
 * dynamic quants), but allocation never fragments and never calls
 * cudaMalloc/cudaFree on the hot path (both synchronise the device, which
 * would undo the overlap). Lookup is a table [layer][expert] -> slot.
 * Unpinned resident slots are on an LRU list; pinned ones are not, so
 * they can never be chosen for eviction.
 *
 * A slot is FREE, RESERVED (chosen for a miss, waiting for the daemon),
 * LOADING (its copy queued) or READY (its copy has completed).
 *
 * The copy of a miss. The daemon's answer is a pointer into the client's
 * read-only mapping of its arena, pinned there until released. The tier
 * queues on its own non-blocking copy stream:
 *   wait(slot's free event) - the compute stream is past every use of the
 *                             slot's previous expert (recorded at release)
 *   record(copy start event)
 *   cudaMemcpyAsync of each projection into the slot
 *   record(copy done event)  - what the compute stream waits on
 *   host function            - marks the copy done and hands the daemon pin
 *                              back (RELEASE), as soon as the copy is done
 * The host function runs on CUDA's callback thread, but a client handle is
 * one thread's at a time: every use of the client is under the tier's
 * client lock. The host function only ever *tries* that lock (it must not
 * block the stream behind a thread waiting for the daemon): finished copies
 * go onto a lock-free stack, and whoever holds the lock empties it before
 * letting go, then checks again after unlocking (so a push that raced the
 * unlock is not left behind). The daemon pin is therefore held exactly as
 * long as the copy, give or take one send(). A source whose release may be
 * called from any thread (an engine's embedded cache: release_any_thread)
 * gets its pin back from the host function itself: a pin held by a copy
 * that is done can then never be what a fetch under the lock waits for.
 *
 * Copy records (events + the daemon's identity of the expert) are separate
 * from slots, so that a slot whose copy is still in flight can be evicted
 * without waiting: the new copy into it is queued behind the old one on the
 * same stream, and the old record still releases the right daemon pin.
 * Records are recycled by the tier's thread ("reaping") once their release
 * has been sent; that is also when the copy's time is read from its events.
 *
 * The daemon is asked asynchronously (one ACQUIRE for all the misses of a
 * call) and each expert is copied the moment its answer arrives, so copies
 * of the first experts overlap the daemon's NVMe reads of the others.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <new>

#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "moestream/gpu_tier.h"
#include "moestream/protocol.h"

#define SLOT_ALIGN 256
#define SLICE_MS 1000
#define DEFAULT_TIMEOUT_MS 60000

namespace {

enum slot_state {
	SLOT_FREE = 0,
	SLOT_RESERVED = 1,
	SLOT_LOADING = 2,
	SLOT_READY = 3,
};

enum copy_state {
	COPY_IDLE = 0,     /* in the pool */
	COPY_QUEUED = 1,   /* copies queued, not known done */
	COPY_DONE = 2,     /* the host function ran: copy complete, the
			      daemon pin still to hand back */
	COPY_RELEASED = 3, /* RELEASE sent (or failed): to reap */
};

struct copy_rec {
	std::atomic<int> state;
	ms_gpu_tier *t;
	uint32_t block;
	uint16_t expert;
	int32_t slot;      /* the slot it fills, -1 once that was evicted */
	uint64_t bytes;
	cudaEvent_t ev_start, ev_done;
	copy_rec *next;    /* the done stack, or the free list */
};

struct slot {
	uint8_t *dev;
	int state;
	int32_t layer;     /* layer index of the expert held */
	uint16_t expert;
	uint32_t pins;
	bool prefetched;   /* brought in by a prefetch, not acquired since */
	bool lru;          /* on the LRU list */
	int32_t prev, next;
	copy_rec *rec;     /* while LOADING */
	cudaEvent_t ev_free;
	bool free_recorded;
};

struct tlayer {
	bool ok;
	char why[160];     /* when !ok */
	uint32_t n_proj;
	uint64_t len[3];   /* per projection, in the daemon's order */
	uint64_t off[3];   /* within a slot */
	int role[3];       /* index into ms_gpu_expert.data */
	struct ms_gpu_expert shape; /* data[] unset */
};

} // namespace

struct ms_gpu_tier {
	struct ms_gpu_tier_source src;
	const struct ms_client_model *m;
	int32_t *block_layer;   /* [n_block] -> layer index, -1 */
	int device;
	cudaStream_t stream, copy;
	bool own_copy;
	void *vram_alloc;
	uint8_t *vram;          /* vram_alloc, 256-byte aligned */
	uint64_t slot_bytes;
	uint32_t n_slots;
	struct slot *slots;
	struct tlayer *layers;
	int32_t *where;         /* [n_layers][n_expert] -> slot, -1 */
	int32_t lru_head, lru_tail; /* head: least recently used */
	int32_t free_head;      /* FREE slots, linked through next */

	copy_rec *recs;
	uint32_t n_recs;
	copy_rec *rec_free;
	copy_rec **live;        /* records not yet reaped */
	uint32_t n_live;

	const uint8_t *arena;
	uint64_t arena_len;
	bool registered;
	char host_mode[256];
	int timeout_ms;

	pthread_mutex_t cmu;    /* the client */
	std::atomic<copy_rec *> done; /* copies done, pins to hand back */
	std::atomic<uint64_t> daemon_pins, daemon_released, daemon_errors;

	struct ms_gpu_tier_stats st; /* the tier thread's counters */

	/* per-call scratch, MS_MSG_MAX_EXPERTS each */
	uint16_t *want;
	int32_t *want_slot;
	bool *answered;
	int32_t *pinned;
};

namespace {

int cuda_fail(struct ms_err *err, cudaError_t ce, const char *what)
{
	return msg_cuda_fail(err, "gpu tier", ce, what);
}

#define CUDA_TRY(call, what) MSG_CUDA_TRY("gpu tier", call, what)

uint64_t pad(uint64_t v)
{
	return (v + SLOT_ALIGN - 1) & ~(uint64_t)(SLOT_ALIGN - 1);
}

/* The source's last refusal, "" if none. */
const char *last_error(const ms_gpu_tier *t)
{
	const char *s = t->src.last_error ? t->src.last_error(t->src.ctx)
					  : nullptr;
	return s ? s : "";
}

/* ---- handing daemon pins back ---------------------------------------------- */

/* Caller holds cmu. Sends RELEASE for every finished copy on the stack,
 * several experts of one block per message. */
void do_drain(ms_gpu_tier *t)
{
	copy_rec *l = t->done.exchange(nullptr, std::memory_order_acquire);
	uint16_t ex[64];
	while (l) {
		const uint32_t block = l->block;
		copy_rec *batch[64];
		unsigned n = 0;
		copy_rec **pp = &l;
		while (*pp && n < 64) {
			if ((*pp)->block == block) {
				batch[n] = *pp;
				ex[n++] = (*pp)->expert;
				*pp = (*pp)->next;
			} else {
				pp = &(*pp)->next;
			}
		}
		const int rc = t->src.release(t->src.ctx, block, ex, n);
		if (rc)
			t->daemon_errors.fetch_add(n, std::memory_order_relaxed);
		t->daemon_released.fetch_add(n, std::memory_order_relaxed);
		t->daemon_pins.fetch_sub(n, std::memory_order_relaxed);
		for (unsigned i = 0; i < n; i++)
			batch[i]->state.store(COPY_RELEASED,
					      std::memory_order_release);
	}
}

/* Empties the stack if the client is free; never waits for it. */
void try_drain(ms_gpu_tier *t)
{
	while (t->done.load(std::memory_order_acquire)) {
		if (pthread_mutex_trylock(&t->cmu))
			return; /* the holder drains before unlocking */
		do_drain(t);
		pthread_mutex_unlock(&t->cmu);
	}
}

void client_lock(ms_gpu_tier *t)
{
	pthread_mutex_lock(&t->cmu);
}

void client_unlock(ms_gpu_tier *t)
{
	do_drain(t);
	pthread_mutex_unlock(&t->cmu);
	try_drain(t); /* a push that raced the unlock */
}

/* CUDA's callback thread, behind a copy: no CUDA calls allowed here. */
void CUDART_CB on_copied(void *p)
{
	copy_rec *r = (copy_rec *)p;
	ms_gpu_tier *t = r->t;
	if (t->src.release_any_thread) {
		/* a source that takes its pins back from any thread: now */
		const uint16_t e = r->expert;
		if (t->src.release(t->src.ctx, r->block, &e, 1))
			t->daemon_errors.fetch_add(1, std::memory_order_relaxed);
		t->daemon_released.fetch_add(1, std::memory_order_relaxed);
		t->daemon_pins.fetch_sub(1, std::memory_order_relaxed);
		r->state.store(COPY_RELEASED, std::memory_order_release);
		return;
	}
	r->state.store(COPY_DONE, std::memory_order_release);
	copy_rec *h = t->done.load(std::memory_order_relaxed);
	do {
		r->next = h;
	} while (!t->done.compare_exchange_weak(h, r, std::memory_order_release,
						std::memory_order_relaxed));
	try_drain(t);
}

/* ---- slots and the LRU ------------------------------------------------------- */

void lru_remove(ms_gpu_tier *t, int32_t i)
{
	slot *s = &t->slots[i];
	if (!s->lru)
		return;
	if (s->prev >= 0)
		t->slots[s->prev].next = s->next;
	else
		t->lru_head = s->next;
	if (s->next >= 0)
		t->slots[s->next].prev = s->prev;
	else
		t->lru_tail = s->prev;
	s->prev = s->next = -1;
	s->lru = false;
}

void lru_push(ms_gpu_tier *t, int32_t i) /* most recently used */
{
	slot *s = &t->slots[i];
	lru_remove(t, i);
	s->prev = t->lru_tail;
	s->next = -1;
	if (t->lru_tail >= 0)
		t->slots[t->lru_tail].next = i;
	else
		t->lru_head = i;
	t->lru_tail = i;
	s->lru = true;
}

int32_t *where_of(ms_gpu_tier *t, int32_t layer, uint16_t expert)
{
	return &t->where[(size_t)layer * t->m->n_expert + expert];
}

/* Recycles records whose release went out; reads their copy time. */
void reap(ms_gpu_tier *t)
{
	for (uint32_t k = 0; k < t->n_live;) {
		copy_rec *r = t->live[k];
		if (r->state.load(std::memory_order_acquire) != COPY_RELEASED) {
			k++;
			continue;
		}
		float ms = 0;
		if (cudaEventElapsedTime(&ms, r->ev_start, r->ev_done) ==
		    cudaSuccess)
			t->st.copy_ms += ms;
		else
			cudaGetLastError();
		if (r->slot >= 0) {
			slot *s = &t->slots[r->slot];
			if (s->rec == r) {
				s->rec = nullptr;
				if (s->state == SLOT_LOADING)
					s->state = SLOT_READY;
			}
		}
		r->state.store(COPY_IDLE, std::memory_order_relaxed);
		r->slot = -1;
		r->next = t->rec_free;
		t->rec_free = r;
		t->live[k] = t->live[--t->n_live];
	}
}

/* Waits for the copy stream, hands back every pin, reaps. */
int sync_copies(ms_gpu_tier *t, struct ms_err *err)
{
	cudaError_t ce = cudaStreamSynchronize(t->copy);
	client_lock(t);
	client_unlock(t);
	reap(t);
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "waiting for the copy stream");
	return 0;
}

/* Takes a slot for (layer, expert): a free one, else the least recently
 * used unpinned one. -1 when every slot is pinned or reserved. */
int32_t take_slot(ms_gpu_tier *t, int32_t layer, uint16_t expert)
{
	int32_t i = t->free_head;
	if (i >= 0) {
		t->free_head = t->slots[i].next;
	} else {
		i = t->lru_head;
		if (i < 0)
			return -1;
		slot *s = &t->slots[i];
		lru_remove(t, i);
		*where_of(t, s->layer, s->expert) = -1;
		t->st.evictions++;
		if (s->state == SLOT_LOADING && s->rec) {
			/* the new copy queues behind the old one */
			s->rec->slot = -1;
			s->rec = nullptr;
			t->st.evict_waits++;
		}
	}
	slot *s = &t->slots[i];
	s->state = SLOT_RESERVED;
	s->layer = layer;
	s->expert = expert;
	s->pins = 0;
	s->prefetched = false;
	s->prev = s->next = -1;
	*where_of(t, layer, expert) = i;
	return i;
}

void put_free(ms_gpu_tier *t, int32_t i)
{
	slot *s = &t->slots[i];
	lru_remove(t, i);
	if (s->state != SLOT_FREE)
		*where_of(t, s->layer, s->expert) = -1;
	if (s->rec) {
		s->rec->slot = -1;
		s->rec = nullptr;
	}
	s->state = SLOT_FREE;
	s->pins = 0;
	s->next = t->free_head;
	t->free_head = i;
}

/* Caller holds cmu. A record to describe a copy; when all are live,
 * waits for the copies in flight. */
copy_rec *rec_get(ms_gpu_tier *t)
{
	if (!t->rec_free) {
		cudaStreamSynchronize(t->copy);
		do_drain(t);
		reap(t);
	}
	copy_rec *r = t->rec_free;
	if (r)
		t->rec_free = r->next;
	return r;
}

void rec_put(ms_gpu_tier *t, copy_rec *r)
{
	r->state.store(COPY_IDLE, std::memory_order_relaxed);
	r->slot = -1;
	r->next = t->rec_free;
	t->rec_free = r;
}

/* Caller holds cmu. Queues the copy of a daemon-pinned expert into slot i.
 * On failure the daemon pin is handed back here (after the copy stream has
 * drained, so that no half-queued copy still reads the arena). */
int copy_in(ms_gpu_tier *t, int32_t i, uint32_t block,
	    const struct ms_client_expert *ce, struct ms_err *err)
{
	slot *s = &t->slots[i];
	const tlayer *L = &t->layers[s->layer];
	copy_rec *r = rec_get(t);
	cudaError_t x = cudaSuccess;
	const char *what = "no copy record free";
	uint64_t bytes = 0;
	if (!r)
		goto fail;
	if (s->free_recorded &&
	    (x = cudaStreamWaitEvent(t->copy, s->ev_free, 0)) != cudaSuccess) {
		what = "cudaStreamWaitEvent(copy stream, slot free)";
		goto fail;
	}
	if ((x = cudaEventRecord(r->ev_start, t->copy)) != cudaSuccess) {
		what = "cudaEventRecord";
		goto fail;
	}
	for (uint32_t j = 0; j < L->n_proj; j++) {
		if ((x = cudaMemcpyAsync(s->dev + L->off[j], ce->proj[j],
					 (size_t)ce->len[j],
					 cudaMemcpyHostToDevice, t->copy)) !=
		    cudaSuccess) {
			what = "cudaMemcpyAsync host -> device";
			goto fail;
		}
		bytes += ce->len[j];
	}
	if ((x = cudaEventRecord(r->ev_done, t->copy)) != cudaSuccess) {
		what = "cudaEventRecord";
		goto fail;
	}
	r->t = t;
	r->block = block;
	r->expert = (uint16_t)ce->expert;
	r->slot = i;
	r->bytes = bytes;
	r->state.store(COPY_QUEUED, std::memory_order_relaxed);
	t->daemon_pins.fetch_add(1, std::memory_order_relaxed);
	if ((x = cudaLaunchHostFunc(t->copy, on_copied, r)) != cudaSuccess) {
		t->daemon_pins.fetch_sub(1, std::memory_order_relaxed);
		what = "cudaLaunchHostFunc";
		goto fail;
	}
	t->live[t->n_live++] = r;
	s->rec = r;
	s->state = SLOT_LOADING;
	t->st.copies++;
	t->st.bytes_copied += bytes;
	return 0;
fail:
	if (x != cudaSuccess)
		cudaGetLastError();
	cudaStreamSynchronize(t->copy);
	cudaGetLastError();
	{
		uint16_t e = (uint16_t)ce->expert;
		if (t->src.release(t->src.ctx, block, &e, 1))
			t->daemon_errors.fetch_add(1, std::memory_order_relaxed);
		t->daemon_released.fetch_add(1, std::memory_order_relaxed);
	}
	if (r)
		rec_put(t, r);
	put_free(t, i);
	if (x == cudaSuccess)
		return ms_err_set(err, -EIO, "gpu tier: %s", what);
	return cuda_fail(err, x, what);
}

/* The layer index of `block`, or -EINVAL/-ENOTSUP with the reason. */
int layer_of(ms_gpu_tier *t, uint32_t block, struct ms_err *err)
{
	const int32_t li = block < t->m->n_block ? t->block_layer[block] : -1;
	if (li < 0)
		return ms_err_set(err, -EINVAL,
				  "gpu tier: block %u is not a MoE layer of the "
				  "model (%u blocks)",
				  block, t->m->n_block);
	if (!t->layers[li].ok)
		return ms_err_set(err, -ENOTSUP, "gpu tier: block %u: %s", block,
				  t->layers[li].why);
	return li;
}

int check_call(ms_gpu_tier *t, uint32_t block, const uint16_t *experts,
	       unsigned n, struct ms_err *err)
{
	if (!t)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL tier");
	if (!experts || n < 1 || n > MS_MSG_MAX_EXPERTS)
		return ms_err_set(err, -EINVAL,
				  "gpu tier: block %u: %u experts (expected "
				  "1..%d)",
				  block, n, MS_MSG_MAX_EXPERTS);
	const int li = layer_of(t, block, err);
	if (li < 0)
		return li;
	for (unsigned i = 0; i < n; i++)
		if (experts[i] >= t->m->n_expert)
			return ms_err_set(err, -EINVAL,
					  "gpu tier: block %u: expert %u out of "
					  "range (the model has %u)",
					  block, experts[i], t->m->n_expert);
	return li;
}

/* Caller holds cmu. Asks the daemon for the `nw` experts in t->want (their
 * slots reserved in t->want_slot) and copies each in as it arrives. A slot
 * whose expert failed goes back to the free list (want_slot[k] = -1).
 * Returns the first failure, after every answer came in or the wait gave
 * up. */
int fetch(ms_gpu_tier *t, uint32_t block, unsigned nw, struct ms_err *err)
{
	uint64_t id = 0;
	int first = 0;
	char before[256];
	snprintf(before, sizeof(before), "%s", last_error(t));
	int rc = t->src.acquire(t->src.ctx, block, t->want, nw, &id);
	if (rc) {
		for (unsigned k = 0; k < nw; k++) {
			put_free(t, t->want_slot[k]);
			t->want_slot[k] = -1;
		}
		return ms_err_set(err, rc,
				  "gpu tier: asking %s for %u experts of "
				  "block %u: %s",
				  t->src.name, nw, block, strerror(-rc));
	}
	memset(t->answered, 0, nw * sizeof(bool));
	unsigned left = nw;
	int waited = 0;
	while (left) {
		struct ms_client_expert ce;
		uint64_t rid = 0;
		rc = t->src.next(t->src.ctx, &ce, &rid, SLICE_MS);
		if (rc == -ETIMEDOUT) {
			waited += SLICE_MS;
			const char *now = last_error(t);
			if (*now && strcmp(now, before)) {
				rc = ms_err_set(err, -EINVAL,
						"gpu tier: %s refused the "
						"request for block %u: %s",
						t->src.name, block, now);
				break;
			}
			if (t->timeout_ms >= 0 && waited >= t->timeout_ms) {
				rc = ms_err_set(err, -ETIMEDOUT,
						"gpu tier: block %u: %u of %u "
						"experts not answered by %s in "
						"%d ms",
						block, left, nw, t->src.name,
						t->timeout_ms);
				break;
			}
			continue;
		}
		if (rc) {
			rc = ms_err_set(err, rc,
					"gpu tier: waiting for %s (block %u): "
					"%s",
					t->src.name, block, strerror(-rc));
			break;
		}
		unsigned k = nw;
		if (rid == id && ce.block == block)
			for (k = 0; k < nw; k++)
				if (!t->answered[k] && t->want[k] == ce.expert)
					break;
		if (k == nw) {
			/* an answer to a request given up on earlier */
			if (!ce.status) {
				uint16_t e = (uint16_t)ce.expert;
				t->src.release(t->src.ctx, ce.block, &e, 1);
			}
			continue;
		}
		t->answered[k] = true;
		left--;
		const int32_t si = t->want_slot[k];
		const tlayer *L = &t->layers[t->slots[si].layer];
		int bad = ce.status;
		if (!bad && ce.n_proj != L->n_proj)
			bad = -EBADMSG;
		for (uint32_t j = 0; !bad && j < L->n_proj; j++)
			if (ce.len[j] != L->len[j])
				bad = -EBADMSG;
		if (bad) {
			if (!ce.status) {
				uint16_t e = (uint16_t)ce.expert;
				t->src.release(t->src.ctx, block, &e, 1);
			}
			t->daemon_errors.fetch_add(1, std::memory_order_relaxed);
			put_free(t, si);
			t->want_slot[k] = -1;
			if (!first)
				first = ms_err_set(
					err, bad,
					bad == -EBADMSG
						? "gpu tier: block %u expert %u: "
						  "%s sent projections that do "
						  "not match the layer's "
						  "description (%d)"
						: "gpu tier: block %u expert %u: "
						  "%s could not load it (%d)",
					block, ce.expert, t->src.name, bad);
			continue;
		}
		int crc = copy_in(t, si, block, &ce, first ? nullptr : err);
		if (crc) {
			t->want_slot[k] = -1;
			if (!first)
				first = crc;
		}
	}
	if (left) {
		/* given up: these slots hold nothing; late answers are
		 * released when they come */
		for (unsigned k = 0; k < nw; k++)
			if (!t->answered[k] && t->want_slot[k] >= 0) {
				put_free(t, t->want_slot[k]);
				t->want_slot[k] = -1;
			}
		return rc;
	}
	return first;
}

void fill_view(const ms_gpu_tier *t, int32_t si, struct ms_gpu_expert *v)
{
	const slot *s = &t->slots[si];
	const tlayer *L = &t->layers[s->layer];
	*v = L->shape;
	for (uint32_t j = 0; j < L->n_proj; j++)
		v->data[L->role[j]] = s->dev + L->off[j];
}

void unpin(ms_gpu_tier *t, int32_t si)
{
	slot *s = &t->slots[si];
	if (s->pins && !--s->pins)
		lru_push(t, si);
}

/* Describes layer li's experts, and what a slot needs for them. */
void describe_layer(const struct ms_client_layer *C, tlayer *L,
		    uint64_t *need)
{
	memset(L, 0, sizeof(*L));
	L->n_proj = C->n_proj;
	if (C->n_proj < 2 || C->n_proj > 3) {
		snprintf(L->why, sizeof(L->why), "%u projections", C->n_proj);
		return;
	}
	struct ms_expert_view v;
	memset(&v, 0, sizeof(v));
	v.fused = C->n_proj == 2;
	int have = 0;
	for (uint32_t j = 0; j < C->n_proj; j++) {
		int role;
		switch (C->proj[j]) {
		case MS_PROJ_GATE: role = v.fused ? -1 : 0; break;
		case MS_PROJ_UP: role = v.fused ? -1 : 1; break;
		case MS_PROJ_DOWN: role = v.fused ? 1 : 2; break;
		case MS_PROJ_GATE_UP: role = v.fused ? 0 : -1; break;
		default: role = -1; break;
		}
		if (role < 0 || (have & (1 << role))) {
			snprintf(L->why, sizeof(L->why),
				 "projection %u is %s: not a gate/up/down "
				 "layout the GPU FFN knows",
				 j, ms_proj_name(C->proj[j]));
			return;
		}
		have |= 1 << role;
		L->role[j] = role;
		v.type[role] = C->type[j];
		if (C->proj[j] == MS_PROJ_DOWN) {
			v.n_ff = C->ne[j][0];
			v.n_embd = C->ne[j][1];
		}
	}
	for (uint32_t j = 0; j < C->n_proj; j++) {
		const int64_t want_out = C->proj[j] == MS_PROJ_GATE_UP ? 2 * v.n_ff
					 : C->proj[j] == MS_PROJ_DOWN ? v.n_embd
								       : v.n_ff;
		const int64_t want_in =
			C->proj[j] == MS_PROJ_DOWN ? v.n_ff : v.n_embd;
		if (C->ne[j][0] != want_in || C->ne[j][1] != want_out) {
			snprintf(L->why, sizeof(L->why),
				 "%s is [%lld, %lld], expected [%lld, %lld]",
				 ms_proj_name(C->proj[j]), (long long)C->ne[j][0],
				 (long long)C->ne[j][1], (long long)want_in,
				 (long long)want_out);
			return;
		}
	}
	uint64_t by_role[3];
	struct ms_err e = { 0, "" };
	if (ms_expert_view_bytes(&v, by_role, &e)) {
		snprintf(L->why, sizeof(L->why), "%s", e.msg);
		return;
	}
	uint64_t off = 0, sum = 0;
	for (uint32_t j = 0; j < C->n_proj; j++) {
		L->len[j] = by_role[L->role[j]];
		L->off[j] = off;
		off += pad(L->len[j]);
		sum += L->len[j];
	}
	if (sum != C->expert_bytes) {
		snprintf(L->why, sizeof(L->why),
			 "its projections add up to %llu bytes, the daemon "
			 "says an expert is %llu",
			 (unsigned long long)sum,
			 (unsigned long long)C->expert_bytes);
		return;
	}
	memset(&L->shape, 0, sizeof(L->shape));
	L->shape.fused = v.fused;
	L->shape.n_embd = v.n_embd;
	L->shape.n_ff = v.n_ff;
	for (int r = 0; r < 3; r++)
		L->shape.type[r] = v.type[r];
	L->ok = true;
	*need = off;
}

/* Registers the source's memory (the client's read-only mapping of the
 * daemon's arena; an embedded cache's own, writable, arena), or says why
 * not. */
void register_arena(ms_gpu_tier *t, bool no_register)
{
	int sup = 0, ro = 0;
	cudaError_t ce;
	const bool need_ro = !t->src.writable;
	const unsigned flags = cudaHostRegisterPortable |
			       (need_ro ? cudaHostRegisterReadOnly : 0);
	const char *how = need_ro ? "read-only (cudaHostRegisterReadOnly)"
				  : "(cudaHostRegisterPortable)";
	if (no_register) {
		snprintf(t->host_mode, sizeof(t->host_mode),
			 "pageable: not registered (asked not to)");
		return;
	}
	if (!t->arena || !t->arena_len) {
		snprintf(t->host_mode, sizeof(t->host_mode),
			 "pageable: %s names no memory to register",
			 t->src.name);
	} else {
		if (cudaDeviceGetAttribute(&sup, cudaDevAttrHostRegisterSupported,
					   t->device) != cudaSuccess ||
		    cudaDeviceGetAttribute(&ro,
					   cudaDevAttrHostRegisterReadOnlySupported,
					   t->device) != cudaSuccess)
			cudaGetLastError();
		if (!sup) {
			snprintf(t->host_mode, sizeof(t->host_mode),
				 "pageable: device %d cannot register host "
				 "memory (cudaDevAttrHostRegisterSupported = 0)",
				 t->device);
		} else if (need_ro && !ro) {
			snprintf(t->host_mode, sizeof(t->host_mode),
				 "pageable: device %d cannot register read-only "
				 "host memory "
				 "(cudaDevAttrHostRegisterReadOnlySupported = 0) "
				 "and the arena is mapped read-only",
				 t->device);
		} else if ((ce = cudaHostRegister((void *)t->arena,
						  (size_t)t->arena_len, flags)) !=
			   cudaSuccess) {
			cudaGetLastError();
			snprintf(t->host_mode, sizeof(t->host_mode),
				 "pageable: cudaHostRegister %s of the %llu-byte "
				 "arena mapping failed: %s (%s)",
				 how, (unsigned long long)t->arena_len,
				 cudaGetErrorString(ce), cudaGetErrorName(ce));
		} else {
			t->registered = true;
			snprintf(t->host_mode, sizeof(t->host_mode),
				 "registered %s, %llu bytes", how,
				 (unsigned long long)t->arena_len);
			return;
		}
	}
	ms_log(MS_LOG_WARNING,
	       "gpu tier: copies from %s's memory will be staged by the "
	       "driver at pageable speed: %s",
	       t->src.name, t->host_mode + strlen("pageable: "));
}

/* Describes every layer of `m` into layers[] (n_layers) and gives the slot
 * size: the largest expert of the layers the tier can hold. -ENOTSUP with
 * the first layer's reason when it can hold none. */
int describe_all(const struct ms_client_model *m, tlayer *layers,
		 uint64_t *slot, bool warn, struct ms_err *err)
{
	unsigned usable = 0;
	*slot = 0;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		uint64_t need = 0;
		describe_layer(&m->layers[l], &layers[l], &need);
		if (layers[l].ok) {
			usable++;
			if (need > *slot)
				*slot = need;
		} else if (warn) {
			ms_log(MS_LOG_WARNING,
			       "gpu tier: block %u stays off the GPU: %s",
			       m->layers[l].block, layers[l].why);
		}
	}
	if (!usable)
		return ms_err_set(err, -ENOTSUP,
				  "gpu tier: no MoE layer the GPU tier can hold "
				  "(block %u: %s)",
				  m->n_layers ? m->layers[0].block : 0,
				  m->n_layers ? layers[0].why : "no layers");
	return 0;
}

/* moestreamd as a source: the client's own calls. */
int cl_acquire(void *c, uint32_t block, const uint16_t *ex, unsigned n,
	       uint64_t *id)
{
	return ms_client_acquire_async((struct ms_client *)c, block, ex, n, id);
}

int cl_next(void *c, struct ms_client_expert *out, uint64_t *id, int timeout_ms)
{
	return ms_client_next((struct ms_client *)c, out, id, timeout_ms);
}

int cl_release(void *c, uint32_t block, const uint16_t *ex, unsigned n)
{
	return ms_client_release((struct ms_client *)c, block, ex, n);
}

const char *cl_last_error(void *c)
{
	return ms_client_last_error((const struct ms_client *)c);
}

} // namespace

/* ---- the API ---------------------------------------------------------------- */

extern "C" void ms_gpu_tier_free(struct ms_gpu_tier *t)
{
	if (!t)
		return;
	cudaSetDevice(t->device);
	if (t->copy)
		cudaStreamSynchronize(t->copy);
	/* the views die with the tier: work queued on them must finish
	 * before the VRAM goes */
	cudaStreamSynchronize(t->stream);
	cudaGetLastError();
	if (t->src.release) {
		client_lock(t);
		client_unlock(t);
	}
	if (t->registered)
		cudaHostUnregister((void *)t->arena);
	for (uint32_t i = 0; t->slots && i < t->n_slots; i++)
		if (t->slots[i].ev_free)
			cudaEventDestroy(t->slots[i].ev_free);
	for (uint32_t i = 0; t->recs && i < t->n_recs; i++) {
		if (t->recs[i].ev_start)
			cudaEventDestroy(t->recs[i].ev_start);
		if (t->recs[i].ev_done)
			cudaEventDestroy(t->recs[i].ev_done);
		t->recs[i].state.~atomic();
	}
	if (t->own_copy && t->copy)
		cudaStreamDestroy(t->copy);
	cudaFree(t->vram_alloc);
	cudaGetLastError();
	pthread_mutex_destroy(&t->cmu);
	free(t->recs);
	free(t->live);
	free(t->slots);
	free(t->layers);
	free(t->block_layer);
	free(t->where);
	free(t->want);
	free(t->want_slot);
	free(t->answered);
	free(t->pinned);
	t->~ms_gpu_tier();
	free(t);
}

extern "C" int ms_gpu_tier_slot_bytes(const struct ms_client_model *m,
				      uint64_t *bytes, struct ms_err *err)
{
	if (!m || !bytes)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL %s",
				  !m ? "model" : "bytes");
	tlayer *L = (tlayer *)calloc(m->n_layers ? m->n_layers : 1,
				     sizeof(tlayer));
	if (!L)
		return ms_err_set(err, -ENOMEM, "gpu tier: out of memory");
	int rc = describe_all(m, L, bytes, false, err);
	free(L);
	return rc;
}

extern "C" int ms_gpu_tier_init(struct ms_gpu_tier **out, struct ms_client *c,
				const struct ms_gpu_tier_opts *o,
				struct ms_err *err)
{
	if (out)
		*out = nullptr;
	if (!c)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL client");
	struct ms_gpu_tier_source src;
	memset(&src, 0, sizeof(src));
	src.name = "moestreamd";
	src.ctx = c;
	src.model = ms_client_model(c);
	src.arena = ms_client_arena(c, &src.arena_len);
	src.acquire = cl_acquire;
	src.next = cl_next;
	src.release = cl_release;
	src.last_error = cl_last_error;
	return ms_gpu_tier_init_source(out, &src, o, err);
}

extern "C" int ms_gpu_tier_init_source(struct ms_gpu_tier **out,
				       const struct ms_gpu_tier_source *src,
				       const struct ms_gpu_tier_opts *o,
				       struct ms_err *err)
{
	if (!out)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL out");
	*out = nullptr;
	if (!src || !o)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL %s",
				  !src ? "source" : "options");
	if (!src->model || !src->acquire || !src->next || !src->release)
		return ms_err_set(err, -EINVAL, "gpu tier: the source %s lacks "
				  "its model or one of acquire, next, release",
				  src->name ? src->name : "(unnamed)");
	if (o->timeout_ms < -1)
		return ms_err_set(err, -EINVAL, "gpu tier: timeout %d ms",
				  o->timeout_ms);
	int n_dev;
	int rc = msg_find_device(o->device, "gpu tier: ", &n_dev, err);
	if (rc)
		return rc;
	const struct ms_client_model *m = src->model;
	if (!m->n_layers || !m->n_expert)
		return ms_err_set(err, -EINVAL,
				  "gpu tier: the %s model has no MoE layers",
				  src->name ? src->name : "source's");
	for (uint32_t l = 0; l < m->n_layers; l++)
		if (m->layers[l].block >= m->n_block)
			return ms_err_set(err, -EINVAL,
					  "gpu tier: layer %u is block %u of a "
					  "model of %u blocks",
					  l, m->layers[l].block, m->n_block);

	void *mem = calloc(1, sizeof(ms_gpu_tier));
	if (!mem)
		return ms_err_set(err, -ENOMEM, "gpu tier: out of memory");
	ms_gpu_tier *t = new (mem) ms_gpu_tier();
	cudaError_t ce;
	t->src = *src;
	if (!t->src.name)
		t->src.name = "the expert source";
	t->m = m;
	t->device = o->device;
	t->stream = (cudaStream_t)o->stream;
	t->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	t->lru_head = t->lru_tail = t->free_head = -1;
	pthread_mutex_init(&t->cmu, nullptr);
	t->done.store(nullptr);
	t->arena = (const uint8_t *)src->arena;
	t->arena_len = src->arena_len;

	/* layers and the slot size */
	t->layers = (tlayer *)calloc(m->n_layers, sizeof(tlayer));
	t->block_layer = (int32_t *)malloc(m->n_block * sizeof(int32_t));
	t->where = (int32_t *)malloc((size_t)m->n_layers * m->n_expert *
				     sizeof(int32_t));
	t->want = (uint16_t *)malloc(MS_MSG_MAX_EXPERTS * sizeof(uint16_t));
	t->want_slot = (int32_t *)malloc(MS_MSG_MAX_EXPERTS * sizeof(int32_t));
	t->answered = (bool *)malloc(MS_MSG_MAX_EXPERTS * sizeof(bool));
	t->pinned = (int32_t *)malloc(MS_MSG_MAX_EXPERTS * sizeof(int32_t));
	if (!t->layers || !t->block_layer || !t->where || !t->want ||
	    !t->want_slot || !t->answered || !t->pinned) {
		rc = ms_err_set(err, -ENOMEM, "gpu tier: out of memory");
		goto fail;
	}
	for (size_t k = 0; k < (size_t)m->n_layers * m->n_expert; k++)
		t->where[k] = -1;
	for (uint32_t b = 0; b < m->n_block; b++)
		t->block_layer[b] = -1;
	for (uint32_t l = 0; l < m->n_layers; l++)
		t->block_layer[m->layers[l].block] = (int32_t)l;
	if ((rc = describe_all(m, t->layers, &t->slot_bytes, true, err)))
		goto fail;
	if (o->vram_bytes / t->slot_bytes < 1 ||
	    o->vram_bytes / t->slot_bytes > INT32_MAX) {
		rc = ms_err_set(err, -EINVAL,
				"gpu tier: a VRAM budget of %llu bytes holds %s "
				"(a slot is %llu bytes: the largest expert, "
				"projections 256-byte aligned)",
				(unsigned long long)o->vram_bytes,
				o->vram_bytes < t->slot_bytes ? "no expert"
							       : "too many slots",
				(unsigned long long)t->slot_bytes);
		goto fail;
	}
	t->n_slots = (uint32_t)(o->vram_bytes / t->slot_bytes);

	if ((ce = cudaSetDevice(t->device)) != cudaSuccess) {
		rc = cuda_fail(err, ce, "cudaSetDevice");
		goto fail;
	}
	if ((ce = cudaStreamCreateWithFlags(&t->copy, cudaStreamNonBlocking)) !=
	    cudaSuccess) {
		t->copy = nullptr;
		rc = cuda_fail(err, ce, "creating the copy stream");
		goto fail;
	}
	t->own_copy = true;
	/* cudaMalloc's blocks are 256-byte aligned; asking for the margin
	 * anyway keeps the slots aligned under any allocator */
	if ((ce = cudaMalloc((void **)&t->vram_alloc,
			     (size_t)(t->slot_bytes * t->n_slots) +
				     SLOT_ALIGN)) != cudaSuccess) {
		t->vram_alloc = nullptr;
		cudaGetLastError();
		rc = ms_err_set(err, msg_cuda_errno(ce),
				"gpu tier: allocating %u slots of %llu bytes "
				"(%llu bytes of VRAM): %s",
				t->n_slots, (unsigned long long)t->slot_bytes,
				(unsigned long long)(t->slot_bytes * t->n_slots),
				cudaGetErrorString(ce));
		goto fail;
	}
	t->vram = (uint8_t *)(((uintptr_t)t->vram_alloc + SLOT_ALIGN - 1) &
			      ~(uintptr_t)(SLOT_ALIGN - 1));
	t->slots = (slot *)calloc(t->n_slots, sizeof(slot));
	t->n_recs = t->n_slots * 2 < 64 ? 64 : t->n_slots * 2 > 1024 ? 1024
								   : t->n_slots * 2;
	t->recs = (copy_rec *)calloc(t->n_recs, sizeof(copy_rec));
	t->live = (copy_rec **)calloc(t->n_recs, sizeof(copy_rec *));
	if (!t->slots || !t->recs || !t->live) {
		free(t->recs);
		t->recs = nullptr;
		rc = ms_err_set(err, -ENOMEM, "gpu tier: out of memory");
		goto fail;
	}
	for (uint32_t i = 0; i < t->n_recs; i++) {
		copy_rec *r = new (&t->recs[i]) copy_rec();
		r->state.store(COPY_IDLE);
		r->slot = -1;
		if ((ce = cudaEventCreate(&r->ev_start)) != cudaSuccess ||
		    (ce = cudaEventCreate(&r->ev_done)) != cudaSuccess) {
			rc = cuda_fail(err, ce, "cudaEventCreate");
			goto fail;
		}
		r->next = t->rec_free;
		t->rec_free = r;
	}
	for (int32_t i = (int32_t)t->n_slots - 1; i >= 0; i--) {
		slot *s = &t->slots[i];
		s->dev = t->vram + (uint64_t)i * t->slot_bytes;
		s->prev = -1;
		s->next = t->free_head;
		t->free_head = i;
		if ((ce = cudaEventCreateWithFlags(&s->ev_free,
						   cudaEventDisableTiming)) !=
		    cudaSuccess) {
			rc = cuda_fail(err, ce, "cudaEventCreate");
			goto fail;
		}
	}
	register_arena(t, o->no_register);
	*out = t;
	return 0;
fail:
	ms_gpu_tier_free(t);
	return rc;
}

extern "C" int ms_gpu_tier_acquire(struct ms_gpu_tier *t, uint32_t block,
				   const uint16_t *experts, unsigned n,
				   struct ms_gpu_expert *out, struct ms_err *err)
{
	int li = check_call(t, block, experts, n, err);
	if (li < 0)
		return li;
	if (!out)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL views");
	if (n > t->n_slots)
		return ms_err_set(err, -ENOSPC,
				  "gpu tier: block %u: %u experts at once, the "
				  "VRAM budget holds %u",
				  block, n, t->n_slots);
	CUDA_TRY(cudaSetDevice(t->device), "cudaSetDevice");
	reap(t);

	/* pin the hits first, so that the misses cannot evict them; reserve
	 * a slot for each distinct miss */
	unsigned nw = 0, np = 0;
	int rc = 0;
	for (unsigned i = 0; i < n; i++) {
		int32_t si = *where_of(t, li, experts[i]);
		if (si >= 0 && t->slots[si].state != SLOT_RESERVED) {
			slot *s = &t->slots[si];
			if (!s->pins++)
				lru_remove(t, si);
			if (s->prefetched) {
				t->st.prefetch_hits++;
				s->prefetched = false;
			}
			t->st.hits++;
			t->pinned[np++] = si;
		}
	}
	for (unsigned i = 0; i < n && !rc; i++) {
		if (*where_of(t, li, experts[i]) >= 0)
			continue; /* a hit, or a miss met before */
		int32_t si = take_slot(t, li, experts[i]);
		if (si < 0) {
			rc = ms_err_set(err, -ENOSPC,
					"gpu tier: block %u: no VRAM slot for "
					"expert %u: all %u slots are pinned "
					"(release experts before acquiring "
					"more)",
					block, experts[i], t->n_slots);
			break;
		}
		t->want[nw] = experts[i];
		t->want_slot[nw++] = si;
	}
	if (rc) {
		for (unsigned k = 0; k < nw; k++)
			put_free(t, t->want_slot[k]);
		for (unsigned k = 0; k < np; k++)
			unpin(t, t->pinned[k]);
		return rc;
	}
	if (nw) {
		client_lock(t);
		rc = fetch(t, block, nw, err);
		client_unlock(t);
	}
	if (rc) {
		/* what came in stays cached, unpinned */
		for (unsigned k = 0; k < nw; k++)
			if (t->want_slot[k] >= 0)
				lru_push(t, t->want_slot[k]);
		for (unsigned k = 0; k < np; k++)
			unpin(t, t->pinned[k]);
		return rc;
	}
	t->st.misses += nw;
	/* the misses' pins: one per occurrence */
	for (unsigned i = 0; i < n; i++) {
		const int32_t si = *where_of(t, li, experts[i]);
		slot *s = &t->slots[si];
		bool hit = false;
		for (unsigned k = 0; k < np && !hit; k++)
			hit = t->pinned[k] == si;
		if (!hit) {
			if (!s->pins++)
				lru_remove(t, si);
		}
		fill_view(t, si, &out[i]);
	}
	/* the compute stream waits for every copy not known complete */
	for (unsigned i = 0; i < n; i++) {
		slot *s = &t->slots[*where_of(t, li, experts[i])];
		if (s->state != SLOT_LOADING || !s->rec)
			continue;
		if (s->rec->state.load(std::memory_order_acquire) >= COPY_DONE)
			continue;
		cudaError_t ce = cudaStreamWaitEvent(t->stream, s->rec->ev_done, 0);
		if (ce != cudaSuccess) {
			for (unsigned k = 0; k < n; k++)
				unpin(t, *where_of(t, li, experts[k]));
			return cuda_fail(err, ce,
					 "cudaStreamWaitEvent(compute stream, "
					 "copy done)");
		}
	}
	return 0;
}

extern "C" int ms_gpu_tier_prefetch(struct ms_gpu_tier *t, uint32_t block,
				    const uint16_t *experts, unsigned n,
				    struct ms_err *err)
{
	int li = check_call(t, block, experts, n, err);
	if (li < 0)
		return li;
	CUDA_TRY(cudaSetDevice(t->device), "cudaSetDevice");
	reap(t);
	unsigned nw = 0;
	for (unsigned i = 0; i < n; i++) {
		if (*where_of(t, li, experts[i]) >= 0)
			continue;
		int32_t si = take_slot(t, li, experts[i]);
		if (si < 0) {
			t->st.prefetch_dropped++;
			continue;
		}
		t->want[nw] = experts[i];
		t->want_slot[nw++] = si;
	}
	if (!nw)
		return 0;
	client_lock(t);
	int rc = fetch(t, block, nw, err);
	client_unlock(t);
	for (unsigned k = 0; k < nw; k++) {
		const int32_t si = t->want_slot[k];
		if (si < 0)
			continue;
		t->slots[si].prefetched = true;
		t->st.prefetched++;
		lru_push(t, si);
	}
	return rc;
}

extern "C" int ms_gpu_tier_release(struct ms_gpu_tier *t, uint32_t block,
				   const uint16_t *experts, unsigned n,
				   struct ms_err *err)
{
	int li = check_call(t, block, experts, n, err);
	if (li < 0)
		return li;
	CUDA_TRY(cudaSetDevice(t->device), "cudaSetDevice");
	int rc = 0;
	for (unsigned i = 0; i < n; i++) {
		const int32_t si = *where_of(t, li, experts[i]);
		if (si < 0 || !t->slots[si].pins) {
			if (!rc)
				rc = ms_err_set(err, -EINVAL,
						"gpu tier: release of block %u "
						"expert %u: not pinned in VRAM",
						block, experts[i]);
			continue;
		}
		slot *s = &t->slots[si];
		/* the slot is reused only once the compute stream got here */
		cudaError_t ce = cudaEventRecord(s->ev_free, t->stream);
		if (ce != cudaSuccess) {
			/* cannot know when the stream is done with it:
			 * wait for it now */
			cudaGetLastError();
			cudaStreamSynchronize(t->stream);
			cudaGetLastError();
			s->free_recorded = false;
		} else {
			s->free_recorded = true;
		}
		unpin(t, si);
	}
	reap(t);
	return rc;
}

extern "C" int ms_gpu_tier_ffn(struct ms_gpu_tier *t, struct ms_gpu_ctx *ctx,
			       uint32_t block, const uint16_t *experts,
			       unsigned n, const float *x_dev, int64_t x_stride,
			       float *y_dev, int64_t n_tokens,
			       enum ms_gpu_ffn_path path, struct ms_err *err)
{
	if (!t || !ctx)
		return ms_err_set(err, -EINVAL, "gpu tier ffn: NULL %s",
				  !t ? "tier" : "context");
	if ((cudaStream_t)ms_gpu_ctx_stream(ctx) != t->stream)
		return ms_err_set(err, -EINVAL,
				  "gpu tier ffn: the context's stream is not the "
				  "tier's compute stream");
	if (n > MS_MSG_MAX_EXPERTS)
		return ms_err_set(err, -EINVAL, "gpu tier ffn: %u experts", n);
	struct ms_gpu_expert v[64], *vp = v;
	if (n > 64) {
		vp = (struct ms_gpu_expert *)malloc(n * sizeof(*vp));
		if (!vp)
			return ms_err_set(err, -ENOMEM, "gpu tier ffn: out of memory");
	}
	int rc = ms_gpu_tier_acquire(t, block, experts, n, vp, err);
	if (!rc) {
		rc = ms_gpu_experts_ffn(ctx, vp, (int)n, x_dev, x_stride, y_dev,
					n_tokens, path, err);
		struct ms_err e2 = { 0, "" };
		int rr = ms_gpu_tier_release(t, block, experts, n, &e2);
		if (!rc && rr)
			rc = ms_err_set(err, rr, "%s", e2.msg);
	}
	if (vp != v)
		free(vp);
	return rc;
}

extern "C" int ms_gpu_tier_sync(struct ms_gpu_tier *t, struct ms_err *err)
{
	if (!t)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL tier");
	CUDA_TRY(cudaSetDevice(t->device), "cudaSetDevice");
	return sync_copies(t, err);
}

extern "C" int ms_gpu_tier_flush(struct ms_gpu_tier *t, struct ms_err *err)
{
	if (!t)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL tier");
	CUDA_TRY(cudaSetDevice(t->device), "cudaSetDevice");
	int rc = sync_copies(t, err);
	if (rc)
		return rc;
	uint32_t busy = 0;
	for (uint32_t i = 0; i < t->n_slots; i++) {
		slot *s = &t->slots[i];
		if (s->state == SLOT_FREE)
			continue;
		if (s->pins || s->state == SLOT_RESERVED) {
			busy++;
			continue;
		}
		put_free(t, (int32_t)i);
	}
	if (busy)
		return ms_err_set(err, -EBUSY,
				  "gpu tier: flush: %u experts are pinned and "
				  "stay",
				  busy);
	return 0;
}

extern "C" int ms_gpu_tier_stats(struct ms_gpu_tier *t,
				 struct ms_gpu_tier_stats *s, struct ms_err *err)
{
	if (!t || !s)
		return ms_err_set(err, -EINVAL, "gpu tier: NULL %s",
				  !t ? "tier" : "stats");
	/* records whose host function already ran; no waiting */
	try_drain(t);
	reap(t);
	*s = t->st;
	s->daemon_pins = t->daemon_pins.load(std::memory_order_relaxed);
	s->daemon_released = t->daemon_released.load(std::memory_order_relaxed);
	s->daemon_errors = t->daemon_errors.load(std::memory_order_relaxed);
	s->slots = t->n_slots;
	s->resident = s->pinned = s->loading = 0;
	for (uint32_t i = 0; i < t->n_slots; i++) {
		const slot *x = &t->slots[i];
		if (x->state == SLOT_LOADING || x->state == SLOT_READY)
			s->resident++;
		if (x->state == SLOT_LOADING)
			s->loading++;
		if (x->pins)
			s->pinned++;
	}
	s->slot_bytes = t->slot_bytes;
	s->vram_bytes = t->slot_bytes * t->n_slots;
	s->host_registered = t->registered;
	snprintf(s->host_mode, sizeof(s->host_mode), "%s", t->host_mode);
	return 0;
}

extern "C" void *ms_gpu_tier_stream(const struct ms_gpu_tier *t)
{
	return t ? (void *)t->stream : nullptr;
}

extern "C" void *ms_gpu_tier_copy_stream(const struct ms_gpu_tier *t)
{
	return t ? (void *)t->copy : nullptr;
}

/* ---- for benchmarks and tests ------------------------------------------------ */

extern "C" int ms_gpu_host_alloc(void **p, size_t bytes, struct ms_err *err)
{
	if (!p)
		return ms_err_set(err, -EINVAL, "gpu: NULL pointer");
	*p = nullptr;
	cudaError_t ce = cudaHostAlloc(p, bytes ? bytes : 1, cudaHostAllocDefault);
	if (ce != cudaSuccess) {
		*p = nullptr;
		cudaGetLastError();
		return ms_err_set(err, msg_cuda_errno(ce),
				  "gpu: cudaHostAlloc of %zu bytes: %s", bytes,
				  cudaGetErrorString(ce));
	}
	return 0;
}

extern "C" void ms_gpu_host_free(void *p)
{
	if (p)
		cudaFreeHost(p);
}

extern "C" int ms_gpu_h2d_time(void *dst_dev, const void *const *src,
			       const uint64_t *len, int n, void *stream,
			       double *ms, struct ms_err *err)
{
	if (!dst_dev || !src || !len || n < 1 || !ms)
		return ms_err_set(err, -EINVAL, "gpu h2d: bad arguments (%d pieces)",
				  n);
	cudaStream_t s = (cudaStream_t)stream;
	cudaEvent_t a = nullptr, b = nullptr;
	cudaError_t ce;
	int rc = 0;
	uint64_t at = 0;
	float t = 0;
	if (!s && (ce = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)) !=
		      cudaSuccess) {
		return cuda_fail(err, ce, "cudaStreamCreate");
	}
	if ((ce = cudaEventCreate(&a)) != cudaSuccess ||
	    (ce = cudaEventCreate(&b)) != cudaSuccess ||
	    (ce = cudaEventRecord(a, s)) != cudaSuccess) {
		rc = cuda_fail(err, ce, "cudaEventCreate/Record");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		if ((ce = cudaMemcpyAsync((uint8_t *)dst_dev + at, src[i],
					  (size_t)len[i], cudaMemcpyHostToDevice,
					  s)) != cudaSuccess) {
			rc = cuda_fail(err, ce, "cudaMemcpyAsync host -> device");
			goto out;
		}
		at += len[i];
	}
	if ((ce = cudaEventRecord(b, s)) != cudaSuccess ||
	    (ce = cudaEventSynchronize(b)) != cudaSuccess ||
	    (ce = cudaEventElapsedTime(&t, a, b)) != cudaSuccess) {
		rc = cuda_fail(err, ce, "timing the copies");
		goto out;
	}
	*ms = t;
out:
	if (rc)
		cudaStreamSynchronize(s);
	if (a)
		cudaEventDestroy(a);
	if (b)
		cudaEventDestroy(b);
	if (!stream)
		cudaStreamDestroy(s);
	return rc;
}

extern "C" int ms_gpu_host_is_pinned(const void *p, struct ms_err *err)
{
	cudaPointerAttributes a;
	memset(&a, 0, sizeof(a));
	cudaError_t ce = cudaPointerGetAttributes(&a, p);
	if (ce != cudaSuccess) {
		cudaGetLastError();
		return cuda_fail(err, ce, "cudaPointerGetAttributes");
	}
	return a.type == cudaMemoryTypeHost;
}
