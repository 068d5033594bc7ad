/*
 * gpu_nocuda.c - the GPU entry points of a build without CUDA: each answers
 * -ENOTSUP with "built without CUDA", so that no GPU feature degrades
 * silently into something else.
 */
#include <errno.h>

#include "moestream/kernels.h"

bool ms_gpu_built(void)
{
	return false;
}

const char *ms_gpu_build_info(void)
{
	return "built without CUDA (no nvcc at build time, or NO_CUDA=1; install "
	       "the CUDA toolkit or set CUDA_HOME, then rebuild)";
}

int ms_gpu_list(struct ms_gpu_info *out, int max, struct ms_err *err)
{
	(void)out;
	(void)max;
	return ms_err_set(err, -ENOTSUP, "%s", ms_gpu_build_info());
}

/* ---- GPU block (kernels/gpu_*.cu): every entry point, answering as the
 * header says a build without CUDA does ---------------------------------- */

static int no_cuda(struct ms_err *err)
{
	return ms_err_set(err, -ENOTSUP, "%s", ms_gpu_build_info());
}

int ms_gpu_set_device(int device, struct ms_err *err)
{
	(void)device;
	return no_cuda(err);
}

int ms_gpu_malloc(void **dev, size_t bytes, struct ms_err *err)
{
	(void)bytes;
	if (dev)
		*dev = NULL;
	return no_cuda(err);
}

void ms_gpu_free(void *dev)
{
	(void)dev;
}

