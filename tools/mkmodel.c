/*
 * mkmodel.c - `moestream mkmodel`: write a test model with real shapes.
 *
 * This version knows the `tiny` preset, the built-in demo model behind
 * `make run`: a glm4moe-shaped file (1 dense block, 4 MoE blocks, 1 NextN
 * block; 16 experts, 4 used, 1 shared; Q2_K/Q2_K/Q3_K experts like Unsloth's
 * UD-Q2_K_XL) of about 18 MB. Weights are random but deterministic per seed:
 * f32 tensors are small uniform values (norms are 1), quant blocks are random
 * bytes whose f16/e8m0 scale fields are set to small finite values, so every
 * block decodes to finite numbers of a sensible scale.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "tools.h"

struct tensor_spec {
	char name[MS_GGUF_MAX_NAME + 1];
	uint32_t n_dims;
	int64_t ne[3];
	uint32_t type;
	float fill; /* f32 tensors: a constant (norms) when nonzero */
};

struct preset {
	const char *name, *arch, *title;
	uint32_t n_block, n_dense, n_nextn, n_expert, n_used, n_shared;
	uint32_t n_embd, n_ff, n_ff_exp, n_vocab, n_head;
	uint32_t t_gate, t_up, t_down, t_dense, t_attn;
};

static const struct preset presets[] = {
	{ .name = "tiny", .arch = "glm4moe", .title = "moestream tiny demo",
	  .n_block = 6, .n_dense = 1, .n_nextn = 1, .n_expert = 16, .n_used = 4,
	  .n_shared = 1, .n_embd = 512, .n_ff = 1024, .n_ff_exp = 256,
	  .n_vocab = 512, .n_head = 8, .t_gate = MS_TYPE_Q2_K,
	  .t_up = MS_TYPE_Q2_K, .t_down = MS_TYPE_Q3_K, .t_dense = MS_TYPE_Q4_K,
	  .t_attn = MS_TYPE_Q8_0 },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestream mkmodel --preset NAME -o FILE [--seed N] "
		"[--force]\n"
		"\n"
		"Writes a valid GGUF test model with real metadata, shapes and "
		"quant types;\nweights are random (deterministic per seed) valid "
		"blocks of sensible scale.\n"
		"\n"
		"  --preset NAME  tiny: glm4moe shape, 6 blocks (1 dense, 4 MoE, 1 "
		"NextN),\n"
		"                 16 experts (4 used, 1 shared), Q2_K/Q2_K/Q3_K "
		"experts, ~18 MB\n"
		"  -o FILE        where to write (refuses to overwrite without "
		"--force)\n"
		"  --seed N       weights seed (default 1)\n"
		"  --force        overwrite FILE\n"
		"\nexample: moestream mkmodel --preset tiny -o /tmp/tiny.gguf && "
		"moestream inspect /tmp/tiny.gguf\n");
}

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Where a block keeps its f16 scales (d, dmin), from ggml's block structs;
 * -1 = none. MXFP4 has one e8m0 exponent byte at 0 instead. */
static const struct {
	uint32_t type;
	int f16[2];
} scale_fields[] = {
	{ MS_TYPE_Q4_0, { 0, -1 } },  { MS_TYPE_Q4_1, { 0, 2 } },
	{ MS_TYPE_Q5_0, { 0, -1 } },  { MS_TYPE_Q5_1, { 0, 2 } },
	{ MS_TYPE_Q8_0, { 0, -1 } },  { MS_TYPE_Q2_K, { 80, 82 } },
	{ MS_TYPE_Q3_K, { 108, -1 } }, { MS_TYPE_Q4_K, { 0, 2 } },
	{ MS_TYPE_Q5_K, { 0, 2 } },   { MS_TYPE_Q6_K, { 208, -1 } },
	{ MS_TYPE_IQ4_NL, { 0, -1 } }, { MS_TYPE_IQ4_XS, { 0, -1 } },
};

/* f16 bits of a small positive value: 2^-(8..10) x (1 + m/1024). */
static uint16_t small_f16(uint64_t r)
{
	uint16_t exp = (uint16_t)(15 - 8 - (r % 3));
	return (uint16_t)(exp << 10 | ((r >> 8) & 0x3ff));
}

