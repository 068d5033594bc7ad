/*
 * t_serve - `moestream serve` end to end, on mkmodel's tiny preset with the
 * Qwen3 tokenizer, driven by the official `openai` node client
 * (tests/serve_client.mjs, the package from tests/fetch-ggml.sh through
 * MS_OPENAI) and by raw HTTP from a small socket client here:
 *
 *   a. chat, streamed chat, completion and the model list through the
 *      official client; streamed text == whole text; usage adds up
 *   b. greedy text through the server == `moestream run`'s (chat and plain)
 *   c. every error: its status and an OpenAI error body, the field or the
 *      lengths named, 405 with Allow, 413 (Content-Length and chunked), the
 *      API key (--api-key-file and --api-key); /health answers after each
 *   d. 64 concurrent completions: all 200, the sequential texts, batched
 *   e. a client that goes mid-stream, or before a whole reply: cancelled,
 *      the generation stops early, the next request is served
 *   f. half-sent requests are closed after --timeout; others are served;
 *      a stream queued longer than --timeout is not cut off
 *   g. 100 idle connections over --max-connections 16: threads stay
 *      bounded, the server answers again afterwards
 *   h. --parallel 4: four concurrent chats == the same four in sequence
 *      (two greedy, two sampled with a seed each, so the texts differ)
 *
 * Two servers: "main" (--parallel 4, --ctx 256, --api-key-file) and "key"
 * (--ctx 4096, --api-key, --max-connections 16, --timeout 2, --parallel 1) for the
 * limits; each is stopped with SIGTERM, which must end it with exit 0
 * within 5 s ("main" while a stream generates, beside an idle and a
 * kept-alive connection).
 *
 * Seed 9 of the tiny preset: its greedy text depends on the prompt (most
 * seeds repeat one token whatever the prompt), so that replies mixed up
 * between concurrent requests would show.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemontest.h"
#include "testutil.h"

#define MAX_BODY (1u << 20) /* api/request.h's MS_API_MAX_BODY */
#define CTX 256

static const char *ms_bin;  /* $MS_BUILD/moestream */
static char model[4096];
static char node[4096];     /* node's path */
static char client_js[4096];
static const char *openai_dir;

/* ---- servers ------------------------------------------------------------------------ */

struct srv {
	pid_t pid;
	unsigned port;
	char name[32];
	char log[4200];
};

/* Starts `moestream serve MODEL --port 0 --chat-template qwen3 --threads 2
 * EXTRA...` (NULL-terminated) with its output in NAME.log, and waits for
 * the line that gives the port. */
static void srv_start(struct srv *s, const char *name, const char *const *extra)
{
	char *argv[64];
	int n = 0;
	argv[n++] = (char *)ms_bin;
	argv[n++] = "serve";
	argv[n++] = model;
	argv[n++] = "--port";
	argv[n++] = "0";
	argv[n++] = "--chat-template";
	argv[n++] = "qwen3";
	argv[n++] = "--threads";
	argv[n++] = "2";
	for (; extra && *extra && n < 62; extra++)
		argv[n++] = (char *)*extra;
	argv[n] = NULL;
	snprintf(s->name, sizeof(s->name), "%s", name);
	snprintf(s->log, sizeof(s->log), "%s/%s.log", t_tmpdir(), name);
	printf("$");
	for (int i = 0; i < n; i++)
		printf(" %s", argv[i]);
	printf("\n");
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		t_fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int nul = open("/dev/null", O_RDONLY);
		if (fd < 0 || nul < 0)
			_exit(126);
		dup2(nul, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		signal(SIGPIPE, SIG_DFL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execv(argv[0], argv);
		_exit(127);
	}
	dt_track(pid);
	s->pid = pid;
	static const char mark[] = "moestream serve: listening on http://127.0.0.1:";
	int64_t t0 = dt_now_ms();
	for (;;) {
		char *t = dt_slurp(s->log);
		const char *p = strstr(t, mark);
		if (p && strchr(p, '\n')) {
			s->port = (unsigned)strtoul(p + sizeof(mark) - 1, NULL, 10);
			printf("server %s: pid %d, port %u, up in %lld ms\n", name,
			       (int)pid, s->port, (long long)(dt_now_ms() - t0));
			free(t);
			break;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			dt_untrack(pid);
			t_fatal("server %s ended (status %d) before listening:\n%s",
				name, st, t);
		}
		if (dt_now_ms() - t0 > 30000) {
			kill(pid, SIGKILL);
			t_fatal("server %s did not say it listens in 30 s:\n%s", name, t);
		}
		free(t);
		dt_sleep_ms(20);
	}
	if (!s->port)
		t_fatal("server %s: no port in its line", name);
}

/* SIGTERM: exit 0 within 5 s; no crash or sanitizer report in its log. */
static void srv_stop(struct srv *s)
{
	if (!s->pid)
		return;
	int64_t t0 = dt_now_ms();
	kill(s->pid, SIGTERM);
	int st = dt_waitpid(s->pid, 5000);
	int64_t dt = dt_now_ms() - t0;
	if (st < 0) {
		kill(s->pid, SIGKILL);
		dt_waitpid(s->pid, 5000);
	}
	char *log = dt_slurp(s->log);
	printf("server %s: SIGTERM -> %s %d in %lld ms\n", s->name,
	       st < 0 ? "still running, killed" : WIFEXITED(st) ? "exit" : "signal",
	       st < 0 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
	       (long long)dt);
	T_CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		"server %s: SIGTERM did not end it with exit 0 within 5 s (wait "
		"status %d); its log ends:\n%s", s->name, st,
		strlen(log) > 3000 ? log + strlen(log) - 3000 : log);
	T_CHECK(st < 0 || strstr(log, "moestream serve: shutting down"),
		"server %s: no 'shutting down' line after SIGTERM", s->name);
	const char *crash = dt_crash_in(log);
	T_CHECK(!crash, "server %s crashed or its sanitizer spoke:\n%.4000s", s->name,
		crash ? crash : "");
	free(log);
	s->pid = 0;
}

static bool srv_alive(struct srv *s)
{
	int st;
	if (s->pid && waitpid(s->pid, &st, WNOHANG) == s->pid) {
		dt_untrack(s->pid);
		char *log = dt_slurp(s->log);
		t_fail_at(__FILE__, __LINE__, "server %s died (wait status %d):\n%s",
			  s->name, st, log);
		free(log);
		s->pid = 0;
	}
	return s->pid != 0;
}

/* ---- raw HTTP ---------------------------------------------------------------------- */

