/*
 * engine/engine.c - opening a model for decoding: the architecture, the
 * hyper-parameters, the resident tensors (read once into the engine's own
 * memory, never mapped), the KV cache, and the expert source.
 *
 * Routed experts never come from a mapping of the file: either an embedded
 * cache in this process (cache/ and iouring/: O_DIRECT reads into an arena
 * sized from the RAM that is left), or a moestreamd connection whose
 * read-only arena the experts are read from in place. Both hand experts over
 * one by one as they become ready, so the forward pass computes with the
 * first while the others stream.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine_internal.h"
#include "moestream/gpu_tier.h"
#include "moestream/util.h"

static const struct ms_arch *const arches[] = {
	&ms_arch_glm4moe,
	&ms_arch_qwen3moe,
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- hyper-parameters ------------------------------------------------------------ */

static int get_u(const struct ms_gguf *g, const char *arch, const char *key,
		 uint64_t dflt, bool required, uint64_t *out, struct ms_err *err)
{
	char k[160];
	snprintf(k, sizeof(k), "%s.%s", arch, key);
	int rc = ms_gguf_get_u64(g, k, out, err);
	if (rc == -ENOENT && !required) {
		*out = dflt;
		return 0;
	}
	if (rc == -ENOENT)
		return ms_err_set(err, -EINVAL, "%s: %s is missing", g->path, k);
	return rc;
}

static int get_f(const struct ms_gguf *g, const char *arch, const char *key,
		 double dflt, bool required, double *out, struct ms_err *err)
{
	char k[160];
	snprintf(k, sizeof(k), "%s.%s", arch, key);
	int rc = ms_gguf_get_f64(g, k, out, err);
	if (rc == -ENOENT && !required) {
		*out = dflt;
		return 0;
	}
	if (rc == -ENOENT)
		return ms_err_set(err, -EINVAL, "%s: %s is missing", g->path, k);
	return rc;
}

static int load_hparams(struct ms_engine *e, struct ms_err *err)
{
	const struct ms_model *m = e->model;
	const struct ms_gguf *g = m->shards[0];
	const char *a = m->arch;
	uint64_t n_head, n_kv, kl, vl, rot, n_block;
	double eps, base, factor;
	int rc;
	if ((rc = get_u(g, a, "block_count", 0, true, &n_block, err)) ||
	    (rc = get_u(g, a, "attention.head_count", 0, true, &n_head, err)) ||
	    (rc = get_u(g, a, "attention.head_count_kv", n_head, false, &n_kv,
			err)) ||
	    (rc = get_f(g, a, "attention.layer_norm_rms_epsilon", 0, true, &eps,
			err)) ||
	    (rc = get_f(g, a, "rope.freq_base", 10000.0, false, &base, err)) ||
	    (rc = get_f(g, a, "rope.scaling.factor", 0.0, false, &factor, err)))
		return rc;
	if (!m->n_embd || !n_head || n_head > 4096 || !n_kv || n_kv > n_head ||
	    n_head % n_kv)
		return ms_err_set(err, -EINVAL, "%s: %s.embedding_length %" PRIu64
				  ", head_count %" PRIu64 ", head_count_kv %" PRIu64
				  ": not a usable attention shape", g->path, a,
				  m->n_embd, n_head, n_kv);
	if ((rc = get_u(g, a, "attention.key_length", m->n_embd / n_head, false,
			&kl, err)) ||
	    (rc = get_u(g, a, "attention.value_length", kl, false, &vl, err)) ||
	    (rc = get_u(g, a, "rope.dimension_count", kl, false, &rot, err)))
		return rc;
	if (kl != vl || !kl || kl > 1024 || kl % 32 || rot > kl || rot % 2)
		return ms_err_set(err, -EINVAL, "%s: key_length %" PRIu64
				  ", value_length %" PRIu64 ", rope dims %" PRIu64
				  ": this engine needs equal key and value heads "
				  "of a multiple of 32 and an even rope dimension "
				  "no larger", g->path, kl, vl, rot);
	const char *rs;
	char k[160];
	snprintf(k, sizeof(k), "%s.rope.scaling.type", a);
	if (!ms_gguf_get_str(g, k, &rs, NULL) && strcmp(rs, "none") &&
	    strcmp(rs, "linear"))
		return ms_err_set(err, -ENOTSUP, "%s: %s is '%s'; this engine "
				  "runs no RoPE scaling but linear", g->path, k, rs);
	e->n_embd = (int64_t)m->n_embd;
	e->n_head = (int64_t)n_head;
	e->n_head_kv = (int64_t)n_kv;
	e->head_dim = (int64_t)kl;
	e->n_rot = (int64_t)rot;
	e->eps = (float)eps;
	e->rope_base = (float)base;
	e->freq_scale = factor > 0 ? (float)(1.0 / factor) : 1.0f;
	if (n_block <= m->n_nextn || n_block > 100000)
		return ms_err_set(err, -EINVAL, "%s: %s.block_count %" PRIu64
				  " with %u NextN blocks", g->path, a, n_block,
				  m->n_nextn);
	e->n_run = (uint32_t)(n_block - m->n_nextn);
	e->n_ff_exp = (int64_t)m->n_ff_exp;
	return 0;
}

