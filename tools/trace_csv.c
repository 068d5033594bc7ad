/*
 * trace_csv.c - routing traces as CSV, "token,layer,expert,weight", so that
 * traces recorded by other engines (llama.cpp callbacks, vLLM hooks, a
 * Python notebook) can be replayed here, and ours read anywhere.
 *
 * The import reads every row first, checking each field on its own line
 * (numbers that are numbers, a layer that is a MoE block of the model that
 * runs, an expert in range, a finite weight), then sorts the rows by
 * (token, layer, line) and checks the records as a whole: tokens 0..max with
 * no gap, every layer present, exactly k distinct experts each. Only then is
 * the trace allocated, so a typo in a token number cannot make us allocate
 * gigabytes: the rows bound the trace's size.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

#define CSV_HEADER "token,layer,expert,weight"

int ms_trace_export_csv(const struct ms_trace *t, FILE *f, struct ms_err *err)
{
	fputs(CSV_HEADER "\n", f);
	for (uint32_t tok = 0; tok < t->n_tokens; tok++)
		for (uint32_t l = 0; l < t->n_layers; l++) {
			const uint16_t *e = ms_trace_experts(t, tok, l);
			const float *w = ms_trace_weights(t, tok, l);
			for (uint32_t j = 0; j < t->k; j++)
				if (fprintf(f, "%u,%u,%u,%.9g\n", tok, t->blocks[l],
					    e[j], (double)w[j]) < 0)
					goto werr;
		}
	if (fflush(f) || ferror(f))
		goto werr;
	return 0;
werr:
	return ms_err_set(err, errno ? -errno : -EIO, "writing CSV: %s",
			  strerror(errno ? errno : EIO));
}

struct row {
	uint64_t line;
	uint32_t token;
	uint32_t layer; /* index among the layers run, not the block */
	float weight;
	uint16_t expert;
};

static int row_cmp(const void *pa, const void *pb)
{
	const struct row *a = pa, *b = pb;
	if (a->token != b->token)
		return a->token < b->token ? -1 : 1;
	if (a->layer != b->layer)
		return a->layer < b->layer ? -1 : 1;
	return a->line < b->line ? -1 : a->line > b->line;
}

/* Trims blanks at both ends in place. */
static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
		     s[n - 1] == '\n'))
		s[--n] = '\0';
	return s;
}

/* A decimal integer <= max, digits only. */
static bool parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	if (!isdigit((unsigned char)*s))
		return false;
	uint64_t v = 0;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return false;
		unsigned d = (unsigned)(*s - '0');
		if (v > (max - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* Parses one data line into r; on error leaves a message naming the line. */
static int parse_row(char *line, uint64_t no, const char *name,
		     const struct ms_model *m, const int32_t *run_index,
		     struct row *r, struct ms_err *err)
{
	char *f[4];
	unsigned nf = 0;
	char *p = line;
	for (;;) {
		char *c = strchr(p, ',');
		if (nf == 4)
			return ms_err_set(err, -EINVAL,
					  "%s:%llu: more than 4 fields (want "
					  "token,layer,expert,weight)",
					  name, (unsigned long long)no);
		f[nf++] = trim(p);
		if (!c)
			break;
		*c = '\0';
		p = c + 1;
	}
	if (nf != 4)
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: %u field%s, want 4: token,layer,expert,"
				  "weight",
				  name, (unsigned long long)no, nf, nf == 1 ? "" : "s");
	uint64_t tok, blk, e;
	if (!parse_uint(f[0], UINT32_MAX - 1, &tok))
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: token '%.40s' is not a whole number "
				  "0..%u",
				  name, (unsigned long long)no, f[0], UINT32_MAX - 1);
	if (!parse_uint(f[1], UINT32_MAX, &blk))
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: layer '%.40s' is not a whole number "
				  "(the block index N of blk.N)",
				  name, (unsigned long long)no, f[1]);
	if (blk >= m->n_block || run_index[blk] < 0)
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: layer %llu is not a MoE block that %s "
				  "runs (its MoE blocks run are %u..%u; layer is "
				  "the block index N of blk.N)",
				  name, (unsigned long long)no,
				  (unsigned long long)blk, m->shards[0]->path,
				  m->layers[0].block,
				  m->layers[m->n_layers_run - 1].block);
	if (!parse_uint(f[2], UINT64_MAX, &e) || e >= m->n_expert)
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: expert '%.40s' is not a number in "
				  "0..%u (the model has %u experts)",
				  name, (unsigned long long)no, f[2],
				  m->n_expert - 1, m->n_expert);
	char *end;
	errno = 0;
	float w = strtof(f[3], &end);
	if (!*f[3] || *end || !isfinite(w))
		return ms_err_set(err, -EINVAL,
				  "%s:%llu: weight '%.40s' is not a finite number",
				  name, (unsigned long long)no, f[3]);
	r->line = no;
	r->token = (uint32_t)tok;
	r->layer = (uint32_t)run_index[blk];
	r->expert = (uint16_t)e;
	r->weight = w;
	return 0;
}

