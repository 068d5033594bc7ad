/*
 * sim.h - the expert-cache simulator behind `moestream simulate`: replays a
 * routing trace against a cache of a given size under a replacement policy
 * and counts hits, reads and evictions.
 *
 * The model of the cache (the same for every policy, and what the test's
 * independent implementation is written from):
 *
 *  - A key is (trace layer, expert); it occupies its layer's expert bytes
 *    (layer_bytes[layer]). The cache holds keys whose bytes sum to at most
 *    cache_bytes. Every miss is loaded (demand fetch: an expert must be in
 *    RAM to be used).
 *  - The trace is replayed step by step: step s = (token, layer), token by
 *    token and layer by layer; access index i = s * k + j for the j-th of
 *    the step's k experts, in the order the trace lists them.
 *  - A step's k experts are needed together: those resident at the start of
 *    the step are hits, the others misses; all k are pinned for the step.
 *    Misses are loaded in order j; each load evicts unpinned keys, one at a
 *    time by the policy, until it fits. A cache smaller than k times the
 *    largest expert cannot run a step and is refused (ms_sim_min_cache).
 *  - At the end of the step its k experts count as used, in order j: their
 *    last use becomes i (LRU's recency), their use count grows by one.
 *
 * Policies (victim = an unpinned resident key):
 *  - LRU: the smallest last use.
 *  - LFU: the fewest uses since it was loaded; ties: the smallest last use.
 *    (Counts start again at 0 when a key is loaded: classic "in-cache" LFU.)
 *  - FIFO: the earliest loaded; hits do not refresh it.
 *  - MIN: Belady's offline policy: the key whose next use is furthest in the
 *    future (never used again counts as furthest); ties, which only happen
 *    between keys never used again: the smallest last use. With equal
 *    expert sizes it is optimal (no policy that loads every miss hits more
 *    often). With unequal sizes furthest-next-use is the classic bound but
 *    not strictly optimal for bytes: optimal variable-size caching is
 *    NP-hard, and evicting one big key used soon can beat evicting several
 *    small keys used later.
 *
 * Oracle next-step prefetch (opts.prefetch): while step s computes (its
 * experts pinned), the experts of step s+1 that are not resident are loaded
 * in order j, each evicting by the policy among keys pinned neither by s nor
 * by s+1; a load that cannot fit that way is skipped (a prefetch never
 * steals a pinned slot) and becomes a demand miss at s+1. The experts of
 * s+1 stay pinned from the prefetch to the end of s+1. An access that finds
 * its expert resident because a prefetch loaded it (and it was not used
 * since) is a prefetch hit; other hits are demand hits. It is an oracle: it
 * knows s+1's routing, even across a token boundary, so it bounds what any
 * next-step prefetcher can hide; it cannot reduce the bytes read, only move
 * them off the critical path.
 *
 * Errors: 0 or a negative errno with a one-line message in `err`.
 */
#ifndef MS_SIM_H
#define MS_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "trace.h"

enum ms_sim_policy {
	MS_SIM_LRU = 0,
	MS_SIM_LFU = 1,
	MS_SIM_FIFO = 2,
	MS_SIM_MIN = 3,
	MS_SIM_POLICY_COUNT = 4,
};

/* "lru", "lfu", "fifo", "min"; "?" when out of range. */
const char *ms_sim_policy_name(enum ms_sim_policy p);
/* The policy for a name, or -EINVAL. */
int ms_sim_policy_from_name(const char *name);

/* Keys (layers x experts) a simulation may have: per-key state is ~48
 * bytes, so this caps it near 800 MB. GLM-4.7 has 89 x 160 = 14,240. */
#define MS_SIM_MAX_KEYS (1u << 24)
#define MS_SIM_NEVER UINT64_MAX

/* A trace prepared for replay: flattened keys and, for MIN, the index of
 * each access's next use (one backward pass). Read-only once built, so any
 * number of runs (and threads) may share one. */
struct ms_sim {
	uint32_t n_tokens, n_layers, n_expert, k;
	uint64_t n_steps;     /* n_tokens x n_layers */
	uint64_t n_access;    /* n_steps x k */
	uint64_t n_keys;      /* n_layers x n_expert */
	uint64_t distinct;    /* keys accessed at least once */
	uint64_t *layer_bytes; /* [n_layers] */
	uint64_t all_bytes;   /* every key: n_expert x sum of layer_bytes */
	uint64_t min_cache;   /* k x the largest layer_bytes */
	uint32_t *key;        /* [n_access]: layer * n_expert + expert */
	uint64_t *next;       /* [n_access]: next access of the same key, or
				 MS_SIM_NEVER */
};

/* Prepares `t` with the bytes of each of its layers (n_layers entries, each
 * > 0). Checks every expert id (< n_expert, distinct within a step). */
int ms_sim_init(struct ms_sim **out, const struct ms_trace *t,
		const uint64_t *layer_bytes, struct ms_err *err);
void ms_sim_free(struct ms_sim *s);

/* The expert bytes of each trace layer in model `m` (trace layer j is the
 * j-th layer of m->layers[] that is not NextN), after
 * ms_trace_check_model(). *out is malloc'ed, [t->n_layers]. */
int ms_sim_layer_bytes(const struct ms_trace *t, const struct ms_model *m,
		       uint64_t **out, struct ms_err *err);

struct ms_sim_opts {
	enum ms_sim_policy policy;
	uint64_t cache_bytes;
	bool prefetch;        /* oracle next-step prefetch */
};

struct ms_sim_result {
	uint64_t tokens;
	uint64_t accesses;       /* n_tokens x n_layers x k */
	uint64_t hits;           /* demand hits: resident, not by a prefetch */
	uint64_t prefetch_hits;  /* resident because a prefetch loaded it */
	uint64_t misses;         /* demand loads */
	uint64_t prefetch_loads;
	uint64_t prefetch_skipped; /* prefetches that found no unpinned room */
	uint64_t evictions;
	uint64_t bytes_demand;   /* read by demand loads */
	uint64_t bytes_prefetch; /* read by prefetches */
	uint64_t distinct;       /* keys accessed at least once */
	uint64_t peak_bytes;     /* most bytes held at once */
};

/* Replays `s` under `o`. -EINVAL when o->cache_bytes < s->min_cache (the
 * message names the minimum) or the policy is unknown; -ENOMEM. */
int ms_sim_run(const struct ms_sim *s, const struct ms_sim_opts *o,
	       struct ms_sim_result *r, struct ms_err *err);

/* Fractions of r->accesses. */
double ms_sim_hit_rate(const struct ms_sim_result *r);       /* hits */
double ms_sim_prefetch_rate(const struct ms_sim_result *r);  /* prefetch_hits */
double ms_sim_miss_rate(const struct ms_sim_result *r);      /* misses */

/* Parses a cache size: a number of bytes with an optional K, M, G or T
 * suffix (powers of 1024, "G", "GB" and "GiB" alike; decimals allowed:
 * "1.5G"), or a percentage of `all_bytes` ("25%", "12.5%"). 0, or -EINVAL
 * for anything else (empty, negative, junk after the number, 0) and
 * -ERANGE when it does not fit in 64 bits. */
int ms_sim_parse_size(const char *s, uint64_t all_bytes, uint64_t *out);

#endif /* MS_SIM_H */
