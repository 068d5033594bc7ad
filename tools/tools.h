/*
 * tools.h - what the `moestream` subcommands share.
 *
 * Exit codes, for every subcommand: 0 success, 1 the work failed (a bad or
 * unreadable model, an I/O error; one line on stderr says which), 2 bad
 * usage, 3 a feature this build or machine does not have (no GPU, built
 * without CUDA).
 */
#ifndef MS_TOOLS_H
#define MS_TOOLS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "moestream/model.h"

enum { EXIT_USAGE = 2, EXIT_UNAVAILABLE = 3 };

int cmd_inspect(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_gpu(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_ffn(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int bench_tokenize_main(int argc, char **argv); /* bench_tokenize.c */
int bench_gpu_decode_main(int argc, char **argv); /* bench_gpu_decode.c */
int cmd_detokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_plan(int argc, char **argv);

struct ms_vocab;
/* Opens MODEL's GGUF and builds its tokenizer: 0, or -1 after a message
 * (one line naming the missing key for a model without a tokenizer). */
int tool_load_vocab(const char *cmd, const char *path, struct ms_gguf **g,
		    struct ms_vocab **v);

struct ms_client;
/* The socket to talk to: --socket, else the configuration's (-c FILE, else
 * the default file), else the built-in default. 0, or -1 after a message. */
int tool_socket_path(const char *cmd, const char *opt_socket,
		     const char *opt_config, char *buf, size_t len);
/* Connects to moestreamd (as above): 0, or -1 after a message. */
int tool_connect(const char *cmd, const char *opt_socket,
		 const char *opt_config, struct ms_client **c);

/* "1.23 GB" (decimal units, as disks are sold) into buf. */
const char *fmt_bytes(uint64_t b, char *buf, size_t len);
/* "8,540,160" into buf. */
const char *fmt_count(uint64_t v, char *buf, size_t len);

/* --opt VALUE as a whole number 0..UINT32_MAX: 0, or -1 after a message
 * (opt with or without its dashes). The _in form: from lo to hi, or a
 * message naming both. */
int tool_parse_u32(const char *cmd, const char *opt, const char *s,
		   uint32_t *out);
int tool_parse_u32_in(const char *cmd, const char *opt, const char *s,
		      uint32_t lo, uint32_t hi, uint32_t *out);
/* "blk.1-2, blk.4": the model's MoE layers, for messages. */
const char *tool_moe_blocks(const struct ms_model *m, char *buf, size_t len);
/* Whole reads and writes: 0 or -errno (-ENODATA: end of file first). */
int tool_pread_full(int fd, void *buf, uint64_t n, uint64_t off);
int tool_write_full(int fd, const void *buf, size_t n);
/* f32 values between the host and little-endian files. */
void tool_swap_f32(float *f, size_t n);
/* A whole little-endian f32 file of at most max_bytes, every value finite:
 * 0 and *out (malloc'ed) and *bytes, or 1 after one line saying why. */
int tool_read_f32(const char *cmd, const char *path, uint64_t max_bytes,
		  float **out, size_t *bytes);

/* Time, for the benchmarks: CLOCK_MONOTONIC in seconds; a sleep that
 * survives signals; a wait of secs that sleeps, then spins the last 200 us
 * (nanosleep overshoots, spinning alone steals a core). */
double tool_now_s(void);
void tool_sleep_ms(int ms);
void tool_wait_s(double secs);
/* qsort's comparison of doubles (NaN after every number), the nearest rank
 * p (0..1) of sorted v[n] (0 when n is 0), and the median of v[n] (n >= 1;
 * the mean of the middle two for an even n), sorting v in place. */
int tool_cmp_double(const void *a, const void *b);
double tool_pct(const double *v, uint64_t n, double p);
double tool_median(double *v, size_t n);
/* The median of v[n] (n >= 1) leaving v in its order (NaN when out of
 * memory), and, when near is not NULL, the index of the value nearest it
 * (the first of equals): which run of several is the median one. */
double tool_median_of(const double *v, size_t n, size_t *near);
/* splitmix64: the next value of the sequence at *s. */
uint64_t tool_splitmix(uint64_t *s);
/* sync, then drop clean page cache, dentries and inodes: false when not
 * allowed. */
bool tool_drop_caches(void);
/* A comma-separated list of names[0..n): want[k] set for each one named
 * (the rest cleared); 0, or -EINVAL after "OPT: 'x' is not one of CHOICES"
 * or "OPT 's': no method named". */
/* --activations q8|f32 -> *q8; prints the error and returns -1 on another
 * value. */
int tool_parse_activations(const char *cmd, const char *s, bool *q8);

/* A size option (8G, 512M, ...; not 0) -> *out; prints "OPT 'S': expected
 * a size such as 8G or 512M" and returns -1 otherwise. */
int tool_parse_size(const char *cmd, const char *opt, const char *s,
		    uint64_t *out);

/* --device cpu|gpu -> *gpu; prints the error and returns -1 on another
 * value. */
int tool_parse_device(const char *cmd, const char *s, bool *gpu);

/* For --device gpu: 0 when a usable GPU is there, else prints why
 * ("--device gpu: built without CUDA", "no CUDA device ...") and returns
 * -1 (the command then exits EXIT_UNAVAILABLE). */
int tool_gpu_usable(const char *cmd);

int tool_parse_methods(const char *cmd, const char *opt, const char *s,
		       const char *const *names, int n, const char *choices,
		       bool *want);
/* A comma-separated list of at most max tensor type names, each one that
 * supported() accepts, into out[*n]: 0, or -1 after a message. */
int tool_parse_types(const char *cmd, const char *s, bool (*supported)(uint32_t),
		     uint32_t *out, int max, int *n);
/* --time SECS in (0, max]: 0, or -1 after a message. */
int tool_parse_seconds(const char *cmd, const char *s, double max, double *out);
/* s and a newline to path: 0, or -1 after a message. */
int tool_write_text(const char *cmd, const char *path, const char *s);

/* Where a block of `type` keeps its f16 scales (d, dmin; -1 = none), from
 * ggml's block structs, and `exp`, which sets d to about 2^-exp so that the
 * largest value a block can hold (d times the largest sub-scale times the
 * largest quant) stays near 1: NULL for a type without (F32, F16, BF16;
 * MXFP4 has one e8m0 exponent byte at 0 instead). */
struct tool_scales {
	uint32_t type;
	int f16[2];
	int exp;
};
const struct tool_scales *tool_scales_of(uint32_t type);
/* f16 bits of a small positive value: 2^-(e..e+2) x (1 + m/1024), from
 * random bits r. */
uint16_t tool_small_f16(uint64_t r, int e);
/* `size` bytes (whole blocks) of a quantized type, from tool_splitmix(s):
 * random bits, with every block's scales small and finite (its f16 scales
 * by tool_small_f16, MXFP4's e8m0 at 2^-6 or 2^-7), so that dequantised
 * values are finite and modest. mkmodel's recipe. */
void tool_fill_blocks(uint8_t *buf, uint64_t size, uint32_t type, uint64_t *s);
/* The same with every f16 scale about 2^-extra smaller (MXFP4's exponent
 * too): mkmodel's weights, scaled by their row length so that a product
 * with a normalised input has outputs of about unit size, as in a trained
 * model. */
void tool_fill_blocks_scaled(uint8_t *buf, uint64_t size, uint32_t type,
			     uint64_t *s, int extra);

/* The whole of a file ('-': stdin) of at most `max` bytes, NUL-terminated
 * (it may hold NULs: use *len): 0, or -1 after one line saying why. */
int tool_read_input(const char *cmd, const char *path, size_t max, char **out,
		    size_t *len);

/* Prints "moestream CMD: message" on stderr. */
void tool_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The command's usage line and "(see --help)" on stderr; returns
 * EXIT_USAGE, for `return tool_bad_usage(usage_line);`. */
int tool_bad_usage(const char *usage_line);

/* The one MODEL operand left after getopt: its path, or NULL after saying
 * (with tool_error) that there is none or one too many. */
const char *tool_one_model(const char *cmd, int argc, char **argv,
			   int optind);

#endif
