/*
 * bench_io.h - `moestream bench io MODEL [--loads N] [--depth D]
 * [--threads T] [--seed S] [--json]`: random whole-expert loads through the
 * I/O engine, against a plain io_uring loop, pread and mmap, in one run.
 */
#ifndef MS_BENCH_IO_H
#define MS_BENCH_IO_H

/* argv[0] is the command's name for messages ("moestream bench io"), the
 * options and MODEL follow. Exit codes as tools.h: 0 ok, 1 the work failed
 * (unreadable model, an I/O error, methods that disagree on the bytes
 * read), 2 bad usage. Prints to stdout; one line on stderr on failure. */
int bench_io_main(int argc, char **argv);

#endif
