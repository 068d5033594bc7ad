/*
 * cache.c - the expert cache: entries keyed by (layer, expert), slots in the
 * arena, pins, LRU, the budget, loads through the I/O engine.
 *
 * Slots. A model has a handful of distinct expert sizes (types vary by layer
 * in dynamic quants). Each expert's projections are read widened to
 * MS_IO_ALIGN, so a slot holds the widened projections back to back; the
 * slot size of a layer is the largest widened total over its experts, rounded
 * up to 4 KiB; layers whose sizes differ by under 3% (alignment) share a
 * class, at the larger size.
 * Each class gets a region of the arena in proportion to the bytes of the
 * experts it holds (routing spreads over layers, so each layer's share of the
 * cache follows its share of the model), and at least one token's worth
 * (n_expert_used slots). Waste - arena bytes no expert byte can use - is the
 * padding inside slots plus the tail of each region, and is reported.
 *
 * Entries. EMPTY -> LOADING -> READY, or FAILED (with the error; a later
 * acquire tries again). Pins are a reference count; an entry with pins, or
 * loading, is never evicted. Unpinned READY entries sit on one of two LRU
 * lists per class: prefetched-but-never-used (evicted first: a guess that did
 * not pay) and the rest. Sticky pins (cache.pin, cache.pin_top) keep entries
 * off both lists.
 *
 * Waiting. An acquire that finds no free or evictable slot (everything pinned
 * or loading) queues the entry on its class with a deadline; a release that
 * frees a slot starts the oldest waiter's load; a reaper thread fails the
 * waiters whose deadline passed with -EBUSY. Every acquire that does not
 * answer at once gets exactly one callback.
 *
 * Reads (ms_read_info). O_DIRECT into an arena on 4 KiB pages is slow on some
 * devices (a virtio disk here: 0.3-0.8 of the same reads into huge pages),
 * and a shared memfd gets 4 KiB pages wherever shmem THP is off and no
 * hugetlbfs pages are reserved - as distributions ship. Staging auto then
 * has the engine read into a few MiB of anonymous huge-page buffers and copy
 * into the arena; those bytes come out of cache.size, so that the process
 * still holds what it was told to. Where the arena got huge pages, reads
 * land in it directly and the whole cache.size is arena.
 *
 * Locking: one mutex. Callbacks to clients run after it is dropped. The
 * engine's lock is only ever taken inside ours (submit, cancel, promote),
 * never the other way round: engine callbacks arrive without its lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moestream/cache.h"

#define NONE UINT32_MAX
#define SLOT_ROUND MS_IO_ALIGN
#define CLASS_MERGE 0.03 /* sizes within 3% share a class (the larger) */
#define PIN_TOP_EVERY 4096

enum { LRU_NONE = 0, LRU_MAIN = 1, LRU_PREFETCH = 2, LRU_PF_LOADING = 3 };

/* An answer on its way to a waiter, collected under the lock and delivered
 * after it is dropped. */
struct done_list {
	struct waiter *w;
	uint32_t idx;
	int result;
	struct ms_expert_loc loc;
	struct done_list *next;
};

/* Each waiter carries the node of its answer: answering allocates nothing,
 * so no answer (and no pin) is lost when memory runs out. */
struct waiter {
	ms_cache_cb cb;
	void *ctx;
	struct waiter *next;
	struct done_list done;
};

struct entry {
	struct ms_cache *owner; /* for the engine's callback */
	uint8_t state;
	uint8_t list;         /* LRU_* this entry is on */
	bool sticky;          /* cache.pin / pin_top */
	bool prefetched;      /* loaded by a prefetch, not used since */
	bool slot_wait;       /* queued for a slot */
	uint8_t io_cls;
	int err;
	uint32_t refs;
	uint32_t slot;
	uint32_t prev, next;  /* list links (entry indices) */
	uint64_t io_id;
	uint64_t uses;
	uint64_t pf_seq;       /* c->seq when its prefetch started */
	uint64_t t_start_ns;
	uint64_t deadline_ns; /* slot wait */
	struct waiter *waiters;
};

struct list {
	uint32_t head, tail;
};

struct klass {
	uint64_t slot_bytes;
	uint64_t raw_bytes;   /* largest expert (unwidened) of the class */
	uint64_t base;        /* region offset in the arena */
	uint32_t n_slots;
	uint32_t first_slot;
	uint32_t *free;       /* stack of free slot indices */
	uint32_t n_free;
	struct list lru[3];   /* [LRU_MAIN], [LRU_PREFETCH] */
	uint32_t *waitq;      /* ring of entries waiting for a slot (answered
				 ones are skipped lazily) */
	uint32_t wq_head, wq_len, wq_cap;
	uint32_t n_waiting;   /* entries in waitq still waiting */
	uint32_t n_sticky;
};

struct ms_cache {
	const struct ms_model *m;
	struct ms_cache_config cfg;
	struct ms_arena arena;
	struct ms_io *io;
	struct ms_read_info read;
	pthread_mutex_t mu;
	pthread_cond_t reap_cv;
	pthread_t reaper;
	bool reaper_started, stopping;

	uint32_t n_layers, n_expert;
	struct entry *e;          /* [n_layers * n_expert] */
	uint32_t *layer_class;    /* [n_layers] */
	uint32_t n_classes;
	struct klass *cls;
	uint32_t *slot_entry;     /* [n_slots]: entry or NONE */
	uint32_t n_slots;
	struct list pf_loading;   /* prefetches in flight (for cancel_stale) */
	uint64_t pf_inflight_bytes;
	uint64_t acquires;
	uint64_t seq;             /* acquire calls so far */
	uint64_t *layer_seq;      /* [n_layers]: seq of the layer's last acquire */
	uint32_t cur_layer;       /* layer of the last acquire */
	uint32_t n_waiting;       /* entries in slot wait queues */
	struct ms_cache_stats st;
};

void ms_cache_config_default(struct ms_cache_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->arena.size = 1ull << 30;
	cfg->arena.huge = MS_HUGE_AUTO;
	cfg->arena.numa_node = MS_NUMA_AUTO;
	cfg->arena.lock = true;
	cfg->staging = MS_STAGING_AUTO;
	ms_io_config_default(&cfg->io);
	cfg->acquire_timeout_ms = 5000;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- lists (mu held) ----------------------------------------------------------- */

static struct list *list_of(struct ms_cache *c, uint32_t idx, uint8_t which)
{
	if (which == LRU_PF_LOADING)
		return &c->pf_loading;
	return &c->cls[c->layer_class[idx / c->n_expert]].lru[which];
}

static void do_list_remove(struct ms_cache *c, uint32_t idx)
{
	struct entry *e = &c->e[idx];
	if (e->list == LRU_NONE)
		return;
	struct list *l = list_of(c, idx, e->list);
	if (e->prev != NONE)
		c->e[e->prev].next = e->next;
	else
		l->head = e->next;
	if (e->next != NONE)
		c->e[e->next].prev = e->prev;
	else
		l->tail = e->prev;
	e->prev = e->next = NONE;
	e->list = LRU_NONE;
}

static void do_list_append(struct ms_cache *c, uint32_t idx, uint8_t which)
{
	struct entry *e = &c->e[idx];
	struct list *l = list_of(c, idx, which);
	e->list = which;
	e->next = NONE;
	e->prev = l->tail;
	if (l->tail != NONE)
		c->e[l->tail].next = idx;
	else
		l->head = idx;
	l->tail = idx;
}

/* ---- slots (mu held) --------------------------------------------------------------- */

static void expert_loc(const struct ms_cache *c, uint32_t idx,
		       struct ms_expert_loc *loc)
{
	uint32_t layer = idx / c->n_expert, expert = idx % c->n_expert;
	const struct ms_moe_layer *L = &c->m->layers[layer];
	const struct ms_extent *x = ms_model_expert(c->m, layer, expert);
	const struct klass *k = &c->cls[c->layer_class[layer]];
	uint64_t at = k->base + (uint64_t)(c->e[idx].slot - k->first_slot) *
					k->slot_bytes;
	loc->n_proj = L->n_proj;
	for (uint32_t j = 0; j < L->n_proj; j++) {
		uint64_t aoff, alen, skip;
		ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip);
		loc->off[j] = at + skip;
		loc->len[j] = x[j].bytes;
		at += alen;
	}
}