/* Checks the sorted rows as records; returns the token count or -EINVAL. */
static int64_t check_records(const struct row *rows, size_t n_rows,
			     const char *name, const struct ms_model *m,
			     struct ms_err *err)
{
	uint32_t L = m->n_layers_run, k = m->n_expert_used;
	uint64_t want_tok = 0;
	uint32_t want_l = 0;
	for (size_t i = 0; i < n_rows;) {
		const struct row *r = &rows[i];
		if (r->token != want_tok || r->layer != want_l)
			return ms_err_set(err, -EINVAL,
					  "%s: token %llu has no rows for layer %u "
					  "(every token 0..max needs all %u MoE "
					  "layers)",
					  name, (unsigned long long)want_tok,
					  m->layers[want_l].block, L);
		size_t j = i;
		while (j < n_rows && rows[j].token == r->token &&
		       rows[j].layer == r->layer) {
			if (j - i == k)
				return ms_err_set(
					err, -EINVAL,
					"%s:%llu: token %u layer %u has more than "
					"%u experts (the model uses %u per token; "
					"the first is on line %llu)",
					name, (unsigned long long)rows[j].line,
					r->token, m->layers[r->layer].block, k, k,
					(unsigned long long)r->line);
			for (size_t q = i; q < j; q++)
				if (rows[q].expert == rows[j].expert)
					return ms_err_set(
						err, -EINVAL,
						"%s:%llu: expert %u chosen twice for "
						"token %u layer %u (also on line "
						"%llu)",
						name,
						(unsigned long long)rows[j].line,
						rows[j].expert, r->token,
						m->layers[r->layer].block,
						(unsigned long long)rows[q].line);
			j++;
		}
		if (j - i < k)
			return ms_err_set(err, -EINVAL,
					  "%s:%llu: token %u layer %u has %zu "
					  "expert%s; the model uses %u per token",
					  name, (unsigned long long)r->line,
					  r->token, m->layers[r->layer].block,
					  j - i, j - i == 1 ? "" : "s", k);
		i = j;
		if (++want_l == L) {
			want_l = 0;
			want_tok++;
		}
	}
	if (want_l)
		return ms_err_set(err, -EINVAL,
				  "%s: token %llu has no rows for layer %u "
				  "(every token 0..max needs all %u MoE layers)",
				  name, (unsigned long long)want_tok,
				  m->layers[want_l].block, L);
	return (int64_t)want_tok;
}

int ms_trace_import_csv(struct ms_trace **out, FILE *f, const char *name,
			const struct ms_model *m, struct ms_err *err)
{
	*out = NULL;
	if (!m->n_expert || !m->n_layers_run)
		return ms_err_set(err, -EINVAL,
				  "%s is not a Mixture-of-Experts model: no "
				  "routing to import",
				  m->shards[0]->path);
	if (m->n_expert > MS_TRACE_MAX_EXPERT || m->n_expert_used > MS_TRACE_MAX_K)
		return ms_err_set(err, -EINVAL,
				  "%s: %u experts, %u per token is beyond what a "
				  "trace holds (%d, %d)",
				  m->shards[0]->path, m->n_expert,
				  m->n_expert_used, MS_TRACE_MAX_EXPERT,
				  MS_TRACE_MAX_K);
	int32_t *run_index = malloc(m->n_block * sizeof(*run_index));
	struct row *rows = NULL;
	size_t n_rows = 0, cap = 0;
	char *line = NULL;
	size_t line_cap = 0;
	struct ms_trace *t = NULL;
	uint64_t no = 0;
	int rc = 0;
	if (!run_index) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t b = 0; b < m->n_block; b++)
		run_index[b] = -1;
	for (uint32_t l = 0, j = 0; l < m->n_layers; l++)
		if (!m->layers[l].nextn && m->layers[l].block < m->n_block)
			run_index[m->layers[l].block] = (int32_t)j++;

	bool first = true;
	for (;;) {
		errno = 0;
		ssize_t len = getline(&line, &line_cap, f);
		if (len < 0) {
			if (ferror(f)) {
				rc = ms_err_set(err, errno ? -errno : -EIO,
						"%s: read failed after line %llu: %s",
						name, (unsigned long long)no,
						strerror(errno ? errno : EIO));
				goto out;
			}
			break;
		}
		no++;
		if ((size_t)len != strlen(line)) {
			rc = ms_err_set(err, -EINVAL,
					"%s:%llu: a NUL byte: not a text file", name,
					(unsigned long long)no);
			goto out;
		}
		char *s = trim(line);
		if (!*s)
			continue; /* blank lines are allowed anywhere */
		if (first) {
			first = false;
			if (!strcmp(s, CSV_HEADER))
				continue;
			if (isalpha((unsigned char)*s)) {
				rc = ms_err_set(err, -EINVAL,
						"%s:%llu: header '%.60s' is not '"
						CSV_HEADER "'",
						name, (unsigned long long)no, s);
				goto out;
			}
		}
		if (n_rows == cap) {
			size_t nc = cap ? cap * 2 : 4096;
			struct row *nr = realloc(rows, nc * sizeof(*rows));
			if (!nr) {
				rc = ms_err_set(err, -ENOMEM,
						"out of memory at line %llu of %s",
						(unsigned long long)no, name);
				goto out;
			}
			rows = nr;
			cap = nc;
		}
		if ((rc = parse_row(s, no, name, m, run_index, &rows[n_rows], err)))
			goto out;
		n_rows++;
	}
	if (!n_rows) {
		rc = ms_err_set(err, -EINVAL, "%s: no rows (want lines of "
				CSV_HEADER ")", name);
		goto out;
	}
	qsort(rows, n_rows, sizeof(*rows), row_cmp);
	int64_t n_tokens = check_records(rows, n_rows, name, m, err);
	if (n_tokens < 0) {
		rc = (int)n_tokens;
		goto out;
	}
	if ((rc = ms_trace_alloc_for_model(&t, m, (uint32_t)n_tokens, err)))
		goto out;
	/* Sorted by (token, layer, line): rows land in record order. */
	for (size_t i = 0; i < n_rows; i++) {
		t->expert[i] = rows[i].expert;
		t->weight[i] = rows[i].weight;
	}
	*out = t;
	t = NULL;
out:
	ms_trace_free(t);
	free(run_index);
	free(rows);
	free(line);
	return rc;
}
