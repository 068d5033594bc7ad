/*
 * plan.c - `moestream plan`: what a machine will get from a MoE model, from
 * the model's headers (or an mkmodel preset's shape) and a few short
 * measurements, before anything is downloaded or loaded.
 *
 * The model of a decode step (the engine's own: engine/forward.c):
 *
 *   compute  every tensor a token uses goes through a one-token product
 *            once: the resident tensors of the blocks run and the output
 *            (token_embd is one row), and k routed experts per MoE layer.
 *            Each distinct tensor shape and type of the model, and each
 *            expert shape, is timed here with the engine's kernels and
 *            threads (ms_matmul / ms_expert_ffn on valid blocks, the median
 *            of three 0.1 s runs; a matrix over 64 MiB on 64 MiB of its
 *            rows, scaled), cold (each call on the next of enough copies
 *            to pass 256 MiB, as a decode step meets weights that are not
 *            in a cache), so the per-call cost of small products counts;
 *            --cpu-gbps gives one rate for every byte instead.
 *   disk     the routed experts the cache does not hold: miss rate x k
 *            expert bytes per layer, over the disk's rate for whole-expert
 *            O_DIRECT reads (measured on --disk PATH, the model file by
 *            default: 2 s of random expert-sized reads, 8 in flight; or
 *            --disk-gbps).
 *   overlap  reads of the next layer's experts run under this layer's
 *            compute (speculative routing; make bench measured decode wall
 *            = max(disk, compute) within 1%), so a token takes
 *            max(compute, disk).
 *   hits     LRU over a routing trace (mkmodel-calibrated synthetic
 *            routing, 1000 tokens, or --trace), with the cache the RAM
 *            left: RAM - resident - KV - 1 GiB for the OS and the process.
 *
 * With --vram: the resident tensors go to the GPU when they fit with the KV
 * cache and 1 GiB, and the VRAM left is a first expert tier in front of the
 * RAM one; the GPU's rate is --gpu-gbps (the GPU decoder, run --device
 * gpu, has not been measured on a GPU yet: the GPU line is a projection
 * and says so), copies
 * from RAM to VRAM at --pcie-gbps. A token then takes max(GPU compute,
 * PCIe copies of RAM hits and misses, disk reads of misses).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/cache.h"
#include "moestream/kernels.h"
#include "moestream/moestream.h"
#include "bench_e2e.h"
#include "sim.h"
#include "tools.h"
#include "trace.h"

#define CMD "plan"
#define GIB (1ull << 30)
#define MIB (1ull << 20)
#define OS_RESERVE GIB                 /* the OS, the process, its buffers */
#define N_TRACE 1000
#define N_CTX 4096

static const char usage_line[] =
	"usage: moestream plan (MODEL | --preset NAME) [--ram SZ] [--vram SZ] "
	"[--disk PATH | --disk-gbps X]\n"
	"       [--cpu-gbps X] [--gpu-gbps X] [--pcie-gbps X] [--trace T] "
	"[--ctx N] [--cache-size X] [--json]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Says what this machine (or one described) will get from a MoE "
		"model before it\nis downloaded: where the resident tensors go, how "
		"big the expert caches are,\ntheir hit rates on a routing trace, "
		"the bytes a token reads, and the decode\ntok/s that follows, for "
		"the RAM given and for 32, 64, 96 and 128 GB; then the\nsettings "
		"to use. It reads the model's headers only (a split model's first "
		"shard\nis enough), or an mkmodel preset's shape (moestream mkmodel "
		"--help lists them).\n"
		"\noptions:\n"
		"  --preset NAME     a preset's shape instead of a file\n"
		"  --ram SIZE        the RAM (default: this machine's, or its cgroup "
		"limit)\n"
		"  --vram SIZE       a GPU's memory (default 0: CPU only)\n"
		"  --disk PATH       measure whole-expert O_DIRECT reads on PATH (a "
		"file of\n"
		"                    256 MB or more; default: the model file)\n"
		"  --disk-gbps X     the disk's rate instead (GB/s)\n"
		"  --cpu-gbps X      the CPU's dequantise-and-dot rate instead of "
		"measuring it\n"
		"                    per type (GB/s of quantised weights, one token; "
		"measured:\n"
		"                    the median of three 0.2 s runs per type)\n"
		"  --gpu-gbps X      the GPU decoder's rate for the projection "
		"(default 400)\n"
		"  --pcie-gbps X     host to GPU copies (default 25: PCIe 4.0 x16)\n"
		"  --trace T         a routing trace (moestream trace gen/import) "
		"instead of\n"
		"                    1000 synthetic tokens\n"
		"  --ctx N           the context the KV cache holds (default %u)\n"
		"  --cache-size X    the RAM expert cache itself (a size, or a share "
		"of the\n"
		"                    experts such as 25%%) instead of the RAM left\n"
		"  --json            the plan as JSON\n"
		"\nexamples:\n"
		"  moestream plan GLM-4.7-UD-Q2_K_XL-00001-of-00003.gguf\n"
		"  moestream plan --preset glm4.7-ud-q2_k_xl --ram 32G --vram 24G "
		"--disk-gbps 7\n"
		"exit codes: 0 a plan (also one that says the model cannot run), 1 "
		"failed\n(model unreadable, disk test failed), 2 bad usage\n",
		usage_line, N_CTX);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_gbps(const char *opt, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0 && v < 1e5)) {
		tool_error(CMD, "%s '%s': a rate in GB/s, such as 7 or 1.5", opt, s);
		return -1;
	}
	*out = v;
	return 0;
}

