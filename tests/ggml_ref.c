/*
 * ggml_ref.c - dlopen wrapper around ggml's libggml-base.so (see ggml_ref.h).
 *
 * Why dlopen and not a link: ggml is the reference the tests compare against,
 * not a dependency of moestream; it arrives in a cache folder outside the tree
 * (tests/fetch-ggml.sh) and may be missing, in which case every test that needs
 * it must fail with the reason rather than fail to build or link.
 *
 * ggml answers bad input with GGML_ASSERT -> abort(), so everything handed to
 * it here is validated first and a bad description is a printed error, not a
 * core dump in the middle of a test.
 *
 * general.alignment: ggml's writer pads with the context's alignment, which
 * gguf_set_val_u32("general.alignment") does not change; only the reader sets
 * it from the key. So for a non-default alignment the metadata is written
 * once without tensors, read back with gguf_init_from_file (now the context
 * carries the alignment) and the tensors are added to that context.
 */
#include "ggml_ref.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#define LIB_SUBPATH "moestream/ggml-3.22.1/libggml-base.so"

static void default_lib_path(char *buf, size_t len)
{
	const char *c = getenv("MS_CACHE");
	if (c && *c) {
		snprintf(buf, len, "%s/ggml-3.22.1/libggml-base.so", c);
		return;
	}
	const char *x = getenv("XDG_CACHE_HOME");
	if (x && *x) {
		snprintf(buf, len, "%s/" LIB_SUBPATH, x);
		return;
	}
	const char *h = getenv("HOME");
	snprintf(buf, len, "%s/.cache/" LIB_SUBPATH, h && *h ? h : "/root");
}

/* Prints what tests/fetch-ggml.sh left in its FETCH_FAILED file, if any. */
static void print_fetch_failure(const char *lib)
{
	char fallback[PATH_MAX];
	const char *p = getenv("MS_GGML_FETCH_FAILED");
	if (!p || !*p) {
		const char *slash = strrchr(lib, '/');
		int dlen = slash ? (int)(slash - lib) : 1;
		snprintf(fallback, sizeof(fallback), "%.*s/FETCH_FAILED", dlen,
			 slash ? lib : ".");
		p = fallback;
	}
	FILE *f = fopen(p, "r");
	if (!f) {
		fprintf(stderr,
			"ggml_ref: no fetch error recorded in %s; run "
			"tests/fetch-ggml.sh (or make test) to fetch it\n", p);
		return;
	}
	char line[1024];
	fprintf(stderr, "ggml_ref: the fetch failed (%s):\n", p);
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "  %s", line);
	fclose(f);
	fputc('\n', stderr);
}