/* ---- resident tensors -------------------------------------------------------------- */

struct want {
	struct ms_rt *rt;
	char name[96];
	int64_t ne0, ne1;   /* expected; ne1 = 0 for a vector */
	bool optional, f32; /* vectors must be f32 */
	uint32_t shard;
	uint64_t idx, off;
};

static int want_add(struct want **w, size_t *n, size_t *cap, struct ms_rt *rt,
		    int64_t ne0, int64_t ne1, bool optional, const char *fmt,
		    uint32_t b)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct want *q = realloc(*w, c * sizeof(*q));
		if (!q)
			return -ENOMEM;
		*w = q;
		*cap = c;
	}
	struct want *x = &(*w)[(*n)++];
	memset(x, 0, sizeof(*x));
	x->rt = rt;
	snprintf(x->name, sizeof(x->name), fmt, b);
	x->ne0 = ne0;
	x->ne1 = ne1;
	x->optional = optional;
	x->f32 = ne1 == 0;
	return 0;
}

int ms_engine_load_weights(struct ms_engine *e, struct ms_err *err)
{
	const struct ms_model *m = e->model;
	int64_t E = e->n_embd, HQ = e->n_head * e->head_dim,
		HK = e->n_head_kv * e->head_dim, D = e->head_dim;
	struct want *w = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	e->blk = calloc(e->n_run, sizeof(*e->blk));
	if (!e->blk)
		return ms_err_set(err, -ENOMEM, "out of memory");

	/* the vocabulary size is the embedding's */
	uint32_t sh;
	uint64_t ix;
	if (ms_model_find_tensor(m, "token_embd.weight", &sh, &ix))
		return ms_err_set(err, -EINVAL, "%s: no token_embd.weight",
				  m->shards[0]->path);
	e->n_vocab = m->shards[sh]->tensors[ix].ne[1];

#define ADD(rt, a, b, opt, fmt, blk)                                          \
	do {                                                                  \
		if ((rc = want_add(&w, &n, &cap, rt, a, b, opt, fmt, blk)))   \
			goto nomem;                                           \
	} while (0)
	ADD(&e->tok_embd, E, e->n_vocab, false, "token_embd.weight", 0);
	ADD(&e->out_norm, E, 0, false, "output_norm.weight", 0);
	ADD(&e->output, E, e->n_vocab, true, "output.weight", 0);
	char fn[96];
	snprintf(fn, sizeof(fn), "blk.%%u.%s.weight", e->arch->ffn_norm);
	for (uint32_t b = 0; b < e->n_run; b++) {
		struct ms_block *k = &e->blk[b];
		k->layer = m->block_layer[b];
		k->moe = k->layer >= 0;
		ADD(&k->attn_norm, E, 0, false, "blk.%u.attn_norm.weight", b);
		ADD(&k->wq, E, HQ, false, "blk.%u.attn_q.weight", b);
		ADD(&k->wk, E, HK, false, "blk.%u.attn_k.weight", b);
		ADD(&k->wv, E, HK, false, "blk.%u.attn_v.weight", b);
		ADD(&k->wo, HQ, E, false, "blk.%u.attn_output.weight", b);
		ADD(&k->bq, HQ, 0, true, "blk.%u.attn_q.bias", b);
		ADD(&k->bk, HK, 0, true, "blk.%u.attn_k.bias", b);
		ADD(&k->bv, HK, 0, true, "blk.%u.attn_v.bias", b);
		ADD(&k->q_norm, D, 0, !e->arch->qk_norm_required,
		    "blk.%u.attn_q_norm.weight", b);
		ADD(&k->k_norm, D, 0, !e->arch->qk_norm_required,
		    "blk.%u.attn_k_norm.weight", b);
		ADD(&k->ffn_norm, E, 0, false, fn, b);
		if (!k->moe) {
			ADD(&k->gate, E, -1, false, "blk.%u.ffn_gate.weight", b);
			ADD(&k->up, E, -1, false, "blk.%u.ffn_up.weight", b);
			ADD(&k->down, -1, E, false, "blk.%u.ffn_down.weight", b);
			continue;
		}
		ADD(&k->gate_inp, E, m->n_expert, false,
		    "blk.%u.ffn_gate_inp.weight", b);
		if (e->arch->probs_bias)
			ADD(&k->probs_b, m->n_expert, 0, false,
			    "blk.%u.exp_probs_b.bias", b);
		if (m->n_expert_shared) {
			int64_t F = e->n_ff_exp * m->n_expert_shared;
			ADD(&k->sh_gate, E, F, false, "blk.%u.ffn_gate_shexp.weight", b);
			ADD(&k->sh_up, E, F, false, "blk.%u.ffn_up_shexp.weight", b);
			ADD(&k->sh_down, F, E, false, "blk.%u.ffn_down_shexp.weight", b);
		}
	}
#undef ADD

	/* find, check, size */
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		struct want *x = &w[i];
		if (ms_model_find_tensor(m, x->name, &x->shard, &x->idx)) {
			if (x->optional)
				continue;
			rc = ms_err_set(err, -EINVAL, "%s: tensor %s is missing (the "
					"%s forward pass needs it)",
					m->shards[0]->path, x->name, e->arch->name);
			goto out;
		}
		const struct ms_gguf_tensor *t = &m->shards[x->shard]->tensors[x->idx];
		bool vec = x->ne1 == 0;
		bool shape = vec ? t->n_dims == 1 && t->ne[0] == x->ne0
				 : t->n_dims == 2 && (x->ne0 < 0 || t->ne[0] == x->ne0) &&
					   (x->ne1 < 0 || t->ne[1] == x->ne1);
		if (!shape) {
			rc = ms_err_set(err, -EINVAL, "%s: tensor %s has shape [%" PRId64
					", %" PRId64 "], expected [%" PRId64 ", %" PRId64
					"]", m->shards[0]->path, x->name, t->ne[0],
					t->ne[1], x->ne0, vec ? (int64_t)1 : x->ne1);
			goto out;
		}
		if (vec ? t->type != MS_TYPE_F32 : !ms_ffn_type_supported(t->type) ||
							   t->ne[0] % 32) {
			rc = ms_err_set(err, -ENOTSUP, "%s: tensor %s is %s: this "
					"engine needs %s", m->shards[0]->path, x->name,
					ms_type_name(t->type),
					vec ? "f32 vectors"
					    : "a type with a CPU kernel and rows of a "
					      "multiple of 32");
			goto out;
		}
		x->rt->type = t->type;
		x->rt->ne[0] = t->ne[0];
		x->rt->ne[1] = vec ? 1 : t->ne[1];
		x->off = total;
		total += (t->size + 63) & ~(uint64_t)63;
		x->rt->data = (const void *)1; /* found; the address comes below */
	}
	/* Every resident byte is read once a token, streamed: on 2 MiB pages
	 * (anonymous THP, asked as the embedded cache asks) a stream crosses
	 * no 4 KiB page boundary, which the CPU's prefetchers stop at, and
	 * takes 512 times fewer TLB misses (glm8's decode: 0 to 16% faster in
	 * four paired runs against 4 KiB pages). */
	e->resident_len = total ? (total + MS_HUGE_2M - 1) & ~(MS_HUGE_2M - 1)
				: MS_HUGE_2M;
	if ((rc = ms_mem_map_anon(e->resident_len, MS_HUGE_2M, &e->resident))) {
		e->resident = NULL;
		rc = ms_err_set(err, rc, "mapping %" PRIu64 " bytes for the resident "
				"tensors: %s", total, strerror(-rc));
		goto out;
	}
	if (ms_mem_thp_on(false))
		madvise(e->resident, e->resident_len, MADV_HUGEPAGE);
	for (size_t i = 0; i < n; i++) {
		struct want *x = &w[i];
		if (!x->rt->data)
			continue;
		const struct ms_gguf *g = m->shards[x->shard];
		const struct ms_gguf_tensor *t = &g->tensors[x->idx];
		uint8_t *dst = (uint8_t *)e->resident + x->off;
		for (uint64_t got = 0; got < t->size;) {
			ssize_t r = pread(g->fd, dst + got, t->size - got,
					  (off_t)(t->file_offset + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				rc = ms_err_set(err, r < 0 ? -errno : -EIO,
						"%s: reading tensor %s: %s", g->path,
						x->name, r < 0 ? strerror(errno)
							       : "file too short");
				goto out;
			}
			got += (uint64_t)r;
		}
		x->rt->data = dst;
	}
	/* each block's next MoE block, for speculation */
	e->first_moe = -1;
	for (uint32_t b = e->n_run; b-- > 0;) {
		e->blk[b].next_moe = e->first_moe;
		if (e->blk[b].moe)
			e->first_moe = (int32_t)b;
	}
	/* tied output: the embedding */
	bool tied = !e->output.data;
	if (tied)
		e->output = e->tok_embd;
	e->info.resident_bytes = total;
	uint64_t embd = 0;
	if (!tied && !ms_type_row_size(e->tok_embd.type, e->n_embd, &embd, NULL))
		embd *= (uint64_t)e->n_vocab;
	e->info.resident_token_bytes = total - embd;
	e->info.resident_huge_bytes = ms_mem_huge_bytes(e->resident);
	if (e->info.resident_huge_bytes > total) /* the last piece's tail */
		e->info.resident_huge_bytes = total;
out:
	free(w);
	return rc;
nomem:
	free(w);
	return ms_err_set(err, -ENOMEM, "out of memory");
}