/* ---- the model ------------------------------------------------------------------------ */

struct mfig {
	uint64_t resident_tok;       /* resident bytes a token computes */
	uint64_t resident, kv, routed_per_token, experts_run;
	uint32_t n_run, n_moe;
	bool tied;                   /* no output.weight: token_embd is it */
};

static bool is_routed(const char *name)
{
	return strstr(name, "_exps.") != NULL;
}

static int block_of(const char *name)
{
	int b;
	return sscanf(name, "blk.%d.", &b) == 1 ? b : -1;
}

/* A resident tensor a token's step computes whole: those of the blocks run
 * (not NextN) and the output; token_embd is one row, unless the output is
 * tied to it. */
static bool computed_per_token(const struct ms_gguf_tensor *t, uint32_t n_run,
			       bool tied)
{
	if (block_of(t->name) >= (int)n_run || is_routed(t->name))
		return false;
	return tied || strcmp(t->name, "token_embd.weight");
}

static int model_figures(const struct ms_model *m, uint32_t n_ctx,
			 struct mfig *f, struct ms_err *err)
{
	memset(f, 0, sizeof(*f));
	uint32_t n_run = m->n_block - m->n_nextn;
	f->n_run = n_run;
	f->n_moe = m->n_layers_run;
	f->resident = m->resident_bytes;
	f->experts_run = m->expert_bytes_run;
	uint32_t sh;
	uint64_t ix;
	f->tied = ms_model_find_tensor(m, "output.weight", &sh, &ix) != 0;
	for (uint32_t s = 0; s < m->n_shards; s++) {
		const struct ms_gguf *g = m->shards[s];
		for (uint64_t i = 0; i < g->n_tensors; i++)
			if (computed_per_token(&g->tensors[i], n_run, f->tied))
				f->resident_tok += g->tensors[i].size;
	}
	/* a token's experts: k of each run layer's */
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		if (!L->nextn && L->block < n_run)
			f->routed_per_token +=
				(uint64_t)m->n_expert_used * L->expert_bytes;
	}
	/* the KV cache: the engine's f16 cache */
	uint32_t nr;
	return bench_e2e_kv_of(m, n_ctx, &f->kv, &nr, err);
}

