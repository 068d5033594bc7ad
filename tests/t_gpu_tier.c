/*
 * t_gpu_tier - the GPU expert tier (gpu_tier.h) in front of a real
 * moestreamd, on the tiny preset (glm4moe: 4 MoE blocks + 1 NextN, 16
 * experts of Q2_K/Q2_K/Q3_K, n_embd 512, n_ff 256).
 *
 *  1. Setup: the arena mapping is registered read-only (or the tier says
 *     why not), an expert's pointers in it are pinned memory; the slot size
 *     is the largest expert with 256-byte aligned projections.
 *  2. Misses then hits: the bytes on the device equal the file's bytes at
 *     the expert's extents, projection by projection, in the view's
 *     gate/up/down places; duplicates in one acquire; counters.
 *  3. Daemon pins: released as soon as the copies are done, without any
 *     further call into the tier (the daemon's STATS pinned_entries falls
 *     to 0), and after ms_gpu_tier_sync.
 *  4. FFN on the VRAM copies, on the context's stream: the fused matvec
 *     (B = 1, 3, 8; one and several experts per call) within 1e-5
 *     relative L2 of the C reference (ms_expert_ffn, scalar path, on the
 *     file's bytes); the cuBLAS path (B = 16) within 2e-3 (f16 operands,
 *     see t_gpu_kernels).
 *  5. Eviction under a budget of 6 slots: least recently released first,
 *     pinned experts never (their bytes intact after churn), -ENOSPC when
 *     every slot is pinned, nothing leaked by a failed acquire.
 *  6. Prefetch: copies start without pins; a later acquire hits them.
 *  7. Errors, each named: a dense block, an expert out of range, no
 *     experts, a release of what is not pinned, a budget below one slot, a
 *     context on another stream, and the daemon gone.
 *  8. Host registration refused (emulator only: CUDA_EMU_NO_HOST_REGISTER_
 *     READONLY) and not asked for: the tier says "pageable" and why, and
 *     still copies the right bytes.
 *  9. A source of its own (ms_gpu_tier_init_source, as an engine's
 *     embedded cache is one): a writable arena registered without the
 *     read-only flag, the file's bytes in VRAM, an answer for another
 *     block with the same expert number not taken for the one asked (and
 *     handed back), every pin handed back once, from the copy's host
 *     function when the source allows any thread; the slot size that
 *     ms_gpu_tier_slot_bytes gives.
 *
 * Skips (77) with the reason where there is no GPU; in a build without
 * CUDA it first checks that the tier's entry points answer -ENOTSUP.
 *
 * `t_gpu_tier --bench [OPTIONS]` runs the GPU tier's benchmark instead
 * (tools/bench_gpu_tier.c), for tools/gpu-check.sh.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tools/bench_gpu_tier.h"
#include "daemontest.h"
#include "moestream/gpu_tier.h"
#include "moestream/kernels.h"

#define TOL_MATVEC 1e-5
#define TOL_CUBLAS 2e-3
#define N_SLOTS 6

static struct ms_model *model;
static uint64_t rng;
static struct ms_gpu_ctx *ctx;
static struct dt_daemon daemon_;
static struct ms_client *cstats;
static uint64_t slot_bytes; /* what the tier should choose */

static const struct ms_moe_layer *layer_of_block(uint32_t block)
{
	for (uint32_t l = 0; l < model->n_layers; l++)
		if (model->layers[l].block == block)
			return &model->layers[l];
	t_fatal("block %u is not a MoE layer of the test model", block);
}

/* The file's bytes of projection k (file order) of an expert. */
static uint8_t *file_proj(uint32_t block, uint32_t expert, uint32_t k,
			  size_t *len)
{
	const struct ms_moe_layer *L = layer_of_block(block);
	const struct ms_extent *e =
		&L->ext[(size_t)expert * L->n_proj + k];
	uint8_t *buf = t_xmalloc(e->bytes);
	if (pread(model->shards[e->shard]->fd, buf, e->bytes, (off_t)e->offset) !=
	    (ssize_t)e->bytes)
		t_fatal("pread of the model");
	*len = e->bytes;
	return buf;
}

/* Where projection k (file order) of a layer sits in ms_gpu_expert.data. */
static int role_of(const struct ms_moe_layer *L, uint32_t k)
{
	switch (L->proj[k]) {
	case MS_PROJ_GATE: return 0;
	case MS_PROJ_UP: return 1;
	case MS_PROJ_DOWN: return L->fused ? 1 : 2;
	case MS_PROJ_GATE_UP: return 0;
	default: return -1;
	}
}