/* ---- expert source -------------------------------------------------------------------- */

static void cache_cb(void *ctx, uint32_t layer, uint32_t expert, int result,
		     const struct ms_expert_loc *loc)
{
	struct ms_xsrc *xs = ctx;
	pthread_mutex_lock(&xs->mu);
	if (xs->q_n == xs->q_cap) {
		/* never: the queue holds every expert a layer can ask for */
		abort();
	}
	struct ms_arrival *a = &xs->q[(xs->q_head + xs->q_n++) % xs->q_cap];
	a->layer = layer;
	a->expert = expert;
	a->result = result;
	if (loc)
		a->loc = *loc;
	pthread_cond_signal(&xs->cv);
	pthread_mutex_unlock(&xs->mu);
}

int ms_xsrc_open(struct ms_engine *e, struct ms_err *err)
{
	struct ms_xsrc *xs = &e->xs;
	const struct ms_model *m = e->model;
	pthread_mutex_init(&xs->mu, NULL);
	pthread_cond_init(&xs->cv, NULL);
	xs->q_cap = (size_t)m->n_expert * 2 + 16;
	xs->q = calloc(xs->q_cap, sizeof(*xs->q));
	if (!xs->q)
		return ms_err_set(err, -ENOMEM, "out of memory");
	if (e->cfg.socket) {
		int rc = ms_client_connect(&xs->client, e->cfg.socket, "moestream run",
					   err);
		if (rc)
			return rc;
		const struct ms_client_model *cm = ms_client_model(xs->client);
		if (cm->n_expert != m->n_expert || cm->n_block != m->n_block ||
		    strcmp(cm->arch, m->arch))
			return ms_err_set(err, -EINVAL, "moestreamd at %s serves a "
					  "%s model of %u blocks and %u experts; "
					  "this is %s with %u and %u: start it on "
					  "the same file", e->cfg.socket, cm->arch,
					  cm->n_block, cm->n_expert, m->arch,
					  m->n_block, m->n_expert);
		xs->daemon = true;
		snprintf(e->info.cache_mode, sizeof(e->info.cache_mode),
			 "moestreamd at %s (arena %.2f GB)", e->cfg.socket,
			 (double)cm->arena_size / 1e9);
		return 0;
	}
	uint64_t size = e->cfg.cache_size, asked = size;
	/* never more than every expert of the layers run, plus room for the
	 * slots' rounding: the arena is touched whole at start, and memory
	 * past that would be held for nothing (asked for or not) */
	uint64_t all = m->expert_bytes_run + m->expert_bytes_run / 8 + (4ull << 20);
	if (!size) {
		uint64_t left, margin = 256ull << 20;
		ms_host_memory(NULL, &left);
		size = left > margin ? left - margin : 0;
	}
	if (size > all)
		size = all;
	uint64_t min = m->expert_bytes_max * (uint64_t)m->n_expert_used * 2;
	if (size < min)
		return ms_err_set(err, -ENOMEM, "the expert cache would be %.1f MB; "
				  "it needs at least %.1f MB (two layers' experts): "
				  "free memory or give --cache-size",
				  (double)size / 1e6, (double)min / 1e6);
	struct ms_cache_config cc;
	ms_cache_config_default(&cc);
	cc.arena.size = size;
	cc.arena.lock = false; /* a user process: no memlock limit to raise */
	cc.arena.private_anon = true;
	cc.acquire_timeout_ms = 60000;
	int rc = ms_cache_init(&xs->cache, m, &cc, err);
	if (rc)
		return rc;
	const struct ms_arena *ar = ms_cache_arena(xs->cache);
	xs->base = ar->base;
	xs->arena_len = ar->size;
	e->info.cache_bytes = ar->size;
	struct ms_read_info ri;
	ms_cache_get_read_info(xs->cache, &ri);
	char capped[96] = "";
	if (asked > size)
		snprintf(capped, sizeof(capped), "every expert fits (--cache-size "
			 "%.1f MB taken down to %.1f MB); ", (double)asked / 1e6,
			 (double)size / 1e6);
	snprintf(e->info.cache_mode, sizeof(e->info.cache_mode), "%s%s%s", capped,
		 ar->mode,
		 ri.path == MS_READ_STAGING ? "; reads copied in from huge-page "
					      "staging buffers"
					    : "");
	return 0;
}

