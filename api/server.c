/*
 * api/server.c - `moestream serve`: the OpenAI HTTP API on the engine.
 *
 * Threads. libmicrohttpd runs a thread per connection (the only model in
 * which a handler may block): each reads and checks its request, renders
 * the chat template, tokenizes, queues a job and then waits on the job for
 * its text (a whole reply, or Server-Sent Events as tokens come). One
 * scheduler thread owns the engine: it takes queued jobs into free slots
 * (one engine sequence each, `--parallel` of them), and each step runs
 * through ms_engine_eval_seqs a batch of every decoding slot's next token,
 * so that an expert that several sequences route to is read and computed
 * once per step, then a batch of as many prompt tokens of starting slots as
 * fit in n_batch. With one job the batches are those of `moestream run`
 * (the prompt in n_batch chunks, then one token a step), so greedy text is
 * the same; and a decode batch of up to four tokens gives each the bits it
 * would get alone (kernels/ffn.c), so concurrent requests decode as they
 * would one by one.
 *
 * A job is shared by its connection and the scheduler (refs, under its own
 * mutex). The connection sets `cancelled` when its client goes (a failed
 * write, or a hang-up seen while waiting: poll for POLLRDHUP every 100 ms);
 * the scheduler drops a cancelled job at its next step.
 *
 * Text. Pieces are appended to the job's text; `safe` is how much of it
 * may be sent: it holds back a tail that could still become a stop string
 * and an incomplete UTF-8 sequence. A stop string ends the text before it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <microhttpd.h>

#include "request.h"
#include "server.h"

#define ROUTE_MAX 5

/* ---- a job: one request's generation ---------------------------------------- */

struct job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs;                    /* connection + scheduler */
	bool cancelled, done, started;
	struct ms_api_req req;
	int32_t *prompt;
	size_t n_prompt;
	int fd;                      /* the client's socket, for hang-ups */

	/* out, under mu */
	char *text;
	size_t len, cap, safe;
	uint32_t n_gen;
	const char *finish;          /* "stop", "length"; NULL while running */
	char failure[256];           /* the engine failed: a 500 */
	double t_queued, t_first, t_end;

	/* streaming, the connection's own */
	char *frames;
	size_t f_len, f_cap, f_off, sent;
	uint32_t tok_sent;           /* tokens streamed: one event each */
	double last_out;             /* when bytes last went out */
	bool role_sent, tail_sent;

	uint64_t id;
	time_t created;
	struct job *next;            /* the queue */

	/* the scheduler's own */
	uint32_t slot;
	size_t n_fed;
	struct ms_sampler *smp;
	int32_t last;
	size_t hold;                 /* longest stop string, bytes */
};

struct server {
	const struct ms_serve_config *c;
	struct ms_engine *e;
	const struct ms_vocab *v;
	const struct ms_engine_info *info;
	enum ms_chat_tmpl chat;
	char chat_why[256];          /* why chat is refused, when it is */
	char model_id[256];
	pthread_mutex_t tok_mu;      /* the tokenizer and cJSON's parser, for
					connection threads */

	pthread_mutex_t mu;          /* the queue, the slots, the figures */
	pthread_cond_t cv;
	struct job *head, *tail;
	uint32_t queued;
	struct job **slots;          /* [parallel] */
	uint32_t active;
	bool stopping;
	uint64_t next_id;

	/* figures, under mu */
	uint64_t requests, errors, prompt_tokens, gen_tokens, cancelled;
	double prefill_s, decode_s;
	uint64_t prefill_tok, decode_tok;
	struct ms_engine_stats est;
	double est_at;               /* when est was taken (the scheduler's) */
};

static void job_unref(struct job *j)
{
	pthread_mutex_lock(&j->mu);
	int left = --j->refs;
	pthread_mutex_unlock(&j->mu);
	if (left)
		return;
	ms_api_req_free(&j->req);
	free(j->prompt);
	free(j->text);
	free(j->frames);
	ms_sampler_free(j->smp);
	pthread_mutex_destroy(&j->mu);
	pthread_cond_destroy(&j->cv);
	free(j);
}

/* Waits on the job (its mutex held) for news, 100 ms at most: a
 * connection looks at its client between waits. */
static void job_wait(struct job *j)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100 * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- text ------------------------------------------------------------------------- */

/* Bytes at the end of s[0..n) that start a UTF-8 sequence not yet whole. */
static size_t utf8_incomplete_tail(const char *s, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char b = (unsigned char)s[n - back];
		if ((b & 0xC0) == 0x80)
			continue; /* a continuation byte: look further back */
		size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
		return need > back ? back : 0;
	}
	return 0;
}

/* *p holds at least `need` bytes (capacity doubled from 1 KiB); false when
 * there is no memory for it (*p unchanged). */
static bool reserve(char **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return true;
	size_t c = *cap ? *cap : 1024;
	while (c < need)
		c *= 2;
	char *q = realloc(*p, c);
	if (!q)
		return false;
	*p = q;
	*cap = c;
	return true;
}