/* The device view against the file: shape, types, alignment, bytes. */
static bool check_view(const char *what, uint32_t block, uint32_t expert,
		       const struct ms_gpu_expert *v)
{
	const struct ms_moe_layer *L = layer_of_block(block);
	bool ok = true;
	/* The views are valid on the tier's compute stream (the context's):
	 * a download runs on the legacy stream, which does not wait for it.
	 * Without this the check races the miss's copy (seen on an H200; the
	 * CPU emulator copies synchronously and cannot show it). */
	struct ms_err serr = { 0 };
	if (ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &serr)) {
		t_fail_at(__FILE__, __LINE__, "%s: syncing the compute stream: %s",
			  what, serr.msg);
		return false;
	}
	if (v->fused != L->fused || v->n_embd != (int64_t)model->n_embd ||
	    v->n_ff != (int64_t)model->n_ff_exp) {
		t_fail_at(__FILE__, __LINE__,
			  "%s: %u:%u: view fused %d n_embd %lld n_ff %lld, the "
			  "model's %d %llu %llu",
			  what, block, expert, v->fused, (long long)v->n_embd,
			  (long long)v->n_ff, L->fused,
			  (unsigned long long)model->n_embd,
			  (unsigned long long)model->n_ff_exp);
		return false;
	}
	for (uint32_t k = 0; k < L->n_proj; k++) {
		const int r = role_of(L, k);
		size_t len;
		uint8_t *want = file_proj(block, expert, k, &len);
		uint8_t *got = t_xmalloc(len);
		struct ms_err err = { 0 };
		if (v->type[r] != L->type[k]) {
			t_fail_at(__FILE__, __LINE__, "%s: %u:%u %s: type %u, file %u",
				  what, block, expert, ms_proj_name(L->proj[k]),
				  v->type[r], L->type[k]);
			ok = false;
		} else if ((uintptr_t)v->data[r] % 256) {
			t_fail_at(__FILE__, __LINE__,
				  "%s: %u:%u %s at %p: not 256-byte aligned", what,
				  block, expert, ms_proj_name(L->proj[k]),
				  v->data[r]);
			ok = false;
		} else if (ms_gpu_download(got, v->data[r], len, &err)) {
			t_fail_at(__FILE__, __LINE__, "%s: download: %s", what,
				  err.msg);
			ok = false;
		} else if (memcmp(got, want, len)) {
			size_t at = 0;
			while (got[at] == want[at])
				at++;
			t_fail_at(__FILE__, __LINE__,
				  "%s: %u:%u %s: the device's bytes differ from "
				  "the file's at byte %zu of %zu",
				  what, block, expert, ms_proj_name(L->proj[k]),
				  at, len);
			ok = false;
		}
		free(want);
		free(got);
	}
	return ok;
}

static struct ms_gpu_tier *tier_new(struct ms_client **cp, uint64_t budget,
				    bool no_register)
{
	struct ms_err err = { 0 };
	*cp = dt_connect(daemon_.sock, "t_gpu_tier", &err);
	if (!*cp)
		t_fatal("connect: %s", err.msg);
	struct ms_gpu_tier_opts o = { .device = 0,
				      .vram_bytes = budget,
				      .stream = ms_gpu_ctx_stream(ctx),
				      .timeout_ms = 20000,
				      .no_register = no_register };
	struct ms_gpu_tier *t = NULL;
	if (ms_gpu_tier_init(&t, *cp, &o, &err))
		t_fatal("ms_gpu_tier_init (budget %llu): %s",
			(unsigned long long)budget, err.msg);
	return t;
}

static void tier_del(struct ms_gpu_tier *t, struct ms_client *c)
{
	ms_gpu_tier_free(t);
	ms_client_close(c);
}

static struct ms_gpu_tier_stats stats_of(struct ms_gpu_tier *t)
{
	struct ms_gpu_tier_stats s;
	struct ms_err err = { 0 };
	if (ms_gpu_tier_stats(t, &s, &err))
		t_fatal("ms_gpu_tier_stats: %s", err.msg);
	return s;
}

static void acquire_ok(struct ms_gpu_tier *t, uint32_t block,
		       const uint16_t *ex, unsigned n, struct ms_gpu_expert *v)
{
	struct ms_err err = { 0 };
	int rc = ms_gpu_tier_acquire(t, block, ex, n, v, &err);
	if (rc)
		t_fatal("ms_gpu_tier_acquire(block %u, %u experts) = %d: %s",
			block, n, rc, err.msg);
}

static void release_ok(struct ms_gpu_tier *t, uint32_t block,
		       const uint16_t *ex, unsigned n)
{
	struct ms_err err = { 0 };
	int rc = ms_gpu_tier_release(t, block, ex, n, &err);
	T_CHECK(rc == 0, "ms_gpu_tier_release(block %u) = %d: %s", block, rc,
		err.msg);
}

static bool is_zero(double v, double arg)
{
	(void)arg;
	return v == 0;
}

/* The daemon's pinned entries fall to 0 within `ms`. */
static void check_no_daemon_pins(const char *when, int ms)
{
	double last = NAN;
	int64_t took = dt_stat_wait(cstats, "pinned_entries", is_zero, 0, ms,
				    &last);
	T_CHECK(took >= 0,
		"%s: the daemon still has %.0f pinned entries after %d ms",
		when, last, ms);
	if (took >= 0)
		printf("%-52s daemon pins 0 after %lld ms\n", when,
		       (long long)took);
}

/* ---- 1 + 2 + 3: registration, misses, hits, pins ---------------------------- */