void ms_xsrc_close(struct ms_xsrc *xs)
{
	if (xs->client)
		ms_client_close(xs->client);
	if (xs->cache)
		ms_cache_free(xs->cache);
	free(xs->q);
	free(xs->desc_layers);
	if (xs->q_cap) {
		pthread_mutex_destroy(&xs->mu);
		pthread_cond_destroy(&xs->cv);
	}
	memset(xs, 0, sizeof(*xs));
}

/* The errors a vanished daemon shows up as. */
static bool gone(int rc)
{
	return rc == -ENOTCONN || rc == -EPIPE || rc == -ECONNRESET ||
	       rc == -ECONNREFUSED;
}

/* Asks the embedded cache for (layer, x): a hit is queued for the
 * taking at once, a miss arrives through cache_cb. 0, or the cache's
 * refusal (nothing queued). */
static int cache_ask(struct ms_xsrc *xs, uint32_t layer, uint32_t x)
{
	struct ms_expert_loc loc;
	int rc = ms_cache_acquire(xs->cache, layer, x, cache_cb, xs, &loc);
	if (rc == 0) {
		xs->hits++;
		cache_cb(xs, layer, x, 0, &loc);
	} else if (rc == -EINPROGRESS) {
		xs->misses++;
		rc = 0;
	}
	return rc;
}

/* Takes the next arrival off the embedded cache's queue, waiting up to
 * timeout_ms (-1: for ever, 0: not at all). 0 or -ETIMEDOUT. */
