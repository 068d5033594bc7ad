/*
 * llama_ref.c - llama.cpp's libllama by dlopen, as a reference (llama_ref.h).
 *
 * No llama.h: the few prototypes are declared here, and the two parameter
 * structs that llama.cpp passes by value are declared as opaque byte arrays of
 * the exact size this build of the library uses. Their layout was measured on
 * libllama.v0.5.0.so (node-llama-cpp 3.22.1) by calling the default-params
 * functions with an explicit return buffer full of a canary byte and reading
 * which bytes they wrote, and by its disassembly:
 *
 *   llama_model_default_params()    80 bytes; the last store is a 16-bit one
 *                                   at 76 (bytes 72..77 are its six bools,
 *                                   vocab_only first, at 72).
 *   llama_context_default_params() 160 bytes; the last store is a pointer at
 *                                   152. n_ctx, n_batch, n_ubatch, n_seq_max
 *                                   are the first four uint32 (512, 2048, 512,
 *                                   1 by default).
 *
 * A struct passed by value must have exactly the callee's size (a larger one
 * is copied to the stack whole, a smaller one leaves the callee reading past
 * it), so the sizes are fixed here and the defaults are checked at run time:
 * a library laid out otherwise is an -EPROTO error naming the field, not
 * undefined behaviour. Only n_ctx, n_batch, n_ubatch, vocab_only and
 * use_extra_bufts are written, by offset; threads are set with
 * llama_set_n_threads. use_extra_bufts (byte 74, the only bool set by
 * default) was found by flipping each of bytes 73..77 on the tiny preset: at
 * 0 the load log loses its "AMX model buffer" and "CPU_REPACK model buffer"
 * lines (weights repacked into anonymous memory: the q2_K experts too, on
 * this machine's AMX CPU) and keeps "load_mode = mmap"; 76 is no_alloc (an
 * assertion fires). It is what llama-cli's --no-repack sets.
 *
 * llama_batch (56 bytes: n_tokens, then six pointers) is the one struct
 * llama.h has kept unchanged for years; llama_batch_init's result is checked
 * (embd NULL for embd = 0, seq_id NULL-terminated) before use.
 *
 * Loading: libllama's DT_NEEDED (libggml.v0.5.0.so, libggml-base.so) resolve
 * through its RUNPATH $ORIGIN, so dlopen by full path is enough for them; the
 * CPU backend is a separate libggml-cpu-<variant>.so that
 * ggml_backend_load_all_from_path(dir) (libggml) scores and loads. The
 * libraries are loaded once per process and never unloaded (ggml keeps
 * global state that does not survive dlclose).
 */
#include "llama_ref.h"

#include "moestream/engine.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLAMA_VER "3.22.1"
#define MODEL_PARAMS_SIZE 80
#define CTX_PARAMS_SIZE 160
#define MP_VOCAB_ONLY 72  /* bool */
#define MP_USE_EXTRA_BUFTS 74 /* bool, true by default: the one set */
#define CP_N_CTX 0        /* uint32 */
#define CP_N_BATCH 4
#define CP_N_UBATCH 8
#define CP_N_SEQ_MAX 12

struct llm_model_params {
	_Alignas(8) unsigned char b[MODEL_PARAMS_SIZE];
};
struct llm_ctx_params {
	_Alignas(8) unsigned char b[CTX_PARAMS_SIZE];
};
struct llm_batch {
	int32_t n_tokens;
	int32_t *token;
	float *embd;
	int32_t *pos;
	int32_t *n_seq_id;
	int32_t **seq_id;
	int8_t *logits;
};
_Static_assert(sizeof(struct llm_model_params) == MODEL_PARAMS_SIZE, "size");
_Static_assert(sizeof(struct llm_ctx_params) == CTX_PARAMS_SIZE, "size");
_Static_assert(sizeof(struct llm_batch) == 56, "llama_batch is 56 bytes");

/* llama_chat_message: two pointers, as struct ms_chat_msg is. */
struct llm_chat_message {
	const char *role;
	const char *content;
};

struct llm_model;
struct llm_ctx;
struct llm_vocab;
typedef void (*llm_log_cb)(int level, const char *text, void *ud);