static void check_basics(uint32_t b1)
{
	struct ms_client *c;
	struct ms_gpu_tier *t = tier_new(&c, N_SLOTS * slot_bytes + 100, false);
	struct ms_gpu_tier_stats s = stats_of(t);
	printf("tier: %u slots of %llu bytes; host memory: %s\n", s.slots,
	       (unsigned long long)s.slot_bytes, s.host_mode);
	T_EQ_U64(s.slots, N_SLOTS);
	T_EQ_U64(s.slot_bytes, slot_bytes);
	T_EQ_U64(s.vram_bytes, N_SLOTS * slot_bytes);
	T_CHECK(s.host_registered == !strncmp(s.host_mode, "registered", 10),
		"host_registered %d but host_mode '%s'", s.host_registered,
		s.host_mode);
	if (!s.host_registered)
		T_CHECK(strstr(s.host_mode, "pageable: ") && strlen(s.host_mode) > 20,
			"a pageable tier must say why: '%s'", s.host_mode);
	if (strstr(ms_gpu_build_info(), "emulation"))
		T_CHECK(s.host_registered,
			"the emulated device registers read-only memory: %s",
			s.host_mode);

	uint16_t ex[5] = { 3, 7, 11, 3, 0 };
	struct ms_gpu_expert v[5];
	acquire_ok(t, b1, ex, 5, v);
	s = stats_of(t);
	T_EQ_U64(s.misses, 4); /* 3 twice: fetched once */
	T_EQ_U64(s.hits, 0);
	T_EQ_U64(s.pinned, 4);
	T_CHECK(v[0].data[0] == v[3].data[0], "a duplicate got another slot");
	/* the daemon's pins go by themselves once the copies are done:
	 * wait for the compute stream only, then watch the daemon */
	struct ms_err err = { 0 };
	T_CHECK(!ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &err), "sync: %s",
		err.msg);
	check_no_daemon_pins("misses copied, no call into the tier", 3000);
	for (int i = 0; i < 5; i++)
		check_view("first acquire", b1, ex[i], &v[i]);

	/* pinned memory: the mapping, and an expert inside it */
	if (s.host_registered) {
		struct ms_client_expert ce;
		uint16_t e9 = 9;
		int rc = ms_client_acquire(cstats, b1, &e9, 1, &ce, 5000);
		T_CHECK(rc == 0, "acquire on the stats client: %d", rc);
		uint64_t alen = 0;
		const void *base = ms_client_arena(c, &alen);
		T_CHECK(ms_gpu_host_is_pinned(base, &err) == 1,
			"the tier's arena mapping is not pinned memory: %s",
			err.msg);
		T_CHECK(alen == ms_client_model(c)->arena_size,
			"ms_client_arena length %llu, the model says %llu",
			(unsigned long long)alen,
			(unsigned long long)ms_client_model(c)->arena_size);
		/* the other client's mapping is another range, unregistered */
		if (!rc)
			T_CHECK(ms_gpu_host_is_pinned(ce.proj[0], &err) == 0,
				"a mapping the tier did not register reads as "
				"pinned");
		if (!rc)
			ms_client_release(cstats, b1, &e9, 1);
		ms_client_ping(cstats, 2000);
	}

	release_ok(t, b1, ex, 5);
	s = stats_of(t);
	T_EQ_U64(s.pinned, 0);
	T_EQ_U64(s.resident, 4);

	/* hits: nothing is copied again */
	uint16_t hx[3] = { 11, 0, 3 };
	acquire_ok(t, b1, hx, 3, v);
	s = stats_of(t);
	T_EQ_U64(s.hits, 3);
	T_EQ_U64(s.misses, 4);
	T_EQ_U64(s.copies, 4);
	for (int i = 0; i < 3; i++)
		check_view("hits", b1, hx[i], &v[i]);
	release_ok(t, b1, hx, 3);

	T_CHECK(!ms_gpu_tier_sync(t, &err), "sync: %s", err.msg);
	s = stats_of(t);
	T_EQ_U64(s.daemon_pins, 0);
	T_EQ_U64(s.daemon_released, 4);
	T_EQ_U64(s.daemon_errors, 0);
	T_EQ_U64(s.bytes_copied, 4 * layer_of_block(b1)->expert_bytes);
	T_CHECK(s.copy_ms > 0, "copy time %.6f ms", s.copy_ms);
	printf("%-52s %llu bytes in %.3f ms (%.2f GB/s)\n", "4 misses copied",
	       (unsigned long long)s.bytes_copied, s.copy_ms,
	       s.copy_ms > 0 ? s.bytes_copied / (s.copy_ms * 1e6) : 0.0);
	check_no_daemon_pins("after ms_gpu_tier_sync", 3000);
	tier_del(t, c);
}

/* ---- 4: FFN against the C reference -------------------------------------------- */

