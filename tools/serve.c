/*
 * serve.c - `moestream serve`: the options of the OpenAI-compatible server
 * (api/server.c), the API key, the signals.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "../api/server.h"
#include "moestream/engine.h"
#include "tools.h"

#define CMD "serve"

static volatile int stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static const char usage_line[] =
	"usage: moestream serve MODEL [--host H] [--port P] [--socket S | "
	"--cache-size SZ]\n"
	"       [--parallel N] [--ctx N] [--batch N] [--threads T] "
	"[--api-key KEY | --api-key-file F]\n"
	"       [--chat-template NAME] [--alias ID] [--max-connections N] "
	"[--timeout S] [--max-queue N]\n"
	"       [--device cpu|gpu] [--vram-experts SZ]";

static void usage(FILE *f)
{
	fprintf(f,
		"%s\n"
		"\n"
		"Serves a Mixture-of-Experts GGUF over HTTP with the OpenAI API, as "
		"llama-server\ndoes: chat front-ends, editors, agents and the official "
		"clients talk to it\nunchanged. The engine is `moestream run`'s: "
		"resident tensors in memory, routed\nexperts streamed into an expert "
		"cache (embedded, or moestreamd's with --socket).\n"
		"\nroutes:\n"
		"  POST /v1/chat/completions  messages, max_tokens, temperature, "
		"top_p, top_k,\n"
		"                             min_p, seed, stop, stream (Server-Sent "
		"Events)\n"
		"  POST /v1/completions       the same with prompt instead of "
		"messages\n"
		"  GET  /v1/models            the model's id (the file name, or "
		"--alias)\n"
		"  GET  /health               {\"status\":\"ok\"} (no key asked)\n"
		"  GET  /metrics              Prometheus text: requests, tokens, "
		"tok/s, expert hit\n"
		"                             rate, bytes read, queue length\n"
		"\noptions:\n"
		"  --host H                address to listen on (default 127.0.0.1; "
		"0.0.0.0 or ::\n"
		"                         for every interface: then set an API key)\n"
		"  --port P                TCP port (default 8080; 0: any free one, "
		"printed)\n"
		"  --socket PATH           take experts from a running moestreamd "
		"(same model)\n"
		"  --cache-size SIZE       the embedded expert cache (default: the "
		"RAM left)\n"
		"  --parallel N            sequences decoded together (default 1); "
		"each has its\n"
		"                          own KV cache of --ctx tokens; an expert "
		"several of them\n"
		"                          route to is read and computed once per "
		"step\n"
		"  --ctx N                 KV cache tokens per sequence (default "
		"4096)\n"
		"  --batch N               tokens per engine pass (default 64)\n"
		"  --threads N             threads for the products (default: all "
		"CPUs)\n"
		"  --api-key KEY           ask for 'Authorization: Bearer KEY' "
		"(except /health)\n"
		"  --api-key-file F        the key from the first line of F (keeps "
		"it out of ps)\n"
		"  --chat-template NAME    qwen3, glm4 (GLM-4.5/4.6) or glm47; "
		"default: the model's\n"
		"                          own; a model whose template is not known "
		"refuses chat\n"
		"                          requests (completions still work)\n"
		"  --alias ID              the model id clients see\n"
		"  --max-connections N     open connections at most (default 256)\n"
		"  --timeout S             close a connection idle or half-sent for S "
		"seconds\n"
		"                          (default 60)\n"
		"  --max-queue N           requests waiting for a slot at most; "
		"more get 503\n"
		"                          (default 64)\n"
		"  --no-speculate          no speculative prefetch hints\n"
		"  --activations A         q8 (default): 8-bit activations for the "
		"K-quant\n"
		"                          products, as llama.cpp's CPU backend; "
		"f32: exact\n"
		"  --device D              cpu (default) or gpu: the decoder on GPU 0 "
		"(resident\n"
		"                          tensors and KV cache in VRAM, experts "
		"copied into a VRAM\n"
		"                          expert cache; --activations picks its "
		"matvec: 8-bit or\n"
		"                          exact); exit 3 without a usable GPU\n"
		"  --vram-experts SIZE     the VRAM expert cache (default: the VRAM "
		"left, less 1.5 GB)\n"
		"\nexamples:\n"
		"  moestream serve GLM-4.7-UD-Q2_K_XL-00001-of-00003.gguf "
		"--cache-size 24G\n"
		"  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: "
		"application/json' \\\n"
		"    -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'\n"
		"  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=none "
		"some-openai-client\n"
		"exit codes: 0 stopped by SIGINT/SIGTERM, 1 failed (model, port), "
		"2 bad usage,\n3 --device gpu without a usable GPU\n",
		usage_line);
}

static int read_key_file(const char *path, char **out)
{
	char *text = NULL;
	size_t len = 0;
	if (tool_read_input(CMD, path, 4096, &text, &len))
		return -1;
	size_t n = strcspn(text, "\r\n");
	text[n] = 0;
	if (!n) {
		tool_error(CMD, "--api-key-file %s: the first line is empty", path);
		free(text);
		return -1;
	}
	*out = text;
	return 0;
}

int cmd_serve(int argc, char **argv)
{
	enum {
		O_HOST = 256, O_PORT, O_SOCKET, O_CACHE, O_PAR, O_CTX, O_BATCH,
		O_THREADS, O_KEY, O_KEYFILE, O_TMPL, O_ALIAS, O_MAXCONN,
		O_TIMEOUT, O_MAXQ, O_NOSPEC, O_DEVICE, O_ACT, O_VRAM,
	};
	static const struct option opts[] = {
		{ "host", required_argument, 0, O_HOST },
		{ "port", required_argument, 0, O_PORT },
		{ "socket", required_argument, 0, O_SOCKET },
		{ "cache-size", required_argument, 0, O_CACHE },
		{ "parallel", required_argument, 0, O_PAR },
		{ "ctx", required_argument, 0, O_CTX },
		{ "batch", required_argument, 0, O_BATCH },
		{ "threads", required_argument, 0, O_THREADS },
		{ "api-key", required_argument, 0, O_KEY },
		{ "api-key-file", required_argument, 0, O_KEYFILE },
		{ "chat-template", required_argument, 0, O_TMPL },
		{ "alias", required_argument, 0, O_ALIAS },
		{ "max-connections", required_argument, 0, O_MAXCONN },
		{ "timeout", required_argument, 0, O_TIMEOUT },
		{ "max-queue", required_argument, 0, O_MAXQ },
		{ "no-speculate", no_argument, 0, O_NOSPEC },
		{ "activations", required_argument, 0, O_ACT },
		{ "device", required_argument, 0, O_DEVICE },
		{ "vram-experts", required_argument, 0, O_VRAM },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct ms_serve_config c = {
		.host = "127.0.0.1", .port = 8080, .parallel = 1, .max_conn = 256,
		.timeout_s = 60, .max_queue = 64, .stop = &stop_flag,
	};
	c.engine.quiet = false;
	c.engine.q8_activations = true;
	const char *key_file = NULL;
	char *key_buf = NULL;
	uint32_t u;
	int ch;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case O_HOST: c.host = optarg; break;
		case O_PORT:
			if (tool_parse_u32(CMD, "--port", optarg, &u) || u > 65535) {
				tool_error(CMD, "--port '%s': 0..65535", optarg);
				return EXIT_USAGE;
			}
			c.port = (uint16_t)u;
			break;
		case O_SOCKET: c.engine.socket = optarg; break;
		case O_CACHE:
			if (tool_parse_size(CMD, "--cache-size", optarg,
					    &c.engine.cache_size))
				return EXIT_USAGE;
			break;
		case O_PAR:
			if (tool_parse_u32(CMD, "--parallel", optarg, &c.parallel) ||
			    !c.parallel || c.parallel > MS_ENGINE_MAX_SEQ) {
				tool_error(CMD, "--parallel '%s': 1..%u", optarg,
					   MS_ENGINE_MAX_SEQ);
				return EXIT_USAGE;
			}
			break;
		case O_CTX:
			if (tool_parse_u32(CMD, "--ctx", optarg, &c.engine.n_ctx) ||
			    !c.engine.n_ctx)
				return EXIT_USAGE;
			break;
		case O_BATCH:
			if (tool_parse_u32(CMD, "--batch", optarg, &c.engine.n_batch) ||
			    !c.engine.n_batch || c.engine.n_batch > 4096) {
				tool_error(CMD, "--batch: 1..4096");
				return EXIT_USAGE;
			}
			break;
		case O_THREADS:
			if (tool_parse_u32(CMD, "--threads", optarg, &u) || u > 512)
				return EXIT_USAGE;
			c.engine.n_threads = (int)u;
			break;
		case O_KEY: c.api_key = optarg; break;
		case O_KEYFILE: key_file = optarg; break;
		case O_TMPL:
			if ((c.chat = ms_chat_from_name(optarg)) == MS_CHAT_NONE) {
				tool_error(CMD, "--chat-template '%s': known are qwen3, "
					   "glm4, glm47", optarg);
				return EXIT_USAGE;
			}
			break;
		case O_ALIAS: c.alias = optarg; break;
		case O_MAXCONN:
			if (tool_parse_u32(CMD, "--max-connections", optarg,
					   &c.max_conn) || !c.max_conn ||
			    c.max_conn > 65536) {
				tool_error(CMD, "--max-connections: 1..65536");
				return EXIT_USAGE;
			}
			break;
		case O_TIMEOUT:
			if (tool_parse_u32(CMD, "--timeout", optarg, &c.timeout_s) ||
			    !c.timeout_s) {
				tool_error(CMD, "--timeout: seconds, at least 1");
				return EXIT_USAGE;
			}
			break;
		case O_MAXQ:
			if (tool_parse_u32(CMD, "--max-queue", optarg, &c.max_queue))
				return EXIT_USAGE;
			break;
		case O_NOSPEC: c.engine.no_speculate = true; break;
		case O_ACT:
			if (tool_parse_activations(CMD, optarg,
						   &c.engine.q8_activations))
				return 2;
			break;
		case O_DEVICE:
			if (tool_parse_device(CMD, optarg, &c.engine.gpu))
				return EXIT_USAGE;
			break;
		case O_VRAM:
			if (tool_parse_size(CMD, "--vram-experts", optarg,
					    &c.engine.vram_experts))
				return EXIT_USAGE;
			break;
		case 'h': usage(stdout); return 0;
		default: return tool_bad_usage(usage_line);
		}
	}
	c.engine.model = tool_one_model(CMD, argc, argv, optind);
	if (!c.engine.model)
		return tool_bad_usage(usage_line);
	if (c.engine.vram_experts && !c.engine.gpu) {
		tool_error(CMD, "--vram-experts sizes the GPU's expert cache: it "
			   "needs --device gpu");
		return EXIT_USAGE;
	}
	if (c.engine.gpu && tool_gpu_usable(CMD))
		return EXIT_UNAVAILABLE;
	if (c.engine.socket && c.engine.cache_size) {
		tool_error(CMD, "--socket and --cache-size exclude each other: the "
			   "daemon's cache is sized by moestreamd");
		return EXIT_USAGE;
	}
	if (c.api_key && key_file) {
		tool_error(CMD, "--api-key and --api-key-file exclude each other");
		return EXIT_USAGE;
	}
	if (c.api_key && !*c.api_key) {
		tool_error(CMD, "--api-key: the key is empty");
		return EXIT_USAGE;
	}
	if (key_file) {
		if (read_key_file(key_file, &key_buf))
			return 1;
		c.api_key = key_buf;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	struct ms_err err = { 0 };
	int rc = ms_serve(&c, &err);
	if (rc)
		tool_error(CMD, "%s", err.msg);
	free(key_buf);
	return rc ? 1 : 0;
}