/* Appends a piece; ends the text at a stop string (true) and sets safe. */
static bool job_append(struct job *j, const char *p, size_t n)
{
	if (!reserve(&j->text, &j->cap, j->len + n + 1))
		return false; /* the text stays as it was */
	size_t before = j->len;
	memcpy(j->text + j->len, p, n);
	j->len += n;
	j->text[j->len] = 0;
	/* a stop string that ends in the new bytes */
	for (size_t i = 0; i < j->req.n_stop; i++) {
		size_t sl = strlen(j->req.stop[i]);
		size_t from = before >= sl ? before - sl + 1 : 0;
		char *hit = from < j->len ? memmem(j->text + from, j->len - from,
						   j->req.stop[i], sl)
					  : NULL;
		if (hit) {
			j->len = (size_t)(hit - j->text);
			j->text[j->len] = 0;
			j->safe = j->len;
			return true;
		}
	}
	/* hold back what could still become a stop string */
	size_t keep = 0;
	for (size_t i = 0; i < j->req.n_stop; i++) {
		size_t sl = strlen(j->req.stop[i]);
		for (size_t k = sl - 1; k > keep; k--)
			if (k <= j->len && !memcmp(j->text + j->len - k,
						   j->req.stop[i], k)) {
				keep = k;
				break;
			}
	}
	size_t u = utf8_incomplete_tail(j->text, j->len);
	keep = u > keep ? u : keep;
	j->safe = j->len - keep;
	return false;
}

/* ---- the scheduler ------------------------------------------------------------------ */

static void finish(struct server *s, struct job *j, const char *why,
		   const char *failure)
{
	pthread_mutex_lock(&j->mu);
	j->done = true;
	j->finish = why;
	j->safe = j->len;
	j->t_end = now_s();
	if (failure)
		snprintf(j->failure, sizeof(j->failure), "%s", failure);
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	ms_engine_seq_clear(s->e, j->slot);
	pthread_mutex_lock(&s->mu);
	s->slots[j->slot] = NULL;
	s->active--;
	pthread_mutex_unlock(&s->mu);
	job_unref(j);
}

static int start(struct server *s, struct job *j, uint32_t slot)
{
	struct ms_sampler_params sp;
	ms_sampler_params_default(&sp);
	sp.temp = j->req.temperature;
	sp.top_k = j->req.top_k;
	sp.top_p = j->req.top_p;
	sp.min_p = j->req.min_p;
	sp.repeat_penalty = 1.0f;
	if (j->req.has_seed) {
		sp.seed = j->req.seed;
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		sp.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ j->id;
	}
	struct ms_err err = { 0 };
	if (ms_sampler_init(&j->smp, &sp, s->info->n_vocab, &err))
		return -1;
	for (size_t i = 0; i < j->n_prompt; i++)
		ms_sampler_accept(j->smp, j->prompt[i]);
	j->slot = slot;
	j->n_fed = 0;
	j->hold = 0;
	ms_engine_seq_clear(s->e, slot);
	return 0;
}

/* One sampled token for job j, from its logits row. */
static void step_job(struct server *s, struct job *j, const float *logits)
{
	int32_t id = ms_sampler_sample(j->smp, logits);
	if (ms_vocab_is_eog(s->v, id)) {
		finish(s, j, "stop", NULL);
		return;
	}
	ms_sampler_accept(j->smp, id);
	char piece[4096];
	int l = ms_token_piece(s->v, id, false, piece, sizeof(piece));
	size_t pl = l > 0 ? ((size_t)l < sizeof(piece) ? (size_t)l : sizeof(piece)) : 0;
	pthread_mutex_lock(&j->mu);
	bool stopped = job_append(j, piece, pl);
	j->n_gen++;
	pthread_mutex_lock(&s->mu);
	s->gen_tokens++;
	pthread_mutex_unlock(&s->mu);
	if (j->n_gen == 1)
		j->t_first = now_s();
	uint32_t n_gen = j->n_gen;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (stopped) {
		finish(s, j, "stop", NULL);
		return;
	}
	if ((j->req.max_tokens > 0 && n_gen >= (uint32_t)j->req.max_tokens) ||
	    ms_engine_seq_pos(s->e, j->slot) >= s->info->n_ctx) {
		finish(s, j, "length", NULL);
		return;
	}
	j->last = id;
}

struct batch {
	int32_t *ids;
	uint32_t *seq;
	bool *want;
	struct job **who;
	float *logits;
	size_t n;
};

/* One engine pass over the batch; each job with a logits row samples. */
static void run_pass(struct server *s, struct batch *b, bool decode)
{
	if (!b->n)
		return;
	struct ms_err err = { 0 };
	double t0 = now_s();
	int rc = ms_engine_eval_seqs(s->e, b->ids, b->seq, b->n, b->want,
				     b->logits, &err);
	double dt = now_s() - t0;
	pthread_mutex_lock(&s->mu);
	if (decode) {
		s->decode_s += dt;
		s->decode_tok += b->n;
	} else {
		s->prefill_s += dt;
		s->prefill_tok += b->n;
	}
	pthread_mutex_unlock(&s->mu);
	/* the engine's counters for /metrics, once a second at most (through
	 * a daemon they are a round trip) */
	double t1 = t0 + dt;
	if (t1 - s->est_at >= 1.0) {
		struct ms_engine_stats st;
		ms_engine_get_stats(s->e, &st);
		pthread_mutex_lock(&s->mu);
		s->est = st;
		pthread_mutex_unlock(&s->mu);
		s->est_at = t1;
	}
	if (rc) {
		/* every job in the batch fails; the others go on */
		char msg[256];
		snprintf(msg, sizeof(msg), "the engine failed: %s", err.msg);
		fprintf(stderr, "moestream serve: %s\n", msg);
		for (size_t i = 0; i < b->n; i++)
			if (b->who[i]) {
				struct job *j = b->who[i];
				for (size_t k = i; k < b->n; k++)
					if (b->who[k] == j)
						b->who[k] = NULL;
				finish(s, j, "error", msg);
			}
		return;
	}
	size_t row = 0;
	for (size_t i = 0; i < b->n; i++)
		if (b->want[i])
			step_job(s, b->who[i], b->logits + row++ * s->info->n_vocab);
}