static int cache_pop(struct ms_xsrc *xs, struct ms_arrival *a, int timeout_ms)
{
	struct timespec dl = { 0 };
	if (timeout_ms > 0) {
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += timeout_ms / 1000;
		dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
	}
	uint64_t t0 = now_ns();
	pthread_mutex_lock(&xs->mu);
	while (!xs->q_n && timeout_ms != 0) {
		if (timeout_ms < 0)
			pthread_cond_wait(&xs->cv, &xs->mu);
		else if (pthread_cond_timedwait(&xs->cv, &xs->mu, &dl) == ETIMEDOUT)
			break;
	}
	int rc = -ETIMEDOUT;
	if (xs->q_n) {
		*a = xs->q[xs->q_head];
		xs->q_head = (xs->q_head + 1) % xs->q_cap;
		xs->q_n--;
		rc = 0;
	}
	pthread_mutex_unlock(&xs->mu);
	xs->wait_ns += now_ns() - t0;
	return rc;
}

int ms_xsrc_acquire(struct ms_engine *e, uint32_t layer, const uint32_t *experts,
		    uint32_t n, struct ms_err *err)
{
	struct ms_xsrc *xs = &e->xs;
	if (xs->daemon) {
		uint16_t ex[256];
		uint32_t done = 0;
		while (done < n) {
			uint32_t k = n - done < 256 ? n - done : 256;
			for (uint32_t i = 0; i < k; i++)
				ex[i] = (uint16_t)experts[done + i];
			uint64_t id;
			int rc = ms_client_acquire_async(
				xs->client, e->model->layers[layer].block, ex, k, &id);
			if (rc)
				return ms_err_set(err, rc, "moestreamd: acquire of "
						  "blk.%u: %s", e->model->layers[layer].block,
						  gone(rc) ? "the daemon went away "
							     "(connection closed)"
							   : strerror(-rc));
			done += k;
		}
		return 0;
	}
	for (uint32_t i = 0; i < n; i++) {
		int rc = cache_ask(xs, layer, experts[i]);
		if (rc)
			return ms_err_set(err, rc, "expert cache: acquire of layer %u "
					  "expert %u: %s", layer, experts[i],
					  strerror(-rc));
	}
	return 0;
}

static void view_from(const struct ms_engine *e, uint32_t layer,
		      const void *const *proj, struct ms_expert_view *v)
{
	const struct ms_moe_layer *L = &e->model->layers[layer];
	memset(v, 0, sizeof(*v));
	v->fused = L->fused;
	v->n_embd = e->n_embd;
	v->n_ff = e->n_ff_exp;
	for (uint32_t j = 0; j < L->n_proj; j++) {
		v->type[j] = L->type[j];
		v->data[j] = proj[j];
	}
}

int ms_xsrc_next(struct ms_engine *e, uint32_t layer, uint32_t *expert,
		 struct ms_expert_view *view, struct ms_err *err)
{
	struct ms_xsrc *xs = &e->xs;
	uint64_t t0 = now_ns();
	if (xs->daemon) {
		struct ms_client_expert got;
		uint64_t id;
		int rc = ms_client_next(xs->client, &got, &id, 120000);
		xs->wait_ns += now_ns() - t0;
		if (rc)
			return ms_err_set(err, rc, "moestreamd: %s",
					  gone(rc) ? "the daemon went away "
						     "(connection closed)"
					  : rc == -ETIMEDOUT ? "no expert arrived in "
							       "120 s"
							     : strerror(-rc));
		if (got.status)
			return ms_err_set(err, got.status, "moestreamd: blk.%u "
					  "expert %u failed: %s", got.block,
					  got.expert, strerror(-got.status));
		*expert = got.expert;
		view_from(e, layer, got.proj, view);
		return 0;
	}
	struct ms_arrival a;
	cache_pop(xs, &a, -1);
	if (a.result)
		return ms_err_set(err, a.result, "expert cache: layer %u expert %u: "
				  "%s", a.layer, a.expert, strerror(-a.result));
	const void *proj[MS_MOE_MAX_PROJ];
	for (uint32_t j = 0; j < a.loc.n_proj && j < MS_MOE_MAX_PROJ; j++)
		proj[j] = xs->base + a.loc.off[j];
	*expert = a.expert;
	view_from(e, a.layer, proj, view);
	return 0;
}

void ms_xsrc_release(struct ms_engine *e, uint32_t layer, uint32_t expert)
{
	struct ms_xsrc *xs = &e->xs;
	if (xs->daemon) {
		uint16_t x = (uint16_t)expert;
		ms_client_release(xs->client, e->model->layers[layer].block, &x, 1);
	} else {
		ms_cache_release(xs->cache, layer, expert);
	}
}