static int fill_tensor(uint8_t *buf, uint64_t size, const struct tensor_spec *t,
		       uint64_t *s)
{
	if (t->type == MS_TYPE_F32) {
		float *f = (float *)buf;
		float scale = 1.0f / sqrtf((float)t->ne[0]);
		for (uint64_t i = 0; i < size / 4; i++)
			f[i] = t->fill ? t->fill
				       : scale * ((float)(rng(s) >> 40) /
							  (float)(1 << 23) - 1.0f);
		return 0;
	}
	const struct ms_type_info *ti = ms_type_get(t->type);
	for (uint64_t i = 0; i < size; i += 8) {
		uint64_t r = rng(s);
		memcpy(buf + i, &r, size - i < 8 ? size - i : 8);
	}
	if (t->type == MS_TYPE_MXFP4) {
		for (uint64_t b = 0; b < size; b += ti->type_size)
			buf[b] = (uint8_t)(127 - 6 - rng(s) % 2);
		return 0;
	}
	for (size_t k = 0; k < sizeof(scale_fields) / sizeof(scale_fields[0]); k++) {
		if (scale_fields[k].type != t->type)
			continue;
		for (uint64_t b = 0; b < size; b += ti->type_size)
			for (int j = 0; j < 2; j++) {
				if (scale_fields[k].f16[j] < 0)
					continue;
				uint16_t h = small_f16(rng(s));
				memcpy(buf + b + scale_fields[k].f16[j], &h, 2);
			}
		return 0;
	}
	return -ENOTSUP;
}

static int add(struct tensor_spec *ts, uint32_t *n, const char *name,
	       uint32_t n_dims, int64_t a, int64_t b, int64_t c, uint32_t type,
	       float fill)
{
	struct tensor_spec *t = &ts[(*n)++];
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->n_dims = n_dims;
	t->ne[0] = a;
	t->ne[1] = b;
	t->ne[2] = c;
	t->type = type;
	t->fill = fill;
	return 0;
}

static uint32_t build_tensors(const struct preset *p, struct tensor_spec *ts)
{
	uint32_t n = 0;
	char nm[MS_GGUF_MAX_NAME + 1];
	int64_t E = p->n_embd;
	add(ts, &n, "token_embd.weight", 2, E, p->n_vocab, 1, p->t_attn, 0);
	for (uint32_t b = 0; b < p->n_block; b++) {
#define NM(fmt) (snprintf(nm, sizeof(nm), "blk.%u." fmt, b), nm)
		add(ts, &n, NM("attn_norm.weight"), 1, E, 1, 1, MS_TYPE_F32, 1);
		add(ts, &n, NM("attn_q.weight"), 2, E, E, 1, p->t_attn, 0);
		add(ts, &n, NM("attn_k.weight"), 2, E, E / 4, 1, p->t_attn, 0);
		add(ts, &n, NM("attn_v.weight"), 2, E, E / 4, 1, p->t_attn, 0);
		add(ts, &n, NM("attn_output.weight"), 2, E, E, 1, p->t_attn, 0);
		add(ts, &n, NM("post_attention_norm.weight"), 1, E, 1, 1,
		    MS_TYPE_F32, 1);
		if (b < p->n_dense) {
			add(ts, &n, NM("ffn_gate.weight"), 2, E, p->n_ff, 1,
			    p->t_dense, 0);
			add(ts, &n, NM("ffn_up.weight"), 2, E, p->n_ff, 1,
			    p->t_dense, 0);
			add(ts, &n, NM("ffn_down.weight"), 2, p->n_ff, E, 1,
			    p->t_dense, 0);
			continue;
		}
		add(ts, &n, NM("ffn_gate_inp.weight"), 2, E, p->n_expert, 1,
		    MS_TYPE_F32, 0);
		add(ts, &n, NM("exp_probs_b.bias"), 1, p->n_expert, 1, 1,
		    MS_TYPE_F32, 0);
		add(ts, &n, NM("ffn_gate_exps.weight"), 3, E, p->n_ff_exp,
		    p->n_expert, p->t_gate, 0);
		add(ts, &n, NM("ffn_up_exps.weight"), 3, E, p->n_ff_exp,
		    p->n_expert, p->t_up, 0);
		add(ts, &n, NM("ffn_down_exps.weight"), 3, p->n_ff_exp, E,
		    p->n_expert, p->t_down, 0);
		if (p->n_shared) {
			add(ts, &n, NM("ffn_gate_shexp.weight"), 2, E,
			    p->n_ff_exp * p->n_shared, 1, p->t_dense, 0);
			add(ts, &n, NM("ffn_up_shexp.weight"), 2, E,
			    p->n_ff_exp * p->n_shared, 1, p->t_dense, 0);
			add(ts, &n, NM("ffn_down_shexp.weight"), 2,
			    p->n_ff_exp * p->n_shared, E, 1, p->t_dense, 0);
		}
#undef NM
	}
	add(ts, &n, "output_norm.weight", 1, E, 1, 1, MS_TYPE_F32, 1);
	add(ts, &n, "output.weight", 2, E, p->n_vocab, 1, p->t_attn, 0);
	return n;
}