/* The entry points, resolved once. */
static struct {
	void (*backend_init)(void);
	void (*log_set)(llm_log_cb cb, void *ud);
	void (*load_all_from_path)(const char *dir);
	struct llm_model_params (*model_default_params)(void);
	struct llm_ctx_params (*context_default_params)(void);
	struct llm_model *(*model_load_from_file)(const char *path,
						  struct llm_model_params p);
	void (*model_free)(struct llm_model *m);
	const struct llm_vocab *(*model_get_vocab)(const struct llm_model *m);
	int32_t (*vocab_n_tokens)(const struct llm_vocab *v);
	int32_t (*tokenize)(const struct llm_vocab *v, const char *text,
			    int32_t text_len, int32_t *tokens, int32_t n_max,
			    bool add_special, bool parse_special);
	int32_t (*token_to_piece)(const struct llm_vocab *v, int32_t token,
				  char *buf, int32_t length, int32_t lstrip,
				  bool special);
	struct llm_ctx *(*init_from_model)(struct llm_model *m,
					   struct llm_ctx_params p);
	void (*free_ctx)(struct llm_ctx *c);
	void (*set_n_threads)(struct llm_ctx *c, int32_t n, int32_t n_batch);
	void *(*get_memory)(const struct llm_ctx *c);
	void (*memory_clear)(void *mem, bool data);
	struct llm_batch (*batch_init)(int32_t n_tokens, int32_t embd,
				       int32_t n_seq_max);
	void (*batch_free)(struct llm_batch b);
	int32_t (*decode)(struct llm_ctx *c, struct llm_batch b);
	float *(*get_logits_ith)(struct llm_ctx *c, int32_t i);
	int32_t (*chat_apply_template)(const char *tmpl,
				       const struct llm_chat_message *chat,
				       size_t n_msg, bool add_ass, char *buf,
				       int32_t length);
} L;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static bool g_loaded;
static char g_dir[PATH_MAX];
static bool g_verbose;
/* llama.cpp's first error line since the last reset (the loader's reason
 * comes first, "failed to load model" after it), else its last warning: for
 * the messages here. */
static char g_last[400];
static bool g_last_is_err;
/* llama_model_load logged "vocab only - skipping tensors". */
static bool g_saw_vocab_only;

struct ms_llref {
	struct llm_model *model;
	struct llm_ctx *ctx;           /* NULL when vocab-only */
	const struct llm_vocab *vocab;
	int32_t n_vocab;
	uint32_t n_ctx;
	uint32_t n_batch;              /* the most one llama_decode takes */
};

static void last_reset(void)
{
	g_last[0] = '\0';
	g_last_is_err = false;
	g_saw_vocab_only = false;
}

/* ggml_log_level: 0 NONE, 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT. */
static void log_cb(int level, const char *text, void *ud)
{
	(void)ud;
	if (g_verbose)
		fputs(text, stderr);
	if (text && strstr(text, "vocab only - skipping tensors"))
		g_saw_vocab_only = true;
	if (g_last_is_err || !text || !text[0] || text[0] == '\n')
		return;
	if (level == 3 || level == 4) {
		g_last_is_err = level == 4;
		snprintf(g_last, sizeof(g_last), "%s", text);
		size_t l = strlen(g_last);
		while (l && (g_last[l - 1] == '\n' || g_last[l - 1] == ' '))
			g_last[--l] = '\0';
	}
}

const char *ms_llref_default_dir(const char *dir, char *buf, size_t len)
{
	const char *e = getenv("MS_LLAMA_DIR");
	const char *c = getenv("MS_CACHE"), *x = getenv("XDG_CACHE_HOME"),
		   *h = getenv("HOME");
	if (dir && *dir)
		snprintf(buf, len, "%s", dir);
	else if (e && *e)
		snprintf(buf, len, "%s", e);
	else if (c && *c)
		snprintf(buf, len, "%s/llama-" LLAMA_VER, c);
	else if (x && *x)
		snprintf(buf, len, "%s/moestream/llama-" LLAMA_VER, x);
	else
		snprintf(buf, len, "%s/.cache/moestream/llama-" LLAMA_VER,
			 h && *h ? h : "/root");
	return buf;
}

