/*
 * dump.c - `moestream dump MODEL --layer L --expert E --proj P [-o FILE]`:
 * one expert projection, dequantised to f32.
 *
 * The bytes are read exactly as the daemon will read them: the extent from
 * the expert map (ms_model_expert), pread from that shard's file at that
 * offset, no mmap. They go through the C reference dequantiser (bit for bit
 * ggml's) a few megabytes at a time, so memory stays small whatever the
 * projection's size, and come out as little-endian f32, row-major
 * [ne1][ne0]: one row per output feature. That makes the command the handle
 * for checking anything downstream (a GPU kernel, another engine's weights)
 * against the reference from a shell or a notebook.
 *
 * Fused gate_up tensors ([in, 2*out, n_expert], gate rows first) answer
 * --proj gate and --proj up with their halves, and --proj gate_up with the
 * whole; a layer with separate gate and up has no gate_up.
 *
 * A terminal is never written binary to; with no -o the data goes to a pipe
 * or a redirected stdout, and any informational line goes nowhere. With -o
 * FILE one line on stdout says what was written.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moestream/kernels.h"
#include "tools.h"

#define CMD "dump"
/* Quantized bytes read per pread (rounded down to whole rows, at least
 * one). The f32 buffer is 4-16x that. */
#define CHUNK_BYTES (2u << 20)

static const char usage_line[] =
	"usage: moestream dump MODEL --layer L --expert E "
	"--proj gate|up|down|gate_up [-o FILE]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Dequantises one routed expert's projection to 32-bit floats, "
		"bit for bit as\nggml does, and writes it as little-endian f32, "
		"row-major: one row per output\nfeature, each row one input "
		"vector long (ne1 rows of ne0 values). For GLM-4.7,\ngate and "
		"up are 1536 rows of 5120, down 5120 rows of 1536.\n"
		"\n"
		"  -l, --layer L      the block N of blk.N, as in "
		"'moestream inspect --extents'\n"
		"  -e, --expert E     the routed expert, 0-based\n"
		"  -p, --proj P       gate, up or down; where the file fuses "
		"gate_up, gate and up\n"
		"                     are its two halves (gate rows first) and "
		"gate_up the whole\n"
		"  -o, --output FILE  write to FILE (default, or '-': stdout, "
		"which must not be\n"
		"                     a terminal)\n"
		"  -h, --help         this text\n"
		"\n"
		"Types: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K "
		"q5_K q6_K iq4_nl\niq4_xs mxfp4.\n"
		"\n"
		"examples:\n"
		"  moestream inspect --extents model.gguf | head    "
		"# layers, experts, types\n"
		"  moestream dump model.gguf --layer 3 --expert 7 --proj down "
		"-o down.f32\n"
		"  moestream dump model.gguf -l 3 -e 7 -p up | od -A d -t f4 | "
		"head -n 2\n"
		"  python3 -c 'import numpy as np; w = np.fromfile(\"down.f32\", "
		"\"<f4\");\n"
		"              print(w.reshape(5120, -1).std(axis=1))'\n"
		"\n"
		"exit: 0 ok; 1 bad or unreadable model, no such layer, expert or "
		"projection,\n"
		"      a dense layer, a type without a dequantiser, a write "
		"error; 2 bad usage\n",
		usage_line);
}

static int parse_proj(const char *s, enum ms_proj *out)
{
	for (int p = 0; p < MS_PROJ_COUNT; p++) {
		if (!strcmp(s, ms_proj_name((enum ms_proj)p))) {
			*out = (enum ms_proj)p;
			return 0;
		}
	}
	tool_error(CMD, "--proj '%s' is not one of gate, up, down, gate_up", s);
	return -1;
}

/* What to read: `rows` rows of `ne0` values of `type`, `row_bytes` each,
 * from `fd` at `offset`. */
struct slice {
	uint32_t block, expert, shard, type;
	enum ms_proj proj;
	int64_t ne0, rows;
	uint64_t row_bytes, offset;
	int fd;
};

/* Finds the bytes of (block, expert, proj): 0, or 1 after one line saying
 * why not. */
