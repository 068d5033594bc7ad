/*
 * replay.h - replaying a routing trace through moestreamd as an inference
 * engine would, for `moestream replay` and the end-to-end benchmark.
 *
 * Per token, per MoE layer that runs (trace layer j, block trace->blocks[j]):
 *   1. optionally PREFETCH the experts the trace chooses at the next layer
 *      (the first layer of the next token after the last): an oracle hint,
 *      what an engine applying layer l+1's router early would send;
 *   2. spend `compute_ms` (the hot layers: attention, shared expert) or call
 *      `compute` instead;
 *   3. acquire the layer's k experts (one ACQUIRE, blocking), timing it;
 *   4. optionally read every byte (`touch`) and/or call `use` with them;
 *   5. release them.
 *
 * The daemon's counters are read (STATS) before and after, so the result
 * carries the daemon's view of the replay (hits, misses, bytes read) next to
 * the client's (latency of each acquire, tokens per second).
 *
 * Errors are negative errno values with one line in `err`, as everywhere.
 * The client handle is used from the calling thread only (moestream.h).
 */
#ifndef MS_REPLAY_H
#define MS_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "moestream/moestream.h"
#include "trace.h"

/* What the progress callback sees, about every `progress_every_s`. */
struct replay_progress {
	uint32_t tokens_done, tokens_total;
	double seconds;        /* since the first token */
	double tokps;          /* tokens_done / seconds */
	bool have_hit_rate;    /* a STATS answered since the start */
	double hit_rate;       /* the daemon's, over this replay so far */
};

struct replay_opts {
	uint32_t tokens;        /* tokens to replay; 0 or more than the trace:
				   all of the trace */
	double compute_ms;      /* per MoE layer, before its acquire (>= 0) */
	bool touch;             /* read (sum) every byte of every expert */
	bool prefetch_hint;     /* PREFETCH the next layer's experts first */
	int acquire_timeout_ms; /* per acquire; 0 means 60000, -1 forever */

	/* Optional: replaces the wait of compute_ms (a real engine's hot
	 * layers). Returns 0 or -errno (which ends the replay). */
	int (*compute)(void *ctx, uint32_t token, uint32_t layer);
	/* Optional: called with the k acquired experts of (token, layer) and
	 * the trace's weights, before the release (a CPU expert FFN). */
	int (*use)(void *ctx, uint32_t token, uint32_t layer,
		   const struct ms_client_expert *got, const float *weights,
		   unsigned k);
	void *ctx;

	/* Optional progress: called at most every progress_every_s (0 means
	 * 0.2 s) and once at the end; a STATS is sent at most every
	 * stats_every_s (0: only before and after) for its hit rate. */
	void (*progress)(void *ctx, const struct replay_progress *p);
	double progress_every_s;
	double stats_every_s;
};

struct replay_result {
	uint32_t tokens, layers, k;
	double seconds;          /* wall time of the replay loop */
	double tokps;
	uint64_t acquires;       /* ACQUIRE requests: tokens x layers */
	uint64_t experts;        /* experts acquired: acquires x k */
	/* Client-side latency of one acquire (request to the last expert
	 * ready), in microseconds. */
	double lat_mean_us, lat_p50_us, lat_p90_us, lat_p99_us, lat_max_us;
	double stall_s;          /* sum of acquire latencies: time waited */
	double compute_s;        /* time spent in compute */
	uint64_t touched_bytes;  /* bytes read with touch */
	uint64_t touch_sum;      /* the sum of those bytes, as unsigned */
	uint64_t prefetch_hints; /* PREFETCH messages sent */

	/* The daemon's counters, after minus before (have_stats false when a
	 * STATS failed or did not parse: then these are 0). The daemon is
	 * shared: other clients' work in the same window counts too. */
	bool have_stats;
	uint64_t hits, misses, bytes_read, evictions;
	uint64_t prefetch_issued, prefetch_used, prefetch_wasted_bytes;
	double hit_rate;         /* hits / (hits + misses), 0 if none */
	double read_gbps;        /* bytes_read / seconds / 1e9 */
	double io_busy_s;        /* the daemon's I/O engine had a read in
				    flight this long */
};

/* The daemon's cumulative counters that a replay reports the change of. */
struct replay_counters {
	uint64_t hits, misses, bytes_read, evictions;
	uint64_t prefetch_issued, prefetch_used, prefetch_wasted_bytes;
	uint64_t acquires;       /* ACQUIRE requests, every client's */
	uint64_t io_busy_ns;     /* the engine's time with a read in flight */
};

/* One STATS round trip, parsed: 0, or -errno (-EBADMSG: not the JSON
 * expected) with one line in `err`. */
int replay_read_counters(struct ms_client *c, struct replay_counters *k,
			 int timeout_ms, struct ms_err *err);

/* 0 when the trace fits the model the daemon serves: the same expert count,
 * k = the daemon's experts used per token, and the trace's blocks exactly
 * the daemon's MoE layers that run (NextN/MTP excluded), in order. Else
 * -EINVAL with one line naming the first mismatch. */
int replay_check(const struct ms_client *c, const struct ms_trace *t,
		 struct ms_err *err);

/* Replays `t` (after replay_check) through `c`; fills *r (zeroed first,
 * and filled as far as it got on failure). An expert that fails to load
 * (-EIO, -EBUSY) ends the replay with that error, the layer's ready experts
 * released. */
int replay_run(struct ms_client *c, const struct ms_trace *t,
	       const struct replay_opts *o, struct replay_result *r,
	       struct ms_err *err);

/* The unsigned sum of `len` bytes (what touch does to each projection). */
uint64_t replay_sum_bytes(const void *p, uint64_t len);

/* `moestream replay` (tools/replay.c). */
int cmd_replay(int argc, char **argv);

#endif /* MS_REPLAY_H */