static void *scheduler(void *arg)
{
	struct server *s = arg;
	uint32_t P = s->c->parallel, B = s->info->n_batch;
	size_t cap = (size_t)B + P;
	int32_t *ids = malloc(cap * sizeof(*ids));
	uint32_t *seq = malloc(cap * sizeof(*seq));
	bool *want = malloc(cap * sizeof(*want));
	struct job **who = malloc(cap * sizeof(*who));
	float *logits = malloc((size_t)P * s->info->n_vocab * sizeof(float));
	if (!ids || !seq || !want || !who || !logits) {
		fprintf(stderr, "moestream serve: out of memory for the scheduler\n");
		abort();
	}
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->stopping && !s->active && !s->head)
			pthread_cond_wait(&s->cv, &s->mu);
		if (s->stopping) {
			pthread_mutex_unlock(&s->mu);
			break;
		}
		/* take queued jobs into free slots, oldest first */
		for (uint32_t k = 0; k < P && s->head; k++) {
			if (s->slots[k])
				continue;
			struct job *j = s->head;
			s->head = j->next;
			if (!s->head)
				s->tail = NULL;
			s->queued--;
			s->slots[k] = j;
			s->active++;
			j->slot = k;
			j->started = true;
		}
		struct job *act[MS_ENGINE_MAX_SEQ];
		uint32_t n_act = 0;
		for (uint32_t k = 0; k < P; k++)
			if (s->slots[k])
				act[n_act++] = s->slots[k];
		pthread_mutex_unlock(&s->mu);

		/* new jobs get a sampler; cancelled ones go */
		for (uint32_t a = 0; a < n_act; a++) {
			struct job *j = act[a];
			pthread_mutex_lock(&j->mu);
			bool gone = j->cancelled;
			pthread_mutex_unlock(&j->mu);
			if (gone) {
				pthread_mutex_lock(&s->mu);
				s->cancelled++;
				pthread_mutex_unlock(&s->mu);
				finish(s, j, "cancelled", NULL);
				act[a] = NULL;
				continue;
			}
			if (!j->smp && start(s, j, j->slot)) {
				finish(s, j, "error", "out of memory for a sampler");
				act[a] = NULL;
			}
		}
		/* two passes a step: the decoding slots' next tokens, then as
		 * many prompt tokens of starting slots as fit in n_batch. The
		 * decode pass holds at most --parallel tokens, whose products
		 * go through the fused kernels that give a token the same bits
		 * alone or with up to three others (kernels/ffn.c): a sequence
		 * decodes the same tokens whatever runs beside it */
		struct batch b = { ids, seq, want, who, logits, 0 };
		for (uint32_t a = 0; a < n_act; a++) {
			struct job *j = act[a];
			if (!j || j->n_fed < j->n_prompt)
				continue;
			ids[b.n] = j->last;
			seq[b.n] = j->slot;
			want[b.n] = true;
			who[b.n++] = j;
			act[a] = NULL; /* a job the pass finishes may be freed */
		}
		run_pass(s, &b, true);
		b.n = 0;
		for (uint32_t a = 0; a < n_act && b.n < B; a++) {
			struct job *j = act[a];
			if (!j || j->n_fed >= j->n_prompt)
				continue;
			size_t take = j->n_prompt - j->n_fed;
			take = take < B - b.n ? take : B - b.n;
			for (size_t i = 0; i < take; i++) {
				ids[b.n] = j->prompt[j->n_fed + i];
				seq[b.n] = j->slot;
				want[b.n] = j->n_fed + i + 1 == j->n_prompt;
				who[b.n++] = j;
			}
			j->n_fed += take;
		}
		run_pass(s, &b, false);
	}
	/* shutting down: every job still held ends */
	for (uint32_t k = 0; k < P; k++)
		if (s->slots[k])
			finish(s, s->slots[k], "cancelled", "the server is shutting down");
	free(ids);
	free(seq);
	free(want);
	free(who);
	free(logits);
	return NULL;
}

/* ---- HTTP --------------------------------------------------------------------------- */

struct conn {
	char *body;
	size_t len, cap;
	bool too_big;
};

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status,
				 const char *type, const char *body, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
		len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

/* A JSON reply (j is consumed), with one more header when hname. */
static enum MHD_Result send_json_h(struct MHD_Connection *c, unsigned status,
				   cJSON *j, const char *hname, const char *hval)
{
	char *t = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!t)
		return MHD_NO;
	struct MHD_Response *r = MHD_create_response_from_buffer(
		strlen(t), t, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(t);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", "application/json");
	if (hname)
		MHD_add_response_header(r, hname, hval);
	enum MHD_Result ok = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status,
				 cJSON *j)
{
	return send_json_h(c, status, j, NULL, NULL);
}

static enum MHD_Result send_error(struct server *s, struct MHD_Connection *c,
				  unsigned status, const char *type,
				  const char *code, const char *fmt, ...)
	MS_PRINTF(6, 7);

