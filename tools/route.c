/*
 * route.c - `moestream route` (being written).
 */
#include "tools.h"

int cmd_route(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	tool_error("route", "not implemented in this build yet");
	return 1;
}