int ms_gpu_upload(void *dev, const void *host, size_t bytes,
		  struct ms_err *err)
{
	(void)dev;
	(void)host;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_download(void *host, const void *dev, size_t bytes,
		    struct ms_err *err)
{
	(void)host;
	(void)dev;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_capture_begin(struct ms_gpu_ctx *c, struct ms_err *err)
{
	(void)c;
	return no_cuda(err);
}

int ms_gpu_capture_end(struct ms_gpu_ctx *c, struct ms_gpu_graph **out,
		       struct ms_err *err)
{
	(void)c;
	if (out)
		*out = NULL;
	return no_cuda(err);
}

int ms_gpu_graph_launch(struct ms_gpu_ctx *c, struct ms_gpu_graph *g,
			struct ms_err *err)
{
	(void)c;
	(void)g;
	return no_cuda(err);
}

void ms_gpu_graph_free(struct ms_gpu_graph *g)
{
	(void)g;
}

int ms_gpu_marks_new(struct ms_gpu_ctx *c, int n, struct ms_gpu_marks **out,
		     struct ms_err *err)
{
	(void)c;
	(void)n;
	if (out)
		*out = NULL;
	return no_cuda(err);
}

int ms_gpu_marks_at(struct ms_gpu_ctx *c, struct ms_gpu_marks *m, int i,
		    struct ms_err *err)
{
	(void)c;
	(void)m;
	(void)i;
	return no_cuda(err);
}

int ms_gpu_marks_ms(const struct ms_gpu_marks *m, int i, int j, double *ms,
		    struct ms_err *err)
{
	(void)m;
	(void)i;
	(void)j;
	if (ms)
		*ms = 0;
	return no_cuda(err);
}

void ms_gpu_marks_free(struct ms_gpu_marks *m)
{
	(void)m;
}

size_t ms_gpu_graph_nodes(const struct ms_gpu_graph *g)
{
	(void)g;
	return 0;
}

int ms_gpu_upload_async(struct ms_gpu_ctx *c, void *dev, const void *host,
			size_t bytes, struct ms_err *err)
{
	(void)c;
	(void)dev;
	(void)host;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_download_async(struct ms_gpu_ctx *c, void *host, const void *dev,
			  size_t bytes, struct ms_err *err)
{
	(void)c;
	(void)host;
	(void)dev;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_memset(void *dev, int byte, size_t bytes, struct ms_err *err)
{
	(void)dev;
	(void)byte;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_stream_sync(void *stream, struct ms_err *err)
{
	(void)stream;
	return no_cuda(err);
}

bool ms_gpu_dequant_supported(uint32_t type)
{
	(void)type;
	return false;
}

int ms_gpu_dequant(uint32_t type, const void *src_dev, void *dst_dev,
		   int64_t n, bool f16, void *stream, struct ms_err *err)
{
	(void)type;
	(void)src_dev;
	(void)dst_dev;
	(void)n;
	(void)f16;
	(void)stream;
	return no_cuda(err);
}

bool ms_gpu_matvec_supported(uint32_t type)
{
	(void)type;
	return false;
}

const char *ms_gpu_ffn_path_name(enum ms_gpu_ffn_path p)
{
	switch (p) {
	case MS_GPU_FFN_AUTO:
		return "auto";
	case MS_GPU_FFN_MATVEC:
		return "matvec";
	case MS_GPU_FFN_CUBLAS:
		return "cublas";
	case MS_GPU_FFN_MATVEC_Q8:
		return "matvec-q8";
	default:
		return "invalid";
	}
}

int ms_gpu_ctx_init(struct ms_gpu_ctx **out, int device, void *stream,
		    struct ms_err *err)
{
	(void)device;
	(void)stream;
	if (out)
		*out = NULL;
	return no_cuda(err);
}

void ms_gpu_ctx_free(struct ms_gpu_ctx *c)
{
	(void)c;
}

void *ms_gpu_ctx_stream(const struct ms_gpu_ctx *c)
{
	(void)c;
	return NULL;
}

int ms_gpu_ctx_device(const struct ms_gpu_ctx *c)
{
	(void)c;
	return -1;
}

int ms_gpu_ctx_set_q8(struct ms_gpu_ctx *c, bool q8, struct ms_err *err)
{
	(void)c;
	(void)q8;
	return no_cuda(err);
}

int ms_gpu_ctx_set_split(struct ms_gpu_ctx *c, int split, struct ms_err *err)
{
	(void)c;
	(void)split;
	return no_cuda(err);
}

int ms_gpu_ctx_set_chunk(struct ms_gpu_ctx *c, int bytes, struct ms_err *err)
{
	(void)c;
	(void)bytes;
	return no_cuda(err);
}

int ms_gpu_ctx_set_pdl(struct ms_gpu_ctx *c, bool on, struct ms_err *err)
{
	(void)c;
	(void)on;
	return no_cuda(err);
}

bool ms_gpu_ctx_pdl(const struct ms_gpu_ctx *c)
{
	(void)c;
	return false;
}

const char *ms_gpu_ctx_pdl_note(const struct ms_gpu_ctx *c)
{
	(void)c;
	return "built without CUDA";
}

int ms_gpu_experts_ffn(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
		       int n_experts, const float *x_dev, int64_t x_stride,
		       float *y_dev, int64_t n_tokens,
		       enum ms_gpu_ffn_path path, struct ms_err *err)
{
	(void)c;
	(void)e;
	(void)n_experts;
	(void)x_dev;
	(void)x_stride;
	(void)y_dev;
	(void)n_tokens;
	(void)path;
	return no_cuda(err);
}

int ms_gpu_experts_ffn_sel(struct ms_gpu_ctx *c,
			   const struct ms_gpu_expert *proto,
			   const void *const *tab, const int32_t *sel, int n,
			   const float *x_dev, const void *xq, float *y_dev,
			   bool sel_before, struct ms_err *err)
{
	(void)c;
	(void)proto;
	(void)tab;
	(void)sel;
	(void)n;
	(void)x_dev;
	(void)xq;
	(void)y_dev;
	(void)sel_before;
	return no_cuda(err);
}

int ms_gpu_experts_ffn_xq(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
			  int n_experts, const float *x_dev, const void *xq,
			  float *y_dev, int64_t n_tokens, struct ms_err *err)
{
	(void)c;
	(void)e;
	(void)n_experts;
	(void)x_dev;
	(void)xq;
	(void)y_dev;
	(void)n_tokens;
	return no_cuda(err);
}

int ms_gpu_expert_ffn(struct ms_gpu_ctx *c, const struct ms_gpu_expert *e,
		      const float *x_dev, float *y_dev, int64_t n_tokens,
		      enum ms_gpu_ffn_path path, struct ms_err *err)
{
	(void)c;
	(void)e;
	(void)x_dev;
	(void)y_dev;
	(void)n_tokens;
	(void)path;
	return no_cuda(err);
}

int ms_gpu_add_bias_n(struct ms_gpu_ctx *c, const struct ms_gpu_bias *b, int n,
		      int64_t T, struct ms_err *err)
{
	(void)c;
	(void)b;
	(void)n;
	(void)T;
	return no_cuda(err);
}

int ms_gpu_rope_neox_qk(struct ms_gpu_ctx *c, float *q, const float *q_norm,
			int64_t n_head, float *k, const float *k_norm,
			int64_t n_head_kv, const int32_t *pos, float eps,
			int64_t head_dim, int64_t n_rot, int64_t T, float base,
			float freq_scale, struct ms_err *err)
{
	(void)c;
	(void)q;
	(void)q_norm;
	(void)n_head;
	(void)k;
	(void)k_norm;
	(void)n_head_kv;
	(void)pos;
	(void)eps;
	(void)head_dim;
	(void)n_rot;
	(void)T;
	(void)base;
	(void)freq_scale;
	return no_cuda(err);
}

int ms_gpu_kv_store_kv(struct ms_gpu_ctx *c, const float *k, void *k_cache,
		       const float *v, void *v_cache, const int64_t *at,
		       int64_t n, int64_t T, bool f16, struct ms_err *err)
{
	(void)c;
	(void)k;
	(void)k_cache;
	(void)v;
	(void)v_cache;
	(void)at;
	(void)n;
	(void)T;
	(void)f16;
	return no_cuda(err);
}

size_t ms_gpu_xq_bytes(int64_t n, int64_t T)
{
	(void)n;
	(void)T;
	return 0;
}

int ms_gpu_matmul_n(struct ms_gpu_ctx *c, const struct ms_gpu_mm *mm, int n,
		    int64_t n_in, const float *x_dev, const void *xq,
		    int64_t n_tokens, struct ms_err *err)
{
	(void)c;
	(void)mm;
	(void)n;
	(void)n_in;
	(void)x_dev;
	(void)xq;
	(void)n_tokens;
	return no_cuda(err);
}

int ms_gpu_matmul(struct ms_gpu_ctx *c, uint32_t type, const void *w_dev,
		  int64_t n_in, int64_t n_out, const float *x_dev, float *y_dev,
		  int64_t n_tokens, struct ms_err *err)
{
	(void)c;
	(void)type;
	(void)w_dev;
	(void)n_in;
	(void)n_out;
	(void)x_dev;
	(void)y_dev;
	(void)n_tokens;
	return no_cuda(err);
}

int ms_gpu_dense(struct ms_gpu_ctx *c, uint32_t w_type, const void *w_dev,
		 int64_t rows, int64_t cols, const float *x_dev, float *y_dev,
		 int64_t n_tokens, struct ms_err *err)
{
	(void)c;
	(void)w_type;
	(void)w_dev;
	(void)rows;
	(void)cols;
	(void)x_dev;
	(void)y_dev;
	(void)n_tokens;
	return no_cuda(err);
}

int ms_gpu_expert_ffn_host(const struct ms_expert_view *v, const float *x,
			   float *y, int64_t n_tokens,
			   enum ms_gpu_ffn_path path, int device,
			   struct ms_err *err)
{
	(void)v;
	(void)x;
	(void)y;
	(void)n_tokens;
	(void)path;
	(void)device;
	return no_cuda(err);
}

int ms_gpu_fill_blocks(uint32_t type, void *dev, uint64_t bytes,
		       uint64_t seed, void *stream, struct ms_err *err)
{
	(void)type;
	(void)dev;
	(void)bytes;
	(void)seed;
	(void)stream;
	return no_cuda(err);
}

int ms_gpu_ctx_mark(struct ms_gpu_ctx *c, struct ms_err *err)
{
	(void)c;
	return no_cuda(err);
}

int ms_gpu_ctx_elapsed(struct ms_gpu_ctx *c, double *ms, struct ms_err *err)
{
	(void)c;
	if (ms)
		*ms = 0;
	return no_cuda(err);
}

int ms_gpu_copy_bandwidth(struct ms_gpu_ctx *c, uint64_t bytes, int reps,
			  double *best_gbps, double *median_gbps,
			  struct ms_err *err)
{
	(void)c;
	(void)bytes;
	(void)reps;
	if (best_gbps)
		*best_gbps = 0;
	if (median_gbps)
		*median_gbps = 0;
	return no_cuda(err);
}

/* kernels/gpu_ops.cu */

int ms_gpu_rms_norm(struct ms_gpu_ctx *c, const float *x, const float *w,
		    float *y, int64_t n, int64_t T, float eps,
		    struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)w;
	(void)y;
	(void)n;
	(void)T;
	(void)eps;
	return no_cuda(err);
}

int ms_gpu_add_rms_norm(struct ms_gpu_ctx *c, float *x, const float *a,
			const float *w, float *y, void *yq, int64_t n,
			int64_t T, float eps, struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)a;
	(void)w;
	(void)y;
	(void)yq;
	(void)n;
	(void)T;
	(void)eps;
	return no_cuda(err);
}

int ms_gpu_add(struct ms_gpu_ctx *c, float *x, const float *a, int64_t n,
	       struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)a;
	(void)n;
	return no_cuda(err);
}

int ms_gpu_add_bias(struct ms_gpu_ctx *c, float *x, const float *b,
		    int64_t n, int64_t T, struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)b;
	(void)n;
	(void)T;
	return no_cuda(err);
}

int ms_gpu_rope_neox(struct ms_gpu_ctx *c, float *x, const int32_t *pos,
		     const float *norm_w, float eps, int64_t n_head,
		     int64_t head_dim, int64_t n_rot, int64_t T, float base,
		     float freq_scale, struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)pos;
	(void)norm_w;
	(void)eps;
	(void)n_head;
	(void)head_dim;
	(void)n_rot;
	(void)T;
	(void)base;
	(void)freq_scale;
	return no_cuda(err);
}