static double rel_l2(const float *got, const float *want, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		const double d = (double)got[i] - want[i];
		num += d * d;
		den += (double)want[i] * want[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void ffn_ref(uint32_t block, uint32_t expert, const float *x, float *y,
		    int64_t B)
{
	const struct ms_moe_layer *L = layer_of_block(block);
	struct ms_expert_view hv = { .fused = L->fused,
				     .n_embd = (int64_t)model->n_embd,
				     .n_ff = (int64_t)model->n_ff_exp };
	uint8_t *bufs[3] = { 0 };
	for (uint32_t k = 0; k < L->n_proj; k++) {
		size_t len;
		const int r = role_of(L, k);
		bufs[k] = file_proj(block, expert, k, &len);
		hv.type[r] = L->type[k];
		hv.data[r] = bufs[k];
	}
	struct ms_ffn_opts o = { .n_threads = 1, .path = MS_FFN_PATH_SCALAR };
	struct ms_err err = { 0 };
	if (ms_expert_ffn(&hv, x, y, B, &o, &err))
		t_fatal("ms_expert_ffn: %s", err.msg);
	for (int k = 0; k < 3; k++)
		free(bufs[k]);
}

static double worst_matvec;

static void check_ffn(uint32_t b1)
{
	struct ms_client *c;
	struct ms_gpu_tier *t = tier_new(&c, N_SLOTS * slot_bytes, false);
	const int64_t E = (int64_t)model->n_embd;
	static const int64_t Bs[] = { 1, 3, 8, 16 };
	const uint16_t ex[4] = { 2, 5, 14, 9 };
	const unsigned n = 4;
	float *x = t_xmalloc(sizeof(float) * 16 * E);
	float *y = t_xmalloc(sizeof(float) * n * 16 * E);
	float *ref = t_xmalloc(sizeof(float) * 16 * E);
	void *x_dev = NULL, *y_dev = NULL;
	struct ms_err err = { 0 };
	if (ms_gpu_malloc(&x_dev, sizeof(float) * 16 * E, &err) ||
	    ms_gpu_malloc(&y_dev, sizeof(float) * n * 16 * E, &err))
		t_fatal("ms_gpu_malloc: %s", err.msg);
	for (size_t b = 0; b < sizeof(Bs) / sizeof(Bs[0]); b++) {
		const int64_t B = Bs[b];
		const enum ms_gpu_ffn_path path =
			B <= 8 ? MS_GPU_FFN_MATVEC : MS_GPU_FFN_CUBLAS;
		const double tol = B <= 8 ? TOL_MATVEC : TOL_CUBLAS;
		for (int64_t i = 0; i < B * E; i++)
			x[i] = (float)((double)(t_rand(&rng) >> 11) /
					       9007199254740992.0 * 2.0 -
				       1.0);
		if (ms_gpu_upload(x_dev, x, sizeof(float) * B * E, &err))
			t_fatal("upload: %s", err.msg);
		/* all four experts in one call, through the tier */
		int rc = ms_gpu_tier_ffn(t, ctx, b1, ex, n, x_dev, 0, y_dev, B,
					 path, &err);
		T_CHECK(rc == 0, "ms_gpu_tier_ffn B=%lld %s: %d: %s",
			(long long)B, ms_gpu_ffn_path_name(path), rc, err.msg);
		if (rc)
			continue;
		if (ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &err) ||
		    ms_gpu_download(y, y_dev, sizeof(float) * n * B * E, &err))
			t_fatal("sync/download: %s", err.msg);
		double worst = 0;
		for (unsigned k = 0; k < n; k++) {
			ffn_ref(b1, ex[k], x, ref, B);
			const double r = rel_l2(y + (size_t)k * B * E, ref,
						(size_t)(B * E));
			T_CHECK(r <= tol,
				"ffn %u:%u B=%lld %s: relative L2 %.3e > %.0e",
				b1, ex[k], (long long)B,
				ms_gpu_ffn_path_name(path), r, tol);
			if (r > worst)
				worst = r;
		}
		if (path == MS_GPU_FFN_MATVEC && worst > worst_matvec)
			worst_matvec = worst;
		printf("ffn B=%-3lld %-6s 4 experts through the tier:   "
		       "worst relative L2 %.2e (bound %.0e)\n",
		       (long long)B, ms_gpu_ffn_path_name(path), worst, tol);
	}
	/* one expert, ms_gpu_expert_ffn on an acquired view, B = 1 */
	{
		uint16_t e = 6;
		struct ms_gpu_expert v;
		acquire_ok(t, b1, &e, 1, &v);
		int rc = ms_gpu_expert_ffn(ctx, &v, x_dev, y_dev, 1,
					   MS_GPU_FFN_MATVEC, &err);
		T_CHECK(rc == 0, "ms_gpu_expert_ffn: %s", err.msg);
		release_ok(t, b1, &e, 1);
		if (!rc && !ms_gpu_stream_sync(ms_gpu_ctx_stream(ctx), &err) &&
		    !ms_gpu_download(y, y_dev, sizeof(float) * E, &err)) {
			ffn_ref(b1, e, x, ref, 1);
			const double r = rel_l2(y, ref, (size_t)E);
			T_CHECK(r <= TOL_MATVEC,
				"ms_gpu_expert_ffn %u:%u: relative L2 %.3e", b1,
				e, r);
			if (r > worst_matvec)
				worst_matvec = r;
			printf("ffn B=1   matvec 1 expert, acquired view:     "
			       "relative L2 %.2e\n",
			       r);
		}
	}
	/* a context on another stream is refused */
	{
		struct ms_gpu_ctx *other = NULL;
		if (ms_gpu_ctx_init(&other, 0, NULL, &err))
			t_fatal("ms_gpu_ctx_init: %s", err.msg);
		int rc = ms_gpu_tier_ffn(t, other, b1, ex, 1, x_dev, 0, y_dev, 1,
					 MS_GPU_FFN_AUTO, &err);
		T_CHECK(rc == -EINVAL && strstr(err.msg, "stream"),
			"a context on another stream: %d '%s'", rc, err.msg);
		ms_gpu_ctx_free(other);
	}
	struct ms_gpu_tier_stats s = stats_of(t);
	T_EQ_U64(s.pinned, 0);
	T_EQ_U64(s.misses, 5);
	ms_gpu_free(x_dev);
	ms_gpu_free(y_dev);
	free(x);
	free(y);
	free(ref);
	tier_del(t, c);
}

/* ---- 5 + 6: eviction, pins, prefetch --------------------------------------------- */

static bool resident(struct ms_gpu_tier *t, uint32_t block, uint16_t e)
{
	/* a prefetch of a resident expert copies nothing */
	struct ms_gpu_tier_stats a = stats_of(t), b;
	struct ms_err err = { 0 };
	if (ms_gpu_tier_prefetch(t, block, &e, 1, &err))
		t_fatal("prefetch: %s", err.msg);
	b = stats_of(t);
	return b.copies == a.copies && b.prefetch_dropped == a.prefetch_dropped;
}

static void check_eviction(uint32_t b1, uint32_t b2)
{
	struct ms_client *c;
	struct ms_gpu_tier *t = tier_new(&c, N_SLOTS * slot_bytes, false);
	struct ms_err err = { 0 };
	struct ms_gpu_expert v[8];
	uint16_t a[6] = { 0, 1, 2, 3, 4, 5 };
	acquire_ok(t, b1, a, 6, v);
	release_ok(t, b1, a, 6); /* LRU order: 0 (oldest) .. 5 */
	uint16_t bx[2] = { 8, 9 };
	acquire_ok(t, b2, bx, 2, v);
	struct ms_gpu_tier_stats s = stats_of(t);
	T_EQ_U64(s.evictions, 2);
	T_EQ_U64(s.resident, 6);
	check_view("after eviction", b2, 8, &v[0]);
	check_view("after eviction", b2, 9, &v[1]);
	/* 0 and 1 went; 2..5 stayed */
	uint16_t keep[4] = { 2, 3, 4, 5 };
	struct ms_gpu_tier_stats s0 = stats_of(t);
	acquire_ok(t, b1, keep, 4, v + 2);
	s = stats_of(t);
	T_EQ_U64(s.hits - s0.hits, 4);
	T_EQ_U64(s.misses - s0.misses, 0);

	/* every slot pinned now (b2:8, b2:9, b1:2..5): one more is -ENOSPC,
	 * and leaves nothing pinned behind */
	uint16_t more[2] = { 2, 12 }; /* a hit and a miss */
	int rc = ms_gpu_tier_acquire(t, b1, more, 2, v, &err);
	T_CHECK(rc == -ENOSPC && strstr(err.msg, "pinned"),
		"acquire with every slot pinned: %d '%s'", rc, err.msg);
	s = stats_of(t);
	T_EQ_U64(s.pinned, 6);
	uint16_t seven[7] = { 0, 1, 2, 3, 4, 5, 6 };
	rc = ms_gpu_tier_acquire(t, b1, seven, 7, v, &err);
	T_CHECK(rc == -ENOSPC && strstr(err.msg, "holds 6"),
		"7 experts with 6 slots: %d '%s'", rc, err.msg);
	/* a prefetch cannot take a pinned slot: dropped */
	uint16_t pf = 13;
	rc = ms_gpu_tier_prefetch(t, b1, &pf, 1, &err);
	s = stats_of(t);
	T_CHECK(rc == 0 && s.prefetch_dropped == 1,
		"prefetch with every slot pinned: %d, dropped %llu", rc,
		(unsigned long long)s.prefetch_dropped);

	/* churn through 2 free slots while 4 stay pinned */
	release_ok(t, b2, bx, 2);
	for (int round = 0; round < 12; round++) {
		uint16_t e = (uint16_t)(6 + round % 10);
		uint32_t blk = round % 2 ? b1 : b2;
		struct ms_gpu_expert w;
		acquire_ok(t, blk, &e, 1, &w);
		if (round % 5 == 0)
			check_view("churn", blk, e, &w);
		release_ok(t, blk, &e, 1);
	}
	for (int i = 0; i < 4; i++)
		check_view("pinned through churn", b1, keep[i], &v[2 + i]);
	release_ok(t, b1, keep, 4);

	/* prefetch: no pins, and the acquire that follows hits */
	if (ms_gpu_tier_flush(t, &err))
		T_CHECK(0, "flush: %s", err.msg);
	s0 = stats_of(t);
	T_EQ_U64(s0.resident, 0);
	uint16_t p[3] = { 4, 10, 15 };
	rc = ms_gpu_tier_prefetch(t, b2, p, 3, &err);
	T_CHECK(rc == 0, "prefetch: %s", err.msg);
	s = stats_of(t);
	T_EQ_U64(s.prefetched - s0.prefetched, 3);
	T_EQ_U64(s.pinned, 0);
	T_EQ_U64(s.resident, 3);
	acquire_ok(t, b2, p, 3, v);
	s = stats_of(t);
	T_EQ_U64(s.hits - s0.hits, 3);
	T_EQ_U64(s.prefetch_hits - s0.prefetch_hits, 3);
	T_EQ_U64(s.misses - s0.misses, 0);
	for (int i = 0; i < 3; i++)
		check_view("prefetched", b2, p[i], &v[i]);
	release_ok(t, b2, p, 3);
	T_CHECK(resident(t, b2, 10), "a prefetched expert went away");

	T_CHECK(!ms_gpu_tier_sync(t, &err), "sync: %s", err.msg);
	s = stats_of(t);
	T_EQ_U64(s.copies, s.misses + s.prefetched);
	T_EQ_U64(s.daemon_released, s.copies);
	T_EQ_U64(s.daemon_pins, 0);
	printf("%-52s %llu copies, %llu evictions, %llu hits, %llu misses\n",
	       "eviction, pins, prefetch", (unsigned long long)s.copies,
	       (unsigned long long)s.evictions, (unsigned long long)s.hits,
	       (unsigned long long)s.misses);
	check_no_daemon_pins("eviction test done", 3000);
	tier_del(t, c);
}

/* ---- 7 + 8: errors and pageable copies ---------------------------------------------- */

static void check_errors(uint32_t b1)
{
	struct ms_client *c;
	struct ms_gpu_tier *t = tier_new(&c, N_SLOTS * slot_bytes, false);
	struct ms_err err = { 0 };
	struct ms_gpu_expert v[2];
	uint16_t e = 1;
	int rc = ms_gpu_tier_acquire(t, 0, &e, 1, v, &err); /* block 0: dense */
	T_CHECK(rc == -EINVAL && strstr(err.msg, "block 0 is not a MoE layer"),
		"dense block: %d '%s'", rc, err.msg);
	uint16_t big = (uint16_t)model->n_expert;
	rc = ms_gpu_tier_acquire(t, b1, &big, 1, v, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "expert 16 out of range"),
		"expert out of range: %d '%s'", rc, err.msg);
	rc = ms_gpu_tier_acquire(t, b1, &e, 0, v, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "0 experts"),
		"no experts: %d '%s'", rc, err.msg);
	rc = ms_gpu_tier_acquire(t, b1, &e, 1, NULL, &err);
	T_CHECK(rc == -EINVAL, "NULL views: %d '%s'", rc, err.msg);
	rc = ms_gpu_tier_release(t, b1, &e, 1, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "expert 1: not pinned"),
		"release of what is not pinned: %d '%s'", rc, err.msg);
	rc = ms_gpu_tier_prefetch(t, 9999, &e, 1, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "block 9999"),
		"prefetch of a block that does not exist: %d '%s'", rc, err.msg);
	struct ms_gpu_tier_stats s = stats_of(t);
	T_EQ_U64(s.copies, 0);
	T_EQ_U64(s.pinned, 0);
	printf("%-52s named\n", "bad block, expert, count, release");

	/* a budget below one slot */
	struct ms_gpu_tier *t2 = NULL;
	struct ms_gpu_tier_opts o = { .vram_bytes = slot_bytes - 1,
				      .stream = ms_gpu_ctx_stream(ctx) };
	struct ms_client *c2 = dt_connect(daemon_.sock, "t_gpu_tier-small", &err);
	if (!c2)
		t_fatal("connect: %s", err.msg);
	rc = ms_gpu_tier_init(&t2, c2, &o, &err);
	T_CHECK(rc == -EINVAL && !t2 && strstr(err.msg, "holds no expert"),
		"a budget below one slot: %d '%s'", rc, err.msg);
	o.vram_bytes = slot_bytes;
	o.device = 99;
	rc = ms_gpu_tier_init(&t2, c2, &o, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "gpu 99"),
		"device 99: %d '%s'", rc, err.msg);
	rc = ms_gpu_tier_init(&t2, NULL, &o, &err);
	T_CHECK(rc == -EINVAL && strstr(err.msg, "client"), "NULL client: %d '%s'",
		rc, err.msg);
	ms_client_close(c2);
	printf("%-52s named\n", "bad budget, device, client");

	/* the daemon gone: a miss says so; hits still work; free is clean */
	uint16_t h = 4;
	acquire_ok(t, b1, &h, 1, v);
	release_ok(t, b1, &h, 1);
	T_CHECK(!ms_gpu_tier_sync(t, &err), "sync: %s", err.msg);
	check_no_daemon_pins("before stopping the daemon", 3000);
	rc = dt_stop(&daemon_);
	T_CHECK(rc == 0, "moestreamd stopped with %d", rc);
	uint16_t miss = 12;
	rc = ms_gpu_tier_acquire(t, b1, &miss, 1, v, &err);
	T_CHECK(rc < 0 && strstr(err.msg, "moestreamd"),
		"a miss with the daemon gone: %d '%s'", rc, err.msg);
	printf("%-52s %d: %s\n", "a miss with the daemon gone", rc, err.msg);
	rc = ms_gpu_tier_acquire(t, b1, &h, 1, v, &err);
	T_CHECK(rc == 0, "a hit with the daemon gone: %d '%s'", rc, err.msg);
	if (!rc) {
		check_view("hit with the daemon gone", b1, h, &v[0]);
		release_ok(t, b1, &h, 1);
	}
	s = stats_of(t);
	T_EQ_U64(s.pinned, 0);
	T_EQ_U64(s.daemon_pins, 0);
	tier_del(t, c);
}

