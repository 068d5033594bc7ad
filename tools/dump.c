/*
 * dump.c - `moestream dump` (being written).
 */
#include "tools.h"

int cmd_dump(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("dump", "not implemented in this build yet");
	return 1;
}