/* A prefetch is stale once its layer has been acquired since it started and
 * the reader has moved on to another layer: the token it was for came, did
 * not take it, and is gone. (While the layer is still being acquired, as in
 * one batched ACQUIRE, it is not stale: the next expert may be it.) */
static bool do_pf_stale(const struct ms_cache *c, uint32_t idx)
{
	uint32_t l = idx / c->n_expert;
	return c->layer_seq[l] > c->e[idx].pf_seq && c->cur_layer != l;
}

static void do_note_acquire(struct ms_cache *c, uint32_t layer)
{
	c->layer_seq[layer] = ++c->seq;
	c->cur_layer = layer;
}

/* A slot for entry idx: a free one, else an unpinned READY entry of the
 * class, in the order below. NONE if all are pinned or loading. */
static uint32_t do_take_slot(struct ms_cache *c, uint32_t idx)
{
	struct klass *k = &c->cls[c->layer_class[idx / c->n_expert]];
	if (k->n_free)
		return k->free[--k->n_free];
	/* Stale unused prefetches first (a guess that did not pay), then the
	 * least recently used, then prefetches still ahead of their reader:
	 * evicting those first would throw away the next layer's experts to
	 * make room for this one's. */
	for (int pass = 0; pass < 3; pass++) {
		int which = pass == 1 ? LRU_MAIN : LRU_PREFETCH;
		uint32_t v = k->lru[which].head;
		if (pass == 0)
			for (unsigned n = 0; v != NONE && !do_pf_stale(c, v) && n < 64; n++)
				v = c->e[v].next;
		if (v == NONE || (pass == 0 && !do_pf_stale(c, v)))
			continue;
		struct entry *ve = &c->e[v];
		do_list_remove(c, v);
		uint32_t slot = ve->slot;
		if (ve->prefetched)
			c->st.prefetch_wasted_bytes += k->raw_bytes;
		ve->state = MS_ENTRY_EMPTY;
		ve->slot = NONE;
		ve->prefetched = false;
		c->slot_entry[slot] = NONE;
		c->st.evictions++;
		return slot;
	}
	return NONE;
}

static void do_free_slot(struct ms_cache *c, uint32_t idx)
{
	struct entry *e = &c->e[idx];
	if (e->slot == NONE)
		return;
	struct klass *k = &c->cls[c->layer_class[idx / c->n_expert]];
	c->slot_entry[e->slot] = NONE;
	k->free[k->n_free++] = e->slot;
	e->slot = NONE;
}

/* ---- loads ----------------------------------------------------------------------------- */

static void io_done(void *ctx, uint64_t id, int result);

/* Starts reading entry idx into its slot (state LOADING). */
static int do_start_load(struct ms_cache *c, uint32_t idx, uint32_t slot,
			 enum ms_io_class cls)
{
	struct entry *e = &c->e[idx];
	uint32_t layer = idx / c->n_expert, expert = idx % c->n_expert;
	const struct ms_moe_layer *L = &c->m->layers[layer];
	const struct ms_extent *x = ms_model_expert(c->m, layer, expert);
	const struct klass *k = &c->cls[c->layer_class[layer]];
	struct ms_io_extent ext[MS_MOE_MAX_PROJ];
	uint64_t at = k->base + (uint64_t)(slot - k->first_slot) * k->slot_bytes;
	for (uint32_t j = 0; j < L->n_proj; j++) {
		uint64_t aoff, alen, skip;
		ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip);
		ext[j].file = x[j].shard;
		ext[j].offset = aoff;
		ext[j].len = alen;
		ext[j].dst = c->arena.base + at;
		at += alen;
	}
	e->slot = slot;
	c->slot_entry[slot] = idx;
	e->state = MS_ENTRY_LOADING;
	e->io_cls = (uint8_t)cls;
	e->t_start_ns = now_ns();
	int rc = ms_io_submit(c->io, ext, L->n_proj, cls, io_done, e, &e->io_id);
	if (rc) {
		e->state = MS_ENTRY_FAILED;
		e->err = rc;
		do_free_slot(c, idx);
		return rc;
	}
	c->st.loads++;
	if (cls == MS_IO_PREFETCH) {
		c->pf_inflight_bytes += k->raw_bytes;
		do_list_append(c, idx, LRU_PF_LOADING);
	}
	return 0;
}

/* Hands the waiters of entry idx their answer: collects them on *out. */
static void do_answer(struct ms_cache *c, uint32_t idx, int result,
		      struct done_list **out)
{
	struct entry *e = &c->e[idx];
	struct waiter *w = e->waiters;
	e->waiters = NULL;
	for (; w; w = w->next) {
		struct done_list *d = &w->done;
		memset(d, 0, sizeof(*d));
		d->w = w;
		d->idx = idx;
		d->result = result;
		if (!result)
			expert_loc(c, idx, &d->loc);
		else
			e->refs--; /* a failed acquire holds no pin */
		d->next = *out;
		*out = d;
	}
}

static void deliver(struct ms_cache *c, struct done_list *d)
{
	while (d) {
		struct done_list *next = d->next;
		d->w->cb(d->w->ctx, d->idx / c->n_expert, d->idx % c->n_expert,
			 d->result, d->result ? NULL : &d->loc);
		free(d->w); /* d lives in it */
		d = next;
	}
}

/* A slot may have come free in class k: start waiters' loads. */
static void do_serve_waiters(struct ms_cache *c, struct klass *k,
			     struct done_list **out)
{
	while (k->wq_len) {
		uint32_t idx = k->waitq[k->wq_head];
		struct entry *e = &c->e[idx];
		if (!e->slot_wait) { /* answered already (deadline) */
			k->wq_head = (k->wq_head + 1) % k->wq_cap;
			k->wq_len--;
			continue;
		}
		uint32_t slot = do_take_slot(c, idx);
		if (slot == NONE)
			return;
		k->wq_head = (k->wq_head + 1) % k->wq_cap;
		k->wq_len--;
		e->slot_wait = false;
		c->n_waiting--;
		k->n_waiting--;
		int rc = do_start_load(c, idx, slot, MS_IO_DEMAND);
		if (rc)
			do_answer(c, idx, rc, out);
	}
}