static enum MHD_Result send_error(struct server *s, struct MHD_Connection *c,
				  unsigned status, const char *type,
				  const char *code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&s->mu);
	s->errors++;
	pthread_mutex_unlock(&s->mu);
	cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
	cJSON_AddStringToObject(e, "message", msg);
	cJSON_AddStringToObject(e, "type", type);
	if (code)
		cJSON_AddStringToObject(e, "code", code);
	else
		cJSON_AddNullToObject(e, "code");
	return send_json(c, status, j);
}

/* The client hung up (or the socket broke). */
static bool hung_up(int fd)
{
	if (fd < 0)
		return false;
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static bool key_ok(const struct server *s, struct MHD_Connection *c)
{
	if (!s->c->api_key)
		return true;
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer ", 7))
		return false;
	h += 7;
	/* constant time in the key's length and the given one's */
	size_t a = strlen(s->c->api_key), b = strlen(h);
	volatile unsigned char diff = (unsigned char)(a != b);
	for (size_t i = 0; i < b; i++)
		diff |= (unsigned char)(h[i] ^ s->c->api_key[i % (a ? a : 1)]);
	return diff == 0;
}

static cJSON *usage_json(const struct job *j)
{
	cJSON *u = cJSON_CreateObject();
	cJSON_AddNumberToObject(u, "prompt_tokens", (double)j->n_prompt);
	cJSON_AddNumberToObject(u, "completion_tokens", j->n_gen);
	cJSON_AddNumberToObject(u, "total_tokens", (double)j->n_prompt + j->n_gen);
	return u;
}

static void id_of(const struct job *j, char *buf, size_t n)
{
	snprintf(buf, n, "%s-%" PRIu64, j->req.kind == MS_API_CHAT ? "chatcmpl"
								  : "cmpl", j->id);
}

/* A reply object (a chunk when delta): id, object, created, model. */
static cJSON *reply_head(const struct server *s, const struct job *j, bool chunk)
{
	char id[64];
	id_of(j, id, sizeof(id));
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "id", id);
	cJSON_AddStringToObject(r, "object", j->req.kind == MS_API_CHAT
				? (chunk ? "chat.completion.chunk" : "chat.completion")
				: "text_completion");
	cJSON_AddNumberToObject(r, "created", (double)j->created);
	cJSON_AddStringToObject(r, "model", s->model_id);
	return r;
}

/* One choice: text (len bytes, may be NULL) and a finish reason or null. */
static cJSON *choice(const struct job *j, bool chunk, const char *text,
		     size_t len, bool role, const char *fin)
{
	cJSON *c = cJSON_CreateObject();
	cJSON_AddNumberToObject(c, "index", 0);
	char *t = malloc(len + 1);
	if (t) {
		if (len)
			memcpy(t, text, len);
		t[len] = 0;
	}
	if (j->req.kind == MS_API_CHAT) {
		cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
		if (role || !chunk)
			cJSON_AddStringToObject(m, "role", "assistant");
		if (text || !chunk)
			cJSON_AddStringToObject(m, "content", t ? t : "");
	} else {
		cJSON_AddStringToObject(c, "text", t ? t : "");
		cJSON_AddNullToObject(c, "logprobs");
	}
	free(t);
	if (fin)
		cJSON_AddStringToObject(c, "finish_reason", fin);
	else
		cJSON_AddNullToObject(c, "finish_reason");
	return c;
}

static void frame_add(struct job *j, cJSON *obj, const char *raw)
{
	char *t = obj ? cJSON_PrintUnformatted(obj) : NULL;
	if (obj)
		cJSON_Delete(obj);
	const char *body = t ? t : raw;
	if (!body)
		return;
	size_t n = strlen(body) + 8;
	if (!reserve(&j->frames, &j->f_cap, j->f_len + n)) {
		free(t);
		return;
	}
	j->f_len += (size_t)sprintf(j->frames + j->f_len, "data: %s\n\n", body);
	free(t);
}

struct stream_ctx {
	struct server *s;
	struct job *j;
};

