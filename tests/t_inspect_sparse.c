/*
 * t_inspect_sparse - `inspect` on a 100 GB-class model reads only its
 * metadata.
 *
 * Writes the metadata of a GLM-4.7 UD-Q2_K_XL-shaped model (93 blocks, 3
 * dense, 1 NextN, 160 experts of Q2_K/Q2_K/Q3_K, a 151,552-token vocabulary
 * and its merges: the real metadata size) with moestream's writer and
 * extends it to full size as a sparse file, ~130 GB that take no disk. Then:
 *  - in-process, ms_model_open must read no more than the metadata (checked
 *    with the parse's own byte count and /proc/self/io), and the expert map
 *    must give DESIGN.md's figures: 8,540,160 bytes per expert, 89 MoE layers
 *    run, 712 expert loads = 6,080,593,920 bytes per token;
 *  - `moestream inspect` on it exits 0 and prints the same figures; its wall
 *    time is printed (a figure for the note, not a verdict: timing is noisy).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moestream/model.h"
#include "testutil.h"

#define N_BLOCK 93
#define N_DENSE 3
#define N_EXPERT 160
#define N_USED 8
#define N_EMBD 5120
#define N_FF_EXP 1536
#define N_FF 12288
#define N_VOCAB 151552
#define N_MERGES 318088

static uint64_t proc_rchar(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	char line[128];
	uint64_t v = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "rchar:", 6))
			v = strtoull(line + 6, NULL, 10);
	fclose(f);
	return v;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define CK(x)                                                                  \
	do {                                                                   \
		if ((x) < 0)                                                   \
			t_fatal("%s: %s", #x, err.msg);                        \
	} while (0)

static void add2(struct ms_gguf_writer *w, struct ms_err *e, const char *nm,
		 int64_t a, int64_t b, uint32_t type)
{
	int64_t ne[2] = { a, b };
	if (ms_gguf_writer_add_tensor(w, nm, b == 1 ? 1 : 2, ne, type, e) < 0)
		t_fatal("add %s: %s", nm, e->msg);
}

static uint64_t write_glm(const char *path)
{
	struct ms_err err = { 0 };
	struct ms_gguf_writer *w;
	char k[96];
	CK(ms_gguf_writer_init(&w, 32, &err));
	CK(ms_gguf_writer_set_str(w, "general.architecture", "glm4moe", &err));
	CK(ms_gguf_writer_set_str(w, "general.name", "GLM-4.7 shape (sparse)", &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.block_count", N_BLOCK, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.embedding_length", N_EMBD, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.feed_forward_length", N_FF, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_feed_forward_length", N_FF_EXP, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_count", N_EXPERT, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_used_count", N_USED, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.expert_shared_count", 1, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.leading_dense_block_count", N_DENSE, &err));
	CK(ms_gguf_writer_set_u32(w, "glm4moe.nextn_predict_layers", 1, &err));
	CK(ms_gguf_writer_set_f32(w, "glm4moe.expert_weights_scale", 2.5f, &err));
	CK(ms_gguf_writer_set_bool(w, "glm4moe.expert_weights_norm", true, &err));

	/* The vocabulary and merges: most of a real file's metadata. */
	char **tok = malloc(N_MERGES * sizeof(*tok));
	if (!tok)
		t_fatal("out of memory");
	for (uint32_t i = 0; i < N_MERGES; i++)
		if (asprintf(&tok[i], "tok%u-%c%c", i, 'a' + i % 26, 'a' + i / 26 % 26) < 0)
			t_fatal("out of memory");
	CK(ms_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", MS_GGUF_STRING,
				  N_VOCAB, tok, &err));
	int32_t *types = calloc(N_VOCAB, sizeof(*types));
	if (!types)
		t_fatal("out of memory");
	CK(ms_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MS_GGUF_I32,
				  N_VOCAB, types, &err));
	CK(ms_gguf_writer_set_arr(w, "tokenizer.ggml.merges", MS_GGUF_STRING,
				  N_MERGES, tok, &err));
	for (uint32_t i = 0; i < N_MERGES; i++)
		free(tok[i]);
	free(tok);
	free(types);

	add2(w, &err, "token_embd.weight", N_EMBD, N_VOCAB, MS_TYPE_Q4_K);
	for (int b = 0; b < N_BLOCK; b++) {
#define NM(s) (snprintf(k, sizeof(k), "blk.%d." s, b), k)
		add2(w, &err, NM("attn_norm.weight"), N_EMBD, 1, MS_TYPE_F32);
		add2(w, &err, NM("attn_q.weight"), N_EMBD, 12288, MS_TYPE_Q4_K);
		add2(w, &err, NM("attn_k.weight"), N_EMBD, 1024, MS_TYPE_Q4_K);
		add2(w, &err, NM("attn_v.weight"), N_EMBD, 1024, MS_TYPE_Q6_K);
		add2(w, &err, NM("attn_output.weight"), 12288, N_EMBD, MS_TYPE_Q4_K);
		add2(w, &err, NM("post_attention_norm.weight"), N_EMBD, 1, MS_TYPE_F32);
		if (b < N_DENSE) {
			add2(w, &err, NM("ffn_gate.weight"), N_EMBD, N_FF, MS_TYPE_Q4_K);
			add2(w, &err, NM("ffn_up.weight"), N_EMBD, N_FF, MS_TYPE_Q4_K);
			add2(w, &err, NM("ffn_down.weight"), N_FF, N_EMBD, MS_TYPE_Q6_K);
			continue;
		}
		add2(w, &err, NM("ffn_gate_inp.weight"), N_EMBD, N_EXPERT, MS_TYPE_F32);
		add2(w, &err, NM("exp_probs_b.bias"), N_EXPERT, 1, MS_TYPE_F32);
		int64_t g[3] = { N_EMBD, N_FF_EXP, N_EXPERT };
		int64_t d[3] = { N_FF_EXP, N_EMBD, N_EXPERT };
		CK(ms_gguf_writer_add_tensor(w, NM("ffn_gate_exps.weight"), 3, g,
					     MS_TYPE_Q2_K, &err));
		CK(ms_gguf_writer_add_tensor(w, NM("ffn_up_exps.weight"), 3, g,
					     MS_TYPE_Q2_K, &err));
		CK(ms_gguf_writer_add_tensor(w, NM("ffn_down_exps.weight"), 3, d,
					     MS_TYPE_Q3_K, &err));
		add2(w, &err, NM("ffn_gate_shexp.weight"), N_EMBD, N_FF_EXP, MS_TYPE_Q4_K);
		add2(w, &err, NM("ffn_up_shexp.weight"), N_EMBD, N_FF_EXP, MS_TYPE_Q4_K);
		add2(w, &err, NM("ffn_down_shexp.weight"), N_FF_EXP, N_EMBD, MS_TYPE_Q6_K);
#undef NM
	}
	add2(w, &err, "output_norm.weight", N_EMBD, 1, MS_TYPE_F32);
	add2(w, &err, "output.weight", N_EMBD, N_VOCAB, MS_TYPE_Q6_K);

	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		t_fatal("%s: %s", path, strerror(errno));
	CK(ms_gguf_writer_write_meta(w, fd, &err));
	uint64_t size = ms_gguf_writer_file_size(w);
	if (ftruncate(fd, (off_t)size))
		t_skip("cannot make a sparse file of %llu bytes in %s: %s",
		       (unsigned long long)size, path, strerror(errno));
	close(fd);
	uint64_t meta = ms_gguf_writer_data_offset(w);
	ms_gguf_writer_free(w);
	printf("wrote %s: %.1f GB sparse, metadata %.2f MB\n", path, size / 1e9,
	       meta / 1e6);
	return meta;
}