static int resolve(const struct ms_model *m, const char *path, uint32_t block,
		   uint32_t expert, enum ms_proj want, struct slice *s)
{
	char list[256];
	if (!m->n_expert || !m->n_layers) {
		tool_error(CMD, "%s is not a Mixture-of-Experts model: it has no "
			   "routed experts to dump", path);
		return 1;
	}
	if (block >= m->n_block) {
		tool_error(CMD, "layer %u out of range: %s has blocks 0..%u "
			   "(MoE layers %s)", block, path, m->n_block - 1,
			   tool_moe_blocks(m, list, sizeof(list)));
		return 1;
	}
	int32_t li = m->block_layer[block];
	if (li < 0) {
		tool_error(CMD, "blk.%u is a dense layer: it has no routed "
			   "experts (MoE layers %s)", block,
			   tool_moe_blocks(m, list, sizeof(list)));
		return 1;
	}
	if (expert >= m->n_expert) {
		tool_error(CMD, "expert %u out of range: blk.%u has experts "
			   "0..%u", expert, block, m->n_expert - 1);
		return 1;
	}
	const struct ms_moe_layer *L = &m->layers[li];
	const struct ms_extent *x = ms_model_expert(m, (uint32_t)li, expert);
	enum ms_proj have = want;
	int half = -1; /* 0 gate half, 1 up half of a fused gate_up */
	if (L->fused && (want == MS_PROJ_GATE || want == MS_PROJ_UP)) {
		have = MS_PROJ_GATE_UP;
		half = want == MS_PROJ_UP;
	}
	uint32_t j = 0;
	while (j < L->n_proj && L->proj[j] != have)
		j++;
	if (!x || j == L->n_proj) {
		if (want == MS_PROJ_GATE_UP)
			tool_error(CMD, "blk.%u has separate gate and up "
				   "projections, no fused gate_up: use --proj "
				   "gate or --proj up", block);
		else
			tool_error(CMD, "blk.%u has no %s projection", block,
				   ms_proj_name(want));
		return 1;
	}
	if (!ms_dequant_supported(x[j].type)) {
		tool_error(CMD, "blk.%u %s is %s, which moestream cannot "
			   "dequantise yet (it can: f32 f16 bf16 q4_0 q4_1 "
			   "q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K iq4_nl "
			   "iq4_xs mxfp4)", block, ms_proj_name(have),
			   ms_type_name(x[j].type));
		return 1;
	}

	struct ms_err err = { 0 };
	uint64_t rs;
	if (ms_type_row_size(x[j].type, L->ne[j][0], &rs, &err)) {
		tool_error(CMD, "blk.%u %s: %s", block, ms_proj_name(have),
			   err.msg);
		return 1;
	}
	int64_t rows = L->ne[j][1];
	uint64_t off = x[j].offset;
	if (half >= 0) {
		if (rows % 2) {
			tool_error(CMD, "blk.%u gate_up has an odd number of "
				   "rows (%lld): it cannot be split into gate "
				   "and up", block, (long long)rows);
			return 1;
		}
		rows /= 2;
		off += (uint64_t)half * (uint64_t)rows * rs;
	}
	/* The map says how many bytes the expert's slice has; the rows read
	 * must lie inside it. */
	if (rs * (uint64_t)L->ne[j][1] != x[j].bytes) {
		tool_error(CMD, "blk.%u %s: %lld rows of %llu bytes do not make "
			   "the extent's %llu bytes", block, ms_proj_name(have),
			   (long long)L->ne[j][1], (unsigned long long)rs,
			   (unsigned long long)x[j].bytes);
		return 1;
	}
	*s = (struct slice){
		.block = block,
		.expert = expert,
		.shard = x[j].shard,
		.type = x[j].type,
		.proj = want,
		.ne0 = L->ne[j][0],
		.rows = rows,
		.row_bytes = rs,
		.offset = off,
		.fd = m->shards[x[j].shard]->fd,
	};
	return 0;
}

/* Reads, dequantises and writes the slice: 0, or 1 after saying why. */
static int copy_out(const struct ms_model *m, const struct slice *s,
		    int out_fd, const char *out_name)
{
	int64_t chunk = (int64_t)(CHUNK_BYTES / s->row_bytes);
	if (chunk < 1)
		chunk = 1;
	if (chunk > s->rows)
		chunk = s->rows;
	uint8_t *in = malloc((size_t)chunk * s->row_bytes);
	float *out = malloc((size_t)chunk * (size_t)s->ne0 * sizeof(float));
	int rc = 1;
	if (!in || !out) {
		tool_error(CMD, "out of memory");
		goto out;
	}
	for (int64_t r = 0; r < s->rows; r += chunk) {
		int64_t n = s->rows - r < chunk ? s->rows - r : chunk;
		uint64_t off = s->offset + (uint64_t)r * s->row_bytes;
		int e = tool_pread_full(s->fd, in, (size_t)n * s->row_bytes, off);
		if (e) {
			tool_error(CMD, "%s: reading %llu bytes at offset %llu: "
				   "%s", m->shards[s->shard]->path,
				   (unsigned long long)((uint64_t)n * s->row_bytes),
				   (unsigned long long)off,
				   e == -ENODATA ? "the file ends early"
						 : strerror(-e));
			goto out;
		}
		for (int64_t i = 0; i < n; i++) {
			float *y = out + i * s->ne0;
			e = ms_dequant_row(s->type, in + (uint64_t)i * s->row_bytes,
					   y, s->ne0);
			if (e) {
				tool_error(CMD, "dequantising %s: %s",
					   ms_type_name(s->type), strerror(-e));
				goto out;
			}
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
			for (int64_t k = 0; k < s->ne0; k++) {
				uint32_t u;
				memcpy(&u, &y[k], 4);
				u = __builtin_bswap32(u);
				memcpy(&y[k], &u, 4);
			}
#endif
		}
		e = tool_write_full(out_fd, out, (size_t)n * (size_t)s->ne0 *
						    sizeof(float));
		if (e) {
			tool_error(CMD, "writing %s: %s", out_name, strerror(-e));
			goto out;
		}
	}
	rc = 0;
out:
	free(in);
	free(out);
	return rc;
}