static void check_pageable(uint32_t b1)
{
	const bool emu = strstr(ms_gpu_build_info(), "emulation") != NULL;
	for (int mode = emu ? 0 : 1; mode < 2; mode++) {
		if (mode == 0)
			setenv("CUDA_EMU_NO_HOST_REGISTER_READONLY", "1", 1);
		struct ms_client *c;
		struct ms_gpu_tier *t = tier_new(&c, 2 * slot_bytes, mode == 1);
		unsetenv("CUDA_EMU_NO_HOST_REGISTER_READONLY");
		struct ms_gpu_tier_stats s = stats_of(t);
		const char *why = mode == 0 ? "cudaHostRegister" : "asked not to";
		T_CHECK(!s.host_registered && !strncmp(s.host_mode, "pageable: ", 10) &&
			strstr(s.host_mode, why),
			"%s: registered %d, mode '%s'",
			mode == 0 ? "registration refused" : "no_register",
			s.host_registered, s.host_mode);
		printf("%-52s %s\n", mode == 0 ? "registration refused (emulator)"
					       : "no_register",
		       s.host_mode);
		uint16_t ex[2] = { 13, 14 };
		struct ms_gpu_expert v[2];
		acquire_ok(t, b1, ex, 2, v);
		check_view("pageable", b1, 13, &v[0]);
		check_view("pageable", b1, 14, &v[1]);
		release_ok(t, b1, ex, 2);
		tier_del(t, c);
	}
	check_no_daemon_pins("pageable tiers freed", 3000);
}

