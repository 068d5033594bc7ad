/*
 * t_byteflip.c - byte-flip fuzzing of real model headers written by ggml.
 *
 * Four small MoE models are written with ggml's own writer (tests/ggml_ref.h:
 * glm4moe with a dense lead block, NextN and a shared expert; qwen3moe;
 * gpt-oss with MXFP4 and 64-byte alignment; a fused gate_up model). For
 * each, thousands of cases flip 1 or 2 bytes of the metadata region (the
 * header, the KVs and the tensor infos: everything before the data section;
 * half the cases aim at the tensor infos, where offsets, types and dims
 * live), in place in the file, then restore them. Each case is read by
 *
 *   - ours: ms_gguf_open, then ms_model_open (the expert map);
 *   - ggml: gguf_init_from_file in a worker process (ggml answers some bad
 *     input with abort(); a crash or hang there is counted, not fatal, and
 *     the worker replaced), which hands back its view through shared
 *     memory.
 *
 * Every case must be rejected cleanly or parsed consistently:
 *
 *   - rejected: a negative errno, the same in err.code, a message;
 *   - accepted by ours: every tensor's data lies inside the file, its
 *     absolute offset is data_offset + offset, its size is what its type and
 *     dims make; accepted as a model: every expert extent lies inside the
 *     file;
 *   - accepted by both: same version, alignment, data offset, KV and tensor
 *     counts, and for every tensor (found by name in ggml) the same offset,
 *     size, type and dims.
 *
 * A failing case prints the model, the case number and the flipped bytes
 * (offset: old -> new, in hex) so it can be replayed. Figures at the end:
 * cases run, accepted by ours / by ggml / by both, ours-only and ggml-only
 * acceptances, ggml crashes. MS_SEED picks other flips (the default seed is
 * fixed, so CI runs the same cases every time); MS_BYTEFLIP_CASES sets the
 * cases per model.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemontest.h"
#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

enum { F32 = 0, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q6_K = 14,
       IQ4_XS = 23, BF16 = 30, MXFP4 = 39 };

#define MAX_T 512

/* ggml's view of a file, written by the child. */
struct gview {
	char path[1024];          /* the file to read */
	int state;                /* 0 not run, 1 accepted, 2 rejected */
	uint32_t version;
	uint64_t alignment, data_offset, n_kv, n_tensors;
	struct {
		char name[64];
		uint64_t offset, size;
		int type;
		int64_t ne[4];
	} t[MAX_T];
};

struct mcase {
	const char *name;
	struct ggml_ref_moe m;
};

static const struct mcase models[] = {
	{ "glm4moe", { .arch = "glm4moe", .n_block = 4, .n_expert = 8,
		       .n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		       .n_ff_dense = 512, .n_vocab = 256, .n_leading_dense = 1,
		       .n_nextn = 1, .n_shared = 1, .probs_bias = true,
		       .type = { Q2_K, Q2_K, Q3_K }, .resident_type = Q8_0 } },
	{ "qwen3moe", { .arch = "qwen3moe", .n_block = 3, .n_expert = 8,
			.n_expert_used = 2, .n_embd = 256, .n_ff = 256,
			.n_ff_dense = 512, .n_vocab = 256,
			.type = { Q4_K, Q4_K, Q6_K }, .resident_type = Q8_0 } },
	{ "gpt-oss", { .arch = "gpt-oss", .n_block = 3, .n_expert = 8,
		       .n_expert_used = 2, .n_embd = 288, .n_ff = 288,
		       .n_ff_dense = 288, .n_vocab = 200, .expert_bias = true,
		       .type = { MXFP4, MXFP4, MXFP4 }, .resident_type = BF16,
		       .alignment = 64 } },
	{ "fused", { .arch = "qwen3moe", .n_block = 3, .n_expert = 8,
		     .n_expert_used = 2, .n_embd = 256, .n_ff = 256,
		     .n_ff_dense = 512, .n_vocab = 256, .fused = true,
		     .type = { IQ4_XS, IQ4_XS, Q4_K }, .resident_type = F32 } },
};
#define N_MODELS (sizeof(models) / sizeof(models[0]))