/* "libllama ... is missing" with tests/fetch-ggml.sh's reason, if it left one. */
static int missing(const char *dir, const char *path, struct ms_err *err)
{
	char fp[PATH_MAX + 16], why[300] = "";
	snprintf(fp, sizeof(fp), "%s/FETCH_FAILED", dir);
	FILE *f = fopen(fp, "r");
	if (f) {
		if (fgets(why, sizeof(why), f))
			why[strcspn(why, "\n")] = '\0';
		fclose(f);
	}
	if (why[0])
		return ms_err_set(err, -ENOENT,
				  "llama.cpp's library %s is missing: the fetch "
				  "failed: %s", path, why);
	return ms_err_set(err, -ENOENT,
			  "llama.cpp's library %s is missing; run "
			  "tests/fetch-ggml.sh to fetch it (or set MS_LLAMA_DIR)",
			  path);
}

#define SYM(h, field, name)                                                    \
	do {                                                                   \
		*(void **)&L.field = dlsym(h, name);                           \
		if (!L.field)                                                  \
			return ms_err_set(err, -ENOENT,                        \
					  "%s has no %s: not the llama.cpp "   \
					  "this code was written for",        \
					  path, name);                         \
	} while (0)

/* g_mu held. */
static int do_load(const char *dir, struct ms_err *err)
{
	char path[PATH_MAX + 32];
	if (g_loaded) {
		if (strcmp(dir, g_dir))
			return ms_err_set(err, -EBUSY,
					  "llama.cpp is already loaded from %s, "
					  "not %s (one per process)", g_dir, dir);
		return 0;
	}
	const char *v = getenv("MS_LLAMA_LOG");
	g_verbose = v && *v && strcmp(v, "0");

	struct stat st;
	snprintf(path, sizeof(path), "%s/libllama.v0.5.0.so", dir);
	if (stat(path, &st))
		return missing(dir, path, err);
	/* ggml first and global, so that the CPU backend loaded later binds to
	 * the same libggml-base (RUNPATH would find them too). */
	static const char *const deps[] = { "libggml-base.so", "libggml.v0.5.0.so" };
	void *hg = NULL;
	for (size_t i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, deps[i]);
		hg = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
		if (!hg)
			return ms_err_set(err, -ENOENT, "dlopen %s: %s", path,
					  dlerror());
	}
	snprintf(path, sizeof(path), "%s/libggml.v0.5.0.so", dir);
	SYM(hg, load_all_from_path, "ggml_backend_load_all_from_path");
	snprintf(path, sizeof(path), "%s/libllama.v0.5.0.so", dir);
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return ms_err_set(err, -ENOENT, "dlopen %s: %s", path, dlerror());
	SYM(h, backend_init, "llama_backend_init");
	SYM(h, log_set, "llama_log_set");
	SYM(h, model_default_params, "llama_model_default_params");
	SYM(h, context_default_params, "llama_context_default_params");
	SYM(h, model_load_from_file, "llama_model_load_from_file");
	SYM(h, model_free, "llama_model_free");
	SYM(h, model_get_vocab, "llama_model_get_vocab");
	SYM(h, vocab_n_tokens, "llama_vocab_n_tokens");
	SYM(h, tokenize, "llama_tokenize");
	SYM(h, token_to_piece, "llama_token_to_piece");
	SYM(h, init_from_model, "llama_init_from_model");
	SYM(h, free_ctx, "llama_free");
	SYM(h, set_n_threads, "llama_set_n_threads");
	SYM(h, get_memory, "llama_get_memory");
	SYM(h, memory_clear, "llama_memory_clear");
	SYM(h, batch_init, "llama_batch_init");
	SYM(h, batch_free, "llama_batch_free");
	SYM(h, decode, "llama_decode");
	SYM(h, get_logits_ith, "llama_get_logits_ith");
	SYM(h, chat_apply_template, "llama_chat_apply_template");

	/* Silence (or forward) the logs before anything can log. */
	L.log_set(log_cb, NULL);
	L.backend_init();
	L.load_all_from_path(dir);

	/* The layout checks (see the top of the file). */
	struct llm_model_params mp;
	mp = L.model_default_params();
	static const unsigned char bools[6] = { 0, 0, 1, 0, 0, 0 };
	if (memcmp(mp.b + MP_VOCAB_ONLY, bools, sizeof(bools)))
		return ms_err_set(err, -EPROTO,
				  "llama_model_default_params: the bools at byte "
				  "%d are %02x %02x %02x %02x %02x %02x, expected "
				  "00 00 01 00 00 00 (vocab_only first): the "
				  "struct is not laid out as llama_ref.c expects",
				  MP_VOCAB_ONLY, mp.b[72], mp.b[73], mp.b[74],
				  mp.b[75], mp.b[76], mp.b[77]);
	struct llm_ctx_params cp = L.context_default_params();
	uint32_t u[4];
	memcpy(u, cp.b, sizeof(u));
	if (u[0] != 512 || u[1] != 2048 || u[2] != 512 || u[3] != 1)
		return ms_err_set(err, -EPROTO,
				  "llama_context_default_params: n_ctx, n_batch, "
				  "n_ubatch, n_seq_max are %u %u %u %u, expected "
				  "512 2048 512 1: the struct is not laid out as "
				  "llama_ref.c expects", u[0], u[1], u[2], u[3]);
	snprintf(g_dir, sizeof(g_dir), "%s", dir);
	g_loaded = true;
	return 0;
}
#undef SYM