static int tcp_connect(unsigned port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = { .tv_sec = 20 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static int send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads until the peer closes (0), timeout_ms passes (-ETIMEDOUT) or an
 * error (-errno); what came is appended to b either way. */
static int recv_all(int fd, struct t_buf *b, int timeout_ms)
{
	int64_t end = dt_now_ms() + timeout_ms;
	for (;;) {
		int left = (int)(end - dt_now_ms());
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		char tmp[65536];
		ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		t_buf_add(b, tmp, (size_t)n);
	}
}

struct resp {
	int status;         /* -1: no reply */
	int err;            /* recv's end: 0 or -errno */
	char *head;         /* status line and headers */
	char *body;         /* de-chunked */
	size_t body_len;
	int64_t ms;
};

static void resp_free(struct resp *r)
{
	free(r->head);
	free(r->body);
	memset(r, 0, sizeof(*r));
}

/* A header's value (a copy in out), or NULL. */
static const char *resp_header(const struct resp *r, const char *name, char *out,
			       size_t n)
{
	size_t ln = strlen(name);
	for (const char *l = r->head ? strstr(r->head, "\r\n") : NULL; l && l[2];
	     l = strstr(l + 2, "\r\n")) {
		const char *h = l + 2;
		if (!strncasecmp(h, name, ln) && h[ln] == ':') {
			h += ln + 1;
			while (*h == ' ')
				h++;
			size_t k = strcspn(h, "\r\n");
			snprintf(out, n, "%.*s", (int)k, h);
			return out;
		}
	}
	return NULL;
}

/* Splits a raw reply into status, headers and body (chunked decoded). */
static void resp_parse(struct resp *r, const struct t_buf *b)
{
	r->status = -1;
	if (!b->p)
		return;
	const char *end = strstr(b->p, "\r\n\r\n");
	if (!end || strncmp(b->p, "HTTP/1.", 7))
		return;
	r->head = strndup(b->p, (size_t)(end - b->p) + 2);
	r->status = atoi(b->p + 9);
	const char *p = end + 4, *lim = b->p + b->len;
	char te[64];
	struct t_buf body = { 0 };
	if (resp_header(r, "Transfer-Encoding", te, sizeof(te)) &&
	    strstr(te, "chunked")) {
		while (p < lim) {
			char *e;
			unsigned long n = strtoul(p, &e, 16);
			const char *nl = strstr(e, "\r\n");
			if (!nl || !n)
				break;
			p = nl + 2;
			if (p + n > lim)
				n = (unsigned long)(lim - p);
			t_buf_add(&body, p, n);
			p += n + 2;
		}
	} else {
		t_buf_add(&body, p, (size_t)(lim - p));
	}
	if (!body.p)
		t_buf_add(&body, "", 0);
	r->body = body.p;
	r->body_len = body.len;
}

/* Sends `req` (len bytes) on a new connection and reads the reply to the
 * end (the requests say Connection: close). */
static void http_raw(unsigned port, const char *req, size_t len, struct resp *r,
		     int timeout_ms)
{
	memset(r, 0, sizeof(*r));
	r->status = -1;
	int64_t t0 = dt_now_ms();
	int fd = tcp_connect(port);
	if (fd < 0) {
		r->err = fd;
		return;
	}
	int se = send_all(fd, req, len);
	struct t_buf b = { 0 };
	r->err = recv_all(fd, &b, timeout_ms);
	if (se && !r->err)
		r->err = se;
	close(fd);
	resp_parse(r, &b);
	r->ms = dt_now_ms() - t0;
	free(b.p);
}

static const char *auth_main; /* "Authorization: Bearer KEY\r\n" for main */

/* METHOD PATH with `hdrs` (lines ending in \r\n, may be NULL) and a body
 * (NULL: none) of blen bytes. */
static void http(unsigned port, const char *method, const char *path,
		 const char *hdrs, const char *body, size_t blen, struct resp *r)
{
	char head[2048];
	int n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: close\r\n%s", method, path, hdrs ? hdrs : "");
	if (body)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: "
			      "application/json\r\nContent-Length: %zu\r\n", blen);
	n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
	struct t_buf b = { 0 };
	t_buf_add(&b, head, (size_t)n);
	if (body)
		t_buf_add(&b, body, blen);
	http_raw(port, b.p, b.len, r, 60000);
	free(b.p);
}

static void post(unsigned port, const char *path, const char *hdrs,
		 const char *body, struct resp *r)
{
	http(port, "POST", path, hdrs, body, strlen(body), r);
}

/* GET /health: 200 {"status":"ok"}, no key needed. */
static bool health(unsigned port, const char *after)
{
	struct resp r;
	http(port, "GET", "/health", NULL, NULL, 0, &r);
	bool ok = r.status == 200 && r.body && strstr(r.body, "\"ok\"");
	T_CHECK(ok, "GET /health after %s: status %d (recv %d), body '%s'", after,
		r.status, r.err, r.body ? r.body : "");
	resp_free(&r);
	return ok;
}

/* Checks an error reply: the status, an OpenAI error body
 * {"error":{"message","type","code"}} (code a string or null; `code` when
 * given), the message holding sub1 and sub2 (when given); then /health. */
static void check_error(unsigned port, const char *what, struct resp *r,
			int status, const char *code, const char *sub1,
			const char *sub2)
{
	T_CHECK(r->status == status, "%s: status %d, expected %d (recv %d, body "
		"'%.300s')", what, r->status, status, r->err, r->body ? r->body : "");
	cJSON *j = r->body ? cJSON_Parse(r->body) : NULL;
	cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
	cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
	cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
	cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
	char ct[128];
	T_CHECK(cJSON_IsObject(e), "%s: the body is not {\"error\":{...}}: '%.300s'",
		what, r->body ? r->body : "");
	T_CHECK(resp_header(r, "Content-Type", ct, sizeof(ct)) &&
		strstr(ct, "application/json"), "%s: Content-Type is not JSON",
		what);
	T_CHECK(cJSON_IsString(m) && *m->valuestring, "%s: no error.message", what);
	T_CHECK(cJSON_IsString(t) && *t->valuestring, "%s: no error.type", what);
	T_CHECK(c && (cJSON_IsString(c) || cJSON_IsNull(c)),
		"%s: no error.code (a string or null)", what);
	if (code)
		T_CHECK(cJSON_IsString(c) && !strcmp(c->valuestring, code),
			"%s: error.code is not '%s'", what, code);
	const char *msg = cJSON_IsString(m) ? m->valuestring : "";
	if (sub1)
		T_CHECK(strstr(msg, sub1), "%s: the message does not name '%s': "
			"'%s'", what, sub1, msg);
	if (sub2)
		T_CHECK(strstr(msg, sub2), "%s: the message does not name '%s': "
			"'%s'", what, sub2, msg);
	printf("  %-44s -> %d %s: %s\n", what, r->status,
	       cJSON_IsString(t) ? t->valuestring : "?", msg);
	cJSON_Delete(j);
	health(port, what);
}

/* A number from GET /metrics (NaN when absent). */
static double metric(unsigned port, const char *hdrs, const char *name)
{
	struct resp r;
	http(port, "GET", "/metrics", hdrs, NULL, 0, &r);
	double v = NAN;
	size_t ln = strlen(name);
	for (const char *l = r.body; r.status == 200 && l && *l;) {
		if (!strncmp(l, name, ln) && l[ln] == ' ') {
			v = strtod(l + ln + 1, NULL);
			break;
		}
		l = strchr(l, '\n');
		if (l)
			l++;
	}
	resp_free(&r);
	return v;
}

static bool wait_metric(unsigned port, const char *name, bool (*pred)(double, double),
			double arg, int timeout_ms, double *last)
{
	int64_t end = dt_now_ms() + timeout_ms;
	for (;;) {
		*last = metric(port, auth_main, name);
		if (pred(*last, arg))
			return true;
		if (dt_now_ms() > end)
			return false;
		dt_sleep_ms(20);
	}
}

static bool gt(double v, double a) { return v > a; }

/* A generation reply: 200 with the shape of `object`; its text (malloc'ed),
 * finish_reason and usage; false (a failed check) when not. */
struct gen {
	char *text;
	char finish[32];
	char id[64];
	int prompt, completion, total;
};

static bool gen_parse(const char *what, const struct resp *r, bool chat,
		      struct gen *g)
{
	memset(g, 0, sizeof(*g));
	cJSON *j = r->status == 200 && r->body ? cJSON_Parse(r->body) : NULL;
	cJSON *ob = cJSON_GetObjectItemCaseSensitive(j, "object");
	cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
	cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
	cJSON *msg = cJSON_GetObjectItemCaseSensitive(ch, "message");
	cJSON *txt = chat ? cJSON_GetObjectItemCaseSensitive(msg, "content")
			  : cJSON_GetObjectItemCaseSensitive(ch, "text");
	cJSON *fin = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
	cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
	cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
	cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
	cJSON *tt = cJSON_GetObjectItemCaseSensitive(u, "total_tokens");
	bool ok = j && cJSON_IsString(ob) &&
		  !strcmp(ob->valuestring, chat ? "chat.completion" : "text_completion") &&
		  cJSON_IsString(id) && cJSON_IsString(txt) && cJSON_IsString(fin) &&
		  cJSON_IsNumber(pt) && cJSON_IsNumber(ct) && cJSON_IsNumber(tt);
	T_CHECK(ok, "%s: status %d (recv %d), not a %s reply: '%.400s'", what,
		r->status, r->err, chat ? "chat.completion" : "text_completion",
		r->body ? r->body : "");
	if (ok) {
		g->text = strdup(txt->valuestring);
		snprintf(g->finish, sizeof(g->finish), "%s", fin->valuestring);
		snprintf(g->id, sizeof(g->id), "%s", id->valuestring);
		g->prompt = pt->valueint;
		g->completion = ct->valueint;
		g->total = tt->valueint;
	}
	cJSON_Delete(j);
	return ok;
}

/* usage adds up; completion_tokens == max_tokens when the reason is "length" */
static void check_usage(const char *what, const struct gen *g, int max_tokens)
{
	T_CHECK(g->total == g->prompt + g->completion, "%s: usage total %d != "
		"prompt %d + completion %d", what, g->total, g->prompt,
		g->completion);
	T_CHECK(!strcmp(g->finish, "length") || !strcmp(g->finish, "stop"),
		"%s: finish_reason '%s'", what, g->finish);
	if (!strcmp(g->finish, "length"))
		T_CHECK(g->completion == max_tokens, "%s: finish_reason length "
			"with %d completion tokens, max_tokens %d", what,
			g->completion, max_tokens);
	else
		T_CHECK(g->completion < max_tokens, "%s: finish_reason stop after "
			"%d tokens of %d", what, g->completion, max_tokens);
	T_CHECK(g->prompt > 0, "%s: prompt_tokens %d", what, g->prompt);
}

/* A JSON string literal for s (malloc'ed). */
static char *jstr(const char *s)
{
	cJSON *x = cJSON_CreateString(s);
	char *t = cJSON_PrintUnformatted(x);
	cJSON_Delete(x);
	return t;
}

/* temperature 0 when seed < 0, else 1 with that seed */
static void chat_body_seed(char *out, size_t n, const char *prompt,
			   int max_tokens, bool stream, int seed)
{
	char *p = jstr(prompt), samp[64] = "\"temperature\":0";
	if (seed >= 0)
		snprintf(samp, sizeof(samp), "\"temperature\":1,\"seed\":%d", seed);
	snprintf(out, n, "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":"
		 "%s}],\"max_tokens\":%d,%s%s}", p, max_tokens, samp,
		 stream ? ",\"stream\":true" : "");
	free(p);
}

static void chat_body(char *out, size_t n, const char *prompt, int max_tokens,
		      bool stream)
{
	chat_body_seed(out, n, prompt, max_tokens, stream, -1);
}

static void completion_body(char *out, size_t n, const char *prompt,
			    int max_tokens, bool stream)
{
	char *p = jstr(prompt);
	snprintf(out, n, "{\"prompt\":%s,\"max_tokens\":%d,\"temperature\":0%s}", p,
		 max_tokens, stream ? ",\"stream\":true" : "");
	free(p);
}

/* ---- the node client --------------------------------------------------------------- */

/* Runs serve_client.mjs: its JSON line (or NULL), its exit code in *rc. */
static cJSON *client(unsigned port, const char *key, const char *mode,
		     const char *prompt, int max_tokens, int *rc)
{
	char base[128], maxs[16], o[4200], e[4200];
	snprintf(base, sizeof(base), "http://127.0.0.1:%u/v1", port);
	snprintf(maxs, sizeof(maxs), "%d", max_tokens);
	snprintf(o, sizeof(o), "%s/client.out", t_tmpdir());
	snprintf(e, sizeof(e), "%s/client.err", t_tmpdir());
	char *argv[] = { node, client_js, base, (char *)key, (char *)mode,
			 (char *)prompt, maxs, NULL };
	int64_t t0 = dt_now_ms();
	*rc = dt_exec(argv, o, e, 60000);
	char *out = dt_slurp(o), *err = dt_slurp(e);
	printf("$ node serve_client.mjs %s %s '%.40s%s' %d -> exit %d in %lld ms\n"
	       "  %.600s%s", base, mode, prompt, strlen(prompt) > 40 ? "..." : "",
	       max_tokens, *rc, (long long)(dt_now_ms() - t0), out,
	       *out && out[strlen(out) - 1] == '\n' ? "" : "\n");
	if (*err)
		printf("  stderr: %.2000s\n", err);
	cJSON *j = cJSON_Parse(out);
	free(out);
	free(err);
	return j;
}

static const char *jget_s(const cJSON *j, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
	return cJSON_IsString(x) ? x->valuestring : NULL;
}

static double jget_n(const cJSON *j, const char *k)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, k);
	return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