/* libmicrohttpd asks for the next bytes of an event stream; blocks until
 * there are some (a thread per connection). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct stream_ctx *x = cls;
	struct server *s = x->s;
	struct job *j = x->j;
	pthread_mutex_lock(&j->mu);
	for (;;) {
		if (j->f_off < j->f_len) {
			size_t n = j->f_len - j->f_off;
			n = n < max ? n : max;
			memcpy(buf, j->frames + j->f_off, n);
			j->f_off += n;
			if (j->f_off == j->f_len)
				j->f_off = j->f_len = 0;
			j->last_out = now_s();
			pthread_mutex_unlock(&j->mu);
			return (ssize_t)n;
		}
		if (j->tail_sent) {
			pthread_mutex_unlock(&j->mu);
			return MHD_CONTENT_READER_END_OF_STREAM;
		}
		if (!j->role_sent && j->req.kind == MS_API_CHAT) {
			cJSON *r = reply_head(s, j, true);
			cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"),
					     choice(j, true, "", 0, true, NULL));
			frame_add(j, r, NULL);
			j->role_sent = true;
			continue;
		}
		/* an event per token, as llama-server sends them, its text
		 * empty while held back (a stop string may begin, a UTF-8
		 * character is not whole); tokens that came while the client
		 * was being written to share one */
		if (j->safe > j->sent || j->n_gen > j->tok_sent) {
			cJSON *r = reply_head(s, j, true);
			cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"),
					     choice(j, true, j->text ? j->text + j->sent : "",
						    j->safe - j->sent, false, NULL));
			frame_add(j, r, NULL);
			j->sent = j->safe;
			j->tok_sent = j->n_gen;
			continue;
		}
		if (j->done) {
			if (j->failure[0]) {
				cJSON *r = cJSON_CreateObject();
				cJSON *e = cJSON_AddObjectToObject(r, "error");
				cJSON_AddStringToObject(e, "message", j->failure);
				cJSON_AddStringToObject(e, "type", "server_error");
				frame_add(j, r, NULL);
			} else {
				cJSON *r = reply_head(s, j, true);
				cJSON *c = choice(j, true, NULL, 0, false, j->finish);
				cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"), c);
				frame_add(j, r, NULL);
				if (j->req.include_usage) {
					r = reply_head(s, j, true);
					cJSON_AddArrayToObject(r, "choices");
					cJSON_AddItemToObject(r, "usage", usage_json(j));
					frame_add(j, r, NULL);
				}
			}
			frame_add(j, NULL, "[DONE]");
			j->tail_sent = true;
			continue;
		}
		bool stopping = __atomic_load_n(&s->stopping, __ATOMIC_RELAXED);
		if (stopping || hung_up(j->fd)) {
			j->cancelled = true;
			pthread_mutex_unlock(&j->mu);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		/* libmicrohttpd times a connection out from the last bytes
		 * sent: a stream queued or in a long prefill sends an SSE
		 * comment (clients skip it) every half --timeout, 15 s at
		 * most, so that only a client that stops reading times out */
		double beat = s->c->timeout_s / 2.0, t = now_s();
		if (!j->last_out) {
			j->last_out = t;
		} else if (t - j->last_out >= (beat < 15 ? beat : 15)) {
			static const char ka[] = ": keep-alive\n\n";
			size_t n = sizeof(ka) - 1 < max ? sizeof(ka) - 1 : max;
			memcpy(buf, ka, n);
			j->last_out = t;
			pthread_mutex_unlock(&j->mu);
			return (ssize_t)n;
		}
		job_wait(j);
	}
}

static void stream_free(void *cls)
{
	struct stream_ctx *x = cls;
	pthread_mutex_lock(&x->j->mu);
	if (!x->j->done)
		x->j->cancelled = true;
	pthread_mutex_unlock(&x->j->mu);
	job_unref(x->j);
	free(x);
}

/* Queues a job (the scheduler takes a ref); false when the queue is full. */
static bool enqueue(struct server *s, struct job *j)
{
	pthread_mutex_lock(&s->mu);
	if (s->queued >= s->c->max_queue || s->stopping) {
		pthread_mutex_unlock(&s->mu);
		return false;
	}
	j->id = ++s->next_id;
	j->refs = 2;
	j->t_queued = now_s();
	if (s->tail)
		s->tail->next = j;
	else
		s->head = j;
	s->tail = j;
	s->queued++;
	s->requests++;
	s->prompt_tokens += j->n_prompt;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return true;
}