static void lat_record(struct ms_cache *c, uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b = 0;
	while (us > 1 && b < 23) {
		us >>= 1;
		b++;
	}
	c->st.lat_us_hist[b]++;
}

/* The engine finished (or failed, or cancelled) a load. */
static void io_done(void *ctx, uint64_t id, int result)
{
	struct entry *e = ctx;
	struct ms_cache *c = e->owner;
	uint32_t idx = (uint32_t)(e - c->e);
	struct done_list *out = NULL;
	(void)id;

	pthread_mutex_lock(&c->mu);
	struct klass *k = &c->cls[c->layer_class[idx / c->n_expert]];
	if (e->io_cls == MS_IO_PREFETCH) {
		c->pf_inflight_bytes -= k->raw_bytes;
		do_list_remove(c, idx); /* off pf_loading */
	}
	lat_record(c, now_ns() - e->t_start_ns);
	if (result == 0) {
		e->state = MS_ENTRY_READY;
		e->err = 0;
		c->st.bytes_read += k->raw_bytes;
		do_answer(c, idx, 0, &out);
		if (!e->refs && !e->sticky) {
			do_list_append(c, idx, e->prefetched ? LRU_PREFETCH
							     : LRU_MAIN);
			/* evictable now: an acquire may be waiting for it */
			do_serve_waiters(c, k, &out);
		}
	} else if (result == -ECANCELED && e->waiters) {
		/* A stale prefetch was cancelled just as a reader joined it:
		 * the reader must not pay for our guess. Read it again, now. */
		c->st.prefetch_cancelled++;
		e->prefetched = false;
		int rc = do_start_load(c, idx, e->slot, MS_IO_DEMAND);
		if (rc)
			do_answer(c, idx, rc, &out);
	} else {
		if (result == -ECANCELED) {
			c->st.prefetch_cancelled++;
			e->state = MS_ENTRY_EMPTY;
		} else {
			c->st.load_failures++;
			e->state = MS_ENTRY_FAILED;
			ms_log(MS_LOG_WARNING,
			       "loading layer %u expert %u failed: %s",
			       c->m->layers[idx / c->n_expert].block,
			       idx % c->n_expert, strerror(-result));
		}
		e->err = result;
		e->prefetched = false;
		do_answer(c, idx, result, &out);
		do_free_slot(c, idx);
		if (e->sticky && result != -ECANCELED)
			e->sticky = false, k->n_sticky--;
		do_serve_waiters(c, k, &out);
	}
	pthread_mutex_unlock(&c->mu);
	deliver(c, out);
}

/* ---- the API ------------------------------------------------------------------------------ */

static int add_waiter(struct entry *e, ms_cache_cb cb, void *ctx)
{
	struct waiter *w = malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cb = cb;
	w->ctx = ctx;
	w->next = e->waiters;
	e->waiters = w;
	return 0;
}

static int do_queue_for_slot(struct ms_cache *c, uint32_t idx)
{
	struct klass *k = &c->cls[c->layer_class[idx / c->n_expert]];
	struct entry *e = &c->e[idx];
	if (k->wq_len == k->wq_cap) {
		uint32_t cap = k->wq_cap ? 2 * k->wq_cap : 64;
		uint32_t *q = malloc(cap * sizeof(*q));
		if (!q)
			return -ENOMEM;
		for (uint32_t i = 0; i < k->wq_len; i++)
			q[i] = k->waitq[(k->wq_head + i) % k->wq_cap];
		free(k->waitq);
		k->waitq = q;
		k->wq_cap = cap;
		k->wq_head = 0;
	}
	k->waitq[(k->wq_head + k->wq_len) % k->wq_cap] = idx;
	k->wq_len++;
	e->slot_wait = true;
	e->deadline_ns = now_ns() + (uint64_t)c->cfg.acquire_timeout_ms * 1000000ull;
	c->n_waiting++;
	k->n_waiting++;
	pthread_cond_signal(&c->reap_cv);
	return 0;
}

static bool valid(const struct ms_cache *c, uint32_t layer, uint32_t expert)
{
	return layer < c->n_layers && expert < c->n_expert;
}

static void do_pin_top(struct ms_cache *c);

/* Every acquire, hit or not: the layer's turn (prefetch staleness), the
 * entry's use count and, now and then, the sticky hot set. */
static void do_count_acquire(struct ms_cache *c, uint32_t layer,
			     struct entry *e)
{
	do_note_acquire(c, layer);
	e->uses++;
	if (c->cfg.pin_top && ++c->acquires % PIN_TOP_EVERY == 0)
		do_pin_top(c);
}

/* A hit on the READY entry idx: pinned, off the LRU, its location. */
static void do_hit(struct ms_cache *c, uint32_t idx, struct ms_expert_loc *loc)
{
	struct entry *e = &c->e[idx];
	e->refs++;
	do_list_remove(c, idx);
	if (e->prefetched) {
		e->prefetched = false;
		c->st.prefetch_used++;
	}
	c->st.hits++;
	expert_loc(c, idx, loc);
}

