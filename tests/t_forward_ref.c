/*
 * t_forward_ref - the decoder's logits against llama.cpp's on the same file.
 *
 * mkmodel writes three models with the Qwen3 tokenizer: the tiny preset,
 * GLM-4.7 cut to its 3 dense + 2 MoE layers, and Qwen3-30B-A3B cut to 2
 * layers. A paragraph of English (96 tokens: two prefill batches of 64) goes
 * through both engines teacher-forced, logits at every position:
 *
 *  - per position: the cosine of the two logit vectors, whether the argmax
 *    agrees, whether llama.cpp's argmax is among our top 3, the largest
 *    absolute difference; printed for every model.
 *  - the same with llama.cpp's CPU rounding (cfg.q8_activations):
 *    activations rounded to 8 bits before each quantised product, and
 *    attention in batches under 64 tokens with its flash attention's f16
 *    accumulator (ms_attn_f16).
 *  - on the tiny preset: the same logits (bit for bit) through a moestreamd
 *    as embedded, and with an embedded cache so small that experts keep
 *    missing; and greedy generation of 32 tokens against llama.cpp's.
 *
 * What is asserted, and why these bounds. The f32 engine computes exact
 * products; llama.cpp rounds activations to 8 bits and attention to f16, a
 * relative difference of ~1e-3 in every hidden state. Where a token's router
 * has two experts within that distance of each other (random test routers
 * are nearly uniform, so this happens at a few percent of token-layers),
 * the two engines pick different experts and that position's logits part
 * (cosine ~0.99). So: the median cosine distance must be <= 1e-4 (a wrong
 * norm, rope, bias, routing rule or expert order gives 1e-2 and more), at
 * least 90% of positions at cosine >= 0.999, llama.cpp's argmax in our top 3
 * at >= 90%. With llama.cpp's rounding the near ties mostly fall the same
 * way, and issue 15's strict figures are asserted: cosine >= 0.999 at every
 * position, argmax equal at >= 95%, llama.cpp's argmax in our top 3 at
 * every position (measured: min cosine 0.99991 tiny, 0.99988 GLM, 0.99999
 * Qwen3). Greedy decoding: 32 tokens equal to llama.cpp's, at least 16 of
 * them distinct (so the text moves on). Were they to part, where they first
 * do is printed with both engines' gaps between the two tokens.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemontest.h"
#include "moestream/engine.h"
#include "testutil.h"
#include "../tools/llama_ref.h"

static const char paragraph[] =
	"It was a bright cold day in April, and the clocks were striking "
	"thirteen. Winston Smith, his chin nuzzled into his breast in an effort "
	"to escape the vile wind, slipped quickly through the glass doors of "
	"Victory Mansions, though not quickly enough to prevent a swirl of "
	"gritty dust from entering along with him. The hallway smelt of boiled "
	"cabbage and old rag mats. At one end of it a coloured poster, too "
	"large for indoor display, had been tacked to the wall.";

#define N_POS 96

struct cmp {
	double min_cos, median_dist, max_abs;
	int n, good_cos, argmax_eq, top3;
};

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static struct cmp compare(const float *ours, const float *ref, int n, int V)
{
	struct cmp c = { .min_cos = 1, .n = n };
	double dist[N_POS];
	for (int p = 0; p < n; p++) {
		const float *a = ours + (size_t)p * V, *b = ref + (size_t)p * V;
		double d = 0, na = 0, nb = 0;
		int am = 0, bm = 0;
		for (int i = 0; i < V; i++) {
			d += (double)a[i] * b[i];
			na += (double)a[i] * a[i];
			nb += (double)b[i] * b[i];
			am = a[i] > a[am] ? i : am;
			bm = b[i] > b[bm] ? i : bm;
			double ad = fabs((double)a[i] - b[i]);
			c.max_abs = ad > c.max_abs ? ad : c.max_abs;
		}
		double cs = d / sqrt(na * nb);
		dist[p] = 1 - cs;
		c.min_cos = cs < c.min_cos ? cs : c.min_cos;
		c.good_cos += cs >= 0.999;
		c.argmax_eq += am == bm;
		int above = 0; /* our logits above llama.cpp's argmax */
		for (int i = 0; i < V; i++)
			above += a[i] > a[bm];
		c.top3 += above < 3;
	}
	qsort(dist, (size_t)n, sizeof(dist[0]), cmp_dbl);
	c.median_dist = dist[n / 2];
	return c;
}

