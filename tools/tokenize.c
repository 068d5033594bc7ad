/*
 * tokenize.c - `moestream tokenize` and `moestream detokenize`: the model's
 * own tokenizer (engine/), built from the GGUF's metadata alone, as the
 * engine uses it. Ids match llama.cpp's llama_tokenize() on the same file
 * (t_tokenize_ref checks that on a corpus of thousands of strings).
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "moestream/engine.h"
#include "tools.h"

#define MAX_TEXT (256u << 20)

int tool_load_vocab(const char *cmd, const char *path, struct ms_gguf **g,
		    struct ms_vocab **v)
{
	struct ms_err err = { 0 };
	*g = NULL;
	*v = NULL;
	if (ms_gguf_open(g, path, &err) < 0) {
		tool_error(cmd, "%s", err.msg);
		return -1;
	}
	if (ms_vocab_load(v, *g, &err) < 0) {
		tool_error(cmd, "%s", err.msg);
		ms_gguf_free(*g);
		*g = NULL;
		return -1;
	}
	return 0;
}

/* A piece for people: printable ASCII as is, the rest escaped. */
static void print_piece(FILE *o, const char *p, size_t n)
{
	fputc('\'', o);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\n')
			fputs("\\n", o);
		else if (c == '\t')
			fputs("\\t", o);
		else if (c == '\r')
			fputs("\\r", o);
		else if (c == '\\' || c == '\'')
			fprintf(o, "\\%c", c);
		else if (c < 0x20 || c == 0x7F)
			fprintf(o, "\\x%02x", c);
		else
			fputc(c, o); /* UTF-8 passes through */
	}
	fputc('\'', o);
}

static void tok_usage(FILE *f)
{
	fprintf(f,
		"usage: moestream tokenize MODEL [TEXT | -f FILE] [--ids] "
		"[--no-special] [--no-bos]\n"
		"\n"
		"Tokenizes TEXT (or FILE, '-' for stdin) with MODEL's own tokenizer, "
		"read from\nits GGUF metadata: byte-level BPE with the model's "
		"pre-tokenizer (qwen2,\nllama-bpe, glm4, deepseek-v3, gpt-4o). The "
		"ids are those llama.cpp gives for\nthe same file (special tokens "
		"parsed, BOS/EOS added as the model says).\n"
		"\noptions:\n"
		"  -f, --file FILE   read the text from FILE ('-': stdin)\n"
		"  --ids             bare ids, one line, space-separated\n"
		"  --no-special      do not match control tokens such as "
		"<|im_start|> in the text\n"
		"                    (user-defined tokens are still matched, as in "
		"llama.cpp)\n"
		"  --no-bos          add no BOS/EOS even where the model asks for "
		"them\n"
		"\nDefault output: one line per token, 'ID<TAB>PIECE' with the "
		"piece quoted and\nescaped, then a count on stderr.\n"
		"examples:\n"
		"  moestream tokenize model.gguf 'Hello, world'\n"
		"  moestream tokenize model.gguf -f prompt.txt --ids\n"
		"exit codes: 0 ok, 1 no tokenizer in MODEL / unreadable, 2 bad "
		"usage\n");
}