int ggml_ref_load(struct ggml_ref *r)
{
	memset(r, 0, sizeof(*r));
	const char *env = getenv("MS_GGML_LIB");
	if (env && *env)
		snprintf(r->path, sizeof(r->path), "%s", env);
	else
		default_lib_path(r->path, sizeof(r->path));

	struct stat st;
	if (stat(r->path, &st) != 0) {
		fprintf(stderr,
			"ggml_ref: ggml's reference library %s is missing (%s); "
			"tests that compare against ggml cannot run\n",
			r->path, strerror(errno));
		print_fetch_failure(r->path);
		return -1;
	}
	r->handle = dlopen(r->path, RTLD_NOW | RTLD_LOCAL);
	if (!r->handle) {
		fprintf(stderr, "ggml_ref: dlopen %s failed: %s\n", r->path,
			dlerror());
		print_fetch_failure(r->path);
		return -1;
	}

	int missing = 0;
#define SYM(name)                                                              \
	do {                                                                   \
		r->name = (typeof(r->name))dlsym(r->handle, #name);            \
		if (!r->name) {                                                \
			fprintf(stderr, "ggml_ref: %s has no symbol %s\n",     \
				r->path, #name);                               \
			missing++;                                             \
		}                                                              \
	} while (0)
	SYM(ggml_init);
	SYM(ggml_free);
	SYM(ggml_tensor_overhead);
	SYM(ggml_new_tensor);
	SYM(ggml_set_name);
	SYM(ggml_get_tensor);
	SYM(ggml_get_data);
	SYM(ggml_nbytes);
	SYM(ggml_n_dims);
	SYM(ggml_type_name);
	SYM(ggml_blck_size);
	SYM(ggml_type_size);
	SYM(ggml_row_size);
	SYM(ggml_is_quantized);
	SYM(ggml_version);
	SYM(ggml_commit);
	SYM(gguf_init_empty);
	SYM(gguf_init_from_file);
	SYM(gguf_free);
	SYM(gguf_type_name);
	SYM(gguf_get_version);
	SYM(gguf_get_alignment);
	SYM(gguf_get_data_offset);
	SYM(gguf_get_n_kv);
	SYM(gguf_find_key);
	SYM(gguf_get_key);
	SYM(gguf_get_kv_type);
	SYM(gguf_get_arr_type);
	SYM(gguf_get_val_u8);
	SYM(gguf_get_val_i8);
	SYM(gguf_get_val_u16);
	SYM(gguf_get_val_i16);
	SYM(gguf_get_val_u32);
	SYM(gguf_get_val_i32);
	SYM(gguf_get_val_f32);
	SYM(gguf_get_val_u64);
	SYM(gguf_get_val_i64);
	SYM(gguf_get_val_f64);
	SYM(gguf_get_val_bool);
	SYM(gguf_get_val_str);
	SYM(gguf_get_arr_n);
	SYM(gguf_get_arr_data);
	SYM(gguf_get_arr_str);
	SYM(gguf_get_n_tensors);
	SYM(gguf_find_tensor);
	SYM(gguf_get_tensor_offset);
	SYM(gguf_get_tensor_name);
	SYM(gguf_get_tensor_type);
	SYM(gguf_get_tensor_size);
	SYM(gguf_get_tensor_ne);
	SYM(gguf_get_meta_size);
	SYM(gguf_set_val_u8);
	SYM(gguf_set_val_i8);
	SYM(gguf_set_val_u16);
	SYM(gguf_set_val_i16);
	SYM(gguf_set_val_u32);
	SYM(gguf_set_val_i32);
	SYM(gguf_set_val_f32);
	SYM(gguf_set_val_u64);
	SYM(gguf_set_val_i64);
	SYM(gguf_set_val_f64);
	SYM(gguf_set_val_bool);
	SYM(gguf_set_val_str);
	SYM(gguf_set_arr_data);
	SYM(gguf_set_arr_str);
	SYM(gguf_add_tensor);
	SYM(gguf_write_to_file);
	SYM(ggml_quantize_chunk);
	SYM(ggml_quantize_init);
	SYM(ggml_quantize_requires_imatrix);
	SYM(ggml_fp32_to_fp16_row);
	SYM(ggml_fp32_to_bf16_row);
	SYM(ggml_fp16_to_fp32_row);
	SYM(ggml_bf16_to_fp32_row);
#undef SYM
	if (missing) {
		fprintf(stderr,
			"ggml_ref: %d symbol(s) missing: %s is not the pinned "
			"@node-llama-cpp/linux-x64@3.22.1 build\n",
			missing, r->path);
		dlclose(r->handle);
		r->handle = NULL;
		return -1;
	}
	/* The pinned build knows ids up to 42 (q2_0); a different table would
	 * make every comparison below meaningless. */
	const char *last = r->ggml_type_name(GGML_REF_TYPE_COUNT - 1);
	if (!last || strcmp(last, "q2_0") != 0 ||
	    r->ggml_blck_size(GGML_REF_TYPE_COUNT - 1) <= 0) {
		fprintf(stderr,
			"ggml_ref: %s: type %d is '%s', expected q2_0: not the "
			"pinned ggml build\n",
			r->path, GGML_REF_TYPE_COUNT - 1, last ? last : "(null)");
		dlclose(r->handle);
		r->handle = NULL;
		return -1;
	}
	/* dequantize_row_<name> for every type ggml knows; optional, since
	 * f32/f16/bf16 and the integer types have none. */
	for (int t = 0; t < GGML_REF_TYPE_COUNT; t++) {
		if (!ggml_ref_type_ok(r, t))
			continue;
		char sym[96];
		snprintf(sym, sizeof(sym), "dequantize_row_%s",
			 r->ggml_type_name(t));
		r->dequantize_row[t] = (typeof(r->dequantize_row[t]))dlsym(
			r->handle, sym);
	}
	return 0;
}

int ggml_ref_dequantize(const struct ggml_ref *r, int type, const void *src,
			float *dst, int64_t n)
{
	if (!ggml_ref_type_ok(r, type) || n < 0 ||
	    n % r->ggml_blck_size(type))
		return -1;
	switch (type) {
	case 0: /* f32 */
		memcpy(dst, src, (size_t)n * sizeof(float));
		return 0;
	case 1: /* f16 */
		r->ggml_fp16_to_fp32_row(src, dst, n);
		return 0;
	case 30: /* bf16 */
		r->ggml_bf16_to_fp32_row(src, dst, n);
		return 0;
	default:
		if (!r->dequantize_row[type])
			return -1;
		r->dequantize_row[type](src, dst, n);
		return 0;
	}
}

void ggml_ref_load_or_fail(struct ggml_ref *r)
{
	if (ggml_ref_load(r) != 0)
		t_fatal("ggml's reference library could not be loaded (see "
			"above); this test compares against ggml and cannot "
			"pass without it");
	printf("ggml: %s (version %s, commit %s)\n", r->path,
	       r->ggml_version(), r->ggml_commit());
}

bool ggml_ref_type_ok(const struct ggml_ref *r, int type)
{
	return type >= 0 && type < GGML_REF_TYPE_COUNT &&
	       r->ggml_blck_size(type) > 0 && r->ggml_type_size(type) > 0;
}

int ggml_ref_n_dims(const int64_t ne[4])
{
	for (int i = 3; i >= 1; i--)
		if (ne[i] > 1)
			return i + 1;
	return 1;
}

void ggml_ref_shard_path(char *buf, size_t len, const char *prefix,
			 uint32_t no, uint32_t count)
{
	snprintf(buf, len, "%s-%05u-of-%05u.gguf", prefix, no + 1, count);
}

/* ---- the writer ----------------------------------------------------------- */

static int check_desc(const struct ggml_ref *r, const struct ggml_ref_file *f)
{
	uint32_t n_shards = f->n_shards ? f->n_shards : 1;
	if (f->alignment && (f->alignment & (f->alignment - 1))) {
		fprintf(stderr, "ggml_ref_write: alignment %u not a power of 2\n",
			f->alignment);
		return -1;
	}
	for (size_t i = 0; i < f->n_tensors; i++) {
		const struct ggml_ref_tensor *t = &f->tensors[i];
		size_t nl = strnlen(t->name, sizeof(t->name));
		if (nl == 0 || nl >= sizeof(t->name)) {
			fprintf(stderr, "ggml_ref_write: tensor %zu: bad name\n",
				i);
			return -1;
		}
		if (!ggml_ref_type_ok(r, t->type)) {
			fprintf(stderr, "ggml_ref_write: %s: type %d unknown "
				"to ggml\n", t->name, t->type);
			return -1;
		}
		if (t->n_dims < 1 || t->n_dims > 4) {
			fprintf(stderr, "ggml_ref_write: %s: n_dims %d\n",
				t->name, t->n_dims);
			return -1;
		}
		for (int d = 0; d < 4; d++) {
			if (t->ne[d] < 0 || (d >= t->n_dims && t->ne[d] != 1)) {
				fprintf(stderr, "ggml_ref_write: %s: ne[%d] = "
					"%lld\n", t->name, d,
					(long long)t->ne[d]);
				return -1;
			}
		}
		if (t->ne[0] % r->ggml_blck_size(t->type)) {
			fprintf(stderr, "ggml_ref_write: %s: ne[0] %lld not a "
				"multiple of %s's block %lld\n", t->name,
				(long long)t->ne[0], r->ggml_type_name(t->type),
				(long long)r->ggml_blck_size(t->type));
			return -1;
		}
		if (n_shards > 1 && t->shard >= n_shards) {
			fprintf(stderr, "ggml_ref_write: %s: shard %u of %u\n",
				t->name, t->shard, n_shards);
			return -1;
		}
		for (size_t j = 0; j < i; j++) {
			if (!strcmp(f->tensors[j].name, t->name)) {
				fprintf(stderr, "ggml_ref_write: duplicate "
					"tensor %s\n", t->name);
				return -1;
			}
		}
	}
	return 0;
}

static int fill_data(const struct ggml_ref *r, struct gguf_context *g,
		     const char *path, uint64_t *rng)
{
	struct stat st;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "ggml_ref_write: %s: %s\n", path,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	/* gguf_write_to_file(only_meta) ends padded to the alignment: that is
	 * the data offset. */
	uint64_t data_off = (uint64_t)st.st_size;
	uint64_t align = r->gguf_get_alignment(g);
	if (data_off != r->gguf_get_meta_size(g) || data_off % align) {
		fprintf(stderr, "ggml_ref_write: %s: meta size %llu, ggml says "
			"%zu (alignment %llu)\n", path,
			(unsigned long long)data_off, r->gguf_get_meta_size(g),
			(unsigned long long)align);
		close(fd);
		return -1;
	}
	uint64_t end = data_off;
	int64_t n = r->gguf_get_n_tensors(g);
	static uint8_t buf[1 << 16];
	for (int64_t i = 0; i < n; i++) {
		uint64_t off = data_off + r->gguf_get_tensor_offset(g, i);
		uint64_t size = r->gguf_get_tensor_size(g, i);
		uint64_t padded = (size + align - 1) / align * align;
		if (off + padded > end)
			end = off + padded;
		if (!rng)
			continue;
		for (uint64_t done = 0; done < size;) {
			size_t k = size - done < sizeof(buf) ?
				   (size_t)(size - done) : sizeof(buf);
			for (size_t j = 0; j < k; j += 8) {
				uint64_t v = t_rand(rng);
				memcpy(buf + j, &v, k - j < 8 ? k - j : 8);
			}
			ssize_t w = pwrite(fd, buf, k, (off_t)(off + done));
			if (w != (ssize_t)k) {
				fprintf(stderr, "ggml_ref_write: %s: pwrite: "
					"%s\n", path, strerror(errno));
				close(fd);
				return -1;
			}
			done += k;
		}
	}
	/* ggml's own writer pads after every tensor, the last included. */
	if (ftruncate(fd, (off_t)end) != 0) {
		fprintf(stderr, "ggml_ref_write: %s: ftruncate: %s\n", path,
			strerror(errno));
		close(fd);
		return -1;
	}
	return close(fd) ? -1 : 0;
}

static int write_one(const struct ggml_ref *r, const struct ggml_ref_file *f,
		     const char *path, uint32_t shard, uint32_t n_shards)
{
	struct gguf_context *g = r->gguf_init_empty();
	struct ggml_context *gc = NULL;
	int ret = -1;
	if (!g) {
		fprintf(stderr, "ggml_ref_write: gguf_init_empty failed\n");
		return -1;
	}
	if (shard == 0 && f->set_kv)
		f->set_kv(r, g, f->user);
	if (n_shards > 1) {
		r->gguf_set_val_u16(g, "split.no", (uint16_t)shard);
		r->gguf_set_val_u16(g, "split.count", (uint16_t)n_shards);
		r->gguf_set_val_i32(g, "split.tensors.count",
				    (int32_t)f->n_tensors);
	}
	if (f->alignment) {
		r->gguf_set_val_u32(g, "general.alignment", f->alignment);
		/* Round trip so that the context pads with this alignment. */
		if (!r->gguf_write_to_file(g, path, true)) {
			fprintf(stderr, "ggml_ref_write: %s: write failed\n",
				path);
			goto out;
		}
		r->gguf_free(g);
		struct gguf_init_params p = { .no_alloc = true, .ctx = NULL };
		g = r->gguf_init_from_file(path, p);
		if (!g) {
			fprintf(stderr, "ggml_ref_write: %s: ggml cannot read "
				"its own metadata back\n", path);
			return -1;
		}
		if (r->gguf_get_alignment(g) != f->alignment) {
			fprintf(stderr, "ggml_ref_write: %s: alignment %zu "
				"after reading back, wanted %u\n", path,
				r->gguf_get_alignment(g), f->alignment);
			goto out;
		}
	}

	size_t n_here = 0;
	for (size_t i = 0; i < f->n_tensors; i++)
		if (n_shards <= 1 || f->tensors[i].shard == shard)
			n_here++;
	struct ggml_init_params ip = {
		.mem_size = (n_here + 1) * r->ggml_tensor_overhead() + 4096,
		.mem_buffer = NULL,
		.no_alloc = true,
	};
	gc = r->ggml_init(ip);
	if (!gc) {
		fprintf(stderr, "ggml_ref_write: ggml_init failed\n");
		goto out;
	}
	for (size_t i = 0; i < f->n_tensors; i++) {
		const struct ggml_ref_tensor *t = &f->tensors[i];
		if (n_shards > 1 && t->shard != shard)
			continue;
		struct ggml_tensor *gt =
			r->ggml_new_tensor(gc, t->type, t->n_dims, t->ne);
		if (!gt) {
			fprintf(stderr, "ggml_ref_write: %s: ggml_new_tensor "
				"failed\n", t->name);
			goto out;
		}
		r->ggml_set_name(gt, t->name);
		r->gguf_add_tensor(g, gt);
	}
	if (!r->gguf_write_to_file(g, path, true)) {
		fprintf(stderr, "ggml_ref_write: %s: gguf_write_to_file "
			"failed\n", path);
		goto out;
	}
	ret = fill_data(r, g, path, f->rng);
out:
	if (gc)
		r->ggml_free(gc);
	r->gguf_free(g);
	return ret;
}

int ggml_ref_write(const struct ggml_ref *r, const struct ggml_ref_file *f)
{
	if (check_desc(r, f) != 0)
		return -1;
	if (f->n_shards <= 1)
		return write_one(r, f, f->path, 0, 1);
	if (f->n_shards > 65535) {
		fprintf(stderr, "ggml_ref_write: %u shards\n", f->n_shards);
		return -1;
	}
	for (uint32_t s = 0; s < f->n_shards; s++) {
		char p[PATH_MAX];
		ggml_ref_shard_path(p, sizeof(p), f->path, s, f->n_shards);
		if (write_one(r, f, p, s, f->n_shards) != 0)
			return -1;
	}
	return 0;
}

/* ---- MoE models ------------------------------------------------------------ */

struct tlist {
	struct ggml_ref_tensor *v;
	size_t n, cap;
	bool oom;
};

static void tl_add(struct tlist *l, int type, int n_dims, int64_t ne0,
		   int64_t ne1, int64_t ne2, const char *fmt, ...)
	__attribute__((format(printf, 7, 8)));

static void tl_add(struct tlist *l, int type, int n_dims, int64_t ne0,
		   int64_t ne1, int64_t ne2, const char *fmt, ...)
{
	if (l->oom)
		return;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		void *p = realloc(l->v, cap * sizeof(*l->v));
		if (!p) {
			l->oom = true;
			return;
		}
		l->v = p;
		l->cap = cap;
	}
	struct ggml_ref_tensor *t = &l->v[l->n++];
	memset(t, 0, sizeof(*t));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	t->type = type;
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = n_dims > 1 ? ne1 : 1;
	t->ne[2] = n_dims > 2 ? ne2 : 1;
	t->ne[3] = 1;
}

#define T_F32 0

int ggml_ref_moe_tensors(const struct ggml_ref *r, const struct ggml_ref_moe *m,
			 struct ggml_ref_tensor **out, size_t *n)
{
	(void)r;
	struct tlist l = { 0 };
	int64_t E = m->n_embd, F = m->n_ff, FD = m->n_ff_dense, X = m->n_expert;
	int rt = m->resident_type;

	tl_add(&l, rt, 2, E, m->n_vocab, 1, "token_embd.weight");
	for (uint32_t b = 0; b < m->n_block; b++) {
		const int *ty = m->block_type ? m->block_type[b] : m->type;
		bool dense = b < m->n_leading_dense;
		bool nextn = m->n_nextn && b >= m->n_block - m->n_nextn;

		tl_add(&l, T_F32, 1, E, 1, 1, "blk.%u.attn_norm.weight", b);
		tl_add(&l, rt, 2, E, E, 1, "blk.%u.attn_q.weight", b);
		tl_add(&l, rt, 2, E, E / 2, 1, "blk.%u.attn_k.weight", b);
		tl_add(&l, rt, 2, E, E / 2, 1, "blk.%u.attn_v.weight", b);
		tl_add(&l, rt, 2, E, E, 1, "blk.%u.attn_output.weight", b);
		tl_add(&l, T_F32, 1, E, 1, 1, "blk.%u.ffn_norm.weight", b);
		if (dense) {
			tl_add(&l, rt, 2, E, FD, 1, "blk.%u.ffn_gate.weight", b);
			tl_add(&l, rt, 2, E, FD, 1, "blk.%u.ffn_up.weight", b);
			tl_add(&l, rt, 2, FD, E, 1, "blk.%u.ffn_down.weight", b);
		} else {
			tl_add(&l, T_F32, 2, E, X, 1,
			       "blk.%u.ffn_gate_inp.weight", b);
			if (m->probs_bias)
				tl_add(&l, T_F32, 1, X, 1, 1,
				       "blk.%u.exp_probs_b.bias", b);
			if (m->fused) {
				tl_add(&l, ty[0], 3, E, 2 * F, X,
				       "blk.%u.ffn_gate_up_exps.weight", b);
				if (m->expert_bias)
					tl_add(&l, T_F32, 2, 2 * F, X, 1,
					       "blk.%u.ffn_gate_up_exps.bias",
					       b);
			} else {
				tl_add(&l, ty[0], 3, E, F, X,
				       "blk.%u.ffn_gate_exps.weight", b);
				tl_add(&l, ty[1], 3, E, F, X,
				       "blk.%u.ffn_up_exps.weight", b);
				if (m->expert_bias) {
					tl_add(&l, T_F32, 2, F, X, 1,
					       "blk.%u.ffn_gate_exps.bias", b);
					tl_add(&l, T_F32, 2, F, X, 1,
					       "blk.%u.ffn_up_exps.bias", b);
				}
			}
			tl_add(&l, ty[2], 3, F, E, X,
			       "blk.%u.ffn_down_exps.weight", b);
			if (m->expert_bias)
				tl_add(&l, T_F32, 2, E, X, 1,
				       "blk.%u.ffn_down_exps.bias", b);
			if (m->n_shared) {
				int64_t S = F * m->n_shared;
				tl_add(&l, rt, 2, E, S, 1,
				       "blk.%u.ffn_gate_shexp.weight", b);
				tl_add(&l, rt, 2, E, S, 1,
				       "blk.%u.ffn_up_shexp.weight", b);
				tl_add(&l, rt, 2, S, E, 1,
				       "blk.%u.ffn_down_shexp.weight", b);
			}
		}
		if (nextn) {
			tl_add(&l, rt, 2, 2 * E, E, 1,
			       "blk.%u.nextn.eh_proj.weight", b);
			tl_add(&l, T_F32, 1, E, 1, 1,
			       "blk.%u.nextn.enorm.weight", b);
			tl_add(&l, T_F32, 1, E, 1, 1,
			       "blk.%u.nextn.hnorm.weight", b);
			tl_add(&l, T_F32, 1, E, 1, 1,
			       "blk.%u.nextn.shared_head_norm.weight", b);
		}
	}
	tl_add(&l, T_F32, 1, E, 1, 1, "output_norm.weight");
	tl_add(&l, rt, 2, E, m->n_vocab, 1, "output.weight");
	if (l.oom) {
		free(l.v);
		fprintf(stderr, "ggml_ref_moe_tensors: out of memory\n");
		return -1;
	}

	/* Shards: gguf-split's --split-max-tensors cuts the list in order, so
	 * a block's tensors may land in two shards. */
	uint32_t ns = m->n_shards ? m->n_shards : 1;
	for (size_t i = 0; i < l.n; i++) {
		if (m->split_max_tensors)
			l.v[i].shard = (uint32_t)(i / m->split_max_tensors);
		else
			l.v[i].shard = (uint32_t)(i * ns / l.n);
	}
	*out = l.v;
	*n = l.n;
	return 0;
}

static void moe_kv(const struct ggml_ref *r, struct gguf_context *g, void *user)
{
	const struct ggml_ref_moe *m = user;
	char k[256];
	const char *a = m->arch;

	r->gguf_set_val_str(g, "general.architecture", a);
	snprintf(k, sizeof(k), "moestream test %s", a);
	r->gguf_set_val_str(g, "general.name", k);
	r->gguf_set_val_u32(g, "general.quantization_version", 2);
#define KU32(suffix, v)                                                        \
	do {                                                                   \
		snprintf(k, sizeof(k), "%s." suffix, a);                       \
		r->gguf_set_val_u32(g, k, (v));                                \
	} while (0)
	KU32("block_count", m->n_block);
	KU32("context_length", 4096);
	KU32("embedding_length", m->n_embd);
	KU32("feed_forward_length", m->n_ff_dense);
	KU32("attention.head_count", 4);
	KU32("attention.head_count_kv", 2);
	KU32("expert_count", m->n_expert);
	KU32("expert_used_count", m->n_expert_used);
	KU32("expert_feed_forward_length", m->n_ff);
	if (m->n_leading_dense)
		KU32("leading_dense_block_count", m->n_leading_dense);
	if (m->n_nextn)
		KU32("nextn_predict_layers", m->n_nextn);
	if (m->n_shared)
		KU32("expert_shared_count", m->n_shared);
#undef KU32
	snprintf(k, sizeof(k), "%s.rope.freq_base", a);
	r->gguf_set_val_f32(g, k, 1000000.0f);
	snprintf(k, sizeof(k), "%s.attention.layer_norm_rms_epsilon", a);
	r->gguf_set_val_f32(g, k, 1e-5f);
	if (m->probs_bias) {
		snprintf(k, sizeof(k), "%s.expert_weights_scale", a);
		r->gguf_set_val_f32(g, k, 2.5f);
		snprintf(k, sizeof(k), "%s.expert_weights_norm", a);
		r->gguf_set_val_bool(g, k, true);
		snprintf(k, sizeof(k), "%s.expert_gating_func", a);
		r->gguf_set_val_u32(g, k, 2);
	}

	/* A small tokenizer, so that arrays of strings and numbers sit between
	 * the header and the tensor infos as they do in real files. */
	r->gguf_set_val_str(g, "tokenizer.ggml.model", "gpt2");
	uint32_t nv = m->n_vocab;
	char **tok = calloc(nv, sizeof(*tok));
	int32_t *tt = calloc(nv, sizeof(*tt));
	if (tok && tt) {
		uint32_t i;
		for (i = 0; i < nv; i++) {
			tok[i] = malloc(16);
			if (!tok[i])
				break;
			snprintf(tok[i], 16, "<t%u>", i);
			tt[i] = i < 3 ? 3 : 1;
		}
		if (i == nv) {
			r->gguf_set_arr_str(g, "tokenizer.ggml.tokens",
					    (const char **)tok, nv);
			r->gguf_set_arr_data(g, "tokenizer.ggml.token_type", 5,
					     tt, nv);
		}
		for (uint32_t j = 0; j < i; j++)
			free(tok[j]);
	}
	free(tok);
	free(tt);
	r->gguf_set_val_u32(g, "tokenizer.ggml.bos_token_id", 1);
	r->gguf_set_val_u32(g, "tokenizer.ggml.eos_token_id", 2);
}

int ggml_ref_write_moe(const struct ggml_ref *r, const struct ggml_ref_moe *m,
		       const char *path)
{
	struct ggml_ref_tensor *t;
	size_t n;
	if (ggml_ref_moe_tensors(r, m, &t, &n) != 0)
		return -1;
	uint32_t ns = m->n_shards ? m->n_shards : 1;
	if (m->split_max_tensors)
		ns = (uint32_t)((n + m->split_max_tensors - 1) /
				m->split_max_tensors);
	struct ggml_ref_file f = {
		.path = path,
		.n_shards = ns,
		.alignment = m->alignment,
		.set_kv = moe_kv,
		.user = (void *)m,
		.tensors = t,
		.n_tensors = n,
		.rng = m->rng,
	};
	int ret = ggml_ref_write(r, &f);
	free(t);
	return ret;
}
