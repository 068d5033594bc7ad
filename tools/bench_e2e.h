/*
 * bench_e2e.h - `moestream bench e2e --model M [--prompt T] [--gen N] ...`:
 * the real engines (llama.cpp, moestream run embedded and through
 * moestreamd) on one prompt under one memory limit: bench_e2e_real.c.
 *
 * `moestream bench e2e --synthetic --model M [--trace T | --tokens N]
 * [--cache-size S] [--mem-limit S] [--compute-ms X] [--touch | --ffn cpu]
 * [--json | --csv] [--plot FILE.png] [--sweep LIST]`: decoding end to end
 * on a machine with less RAM than the model. One routing trace, replayed
 * under one memory limit (a cgroup), the page cache dropped before each, as
 *
 *   mmap      llama.cpp's default: the GGUF mapped, experts read through it
 *   pread     pread through the page cache into a malloc'd LRU cache
 *   lru       a real moestreamd, prefetch off
 *   prefetch  the same with prefetch on (policy auto, the next layer hinted)
 *
 * against the bounds measured in the same run: the device's GB/s for
 * whole-expert reads (plain io_uring, O_DIRECT) and Belady's hit rate for
 * the trace at the same capacity. bench_e2e.c says how each is measured.
 */
#ifndef MS_BENCH_E2E_H
#define MS_BENCH_E2E_H

#include <stdint.h>

/* argv[0] is the command's name for messages ("moestream bench e2e"); the
 * options follow. Prints the table (or JSON, or CSV) on stdout and progress
 * on stderr. Exit codes as tools.h: 0 measured (targets met or not), 1 the
 * work failed (an unreadable model, a trace of another model, a method that
 * failed, methods that disagree on the bytes they read, --plot without
 * gnuplot), 2 bad usage. Must run as root for the memory limit and for
 * dropping the page cache; without root it runs unlimited and says so. */
int bench_e2e_main(int argc, char **argv);

/* The real engines (bench_e2e_real.c): what bench_e2e_main runs without
 * --synthetic. Exit codes as above (1 also for a model without a
 * tokenizer). */
int bench_e2e_real_main(int argc, char **argv);

struct ms_model;
struct ms_err;
/* The engine's KV cache bytes for one sequence of n_ctx tokens (layers run x
 * n_ctx x n_head_kv x key_length x 2 (K, V) x 2 bytes of f16), and the
 * blocks run, from the model's metadata. */
int bench_e2e_kv_of(const struct ms_model *m, uint32_t n_ctx, uint64_t *kv,
		    uint32_t *n_run, struct ms_err *err);

/* The prompt both benchmarks of the real engines use by default. */
extern const char bench_e2e_default_prompt[];

/* `moestream bench serve` (bench_serve.c). */
int bench_serve_main(int argc, char **argv);

#endif /* MS_BENCH_E2E_H */
