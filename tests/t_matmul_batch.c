/*
 * t_matmul_batch - a token's products do not depend on its batch-mates,
 * up to four of them (decode steps of up to four sequences, `moestream
 * serve --parallel 4`): ms_matmul and ms_expert_ffn over 2, 3 and 4 inputs
 * give each input's outputs bit for bit as a call with that input alone,
 * for every type with a fused kernel (the K-quants two inputs at a time,
 * the others one at a time); and the results stay within 1e-5 (relative
 * L2) of the scalar reference in double. Skips (77) without AVX2.
 */
#include <math.h>
#include <string.h>

#include "moestream/kernels.h"
#include "moestream/model.h"
#include "testutil.h"

void tool_fill_blocks(uint8_t *buf, uint64_t size, uint32_t type, uint64_t *s);

static const uint32_t types[] = { MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q4_K,
				  MS_TYPE_Q5_K, MS_TYPE_Q6_K, MS_TYPE_Q8_0,
				  MS_TYPE_Q4_0, MS_TYPE_F16 };

int main(void)
{
	if (!ms_ffn_path_available(MS_FFN_PATH_AVX2)) {
		printf("skip: no AVX2 on this CPU\n");
		return 77;
	}
	struct ms_ffn_opts avx = { .path = MS_FFN_PATH_AVX2, .n_threads = 2 },
			   ref = { .path = MS_FFN_PATH_SCALAR, .n_threads = 2 };
	struct ms_err err = { 0 };
	const int64_t E = 512, F = 256;
	uint64_t s = t_seed();
	float *x = malloc(4 * E * sizeof(float)), *y1 = malloc(4 * E * sizeof(float)),
	      *yn = malloc(4 * E * sizeof(float)), *yr = malloc(4 * E * sizeof(float));
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		uint32_t t = types[ti];
		uint64_t rs_e, rs_f;
		ms_type_row_size(t, E, &rs_e, NULL);
		ms_type_row_size(t, F, &rs_f, NULL);
		uint8_t *g = malloc(F * rs_e), *u = malloc(F * rs_e), *d = malloc(E * rs_f);
		tool_fill_blocks(g, F * rs_e, t, &s);
		tool_fill_blocks(u, F * rs_e, t, &s);
		tool_fill_blocks(d, E * rs_f, t, &s);
		for (int64_t i = 0; i < 4 * E; i++)
			x[i] = (float)((double)(t_rand(&s) % 2001) / 1000.0 - 1.0);
		int diff_mm = 0, diff_ffn = 0;
		double worst = 0;
		for (int nt = 2; nt <= 4; nt++) {
			/* the matrix product: W_gate (F x E) against nt inputs */
			if (ms_matmul(t, g, E, F, x, yn, nt, &avx, &err))
				t_fatal("%s: %s", ms_type_name(t), err.msg);
			for (int k = 0; k < nt; k++) {
				if (ms_matmul(t, g, E, F, x + k * E, y1, 1, &avx, &err))
					t_fatal("%s", err.msg);
				diff_mm += memcmp(y1, yn + k * F, F * sizeof(float)) != 0;
			}
			/* the expert FFN */
			struct ms_expert_view v = { .n_embd = E, .n_ff = F,
						    .type = { t, t, t },
						    .data = { g, u, d } };
			if (ms_expert_ffn(&v, x, yn, nt, &avx, &err) ||
			    ms_expert_ffn(&v, x, yr, nt, &ref, &err))
				t_fatal("%s: %s", ms_type_name(t), err.msg);
			for (int k = 0; k < nt; k++) {
				if (ms_expert_ffn(&v, x + k * E, y1, 1, &avx, &err))
					t_fatal("%s", err.msg);
				diff_ffn += memcmp(y1, yn + k * E, E * sizeof(float)) != 0;
			}
			double num = 0, den = 0;
			for (int64_t i = 0; i < nt * E; i++) {
				num += ((double)yn[i] - yr[i]) * ((double)yn[i] - yr[i]);
				den += (double)yr[i] * yr[i];
			}
			double rel = den > 0 ? sqrt(num / den) : 0;
			worst = rel > worst ? rel : worst;
		}
		printf("%-5s 2..4 inputs: matmul outputs differing from one input "
		       "alone %d, ffn %d; ffn against the scalar reference: "
		       "relative L2 <= %.2e\n", ms_type_name(t), diff_mm, diff_ffn,
		       worst);
		T_CHECK(diff_mm == 0 && diff_ffn == 0, "%s: %d / %d outputs depend on "
			"the batch", ms_type_name(t), diff_mm, diff_ffn);
		T_CHECK(worst <= 1e-5, "%s: relative L2 %.2e against the reference",
			ms_type_name(t), worst);
		free(g);
		free(u);
		free(d);
	}
	free(x);
	free(y1);
	free(yn);
	free(yr);
	return t_done();
}
