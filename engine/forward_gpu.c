/*
 * forward_gpu.c - the forward pass on a GPU (`moestream run --device gpu`):
 * forward.c's arithmetic, step for step, on device buffers.
 *
 * What lives where:
 *  - the resident tensors: one copy of the engine's resident mapping in
 *    VRAM, as their quantised bytes (a tensor's device address is its
 *    offset in the mapping); products through ms_gpu_matmul (the fused
 *    matvec up to 8 tokens: with cfg.q8_activations the 8-bit one, inputs
 *    rounded per 32 values as ggml's q8_1, else the exact one; dequantise
 *    + cuBLAS above), norms, RoPE,
 *    attention and the MoE sum through kernels/gpu_ops.cu;
 *  - the KV cache: in VRAM, forward.c's layout and element type (f16 as
 *    llama.cpp's, f32 with kv_f32);
 *  - routed experts: the GPU tier (kernels/gpu_tier.cu: equal VRAM slots,
 *    each the largest expert with every projection 256-byte aligned, an
 *    LRU) in front of the engine's expert source: the embedded cache
 *    (ms_xsrc_tier_source) or, through moestreamd, a connection of the
 *    tier's own. A miss is acquired from the source and copied into a slot
 *    on the tier's copy stream, the compute stream made to wait for it;
 *    the next MoE layer's guessed experts (speculative routing) are copied
 *    in while this layer computes.
 *
 * With room in VRAM for every expert of the layers run, all are brought
 * in at open, pinned for good (all_in), and a one-token step routes on the
 * GPU instead (moe_ffn_dev: ms_gpu_route_topk, the experts through a
 * device table of their slots), queuing the whole step with nothing copied
 * back until the logits; from the second such step it is replayed from a
 * CUDA graph (step_graph). Otherwise:
 *
 * Routing is the host's: the router's logits come back once per MoE layer
 * (with the speculative logits of the next MoE layer, computed from the
 * same residual, in the same copy) and ms_router_select picks the experts
 * exactly as the CPU path does; that copy is the stream's only sync point
 * in a layer.
 *
 * Not here (issue 16): --gpu-layers (a model whose resident tensors do
 * not fit in VRAM is refused with the numbers).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine_internal.h"
#include "moestream/gpu_tier.h"

#define GROUP_MAX 256u /* experts pinned at once (the tier takes 16-bit ids) */

struct ms_gpu_eng {
	struct ms_gpu_ctx *ctx;
	/* the VRAM expert cache: the GPU tier (kernels/gpu_tier.cu), copies
	 * on its copy stream, on the embedded cache or (through moestreamd)
	 * on a connection of its own */
	struct ms_client *tclient;
	struct ms_gpu_tier *tier;
	uint32_t n_slots;
	uint8_t *res;                /* the resident mapping in VRAM */
	void *k_cache, *v_cache;
	/* per batch: [n_batch] each */
	float *x, *h, *q, *k, *v, *att, *o, *sh, *ylist, *xg, *yg, *rlog, *rw,
		*logits;
	/* h prepared for the fused matvec by the norm that wrote it (NULL:
	 * the shape has no prepared form), for batches of up to xq_max */
	void *hq, *attq;             /* and the attention's output's */
	int64_t xq_max;
	int32_t *rows;
	/* the tokens' positions, one block [at0 | base0 | pos | npos] of
	 * n_batch each, uploaded in one copy */
	void *meta;
	int32_t *pos, *npos;
	int64_t *at0, *base0;
	size_t logits_cap;           /* floats */
	/* host scratch, page-locked (copies on the stream without a wait):
	 * each is written only after the stream has passed its last copy */
	void *pin;
	float *p_x;                  /* [n_batch][n_embd] */
	void *h_meta;                /* meta's host side */
	int32_t *h_pos, *h_npos;
	int64_t *h_at0, *h_base0;
	float *h_rlog;               /* [2][n_batch][n_expert] */
	float *p_rw;                 /* [n_batch][n_used] */
	int32_t *h_rows;             /* [2][n_batch][n_used] */
	int32_t *p_out;              /* [n_batch]: the rows whose logits */
	int32_t *p_bad;              /* the device router's flag, copied */
	/* every expert of the layers run in VRAM (room for all: loaded at
	 * open, pinned for good): a one-token step routes on the GPU
	 * (ms_gpu_route_topk) and reads its experts through a device table,
	 * with nothing copied back until the logits */
	bool all;
	const void **tab;            /* device: [n_layers][n_expert][3] */
	struct ms_gpu_expert *proto; /* [n_layers]: a layer's shape and types */
	int32_t *dsel;               /* device: [n_used] */
	int32_t *bad;                /* device: a router saw a non-finite value */
	struct ms_gpu_graph *graph;  /* a one-token step, to replay */
	uint64_t graph_hits;         /* VRAM hits one replay counts */
	uint64_t steps1;             /* one-token steps run eagerly */
	int graph_fails;
	uint64_t dev_hits;           /* experts read through the device table
					(the tier does not see those) */
	/* gpu_profile: a mark between the parts of a one-token step; at:
	 * the marks recorded in this step (0: not timing it), part_of[i]:
	 * the part the time from mark i - 1 to mark i is spent in */
	struct ms_gpu_marks *marks;
	int n_marks, at;
	uint8_t *part_of;
	double *part_ms;             /* [n_marks]: a step's times, read */
	struct ms_gpu_profile prof;
	int64_t *start;              /* [n_expert + 1] */
	struct ms_gpu_expert *views; /* [GROUP_MAX] */
	uint16_t hint16[GROUP_MAX];  /* the next MoE layer's guess */
	uint32_t n_hint, hint_block;
};

/* A tensor's bytes (0 when absent). */
static uint64_t rt_bytes(const struct ms_rt *t)
{
	uint64_t row = 0;
	if (!t->data || ms_type_row_size(t->type, t->ne[0], &row, NULL))
		return 0;
	return row * (uint64_t)t->ne[1];
}

/* gpu_profile: the time since the last mark is part p's, which read
 * `bytes` of weights; a mark now (nothing when this step is not timed;
 * a mark that fails ends the timing of this step). */
static void part_end(struct ms_engine *e, enum ms_gpu_part p, uint64_t bytes)
{
	struct ms_gpu_eng *g = e->gpu;
	if (!g->at)
		return;
	if (g->at >= g->n_marks ||
	    ms_gpu_marks_at(g->ctx, g->marks, g->at, NULL)) {
		g->at = 0;
		return;
	}
	g->part_of[g->at++] = (uint8_t)p;
	g->prof.bytes[p] += bytes;
}

/* The device address of a resident tensor. */
static const void *dev_of(const struct ms_engine *e, const struct ms_rt *t)
{
	if (!t->data)
		return NULL;
	return e->gpu->res + ((const uint8_t *)t->data -
			      (const uint8_t *)e->resident);
}