static bool client_gen(const char *what, cJSON *j, int rc, struct gen *g)
{
	memset(g, 0, sizeof(*g));
	cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
	cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
	bool good = rc == 0 && cJSON_IsTrue(ok) && jget_s(j, "content") &&
		    jget_s(j, "finish_reason") && cJSON_IsObject(u);
	T_CHECK(good, "%s through the openai client failed (exit %d)", what, rc);
	if (!good)
		return false;
	g->text = strdup(jget_s(j, "content"));
	snprintf(g->finish, sizeof(g->finish), "%s", jget_s(j, "finish_reason"));
	g->prompt = (int)jget_n(u, "prompt_tokens");
	g->completion = (int)jget_n(u, "completion_tokens");
	g->total = (int)jget_n(u, "total_tokens");
	return true;
}

/* ---- moestream run and tokenize ------------------------------------------------- */

/* `moestream run MODEL [--chat --chat-template qwen3] -p PROMPT -n N --temp 0`:
 * the generated text (what follows the echoed prompt, which -n 0 prints
 * alone, up to the newline at the end), malloc'ed, or NULL. */
static char *run_text(bool chat, const char *prompt, int n)
{
	char o[4200], ns[16];
	snprintf(o, sizeof(o), "%s/run.out", t_tmpdir());
	char *texts[2] = { 0 };
	for (int k = 0; k < 2; k++) {
		snprintf(ns, sizeof(ns), "%d", k ? n : 0);
		char *argv[16];
		int a = 0;
		argv[a++] = (char *)ms_bin;
		argv[a++] = "run";
		argv[a++] = model;
		if (chat) {
			argv[a++] = "--chat";
			argv[a++] = "--chat-template";
			argv[a++] = "qwen3";
		}
		argv[a++] = "-p";
		argv[a++] = (char *)prompt;
		argv[a++] = "-n";
		argv[a++] = ns;
		argv[a++] = "--temp";
		argv[a++] = "0";
		argv[a++] = "--threads";
		argv[a++] = "2";
		argv[a] = NULL;
		int rc = dt_exec(argv, o, NULL, 60000);
		texts[k] = dt_slurp(o);
		T_CHECK(rc == 0, "moestream run%s -p '%s' -n %s: exit %d",
			chat ? " --chat" : "", prompt, ns, rc);
	}
	size_t le = strlen(texts[0]), lf = strlen(texts[1]);
	char *gen = NULL;
	if (le && texts[0][le - 1] == '\n' && lf >= le && texts[1][lf - 1] == '\n' &&
	    !strncmp(texts[0], texts[1], le - 1))
		gen = strndup(texts[1] + le - 1, lf - le);
	T_CHECK(gen, "moestream run%s: the output with -n %d does not start with "
		"the echo of -n 0 ('%s' vs '%s')", chat ? " --chat" : "", n,
		texts[1], texts[0]);
	printf("$ moestream run%s -p '%s' -n %d --temp 0 -> '%s'\n",
	       chat ? " --chat --chat-template qwen3" : "", prompt, n,
	       gen ? gen : "?");
	free(texts[0]);
	free(texts[1]);
	return gen;
}

/* Tokens of `text` by `moestream tokenize MODEL -f FILE --ids`, or -1. */
static int count_tokens(const char *text)
{
	char f[4200], o[4200];
	snprintf(f, sizeof(f), "%s/tok.txt", t_tmpdir());
	snprintf(o, sizeof(o), "%s/tok.out", t_tmpdir());
	if (t_write_file(f, text, strlen(text)))
		return -1;
	char *argv[] = { (char *)ms_bin, "tokenize", model, "-f", f, "--ids", NULL };
	if (dt_exec(argv, o, NULL, 30000))
		return -1;
	char *ids = dt_slurp(o);
	int n = 0;
	for (char *p = ids; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		if (!*p)
			break;
		n++;
		while (*p && *p != ' ' && *p != '\n')
			p++;
	}
	free(ids);
	return n;
}

/* ---- concurrency --------------------------------------------------------------------- */

struct job {
	unsigned port;
	const char *path;
	const char *hdrs;
	char body[1024];
	pthread_barrier_t *bar;
	struct resp r;
	int done;
};

static void *job_run(void *arg)
{
	struct job *j = arg;
	pthread_barrier_wait(j->bar);
	post(j->port, j->path, j->hdrs, j->body, &j->r);
	__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Runs n jobs at once; meanwhile polls /metrics for the most active
 * sequences and queued requests seen. */
static int64_t run_jobs(struct job *jobs, int n, unsigned port, int *max_active,
			int *max_queue)
{
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
	pthread_t *th = calloc((size_t)n, sizeof(*th));
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 << 10);
	for (int i = 0; i < n; i++) {
		jobs[i].bar = &bar;
		if (pthread_create(&th[i], &at, job_run, &jobs[i]))
			t_fatal("pthread_create: %s", strerror(errno));
	}
	int64_t t0 = dt_now_ms();
	pthread_barrier_wait(&bar);
	*max_active = *max_queue = 0;
	for (;;) {
		double a = metric(port, auth_main, "moestream_active_sequences");
		double q = metric(port, auth_main, "moestream_queue_length");
		if (a == a && a > *max_active)
			*max_active = (int)a;
		if (q == q && q > *max_queue)
			*max_queue = (int)q;
		int done = 0;
		for (int i = 0; i < n; i++)
			done += __atomic_load_n(&jobs[i].done, __ATOMIC_ACQUIRE);
		if (done == n || dt_now_ms() - t0 > 60000)
			break;
		dt_sleep_ms(5);
	}
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	int64_t dt = dt_now_ms() - t0;
	pthread_attr_destroy(&at);
	pthread_barrier_destroy(&bar);
	free(th);
	return dt;
}