int ms_gpu_kv_store(struct ms_gpu_ctx *c, const float *src, void *cache,
		    const int64_t *at, int64_t n, int64_t T, bool f16,
		    struct ms_err *err)
{
	(void)c;
	(void)src;
	(void)cache;
	(void)at;
	(void)n;
	(void)T;
	(void)f16;
	return no_cuda(err);
}

int ms_gpu_attention(struct ms_gpu_ctx *c, const float *q,
		     const void *k_cache, const void *v_cache, bool f16,
		     const int64_t *base, const int32_t *n_pos, int64_t stride,
		     int64_t n_head, int64_t n_head_kv, int64_t D, float scale,
		     int64_t T, float *out, struct ms_err *err)
{
	(void)c;
	(void)q;
	(void)k_cache;
	(void)v_cache;
	(void)f16;
	(void)base;
	(void)n_pos;
	(void)stride;
	(void)n_head;
	(void)n_head_kv;
	(void)D;
	(void)scale;
	(void)T;
	(void)out;
	return no_cuda(err);
}

int ms_gpu_qkv_post(struct ms_gpu_ctx *c, const struct ms_gpu_qkv *q,
		    int64_t T, struct ms_err *err)
{
	(void)c;
	(void)q;
	(void)T;
	return no_cuda(err);
}