/* A preset's headers: mkmodel --sparse into a temporary folder. */
static int preset_model(const char *name, char *path, size_t len,
			struct ms_err *err)
{
	char dir[] = "/tmp/moestream-plan-XXXXXX";
	if (!mkdtemp(dir))
		return ms_err_set(err, -errno, "mkdtemp: %s", strerror(errno));
	snprintf(path, len, "%s/%s.gguf", dir, name);
	pid_t pid = fork();
	if (pid < 0)
		return ms_err_set(err, -errno, "fork: %s", strerror(errno));
	if (!pid) {
		int dn = open("/dev/null", O_WRONLY);
		if (dn >= 0) {
			dup2(dn, 1);
			dup2(dn, 2);
		}
		execl("/proc/self/exe", "moestream", "mkmodel", "--preset", name,
		      "--sparse", "-o", path, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return ms_err_set(err, -EINVAL, "--preset '%s': not one mkmodel "
				  "knows (moestream mkmodel --help lists them)",
				  name);
	return 0;
}

static void preset_cleanup(const char *path)
{
	unlink(path);
	char d[4096];
	snprintf(d, sizeof(d), "%s", path);
	char *sl = strrchr(d, '/');
	if (sl) {
		*sl = 0;
		rmdir(d);
	}
}

/* ---- the machine ---------------------------------------------------------------------- */

/* Whole-expert O_DIRECT reads at random offsets of PATH, 8 in flight. */
static int disk_rate(const char *path, uint64_t chunk, double *gbps,
		     struct ms_err *err)
{
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return ms_err_set(err, -errno, "--disk %s: %s (or give --disk-gbps)",
				  path, strerror(errno));
	struct stat st;
	fstat(fd, &st);
	chunk = (chunk + 4095) / 4096 * 4096;
	if (chunk < MIB)
		chunk = MIB;
	if ((uint64_t)st.st_size < 256 * MIB || (uint64_t)st.st_size < 4 * chunk) {
		close(fd);
		return ms_err_set(err, -EINVAL, "--disk %s: %lld bytes; the test "
				  "needs a file of 256 MB or more (or give "
				  "--disk-gbps)", path, (long long)st.st_size);
	}
	enum { QD = 8 };
	struct io_uring ring;
	if (io_uring_queue_init(QD, &ring, 0)) {
		close(fd);
		return ms_err_set(err, -EIO, "io_uring_queue_init failed");
	}
	void *buf[QD];
	for (int i = 0; i < QD; i++)
		if (posix_memalign(&buf[i], 4096, chunk)) {
			for (int k = 0; k < i; k++)
				free(buf[k]);
			io_uring_queue_exit(&ring);
			close(fd);
			return ms_err_set(err, -ENOMEM, "out of memory");
		}
	uint64_t slots = ((uint64_t)st.st_size - chunk) / 4096, s = 0x9E3779B97F4A7C15ull;
	uint64_t done = 0;
	int inflight = 0, rc = 0;
	double t0 = now_s(), t1 = t0;
	for (int i = 0; i < QD; i++) {
		struct io_uring_sqe *q = io_uring_get_sqe(&ring);
		io_uring_prep_read(q, fd, buf[i], (unsigned)chunk,
				   (tool_splitmix(&s) % slots) * 4096);
		io_uring_sqe_set_data(q, buf[i]);
		inflight++;
	}
	io_uring_submit(&ring);
	while (inflight) {
		struct io_uring_cqe *cq;
		if (io_uring_wait_cqe(&ring, &cq)) {
			rc = -EIO;
			break;
		}
		void *b = io_uring_cqe_get_data(cq);
		int res = cq->res;
		io_uring_cqe_seen(&ring, cq);
		inflight--;
		if (res < 0) {
			rc = res;
			break;
		}
		done += (uint64_t)res;
		t1 = now_s();
		if (t1 - t0 < 2.0 && done < 8 * GIB) {
			struct io_uring_sqe *q = io_uring_get_sqe(&ring);
			io_uring_prep_read(q, fd, b, (unsigned)chunk,
					   (tool_splitmix(&s) % slots) * 4096);
			io_uring_sqe_set_data(q, b);
			io_uring_submit(&ring);
			inflight++;
		}
	}
	for (int i = 0; i < QD; i++)
		free(buf[i]);
	io_uring_queue_exit(&ring);
	close(fd);
	if (rc)
		return ms_err_set(err, rc, "--disk %s: a read failed: %s", path,
				  strerror(-rc));
	*gbps = t1 > t0 ? (double)done / (t1 - t0) / 1e9 : 0;
	return 0;
}

/* Seconds a call takes, the median of three runs of 0.1 s at least. */
static double median_call_s(void (*fn)(void *), void *ctx)
{
	fn(ctx); /* warm */
	double r[3];
	for (int k = 0; k < 3; k++) {
		int it = 0;
		double t0 = now_s(), t;
		do {
			fn(ctx);
			it++;
			t = now_s();
		} while (t - t0 < 0.1);
		r[k] = (t - t0) / it;
	}
	qsort(r, 3, sizeof(double), tool_cmp_double);
	return r[1];
}

/* Weights are timed cold, as a decode step meets them: each call takes the
 * next of `copies` copies of the matrix (or expert), 256 MiB in all, more
 * than a last-level cache holds. */
#define COLD_BYTES (256 * MIB)

struct mm_ctx {
	uint32_t type;
	int64_t n_in, n_out;
	uint8_t *w;
	uint64_t bytes;              /* one copy (one projection: part[]) */
	unsigned copies, next;
	float *x, *y;
	struct ms_ffn_opts o;
	struct ms_expert_view v;
	uint8_t *part[3];
	uint64_t part_bytes[3];
};

static unsigned copies_for(uint64_t bytes)
{
	uint64_t c = (COLD_BYTES + bytes - 1) / (bytes ? bytes : 1);
	return c < 1 ? 1 : c > 256 ? 256 : (unsigned)c;
}

static void mm_call(void *c)
{
	struct mm_ctx *m = c;
	const uint8_t *w = m->w + (uint64_t)(m->next++ % m->copies) * m->bytes;
	ms_matmul(m->type, w, m->n_in, m->n_out, m->x, m->y, 1, &m->o, NULL);
}

static void ffn_call(void *c)
{
	struct mm_ctx *m = c;
	unsigned k = m->next++ % m->copies;
	for (int p = 0; p < 3; p++)
		if (m->part[p])
			m->v.data[p] = m->part[p] + (uint64_t)k * m->part_bytes[p];
	ms_expert_ffn(&m->v, m->x, m->y, 1, &m->o, NULL);
}

static float *input_of(int64_t n)
{
	float *x = malloc((size_t)n * sizeof(float));
	for (int64_t i = 0; x && i < n; i++)
		x[i] = (float)((i % 13) - 6) / 8.0f;
	return x;
}

/* One decode-step product W (n_out x n_in) . x with the engine's kernels
 * and threads: seconds per call. A matrix over 64 MiB is timed on 64 MiB
 * of its rows and scaled (the output layer). */
static double matmul_s(uint32_t type, int64_t n_in, int64_t n_out,
		       struct ms_ffn_pool *pool)
{
	uint64_t row;
	if (ms_type_row_size(type, n_in, &row, NULL) || !row)
		return 0;
	int64_t rows = n_out, cap = (int64_t)(64 * MIB / row);
	rows = rows > cap ? cap : rows;
	rows = rows < 1 ? 1 : rows;
	struct mm_ctx c = { .type = type, .n_in = n_in, .n_out = rows,
			    .o = { .pool = pool } };
	c.bytes = (uint64_t)rows * row;
	c.copies = copies_for(c.bytes);
	c.w = malloc(c.bytes * c.copies);
	c.x = input_of(n_in);
	c.y = malloc((size_t)rows * sizeof(float));
	double t = 0;
	if (c.w && c.x && c.y) {
		uint64_t s = 7;
		tool_fill_blocks(c.w, c.bytes, type, &s);
		for (unsigned k = 1; k < c.copies; k++)
			memcpy(c.w + k * c.bytes, c.w, c.bytes);
		t = median_call_s(mm_call, &c) * (double)n_out / (double)rows;
	}
	free(c.w);
	free(c.x);
	free(c.y);
	return t;
}

/* One routed expert's FFN, as a layer of `L`'s shape and types holds it. */
static double expert_s(const struct ms_moe_layer *L, struct ms_ffn_pool *pool)
{
	int64_t E = L->ne[0][0], F = L->fused ? L->ne[0][1] / 2 : L->ne[0][1];
	struct mm_ctx c = { .o = { .pool = pool } };
	c.v.fused = L->fused;
	c.v.n_embd = E;
	c.v.n_ff = F;
	bool ok = true;
	uint64_t one = 0;
	for (uint32_t p = 0; p < L->n_proj && p < 3; p++) {
		uint64_t row;
		if (ms_type_row_size(L->type[p], L->ne[p][0], &row, NULL)) {
			ok = false;
			break;
		}
		c.part_bytes[p] = row * (uint64_t)L->ne[p][1];
		one += c.part_bytes[p];
	}
	c.copies = copies_for(one);
	for (uint32_t p = 0; ok && p < L->n_proj && p < 3; p++) {
		uint64_t bytes = c.part_bytes[p];
		c.part[p] = malloc(bytes * c.copies);
		if (!c.part[p]) {
			ok = false;
			break;
		}
		uint64_t s = 11 + p;
		tool_fill_blocks(c.part[p], bytes, L->type[p], &s);
		for (unsigned k = 1; k < c.copies; k++)
			memcpy(c.part[p] + k * bytes, c.part[p], bytes);
		c.v.type[p] = L->type[p];
		c.v.data[p] = c.part[p];
	}
	c.x = input_of(E);
	c.y = malloc((size_t)E * sizeof(float));
	double t = ok && c.x && c.y ? median_call_s(ffn_call, &c) : 0;
	for (int p = 0; p < 3; p++)
		free(c.part[p]);
	free(c.x);
	free(c.y);
	return t;
}

/* The CPU's time for a token's products, measured on the model's own
 * shapes: every 2-D resident tensor of the blocks run (each distinct shape
 * and type timed once) and k experts of each MoE layer run. */
static double cpu_token_s(const struct ms_model *m, const struct mfig *f,
			  struct ms_ffn_pool *pool, int *n_shapes)
{
	struct { uint32_t type; int64_t a, b; double t; } seen[64];
	int ns = 0;
	double total = 0;
	for (uint32_t sh = 0; sh < m->n_shards; sh++) {
		const struct ms_gguf *g = m->shards[sh];
		for (uint64_t i = 0; i < g->n_tensors; i++) {
			const struct ms_gguf_tensor *t = &g->tensors[i];
			if (!computed_per_token(t, f->n_run, f->tied) ||
			    t->n_dims < 2 || t->ne[1] < 2)
				continue; /* norms and biases: not products */
			int k = 0;
			while (k < ns && !(seen[k].type == t->type &&
					   seen[k].a == t->ne[0] && seen[k].b == t->ne[1]))
				k++;
			if (k == ns && ns < 64) {
				seen[ns].type = t->type;
				seen[ns].a = t->ne[0];
				seen[ns].b = t->ne[1];
				seen[ns].t = matmul_s(t->type, t->ne[0], t->ne[1], pool);
				ns++;
			}
			if (k < ns)
				total += seen[k].t;
		}
	}
	/* routed experts: layers of one shape share a timing */
	const struct ms_moe_layer *prev = NULL;
	double te = 0;
	for (uint32_t l = 0; l < m->n_layers; l++) {
		const struct ms_moe_layer *L = &m->layers[l];
		if (L->nextn || L->block >= f->n_run)
			continue;
		if (!prev || memcmp(prev->type, L->type, sizeof(L->type)) ||
		    memcmp(prev->ne, L->ne, sizeof(L->ne))) {
			te = expert_s(L, pool);
			ns++;
		}
		prev = L;
		total += (double)m->n_expert_used * te;
	}
	*n_shapes = ns;
	return total;
}

/* ---- the plan ------------------------------------------------------------------------- */

struct tiers {
	bool runs;
	char why[256];
	bool resident_on_gpu;
	uint64_t vram_cache, ram_cache;
	double hit_vram, hit_ram, miss;
	double t_compute, t_disk, t_pcie, tokps;
	bool gpu;
};

static double lru_hit(const struct ms_sim *sim, uint64_t bytes)
{
	if (!bytes)
		return 0;
	struct ms_sim_opts o = { .policy = MS_SIM_LRU, .cache_bytes = bytes };
	struct ms_sim_result r;
	if (bytes < sim->min_cache)
		return 0;
	if (ms_sim_run(sim, &o, &r, NULL))
		return 0;
	return ms_sim_hit_rate(&r);
}

struct machine {
	uint64_t ram, vram;
	double disk, gpu, pcie;
	double cpu_gbps;              /* given (--cpu-gbps), else 0 and: */
	uint64_t cache;               /* the RAM tier, given (0: RAM left) */
	double cpu_tok;               /* measured: a token's products, s */
	int n_shapes;
};

static void plan_for(const struct mfig *f, const struct ms_sim *sim,
		     const struct machine *mc, uint64_t ram, struct tiers *t)
{
	memset(t, 0, sizeof(*t));
	uint64_t need_host = OS_RESERVE;
	if (mc->vram && mc->vram >= f->resident + f->kv + GIB) {
		t->resident_on_gpu = true;
		t->gpu = true;
		t->vram_cache = mc->vram - f->resident - f->kv - GIB;
	} else {
		need_host += f->resident + f->kv;
		if (mc->vram > GIB)
			t->vram_cache = 0; /* resident tensors do not fit the GPU */
	}
	if (ram < need_host + 2 * GIB) {
		snprintf(t->why, sizeof(t->why), "the resident tensors (%.1f GB) "
			 "and the KV cache (%.2f GB) need %.1f GB of RAM with 1 GiB "
			 "for the system and 2 GiB of expert cache; this has %.1f GB",
			 (double)f->resident / 1e9, (double)f->kv / 1e9,
			 (double)(need_host + 2 * GIB) / 1e9, (double)ram / 1e9);
		return;
	}
	t->runs = true;
	t->ram_cache = mc->cache ? mc->cache : ram - need_host;
	if (t->ram_cache > f->experts_run)
		t->ram_cache = f->experts_run;
	if (t->vram_cache > f->experts_run)
		t->vram_cache = f->experts_run;
	double h_v = lru_hit(sim, t->vram_cache);
	double h_all = lru_hit(sim, t->vram_cache + t->ram_cache);
	if (t->vram_cache + t->ram_cache >= f->experts_run)
		h_all = 1.0 - (double)sim->distinct / (double)sim->n_access; /* cold misses only */
	t->hit_vram = h_v;
	t->hit_ram = h_all > h_v ? h_all - h_v : 0;
	t->miss = 1.0 - h_all;
	double routed = (double)f->routed_per_token / 1e9;
	double all = (double)(f->resident_tok + f->routed_per_token) / 1e9;
	t->t_disk = t->miss * routed / mc->disk;
	if (t->gpu) {
		t->t_compute = all / mc->gpu;
		t->t_pcie = (t->hit_ram + t->miss) * routed / mc->pcie;
	} else {
		t->t_compute = mc->cpu_gbps > 0 ? all / mc->cpu_gbps : mc->cpu_tok;
	}
	double tt = t->t_compute;
	tt = t->t_disk > tt ? t->t_disk : tt;
	tt = t->t_pcie > tt ? t->t_pcie : tt;
	t->tokps = tt > 0 ? 1.0 / tt : 0;
}

static const char *bound_of(const struct tiers *t)
{
	if (t->t_disk >= t->t_compute && t->t_disk >= t->t_pcie)
		return "disk";
	if (t->t_pcie >= t->t_compute)
		return "PCIe";
	return t->gpu ? "GPU compute" : "CPU compute";
}

static cJSON *tiers_json(const struct tiers *t, uint64_t ram)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "ram_bytes", (double)ram);
	cJSON_AddBoolToObject(o, "runs", t->runs);
	if (!t->runs) {
		cJSON_AddStringToObject(o, "why", t->why);
		return o;
	}
	cJSON_AddBoolToObject(o, "resident_on_gpu", t->resident_on_gpu);
	cJSON_AddNumberToObject(o, "vram_cache_bytes", (double)t->vram_cache);
	cJSON_AddNumberToObject(o, "ram_cache_bytes", (double)t->ram_cache);
	cJSON_AddNumberToObject(o, "hit_vram", t->hit_vram);
	cJSON_AddNumberToObject(o, "hit_ram", t->hit_ram);
	cJSON_AddNumberToObject(o, "miss", t->miss);
	cJSON_AddNumberToObject(o, "compute_s", t->t_compute);
	cJSON_AddNumberToObject(o, "disk_s", t->t_disk);
	cJSON_AddNumberToObject(o, "pcie_s", t->t_pcie);
	cJSON_AddNumberToObject(o, "decode_tokps", t->tokps);
	cJSON_AddStringToObject(o, "bound", bound_of(t));
	return o;
}

