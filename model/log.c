/*
 * log.c - the one logger (see util.h). Lines go to stderr as
 * "moestream: func: message"; under systemd (ms_log_syslog_prefix) they carry
 * the "<N>" priority prefix journald understands instead of a program name.
 */
#include <stdarg.h>
#include <stdio.h>

#include "moestream/util.h"

int ms_log_threshold = MS_LOG_NOTICE;
bool ms_log_syslog_prefix;
const char *ms_log_prog = "moestream";

void ms_log_write(int level, const char *func, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (ms_log_syslog_prefix)
		fprintf(stderr, "<%d>%s: %s\n", level, func, line);
	else if (level >= MS_LOG_DEBUG)
		fprintf(stderr, "%s: %s: %s\n", ms_log_prog, func, line);
	else
		fprintf(stderr, "%s: %s\n", ms_log_prog, line);
}
