/*
 * simulate.c - `moestream simulate` (being written).
 */
#include "tools.h"

int cmd_simulate(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("simulate", "not implemented in this build yet");
	return 1;
}