int ms_cache_try_acquire(struct ms_cache *c, uint32_t layer, uint32_t expert,
			 struct ms_expert_loc *loc)
{
	if (!valid(c, layer, expert))
		return -EINVAL;
	uint32_t idx = layer * c->n_expert + expert;
	struct entry *e = &c->e[idx];
	pthread_mutex_lock(&c->mu);
	if (c->stopping || e->state != MS_ENTRY_READY) {
		/* not counted: the caller's ms_cache_acquire will be */
		pthread_mutex_unlock(&c->mu);
		return -EAGAIN;
	}
	do_count_acquire(c, layer, e);
	do_hit(c, idx, loc);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

int ms_cache_acquire(struct ms_cache *c, uint32_t layer, uint32_t expert,
		     ms_cache_cb cb, void *ctx, struct ms_expert_loc *loc)
{
	if (!valid(c, layer, expert))
		return -EINVAL;
	uint32_t idx = layer * c->n_expert + expert;
	struct entry *e = &c->e[idx];
	struct done_list *out = NULL;
	int rc;

	pthread_mutex_lock(&c->mu);
	if (c->stopping) {
		pthread_mutex_unlock(&c->mu);
		return -ESHUTDOWN;
	}
	do_count_acquire(c, layer, e);
	switch (e->state) {
	case MS_ENTRY_READY:
		do_hit(c, idx, loc);
		pthread_mutex_unlock(&c->mu);
		return 0;
	case MS_ENTRY_LOADING:
		if ((rc = add_waiter(e, cb, ctx)))
			break;
		e->refs++;
		if (e->io_cls == MS_IO_PREFETCH) {
			/* A reader now waits for a guess: make it demand. */
			if (!ms_io_promote(c->io, e->io_id)) {
				struct klass *k =
					&c->cls[c->layer_class[layer]];
				c->pf_inflight_bytes -= k->raw_bytes;
				do_list_remove(c, idx);
				e->io_cls = MS_IO_DEMAND;
			}
			if (e->prefetched) {
				e->prefetched = false;
				c->st.prefetch_used++;
			}
		}
		c->st.hits++; /* in flight already: no new read */
		pthread_mutex_unlock(&c->mu);
		return -EINPROGRESS;
	default: /* EMPTY, FAILED */
		if ((rc = add_waiter(e, cb, ctx)))
			break;
		e->refs++;
		c->st.misses++; /* joining a slot wait is a miss too */
		if (e->slot_wait) { /* already queued for a slot */
			pthread_mutex_unlock(&c->mu);
			return -EINPROGRESS;
		}
		uint32_t slot = do_take_slot(c, idx);
		if (slot == NONE) {
			if ((rc = do_queue_for_slot(c, idx)))
				do_answer(c, idx, rc, &out);
		} else if ((rc = do_start_load(c, idx, slot, MS_IO_DEMAND))) {
			do_answer(c, idx, rc, &out);
		}
		pthread_mutex_unlock(&c->mu);
		deliver(c, out);
		return -EINPROGRESS;
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* A blocking acquire waits on one of these. It lives on the heap with two
 * references (the waiter and the callback): a waiter that gives up leaves
 * it to the callback, which then drops the pin nobody will release. */
struct sync_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct ms_cache *c;
	int refs;
	bool done, abandoned;
	int result;
	struct ms_expert_loc loc;
};

static void sync_put(struct sync_wait *w)
{
	/* w->mu held */
	if (--w->refs == 0) {
		pthread_mutex_unlock(&w->mu);
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w);
		return;
	}
	pthread_mutex_unlock(&w->mu);
}

static void sync_cb(void *ctx, uint32_t layer, uint32_t expert, int result,
		    const struct ms_expert_loc *loc)
{
	struct sync_wait *w = ctx;
	pthread_mutex_lock(&w->mu);
	w->result = result;
	if (loc)
		w->loc = *loc;
	w->done = true;
	if (w->abandoned && !result) {
		pthread_mutex_unlock(&w->mu);
		ms_cache_release(w->c, layer, expert); /* nobody took it */
		pthread_mutex_lock(&w->mu);
	}
	pthread_cond_signal(&w->cv);
	sync_put(w);
}

int ms_cache_acquire_wait(struct ms_cache *c, uint32_t layer, uint32_t expert,
			  uint32_t timeout_ms, struct ms_expert_loc *loc)
{
	struct sync_wait *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* immune to clock steps */
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, &ca);
	pthread_condattr_destroy(&ca);
	w->c = c;
	w->refs = 2;
	int rc = ms_cache_acquire(c, layer, expert, sync_cb, w, loc);
	if (rc != -EINPROGRESS) {
		/* answered now: the callback will never run */
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w);
		return rc;
	}
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)timeout_ms * 1000000ull;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_mutex_lock(&w->mu);
	while (!w->done) {
		if (!timeout_ms) {
			pthread_cond_wait(&w->cv, &w->mu);
		} else if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT &&
			   !w->done) {
			w->abandoned = true; /* the callback releases the pin */
			sync_put(w);
			return -ETIMEDOUT;
		}
	}
	rc = w->result;
	if (!rc)
		*loc = w->loc;
	sync_put(w);
	return rc;
}

