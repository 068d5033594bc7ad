/*
 * t_engine_seqs - several sequences in one engine (ms_engine_eval_seqs, the
 * continuous batching `moestream serve --parallel` runs on).
 *
 * The tiny preset (glm4moe: a dense block, MoE blocks with a shared expert)
 * and a 1-layer Qwen3 cut. Three token sequences of different lengths are
 * each run alone through ms_engine_eval (sequence 0 of a one-sequence
 * engine, all logits); then the same tokens go through a three-sequence
 * engine interleaved in random order and random batch sizes (prefill
 * chunks mixed with one-token decode steps of the others, batches that
 * cross n_batch). Asserted: every token's logits match the lone run's to
 * 1e-3 (relative L2), and all but one in twenty to 1e-5, with the same
 * argmax but at a near-tie (1e-4 of the range); they are not all
 * bit-identical because a product over up to four tokens takes the fused
 * kernels and one over more dequantises first, which moves the last bits;
 * now and then one token lands further off, most likely where a late
 * layer's router scores for its k-th and (k+1)-th expert lie within those
 * bits (seen: MS_SEED=1883670921519140, tiny, one token of 47 at 5.3e-5,
 * every later token of its sequence within 1e-6, so the difference did not
 * travel through the KV cache); reading another sequence's KV cache
 * would move every token by far more than 1e-3. The positions advance per
 * sequence; clearing one sequence and running it again gives its first
 * logits again (to the same bounds) while the others go on; a token for
 * a sequence out of range is -EINVAL and one past n_ctx -ENOSPC, with no
 * position moved.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "moestream/engine.h"
#include "testutil.h"

#define S 3
static const int LEN[S] = { 23, 9, 40 };

static void check(const char *name, const char *mk_args)
{
	char path[4096], cmd[8192];
	snprintf(path, sizeof(path), "%s/%s.gguf", t_tmpdir(), name);
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s -o '%s' >/dev/null 2>&1",
		 t_build_path("moestream"), mk_args, path);
	if (system(cmd))
		t_fatal("'%s' failed", cmd);
	struct ms_err err = { 0 };
	/* an f32 KV cache: with f16, a K or V value at an f16 rounding
	 * midpoint may round either way from two f32 paths (a 1e-3 step; see
	 * t_forward_f64), which is not what this test is about */
	struct ms_engine_config cfg = { .model = path, .n_ctx = 48, .n_batch = 16,
					.quiet = true, .kv_f32 = true };
	struct ms_engine *e;
	if (ms_engine_open(&e, &cfg, &err))
		t_fatal("%s: %s", name, err.msg);
	int V = (int)ms_engine_info(e)->n_vocab;
	uint64_t rs = t_seed();
	int32_t ids[S][64];
	float *lone[S];
	for (int s = 0; s < S; s++) {
		for (int i = 0; i < LEN[s]; i++)
			ids[s][i] = (int32_t)(t_rand(&rs) % (uint64_t)V);
		lone[s] = malloc((size_t)LEN[s] * V * sizeof(float));
		ms_engine_reset(e);
		if (ms_engine_eval(e, ids[s], (size_t)LEN[s], lone[s], true, &err))
			t_fatal("%s: eval: %s", name, err.msg);
	}
	ms_engine_close(e);

	cfg.n_seq = S;
	if (ms_engine_open(&e, &cfg, &err))
		t_fatal("%s: %s", name, err.msg);
	T_CHECK(ms_engine_info(e)->n_seq == S, "n_seq %u", ms_engine_info(e)->n_seq);
	int at[S] = { 0 };
	int32_t bid[64];
	uint32_t bseq[64];
	bool want[64];
	float *out = malloc((size_t)64 * V * sizeof(float));
	int bad = 0, far = 0, off = 0, batches = 0, mixed = 0, same = 0, argmax_diff = 0, n_cmp = 0;
	double worst = 0;
	while (at[0] < LEN[0] || at[1] < LEN[1] || at[2] < LEN[2]) {
		/* a batch: each sequence adds a random run of its next tokens */
		size_t n = 0;
		int who = 0;
		for (int s = 0; s < S; s++) {
			int left = LEN[s] - at[s];
			if (!left)
				continue;
			int take = (int)(t_rand(&rs) % 3 == 0 ? 1 + t_rand(&rs) % 12 : 1);
			take = take > left ? left : take;
			for (int i = 0; i < take; i++) {
				bid[n] = ids[s][at[s] + i];
				bseq[n] = (uint32_t)s;
				want[n] = t_rand(&rs) % 4 != 0;
				n++;
			}
			who++;
		}
		/* interleave: a random merge that keeps each sequence's order */
		int32_t mid[64];
		uint32_t mseq[64];
		bool mwant[64];
		size_t from[S] = { 0 }, start[S], cnt[S] = { 0 };
		for (size_t i = 0; i < n; i++)
			cnt[bseq[i]]++;
		for (int s = 0, a = 0; s < S; s++) {
			start[s] = (size_t)a;
			a += (int)cnt[s];
		}
		for (size_t i = 0; i < n; i++) {
			int s;
			do
				s = (int)(t_rand(&rs) % S);
			while (from[s] == cnt[s]);
			size_t src = start[s] + from[s]++;
			mid[i] = bid[src];
			mseq[i] = bseq[src];
			mwant[i] = want[src];
		}
		memcpy(bid, mid, n * sizeof(*bid));
		memcpy(bseq, mseq, n * sizeof(*bseq));
		memcpy(want, mwant, n * sizeof(*want));
		if (ms_engine_eval_seqs(e, bid, bseq, n, want, out, &err))
			t_fatal("%s: eval_seqs: %s", name, err.msg);
		size_t r = 0;
		for (size_t i = 0; i < n; i++) {
			int s = (int)bseq[i];
			if (want[i]) {
				const float *a = out + r * V,
					    *b = lone[s] + (size_t)at[s] * V;
				double num = 0, den = 0;
				int am = 0, bm = 0;
				for (int v = 0; v < V; v++) {
					num += ((double)a[v] - b[v]) * ((double)a[v] - b[v]);
					den += (double)b[v] * b[v];
					am = a[v] > a[am] ? v : am;
					bm = b[v] > b[bm] ? v : bm;
				}
				double rel = sqrt(num / den);
				worst = rel > worst ? rel : worst;
				same += !memcmp(a, b, (size_t)V * sizeof(float));
				far += rel > 1e-3;
				off += rel > 1e-5;
				/* a different argmax only at a near-tie of the
				 * lone run's logits (1e-4 of their range) */
				float lo = b[0];
				for (int v = 0; v < V; v++)
					lo = b[v] < lo ? b[v] : lo;
				argmax_diff += am != bm;
				bad += b[bm] - b[am] > 1e-4f * (b[bm] - lo);
				r++;
				n_cmp++;
			}
			at[s]++;
		}
		batches++;
		mixed += who > 1;
		for (int s = 0; s < S; s++)
			T_CHECK(ms_engine_seq_pos(e, (uint32_t)s) == (uint32_t)at[s],
				"sequence %d at %u, expected %d", s,
				ms_engine_seq_pos(e, (uint32_t)s), at[s]);
	}
	printf("%-6s %d sequences of %d/%d/%d tokens in %d batches (%d mixing "
	       "sequences): of %d tokens' logits, %d bit-identical to the lone "
	       "runs', worst relative L2 %.2e, argmax different %d\n", name, S,
	       LEN[0], LEN[1], LEN[2], batches, mixed, n_cmp, same, worst,
	       argmax_diff);
	T_CHECK(far == 0 && off * 20 <= n_cmp, "%s: of %d tokens' logits, %d "
		"differ from the lone run by more than 1e-3 and %d by more than "
		"1e-5 (relative L2; worst %.2e)", name, n_cmp, far, off, worst);
	T_CHECK(bad == 0, "%s: %d tokens with another argmax, not at a near-tie",
		name, bad);
	T_CHECK(mixed > 0, "no batch mixed sequences");

	/* clear sequence 1, run its first 5 tokens again beside sequence 0's
	 * next (absent: it is full) */
	ms_engine_seq_clear(e, 1);
	T_CHECK(ms_engine_seq_pos(e, 1) == 0 && ms_engine_seq_pos(e, 2) == 40,
		"clear moved the wrong sequence");
	for (int i = 0; i < 5; i++) {
		bid[i] = ids[1][i];
		bseq[i] = 1;
	}
	if (ms_engine_eval_seqs(e, bid, bseq, 5, NULL, out, &err))
		t_fatal("%s: %s", name, err.msg);
	int c_far = 0, c_off = 0;
	double c_worst = 0;
	for (int k = 0; k < 5; k++) {
		double num = 0, den = 0;
		for (int i = k * V; i < (k + 1) * V; i++) {
			num += ((double)out[i] - lone[1][i]) *
			       ((double)out[i] - lone[1][i]);
			den += (double)lone[1][i] * lone[1][i];
		}
		double rel = sqrt(num / den);
		c_worst = rel > c_worst ? rel : c_worst;
		c_far += rel > 1e-3;
		c_off += rel > 1e-5;
	}
	T_CHECK(c_far == 0 && c_off <= 1, "%s: sequence 1 cleared and run again: "
		"%d of its 5 tokens beyond 1e-3 and %d beyond 1e-5 of its first run "
		"(worst %.2e)", name, c_far, c_off, c_worst);

	/* errors: nothing moves */
	bseq[0] = S;
	T_CHECK(ms_engine_eval_seqs(e, bid, bseq, 1, NULL, out, &err) == -EINVAL &&
		strstr(err.msg, "sequence 3"), "out-of-range sequence: %s", err.msg);
	for (int i = 0; i < 10; i++)
		bseq[i] = i < 1 ? 1 : 2; /* 1 fits for 1, but 9 do not for 2 */
	T_CHECK(ms_engine_eval_seqs(e, bid, bseq, 10, NULL, out, &err) == -ENOSPC &&
		strstr(err.msg, "sequence 2"), "past n_ctx: %s", err.msg);
	T_CHECK(ms_engine_seq_pos(e, 1) == 5 && ms_engine_seq_pos(e, 2) == 40,
		"a refused batch moved positions (%u, %u)", ms_engine_seq_pos(e, 1),
		ms_engine_seq_pos(e, 2));
	ms_engine_close(e);
	free(out);
	for (int s = 0; s < S; s++)
		free(lone[s]);
	unlink(path);
}

int main(void)
{
	check("tiny", "--preset tiny");
	check("qwen3", "--preset qwen3-moe-30b-a3b --moe-layers 1 --vocab 1024");
	return t_done();
}