/* ---- sections --------------------------------------------------------------------------- */

static const char *const chat_prompts[4] = {
	"Hello", "Name a color.", "Tell me a story about a dragon.",
	"What is the capital of France?",
};

/* a + b: the official client; the server against moestream run */
static void section_client(struct srv *m, const char *key)
{
	const int N = 12;
	const char *p1 = chat_prompts[2], *p2 = "The capital of France is";
	int rc;
	struct gen whole = { 0 }, streamed = { 0 }, comp = { 0 };

	cJSON *j = client(m->port, key, "chat", p1, N, &rc);
	if (client_gen("chat", j, rc, &whole)) {
		check_usage("chat (client)", &whole, N);
		T_CHECK(jget_s(j, "object") && !strcmp(jget_s(j, "object"), "chat.completion"),
			"chat: object is not chat.completion");
		T_CHECK(jget_s(j, "role") && !strcmp(jget_s(j, "role"), "assistant"),
			"chat: role is not assistant");
		T_CHECK(jget_s(j, "model") && !strcmp(jget_s(j, "model"), "tiny.gguf"),
			"chat: model is '%s', not the file name tiny.gguf",
			jget_s(j, "model") ? jget_s(j, "model") : "");
		T_CHECK(whole.completion == 0 || *whole.text,
			"chat: %d tokens but no text", whole.completion);
	}
	cJSON_Delete(j);

	j = client(m->port, key, "chat-stream", p1, N, &rc);
	if (client_gen("chat-stream", j, rc, &streamed)) {
		check_usage("chat-stream (client)", &streamed, N);
		double chunks = jget_n(j, "chunks");
		/* the role, a chunk per piece at most, the finish, the usage */
		T_CHECK(chunks >= 3 && chunks <= streamed.completion + 3,
			"chat-stream: %g chunks for %d tokens", chunks,
			streamed.completion);
		T_CHECK(jget_n(j, "ids") == 1, "chat-stream: chunks with %g ids",
			jget_n(j, "ids"));
		cJSON *obs = cJSON_GetObjectItemCaseSensitive(j, "objects");
		T_CHECK(cJSON_GetArraySize(obs) == 1 &&
			!strcmp(cJSON_GetArrayItem(obs, 0)->valuestring,
				"chat.completion.chunk"),
			"chat-stream: chunk objects are not all chat.completion.chunk");
		T_CHECK(jget_s(j, "role") && !strcmp(jget_s(j, "role"), "assistant"),
			"chat-stream: no assistant role delta");
		if (whole.text) {
			T_CHECK(!strcmp(streamed.text, whole.text),
				"streamed text '%s' != whole text '%s'", streamed.text,
				whole.text);
			T_CHECK(!strcmp(streamed.finish, whole.finish) &&
				streamed.prompt == whole.prompt &&
				streamed.completion == whole.completion,
				"streamed finish %s usage %d+%d != whole %s %d+%d",
				streamed.finish, streamed.prompt, streamed.completion,
				whole.finish, whole.prompt, whole.completion);
		}
	}
	cJSON_Delete(j);

	j = client(m->port, key, "completion", p2, N, &rc);
	int want_prompt = count_tokens(p2);
	if (client_gen("completion", j, rc, &comp)) {
		check_usage("completion (client)", &comp, N);
		T_CHECK(jget_s(j, "object") && !strcmp(jget_s(j, "object"), "text_completion"),
			"completion: object is not text_completion");
		T_CHECK(comp.prompt == want_prompt, "completion: prompt_tokens %d, "
			"moestream tokenize counts %d", comp.prompt, want_prompt);
	}
	cJSON_Delete(j);

	j = client(m->port, key, "models", "", 0, &rc);
	cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
	T_CHECK(rc == 0 && cJSON_GetArraySize(ids) == 1 &&
		cJSON_IsString(cJSON_GetArrayItem(ids, 0)) &&
		!strcmp(cJSON_GetArrayItem(ids, 0)->valuestring, "tiny.gguf"),
		"models: exit %d, not [\"tiny.gguf\"]", rc);
	cJSON_Delete(j);
	printf("[a] openai client: chat %d+%d tokens (%s), stream == whole (%zu bytes), "
	       "completion %d+%d (%s), models ok\n", whole.prompt, whole.completion,
	       whole.finish, whole.text ? strlen(whole.text) : 0, comp.prompt,
	       comp.completion, comp.finish);

	/* b: the same greedy text as moestream run */
	char *r1 = run_text(true, p1, N);
	T_CHECK(r1 && whole.text && !strcmp(r1, whole.text),
		"chat: the server's '%s' != moestream run --chat's '%s'",
		whole.text ? whole.text : "?", r1 ? r1 : "?");
	char *r2 = run_text(false, p2, N);
	T_CHECK(r2 && comp.text && !strcmp(r2, comp.text),
		"completion: the server's '%s' != moestream run's '%s'",
		comp.text ? comp.text : "?", r2 ? r2 : "?");
	T_CHECK(r1 && *r1 && r2 && *r2, "moestream run generated no text");
	printf("[b] greedy text == moestream run's: chat '%s', completion '%s'\n",
	       r1 ? r1 : "?", r2 ? r2 : "?");
	free(r1);
	free(r2);
	free(whole.text);
	free(streamed.text);
	free(comp.text);
}

/* A body of exactly `len` bytes: a valid completion, then spaces. */
static char *padded_body(size_t len)
{
	static const char b[] = "{\"prompt\":\"Hi\",\"max_tokens\":1,\"temperature\":0}";
	char *p = malloc(len + 1);
	if (!p)
		t_fatal("out of memory");
	memset(p, ' ', len);
	memcpy(p, b, sizeof(b) - 1);
	p[len] = 0;
	return p;
}