/* ---- 9: a source of its own ---------------------------------------------------------- */

/* A source over a host copy of one block's experts: answers in order of
 * asking, each request preceded by a stray answer for another block with
 * the same expert number. */
struct fake_src {
	pthread_mutex_t mu;
	uint32_t block, other;           /* the block held, a stray's block */
	uint8_t *arena;
	uint64_t arena_len;
	uint64_t off[16][3], len[16][3]; /* per expert, file order */
	uint32_t n_proj;
	struct ms_client_expert q[64];
	unsigned q_n;
	uint64_t req;
	int pins[2][16];                 /* [block held, other][expert] */
	int releases, off_main, bad_release;
	pthread_t main;
};

static int fs_acquire(void *p, uint32_t block, const uint16_t *ex,
		      unsigned n, uint64_t *id)
{
	struct fake_src *f = p;
	pthread_mutex_lock(&f->mu);
	*id = ++f->req;
	for (unsigned i = 0; i < n + 1 && f->q_n < 64; i++) {
		/* first a stray: the other block, the first expert asked */
		uint32_t x = i ? ex[i - 1] : ex[0];
		struct ms_client_expert *c = &f->q[f->q_n++];
		memset(c, 0, sizeof(*c));
		c->block = i ? block : f->other;
		c->expert = x;
		c->n_proj = f->n_proj;
		for (uint32_t k = 0; k < f->n_proj; k++) {
			c->proj[k] = f->arena + f->off[x][k];
			c->len[k] = f->len[x][k];
		}
		f->pins[i ? 0 : 1][x]++;
	}
	pthread_mutex_unlock(&f->mu);
	return block == f->block ? 0 : -EINVAL;
}