static void print_cmp(const char *name, const char *what, const struct cmp *c)
{
	printf("%-8s %-22s positions %d: cosine min %.6f, median 1-cos %.2e, "
	       ">= 0.999 at %d; argmax equal %d (%.1f%%), llama.cpp's in our "
	       "top 3 %d; max |diff| %.4f\n", name, what, c->n, c->min_cos,
	       c->median_dist, c->good_cos, c->argmax_eq,
	       100.0 * c->argmax_eq / c->n, c->top3, c->max_abs);
}

static float *eval_ours(const char *model, const char *socket, uint64_t cache,
			bool q8, const int32_t *ids, int n, int *V)
{
	struct ms_err err = { 0 };
	struct ms_engine_config cfg = { .model = model, .socket = socket,
					.cache_size = cache, .n_ctx = 256,
					.q8_activations = q8, .quiet = true };
	struct ms_engine *e;
	if (ms_engine_open(&e, &cfg, &err)) {
		t_fail_at(__FILE__, __LINE__, "engine on %s: %s", model, err.msg);
		return NULL;
	}
	*V = (int)ms_engine_info(e)->n_vocab;
	float *l = malloc((size_t)n * (size_t)*V * sizeof(float));
	if (!l || ms_engine_eval(e, ids, (size_t)n, l, true, &err)) {
		t_fail_at(__FILE__, __LINE__, "eval on %s: %s", model, err.msg);
		free(l);
		l = NULL;
	}
	ms_engine_close(e);
	return l;
}

static int32_t argmax(const float *l, int V)
{
	int m = 0;
	for (int i = 1; i < V; i++)
		m = l[i] > l[m] ? i : m;
	return m;
}

/* Greedy: our 32 tokens and llama.cpp's, each decoding its own choice. */
static void greedy(const char *model, struct ms_llref *ref, const int32_t *ids,
		   int n)
{
	struct ms_err err = { 0 };
	struct ms_engine_config cfg = { .model = model, .n_ctx = 256,
					.q8_activations = true, .quiet = true };
	struct ms_engine *e;
	if (ms_engine_open(&e, &cfg, &err)) {
		t_fail_at(__FILE__, __LINE__, "engine: %s", err.msg);
		return;
	}
	int V = (int)ms_engine_info(e)->n_vocab;
	float *a = malloc((size_t)V * sizeof(float));
	float *b = malloc((size_t)n * (size_t)V * sizeof(float));
	int32_t ours[32], theirs[32];
	ms_llref_reset(ref);
	if (ms_engine_eval(e, ids, (size_t)n, a, false, &err) ||
	    ms_llref_decode(ref, ids, (size_t)n, 0, b, &err)) {
		t_fail_at(__FILE__, __LINE__, "greedy prefill: %s", err.msg);
		goto out;
	}
	/* Both decode their own choices; while the choices agree the contexts
	 * are the same, so where they first part, llama.cpp's choice can be
	 * looked up in our logits: a near tie (a rounding apart), or a bug. */
	const float *bl = b + (size_t)(n - 1) * V;
	int same = 0;
	for (int i = 0; i < 32; i++) {
		int32_t x = argmax(a, V), y = argmax(bl, V);
		ours[i] = x;
		theirs[i] = y;
		if (x != y && same == i) {
			float lo = a[0], hi = a[0];
			int above = 0;
			for (int k = 0; k < V; k++) {
				lo = a[k] < lo ? a[k] : lo;
				hi = a[k] > hi ? a[k] : hi;
				above += a[k] > a[y];
			}
			double gap = (double)(a[x] - a[y]) / (double)(hi - lo);
			double their = (double)(bl[y] - bl[x]) / (double)(hi - lo);
			printf("tiny     greedy: step %d parts: ours %d, llama.cpp's %d "
			       "is our #%d, %.2e of our logit range below (in "
			       "llama.cpp's, ours is %.2e below its)\n", i, x, y,
			       above + 1, gap, their);
			T_CHECK(above < 3 && gap < 1e-2, "greedy step %d: llama.cpp's "
				"token %d is our #%d, %.3f of the logit range below "
				"ours: not a near tie", i, y, above + 1, gap);
		}
		if (x == y && same == i)
			same++;
		if (ms_engine_eval(e, &x, 1, a, false, &err) ||
		    ms_llref_decode(ref, &y, 1, n + i, b, &err)) {
			t_fail_at(__FILE__, __LINE__, "greedy step %d: %s", i, err.msg);
			goto out;
		}
		bl = b;
	}
	int distinct = 0;
	for (int i = 0; i < 32; i++) {
		int k = 0;
		while (k < i && ours[k] != ours[i])
			k++;
		distinct += k == i;
	}
	printf("tiny     greedy 32 tokens: the first %d equal to llama.cpp's; "
	       "%d distinct\n", same, distinct);
	T_CHECK(same == 32, "greedy: only the first %d of 32 tokens equal "
		"llama.cpp's", same);
	/* a random model whose text is one token repeated would test little
	 * past the first step (mkmodel's token embeddings are large for this) */
	T_CHECK(distinct >= 16, "greedy: %d distinct tokens in 32: the test "
		"model repeats itself", distinct);
	printf("         ours:     ");
	for (int i = 0; i < 32; i++)
		printf(" %d", ours[i]);
	printf("\n         llama.cpp:");
	for (int i = 0; i < 32; i++)
		printf(" %d", theirs[i]);
	printf("\n");
out:
	free(a);
	free(b);
	ms_engine_close(e);
}