/* True when fd is one of the model's own files (so -o would destroy it). */
static bool is_model_file(const struct ms_model *m, int fd)
{
	struct stat a, b;
	if (fstat(fd, &a))
		return false;
	for (uint32_t i = 0; i < m->n_shards; i++)
		if (!fstat(m->shards[i]->fd, &b) && a.st_dev == b.st_dev &&
		    a.st_ino == b.st_ino)
			return true;
	return false;
}

int cmd_dump(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "layer", required_argument, 0, 'l' },
		{ "expert", required_argument, 0, 'e' },
		{ "proj", required_argument, 0, 'p' },
		{ "output", required_argument, 0, 'o' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint32_t block = 0, expert = 0;
	bool have_layer = false, have_expert = false, have_proj = false;
	enum ms_proj proj = MS_PROJ_GATE;
	const char *out_path = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "l:e:p:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (tool_parse_u32(CMD, "layer", optarg, &block))
				return tool_bad_usage(usage_line);
			have_layer = true;
			break;
		case 'e':
			if (tool_parse_u32(CMD, "expert", optarg, &expert))
				return tool_bad_usage(usage_line);
			have_expert = true;
			break;
		case 'p':
			if (parse_proj(optarg, &proj))
				return tool_bad_usage(usage_line);
			have_proj = true;
			break;
		case 'o':
			out_path = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return tool_bad_usage(usage_line);
		}
	}
	const char *path = tool_one_model(CMD, argc, argv, optind);
	if (!path)
		return tool_bad_usage(usage_line);
	if (!have_layer || !have_expert || !have_proj) {
		tool_error(CMD, "--%s is required",
			   !have_layer ? "layer" : !have_expert ? "expert"
								 : "proj");
		return tool_bad_usage(usage_line);
	}
	if (out_path && !*out_path) {
		tool_error(CMD, "-o needs a file name");
		return tool_bad_usage(usage_line);
	}
	bool to_stdout = !out_path || !strcmp(out_path, "-");
	if (to_stdout && isatty(STDOUT_FILENO)) {
		tool_error(CMD, "refusing to write binary f32 data to a "
			   "terminal: use -o FILE or redirect stdout");
		return EXIT_USAGE;
	}

	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, path, &err)) {
		tool_error(CMD, "%s", err.msg);
		return 1;
	}
	struct slice s;
	int rc = resolve(m, path, block, expert, proj, &s);
	if (rc)
		goto out;

	int fd = STDOUT_FILENO;
	const char *name = "stdout";
	if (!to_stdout) {
		/* Opened without O_TRUNC, so that the check below can still
		 * refuse to overwrite the model itself. */
		fd = open(out_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0) {
			tool_error(CMD, "%s: %s", out_path, strerror(errno));
			rc = 1;
			goto out;
		}
		name = out_path;
		if (is_model_file(m, fd)) {
			tool_error(CMD, "%s is the model itself: choose another "
				   "-o FILE", out_path);
			close(fd);
			rc = 1;
			goto out;
		}
		if (ftruncate(fd, 0)) {
			tool_error(CMD, "%s: %s", out_path, strerror(errno));
			close(fd);
			rc = 1;
			goto out;
		}
	}
	rc = copy_out(m, &s, fd, name);
	if (!to_stdout) {
		if (close(fd) && !rc) {
			tool_error(CMD, "writing %s: %s", out_path,
				   strerror(errno));
			rc = 1;
		}
		if (rc) {
			unlink(out_path);
		} else {
			char b[32];
			printf("wrote %s: blk.%u expert %u %s, %lld rows x %lld "
			       "f32 (%s bytes), from %s\n",
			       out_path, s.block, s.expert, ms_proj_name(s.proj),
			       (long long)s.rows, (long long)s.ne0,
			       fmt_count((uint64_t)s.rows * (uint64_t)s.ne0 * 4,
					 b, sizeof(b)),
			       ms_type_name(s.type));
		}
	}
out:
	ms_model_free(m);
	return rc;
}
