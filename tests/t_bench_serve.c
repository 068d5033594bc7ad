/*
 * t_bench_serve - `moestream bench serve` on mkmodel's tiny preset with the
 * Qwen3 tokenizer, a few tokens a request: what it promises, never how fast
 * (speed on a shared machine is noise):
 *
 *  - exit 0, the run/serve pairs and the --parallel 4 rounds printed, one
 *    pair per --repeat;
 *  - the table's figures the medians of those printed samples; each
 *    verdict's ratio the median of the pairs' (rounds') quotients, the
 *    quotient of the two medians printed beside it; each verdict its value
 *    against its target;
 *  - the same text in every serve and run, and the four concurrent texts
 *    equal in every round and to the same four sent one by one;
 *  - --repeat out of range: exit 2 naming the bounds.
 *
 * Without root it runs without the memory cgroup (it says so); the checks
 * are the same.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemontest.h"
#include "testutil.h"

#define REP 3

static int bench(const char *args, char **out, char **err)
{
	const char *d = t_tmpdir();
	char o[4096], e[4096], cmd[16384];
	snprintf(o, sizeof(o), "%s/bench.out", d);
	snprintf(e, sizeof(e), "%s/bench.err", d);
	snprintf(cmd, sizeof(cmd), "%s bench serve %s >%s 2>%s",
		 t_build_path("moestream"), args, o, e);
	int rc = t_run(cmd, NULL, 0);
	*out = t_read_text(o);
	*err = t_read_text(e);
	printf("$ moestream bench serve %s -> exit %d\n%s", args, rc,
	       *out ? *out : "");
	return rc;
}

/* The n "a/b" pairs after `label` (on its line). */
static int pairs(const char *out, const char *label, double *a, double *b,
		 int n)
{
	const char *p = out ? strstr(out, label) : NULL;
	if (!p)
		return 0;
	p += strlen(label);
	int k = 0;
	while (k < n) {
		char *end;
		a[k] = strtod(p, &end);
		if (end == p || *end != '/')
			break;
		p = end + 1;
		b[k] = strtod(p, &end);
		if (end == p)
			break;
		p = end;
		k++;
	}
	return k;
}

/* The number after `label` (the first on its line after it). */
static double after(const char *out, const char *label)
{
	const char *p = out ? strstr(out, label) : NULL;
	return p ? strtod(p + strlen(label), NULL) : NAN;
}

static double median3(const double *v)
{
	double a = v[0], b = v[1], c = v[2];
	return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

/* Printed with three decimals. */
static bool same3(double x, double y)
{
	return fabs(x - y) < 0.0015;
}

int main(void)
{
	dt_watchdog(600, "t_bench_serve");
	char model[4096], args[8192];
	snprintf(model, sizeof(model), "%s/tiny.gguf", t_tmpdir());
	t_tiny_qwen3(model);
	char *out, *err;

	snprintf(args, sizeof(args), "--model '%s' --mem-limit 1G --gen 8 "
		 "--repeat %d", model, REP);
	int rc = bench(args, &out, &err);
	T_CHECK(rc == 0, "exit %d: %s", rc, err ? err : "");
	double run[REP], serve[REP], one[REP], four[REP];
	int np = pairs(out, "each run / serve pair:", run, serve, REP);
	int nr = pairs(out, "1 request / 4 at once, each round:", one, four, REP);
	T_CHECK(np == REP && nr == REP, "%d run/serve pairs and %d rounds, not %d",
		np, nr, REP);
	if (np == REP && nr == REP) {
		double m_run = after(out, "moestream run (1 request, median)"),
		       m_serve = after(out, "moestream serve --parallel 1 (1 req., "
					    "median)"),
		       m_one = after(out, "moestream serve --parallel 4, 1 req. "
					  "(median)"),
		       m_four = after(out, "serve --parallel 4, 4 at once (sum, "
					   "median)");
		T_CHECK(same3(m_run, median3(run)) && same3(m_serve, median3(serve)),
			"run %.3f / serve %.3f are not the medians of the pairs "
			"(%.3f, %.3f)", m_run, m_serve, median3(run),
			median3(serve));
		T_CHECK(same3(m_one, median3(one)) && same3(m_four, median3(four)),
			"one %.3f / four at once %.3f are not the medians of the "
			"rounds (%.3f, %.3f)", m_one, m_four, median3(one),
			median3(four));
		for (int k = 0; k < REP; k++)
			T_CHECK(one[k] > 0 && four[k] > 0 && run[k] > 0 &&
					serve[k] > 0,
				"round %d: a rate of 0 (%g %g %g %g)", k, one[k],
				four[k], run[k], serve[k]);
		double q1[REP], q4[REP];
		for (int k = 0; k < REP; k++) {
			q1[k] = serve[k] / run[k];
			q4[k] = four[k] / one[k];
		}
		double r1 = after(out, "serve / run, one request:"),
		       r4 = after(out, "4 at once / 1 request (--parallel 4):"),
		       mq1 = after(out, "pairs' ratios, the medians'"),
		       mq4 = after(out, "rounds' ratios, the medians'");
		T_CHECK(fabs(r1 - median3(q1)) < 0.002 * r1 + 0.001 &&
				fabs(r4 - median3(q4)) < 0.002 * r4 + 0.001,
			"ratios %.3f, %.3f are not the medians of the pairs' and "
			"rounds' quotients (%.3f, %.3f)", r1, r4, median3(q1),
			median3(q4));
		T_CHECK(fabs(mq1 - m_serve / m_run) < 0.002 * mq1 + 0.001 &&
				fabs(mq4 - m_four / m_one) < 0.002 * mq4 + 0.001,
			"the medians' quotients %.3f, %.3f are not %.3f / %.3f and "
			"%.3f / %.3f", mq1, mq4, m_serve, m_run, m_four, m_one);
		/* each verdict on its own line */
		const char *v1 = strstr(out, "serve / run, one request:");
		const char *v4 = strstr(out, "4 at once / 1 request");
		char l1[512] = "", l4[512] = "";
		if (v1)
			snprintf(l1, sizeof(l1), "%.*s", (int)strcspn(v1, "\n"), v1);
		if (v4)
			snprintf(l4, sizeof(l4), "%.*s", (int)strcspn(v4, "\n"), v4);
		T_CHECK(strstr(l1, r1 >= 0.97 ? ": met;" : ": MISSED;") &&
				strstr(l4, r4 >= 2.0 ? ": met;" : ": MISSED;"),
			"a verdict does not follow its value (%.3f: '%s'; %.3f: "
			"'%s')", r1, l1, r4, l4);
	}
	T_CHECK(out && strstr(out, "same text, every serve and run:      yes"),
		"run and serve texts differ");
	T_CHECK(out && strstr(out, "4 at once = the same 4 one by one:   yes "
				   "(every round)"),
		"the concurrent texts differ between rounds or from one by one");
	free(out);
	free(err);

	/* bad usage */
	snprintf(args, sizeof(args), "--model '%s' --repeat 0", model);
	rc = bench(args, &out, &err);
	T_CHECK(rc == 2 && err && strstr(err, "--repeat: 1..9"),
		"--repeat 0: exit %d, '%s'", rc, err ? err : "");
	free(out);
	free(err);
	return t_done();
}