static int set_meta(struct ms_gguf_writer *w, const struct preset *p,
		    struct ms_err *err)
{
	char k[128];
	int rc = 0;
#define KEY(s) (snprintf(k, sizeof(k), "%s.%s", p->arch, s), k)
	if ((rc = ms_gguf_writer_set_str(w, "general.architecture", p->arch, err)) ||
	    (rc = ms_gguf_writer_set_str(w, "general.name", p->title, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("block_count"), p->n_block, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("context_length"), 4096, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("embedding_length"), p->n_embd, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("feed_forward_length"), p->n_ff, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("expert_feed_forward_length"),
					 p->n_ff_exp, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("attention.head_count"), p->n_head, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("attention.head_count_kv"),
					 p->n_head / 4, err)) ||
	    (rc = ms_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"),
					 1e-5f, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("expert_count"), p->n_expert, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("expert_used_count"), p->n_used, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("expert_shared_count"), p->n_shared, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("leading_dense_block_count"),
					 p->n_dense, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("nextn_predict_layers"), p->n_nextn, err)) ||
	    (rc = ms_gguf_writer_set_u32(w, KEY("expert_gating_func"), 2, err)) ||
	    (rc = ms_gguf_writer_set_bool(w, KEY("expert_weights_norm"), true, err)) ||
	    (rc = ms_gguf_writer_set_f32(w, KEY("expert_weights_scale"), 2.5f, err)) ||
	    (rc = ms_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", err)))
		return rc;
#undef KEY
	char **tok = calloc(p->n_vocab, sizeof(*tok));
	if (!tok)
		return ms_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < p->n_vocab && !rc; i++)
		if (asprintf(&tok[i], "<t%u>", i) < 0)
			rc = ms_err_set(err, -ENOMEM, "out of memory");
	if (!rc)
		rc = ms_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_STRING,
					    p->n_vocab, tok, err);
	for (uint32_t i = 0; i < p->n_vocab; i++)
		free(tok[i]);
	free(tok);
	return rc;
}