int ms_gpu_attention_q(struct ms_gpu_ctx *c, const float *q,
		       const void *k_cache, const void *v_cache, bool f16,
		       const int64_t *base, const int32_t *n_pos, int64_t stride,
		       int64_t n_head, int64_t n_head_kv, int64_t D, float scale,
		       int64_t T, float *out, void *out_q, struct ms_err *err)
{
	(void)out_q;
	return ms_gpu_attention(c, q, k_cache, v_cache, f16, base, n_pos, stride,
				n_head, n_head_kv, D, scale, T, out, err);
}

int ms_gpu_moe_combine_norm(struct ms_gpu_ctx *c, float *x, const float *y,
			    const float *w, const float *sh, int64_t E,
			    int64_t T, int64_t K, const float *norm_w,
			    float eps, float *h, void *hq, struct ms_err *err)
{
	(void)hq;
	(void)c;
	(void)x;
	(void)y;
	(void)w;
	(void)sh;
	(void)E;
	(void)T;
	(void)K;
	(void)norm_w;
	(void)eps;
	(void)h;
	return no_cuda(err);
}

int ms_gpu_moe_combine(struct ms_gpu_ctx *c, float *x, const float *y,
		       const float *w, const float *sh, int64_t E, int64_t T,
		       int64_t K, struct ms_err *err)
{
	(void)c;
	(void)x;
	(void)y;
	(void)w;
	(void)sh;
	(void)E;
	(void)T;
	(void)K;
	return no_cuda(err);
}

