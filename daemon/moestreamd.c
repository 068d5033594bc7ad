/*
 * moestreamd - the expert-streaming daemon.
 *
 * This build lays the floor: it opens and validates a model (all shards, the
 * expert map) and reports what it would serve. The socket service, the
 * io_uring engine and the expert cache are built on top of this in the
 * daemon, iouring and cache rooms; until they land, moestreamd refuses to
 * pretend to serve and says so.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "moestream/model.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moestreamd --model PATH --check-model\n"
		"       moestreamd --version | --help\n"
		"\n"
		"moestreamd streams the cold expert weights of a Mixture-of-Experts "
		"GGUF\nfrom NVMe into a shared, pinned expert cache that inference "
		"processes read\nover a Unix socket.\n"
		"\n"
		"  -m, --model PATH   the GGUF (any shard of a split model)\n"
		"      --check-model  open PATH, validate every shard and the "
		"expert map,\n"
		"                     print a one-line summary and exit (0 ok, 1 "
		"bad model)\n"
		"  -V, --version      print the version\n"
		"  -h, --help         this text\n"
		"\n"
		"This version does not serve yet: the socket service arrives with "
		"the\ndaemon room. 'moestream inspect PATH' shows the model in "
		"detail.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, 0, 'm' },
		{ "check-model", no_argument, 0, 'C' },
		{ "version", no_argument, 0, 'V' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *model = NULL;
	int check = 0, c;
	while ((c = getopt_long(argc, argv, "m:Vh", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'C': check = 1; break;
		case 'V': printf("moestreamd %s\n", MS_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "moestreamd: unexpected argument '%s'\n",
			argv[optind]);
		return 2;
	}
	if (!model) {
		fprintf(stderr, "moestreamd: no model: pass --model PATH\n");
		return 2;
	}
	struct ms_model *m;
	struct ms_err err = { 0 };
	if (ms_model_open(&m, model, &err)) {
		fprintf(stderr, "moestreamd: %s\n", err.msg);
		return 1;
	}
	printf("moestreamd: %s: %s, %u shard(s), %u MoE layers (%u run) x %u "
	       "experts, %llu bytes per token uncached\n",
	       model, m->arch, m->n_shards, m->n_layers, m->n_layers_run,
	       m->n_expert, (unsigned long long)m->bytes_per_token);
	ms_model_free(m);
	if (check)
		return 0;
	fprintf(stderr, "moestreamd: this version (%s) validates models but does "
			"not serve yet; use --check-model\n",
		MS_VERSION);
	return 1;
}