static int write_model(const struct preset *p, const char *out, bool force,
		       uint64_t seed)
{
	struct ms_err err = { 0 };
	struct ms_gguf_writer *w = NULL;
	struct tensor_spec *ts = calloc(16u * p->n_block + 8, sizeof(*ts));
	uint8_t *buf = NULL;
	int fd = -1, rc;

	if (!ts) {
		tool_error("mkmodel", "out of memory");
		return 1;
	}
	uint32_t n = build_tensors(p, ts);
	if ((rc = ms_gguf_writer_init(&w, 32, &err)) || (rc = set_meta(w, p, &err)))
		goto fail;
	for (uint32_t i = 0; i < n; i++)
		if ((rc = ms_gguf_writer_add_tensor(w, ts[i].name, ts[i].n_dims,
						    ts[i].ne, ts[i].type, &err)) < 0)
			goto fail;

	uint64_t need = ms_gguf_writer_file_size(w);
	char dir[4096], b1[32], b2[32];
	snprintf(dir, sizeof(dir), "%s", out);
	char *slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	else
		snprintf(dir, sizeof(dir), ".");
	struct statvfs sv;
	if (statvfs(dir, &sv) == 0 &&
	    (uint64_t)sv.f_bavail * sv.f_frsize < need) {
		tool_error("mkmodel", "%s needs %s but %s has %s free", out,
			   fmt_bytes(need, b1, sizeof(b1)), dir,
			   fmt_bytes((uint64_t)sv.f_bavail * sv.f_frsize, b2,
				     sizeof(b2)));
		rc = -ENOSPC;
		goto out;
	}
	fd = open(out, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL),
		  0644);
	if (fd < 0) {
		if (errno == EEXIST)
			tool_error("mkmodel", "%s exists; pass --force to overwrite it",
				   out);
		else
			tool_error("mkmodel", "%s: %s", out, strerror(errno));
		rc = -errno;
		goto out;
	}
	if ((rc = ms_gguf_writer_write_meta(w, fd, &err)))
		goto fail;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t size = ms_gguf_writer_tensor_size(w, i);
		uint64_t s = seed * 1000003u + i;
		free(buf);
		if (!(buf = malloc(size))) {
			rc = ms_err_set(&err, -ENOMEM, "out of memory");
			goto fail;
		}
		if (fill_tensor(buf, size, &ts[i], &s)) {
			rc = ms_err_set(&err, -ENOTSUP, "no generator for type %s",
					ms_type_name(ts[i].type));
			goto fail;
		}
		off_t at = (off_t)ms_gguf_writer_tensor_offset(w, i);
		for (uint64_t done = 0; done < size;) {
			ssize_t k = pwrite(fd, buf + done, size - done,
					   at + (off_t)done);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0) {
				rc = ms_err_set(&err, -errno, "writing %s: %s", out,
						strerror(errno));
				goto fail;
			}
			done += (uint64_t)k;
		}
	}
	if (ftruncate(fd, (off_t)need) || fsync(fd)) {
		rc = ms_err_set(&err, -errno, "%s: %s", out, strerror(errno));
		goto fail;
	}
	printf("wrote %s: preset %s, %s, %u tensors\n", out, p->name,
	       fmt_bytes(need, b1, sizeof(b1)), n);
	goto out;
fail:
	tool_error("mkmodel", "%s", err.msg);
out:
	if (fd >= 0)
		close(fd);
	if (rc && fd >= 0)
		unlink(out);
	free(buf);
	free(ts);
	ms_gguf_writer_free(w);
	return rc ? 1 : 0;
}

int cmd_mkmodel(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "preset", required_argument, 0, 'p' },
		{ "output", required_argument, 0, 'o' },
		{ "seed", required_argument, 0, 's' },
		{ "force", no_argument, 0, 'f' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *preset = NULL, *out = NULL;
	uint64_t seed = 1;
	bool force = false;
	int c;
	while ((c = getopt_long(argc, argv, "p:o:s:fh", opts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'p': preset = optarg; break;
		case 'o': out = optarg; break;
		case 'f': force = true; break;
		case 's':
			errno = 0;
			seed = strtoull(optarg, &end, 0);
			if (errno || *end || !*optarg) {
				tool_error("mkmodel", "--seed '%s' is not a number",
					   optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "usage: moestream mkmodel --preset NAME -o "
					"FILE [--seed N] [--force]  (see --help)\n");
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		tool_error("mkmodel", "unexpected argument '%s'", argv[optind]);
		return EXIT_USAGE;
	}
	if (!preset || !out) {
		tool_error("mkmodel", "--preset and -o are required (try: "
				      "moestream mkmodel --preset tiny -o tiny.gguf)");
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
		if (!strcmp(presets[i].name, preset))
			return write_model(&presets[i], out, force, seed);
	tool_error("mkmodel", "unknown preset '%s' (known: tiny)", preset);
	return EXIT_USAGE;
}