static enum MHD_Result generate(struct server *s, struct MHD_Connection *c,
				enum ms_api_kind kind, const struct conn *cn)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return send_error(s, c, 500, "server_error", NULL, "out of memory");
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
	j->refs = 1;
	j->created = time(NULL);
	struct ms_err err = { 0 };
	/* cJSON keeps the last parse error in a global: one parse at a time */
	pthread_mutex_lock(&s->tok_mu);
	int prc = ms_api_req_parse(&j->req, kind, cn->body ? cn->body : "",
				   cn->len, &err);
	pthread_mutex_unlock(&s->tok_mu);
	if (prc) {
		job_unref(j);
		return send_error(s, c, 400, "invalid_request_error", NULL, "%s",
				  err.msg);
	}
	char *text = NULL;
	if (kind == MS_API_CHAT) {
		if (s->chat == MS_CHAT_NONE) {
			job_unref(j);
			return send_error(s, c, 400, "invalid_request_error",
					  "chat_template_unknown", "chat requests "
					  "need a chat template: %s (POST "
					  "/v1/completions works without one)",
					  s->chat_why);
		}
		struct ms_chat_msg *m = calloc(j->req.n_msgs, sizeof(*m));
		if (!m) {
			job_unref(j);
			return send_error(s, c, 500, "server_error", NULL,
					  "out of memory");
		}
		for (size_t i = 0; i < j->req.n_msgs; i++) {
			m[i].role = j->req.msgs[i].role;
			m[i].content = j->req.msgs[i].content;
		}
		int rc = ms_chat_render(s->chat, m, j->req.n_msgs, true, &text, &err);
		free(m);
		if (rc) {
			job_unref(j);
			return send_error(s, c, 400, "invalid_request_error", NULL,
					  "messages: %s", err.msg);
		}
	} else {
		text = strdup(j->req.prompt);
		if (!text) {
			job_unref(j);
			return send_error(s, c, 500, "server_error", NULL,
					  "out of memory");
		}
	}
	struct ms_tokens toks = { 0 };
	pthread_mutex_lock(&s->tok_mu);
	int rc = ms_tokenize(s->v, text, strlen(text),
			     MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL,
			     &toks, &err);
	pthread_mutex_unlock(&s->tok_mu);
	free(text);
	if (rc) {
		ms_tokens_free(&toks);
		job_unref(j);
		return send_error(s, c, 400, "invalid_request_error", NULL, "%s",
				  err.msg);
	}
	if (!toks.n || toks.n >= s->info->n_ctx) {
		size_t n = toks.n;
		ms_tokens_free(&toks);
		job_unref(j);
		if (!n)
			return send_error(s, c, 400, "invalid_request_error", NULL,
					  "the prompt is empty");
		return send_error(s, c, 400, "invalid_request_error",
				  "context_length_exceeded", "the prompt is %zu "
				  "tokens, and the context holds %u (--ctx), at "
				  "least one of them left to generate", n,
				  s->info->n_ctx);
	}
	j->prompt = malloc(toks.n * sizeof(*j->prompt));
	if (!j->prompt) {
		ms_tokens_free(&toks);
		job_unref(j);
		return send_error(s, c, 500, "server_error", NULL, "out of memory");
	}
	memcpy(j->prompt, toks.ids, toks.n * sizeof(*j->prompt));
	j->n_prompt = toks.n;
	ms_tokens_free(&toks);
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	j->fd = ci ? ci->connect_fd : -1;
	if (!enqueue(s, j)) {
		job_unref(j);
		return send_error(s, c, 503, "server_error", "queue_full",
				  "%u requests are waiting (--max-queue); try "
				  "again later", s->c->max_queue);
	}

	if (j->req.stream) {
		struct stream_ctx *x = malloc(sizeof(*x));
		struct MHD_Response *r = x ? MHD_create_response_from_callback(
						     MHD_SIZE_UNKNOWN, 16384,
						     stream_read, x, stream_free)
					   : NULL;
		if (!r) {
			free(x);
			pthread_mutex_lock(&j->mu);
			j->cancelled = true;
			pthread_mutex_unlock(&j->mu);
			job_unref(j);
			return MHD_NO;
		}
		x->s = s;
		x->j = j;
		MHD_add_response_header(r, "Content-Type", "text/event-stream");
		MHD_add_response_header(r, "Cache-Control", "no-cache");
		enum MHD_Result ok = MHD_queue_response(c, 200, r);
		MHD_destroy_response(r);
		return ok;
	}

	/* the whole reply: wait, watching for a hang-up */
	pthread_mutex_lock(&j->mu);
	while (!j->done) {
		if (__atomic_load_n(&s->stopping, __ATOMIC_RELAXED)) {
			j->cancelled = true;
			pthread_mutex_unlock(&j->mu);
			job_unref(j);
			return send_error(s, c, 503, "server_error",
					  "shutting_down", "the server is shutting "
					  "down; the request was not finished");
		}
		if (hung_up(j->fd)) {
			j->cancelled = true;
			pthread_mutex_unlock(&j->mu);
			job_unref(j);
			return MHD_NO;
		}
		job_wait(j);
	}
	pthread_mutex_unlock(&j->mu);
	enum MHD_Result ok;
	if (j->failure[0]) {
		ok = send_error(s, c, 500, "server_error", NULL, "%s", j->failure);
	} else {
		cJSON *r = reply_head(s, j, false);
		cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"),
				     choice(j, false, j->text ? j->text : "", j->len,
					    true, j->finish));
		cJSON_AddItemToObject(r, "usage", usage_json(j));
		ok = send_json(c, 200, r);
	}
	job_unref(j);
	return ok;
}

static enum MHD_Result models(struct server *s, struct MHD_Connection *c)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "object", "list");
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "id", s->model_id);
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", 0);
	cJSON_AddStringToObject(m, "owned_by", "moestream");
	cJSON *meta = cJSON_AddObjectToObject(m, "meta");
	cJSON_AddStringToObject(meta, "arch", s->info->arch);
	cJSON_AddNumberToObject(meta, "n_ctx", s->info->n_ctx);
	cJSON_AddNumberToObject(meta, "n_vocab", s->info->n_vocab);
	cJSON_AddNumberToObject(meta, "parallel", s->c->parallel);
	cJSON_AddStringToObject(meta, "chat_template",
				s->chat ? ms_chat_name(s->chat) : "none");
	cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "data"), m);
	return send_json(c, 200, r);
}