static int open_common(struct ms_llref **out, const char *dir,
		       const char *gguf_path, bool vocab_only,
		       const struct ms_llref_opts *o, struct ms_err *err)
{
	char d[PATH_MAX];
	*out = NULL;
	ms_llref_default_dir(dir, d, sizeof(d));
	uint32_t n_ctx = o->n_ctx ? o->n_ctx : 512;
	int n_threads = o->n_threads;
	if (n_ctx > (1u << 20))
		return ms_err_set(err, -EINVAL, "n_ctx %u is over 1 Mi", n_ctx);
	uint32_t n_batch = o->n_batch ? o->n_batch : n_ctx;
	if (n_batch > n_ctx)
		n_batch = n_ctx;
	uint32_t ub = o->n_ubatch ? o->n_ubatch : n_batch < 512 ? n_batch : 512;
	if (ub > n_batch)
		ub = n_batch;
	pthread_mutex_lock(&g_mu);
	int rc = do_load(d, err);
	pthread_mutex_unlock(&g_mu);
	if (rc)
		return rc;

	struct ms_llref *r = calloc(1, sizeof(*r));
	if (!r)
		return ms_err_set(err, -ENOMEM, "out of memory");
	struct llm_model_params mp = L.model_default_params();
	mp.b[MP_VOCAB_ONLY] = vocab_only;
	if (o->no_extra_bufts)
		mp.b[MP_USE_EXTRA_BUFTS] = 0;
	last_reset();
	r->model = L.model_load_from_file(gguf_path, mp);
	if (!r->model) {
		rc = ms_err_set(err, -EINVAL,
				"llama.cpp cannot load %s: %s", gguf_path,
				g_last[0] ? g_last : "(no reason logged; "
						     "MS_LLAMA_LOG=1 shows its log)");
		goto fail;
	}
	r->vocab = L.model_get_vocab(r->model);
	r->n_vocab = r->vocab ? L.vocab_n_tokens(r->vocab) : 0;
	if (r->n_vocab <= 0) {
		rc = ms_err_set(err, -EINVAL, "llama.cpp loaded %s without a "
				"vocabulary", gguf_path);
		goto fail;
	}
	if (vocab_only) {
		/* The sign that byte 72 really is vocab_only: the loader's
		 * own line (llama_model_size still counts the tensors it
		 * skipped, so it cannot tell). */
		if (!g_saw_vocab_only) {
			rc = ms_err_set(err, -EPROTO,
					"llama_model_params byte %d did not make a "
					"vocab-only load (llama_model_load did not "
					"log \"vocab only - skipping tensors\")",
					MP_VOCAB_ONLY);
			goto fail;
		}
		*out = r;
		return 0;
	}

	struct llm_ctx_params cp = L.context_default_params();
	memcpy(cp.b + CP_N_CTX, &n_ctx, 4);
	memcpy(cp.b + CP_N_BATCH, &n_batch, 4);
	memcpy(cp.b + CP_N_UBATCH, &ub, 4);
	last_reset();
	r->ctx = L.init_from_model(r->model, cp);
	if (!r->ctx) {
		rc = ms_err_set(err, -EINVAL, "llama.cpp cannot make a context "
				"of %u for %s: %s", n_ctx, gguf_path,
				g_last[0] ? g_last : "(no reason logged)");
		goto fail;
	}
	r->n_ctx = n_ctx;
	r->n_batch = n_batch;
	if (n_threads <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = c > 0 && c < 512 ? (int)c : 1;
	}
	L.set_n_threads(r->ctx, n_threads, n_threads);
	*out = r;
	return 0;
fail:
	ms_llref_close(r);
	return rc;
}