static struct ggml_ref ref;
static struct gview *gv; /* shared with the child */

/* Figures. */
static unsigned long n_cases, n_ours, n_ours_model, n_ggml, n_both, n_ours_only,
	n_ggml_only, n_ggml_crash, n_ggml_hang, n_bad;

/* ggml's reader runs in a worker process (ggml answers some bad input with
 * abort(), and a sanitizer build aborts on the huge allocation a flipped
 * count asks for): the parent writes a byte, the worker reads gv->path,
 * fills *gv, answers a byte. A worker that dies or hangs is counted, killed
 * and replaced. One worker serves thousands of cases: no fork per case. */
static pid_t worker = -1;
static int to_worker = -1, from_worker = -1;

static void worker_main(int rd, int wr)
{
	int nul = open("/dev/null", O_WRONLY);
	if (nul >= 0) {
		dup2(nul, 1);
		dup2(nul, 2);
	}
	char c;
	while (read(rd, &c, 1) == 1) {
		struct gguf_init_params p = { .no_alloc = true, .ctx = NULL };
		struct gguf_context *g = ref.gguf_init_from_file(gv->path, p);
		if (!g) {
			gv->state = 2;
		} else {
			gv->version = ref.gguf_get_version(g);
			gv->alignment = ref.gguf_get_alignment(g);
			gv->data_offset = ref.gguf_get_data_offset(g);
			gv->n_kv = (uint64_t)ref.gguf_get_n_kv(g);
			gv->n_tensors = (uint64_t)ref.gguf_get_n_tensors(g);
			for (int64_t i = 0; i < (int64_t)gv->n_tensors && i < MAX_T; i++) {
				snprintf(gv->t[i].name, sizeof(gv->t[i].name), "%s",
					 ref.gguf_get_tensor_name(g, i));
				gv->t[i].offset = ref.gguf_get_tensor_offset(g, i);
				gv->t[i].size = ref.gguf_get_tensor_size(g, i);
				gv->t[i].type = ref.gguf_get_tensor_type(g, i);
				memcpy(gv->t[i].ne, ref.gguf_get_tensor_ne(g, i),
				       sizeof(gv->t[i].ne));
			}
			ref.gguf_free(g);
			gv->state = 1;
		}
		if (write(wr, "k", 1) != 1)
			break;
	}
	_exit(0);
}

static void worker_stop(void)
{
	if (worker <= 0)
		return;
	close(to_worker);
	close(from_worker);
	kill(worker, SIGKILL);
	waitpid(worker, NULL, 0);
	dt_untrack(worker);
	worker = -1;
}

static void worker_start(void)
{
	int a[2], b[2];
	if (pipe2(a, O_CLOEXEC) || pipe2(b, O_CLOEXEC))
		t_fatal("pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		close(a[1]);
		close(b[0]);
		worker_main(a[0], b[1]);
	}
	close(a[0]);
	close(b[1]);
	dt_track(pid);
	worker = pid;
	to_worker = a[1];
	from_worker = b[0];
}

/* Runs ggml's reader on `path` (in the worker); fills *gv. */
static void ggml_view(const char *path)
{
	memset(gv, 0, sizeof(*gv));
	snprintf(gv->path, sizeof(gv->path), "%s", path);
	if (worker <= 0)
		worker_start();
	struct pollfd p = { .fd = from_worker, .events = POLLIN };
	char c;
	if (write(to_worker, "g", 1) == 1 && poll(&p, 1, 10000) == 1 &&
	    read(from_worker, &c, 1) == 1)
		return;
	/* It died (a crash: EOF) or hung (no answer in 10 s). */
	bool hung = poll(&p, 1, 0) == 0;
	worker_stop();
	if (hung)
		n_ggml_hang++;
	else
		n_ggml_crash++;
	gv->state = 2;
}

