/*
 * bench.c - `moestream bench` (being written).
 */
#include "tools.h"

int cmd_bench(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("bench", "not implemented in this build yet");
	return 1;
}