int main(void)
{
	char path[4096], cmd[8300];
	snprintf(path, sizeof(path), "%s/glm-sparse.gguf", t_tmpdir());
	uint64_t meta = write_glm(path);

	/* In-process: the parse reads the metadata and nothing else. */
	struct ms_model *m;
	struct ms_err err = { 0 };
	uint64_t r0 = proc_rchar();
	double t0 = now();
	if (ms_model_open(&m, path, &err))
		t_fatal("ms_model_open: %s", err.msg);
	double dt = now() - t0;
	uint64_t rchar = proc_rchar() - r0;
	uint64_t limit = meta + (1u << 20); /* one read-buffer of slack */
	printf("ms_model_open: %.3f s, parse read %llu bytes, rchar %llu, "
	       "metadata %llu, file %llu\n",
	       dt, (unsigned long long)m->shards[0]->bytes_read,
	       (unsigned long long)rchar, (unsigned long long)meta,
	       (unsigned long long)m->shards[0]->file_size);
	T_CHECK(m->shards[0]->bytes_read <= limit,
		"parse read %llu bytes, more than metadata + 1 MiB = %llu",
		(unsigned long long)m->shards[0]->bytes_read,
		(unsigned long long)limit);
	T_CHECK(rchar <= limit + 65536, "rchar grew by %llu, over %llu",
		(unsigned long long)rchar, (unsigned long long)limit);
	T_CHECK(m->shards[0]->file_size > 100000000000ull,
		"file is %llu bytes, not 100 GB-class",
		(unsigned long long)m->shards[0]->file_size);

	T_EQ_U64(m->n_layers, 90);
	T_EQ_U64(m->n_layers_run, 89);
	T_EQ_U64(m->expert_bytes_min, 8540160);
	T_EQ_U64(m->expert_bytes_max, 8540160);
	T_EQ_U64(m->bytes_per_token, 6080593920ull);
	T_EQ_U64(m->expert_bytes_run, 89ull * 160 * 8540160);
	T_CHECK(m->layers[89].nextn && m->layers[89].block == 92,
		"last layer: block %u nextn %d", m->layers[89].block,
		m->layers[89].nextn);
	const struct ms_extent *x = ms_model_expert(m, 0, 1);
	T_CHECK(x && x[0].bytes == 2580480 && x[1].bytes == 2580480 &&
			x[2].bytes == 3379200,
		"expert (3, 1) extents are not 2,580,480 / 2,580,480 / 3,379,200");
	ms_model_free(m);

	/* The command, as a user runs it. */
	char *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s inspect '%s'", t_build_path("moestream"),
		 path);
	t0 = now();
	int rc = t_run(cmd, &out, 1 << 16);
	dt = now() - t0;
	printf("%s\n%s(exit %d, %.3f s wall)\n", cmd, out, rc, dt);
	T_CHECK(rc == 0, "inspect exited %d", rc);
	T_CHECK(strstr(out, "8,540,160") != NULL, "no 8,540,160 bytes/expert");
	T_CHECK(strstr(out, "6.08 GB") != NULL, "no 6.08 GB per token");
	T_CHECK(strstr(out, "89 MoE layers run") != NULL, "no 89 layers run");
	free(out);
	return t_done();
}