static enum MHD_Result metrics(struct server *s, struct MHD_Connection *c)
{
	pthread_mutex_lock(&s->mu);
	uint64_t hits = s->est.expert_hits, miss = s->est.expert_misses;
	char buf[4096];
	int n = snprintf(buf, sizeof(buf),
		"# HELP moestream_requests_total Generation requests queued.\n"
		"# TYPE moestream_requests_total counter\n"
		"moestream_requests_total %" PRIu64 "\n"
		"# HELP moestream_errors_total Requests answered with an error.\n"
		"# TYPE moestream_errors_total counter\n"
		"moestream_errors_total %" PRIu64 "\n"
		"# HELP moestream_cancelled_total Generations stopped because the "
		"client went.\n"
		"# TYPE moestream_cancelled_total counter\n"
		"moestream_cancelled_total %" PRIu64 "\n"
		"# HELP moestream_prompt_tokens_total Prompt tokens taken in.\n"
		"# TYPE moestream_prompt_tokens_total counter\n"
		"moestream_prompt_tokens_total %" PRIu64 "\n"
		"# HELP moestream_tokens_generated_total Tokens generated.\n"
		"# TYPE moestream_tokens_generated_total counter\n"
		"moestream_tokens_generated_total %" PRIu64 "\n"
		"# HELP moestream_prefill_tokens_per_second Prompt tokens over the "
		"time of the batches that held them.\n"
		"# TYPE moestream_prefill_tokens_per_second gauge\n"
		"moestream_prefill_tokens_per_second %.3f\n"
		"# HELP moestream_decode_tokens_per_second Generated tokens over "
		"the time of the decode passes (all sequences).\n"
		"# TYPE moestream_decode_tokens_per_second gauge\n"
		"moestream_decode_tokens_per_second %.3f\n"
		"# HELP moestream_expert_hit_rate Routed experts found in the "
		"cache.\n"
		"# TYPE moestream_expert_hit_rate gauge\n"
		"moestream_expert_hit_rate %.4f\n"
		"# HELP moestream_expert_bytes_read_total Expert bytes read from "
		"disk.\n"
		"# TYPE moestream_expert_bytes_read_total counter\n"
		"moestream_expert_bytes_read_total %" PRIu64 "\n"
		"# HELP moestream_queue_length Requests waiting for a slot.\n"
		"# TYPE moestream_queue_length gauge\n"
		"moestream_queue_length %u\n"
		"# HELP moestream_active_sequences Requests generating.\n"
		"# TYPE moestream_active_sequences gauge\n"
		"moestream_active_sequences %u\n",
		s->requests, s->errors, s->cancelled, s->prompt_tokens,
		s->gen_tokens,
		s->prefill_s > 0 ? (double)s->prefill_tok / s->prefill_s : 0.0,
		s->decode_s > 0 ? (double)s->decode_tok / s->decode_s : 0.0,
		hits + miss ? (double)hits / (double)(hits + miss) : 0.0,
		s->est.expert_bytes_read, s->queued, s->active);
	pthread_mutex_unlock(&s->mu);
	return send_text(c, 200, "text/plain; version=0.0.4", buf,
			 n > 0 && (size_t)n < sizeof(buf) ? (size_t)n : 0);
}

static const struct {
	const char *path, *method;
} routes[ROUTE_MAX] = {
	{ "/health", "GET" },
	{ "/metrics", "GET" },
	{ "/v1/models", "GET" },
	{ "/v1/chat/completions", "POST" },
	{ "/v1/completions", "POST" },
};

