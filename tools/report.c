// SPDX-License-Identifier: GPL-2.0
#include "commands.h"
#include "util.h"

int cmd_report(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	error("report: not yet");
	return EXIT_ERROR;
}