static void run_model(const char *name, const char *model, bool tiny)
{
	struct ms_err err = { 0 };
	struct ms_llref *ref;
	if (ms_llref_open(&ref, NULL, model, 256, 0, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: llama.cpp: %s", name, err.msg);
		return;
	}
	struct ms_gguf *g;
	struct ms_vocab *v;
	struct ms_tokens t = { 0 };
	if (ms_gguf_open(&g, model, &err) || ms_vocab_load(&v, g, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: %s", name, err.msg);
		ms_llref_close(ref);
		return;
	}
	ms_tokenize(v, paragraph, sizeof(paragraph) - 1, MS_TOKENIZE_ADD_SPECIAL,
		    &t, &err);
	T_CHECK(t.n >= N_POS, "the paragraph is %zu tokens, fewer than %d", t.n,
		N_POS);
	int n = t.n < N_POS ? (int)t.n : N_POS;
	int V = ms_llref_n_vocab(ref), V2 = 0;
	float *ref_l = malloc((size_t)n * (size_t)V * sizeof(float));
	if (!ref_l || ms_llref_decode(ref, t.ids, (size_t)n, 0, ref_l, &err)) {
		t_fail_at(__FILE__, __LINE__, "%s: llama.cpp decode: %s", name,
			  err.msg);
		goto out;
	}
	float *ours = eval_ours(model, NULL, 0, false, t.ids, n, &V2);
	if (ours) {
		T_CHECK(V == V2, "%s: %d logits, llama.cpp has %d", name, V2, V);
		struct cmp c = compare(ours, ref_l, n, V);
		print_cmp(name, "f32 (exact products)", &c);
		T_CHECK(c.median_dist <= 1e-4, "%s: median 1-cos %.2e > 1e-4",
			name, c.median_dist);
		T_CHECK(c.good_cos * 10 >= n * 9, "%s: cosine >= 0.999 at only "
			"%d of %d positions", name, c.good_cos, n);
		T_CHECK(c.top3 * 10 >= n * 9, "%s: llama.cpp's argmax in our top 3 "
			"at only %d of %d positions", name, c.top3, n);
	}
	float *q8 = eval_ours(model, NULL, 0, true, t.ids, n, &V2);
	if (q8) {
		struct cmp c = compare(q8, ref_l, n, V);
		print_cmp(name, "8-bit activations", &c);
		/* llama.cpp's own rounding (cfg.q8_activations): issue 15's
		 * strict figures hold */
		T_CHECK(c.good_cos == n, "%s, llama.cpp's rounding: cosine >= "
			"0.999 at %d of %d positions (min %.6f)", name,
			c.good_cos, n, c.min_cos);
		T_CHECK(c.argmax_eq * 100 >= n * 95, "%s, llama.cpp's rounding: "
			"argmax equal at %d of %d positions", name, c.argmax_eq, n);
		T_CHECK(c.top3 == n, "%s, llama.cpp's rounding: its argmax in "
			"our top 3 at %d of %d positions", name, c.top3, n);
		free(q8);
	}
	if (tiny && ours) {
		/* a daemon: the same bytes, so the same logits bit for bit */
		struct dt_daemon d;
		if (!dt_start(&d, "tiny", model, NULL)) {
			float *dl = eval_ours(model, d.sock, 0, false, t.ids, n, &V2);
			T_CHECK(dl && !memcmp(dl, ours, (size_t)n * V * sizeof(float)),
				"tiny: logits through moestreamd differ from the "
				"embedded cache's");
			if (dl)
				printf("tiny     through moestreamd: the same logits, "
				       "bit for bit\n");
			free(dl);
			dt_stop(&d);
		}
		/* a cache of two layers' experts: they keep missing */
		struct ms_model *m;
		if (!ms_model_open(&m, model, &err)) {
			uint64_t small = m->expert_bytes_max * m->n_expert_used * 2;
			ms_model_free(m);
			float *sl = eval_ours(model, NULL, small, false, t.ids, n, &V2);
			T_CHECK(sl && !memcmp(sl, ours, (size_t)n * V * sizeof(float)),
				"tiny: logits with a %llu-byte cache differ",
				(unsigned long long)small);
			if (sl)
				printf("tiny     with a %llu-byte cache (experts keep "
				       "missing): the same logits, bit for bit\n",
				       (unsigned long long)small);
			free(sl);
		}
		greedy(model, ref, t.ids, 16);
	}
	free(ours);
out:
	free(ref_l);
	ms_tokens_free(&t);
	ms_vocab_free(v);
	ms_gguf_free(g);
	ms_llref_close(ref);
}

int main(void)
{
	dt_watchdog(1200, "t_forward_ref");
	const char *toks = getenv("MS_TOKENIZERS");
	if (!toks || !*toks)
		t_fatal("MS_TOKENIZERS is not set: run through tests/run.sh (make "
			"test), which fetches the pinned tokenizers");
	char tj[4096];
	snprintf(tj, sizeof(tj), "%s/qwen3/tokenizer.json", toks);
	struct stat st;
	if (stat(tj, &st))
		t_fatal("no %s: run tests/fetch-ggml.sh", tj);
	static const struct {
		const char *name, *args;
		bool tiny;
	} models[] = {
		{ "tiny", "--preset tiny", true },
		{ "glm4.7", "--preset glm4.7-ud-q2_k_xl --moe-layers 2", false },
		{ "qwen3", "--preset qwen3-moe-30b-a3b --moe-layers 2", false },
	};
	const char *only = getenv("MS_FWD_ONLY");
#if defined(__SANITIZE_ADDRESS__)
	/* under the sanitizers (5-10x slower) the 4 GB GLM model is left to
	 * the plain build's run of this test */
	bool sanitized = true;
#else
	bool sanitized = false;
#endif
	for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
		if (only && strcmp(only, models[i].name))
			continue;
		if (sanitized && !only && !strcmp(models[i].name, "glm4.7")) {
			printf("glm4.7   not run under the sanitizers (the plain "
			       "build runs it)\n");
			continue;
		}
		char path[4096], cmd[8192];
		snprintf(path, sizeof(path), "%s/%s.gguf", t_tmpdir(), models[i].name);
		snprintf(cmd, sizeof(cmd), "%s mkmodel %s --tokenizer '%s' -o '%s' "
			 ">/dev/null 2>&1", t_build_path("moestream"), models[i].args,
			 tj, path);
		if (system(cmd)) {
			t_fail_at(__FILE__, __LINE__, "'%s' failed", cmd);
			continue;
		}
		run_model(models[i].name, path, models[i].tiny);
		unlink(path);
	}
	return t_done();
}