/* The case as text: "@0x1a3: 41 -> be, @0x2f0: 07 -> 00". */
static char flips_text[256];

static void bad(const char *model, unsigned k, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void bad(const char *model, unsigned k, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n_bad++;
	t_fail_at(__FILE__, __LINE__, "%s case %u [%s]: %s", model, k, flips_text,
		  msg);
}

static void check_err(const char *model, unsigned k, const char *what, int rc,
		      const struct ms_err *err)
{
	if (rc >= 0 || err->code != rc || !err->msg[0] ||
	    !memchr(err->msg, '\0', sizeof(err->msg)))
		bad(model, k, "%s refused it without a clean error (rc %d, code %d, "
		    "message '%s')", what, rc, err->code, err->msg);
}

/* Our reader's promises on what it accepted. */
static void check_ours(const char *model, unsigned k, const struct ms_gguf *g,
		       uint64_t fsize)
{
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct ms_gguf_tensor *t = &g->tensors[i];
		uint64_t row, size;
		struct ms_err e = { 0 };
		if (t->file_offset != g->data_offset + t->offset ||
		    t->file_offset > fsize || t->size > fsize - t->file_offset) {
			bad(model, k, "tensor %s at %llu + %llu bytes: outside the file "
			    "(%llu bytes, data at %llu)", t->name,
			    (unsigned long long)t->file_offset,
			    (unsigned long long)t->size, (unsigned long long)fsize,
			    (unsigned long long)g->data_offset);
			continue;
		}
		if (ms_type_row_size(t->type, t->ne[0], &row, &e) ||
		    __builtin_mul_overflow(row, (uint64_t)t->ne[1], &size) ||
		    __builtin_mul_overflow(size, (uint64_t)t->ne[2], &size) ||
		    __builtin_mul_overflow(size, (uint64_t)t->ne[3], &size) ||
		    size != t->size)
			bad(model, k, "tensor %s: %llu bytes, its type and dims make "
			    "another size", t->name, (unsigned long long)t->size);
	}
}

static void check_model(const char *model, unsigned k, const struct ms_model *m,
			uint64_t fsize)
{
	for (uint32_t l = 0; l < m->n_layers; l++)
		for (uint32_t e = 0; e < m->n_expert; e++) {
			const struct ms_extent *x = ms_model_expert(m, l, e);
			for (uint32_t j = 0; x && j < m->layers[l].n_proj; j++)
				if (x[j].shard != 0 || x[j].offset > fsize ||
				    x[j].bytes > fsize - x[j].offset)
					bad(model, k, "layer %u expert %u projection %u: "
					    "%llu + %llu bytes outside the file (%llu)",
					    l, e, j, (unsigned long long)x[j].offset,
					    (unsigned long long)x[j].bytes,
					    (unsigned long long)fsize);
		}
}