/* Bytes per token of the position block: at0, base0 (int64), pos, npos
 * (int32). */
#define META_BYTES 24u

static void meta_carve(void *base, size_t T, int64_t **at0, int64_t **base0,
		       int32_t **pos, int32_t **npos)
{
	*at0 = base;
	*base0 = *at0 + T;
	*pos = (int32_t *)(*base0 + T);
	*npos = *pos + T;
}

static int dmalloc(void *p, size_t bytes, uint64_t *total, struct ms_err *err)
{
	int rc = ms_gpu_malloc((void **)p, bytes ? bytes : 4, err);
	if (!rc && total)
		*total += bytes;
	return rc;
}

static int cmp_range(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Once the resident tensors are in VRAM, the host needs only the
 * embedding (a row a token, dequantised here) and the routers' selection
 * biases (ms_router_select runs here): the rest of the mapping's pages go
 * back to the kernel (MADV_DONTNEED: reading them would give zeros, and
 * nothing here does). */
static void drop_host_copy(struct ms_engine *e)
{
	const uint8_t *base = e->resident;
	uint64_t (*keep)[2] = calloc(e->n_run + 2, sizeof(*keep));
	if (!keep)
		return; /* the copy stays: only memory is lost */
	size_t n = 0;
	uint64_t row = 0;
	if (!ms_type_row_size(e->tok_embd.type, e->n_embd, &row, NULL)) {
		keep[n][0] = (uint64_t)((const uint8_t *)e->tok_embd.data - base);
		keep[n][1] = keep[n][0] + row * (uint64_t)e->n_vocab;
		n++;
	}
	for (uint32_t b = 0; b < e->n_run; b++)
		if (e->blk[b].probs_b.data) {
			keep[n][0] = (uint64_t)((const uint8_t *)e->blk[b].probs_b.data -
						base);
			keep[n][1] = keep[n][0] + (uint64_t)e->blk[b].probs_b.ne[0] * 4;
			n++;
		}
	qsort(keep, n, sizeof(*keep), cmp_range);
	const uint64_t pg = 4096;
	uint64_t at = 0, freed = 0;
	for (size_t i = 0; i <= n; i++) {
		uint64_t end = i < n ? keep[i][0] : e->resident_len;
		uint64_t a = (at + pg - 1) / pg * pg, z = end / pg * pg;
		if (z > a && !madvise((uint8_t *)e->resident + a, z - a,
				      MADV_DONTNEED))
			freed += z - a;
		if (i < n && keep[i][1] > at)
			at = keep[i][1];
	}
	free(keep);
	e->info.resident_host_bytes = e->resident_len - freed;
}

static int all_in(struct ms_engine *e, struct ms_err *err);

int ms_gpu_eng_open(struct ms_engine *e, struct ms_err *err)
{
	struct ms_gpu_info info[MS_GPU_MAX];
	int n = ms_gpu_list(info, MS_GPU_MAX, err);
	if (n < 0)
		return n;
	int dev = e->cfg.gpu_device;
	if (dev < 0 || dev >= n)
		return ms_err_set(err, -ENODEV, "GPU %d: this machine has %d "
				  "(0..%d)", dev, n, n - 1);
	struct ms_gpu_eng *g = calloc(1, sizeof(*g));
	if (!g)
		return ms_err_set(err, -ENOMEM, "out of memory");
	e->gpu = g;
	snprintf(e->info.gpu_name, sizeof(e->info.gpu_name), "%s",
		 info[dev].name);
	const struct ms_model *m = e->model;
	size_t T = e->cfg.n_batch, E = (size_t)e->n_embd;
	size_t HQ = (size_t)(e->n_head * e->head_dim);
	size_t HK = (size_t)(e->n_head_kv * e->head_dim);
	size_t X = m->n_expert, K = (size_t)e->n_used;
	uint64_t kv = e->info.kv_bytes / 2; /* each of K and V: alloc_buffers */
	uint64_t work = 0, slot = 0;
	const struct ms_client_model *desc = ms_xsrc_describe(e);
	int rc;
	if (!desc)
		return ms_err_set(err, -ENOMEM, "out of memory");
	/* a slot: the tier's rule (the largest expert, projections aligned) */
	if ((rc = ms_gpu_tier_slot_bytes(desc, &slot, err)))
		return rc;
	/* resident + KV + a margin for the work buffers, cuBLAS and the
	 * workspace must fit before any expert does */
	uint64_t margin = 1536ull << 20;
	uint64_t fixed = e->resident_len + 2 * kv;
	if (fixed + margin + 2 * K * slot > info[dev].total_mem)
		return ms_err_set(err, -ENOMEM, "%s has %.1f GB; the resident "
				  "tensors (%.2f GB), the KV cache (%.2f GB), "
				  "%.1f GB of working room and two layers' "
				  "experts (%.2f GB) need %.2f GB: use --device "
				  "cpu, or a smaller --ctx",
				  info[dev].name, (double)info[dev].total_mem / 1e9,
				  (double)e->resident_len / 1e9, 2.0 * (double)kv / 1e9,
				  (double)margin / 1e9, 2.0 * (double)(K * slot) / 1e9,
				  (double)(fixed + margin + 2 * K * slot) / 1e9);
	if ((rc = ms_gpu_set_device(dev, err)) ||
	    (rc = ms_gpu_ctx_init(&g->ctx, dev, NULL, err)) ||
	    (rc = ms_gpu_ctx_set_q8(g->ctx, e->cfg.q8_activations, err)) ||
	    (e->cfg.gpu_no_pdl && (rc = ms_gpu_ctx_set_pdl(g->ctx, false, err))))
		return rc;
	e->info.gpu_pdl = ms_gpu_ctx_pdl(g->ctx);
	snprintf(e->info.gpu_pdl_note, sizeof(e->info.gpu_pdl_note), "%s",
		 e->cfg.gpu_no_pdl ? "turned off (gpu_no_pdl)"
				   : ms_gpu_ctx_pdl_note(g->ctx));
	if (e->cfg.gpu_profile) {
		/* the step's first mark, 7 a block at most, head and copies */
		g->n_marks = 4 + 7 * (int)e->n_run;
		g->part_of = calloc((size_t)g->n_marks, 1);
		g->part_ms = calloc((size_t)g->n_marks, sizeof(*g->part_ms));
		if (!g->part_of || !g->part_ms)
			return ms_err_set(err, -ENOMEM, "out of memory");
		if ((rc = ms_gpu_marks_new(g->ctx, g->n_marks, &g->marks, err)))
			return rc;
	}
	if ((rc = dmalloc(&g->res, e->resident_len, NULL, err)) ||
	    (rc = ms_gpu_upload(g->res, e->resident, e->resident_len, err)))
		return rc;
	e->info.vram_resident_bytes = e->resident_len;
	drop_host_copy(e);
	if ((rc = dmalloc(&g->k_cache, kv, NULL, err)) ||
	    (rc = dmalloc(&g->v_cache, kv, NULL, err)) ||
	    (rc = ms_gpu_memset(g->k_cache, 0, kv, err)) ||
	    (rc = ms_gpu_memset(g->v_cache, 0, kv, err)))
		return rc;
	e->info.vram_kv_bytes = 2 * kv;
	size_t KX = K ? K : 1, XX = X ? X : 1;
	g->logits_cap = T * (size_t)e->n_vocab;
	if ((rc = dmalloc(&g->x, T * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->h, T * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->q, T * HQ * 4, &work, err)) ||
	    (rc = dmalloc(&g->k, T * HK * 4, &work, err)) ||
	    (rc = dmalloc(&g->v, T * HK * 4, &work, err)) ||
	    (rc = dmalloc(&g->att, T * HQ * 4, &work, err)) ||
	    (rc = dmalloc(&g->o, T * (E > HQ ? E : HQ) * 4, &work, err)) ||
	    (rc = dmalloc(&g->sh, T * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->ylist, T * KX * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->xg, T * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->yg, T * (KX > 1 ? KX : 1) * E * 4, &work, err)) ||
	    (rc = dmalloc(&g->rlog, 2 * T * XX * 4, &work, err)) ||
	    (rc = dmalloc(&g->rw, T * KX * 4, &work, err)) ||
	    (rc = dmalloc(&g->logits, g->logits_cap * 4, &work, err)) ||
	    (rc = dmalloc(&g->rows, 2 * T * KX * 4, &work, err)) ||
	    (rc = dmalloc(&g->meta, T * META_BYTES, &work, err)) ||
	    (rc = dmalloc(&g->dsel, T * KX * 4, &work, err)) ||
	    (rc = dmalloc(&g->bad, 4, &work, err)) ||
	    (rc = ms_gpu_memset(g->bad, 0, 4, err)))
		return rc;
	g->xq_max = T < MS_GPU_MATVEC_MAX_TOKENS ? (int64_t)T
						  : MS_GPU_MATVEC_MAX_TOKENS;
	size_t hq_bytes = ms_gpu_xq_bytes((int64_t)E, g->xq_max);
	size_t aq_bytes = ms_gpu_xq_bytes((int64_t)HQ, g->xq_max);
	if ((hq_bytes && (rc = dmalloc(&g->hq, hq_bytes, &work, err))) ||
	    (aq_bytes && e->head_dim % 32 == 0 &&
	     (rc = dmalloc(&g->attq, aq_bytes, &work, err))))
		return rc;
	/* the host's side of the copies, page-locked, in one piece */
	size_t off[8], at = 0;
	const size_t want_pin[8] = { T * E * 4, T * META_BYTES, 2 * T * XX * 4,
				     T * KX * 4, 2 * T * KX * 4, T * 4, 4, 0 };
	for (int i = 0; i < 8; i++) {
		off[i] = at;
		at += (want_pin[i] + 63) / 64 * 64;
	}
	if ((rc = ms_gpu_host_alloc(&g->pin, at, err)))
		return rc;
	uint8_t *pin = g->pin;
	memset(pin, 0, at);
	g->p_x = (float *)(pin + off[0]);
	g->h_meta = pin + off[1];
	g->h_rlog = (float *)(pin + off[2]);
	g->p_rw = (float *)(pin + off[3]);
	g->h_rows = (int32_t *)(pin + off[4]);
	g->p_out = (int32_t *)(pin + off[5]);
	g->p_bad = (int32_t *)(pin + off[6]);
	meta_carve(g->meta, T, &g->at0, &g->base0, &g->pos, &g->npos);
	meta_carve(g->h_meta, T, &g->h_at0, &g->h_base0, &g->h_pos, &g->h_npos);
	g->start = calloc(XX + 1, sizeof(*g->start));
	g->views = calloc(GROUP_MAX, sizeof(*g->views));
	g->proto = calloc(m->n_layers ? m->n_layers : 1, sizeof(*g->proto));
	if (!g->start || !g->views || !g->proto)
		return ms_err_set(err, -ENOMEM, "out of memory");

	/* the VRAM expert cache: what is asked, else what is left */
	uint64_t used = fixed + work, want = e->cfg.vram_experts;
	uint64_t left = info[dev].total_mem > used + margin
				? info[dev].total_mem - used - margin
				: 0;
	if (!want) {
		want = left;
		uint64_t all = (uint64_t)m->n_layers * X * slot;
		if (want > all)
			want = all;
	}
	uint64_t n_slots = slot ? want / slot : 0;
	if (n_slots < 2 * K)
		return ms_err_set(err, -ENOMEM, "the VRAM expert cache would hold "
				  "%llu experts of %.1f MB; it needs at least %zu "
				  "(two layers' worth): give --vram-experts %.0fM "
				  "or more (%.2f GB of VRAM is left after the "
				  "resident tensors and the KV cache)",
				  (unsigned long long)n_slots, (double)slot / 1e6,
				  2 * K, ceil((double)(2 * K * slot) / 1048576.0),
				  (double)left / 1e9);
	/* the tier (the same slots): on a connection of its own to
	 * moestreamd, else on the embedded cache */
	struct ms_gpu_tier_opts to = { .device = dev, .vram_bytes = want,
				       .stream = ms_gpu_ctx_stream(g->ctx) };
	struct ms_gpu_tier_stats ts;
	if (e->cfg.socket) {
		if ((rc = ms_client_connect(&g->tclient, e->cfg.socket,
					    "moestream gpu tier", err)) ||
		    (rc = ms_gpu_tier_init(&g->tier, g->tclient, &to, err)))
			return rc;
	} else {
		struct ms_gpu_tier_source src;
		if ((rc = ms_xsrc_tier_source(e, &src, err)) ||
		    (rc = ms_gpu_tier_init_source(&g->tier, &src, &to, err)))
			return rc;
	}
	if ((rc = ms_gpu_tier_stats(g->tier, &ts, err)))
		return rc;
	g->n_slots = ts.slots;
	snprintf(e->info.vram_copy_mode, sizeof(e->info.vram_copy_mode), "%s",
		 ts.host_mode);
	e->info.vram_expert_bytes = ts.vram_bytes;
	e->info.vram_expert_slots = ts.slots;
	return all_in(e, err);
}

void ms_gpu_eng_close(struct ms_engine *e)
{
	struct ms_gpu_eng *g = e->gpu;
	if (!g)
		return;
	ms_gpu_graph_free(g->graph);
	ms_gpu_marks_free(g->marks);
	free(g->part_of);
	free(g->part_ms);
	ms_gpu_tier_free(g->tier);
	if (g->tclient)
		ms_client_close(g->tclient);
	ms_gpu_ctx_free(g->ctx);
	void *dev[] = { g->res,	 g->k_cache, g->v_cache, g->x,	   g->h,
			g->q,	 g->k,	     g->v,	 g->att,   g->o,
			g->sh,	 g->ylist,   g->xg,	 g->yg,	   g->rlog,
			g->rw,	 g->logits,  g->rows,	 g->meta,  (void *)g->tab,
			g->dsel, g->bad,     g->hq,	 g->attq };
	for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
		ms_gpu_free(dev[i]);
	ms_gpu_host_free(g->pin);
	free(g->start);
	free(g->views);
	free(g->proto);
	free(g);
	e->gpu = NULL;
}

void ms_gpu_eng_stats(const struct ms_engine *e, struct ms_engine_stats *st)
{
	if (!e->gpu)
		return;
	st->vram_hits = e->gpu->dev_hits;
	struct ms_gpu_tier_stats ts;
	if (e->gpu->tier && !ms_gpu_tier_stats(e->gpu->tier, &ts, NULL)) {
		st->vram_hits += ts.hits;
		st->vram_misses = ts.misses;
		st->vram_copied_bytes = ts.bytes_copied;
		st->vram_copy_ns = (uint64_t)(ts.copy_ms * 1e6);
	}
}

/* ---- the VRAM expert cache --------------------------------------------------------- */

/* With room in VRAM for every expert of the layers run (and a matvec
 * kernel for their types), brings them all in through the tier now,
 * pinned for good, and writes the device table a one-token step reads
 * them through: its routing then stays on the GPU. Otherwise nothing (the
 * tier fills on demand). */
static int all_in(struct ms_engine *e, struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	const struct ms_model *m = e->model;
	uint32_t X = m->n_expert, K = (uint32_t)e->n_used, n_moe = 0;
	for (uint32_t b = 0; b < e->n_run; b++) {
		const struct ms_block *k = &e->blk[b];
		if (!k->moe)
			continue;
		n_moe++;
		const struct ms_moe_layer *L = &m->layers[k->layer];
		for (uint32_t j = 0; j < L->n_proj; j++)
			if (!ms_gpu_matvec_supported(L->type[j]))
				return 0;
	}
	if (!n_moe || !K || (uint64_t)g->n_slots < (uint64_t)n_moe * X)
		return 0;
	size_t n_tab = (size_t)m->n_layers * X * 3;
	const void **h = calloc(n_tab, sizeof(*h));
	uint16_t *ex = malloc(K * sizeof(*ex));
	int rc = 0;
	if (!h || !ex) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if (!e->cfg.quiet)
		fprintf(stderr, "moestream: VRAM holds every expert of the %u MoE "
			"layers run (%u x %u): loading them; one-token steps "
			"route on the GPU\n", n_moe, n_moe, X);
	for (uint32_t b = 0; b < e->n_run && !rc; b++) {
		const struct ms_block *k = &e->blk[b];
		if (!k->moe)
			continue;
		uint32_t layer = (uint32_t)k->layer, block = m->layers[layer].block;
		/* a layer's worth at a time: the source's pins go back as the
		 * copies finish (the host cache may hold only two layers') */
		for (uint32_t x0 = 0; x0 < X && !rc; x0 += K) {
			uint32_t n = X - x0 < K ? X - x0 : K;
			for (uint32_t i = 0; i < n; i++)
				ex[i] = (uint16_t)(x0 + i);
			if ((rc = ms_gpu_tier_acquire(g->tier, block, ex, n,
						      g->views, err)) ||
			    (rc = ms_gpu_tier_sync(g->tier, err)))
				break;
			for (uint32_t i = 0; i < n; i++) {
				const struct ms_gpu_expert *v = &g->views[i];
				const void **t = h + ((size_t)layer * X + x0 + i) * 3;
				uint64_t half = 0;
				if (v->fused &&
				    (rc = ms_type_row_size(v->type[0], v->n_embd,
							   &half, NULL))) {
					rc = ms_err_set(err, rc, "block %u: the "
							"gate_up rows' size", block);
					break;
				}
				t[0] = v->data[0];
				t[1] = v->fused ? (const uint8_t *)v->data[0] +
							  half * (uint64_t)v->n_ff
						: v->data[1];
				t[2] = v->data[v->fused ? 1 : 2];
				if (x0 + i == 0) {
					g->proto[layer] = *v;
					/* every expert loaded here, none
					 * copied again while g->all: the
					 * matvec may read them before its
					 * PDL wait */
					g->proto[layer].resident = true;
				}
			}
		}
	}
	if (!rc && !(rc = dmalloc((void *)&g->tab, n_tab * sizeof(*h), NULL, err)) &&
	    !(rc = ms_gpu_upload((void *)g->tab, h, n_tab * sizeof(*h), err))) {
		g->all = true;
		e->info.vram_all_experts = true;
	}
out:
	free(h);
	free(ex);
	return rc;
}

/* Device views of experts ex[0..n) of MoE layer `layer` (n <= the slots,
 * at most GROUP_MAX), pinned until experts_out: the tier copies the misses
 * in on its copy stream and makes the compute stream wait for them; a slot
 * is reused only once the compute stream has passed the kernels that read
 * its last expert (ms_gpu_tier_release records where that is). */
static int experts_in(struct ms_engine *e, uint32_t layer, const uint32_t *ex,
		      uint32_t n, struct ms_gpu_expert *v, struct ms_err *err)
{
	uint16_t x16[GROUP_MAX];
	for (uint32_t i = 0; i < n; i++)
		x16[i] = (uint16_t)ex[i];
	return ms_gpu_tier_acquire(e->gpu->tier, e->model->layers[layer].block,
				   x16, n, v, err);
}

/* Unpins what experts_in pinned, once the kernels reading them are
 * queued. */
static int experts_out(struct ms_engine *e, uint32_t layer, const uint32_t *ex,
		       uint32_t n, struct ms_err *err)
{
	uint16_t x16[GROUP_MAX];
	for (uint32_t i = 0; i < n; i++)
		x16[i] = (uint16_t)ex[i];
	return ms_gpu_tier_release(e->gpu->tier, e->model->layers[layer].block,
				   x16, n, err);
}

/* ---- one batch ------------------------------------------------------------------------ */

/* y = w . x for T tokens; xq (may be NULL): x already prepared, as
 * ms_gpu_matmul_n takes it. */
static int matmul(struct ms_engine *e, const struct ms_rt *w, const float *x,
		  const void *xq, float *y, int64_t T, struct ms_err *err)
{
	const struct ms_gpu_mm one = { w->type, dev_of(e, w), w->ne[1], y, true };
	return ms_gpu_matmul_n(e->gpu->ctx, &one, 1, w->ne[0], x, xq, T, err);
}

/* Whether one token's router logits come from our kernel
 * (ms_gpu_route_gemv_topk, ms_gpu_router_logits: each logit a double sum
 * rounded to f32) rather than cuBLAS: an f32 router, 16-byte aligned, and
 * not turned off (gpu_router_cublas). Both routings of a one-token step,
 * on the device and on the host, take the same, so their logits are the
 * same bits. */
static bool own_router(const struct ms_engine *e, const struct ms_rt *w)
{
	return w->type == MS_TYPE_F32 && (uintptr_t)dev_of(e, w) % 16 == 0 &&
	       w->ne[0] == e->n_embd && !e->cfg.gpu_router_cublas;
}

/* The router w's logits of T tokens x into out: ms_gpu_router_logits
 * where one token's are our kernel's (own_router), else the product. */
static int router_logits(struct ms_engine *e, const struct ms_rt *w,
			 const float *x, float *out, int64_t T,
			 struct ms_err *err)
{
	if (T == 1 && own_router(e, w))
		return ms_gpu_router_logits(e->gpu->ctx, dev_of(e, w),
					    e->n_embd, (uint32_t)w->ne[1], x,
					    out, err);
	return matmul(e, w, x, NULL, out, T, err);
}

/* h prepared (g->hq), for the norm writing h to write and the products
 * reading it to read: NULL where the batch is too big for the fused
 * matvec (or the shape has no prepared form). */
static void *hq_of(const struct ms_gpu_eng *g, int64_t T)
{
	return T <= g->xq_max ? g->hq : NULL;
}

/* hq_in: h's prepared form, when the norm that wrote h wrote it. */
static int attention(struct ms_engine *e, uint32_t b, int64_t T,
		     const void *hq_in, struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	const struct ms_block *k = &e->blk[b];
	int64_t E = e->n_embd, H = e->n_head, D = e->head_dim;
	int64_t HK = e->n_head_kv * D;
	size_t el = e->cfg.kv_f32 ? 4 : 2;
	size_t boff = ms_eng_kv_at(e, 0, b, 0) * el;
	uint8_t *kc = (uint8_t *)g->k_cache + boff, *vc = (uint8_t *)g->v_cache + boff;
	int rc;
	/* q, k and v of the same h: one preparation of h for the three */
	const struct ms_gpu_mm qkv[3] = {
		{ k->wq.type, dev_of(e, &k->wq), k->wq.ne[1], g->q, true },
		{ k->wk.type, dev_of(e, &k->wk), k->wk.ne[1], g->k, true },
		{ k->wv.type, dev_of(e, &k->wv), k->wv.ne[1], g->v, true },
	};
	if ((rc = ms_gpu_matmul_n(c, qkv, 3, k->wq.ne[0], g->h, hq_in, T, err)))
		return rc;
	/* the biases, q and k's norms and RoPE, the KV stores: one launch */
	const struct ms_gpu_qkv post = {
		.q = g->q, .k = g->k, .v = g->v,
		.bq = dev_of(e, &k->bq), .bk = dev_of(e, &k->bk),
		.bv = dev_of(e, &k->bv),
		.q_norm = dev_of(e, &k->q_norm), .k_norm = dev_of(e, &k->k_norm),
		.n_head = H, .n_head_kv = e->n_head_kv, .head_dim = D,
		.n_rot = e->n_rot, .pos = g->pos, .eps = e->eps,
		.base = e->rope_base, .freq_scale = e->freq_scale,
		.k_cache = kc, .v_cache = vc, .at = g->at0,
		.f16 = !e->cfg.kv_f32,
	};
	if ((rc = ms_gpu_qkv_post(c, &post, T, err)))
		return rc;
	part_end(e, MS_GPU_PART_ATTN_IN,
		 rt_bytes(&k->attn_norm) + rt_bytes(&k->wq) + rt_bytes(&k->wk) +
			 rt_bytes(&k->wv) + rt_bytes(&k->bq) + rt_bytes(&k->bk) +
			 rt_bytes(&k->bv) + rt_bytes(&k->q_norm) +
			 rt_bytes(&k->k_norm));
	/* its output also prepared for wo, where h is (T small enough) */
	void *attq = hq_of(g, T) ? g->attq : NULL;
	if ((rc = ms_gpu_attention_q(c, g->q, kc, vc, !e->cfg.kv_f32, g->base0,
				     g->npos, HK, H, e->n_head_kv, D,
				     1.0f / sqrtf((float)D), T, g->att, attq,
				     err)))
		return rc;
	part_end(e, MS_GPU_PART_ATTN, 0);
	/* the residual, and the FFN's norm of it in the same launch */
	if ((rc = matmul(e, &k->wo, g->att, attq, g->o, T, err)) ||
	    (rc = ms_gpu_add_rms_norm(c, g->x, g->o, dev_of(e, &k->ffn_norm), g->h,
				      hq_of(g, T), E, T, e->eps, err)))
		return rc;
	part_end(e, MS_GPU_PART_ATTN_OUT,
		 rt_bytes(&k->wo) + rt_bytes(&k->ffn_norm));
	return 0;
}

/* The end of a block's FFN: its output into the residual (the MoE's
 * combine, or + o), and with `next` (the next block's attention norm) that
 * norm of the new residual into h, in the same launch. */
static int ffn_out(struct ms_engine *e, const float *next, int64_t T,
		   const float *sh, bool moe, struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	int64_t E = e->n_embd, K = e->n_used;
	int rc;
	if (moe)
		rc = next ? ms_gpu_moe_combine_norm(c, g->x, g->ylist, g->rw, sh,
						    E, T, K, next, e->eps, g->h,
						    hq_of(g, T), err)
			  : ms_gpu_moe_combine(c, g->x, g->ylist, g->rw, sh, E,
					       T, K, err);
	else
		rc = next ? ms_gpu_add_rms_norm(c, g->x, g->o, next, g->h,
						hq_of(g, T), E, T, e->eps, err)
			  : ms_gpu_add(c, g->x, g->o, T * E, err);
	if (!rc)
		part_end(e, MS_GPU_PART_FFN_OUT, 0);
	return rc;
}

/* A shared expert's bytes. */
static uint64_t shared_bytes(const struct ms_block *k)
{
	return rt_bytes(&k->sh_gate) + rt_bytes(&k->sh_up) + rt_bytes(&k->sh_down);
}

static struct ms_gpu_expert dense_view(const struct ms_engine *e,
				       const struct ms_rt *gate,
				       const struct ms_rt *up,
				       const struct ms_rt *down)
{
	struct ms_gpu_expert v;
	memset(&v, 0, sizeof(v));
	v.n_embd = e->n_embd;
	v.n_ff = gate->ne[1];
	v.type[0] = gate->type;
	v.type[1] = up->type;
	v.type[2] = down->type;
	v.data[0] = dev_of(e, gate);
	v.data[1] = dev_of(e, up);
	v.data[2] = dev_of(e, down);
	v.resident = true; /* uploaded at open, never written */
	return v;
}

/* The next MoE layer's guessed experts into VRAM through the tier (a
 * hint: what fails is counted by the tier, not an error). */
static void hint_copies(struct ms_gpu_eng *g)
{
	if (g->n_hint)
		ms_gpu_tier_prefetch(g->tier, g->hint_block, g->hint16, g->n_hint,
				     NULL);
	g->n_hint = 0;
}

/* One token's MoE block with every expert in VRAM (g->all): the router
 * and its top-k (one launch, ms_gpu_route_gemv_topk, for an f32 router;
 * else the product, then ms_gpu_route_topk), the shared expert, the
 * chosen experts through the device table and the sum, all queued with
 * nothing copied back; what the host path would have done with the choice
 * (hints, speculation's score) has nothing to do here: no expert is
 * copied. */
static int moe_ffn_dev(struct ms_engine *e, uint32_t b, const float *next,
		       struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	const struct ms_block *k = &e->blk[b];
	uint32_t layer = (uint32_t)k->layer, X = e->model->n_expert;
	int64_t K = e->n_used;
	bool shared = k->sh_gate.data != NULL;
	int rc;
	if (own_router(e, &k->gate_inp)) {
		/* the product and the choice in one launch, the router's
		 * weights read under the kernel before (PDL) */
		rc = ms_gpu_route_gemv_topk(c, &e->router,
					    dev_of(e, &k->gate_inp), e->n_embd,
					    g->h, dev_of(e, &k->probs_b),
					    g->rlog, g->dsel, g->rw, g->bad,
					    err);
		e->info.gpu_router_fused = true;
	} else if (!(rc = matmul(e, &k->gate_inp, g->h, NULL, g->rlog, 1,
				 err))) {
		rc = ms_gpu_route_topk(c, &e->router, g->rlog,
				       dev_of(e, &k->probs_b), 1, g->dsel,
				       g->rw, g->bad, err);
	}
	if (rc)
		return rc;
	part_end(e, MS_GPU_PART_ROUTER,
		 rt_bytes(&k->gate_inp) + rt_bytes(&k->probs_b));
	if (shared) {
		struct ms_gpu_expert v = dense_view(e, &k->sh_gate, &k->sh_up,
						    &k->sh_down);
		if ((rc = ms_gpu_experts_ffn_xq(c, &v, 1, g->h, hq_of(g, 1),
						g->sh, 1, err)))
			return rc;
		part_end(e, MS_GPU_PART_SHARED, shared_bytes(k));
	}
	/* with a shared expert between the top-k and these, sel is
	 * complete before their first launch can start (PDL): it loads its
	 * first weights under the shared expert's down */
	if ((rc = ms_gpu_experts_ffn_sel(c, &g->proto[layer],
					 g->tab + (size_t)layer * X * 3, g->dsel,
					 (int)K, g->h, hq_of(g, 1), g->ylist,
					 shared, err)))
		return rc;
	part_end(e, MS_GPU_PART_EXPERTS,
		 (uint64_t)K * e->model->layers[layer].expert_bytes);
	g->dev_hits += (uint64_t)K;
	return ffn_out(e, next, 1, shared ? g->sh : NULL, true, err);
}

static int moe_ffn(struct ms_engine *e, uint32_t b, int64_t T,
		   const float *next, struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	const struct ms_block *k = &e->blk[b];
	uint32_t layer = (uint32_t)k->layer, X = e->model->n_expert;
	int64_t E = e->n_embd, K = e->n_used;
	int rc;
	/* this layer's router on h, and (speculation) the next MoE layer's on
	 * the same residual normed as it would norm it: one copy back */
	if (g->all && T == 1)
		return moe_ffn_dev(e, b, next, err);
	int32_t nb = k->next_moe;
	/* (with every expert in VRAM a guess has nothing to fetch) */
	bool spec = !e->cfg.no_speculate && !g->all && nb >= 0 &&
			    T <= MS_ENG_SPEC_MAX_T;
	g->n_hint = 0;
	if ((rc = router_logits(e, &k->gate_inp, g->h, g->rlog, T, err)))
		return rc;
	if (spec) {
		const struct ms_block *n = &e->blk[nb];
		if ((rc = ms_gpu_rms_norm(c, g->x, dev_of(e, &n->ffn_norm), g->xg,
					  E, T, e->eps, err)) ||
		    (rc = router_logits(e, &n->gate_inp, g->xg, g->rlog + T * X,
					T, err)))
			return rc;
	}
	if ((rc = ms_gpu_download_async(c, g->h_rlog, g->rlog,
					(size_t)(spec ? 2 : 1) * T * X *
						sizeof(float),
					err)) ||
	    (rc = ms_gpu_stream_sync(ms_gpu_ctx_stream(c), err)))
		return rc;
	if ((rc = ms_eng_route(e, b, g->h_rlog, T, err)))
		return rc;
	if (spec) {
		const struct ms_block *n = &e->blk[nb];
		uint32_t nh = ms_eng_hint(e, (uint32_t)nb, g->h_rlog + T * X, T);
		/* their copies into VRAM start once this layer's work is
		 * queued (below): the GPU computes while the host waits for
		 * the daemon */
		g->n_hint = nh < GROUP_MAX ? nh : GROUP_MAX;
		g->hint_block = e->model->layers[n->layer].block;
		for (uint32_t i = 0; i < g->n_hint; i++)
			g->hint16[i] = (uint16_t)e->xlist[i];
	}
	uint32_t *ex = e->xlist, n = ms_eng_needed(e, b, T);
	part_end(e, MS_GPU_PART_ROUTER,
		 rt_bytes(&k->gate_inp) + rt_bytes(&k->probs_b) +
			 (spec ? rt_bytes(&e->blk[nb].ffn_norm) +
					 rt_bytes(&e->blk[nb].gate_inp)
			       : 0));
	/* the shared expert first: it runs while the misses are copied in */
	bool shared = k->sh_gate.data != NULL;
	if (shared) {
		struct ms_gpu_expert v = dense_view(e, &k->sh_gate, &k->sh_up,
						    &k->sh_down);
		if ((rc = ms_gpu_experts_ffn_xq(c, &v, 1, g->h, hq_of(g, T),
						g->sh, T, err)))
			return rc;
		part_end(e, MS_GPU_PART_SHARED, shared_bytes(k));
	}
	memcpy(g->p_rw, e->rw, (size_t)(T * K) * sizeof(float));
	if ((rc = ms_gpu_upload_async(c, g->rw, g->p_rw,
				      (size_t)(T * K) * sizeof(float), err)))
		return rc;
	uint32_t group = g->n_slots < GROUP_MAX ? g->n_slots : GROUP_MAX;
	struct ms_gpu_expert *v = g->views;
	if (T == 1) {
		/* one call: every expert on the same input, in routing order
		 * (one token's experts are distinct: ex is rsel) */
		if ((rc = experts_in(e, layer, ex, n, v, err)))
			return rc;
		rc = ms_gpu_experts_ffn_xq(c, v, (int)n, g->h, hq_of(g, 1),
					   g->ylist, 1, err);
		int r2 = experts_out(e, layer, ex, n, rc ? NULL : err);
		if (!rc && !r2)
			part_end(e, MS_GPU_PART_EXPERTS,
				 (uint64_t)n * e->model->layers[layer].expert_bytes);
		if (rc || (rc = r2) ||
		    (rc = ffn_out(e, next, T, shared ? g->sh : NULL, true, err)))
			return rc;
		hint_copies(g);
		return 0;
	}
	/* per expert: its tokens gathered, computed, scattered to their
	 * routing slots; the index lists (routing slots, then the same
	 * entries' tokens) in one upload */
	int32_t *hs = g->h_rows, *ht = g->h_rows + T * K;
	int64_t at = 0;
	int64_t *start = g->start;
	for (uint32_t i = 0; i < n; i++) {
		start[i] = at;
		for (int64_t t = 0; t < T; t++)
			for (int64_t j = 0; j < K; j++)
				if (e->rsel[t * K + j] == ex[i]) {
					hs[at] = (int32_t)(t * K + j);
					ht[at++] = (int32_t)t;
				}
	}
	start[n] = at;
	if ((rc = ms_gpu_upload_async(c, g->rows, g->h_rows,
				      (size_t)(2 * T * K) * sizeof(int32_t), err)))
		return rc;
	const int32_t *ds = g->rows, *dt = g->rows + T * K;
	/* a batch may route to more experts than VRAM holds: a group at a
	 * time */
	for (uint32_t i0 = 0; i0 < n; i0 += group) {
		uint32_t m = n - i0 < group ? n - i0 : group;
		if ((rc = experts_in(e, layer, ex + i0, m, v, err)))
			return rc;
		for (uint32_t i = i0; i < i0 + m && !rc; i++) {
			int64_t cnt = start[i + 1] - start[i];
			if ((rc = ms_gpu_gather_rows(c, g->h, dt + start[i], cnt, E,
						     g->xg, err)) ||
			    (rc = ms_gpu_experts_ffn(c, &v[i - i0], 1, g->xg, 0,
						     g->yg, cnt, MS_GPU_FFN_AUTO,
						     err)))
				break;
			rc = ms_gpu_scatter_rows(c, g->yg, ds + start[i], cnt, E,
						 g->ylist, err);
		}
		int r2 = experts_out(e, layer, ex + i0, m, rc ? NULL : err);
		if (rc || (rc = r2))
			return rc;
	}
	if ((rc = ffn_out(e, next, T, shared ? g->sh : NULL, true, err)))
		return rc;
	hint_copies(g);
	return 0;
}

/* Queues one batch of T tokens on the stream, the host's inputs already in
 * the page-locked scratch (p_x, h_meta, p_out): their copies in, every
 * block, the logits of the n_out rows p_out names, and (every expert in
 * VRAM) the device router's flag back. Nothing here waits for the device
 * when every expert is in VRAM and T == 1: that is what a graph captures
 * (ms_gpu_eval_batch). */
static int queue_batch(struct ms_engine *e, int64_t T, int64_t n_out,
		       struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	int64_t E = e->n_embd;
	int rc;
	/* gpu_profile: one-token steps are timed, part by part */
	g->at = 0;
	if (g->marks && T == 1 && !ms_gpu_marks_at(c, g->marks, 0, NULL))
		g->at = 1;
	if ((rc = ms_gpu_upload_async(c, g->x, g->p_x,
				      (size_t)(T * E) * sizeof(float), err)) ||
	    (rc = ms_gpu_upload_async(c, g->meta, g->h_meta,
				      (size_t)e->cfg.n_batch * META_BYTES, err)))
		return rc;
	part_end(e, MS_GPU_PART_IO, 0);
	if (!g->all)
		ms_eng_hint_first(e);
	/* the logits of every row, in order (a decode step's one): the
	 * output norm is the last block's next norm, no rows gathered */
	bool direct = n_out == T;
	for (int64_t r = 0; direct && r < n_out; r++)
		direct = g->p_out[r] == r;
	/* each residual update is launched with the norm that follows it
	 * (attention's + o with the FFN's norm, an FFN's output with the next
	 * block's attention norm, or the output norm): h holds the normed
	 * residual at the top of every block but the first */
	for (uint32_t b = 0; b < e->n_run; b++) {
		if (e->stop && *e->stop)
			return ms_err_set(err, -EINTR, "stopped");
		const struct ms_block *k = &e->blk[b];
		const float *next = b + 1 < e->n_run
					    ? dev_of(e, &e->blk[b + 1].attn_norm)
				    : direct ? dev_of(e, &e->out_norm)
					     : NULL;
		if ((!b && (rc = ms_gpu_rms_norm(c, g->x, dev_of(e, &k->attn_norm),
						 g->h, E, T, e->eps, err))) ||
		    (rc = attention(e, b, T, b ? hq_of(g, T) : NULL, err)))
			return rc;
		if (k->moe) {
			rc = moe_ffn(e, b, T, next, err);
		} else {
			struct ms_gpu_expert v = dense_view(e, &k->gate, &k->up,
							    &k->down);
			rc = ms_gpu_experts_ffn_xq(c, &v, 1, g->h, hq_of(g, T),
						   g->o, T, err);
			if (!rc) {
				part_end(e, MS_GPU_PART_DENSE,
					 rt_bytes(&k->gate) + rt_bytes(&k->up) +
						 rt_bytes(&k->down));
				rc = ffn_out(e, next, T, NULL, false, err);
			}
		}
		if (rc)
			return rc;
	}
	/* g->rows is the stream's to overwrite (ordered after the kernels
	 * that read it); p_out is not the rows' scratch, whose copy may still
	 * be in flight */
	if (direct &&
	    (rc = matmul(e, &e->output, g->h, hq_of(g, T), g->logits, T, err)))
		return rc;
	if (n_out && !direct &&
	    ((rc = ms_gpu_upload_async(c, g->rows, g->p_out, (size_t)n_out * 4,
				       err)) ||
	     (rc = ms_gpu_gather_rows(c, g->x, g->rows, n_out, E, g->xg, err)) ||
	     (rc = ms_gpu_rms_norm(c, g->xg, dev_of(e, &e->out_norm), g->h, E,
				   n_out, e->eps, err)) ||
	     (rc = matmul(e, &e->output, g->h, NULL, g->logits, n_out, err))))
		return rc;
	if (n_out)
		part_end(e, MS_GPU_PART_HEAD,
			 rt_bytes(&e->out_norm) + rt_bytes(&e->output));
	if (g->all && (rc = ms_gpu_download_async(c, g->p_bad, g->bad, 4, err)))
		return rc;
	part_end(e, MS_GPU_PART_IO, 0);
	return 0;
}

/* gpu_profile: after a timed step's sync, its parts' times. */
static void parts_read(struct ms_gpu_eng *g)
{
	if (g->at < 2)
		return;
	/* all of a step's times or none of them */
	bool ok = true;
	for (int i = 1; ok && i < g->at; i++)
		ok = !ms_gpu_marks_ms(g->marks, i - 1, i, &g->part_ms[i], NULL);
	if (ok) {
		for (int i = 1; i < g->at; i++)
			g->prof.ms[g->part_of[i]] += g->part_ms[i];
		g->prof.steps++;
	}
	g->at = 0;
}

/* A one-token step with every expert in VRAM, from the graph: captured on
 * the second such step (the first sizes the workspace), replayed after.
 * *done false: run it eagerly instead (no graph to be had; said once). */
static int step_graph(struct ms_engine *e, bool *done, struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	*done = false;
	int rc;
	if (g->graph) {
		rc = ms_gpu_graph_launch(c, g->graph, err);
		if (rc == -ESTALE) {
			ms_gpu_graph_free(g->graph);
			g->graph = NULL;
			return 0; /* eagerly now, captured again next step */
		}
		if (!rc) {
			g->dev_hits += g->graph_hits;
			*done = true;
		}
		return rc;
	}
	if (g->graph_fails >= 3 || !g->steps1)
		return 0;
	uint64_t h0 = g->dev_hits;
	struct ms_err why = { 0 };
	if (!(rc = ms_gpu_capture_begin(c, &why))) {
		int qr = queue_batch(e, 1, 1, &why);
		rc = ms_gpu_capture_end(c, qr ? NULL : &g->graph, qr ? NULL : &why);
		rc = qr ? qr : rc;
	}
	uint64_t added = g->dev_hits - h0;
	g->dev_hits = h0;
	if ((rc || !g->graph) && ms_gpu_ctx_pdl(c)) {
		/* a runtime that cannot capture PDL launches (CUDA before
		 * 12.3): the graph saves more than PDL does, so PDL goes and
		 * the next step captures again */
		fprintf(stderr, "moestream: no CUDA graph of the decode step "
			"with PDL launches (%s): PDL turned off, the graph "
			"tried again without\n",
			why.msg[0] ? why.msg : "capture failed");
		ms_gpu_ctx_set_pdl(c, false, &why);
		e->info.gpu_pdl = false;
		snprintf(e->info.gpu_pdl_note, sizeof(e->info.gpu_pdl_note),
			 "turned off: a CUDA graph of PDL launches could not be "
			 "made");
		return 0;
	}
	if (rc || !g->graph) {
		if (!g->graph_fails++)
			fprintf(stderr, "moestream: no CUDA graph of the decode step "
				"(%s): its kernels are launched one by one\n",
				why.msg[0] ? why.msg : "capture failed");
		return 0;
	}
	g->graph_hits = added;
	e->info.gpu_graph = true;
	e->info.gpu_graph_nodes = (uint32_t)ms_gpu_graph_nodes(g->graph);
	if ((rc = ms_gpu_graph_launch(c, g->graph, err)))
		return rc;
	g->dev_hits += added;
	*done = true;
	return 0;
}

int ms_gpu_eval_batch(struct ms_engine *e, const int32_t *ids, int64_t T,
		      float *logits, const int64_t *out_rows, int64_t n_out,
		      struct ms_err *err)
{
	struct ms_gpu_eng *g = e->gpu;
	struct ms_gpu_ctx *c = g->ctx;
	int64_t E = e->n_embd;
	int rc = ms_eng_embed(e, ids, T, err);
	if (rc)
		return rc;
	if (!logits)
		n_out = 0;
	/* the stream has passed every copy from the host scratch: each batch
	 * ends with a sync */
	for (int64_t t = 0; t < T; t++) {
		uint32_t s = e->tseq[t], p = e->tpos[t];
		g->h_pos[t] = (int32_t)p;
		g->h_npos[t] = (int32_t)p + 1;
		g->h_base0[t] = (int64_t)ms_eng_kv_at(e, s, 0, 0);
		g->h_at0[t] = (int64_t)ms_eng_kv_at(e, s, 0, p);
	}
	memcpy(g->p_x, e->x, (size_t)(T * E) * sizeof(float));
	for (int64_t r = 0; r < n_out; r++)
		g->p_out[r] = (int32_t)out_rows[r];
	bool done = false;
	if (g->all && T == 1 && n_out == 1 && !e->cfg.gpu_no_graph &&
	    !e->cfg.gpu_profile && (rc = step_graph(e, &done, err)))
		return rc;
	if (!done) {
		if ((rc = queue_batch(e, T, n_out, err)))
			return rc;
		if (T == 1)
			g->steps1++;
	}
	e->st.tokens += (uint64_t)T;
	if ((rc = ms_gpu_stream_sync(ms_gpu_ctx_stream(c), err)))
		return rc;
	parts_read(g);
	if (g->all && *g->p_bad) {
		*g->p_bad = 0;
		ms_gpu_memset(g->bad, 0, 4, NULL);
		return ms_err_set(err, -EINVAL, "router (on the GPU): a logit or "
				  "selection bias is not finite (NaN or "
				  "infinity)");
	}
	if (!n_out)
		return 0;
	return ms_gpu_download(logits, g->logits,
			       (size_t)n_out * (size_t)e->n_vocab * sizeof(float),
			       err);
}

const char *ms_gpu_part_name(enum ms_gpu_part p)
{
	static const char *const names[MS_GPU_PART_COUNT] = {
		"io",	   "attn_in", "attn",	 "attn_out", "router",
		"shared",  "experts", "dense",	 "ffn_out",  "head",
	};
	return (unsigned)p < MS_GPU_PART_COUNT ? names[p] : "?";
}

int ms_engine_gpu_profile(const struct ms_engine *e, struct ms_gpu_profile *out,
			  struct ms_err *err)
{
	if (!e->gpu || !e->gpu->marks)
		return ms_err_set(err, -EINVAL, "the engine is not a profiling "
				  "GPU one (--device gpu with gpu_profile)");
	*out = e->gpu->prof;
	return 0;
}