int cmd_tokenize(int argc, char **argv)
{
	const char *cmd = "tokenize";
	enum { O_IDS = 256, O_NOSPECIAL, O_NOBOS };
	static const struct option opts[] = {
		{ "file", required_argument, 0, 'f' },
		{ "ids", no_argument, 0, O_IDS },
		{ "no-special", no_argument, 0, O_NOSPECIAL },
		{ "no-bos", no_argument, 0, O_NOBOS },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *file = NULL;
	bool ids_only = false;
	unsigned flags = MS_TOKENIZE_ADD_SPECIAL | MS_TOKENIZE_PARSE_SPECIAL;
	const char *line = "usage: moestream tokenize MODEL [TEXT | -f FILE] "
			   "[--ids] [--no-special] [--no-bos]";
	int c;
	while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f': file = optarg; break;
		case O_IDS: ids_only = true; break;
		case O_NOSPECIAL: flags &= ~MS_TOKENIZE_PARSE_SPECIAL; break;
		case O_NOBOS: flags &= ~MS_TOKENIZE_ADD_SPECIAL; break;
		case 'h': tok_usage(stdout); return 0;
		default: return tool_bad_usage(line);
		}
	}
	int left = argc - optind;
	if (left < 1) {
		tool_error(cmd, "no MODEL given");
		return tool_bad_usage(line);
	}
	if ((file && left != 1) || (!file && left != 2)) {
		tool_error(cmd, file ? "give TEXT or -f FILE, not both"
				     : "give the TEXT to tokenize (one argument; "
				       "quote it) or -f FILE");
		return tool_bad_usage(line);
	}
	char *text = NULL;
	size_t len;
	if (file) {
		if (tool_read_input(cmd, file, MAX_TEXT, &text, &len))
			return 1;
	} else {
		text = strdup(argv[optind + 1]);
		if (!text)
			return 1;
		len = strlen(text);
	}
	struct ms_gguf *g;
	struct ms_vocab *v;
	if (tool_load_vocab(cmd, argv[optind], &g, &v)) {
		free(text);
		return 1;
	}
	struct ms_tokens t = { 0 };
	struct ms_err err = { 0 };
	int rc = ms_tokenize(v, text, len, flags, &t, &err);
	if (rc < 0) {
		tool_error(cmd, "%s", err.msg);
	} else if (ids_only) {
		for (size_t i = 0; i < t.n; i++)
			printf("%s%d", i ? " " : "", t.ids[i]);
		printf("\n");
	} else {
		char piece[MS_VOCAB_MAX_TOKEN_LEN * 8];
		for (size_t i = 0; i < t.n; i++) {
			int l = ms_token_piece(v, t.ids[i], true, piece, sizeof(piece));
			printf("%d\t", t.ids[i]);
			print_piece(stdout, piece, l < 0 ? 0
				    : (size_t)l < sizeof(piece) ? (size_t)l
				    : sizeof(piece));
			printf("\n");
		}
		fflush(stdout);
		fprintf(stderr, "%zu tokens from %zu bytes\n", t.n, len);
	}
	ms_tokens_free(&t);
	ms_vocab_free(v);
	ms_gguf_free(g);
	free(text);
	return rc < 0 ? 1 : 0;
}

static void detok_usage(FILE *f)
{
	fprintf(f,
		"usage: moestream detokenize MODEL ID... [--no-special]\n"
		"\n"
		"Writes the bytes the token ids stand for (as llama.cpp's "
		"token_to_piece),\nspecial tokens included unless --no-special; no "
		"newline is added.\n"
		"example:\n"
		"  moestream detokenize model.gguf $(moestream tokenize model.gguf "
		"'Hi' --ids)\n"
		"exit codes: 0 ok, 1 no tokenizer in MODEL / an id outside the "
		"vocabulary,\n2 bad usage (an ID that is not a number)\n");
}

int cmd_detokenize(int argc, char **argv)
{
	const char *cmd = "detokenize";
	enum { O_NOSPECIAL = 256 };
	static const struct option opts[] = {
		{ "no-special", no_argument, 0, O_NOSPECIAL },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *line = "usage: moestream detokenize MODEL ID... [--no-special]";
	bool special = true;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_NOSPECIAL: special = false; break;
		case 'h': detok_usage(stdout); return 0;
		default: return tool_bad_usage(line);
		}
	}
	if (argc - optind < 1) {
		tool_error(cmd, "no MODEL given");
		return tool_bad_usage(line);
	}
	size_t n = (size_t)(argc - optind - 1);
	int32_t *ids = calloc(n ? n : 1, sizeof(*ids));
	if (!ids)
		return 1;
	for (size_t i = 0; i < n; i++) {
		const char *s = argv[optind + 1 + (int)i];
		char *end;
		errno = 0;
		long x = strtol(s, &end, 10);
		if (errno || end == s || *end || x < 0 || x > INT32_MAX) {
			tool_error(cmd, "'%s' is not a token id (a whole number "
				   "0..%d)", s, INT32_MAX);
			free(ids);
			return tool_bad_usage(line);
		}
		ids[i] = (int32_t)x;
	}
	struct ms_gguf *g;
	struct ms_vocab *v;
	if (tool_load_vocab(cmd, argv[optind], &g, &v)) {
		free(ids);
		return 1;
	}
	char *out = NULL;
	size_t len = 0;
	struct ms_err err = { 0 };
	int rc = ms_detokenize(v, ids, n, special, &out, &len, &err);
	if (rc < 0)
		tool_error(cmd, "%s", err.msg);
	else
		fwrite(out, 1, len, stdout);
	free(out);
	free(ids);
	ms_vocab_free(v);
	ms_gguf_free(g);
	return rc < 0 ? 1 : 0;
}
