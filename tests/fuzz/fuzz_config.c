/*
 * fuzz_config.c - libFuzzer target for moestreamd's configuration parser
 * (daemon/config.c: libinih behind our own line reader and option table).
 *
 * The input becomes a file (a memfd, read through /proc/self/fd/N, so
 * nothing touches the disk) that ms_config_load reads over the defaults.
 * The contract checked:
 *
 *   - any input gives 0 or -EINVAL (never a crash, never another code: the
 *     file is readable and memory is plenty), and -EINVAL comes with a
 *     one-line message that starts with the file's name, in err.code too;
 *   - a refused file leaves the configuration exactly as it was (a load
 *     commits only when the whole file is good);
 *   - an accepted file round-trips: ms_config_print of the result is itself
 *     a file ms_config_load accepts, giving the very same configuration,
 *     and printing that again gives the same text;
 *   - ms_config_apply_live between the defaults and the result terminates
 *     its list of refused names.
 *
 * When the input holds two NUL bytes, the three pieces also go to
 * ms_config_set(section, key, value) (the command line's path): 0 or
 * -EINVAL with a message, the configuration untouched when refused.
 *
 * A broken promise aborts so that libFuzzer keeps the input. `make fuzz`
 * links this with daemon/config.c and what it needs (the cache's defaults:
 * cache/, iouring/, model/). tests/t_fuzz_seeds_more.c includes this file
 * (MS_FUZZ_NO_ENTRY) to run the seeds in tests/fuzz/corpus/config.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../daemon/daemon.h"

/* What one input did. */
#define FC_LOADED 1      /* ms_config_load accepted the file */
#define FC_SET 2         /* ms_config_set accepted the NUL-split pieces */

static void fc_broken(const char *what, long long a, long long b)
{
	fprintf(stderr, "fuzz_config: contract broken: %s (%lld, %lld)\n", what,
		a, b);
	abort();
}

#define FC_CHECK(cond, a, b)                                                   \
	do {                                                                   \
		if (!(cond))                                                   \
			fc_broken(#cond, (long long)(a), (long long)(b));      \
	} while (0)

/* A memfd holding data[size], and its /proc path. */
static int fc_memfile(const void *data, size_t size, char *path, size_t len)
{
	int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
	if (fd < 0) {
		perror("memfd_create");
		abort();
	}
	for (size_t done = 0; done < size;) {
		ssize_t w = write(fd, (const char *)data + done, size - done);
		if (w <= 0) {
			perror("write memfd");
			abort();
		}
		done += (size_t)w;
	}
	snprintf(path, len, "/proc/self/fd/%d", fd);
	return fd;
}

static void fc_check_refusal(int rc, const struct ms_err *err, const char *path)
{
	FC_CHECK(rc == -EINVAL, rc, 0);
	FC_CHECK(err->code == rc, err->code, rc);
	FC_CHECK(memchr(err->msg, '\0', sizeof(err->msg)) != NULL, 0, 0);
	FC_CHECK(err->msg[0] != '\0', rc, 0);
	FC_CHECK(!strchr(err->msg, '\n'), rc, 0);
	if (path)
		FC_CHECK(!strncmp(err->msg, path, strlen(path)), rc, 0);
}

/* ms_config_print into a malloc'ed string. */
static char *fc_print(const struct ms_config *c, size_t *len)
{
	char *text = NULL;
	FILE *f = open_memstream(&text, len);
	if (!f) {
		perror("open_memstream");
		abort();
	}
	ms_config_print(c, f);
	if (fclose(f)) {
		perror("open_memstream");
		abort();
	}
	return text;
}

/* The entry both the fuzzer and t_fuzz_seeds_more use: FC_* bits. */
static int fuzz_config_one(const uint8_t *data, size_t size)
{
	int ret = 0;
	/* Heap copies of exactly their size: a stray write is an ASan report. */
	struct ms_config *dflt = malloc(sizeof(*dflt));
	struct ms_config *c = malloc(sizeof(*c));
	struct ms_config *c2 = malloc(sizeof(*c2));
	if (!dflt || !c || !c2)
		abort();
	ms_config_defaults(dflt);
	memcpy(c, dflt, sizeof(*c));

	char path[64];
	int fd = fc_memfile(data, size, path, sizeof(path));
	struct ms_err err;
	memset(&err, 0, sizeof(err));
	int rc = ms_config_load(c, path, true, &err);
	close(fd);
	if (rc) {
		fc_check_refusal(rc, &err, path);
		FC_CHECK(!memcmp(c, dflt, sizeof(*c)), rc, 0);
	} else {
		ret |= FC_LOADED;
		/* What --print-config writes reads back to the same values. */
		size_t len1 = 0, len2 = 0;
		char *text = fc_print(c, &len1);
		char p2[64];
		fd = fc_memfile(text, len1, p2, sizeof(p2));
		ms_config_defaults(c2);
		memset(&err, 0, sizeof(err));
		rc = ms_config_load(c2, p2, true, &err);
		close(fd);
		if (rc)
			fprintf(stderr, "fuzz_config: printed file refused: %s\n",
				err.msg);
		FC_CHECK(rc == 0, rc, 0);
		FC_CHECK(!memcmp(c, c2, sizeof(*c)), 0, 0);
		char *text2 = fc_print(c2, &len2);
		FC_CHECK(len1 == len2 && !memcmp(text, text2, len1), len1, len2);
		free(text);
		free(text2);

		char refused[64];
		memcpy(c2, dflt, sizeof(*c2));
		int n = ms_config_apply_live(c2, c, refused, sizeof(refused));
		FC_CHECK(n >= 0, n, 0);
		FC_CHECK(memchr(refused, '\0', sizeof(refused)) != NULL, n, 0);
	}

	/* section NUL key NUL value: the command line's way in. */
	const uint8_t *z1 = memchr(data, 0, size);
	const uint8_t *z2 = z1 ? memchr(z1 + 1, 0, size - (size_t)(z1 + 1 - data))
			       : NULL;
	if (z2) {
		size_t vlen = size - (size_t)(z2 + 1 - data);
		char *value = malloc(vlen + 1);
		if (!value)
			abort();
		memcpy(value, z2 + 1, vlen);
		value[vlen] = '\0';
		memcpy(c, dflt, sizeof(*c));
		memset(&err, 0, sizeof(err));
		rc = ms_config_set(c, (const char *)data, (const char *)z1 + 1, value,
				   "--fuzz", &err);
		if (rc) {
			fc_check_refusal(rc, &err, NULL);
			FC_CHECK(!memcmp(c, dflt, sizeof(*c)), rc, 0);
		} else {
			ret |= FC_SET;
		}
		free(value);
	}
	free(dflt);
	free(c);
	free(c2);
	return ret;
}

#ifndef MS_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_config_one(data, size);
	return 0;
}
#endif
