/*
 * t_plan - `moestream plan`'s arithmetic, with the machine given (--ram,
 * --vram, --cpu-gbps, --disk-gbps, so nothing is measured and the figures
 * are exact), on mkmodel's tiny preset written to a file and read back by
 * --preset (the same headers both ways):
 *
 *  - the bytes: routed bytes per token = k x the expert bytes of the layers
 *    run (`moestream inspect --json`'s bytes_per_token); the resident
 *    bytes computed per token = the resident tensors of the blocks run
 *    less token_embd (the tiny preset has an output tensor), summed here
 *    from the GGUF's tensor list;
 *  - a token's time: compute = (resident + routed per token) / cpu rate,
 *    disk = miss x routed / disk rate, tok/s = 1 / max of them, bound
 *    named; with --vram the GPU line (compute at --gpu-gbps, PCIe copies);
 *  - the hit rate is LRU's on the trace: the same as `moestream simulate`
 *    gives for the same trace and cache size;
 *  - more RAM never gives fewer tok/s; a RAM too small for the resident
 *    tensors is "cannot run" with the reason; --preset and the file agree.
 */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "moestream/model.h"
#include "testutil.h"

static cJSON *plan(const char *args)
{
	char cmd[8192], out[4096];
	snprintf(out, sizeof(out), "%s/plan.json", t_tmpdir());
	snprintf(cmd, sizeof(cmd), "%s plan %s --json > '%s' 2>&1",
		 t_build_path("moestream"), args, out);
	int rc = system(cmd);
	char *t = t_read_text(out);
	cJSON *j = t ? cJSON_Parse(t) : NULL;
	if (rc || !j)
		t_fatal("'%s' -> %d: %s", cmd, rc, t ? t : "");
	free(t);
	return j;
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItem(o, k);
	if (!cJSON_IsNumber(v))
		t_fatal("no number '%s'", k);
	return v->valuedouble;
}

static bool near(double a, double b)
{
	return fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b)) + 1e-12;
}