/* c: errors */
static void section_errors(struct srv *m, struct srv *k, const char *key_main)
{
	unsigned port = m->port;
	const char *A = auth_main;
	struct resp r;
	char body[8192];
	printf("[c] errors on server %s:\n", m->name);

	post(port, "/v1/chat/completions", A, "{\"messages\": [", &r);
	check_error(port, "malformed JSON", &r, 400, NULL, "JSON", NULL);
	resp_free(&r);
	post(port, "/v1/chat/completions", A, "{\"messages\": 5}", &r);
	check_error(port, "\"messages\": 5", &r, 400, NULL, "messages", NULL);
	resp_free(&r);
	post(port, "/v1/chat/completions", A, "{\"messages\":[{\"role\":\"user\","
	     "\"content\":\"Hi\"}],\"temperature\":\"hot\"}", &r);
	check_error(port, "\"temperature\": \"hot\"", &r, 400, NULL, "temperature",
		    NULL);
	resp_free(&r);
	post(port, "/v1/completions", A, "{\"prompt\":\"Hi\",\"max_tokens\":\"many\"}",
	     &r);
	check_error(port, "\"max_tokens\": \"many\"", &r, 400, NULL, "max_tokens", NULL);
	resp_free(&r);
	post(port, "/v1/completions", A, "[1, 2]", &r);
	check_error(port, "a JSON array body", &r, 400, NULL, "object", NULL);
	resp_free(&r);

	/* 1 MiB exactly is taken; a byte more is 413 */
	char *big = padded_body(MAX_BODY);
	http(port, "POST", "/v1/completions", A, big, MAX_BODY, &r);
	T_CHECK(r.status == 200, "a body of exactly %u bytes: status %d, '%.300s'",
		MAX_BODY, r.status, r.body ? r.body : "");
	printf("  %-44s -> %d\n", "body of exactly 1 MiB", r.status);
	resp_free(&r);
	free(big);
	big = padded_body(MAX_BODY + 1);
	http(port, "POST", "/v1/completions", A, big, MAX_BODY + 1, &r);
	check_error(port, "body of 1 MiB + 1 (Content-Length)", &r, 413, NULL, NULL,
		    NULL);
	resp_free(&r);
	/* chunked: 17 chunks of 64 KiB */
	{
		struct t_buf b = { 0 };
		char head[512];
		int n = snprintf(head, sizeof(head), "POST /v1/completions HTTP/1.1\r\n"
				 "Host: 127.0.0.1\r\nConnection: close\r\n%s"
				 "Content-Type: application/json\r\nTransfer-Encoding: "
				 "chunked\r\n\r\n", A);
		t_buf_add(&b, head, (size_t)n);
		for (size_t off = 0; off < MAX_BODY + 1; off += 65536) {
			size_t len = MAX_BODY + 1 - off < 65536 ? MAX_BODY + 1 - off : 65536;
			n = snprintf(head, sizeof(head), "%zx\r\n", len);
			t_buf_add(&b, head, (size_t)n);
			t_buf_add(&b, big + off, len);
			t_buf_add(&b, "\r\n", 2);
		}
		t_buf_add(&b, "0\r\n\r\n", 5);
		http_raw(port, b.p, b.len, &r, 30000);
		check_error(port, "body of 1 MiB + 1 (chunked)", &r, 413, NULL, NULL,
			    NULL);
		resp_free(&r);
		free(b.p);
	}
	free(big);

	/* a prompt over the context: both lengths named */
	struct t_buf p = { 0 };
	{
		for (int i = 0; i < 400; i++)
			t_buf_add(&p, "word ", 5);
		int n = count_tokens(p.p);
		T_CHECK(n > CTX, "the long prompt is %d tokens, not over %d", n, CTX);
		completion_body(body, sizeof(body), p.p, 4, false);
		post(port, "/v1/completions", A, body, &r);
		char ns[32], cs[32];
		snprintf(ns, sizeof(ns), "%d", n);
		snprintf(cs, sizeof(cs), "%d", CTX);
		check_error(port, "a prompt over the context", &r, 400,
			    "context_length_exceeded", ns, cs);
		resp_free(&r);
	}

	http(port, "GET", "/v1/nothing", A, NULL, 0, &r);
	check_error(port, "GET /v1/nothing", &r, 404, NULL, "/v1/nothing", NULL);
	resp_free(&r);
	char allow[64];
	http(port, "GET", "/v1/chat/completions", A, NULL, 0, &r);
	check_error(port, "GET /v1/chat/completions", &r, 405, NULL, NULL, NULL);
	T_CHECK(resp_header(&r, "Allow", allow, sizeof(allow)) && !strcmp(allow, "POST"),
		"405 on GET /v1/chat/completions without 'Allow: POST'");
	resp_free(&r);
	http(port, "POST", "/health", A, "", 0, &r);
	check_error(port, "POST /health", &r, 405, NULL, NULL, NULL);
	T_CHECK(resp_header(&r, "Allow", allow, sizeof(allow)) && !strcmp(allow, "GET"),
		"405 on POST /health without 'Allow: GET'");
	resp_free(&r);

	/* the key from --api-key-file */
	post(port, "/v1/chat/completions", NULL, "{\"messages\":[{\"role\":\"user\","
	     "\"content\":\"Hi\"}],\"max_tokens\":1}", &r);
	check_error(port, "--api-key-file: no key", &r, 401, NULL, NULL, NULL);
	resp_free(&r);
	post(port, "/v1/completions", "Authorization: Bearer wrong-key\r\n",
	     "{\"prompt\":\"Hi\",\"max_tokens\":1}", &r);
	check_error(port, "--api-key-file: a wrong key", &r, 401, NULL, NULL, NULL);
	resp_free(&r);
	char pre[256];
	snprintf(pre, sizeof(pre), "Authorization: Bearer %.*s\r\n",
		 (int)strlen(key_main) - 1, key_main);
	post(port, "/v1/completions", pre, "{\"prompt\":\"Hi\",\"max_tokens\":1}", &r);
	check_error(port, "--api-key-file: the key less a byte", &r, 401, NULL,
		    NULL, NULL);
	resp_free(&r);
	snprintf(pre, sizeof(pre), "Authorization: Bearer %sx\r\n", key_main);
	http(port, "GET", "/v1/models", pre, NULL, 0, &r);
	check_error(port, "--api-key-file: the key and a byte", &r, 401, NULL, NULL,
		    NULL);
	resp_free(&r);
	http(port, "GET", "/metrics", NULL, NULL, 0, &r);
	check_error(port, "--api-key-file: GET /metrics, no key", &r, 401, NULL,
		    NULL, NULL);
	resp_free(&r);
	http(port, "GET", "/v1/models", A, NULL, 0, &r);
	T_CHECK(r.status == 200 && r.body && strstr(r.body, "tiny.gguf"),
		"GET /v1/models with the key: %d '%s'", r.status, r.body ? r.body : "");
	resp_free(&r);
	int rc;
	cJSON *j = client(port, "not-the-key", "chat", "Hi", 2, &rc);
	T_CHECK(rc == 1 && jget_n(j, "status") == 401 && jget_s(j, "message"),
		"the openai client with a wrong key: exit %d, status %g (want "
		"exit 1, 401 and the message)", rc, jget_n(j, "status"));
	cJSON_Delete(j);
	j = client(port, key_main, "completion", p.p, 2, &rc);
	free(p.p);
	T_CHECK(rc == 1 && jget_n(j, "status") == 400 && jget_s(j, "code") &&
		!strcmp(jget_s(j, "code"), "context_length_exceeded"),
		"the openai client, a prompt over the context: exit %d, status %g",
		rc, jget_n(j, "status"));
	cJSON_Delete(j);

	/* --api-key on the second server */
	printf("    on server %s (--api-key):\n", k->name);
	http(k->port, "GET", "/v1/models", NULL, NULL, 0, &r);
	check_error(k->port, "--api-key: no key", &r, 401, NULL, NULL, NULL);
	resp_free(&r);
	http(k->port, "GET", "/v1/models", "Authorization: Bearer KEY-k\r\n", NULL,
	     0, &r);
	check_error(k->port, "--api-key: a wrong key", &r, 401, NULL, NULL, NULL);
	resp_free(&r);
	http(k->port, "GET", "/v1/models", "Authorization: Basic KEY-k2\r\n", NULL,
	     0, &r);
	check_error(k->port, "--api-key: not Bearer", &r, 401, NULL, NULL, NULL);
	resp_free(&r);
	http(k->port, "GET", "/v1/models", "Authorization: Bearer KEY-k2\r\n", NULL,
	     0, &r);
	T_CHECK(r.status == 200, "--api-key: the right key: status %d '%s'",
		r.status, r.body ? r.body : "");
	resp_free(&r);
	printf("[c] errors: each with its status and an OpenAI error body, "
	       "/health 200 after each\n");
}

/* d: 64 concurrent completions */
static void section_concurrent(struct srv *m)
{
	enum { N = 64, P = 8, MAXT = 3 };
	char *ref[P] = { 0 };
	char body[P][1024];
	struct resp r;
	for (int i = 0; i < P; i++) {
		char p[64];
		snprintf(p, sizeof(p), "Item %d of the list:", i * 7 + 3);
		completion_body(body[i], sizeof(body[i]), p, MAXT, false);
		post(m->port, "/v1/completions", auth_main, body[i], &r);
		struct gen g;
		if (gen_parse("sequential completion", &r, false, &g))
			ref[i] = g.text;
		resp_free(&r);
	}
	static struct job jobs[N];
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < N; i++) {
		jobs[i].port = m->port;
		jobs[i].path = "/v1/completions";
		jobs[i].hdrs = auth_main;
		snprintf(jobs[i].body, sizeof(jobs[i].body), "%s", body[i % P]);
	}
	double req0 = metric(m->port, auth_main, "moestream_requests_total");
	int max_active, max_queue;
	int64_t ms = run_jobs(jobs, N, m->port, &max_active, &max_queue);
	int ok = 0, same = 0;
	for (int i = 0; i < N; i++) {
		struct gen g;
		if (gen_parse("concurrent completion", &jobs[i].r, false, &g)) {
			ok++;
			check_usage("concurrent completion", &g, MAXT);
			if (ref[i % P] && !strcmp(g.text, ref[i % P]))
				same++;
			else
				t_fail_at(__FILE__, __LINE__, "concurrent completion %d: "
					  "'%s', sequential '%s'", i, g.text,
					  ref[i % P] ? ref[i % P] : "?");
			free(g.text);
		}
	}
	/* distinct ids */
	int dup = 0;
	for (int i = 0; i < N; i++)
		for (int k = 0; k < i; k++) {
			cJSON *a = cJSON_Parse(jobs[i].r.body ? jobs[i].r.body : "");
			cJSON *b = cJSON_Parse(jobs[k].r.body ? jobs[k].r.body : "");
			const char *ia = jget_s(a, "id"), *ib = jget_s(b, "id");
			dup += ia && ib && !strcmp(ia, ib);
			cJSON_Delete(a);
			cJSON_Delete(b);
		}
	T_CHECK(dup == 0, "%d pairs of concurrent replies share an id", dup);
	double req1 = metric(m->port, auth_main, "moestream_requests_total");
	T_CHECK(ok == N && same == N, "%d of %d concurrent completions were 200 "
		"with the right shape, %d had the sequential text", ok, N, same);
	T_CHECK(req1 - req0 == N, "moestream_requests_total went up by %g, not %d",
		req1 - req0, N);
	T_CHECK(max_active >= 2 && max_active <= 4, "with --parallel 4 at most %d "
		"sequences were seen active at once (want 2..4: batched)",
		max_active);
	int distinct = 0;
	for (int i = 0; i < P; i++) {
		bool seen = false;
		for (int k = 0; k < i; k++)
			seen |= ref[i] && ref[k] && !strcmp(ref[i], ref[k]);
		distinct += !seen;
	}
	printf("[d] %d concurrent completions: %d x 200 in %lld ms, all with the "
	       "sequential text (%d distinct of %d), at most %d active and %d "
	       "queued at once\n", N, ok, (long long)ms, distinct, P, max_active,
	       max_queue);
	for (int i = 0; i < N; i++)
		resp_free(&jobs[i].r);
	for (int i = 0; i < P; i++)
		free(ref[i]);
}

