/*
 * trace_cmd.c - `moestream trace gen|export|import|stats` (being written).
 */
#include "tools.h"

int cmd_trace(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("trace", "not implemented in this build yet");
	return 1;
}