int cmd_plan(int argc, char **argv)
{
	enum { O_PRESET = 256, O_RAM, O_VRAM, O_DISK, O_DISKG, O_CPUG, O_GPUG,
	       O_PCIE, O_TRACE, O_CTX, O_JSON, O_CACHE };
	static const struct option opts[] = {
		{ "preset", required_argument, 0, O_PRESET },
		{ "ram", required_argument, 0, O_RAM },
		{ "vram", required_argument, 0, O_VRAM },
		{ "disk", required_argument, 0, O_DISK },
		{ "disk-gbps", required_argument, 0, O_DISKG },
		{ "cpu-gbps", required_argument, 0, O_CPUG },
		{ "gpu-gbps", required_argument, 0, O_GPUG },
		{ "pcie-gbps", required_argument, 0, O_PCIE },
		{ "trace", required_argument, 0, O_TRACE },
		{ "ctx", required_argument, 0, O_CTX },
		{ "json", no_argument, 0, O_JSON },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *preset = NULL, *disk = NULL, *trace = NULL, *cache_s = NULL;
	struct machine mc = { .gpu = 400, .pcie = 25 };
	uint32_t n_ctx = N_CTX;
	bool json = false;
	int ch;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case O_PRESET: preset = optarg; break;
		case O_RAM:
		case O_VRAM: {
			uint64_t v;
			if (ms_parse_size(optarg, &v) || (ch == O_RAM && !v)) {
				tool_error(CMD, "%s '%s': a size such as 32G",
					   ch == O_RAM ? "--ram" : "--vram", optarg);
				return EXIT_USAGE;
			}
			*(ch == O_RAM ? &mc.ram : &mc.vram) = v;
			break;
		}
		case O_DISK: disk = optarg; break;
		case O_DISKG:
			if (parse_gbps("--disk-gbps", optarg, &mc.disk))
				return EXIT_USAGE;
			break;
		case O_CPUG:
			if (parse_gbps("--cpu-gbps", optarg, &mc.cpu_gbps))
				return EXIT_USAGE;
			break;
		case O_GPUG:
			if (parse_gbps("--gpu-gbps", optarg, &mc.gpu))
				return EXIT_USAGE;
			break;
		case O_PCIE:
			if (parse_gbps("--pcie-gbps", optarg, &mc.pcie))
				return EXIT_USAGE;
			break;
		case O_TRACE: trace = optarg; break;
		case O_CTX:
			if (tool_parse_u32(CMD, "--ctx", optarg, &n_ctx) || !n_ctx)
				return EXIT_USAGE;
			break;
		case O_JSON: json = true; break;
		case O_CACHE: cache_s = optarg; break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	const char *model = optind < argc ? argv[optind] : NULL;
	if (optind + 1 < argc || !!model == !!preset) {
		tool_error(CMD, "give a MODEL file or --preset NAME (one of them)");
		return tool_bad_usage(usage_line);
	}
	if (disk && mc.disk > 0) {
		tool_error(CMD, "--disk and --disk-gbps exclude each other");
		return EXIT_USAGE;
	}
	if (preset && !disk && mc.disk <= 0) {
		tool_error(CMD, "--preset has no file to measure the disk on: give "
			   "--disk PATH (a file of 256 MB or more on that disk) or "
			   "--disk-gbps X");
		return EXIT_USAGE;
	}
	struct ms_err err = { 0 };
	char ppath[4096] = "";
	struct ms_model *m = NULL;
	struct ms_trace *tr = NULL;
	struct ms_sim *sim = NULL;
	uint64_t *lb = NULL;
	struct ms_ffn_pool *pool = NULL;
	int rc = 1;
	if (preset && preset_model(preset, ppath, sizeof(ppath), &err)) {
		tool_error(CMD, "%s", err.msg);
		return EXIT_USAGE;
	}
	if (ms_model_open(&m, preset ? ppath : model, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	if (!m->n_expert || !m->n_layers_run) {
		tool_error(CMD, "%s: no routed experts: plan is for MoE models",
			   preset ? preset : model);
		goto out;
	}
	struct mfig f;
	if (model_figures(m, n_ctx, &f, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	if (cache_s) {
		size_t l = strlen(cache_s);
		uint64_t v = 0;
		if (l && cache_s[l - 1] == '%') {
			double pct = atof(cache_s);
			if (!(pct > 0 && pct <= 100)) {
				tool_error(CMD, "--cache-size '%s': a percentage in "
					   "(0, 100]", cache_s);
				rc = EXIT_USAGE;
				goto out;
			}
			v = (uint64_t)((double)f.experts_run * pct / 100.0);
		} else if (ms_parse_size(cache_s, &v) || !v) {
			tool_error(CMD, "--cache-size '%s': a size such as 24G or a "
				   "share of the experts such as 25%%", cache_s);
			rc = EXIT_USAGE;
			goto out;
		}
		mc.cache = v;
	}
	bool measured_ram = !mc.ram;
	if (!mc.ram)
		ms_host_memory(&mc.ram, NULL);
	bool measured_disk = mc.disk <= 0;
	if (measured_disk && disk_rate(disk ? disk : model, m->expert_bytes_max,
				       &mc.disk, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}
	if (mc.cpu_gbps <= 0) {
		if (ms_ffn_pool_init(&pool, 0, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
		mc.cpu_tok = cpu_token_s(m, &f, pool, &mc.n_shapes);
	}
	/* the routing trace */
	if (trace) {
		if (ms_trace_load(&tr, trace, &err) ||
		    ms_trace_check_model(tr, m, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
	} else {
		struct ms_trace_gen_params gp;
		ms_trace_gen_defaults(&gp);
		if (ms_trace_alloc_for_model(&tr, m, N_TRACE, &err) ||
		    ms_trace_gen(tr, &gp, &err)) {
			tool_error(CMD, "%s", err.msg);
			goto out;
		}
	}
	if (ms_sim_layer_bytes(tr, m, &lb, &err) || ms_sim_init(&sim, tr, lb, &err)) {
		tool_error(CMD, "%s", err.msg);
		goto out;
	}

	struct tiers main_t;
	plan_for(&f, sim, &mc, mc.ram, &main_t);
	const uint64_t sizes[] = { 32 * GIB, 64 * GIB, 96 * GIB, 128 * GIB };
	struct tiers row[4];
	for (int i = 0; i < 4; i++)
		plan_for(&f, sim, &mc, sizes[i], &row[i]);
	/* the CPU-only line where a GPU was given: what runs today */
	struct machine cpu_mc = mc;
	cpu_mc.vram = 0;
	struct tiers cpu_t;
	plan_for(&f, sim, &cpu_mc, mc.ram, &cpu_t);

	const char *label = preset ? preset : model;
	uint64_t rt = f.resident_tok;
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "model", label);
		cJSON_AddStringToObject(o, "arch", m->arch);
		cJSON_AddNumberToObject(o, "resident_bytes", (double)f.resident);
		cJSON_AddNumberToObject(o, "kv_bytes", (double)f.kv);
		cJSON_AddNumberToObject(o, "expert_bytes_run", (double)f.experts_run);
		cJSON_AddNumberToObject(o, "routed_bytes_per_token",
					(double)f.routed_per_token);
		cJSON_AddNumberToObject(o, "resident_bytes_per_token", (double)rt);
		cJSON *mj = cJSON_AddObjectToObject(o, "machine");
		cJSON_AddNumberToObject(mj, "ram_bytes", (double)mc.ram);
		cJSON_AddNumberToObject(mj, "vram_bytes", (double)mc.vram);
		cJSON_AddNumberToObject(mj, "disk_gbps", mc.disk);
		cJSON_AddBoolToObject(mj, "disk_measured", measured_disk);
		cJSON_AddNumberToObject(mj, "gpu_gbps", mc.gpu);
		cJSON_AddNumberToObject(mj, "pcie_gbps", mc.pcie);
		if (mc.cpu_gbps > 0)
			cJSON_AddNumberToObject(mj, "cpu_gbps", mc.cpu_gbps);
		else
			cJSON_AddNumberToObject(mj, "cpu_s_per_token", mc.cpu_tok);
		cJSON_AddItemToObject(o, "plan", tiers_json(&main_t, mc.ram));
		if (mc.vram)
			cJSON_AddItemToObject(o, "cpu_only", tiers_json(&cpu_t, mc.ram));
		cJSON *a = cJSON_AddArrayToObject(o, "by_ram");
		for (int i = 0; i < 4; i++)
			cJSON_AddItemToArray(a, tiers_json(&row[i], sizes[i]));
		char *s = cJSON_Print(o);
		printf("%s\n", s);
		free(s);
		cJSON_Delete(o);
		rc = 0;
		goto out;
	}

	printf("model     %s (%s): %u blocks run, %u MoE, %u experts, %u per token\n",
	       label, m->arch, f.n_run, f.n_moe, m->n_expert, m->n_expert_used);
	printf("          resident %.2f GB (%.2f GB computed per token), KV %.2f GB "
	       "for %u tokens,\n          routed experts %.1f GB, %.3f GB of them "
	       "per token\n", (double)f.resident / 1e9, (double)rt / 1e9,
	       (double)f.kv / 1e9, n_ctx, (double)f.experts_run / 1e9,
	       (double)f.routed_per_token / 1e9);
	printf("machine   RAM %.1f GB%s, VRAM %.1f GB, disk %.2f GB/s (%s)\n",
	       (double)mc.ram / 1e9, measured_ram ? " (this machine)" : "",
	       (double)mc.vram / 1e9, mc.disk,
	       measured_disk ? "measured: 2 s of expert-sized O_DIRECT reads"
			     : "given");
	if (mc.cpu_gbps > 0)
		printf("          CPU dequantise-and-dot %.2f GB/s of weights (given)\n",
		       mc.cpu_gbps);
	else
		printf("          CPU %.3f s for a token's products (%.2f GB/s of "
		       "weights): measured on\n          the model's %d tensor "
		       "and expert shapes with the engine's kernels and threads\n",
		       mc.cpu_tok, mc.cpu_tok > 0 ? (double)(rt + f.routed_per_token) /
							    1e9 / mc.cpu_tok : 0.0,
		       mc.n_shapes);
	if (mc.vram)
		printf("          GPU %.0f GB/s (assumed: the GPU decoder is not "
		       "measured here), PCIe %.0f GB/s\n", mc.gpu, mc.pcie);
	printf("trace     %s: %u tokens\n", trace ? trace : "synthetic routing",
	       tr->n_tokens);
	printf("\n");
	if (!main_t.runs) {
		printf("cannot run: %s\n", main_t.why);
	} else {
		printf("placement resident tensors in %s; expert caches: VRAM %.1f GB, "
		       "RAM %.1f GB (%.0f%% of the experts together)\n",
		       main_t.resident_on_gpu ? "VRAM" : "RAM",
		       (double)main_t.vram_cache / 1e9, (double)main_t.ram_cache / 1e9,
		       100.0 * (double)(main_t.vram_cache + main_t.ram_cache) /
			       (double)f.experts_run);
		printf("hits      VRAM %.1f%%, RAM %.1f%%, disk %.1f%% of routed "
		       "experts (LRU on the trace)\n", 100 * main_t.hit_vram,
		       100 * main_t.hit_ram, 100 * main_t.miss);
		printf("per token compute %.3f s, disk %.3f s%s -> %.2f tok/s "
		       "(%s-bound)\n", main_t.t_compute, main_t.t_disk,
		       main_t.gpu ? ", PCIe" : "", main_t.tokps, bound_of(&main_t));
		if (main_t.gpu)
			printf("          (PCIe %.3f s; the GPU figures are a projection; "
			       "the CPU engine of this version: %.2f tok/s)\n",
			       main_t.t_pcie, cpu_t.tokps);
	}
	printf("\n%-8s %-10s %9s %9s %7s %7s %9s  %s\n", "RAM", "resident",
	       "VRAM $", "RAM $", "hit", "disk", "tok/s", "bound");
	if (mc.cache)
		printf("(the RAM cache is --cache-size in every row)\n");
	for (int i = 0; i < 4; i++) {
		const struct tiers *t = &row[i];
		char rl[16];
		snprintf(rl, sizeof(rl), "%lluG", (unsigned long long)(sizes[i] / GIB));
		if (!t->runs) {
			printf("%-8s cannot run: %s\n", rl, t->why);
			continue;
		}
		printf("%-8s %-10s %8.1fG %8.1fG %6.1f%% %6.1f%% %9.2f  %s\n",
		       rl, t->resident_on_gpu ? "VRAM" : "RAM",
		       (double)t->vram_cache / 1e9, (double)t->ram_cache / 1e9,
		       100 * (t->hit_vram + t->hit_ram), 100 * t->miss, t->tokps,
		       bound_of(t));
	}
	/* what to run today: the CPU engine's cache (the CPU line) */
	const struct tiers *now_t = mc.vram ? &cpu_t : &main_t;
	if (now_t->runs) {
		char cs[32];
		if (now_t->ram_cache >= GIB)
			snprintf(cs, sizeof(cs), "%lluG",
				 (unsigned long long)(now_t->ram_cache / GIB));
		else
			snprintf(cs, sizeof(cs), "%lluM",
				 (unsigned long long)(now_t->ram_cache / MIB));
		printf("\nsettings  moestream run %s --cache-size %s --ctx %u%s\n",
		       preset ? "MODEL" : model, cs, n_ctx,
		       mc.vram ? "   (the CPU engine: resident tensors in RAM)" : "");
		printf("          or moestreamd with [cache] size = %s (then run or "
		       "serve with --socket)\n", cs);
	}
	rc = 0;
out:
	ms_sim_free(sim);
	free(lb);
	ms_trace_free(tr);
	ms_ffn_pool_free(pool);
	ms_model_free(m);
	if (*ppath)
		preset_cleanup(ppath);
	return rc;
}