void ms_xsrc_prefetch(struct ms_engine *e, uint32_t layer,
		      const uint32_t *experts, uint32_t n)
{
	struct ms_xsrc *xs = &e->xs;
	if (xs->daemon) {
		uint16_t ex[256];
		uint32_t k = n < 256 ? n : 256;
		for (uint32_t i = 0; i < k; i++)
			ex[i] = (uint16_t)experts[i];
		ms_client_prefetch(xs->client, e->model->layers[layer].block, ex,
				   NULL, k);
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		ms_cache_prefetch(xs->cache, layer, experts[i]);
}

/* ---- the embedded cache as the GPU tier's source --------------------------------- */

const struct ms_client_model *ms_xsrc_describe(struct ms_engine *e)
{
	struct ms_xsrc *xs = &e->xs;
	const struct ms_model *m = e->model;
	if (xs->desc_layers)
		return &xs->desc;
	xs->desc_layers = calloc(m->n_layers ? m->n_layers : 1,
				 sizeof(*xs->desc_layers));
	if (!xs->desc_layers)
		return NULL;
	struct ms_client_model *d = &xs->desc;
	snprintf(d->arch, sizeof(d->arch), "%s", m->arch);
	d->n_block = m->n_block;
	d->n_expert = m->n_expert;
	d->n_expert_used = m->n_expert_used;
	d->n_layers = m->n_layers;
	d->arena_size = xs->arena_len;
	d->layers = xs->desc_layers;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		struct ms_client_layer *C = &xs->desc_layers[l];
		C->block = L->block;
		C->n_proj = L->n_proj < 3 ? L->n_proj : 3;
		for (uint32_t j = 0; j < C->n_proj; j++) {
			C->proj[j] = L->proj[j];
			C->type[j] = L->type[j];
			C->ne[j][0] = L->ne[j][0];
			C->ne[j][1] = L->ne[j][1];
		}
		C->expert_bytes = L->expert_bytes;
		C->nextn = L->nextn;
	}
	return d;
}

/* The MoE layer index of `block`, or -1. */
static int32_t layer_of_block(const struct ms_engine *e, uint32_t block)
{
	return block < e->model->n_block ? e->model->block_layer[block] : -1;
}

static int ts_acquire(void *ctx, uint32_t block, const uint16_t *ex,
		      unsigned n, uint64_t *id)
{
	struct ms_engine *e = ctx;
	struct ms_xsrc *xs = &e->xs;
	int32_t layer = layer_of_block(e, block);
	if (layer < 0)
		return -EINVAL;
	*id = ++xs->tier_req;
	for (unsigned i = 0; i < n; i++) {
		int rc = cache_ask(xs, (uint32_t)layer, ex[i]);
		if (rc) /* this one's answer is its failure */
			cache_cb(xs, (uint32_t)layer, ex[i], rc, NULL);
	}
	return 0;
}

/* The next arrival, as moestreamd's client gives it; the id is the last
 * request's (the cache's arrivals carry none: the tier matches them by
 * block and expert too). */
static int ts_next(void *ctx, struct ms_client_expert *out, uint64_t *id,
		   int timeout_ms)
{
	struct ms_engine *e = ctx;
	struct ms_xsrc *xs = &e->xs;
	struct ms_arrival a;
	int rc = cache_pop(xs, &a, timeout_ms);
	if (rc)
		return rc;
	memset(out, 0, sizeof(*out));
	out->status = a.result;
	out->block = e->model->layers[a.layer].block;
	out->expert = a.expert;
	if (!a.result) {
		out->n_proj = a.loc.n_proj < 3 ? a.loc.n_proj : 3;
		for (uint32_t j = 0; j < out->n_proj; j++) {
			out->proj[j] = xs->base + a.loc.off[j];
			out->len[j] = a.loc.len[j];
		}
	}
	*id = xs->tier_req;
	return 0;
}

/* Called from CUDA's callback thread too: the cache takes pins back from
 * any thread. */
static int ts_release(void *ctx, uint32_t block, const uint16_t *ex,
		      unsigned n)
{
	struct ms_engine *e = ctx;
	int32_t layer = layer_of_block(e, block);
	if (layer < 0)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		ms_cache_release(e->xs.cache, (uint32_t)layer, ex[i]);
	return 0;
}

int ms_xsrc_tier_source(struct ms_engine *e, struct ms_gpu_tier_source *src,
			struct ms_err *err)
{
	struct ms_xsrc *xs = &e->xs;
	if (xs->daemon)
		return ms_err_set(err, -EINVAL, "the GPU tier takes moestreamd's "
				  "own connection, not the engine's");
	const struct ms_client_model *d = ms_xsrc_describe(e);
	if (!d)
		return ms_err_set(err, -ENOMEM, "out of memory");
	memset(src, 0, sizeof(*src));
	src->name = "the expert cache";
	src->ctx = e;
	src->model = d;
	src->arena = xs->base;
	src->arena_len = xs->arena_len;
	src->writable = true;
	src->acquire = ts_acquire;
	src->next = ts_next;
	src->release = ts_release;
	src->release_any_thread = true;
	return 0;
}

/* ---- open / close ------------------------------------------------------------------ */

