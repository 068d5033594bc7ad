/*
 * ffn.c - `moestream ffn` (being written).
 */
#include "tools.h"

int cmd_ffn(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("ffn", "not implemented in this build yet");
	return 1;
}