static bool le_(double v, double a) { return v <= a; }

/* e: clients that go */
static void section_cancel(struct srv *m)
{
	unsigned port = m->port;
	double last;
	T_CHECK(wait_metric(port, "moestream_active_sequences", le_, 0, 10000, &last),
		"the server is still busy before e (%g active)", last);
	double c0 = metric(port, auth_main, "moestream_cancelled_total");
	double g0 = metric(port, auth_main, "moestream_tokens_generated_total");
	char body[1024], req[2048];
	chat_body(body, sizeof(body), "Tell me a very long story about a dragon.",
		  200, true);
	int n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\n"
			 "Host: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n%s", auth_main, strlen(body), body);
	int fd = tcp_connect(port);
	T_CHECK(fd >= 0, "connect: %s", strerror(-fd));
	int events = 0;
	struct t_buf b = { 0 };
	if (fd >= 0) {
		send_all(fd, req, (size_t)n);
		int64_t end = dt_now_ms() + 20000;
		while (dt_now_ms() < end) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			if (poll(&p, 1, 100) <= 0)
				continue;
			char tmp[4096];
			ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
			if (k <= 0)
				break;
			t_buf_add(&b, tmp, (size_t)k);
			events = 0;
			for (const char *s = b.p; (s = strstr(s, "data: ")); s += 6)
				events++;
			if (events >= 3)
				break;
		}
		close(fd);
	}
	int64_t t_close = dt_now_ms();
	T_CHECK(events >= 3 && strstr(b.p ? b.p : "", "200 OK"),
		"the stream gave %d events before it was dropped: '%.500s'", events,
		b.p ? b.p : "");
	free(b.p);
	bool cancelled = wait_metric(port, "moestream_cancelled_total", gt, c0, 5000,
				     &last);
	int64_t t_cancel = dt_now_ms() - t_close;
	T_CHECK(cancelled, "moestream_cancelled_total stayed %g within 5 s of a "
		"client dropping its stream", last);
	T_CHECK(wait_metric(port, "moestream_active_sequences", le_, 0, 5000, &last),
		"the dropped stream's sequence is still active (%g)", last);
	double g1 = metric(port, auth_main, "moestream_tokens_generated_total");
	T_CHECK(g1 - g0 < 100, "%g tokens generated for a stream of max_tokens 200 "
		"dropped after its first events", g1 - g0);
	printf("[e] stream dropped after %d events: cancelled %lld ms later, %g of "
	       "200 tokens generated\n", events, (long long)t_cancel, g1 - g0);

	/* a whole reply the client does not wait for */
	double c1 = metric(port, auth_main, "moestream_cancelled_total");
	completion_body(body, sizeof(body), "Once upon a time", 200, false);
	n = snprintf(req, sizeof(req), "POST /v1/completions HTTP/1.1\r\n"
		     "Host: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
		     "Content-Length: %zu\r\n\r\n%s", auth_main, strlen(body), body);
	fd = tcp_connect(port);
	T_CHECK(fd >= 0, "connect: %s", strerror(-fd));
	if (fd >= 0) {
		send_all(fd, req, (size_t)n);
		dt_sleep_ms(300);
		close(fd);
	}
	t_close = dt_now_ms();
	cancelled = wait_metric(port, "moestream_cancelled_total", gt, c1, 5000, &last);
	t_cancel = dt_now_ms() - t_close;
	T_CHECK(cancelled, "moestream_cancelled_total stayed %g within 5 s of a "
		"client leaving before its whole reply", last);
	T_CHECK(wait_metric(port, "moestream_active_sequences", le_, 0, 5000, &last),
		"the abandoned request's sequence is still active (%g)", last);
	double g2 = metric(port, auth_main, "moestream_tokens_generated_total");
	T_CHECK(g2 - g1 < 100, "%g tokens generated for an abandoned request of "
		"max_tokens 200", g2 - g1);
	/* and the next one is served */
	struct resp r;
	chat_body(body, sizeof(body), "Hello", 4, false);
	post(port, "/v1/chat/completions", auth_main, body, &r);
	struct gen g;
	if (gen_parse("the request after the cancels", &r, true, &g)) {
		check_usage("the request after the cancels", &g, 4);
		free(g.text);
	}
	resp_free(&r);
	printf("[e] whole reply abandoned after 300 ms: cancelled %lld ms later, %g "
	       "of 200 tokens generated; the next request: 200\n",
	       (long long)t_cancel, g2 - g1);
}

/* Waits until the server closes fd: milliseconds from t0, or -1. */
static int64_t wait_closed(int fd, int64_t t0, int timeout_ms, struct t_buf *got)
{
	int64_t end = t0 + timeout_ms;
	while (dt_now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		char tmp[4096];
		ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
		if (k > 0) {
			t_buf_add(got, tmp, (size_t)k);
			continue;
		}
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		return dt_now_ms() - t0;
	}
	return -1;
}

/* f: half-sent requests and --timeout 2 */
static void section_partial(struct srv *k)
{
	const char *key = "Authorization: Bearer KEY-k2\r\n";
	int f1 = tcp_connect(k->port), f2 = tcp_connect(k->port);
	T_CHECK(f1 >= 0 && f2 >= 0, "connect failed");
	if (f1 < 0 || f2 < 0)
		return;
	int64_t t0 = dt_now_ms();
	static const char half[] = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1"
				   "\r\nContent-Ty";
	char part[512];
	int n = snprintf(part, sizeof(part), "POST /v1/completions HTTP/1.1\r\n"
			 "Host: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
			 "Content-Length: 100\r\n\r\n{\"prompt\":", key);
	send_all(f1, half, sizeof(half) - 1);
	send_all(f2, part, (size_t)n);
	/* meanwhile: others are served */
	dt_sleep_ms(300);
	health(k->port, "two half-sent requests");
	struct resp r;
	char body[512];
	completion_body(body, sizeof(body), "Hello", 2, false);
	post(k->port, "/v1/completions", key, body, &r);
	struct gen g;
	if (gen_parse("a completion beside half-sent requests", &r, false, &g))
		free(g.text);
	resp_free(&r);
	struct t_buf b1 = { 0 }, b2 = { 0 };
	int64_t d1 = wait_closed(f1, t0, 8000, &b1);
	int64_t d2 = wait_closed(f2, t0, 8000, &b2);
	close(f1);
	close(f2);
	T_CHECK(d1 >= 1500 && d1 <= 5500, "half the headers: the server closed the "
		"connection after %lld ms (want 2..5 s with --timeout 2; -1: not "
		"within 8 s)", (long long)d1);
	T_CHECK(d2 >= 1500 && d2 <= 5500, "10 of 100 body bytes: the server closed "
		"the connection after %lld ms (want 2..5 s with --timeout 2; -1: not "
		"within 8 s)", (long long)d2);
	T_CHECK(!b1.p || !strstr(b1.p, " 200 "), "half the headers got a 200: '%s'",
		b1.p);
	T_CHECK(!b2.p || !strstr(b2.p, " 200 "), "a half body got a 200: '%s'", b2.p);
	health(k->port, "the half-sent requests timed out");
	printf("[f] --timeout 2: half the headers closed after %lld ms, 10 of 100 "
	       "body bytes after %lld ms; /health and a completion served meanwhile\n",
	       (long long)d1, (long long)d2);
	free(b1.p);
	free(b2.p);
}