static int alloc_buffers(struct ms_engine *e, struct ms_err *err)
{
	size_t T = e->cfg.n_batch, E = (size_t)e->n_embd;
	size_t HQ = (size_t)(e->n_head * e->head_dim);
	size_t HK = (size_t)(e->n_head_kv * e->head_dim);
	size_t X = (size_t)e->model->n_expert, K = (size_t)e->n_used;
	size_t nth = (size_t)ms_ffn_pool_threads(e->pool);
#define A(p, n) ((p) = calloc((n) > 0 ? (n) : 1, sizeof(*(p))))
	if (!A(e->x, T * E) || !A(e->h, T * E) || !A(e->q, T * HQ) ||
	    !A(e->k, T * HK) || !A(e->v, T * HK) || !A(e->att, T * HQ) ||
	    !A(e->o, T * (E > HQ ? E : HQ)) || !A(e->moe, T * E) || !A(e->sh, T * E) ||
	    !A(e->ylist, T * (K ? K : 1) * E) || !A(e->xg, T * E) || !A(e->yg, T * E) ||
	    !A(e->rlog, T * (X ? X : 1)) || !A(e->rw, T * (K ? K : 1)) ||
	    !A(e->rsel, T * (K ? K : 1)) || !A(e->need, X ? X : 1) ||
	    !A(e->scores, nth * (size_t)e->cfg.n_ctx) ||
	    !A(e->hint_x, (T < MS_ENG_SPEC_MAX_T ? T : MS_ENG_SPEC_MAX_T) * E) ||
	    !A(e->xlist, X ? X : 1) ||
	    !A(e->hinted, (size_t)e->model->n_layers * X) ||
	    !A(e->has_hint, e->model->n_layers) || !A(e->tseq, T) ||
	    !A(e->tpos, T) || !A(e->seq_pos, e->cfg.n_seq) ||
	    !A(e->out_rows, T) || !A(e->seq_room, e->cfg.n_seq))
		return ms_err_set(err, -ENOMEM, "out of memory for a batch of %zu "
				  "tokens", T);
#undef A
	uint64_t kv = (uint64_t)e->cfg.n_seq * e->n_run * e->cfg.n_ctx * HK *
		      (e->cfg.kv_f32 ? 4 : 2);
	e->info.kv_bytes = 2 * kv; /* in VRAM with cfg.gpu (forward_gpu.c) */
	if (e->cfg.gpu)
		return 0;
	e->k_cache = calloc(kv, 1);
	e->v_cache = calloc(kv, 1);
	if (!e->k_cache || !e->v_cache)
		return ms_err_set(err, -ENOMEM, "out of memory for the KV cache "
				  "(%.1f MB for %u sequences of %u tokens)",
				  2.0 * (double)kv / 1e6, e->cfg.n_seq, e->cfg.n_ctx);
	return 0;
}

int ms_engine_open(struct ms_engine **out, const struct ms_engine_config *cfg,
		   struct ms_err *err)
{
	*out = NULL;
	struct ms_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return ms_err_set(err, -ENOMEM, "out of memory");
	e->cfg = *cfg;
	if (!e->cfg.n_ctx)
		e->cfg.n_ctx = 4096;
	if (!e->cfg.n_batch)
		e->cfg.n_batch = 64;
	if (!e->cfg.n_seq)
		e->cfg.n_seq = 1;
	int rc;
	if (e->cfg.n_ctx > (1u << 22) || e->cfg.n_batch > 4096) {
		rc = ms_err_set(err, -EINVAL, "--ctx %u / --batch %u: at most %u "
				"and 4096", e->cfg.n_ctx, e->cfg.n_batch, 1u << 22);
		goto fail;
	}
	if (e->cfg.n_seq > MS_ENGINE_MAX_SEQ) {
		rc = ms_err_set(err, -EINVAL, "%u sequences: at most %u",
				e->cfg.n_seq, MS_ENGINE_MAX_SEQ);
		goto fail;
	}
	if ((rc = ms_model_open(&e->model, cfg->model, err)))
		goto fail;
	for (size_t i = 0; i < sizeof(arches) / sizeof(arches[0]); i++)
		if (!strcmp(e->model->arch, arches[i]->name))
			e->arch = arches[i];
	if (!e->arch) {
		rc = ms_err_set(err, -ENOTSUP, "%s: architecture '%s' is not one "
				"this engine runs (supported: glm4moe, qwen3moe)",
				cfg->model, e->model->arch);
		goto fail;
	}
	if (!e->model->n_expert || !e->model->n_layers) {
		rc = ms_err_set(err, -ENOTSUP, "%s: no routed experts: this engine "
				"runs MoE models", cfg->model);
		goto fail;
	}
	if ((rc = ms_vocab_load(&e->vocab, e->model->shards[0], err)) ||
	    (rc = load_hparams(e, err)) ||
	    (rc = ms_router_params_from_model(e->model, &e->router, err)))
		goto fail;
	e->n_used = e->router.n_used;
	if ((rc = ms_engine_load_weights(e, err)))
		goto fail;
	if ((uint32_t)e->n_vocab != ms_vocab_n_tokens(e->vocab)) {
		rc = ms_err_set(err, -EINVAL, "%s: token_embd has %" PRId64 " rows "
				"but the vocabulary %u tokens", cfg->model,
				e->n_vocab, ms_vocab_n_tokens(e->vocab));
		goto fail;
	}
	if ((rc = ms_ffn_pool_init(&e->pool, cfg->n_threads, err)))
		goto fail;
	e->opts.pool = e->pool;
	e->q8 = cfg->q8_activations;
	if ((rc = alloc_buffers(e, err)) || (rc = ms_xsrc_open(e, err)) ||
	    (cfg->gpu && (rc = ms_gpu_eng_open(e, err))))
		goto fail;
	snprintf(e->info.arch, sizeof(e->info.arch), "%s", e->model->arch);
	e->info.n_block_run = e->n_run;
	e->info.n_moe_run = e->model->n_layers_run;
	e->info.n_vocab = (uint32_t)e->n_vocab;
	e->info.n_ctx = e->cfg.n_ctx;
	e->info.n_batch = e->cfg.n_batch;
	e->info.n_seq = e->cfg.n_seq;
	e->info.n_expert_used = (uint32_t)e->n_used;
	e->info.n_expert = e->model->n_expert;
	e->info.expert_bytes = e->model->expert_bytes_run;
	*out = e;
	return 0;
fail:
	ms_engine_close(e);
	return rc;
}