static int fs_next(void *p, struct ms_client_expert *out, uint64_t *id,
		   int timeout_ms)
{
	struct fake_src *f = p;
	(void)timeout_ms;
	pthread_mutex_lock(&f->mu);
	int rc = -ETIMEDOUT;
	if (f->q_n) {
		*out = f->q[0];
		memmove(f->q, f->q + 1, --f->q_n * sizeof(f->q[0]));
		*id = f->req;
		rc = 0;
	}
	pthread_mutex_unlock(&f->mu);
	return rc;
}

static int fs_release(void *p, uint32_t block, const uint16_t *ex,
		      unsigned n)
{
	struct fake_src *f = p;
	pthread_mutex_lock(&f->mu);
	for (unsigned i = 0; i < n; i++) {
		int w = block == f->block ? 0 : block == f->other ? 1 : -1;
		if (w < 0 || ex[i] >= 16 || f->pins[w][ex[i]] <= 0)
			f->bad_release++;
		else
			f->pins[w][ex[i]]--;
		f->releases++;
		if (!pthread_equal(pthread_self(), f->main))
			f->off_main++;
	}
	pthread_mutex_unlock(&f->mu);
	return 0;
}

static void check_source(uint32_t b1, uint32_t b2)
{
	struct ms_err err = { 0 };
	const struct ms_moe_layer *L = layer_of_block(b1);
	struct ms_client_layer *cl = t_xmalloc(model->n_layers * sizeof(*cl));
	struct ms_client_model cm;
	memset(&cm, 0, sizeof(cm));
	snprintf(cm.arch, sizeof(cm.arch), "%s", model->arch);
	cm.n_block = model->n_block;
	cm.n_expert = model->n_expert;
	cm.n_expert_used = model->n_expert_used;
	cm.n_layers = model->n_layers;
	cm.layers = cl;
	for (uint32_t l = 0; l < model->n_layers; l++) {
		const struct ms_moe_layer *M = &model->layers[l];
		memset(&cl[l], 0, sizeof(cl[l]));
		cl[l].block = M->block;
		cl[l].n_proj = M->n_proj;
		for (uint32_t k = 0; k < M->n_proj; k++) {
			cl[l].proj[k] = M->proj[k];
			cl[l].type[k] = M->type[k];
			cl[l].ne[k][0] = M->ne[k][0];
			cl[l].ne[k][1] = M->ne[k][1];
		}
		cl[l].expert_bytes = M->expert_bytes;
		cl[l].nextn = M->nextn;
	}
	uint64_t sb = 0;
	int rc = ms_gpu_tier_slot_bytes(&cm, &sb, &err);
	T_CHECK(rc == 0 && sb == slot_bytes, "ms_gpu_tier_slot_bytes: %d, %llu "
		"bytes, expected %llu (%s)", rc, (unsigned long long)sb,
		(unsigned long long)slot_bytes, err.msg);

	struct fake_src f;
	memset(&f, 0, sizeof(f));
	pthread_mutex_init(&f.mu, NULL);
	f.main = pthread_self();
	f.block = b1;
	f.other = b2;
	f.n_proj = L->n_proj;
	for (uint32_t x = 0; x < 16; x++)
		for (uint32_t k = 0; k < L->n_proj; k++) {
			f.off[x][k] = f.arena_len;
			f.len[x][k] = L->ext[(size_t)x * L->n_proj + k].bytes;
			f.arena_len += (f.len[x][k] + 4095) / 4096 * 4096;
		}
	f.arena = t_xmalloc(f.arena_len);
	for (uint32_t x = 0; x < 16; x++)
		for (uint32_t k = 0; k < L->n_proj; k++) {
			size_t len;
			uint8_t *b = file_proj(b1, x, k, &len);
			memcpy(f.arena + f.off[x][k], b, len);
			free(b);
		}
	struct ms_gpu_tier_source src = {
		.name = "a test source", .ctx = &f, .model = &cm,
		.arena = f.arena, .arena_len = f.arena_len, .writable = true,
		.acquire = fs_acquire, .next = fs_next, .release = fs_release,
		.release_any_thread = true,
	};
	struct ms_gpu_tier_opts o = { .device = 0, .vram_bytes = 4 * slot_bytes,
				      .stream = ms_gpu_ctx_stream(ctx),
				      .timeout_ms = 2000 };
	struct ms_gpu_tier *t = NULL;
	if (ms_gpu_tier_init_source(&t, &src, &o, &err))
		t_fatal("ms_gpu_tier_init_source: %s", err.msg);
	struct ms_gpu_tier_stats s = stats_of(t);
	T_CHECK(s.host_registered && strstr(s.host_mode, "cudaHostRegisterPortable"),
		"a writable arena: registered %d, mode '%s'", s.host_registered,
		s.host_mode);
	uint16_t ex[3] = { 5, 9, 2 };
	struct ms_gpu_expert v[3];
	acquire_ok(t, b1, ex, 3, v);
	for (int i = 0; i < 3; i++)
		check_view("own source", b1, ex[i], &v[i]);
	release_ok(t, b1, ex, 3);
	uint16_t pf[2] = { 11, 12 };
	T_CHECK(ms_gpu_tier_prefetch(t, b1, pf, 2, &err) == 0, "prefetch: %s",
		err.msg);
	acquire_ok(t, b1, pf, 2, v);
	check_view("own source, prefetched", b1, 11, &v[0]);
	release_ok(t, b1, pf, 2);
	if (ms_gpu_tier_sync(t, &err))
		t_fatal("ms_gpu_tier_sync: %s", err.msg);
	s = stats_of(t);
	int left = 0;
	for (int w = 0; w < 2; w++)
		for (int x = 0; x < 16; x++)
			left += f.pins[w][x];
	/* 5 experts and 2 strays asked; each pin given back once */
	T_CHECK(left == 0 && !f.bad_release && f.releases == 7,
		"own source: %d pins not given back, %d bad releases, %d in all "
		"(expected 7)", left, f.bad_release, f.releases);
	T_CHECK(f.off_main >= 5, "own source: %d of %d pins given back from the "
		"copies' host function", f.off_main, f.releases);
	T_CHECK(s.misses == 3 && s.prefetch_hits == 2 && s.copies == 5,
		"own source: %llu misses, %llu prefetch hits, %llu copies",
		(unsigned long long)s.misses, (unsigned long long)s.prefetch_hits,
		(unsigned long long)s.copies);
	printf("%-52s %s; %d pins back (%d from the host function), strays "
	       "refused\n", "a source of its own", s.host_mode, f.releases,
	       f.off_main);
	ms_gpu_tier_free(t);
	pthread_mutex_destroy(&f.mu);
	free(f.arena);
	free(cl);
}