/* Reads fd until `needle` has come (or EOF, or timeout_ms): whether it came. */
static bool read_until(int fd, struct t_buf *b, const char *needle, int timeout_ms)
{
	int64_t end = dt_now_ms() + timeout_ms;
	while (!(b->p && strstr(b->p, needle)) && dt_now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		char tmp[4096];
		ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
		if (k <= 0)
			break;
		t_buf_add(b, tmp, (size_t)k);
	}
	return b->p && strstr(b->p, needle);
}

/* f, continued: --timeout is for connections idle or half-sent on the
 * client's side, not for a reply that the server is slow to start. A
 * stream queued behind a long generation gets its headers (and, for chat,
 * the role) at once, then nothing until its turn: it must not be cut off
 * when that wait is longer than --timeout. */
static void section_queued_stream(struct srv *k)
{
	const char *key = "Authorization: Bearer KEY-k2\r\n";
	const int HOLD = 3500; /* ms the long stream holds the only slot */
	char body[1024], req[2048];
	/* long enough to outlast HOLD at any speed (4000 tokens: 3.5 s is
	 * 1100 tok/s; the tiny preset decodes ~150-300 here) */
	completion_body(body, sizeof(body), "Once upon a time", 4000, true);
	int n = snprintf(req, sizeof(req), "POST /v1/completions HTTP/1.1\r\n"
			 "Host: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n%s", key, strlen(body), body);
	int fl = tcp_connect(k->port);
	T_CHECK(fl >= 0, "connect: %s", strerror(-fl));
	if (fl < 0)
		return;
	send_all(fl, req, (size_t)n);
	struct t_buf lb = { 0 };
	T_CHECK(read_until(fl, &lb, "data: ", 10000), "the long stream gave no "
		"event in 10 s: '%.300s'", lb.p ? lb.p : "");

	/* queued behind it (--parallel 1): a chat stream, a whole completion */
	static struct job jobs[2];
	memset(jobs, 0, sizeof(jobs));
	pthread_barrier_t bar;
	pthread_barrier_init(&bar, NULL, 3);
	pthread_t th[2];
	for (int i = 0; i < 2; i++) {
		jobs[i].port = k->port;
		jobs[i].hdrs = key;
		jobs[i].bar = &bar;
	}
	jobs[0].path = "/v1/chat/completions";
	chat_body(jobs[0].body, sizeof(jobs[0].body), "Hello", 4, true);
	jobs[1].path = "/v1/completions";
	completion_body(jobs[1].body, sizeof(jobs[1].body), "Hello", 4, false);
	for (int i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, job_run, &jobs[i]))
			t_fatal("pthread_create: %s", strerror(errno));
	pthread_barrier_wait(&bar);
	int64_t t0 = dt_now_ms();
	/* hold the slot: read the long stream, then drop it */
	bool ended = read_until(fl, &lb, "[DONE]", HOLD);
	close(fl);
	int64_t held = dt_now_ms() - t0;
	free(lb.p);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&bar);
	T_CHECK(!ended && held >= 2500, "the long stream ended by itself after "
		"%lld ms: the queued requests did not wait over --timeout 2",
		(long long)held);
	struct resp *r = &jobs[0].r;
	bool whole = r->status == 200 && r->body &&
		     strstr(r->body, "\"finish_reason\":\"length\"") &&
		     strstr(r->body, "data: [DONE]");
	T_CHECK(whole, "a chat stream queued %lld ms behind another (--timeout 2) "
		"was cut off: status %d after %lld ms, no finish_reason and [DONE]: "
		"'%.600s'", (long long)held, r->status, (long long)r->ms,
		r->body ? r->body : "");
	struct gen g;
	if (gen_parse("a whole completion queued behind a long stream",
		      &jobs[1].r, false, &g)) {
		check_usage("a whole completion queued behind a long stream", &g, 4);
		free(g.text);
	}
	printf("[f] queued %lld ms behind a long stream (--timeout 2): the chat "
	       "stream %s after %lld ms, the whole completion %d\n", (long long)held,
	       whole ? "complete" : "CUT OFF", (long long)r->ms, jobs[1].r.status);
	for (int i = 0; i < 2; i++)
		resp_free(&jobs[i].r);
	health(k->port, "the queued stream");
}

/* SIGTERM with a stream generating, an idle and a kept-alive connection:
 * still exit 0 within 5 s */
static void stop_busy(struct srv *m)
{
	int idle = tcp_connect(m->port), alive = tcp_connect(m->port),
	    st = tcp_connect(m->port);
	T_CHECK(idle >= 0 && alive >= 0 && st >= 0, "connect failed");
	char body[1024], req[2048];
	int n = snprintf(req, sizeof(req), "GET /health HTTP/1.1\r\nHost: "
			 "127.0.0.1\r\n\r\n");
	struct t_buf ab = { 0 }, sb = { 0 };
	if (alive >= 0) {
		send_all(alive, req, (size_t)n);
		T_CHECK(read_until(alive, &ab, "\"ok\"", 5000), "GET /health kept "
			"alive: '%s'", ab.p ? ab.p : "");
	}
	chat_body(body, sizeof(body), "Tell me a very long story.", 200, true);
	n = snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\n"
		     "Host: 127.0.0.1\r\n%sContent-Type: application/json\r\n"
		     "Content-Length: %zu\r\n\r\n%s", auth_main, strlen(body), body);
	if (st >= 0) {
		send_all(st, req, (size_t)n);
		T_CHECK(read_until(st, &sb, "\"delta\":{\"content\"", 10000), "the stream "
			"before SIGTERM gave no text: '%.300s'", sb.p ? sb.p : "");
	}
	printf("[stop] SIGTERM with a stream generating, an idle and a kept-alive "
	       "connection:\n");
	srv_stop(m);
	if (st >= 0) {
		struct t_buf rest = { 0 };
		int64_t d = wait_closed(st, dt_now_ms(), 2000, &rest);
		T_CHECK(d >= 0, "the stream's connection is still open after the "
			"server stopped");
		free(rest.p);
		close(st);
	}
	if (idle >= 0)
		close(idle);
	if (alive >= 0)
		close(alive);
	free(ab.p);
	free(sb.p);
}

static int threads_of(pid_t pid)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
	char *t = dt_slurp(p);
	const char *l = strstr(t, "\nThreads:");
	int n = l ? atoi(l + 9) : -1;
	free(t);
	return n;
}

