/* SPDX-License-Identifier: GPL-2.0 */
/*
 * commands.h -- the subcommands; each returns the process exit status.
 */
#ifndef DMLOOP_INSPECT_COMMANDS_H
#define DMLOOP_INSPECT_COMMANDS_H

#include <stdio.h>

#include "target.h"

int cmd_list(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_report(int argc, char **argv);

void usage(FILE *f);

/*
 * compare's work for report: each target of dt against FIEMAP of its file,
 * people's text to human, JSON to json (either may be NULL). Returns
 * EXIT_OK, EXIT_DIFFER or EXIT_ERROR; *ndiff counts the differences.
 */
int compare_device(const struct device_targets *dt, FILE *human, FILE *json,
		   size_t *ndiff);

#endif