/* Both accepted: they must agree. */
static void compare(const char *model, unsigned k, const struct ms_gguf *g)
{
	if (g->version != gv->version || g->alignment != gv->alignment ||
	    g->data_offset != gv->data_offset || g->n_kv != gv->n_kv ||
	    g->n_tensors != gv->n_tensors) {
		bad(model, k, "ours: v%u align %u data %llu, %llu KVs, %llu tensors; "
		    "ggml: v%u align %llu data %llu, %llu KVs, %llu tensors",
		    g->version, g->alignment, (unsigned long long)g->data_offset,
		    (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors,
		    gv->version, (unsigned long long)gv->alignment,
		    (unsigned long long)gv->data_offset,
		    (unsigned long long)gv->n_kv, (unsigned long long)gv->n_tensors);
		return;
	}
	for (uint64_t i = 0; i < g->n_tensors && i < MAX_T; i++) {
		const struct ms_gguf_tensor *t = &g->tensors[i];
		uint64_t j = 0;
		while (j < gv->n_tensors && j < MAX_T && strcmp(gv->t[j].name, t->name))
			j++;
		if (j == gv->n_tensors || j == MAX_T) {
			bad(model, k, "tensor '%s' is not in ggml's view", t->name);
			continue;
		}
		if (gv->t[j].offset != t->offset || gv->t[j].size != t->size ||
		    gv->t[j].type != (int)t->type ||
		    memcmp(gv->t[j].ne, t->ne, sizeof(t->ne)))
			bad(model, k, "tensor %s: ours offset %llu size %llu type %u ne "
			    "%lld,%lld,%lld,%lld; ggml offset %llu size %llu type %d ne "
			    "%lld,%lld,%lld,%lld", t->name,
			    (unsigned long long)t->offset, (unsigned long long)t->size,
			    t->type, (long long)t->ne[0], (long long)t->ne[1],
			    (long long)t->ne[2], (long long)t->ne[3],
			    (unsigned long long)gv->t[j].offset,
			    (unsigned long long)gv->t[j].size, gv->t[j].type,
			    (long long)gv->t[j].ne[0], (long long)gv->t[j].ne[1],
			    (long long)gv->t[j].ne[2], (long long)gv->t[j].ne[3]);
	}
}

/* Where the tensor infos begin: the first tensor's name, length-prefixed. */
static uint64_t tensor_info_start(const uint8_t *p, uint64_t meta,
				  const struct ms_gguf *g)
{
	if (!g->n_tensors)
		return 0;
	const char *name = g->tensors[0].name;
	size_t nl = strlen(name);
	uint8_t pat[8 + 64];
	uint64_t len = nl;
	memcpy(pat, &len, 8);
	memcpy(pat + 8, name, nl);
	const uint8_t *hit = memmem(p, meta, pat, 8 + nl);
	return hit ? (uint64_t)(hit - p) : 0;
}

static void run_model(const struct mcase *mc, unsigned cases, uint64_t *rs)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s.gguf", t_tmpdir(), mc->name);
	struct ggml_ref_moe m = mc->m;
	if (ggml_ref_write_moe(&ref, &m, path))
		t_fatal("%s: ggml could not write the model", mc->name);

	/* The unflipped file: both must read it, and agree. */
	struct ms_err err = { 0 };
	struct ms_gguf *g0 = NULL;
	if (ms_gguf_open(&g0, path, &err))
		t_fatal("%s: %s", mc->name, err.msg);
	ggml_view(path);
	if (gv->state != 1)
		t_fatal("%s: ggml cannot read its own file", mc->name);
	snprintf(flips_text, sizeof(flips_text), "unflipped");
	compare(mc->name, 0, g0);
	uint64_t meta = g0->data_offset, fsize = g0->file_size;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		t_fatal("open %s: %s", path, strerror(errno));
	uint8_t *orig = malloc(meta);
	if (!orig || pread(fd, orig, meta, 0) != (ssize_t)meta)
		t_fatal("read %s", path);
	uint64_t ti = tensor_info_start(orig, meta, g0);
	ms_gguf_free(g0);
	printf("%-9s %8llu bytes, %llu of metadata (tensor infos from %llu)\n",
	       mc->name, (unsigned long long)fsize, (unsigned long long)meta,
	       (unsigned long long)ti);

	static const uint8_t hostile[] = { 0x00, 0xff, 0x80, 0x7f, 0x01, 0x40 };
	unsigned long acc0 = n_ours, both0 = n_both;
	for (unsigned k = 1; k <= cases; k++) {
		unsigned nflip = 1 + (unsigned)(t_rand(rs) % 2);
		uint64_t at[2];
		uint8_t nv[2];
		size_t tl = 0;
		flips_text[0] = '\0';
		for (unsigned f = 0; f < nflip; f++) {
			bool infos = ti && t_rand(rs) % 2;
			uint64_t lo = infos ? ti : 0;
			at[f] = lo + t_rand(rs) % (meta - lo);
			uint8_t ov = orig[at[f]];
			if (t_rand(rs) % 3)
				nv[f] = (uint8_t)(ov ^ (1 + t_rand(rs) % 255));
			else
				nv[f] = hostile[t_rand(rs) % sizeof(hostile)];
			if (nv[f] == ov)
				nv[f] = (uint8_t)~ov;
			tl += (size_t)snprintf(flips_text + tl, sizeof(flips_text) - tl,
					       "%s@0x%llx: %02x -> %02x", f ? ", " : "",
					       (unsigned long long)at[f], ov, nv[f]);
			if (pwrite(fd, &nv[f], 1, (off_t)at[f]) != 1)
				t_fatal("pwrite: %s", strerror(errno));
		}
		n_cases++;

		ggml_view(path);
		bool gok = gv->state == 1;
		struct ms_gguf *g = NULL;
		memset(&err, 0, sizeof(err));
		int grc = ms_gguf_open(&g, path, &err), rc;
		if (grc) {
			check_err(mc->name, k, "ms_gguf_open", grc, &err);
			if (g)
				bad(mc->name, k, "ms_gguf_open failed but left an object");
		} else {
			n_ours++;
			check_ours(mc->name, k, g, fsize);
			if (gok) {
				n_both++;
				compare(mc->name, k, g);
			} else if (++n_ours_only <= 5) {
				printf("  ours only (ggml refuses): %s case %u [%s]\n",
				       mc->name, k, flips_text);
			}
			struct ms_model *mm = NULL;
			memset(&err, 0, sizeof(err));
			rc = ms_model_open(&mm, path, &err);
			if (rc) {
				check_err(mc->name, k, "ms_model_open", rc, &err);
			} else {
				n_ours_model++;
				check_model(mc->name, k, mm, fsize);
				ms_model_free(mm);
			}
			ms_gguf_free(g);
		}
		if (gok) {
			n_ggml++;
			if (grc)
				n_ggml_only++;
		}
		/* restore, in reverse (the two flips may hit the same byte) */
		for (unsigned f = nflip; f-- > 0;)
			if (pwrite(fd, &orig[at[f]], 1, (off_t)at[f]) != 1)
				t_fatal("pwrite: %s", strerror(errno));
	}
	printf("%-9s %u cases: ours accepted %lu (%lu also by ggml)\n", mc->name,
	       cases, n_ours - acc0, n_both - both0);
	close(fd);
	free(orig);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	ms_log_threshold = MS_LOG_ERR - 1; /* messages are checked, not shown */
	ggml_ref_load_or_fail(&ref);
	gv = mmap(NULL, sizeof(*gv), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (gv == MAP_FAILED)
		t_fatal("mmap: %s", strerror(errno));
	uint64_t seed = getenv("MS_SEED") ? t_seed() : 0xb17f11b5ull;
	unsigned cases = 2500;
	const char *e = getenv("MS_BYTEFLIP_CASES");
	if (e && atoi(e) > 0)
		cases = (unsigned)atoi(e);
	printf("MS_SEED=%llu, %u cases per model\n", (unsigned long long)seed,
	       cases);
	int64_t t0 = dt_now_ms();
	for (size_t i = 0; i < N_MODELS; i++) {
		uint64_t rs = seed ^ (0x9e3779b97f4a7c15ull * (i + 1));
		run_model(&models[i], cases, &rs);
	}
	/* A failed check in a bad() call cannot be lost in the noise above. */
	printf("byteflip: %lu cases in %.1f s: ours accepted %lu (as a model %lu), "
	       "ggml %lu, both %lu; ours only %lu, ggml only %lu; ggml crashed "
	       "%lu, hung %lu; inconsistent %lu\n",
	       n_cases, (double)(dt_now_ms() - t0) / 1000.0, n_ours, n_ours_model,
	       n_ggml, n_both, n_ours_only, n_ggml_only, n_ggml_crash, n_ggml_hang,
	       n_bad);
	worker_stop();
	return t_done();
}