/* ---- without CUDA ---------------------------------------------------------------------- */

static void check_stubs(void)
{
	struct ms_err err = { 0 };
	struct ms_gpu_tier *t = (struct ms_gpu_tier *)1;
	struct ms_gpu_tier_opts o = { .vram_bytes = 1 << 20 };
	int rc = ms_gpu_tier_init(&t, NULL, &o, &err);
	T_CHECK(rc == -ENOTSUP && !t && strstr(err.msg, "built without CUDA"),
		"ms_gpu_tier_init without CUDA: %d '%s'", rc, err.msg);
	struct ms_gpu_tier_source src = { .name = "x" };
	t = (struct ms_gpu_tier *)1;
	rc = ms_gpu_tier_init_source(&t, &src, &o, &err);
	T_CHECK(rc == -ENOTSUP && !t, "ms_gpu_tier_init_source without CUDA: %d",
		rc);
	uint64_t sb = 1;
	rc = ms_gpu_tier_slot_bytes(NULL, &sb, &err);
	T_CHECK(rc == -ENOTSUP && !sb, "ms_gpu_tier_slot_bytes without CUDA: %d",
		rc);
	uint16_t e = 0;
	struct ms_gpu_expert v;
	T_CHECK(ms_gpu_tier_acquire(NULL, 1, &e, 1, &v, &err) == -ENOTSUP,
		"acquire");
	T_CHECK(ms_gpu_tier_prefetch(NULL, 1, &e, 1, &err) == -ENOTSUP,
		"prefetch");
	T_CHECK(ms_gpu_tier_release(NULL, 1, &e, 1, &err) == -ENOTSUP,
		"release");
	T_CHECK(ms_gpu_tier_sync(NULL, &err) == -ENOTSUP, "sync");
	struct ms_gpu_tier_stats s;
	T_CHECK(ms_gpu_tier_stats(NULL, &s, &err) == -ENOTSUP, "stats");
	void *p = (void *)1;
	T_CHECK(ms_gpu_host_alloc(&p, 10, &err) == -ENOTSUP && !p, "host alloc");
	ms_gpu_tier_free(NULL);
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "--bench"))
		return bench_gpu_tier_main(argc - 1, argv + 1);
	rng = t_seed();
	if (!ms_gpu_built()) {
		check_stubs();
		if (t_failures)
			return t_done();
		t_skip("built without CUDA (the GPU tier answers -ENOTSUP, "
		       "checked)");
	}
	struct ms_gpu_info g[MS_GPU_MAX];
	struct ms_err err = { 0 };
	int n = ms_gpu_list(g, MS_GPU_MAX, &err);
	if (n < 1)
		t_skip("no GPU: %s", err.msg);
	printf("%s; gpu 0: %s\n", ms_gpu_build_info(), g[0].name);
	dt_watchdog(600, "t_gpu_tier");

	const char *path = dt_model("tiny.gguf", "--preset tiny");
	if (ms_model_open(&model, path, &err))
		t_fatal("%s: %s", path, err.msg);
	if (model->n_layers < 2 || model->n_expert != 16)
		t_fatal("the tiny preset changed: %u layers, %u experts",
			model->n_layers, model->n_expert);
	for (uint32_t l = 0; l < model->n_layers; l++) {
		uint64_t need = 0;
		for (uint32_t k = 0; k < model->layers[l].n_proj; k++)
			need += (model->layers[l].ext[k].bytes + 255) / 256 * 256;
		if (need > slot_bytes)
			slot_bytes = need;
	}
	if (dt_start(&daemon_, "gt", path, NULL))
		t_fatal("moestreamd did not start");
	cstats = dt_connect(daemon_.sock, "t_gpu_tier-stats", &err);
	if (!cstats)
		t_fatal("connect: %s", err.msg);
	if (ms_gpu_ctx_init(&ctx, 0, NULL, &err))
		t_fatal("ms_gpu_ctx_init: %s", err.msg);

	const uint32_t b1 = model->layers[0].block, b2 = model->layers[1].block;
	check_basics(b1);
	check_ffn(b1);
	check_eviction(b1, b2);
	check_pageable(b2);
	check_source(b1, b2);
	check_errors(b1); /* stops the daemon: last */
	printf("worst matvec relative L2 %.2e (bound %.0e)\n", worst_matvec,
	       TOL_MATVEC);

	ms_client_close(cstats);
	ms_gpu_ctx_free(ctx);
	ms_model_free(model);
	return t_done();
}