int ms_gpu_gather_rows(struct ms_gpu_ctx *c, const float *src,
		       const int32_t *rows, int64_t n, int64_t E, float *dst,
		       struct ms_err *err)
{
	(void)c;
	(void)src;
	(void)rows;
	(void)n;
	(void)E;
	(void)dst;
	return no_cuda(err);
}

int ms_gpu_scatter_rows(struct ms_gpu_ctx *c, const float *src,
			const int32_t *rows, int64_t n, int64_t E, float *dst,
			struct ms_err *err)
{
	(void)c;
	(void)src;
	(void)rows;
	(void)n;
	(void)E;
	(void)dst;
	return no_cuda(err);
}

int ms_gpu_route_topk(struct ms_gpu_ctx *c, const struct ms_router_params *p,
		      const float *logits, const float *probs_b, int64_t T,
		      int32_t *sel, float *w, int32_t *bad, struct ms_err *err)
{
	(void)c;
	(void)p;
	(void)logits;
	(void)probs_b;
	(void)T;
	(void)sel;
	(void)w;
	(void)bad;
	return no_cuda(err);
}

int ms_gpu_route_gemv_topk(struct ms_gpu_ctx *c,
			   const struct ms_router_params *p, const float *w_dev,
			   int64_t n_embd, const float *x,
			   const float *probs_b, float *logits, int32_t *sel,
			   float *w, int32_t *bad, struct ms_err *err)
{
	(void)c;
	(void)p;
	(void)w_dev;
	(void)n_embd;
	(void)x;
	(void)probs_b;
	(void)logits;
	(void)sel;
	(void)w;
	(void)bad;
	return no_cuda(err);
}

int ms_gpu_router_logits(struct ms_gpu_ctx *c, const float *w_dev,
			 int64_t n_embd, uint32_t n_expert, const float *x,
			 float *logits, struct ms_err *err)
{
	(void)c;
	(void)w_dev;
	(void)n_embd;
	(void)n_expert;
	(void)x;
	(void)logits;
	return no_cuda(err);
}

/* ---- the GPU tier (kernels/gpu_tier.cu, gpu_tier.h): every entry point
 * answers -ENOTSUP "built without CUDA" -------------------------------- */

#include <string.h>

#include "moestream/gpu_tier.h"