int ms_llref_open(struct ms_llref **out, const char *dir, const char *gguf_path,
		  uint32_t n_ctx, int n_threads, struct ms_err *err)
{
	struct ms_llref_opts o = { .n_ctx = n_ctx, .n_threads = n_threads };
	return open_common(out, dir, gguf_path, false, &o, err);
}

int ms_llref_open_opts(struct ms_llref **out, const char *dir,
		       const char *gguf_path, const struct ms_llref_opts *o,
		       struct ms_err *err)
{
	return open_common(out, dir, gguf_path, false, o, err);
}

int ms_llref_open_vocab(struct ms_llref **out, const char *dir,
			const char *gguf_path, struct ms_err *err)
{
	struct ms_llref_opts o = { 0 };
	return open_common(out, dir, gguf_path, true, &o, err);
}

void ms_llref_close(struct ms_llref *r)
{
	if (!r)
		return;
	if (r->ctx)
		L.free_ctx(r->ctx);
	if (r->model)
		L.model_free(r->model);
	free(r);
}

int32_t ms_llref_n_vocab(const struct ms_llref *r)
{
	return r->n_vocab;
}

int ms_llref_tokenize(struct ms_llref *r, const char *text, size_t len,
		      bool add_special, bool parse_special, int32_t **ids,
		      size_t *n, struct ms_err *err)
{
	*ids = NULL;
	*n = 0;
	if (len > INT32_MAX / 2)
		return ms_err_set(err, -E2BIG, "text of %zu bytes is too long for "
				  "llama_tokenize", len);
	/* At most one token a byte, plus BOS and EOS. */
	int32_t cap = (int32_t)len + 2;
	int32_t *t = malloc((size_t)cap * sizeof(*t));
	if (!t)
		return ms_err_set(err, -ENOMEM, "out of memory");
	int32_t got = L.tokenize(r->vocab, text, (int32_t)len, t, cap,
				 add_special, parse_special);
	if (got < 0 && got != INT32_MIN) {
		cap = -got;
		int32_t *t2 = realloc(t, (size_t)cap * sizeof(*t));
		if (!t2) {
			free(t);
			return ms_err_set(err, -ENOMEM, "out of memory");
		}
		t = t2;
		got = L.tokenize(r->vocab, text, (int32_t)len, t, cap, add_special,
				 parse_special);
	}
	if (got < 0) {
		free(t);
		return ms_err_set(err, -EIO, "llama_tokenize failed (%d)", got);
	}
	if (got == 0) {
		free(t);
		return 0;
	}
	*ids = t;
	*n = (size_t)got;
	return 0;
}

int ms_llref_piece(struct ms_llref *r, int32_t id, bool special, char *buf,
		   size_t cap)
{
	if (id < 0 || id >= r->n_vocab)
		return -EINVAL;
	int32_t c = cap > INT32_MAX ? INT32_MAX : (int32_t)cap;
	int32_t got = L.token_to_piece(r->vocab, id, buf, c, 0, special);
	return got < 0 ? -ENOBUFS : got;
}

void ms_llref_reset(struct ms_llref *r)
{
	if (r->ctx)
		L.memory_clear(L.get_memory(r->ctx), true);
}

/* One llama_decode of ids[0..n); logits of every token (all) or of the
 * last only, which is what llama.cpp computes when it is asked for no more:
 * the output head runs on the rows whose logits flag is set. */