static enum MHD_Result handler(void *cls, struct MHD_Connection *c,
			       const char *url, const char *method,
			       const char *version, const char *upload,
			       size_t *upload_size, void **con_cls)
{
	(void)version;
	struct server *s = cls;
	struct conn *cn = *con_cls;
	if (!cn) {
		cn = calloc(1, sizeof(*cn));
		if (!cn)
			return MHD_NO;
		*con_cls = cn;
		const char *cl = MHD_lookup_connection_value(
			c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl && strtoull(cl, NULL, 10) > MS_API_MAX_BODY) {
			/* answered now: the body is not read */
			cn->too_big = true;
			return send_error(s, c, 413, "invalid_request_error",
					  "body_too_large", "the request body "
					  "(Content-Length %s) is over %u bytes",
					  cl, MS_API_MAX_BODY);
		}
		return MHD_YES;
	}
	if (*upload_size) {
		if (!cn->too_big && cn->len + *upload_size > MS_API_MAX_BODY)
			cn->too_big = true;
		if (!cn->too_big) {
			if (!reserve(&cn->body, &cn->cap, cn->len + *upload_size))
				return MHD_NO;
			memcpy(cn->body + cn->len, upload, *upload_size);
			cn->len += *upload_size;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	int r = -1;
	bool path_known = false;
	for (int i = 0; i < ROUTE_MAX; i++)
		if (!strcmp(url, routes[i].path)) {
			path_known = true;
			if (!strcmp(method, routes[i].method))
				r = i;
		}
	if (!path_known)
		return send_error(s, c, 404, "invalid_request_error", "not_found",
				  "no route %s %s (routes: GET /health, GET "
				  "/metrics, GET /v1/models, POST "
				  "/v1/chat/completions, POST /v1/completions)",
				  method, url);
	if (r < 0) {
		const char *allow = NULL;
		for (int i = 0; i < ROUTE_MAX; i++)
			if (!strcmp(url, routes[i].path))
				allow = routes[i].method;
		char msg[256];
		snprintf(msg, sizeof(msg), "%s takes %s, not %.32s", url, allow,
			 method);
		cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
		cJSON_AddStringToObject(e, "message", msg);
		cJSON_AddStringToObject(e, "type", "invalid_request_error");
		cJSON_AddStringToObject(e, "code", "method_not_allowed");
		pthread_mutex_lock(&s->mu);
		s->errors++;
		pthread_mutex_unlock(&s->mu);
		return send_json_h(c, 405, j, "Allow", allow);
	}
	if (r > 0 && !key_ok(s, c))
		return send_error(s, c, 401, "authentication_error",
				  "invalid_api_key", "a missing or wrong API key: "
				  "send the header 'Authorization: Bearer KEY'");
	if (cn->too_big)
		return send_error(s, c, 413, "invalid_request_error",
				  "body_too_large", "the request body is over "
				  "%u bytes", MS_API_MAX_BODY);
	switch (r) {
	case 0:
		return send_text(c, 200, "application/json", "{\"status\":\"ok\"}",
				 15);
	case 1:
		return metrics(s, c);
	case 2:
		return models(s, c);
	case 3:
		return generate(s, c, MS_API_CHAT, cn);
	default:
		return generate(s, c, MS_API_COMPLETION, cn);
	}
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct conn *cn = *con_cls;
	if (cn) {
		free(cn->body);
		free(cn);
		*con_cls = NULL;
	}
}

/* ---- start and stop ---------------------------------------------------------------- */

int ms_serve(const struct ms_serve_config *c, struct ms_err *err)
{
	struct server s = { .c = c };
	pthread_mutex_init(&s.mu, NULL);
	pthread_cond_init(&s.cv, NULL);
	pthread_mutex_init(&s.tok_mu, NULL);
	struct ms_engine_config ec = c->engine;
	ec.n_seq = c->parallel;
	int rc;
	struct MHD_Daemon *d = NULL;
	pthread_t sched;
	bool sched_started = false;
	struct addrinfo *ai = NULL;
	if ((rc = ms_engine_open(&s.e, &ec, err)))
		goto out;
	s.v = ms_engine_vocab(s.e);
	s.info = ms_engine_info(s.e);
	{
		const struct ms_engine_info *in = s.info;
		fprintf(stderr, "moestream serve: %s, %u blocks (%u MoE), resident "
			"%.2f GB, KV %.2f GB (%u sequences of %u tokens)\n",
			in->arch, in->n_block_run, in->n_moe_run,
			(double)in->resident_bytes / 1e9, (double)in->kv_bytes / 1e9,
			in->n_seq, in->n_ctx);
		if (ec.socket)
			fprintf(stderr, "moestream serve: experts from %s\n",
				in->cache_mode);
		else
			fprintf(stderr, "moestream serve: expert cache %.2f GB of "
				"%.2f GB of experts (%.0f%%): %s\n",
				(double)in->cache_bytes / 1e9,
				(double)in->expert_bytes / 1e9,
				in->expert_bytes ? 100.0 * (double)in->cache_bytes /
							   (double)in->expert_bytes
						 : 0.0,
				in->cache_mode);
	}
	s.slots = calloc(c->parallel, sizeof(*s.slots));
	if (!s.slots) {
		rc = ms_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	s.chat = c->chat;
	if (s.chat == MS_CHAT_NONE) {
		struct ms_err e2 = { 0 };
		if (ms_engine_chat_template(s.e, &s.chat, &e2)) {
			s.chat = MS_CHAT_NONE;
			snprintf(s.chat_why, sizeof(s.chat_why), "%s", e2.msg);
		}
	}
	if (c->alias) {
		snprintf(s.model_id, sizeof(s.model_id), "%s", c->alias);
	} else {
		const char *b = strrchr(c->engine.model, '/');
		snprintf(s.model_id, sizeof(s.model_id), "%s",
			 b ? b + 1 : c->engine.model);
	}

	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	char port[16];
	snprintf(port, sizeof(port), "%u", c->port);
	int gr = getaddrinfo(c->host, port, &hints, &ai);
	if (gr) {
		rc = ms_err_set(err, -EINVAL, "--host '%s': %s", c->host,
				gai_strerror(gr));
		goto out;
	}
	if (pthread_create(&sched, NULL, scheduler, &s)) {
		rc = ms_err_set(err, -EAGAIN, "cannot start the scheduler thread");
		goto out;
	}
	sched_started = true;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION |
			 MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	d = MHD_start_daemon(flags, c->port, NULL, NULL, handler, &s,
			     MHD_OPTION_SOCK_ADDR, ai->ai_addr,
			     MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_conn,
			     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->timeout_s,
			     MHD_OPTION_NOTIFY_COMPLETED, completed, &s,
			     MHD_OPTION_THREAD_STACK_SIZE, (size_t)(256 << 10),
			     MHD_OPTION_END);
	if (!d) {
		rc = ms_err_set(err, -EADDRINUSE, "cannot listen on %s port %u: "
				"the port is taken or the address is not this "
				"machine's (--host, --port)", c->host, c->port);
		goto out;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	unsigned bound = di ? di->port : c->port;
	bool v6 = ai->ai_family == AF_INET6;
	fprintf(stderr, "moestream serve: listening on http://%s%s%s:%u "
		"(%u parallel, context %u, chat template %s)%s\n",
		v6 ? "[" : "", c->host, v6 ? "]" : "", bound, c->parallel,
		s.info->n_ctx, s.chat ? ms_chat_name(s.chat) : "none",
		c->api_key ? ", API key required" : "");
	if (!s.chat)
		fprintf(stderr, "moestream serve: chat requests will be refused: "
			"%s\n", s.chat_why);
	fflush(stderr);
	while (!*c->stop)
		usleep(100 * 1000);
	fprintf(stderr, "moestream serve: shutting down\n");
	rc = 0;
out:
	pthread_mutex_lock(&s.mu);
	__atomic_store_n(&s.stopping, true, __ATOMIC_RELAXED);
	pthread_cond_broadcast(&s.cv);
	pthread_mutex_unlock(&s.mu);
	if (sched_started)
		pthread_join(sched, NULL);
	if (d)
		MHD_stop_daemon(d); /* waits for the connection threads */
	/* jobs queued and never started */
	while (s.head) {
		struct job *j = s.head;
		s.head = j->next;
		pthread_mutex_lock(&j->mu);
		j->done = true;
		snprintf(j->failure, sizeof(j->failure), "the server is shutting "
			 "down");
		pthread_cond_broadcast(&j->cv);
		pthread_mutex_unlock(&j->mu);
		job_unref(j);
	}
	if (ai)
		freeaddrinfo(ai);
	free(s.slots);
	ms_engine_close(s.e);
	pthread_mutex_destroy(&s.mu);
	pthread_cond_destroy(&s.cv);
	pthread_mutex_destroy(&s.tok_mu);
	return rc;
}