int ms_gpu_tier_init(struct ms_gpu_tier **out, struct ms_client *c,
		     const struct ms_gpu_tier_opts *opts, struct ms_err *err)
{
	(void)c;
	(void)opts;
	if (out)
		*out = NULL;
	return no_cuda(err);
}

int ms_gpu_tier_init_source(struct ms_gpu_tier **out,
			    const struct ms_gpu_tier_source *src,
			    const struct ms_gpu_tier_opts *opts,
			    struct ms_err *err)
{
	(void)src;
	(void)opts;
	if (out)
		*out = NULL;
	return no_cuda(err);
}

int ms_gpu_tier_slot_bytes(const struct ms_client_model *m, uint64_t *bytes,
			   struct ms_err *err)
{
	(void)m;
	if (bytes)
		*bytes = 0;
	return no_cuda(err);
}

void ms_gpu_tier_free(struct ms_gpu_tier *t)
{
	(void)t;
}

int ms_gpu_tier_acquire(struct ms_gpu_tier *t, uint32_t block,
			const uint16_t *experts, unsigned n,
			struct ms_gpu_expert *out, struct ms_err *err)
{
	(void)t;
	(void)block;
	(void)experts;
	(void)n;
	(void)out;
	return no_cuda(err);
}

int ms_gpu_tier_prefetch(struct ms_gpu_tier *t, uint32_t block,
			 const uint16_t *experts, unsigned n,
			 struct ms_err *err)
{
	(void)t;
	(void)block;
	(void)experts;
	(void)n;
	return no_cuda(err);
}

int ms_gpu_tier_release(struct ms_gpu_tier *t, uint32_t block,
			const uint16_t *experts, unsigned n,
			struct ms_err *err)
{
	(void)t;
	(void)block;
	(void)experts;
	(void)n;
	return no_cuda(err);
}

int ms_gpu_tier_ffn(struct ms_gpu_tier *t, struct ms_gpu_ctx *ctx,
		    uint32_t block, const uint16_t *experts, unsigned n,
		    const float *x_dev, int64_t x_stride, float *y_dev,
		    int64_t n_tokens, enum ms_gpu_ffn_path path,
		    struct ms_err *err)
{
	(void)t;
	(void)ctx;
	(void)block;
	(void)experts;
	(void)n;
	(void)x_dev;
	(void)x_stride;
	(void)y_dev;
	(void)n_tokens;
	(void)path;
	return no_cuda(err);
}

int ms_gpu_tier_sync(struct ms_gpu_tier *t, struct ms_err *err)
{
	(void)t;
	return no_cuda(err);
}

int ms_gpu_tier_flush(struct ms_gpu_tier *t, struct ms_err *err)
{
	(void)t;
	return no_cuda(err);
}

int ms_gpu_tier_stats(struct ms_gpu_tier *t, struct ms_gpu_tier_stats *s,
		      struct ms_err *err)
{
	(void)t;
	if (s)
		memset(s, 0, sizeof(*s));
	return no_cuda(err);
}

void *ms_gpu_tier_stream(const struct ms_gpu_tier *t)
{
	(void)t;
	return NULL;
}

void *ms_gpu_tier_copy_stream(const struct ms_gpu_tier *t)
{
	(void)t;
	return NULL;
}

int ms_gpu_host_alloc(void **p, size_t bytes, struct ms_err *err)
{
	(void)bytes;
	if (p)
		*p = NULL;
	return no_cuda(err);
}

void ms_gpu_host_free(void *p)
{
	(void)p;
}

int ms_gpu_h2d_time(void *dst_dev, const void *const *src,
		    const uint64_t *len, int n, void *stream, double *ms,
		    struct ms_err *err)
{
	(void)dst_dev;
	(void)src;
	(void)len;
	(void)n;
	(void)stream;
	if (ms)
		*ms = 0;
	return no_cuda(err);
}

int ms_gpu_host_is_pinned(const void *p, struct ms_err *err)
{
	(void)p;
	return no_cuda(err);
}