/* g: 100 idle connections over --max-connections 16 */
static void section_flood(struct srv *k)
{
	enum { N = 100, LIMIT = 16 };
	int base = threads_of(k->pid);
	int fds[N];
	int64_t closed_at[N];
	int64_t t0 = dt_now_ms();
	int opened = 0;
	for (int i = 0; i < N; i++) {
		fds[i] = tcp_connect(k->port);
		closed_at[i] = -1;
		opened += fds[i] >= 0;
	}
	int max_threads = base, open_at_1s = -1;
	bool all_closed = false;
	while (dt_now_ms() - t0 < 8000) {
		int th = threads_of(k->pid);
		max_threads = th > max_threads ? th : max_threads;
		int open = 0;
		for (int i = 0; i < N; i++) {
			if (fds[i] < 0 || closed_at[i] >= 0)
				continue;
			char c;
			ssize_t r = recv(fds[i], &c, 1, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				closed_at[i] = dt_now_ms() - t0;
			else
				open++;
		}
		if (open_at_1s < 0 && dt_now_ms() - t0 >= 1000)
			open_at_1s = open;
		if (!open) {
			all_closed = true;
			break;
		}
		dt_sleep_ms(10);
	}
	int64_t last = 0;
	int early = 0;
	for (int i = 0; i < N; i++) {
		if (closed_at[i] > last)
			last = closed_at[i];
		early += closed_at[i] >= 0 && closed_at[i] < 1000;
		if (fds[i] >= 0)
			close(fds[i]);
	}
	T_CHECK(opened == N, "only %d of %d connections opened", opened, N);
	T_CHECK(max_threads <= base + LIMIT + 4, "the server's threads went from %d "
		"to %d with %d idle connections and --max-connections %d", base,
		max_threads, N, LIMIT);
	T_CHECK(open_at_1s >= 0 && open_at_1s <= LIMIT, "%d connections still open "
		"after 1 s, over --max-connections %d", open_at_1s, LIMIT);
	T_CHECK(all_closed && last >= 1500 && last <= 5500, "the idle connections "
		"were %s (the last after %lld ms; want 2..5 s with --timeout 2)",
		all_closed ? "closed" : "not all closed within 8 s", (long long)last);
	bool up = false;
	int64_t t1 = dt_now_ms();
	while (!up && dt_now_ms() - t1 < 5000) {
		struct resp r;
		http(k->port, "GET", "/health", NULL, NULL, 0, &r);
		up = r.status == 200;
		resp_free(&r);
		if (!up)
			dt_sleep_ms(100);
	}
	T_CHECK(up, "/health did not answer within 5 s after the flood");
	srv_alive(k);
	printf("[g] %d idle connections, --max-connections %d --timeout 2: threads "
	       "%d -> at most %d; %d closed at once, %d open after 1 s, the last "
	       "closed after %lld ms; /health %s\n", N, LIMIT, base, max_threads,
	       early, open_at_1s, (long long)last, up ? "200" : "no answer");
}

/* h: four concurrent chats == the same four in sequence */
static void section_parallel(struct srv *m)
{
	enum { MAXT = 16 };
	struct gen seq[4] = { 0 };
	static struct job jobs[4];
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < 4; i++) {
		jobs[i].port = m->port;
		jobs[i].path = "/v1/chat/completions";
		jobs[i].hdrs = auth_main;
		/* two greedy, two sampled with their own seeds: the tiny
		 * model's greedy reply follows the template's last token
		 * (its embeddings dominate), the same for every prompt */
		chat_body_seed(jobs[i].body, sizeof(jobs[i].body), chat_prompts[i],
			       MAXT, false, i < 2 ? -1 : 7 + i);
		struct resp r;
		post(m->port, jobs[i].path, auth_main, jobs[i].body, &r);
		gen_parse("sequential chat", &r, true, &seq[i]);
		resp_free(&r);
	}
	int max_active, max_queue, same = 0, distinct = 0;
	int64_t ms = run_jobs(jobs, 4, m->port, &max_active, &max_queue);
	for (int i = 0; i < 4; i++) {
		struct gen g;
		if (!gen_parse("concurrent chat", &jobs[i].r, true, &g))
			continue;
		check_usage("concurrent chat", &g, MAXT);
		bool eq = seq[i].text && !strcmp(g.text, seq[i].text) &&
			  !strcmp(g.finish, seq[i].finish) &&
			  g.completion == seq[i].completion && g.prompt == seq[i].prompt;
		T_CHECK(eq, "chat '%s': concurrent '%s' (%s, %d+%d) != sequential "
			"'%s' (%s, %d+%d)", chat_prompts[i], g.text, g.finish, g.prompt,
			g.completion, seq[i].text ? seq[i].text : "?", seq[i].finish,
			seq[i].prompt, seq[i].completion);
		same += eq;
		free(g.text);
		resp_free(&jobs[i].r);
	}
	for (int i = 0; i < 4; i++) {
		bool seen = false;
		for (int k = 0; k < i; k++)
			seen |= seq[i].text && seq[k].text && !strcmp(seq[i].text, seq[k].text);
		distinct += seq[i].text && !seen;
	}
	/* else a reply given to the wrong request would not show */
	T_CHECK(distinct >= 2, "the four sequential chats gave %d distinct texts",
		distinct);
	T_CHECK(max_active >= 2, "the four concurrent chats were never decoded "
		"together (at most %d active)", max_active);
	printf("[h] --parallel 4: 4 concurrent chats == sequential (%d of 4, %d "
	       "distinct texts), %d active at once, %lld ms\n", same, distinct,
	       max_active, (long long)ms);
	for (int i = 0; i < 4; i++)
		free(seq[i].text);
}

/* ---- setup ----------------------------------------------------------------------------- */

static bool find_node(void)
{
	const char *path = getenv("PATH");
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (const char *p = path; *p;) {
		size_t n = strcspn(p, ":");
		snprintf(node, sizeof(node), "%.*s/node", (int)n, p);
		if (n && !access(node, X_OK))
			return true;
		p += n + (p[n] == ':');
	}
	return false;
}

int main(void)
{
	int64_t t_start = dt_now_ms();
	setvbuf(stdout, NULL, _IOLBF, 0); /* the log in order with stderr */
	dt_watchdog(150, "t_serve");
	signal(SIGPIPE, SIG_IGN);
	ms_bin = t_build_path("moestream");
	const char *toks = getenv("MS_TOKENIZERS");
	if (!toks || !*toks)
		t_fatal("MS_TOKENIZERS is not set: run through tests/run.sh");
	openai_dir = getenv("MS_OPENAI");
	if (!openai_dir || !*openai_dir)
		t_fatal("MS_OPENAI is not set: run through tests/run.sh");

	/* node and the openai package */
	if (!find_node())
		t_skip("node is not installed (apt-get install -y nodejs): the "
		       "openai client cannot run");
	char ver[4200];
	snprintf(ver, sizeof(ver), "%s/ver.out", t_tmpdir());
	char *vargv[] = { node, "--version", NULL };
	if (dt_exec(vargv, ver, NULL, 20000))
		t_skip("'%s --version' failed: node is unusable", node);
	char *vs = dt_slurp(ver);
	printf("node %s", vs);
	if (atoi(vs + (*vs == 'v')) < 18)
		t_skip("node %s is older than 18 (the openai package's fetch)", vs);
	free(vs);
	char pj[4200];
	snprintf(pj, sizeof(pj), "%s/package.json", openai_dir);
	struct stat st;
	if (stat(pj, &st)) {
		const char *ff = getenv("MS_OPENAI_FETCH_FAILED");
		char *why = ff ? t_read_text(ff) : NULL;
		if (why)
			t_fatal("the openai package is missing (%s): %s", pj, why);
		t_skip("the openai package is not fetched (%s): run "
		       "tests/fetch-ggml.sh", pj);
	}
	const char *js = t_source_path("tests/serve_client.mjs", 3);
	if (!js)
		t_fatal("tests/serve_client.mjs not found");
	if (js[0] == '/') {
		snprintf(client_js, sizeof(client_js), "%s", js);
	} else {
		char cwd[2048];
		if (!getcwd(cwd, sizeof(cwd)))
			t_fatal("getcwd: %s", strerror(errno));
		snprintf(client_js, sizeof(client_js), "%s/%s", cwd, js);
	}

	/* the model */
	char tok[4200];
	snprintf(tok, sizeof(tok), "%s/qwen3/tokenizer.json", toks);
	if (stat(tok, &st)) {
		char fp[4200];
		snprintf(fp, sizeof(fp), "%s/qwen3/FETCH_FAILED", toks);
		char *why = t_read_text(fp);
		t_fatal("%s is missing: %s", tok, why ? why : "run tests/fetch-ggml.sh");
	}
	snprintf(model, sizeof(model), "%s/tiny.gguf", t_tmpdir());
	{
		char *argv[] = { (char *)ms_bin, "mkmodel", "--preset", "tiny", "--seed", "9",
				 "--tokenizer", tok, "-o", model, "--force", NULL };
		int rc = dt_exec(argv, NULL, NULL, 60000);
		if (rc)
			t_fatal("moestream mkmodel --preset tiny --seed 9 --tokenizer %s: "
				"exit %d", tok, rc);
	}

	/* the servers */
	static const char key_main[] = "sk-moestream-t_serve-0123456789";
	char keyfile[4200], auth[256];
	snprintf(keyfile, sizeof(keyfile), "%s/key", t_tmpdir());
	char keytext[128];
	snprintf(keytext, sizeof(keytext), "%s\n# not part of the key\n", key_main);
	if (t_write_file(keyfile, keytext, strlen(keytext)))
		t_fatal("cannot write %s", keyfile);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", key_main);
	auth_main = auth;
	struct srv m = { 0 }, k = { 0 };
	const char *const margs[] = { "--parallel", "4", "--ctx", "256", "--api-key-file",
				      keyfile, NULL };
	srv_start(&m, "main", margs);
	const char *const kargs[] = { "--ctx", "4096", "--api-key", "KEY-k2",
				      "--max-connections", "16", "--timeout", "2", NULL };
	srv_start(&k, "key", kargs);

	int64_t t = dt_now_ms();
	section_client(&m, key_main);
	printf("    (a, b: %lld ms)\n", (long long)(dt_now_ms() - t));
	t = dt_now_ms();
	section_errors(&m, &k, key_main);
	printf("    (c: %lld ms)\n", (long long)(dt_now_ms() - t));
	t = dt_now_ms();
	section_concurrent(&m);
	section_cancel(&m);
	section_parallel(&m);
	printf("    (d, e, h: %lld ms)\n", (long long)(dt_now_ms() - t));
	t = dt_now_ms();
	section_partial(&k);
	section_queued_stream(&k);
	section_flood(&k);
	printf("    (f, g: %lld ms)\n", (long long)(dt_now_ms() - t));

	srv_alive(&m);
	srv_alive(&k);
	stop_busy(&m);
	srv_stop(&k);
	printf("t_serve: %lld ms in all\n", (long long)(dt_now_ms() - t_start));
	return t_done();
}