int main(void)
{
	const char *d = t_tmpdir();
	char model[4096], cmd[8192], args[8192];
	snprintf(model, sizeof(model), "%s/tiny.gguf", d);
	snprintf(cmd, sizeof(cmd), "%s mkmodel --preset tiny -o '%s' >/dev/null 2>&1",
		 t_build_path("moestream"), model);
	if (system(cmd))
		t_fatal("'%s' failed", cmd);
	struct ms_err err = { 0 };
	struct ms_model *m;
	if (ms_model_open(&m, model, &err))
		t_fatal("%s", err.msg);
	/* the resident bytes a token computes, from the tensor list */
	uint64_t res_tok = 0;
	uint32_t n_run = m->n_block - m->n_nextn;
	for (uint64_t i = 0; i < m->shards[0]->n_tensors; i++) {
		const struct ms_gguf_tensor *t = &m->shards[0]->tensors[i];
		int b = -1;
		sscanf(t->name, "blk.%d.", &b);
		if (strstr(t->name, "_exps.") || b >= (int)n_run ||
		    !strcmp(t->name, "token_embd.weight"))
			continue;
		res_tok += t->size;
	}

	const double cpu = 3.0, disk = 0.5;
	/* a cache of 40% of the experts, so that the disk counts */
	snprintf(args, sizeof(args), "'%s' --ram 64G --cpu-gbps %g --disk-gbps %g "
		 "--cache-size 40%%", model, cpu, disk);
	cJSON *j = plan(args);
	double routed = num(j, "routed_bytes_per_token");
	T_CHECK((uint64_t)routed == m->bytes_per_token,
		"routed bytes per token %.0f, the model says %llu", routed,
		(unsigned long long)m->bytes_per_token);
	T_CHECK((uint64_t)num(j, "resident_bytes_per_token") == res_tok,
		"resident bytes per token %.0f, the tensors say %llu",
		num(j, "resident_bytes_per_token"), (unsigned long long)res_tok);
	const cJSON *p = cJSON_GetObjectItem(j, "plan");
	T_CHECK(cJSON_IsTrue(cJSON_GetObjectItem(p, "runs")), "does not run");
	double miss = num(p, "miss"), comp = num(p, "compute_s"),
	       dk = num(p, "disk_s"), tps = num(p, "decode_tokps");
	T_CHECK(near(comp, ((double)res_tok + routed) / 1e9 / cpu),
		"compute %.9f s, expected %.9f", comp,
		((double)res_tok + routed) / 1e9 / cpu);
	T_CHECK(near(dk, miss * routed / 1e9 / disk), "disk %.9f s, expected %.9f",
		dk, miss * routed / 1e9 / disk);
	T_CHECK(near(tps, 1.0 / fmax(comp, dk)), "tok/s %.6f, expected %.6f", tps,
		1.0 / fmax(comp, dk));
	const char *bound = cJSON_GetStringValue(cJSON_GetObjectItem(p, "bound"));
	T_CHECK(bound && !strcmp(bound, dk >= comp ? "disk" : "CPU compute"),
		"bound '%s' (compute %.4f, disk %.4f)", bound ? bound : "", comp, dk);
	T_CHECK(miss > 0.05 && miss < 0.95, "miss rate %.3f at 40%%", miss);
	printf("tiny, 40%% cache: routed %.0f B/token, resident %llu B/token, miss "
	       "%.3f, compute %.4f s, disk %.4f s, %.2f tok/s (%s)\n", routed,
	       (unsigned long long)res_tok, miss, comp, dk, tps, bound);

	/* the hit rate is simulate's LRU on the same trace and cache */
	double cache = num(p, "ram_cache_bytes");
	char tr[4096], sj[4096];
	snprintf(tr, sizeof(tr), "%s/t.trace", d);
	snprintf(sj, sizeof(sj), "%s/sim.json", d);
	snprintf(cmd, sizeof(cmd), "%s trace gen --model '%s' --tokens 1000 -o '%s' "
		 ">/dev/null 2>&1 && %s simulate --model '%s' --trace '%s' "
		 "--cache-size %.0f --policy lru --json > '%s' 2>/dev/null",
		 t_build_path("moestream"), model, tr, t_build_path("moestream"),
		 model, tr, cache, sj);
	T_CHECK(system(cmd) == 0, "'%s' failed", cmd);
	char *st = t_read_text(sj);
	cJSON *sjj = st ? cJSON_Parse(st) : NULL;
	free(st);
	if (!sjj)
		t_fatal("simulate gave no JSON");
	double sh = num(sjj, "hit_rate");
	printf("simulate, LRU at %.0f bytes: hit rate %.6f; the plan's 1 - miss "
	       "%.6f\n", cache, sh, 1 - miss);
	T_CHECK(fabs(sh - (1 - miss)) < 1e-9, "simulate's hit rate %.6f, the "
		"plan's %.6f", sh, 1 - miss);
	cJSON_Delete(sjj);
	cJSON_Delete(j);

	/* the same trace given with --trace: the same plan */
	snprintf(args, sizeof(args), "'%s' --ram 64G --cpu-gbps %g --disk-gbps %g "
		 "--cache-size 40%% --trace '%s'", model, cpu, disk, tr);
	j = plan(args);
	p = cJSON_GetObjectItem(j, "plan");
	T_CHECK(near(num(p, "miss"), miss), "--trace of the same tokens: miss %.4f "
		"against %.4f", num(p, "miss"), miss);
	cJSON_Delete(j);

	/* RAM rows: more RAM, never fewer tok/s; too little: cannot run */
	snprintf(args, sizeof(args), "'%s' --ram 64G --cpu-gbps %g --disk-gbps %g",
		 model, cpu, disk);
	j = plan(args);
	const cJSON *rows = cJSON_GetObjectItem(j, "by_ram");
	double last = 0;
	int n = 0;
	for (const cJSON *r = rows ? rows->child : NULL; r; r = r->next, n++) {
		T_CHECK(num(r, "decode_tokps") >= last, "row %d: %.3f tok/s below "
			"the smaller RAM's %.3f", n, num(r, "decode_tokps"), last);
		last = num(r, "decode_tokps");
	}
	T_CHECK(n == 4, "%d RAM rows", n);
	cJSON_Delete(j);
	snprintf(args, sizeof(args), "'%s' --ram 1G --cpu-gbps %g --disk-gbps %g",
		 model, cpu, disk);
	j = plan(args);
	p = cJSON_GetObjectItem(j, "plan");
	const char *why = cJSON_GetStringValue(cJSON_GetObjectItem(p, "why"));
	T_CHECK(cJSON_IsFalse(cJSON_GetObjectItem(p, "runs")) && why &&
		strstr(why, "RAM"), "1G of RAM: %s", why ? why : "runs");
	cJSON_Delete(j);

	/* a GPU: resident tensors in VRAM, GPU compute, PCIe copies */
	snprintf(args, sizeof(args), "'%s' --ram 64G --vram 8G --cpu-gbps %g "
		 "--disk-gbps %g --gpu-gbps 100 --pcie-gbps 10 --cache-size 40%%",
		 model, cpu, disk);
	j = plan(args);
	p = cJSON_GetObjectItem(j, "plan");
	T_CHECK(cJSON_IsTrue(cJSON_GetObjectItem(p, "resident_on_gpu")),
		"resident tensors not on the GPU");
	double hr = num(p, "hit_ram"), ms = num(p, "miss");
	T_CHECK(near(num(p, "compute_s"), ((double)res_tok + routed) / 1e9 / 100),
		"GPU compute %.9f", num(p, "compute_s"));
	T_CHECK(near(num(p, "pcie_s"), (hr + ms) * routed / 1e9 / 10), "PCIe %.9f",
		num(p, "pcie_s"));
	T_CHECK(cJSON_GetObjectItem(j, "cpu_only") != NULL, "no CPU-only line");
	cJSON_Delete(j);

	/* --preset reads the same headers */
	snprintf(args, sizeof(args), "--preset tiny --ram 64G --cpu-gbps %g "
		 "--disk-gbps %g --cache-size 40%%", cpu, disk);
	j = plan(args);
	p = cJSON_GetObjectItem(j, "plan");
	T_CHECK(near(num(j, "routed_bytes_per_token"), routed) &&
		near(num(p, "decode_tokps"), tps), "--preset tiny: %.0f B, %.4f tok/s; "
		"the file: %.0f B, %.4f tok/s", num(j, "routed_bytes_per_token"),
		num(p, "decode_tokps"), routed, tps);
	cJSON_Delete(j);

	/* usage errors */
	snprintf(cmd, sizeof(cmd), "%s plan --preset tiny >/dev/null 2>&1",
		 t_build_path("moestream"));
	T_CHECK(WEXITSTATUS(system(cmd)) == 2, "--preset without a disk rate: not 2");
	ms_model_free(m);
	unlink(model);
	return t_done();
}