static int do_decode(struct ms_llref *r, const int32_t *ids, size_t n,
		     int32_t pos0, float *logits, bool all, struct ms_err *err)
{
	if (!r->ctx)
		return ms_err_set(err, -EINVAL, "a vocab-only llama.cpp model "
				  "cannot decode");
	if (n == 0 || n > r->n_batch)
		return ms_err_set(err, -EINVAL, "decode of %zu tokens: give 1..%u "
				  "(the batch)", n, r->n_batch);
	if (pos0 < 0 || (uint64_t)pos0 + n > r->n_ctx)
		return ms_err_set(err, -EINVAL, "positions %d..%zu are past the "
				  "context of %u", pos0, (size_t)pos0 + n - 1,
				  r->n_ctx);
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= r->n_vocab)
			return ms_err_set(err, -EINVAL, "token %zu is id %d, not in "
					  "0..%d", i, ids[i], r->n_vocab - 1);
	struct llm_batch b = L.batch_init((int32_t)n, 0, 1);
	if (!b.token || b.embd || !b.pos || !b.n_seq_id || !b.seq_id ||
	    !b.logits || !b.seq_id[0] || b.seq_id[n]) {
		L.batch_free(b);
		return ms_err_set(err, -EPROTO, "llama_batch_init's result is not "
				  "laid out as llama_ref.c expects");
	}
	for (size_t i = 0; i < n; i++) {
		b.token[i] = ids[i];
		b.pos[i] = pos0 + (int32_t)i;
		b.n_seq_id[i] = 1;
		b.seq_id[i][0] = 0;
		b.logits[i] = all || i + 1 == n;
	}
	b.n_tokens = (int32_t)n;
	last_reset();
	int32_t rc = L.decode(r->ctx, b);
	int ret = 0;
	if (rc != 0) {
		ret = ms_err_set(err, -EIO, "llama_decode of %zu tokens returned "
				 "%d%s%s", n, rc, g_last[0] ? ": " : "", g_last);
		goto out;
	}
	for (size_t i = all ? 0 : n - 1; logits && i < n; i++) {
		const float *l = L.get_logits_ith(r->ctx, (int32_t)i);
		if (!l) {
			ret = ms_err_set(err, -EIO, "llama_get_logits_ith(%zu) is "
					 "NULL", i);
			goto out;
		}
		memcpy(logits + (all ? i : 0) * (size_t)r->n_vocab, l,
		       (size_t)r->n_vocab * sizeof(float));
	}
out:
	b.n_tokens = 0; /* llama_batch_free frees by pointer, not by count */
	L.batch_free(b);
	return ret;
}

int ms_llref_decode(struct ms_llref *r, const int32_t *ids, size_t n,
		    int32_t pos0, float *logits, struct ms_err *err)
{
	return do_decode(r, ids, n, pos0, logits, true, err);
}

int ms_llref_decode_last(struct ms_llref *r, const int32_t *ids, size_t n,
			 int32_t pos0, float *logits, struct ms_err *err)
{
	return do_decode(r, ids, n, pos0, logits, false, err);
}

/* The libraries alone (no model), for the calls that need none. */
static int load_only(const char *dir, struct ms_err *err)
{
	char d[PATH_MAX];
	ms_llref_default_dir(dir, d, sizeof(d));
	pthread_mutex_lock(&g_mu);
	int rc = do_load(d, err);
	pthread_mutex_unlock(&g_mu);
	return rc;
}

int ms_llref_chat_apply(const char *dir, const char *tmpl,
			const struct ms_chat_msg *msgs, size_t n, bool add_ass,
			char **out, struct ms_err *err)
{
	*out = NULL;
	int rc = load_only(dir, err);
	if (rc)
		return rc;
	if (!tmpl)
		return ms_err_set(err, -EINVAL, "no template given");
	if (n > INT32_MAX / 2)
		return ms_err_set(err, -E2BIG, "%zu messages", n);
	struct llm_chat_message *m = calloc(n ? n : 1, sizeof(*m));
	if (!m)
		return ms_err_set(err, -ENOMEM, "out of memory");
	/* The buffer llama.cpp suggests: twice the characters given. */
	size_t need = 64;
	for (size_t i = 0; i < n; i++) {
		m[i].role = msgs[i].role;
		m[i].content = msgs[i].content;
		need += 2 * (strlen(msgs[i].role) + strlen(msgs[i].content)) + 64;
	}
	if (need > INT32_MAX)
		need = INT32_MAX;
	char *buf = NULL;
	for (int tries = 0; tries < 2; tries++) {
		char *b2 = realloc(buf, need + 1);
		if (!b2) {
			rc = ms_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		buf = b2;
		last_reset();
		int32_t got = L.chat_apply_template(tmpl, m, n, add_ass, buf,
						    (int32_t)need);
		if (got < 0) {
			char first[64];
			snprintf(first, sizeof(first), "%.*s",
				 (int)strcspn(tmpl, "\n"), tmpl);
			rc = ms_err_set(err, -ENOTSUP, "llama_chat_apply_template "
					"does not know the template \"%s\" (%d)",
					first, got);
			goto out;
		}
		if ((size_t)got <= need) {
			buf[got] = '\0';
			*out = buf;
			buf = NULL;
			goto out;
		}
		need = (size_t)got;
	}
	rc = ms_err_set(err, -EIO, "llama_chat_apply_template changed its "
			"length between two calls");
out:
	free(buf);
	free(m);
	return rc;
}
