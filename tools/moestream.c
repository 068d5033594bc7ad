/*
 * moestream - the command-line tool, git-style: `moestream SUBCOMMAND ...`.
 * Each subcommand lives in its own file and parses its own options; this file
 * dispatches and teaches.
 */
#include <stdio.h>
#include <string.h>

#include "moestream/kernels.h"
#include "tools.h"

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *help;
} commands[] = {
	{ "inspect", cmd_inspect,
	  "summarise a GGUF model: experts, bytes per token, the extents map" },
	{ "mkmodel", cmd_mkmodel, "write a test model (GGUF) with real shapes" },
	{ "trace", cmd_trace,
	  "routing traces: gen, export --csv, import --csv, stats" },
	{ "simulate", cmd_simulate,
	  "replay a trace against a cache policy (lru, lfu, fifo, min)" },
	{ "dump", cmd_dump, "one expert projection, dequantised to f32" },
	{ "route", cmd_route, "run a layer's router on a hidden state" },
	{ "ffn", cmd_ffn, "run one expert's FFN on a batch of hidden states" },
	{ "bench", cmd_bench,
	  "benchmarks against the machine's own limits: kernels, io, rpc" },
	{ "status", cmd_status, "what a running moestreamd serves, and how" },
	{ "stats", cmd_stats, "moestreamd's counters (--json, --prometheus)" },
	{ "get", cmd_get, "an expert's bytes as moestreamd serves them" },
	{ "replay", cmd_replay,
	  "replay a routing trace through moestreamd: tok/s, latency, hit rate" },
	{ "run", cmd_run,
	  "generate text from a MoE GGUF, experts streamed from disk" },
	{ "plan", cmd_plan,
	  "what a machine will get from a model, before the download" },
	{ "serve", cmd_serve,
	  "an OpenAI-compatible HTTP server on the same engine" },
	{ "tokenize", cmd_tokenize,
	  "text to token ids with the model's own tokenizer" },
	{ "detokenize", cmd_detokenize, "token ids back to text" },
	{ "gpu", cmd_gpu, "list the CUDA devices this build can use" },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestream COMMAND [OPTIONS] [ARGS]\n"
		"\n"
		"moestream runs giant Mixture-of-Experts models on machines that "
		"cannot hold\nthem: moestreamd streams cold experts from NVMe; "
		"this tool inspects models,\nmakes test models and checks the "
		"machine.\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
	fprintf(f,
		"\n'moestream COMMAND --help' explains a command.\n"
		"examples:\n"
		"  moestream inspect ~/models/GLM-4.7-UD-Q2_K_XL-00001-of-00003.gguf\n"
		"  moestream inspect --extents model.gguf | head\n"
		"exit codes: 0 ok, 1 failed, 2 bad usage, 3 not available in this "
		"build/machine\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *c = argv[1];
	if (!strcmp(c, "-h") || !strcmp(c, "--help") || !strcmp(c, "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(c, "--version") || !strcmp(c, "version")) {
		printf("moestream %s (%s)\n", MS_VERSION, ms_gpu_build_info());
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(c, commands[i].name)) {
			/* getopt's messages then read "moestream inspect: ..." */
			char prog[64];
			snprintf(prog, sizeof(prog), "moestream %s", c);
			argv[1] = prog;
			return commands[i].fn(argc - 1, argv + 1);
		}
	fprintf(stderr, "moestream: '%s' is not a command; see 'moestream --help'\n",
		c);
	return EXIT_USAGE;
}