void ms_engine_close(struct ms_engine *e)
{
	if (!e)
		return;
	ms_gpu_eng_close(e);
	ms_xsrc_close(&e->xs);
	ms_ffn_pool_free(e->pool);
	free(e->x);
	free(e->h);
	free(e->q);
	free(e->k);
	free(e->v);
	free(e->att);
	free(e->o);
	free(e->moe);
	free(e->sh);
	free(e->ylist);
	free(e->xg);
	free(e->yg);
	free(e->rlog);
	free(e->rw);
	free(e->rsel);
	free(e->need);
	free(e->scores);
	free(e->hint_x);
	free(e->xlist);
	free(e->hinted);
	free(e->has_hint);
	free(e->tseq);
	free(e->tpos);
	free(e->seq_pos);
	free(e->out_rows);
	free(e->seq_room);
	free(e->k_cache);
	free(e->v_cache);
	if (e->resident)
		munmap(e->resident, e->resident_len);
	free(e->blk);
	ms_vocab_free(e->vocab);
	ms_model_free(e->model);
	free(e);
}

const struct ms_vocab *ms_engine_vocab(const struct ms_engine *e)
{
	return e->vocab;
}

const struct ms_engine_info *ms_engine_info(const struct ms_engine *e)
{
	return &e->info;
}

const struct ms_gguf *ms_engine_gguf(const struct ms_engine *e)
{
	return e->model->shards[0];
}

void ms_engine_get_stats(const struct ms_engine *e, struct ms_engine_stats *st)
{
	*st = e->st;
	st->expert_hits = e->xs.hits;
	st->expert_misses = e->xs.misses;
	st->wait_ns = e->xs.wait_ns;
	ms_gpu_eng_stats(e, st);
	if (e->xs.cache) {
		struct ms_cache_stats cs;
		ms_cache_get_stats(e->xs.cache, &cs);
		st->expert_bytes_read = cs.bytes_read;
		st->io_busy_ns = cs.io_busy_ns;
	}
	if (e->xs.client) {
		/* the daemon's own counters: what it served, hit or read */
		char *json = NULL;
		if (!ms_client_stats(e->xs.client, &json, 5000)) {
			cJSON *j = cJSON_Parse(json);
			static const struct {
				const char *key;
				size_t off;
			} f[] = {
				{ "hits", offsetof(struct ms_engine_stats, expert_hits) },
				{ "misses", offsetof(struct ms_engine_stats, expert_misses) },
				{ "bytes_read", offsetof(struct ms_engine_stats,
							 expert_bytes_read) },
				{ "io_busy_ns", offsetof(struct ms_engine_stats, io_busy_ns) },
			};
			for (size_t i = 0; j && i < sizeof(f) / sizeof(f[0]); i++) {
				cJSON *x = cJSON_GetObjectItem(j, f[i].key);
				if (cJSON_IsNumber(x) && x->valuedouble >= 0)
					*(uint64_t *)((char *)st + f[i].off) =
						(uint64_t)x->valuedouble;
			}
			cJSON_Delete(j);
		}
		free(json);
	}
}

int ms_engine_chat_template(const struct ms_engine *e, enum ms_chat_tmpl *out,
			    struct ms_err *err)
{
	const char *j = NULL;
	int rc = ms_gguf_get_str(ms_engine_gguf(e), "tokenizer.chat_template", &j,
				 err);
	if (rc == -ENOENT)
		return ms_err_set(err, rc, "the model has no "
				  "tokenizer.chat_template: give --chat-template "
				  "NAME (qwen3, glm4, glm47)");
	return rc ? rc : ms_chat_detect(j, out, err);
}

void ms_engine_reset(struct ms_engine *e)
{
	memset(e->seq_pos, 0, e->cfg.n_seq * sizeof(*e->seq_pos));
	e->n_first_used = 0;
	memset(e->has_hint, 0, e->model->n_layers * sizeof(*e->has_hint));
}

uint32_t ms_engine_pos(const struct ms_engine *e)
{
	return e->seq_pos[0];
}

void ms_engine_seq_clear(struct ms_engine *e, uint32_t seq)
{
	if (seq < e->cfg.n_seq)
		e->seq_pos[seq] = 0;
}

uint32_t ms_engine_seq_pos(const struct ms_engine *e, uint32_t seq)
{
	return seq < e->cfg.n_seq ? e->seq_pos[seq] : 0;
}

void ms_engine_set_stop_flag(struct ms_engine *e, volatile int *flag)
{
	e->stop = flag;
}