void ms_cache_release(struct ms_cache *c, uint32_t layer, uint32_t expert)
{
	if (!valid(c, layer, expert))
		return;
	uint32_t idx = layer * c->n_expert + expert;
	struct entry *e = &c->e[idx];
	struct done_list *out = NULL;
	pthread_mutex_lock(&c->mu);
	if (!e->refs || e->state != MS_ENTRY_READY) {
		ms_log(MS_LOG_ERR, "release of layer %u expert %u that holds no pin",
		       c->m->layers[layer].block, expert);
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (--e->refs == 0 && !e->sticky) {
		do_list_append(c, idx, LRU_MAIN);
		do_serve_waiters(c, &c->cls[c->layer_class[layer]], &out);
	}
	pthread_mutex_unlock(&c->mu);
	deliver(c, out);
}

int ms_cache_prefetch(struct ms_cache *c, uint32_t layer, uint32_t expert)
{
	if (!valid(c, layer, expert))
		return -EINVAL;
	uint32_t idx = layer * c->n_expert + expert;
	struct entry *e = &c->e[idx];
	struct klass *k = &c->cls[c->layer_class[layer]];
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	if (c->stopping) {
		rc = -ESHUTDOWN;
	} else if (e->state == MS_ENTRY_READY || e->state == MS_ENTRY_LOADING ||
		   e->slot_wait) {
		rc = 0;
	} else if (c->pf_inflight_bytes + k->raw_bytes > c->cfg.max_prefetch_bytes) {
		rc = -E2BIG;
	} else if (k->n_waiting) {
		rc = -EBUSY; /* demand is waiting for slots: do not compete */
	} else {
		uint32_t slot = do_take_slot(c, idx);
		if (slot == NONE) {
			rc = -EBUSY;
		} else if (!(rc = do_start_load(c, idx, slot, MS_IO_PREFETCH))) {
			e->pf_seq = c->seq;
			e->prefetched = true;
			c->st.prefetch_issued++;
		}
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

unsigned ms_cache_cancel_stale(struct ms_cache *c, uint32_t layer)
{
	/* Collect under the lock, cancel outside it: a cancel can complete
	 * at once and its callback takes our lock. An id that finished in
	 * between is simply not found (ids are never reused). */
	uint64_t ids[256];
	unsigned n_ids = 0, n = 0;
	pthread_mutex_lock(&c->mu);
	for (uint32_t idx = c->pf_loading.head; idx != NONE && n_ids < 256;
	     idx = c->e[idx].next) {
		const struct entry *e = &c->e[idx];
		if ((do_pf_stale(c, idx) || idx / c->n_expert < layer) && !e->refs)
			ids[n_ids++] = e->io_id;
	}
	pthread_mutex_unlock(&c->mu);
	for (unsigned i = 0; i < n_ids; i++)
		n += ms_io_cancel(c->io, ids[i]) == 0;
	return n;
}

/* Fails slot waiters past their deadline. */
static void do_reap(struct ms_cache *c, uint64_t now, struct done_list **out)
{
	for (uint32_t ci = 0; ci < c->n_classes; ci++) {
		struct klass *k = &c->cls[ci];
		for (uint32_t i = 0; i < k->wq_len; i++) {
			uint32_t idx = k->waitq[(k->wq_head + i) % k->wq_cap];
			struct entry *e = &c->e[idx];
			if (!e->slot_wait || e->deadline_ns > now)
				continue;
			e->slot_wait = false; /* removed lazily from the ring */
			c->n_waiting--;
			k->n_waiting--;
			uint32_t before = e->refs;
			do_answer(c, idx, -EBUSY, out);
			c->st.busy += before - e->refs;
		}
	}
}

void ms_cache_tick(struct ms_cache *c)
{
	struct done_list *out = NULL;
	pthread_mutex_lock(&c->mu);
	do_reap(c, now_ns(), &out);
	pthread_mutex_unlock(&c->mu);
	deliver(c, out);
}

static void *reaper_main(void *arg)
{
	struct ms_cache *c = arg;
	pthread_mutex_lock(&c->mu);
	while (!c->stopping) {
		if (!c->n_waiting) {
			pthread_cond_wait(&c->reap_cv, &c->mu);
			continue;
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 10 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->reap_cv, &c->mu, &ts);
		struct done_list *out = NULL;
		do_reap(c, now_ns(), &out);
		if (out) {
			pthread_mutex_unlock(&c->mu);
			deliver(c, out);
			pthread_mutex_lock(&c->mu);
		}
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ---- sticky pins ---------------------------------------------------------------------------- */

/* Makes entry idx sticky (never evicted) and starts loading it. */
static int do_stick(struct ms_cache *c, uint32_t idx, struct done_list **out)
{
	struct entry *e = &c->e[idx];
	struct klass *k = &c->cls[c->layer_class[idx / c->n_expert]];
	if (e->sticky)
		return 0;
	/* keep one token's worth of slots unpinned in every class */
	if (k->n_sticky + c->m->n_expert_used >= k->n_slots)
		return -ENOSPC;
	e->sticky = true;
	k->n_sticky++;
	if (e->state == MS_ENTRY_READY) {
		do_list_remove(c, idx);
		return 0;
	}
	if (e->state == MS_ENTRY_LOADING || e->slot_wait)
		return 0;
	uint32_t slot = do_take_slot(c, idx);
	if (slot == NONE)
		return 0; /* loads on first use */
	int rc = do_start_load(c, idx, slot, MS_IO_DEMAND);
	if (rc)
		do_answer(c, idx, rc, out);
	return 0;
}

static void do_unstick(struct ms_cache *c, uint32_t idx)
{
	struct entry *e = &c->e[idx];
	if (!e->sticky)
		return;
	e->sticky = false;
	c->cls[c->layer_class[idx / c->n_expert]].n_sticky--;
	if (e->state == MS_ENTRY_READY && !e->refs)
		do_list_append(c, idx, LRU_MAIN);
}

static int cmp_uses(const void *a, const void *b, void *arg)
{
	const struct entry *e = arg;
	uint64_t x = e[*(const uint32_t *)a].uses, y = e[*(const uint32_t *)b].uses;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* cache.pin_top: the N most used since the last look stay pinned. Uses are
 * halved each time, so the set follows the routing as it drifts. */
static void do_pin_top(struct ms_cache *c)
{
	uint32_t n = c->n_layers * c->n_expert;
	uint32_t *ord = malloc(n * sizeof(*ord));
	if (!ord)
		return;
	for (uint32_t i = 0; i < n; i++)
		ord[i] = i;
	qsort_r(ord, n, sizeof(*ord), cmp_uses, c->e);
	uint32_t top = c->cfg.pin_top < n ? c->cfg.pin_top : n;
	bool *want = calloc(n, sizeof(*want));
	if (!want) {
		free(ord);
		return;
	}
	for (uint32_t i = 0; i < top; i++)
		if (c->e[ord[i]].uses)
			want[ord[i]] = true;
	struct done_list *out = NULL;
	for (uint32_t i = 0; i < n; i++) {
		if (!want[i] && c->e[i].sticky)
			do_unstick(c, i);
	}
	for (uint32_t i = 0; i < top; i++)
		if (want[ord[i]])
			do_stick(c, ord[i], &out);
	for (uint32_t i = 0; i < n; i++)
		c->e[i].uses >>= 1;
	free(want);
	free(ord);
	/* do_stick answers only on a failed submit; nobody waits then */
	while (out) {
		struct done_list *d = out->next;
		free(out->w); /* the node lives in it */
		out = d;
	}
}

/* cache.pin = "L:E,L:E": L is the block index (blk.L), as everywhere. */
static int apply_pins(struct ms_cache *c, const char *spec, struct ms_err *err)
{
	const char *p = spec;
	while (*p) {
		char *end;
		if (*p < '0' || *p > '9')
			return ms_err_set(err, -EINVAL,
					  "cache.pin: '%s' is not a list of "
					  "block:expert (e.g. 3:17,3:42)",
					  spec);
		unsigned long blk = strtoul(p, &end, 10);
		if (end == p || *end != ':' || end[1] < '0' || end[1] > '9')
			return ms_err_set(err, -EINVAL,
					  "cache.pin: '%s' is not a list of "
					  "block:expert (e.g. 3:17,3:42)",
					  spec);
		p = end + 1;
		unsigned long ex = strtoul(p, &end, 10);
		if (end == p || (*end && *end != ','))
			return ms_err_set(err, -EINVAL,
					  "cache.pin: '%s' is not a list of "
					  "block:expert (e.g. 3:17,3:42)",
					  spec);
		p = *end ? end + 1 : end;
		int32_t layer = blk < c->m->n_block ? c->m->block_layer[blk] : -1;
		if (layer < 0 || c->m->layers[layer].nextn)
			return ms_err_set(err, -EINVAL,
					  "cache.pin: block %lu is not a MoE layer "
					  "that runs",
					  blk);
		if (ex >= c->n_expert)
			return ms_err_set(err, -EINVAL,
					  "cache.pin: expert %lu of block %lu: the "
					  "model has %u experts",
					  ex, blk, c->n_expert);
		struct done_list *out = NULL;
		uint32_t idx = (uint32_t)layer * c->n_expert + (uint32_t)ex;
		if (do_stick(c, idx, &out))
			return ms_err_set(err, -ENOSPC,
					  "cache.pin: %lu:%lu does not fit: pins may "
					  "use all but %u slots of a size class; "
					  "raise cache.size",
					  blk, ex, c->m->n_expert_used);
		if (out)
			return ms_err_set(err, out->result,
					  "cache.pin: loading %lu:%lu failed", blk,
					  ex);
	}
	return 0;
}

/* ---- setup ------------------------------------------------------------------------------------ */

/* The widened size of an expert's projections, back to back. */
static uint64_t widened_bytes(const struct ms_model *m, uint32_t layer,
			      uint32_t expert)
{
	const struct ms_extent *x = ms_model_expert(m, layer, expert);
	uint64_t sum = 0;
	for (uint32_t j = 0; j < m->layers[layer].n_proj; j++) {
		uint64_t aoff, alen, skip;
		ms_io_widen(x[j].offset, x[j].bytes, &aoff, &alen, &skip);
		sum += alen;
	}
	return sum;
}

static int carve_slots(struct ms_cache *c, struct ms_err *err)
{
	const struct ms_model *m = c->m;
	uint64_t *slot_of = calloc(c->n_layers, sizeof(*slot_of));
	c->layer_class = calloc(c->n_layers, sizeof(*c->layer_class));
	c->layer_seq = calloc(c->n_layers, sizeof(*c->layer_seq));
	c->cls = calloc(c->n_layers, sizeof(*c->cls));
	double *weight = calloc(c->n_layers, sizeof(*weight));
	int rc = 0;
	if (!slot_of || !c->layer_class || !c->layer_seq || !c->cls || !weight) {
		rc = ms_err_set(err, -ENOMEM, "cache: out of memory for the "
				"tables of %u layers", c->n_layers);
		goto out;
	}
	for (uint32_t l = 0; l < c->n_layers; l++) {
		uint64_t mx = 0;
		for (uint32_t e = 0; e < c->n_expert; e++) {
			uint64_t w = widened_bytes(m, l, e);
			if (w > mx)
				mx = w;
		}
		slot_of[l] = (mx + SLOT_ROUND - 1) / SLOT_ROUND * SLOT_ROUND;
	}
	/* Classes: from the largest slot size down, a class takes every
	 * layer within CLASS_MERGE of its size (alignment makes layers of
	 * one type differ by a block or two). */
	for (;;) {
		uint64_t big = 0;
		for (uint32_t l = 0; l < c->n_layers; l++)
			if (slot_of[l] > big)
				big = slot_of[l];
		if (!big)
			break;
		uint32_t k = c->n_classes++;
		c->cls[k].slot_bytes = big;
		for (uint32_t l = 0; l < c->n_layers; l++) {
			if (!slot_of[l] || (double)slot_of[l] < (double)big * (1 - CLASS_MERGE))
				continue;
			slot_of[l] = 0;
			c->layer_class[l] = k;
			if (m->layers[l].expert_bytes > c->cls[k].raw_bytes)
				c->cls[k].raw_bytes = m->layers[l].expert_bytes;
			if (!m->layers[l].nextn)
				weight[k] += (double)m->layers[l].expert_bytes *
					     c->n_expert;
		}
	}

	/* One token's worth per class first, then the rest by weight. */
	uint64_t k_used = m->n_expert_used, need = 0;
	for (uint32_t k = 0; k < c->n_classes; k++)
		need += k_used * c->cls[k].slot_bytes;
	if (c->arena.size < need) {
		rc = ms_err_set(err, -EINVAL,
				"cache.size %llu MB is below the minimum %llu MB: %llu "
				"experts (one token's worth, %u used per layer) of "
				"each of %u slot size(s)",
				(unsigned long long)(c->arena.size >> 20),
				(unsigned long long)((need + (1 << 20) - 1) >> 20),
				(unsigned long long)k_used, m->n_expert_used,
				c->n_classes);
		goto out;
	}
	double wsum = 0;
	for (uint32_t k = 0; k < c->n_classes; k++)
		wsum += weight[k];
	uint64_t rest = c->arena.size - need, base = 0;
	bool all_fit = true;
	for (uint32_t k = 0; k < c->n_classes; k++) {
		struct klass *K = &c->cls[k];
		uint64_t cap = 0; /* never more slots than experts */
		for (uint32_t l = 0; l < c->n_layers; l++)
			cap += c->layer_class[l] == k ? c->n_expert : 0;
		uint64_t share = wsum > 0 ? (uint64_t)((double)rest * weight[k] / wsum)
					  : 0;
		uint64_t n = k_used + share / K->slot_bytes;
		if (n > cap)
			n = cap > k_used ? cap : k_used;
		K->n_slots = (uint32_t)n;
		K->base = base;
		K->first_slot = c->n_slots;
		base += n * K->slot_bytes;
		c->n_slots += K->n_slots;
		K->free = malloc(n * sizeof(*K->free));
		if (!K->free) {
			rc = ms_err_set(err, -ENOMEM, "cache: out of memory for "
					"the free list of %llu slots",
					(unsigned long long)n);
			goto out;
		}
		for (uint32_t i = 0; i < n; i++)
			K->free[i] = K->first_slot + (uint32_t)(n - 1 - i);
		K->n_free = (uint32_t)n;
		for (int w = 0; w < 3; w++)
			K->lru[w].head = K->lru[w].tail = NONE;
		c->st.waste_bytes += n * (K->slot_bytes - K->raw_bytes);
		all_fit &= n == cap;
	}
	/* What is left: waste when experts compete for room, surplus when the
	 * arena holds every expert of the model and then some. */
	if (all_fit)
		c->st.surplus_bytes = c->arena.size - base;
	else
		c->st.waste_bytes += c->arena.size - base;
	c->slot_entry = malloc(c->n_slots * sizeof(*c->slot_entry));
	if (!c->slot_entry) {
		rc = ms_err_set(err, -ENOMEM, "cache: out of memory for the "
				"table of %u slots", c->n_slots);
		goto out;
	}
	for (uint32_t s = 0; s < c->n_slots; s++)
		c->slot_entry[s] = NONE;
out:
	free(slot_of);
	free(weight);
	return rc;
}

/* The staging bytes to take out of cache.size when the arena will (or will
 * not) have huge pages: 0 when off, when reads are not O_DIRECT, or (auto)
 * where the arena has huge pages. Whole buffers only (the engine makes
 * min(request_size, staging)-byte ones): a remainder would be neither
 * staging nor arena. */
static int staging_plan(const struct ms_cache_config *cfg, bool arena_huge,
			uint64_t *out, struct ms_err *err)
{
	uint64_t s = cfg->staging, size = cfg->arena.size;
	*out = 0;
	if (!s || cfg->io.direct == MS_IO_DIRECT_OFF)
		return 0;
	if (s == MS_STAGING_AUTO) {
		if (arena_huge)
			return 0;
		s = MS_STAGING_DEFAULT;
		if (s > size / 4)
			s = (size / 4) & ~(uint64_t)(MS_IO_ALIGN - 1);
	} else if (s % MS_IO_ALIGN || s > MS_IO_MAX_STAGING || s > size / 2) {
		return ms_err_set(err, -EINVAL,
				  "io.staging = %llu bytes: not a multiple of %u up "
				  "to half of cache.size (%llu) and 1G",
				  (unsigned long long)s, MS_IO_ALIGN,
				  (unsigned long long)size);
	}
	uint64_t buf = s < cfg->io.request_size ? s : cfg->io.request_size;
	*out = buf ? s / buf * buf : 0;
	return 0;
}

/* The arena, at cache.size less the staging the plan sets aside; for
 * staging auto, planned on a guess of its pages and made again at the other
 * size when the guess was wrong. *staging: the bytes for the engine. */
static int make_arena(struct ms_cache *c, const struct ms_cache_config *cfg,
		      uint64_t *staging, struct ms_err *err)
{
	bool huge = ms_arena_huge_expected(&cfg->arena);
	for (int attempt = 0;; attempt++) {
		struct ms_arena_config ac = cfg->arena;
		int rc = staging_plan(cfg, huge, staging, err);
		if (rc)
			return rc;
		ac.size -= *staging;
		if ((rc = ms_arena_init(&c->arena, &ac, err)))
			return rc;
		bool got = ms_arena_huge(&c->arena);
		if (cfg->staging != MS_STAGING_AUTO || got == huge || attempt)
			return 0;
		ms_log(MS_LOG_INFO, "the arena %s huge pages against the guess: "
		       "made again %s staging", got ? "got" : "did not get",
		       got ? "without" : "with");
		ms_arena_free(&c->arena);
		huge = got;
	}
}

const char *ms_read_path_name(enum ms_read_path p)
{
	return p == MS_READ_STAGING ? "staging"
	       : p == MS_READ_BUFFERED ? "buffered"
				       : "direct";
}

static void fmt_mib(uint64_t v, char *out, size_t len)
{
	if (v && !(v % (1u << 20)))
		snprintf(out, len, "%llu MiB", (unsigned long long)(v >> 20));
	else if (v && !(v % 1024))
		snprintf(out, len, "%llu KiB", (unsigned long long)(v >> 10));
	else
		snprintf(out, len, "%llu bytes", (unsigned long long)v);
}

/* The read path as built, in c->read. */
static void read_info(struct ms_cache *c)
{
	struct ms_read_info *ri = &c->read;
	struct ms_io_mode md;
	ms_io_get_mode(c->io, &md);
	ri->arena_bytes = c->arena.size;
	ri->arena_huge_bytes = c->arena.huge_bytes;
	ri->staging_bytes = md.staging;
	ri->staging_huge_bytes = md.staging_huge;
	ri->staging_buf = md.staging_buf;
	ri->staging_bufs = md.staging_bufs;
	ri->path = !md.direct ? MS_READ_BUFFERED
		   : md.staging ? MS_READ_STAGING
				: MS_READ_DIRECT;
	char st[32], buf[32];
	const char *pages = ms_arena_huge(&c->arena) ? "huge pages" : "4 KiB pages";
	double pct = c->arena.size ? 100.0 * (double)c->arena.huge_bytes /
					     (double)c->arena.size
				   : 0.0;
	fmt_mib(md.staging, st, sizeof(st));
	fmt_mib(md.staging_buf, buf, sizeof(buf));
	switch (ri->path) {
	case MS_READ_STAGING:
		snprintf(ri->line, sizeof(ri->line),
			 "O_DIRECT into %s of staging buffers (%u x %s, anonymous "
			 "memory, %.0f%% on 2 MiB pages), copied into the arena "
			 "(%s, %.0f%% huge)",
			 st, md.staging_bufs, buf,
			 md.staging ? 100.0 * (double)md.staging_huge / (double)md.staging
				    : 0.0,
			 pages, pct);
		break;
	case MS_READ_BUFFERED:
		snprintf(ri->line, sizeof(ri->line),
			 "buffered, through the page cache into the arena (%s, "
			 "%.0f%% huge)", pages, pct);
		break;
	default:
		snprintf(ri->line, sizeof(ri->line),
			 "O_DIRECT straight into the arena (%s, %.0f%% huge%s)", pages,
			 pct, ms_arena_huge(&c->arena) ? "" : "; staging off");
	}
}

/* An eighth of the arena, but never less than one expert of each size. */
static uint64_t default_prefetch_cap(const struct ms_cache *c)
{
	uint64_t cap = c->arena.size / 8, big = 0;
	for (uint32_t k = 0; k < c->n_classes; k++)
		if (c->cls[k].raw_bytes > big)
			big = c->cls[k].raw_bytes;
	return cap > big ? cap : big;
}

int ms_cache_init(struct ms_cache **out, const struct ms_model *m,
		  const struct ms_cache_config *cfg, struct ms_err *err)
{
	*out = NULL;
	if (!m->n_expert || !m->n_layers)
		return ms_err_set(err, -EINVAL,
				  "%s is not a Mixture-of-Experts model: nothing "
				  "to cache",
				  m->shards[0]->path);
	struct ms_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return ms_err_set(err, -ENOMEM, "cache: out of memory (%zu bytes)",
				  sizeof(*c));
	c->m = m;
	c->cfg = *cfg;
	c->arena.memfd = -1;
	c->n_layers = m->n_layers;
	c->n_expert = m->n_expert;
	c->pf_loading.head = c->pf_loading.tail = NONE;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->reap_cv, &ca);
	pthread_condattr_destroy(&ca);
	int rc;
	c->e = calloc((size_t)c->n_layers * c->n_expert, sizeof(*c->e));
	if (!c->e) {
		rc = ms_err_set(err, -ENOMEM, "cache: out of memory for %u x %u "
				"expert entries", c->n_layers, c->n_expert);
		goto fail;
	}
	for (uint32_t i = 0; i < c->n_layers * c->n_expert; i++) {
		c->e[i].owner = c;
		c->e[i].slot = NONE;
		c->e[i].prev = c->e[i].next = NONE;
	}
	struct ms_io_config io_cfg = cfg->io;
	if ((rc = make_arena(c, cfg, &io_cfg.staging, err)))
		goto fail;
	io_cfg.staging_lock = cfg->arena.lock;
	/* (the default cap is set once the slots are known) */
	if (!c->cfg.acquire_timeout_ms)
		c->cfg.acquire_timeout_ms = 5000;
	if ((rc = carve_slots(c, err)))
		goto fail;
	if (!c->cfg.max_prefetch_bytes)
		c->cfg.max_prefetch_bytes = default_prefetch_cap(c);

	const char **paths = calloc(m->n_shards, sizeof(*paths));
	if (!paths) {
		rc = ms_err_set(err, -ENOMEM, "cache: out of memory for %u shard "
				"paths", m->n_shards);
		goto fail;
	}
	for (uint32_t s = 0; s < m->n_shards; s++)
		paths[s] = m->shards[s]->path;
	rc = ms_io_init(&c->io, &io_cfg, paths, m->n_shards, c->arena.base,
			c->arena.size, err);
	free(paths);
	if (rc)
		goto fail;
	read_info(c);
	if ((rc = -pthread_create(&c->reaper, NULL, reaper_main, c))) {
		ms_err_set(err, rc, "cannot start the cache's timer thread: %s",
			   strerror(-rc));
		goto fail;
	}
	c->reaper_started = true;
	if (cfg->pin && *cfg->pin) {
		pthread_mutex_lock(&c->mu);
		rc = apply_pins(c, cfg->pin, err);
		pthread_mutex_unlock(&c->mu);
		if (rc)
			goto fail;
	}
	c->st.budget_bytes = c->arena.size;
	c->st.slots = c->n_slots;
	c->st.slot_classes = c->n_classes;
	*out = c;
	return 0;
fail:
	ms_cache_free(c);
	return rc;
}

void ms_cache_free(struct ms_cache *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->stopping = true;
	pthread_cond_broadcast(&c->reap_cv);
	pthread_mutex_unlock(&c->mu);
	if (c->reaper_started)
		pthread_join(c->reaper, NULL);
	/* The engine drains demand reads and cancels prefetches; their
	 * callbacks land here while the entries still exist. */
	ms_io_free(c->io);
	/* Whoever still waits for a slot hears -ESHUTDOWN. */
	struct done_list *out = NULL;
	for (uint32_t i = 0; c->e && i < c->n_layers * c->n_expert; i++)
		if (c->e[i].waiters)
			do_answer(c, i, -ESHUTDOWN, &out);
	deliver(c, out);
	for (uint32_t k = 0; c->cls && k < c->n_classes; k++) {
		free(c->cls[k].free);
		free(c->cls[k].waitq);
	}
	free(c->cls);
	free(c->layer_class);
	free(c->layer_seq);
	free(c->slot_entry);
	free(c->e);
	ms_arena_free(&c->arena);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->reap_cv);
	free(c);
}

void ms_cache_set_tunables(struct ms_cache *c, uint32_t acquire_timeout_ms,
			   uint64_t max_prefetch_bytes, uint32_t pin_top)
{
	pthread_mutex_lock(&c->mu);
	if (acquire_timeout_ms)
		c->cfg.acquire_timeout_ms = acquire_timeout_ms;
	c->cfg.max_prefetch_bytes = max_prefetch_bytes ? max_prefetch_bytes
						       : default_prefetch_cap(c);
	if (c->cfg.pin_top && !pin_top) {
		/* pin_top turned off: the sticky set goes back to the LRU */
		for (uint32_t i = 0; i < c->n_layers * c->n_expert; i++)
			do_unstick(c, i);
	}
	c->cfg.pin_top = pin_top;
	pthread_mutex_unlock(&c->mu);
}

const struct ms_arena *ms_cache_arena(const struct ms_cache *c)
{
	return &c->arena;
}

void ms_cache_get_io_mode(const struct ms_cache *c, struct ms_io_mode *mode)
{
	ms_io_get_mode(c->io, mode);
}

void ms_cache_get_read_info(const struct ms_cache *c, struct ms_read_info *ri)
{
	*ri = c->read;
}

void ms_cache_get_stats(struct ms_cache *c, struct ms_cache_stats *st)
{
	pthread_mutex_lock(&c->mu);
	*st = c->st;
	st->pinned_entries = st->loading_entries = st->ready_entries = 0;
	st->held_bytes = 0;
	for (uint32_t i = 0; i < c->n_layers * c->n_expert; i++) {
		const struct entry *e = &c->e[i];
		st->pinned_entries += e->refs > 0 || e->sticky;
		st->loading_entries += e->state == MS_ENTRY_LOADING;
		st->ready_entries += e->state == MS_ENTRY_READY;
		if (e->slot != NONE)
			st->held_bytes +=
				c->cls[c->layer_class[i / c->n_expert]].slot_bytes;
	}
	pthread_mutex_unlock(&c->mu);
	struct ms_io_stats ios;
	ms_io_get_stats(c->io, &ios);
	st->io_busy_ns = ios.busy_ns;
	st->bytes_copied = ios.bytes_copied;
	st->copy_ns = ios.copy_ns;
}

enum ms_entry_state ms_cache_state(struct ms_cache *c, uint32_t layer,
				   uint32_t expert, uint32_t *pins)
{
	if (!valid(c, layer, expert))
		return MS_ENTRY_EMPTY;
	pthread_mutex_lock(&c->mu);
	const struct entry *e = &c->e[layer * c->n_expert + expert];
	enum ms_entry_state s = e->state;
	if (pins)
		*pins = e->refs;
	pthread_mutex_unlock(&c->mu);
	return s;
}

int ms_cache_check(struct ms_cache *c, struct ms_err *err)
{
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	uint64_t held = 0;
	uint32_t n = c->n_layers * c->n_expert;
	uint8_t *on_list = calloc(n, 1);
	if (!on_list) {
		pthread_mutex_unlock(&c->mu);
		return ms_err_set(err, -ENOMEM, "out of memory");
	}
#define BAD(...)                                                               \
	do {                                                                   \
		rc = ms_err_set(err, -EFAULT, __VA_ARGS__);                    \
		goto out;                                                      \
	} while (0)
	/* Lists: well linked, holding only what they should. */
	for (uint32_t k = 0; k < c->n_classes; k++)
		for (int w = LRU_MAIN; w <= LRU_PREFETCH; w++) {
			uint32_t prev = NONE, len = 0;
			for (uint32_t i = c->cls[k].lru[w].head; i != NONE;
			     i = c->e[i].next) {
				const struct entry *e = &c->e[i];
				if (++len > n || e->prev != prev || e->list != w ||
				    c->layer_class[i / c->n_expert] != k)
					BAD("class %u list %d is broken at entry %u",
					    k, w, i);
				if (e->state != MS_ENTRY_READY || e->refs || e->sticky)
					BAD("entry %u on an LRU list is state %d, "
					    "pins %u, sticky %d",
					    i, e->state, e->refs, e->sticky);
				on_list[i] = 1;
				prev = i;
			}
			if (prev != c->cls[k].lru[w].tail)
				BAD("class %u list %d tail is wrong", k, w);
		}
	for (uint32_t i = c->pf_loading.head; i != NONE; i = c->e[i].next) {
		if (c->e[i].state != MS_ENTRY_LOADING ||
		    c->e[i].io_cls != MS_IO_PREFETCH)
			BAD("entry %u on the prefetch-loading list is state %d", i,
			    c->e[i].state);
		on_list[i] = 2;
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct entry *e = &c->e[i];
		const struct klass *k = &c->cls[c->layer_class[i / c->n_expert]];
		bool has = e->slot != NONE;
		if (has != (e->state == MS_ENTRY_READY ||
			    e->state == MS_ENTRY_LOADING))
			BAD("entry %u: state %d with slot %u", i, e->state, e->slot);
		if (has) {
			if (e->slot < k->first_slot ||
			    e->slot >= k->first_slot + k->n_slots ||
			    c->slot_entry[e->slot] != i)
				BAD("entry %u: slot %u is not its own", i, e->slot);
			held += k->slot_bytes;
		}
		if (e->state == MS_ENTRY_READY && !e->refs && !e->sticky &&
		    on_list[i] != 1)
			BAD("entry %u: unpinned READY but on no LRU list", i);
		if ((e->refs || e->sticky) && on_list[i] == 1)
			BAD("entry %u: pinned yet evictable", i);
		if (e->state == MS_ENTRY_LOADING &&
		    (e->io_cls == MS_IO_PREFETCH) != (on_list[i] == 2))
			BAD("entry %u: prefetch-loading list mismatch", i);
		if (e->refs && e->state != MS_ENTRY_READY && !e->waiters)
			BAD("entry %u: %u pins, state %d, nobody waiting", i,
			    e->refs, e->state);
	}
	for (uint32_t k = 0; k < c->n_classes; k++) {
		uint32_t used = 0;
		for (uint32_t s = c->cls[k].first_slot;
		     s < c->cls[k].first_slot + c->cls[k].n_slots; s++)
			used += c->slot_entry[s] != NONE;
		if (used + c->cls[k].n_free != c->cls[k].n_slots)
			BAD("class %u: %u used + %u free != %u slots", k, used,
			    c->cls[k].n_free, c->cls[k].n_slots);
		for (uint32_t f = 0; f < c->cls[k].n_free; f++)
			if (c->slot_entry[c->cls[k].free[f]] != NONE)
				BAD("class %u: free slot %u is in use", k,
				    c->cls[k].free[f]);
	}
	if (held > c->arena.size)
		BAD("%llu bytes held, over the %llu-byte budget",
		    (unsigned long long)held, (unsigned long long)c->arena.size);
#undef BAD
out:
	free(on_list);
	pthread_mutex_unlock(&c->mu);
	return rc;
}
